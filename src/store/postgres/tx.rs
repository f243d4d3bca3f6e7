//! The ledger's transactional interface over a PostgreSQL transaction.
//!
//! The ledger's executors are synchronous; this runs on a blocking thread
//! and drives the asynchronous client with `Handle::block_on`. Isolation
//! is READ COMMITTED with explicit row locks: a session is loaded
//! `FOR UPDATE`, and credential moves are compare-and-set updates, which
//! PostgreSQL re-checks against the newest row after waiting for a lock.
//!
//! The audit head is the one lock every appending transaction of every
//! replica queues on, so it is held as briefly as possible: entries are
//! kept until the transaction's work is done, then written by
//! [`PgTx::write_entries`] in two statements just before the commit (lock
//! the head `FOR UPDATE` and queue the notification; insert the entries
//! and move the head), their sequence numbers assigned under that lock.

use deadpool_postgres::{GenericClient, Transaction};
use tokio::runtime::Handle;
use tokio_postgres::Row;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;

use super::owner;
use super::{col, corrupt, failed};
use crate::audit::{GENESIS, entry_hash};
use crate::clock::Timestamp;
use crate::sessions::credential::{Held, OwnerStatus, Reserved};
use crate::sessions::{CredentialState, Event, RevocationReason, Session, SessionId};
use crate::store::decode;
use crate::store::ledger::{CredentialEntry, LedgerTx, Signed};
use crate::store::{Reservation, StoreError};

/// The channel commits that appended to the trail notify.
pub(super) const CHANNEL: &str = "lockstep_committed";

/// A write transaction, for the ledger.
pub(super) struct PgTx<'a> {
    handle: &'a Handle,
    tx: &'a Transaction<'a>,
    owner: &'a str,
    /// A statement failed because of another transaction (serialization
    /// failure, deadlock): the whole transaction may be run again.
    pub conflict: bool,
    /// Entries appended, written by [`PgTx::write_entries`].
    pending: Vec<Pending>,
}

/// An entry appended by the transaction, not yet written.
struct Pending {
    at: i64,
    session: Option<String>,
    kind: &'static str,
    body: String,
}

/// Whether an error is one a retry of the transaction may not meet.
pub(super) fn is_conflict(e: &tokio_postgres::Error) -> bool {
    matches!(
        e.code(),
        Some(c) if *c == SqlState::T_R_SERIALIZATION_FAILURE || *c == SqlState::T_R_DEADLOCK_DETECTED
    )
}

impl<'a> PgTx<'a> {
    pub fn new(handle: &'a Handle, tx: &'a Transaction<'a>, owner: &'a str) -> Self {
        Self {
            handle,
            tx,
            owner,
            conflict: false,
            pending: Vec::new(),
        }
    }

    /// Writes the entries appended, chained to the head, which stays
    /// locked until commit; the commit then notifies [`CHANNEL`] (queued
    /// here, delivered only if it commits). Says whether there were any.
    pub fn write_entries(&mut self) -> Result<bool, StoreError> {
        if self.pending.is_empty() {
            return Ok(false);
        }
        // Appenders queue here, and each takes the next number after the
        // one before it committed.
        let head = self.query(
            "SELECT seq, hash, pg_notify($1, '')::text FROM audit_head FOR UPDATE",
            &[&CHANNEL],
        )?;
        let head = head
            .first()
            .ok_or_else(|| corrupt("the audit head is missing"))?;
        let last: i64 = col(head, 0)?;
        let mut prev: [u8; 32] = match col::<Option<Vec<u8>>>(head, 1)? {
            None if last == 0 => GENESIS,
            None => return Err(corrupt(format!("audit entry {last} has no hash"))),
            Some(hash) => hash
                .try_into()
                .map_err(|_| corrupt(format!("audit entry {last} has no valid hash")))?,
        };
        let pending = std::mem::take(&mut self.pending);
        let mut rows = Vec::with_capacity(pending.len());
        for (seq, p) in (last + 1..).zip(&pending) {
            let hash = entry_hash(
                &prev,
                seq as u64,
                p.at,
                p.session.as_deref(),
                p.kind,
                &p.body,
            );
            rows.push((seq, prev.to_vec(), hash.to_vec()));
            prev = hash;
        }
        let (seq, hash) = (last + pending.len() as i64, prev.to_vec());
        let mut params: Vec<&(dyn ToSql + Sync)> = vec![&seq, &hash];
        let mut values = Vec::with_capacity(rows.len());
        for ((seq, prev, hash), p) in rows.iter().zip(&pending) {
            let n = params.len();
            values.push(format!(
                "(${}, ${}, ${}, ${}, ${}, ${}, ${})",
                n + 1,
                n + 2,
                n + 3,
                n + 4,
                n + 5,
                n + 6,
                n + 7
            ));
            params.extend_from_slice(&[seq, &p.at, &p.session, &p.kind, &p.body, prev, hash]);
        }
        let sql = format!(
            "WITH appended AS (INSERT INTO events (seq, at, session_id, kind, body, prev_hash, hash) VALUES {})
             UPDATE audit_head SET seq = $1, hash = $2",
            values.join(", ")
        );
        self.execute(&sql, &params)?;
        Ok(true)
    }

