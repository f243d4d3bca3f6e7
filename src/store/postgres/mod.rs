//! The PostgreSQL store backend: one database that several lockstep
//! replicas share.
//!
//! The ledger's transactions ([`crate::store::ledger`]) run on a blocking
//! thread over a pooled connection (see [`tx`] for the locking); one that
//! loses to another transaction (serialization failure, deadlock) is run
//! again, a few times, before the caller hears of it. Reads run on the
//! pool directly. Each process holds an owner lock for its reservations
//! ([`owner`]) and listens for the commits of every replica
//! ([`notify`]). Like the SQLite store, this module only stores and
//! loads: the session rules are the ledger's.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{GenericClient, Pool};
use tokio::sync::watch;
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

use super::decode;
use super::ledger::{Backend, Durability, Ledger, LedgerTx};
use super::webhooks::{self, WebhookCursor};
use super::{CredentialRecord, EventRecord, RevokedEntry, SessionFilter, StoreError};
use crate::clock::Timestamp;
use crate::config::PostgresConfig;
use crate::sessions::{ReviewState, Session, SessionId, State};

mod connect;
mod notify;
mod owner;
mod schema;
mod tx;

use connect::Target;
use owner::Owner;

/// How many times a transaction that lost to another is run in all.
const ATTEMPTS: u32 = 5;

/// The PostgreSQL backend.
pub struct Postgres {
    pool: Pool,
    target: Arc<Target>,
    owner: Owner,
    commits: Arc<watch::Sender<u64>>,
    /// Listens for commits for as long as the store is open.
    _listener: notify::Listener,
}

impl std::fmt::Debug for Postgres {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("database", &self.target.describe())
            .finish()
    }
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

/// A failure of the database or the connection to it, with its causes
/// (tokio-postgres says only "db error"; the server's message is below).
fn failed(e: impl std::error::Error) -> StoreError {
    StoreError::Unavailable(why(&e))
}

