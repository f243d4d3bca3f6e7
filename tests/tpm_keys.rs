//! The TPM backend against swtpm: keys generated in the TPM, signing,
//! occupied handles, what tpm2-tools and `keys list` see, a TPM that goes
//! away and comes back, concurrency, auth values, the `lockstep` binary, and
//! RFC 3161 timestamps signed by a TSA key in the TPM.
//!
//! Tests that kill or restart swtpm (or make auth fail, which counts toward
//! the TPM's dictionary-attack lockout) have a swtpm of their own; the rest
//! share the binary's [`SwTpm::shared`] one.
#![cfg(feature = "tpm")]

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lockstep::clock::{Clock, SystemClock, Timestamp};
use lockstep::keys::tpm::{TpmBackend, TpmConfig};
use lockstep::keys::{DeviceCode, DeviceKey, KeyBackend};
use lockstep::secret::SecretRef;
use lockstep::x509::csr::parse_and_verify;
use lockstep::x509::extension::SessionEvidence;
use lockstep::x509::{CertProfile, LeafSpec, San, SubjectName};

use common::tpm::{SwTpm, tpm_ca_config_text, tpm_key_ref, tpm2, unique_handle};
use common::{openssl, openssl_csr, write};

fn backend(tcti: &str) -> TpmBackend {
    TpmBackend::new(&TpmConfig::new(tcti)).unwrap()
}

fn backend_with(
    tcti: &str,
    owner_auth: Option<SecretRef>,
    key_auth: Option<SecretRef>,
) -> TpmBackend {
    let mut config = TpmConfig::new(tcti);
    config.owner_auth = owner_auth;
    config.key_auth = key_auth;
    TpmBackend::new(&config).unwrap()
}

#[test]
fn generated_key_signs_and_verifies() {
    let tpm = SwTpm::shared();
    let b = backend(&tpm.tcti());
    let key_ref = tpm_key_ref("sign", unique_handle());
    let key = b.generate_key(&key_ref, false).unwrap();
    for i in 0..20 {
        let msg = format!("to be signed {i}");
        let sig = key.sign(msg.as_bytes()).unwrap();
        assert!(key.public_key().verify(msg.as_bytes(), &sig));
        assert!(!key.public_key().verify(b"something else", &sig));
    }
    // A second backend (as after a restart of lockstep) opens the same key.
    let again = backend(&tpm.tcti()).open_key(&key_ref).unwrap();
    assert_eq!(again.public_key(), key.public_key());
    assert!(
        again
            .name()
            .contains(&format!("{:#010x}", key_ref.handle.unwrap()))
    );
    b.destroy_key(&key_ref).unwrap();
}

#[test]
fn an_occupied_handle_is_refused_unless_replaced() {
    let tpm = SwTpm::shared();
    let b = backend(&tpm.tcti());
    let key_ref = tpm_key_ref("force", unique_handle());
    assert!(!b.key_exists(&key_ref).unwrap());
    let first = b.generate_key(&key_ref, false).unwrap();
    assert!(b.key_exists(&key_ref).unwrap());
    let err = b.generate_key(&key_ref, false).unwrap_err();
    assert_eq!(err.code(), "key_exists");
    assert!(err.to_string().contains("--force"), "{err}");
    // Still the first key.
    let sig = first.sign(b"x").unwrap();
    assert!(first.public_key().verify(b"x", &sig));

    let second = b.generate_key(&key_ref, true).unwrap();
    assert_ne!(first.public_key(), second.public_key());
    let sig = second.sign(b"y").unwrap();
    assert!(second.public_key().verify(b"y", &sig));
    // The old key object now signs with the new key: its signatures no
    // longer verify under the old public key.
    let sig = first.sign(b"z").unwrap();
    assert!(!first.public_key().verify(b"z", &sig));

    b.destroy_key(&key_ref).unwrap();
    assert!(!b.key_exists(&key_ref).unwrap());
    let err = b.open_key(&key_ref).unwrap_err();
    assert_eq!(err.code(), "key_not_found");
    // Destroying what is not there is no error (init's rollback).
    b.destroy_key(&key_ref).unwrap();
}

