//! `sluice seed`, `sluice get` and `sluice node`: run a node for one
//! torrent (or, for `node`, none: a DHT bootstrap node).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;
use tokio::signal::unix::{Signal, SignalKind};

use anyhow::{Context, Result};
use sluice_choke::{PropShareConfig, SeedMode, TitForTatConfig};
use sluice_node::api::ApiConfig;
use sluice_node::{Multiaddr, Node, NodeConfig, NodeHandle};
use sluice_storage::{CreateOptions, InfoHash, Metainfo};
use sluice_swarm::magnet::Magnet;
use sluice_swarm::torrent::{ChokerChoice, TorrentConfig, TorrentHandle, TorrentStats};

use sluice_storage::units::{format_size, parse_rate, parse_size};

/// Exit code after Ctrl-C stopped an incomplete download.
const EXIT_INTERRUPTED: u8 = 130;
/// `get --timeout` ran out.
const EXIT_TIMED_OUT: u8 = 1;

/// A peer given on the command line: a libp2p node, or a BitTorrent
/// client at `HOST:PORT`.
#[derive(Debug, Clone)]
pub(crate) enum PeerArg {
    Libp2p(Multiaddr),
    Bt(SocketAddr),
}

fn parse_peer(s: &str) -> Result<PeerArg, String> {
    if s.starts_with('/') {
        return parse_multiaddr(s).map(PeerArg::Libp2p);
    }
    use std::net::ToSocketAddrs;
    match s.to_socket_addrs() {
        Ok(mut addrs) => addrs
            .next()
            .map(PeerArg::Bt)
            .ok_or_else(|| format!("{s:?} resolves to no address")),
        Err(e) => Err(format!(
            "{s:?} is neither a multiaddr nor HOST:PORT ({e}); e.g. \
             /ip4/127.0.0.1/tcp/4001/p2p/12D3KooW… or 127.0.0.1:6881"
        )),
    }
}

fn parse_multiaddr(s: &str) -> Result<Multiaddr, String> {
    s.parse().map_err(|e| {
        format!("{s:?} is not a multiaddr ({e}); e.g. /ip4/127.0.0.1/tcp/4001/p2p/12D3KooW…")
    })
}

