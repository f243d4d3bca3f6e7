//! The session and its transitions.

use serde::{Deserialize, Serialize};

use super::CredentialKind;
use super::break_glass::{BreakGlass, BreakGlassRules, Outcome, Review, ReviewState};

use super::{Event, Request, SessionError, SessionId, format_hash};
use crate::clock::Timestamp;
use crate::identity;

/// The policy rules a session was created under, copied into it so a
/// policy change never alters a session already requested.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rules {
    /// Identity patterns whose approvals count.
    pub approvers: Vec<String>,
    /// Distinct approvals needed to open (M of N).
    pub quorum: u32,
    /// Longest duration that may be requested, seconds.
    pub max_duration_secs: u32,
    /// How long the session may wait for its quorum, seconds.
    pub pending_timeout_secs: u32,
    /// How many credentials the session may mint.
    pub credentials: u32,
    /// Denials that close the session (1: one deny closes it).
    pub denials_to_close: u32,
    /// Whether session-bound tokens may be minted (always for the `token`
    /// profile; for certificate profiles when the policy allows tokens).
    #[serde(default)]
    pub tokens_allowed: bool,
    /// Whether tokens count against `credentials`.
    #[serde(default = "yes")]
    pub count_tokens: bool,
    /// Token audiences allowed besides the resource itself.
    #[serde(default)]
    pub audiences: Vec<String>,
    /// Conditions checked again at each mint; a failed one revokes the
    /// session.
    #[serde(default)]
    pub conditions: Conditions,
    /// At most this many connections of the session at once through one
    /// gateway (carried in its certificates' session extension).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connections: Option<u32>,
    /// What the session's SSH user certificates say (profile `ssh-user`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh: Option<SshRules>,
    /// Whether an `ssh-user` session may also mint `mtls-client`
    /// certificates (its policy lists both): the client certificate
    /// `lockstep connect` shows the gateway in front of sshd.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub gateway_certificates: bool,
    /// The only Modbus function codes the session may use through a
    /// gateway (carried in its certificates' session extension), if the
    /// policy limits them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub modbus_functions: Option<Vec<u8>>,
    /// What a `code-signing` session may have timestamped.
    #[serde(default)]
    pub signing: SigningRules,
    /// The break-glass rules, when the session was requested as break-glass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub break_glass: Option<BreakGlassRules>,
}

fn yes() -> bool {
    true
}

/// How many signatures a `code-signing` session may have timestamped by
/// lockstep's TSA, and whether the session closes after the last one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SigningRules {
    /// Timestamped signatures allowed (default 1: one-shot).
    pub signatures: u32,
    /// Close the session (`completed`) once the last one is stamped.
    #[serde(default)]
    pub close_after: bool,
}

impl Default for SigningRules {
    fn default() -> Self {
        Self {
            signatures: 1,
            close_after: false,
        }
    }
}

/// The identity lockstep acts as when a policy closes or revokes a session.
pub const POLICY_ACTOR: &str = "lockstep:policy";

/// Why a `requester_token_valid` session is revoked once the token its
/// requester asked with has expired (at a mint, or when time reaches it).
pub const REQUESTER_TOKEN_EXPIRED: &str = "the token the requester asked with has expired";

/// The CI identity an OIDC requester's token carried (GitHub Actions
/// claims), kept with the session so its code-signing certificates can
/// say which workflow, repository and commit asked, in the extensions
/// Sigstore verifiers read.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CiIdentity {
    /// The token's issuer (`iss`).
    pub issuer: String,
    /// The token's string claims that name the build (`repository`,
    /// `job_workflow_ref`, `sha`, `ref`, …), by name.
    pub claims: std::collections::BTreeMap<String, String>,
}

