//! The ledger's transactional interface over a SQLite write transaction.
//!
//! Every write runs in a `BEGIN IMMEDIATE` transaction, which holds
//! SQLite's write lock from its first statement: the session rows read
//! here and the audit head are locked against every other writer, in this
//! process or another, until commit.

use rusqlite::{Connection, OptionalExtension, Transaction, params};

use super::owner::Owner;
use super::sql::Cached;
use super::{corrupt, load, unavailable};
use crate::audit::{GENESIS, entry_hash};
use crate::clock::Timestamp;
use crate::sessions::credential::{Held, Reserved};
use crate::sessions::{CredentialState, Event, RevocationReason, Session, SessionId};
use crate::store::decode;
use crate::store::ledger::{CredentialEntry, LedgerTx, Signed};
use crate::store::{Reservation, StoreError};

/// A write transaction, for the ledger.
pub(super) struct SqliteTx<'a> {
    tx: &'a Transaction<'a>,
    owner: &'a Owner,
}

impl<'a> SqliteTx<'a> {
    pub fn new(tx: &'a Transaction<'a>, owner: &'a Owner) -> Self {
        Self { tx, owner }
    }
}

/// Adds one to a named counter and returns its new value.
pub(super) fn bump(tx: &Connection, counter: &str) -> Result<u64, StoreError> {
    let value: i64 = tx
        .one(
            "UPDATE counters SET value = value + 1 WHERE name = ?1 RETURNING value",
            params![counter],
            |r| r.get(0),
        )
        .map_err(unavailable)?;
    Ok(value as u64)
}

