//! The upload side of one session, as pure rules: which of a peer's
//! requests we take, which we refuse, and how many blocks go in the next
//! batch. The session task (`session`) only does the I/O around it; the
//! simulator serves its modelled peers with the same rules.
//!
//! Inputs: [`UploadQueue::request`] (with whether we hold the piece),
//! [`UploadQueue::cancel`], [`UploadQueue::set_choked`]. Outputs: the
//! admission of each request, the requests a choke refuses, and
//! [`UploadQueue::next_batch`], sized by [`batch_blocks`].

use std::collections::VecDeque;

use sluice_storage::BLOCK_SIZE;

use crate::wire::BlockSpec;

/// Why a request was refused (the peer gets a `Reject` either way).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectReason {
    /// We choke the peer.
    Choked,
    /// We do not hold that piece (or no such block).
    NotHeld,
    /// Its queue with us holds our advertised `max_requests` already.
    QueueFull,
}

/// What became of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Queued,
    Rejected(RejectReason),
}

/// A peer's requests waiting to be served, bounded by the `max_requests`
/// we advertise. Starts choked.
#[derive(Debug, Clone)]
pub struct UploadQueue {
    queue: VecDeque<BlockSpec>,
    max: usize,
    choked: bool,
}

impl UploadQueue {
    pub fn new(max_requests: u32) -> Self {
        Self {
            queue: VecDeque::new(),
            max: max_requests.max(1) as usize,
            choked: true,
        }
    }

    /// The peer asks for `spec`; `held`: we have its piece, verified.
    pub fn request(&mut self, spec: BlockSpec, held: bool) -> Admission {
        let refuse = if self.choked {
            Some(RejectReason::Choked)
        } else if !held {
            Some(RejectReason::NotHeld)
        } else if self.queue.len() >= self.max {
            Some(RejectReason::QueueFull)
        } else {
            None
        };
        match refuse {
            Some(r) => Admission::Rejected(r),
            None => {
                self.queue.push_back(spec);
                Admission::Queued
            }
        }
    }

    /// The peer no longer wants `spec` (no answer is owed).
    pub fn cancel(&mut self, spec: BlockSpec) {
        self.queue.retain(|q| *q != spec);
    }

    /// Chokes (true) or unchokes the peer. Choking refuses everything
    /// queued: returned, to be rejected, so it can ask elsewhere at once.
    pub fn set_choked(&mut self, choke: bool) -> Vec<BlockSpec> {
        self.choked = choke;
        if choke {
            self.queue.drain(..).collect()
        } else {
            Vec::new()
        }
    }

    /// Requests waiting.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Something can be served now (rates permitting).
    pub fn ready(&self) -> bool {
        !self.choked && !self.queue.is_empty()
    }

    /// Takes up to `blocks` requests, oldest first.
    pub fn next_batch(&mut self, blocks: usize) -> Vec<BlockSpec> {
        if self.choked {
            return Vec::new();
        }
        let n = self.queue.len().min(blocks);
        self.queue.drain(..n).collect()
    }

    /// The distinct pieces of the next `n` pieces' worth of requests, in
    /// queue order (what a read-ahead looks at).
    pub fn upcoming_pieces(&self, n: usize) -> impl Iterator<Item = u32> + '_ {
        let mut last = None;
        self.queue
            .iter()
            .map(|s| s.piece)
            .filter(move |&p| last.replace(p) != Some(p))
            .take(n)
    }
}

/// Blocks in the next batch: one upload window's worth, and no more than
/// each rate limit lets us send now (`available` bytes per limit), but at
/// least one (a batch spent into debt is paid for by waiting before the
/// next).
pub fn batch_blocks(upload_window: u32, available: impl IntoIterator<Item = u64>) -> usize {
    let mut n = (upload_window / BLOCK_SIZE).max(1) as usize;
    for bytes in available {
        n = n.min((bytes / u64::from(BLOCK_SIZE)).max(1) as usize);
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(piece: u32, block: u32) -> BlockSpec {
        BlockSpec {
            piece,
            offset: block * BLOCK_SIZE,
            len: BLOCK_SIZE,
        }
    }

    #[test]
    fn requests_are_refused_while_choked_beyond_the_queue_or_when_not_held() {
        let mut q = UploadQueue::new(2);
        assert_eq!(
            q.request(req(0, 0), true),
            Admission::Rejected(RejectReason::Choked)
        );
        assert!(q.set_choked(false).is_empty());
        assert_eq!(
            q.request(req(9, 0), false),
            Admission::Rejected(RejectReason::NotHeld)
        );
        assert_eq!(q.request(req(0, 0), true), Admission::Queued);
        assert_eq!(q.request(req(0, 1), true), Admission::Queued);
        assert_eq!(
            q.request(req(1, 0), true),
            Admission::Rejected(RejectReason::QueueFull)
        );
        assert_eq!(q.len(), 2);
    }

    #[test]
    fn a_choke_refuses_everything_queued_and_serves_nothing_after() {
        let mut q = UploadQueue::new(8);
        q.set_choked(false);
        for b in 0..3 {
            q.request(req(0, b), true);
        }
        assert_eq!(q.set_choked(true), vec![req(0, 0), req(0, 1), req(0, 2)]);
        assert!(q.next_batch(16).is_empty());
        assert!(!q.ready());
    }

    #[test]
    fn a_cancelled_request_is_not_served() {
        let mut q = UploadQueue::new(8);
        q.set_choked(false);
        q.request(req(0, 0), true);
        q.request(req(0, 1), true);
        q.cancel(req(0, 0));
        assert_eq!(q.next_batch(16), vec![req(0, 1)]);
    }

    #[test]
    fn batches_are_sized_by_the_window_and_the_tightest_rate() {
        let window = 16 * BLOCK_SIZE;
        assert_eq!(batch_blocks(window, []), 16);
        assert_eq!(batch_blocks(window, [u64::MAX]), 16);
        assert_eq!(batch_blocks(window, [5 * u64::from(BLOCK_SIZE)]), 5);
        assert_eq!(
            batch_blocks(
                window,
                [3 * u64::from(BLOCK_SIZE), 9 * u64::from(BLOCK_SIZE)]
            ),
            3
        );
        // Out of tokens: still one block, paid for by waiting after it.
        assert_eq!(batch_blocks(window, [0]), 1);
        assert_eq!(batch_blocks(BLOCK_SIZE / 2, []), 1);
        let mut q = UploadQueue::new(32);
        q.set_choked(false);
        for b in 0..10 {
            q.request(req(b / 4, b % 4), true);
        }
        assert_eq!(q.next_batch(batch_blocks(window, [4 * 16384])).len(), 4);
        assert_eq!(q.upcoming_pieces(4).collect::<Vec<_>>(), vec![1, 2]);
    }
}
