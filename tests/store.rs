//! The stores (SQLite and PostgreSQL, every test on each): durable
//! across reopen, race-free under many concurrent callers.

mod common;

use std::sync::Arc;

use lockstep::clock::Timestamp;
use lockstep::sessions::{
    CloseReason, Event, Request, Rules, Session, SessionId, SessionOp, State,
};
use lockstep::sessions::{Conditions, CredentialFacts, Profile};
use lockstep::store::{CredentialKind, NewCredential};
use lockstep::store::{Finish, Finished, SessionFilter, SqliteStore, Store};

use common::store::{StoreKind, TestStore};

const T0: i64 = 1_900_000_000;

fn t(dt: i64) -> Timestamp {
    Timestamp::from_unix(T0 + dt)
}

fn approvers(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("token:approver-{i}")).collect()
}

fn new_session(quorum: u32, credentials: u32, n_approvers: usize) -> (Session, Vec<Event>) {
    let request = Request {
        tenant: None,
        requester: "token:req".into(),
        resource: "db:payroll".into(),
        task: "maintenance".into(),
        request_digest: None,
        duration_secs: 120,
        profile: Profile::MtlsClient,
        break_glass: false,
    };
    let rules = Rules {
        approvers: approvers(n_approvers),
        quorum,
        max_duration_secs: 600,
        pending_timeout_secs: 60,
        credentials,
        denials_to_close: 1,
        tokens_allowed: true,
        count_tokens: true,
        audiences: Vec::new(),
        conditions: Conditions::default(),
        connections: None,
        ssh: None,
        gateway_certificates: false,
        modbus_functions: None,
        signing: Default::default(),
        break_glass: None,
    };
    Session::new(SessionId::generate().unwrap(), request, rules, t(0)).unwrap()
}

/// A certificate credential with this serial.
fn cert(serial: impl Into<String>) -> NewCredential {
    NewCredential {
        serial: serial.into(),
        kind: CredentialKind::Certificate,
        profile: Profile::MtlsClient,
        counted: true,
        issuer: Some(ISSUER.into()),
    }
}

/// The issuer fingerprint the store tests' certificates carry.
const ISSUER: &str = "1551e7";

async fn approve(store: &Arc<dyn Store>, s: &Session, who: &str, dt: i64) -> Result<(), String> {
    let applied = store
        .apply(
            &s.id,
            SessionOp::Approve {
                by: who.into(),
                request_hash: s.request_hash,
            },
            t(dt),
        )
        .await
        .unwrap();
    applied.result.map(|_| ()).map_err(|e| e.code().to_owned())
}

on_both_stores!(async state_survives_reopening_the_file);
async fn state_survives_reopening_the_file(kind: StoreKind) {
    let place = TestStore::new(kind).await;
    let (s, ev) = new_session(2, 1, 3);
    let store = place.open().await;
    store
        .create_session(s.clone(), ev, t(0))
        .await
        .unwrap()
        .unwrap();
    approve(&store, &s, "token:approver-0", 1).await.unwrap();
    approve(&store, &s, "token:approver-1", 2).await.unwrap();
    place.close(store).await;
    let store = place.open().await;
    let back = store.session(&s.id, t(3)).await.unwrap();
    assert_eq!(back.state, State::Open);
    assert_eq!(back.closes_at, Some(t(122)));
    let kinds: Vec<_> = store
        .events(&s.id)
        .await
        .unwrap()
        .iter()
        .map(|e| e.event.kind())
        .collect();
    assert_eq!(kinds, ["requested", "approved", "approved", "opened"]);
    // Unknown ids are not found.
    let err = store
        .session(&SessionId::generate().unwrap(), t(3))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "session_not_found");
}

on_both_stores!(multi quorum_opens_exactly_once_under_concurrent_approvals);
async fn quorum_opens_exactly_once_under_concurrent_approvals(kind: StoreKind) {
    let place = TestStore::new(kind).await;
    let store = place.open().await;
    let (s, ev) = new_session(3, 1, 20);
    store
        .create_session(s.clone(), ev, t(0))
        .await
        .unwrap()
        .unwrap();
    let tasks: Vec<_> = approvers(20)
        .into_iter()
        .map(|who| {
            let store = store.clone();
            let s = s.clone();
            tokio::spawn(async move { approve(&store, &s, &who, 1).await })
        })
        .collect();
    let mut ok = 0;
    let mut not_pending = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(()) => ok += 1,
            Err(code) if code == "session_not_pending" => not_pending += 1,
            Err(other) => panic!("{other}"),
        }
    }
    assert_eq!((ok, not_pending), (3, 17));
    let events = store.events(&s.id).await.unwrap();
    assert_eq!(
        events.iter().filter(|e| e.event.kind() == "opened").count(),
        1
    );
    assert_eq!(
        events
            .iter()
            .filter(|e| e.event.kind() == "approved")
            .count(),
        3
    );
}

