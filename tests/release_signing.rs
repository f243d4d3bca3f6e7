//! Release signing checked by tools lockstep did not write: a CI job's
//! `lockstep sign` bundle is accepted by `@sigstore/verify` (npm) against
//! lockstep's trusted root, also five years on (faketime) when the
//! certificate and the TSA certificate have long expired; `openssl ts
//! -verify` accepts the timestamp over the signature, `openssl dgst` the
//! signature, `openssl verify -attime` the chain. Refused, each with its
//! code: a changed artifact, another identity or issuer, a digest other
//! than the approved one, another key's signature, another session's
//! certificate, a second signature on a one-shot session, a request after
//! the session closed.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use common::gateway::certificate_for;
use common::oidc::TestIssuer;
use common::server::TestServer;
use common::{openssl, openssl_csr, openssl_sign, output_text};

/// The GitHub Actions claims of the release job's token.
fn ci_claims() -> Value {
    json!({
        "repository": "acme/app", "repository_id": "4242", "repository_owner": "acme",
        "repository_owner_id": "77", "ref": "refs/tags/v1.2.3", "sha": "0123abcd",
        "job_workflow_ref": "acme/app/.github/workflows/release.yml@refs/tags/v1.2.3",
        "workflow_ref": "acme/app/.github/workflows/release.yml@refs/tags/v1.2.3",
        "event_name": "push", "run_id": "991", "run_attempt": "1",
        "runner_environment": "github-hosted", "environment": "release",
    })
}

const IDENTITY: &str = "https://github.com/acme/app/.github/workflows/release.yml@refs/tags/v1.2.3";

fn policy(iss: &str) -> String {
    format!(
        r#"
auditors = ["token:auditor"]

[[resource]]
match = "release:acme/app"
requesters = ["oidc:{iss}:repo:acme/app:*"]
claims = {{ repository_id = "4242", job_workflow_ref = "acme/app/.github/workflows/release.yml@refs/tags/*", environment = "release" }}
approvers = ["token:bob", "token:carol"]
quorum = 2
max_duration = "10m"
profiles = ["code-signing"]
signing = {{ close_after = true }}

[[resource]]
match = "release:tools"
requesters = ["token:alice"]
approvers = ["token:bob"]
quorum = 1
max_duration = "10m"
profiles = ["code-signing", "mtls-client"]
credentials = 2
"#
    )
}

/// `lockstep ARGS --json` with `token`; the parsed output, or the error.
fn lockstep(srv: &TestServer, token: &str, args: &[&str]) -> Result<Value, String> {
    let out = Command::new(env!("CARGO_BIN_EXE_lockstep"))
        .arg("--json")
        .args(args)
        .env("LOCKSTEP_URL", &srv.url)
        .env("LOCKSTEP_CA", srv.root_pem())
        .env("LOCKSTEP_TOKEN", token)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    if out.status.success() {
        Ok(serde_json::from_slice(&out.stdout).unwrap_or(Value::Null))
    } else {
        Err(output_text(&out))
    }
}

/// `@sigstore/verify` on a bundle, through `tests/sigstore/verify.mjs`,
/// optionally under faketime.
fn sigstore_verify(
    dir: &Path,
    bundle: &Path,
    artifact: &Path,
    root: &Path,
    policy: &[&str],
    fake: Option<&str>,
) -> Value {
    let client = common::node::installed("sigstore", &["verify.mjs"], "@sigstore/verify");
    let mut cmd = match fake {
        Some(offset) => {
            let mut c = Command::new("faketime");
            c.args(["-f", offset, "node"]);
            c
        }
        None => Command::new("node"),
    };
    let out = cmd
        .arg(client.join("verify.mjs"))
        .args(["--bundle", bundle.to_str().unwrap()])
        .args(["--artifact", artifact.to_str().unwrap()])
        .args(["--trusted-root", root.to_str().unwrap()])
        .args(policy)
        .current_dir(dir)
        .output()
        .unwrap();
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("verify.mjs: {}", output_text(&out)))
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

