//! What the gateway knows of sessions, and the connections it carries for
//! them: one lock over both, so a close learned from the event stream and
//! a connection being admitted can never miss each other. A connection is
//! registered before its session's status is settled; a close marks the
//! session closed, then cuts every registered connection of it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::watch;

use super::admission::Ticket;
use crate::clock::Timestamp;
use crate::sessions::{ConnectionEnd, SessionId};

/// Sessions remembered at most; past this, those whose certificates have
/// all expired are forgotten first.
const MAX_REMEMBERED: usize = 100_000;

/// A session's status as the gateway knows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Open, until this time.
    Open(Timestamp),
    /// Closed, so its connections end this way.
    Closed(ConnectionEnd),
}

/// Why a connection was not registered.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LimitRefusal {
    /// The gateway carries as many connections as it may.
    #[error("the gateway carries its maximum of {0} connections")]
    Gateway(usize),
    /// The session has as many connections on this route as it may.
    #[error("the session already has its maximum of {0} connection(s) on this route")]
    Session(usize),
    /// The session has as many connections as its policy allows.
    #[error("the session already has the {0} connection(s) at once its policy allows")]
    Policy(u32),
}

struct Live {
    route: String,
    ticket: Ticket,
    cut: watch::Sender<Option<ConnectionEnd>>,
}

#[derive(Default)]
struct Inner {
    status: HashMap<SessionId, Status>,
    live: HashMap<SessionId, HashMap<u64, Live>>,
    total: usize,
    next: u64,
}

/// The gateway's sessions and live connections.
#[derive(Default)]
pub struct Sessions {
    inner: Mutex<Inner>,
    following: AtomicBool,
    lost: AtomicBool,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let inner = self.lock();
        f.debug_struct("Sessions")
            .field("known", &inner.status.len())
            .field("connections", &inner.total)
            .finish()
    }
}

/// A registered connection: cut through [`Registration::cut`]; dropping it
/// unregisters.
pub struct Registration {
    sessions: Arc<Sessions>,
    session: SessionId,
    id: u64,
    /// Set once, when the connection must end, to why.
    pub cut: watch::Receiver<Option<ConnectionEnd>>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut inner = self.sessions.lock();
        if let Some(conns) = inner.live.get_mut(&self.session) {
            if conns.remove(&self.id).is_some() {
                inner.total -= 1;
            }
            if inner.live.get(&self.session).is_some_and(HashMap::is_empty) {
                inner.live.remove(&self.session);
            }
        }
    }
}

impl Sessions {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic elsewhere cannot leave the maps half-changed: every
        // change is one insert or remove.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the event stream is connected and caught up, so a status
    /// known from it is current.
    pub fn following(&self) -> bool {
        self.following.load(Ordering::Acquire)
    }

    /// Marks the event stream connected (which ends a lost link) or not.
    pub fn set_following(&self, on: bool) {
        self.following.store(on, Ordering::Release);
        if on {
            self.lost.store(false, Ordering::Release);
        }
    }

    /// Whether the link to the issuer is lost: the stream could not be
    /// reopened, and has not been since. (Between a stream's end and its
    /// reopening the gateway is neither following nor lost.)
    pub fn link_lost(&self) -> bool {
        self.lost.load(Ordering::Acquire)
    }

    /// Marks the link to the issuer lost.
    pub fn set_lost(&self) {
        self.following.store(false, Ordering::Release);
        self.lost.store(true, Ordering::Release);
    }

    /// The session's status, if known.
    pub fn status(&self, id: &SessionId) -> Option<Status> {
        self.lock().status.get(id).copied()
    }

    /// How the session's connections end, if it is known to be closed.
    pub fn known_closed(&self, id: &SessionId) -> Option<ConnectionEnd> {
        match self.status(id) {
            Some(Status::Closed(end)) => Some(end),
            _ => None,
        }
    }

