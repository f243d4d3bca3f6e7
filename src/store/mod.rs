//! Durable state: sessions, the credentials they minted and the events that
//! happened to them.
//!
//! Every operation is one transaction, committed (and, for the embedded
//! SQLite store, fsync'd) before it returns: what a caller was told is on
//! disk. A session's transitions run inside the transaction that reads it,
//! so concurrent callers can never open a session twice, mint past its
//! limit, or resurrect a closed one.

mod decode;
pub mod ledger;
mod open;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "sqlite")]
mod sqlite;
pub mod webhooks;

use async_trait::async_trait;
use serde::Serialize;

use crate::clock::Timestamp;
use crate::sessions::{
    CredentialFacts, Event, MintSlot, Profile, ReviewState, RevocationReason, Session,
    SessionError, SessionId, SessionOp, State,
};

pub use crate::sessions::CredentialKind;
pub use ledger::{Backend, Durability, Ledger, LedgerTx};
pub use open::open;
#[cfg(feature = "postgres")]
pub use postgres::{Postgres, connect_alone};
#[cfg(feature = "sqlite")]
pub use sqlite::Sqlite;
pub use webhooks::WebhookCursor;

/// The embedded store: the ledger over one SQLite file.
#[cfg(feature = "sqlite")]
pub type SqliteStore = Ledger<Sqlite>;

/// The shared store: the ledger over a PostgreSQL database.
#[cfg(feature = "postgres")]
pub type PostgresStore = Ledger<Postgres>;

/// A store failure: the operation did not happen.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store cannot be read or written now (disk full, read-only, I/O
    /// error, locked).
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The store holds data lockstep cannot read.
    #[error("store corrupt: {0}")]
    Corrupt(String),
    /// No such session.
    #[error("no session {0}")]
    NotFound(SessionId),
}

impl StoreError {
    /// The machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Unavailable(_) => "store_unavailable",
            Self::Corrupt(_) => "store_corrupt",
            Self::NotFound(_) => "session_not_found",
        }
    }
}

/// The result of applying an operation: the session as it now is, and
/// whether the operation itself was accepted. Time's effects (expiry,
/// abandonment) are saved either way.
#[derive(Clone, Debug)]
pub struct Applied {
    /// The session after the operation.
    pub session: Session,
    /// Whether the operation was accepted.
    pub result: Result<Option<MintSlot>, SessionError>,
}

/// A SET whose `jti` its transmitter already sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Replayed;

/// A credential about to be minted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewCredential {
    /// Certificate serial (hex) or token `jti`.
    pub serial: String,
    /// What it is.
    pub kind: CredentialKind,
    /// The session's profile.
    pub profile: Profile,
    /// Whether it counts against the session's credential limit.
    pub counted: bool,
    /// The issuing CA that signs it (its key's SHA-256 fingerprint, hex);
    /// none for tokens. Replicas with issuing keys of their own answer
    /// OCSP and publish CRLs for their own certificates only.
    pub issuer: Option<String>,
}

/// A credential about to be signed: its slot is taken and its serial
/// recorded before the device signs, so nothing is ever issued that the
/// store does not know.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reservation {
    /// The session.
    pub session: SessionId,
    /// Serial (hex) or `jti`.
    pub serial: String,
    /// What it is.
    pub kind: CredentialKind,
    /// Profile.
    pub profile: Profile,
    /// Whether it counts against the limit.
    pub counted: bool,
    /// `notAfter` / `exp` (the session's `closes_at`).
    pub not_after: Timestamp,
    /// The process that took it (see [`Backend::owner`]).
    pub owner: String,
    /// Until when it may finish it; past this the reservation may be
    /// voided and finishing it is refused.
    pub lease_until: Timestamp,
    /// The issuing CA that signs it (see [`NewCredential::issuer`]).
    pub issuer: Option<String>,
}

/// How a reserved credential ended.
#[derive(Clone, Debug)]
pub enum Finish {
    /// Signed: here it is.
    Issued {
        /// DER of the certificate (none for tokens).
        der: Option<Vec<u8>>,
        /// What the trail records of it, by kind.
        facts: CredentialFacts,
    },
    /// Signing failed: give the slot back.
    Failed,
}

/// What became of a gateway's connection report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnectionRecorded {
    /// Appended to the trail.
    New,
    /// A report with this id was recorded before; nothing was added.
    Duplicate,
    /// The serial is none of the session's credentials; nothing was added.
    UnknownSerial,
}

/// What happened to a finished credential.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Finished {
    /// Stored as issued; hand it out.
    Issued,
    /// The session closed while it was being signed: stored as withheld
    /// (never handed out); the caller is told the session is closed.
    Withheld(crate::sessions::CloseReason),
    /// The slot was given back.
    Released,
    /// Its reservation was voided while the device was signing (the lease
    /// ran out): never handed out; the caller may ask again.
    Lapsed,
}