    fn fail(&mut self, e: tokio_postgres::Error) -> StoreError {
        if is_conflict(&e) {
            self.conflict = true;
        }
        failed(&e)
    }

    /// Runs a query, returning its rows.
    fn query(&mut self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<Row>, StoreError> {
        let tx = self.tx;
        let out = self.handle.block_on(async {
            let st = tx.prepare_cached(sql).await?;
            tx.query(&st, params).await
        });
        out.map_err(|e| self.fail(e))
    }

    /// Runs a statement, returning how many rows it changed.
    fn execute(&mut self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<u64, StoreError> {
        let tx = self.tx;
        let out = self.handle.block_on(async {
            let st = tx.prepare_cached(sql).await?;
            tx.execute(&st, params).await
        });
        out.map_err(|e| self.fail(e))
    }

    /// Adds one to a named counter.
    fn bump(&mut self, counter: &str) -> Result<(), StoreError> {
        self.execute(
            "UPDATE counters SET value = value + 1 WHERE name = $1",
            &[&counter],
        )?;
        Ok(())
    }

    /// Whether the process behind `owner` is still alive: a lock on its
    /// key taken here (held until this transaction ends, so it needs no
    /// release) proves it gone.
    fn owner_status(&mut self, owner: Option<&str>) -> OwnerStatus {
        let Some(owner) = owner else {
            return OwnerStatus::Gone;
        };
        if owner == self.owner {
            return OwnerStatus::Alive;
        }
        let Some(key) = owner::key_of(owner) else {
            return OwnerStatus::Unknown;
        };
        let tx = self.tx;
        owner::status_of(self.handle.block_on(async {
            tx.query_one("SELECT pg_try_advisory_xact_lock($1)", &[&key])
                .await
                .and_then(|r| r.try_get::<_, bool>(0))
        }))
    }
}

impl LedgerTx for PgTx<'_> {
    fn lock_session(&mut self, id: &SessionId) -> Result<Session, StoreError> {
        let rows = self.query(
            "SELECT body FROM sessions WHERE id = $1 FOR UPDATE",
            &[&id.as_str()],
        )?;
        decode::session(id, rows.first().map(|r| col(r, 0)).transpose()?)
    }

    fn insert_session(&mut self, session: &Session) -> Result<(), StoreError> {
        let body = serde_json::to_string(session).map_err(corrupt)?;
        let (review, review_by) = decode::review_columns(session);
        self.execute(
            "INSERT INTO sessions (id, state, tenant, requester, resource, created_at, pending_until, closes_at, body, break_glass, review_by, recheck_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
            &[
                &session.id.as_str(),
                &session.state.as_str(),
                &session.request.tenant,
                &session.request.requester,
                &session.request.resource,
                &session.created_at.unix(),
                &session.pending_until.unix(),
                &session.closes_at.map(Timestamp::unix),
                &body,
                &review,
                &review_by,
                &decode::recheck_column(session),
            ],
        )?;
        Ok(())
    }

    fn save_session(&mut self, s: &Session) -> Result<(), StoreError> {
        let body = serde_json::to_string(s).map_err(corrupt)?;
        let (review, review_by) = decode::review_columns(s);
        self.execute(
            "UPDATE sessions SET state = $2, closes_at = $3, body = $4, break_glass = $5, review_by = $6,
             recheck_at = $7 WHERE id = $1",
            &[
                &s.id.as_str(),
                &s.state.as_str(),
                &s.closes_at.map(Timestamp::unix),
                &body,
                &review,
                &review_by,
                &decode::recheck_column(s),
            ],
        )?;
        Ok(())
    }

    fn insert_credential(&mut self, r: &Reservation, now: Timestamp) -> Result<(), StoreError> {
        self.execute(
            "INSERT INTO credentials (serial, session_id, profile, state, not_after, created_at, kind, counted, owner, lease_until, issuer)
             VALUES ($1, $2, $3, 'reserved', $4, $5, $6, $7, $8, $9, $10)",
            &[
                &r.serial,
                &r.session.as_str(),
                &r.profile.as_str(),
                &r.not_after.unix(),
                &now.unix(),
                &r.kind.as_str(),
                &r.counted,
                &r.owner,
                &r.lease_until.unix(),
                &r.issuer,
            ],
        )?;
        Ok(())
    }

    fn move_credential(
        &mut self,
        serial: &str,
        from: CredentialState,
        to: CredentialState,
        signed: Option<Signed<'_>>,
        now: Timestamp,
    ) -> Result<bool, StoreError> {
        let changed = match signed {
            Some(signed) => self.execute(
                "UPDATE credentials SET state = $3, der = $4, key_sha256 = $5, issued_at = $6
                 WHERE serial = $1 AND state = $2",
                &[
                    &serial,
                    &from.as_str(),
                    &to.as_str(),
                    &signed.der,
                    &signed.key_sha256.unwrap_or_default(),
                    &now.unix(),
                ],
            ),
            None => self.execute(
                "UPDATE credentials SET state = $3 WHERE serial = $1 AND state = $2",
                &[&serial, &from.as_str(), &to.as_str()],
            ),
        }?;
        Ok(changed == 1)
    }

    fn discard_reservation(&mut self, serial: &str) -> Result<bool, StoreError> {
        let reserved = self.query(
            "SELECT 1 FROM credentials WHERE serial = $1 AND state = 'reserved' FOR UPDATE",
            &[&serial],
        )?;
        if reserved.is_empty() {
            return Ok(false);
        }
        // A revocation recorded while it was in flight goes too: nothing
        // was issued.
        self.execute("DELETE FROM revocations WHERE serial = $1", &[&serial])?;
        self.execute(
            "DELETE FROM credentials WHERE serial = $1 AND state = 'reserved'",
            &[&serial],
        )?;
        Ok(true)
    }

    fn session_credentials(&mut self, id: &SessionId) -> Result<Vec<CredentialEntry>, StoreError> {
        let rows = self.query(
            "SELECT serial, kind, not_after, issuer FROM credentials WHERE session_id = $1",
            &[&id.as_str()],
        )?;
        rows.iter()
            .map(|r| {
                Ok(CredentialEntry {
                    serial: col(r, 0)?,
                    kind: decode::kind(col(r, 1)?)?,
                    not_after: Timestamp::from_unix(col(r, 2)?),
                    issuer: col(r, 3)?,
                })
            })
            .collect()
    }

    fn revoke(
        &mut self,
        session: &SessionId,
        credential: &CredentialEntry,
        at: Timestamp,
        reason: RevocationReason,
    ) -> Result<(), StoreError> {
        let added = self.execute(
            "INSERT INTO revocations (serial, session_id, revoked_at, reason, not_after, issuer)
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (serial) DO NOTHING",
            &[
                &credential.serial,
                &session.as_str(),
                &at.unix(),
                &i64::from(reason.code()),
                &credential.not_after.unix(),
                &credential.issuer,
            ],
        )?;
        if added > 0 {
            self.bump("revocations")?;
        }
        Ok(())
    }

    fn append(
        &mut self,
        now: Timestamp,
        session: Option<&SessionId>,
        event: &Event,
        break_glass: bool,
    ) -> Result<(), StoreError> {
        let body = crate::audit::entry_body(event, break_glass).map_err(corrupt)?;
        self.pending.push(Pending {
            at: now.unix(),
            session: session.map(|s| s.as_str().to_owned()),
            kind: event.kind(),
            body,
        });
        Ok(())
    }

    fn reservations(&mut self) -> Result<Vec<Reserved>, StoreError> {
        let rows = self.query(
            "SELECT serial, session_id, kind, counted, not_after, owner, lease_until
             FROM credentials WHERE state = 'reserved'",
            &[],
        )?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            let owner: Option<String> = col(r, 5)?;
            let lease_until: Option<i64> = col(r, 6)?;
            out.push(Reserved {
                held: Held {
                    serial: col(r, 0)?,
                    kind: decode::kind(col(r, 2)?)?,
                    counted: col(r, 3)?,
                    not_after: Timestamp::from_unix(col(r, 4)?),
                },
                session: SessionId::parse(col(r, 1)?).map_err(corrupt)?,
                owner_status: self.owner_status(owner.as_deref()),
                owner: owner.unwrap_or_default(),
                lease_until: Timestamp::from_unix(lease_until.unwrap_or(i64::MIN)),
            });
        }
        Ok(out)
    }

