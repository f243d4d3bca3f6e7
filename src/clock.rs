//! Time, read in one place.
//!
//! Everything lockstep decides about time (a session's `closes_at`, a
//! certificate's validity) is in whole seconds since the Unix epoch, as
//! certificates carry it. Code that needs "now" asks a [`Clock`], so tests
//! can drive time, and no module reads the system clock on its own.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// An instant at second precision (seconds since 1970-01-01T00:00:00Z).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(i64);

impl Timestamp {
    /// The instant `secs` seconds after the Unix epoch.
    pub const fn from_unix(secs: i64) -> Self {
        Self(secs)
    }

    /// Seconds since the Unix epoch.
    pub const fn unix(self) -> i64 {
        self.0
    }

    /// This instant plus `secs` seconds (saturating).
    pub const fn plus_secs(self, secs: i64) -> Self {
        Self(self.0.saturating_add(secs))
    }

    /// Seconds from `earlier` to `self` (negative if `earlier` is later).
    pub const fn secs_since(self, earlier: Timestamp) -> i64 {
        self.0.saturating_sub(earlier.0)
    }

    /// Parses RFC 3339 (`2026-11-24T10:00:00Z`); fractions of a second are
    /// refused, because lockstep's instants are whole seconds.
    pub fn parse_rfc3339(text: &str) -> Result<Self, String> {
        let t = OffsetDateTime::parse(text, &Rfc3339)
            .map_err(|e| format!("`{text}` is not an RFC 3339 time: {e}"))?;
        if t.nanosecond() != 0 {
            return Err(format!(
                "`{text}` has a fraction of a second; give whole seconds"
            ));
        }
        Ok(Self(t.unix_timestamp()))
    }

    /// The time as `std::time::SystemTime`, if representable.
    pub fn to_system_time(self) -> Option<SystemTime> {
        if self.0 >= 0 {
            UNIX_EPOCH.checked_add(Duration::from_secs(self.0 as u64))
        } else {
            UNIX_EPOCH.checked_sub(Duration::from_secs(self.0.unsigned_abs()))
        }
    }

    /// The calendar year (UTC).
    pub fn year(self) -> i32 {
        OffsetDateTime::from_unix_timestamp(self.0).map_or(i32::MAX, |t| t.year())
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match OffsetDateTime::from_unix_timestamp(self.0)
            .ok()
            .and_then(|t| t.format(&Rfc3339).ok())
        {
            Some(s) => f.write_str(&s),
            None => write!(f, "@{}", self.0),
        }
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Self::parse_rfc3339(&text).map_err(serde::de::Error::custom)
    }
}

/// A source of "now".
pub trait Clock: Send + Sync {
    /// The current instant, truncated to whole seconds.
    fn now(&self) -> Timestamp;
}

/// The system clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        let secs = match SystemTime::now().duration_since(UNIX_EPOCH) {
            Ok(d) => d.as_secs() as i64,
            Err(e) => -(e.duration().as_secs() as i64) - 1,
        };
        Timestamp(secs)
    }
}

/// A clock set by hand, for tests and simulations that must put "now"
/// exactly on a session's edges (one second before `closes_at`, on it).
#[derive(Debug)]
pub struct ManualClock(std::sync::atomic::AtomicI64);

impl ManualClock {
    /// A clock showing `at`.
    pub fn new(at: Timestamp) -> Self {
        Self(std::sync::atomic::AtomicI64::new(at.unix()))
    }

    /// Sets the time to `at` (it may go backwards, as real clocks can).
    pub fn set(&self, at: Timestamp) {
        self.0.store(at.unix(), std::sync::atomic::Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        Timestamp(self.0.load(std::sync::atomic::Ordering::SeqCst))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_round_trips_at_second_precision() {
        let t = Timestamp::parse_rfc3339("2049-12-31T23:59:59Z").unwrap();
        assert_eq!(t.to_string(), "2049-12-31T23:59:59Z");
        assert_eq!(t.year(), 2049);
        assert_eq!(t.plus_secs(1).year(), 2050);
        assert!(Timestamp::parse_rfc3339("2049-12-31T23:59:59.5Z").is_err());
        assert!(Timestamp::parse_rfc3339("yesterday").is_err());
        let offset = Timestamp::parse_rfc3339("2030-01-01T01:00:00+01:00").unwrap();
        assert_eq!(offset.to_string(), "2030-01-01T00:00:00Z");
    }

    #[test]
    fn system_clock_is_whole_seconds_near_now() {
        let now = SystemClock.now();
        let sys = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        assert!((sys - now.unix()).abs() <= 1);
    }
}
