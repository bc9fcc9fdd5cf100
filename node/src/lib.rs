//! `sluice-node`: one running node — its identity and data directory, the
//! libp2p swarm task, its torrents, the node-wide disk queue and rate
//! limits — driven through a cheap, cloneable [`NodeHandle`].
//!
//! Layout:
//! - [`datadir`]: identity key (a stable peer id), the lock that keeps two
//!   nodes out of one directory, resume-file paths.
//! - [`api`]: the control API (HTTP/JSON and Prometheus `/metrics`) and
//!   the client the CLI uses to read it.
//! - this module: [`Node::start`], the swarm task (listening, dialing, mDNS,
//!   routing incoming piece streams to torrents by info-hash) and shutdown.
//!
//! Shutdown (`NodeHandle::shutdown`): every torrent stops requesting, closes
//! its sessions, lets its writer finish what is queued and flushes its
//! resume file; then the swarm task ends and every spawned task is awaited.

pub mod api;
pub mod daemon;
pub mod datadir;
pub mod links;
pub mod tracker;

pub use libp2p::{Multiaddr, PeerId, multiaddr};

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;
use futures::StreamExt;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::SwarmEvent;
use libp2p::swarm::dial_opts::DialOpts;
use libp2p::{identify, kad, mdns};
use sluice_storage::{InfoHash, Metainfo, Storage, StorageConfig, StorageError, WriteQueue};
use sluice_swarm::bt::wire::Handshake;
use sluice_swarm::handshake::{self, Hello};
use sluice_swarm::metadata::{self, FetchError, METADATA_PROTOCOL};
use sluice_swarm::ratelimit::RateLimiter;
use sluice_swarm::reach::{Path, Reachability, RelayLimits, RelayedBytes};
use sluice_swarm::torrent::{SharedLimits, TorrentConfig, TorrentHandle, spawn_torrent};
use sluice_swarm::transport::{
    BehaviourEvent, KAD_PROTOCOL, PIECES_PROTOCOL, TransportConfig, build_swarm,
};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::api::{ApiConfig, ApiState, PeerAddrs, SluiceCollector};
use crate::datadir::DataDir;

const MIB: u64 = 1024 * 1024;

/// Everything that can stop a node from starting or a torrent from being
/// added.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    DataDir(#[from] datadir::DataDirError),
    #[error("starting the network")]
    Transport(#[from] sluice_swarm::transport::TransportError),
    #[error("cannot listen on {addr}")]
    Listen {
        addr: Multiaddr,
        #[source]
        source: libp2p::TransportError<std::io::Error>,
    },
    #[error("opening the torrent's data")]
    Storage(#[from] StorageError),
    #[error("the torrent {0} is already running on this node")]
    Duplicate(InfoHash),
    #[error("the node has stopped")]
    Stopped,
    #[error("cannot dial {addr}: {reason}")]
    Dial { addr: Multiaddr, reason: String },
    #[error("the control API on {addr} is not on loopback, so it needs a token (--api-token)")]
    ApiNeedsToken { addr: SocketAddr },
    #[error("cannot listen for BitTorrent peers on {addr}")]
    BtListen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot make an HTTP client for trackers: {0}")]
    Http(String),
    #[error("no torrent {0} on this node")]
    NoSuchTorrent(InfoHash),
    #[error("the torrent did not stop cleanly: {0}")]
    Stop(String),
    #[error("cannot serve the control API on {addr}")]
    Api {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Node settings; `with_*` setters document units and defaults.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    data_dir: PathBuf,
    /// The identity key instead of the data dir's `identity.key`.
    identity_file: Option<PathBuf>,
    listen: Vec<Multiaddr>,
    listen_optional: Vec<Multiaddr>,
    bt_listen: Option<SocketAddr>,
    mdns: bool,
    up_rate: Option<u64>,
    down_rate: Option<u64>,
    disk_queue: u64,
    disk_rate: Option<u64>,
    torrent: TorrentConfig,
    bootstrap: Vec<Multiaddr>,
    discovery_interval: Duration,
    api: Option<ApiConfig>,
    max_connections: u32,
    max_pending_handshakes: usize,
    /// Incoming connections in their handshake (TCP libp2p and
    /// BitTorrent), in all and per remote IP.
    max_pending_per_ip: Option<usize>,
    max_established_per_ip: Option<u32>,
    verify_reads: bool,
    read_cache: usize,
    relays: Vec<Multiaddr>,
    relay_server: Option<RelayLimits>,
    relayed_pieces: bool,
    dht_server: bool,
    external_addrs: Vec<Multiaddr>,
    public_host: bool,
    upnp: bool,
}

impl NodeConfig {
    /// A node keeping its identity, lock and resume files in `data_dir`.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            identity_file: None,
            listen: vec!["/ip4/127.0.0.1/tcp/0".parse().expect("a valid multiaddr")],
            listen_optional: Vec::new(),
            bt_listen: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
            mdns: true,
            up_rate: None,
            down_rate: None,
            disk_queue: 64 * MIB,
            disk_rate: None,
            torrent: TorrentConfig::default(),
            bootstrap: Vec::new(),
            discovery_interval: Duration::from_secs(30),
            api: Some(ApiConfig::default()),
            max_connections: 256,
            max_pending_handshakes: 64,
            max_pending_per_ip: Some(sluice_swarm::admission::DEFAULT_MAX_PENDING_PER_IP),
            max_established_per_ip: Some(sluice_swarm::transport::DEFAULT_MAX_ESTABLISHED_PER_IP),
            verify_reads: true,
            read_cache: 16 * MIB as usize,
            relays: Vec::new(),
            relay_server: None,
            relayed_pieces: false,
            dht_server: false,
            external_addrs: Vec::new(),
            public_host: true,
            upnp: false,
        }
    }

    /// Check every block read for upload against the torrent before it is
    /// sent (a piece changed on disk is dropped and fetched again rather
    /// than served). Default on.
    pub fn with_verify_reads(mut self, on: bool) -> Self {
        self.verify_reads = on;
        self
    }

    /// Bytes of checked pieces each torrent keeps in memory for upload.
    /// Default 16 MiB.
    pub fn with_read_cache(mut self, bytes: usize) -> Self {
        self.read_cache = bytes;
        self
    }

    /// Established libp2p connections (in and out) beyond which new ones
    /// are refused. Default 256.
    pub fn with_max_connections(mut self, n: u32) -> Self {
        self.max_connections = n.max(1);
        self
    }

    /// Incoming connections (TCP, BitTorrent) and piece streams still in
    /// their handshake at once. A new connection beyond it drops the
    /// oldest pending one (see `sluice_swarm::admission`); a piece stream
    /// beyond it is refused. Default 64.
    pub fn with_max_pending_handshakes(mut self, n: usize) -> Self {
        self.max_pending_handshakes = n.max(1);
        self
    }

    /// Per remote IP: connections in their handshake (beyond it, that
    /// IP's oldest pending one is dropped; default 8) and established
    /// inbound libp2p connections (beyond it, refused; default 64).
    /// `None`: no share per IP (a testnet, where every node is 127.0.0.1).
    pub fn with_per_ip_limits(mut self, pending: Option<usize>, established: Option<u32>) -> Self {
        self.max_pending_per_ip = pending.map(|n| n.max(1));
        self.max_established_per_ip = established.map(|n| n.max(1));
        self
    }

    fn admission(&self) -> sluice_swarm::admission::AdmissionConfig {
        sluice_swarm::admission::AdmissionConfig {
            max_pending: self.max_pending_handshakes,
            max_pending_per_ip: self.max_pending_per_ip,
        }
    }

    /// The node's identity from this key file (read only; made with
    /// [`datadir::new_identity`]) instead of the data dir's
    /// `identity.key`: a peer id chosen before the node runs.
    pub fn with_identity_file(mut self, path: Option<PathBuf>) -> Self {
        self.identity_file = path;
        self
    }

    /// The control API's address and token; `None` serves no API. Default
    /// `127.0.0.1:0` without a token.
    pub fn with_api(mut self, api: Option<ApiConfig>) -> Self {
        self.api = api;
        self
    }
    /// The token the API requires for changes (a daemon's); none: the
    /// API takes no changes.
    pub fn with_api_write_token(mut self, token: Option<String>) -> Self {
        if let Some(api) = &mut self.api {
            api.write_token = token;
        }
        self
    }

    /// DHT nodes to join, each ending in `/p2p/<peer id>`. Default none
    /// (then only mDNS and explicit peers find others).
    pub fn with_bootstrap(mut self, addrs: Vec<Multiaddr>) -> Self {
        self.bootstrap = addrs;
        self
    }

    /// How often each torrent asks the DHT for providers (and announces
    /// itself again). Default 30 s.
    pub fn with_discovery_interval(mut self, d: Duration) -> Self {
        self.discovery_interval = d.max(Duration::from_millis(100));
        self
    }

    /// Where to accept BitTorrent peers (TCP), or `None` for no
    /// BitTorrent listener (peers can still be dialed). Default
    /// `127.0.0.1:0`.
    pub fn with_bt_listen(mut self, addr: Option<SocketAddr>) -> Self {
        self.bt_listen = addr;
        self
    }

    /// Addresses to listen on. Default `/ip4/127.0.0.1/tcp/0`.
    pub fn with_listen(mut self, addrs: Vec<Multiaddr>) -> Self {
        self.listen = addrs;
        self
    }

    /// Addresses to listen on too where the host allows (IPv6 where the
    /// kernel has it turned off, say): a failure is a warning, not a
    /// refused start. Default none.
    pub fn with_optional_listen(mut self, addrs: Vec<Multiaddr>) -> Self {
        self.listen_optional = addrs;
        self
    }

    /// mDNS discovery on the local network. Default on.
    pub fn with_mdns(mut self, on: bool) -> Self {
        self.mdns = on;
        self
    }

    /// Upload limit for the whole node in bytes/s (loopback included).
    /// Default none.
    pub fn with_up_rate(mut self, rate: Option<u64>) -> Self {
        self.up_rate = rate.filter(|&r| r > 0);
        self
    }

    /// Download limit for the whole node in bytes/s. Default none.
    pub fn with_down_rate(mut self, rate: Option<u64>) -> Self {
        self.down_rate = rate.filter(|&r| r > 0);
        self
    }

    /// Bytes requested-but-not-arrived plus arrived-but-not-written, for
    /// the whole node. Default 64 MiB.
    pub fn with_disk_queue(mut self, bytes: u64) -> Self {
        self.disk_queue = bytes.max(u64::from(sluice_storage::BLOCK_SIZE));
        self
    }

    /// Emulated disk write speed in bytes/s. Default none (real speed).
    pub fn with_disk_rate(mut self, rate: Option<u64>) -> Self {
        self.disk_rate = rate.filter(|&r| r > 0);
        self
    }

    /// Per-torrent swarm settings (choker, windows, limits).
    pub fn with_torrent(mut self, t: TorrentConfig) -> Self {
        self.torrent = t;
        self
    }

    pub fn data_dir(&self) -> &std::path::Path {
        &self.data_dir
    }

    /// Relays to hold a reservation on, each ending in `/p2p/<peer id>`:
    /// others reach this node through them (`/p2p-circuit` addresses)
    /// until hole punching gives a direct connection. Bootstrap nodes
    /// that serve as relays are used too while the node is not known to
    /// be reachable. Default none.
    pub fn with_relays(mut self, addrs: Vec<Multiaddr>) -> Self {
        self.relays = addrs;
        self
    }

    /// Serve as a relay for unreachable nodes, within these limits.
    /// Default off.
    pub fn with_relay_server(mut self, limits: Option<RelayLimits>) -> Self {
        self.relay_server = limits;
        self
    }

    /// Let piece traffic cross relays. Default off: a peer met through a
    /// relay trades pieces once hole punching has made a direct
    /// connection (the relayed one carries metadata and control only).
    pub fn with_relayed_pieces(mut self, on: bool) -> Self {
        self.relayed_pieces = on;
        self
    }

    /// Serve the DHT from the start, rather than once an external
    /// address is confirmed. For bootstrap nodes and for loopback or LAN
    /// swarms, where nobody confirms one. Default off.
    pub fn with_dht_server(mut self, on: bool) -> Self {
        self.dht_server = on;
        self
    }

    /// Addresses others reach this node at, known to the user (a
    /// forwarded port, a public host's address): taken as confirmed, as
    /// AutoNAT would. Default none.
    pub fn with_external_addrs(mut self, addrs: Vec<Multiaddr>) -> Self {
        self.external_addrs = addrs;
        self
    }

    /// Ask the router to map the listen ports (UPnP IGD), and take the
    /// mapped addresses as external ones. Default off: it multicasts on
    /// the local network (the CLI turns it on when listening on a private
    /// or unspecified IPv4 address, unless `--no-upnp`).
    pub fn with_upnp(mut self, on: bool) -> Self {
        self.upnp = on;
        self
    }

    /// Take the global listen addresses (not loopback, private,
    /// link-local or shared: an address on the host's own interface that
    /// the internet routes) as external ones until a dial-back to one
    /// fails. Default on: such a host is on the internet unless a
    /// firewall says otherwise, and waiting for AutoNAT would leave its
    /// provider records without an address for the first seconds (and a
    /// relay it serves without one to hand out: AutoNAT cannot confirm a
    /// relay whose peers are all behind NAT, since its dial-backs run only
    /// on connections the server accepted).
    pub fn with_public_host(mut self, on: bool) -> Self {
        self.public_host = on;
        self
    }
}