/// An error and its causes, as one line.
fn why(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

/// Column `i` of a row, as the type the schema gives it; anything else
/// is a store lockstep cannot read.
fn col<'a, T: tokio_postgres::types::FromSql<'a>>(r: &'a Row, i: usize) -> Result<T, StoreError> {
    r.try_get(i)
        .map_err(|e| corrupt(format!("column {i}: {}", why(&e))))
}

fn corrupt(e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(e.to_string())
}

impl Ledger<Postgres> {
    /// Connects to the configured database and migrates it.
    pub async fn connect(config: &PostgresConfig) -> Result<Self, StoreError> {
        Ok(Ledger::new(Postgres::connect(config).await?))
    }
}

impl Postgres {
    /// Connects to the configured database, migrates it, claims an owner
    /// id for this process's reservations and starts listening for
    /// commits.
    pub async fn connect(config: &PostgresConfig) -> Result<Self, StoreError> {
        let target = Arc::new(Target::new(config)?);
        let pool = target.pool()?;
        // The first connection says whether the database is reachable at
        // all, with the server's own words.
        drop(pool.get().await.map_err(|e| {
            unavailable(format!(
                "cannot connect to {}: {}",
                target.describe(),
                why(&e)
            ))
        })?);
        schema::migrate(&pool).await?;
        let owner = Owner::claim(target.clone()).await?;
        let (commits, _) = watch::channel(0);
        let commits = Arc::new(commits);
        let listener = notify::Listener::start(target.clone(), commits.clone()).await?;
        Ok(Self {
            pool,
            target,
            owner,
            commits,
            _listener: listener,
        })
    }

    /// A pooled connection.
    async fn client(&self) -> Result<deadpool_postgres::Client, StoreError> {
        self.pool.get().await.map_err(|e| {
            unavailable(format!(
                "no connection to {}: {}",
                self.target.describe(),
                why(&e)
            ))
        })
    }

    /// Runs a read query on a pooled connection.
    async fn rows(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, StoreError> {
        let client = self.client().await?;
        let st = client.prepare_cached(sql).await.map_err(failed)?;
        client.query(&st, params).await.map_err(failed)
    }
}

/// A connection of its own to the configured database, outside any store
/// (for `lockstep audit`, which reads the trail with its own queries).
/// It closes when the client is dropped.
pub async fn connect_alone(config: &PostgresConfig) -> Result<tokio_postgres::Client, StoreError> {
    let (client, _conn) = Target::new(config)?.dedicated(None).await?;
    Ok(client)
}

/// How one attempt at a transaction failed.
enum Failure {
    /// It lost to another transaction: it may be run again.
    Conflict(StoreError),
    /// Anything else.
    Other(StoreError),
}

/// One attempt: begin, run `f`, commit (notifying readers when it
/// appended to the trail, and saying whether it did); rolled back on any
/// error.
fn attempt<T, F>(
    handle: &tokio::runtime::Handle,
    client: &mut deadpool_postgres::Client,
    durability: Durability,
    owner: &str,
    f: &mut F,
) -> Result<(T, bool), Failure>
where
    F: FnMut(&mut dyn LedgerTx) -> Result<T, StoreError>,
{
    let other = |e: tokio_postgres::Error| {
        if tx::is_conflict(&e) {
            Failure::Conflict(failed(&e))
        } else {
            Failure::Other(failed(&e))
        }
    };
    let tx = handle.block_on(client.transaction()).map_err(other)?;
    if durability == Durability::Volatile {
        // Committed and visible at once; on disk with the next synced
        // commit. What a crash loses, recovery would undo anyway.
        handle
            .block_on(tx.batch_execute("SET LOCAL synchronous_commit = off"))
            .map_err(other)?;
    }
    let mut ptx = tx::PgTx::new(handle, &tx, owner);
    let out = f(&mut ptx).and_then(|value| Ok((value, ptx.write_entries()?)));
    let conflict = ptx.conflict;
    let (value, appended) = match out {
        Ok(done) => done,
        Err(e) => {
            let _ = handle.block_on(tx.rollback());
            return Err(if conflict {
                Failure::Conflict(e)
            } else {
                Failure::Other(e)
            });
        }
    };
    handle.block_on(tx.commit()).map_err(other)?;
    Ok((value, appended))
}

/// A short, growing pause before running a transaction again, with
/// jitter so that two replicas that collided do not collide again.
fn backoff(attempt: u32) -> Duration {
    let mut random = [0u8; 1];
    let jitter = getrandom::fill(&mut random).map_or(0, |()| u64::from(random[0]) % 10);
    Duration::from_millis(5 * u64::from(attempt) * u64::from(attempt) + jitter)
}

fn hash32(seq: i64, hash: Vec<u8>) -> Result<[u8; 32], StoreError> {
    hash.try_into()
        .map_err(|_| corrupt(format!("audit entry {seq} has no valid hash")))
}

const CREDENTIAL_COLUMNS: &str = "c.serial, c.session_id, c.profile, c.state, c.not_after, c.key_sha256, c.issued_at, c.kind, r.revoked_at, r.reason, c.issuer";

fn credential_record(r: &Row) -> Result<CredentialRecord, StoreError> {
    let revoked = match (col::<Option<i64>>(r, 8)?, col::<Option<i64>>(r, 9)?) {
        (Some(at), Some(code)) => Some((Timestamp::from_unix(at), decode::reason(code)?)),
        _ => None,
    };
    Ok(CredentialRecord {
        serial: col(r, 0)?,
        session: SessionId::parse(col(r, 1)?).map_err(corrupt)?,
        kind: decode::kind(col(r, 7)?)?,
        profile: decode::profile(col(r, 2)?)?,
        state: col(r, 3)?,
        not_after: Timestamp::from_unix(col(r, 4)?),
        key_sha256: col(r, 5)?,
        issued_at: col::<Option<i64>>(r, 6)?.map(Timestamp::from_unix),
        revoked,
        issuer: col(r, 10)?,
    })
}

#[async_trait]
impl Backend for Postgres {
    async fn transact<T, F>(&self, durability: Durability, mut f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnMut(&mut dyn LedgerTx) -> Result<T, StoreError> + Send + 'static,
    {
        let mut client = self.client().await?;
        let owner = self.owner.id().to_owned();
        let handle = tokio::runtime::Handle::current();
        let (value, appended) = tokio::task::spawn_blocking(move || {
            let mut tries = 1;
            loop {
                match attempt(&handle, &mut client, durability, &owner, &mut f) {
                    Ok(value) => return Ok(value),
                    Err(Failure::Conflict(e)) if tries >= ATTEMPTS => return Err(e),
                    Err(Failure::Conflict(_)) => {
                        std::thread::sleep(backoff(tries));
                        tries += 1;
                    }
                    Err(Failure::Other(e)) => return Err(e),
                }
            }
        })
        .await
        .map_err(|e| unavailable(format!("store transaction: {e}")))??;
        if appended {
            // Readers of this process hear at once; the NOTIFY reaches
            // them too, and the other replicas.
            self.commits.send_modify(|n| *n = n.wrapping_add(1));
        }
        Ok(value)
    }

    fn owner(&self) -> &str {
        self.owner.id()
    }

    fn kind(&self) -> &'static str {
        "postgres"
    }

    async fn claim_webhook(
        &self,
        endpoint: &str,
        start: u64,
        now: Timestamp,
        lease_secs: i64,
    ) -> Result<Option<WebhookCursor>, StoreError> {
        let start = i64::try_from(start).unwrap_or(i64::MAX);
        let rows = self
            .rows(
                &webhooks::claim_sql(placeholder),
                &[
                    &endpoint,
                    &start,
                    &self.owner(),
                    &now.plus_secs(lease_secs).unix(),
                    &now.unix(),
                ],
            )
            .await?;
        rows.first().map(webhook_row).transpose()
    }

    async fn save_webhook(
        &self,
        cursor: &WebhookCursor,
        now: Timestamp,
        lease_secs: i64,
    ) -> Result<bool, StoreError> {
        let saved = webhooks::Saved::of(cursor);
        let client = self.client().await?;
        let st = client
            .prepare_cached(&webhooks::save_sql(placeholder))
            .await
            .map_err(failed)?;
        let changed = client
            .execute(
                &st,
                &[
                    &cursor.endpoint,
                    &saved.position,
                    &saved.failures,
                    &saved.next_attempt,
                    &saved.last_error,
                    &saved.delivered,
                    &saved.delivered_at,
                    &self.owner(),
                    &now.plus_secs(lease_secs).unix(),
                ],
            )
            .await
            .map_err(failed)?;
        Ok(changed == 1)
    }

    async fn release_webhook(&self, endpoint: &str) -> Result<(), StoreError> {
        self.rows(
            &webhooks::release_sql(placeholder),
            &[&endpoint, &self.owner()],
        )
        .await
        .map(|_| ())
    }

    async fn webhook_cursors(&self) -> Result<Vec<WebhookCursor>, StoreError> {
        let rows = self.rows(&webhooks::list_sql(), &[]).await?;
        rows.iter().map(webhook_row).collect()
    }

    async fn session_counts(&self) -> Result<Vec<(State, u64)>, StoreError> {
        let rows = self
            .rows("SELECT state, count(*) FROM sessions GROUP BY state", &[])
            .await?;
        rows.iter()
            .map(|r| decode::state_count(col(r, 0)?, col::<i64>(r, 1)?))
            .collect()
    }

    async fn break_glass_counts(&self) -> Result<Vec<(ReviewState, u64)>, StoreError> {
        let rows = self
            .rows(
                "SELECT break_glass, count(*) FROM sessions
                 WHERE break_glass IS NOT NULL GROUP BY break_glass",
                &[],
            )
            .await?;
        rows.iter()
            .map(|r| decode::review_count(col(r, 0)?, col::<i64>(r, 1)?))
            .collect()
    }

    async fn load_session(&self, id: &SessionId) -> Result<Session, StoreError> {
        let rows = self
            .rows("SELECT body FROM sessions WHERE id = $1", &[&id.as_str()])
            .await?;
        decode::session(id, rows.first().map(|r| col(r, 0)).transpose()?)
    }

    async fn sessions(&self, filter: SessionFilter) -> Result<Vec<Session>, StoreError> {
        let limit = if filter.limit == 0 { 100 } else { filter.limit } as i64;
        let before = filter.before.as_ref();
        let rows = self
            .rows(
                "SELECT body FROM sessions WHERE ($1::text IS NULL OR state = $1)
                   AND ($3::bigint IS NULL OR created_at < $3
                        OR (created_at = $3 AND $4::text IS NOT NULL AND id > $4))
                   AND (NOT $5 OR break_glass IN ('awaiting', 'overdue', 'unjustified'))
                 ORDER BY created_at DESC, id LIMIT $2",
                &[
                    &filter.state.map(State::as_str),
                    &limit,
                    &before.map(|b| b.created_at.unix()),
                    &before.and_then(|b| b.id.as_ref()).map(SessionId::as_str),
                    &filter.unreviewed,
                ],
            )
            .await?;
        rows.iter()
            .map(|r| serde_json::from_str(col(r, 0)?).map_err(corrupt))
            .collect()
    }

    async fn credentials(&self, id: &SessionId) -> Result<Vec<CredentialRecord>, StoreError> {
        let sql = format!(
            "SELECT {CREDENTIAL_COLUMNS} FROM credentials c LEFT JOIN revocations r USING (serial)
             WHERE c.session_id = $1 ORDER BY c.created_at, c.serial"
        );
        let rows = self.rows(&sql, &[&id.as_str()]).await?;
        rows.iter().map(credential_record).collect()
    }

    async fn credential(&self, serial: &str) -> Result<Option<CredentialRecord>, StoreError> {
        let sql = format!(
            "SELECT {CREDENTIAL_COLUMNS} FROM credentials c LEFT JOIN revocations r USING (serial)
             WHERE c.serial = $1"
        );
        let rows = self.rows(&sql, &[&serial]).await?;
        rows.first().map(credential_record).transpose()
    }

    async fn certificates(&self, id: &SessionId) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let rows = self
            .rows(
                "SELECT serial, der FROM credentials
                 WHERE session_id = $1 AND kind = 'certificate' AND state = 'issued' AND der IS NOT NULL",
                &[&id.as_str()],
            )
            .await?;
        rows.iter().map(|r| Ok((col(r, 0)?, col(r, 1)?))).collect()
    }

    async fn live_revocations(
        &self,
        now: Timestamp,
        issuer: &str,
    ) -> Result<Vec<RevokedEntry>, StoreError> {
        let rows = self
            .rows(
                "SELECT serial, revoked_at, reason FROM revocations
                 WHERE not_after > $1 AND (issuer = $2 OR issuer IS NULL) ORDER BY serial",
                &[&now.unix(), &issuer],
            )
            .await?;
        rows.iter()
            .map(|r| {
                Ok(RevokedEntry {
                    serial: col(r, 0)?,
                    revoked_at: Timestamp::from_unix(col(r, 1)?),
                    reason: decode::reason(col(r, 2)?)?,
                })
            })
            .collect()
    }

    async fn revocation_version(&self) -> Result<u64, StoreError> {
        let rows = self
            .rows("SELECT value FROM counters WHERE name = 'revocations'", &[])
            .await?;
        let row = rows
            .first()
            .ok_or_else(|| corrupt("counter revocations is missing"))?;
        Ok(col::<i64>(row, 0)? as u64)
    }

    async fn next_crl_number(&self) -> Result<u64, StoreError> {
        let rows = self
            .rows(
                "UPDATE counters SET value = value + 1 WHERE name = 'crl_number' RETURNING value",
                &[],
            )
            .await?;
        let row = rows
            .first()
            .ok_or_else(|| corrupt("counter crl_number is missing"))?;
        Ok(col::<i64>(row, 0)? as u64)
    }

    async fn audit_head(&self) -> Result<Option<(u64, [u8; 32])>, StoreError> {
        let rows = self
            .rows(
                "SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1",
                &[],
            )
            .await?;
        rows.first()
            .map(|r| {
                let seq: i64 = col(r, 0)?;
                Ok((seq as u64, hash32(seq, col(r, 1)?)?))
            })
            .transpose()
    }

    async fn last_checkpoint(&self) -> Result<Option<crate::audit::Checkpoint>, StoreError> {
        let rows = self
            .rows(
                "SELECT number, upto, head, at, signer, signature FROM checkpoints
                 ORDER BY number DESC LIMIT 1",
                &[],
            )
            .await?;
        rows.first()
            .map(|r| {
                Ok(crate::audit::Checkpoint {
                    number: col::<i64>(r, 0)? as u64,
                    upto: col::<i64>(r, 1)? as u64,
                    head: hex::encode(col::<Vec<u8>>(r, 2)?),
                    at: col(r, 3)?,
                    signer: hex::encode(col::<Vec<u8>>(r, 4)?),
                    signature: hex::encode(col::<Vec<u8>>(r, 5)?),
                })
            })
            .transpose()
    }

    async fn add_checkpoint(&self, cp: crate::audit::Checkpoint) -> Result<bool, StoreError> {
        let bytes = |h: &str| hex::decode(h).map_err(|e| corrupt(format!("checkpoint: {e}")));
        let (head, signer, signature) =
            (bytes(&cp.head)?, bytes(&cp.signer)?, bytes(&cp.signature)?);
        let (number, upto) = (cp.number as i64, cp.upto as i64);
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(failed)?;
        // Under the audit head's lock: two processes signing the same
        // range at once both read the same last checkpoint; the first to
        // commit takes the number, the other adds nothing.
        tx.execute("SELECT 1 FROM audit_head FOR UPDATE", &[])
            .await
            .map_err(failed)?;
        let last: Option<i64> = tx
            .query_one("SELECT MAX(number) FROM checkpoints", &[])
            .await
            .map_err(failed)?
            .try_get(0)
            .map_err(failed)?;
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
            .query_opt("SELECT hash FROM events WHERE seq = $1", &[&upto])
            .await
            .map_err(failed)?
            .map(|r| col(&r, 0))
            .transpose()?;
        if signed.as_deref() != Some(head.as_slice()) {
            return Err(corrupt(format!(
                "checkpoint {} names entry {} with a hash the trail does not have",
                cp.number, cp.upto
            )));
        }
        tx.execute(
            "INSERT INTO checkpoints (number, upto, head, at, signer, signature)
             VALUES ($1, $2, $3, $4, $5, $6)",
            &[&number, &upto, &head, &cp.at, &signer, &signature],
        )
        .await
        .map_err(failed)?;
        tx.commit().await.map_err(failed)?;
        Ok(true)
    }

    async fn add_audit_certificate(&self, der: Vec<u8>, now: Timestamp) -> Result<(), StoreError> {
        let id = crate::audit::signer_id(&der).to_vec();
        self.rows(
            "INSERT INTO audit_certificates (id, der, added_at) VALUES ($1, $2, $3)
             ON CONFLICT (id) DO NOTHING",
            &[&id, &der, &now.unix()],
        )
        .await?;
        Ok(())
    }

    async fn audit_entries(
        &self,
        after: u64,
        limit: usize,
        session: Option<&SessionId>,
    ) -> Result<Vec<crate::audit::Entry>, StoreError> {
        // A cursor past i64::MAX is past every entry, not before them.
        let after = i64::try_from(after).unwrap_or(i64::MAX);
        let limit = limit.min(10_000) as i64;
        let rows = self
            .rows(
                "SELECT seq, at, session_id, kind, body, prev_hash, hash FROM events
                 WHERE seq > $1 AND ($2::text IS NULL OR session_id = $2) ORDER BY seq LIMIT $3",
                &[&after, &session.map(SessionId::as_str), &limit],
            )
            .await?;
        rows.iter()
            .map(|r| {
                Ok(crate::audit::Entry {
                    seq: col::<i64>(r, 0)? as u64,
                    at: col(r, 1)?,
                    session: col(r, 2)?,
                    kind: col(r, 3)?,
                    body: col(r, 4)?,
                    prev_hash: hex::encode(col::<Vec<u8>>(r, 5)?),
                    hash: hex::encode(col::<Vec<u8>>(r, 6)?),
                })
            })
            .collect()
    }

    async fn events(&self, id: &SessionId) -> Result<Vec<EventRecord>, StoreError> {
        let rows = self
            .rows(
                "SELECT seq, at, body FROM events WHERE session_id = $1 ORDER BY seq",
                &[&id.as_str()],
            )
            .await?;
        rows.iter()
            .map(|r| {
                Ok(EventRecord {
                    seq: col(r, 0)?,
                    at: Timestamp::from_unix(col(r, 1)?),
                    session: Some(id.clone()),
                    event: serde_json::from_str(col(r, 2)?).map_err(corrupt)?,
                })
            })
            .collect()
    }

    async fn check(&self) -> Result<(), StoreError> {
        self.rows("SELECT 1", &[]).await.map(drop)
    }

    fn committed(&self) -> watch::Receiver<u64> {
        self.commits.subscribe()
    }
}

/// PostgreSQL's numbered parameter `$i`.
fn placeholder(i: usize) -> String {
    format!("${i}")
}

/// A webhook cursor from a row of [`webhooks::COLUMNS`].
fn webhook_row(r: &Row) -> Result<WebhookCursor, StoreError> {
    Ok(webhooks::Row {
        endpoint: col(r, 0)?,
        position: col(r, 1)?,
        failures: col(r, 2)?,
        next_attempt: col(r, 3)?,
        last_error: col(r, 4)?,
        delivered: col(r, 5)?,
        delivered_at: col(r, 6)?,
        holder: col(r, 7)?,
        lease_until: col(r, 8)?,
    }
    .decode())
}
