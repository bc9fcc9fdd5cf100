//! The swarm side of one torrent: a task that owns the piece picker, the
//! choker, every peer's flow-control state and the storage event stream.
//!
//! Sessions (one task per peer, see `session`) own the streams and report
//! what peers say; this task decides what to request, from whom, and who
//! is unchoked:
//!
//! - **capacity advertisement**: every request first takes a credit from the
//!   storage write queue for the block's bytes; no credit, no request;
//! - **emission throttling**: outstanding requests per peer stay within its
//!   request window (rate × target queue time, clamped), recomputed each
//!   time, never accumulated;
//! - **recovery**: when the queue refuses a credit this task waits on the
//!   queue's recovery and then fills every unchoked peer's window again,
//!   round-robin, so none is starved;
//! - requests that see no answer time out (mean + 4 deviations of that
//!   peer's block times), go back to the picker and shrink the window;
//! - a peer that contributed to `ban_after` failed pieces is banned.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use libp2p::PeerId;
use rand::SeedableRng;
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};
use sluice_choke::{
    Choker, Decision, Mode, PeerKey, PeerSnapshot, PropShare, PropShareConfig, RateMeter,
    TitForTat, TitForTatConfig,
};
use sluice_storage::{
    BLOCK_SIZE, Bitfield, BlockRef, Credit, InfoHash, Metainfo, PieceIndex, QueueStats,
    ReserveError, Storage, StorageEvent,
};
use tokio::io::{ReadHalf, WriteHalf};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::compat::Compat;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::framed::{FrameReader, FrameWriter};
use crate::picker::{Picker, PickerConfig, Received};
use crate::ratelimit::RateLimiter;
use crate::session::{FromSession, Session, SessionLimits, SessionStats, ToSession};
use crate::window::{RequestWindow, WindowConfig};
use crate::wire::{BlockSpec, MAX_BITFIELD_CHUNK, Message};

/// The rate that sizes request windows is measured over this long.
const RECENT_RATE_WINDOW: Duration = Duration::from_secs(3);

/// Session events handled per loop turn before requests are topped up.
const EVENT_BATCH: usize = 64;
/// Peer ids a torrent keeps strikes for, and departed sessions it
/// remembers the ids of.
const MAX_TRACKED_PEERS: usize = 4096;
/// After a failed write (a full disk), requesting pauses this long before
/// it tries again.
pub const DISK_RETRY: Duration = Duration::from_secs(2);
/// How long a peer that refused a piece it claimed is not asked for it.
pub const WITHDRAW_FOR: Duration = Duration::from_secs(30);

/// The stream type of a piece-protocol session.
pub type PeerStream = Compat<libp2p::Stream>;
/// A session's read half, with whatever it buffered during the handshake.
pub type PeerReader = FrameReader<ReadHalf<PeerStream>>;
/// A session's write half.
pub type PeerWriter = FrameWriter<WriteHalf<PeerStream>>;

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
    window: WindowConfig,
    picker: PickerConfig,
    choker: ChokerChoice,
    max_peers: usize,
    event_capacity: usize,
    upload_window: u32,
    idle_timeout: Duration,
    tick: Duration,
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
            idle_timeout: Duration::from_secs(120),
            tick: Duration::from_millis(200),
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

    /// Most peers at once. Default 64.
    pub fn with_max_peers(mut self, n: usize) -> Self {
        self.max_peers = n.max(1);
        self
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

    /// A peer silent this long is disconnected. Default 120 s.
    pub fn with_idle_timeout(mut self, d: Duration) -> Self {
        self.idle_timeout = d;
        self
    }

    /// Housekeeping interval (timeouts, rates, stats). Default 200 ms.
    pub fn with_tick(mut self, d: Duration) -> Self {
        self.tick = d;
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
}

/// One peer as the control API shows it (`GET …/peers`, with its
/// address added by the node).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerStats {
    pub peer_id: String,
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

/// A torrent's live numbers, published every tick.
#[derive(Debug, Clone, Serialize)]
pub struct TorrentStats {
    pub info_hash: InfoHash,
    pub name: String,
    pub size: u64,
    pub verified_pieces: u32,
    pub total_pieces: u32,
    /// Pieces verified when the torrent started (from the resume file or
    /// a recheck): what a restart did not have to download again.
    pub pieces_at_start: u32,
    pub piece_length: u32,
    /// Every piece verified and flushed to disk (resume file written).
    pub complete: bool,
    pub down_rate: f64,
    pub up_rate: f64,
    pub downloaded: u64,
    pub uploaded: u64,
    pub hash_failures: u64,
    pub requests_rejected: u64,
    /// Pieces read whole and checked before upload (verify on read).
    pub read_checks: u64,
    pub banned_peers: usize,
    pub disk: QueueStats,
    pub disk_error: Option<String>,
    pub peers: Vec<PeerStats>,
}

enum Command {
    AddPeer {
        peer_id: PeerId,
        reader: PeerReader,
        writer: PeerWriter,
        remote_max: u32,
        opened_by_us: bool,
    },
    Stop(oneshot::Sender<Result<(), String>>),
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Command::AddPeer { peer_id, .. } => write!(f, "AddPeer({peer_id})"),
            Command::Stop(_) => f.write_str("Stop"),
        }
    }
}

