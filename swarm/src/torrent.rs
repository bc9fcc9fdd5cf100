//! The tokio driver of one torrent: a task that feeds its
//! [`TorrentCore`] from peer sessions, the storage writer and the clock,
//! and carries out what the core decides.
//!
//! Sessions (one task per peer, see `session`) own the streams and report
//! what peers say; the core decides what to request, from whom, and who
//! is unchoked (see [`crate::torrent_core`] for the rules). This task:
//!
//! - hands each session's messages, first-block and upload counts to the
//!   core, a batch at a time, then carries out its actions (messages and
//!   choke changes to sessions, blocks to storage);
//! - waits on the write queue's recovery when the core asks
//!   ([`Action::WaitForCredits`]), and runs flushes on the blocking pool;
//! - publishes the torrent's numbers every tick, and which peers have a
//!   session whenever one opens or closes.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use libp2p::PeerId;
use serde::Serialize;
use sluice_choke::PeerKey;
use sluice_storage::{
    BLOCK_SIZE, Bitfield, Credit, InfoHash, MetaVersion, Metainfo, QueueStats, ReserveError,
    Storage, StorageEvent, WriteQueue,
};
use tokio::io::{ReadHalf, WriteHalf};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::compat::Compat;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use crate::bt::BtRemote;
use crate::bt::wire::{BtCodec, Handshake};
use crate::framed::{FrameReader, FrameWriter};
use crate::ratelimit::{Limiters, RateLimiter, UNLIMITED};
use crate::session::{FromSession, Session, SessionLimits, SessionStats, ToSession};
use crate::torrent_core::{Action, TorrentCore};
pub use crate::torrent_core::{ChokerChoice, PeerStats, TorrentConfig};
use crate::wire::Message;

/// Session events handled per loop turn before the core's actions are
/// carried out (requests then go out in batches, not one per block).
const EVENT_BATCH: usize = 64;

/// The stream type of a piece-protocol session.
pub type PeerStream = Compat<libp2p::Stream>;
/// A session's read half, with whatever it buffered during the handshake.
pub type PeerReader = FrameReader<ReadHalf<PeerStream>>;
/// A session's write half.
pub type PeerWriter = FrameWriter<WriteHalf<PeerStream>>;

/// A peer as the torrent knows it, whatever its transport: what strikes,
/// bans and duplicate sessions go by.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub enum Remote {
    Libp2p(PeerId),
    Bt(BtRemote),
}

impl std::fmt::Display for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Remote::Libp2p(p) => p.fmt(f),
            Remote::Bt(b) => b.fmt(f),
        }
    }
}

impl Remote {
    fn transport(&self) -> Transport {
        match self {
            Remote::Libp2p(_) => Transport::Libp2p,
            Remote::Bt(_) => Transport::Bt,
        }
    }
}

/// Which wire a peer speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// `/sluice/pieces/1` over a libp2p stream.
    #[default]
    Libp2p,
    /// The BitTorrent peer wire over TCP.
    Bt,
}

/// Requests a BitTorrent peer is assumed to queue until its extension
/// handshake says (`reqq`; libtorrent's default is 500, older clients
/// 250).
const BT_DEFAULT_REQQ: u32 = 250;

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
    /// Seconds from the torrent's start to the first block it received.
    pub first_block_after: Option<f64>,
    /// Shared, so that reading the stats does not copy every row.
    pub peers: Arc<[PeerStats]>,
}

impl TorrentStats {
    /// Bytes not verified yet (pieces are counted whole; the last one may
    /// be short, so this errs high by less than a piece).
    pub fn left(&self) -> u64 {
        let have = u64::from(self.verified_pieces) * u64::from(self.piece_length);
        self.size.saturating_sub(have)
    }

    /// When the rest arrives at the current download rate; `None` when
    /// complete or while nothing arrives.
    pub fn eta(&self) -> Option<std::time::Duration> {
        if self.complete || self.down_rate < 1.0 {
            return None;
        }
        std::time::Duration::try_from_secs_f64(self.left() as f64 / self.down_rate).ok()
    }
}