type Torrents = Arc<Mutex<HashMap<InfoHash, TorrentHandle>>>;

/// Where a dial's outcome goes: the address and the caller waiting.
type DialReply = (Multiaddr, oneshot::Sender<Result<PeerId, NodeError>>);

enum Command {
    Dial(Multiaddr, oneshot::Sender<Result<PeerId, NodeError>>),
    /// A torrent was added: open streams for it to every connected peer.
    Announce(InfoHash),
    /// Look for providers of an info-hash we do not have yet (a metadata
    /// fetch), every discovery round until the matching `EndLookup`;
    /// answers whether it was started.
    Lookup(InfoHash, oneshot::Sender<bool>),
    EndLookup(InfoHash),
}

/// Ends a DHT lookup when the fetch that started it ends.
struct LookupGuard {
    info_hash: InfoHash,
    commands: mpsc::Sender<Command>,
}

impl Drop for LookupGuard {
    fn drop(&mut self) {
        // A full queue leaves the lookup running until the node stops;
        // it costs one DHT query per round and is bounded by MAX_LOOKUPS.
        let _ = self.commands.try_send(Command::EndLookup(self.info_hash));
    }
}

/// A cheap, cloneable handle to a running node.
#[derive(Clone)]
pub struct NodeHandle {
    peer_id: PeerId,
    config: Arc<NodeConfig>,
    data_dir: Arc<DataDir>,
    commands: mpsc::Sender<Command>,
    torrents: Torrents,
    listen: watch::Receiver<Vec<Multiaddr>>,
    /// Peers with at least one connection.
    connected: watch::Receiver<Vec<PeerId>>,
    /// Opens metadata streams.
    control: libp2p_stream::Control,
    /// Reachability and external addresses, kept by the swarm task.
    reach: watch::Receiver<links::ReachView>,
    /// Bytes that crossed relays.
    relayed: RelayedBytes,
    queue: WriteQueue,
    limits: SharedLimits,
    cancel: CancellationToken,
    /// Cancelled when the network task failed (and the node stopped).
    failed: CancellationToken,
    tracker: TaskTracker,
    api_addr: Option<SocketAddr>,
    /// Our BitTorrent peer id (fresh each start, as clients do).
    bt_peer_id: [u8; 20],
    bt_addr: Option<SocketAddr>,
    /// For HTTP(S) trackers.
    http: reqwest::Client,
    /// When each BitTorrent address was last dialed for a torrent, so one
    /// is dialed at most once per [`BT_REDIAL_AFTER`] (two announce tasks
    /// of a hybrid name the same peers, and two connections opened at
    /// once from one side would each replace the other at the far end).
    bt_dialed: Arc<Mutex<HashMap<(InfoHash, SocketAddr), tokio::time::Instant>>>,
    /// One permit per BitTorrent dial under way ([`MAX_BT_DIALS`]).
    bt_dial_permits: Arc<tokio::sync::Semaphore>,
    /// The daemon running this node, once there is one (the API's
    /// changes go to it).
    daemon: Arc<std::sync::OnceLock<daemon::Daemon>>,
}

impl std::fmt::Debug for NodeHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeHandle")
            .field("peer_id", &self.peer_id)
            .finish_non_exhaustive()
    }
}

/// Starting point: [`Node::start`].
#[derive(Debug)]
pub struct Node;

impl Node {
    /// Locks the data dir, loads (or makes) the identity, starts listening
    /// and spawns the swarm task. Must run inside a tokio runtime.
    pub async fn start(config: NodeConfig) -> Result<NodeHandle, NodeError> {
        let data_dir = DataDir::open(&config.data_dir)?;
        Self::start_in(config, data_dir).await
    }

    /// [`Self::start`] in a data dir the caller has locked already (to
    /// write in it before the node runs); `config`'s data dir is not read.
    pub async fn start_in(config: NodeConfig, data_dir: DataDir) -> Result<NodeHandle, NodeError> {
        // Bind the API first: a bad address fails before anything runs.
        let api = match &config.api {
            None => None,
            Some(api) => {
                if !api.addr.ip().is_loopback() && api.token.as_deref().unwrap_or("").is_empty() {
                    return Err(NodeError::ApiNeedsToken { addr: api.addr });
                }
                let listener = tokio::net::TcpListener::bind(api.addr)
                    .await
                    .map_err(|source| NodeError::Api {
                        addr: api.addr,
                        source,
                    })?;
                let addr = listener.local_addr().map_err(|source| NodeError::Api {
                    addr: api.addr,
                    source,
                })?;
                // An empty token would let in requests without one.
                let token = api.token.clone().filter(|t| !t.is_empty());
                let write_token = api.write_token.clone().filter(|t| !t.is_empty());
                Some((listener, addr, token, write_token))
            }
        };
        let bt_listener = match config.bt_listen {
            None => None,
            Some(addr) => {
                let bind = |source| NodeError::BtListen { addr, source };
                let listener = tokio::net::TcpListener::bind(addr).await.map_err(bind)?;
                let local = listener.local_addr().map_err(bind)?;
                Some((listener, local))
            }
        };
        let keypair = match &config.identity_file {
            Some(path) => datadir::read_identity(path)?,
            None => data_dir.identity()?,
        };
        let relayed = RelayedBytes::default();
        let peer_id = keypair.public().to_peer_id();
        let transport = TransportConfig::default()
            .with_mdns(config.mdns)
            .with_max_connections(config.max_connections)
            .with_admission(config.admission())
            .with_max_established_per_ip(config.max_established_per_ip)
            .with_relay_server(config.relay_server)
            .with_relayed_pieces(config.relayed_pieces)
            .with_dht_server(config.dht_server)
            .with_upnp(config.upnp)
            .with_relayed_bytes(relayed.clone());
        let mut swarm = build_swarm(keypair, &transport)?;
        // Every check that can fail comes before anything is spawned or
        // written, so a refused start leaves nothing behind.
        let mut bootstrap = HashMap::new();
        for addr in &config.bootstrap {
            match addr.iter().last() {
                Some(Protocol::P2p(peer)) => {
                    swarm.behaviour_mut().kad.add_address(&peer, addr.clone());
                    bootstrap.insert(peer, addr.clone());
                }
                _ => {
                    return Err(NodeError::Dial {
                        addr: addr.clone(),
                        reason: "a bootstrap address must end in /p2p/<peer id>".into(),
                    });
                }
            }
        }
        // Required listeners that have not reported an address yet: the
        // node's addresses are published once every one has (not QUIC's
        // alone, say, while TCP's is a moment behind). Optional ones are
        // added as they come: an IPv6 listener on a host with IPv6 turned
        // off binds but never reports.
        let mut unreported = HashSet::new();
        for addr in &config.listen {
            let id = swarm
                .listen_on(addr.clone())
                .map_err(|source| NodeError::Listen {
                    addr: addr.clone(),
                    source,
                })?;
            unreported.insert(id);
        }
        for addr in &config.listen_optional {
            if let Err(e) = swarm.listen_on(addr.clone()) {
                warn!(%addr, error = %e, "not listening there");
            }
        }
        for addr in &config.relays {
            if !matches!(addr.iter().last(), Some(Protocol::P2p(_))) {
                return Err(NodeError::Dial {
                    addr: addr.clone(),
                    reason: "a relay address must end in /p2p/<peer id>".into(),
                });
            }
        }
        let cancel = CancellationToken::new();
        let tracker = TaskTracker::new();
        let torrents: Torrents = Arc::default();
        let (listen_tx, listen_rx) = watch::channel(Vec::new());
        let (connected_tx, connected_rx) = watch::channel(Vec::new());
        let (reach_tx, reach_rx) = watch::channel(links::ReachView::default());
        let (commands_tx, commands_rx) = mpsc::channel(64);
        let low = config.disk_queue / 4 * 3;
        let queue = WriteQueue::new(config.disk_queue, low);
        let peer_addrs: PeerAddrs = Arc::default();
        let mut registry = prometheus_client::registry::Registry::default();
        let metrics = libp2p::metrics::Metrics::new(&mut registry);
        registry.register_collector(Box::new(SluiceCollector {
            torrents: Arc::clone(&torrents),
            queue: queue.clone(),
            relayed: relayed.clone(),
            reach: reach_rx.clone(),
        }));
        let handle = NodeHandle {
            peer_id,
            data_dir: Arc::new(data_dir),
            commands: commands_tx,
            torrents: Arc::clone(&torrents),
            listen: listen_rx,
            connected: connected_rx,
            control: swarm.behaviour().stream.new_control(),
            reach: reach_rx,
            relayed,
            queue,
            limits: SharedLimits {
                up: config.up_rate.map(|r| Arc::new(RateLimiter::new(r))),
                down: config.down_rate.map(|r| Arc::new(RateLimiter::new(r))),
            },
            cancel: cancel.clone(),
            failed: CancellationToken::new(),
            tracker: tracker.clone(),
            api_addr: api.as_ref().map(|(_, addr, _, _)| *addr),
            daemon: Arc::default(),
            bt_peer_id: sluice_swarm::bt::new_peer_id(&mut rand::thread_rng()),
            bt_dialed: Arc::default(),
            bt_dial_permits: Arc::new(tokio::sync::Semaphore::new(MAX_BT_DIALS)),
            http: reqwest::Client::builder()
                .user_agent(sluice_swarm::bt::wire::CLIENT_NAME)
                .build()
                .map_err(|e| NodeError::Http(e.to_string()))?,
            bt_addr: bt_listener.as_ref().map(|(_, addr)| *addr),
            config: Arc::new(config),
        };
        if let Some((listener, addr)) = bt_listener {
            tracker.spawn(bt_accept_loop(
                listener,
                Arc::clone(&torrents),
                handle.bt_peer_id,
                tracker.clone(),
                cancel.clone(),
                handle.config.admission(),
            ));
            info!(%addr, "listening for BitTorrent peers");
        }
        if let Some((listener, addr, token, write_token)) = api {
            api::write_api_file(handle.data_dir.path(), addr)
                .map_err(|source| NodeError::Api { addr, source })?;
            let state = ApiState {
                peer_id,
                started: std::time::Instant::now(),
                listen: handle.listen.clone(),
                torrents: Arc::clone(&torrents),
                peer_addrs: Arc::clone(&peer_addrs),
                registry: Arc::new(registry),
                token: token.map(Arc::from),
                write_token: write_token.map(Arc::from),
                addr,
                daemon: Arc::clone(&handle.daemon),
                event_streams: Arc::new(tokio::sync::Semaphore::new(api::MAX_EVENT_STREAMS)),
                cancel: cancel.clone(),
                bt_addr: handle.bt_addr,
                bt_peer_id: handle
                    .bt_addr
                    .map(|_| sluice_swarm::bt::peer_id_label(&handle.bt_peer_id)),
                reach: handle.reach.clone(),
                relayed: handle.relayed.clone(),
            };
            tracker.spawn(api::serve(listener, state, cancel.clone()));
            info!(%addr, "control API listening");
        }
        let incoming = swarm
            .behaviour()
            .pieces
            .new_control()
            .accept(PIECES_PROTOCOL)
            .expect("the piece protocol is registered once per node");
        tracker.spawn(accept_loop(
            incoming,
            Arc::clone(&torrents),
            tracker.clone(),
            cancel.clone(),
            Arc::new(tokio::sync::Semaphore::new(
                handle.config.max_pending_handshakes,
            )),
        ));
        let metadata_incoming = swarm
            .behaviour()
            .stream
            .new_control()
            .accept(METADATA_PROTOCOL)
            .expect("the metadata protocol is registered once per node");
        tracker.spawn(metadata_accept_loop(
            metadata_incoming,
            Arc::clone(&torrents),
            tracker.clone(),
            cancel.clone(),
        ));
        if !handle.config.bootstrap.is_empty() {
            // Joins the DHT; while it has not, it tries again (`rejoin`).
            let _ = swarm.behaviour_mut().kad.bootstrap();
        }
        let interval = handle.config.discovery_interval;
        let network = swarm_task(SwarmTask {
            swarm,
            commands: commands_rx,
            listen: listen_tx,
            unreported,
            connected: connected_tx,
            torrents,
            tracker: tracker.clone(),
            cancel,
            discovery_interval: interval,
            metrics,
            peer_addrs,
            reach: reach_tx,
            relays: handle.config.relays.clone(),
            bootstrap,
            public_host: handle.config.public_host,
            relayed_pieces: handle.config.relayed_pieces,
            external_addrs: handle.config.external_addrs.clone(),
        });
        // A panic there (a bug) would leave the node running with no
        // network, its API answering as if all were well: it stops the
        // node instead, and `failed` says so.
        let failed = handle.failed.clone();
        let stop = handle.cancel.clone();
        tracker.spawn(async move {
            if std::panic::AssertUnwindSafe(network)
                .catch_unwind()
                .await
                .is_err()
            {
                tracing::error!(
                    "the node's network task failed (a bug: see the panic above); stopping the node"
                );
                failed.cancel();
                stop.cancel();
            }
        });
        info!(%peer_id, "node started");
        Ok(handle)
    }
}

