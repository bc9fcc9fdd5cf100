//! The torrent's rules, one test each, on a fake clock and a fake write
//! queue: no sockets, no tasks, no sleeping. Each runs in milliseconds.

use std::cell::Cell;
use std::rc::Rc;

use proptest::prelude::*;
use sluice_choke::SeedMode;

use super::*;

const S: Duration = Duration::from_secs(1);
const MS: Duration = Duration::from_millis(1);
/// Two blocks per piece.
const PIECE: u32 = 2 * BLOCK_SIZE;

/// A write queue of `capacity` bytes whose credits return when dropped;
/// `used` is what is reserved or queued now.
#[derive(Debug, Clone)]
struct FakeQueue {
    capacity: u64,
    used: Rc<Cell<u64>>,
    /// Refuse every reservation (a full queue, whatever `used` says).
    full: Rc<Cell<bool>>,
}

#[derive(Debug)]
struct FakeCredit {
    bytes: u32,
    used: Rc<Cell<u64>>,
}

impl Drop for FakeCredit {
    fn drop(&mut self) {
        self.used.set(self.used.get() - u64::from(self.bytes));
    }
}

impl Credits for FakeQueue {
    type Credit = FakeCredit;

    fn try_reserve(&mut self, bytes: u32) -> Result<Option<FakeCredit>, ReserveError> {
        let n = u64::from(bytes);
        if self.full.get() || self.used.get() + n > self.capacity {
            return Ok(None);
        }
        self.used.set(self.used.get() + n);
        Ok(Some(FakeCredit {
            bytes,
            used: Rc::clone(&self.used),
        }))
    }
}

/// One core (node 0) and what it asked for.
struct Harness {
    core: TorrentCore<u32, FakeQueue>,
    queue: FakeQueue,
    now: Instant,
    /// Blocks handed to storage and not yet written (their credits).
    queued: Vec<(BlockRef, FakeCredit)>,
    sent: Vec<(PeerKey, Message)>,
    /// Each `Action::Haves` (one write), as well as its messages in `sent`.
    have_writes: Vec<(PeerKey, Vec<u32>)>,
    choked: HashMap<PeerKey, bool>,
    caps: HashMap<PeerKey, Option<u64>>,
    closed: Vec<(PeerKey, CloseReason)>,
    waits: usize,
    flushes: usize,
}

fn layout(pieces: u32) -> Layout {
    Layout::from_lengths(PIECE, [u64::from(pieces) * u64::from(PIECE)])
}

fn config() -> TorrentConfig {
    TorrentConfig::default()
        .with_seed(1)
        .with_ban_after(1)
        .with_choker(ChokerChoice::TitForTat(
            TitForTatConfig::default()
                .with_rechoke_interval(S)
                .with_slots(2),
        ))
}

impl Harness {
    fn new(pieces: u32, have: bool, config: TorrentConfig) -> Self {
        let queue = FakeQueue {
            capacity: 1 << 30,
            used: Rc::default(),
            full: Rc::default(),
        };
        let now = Instant::now();
        let l = layout(pieces);
        let bits = Bitfield::repeat(have, l.num_pieces() as usize);
        Self {
            core: TorrentCore::new(0, l, bits, config, queue.clone(), now),
            queue,
            now,
            queued: Vec::new(),
            sent: Vec::new(),
            have_writes: Vec::new(),
            choked: HashMap::new(),
            caps: HashMap::new(),
            closed: Vec::new(),
            waits: 0,
            flushes: 0,
        }
    }

    /// Carries out every action; checks the invariants after.
    fn run(&mut self) {
        while let Some(a) = self.core.poll_action(self.now) {
            match a {
                Action::Send { peer, message } => self.sent.push((peer, message)),
                Action::Haves { peer, pieces } => {
                    self.sent
                        .extend(pieces.iter().map(|&p| (peer, Message::Have(p))));
                    self.have_writes.push((peer, pieces));
                }
                Action::Choke { peer, choke } => {
                    self.choked.insert(peer, choke);
                }
                Action::Cap { peer, rate } => {
                    self.caps.insert(peer, rate);
                }
                Action::Close { peer, reason } => self.closed.push((peer, reason)),
                Action::Submit { block, credit, .. } => self.queued.push((block, credit)),
                Action::WaitForCredits => self.waits += 1,
                Action::Flush => self.flushes += 1,
            }
        }
        self.check();
    }

