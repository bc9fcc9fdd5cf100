//! A token bucket shared by every session of a node: `--up-rate` and
//! `--down-rate`. Applied to loopback peers too (unlike libtorrent's
//! default), because the testnet runs on loopback.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How much a bucket holds, as time at its rate: it starts full, so a
/// node may send this much at once before the rate applies. Short, so a
/// limited node holds its rate over any stretch longer than this, and a
/// testnet cannot beat Kumar & Ross's bound by its bursts (a sender
/// further into debt waits it off: a batch of blocks is still sent whole).
pub const BURST: Duration = Duration::from_millis(100);

/// A token bucket at explicit `now`: the arithmetic behind
/// [`RateLimiter`], and what the simulator limits its modelled links
/// with. Holds at most `burst` worth of its rate; starts full.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: u64,
    burst: Duration,
    tokens: f64,
    at: Instant,
}

impl TokenBucket {
    /// `bytes_per_sec` (at least 1), holding `burst` of it.
    pub fn new(bytes_per_sec: u64, burst: Duration, now: Instant) -> Self {
        let rate = bytes_per_sec.max(1);
        Self {
            rate,
            burst,
            tokens: rate as f64 * burst.as_secs_f64(),
            at: now,
        }
    }

    pub fn rate(&self) -> u64 {
        self.rate
    }

    /// Changes the rate from now on (debt and tokens carry over).
    pub fn set_rate(&mut self, bytes_per_sec: u64) {
        self.rate = bytes_per_sec.max(1);
    }

    fn cap(&self) -> f64 {
        self.rate as f64 * self.burst.as_secs_f64()
    }

    /// Bytes that can be spent at `now` without waiting.
    pub fn available(&self, now: Instant) -> u64 {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        let tokens = (self.tokens + elapsed * self.rate as f64).min(self.cap());
        tokens.max(0.0) as u64
    }

    /// Takes `bytes` at `now`, going into debt if need be; returns how
    /// long to wait before spending more, so the average holds the rate.
    pub fn take(&mut self, bytes: u64, now: Instant) -> Duration {
        let rate = self.rate as f64;
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(self.cap());
        self.at = self.at.max(now);
        self.tokens -= bytes as f64;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / rate)
        }
    }
}

/// Bytes per second with a burst of [`BURST`], shared by every session
/// of a node (a [`TokenBucket`] behind a lock, read at the wall clock).
#[derive(Debug)]
pub struct RateLimiter {
    /// Bytes per second (changeable while running: the testnet's rate
    /// events).
    rate: AtomicU64,
    state: Mutex<TokenBucket>,
}

impl RateLimiter {
    /// `bytes_per_sec` must be positive.
    pub fn new(bytes_per_sec: u64) -> Self {
        let rate = bytes_per_sec.max(1);
        Self {
            rate: AtomicU64::new(rate),
            state: Mutex::new(TokenBucket::new(rate, BURST, Instant::now())),
        }
    }

    pub fn rate(&self) -> u64 {
        self.rate.load(Ordering::Relaxed)
    }

    /// Changes the rate from now on.
    pub fn set_rate(&self, bytes_per_sec: u64) {
        self.rate.store(bytes_per_sec.max(1), Ordering::Relaxed);
    }