impl NodeHandle {
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// Resolves if the node's network task fails (a panic: a bug). The
    /// node has then stopped: a caller that runs it until Ctrl-C should
    /// end too, with an error.
    pub async fn failed(&self) {
        self.failed.cancelled().await;
    }

    /// Where the control API listens, if it runs.
    pub fn api_addr(&self) -> Option<SocketAddr> {
        self.api_addr
    }

    /// Where BitTorrent peers reach us, if we listen for them.
    pub fn bt_addr(&self) -> Option<SocketAddr> {
        self.bt_addr
    }

    /// Our BitTorrent peer id as other nodes' peer lists show it
    /// ([`sluice_swarm::bt::peer_id_label`]); `None` without BitTorrent.
    pub fn bt_peer_label(&self) -> Option<String> {
        self.bt_addr
            .map(|_| sluice_swarm::bt::peer_id_label(&self.bt_peer_id))
    }

    /// Connects to a BitTorrent peer for torrent `ih`, trying again with
    /// backoff ([`BT_RETRY_MIN`] doubling to [`BT_RETRY_MAX`]) until one
    /// connection is made or the node stops. Returns at once; the attempt
    /// runs as a task of the node.
    pub fn add_bt_peer(&self, ih: InfoHash, addr: SocketAddr) -> Result<(), NodeError> {
        let torrent = self.torrent(ih)?;
        self.dial_bt(torrent, addr, true);
        Ok(())
    }

    /// Announces torrent `ih` to these trackers (each its own tier, tried
    /// in order) besides those its `.torrent` names, and dials the peers
    /// they give. Does nothing when BitTorrent is off.
    pub fn add_trackers(&self, ih: InfoHash, urls: Vec<String>) -> Result<(), NodeError> {
        let torrent = self.torrent(ih)?;
        let tiers = urls.into_iter().map(|u| vec![u]).collect();
        self.announce(torrent, tiers);
        Ok(())
    }

    /// The running torrent `ih`.
    pub fn torrent(&self, ih: InfoHash) -> Result<TorrentHandle, NodeError> {
        lock(&self.torrents)
            .get(&ih)
            .cloned()
            .ok_or(NodeError::NoSuchTorrent(ih))
    }

    /// Starts announcing `torrent` to `tiers` (a task until the node stops).
    fn announce(&self, torrent: TorrentHandle, tiers: Vec<Vec<String>>) {
        let Some(bt) = self.bt_addr else { return };
        if tiers.is_empty() {
            return;
        }
        // A hybrid is announced under both of its names: peers that know
        // either one find us.
        for info_hash in torrent.bt_info_hashes() {
            self.announce_as(torrent.clone(), info_hash, tiers.clone(), bt);
        }
    }

    fn announce_as(
        &self,
        torrent: TorrentHandle,
        info_hash: [u8; 20],
        tiers: Vec<Vec<String>>,
        bt: SocketAddr,
    ) {
        let me = tracker::Me {
            peer_id: self.bt_peer_id,
            port: bt.port(),
            info_hash,
        };
        let node = self.clone();
        let for_dial = torrent.clone();
        let dial = move |addrs: Vec<SocketAddr>| {
            // Not ourselves, and not a peer we are connected to already.
            // (A peer that is us after all is refused by its peer id.)
            let connected: HashSet<SocketAddr> = for_dial
                .stats()
                .peers
                .iter()
                .filter_map(|p| p.socket_addr)
                .collect();
            for addr in addrs {
                let ours =
                    addr.port() == bt.port() && (addr.ip().is_loopback() || addr.ip() == bt.ip());
                if !ours && !connected.contains(&addr) {
                    node.dial_bt(for_dial.clone(), addr, false);
                }
            }
        };
        self.tracker.spawn(tracker::announce_loop(
            Some(torrent),
            tiers,
            me,
            self.http.clone(),
            dial,
            self.cancel.clone(),
        ));
    }

    /// Dials a BitTorrent peer for `torrent` as a task of the node: once,
    /// or (`retry`) until connected, with backoff.
    fn dial_bt(&self, torrent: TorrentHandle, addr: SocketAddr, retry: bool) {
        {
            let now = tokio::time::Instant::now();
            let mut dialed = lock(&self.bt_dialed);
            let key = (torrent.info_hash(), addr);
            if dialed.get(&key).is_some_and(|t| now - *t < BT_REDIAL_AFTER) {
                return;
            }
            if dialed.len() >= MAX_BT_DIALED {
                dialed.retain(|_, t| now - *t < BT_REDIAL_AFTER);
            }
            if dialed.len() >= MAX_BT_DIALED {
                debug!(%addr, "too many BitTorrent dials remembered; not dialing");
                return;
            }
            dialed.insert(key, now);
        }
        // Dials under way are bounded; a tracker naming a thousand peers
        // gets the first of them dialed, the rest at its next answer.
        let Ok(permit) = Arc::clone(&self.bt_dial_permits).try_acquire_owned() else {
            debug!(%addr, "too many BitTorrent dials under way; not dialing");
            return;
        };
        let ours = sluice_swarm::bt::wire::Handshake::ours(torrent.bt_info_hash(), self.bt_peer_id);
        let cancel = self.cancel.clone();
        self.tracker.spawn(async move {
            let _permit = permit;
            let mut wait = BT_RETRY_MIN;
            loop {
                let attempt = tokio::select! {
                    () = cancel.cancelled() => return,
                    r = sluice_swarm::bt::connect(addr, ours) => r,
                };
                match attempt {
                    Ok((stream, theirs)) => {
                        debug!(%addr, "BitTorrent peer connected");
                        return torrent.add_bt_peer(stream, addr, theirs, ours, true).await;
                    }
                    Err(e) => debug!(%addr, error = %e, "cannot connect to a BitTorrent peer"),
                }
                if !retry {
                    return;
                }
                tokio::select! {
                    () = cancel.cancelled() => return,
                    () = tokio::time::sleep(wait) => {}
                }
                wait = (wait * 2).min(BT_RETRY_MAX);
            }
        });
    }

    /// Changes the node's upload limit while it runs. Only a node started
    /// with one (`with_up_rate`) has a limiter to change; returns whether
    /// it did.
    pub fn set_up_rate(&self, bytes_per_sec: u64) -> bool {
        match &self.limits.up {
            Some(limit) => {
                limit.set_rate(bytes_per_sec);
                true
            }
            None => false,
        }
    }

    /// Changes the node's download limit while it runs (see
    /// [`set_up_rate`](Self::set_up_rate)).
    pub fn set_down_rate(&self, bytes_per_sec: u64) -> bool {
        match &self.limits.down {
            Some(limit) => {
                limit.set_rate(bytes_per_sec);
                true
            }
            None => false,
        }
    }

    /// The node's upload and download limits (`None`: unlimited; a limiter
    /// at [`UNLIMITED`] counts as none).
    pub fn rates(&self) -> (Option<u64>, Option<u64>) {
        let of =
            |l: &Option<Arc<RateLimiter>>| l.as_ref().map(|l| l.rate()).filter(|r| *r != UNLIMITED);
        (of(&self.limits.up), of(&self.limits.down))
    }

    /// The node's data directory.
    pub fn data_dir(&self) -> &std::path::Path {
        self.data_dir.path()
    }

    /// The node-wide disk write queue.
    pub fn queue(&self) -> &WriteQueue {
        &self.queue
    }

