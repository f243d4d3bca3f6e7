//! Test fixtures: a SoftHSM2 token of this test process's own, created in a
//! temporary directory, and helpers to build a CA on it.
#![allow(dead_code, clippy::unwrap_used)]
// Setting SOFTHSM2_CONF before the module loads needs `std::env::set_var`,
// which is `unsafe` since Rust 2024; see `softhsm()` for why it is sound here.
#![allow(unsafe_code)]

pub mod backend;
pub mod flow;
pub mod gateway;
pub mod node;
pub mod oidc;
#[cfg(feature = "postgres")]
pub mod postgres_server;
pub mod python;
pub mod server;
pub mod sse;
pub mod sshd;
pub mod store;
pub mod tls;
pub mod tpm;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};

use lockstep::keys::pkcs11::{Pkcs11Backend, Pkcs11Config};
use lockstep::keys::{KeyBackend, KeyRef};
use lockstep::secret::SecretRef;

/// The SoftHSM2 module shipped by Debian's `softhsm2` package.
pub const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
/// The user PIN of test tokens (tests only).
pub const USER_PIN: &str = "4711-test-user-pin";
const SO_PIN: &str = "0815-test-so-pin";

/// A SoftHSM2 configuration and token directory private to this process,
/// with one token initialised before the module is first loaded.
///
/// SoftHSM2 sees only the tokens present at `C_Initialize`, so tests in one
/// process share this token and keep apart by key label.
pub struct SoftHsm {
    dir: PathBuf,
    /// The label of the process's token.
    pub token: String,
    pub conf: PathBuf,
    pub pin_file: PathBuf,
    _tmp: tempfile::TempDir,
}

static HSM: OnceLock<SoftHsm> = OnceLock::new();
static TOKENS: AtomicU32 = AtomicU32::new(0);

/// The process's SoftHSM2 set-up. The first call points `SOFTHSM2_CONF` at
/// a fresh directory; it must happen before the module is loaded, so every
/// test reaches the module through this function.
pub fn softhsm() -> &'static SoftHsm {
    HSM.get_or_init(|| {
        let tmp = tempfile::Builder::new()
            .prefix("lockstep-softhsm-")
            .tempdir()
            .expect("temp dir");
        let dir = tmp.path().to_owned();
        let tokens = dir.join("tokens");
        std::fs::create_dir_all(&tokens).unwrap();
        let conf = dir.join("softhsm2.conf");
        std::fs::write(
            &conf,
            format!(
                "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n",
                tokens.display()
            ),
        )
        .unwrap();
        let pin_file = dir.join("user.pin");
        std::fs::write(&pin_file, format!("{USER_PIN}\n")).unwrap();
        // SAFETY: runs once, before any PKCS#11 module is loaded in this
        // process (all loads go through this fixture); SoftHSM2 reads the
        // variable at C_Initialize.
        unsafe { std::env::set_var("SOFTHSM2_CONF", &conf) };
        let mut hsm = SoftHsm {
            dir,
            token: String::new(),
            conf,
            pin_file,
            _tmp: tmp,
        };
        hsm.token = hsm.new_token("main");
        hsm
    })
}

