//! The embedded store backend: one SQLite file, no server.
//!
//! WAL journal with `synchronous = FULL`: every commit is on disk before
//! the call returns. Schema changes are numbered migrations tracked in
//! `PRAGMA user_version`. Writes run on one writer thread, each in a
//! `BEGIN IMMEDIATE` transaction (SQLite's write lock, which also locks
//! the audit head), so several lockstep processes sharing a file stay
//! consistent; reads run on pooled read-only connections. The session
//! rules are the ledger's ([`crate::store::ledger`]): this module only
//! stores and loads.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};

use super::decode;
use super::ledger::{Backend, Durability, Ledger, LedgerTx};
use super::webhooks::{self, WebhookCursor};
use super::{CredentialRecord, EventRecord, RevokedEntry, SessionFilter, StoreError};
use crate::clock::Timestamp;
use crate::lane::Lane;
use crate::sessions::{ReviewState, Session, SessionId, State};

mod owner;
mod schema;
mod sql;
mod tx;
mod writer;

use owner::Owner;
use schema::migrate;
use sql::Cached;
use writer::Writer;

/// The SQLite backend.
pub struct Sqlite {
    writer: Writer,
    readers: Arc<Mutex<Vec<Connection>>>,
    reads: Lane,
    path: PathBuf,
    owner: Arc<Owner>,
}

impl std::fmt::Debug for Sqlite {
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

impl Ledger<Sqlite> {
    /// Opens (creating if needed) the store at `path` and migrates it.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Ok(Ledger::new(Sqlite::open(path)?))
    }
}

impl Sqlite {
    /// Opens (creating if needed) the store at `path`, migrates it and
    /// claims an owner id for this process's reservations.
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
        let owner = Arc::new(Owner::claim(path)?);
        owner.tidy();
        // Every reader is opened, and has read once (which opens the WAL
        // and its index), now: the process holds the same descriptors
        // from its first request to its last.
        let mut readers = Vec::with_capacity(MAX_READERS);
        for _ in 0..MAX_READERS {
            let c = Self::open_reader(path)?;
            c.query_row("SELECT count(*) FROM sqlite_master", [], |_| Ok(()))
                .map_err(unavailable)?;
            readers.push(c);
        }
        Ok(Self {
            writer: Writer::start(conn)?,
            readers: Arc::new(Mutex::new(readers)),
            reads: Lane::new(MAX_READERS),
            path: path.to_owned(),
            owner,
        })
    }

    /// A read-only connection from the pool (WAL lets readers run beside
    /// the writer and see every committed transaction).
    fn reader(path: &Path, pool: &Mutex<Vec<Connection>>) -> Result<Connection, StoreError> {
        if let Some(c) = pool.lock().unwrap_or_else(|p| p.into_inner()).pop() {
            return Ok(c);
        }
        Self::open_reader(path)
    }

    fn open_reader(path: &Path) -> Result<Connection, StoreError> {
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
    decode::session(id, body)
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
    Option<String>,
);

const CREDENTIAL_COLUMNS: &str = "c.serial, c.session_id, c.profile, c.state, c.not_after, c.key_sha256, c.issued_at, c.kind, r.revoked_at, r.reason, c.issuer";

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
        r.get(10)?,
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
        issuer,
    ) = row;
    let revoked = match (revoked_at, reason) {
        (Some(at), Some(code)) => Some((Timestamp::from_unix(at), decode::reason(code)?)),
        _ => None,
    };
    Ok(CredentialRecord {
        serial,
        session: SessionId::parse(&session).map_err(corrupt)?,
        kind: decode::kind(&kind)?,
        profile: decode::profile(&profile)?,
        state,
        not_after: Timestamp::from_unix(not_after),
        key_sha256,
        issued_at: issued_at.map(Timestamp::from_unix),
        revoked,
        issuer,
    })
}

