//! `lockstep audit verify | export`: offline, from the store file or an
//! export, with only the CA root.

use std::path::{Path, PathBuf};

use clap::Subcommand;
use der::DecodePem;
use x509_cert::Certificate;

use super::Output;
use crate::audit::{Trail, verify};
use crate::clock::Timestamp;
use crate::config::Config;
use crate::error::Error;

/// Check or extract the audit trail.
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Verify the hash chain and the signed checkpoints; exit 1 naming
    /// every edited, deleted, inserted or reordered entry, truncation or
    /// forged checkpoint.
    Verify {
        /// The SQLite store file, or a `postgres://` URL (default: the
        /// `[store]` of the configuration).
        #[arg(long, conflicts_with = "export")]
        db: Option<PathBuf>,
        /// Verify an export (JSON lines) instead of a store file.
        #[arg(long)]
        export: Option<PathBuf>,
        /// The trusted root certificate (default: `[ca] dir`/root.pem).
        #[arg(long)]
        root: Option<PathBuf>,
    },
    /// Print the trail as JSON lines: certificates, entries, checkpoints.
    Export {
        /// The SQLite store file, or a `postgres://` URL (default: the
        /// `[store]` of the configuration).
        #[arg(long)]
        db: Option<PathBuf>,
        /// Only the entries of this session.
        #[arg(long)]
        session: Option<String>,
        /// Only entries at or after this time (RFC 3339).
        #[arg(long)]
        since: Option<String>,
    },
}

/// Where the trail is read from.
enum Source {
    /// A SQLite store file.
    File(PathBuf),
    /// A PostgreSQL database.
    Postgres(crate::config::PostgresConfig),
}

/// Whether `--db` names a PostgreSQL database rather than a file.
fn is_postgres_url(db: &Path) -> bool {
    db.to_str()
        .is_some_and(|t| t.starts_with("postgres://") || t.starts_with("postgresql://"))
}

fn source(config: &Path, db: Option<PathBuf>) -> Result<Source, Error> {
    match db {
        Some(db) if is_postgres_url(&db) => {
            // The password and CA, if any, are the configuration's
            // (`[store] type = "postgres"`), by reference as ever.
            let configured = Config::load(config).ok().and_then(|c| match c.store {
                Some(crate::config::StoreConfig::Postgres(pg)) => Some(pg),
                _ => None,
            });
            let url = db.to_string_lossy().into_owned();
            Ok(Source::Postgres(crate::config::PostgresConfig {
                url,
                password: configured.as_ref().and_then(|c| c.password.clone()),
                ca_file: configured.as_ref().and_then(|c| c.ca_file.clone()),
                pool_size: None,
            }))
        }
        Some(db) => Ok(Source::File(db)),
        None => match Config::load(config)?.store {
            Some(crate::config::StoreConfig::Postgres(pg)) => Ok(Source::Postgres(pg)),
            Some(store) => store
                .sqlite_path()
                .map(|p| Source::File(p.to_owned()))
                .ok_or_else(|| Error::InvalidArgument("no --db and no [store] to read".into())),
            None => Err(Error::InvalidArgument(
                "no --db and no [store] in the configuration".into(),
            )),
        },
    }
}

fn read_trail(config: &Path, db: Option<PathBuf>) -> Result<Trail, Error> {
    match source(config, db)? {
        Source::File(path) => {
            if !path.exists() {
                return Err(Error::InvalidArgument(format!(
                    "{} does not exist",
                    path.display()
                )));
            }
            read_sqlite(&path)
        }
        Source::Postgres(pg) => read_postgres(&pg),
    }
}

/// The trail of a PostgreSQL store, read in one read-only snapshot.
#[cfg(feature = "postgres")]
fn read_postgres(config: &crate::config::PostgresConfig) -> Result<Trail, Error> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::io("tokio runtime", e))?;
    runtime.block_on(async {
        let client = crate::store::connect_alone(config).await?;
        Trail::from_postgres(&client)
            .await
            .map_err(Error::InvalidArgument)
    })
}

/// A build without PostgreSQL cannot read a PostgreSQL store.
#[cfg(not(feature = "postgres"))]
fn read_postgres(_config: &crate::config::PostgresConfig) -> Result<Trail, Error> {
    Err(Error::InvalidArgument(
        crate::config::Feature::Postgres.missing("reading a PostgreSQL store"),
    ))
}

/// The trail of the SQLite store file at `path`, read-only.
#[cfg(feature = "sqlite")]
fn read_sqlite(path: &Path) -> Result<Trail, Error> {
    Trail::from_sqlite(path).map_err(Error::InvalidArgument)
}

/// A build without SQLite cannot read a store file.
#[cfg(not(feature = "sqlite"))]
fn read_sqlite(_path: &Path) -> Result<Trail, Error> {
    Err(Error::InvalidArgument(
        crate::config::Feature::Sqlite.missing("reading a SQLite store file"),
    ))
}

/// Runs an `audit` subcommand.
pub fn run(config_path: &Path, cmd: AuditCommand, out: Output) -> Result<(), Error> {
    match cmd {
        AuditCommand::Verify { db, export, root } => {
            let trail = match &export {
                Some(path) => {
                    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
                    Trail::from_export(&text).map_err(Error::InvalidArgument)?
                }
                None => read_trail(config_path, db)?,
            };
            let root = match root {
                Some(r) => r,
                None => Config::load(config_path)?.ca.dir.join("root.pem"),
            };
            let pem = std::fs::read_to_string(&root).map_err(|e| Error::io(&root, e))?;
            let roots = vec![Certificate::from_pem(&pem).map_err(|e| {
                Error::InvalidArgument(format!("{}: not a PEM certificate: {e}", root.display()))
            })?];
            let report = verify(
                trail.entries,
                &trail.checkpoints,
                &trail.certificates,
                &roots,
            );
            out.print(&report, || {
                let mut t = String::new();
                if report.ok() {
                    t.push_str(&format!(
                        "audit trail OK: {} entries, {} checkpoints, signed up to entry {}",
                        report.entries, report.checkpoints, report.signed_upto
                    ));
                    if report.unsigned_tail > 0 {
                        t.push_str(&format!(
                            "; {} entries after the last checkpoint (chained, not yet signed)",
                            report.unsigned_tail
                        ));
                    }
                    t.push('\n');
                } else {
                    for p in &report.problems {
                        t.push_str(&format!("{}: {}\n", p.place, p.what));
                    }
                }
                t
            });
            if report.ok() {
                Ok(())
            } else {
                Err(Error::AuditFailed(format!(
                    "the audit trail failed verification ({} problem(s))",
                    report.problems.len()
                )))
            }
        }
        AuditCommand::Export { db, session, since } => {
            let trail = read_trail(config_path, db)?;
            let since = since
                .map(|s| Timestamp::parse_rfc3339(&s).map_err(Error::InvalidArgument))
                .transpose()?;
            let text = trail
                .export(session.as_deref(), since.map(Timestamp::unix))
                .map_err(Error::InvalidArgument)?;
            print!("{text}");
            Ok(())
        }
    }
}