/// What a policy grants an SSH user certificate: principals, extensions
/// and a forced command. Never taken from the request.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SshRules {
    /// The principals (user names sshd matches against
    /// `AuthorizedPrincipalsFile`, or the login name).
    pub principals: Vec<String>,
    /// Extensions granted (`permit-pty`, `permit-port-forwarding`, …).
    #[serde(default)]
    pub extensions: Vec<String>,
    /// The `force-command` critical option, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub force_command: Option<String>,
}

/// Conditions a session must still meet each time it mints.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Conditions {
    /// The minting caller's address must be in one of these networks
    /// (CIDR); empty: any address.
    #[serde(default)]
    pub source_networks: Vec<String>,
    /// The credential the requester asked with (an OIDC token) must not
    /// have expired.
    #[serde(default)]
    pub requester_token_valid: bool,
}

/// The reason code given to relying parties (CRL, OCSP) for the
/// credentials of a session that closed early.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RevocationReason {
    /// No reason given.
    Unspecified,
    /// The credential's key may be compromised.
    KeyCompromise,
    /// The subject's relationship changed.
    AffiliationChanged,
    /// Replaced by another credential.
    Superseded,
    /// The work is done.
    CessationOfOperation,
    /// The privilege was withdrawn.
    PrivilegeWithdrawn,
}

impl RevocationReason {
    /// The RFC 5280 `CRLReason` code.
    pub fn code(self) -> u8 {
        match self {
            Self::Unspecified => 0,
            Self::KeyCompromise => 1,
            Self::AffiliationChanged => 3,
            Self::Superseded => 4,
            Self::CessationOfOperation => 5,
            Self::PrivilegeWithdrawn => 9,
        }
    }

    /// The reason for a `CRLReason` code.
    pub fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            0 => Self::Unspecified,
            1 => Self::KeyCompromise,
            3 => Self::AffiliationChanged,
            4 => Self::Superseded,
            5 => Self::CessationOfOperation,
            9 => Self::PrivilegeWithdrawn,
            _ => return None,
        })
    }
}

/// Where a session is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Waiting for approvals.
    Pending,
    /// Approved: may mint until `closes_at`.
    Open,
    /// Finished, for good.
    Closed,
}

impl State {
    /// The state's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Open => "open",
            Self::Closed => "closed",
        }
    }
}

/// Why a session closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CloseReason {
    /// The requester closed it.
    Completed,
    /// `closes_at` passed.
    Expired,
    /// An approver or operator ended it.
    Revoked,
    /// Denied by an approver.
    Denied,
    /// No quorum before the pending timeout.
    Abandoned,
}

impl CloseReason {
    /// The reason's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Completed => "completed",
            Self::Expired => "expired",
            Self::Revoked => "revoked",
            Self::Denied => "denied",
            Self::Abandoned => "abandoned",
        }
    }
}

impl std::fmt::Display for CloseReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An approval or denial.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vote {
    /// Who voted.
    pub by: String,
    /// When.
    pub at: Timestamp,
    /// The reason given (denials).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// How a session ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Closure {
    /// Why.
    pub reason: CloseReason,
    /// When.
    pub at: Timestamp,
    /// Who closed it (none for expiry and abandonment).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    /// The reason given with a revocation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// The reason code a revocation asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revocation_reason: Option<RevocationReason>,
}

impl Closure {
    /// Whether the credentials of a session that ended like this are
    /// revoked, and why: closing, revoking or denying ends them early;
    /// expiry and abandonment end nothing that is still valid.
    pub fn revocation(&self) -> Option<RevocationReason> {
        match self.reason {
            CloseReason::Completed => Some(RevocationReason::CessationOfOperation),
            CloseReason::Revoked => Some(
                self.revocation_reason
                    .unwrap_or(RevocationReason::PrivilegeWithdrawn),
            ),
            CloseReason::Denied => Some(RevocationReason::PrivilegeWithdrawn),
            CloseReason::Expired | CloseReason::Abandoned => None,
        }
    }
}

