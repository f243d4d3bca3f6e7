//! The ledger: the one executor of session transitions, whatever the
//! store.
//!
//! The session core decides (pure, time passed in); the ledger carries
//! out what it decided inside one transaction of a [`Backend`], through
//! the narrow [`LedgerTx`] interface: lock and load a session, save it,
//! insert a credential, move a credential from one state to another
//! (compare-and-set), revoke, and append to the audit trail under its
//! head. A backend implements that interface and its reads, and needs no
//! session rule of its own.
//!
//! Transactions are synchronous: the embedded store runs them on its
//! writer thread; a server-backed store runs them on a blocking thread.

use async_trait::async_trait;

use super::{
    Applied, ConnectionRecorded, CredentialRecord, EventRecord, Finish, Finished, NewCredential,
    Reservation, RevokedEntry, SessionFilter, Store, StoreError, WebhookCursor,
};
use crate::clock::Timestamp;
use crate::sessions::credential::{self, Held, Reserved};
use crate::sessions::{
    ConnectionReport, CredentialKind, CredentialState, Event, ReviewState, RevocationReason,
    Session, SessionError, SessionId, SessionOp, State,
};

/// How long a reservation's owner has to finish it before it may be
/// voided even though the owner looks alive: far longer than any device
/// signature (device calls time out well before).
pub const DEFAULT_LEASE_SECS: i64 = 120;

/// Whether a write must be on disk before its caller hears back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// Durable before the answer.
    Synced,
    /// Committed and visible before the answer; durable with the next
    /// synced commit. For state a crash may lose because recovery undoes
    /// it anyway (a credential slot taken before signing).
    Volatile,
}

/// A credential a session has, as a close needs to know it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CredentialEntry {
    /// Serial (hex) or `jti`.
    pub serial: String,
    /// What it is.
    pub kind: crate::sessions::CredentialKind,
    /// `notAfter` / `exp`.
    pub not_after: Timestamp,
    /// The issuing CA that signed it, if recorded.
    pub issuer: Option<String>,
}

/// What the device produced, kept with an issued or withheld credential.
#[derive(Clone, Copy, Debug)]
pub struct Signed<'a> {
    /// DER of the certificate (none for tokens).
    pub der: Option<&'a [u8]>,
    /// The key fingerprint kept with it.
    pub key_sha256: Option<&'a str>,
}

/// The operations a store backend offers inside one transaction.
pub trait LedgerTx {
    /// Loads a session, locked against other writers until commit.
    fn lock_session(&mut self, id: &SessionId) -> Result<Session, StoreError>;
    /// Inserts a new session.
    fn insert_session(&mut self, session: &Session) -> Result<(), StoreError>;
    /// Saves a session loaded with [`LedgerTx::lock_session`].
    fn save_session(&mut self, session: &Session) -> Result<(), StoreError>;
    /// Inserts a reserved credential.
    fn insert_credential(&mut self, r: &Reservation, now: Timestamp) -> Result<(), StoreError>;
    /// Moves a credential from `from` to `to`, storing what was signed;
    /// says whether it moved (false: it was not in `from`).
    fn move_credential(
        &mut self,
        serial: &str,
        from: CredentialState,
        to: CredentialState,
        signed: Option<Signed<'_>>,
        now: Timestamp,
    ) -> Result<bool, StoreError>;
    /// Removes a credential still reserved (its signing failed), with any
    /// revocation recorded for it meanwhile; says whether it was there.
    fn discard_reservation(&mut self, serial: &str) -> Result<bool, StoreError>;
    /// A session's credentials, whatever their state.
    fn session_credentials(&mut self, id: &SessionId) -> Result<Vec<CredentialEntry>, StoreError>;
    /// Records a revocation (once; recording it again changes nothing).
    fn revoke(
        &mut self,
        session: &SessionId,
        credential: &CredentialEntry,
        at: Timestamp,
        reason: RevocationReason,
    ) -> Result<(), StoreError>;
    /// Appends an entry to the audit trail, chained to the head, which it
    /// locks until commit; marked when it is of a break-glass session
    /// ([`crate::audit::entry_body`]).
    fn append(
        &mut self,
        now: Timestamp,
        session: Option<&SessionId>,
        event: &Event,
        break_glass: bool,
    ) -> Result<(), StoreError>;
    /// How many break-glass sessions `requester` asked for since `since`,
    /// counted under a lock on that requester held until commit (two
    /// replicas never both see room for one more).
    fn break_glass_requests(
        &mut self,
        requester: &str,
        since: Timestamp,
    ) -> Result<u32, StoreError>;
    /// Remembers SET `jti` from `issuer`, issued at `iat`; false if it was
    /// remembered already. Forgets those issued before `forget_before`
    /// (older SETs are refused by their age).
    fn remember_signal(
        &mut self,
        issuer: &str,
        jti: &str,
        iat: Timestamp,
        now: Timestamp,
        forget_before: Timestamp,
    ) -> Result<bool, StoreError>;
    /// Every pending or open session, as stored (not locked).
    fn live_sessions(&mut self) -> Result<Vec<Session>, StoreError>;
    /// Whether the session `id` is a break-glass one, from its row's mark
    /// alone (an unreadable session's refusals are still recorded, and
    /// marked); false for no such session.
    fn is_break_glass(&mut self, id: &SessionId) -> Result<bool, StoreError>;
    /// Whether the session's trail already holds the gateway connection
    /// report with this id.
    fn has_connection_report(
        &mut self,
        session: &SessionId,
        report: &str,
    ) -> Result<bool, StoreError>;
    /// Every reservation, with whether its owner is still there.
    fn reservations(&mut self) -> Result<Vec<Reserved>, StoreError>;
    /// Sessions that time has changed by `now` (pending past their
    /// timeout, open past `closes_at`).
    fn due_sessions(&mut self, now: Timestamp) -> Result<Vec<SessionId>, StoreError>;
}

