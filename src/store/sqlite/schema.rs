//! The schema and its migrations.

use rusqlite::{Connection, Transaction, TransactionBehavior, params};

use super::{corrupt, unavailable};
use crate::audit::{GENESIS, entry_hash};
use crate::store::StoreError;

/// One schema change.
enum Migration {
    /// SQL statements.
    Sql(&'static str),
    /// A change that needs code (computing values for existing rows).
    Code(fn(&Transaction<'_>) -> Result<(), StoreError>),
}

/// Schema migrations, applied in order; `user_version` counts those done.
const MIGRATIONS: &[Migration] = &[
    // 1: sessions, credentials, events.
    Migration::Sql(
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
    ),
    // 2: tokens beside certificates, revocations, counters.
    Migration::Sql(
        r#"
    ALTER TABLE credentials ADD COLUMN kind TEXT NOT NULL DEFAULT 'certificate';
    ALTER TABLE credentials ADD COLUMN counted INTEGER NOT NULL DEFAULT 1;

    CREATE TABLE revocations (
        serial      TEXT PRIMARY KEY REFERENCES credentials(serial),
        session_id  TEXT NOT NULL,
        revoked_at  INTEGER NOT NULL,
        reason      INTEGER NOT NULL,
        not_after   INTEGER NOT NULL
    ) STRICT;
    CREATE INDEX revocations_live ON revocations(not_after);

    CREATE TABLE counters (
        name   TEXT PRIMARY KEY,
        value  INTEGER NOT NULL
    ) STRICT;
    INSERT INTO counters (name, value) VALUES ('crl_number', 0), ('revocations', 0);
    "#,
    ),
    // 3: the audit trail: hash chain, checkpoints, signer certificates.
    Migration::Sql(
        r#"
    ALTER TABLE events ADD COLUMN prev_hash BLOB;
    ALTER TABLE events ADD COLUMN hash BLOB;

    CREATE TABLE checkpoints (
        number     INTEGER PRIMARY KEY,
        upto       INTEGER NOT NULL,
        head       BLOB NOT NULL,
        at         INTEGER NOT NULL,
        signer     BLOB NOT NULL,
        signature  BLOB NOT NULL
    ) STRICT;

    CREATE TABLE audit_certificates (
        id        BLOB PRIMARY KEY,
        der       BLOB NOT NULL,
        added_at  INTEGER NOT NULL
    ) STRICT;
    "#,
    ),
    // 4: chain the events recorded before the trail was chained.
    Migration::Code(chain_existing_events),
    // 5: reservations name their owner and carry a lease.
    Migration::Sql(
        r#"
    ALTER TABLE credentials ADD COLUMN owner TEXT;
    ALTER TABLE credentials ADD COLUMN lease_until INTEGER;
    "#,
    ),
    // 6: the issuing CA of each certificate, for replicas with issuing
    // keys of their own.
    Migration::Sql(
        r#"
    ALTER TABLE credentials ADD COLUMN issuer TEXT;
    ALTER TABLE revocations ADD COLUMN issuer TEXT;
    "#,
    ),
    // 7: webhook cursors (src/store/webhooks.rs).
    Migration::Sql(
        r#"
    CREATE TABLE webhook_cursors (
        endpoint      TEXT PRIMARY KEY,
        position      INTEGER NOT NULL,
        failures      INTEGER NOT NULL,
        next_attempt  INTEGER,
        last_error    TEXT,
        delivered     INTEGER NOT NULL,
        delivered_at  INTEGER,
        holder        TEXT,
        lease_until   INTEGER
    ) STRICT;
    "#,
    ),
    // 8: break-glass sessions: their review state and deadline, for the
    // rate limit, the sweep and `status --unreviewed`.
    Migration::Sql(
        r#"
    ALTER TABLE sessions ADD COLUMN break_glass TEXT;
    ALTER TABLE sessions ADD COLUMN review_by INTEGER;
    CREATE INDEX sessions_break_glass ON sessions(requester, created_at)
        WHERE break_glass IS NOT NULL;
    CREATE INDEX sessions_review_due ON sessions(review_by) WHERE break_glass = 'awaiting';
    "#,
    ),
    // 9: the Shared Signals SETs received, by transmitter and jti, so a
    // replay is refused (src/signals).
    Migration::Sql(
        r#"
    CREATE TABLE signals_received (
        issuer       TEXT NOT NULL,
        jti          TEXT NOT NULL,
        iat          INTEGER NOT NULL,
        received_at  INTEGER NOT NULL,
        PRIMARY KEY (issuer, jti)
    ) STRICT;
    CREATE INDEX signals_received_iat ON signals_received(iat);
    "#,
    ),
    // 10: when a live session's conditions fail by time alone (the
    // requester's token expiring under `requester_token_valid`), for the
    // sweep; sessions stored before it are re-checked at their next mint.
    Migration::Sql(
        r#"
    ALTER TABLE sessions ADD COLUMN recheck_at INTEGER;
    CREATE INDEX sessions_recheck ON sessions(recheck_at) WHERE recheck_at IS NOT NULL;
    "#,
    ),
];

/// Computes the hash chain over events recorded before the trail was
/// chained, renumbering them densely from 1.
fn chain_existing_events(tx: &Transaction<'_>) -> Result<(), StoreError> {
    let rows: Vec<(i64, i64, Option<String>, String, String)> = {
        let mut stmt = tx
            .prepare("SELECT seq, at, session_id, kind, body FROM events ORDER BY seq")
            .map_err(unavailable)?;
        stmt.query_map([], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })
        .map_err(unavailable)?
        .collect::<Result<_, _>>()
        .map_err(unavailable)?
    };
    let mut prev = GENESIS;
    for (new_seq, (seq, at, session, kind, body)) in (1i64..).zip(rows) {
        let hash = entry_hash(&prev, new_seq as u64, at, session.as_deref(), &kind, &body);
        tx.execute(
            "UPDATE events SET seq = ?2, prev_hash = ?3, hash = ?4 WHERE seq = ?1",
            params![seq, new_seq, prev.to_vec(), hash.to_vec()],
        )
        .map_err(unavailable)?;
        prev = hash;
    }
    Ok(())
}

pub(super) fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let done: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(unavailable)?;
    if done as usize > MIGRATIONS.len() {
        return Err(corrupt(format!(
            "the store has schema version {done}, newer than this lockstep ({}); upgrade lockstep",
            MIGRATIONS.len()
        )));
    }
    for (i, migration) in MIGRATIONS.iter().enumerate().skip(done as usize) {
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(unavailable)?;
        match migration {
            Migration::Sql(sql) => tx.execute_batch(sql).map_err(unavailable)?,
            Migration::Code(f) => f(&tx)?,
        }
        tx.pragma_update(None, "user_version", (i + 1) as i64)
            .map_err(unavailable)?;
        tx.commit().map_err(unavailable)?;
    }
    Ok(())
}