impl SoftHsm {
    /// Initialises a fresh token with a unique label and returns that label.
    /// A process that has already loaded the module sees it only after the
    /// module restarts; use it from child processes (the CLI).
    pub fn new_token(&self, hint: &str) -> String {
        let label = format!(
            "t{}-{}-{}",
            std::process::id(),
            TOKENS.fetch_add(1, Ordering::Relaxed),
            hint
        );
        let label: String = label.chars().take(32).collect();
        // softhsm2-util picks "the free slot" by scanning the token
        // directory: two at once may pick the same one.
        static INIT: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _one_at_a_time = INIT.lock().unwrap_or_else(|p| p.into_inner());
        let out = Command::new("softhsm2-util")
            .env("SOFTHSM2_CONF", &self.conf)
            .args(["--init-token", "--free", "--label", &label])
            .args(["--pin", USER_PIN, "--so-pin", SO_PIN])
            .output()
            .expect("softhsm2-util runs (install softhsm2: scripts/setup)");
        assert!(
            out.status.success(),
            "softhsm2-util: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        label
    }

    /// A token in a SoftHSM2 store of its own, for child processes: no other
    /// test creates or writes tokens where its processes scan (SoftHSM2
    /// can fail C_GetSlotList while another process initialises a token in
    /// the same directory).
    pub fn isolated_token(&self, hint: &str) -> IsolatedToken {
        let dir = tempfile::Builder::new()
            .prefix("lockstep-softhsm-iso-")
            .tempdir()
            .unwrap();
        let tokens = dir.path().join("tokens");
        std::fs::create_dir_all(&tokens).unwrap();
        let conf = dir.path().join("softhsm2.conf");
        std::fs::write(
            &conf,
            format!(
                "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n",
                tokens.display()
            ),
        )
        .unwrap();
        let label: String = format!("iso-{hint}").chars().take(32).collect();
        let out = Command::new("softhsm2-util")
            .env("SOFTHSM2_CONF", &conf)
            .args(["--init-token", "--free", "--label", &label])
            .args(["--pin", USER_PIN, "--so-pin", SO_PIN])
            .output()
            .expect("softhsm2-util runs (install softhsm2: scripts/setup)");
        assert!(
            out.status.success(),
            "softhsm2-util: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        IsolatedToken {
            _dir: dir,
            conf,
            label,
        }
    }

    /// A backend configuration for the token `label`.
    pub fn config(&self, label: &str) -> Pkcs11Config {
        Pkcs11Config {
            module: MODULE.into(),
            token_label: Some(label.to_owned()),
            token_serial: None,
            user_pin: SecretRef::File(self.pin_file.clone()),
            sessions: None,
        }
    }

    /// A backend over the process's token.
    pub fn backend(&self) -> Arc<Pkcs11Backend> {
        Arc::new(Pkcs11Backend::new(&self.config(&self.token)).unwrap())
    }

    /// The directory holding configuration and tokens.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// A token with a SoftHSM2 configuration of its own (see
/// [`SoftHsm::isolated_token`]).
pub struct IsolatedToken {
    _dir: tempfile::TempDir,
    /// Its `SOFTHSM2_CONF`.
    pub conf: PathBuf,
    /// Its label.
    pub label: String,
}

/// A key reference for tests.
pub fn key_ref(label: &str, id: u8) -> KeyRef {
    KeyRef {
        label: label.to_owned(),
        id: vec![id],
        handle: None,
    }
}

/// Runs `openssl` with arguments, returning (success, stdout+stderr).
pub fn openssl(args: &[&str]) -> (bool, String) {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl runs");
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// `openssl crl -text` of the DER CRL at `path`: (success, output).
pub fn crl_text(path: &Path) -> (bool, String) {
    openssl_crl(path, &["-text"])
}

/// `openssl crl -noout` with `what` (e.g. `-crlnumber`) of the DER CRL at
/// `path`: (success, output).
pub fn openssl_crl(path: &Path, what: &[&str]) -> (bool, String) {
    let mut args = vec![
        "crl",
        "-inform",
        "DER",
        "-in",
        path.to_str().unwrap(),
        "-noout",
    ];
    args.extend_from_slice(what);
    openssl(&args)
}

/// Backend as the trait object the product uses.
pub fn as_backend(b: &Arc<Pkcs11Backend>) -> Arc<dyn KeyBackend> {
    b.clone()
}

/// A CA initialised on the process's token, with its own key labels and
/// certificate directory.
pub struct TestCa {
    pub dir: tempfile::TempDir,
    pub config: lockstep::config::Config,
    pub backend: Arc<dyn KeyBackend>,
    pub issuer: lockstep::x509::Issuer,
    /// Evicts TPM keys last, once everything using them is gone.
    pub evict: Option<backend::Evict>,
}

static CA_IDS: AtomicU32 = AtomicU32::new(1);

/// The configuration text for a CA named `name` on token `token`.
pub fn ca_config_text(
    hsm: &SoftHsm,
    token: &str,
    name: &str,
    root_days: u32,
    issuing_days: u32,
) -> String {
    let n = CA_IDS.fetch_add(1, Ordering::Relaxed);
    format!(
        r#"
[backend]
type = "pkcs11"
module = "{MODULE}"
token_label = "{token}"
user_pin = "file:{pin}"

[keys.root]
label = "{name}-root"
id = "{root_id:04x}"

[keys.issuing]
label = "{name}-issuing"
id = "{issuing_id:04x}"

[keys.token]
label = "{name}-token"
id = "{token_id:04x}"

[keys.audit]
label = "{name}-audit"
id = "{audit_id:04x}"

[keys.ssh]
label = "{name}-ssh"
id = "{ssh_id:04x}"

[keys.tsa]
label = "{name}-tsa"
id = "{tsa_id:04x}"

[ca]
dir = "ca"
root_subject = {{ common_name = "{name} Root CA", organization = "lockstep tests" }}
issuing_subject = {{ common_name = "{name} Issuing CA", organization = "lockstep tests" }}
root_validity_days = {root_days}
issuing_validity_days = {issuing_days}
"#,
        pin = hsm.pin_file.display(),
        root_id = 0x1000 + 4 * n,
        issuing_id = 0x1001 + 4 * n,
        token_id = 0x1002 + 4 * n,
        audit_id = 0x1003 + 4 * n,
        ssh_id = 0x8000 + n,
        tsa_id = 0x9000 + n,
    )
}

/// Initialises a CA called `name` (unique per process) on the SoftHSM2
/// token and loads its issuer.
pub fn test_ca_with(name: &str, root_days: u32, issuing_days: u32) -> TestCa {
    test_ca_on(backend::Backend::SoftHsm, name, root_days, issuing_days)
}

/// Initialises a CA called `name` (unique per process) on `backend` and
/// loads its issuer.
pub fn test_ca_on(
    backend: backend::Backend,
    name: &str,
    root_days: u32,
    issuing_days: u32,
) -> TestCa {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lockstep.toml");
    let (text, evict) = backend.ca_config_text(name, root_days, issuing_days);
    std::fs::write(&path, text).unwrap();
    let config = lockstep::config::Config::load(&path).unwrap();
    let backend = config.backend.open().unwrap();
    let now = lockstep::clock::Clock::now(&lockstep::clock::SystemClock);
    lockstep::ca::init(&config, backend.as_ref(), Default::default(), now).unwrap();
    let issuer = lockstep::ca::load_issuer(&config, backend.as_ref(), now).unwrap();
    TestCa {
        dir,
        config,
        backend,
        issuer,
        evict,
    }
}

/// A CA with the default lifetimes.
pub fn test_ca(name: &str) -> TestCa {
    test_ca_with(name, 3650, 1095)
}

impl TestCa {
    /// Path of the root certificate.
    pub fn root_pem(&self) -> PathBuf {
        self.config.ca.dir.join("root.pem")
    }

    /// Path of the issuing CA certificate.
    pub fn issuing_pem(&self) -> PathBuf {
        self.config.ca.dir.join("issuing.pem")
    }
}

/// Generates a key with openssl (`ec:P-256`, `ec:P-384`, `rsa:2048`,
/// `ed25519`, ...) and a CSR for it; returns (key path, CSR PEM).
pub fn openssl_csr(dir: &Path, name: &str, kind: &str) -> (PathBuf, Vec<u8>) {
    let key = dir.join(format!("{name}.key"));
    let csr = dir.join(format!("{name}.csr"));
    let key_s = key.to_str().unwrap();
    let mut args: Vec<String> = vec!["genpkey".into()];
    match kind.split_once(':') {
        Some(("ec", curve)) => args.extend([
            "-algorithm".into(),
            "EC".into(),
            "-pkeyopt".into(),
            format!("ec_paramgen_curve:{curve}"),
        ]),
        Some(("rsa", bits)) => args.extend([
            "-algorithm".into(),
            "RSA".into(),
            "-pkeyopt".into(),
            format!("rsa_keygen_bits:{bits}"),
        ]),
        _ => args.extend(["-algorithm".into(), kind.to_uppercase()]),
    }
    args.extend(["-out".into(), key_s.into()]);
    let args_ref: Vec<&str> = args.iter().map(String::as_str).collect();
    let (ok, text) = openssl(&args_ref);
    assert!(ok, "openssl genpkey {kind}: {text}");
    let (ok, text) = openssl(&[
        "req",
        "-new",
        "-key",
        key_s,
        "-subj",
        "/CN=ignored-by-lockstep/O=Evil Corp",
        "-addext",
        "subjectAltName=DNS:evil.example",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-out",
        csr.to_str().unwrap(),
    ]);
    assert!(ok, "openssl req: {text}");
    (key, std::fs::read(&csr).unwrap())
}

/// Writes `text` to `dir/name` and returns the path.
pub fn write(dir: &Path, name: &str, text: impl AsRef<[u8]>) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// Runs the `lockstep` binary with the process's SoftHSM2 configuration
/// (through the TPM fixture, so the child inherits no TPM socket).
pub fn lockstep_cli(args: &[&str]) -> std::process::Output {
    lockstep_cli_on(&softhsm().conf, args)
}

/// [`lockstep_cli`] with another SoftHSM2 configuration (an
/// [`IsolatedToken`]'s).
pub fn lockstep_cli_on(softhsm_conf: &Path, args: &[&str]) -> std::process::Output {
    tpm::output(
        Command::new(env!("CARGO_BIN_EXE_lockstep"))
            .args(args)
            .env("SOFTHSM2_CONF", softhsm_conf),
    )
    .unwrap()
}

/// A child's stdout and stderr as one text.
pub fn output_text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// `lockstep audit verify` of the store file `db` against `root`: whether
/// it passed, and what it printed.
/// `lockstep --config CONFIG audit verify`: the trail of the store the
/// configuration names, checked against its root. True when it says OK.
pub fn audit_verify_config(config: &Path) -> (bool, String) {
    let out = lockstep_cli(&["--config", config.to_str().unwrap(), "audit", "verify"]);
    let text = output_text(&out);
    (
        out.status.success() && text.contains("audit trail OK"),
        text,
    )
}

pub fn audit_verify(db: &Path, root: &Path) -> (bool, String) {
    let out = lockstep_cli(&[
        "audit",
        "verify",
        "--db",
        db.to_str().unwrap(),
        "--root",
        root.to_str().unwrap(),
    ]);
    (out.status.success(), output_text(&out))
}

/// Signs `data` with the key at `key` (DER ECDSA, SHA-256), via openssl.
pub fn openssl_sign(dir: &Path, key: &Path, data: &[u8]) -> Vec<u8> {
    let input = write(dir, "to-sign", data);
    let sig = dir.join("to-sign.sig");
    let (ok, text) = openssl(&[
        "dgst",
        "-sha256",
        "-sign",
        key.to_str().unwrap(),
        "-out",
        sig.to_str().unwrap(),
        input.to_str().unwrap(),
    ]);
    assert!(ok, "{text}");
    std::fs::read(sig).unwrap()
}
