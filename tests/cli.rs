//! The `lockstep` binary end to end: `init` (self-signed and external
//! root), `keys list`, refusals and error output, checked with openssl and
//! pkcs11-tool.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{IsolatedToken, ca_config_text, openssl, softhsm, write};

struct Env {
    dir: tempfile::TempDir,
    config: PathBuf,
    token: String,
    hsm: IsolatedToken,
}

/// A fresh token in a SoftHSM2 store of its own, and a configuration for
/// it; the binary runs in child processes.
fn env(name: &str) -> Env {
    let hsm = softhsm().isolated_token(name);
    let dir = tempfile::tempdir().unwrap();
    let config = write(
        dir.path(),
        "lockstep.toml",
        ca_config_text(softhsm(), &hsm.label, name, 3650, 1095),
    );
    Env {
        dir,
        config,
        token: hsm.label.clone(),
        hsm,
    }
}

fn lockstep_with(e: &Env, config: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lockstep"))
        .arg("--config")
        .arg(config)
        .args(args)
        .env("SOFTHSM2_CONF", &e.hsm.conf)
        .output()
        .unwrap()
}

fn lockstep(e: &Env, args: &[&str]) -> Output {
    lockstep_with(e, &e.config, args)
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn all(o: &Output) -> String {
    format!("{}{}", stdout(o), String::from_utf8_lossy(&o.stderr))
}

#[test]
fn init_creates_a_chain_openssl_verifies_and_refuses_to_overwrite() {
    let e = env("cli-init");
    let out = lockstep(&e, &["init", "--json"]);
    assert!(out.status.success(), "{}", all(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["mode"], "self-signed-root");
    let ca = e.dir.path().join("ca");
    let (ok, text) = openssl(&[
        "verify",
        "-CAfile",
        ca.join("root.pem").to_str().unwrap(),
        ca.join("issuing.pem").to_str().unwrap(),
    ]);
    assert!(ok, "{text}");
    let (_, text) = openssl(&[
        "x509",
        "-in",
        ca.join("issuing.pem").to_str().unwrap(),
        "-noout",
        "-text",
    ]);
    assert!(text.contains("CA:TRUE, pathlen:0"), "{text}");
    assert!(text.contains("Certificate Sign, CRL Sign"), "{text}");
    assert!(text.contains("X509v3 Key Usage: critical"), "{text}");
    let (_, text) = openssl(&[
        "x509",
        "-in",
        ca.join("root.pem").to_str().unwrap(),
        "-noout",
        "-text",
    ]);
    assert!(text.contains("CA:TRUE, pathlen:1"), "{text}");

    // Again: refused, nothing changed.
    let before = std::fs::read(ca.join("chain.pem")).unwrap();
    let out = lockstep(&e, &["init"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(all(&out).contains("error[key_exists]"), "{}", all(&out));
    assert!(all(&out).contains("--force"));
    assert_eq!(std::fs::read(ca.join("chain.pem")).unwrap(), before);

    // --json errors are machine-readable.
    let out = lockstep(&e, &["init", "--json"]);
    let err: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(err["error"], "key_exists");

    // --force replaces keys and chain.
    let out = lockstep(&e, &["init", "--force"]);
    assert!(out.status.success(), "{}", all(&out));
    assert_ne!(std::fs::read(ca.join("chain.pem")).unwrap(), before);
}

#[test]
fn keys_list_and_pkcs11_tool_show_sensitive_never_extractable_keys() {
    let e = env("cli-list");
    assert!(lockstep(&e, &["init"]).status.success());
    let out = lockstep(&e, &["keys", "list", "--json"]);
    assert!(out.status.success(), "{}", all(&out));
    let listing: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let objects = listing["objects"].as_array().unwrap();
    let private: Vec<_> = objects
        .iter()
        .filter(|o| o["class"] == "private-key")
        .collect();
    assert_eq!(
        private.len(),
        6,
        "root, issuing, token, audit, SSH CA and TSA keys"
    );
    for o in private {
        assert_eq!(o["key_type"], "EC P-256");
        let p = &o["protection"];
        assert_eq!(p["sensitive"], true);
        assert_eq!(p["extractable"], false);
        assert_eq!(p["always_sensitive"], true);
        assert_eq!(p["never_extractable"], true);
    }
    let text = stdout(&lockstep(&e, &["keys", "list"]));
    assert!(
        text.contains("cli-list-issuing") && text.contains("NEVER_EXTRACTABLE"),
        "{text}"
    );

    let tool = Command::new("pkcs11-tool")
        .env("SOFTHSM2_CONF", &e.hsm.conf)
        .args([
            "--module",
            common::MODULE,
            "--token-label",
            &e.token,
            "--login",
        ])
        .args([
            "--pin",
            common::USER_PIN,
            "--list-objects",
            "--type",
            "privkey",
        ])
        .output()
        .expect("pkcs11-tool runs (install opensc: scripts/setup)");
    let text = all(&tool);
    assert!(tool.status.success(), "{text}");
    assert_eq!(
        text.matches("Access:     sensitive, always sensitive, never extractable, local")
            .count(),
        6,
        "{text}"
    );
    assert!(
        text.contains("Usage:      sign\n"),
        "private keys may only sign: {text}"
    );
}

#[test]
fn wrong_pin_is_refused_without_echoing_it() {
    let e = env("cli-pin");
    let bad = write(e.dir.path(), "bad.pin", "pin-that-is-wrong-9731\n");
    let text = std::fs::read_to_string(&e.config).unwrap().replace(
        &softhsm().pin_file.display().to_string(),
        &bad.display().to_string(),
    );
    let config = write(e.dir.path(), "bad.toml", text);
    for json in [false, true] {
        let args: &[&str] = if json {
            &["keys", "list", "--json"]
        } else {
            &["keys", "list"]
        };
        let out = lockstep_with(&e, &config, args);
        assert_eq!(out.status.code(), Some(1));
        let text = all(&out);
        assert!(text.contains("key_backend_login_failed"), "{text}");
        assert!(text.contains("CKR_PIN_INCORRECT"), "{text}");
        assert!(!text.contains("pin-that-is-wrong"), "PIN echoed: {text}");
    }
}

#[test]
fn external_root_csr_then_installed_chain_issues() {
    let e = env("cli-ext");
    let dir = e.dir.path();
    let out = lockstep(&e, &["init", "--external-root"]);
    assert!(out.status.success(), "{}", all(&out));
    let csr = dir.join("ca/issuing.csr.pem");
    let (ok, text) = openssl(&[
        "req",
        "-in",
        csr.to_str().unwrap(),
        "-noout",
        "-verify",
        "-text",
    ]);
    assert!(ok, "{text}");
    assert!(text.contains("CA:TRUE, pathlen:0"), "{text}");

    // An external root (openssl) signs it.
    let p = |n: &str| dir.join(n).to_str().unwrap().to_owned();
    let (ok, text) = openssl(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-384",
        "-nodes",
        "-keyout",
        &p("ext-root.key"),
        "-out",
        &p("ext-root.pem"),
        "-days",
        "30",
        "-subj",
        "/O=Example/CN=External Root",
    ]);
    assert!(ok, "{text}");
    write(
        dir,
        "ca.ext",
        "basicConstraints=critical,CA:TRUE,pathlen:0\nkeyUsage=critical,keyCertSign,cRLSign\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n",
    );
    let (ok, text) = openssl(&[
        "x509",
        "-req",
        "-in",
        csr.to_str().unwrap(),
        "-CA",
        &p("ext-root.pem"),
        "-CAkey",
        &p("ext-root.key"),
        "-set_serial",
        "4242",
        "-days",
        "20",
        "-sha384",
        "-extfile",
        &p("ca.ext"),
        "-out",
        &p("issued.pem"),
    ]);
    assert!(ok, "{text}");
    // Root first, issuing second: install puts them in order.
    let bundle = format!(
        "{}{}",
        std::fs::read_to_string(dir.join("ext-root.pem")).unwrap(),
        std::fs::read_to_string(dir.join("issued.pem")).unwrap()
    );
    write(dir, "bundle.pem", bundle);

    // A chain for another key is refused.
    let out = lockstep(&e, &["init", "--install-chain", &p("ext-root.pem")]);
    assert_eq!(out.status.code(), Some(1));
    assert!(all(&out).contains("invalid_chain"), "{}", all(&out));

    let out = lockstep(&e, &["init", "--install-chain", &p("bundle.pem"), "--json"]);
    assert!(out.status.success(), "{}", all(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["mode"], "installed-chain");
    let (ok, text) = openssl(&["verify", "-CAfile", &p("ca/root.pem"), &p("ca/issuing.pem")]);
    assert!(ok, "{text}");
}

#[test]
fn every_subcommand_has_help() {
    for args in [
        &["--help"][..],
        &["init", "--help"],
        &["keys", "--help"],
        &["keys", "list", "--help"],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_lockstep"))
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}");
        assert!(stdout(&out).contains("Usage"), "{args:?}");
    }
}

#[test]
fn missing_or_broken_configuration_is_a_clear_error() {
    let e = env("cli-noconf");
    let dir = tempfile::tempdir().unwrap();
    let out = lockstep_with(&e, &dir.path().join("nope.toml"), &["keys", "list"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(all(&out).contains("error[config_invalid]"), "{}", all(&out));
    let broken = write(dir.path(), "broken.toml", "[backend]\ntype = \"floppy\"\n");
    let out = lockstep_with(&e, &broken, &["keys", "list"]);
    assert!(all(&out).contains("broken.toml"), "{}", all(&out));
}

/// `text` without its `[keys.<role>]` table.
fn without_key(text: &str, role: &str) -> String {
    let start = text.find(&format!("[keys.{role}]")).unwrap();
    let end = text[start..].find("\n\n").map_or(text.len(), |i| start + i);
    format!("{}{}", &text[..start], &text[end..])
}

#[test]
fn init_adds_the_ssh_ca_and_tsa_keys_to_an_existing_ca() {
    let e = env("cli-add-keys");
    let full = std::fs::read_to_string(&e.config).unwrap();
    let without = without_key(&without_key(&full, "ssh"), "tsa");
    let older = write(e.dir.path(), "older.toml", &without);
    let out = lockstep_with(&e, &older, &["init"]);
    assert!(out.status.success(), "{}", all(&out));
    let chain = std::fs::read(e.dir.path().join("ca/chain.pem")).unwrap();

    // The configuration gains [keys.ssh] and [keys.tsa]: init creates
    // those keys alone and leaves the chain as it was.
    let out = lockstep(&e, &["init", "--json"]);
    assert!(out.status.success(), "{}", all(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["mode"], "added-service-keys", "{report}");
    assert_eq!(
        report["service_keys"],
        serde_json::json!(["ssh", "tsa"]),
        "{report}"
    );
    assert_eq!(
        std::fs::read(e.dir.path().join("ca/chain.pem")).unwrap(),
        chain
    );
    let text = stdout(&lockstep(&e, &["keys", "list"]));
    assert!(text.contains("cli-add-keys-ssh"), "{text}");
    assert!(text.contains("cli-add-keys-tsa"), "{text}");
}
