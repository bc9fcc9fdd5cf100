//! `sluice sim`: a whole swarm in simulated time.
//!
//! Every node is a real [`TorrentCore`] — the rules `sluice seed` and
//! `sluice get` run, with the real choker (tit-for-tat or PropShare) and
//! piece picker — fed by a discrete-event loop instead of sockets and a
//! clock. What is modelled, and how:
//!
//! - **links**: each node's upload is one pipe at its upload rate, shared
//!   block by block, round-robin, by the sessions it serves (a per-peer
//!   cap from the choker is a token bucket on top); each node's download
//!   is one pipe at its download rate; every message takes
//!   [`SimOptions::latency`] on the wire. Control messages are not
//!   throttled.
//! - **sessions**: a peer's requests are admitted, refused and served
//!   with the session's own rules ([`UploadQueue`]).
//! - **disks**: the write queue is the real [`CreditBook`] (byte
//!   capacity, low watermark, throttled time); the writer writes one block
//!   at a time at the node's disk rate. No byte is hashed or written: a
//!   piece verifies when its last block is written, unless a block of it
//!   came from a liar (a block that fails verification), then it fails
//!   with the liar's leaf in that block's place.
//! - **peers**: each node is handed up to [`SimOptions::peers`] running
//!   nodes when it joins and every [`REANNOUNCE`] (as a tracker or the
//!   DHT would), and connects to those with room under the torrent's
//!   `max_peers`; the work grows with nodes × peers, not nodes².
//! - **events**: joins, leaves, up-rate changes, leave-after-copies and
//!   churn, as the testnet has them.
//!
//! Deterministic: one seeded RNG, ordered maps, events ordered by time and
//! then by the order they were made; the same scenario and seed give the
//! same report on any machine (but for the wall-clock fields).

use std::cell::{Cell, RefCell};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, VecDeque};
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::Bytes;
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use sluice_choke::{PeerKey, PropShareConfig, SeedMode, TitForTatConfig};
use sluice_storage::queue::CreditBook;
use sluice_storage::{
    BLOCK_SIZE, Bitfield, BlockRef, Layout, PieceIndex, ReserveError, StorageEvent,
};
use sluice_swarm::ratelimit::{BURST, TokenBucket};
use sluice_swarm::torrent_core::{Action, ChokerChoice, Credits, TorrentConfig, TorrentCore};
use sluice_swarm::upload::{Admission, UploadQueue};
use sluice_swarm::wire::{BlockSpec, Message};

use crate::config::{Action as EventAction, ChokerKind, Config, NodePlan, Role};
use crate::report::{NodeReport, Report, Sample, Simulated};

/// How often a node asks for more peers (as it would re-announce to a
/// tracker or look in the DHT).
pub const REANNOUNCE: Duration = Duration::from_secs(30);
/// What an unlimited link carries (bytes/s): about one libp2p stream on
/// this kind of machine (`docs/` and `shared/notes`), so "unlimited" is
/// still finite.
pub const UNLIMITED_RATE: u64 = 400_000_000;
/// What a disk without a `slow_disk` rate writes (bytes/s).
pub const FAST_DISK_RATE: u64 = 2_000_000_000;
/// Samples per node at most: the interval grows with the run's length so
/// a long run keeps its whole curve in bounded memory.
pub const MAX_SIM_SAMPLES: usize = 2_000;
/// The finest sampling interval (the testnet's).
const SAMPLE_INTERVAL: Duration = crate::run::SAMPLE_INTERVAL;

/// Settings the simulator adds to a scenario.
#[derive(Debug, Clone)]
pub struct SimOptions {
    /// One-way delay of every message. Default 2 ms.
    pub latency: Duration,
    /// Peers a node is handed when it joins and re-announces. Default 50.
    pub peers: usize,
    /// A node dials those it is handed while it has fewer peers than this
    /// (others dial it too, up to `max_peers`). Default: what a real node
    /// does, `sluice_node::MAX_DISCOVERED_PEERS` (24).
    pub dial_until: usize,
    /// Most peers a node keeps (the torrent's `max_peers`). Default 64.
    pub max_peers: usize,
}

impl Default for SimOptions {
    fn default() -> Self {
        Self {
            latency: Duration::from_millis(2),
            peers: 50,
            dial_until: sluice_node::MAX_DISCOVERED_PEERS,
            max_peers: TorrentConfig::default().max_peers(),
        }
    }
}

/// Simulated time: nanoseconds from the start.
type Time = u64;

fn nanos(d: Duration) -> Time {
    d.as_nanos().min(u128::from(u64::MAX)) as Time
}

fn transfer(bytes: u64, rate: u64) -> Time {
    (u128::from(bytes) * 1_000_000_000 / u128::from(rate.max(1))) as Time
}

/// A node's write queue: the real credit book behind a shared cell (one
/// thread), with the simulated clock.
#[derive(Debug)]
struct Book {
    credits: CreditBook,
    /// A release ended a throttled stretch since the node last looked.
    recovered: bool,
}

#[derive(Debug, Clone)]
struct SimQueue {
    book: Rc<RefCell<Book>>,
    clock: Rc<Cell<Instant>>,
}

#[derive(Debug)]
struct SimCredit {
    bytes: u32,
    queued: bool,
    book: Rc<RefCell<Book>>,
    clock: Rc<Cell<Instant>>,
}

impl SimCredit {
    fn mark_queued(&mut self) {
        if !self.queued {
            self.book
                .borrow_mut()
                .credits
                .enqueue(u64::from(self.bytes));
            self.queued = true;
        }
    }
}