on_both_stores!(multi concurrent_reservations_never_pass_the_limit);
async fn concurrent_reservations_never_pass_the_limit(kind: StoreKind) {
    let place = TestStore::new(kind).await;
    let store = place.open().await;
    let (s, ev) = new_session(1, 3, 1);
    store
        .create_session(s.clone(), ev, t(0))
        .await
        .unwrap()
        .unwrap();
    approve(&store, &s, "token:approver-0", 1).await.unwrap();
    let tasks: Vec<_> = (0..32)
        .map(|i| {
            let store = store.clone();
            let id = s.id.clone();
            tokio::spawn(async move {
                let (applied, reservation) = store
                    .reserve_credential(&id, cert(format!("{i:032x}")), t(2))
                    .await
                    .unwrap();
                match reservation {
                    Some(r) => {
                        let f = store
                            .finish_credential(
                                &r,
                                Finish::Issued {
                                    der: Some(vec![i as u8]),
                                    facts: CredentialFacts::Certificate {
                                        key_sha256: "k".into(),
                                    },
                                },
                                t(2),
                            )
                            .await
                            .unwrap();
                        assert_eq!(f, Finished::Issued);
                        assert_eq!(r.not_after, t(121));
                        true
                    }
                    None => {
                        assert_eq!(
                            applied.result.unwrap_err().code(),
                            "credential_limit_reached"
                        );
                        false
                    }
                }
            })
        })
        .collect();
    let mut issued = 0;
    for task in tasks {
        if task.await.unwrap() {
            issued += 1;
        }
    }
    assert_eq!(issued, 3);
    let creds = store.credentials(&s.id).await.unwrap();
    assert_eq!(creds.iter().filter(|c| c.state == "issued").count(), 3);
    assert_eq!(store.session(&s.id, t(3)).await.unwrap().minted, 3);
}

on_both_stores!(multi approvals_racing_a_close_never_resurrect_it);
async fn approvals_racing_a_close_never_resurrect_it(kind: StoreKind) {
    for round in 0..10 {
        let place = TestStore::new(kind).await;
        let store = place.open().await;
        let (s, ev) = new_session(2, 1, 10);
        store
            .create_session(s.clone(), ev, t(0))
            .await
            .unwrap()
            .unwrap();
        let closer = {
            let store = store.clone();
            let id = s.id.clone();
            tokio::spawn(async move {
                store
                    .apply(
                        &id,
                        SessionOp::Close {
                            by: "token:req".into(),
                        },
                        t(1),
                    )
                    .await
                    .unwrap()
            })
        };
        let approvals: Vec<_> = approvers(10)
            .into_iter()
            .map(|who| {
                let store = store.clone();
                let s = s.clone();
                tokio::spawn(async move { approve(&store, &s, &who, 1).await })
            })
            .collect();
        let closed = closer.await.unwrap();
        for a in approvals {
            let _ = a.await.unwrap();
        }
        let end = store.session(&s.id, t(2)).await.unwrap();
        // Either it closed before quorum (stays closed) or it opened and was
        // then closed by the requester: in both cases it is closed now.
        assert_eq!(end.state, State::Closed, "round {round}");
        assert_eq!(end.closure.unwrap().reason, CloseReason::Completed);
        assert!(closed.result.is_ok());
        let events = store.events(&s.id).await.unwrap();
        let closed_at = events
            .iter()
            .position(|e| e.event.kind() == "closed")
            .unwrap();
        assert!(
            events[closed_at + 1..]
                .iter()
                .all(|e| e.event.kind() != "approved" && e.event.kind() != "opened")
        );
    }
}

on_both_stores!(async a_session_closed_while_signing_withholds_the_credential);
async fn a_session_closed_while_signing_withholds_the_credential(kind: StoreKind) {
    let place = TestStore::new(kind).await;
    let store = place.open().await;
    let (s, ev) = new_session(1, 1, 1);
    store
        .create_session(s.clone(), ev, t(0))
        .await
        .unwrap()
        .unwrap();
    approve(&store, &s, "token:approver-0", 1).await.unwrap();
    let (_, r) = store
        .reserve_credential(&s.id, cert("aa"), t(2))
        .await
        .unwrap();
    let r = r.unwrap();
    store
        .apply(
            &s.id,
            SessionOp::Close {
                by: "token:req".into(),
            },
            t(3),
        )
        .await
        .unwrap();
    let f = store
        .finish_credential(
            &r,
            Finish::Issued {
                der: Some(vec![1]),
                facts: CredentialFacts::Certificate {
                    key_sha256: "k".into(),
                },
            },
            t(3),
        )
        .await
        .unwrap();
    assert_eq!(f, Finished::Withheld(CloseReason::Completed));
    assert_eq!(store.credentials(&s.id).await.unwrap()[0].state, "withheld");
}

on_both_stores!(async a_mint_finishing_after_closes_at_is_withheld);
async fn a_mint_finishing_after_closes_at_is_withheld(kind: StoreKind) {
    let place = TestStore::new(kind).await;
    let store = place.open().await;
    let (s, ev) = new_session(1, 1, 1);
    store
        .create_session(s.clone(), ev, t(0))
        .await
        .unwrap()
        .unwrap();
    approve(&store, &s, "token:approver-0", 1).await.unwrap();
    let (_, r) = store
        .reserve_credential(&s.id, cert("bb"), t(120))
        .await
        .unwrap();
    let r = r.unwrap();
    let f = store
        .finish_credential(
            &r,
            Finish::Issued {
                der: Some(vec![1]),
                facts: CredentialFacts::Certificate {
                    key_sha256: "k".into(),
                },
            },
            t(121),
        )
        .await
        .unwrap();
    assert_eq!(f, Finished::Withheld(CloseReason::Expired));
}