    /// The invariants: the core and its picker agree, and the write
    /// queue holds exactly what outstanding requests and queued blocks
    /// owe it.
    fn check(&self) {
        self.core.check_invariants().unwrap();
        let (_, outstanding) = self.core.outstanding_total();
        let queued: u64 = self.queued.iter().map(|(_, c)| u64::from(c.bytes)).sum();
        assert_eq!(
            self.queue.used.get(),
            outstanding + queued,
            "credits held = credits owed"
        );
    }

    fn advance(&mut self, d: Duration) {
        let end = self.now + d;
        while self.core.poll_timeout() <= end {
            self.now = self.now.max(self.core.poll_timeout());
            self.core.handle_timeout(self.now);
            self.run();
        }
        self.now = end;
    }

    fn open(&mut self, id: u32) -> PeerKey {
        let key = self.core.peer_opened(self.now, id, false, 250).unwrap();
        self.run();
        key
    }

    fn say(&mut self, key: PeerKey, m: Message) {
        self.core.on_message(self.now, key, m);
        self.run();
    }

    fn storage(&mut self, ev: StorageEvent) {
        self.core.on_storage(self.now, ev);
        self.run();
    }

    /// Requests sent to `key` since the last call (taken from the log).
    fn requests(&mut self, key: PeerKey) -> Vec<BlockSpec> {
        let mut out = Vec::new();
        self.sent.retain(|(k, m)| match m {
            Message::Request(spec) if *k == key => {
                out.push(*spec);
                false
            }
            _ => true,
        });
        out
    }

    fn sent_to(&self, key: PeerKey, want: &Message) -> bool {
        self.sent.iter().any(|(k, m)| *k == key && m == want)
    }

    /// A peer that has every piece and unchokes us.
    fn seeder(&mut self, id: u32) -> PeerKey {
        let key = self.open(id);
        self.say(key, Message::HaveAll);
        self.say(key, Message::Unchoke);
        key
    }

    /// Answers a request with its block.
    fn deliver(&mut self, key: PeerKey, spec: BlockSpec) {
        let data = Bytes::from(vec![0u8; spec.len as usize]);
        self.say(
            key,
            Message::Piece {
                piece: spec.piece,
                offset: spec.offset,
                data,
            },
        );
    }

    /// The writer wrote every queued block of `piece` (credits back).
    fn write_piece(&mut self, piece: u32) {
        self.queued.retain(|(b, _)| b.piece().get() != piece);
    }

    fn piece(&self, i: u32) -> PieceIndex {
        self.core.layout().piece(i).unwrap()
    }
}

fn leaves(n: usize, fill: u8) -> Vec<LeafHash> {
    vec![[fill; 32]; n]
}

#[test]
fn a_liar_alone_behind_a_bad_piece_is_banned_and_refused_after() {
    let mut h = Harness::new(4, false, config());
    let liar = h.seeder(7);
    let reqs = h.requests(liar);
    assert!(!reqs.is_empty(), "requests go to an unchoking seeder");
    let piece = reqs[0].piece;
    for spec in reqs.iter().filter(|s| s.piece == piece) {
        h.deliver(liar, *spec);
    }
    h.write_piece(piece);
    let p = h.piece(piece);
    h.storage(StorageEvent::HashFailed {
        piece: p,
        leaves: leaves(2, 1),
    });
    assert_eq!(h.closed, vec![(liar, CloseReason::Banned)]);
    assert!(h.core.is_banned(7));
    assert_eq!(h.core.peer_count(), 0);
    assert_eq!(
        h.core.peer_opened(h.now, 7, true, 250),
        Err(Refusal::Banned),
        "reconnecting does not help"
    );
    // Its requests went back: nothing is owed but what it already sent.
    h.check();
}

