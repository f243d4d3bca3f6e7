//! The schema and its migrations.
//!
//! Migrations are numbered; `schema_migrations` records each one applied.
//! Several replicas may start at once: each migration runs in its own
//! transaction under an advisory lock, so exactly one applies it. A
//! database migrated by a newer lockstep is refused.

use deadpool_postgres::Pool;

use super::{corrupt, failed, unavailable, why};
use crate::store::StoreError;

/// The advisory lock key migrations run under ("lockstep" in ASCII).
const MIGRATION_LOCK: i64 = 0x6c6f_636b_7374_6570;

/// Schema migrations, applied in order.
const MIGRATIONS: &[&str] = &[
    // 1: sessions, credentials, revocations, counters, the audit trail.
    r#"
    CREATE TABLE sessions (
        id            TEXT PRIMARY KEY,
        state         TEXT NOT NULL,
        tenant        TEXT,
        requester     TEXT NOT NULL,
        resource      TEXT NOT NULL,
        created_at    BIGINT NOT NULL,
        pending_until BIGINT NOT NULL,
        closes_at     BIGINT,
        body          TEXT NOT NULL
    );
    CREATE INDEX sessions_due_pending ON sessions(pending_until) WHERE state = 'pending';
    CREATE INDEX sessions_due_open ON sessions(closes_at) WHERE state = 'open';
    CREATE INDEX sessions_created ON sessions(created_at DESC, id);

    CREATE TABLE credentials (
        serial      TEXT PRIMARY KEY,
        session_id  TEXT NOT NULL REFERENCES sessions(id),
        profile     TEXT NOT NULL,
        state       TEXT NOT NULL CHECK (state IN ('reserved', 'issued', 'withheld', 'void')),
        not_after   BIGINT NOT NULL,
        key_sha256  TEXT,
        der         BYTEA,
        created_at  BIGINT NOT NULL,
        issued_at   BIGINT,
        kind        TEXT NOT NULL,
        counted     BOOLEAN NOT NULL,
        owner       TEXT,
        lease_until BIGINT
    );
    CREATE INDEX credentials_session ON credentials(session_id);
    CREATE INDEX credentials_reserved ON credentials(state) WHERE state = 'reserved';

    CREATE TABLE revocations (
        serial      TEXT PRIMARY KEY REFERENCES credentials(serial),
        session_id  TEXT NOT NULL,
        revoked_at  BIGINT NOT NULL,
        reason      BIGINT NOT NULL,
        not_after   BIGINT NOT NULL
    );
    CREATE INDEX revocations_live ON revocations(not_after);

    CREATE TABLE counters (
        name   TEXT PRIMARY KEY,
        value  BIGINT NOT NULL
    );
    INSERT INTO counters (name, value) VALUES ('crl_number', 0), ('revocations', 0);

    -- Sequence numbers are assigned under the head's row lock, never from
    -- a sequence: they are dense and in commit order.
    CREATE TABLE events (
        seq         BIGINT PRIMARY KEY,
        at          BIGINT NOT NULL,
        session_id  TEXT,
        kind        TEXT NOT NULL,
        body        TEXT NOT NULL,
        prev_hash   BYTEA NOT NULL UNIQUE,
        hash        BYTEA NOT NULL
    );
    CREATE INDEX events_session ON events(session_id, seq);

    -- The last entry (seq 0 and no hash: the trail is empty), one row,
    -- locked FOR UPDATE by every append.
    CREATE TABLE audit_head (
        one   BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (one),
        seq   BIGINT NOT NULL,
        hash  BYTEA
    );
    INSERT INTO audit_head (seq, hash) VALUES (0, NULL);

    CREATE TABLE checkpoints (
        number     BIGINT PRIMARY KEY,
        upto       BIGINT NOT NULL,
        head       BYTEA NOT NULL,
        at         BIGINT NOT NULL,
        signer     BYTEA NOT NULL,
        signature  BYTEA NOT NULL
    );

    CREATE TABLE audit_certificates (
        id        BYTEA PRIMARY KEY,
        der       BYTEA NOT NULL,
        added_at  BIGINT NOT NULL
    );
    "#,
    // 2: the issuing CA of each certificate, for replicas with issuing
    // keys of their own.
    r#"
    ALTER TABLE credentials ADD COLUMN issuer TEXT;
    ALTER TABLE revocations ADD COLUMN issuer TEXT;
    "#,
    // 3: webhook cursors (src/store/webhooks.rs).
    r#"
    CREATE TABLE webhook_cursors (
        endpoint      TEXT PRIMARY KEY,
        position      BIGINT NOT NULL,
        failures      BIGINT NOT NULL,
        next_attempt  BIGINT,
        last_error    TEXT,
        delivered     BIGINT NOT NULL,
        delivered_at  BIGINT,
        holder        TEXT,
        lease_until   BIGINT
    );
    "#,
    // 4: break-glass sessions: their review state and deadline, for the
    // rate limit, the sweep and `status --unreviewed`.
    r#"
    ALTER TABLE sessions ADD COLUMN break_glass TEXT;
    ALTER TABLE sessions ADD COLUMN review_by BIGINT;
    CREATE INDEX sessions_break_glass ON sessions(requester, created_at)
        WHERE break_glass IS NOT NULL;
    CREATE INDEX sessions_review_due ON sessions(review_by) WHERE break_glass = 'awaiting';
    "#,
    // 5: the Shared Signals SETs received, by transmitter and jti, so a
    // replay is refused (src/signals).
    r#"
    CREATE TABLE signals_received (
        issuer       TEXT NOT NULL,
        jti          TEXT NOT NULL,
        iat          BIGINT NOT NULL,
        received_at  BIGINT NOT NULL,
        PRIMARY KEY (issuer, jti)
    );
    CREATE INDEX signals_received_iat ON signals_received(iat);
    "#,
    // 6: when a live session's conditions fail by time alone (the
    // requester's token expiring under `requester_token_valid`), for the
    // sweep; sessions stored before it are re-checked at their next mint.
    r#"
    ALTER TABLE sessions ADD COLUMN recheck_at BIGINT;
    CREATE INDEX sessions_recheck ON sessions(recheck_at) WHERE recheck_at IS NOT NULL;
    "#,
];