/// Flags every networked command shares.
#[derive(Debug, clap::Args)]
pub(crate) struct NetArgs {
    /// Node data directory: identity key, lock, resume files
    /// (default: $SLUICE_DATA_DIR, else ~/.local/share/sluice).
    #[arg(long)]
    pub(crate) data_dir: Option<PathBuf>,
    /// The node's identity from this key file (`sluice identity new`)
    /// instead of DATA_DIR/identity.key.
    #[arg(long, env = "SLUICE_IDENTITY")]
    identity: Option<PathBuf>,
    /// Address to listen on (repeatable), e.g. /ip4/0.0.0.0/tcp/4001 or
    /// /ip4/0.0.0.0/udp/4001/quic-v1 (default: TCP and QUIC on any port,
    /// IPv4 and, where the host has it, IPv6). In the environment, several
    /// are comma-separated.
    #[arg(long, value_parser = parse_multiaddr, env = "SLUICE_LISTEN", value_delimiter = ',')]
    pub(crate) listen: Vec<Multiaddr>,
    /// Listened on too where the host allows (the daemon's kept IPv6
    /// ports).
    #[arg(skip)]
    pub(crate) listen_optional: Vec<Multiaddr>,
    /// A peer to connect to (repeatable): a sluice node's multiaddr, e.g.
    /// /ip4/127.0.0.1/tcp/4001/p2p/12D3KooW…, or a BitTorrent client's
    /// HOST:PORT, e.g. 127.0.0.1:6881.
    #[arg(long, value_parser = parse_peer)]
    peer: Vec<PeerArg>,
    /// Where to accept BitTorrent peers (plaintext TCP; default: any
    /// free port on all interfaces).
    #[arg(long, default_value = "0.0.0.0:0", env = "SLUICE_BT_LISTEN")]
    pub(crate) bt_listen: SocketAddr,
    /// Speak no BitTorrent: no listener (given HOST:PORT peers are
    /// refused). Wins over --bt-listen.
    #[arg(long)]
    pub(crate) no_bt: bool,
    /// A DHT node to join, ending in /p2p/PEER_ID (repeatable); peers of
    /// the torrent are then found through provider records.
    #[arg(long, value_parser = parse_multiaddr)]
    bootstrap: Vec<Multiaddr>,
    /// Do not discover peers on the local network.
    #[arg(long)]
    no_mdns: bool,
    /// A relay to hold a reservation on (repeatable), ending in
    /// /p2p/PEER_ID: behind NAT, peers reach this node through it and
    /// then connect directly by hole punching. Bootstrap nodes that
    /// serve as relays are used too until the node is known to be
    /// reachable.
    #[arg(long, value_parser = parse_multiaddr)]
    relay: Vec<Multiaddr>,
    /// An address others reach this node at (repeatable), e.g. a port the
    /// router forwards. Taken as confirmed (global addresses on the
    /// host's own interfaces are taken so too, until a dial-back fails).
    #[arg(long, value_parser = parse_multiaddr)]
    external_addr: Vec<Multiaddr>,
    /// Do not ask the router to forward a port (UPnP). Without it, a node
    /// listening on a private or any IPv4 address asks.
    #[arg(long)]
    no_upnp: bool,
    /// Serve as a relay for nodes behind NAT (`sluice node` always does).
    #[arg(long)]
    serve_relay: bool,
    /// As a relay: nodes holding a reservation at once.
    #[arg(long, default_value_t = sluice_swarm::reach::DEFAULT_RELAY_RESERVATIONS)]
    relay_max_reservations: usize,
    /// As a relay: relayed connections at once.
    #[arg(long, default_value_t = sluice_swarm::reach::DEFAULT_RELAY_CIRCUITS)]
    relay_max_circuits: usize,
    /// As a relay: bytes one relayed connection may carry before it is
    /// closed (metadata and hole punching fit; pieces do not cross relays).
    #[arg(long, value_parser = parse_size, default_value = "1MiB")]
    relay_circuit_bytes: u64,
    /// Let piece traffic cross relays (default: a peer met through a
    /// relay trades pieces once hole punching has connected it directly).
    #[arg(long)]
    relayed_pieces: bool,
    /// Serve the DHT from the start, not only once a peer has confirmed
    /// this node's address (for LAN or loopback swarms, where nobody
    /// does; `sluice node` always serves it).
    #[arg(long)]
    dht_server: bool,
    /// Incoming connections from one IP still in their handshake; beyond
    /// it, that IP's oldest is dropped (0: no limit) [default: 8].
    #[arg(long)]
    max_pending_per_ip: Option<usize>,
    /// Established incoming connections from one IP; beyond it, new ones
    /// are refused (0: no limit) [default: 64].
    #[arg(long)]
    max_established_per_ip: Option<u32>,
    /// Upload limit for the node, e.g. 5MB/s (loopback peers included).
    #[arg(long, value_parser = parse_rate)]
    pub(crate) up_rate: Option<u64>,
    /// Download limit for the node, e.g. 20MB/s.
    #[arg(long, value_parser = parse_rate)]
    pub(crate) down_rate: Option<u64>,
    /// Upload slots, one of them optimistic.
    #[arg(long, default_value_t = 4)]
    slots: u32,
    /// Whom a seeder's slots go to: the peers it uploads to fastest, each
    /// in turn (a quota of 4 MiB or 60 s), or those it has sent the least.
    #[arg(long, value_enum, default_value_t = SeedModeArg::FastestUpload)]
    seed_mode: SeedModeArg,
    /// Seconds between rechokes (who gets the upload slots).
    #[arg(long, default_value_t = 10.0, value_parser = parse_seconds)]
    rechoke: f64,
    /// Choking strategy: BitTorrent's tit-for-tat, or PropShare (upload
    /// in proportion to what each peer gave).
    #[arg(long, value_enum, default_value_t = ChokerArg::TitForTat)]
    choker: ChokerArg,
    /// Seconds between DHT provider lookups for each torrent.
    #[arg(long, default_value_t = 30.0, value_parser = parse_seconds, hide = true)]
    discovery_interval: f64,
    /// Bytes of checked pieces each torrent keeps in memory for upload.
    #[arg(long, value_parser = parse_size, default_value = "16MiB", hide = true)]
    read_cache: u64,
    /// Control API address (`sluice status`, `peers`, `top` and /metrics
    /// read it). Any address but loopback needs --api-token.
    #[arg(long, default_value = "127.0.0.1:0", env = "SLUICE_API")]
    api: SocketAddr,
    /// Bearer token the control API requires ($SLUICE_API_TOKEN).
    #[arg(long, env = "SLUICE_API_TOKEN", hide_env_values = true)]
    api_token: Option<String>,
    /// Read the API token from this file (first line).
    #[arg(long, conflicts_with = "api_token")]
    api_token_file: Option<PathBuf>,
    /// Serve no control API (wins over --api and its token, which may
    /// come from the environment).
    #[arg(long)]
    no_api: bool,
    /// Send blocks without checking them against the torrent first (by
    /// default a piece changed on disk is dropped, not served).
    #[arg(long)]
    no_verify_reads: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, clap::ValueEnum)]
pub(crate) enum ChokerArg {
    TitForTat,
    Propshare,
    /// Never unchoke anyone (what `sluice testnet --processes` runs for
    /// its free-riders).
    #[value(hide = true)]
    FreeRider,
}

fn parse_seconds(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && (0.05..=3600.0).contains(&v) => Ok(v),
        _ => Err(format!(
            "{s:?}: give seconds between 0.05 and 3600, e.g. 2 or 0.5"
        )),
    }
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub(crate) enum SeedModeArg {
    FastestUpload,
    RoundRobin,
    LeastServed,
}

/// Reads `--api-token` or `--api-token-file`.
pub(crate) fn api_token(token: Option<&str>, file: Option<&Path>) -> Result<Option<String>> {
    if let Some(t) = token {
        if t.trim().is_empty() {
            anyhow::bail!("--api-token is empty");
        }
        return Ok(Some(t.to_owned()));
    }
    let Some(file) = file else { return Ok(None) };
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("reading the API token from {}", file.display()))?;
    let token = text.lines().next().unwrap_or("").trim();
    if token.is_empty() {
        anyhow::bail!("{} holds no API token", file.display());
    }
    Ok(Some(token.to_owned()))
}

#[derive(Debug, clap::Args)]
pub(crate) struct SeedArgs {
    /// The file or directory to share.
    path: PathBuf,
    /// Its .torrent (default: make one, saved in the data dir).
    #[arg(long)]
    torrent: Option<PathBuf>,
    /// Write the file first, if it is not there, as `sluice testnet`
    /// generates it with this seed (`--on docker-swarm` seeders make their
    /// content where they run).
    #[arg(long, value_name = "SEED", requires = "torrent", hide = true)]
    testnet_content: Option<u64>,
    #[command(flatten)]
    net: NetArgs,
}

