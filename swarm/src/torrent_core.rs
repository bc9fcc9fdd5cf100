//! The torrent's rules as a pure state machine: [`TorrentCore`].
//!
//! No tokio, no sockets, no threads and no clock of its own: every input
//! carries `now`, and the core answers with [`Action`]s for its driver to
//! carry out and the instant it wants to be woken at. The tokio driver
//! (`torrent`) feeds it from peer sessions and the storage writer; the
//! simulator (`sluice-sim`) feeds it from a discrete-event loop with
//! modelled links and disks. Every transport is a kind of session feeding
//! the same core, so one choker, one picker, one set of request windows
//! and one credit pool decide for all peers of a torrent.
//!
//! Inputs (each with `now`):
//! - [`TorrentCore::peer_opened`] / [`TorrentCore::peer_closed`];
//! - [`TorrentCore::on_message`]: what a peer said (the `/sluice/pieces/1`
//!   vocabulary; another wire decodes into the same messages);
//! - [`TorrentCore::on_served`] / [`TorrentCore::on_uploaded`]: the
//!   session sent a peer its first block of a piece / so many block bytes;
//! - [`TorrentCore::on_storage`]: verified, failed, lost pieces and failed
//!   writes;
//! - [`TorrentCore::credits_available`]: the write queue recovered after
//!   [`Action::WaitForCredits`]; [`TorrentCore::flushed`]: a
//!   [`Action::Flush`] finished;
//! - [`TorrentCore::handle_timeout`] at [`TorrentCore::poll_timeout`]:
//!   request timeouts, rechokes, expiring withdrawals, flushes.
//!
//! Outputs: [`TorrentCore::poll_action`] until `None` after every batch of
//! inputs (requests are topped up there, once per batch, so they go out in
//! batches rather than one per block).
//!
//! Ownership (see `docs/STATE.md`): a block's state (missing, requested
//! from whom, received) is the picker's; the requests themselves — when
//! each went out and the write-queue credit that pays for it — are this
//! core's, per peer, and nowhere else. Whether we choke a peer is the
//! choker's last decision for it, kept here once.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fmt;
use std::hash::Hash;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::SeedableRng;
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};
use sluice_choke::{
    Choker, Decision, Mode, PeerKey, PeerSnapshot, PropShare, PropShareConfig, RateMeter,
    TitForTat, TitForTatConfig,
};
use sluice_storage::{
    BLOCK_SIZE, Bitfield, BlockRef, Credit, Hash as LeafHash, Layout, PieceIndex, ReserveError,
    StorageEvent, WriteQueue,
};
use tracing::{debug, info, warn};

use crate::picker::{Picker, PickerConfig, PickerError, Received};
use crate::window::{RequestWindow, WindowConfig};
use crate::wire::{BlockSpec, MAX_BITFIELD_CHUNK, Message};

/// How long verified pieces may wait to be announced together
/// ([`TorrentConfig::with_have_batch`]). A `Have` costs a write, a muxer
/// frame and a wake-up at each end, and every peer hears of every piece:
/// in a 100-node testnet (1,024 pieces, 64 peers each) they outnumber
/// blocks sixteen to one.
pub const DEFAULT_HAVE_BATCH: Duration = Duration::from_millis(100);
/// How long a `Have` for a piece the peer already holds may wait
/// ([`TorrentConfig::with_redundant_have_delay`]). It tells the peer
/// nothing it needs to pick or to be interested; it only lets a seeder
/// see that a piece it sent one peer reached another (which the choker
/// judges over two rechokes: 4 s in a testnet; held for 2 s, peers that
/// passed pieces on looked like hoarders and an 8-node testnet slowed by
/// 3%). Held ones ride along with the peer's next useful `Have`s, or go
/// out together when this is up.
pub const DEFAULT_REDUNDANT_HAVE_DELAY: Duration = Duration::from_millis(500);

/// The rate that sizes request windows is measured over this long.
const RECENT_RATE_WINDOW: Duration = Duration::from_secs(3);
/// The rates the choker ranks by are measured over this long.
const RATE_WINDOW: Duration = Duration::from_secs(20);
/// Peer ids a torrent keeps strikes for, ids it keeps banned, and
/// departed sessions it remembers the ids of (each).
pub const MAX_TRACKED_PEERS: usize = 4096;
/// After a failed write (a full disk), requesting pauses this long before
/// it tries again.
pub const DISK_RETRY: Duration = Duration::from_secs(2);
/// How long a peer that refused a piece it claimed is not asked for it.
pub const WITHDRAW_FOR: Duration = Duration::from_secs(30);
/// The lowest per-peer upload cap, bytes/s: a capped session waits out
/// each batch before it serves again, so a batch must take seconds, not
/// minutes.
pub const MIN_CAP: u64 = 4 * BLOCK_SIZE as u64;

/// Requests a peer may queue with us by default (and the `reqq` we
/// advertise): libtorrent's own default (`max_allowed_in_request_queue`).
/// A queued request is 12 bytes; the data is read as it is sent, inside
/// the upload window, so a deep queue costs no memory to speak of, and a
/// BitTorrent client that keeps thousands of requests in flight (as
/// libtorrent does on a fast link) is not held to our request window.
pub const DEFAULT_PEER_REQUESTS: u32 = 2000;

/// Which choking strategy a torrent uses.
#[derive(Debug, Clone)]
pub enum ChokerChoice {
    TitForTat(TitForTatConfig),
    PropShare(PropShareConfig),
    /// Never unchoke anyone (a testnet free-rider).
    FreeRider,
}

/// Settings of one torrent's swarm side.
#[derive(Debug, Clone)]
pub struct TorrentConfig {
    pub(crate) window: WindowConfig,
    picker: PickerConfig,
    choker: ChokerChoice,
    max_peers: usize,
    pub(crate) event_capacity: usize,
    pub(crate) upload_window: u32,
    peer_requests: u32,
    pub(crate) idle_timeout: Duration,
    tick: Duration,
    have_batch: Duration,
    redundant_have_delay: Duration,
    flush_interval: Duration,
    ban_after: u32,
    seed: u64,
}

impl Default for TorrentConfig {
    fn default() -> Self {
        Self {
            window: WindowConfig::default(),
            picker: PickerConfig::default(),
            choker: ChokerChoice::TitForTat(TitForTatConfig::default()),
            max_peers: 64,
            event_capacity: 1024,
            upload_window: 16 * BLOCK_SIZE,
            peer_requests: DEFAULT_PEER_REQUESTS,
            idle_timeout: Duration::from_secs(120),
            tick: Duration::from_millis(200),
            have_batch: DEFAULT_HAVE_BATCH,
            redundant_have_delay: DEFAULT_REDUNDANT_HAVE_DELAY,
            flush_interval: Duration::from_secs(30),
            ban_after: 3,
            seed: rand::random(),
        }
    }
}

impl TorrentConfig {
    /// Request windows and timeouts.
    pub fn with_window(mut self, w: WindowConfig) -> Self {
        self.window = w;
        self
    }

    pub fn with_picker(mut self, p: PickerConfig) -> Self {
        self.picker = p;
        self
    }

    /// Choking strategy. Default tit-for-tat with BitTorrent's settings.
    pub fn with_choker(mut self, c: ChokerChoice) -> Self {
        self.choker = c;
        self
    }

    /// Most peers at once (the active peer set). Default 64.
    pub fn with_max_peers(mut self, n: usize) -> Self {
        self.max_peers = n.max(1);
        self
    }

    pub fn max_peers(&self) -> usize {
        self.max_peers
    }

    /// Capacity of the channel from sessions to the torrent (messages).
    /// Default 1024.
    pub fn with_event_capacity(mut self, n: usize) -> Self {
        self.event_capacity = n.max(1);
        self
    }

    /// Bytes read from disk for a peer ahead of its stream (and read in one
    /// blocking call). Default 256 KiB.
    pub fn with_upload_window(mut self, bytes: u32) -> Self {
        self.upload_window = bytes.max(BLOCK_SIZE);
        self
    }

    pub fn upload_window(&self) -> u32 {
        self.upload_window
    }

