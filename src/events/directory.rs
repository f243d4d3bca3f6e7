//! What each session of the trail is about: its resource and tenant,
//! looked up in the store once and remembered (they never change after the
//! request).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::OnceCell;

use crate::clock::Clock;
use crate::sessions::SessionId;
use crate::store::{Store, StoreError};

/// Sessions remembered per generation; two generations are kept, so the
/// cache holds between this many and twice this many sessions.
const GENERATION: usize = 16_384;

/// The resource and tenant of a session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionInfo {
    /// The resource it was requested for.
    pub resource: String,
    /// The tenant owning that resource, if any.
    pub tenant: Option<String>,
}

/// A looked-up session: none when the id names no session.
type Cell = Arc<OnceCell<Option<Arc<SessionInfo>>>>;

/// Looks sessions up by id, remembering the answers. Concurrent lookups of
/// one session share one store read; a failed read is not remembered, so
/// the next lookup tries again.
pub struct SessionDirectory {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    cache: Mutex<Generations>,
}

#[derive(Default)]
struct Generations {
    current: HashMap<String, Cell>,
    previous: HashMap<String, Cell>,
}

impl Generations {
    /// The cell of `id`, new if it was not remembered.
    fn cell(&mut self, id: &str) -> Cell {
        if let Some(c) = self.current.get(id) {
            return c.clone();
        }
        let cell = self.previous.remove(id).unwrap_or_default();
        if self.current.len() >= GENERATION {
            self.previous = std::mem::take(&mut self.current);
        }
        self.current.insert(id.to_owned(), cell.clone());
        cell
    }
}

impl std::fmt::Debug for SessionDirectory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionDirectory").finish_non_exhaustive()
    }
}

impl SessionDirectory {
    /// A directory over `store`.
    pub fn new(store: Arc<dyn Store>, clock: Arc<dyn Clock>) -> Self {
        Self {
            store,
            clock,
            cache: Mutex::new(Generations::default()),
        }
    }

    /// The session an audit entry names: its resource and tenant, or none
    /// when no session has that id (a refused call on an unknown id). A
    /// store that cannot answer, or an id that is not a session id, is an
    /// error: the caller must not decide anything on a guess.
    pub async fn info(&self, id: &str) -> Result<Option<Arc<SessionInfo>>, StoreError> {
        let parsed = SessionId::parse(id).map_err(|_| {
            StoreError::Corrupt(format!(
                "an audit entry names `{}`, which is not a session id",
                id.chars().take(64).collect::<String>().escape_debug()
            ))
        })?;
        let cell = self
            .cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .cell(id);
        let found = cell
            .get_or_try_init(|| async {
                match self.store.session(&parsed, self.clock.now()).await {
                    Ok(s) => Ok(Some(Arc::new(SessionInfo {
                        resource: s.request.resource,
                        tenant: s.request.tenant,
                    }))),
                    Err(StoreError::NotFound(_)) => Ok(None),
                    Err(e) => Err(e),
                }
            })
            .await?;
        Ok(found.clone())
    }
}