#[async_trait]
impl Backend for Sqlite {
    async fn transact<T, F>(&self, durability: Durability, mut f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnMut(&mut dyn LedgerTx) -> Result<T, StoreError> + Send + 'static,
    {
        let owner = self.owner.clone();
        self.writer
            .write(durability, move |t| f(&mut tx::SqliteTx::new(t, &owner)))
            .await
    }

    fn owner(&self) -> &str {
        self.owner.id()
    }

    fn kind(&self) -> &'static str {
        "sqlite"
    }

    async fn claim_webhook(
        &self,
        endpoint: &str,
        start: u64,
        now: Timestamp,
        lease_secs: i64,
    ) -> Result<Option<WebhookCursor>, StoreError> {
        let (endpoint, holder) = (endpoint.to_owned(), self.owner().to_owned());
        let start = i64::try_from(start).unwrap_or(i64::MAX);
        self.writer
            .write(Durability::Synced, move |tx| {
                tx.one(
                    &webhooks::claim_sql(placeholder),
                    params![
                        endpoint,
                        start,
                        holder,
                        now.plus_secs(lease_secs).unix(),
                        now.unix()
                    ],
                    webhook_row,
                )
                .optional()
                .map_err(unavailable)
            })
            .await
    }

    async fn save_webhook(
        &self,
        cursor: &WebhookCursor,
        now: Timestamp,
        lease_secs: i64,
    ) -> Result<bool, StoreError> {
        let saved = webhooks::Saved::of(cursor);
        let (endpoint, holder) = (cursor.endpoint.clone(), self.owner().to_owned());
        self.writer
            .write(Durability::Synced, move |tx| {
                let changed = tx
                    .execute(
                        &webhooks::save_sql(placeholder),
                        params![
                            endpoint,
                            saved.position,
                            saved.failures,
                            saved.next_attempt,
                            saved.last_error,
                            saved.delivered,
                            saved.delivered_at,
                            holder,
                            now.plus_secs(lease_secs).unix(),
                        ],
                    )
                    .map_err(unavailable)?;
                Ok(changed == 1)
            })
            .await
    }

    async fn release_webhook(&self, endpoint: &str) -> Result<(), StoreError> {
        let (endpoint, holder) = (endpoint.to_owned(), self.owner().to_owned());
        self.writer
            .write(Durability::Synced, move |tx| {
                tx.execute(
                    &webhooks::release_sql(placeholder),
                    params![endpoint, holder],
                )
                .map(|_| ())
                .map_err(unavailable)
            })
            .await
    }

    async fn webhook_cursors(&self) -> Result<Vec<WebhookCursor>, StoreError> {
        self.run(|c| {
            let mut stmt = c
                .prepare_cached(&webhooks::list_sql())
                .map_err(unavailable)?;
            stmt.query_map([], webhook_row)
                .map_err(unavailable)?
                .collect::<Result<_, _>>()
                .map_err(unavailable)
        })
        .await
    }

    async fn session_counts(&self) -> Result<Vec<(State, u64)>, StoreError> {
        self.run(|c| {
            let rows = label_counts(c, "SELECT state, count(*) FROM sessions GROUP BY state")?;
            rows.iter()
                .map(|(state, n)| decode::state_count(state, *n))
                .collect()
        })
        .await
    }

    async fn break_glass_counts(&self) -> Result<Vec<(ReviewState, u64)>, StoreError> {
        self.run(|c| {
            let rows = label_counts(
                c,
                "SELECT break_glass, count(*) FROM sessions
                 WHERE break_glass IS NOT NULL GROUP BY break_glass",
            )?;
            rows.iter()
                .map(|(state, n)| decode::review_count(state, *n))
                .collect()
        })
        .await
    }