    fn remember_signal(
        &mut self,
        issuer: &str,
        jti: &str,
        iat: Timestamp,
        now: Timestamp,
        forget_before: Timestamp,
    ) -> Result<bool, StoreError> {
        self.execute(
            "DELETE FROM signals_received WHERE iat < $1",
            &[&forget_before.unix()],
        )?;
        // The primary key decides between replicas: the second insert of a
        // jti waits for the first transaction, then finds the row.
        let added = self.execute(
            "INSERT INTO signals_received (issuer, jti, iat, received_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT (issuer, jti) DO NOTHING",
            &[&issuer, &jti, &iat.unix(), &now.unix()],
        )?;
        Ok(added == 1)
    }

    fn live_sessions(&mut self) -> Result<Vec<Session>, StoreError> {
        let rows = self.query(
            "SELECT id, body FROM sessions WHERE state IN ('pending', 'open') ORDER BY id",
            &[],
        )?;
        let rows = rows
            .iter()
            .map(|r| Ok((col(r, 0)?, col(r, 1)?)))
            .collect::<Result<Vec<(String, String)>, StoreError>>()?;
        Ok(decode::live_sessions(rows))
    }

    fn is_break_glass(&mut self, id: &SessionId) -> Result<bool, StoreError> {
        let rows = self.query(
            "SELECT 1 FROM sessions WHERE id = $1 AND break_glass IS NOT NULL",
            &[&id.as_str()],
        )?;
        Ok(!rows.is_empty())
    }

