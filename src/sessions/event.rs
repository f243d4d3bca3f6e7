//! What happened to a session: every transition returns the events it
//! caused, and the store appends them in the same transaction as the state
//! change.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::CloseReason;
use crate::clock::Timestamp;

/// One thing that happened.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// A session was requested.
    Requested {
        /// The requester.
        requester: String,
        /// The resource.
        resource: String,
        /// The canonical request hash (`sha256:…`).
        request_hash: String,
        /// Requested duration, seconds.
        duration_secs: u32,
        /// Credential profile.
        profile: String,
    },
    /// An approver approved.
    Approved {
        /// Who.
        by: String,
    },
    /// An approver denied.
    Denied {
        /// Who.
        by: String,
        /// Why, as given.
        reason: Option<String>,
    },
    /// Quorum was reached: the session opened.
    Opened {
        /// The close time, fixed now.
        closes_at: Timestamp,
        /// The approvers whose approvals opened it.
        approvers: Vec<String>,
    },
    /// A credential was minted.
    Minted {
        /// Certificate serial, hex.
        serial: String,
        /// Profile.
        profile: String,
        /// SHA-256 of the subject public key, hex.
        key_sha256: String,
        /// `notAfter`.
        not_after: Timestamp,
        /// Whether it was handed out (false: the session closed while it
        /// was being signed, so it was withheld).
        handed_out: bool,
    },
    /// A credential slot reserved before a crash was given back; the serial
    /// was never handed out.
    Voided {
        /// Certificate serial, hex.
        serial: String,
    },
    /// The session closed.
    Closed {
        /// Why.
        reason: CloseReason,
        /// Who closed it (none for expiry and abandonment).
        by: Option<String>,
        /// The reason given with a revocation.
        note: Option<String>,
    },
    /// The service started.
    ServiceStarted {
        /// lockstep's version.
        version: String,
        /// SHA-256 of the policy file in force, hex.
        policy_sha256: String,
        /// SHA-256 of the issuing CA's public key, hex.
        issuer_key_sha256: String,
    },
    /// The service stopped (gracefully).
    ServiceStopped,
    /// A key was generated on the device by `lockstep init`.
    KeyInitialised {
        /// Its role (`root`, `issuing`, `token`, `audit`).
        role: String,
        /// Its reference (label, id or handle).
        key: String,
        /// SHA-256 of its public key, hex.
        key_sha256: String,
    },
    /// A call was refused.
    Refused {
        /// The caller, if authenticated.
        caller: Option<String>,
        /// What was attempted (`approve`, `certificate`, …).
        action: String,
        /// The error code returned.
        code: String,
    },
    /// Refused calls without a valid credential beyond the rate at which
    /// they are recorded one by one (`[audit] anonymous_refusals_*`),
    /// counted instead. The entry's time ends the period.
    RefusalsCounted {
        /// How many, in all.
        count: u64,
        /// How many per error code.
        codes: BTreeMap<String, u64>,
        /// When the first of them was refused.
        since: Timestamp,
    },
}

impl Event {
    /// A short name for the event kind (`requested`, `approved`, …).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Requested { .. } => "requested",
            Self::Approved { .. } => "approved",
            Self::Denied { .. } => "denied",
            Self::Opened { .. } => "opened",
            Self::Minted { .. } => "minted",
            Self::Voided { .. } => "voided",
            Self::Closed { .. } => "closed",
            Self::Refused { .. } => "refused",
            Self::RefusalsCounted { .. } => "refusals_counted",
            Self::ServiceStarted { .. } => "service_started",
            Self::ServiceStopped => "service_stopped",
            Self::KeyInitialised { .. } => "key_initialised",
        }
    }
}