/// Who may act on a session beyond its requester and approvers; decided
/// by the policy, outside this module.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Actor {
    /// One of the session's approvers.
    Approver,
    /// An operator of the session's tenant.
    Operator,
}

/// An operation on a session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SessionOp {
    /// Only apply time: expire or abandon if due.
    Refresh,
    /// Approve the request with this hash.
    Approve {
        /// The approver.
        by: String,
        /// The hash the approver saw.
        request_hash: [u8; 32],
    },
    /// Deny the request with this hash.
    Deny {
        /// The approver.
        by: String,
        /// The hash the approver saw.
        request_hash: [u8; 32],
        /// Why.
        reason: Option<String>,
    },
    /// The requester closes the session (`completed`).
    Close {
        /// The caller.
        by: String,
    },
    /// An approver or operator ends the session (`revoked`). Whether `by`
    /// is allowed to is checked by the caller, which says how in `actor`.
    Revoke {
        /// The caller.
        by: String,
        /// In what capacity.
        actor: Actor,
        /// Why.
        note: String,
        /// The reason code for relying parties (default privilegeWithdrawn).
        reason: Option<RevocationReason>,
    },
    /// Take one credential slot before minting (`counted`), or only check
    /// the session may mint (credentials that do not count). Timestamps
    /// count against `signing.signatures`, the rest against `credentials`.
    ReserveMint {
        /// Whether the credential counts against the limit.
        counted: bool,
        /// What it is.
        kind: CredentialKind,
    },
    /// The policy closes the session (`completed`) once its signatures are
    /// used up, when its `signing.close_after` says so; otherwise nothing.
    CloseAfterSigning,
    /// Give back a slot whose minting failed before anything was issued.
    ReleaseMint {
        /// What it was.
        kind: CredentialKind,
    },
    /// A reviewer records a break-glass session's after-review. An
    /// unjustified one still open is revoked by the reviewer.
    Review {
        /// The reviewer.
        by: String,
        /// What they found.
        outcome: Outcome,
        /// Why.
        note: String,
    },
}

/// A credential slot taken by [`SessionOp::ReserveMint`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MintSlot {
    /// The credential's `notAfter`: the session's `closes_at`.
    pub not_after: Timestamp,
}

/// A lockstep session.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// The id; never reused.
    pub id: SessionId,
    /// What was asked; immutable.
    pub request: Request,
    /// SHA-256 of the canonical request.
    #[serde(with = "hex_32")]
    pub request_hash: [u8; 32],
    /// The rules it was created under.
    pub rules: Rules,
    /// When it was requested.
    pub created_at: Timestamp,
    /// When it is abandoned if still pending.
    pub pending_until: Timestamp,
    /// Its state.
    pub state: State,
    /// Approvals so far (each approver once).
    pub approvals: Vec<Vote>,
    /// Denials so far.
    pub denials: Vec<Vote>,
    /// When quorum was reached.
    pub opened_at: Option<Timestamp>,
    /// `opened_at + duration`; fixed when it opens, never extended.
    pub closes_at: Option<Timestamp>,
    /// Credential slots taken.
    pub minted: u32,
    /// Timestamp slots taken (signatures stamped or being stamped).
    #[serde(default)]
    pub signed: u32,
    /// The CI identity of an OIDC requester, if its token had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ci: Option<CiIdentity>,
    /// When the credential the requester asked with expires (an OIDC
    /// token's `exp`), for the `requester_token_valid` condition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requester_credential_expires: Option<Timestamp>,
    /// The verified `email` claim of the token the requester asked with,
    /// lower-cased: how a Shared Signals `email` subject finds the session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requester_email: Option<String>,
    /// How it ended.
    pub closure: Option<Closure>,
    /// Break-glass sessions: when the review is due, and the review.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub break_glass: Option<BreakGlass>,
}