    /// A peer silent this long is disconnected. Default 120 s.
    pub fn with_idle_timeout(mut self, d: Duration) -> Self {
        self.idle_timeout = d;
        self
    }

    /// Housekeeping interval (timeouts, rates, stats). Default 200 ms.
    pub fn with_tick(mut self, d: Duration) -> Self {
        self.tick = d.max(Duration::from_millis(1));
        self
    }

    /// Pieces verified within this long of the last `Have`s sent are
    /// announced together when it is up (one write per peer instead of
    /// one per piece); a piece verified later than that goes out at once.
    /// Zero sends every `Have` at once. Default [`DEFAULT_HAVE_BATCH`].
    pub fn with_have_batch(mut self, d: Duration) -> Self {
        self.have_batch = d;
        self
    }

    /// How long a `Have` for a piece the peer already holds may be held
    /// back (zero: none is). Default [`DEFAULT_REDUNDANT_HAVE_DELAY`].
    pub fn with_redundant_have_delay(mut self, d: Duration) -> Self {
        self.redundant_have_delay = d;
        self
    }

    /// Failed pieces a peer may contribute to before it is banned. Default 3.
    pub fn with_ban_after(mut self, n: u32) -> Self {
        self.ban_after = n.max(1);
        self
    }

    /// RNG seed for the picker and choker. Default random.
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Most requests we have outstanding to one peer.
    pub fn max_requests(&self) -> u32 {
        self.window.max()
    }

    /// Requests a peer may queue with us (beyond them it gets rejects),
    /// advertised in handshakes (BitTorrent's `reqq`). Default
    /// [`DEFAULT_PEER_REQUESTS`].
    pub fn with_peer_requests(mut self, n: u32) -> Self {
        self.peer_requests = n.max(1);
        self
    }

    pub fn peer_requests(&self) -> u32 {
        self.peer_requests
    }

    /// The choker's upload slots (0 for a free-rider, which unchokes
    /// nobody).
    pub fn upload_slots(&self) -> u32 {
        match &self.choker {
            ChokerChoice::TitForTat(c) => c.slots(),
            ChokerChoice::PropShare(c) => c.tit_for_tat().slots(),
            ChokerChoice::FreeRider => 0,
        }
    }
}

/// Write-queue credits as the core needs them: reserve now or say no.
/// The real node hands in its [`WriteQueue`]; the simulator a modelled
/// disk. A credit returns its bytes when dropped.
pub trait Credits {
    type Credit: fmt::Debug;

    /// `Ok(None)`: the queue is full or throttled; try again after
    /// [`Action::WaitForCredits`] is answered.
    fn try_reserve(&mut self, bytes: u32) -> Result<Option<Self::Credit>, ReserveError>;
}

impl Credits for WriteQueue {
    type Credit = Credit;

    fn try_reserve(&mut self, bytes: u32) -> Result<Option<Credit>, ReserveError> {
        WriteQueue::try_reserve(self, bytes)
    }
}

/// A peer's identity across its sessions: what strikes and bans stick to
/// (a libp2p `PeerId` in a node; a node number in the simulator).
pub trait PeerIdentity: Copy + Eq + Ord + Hash + fmt::Debug + fmt::Display {}
impl<T: Copy + Eq + Ord + Hash + fmt::Debug + fmt::Display> PeerIdentity for T {}

/// What a peer did wrong, as far as this torrent's rules go.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerError {
    #[error("a second bitfield")]
    SecondBitfield,
    #[error("bitfield chunk at piece {first_piece} does not fit")]
    BitfieldMisfit { first_piece: u32 },
    #[error("bitfield has bits set past the last piece")]
    BitfieldPastEnd,
    #[error(transparent)]
    Bitfield(#[from] PickerError),
    #[error("have {0}: no such piece")]
    NoSuchPiece(u32),
    #[error("piece {piece} offset {offset} len {len}: no such block")]
    NoSuchBlock { piece: u32, offset: u32, len: u32 },
}

/// Why the core ends a session.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CloseReason {
    #[error("banned: sent corrupt data")]
    Banned,
    #[error("replaced by the stream both sides keep")]
    Replaced,
    #[error("torrent shutting down")]
    ShuttingDown,
    #[error("protocol violation: {0}")]
    Protocol(#[from] PeerError),
}

impl CloseReason {
    /// The normal course of things (logged at debug), not a misbehaving
    /// peer (a warning).
    pub fn is_routine(&self) -> bool {
        matches!(self, CloseReason::Replaced | CloseReason::ShuttingDown)
    }
}

/// Why a new session was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("banned")]
    Banned,
    #[error("already connected")]
    AlreadyConnected,
    #[error("too many peers")]
    TooManyPeers,
    #[error("torrent stopped")]
    Stopped,
}

/// What the driver must do.
#[derive(Debug)]
pub enum Action<K> {
    /// Send this message to the peer.
    Send { peer: PeerKey, message: Message },
    /// Send the peer a `Have` for each of these pieces, in one write.
    Haves { peer: PeerKey, pieces: Vec<u32> },
    /// Choke (true) or unchoke the peer: its session sends the message, and
    /// choking rejects every request it has queued.
    Choke { peer: PeerKey, choke: bool },
    /// At most this many bytes/s to the peer (`None`: only the node's
    /// limit).
    Cap { peer: PeerKey, rate: Option<u64> },
    /// End the session; the core has forgotten the peer already.
    Close { peer: PeerKey, reason: CloseReason },
    /// Hand the block to storage; the credit pays for its place in the
    /// write queue.
    Submit {
        block: BlockRef,
        data: Bytes,
        credit: K,
    },
    /// The write queue refused a credit: call
    /// [`TorrentCore::credits_available`] once it has room again.
    WaitForCredits,
    /// Make what is written durable; answer with [`TorrentCore::flushed`].
    Flush,
}

/// One peer as the control API shows it (`GET …/peers`, with its
/// address added by the node).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerStats {
    pub peer_id: String,
    /// The wire it speaks (the driver knows; the core says `libp2p`).
    pub transport: crate::torrent::Transport,
    /// Its client name, where its wire says (BitTorrent's BEP 10 `v`).
    pub client: Option<String>,
    /// A BitTorrent peer's address (the API shows it as `addr`).
    #[serde(skip)]
    pub socket_addr: Option<std::net::SocketAddr>,
    /// We refuse to upload to it.
    pub am_choking: bool,
    /// It has pieces we lack.
    pub am_interested: bool,
    /// It refuses to upload to us.
    pub peer_choking: bool,
    /// We have pieces it lacks.
    pub peer_interested: bool,
    /// It holds our optimistic slot.
    pub optimistic: bool,
    /// It sent us nothing for the snub timeout while unchoked.
    pub snubbed: bool,
    /// The choker's last reason, for people (`rank 2, 1.2 MB/s`).
    pub choke_reason: String,
    /// The same as a stable name (`regular_slot`, `slots_full`, …).
    pub choke_reason_code: String,
    /// Bytes/s over the rate window.
    pub down_rate: f64,
    pub up_rate: f64,
    pub downloaded: u64,
    pub uploaded: u64,
    /// Our requests to it not yet answered.
    pub outstanding_requests: usize,
    /// How many requests we may have outstanding to it now.
    pub request_window: u32,
    /// Its requests waiting to be served.
    pub upload_queue: u64,
    /// Most bytes read from disk for this peer ahead of its stream.
    pub upload_window_bytes: u32,
    /// At most this many bytes/s to it (it gave nothing back; see the
    /// choke reason), or `None`.
    pub upload_cap: Option<u64>,
    /// Pieces we sent it before anyone else, and how many of those it
    /// passed on (another peer announced them afterwards).
    pub sole_pieces: u32,
    pub spread_pieces: u32,
    /// Bytes read for this peer and not yet written to its stream.
    pub upload_buffered_bytes: u64,
    /// Pieces it has.
    pub pieces: usize,
    pub connected_seconds: f64,
}

