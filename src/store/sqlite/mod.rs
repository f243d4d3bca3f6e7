//! The embedded store: one SQLite file, no server.
//!
//! WAL journal with `synchronous = FULL`: every commit is on disk before
//! the call returns. Schema changes are numbered migrations tracked in
//! `PRAGMA user_version`. Calls run on tokio's blocking pool; one
//! connection serialises them, and each runs in a `BEGIN IMMEDIATE`
//! transaction, so two lockstep processes sharing a file stay consistent
//! too.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use rusqlite::{Connection, OpenFlags, OptionalExtension, Transaction, params};

use super::{
    Applied, CredentialKind, CredentialRecord, EventRecord, Finish, Finished, NewCredential,
    Reservation, RevokedEntry, SessionFilter, Store, StoreError,
};
use crate::clock::Timestamp;
use crate::lane::Lane;
use crate::sessions::{Event, Profile, RevocationReason, Session, SessionId, SessionOp, State};

mod schema;
mod sql;
mod writer;

use schema::migrate;
use sql::Cached;
use writer::{Durability, Writer};

use crate::audit::{GENESIS, entry_hash};

/// The SQLite store.
#[derive(Clone)]
pub struct SqliteStore {
    writer: Writer,
    readers: Arc<Mutex<Vec<Connection>>>,
    reads: Lane,
    path: PathBuf,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish()
    }
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn corrupt(e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(e.to_string())
}

impl SqliteStore {
    /// Opens (creating if needed) the store at `path` and migrates it.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| unavailable(format!("cannot create {}: {e}", dir.display())))?;
        }
        // SQLite's own message for a file it cannot write is "unable to
        // open database file"; the operating system says why.
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|e| {
                unavailable(format!(
                    "cannot open {} for writing: {e}; lockstep needs its store on a writable filesystem",
                    path.display()
                ))
            })?;
        let mut conn = Connection::open(path)
            .map_err(|e| unavailable(format!("cannot open {}: {e}", path.display())))?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(unavailable)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(unavailable)?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(unavailable)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(unavailable)?;
        migrate(&mut conn)?;
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        Ok(Self {
            writer: Writer::start(conn)?,
            readers: Arc::new(Mutex::new(Vec::new())),
            reads: Lane::new(MAX_READERS),
            path: path.to_owned(),
        })
    }

    /// A read-only connection from the pool (WAL lets readers run beside
    /// the writer and see every committed transaction).
    fn reader(path: &Path, pool: &Mutex<Vec<Connection>>) -> Result<Connection, StoreError> {
        if let Some(c) = pool.lock().unwrap_or_else(|p| p.into_inner()).pop() {
            return Ok(c);
        }
        let c = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| unavailable(format!("cannot open {}: {e}", path.display())))?;
        c.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(unavailable)?;
        c.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        Ok(c)
    }

    /// Runs the read `f` on a pooled read-only connection, on the blocking
    /// pool.
    async fn run<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let pool = self.readers.clone();
        let path = self.path.clone();
        self.reads
            .run(move || {
                let mut c = Self::reader(&path, &pool)?;
                let out = f(&mut c);
                let mut pool = pool.lock().unwrap_or_else(|p| p.into_inner());
                if pool.len() < MAX_READERS {
                    pool.push(c);
                }
                out
            })
            .await
            .map_err(unavailable)?
    }

    /// Runs `f` in a write transaction (grouped with other writes waiting
    /// at the same moment) and returns once it is committed to disk.
    async fn write<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Transaction<'_>) -> Result<T, StoreError> + Send + 'static,
    {
        self.writer.write(Durability::Synced, f).await
    }

    /// [`SqliteStore::write`] for state a crash may lose (see
    /// [`writer::Durability::Volatile`]).
    async fn write_volatile<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Transaction<'_>) -> Result<T, StoreError> + Send + 'static,
    {
        self.writer.write(Durability::Volatile, f).await
    }
}

/// Read-only connections kept open.
const MAX_READERS: usize = 8;

/// Prepared statements kept per connection (more than the hot paths use).
const STATEMENT_CACHE: usize = 64;

fn load(tx: &Connection, id: &SessionId) -> Result<Session, StoreError> {
    let body: Option<String> = tx
        .one(
            "SELECT body FROM sessions WHERE id = ?1",
            params![id.as_str()],
            |r| r.get(0),
        )
        .optional()
        .map_err(unavailable)?;
    let body = body.ok_or_else(|| StoreError::NotFound(id.clone()))?;
    serde_json::from_str(&body).map_err(|e| corrupt(format!("session {id}: {e}")))
}