on_both_stores!(async failed_signing_gives_the_slot_back);
async fn failed_signing_gives_the_slot_back(kind: StoreKind) {
    let place = TestStore::new(kind).await;
    let store = place.open().await;
    let (s, ev) = new_session(1, 1, 1);
    store
        .create_session(s.clone(), ev, t(0))
        .await
        .unwrap()
        .unwrap();
    approve(&store, &s, "token:approver-0", 1).await.unwrap();
    let (_, r) = store
        .reserve_credential(&s.id, cert("cc"), t(2))
        .await
        .unwrap();
    assert_eq!(
        store
            .finish_credential(&r.unwrap(), Finish::Failed, t(2))
            .await
            .unwrap(),
        Finished::Released
    );
    assert_eq!(store.session(&s.id, t(3)).await.unwrap().minted, 0);
    assert!(store.credentials(&s.id).await.unwrap().is_empty());
    let (_, r) = store
        .reserve_credential(&s.id, cert("dd"), t(3))
        .await
        .unwrap();
    assert!(r.is_some());
}

on_both_stores!(async reservations_left_by_a_crash_are_voided_on_recovery);
async fn reservations_left_by_a_crash_are_voided_on_recovery(kind: StoreKind) {
    let place = TestStore::new(kind).await;
    let (s, ev) = new_session(1, 1, 1);
    let store = place.open().await;
    store
        .create_session(s.clone(), ev, t(0))
        .await
        .unwrap()
        .unwrap();
    approve(&store, &s, "token:approver-0", 1).await.unwrap();
    store
        .reserve_credential(&s.id, cert("ee"), t(2))
        .await
        .unwrap();
    // The process dies here.
    place.close(store).await;
    let store = place.open().await;
    assert_eq!(store.recover(t(5)).await.unwrap(), 1);
    assert_eq!(store.recover(t(6)).await.unwrap(), 0);
    let session = store.session(&s.id, t(6)).await.unwrap();
    assert_eq!(session.minted, 0);
    assert_eq!(store.credentials(&s.id).await.unwrap()[0].state, "void");
    assert!(
        store
            .events(&s.id)
            .await
            .unwrap()
            .iter()
            .any(|e| e.event.kind() == "voided")
    );
}

on_both_stores!(async sweep_expires_and_abandons_due_sessions);
async fn sweep_expires_and_abandons_due_sessions(kind: StoreKind) {
    let place = TestStore::new(kind).await;
    let store = place.open().await;
    let (pending, ev) = new_session(2, 1, 3);
    store
        .create_session(pending.clone(), ev, t(0))
        .await
        .unwrap()
        .unwrap();
    let (open, ev) = new_session(1, 1, 1);
    store
        .create_session(open.clone(), ev, t(0))
        .await
        .unwrap()
        .unwrap();
    approve(&store, &open, "token:approver-0", 1).await.unwrap();
    assert_eq!(store.sweep(t(30)).await.unwrap(), 0);
    assert_eq!(store.sweep(t(60)).await.unwrap(), 1);
    assert_eq!(store.sweep(t(121)).await.unwrap(), 1);
    assert_eq!(store.sweep(t(500)).await.unwrap(), 0);
    let all = store.sessions(SessionFilter::default()).await.unwrap();
    assert!(all.iter().all(|s| s.state == State::Closed));
    let reasons: Vec<_> = all
        .iter()
        .map(|s| s.closure.as_ref().unwrap().reason)
        .collect();
    assert!(reasons.contains(&CloseReason::Abandoned) && reasons.contains(&CloseReason::Expired));
}

on_both_stores!(async a_newer_schema_is_refused);
async fn a_newer_schema_is_refused(kind: StoreKind) {
    let place = TestStore::new(kind).await;
    place.close(place.open().await).await;
    match kind {
        StoreKind::Sqlite => {
            let conn = rusqlite::Connection::open(place.sqlite_path()).unwrap();
            conn.pragma_update(None, "user_version", 99).unwrap();
            drop(conn);
            let err = SqliteStore::open(&place.sqlite_path()).unwrap_err();
            assert_eq!(err.code(), "store_corrupt");
            assert!(err.to_string().contains("upgrade lockstep"), "{err}");
        }
        #[cfg(feature = "postgres")]
        StoreKind::Postgres => {
            place
                .sql("INSERT INTO schema_migrations (version) VALUES (99)")
                .await;
            let err = lockstep::store::PostgresStore::connect(&place.postgres_config())
                .await
                .unwrap_err();
            assert_eq!(err.code(), "store_corrupt");
            assert!(err.to_string().contains("upgrade lockstep"), "{err}");
        }
    }
}