/// A store backend: transactions for the ledger, and reads.
#[async_trait]
pub trait Backend: Send + Sync + 'static {
    /// Runs `f` in one transaction and returns once it is committed. A
    /// backend may run `f` again in a new transaction when the first lost
    /// to another (a serialization failure): `f` must not consume what it
    /// captured.
    async fn transact<T, F>(&self, durability: Durability, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnMut(&mut dyn LedgerTx) -> Result<T, StoreError> + Send + 'static;
    /// Who this process is, as reservations name it.
    fn owner(&self) -> &str;
    /// The backend's `[store] type` (`sqlite`, `postgres`).
    fn kind(&self) -> &'static str;
    /// See [`Store::session_counts`].
    async fn session_counts(&self) -> Result<Vec<(State, u64)>, StoreError>;
    /// See [`Store::break_glass_counts`].
    async fn break_glass_counts(&self) -> Result<Vec<(ReviewState, u64)>, StoreError>;
    /// See [`Store::claim_webhook`] (for this backend's owner).
    async fn claim_webhook(
        &self,
        endpoint: &str,
        start: u64,
        now: Timestamp,
        lease_secs: i64,
    ) -> Result<Option<WebhookCursor>, StoreError>;
    /// See [`Store::save_webhook`].
    async fn save_webhook(
        &self,
        cursor: &WebhookCursor,
        now: Timestamp,
        lease_secs: i64,
    ) -> Result<bool, StoreError>;
    /// See [`Store::release_webhook`].
    async fn release_webhook(&self, endpoint: &str) -> Result<(), StoreError>;
    /// See [`Store::webhook_cursors`].
    async fn webhook_cursors(&self) -> Result<Vec<WebhookCursor>, StoreError>;
    /// A session as stored (time not applied).
    async fn load_session(&self, id: &SessionId) -> Result<Session, StoreError>;
    /// See [`Store::sessions`].
    async fn sessions(&self, filter: SessionFilter) -> Result<Vec<Session>, StoreError>;
    /// See [`Store::credentials`].
    async fn credentials(&self, id: &SessionId) -> Result<Vec<CredentialRecord>, StoreError>;
    /// See [`Store::credential`].
    async fn credential(&self, serial: &str) -> Result<Option<CredentialRecord>, StoreError>;
    /// See [`Store::certificates`].
    async fn certificates(&self, id: &SessionId) -> Result<Vec<(String, Vec<u8>)>, StoreError>;
    /// See [`Store::live_revocations`].
    async fn live_revocations(
        &self,
        now: Timestamp,
        issuer: &str,
    ) -> Result<Vec<RevokedEntry>, StoreError>;
    /// See [`Store::revocation_version`].
    async fn revocation_version(&self) -> Result<u64, StoreError>;
    /// See [`Store::next_crl_number`].
    async fn next_crl_number(&self) -> Result<u64, StoreError>;
    /// See [`Store::audit_head`].
    async fn audit_head(&self) -> Result<Option<(u64, [u8; 32])>, StoreError>;
    /// See [`Store::last_checkpoint`].
    async fn last_checkpoint(&self) -> Result<Option<crate::audit::Checkpoint>, StoreError>;
    /// See [`Store::add_checkpoint`].
    async fn add_checkpoint(
        &self,
        checkpoint: crate::audit::Checkpoint,
    ) -> Result<bool, StoreError>;
    /// See [`Store::add_audit_certificate`].
    async fn add_audit_certificate(&self, der: Vec<u8>, now: Timestamp) -> Result<(), StoreError>;
    /// See [`Store::audit_entries`].
    async fn audit_entries(
        &self,
        after: u64,
        limit: usize,
        session: Option<&SessionId>,
    ) -> Result<Vec<crate::audit::Entry>, StoreError>;
    /// See [`Store::events`].
    async fn events(&self, id: &SessionId) -> Result<Vec<EventRecord>, StoreError>;
    /// See [`Store::check`].
    async fn check(&self) -> Result<(), StoreError>;
    /// See [`Store::committed`].
    fn committed(&self) -> tokio::sync::watch::Receiver<u64>;
}