/// A credential as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CredentialRecord {
    /// Serial (hex) or `jti`.
    pub serial: String,
    /// Its session.
    pub session: SessionId,
    /// What it is.
    pub kind: CredentialKind,
    /// Profile.
    pub profile: Profile,
    /// `reserved`, `issued`, `withheld` or `void`.
    pub state: String,
    /// `notAfter`.
    pub not_after: Timestamp,
    /// SHA-256 of the public key, hex.
    pub key_sha256: Option<String>,
    /// When it was issued.
    pub issued_at: Option<Timestamp>,
    /// When and why it was revoked, if it was.
    pub revoked: Option<(Timestamp, RevocationReason)>,
    /// The issuing CA that signed it (see [`NewCredential::issuer`]);
    /// none for tokens and for certificates recorded before issuers were.
    pub issuer: Option<String>,
}

/// One entry of the CRL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RevokedEntry {
    /// Serial, hex.
    pub serial: String,
    /// When.
    pub revoked_at: Timestamp,
    /// Why.
    pub reason: RevocationReason,
}

/// An event as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EventRecord {
    /// Position in the log.
    pub seq: i64,
    /// When.
    pub at: Timestamp,
    /// The session it concerns, if any.
    pub session: Option<SessionId>,
    /// What.
    pub event: Event,
}

/// Which sessions to list.
#[derive(Clone, Debug, Default)]
pub struct SessionFilter {
    /// Only in this state.
    pub state: Option<State>,
    /// At most this many, newest first.
    pub limit: usize,
    /// Only sessions listed after this position (older ones).
    pub before: Option<SessionCursor>,
    /// Only break-glass sessions that opened and are not (yet) reviewed
    /// justified: awaiting review, overdue, or unjustified.
    pub unreviewed: bool,
}

/// A position in the newest-first order of sessions (by creation time,
/// then id): listing goes on with the sessions after it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionCursor {
    /// Creation time of the last session seen.
    pub created_at: Timestamp,
    /// Its id; without one, every session created at `created_at` has been
    /// seen.
    pub id: Option<SessionId>,
}

impl SessionCursor {
    /// The position of `session`.
    pub fn at(session: &Session) -> Self {
        Self {
            created_at: session.created_at,
            id: Some(session.id.clone()),
        }
    }

    /// The text form of the API: `<unix seconds>` or `<unix seconds>.<id>`.
    pub fn parse(text: &str) -> Option<Self> {
        let (secs, id) = match text.split_once('.') {
            Some((secs, id)) => (secs, Some(SessionId::parse(id).ok()?)),
            None => (text, None),
        };
        if secs.is_empty() || !secs.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let created_at = Timestamp::from_unix(secs.parse().ok()?);
        Some(Self { created_at, id })
    }
}

impl std::fmt::Display for SessionCursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.id {
            Some(id) => write!(f, "{}.{id}", self.created_at.unix()),
            None => write!(f, "{}", self.created_at.unix()),
        }
    }
}

/// Where lockstep keeps its state.
#[async_trait]
pub trait Store: Send + Sync {
    /// Stores a new session with the events of its creation (`requested`,
    /// and `opened` for a break-glass session that needs no approval).
    /// Refused (nothing stored) for a break-glass request beyond its
    /// requester's limit per 24 hours.
    async fn create_session(
        &self,
        session: Session,
        events: Vec<Event>,
        now: Timestamp,
    ) -> Result<Result<(), SessionError>, StoreError>;

    /// A session, with time applied (an expired session is saved as closed).
    async fn session(&self, id: &SessionId, now: Timestamp) -> Result<Session, StoreError>;

    /// Applies `op` to the session in one transaction.
    async fn apply(
        &self,
        id: &SessionId,
        op: SessionOp,
        now: Timestamp,
    ) -> Result<Applied, StoreError>;

    /// Takes a credential slot (the session must be open and under its
    /// limit) and records the credential as reserved, in one transaction.
    /// `serial` and `profile` describe the credential about to be signed.
    async fn reserve_credential(
        &self,
        id: &SessionId,
        credential: NewCredential,
        now: Timestamp,
    ) -> Result<(Applied, Option<Reservation>), StoreError>;

    /// Records how a reserved credential ended.
    async fn finish_credential(
        &self,
        reservation: &Reservation,
        finish: Finish,
        now: Timestamp,
    ) -> Result<Finished, StoreError>;

    /// Appends an event that changes no session (a refused call).
    async fn record(
        &self,
        session: Option<&SessionId>,
        event: Event,
        now: Timestamp,
    ) -> Result<(), StoreError>;

    /// Appends `gateway`'s connection report (an [`Event::Connection`]) to
    /// the session's trail unless a report with its id is there already,
    /// and only if its serial is one of the session's credentials.
    async fn record_connection(
        &self,
        session: &SessionId,
        gateway: &str,
        connection: crate::sessions::ConnectionReport,
        now: Timestamp,
    ) -> Result<ConnectionRecorded, StoreError>;

    /// Expires and abandons every session due at `now`; returns how many.
    async fn sweep(&self, now: Timestamp) -> Result<usize, StoreError>;

