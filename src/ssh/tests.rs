use std::sync::Arc;

use super::*;
use crate::keys::soft::SoftKey;

fn ca() -> SshCa {
    SshCa::new(Arc::new(SoftKey::new(7))).unwrap()
}

fn spec() -> UserCertSpec {
    UserCertSpec {
        serial: 0x1234_5678_9abc_def0,
        key_id: "lockstep:ses_x".into(),
        principals: vec!["vendor".into(), "ops".into()],
        valid_after: 1_800_000_000,
        valid_before: 1_800_000_600,
        critical_options: vec![("source-address".into(), "10.0.0.0/8".into())],
        extensions: vec!["permit-pty".into()],
    }
}

const USER_KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHUdbWTqbV1b7dsDNYgb7EJ7ZrqCkVAoSTHHCtfHdAvp user@host";

#[test]
fn certificates_say_what_the_spec_says_and_verify_under_the_ca() {
    let ca = ca();
    let subject = parse_public_key(USER_KEY).unwrap();
    let cert = ca.certify(&subject, &spec()).unwrap();
    assert_eq!(cert.serial(), 0x1234_5678_9abc_def0);
    assert_eq!(cert.cert_type(), CertType::User);
    assert_eq!(cert.key_id(), "lockstep:ses_x");
    assert_eq!(cert.valid_principals(), ["vendor", "ops"]);
    assert_eq!(
        (cert.valid_after(), cert.valid_before()),
        (1_800_000_000, 1_800_000_600)
    );
    assert_eq!(
        cert.critical_options().get("source-address").unwrap(),
        "10.0.0.0/8"
    );
    assert!(cert.extensions().contains_key("permit-pty"));
    assert_eq!(cert.public_key(), &subject);
    let ca_fp = ca.key_data().fingerprint(HashAlg::Sha256);
    cert.validate_at(1_800_000_100, [&ca_fp]).unwrap();
    assert!(cert.validate_at(1_800_000_600, [&ca_fp]).is_err());
    let text = cert.to_openssh().unwrap();
    assert!(
        text.starts_with("ssh-ed25519-cert-v01@openssh.com "),
        "{text}"
    );
}

#[test]
fn the_ca_line_is_an_openssh_public_key() {
    let line = ca().public_line();
    assert!(line.starts_with("ecdsa-sha2-nistp256 AAAA"), "{line}");
    assert!(line.ends_with(" lockstep-ssh-ca"));
    assert!(PublicKey::from_openssh(&line).is_ok());
}

#[test]
fn public_keys_are_refused_with_a_reason() {
    for (text, says) in [
        ("", "not an OpenSSH public key"),
        ("ssh-ed25519 not-base64", "not an OpenSSH public key"),
        (&"x".repeat(MAX_PUBLIC_KEY_LEN + 1), "16 KiB"),
    ] {
        let e = parse_public_key(text).unwrap_err().to_string();
        assert!(e.contains(says), "{e}");
    }
    // A certificate is not a key to certify.
    let cert = ca()
        .certify(&parse_public_key(USER_KEY).unwrap(), &spec())
        .unwrap();
    assert!(parse_public_key(&cert.to_openssh().unwrap()).is_err());
}

#[test]
fn the_krl_has_openssh_s_layout() {
    let ca = ca();
    let empty = krl(&ca, &[], 3, 1_800_000_000).unwrap();
    assert_eq!(&empty[..8], b"SSHKRL\n\0");
    assert_eq!(&empty[8..12], &1u32.to_be_bytes());
    assert_eq!(&empty[12..20], &3u64.to_be_bytes());
    let listed = krl(&ca, &[9, 2, 9], 4, 1_800_000_000).unwrap();
    assert_eq!(listed[empty.len()], SECTION_CERTIFICATES_FOR_TEST);
    // The serial list ends the KRL: 2 then 9, once each.
    let tail = &listed[listed.len() - 16..];
    assert_eq!(tail, [2u64.to_be_bytes(), 9u64.to_be_bytes()].concat());
}

const SECTION_CERTIFICATES_FOR_TEST: u8 = 1;