#[test]
fn with_shared_pieces_only_the_sender_of_the_bad_block_is_banned() {
    let mut h = Harness::new(1, false, config());
    let honest = h.seeder(1);
    let liar = h.seeder(2);
    // The honest peer is asked for both blocks, the liar for both too
    // (endgame); each delivers one.
    let (a, b) = (h.requests(honest), h.requests(liar));
    assert_eq!((a.len(), b.len()), (2, 2), "{a:?} {b:?}");
    h.deliver(honest, a[0]);
    let from_liar = *b.iter().find(|s| **s != a[0]).unwrap();
    h.deliver(liar, from_liar);
    assert_eq!(h.queued.len(), 2);
    h.write_piece(0);
    // Block i's leaf as written: the liar's block differs from the good one.
    let liar_block = (from_liar.offset / BLOCK_SIZE) as usize;
    let mut bad = leaves(2, 9);
    bad[liar_block] = [66; 32];
    h.storage(StorageEvent::HashFailed {
        piece: h.piece(0),
        leaves: bad,
    });
    assert!(h.closed.is_empty(), "nobody is blamed while two sent it");
    // The retry goes to one peer (the first to ask owns the piece).
    let retry: Vec<(PeerKey, BlockSpec)> = [honest, liar]
        .into_iter()
        .flat_map(|k| h.requests(k).into_iter().map(move |s| (k, s)))
        .collect();
    let owners: HashSet<PeerKey> = retry.iter().map(|(k, _)| *k).collect();
    assert_eq!(owners.len(), 1, "the retry names one sender: {retry:?}");
    for (k, s) in retry {
        h.deliver(k, s);
    }
    h.write_piece(0);
    h.storage(StorageEvent::PieceVerified(h.piece(0)));
    h.storage(StorageEvent::GoodLeaves {
        piece: h.piece(0),
        leaves: leaves(2, 9),
    });
    assert_eq!(h.closed, vec![(liar, CloseReason::Banned)]);
    assert!(!h.core.is_banned(1) && h.core.is_banned(2));
}

#[test]
fn liars_are_banned_however_many_ids_have_strikes() {
    let config = config().with_ban_after(2);
    let mut h = Harness::new(1, false, config);
    // 5000 ids with one strike each: more than the core remembers.
    for id in 100..5100 {
        h.core.strike(id);
    }
    let liar = h.seeder(9);
    for _ in 0..2 {
        let reqs = h.requests(liar);
        for s in &reqs {
            h.deliver(liar, *s);
        }
        h.write_piece(0);
        h.storage(StorageEvent::HashFailed {
            piece: h.piece(0),
            leaves: leaves(2, 1),
        });
    }
    assert_eq!(h.closed, vec![(liar, CloseReason::Banned)]);
    assert!(h.core.offenders.strikes.len() <= MAX_TRACKED_PEERS);
}

#[test]
fn a_full_write_queue_stops_requests_until_it_recovers() {
    let mut h = Harness::new(8, false, config());
    h.queue.full.set(true);
    let seed = h.seeder(1);
    assert!(h.requests(seed).is_empty(), "no credit, no request");
    assert_eq!(h.waits, 1, "waits for the queue once");
    h.advance(3 * S);
    assert!(h.requests(seed).is_empty(), "still waiting: no request");
    assert_eq!(h.waits, 1);
    h.queue.full.set(false);
    h.core.credits_available(h.now);
    h.run();
    assert!(!h.requests(seed).is_empty(), "requests resume on recovery");
}

#[test]
fn a_failed_write_pauses_requests_then_they_resume() {
    let mut h = Harness::new(8, false, config());
    let seed = h.seeder(1);
    let reqs = h.requests(seed);
    let first = reqs[0];
    h.deliver(seed, first);
    // (Answering it made room for another request: not what is tested.)
    h.requests(seed);
    let block = h
        .core
        .layout()
        .block_at(first.piece, first.offset, first.len)
        .unwrap();
    // The writer could not write it: its credit comes back with the error.
    h.queued.retain(|(b, _)| *b != block);
    h.storage(StorageEvent::WriteFailed {
        block,
        error: "no space left on device".into(),
    });
    // Delivering the rest must not bring new requests while paused.
    for s in &reqs[1..] {
        h.deliver(seed, *s);
    }
    h.advance(DISK_RETRY - 10 * MS);
    assert!(h.requests(seed).is_empty(), "paused after a failed write");
    assert_eq!(
        h.core.stats(h.now).disk_error.as_deref(),
        Some("no space left on device")
    );
    h.advance(DISK_RETRY);
    let again = h.requests(seed);
    assert!(
        again.contains(&first),
        "the lost block is asked again: {again:?}"
    );
}

