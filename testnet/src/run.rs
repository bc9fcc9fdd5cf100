//! Running a testnet: generate the content, start real nodes (each with
//! its own identity, data dir, control API and 127.0.0.1 sockets) in this
//! process or, with `processes`, as `sluice` processes, connect them,
//! apply the events, sample every node and stop when every downloading
//! node is done.

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use rand::seq::SliceRandom;
use rand::{RngCore, SeedableRng};
use sluice_choke::{PropShareConfig, TitForTatConfig};
use sluice_node::api::ApiConfig;
use sluice_node::{Multiaddr, Node, NodeConfig, NodeHandle};
use sluice_storage::{CreateOptions, Metainfo};
use sluice_swarm::torrent::{ChokerChoice, TorrentConfig, TorrentHandle};
use tracing::{info, warn};

use crate::config::{
    Action, ChokerKind, Client, Config, Discovery, NodePlan, Platform, Role, Transport,
};
use crate::docker::{Container, Stack, StackSpec};
use crate::libtorrent::{LtProc, LtSpec, LtStatus};
use crate::process::Proc;
use crate::report::{NodeReport, Report, Sample};

/// How often every node is sampled.
pub const SAMPLE_INTERVAL: Duration = Duration::from_millis(250);
/// How long a starting node waits for each dial.
const DIAL_WAIT: Duration = Duration::from_secs(20);
/// How often each node asks the DHT for providers (with DHT discovery).
const DHT_ROUND: Duration = Duration::from_secs(1);
/// How long a stack has from its deploy until every seeder serves: this,
/// plus the time to write and hash the content at `CONTENT_RATE` bytes/s.
const STACK_START_WAIT: Duration = Duration::from_secs(300);
const CONTENT_RATE: u64 = 20_000_000;
/// How often a stack's tasks are looked at while some node has not
/// answered yet, and after.
const STACK_POLL: Duration = Duration::from_secs(1);
const STACK_CHECK: Duration = Duration::from_secs(5);
/// Samples kept per node (about 80 minutes at the interval above); later
/// samples are not recorded.
pub const MAX_SAMPLES: usize = 20_000;
/// Each node's read cache: 2 MiB rather than the default 16, or a
/// 100-node testnet would hold 1.6 GiB of read caches.
const READ_CACHE: usize = 2 * 1024 * 1024;

/// One node as the live view shows it.
#[derive(Debug, Clone)]
pub struct NodeView {
    pub name: String,
    pub role: Role,
    pub client: Client,
    pub slow_disk: bool,
    /// Started and not left.
    pub running: bool,
    pub left: bool,
    pub progress: f64,
    pub complete: bool,
    pub down_rate: f64,
    pub up_rate: f64,
    pub peers: usize,
    /// Peers we upload to (unchoked) and peers we refuse (choked).
    pub unchoked: usize,
    pub choked: usize,
    pub disk_used: u64,
    pub disk_capacity: u64,
}

/// An address a starting node dials.
#[derive(Debug, Clone)]
enum Dial {
    Libp2p(Multiaddr),
    Bt(SocketAddr),
}

/// A running node: in this process, or a `sluice` process.
#[derive(Debug)]
enum Member {
    Local {
        node: NodeHandle,
        torrent: Option<TorrentHandle>,
    },
    Process(Proc),
    /// A libtorrent 2.0 process.
    Libtorrent(LtProc),
    /// A container of a Docker Swarm stack (`--on docker-swarm`).
    Container(Container),
}

impl Member {
    fn peer_id(&self) -> String {
        match self {
            Member::Local { node, .. } => node.peer_id().to_string(),
            Member::Process(p) => p.peer_id.clone(),
            Member::Libtorrent(p) => format!("libtorrent@{}", p.addr),
            Member::Container(c) => c.peer_id.clone(),
        }
    }

    /// Its BitTorrent peer id as others' peer lists show it (sluice
    /// nodes).
    fn bt_label(&self) -> Option<String> {
        match self {
            Member::Local { node, .. } => node.bt_peer_label(),
            Member::Process(p) => p.bt_label.clone(),
            Member::Libtorrent(_) | Member::Container(_) => None,
        }
    }

    /// Where it takes BitTorrent peers.
    fn bt_addr(&self) -> Option<SocketAddr> {
        match self {
            Member::Local { node, .. } => node.bt_addr(),
            Member::Process(p) => p.bt_addr,
            Member::Libtorrent(p) => Some(p.addr),
            Member::Container(_) => None,
        }
    }

    fn api_addr(&self) -> Option<SocketAddr> {
        match self {
            Member::Local { node, .. } => node.api_addr(),
            Member::Process(p) => Some(p.api_addr()),
            Member::Container(c) => Some(c.api_addr()),
            Member::Libtorrent(_) => None,
        }
    }

    /// An address to dial it at (with its `/p2p/` id for a process).
    async fn listen_addr(&self) -> Option<Multiaddr> {
        match self {
            Member::Local { node, .. } => tokio::time::timeout(DIAL_WAIT, node.listen_addrs())
                .await
                .ok()
                .and_then(|a| a.into_iter().next()),
            Member::Process(p) => p.dial_addr(),
            Member::Libtorrent(_) | Member::Container(_) => None,
        }
    }

    /// What its torrent looks like now; `None` while it has none (or a
    /// process does not answer).
    async fn snapshot(&self, info_hash: &str) -> Option<Snapshot> {
        match self {
            Member::Local { torrent, .. } => torrent.as_ref().map(|t| Snapshot::local(&t.stats())),
            Member::Process(p) if p.netns.is_some() => {
                let (torrent, node) = tokio::join!(p.torrent(info_hash), p.node_info());
                torrent.map(|(t, peers)| Snapshot {
                    node,
                    ..Snapshot::remote(&t, &peers)
                })
            }
            Member::Process(p) => p
                .torrent(info_hash)
                .await
                .map(|(t, peers)| Snapshot::remote(&t, &peers)),
            Member::Libtorrent(p) => p.status().map(|s| Snapshot::libtorrent(&s)),
            Member::Container(c) => c
                .torrent(info_hash)
                .await
                .map(|(t, peers)| Snapshot::remote(&t, &peers)),
        }
    }

    async fn stop(self) -> Result<()> {
        match self {
            Member::Local { node, .. } => node.shutdown().await.map_err(anyhow::Error::msg),
            Member::Process(p) => p.stop().await,
            Member::Libtorrent(p) => p.stop().await,
            // The stack goes as a whole (Testnet::shutdown).
            Member::Container(_) => Ok(()),
        }
    }
}