    /// Listen addresses, each ending in `/p2p/<peer id>` (what other nodes
    /// pass to `--peer`). Waits until at least one is known.
    ///
    /// Cancel-safe.
    pub async fn listen_addrs(&self) -> Vec<Multiaddr> {
        let mut rx = self.listen.clone();
        let addrs = rx
            .wait_for(|a| !a.is_empty())
            .await
            .map(|a| a.clone())
            .unwrap_or_default();
        addrs
            .into_iter()
            .map(|a| a.with(libp2p::multiaddr::Protocol::P2p(self.peer_id)))
            .collect()
    }

    /// What the node knows of its reachability now.
    pub fn reach(&self) -> links::ReachView {
        self.reach.borrow().clone()
    }

    /// Bytes that crossed relays: (received, sent).
    pub fn relayed_bytes(&self) -> (u64, u64) {
        (self.relayed.received(), self.relayed.sent())
    }

    /// The addresses to give others (magnet hints, `seed`'s peer lines),
    /// each ending in `/p2p/<our id>`: confirmed external addresses
    /// (relayed ones included) when there are any, else the listen
    /// addresses. With relays or bootstrap nodes configured, waits up to
    /// `wait` for an external address first (a reservation, a dial-back,
    /// a UPnP mapping), so that a node behind NAT hands out its relayed
    /// address rather than private ones nobody can dial.
    pub async fn advertised_addrs(&self, wait: Duration) -> Vec<Multiaddr> {
        let listen = self.listen_addrs().await;
        if !self.config.relays.is_empty() || !self.config.bootstrap.is_empty() {
            let mut rx = self.reach.clone();
            let _ = tokio::time::timeout(wait, rx.wait_for(|v| !v.external.is_empty())).await;
        }
        let external = self.reach.borrow().external.clone();
        sluice_swarm::reach::advertised(&external, &listen)
            .into_iter()
            .map(|mut a| {
                if !matches!(a.iter().last(), Some(Protocol::P2p(_))) {
                    a.push(Protocol::P2p(self.peer_id));
                }
                a
            })
            .collect()
    }

    /// Dials a peer (a multiaddr, ideally ending in `/p2p/<peer id>`) and
    /// waits until the connection is up (its peer id) or failed (why).
    ///
    /// Cancel-safe.
    pub async fn dial(&self, addr: Multiaddr) -> Result<PeerId, NodeError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::Dial(addr.clone(), tx))
            .await
            .map_err(|_| NodeError::Stopped)?;
        match tokio::time::timeout(DIAL_TIMEOUT, rx).await {
            Ok(answer) => answer.map_err(|_| NodeError::Stopped)?,
            Err(_) => Err(NodeError::Dial {
                addr,
                reason: format!("no answer within {DIAL_TIMEOUT:?}"),
            }),
        }
    }

    /// Dials `addr` until a connection is up once, waiting [`BT_RETRY_MIN`]
    /// doubling to [`BT_RETRY_MAX`] between failures (a peer that is not
    /// up yet, or busy, is tried again rather than given up on). Ends with
    /// the node. For the peers a user names (`--peer`).
    pub fn keep_dialing(&self, addr: Multiaddr) {
        let node = self.clone();
        let cancel = self.cancel.clone();
        self.tracker.spawn(async move {
            let mut wait = BT_RETRY_MIN;
            loop {
                let attempt = tokio::select! {
                    () = cancel.cancelled() => return,
                    r = node.dial(addr.clone()) => r,
                };
                match attempt {
                    Ok(peer) => return debug!(%addr, %peer, "connected after retrying"),
                    Err(e) => debug!(%addr, error = %e, ?wait, "dial failed; trying again"),
                }
                tokio::select! {
                    () = cancel.cancelled() => return,
                    () = tokio::time::sleep(wait) => {}
                }
                wait = (wait * 2).min(BT_RETRY_MAX);
            }
        });
    }

    /// Starts sharing a torrent whose content is (or will be) at `content`
    /// (the file of a single-file torrent, else its directory). Opening may
    /// recheck existing data.
    pub async fn add_torrent(
        &self,
        meta: Arc<Metainfo>,
        content: PathBuf,
    ) -> Result<TorrentHandle, NodeError> {
        let ih = meta.info().info_hash();
        if lock(&self.torrents).contains_key(&ih) {
            return Err(NodeError::Duplicate(ih));
        }
        let storage_config = StorageConfig::default()
            .with_write_queue(Some(self.queue.clone()))
            .with_write_rate(self.config.disk_rate)
            .with_resume_file(Some(self.data_dir.resume_file(ih)))
            .with_verify_reads(self.config.verify_reads)
            .with_read_cache(self.config.read_cache);
        let (storage, events) =
            tokio::task::spawn_blocking(move || Storage::open(meta, &content, storage_config))
                .await
                .map_err(|_| NodeError::Stopped)??;
        let handle = spawn_torrent(
            self.peer_id,
            Arc::new(storage),
            events,
            self.config.torrent.clone(),
            self.limits.clone(),
            &self.tracker,
            self.cancel.child_token(),
        );
        lock(&self.torrents).insert(ih, handle.clone());
        let _ = self.commands.send(Command::Announce(ih)).await;
        self.announce(handle.clone(), handle.metainfo().trackers().to_vec());
        Ok(handle)
    }

    /// Stops a running torrent (queued writes finish, its resume file
    /// flushes) and forgets it: its peers are closed and new ones refused.
    ///
    /// Cancel-safe (the stop goes ahead regardless).
    pub async fn remove_torrent(&self, ih: InfoHash) -> Result<(), NodeError> {
        let torrent = lock(&self.torrents)
            .remove(&ih)
            .ok_or(NodeError::NoSuchTorrent(ih))?;
        let stopped = tokio::time::timeout(STOP_TIMEOUT, torrent.stop()).await;
        match stopped {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(NodeError::Stop(e)),
            Err(_) => Err(NodeError::Stop(format!(
                "did not stop within {STOP_TIMEOUT:?}"
            ))),
        }
    }

    /// Hands the API's changes (add, pause, resume, remove) to `daemon`;
    /// once per node.
    pub fn attach_daemon(&self, daemon: daemon::Daemon) {
        let _ = self.daemon.set(daemon);
    }

    /// The data dir's layout (where `.torrent`s and resume files go).
    pub fn data_dir_layout(&self) -> &datadir::DataDir {
        &self.data_dir
    }

    /// The running torrents.
    pub fn torrents(&self) -> Vec<TorrentHandle> {
        lock(&self.torrents).values().cloned().collect()
    }

    /// The upload slots a torrent starts with (`--slots`).
    pub fn default_upload_slots(&self) -> u32 {
        self.config.torrent.upload_slots()
    }

    /// Peers with at least one open connection.
    pub fn connected_peers(&self) -> Vec<PeerId> {
        self.connected.borrow().clone()
    }

    /// [`Self::connected_peers`] as it changes.
    pub fn watch_connected(&self) -> watch::Receiver<Vec<PeerId>> {
        self.connected.clone()
    }

    /// Fetches the metadata of `info_hash` from peers: every connected
    /// peer in turn (those dialed, found by mDNS, or found by asking the
    /// DHT for providers, which this starts). The info dict must hash to
    /// `info_hash` and each piece layer to its file's root; the info dict
    /// and layers together may not exceed `max_bytes`. A peer that lacks
    /// the torrent is asked again after [`FETCH_RETRY`]; one that sent
    /// false or oversized metadata, or broke the protocol, is never asked
    /// again. Returns once one peer gave all of it; waits for peers for as
    /// long as it takes (wrap it in a timeout), or until the node stops.
    ///
    /// Cancel-safe: dropping it ends the DHT lookup.
    pub async fn fetch_metadata(
        &self,
        info_hash: InfoHash,
        max_bytes: u64,
    ) -> Result<Metainfo, NodeError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::Lookup(info_hash, tx))
            .await
            .map_err(|_| NodeError::Stopped)?;
        // Only a lookup that was started is ended.
        let _lookup = rx.await.unwrap_or(false).then(|| LookupGuard {
            info_hash,
            commands: self.commands.clone(),
        });
        let mut connected = self.connected.clone();
        // Bounded: a peer lands in one of these at most once per attempt,
        // and peers come from at most max_connections connections; the
        // bound guards against churn over a long wait.
        let mut rejected: HashSet<PeerId> = HashSet::new();
        let mut asked: HashMap<PeerId, tokio::time::Instant> = HashMap::new();
        loop {
            let now = tokio::time::Instant::now();
            let peers = connected.borrow_and_update().clone();
            let next = peers.into_iter().find(|p| {
                !rejected.contains(p) && asked.get(p).is_none_or(|t| now - *t >= FETCH_RETRY)
            });
            let Some(peer) = next else {
                tokio::select! {
                    () = self.cancel.cancelled() => return Err(NodeError::Stopped),
                    changed = connected.changed() => if changed.is_err() {
                        return Err(NodeError::Stopped);
                    },
                    () = tokio::time::sleep(FETCH_RETRY / 3) => {}
                }
                continue;
            };
            if asked.len() >= MAX_FETCH_JUDGEMENTS {
                asked.retain(|_, t| now - *t < FETCH_RETRY);
            }
            asked.insert(peer, now);
            let attempt =
                tokio::time::timeout(FETCH_TIMEOUT, self.fetch_from(peer, info_hash, max_bytes));
            let result = tokio::select! {
                () = self.cancel.cancelled() => return Err(NodeError::Stopped),
                r = attempt => r,
            };
            match result {
                Ok(Ok(meta)) => {
                    info!(%peer, info_hash = %info_hash, "metadata fetched");
                    return Ok(meta);
                }
                Ok(Err(e)) if e.is_misbehaviour() => {
                    warn!(%peer, error = %e, "metadata refused; not asking that peer again");
                    if rejected.len() < MAX_FETCH_JUDGEMENTS {
                        rejected.insert(peer);
                    }
                }
                Ok(Err(e)) => debug!(%peer, error = %e, "no metadata from this peer"),
                Err(_) => debug!(%peer, "metadata fetch timed out"),
            }
        }
    }

    /// [`fetch_metadata`](Self::fetch_metadata), and from BitTorrent peers
    /// too: those given (`bt_peers`, asked first) and those the trackers
    /// name (announced to under the info-hash until the metadata is in).
    /// Over BitTorrent the info dict comes by BEP 9 `ut_metadata` and the
    /// piece layers by BEP 52 hash requests, [`MAX_BT_FETCHES`] peers at
    /// once; a peer that lies or breaks the protocol is not asked again,
    /// one that failed otherwise after [`BT_FETCH_RETRY`]. Whichever wire
    /// gives the metadata first wins.
    ///
    /// Cancel-safe: dropping it ends the lookups.
    pub async fn fetch_metadata_with(
        &self,
        info_hash: InfoHash,
        max_bytes: u64,
        bt_peers: Vec<SocketAddr>,
        trackers: Vec<String>,
    ) -> Result<Metainfo, NodeError> {
        let libp2p = self.fetch_metadata(info_hash, max_bytes);
        if self.bt_addr.is_none() || (bt_peers.is_empty() && trackers.is_empty()) {
            return libp2p.await;
        }
        let bt = self.fetch_metadata_bt(info_hash, max_bytes, bt_peers, trackers);
        tokio::select! {
            r = libp2p => r,
            r = bt => r,
        }
    }

    async fn fetch_metadata_bt(
        &self,
        info_hash: InfoHash,
        max_bytes: u64,
        given: Vec<SocketAddr>,
        trackers: Vec<String>,
    ) -> Result<Metainfo, NodeError> {
        use futures::stream::{FuturesUnordered, StreamExt};
        let Some(bt) = self.bt_addr else {
            return std::future::pending().await;
        };
        let name = sluice_swarm::torrent::bt_info_hash(info_hash);
        let lookup = self.cancel.child_token();
        let _end_lookup = lookup.clone().drop_guard();
        // Bounded: a full channel drops a tracker answer, the next one
        // comes on the tracker's interval.
        let (found_tx, mut found) = mpsc::channel::<Vec<SocketAddr>>(16);
        if !trackers.is_empty() {
            let me = tracker::Me {
                peer_id: self.bt_peer_id,
                port: bt.port(),
                info_hash: name,
            };
            self.tracker.spawn(tracker::announce_loop(
                None,
                trackers.into_iter().map(|t| vec![t]).collect(),
                me,
                self.http.clone(),
                move |addrs| {
                    let _ = found_tx.try_send(addrs);
                },
                lookup.clone(),
            ));
        }
        let ours = Handshake::ours(name, self.bt_peer_id);
        let is_us =
            |a: &SocketAddr| a.port() == bt.port() && (a.ip().is_loopback() || a.ip() == bt.ip());
        // Every peer heard of, in order (given first), bounded.
        let mut known: Vec<SocketAddr> = Vec::new();
        let learn = |known: &mut Vec<SocketAddr>, addrs: Vec<SocketAddr>| {
            for a in addrs {
                if !is_us(&a) && !known.contains(&a) && known.len() < MAX_FETCH_JUDGEMENTS {
                    known.push(a);
                }
            }
        };
        learn(&mut known, given);
        let mut rejected: HashSet<SocketAddr> = HashSet::new();
        // When each peer's last attempt ended: a peer is asked again
        // BT_FETCH_RETRY after that, so peers that time out do not keep
        // the others from being tried.
        let mut ended: HashMap<SocketAddr, tokio::time::Instant> = HashMap::new();
        let mut in_flight: HashSet<SocketAddr> = HashSet::new();
        let mut attempts = FuturesUnordered::new();
        loop {
            let now = tokio::time::Instant::now();
            while attempts.len() < MAX_BT_FETCHES {
                let Some(addr) = known.iter().copied().find(|a| {
                    !rejected.contains(a)
                        && !in_flight.contains(a)
                        && ended.get(a).is_none_or(|t| now - *t >= BT_FETCH_RETRY)
                }) else {
                    break;
                };
                in_flight.insert(addr);
                attempts.push(async move {
                    let attempt = async {
                        use sluice_swarm::bt::{connect, fetch};
                        let connect = |ours| async move {
                            connect(addr, ours)
                                .await
                                .map_err(|e| std::io::Error::other(e.to_string()))
                        };
                        let (stream, theirs) = connect(ours).await?;
                        match fetch::fetch(stream, &theirs, info_hash, max_bytes).await? {
                            fetch::Fetched::Whole(meta) => Ok(*meta),
                            // A hybrid's layers, over a connection named
                            // by its v2 info-hash.
                            fetch::Fetched::Info(raw) => {
                                let v2 = InfoHash::of_info_bytes(&raw);
                                let name = sluice_swarm::torrent::bt_info_hash(v2);
                                let (stream, theirs) =
                                    connect(Handshake::ours(name, ours.peer_id)).await?;
                                fetch::fetch_layers(stream, &theirs, &raw, max_bytes).await
                            }
                        }
                    };
                    (addr, tokio::time::timeout(FETCH_TIMEOUT, attempt).await)
                });
            }
            tokio::select! {
                () = self.cancel.cancelled() => return Err(NodeError::Stopped),
                Some(addrs) = found.recv() => learn(&mut known, addrs),
                Some((addr, result)) = attempts.next(), if !attempts.is_empty() => {
                    in_flight.remove(&addr);
                    ended.insert(addr, tokio::time::Instant::now());
                    match result {
                    Ok(Ok(meta)) => {
                        info!(%addr, info_hash = %info_hash, "metadata fetched from a BitTorrent peer");
                        return Ok(meta);
                    }
                    Ok(Err(e)) if e.is_misbehaviour() => {
                        warn!(%addr, error = %e, "metadata refused; not asking that peer again");
                        rejected.insert(addr);
                    }
                    Ok(Err(e)) => debug!(%addr, error = %e, "no metadata from this BitTorrent peer"),
                    Err(_) => debug!(%addr, "metadata fetch timed out"),
                    }
                },
                () = tokio::time::sleep(BT_FETCH_RETRY / 2) => {}
            }
        }
    }

    async fn fetch_from(
        &self,
        peer: PeerId,
        info_hash: InfoHash,
        max_bytes: u64,
    ) -> Result<Metainfo, FetchError> {
        use tokio_util::compat::FuturesAsyncReadCompatExt;
        // A stream opened on a connection that is going away (both sides
        // dialed at once, one connection closes) may never open: give up
        // on it and ask again rather than wait out FETCH_TIMEOUT.
        let mut control = self.control.clone();
        let opening = control.open_stream(peer, METADATA_PROTOCOL);
        let stream = tokio::time::timeout(OPEN_TIMEOUT, opening)
            .await
            .map_err(|_| std::io::Error::other("the metadata stream did not open"))?
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        metadata::fetch(stream.compat(), info_hash, max_bytes).await
    }

    /// Stops every torrent (queued writes finish, resume files flush), then
    /// the network, and waits for every task. Returns the first error.
    pub async fn shutdown(self) -> Result<(), String> {
        let torrents: Vec<TorrentHandle> = lock(&self.torrents).drain().map(|(_, t)| t).collect();
        let mut result = Ok(());
        for t in torrents {
            let stopped = tokio::time::timeout(STOP_TIMEOUT, t.stop()).await;
            let stopped =
                stopped.unwrap_or_else(|_| Err(format!("did not stop within {STOP_TIMEOUT:?}")));
            if let Err(e) = stopped {
                warn!(info_hash = %t.info_hash(), error = %e, "torrent did not stop cleanly");
                result = result.and(Err(e));
            }
        }
        self.queue.close();
        self.cancel.cancel();
        self.tracker.close();
        self.tracker.wait().await;
        if self.api_addr.is_some() {
            let _ = std::fs::remove_file(self.data_dir.path().join(api::API_FILE));
        }
        info!("node stopped");
        result
    }
}

