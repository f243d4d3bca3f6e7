//! Secrets never leak: the HSM user PIN, API tokens, OIDC JWTs, the tokens
//! lockstep mints and TPM auth values appear in no log line (at trace
//! level), no HTTP error body, no output of the `lockstep` commands, no
//! `Debug` text and no audit export, on every failure path reachable from
//! outside: wrong, missing, unreadable and inline PINs, tokens altered,
//! revoked or unknown, expired JWTs and JWTs for another audience, tokens in
//! the wrong place, bad CSRs, configuration errors, and a TPM that goes away
//! or comes back with the wrong auth value.
//!
//! Every secret is checked as written and in the forms a careless message
//! could carry it: without its `lst_` prefix, its first or last 16
//! characters, base64, base64url, hex and percent-encoded, and for JWTs the
//! signature alone.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use clap::Parser;
use lockstep::secret::SecretRef;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};

use common::oidc::TestIssuer;
#[cfg(feature = "tpm")]
use common::tpm::{SwTpm, tpm2, unique_handle};
use common::{USER_PIN, ca_config_text, openssl_csr, softhsm, write};

/// A PIN that is not the token's.
const WRONG_PIN: &str = "0815-Wrong-Pin-5150";
/// A numeric PIN pasted into the configuration, unquoted.
const NUMERIC_PIN: &str = "80417263";
/// TPM owner and key auth values, and wrong ones.
#[cfg(feature = "tpm")]
const OWNER_AUTH: &str = "Owner-Auth-77e1c";
#[cfg(feature = "tpm")]
const WRONG_OWNER_AUTH: &str = "Owner-Auth-Wrong-31";
#[cfg(feature = "tpm")]
const KEY_AUTH: &str = "Key-Auth-3b9d2f";
#[cfg(feature = "tpm")]
const WRONG_KEY_AUTH: &str = "Key-Auth-Wrong-8a4";

/// The forms of a secret looked for.
fn forms(secret: &str) -> Vec<String> {
    use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
    let mut out = vec![secret.to_owned()];
    let body = secret.strip_prefix("lst_").unwrap_or(secret);
    if body.len() != secret.len() {
        out.push(body.to_owned());
    }
    let parts: Vec<&str> = secret.split('.').collect();
    let jwt = parts.len() == 3;
    if jwt {
        out.push(parts[2].to_owned());
    } else if body.len() >= 32 {
        out.push(body[..16].to_owned());
        out.push(body[body.len() - 16..].to_owned());
    }
    out.push(STANDARD.encode(secret));
    out.push(URL_SAFE_NO_PAD.encode(secret));
    out.push(hex::encode(secret));
    out.push(hex::encode_upper(secret));
    out.push(utf8_percent_encode(secret, NON_ALPHANUMERIC).to_string());
    out.retain(|f| f.len() >= 6);
    out.sort();
    out.dedup();
    out
}

/// The secrets of a test, by name.
#[derive(Default)]
struct Secrets(Vec<(String, String)>);

impl Secrets {
    fn add(&mut self, name: &str, value: &str) {
        assert!(!value.is_empty(), "{name} is empty");
        for form in forms(value) {
            self.0.push((name.to_owned(), form));
        }
    }

    /// Fails if any secret, in any form, is in `text`.
    #[track_caller]
    fn assert_absent(&self, place: &str, text: &str) {
        for (name, form) in &self.0 {
            if let Some(at) = text.find(form.as_str()) {
                let line_start = text[..at].rfind('\n').map_or(0, |i| i + 1);
                let line_end = text[at..].find('\n').map_or(text.len(), |i| at + i);
                panic!(
                    "{place}: {name} appears (as `{form}`) in:\n{}",
                    &text[line_start..line_end]
                );
            }
        }
    }
}

fn lockstep_bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_lockstep"))
}