/// A cheap handle to a running torrent.
#[derive(Debug, Clone)]
pub struct TorrentHandle {
    info_hash: InfoHash,
    metainfo: Arc<Metainfo>,
    max_requests: u32,
    commands: mpsc::Sender<Command>,
    stats: watch::Receiver<TorrentStats>,
}

impl TorrentHandle {
    pub fn info_hash(&self) -> InfoHash {
        self.info_hash
    }

    /// The torrent's metadata (served to peers that start from a magnet
    /// link).
    pub fn metainfo(&self) -> &Arc<Metainfo> {
        &self.metainfo
    }

    /// The `max_requests` we advertise in handshakes.
    pub fn max_requests(&self) -> u32 {
        self.max_requests
    }

    /// The latest numbers (updated every tick).
    pub fn stats(&self) -> TorrentStats {
        self.stats.borrow().clone()
    }

    /// A receiver that sees every published update.
    pub fn watch(&self) -> watch::Receiver<TorrentStats> {
        self.stats.clone()
    }

    /// Hands over a peer's stream after a successful handshake.
    /// `opened_by_us`: we opened the stream (else the peer did) — when both
    /// sides open one, both keep the stream opened by the lower peer id.
    ///
    /// Cancel-safe.
    pub async fn add_peer(
        &self,
        peer_id: PeerId,
        reader: PeerReader,
        writer: PeerWriter,
        remote_max: u32,
        opened_by_us: bool,
    ) {
        let cmd = Command::AddPeer {
            peer_id,
            reader,
            writer,
            remote_max,
            opened_by_us,
        };
        let _ = self.commands.send(cmd).await;
    }

    /// Stops requesting, closes every session, lets the writer finish what
    /// is queued and flushes the resume file.
    ///
    /// Cancel-safe (the stop goes ahead regardless).
    pub async fn stop(&self) -> Result<(), String> {
        let (tx, rx) = oneshot::channel();
        if self.commands.send(Command::Stop(tx)).await.is_err() {
            return Ok(());
        }
        rx.await.unwrap_or(Ok(()))
    }
}

/// Node-wide settings a torrent needs.
#[derive(Debug, Clone, Default)]
pub struct SharedLimits {
    pub up: Option<Arc<RateLimiter>>,
    pub down: Option<Arc<RateLimiter>>,
}

struct Peer {
    peer_id: PeerId,
    /// We opened this stream (the peer did otherwise).
    opened_by_us: bool,
    commands: mpsc::Sender<ToSession>,
    stats: Arc<SessionStats>,
    connected_at: Instant,
    am_choking: bool,
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
    uploaded_seen: u64,
    last_block_at: Option<Instant>,
    window: RequestWindow,
    outstanding: HashMap<BlockRef, (Credit, Instant)>,
    /// Requests to it that timed out (at most the window's maximum): a
    /// block for one of them may still arrive and is worth keeping.
    expired: std::collections::HashSet<BlockRef>,
    /// Pieces it refused while unchoking us, and when: its claim to them
    /// is withdrawn for [`WITHDRAW_FOR`] (a refusal may have been a passing
    /// fault), at most one entry per piece.
    withdrawn: Vec<(PieceIndex, Instant)>,
    decision: Option<Decision>,
    /// Pieces we sent it before anyone else, and how many of those another
    /// peer announced afterwards (it passed them on); see [`Sole`].
    sole_pieces: u32,
    spread_pieces: u32,
    first_sole_at: Option<Instant>,
    /// Its upload cap in bytes/s, as last told to its session.
    cap: Option<u64>,
}

/// The lowest per-peer upload cap, bytes/s: a capped session waits out
/// each batch before it reads again, so a batch must take seconds, not
/// minutes.
const MIN_CAP: u64 = 4 * BLOCK_SIZE as u64;

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

type CreditWait = Pin<Box<dyn Future<Output = Result<Credit, ReserveError>> + Send>>;

struct Torrent {
    local_id: PeerId,
    storage: Arc<Storage>,
    config: TorrentConfig,
    limits: SharedLimits,
    picker: Picker,
    choker: Option<Box<dyn Choker>>,
    rng: StdRng,
    peers: HashMap<PeerKey, Peer>,
    next_key: u64,
    banned: HashSet<PeerId>,
    /// Per piece: who we sent it to (one entry per piece).
    sole: Vec<Sole>,
    /// Failed pieces held against each peer id.
    strikes: HashMap<PeerId, u32>,
    /// Blocks of failed pieces with several senders: who sent which block
    /// and its leaf hash, judged when the piece verifies.
    suspects: HashMap<PieceIndex, Vec<(PeerId, u32, sluice_storage::Hash)>>,
    /// Session keys of peers that left, for judging their blocks.
    departed: HashMap<PeerKey, PeerId>,
    events_tx: mpsc::Sender<FromSession>,
    tracker: TaskTracker,
    credit_wait: Option<CreditWait>,
    stats_tx: watch::Sender<TorrentStats>,
    down: RateMeter,
    up: RateMeter,
    downloaded: u64,
    uploaded: u64,
    hash_failures: u64,
    rejected: u64,
    disk_error: Option<String>,
    /// After a failed write, no requests until then.
    disk_paused_until: Option<Instant>,
    flushed_complete: bool,
    last_flush: Instant,
    /// A flush running on the blocking pool, and whether everything was
    /// verified when it started.
    flushing: Option<tokio::task::JoinHandle<Result<(), sluice_storage::StorageError>>>,
    flushing_complete: bool,
    /// Something changed that may allow more requests; filled once per
    /// loop turn.
    want_fill: bool,
}