mod hex_32 {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let text = String::deserialize(d)?;
        let bytes = hex::decode(text).map_err(serde::de::Error::custom)?;
        bytes
            .try_into()
            .map_err(|_| serde::de::Error::custom("expected 32 bytes"))
    }
}

impl Session {
    /// A new pending session for `request` under `rules`, with the events
    /// of its creation. Refuses a malformed request or a duration beyond
    /// the rules' maximum. A break-glass session whose rules need no
    /// approval (quorum 0) is open at once.
    pub fn new(
        id: SessionId,
        request: Request,
        rules: Rules,
        now: Timestamp,
    ) -> Result<(Self, Vec<Event>), SessionError> {
        request.validate()?;
        if request.break_glass != rules.break_glass.is_some() {
            return Err(SessionError::InvalidRequest(
                "a break-glass request needs the policy's break-glass rules, and only it".into(),
            ));
        }
        if request.duration_secs > rules.max_duration_secs {
            return Err(SessionError::InvalidDuration(format!(
                "duration {}s is over this resource's maximum of {}s",
                request.duration_secs, rules.max_duration_secs
            )));
        }
        let quorum_ok = rules.quorum > 0 || rules.break_glass.is_some();
        if !quorum_ok || rules.credentials == 0 || rules.denials_to_close == 0 {
            return Err(SessionError::InvalidRequest(
                "the policy's quorum, credentials and denials_to_close must be at least 1".into(),
            ));
        }
        let request_hash = request.hash(&id);
        let event = Event::Requested {
            requester: request.requester.clone(),
            resource: request.resource.clone(),
            request_hash: format_hash(&request_hash),
            duration_secs: request.duration_secs,
            profile: request.profile.as_str().to_owned(),
            break_glass: request.break_glass,
        };
        let break_glass = rules.break_glass.as_ref().map(|_| BreakGlass::default());
        let mut session = Self {
            id,
            pending_until: now.plus_secs(i64::from(rules.pending_timeout_secs)),
            request,
            request_hash,
            rules,
            created_at: now,
            state: State::Pending,
            approvals: Vec::new(),
            denials: Vec::new(),
            opened_at: None,
            closes_at: None,
            minted: 0,
            signed: 0,
            ci: None,
            requester_credential_expires: None,
            requester_email: None,
            closure: None,
            break_glass,
        };
        let mut events = vec![event];
        if session.rules.quorum == 0 {
            events.push(session.open(now));
        }
        Ok((session, events))
    }

    /// Whether `identity` may review this break-glass session (the
    /// requester never may).
    pub fn is_reviewer(&self, identity: &str) -> bool {
        identity != self.request.requester
            && self
                .rules
                .break_glass
                .as_ref()
                .is_some_and(|b| identity::matches_any(&b.reviewers, identity))
    }

    /// Where a break-glass session's review stands (none for other
    /// sessions).
    pub fn review_state(&self) -> Option<ReviewState> {
        let pending = self.state == State::Pending;
        self.break_glass.as_ref().map(|b| b.state(pending))
    }

    /// Whether `identity` is in the approver set.
    pub fn is_approver(&self, identity: &str) -> bool {
        identity::matches_any(&self.rules.approvers, identity)
    }

    /// Applies time: a pending session past `pending_until` is abandoned,
    /// an open session past `closes_at` expired (closed at exactly that
    /// instant), and a break-glass review not recorded by its `review_by`
    /// becomes overdue.
    pub fn refresh(&mut self, now: Timestamp) -> Vec<Event> {
        let mut events: Vec<Event> = self.condition_failure(now).into_iter().collect();
        events.append(&mut self.refresh_state(now));
        if let Some(b) = &mut self.break_glass
            && b.due(now)
        {
            b.overdue = true;
            events.push(Event::ReviewOverdue {
                review_by: b.review_by.unwrap_or(now),
            });
        }
        events
    }

