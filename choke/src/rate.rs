//! A rolling-window rate meter at explicit `now`.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Bytes over a rolling window, in one-second buckets (at most
/// `window` seconds of buckets are kept, so memory is bounded by the window,
/// not by traffic).
///
/// Inputs: [`RateMeter::record`] with `now`. Output: [`RateMeter::rate`]
/// (bytes/s over the window, or over the meter's age when younger).
#[derive(Debug, Clone)]
pub struct RateMeter {
    window: Duration,
    started: Option<Instant>,
    /// (second since `started`, bytes in that second), oldest first.
    buckets: VecDeque<(u64, u64)>,
    total: u64,
}

impl RateMeter {
    /// A meter over `window` (at least one second).
    pub fn new(window: Duration) -> Self {
        Self {
            window: window.max(Duration::from_secs(1)),
            started: None,
            buckets: VecDeque::new(),
            total: 0,
        }
    }

    fn second(&mut self, now: Instant) -> u64 {
        let start = *self.started.get_or_insert(now);
        now.saturating_duration_since(start).as_secs()
    }

    fn expire(&mut self, second: u64) {
        let keep = self.window.as_secs();
        while self
            .buckets
            .front()
            .is_some_and(|&(s, _)| s + keep <= second)
        {
            self.buckets.pop_front();
        }
    }

    /// Counts `bytes` at `now`.
    pub fn record(&mut self, now: Instant, bytes: u64) {
        let s = self.second(now);
        self.expire(s);
        self.total += bytes;
        match self.buckets.back_mut() {
            Some((last, b)) if *last == s => *b += bytes,
            _ => self.buckets.push_back((s, bytes)),
        }
    }

    /// Bytes/s over the window ending at `now`.
    pub fn rate(&mut self, now: Instant) -> f64 {
        let Some(start) = self.started else {
            return 0.0;
        };
        let s = self.second(now);
        self.expire(s);
        let bytes: u64 = self.buckets.iter().map(|&(_, b)| b).sum();
        let age = now
            .saturating_duration_since(start)
            .max(Duration::from_secs(1));
        bytes as f64 / age.min(self.window).as_secs_f64()
    }

    /// Bytes counted since the meter was made.
    pub fn total(&self) -> u64 {
        self.total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_over_the_window_forgets_old_traffic() {
        let t0 = Instant::now();
        let mut m = RateMeter::new(Duration::from_secs(20));
        assert_eq!(m.rate(t0), 0.0);
        for s in 0..20 {
            m.record(t0 + Duration::from_secs(s), 1000);
        }
        assert!((m.rate(t0 + Duration::from_millis(19_999)) - 1000.0).abs() < 1.0);
        // Silence since second 19: at second 30 the window is seconds
        // 11..=30, of which 11..=19 carried traffic.
        assert!((m.rate(t0 + Duration::from_secs(30)) - 450.0).abs() < 1.0);
        assert_eq!(m.rate(t0 + Duration::from_secs(60)), 0.0);
        assert_eq!(m.total(), 20_000);
    }

    #[test]
    fn a_young_meter_divides_by_its_age() {
        let t0 = Instant::now();
        let mut m = RateMeter::new(Duration::from_secs(20));
        m.record(t0, 4000);
        m.record(t0 + Duration::from_secs(1), 4000);
        assert!((m.rate(t0 + Duration::from_secs(2)) - 4000.0).abs() < 1.0);
    }
}