enum Command {
    AddPeer {
        peer_id: PeerId,
        reader: PeerReader,
        writer: PeerWriter,
        remote_max: u32,
        opened_by_us: bool,
    },
    AddBtPeer {
        stream: tokio::net::TcpStream,
        addr: std::net::SocketAddr,
        theirs: Handshake,
        ours: Handshake,
        opened_by_us: bool,
    },
    /// Upload slots from now on (the choker rechokes at once).
    SetSlots(u32),
    Stop(oneshot::Sender<Result<(), String>>),
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Command::AddPeer { peer_id, .. } => write!(f, "AddPeer({peer_id})"),
            Command::AddBtPeer { addr, .. } => write!(f, "AddBtPeer({addr})"),
            Command::SetSlots(n) => write!(f, "SetSlots({n})"),
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
    sessions: watch::Receiver<Arc<HashSet<PeerId>>>,
    own: OwnLimits,
}

/// A torrent's own rate limits, under its node's (unlimited until set).
#[derive(Debug, Clone)]
struct OwnLimits {
    up: Arc<RateLimiter>,
    down: Arc<RateLimiter>,
    /// Upload slots now.
    slots: Arc<std::sync::atomic::AtomicU32>,
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

    /// The requests a peer may queue with us, advertised in handshakes
    /// (`TorrentConfig::peer_requests`).
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