/// The core's own numbers at one instant (the driver adds the storage's).
#[derive(Debug, Clone)]
pub struct CoreStats {
    /// Every piece verified and flushed to disk (resume file written).
    pub complete: bool,
    pub down_rate: f64,
    pub up_rate: f64,
    pub downloaded: u64,
    pub uploaded: u64,
    pub hash_failures: u64,
    pub requests_rejected: u64,
    pub banned_peers: usize,
    pub disk_error: Option<String>,
    /// From the core's start to the first block it received.
    pub first_block_after: Option<Duration>,
    /// One per peer, in session order; the session's own numbers
    /// (`upload_queue`, `upload_buffered_bytes`) are zero here.
    pub peers: Vec<(PeerKey, PeerStats)>,
}

/// [`TorrentCore::summary`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CoreSummary {
    /// Every piece verified and flushed.
    pub complete: bool,
    pub downloaded: u64,
    pub uploaded: u64,
    pub hash_failures: u64,
    pub banned_peers: usize,
}

/// Who we sent a piece to, for telling peers that pass pieces on from
/// those that keep them.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Sole {
    Nobody,
    /// This session alone: when another peer announces the piece, it
    /// came from there.
    One(PeerKey),
    /// Several, or already announced elsewhere: nobody's credit.
    Many,
}

/// A request out to a peer: the credit that pays for its block's place
/// in the write queue, and when it went out.
#[derive(Debug)]
struct Request<K> {
    credit: K,
    at: Instant,
}

#[derive(Debug)]
struct Peer<I, K> {
    id: I,
    /// `id` as text, made once for the stats (a libp2p peer id is base58:
    /// encoding it on every tick cost more than the rest of the row).
    id_text: String,
    /// We opened this session (the peer did otherwise).
    opened_by_us: bool,
    /// Its choke drops every request we have out to it (BitTorrent
    /// without BEP 6: no rejects follow a choke).
    choke_discards: bool,
    connected_at: Instant,
    am_interested: bool,
    peer_choking: bool,
    peer_interested: bool,
    has_bitfield: bool,
    /// Bitfield chunks received so far (until complete).
    partial_bits: Option<Bitfield>,
    down: RateMeter,
    /// The last few seconds only: sizes the request window, which must
    /// follow a peer that just unchoked us faster than the choker's
    /// 20-second average does.
    recent: RateMeter,
    up: RateMeter,
    downloaded: u64,
    uploaded: u64,
    last_block_at: Option<Instant>,
    window: RequestWindow,
    /// Our requests to it: the one record of what is outstanding where
    /// (block order, so timeouts and cancels go out in a fixed order).
    outstanding: BTreeMap<BlockRef, Request<K>>,
    /// Requests to it that timed out (at most the window's maximum): a
    /// block for one of them may still arrive and is worth keeping.
    expired: HashSet<BlockRef>,
    /// Pieces it refused while unchoking us, and when: its claim to them
    /// is withdrawn for [`WITHDRAW_FOR`] (a refusal may have been a passing
    /// fault), at most one entry per piece.
    withdrawn: Vec<(PieceIndex, Instant)>,
    /// The choker's last decision: whether we choke it, and why.
    decision: Option<Decision>,
    /// Pieces we sent it before anyone else, and how many of those another
    /// peer announced afterwards (it passed them on); see [`Sole`].
    sole_pieces: u32,
    spread_pieces: u32,
    first_sole_at: Option<Instant>,
    /// Its upload cap in bytes/s, as last told to its session.
    cap: Option<u64>,
    /// `Have`s for pieces it holds already, held back (see
    /// [`DEFAULT_REDUNDANT_HAVE_DELAY`]): the pieces verified within that
    /// delay, at most.
    held_haves: Vec<u32>,
}

impl<I, K> Peer<I, K> {
    fn am_choking(&self) -> bool {
        self.decision.as_ref().is_none_or(|d| !d.unchoke)
    }
}

/// Failed pieces held against peer ids, and the ids banned for them.
/// Both bounded by [`MAX_TRACKED_PEERS`]: when full, the id whose entry is
/// oldest makes room (a liar that made up thousands of ids can get an old
/// one unbanned, but never stops new liars from being banned).
#[derive(Debug)]
struct Offenders<I> {
    strikes: HashMap<I, u32>,
    strike_order: VecDeque<I>,
    banned: HashSet<I>,
    ban_order: VecDeque<I>,
}

impl<I: PeerIdentity> Offenders<I> {
    fn new() -> Self {
        Self {
            strikes: HashMap::new(),
            strike_order: VecDeque::new(),
            banned: HashSet::new(),
            ban_order: VecDeque::new(),
        }
    }

    /// One more strike against `id`; returns its count.
    fn strike(&mut self, id: I) -> u32 {
        if !self.strikes.contains_key(&id) {
            while self.strikes.len() >= MAX_TRACKED_PEERS {
                let Some(old) = self.strike_order.pop_front() else {
                    break;
                };
                self.strikes.remove(&old);
            }
            self.strike_order.push_back(id);
        }
        let n = self.strikes.entry(id).or_default();
        *n += 1;
        *n
    }

    /// Bans `id`; returns whether it was news.
    fn ban(&mut self, id: I) -> bool {
        if self.banned.contains(&id) {
            return false;
        }
        while self.banned.len() >= MAX_TRACKED_PEERS {
            let Some(old) = self.ban_order.pop_front() else {
                break;
            };
            self.banned.remove(&old);
        }
        self.ban_order.push_back(id);
        self.banned.insert(id)
    }
}

/// One torrent's rules. See the module docs for the calling order.
pub struct TorrentCore<I: PeerIdentity, C: Credits> {
    local_id: I,
    layout: Layout,
    config: TorrentConfig,
    credits: C,
    picker: Picker,
    choker: Option<Box<dyn Choker>>,
    rng: StdRng,
    peers: BTreeMap<PeerKey, Peer<I, C::Credit>>,
    next_key: u64,
    offenders: Offenders<I>,
    /// Per piece: who we sent it to (one entry per piece).
    sole: Vec<Sole>,
    /// Blocks of failed pieces with several senders: who sent which block
    /// and its leaf hash, judged when the piece verifies.
    suspects: HashMap<PieceIndex, Vec<(I, u32, LeafHash)>>,
    /// Session keys of peers that left, for judging their blocks.
    departed: HashMap<PeerKey, I>,
    /// The node's upload limit (bytes/s), which per-peer caps are shares of.
    up_limit: Option<u64>,
    down: RateMeter,
    up: RateMeter,
    downloaded: u64,
    uploaded: u64,
    hash_failures: u64,
    rejected: u64,
    started: Instant,
    first_block_after: Option<Duration>,
    disk_error: Option<String>,
    /// After a failed write, no requests until then.
    disk_paused_until: Option<Instant>,
    flushed_complete: bool,
    last_flush: Instant,
    /// A flush is running, and whether everything was verified when it
    /// started.
    flushing: Option<bool>,
    /// The queue refused a credit; requests wait for
    /// [`Self::credits_available`].
    credit_wait: bool,
    /// Something changed that may allow more requests; filled once per
    /// batch of inputs, in [`Self::poll_action`].
    want_fill: bool,
    next_tick: Instant,
    /// Verified pieces not announced yet (they go out `have_batch` after
    /// `last_haves`: [`Self::haves_due`]).
    unannounced: Vec<PieceIndex>,
    /// When `Have`s last went out.
    last_haves: Option<Instant>,
    /// When the `Have`s held back from peers that hold their pieces go
    /// out (`None`: none are held).
    redundant_due: Option<Instant>,
    stopped: bool,
    actions: VecDeque<Action<C::Credit>>,
}

impl<I: PeerIdentity, C: Credits> fmt::Debug for TorrentCore<I, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TorrentCore")
            .field("local_id", &self.local_id)
            .field("peers", &self.peers.len())
            .finish_non_exhaustive()
    }
}