/// A store: the ledger's rules over a backend.
pub struct Ledger<B> {
    backend: B,
    lease_secs: i64,
    commit_latency: prometheus::Histogram,
}

impl<B: std::fmt::Debug> std::fmt::Debug for Ledger<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.backend.fmt(f)
    }
}

impl<B: Backend> Ledger<B> {
    /// The ledger over `backend`, with the default reservation lease.
    pub fn new(backend: B) -> Self {
        let commit_latency = crate::metrics::latency_histogram(
            "store_commit_duration_seconds",
            "Time to run and commit one write transaction, retries included.",
            ("store", backend.kind()),
        );
        Self {
            backend,
            lease_secs: DEFAULT_LEASE_SECS,
            commit_latency,
        }
    }

    /// [`Backend::transact`], timed into the commit-latency histogram
    /// when it commits.
    async fn transact<T, F>(&self, durability: Durability, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnMut(&mut dyn LedgerTx) -> Result<T, StoreError> + Send + 'static,
    {
        let started = std::time::Instant::now();
        let result = self.backend.transact(durability, f).await;
        if result.is_ok() {
            self.commit_latency.observe(started.elapsed().as_secs_f64());
        }
        result
    }

    /// Sets how long reservations are leased for, seconds (at least 1).
    pub fn with_lease_secs(mut self, secs: i64) -> Self {
        self.lease_secs = secs.max(1);
        self
    }

    /// The backend.
    pub fn backend(&self) -> &B {
        &self.backend
    }
}

/// Loads the session, applies `op`, saves what changed, revokes what a
/// close ends and appends the events, inside the caller's transaction.
fn apply_in(
    tx: &mut dyn LedgerTx,
    id: &SessionId,
    op: &SessionOp,
    now: Timestamp,
) -> Result<Applied, StoreError> {
    let s = tx.lock_session(id)?;
    apply_to(tx, s, op, now)
}

/// [`apply_in`] on a session already locked and loaded.
fn apply_to(
    tx: &mut dyn LedgerTx,
    mut s: Session,
    op: &SessionOp,
    now: Timestamp,
) -> Result<Applied, StoreError> {
    let before = s.clone();
    let (events, result) = s.apply(op, now);
    if s != before {
        tx.save_session(&s)?;
        if before.state != State::Closed && s.state == State::Closed {
            revoke_at_close(tx, &s)?;
        }
    }
    for e in &events {
        append(tx, now, &s, e)?;
    }
    Ok(Applied { session: s, result })
}

/// Appends an event of `session` to the trail, marked if it is
/// break-glass.
fn append(
    tx: &mut dyn LedgerTx,
    now: Timestamp,
    session: &Session,
    event: &Event,
) -> Result<(), StoreError> {
    let marked = session.break_glass.is_some();
    tx.append(now, Some(&session.id), event, marked)
}

/// Appends an event of the session `id` (if any) to the trail, marked if
/// that session is break-glass; an id of no session is not.
fn append_by_id(
    tx: &mut dyn LedgerTx,
    now: Timestamp,
    id: Option<&SessionId>,
    event: &Event,
) -> Result<(), StoreError> {
    let marked = match id {
        None => false,
        Some(id) => tx.is_break_glass(id)?,
    };
    tx.append(now, id, event, marked)
}

/// How long a SET's `jti` is remembered past its `iat`: the longest
/// `max_age` plus the longest leeway, after which the SET is refused by age.
const SIGNAL_MEMORY_SECS: i64 = crate::config::signals::MAX_SIGNAL_AGE_SECS + 300;

/// See [`Store::receive_signal`].
fn signal_in(
    tx: &mut dyn LedgerTx,
    signal: &crate::signals::Signal,
    now: Timestamp,
) -> Result<Result<Vec<SessionId>, super::Replayed>, StoreError> {
    let forget_before = now.plus_secs(-SIGNAL_MEMORY_SECS);
    if !tx.remember_signal(&signal.issuer, &signal.jti, signal.iat, now, forget_before)? {
        return Ok(Err(super::Replayed));
    }
    let mut ended = Vec::new();
    let op = SessionOp::Revoke {
        by: crate::signals::SIGNAL_ACTOR.to_owned(),
        actor: crate::sessions::Actor::Operator,
        note: signal.note(),
        reason: Some(RevocationReason::PrivilegeWithdrawn),
    };
    for s in tx.live_sessions()? {
        if signal.ends(&s) && apply_in(tx, &s.id, &op, now)?.result.is_ok() {
            ended.push(s.id);
        }
    }
    let event = Event::Signal {
        transmitter: signal.issuer.clone(),
        jti: signal.jti.clone(),
        events: signal.events.iter().map(|e| e.name.clone()).collect(),
        subject: signal.subject.to_string(),
        ended: ended.iter().map(|id| id.as_str().to_owned()).collect(),
    };
    append_by_id(tx, now, None, &event)?;
    Ok(Ok(ended))
}

/// How far back the break-glass rate limit counts requests.
const BREAK_GLASS_WINDOW_SECS: i64 = 86_400;

/// Creates a session, unless it is break-glass and its requester has used
/// up the requests its rules allow in the last 24 hours.
fn create_in(
    tx: &mut dyn LedgerTx,
    session: &Session,
    events: &[Event],
    now: Timestamp,
) -> Result<Result<(), SessionError>, StoreError> {
    if let Some(rules) = &session.rules.break_glass {
        let since = now.plus_secs(-BREAK_GLASS_WINDOW_SECS);
        let made = tx.break_glass_requests(&session.request.requester, since)?;
        if made >= rules.per_day {
            return Ok(Err(SessionError::BreakGlassLimit(rules.per_day)));
        }
    }
    tx.insert_session(session)?;
    for e in events {
        append(tx, now, session, e)?;
    }
    Ok(Ok(()))
}

/// Revokes what the session's close ends, in the transaction that closes
/// it: relying parties see it as soon as the close is acknowledged.
fn revoke_at_close(tx: &mut dyn LedgerTx, s: &Session) -> Result<(), StoreError> {
    let Some(closure) = &s.closure else {
        return Ok(());
    };
    if closure.revocation().is_none() {
        return Ok(());
    }
    for c in tx.session_credentials(&s.id)? {
        if let Some((at, reason)) = credential::revocation_at_close(closure, c.kind, c.not_after) {
            tx.revoke(&s.id, &c, at, reason)?;
        }
    }
    Ok(())
}

fn finish_in(
    tx: &mut dyn LedgerTx,
    r: &Reservation,
    finish: Finish,
    now: Timestamp,
) -> Result<Finished, StoreError> {
    let (der, facts) = match finish {
        Finish::Failed => {
            // Compare-and-set: a reservation voided meanwhile gave its
            // slot back already.
            if tx.discard_reservation(&r.serial)? && r.counted {
                let op = SessionOp::ReleaseMint { kind: r.kind };
                apply_in(tx, &r.session, &op, now)?;
            }
            return Ok(Finished::Released);
        }
        Finish::Issued { der, facts } => (der, facts),
    };
    let held = r.held();
    let profile = r.profile.as_str();
    // Time first: a session that expired or closed while the device was
    // signing must not hand the credential out.
    let applied = apply_in(tx, &r.session, &SessionOp::Refresh, now)?;
    let done = credential::complete(&applied.session, &held, profile, &facts);
    let signed = Signed {
        der: der.as_deref(),
        key_sha256: facts.key_sha256(),
    };
    let moved = tx.move_credential(
        &r.serial,
        CredentialState::Reserved,
        done.state,
        Some(signed),
        now,
    )?;
    if !moved {
        // Voided while signing (its lease ran out): never handed out,
        // but on the record.
        let event = Event::minted(&held, profile, &facts, false);
        append(tx, now, &applied.session, &event)?;
        return Ok(Finished::Lapsed);
    }
    if let Some((at, reason)) = done.revoke {
        let entry = CredentialEntry {
            serial: r.serial.clone(),
            kind: r.kind,
            not_after: r.not_after,
            issuer: r.issuer.clone(),
        };
        tx.revoke(&r.session, &entry, at, reason)?;
    }
    append(tx, now, &applied.session, &done.event)?;
    if r.kind == CredentialKind::Timestamp && done.withheld.is_none() {
        apply_in(tx, &r.session, &SessionOp::CloseAfterSigning, now)?;
    }
    Ok(match done.withheld {
        None => Finished::Issued,
        Some(reason) => Finished::Withheld(reason),
    })
}

/// Takes a slot and records the credential as reserved by `owner` until
/// `lease_until`.
fn reserve_in(
    tx: &mut dyn LedgerTx,
    session: Session,
    credential: NewCredential,
    owner: String,
    lease_until: Timestamp,
    now: Timestamp,
) -> Result<(Applied, Option<Reservation>), StoreError> {
    let op = SessionOp::ReserveMint {
        counted: credential.counted,
        kind: credential.kind,
    };
    let applied = apply_to(tx, session, &op, now)?;
    let Ok(Some(slot)) = &applied.result else {
        return Ok((applied, None));
    };
    let reservation = Reservation {
        session: applied.session.id.clone(),
        serial: credential.serial,
        kind: credential.kind,
        profile: credential.profile,
        counted: credential.counted,
        not_after: slot.not_after,
        owner,
        lease_until,
        issuer: credential.issuer,
    };
    tx.insert_credential(&reservation, now)?;
    Ok((applied, Some(reservation)))
}

/// Voids the reservations that are provably abandoned and gives their
/// slots back; a live owner's reservation within its lease is kept.
fn recover_in(tx: &mut dyn LedgerTx, now: Timestamp) -> Result<usize, StoreError> {
    let mut voided = 0;
    for r in tx.reservations()? {
        if !credential::abandoned(&r, now) {
            continue;
        }
        let serial = &r.held.serial;
        if !tx.move_credential(
            serial,
            CredentialState::Reserved,
            CredentialState::Void,
            None,
            now,
        )? {
            continue;
        }
        if r.held.counted {
            let op = SessionOp::ReleaseMint { kind: r.held.kind };
            apply_in(tx, &r.session, &op, now)?;
        }
        let event = Event::Voided {
            serial: serial.clone(),
            owner: Some(r.owner.clone()),
        };
        append_by_id(tx, now, Some(&r.session), &event)?;
        voided += 1;
    }
    Ok(voided)
}

impl Reservation {
    fn held(&self) -> Held {
        Held {
            serial: self.serial.clone(),
            kind: self.kind,
            counted: self.counted,
            not_after: self.not_after,
        }
    }
}

#[async_trait]
impl<B: Backend> Store for Ledger<B> {
    async fn create_session(
        &self,
        session: Session,
        events: Vec<Event>,
        now: Timestamp,
    ) -> Result<Result<(), SessionError>, StoreError> {
        self.transact(Durability::Synced, move |tx| {
            create_in(tx, &session, &events, now)
        })
        .await
    }

