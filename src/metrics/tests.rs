use std::collections::BTreeMap;

use super::Metrics;
use super::ledger::count;
use crate::audit::Entry;
use crate::clock::Timestamp;
use crate::sessions::{CloseReason, CredentialKind, Event};

fn entry(seq: u64, event: &Event) -> Entry {
    Entry {
        seq,
        at: 0,
        session: Some("ses_aaaaaaaaaaaaaaaaaaaaaaaaaa".into()),
        kind: event.kind().into(),
        body: serde_json::to_string(event).unwrap(),
        prev_hash: String::new(),
        hash: String::new(),
    }
}

fn minted(kind: CredentialKind, profile: &str, handed_out: bool) -> Event {
    Event::Minted {
        kind,
        serial: "0a1b".into(),
        profile: profile.into(),
        key_sha256: None,
        jti: None,
        audience: None,
        x5t_s256: None,
        fingerprint: None,
        principals: None,
        not_after: Timestamp::from_unix(0),
        handed_out,
    }
}

#[test]
fn committed_entries_move_their_counters() {
    let m = Metrics::new("pkcs11", &["pkcs11"]);
    let events = [
        Event::Approved {
            by: "token:bob".into(),
        },
        minted(CredentialKind::Certificate, "mtls-client", true),
        minted(CredentialKind::Token, "mtls-client", false),
        Event::Closed {
            reason: CloseReason::Revoked,
            by: Some("token:carol".into()),
            note: None,
        },
        Event::Refused {
            caller: Some("token:alice".into()),
            action: "approve".into(),
            code: "self_approval".into(),
        },
        Event::Refused {
            caller: None,
            action: "POST /v1/sessions/ses_bbbbbbbbbbbbbbbbbbbbbbbbbb/close".into(),
            code: "unauthenticated".into(),
        },
        Event::RefusalsCounted {
            count: 7,
            codes: BTreeMap::from([("unauthenticated".into(), 7)]),
            since: Timestamp::from_unix(0),
        },
    ];
    for (i, e) in events.iter().enumerate() {
        count(&m, &entry(i as u64 + 1, e));
    }
    assert_eq!(m.entries.get(&["approved"]), 1);
    assert_eq!(m.entries.get(&["minted"]), 2);
    assert_eq!(m.minted.get(&["certificate", "mtls-client"]), 1);
    assert_eq!(m.withheld.get(&["token"]), 1);
    assert_eq!(m.closed.get(&["revoked"]), 1);
    assert_eq!(m.refusals.get(&["approve", "self_approval"]), 1);
    assert_eq!(m.refusals.get(&["request", "unauthenticated"]), 8);
    assert_eq!(m.ledger_position.get(), events.len() as i64);
}

#[test]
fn no_identity_or_session_id_reaches_a_label() {
    let m = Metrics::new("pkcs11", &["pkcs11"]);
    count(
        &m,
        &entry(
            1,
            &Event::Refused {
                caller: Some("token:alice".into()),
                action: "GET /v1/sessions/ses_bbbbbbbbbbbbbbbbbbbbbbbbbb".into(),
                code: "Not A Code ses_x".into(),
            },
        ),
    );
    let text = m.encode();
    assert!(text.contains("lockstep_refusals_total{action=\"request\",code=\"other\"} 1"));
    for secret in ["alice", "ses_", "Not A Code"] {
        assert!(!text.contains(secret), "{secret} in {text}");
    }
}

#[test]
fn an_entry_this_build_cannot_read_counts_by_kind_only() {
    let m = Metrics::new("tpm", &[]);
    let mut e = entry(
        5,
        &Event::Approved {
            by: "token:bob".into(),
        },
    );
    e.kind = "from_a_newer_build".into();
    e.body = "{\"event\":\"from_a_newer_build\"}".into();
    count(&m, &e);
    assert_eq!(m.entries.get(&["from_a_newer_build"]), 1);
    assert_eq!(m.ledger_position.get(), 5);
}

#[test]
fn build_info_names_the_version_and_features() {
    let text = Metrics::new("pkcs11", &["pkcs11", "sqlite"]).encode();
    let want = format!(
        "lockstep_build_info{{features=\"pkcs11,sqlite\",version=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION")
    );
    assert!(text.contains(&want), "{text}");
}