fn save(tx: &Connection, s: &Session) -> Result<(), StoreError> {
    let body = serde_json::to_string(s).map_err(corrupt)?;
    tx.exec(
        "UPDATE sessions SET state = ?2, closes_at = ?3, body = ?4 WHERE id = ?1",
        params![
            s.id.as_str(),
            s.state.as_str(),
            s.closes_at.map(Timestamp::unix),
            body
        ],
    )
    .map_err(unavailable)?;
    Ok(())
}

fn append(
    tx: &Connection,
    now: Timestamp,
    session: Option<&SessionId>,
    event: &Event,
) -> Result<(), StoreError> {
    let body = serde_json::to_string(event).map_err(corrupt)?;
    // Chain to the entry before: read the head inside this transaction.
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

/// Loads the session, applies `op`, saves what changed and appends the
/// events, inside the caller's transaction.
fn apply_in(
    tx: &Connection,
    id: &SessionId,
    op: &SessionOp,
    now: Timestamp,
) -> Result<Applied, StoreError> {
    let mut s = load(tx, id)?;
    let before = s.clone();
    let (events, result) = s.apply(op, now);
    if s != before {
        save(tx, &s)?;
        if before.state != State::Closed && s.state == State::Closed {
            revoke_credentials(tx, &s)?;
        }
    }
    for e in &events {
        append(tx, now, Some(id), e)?;
    }
    Ok(Applied { session: s, result })
}

/// When a session closes early (closed, revoked, denied), every
/// certificate it minted or is minting is revoked, in the transaction that
/// closes it: relying parties see the revocation as soon as the close is
/// acknowledged.
fn revoke_credentials(tx: &Connection, s: &Session) -> Result<(), StoreError> {
    let Some(closure) = &s.closure else {
        return Ok(());
    };
    let Some(reason) = closure.revocation() else {
        return Ok(());
    };
    let revoked = tx
        .exec(
            "INSERT OR IGNORE INTO revocations (serial, session_id, revoked_at, reason, not_after)
             SELECT serial, session_id, ?2, ?3, not_after FROM credentials
             WHERE session_id = ?1 AND kind = 'certificate' AND not_after > ?2",
            params![s.id.as_str(), closure.at.unix(), reason.code()],
        )
        .map_err(unavailable)?;
    if revoked > 0 {
        bump(tx, "revocations")?;
    }
    Ok(())
}

fn bump(tx: &Connection, counter: &str) -> Result<u64, StoreError> {
    let value: i64 = tx
        .one(
            "UPDATE counters SET value = value + 1 WHERE name = ?1 RETURNING value",
            params![counter],
            |r| r.get(0),
        )
        .map_err(unavailable)?;
    Ok(value as u64)
}

fn parse_profile(text: &str) -> Result<Profile, StoreError> {
    Profile::parse(text).ok_or_else(|| corrupt(format!("unknown profile `{text}`")))
}

fn parse_kind(text: &str) -> Result<CredentialKind, StoreError> {
    match text {
        "certificate" => Ok(CredentialKind::Certificate),
        "token" => Ok(CredentialKind::Token),
        other => Err(corrupt(format!("unknown credential kind `{other}`"))),
    }
}

type CredentialRow = (
    String,
    String,
    String,
    String,
    i64,
    Option<String>,
    Option<i64>,
    String,
    Option<i64>,
    Option<i64>,
);

const CREDENTIAL_COLUMNS: &str = "c.serial, c.session_id, c.profile, c.state, c.not_after, c.key_sha256, c.issued_at, c.kind, r.revoked_at, r.reason";

fn credential_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<CredentialRow> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
        r.get(6)?,
        r.get(7)?,
        r.get(8)?,
        r.get(9)?,
    ))
}

fn credential_record(row: CredentialRow) -> Result<CredentialRecord, StoreError> {
    let (
        serial,
        session,
        profile,
        state,
        not_after,
        key_sha256,
        issued_at,
        kind,
        revoked_at,
        reason,
    ) = row;
    let revoked = match (revoked_at, reason) {
        (Some(at), Some(code)) => Some((
            Timestamp::from_unix(at),
            u8::try_from(code)
                .ok()
                .and_then(RevocationReason::from_code)
                .ok_or_else(|| corrupt(format!("unknown revocation reason {code}")))?,
        )),
        _ => None,
    };
    Ok(CredentialRecord {
        serial,
        session: SessionId::parse(&session).map_err(corrupt)?,
        kind: parse_kind(&kind)?,
        profile: parse_profile(&profile)?,
        state,
        not_after: Timestamp::from_unix(not_after),
        key_sha256,
        issued_at: issued_at.map(Timestamp::from_unix),
        revoked,
    })
}