impl Drop for SimCredit {
    fn drop(&mut self) {
        let now = self.clock.get();
        let mut book = self.book.borrow_mut();
        let n = u64::from(self.bytes);
        let recovered = if self.queued {
            book.credits.release_queued(n, now)
        } else {
            book.credits.release_reserved(n, now)
        };
        book.recovered |= recovered;
    }
}

impl Credits for SimQueue {
    type Credit = SimCredit;

    fn try_reserve(&mut self, bytes: u32) -> Result<Option<SimCredit>, ReserveError> {
        let n = u64::from(bytes);
        let mut book = self.book.borrow_mut();
        if n > book.credits.capacity() {
            return Err(ReserveError::TooLarge {
                bytes: n,
                capacity: book.credits.capacity(),
            });
        }
        Ok(book
            .credits
            .try_reserve(n, self.clock.get())
            .then(|| SimCredit {
                bytes,
                queued: false,
                book: Rc::clone(&self.book),
                clock: Rc::clone(&self.clock),
            }))
    }
}

type Core = TorrentCore<u32, SimQueue>;

/// The session end of one connection, at one node.
#[derive(Debug)]
struct Link {
    remote: usize,
    /// The remote's life when the connection was made: what reaches it
    /// after it stopped (and maybe restarted, numbering its sessions
    /// afresh) is dropped, never taken by a new session.
    remote_life: u32,
    remote_key: PeerKey,
    upload: UploadQueue,
    /// Pieces we sent it a block of (the first one is reported).
    served: Bitfield,
    cap: Option<TokenBucket>,
    /// A capped session may send again from then.
    cap_ok_at: Time,
}

/// A block on its way to the disk: its credit, and who sent it if that
/// was a liar (the block will not verify).
#[derive(Debug)]
struct Write {
    block: BlockRef,
    credit: SimCredit,
    liar: Option<usize>,
}

#[derive(Debug)]
struct SimNode {
    plan: NodePlan,
    core: Option<Core>,
    /// Bumped on every leave: events for an earlier life are dropped.
    life: u32,
    book: Rc<RefCell<Book>>,
    links: BTreeMap<PeerKey, Link>,
    by_remote: BTreeMap<usize, PeerKey>,
    /// Sessions we do not choke (the only ones that can have requests to
    /// serve), and the one served last: the uplink goes round them.
    unchoked: BTreeSet<PeerKey>,
    served_last: PeerKey,
    uplink_busy: bool,
    uplink_wake: Option<Time>,
    downlink_free: Time,
    disk: VecDeque<Write>,
    disk_busy: bool,
    /// Written blocks of pieces not yet complete: their leaves (good:
    /// `None`; from a liar: `Some(liar)`).
    partial: BTreeMap<PieceIndex, Vec<Option<Option<usize>>>>,
    failed_before: Vec<bool>,
    /// What survives a restart (verified pieces: the resume file).
    verified: Bitfield,
    verified_count: u32,
    waiting_credits: bool,
    timer_at: Option<Time>,
    // What the report wants.
    joined_at: Option<f64>,
    left_at: Option<f64>,
    completed_at: Option<f64>,
    rejoin_at: Option<Time>,
    restarts: usize,
    /// Bytes moved and time throttled in earlier lives (a restarted core
    /// and write queue count from zero).
    carried_down: u64,
    carried_up: u64,
    carried_throttled: Duration,
    downloaded: u64,
    uploaded: u64,
    hash_failures: u64,
    banned: usize,
    peak_disk: u64,
    /// Its first life's time to its first block, and the most peers it
    /// had at once (as sampled).
    first_block: Option<f64>,
    peers_max: usize,
    to_free_riders: u64,
    samples: Vec<Sample>,
}

#[derive(Debug)]
enum Event {
    Join(usize),
    Timer(usize, u32),
    /// A control message arrives at `to`'s session `key`.
    Deliver {
        to: usize,
        life: u32,
        key: PeerKey,
        message: Message,
    },
    /// A block arrives.
    Block {
        to: usize,
        life: u32,
        key: PeerKey,
        spec: BlockSpec,
        liar: Option<usize>,
    },
    /// The remote end of `key` closed.
    Closed {
        to: usize,
        life: u32,
        key: PeerKey,
    },
    UplinkDone {
        node: usize,
        life: u32,
        key: PeerKey,
        spec: BlockSpec,
    },
    UplinkWake(usize, u32),
    DiskDone(usize, u32),
    Flushed(usize, u32),
    Announce(usize, u32),
    Churn,
    Rejoin(usize),
    /// A scenario event (index into the config's events).
    Scenario(usize),
    Sample,
}

/// The simulation.
pub struct Sim {
    config: Config,
    options: SimOptions,
    layout: Layout,
    base: Instant,
    clock: Rc<Cell<Instant>>,
    now: Time,
    seq: u64,
    queue: BinaryHeap<Reverse<(Time, u64, usize)>>,
    /// Event bodies by slot (the heap orders small keys only).
    slots: Vec<Option<Event>>,
    free_slots: Vec<usize>,
    /// Events due one latency from when they were made — most of them,
    /// every message — in order already: a queue, not the heap.
    wire: VecDeque<(Time, u64, Event)>,
    latency: Time,
    nodes: Vec<SimNode>,
    rng: StdRng,
    events_processed: u64,
    sample_every: Time,
    done_events: Vec<bool>,
    zeros: Bytes,
}

impl std::fmt::Debug for Sim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sim")
            .field("nodes", &self.nodes.len())
            .field("now", &self.now)
            .finish_non_exhaustive()
    }
}