#[test]
fn keys_need_a_persistent_handle() {
    let b = backend(&SwTpm::shared().tcti());
    let mut key_ref = tpm_key_ref("nohandle", 0);
    key_ref.handle = None;
    let err = b.generate_key(&key_ref, false).unwrap_err();
    assert_eq!(err.code(), "key_backend_config");
    key_ref.handle = Some(0x8000_0001);
    assert_eq!(
        b.key_exists(&key_ref).unwrap_err().code(),
        "key_backend_config"
    );
    // Platform range: readable, but lockstep does not create keys there.
    key_ref.handle = Some(0x8180_0000);
    let err = b.generate_key(&key_ref, false).unwrap_err();
    assert_eq!(err.code(), "key_backend_config");
    assert!(TpmBackend::new(&TpmConfig::new("carrier-pigeon:x")).is_err());
}

#[test]
fn tpm2_readpublic_shows_a_fixed_tpm_generated_signing_key() {
    let tpm = SwTpm::shared();
    let handle = unique_handle();
    let public = {
        let b = backend(&tpm.tcti());
        let key = b
            .generate_key(&tpm_key_ref("readpublic", handle), false)
            .unwrap();
        key.public_key().sec1_uncompressed()
    };
    // lockstep is idle now: another client may use the TPM.
    let (ok, text) = tpm2(
        &tpm.tcti(),
        "tpm2_readpublic",
        &["-c", &format!("{handle:#x}")],
    );
    assert!(ok, "{text}");
    let attributes = text
        .lines()
        .skip_while(|l| !l.starts_with("attributes:"))
        .nth(1)
        .unwrap_or_default();
    for required in [
        "fixedtpm",
        "fixedparent",
        "sensitivedataorigin",
        "userwithauth",
        "sign",
    ] {
        assert!(attributes.contains(required), "{required} missing: {text}");
    }
    for forbidden in ["decrypt", "restricted"] {
        assert!(!attributes.contains(forbidden), "{forbidden} set: {text}");
    }
    assert!(
        text.contains("NIST p256") && text.contains("ecdsa"),
        "{text}"
    );
    // The point tpm2-tools reads is the public key lockstep reported.
    let x = hex::encode(&public[1..33]);
    let y = hex::encode(&public[33..]);
    assert!(
        text.contains(&format!("x: {x}")) && text.contains(&format!("y: {y}")),
        "{text}"
    );
    backend(&tpm.tcti())
        .destroy_key(&tpm_key_ref("readpublic", handle))
        .unwrap();
}

#[test]
fn keys_list_shows_handles_labels_and_protection() {
    let tpm = SwTpm::shared();
    let dir = tempfile::tempdir().unwrap();
    let (text, root, issuing) = tpm_ca_config_text(&tpm.tcti(), "list", None, 3650, 1095);
    let path = write(dir.path(), "lockstep.toml", text);
    let config = lockstep::config::Config::load(&path).unwrap();
    let b = config.backend.open().unwrap();
    b.generate_key(&config.keys.root, false).unwrap();
    b.generate_key(&config.keys.issuing, false).unwrap();
    let objects = b.list().unwrap();
    for (handle, label) in [(root, "list-root"), (issuing, "list-issuing")] {
        let o = objects
            .iter()
            .find(|o| o.handle.as_deref() == Some(format!("{handle:#010x}").as_str()))
            .unwrap_or_else(|| panic!("{handle:#x} not listed: {objects:?}"));
        assert_eq!(o.label, label);
        assert_eq!(o.class, "private-key");
        assert_eq!(o.key_type.as_deref(), Some("EC P-256"));
        let p = o.protection.unwrap();
        assert!(p.is_hardware_bound() && p.local, "{o:?}");
        assert_eq!(
            o.attributes,
            [
                "fixedtpm",
                "fixedparent",
                "sensitivedataorigin",
                "userwithauth",
                "sign"
            ]
        );
    }
    let json = serde_json::to_value(&objects).unwrap();
    assert!(json.to_string().contains("\"handle\":\"0x"), "{json}");
    for key in [&config.keys.root, &config.keys.issuing] {
        b.destroy_key(key).unwrap();
    }
}

