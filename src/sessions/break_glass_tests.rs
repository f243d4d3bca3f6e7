//! Break-glass sessions: open at once or on one approval, reviewed by
//! someone else afterwards, flagged when the review is late or unjustified.

use super::tests::{A, B, REQUESTER, T0, request, rules};
use super::*;
use crate::clock::Timestamp;

const REVIEW_WITHIN: u32 = 600;

fn at(dt: i64) -> Timestamp {
    Timestamp::from_unix(T0 + dt)
}

fn break_glass_rules(quorum: u32) -> Rules {
    Rules {
        approvers: if quorum == 0 {
            Vec::new()
        } else {
            vec![A.into()]
        },
        quorum,
        break_glass: Some(BreakGlassRules {
            reviewers: vec![A.into(), B.into(), REQUESTER.into()],
            review_within_secs: REVIEW_WITHIN,
            per_day: 2,
        }),
        ..rules()
    }
}

fn break_glass_request() -> Request {
    Request {
        break_glass: true,
        ..request(120)
    }
}

fn new(quorum: u32) -> (Session, Vec<Event>) {
    let id = SessionId::parse("ses_bbbbbbbbbbbbbbbbbbbbbbbbbb").unwrap();
    Session::new(id, break_glass_request(), break_glass_rules(quorum), at(0)).unwrap()
}

fn review(
    s: &mut Session,
    by: &str,
    outcome: Outcome,
    dt: i64,
) -> Result<Vec<Event>, &'static str> {
    let op = SessionOp::Review {
        by: by.into(),
        outcome,
        note: "the primary was down".into(),
    };
    let (events, result) = s.apply(&op, at(dt));
    result.map(|_| events).map_err(|e| e.code())
}

fn kinds(events: &[Event]) -> Vec<&'static str> {
    events.iter().map(Event::kind).collect()
}

#[test]
fn without_approvers_it_opens_at_once_and_awaits_review() {
    let (s, events) = new(0);
    assert_eq!(kinds(&events), ["requested", "opened"]);
    assert!(matches!(
        &events[0],
        Event::Requested {
            break_glass: true,
            ..
        }
    ));
    assert_eq!(s.state, State::Open);
    assert_eq!(s.closes_at, Some(at(120)));
    assert_eq!(s.review_state(), Some(ReviewState::Awaiting));
    assert_eq!(s.break_glass.as_ref().unwrap().review_by, Some(at(600)));
}

#[test]
fn with_one_approver_it_opens_on_that_approval() {
    let (mut s, events) = new(1);
    assert_eq!(kinds(&events), ["requested"]);
    assert_eq!(s.review_state(), Some(ReviewState::Pending));
    let hash = s.request_hash;
    let op = SessionOp::Approve {
        by: A.into(),
        request_hash: hash,
    };
    let (events, result) = s.apply(&op, at(5));
    result.unwrap();
    assert_eq!(kinds(&events), ["approved", "opened"]);
    assert_eq!(s.break_glass.as_ref().unwrap().review_by, Some(at(605)));
}

#[test]
fn a_request_and_its_rules_must_agree_on_break_glass() {
    let id = || SessionId::parse("ses_bbbbbbbbbbbbbbbbbbbbbbbbbb").unwrap();
    let plain = Session::new(id(), request(120), break_glass_rules(0), at(0));
    assert_eq!(plain.unwrap_err().code(), "invalid_request");
    let marked = Session::new(id(), break_glass_request(), rules(), at(0));
    assert_eq!(marked.unwrap_err().code(), "invalid_request");
    let no_quorum = Rules {
        quorum: 0,
        ..rules()
    };
    let refused = Session::new(id(), request(120), no_quorum, at(0));
    assert_eq!(refused.unwrap_err().code(), "invalid_request");
}

#[test]
fn the_mark_is_part_of_the_request_hash() {
    let id = SessionId::parse("ses_bbbbbbbbbbbbbbbbbbbbbbbbbb").unwrap();
    assert_ne!(request(120).hash(&id), break_glass_request().hash(&id));
}

#[test]
fn only_a_reviewer_who_is_not_the_requester_reviews() {
    let (mut s, _) = new(0);
    let before = s.clone();
    assert_eq!(
        review(&mut s, REQUESTER, Outcome::Justified, 10),
        Err("self_review")
    );
    assert_eq!(
        review(&mut s, "token:mallory", Outcome::Justified, 10),
        Err("not_a_reviewer")
    );
    assert_eq!(s, before);
    let events = review(&mut s, B, Outcome::Justified, 10).unwrap();
    assert_eq!(kinds(&events), ["reviewed"]);
    assert_eq!(s.review_state(), Some(ReviewState::Justified));
    assert_eq!(s.state, State::Open, "a justified session runs its course");
    assert_eq!(
        review(&mut s, A, Outcome::Unjustified, 11),
        Err("already_reviewed")
    );
}

#[test]
fn a_pending_or_plain_session_has_nothing_to_review() {
    let (mut s, _) = new(1);
    assert_eq!(
        review(&mut s, B, Outcome::Justified, 1),
        Err("nothing_to_review")
    );
    let mut plain = super::tests::new_session(rules());
    assert_eq!(
        review(&mut plain, A, Outcome::Justified, 1),
        Err("not_break_glass")
    );
    assert_eq!(plain.review_state(), None);
}

#[test]
fn an_unjustified_open_session_is_revoked_by_its_reviewer() {
    let (mut s, _) = new(0);
    let events = review(&mut s, A, Outcome::Unjustified, 30).unwrap();
    assert_eq!(kinds(&events), ["reviewed", "closed"]);
    assert_eq!(s.state, State::Closed);
    let closure = s.closure.as_ref().unwrap();
    assert_eq!(closure.reason, CloseReason::Revoked);
    assert_eq!(closure.by.as_deref(), Some(A));
    assert_eq!(s.review_state(), Some(ReviewState::Unjustified));
    assert!(ReviewState::Unjustified.unreviewed(), "it stays flagged");
}

#[test]
fn a_late_review_is_flagged_overdue_once_and_can_still_be_recorded() {
    let (mut s, _) = new(0);
    let record = s.break_glass.clone().unwrap();
    assert!(!record.due(at(599)));
    assert!(record.due(at(600)));
    let events = s.refresh(at(700));
    assert_eq!(kinds(&events), ["closed", "review_overdue"]);
    assert!(matches!(events[1], Event::ReviewOverdue { review_by } if review_by == at(600)));
    assert_eq!(s.review_state(), Some(ReviewState::Overdue));
    assert!(s.refresh(at(800)).is_empty(), "flagged once");
    assert!(!s.due(at(800)));
    review(&mut s, B, Outcome::Justified, 900).unwrap();
    assert_eq!(s.review_state(), Some(ReviewState::Justified));
}

#[test]
fn a_break_glass_session_that_never_opened_needs_no_review() {
    let (mut s, _) = new(1);
    s.refresh(at(500));
    assert_eq!(s.state, State::Closed);
    assert_eq!(s.review_state(), Some(ReviewState::Unneeded));
    assert!(!s.due(at(10_000)));
}

#[test]
fn break_glass_sessions_round_trip_through_json() {
    let (mut s, _) = new(0);
    review(&mut s, B, Outcome::Justified, 10).unwrap();
    let back: Session = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
    assert_eq!(back, s);
}