    async fn load_session(&self, id: &SessionId) -> Result<Session, StoreError> {
        let id = id.clone();
        self.run(move |c| load(c, &id)).await
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
                       AND (?5 = 0 OR break_glass IN ('awaiting', 'overdue', 'unjustified'))
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
                        filter.unreviewed,
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

    async fn live_revocations(
        &self,
        now: Timestamp,
        issuer: &str,
    ) -> Result<Vec<RevokedEntry>, StoreError> {
        let issuer = issuer.to_owned();
        self.run(move |c| {
            let mut stmt = c
                .prepare_cached(
                    "SELECT serial, revoked_at, reason FROM revocations
                     WHERE not_after > ?1 AND (issuer = ?2 OR issuer IS NULL) ORDER BY serial",
                )
                .map_err(unavailable)?;
            let rows: Vec<(String, i64, i64)> = stmt
                .query_map(params![now.unix(), issuer], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })
                .map_err(unavailable)?
                .collect::<Result<_, _>>()
                .map_err(unavailable)?;
            rows.into_iter()
                .map(|(serial, at, code)| {
                    Ok(RevokedEntry {
                        serial,
                        revoked_at: Timestamp::from_unix(at),
                        reason: decode::reason(code)?,
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
        self.writer
            .write(Durability::Synced, |tx| tx::bump(tx, "crl_number"))
            .await
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

    async fn add_checkpoint(&self, cp: crate::audit::Checkpoint) -> Result<bool, StoreError> {
        let bytes = |h: &str| hex::decode(h).map_err(|e| corrupt(format!("checkpoint: {e}")));
        let (head, signer, signature) =
            (bytes(&cp.head)?, bytes(&cp.signer)?, bytes(&cp.signature)?);
        self.writer
            .write(Durability::Synced, move |tx| {
                // Under the write lock: two processes signing the same
                // range at once both read the same last checkpoint; the
                // first to commit takes the number, the other adds nothing.
                let last: Option<i64> = tx
                    .one("SELECT MAX(number) FROM checkpoints", [], |r| r.get(0))
                    .map_err(unavailable)?;
                let last = last.unwrap_or(0) as u64;
                if cp.number <= last {
                    return Ok(false);
                }
                if cp.number != last + 1 {
                    return Err(corrupt(format!(
                        "checkpoint {} does not follow checkpoint {last}",
                        cp.number
                    )));
                }
                let signed: Option<Vec<u8>> = tx
                    .one(
                        "SELECT hash FROM events WHERE seq = ?1",
                        params![cp.upto as i64],
                        |r| r.get(0),
                    )
                    .optional()
                    .map_err(unavailable)?;
                if signed.as_deref() != Some(head.as_slice()) {
                    return Err(corrupt(format!(
                        "checkpoint {} names entry {} with a hash the trail does not have",
                        cp.number, cp.upto
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
                Ok(true)
            })
            .await
    }

    async fn add_audit_certificate(&self, der: Vec<u8>, now: Timestamp) -> Result<(), StoreError> {
        self.writer
            .write(Durability::Synced, move |tx| {
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
            let rows: Vec<(i64, i64, String)> = c
                .all(
                    "SELECT seq, at, body FROM events WHERE session_id = ?1 ORDER BY seq",
                    params![id.as_str()],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
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

/// SQLite's numbered parameter `?i`.
fn placeholder(i: usize) -> String {
    format!("?{i}")
}

/// A webhook cursor from a row of [`webhooks::COLUMNS`].
fn webhook_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<WebhookCursor> {
    Ok(webhooks::Row {
        endpoint: r.get(0)?,
        position: r.get(1)?,
        failures: r.get(2)?,
        next_attempt: r.get(3)?,
        last_error: r.get(4)?,
        delivered: r.get(5)?,
        delivered_at: r.get(6)?,
        holder: r.get(7)?,
        lease_until: r.get(8)?,
    }
    .decode())
}

/// The rows of a `SELECT label, count(*) … GROUP BY label` query.
fn label_counts(c: &rusqlite::Connection, sql: &str) -> Result<Vec<(String, i64)>, StoreError> {
    let mut stmt = c.prepare_cached(sql).map_err(unavailable)?;
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .map_err(unavailable)?
        .collect::<Result<_, _>>()
        .map_err(unavailable)
}
