//! Listing the sessions a caller may see, page by page.

use super::{Relation, Service, ServiceError};
use crate::auth::Caller;
use crate::sessions::{Session, State};
use crate::store::{SessionCursor, SessionFilter};

/// Sessions read from the store per batch when listing.
const LIST_BATCH: usize = 500;

/// Sessions one listing call examines before it hands back a cursor.
pub const LIST_SCAN_BUDGET: usize = 5000;

/// One page of the sessions a caller may see.
#[derive(Debug, Default)]
pub struct SessionPage {
    /// The sessions, newest first, with the caller's relation to each.
    pub sessions: Vec<(Session, Relation)>,
    /// Where to go on from, when there may be more.
    pub next: Option<SessionCursor>,
}

impl Service {
    /// Sessions `caller` may see, newest first, at most `limit` (1 to
    /// 1000), after `before` when given; with `unreviewed`, only
    /// break-glass sessions not (yet) reviewed justified.
    ///
    /// The store is read in batches and each session checked against the
    /// caller, so a caller who sees few sessions among many still gets
    /// theirs. One call examines about [`LIST_SCAN_BUDGET`] sessions; past
    /// that it stops between two seconds of creation time and hands back a
    /// cursor that names no session, to go on from.
    pub async fn sessions(
        &self,
        caller: &Caller,
        state: Option<State>,
        unreviewed: bool,
        limit: usize,
        before: Option<SessionCursor>,
    ) -> Result<SessionPage, ServiceError> {
        self.store.sweep(self.now()).await?;
        let limit = limit.clamp(1, 1000);
        let mut page = SessionPage::default();
        let mut cursor = before;
        let mut examined = 0usize;
        loop {
            let filter = SessionFilter {
                state,
                limit: LIST_BATCH,
                before: cursor.clone(),
                unreviewed,
            };
            let batch = self.store.sessions(filter).await?;
            let exhausted = batch.len() < LIST_BATCH;
            for session in batch {
                if examined >= LIST_SCAN_BUDGET
                    && let Some(last) = &cursor
                    && session.created_at < last.created_at
                {
                    page.next = Some(SessionCursor {
                        created_at: last.created_at,
                        id: None,
                    });
                    return Ok(page);
                }
                examined += 1;
                cursor = Some(SessionCursor::at(&session));
                if let Some(relation) = self.relation(caller, &session) {
                    page.sessions.push((session, relation));
                    if page.sessions.len() == limit {
                        page.next = cursor;
                        return Ok(page);
                    }
                }
            }
            if exhausted {
                return Ok(page);
            }
        }
    }
}
