//! A token bucket shared by every session of a node: `--up-rate` and
//! `--down-rate`. Applied to loopback peers too (unlike libtorrent's
//! default), because the testnet runs on loopback.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How much a bucket holds, as time at its rate: it starts full, so a
/// node may send this much at once before the rate applies.
pub const BURST: Duration = Duration::from_secs(1);

/// Bytes per second with a one-second burst ([`BURST`]).
#[derive(Debug)]
pub struct RateLimiter {
    /// Bytes per second (changeable while running: the testnet's rate
    /// events).
    rate: AtomicU64,
    state: Mutex<(f64, Instant)>,
}

impl RateLimiter {
    /// `bytes_per_sec` must be positive.
    pub fn new(bytes_per_sec: u64) -> Self {
        let rate = bytes_per_sec.max(1);
        Self {
            rate: AtomicU64::new(rate),
            state: Mutex::new((rate as f64 * BURST.as_secs_f64(), Instant::now())),
        }
    }

    pub fn rate(&self) -> u64 {
        self.rate.load(Ordering::Relaxed)
    }

    /// Changes the rate from now on.
    pub fn set_rate(&self, bytes_per_sec: u64) {
        self.rate.store(bytes_per_sec.max(1), Ordering::Relaxed);
    }

    /// Bytes that can be spent now without waiting.
    pub fn available(&self) -> u64 {
        let rate = self.rate() as f64;
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (tokens, at) = *state;
        let now = (tokens + at.elapsed().as_secs_f64() * rate).min(rate * BURST.as_secs_f64());
        now.max(0.0) as u64
    }

    /// Spends `bytes` now (going into debt if need be) and says how long
    /// to wait before spending more, so the average holds the rate.
    pub fn spend(&self, bytes: u64) -> Duration {
        self.take(bytes, Instant::now())
    }

    /// Takes `bytes` tokens, going into debt if need be, and returns how
    /// long the caller must wait for the debt to clear.
    fn take(&self, bytes: u64, now: Instant) -> Duration {
        let rate = self.rate() as f64;
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (tokens, at) = &mut *state;
        *tokens = (*tokens + now.saturating_duration_since(*at).as_secs_f64() * rate)
            .min(rate * BURST.as_secs_f64());
        *at = now;
        *tokens -= bytes as f64;
        if *tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-*tokens / rate)
        }
    }

    /// Waits until `bytes` may pass.
    ///
    /// Cancel-safe in the sense that matters: tokens are taken up front, so
    /// a cancelled wait only makes later callers wait a little longer.
    pub async fn acquire(&self, bytes: u64) {
        let wait = self.take(bytes, Instant::now());
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debt_turns_into_waiting_time() {
        let t0 = Instant::now();
        let r = RateLimiter {
            rate: AtomicU64::new(1000),
            state: Mutex::new((1000.0, t0)),
        };
        assert_eq!(r.take(1000, t0), Duration::ZERO, "a one-second burst");
        assert_eq!(r.take(500, t0), Duration::from_millis(500));
        // Half a second later the debt is paid.
        assert_eq!(r.take(0, t0 + Duration::from_millis(500)), Duration::ZERO);
        // Idle time never banks more than one second of tokens.
        assert_eq!(r.take(1000, t0 + Duration::from_secs(60)), Duration::ZERO);
        assert_eq!(
            r.take(1, t0 + Duration::from_secs(60)),
            Duration::from_millis(1)
        );
    }
}