#[test]
fn eight_threads_signing_at_once_all_get_valid_signatures() {
    let tpm = SwTpm::shared();
    let b = backend(&tpm.tcti());
    let key_ref = tpm_key_ref("parallel", unique_handle());
    let key: Arc<dyn DeviceKey> = b.generate_key(&key_ref, false).unwrap();
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let key = key.clone();
            std::thread::spawn(move || {
                for i in 0..50 {
                    let msg = format!("thread {t} message {i}");
                    let sig = key.sign(msg.as_bytes()).unwrap();
                    assert!(
                        key.public_key().verify(msg.as_bytes(), &sig),
                        "bad signature {t}/{i}"
                    );
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    b.destroy_key(&key_ref).unwrap();
}

#[test]
fn a_killed_tpm_fails_fast_and_signing_recovers_after_restart() {
    let mut tpm = SwTpm::start();
    let b = backend(&tpm.tcti());
    let key = b
        .generate_key(&tpm_key_ref("outage", unique_handle()), false)
        .unwrap();
    let sig = key.sign(b"before").unwrap();
    assert!(key.public_key().verify(b"before", &sig));

    tpm.kill();
    for what in ["sign", "sign again", "check"] {
        let started = Instant::now();
        let err = if what == "check" {
            b.check().unwrap_err()
        } else {
            key.sign(b"while gone").unwrap_err()
        };
        let took = started.elapsed();
        assert_eq!(err.code(), "key_backend_unavailable", "{what}: {err}");
        assert!(
            matches!(err.device_code(), Some(DeviceCode::Tpm(_)) | None),
            "{err:?}"
        );
        assert!(took < Duration::from_secs(3), "{what} took {took:?}");
    }

    tpm.restart();
    // The same key object, no new backend: the next call reconnects.
    for i in 0..3 {
        let msg = format!("after restart {i}");
        let sig = key
            .sign(msg.as_bytes())
            .expect("reconnects after the restart");
        assert!(key.public_key().verify(msg.as_bytes(), &sig));
    }
    b.check().unwrap();
}

fn leaf_spec(not_after: Timestamp) -> LeafSpec {
    LeafSpec {
        subject: SubjectName::cn("tpm-restart").with_organization("lockstep session"),
        sans: vec![San::Dns("tpm-restart.example".into())],
        profile: CertProfile::MtlsClient,
        not_after,
        session: SessionEvidence::session("ses_tpm_restart"),
        revocation: None,
        build: None,
    }
}

#[test]
fn after_a_tpm_restart_the_same_keys_mint_under_the_existing_chain() {
    let mut tpm = SwTpm::start();
    let dir = tempfile::tempdir().unwrap();
    let (text, _, _) = tpm_ca_config_text(&tpm.tcti(), "restart", None, 3650, 1095);
    let path = write(dir.path(), "lockstep.toml", text);
    let config = lockstep::config::Config::load(&path).unwrap();
    let now = SystemClock.now();
    let before = {
        let b = config.backend.open().unwrap();
        lockstep::ca::init(&config, b.as_ref(), Default::default(), now).unwrap();
        let issuer = lockstep::ca::load_issuer(&config, b.as_ref(), now).unwrap();
        issuer.key().public_key().clone()
    };

    // A clean TPM restart on the same state (swtpm stopped and started).
    tpm.stop();
    tpm.restart();

    let b = config.backend.open().unwrap();
    let now = SystemClock.now();
    let issuer = lockstep::ca::load_issuer(&config, b.as_ref(), now).unwrap();
    assert_eq!(issuer.key().public_key(), &before, "same issuing key");
    let (_, csr_pem) = openssl_csr(dir.path(), "leaf", "ec:P-256");
    let csr = parse_and_verify(&csr_pem).unwrap();
    let issued = issuer
        .mint(&csr, &leaf_spec(now.plus_secs(300)), now)
        .unwrap();
    let cert = write(dir.path(), "leaf.pem", issued.pem().unwrap());
    let ca = &config.ca.dir;
    let (ok, text) = openssl(&[
        "verify",
        "-CAfile",
        ca.join("root.pem").to_str().unwrap(),
        "-untrusted",
        ca.join("issuing.pem").to_str().unwrap(),
        cert.to_str().unwrap(),
    ]);
    assert!(ok && text.contains(": OK"), "{text}");
}

#[test]
fn wrong_key_auth_is_a_login_error_that_names_no_secret() {
    let tpm = SwTpm::start();
    let dir = tempfile::tempdir().unwrap();
    let good = write(dir.path(), "key.auth", "correct horse\n");
    let bad = write(dir.path(), "bad.auth", "battery staple\n");
    let key_ref = tpm_key_ref("auth", unique_handle());
    let b = backend_with(&tpm.tcti(), None, Some(SecretRef::File(good)));
    let key = b.generate_key(&key_ref, false).unwrap();
    let sig = key.sign(b"with auth").unwrap();
    assert!(key.public_key().verify(b"with auth", &sig));

    for wrong in [Some(SecretRef::File(bad)), None] {
        let other = backend_with(&tpm.tcti(), None, wrong);
        let key = other.open_key(&key_ref).unwrap();
        let err = key.sign(b"x").unwrap_err();
        assert_eq!(err.code(), "key_backend_login_failed", "{err}");
        let text = format!("{err} {err:?}");
        assert!(text.contains("TPM_RC_"), "{text}");
        assert!(
            !text.contains("horse") && !text.contains("battery"),
            "{text}"
        );
    }
    // The right auth still works (one failure does not lock the TPM out).
    let sig = key.sign(b"again").unwrap();
    assert!(key.public_key().verify(b"again", &sig));

    let missing = backend_with(
        &tpm.tcti(),
        None,
        Some(SecretRef::File(dir.path().join("nope"))),
    );
    let err = missing.open_key(&key_ref).unwrap().sign(b"x").unwrap_err();
    assert_eq!(err.code(), "key_backend_config", "{err}");
}

#[test]
fn owner_auth_is_needed_to_create_and_evict_keys() {
    let tpm = SwTpm::start();
    let dir = tempfile::tempdir().unwrap();
    let (ok, text) = tpm2(
        &tpm.tcti(),
        "tpm2_changeauth",
        &["-c", "owner", "owner-secret"],
    );
    assert!(ok, "{text}");
    let owner = write(dir.path(), "owner.auth", "owner-secret\n");
    let key_ref = tpm_key_ref("owner", unique_handle());

    let without = backend(&tpm.tcti());
    let err = without.generate_key(&key_ref, false).unwrap_err();
    assert_eq!(err.code(), "key_backend_login_failed", "{err}");
    assert!(!without.key_exists(&key_ref).unwrap());
    drop(without);

    let with = backend_with(&tpm.tcti(), Some(SecretRef::File(owner)), None);
    let key = with.generate_key(&key_ref, false).unwrap();
    let sig = key.sign(b"signing needs no owner auth").unwrap();
    assert!(
        key.public_key()
            .verify(b"signing needs no owner auth", &sig)
    );
    with.destroy_key(&key_ref).unwrap();
    assert!(!with.key_exists(&key_ref).unwrap());
}

fn run_lockstep(dir: &Path, config: &Path, args: &[&str]) -> Output {
    common::tpm::output(
        Command::new(env!("CARGO_BIN_EXE_lockstep"))
            .current_dir(dir)
            .arg("--config")
            .arg(config)
            .args(args)
            .env("TSS2_LOG", "all+none"),
    )
    .unwrap()
}

fn all(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn cli_init_and_keys_list_on_swtpm() {
    let tpm = SwTpm::start();
    let dir = tempfile::tempdir().unwrap();
    let (text, root, issuing) = tpm_ca_config_text(&tpm.tcti(), "cli", None, 3650, 1095);
    let config = write(dir.path(), "lockstep.toml", text);

    let out = run_lockstep(dir.path(), &config, &["init", "--json"]);
    assert!(out.status.success(), "{}", all(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["mode"], "self-signed-root");
    assert!(
        report["backend"]
            .as_str()
            .unwrap()
            .starts_with("tpm:swtpm:"),
        "{report}"
    );
    let ca = dir.path().join("ca");
    let (ok, text) = openssl(&[
        "verify",
        "-CAfile",
        ca.join("root.pem").to_str().unwrap(),
        ca.join("issuing.pem").to_str().unwrap(),
    ]);
    assert!(ok, "{text}");

    // A second init refuses to replace the keys.
    let out = run_lockstep(dir.path(), &config, &["init"]);
    assert!(!out.status.success());
    assert!(all(&out).contains("already exists"), "{}", all(&out));

    let out = run_lockstep(dir.path(), &config, &["keys", "list", "--json"]);
    assert!(out.status.success(), "{}", all(&out));
    let listing: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let objects = listing["objects"].as_array().unwrap();
    for (handle, label) in [(root, "cli-root"), (issuing, "cli-issuing")] {
        let o = objects
            .iter()
            .find(|o| o["handle"] == format!("{handle:#010x}"))
            .unwrap_or_else(|| panic!("{handle:#x} missing: {listing}"));
        assert_eq!(o["label"], label);
        assert_eq!(o["key_type"], "EC P-256");
        assert_eq!(o["protection"]["sensitive"], true);
        assert_eq!(o["protection"]["extractable"], false);
        assert_eq!(o["protection"]["never_extractable"], true);
        assert!(
            o["attributes"]
                .as_array()
                .unwrap()
                .iter()
                .any(|a| a == "fixedtpm")
        );
    }

    let out = run_lockstep(dir.path(), &config, &["keys", "list"]);
    assert!(out.status.success(), "{}", all(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("{root:#010x}"))
            && text.contains("cli-issuing")
            && text.contains("ATTRIBUTES")
            && text.contains("fixedtpm|fixedparent|sensitivedataorigin|userwithauth|sign"),
        "{text}"
    );

    // With the TPM gone, the CLI says so and exits quickly.
    drop(tpm);
    let started = Instant::now();
    let out = run_lockstep(dir.path(), &config, &["keys", "list", "--json"]);
    assert!(!out.status.success());
    assert!(
        all(&out).contains("key_backend_unavailable"),
        "{}",
        all(&out)
    );
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn a_tsa_key_in_the_tpm_signs_timestamps_openssl_verifies() {
    let tpm = SwTpm::shared();
    let dir = tempfile::tempdir().unwrap();
    let (text, root_handle, issuing_handle) =
        tpm_ca_config_text(&tpm.tcti(), "tsa", None, 3650, 1095);
    let path = write(dir.path(), "lockstep.toml", text);
    let config = lockstep::config::Config::load(&path).unwrap();
    let now = SystemClock.now();
    let b = config.backend.open().unwrap();
    lockstep::ca::init(&config, b.as_ref(), Default::default(), now).unwrap();
    let issuer = lockstep::ca::load_issuer(&config, b.as_ref(), now).unwrap();
    let key_ref = tpm_key_ref("tsa", unique_handle());
    let key = b.generate_key(&key_ref, false).unwrap();
    let tsa = lockstep::tsa::open(key, &issuer, &dir.path().join("ca/tsa.pem"), now).unwrap();

    let stamped = b"a signature's bytes";
    let imprint: [u8; 32] = sha2::Digest::finalize(sha2::Digest::chain_update(
        <sha2::Sha256 as sha2::Digest>::new(),
        stamped,
    ))
    .into();
    let stamp = lockstep::tsa::Stamp {
        imprint,
        serial: lockstep::x509::random_serial().unwrap(),
        nonce: Some(vec![0x12, 0x34, 0x56]),
    };
    let response = write(dir.path(), "r.tsr", tsa.stamp(&stamp, now).unwrap());
    let chain = write(dir.path(), "tsa-chain.pem", tsa.chain_pem().unwrap());
    let data = write(dir.path(), "data", stamped);
    let root = dir.path().join("ca/root.pem");
    let (ok, out) = openssl(&[
        "ts",
        "-verify",
        "-data",
        data.to_str().unwrap(),
        "-in",
        response.to_str().unwrap(),
        "-CAfile",
        root.to_str().unwrap(),
        "-untrusted",
        chain.to_str().unwrap(),
    ]);
    assert!(ok && out.contains("Verification: OK"), "{out}");
    let (ok, out) = openssl(&["ts", "-reply", "-in", response.to_str().unwrap(), "-text"]);
    assert!(ok && out.contains("Nonce: 0x123456"), "{out}");
    let facts = lockstep::tsa::read_response(&std::fs::read(&response).unwrap()).unwrap();
    assert_eq!(
        (facts.imprint.as_slice(), facts.gen_time),
        (&imprint[..], now)
    );
    // The shared TPM's persistent handles are few: give these back.
    b.destroy_key(&key_ref).unwrap();
    for (label, handle) in [("tsa-root", root_handle), ("tsa-issuing", issuing_handle)] {
        b.destroy_key(&tpm_key_ref(label, handle)).unwrap();
    }
}
