//! Break-glass: privilege now, during an incident, without waiting for a
//! quorum, and without it becoming standing privilege.
//!
//! A break-glass session opens at once (or on one approval from a named
//! set), is short, carries the mark in its state, its credentials'
//! evidence and every trail entry, and must be reviewed afterwards: one
//! of its reviewers (never its requester) records whether it was
//! justified before `review_by`. One that is not reviewed in time is
//! flagged `overdue`; one found unjustified stays flagged too (and is
//! revoked if still open).

use serde::{Deserialize, Serialize};

use crate::clock::Timestamp;

/// The break-glass rules a session was requested under, copied from the
/// policy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BreakGlassRules {
    /// Who may review it: the resource's approvers and the break-glass
    /// approvers (identity patterns). The requester never reviews its own.
    pub reviewers: Vec<String>,
    /// How long after opening the review must be recorded, seconds.
    pub review_within_secs: u32,
    /// At most this many break-glass requests per requester in any 24
    /// hours (the request that would exceed it is refused).
    pub per_day: u32,
}

/// What a reviewer found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// The emergency warranted it.
    Justified,
    /// It did not: the session stays flagged.
    Unjustified,
}

impl Outcome {
    /// The outcome's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Justified => "justified",
            Self::Unjustified => "unjustified",
        }
    }

    /// Parses `justified` or `unjustified`.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "justified" => Some(Self::Justified),
            "unjustified" => Some(Self::Unjustified),
            _ => None,
        }
    }
}

/// A recorded after-review.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Review {
    /// The reviewer.
    pub by: String,
    /// When.
    pub at: Timestamp,
    /// What they found.
    pub outcome: Outcome,
    /// Why, in their words.
    pub note: String,
}

/// Where a break-glass session's after-review stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReviewState {
    /// Not open yet (waiting for its one approval): nothing to review.
    Pending,
    /// It never opened (denied or abandoned): nothing was granted.
    Unneeded,
    /// Opened; its review is due by `review_by`.
    Awaiting,
    /// `review_by` passed without a review: flagged.
    Overdue,
    /// Reviewed: justified.
    Justified,
    /// Reviewed: unjustified, flagged.
    Unjustified,
}

impl ReviewState {
    /// Every state, in the order listings and metrics show them.
    pub const ALL: [Self; 6] = [
        Self::Pending,
        Self::Unneeded,
        Self::Awaiting,
        Self::Overdue,
        Self::Justified,
        Self::Unjustified,
    ];

    /// The state's name (also its value in the store's `break_glass`
    /// column).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Unneeded => "unneeded",
            Self::Awaiting => "awaiting",
            Self::Overdue => "overdue",
            Self::Justified => "justified",
            Self::Unjustified => "unjustified",
        }
    }

    /// Parses a state's name.
    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == text)
    }

    /// Whether `lockstep status --unreviewed` lists it: opened, and not
    /// (yet) found justified.
    pub fn unreviewed(self) -> bool {
        matches!(self, Self::Awaiting | Self::Overdue | Self::Unjustified)
    }

    /// The states [`ReviewState::unreviewed`] lists.
    pub const UNREVIEWED: [Self; 3] = [Self::Awaiting, Self::Overdue, Self::Unjustified];
}

/// A break-glass session's own record: when its review is due, and the
/// review (its rules are in the session's [`super::Rules`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BreakGlass {
    /// When the review is due (set when it opens).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub review_by: Option<Timestamp>,
    /// Whether `review_by` passed unreviewed (recorded once, as a
    /// `review_overdue` entry).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub overdue: bool,
    /// The review, once recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub review: Option<Review>,
}

impl BreakGlass {
    /// Where the review stands, given whether the session ever opened
    /// and whether it is still pending.
    pub fn state(&self, pending: bool) -> ReviewState {
        match (&self.review, self.review_by) {
            (Some(r), _) => match r.outcome {
                Outcome::Justified => ReviewState::Justified,
                Outcome::Unjustified => ReviewState::Unjustified,
            },
            (None, Some(_)) if self.overdue => ReviewState::Overdue,
            (None, Some(_)) => ReviewState::Awaiting,
            (None, None) if pending => ReviewState::Pending,
            (None, None) => ReviewState::Unneeded,
        }
    }

    /// Whether the review became overdue by `now` and is not yet marked.
    pub fn due(&self, now: Timestamp) -> bool {
        self.review.is_none() && !self.overdue && self.review_by.is_some_and(|by| now >= by)
    }
}
