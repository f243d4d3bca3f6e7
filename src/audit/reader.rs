//! Reading a trail straight from a store file (or a PostgreSQL
//! database), read-only and without the store's own code paths, for
//! `lockstep audit verify` and `export`.

#[cfg(feature = "sqlite")]
use std::path::Path;

#[cfg(feature = "sqlite")]
use rusqlite::{Connection, OpenFlags, params};

use super::{Checkpoint, Entry, ExportLine};

/// A trail as read from a file.
#[derive(Clone, Debug, Default)]
pub struct Trail {
    /// Entries in stored order.
    pub entries: Vec<Entry>,
    /// Checkpoints in stored order.
    pub checkpoints: Vec<Checkpoint>,
    /// Audit signer certificates and their chain (DER).
    pub certificates: Vec<Vec<u8>>,
}

#[cfg(feature = "sqlite")]
fn hex_blob(b: Option<Vec<u8>>) -> String {
    b.map(hex::encode).unwrap_or_default()
}

/// Opens a store file for reading. A WAL store needs its `-shm` index,
/// which SQLite cannot create on a read-only filesystem (a snapshot, a
/// read-only mount); a store closed cleanly has no write-ahead log left,
/// so it is then read as an immutable file.
#[cfg(feature = "sqlite")]
fn open_read_only(path: &Path) -> Result<Connection, String> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let first = Connection::open_with_flags(path, flags).and_then(|c| {
        c.query_row("SELECT COUNT(*) FROM sqlite_master", [], |_| Ok(()))?;
        Ok(c)
    });
    let e = match first {
        Ok(c) => return Ok(c),
        Err(e) => e,
    };
    if !path.is_file() {
        return Err(format!("cannot open {}: {e}", path.display()));
    }
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    if std::fs::metadata(&wal).is_ok_and(|m| m.len() > 0) {
        return Err(format!(
            "cannot open {}: {e}; it has a write-ahead log SQLite cannot read here (read-only filesystem?): copy the store with its -wal and -shm files to a writable directory and read the copy",
            path.display()
        ));
    }
    let text = path.to_string_lossy();
    let escaped = text
        .replace('%', "%25")
        .replace('?', "%3f")
        .replace('#', "%23");
    Connection::open_with_flags(
        format!("file:{escaped}?immutable=1"),
        flags | OpenFlags::SQLITE_OPEN_URI,
    )
    .map_err(|e| format!("cannot open {}: {e}", path.display()))
}

impl Trail {
    /// Reads the trail of the SQLite store at `path` (read-only).
    #[cfg(feature = "sqlite")]
    pub fn from_sqlite(path: &Path) -> Result<Self, String> {
        let conn = open_read_only(path)?;
        let err = |e: rusqlite::Error| format!("{}: {e}", path.display());
        let mut trail = Self::default();
        let mut stmt = conn
            .prepare(
                "SELECT seq, at, session_id, kind, body, prev_hash, hash FROM events ORDER BY seq",
            )
            .map_err(err)?;
        let rows = stmt
            .query_map([], |r| {
                Ok(Entry {
                    seq: r.get::<_, i64>(0)? as u64,
                    at: r.get(1)?,
                    session: r.get(2)?,
                    kind: r.get(3)?,
                    body: r.get(4)?,
                    prev_hash: hex_blob(r.get(5)?),
                    hash: hex_blob(r.get(6)?),
                })
            })
            .map_err(err)?;
        for row in rows {
            trail.entries.push(row.map_err(err)?);
        }
        let mut stmt = conn
            .prepare(
                "SELECT number, upto, head, at, signer, signature FROM checkpoints ORDER BY number",
            )
            .map_err(err)?;
        let rows = stmt
            .query_map([], |r| {
                Ok(Checkpoint {
                    number: r.get::<_, i64>(0)? as u64,
                    upto: r.get::<_, i64>(1)? as u64,
                    head: hex::encode(r.get::<_, Vec<u8>>(2)?),
                    at: r.get(3)?,
                    signer: hex::encode(r.get::<_, Vec<u8>>(4)?),
                    signature: hex::encode(r.get::<_, Vec<u8>>(5)?),
                })
            })
            .map_err(err)?;
        for row in rows {
            trail.checkpoints.push(row.map_err(err)?);
        }
        let mut stmt = conn
            .prepare("SELECT der FROM audit_certificates ORDER BY added_at, id")
            .map_err(err)?;
        let rows = stmt.query_map(params![], |r| r.get(0)).map_err(err)?;
        for row in rows {
            trail.certificates.push(row.map_err(err)?);
        }
        Ok(trail)
    }