    fn has_connection_report(
        &mut self,
        session: &SessionId,
        report: &str,
    ) -> Result<bool, StoreError> {
        let rows = self.query(
            "SELECT 1 FROM events WHERE session_id = $1 AND kind = 'connection'
             AND (body::jsonb) -> 'connection' ->> 'report' = $2 LIMIT 1",
            &[&session.as_str(), &report],
        )?;
        Ok(!rows.is_empty())
    }

    fn due_sessions(&mut self, now: Timestamp) -> Result<Vec<SessionId>, StoreError> {
        let rows = self.query(
            "SELECT id FROM sessions WHERE state = 'pending' AND pending_until <= $1
             UNION
             SELECT id FROM sessions WHERE state = 'open' AND closes_at <= $1
             UNION
             SELECT id FROM sessions WHERE break_glass = 'awaiting' AND review_by <= $1
             UNION
             SELECT id FROM sessions WHERE recheck_at <= $1
             ORDER BY id",
            &[&now.unix()],
        )?;
        rows.iter()
            .map(|r| SessionId::parse(col(r, 0)?).map_err(corrupt))
            .collect()
    }

    fn break_glass_requests(
        &mut self,
        requester: &str,
        since: Timestamp,
    ) -> Result<u32, StoreError> {
        // READ COMMITTED would let two replicas count the same rows: a
        // lock on the requester, held until commit, orders them.
        let key = format!("lockstep:break-glass:{requester}");
        self.query(
            "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
            &[&key],
        )?;
        let rows = self.query(
            "SELECT count(*) FROM sessions
             WHERE requester = $1 AND break_glass IS NOT NULL AND created_at > $2",
            &[&requester, &since.unix()],
        )?;
        let n: i64 = rows.first().map(|r| col(r, 0)).transpose()?.unwrap_or(0);
        Ok(u32::try_from(n).unwrap_or(u32::MAX))
    }
}