    /// Acts on a verified Shared Signals SET in one transaction: its
    /// `jti` is remembered (a replay is refused, `Ok(Err(Replayed))`,
    /// changing nothing), every live session it ends is revoked, and a
    /// `signal` entry records it. Returns the sessions ended.
    async fn receive_signal(
        &self,
        signal: crate::signals::Signal,
        now: Timestamp,
    ) -> Result<Result<Vec<SessionId>, Replayed>, StoreError>;

    /// After a crash: credentials left reserved are voided and their slots
    /// given back. Returns how many.
    async fn recover(&self, now: Timestamp) -> Result<usize, StoreError>;

    /// Sessions, newest first.
    async fn sessions(&self, filter: SessionFilter) -> Result<Vec<Session>, StoreError>;

    /// Takes the cursor of webhook `endpoint` for this process, creating
    /// it at `start` when the endpoint is new, and leases it until `now` +
    /// `lease_secs`; none while another process holds a live lease.
    async fn claim_webhook(
        &self,
        endpoint: &str,
        start: u64,
        now: Timestamp,
        lease_secs: i64,
    ) -> Result<Option<WebhookCursor>, StoreError>;

    /// Saves a cursor this process holds and renews its lease; false when
    /// it is no longer this process's (the lease lapsed and was taken).
    async fn save_webhook(
        &self,
        cursor: &WebhookCursor,
        now: Timestamp,
        lease_secs: i64,
    ) -> Result<bool, StoreError>;

    /// Gives back the cursor of `endpoint` if this process holds it.
    async fn release_webhook(&self, endpoint: &str) -> Result<(), StoreError>;

    /// Every webhook cursor, by endpoint name.
    async fn webhook_cursors(&self) -> Result<Vec<WebhookCursor>, StoreError>;

    /// How many sessions are stored in each state (as last saved: a
    /// session past its time counts as open or pending until the sweep
    /// closes it).
    async fn session_counts(&self) -> Result<Vec<(State, u64)>, StoreError>;

    /// How many break-glass sessions are stored in each review state (as
    /// last saved: a review past its deadline counts as awaiting until the
    /// sweep marks it overdue).
    async fn break_glass_counts(&self) -> Result<Vec<(ReviewState, u64)>, StoreError>;

    /// A session's credentials.
    async fn credentials(&self, id: &SessionId) -> Result<Vec<CredentialRecord>, StoreError>;

    /// One credential by serial (or `jti`), with its revocation.
    async fn credential(&self, serial: &str) -> Result<Option<CredentialRecord>, StoreError>;

    /// The DER of a session's issued certificates, by serial.
    async fn certificates(&self, id: &SessionId) -> Result<Vec<(String, Vec<u8>)>, StoreError>;

    /// Revoked certificates of `issuer` (its key's fingerprint, hex) whose
    /// `notAfter` is after `now`: what that issuer's CRL lists. Bounded by
    /// live credentials, not by history. Certificates recorded before
    /// issuers were are listed for every issuer (a serial on the CRL of an
    /// issuer that never signed it revokes nothing).
    async fn live_revocations(
        &self,
        now: Timestamp,
        issuer: &str,
    ) -> Result<Vec<RevokedEntry>, StoreError>;

    /// A number that changes whenever a revocation is recorded.
    async fn revocation_version(&self) -> Result<u64, StoreError>;

    /// The next CRL number (persistently increasing).
    async fn next_crl_number(&self) -> Result<u64, StoreError>;

    /// The last audit entry: its sequence number and hash.
    async fn audit_head(&self) -> Result<Option<(u64, [u8; 32])>, StoreError>;

    /// The last checkpoint.
    async fn last_checkpoint(&self) -> Result<Option<crate::audit::Checkpoint>, StoreError>;

    /// Appends a signed checkpoint, which must follow the last one and
    /// name an entry of the trail with its hash. Returns false, adding
    /// nothing, when another process took that number first.
    async fn add_checkpoint(
        &self,
        checkpoint: crate::audit::Checkpoint,
    ) -> Result<bool, StoreError>;

    /// Records an audit signer certificate or one of its chain (DER;
    /// recording one twice is harmless).
    async fn add_audit_certificate(&self, der: Vec<u8>, now: Timestamp) -> Result<(), StoreError>;

    /// Audit entries after sequence number `after`, oldest first, at most
    /// `limit`, only those of `session` when given.
    async fn audit_entries(
        &self,
        after: u64,
        limit: usize,
        session: Option<&SessionId>,
    ) -> Result<Vec<crate::audit::Entry>, StoreError>;

    /// A session's events, oldest first.
    async fn events(&self, id: &SessionId) -> Result<Vec<EventRecord>, StoreError>;

    /// Checks the store answers.
    async fn check(&self) -> Result<(), StoreError>;

    /// Changes after commits, once they are committed: a wake-up for
    /// readers of the trail, who then read the entries after the last
    /// sequence number they saw. SQLite signals this process's commits
    /// only (readers poll for other processes'); PostgreSQL signals every
    /// replica's commits that appended to the trail (LISTEN/NOTIFY).
    fn committed(&self) -> tokio::sync::watch::Receiver<u64>;

    /// Time taken by each committed write transaction, seconds
    /// (`lockstep_store_commit_duration_seconds`).
    fn commit_latency(&self) -> prometheus::Histogram;
}