    async fn session(&self, id: &SessionId, now: Timestamp) -> Result<Session, StoreError> {
        let current = self.backend.load_session(id).await?;
        if !current.due(now) {
            return Ok(current);
        }
        Ok(self.apply(id, SessionOp::Refresh, now).await?.session)
    }

    async fn apply(
        &self,
        id: &SessionId,
        op: SessionOp,
        now: Timestamp,
    ) -> Result<Applied, StoreError> {
        let id = id.clone();
        self.transact(Durability::Synced, move |tx| apply_in(tx, &id, &op, now))
            .await
    }

    async fn reserve_credential(
        &self,
        id: &SessionId,
        credential: NewCredential,
        now: Timestamp,
    ) -> Result<(Applied, Option<Reservation>), StoreError> {
        let owner = self.backend.owner().to_owned();
        let lease_until = now.plus_secs(self.lease_secs);
        // A slot taken before signing: visible to every later transaction
        // at once, durable with the next synced commit (the credential's
        // own, at the latest). Lost in a crash, it was never handed out.
        // Such a commit appends nothing to the trail (an entry a crash
        // could lose would give its sequence number to another): a
        // session that time has changed is saved by a synced commit.
        let volatile = {
            let (id, credential, owner) = (id.clone(), credential.clone(), owner.clone());
            self.transact(Durability::Volatile, move |tx| {
                let session = tx.lock_session(&id)?;
                if session.due(now) {
                    return Ok(None);
                }
                reserve_in(
                    tx,
                    session,
                    credential.clone(),
                    owner.clone(),
                    lease_until,
                    now,
                )
                .map(Some)
            })
            .await?
        };
        if let Some(reserved) = volatile {
            return Ok(reserved);
        }
        let id = id.clone();
        self.transact(Durability::Synced, move |tx| {
            let session = tx.lock_session(&id)?;
            reserve_in(
                tx,
                session,
                credential.clone(),
                owner.clone(),
                lease_until,
                now,
            )
        })
        .await
    }