    /// When a condition the policy re-checks fails by time alone while the
    /// session is live: the requester's token expiring, under
    /// `requester_token_valid`.
    pub fn recheck_at(&self) -> Option<Timestamp> {
        let live = self.state != State::Closed;
        let checked = live && self.rules.conditions.requester_token_valid;
        checked
            .then_some(self.requester_credential_expires)
            .flatten()
    }

    /// Revokes the session at [`Session::recheck_at`] if `now` reached it
    /// before the session would have ended anyway.
    fn condition_failure(&mut self, now: Timestamp) -> Option<Event> {
        let at = self.recheck_at().filter(|at| now >= *at)?;
        let ends = match self.state {
            State::Pending => self.pending_until,
            State::Open => self.closes_at?,
            State::Closed => return None,
        };
        if at >= ends {
            return None;
        }
        let note = format!("condition failed: {REQUESTER_TOKEN_EXPIRED}");
        let event = self.close(
            CloseReason::Revoked,
            at,
            Some(POLICY_ACTOR.to_owned()),
            Some(note),
        );
        if let Some(c) = &mut self.closure {
            c.revocation_reason = Some(RevocationReason::PrivilegeWithdrawn);
        }
        Some(event)
    }

    fn refresh_state(&mut self, now: Timestamp) -> Vec<Event> {
        match self.state {
            State::Pending if now >= self.pending_until => {
                let at = self.pending_until;
                vec![self.close(CloseReason::Abandoned, at, None, None)]
            }
            State::Open => match self.closes_at {
                Some(closes_at) if now >= closes_at => {
                    vec![self.close(CloseReason::Expired, closes_at, None, None)]
                }
                _ => Vec::new(),
            },
            _ => Vec::new(),
        }
    }

    /// Whether time has changed this session at `now` (it is due to be
    /// abandoned or expired), so a reader must save it before use.
    pub fn due(&self, now: Timestamp) -> bool {
        let review_due = self.break_glass.as_ref().is_some_and(|b| b.due(now));
        let recheck_due = self.recheck_at().is_some_and(|at| now >= at);
        review_due
            || recheck_due
            || match self.state {
                State::Pending => now >= self.pending_until,
                State::Open => self.closes_at.is_some_and(|c| now >= c),
                State::Closed => false,
            }
    }

    /// Applies time, then `op`. Returns the events (time's and the op's)
    /// and whether the op was accepted; a refused op changes nothing but
    /// what time changed.
    pub fn apply(
        &mut self,
        op: &SessionOp,
        now: Timestamp,
    ) -> (Vec<Event>, Result<Option<MintSlot>, SessionError>) {
        let mut events = self.refresh(now);
        let result = match op {
            SessionOp::Refresh => Ok(None),
            SessionOp::Approve { by, request_hash } => {
                self.approve(by, request_hash, now).map(|mut e| {
                    events.append(&mut e);
                    None
                })
            }
            SessionOp::Deny {
                by,
                request_hash,
                reason,
            } => self.deny(by, request_hash, reason, now).map(|mut e| {
                events.append(&mut e);
                None
            }),
            SessionOp::Close { by } => self.close_by_requester(by, now).map(|e| {
                events.push(e);
                None
            }),
            SessionOp::Revoke {
                by, note, reason, ..
            } => self.revoke(by, note, *reason, now).map(|e| {
                events.push(e);
                None
            }),
            SessionOp::ReserveMint { counted, kind } => {
                self.reserve_mint(*counted, *kind).map(Some)
            }
            SessionOp::CloseAfterSigning => {
                let done = self.rules.signing.close_after && self.signatures_used_up();
                if done && self.state != State::Closed {
                    events.push(self.close(
                        CloseReason::Completed,
                        now,
                        Some(POLICY_ACTOR.to_owned()),
                        Some("the policy closes the session after its last signature".to_owned()),
                    ));
                }
                Ok(None)
            }
            SessionOp::ReleaseMint { kind } => {
                let taken = self.slots(*kind).0;
                *taken = taken.saturating_sub(1);
                Ok(None)
            }
            SessionOp::Review { by, outcome, note } => {
                self.review(by, *outcome, note, now).map(|mut e| {
                    events.append(&mut e);
                    None
                })
            }
        };
        (events, result)
    }