impl LedgerTx for SqliteTx<'_> {
    fn lock_session(&mut self, id: &SessionId) -> Result<Session, StoreError> {
        load(self.tx, id)
    }

    fn insert_session(&mut self, session: &Session) -> Result<(), StoreError> {
        let body = serde_json::to_string(session).map_err(corrupt)?;
        let (review, review_by) = decode::review_columns(session);
        self.tx
            .exec(
                "INSERT INTO sessions (id, state, tenant, requester, resource, created_at, pending_until, closes_at, body, break_glass, review_by, recheck_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
                params![
                    session.id.as_str(),
                    session.state.as_str(),
                    session.request.tenant,
                    session.request.requester,
                    session.request.resource,
                    session.created_at.unix(),
                    session.pending_until.unix(),
                    session.closes_at.map(Timestamp::unix),
                    body,
                    review,
                    review_by,
                    decode::recheck_column(session)
                ],
            )
            .map_err(unavailable)?;
        Ok(())
    }

    fn save_session(&mut self, s: &Session) -> Result<(), StoreError> {
        let body = serde_json::to_string(s).map_err(corrupt)?;
        let (review, review_by) = decode::review_columns(s);
        self.tx
            .exec(
                "UPDATE sessions SET state = ?2, closes_at = ?3, body = ?4, break_glass = ?5, review_by = ?6,
                 recheck_at = ?7 WHERE id = ?1",
                params![
                    s.id.as_str(),
                    s.state.as_str(),
                    s.closes_at.map(Timestamp::unix),
                    body,
                    review,
                    review_by,
                    decode::recheck_column(s)
                ],
            )
            .map_err(unavailable)?;
        Ok(())
    }

    fn insert_credential(&mut self, r: &Reservation, now: Timestamp) -> Result<(), StoreError> {
        self.tx
            .exec(
                "INSERT INTO credentials (serial, session_id, profile, state, not_after, created_at, kind, counted, owner, lease_until, issuer)
                 VALUES (?1, ?2, ?3, 'reserved', ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                params![
                    r.serial,
                    r.session.as_str(),
                    r.profile.as_str(),
                    r.not_after.unix(),
                    now.unix(),
                    r.kind.as_str(),
                    r.counted,
                    r.owner,
                    r.lease_until.unix(),
                    r.issuer
                ],
            )
            .map_err(unavailable)?;
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
            Some(signed) => self.tx.exec(
                "UPDATE credentials SET state = ?3, der = ?4, key_sha256 = ?5, issued_at = ?6
                 WHERE serial = ?1 AND state = ?2",
                params![
                    serial,
                    from.as_str(),
                    to.as_str(),
                    signed.der,
                    signed.key_sha256.unwrap_or_default(),
                    now.unix()
                ],
            ),
            None => self.tx.exec(
                "UPDATE credentials SET state = ?3 WHERE serial = ?1 AND state = ?2",
                params![serial, from.as_str(), to.as_str()],
            ),
        }
        .map_err(unavailable)?;
        Ok(changed == 1)
    }

    fn discard_reservation(&mut self, serial: &str) -> Result<bool, StoreError> {
        let reserved: bool = self
            .tx
            .one(
                "SELECT EXISTS (SELECT 1 FROM credentials WHERE serial = ?1 AND state = 'reserved')",
                params![serial],
                |r| r.get(0),
            )
            .map_err(unavailable)?;
        if !reserved {
            return Ok(false);
        }
        // A revocation recorded while it was in flight goes too: nothing
        // was issued.
        self.tx
            .exec("DELETE FROM revocations WHERE serial = ?1", params![serial])
            .map_err(unavailable)?;
        self.tx
            .exec(
                "DELETE FROM credentials WHERE serial = ?1 AND state = 'reserved'",
                params![serial],
            )
            .map_err(unavailable)?;
        Ok(true)
    }

    fn session_credentials(&mut self, id: &SessionId) -> Result<Vec<CredentialEntry>, StoreError> {
        let rows: Vec<(String, String, i64, Option<String>)> = self
            .tx
            .all(
                "SELECT serial, kind, not_after, issuer FROM credentials WHERE session_id = ?1",
                params![id.as_str()],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .map_err(unavailable)?;
        rows.into_iter()
            .map(|(serial, kind, not_after, issuer)| {
                Ok(CredentialEntry {
                    serial,
                    kind: decode::kind(&kind)?,
                    not_after: Timestamp::from_unix(not_after),
                    issuer,
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
        let added = self
            .tx
            .exec(
                "INSERT OR IGNORE INTO revocations (serial, session_id, revoked_at, reason, not_after, issuer)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    credential.serial,
                    session.as_str(),
                    at.unix(),
                    reason.code(),
                    credential.not_after.unix(),
                    credential.issuer
                ],
            )
            .map_err(unavailable)?;
        if added > 0 {
            bump(self.tx, "revocations")?;
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
        let tx = self.tx;
        let body = crate::audit::entry_body(event, break_glass).map_err(corrupt)?;
        // The head, read under the write lock this transaction holds.
        let head: Option<(i64, Vec<u8>)> = tx
            .prepare_cached("SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1")
            .map_err(unavailable)?
            .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()
            .map_err(unavailable)?;
        let (seq, prev) = match head {
            None => (1, GENESIS),
            Some((seq, hash)) => (
                seq + 1,
                hash.try_into()
                    .map_err(|_| corrupt(format!("audit entry {seq} has no valid hash")))?,
            ),
        };
        let session = session.map(SessionId::as_str);
        let hash = entry_hash(&prev, seq as u64, now.unix(), session, event.kind(), &body);
        tx.prepare_cached(
            "INSERT INTO events (seq, at, session_id, kind, body, prev_hash, hash)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )
        .map_err(unavailable)?
        .execute(params![
            seq,
            now.unix(),
            session,
            event.kind(),
            body,
            prev.to_vec(),
            hash.to_vec()
        ])
        .map_err(unavailable)?;
        Ok(())
    }

    fn reservations(&mut self) -> Result<Vec<Reserved>, StoreError> {
        type Row = (
            String,
            String,
            String,
            bool,
            i64,
            Option<String>,
            Option<i64>,
        );
        let rows: Vec<Row> = self
            .tx
            .all(
                "SELECT serial, session_id, kind, counted, not_after, owner, lease_until
                 FROM credentials WHERE state = 'reserved'",
                [],
                |r| {
                    Ok((
                        r.get(0)?,
                        r.get(1)?,
                        r.get(2)?,
                        r.get(3)?,
                        r.get(4)?,
                        r.get(5)?,
                        r.get(6)?,
                    ))
                },
            )
            .map_err(unavailable)?;
        rows.into_iter()
            .map(
                |(serial, session, kind, counted, not_after, owner, lease_until)| {
                    Ok(Reserved {
                        held: Held {
                            serial,
                            kind: decode::kind(&kind)?,
                            counted,
                            not_after: Timestamp::from_unix(not_after),
                        },
                        session: SessionId::parse(&session).map_err(corrupt)?,
                        owner_status: self.owner.status(owner.as_deref()),
                        owner: owner.unwrap_or_default(),
                        lease_until: Timestamp::from_unix(lease_until.unwrap_or(i64::MIN)),
                    })
                },
            )
            .collect()
    }

    fn remember_signal(
        &mut self,
        issuer: &str,
        jti: &str,
        iat: Timestamp,
        now: Timestamp,
        forget_before: Timestamp,
    ) -> Result<bool, StoreError> {
        self.tx
            .exec(
                "DELETE FROM signals_received WHERE iat < ?1",
                params![forget_before.unix()],
            )
            .map_err(unavailable)?;
        let added = self
            .tx
            .exec(
                "INSERT INTO signals_received (issuer, jti, iat, received_at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (issuer, jti) DO NOTHING",
                params![issuer, jti, iat.unix(), now.unix()],
            )
            .map_err(unavailable)?;
        Ok(added == 1)
    }

    fn live_sessions(&mut self) -> Result<Vec<Session>, StoreError> {
        let rows: Vec<(String, String)> = self
            .tx
            .all(
                "SELECT id, body FROM sessions WHERE state IN ('pending', 'open') ORDER BY id",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .map_err(unavailable)?;
        Ok(decode::live_sessions(rows))
    }

    fn is_break_glass(&mut self, id: &SessionId) -> Result<bool, StoreError> {
        let hits: Vec<i64> = self
            .tx
            .all(
                "SELECT 1 FROM sessions WHERE id = ?1 AND break_glass IS NOT NULL",
                params![id.as_str()],
                |r| r.get(0),
            )
            .map_err(unavailable)?;
        Ok(!hits.is_empty())
    }

    fn has_connection_report(
        &mut self,
        session: &SessionId,
        report: &str,
    ) -> Result<bool, StoreError> {
        let hits: Vec<i64> = self
            .tx
            .all(
                "SELECT 1 FROM events WHERE session_id = ?1 AND kind = 'connection'
                 AND json_extract(body, '$.connection.report') = ?2 LIMIT 1",
                params![session.as_str(), report],
                |r| r.get(0),
            )
            .map_err(unavailable)?;
        Ok(!hits.is_empty())
    }

    fn due_sessions(&mut self, now: Timestamp) -> Result<Vec<SessionId>, StoreError> {
        let ids: Vec<String> = self
            .tx
            .all(
                "SELECT id FROM sessions WHERE state = 'pending' AND pending_until <= ?1
                 UNION
                 SELECT id FROM sessions WHERE state = 'open' AND closes_at <= ?1
                 UNION
                 SELECT id FROM sessions WHERE break_glass = 'awaiting' AND review_by <= ?1
                 UNION
                 SELECT id FROM sessions WHERE recheck_at <= ?1",
                params![now.unix()],
                |r| r.get(0),
            )
            .map_err(unavailable)?;
        ids.iter()
            .map(|id| SessionId::parse(id).map_err(corrupt))
            .collect()
    }

    fn break_glass_requests(
        &mut self,
        requester: &str,
        since: Timestamp,
    ) -> Result<u32, StoreError> {
        // The write lock this transaction holds serialises the count.
        let n: i64 = self
            .tx
            .one(
                "SELECT count(*) FROM sessions
                 WHERE requester = ?1 AND break_glass IS NOT NULL AND created_at > ?2",
                params![requester, since.unix()],
                |r| r.get(0),
            )
            .map_err(unavailable)?;
        Ok(u32::try_from(n).unwrap_or(u32::MAX))
    }
}