#[test]
fn endgame_asks_twice_and_cancels_the_loser() {
    let mut h = Harness::new(1, false, config());
    let a = h.seeder(1);
    let b = h.seeder(2);
    let (ra, rb) = (h.requests(a), h.requests(b));
    // Every block is requested: b (joined second) was asked for a's block
    // too, or the other way round.
    let dup: Vec<BlockSpec> = ra.iter().filter(|s| rb.contains(s)).copied().collect();
    assert!(!dup.is_empty(), "a block asked of both: {ra:?} {rb:?}");
    h.deliver(a, dup[0]);
    assert!(
        h.sent_to(b, &Message::Cancel(dup[0])),
        "the other is cancelled"
    );
    assert_eq!(h.core.outstanding(b), rb.len() - 1, "its credit is back");
    // Its copy arriving anyway is dropped, and owes nothing.
    h.deliver(b, dup[0]);
    assert_eq!(h.queued.len(), 1);
}

#[test]
fn a_late_block_is_kept_when_still_wanted() {
    let mut h = Harness::new(8, false, config());
    let seed = h.seeder(1);
    let reqs = h.requests(seed);
    // Nothing answers: every request times out, is cancelled, and goes
    // back to the picker.
    h.advance(70 * S);
    assert!(h.sent_to(seed, &Message::Cancel(reqs[0])));
    assert!(h.core.outstanding(seed) > 0, "asked again since");
    let before = h.queued.len();
    // An expired one arriving late is still wanted: taken.
    let late = reqs[reqs.len() - 1];
    let again = h.requests(seed);
    h.deliver(seed, late);
    assert_eq!(h.queued.len(), before + 1, "the late block is kept");
    if again.contains(&late) {
        // Asked of it again meanwhile: now answered by the late copy.
        assert!(h.core.outstanding(seed) < again.len());
    }
}

#[test]
fn a_refused_piece_is_not_asked_again_until_the_claim_returns() {
    let mut h = Harness::new(1, false, config());
    let seed = h.seeder(1);
    let reqs = h.requests(seed);
    for s in &reqs {
        h.say(seed, Message::Reject(*s));
    }
    h.run();
    assert!(h.requests(seed).is_empty(), "not asked again at once");
    assert!(
        h.sent_to(seed, &Message::NotInterested),
        "nothing else to want"
    );
    assert_eq!(h.core.outstanding(seed), 0);
    h.advance(WITHDRAW_FOR + S);
    assert!(
        !h.requests(seed).is_empty(),
        "asked again after the withdrawal"
    );
}

#[test]
fn no_request_goes_to_a_peer_that_chokes_us() {
    let mut h = Harness::new(8, false, config());
    let key = h.open(1);
    h.say(key, Message::HaveAll);
    assert!(h.sent_to(key, &Message::Interested));
    assert!(h.requests(key).is_empty(), "choked: no request");
    h.say(key, Message::Unchoke);
    assert!(!h.requests(key).is_empty());
    h.say(key, Message::Choke);
    h.advance(S);
    assert!(h.requests(key).is_empty(), "choked again: none");
}

/// A BitTorrent peer without the fast extension drops our requests when
/// it chokes us (BEP 3): they are free at once, their credits back, and
/// the blocks go to another peer without waiting for a timeout. One with
/// BEP 6 rejects them itself, so its choke leaves them be.
#[test]
fn a_choke_from_a_peer_without_rejects_frees_its_requests() {
    let mut h = Harness::new(8, false, config());
    let plain = h.seeder(1);
    h.core.set_choke_discards(plain);
    let asked = h.requests(plain);
    assert!(!asked.is_empty());
    let (_, before) = h.core.outstanding_total();
    assert!(before > 0);
    h.say(plain, Message::Choke);
    let (_, after) = h.core.outstanding_total();
    assert_eq!(after, 0, "every request to it is dropped, its credit back");
    let other = h.seeder(2);
    let again = h.requests(other);
    assert!(
        asked.iter().all(|a| again.contains(a)),
        "the dropped blocks are asked of the other peer at once"
    );
    // With rejects (BEP 6) a choke leaves requests to the rejects.
    let fast = h.seeder(3);
    let _ = h.requests(fast);
    let (_, before) = h.core.outstanding_total();
    h.say(other, Message::Choke);
    let (_, after) = h.core.outstanding_total();
    assert_eq!(after, before, "{after} vs {before}");
}

