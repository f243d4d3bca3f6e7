//! Step 1: the configured store, with what a crash left behind voided.

use std::sync::Arc;

use crate::clock::Timestamp;
use crate::config::StoreConfig;
use crate::error::Error;
use crate::store::Store;

/// Opens the store `[store]` names and voids the credential reservations
/// a crash left (serials reserved for a signature that never came back).
pub async fn open(config: &StoreConfig, now: Timestamp) -> Result<Arc<dyn Store>, Error> {
    let store = crate::store::open(config).await?;
    let voided = store.recover(now).await?;
    if voided > 0 {
        tracing::warn!(
            voided,
            "credential reservations left by a crash were voided"
        );
    }
    Ok(store)
}