/// Starts the torrent's task. `storage_events` is the stream
/// [`Storage::open`] returned.
pub fn spawn_torrent(
    local_id: PeerId,
    storage: Arc<Storage>,
    storage_events: mpsc::Receiver<StorageEvent>,
    config: TorrentConfig,
    limits: SharedLimits,
    tracker: &TaskTracker,
    cancel: CancellationToken,
) -> TorrentHandle {
    let layout = storage.layout().clone();
    let layout_pieces = layout.num_pieces() as usize;
    let picker = Picker::new(layout, storage.verified(), config.picker.clone());
    let choker: Option<Box<dyn Choker>> = match &config.choker {
        ChokerChoice::TitForTat(c) => Some(Box::new(TitForTat::new(c.clone()))),
        ChokerChoice::PropShare(c) => Some(Box::new(PropShare::new(c.clone()))),
        ChokerChoice::FreeRider => None,
    };
    let (events_tx, events_rx) = mpsc::channel(config.event_capacity);
    let (commands_tx, commands_rx) = mpsc::channel(64);
    let info = storage.metainfo().info();
    let initial = TorrentStats {
        info_hash: info.info_hash(),
        name: info.name().to_owned(),
        size: info.total_size(),
        verified_pieces: storage.verified_count(),
        total_pieces: storage.layout().num_pieces(),
        pieces_at_start: storage.verified_count(),
        piece_length: info.piece_length(),
        complete: false,
        down_rate: 0.0,
        up_rate: 0.0,
        downloaded: 0,
        uploaded: 0,
        hash_failures: 0,
        requests_rejected: 0,
        read_checks: 0,
        banned_peers: 0,
        disk: storage.queue_stats(),
        disk_error: None,
        peers: Vec::new(),
    };
    let (stats_tx, stats_rx) = watch::channel(initial);
    let rate_window = Duration::from_secs(20);
    let torrent = Torrent {
        local_id,
        rng: StdRng::seed_from_u64(config.seed),
        storage,
        limits,
        picker,
        choker,
        peers: HashMap::new(),
        next_key: 0,
        banned: HashSet::new(),
        sole: vec![Sole::Nobody; layout_pieces],
        strikes: HashMap::new(),
        suspects: HashMap::new(),
        departed: HashMap::new(),
        events_tx,
        tracker: tracker.clone(),
        credit_wait: None,
        stats_tx,
        down: RateMeter::new(rate_window),
        up: RateMeter::new(rate_window),
        downloaded: 0,
        uploaded: 0,
        hash_failures: 0,
        rejected: 0,
        disk_error: None,
        disk_paused_until: None,
        flushed_complete: false,
        last_flush: Instant::now(),
        flushing: None,
        flushing_complete: false,
        want_fill: false,
        config,
    };
    let handle = TorrentHandle {
        info_hash: torrent.storage.metainfo().info().info_hash(),
        metainfo: Arc::clone(torrent.storage.metainfo()),
        max_requests: torrent.config.window.max(),
        commands: commands_tx,
        stats: stats_rx,
    };
    tracker.spawn(torrent.run(events_rx, storage_events, commands_rx, cancel));
    handle
}

impl Torrent {
    async fn run(
        mut self,
        mut events: mpsc::Receiver<FromSession>,
        mut storage_events: mpsc::Receiver<StorageEvent>,
        mut commands: mpsc::Receiver<Command>,
        cancel: CancellationToken,
    ) {
        let mut tick = tokio::time::interval(self.config.tick);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut stop_reply = None;
        if self.storage.is_complete() {
            self.flushed_complete = true;
        }
        loop {
            tokio::select! {
                biased;
                () = cancel.cancelled() => break,
                // Housekeeping and commands first, so a flood of peer
                // traffic cannot starve timeouts, rechokes or a stop.
                _ = tick.tick() => self.on_tick(),
                cmd = commands.recv() => match cmd {
                    Some(Command::AddPeer { peer_id, reader, writer, remote_max, opened_by_us }) => {
                        self.add_peer(peer_id, reader, writer, remote_max, opened_by_us);
                    }
                    Some(Command::Stop(reply)) => {
                        stop_reply = Some(reply);
                        break;
                    }
                    None => break,
                },
                // Then local work: disk completions, then peers.
                Some(ev) = storage_events.recv() => self.on_storage(ev),
                Some(ev) = events.recv() => {
                    self.on_session(ev);
                    // Take what else is waiting before deciding on requests,
                    // so they go out in batches rather than one per block.
                    for _ in 0..EVENT_BATCH {
                        match events.try_recv() {
                            Ok(ev) => self.on_session(ev),
                            Err(_) => break,
                        }
                    }
                }
                flushed = async { self.flushing.as_mut().expect("guarded").await }, if self.flushing.is_some() => {
                    let complete = std::mem::take(&mut self.flushing_complete);
                    self.flushing = None;
                    match flushed {
                        Ok(Ok(())) => self.flushed_complete = complete,
                        Ok(Err(e)) => self.disk_error = Some(e.with_causes()),
                        Err(e) => self.disk_error = Some(e.to_string()),
                    }
                }
                credit = async { self.credit_wait.as_mut().expect("guarded").await }, if self.credit_wait.is_some() => {
                    self.credit_wait = None;
                    // Recovered: this credit was only a wake-up call.
                    drop(credit);
                    self.want_fill = true;
                }
            }
            if std::mem::take(&mut self.want_fill) {
                self.fill_requests();
            }
        }
        let result = self.shutdown().await;
        if let Some(reply) = stop_reply {
            let _ = reply.send(result);
        }
    }

