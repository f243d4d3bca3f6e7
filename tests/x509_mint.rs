//! Minting leaf certificates on a device-held issuing key (SoftHSM2 and a
//! TPM), checked by openssl.

mod common;

use lockstep::clock::{Clock, SystemClock, Timestamp};
use lockstep::x509::csr::{MAX_CSR_BYTES, parse_and_verify};
use lockstep::x509::extension::{ApprovalEvidence, SessionEvidence};
use lockstep::x509::{CertProfile, LeafSpec, San, SubjectName};

use common::backend::Backend;
use common::{openssl, openssl_csr, test_ca, test_ca_on, write};

fn spec(profile: CertProfile, not_after: Timestamp) -> LeafSpec {
    LeafSpec {
        subject: SubjectName::cn("db:payroll").with_organization("lockstep session"),
        sans: vec![
            San::Uri("urn:lockstep:requester:token:ci".into()),
            San::Dns("payroll-client.example".into()),
        ],
        profile,
        not_after,
        session: SessionEvidence {
            session_id: "ses_test_0001".into(),
            approval: Some(ApprovalEvidence {
                request_hash: [0xab; 32],
                approvers: vec!["token:alice".into(), "token:bob".into()],
                opened_at: SystemClock.now(),
            }),
            connections: Some(3),
            modbus_functions: None,
            artifact_digest: None,
            break_glass: false,
        },
        revocation: None,
        build: None,
    }
}

/// `openssl x509 -enddate` in RFC 5280 form: `notAfter=Nov 24 23:59:59 2026 GMT`.
fn openssl_enddate(t: Timestamp) -> String {
    let dt = time::OffsetDateTime::from_unix_timestamp(t.unix()).unwrap();
    let fmt = time::macros::format_description!(
        "[month repr:short] [day padding:space] [hour]:[minute]:[second] [year] GMT"
    );
    format!("notAfter={}", dt.format(&fmt).unwrap())
}

on_both_backends!(minted_certificate_verifies_and_carries_exact_not_after_eku_and_session);
fn minted_certificate_verifies_and_carries_exact_not_after_eku_and_session(backend: Backend) {
    let ca = test_ca_on(backend, "mint", 3650, 1095);
    let dir = ca.dir.path();
    let now = SystemClock.now();
    let not_after = now.plus_secs(120);
    for (kind, profile, eku_text) in [
        (
            "ec:P-256",
            CertProfile::MtlsClient,
            "TLS Web Client Authentication",
        ),
        ("ec:P-384", CertProfile::CodeSigning, "Code Signing"),
        (
            "rsa:2048",
            CertProfile::MtlsClient,
            "TLS Web Client Authentication",
        ),
    ] {
        let name = kind.replace(':', "-");
        let (_, csr_pem) = openssl_csr(dir, &name, kind);
        let csr = parse_and_verify(&csr_pem).unwrap();
        let issued = ca
            .issuer
            .mint(&csr, &spec(profile, not_after), now)
            .unwrap();
        assert_eq!(issued.not_after, not_after);
        let cert = write(dir, &format!("{name}.pem"), issued.pem().unwrap());
        let cert = cert.to_str().unwrap();

        let (ok, text) = openssl(&[
            "verify",
            "-CAfile",
            ca.root_pem().to_str().unwrap(),
            "-untrusted",
            ca.issuing_pem().to_str().unwrap(),
            "-purpose",
            if profile == CertProfile::MtlsClient {
                "sslclient"
            } else {
                "any"
            },
            cert,
        ]);
        assert!(ok, "openssl verify ({kind}): {text}");

        let (ok, text) = openssl(&["x509", "-in", cert, "-noout", "-enddate"]);
        assert!(ok);
        assert_eq!(text.trim(), openssl_enddate(not_after), "{kind}");

        let (ok, text) = openssl(&["x509", "-in", cert, "-noout", "-text"]);
        assert!(ok);
        assert!(text.contains(eku_text), "{kind}: EKU missing:\n{text}");
        assert!(
            text.contains("1.3.6.1.4.1.32473.7683.1.1:"),
            "session extension missing"
        );
        assert!(
            text.contains("ses_test_0001"),
            "session id not in the extension"
        );
        assert!(text.contains("CA:FALSE"), "{text}");
        assert!(text.contains("X509v3 Key Usage: critical"), "{text}");
        assert!(text.contains("Digital Signature"), "{text}");
        assert!(
            text.contains("Subject: O = lockstep session, CN = db:payroll"),
            "{text}"
        );
        assert!(
            text.contains("URI:urn:lockstep:requester:token:ci"),
            "{text}"
        );
        assert!(!text.contains("evil"), "CSR subject or SANs leaked: {text}");
        assert!(!text.contains("Evil"), "CSR subject leaked: {text}");
        assert!(text.contains("X509v3 Authority Key Identifier"));
        assert!(text.contains("X509v3 Subject Key Identifier"));

        // The session evidence reads back.
        let evidence = SessionEvidence::from_certificate(&issued.certificate)
            .unwrap()
            .unwrap();
        assert_eq!(evidence.session_id, "ses_test_0001");
        assert_eq!(evidence.connections, Some(3));
        assert_eq!(
            evidence.approval.unwrap().approvers,
            ["token:alice", "token:bob"]
        );
    }
}

