//! Connection reports on their way to the issuer's trail.
//!
//! Each report is written to its own file in the spool directory (synced
//! to disk) before delivery is tried, and removed only once the issuer
//! has recorded it, or told us it had already. A gateway that stops or
//! loses its link delivers what is left when it can: none lost, and none
//! recorded twice, because the issuer records a report id once. A report
//! the issuer refuses for good (malformed, a session it does not let
//! this gateway report on) is moved to `rejected/` and logged, not
//! dropped.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use crate::client::Client;
use crate::error::Error;
use crate::sessions::ConnectionReport;

/// The longest wait between two delivery attempts while the issuer fails.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How long one delivery may take (a stopped issuer still accepts TCP).
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);

/// One spooled report: which session, and what.
#[derive(Debug, Serialize, Deserialize)]
struct Spooled {
    session: String,
    connection: ConnectionReport,
}

/// The spool directory.
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    wake: Notify,
}

/// A fresh report id: `con_` and 26 base32 characters of randomness.
pub fn report_id() -> Result<String, Error> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes)
        .map_err(|e| Error::InvalidArgument(format!("no randomness from the OS: {e}")))?;
    let body = data_encoding::BASE32_NOPAD
        .encode(&bytes)
        .to_ascii_lowercase();
    Ok(format!("con_{body}"))
}

impl Spool {
    /// Opens (creating, 0700) the spool at `dir`.
    pub fn open(dir: &Path) -> Result<Arc<Self>, Error> {
        use std::os::unix::fs::DirBuilderExt;
        for d in [dir.to_path_buf(), dir.join("rejected")] {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&d)
                .map_err(|e| Error::io(&d, e))?;
        }
        Ok(Arc::new(Self {
            dir: dir.to_path_buf(),
            wake: Notify::new(),
        }))
    }

    /// Writes a report to disk and wakes the delivery.
    pub fn put(&self, session: &str, connection: ConnectionReport) -> Result<(), Error> {
        let path = self.dir.join(format!("{}.json", connection.report));
        let body = serde_json::to_vec(&Spooled {
            session: session.to_owned(),
            connection,
        })
        .map_err(|e| Error::InvalidArgument(format!("connection report: {e}")))?;
        crate::fsio::write_atomic(&path, &body, 0o600)?;
        self.wake.notify_one();
        Ok(())
    }

    /// The reports waiting, oldest first.
    pub fn pending(&self) -> Vec<PathBuf> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut files: Vec<(std::time::SystemTime, PathBuf)> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.extension().is_some_and(|x| x == "json")
                    && p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with("con_"))
            })
            .map(|p| {
                let t = std::fs::metadata(&p)
                    .and_then(|m| m.modified())
                    .unwrap_or(std::time::UNIX_EPOCH);
                (t, p)
            })
            .collect();
        files.sort();
        files.into_iter().map(|(_, p)| p).collect()
    }

    /// Delivers reports to the issuer for as long as the task runs.
    pub async fn deliver(self: Arc<Self>, client: Arc<Client>) {
        let mut backoff = Duration::from_millis(250);
        loop {
            let delivered = self.deliver_pending(&client).await;
            let wait = if delivered {
                backoff = Duration::from_millis(250);
                Duration::from_secs(60)
            } else {
                backoff = (backoff * 2).min(MAX_BACKOFF);
                backoff
            };
            let _ = tokio::time::timeout(wait, self.wake.notified()).await;
        }
    }

    /// Tries every waiting report once; false if one must be tried again.
    async fn deliver_pending(&self, client: &Client) -> bool {
        for path in self.pending() {
            match self.deliver_one(client, &path).await {
                Ok(()) => {}
                Err(e) => {
                    tracing::warn!(file = %path.display(), error = %e,
                        "connection report not delivered yet; kept in the spool");
                    return false;
                }
            }
        }
        true
    }

    async fn deliver_one(&self, client: &Client, path: &Path) -> Result<(), Error> {
        let text = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let spooled: Spooled = match serde_json::from_slice(&text) {
            Ok(s) => s,
            Err(e) => {
                self.reject(path, &format!("unreadable: {e}"));
                return Ok(());
            }
        };
        let sent = tokio::time::timeout(
            ATTEMPT_TIMEOUT,
            client.report_connection(&spooled.session, &spooled.connection),
        )
        .await
        .unwrap_or_else(|_| {
            Err(Error::Connection(
                "the issuer did not answer in time".into(),
            ))
        });
        match sent {
            Ok(recorded) => {
                tracing::info!(session = %spooled.session, report = %spooled.connection.report,
                    again = !recorded, "connection report delivered");
                std::fs::remove_file(path).map_err(|e| Error::io(path, e))?;
                crate::fsio::sync_dir(&self.dir)?;
                Ok(())
            }
            // Refused for good: the issuer will never take it.
            Err(Error::Remote {
                status: status @ (400 | 404),
                code,
                message,
            }) => {
                self.reject(path, &format!("HTTP {status} {code}: {message}"));
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    fn reject(&self, path: &Path, why: &str) {
        tracing::error!(file = %path.display(), reason = why,
            "the issuer refused a connection report; moved to rejected/");
        if let Some(name) = path.file_name() {
            let _ = std::fs::rename(path, self.dir.join("rejected").join(name));
        }
    }
}