    async fn shutdown(&mut self) -> Result<(), String> {
        // Stop requesting: outstanding credits go back with their peers.
        for (_, peer) in self.peers.drain() {
            let _ = peer
                .commands
                .try_send(ToSession::Close("shutting down".into()));
        }
        self.credit_wait = None;
        let storage = Arc::clone(&self.storage);
        let closed = tokio::task::spawn_blocking(move || storage.close()).await;
        match closed {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(format!("{e:#}")),
            Err(e) => Err(format!("storage close failed: {e}")),
        }
    }

    fn mode(&self) -> Mode {
        if self.picker.is_complete() {
            Mode::Seeding
        } else {
            Mode::Leeching
        }
    }

    fn add_peer(
        &mut self,
        peer_id: PeerId,
        reader: PeerReader,
        mut writer: PeerWriter,
        remote_max: u32,
        opened_by_us: bool,
    ) {
        // Both sides may open a stream; both keep the one opened by the
        // lower peer id, so they always agree on which session survives.
        // A second stream from the same opener means the opener gave the
        // first one up (it restarted, or its end failed before ours
        // noticed): the new one replaces it.
        let local_id = self.local_id;
        let opener = |by_us: bool| if by_us { local_id } else { peer_id };
        let existing = self
            .peers
            .iter()
            .find(|(_, p)| p.peer_id == peer_id)
            .map(|(k, p)| (*k, p.opened_by_us));
        let mut replace = None;
        let refuse = if self.banned.contains(&peer_id) {
            Some("banned")
        } else if let Some((key, old_by_us)) = existing {
            if opened_by_us == old_by_us || opener(opened_by_us) < opener(old_by_us) {
                replace = Some(key);
                None
            } else {
                Some("already connected")
            }
        } else if self.peers.len() >= self.config.max_peers {
            Some("too many peers")
        } else {
            None
        };
        if let Some(key) = replace {
            // Both sides opened a stream at once: routine, not a warning.
            self.close_quietly(key, "replaced by the stream both sides keep");
        }
        if let Some(reason) = refuse {
            debug!(%peer_id, reason, "refusing peer");
            self.tracker.spawn(async move {
                let _ = writer.close().await;
            });
            return;
        }
        let key = PeerKey(self.next_key);
        self.next_key += 1;
        let capacity = self.config.window.max() as usize + 64;
        let (tx, rx) = mpsc::channel(capacity);
        // Our pieces first.
        for m in bitfield_messages(&self.storage.verified()) {
            let _ = tx.try_send(ToSession::Send(m));
        }
        let stats = Arc::new(SessionStats::default());
        let session = Session {
            key,
            reader,
            writer,
            storage: Arc::clone(&self.storage),
            to_torrent: self.events_tx.clone(),
            commands: rx,
            limits: SessionLimits {
                max_requests: self.config.window.max(),
                upload_window: self.config.upload_window,
                idle_timeout: self.config.idle_timeout,
            },
            stats: Arc::clone(&stats),
            up_limit: self.limits.up.clone(),
            down_limit: self.limits.down.clone(),
            cap: None,
            served: Bitfield::new(),
            last_read: tokio::time::Instant::now(),
            read_ahead: None,
            serve_at: None,
        };
        self.tracker.spawn(session.run());
        let now = Instant::now();
        info!(%peer_id, peer = key.0, "peer connected");
        self.peers.insert(
            key,
            Peer {
                peer_id,
                opened_by_us,
                commands: tx,
                stats,
                connected_at: now,
                am_choking: true,
                am_interested: false,
                peer_choking: true,
                peer_interested: false,
                has_bitfield: false,
                partial_bits: None,
                down: RateMeter::new(Duration::from_secs(20)),
                recent: RateMeter::new(RECENT_RATE_WINDOW),
                up: RateMeter::new(Duration::from_secs(20)),
                downloaded: 0,
                uploaded_seen: 0,
                last_block_at: None,
                window: RequestWindow::new(self.config.window.clone(), remote_max),
                outstanding: HashMap::new(),
                expired: std::collections::HashSet::new(),
                withdrawn: Vec::new(),
                decision: None,
                sole_pieces: 0,
                spread_pieces: 0,
                first_sole_at: None,
                cap: None,
            },
        );
        self.peers_changed();
    }

    fn send(&mut self, key: PeerKey, m: Message) {
        let full = self
            .peers
            .get(&key)
            .is_some_and(|p| p.commands.try_send(ToSession::Send(m)).is_err());
        if full {
            // Its channel holds a full window of requests and then some: the
            // session is not keeping up. Cut it loose rather than block.
            self.drop_peer(key, "session not keeping up");
        }
    }

    /// The peer id behind a session key, also for a session that ended
    /// (while it is remembered).
    fn peer_id_of(&self, key: PeerKey) -> Option<PeerId> {
        self.peers
            .get(&key)
            .map(|p| p.peer_id)
            .or_else(|| self.departed.get(&key).copied())
    }