    fn bucket(&self) -> std::sync::MutexGuard<'_, TokenBucket> {
        let mut b = self.state.lock().unwrap_or_else(|p| p.into_inner());
        b.set_rate(self.rate());
        b
    }

    /// Bytes that can be spent now without waiting.
    pub fn available(&self) -> u64 {
        self.bucket().available(Instant::now())
    }

    /// Spends `bytes` now (going into debt if need be) and says how long
    /// to wait before spending more, so the average holds the rate.
    pub fn spend(&self, bytes: u64) -> Duration {
        self.bucket().take(bytes, Instant::now())
    }

    /// Waits until `bytes` may pass.
    ///
    /// Cancel-safe in the sense that matters: tokens are taken up front, so
    /// a cancelled wait only makes later callers wait a little longer.
    pub async fn acquire(&self, bytes: u64) {
        let wait = self.spend(bytes);
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

/// A rate that limits nothing: a [`RateLimiter`] set to it is passed
/// over (no lock taken), so a torrent's own limiter costs nothing until
/// a user sets one.
pub const UNLIMITED: u64 = u64::MAX;

/// The limiters one direction of a session's bytes passes: its node's
/// and its torrent's. Each may be absent or [`UNLIMITED`] (then skipped);
/// the tighter one rules.
#[derive(Debug, Clone, Default)]
pub struct Limiters {
    node: Option<Arc<RateLimiter>>,
    torrent: Option<Arc<RateLimiter>>,
}

impl Limiters {
    pub fn new(node: Option<Arc<RateLimiter>>, torrent: Option<Arc<RateLimiter>>) -> Self {
        Self { node, torrent }
    }

    fn active(&self) -> impl Iterator<Item = &RateLimiter> {
        [self.node.as_deref(), self.torrent.as_deref()]
            .into_iter()
            .flatten()
            .filter(|l| l.rate() != UNLIMITED)
    }

    /// The rate that holds (`None`: unlimited).
    pub fn rate(&self) -> Option<u64> {
        self.active().map(RateLimiter::rate).min()
    }

    /// Bytes that can pass now without waiting (`None`: unlimited).
    pub fn available(&self) -> Option<u64> {
        self.active().map(RateLimiter::available).min()
    }

    /// Spends `bytes` in every limiter and says how long to wait before
    /// spending more.
    pub fn spend(&self, bytes: u64) -> Duration {
        self.active()
            .map(|l| l.spend(bytes))
            .max()
            .unwrap_or_default()
    }

    /// Waits until `bytes` may pass (see [`RateLimiter::acquire`]).
    pub async fn acquire(&self, bytes: u64) {
        let wait = self.spend(bytes);
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
        let mut r = TokenBucket::new(1000, Duration::from_secs(1), t0);
        assert_eq!(r.take(1000, t0), Duration::ZERO, "a one-second burst");
        assert_eq!(r.take(500, t0), Duration::from_millis(500));
        // Half a second later the debt is paid.
        assert_eq!(r.take(0, t0 + Duration::from_millis(500)), Duration::ZERO);
        // Idle time never banks more than the burst.
        assert_eq!(r.take(1000, t0 + Duration::from_secs(60)), Duration::ZERO);
        assert_eq!(
            r.take(1, t0 + Duration::from_secs(60)),
            Duration::from_millis(1)
        );
    }

    #[test]
    fn a_short_burst_holds_only_its_share_of_the_rate() {
        let t0 = Instant::now();
        let mut r = TokenBucket::new(10_000, Duration::from_millis(100), t0);
        assert_eq!(r.available(t0), 1000);
        assert_eq!(r.available(t0 + Duration::from_secs(9)), 1000);
        assert_eq!(r.take(3000, t0), Duration::from_millis(200));
        assert_eq!(r.available(t0 + Duration::from_millis(100)), 0);
        assert_eq!(r.available(t0 + Duration::from_millis(300)), 1000);
    }

    #[test]
    fn the_tighter_of_node_and_torrent_rules_and_unlimited_is_skipped() {
        let node = Arc::new(RateLimiter::new(UNLIMITED));
        let torrent = Arc::new(RateLimiter::new(UNLIMITED));
        let l = Limiters::new(Some(node.clone()), Some(torrent.clone()));
        assert_eq!(l.rate(), None);
        assert_eq!(l.available(), None);
        assert_eq!(l.spend(1 << 30), Duration::ZERO);
        torrent.set_rate(1000);
        assert_eq!(l.rate(), Some(1000));
        node.set_rate(500);
        assert_eq!(l.rate(), Some(500));
        // A bucket holds 100 ms of its rate: 50 bytes at 500 B/s.
        assert!(l.available().is_some_and(|a| a <= 50));
        // 150 bytes put the node's bucket 100 bytes (200 ms) into debt.
        let wait = l.spend(150);
        assert!(wait >= Duration::from_millis(190), "{wait:?}");
        node.set_rate(UNLIMITED);
        assert_eq!(l.rate(), Some(1000));
    }
}