impl<I: PeerIdentity, C: Credits> TorrentCore<I, C> {
    /// A torrent of `layout` holding the pieces in `have`, as `local_id`.
    pub fn new(
        local_id: I,
        layout: Layout,
        have: Bitfield,
        config: TorrentConfig,
        credits: C,
        now: Instant,
    ) -> Self {
        let pieces = layout.num_pieces() as usize;
        let picker = Picker::new(layout.clone(), have, config.picker.clone());
        let choker: Option<Box<dyn Choker>> = match &config.choker {
            ChokerChoice::TitForTat(c) => Some(Box::new(TitForTat::new(c.clone()))),
            ChokerChoice::PropShare(c) => Some(Box::new(PropShare::new(c.clone()))),
            ChokerChoice::FreeRider => None,
        };
        Self {
            local_id,
            rng: StdRng::seed_from_u64(config.seed),
            flushed_complete: picker.is_complete(),
            layout,
            credits,
            picker,
            choker,
            peers: BTreeMap::new(),
            next_key: 0,
            offenders: Offenders::new(),
            sole: vec![Sole::Nobody; pieces],
            suspects: HashMap::new(),
            departed: HashMap::new(),
            up_limit: None,
            down: RateMeter::new(RATE_WINDOW),
            up: RateMeter::new(RATE_WINDOW),
            downloaded: 0,
            uploaded: 0,
            hash_failures: 0,
            rejected: 0,
            started: now,
            first_block_after: None,
            disk_error: None,
            disk_paused_until: None,
            last_flush: now,
            flushing: None,
            credit_wait: false,
            want_fill: false,
            next_tick: now + config.tick,
            unannounced: Vec::new(),
            last_haves: None,
            redundant_due: None,
            stopped: false,
            actions: VecDeque::new(),
            config,
        }
    }