    /// Reads the trail of a PostgreSQL store, as one consistent snapshot
    /// (a read-only REPEATABLE READ transaction): entries appended while
    /// it reads are not half in it.
    #[cfg(feature = "postgres")]
    pub async fn from_postgres(client: &tokio_postgres::Client) -> Result<Self, String> {
        let err = |e: tokio_postgres::Error| {
            let mut text = e.to_string();
            if let Some(db) = e.as_db_error() {
                text = format!("{text}: {}", db.message());
            }
            text
        };
        client
            .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .await
            .map_err(err)?;
        let mut trail = Self::default();
        let rows = client
            .query(
                "SELECT seq, at, session_id, kind, body, prev_hash, hash FROM events ORDER BY seq",
                &[],
            )
            .await
            .map_err(err)?;
        for r in &rows {
            trail.entries.push(Entry {
                seq: r.try_get::<_, i64>(0).map_err(err)? as u64,
                at: r.try_get(1).map_err(err)?,
                session: r.try_get(2).map_err(err)?,
                kind: r.try_get(3).map_err(err)?,
                body: r.try_get(4).map_err(err)?,
                prev_hash: hex::encode(r.try_get::<_, Vec<u8>>(5).map_err(err)?),
                hash: hex::encode(r.try_get::<_, Vec<u8>>(6).map_err(err)?),
            });
        }
        let rows = client
            .query(
                "SELECT number, upto, head, at, signer, signature FROM checkpoints ORDER BY number",
                &[],
            )
            .await
            .map_err(err)?;
        for r in &rows {
            trail.checkpoints.push(Checkpoint {
                number: r.try_get::<_, i64>(0).map_err(err)? as u64,
                upto: r.try_get::<_, i64>(1).map_err(err)? as u64,
                head: hex::encode(r.try_get::<_, Vec<u8>>(2).map_err(err)?),
                at: r.try_get(3).map_err(err)?,
                signer: hex::encode(r.try_get::<_, Vec<u8>>(4).map_err(err)?),
                signature: hex::encode(r.try_get::<_, Vec<u8>>(5).map_err(err)?),
            });
        }
        let rows = client
            .query(
                "SELECT der FROM audit_certificates ORDER BY added_at, id",
                &[],
            )
            .await
            .map_err(err)?;
        for r in &rows {
            trail.certificates.push(r.try_get(0).map_err(err)?);
        }
        client.batch_execute("COMMIT").await.map_err(err)?;
        Ok(trail)
    }

    /// Reads an export (JSON lines).
    pub fn from_export(text: &str) -> Result<Self, String> {
        let mut trail = Self::default();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let parsed: ExportLine =
                serde_json::from_str(line).map_err(|e| format!("export line {}: {e}", i + 1))?;
            match parsed {
                ExportLine::Certificate(pem) => {
                    let (_, der) = der::pem::decode_vec(pem.as_bytes())
                        .map_err(|e| format!("export line {}: certificate: {e}", i + 1))?;
                    trail.certificates.push(der);
                }
                ExportLine::Entry(e) => trail.entries.push(e),
                ExportLine::Checkpoint(c) => trail.checkpoints.push(c),
            }
        }
        Ok(trail)
    }

    /// The export (JSON lines): certificates, then entries (optionally only
    /// those of `session` and at or after `since`), then checkpoints.
    pub fn export(&self, session: Option<&str>, since: Option<i64>) -> Result<String, String> {
        let mut out = String::new();
        let mut push = |line: &ExportLine| -> Result<(), String> {
            out.push_str(&serde_json::to_string(line).map_err(|e| e.to_string())?);
            out.push('\n');
            Ok(())
        };
        for der in &self.certificates {
            let pem = der::pem::encode_string("CERTIFICATE", der::pem::LineEnding::LF, der)
                .map_err(|e| e.to_string())?;
            push(&ExportLine::Certificate(pem))?;
        }
        for e in &self.entries {
            if session.is_some_and(|s| e.session.as_deref() != Some(s)) {
                continue;
            }
            if since.is_some_and(|t| e.at < t) {
                continue;
            }
            push(&ExportLine::Entry(e.clone()))?;
        }
        for c in &self.checkpoints {
            push(&ExportLine::Checkpoint(c.clone()))?;
        }
        Ok(out)
    }
}