on_both_stores!(async a_slot_is_given_back_once_however_often_a_finish_fails);
async fn a_slot_is_given_back_once_however_often_a_finish_fails(kind: StoreKind) {
    let place = TestStore::new(kind).await;
    let store = place.open().await;
    let (s, ev) = new_session(1, 2, 1);
    store
        .create_session(s.clone(), ev, t(0))
        .await
        .unwrap()
        .unwrap();
    approve(&store, &s, "token:approver-0", 1).await.unwrap();
    let (_, a) = store
        .reserve_credential(&s.id, cert("a1"), t(2))
        .await
        .unwrap();
    let (_, b) = store
        .reserve_credential(&s.id, cert("b1"), t(2))
        .await
        .unwrap();
    let a = a.unwrap();
    for _ in 0..3 {
        store
            .finish_credential(&a, Finish::Failed, t(2))
            .await
            .unwrap();
    }
    // One slot back (b's is still taken): one more mint, not two.
    assert_eq!(store.session(&s.id, t(3)).await.unwrap().minted, 1);
    let (_, c) = store
        .reserve_credential(&s.id, cert("c1"), t(3))
        .await
        .unwrap();
    assert!(c.is_some());
    let (applied, d) = store
        .reserve_credential(&s.id, cert("d1"), t(3))
        .await
        .unwrap();
    assert!(d.is_none());
    assert_eq!(
        applied.result.unwrap_err().code(),
        "credential_limit_reached"
    );
    drop(b);
}

on_both_stores!(async a_live_owners_reservation_is_kept_until_its_lease_runs_out);
async fn a_live_owners_reservation_is_kept_until_its_lease_runs_out(kind: StoreKind) {
    let place = TestStore::new(kind).await;
    let store = place.open().await;
    let (s, ev) = new_session(1, 1, 1);
    store
        .create_session(s.clone(), ev, t(0))
        .await
        .unwrap()
        .unwrap();
    approve(&store, &s, "token:approver-0", 1).await.unwrap();
    let (_, r) = store
        .reserve_credential(&s.id, cert("ff"), t(2))
        .await
        .unwrap();
    let r = r.unwrap();
    // Another process recovering the same file leaves it alone...
    let other = place.open().await;
    assert_eq!(other.recover(t(3)).await.unwrap(), 0);
    // ...until the lease has run out; then the late finish is refused.
    assert_eq!(other.recover(r.lease_until).await.unwrap(), 1);
    let f = store
        .finish_credential(
            &r,
            Finish::Issued {
                der: Some(vec![1]),
                facts: CredentialFacts::Certificate {
                    key_sha256: "k".into(),
                },
            },
            r.lease_until,
        )
        .await
        .unwrap();
    assert_eq!(f, Finished::Lapsed);
    let creds = store.credentials(&s.id).await.unwrap();
    assert_eq!(creds[0].state, "void");
    assert_eq!(store.session(&s.id, t(4)).await.unwrap().minted, 0);
}

on_both_stores!(async a_reservation_on_a_session_time_has_closed_records_the_expiry);
async fn a_reservation_on_a_session_time_has_closed_records_the_expiry(kind: StoreKind) {
    let place = TestStore::new(kind).await;
    let store = place.open().await;
    let (s, ev) = new_session(1, 1, 1);
    store
        .create_session(s.clone(), ev, t(0))
        .await
        .unwrap()
        .unwrap();
    approve(&store, &s, "token:approver-0", 1).await.unwrap();
    let (applied, r) = store
        .reserve_credential(&s.id, cert("ab"), t(121))
        .await
        .unwrap();
    assert!(r.is_none());
    assert_eq!(applied.result.unwrap_err().code(), "session_closed");
    let kinds: Vec<_> = store
        .events(&s.id)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.event.kind())
        .collect();
    assert_eq!(kinds, ["requested", "approved", "opened", "closed"]);
}