    pub fn config(&self) -> &TorrentConfig {
        &self.config
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Every piece verified (not necessarily flushed).
    pub fn is_complete(&self) -> bool {
        self.picker.is_complete()
    }

    /// The pieces verified, as the core knows them.
    pub fn have(&self) -> &Bitfield {
        self.picker.have()
    }

    /// Peers with a session now.
    pub fn peer_count(&self) -> usize {
        self.peers.len()
    }

    /// The identity behind a session, while it is open.
    pub fn identity(&self, key: PeerKey) -> Option<I> {
        self.peers.get(&key).map(|p| p.id)
    }

    /// Whether `id` is banned.
    pub fn is_banned(&self, id: I) -> bool {
        self.offenders.banned.contains(&id)
    }

    /// Our requests outstanding to `key`.
    pub fn outstanding(&self, key: PeerKey) -> usize {
        self.peers.get(&key).map_or(0, |p| p.outstanding.len())
    }

    /// Our requests outstanding to every peer, and the bytes their credits
    /// hold.
    pub fn outstanding_total(&self) -> (usize, u64) {
        let mut n = 0;
        let mut bytes = 0;
        for p in self.peers.values() {
            n += p.outstanding.len();
            bytes += p
                .outstanding
                .keys()
                .map(|b| u64::from(self.layout.block_len(*b)))
                .sum::<u64>();
        }
        (n, bytes)
    }

    /// The node's upload limit, which per-peer caps are shares of (changes
    /// take effect at the next choking decision).
    pub fn set_upload_limit(&mut self, bytes_per_sec: Option<u64>) {
        self.up_limit = bytes_per_sec;
    }

    /// Changes the upload slots (at least 1) from now on: the choker
    /// rechokes at the next [`Self::handle_timeout`].
    pub fn set_upload_slots(&mut self, slots: u32, now: Instant) {
        if let Some(choker) = self.choker.as_mut() {
            choker.set_slots(slots.max(1), now);
            self.next_tick = self.next_tick.min(now);
        }
    }

    /// Whether we are leeching or seeding.
    fn mode(&self) -> Mode {
        if self.picker.is_complete() {
            Mode::Seeding
        } else {
            Mode::Leeching
        }
    }

    /// A session with `id` is ready (handshake done). `opened_by_us`: we
    /// opened it (else the peer did) — when both sides open one, both keep
    /// the one opened by the lower identity. `remote_max`: the requests it
    /// accepts outstanding. Returns the new session's key; the driver must
    /// be ready to carry out actions for it before the next
    /// [`Self::poll_action`] (our bitfield goes first).
    pub fn peer_opened(
        &mut self,
        now: Instant,
        id: I,
        opened_by_us: bool,
        remote_max: u32,
    ) -> Result<PeerKey, Refusal> {
        self.peer_opened_as(now, id, self.local_id, opened_by_us, remote_max)
    }

    /// [`Self::peer_opened`], with `local` as our identity when two
    /// sessions with `id` compete: a wire whose peers know us by another
    /// identity (BitTorrent's peer id) breaks the tie with that one, so
    /// both ends keep the same connection.
    pub fn peer_opened_as(
        &mut self,
        now: Instant,
        id: I,
        local: I,
        opened_by_us: bool,
        remote_max: u32,
    ) -> Result<PeerKey, Refusal> {
        if self.stopped {
            return Err(Refusal::Stopped);
        }
        // A second session from the same opener means the opener gave the
        // first one up (it restarted, or its end failed before ours
        // noticed): the new one replaces it.
        let opener = |by_us: bool| if by_us { local } else { id };
        let existing = self
            .peers
            .iter()
            .find(|(_, p)| p.id == id)
            .map(|(k, p)| (*k, p.opened_by_us));
        if self.offenders.banned.contains(&id) {
            return Err(Refusal::Banned);
        }
        match existing {
            Some((key, old_by_us)) => {
                if opened_by_us == old_by_us || opener(opened_by_us) < opener(old_by_us) {
                    self.close(key, CloseReason::Replaced);
                } else {
                    return Err(Refusal::AlreadyConnected);
                }
            }
            None if self.peers.len() >= self.config.max_peers => {
                return Err(Refusal::TooManyPeers);
            }
            None => {}
        }
        let key = PeerKey(self.next_key);
        self.next_key += 1;
        for m in bitfield_messages(self.picker.have()) {
            self.actions.push_back(Action::Send {
                peer: key,
                message: m,
            });
        }
        debug!(peer_id = %id, peer = key.0, "peer connected");
        self.peers.insert(
            key,
            Peer {
                id_text: id.to_string(),
                id,
                opened_by_us,
                connected_at: now,
                am_interested: false,
                peer_choking: true,
                peer_interested: false,
                has_bitfield: false,
                partial_bits: None,
                down: RateMeter::new(RATE_WINDOW),
                recent: RateMeter::new(RECENT_RATE_WINDOW),
                up: RateMeter::new(RATE_WINDOW),
                downloaded: 0,
                uploaded: 0,
                last_block_at: None,
                window: RequestWindow::new(self.config.window.clone(), remote_max),
                outstanding: BTreeMap::new(),
                expired: HashSet::new(),
                withdrawn: Vec::new(),
                decision: None,
                sole_pieces: 0,
                spread_pieces: 0,
                first_sole_at: None,
                held_haves: Vec::new(),
                cap: None,
                choke_discards: false,
            },
        );
        self.peers_changed(now);
        Ok(key)
    }

    /// The peer's choke drops every request we have out to it (a
    /// BitTorrent peer without the fast extension, BEP 6), rather than
    /// each being rejected.
    pub fn set_choke_discards(&mut self, key: PeerKey) {
        if let Some(p) = self.peers.get_mut(&key) {
            p.choke_discards = true;
        }
    }

    /// The session ended on its own (stream closed, timed out, broke the
    /// protocol, could not keep up): its requests go back to the picker
    /// and their credits to the queue at once.
    pub fn peer_closed(&mut self, now: Instant, key: PeerKey) {
        if self.forget(key) {
            self.peers_changed(now);
        }
    }

    /// Ends a session: tells the driver, forgets the peer.
    fn close(&mut self, key: PeerKey, reason: CloseReason) {
        let Some(p) = self.peers.get(&key) else {
            return;
        };
        if reason.is_routine() {
            debug!(peer_id = %p.id, %reason, "closing session");
        } else {
            warn!(peer_id = %p.id, %reason, "disconnecting peer");
        }
        self.actions.push_back(Action::Close { peer: key, reason });
        self.forget(key);
    }

    /// Drops a peer's state; returns whether it was known. Callers refresh
    /// the choker.
    fn forget(&mut self, key: PeerKey) -> bool {
        let Some(peer) = self.peers.remove(&key) else {
            return false;
        };
        // Its blocks may still be judged when their pieces complete.
        if self.departed.len() >= MAX_TRACKED_PEERS {
            self.departed.clear();
        }
        self.departed.insert(key, peer.id);
        self.picker.peer_gone(key);
        // Its credits go back as `peer` drops here.
        drop(peer);
        self.want_fill = true;
        true
    }

    /// The peer id behind a session key, also for a session that ended
    /// (while it is remembered).
    fn identity_of(&self, key: PeerKey) -> Option<I> {
        self.peers
            .get(&key)
            .map(|p| p.id)
            .or_else(|| self.departed.get(&key).copied())
    }

    /// One failed piece held against `id`; `ban_after` of them ban it for
    /// the session (by identity, so reconnecting does not help). Returns
    /// whether a session was closed (then the choker must hear of it).
    fn strike(&mut self, id: I) -> bool {
        let n = self.offenders.strike(id);
        let mut closed = false;
        if n >= self.config.ban_after && self.offenders.ban(id) {
            let keys: Vec<PeerKey> = self
                .peers
                .iter()
                .filter(|(_, p)| p.id == id)
                .map(|(k, _)| *k)
                .collect();
            if keys.is_empty() {
                warn!(peer_id = %id, "banned (already gone): sent corrupt data");
            }
            for key in keys {
                self.close(key, CloseReason::Banned);
                closed = true;
            }
        }
        closed
    }

    fn send(&mut self, peer: PeerKey, message: Message) {
        self.actions.push_back(Action::Send { peer, message });
    }

    /// The session sent `key` its first block of `piece`.
    pub fn on_served(&mut self, now: Instant, key: PeerKey, piece: u32) {
        // A piece some peer of ours already holds may reach others from
        // there: nobody's credit (a leecher's pieces mostly; a seeder's
        // fresh ones are sole).
        let elsewhere = self
            .layout
            .piece(piece)
            .is_some_and(|p| self.picker.availability(p) > 0);
        let Some(sole) = self.sole.get_mut(piece as usize) else {
            return;
        };
        match *sole {
            Sole::Nobody if elsewhere => *sole = Sole::Many,
            Sole::Nobody => {
                *sole = Sole::One(key);
                if let Some(p) = self.peers.get_mut(&key) {
                    p.sole_pieces += 1;
                    p.first_sole_at.get_or_insert(now);
                }
            }
            Sole::One(k) if k != key => {
                // No longer only k's to pass on: not held against it.
                *sole = Sole::Many;
                if let Some(p) = self.peers.get_mut(&k) {
                    p.sole_pieces = p.sole_pieces.saturating_sub(1);
                }
            }
            _ => {}
        }
    }

    /// The session wrote `bytes` of blocks to `key`.
    pub fn on_uploaded(&mut self, now: Instant, key: PeerKey, bytes: u64) {
        if let Some(p) = self.peers.get_mut(&key) {
            p.up.record(now, bytes);
            p.uploaded += bytes;
        }
        self.up.record(now, bytes);
        self.uploaded += bytes;
    }

    /// `key` announced `piece`: if we had sent it to one other peer only,
    /// that peer passed it on.
    fn credit_spread(&mut self, key: PeerKey, piece: u32) {
        let Some(sole) = self.sole.get_mut(piece as usize) else {
            return;
        };
        if let Sole::One(from) = *sole
            && from != key
        {
            *sole = Sole::Many;
            if let Some(p) = self.peers.get_mut(&from) {
                p.spread_pieces += 1;
            }
        }
    }

    /// A message from `key`. One that breaks the rules ends its session
    /// ([`Action::Close`]).
    pub fn on_message(&mut self, now: Instant, key: PeerKey, m: Message) {
        if !self.peers.contains_key(&key) {
            return;
        }
        if let Err(e) = self.message(now, key, m) {
            self.close(key, CloseReason::Protocol(e));
            self.peers_changed(now);
        }
    }

    fn message(&mut self, now: Instant, key: PeerKey, m: Message) -> Result<(), PeerError> {
        let num_pieces = self.layout.num_pieces() as usize;
        match m {
            Message::Bitfield { first_piece, bits } => {
                let peer = self.peers.get_mut(&key).expect("checked");
                if peer.has_bitfield {
                    return Err(PeerError::SecondBitfield);
                }
                let acc = peer.partial_bits.get_or_insert_with(Bitfield::new);
                if first_piece as usize != acc.len()
                    || acc.len() + bits.len() * 8 > num_pieces.div_ceil(8) * 8
                {
                    return Err(PeerError::BitfieldMisfit { first_piece });
                }
                acc.extend_from_raw_slice(&bits);
                if acc.len() >= num_pieces {
                    let mut all = peer.partial_bits.take().expect("just filled");
                    if all[num_pieces..].any() {
                        return Err(PeerError::BitfieldPastEnd);
                    }
                    all.truncate(num_pieces);
                    self.set_bitfield(now, key, all)?;
                }
            }
            Message::HaveAll => self.set_bitfield(now, key, Bitfield::repeat(true, num_pieces))?,
            Message::HaveNone => {
                self.set_bitfield(now, key, Bitfield::repeat(false, num_pieces))?;
            }
            Message::Have(i) => {
                let piece = self.layout.piece(i).ok_or(PeerError::NoSuchPiece(i))?;
                self.picker.peer_have(key, piece);
                self.credit_spread(key, piece.get());
                self.update_interest(now, key);
            }
            Message::Interested | Message::NotInterested => {
                let peer = self.peers.get_mut(&key).expect("checked");
                peer.peer_interested = m == Message::Interested;
                self.peers_changed(now);
            }
            Message::Choke => {
                let peer = self.peers.get_mut(&key).expect("checked");
                peer.peer_choking = true;
                if peer.choke_discards {
                    // BEP 3: a choke drops what was asked; nothing answers
                    // those requests now, so they are free at once.
                    let dropped = std::mem::take(&mut peer.outstanding);
                    for block in dropped.into_keys() {
                        self.picker.request_failed(key, block);
                    }
                    self.want_fill = true;
                }
            }
            Message::Unchoke => {
                self.peers.get_mut(&key).expect("checked").peer_choking = false;
                self.want_fill = true;
            }
            Message::Piece {
                piece,
                offset,
                data,
            } => self.on_piece(now, key, piece, offset, data)?,
            Message::Reject(spec) => {
                self.rejected += 1;
                if let Some(block) = self.block_of(spec) {
                    let peer = self.peers.get_mut(&key).expect("checked");
                    let unchoked = !peer.peer_choking;
                    if peer.outstanding.remove(&block).is_some() {
                        self.picker.request_failed(key, block);
                        // Refused while it unchokes us: it lacks the piece
                        // whatever it claimed (a choke rejects after the
                        // `Choke`, so that case is not this one). Asking it
                        // again would loop at wire speed.
                        if unchoked && self.picker.peer_lacks(key, block.piece()) {
                            debug!(peer = key.0, piece = %block.piece(), "peer refused a piece it claimed");
                            if let Some(p) = self.peers.get_mut(&key) {
                                p.withdrawn.push((block.piece(), now));
                            }
                            self.update_interest(now, key);
                        }
                    }
                }
                self.want_fill = true;
            }
            Message::MaxRequests(n) => self
                .peers
                .get_mut(&key)
                .expect("checked")
                .window
                .set_peer_max(n),
            // The session's own business (its upload queue, liveness).
            Message::Request(_)
            | Message::Cancel(_)
            | Message::KeepAlive
            | Message::Handshake { .. } => {}
        }
        Ok(())
    }

    fn block_of(&self, spec: BlockSpec) -> Option<BlockRef> {
        self.layout.block_at(spec.piece, spec.offset, spec.len)
    }

    fn set_bitfield(
        &mut self,
        now: Instant,
        key: PeerKey,
        bits: Bitfield,
    ) -> Result<(), PeerError> {
        let peer = self.peers.get_mut(&key).expect("checked");
        if peer.has_bitfield {
            return Err(PeerError::SecondBitfield);
        }
        peer.has_bitfield = true;
        self.picker.peer_bitfield(key, bits)?;
        self.update_interest(now, key);
        Ok(())
    }

    /// Tells `key` whether we want something of it, if that changed.
    fn update_interest(&mut self, now: Instant, key: PeerKey) {
        if self.update_interest_quietly(key) {
            self.peers_changed(now);
        }
    }

    /// [`Self::update_interest`] without asking the choker; returns whether
    /// our interest changed (then the caller must).
    fn update_interest_quietly(&mut self, key: PeerKey) -> bool {
        let want = self.picker.wants_from(key);
        let Some(peer) = self.peers.get_mut(&key) else {
            return false;
        };
        // Only a peer that unchokes us can take a request (its unchoke
        // asks for a fill when it comes).
        if want && !peer.peer_choking {
            self.want_fill = true;
        }
        if want == peer.am_interested {
            return false;
        }
        peer.am_interested = want;
        let m = if want {
            Message::Interested
        } else {
            Message::NotInterested
        };
        self.send(key, m);
        true
    }

    fn on_piece(
        &mut self,
        now: Instant,
        key: PeerKey,
        piece: u32,
        offset: u32,
        data: Bytes,
    ) -> Result<(), PeerError> {
        let len32 = data.len() as u32;
        let block = self
            .layout
            .block_at(piece, offset, len32)
            .ok_or(PeerError::NoSuchBlock {
                piece,
                offset,
                len: len32,
            })?;
        let len = data.len() as u64;
        let peer = self.peers.get_mut(&key).expect("checked");
        let Some(request) = peer.outstanding.remove(&block) else {
            if peer.expired.remove(&block) {
                self.on_late_block(now, key, block, data);
                return Ok(());
            }
            // Never asked of this peer (or cancelled): no credit, dropped.
            debug!(peer = key.0, ?block, "unrequested block dropped");
            return Ok(());
        };
        peer.window
            .on_block(now.saturating_duration_since(request.at));
        self.count_download(now, key, len);
        match self.picker.block_received(key, block) {
            Received::Accepted { cancel } => {
                self.actions.push_back(Action::Submit {
                    block,
                    data,
                    credit: request.credit,
                });
                self.cancel_at(block, cancel);
            }
            Received::Unrequested => drop(request.credit),
        }
        self.want_fill = true;
        Ok(())
    }

    fn count_download(&mut self, now: Instant, key: PeerKey, len: u64) {
        if let Some(peer) = self.peers.get_mut(&key) {
            peer.down.record(now, len);
            peer.recent.record(now, len);
            peer.downloaded += len;
            peer.last_block_at = Some(now);
        }
        self.down.record(now, len);
        self.downloaded += len;
        if self.first_block_after.is_none() {
            self.first_block_after = Some(now.saturating_duration_since(self.started));
        }
    }

    /// The picker took `block` from one peer: its requests at `others`
    /// end (credits back) and they are told to cancel them.
    fn cancel_at(&mut self, block: BlockRef, others: Vec<PeerKey>) {
        let spec = self.spec(block);
        for other in others {
            if let Some(p) = self.peers.get_mut(&other) {
                p.outstanding.remove(&block);
            }
            self.send(other, Message::Cancel(spec));
        }
    }

    /// A block whose request had ended (timed out, cancelled). Taken if
    /// still wanted and a credit is free at once; dropped otherwise.
    fn on_late_block(&mut self, now: Instant, key: PeerKey, block: BlockRef, data: Bytes) {
        let len = data.len() as u64;
        let Ok(Some(credit)) = self.credits.try_reserve(len as u32) else {
            debug!(peer = key.0, ?block, "late block dropped: no credit");
            return;
        };
        match self.picker.late_block(key, block) {
            Received::Accepted { cancel } => {
                self.count_download(now, key, len);
                self.actions.push_back(Action::Submit {
                    block,
                    data,
                    credit,
                });
                self.cancel_at(block, cancel);
                self.want_fill = true;
            }
            Received::Unrequested => {
                debug!(peer = key.0, ?block, "unrequested block dropped");
                drop(credit);
            }
        }
    }

    fn spec(&self, block: BlockRef) -> BlockSpec {
        BlockSpec {
            piece: block.piece().get(),
            offset: self.layout.block_offset(block),
            len: self.layout.block_len(block),
        }
    }

    /// Issues requests while credits and windows allow, one per peer per
    /// round, so every unchoked peer gets its share of the credits.
    fn fill_requests(&mut self, now: Instant) {
        if self.credit_wait
            || self.stopped
            || self.picker.is_complete()
            || self.disk_paused_until.is_some()
        {
            return;
        }
        let mut keys: Vec<PeerKey> = self
            .peers
            .iter()
            .filter(|(_, p)| !p.peer_choking && p.am_interested)
            .map(|(k, _)| *k)
            .collect();
        while !keys.is_empty() {
            let mut still = Vec::with_capacity(keys.len());
            for key in keys {
                let peer = self.peers.get_mut(&key).expect("listed");
                let window = peer.window.size(peer.recent.rate(now)) as usize;
                if peer.outstanding.len() >= window {
                    continue;
                }
                let Some(block) = self.picker.next_request(key, &mut self.rng) else {
                    continue;
                };
                let len = self.layout.block_len(block);
                match self.credits.try_reserve(len) {
                    Ok(Some(credit)) => {
                        let peer = self.peers.get_mut(&key).expect("listed");
                        // Asked again after it timed out: a live request now.
                        peer.expired.remove(&block);
                        peer.outstanding.insert(block, Request { credit, at: now });
                        let spec = self.spec(block);
                        self.send(key, Message::Request(spec));
                        still.push(key);
                    }
                    Ok(None) => {
                        // Disk queue full: stop, and wake up on recovery.
                        self.picker.request_failed(key, block);
                        self.credit_wait = true;
                        self.actions.push_back(Action::WaitForCredits);
                        return;
                    }
                    Err(e) => {
                        self.picker.request_failed(key, block);
                        warn!(error = %e, "cannot reserve disk queue credit");
                        return;
                    }
                }
            }
            keys = still;
        }
    }

    /// The write queue has room again (after [`Action::WaitForCredits`]).
    pub fn credits_available(&mut self, _now: Instant) {
        self.credit_wait = false;
        self.want_fill = true;
    }

    /// What the storage writer (or a read for upload) found.
    pub fn on_storage(&mut self, now: Instant, ev: StorageEvent) {
        match ev {
            StorageEvent::PieceVerified(piece) => {
                // A write went through: whatever filled the disk is over.
                self.disk_error = None;
                let dropped = self.picker.piece_verified(piece);
                self.end_requests(dropped);
                if !self.unannounced.contains(&piece) {
                    self.unannounced.push(piece);
                }
                if self.haves_due().is_none_or(|due| due <= now) {
                    self.announce(now);
                }
                let keys: Vec<PeerKey> = self.peers.keys().copied().collect();
                let mut changed = false;
                for key in keys {
                    changed |= self.update_interest_quietly(key);
                }
                if self.picker.is_complete() {
                    info!("download complete");
                    changed = true;
                }
                if changed {
                    self.peers_changed(now);
                }
            }
            StorageEvent::HashFailed { piece, leaves } => {
                self.hash_failures += 1;
                let failed = self.picker.hash_failed(piece);
                self.end_requests(failed.dropped);
                let received = failed.senders.len();
                let senders: Vec<(u32, I)> = failed
                    .senders
                    .into_iter()
                    .filter_map(|(i, key)| Some((i, self.identity_of(key)?)))
                    .collect();
                let first = senders.first().map(|(_, id)| *id);
                // A sender we can no longer name may have been the liar:
                // then nobody is blamed alone.
                let sole = first
                    .filter(|id| senders.len() == received && senders.iter().all(|(_, o)| o == id));
                let mut closed = false;
                if let Some(only) = sole {
                    // One sender: the bad data was its.
                    closed = self.strike(only);
                } else {
                    // Several: judged once the piece verifies, by which
                    // blocks differed (smart ban). Blaming them all would
                    // ban honest peers that shared a piece with a liar.
                    let bound = self.layout.blocks_in_piece(piece) as usize * 4;
                    let suspects = self.suspects.entry(piece).or_default();
                    for (i, id) in senders {
                        if let Some(leaf) = leaves.get(i as usize) {
                            suspects.push((id, i, *leaf));
                        }
                    }
                    let excess = suspects.len().saturating_sub(bound);
                    suspects.drain(..excess);
                }
                if closed {
                    self.peers_changed(now);
                }
                self.want_fill = true;
            }
            StorageEvent::GoodLeaves { piece, leaves } => {
                let mut liars: Vec<I> = self
                    .suspects
                    .remove(&piece)
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|(_, i, leaf)| leaves.get(*i as usize) != Some(leaf))
                    .map(|(id, _, _)| id)
                    .collect();
                liars.sort();
                liars.dedup();
                let mut closed = false;
                for id in liars {
                    closed |= self.strike(id);
                }
                if closed {
                    self.peers_changed(now);
                }
            }
            StorageEvent::PieceLost(piece) => {
                // Our copy changed on disk: no longer ours to offer (its
                // requests are rejected), fetched again like any other.
                self.picker.piece_lost(piece);
                // Not announced yet: never will be.
                self.unannounced.retain(|p| *p != piece);
                for p in self.peers.values_mut() {
                    p.held_haves.retain(|held| *held != piece.get());
                }
                self.flushed_complete = false;
                if let Some(complete) = self.flushing.as_mut() {
                    *complete = false;
                }
                let keys: Vec<PeerKey> = self.peers.keys().copied().collect();
                for key in keys {
                    self.update_interest_quietly(key);
                }
                self.peers_changed(now);
                self.want_fill = true;
            }
            StorageEvent::WriteFailed { block, error } => {
                // Typically a full disk: only that block is lost. Stop
                // requesting for a while rather than fetch blocks that
                // cannot be written, then try again.
                self.picker.block_lost(block);
                if self.disk_paused_until.is_none() {
                    warn!(
                        error = %error,
                        retry_in = ?DISK_RETRY,
                        "cannot write; pausing requests (verified pieces are kept)"
                    );
                }
                self.disk_paused_until = Some(now + DISK_RETRY);
                self.disk_error = Some(error);
            }
        }
    }