/// What a running simulation shows now and then.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    pub simulated_seconds: f64,
    /// Downloading nodes complete / all downloading nodes.
    pub complete: usize,
    pub downloading: usize,
    pub events: u64,
}

impl Sim {
    /// A simulation of `config` (validated here). Nothing runs yet.
    pub fn new(config: Config, options: SimOptions) -> Result<Self> {
        config.validate()?;
        let piece_length = match config.piece_size {
            Some(p) => u32::try_from(p).context("--piece-size is too large")?,
            None => sluice_storage::create::auto_piece_length(config.size),
        };
        if !piece_length.is_power_of_two() || piece_length < BLOCK_SIZE {
            anyhow::bail!("--piece-size must be a power of two of at least 16 KiB");
        }
        let layout = Layout::from_lengths(piece_length, [config.size]);
        let base = Instant::now();
        let pieces = layout.num_pieces() as usize;
        let nodes: Vec<SimNode> = config
            .plan()
            .into_iter()
            .map(|plan| SimNode {
                plan,
                core: None,
                life: 0,
                book: Rc::new(RefCell::new(Book {
                    credits: CreditBook::new(config.disk_queue, config.disk_queue / 4 * 3),
                    recovered: false,
                })),
                links: BTreeMap::new(),
                by_remote: BTreeMap::new(),
                unchoked: BTreeSet::new(),
                served_last: PeerKey(0),
                uplink_busy: false,
                uplink_wake: None,
                downlink_free: 0,
                disk: VecDeque::new(),
                disk_busy: false,
                partial: BTreeMap::new(),
                failed_before: vec![false; pieces],
                verified: Bitfield::repeat(false, pieces),
                verified_count: 0,
                waiting_credits: false,
                timer_at: None,
                joined_at: None,
                left_at: None,
                completed_at: None,
                rejoin_at: None,
                restarts: 0,
                carried_down: 0,
                carried_up: 0,
                carried_throttled: Duration::ZERO,
                downloaded: 0,
                uploaded: 0,
                hash_failures: 0,
                banned: 0,
                peak_disk: 0,
                first_block: None,
                peers_max: 0,
                to_free_riders: 0,
                samples: Vec::new(),
            })
            .collect();
        // Spread over the longest the run may take, so the whole curve
        // fits in the samples kept.
        let longest = nanos(Duration::from_secs_f64(config.timeout));
        let sample_every = nanos(SAMPLE_INTERVAL)
            .max(longest / MAX_SIM_SAMPLES as u64)
            .max(1);
        let done_events = vec![false; config.events.len()];
        let latency = options.latency;
        Ok(Self {
            rng: StdRng::seed_from_u64(config.seed ^ 0x5eed),
            config,
            options,
            layout,
            clock: Rc::new(Cell::new(base)),
            base,
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            slots: Vec::new(),
            free_slots: Vec::new(),
            wire: VecDeque::new(),
            latency: nanos(latency),
            nodes,
            events_processed: 0,
            sample_every,
            done_events,
            zeros: Bytes::from(vec![0u8; BLOCK_SIZE as usize]),
        })
    }

    fn at(&mut self, t: Time, ev: Event) {
        let t = t.max(self.now);
        self.seq += 1;
        if t == self.now + self.latency {
            // `now` never goes back, so these come in time order.
            self.wire.push_back((t, self.seq, ev));
            return;
        }
        let slot = match self.free_slots.pop() {
            Some(s) => {
                self.slots[s] = Some(ev);
                s
            }
            None => {
                self.slots.push(Some(ev));
                self.slots.len() - 1
            }
        };
        self.queue.push(Reverse((t, self.seq, slot)));
    }

    /// The next event in (time, order made) order, from the queue or the
    /// heap.
    fn next_event(&mut self) -> Option<(Time, Event)> {
        let from_wire = match (self.wire.front(), self.queue.peek()) {
            (Some(&(t, seq, _)), Some(&Reverse((ht, hseq, _)))) => (t, seq) < (ht, hseq),
            (Some(_), None) => true,
            (None, _) => false,
        };
        if from_wire {
            let (t, _, ev) = self.wire.pop_front().expect("peeked");
            return Some((t, ev));
        }
        let Reverse((t, _, slot)) = self.queue.pop()?;
        let ev = self.slots[slot].take().expect("a queued event has a body");
        self.free_slots.push(slot);
        Some((t, ev))
    }

    fn instant(&self) -> Instant {
        self.base + Duration::from_nanos(self.now)
    }

    fn secs(&self) -> f64 {
        self.now as f64 / 1e9
    }

    /// Runs to the end; `on_progress` is called at every sample (the
    /// caller decides how often to show it).
    pub fn run(mut self, mut on_progress: impl FnMut(Progress)) -> Result<Report> {
        let wall = Instant::now();
        for i in 0..self.nodes.len() {
            let at = nanos(Duration::from_secs_f64(self.nodes[i].plan.join_at));
            self.at(at, Event::Join(i));
        }
        for (i, e) in self.config.events.clone().iter().enumerate() {
            if !matches!(
                e.action,
                EventAction::Join | EventAction::LeaveAfterCopies { .. }
            ) {
                self.at(nanos(Duration::from_secs_f64(e.at)), Event::Scenario(i));
            }
        }
        if let Some(c) = self.config.churn {
            self.at(nanos(Duration::from_secs_f64(c)), Event::Churn);
        }
        self.at(0, Event::Sample);
        let timeout = nanos(Duration::from_secs_f64(self.config.timeout));
        let mut timed_out = false;
        while let Some((t, ev)) = self.next_event() {
            if t > timeout {
                timed_out = true;
                self.now = timeout;
                break;
            }
            self.now = t;
            self.clock.set(self.instant());
            self.events_processed += 1;
            if matches!(ev, Event::Sample) {
                self.sample();
                self.leave_after_copies();
                if self.finished() {
                    break;
                }
                on_progress(self.progress());
                self.at(self.now + self.sample_every, Event::Sample);
                continue;
            }
            self.handle(ev);
        }
        let wall = wall.elapsed().as_secs_f64();
        // Totals as they are at the end, not at the last sample (its row
        // is not kept: the curves end where sampling did).
        self.refresh_totals();
        Ok(self.report(wall, timed_out))
    }