    /// The peers with a session now: updated as each session opens or
    /// closes (not once per tick like [`Self::stats`]).
    pub fn sessions(&self) -> Arc<HashSet<PeerId>> {
        Arc::clone(&self.sessions.borrow())
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

    /// Hands over a BitTorrent connection after the handshakes (theirs
    /// named this torrent; ours is what we sent). `opened_by_us`: we
    /// dialed it.
    ///
    /// Cancel-safe.
    pub async fn add_bt_peer(
        &self,
        stream: tokio::net::TcpStream,
        addr: std::net::SocketAddr,
        theirs: Handshake,
        ours: Handshake,
        opened_by_us: bool,
    ) {
        let cmd = Command::AddBtPeer {
            stream,
            addr,
            theirs,
            ours,
            opened_by_us,
        };
        let _ = self.commands.send(cmd).await;
    }

    /// The 20 bytes we name this torrent by in BitTorrent handshakes we
    /// open: a hybrid's v1 info-hash (v1-only clients know no other), else
    /// the v2 info-hash truncated (BEP 52).
    pub fn bt_info_hash(&self) -> [u8; 20] {
        self.metainfo
            .info()
            .v1_info_hash()
            .unwrap_or_else(|| bt_info_hash(self.info_hash))
    }

    /// Every 20-byte name BitTorrent peers and trackers may know this
    /// torrent by: a hybrid's v1 info-hash and the truncated v2 one.
    pub fn bt_info_hashes(&self) -> Vec<[u8; 20]> {
        let v2 = bt_info_hash(self.info_hash);
        match self.metainfo.info().v1_info_hash() {
            Some(v1) if v1 != v2 => vec![v1, v2],
            Some(v1) => vec![v1],
            None => vec![v2],
        }
    }

    /// Changes this torrent's own upload and download limits while it
    /// runs (bytes/s; `None`: only the node's hold).
    pub fn set_rates(&self, up: Option<u64>, down: Option<u64>) {
        self.own.up.set_rate(up.unwrap_or(UNLIMITED));
        self.own.down.set_rate(down.unwrap_or(UNLIMITED));
    }

    /// This torrent's own upload and download limits (`None`: none).
    pub fn rates(&self) -> (Option<u64>, Option<u64>) {
        let of = |l: &RateLimiter| Some(l.rate()).filter(|r| *r != UNLIMITED);
        (of(&self.own.up), of(&self.own.down))
    }

    /// Upload slots now (one of them optimistic).
    pub fn upload_slots(&self) -> u32 {
        self.own.slots.load(Ordering::Relaxed)
    }

    /// Changes the upload slots while it runs (at least 1); the choker
    /// rechokes at its next tick.
    ///
    /// Cancel-safe.
    pub async fn set_upload_slots(&self, slots: u32) {
        let slots = slots.max(1);
        self.own.slots.store(slots, Ordering::Relaxed);
        let _ = self.commands.send(Command::SetSlots(slots)).await;
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

/// The 20 bytes a BitTorrent handshake names a v2 torrent by (BEP 52:
/// the SHA-256 info-hash truncated).
pub fn bt_info_hash(ih: InfoHash) -> [u8; 20] {
    let mut out = [0u8; 20];
    out.copy_from_slice(&ih.0[..20]);
    out
}

/// Node-wide settings a torrent needs.
#[derive(Debug, Clone, Default)]
pub struct SharedLimits {
    pub up: Option<Arc<RateLimiter>>,
    pub down: Option<Arc<RateLimiter>>,
}

impl SharedLimits {
    /// What a torrent's bytes pass: these and the torrent's own.
    fn with_own(&self, own: &OwnLimits) -> (Limiters, Limiters) {
        (
            Limiters::new(self.up.clone(), Some(Arc::clone(&own.up))),
            Limiters::new(self.down.clone(), Some(Arc::clone(&own.down))),
        )
    }
}

type CreditWait = Pin<Box<dyn Future<Output = Result<Credit, ReserveError>> + Send>>;
type Flushing = tokio::task::JoinHandle<Result<(), sluice_storage::StorageError>>;

/// The driver's end of one session.
struct Link {
    id: Remote,
    /// A BitTorrent peer's address (a libp2p peer's is the swarm's).
    addr: Option<std::net::SocketAddr>,
    commands: mpsc::Sender<ToSession>,
    stats: Arc<SessionStats>,
    /// Block bytes the session had written when the core last heard.
    uploaded_seen: u64,
}

struct Driver {
    core: TorrentCore<Remote, WriteQueue>,
    /// The layout BitTorrent codecs share (made for the first such peer).
    layout: Option<Arc<sluice_storage::Layout>>,
    storage: Arc<Storage>,
    config: TorrentConfig,
    /// What this torrent's sessions' bytes pass: the node's limiters and
    /// its own.
    up: Limiters,
    down: Limiters,
    links: HashMap<PeerKey, Link>,
    events_tx: mpsc::Sender<FromSession>,
    tracker: TaskTracker,
    credit_wait: Option<CreditWait>,
    flushing: Option<Flushing>,
    stats_tx: watch::Sender<TorrentStats>,
    sessions_tx: watch::Sender<Arc<HashSet<PeerId>>>,
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
    let now = Instant::now();
    let mut core = TorrentCore::new(
        Remote::Libp2p(local_id),
        storage.layout().clone(),
        storage.verified(),
        config.clone(),
        storage.queue().clone(),
        now,
    );
    let own = OwnLimits {
        up: Arc::new(RateLimiter::new(UNLIMITED)),
        down: Arc::new(RateLimiter::new(UNLIMITED)),
        slots: Arc::new(std::sync::atomic::AtomicU32::new(config.upload_slots())),
    };
    let (up, down) = limits.with_own(&own);
    core.set_upload_limit(up.rate());
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
        first_block_after: None,
        peers: Arc::new([]),
    };
    let (stats_tx, stats_rx) = watch::channel(initial);
    let (sessions_tx, sessions_rx) = watch::channel(Arc::new(HashSet::new()));
    let handle = TorrentHandle {
        info_hash: info.info_hash(),
        metainfo: Arc::clone(storage.metainfo()),
        max_requests: config.peer_requests(),
        commands: commands_tx,
        stats: stats_rx,
        sessions: sessions_rx,
        own,
    };
    let driver = Driver {
        core,
        layout: None,
        storage,
        config,
        up,
        down,
        links: HashMap::new(),
        events_tx,
        tracker: tracker.clone(),
        credit_wait: None,
        flushing: None,
        stats_tx,
        sessions_tx,
    };
    tracker.spawn(driver.run(events_rx, storage_events, commands_rx, cancel));
    handle
}

impl Driver {
    async fn run(
        mut self,
        mut events: mpsc::Receiver<FromSession>,
        mut storage_events: mpsc::Receiver<StorageEvent>,
        mut commands: mpsc::Receiver<Command>,
        cancel: CancellationToken,
    ) {
        let mut stop_reply = None;
        // One timer, moved when the core's deadline moves (not a new one
        // per loop turn: the loop turns once per batch of blocks).
        let timer =
            tokio::time::sleep_until(tokio::time::Instant::from_std(self.core.poll_timeout()));
        tokio::pin!(timer);
        loop {
            let deadline = tokio::time::Instant::from_std(self.core.poll_timeout());
            if timer.deadline() != deadline {
                timer.as_mut().reset(deadline);
            }
            tokio::select! {
                biased;
                () = cancel.cancelled() => break,
                // Housekeeping and commands first, so a flood of peer
                // traffic cannot starve timeouts, rechokes or a stop.
                () = &mut timer => self.on_tick(),
                cmd = commands.recv() => match cmd {
                    Some(Command::AddPeer { peer_id, reader, writer, remote_max, opened_by_us }) => {
                        // What the storage found first (a piece lost, say),
                        // so the new peer hears what we hold now.
                        while let Ok(ev) = storage_events.try_recv() {
                            self.core.on_storage(Instant::now(), ev);
                        }
                        let id = Remote::Libp2p(peer_id);
                        if let Some((key, rx, stats)) = self.admit(id, None, remote_max, opened_by_us) {
                            self.spawn_session(key, reader, writer, rx, stats);
                        } else {
                            self.tracker.spawn(async move {
                                let mut writer = writer;
                                let _ = writer.close().await;
                            });
                        }
                    }
                    Some(Command::AddBtPeer { stream, addr, theirs, ours, opened_by_us }) => {
                        while let Ok(ev) = storage_events.try_recv() {
                            self.core.on_storage(Instant::now(), ev);
                        }
                        self.add_bt_peer(stream, addr, theirs, ours, opened_by_us);
                    }
                    Some(Command::SetSlots(slots)) => {
                        self.core.set_upload_slots(slots, Instant::now());
                    }
                    Some(Command::Stop(reply)) => {
                        stop_reply = Some(reply);
                        break;
                    }
                    None => break,
                },
                // Then local work: disk completions, then peers.
                Some(ev) = storage_events.recv() => self.core.on_storage(Instant::now(), ev),
                Some(ev) = events.recv() => {
                    self.on_session(ev);
                    // Take what else is waiting before the core tops up
                    // requests, so they go out in batches.
                    for _ in 0..EVENT_BATCH {
                        match events.try_recv() {
                            Ok(ev) => self.on_session(ev),
                            Err(_) => break,
                        }
                    }
                }
                flushed = async { self.flushing.as_mut().expect("guarded").await }, if self.flushing.is_some() => {
                    self.flushing = None;
                    let result = match flushed {
                        Ok(Ok(())) => Ok(()),
                        Ok(Err(e)) => Err(e.with_causes()),
                        Err(e) => Err(e.to_string()),
                    };
                    self.core.flushed(Instant::now(), result);
                }
                credit = async { self.credit_wait.as_mut().expect("guarded").await }, if self.credit_wait.is_some() => {
                    self.credit_wait = None;
                    // Recovered: this credit was only a wake-up call.
                    drop(credit);
                    self.core.credits_available(Instant::now());
                }
            }
            self.carry_out();
        }
        let result = self.shutdown().await;
        if let Some(reply) = stop_reply {
            let _ = reply.send(result);
        }
    }

    async fn shutdown(&mut self) -> Result<(), String> {
        // Stop requesting: outstanding credits go back with their peers;
        // blocks already taken still go to storage.
        self.core.shutdown();
        self.carry_out();
        self.credit_wait = None;
        let storage = Arc::clone(&self.storage);
        let closed = tokio::task::spawn_blocking(move || storage.close()).await;
        match closed {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(format!("{e:#}")),
            Err(e) => Err(format!("storage close failed: {e}")),
        }
    }

    /// Asks the core to take a peer; on success, its link is made (the
    /// session is spawned by the caller with the receiver).
    fn admit(
        &mut self,
        id: Remote,
        local: Option<Remote>,
        remote_max: u32,
        opened_by_us: bool,
    ) -> Option<(PeerKey, mpsc::Receiver<ToSession>, Arc<SessionStats>)> {
        let now = Instant::now();
        let opened = match local {
            Some(local) => self
                .core
                .peer_opened_as(now, id, local, opened_by_us, remote_max),
            None => self.core.peer_opened(now, id, opened_by_us, remote_max),
        };
        let key = match opened {
            Ok(key) => key,
            Err(refusal) => {
                debug!(peer_id = %id, %refusal, "refusing peer");
                return None;
            }
        };
        // Its channel holds a full window of requests and then some; one
        // that fills means the session is not keeping up.
        let capacity = self.config.max_requests() as usize + 64;
        let (tx, rx) = mpsc::channel(capacity);
        let stats = Arc::new(SessionStats::default());
        debug!(peer_id = %id, peer = key.0, "session started");
        self.links.insert(
            key,
            Link {
                id,
                addr: None,
                commands: tx,
                stats: Arc::clone(&stats),
                uploaded_seen: 0,
            },
        );
        self.sessions_changed();
        Some((key, rx, stats))
    }

    fn spawn_session<R, W, C>(
        &mut self,
        key: PeerKey,
        reader: FrameReader<R, C>,
        writer: FrameWriter<W, C>,
        commands: mpsc::Receiver<ToSession>,
        stats: Arc<SessionStats>,
    ) where
        R: tokio::io::AsyncRead + Unpin + Send + 'static,
        W: tokio::io::AsyncWrite + Unpin + Send + 'static,
        C: crate::codec::Codec,
    {
        let session = Session {
            key,
            reader,
            writer,
            storage: Arc::clone(&self.storage),
            to_torrent: self.events_tx.clone(),
            commands,
            limits: SessionLimits {
                max_requests: self.config.peer_requests(),
                upload_window: self.config.upload_window,
                idle_timeout: self.config.idle_timeout,
            },
            stats,
            up_limit: self.up.clone(),
            down_limit: self.down.clone(),
            cap: None,
            served: Bitfield::new(),
            last_read: tokio::time::Instant::now(),
            read_ahead: None,
            serve_at: None,
            ut_metadata: None,
            metadata_sent: 0,
        };
        self.tracker.spawn(session.run());
    }

    fn add_bt_peer(
        &mut self,
        stream: tokio::net::TcpStream,
        addr: std::net::SocketAddr,
        theirs: Handshake,
        ours: Handshake,
        opened_by_us: bool,
    ) {
        let id = Remote::Bt(BtRemote {
            ip: addr.ip(),
            peer_id: theirs.peer_id,
        });
        // When both ends dial each other, both keep the connection opened
        // by the lower peer id: the tie is broken by BitTorrent peer ids,
        // which both ends know (the address part is the same on our side).
        let local = Remote::Bt(BtRemote {
            ip: addr.ip(),
            peer_id: ours.peer_id,
        });
        let Some((key, rx, stats)) = self.admit(id, Some(local), BT_DEFAULT_REQQ, opened_by_us)
        else {
            return; // dropping the stream closes it
        };
        if let Some(link) = self.links.get_mut(&key) {
            link.addr = Some(addr);
        }
        if !theirs.fast() {
            self.core.set_choke_discards(key);
        }
        let layout = Arc::clone(
            self.layout
                .get_or_insert_with(|| Arc::new(self.storage.layout().clone())),
        );
        // libtorrent pads every file of a v2 torrent to a piece on the
        // wire, and a hybrid has pad files but when it has one file; a v1
        // torrent's only short block is its very last.
        let info = self.storage.metainfo().info();
        let pad = match info.version() {
            MetaVersion::V2 => true,
            MetaVersion::Hybrid => info.files().len() > 1,
            MetaVersion::V1 => false,
        };
        // Older libtorrent (before 2.0.4) writes no pad file after a
        // hybrid's last file: its last block then travels exact.
        let pad_last = pad && (info.version() == MetaVersion::V2 || info.v1_tail_padded());
        let codec = BtCodec::new(layout, pad, &theirs)
            .with_unpadded_tail(!pad_last)
            .with_metadata_size(info.raw().len());
        let (r, w) = stream.into_split();
        let reader = FrameReader::with_codec(r, codec.clone(), bytes::BytesMut::new());
        let writer = FrameWriter::with_codec(w, codec);
        self.spawn_session(key, reader, writer, rx, stats);
        // Our bitfield (queued by the core) goes first, then our extension
        // handshake: BEP 6 wants the bitfield straight after the handshake.
        self.carry_out();
        if theirs.extended() {
            self.tell(
                key,
                ToSession::Send(Message::MaxRequests(self.config.peer_requests())),
            );
        }
    }

    fn on_session(&mut self, ev: FromSession) {
        let now = Instant::now();
        match ev {
            FromSession::Closed(key, end) => {
                debug!(peer = key.0, reason = %end, "session ended");
                if self.links.remove(&key).is_some() {
                    self.sessions_changed();
                }
                self.core.peer_closed(now, key);
            }
            FromSession::Served(key, piece) => self.core.on_served(now, key, piece),
            FromSession::Message(key, m) => self.core.on_message(now, key, m),
        }
    }

    /// Carries out what the core decided, until it has nothing more.
    fn carry_out(&mut self) {
        let now = Instant::now();
        while let Some(action) = self.core.poll_action(now) {
            match action {
                Action::Send { peer, message } => self.tell(peer, ToSession::Send(message)),
                Action::Haves { peer, pieces } => self.tell(peer, ToSession::Haves(pieces)),
                Action::Choke { peer, choke } => self.tell(peer, ToSession::Choke(choke)),
                Action::Cap { peer, rate } => self.tell(peer, ToSession::Cap(rate)),
                Action::Close { peer, reason } => {
                    if let Some(link) = self.links.remove(&peer) {
                        let _ = link.commands.try_send(ToSession::Close(reason));
                        self.sessions_changed();
                    }
                }
                Action::Submit {
                    block,
                    data,
                    credit,
                } => {
                    if let Err(e) = self.storage.submit(credit, block, data) {
                        warn!(?block, error = %e, "block not queued");
                    }
                }
                Action::WaitForCredits => {
                    let q = self.storage.queue().clone();
                    self.credit_wait = Some(Box::pin(async move { q.reserve(BLOCK_SIZE).await }));
                }
                Action::Flush => {
                    // fsync can take seconds: it runs beside this loop,
                    // which keeps serving peers; its result arrives in the
                    // select above.
                    let storage = Arc::clone(&self.storage);
                    self.flushing = Some(tokio::task::spawn_blocking(move || storage.flush()));
                }
            }
        }
    }

    /// Hands a command to a session. A session whose channel is full (a
    /// full window of requests and then some) is not keeping up: it is cut
    /// loose rather than waited for.
    fn tell(&mut self, key: PeerKey, cmd: ToSession) {
        let Some(link) = self.links.get(&key) else {
            return;
        };
        if link.commands.try_send(cmd).is_err() {
            debug!(peer_id = %link.id, "session not keeping up");
            self.links.remove(&key);
            self.sessions_changed();
            self.core.peer_closed(Instant::now(), key);
        }
    }

    fn sessions_changed(&mut self) {
        let ids: HashSet<PeerId> = self
            .links
            .values()
            .filter_map(|l| match l.id {
                Remote::Libp2p(p) => Some(p),
                Remote::Bt(_) => None,
            })
            .collect();
        self.sessions_tx.send_replace(Arc::new(ids));
    }

    fn on_tick(&mut self) {
        let now = Instant::now();
        // Upload counters from the sessions.
        for (key, link) in &mut self.links {
            let total = link.stats.uploaded.load(Ordering::Relaxed);
            let delta = total - link.uploaded_seen;
            link.uploaded_seen = total;
            if delta > 0 {
                self.core.on_uploaded(now, *key, delta);
            }
        }
        self.core.set_upload_limit(self.up.rate());
        self.core.handle_timeout(now);
        self.publish(now);
    }

    fn publish(&mut self, now: Instant) {
        let core = self.core.stats(now);
        let peers: Vec<PeerStats> = core
            .peers
            .into_iter()
            .map(|(key, mut p)| {
                if let Some(link) = self.links.get(&key) {
                    p.transport = link.id.transport();
                    p.client = link.stats.client.get().cloned();
                    p.socket_addr = link.addr;
                    p.upload_queue = link.stats.upload_queue.load(Ordering::Relaxed);
                    p.upload_buffered_bytes = link.stats.upload_buffered.load(Ordering::Relaxed);
                }
                p
            })
            .collect();
        let verified = self.storage.verified_count();
        let read_checks = self.storage.whole_checks();
        let disk = self.storage.queue_stats();
        self.stats_tx.send_modify(|s| {
            s.verified_pieces = verified;
            s.complete = core.complete;
            s.down_rate = core.down_rate;
            s.up_rate = core.up_rate;
            s.downloaded = core.downloaded;
            s.uploaded = core.uploaded;
            s.hash_failures = core.hash_failures;
            s.requests_rejected = core.requests_rejected;
            s.read_checks = read_checks;
            s.banned_peers = core.banned_peers;
            s.disk = disk;
            s.disk_error = core.disk_error;
            s.first_block_after = core.first_block_after.map(|d| d.as_secs_f64());
            s.peers = peers.into();
        });
    }
}