/// One node's torrent at one instant, from its handle or its API.
#[derive(Debug)]
struct Snapshot {
    verified_pieces: u32,
    total_pieces: u32,
    complete: bool,
    down_rate: f64,
    up_rate: f64,
    downloaded: u64,
    uploaded: u64,
    hash_failures: u64,
    banned_peers: usize,
    disk_used: u64,
    disk_capacity: u64,
    throttled_seconds: f64,
    /// From the torrent's start to its first block.
    first_block: Option<f64>,
    peers: Vec<PeerSnap>,
    /// The node itself (in a namespace: reachability and paths).
    node: Option<sluice_node::api::NodeInfo>,
}

/// One peer of a node, at one instant.
#[derive(Debug)]
struct PeerSnap {
    id: String,
    /// Bytes we sent it this session.
    uploaded: u64,
    /// Whether we choke it.
    choking: bool,
    /// Its client (BEP 10 name, for BitTorrent peers).
    client: Option<String>,
    /// Unchoked in a regular slot: for what it uploads to us.
    regular: bool,
    /// Bytes we got from it this session.
    downloaded: u64,
    /// How we are connected (from the API).
    path: Option<sluice_swarm::reach::Path>,
}

impl PeerSnap {
    fn of(p: &sluice_swarm::torrent_core::PeerStats) -> Self {
        Self {
            id: p.peer_id.clone(),
            uploaded: p.uploaded,
            choking: p.am_choking,
            client: p.client.clone(),
            regular: !p.am_choking && p.choke_reason_code == "regular_slot",
            downloaded: p.downloaded,
            path: None,
        }
    }
}

impl Snapshot {
    fn local(s: &sluice_swarm::torrent::TorrentStats) -> Self {
        Self {
            verified_pieces: s.verified_pieces,
            total_pieces: s.total_pieces,
            complete: s.complete,
            down_rate: s.down_rate,
            up_rate: s.up_rate,
            downloaded: s.downloaded,
            uploaded: s.uploaded,
            hash_failures: s.hash_failures,
            banned_peers: s.banned_peers,
            disk_used: s.disk.used_bytes(),
            disk_capacity: s.disk.capacity_bytes,
            throttled_seconds: s.disk.throttled_total.as_secs_f64(),
            first_block: s.first_block_after,
            peers: s.peers.iter().map(PeerSnap::of).collect(),
            node: None,
        }
    }

    fn remote(t: &sluice_node::api::TorrentInfo, peers: &[sluice_node::api::PeerInfo]) -> Self {
        Self {
            verified_pieces: t.verified_pieces,
            total_pieces: t.total_pieces,
            complete: t.complete,
            down_rate: t.down_rate,
            up_rate: t.up_rate,
            downloaded: t.downloaded,
            uploaded: t.uploaded,
            hash_failures: t.hash_failures,
            banned_peers: t.banned_peers,
            disk_used: t.disk.used_bytes(),
            disk_capacity: t.disk.capacity_bytes,
            throttled_seconds: t.disk.throttled_seconds,
            first_block: t.first_block_seconds,
            peers: peers
                .iter()
                .map(|p| PeerSnap {
                    path: p.path,
                    ..PeerSnap::of(&p.stats)
                })
                .collect(),
            node: None,
        }
    }

    fn libtorrent(s: &LtStatus) -> Self {
        Self {
            verified_pieces: s.pieces,
            total_pieces: s.total,
            complete: s.complete,
            down_rate: s.down_rate,
            up_rate: s.up_rate,
            downloaded: s.downloaded,
            uploaded: s.uploaded,
            hash_failures: s.hash_failures,
            banned_peers: 0,
            disk_used: 0,
            disk_capacity: 0,
            throttled_seconds: 0.0,
            first_block: None,
            peers: s
                .peers
                .iter()
                .map(|p| PeerSnap {
                    id: p.id.clone(),
                    uploaded: p.uploaded,
                    choking: p.choked,
                    client: Some(p.client.clone()),
                    // libtorrent does not say why it unchokes.
                    regular: false,
                    downloaded: 0,
                    path: None,
                })
                .collect(),
            node: None,
        }
    }
}

struct Live {
    plan: NodePlan,
    member: Option<Member>,
    data_dir: PathBuf,
    content: PathBuf,
    joined_at: Option<f64>,
    completed_at: Option<f64>,
    left_at: Option<f64>,
    samples: Vec<Sample>,
    /// Peers this node banned (the most it reported).
    banned: usize,
    /// Churned out, coming back at this time.
    rejoin_at: Option<f64>,
    restarts: usize,
    peak_disk: u64,
    disk_capacity: u64,
    downloaded: u64,
    uploaded: u64,
    hash_failures: u64,
    throttled_seconds: f64,
    /// From its (first) start to its first block.
    first_block: Option<f64>,
    /// Most peers it had at once, as sampled.
    peers_max: usize,
    /// Bytes uploaded to free-riders, summed over their sessions.
    to_free_riders: u64,
    /// Samples × libtorrent peers it had in a regular (reciprocation)
    /// upload slot.
    libtorrent_regular: u64,
    /// Per peer id: bytes uploaded to it in its current session, as last
    /// sampled (a smaller figure means a new session).
    up_per_peer: HashMap<String, u64>,
    /// Highest peak memory seen of its process (with `processes`; kept
    /// over restarts).
    peak_rss: Option<u64>,
    /// With `netns`: how it was reached, and per peer id the bytes
    /// downloaded from it in its current session, as last sampled.
    reach: Option<crate::report::NodeReach>,
    down_per_peer: HashMap<String, u64>,
    view: NodeView,
}

/// A prepared (and then running) testnet.
pub struct Testnet {
    config: Config,
    dir: PathBuf,
    meta: Arc<Metainfo>,
    content: PathBuf,
    nodes: Vec<Live>,
    rng: rand::rngs::StdRng,
    /// The DHT node every node bootstraps from, and its address.
    dht: Option<(Member, Multiaddr)>,
    /// The `sluice` executable, for `processes`.
    exe: Option<PathBuf>,
    /// With `netns`: the namespaces (removed when dropped) and each
    /// node's host, by name (the DHT node's is `dht`).
    net: Option<crate::netns::Internet>,
    hosts: HashMap<String, crate::netns::Host>,
    /// When a NATed node was first seen on a hole-punched connection to
    /// another NATed node.
    first_hole_punch: Option<f64>,
    /// With `on = docker-swarm`: the image to run (default
    /// [`crate::docker::DEFAULT_IMAGE`]), the deployed stack, and when its
    /// tasks were last looked at.
    image: Option<String>,
    stack: Option<Stack>,
    stack_checked: Option<Instant>,
}

impl std::fmt::Debug for Testnet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Testnet")
            .field("dir", &self.dir)
            .field("nodes", &self.nodes.len())
            .finish_non_exhaustive()
    }
}

