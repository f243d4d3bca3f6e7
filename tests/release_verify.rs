//! `lockstep verify`'s checks on a bundle `lockstep sign` wrote (the fuzz
//! target's fixture, signed long ago by a certificate that expired minutes
//! later): it verifies at its timestamp's time, and each thing changed in
//! it or in the trusted root is refused with its own code.

use lockstep::sigstore::verify::{Expected, verify};
use lockstep::sigstore::{Bundle, TrustedRoot};

fn fixture() -> (Bundle, TrustedRoot, Vec<u8>) {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/fixtures/release");
    let read = |name: &str| std::fs::read(format!("{dir}/{name}")).unwrap();
    (
        serde_json::from_slice(&read("bundle.json")).unwrap(),
        serde_json::from_slice(&read("trusted_root.json")).unwrap(),
        read("artifact"),
    )
}

/// A change to a bundle or its trusted root.
type Change = Box<dyn Fn(&mut Bundle, &mut TrustedRoot)>;

fn code(bundle: &Bundle, root: &TrustedRoot, artifact: &[u8]) -> &'static str {
    match verify(bundle, artifact, root, &Expected::default()) {
        Ok(_) => "ok",
        Err(r) => r.code,
    }
}

#[test]
fn the_bundle_verifies_long_after_its_certificate_expired() {
    let (bundle, root, artifact) = fixture();
    let v = verify(&bundle, &artifact, &root, &Expected::default()).unwrap();
    assert!(v.session.starts_with("ses_"));
    assert_eq!(v.approvers, ["token:bob", "token:carol"]);
    assert_eq!(
        v.approved_digest.as_deref(),
        Some(v.artifact_digest.as_str())
    );
    assert_eq!(
        v.identity.as_deref(),
        Some("https://github.com/acme/app/.github/workflows/release.yml@refs/tags/v1.2.3")
    );
}

#[test]
fn each_change_is_refused_with_its_code() {
    let (bundle, root, artifact) = fixture();
    let cases: Vec<(&str, Change)> = vec![
        (
            "bundle_malformed",
            Box::new(|b, _| b.media_type = "application/json".into()),
        ),
        (
            "artifact_mismatch",
            Box::new(|b, _| b.message_signature.message_digest.digest = "AAAA".into()),
        ),
        (
            "signature_invalid",
            Box::new(|b, _| {
                // Another valid DER signature: r and s swapped.
                b.message_signature.signature = "MAYCAQECAQI=".into();
            }),
        ),
        (
            "timestamp_missing",
            Box::new(|b, _| {
                b.verification_material
                    .timestamp_verification_data
                    .rfc3161_timestamps
                    .clear()
            }),
        ),
        (
            "timestamp_invalid",
            Box::new(|b, _| {
                b.verification_material
                    .timestamp_verification_data
                    .rfc3161_timestamps[0]
                    .signed_timestamp = "MAA=".into()
            }),
        ),
        (
            "timestamp_untrusted",
            Box::new(|_, r| r.timestamp_authorities.clear()),
        ),
        (
            "certificate_untrusted",
            Box::new(|_, r| r.certificate_authorities.clear()),
        ),
    ];
    for (want, change) in cases {
        let (mut b, mut r) = (bundle.clone(), root.clone());
        change(&mut b, &mut r);
        assert_eq!(code(&b, &r, &artifact), want);
    }
    assert_eq!(
        code(&bundle, &root, b"another artifact"),
        "artifact_mismatch"
    );
    let wrong = Expected {
        identity: Some("https://github.com/acme/app/.github/workflows/evil.yml@refs/heads/x"),
        issuer: None,
    };
    assert_eq!(
        verify(&bundle, &artifact, &root, &wrong).unwrap_err().code,
        "identity_mismatch"
    );
}