    fn progress(&self) -> Progress {
        let downloading: Vec<&SimNode> = self
            .nodes
            .iter()
            .filter(|n| n.plan.role.downloads())
            .collect();
        Progress {
            simulated_seconds: self.secs(),
            complete: downloading
                .iter()
                .filter(|n| n.completed_at.is_some())
                .count(),
            downloading: downloading.len(),
            events: self.events_processed,
        }
    }

    /// Every downloading node that stayed is complete, and nobody waits
    /// to join.
    fn finished(&self) -> bool {
        self.nodes.iter().all(|n| {
            let waiting = n.joined_at.is_none() && n.left_at.is_none() || n.rejoin_at.is_some();
            !waiting
                && (!n.plan.role.downloads() || n.left_at.is_some() || n.completed_at.is_some())
        })
    }

    fn alive(&self, node: usize, life: u32) -> bool {
        let n = &self.nodes[node];
        n.core.is_some() && n.life == life
    }

    fn handle(&mut self, ev: Event) {
        match ev {
            Event::Join(i) => {
                if self.nodes[i].joined_at.is_none() && self.nodes[i].left_at.is_none() {
                    self.start(i);
                }
            }
            Event::Rejoin(i) => {
                if self.nodes[i].rejoin_at.take().is_some() && self.nodes[i].left_at.is_none() {
                    self.nodes[i].restarts += 1;
                    self.start(i);
                }
            }
            Event::Timer(i, life) => {
                if self.alive(i, life) && self.nodes[i].timer_at == Some(self.now) {
                    self.nodes[i].timer_at = None;
                    let now = self.instant();
                    let up = self.nodes[i].plan.up_rate;
                    if let Some(core) = self.nodes[i].core.as_mut() {
                        core.set_upload_limit(up);
                        core.handle_timeout(now);
                    }
                    self.drain(i, None);
                }
            }
            Event::Deliver {
                to,
                life,
                key,
                message,
            } => {
                if self.alive(to, life) && self.nodes[to].links.contains_key(&key) {
                    self.deliver(to, key, message);
                }
            }
            Event::Block {
                to,
                life,
                key,
                spec,
                liar,
            } => {
                if self.alive(to, life) && self.nodes[to].links.contains_key(&key) {
                    let data = self.zeros.slice(..spec.len as usize);
                    let now = self.instant();
                    let m = Message::Piece {
                        piece: spec.piece,
                        offset: spec.offset,
                        data,
                    };
                    if let Some(core) = self.nodes[to].core.as_mut() {
                        core.on_message(now, key, m);
                    }
                    self.drain(to, liar);
                }
            }
            Event::Closed { to, life, key } => {
                if self.alive(to, life) && self.nodes[to].links.contains_key(&key) {
                    self.unlink(to, key);
                    let now = self.instant();
                    if let Some(core) = self.nodes[to].core.as_mut() {
                        core.peer_closed(now, key);
                    }
                    self.drain(to, None);
                }
            }
            Event::UplinkDone {
                node,
                life,
                key,
                spec,
            } => {
                if self.alive(node, life) {
                    self.nodes[node].uplink_busy = false;
                    self.sent_block(node, key, spec);
                    self.kick_uplink(node);
                }
            }
            Event::UplinkWake(i, life) => {
                if self.alive(i, life) && self.nodes[i].uplink_wake == Some(self.now) {
                    self.nodes[i].uplink_wake = None;
                    self.kick_uplink(i);
                }
            }
            Event::DiskDone(i, life) => {
                if self.alive(i, life) {
                    self.nodes[i].disk_busy = false;
                    self.written(i);
                    self.kick_disk(i);
                }
            }
            Event::Flushed(i, life) => {
                if self.alive(i, life) {
                    let now = self.instant();
                    if let Some(core) = self.nodes[i].core.as_mut() {
                        core.flushed(now, Ok(()));
                    }
                    self.drain(i, None);
                    self.check_done(i);
                }
            }
            Event::Announce(i, life) => {
                if self.alive(i, life) {
                    self.announce(i);
                    self.at(self.now + nanos(REANNOUNCE), Event::Announce(i, life));
                }
            }
            Event::Churn => {
                self.churn();
                if let Some(c) = self.config.churn {
                    self.at(self.now + nanos(Duration::from_secs_f64(c)), Event::Churn);
                }
            }
            Event::Scenario(e) => self.scenario(e),
            Event::Sample => unreachable!("handled in run"),
        }
    }