    /// One failed piece held against `id`; `ban_after` of them ban it for
    /// the session (by peer id, so reconnecting does not help).
    fn strike(&mut self, id: PeerId) {
        if self.strikes.len() >= MAX_TRACKED_PEERS && !self.strikes.contains_key(&id) {
            return;
        }
        let n = self.strikes.entry(id).or_default();
        *n += 1;
        if *n >= self.config.ban_after && self.banned.insert(id) {
            let keys: Vec<PeerKey> = self
                .peers
                .iter()
                .filter(|(_, p)| p.peer_id == id)
                .map(|(k, _)| *k)
                .collect();
            if keys.is_empty() {
                warn!(peer_id = %id, "banned (already gone): sent corrupt data");
            }
            for key in keys {
                self.close_peer(key, "banned: sent corrupt data");
            }
        }
    }

    fn close_peer(&mut self, key: PeerKey, reason: &str) {
        if let Some(p) = self.peers.get(&key) {
            warn!(peer_id = %p.peer_id, reason, "disconnecting peer");
        }
        self.close_quietly(key, reason);
    }

    /// [`Self::close_peer`] for the normal course of things (logged at
    /// debug).
    fn close_quietly(&mut self, key: PeerKey, reason: &str) {
        if let Some(p) = self.peers.get(&key) {
            debug!(peer_id = %p.peer_id, reason, "closing session");
            let _ = p.commands.try_send(ToSession::Close(reason.to_owned()));
        }
        self.drop_peer(key, reason);
    }

    /// Forgets a peer: its requests go back to the picker (and their
    /// credits to the queue) at once.
    fn drop_peer(&mut self, key: PeerKey, reason: &str) {
        let Some(peer) = self.peers.remove(&key) else {
            return;
        };
        debug!(peer_id = %peer.peer_id, reason, "peer gone");
        // Its blocks may still be judged when their pieces complete.
        if self.departed.len() >= MAX_TRACKED_PEERS {
            self.departed.clear();
        }
        self.departed.insert(key, peer.peer_id);
        self.picker.peer_gone(key);
        drop(peer);
        self.peers_changed();
        self.want_fill = true;
    }

    fn on_session(&mut self, ev: FromSession) {
        match ev {
            FromSession::Closed(key, reason) => self.drop_peer(key, &reason),
            FromSession::Served(key, piece) => self.on_served(key, piece),
            FromSession::Message(key, m) => {
                if self.peers.contains_key(&key)
                    && let Err(reason) = self.on_message(key, m)
                {
                    self.close_peer(key, &reason);
                }
            }
        }
    }

