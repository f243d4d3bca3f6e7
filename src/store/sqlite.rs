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
use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};

use super::{
    Applied, CredentialRecord, EventRecord, Finish, Finished, Reservation, SessionFilter, Store,
    StoreError,
};
use crate::clock::Timestamp;
use crate::sessions::{Event, Session, SessionId, SessionOp, State};
use crate::x509::CertProfile;

/// Schema migrations, applied in order; `user_version` counts those done.
const MIGRATIONS: &[&str] = &[
    // 1: sessions, credentials, events.
    r#"
    CREATE TABLE sessions (
        id            TEXT PRIMARY KEY,
        state         TEXT NOT NULL,
        tenant        TEXT,
        requester     TEXT NOT NULL,
        resource      TEXT NOT NULL,
        created_at    INTEGER NOT NULL,
        pending_until INTEGER NOT NULL,
        closes_at     INTEGER,
        body          TEXT NOT NULL
    ) STRICT;
    CREATE INDEX sessions_due_pending ON sessions(pending_until) WHERE state = 'pending';
    CREATE INDEX sessions_due_open ON sessions(closes_at) WHERE state = 'open';
    CREATE INDEX sessions_created ON sessions(created_at);

    CREATE TABLE credentials (
        serial      TEXT PRIMARY KEY,
        session_id  TEXT NOT NULL REFERENCES sessions(id),
        profile     TEXT NOT NULL,
        state       TEXT NOT NULL CHECK (state IN ('reserved', 'issued', 'withheld', 'void')),
        not_after   INTEGER NOT NULL,
        key_sha256  TEXT,
        der         BLOB,
        created_at  INTEGER NOT NULL,
        issued_at   INTEGER
    ) STRICT;
    CREATE INDEX credentials_session ON credentials(session_id);
    CREATE INDEX credentials_reserved ON credentials(state) WHERE state = 'reserved';

    CREATE TABLE events (
        seq         INTEGER PRIMARY KEY AUTOINCREMENT,
        at          INTEGER NOT NULL,
        session_id  TEXT,
        kind        TEXT NOT NULL,
        body        TEXT NOT NULL
    ) STRICT;
    CREATE INDEX events_session ON events(session_id);
    "#,
];

/// The SQLite store.
#[derive(Clone)]
pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
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
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
            path: path.to_owned(),
        })
    }

    /// Runs `f` on the connection, on the blocking pool.
    async fn run<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            // A panic inside a transaction rolls it back (the transaction
            // is dropped), so a poisoned connection is still consistent.
            let mut c = conn.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut c)
        })
        .await
        .map_err(|e| unavailable(format!("store task failed: {e}")))?
    }

    /// Runs `f` in an immediate (write-locked) transaction and commits.
    async fn write<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Transaction<'_>) -> Result<T, StoreError> + Send + 'static,
    {
        self.run(move |c| {
            let tx = c
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(unavailable)?;
            let out = f(&tx)?;
            tx.commit().map_err(unavailable)?;
            Ok(out)
        })
        .await
    }
}

fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let done: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(unavailable)?;
    if done as usize > MIGRATIONS.len() {
        return Err(corrupt(format!(
            "the store has schema version {done}, newer than this lockstep ({}); upgrade lockstep",
            MIGRATIONS.len()
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(done as usize) {
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(unavailable)?;
        tx.execute_batch(sql).map_err(unavailable)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)
            .map_err(unavailable)?;
        tx.commit().map_err(unavailable)?;
    }
    Ok(())
}

fn load(tx: &Connection, id: &SessionId) -> Result<Session, StoreError> {
    let body: Option<String> = tx
        .query_row(
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
    tx.execute(
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
    tx.execute(
        "INSERT INTO events (at, session_id, kind, body) VALUES (?1, ?2, ?3, ?4)",
        params![
            now.unix(),
            session.map(SessionId::as_str),
            event.kind(),
            body
        ],
    )
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
    }
    for e in &events {
        append(tx, now, Some(id), e)?;
    }
    Ok(Applied { session: s, result })
}

fn parse_profile(text: &str) -> Result<CertProfile, StoreError> {
    serde_json::from_value(serde_json::Value::String(text.to_owned())).map_err(corrupt)
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
            tx.execute(
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
        serial: String,
        profile: CertProfile,
        now: Timestamp,
    ) -> Result<(Applied, Option<Reservation>), StoreError> {
        let id = id.clone();
        self.write(move |tx| {
            let applied = apply_in(tx, &id, &SessionOp::ReserveMint, now)?;
            let Ok(Some(slot)) = &applied.result else {
                return Ok((applied, None));
            };
            tx.execute(
                "INSERT INTO credentials (serial, session_id, profile, state, not_after, created_at)
                 VALUES (?1, ?2, ?3, 'reserved', ?4, ?5)",
                params![serial, id.as_str(), profile.as_str(), slot.not_after.unix(), now.unix()],
            )
            .map_err(unavailable)?;
            let reservation = Reservation {
                session: id.clone(),
                serial,
                profile,
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
                tx.execute(
                    "DELETE FROM credentials WHERE serial = ?1 AND state = 'reserved'",
                    params![r.serial],
                )
                .map_err(unavailable)?;
                apply_in(tx, &r.session, &SessionOp::ReleaseMint, now)?;
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
                    .execute(
                        "UPDATE credentials SET state = ?2, der = ?3, key_sha256 = ?4, issued_at = ?5
                         WHERE serial = ?1 AND state = 'reserved'",
                        params![r.serial, state, der, key_sha256, now.unix()],
                    )
                    .map_err(unavailable)?;
                if changed != 1 {
                    return Err(corrupt(format!("credential {} was not reserved", r.serial)));
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
                tx.execute(
                    "UPDATE credentials SET state = 'void' WHERE serial = ?1",
                    params![serial],
                )
                .map_err(unavailable)?;
                apply_in(tx, &id, &SessionOp::ReleaseMint, now)?;
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
            let mut stmt = c
                .prepare_cached(
                    "SELECT body FROM sessions WHERE (?1 IS NULL OR state = ?1)
                     ORDER BY created_at DESC, id LIMIT ?2",
                )
                .map_err(unavailable)?;
            let bodies: Vec<String> = stmt
                .query_map(params![filter.state.map(State::as_str), limit], |r| {
                    r.get(0)
                })
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
            let mut stmt = c
                .prepare_cached(
                    "SELECT serial, profile, state, not_after, key_sha256, issued_at
                     FROM credentials WHERE session_id = ?1 ORDER BY created_at, serial",
                )
                .map_err(unavailable)?;
            let rows: Vec<(String, String, String, i64, Option<String>, Option<i64>)> = stmt
                .query_map(params![id.as_str()], |r| {
                    Ok((
                        r.get(0)?,
                        r.get(1)?,
                        r.get(2)?,
                        r.get(3)?,
                        r.get(4)?,
                        r.get(5)?,
                    ))
                })
                .map_err(unavailable)?
                .collect::<Result<_, _>>()
                .map_err(unavailable)?;
            rows.into_iter()
                .map(
                    |(serial, profile, state, not_after, key_sha256, issued_at)| {
                        Ok(CredentialRecord {
                            serial,
                            session: id.clone(),
                            profile: parse_profile(&profile)?,
                            state,
                            not_after: Timestamp::from_unix(not_after),
                            key_sha256,
                            issued_at: issued_at.map(Timestamp::from_unix),
                        })
                    },
                )
                .collect()
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
        self.run(|c| c.query_row("SELECT 1", [], |_| Ok(())).map_err(unavailable))
            .await
    }
}