#[derive(Debug, clap::Args)]
pub(crate) struct GetArgs {
    /// What to download: a .torrent file, a magnet link (xt=urn:btmh:1220…
    /// and/or xt=urn:btih:…; its x.pe peers are dialed, its tr= trackers
    /// asked) or an info-hash (64 hex digits for v2, 40 for v1; peers come
    /// from --peer, the DHT or mDNS). The metadata of a link or hash comes
    /// from sluice nodes and from BitTorrent peers (ut_metadata).
    source: String,
    /// Directory to download into.
    #[arg(short, long)]
    output: PathBuf,
    /// Also write the .torrent (fetched from peers for a link) here.
    #[arg(long)]
    save_torrent: Option<PathBuf>,
    /// Largest metadata (info dict plus piece layers) taken from peers.
    #[arg(long, value_parser = parse_size, default_value = "16MiB")]
    max_metadata: u64,
    /// Disk write queue: requested plus unwritten bytes never exceed it.
    #[arg(long, value_parser = parse_size, default_value = "64MiB")]
    disk_queue: u64,
    /// Emulate a disk this fast, e.g. 20MB/s.
    #[arg(long, value_parser = parse_rate)]
    disk_rate: Option<u64>,
    /// Give up after SECS without the whole torrent: exit 1, progress kept
    /// (run again to resume).
    #[arg(long, value_name = "SECS", value_parser = parse_timeout)]
    timeout: Option<Duration>,
    /// Keep seeding after the download completes, until Ctrl-C.
    #[arg(long)]
    seed_after: bool,
    #[command(flatten)]
    net: NetArgs,
}

fn parse_timeout(s: &str) -> Result<Duration, String> {
    match s.parse::<f64>() {
        Ok(secs) if secs.is_finite() && secs > 0.0 && secs < 1e9 => {
            Ok(Duration::from_secs_f64(secs))
        }
        _ => Err(format!("{s:?} is not a positive number of seconds")),
    }
}

/// What a node with no peer yet waits for, in one line.
fn waiting_for(net: &NetArgs, trackers: usize, bt_peers: usize, libp2p_peers: usize) -> String {
    let mut parts = Vec::new();
    if libp2p_peers + bt_peers > 0 {
        parts.push(format!("{} given peers (retried)", libp2p_peers + bt_peers));
    }
    if trackers > 0 {
        parts.push(format!("{trackers} trackers"));
    }
    if net.bootstrap.is_empty() {
        parts.push("no DHT (no --bootstrap)".to_owned());
    } else {
        parts.push(format!("the DHT ({} bootstrap nodes)", net.bootstrap.len()));
    }
    parts.push(if net.no_mdns {
        "no mDNS".to_owned()
    } else {
        "mDNS on the local network".to_owned()
    });
    parts.join(", ")
}

/// `sluice node`: no torrent, only the DHT.
#[derive(Debug, clap::Args)]
pub(crate) struct NodeArgs {
    #[command(flatten)]
    net: NetArgs,
}

pub(crate) fn default_data_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("SLUICE_DATA_DIR") {
        return d.into();
    }
    let base = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("sluice")
}

/// Most one-shot nodes that share a default data dir: `DEFAULT/instances/1`
/// to this.
const MAX_INSTANCES: u32 = 16;

/// A one-shot `seed` or `get` given no data dir: the default one, or when
/// another sluice holds it (a daemon, another `get`), the first free
/// `DEFAULT/instances/N`, said on stderr. A data dir the user chose is
/// theirs: in use, it is an error as before.
///
/// The dir is returned locked (two one-shots started together never pick
/// the same one); the caller's node runs in it (`start_in`).
fn one_shot_data_dir(net: &mut NetArgs) -> Result<sluice_node::datadir::DataDir> {
    use sluice_node::datadir::{DataDir, DataDirError};
    let open = |dir: &Path| {
        DataDir::open(dir).with_context(|| format!("starting a node in {}", dir.display()))
    };
    let default = match &net.data_dir {
        Some(chosen) => return open(chosen),
        None => default_data_dir(),
    };
    match DataDir::open(&default) {
        Err(DataDirError::Locked { .. }) => {}
        other => {
            net.data_dir = Some(default.clone());
            return other.with_context(|| format!("starting a node in {}", default.display()));
        }
    }
    for n in 1..=MAX_INSTANCES {
        let dir = default.join("instances").join(n.to_string());
        match DataDir::open(&dir) {
            Err(DataDirError::Locked { .. }) => continue,
            locked => {
                eprintln!(
                    "note: {} is in use by another sluice; this one keeps its state in {} \
                     (sluice status --data-dir {} finds it)",
                    default.display(),
                    dir.display(),
                    dir.display()
                );
                net.data_dir = Some(dir.clone());
                return locked.with_context(|| format!("starting a node in {}", dir.display()));
            }
        }
    }
    // Every one taken: the default's error says so.
    open(&default)
}

/// A per-IP limit as the flags give it: absent is the default, 0 none.
fn per_ip<T: PartialEq + Default>(flag: Option<T>, default: T) -> Option<T> {
    match flag {
        None => Some(default),
        Some(n) if n == T::default() => None,
        n => n,
    }
}