    fn closed_error(&self) -> SessionError {
        match &self.closure {
            Some(c) => SessionError::Closed(c.reason),
            None => SessionError::NotPending(self.state.as_str().into()),
        }
    }

    fn check_vote(&self, by: &str, request_hash: &[u8; 32]) -> Result<(), SessionError> {
        if self.state == State::Closed {
            return Err(self.closed_error());
        }
        if by == self.request.requester {
            return Err(SessionError::SelfApproval);
        }
        if !self.is_approver(by) {
            return Err(SessionError::NotAnApprover);
        }
        if request_hash != &self.request_hash {
            return Err(SessionError::HashMismatch);
        }
        Ok(())
    }

    fn approve(
        &mut self,
        by: &str,
        request_hash: &[u8; 32],
        now: Timestamp,
    ) -> Result<Vec<Event>, SessionError> {
        self.check_vote(by, request_hash)?;
        if self.state != State::Pending {
            return Err(SessionError::NotPending(self.state.as_str().into()));
        }
        if self.approvals.iter().any(|v| v.by == by) {
            return Err(SessionError::AlreadyVoted("approved"));
        }
        if self.denials.iter().any(|v| v.by == by) {
            return Err(SessionError::AlreadyVoted("denied"));
        }
        self.approvals.push(Vote {
            by: by.to_owned(),
            at: now,
            reason: None,
        });
        let mut events = vec![Event::Approved { by: by.to_owned() }];
        if self.approvals.len() as u32 >= self.rules.quorum {
            events.push(self.open(now));
        }
        Ok(events)
    }

    /// Opens the session at `now`: `closes_at` is fixed, and a break-glass
    /// session's review falls due `review_within` later.
    fn open(&mut self, now: Timestamp) -> Event {
        let closes_at = now.plus_secs(i64::from(self.request.duration_secs));
        self.state = State::Open;
        self.opened_at = Some(now);
        self.closes_at = Some(closes_at);
        if let (Some(b), Some(rules)) = (&mut self.break_glass, &self.rules.break_glass) {
            b.review_by = Some(now.plus_secs(i64::from(rules.review_within_secs)));
        }
        Event::Opened {
            closes_at,
            approvers: self.approvals.iter().map(|v| v.by.clone()).collect(),
        }
    }

    /// Records a break-glass session's review; an unjustified one still
    /// open is revoked by the reviewer in the same step.
    fn review(
        &mut self,
        by: &str,
        outcome: Outcome,
        note: &str,
        now: Timestamp,
    ) -> Result<Vec<Event>, SessionError> {
        let state = self.review_state().ok_or(SessionError::NotBreakGlass)?;
        if by == self.request.requester {
            return Err(SessionError::SelfReview);
        }
        if !self.is_reviewer(by) {
            return Err(SessionError::NotAReviewer);
        }
        match state {
            ReviewState::Pending | ReviewState::Unneeded => {
                return Err(SessionError::NothingToReview(state.as_str()));
            }
            ReviewState::Justified | ReviewState::Unjustified => {
                return Err(SessionError::AlreadyReviewed(state.as_str()));
            }
            ReviewState::Awaiting | ReviewState::Overdue => {}
        }
        if let Some(b) = &mut self.break_glass {
            b.review = Some(Review {
                by: by.to_owned(),
                at: now,
                outcome,
                note: note.to_owned(),
            });
        }
        let mut events = vec![Event::Reviewed {
            by: by.to_owned(),
            outcome,
            note: note.to_owned(),
        }];
        if outcome == Outcome::Unjustified && self.state == State::Open {
            let note = format!("break-glass reviewed unjustified: {note}");
            events.push(self.revoke(by, &note, None, now)?);
        }
        Ok(events)
    }