/// What the swarm task owns.
struct SwarmTask {
    swarm: libp2p::Swarm<sluice_swarm::transport::Behaviour>,
    commands: mpsc::Receiver<Command>,
    listen: watch::Sender<Vec<Multiaddr>>,
    unreported: HashSet<libp2p::core::transport::ListenerId>,
    connected: watch::Sender<Vec<PeerId>>,
    torrents: Torrents,
    tracker: TaskTracker,
    cancel: CancellationToken,
    discovery_interval: Duration,
    metrics: libp2p::metrics::Metrics,
    peer_addrs: PeerAddrs,
    reach: watch::Sender<links::ReachView>,
    /// Relays given by the user (`--relay`).
    relays: Vec<Multiaddr>,
    /// Bootstrap nodes by peer id: relays too, if they serve as one.
    bootstrap: HashMap<PeerId, Multiaddr>,
    /// Global listen addresses are external ones.
    public_host: bool,
    /// Piece streams may use relayed connections (`--relayed-pieces`).
    relayed_pieces: bool,
    /// Addresses the user says we are reached at (`--external-addr`).
    external_addrs: Vec<Multiaddr>,
}

async fn swarm_task(task: SwarmTask) {
    use libp2p::metrics::Recorder;
    let SwarmTask {
        mut swarm,
        mut commands,
        listen,
        mut unreported,
        connected,
        torrents,
        tracker,
        cancel,
        discovery_interval,
        metrics,
        peer_addrs,
        reach,
        relays,
        bootstrap,
        public_host,
        relayed_pieces,
        external_addrs,
    } = task;

    // Piece streams: direct connections only (see `links`).
    let control = swarm.behaviour().pieces.new_control();
    let mut links = links::Links::default();
    let mut relaying = Relaying::default();
    // Whether the router maps a port for us now (UPnP).
    // The router's port mappings now (UPnP; TCP's and QUIC's apart).
    let mut upnp_mapped: HashSet<Multiaddr> = HashSet::new();
    for addr in &relays {
        relaying.reserve(&mut swarm, addr, true);
    }
    for addr in &external_addrs {
        swarm.add_external_address(addr.clone());
    }
    // `add_external_address` tells the behaviours but raises no event.
    relaying.reachability_changed(&mut swarm, &reach);
    // Every address listened on now (published once all listeners have
    // reported).
    let mut listening: Vec<Multiaddr> = Vec::new();
    let mut discover = tokio::time::interval(discovery_interval);
    // Joining the DHT again while it has not joined (see `REJOIN_FIRST`).
    let mut rejoin_wait = REJOIN_FIRST;
    // Whether a bootstrap node was ever reached: until then, peers learnt
    // elsewhere (mDNS, an inbound connection) do not make a DHT.
    let mut met_bootstrap = false;
    let rejoin = tokio::time::sleep(REJOIN_FIRST);
    tokio::pin!(rejoin);
    // Dials asked for through the handle, until they connect or fail.
    let mut explicit_dials: HashMap<libp2p::swarm::ConnectionId, DialReply> = HashMap::new();
    // Info-hashes being fetched, with how many fetches want each.
    let mut lookups: HashMap<InfoHash, usize> = HashMap::new();
    // When each torrent last put its provider record in the DHT.
    let mut provided: HashMap<InfoHash, tokio::time::Instant> = HashMap::new();
    // When each torrent last asked the DHT for providers.
    let mut looked: HashMap<InfoHash, tokio::time::Instant> = HashMap::new();
    // When a discovery round last opened a piece stream to a peer for a
    // torrent: the stream may still be opening (no session yet), and a
    // second one would replace it.
    let mut reopened: HashMap<(PeerId, InfoHash), tokio::time::Instant> = HashMap::new();
    // When each connected peer's first connection opened: its streams are
    // being opened then (by the dialer), so rounds leave it alone a while.
    let mut connected_at: HashMap<PeerId, tokio::time::Instant> = HashMap::new();
    loop {
        tokio::select! {
            () = cancel.cancelled() => break,
            () = &mut rejoin, if !bootstrap.is_empty() => {
                // A bootstrap node connected, or one met once and peers
                // learnt beyond them since: joined. (One that failed stays
                // in the routing table with its last address: that says
                // nothing.)
                let learnt = swarm.behaviour_mut().kad.kbuckets().any(|b| {
                    b.iter().any(|e| !bootstrap.contains_key(e.node.key.preimage()))
                });
                let joined = (met_bootstrap && learnt)
                    || bootstrap.keys().any(|p| swarm.is_connected(p));
                if !joined {
                    debug!(wait = ?rejoin_wait, "no DHT peers: joining again through the bootstrap nodes");
                    for (peer, addr) in &bootstrap {
                        swarm.behaviour_mut().kad.add_address(peer, addr.clone());
                    }
                    let _ = swarm.behaviour_mut().kad.bootstrap();
                    rejoin.as_mut().reset(tokio::time::Instant::now() + rejoin_wait);
                    rejoin_wait = (rejoin_wait * 2).min(REJOIN_MAX);
                } else {
                    rejoin_wait = REJOIN_FIRST;
                    rejoin.as_mut().reset(tokio::time::Instant::now() + REJOIN_MAX);
                }
            }
            _ = discover.tick() => {
                // Reservations lost (a relay restarted, say) are made again.
                relaying.maintain(&mut swarm, &relays, &bootstrap, reach.borrow().reachability);
                // Announce every torrent and look for more peers of each.
                let all: Vec<TorrentHandle> =
                    lock(&torrents).values().cloned().collect();
                let connected: Vec<PeerId> = swarm.connected_peers().copied().collect();
                for ih in lookups.keys() {
                    swarm.behaviour_mut().kad.get_providers(kad::RecordKey::new(&ih.0));
                }
                let now = tokio::time::Instant::now();
                provided.retain(|ih, _| lock(&torrents).contains_key(ih));
                reopened.retain(|_, at| now - *at < REOPEN_AFTER);
                looked.retain(|ih, _| lock(&torrents).contains_key(ih));
                for t in all {
                    let ih = t.info_hash();
                    // Kept by the torrent as sessions open and close.
                    let with_session = t.sessions();
                    let due = provided.get(&ih).is_none_or(|at| now - *at >= REPROVIDE);
                    if due {
                        provided.insert(ih, now);
                    }
                    // Every round while short of peers; then now and then.
                    let wanted = with_session.len() < ENOUGH_PEERS
                        || looked.get(&ih).is_none_or(|at| now - *at >= REDISCOVER);
                    if wanted || due {
                        looked.insert(ih, now);
                        discover_torrent(&mut swarm, ih, due);
                    }
                    // A piece stream can end while its connection lives on
                    // (an idle timeout, a refused duplicate): open a new one
                    // to every connected peer without a session.
                    for peer in &connected {
                        let fresh = connected_at.get(peer).is_some_and(|at| now - *at < REOPEN_AFTER);
                        if fresh || !links.can_carry_pieces(peer, relayed_pieces) || with_session.contains(peer) || reopened.contains_key(&(*peer, ih)) {
                            continue;
                        }
                        reopened.insert((*peer, ih), now);
                        open_for(*peer, ih, &torrents, &control, &tracker);
                    }
                }
            }
            cmd = commands.recv() => match cmd {
                None => break,
                Some(Command::Dial(addr, reply)) => {
                    if explicit_dials.len() >= MAX_PENDING_EXPLICIT_DIALS {
                        let reason = format!("{MAX_PENDING_EXPLICIT_DIALS} dials are already in flight");
                        let _ = reply.send(Err(NodeError::Dial { addr, reason }));
                        continue;
                    }
                    let opts = fresh_port(addr.clone());
                    let id = opts.connection_id();
                    match swarm.dial(opts) {
                        Ok(()) => {
                            explicit_dials.insert(id, (addr, reply));
                        }
                        Err(e) => {
                            let _ = reply.send(Err(NodeError::Dial { addr, reason: chain(&e) }));
                        }
                    }
                }
                Some(Command::Lookup(ih, reply)) => {
                    let start = lookups.len() < MAX_LOOKUPS || lookups.contains_key(&ih);
                    if start {
                        *lookups.entry(ih).or_default() += 1;
                        swarm.behaviour_mut().kad.get_providers(kad::RecordKey::new(&ih.0));
                    } else {
                        warn!(info_hash = %ih, "{MAX_LOOKUPS} DHT lookups already running; this one waits for mDNS and known peers");
                    }
                    let _ = reply.send(start);
                }
                Some(Command::EndLookup(ih)) => {
                    if let Some(n) = lookups.get_mut(&ih) {
                        *n -= 1;
                        if *n == 0 {
                            lookups.remove(&ih);
                        }
                    }
                }
                Some(Command::Announce(ih)) => {
                    let connected: Vec<PeerId> = swarm
                        .connected_peers()
                        .filter(|p| links.can_carry_pieces(p, relayed_pieces))
                        .copied()
                        .collect();
                    for peer in connected {
                        open_for(peer, ih, &torrents, &control, &tracker);
                    }
                    discover_torrent(&mut swarm, ih, true);
                    provided.insert(ih, tokio::time::Instant::now());
                }
            },
            event = swarm.select_next_some() => {
            metrics.record(&event);
            match &event {
                SwarmEvent::Behaviour(BehaviourEvent::Identify(e)) => metrics.record(e),
                SwarmEvent::Behaviour(BehaviourEvent::Kad(e)) => metrics.record(e),
                SwarmEvent::Behaviour(BehaviourEvent::Ping(e)) => metrics.record(e),
                SwarmEvent::Behaviour(BehaviourEvent::Dcutr(e)) => metrics.record(e),
                SwarmEvent::Behaviour(BehaviourEvent::Relay(e)) => metrics.record(e),
                _ => {}
            }
            match event {
                SwarmEvent::NewListenAddr { listener_id, address } => {
                    info!(%address, "listening");
                    if !sluice_swarm::reach::is_relayed(&address) {
                        let mut direct: Vec<Multiaddr> = listening.clone();
                        direct.push(address.clone());
                        relaying.likely_behind_nat = sluice_swarm::reach::likely_behind_nat(&direct);
                    }
                    if public_host && sluice_swarm::reach::is_global(&address) {
                        // Taken on trust, until a dial-back to it fails.
                        relaying.trusted.insert(address.clone());
                        swarm.add_external_address(address.clone());
                        relaying.reachability_changed(&mut swarm, &reach);
                        reprovide(&mut swarm, &torrents, &mut provided);
                    }
                    listening.push(address);
                    unreported.remove(&listener_id);
                    if unreported.is_empty() {
                        listen.send_replace(listening.clone());
                    }
                }
                SwarmEvent::ListenerClosed { listener_id, ref addresses, ref reason } => {
                    if let Some(l) = relaying.listeners.remove(&listener_id) {
                        // A reservation ended; the next round asks again.
                        debug!(relay = %l.relay, ?reason, "relay reservation ended");
                    } else if let Err(e) = reason {
                        warn!(error = %e, "a listener closed");
                    }
                    listening.retain(|a| !addresses.contains(a));
                    unreported.remove(&listener_id);
                    if unreported.is_empty() {
                        listen.send_replace(listening.clone());
                    }
                }
                SwarmEvent::ExpiredListenAddr { ref address, .. } => {
                    listening.retain(|a| a != address);
                    if unreported.is_empty() {
                        listen.send_replace(listening.clone());
                    }
                }
                SwarmEvent::ConnectionEstablished { peer_id, endpoint, num_established, connection_id, .. } => {
                    if let Some((_, reply)) = explicit_dials.remove(&connection_id) {
                        let _ = reply.send(Ok(peer_id));
                    }
                    debug!(%peer_id, ?endpoint, "connected");
                    met_bootstrap |= bootstrap.contains_key(&peer_id);
                    if num_established.get() == 1 {
                        connected.send_modify(|c| c.push(peer_id));
                        connected_at.insert(peer_id, tokio::time::Instant::now());
                    }
                    let new = links.established(peer_id, connection_id, &endpoint, !upnp_mapped.is_empty());
                    debug!(%peer_id, path = %new.path, "connection path");
                    // Both sides count: DCUtR reports a hole punch only to
                    // the side whose own dial won.
                    match new.path {
                        Path::Relayed => reach.send_modify(|v| v.hole_punch_attempts += 1),
                        Path::HolePunched => {
                            info!(peer = %peer_id, "hole punched: direct connection");
                            reach.send_modify(|v| v.hole_punch_successes += 1);
                        }
                        Path::Direct | Path::Upnp => {}
                    }
                    sync_peer_addr(&peer_addrs, &links, peer_id);
                    publish_paths(&reach, &links);
                    // The dialer opens the piece streams, once per peer,
                    // on its first direct connection (a relayed one
                    // carries no pieces unless allowed).
                    if new.dialer && (new.first_direct || (relayed_pieces && new.first)) {
                        let ihs: Vec<InfoHash> = lock(&torrents).keys().copied().collect();
                        for ih in ihs {
                            open_for(peer_id, ih, &torrents, &control, &tracker);
                        }
                    }
                }
                SwarmEvent::ConnectionClosed { peer_id, cause, num_established, connection_id, .. } => {
                    debug!(%peer_id, ?cause, "connection closed");
                    links.closed(peer_id, connection_id);
                    sync_peer_addr(&peer_addrs, &links, peer_id);
                    if num_established == 0 {
                        connected.send_modify(|c| c.retain(|p| *p != peer_id));
                        connected_at.remove(&peer_id);
                    }
                    publish_paths(&reach, &links);
                }
                SwarmEvent::OutgoingConnectionError { peer_id, error, connection_id } => {
                    // A dial someone asked for is answered (and worth a
                    // warning); the DHT's and mDNS's own redials of
                    // departed peers are not.
                    if let Some((addr, reply)) = explicit_dials.remove(&connection_id) {
                        warn!(?peer_id, error = %chain(&error), "dial failed");
                        let _ = reply.send(Err(NodeError::Dial { addr, reason: chain(&error) }));
                    } else {
                        debug!(?peer_id, %error, "dial failed");
                    }
                }
                SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. })) => {
                    // What a DHT server says it listens on is how the DHT
                    // reaches it. A node in client mode (not known to be
                    // reachable) stays out of routing tables.
                    if info.protocols.contains(&KAD_PROTOCOL) {
                        for addr in info.listen_addrs {
                            swarm.behaviour_mut().kad.add_address(&peer_id, addr);
                        }
                    }
                    // A bootstrap node that serves as a relay is one to
                    // reserve on while we are not known to be reachable.
                    if bootstrap.contains_key(&peer_id)
                        && info.protocols.contains(&libp2p::relay::HOP_PROTOCOL_NAME)
                        && relaying.hop_peers.insert(peer_id)
                    {
                        relaying.maintain(&mut swarm, &relays, &bootstrap, reach.borrow().reachability);
                    }
                }
                SwarmEvent::ExternalAddrConfirmed { ref address } => {
                    info!(%address, "external address confirmed");
                    relaying.reachability_changed(&mut swarm, &reach);
                    reprovide(&mut swarm, &torrents, &mut provided);
                }
                SwarmEvent::Behaviour(BehaviourEvent::Upnp(ref e)) => match e {
                    libp2p::upnp::Event::NewExternalAddr { external_addr, .. } => {
                        info!(address = %external_addr, "the router mapped a port (UPnP)");
                        upnp_mapped.insert(external_addr.clone());
                    }
                    libp2p::upnp::Event::ExpiredExternalAddr { external_addr, .. } => {
                        info!(address = %external_addr, "the router's port mapping expired (UPnP)");
                        upnp_mapped.remove(external_addr);
                    }
                    libp2p::upnp::Event::GatewayNotFound => debug!("no UPnP gateway on the local network"),
                    libp2p::upnp::Event::NonRoutableGateway => {
                        debug!("the UPnP gateway is itself behind NAT; no mapping");
                    }
                },
                SwarmEvent::ExternalAddrExpired { ref address } => {
                    debug!(%address, "external address expired");
                    relaying.reachability_changed(&mut swarm, &reach);
                }
                SwarmEvent::Behaviour(BehaviourEvent::Autonat(ref e)) => {
                    match &e.result {
                        Ok(()) => debug!(addr = %e.tested_addr, server = %e.server, "AutoNAT: reachable"),
                        // Only a direct address failing says anything: the
                        // candidates include what peers saw on relayed
                        // connections (`/p2p/…`, circuits).
                        Err(err) if sluice_swarm::transport::remote_ip(&e.tested_addr).is_some()
                            && !sluice_swarm::reach::is_relayed(&e.tested_addr) => {
                            debug!(addr = %e.tested_addr, server = %e.server, error = %err, "AutoNAT: not reachable there");
                            relaying.dial_back_failed = true;
                            // A global listen address taken on trust,
                            // refuted (one the user gave, or one a router
                            // mapped, stays).
                            if relaying.trusted.remove(&e.tested_addr) {
                                swarm.remove_external_address(&e.tested_addr);
                            }
                            relaying.reachability_changed(&mut swarm, &reach);
                            relaying.maintain(&mut swarm, &relays, &bootstrap, reach.borrow().reachability);
                        }
                        Err(err) => debug!(addr = %e.tested_addr, error = %err, "AutoNAT: a relayed candidate, not tested"),
                    }
                }
                SwarmEvent::Behaviour(BehaviourEvent::Dcutr(ref e)) => {
                    let peer = e.remote_peer_id;
                    match &e.result {
                        Ok(id) => {
                            if links.hole_punched(peer, *id) {
                                info!(%peer, "hole punched: direct connection");
                                reach.send_modify(|v| v.hole_punch_successes += 1);
                            }
                            sync_peer_addr(&peer_addrs, &links, peer);
                            publish_paths(&reach, &links);
                        }
                        Err(err) => info!(%peer, error = %err, "hole punching failed"),
                    }
                }
                SwarmEvent::Behaviour(BehaviourEvent::Kad(kad::Event::OutboundQueryProgressed {
                    result: kad::QueryResult::GetProviders(Ok(kad::GetProvidersOk::FoundProviders { key, providers })),
                    ..
                })) => {
                    let me = *swarm.local_peer_id();
                    // A metadata fetch provides nothing, so nobody looks
                    // for it: it dials every provider it finds.
                    let fetching = <[u8; 32]>::try_from(key.as_ref())
                        .is_ok_and(|k| lookups.contains_key(&InfoHash(k)));
                    for peer in providers {
                        // Both sides find each other; the lower id dials,
                        // unless we have too few peers to wait. Past
                        // MAX_DISCOVERED_PEERS connections, found peers
                        // are left for others.
                        let count = swarm.connected_peers().count();
                        let ours = fetching || me < peer || count < MIN_PEERS;
                        let room = fetching || count < MAX_DISCOVERED_PEERS;
                        if peer != me && ours && room && !swarm.is_connected(&peer) {
                            debug!(%peer, "the DHT found a peer");
                            let _ = swarm.dial(DialOpts::peer_id(peer).allocate_new_port().build());
                        }
                    }
                }
                SwarmEvent::Behaviour(BehaviourEvent::RelayClient(
                    libp2p::relay::client::Event::ReservationReqAccepted { relay_peer_id, .. },
                )) => relaying.reservation_accepted(&mut swarm, relay_peer_id),
                SwarmEvent::Behaviour(BehaviourEvent::Mdns(mdns::Event::Discovered(found))) => {
                    for (peer, addr) in found {
                        if !swarm.is_connected(&peer) {
                            debug!(%peer, %addr, "mDNS found a peer");
                            let _ = swarm.dial(fresh_port(addr));
                        }
                    }
                }
                _ => {}
            }},
        }
    }
}

