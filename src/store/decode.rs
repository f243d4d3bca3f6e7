//! Stored text back into lockstep's values, for every backend: a value
//! lockstep does not know means the store holds what it did not write
//! (`store_corrupt`), never a panic or a guess.

use super::{CredentialKind, StoreError};
use crate::clock::Timestamp;
use crate::sessions::{Profile, ReviewState, RevocationReason, Session, SessionId, State};

fn corrupt(message: String) -> StoreError {
    StoreError::Corrupt(message)
}

/// A session from its stored JSON body; none stored: no such session.
pub(super) fn session(id: &SessionId, body: Option<String>) -> Result<Session, StoreError> {
    let body = body.ok_or_else(|| StoreError::NotFound(id.clone()))?;
    serde_json::from_str(&body).map_err(|e| corrupt(format!("session {id}: {e}")))
}

/// The sessions of `(id, body)` rows, skipping (and logging) any that do
/// not decode: such a session refuses every operation anyway.
pub(super) fn live_sessions(rows: Vec<(String, String)>) -> Vec<Session> {
    rows.into_iter()
        .filter_map(|(id, body)| {
            let decoded = SessionId::parse(&id)
                .map_err(|_| corrupt(format!("session id `{id}`")))
                .and_then(|id| session(&id, Some(body)));
            decoded
                .map_err(|e| tracing::error!(session = %id, error = %e, "skipping an unreadable session"))
                .ok()
        })
        .collect()
}

/// A credential profile by name.
pub(super) fn profile(text: &str) -> Result<Profile, StoreError> {
    Profile::parse(text).ok_or_else(|| corrupt(format!("unknown profile `{text}`")))
}

/// A session state by name, with its count (`SELECT state, count(*)`).
pub(super) fn state_count(text: &str, count: i64) -> Result<(State, u64), StoreError> {
    let state = [State::Pending, State::Open, State::Closed]
        .into_iter()
        .find(|s| s.as_str() == text)
        .ok_or_else(|| corrupt(format!("unknown session state `{text}`")))?;
    Ok((state, u64::try_from(count).unwrap_or(0)))
}

/// A `(review state, count)` row of the break-glass counts.
pub(super) fn review_count(text: &str, count: i64) -> Result<(ReviewState, u64), StoreError> {
    let state = ReviewState::parse(text)
        .ok_or_else(|| corrupt(format!("unknown break-glass review state `{text}`")))?;
    Ok((state, u64::try_from(count).unwrap_or(0)))
}

/// The store's `break_glass` and `review_by` columns of a session: its
/// review state (none for other sessions) and, while a review is
/// awaited, when it is due.
pub(super) fn review_columns(session: &Session) -> (Option<&'static str>, Option<i64>) {
    let state = session.review_state();
    let review_by = session
        .break_glass
        .as_ref()
        .and_then(|b| b.review_by)
        .map(Timestamp::unix);
    (state.map(ReviewState::as_str), review_by)
}

/// The `recheck_at` column of a session: when a condition fails by time
/// while it is live (none once closed), for the sweep.
pub(super) fn recheck_column(session: &Session) -> Option<i64> {
    session.recheck_at().map(Timestamp::unix)
}

/// A credential kind by name.
pub(super) fn kind(text: &str) -> Result<CredentialKind, StoreError> {
    CredentialKind::parse(text).ok_or_else(|| corrupt(format!("unknown credential kind `{text}`")))
}

/// A revocation reason by its RFC 5280 code.
pub(super) fn reason(code: i64) -> Result<RevocationReason, StoreError> {
    u8::try_from(code)
        .ok()
        .and_then(RevocationReason::from_code)
        .ok_or_else(|| corrupt(format!("unknown revocation reason {code}")))
}
