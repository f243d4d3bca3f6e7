//! Refused calls without a valid credential are recorded one by one up to
//! a rate, and counted beyond it: anyone can send them, so recording each
//! would let an unauthenticated flood grow the audit trail and occupy the
//! store's writer without bound. Refusals of authenticated callers are
//! always recorded (they name someone who answers for them).

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use crate::clock::Timestamp;
use crate::sessions::Event;

/// A token bucket for anonymous refusals, and what it turned away.
#[derive(Debug)]
pub(super) struct RefusalGate {
    per_sec: f64,
    burst: f64,
    state: Mutex<GateState>,
}

#[derive(Debug)]
struct GateState {
    tokens: f64,
    refilled: Instant,
    counted: BTreeMap<String, u64>,
    since: Option<Timestamp>,
}

impl RefusalGate {
    /// Records `per_sec` refusals a second on average and `burst` at once;
    /// `per_sec` 0 records every one.
    pub(super) fn new(per_sec: u32, burst: u32) -> Self {
        Self {
            per_sec: f64::from(per_sec),
            burst: f64::from(burst.max(1)),
            state: Mutex::new(GateState {
                tokens: f64::from(burst.max(1)),
                refilled: Instant::now(),
                counted: BTreeMap::new(),
                since: None,
            }),
        }
    }

    fn state(&self) -> MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether an anonymous refusal with `code` is recorded on its own;
    /// when not, it is counted for [`RefusalGate::take`].
    pub(super) fn admit(&self, code: &str, now: Timestamp) -> bool {
        if self.per_sec == 0.0 {
            return true;
        }
        let mut s = self.state();
        let elapsed = s.refilled.elapsed().as_secs_f64();
        s.refilled = Instant::now();
        s.tokens = (s.tokens + elapsed * self.per_sec).min(self.burst);
        if s.tokens >= 1.0 {
            s.tokens -= 1.0;
            return true;
        }
        *s.counted.entry(code.to_owned()).or_default() += 1;
        s.since.get_or_insert(now);
        false
    }

    /// The refusals counted since the last call, as an event; none if there
    /// were none.
    pub(super) fn take(&self) -> Option<Event> {
        let mut s = self.state();
        let since = s.since.take()?;
        let codes = std::mem::take(&mut s.counted);
        Some(Event::RefusalsCounted {
            count: codes.values().sum(),
            codes,
            since,
        })
    }

    /// Puts back counts that could not be recorded, so the next attempt
    /// includes them.
    pub(super) fn restore(&self, event: Event) {
        let Event::RefusalsCounted { codes, since, .. } = event else {
            return;
        };
        let mut s = self.state();
        for (code, n) in codes {
            *s.counted.entry(code).or_default() += n;
        }
        s.since = Some(s.since.map_or(since, |t| t.min(since)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counted(event: Option<Event>) -> (u64, BTreeMap<String, u64>) {
        match event {
            Some(Event::RefusalsCounted { count, codes, .. }) => (count, codes),
            None => (0, BTreeMap::new()),
            Some(other) => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_burst_is_recorded_and_the_rest_counted_by_code() {
        let gate = RefusalGate::new(1, 5);
        let now = Timestamp::from_unix(1_000);
        let recorded = (0..20)
            .filter(|i| {
                gate.admit(
                    if i % 2 == 0 {
                        "unauthenticated"
                    } else {
                        "invalid_token"
                    },
                    now,
                )
            })
            .count();
        // Five at once, perhaps one more if a second passed meanwhile.
        assert!((5..=6).contains(&recorded), "{recorded}");
        let (count, codes) = counted(gate.take());
        assert_eq!(count as usize + recorded, 20);
        assert_eq!(codes.values().sum::<u64>(), count);
        assert_eq!(codes.len(), 2);
        assert_eq!(counted(gate.take()).0, 0, "taken once");
    }

    #[test]
    fn zero_records_everything() {
        let gate = RefusalGate::new(0, 1);
        let now = Timestamp::from_unix(1_000);
        assert!((0..10_000).all(|_| gate.admit("unauthenticated", now)));
        assert!(gate.take().is_none());
    }

    #[test]
    fn counts_that_could_not_be_recorded_come_back() {
        let gate = RefusalGate::new(1, 1);
        assert!(gate.admit("unauthenticated", Timestamp::from_unix(10)));
        assert!(!gate.admit("unauthenticated", Timestamp::from_unix(11)));
        let first = gate.take().unwrap();
        assert!(!gate.admit("invalid_token", Timestamp::from_unix(12)));
        gate.restore(first);
        match gate.take() {
            Some(Event::RefusalsCounted { count, since, .. }) => {
                assert_eq!((count, since), (2, Timestamp::from_unix(11)));
            }
            other => panic!("{other:?}"),
        }
    }
}