/// The one place CLI flags become a node configuration.
pub(crate) fn node_config(
    net: &NetArgs,
    disk_queue: Option<u64>,
    disk_rate: Option<u64>,
) -> Result<NodeConfig> {
    let seed_mode = match net.seed_mode {
        SeedModeArg::FastestUpload => SeedMode::FastestUpload,
        SeedModeArg::RoundRobin => SeedMode::RoundRobin {
            quota: 4 * 1024 * 1024,
            max_time: Duration::from_secs(60),
        },
        SeedModeArg::LeastServed => SeedMode::LeastServed,
    };
    let tft = TitForTatConfig::default()
        .with_slots(net.slots)
        .with_rechoke_interval(Duration::from_secs_f64(net.rechoke))
        .with_seed_mode(seed_mode);
    let choker = match net.choker {
        ChokerArg::TitForTat => ChokerChoice::TitForTat(tft),
        ChokerArg::Propshare => {
            ChokerChoice::PropShare(PropShareConfig::default().with_tit_for_tat(tft))
        }
        ChokerArg::FreeRider => ChokerChoice::FreeRider,
    };
    // By default TCP and QUIC on IPv4 and, where the host has it, IPv6
    // (each on a port of its own).
    let parse = |addrs: &[&str]| -> Vec<Multiaddr> {
        addrs
            .iter()
            .map(|a| a.parse().expect("valid multiaddrs"))
            .collect()
    };
    let (listen, optional) = if net.listen.is_empty() {
        (
            parse(&["/ip4/0.0.0.0/tcp/0", "/ip4/0.0.0.0/udp/0/quic-v1"]),
            parse(&["/ip6/::/tcp/0", "/ip6/::/udp/0/quic-v1"]),
        )
    } else {
        (net.listen.clone(), net.listen_optional.clone())
    };
    let api = (!net.no_api)
        .then(|| -> Result<ApiConfig> {
            Ok(ApiConfig {
                addr: net.api,
                token: api_token(net.api_token.as_deref(), net.api_token_file.as_deref())?,
                write_token: None,
            })
        })
        .transpose()?;
    let upnp = !net.no_upnp && upnp_applies(&listen);
    let mut config = NodeConfig::new(net.data_dir.clone().unwrap_or_else(default_data_dir))
        .with_api(api)
        .with_identity_file(net.identity.clone())
        .with_listen(listen)
        .with_optional_listen(optional)
        .with_bt_listen((!net.no_bt).then_some(net.bt_listen))
        .with_mdns(!net.no_mdns)
        .with_bootstrap(net.bootstrap.clone())
        .with_upnp(upnp)
        .with_relays(net.relay.clone())
        .with_external_addrs(net.external_addr.clone())
        .with_relay_server(net.serve_relay.then(|| net.relay_limits()))
        .with_relayed_pieces(net.relayed_pieces)
        .with_dht_server(net.dht_server)
        .with_up_rate(net.up_rate)
        .with_down_rate(net.down_rate)
        .with_disk_rate(disk_rate)
        .with_verify_reads(!net.no_verify_reads)
        .with_discovery_interval(Duration::from_secs_f64(net.discovery_interval))
        .with_read_cache(usize::try_from(net.read_cache).unwrap_or(usize::MAX))
        .with_torrent(TorrentConfig::default().with_choker(choker))
        .with_per_ip_limits(
            per_ip(
                net.max_pending_per_ip,
                sluice_swarm::admission::DEFAULT_MAX_PENDING_PER_IP,
            ),
            per_ip(
                net.max_established_per_ip,
                sluice_swarm::transport::DEFAULT_MAX_ESTABLISHED_PER_IP,
            ),
        );
    if let Some(q) = disk_queue {
        config = config.with_disk_queue(q);
    }
    Ok(config)
}

pub(crate) fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// Whether a router could map one of these listen addresses: UPnP maps
/// private IPv4 ones (`0.0.0.0` stands for them all); a node on loopback
/// or on public addresses has nothing to ask for, and sends nothing.
fn upnp_applies(listen: &[Multiaddr]) -> bool {
    listen.iter().any(|a| {
        matches!(
            a.iter().next(),
            Some(sluice_node::multiaddr::Protocol::Ip4(ip)) if ip.is_unspecified() || ip.is_private()
        )
    })
}

impl NetArgs {
    /// The limits a relay served from this node keeps.
    fn relay_limits(&self) -> sluice_swarm::reach::RelayLimits {
        sluice_swarm::reach::RelayLimits {
            max_reservations: self.relay_max_reservations.max(1),
            max_circuits: self.relay_max_circuits.max(1),
            circuit_bytes: self.relay_circuit_bytes.max(1),
            ..sluice_swarm::reach::RelayLimits::default()
        }
    }

    /// The BitTorrent peers given; an error if BitTorrent is off.
    fn bt_peers(&self) -> Result<Vec<SocketAddr>> {
        let peers: Vec<SocketAddr> = self
            .peer
            .iter()
            .filter_map(|p| match p {
                PeerArg::Bt(a) => Some(*a),
                PeerArg::Libp2p(_) => None,
            })
            .collect();
        if self.no_bt && !peers.is_empty() {
            anyhow::bail!(
                "--peer {} is a BitTorrent peer, but --no-bt turns BitTorrent off",
                peers[0]
            );
        }
        Ok(peers)
    }

    /// The libp2p peers given.
    pub(crate) fn libp2p_peers(&self) -> Vec<Multiaddr> {
        self.peer
            .iter()
            .filter_map(|p| match p {
                PeerArg::Libp2p(a) => Some(a.clone()),
                PeerArg::Bt(_) => None,
            })
            .collect()
    }
}

/// Dials the BitTorrent peers given for a torrent (in the background,
/// with retries).
fn connect_bt(node: &NodeHandle, torrent: &TorrentHandle, peers: &[SocketAddr]) -> Result<()> {
    for &addr in peers {
        node.add_bt_peer(torrent.info_hash(), addr)?;
    }
    Ok(())
}