    /// Requests the picker ended (their piece verified or failed): their
    /// credits go back and the peers are told to cancel them.
    fn end_requests(&mut self, dropped: Vec<(PeerKey, BlockRef)>) {
        for (key, block) in dropped {
            if let Some(p) = self.peers.get_mut(&key)
                && p.outstanding.remove(&block).is_some()
            {
                let spec = self.spec(block);
                self.send(key, Message::Cancel(spec));
            }
        }
    }

    /// A flush ([`Action::Flush`]) finished.
    pub fn flushed(&mut self, _now: Instant, result: Result<(), String>) {
        let complete = self.flushing.take().unwrap_or(false);
        match result {
            Ok(()) => self.flushed_complete = complete,
            Err(e) => self.disk_error = Some(e),
        }
    }

    /// When the core wants [`Self::handle_timeout`] called.
    pub fn poll_timeout(&self) -> Instant {
        [self.haves_due(), self.redundant_due]
            .into_iter()
            .flatten()
            .fold(self.next_tick, Instant::min)
    }

    /// When the held-back `Have`s go out (`None`: none are held, or none
    /// went out before, so the next goes at once).
    fn haves_due(&self) -> Option<Instant> {
        if self.unannounced.is_empty() {
            return None;
        }
        Some(self.last_haves? + self.config.have_batch)
    }