on_both_backends!(serials_are_random_positive_and_at_least_64_bits);
fn serials_are_random_positive_and_at_least_64_bits(backend: Backend) {
    let ca = test_ca_on(backend, "serial", 3650, 1095);
    let (_, csr_pem) = openssl_csr(ca.dir.path(), "s", "ec:P-256");
    let csr = parse_and_verify(&csr_pem).unwrap();
    let now = SystemClock.now();
    let mut seen = std::collections::HashSet::new();
    for _ in 0..20 {
        let issued = ca
            .issuer
            .mint(&csr, &spec(CertProfile::MtlsClient, now.plus_secs(60)), now)
            .unwrap();
        let serial = issued
            .certificate
            .tbs_certificate()
            .serial_number()
            .as_bytes()
            .to_vec();
        assert!(serial.len() * 8 >= 64 + 8);
        assert!(serial[0] & 0x80 == 0, "negative serial");
        assert!(seen.insert(serial), "serial repeated");
    }
}

on_both_backends!(not_after_from_2050_is_generalized_time_and_exact);
fn not_after_from_2050_is_generalized_time_and_exact(backend: Backend) {
    // A CA that lives past 2050, so a leaf can end there.
    let ca = test_ca_on(backend, "gentime", 15_000, 14_000);
    let dir = ca.dir.path();
    let (_, csr_pem) = openssl_csr(dir, "g", "ec:P-256");
    let csr = parse_and_verify(&csr_pem).unwrap();
    let now = SystemClock.now();
    for at in [
        "2049-12-31T23:59:59Z",
        "2050-01-01T00:00:00Z",
        "2051-06-30T12:34:56Z",
    ] {
        let not_after = Timestamp::parse_rfc3339(at).unwrap();
        let issued = ca
            .issuer
            .mint(&csr, &spec(CertProfile::MtlsClient, not_after), now)
            .unwrap();
        let cert = write(dir, "g.pem", issued.pem().unwrap());
        let (_, text) = openssl(&["x509", "-in", cert.to_str().unwrap(), "-noout", "-enddate"]);
        assert_eq!(text.trim(), openssl_enddate(not_after));
        let der = write(dir, "g.der", &issued.der);
        let (_, asn1) = openssl(&["asn1parse", "-inform", "DER", "-in", der.to_str().unwrap()]);
        let want = if not_after.year() >= 2050 {
            "GENERALIZEDTIME"
        } else {
            "UTCTIME"
        };
        // notBefore (now) is UTCTime; notAfter is the second time in the dump.
        let times: Vec<&str> = asn1
            .lines()
            .filter(|l| l.contains("UTCTIME") || l.contains("GENERALIZEDTIME"))
            .collect();
        assert!(times[1].contains(want), "{at}: {times:?}");
    }
}