on_both_stores!(multi two_processes_append_to_one_dense_chained_trail);
async fn two_processes_append_to_one_dense_chained_trail(kind: StoreKind) {
    let place = TestStore::new(kind).await;
    let stores = [place.open().await, place.open().await];
    let mut tasks = Vec::new();
    for i in 0..40 {
        let store = stores[i % 2].clone();
        tasks.push(tokio::spawn(async move {
            let (s, ev) = new_session(1, 1, 1);
            store
                .create_session(s.clone(), ev, t(0))
                .await
                .unwrap()
                .unwrap();
            approve(&store, &s, "token:approver-0", 1).await.unwrap();
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let entries = stores[0].audit_entries(0, 1000, None).await.unwrap();
    // requested, approved, opened for each session.
    assert_eq!(entries.len(), 120);
    let mut prev = lockstep::audit::GENESIS;
    for (n, e) in (1u64..).zip(&entries) {
        assert_eq!(e.seq, n, "sequence numbers are dense, from 1");
        assert_eq!(e.prev_hash, hex::encode(prev));
        let hash =
            lockstep::audit::entry_hash(&prev, e.seq, e.at, e.session.as_deref(), &e.kind, &e.body);
        assert_eq!(e.hash, hex::encode(hash), "entry {n} hashes as chained");
        prev = hash;
    }
    assert_eq!(
        stores[1].audit_head().await.unwrap(),
        Some((120, prev)),
        "both processes see the same head"
    );
}

#[cfg(feature = "postgres")]
mod postgres_only {
    use super::*;

    /// A commit by another process sharing the database wakes this one's
    /// readers (LISTEN/NOTIFY), not only its own commits.
    #[tokio::test]
    async fn a_commit_by_another_process_wakes_readers() {
        let place = TestStore::new(StoreKind::Postgres).await;
        let reader = place.open().await;
        let writer = place.open().await;
        let mut committed = reader.committed();
        committed.borrow_and_update();
        let (s, ev) = new_session(1, 1, 1);
        writer.create_session(s, ev, t(0)).await.unwrap().unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(10), committed.changed())
            .await
            .expect("woken by the other process's commit")
            .unwrap();
        assert_eq!(reader.audit_head().await.unwrap().map(|h| h.0), Some(1));
    }

    /// A password written into the URL is refused, naming what to write
    /// instead, and never echoed.
    #[tokio::test]
    async fn a_password_in_the_url_is_refused() {
        let place = TestStore::new(StoreKind::Postgres).await;
        let mut config = place.postgres_config();
        config.url = format!("{} password=hunter2-secret", config.url);
        let err = lockstep::store::PostgresStore::connect(&config)
            .await
            .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("password = \"env:NAME\""), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
    }

    /// The password by reference: a variable that is not set is refused
    /// before any connection is tried.
    #[tokio::test]
    async fn a_password_reference_that_does_not_resolve_is_refused() {
        let place = TestStore::new(StoreKind::Postgres).await;
        let mut config = place.postgres_config();
        config.password =
            Some(lockstep::secret::SecretRef::parse("env:LOCKSTEP_TEST_NO_SUCH_PASSWORD").unwrap());
        let err = lockstep::store::PostgresStore::connect(&config)
            .await
            .unwrap_err();
        assert_eq!(err.code(), "store_unavailable");
        assert!(
            err.to_string().contains("LOCKSTEP_TEST_NO_SUCH_PASSWORD"),
            "{err}"
        );
    }

    /// An owner whose process is gone is told apart from a live one at
    /// once, without waiting for the lease: a live owner's reservation is
    /// kept, a gone one's is voided.
    #[tokio::test]
    async fn a_gone_owner_is_told_from_a_live_one() {
        let place = TestStore::new(StoreKind::Postgres).await;
        let a = place.open().await;
        let b = place.open().await;
        let (s, ev) = new_session(1, 2, 1);
        a.create_session(s.clone(), ev, t(0))
            .await
            .unwrap()
            .unwrap();
        approve(&a, &s, "token:approver-0", 1).await.unwrap();
        let (_, kept) = a.reserve_credential(&s.id, cert("a0"), t(2)).await.unwrap();
        let (_, lost) = b.reserve_credential(&s.id, cert("b0"), t(2)).await.unwrap();
        assert!(kept.is_some() && lost.is_some());
        place.close(b).await;
        assert_eq!(a.recover(t(3)).await.unwrap(), 1, "only b's is voided");
        let states: Vec<_> = a
            .credentials(&s.id)
            .await
            .unwrap()
            .into_iter()
            .map(|c| (c.serial, c.state))
            .collect();
        assert_eq!(
            states,
            [
                ("a0".into(), "reserved".into()),
                ("b0".into(), "void".into())
            ]
        );
    }

    /// A transaction that loses a deadlock (SQLSTATE 40P01) is run again,
    /// not surfaced: another connection holds the audit head while the
    /// store's transaction holds the session, then asks for the session.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_transaction_that_loses_a_deadlock_is_run_again() {
        let place = TestStore::new(StoreKind::Postgres).await;
        let store = place.open().await;
        let (s, ev) = new_session(1, 1, 1);
        store
            .create_session(s.clone(), ev, t(0))
            .await
            .unwrap()
            .unwrap();
        approve(&store, &s, "token:approver-0", 1).await.unwrap();

        let (mut other, conn) =
            tokio_postgres::connect(&place.postgres_config().url, tokio_postgres::NoTls)
                .await
                .unwrap();
        tokio::spawn(conn);
        let tx = other.transaction().await.unwrap();
        // The store's transaction waits first, so it is the one the
        // server picks to break the deadlock.
        tx.batch_execute("SET LOCAL deadlock_timeout = '30s'; SELECT 1 FROM audit_head FOR UPDATE")
            .await
            .unwrap();
        // Time has closed the session: the refresh saves it and appends.
        let closing = {
            let store = store.clone();
            let id = s.id.clone();
            tokio::spawn(async move { store.apply(&id, SessionOp::Refresh, t(200)).await })
        };
        let waiting = "SELECT count(*) FROM pg_stat_activity
                       WHERE application_name = 'lockstep' AND wait_event_type = 'Lock'";
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while tx.query_one(waiting, &[]).await.unwrap().get::<_, i64>(0) == 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "the store never waited"
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        tx.query(
            "SELECT 1 FROM sessions WHERE id = $1 FOR UPDATE",
            &[&s.id.as_str()],
        )
        .await
        .unwrap();
        tx.commit().await.unwrap();
        let applied = closing.await.unwrap().expect("run again, not failed");
        assert_eq!(applied.session.state, State::Closed);
        let kinds: Vec<_> = store
            .events(&s.id)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.event.kind())
            .collect();
        assert_eq!(kinds, ["requested", "approved", "opened", "closed"]);
    }
}

on_both_stores!(async each_issuers_revocations_are_its_own);
async fn each_issuers_revocations_are_its_own(kind: StoreKind) {
    let place = TestStore::new(kind).await;
    let store = place.open().await;
    let (s, ev) = new_session(1, 3, 1);
    store
        .create_session(s.clone(), ev, t(0))
        .await
        .unwrap()
        .unwrap();
    approve(&store, &s, "token:approver-0", 1).await.unwrap();
    // Certificates of two issuing CAs, and one recorded with no issuer
    // (as before issuers were recorded).
    for (serial, issuer) in [("a1", Some(ISSUER)), ("b1", Some("b0b")), ("01", None)] {
        let credential = NewCredential {
            issuer: issuer.map(str::to_owned),
            ..cert(serial)
        };
        let (_, r) = store
            .reserve_credential(&s.id, credential, t(2))
            .await
            .unwrap();
        let finish = Finish::Issued {
            der: Some(vec![1]),
            facts: CredentialFacts::Certificate {
                key_sha256: "k".into(),
            },
        };
        store
            .finish_credential(&r.unwrap(), finish, t(2))
            .await
            .unwrap();
        let record = store.credential(serial).await.unwrap().unwrap();
        assert_eq!(record.issuer.as_deref(), issuer);
    }
    let close = SessionOp::Close {
        by: "token:req".into(),
    };
    store.apply(&s.id, close, t(3)).await.unwrap();
    let listed = |entries: Vec<lockstep::store::RevokedEntry>| {
        entries.into_iter().map(|e| e.serial).collect::<Vec<_>>()
    };
    let a = store.live_revocations(t(4), ISSUER).await.unwrap();
    assert_eq!(listed(a), ["01", "a1"]);
    let b = store.live_revocations(t(4), "b0b").await.unwrap();
    assert_eq!(listed(b), ["01", "b1"]);
}

on_both_stores!(async a_connection_report_is_recorded_once_and_only_for_the_sessions_serial);
async fn a_connection_report_is_recorded_once_and_only_for_the_sessions_serial(kind: StoreKind) {
    use lockstep::sessions::{ConnectionEnd, ConnectionReport};
    use lockstep::store::ConnectionRecorded;
    let place = TestStore::new(kind).await;
    let store = place.open().await;
    let (s, ev) = new_session(1, 1, 1);
    store
        .create_session(s.clone(), ev, t(0))
        .await
        .unwrap()
        .unwrap();
    approve(&store, &s, "token:approver-0", 1).await.unwrap();
    let (_, r) = store
        .reserve_credential(&s.id, cert("ab12"), t(2))
        .await
        .unwrap();
    let facts = CredentialFacts::Certificate {
        key_sha256: "k".into(),
    };
    let issued = Finish::Issued {
        der: Some(vec![1]),
        facts,
    };
    store
        .finish_credential(&r.unwrap(), issued, t(2))
        .await
        .unwrap();
    let report = |id: &str, serial: &str| ConnectionReport {
        report: id.into(),
        route: "plc".into(),
        serial: serial.into(),
        client: "127.0.0.1:40000".into(),
        started_at: t(3),
        ended_at: t(9),
        bytes_from_client: 5,
        bytes_to_client: 7,
        ended: ConnectionEnd::Closed,
        refused: Vec::new(),
        refused_total: 0,
    };
    let gw = "token:gw";
    let cases = [
        (report("con_a", "AB12"), ConnectionRecorded::New),
        (report("con_a", "ab12"), ConnectionRecorded::Duplicate),
        (report("con_b", "ab12"), ConnectionRecorded::New),
        (report("con_c", "ffff"), ConnectionRecorded::UnknownSerial),
    ];
    for (rep, want) in cases {
        let got = store
            .record_connection(&s.id, gw, rep, t(10))
            .await
            .unwrap();
        assert_eq!(got, want);
    }
    let events = store.events(&s.id).await.unwrap();
    let reports: Vec<String> = events
        .iter()
        .filter_map(|e| match &e.event {
            Event::Connection {
                gateway,
                connection,
            } => Some(format!("{gateway} {}", connection.report)),
            _ => None,
        })
        .collect();
    assert_eq!(reports, ["token:gw con_a", "token:gw con_b"]);
}

on_both_stores!(async one_process_at_a_time_holds_a_webhook_cursor);
async fn one_process_at_a_time_holds_a_webhook_cursor(kind: StoreKind) {
    let place = TestStore::new(kind).await;
    let a = place.open().await;
    let b = place.open().await;
    // A new endpoint starts where it is told; the second process waits.
    let mut cursor = a.claim_webhook("ops", 7, t(0), 30).await.unwrap().unwrap();
    assert_eq!(
        (cursor.position, cursor.failures, cursor.delivered),
        (7, 0, 0)
    );
    assert!(b.claim_webhook("ops", 0, t(1), 30).await.unwrap().is_none());
    // Its holder moves it; the other cannot.
    cursor.position = 9;
    cursor.failures = 2;
    cursor.last_error = Some("x".repeat(1000));
    cursor.next_attempt = Some(t(5));
    assert!(a.save_webhook(&cursor, t(2), 30).await.unwrap());
    assert!(!b.save_webhook(&cursor, t(2), 30).await.unwrap());
    let stored = &b.webhook_cursors().await.unwrap()[0];
    assert_eq!((stored.position, stored.failures), (9, 2));
    assert_eq!(stored.next_attempt, Some(t(5)));
    assert_eq!(stored.last_error.as_ref().unwrap().len(), 300);
    assert_eq!(stored.lease_until, Some(t(32)));
    // A lease not renewed in time is taken over, where it was.
    let taken = b.claim_webhook("ops", 0, t(33), 30).await.unwrap().unwrap();
    assert_eq!(taken.position, 9);
    assert!(!a.save_webhook(&cursor, t(34), 30).await.unwrap());
    // One given back is taken at once.
    b.release_webhook("ops").await.unwrap();
    assert!(
        a.claim_webhook("ops", 0, t(35), 30)
            .await
            .unwrap()
            .is_some()
    );
    place.close(a).await;
    place.close(b).await;
}

/// A break-glass session with no approvers (open at once), `per_day` per
/// requester, its review due 100 s after opening.
fn break_glass_session(requester: &str, per_day: u32, dt: i64) -> (Session, Vec<Event>) {
    let (mut s, _) = new_session(1, 1, 1);
    s.request.requester = requester.into();
    s.request.break_glass = true;
    let rules = Rules {
        quorum: 0,
        approvers: Vec::new(),
        break_glass: Some(lockstep::sessions::BreakGlassRules {
            reviewers: approvers(2),
            review_within_secs: 100,
            per_day,
        }),
        ..s.rules
    };
    Session::new(SessionId::generate().unwrap(), s.request, rules, t(dt)).unwrap()
}

on_both_stores!(async break_glass_requests_are_limited_per_requester_per_day);
async fn break_glass_requests_are_limited_per_requester_per_day(kind: StoreKind) {
    let place = TestStore::new(kind).await;
    let store = place.open().await;
    let create = |requester: &'static str, dt: i64| {
        let store = store.clone();
        async move {
            let (s, ev) = break_glass_session(requester, 2, dt);
            store.create_session(s, ev, t(dt)).await.unwrap()
        }
    };
    create("token:oncall-1", 0).await.unwrap();
    create("token:oncall-1", 10).await.unwrap();
    let refused = create("token:oncall-1", 20).await.unwrap_err();
    assert_eq!(refused.code(), "break_glass_limit_reached");
    create("token:oncall-2", 20).await.unwrap();
    // A plain session does not count, and the window slides: a day after
    // the first, one more is allowed.
    let (plain, ev) = new_session(1, 1, 1);
    store
        .create_session(plain, ev, t(30))
        .await
        .unwrap()
        .unwrap();
    create("token:oncall-1", 86_400).await.unwrap();
    assert_eq!(
        create("token:oncall-1", 86_401).await.unwrap_err().code(),
        "break_glass_limit_reached"
    );
    let listed = store.sessions(SessionFilter::default()).await.unwrap();
    assert_eq!(listed.len(), 5, "a refused request stores nothing");
}