    /// Tells every peer of the pieces verified since the last
    /// announcement: at once those it lacks, with any held back for it;
    /// those it holds are held back (see [`DEFAULT_REDUNDANT_HAVE_DELAY`]).
    fn announce(&mut self, now: Instant) {
        if self.unannounced.is_empty() {
            return;
        }
        self.last_haves = Some(now);
        let pieces = std::mem::take(&mut self.unannounced);
        let hold = !self.config.redundant_have_delay.is_zero();
        let mut held_any = false;
        for (&key, p) in &mut self.peers {
            let has = self.picker.peer_has(key);
            let mut fresh = Vec::new();
            for piece in &pieces {
                let holds =
                    has.is_some_and(|bits| bits.get(piece.get() as usize).is_some_and(|b| *b));
                if hold && holds {
                    p.held_haves.push(piece.get());
                } else {
                    fresh.push(piece.get());
                }
            }
            if !fresh.is_empty() {
                fresh.append(&mut p.held_haves);
                self.actions.push_back(Action::Haves {
                    peer: key,
                    pieces: fresh,
                });
            }
            held_any |= !p.held_haves.is_empty();
        }
        if held_any && self.redundant_due.is_none() {
            self.redundant_due = Some(now + self.config.redundant_have_delay);
        }
    }

    /// Sends every `Have` held back.
    fn announce_held(&mut self) {
        self.redundant_due = None;
        for (&key, p) in &mut self.peers {
            if !p.held_haves.is_empty() {
                self.actions.push_back(Action::Haves {
                    peer: key,
                    pieces: std::mem::take(&mut p.held_haves),
                });
            }
        }
    }