#[test]
fn a_seeder_caps_a_peer_that_passes_nothing_on() {
    let config = config().with_choker(ChokerChoice::TitForTat(
        TitForTatConfig::default()
            .with_rechoke_interval(S)
            .with_slots(4)
            .with_seed_mode(SeedMode::FastestUpload),
    ));
    let mut h = Harness::new(32, true, config);
    h.core.set_upload_limit(Some(1_000_000));
    let hoarder = h.open(1);
    let sharer = h.open(2);
    let other = h.open(3);
    for k in [hoarder, sharer, other] {
        h.say(k, Message::HaveNone);
        h.say(k, Message::Interested);
    }
    assert_eq!(h.choked.get(&hoarder), Some(&false), "slots for everyone");
    // We send the hoarder 8 pieces nobody else has, the sharer 8 more.
    for i in 0..8 {
        h.core.on_served(h.now, hoarder, i);
        h.core.on_served(h.now, sharer, 8 + i);
    }
    // The sharer's pieces show up at the third peer; the hoarder's never.
    for i in 8..16 {
        h.say(other, Message::Have(i));
    }
    h.advance(3 * S);
    let cap = h.caps.get(&hoarder).copied().flatten();
    assert_eq!(cap, Some(250_000), "one slot's share of the upload limit");
    assert_eq!(h.caps.get(&sharer).copied().flatten(), None);
    let stats = h.core.stats(h.now);
    let row = &stats.peers.iter().find(|(k, _)| *k == hoarder).unwrap().1;
    assert_eq!((row.sole_pieces, row.spread_pieces), (8, 0));
}

/// Slots changed while running take effect at the next tick, not at
/// the next rechoke: down to one, one peer keeps its slot; up to four,
/// every interested peer is served.
#[test]
fn upload_slots_change_while_running() {
    let mut h = Harness::new(
        8,
        true,
        config().with_choker(ChokerChoice::TitForTat(
            TitForTatConfig::default()
                .with_rechoke_interval(Duration::from_secs(10))
                .with_slots(3),
        )),
    );
    let peers: Vec<PeerKey> = (1..=4).map(|i| h.open(i)).collect();
    for &k in &peers {
        h.say(k, Message::HaveNone);
        h.say(k, Message::Interested);
    }
    h.advance(S);
    let unchoked = |h: &Harness| {
        peers
            .iter()
            .filter(|k| h.choked.get(k) == Some(&false))
            .count()
    };
    assert_eq!(unchoked(&h), 3);
    h.core.set_upload_slots(1, h.now);
    h.advance(S);
    assert_eq!(unchoked(&h), 1, "one slot");
    h.core.set_upload_slots(4, h.now);
    h.advance(S);
    assert_eq!(unchoked(&h), 4, "four slots");
}

#[test]
fn protocol_errors_close_the_session_with_a_typed_reason() {
    let mut h = Harness::new(4, false, config());
    let k = h.open(1);
    h.say(k, Message::Have(99));
    assert_eq!(
        h.closed,
        vec![(k, CloseReason::Protocol(PeerError::NoSuchPiece(99)))]
    );
    let k = h.open(2);
    h.say(k, Message::HaveNone);
    h.say(k, Message::HaveAll);
    assert_eq!(
        h.closed.last(),
        Some(&(k, CloseReason::Protocol(PeerError::SecondBitfield)))
    );
    assert_eq!(h.core.peer_count(), 0);
}