    async fn finish_credential(
        &self,
        reservation: &Reservation,
        finish: Finish,
        now: Timestamp,
    ) -> Result<Finished, StoreError> {
        let r = reservation.clone();
        self.transact(Durability::Synced, move |tx| {
            finish_in(tx, &r, finish.clone(), now)
        })
        .await
    }

    async fn record(
        &self,
        session: Option<&SessionId>,
        event: Event,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        let session = session.cloned();
        self.transact(Durability::Synced, move |tx| {
            append_by_id(tx, now, session.as_ref(), &event)
        })
        .await
    }

    async fn record_connection(
        &self,
        session: &SessionId,
        gateway: &str,
        connection: ConnectionReport,
        now: Timestamp,
    ) -> Result<ConnectionRecorded, StoreError> {
        let (report, serial) = (connection.report.clone(), connection.serial.clone());
        let event = Event::Connection {
            gateway: gateway.to_owned(),
            connection,
        };
        let id = session.clone();
        self.transact(Durability::Synced, move |tx| {
            // The session's lock orders two deliveries of one report.
            let locked = tx.lock_session(&id)?;
            let ours = tx.session_credentials(&id)?;
            if !ours.iter().any(|c| c.serial.eq_ignore_ascii_case(&serial)) {
                return Ok(ConnectionRecorded::UnknownSerial);
            }
            if tx.has_connection_report(&id, &report)? {
                return Ok(ConnectionRecorded::Duplicate);
            }
            append(tx, now, &locked, &event)?;
            Ok(ConnectionRecorded::New)
        })
        .await
    }