    fn deny(
        &mut self,
        by: &str,
        request_hash: &[u8; 32],
        reason: &Option<String>,
        now: Timestamp,
    ) -> Result<Vec<Event>, SessionError> {
        self.check_vote(by, request_hash)?;
        if self.denials.iter().any(|v| v.by == by) {
            return Err(SessionError::AlreadyVoted("denied"));
        }
        self.denials.push(Vote {
            by: by.to_owned(),
            at: now,
            reason: reason.clone(),
        });
        let mut events = vec![Event::Denied {
            by: by.to_owned(),
            reason: reason.clone(),
        }];
        if self.denials.len() as u32 >= self.rules.denials_to_close {
            events.push(self.close(
                CloseReason::Denied,
                now,
                Some(by.to_owned()),
                reason.clone(),
            ));
        }
        Ok(events)
    }

    fn close_by_requester(&mut self, by: &str, now: Timestamp) -> Result<Event, SessionError> {
        if by != self.request.requester {
            return Err(SessionError::NotRequester("close"));
        }
        if self.state == State::Closed {
            return Err(self.closed_error());
        }
        Ok(self.close(CloseReason::Completed, now, Some(by.to_owned()), None))
    }

    fn revoke(
        &mut self,
        by: &str,
        note: &str,
        reason: Option<RevocationReason>,
        now: Timestamp,
    ) -> Result<Event, SessionError> {
        if self.state == State::Closed {
            return Err(self.closed_error());
        }
        let event = self.close(
            CloseReason::Revoked,
            now,
            Some(by.to_owned()),
            Some(note.to_owned()),
        );
        if let Some(c) = &mut self.closure {
            c.revocation_reason = reason;
        }
        Ok(event)
    }

    fn reserve_mint(
        &mut self,
        counted: bool,
        kind: CredentialKind,
    ) -> Result<MintSlot, SessionError> {
        match self.state {
            State::Open => {}
            State::Closed => return Err(self.closed_error()),
            State::Pending => return Err(SessionError::NotOpen("pending".into())),
        }
        let not_after = self
            .closes_at
            .ok_or_else(|| SessionError::NotOpen("open without closes_at".into()))?;
        if counted {
            let (taken, limit) = self.slots(kind);
            if *taken >= limit {
                return Err(match kind {
                    CredentialKind::Timestamp => SessionError::SignatureLimitReached(limit),
                    _ => SessionError::LimitReached(limit),
                });
            }
            *taken += 1;
        }
        Ok(MintSlot { not_after })
    }

    /// The counter a credential of `kind` takes a slot of, and its limit.
    fn slots(&mut self, kind: CredentialKind) -> (&mut u32, u32) {
        match kind {
            CredentialKind::Timestamp => (&mut self.signed, self.rules.signing.signatures),
            _ => (&mut self.minted, self.rules.credentials),
        }
    }

    /// Whether the session has had as many signatures stamped as it may.
    pub fn signatures_used_up(&self) -> bool {
        self.signed >= self.rules.signing.signatures
    }

    fn close(
        &mut self,
        reason: CloseReason,
        at: Timestamp,
        by: Option<String>,
        note: Option<String>,
    ) -> Event {
        self.state = State::Closed;
        self.closure = Some(Closure {
            reason,
            at,
            by: by.clone(),
            note: note.clone(),
            revocation_reason: None,
        });
        Event::Closed { reason, by, note }
    }

    /// Seconds left before `closes_at` (open) or `pending_until` (pending).
    pub fn seconds_left(&self, now: Timestamp) -> i64 {
        match self.state {
            State::Pending => self.pending_until.secs_since(now).max(0),
            State::Open => self.closes_at.map_or(0, |c| c.secs_since(now).max(0)),
            State::Closed => 0,
        }
    }
}