    /// Registers a connection of `ticket`'s session on `route`, within the
    /// limits: the route's `per_session`, the gateway's `max_total`, and
    /// the policy's limit its certificate carries (across routes).
    pub fn register(
        self: &Arc<Self>,
        ticket: &Ticket,
        route: &str,
        per_session: usize,
        max_total: usize,
    ) -> Result<Registration, LimitRefusal> {
        let mut inner = self.lock();
        if inner.total >= max_total {
            return Err(LimitRefusal::Gateway(max_total));
        }
        let mine = inner.live.get(&ticket.session);
        let on_route = mine.map_or(0, |c| c.values().filter(|l| l.route == route).count());
        if on_route >= per_session {
            return Err(LimitRefusal::Session(per_session));
        }
        if let Some(allowed) = ticket.connections
            && mine.map_or(0, HashMap::len) >= allowed as usize
        {
            return Err(LimitRefusal::Policy(allowed));
        }
        let (tx, rx) = watch::channel(None);
        if let Some(Status::Closed(end)) = inner.status.get(&ticket.session) {
            tx.send_replace(Some(*end));
        }
        inner.next += 1;
        let id = inner.next;
        inner.total += 1;
        let live = Live {
            route: route.to_owned(),
            ticket: ticket.clone(),
            cut: tx,
        };
        inner
            .live
            .entry(ticket.session.clone())
            .or_default()
            .insert(id, live);
        Ok(Registration {
            sessions: self.clone(),
            session: ticket.session.clone(),
            id,
            cut: rx,
        })
    }

    /// The session is open until `closes_at` (unless it is known closed:
    /// a close is final).
    pub fn opened(&self, id: &SessionId, closes_at: Timestamp, now: Timestamp) {
        let mut inner = self.lock();
        if !matches!(inner.status.get(id), Some(Status::Closed(_))) {
            inner.status.insert(id.clone(), Status::Open(closes_at));
        }
        prune(&mut inner, now);
    }

    /// The session closed: remembered, and every connection of it cut.
    /// Returns how many were cut.
    pub fn closed(&self, id: &SessionId, end: ConnectionEnd, now: Timestamp) -> usize {
        let mut inner = self.lock();
        // The first close is the one that counts (an event replayed, or
        // an answer of the issuer crossing it, changes nothing).
        let end = match inner.status.get(id) {
            Some(Status::Closed(first)) => *first,
            _ => end,
        };
        inner.status.insert(id.clone(), Status::Closed(end));
        let cut = inner
            .live
            .get(id)
            .map_or(0, |conns| conns.values().filter(|c| cut(c, end)).count());
        prune(&mut inner, now);
        cut
    }

    /// Cuts every connection on the routes `on_route` picks; returns how
    /// many.
    pub fn cut_routes(&self, end: ConnectionEnd, on_route: impl Fn(&str) -> bool) -> usize {
        self.cut_where(|route, _| on_route(route).then_some(end))
    }

    /// Cuts every connection for which `decide` (given its route and
    /// ticket) names an end; returns how many.
    pub fn cut_where(&self, decide: impl Fn(&str, &Ticket) -> Option<ConnectionEnd>) -> usize {
        let inner = self.lock();
        inner
            .live
            .values()
            .flat_map(HashMap::values)
            .filter(|c| decide(&c.route, &c.ticket).is_some_and(|end| cut(c, end)))
            .count()
    }

    /// The sessions that have connections now.
    pub fn live_sessions(&self) -> Vec<SessionId> {
        self.lock().live.keys().cloned().collect()
    }

    /// Connections carried now.
    pub fn connections(&self) -> usize {
        self.lock().total
    }
}

/// Cuts one connection unless it is being cut already; says whether this
/// call cut it.
fn cut(live: &Live, end: ConnectionEnd) -> bool {
    live.cut.send_if_modified(|v| {
        if v.is_none() {
            *v = Some(end);
            true
        } else {
            false
        }
    })
}