    async fn sweep(&self, now: Timestamp) -> Result<usize, StoreError> {
        self.transact(Durability::Synced, move |tx| {
            let due = tx.due_sessions(now)?;
            for id in &due {
                apply_in(tx, id, &SessionOp::Refresh, now)?;
            }
            Ok(due.len())
        })
        .await
    }

    async fn receive_signal(
        &self,
        signal: crate::signals::Signal,
        now: Timestamp,
    ) -> Result<Result<Vec<SessionId>, super::Replayed>, StoreError> {
        self.transact(Durability::Synced, move |tx| signal_in(tx, &signal, now))
            .await
    }

    async fn recover(&self, now: Timestamp) -> Result<usize, StoreError> {
        self.transact(Durability::Synced, move |tx| recover_in(tx, now))
            .await
    }

    async fn sessions(&self, filter: SessionFilter) -> Result<Vec<Session>, StoreError> {
        self.backend.sessions(filter).await
    }

    async fn session_counts(&self) -> Result<Vec<(State, u64)>, StoreError> {
        self.backend.session_counts().await
    }

    async fn break_glass_counts(&self) -> Result<Vec<(ReviewState, u64)>, StoreError> {
        self.backend.break_glass_counts().await
    }

    async fn claim_webhook(
        &self,
        endpoint: &str,
        start: u64,
        now: Timestamp,
        lease_secs: i64,
    ) -> Result<Option<WebhookCursor>, StoreError> {
        self.backend
            .claim_webhook(endpoint, start, now, lease_secs)
            .await
    }