/// Relays a node holds reservations on, most of them at once.
pub const MAX_RELAYS: usize = 2;

/// The node's relay reservations and what decides them.
#[derive(Default)]
struct Relaying {
    /// Circuit listeners (one per reservation).
    listeners: HashMap<libp2p::core::transport::ListenerId, RelayListener>,
    /// Global listen addresses taken as external on trust: a failed
    /// dial-back removes them (and only them).
    trusted: HashSet<Multiaddr>,
    /// Bootstrap nodes that serve as relays.
    hop_peers: HashSet<PeerId>,
    /// Whether some peer failed to dial one of our addresses back.
    dial_back_failed: bool,
    /// Our listen addresses are all private (see
    /// `reach::likely_behind_nat`).
    likely_behind_nat: bool,
}

/// A circuit listener: its relay's reservation.
#[derive(Debug)]
struct RelayListener {
    relay: PeerId,
    /// The user named the relay (`--relay`): kept once the node is
    /// public, and not counted against [`MAX_RELAYS`].
    explicit: bool,
    /// The relay has answered the reservation request. libp2p-relay 0.22's
    /// client panics on an acceptance for a listener removed while it was
    /// asked (`priv_client.rs`: "Relay connection exist"), which kills
    /// the swarm task: a listener is removed only once answered.
    answered: bool,
    /// To be removed once answered (the node turned public meanwhile).
    unwanted: bool,
}