/// Runs a command to its end (spawned while no TPM command of this process
/// is in flight); returns its exit code and stdout+stderr.
fn run(cmd: &mut Command) -> (Option<i32>, String) {
    let out: Output = common::tpm::output(cmd).expect("the command runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

/// A `lockstep` command with trace logging, for the configuration `config`
/// and the SoftHSM2 store `conf` (if any).
fn cli(config: &Path, conf: Option<&Path>, args: &[&str]) -> Command {
    let mut cmd = lockstep_bin();
    cmd.arg("--config").arg(config).args(args);
    cmd.env("LOCKSTEP_LOG", "trace");
    if let Some(conf) = conf {
        cmd.env("SOFTHSM2_CONF", conf);
    }
    cmd
}

/// A `lockstep serve` child process at trace level, its stdout and stderr
/// collected as they come.
struct Served {
    child: Child,
    log: Arc<Mutex<String>>,
    readers: Vec<std::thread::JoinHandle<()>>,
    url: String,
}

impl Served {
    fn start(mut cmd: Command) -> Served {
        cmd.args(["serve", "--listen", "127.0.0.1:0"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = common::tpm::spawn(&mut cmd).expect("serve starts");
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel::<String>();
        let mut readers = Vec::new();
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        for (stream, tx) in [
            (Box::new(stdout) as Box<dyn Read + Send>, tx.clone()),
            (Box::new(stderr), tx),
        ] {
            let log = log.clone();
            readers.push(std::thread::spawn(move || {
                let mut lines = BufReader::new(stream);
                let mut line = String::new();
                while lines.read_line(&mut line).unwrap_or(0) > 0 {
                    if let Some(url) = line.trim().strip_prefix("lockstep serving on ") {
                        let _ = tx.send(url.to_owned());
                    }
                    log.lock().unwrap().push_str(&line);
                    line.clear();
                }
            }));
        }
        let Ok(url) = rx.recv_timeout(Duration::from_secs(120)) else {
            let _ = child.kill();
            let _ = child.wait();
            panic!("serve did not start:\n{}", log.lock().unwrap());
        };
        Served {
            child,
            log,
            readers,
            url,
        }
    }

    /// SIGTERM, wait, and the whole log.
    fn stop(mut self) -> String {
        let pid = self.child.id().to_string();
        let (code, text) = run(Command::new("kill").args(["-TERM", &pid]));
        assert_eq!(code, Some(0), "kill: {text}");
        let status = self.child.wait().unwrap();
        for r in self.readers.drain(..) {
            r.join().unwrap();
        }
        let log = self.log.lock().unwrap().clone();
        assert!(
            status.success(),
            "serve exits 0 on SIGTERM: {status:?}\n{log}"
        );
        log
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        // After a failed assertion: do not leave the service running.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A client trusting the root in `dir/ca/root.pem`.
fn https(dir: &Path) -> reqwest::Client {
    let roots: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(dir.join("ca/root.pem"))
            .unwrap()
            .map(Result::unwrap)
            .collect();
    lockstep::net::client(lockstep::net::Trust::Only(roots)).unwrap()
}

/// One HTTP call: status and body text.
async fn send(
    http: &reqwest::Client,
    method: &str,
    url: &str,
    auth: &[&str],
    content_type: Option<&str>,
    body: Option<Vec<u8>>,
) -> (u16, String) {
    let mut req = http.request(method.parse().unwrap(), url);
    for value in auth {
        req = req.header(
            reqwest::header::AUTHORIZATION,
            reqwest::header::HeaderValue::from_bytes(value.as_bytes()).unwrap(),
        );
    }
    if let Some(ct) = content_type {
        req = req.header(reqwest::header::CONTENT_TYPE, ct);
    }
    if let Some(b) = body {
        req = req.body(b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.text().await.unwrap())
}

/// Runs blocking work (child processes) off the async workers.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

/// A copy of `jwt` with one character of its signature changed.
fn altered(token: &str) -> String {
    let mut chars: Vec<char> = token.chars().collect();
    let i = chars.len() - 6;
    chars[i] = if chars[i] == 'A' { 'B' } else { 'A' };
    chars.into_iter().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debug_output_shows_references_not_secrets() {
    let hsm = softhsm();
    let dir = tempfile::tempdir().unwrap();
    let pin_file = write(dir.path(), "user.pin", format!("{USER_PIN}\n"));
    let (token, sha256) = lockstep::auth::tokens::generate().unwrap();
    let token = token.expose_secret().to_owned();
    let jwt = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJjaSJ9.c2lnbmF0dXJlLW9mLWEtdG9rZW4tdGhhdC1tdXN0LW5vdC1sZWFr";
    let mut secrets = Secrets::default();
    secrets.add("the user PIN", USER_PIN);
    secrets.add("the API token", &token);
    secrets.add("the JWT", jwt);

    // The configuration names references only, however it is printed.
    let text = ca_config_text(hsm, &hsm.token, "secrets-debug", 3650, 1095)
        .replace(&hsm.pin_file.display().to_string(), "user.pin")
        + "\n[server]\nlisten = \"127.0.0.1:0\"\nhostnames = [\"127.0.0.1\"]\ncertificate = \"server.pem\"\nprivate_key = \"env:LOCKSTEP_SECRETS_KEY\"\n"
        + &format!("\n[[auth.token]]\nname = \"alice\"\nsha256 = \"{sha256}\"\n");
    let config = lockstep::config::Config::parse(&text, &dir.path().join("lockstep.toml")).unwrap();
    let shown = format!("{config:?} {config:#?}");
    assert!(shown.contains("user.pin"), "{shown}");
    secrets.assert_absent("Debug of the configuration", &shown);

    // Resolved, the PIN stays out of Debug.
    let pin = SecretRef::File(pin_file.clone()).resolve().unwrap();
    assert_eq!(pin.expose_secret(), USER_PIN);
    secrets.assert_absent("Debug of the resolved PIN", &format!("{pin:?}"));
    let r = SecretRef::File(pin_file.clone());
    secrets.assert_absent("Debug of the reference", &format!("{r:?} {r}"));

    // A backend logged in with it.
    let backend = hsm.backend();
    lockstep::keys::KeyBackend::list(backend.as_ref()).unwrap();
    let open = config.backend.open().unwrap();
    secrets.assert_absent(
        "Debug of the backends",
        &format!("{backend:?} {:?} {open:?}", hsm.config(&hsm.token)),
    );

    // TPM auth values by reference.
    #[cfg(feature = "tpm")]
    {
        let mut tpm = lockstep::keys::tpm::TpmConfig::new("swtpm:host=127.0.0.1,port=1");
        tpm.owner_auth = Some(SecretRef::Env("LOCKSTEP_OWNER_AUTH".into()));
        tpm.key_auth = Some(SecretRef::File(pin_file.clone()));
        let tpm_backend = lockstep::keys::tpm::TpmBackend::new(&tpm).unwrap();
        secrets.assert_absent(
            "Debug of the TPM configuration",
            &format!("{tpm:?} {tpm_backend:?}"),
        );
    }

    // The command line, with the token given as a flag.
    let parsed = lockstep::cli::Cli::try_parse_from([
        "lockstep",
        "status",
        "--url",
        "https://127.0.0.1:1",
        "--token",
        &token,
    ])
    .unwrap();
    secrets.assert_absent("Debug of the command line", &format!("{parsed:?}"));
    let client = lockstep::client::Client::new(
        "https://127.0.0.1:1",
        None,
        SecretString::from(token.clone()),
    )
    .unwrap();
    secrets.assert_absent("Debug of the client", &format!("{client:?}"));

    // Refused bearer tokens, through every layer's errors.
    let tokens = lockstep::auth::tokens::StaticTokens::new(&[lockstep::auth::tokens::TokenEntry {
        name: "alice".into(),
        sha256,
    }])
    .unwrap();
    let auth = lockstep::auth::Authenticator::new(tokens, None);
    let now = lockstep::clock::Clock::now(&lockstep::clock::SystemClock);
    let ok = auth
        .authenticate(Some(&format!("Bearer {token}")), now)
        .await
        .unwrap();
    assert_eq!(ok.identity, "token:alice");
    secrets.assert_absent("Debug of the caller", &format!("{ok:?} {auth:?}"));
    for header in [
        format!("Bearer {}", altered(&token)),
        format!("Bearer {token}x"),
        format!("Basic {}", STANDARD.encode(format!("alice:{token}"))),
        format!("Bearer {jwt}"),
        format!("Bearer {}", altered(jwt)),
        token.clone(),
    ] {
        let err = auth.authenticate(Some(&header), now).await.unwrap_err();
        let service = lockstep::service::ServiceError::from(err);
        let api = lockstep::api::ApiError::from(service);
        let err = auth.authenticate(Some(&header), now).await.unwrap_err();
        secrets.assert_absent("an authentication error", &format!("{err} {err:?} {api:?}"));
        assert_eq!(api.code(), "unauthenticated");
    }

    // What lockstep hands out carries the token; Debug does not.
    let issued = lockstep::service::IssuedToken {
        session: lockstep::sessions::SessionId::generate().unwrap(),
        token: jwt.to_owned(),
        token_type: "Bearer",
        jti: "jti-1".into(),
        audience: "db".into(),
        expires_at: now,
    };
    let view = lockstep::api::views::TokenView {
        session: issued.session.to_string(),
        token: jwt.to_owned(),
        token_type: "Bearer".into(),
        jti: "jti-1".into(),
        audience: "db".into(),
        expires_at: now.to_string(),
    };
    secrets.assert_absent("Debug of minted tokens", &format!("{issued:?} {view:?}"));
}

/// A token in a SoftHSM2 store of its own, a CA configuration for it with
/// the PIN in `dir/user.pin`, and the serving parts (policy, tokens, OIDC)
/// when `serve` is given.
struct Setup {
    dir: tempfile::TempDir,
    config: PathBuf,
    hsm: common::IsolatedToken,
}

fn setup(name: &str, serve: &str) -> Setup {
    let hsm = softhsm().isolated_token(name);
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "user.pin", format!("{USER_PIN}\n"));
    let text = ca_config_text(softhsm(), &hsm.label, name, 3650, 1095)
        .replace(&softhsm().pin_file.display().to_string(), "user.pin");
    let config = write(dir.path(), "lockstep.toml", format!("{text}\n{serve}"));
    Setup { dir, config, hsm }
}

#[test]
fn pin_failures_name_no_pin() {
    let s = setup("secrets-pin", "");
    let conf = Some(s.hsm.conf.as_path());
    let mut secrets = Secrets::default();
    secrets.add("the user PIN", USER_PIN);
    secrets.add("the wrong PIN", WRONG_PIN);
    secrets.add("the numeric PIN", NUMERIC_PIN);
    let pin = s.dir.path().join("user.pin");
    let text = std::fs::read_to_string(&s.config).unwrap();
    let variant = |name: &str, user_pin: &str| {
        let changed = text.replace("\"file:user.pin\"", user_pin);
        assert_ne!(changed, text);
        write(s.dir.path(), name, changed)
    };

    // A wrong PIN at `init` and `keys list`, as text and as JSON.
    std::fs::write(&pin, format!("{WRONG_PIN}\n")).unwrap();
    for args in [
        &["init"][..],
        &["--json", "init"],
        &["keys", "list"],
        &["--json", "keys", "list"],
    ] {
        let (code, out) = run(&mut cli(&s.config, conf, args));
        assert_eq!(code, Some(1), "{args:?}: {out}");
        assert!(out.contains("key_backend_login_failed"), "{args:?}: {out}");
        assert!(out.contains("CKR_PIN_INCORRECT"), "{args:?}: {out}");
        secrets.assert_absent(&format!("lockstep {args:?} with a wrong PIN"), &out);
    }
    // The same through an environment variable.
    let env_config = variant("env.toml", "\"env:LOCKSTEP_SECRETS_PIN\"");
    let (code, out) =
        run(cli(&env_config, conf, &["keys", "list"]).env("LOCKSTEP_SECRETS_PIN", WRONG_PIN));
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("key_backend_login_failed"), "{out}");
    secrets.assert_absent("a wrong PIN from the environment", &out);
    let (code, out) =
        run(cli(&env_config, conf, &["keys", "list"]).env_remove("LOCKSTEP_SECRETS_PIN"));
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("LOCKSTEP_SECRETS_PIN"), "{out}");
    secrets.assert_absent("an unset PIN variable", &out);

    // The right PIN: `init` and `keys list` work and print no PIN.
    std::fs::write(&pin, format!("{USER_PIN}\n")).unwrap();
    for args in [
        &["init"][..],
        &["keys", "list"],
        &["--json", "keys", "list"],
    ] {
        let (code, out) = run(&mut cli(&s.config, conf, args));
        assert_eq!(code, Some(0), "{args:?}: {out}");
        secrets.assert_absent(&format!("lockstep {args:?}"), &out);
    }

    // `serve` with a wrong PIN stops with an error naming no PIN.
    let serving = format!(
        "{text}\n[server]\nlisten = \"127.0.0.1:0\"\nhostnames = [\"127.0.0.1\"]\n\n[store]\nsqlite = \"lockstep.db\"\n\n[policy]\nfile = \"policy.toml\"\n"
    );
    write(
        s.dir.path(),
        "policy.toml",
        "[[resource]]\nmatch = \"db\"\nrequesters = [\"token:a\"]\napprovers = [\"token:b\"]\nquorum = 1\nmax_duration = \"1m\"\nprofiles = [\"mtls-client\"]\n",
    );
    let serve_config = write(s.dir.path(), "serve.toml", &serving);
    std::fs::write(&pin, format!("{WRONG_PIN}\n")).unwrap();
    let (code, out) = run(&mut cli(
        &serve_config,
        conf,
        &["serve", "--listen", "127.0.0.1:0"],
    ));
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("key_backend_login_failed"), "{out}");
    secrets.assert_absent("serve with a wrong PIN", &out);

    // The PIN file missing, a directory, unreadable, empty.
    std::fs::remove_file(&pin).unwrap();
    std::fs::create_dir(&pin).unwrap();
    let (code, out) = run(&mut cli(&s.config, conf, &["keys", "list"]));
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("user.pin"), "{out}");
    secrets.assert_absent("a PIN file that is a directory", &out);
    std::fs::remove_dir(&pin).unwrap();
    let (code, out) = run(&mut cli(&s.config, conf, &["keys", "list"]));
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("user.pin"), "{out}");
    secrets.assert_absent("a missing PIN file", &out);
    std::fs::write(&pin, "").unwrap();
    let (code, out) = run(&mut cli(&s.config, conf, &["keys", "list"]));
    assert_eq!(code, Some(1), "{out}");
    secrets.assert_absent("an empty PIN file", &out);
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::write(&pin, format!("{WRONG_PIN}\n")).unwrap();
        std::fs::set_permissions(&pin, std::fs::Permissions::from_mode(0o000)).unwrap();
        // (root reads it anyway, and logs in with the wrong PIN.)
        let (code, out) = run(&mut cli(&s.config, conf, &["keys", "list"]));
        assert_eq!(code, Some(1), "{out}");
        secrets.assert_absent("an unreadable PIN file", &out);
        std::fs::set_permissions(&pin, std::fs::Permissions::from_mode(0o600)).unwrap();
    }

    // The PIN pasted into the configuration, in every shape TOML allows.
    for (i, inline) in [
        format!("\"{USER_PIN}\""),
        format!("'{USER_PIN}'"),
        format!("\"\"\"{USER_PIN}\"\"\""),
        NUMERIC_PIN.to_owned(),
        format!("-{NUMERIC_PIN}"),
        format!("{NUMERIC_PIN}.5"),
        format!("[\"{USER_PIN}\"]"),
        format!("{{ pin = \"{USER_PIN}\" }}"),
        USER_PIN.to_owned(),
        format!("\"{USER_PIN}"),
        format!("\"env:{USER_PIN}=1\""),
    ]
    .iter()
    .enumerate()
    {
        let bad = variant(&format!("inline-{i}.toml"), inline);
        for args in [&["keys", "list"][..], &["--json", "init"]] {
            let (code, out) = run(&mut cli(&bad, conf, args));
            assert_eq!(code, Some(1), "{inline}: {out}");
            assert!(out.contains("config_invalid"), "{inline}: {out}");
            secrets.assert_absent(&format!("user_pin = {inline}"), &out);
        }
    }
}

/// A call that must fail: name, method, URL, Authorization header values,
/// and a body with its content type.
type Attempt<'a> = (
    &'a str,
    String,
    String,
    Vec<String>,
    Option<(&'a str, Vec<u8>)>,
);

const SERVE_POLICY: &str = r#"
operators = ["token:ops"]
auditors = ["token:auditor"]

[[resource]]
match = "db:payroll"
requesters = ["token:alice", "oidc:{iss}:ci"]
approvers = ["token:bob"]
quorum = 1
max_duration = "15m"
profiles = ["mtls-client", "token"]
credentials = 10
"#;

fn serve_section(inline_tokens: &[(&str, &str)], oidc: &TestIssuer) -> String {
    let mut text = "\n[server]\nlisten = \"127.0.0.1:0\"\nhostnames = [\"127.0.0.1\"]\n\n[store]\nsqlite = \"lockstep.db\"\n\n[policy]\nfile = \"policy.toml\"\n\n[auth]\ntokens_file = \"tokens.toml\"\n".to_owned();
    for (name, sha256) in inline_tokens {
        text.push_str(&format!(
            "\n[[auth.token]]\nname = \"{name}\"\nsha256 = \"{sha256}\"\n"
        ));
    }
    text.push_str(&format!(
        "\n[[auth.oidc]]\nissuer = \"{}\"\naudience = \"lockstep\"\njwks = \"{}\"\n",
        oidc.issuer(),
        oidc.jwks_url()
    ));
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_logs_errors_and_the_audit_trail_name_no_secret() {
    let oidc = TestIssuer::start().await;
    let mut secrets = Secrets::default();
    let mut inline = Vec::new();
    let mut tokens = std::collections::HashMap::new();
    for name in ["alice", "bob", "auditor"] {
        let (token, sha256) = lockstep::auth::tokens::generate().unwrap();
        secrets.add(&format!("{name}'s API token"), token.expose_secret());
        tokens.insert(name, token.expose_secret().to_owned());
        inline.push((name, sha256));
    }
    let inline: Vec<(&str, &str)> = inline.iter().map(|(n, h)| (*n, h.as_str())).collect();
    let s = setup("secrets-serve", &serve_section(&inline, &oidc));
    let dir = s.dir.path().to_owned();
    write(
        &dir,
        "policy.toml",
        SERVE_POLICY.replace("{iss}", &oidc.issuer()),
    );
    // carol's first token is replaced (revoked) by a second one.
    let tokens_file = dir.join("tokens.toml");
    let carol_old = lockstep::auth::tokens::add_to_file(&tokens_file, "carol", false).unwrap();
    let carol = lockstep::auth::tokens::add_to_file(&tokens_file, "carol", true).unwrap();
    secrets.add("carol's revoked token", carol_old.expose_secret());
    secrets.add("carol's token", carol.expose_secret());
    let (unknown, _) = lockstep::auth::tokens::generate().unwrap();
    secrets.add("an unknown token", unknown.expose_secret());
    secrets.add("the user PIN", USER_PIN);
    let jwt = oidc.token("ci", "lockstep", json!({}), 600);
    let expired = oidc.token("ci", "lockstep", json!({}), -600);
    let wrong_aud = oidc.token("ci", "another-service", json!({}), 600);
    secrets.add("the OIDC JWT", &jwt);
    secrets.add("the expired JWT", &expired);
    secrets.add("the JWT for another audience", &wrong_aud);
    let alice = tokens["alice"].clone();
    secrets.add("alice's token, altered", &altered(&alice));
    secrets.add("the JWT, altered", &altered(&jwt));

    let conf = s.hsm.conf.clone();
    let config = s.config.clone();
    let (code, out) = blocking(move || run(&mut cli(&config, Some(&conf), &["init"]))).await;
    assert_eq!(code, Some(0), "{out}");
    secrets.assert_absent("init", &out);

    let config = s.config.clone();
    let conf = s.hsm.conf.clone();
    let served = blocking(move || Served::start(cli(&config, Some(&conf), &[]))).await;
    let http = https(&dir);
    let url = served.url.clone();
    let bearer = |t: &str| format!("Bearer {t}");
    let mut errors: Vec<(String, u16, String)> = Vec::new();

    // The workflow, to have a session, a certificate and a minted token.
    let new = br#"{"resource": "db:payroll", "task": "t", "duration_secs": 300, "profile": "mtls-client"}"#;
    let (status, body) = send(
        &http,
        "POST",
        &format!("{url}/v1/sessions"),
        &[&bearer(&alice)],
        Some("application/json"),
        Some(new.to_vec()),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let session: Value = serde_json::from_str(&body).unwrap();
    let sid = session["id"].as_str().unwrap().to_owned();
    let vote = json!({"request_hash": session["request_hash"]}).to_string();
    let (status, body) = send(
        &http,
        "POST",
        &format!("{url}/v1/sessions/{sid}/approve"),
        &[&bearer(&tokens["bob"])],
        Some("application/json"),
        Some(vote.into_bytes()),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (_, csr) = openssl_csr(&dir, "secrets", "ec:P-256");
    let csr_body = json!({ "csr": String::from_utf8(csr).unwrap() }).to_string();
    let (status, body) = send(
        &http,
        "POST",
        &format!("{url}/v1/sessions/{sid}/certificate"),
        &[&bearer(&alice)],
        Some("application/json"),
        Some(csr_body.into_bytes()),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = send(
        &http,
        "POST",
        &format!("{url}/v1/sessions/{sid}/token"),
        &[&bearer(&alice)],
        None,
        None,
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let minted: Value = serde_json::from_str(&body).unwrap();
    let minted = minted["token"].as_str().unwrap().to_owned();
    secrets.add("the minted session token", &minted);
    let (status, body) = send(
        &http,
        "POST",
        &format!("{url}/v1/introspect"),
        &[&bearer(&tokens["bob"])],
        Some("application/x-www-form-urlencoded"),
        Some(format!("token={minted}").into_bytes()),
    )
    .await;
    assert_eq!(
        (status, body.contains("\"active\":true")),
        (200, true),
        "{body}"
    );
    let (status, body) = send(
        &http,
        "GET",
        &format!("{url}/v1/sessions"),
        &[&bearer(&jwt)],
        None,
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = send(
        &http,
        "GET",
        &format!("{url}/v1/sessions"),
        &[&bearer(carol.expose_secret())],
        None,
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");

    // Every way a caller can get it wrong.
    let sessions = format!("{url}/v1/sessions");
    let one = format!("{url}/v1/sessions/{sid}");
    let attempts: Vec<Attempt> = vec![
        ("one character changed", "GET".into(), sessions.clone(), vec![bearer(&altered(&alice))], None),
        ("one character more", "GET".into(), sessions.clone(), vec![bearer(&format!("{alice}x"))], None),
        ("revoked token", "GET".into(), sessions.clone(), vec![bearer(carol_old.expose_secret())], None),
        ("unknown token", "GET".into(), sessions.clone(), vec![bearer(unknown.expose_secret())], None),
        ("no prefix", "GET".into(), sessions.clone(), vec![bearer(alice.strip_prefix("lst_").unwrap())], None),
        ("no scheme", "GET".into(), sessions.clone(), vec![alice.clone()], None),
        ("Basic", "GET".into(), sessions.clone(), vec![format!("Basic {}", STANDARD.encode(format!("alice:{alice}")))], None),
        ("two headers", "GET".into(), sessions.clone(), vec![bearer(&alice), bearer(&tokens["bob"])], None),
        ("not ASCII", "GET".into(), sessions.clone(), vec![format!("Bearer {alice}\u{e9}")], None),
        ("expired JWT", "GET".into(), sessions.clone(), vec![bearer(&expired)], None),
        ("JWT for another audience", "GET".into(), sessions.clone(), vec![bearer(&wrong_aud)], None),
        ("JWT altered", "GET".into(), sessions.clone(), vec![bearer(&altered(&jwt))], None),
        ("minted token as a caller", "GET".into(), sessions.clone(), vec![bearer(&minted)], None),
        ("token in the query", "GET".into(), format!("{sessions}?access_token={alice}"), vec![], None),
        ("token in the query of a session", "GET".into(), format!("{one}?access_token={alice}&jwt={jwt}"), vec![], None),
        ("token in the query, authenticated", "GET".into(), format!("{sessions}?access_token={alice}"), vec![bearer(&tokens["bob"])], None),
        ("JWT in the query", "GET".into(), format!("{url}/v1/audit?token={jwt}"), vec![bearer(&tokens["auditor"])], None),
        ("bad CSR", "POST".into(), format!("{one}/certificate"), vec![bearer(&alice)],
            Some(("application/json", json!({"csr": format!("-----BEGIN CERTIFICATE REQUEST-----\n{}\n-----END CERTIFICATE REQUEST-----\n", STANDARD.encode(&alice))}).to_string().into_bytes()))),
        ("CSR of garbage bytes", "POST".into(), format!("{one}/certificate"), vec![bearer(&alice)],
            Some(("application/pkcs10", alice.clone().into_bytes()))),
        ("a token as the CSR", "POST".into(), format!("{one}/certificate"), vec![bearer(&alice)],
            Some(("application/json", json!({"csr": jwt}).to_string().into_bytes()))),
        ("a token in a JSON field", "POST".into(), format!("{one}/approve"), vec![bearer(&tokens["bob"])],
            Some(("application/json", json!({"request_hash": alice}).to_string().into_bytes()))),
        ("a token in an unknown field", "POST".into(), sessions.clone(), vec![bearer(&alice)],
            Some(("application/json", json!({"resource": "db:payroll", "secret": alice}).to_string().into_bytes()))),
        ("a token as malformed JSON", "POST".into(), sessions.clone(), vec![bearer(&alice)],
            Some(("application/json", format!("{{\"task\": {alice}").into_bytes()))),
        ("a token as the audience", "POST".into(), format!("{one}/token"), vec![bearer(&alice)],
            Some(("application/json", json!({"x5t#S256": minted}).to_string().into_bytes()))),
        ("introspection of an altered token", "POST".into(), format!("{url}/v1/introspect"), vec![bearer(&tokens["bob"])],
            Some(("application/x-www-form-urlencoded", format!("token={}", altered(&minted)).into_bytes()))),
        ("introspection, bad form", "POST".into(), format!("{url}/v1/introspect"), vec![bearer(&tokens["bob"])],
            Some(("application/x-www-form-urlencoded", format!("tok={minted}&%%%").into_bytes()))),
        ("introspection without authentication", "POST".into(), format!("{url}/v1/introspect"), vec![],
            Some(("application/x-www-form-urlencoded", format!("token={minted}").into_bytes()))),
    ];
    for (name, method, target, auth, body) in attempts {
        let auth: Vec<&str> = auth.iter().map(String::as_str).collect();
        let (ct, bytes) = match body {
            Some((ct, b)) => (Some(ct), Some(b)),
            None => (None, None),
        };
        let (status, text) = send(&http, &method, &target, &auth, ct, bytes).await;
        errors.push((name.to_owned(), status, text));
    }
    for (name, status, text) in &errors {
        if *status < 400 && !name.starts_with("introspection of") {
            panic!("{name}: {status} {text}");
        }
        secrets.assert_absent(&format!("the answer to `{name}` ({status})"), text);
    }

    // The client commands, at trace level, with every kind of bad token.
    let root = dir.join("ca/root.pem");
    let bad_csr = write(
        &dir,
        "bad.csr",
        format!(
            "-----BEGIN CERTIFICATE REQUEST-----\n{}\n-----END CERTIFICATE REQUEST-----\n",
            STANDARD.encode(&alice)
        ),
    );
    let client_runs: Vec<(&str, Option<String>, Vec<String>, &str)> = vec![
        (
            "altered token",
            Some(altered(&alice)),
            vec!["status".into()],
            "unauthenticated",
        ),
        (
            "revoked token",
            Some(carol_old.expose_secret().to_owned()),
            vec!["status".into()],
            "unauthenticated",
        ),
        (
            "unknown token",
            Some(unknown.expose_secret().to_owned()),
            vec!["--json".into(), "status".into()],
            "unauthenticated",
        ),
        (
            "expired JWT",
            Some(expired.clone()),
            vec!["status".into(), sid.clone()],
            "unauthenticated",
        ),
        (
            "JWT for another audience",
            Some(wrong_aud.clone()),
            vec!["status".into()],
            "unauthenticated",
        ),
        (
            "token as a flag",
            None,
            vec!["status".into(), "--token".into(), altered(&alice)],
            "unauthenticated",
        ),
        (
            "bad CSR",
            Some(alice.clone()),
            vec![
                "cert".into(),
                sid.clone(),
                "--csr".into(),
                bad_csr.display().to_string(),
                "--cert-out".into(),
                dir.join("never.pem").display().to_string(),
            ],
            "csr_malformed",
        ),
        (
            "no such session",
            Some(alice.clone()),
            vec!["close".into(), "ses_aaaaaaaaaaaaaaaaaaaaaaaaaa".into()],
            "session_not_found",
        ),
        (
            "missing token file",
            None,
            vec![
                "status".into(),
                "--token-file".into(),
                dir.join("nope.token").display().to_string(),
            ],
            "invalid_argument",
        ),
        (
            "no server",
            Some(alice.clone()),
            vec![
                "status".into(),
                "--url".into(),
                "https://127.0.0.1:9".into(),
            ],
            "connection_failed",
        ),
        (
            "valid token",
            Some(alice.clone()),
            vec!["status".into(), sid.clone()],
            "",
        ),
        (
            "valid JWT",
            Some(jwt.clone()),
            vec!["--json".into(), "status".into()],
            "",
        ),
    ];
    for (name, token, args, code) in client_runs {
        let (url, root) = (url.clone(), root.clone());
        let (status, out) = blocking(move || {
            let mut cmd = lockstep_bin();
            cmd.args(&args)
                .env("LOCKSTEP_URL", &url)
                .env("LOCKSTEP_CA", &root)
                .env("LOCKSTEP_LOG", "trace")
                .env_remove("LOCKSTEP_TOKEN");
            if let Some(t) = token {
                cmd.env("LOCKSTEP_TOKEN", t);
            }
            run(&mut cmd)
        })
        .await;
        if code.is_empty() {
            assert_eq!(status, Some(0), "{name}: {out}");
        } else {
            assert_eq!(status, Some(1), "{name}: {out}");
            assert!(out.contains(code), "{name}: {out}");
        }
        secrets.assert_absent(&format!("lockstep client: {name}"), &out);
    }

    // The service's own log, from start to stop, at trace level.
    let log = blocking(move || served.stop()).await;
    assert!(
        log.contains("TRACE") && log.contains("DEBUG"),
        "trace logging was on"
    );
    assert!(log.contains("session requested"), "{log}");
    secrets.assert_absent("the service log", &log);

    // The audit trail, exported and read straight from the store.
    let config = s.config.clone();
    let (code, export) = blocking(move || run(&mut cli(&config, None, &["audit", "export"]))).await;
    assert_eq!(code, Some(0), "{export}");
    assert!(export.contains("refused"), "{export}");
    secrets.assert_absent("the audit export", &export);
    let config = s.config.clone();
    let (code, out) = blocking(move || run(&mut cli(&config, None, &["audit", "verify"]))).await;
    assert_eq!(code, Some(0), "{out}");
    secrets.assert_absent("audit verify", &out);
    for file in ["lockstep.db", "lockstep.db-wal"] {
        if let Ok(raw) = std::fs::read(dir.join(file)) {
            secrets.assert_absent(file, &String::from_utf8_lossy(&raw));
        }
    }
}

/// A TPM-backed configuration with owner and key auth by reference.
#[cfg(feature = "tpm")]
fn tpm_config(tcti: &str, name: &str) -> String {
    let mut text = format!(
        "[backend]\ntype = \"tpm\"\ntcti = \"{tcti}\"\nowner_auth = \"file:owner.auth\"\nkey_auth = \"file:key.auth\"\n"
    );
    for role in ["root", "issuing", "token", "audit"] {
        text.push_str(&format!(
            "\n[keys.{role}]\nlabel = \"{name}-{role}\"\nhandle = {:#010x}\n",
            unique_handle()
        ));
    }
    text.push_str(&format!(
        "\n[ca]\ndir = \"ca\"\nroot_subject = {{ common_name = \"{name} Root CA\" }}\nissuing_subject = {{ common_name = \"{name} Issuing CA\" }}\n"
    ));
    text
}

#[cfg(feature = "tpm")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tpm_auth_values_never_leak() {
    // A swtpm of its own: wrong auth values count toward its lockout.
    let mut tpm = blocking(SwTpm::start).await;
    let tcti = tpm.tcti();
    let (ok, text) = tpm2(&tcti, "tpm2_changeauth", &["-c", "owner", OWNER_AUTH]);
    assert!(ok, "{text}");
    let oidc = TestIssuer::start().await;
    let mut secrets = Secrets::default();
    for (name, value) in [
        ("the owner auth", OWNER_AUTH),
        ("a wrong owner auth", WRONG_OWNER_AUTH),
        ("the key auth", KEY_AUTH),
        ("a wrong key auth", WRONG_KEY_AUTH),
    ] {
        secrets.add(name, value);
    }
    let (alice, alice_sha) = lockstep::auth::tokens::generate().unwrap();
    let (bob, bob_sha) = lockstep::auth::tokens::generate().unwrap();
    secrets.add("alice's token", alice.expose_secret());
    secrets.add("bob's token", bob.expose_secret());
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_owned();
    let inline = [("alice", alice_sha.as_str()), ("bob", bob_sha.as_str())];
    let config = write(
        &d,
        "lockstep.toml",
        tpm_config(&tcti, "secrets-tpm") + &serve_section(&inline, &oidc),
    );
    write(
        &d,
        "policy.toml",
        SERVE_POLICY.replace("{iss}", &oidc.issuer()),
    );
    write(&d, "key.auth", format!("{KEY_AUTH}\n"));

    // A wrong owner auth: `init` fails at the first key, naming no value.
    write(&d, "owner.auth", format!("{WRONG_OWNER_AUTH}\n"));
    let c = config.clone();
    let (code, out) = blocking(move || run(&mut cli(&c, None, &["init"]))).await;
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("key_backend_login_failed"), "{out}");
    secrets.assert_absent("init with a wrong owner auth", &out);
    write(&d, "owner.auth", format!("{OWNER_AUTH}\n"));
    for args in [
        &["init"][..],
        &["keys", "list"],
        &["--json", "keys", "list"],
    ] {
        let c = config.clone();
        let (code, out) = blocking(move || run(&mut cli(&c, None, args))).await;
        assert_eq!(code, Some(0), "{args:?}: {out}");
        secrets.assert_absent(&format!("lockstep {args:?} on the TPM"), &out);
    }

    let c = config.clone();
    let served = blocking(move || Served::start(cli(&c, None, &[]))).await;
    let http = https(&d);
    let url = served.url.clone();
    let a = format!("Bearer {}", alice.expose_secret());
    let b = format!("Bearer {}", bob.expose_secret());
    let new = br#"{"resource": "db:payroll", "task": "t", "duration_secs": 300, "profile": "mtls-client"}"#;
    let (status, body) = send(
        &http,
        "POST",
        &format!("{url}/v1/sessions"),
        &[&a],
        Some("application/json"),
        Some(new.to_vec()),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let session: Value = serde_json::from_str(&body).unwrap();
    let sid = session["id"].as_str().unwrap().to_owned();
    let vote = json!({"request_hash": session["request_hash"]}).to_string();
    let (status, body) = send(
        &http,
        "POST",
        &format!("{url}/v1/sessions/{sid}/approve"),
        &[&b],
        Some("application/json"),
        Some(vote.into_bytes()),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (_, csr) = openssl_csr(&d, "tpm", "ec:P-256");
    let csr = json!({ "csr": String::from_utf8(csr).unwrap() })
        .to_string()
        .into_bytes();
    let certificate = format!("{url}/v1/sessions/{sid}/certificate");
    let (status, body) = send(
        &http,
        "POST",
        &certificate,
        &[&a],
        Some("application/json"),
        Some(csr.clone()),
    )
    .await;
    assert_eq!(status, 201, "{body}");

    // The TPM goes away: the answers say so and name no auth value.
    tpm = blocking(move || {
        tpm.kill();
        tpm
    })
    .await;
    let (status, body) = send(&http, "GET", &format!("{url}/readyz"), &[], None, None).await;
    assert_eq!(status, 503, "{body}");
    secrets.assert_absent("readyz without the TPM", &body);
    let (status, body) = send(
        &http,
        "POST",
        &certificate,
        &[&a],
        Some("application/json"),
        Some(csr.clone()),
    )
    .await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("key_backend_unavailable"), "{body}");
    secrets.assert_absent("a certificate without the TPM", &body);

    // It comes back, and lockstep's key auth file now holds a wrong value.
    write(&d, "key.auth", format!("{WRONG_KEY_AUTH}\n"));
    let _tpm = blocking(move || {
        tpm.restart();
        tpm
    })
    .await;
    let (status, body) = send(
        &http,
        "POST",
        &certificate,
        &[&a],
        Some("application/json"),
        Some(csr),
    )
    .await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("key_backend_login_failed"), "{body}");
    secrets.assert_absent("a certificate with a wrong key auth", &body);

    let log = blocking(move || served.stop()).await;
    assert!(log.contains("TRACE"), "trace logging was on");
    secrets.assert_absent("the service log on the TPM", &log);
    let c = config.clone();
    let (code, export) = blocking(move || run(&mut cli(&c, None, &["audit", "export"]))).await;
    assert_eq!(code, Some(0), "{export}");
    secrets.assert_absent("the audit export on the TPM", &export);
}
