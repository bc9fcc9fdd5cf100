//! The disk write queue and its credits: the heart of disk backpressure.
//!
//! The queue has a byte capacity (`--disk-queue`). Before a block is
//! requested from a peer, its bytes are reserved here as a [`Credit`]. When
//! the block arrives the credit becomes a queued write; when the writer has
//! written it, the bytes return. Dropping a credit (request cancelled,
//! rejected, timed out, peer gone) returns its bytes at once, so a credit
//! cannot leak. Hence, at every instant,
//! `reserved + queued ≤ capacity`.
//!
//! Throttling has hysteresis: once a reservation does not fit, the queue is
//! *throttled* and refuses every reservation until `reserved + queued` has
//! drained to the low watermark. That keeps requests flowing in bursts the
//! disk can absorb instead of one block at a time at the edge of full.
//!
//! [`CreditBook`] is the pure accounting (explicit `now`, no locks);
//! [`WriteQueue`] wraps it with a lock and an async wait for reservers. The
//! blocks themselves wait in each torrent's storage for its writer.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::Notify;

/// Live numbers of a write queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct QueueStats {
    /// Byte capacity (`--disk-queue`).
    pub capacity_bytes: u64,
    /// Bytes received and waiting for the writer.
    pub queued_bytes: u64,
    /// Bytes requested from peers and not yet arrived (outstanding credits).
    pub reserved_bytes: u64,
    /// `capacity − queued − reserved`.
    pub headroom_bytes: u64,
    /// Reservations resume when `queued + reserved` drains to this.
    pub low_watermark_bytes: u64,
    /// Whether reservations are currently refused.
    pub throttled: bool,
    /// Total time reservations were refused, including the current stretch.
    #[serde(serialize_with = "as_secs")]
    pub throttled_total: Duration,
    /// Writes completed (or abandoned) since the queue was made.
    pub writes_done: u64,
}

impl QueueStats {
    /// Queued plus reserved: what counts against the capacity.
    pub fn used_bytes(&self) -> u64 {
        self.queued_bytes.saturating_add(self.reserved_bytes)
    }
}

fn as_secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

/// Pure byte accounting with watermark hysteresis.
///
/// Inputs: `try_reserve`, `enqueue`, `release_*`, each with `now`.
/// Outputs: whether a reservation succeeded; whether a release ended a
/// throttled stretch (then waiters should be woken); `stats(now)`.
#[derive(Debug, Clone)]
pub struct CreditBook {
    capacity: u64,
    low_watermark: u64,
    reserved: u64,
    queued: u64,
    throttled_since: Option<Instant>,
    throttled_total: Duration,
    writes_done: u64,
}

impl CreditBook {
    /// `low_watermark` is clamped to `capacity`.
    pub fn new(capacity: u64, low_watermark: u64) -> Self {
        Self {
            capacity,
            low_watermark: low_watermark.min(capacity),
            reserved: 0,
            queued: 0,
            throttled_since: None,
            throttled_total: Duration::ZERO,
            writes_done: 0,
        }
    }

    fn used(&self) -> u64 {
        self.reserved + self.queued
    }

    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Reserves `n` bytes if they fit and the queue is not throttled.
    /// A refusal starts a throttled stretch.
    pub fn try_reserve(&mut self, n: u64, now: Instant) -> bool {
        if self.throttled_since.is_none() && self.used() + n <= self.capacity {
            self.reserved += n;
            return true;
        }
        if self.throttled_since.is_none() {
            self.throttled_since = Some(now);
        }
        false
    }

    /// A reserved block arrived: its bytes move from reserved to queued.
    pub fn enqueue(&mut self, n: u64) {
        debug_assert!(self.reserved >= n);
        self.reserved -= n;
        self.queued += n;
    }

    /// A reservation was dropped before its block arrived. Returns whether a
    /// throttled stretch ended.
    pub fn release_reserved(&mut self, n: u64, now: Instant) -> bool {
        debug_assert!(self.reserved >= n);
        self.reserved -= n;
        self.maybe_recover(now)
    }

    /// A queued write finished (or was abandoned). Returns whether a
    /// throttled stretch ended.
    pub fn release_queued(&mut self, n: u64, now: Instant) -> bool {
        debug_assert!(self.queued >= n);
        self.queued -= n;
        self.writes_done += 1;
        self.maybe_recover(now)
    }

    fn maybe_recover(&mut self, now: Instant) -> bool {
        match self.throttled_since {
            Some(since) if self.used() <= self.low_watermark => {
                self.throttled_total += now.saturating_duration_since(since);
                self.throttled_since = None;
                true
            }
            _ => false,
        }
    }