#[async_trait]
impl Store for SqliteStore {
    async fn create_session(
        &self,
        session: Session,
        event: Event,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        self.write(move |tx| {
            let body = serde_json::to_string(&session).map_err(corrupt)?;
            tx.exec(
                "INSERT INTO sessions (id, state, tenant, requester, resource, created_at, pending_until, closes_at, body)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                params![
                    session.id.as_str(),
                    session.state.as_str(),
                    session.request.tenant,
                    session.request.requester,
                    session.request.resource,
                    session.created_at.unix(),
                    session.pending_until.unix(),
                    session.closes_at.map(Timestamp::unix),
                    body
                ],
            )
            .map_err(unavailable)?;
            append(tx, now, Some(&session.id), &event)
        })
        .await
    }

    async fn session(&self, id: &SessionId, now: Timestamp) -> Result<Session, StoreError> {
        let id2 = id.clone();
        let current = self.run(move |c| load(c, &id2)).await?;
        let mut probe = current.clone();
        if probe.refresh(now).is_empty() {
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
        self.write(move |tx| apply_in(tx, &id, &op, now)).await
    }

    async fn reserve_credential(
        &self,
        id: &SessionId,
        credential: NewCredential,
        now: Timestamp,
    ) -> Result<(Applied, Option<Reservation>), StoreError> {
        let id = id.clone();
        // A slot taken before signing: visible to every later transaction
        // at once, on disk with the next synced commit (the credential's
        // own, at the latest). Lost in a crash, it was never handed out and
        // recovery would void it anyway.
        self.write_volatile(move |tx| {
            let op = SessionOp::ReserveMint {
                counted: credential.counted,
            };
            let applied = apply_in(tx, &id, &op, now)?;
            let Ok(Some(slot)) = &applied.result else {
                return Ok((applied, None));
            };
            tx.exec(
                "INSERT INTO credentials (serial, session_id, profile, state, not_after, created_at, kind, counted)
                 VALUES (?1, ?2, ?3, 'reserved', ?4, ?5, ?6, ?7)",
                params![
                    credential.serial,
                    id.as_str(),
                    credential.profile.as_str(),
                    slot.not_after.unix(),
                    now.unix(),
                    credential.kind.as_str(),
                    credential.counted
                ],
            )
            .map_err(unavailable)?;
            let reservation = Reservation {
                session: id.clone(),
                serial: credential.serial,
                kind: credential.kind,
                profile: credential.profile,
                counted: credential.counted,
                not_after: slot.not_after,
            };
            Ok((applied, Some(reservation)))
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
        self.write(move |tx| match finish {
            Finish::Failed => {
                // A revocation recorded while it was in flight goes too:
                // nothing was issued.
                tx.exec("DELETE FROM revocations WHERE serial = ?1", params![r.serial])
                    .map_err(unavailable)?;
                tx.exec(
                    "DELETE FROM credentials WHERE serial = ?1 AND state = 'reserved'",
                    params![r.serial],
                )
                .map_err(unavailable)?;
                if r.counted {
                    apply_in(tx, &r.session, &SessionOp::ReleaseMint, now)?;
                }
                Ok(Finished::Released)
            }
            Finish::Issued { der, key_sha256 } => {
                // Time first: a session that expired or closed while the
                // device was signing must not hand the credential out.
                let applied = apply_in(tx, &r.session, &SessionOp::Refresh, now)?;
                let (state, finished) = match (&applied.session.state, &applied.session.closure) {
                    (State::Open, _) => ("issued", Finished::Issued),
                    (_, Some(c)) => ("withheld", Finished::Withheld(c.reason)),
                    (_, None) => ("withheld", Finished::Withheld(crate::sessions::CloseReason::Revoked)),
                };
                let changed = tx
                    .exec(
                        "UPDATE credentials SET state = ?2, der = ?3, key_sha256 = ?4, issued_at = ?5
                         WHERE serial = ?1 AND state = 'reserved'",
                        params![r.serial, state, der, key_sha256, now.unix()],
                    )
                    .map_err(unavailable)?;
                if changed != 1 {
                    return Err(corrupt(format!("credential {} was not reserved", r.serial)));
                }
                if finished != Finished::Issued && r.kind == CredentialKind::Certificate {
                    revoke_credentials(tx, &applied.session)?;
                }
                append(
                    tx,
                    now,
                    Some(&r.session),
                    &Event::Minted {
                        serial: r.serial.clone(),
                        profile: r.profile.as_str().to_owned(),
                        key_sha256,
                        not_after: r.not_after,
                        handed_out: finished == Finished::Issued,
                    },
                )?;
                Ok(finished)
            }
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
        self.write(move |tx| append(tx, now, session.as_ref(), &event))
            .await
    }

    async fn sweep(&self, now: Timestamp) -> Result<usize, StoreError> {
        self.write(move |tx| {
            let due: Vec<String> = {
                let mut stmt = tx
                    .prepare_cached(
                        "SELECT id FROM sessions WHERE state = 'pending' AND pending_until <= ?1
                         UNION ALL
                         SELECT id FROM sessions WHERE state = 'open' AND closes_at <= ?1",
                    )
                    .map_err(unavailable)?;
                stmt.query_map(params![now.unix()], |r| r.get(0))
                    .map_err(unavailable)?
                    .collect::<Result<_, _>>()
                    .map_err(unavailable)?
            };
            for id in &due {
                let id = SessionId::parse(id).map_err(corrupt)?;
                apply_in(tx, &id, &SessionOp::Refresh, now)?;
            }
            Ok(due.len())
        })
        .await
    }

    async fn recover(&self, now: Timestamp) -> Result<usize, StoreError> {
        self.write(move |tx| {
            let stale: Vec<(String, String)> = {
                let mut stmt = tx
                    .prepare("SELECT serial, session_id FROM credentials WHERE state = 'reserved'")
                    .map_err(unavailable)?;
                stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                    .map_err(unavailable)?
                    .collect::<Result<_, _>>()
                    .map_err(unavailable)?
            };
            for (serial, session) in &stale {
                let id = SessionId::parse(session).map_err(corrupt)?;
                tx.exec(
                    "UPDATE credentials SET state = 'void' WHERE serial = ?1",
                    params![serial],
                )
                .map_err(unavailable)?;
                let counted: bool = tx
                    .one(
                        "SELECT counted FROM credentials WHERE serial = ?1",
                        params![serial],
                        |r| r.get(0),
                    )
                    .map_err(unavailable)?;
                if counted {
                    apply_in(tx, &id, &SessionOp::ReleaseMint, now)?;
                }
                append(
                    tx,
                    now,
                    Some(&id),
                    &Event::Voided {
                        serial: serial.clone(),
                    },
                )?;
            }
            Ok(stale.len())
        })
        .await
    }

    async fn sessions(&self, filter: SessionFilter) -> Result<Vec<Session>, StoreError> {
        self.run(move |c| {
            let limit = if filter.limit == 0 { 100 } else { filter.limit } as i64;
            let before = filter.before.as_ref();
            let mut stmt = c
                .prepare_cached(
                    "SELECT body FROM sessions WHERE (?1 IS NULL OR state = ?1)
                       AND (?3 IS NULL OR created_at < ?3
                            OR (created_at = ?3 AND ?4 IS NOT NULL AND id > ?4))
                     ORDER BY created_at DESC, id LIMIT ?2",
                )
                .map_err(unavailable)?;
            let bodies: Vec<String> = stmt
                .query_map(
                    params![
                        filter.state.map(State::as_str),
                        limit,
                        before.map(|b| b.created_at.unix()),
                        before.and_then(|b| b.id.as_ref()).map(SessionId::as_str),
                    ],
                    |r| r.get(0),
                )
                .map_err(unavailable)?
                .collect::<Result<_, _>>()
                .map_err(unavailable)?;
            bodies
                .iter()
                .map(|b| serde_json::from_str(b).map_err(corrupt))
                .collect()
        })
        .await
    }

    async fn credentials(&self, id: &SessionId) -> Result<Vec<CredentialRecord>, StoreError> {
        let id = id.clone();
        self.run(move |c| {
            let sql = format!(
                "SELECT {CREDENTIAL_COLUMNS} FROM credentials c LEFT JOIN revocations r USING (serial)
                 WHERE c.session_id = ?1 ORDER BY c.created_at, c.serial"
            );
            let mut stmt = c.prepare_cached(&sql).map_err(unavailable)?;
            let rows: Vec<CredentialRow> = stmt
                .query_map(params![id.as_str()], credential_row)
                .map_err(unavailable)?
                .collect::<Result<_, _>>()
                .map_err(unavailable)?;
            rows.into_iter().map(credential_record).collect()
        })
        .await
    }

    async fn credential(&self, serial: &str) -> Result<Option<CredentialRecord>, StoreError> {
        let serial = serial.to_owned();
        self.run(move |c| {
            let sql = format!(
                "SELECT {CREDENTIAL_COLUMNS} FROM credentials c LEFT JOIN revocations r USING (serial)
                 WHERE c.serial = ?1"
            );
            let row = c
                .prepare_cached(&sql)
                .map_err(unavailable)?
                .query_row(params![serial], credential_row)
                .optional()
                .map_err(unavailable)?;
            row.map(credential_record).transpose()
        })
        .await
    }

    async fn certificates(&self, id: &SessionId) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let id = id.clone();
        self.run(move |c| {
            let mut stmt = c
                .prepare_cached(
                    "SELECT serial, der FROM credentials
                     WHERE session_id = ?1 AND kind = 'certificate' AND state = 'issued' AND der IS NOT NULL",
                )
                .map_err(unavailable)?;
            let rows: Vec<(String, Vec<u8>)> = stmt
                .query_map(params![id.as_str()], |r| Ok((r.get(0)?, r.get(1)?)))
                .map_err(unavailable)?
                .collect::<Result<_, _>>()
                .map_err(unavailable)?;
            Ok(rows)
        })
        .await
    }

    async fn live_revocations(&self, now: Timestamp) -> Result<Vec<RevokedEntry>, StoreError> {
        self.run(move |c| {
            let mut stmt = c
                .prepare_cached(
                    "SELECT serial, revoked_at, reason FROM revocations WHERE not_after > ?1 ORDER BY serial",
                )
                .map_err(unavailable)?;
            let rows: Vec<(String, i64, i64)> = stmt
                .query_map(params![now.unix()], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .map_err(unavailable)?
                .collect::<Result<_, _>>()
                .map_err(unavailable)?;
            rows.into_iter()
                .map(|(serial, at, code)| {
                    Ok(RevokedEntry {
                        serial,
                        revoked_at: Timestamp::from_unix(at),
                        reason: u8::try_from(code)
                            .ok()
                            .and_then(RevocationReason::from_code)
                            .ok_or_else(|| corrupt(format!("unknown revocation reason {code}")))?,
                    })
                })
                .collect()
        })
        .await
    }

    async fn revocation_version(&self) -> Result<u64, StoreError> {
        self.run(|c| {
            c.one(
                "SELECT value FROM counters WHERE name = 'revocations'",
                [],
                |r| r.get::<_, i64>(0),
            )
            .map(|v| v as u64)
            .map_err(unavailable)
        })
        .await
    }

    async fn next_crl_number(&self) -> Result<u64, StoreError> {
        self.write(|tx| bump(tx, "crl_number")).await
    }

    async fn audit_head(&self) -> Result<Option<(u64, [u8; 32])>, StoreError> {
        self.run(|c| {
            let head: Option<(i64, Vec<u8>)> = c
                .one(
                    "SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1",
                    [],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()
                .map_err(unavailable)?;
            head.map(|(seq, hash)| {
                let hash: [u8; 32] = hash
                    .try_into()
                    .map_err(|_| corrupt(format!("audit entry {seq} has no valid hash")))?;
                Ok((seq as u64, hash))
            })
            .transpose()
        })
        .await
    }

    async fn last_checkpoint(&self) -> Result<Option<crate::audit::Checkpoint>, StoreError> {
        self.run(|c| {
            c.one(
                "SELECT number, upto, head, at, signer, signature FROM checkpoints
                 ORDER BY number DESC LIMIT 1",
                [],
                |r| {
                    Ok(crate::audit::Checkpoint {
                        number: r.get::<_, i64>(0)? as u64,
                        upto: r.get::<_, i64>(1)? as u64,
                        head: hex::encode(r.get::<_, Vec<u8>>(2)?),
                        at: r.get(3)?,
                        signer: hex::encode(r.get::<_, Vec<u8>>(4)?),
                        signature: hex::encode(r.get::<_, Vec<u8>>(5)?),
                    })
                },
            )
            .optional()
            .map_err(unavailable)
        })
        .await
    }

    async fn add_checkpoint(&self, cp: crate::audit::Checkpoint) -> Result<(), StoreError> {
        let bytes = |h: &str| hex::decode(h).map_err(|e| corrupt(format!("checkpoint: {e}")));
        let (head, signer, signature) =
            (bytes(&cp.head)?, bytes(&cp.signer)?, bytes(&cp.signature)?);
        self.write(move |tx| {
            let last: Option<i64> = tx
                .one("SELECT MAX(number) FROM checkpoints", [], |r| r.get(0))
                .map_err(unavailable)?;
            if last.unwrap_or(0) as u64 + 1 != cp.number {
                return Err(corrupt(format!(
                    "checkpoint {} does not follow checkpoint {}",
                    cp.number,
                    last.unwrap_or(0)
                )));
            }
            tx.exec(
                "INSERT INTO checkpoints (number, upto, head, at, signer, signature)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    cp.number as i64,
                    cp.upto as i64,
                    head,
                    cp.at,
                    signer,
                    signature
                ],
            )
            .map_err(unavailable)?;
            Ok(())
        })
        .await
    }

    async fn add_audit_certificate(&self, der: Vec<u8>, now: Timestamp) -> Result<(), StoreError> {
        self.write(move |tx| {
            let id = crate::audit::signer_id(&der).to_vec();
            tx.exec(
                "INSERT OR IGNORE INTO audit_certificates (id, der, added_at) VALUES (?1, ?2, ?3)",
                params![id, der, now.unix()],
            )
            .map_err(unavailable)?;
            Ok(())
        })
        .await
    }

    async fn audit_entries(
        &self,
        after: u64,
        limit: usize,
        session: Option<&SessionId>,
    ) -> Result<Vec<crate::audit::Entry>, StoreError> {
        let session = session.map(|s| s.to_string());
        self.run(move |c| {
            let mut stmt = c
                .prepare_cached(
                    "SELECT seq, at, session_id, kind, body, prev_hash, hash FROM events
                     WHERE seq > ?1 AND (?2 IS NULL OR session_id = ?2) ORDER BY seq LIMIT ?3",
                )
                .map_err(unavailable)?;
            let rows = stmt
                .query_map(
                    // A cursor past i64::MAX is past every entry, not before them.
                    params![
                        i64::try_from(after).unwrap_or(i64::MAX),
                        session,
                        limit.min(10_000) as i64
                    ],
                    |r| {
                        Ok(crate::audit::Entry {
                            seq: r.get::<_, i64>(0)? as u64,
                            at: r.get(1)?,
                            session: r.get(2)?,
                            kind: r.get(3)?,
                            body: r.get(4)?,
                            prev_hash: r
                                .get::<_, Option<Vec<u8>>>(5)?
                                .map(hex::encode)
                                .unwrap_or_default(),
                            hash: r
                                .get::<_, Option<Vec<u8>>>(6)?
                                .map(hex::encode)
                                .unwrap_or_default(),
                        })
                    },
                )
                .map_err(unavailable)?;
            rows.collect::<Result<_, _>>().map_err(unavailable)
        })
        .await
    }

    async fn events(&self, id: &SessionId) -> Result<Vec<EventRecord>, StoreError> {
        let id = id.clone();
        self.run(move |c| {
            let mut stmt = c
                .prepare_cached(
                    "SELECT seq, at, body FROM events WHERE session_id = ?1 ORDER BY seq",
                )
                .map_err(unavailable)?;
            let rows: Vec<(i64, i64, String)> = stmt
                .query_map(params![id.as_str()], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })
                .map_err(unavailable)?
                .collect::<Result<_, _>>()
                .map_err(unavailable)?;
            rows.into_iter()
                .map(|(seq, at, body)| {
                    Ok(EventRecord {
                        seq,
                        at: Timestamp::from_unix(at),
                        session: Some(id.clone()),
                        event: serde_json::from_str(&body).map_err(corrupt)?,
                    })
                })
                .collect()
        })
        .await
    }

    async fn check(&self) -> Result<(), StoreError> {
        self.run(|c| c.one("SELECT 1", [], |_| Ok(())).map_err(unavailable))
            .await
    }

    fn committed(&self) -> tokio::sync::watch::Receiver<u64> {
        self.writer.committed()
    }
}
