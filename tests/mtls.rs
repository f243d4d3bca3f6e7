//! A real TLS handshake over loopback: a rustls server that trusts the
//! lockstep root accepts an `mtls-client` certificate, and rejects one from
//! another CA, one for another purpose, and one whose notAfter has passed.

mod common;

use std::time::Duration;

use lockstep::clock::{Clock, SystemClock, Timestamp};
use lockstep::x509::csr::parse_and_verify;
use lockstep::x509::{CertProfile, LeafSpec, San, SessionEvidence, SubjectName};

use common::tls::{handshake, server, server_identity};
use common::{TestCa, openssl_csr, test_ca, write};

/// Mints a certificate for a fresh openssl key; returns (chain PEM, key path).
fn client_identity(
    ca: &TestCa,
    name: &str,
    profile: CertProfile,
    not_after: Timestamp,
) -> (std::path::PathBuf, std::path::PathBuf) {
    let dir = ca.dir.path();
    let (key, csr) = openssl_csr(dir, name, "ec:P-256");
    let csr = parse_and_verify(&csr).unwrap();
    let spec = LeafSpec {
        subject: SubjectName::cn("ot-gateway:plant-7"),
        sans: vec![San::Uri("urn:lockstep:requester:token:vendor".into())],
        profile,
        not_after,
        session: SessionEvidence::session(format!("ses_{name}")),
        revocation: None,
        build: None,
    };
    let issued = ca.issuer.mint(&csr, &spec, SystemClock.now()).unwrap();
    // Leaf and issuing CA; the server holds the root.
    let issuing = std::fs::read_to_string(ca.issuing_pem()).unwrap();
    let chain = format!("{}{issuing}", issued.pem().unwrap());
    (write(dir, &format!("{name}-chain.pem"), chain), key)
}

#[tokio::test]
async fn rustls_accepts_session_certificates_and_rejects_others() {
    let ca = tokio::task::spawn_blocking(|| test_ca("mtls"))
        .await
        .unwrap();
    let other = tokio::task::spawn_blocking(|| test_ca("mtls-other"))
        .await
        .unwrap();
    let dir = ca.dir.path().to_owned();
    let (server_chain, server_key, server_ca) = server_identity(&dir);
    let (addr, mut rx) = server(&ca.root_pem(), (server_chain, server_key)).await;
    let now = SystemClock.now();

    let (chain, key) = client_identity(&ca, "good", CertProfile::MtlsClient, now.plus_secs(300));
    let verdict = handshake(addr, &server_ca, &chain, &key, &mut rx).await;
    assert_eq!(verdict, Ok("accepted, 2 peer certificates".into()));

    let (chain, key) = client_identity(
        &other,
        "foreign",
        CertProfile::MtlsClient,
        now.plus_secs(300),
    );
    let verdict = handshake(addr, &server_ca, &chain, &key, &mut rx).await;
    assert!(
        verdict.as_ref().is_err_and(|e| e.contains("UnknownIssuer")),
        "{verdict:?}"
    );

    let (chain, key) = client_identity(
        &ca,
        "codesign",
        CertProfile::CodeSigning,
        now.plus_secs(300),
    );
    let verdict = handshake(addr, &server_ca, &chain, &key, &mut rx).await;
    assert!(
        verdict
            .as_ref()
            .is_err_and(|e| e.contains("extended key usage for client authentication")),
        "{verdict:?}"
    );

    // A certificate that ends two seconds from now works now...
    let not_after = SystemClock.now().plus_secs(2);
    let (chain, key) = client_identity(&ca, "short", CertProfile::MtlsClient, not_after);
    let verdict = handshake(addr, &server_ca, &chain, &key, &mut rx).await;
    assert!(verdict.is_ok(), "{verdict:?}");
    // ...and is refused once notAfter has passed (real time, no mocked clock).
    while SystemClock.now() <= not_after.plus_secs(1) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let verdict = handshake(addr, &server_ca, &chain, &key, &mut rx).await;
    assert!(
        verdict
            .as_ref()
            .is_err_and(|e| e.contains("certificate expired")),
        "{verdict:?}"
    );
}
