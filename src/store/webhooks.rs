//! Webhook cursors: for each configured endpoint, the last entry of the
//! trail it has been given (or that did not concern it), its failed
//! attempts on the next one, and which process delivers to it.
//!
//! Exactly one process delivers to an endpoint at a time: it holds the
//! cursor's lease, renews it as it goes and gives it back when it stops;
//! a lease not renewed in time (its process died) may be taken over. The
//! cursor moves only after a delivery the receiver acknowledged, so after
//! any crash delivery resumes at the first entry not acknowledged: at
//! least once, in order.

use serde::Serialize;

use crate::clock::Timestamp;

/// One endpoint's cursor, as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct WebhookCursor {
    /// The endpoint's `name` in the configuration.
    pub endpoint: String,
    /// The sequence number of the last entry handled.
    pub position: u64,
    /// Failed attempts in a row at delivering the entry after `position`.
    pub failures: u32,
    /// When the next attempt is due, while failing.
    pub next_attempt: Option<Timestamp>,
    /// What went wrong last (status or connection error; never a body).
    pub last_error: Option<String>,
    /// Deliveries acknowledged, in all.
    pub delivered: u64,
    /// When the last acknowledged delivery was.
    pub delivered_at: Option<Timestamp>,
    /// The process delivering to it (its store owner id), if any.
    pub holder: Option<String>,
    /// Until when that process holds it.
    pub lease_until: Option<Timestamp>,
}

/// The columns of [`WebhookCursor`], in its order, for both backends.
pub(super) const COLUMNS: &str = "endpoint, position, failures, next_attempt, last_error, \
     delivered, delivered_at, holder, lease_until";

/// Takes (or creates at `start`) the cursor of an endpoint for `holder`
/// unless another live holder has it: parameters endpoint, start, holder,
/// lease_until, now. Returns the row when taken, none when held elsewhere.
pub(super) fn claim_sql(p: fn(usize) -> String) -> String {
    format!(
        "INSERT INTO webhook_cursors (endpoint, position, failures, delivered, holder, lease_until)
         VALUES ({e}, {s}, 0, 0, {h}, {l})
         ON CONFLICT (endpoint) DO UPDATE SET holder = excluded.holder, lease_until = excluded.lease_until
         WHERE webhook_cursors.holder IS NULL OR webhook_cursors.holder = excluded.holder
            OR webhook_cursors.lease_until < {n}
         RETURNING {COLUMNS}",
        e = p(1),
        s = p(2),
        h = p(3),
        l = p(4),
        n = p(5),
    )
}

/// Saves a cursor its holder moved, renewing the lease: parameters
/// endpoint, position, failures, next_attempt, last_error, delivered,
/// delivered_at, holder, lease_until. Changes nothing (0 rows) when the
/// holder lost it.
pub(super) fn save_sql(p: fn(usize) -> String) -> String {
    format!(
        "UPDATE webhook_cursors SET position = {}, failures = {}, next_attempt = {}, last_error = {},
             delivered = {}, delivered_at = {}, lease_until = {}
         WHERE endpoint = {} AND holder = {}",
        p(2),
        p(3),
        p(4),
        p(5),
        p(6),
        p(7),
        p(9),
        p(1),
        p(8),
    )
}

/// Gives a cursor back: parameters endpoint, holder.
pub(super) fn release_sql(p: fn(usize) -> String) -> String {
    format!(
        "UPDATE webhook_cursors SET holder = NULL, lease_until = NULL
         WHERE endpoint = {} AND holder = {}",
        p(1),
        p(2),
    )
}

/// Every cursor, by endpoint name.
pub(super) fn list_sql() -> String {
    format!("SELECT {COLUMNS} FROM webhook_cursors ORDER BY endpoint")
}

/// The columns of a row as read, before decoding.
pub(super) struct Row {
    pub endpoint: String,
    pub position: i64,
    pub failures: i64,
    pub next_attempt: Option<i64>,
    pub last_error: Option<String>,
    pub delivered: i64,
    pub delivered_at: Option<i64>,
    pub holder: Option<String>,
    pub lease_until: Option<i64>,
}

impl Row {
    pub(super) fn decode(self) -> WebhookCursor {
        WebhookCursor {
            endpoint: self.endpoint,
            position: u64::try_from(self.position).unwrap_or(0),
            failures: u32::try_from(self.failures).unwrap_or(u32::MAX),
            next_attempt: self.next_attempt.map(Timestamp::from_unix),
            last_error: self.last_error,
            delivered: u64::try_from(self.delivered).unwrap_or(0),
            delivered_at: self.delivered_at.map(Timestamp::from_unix),
            holder: self.holder,
            lease_until: self.lease_until.map(Timestamp::from_unix),
        }
    }
}

/// What [`save_sql`] writes, as stored values.
pub(super) struct Saved {
    pub position: i64,
    pub failures: i64,
    pub next_attempt: Option<i64>,
    pub last_error: Option<String>,
    pub delivered: i64,
    pub delivered_at: Option<i64>,
}

impl Saved {
    pub(super) fn of(c: &WebhookCursor) -> Self {
        Self {
            position: i64::try_from(c.position).unwrap_or(i64::MAX),
            failures: i64::from(c.failures),
            next_attempt: c.next_attempt.map(Timestamp::unix),
            last_error: c.last_error.as_deref().map(bounded_error),
            delivered: i64::try_from(c.delivered).unwrap_or(i64::MAX),
            delivered_at: c.delivered_at.map(Timestamp::unix),
        }
    }
}

/// Longest `last_error` kept, in characters.
const MAX_ERROR: usize = 300;

/// `text` cut to [`MAX_ERROR`] characters.
fn bounded_error(text: &str) -> String {
    text.chars().take(MAX_ERROR).collect()
}
