//! Opening the store the configuration names (`[store] type`), as the one
//! `Arc<dyn Store>` the rest of lockstep uses.

use std::sync::Arc;

use super::{Store, StoreError};
use crate::config::StoreConfig;

/// Opens the configured store, creating and migrating it as needed.
///
/// A store this build leaves out is refused when the configuration is
/// parsed; should such a configuration be built by hand, opening it is
/// refused here with the same advice.
pub async fn open(config: &StoreConfig) -> Result<Arc<dyn Store>, StoreError> {
    match config {
        #[cfg(feature = "sqlite")]
        StoreConfig::Sqlite(sqlite) => {
            let path = sqlite.path.clone();
            // Opening creates, migrates and checks the file: blocking work.
            let store = tokio::task::spawn_blocking(move || super::SqliteStore::open(&path))
                .await
                .map_err(|e| StoreError::Unavailable(format!("opening the store failed: {e}")))??;
            Ok(Arc::new(store))
        }
        #[cfg(not(feature = "sqlite"))]
        StoreConfig::Sqlite(_) => Err(StoreError::Unavailable(
            config.feature().missing("[store] type = \"sqlite\""),
        )),
        #[cfg(feature = "postgres")]
        StoreConfig::Postgres(postgres) => {
            Ok(Arc::new(super::PostgresStore::connect(postgres).await?))
        }
        #[cfg(not(feature = "postgres"))]
        StoreConfig::Postgres(_) => Err(StoreError::Unavailable(
            config.feature().missing("[store] type = \"postgres\""),
        )),
    }
}