    /// Housekeeping: request timeouts, expiring withdrawals, the rechoke,
    /// the disk pause, flushes. Does nothing before [`Self::poll_timeout`].
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.stopped {
            return;
        }
        if self.haves_due().is_some_and(|due| now >= due) {
            self.announce(now);
        }
        if self.redundant_due.is_some_and(|due| now >= due) {
            self.announce_held();
        }
        if now < self.next_tick {
            return;
        }
        self.next_tick = now + self.config.tick;
        if self.disk_paused_until.is_some_and(|t| now >= t) {
            self.disk_paused_until = None;
        }
        // Withdrawn claims expire: the peer may be asked again.
        let mut restored = Vec::new();
        for (key, p) in &mut self.peers {
            if p.withdrawn
                .first()
                .is_some_and(|(_, at)| now - *at >= WITHDRAW_FOR)
            {
                let (old, keep) = p
                    .withdrawn
                    .iter()
                    .partition(|(_, at)| now - *at >= WITHDRAW_FOR);
                p.withdrawn = keep;
                restored.extend(
                    old.into_iter()
                        .map(|(piece, _): (PieceIndex, Instant)| (*key, piece)),
                );
            }
        }
        let mut changed = false;
        for (key, piece) in restored {
            self.picker.peer_have(key, piece);
            changed |= self.update_interest_quietly(key);
        }
        // Timeouts.
        let mut expired = Vec::new();
        let max_expired = self.config.window.max() as usize;
        for (key, p) in &mut self.peers {
            let timeout = p.window.timeout();
            let late: Vec<BlockRef> = p
                .outstanding
                .iter()
                .filter(|(_, r)| now.saturating_duration_since(r.at) > timeout)
                .map(|(b, _)| *b)
                .collect();
            if !late.is_empty() {
                p.window.on_timeout();
            }
            for b in late {
                p.outstanding.remove(&b);
                if p.expired.len() >= max_expired {
                    p.expired.clear();
                }
                p.expired.insert(b);
                expired.push((*key, b));
            }
        }
        for (key, block) in expired {
            debug!(peer = key.0, ?block, "request timed out");
            self.picker.request_failed(key, block);
            let spec = self.spec(block);
            self.send(key, Message::Cancel(spec));
        }
        // Rechoke.
        if let Some(due) = self.choker.as_ref().map(|c| c.next_rechoke())
            && due.is_none_or(|d| now >= d)
        {
            let mode = self.mode();
            let snaps = self.snapshots(now);
            let choker = self.choker.as_mut().expect("checked");
            let decisions = choker.rechoke(now, mode, &snaps, &mut self.rng);
            self.apply(decisions);
        } else if changed {
            self.peers_changed(now);
        }
        self.want_fill = true;
        // Durability: flush when complete, and every flush interval.
        let complete = self.picker.is_complete();
        if ((complete && !self.flushed_complete)
            || now.duration_since(self.last_flush) >= self.config.flush_interval)
            && self.flushing.is_none()
        {
            // fsync can take seconds: the driver runs it beside the core,
            // which keeps serving peers.
            self.last_flush = now;
            self.flushing = Some(complete);
            self.actions.push_back(Action::Flush);
        }
    }

    /// The next thing for the driver to do. Tops up requests first when
    /// anything since the last call may allow more.
    pub fn poll_action(&mut self, now: Instant) -> Option<Action<C::Credit>> {
        if std::mem::take(&mut self.want_fill) {
            self.fill_requests(now);
        }
        self.actions.pop_front()
    }

    /// Stops: every session is told to close (their credits go back),
    /// nothing more is requested; pending actions other than closes are
    /// dropped.
    pub fn shutdown(&mut self) {
        self.stopped = true;
        self.actions
            .retain(|a| matches!(a, Action::Close { .. } | Action::Submit { .. }));
        let keys: Vec<PeerKey> = self.peers.keys().copied().collect();
        for key in keys {
            self.actions.push_back(Action::Close {
                peer: key,
                reason: CloseReason::ShuttingDown,
            });
            self.forget(key);
        }
    }

    fn snapshots(&mut self, now: Instant) -> Vec<PeerSnapshot> {
        self.peers
            .iter_mut()
            .map(|(&key, p)| PeerSnapshot {
                key,
                interested: p.peer_interested,
                we_are_interested: p.am_interested,
                connected_at: p.connected_at,
                down_rate: p.down.rate(now),
                up_rate: p.up.rate(now),
                last_block_at: p.last_block_at,
                uploaded: p.uploaded,
                sole_pieces: p.sole_pieces,
                spread_pieces: p.spread_pieces,
                first_sole_at: p.first_sole_at,
            })
            .collect()
    }

    fn apply(&mut self, decisions: Vec<Decision>) {
        for d in decisions {
            let up_limit = self.up_limit;
            let Some(peer) = self.peers.get_mut(&d.peer) else {
                continue;
            };
            let choke = !d.unchoke;
            let changed = peer.am_choking() != choke;
            let key = d.peer;
            // A cap is a share of our upload limit; without one, no cap.
            let cap = d
                .cap
                .zip(up_limit)
                // At least a few blocks a second, so the capped session's
                // batches (waited out before it serves again) stay short.
                .map(|(share, rate)| ((share * rate as f64) as u64).max(MIN_CAP));
            let cap_changed = peer.cap != cap;
            peer.cap = cap;
            peer.decision = Some(d);
            // The session must see every change, or its view and ours drift.
            if changed {
                self.actions.push_back(Action::Choke { peer: key, choke });
            }
            if cap_changed {
                self.actions.push_back(Action::Cap {
                    peer: key,
                    rate: cap,
                });
            }
        }
    }

    /// A peer joined, left or changed interest: free and fill slots now.
    fn peers_changed(&mut self, now: Instant) {
        if self.stopped {
            return;
        }
        let mode = self.mode();
        let snaps = self.snapshots(now);
        let Some(choker) = self.choker.as_mut() else {
            return;
        };
        let decisions = choker.on_peers_changed(now, mode, &snaps, &mut self.rng);
        self.apply(decisions);
    }

    /// A few totals, cheaply (no per-peer rows, no rates): what a
    /// simulator samples thousands of cores for.
    pub fn summary(&self) -> CoreSummary {
        CoreSummary {
            complete: self.flushed_complete,
            downloaded: self.downloaded,
            uploaded: self.uploaded,
            hash_failures: self.hash_failures,
            banned_peers: self.offenders.banned.len(),
        }
    }

    /// From the core's start to the first block it received.
    pub fn first_block_after(&self) -> Option<Duration> {
        self.first_block_after
    }

    /// The core's numbers at `now`.
    pub fn stats(&mut self, now: Instant) -> CoreStats {
        let upload_window = self.config.upload_window;
        let mut peers = Vec::with_capacity(self.peers.len());
        for (key, p) in &mut self.peers {
            let reason = p.decision.as_ref().map(|d| &d.reason);
            peers.push((
                *key,
                PeerStats {
                    peer_id: p.id_text.clone(),
                    transport: Default::default(),
                    client: None,
                    socket_addr: None,
                    am_choking: p.am_choking(),
                    am_interested: p.am_interested,
                    peer_choking: p.peer_choking,
                    peer_interested: p.peer_interested,
                    optimistic: p.decision.as_ref().is_some_and(Decision::is_optimistic),
                    snubbed: reason.is_some_and(|r| *r == sluice_choke::Reason::Snubbed),
                    choke_reason: match (reason, p.cap) {
                        (None, _) => "not yet decided".into(),
                        (Some(r), None) => r.to_string(),
                        (Some(r), Some(cap)) => {
                            format!("{r}; passes nothing on, capped at {cap} B/s")
                        }
                    },
                    choke_reason_code: reason.map_or("undecided", |r| r.code()).to_owned(),
                    down_rate: p.down.rate(now),
                    up_rate: p.up.rate(now),
                    downloaded: p.downloaded,
                    uploaded: p.uploaded,
                    outstanding_requests: p.outstanding.len(),
                    request_window: p.window.size(p.recent.rate(now)),
                    upload_queue: 0,
                    upload_window_bytes: upload_window,
                    upload_buffered_bytes: 0,
                    upload_cap: p.cap,
                    sole_pieces: p.sole_pieces,
                    spread_pieces: p.spread_pieces,
                    pieces: self.picker.peer_has(*key).map_or(0, |b| b.count_ones()),
                    connected_seconds: now.saturating_duration_since(p.connected_at).as_secs_f64(),
                },
            ));
        }
        CoreStats {
            complete: self.flushed_complete,
            down_rate: self.down.rate(now),
            up_rate: self.up.rate(now),
            downloaded: self.downloaded,
            uploaded: self.uploaded,
            hash_failures: self.hash_failures,
            requests_rejected: self.rejected,
            banned_peers: self.offenders.banned.len(),
            disk_error: self.disk_error.clone(),
            first_block_after: self.first_block_after,
            peers,
        }
    }

    /// Checks that the core and its picker agree (tests): every request a
    /// peer holds is requested from it in the picker and the other way
    /// round; no block has more requesters than endgame allows; a block
    /// is never both outstanding and expired at one peer. (That a block
    /// is asked of a second peer only in endgame is checked as requests
    /// go out: duplicates made in endgame outlive it when a block goes
    /// missing again.)
    #[doc(hidden)]
    pub fn check_invariants(&self) -> Result<(), String> {
        self.picker.check_invariants()?;
        if let Some(gone) = self
            .picker
            .known_peers()
            .into_iter()
            .find(|k| !self.peers.contains_key(k))
        {
            return Err(format!("the picker still counts {gone:?}, which left"));
        }
        let mut seen: HashMap<BlockRef, u32> = HashMap::new();
        for (key, p) in &self.peers {
            let listed = self.picker.requested_from(*key);
            let ours: Vec<BlockRef> = p.outstanding.keys().copied().collect();
            if listed != ours {
                return Err(format!(
                    "{key:?}: the picker lists {} requests, the core holds {}",
                    listed.len(),
                    ours.len()
                ));
            }
            for b in ours {
                *seen.entry(b).or_default() += 1;
                if p.expired.contains(&b) {
                    return Err(format!("{key:?}: {b:?} both outstanding and expired"));
                }
            }
        }
        let max = self.config.picker.endgame_max_requesters();
        if let Some((b, n)) = seen.iter().find(|(_, n)| **n as usize > max) {
            return Err(format!("{b:?} requested from {n} peers"));
        }
        Ok(())
    }
}

/// Our pieces as the first messages of a session.
pub fn bitfield_messages(have: &Bitfield) -> Vec<Message> {
    if have.all() {
        return vec![Message::HaveAll];
    }
    if have.not_any() {
        return vec![Message::HaveNone];
    }
    let raw = have.as_raw_slice();
    raw.chunks(MAX_BITFIELD_CHUNK)
        .enumerate()
        .map(|(i, chunk)| Message::Bitfield {
            first_piece: (i * MAX_BITFIELD_CHUNK * 8) as u32,
            bits: Bytes::copy_from_slice(chunk),
        })
        .collect()
}

#[cfg(test)]
mod tests;