    async fn save_webhook(
        &self,
        cursor: &WebhookCursor,
        now: Timestamp,
        lease_secs: i64,
    ) -> Result<bool, StoreError> {
        self.backend.save_webhook(cursor, now, lease_secs).await
    }

    async fn release_webhook(&self, endpoint: &str) -> Result<(), StoreError> {
        self.backend.release_webhook(endpoint).await
    }

    async fn webhook_cursors(&self) -> Result<Vec<WebhookCursor>, StoreError> {
        self.backend.webhook_cursors().await
    }

    async fn credentials(&self, id: &SessionId) -> Result<Vec<CredentialRecord>, StoreError> {
        self.backend.credentials(id).await
    }

    async fn credential(&self, serial: &str) -> Result<Option<CredentialRecord>, StoreError> {
        self.backend.credential(serial).await
    }

    async fn certificates(&self, id: &SessionId) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.backend.certificates(id).await
    }

    async fn live_revocations(
        &self,
        now: Timestamp,
        issuer: &str,
    ) -> Result<Vec<RevokedEntry>, StoreError> {
        self.backend.live_revocations(now, issuer).await
    }

    async fn revocation_version(&self) -> Result<u64, StoreError> {
        self.backend.revocation_version().await
    }

    async fn next_crl_number(&self) -> Result<u64, StoreError> {
        self.backend.next_crl_number().await
    }

    async fn audit_head(&self) -> Result<Option<(u64, [u8; 32])>, StoreError> {
        self.backend.audit_head().await
    }

    async fn last_checkpoint(&self) -> Result<Option<crate::audit::Checkpoint>, StoreError> {
        self.backend.last_checkpoint().await
    }

    async fn add_checkpoint(
        &self,
        checkpoint: crate::audit::Checkpoint,
    ) -> Result<bool, StoreError> {
        self.backend.add_checkpoint(checkpoint).await
    }

    async fn add_audit_certificate(&self, der: Vec<u8>, now: Timestamp) -> Result<(), StoreError> {
        self.backend.add_audit_certificate(der, now).await
    }

    async fn audit_entries(
        &self,
        after: u64,
        limit: usize,
        session: Option<&SessionId>,
    ) -> Result<Vec<crate::audit::Entry>, StoreError> {
        self.backend.audit_entries(after, limit, session).await
    }

    async fn events(&self, id: &SessionId) -> Result<Vec<EventRecord>, StoreError> {
        self.backend.events(id).await
    }

    async fn check(&self) -> Result<(), StoreError> {
        self.backend.check().await
    }

    fn committed(&self) -> tokio::sync::watch::Receiver<u64> {
        self.backend.committed()
    }

    fn commit_latency(&self) -> prometheus::Histogram {
        self.commit_latency.clone()
    }
}