    fn torrent_config(&self, i: usize) -> TorrentConfig {
        let plan = &self.nodes[i].plan;
        // The testnet's own settings (`run::start_local`).
        let tft = TitForTatConfig::default()
            .with_slots(self.config.slots)
            .with_rechoke_interval(self.config.rechoke_interval())
            .with_seed_mode(SeedMode::LeastServed);
        let choker = match (plan.role, self.config.choker) {
            (Role::FreeRider, _) => ChokerChoice::FreeRider,
            (_, ChokerKind::TitForTat) => ChokerChoice::TitForTat(tft),
            (_, ChokerKind::Propshare) => {
                ChokerChoice::PropShare(PropShareConfig::default().with_tit_for_tat(tft))
            }
        };
        TorrentConfig::default()
            .with_choker(choker)
            .with_max_peers(self.options.max_peers)
            .with_seed(self.config.seed.wrapping_mul(1000).wrapping_add(i as u64))
    }

    fn start(&mut self, i: usize) {
        let pieces = self.layout.num_pieces() as usize;
        let have = match self.nodes[i].plan.role {
            Role::Seeder | Role::Liar => Bitfield::repeat(true, pieces),
            _ => self.nodes[i].verified.clone(),
        };
        let book = Rc::new(RefCell::new(Book {
            credits: CreditBook::new(self.config.disk_queue, self.config.disk_queue / 4 * 3),
            recovered: false,
        }));
        let queue = SimQueue {
            book: Rc::clone(&book),
            clock: Rc::clone(&self.clock),
        };
        let config = self.torrent_config(i);
        let now = self.instant();
        let secs = self.secs();
        let n = &mut self.nodes[i];
        n.verified_count = have.count_ones() as u32;
        n.verified = have.clone();
        let mut core = TorrentCore::new(i as u32, self.layout.clone(), have, config, queue, now);
        core.set_upload_limit(n.plan.up_rate);
        n.core = Some(core);
        n.book = book;
        n.joined_at.get_or_insert(secs);
        n.downlink_free = self.now;
        let life = n.life;
        self.schedule_timer(i);
        self.announce(i);
        self.at(self.now + nanos(REANNOUNCE), Event::Announce(i, life));
        self.check_done(i);
    }

    /// Ends a node's life: its sessions close at their other ends, its
    /// queued writes are lost (not its verified pieces).
    fn stop(&mut self, i: usize) {
        let links: Vec<(usize, u32, PeerKey)> = self.nodes[i]
            .links
            .values()
            .map(|l| (l.remote, l.remote_life, l.remote_key))
            .collect();
        for (remote, life, remote_key) in links {
            self.at(
                self.now + nanos(self.options.latency),
                Event::Closed {
                    to: remote,
                    life,
                    key: remote_key,
                },
            );
        }
        let now = self.instant();
        let n = &mut self.nodes[i];
        if let Some(core) = n.core.take() {
            let s = core.summary();
            n.carried_down += s.downloaded;
            n.carried_up += s.uploaded;
            n.banned = n.banned.max(s.banned_peers);
            n.carried_throttled += n.book.borrow().credits.stats(now).throttled_total;
        }
        n.downloaded = n.carried_down;
        n.uploaded = n.carried_up;
        n.life += 1;
        n.links.clear();
        n.by_remote.clear();
        n.unchoked.clear();
        n.disk.clear();
        n.partial.clear();
        n.uplink_busy = false;
        n.uplink_wake = None;
        n.disk_busy = false;
        n.waiting_credits = false;
        n.timer_at = None;
    }

    /// Hands node `i` up to `options.peers` running nodes, and connects
    /// to those with room.
    fn announce(&mut self, i: usize) {
        let max = self.options.max_peers;
        let enough = self.options.dial_until.min(max);
        if self.nodes[i].links.len() >= enough {
            return;
        }
        let mut running: Vec<usize> = (0..self.nodes.len())
            .filter(|&j| j != i && self.nodes[j].core.is_some())
            .collect();
        running.shuffle(&mut self.rng);
        running.truncate(self.options.peers);
        for j in running {
            if self.nodes[i].links.len() >= enough {
                break;
            }
            if self.nodes[j].links.len() < max && !self.nodes[i].by_remote.contains_key(&j) {
                self.connect(i, j);
            }
        }
    }

    fn connect(&mut self, a: usize, b: usize) {
        let now = self.instant();
        let (Some(ca), Some(cb)) = (self.nodes[a].core.as_ref(), self.nodes[b].core.as_ref())
        else {
            return;
        };
        let (max_a, max_b) = (ca.config().peer_requests(), cb.config().peer_requests());
        let Ok(ka) = self.nodes[a]
            .core
            .as_mut()
            .expect("checked")
            .peer_opened(now, b as u32, true, max_b)
        else {
            return;
        };
        let kb = match self.nodes[b]
            .core
            .as_mut()
            .expect("checked")
            .peer_opened(now, a as u32, false, max_a)
        {
            Ok(k) => k,
            Err(_) => {
                self.nodes[a]
                    .core
                    .as_mut()
                    .expect("checked")
                    .peer_closed(now, ka);
                self.drain(a, None);
                return;
            }
        };
        self.link(a, ka, b, kb, max_a);
        self.link(b, kb, a, ka, max_b);
        self.drain(a, None);
        self.drain(b, None);
    }

    fn link(&mut self, node: usize, key: PeerKey, remote: usize, remote_key: PeerKey, max: u32) {
        let pieces = self.layout.num_pieces() as usize;
        let remote_life = self.nodes[remote].life;
        let n = &mut self.nodes[node];
        n.links.insert(
            key,
            Link {
                remote,
                remote_life,
                remote_key,
                upload: UploadQueue::new(max),
                served: Bitfield::repeat(false, pieces),
                cap: None,
                cap_ok_at: 0,
            },
        );
        n.by_remote.insert(remote, key);
    }