on_both_stores!(async break_glass_reviews_are_tracked_until_justified);
async fn break_glass_reviews_are_tracked_until_justified(kind: StoreKind) {
    use lockstep::sessions::{Outcome, ReviewState};
    let place = TestStore::new(kind).await;
    let store = place.open().await;
    let (late, ev) = break_glass_session("token:oncall-1", 5, 0);
    store
        .create_session(late.clone(), ev, t(0))
        .await
        .unwrap()
        .unwrap();
    let (reviewed, ev) = break_glass_session("token:oncall-2", 5, 0);
    store
        .create_session(reviewed.clone(), ev, t(0))
        .await
        .unwrap()
        .unwrap();
    let (plain, ev) = new_session(1, 1, 1);
    store
        .create_session(plain, ev, t(0))
        .await
        .unwrap()
        .unwrap();
    let unreviewed = || async {
        let filter = SessionFilter {
            unreviewed: true,
            ..SessionFilter::default()
        };
        let mut ids: Vec<_> = store
            .sessions(filter)
            .await
            .unwrap()
            .into_iter()
            .map(|s| s.id)
            .collect();
        ids.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        ids
    };
    let mut both = vec![late.id.clone(), reviewed.id.clone()];
    both.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    assert_eq!(unreviewed().await, both);

    let review = SessionOp::Review {
        by: "token:approver-1".into(),
        outcome: Outcome::Justified,
        note: "the primary was down".into(),
    };
    let applied = store.apply(&reviewed.id, review, t(50)).await.unwrap();
    applied.result.unwrap();
    assert_eq!(unreviewed().await, std::slice::from_ref(&late.id));

    // The sweep expires both at +120 (and abandons the plain one) and
    // flags the late review (due +100).
    assert_eq!(store.sweep(t(121)).await.unwrap(), 3);
    let back = store.session(&late.id, t(122)).await.unwrap();
    assert_eq!(back.review_state(), Some(ReviewState::Overdue));
    assert_eq!(store.sweep(t(200)).await.unwrap(), 0, "flagged once");
    let counts = store.break_glass_counts().await.unwrap();
    let count = |state| counts.iter().find(|(s, _)| *s == state).map_or(0, |c| c.1);
    assert_eq!(count(ReviewState::Overdue), 1);
    assert_eq!(count(ReviewState::Justified), 1);
    assert_eq!(count(ReviewState::Awaiting), 0);

    let entries = store.audit_entries(0, 1000, None).await.unwrap();
    for e in entries.iter().filter(|e| e.session.is_some()) {
        let session = e.session.as_deref();
        let marked = session == Some(late.id.as_str()) || session == Some(reviewed.id.as_str());
        assert_eq!(
            lockstep::audit::is_break_glass(&e.body),
            marked,
            "{}",
            e.kind
        );
    }
    let kinds: Vec<_> = entries
        .iter()
        .filter(|e| e.session.as_deref() == Some(late.id.as_str()))
        .map(|e| e.kind.as_str())
        .collect();
    assert_eq!(kinds, ["requested", "opened", "closed", "review_overdue"]);
}