/// Applies the migrations not yet applied; refuses a newer schema.
pub(super) async fn migrate(pool: &Pool) -> Result<(), StoreError> {
    let mut client = pool.get().await.map_err(failed)?;
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (
                version     INTEGER PRIMARY KEY,
                applied_at  TIMESTAMPTZ NOT NULL DEFAULT now()
            )",
        )
        .await
        // Two replicas creating it at once: one loses the race, and the
        // table is there.
        .or_else(|e| match e.code() {
            Some(c) if *c == tokio_postgres::error::SqlState::UNIQUE_VIOLATION => Ok(()),
            _ => Err(e),
        })
        .map_err(failed)?;
    for (i, sql) in MIGRATIONS.iter().enumerate() {
        let version = (i + 1) as i32;
        let tx = client.transaction().await.map_err(failed)?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await
            .map_err(failed)?;
        let done: Option<i32> = tx
            .query_one("SELECT MAX(version) FROM schema_migrations", &[])
            .await
            .map_err(failed)?
            .try_get(0)
            .map_err(failed)?;
        let done = done.unwrap_or(0);
        if done as usize > MIGRATIONS.len() {
            return Err(corrupt(format!(
                "the store has schema version {done}, newer than this lockstep ({}); upgrade lockstep",
                MIGRATIONS.len()
            )));
        }
        if done >= version {
            tx.rollback().await.map_err(failed)?;
            continue;
        }
        tx.batch_execute(sql)
            .await
            .map_err(|e| unavailable(format!("schema migration {version}: {}", why(&e))))?;
        tx.execute(
            "INSERT INTO schema_migrations (version) VALUES ($1)",
            &[&version],
        )
        .await
        .map_err(failed)?;
        tx.commit().await.map_err(failed)?;
    }
    Ok(())
}