#[test]
fn validity_outside_now_and_the_ca_lifetime_is_refused() {
    let ca = test_ca("validity");
    let (_, csr_pem) = openssl_csr(ca.dir.path(), "v", "ec:P-256");
    let csr = parse_and_verify(&csr_pem).unwrap();
    let now = SystemClock.now();
    for not_after in [now, now.plus_secs(-10), ca.issuer.not_after().plus_secs(1)] {
        let err = ca
            .issuer
            .mint(&csr, &spec(CertProfile::MtlsClient, not_after), now)
            .unwrap_err();
        assert_eq!(err.code(), "invalid_validity", "{not_after}: {err}");
    }
}

#[test]
fn bad_csrs_get_clear_errors_and_never_panic() {
    let ca = test_ca("badcsr");
    let dir = ca.dir.path();
    let (_, good) = openssl_csr(dir, "good", "ec:P-256");
    let good_der = {
        let (_, der) = der::pem::decode_vec(&good).unwrap();
        der
    };

    // Wrong signature: flip a byte of the subject inside the signed part.
    let mut tampered = good_der.clone();
    let pos = tampered.windows(7).position(|w| w == b"ignored").unwrap();
    tampered[pos] ^= 0x01;
    let err = parse_and_verify(&tampered).unwrap_err();
    assert_eq!(err.code(), "csr_signature_invalid", "{err}");

    let mut cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("garbage", b"this is not a CSR".to_vec(), "csr_malformed"),
        ("empty", Vec::new(), "csr_malformed"),
        (
            "truncated",
            good_der[..good_der.len() / 2].to_vec(),
            "csr_malformed",
        ),
        (
            "trailing",
            [good_der.clone(), vec![0]].concat(),
            "csr_malformed",
        ),
        (
            "wrong pem label",
            good.clone()
                .into_iter()
                .collect::<Vec<u8>>()
                .split(|b| *b == b'\n')
                .map(|l| {
                    if l.starts_with(b"-----") {
                        String::from_utf8_lossy(l)
                            .replace("CERTIFICATE REQUEST", "PRIVATE KEY")
                            .into_bytes()
                    } else {
                        l.to_vec()
                    }
                })
                .collect::<Vec<_>>()
                .join(&b'\n'),
            "csr_malformed",
        ),
        ("huge", vec![b'A'; MAX_CSR_BYTES + 1], "csr_too_large"),
        (
            "nested garbage",
            vec![0x30, 0x84, 0xff, 0xff, 0xff, 0xff],
            "csr_malformed",
        ),
    ];
    for (name, kind) in [
        ("rsa1024", "rsa:1024"),
        ("ed25519", "ed25519"),
        ("p521", "ec:P-521"),
    ] {
        let (_, pem) = openssl_csr(dir, name, kind);
        cases.push((name, pem, "unsupported_key_type"));
    }
    for (name, input, code) in cases {
        let err = parse_and_verify(&input).unwrap_err();
        assert_eq!(err.code(), code, "{name}: {err}");
        assert!(!err.to_string().is_empty());
    }
    // Every prefix of a good CSR is refused cleanly.
    for n in 0..good_der.len() {
        assert!(parse_and_verify(&good_der[..n]).is_err());
    }
}

#[test]
fn csr_signed_with_sha1_or_pss_is_refused_by_name() {
    let ca = test_ca("algs");
    let dir = ca.dir.path();
    let (key, _) = openssl_csr(dir, "rsa", "rsa:2048");
    let csr = dir.join("alg.csr");
    for (options, name) in [
        (
            &["-sigopt", "rsa_padding_mode:pss", "-sha256"][..],
            "RSASSA-PSS",
        ),
        (&["-sha1"][..], "SHA-1"),
    ] {
        let key = key.to_str().unwrap();
        let out = csr.to_str().unwrap();
        let args = [
            &["req", "-new", "-key", key, "-subj", "/CN=x", "-out", out][..],
            options,
        ]
        .concat();
        let (ok, text) = openssl(&args);
        assert!(ok, "{text}");
        let err = parse_and_verify(&std::fs::read(&csr).unwrap()).unwrap_err();
        assert_eq!(err.code(), "unsupported_signature_algorithm", "{err}");
        assert!(err.to_string().contains(name), "{err}");
    }
}