impl Relaying {
    /// Listens through the relay at `addr` (its reservation), unless
    /// already. `explicit`: the user named it, so it is kept even once
    /// the node is reachable.
    fn reserve(
        &mut self,
        swarm: &mut libp2p::Swarm<sluice_swarm::transport::Behaviour>,
        addr: &Multiaddr,
        explicit: bool,
    ) {
        let Some(Protocol::P2p(relay)) = addr.iter().last() else {
            return;
        };
        if self.listeners.values().any(|l| l.relay == relay) {
            return;
        }
        match swarm.listen_on(addr.clone().with(Protocol::P2pCircuit)) {
            Ok(id) => {
                debug!(%relay, explicit, "asking for a relay reservation");
                self.listeners.insert(
                    id,
                    RelayListener {
                        relay,
                        explicit,
                        answered: false,
                        unwanted: false,
                    },
                );
            }
            Err(e) => warn!(%addr, error = %chain(&e), "cannot use this relay"),
        }
    }

    /// Reservations on the given relays, and on bootstrap relays once the
    /// node is known to be unreachable (a dial-back failed) or, while
    /// nothing is known, when it listens on private addresses only; up to
    /// [`MAX_RELAYS`]. Not a node with a global address that has not heard
    /// yet: it would hand out relayed addresses, and peers would meet it
    /// through the relay rather than dial it.
    fn maintain(
        &mut self,
        swarm: &mut libp2p::Swarm<sluice_swarm::transport::Behaviour>,
        relays: &[Multiaddr],
        bootstrap: &HashMap<PeerId, Multiaddr>,
        reachability: Reachability,
    ) {
        for addr in relays {
            self.reserve(swarm, addr, true);
        }
        let wanted = match reachability {
            Reachability::Private => true,
            Reachability::Unknown => self.likely_behind_nat,
            Reachability::Public => false,
        };
        if !wanted {
            return;
        }
        let mut hop: Vec<PeerId> = self.hop_peers.iter().copied().collect();
        hop.sort_unstable();
        for peer in hop {
            if self.listeners.values().filter(|l| !l.explicit).count() >= MAX_RELAYS {
                break;
            }
            if let Some(addr) = bootstrap.get(&peer) {
                self.reserve(swarm, addr, false);
            }
        }
    }

    /// Publishes the node's reachability and external addresses; once it
    /// is public, drops the reservations it made on its own.
    fn reachability_changed(
        &mut self,
        swarm: &mut libp2p::Swarm<sluice_swarm::transport::Behaviour>,
        reach: &watch::Sender<links::ReachView>,
    ) {
        let external: Vec<Multiaddr> = swarm.external_addresses().cloned().collect();
        let reachability = Reachability::from_facts(&external, self.dial_back_failed);
        let was = reach.borrow().reachability;
        if reachability != was {
            info!(%reachability, "reachability");
        }
        reach.send_modify(|v| {
            v.reachability = reachability;
            v.external = external;
        });
        if reachability != Reachability::Public {
            // Wanted again, once answered.
            for l in self.listeners.values_mut() {
                l.unwanted = false;
            }
        }
        if reachability == Reachability::Public && was != Reachability::Public {
            for (id, l) in &mut self.listeners {
                if l.explicit {
                    continue;
                }
                if l.answered {
                    swarm.remove_listener(*id);
                } else {
                    l.unwanted = true;
                }
            }
        }
    }

    /// `relay` accepted a reservation: a listener on it that is no longer
    /// wanted goes now.
    fn reservation_accepted(
        &mut self,
        swarm: &mut libp2p::Swarm<sluice_swarm::transport::Behaviour>,
        relay: PeerId,
    ) {
        for (id, l) in &mut self.listeners {
            if l.relay == relay && !l.answered {
                l.answered = true;
                if l.unwanted {
                    swarm.remove_listener(*id);
                }
            }
        }
    }
}

/// The peer address map the API reads, from the swarm task's links.
fn sync_peer_addr(peer_addrs: &PeerAddrs, links: &links::Links, peer: PeerId) {
    match links.best(&peer) {
        Some(best) => {
            lock(peer_addrs).insert(peer, best);
        }
        None => {
            lock(peer_addrs).remove(&peer);
        }
    }
}

/// Puts every torrent's provider record in again: records carry our
/// external addresses, and these changed.
fn reprovide(
    swarm: &mut libp2p::Swarm<sluice_swarm::transport::Behaviour>,
    torrents: &Torrents,
    provided: &mut HashMap<InfoHash, tokio::time::Instant>,
) {
    let ihs: Vec<InfoHash> = lock(torrents).keys().copied().collect();
    for ih in ihs {
        discover_torrent(swarm, ih, true);
        provided.insert(ih, tokio::time::Instant::now());
    }
}

/// Publishes the connection counts by path (when they change).
fn publish_paths(reach: &watch::Sender<links::ReachView>, links: &links::Links) {
    let paths = links.count_by_path();
    reach.send_if_modified(|v| {
        let changed = v.paths != paths;
        v.paths = paths;
        changed
    });
}

/// Locks a mutex whose holders never leave it inconsistent, so a panic
/// elsewhere (poisoning) does not matter.
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// An error with its causes, `outer: inner: innermost` (libp2p's dial
/// errors say little at the top level: "Dial error").
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let more = s.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = s.source();
    }
    text
}

/// Dials through the handle waiting for their outcome at once; more are
/// refused until some finish.
const MAX_PENDING_EXPLICIT_DIALS: usize = 1024;

/// Dial options for `addr` from a fresh local port. libp2p reuses the
/// listening port by default; two nodes dialing each other at the same
/// moment then make one TCP connection by simultaneous open, on which
/// both sides start Noise as initiator and the handshake fails.
fn fresh_port(addr: Multiaddr) -> DialOpts {
    DialOpts::unknown_peer_id()
        .address(addr)
        .allocate_new_port()
        .build()
}

/// Asks the DHT who provides `ih`, and (`provide`) says that we do.
fn discover_torrent(
    swarm: &mut libp2p::Swarm<sluice_swarm::transport::Behaviour>,
    ih: InfoHash,
    provide: bool,
) {
    let key = kad::RecordKey::new(&ih.0);
    if provide && let Err(e) = swarm.behaviour_mut().kad.start_providing(key.clone()) {
        warn!(info_hash = %ih, error = %e, "cannot announce in the DHT");
    }
    swarm.behaviour_mut().kad.get_providers(key);
}