/// Prints where BitTorrent peers reach us (a wildcard address as
/// 127.0.0.1, which always works from this machine).
pub(crate) fn print_bt(node: &NodeHandle) {
    if let Some(mut addr) = node.bt_addr() {
        if addr.ip().is_unspecified() {
            addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        println!("bittorrent: {addr}");
    }
}

pub(crate) async fn start(config: NodeConfig, peers: &[Multiaddr]) -> Result<NodeHandle> {
    start_in(config, None, peers).await
}

/// [`start`] in a data dir locked already (`locked`), or locking it now.
async fn start_in(
    config: NodeConfig,
    locked: Option<sluice_node::datadir::DataDir>,
    peers: &[Multiaddr],
) -> Result<NodeHandle> {
    let dir = config.data_dir().to_owned();
    let node = match locked {
        Some(d) => Node::start_in(config, d).await,
        None => Node::start(config).await,
    }
    .with_context(|| format!("starting a node in {}", dir.display()))?;
    // All at once; one unreachable peer must not keep us from the others
    // (or from peers that mDNS and the DHT find later).
    let dials = peers.iter().map(|p| {
        let node = node.clone();
        async move { (p, node.dial(p.clone()).await) }
    });
    for (p, result) in futures::future::join_all(dials).await {
        if let Err(e) = result {
            eprintln!("warning: cannot connect to {p}: {e}; trying again in the background");
            node.keep_dialing(p.clone());
        }
    }
    Ok(node)
}

fn print_api(node: &NodeHandle) {
    if let Some(addr) = node.api_addr() {
        println!("api:       http://{addr} (sluice status / peers / top; /metrics)");
    }
}

fn read_torrent(path: &Path) -> Result<Arc<Metainfo>> {
    crate::read_torrent(path).map(Arc::new)
}

/// The data dir's index of what `seed PATH` made: for each path, the
/// torrent and the fingerprint of the files it was made from.
const SEEDS_FILE: &str = "seeds.json";
/// Paths the index remembers (the oldest go first).
const MAX_SEEDS: usize = 1024;

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Seeded {
    path: PathBuf,
    fingerprint: String,
    info_hash: String,
}

/// What `PATH`'s files are as far as a re-hash could tell: each file's
/// place, size and modification time, hashed; and their total size.
fn fingerprint(path: &Path) -> Result<(String, u64)> {
    use sha2::Digest as _;
    let (_, files) = sluice_storage::create::scan(path)?;
    let mut h = sha2::Sha256::new();
    for f in &files {
        let meta = std::fs::metadata(&f.disk_path)
            .with_context(|| format!("reading {}", f.disk_path.display()))?;
        let mtime = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        h.update(f.path.join("/").as_bytes());
        h.update([0]);
        h.update(f.length.to_le_bytes());
        h.update(mtime.to_le_bytes());
    }
    Ok((
        hex::encode(h.finalize()),
        files.iter().map(|f| f.length).sum(),
    ))
}

/// The torrent `seed PATH` shares: the one made from these very files
/// before (same sizes and modification times: nothing is hashed again),
/// else a new one, hashed once with a progress bar; its pieces are then
/// known good, so the node does not check them a second time.
fn seeded_torrent(path: &Path, data_dir: &Path) -> Result<Arc<Metainfo>> {
    let index_path = data_dir.join(SEEDS_FILE);
    let mut index: Vec<Seeded> = std::fs::read(&index_path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    let key = std::path::absolute(path).with_context(|| format!("{}", path.display()))?;
    let (before, total) = fingerprint(path)?;
    let torrents = data_dir.join("torrents");
    let known = index
        .iter()
        .find(|e| e.path == key && e.fingerprint == before)
        .map(|e| torrents.join(format!("{}.torrent", e.info_hash)));
    if let Some(file) = known
        && let Ok(meta) = read_torrent(&file)
    {
        println!(
            "torrent:   {} (files unchanged: not hashed again)",
            file.display()
        );
        return Ok(meta);
    }
    let done = Arc::new(AtomicU64::new(0));
    let meta = {
        let _bar = crate::Progress::start("hashing", total, Arc::clone(&done));
        sluice_storage::create(path, &CreateOptions::default(), &done)?
    };
    let ih = meta.info().info_hash();
    let file = torrents.join(format!("{ih}.torrent"));
    std::fs::create_dir_all(&torrents)
        .with_context(|| format!("creating {}", torrents.display()))?;
    sluice_storage::resume::write_atomically(&file, meta.to_bytes())
        .with_context(|| format!("writing {}", file.display()))?;
    println!("torrent:   {}", file.display());
    // Unchanged while it was hashed: every piece is as hashed.
    if fingerprint(path)?.0 == before {
        let pieces = sluice_storage::Layout::new(meta.info()).num_pieces() as usize;
        let resume = data_dir.join("resume").join(format!("{ih}.resume"));
        if let Some(dir) = resume.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        sluice_storage::resume::save(&resume, ih, &sluice_storage::Bitfield::repeat(true, pieces))
            .with_context(|| format!("writing {}", resume.display()))?;
        index.retain(|e| e.path != key);
        if index.len() >= MAX_SEEDS {
            index.remove(0);
        }
        index.push(Seeded {
            path: key,
            fingerprint: before,
            info_hash: ih.to_string(),
        });
        let bytes = serde_json::to_vec_pretty(&index)?;
        sluice_storage::resume::write_atomically(&index_path, &bytes)
            .with_context(|| format!("writing {}", index_path.display()))?;
    }
    Ok(Arc::new(meta))
}

pub(crate) fn seed(mut args: SeedArgs) -> Result<ExitCode> {
    if let (Some(seed), Some(torrent)) = (args.testnet_content, &args.torrent)
        && !args.path.exists()
    {
        let size = read_torrent(torrent)?.info().total_size();
        sluice_testnet::run::write_content_atomically(&args.path, size, seed)?;
    }
    if !args.path.exists() {
        anyhow::bail!("{} does not exist", args.path.display());
    }
    // Locked before anything is written in it: a data dir another node
    // runs in gets no seeds index or resume file of ours.
    let locked = one_shot_data_dir(&mut args.net)?;
    let config = node_config(&args.net, None, None)?;
    let bt_peers = args.net.bt_peers()?;
    let meta = match &args.torrent {
        Some(t) => read_torrent(t)?,
        None => seeded_torrent(&args.path, config.data_dir())?,
    };
    runtime()?.block_on(async move {
        let node = start_in(config, Some(locked), &args.net.libp2p_peers()).await?;
        let content = crate::content_at(meta.info(), &args.path);
        let torrent = node.add_torrent(Arc::clone(&meta), content).await?;
        connect_bt(&node, &torrent, &bt_peers)?;
        let s = torrent.stats();
        if s.verified_pieces < s.total_pieces {
            eprintln!(
                "warning: only {}/{} pieces of {} match the torrent; seeding those",
                s.verified_pieces,
                s.total_pieces,
                args.path.display()
            );
        }
        let addrs = node.listen_addrs().await;
        let mut magnet = crate::magnet_of(&meta);
        // Hints others can dial: behind NAT, the relayed addresses (once a
        // relay has given one), never private or loopback ones.
        magnet.peers = node.advertised_addrs(RESERVATION_WAIT).await;
        println!("info-hash: {}", meta.info().info_hash());
        println!("magnet:    {magnet}");
        for a in addrs {
            println!("peer:      {a}");
        }
        print_bt(&node);
        print_api(&node);
        println!("seeding; Ctrl-C to stop");
        until_ctrl_c(node).await
    })
}

/// How long `seed` waits for an external address (a relay reservation, a
/// dial-back, a UPnP mapping) before printing its magnet link, when
/// relays or bootstrap nodes are given.
const RESERVATION_WAIT: Duration = Duration::from_secs(10);

/// Until Ctrl-C or SIGTERM; an error if the node stops on its own first
/// (its network task failed).
pub(crate) async fn until_stop(stops: &mut Stops, node: &NodeHandle) -> Result<()> {
    tokio::select! {
        _ = stops.recv() => Ok(()),
        () = node.failed() => Err(anyhow::anyhow!(NETWORK_FAILED)),
    }
}

/// What a command says when its node stopped on its own.
const NETWORK_FAILED: &str = "the node's network task failed (a bug: the panic is above) and the node stopped; run the same command to resume";

/// Serves until Ctrl-C or SIGTERM, then stops the node cleanly.
async fn until_ctrl_c(node: NodeHandle) -> Result<ExitCode> {
    let mut stops = Stops::new()?;
    until_stop(&mut stops, &node).await?;
    eprintln!("stopping…");
    node.shutdown().await.map_err(anyhow::Error::msg)?;
    Ok(ExitCode::SUCCESS)
}

/// SIGINT (Ctrl-C) and SIGTERM (`kill`, systemd, Docker), as one stream of
/// requests to stop: the first asks for a clean stop (queued writes
/// finish, resume files flush, the `api` file goes); a second, while that
/// stop runs, ends the process at once with exit code 130.
pub(crate) struct Stops {
    int: Signal,
    term: Signal,
    armed: bool,
}

impl Stops {
    /// Must run inside the runtime.
    pub(crate) fn new() -> Result<Self> {
        let listen = |kind| tokio::signal::unix::signal(kind).context("listening for signals");
        Ok(Self {
            int: listen(SignalKind::interrupt())?,
            term: listen(SignalKind::terminate())?,
            armed: false,
        })
    }

    /// The next stop request.
    ///
    /// Cancel-safe.
    pub(crate) async fn recv(&mut self) {
        tokio::select! {
            _ = self.int.recv() => {}
            _ = self.term.recv() => {}
        }
        if !self.armed {
            self.armed = true;
            tokio::spawn(async {
                // Listeners of our own: these stay while the stop runs.
                if let Ok(mut again) = Stops::new() {
                    tokio::select! {
                        _ = again.int.recv() => {}
                        _ = again.term.recv() => {}
                    }
                    eprintln!("stopping at once");
                    std::process::exit(i32::from(EXIT_INTERRUPTED));
                }
            });
        }
    }
}

/// What `sluice get` was given.
enum Source {
    /// A `.torrent` read from a file, or saved by an earlier fetch.
    Torrent(Arc<Metainfo>),
    /// Metadata to fetch from peers (those hinted, then any found).
    Fetch {
        info_hash: InfoHash,
        hints: Vec<Multiaddr>,
    },
}

/// What a magnet link adds to `--peer` and the torrent's own trackers.
#[derive(Debug, Default)]
struct LinkHints {
    bt_peers: Vec<SocketAddr>,
    trackers: Vec<String>,
}

fn link_hints(arg: &str) -> LinkHints {
    match arg.parse::<Magnet>() {
        Ok(m) if arg.starts_with("magnet:") => LinkHints {
            bt_peers: m.bt_peers,
            trackers: m.trackers,
        },
        _ => LinkHints::default(),
    }
}

fn parse_source(arg: &str) -> Result<Source> {
    if arg.starts_with("magnet:") {
        let m: Magnet = arg.parse().map_err(anyhow::Error::msg)?;
        return Ok(Source::Fetch {
            info_hash: m.info_hash,
            hints: m.peers,
        });
    }
    let path = Path::new(arg);
    let hex_hash = matches!(arg.len(), 40 | 64) && arg.bytes().all(|b| b.is_ascii_hexdigit());
    if !path.exists() && hex_hash {
        let info_hash = arg.parse().map_err(anyhow::Error::msg)?;
        return Ok(Source::Fetch {
            info_hash,
            hints: Vec::new(),
        });
    }
    if !path.exists() {
        anyhow::bail!(
            "{arg}: no such file, and not a magnet link (magnet:?xt=…) or an info-hash (64 hex digits for v2, 40 for v1)"
        );
    }
    Ok(Source::Torrent(read_torrent(path)?))
}

/// Where a fetched `.torrent` is kept, so a second run resumes without
/// asking anyone.
fn saved_torrent(data_dir: &Path, ih: InfoHash) -> PathBuf {
    data_dir.join("torrents").join(format!("{ih}.torrent"))
}

fn save_torrent(path: &Path, meta: &Metainfo) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    sluice_storage::resume::write_atomically(path, meta.to_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

pub(crate) fn get(mut args: GetArgs) -> Result<ExitCode> {
    let mut source = parse_source(&args.source)?;
    if args.output.exists() && !args.output.is_dir() {
        anyhow::bail!(
            "{} is not a directory; -o takes the directory to download into",
            args.output.display()
        );
    }
    let locked = one_shot_data_dir(&mut args.net)?;
    let config = node_config(&args.net, Some(args.disk_queue), args.disk_rate)?;
    let hints = if args.net.no_bt {
        LinkHints::default()
    } else {
        link_hints(&args.source)
    };
    let mut bt_peers = args.net.bt_peers()?;
    bt_peers.extend(&hints.bt_peers);
    let data_dir = config.data_dir().to_owned();
    if let Source::Fetch { info_hash, .. } = &source {
        // Fetched before: resume without asking anyone.
        let saved = saved_torrent(&data_dir, *info_hash);
        if let Ok(meta) = read_torrent(&saved)
            && meta.info().known_by(info_hash)
        {
            source = Source::Torrent(meta);
        }
    }
    if let (Source::Torrent(meta), Some(path)) = (&source, &args.save_torrent) {
        save_torrent(path, meta)?;
    }
    std::fs::create_dir_all(&args.output)
        .with_context(|| format!("creating {}", args.output.display()))?;
    runtime()?.block_on(async move {
        // One listener for the whole run: a Ctrl-C between the download
        // and seeding after it is not lost between two listeners.
        let mut interrupts = Stops::new()?;
        let mut peers = args.net.libp2p_peers();
        if let Source::Fetch { hints, .. } = &source {
            peers.extend(hints.iter().cloned());
        }
        // Until the torrent is added (dials, a recheck of data already
        // there) nothing is ours to save: Ctrl-C ends at once, as it did
        // before this listener replaced the default.
        let node = tokio::select! {
            r = start_in(config, Some(locked), &peers) => r?,
            _ = interrupts.recv() => interrupted_while("starting"),
        };
        let deadline = args.timeout.map(|t| tokio::time::Instant::now() + t);
        let waiting = waiting_for(
            &args.net,
            hints.trackers.len() + usize::from(matches!(&source, Source::Torrent(m) if !m.trackers().is_empty())),
            bt_peers.len(),
            peers.len(),
        );
        let meta = match source {
            Source::Torrent(meta) => meta,
            Source::Fetch { info_hash, .. } => {
                eprintln!("fetching the torrent's metadata ({info_hash}) from peers…");
                let fetch = node.fetch_metadata_with(
                    info_hash,
                    args.max_metadata,
                    bt_peers.clone(),
                    hints.trackers.clone(),
                );
                tokio::pin!(fetch);
                let mut note = tokio::time::interval(WAITING_NOTE);
                note.tick().await;
                let fetched = loop {
                    tokio::select! {
                        r = &mut fetch => break r?,
                        _ = interrupts.recv() => {
                            eprintln!("interrupted before the metadata arrived");
                            node.clone().shutdown().await.map_err(anyhow::Error::msg)?;
                            return Ok(ExitCode::from(EXIT_INTERRUPTED));
                        }
                        () = until(deadline) => {
                            eprintln!("gave up: no metadata within --timeout");
                            node.clone().shutdown().await.map_err(anyhow::Error::msg)?;
                            return Ok(ExitCode::from(EXIT_TIMED_OUT));
                        }
                        _ = note.tick() => eprintln!(
                            "still waiting for the metadata: {} nodes connected; asking {waiting}",
                            node.connected_peers().len()
                        ),
                    }
                };
                let saved = saved_torrent(&data_dir, info_hash);
                save_torrent(&saved, &fetched)?;
                if let Some(path) = &args.save_torrent {
                    save_torrent(path, &fetched)?;
                }
                eprintln!(
                    "metadata: {} ({}, {} files), saved in {}",
                    fetched.info().name(),
                    format_size(fetched.info().total_size()),
                    fetched.info().files().len(),
                    saved.display()
                );
                Arc::new(fetched)
            }
        };
        let info = meta.info();
        let content = if info.is_single_file() {
            args.output.join(&info.files()[0].path[0])
        } else {
            args.output.join(info.name())
        };
        let torrent = tokio::select! {
            r = node.add_torrent(Arc::clone(&meta), content.clone()) => r?,
            _ = interrupts.recv() => interrupted_while("opening the torrent"),
        };
        connect_bt(&node, &torrent, &bt_peers)?;
        if !hints.trackers.is_empty() {
            node.add_trackers(torrent.info_hash(), hints.trackers)?;
        }
        if let Some(addr) = node.api_addr() {
            tracing::info!(%addr, "control API (sluice status / peers / top)");
        }
        let finished = tokio::select! {
            f = follow(&torrent, &mut interrupts, deadline, &waiting) => f,
            () = node.failed() => anyhow::bail!(NETWORK_FAILED),
        };
        let code = match finished {
            Finished::Complete => {
                println!("{} complete: {}", meta.info().name(), content.display());
                if args.seed_after {
                    println!("seeding; Ctrl-C to stop");
                    for a in node.listen_addrs().await {
                        println!("peer:      {a}");
                    }
                    print_bt(&node);
                    print_api(&node);
                    until_stop(&mut interrupts, &node).await?;
                    eprintln!("stopping…");
                }
                ExitCode::SUCCESS
            }
            Finished::Interrupted => {
                eprintln!("interrupted; progress is saved, run the same command to resume");
                ExitCode::from(EXIT_INTERRUPTED)
            }
            Finished::TimedOut => {
                let s = torrent.stats();
                eprintln!(
                    "gave up after --timeout with {} of {} pieces; progress is saved, run the same command to resume",
                    s.verified_pieces, s.total_pieces
                );
                ExitCode::from(EXIT_TIMED_OUT)
            }
        };
        node.shutdown().await.map_err(anyhow::Error::msg)?;
        Ok(code)
    })
}

pub(crate) fn node(args: NodeArgs) -> Result<ExitCode> {
    // A bootstrap node: on a public host, it serves the DHT and relays for
    // nodes behind NAT.
    let config = node_config(&args.net, None, None)?
        .with_dht_server(true)
        .with_relay_server(Some(args.net.relay_limits()));
    runtime()?.block_on(async move {
        if !args.net.bt_peers()?.is_empty() {
            anyhow::bail!(
                "sluice node serves no torrent: BitTorrent peers (HOST:PORT) need seed or get"
            );
        }
        let node = start(config, &args.net.libp2p_peers()).await?;
        for a in node.listen_addrs().await {
            println!("peer:      {a}");
        }
        print_api(&node);
        println!("serving the DHT (pass a peer line to --bootstrap); Ctrl-C to stop");
        until_ctrl_c(node).await
    })
}

/// Ends the process on Ctrl-C before there is anything to save.
fn interrupted_while(what: &str) -> ! {
    eprintln!("interrupted while {what}");
    std::process::exit(i32::from(EXIT_INTERRUPTED))
}

enum Finished {
    Complete,
    Interrupted,
    TimedOut,
}

/// How often a fetch with nobody to ask says what it waits for.
const WAITING_NOTE: Duration = Duration::from_secs(15);

/// `deadline`, or never.
async fn until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// A progress bar until the torrent is complete (verified and flushed) or
/// Ctrl-C.
async fn follow(
    torrent: &TorrentHandle,
    interrupts: &mut Stops,
    deadline: Option<tokio::time::Instant>,
    waiting: &str,
) -> Finished {
    let stats = torrent.stats();
    let bar = indicatif::ProgressBar::new(stats.size);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:30} {bytes}/{total_bytes} {msg}")
            .expect("the template is valid")
            .progress_chars("=> "),
    );
    let mut rx = torrent.watch();
    let mut refresh = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            _ = interrupts.recv() => {
                bar.abandon();
                return Finished::Interrupted;
            }
            () = until(deadline) => {
                bar.abandon();
                return Finished::TimedOut;
            }
            _ = refresh.tick() => {}
            changed = rx.changed() => if changed.is_err() {
                bar.abandon();
                return Finished::Interrupted;
            },
        }
        let s = rx.borrow_and_update().clone();
        show(&bar, &s, waiting);
        if s.complete {
            bar.finish_and_clear();
            return Finished::Complete;
        }
    }
}