    fn unlink(&mut self, node: usize, key: PeerKey) {
        let n = &mut self.nodes[node];
        if let Some(l) = n.links.remove(&key) {
            // Only if it still names this session (a newer one to the
            // same remote may have taken the entry).
            if n.by_remote.get(&l.remote) == Some(&key) {
                n.by_remote.remove(&l.remote);
            }
            n.unchoked.remove(&key);
        }
    }

    /// A control message at `to`'s session `key`: requests and cancels
    /// are the session's; the rest the core's.
    fn deliver(&mut self, to: usize, key: PeerKey, message: Message) {
        match message {
            Message::Request(spec) => {
                let held = self
                    .layout
                    .block_at(spec.piece, spec.offset, spec.len)
                    .zip(self.nodes[to].core.as_ref())
                    .is_some_and(|(b, c)| c.have()[b.piece().as_usize()]);
                let link = self.nodes[to].links.get_mut(&key).expect("checked");
                if let Admission::Rejected(_) = link.upload.request(spec, held) {
                    let to = (link.remote, link.remote_life, link.remote_key);
                    self.send(to, Message::Reject(spec));
                } else {
                    self.kick_uplink(to);
                }
            }
            Message::Cancel(spec) => {
                if let Some(l) = self.nodes[to].links.get_mut(&key) {
                    l.upload.cancel(spec);
                }
            }
            other => {
                let now = self.instant();
                if let Some(core) = self.nodes[to].core.as_mut() {
                    core.on_message(now, key, other);
                }
                self.drain(to, None);
            }
        }
    }

    /// Sends `message` to the session (node, its life, key) `to`.
    fn send(&mut self, to: (usize, u32, PeerKey), message: Message) {
        let (node, life, key) = to;
        self.at(
            self.now + nanos(self.options.latency),
            Event::Deliver {
                to: node,
                life,
                key,
                message,
            },
        );
    }

    /// Carries out node `i`'s actions until it has none; `liar`: who sent
    /// the block the last input was about, if a liar.
    fn drain(&mut self, i: usize, liar: Option<usize>) {
        loop {
            let now = self.instant();
            let Some(action) = self.nodes[i].core.as_mut().and_then(|c| c.poll_action(now)) else {
                let n = &mut self.nodes[i];
                let recovered = std::mem::take(&mut n.book.borrow_mut().recovered);
                if recovered && n.waiting_credits {
                    n.waiting_credits = false;
                    if let Some(core) = n.core.as_mut() {
                        core.credits_available(now);
                    }
                    continue;
                }
                break;
            };
            match action {
                Action::Send { peer, message } => {
                    if let Some(l) = self.nodes[i].links.get(&peer) {
                        let to = (l.remote, l.remote_life, l.remote_key);
                        self.send(to, message);
                    }
                }
                Action::Haves { peer, pieces } => {
                    if let Some(l) = self.nodes[i].links.get(&peer) {
                        let to = (l.remote, l.remote_life, l.remote_key);
                        for piece in pieces {
                            self.send(to, Message::Have(piece));
                        }
                    }
                }
                Action::Choke { peer, choke } => {
                    let n = &mut self.nodes[i];
                    if choke {
                        n.unchoked.remove(&peer);
                    } else if n.links.contains_key(&peer) {
                        n.unchoked.insert(peer);
                    }
                    if let Some(l) = self.nodes[i].links.get_mut(&peer) {
                        let refused = l.upload.set_choked(choke);
                        let to = (l.remote, l.remote_life, l.remote_key);
                        let m = if choke {
                            Message::Choke
                        } else {
                            Message::Unchoke
                        };
                        self.send(to, m);
                        for spec in refused {
                            self.send(to, Message::Reject(spec));
                        }
                    }
                }
                Action::Cap { peer, rate } => {
                    if let Some(l) = self.nodes[i].links.get_mut(&peer) {
                        l.cap = rate.map(|r| TokenBucket::new(r, BURST, now));
                        l.cap_ok_at = 0;
                    }
                }
                Action::Close { peer, .. } => {
                    if let Some(l) = self.nodes[i].links.get(&peer) {
                        let (to, life, key) = (l.remote, l.remote_life, l.remote_key);
                        self.at(
                            self.now + nanos(self.options.latency),
                            Event::Closed { to, life, key },
                        );
                    }
                    self.unlink(i, peer);
                }
                Action::Submit {
                    block, mut credit, ..
                } => {
                    credit.mark_queued();
                    self.nodes[i].disk.push_back(Write {
                        block,
                        credit,
                        liar,
                    });
                    self.kick_disk(i);
                }
                Action::WaitForCredits => self.nodes[i].waiting_credits = true,
                Action::Flush => {
                    let life = self.nodes[i].life;
                    self.at(self.now, Event::Flushed(i, life));
                }
            }
        }
        self.schedule_timer(i);
        self.kick_uplink(i);
    }

    fn schedule_timer(&mut self, i: usize) {
        let Some(core) = self.nodes[i].core.as_ref() else {
            return;
        };
        let t = nanos(core.poll_timeout().saturating_duration_since(self.base));
        if self.nodes[i].timer_at != Some(t) {
            self.nodes[i].timer_at = Some(t);
            let life = self.nodes[i].life;
            self.at(t, Event::Timer(i, life));
        }
    }