    pub fn stats(&self, now: Instant) -> QueueStats {
        let current = self
            .throttled_since
            .map_or(Duration::ZERO, |s| now.saturating_duration_since(s));
        QueueStats {
            capacity_bytes: self.capacity,
            queued_bytes: self.queued,
            reserved_bytes: self.reserved,
            headroom_bytes: self.capacity - self.used(),
            low_watermark_bytes: self.low_watermark,
            throttled: self.throttled_since.is_some(),
            throttled_total: self.throttled_total + current,
            writes_done: self.writes_done,
        }
    }
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    /// Wakes async reservers when a throttled stretch ends (or the queue
    /// closes).
    recovered: Notify,
}

#[derive(Debug)]
struct State {
    book: CreditBook,
    closed: bool,
}

/// Handle to a write queue's credits; cheap to clone. One queue can be
/// shared by every torrent of a node, so `--disk-queue` bounds the node.
#[derive(Debug, Clone)]
pub struct WriteQueue {
    shared: Arc<Shared>,
}

/// Why a reservation can never succeed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReserveError {
    #[error("{bytes} bytes is more than the whole disk queue ({capacity} bytes)")]
    TooLarge { bytes: u64, capacity: u64 },
    #[error("the disk queue is closed")]
    Closed,
}

impl WriteQueue {
    /// A queue of `capacity` bytes that resumes reservations once drained to
    /// `low_watermark` bytes.
    pub fn new(capacity: u64, low_watermark: u64) -> Self {
        Self {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    book: CreditBook::new(capacity, low_watermark),
                    closed: false,
                }),
                recovered: Notify::new(),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.shared)
    }

    /// Reserves `bytes` now, or returns `Ok(None)` when the queue is full or
    /// throttled.
    pub fn try_reserve(&self, bytes: u32) -> Result<Option<Credit>, ReserveError> {
        let mut state = self.lock();
        if state.closed {
            return Err(ReserveError::Closed);
        }
        let n = u64::from(bytes);
        if n > state.book.capacity() {
            return Err(ReserveError::TooLarge {
                bytes: n,
                capacity: state.book.capacity(),
            });
        }
        Ok(state.book.try_reserve(n, Instant::now()).then(|| Credit {
            shared: Arc::clone(&self.shared),
            bytes,
            queued: false,
        }))
    }

    /// Waits until `bytes` can be reserved.
    ///
    /// Cancel-safe: dropping the future reserves nothing.
    pub async fn reserve(&self, bytes: u32) -> Result<Credit, ReserveError> {
        loop {
            let recovered = self.shared.recovered.notified();
            tokio::pin!(recovered);
            // Register before checking, so a recovery between the check and
            // the await is not missed.
            recovered.as_mut().enable();
            if let Some(credit) = self.try_reserve(bytes)? {
                return Ok(credit);
            }
            recovered.await;
        }
    }

    pub fn stats(&self) -> QueueStats {
        self.lock().book.stats(Instant::now())
    }

    /// Refuses every reservation from now on and wakes waiters with
    /// [`ReserveError::Closed`]. Credits already out still return.
    pub fn close(&self) {
        self.lock().closed = true;
        self.shared.recovered.notify_waiters();
    }

    /// Whether `credit` was reserved from this queue.
    pub fn owns(&self, credit: &Credit) -> bool {
        Arc::ptr_eq(&self.shared, &credit.shared)
    }
}

fn lock(shared: &Shared) -> MutexGuard<'_, State> {
    // A panic while holding this lock leaves plain counters behind; they are
    // still the best numbers we have.
    shared.state.lock().unwrap_or_else(|p| p.into_inner())
}

/// Bytes reserved in a [`WriteQueue`]. Returned when dropped.
#[derive(Debug)]
pub struct Credit {
    shared: Arc<Shared>,
    bytes: u32,
    queued: bool,
}

impl Credit {
    pub fn bytes(&self) -> u32 {
        self.bytes
    }

    /// The block arrived: its bytes now count as queued for the disk.
    pub(crate) fn mark_queued(&mut self) {
        if !self.queued {
            lock(&self.shared).book.enqueue(u64::from(self.bytes));
            self.queued = true;
        }
    }
}

