//! Who holds a reservation, and whether that process is still alive: the
//! PostgreSQL analogue of the SQLite store's lock files.
//!
//! Every process claims an owner id `own_<16 hex digits>` whose digits are
//! an advisory lock key, and holds that session-level lock
//! (`pg_advisory_lock`) on a connection of its own for as long as it
//! runs. The server drops the lock when that connection ends, however the
//! process ends, so a key another process can lock proves its owner gone.
//! Should the connection drop while the process lives, it reconnects and
//! takes the lock again; meanwhile its reservations may look abandoned,
//! which is safe: finishing a voided reservation is refused (compare-and-
//! set), never issued twice.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::AbortHandle;

use super::connect::Target;
use super::{unavailable, why};
use crate::sessions::credential::OwnerStatus;
use crate::store::StoreError;

/// This process's claim.
pub(super) struct Owner {
    id: String,
    holder: AbortHandle,
}

impl Drop for Owner {
    fn drop(&mut self) {
        // Closing its connection releases the lock.
        self.holder.abort();
    }
}

impl Owner {
    /// Claims a fresh owner id and starts holding its lock.
    pub async fn claim(target: Arc<Target>) -> Result<Self, StoreError> {
        let (client, conn) = target.dedicated(None).await?;
        let key = loop {
            let key = random_key()?;
            let taken = client
                .query_one("SELECT pg_try_advisory_lock($1)", &[&key])
                .await
                .and_then(|row| row.try_get::<_, bool>(0))
                .map_err(|e| unavailable(format!("claiming an owner lock: {}", why(&e))))?;
            if taken {
                break key;
            }
        };
        let holder = tokio::spawn(hold(target, key, client, conn)).abort_handle();
        Ok(Self {
            id: id_of(key),
            holder,
        })
    }

    /// This process's owner id.
    pub fn id(&self) -> &str {
        &self.id
    }
}

/// Keeps the lock for the process's life, reconnecting when the
/// connection drops.
async fn hold(
    target: Arc<Target>,
    key: i64,
    client: tokio_postgres::Client,
    conn: tokio::task::JoinHandle<()>,
) {
    let mut held = Some((client, conn));
    loop {
        if let Some((_client, conn)) = held.take() {
            // The client must live as long as the connection does.
            let _ = conn.await;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        match target.dedicated(None).await {
            Ok((client, conn)) => {
                match client
                    .query_one("SELECT pg_advisory_lock($1)", &[&key])
                    .await
                {
                    Ok(_) => {
                        tracing::info!(owner = %id_of(key), "owner lock taken again");
                        held = Some((client, conn));
                    }
                    Err(e) => tracing::warn!(error = %why(&e), "cannot take the owner lock again"),
                }
            }
            Err(e) => tracing::warn!(error = %why(&e), "cannot reconnect to take the owner lock"),
        }
    }
}

fn random_key() -> Result<i64, StoreError> {
    let mut random = [0u8; 8];
    getrandom::fill(&mut random).map_err(|e| unavailable(format!("no randomness: {e}")))?;
    Ok(i64::from_be_bytes(random))
}

fn id_of(key: i64) -> String {
    format!("own_{}", hex::encode(key.to_be_bytes()))
}

/// The lock key of an owner id, if it is one this store hands out.
pub(super) fn key_of(id: &str) -> Option<i64> {
    let digits = id.strip_prefix("own_")?;
    let bytes: [u8; 8] = hex::decode(digits).ok()?.try_into().ok()?;
    Some(i64::from_be_bytes(bytes))
}

/// How a lock attempt on another owner's key came out, as a status:
/// taken means no process holds it (gone), refused means one does
/// (alive), an error decides nothing.
pub(super) fn status_of(locked: Result<bool, tokio_postgres::Error>) -> OwnerStatus {
    match locked {
        Ok(true) => OwnerStatus::Gone,
        Ok(false) => OwnerStatus::Alive,
        Err(_) => OwnerStatus::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_ids_round_trip_and_others_are_refused() {
        for key in [0, 1, -1, i64::MAX, i64::MIN] {
            assert_eq!(key_of(&id_of(key)), Some(key));
        }
        assert_eq!(key_of("own_12"), None);
        assert_eq!(key_of("../etc"), None);
        assert_eq!(key_of("own_zzzzzzzzzzzzzzzz"), None);
    }
}
