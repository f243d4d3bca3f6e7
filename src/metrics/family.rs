//! Metric families whose label values are bounded: short lowercase names
//! only, and at most [`MAX_SERIES`] label sets per family.

use std::collections::HashSet;
use std::sync::Mutex;

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};

/// The most label sets one family holds; further ones are counted under
/// `other`.
pub const MAX_SERIES: usize = 256;

/// The label value for everything that is not a name or is past the bound.
const OTHER: &str = "other";

/// Longest label value kept, in bytes.
const MAX_VALUE: usize = 48;

/// `value` if it is a name lockstep could have made (lowercase ASCII,
/// digits, `-`, `_`, `.`, `:`; at most 48 bytes), else `other`.
fn name(value: &str) -> &str {
    let ok = !value.is_empty()
        && value.len() <= MAX_VALUE
        && value.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.' | b':')
        });
    if ok { value } else { OTHER }
}

/// The label sets a family has seen, to keep it within [`MAX_SERIES`].
#[derive(Default)]
struct Seen(Mutex<HashSet<Vec<String>>>);

impl Seen {
    /// The label values to use for `values`: each checked by [`name`], all
    /// `other` once the family is full.
    fn admit(&self, values: &[&str]) -> Vec<String> {
        let wanted: Vec<String> = values.iter().map(|v| name(v).to_owned()).collect();
        let mut seen = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if seen.contains(&wanted) {
            return wanted;
        }
        if seen.len() < MAX_SERIES - 1 {
            seen.insert(wanted.clone());
            return wanted;
        }
        vec![OTHER.to_owned(); values.len()]
    }
}

/// A counter with bounded labels.
pub struct CounterFamily {
    vec: IntCounterVec,
    seen: Seen,
}

impl CounterFamily {
    pub(super) fn new(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> Self {
        let vec = IntCounterVec::new(Opts::new(name, help), labels)
            .unwrap_or_else(|_| unreachable!("metric names here are valid"));
        super::register(registry, vec.clone());
        Self {
            vec,
            seen: Seen::default(),
        }
    }

    /// Adds `n` to the counter of `values` (one per label, in order).
    pub fn add(&self, values: &[&str], n: u64) {
        let admitted = self.seen.admit(values);
        let refs: Vec<&str> = admitted.iter().map(String::as_str).collect();
        if let Ok(counter) = self.vec.get_metric_with_label_values(&refs) {
            counter.inc_by(n);
        }
    }

    /// Adds one.
    pub fn inc(&self, values: &[&str]) {
        self.add(values, 1);
    }

    /// The counter of `values` (0 when never counted).
    pub fn get(&self, values: &[&str]) -> u64 {
        self.vec
            .get_metric_with_label_values(values)
            .map_or(0, |c| c.get())
    }
}

/// A histogram with bounded labels.
pub struct HistogramFamily {
    vec: HistogramVec,
    seen: Seen,
}

impl HistogramFamily {
    pub(super) fn new(
        registry: &Registry,
        name: &str,
        help: &str,
        labels: &[&str],
        buckets: &[f64],
    ) -> Self {
        let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
        let vec = HistogramVec::new(opts, labels)
            .unwrap_or_else(|_| unreachable!("metric names here are valid"));
        super::register(registry, vec.clone());
        Self {
            vec,
            seen: Seen::default(),
        }
    }

    /// Records `seconds` for `values`.
    pub fn observe(&self, values: &[&str], seconds: f64) {
        let admitted = self.seen.admit(values);
        let refs: Vec<&str> = admitted.iter().map(String::as_str).collect();
        if let Ok(h) = self.vec.get_metric_with_label_values(&refs) {
            h.observe(seconds);
        }
    }

    /// How many observations `values` has.
    pub fn count(&self, values: &[&str]) -> u64 {
        self.vec
            .get_metric_with_label_values(values)
            .map_or(0, |h| h.get_sample_count())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_that_are_not_names_are_other() {
        assert_eq!(name("session_not_found"), "session_not_found");
        assert_eq!(name("ssh-certificate"), "ssh-certificate");
        assert_eq!(name("ses_abc/../x"), "other");
        assert_eq!(name("Alice"), "other");
        assert_eq!(name(""), "other");
        assert_eq!(name(&"a".repeat(49)), "other");
    }

    #[test]
    fn a_family_holds_at_most_max_series_label_sets() {
        let registry = Registry::new();
        let family = CounterFamily::new(&registry, "t_total", "t", &["code"]);
        for i in 0..MAX_SERIES * 2 {
            family.inc(&[&format!("code{i}")]);
        }
        let series = registry.gather()[0].get_metric().len();
        assert_eq!(series, MAX_SERIES);
        assert_eq!(family.get(&["other"]), MAX_SERIES as u64 + 1);
        assert_eq!(family.get(&["code0"]), 1);
    }
}