#[test]
fn a_second_session_from_the_same_peer_replaces_or_is_refused() {
    let mut h = Harness::new(4, false, config());
    // Peer 5 opened one; it opens another: the new one replaces the first.
    let first = h.open(5);
    let second = h.core.peer_opened(h.now, 5, false, 250).unwrap();
    h.run();
    assert_eq!(h.closed, vec![(first, CloseReason::Replaced)]);
    // Both opened one: both keep the one the lower id (ours, 0) opened.
    let ours = h.core.peer_opened(h.now, 5, true, 250).unwrap();
    h.run();
    assert_eq!(h.closed.last(), Some(&(second, CloseReason::Replaced)));
    assert_eq!(
        h.core.peer_opened(h.now, 5, false, 250),
        Err(Refusal::AlreadyConnected)
    );
    assert_eq!(h.core.identity(ours), Some(5));
}

#[test]
fn completion_is_reported_only_once_flushed() {
    let mut h = Harness::new(1, false, config());
    let seed = h.seeder(1);
    for s in h.requests(seed) {
        h.deliver(seed, s);
    }
    h.write_piece(0);
    h.storage(StorageEvent::PieceVerified(h.piece(0)));
    assert!(h.core.is_complete());
    assert!(!h.core.stats(h.now).complete, "verified, not yet flushed");
    h.advance(S);
    assert_eq!(h.flushes, 1, "a complete torrent flushes at once");
    h.core.flushed(h.now, Ok(()));
    assert!(h.core.stats(h.now).complete);
    // The seed holds the piece: it hears of it once the delay is up.
    h.advance(crate::torrent_core::DEFAULT_REDUNDANT_HAVE_DELAY);
    assert!(h.sent_to(seed, &Message::Have(0)));
}

#[test]
fn haves_close_together_go_out_in_one_batch_and_a_lone_one_at_once() {
    let batch = crate::torrent_core::DEFAULT_HAVE_BATCH;
    let mut h = Harness::new(4, false, config());
    let seed = h.seeder(1);
    let other = h.open(2);
    h.say(other, Message::HaveNone);
    let verify = |h: &mut Harness, piece: u32| {
        h.write_piece(piece);
        h.storage(StorageEvent::PieceVerified(h.piece(piece)));
    };
    let haves = |h: &Harness, key: PeerKey| {
        h.sent
            .iter()
            .filter(|(k, m)| *k == key && matches!(m, Message::Have(_)))
            .count()
    };
    // The first goes out at once (to the peer that lacks it).
    verify(&mut h, 0);
    assert!(h.sent_to(other, &Message::Have(0)));
    // Two more within the batch interval wait for its end...
    h.advance(batch / 4);
    verify(&mut h, 1);
    verify(&mut h, 2);
    assert_eq!(haves(&h, other), 1, "held back");
    assert!(
        h.core.poll_timeout() <= h.now + batch,
        "due by the end of the interval"
    );
    // ...and then go out together, in one write.
    h.advance(batch);
    assert!(h.have_writes.contains(&(other, vec![1, 2])));
    assert_eq!(haves(&h, seed), 0, "the seed holds them: held back");
    // One verified long after the last batch is not held back.
    h.advance(batch * 10);
    verify(&mut h, 3);
    assert!(h.sent_to(other, &Message::Have(3)));
}

#[test]
fn haves_for_pieces_a_peer_holds_wait_and_ride_along_with_useful_ones() {
    let batch = crate::torrent_core::DEFAULT_HAVE_BATCH;
    let delay = crate::torrent_core::DEFAULT_REDUNDANT_HAVE_DELAY;
    let mut h = Harness::new(4, false, config());
    let seed = h.seeder(1);
    let half = h.open(2);
    // Pieces 0 and 1 of 4, MSB first.
    h.say(
        half,
        Message::Bitfield {
            first_piece: 0,
            bits: Bytes::from_static(&[0b1100_0000]),
        },
    );
    let verify = |h: &mut Harness, piece: u32| {
        h.write_piece(piece);
        h.storage(StorageEvent::PieceVerified(h.piece(piece)));
    };
    // Piece 0: both peers hold it, so neither hears of it yet.
    verify(&mut h, 0);
    assert!(!h.sent_to(seed, &Message::Have(0)) && !h.sent_to(half, &Message::Have(0)));
    assert!(
        h.core.poll_timeout() <= h.now + delay,
        "due within the delay"
    );
    // Piece 2, later: `half` lacks it, and hears of 0 in the same write.
    h.advance(batch * 2);
    verify(&mut h, 2);
    assert!(h.have_writes.contains(&(half, vec![2, 0])));
    assert!(!h.sent_to(seed, &Message::Have(2)), "the seed still waits");
    // The delay is up: the seed hears of both, in one write.
    h.advance(delay);
    assert!(h.have_writes.contains(&(seed, vec![0, 2])));
    let to_half = h.have_writes.iter().filter(|(k, _)| *k == half).count();
    assert_eq!(to_half, 1, "nothing was left held for it");
}

