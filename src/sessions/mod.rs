//! Lockstep sessions: a time-boxed approval container for one request.
//!
//! This module is pure: no I/O and no clock reads. Every transition takes
//! the current time and returns the events it caused; the store persists
//! the session and its events together.
//!
//! ```text
//!            approve (quorum reached)                close / revoke / closes_at passes
//! pending ───────────────────────────────▶ open ─────────────────────────────────────▶ closed
//!    │  deny, or pending timeout                                                        ▲
//!    └──────────────────────────────────────────────────────────────────────────────────┘
//! ```

pub mod break_glass;
pub mod connection;
pub mod credential;
mod event;
mod id;
mod profile;
mod request;
mod session;

pub use break_glass::{BreakGlass, BreakGlassRules, Outcome, Review, ReviewState};
pub use connection::{ConnectionEnd, ConnectionReport, RefusedRequest};
pub use credential::{CredentialFacts, CredentialKind, CredentialState};
pub use event::Event;
pub use id::SessionId;
pub use profile::Profile;
pub use request::{
    MAX_DIGEST_LEN, MAX_RESOURCE_LEN, MAX_TASK_LEN, Request, format_hash, is_bidi_control,
    parse_hash, validate_fields, validate_resource,
};
pub use session::{
    Actor, CiIdentity, CloseReason, Closure, Conditions, MintSlot, POLICY_ACTOR,
    REQUESTER_TOKEN_EXPIRED, RevocationReason, Rules, Session, SessionOp, SigningRules, SshRules,
    State, Vote,
};

/// Why a session operation was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    /// A request field is malformed.
    #[error("{0}")]
    InvalidRequest(String),
    /// The duration is zero or beyond the policy's maximum.
    #[error("{0}")]
    InvalidDuration(String),
    /// The operation needs a pending session.
    #[error("session is {0}, not pending: approvals and denials are only taken while pending")]
    NotPending(String),
    /// The operation needs an open session.
    #[error("session is {0}, not open: credentials are only minted while open")]
    NotOpen(String),
    /// The session is closed.
    #[error("session is closed ({0}); request a new session")]
    Closed(CloseReason),
    /// The approval names another request.
    #[error(
        "the request hash does not match this session's request; fetch the session again and approve what it shows"
    )]
    HashMismatch,
    /// The requester tried to approve its own session.
    #[error("the requester cannot approve its own session")]
    SelfApproval,
    /// The caller is not in the session's approver set.
    #[error("you are not in this session's approver set")]
    NotAnApprover,
    /// The approver already voted.
    #[error("you have already {0} this session")]
    AlreadyVoted(&'static str),
    /// Only the requester may do this.
    #[error("only the requester may {0} this session")]
    NotRequester(&'static str),
    /// The session minted as many credentials as its policy allows.
    #[error("this session has minted its {0} credential(s); request a new session")]
    LimitReached(u32),
    /// The session had as many signatures timestamped as its policy allows.
    #[error(
        "this session has had its {0} signature(s) timestamped; request a new session to sign again"
    )]
    SignatureLimitReached(u32),
    /// A review of a session that was not requested as break-glass.
    #[error("this session is not a break-glass session: only those are reviewed")]
    NotBreakGlass,
    /// The requester tried to review its own break-glass session.
    #[error("the requester cannot review its own break-glass session; ask one of its reviewers")]
    SelfReview,
    /// The caller is not among the session's reviewers.
    #[error("you are not a reviewer of this break-glass session")]
    NotAReviewer,
    /// The break-glass session never opened, or has not yet.
    #[error("this break-glass session is {0}: nothing was granted to review")]
    NothingToReview(&'static str),
    /// The break-glass session was reviewed already.
    #[error("this break-glass session was reviewed already ({0}); a review is recorded once")]
    AlreadyReviewed(&'static str),
    /// The requester made as many break-glass requests in the last 24
    /// hours as the policy allows.
    #[error(
        "you have made {0} break-glass request(s) in the last 24 hours (on any resource), the most this resource allows; request a normal session, or ask an operator"
    )]
    BreakGlassLimit(u32),
}

impl SessionError {
    /// The machine-readable code of this error.
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidRequest(_) => "invalid_request",
            Self::InvalidDuration(_) => "invalid_duration",
            Self::NotPending(_) => "session_not_pending",
            Self::NotOpen(_) => "session_not_open",
            Self::Closed(_) => "session_closed",
            Self::HashMismatch => "request_hash_mismatch",
            Self::SelfApproval => "self_approval",
            Self::NotAnApprover => "not_an_approver",
            Self::AlreadyVoted(_) => "already_voted",
            Self::NotRequester(_) => "not_requester",
            Self::LimitReached(_) => "credential_limit_reached",
            Self::SignatureLimitReached(_) => "signature_limit_reached",
            Self::NotBreakGlass => "not_break_glass",
            Self::SelfReview => "self_review",
            Self::NotAReviewer => "not_a_reviewer",
            Self::NothingToReview(_) => "nothing_to_review",
            Self::AlreadyReviewed(_) => "already_reviewed",
            Self::BreakGlassLimit(_) => "break_glass_limit_reached",
        }
    }
}

#[cfg(test)]
mod break_glass_tests;
#[cfg(test)]
mod tests;