/// Forgets open sessions past their close time once too many are known;
/// closed ones stay (a late connection with their certificate is refused
/// without asking) unless the map is still too large.
fn prune(inner: &mut Inner, now: Timestamp) {
    if inner.status.len() <= MAX_REMEMBERED {
        return;
    }
    inner
        .status
        .retain(|_, s| !matches!(s, Status::Open(until) if *until <= now));
    if inner.status.len() > MAX_REMEMBERED {
        let live = &inner.live;
        inner.status.retain(|id, _| live.contains_key(id));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ticket() -> Ticket {
        Ticket {
            session: SessionId::generate().unwrap(),
            serial: "01".into(),
            not_after: Timestamp::from_unix(2_000_000_000),
            issuer_key: vec![1],
            connections: None,
            modbus: None,
        }
    }

    #[test]
    fn a_close_cuts_the_sessions_connections_once() {
        let s = Arc::new(Sessions::default());
        let t = ticket();
        let a = s.register(&t, "plc", 2, 10).unwrap();
        let other = s.register(&ticket(), "plc", 2, 10).unwrap();
        assert_eq!(
            s.closed(&t.session, ConnectionEnd::Revoked, Timestamp::from_unix(0)),
            1
        );
        assert_eq!(*a.cut.borrow(), Some(ConnectionEnd::Revoked));
        assert_eq!(*other.cut.borrow(), None);
        // A second close (the event replayed) cuts nothing again.
        assert_eq!(
            s.closed(&t.session, ConnectionEnd::Closed, Timestamp::from_unix(0)),
            0
        );
        assert_eq!(*a.cut.borrow(), Some(ConnectionEnd::Revoked));
        // A connection registered after the close is cut at once.
        let late = s.register(&t, "plc", 2, 10).unwrap();
        assert_eq!(*late.cut.borrow(), Some(ConnectionEnd::Revoked));
        // And an open event after the close changes nothing.
        s.opened(&t.session, Timestamp::from_unix(9), Timestamp::from_unix(0));
        assert!(s.known_closed(&t.session).is_some());
    }

    #[test]
    fn limits_count_per_session_and_route_and_in_all() {
        let s = Arc::new(Sessions::default());
        let t = ticket();
        let a = s.register(&t, "plc", 1, 3).unwrap();
        assert_eq!(
            s.register(&t, "plc", 1, 3).err(),
            Some(LimitRefusal::Session(1))
        );
        let _b = s.register(&t, "hmi", 1, 3).unwrap();
        let _c = s.register(&ticket(), "plc", 1, 3).unwrap();
        assert_eq!(
            s.register(&ticket(), "plc", 1, 3).err(),
            Some(LimitRefusal::Gateway(3))
        );
        drop(a);
        assert_eq!(s.connections(), 2);
        assert!(s.register(&t, "plc", 1, 3).is_ok());
    }

    #[test]
    fn the_policys_limit_counts_across_routes() {
        let s = Arc::new(Sessions::default());
        let t = Ticket {
            connections: Some(2),
            ..ticket()
        };
        let _a = s.register(&t, "plc", 4, 10).unwrap();
        let b = s.register(&t, "hmi", 4, 10).unwrap();
        assert_eq!(
            s.register(&t, "ssh", 4, 10).err(),
            Some(LimitRefusal::Policy(2))
        );
        drop(b);
        assert!(s.register(&t, "ssh", 4, 10).is_ok());
    }

    #[test]
    fn cuts_pick_connections_by_route_and_ticket() {
        let s = Arc::new(Sessions::default());
        let (t, u) = (ticket(), ticket());
        let a = s.register(&t, "plc", 2, 10).unwrap();
        let b = s.register(&u, "plc", 2, 10).unwrap();
        let c = s.register(&u, "hmi", 2, 10).unwrap();
        let on_list = |route: &str, k: &Ticket| {
            (route == "plc" && k.session == u.session).then_some(ConnectionEnd::Revoked)
        };
        assert_eq!(s.cut_where(on_list), 1);
        assert_eq!(*a.cut.borrow(), None);
        assert_eq!(*b.cut.borrow(), Some(ConnectionEnd::Revoked));
        assert_eq!(*c.cut.borrow(), None);
        // The first end sticks.
        assert_eq!(s.cut_routes(ConnectionEnd::LinkLost, |_| true), 2);
        assert_eq!(*b.cut.borrow(), Some(ConnectionEnd::Revoked));
        assert_eq!(*c.cut.borrow(), Some(ConnectionEnd::LinkLost));
    }

    #[test]
    fn a_lost_link_ends_when_the_stream_is_followed_again() {
        let s = Sessions::default();
        s.set_following(true);
        s.set_lost();
        assert!(s.link_lost() && !s.following());
        s.set_following(false);
        assert!(s.link_lost());
        s.set_following(true);
        assert!(!s.link_lost() && s.following());
    }
}
