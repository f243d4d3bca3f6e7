//! The session rules, table-driven: each case is a script of operations at
//! given times with the expected outcome of each, and the final state.

use super::Profile;
use super::*;
use crate::clock::Timestamp;

pub(super) const T0: i64 = 1_900_000_000;
pub(super) const REQUESTER: &str = "token:req";
pub(super) const A: &str = "token:alice";
pub(super) const B: &str = "token:bob";
const C: &str = "token:carol";
const X: &str = "token:mallory";

pub(super) fn rules() -> Rules {
    Rules {
        approvers: vec![A.into(), B.into(), C.into(), REQUESTER.into()],
        quorum: 2,
        max_duration_secs: 300,
        pending_timeout_secs: 60,
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

pub(super) fn request(duration: u32) -> Request {
    Request {
        tenant: None,
        requester: REQUESTER.into(),
        resource: "db:payroll".into(),
        task: "rotate the payroll DB password".into(),
        request_digest: None,
        duration_secs: duration,
        profile: Profile::MtlsClient,
        break_glass: false,
    }
}

pub(super) fn new_session(rules: Rules) -> Session {
    let id = SessionId::parse("ses_aaaaaaaaaaaaaaaaaaaaaaaaaa").unwrap();
    Session::new(id, request(120), rules, Timestamp::from_unix(T0))
        .unwrap()
        .0
}

enum Op {
    Approve(&'static str),
    ApproveWrongHash(&'static str),
    Deny(&'static str),
    Close(&'static str),
    Revoke(&'static str),
    Mint,
    Release,
    Refresh,
}

/// (seconds after T0, operation, expected error code or "ok")
type Step = (i64, Op, &'static str);

fn run(session: &mut Session, steps: Vec<Step>) -> Vec<Event> {
    let mut all = Vec::new();
    for (i, (dt, op, want)) in steps.into_iter().enumerate() {
        let now = Timestamp::from_unix(T0 + dt);
        let hash = session.request_hash;
        let op = match op {
            Op::Approve(by) => SessionOp::Approve {
                by: by.into(),
                request_hash: hash,
            },
            Op::ApproveWrongHash(by) => SessionOp::Approve {
                by: by.into(),
                request_hash: [0; 32],
            },
            Op::Deny(by) => SessionOp::Deny {
                by: by.into(),
                request_hash: hash,
                reason: Some("no".into()),
            },
            Op::Close(by) => SessionOp::Close { by: by.into() },
            Op::Revoke(by) => SessionOp::Revoke {
                by: by.into(),
                actor: Actor::Operator,
                note: "ticket closed".into(),
                reason: None,
            },
            Op::Mint => SessionOp::ReserveMint {
                counted: true,
                kind: CredentialKind::Certificate,
            },
            Op::Release => SessionOp::ReleaseMint {
                kind: CredentialKind::Certificate,
            },
            Op::Refresh => SessionOp::Refresh,
        };
        let before = session.clone();
        let (mut events, result) = session.apply(&op, now);
        let got = match &result {
            Ok(_) => "ok",
            Err(e) => e.code(),
        };
        assert_eq!(got, want, "step {i} ({op:?}) at +{dt}s");
        if result.is_err() && events.is_empty() {
            assert_eq!(
                *session, before,
                "step {i}: a refused op changed the session"
            );
        }
        all.append(&mut events);
    }
    all
}

struct Case {
    name: &'static str,
    rules: Rules,
    steps: Vec<Step>,
    state: State,
    reason: Option<CloseReason>,
}

fn cases() -> Vec<Case> {
    use Op::*;
    vec![
        Case {
            name: "quorum of two opens",
            rules: rules(),
            steps: vec![(1, Approve(A), "ok"), (2, Approve(B), "ok")],
            state: State::Open,
            reason: None,
        },
        Case {
            name: "one approval is not quorum",
            rules: rules(),
            steps: vec![(1, Approve(A), "ok")],
            state: State::Pending,
            reason: None,
        },
        Case {
            name: "each approver counts once",
            rules: rules(),
            steps: vec![(1, Approve(A), "ok"), (2, Approve(A), "already_voted")],
            state: State::Pending,
            reason: None,
        },
        Case {
            name: "requester never counts, even when in the set",
            rules: rules(),
            steps: vec![
                (1, Approve(REQUESTER), "self_approval"),
                (2, Approve(A), "ok"),
            ],
            state: State::Pending,
            reason: None,
        },
        Case {
            name: "outsiders do not count",
            rules: rules(),
            steps: vec![(1, Approve(X), "not_an_approver"), (2, Approve(A), "ok")],
            state: State::Pending,
            reason: None,
        },
        Case {
            name: "approval for another hash is refused",
            rules: rules(),
            steps: vec![
                (1, ApproveWrongHash(A), "request_hash_mismatch"),
                (2, Approve(A), "ok"),
            ],
            state: State::Pending,
            reason: None,
        },
        Case {
            name: "one deny closes as denied",
            rules: rules(),
            steps: vec![
                (1, Approve(A), "ok"),
                (2, Deny(B), "ok"),
                (3, Approve(C), "session_closed"),
            ],
            state: State::Closed,
            reason: Some(CloseReason::Denied),
        },
        Case {
            name: "two denials needed when the policy says so",
            rules: Rules {
                denials_to_close: 2,
                ..rules()
            },
            steps: vec![
                (1, Deny(A), "ok"),
                (2, Approve(A), "already_voted"),
                (3, Approve(B), "ok"),
                (4, Deny(C), "ok"),
            ],
            state: State::Closed,
            reason: Some(CloseReason::Denied),
        },
        Case {
            name: "denying twice is refused",
            rules: Rules {
                denials_to_close: 3,
                ..rules()
            },
            steps: vec![(1, Deny(A), "ok"), (2, Deny(A), "already_voted")],
            state: State::Pending,
            reason: None,
        },
        Case {
            name: "a deny after opening closes it",
            rules: rules(),
            steps: vec![
                (1, Approve(A), "ok"),
                (2, Approve(B), "ok"),
                (3, Deny(C), "ok"),
            ],
            state: State::Closed,
            reason: Some(CloseReason::Denied),
        },
        Case {
            name: "no quorum before the pending timeout: abandoned",
            rules: rules(),
            steps: vec![(1, Approve(A), "ok"), (60, Approve(B), "session_closed")],
            state: State::Closed,
            reason: Some(CloseReason::Abandoned),
        },
        Case {
            name: "quorum one second before the timeout opens",
            rules: rules(),
            steps: vec![(1, Approve(A), "ok"), (59, Approve(B), "ok")],
            state: State::Open,
            reason: None,
        },
        Case {
            name: "open session expires at closes_at",
            rules: rules(),
            steps: vec![
                (1, Approve(A), "ok"),
                (2, Approve(B), "ok"),
                (121, Mint, "ok"),
                (122, Refresh, "ok"),
                (122, Mint, "session_closed"),
            ],
            state: State::Closed,
            reason: Some(CloseReason::Expired),
        },
        Case {
            name: "minting only while open",
            rules: rules(),
            steps: vec![
                (1, Mint, "session_not_open"),
                (2, Approve(A), "ok"),
                (3, Approve(B), "ok"),
                (4, Mint, "ok"),
            ],
            state: State::Open,
            reason: None,
        },
        Case {
            name: "one-shot by default",
            rules: rules(),
            steps: vec![
                (1, Approve(A), "ok"),
                (2, Approve(B), "ok"),
                (3, Mint, "ok"),
                (4, Mint, "credential_limit_reached"),
            ],
            state: State::Open,
            reason: None,
        },
        Case {
            name: "a released slot can be used again",
            rules: rules(),
            steps: vec![
                (1, Approve(A), "ok"),
                (2, Approve(B), "ok"),
                (3, Mint, "ok"),
                (3, Release, "ok"),
                (4, Mint, "ok"),
            ],
            state: State::Open,
            reason: None,
        },
        Case {
            name: "three credentials when allowed",
            rules: Rules {
                credentials: 3,
                ..rules()
            },
            steps: vec![
                (1, Approve(A), "ok"),
                (2, Approve(B), "ok"),
                (3, Mint, "ok"),
                (4, Mint, "ok"),
                (5, Mint, "ok"),
                (6, Mint, "credential_limit_reached"),
            ],
            state: State::Open,
            reason: None,
        },
        Case {
            name: "requester closes: completed",
            rules: rules(),
            steps: vec![
                (1, Approve(A), "ok"),
                (2, Approve(B), "ok"),
                (10, Close(REQUESTER), "ok"),
                (11, Mint, "session_closed"),
            ],
            state: State::Closed,
            reason: Some(CloseReason::Completed),
        },
        Case {
            name: "only the requester closes",
            rules: rules(),
            steps: vec![(1, Close(A), "not_requester")],
            state: State::Pending,
            reason: None,
        },
        Case {
            name: "requester may withdraw a pending request",
            rules: rules(),
            steps: vec![(1, Close(REQUESTER), "ok")],
            state: State::Closed,
            reason: Some(CloseReason::Completed),
        },
        Case {
            name: "revoked by an operator",
            rules: rules(),
            steps: vec![
                (1, Approve(A), "ok"),
                (2, Approve(B), "ok"),
                (3, Revoke(X), "ok"),
            ],
            state: State::Closed,
            reason: Some(CloseReason::Revoked),
        },
        Case {
            name: "a closed session never reopens",
            rules: rules(),
            steps: vec![
                (1, Revoke(X), "ok"),
                (2, Approve(A), "session_closed"),
                (3, Approve(B), "session_closed"),
                (4, Close(REQUESTER), "session_closed"),
                (5, Revoke(X), "session_closed"),
            ],
            state: State::Closed,
            reason: Some(CloseReason::Revoked),
        },
        Case {
            name: "approving an open session is refused",
            rules: rules(),
            steps: vec![
                (1, Approve(A), "ok"),
                (2, Approve(B), "ok"),
                (3, Approve(C), "session_not_pending"),
            ],
            state: State::Open,
            reason: None,
        },
        Case {
            name: "quorum equal to the whole set",
            rules: Rules {
                quorum: 3,
                ..rules()
            },
            steps: vec![
                (1, Approve(A), "ok"),
                (2, Approve(B), "ok"),
                (3, Approve(REQUESTER), "self_approval"),
                (4, Approve(C), "ok"),
            ],
            state: State::Open,
            reason: None,
        },
    ]
}

#[test]
fn session_rules() {
    for case in cases() {
        let mut s = new_session(case.rules.clone());
        run(&mut s, case.steps);
        assert_eq!(s.state, case.state, "{}", case.name);
        assert_eq!(
            s.closure.as_ref().map(|c| c.reason),
            case.reason,
            "{}",
            case.name
        );
    }
}

#[test]
fn closes_at_is_fixed_at_opening_and_never_moves() {
    let mut s = new_session(rules());
    run(
        &mut s,
        vec![(5, Op::Approve(A), "ok"), (17, Op::Approve(B), "ok")],
    );
    assert_eq!(s.opened_at, Some(Timestamp::from_unix(T0 + 17)));
    assert_eq!(s.closes_at, Some(Timestamp::from_unix(T0 + 17 + 120)));
    let before = s.closes_at;
    run(
        &mut s,
        vec![
            (50, Op::Mint, "ok"),
            (60, Op::Approve(C), "session_not_pending"),
            (70, Op::Refresh, "ok"),
        ],
    );
    assert_eq!(s.closes_at, before);
    // Expiry is recorded at closes_at exactly, however late it is noticed.
    run(&mut s, vec![(10_000, Op::Refresh, "ok")]);
    assert_eq!(s.closure.unwrap().at, Timestamp::from_unix(T0 + 137));
}

#[test]
fn mint_slot_carries_closes_at() {
    let mut s = new_session(rules());
    run(
        &mut s,
        vec![(1, Op::Approve(A), "ok"), (2, Op::Approve(B), "ok")],
    );
    let (_, slot) = s.apply(
        &SessionOp::ReserveMint {
            counted: true,
            kind: CredentialKind::Certificate,
        },
        Timestamp::from_unix(T0 + 3),
    );
    assert_eq!(slot.unwrap().unwrap().not_after, s.closes_at.unwrap());
}

#[test]
fn abandonment_is_recorded_at_pending_until() {
    let mut s = new_session(rules());
    let events = run(&mut s, vec![(500, Op::Refresh, "ok")]);
    assert_eq!(
        s.closure.as_ref().unwrap().at,
        Timestamp::from_unix(T0 + 60)
    );
    assert!(matches!(
        events.as_slice(),
        [Event::Closed {
            reason: CloseReason::Abandoned,
            by: None,
            ..
        }]
    ));
}

#[test]
fn events_tell_the_story() {
    let mut s = new_session(rules());
    let events = run(
        &mut s,
        vec![
            (1, Op::Approve(A), "ok"),
            (2, Op::Approve(B), "ok"),
            (3, Op::Close(REQUESTER), "ok"),
        ],
    );
    let kinds: Vec<_> = events.iter().map(Event::kind).collect();
    assert_eq!(kinds, ["approved", "approved", "opened", "closed"]);
    match &events[2] {
        Event::Opened {
            approvers,
            closes_at,
        } => {
            assert_eq!(approvers, &[A.to_owned(), B.to_owned()]);
            assert_eq!(*closes_at, Timestamp::from_unix(T0 + 122));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn creation_checks_duration_and_rules() {
    let id = || SessionId::parse("ses_aaaaaaaaaaaaaaaaaaaaaaaaaa").unwrap();
    let now = Timestamp::from_unix(T0);
    for (req, rules, code) in [
        (request(0), rules(), "invalid_duration"),
        (request(301), rules(), "invalid_duration"),
        (
            request(300),
            Rules {
                quorum: 0,
                ..rules()
            },
            "invalid_request",
        ),
        (
            request(300),
            Rules {
                credentials: 0,
                ..rules()
            },
            "invalid_request",
        ),
    ] {
        let err = Session::new(id(), req, rules, now).unwrap_err();
        assert_eq!(err.code(), code);
    }
    let (s, events) = Session::new(id(), request(300), rules(), now).unwrap();
    assert_eq!(s.pending_until, Timestamp::from_unix(T0 + 60));
    let kinds: Vec<_> = events.iter().map(Event::kind).collect();
    assert_eq!(kinds, ["requested"]);
}

#[test]
fn sessions_round_trip_through_json() {
    let mut s = new_session(rules());
    run(
        &mut s,
        vec![(1, Op::Approve(A), "ok"), (2, Op::Deny(B), "ok")],
    );
    let json = serde_json::to_string(&s).unwrap();
    let back: Session = serde_json::from_str(&json).unwrap();
    assert_eq!(back, s);
}

/// An open session under `signing`, with one certificate minted.
fn signing_session(signing: SigningRules) -> Session {
    let mut s = new_session(Rules { signing, ..rules() });
    run(
        &mut s,
        vec![
            (1, Op::Approve(A), "ok"),
            (2, Op::Approve(B), "ok"),
            (3, Op::Mint, "ok"),
        ],
    );
    s
}

fn stamp(s: &mut Session, at: i64) -> Result<Option<MintSlot>, SessionError> {
    let op = SessionOp::ReserveMint {
        counted: true,
        kind: CredentialKind::Timestamp,
    };
    s.apply(&op, Timestamp::from_unix(T0 + at)).1
}

#[test]
fn signatures_have_their_own_count_beside_credentials() {
    let mut s = signing_session(SigningRules {
        signatures: 2,
        close_after: false,
    });
    // The certificate used the one credential; the signatures count apart.
    assert_eq!(s.minted, 1);
    assert!(stamp(&mut s, 4).is_ok());
    assert!(stamp(&mut s, 5).is_ok());
    assert_eq!(
        stamp(&mut s, 6).unwrap_err().code(),
        "signature_limit_reached"
    );
    // A stamp that failed on the device gives its slot back.
    let release = SessionOp::ReleaseMint {
        kind: CredentialKind::Timestamp,
    };
    assert!(s.apply(&release, Timestamp::from_unix(T0 + 7)).1.is_ok());
    assert_eq!((s.signed, s.minted), (1, 1));
    assert!(stamp(&mut s, 8).is_ok());
    // Closing after signing is the policy's choice: here, nothing happens.
    let (events, _) = s.apply(&SessionOp::CloseAfterSigning, Timestamp::from_unix(T0 + 9));
    assert!(events.is_empty());
    assert_eq!(s.state, State::Open);
}

#[test]
fn the_policy_closes_the_session_after_its_last_signature() {
    let mut s = signing_session(SigningRules {
        signatures: 2,
        close_after: true,
    });
    assert!(stamp(&mut s, 4).is_ok());
    let (events, _) = s.apply(&SessionOp::CloseAfterSigning, Timestamp::from_unix(T0 + 5));
    assert!(events.is_empty(), "one signature left: still open");
    assert!(stamp(&mut s, 6).is_ok());
    let (events, _) = s.apply(&SessionOp::CloseAfterSigning, Timestamp::from_unix(T0 + 7));
    assert_eq!(events.len(), 1);
    let closure = s.closure.clone().unwrap();
    assert_eq!(
        (s.state, closure.reason, closure.by.as_deref()),
        (State::Closed, CloseReason::Completed, Some(POLICY_ACTOR))
    );
    assert_eq!(stamp(&mut s, 8).unwrap_err().code(), "session_closed");
}

#[test]
fn sessions_stored_before_signing_existed_read_with_its_defaults() {
    let mut json = serde_json::to_value(new_session(rules())).unwrap();
    json.as_object_mut().unwrap().remove("signed");
    json["rules"].as_object_mut().unwrap().remove("signing");
    let s: Session = serde_json::from_value(json).unwrap();
    assert_eq!((s.signed, s.rules.signing), (0, SigningRules::default()));
    assert_eq!(s.ci, None);
}

#[test]
fn a_requester_token_that_expires_revokes_the_session_at_that_instant() {
    let checked = || Rules {
        conditions: Conditions {
            requester_token_valid: true,
            ..Conditions::default()
        },
        ..rules()
    };
    let mut s = new_session(checked());
    s.requester_credential_expires = Some(Timestamp::from_unix(T0 + 30));
    run(
        &mut s,
        vec![(1, Op::Approve(A), "ok"), (2, Op::Approve(B), "ok")],
    );
    assert_eq!(s.recheck_at(), Some(Timestamp::from_unix(T0 + 30)));
    assert!(!s.due(Timestamp::from_unix(T0 + 29)));
    assert!(s.due(Timestamp::from_unix(T0 + 30)));
    let events = s.refresh(Timestamp::from_unix(T0 + 45));
    let closure = s.closure.clone().unwrap();
    assert_eq!(closure.reason, CloseReason::Revoked);
    assert_eq!(
        closure.at,
        Timestamp::from_unix(T0 + 30),
        "when the token expired"
    );
    assert_eq!(closure.by.as_deref(), Some(POLICY_ACTOR));
    assert_eq!(
        closure.revocation_reason,
        Some(RevocationReason::PrivilegeWithdrawn)
    );
    assert!(matches!(events.as_slice(), [Event::Closed { .. }]));
    assert_eq!(s.recheck_at(), None, "nothing left to re-check");

    // A token outliving the session changes nothing: it expires as usual.
    let mut late = new_session(checked());
    late.requester_credential_expires = Some(Timestamp::from_unix(T0 + 1_000));
    run(
        &mut late,
        vec![(1, Op::Approve(A), "ok"), (2, Op::Approve(B), "ok")],
    );
    late.refresh(Timestamp::from_unix(T0 + 2_000));
    assert_eq!(late.closure.unwrap().reason, CloseReason::Expired);
}