/// A node connected to none of its bootstrap nodes that either never
/// reached one (they were not up when it started) or knows no DHT peer
/// beyond them (all went away) joins again through them after
/// this long, then twice as long each time up to [`REJOIN_MAX`]: in a
/// container stack nothing says which service starts first.
pub const REJOIN_FIRST: Duration = Duration::from_secs(1);
pub const REJOIN_MAX: Duration = Duration::from_secs(30);

/// How often a torrent puts its provider record in the DHT again (each
/// discovery round only asks for providers).
pub const REPROVIDE: Duration = Duration::from_secs(60);
/// A torrent with this many peers asks the DHT for more only every
/// [`REDISCOVER`], not every discovery round.
pub const ENOUGH_PEERS: usize = 8;
pub const REDISCOVER: Duration = Duration::from_secs(30);
/// A discovery round leaves a (peer, torrent) alone this long after it
/// opened a piece stream for it.
pub const REOPEN_AFTER: Duration = Duration::from_secs(10);
/// Below this many connections a node dials every provider it finds.
const MIN_PEERS: usize = 4;
/// Past this many connections a node dials no more providers.
pub const MAX_DISCOVERED_PEERS: usize = 24;

/// Opens a piece stream to `peer` for torrent `ih` and hands it over.
fn open_for(
    peer: PeerId,
    ih: InfoHash,
    torrents: &Torrents,
    control: &libp2p_stream::Control,
    tracker: &TaskTracker,
) {
    let Some(torrent) = lock(torrents).get(&ih).cloned() else {
        return;
    };
    let mut control = control.clone();
    tracker.spawn(async move {
        let stats = torrent.stats();
        let ours = Hello {
            info_hash: ih,
            pieces: stats.total_pieces,
            max_requests: torrent.max_requests(),
        };
        let opened = tokio::time::timeout(
            handshake::HANDSHAKE_TIMEOUT,
            control.open_stream(peer, PIECES_PROTOCOL),
        )
        .await;
        let stream = match opened {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return debug!(%peer, error = %e, "cannot open a piece stream"),
            Err(_) => return debug!(%peer, "opening a piece stream timed out"),
        };
        match handshake::open(stream, ours).await {
            Ok((reader, writer, theirs)) => {
                torrent
                    .add_peer(peer, reader, writer, theirs.max_requests, true)
                    .await
            }
            Err(e) => debug!(%peer, error = %e, "handshake failed"),
        }
    });
}

async fn accept_loop(
    mut incoming: libp2p_stream::IncomingStreams,
    torrents: Torrents,
    tracker: TaskTracker,
    cancel: CancellationToken,
    pending: Arc<tokio::sync::Semaphore>,
) {
    loop {
        let next = tokio::select! {
            () = cancel.cancelled() => break,
            next = incoming.next() => next,
        };
        let Some((peer, stream)) = next else { break };
        // Each stream in its handshake holds a permit; beyond the bound
        // new streams are dropped (the peer sees the stream close).
        let Ok(permit) = Arc::clone(&pending).try_acquire_owned() else {
            debug!(%peer, "incoming stream refused: too many pending handshakes");
            continue;
        };
        let torrents = Arc::clone(&torrents);
        tracker.spawn(async move {
            let _permit = permit;
            let (reader, mut writer, theirs) = match handshake::accept(stream).await {
                Ok(x) => x,
                Err(e) => return debug!(%peer, error = %e, "incoming handshake failed"),
            };
            let torrent = lock(&torrents).get(&theirs.info_hash).cloned();
            let Some(torrent) = torrent else {
                return debug!(%peer, info_hash = %theirs.info_hash, "stream for a torrent we do not have");
            };
            let ours = Hello {
                info_hash: theirs.info_hash,
                pieces: torrent.stats().total_pieces,
                max_requests: torrent.max_requests(),
            };
            match handshake::answer(&mut writer, ours, theirs).await {
                Ok(()) => {
                    torrent
                        .add_peer(peer, reader, writer, theirs.max_requests, false)
                        .await
                }
                Err(e) => debug!(%peer, error = %e, "incoming handshake failed"),
            }
        });
    }
}

/// Accepts BitTorrent connections: reads the handshake, finds the torrent
/// it names, answers and hands the connection over. At most `pending`
/// connections are in their handshake at once; more are closed at once.
async fn bt_accept_loop(
    listener: tokio::net::TcpListener,
    torrents: Torrents,
    peer_id: [u8; 20],
    tracker: TaskTracker,
    cancel: CancellationToken,
    admission: sluice_swarm::admission::AdmissionConfig,
) {
    use sluice_swarm::bt;
    // Handshakes under way, each with the handle that aborts it when the
    // admission drops it for a newer one (see `sluice_swarm::admission`).
    let pending = sluice_swarm::transport::Handshakes::new(admission);
    loop {
        let accepted = tokio::select! {
            () = cancel.cancelled() => break,
            a = listener.accept() => a,
        };
        let (mut stream, addr) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // Out of file descriptors, say: back off rather than spin.
                warn!(error = %e, "accepting a BitTorrent connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (slot, registration) = pending.admit(addr.ip());
        let torrents = Arc::clone(&torrents);
        let handshake = futures::future::Abortable::new(
            async move {
                let _ = stream.set_nodelay(true);
                let theirs = match bt::read_handshake(&mut stream).await {
                    Ok(h) => h,
                    Err(e) => {
                        debug!(%addr, error = %e, "incoming BitTorrent handshake failed");
                        return None;
                    }
                };
                let torrent = lock(&torrents)
                    .values()
                    .find(|t| t.bt_info_hashes().contains(&theirs.info_hash))
                    .cloned();
                let Some(torrent) = torrent else {
                    debug!(%addr, info_hash = %hex::encode(theirs.info_hash), "BitTorrent peer for a torrent we do not have");
                    return None;
                };
                if theirs.peer_id == peer_id {
                    debug!(%addr, "connected to ourselves");
                    return None;
                }
                let ours = bt::wire::Handshake::ours(theirs.info_hash, peer_id);
                match bt::write_handshake(&mut stream, &ours).await {
                    Ok(()) => Some((stream, theirs, ours, torrent)),
                    Err(e) => {
                        debug!(%addr, error = %e, "incoming BitTorrent handshake failed");
                        None
                    }
                }
            },
            registration,
        );
        let cancel = cancel.clone();
        tracker.spawn(async move {
            let done = tokio::select! {
                // A stopping node waits for no handshake.
                () = cancel.cancelled() => return,
                d = handshake => d,
            };
            // The slot is free once the handshakes are over, whatever
            // comes of the session.
            drop(slot);
            match done {
                Ok(Some((stream, theirs, ours, torrent))) => {
                    torrent.add_bt_peer(stream, addr, theirs, ours, false).await;
                }
                Ok(None) => {}
                Err(_) => debug!(%addr, "BitTorrent handshake dropped for a newer connection"),
            }
        });
    }
}

/// Answers metadata requests from peers fetching a torrent we have.
/// At most [`MAX_METADATA_STREAMS`] streams are served at once, and
/// [`MAX_METADATA_STREAMS_PER_PEER`] from one peer; more are dropped.
async fn metadata_accept_loop(
    mut incoming: libp2p_stream::IncomingStreams,
    torrents: Torrents,
    tracker: TaskTracker,
    cancel: CancellationToken,
) {
    use tokio_util::compat::FuturesAsyncReadCompatExt;
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_METADATA_STREAMS));
    let per_peer: Arc<Mutex<HashMap<PeerId, usize>>> = Arc::default();
    loop {
        let next = tokio::select! {
            () = cancel.cancelled() => break,
            next = incoming.next() => next,
        };
        let Some((peer, stream)) = next else { break };
        let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else {
            debug!(%peer, "metadata stream refused: too many at once");
            continue;
        };
        {
            let mut counts = lock(&per_peer);
            let n = counts.entry(peer).or_default();
            if *n >= MAX_METADATA_STREAMS_PER_PEER {
                debug!(%peer, "metadata stream refused: too many from this peer");
                continue;
            }
            *n += 1;
        }
        let torrents = Arc::clone(&torrents);
        let per_peer = Arc::clone(&per_peer);
        let cancel = cancel.clone();
        tracker.spawn(async move {
            let _permit = permit;
            // By key, or a hybrid by its v1 hash (a `btih` link).
            let lookup = |ih: &InfoHash| {
                let torrents = lock(&torrents);
                torrents
                    .get(ih)
                    .or_else(|| torrents.values().find(|t| t.metainfo().info().known_by(ih)))
                    .map(|t| Arc::clone(t.metainfo()))
            };
            tokio::select! {
                () = cancel.cancelled() => {}
                r = metadata::serve(stream.compat(), lookup, METADATA_IDLE) => {
                    if let Err(e) = r {
                        debug!(%peer, error = %e, "metadata stream ended");
                    }
                }
            }
            let mut counts = lock(&per_peer);
            if let Some(n) = counts.get_mut(&peer) {
                *n -= 1;
                if *n == 0 {
                    counts.remove(&peer);
                }
            }
        });
    }
}

/// Metadata streams served at once, and from one peer.
pub const MAX_METADATA_STREAMS: usize = 32;
pub const MAX_METADATA_STREAMS_PER_PEER: usize = 2;
/// A metadata stream with no request for this long is closed.
pub const METADATA_IDLE: Duration = Duration::from_secs(30);
/// A peer that lacks the torrent (or failed without lying) is asked again
/// after this long.
pub const FETCH_RETRY: Duration = Duration::from_secs(3);
/// One peer's whole answer must arrive within this; a peer that dribbles
/// chunks cannot stall the fetch.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(60);
/// BitTorrent peers asked for metadata at once.
pub const MAX_BT_FETCHES: usize = 4;
/// A BitTorrent peer that failed a metadata fetch (without lying) is
/// asked again after this long.
pub const BT_FETCH_RETRY: Duration = Duration::from_secs(10);
/// How long opening a metadata stream to a connected peer may take.
pub const OPEN_TIMEOUT: Duration = Duration::from_secs(10);
/// Peers remembered by one metadata fetch (asked recently, or refused).
pub const MAX_FETCH_JUDGEMENTS: usize = 4096;
/// Info-hashes looked up in the DHT at once for metadata fetches.
pub const MAX_LOOKUPS: usize = 64;

/// How long [`NodeHandle::dial`] waits for a connection.
pub const DIAL_TIMEOUT: Duration = Duration::from_secs(30);
/// First wait before dialing a BitTorrent peer, or a libp2p peer the user
/// named, again.
pub const BT_RETRY_MIN: Duration = Duration::from_secs(1);
/// Longest wait between attempts to dial such a peer.
pub const BT_RETRY_MAX: Duration = Duration::from_secs(60);
/// A BitTorrent address is dialed for a torrent at most once this often.
pub const BT_REDIAL_AFTER: Duration = Duration::from_secs(30);
/// Most (torrent, address) dial times remembered.
const MAX_BT_DIALED: usize = 4096;
/// Most BitTorrent dials under way at once (a `--peer` retrying holds one).
pub const MAX_BT_DIALS: usize = 64;

/// A rate limit that never holds anything back: what a node whose limits
/// may be set later (a daemon) starts with.
pub use sluice_swarm::ratelimit::UNLIMITED;

/// How long shutdown waits for a torrent before giving up on it.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(30);