on_both_stores!(async a_signal_ends_its_subjects_live_sessions_once);
async fn a_signal_ends_its_subjects_live_sessions_once(kind: StoreKind) {
    use lockstep::signals::{Signal, SignalEvent, Subject};
    let place = TestStore::new(kind).await;
    let store = place.open().await;
    let of = |requester: &str| {
        let (mut s, ev) = new_session(1, 1, 1);
        s.request.requester = requester.into();
        (s, ev)
    };
    let alice = "oidc:https://idp.example:alice";
    let (open, ev) = of(alice);
    store
        .create_session(open.clone(), ev, t(0))
        .await
        .unwrap()
        .unwrap();
    approve(&store, &open, "token:approver-0", 1).await.unwrap();
    let (pending, ev) = of(alice);
    store
        .create_session(pending.clone(), ev, t(0))
        .await
        .unwrap()
        .unwrap();
    let (other, ev) = of("oidc:https://idp.example:alicex");
    store
        .create_session(other.clone(), ev, t(0))
        .await
        .unwrap()
        .unwrap();
    let signal = |jti: &str| Signal {
        issuer: "https://idp.example/ssf".into(),
        jti: jti.into(),
        iat: t(2),
        events: vec![SignalEvent {
            name: "session-revoked".into(),
            ends_sessions: true,
        }],
        subject: Subject::IssSub {
            iss: "https://idp.example".into(),
            sub: "alice".into(),
        },
        approvers: false,
    };
    let mut ended = store
        .receive_signal(signal("j1"), t(3))
        .await
        .unwrap()
        .unwrap();
    ended.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    let mut want = vec![open.id.clone(), pending.id.clone()];
    want.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    assert_eq!(ended, want);
    for id in [&open.id, &pending.id] {
        let s = store.session(id, t(4)).await.unwrap();
        let closure = s.closure.unwrap();
        assert_eq!(closure.reason, CloseReason::Revoked);
        assert_eq!(closure.by.as_deref(), Some("lockstep:signal"));
        assert!(closure.note.unwrap().contains("(jti j1)"));
    }
    assert_eq!(
        store.session(&other.id, t(4)).await.unwrap().state,
        State::Pending
    );
    // The same jti again is refused and changes nothing; another is taken.
    assert!(
        store
            .receive_signal(signal("j1"), t(5))
            .await
            .unwrap()
            .is_err()
    );
    assert_eq!(
        store.receive_signal(signal("j2"), t(5)).await.unwrap(),
        Ok(vec![])
    );
    let entries = store.audit_entries(0, 1000, None).await.unwrap();
    let kinds: Vec<_> = entries
        .iter()
        .filter(|e| e.kind == "signal")
        .map(|e| e.session.clone())
        .collect();
    assert_eq!(
        kinds,
        [None, None],
        "one entry per SET taken, of no session"
    );
}

on_both_stores!(multi the_break_glass_limit_holds_across_processes_racing);
async fn the_break_glass_limit_holds_across_processes_racing(kind: StoreKind) {
    let place = TestStore::new(kind).await;
    // Two stores on one database, as two replicas (or two processes on one
    // SQLite file) would have, each asking five times at once.
    let stores = [place.open().await, place.open().await];
    let tasks: Vec<_> = (0..10)
        .map(|i| {
            let store = stores[i % 2].clone();
            tokio::spawn(async move {
                let (s, ev) = break_glass_session("token:oncall-1", 2, 0);
                store.create_session(s, ev, t(0)).await.unwrap()
            })
        })
        .collect();
    let mut made = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(()) => made += 1,
            Err(e) => assert_eq!(e.code(), "break_glass_limit_reached"),
        }
    }
    assert_eq!(made, 2, "exactly per_day, however the requests race");
}