/// `42s`, `3m 05s`, `2h 10m`.
pub(crate) fn format_eta(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m {:02}s", s / 60, s % 60),
        _ => format!("{}h {:02}m", s / 3600, s / 60 % 60),
    }
}

fn show(bar: &indicatif::ProgressBar, s: &TorrentStats, waiting: &str) {
    if s.peers.is_empty() && !s.complete {
        bar.set_message(format!("no peers yet; asking {waiting}"));
        return;
    }
    let done =
        (s.size as f64 * f64::from(s.verified_pieces) / f64::from(s.total_pieces.max(1))) as u64;
    bar.set_position(done);
    let disk = s.disk.used_bytes();
    let error = s
        .disk_error
        .as_ref()
        .map(|e| format!(", paused: {e}"))
        .unwrap_or_default();
    let eta = s
        .eta()
        .map(|d| format!(", ETA {}", format_eta(d)))
        .unwrap_or_default();
    bar.set_message(format!(
        "{}/s{eta}, {} peers, disk queue {}/{}{error}",
        format_size(s.down_rate as u64),
        s.peers.len(),
        format_size(disk),
        format_size(s.disk.capacity_bytes),
    ));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etas_read_as_people_write_them() {
        let eta = |s| format_eta(Duration::from_secs(s));
        assert_eq!(eta(0), "0s");
        assert_eq!(eta(59), "59s");
        assert_eq!(eta(185), "3m 05s");
        assert_eq!(eta(7800), "2h 10m");
    }
}