impl Testnet {
    /// Generates the content (fixed by the seed) and its torrent in `dir`,
    /// and plans the nodes. Nothing runs yet.
    pub fn prepare(config: Config, dir: &Path) -> Result<Self> {
        config.validate()?;
        // Old downloads, identities and resume files would skew every
        // figure; never delete them either.
        if std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_some()) {
            anyhow::bail!(
                "the report directory {} is not empty; remove it or give another --report",
                dir.display()
            );
        }
        if config.libtorrent + config.libtorrent_seeders > 0 {
            crate::libtorrent::available()?;
        }
        if config.netns
            && let Some(why) = crate::netns::unavailable()
        {
            anyhow::bail!("--netns: {why}");
        }
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        if config.libtorrent + config.libtorrent_seeders > 0 {
            std::fs::write(dir.join("lt_node.py"), crate::libtorrent::SCRIPT)
                .context("writing lt_node.py")?;
        }
        let content = dir.join("content.bin");
        write_content(&content, config.size, config.seed)?;
        let piece_length = config
            .piece_size
            .map(|p| u32::try_from(p).context("--piece-size is too large"))
            .transpose()?;
        let options = CreateOptions::default()
            .with_piece_length(piece_length)
            .with_creation_date(None);
        let meta = sluice_storage::create(&content, &options, &AtomicU64::new(0))
            .context("making the testnet's torrent")?;
        sluice_storage::resume::write_atomically(&dir.join("testnet.torrent"), meta.to_bytes())
            .context("writing testnet.torrent")?;
        let nodes = config
            .plan()
            .into_iter()
            .map(|plan| {
                let node_dir = dir.join("nodes").join(&plan.name);
                let content_path = match plan.role {
                    Role::Seeder => content.clone(),
                    Role::Liar => node_dir.join("copy").join("content.bin"),
                    _ => node_dir.join("download").join("content.bin"),
                };
                let view = NodeView {
                    name: plan.name.clone(),
                    role: plan.role,
                    client: plan.client,
                    slow_disk: plan.disk_rate.is_some(),
                    running: false,
                    left: false,
                    progress: 0.0,
                    complete: false,
                    down_rate: 0.0,
                    up_rate: 0.0,
                    peers: 0,
                    unchoked: 0,
                    choked: 0,
                    disk_used: 0,
                    disk_capacity: config.disk_queue,
                };
                let reach = config.netns.then(|| crate::report::NodeReach {
                    behind_nat: plan.behind_nat,
                    upnp: plan.upnp,
                    relay: plan.relay,
                    reachability: "unknown".into(),
                    ..Default::default()
                });
                Live {
                    plan,
                    reach,
                    member: None,
                    data_dir: node_dir.join("data"),
                    content: content_path,
                    joined_at: None,
                    completed_at: None,
                    left_at: None,
                    samples: Vec::new(),
                    banned: 0,
                    rejoin_at: None,
                    restarts: 0,
                    peak_disk: 0,
                    disk_capacity: config.disk_queue,
                    downloaded: 0,
                    uploaded: 0,
                    hash_failures: 0,
                    throttled_seconds: 0.0,
                    first_block: None,
                    peers_max: 0,
                    to_free_riders: 0,
                    libtorrent_regular: 0,
                    up_per_peer: HashMap::new(),
                    peak_rss: None,
                    down_per_peer: HashMap::new(),
                    view,
                }
            })
            .collect();
        let rng = rand::rngs::StdRng::seed_from_u64(config.seed ^ 0x5eed);
        Ok(Self {
            config,
            dir: dir.to_owned(),
            meta: Arc::new(meta),
            content,
            nodes,
            rng,
            dht: None,
            exe: None,
            net: None,
            hosts: HashMap::new(),
            first_hole_punch: None,
            image: None,
            stack: None,
            stack_checked: None,
        })
    }

    /// The `sluice` executable that `processes` runs for each node.
    pub fn with_executable(mut self, exe: PathBuf) -> Self {
        self.exe = Some(exe);
        self
    }

    /// The image `on = docker-swarm` runs (a registry's, for a swarm of
    /// many hosts).
    pub fn with_image(mut self, image: Option<String>) -> Self {
        self.image = image;
        self
    }

    /// With `on = docker-swarm`: the stack's name and the token of every
    /// node's API, once deployed.
    pub fn stack(&self) -> Option<(&str, &str)> {
        self.stack
            .as_ref()
            .map(|s| (s.name.as_str(), s.token.as_str()))
    }

    /// The generated content every node ends up with.
    pub fn content(&self) -> &Path {
        &self.content
    }

    pub fn metainfo(&self) -> &Arc<Metainfo> {
        &self.meta
    }

    /// Each node: name, data dir (for `sluice peers --data-dir`), where
    /// its copy of the content is, and its control API address while it runs.
    pub fn endpoints(&self) -> Vec<(String, PathBuf, PathBuf, Option<SocketAddr>)> {
        self.nodes
            .iter()
            .map(|n| {
                (
                    n.plan.name.clone(),
                    n.data_dir.clone(),
                    n.content.clone(),
                    n.member.as_ref().and_then(Member::api_addr),
                )
            })
            .collect()
    }

    /// The network namespace node `name` runs in (`netns`).
    pub fn netns_of(&self, name: &str) -> Option<String> {
        self.hosts.get(name).map(|h| h.ns.clone())
    }

    /// Starts the nodes, applies the events and samples every node until
    /// every downloading node that stayed is complete (or the timeout);
    /// `on_sample` sees each round (for a live view). The nodes keep
    /// running afterwards until [`Testnet::shutdown`].
    pub async fn run(&mut self, mut on_sample: impl FnMut(f64, &[NodeView])) -> Result<Report> {
        if (self.config.processes || self.config.netns) && self.exe.is_none() {
            anyhow::bail!(
                "running nodes as processes needs the sluice executable (Testnet::with_executable)"
            );
        }
        if self.config.netns && self.net.is_none() {
            self.build_network()?;
        }
        let on_swarm = self.config.on == Platform::DockerSwarm;
        let mut start = None;
        if on_swarm {
            if self.stack.is_none() {
                start = Some(self.deploy().await?);
            }
        } else if self.config.discovery == Discovery::Dht && self.dht.is_none() {
            self.dht = Some(self.start_dht().await?);
        }
        let start = start.unwrap_or_else(Instant::now);
        for i in 0..self.nodes.len() {
            if self.nodes[i].plan.join_at == 0.0 && !on_swarm {
                self.start_node(i, 0.0).await?;
            }
        }
        let mut done_events = vec![false; self.config.events.len()];
        let mut tick = tokio::time::interval(SAMPLE_INTERVAL);
        let mut timed_out = false;
        let mut next_churn = self.config.churn;
        loop {
            tick.tick().await;
            let t = start.elapsed().as_secs_f64();
            self.apply_events(t, &mut done_events).await?;
            if let Some(at) = next_churn.filter(|at| t >= *at) {
                self.churn(t).await?;
                next_churn = self.config.churn.map(|c| at + c);
            }
            for i in 0..self.nodes.len() {
                if self.nodes[i].rejoin_at.is_some_and(|r| t >= r) {
                    self.nodes[i].rejoin_at = None;
                    self.nodes[i].restarts += 1;
                    self.start_node(i, t).await?;
                }
            }
            for n in &mut self.nodes {
                match &mut n.member {
                    Some(Member::Process(p)) => p.check_running()?,
                    Some(Member::Libtorrent(p)) => p.check_running()?,
                    _ => {}
                }
            }
            if let Some((Member::Process(p), _)) = &mut self.dht {
                p.check_running()?;
            }
            if on_swarm {
                self.watch_stack(t).await?;
            }
            self.sample(t).await;
            // Completions just sampled may make a leave-after-copies due:
            // it happens now, even when this is the run's last sample.
            self.apply_events(t, &mut done_events).await?;
            let views: Vec<NodeView> = self.nodes.iter().map(|n| n.view.clone()).collect();
            on_sample(t, &views);
            let waiting_to_join = self
                .nodes
                .iter()
                .any(|n| n.joined_at.is_none() && n.left_at.is_none());
            let downloading_done = self
                .nodes
                .iter()
                .filter(|n| n.plan.role.downloads() && n.left_at.is_none())
                .all(|n| n.completed_at.is_some());
            if downloading_done && !waiting_to_join {
                break;
            }
            if t > self.config.timeout {
                warn!(seconds = t, "testnet timed out");
                timed_out = true;
                break;
            }
        }
        let wall = start.elapsed().as_secs_f64();
        Ok(self.report(wall, timed_out))
    }

    /// The namespaces: the DHT node and the public nodes on the bridge,
    /// NATed ones behind routers of their own; every node's link shaped
    /// to its rates.
    fn build_network(&mut self) -> Result<()> {
        let mut net = crate::netns::Internet::new()?;
        if self.config.discovery == Discovery::Dht {
            let host = net.public_host("dht")?;
            self.hosts.insert("dht".into(), host);
        }
        for n in &self.nodes {
            let p = &n.plan;
            let host = if p.behind_nat {
                net.home_host(&p.name, p.upnp)?
            } else {
                net.public_host(&p.name)?
            };
            net.shape(&host, p.up_rate, p.down_rate)?;
            info!(node = %p.name, ip = %host.ip, public = %host.public_ip, nat = p.behind_nat, "host");
            self.hosts.insert(p.name.clone(), host);
        }
        self.net = Some(net);
        Ok(())
    }

    fn listen_addr(&self) -> Multiaddr {
        if self.config.netns {
            // Each node has the host to itself.
            return match self.config.transport {
                Transport::Tcp | Transport::Bt => "/ip4/0.0.0.0/tcp/4001",
                Transport::Quic => "/ip4/0.0.0.0/udp/4001/quic-v1",
            }
            .parse()
            .expect("a valid multiaddr");
        }
        match self.config.transport {
            // With the BitTorrent transport, libp2p still listens (for
            // nothing to dial it).
            Transport::Tcp | Transport::Bt => "/ip4/127.0.0.1/tcp/0",
            Transport::Quic => "/ip4/127.0.0.1/udp/0/quic-v1",
        }
        .parse()
        .expect("a valid multiaddr")
    }

    /// A node with no torrent that serves the DHT (what `sluice node`
    /// runs), and the address the others bootstrap from.
    async fn start_dht(&self) -> Result<(Member, Multiaddr)> {
        let data_dir = self.dir.join("nodes").join("dht").join("data");
        if let Some(exe) = &self.exe
            && (self.config.processes || self.config.netns)
        {
            let mut args: Vec<OsString> = vec!["node".into()];
            args.extend(self.common_args(&data_dir, None));
            let log = self.dir.join("nodes").join("dht").join("sluice.log");
            let ns = self.hosts.get("dht").map(|h| h.ns.as_str());
            let proc = Proc::spawn(exe, "the DHT node", args, &data_dir, &log, ns).await?;
            let addr = proc
                .dial_addr()
                .context("the DHT node has no listen address")?;
            info!(%addr, "DHT node started (process)");
            return Ok((Member::Process(proc), addr));
        }
        let config = NodeConfig::new(data_dir)
            .with_listen(vec![self.listen_addr()])
            .with_mdns(false)
            // Every node is 127.0.0.1: no share per IP.
            .with_per_ip_limits(None, None)
            .with_dht_server(true)
            .with_api(None);
        let node = Node::start(config).await.context("starting the DHT node")?;
        let addr = tokio::time::timeout(DIAL_WAIT, node.listen_addrs())
            .await
            .ok()
            .and_then(|a| a.into_iter().next())
            .context("the DHT node has no listen address")?;
        info!(%addr, "DHT node started");
        let member = Member::Local {
            node,
            torrent: None,
        };
        Ok((member, addr))
    }

    /// Flags every `sluice` process of this testnet gets: its data dir and
    /// listen address, no mDNS, the testnet's choking and discovery, and
    /// `up`/`down` limits when given.
    fn common_args(&self, data_dir: &Path, plan: Option<&NodePlan>) -> Vec<OsString> {
        let c = &self.config;
        let mut args: Vec<OsString> = vec![
            "--data-dir".into(),
            data_dir.into(),
            "--listen".into(),
            self.listen_addr().to_string().into(),
            "--no-mdns".into(),
            "--bt-listen".into(),
            "127.0.0.1:0".into(),
        ];
        if !c.netns {
            // Every node is 127.0.0.1: no share per IP.
            args.extend([
                "--max-pending-per-ip".into(),
                "0".into(),
                "--max-established-per-ip".into(),
                "0".into(),
            ]);
        }
        if let Some(plan) = plan {
            args.extend(self.node_flags(plan));
        }
        if let Some((_, addr)) = &self.dht {
            // On loopback nobody confirms an address, so every node
            // serves the DHT; in namespaces AutoNAT decides, as it would
            // on the internet.
            args.extend(dht_flags(Some(&addr.to_string()), !c.netns));
        }
        args
    }

    /// A node's own flags: its choking, and its `up`/`down` limits when
    /// given (not in namespaces: the kernel shapes the links there).
    fn node_flags(&self, plan: &NodePlan) -> Vec<OsString> {
        let c = &self.config;
        let mut args: Vec<OsString> = Vec::new();
        let choker = match (plan.role, c.choker) {
            (Role::FreeRider, _) => "free-rider",
            (_, ChokerKind::TitForTat) => "tit-for-tat",
            (_, ChokerKind::Propshare) => "propshare",
        };
        for (flag, value) in [
            ("--slots", c.slots.to_string()),
            ("--rechoke", c.rechoke.to_string()),
            ("--choker", choker.to_owned()),
            ("--seed-mode", "least-served".to_owned()),
            ("--read-cache", READ_CACHE.to_string()),
        ] {
            args.push(flag.into());
            args.push(value.into());
        }
        // In namespaces the kernel shapes the links instead.
        if !c.netns {
            if let Some(r) = plan.up_rate {
                args.extend(["--up-rate".into(), r.to_string().into()]);
            }
            if let Some(r) = plan.down_rate {
                args.extend(["--down-rate".into(), r.to_string().into()]);
            }
        }
        if plan.relay {
            args.push("--serve-relay".into());
        }
        args
    }

    /// Deploys the testnet as a stack, waits until every node but the
    /// seeders answers, starts the seeders and waits until they serve
    /// the whole file. The clock starts when the first seeder's node
    /// started (by its own uptime): nothing can move before, and what
    /// comes before (containers starting, a few a second on one host;
    /// seeders writing their content) is Docker's time, not the swarm's.
    async fn deploy(&mut self) -> Result<Instant> {
        crate::docker::check(self.image.as_deref()).await?;
        let plans: Vec<NodePlan> = self.nodes.iter().map(|n| n.plan.clone()).collect();
        let flags = |plan: &NodePlan| self.node_flags(plan);
        // Named after the report directory (the last of its letters and
        // digits), with a random tail: two runs never share a stack.
        let dir_part: String = {
            let name = self
                .dir
                .file_name()
                .map(|n| n.to_string_lossy().to_ascii_lowercase())
                .unwrap_or_default();
            let kept: Vec<char> = name.chars().filter(char::is_ascii_alphanumeric).collect();
            kept[kept.len().saturating_sub(12)..].iter().collect()
        };
        let name = format!("sluice-testnet-{dir_part}-{:04x}", rand::random::<u16>());
        let deployed = Instant::now();
        let stack = Stack::prepare(StackSpec {
            name: &name,
            image: self.image.as_deref(),
            dir: &self.dir,
            torrent: &self.dir.join("testnet.torrent"),
            transport: self.config.transport,
            seed: self.config.seed,
            disk_queue: self.config.disk_queue,
            plans: &plans,
            flags: &flags,
        })
        .await?;
        // Kept before it runs: a deploy stopped half-way is removed too.
        let stack = self.stack.insert(stack);
        stack.deploy().await?;
        info!(stack = %stack.name, services = stack.services.len(), "deployed");
        let start_wait = self.start_wait();
        let info_hash = self.meta.info().info_hash().to_string();
        let is_seeder = |n: &Live| n.plan.role == Role::Seeder;
        // Every other node first, then the seeders.
        let mut seeders_started = false;
        loop {
            self.watch_stack(0.0).await?;
            if !seeders_started {
                if self
                    .nodes
                    .iter()
                    .filter(|n| !is_seeder(n))
                    .all(|n| n.member.is_some())
                {
                    info!(
                        seconds = deployed.elapsed().as_secs_f64(),
                        "every node but the seeders answers"
                    );
                    if let Some(stack) = &self.stack {
                        stack.start_seeders().await?;
                    }
                    seeders_started = true;
                }
            } else {
                let mut started = Vec::new();
                for n in self.nodes.iter().filter(|n| is_seeder(n)) {
                    match &n.member {
                        Some(m @ Member::Container(c))
                            if m.snapshot(&info_hash)
                                .await
                                .is_some_and(|s| s.verified_pieces == s.total_pieces) =>
                        {
                            started.push(c.started);
                        }
                        _ => break,
                    }
                }
                if started.len() == self.config.seeders {
                    let start = started.into_iter().min().unwrap_or_else(Instant::now);
                    info!(
                        seconds = deployed.elapsed().as_secs_f64(),
                        from_start = start.elapsed().as_secs_f64(),
                        "every seeder serves"
                    );
                    return Ok(start);
                }
            }
            if deployed.elapsed() > start_wait {
                anyhow::bail!(
                    "{} within {start_wait:?} of the deploy ({} did not answer)",
                    if seeders_started {
                        "the seeders did not serve the file"
                    } else {
                        "not every node answered"
                    },
                    self.silent_nodes()
                );
            }
            tokio::time::sleep(SAMPLE_INTERVAL).await;
        }
    }

    /// How long a stack has from its deploy until its seeders serve: more
    /// for more content, which they write and hash first.
    fn start_wait(&self) -> Duration {
        STACK_START_WAIT + Duration::from_secs(self.config.size / CONTENT_RATE)
    }

    /// The nodes that have not answered yet, for an error (at most a few
    /// named).
    fn silent_nodes(&self) -> String {
        let silent: Vec<&str> = self
            .nodes
            .iter()
            .filter(|n| n.member.is_none())
            .map(|n| n.plan.name.as_str())
            .collect();
        match silent.len() {
            0 => "every node answered".into(),
            n if n <= 5 => silent.join(", "),
            n => format!("{} and {} more", silent[..5].join(", "), n - 5),
        }
    }

    /// Looks at the stack's tasks (every second while some node has not
    /// answered yet, then every [`STACK_CHECK`]): a node whose container
    /// ended, or that stopped answering, is an error; one that answers for
    /// the first time (at `t`) joins; the others' peak memory is asked
    /// again.
    async fn watch_stack(&mut self, t: f64) -> Result<()> {
        let waiting = self.nodes.iter().any(|n| n.member.is_none());
        let every = if waiting { STACK_POLL } else { STACK_CHECK };
        if self.stack_checked.is_some_and(|c| c.elapsed() < every) {
            return Ok(());
        }
        self.stack_checked = Some(Instant::now());
        let Some(stack) = &mut self.stack else {
            return Ok(());
        };
        let tasks = stack.tasks().await?;
        let mut reached = Vec::new();
        for task in &tasks {
            let n = &self.nodes[task.node];
            if let Some(ended) = &task.ended {
                anyhow::bail!(
                    "{} ({}): its container is {ended}; its output is in logs/ of the report",
                    n.plan.name,
                    n.plan.role.name(),
                );
            }
            if n.member.is_none()
                && let Some(addr) = task.api
            {
                reached.push((task.node, stack.client(addr)));
            }
        }
        let found = futures::future::join_all(
            reached
                .into_iter()
                .map(|(i, api)| async move { (i, Container::reach(api).await) }),
        )
        .await;
        for (i, c) in found {
            let Some(c) = c else { continue };
            let live = &mut self.nodes[i];
            info!(node = %live.plan.name, api = %c.api_addr(), t, "answers");
            live.member = Some(Member::Container(c));
            // Started by the deploy with every other node: there from the
            // start, whenever its container came up (its completion counts
            // from the clock's start, which that delay is part of).
            live.joined_at.get_or_insert(0.0);
            live.view.running = true;
        }
        futures::future::join_all(self.nodes.iter_mut().filter_map(|n| match &mut n.member {
            Some(Member::Container(c)) => Some(c.refresh()),
            _ => None,
        }))
        .await;
        for n in &self.nodes {
            if let Some(Member::Container(c)) = &n.member {
                c.check_answers(&n.plan.name)?;
            }
        }
        Ok(())
    }

    /// Stops one running, unfinished leecher (chosen by the seeded RNG);
    /// it comes back, resuming from its data dir, half a churn period
    /// later.
    async fn churn(&mut self, t: f64) -> Result<()> {
        let candidates: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| {
                let n = &self.nodes[i];
                n.plan.role == Role::Leecher
                    && n.member.is_some()
                    && n.completed_at.is_none()
                    && n.rejoin_at.is_none()
            })
            .collect();
        let Some(&i) = candidates.choose(&mut self.rng) else {
            return Ok(());
        };
        let live = &mut self.nodes[i];
        live.view.running = false;
        live.rejoin_at = Some(t + self.config.churn.unwrap_or(1.0) / 2.0);
        if let Some(m) = live.member.take() {
            m.stop()
                .await
                .with_context(|| format!("stopping {}", live.plan.name))?;
        }
        info!(node = %live.plan.name, t, "churned out");
        Ok(())
    }

    async fn start_node(&mut self, i: usize, t: f64) -> Result<()> {
        let plan = self.nodes[i].plan.clone();
        if plan.role == Role::Liar && !self.nodes[i].content.exists() {
            // A good copy first, so it opens as complete.
            let copy = &self.nodes[i].content;
            std::fs::create_dir_all(copy.parent().expect("a file in a directory"))
                .and_then(|()| std::fs::copy(&self.content, copy))
                .with_context(|| format!("copying the content for {}", plan.name))?;
        }
        let content = self.nodes[i].content.clone();
        if let Some(parent) = content.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        // Whom to dial (with fixed discovery): every running seeder, and
        // some earlier nodes.
        let mut seeders = Vec::new();
        let mut others = Vec::new();
        for (j, n) in self.nodes.iter().enumerate() {
            if j == i || self.dht.is_some() {
                continue;
            }
            if let Some(m) = &n.member {
                if n.plan.role == Role::Seeder {
                    seeders.push(m);
                } else {
                    others.push(m);
                }
            }
        }
        others.shuffle(&mut self.rng);
        others.truncate(self.config.peers_per_node);
        let mut dial = Vec::new();
        let bt = self.config.transport == Transport::Bt;
        for peer in seeders.iter().chain(&others) {
            let addr = if bt {
                peer.bt_addr().map(Dial::Bt)
            } else {
                peer.listen_addr().await.map(Dial::Libp2p)
            };
            match addr {
                Some(addr) => dial.push(addr),
                None => {
                    warn!(node = %plan.name, peer = %peer.peer_id(), "peer has no listen address")
                }
            }
        }
        let member = match &self.exe {
            _ if plan.client == Client::Libtorrent => self.start_libtorrent(i, &dial).await?,
            Some(exe) if self.config.processes || self.config.netns => {
                Member::Process(self.start_process(exe, i, &dial).await?)
            }
            _ => self.start_local(i, &dial).await?,
        };
        if plan.role == Role::Liar {
            // Verified at open; garbage from now on.
            self.wait_verified(&member, &plan.name).await?;
            write_content(&content, self.config.size, self.config.seed ^ 0xbad)?;
        }
        info!(node = %plan.name, role = plan.role.name(), t, "joined");
        let live = &mut self.nodes[i];
        live.member = Some(member);
        live.joined_at.get_or_insert(t);
        live.view.running = true;
        Ok(())
    }

    /// A libtorrent node, dialing `dial` (BitTorrent addresses).
    async fn start_libtorrent(&self, i: usize, dial: &[Dial]) -> Result<Member> {
        let live = &self.nodes[i];
        let plan = &live.plan;
        let peers: Vec<SocketAddr> = dial
            .iter()
            .filter_map(|d| match d {
                Dial::Bt(a) => Some(*a),
                Dial::Libp2p(_) => None,
            })
            .collect();
        std::fs::create_dir_all(&live.data_dir)
            .with_context(|| format!("creating {}", live.data_dir.display()))?;
        let log = live.data_dir.with_file_name("libtorrent.log");
        let proc = LtProc::spawn(LtSpec {
            name: &plan.name,
            script: &self.dir.join("lt_node.py"),
            torrent: &self.dir.join("testnet.torrent"),
            save_dir: live.content.parent().expect("a file in a directory"),
            up_rate: plan.up_rate,
            down_rate: plan.down_rate,
            slots: self.config.slots,
            peers: &peers,
            log: &log,
        })
        .await?;
        Ok(Member::Libtorrent(proc))
    }

    /// A node in this process, dialing `dial`.
    async fn start_local(&self, i: usize, dial: &[Dial]) -> Result<Member> {
        let plan = &self.nodes[i].plan;
        let tft = TitForTatConfig::default()
            .with_slots(self.config.slots)
            .with_rechoke_interval(self.config.rechoke_interval())
            // Seeders share out evenly by bytes, so a fast downloader
            // (a free-rider takes all it can) gets no more than its share.
            .with_seed_mode(sluice_choke::SeedMode::LeastServed);
        let choker = match (plan.role, self.config.choker) {
            (Role::FreeRider, _) => ChokerChoice::FreeRider,
            (_, ChokerKind::TitForTat) => ChokerChoice::TitForTat(tft),
            (_, ChokerKind::Propshare) => {
                ChokerChoice::PropShare(PropShareConfig::default().with_tit_for_tat(tft))
            }
        };
        let torrent_config = TorrentConfig::default()
            .with_choker(choker)
            .with_seed(self.config.seed.wrapping_mul(1000).wrapping_add(i as u64));
        let config = NodeConfig::new(&self.nodes[i].data_dir)
            .with_listen(vec![self.listen_addr()])
            .with_mdns(false)
            .with_per_ip_limits(None, None)
            .with_up_rate(plan.up_rate)
            .with_down_rate(plan.down_rate)
            .with_disk_queue(self.config.disk_queue)
            .with_disk_rate(plan.disk_rate)
            .with_torrent(torrent_config)
            .with_read_cache(READ_CACHE)
            // A liar sends what is on disk, unchecked.
            .with_verify_reads(plan.role != Role::Liar)
            .with_api(Some(ApiConfig::default()));
        let config = match &self.dht {
            // On loopback nobody confirms an address: every node serves
            // the DHT from the start.
            Some((_, addr)) => config
                .with_bootstrap(vec![addr.clone()])
                .with_dht_server(true)
                .with_discovery_interval(DHT_ROUND),
            None => config,
        };
        let node = Node::start(config)
            .await
            .with_context(|| format!("starting {}", plan.name))?;
        let torrent = node
            .add_torrent(Arc::clone(&self.meta), self.nodes[i].content.clone())
            .await
            .with_context(|| format!("adding the torrent to {}", plan.name))?;
        for addr in dial {
            match addr {
                Dial::Libp2p(addr) => {
                    match tokio::time::timeout(DIAL_WAIT, node.dial(addr.clone())).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => warn!(node = %plan.name, error = %e, "dial failed"),
                        Err(_) => warn!(node = %plan.name, "dial timed out"),
                    }
                }
                // Dialed (and retried) in the background.
                Dial::Bt(addr) => node
                    .add_bt_peer(torrent.info_hash(), *addr)
                    .with_context(|| format!("dialing {addr} from {}", plan.name))?,
            }
        }
        Ok(Member::Local {
            node,
            torrent: Some(torrent),
        })
    }

    /// A `sluice` process: `seed` for seeders and liars, `get
    /// --seed-after` for downloading nodes, with `--peer` for each of
    /// `dial`.
    async fn start_process(&self, exe: &Path, i: usize, dial: &[Dial]) -> Result<Proc> {
        let live = &self.nodes[i];
        let plan = &live.plan;
        let torrent = self.dir.join("testnet.torrent");
        let mut args = node_command(plan, &live.content, &torrent, self.config.disk_queue);
        args.extend(self.common_args(&live.data_dir, Some(plan)));
        for addr in dial {
            let addr = match addr {
                Dial::Libp2p(a) => a.to_string(),
                Dial::Bt(a) => a.to_string(),
            };
            args.extend(["--peer".into(), addr.into()]);
        }
        let log = live.data_dir.with_file_name("sluice.log");
        let ns = self.hosts.get(&plan.name).map(|h| h.ns.as_str());
        Proc::spawn(exe, &plan.name, args, &live.data_dir, &log, ns).await
    }

    /// Waits until `member` holds every piece (a liar before it turns).
    async fn wait_verified(&self, member: &Member, name: &str) -> Result<()> {
        let info_hash = self.meta.info().info_hash().to_string();
        let started = Instant::now();
        loop {
            if member
                .snapshot(&info_hash)
                .await
                .is_some_and(|s| s.verified_pieces == s.total_pieces)
            {
                return Ok(());
            }
            if started.elapsed() > DIAL_WAIT {
                anyhow::bail!("{name} did not verify its copy within {DIAL_WAIT:?}");
            }
            tokio::time::sleep(SAMPLE_INTERVAL / 5).await;
        }
    }

    async fn stop_node(&mut self, i: usize, t: f64) -> Result<()> {
        let live = &mut self.nodes[i];
        live.view.running = false;
        live.view.left = true;
        live.left_at = Some(t);
        if let Some(m) = live.member.take() {
            m.stop()
                .await
                .with_context(|| format!("stopping {}", live.plan.name))?;
        }
        info!(node = %live.plan.name, t, "left");
        Ok(())
    }

    fn index(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.plan.name == name)
    }

    async fn apply_events(&mut self, t: f64, done: &mut [bool]) -> Result<()> {
        let copies = self
            .nodes
            .iter()
            .filter(|n| n.plan.role.downloads() && n.completed_at.is_some())
            .count();
        let events = self.config.events.clone();
        for (e, done) in events.into_iter().zip(done.iter_mut()) {
            if *done {
                continue;
            }
            let Some(i) = self.index(&e.node) else {
                *done = true;
                continue;
            };
            let due = match &e.action {
                Action::LeaveAfterCopies { copies: want } => copies >= *want,
                _ => t >= e.at,
            };
            if !due {
                continue;
            }
            *done = true;
            match e.action {
                Action::Join => {
                    if self.nodes[i].joined_at.is_none() {
                        self.start_node(i, t).await?;
                    }
                }
                Action::Leave | Action::LeaveAfterCopies { .. } => {
                    // A node churned out leaves for good too.
                    if self.nodes[i].member.is_some() || self.nodes[i].rejoin_at.take().is_some() {
                        self.stop_node(i, t).await?;
                    }
                }
                Action::UpRate { rate } => {
                    let changed = match &self.nodes[i].member {
                        Some(Member::Local { node, .. }) => node.set_up_rate(rate),
                        _ => false,
                    };
                    if !changed {
                        warn!(node = %e.node, "up-rate event for a node without an upload limit");
                    }
                    self.nodes[i].plan.up_rate = Some(rate);
                }
            }
        }
        Ok(())
    }

    async fn sample(&mut self, t: f64) {
        // Free-riders as others' peer lists name them: a libp2p peer id,
        // or (over BitTorrent) the label after the address.
        let free_riders: HashSet<String> = self
            .nodes
            .iter()
            .filter(|n| n.plan.role == Role::FreeRider)
            .filter_map(|n| n.member.as_ref())
            .flat_map(|m| [Some(m.peer_id()), m.bt_label()])
            .flatten()
            .collect();
        let is_free_rider = |id: &str| {
            free_riders.contains(id)
                || id
                    .strip_prefix("bt:")
                    .and_then(|rest| rest.split_once('/'))
                    .is_some_and(|(_ip, label)| free_riders.contains(label))
        };
        // Nodes behind NAT, as others' peer lists name them.
        let natted: HashSet<String> = self
            .nodes
            .iter()
            .filter(|n| n.plan.behind_nat)
            .filter_map(|n| n.member.as_ref())
            .map(Member::peer_id)
            .collect();
        // Processes are asked all at once.
        let info_hash = self.meta.info().info_hash().to_string();
        let snapshots = futures::future::join_all(self.nodes.iter().map(|n| async {
            match &n.member {
                Some(m) => m.snapshot(&info_hash).await,
                None => None,
            }
        }))
        .await;
        for (n, s) in self.nodes.iter_mut().zip(snapshots) {
            let rss = match &n.member {
                Some(Member::Process(p)) => p.peak_rss(),
                Some(Member::Libtorrent(p)) => p.peak_rss(),
                Some(Member::Container(c)) => c.peak_rss,
                _ => None,
            };
            if let Some(rss) = rss {
                n.peak_rss = Some(n.peak_rss.unwrap_or(0).max(rss));
            }
            let Some(s) = s else { continue };
            if let Some(reach) = &mut n.reach {
                use sluice_swarm::reach::Path;
                if let Some(node) = &s.node {
                    reach.reachability = node.reachability.to_string();
                    reach.connections = node.connections;
                    reach.hole_punches = node.hole_punch_successes;
                    reach.relayed_bytes = node.relayed_bytes_received + node.relayed_bytes_sent;
                }
                for p in &s.peers {
                    let last = n.down_per_peer.entry(p.id.clone()).or_insert(0);
                    let gained = p.downloaded.checked_sub(*last).unwrap_or(p.downloaded);
                    *last = p.downloaded;
                    match p.path {
                        Some(Path::HolePunched) => reach.downloaded_hole_punched += gained,
                        Some(Path::Relayed) => reach.downloaded_relayed += gained,
                        _ => reach.downloaded_direct += gained,
                    }
                    if n.plan.behind_nat
                        && p.path == Some(Path::HolePunched)
                        && natted.contains(&p.id)
                        && self.first_hole_punch.is_none()
                    {
                        self.first_hole_punch = Some(t);
                    }
                }
            }
            for p in &s.peers {
                let last = n.up_per_peer.entry(p.id.clone()).or_insert(0);
                let gained = if p.uploaded >= *last {
                    p.uploaded - *last
                } else {
                    p.uploaded
                };
                *last = p.uploaded;
                if is_free_rider(&p.id) {
                    n.to_free_riders += gained;
                }
                if p.regular
                    && p.client
                        .as_deref()
                        .is_some_and(|c| c.starts_with("libtorrent"))
                {
                    n.libtorrent_regular += 1;
                }
            }
            let used = s.disk_used;
            let progress = f64::from(s.verified_pieces) / f64::from(s.total_pieces.max(1));
            n.peak_disk = n.peak_disk.max(used);
            n.disk_capacity = s.disk_capacity;
            n.downloaded = s.downloaded;
            n.uploaded = s.uploaded;
            n.hash_failures = s.hash_failures;
            n.banned = n.banned.max(s.banned_peers);
            n.throttled_seconds = s.throttled_seconds;
            n.first_block = n.first_block.or(s.first_block);
            n.peers_max = n.peers_max.max(s.peers.len());
            if s.complete && n.completed_at.is_none() && n.plan.role.downloads() {
                n.completed_at = Some(t);
            }
            if n.samples.len() < MAX_SAMPLES {
                n.samples.push(Sample {
                    t,
                    progress,
                    disk_used: used,
                    downloaded: s.downloaded,
                    uploaded: s.uploaded,
                });
            }
            let unchoked = s.peers.iter().filter(|p| !p.choking).count();
            n.view = NodeView {
                progress,
                complete: s.complete,
                down_rate: s.down_rate,
                up_rate: s.up_rate,
                peers: s.peers.len(),
                unchoked,
                choked: s.peers.len() - unchoked,
                disk_used: used,
                disk_capacity: s.disk_capacity,
                ..n.view.clone()
            };
        }
    }

    fn report(&self, wall: f64, timed_out: bool) -> Report {
        let nodes = self
            .nodes
            .iter()
            .map(|n| NodeReport {
                downloaded: n.downloaded,
                uploaded: n.uploaded,
                hash_failures: n.hash_failures,
                banned_peers: n.banned,
                restarts: n.restarts,
                peak_disk_bytes: n.peak_disk,
                disk_capacity_bytes: n.disk_capacity,
                throttled_seconds: n.throttled_seconds,
                first_block_seconds: n.first_block,
                peers_max: n.peers_max,
                uploaded_to_free_riders: n.to_free_riders,
                peak_rss_bytes: n.peak_rss,
                libtorrent_regular_unchokes: n.libtorrent_regular,
                samples: n.samples.clone(),
                reach: n.reach.clone(),
                ..NodeReport::of_plan(&n.plan, n.joined_at, n.left_at, n.completed_at)
            })
            .collect();
        let info = self.meta.info();
        let report = Report::new(
            self.config.clone(),
            info.info_hash().to_string(),
            info.total_size(),
            info.piece_length(),
            wall,
            timed_out,
            nodes,
        );
        if self.config.netns {
            report.with_netns(self.first_hole_punch)
        } else {
            report
        }
    }

    /// Stops every node that still runs.
    pub async fn shutdown(mut self) -> Result<()> {
        let mut first_error = None;
        for n in &mut self.nodes {
            if let Some(m) = n.member.take()
                && let Err(e) = m.stop().await
            {
                first_error.get_or_insert(e.context(format!("stopping {}", n.plan.name)));
            }
        }
        if let Some((m, _)) = self.dht.take()
            && let Err(e) = m.stop().await
        {
            first_error.get_or_insert(anyhow::anyhow!("stopping the DHT node: {e}"));
        }
        if let Some(mut stack) = self.stack.take() {
            // Every node's output, before it goes with the stack.
            if let Err(e) = stack.save_logs(&self.dir).await {
                warn!(error = %e, "saving the stack's logs");
            }
            if let Err(e) = stack.remove().await {
                first_error.get_or_insert(e.context(format!("removing stack {}", stack.name)));
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// The command a node of `plan` runs, as a person would type it: `seed
/// CONTENT --torrent TORRENT` for seeders and liars, `get TORRENT
/// --output DIR --seed-after` (into `content`'s directory) for
/// downloading nodes. What `--processes` starts, and each replica on
/// Docker Swarm.
pub(crate) fn node_command(
    plan: &NodePlan,
    content: &Path,
    torrent: &Path,
    disk_queue: u64,
) -> Vec<OsString> {
    let mut args: Vec<OsString> = match plan.role {
        Role::Seeder | Role::Liar => {
            vec![
                "seed".into(),
                content.into(),
                "--torrent".into(),
                torrent.into(),
            ]
        }
        Role::Leecher | Role::FreeRider => {
            let out = content.parent().expect("a file in a directory");
            vec![
                "get".into(),
                torrent.into(),
                "--output".into(),
                out.into(),
                "--seed-after".into(),
                "--disk-queue".into(),
                disk_queue.to_string().into(),
            ]
        }
    };
    if let Some(r) = plan.disk_rate {
        args.extend(["--disk-rate".into(), r.to_string().into()]);
    }
    if plan.role == Role::Liar {
        args.push("--no-verify-reads".into());
    }
    args
}

/// How a node uses the DHT: bootstraps from `bootstrap` and asks for
/// providers every [`DHT_ROUND`]; `server`: serves the DHT from the
/// start, rather than once an address of it is confirmed.
pub(crate) fn dht_flags(bootstrap: Option<&str>, server: bool) -> Vec<OsString> {
    let mut args: Vec<OsString> = Vec::new();
    if let Some(addr) = bootstrap {
        args.extend([
            "--bootstrap".into(),
            addr.into(),
            "--discovery-interval".into(),
            DHT_ROUND.as_secs_f64().to_string().into(),
        ]);
    }
    if server {
        args.push("--dht-server".into());
    }
    args
}

/// [`write_content`] to a file beside `path`, renamed into place once
/// whole: a node stopped half-way leaves no short copy to seed from.
pub fn write_content_atomically(path: &Path, size: u64, seed: u64) -> Result<()> {
    let mut part = path.as_os_str().to_owned();
    part.push(".part");
    let part = PathBuf::from(part);
    write_content(&part, size, seed)?;
    std::fs::rename(&part, path).with_context(|| format!("renaming {}", part.display()))
}

/// Writes `size` pseudo-random bytes fixed by `seed`: a testnet's content.
pub fn write_content(path: &Path, size: u64, seed: u64) -> Result<()> {
    use std::io::Write;
    let file =
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut buf = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        rng.fill_bytes(&mut buf[..n]);
        out.write_all(&buf[..n])
            .with_context(|| format!("writing {}", path.display()))?;
        left -= n as u64;
    }
    out.flush()
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