#[test]
fn a_held_have_for_a_lost_piece_is_never_sent() {
    let delay = crate::torrent_core::DEFAULT_REDUNDANT_HAVE_DELAY;
    let mut h = Harness::new(2, false, config());
    let seed = h.seeder(1);
    h.write_piece(0);
    h.storage(StorageEvent::PieceVerified(h.piece(0)));
    h.storage(StorageEvent::PieceLost(h.piece(0)));
    h.advance(delay * 2);
    assert!(!h.sent_to(seed, &Message::Have(0)));
}

#[test]
fn with_no_redundant_delay_every_peer_hears_at_once() {
    let cfg = config().with_redundant_have_delay(Duration::ZERO);
    let mut h = Harness::new(2, false, cfg);
    let seed = h.seeder(1);
    h.write_piece(0);
    h.storage(StorageEvent::PieceVerified(h.piece(0)));
    assert!(h.sent_to(seed, &Message::Have(0)));
}

#[test]
fn a_piece_lost_before_its_batch_went_out_is_never_announced() {
    let batch = crate::torrent_core::DEFAULT_HAVE_BATCH;
    let mut h = Harness::new(2, false, config());
    let peer = h.open(2);
    h.say(peer, Message::HaveNone);
    h.storage(StorageEvent::PieceVerified(h.piece(0)));
    h.advance(batch / 2);
    h.storage(StorageEvent::PieceVerified(h.piece(1)));
    h.storage(StorageEvent::PieceLost(h.piece(1)));
    h.advance(batch * 2);
    assert!(h.sent_to(peer, &Message::Have(0)));
    assert!(
        !h.sent_to(peer, &Message::Have(1)),
        "lost before it was announced"
    );
}

