//! 10 000 closed sessions leave a CRL holding only the certificates that
//! have not expired yet: the CRL is bounded by live credentials, not by
//! history.

mod common;

use std::sync::Arc;

use lockstep::clock::Timestamp;
use lockstep::revocation::CrlPublisher;
use lockstep::sessions::{Conditions, Profile, Request, Rules, Session, SessionId, SessionOp};
use lockstep::store::{CredentialKind, Finish, NewCredential, SqliteStore, Store};

use common::{crl_text, openssl, test_ca, write};

const T0: i64 = 1_900_000_000;

fn rules() -> Rules {
    Rules {
        approvers: vec!["token:bob".into()],
        quorum: 1,
        max_duration_secs: 7200,
        pending_timeout_secs: 600,
        credentials: 1,
        denials_to_close: 1,
        tokens_allowed: false,
        count_tokens: true,
        audiences: Vec::new(),
        conditions: Conditions::default(),
        connections: None,
        ssh: None,
        gateway_certificates: false,
        modbus_functions: None,
        signing: Default::default(),
        break_glass: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_closed_sessions_leave_only_live_certificates_on_the_crl() {
    let ca = tokio::task::spawn_blocking(|| test_ca("crl-scale"))
        .await
        .unwrap();
    // fsync on tmpfs is free: this test is about the CRL, not the disk.
    let dir = match tempfile::tempdir_in("/dev/shm") {
        Ok(d) => d,
        Err(_) => tempfile::tempdir().unwrap(),
    };
    let store = Arc::new(SqliteStore::open(&dir.path().join("scale.db")).unwrap());
    let t = |dt: i64| Timestamp::from_unix(T0 + dt);
    let total = 10_000;
    let mut live = Vec::new();
    for i in 0..total {
        // Half the sessions last a minute, half an hour; all are closed by
        // their requester after 10 seconds, so all their certificates are
        // revoked; at T0 + 120 s only the half-hour ones are still valid.
        let duration = if i % 2 == 0 { 60 } else { 1800 };
        let request = Request {
            tenant: None,
            requester: "token:alice".into(),
            resource: "db:payroll".into(),
            task: "scale".into(),
            request_digest: None,
            duration_secs: duration,
            profile: Profile::MtlsClient,
            break_glass: false,
        };
        let (s, event) =
            Session::new(SessionId::generate().unwrap(), request, rules(), t(0)).unwrap();
        let id = s.id.clone();
        store
            .create_session(s.clone(), event, t(0))
            .await
            .unwrap()
            .unwrap();
        let op = SessionOp::Approve {
            by: "token:bob".into(),
            request_hash: s.request_hash,
        };
        assert!(store.apply(&id, op, t(1)).await.unwrap().result.is_ok());
        let serial = format!(
            "{:032x}",
            0x4000_0000_0000_0000_0000_0000_0000_0000u128 + i as u128
        );
        let credential = NewCredential {
            serial: serial.clone(),
            kind: CredentialKind::Certificate,
            profile: Profile::MtlsClient,
            counted: true,
            issuer: Some(ca.issuer.fingerprint()),
        };
        let (_, r) = store
            .reserve_credential(&id, credential, t(2))
            .await
            .unwrap();
        let finish = Finish::Issued {
            der: Some(vec![0x30, 0x00]),
            facts: lockstep::sessions::CredentialFacts::Certificate {
                key_sha256: String::new(),
            },
        };
        store
            .finish_credential(&r.unwrap(), finish, t(2))
            .await
            .unwrap();
        let closed = store
            .apply(
                &id,
                SessionOp::Close {
                    by: "token:alice".into(),
                },
                t(10),
            )
            .await
            .unwrap();
        assert!(closed.result.is_ok());
        if duration == 1800 {
            live.push(serial);
        }
    }
    let now = t(120);
    let entries = store
        .live_revocations(now, &ca.issuer.fingerprint())
        .await
        .unwrap();
    assert_eq!(entries.len(), total / 2);
    let listed: Vec<&str> = entries.iter().map(|e| e.serial.as_str()).collect();
    live.sort();
    assert_eq!(listed, live.iter().map(String::as_str).collect::<Vec<_>>());

    // The published CRL: signed by the issuing key, verified by openssl,
    // exactly the live revoked certificates.
    let publisher = CrlPublisher::new(Arc::new(ca.issuer.clone()), store.clone(), 600);
    let der = publisher.current(now).await.unwrap();
    let path = write(ca.dir.path(), "scale.crl", der.as_slice());
    let chain = ca.config.ca.dir.join("chain.pem");
    let (ok, text) = openssl(&[
        "crl",
        "-inform",
        "DER",
        "-in",
        path.to_str().unwrap(),
        "-noout",
        "-verify",
        "-CAfile",
        chain.to_str().unwrap(),
    ]);
    assert!(ok && text.contains("verify OK"), "{text}");
    let (_, text) = crl_text(&path);
    assert_eq!(text.matches("Serial Number:").count(), total / 2);
    // Once every certificate has expired, the CRL is empty.
    let later = t(3600);
    assert!(
        store
            .live_revocations(later, &ca.issuer.fingerprint())
            .await
            .unwrap()
            .is_empty()
    );
    let der = publisher.current(later).await.unwrap();
    let path = write(ca.dir.path(), "empty.crl", der.as_slice());
    let (_, text) = crl_text(&path);
    assert!(text.contains("No Revoked Certificates"), "{text}");
}