fn sha256_text(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_ci_release_bundle_verifies_with_sigstore_and_openssl_for_years() {
    let idp = TestIssuer::start().await;
    let extra = format!(
        "[[auth.oidc]]\nissuer = \"{}\"\naudience = \"lockstep\"\njwks = \"{}\"\n",
        idp.issuer(),
        idp.jwks_url()
    );
    let srv = TestServer::start(
        "release-ci",
        &policy(&idp.issuer()),
        &["alice", "bob", "carol", "auditor"],
        &extra,
    )
    .await;
    let dir = srv.dir.path();
    let artifact = write(dir, "app.tar.gz", b"the release v1.2.3\n");
    let digest = sha256_text(b"the release v1.2.3\n");
    let jwt = idp.token(
        "repo:acme/app:environment:release",
        "lockstep",
        ci_claims(),
        600,
    );

    // The job asks with the artifact's digest; two approvers approve it.
    let body = json!({"resource": "release:acme/app", "task": "release v1.2.3", "duration_secs": 300,
        "profile": "code-signing", "request_digest": digest});
    let (status, s) = srv
        .call(
            "POST",
            "/v1/sessions",
            Some(&format!("Bearer:{jwt}")),
            Some(body),
        )
        .await;
    assert_eq!(status, 201, "{s}");
    let id = s["id"].as_str().unwrap().to_owned();
    for who in ["bob", "carol"] {
        assert_eq!(srv.vote(who, &s, "approve").await.0, 200);
    }
    // Approvers see which build asks, and the signatures left.
    let (_, seen) = srv
        .call("GET", &format!("/v1/sessions/{id}"), Some("bob"), None)
        .await;
    assert_eq!(seen["build"]["issuer"], idp.issuer(), "{seen}");
    assert_eq!(seen["build"]["claims"]["repository_id"], "4242", "{seen}");
    assert_eq!(
        (
            seen["signatures_allowed"].clone(),
            seen["signatures_timestamped"].clone()
        ),
        (json!(1), json!(0))
    );

    // `lockstep sign` writes the bundle; the policy closes the session.
    let bundle_path = dir.join("app.sigstore.json");
    let signed = lockstep(
        &srv,
        &jwt,
        &[
            "sign",
            &id,
            "--artifact",
            artifact.to_str().unwrap(),
            "--bundle-out",
            bundle_path.to_str().unwrap(),
        ],
    )
    .unwrap();
    assert_eq!(signed["artifact_digest"], digest.as_str());
    assert_eq!(signed["session_closed"], true, "{signed}");
    let (_, after) = srv
        .call("GET", &format!("/v1/sessions/{id}"), Some("bob"), None)
        .await;
    assert_eq!(after["state"], "closed", "{after}");
    assert_eq!(after["closed_by"], "lockstep:policy", "{after}");
    assert_eq!(after["signatures_timestamped"], 1, "{after}");
    // Anyone may write the trusted root: no token.
    let root = dir.join("trusted_root.json");
    lockstep(&srv, "", &["trusted-root", "--out", root.to_str().unwrap()]).unwrap();

    // @sigstore/verify: one timestamp, the identity and issuer, now and
    // five years on (the certificate and the TSA certificate expired).
    let policy = ["--identity", IDENTITY, "--issuer", &idp.issuer()];
    for fake in [None, Some("+5y")] {
        let v = sigstore_verify(dir, &bundle_path, &artifact, &root, &policy, fake);
        assert_eq!(v["ok"], true, "{fake:?}: {v}");
        assert_eq!(v["timestamps"].as_array().map(Vec::len), Some(1), "{v}");
        assert_eq!(v["identity"]["subjectAlternativeName"], IDENTITY, "{v}");
    }
    let changed = write(
        dir,
        "changed.tar.gz",
        b"the release v1.2.3 with a backdoor\n",
    );
    let v = sigstore_verify(dir, &bundle_path, &changed, &root, &policy, None);
    assert_eq!(
        (v["ok"].clone(), v["code"].clone()),
        (json!(false), json!("SIGNATURE_ERROR")),
        "{v}"
    );
    for wrong in [
        [
            "--identity",
            "https://github.com/evil/app/.github/workflows/release.yml@refs/tags/v1.2.3",
            "--issuer",
            &idp.issuer(),
        ],
        [
            "--identity",
            IDENTITY,
            "--issuer",
            "https://token.actions.githubusercontent.com",
        ],
    ] {
        let v = sigstore_verify(dir, &bundle_path, &artifact, &root, &wrong, None);
        assert_eq!(v["code"], "UNTRUSTED_SIGNER_ERROR", "{v}");
    }

    // lockstep verify: the same, plus the session's approval.
    let verify = |artifact: &Path, extra: &[&str]| {
        let mut args = vec![
            "verify",
            "--bundle",
            bundle_path.to_str().unwrap(),
            "--artifact",
            artifact.to_str().unwrap(),
            "--trusted-root",
            root.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        lockstep(&srv, "unused", &args)
    };
    let ok = verify(&artifact, &policy).unwrap();
    assert_eq!(ok["session"], id.as_str());
    assert_eq!(ok["approved_digest"], digest.as_str());
    assert_eq!(ok["approvers"], json!(["token:bob", "token:carol"]), "{ok}");
    let err = verify(&changed, &[]).unwrap_err();
    assert!(err.contains("artifact_mismatch"), "{err}");
    let err = verify(&artifact, &["--identity", "https://github.com/evil/x"]).unwrap_err();
    assert!(err.contains("identity_mismatch"), "{err}");
    let err = verify(&artifact, &["--issuer", "https://elsewhere"]).unwrap_err();
    assert!(err.contains("issuer_mismatch"), "{err}");

    // openssl: the token over the signature, the signature, the chain at
    // the timestamp's time, the TSA's critical EKU, the CI extensions.
    let bundle: Value = serde_json::from_slice(&std::fs::read(&bundle_path).unwrap()).unwrap();
    let b64 = |v: &Value| B64.decode(v.as_str().unwrap()).unwrap();
    let sig = write(
        dir,
        "sig.der",
        &b64(&bundle["messageSignature"]["signature"]),
    );
    let tsr = write(
        dir,
        "resp.tsr",
        &b64(
            &bundle["verificationMaterial"]["timestampVerificationData"]["rfc3161Timestamps"][0]["signedTimestamp"],
        ),
    );
    let cert_der = write(
        dir,
        "leaf.der",
        &b64(&bundle["verificationMaterial"]["certificate"]["rawBytes"]),
    );
    let cert = dir.join("leaf.pem");
    let (ok, text) = openssl(&[
        "x509",
        "-inform",
        "DER",
        "-in",
        cert_der.to_str().unwrap(),
        "-out",
        cert.to_str().unwrap(),
    ]);
    assert!(ok, "{text}");
    let tsa_chain = write(
        dir,
        "tsa-chain.pem",
        published_text(&srv, "/v1/tsa").await.as_bytes(),
    );
    let root_pem = srv.root_pem();
    let (ok, text) = openssl(&[
        "ts",
        "-verify",
        "-data",
        sig.to_str().unwrap(),
        "-in",
        tsr.to_str().unwrap(),
        "-CAfile",
        root_pem.to_str().unwrap(),
        "-untrusted",
        tsa_chain.to_str().unwrap(),
    ]);
    assert!(ok && text.contains("Verification: OK"), "{text}");
    let (ok, reply) = openssl(&["ts", "-reply", "-in", tsr.to_str().unwrap(), "-text"]);
    assert!(
        ok && reply.contains("1.3.6.1.4.1.32473.7683.3.1") && reply.contains("Nonce: 0x"),
        "{reply}"
    );
    let pubkey = dir.join("leaf.pub");
    let (ok, text) = openssl(&[
        "x509",
        "-in",
        cert.to_str().unwrap(),
        "-pubkey",
        "-noout",
        "-out",
        pubkey.to_str().unwrap(),
    ]);
    assert!(ok, "{text}");
    let (ok, text) = openssl(&[
        "dgst",
        "-sha256",
        "-verify",
        pubkey.to_str().unwrap(),
        "-signature",
        sig.to_str().unwrap(),
        artifact.to_str().unwrap(),
    ]);
    assert!(ok && text.contains("Verified OK"), "{text}");
    let gen_time = time::OffsetDateTime::parse(
        signed["signed_at"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    let at = gen_time.unix_timestamp().to_string();
    let (ok, text) = openssl(&[
        "verify",
        "-attime",
        &at,
        "-purpose",
        "any",
        "-CAfile",
        root_pem.to_str().unwrap(),
        "-untrusted",
        tsa_chain.to_str().unwrap(),
        cert.to_str().unwrap(),
    ]);
    assert!(ok, "{text}");
    let (_, leaf_text) = openssl(&["x509", "-in", cert.to_str().unwrap(), "-noout", "-text"]);
    for want in [
        "1.3.6.1.4.1.57264.1.8",
        "1.3.6.1.4.1.57264.1.9",
        "1.3.6.1.4.1.57264.1.12",
        "1.3.6.1.4.1.57264.1.15",
        "https://github.com/acme/app",
        "Code Signing",
    ] {
        assert!(leaf_text.contains(want), "{want}: {leaf_text}");
    }
    let tsa_cert = write(dir, "tsa.pem", tsa_chain_first(&tsa_chain).as_bytes());
    let (_, tsa_text) = openssl(&["x509", "-in", tsa_cert.to_str().unwrap(), "-noout", "-text"]);
    assert!(
        tsa_text.contains("X509v3 Extended Key Usage: critical\n                Time Stamping"),
        "{tsa_text}"
    );

    // The trail has the signed entry.
    let (_, events) = srv
        .call(
            "GET",
            &format!("/v1/audit?session={id}"),
            Some("auditor"),
            None,
        )
        .await;
    let text = events.to_string();
    assert!(
        text.contains("\"signed\"") && text.contains(&digest),
        "{text}"
    );
}

/// The first PEM block of a chain file.
fn tsa_chain_first(chain: &Path) -> String {
    let text = std::fs::read_to_string(chain).unwrap();
    let end = "-----END CERTIFICATE-----";
    let i = text.find(end).unwrap() + end.len();
    format!("{}\n", &text[..i])
}

async fn published_text(srv: &TestServer, path: &str) -> String {
    let out = Command::new("curl")
        .args([
            "-sSf",
            "--cacert",
            srv.root_pem().to_str().unwrap(),
            &format!("{}{path}", srv.url),
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", output_text(&out));
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn timestamps_are_refused_unless_the_session_and_its_artifact_check_out() {
    let srv = TestServer::start(
        "release-refusals",
        &policy("https://idp.invalid"),
        &["alice", "bob"],
        "",
    )
    .await;
    let dir = srv.dir.path();
    let approved = b"tools v2\n";
    let open = |digest: Option<String>| {
        let srv = &srv;
        async move {
            let mut body = json!({"resource": "release:tools", "task": "sign tools", "duration_secs": 300, "profile": "code-signing"});
            if let Some(d) = digest {
                body["request_digest"] = json!(d);
            }
            let (status, s) = srv
                .call("POST", "/v1/sessions", Some("alice"), Some(body))
                .await;
            assert_eq!(status, 201, "{s}");
            assert_eq!(srv.vote("bob", &s, "approve").await.0, 200);
            s["id"].as_str().unwrap().to_owned()
        }
    };
    let id = open(Some(sha256_text(approved))).await;
    let signer = certificate_for(&srv, &id).await;
    let (key, pem) = (
        signer.key.clone(),
        std::fs::read_to_string(&signer.cert).unwrap(),
    );
    let stamp = |id: &str, data: &[u8], sig: &[u8], pem: &str| {
        let srv = &srv;
        let body = json!({"artifact_digest": sha256_text(data), "signature": B64.encode(sig), "certificate": pem});
        let path = format!("/v1/sessions/{id}/signature");
        async move { srv.call("POST", &path, Some("alice"), Some(body)).await }
    };
    let code = |r: &(u16, Value)| (r.0, r.1["error"].as_str().unwrap_or("").to_owned());

    // Another artifact than the approved one, signed by the right key.
    let other = b"tools v2 patched\n";
    let r = stamp(&id, other, &openssl_sign(dir, &key, other), &pem).await;
    assert_eq!(code(&r), (403, "artifact_not_approved".into()), "{:?}", r.1);
    // A signature by another key.
    let (stranger, _) = openssl_csr(dir, "stranger", "ec:P-256");
    let r = stamp(&id, approved, &openssl_sign(dir, &stranger, approved), &pem).await;
    assert_eq!(code(&r), (400, "signature_invalid".into()), "{:?}", r.1);
    // Another session's certificate.
    let other_id = open(None).await;
    let signer2 = certificate_for(&srv, &other_id).await;
    let (key2, pem2) = (
        signer2.key.clone(),
        std::fs::read_to_string(&signer2.cert).unwrap(),
    );
    let r = stamp(&id, approved, &openssl_sign(dir, &key2, approved), &pem2).await;
    assert_eq!(
        code(&r),
        (403, "certificate_not_of_session".into()),
        "{:?}",
        r.1
    );
    // Not the requester.
    let body = json!({"artifact_digest": sha256_text(approved), "signature": B64.encode(openssl_sign(dir, &key, approved)), "certificate": pem});
    let r = srv
        .call(
            "POST",
            &format!("/v1/sessions/{id}/signature"),
            Some("bob"),
            Some(body),
        )
        .await;
    assert_eq!(code(&r), (403, "not_requester".into()), "{:?}", r.1);

    // The approved artifact: stamped once (one-shot), then refused.
    let sig = openssl_sign(dir, &key, approved);
    let r = stamp(&id, approved, &sig, &pem).await;
    assert_eq!(r.0, 201, "{}", r.1);
    assert_eq!(r.1["session_closed"], false);
    let tsr = write(
        dir,
        "ok.tsr",
        &B64.decode(r.1["timestamp"].as_str().unwrap()).unwrap(),
    );
    let sig_path = write(dir, "ok.sig", &sig);
    let tsa_chain = write(
        dir,
        "tsa-chain.pem",
        published_text(&srv, "/v1/tsa").await.as_bytes(),
    );
    let (ok, text) = openssl(&[
        "ts",
        "-verify",
        "-data",
        sig_path.to_str().unwrap(),
        "-in",
        tsr.to_str().unwrap(),
        "-CAfile",
        srv.root_pem().to_str().unwrap(),
        "-untrusted",
        tsa_chain.to_str().unwrap(),
    ]);
    assert!(ok && text.contains("Verification: OK"), "{text}");
    let r = stamp(&id, approved, &sig, &pem).await;
    assert_eq!(
        code(&r),
        (409, "signature_limit_reached".into()),
        "{:?}",
        r.1
    );

    // After the session closed: nothing, even for the approved artifact.
    let sig2 = openssl_sign(dir, &key2, approved);
    let (status, _) = srv
        .call(
            "POST",
            &format!("/v1/sessions/{other_id}/close"),
            Some("alice"),
            None,
        )
        .await;
    assert_eq!(status, 200);
    let r = stamp(&other_id, approved, &sig2, &pem2).await;
    assert_eq!(code(&r), (409, "session_closed".into()), "{:?}", r.1);
    // An mtls-client session cannot have signatures stamped.
    let body = json!({"resource": "release:tools", "task": "t", "duration_secs": 300, "profile": "mtls-client"});
    let (_, s) = srv
        .call("POST", "/v1/sessions", Some("alice"), Some(body))
        .await;
    assert_eq!(srv.vote("bob", &s, "approve").await.0, 200);
    let r = stamp(s["id"].as_str().unwrap(), approved, &sig, &pem).await;
    assert_eq!(code(&r), (403, "forbidden".into()), "{:?}", r.1);
    // A session approved for a SHA-512 digest: lockstep stamps SHA-256.
    let sha512 = open(Some(format!("sha512:{}", "ab".repeat(64)))).await;
    let signer3 = certificate_for(&srv, &sha512).await;
    let pem3 = std::fs::read_to_string(&signer3.cert).unwrap();
    let r = stamp(
        &sha512,
        approved,
        &openssl_sign(dir, &signer3.key, approved),
        &pem3,
    )
    .await;
    assert_eq!(code(&r), (400, "invalid_request".into()), "{:?}", r.1);
}