    /// Starts sending the next block if the uplink is free: the next
    /// session in turn that has a request to serve and is not held by its
    /// cap.
    fn kick_uplink(&mut self, i: usize) {
        let now = self.now;
        let n = &mut self.nodes[i];
        if n.uplink_busy || n.core.is_none() {
            return;
        }
        let mut held_until: Option<Time> = None;
        let mut pick = None;
        let last = n.served_last;
        let after = n.unchoked.range(PeerKey(last.0 + 1)..);
        for &key in after.chain(n.unchoked.range(..=last)) {
            let l = n.links.get(&key).expect("unchoked sessions are linked");
            if !l.upload.ready() {
                continue;
            }
            if l.cap_ok_at > now {
                held_until = Some(held_until.map_or(l.cap_ok_at, |h| h.min(l.cap_ok_at)));
                continue;
            }
            pick = Some(key);
            break;
        }
        let Some(key) = pick else {
            if let Some(t) = held_until
                && n.uplink_wake.is_none_or(|w| w > t)
            {
                n.uplink_wake = Some(t);
                let life = n.life;
                self.at(t, Event::UplinkWake(i, life));
            }
            return;
        };
        n.served_last = key;
        let l = n.links.get_mut(&key).expect("picked");
        let spec = l.upload.next_batch(1)[0];
        let len = u64::from(spec.len);
        if let Some(cap) = l.cap.as_mut() {
            let wait = cap.take(len, self.base + Duration::from_nanos(now));
            l.cap_ok_at = now + nanos(wait);
        }
        let rate = n.plan.up_rate.unwrap_or(UNLIMITED_RATE);
        n.uplink_busy = true;
        let life = n.life;
        self.at(
            now + transfer(len, rate),
            Event::UplinkDone {
                node: i,
                life,
                key,
                spec,
            },
        );
    }

    /// A block left node `i`'s uplink for session `key`.
    fn sent_block(&mut self, i: usize, key: PeerKey, spec: BlockSpec) {
        let now = self.instant();
        let liar = (self.nodes[i].plan.role == Role::Liar).then_some(i);
        let Some(l) = self.nodes[i].links.get_mut(&key) else {
            return;
        };
        let (to, life, remote_key) = (l.remote, l.remote_life, l.remote_key);
        let first = !l.served.replace(spec.piece as usize, true);
        let len = u64::from(spec.len);
        // Its download pipe: after the wire's delay, behind what it is
        // already taking in.
        let mut arrive = self.now + nanos(self.options.latency);
        if let Some(down) = self.nodes[to].plan.down_rate {
            let r = &mut self.nodes[to];
            arrive = arrive.max(r.downlink_free) + transfer(len, down);
            r.downlink_free = arrive;
        }
        self.at(
            arrive,
            Event::Block {
                to,
                life,
                key: remote_key,
                spec,
                liar,
            },
        );
        if self.nodes[to].plan.role == Role::FreeRider {
            self.nodes[i].to_free_riders += len;
        }
        if let Some(core) = self.nodes[i].core.as_mut() {
            if first {
                core.on_served(now, key, spec.piece);
            }
            core.on_uploaded(now, key, len);
        }
        self.drain(i, None);
    }

    fn kick_disk(&mut self, i: usize) {
        let n = &mut self.nodes[i];
        if n.disk_busy {
            return;
        }
        let Some(w) = n.disk.front() else {
            return;
        };
        let len = u64::from(self.layout.block_len(w.block));
        let rate = n.plan.disk_rate.unwrap_or(FAST_DISK_RATE);
        n.disk_busy = true;
        let life = n.life;
        self.at(self.now + transfer(len, rate), Event::DiskDone(i, life));
    }

    /// The writer finished the block at the head of node `i`'s queue.
    fn written(&mut self, i: usize) {
        let Some(w) = self.nodes[i].disk.pop_front() else {
            return;
        };
        let piece = w.block.piece();
        let blocks = self.layout.blocks_in_piece(piece) as usize;
        let now = self.instant();
        let n = &mut self.nodes[i];
        // The credit returns as the write completes.
        drop(w.credit);
        if n.verified[piece.as_usize()] {
            return self.drain(i, None);
        }
        let leaves = n.partial.entry(piece).or_insert_with(|| vec![None; blocks]);
        let slot = &mut leaves[w.block.index() as usize];
        if slot.is_some() {
            // A duplicate: what is written stays.
            return self.drain(i, None);
        }
        *slot = Some(w.liar);
        if leaves.iter().any(Option::is_none) {
            return self.drain(i, None);
        }
        let leaves = n.partial.remove(&piece).expect("just filled");
        let leaf = |l: &Option<Option<usize>>| match l {
            Some(Some(liar)) => {
                let mut h = [0xbb; 32];
                h[..8].copy_from_slice(&(*liar as u64).to_le_bytes());
                h
            }
            _ => [0; 32],
        };
        let bad = leaves.iter().any(|l| matches!(l, Some(Some(_))));
        let events = if bad {
            n.hash_failures += 1;
            n.failed_before[piece.as_usize()] = true;
            vec![StorageEvent::HashFailed {
                piece,
                leaves: leaves.iter().map(leaf).collect(),
            }]
        } else {
            n.verified.set(piece.as_usize(), true);
            n.verified_count += 1;
            let mut evs = vec![StorageEvent::PieceVerified(piece)];
            if std::mem::take(&mut n.failed_before[piece.as_usize()]) {
                evs.push(StorageEvent::GoodLeaves {
                    piece,
                    leaves: vec![[0; 32]; blocks],
                });
            }
            evs
        };
        if let Some(core) = n.core.as_mut() {
            for ev in events {
                core.on_storage(now, ev);
            }
        }
        self.drain(i, None);
    }

    /// Records completion, and lets seeders that wait for copies leave.
    fn check_done(&mut self, i: usize) {
        let secs = self.secs();
        let n = &mut self.nodes[i];
        let complete = n.core.as_ref().is_some_and(|c| c.summary().complete);
        if complete && n.completed_at.is_none() && n.plan.role.downloads() {
            n.completed_at = Some(secs);
            self.leave_after_copies();
        }
    }