/// One input to the core, for the property test.
#[derive(Debug, Clone)]
enum Op {
    Open(u32),
    Close(u8),
    HaveAll(u8),
    Have(u8, u32),
    Unchoke(u8),
    Choke(u8),
    /// Answer the `n`th request outstanding anywhere.
    Deliver(usize),
    Reject(usize),
    /// A block nobody asked for.
    Stray(u8, u32),
    /// The writer writes everything queued; each complete piece verifies
    /// or (odd) fails.
    Write(bool),
    QueueFull(bool),
    Recover,
    Advance(u16),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (1u32..6).prop_map(Op::Open),
        (0u8..6).prop_map(Op::Close),
        (0u8..6).prop_map(Op::HaveAll),
        (0u8..6, 0u32..8).prop_map(|(k, i)| Op::Have(k, i)),
        (0u8..6).prop_map(Op::Unchoke),
        (0u8..6).prop_map(Op::Choke),
        any::<usize>().prop_map(Op::Deliver),
        any::<usize>().prop_map(Op::Deliver),
        any::<usize>().prop_map(Op::Deliver),
        any::<usize>().prop_map(Op::Reject),
        (0u8..6, 0u32..16).prop_map(|(k, b)| Op::Stray(k, b)),
        any::<bool>().prop_map(Op::Write),
        any::<bool>().prop_map(Op::QueueFull),
        Just(Op::Recover),
        (1u16..5000).prop_map(Op::Advance),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// After every input: the core and the picker agree on what is
    /// requested from whom; outside endgame no block is requested twice;
    /// the credits held equal the credits owed; no request goes to a peer
    /// that chokes us. Once every peer is gone, nothing is owed.
    #[test]
    fn the_core_keeps_its_invariants(ops in proptest::collection::vec(op(), 1..200)) {
        let mut h = Harness::new(8, false, config().with_ban_after(2));
        h.queue.capacity = 6 * u64::from(BLOCK_SIZE);
        let mut keys: Vec<PeerKey> = Vec::new();
        let mut unchoked: HashSet<PeerKey> = HashSet::new();
        let key = |keys: &Vec<PeerKey>, i: u8| keys.get(i as usize % keys.len().max(1)).copied();
        for op in ops {
            h.sent.clear();
            let endgame_before = h.core.picker.in_endgame();
            match op {
                Op::Open(id) => {
                    if let Ok(k) = h.core.peer_opened(h.now, id, id % 2 == 0, 250) {
                        keys.push(k);
                    }
                    h.run();
                }
                Op::Close(i) => if let Some(k) = key(&keys, i) {
                    h.core.peer_closed(h.now, k);
                    h.run();
                },
                Op::HaveAll(i) => if let Some(k) = key(&keys, i) { h.say(k, Message::HaveAll) },
                Op::Have(i, p) => if let Some(k) = key(&keys, i) { h.say(k, Message::Have(p)) },
                Op::Unchoke(i) => if let Some(k) = key(&keys, i) {
                    unchoked.insert(k);
                    h.say(k, Message::Unchoke);
                },
                Op::Choke(i) => if let Some(k) = key(&keys, i) {
                    unchoked.remove(&k);
                    h.say(k, Message::Choke);
                },
                Op::Deliver(n) | Op::Reject(n) => {
                    let all: Vec<(PeerKey, BlockRef)> = h.core.peers.iter()
                        .flat_map(|(k, p)| p.outstanding.keys().map(move |b| (*k, *b)))
                        .collect();
                    if !all.is_empty() {
                        let (k, b) = all[n % all.len()];
                        let spec = h.core.spec(b);
                        if matches!(op, Op::Deliver(_)) {
                            h.deliver(k, spec);
                        } else {
                            h.say(k, Message::Reject(spec));
                        }
                    }
                }
                Op::Stray(i, b) => if let Some(k) = key(&keys, i) {
                    h.deliver(k, BlockSpec { piece: b / 2, offset: (b % 2) * BLOCK_SIZE, len: BLOCK_SIZE });
                },
                Op::Write(fail) => {
                    let blocks: Vec<BlockRef> = h.queued.drain(..).map(|(b, _)| b).collect();
                    let mut pieces: Vec<u32> = blocks.iter().map(|b| b.piece().get()).collect();
                    pieces.sort();
                    pieces.dedup();
                    for p in pieces {
                        let piece = h.piece(p);
                        let done = blocks.iter().filter(|b| b.piece() == piece).count() == 2;
                        if done && !h.core.have()[p as usize] {
                            if fail && p % 2 == 1 {
                                h.storage(StorageEvent::HashFailed { piece, leaves: leaves(2, 1) });
                            } else {
                                h.storage(StorageEvent::PieceVerified(piece));
                            }
                        } else if !done {
                            // Written alone: lost again, as after a crash.
                            for b in blocks.iter().filter(|b| b.piece() == piece) {
                                h.storage(StorageEvent::WriteFailed { block: *b, error: "x".into() });
                            }
                        }
                    }
                }
                Op::QueueFull(full) => { h.queue.full.set(full); h.run(); }
                Op::Recover => { h.core.credits_available(h.now); h.run(); }
                Op::Advance(ms) => h.advance(Duration::from_millis(ms.into())),
            }
            keys.retain(|k| h.core.peers.contains_key(k));
            let endgame = endgame_before || h.core.picker.in_endgame();
            for (k, m) in &h.sent {
                if let Message::Request(spec) = m
                    && let Some(p) = h.core.peers.get(k)
                {
                    prop_assert!(!p.peer_choking, "requested {:?} of a peer that chokes us", spec);
                    prop_assert!(p.am_interested);
                    let b = h.core.block_of(*spec).unwrap();
                    let askers = h.core.peers.values().filter(|p| p.outstanding.contains_key(&b)).count();
                    prop_assert!(askers <= 1 || endgame, "{:?} asked of {} peers outside endgame", b, askers);
                }
            }
        }
        for k in keys {
            h.core.peer_closed(h.now, k);
        }
        h.run();
        h.queued.clear();
        prop_assert_eq!(h.queue.used.get(), 0, "every credit back once everyone left");
    }
}