    /// We sent `key` its first block of `piece`.
    fn on_served(&mut self, key: PeerKey, piece: u32) {
        // A piece some peer of ours already holds may reach others from
        // there: nobody's credit (a leecher's pieces mostly; a seeder's
        // fresh ones are sole).
        let elsewhere = self
            .storage
            .layout()
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
                    p.first_sole_at.get_or_insert_with(Instant::now);
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

    fn on_message(&mut self, key: PeerKey, m: Message) -> Result<(), String> {
        let num_pieces = self.storage.layout().num_pieces() as usize;
        match m {
            Message::Bitfield { first_piece, bits } => {
                let peer = self.peers.get_mut(&key).expect("checked");
                if peer.has_bitfield {
                    return Err("a second bitfield".into());
                }
                let acc = peer.partial_bits.get_or_insert_with(Bitfield::new);
                if first_piece as usize != acc.len()
                    || acc.len() + bits.len() * 8 > num_pieces.div_ceil(8) * 8
                {
                    return Err(format!(
                        "bitfield chunk at piece {first_piece} does not fit"
                    ));
                }
                acc.extend_from_raw_slice(&bits);
                if acc.len() >= num_pieces {
                    let mut all = peer.partial_bits.take().expect("just filled");
                    if all[num_pieces..].any() {
                        return Err("bitfield has bits set past the last piece".into());
                    }
                    all.truncate(num_pieces);
                    self.set_bitfield(key, all)?;
                }
            }
            Message::HaveAll => self.set_bitfield(key, Bitfield::repeat(true, num_pieces))?,
            Message::HaveNone => self.set_bitfield(key, Bitfield::repeat(false, num_pieces))?,
            Message::Have(i) => {
                let piece = self
                    .storage
                    .layout()
                    .piece(i)
                    .ok_or_else(|| format!("have {i}: no such piece"))?;
                self.picker.peer_have(key, piece);
                self.credit_spread(key, piece.get());
                self.update_interest(key);
            }
            Message::Interested | Message::NotInterested => {
                let peer = self.peers.get_mut(&key).expect("checked");
                peer.peer_interested = m == Message::Interested;
                self.peers_changed();
            }
            Message::Choke => {
                self.peers.get_mut(&key).expect("checked").peer_choking = true;
            }
            Message::Unchoke => {
                self.peers.get_mut(&key).expect("checked").peer_choking = false;
                self.want_fill = true;
            }
            Message::Piece {
                piece,
                offset,
                data,
            } => self.on_piece(key, piece, offset, data)?,
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
                            debug!(peer = ?key, piece = %block.piece(), "peer refused a piece it claimed");
                            if let Some(p) = self.peers.get_mut(&key) {
                                p.withdrawn.push((block.piece(), Instant::now()));
                            }
                            self.update_interest(key);
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
            // Served by the session itself.
            Message::Request(_)
            | Message::Cancel(_)
            | Message::KeepAlive
            | Message::Handshake { .. } => {}
        }
        Ok(())
    }

    fn block_of(&self, spec: BlockSpec) -> Option<BlockRef> {
        self.storage
            .layout()
            .block_at(spec.piece, spec.offset, spec.len)
    }

    fn set_bitfield(&mut self, key: PeerKey, bits: Bitfield) -> Result<(), String> {
        let peer = self.peers.get_mut(&key).expect("checked");
        if peer.has_bitfield {
            return Err("a second bitfield".into());
        }
        peer.has_bitfield = true;
        self.picker
            .peer_bitfield(key, bits)
            .map_err(|e| e.to_string())?;
        self.update_interest(key);
        Ok(())
    }

    fn update_interest(&mut self, key: PeerKey) {
        let want = self.picker.wants_from(key);
        let Some(peer) = self.peers.get_mut(&key) else {
            return;
        };
        if want != peer.am_interested {
            peer.am_interested = want;
            self.send(
                key,
                if want {
                    Message::Interested
                } else {
                    Message::NotInterested
                },
            );
            self.peers_changed();
        }
        if want {
            self.want_fill = true;
        }
    }

    fn on_piece(
        &mut self,
        key: PeerKey,
        piece: u32,
        offset: u32,
        data: bytes::Bytes,
    ) -> Result<(), String> {
        let block = self
            .storage
            .layout()
            .block_at(piece, offset, data.len() as u32)
            .ok_or_else(|| {
                format!(
                    "piece {piece} offset {offset} len {}: no such block",
                    data.len()
                )
            })?;
        let now = Instant::now();
        let len = data.len() as u64;
        let peer = self.peers.get_mut(&key).expect("checked");
        let Some((credit, requested_at)) = peer.outstanding.remove(&block) else {
            if peer.expired.remove(&block) {
                return self.on_late_block(key, block, data);
            }
            // Never asked of this peer (or cancelled): no credit, dropped.
            debug!(peer = key.0, ?block, "unrequested block dropped");
            return Ok(());
        };
        peer.down.record(now, len);
        peer.recent.record(now, len);
        peer.downloaded += len;
        peer.last_block_at = Some(now);
        peer.window
            .on_block(now.saturating_duration_since(requested_at));
        self.down.record(now, len);
        self.downloaded += len;
        match self.picker.block_received(key, block) {
            Received::Accepted { cancel } => {
                match self.storage.submit(credit, block, data) {
                    Ok(_) => {}
                    Err(e) => warn!(?block, error = %e, "block not queued"),
                }
                let spec = self.spec(block);
                for other in cancel {
                    if let Some(p) = self.peers.get_mut(&other) {
                        p.outstanding.remove(&block);
                    }
                    self.send(other, Message::Cancel(spec));
                }
            }
            Received::Unrequested => drop(credit),
        }
        self.want_fill = true;
        Ok(())
    }

    /// A block whose request had ended (timed out, cancelled). Taken if
    /// still wanted and a credit is free at once; dropped otherwise.
    fn on_late_block(
        &mut self,
        key: PeerKey,
        block: BlockRef,
        data: bytes::Bytes,
    ) -> Result<(), String> {
        let len = data.len() as u64;
        let Ok(Some(credit)) = self.storage.queue().try_reserve(len as u32) else {
            debug!(peer = key.0, ?block, "late block dropped: no credit");
            return Ok(());
        };
        match self.picker.late_block(key, block) {
            Received::Accepted { cancel } => {
                let now = Instant::now();
                if let Some(peer) = self.peers.get_mut(&key) {
                    peer.down.record(now, len);
                    peer.recent.record(now, len);
                    peer.downloaded += len;
                    peer.last_block_at = Some(now);
                }
                self.down.record(now, len);
                self.downloaded += len;
                if let Err(e) = self.storage.submit(credit, block, data) {
                    warn!(?block, error = %e, "block not queued");
                }
                let spec = self.spec(block);
                for other in cancel {
                    if let Some(p) = self.peers.get_mut(&other) {
                        p.outstanding.remove(&block);
                    }
                    self.send(other, Message::Cancel(spec));
                }
                self.want_fill = true;
            }
            Received::Unrequested => {
                debug!(peer = key.0, ?block, "unrequested block dropped");
                drop(credit);
            }
        }
        Ok(())
    }

    fn spec(&self, block: BlockRef) -> BlockSpec {
        let layout = self.storage.layout();
        BlockSpec {
            piece: block.piece().get(),
            offset: layout.block_offset(block),
            len: layout.block_len(block),
        }
    }

    /// Issues requests while credits and windows allow, one per peer per
    /// round, so every unchoked peer gets its share of the credits.
    fn fill_requests(&mut self) {
        if self.credit_wait.is_some()
            || self.picker.is_complete()
            || self.disk_paused_until.is_some()
        {
            return;
        }
        let now = Instant::now();
        let mut keys: Vec<PeerKey> = self
            .peers
            .iter()
            .filter(|(_, p)| !p.peer_choking && p.am_interested)
            .map(|(k, _)| *k)
            .collect();
        keys.sort();
        let queue = self.storage.queue().clone();
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
                let len = self.storage.layout().block_len(block);
                match queue.try_reserve(len) {
                    Ok(Some(credit)) => {
                        let peer = self.peers.get_mut(&key).expect("listed");
                        peer.outstanding.insert(block, (credit, now));
                        let spec = self.spec(block);
                        self.send(key, Message::Request(spec));
                        // A session that cannot take the request was dropped.
                        if self.peers.contains_key(&key) {
                            still.push(key);
                        }
                    }
                    Ok(None) => {
                        // Disk queue full: stop, and wake up on recovery.
                        self.picker.request_failed(key, block);
                        let q = queue.clone();
                        self.credit_wait =
                            Some(Box::pin(async move { q.reserve(BLOCK_SIZE).await }));
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

    fn on_storage(&mut self, ev: StorageEvent) {
        match ev {
            StorageEvent::PieceVerified(piece) => {
                // A write went through: whatever filled the disk is over.
                self.disk_error = None;
                self.picker.piece_verified(piece);
                let keys: Vec<PeerKey> = self.peers.keys().copied().collect();
                for key in keys {
                    self.send(key, Message::Have(piece.get()));
                    self.update_interest(key);
                }
                if self.picker.is_complete() {
                    info!("download complete");
                    self.peers_changed();
                }
            }
            StorageEvent::HashFailed { piece, leaves } => {
                self.hash_failures += 1;
                let keys = self.picker.hash_failed(piece);
                let received = keys.len();
                let senders: Vec<(u32, PeerId)> = keys
                    .into_iter()
                    .filter_map(|(i, key)| Some((i, self.peer_id_of(key)?)))
                    .collect();
                let first = senders.first().map(|(_, id)| *id);
                // A sender we can no longer name may have been the liar:
                // then nobody is blamed alone.
                let sole = first
                    .filter(|id| senders.len() == received && senders.iter().all(|(_, o)| o == id));
                if let Some(only) = sole {
                    // One sender: the bad data was its.
                    self.strike(only);
                } else {
                    // Several: judged once the piece verifies, by which
                    // blocks differed (smart ban). Blaming them all would
                    // ban honest peers that shared a piece with a liar.
                    let bound = self.storage.layout().blocks_in_piece(piece) as usize * 4;
                    let suspects = self.suspects.entry(piece).or_default();
                    for (i, id) in senders {
                        if let Some(leaf) = leaves.get(i as usize) {
                            suspects.push((id, i, *leaf));
                        }
                    }
                    let excess = suspects.len().saturating_sub(bound);
                    suspects.drain(..excess);
                }
                self.want_fill = true;
            }
            StorageEvent::GoodLeaves { piece, leaves } => {
                let mut liars: Vec<PeerId> = self
                    .suspects
                    .remove(&piece)
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|(_, i, leaf)| leaves.get(*i as usize) != Some(leaf))
                    .map(|(id, _, _)| id)
                    .collect();
                liars.sort();
                liars.dedup();
                for id in liars {
                    self.strike(id);
                }
            }
            StorageEvent::PieceLost(piece) => {
                // Our copy changed on disk: no longer ours to offer (its
                // requests are rejected), fetched again like any other.
                self.picker.piece_lost(piece);
                self.flushed_complete = false;
                self.flushing_complete = false;
                let keys: Vec<PeerKey> = self.peers.keys().copied().collect();
                for key in keys {
                    self.update_interest(key);
                }
                self.peers_changed();
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
                self.disk_paused_until = Some(Instant::now() + DISK_RETRY);
                self.disk_error = Some(error);
            }
        }
    }

    fn snapshots(&mut self, now: Instant) -> Vec<PeerSnapshot> {
        let mut keys: Vec<PeerKey> = self.peers.keys().copied().collect();
        keys.sort();
        keys.into_iter()
            .map(|key| {
                let p = self.peers.get_mut(&key).expect("listed");
                PeerSnapshot {
                    key,
                    interested: p.peer_interested,
                    we_are_interested: p.am_interested,
                    connected_at: p.connected_at,
                    down_rate: p.down.rate(now),
                    up_rate: p.up.rate(now),
                    last_block_at: p.last_block_at,
                    uploaded: p.uploaded_seen,
                    sole_pieces: p.sole_pieces,
                    spread_pieces: p.spread_pieces,
                    first_sole_at: p.first_sole_at,
                }
            })
            .collect()
    }

    fn apply(&mut self, decisions: Vec<Decision>) {
        let mut lost = Vec::new();
        let up_limit = self.limits.up.as_ref().map(|l| l.rate());
        for d in decisions {
            let Some(peer) = self.peers.get_mut(&d.peer) else {
                continue;
            };
            let choke = !d.unchoke;
            let changed = peer.am_choking != choke;
            peer.am_choking = choke;
            let key = d.peer;
            // A cap is a share of our upload limit; without one, no cap.
            let cap = d
                .cap
                .zip(up_limit)
                // At least a few blocks a second, so the capped session's
                // batches (waited out before it reads again) stay short.
                .map(|(share, rate)| ((share * rate as f64) as u64).max(MIN_CAP));
            let cap_changed = peer.cap != cap;
            peer.cap = cap;
            peer.decision = Some(d);
            // The session must see every change, or its view and ours drift.
            if changed && peer.commands.try_send(ToSession::Choke(choke)).is_err() {
                lost.push(key);
            }
            if cap_changed && peer.commands.try_send(ToSession::Cap(cap)).is_err() {
                lost.push(key);
            }
        }
        for key in lost {
            self.drop_peer(key, "session not keeping up");
        }
    }

    /// A peer joined, left or changed interest: free and fill slots now.
    fn peers_changed(&mut self) {
        let now = Instant::now();
        let mode = self.mode();
        let snaps = self.snapshots(now);
        let Some(choker) = self.choker.as_mut() else {
            return;
        };
        let decisions = choker.on_peers_changed(now, mode, &snaps, &mut self.rng);
        self.apply(decisions);
    }

    fn on_tick(&mut self) {
        let now = Instant::now();
        if self.disk_paused_until.is_some_and(|t| now >= t) {
            self.disk_paused_until = None;
            self.want_fill = true;
        }
        // Upload counters from the sessions.
        for p in self.peers.values_mut() {
            let total = p.stats.uploaded.load(Ordering::Relaxed);
            let delta = total - p.uploaded_seen;
            p.uploaded_seen = total;
            p.up.record(now, delta);
            self.up.record(now, delta);
            self.uploaded += delta;
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
        for (key, piece) in restored {
            self.picker.peer_have(key, piece);
            self.update_interest(key);
        }
        // Timeouts.
        let mut expired = Vec::new();
        for (key, p) in &mut self.peers {
            let timeout = p.window.timeout();
            let late: Vec<BlockRef> = p
                .outstanding
                .iter()
                .filter(|(_, (_, at))| now.saturating_duration_since(*at) > timeout)
                .map(|(b, _)| *b)
                .collect();
            if !late.is_empty() {
                p.window.on_timeout();
            }
            for b in late {
                p.outstanding.remove(&b);
                if p.expired.len() >= self.config.window.max() as usize {
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
        let mode = self.mode();
        if let Some(due) = self.choker.as_ref().map(|c| c.next_rechoke())
            && due.is_none_or(|d| now >= d)
        {
            let snaps = self.snapshots(now);
            let choker = self.choker.as_mut().expect("checked");
            let decisions = choker.rechoke(now, mode, &snaps, &mut self.rng);
            self.apply(decisions);
        }
        self.want_fill = true;
        // Durability: flush when complete, and every flush interval.
        let complete = self.picker.is_complete();
        if (complete && !self.flushed_complete)
            || now.duration_since(self.last_flush) >= self.config.flush_interval
        {
            // fsync can take seconds: it runs beside this loop, which keeps
            // serving peers; its result arrives in the select above.
            if self.flushing.is_none() {
                self.last_flush = now;
                let storage = Arc::clone(&self.storage);
                self.flushing = Some(tokio::task::spawn_blocking(move || storage.flush()));
                self.flushing_complete = complete;
            }
        }
        self.publish(now);
    }

    fn publish(&mut self, now: Instant) {
        let mut peers: Vec<PeerStats> = Vec::with_capacity(self.peers.len());
        for (key, p) in &mut self.peers {
            let reason = p.decision.as_ref().map(|d| &d.reason);
            peers.push(PeerStats {
                peer_id: p.peer_id.to_string(),
                am_choking: p.am_choking,
                am_interested: p.am_interested,
                peer_choking: p.peer_choking,
                peer_interested: p.peer_interested,
                optimistic: p.decision.as_ref().is_some_and(Decision::is_optimistic),
                snubbed: reason.is_some_and(|r| r.code() == "snubbed"),
                choke_reason: match (reason, p.cap) {
                    (None, _) => "not yet decided".into(),
                    (Some(r), None) => r.to_string(),
                    (Some(r), Some(cap)) => format!("{r}; passes nothing on, capped at {cap} B/s"),
                },
                choke_reason_code: reason.map_or("undecided", |r| r.code()).to_owned(),
                down_rate: p.down.rate(now),
                up_rate: p.up.rate(now),
                downloaded: p.downloaded,
                uploaded: p.uploaded_seen,
                outstanding_requests: p.outstanding.len(),
                request_window: p.window.size(p.recent.rate(now)),
                upload_queue: p.stats.upload_queue.load(Ordering::Relaxed),
                upload_window_bytes: self.config.upload_window,
                upload_buffered_bytes: p.stats.upload_buffered.load(Ordering::Relaxed),
                upload_cap: p.cap,
                sole_pieces: p.sole_pieces,
                spread_pieces: p.spread_pieces,
                pieces: self.picker.peer_has(*key).map_or(0, |b| b.count_ones()),
                connected_seconds: now.saturating_duration_since(p.connected_at).as_secs_f64(),
            });
        }

        let verified = self.storage.verified_count();
        let (down_rate, up_rate) = (self.down.rate(now), self.up.rate(now));
        self.stats_tx.send_modify(|s| {
            s.verified_pieces = verified;
            s.complete = self.flushed_complete;
            s.down_rate = down_rate;
            s.up_rate = up_rate;
            s.downloaded = self.downloaded;
            s.uploaded = self.uploaded;
            s.hash_failures = self.hash_failures;
            s.requests_rejected = self.rejected;
            s.read_checks = self.storage.whole_checks();
            s.banned_peers = self.banned.len();
            s.disk = self.storage.queue_stats();
            s.disk_error.clone_from(&self.disk_error);
            s.peers = peers;
        });
    }
}

/// Our pieces as the first messages of a session.
fn bitfield_messages(have: &Bitfield) -> Vec<Message> {
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
            bits: bytes::Bytes::copy_from_slice(chunk),
        })
        .collect()
}