impl Drop for Credit {
    fn drop(&mut self) {
        let n = u64::from(self.bytes);
        let now = Instant::now();
        let mut state = lock(&self.shared);
        let recovered = if self.queued {
            state.book.release_queued(n, now)
        } else {
            state.book.release_reserved(n, now)
        };
        drop(state);
        if recovered {
            self.shared.recovered.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn hysteresis_refuses_until_the_low_watermark() {
        let t0 = Instant::now();
        let mut b = CreditBook::new(100, 50);
        assert!(b.try_reserve(60, t0));
        assert!(b.try_reserve(40, t0));
        assert!(!b.try_reserve(1, t0), "full");
        b.enqueue(60);
        // 40 used ≤ 50: the release ends the throttled stretch.
        assert!(b.release_queued(60, t0 + Duration::from_secs(1)));
        let s = b.stats(t0 + Duration::from_secs(1));
        assert!(!s.throttled);
        assert_eq!(s.throttled_total, Duration::from_secs(1));
        assert!(b.try_reserve(60, t0));
        assert!(!b.try_reserve(1, t0 + Duration::from_secs(2)));
        // Draining to 70 (> 50) keeps it throttled even though 30 would fit.
        assert!(!b.release_reserved(30, t0 + Duration::from_secs(3)));
        assert!(!b.try_reserve(1, t0 + Duration::from_secs(3)));
        assert!(b.release_reserved(30, t0 + Duration::from_secs(4)));
        assert_eq!(b.stats(t0).throttled_total, Duration::from_secs(3));
    }

    #[derive(Debug, Clone)]
    enum Op {
        Reserve(u32),
        Arrive(usize),
        Cancel(usize),
        Write,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (1u32..=20_000).prop_map(Op::Reserve),
            any::<usize>().prop_map(Op::Arrive),
            any::<usize>().prop_map(Op::Cancel),
            Just(Op::Write),
        ]
    }

    proptest! {
        /// queued + reserved ≤ capacity at every step, and every credit
        /// returns: once all are dropped the queue is empty.
        #[test]
        fn credits_are_bounded_and_always_return(
            capacity in 16_384u64..200_000,
            low_pct in 0u64..=100,
            ops in proptest::collection::vec(op(), 1..200),
        ) {
            let q = WriteQueue::new(capacity, capacity * low_pct / 100);
            let mut held: Vec<Credit> = Vec::new();
            let mut pending: Vec<Credit> = Vec::new();
            for op in ops {
                match op {
                    Op::Reserve(n) => match q.try_reserve(n) {
                        Ok(Some(c)) => held.push(c),
                        Ok(None) => {}
                        Err(ReserveError::TooLarge { .. }) => prop_assert!(u64::from(n) > capacity),
                        Err(e) => prop_assert!(false, "{e}"),
                    },
                    Op::Arrive(i) if !held.is_empty() => {
                        let mut c = held.swap_remove(i % held.len());
                        c.mark_queued();
                        pending.push(c);
                    }
                    Op::Cancel(i) if !held.is_empty() => {
                        held.swap_remove(i % held.len());
                    }
                    Op::Write if !pending.is_empty() => {
                        pending.remove(0);
                    }
                    _ => {}
                }
                let s = q.stats();
                prop_assert!(s.queued_bytes + s.reserved_bytes <= capacity);
                prop_assert_eq!(
                    s.reserved_bytes,
                    held.iter().map(|c| u64::from(c.bytes())).sum::<u64>()
                );
                prop_assert_eq!(
                    s.queued_bytes,
                    pending.iter().map(|c| u64::from(c.bytes())).sum::<u64>()
                );
            }
            held.clear();
            pending.clear();
            let s = q.stats();
            prop_assert_eq!((s.queued_bytes, s.reserved_bytes, s.headroom_bytes), (0, 0, capacity));
            prop_assert!(!s.throttled);
        }
    }

    #[tokio::test]
    async fn an_async_reserver_wakes_when_the_queue_drains() {
        let q = WriteQueue::new(32_768, 16_384);
        let a = q.try_reserve(16_384).unwrap().unwrap();
        let b = q.try_reserve(16_384).unwrap().unwrap();
        assert!(q.try_reserve(1).unwrap().is_none());
        let waiter = tokio::spawn({
            let q = q.clone();
            async move { q.reserve(16_384).await.map(|c| c.bytes()) }
        });
        drop(a); // 16 KiB used: at the low watermark, recovered.
        let got = tokio::time::timeout(Duration::from_secs(10), waiter)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, Ok(16_384));
        drop(b);
        assert_eq!(q.stats().reserved_bytes, 0);
    }

    #[tokio::test]
    async fn a_closed_queue_fails_waiters() {
        let q = WriteQueue::new(16_384, 0);
        let _full = q.try_reserve(16_384).unwrap().unwrap();
        let waiter = tokio::spawn({
            let q = q.clone();
            async move { q.reserve(1).await.map(|c| c.bytes()) }
        });
        tokio::task::yield_now().await;
        q.close();
        let got = tokio::time::timeout(Duration::from_secs(10), waiter)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, Err(ReserveError::Closed));
    }
}