    /// Seeders waiting for so many complete copies leave once there are
    /// (checked as nodes complete, and at every sample as the testnet
    /// does, so `copies = 0` leaves at once).
    fn leave_after_copies(&mut self) {
        let copies = self
            .nodes
            .iter()
            .filter(|n| n.plan.role.downloads() && n.completed_at.is_some())
            .count();
        for e in 0..self.config.events.len() {
            if let EventAction::LeaveAfterCopies { copies: want } = self.config.events[e].action
                && copies >= want
                && !self.done_events[e]
            {
                self.scenario(e);
            }
        }
    }

    fn scenario(&mut self, e: usize) {
        if std::mem::replace(&mut self.done_events[e], true) {
            return;
        }
        let event = self.config.events[e].clone();
        let Some(i) = self.nodes.iter().position(|n| n.plan.name == event.node) else {
            return;
        };
        match event.action {
            EventAction::Join => {}
            EventAction::Leave | EventAction::LeaveAfterCopies { .. } => {
                let was = self.nodes[i].core.is_some() || self.nodes[i].rejoin_at.take().is_some();
                if was && self.nodes[i].left_at.is_none() {
                    self.stop(i);
                    self.nodes[i].left_at = Some(self.secs());
                }
            }
            EventAction::UpRate { rate } => self.nodes[i].plan.up_rate = Some(rate),
        }
    }

    fn churn(&mut self) {
        let candidates: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| {
                let n = &self.nodes[i];
                n.plan.role == Role::Leecher
                    && n.core.is_some()
                    && n.completed_at.is_none()
                    && n.rejoin_at.is_none()
            })
            .collect();
        let Some(&i) = candidates.choose(&mut self.rng) else {
            return;
        };
        self.stop(i);
        let back = self.now
            + nanos(Duration::from_secs_f64(
                self.config.churn.unwrap_or(1.0) / 2.0,
            ));
        self.nodes[i].rejoin_at = Some(back);
        self.at(back, Event::Rejoin(i));
    }

    /// Brings every running node's totals up to now; returns each one's
    /// write-queue use (`None` for a node not running).
    fn refresh_totals(&mut self) -> Vec<Option<u64>> {
        let now = self.instant();
        self.nodes
            .iter_mut()
            .map(|n| {
                let core = n.core.as_ref()?;
                let s = core.summary();
                let q = n.book.borrow().credits.stats(now);
                n.downloaded = n.carried_down + s.downloaded;
                n.uploaded = n.carried_up + s.uploaded;
                n.banned = n.banned.max(s.banned_peers);
                n.peak_disk = n.peak_disk.max(q.used_bytes());
                n.first_block = n
                    .first_block
                    .or(core.first_block_after().map(|d| d.as_secs_f64()));
                n.peers_max = n.peers_max.max(n.links.len());
                Some(q.used_bytes())
            })
            .collect()
    }

    fn sample(&mut self) {
        let t = self.secs();
        let pieces = f64::from(self.layout.num_pieces().max(1));
        let used = self.refresh_totals();
        for (n, used) in self.nodes.iter_mut().zip(used) {
            let Some(used) = used else {
                continue;
            };
            if n.samples.len() < MAX_SIM_SAMPLES {
                n.samples.push(Sample {
                    t,
                    progress: f64::from(n.verified_count) / pieces,
                    disk_used: used,
                    downloaded: n.downloaded,
                    uploaded: n.uploaded,
                });
            }
        }
    }

    fn report(&self, wall: f64, timed_out: bool) -> Report {
        let now = self.instant();
        let nodes = self
            .nodes
            .iter()
            .map(|n| {
                let q = n.book.borrow().credits.stats(now);
                NodeReport {
                    downloaded: n.downloaded,
                    uploaded: n.uploaded,
                    hash_failures: n.hash_failures,
                    banned_peers: n.banned,
                    restarts: n.restarts,
                    peak_disk_bytes: n.peak_disk,
                    disk_capacity_bytes: self.config.disk_queue,
                    throttled_seconds: (n.carried_throttled
                        + n.core
                            .as_ref()
                            .map_or(Duration::ZERO, |_| q.throttled_total))
                    .as_secs_f64(),
                    uploaded_to_free_riders: n.to_free_riders,
                    first_block_seconds: n.first_block,
                    peers_max: n.peers_max,
                    samples: n.samples.clone(),
                    ..NodeReport::of_plan(&n.plan, n.joined_at, n.left_at, n.completed_at)
                }
            })
            .collect();
        let mut report = Report::new(
            self.config.clone(),
            "simulated".into(),
            self.config.size,
            self.layout.piece_length(),
            wall,
            timed_out,
            nodes,
        );
        let mut peers: Vec<usize> = self
            .nodes
            .iter()
            .filter(|n| n.core.is_some())
            .map(|n| n.links.len())
            .collect();
        peers.sort_unstable();
        report.simulated = Some(Simulated {
            peers_at_end: [
                peers.first().copied().unwrap_or(0),
                peers.get(peers.len() / 2).copied().unwrap_or(0),
                peers.last().copied().unwrap_or(0),
            ],
            seconds: self.secs(),
            events: self.events_processed,
            latency_ms: self.options.latency.as_secs_f64() * 1e3,
            peers: self.options.peers,
            dial_until: self.options.dial_until,
            max_peers: self.options.max_peers,
        });
        report
    }
}
