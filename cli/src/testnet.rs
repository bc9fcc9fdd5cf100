//! `sluice testnet`: a whole local swarm in one command, with a live view,
//! a report and plots.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use sluice_testnet::{
    ChokerKind, Client, Config, Discovery, NodeView, Platform, Role, Testnet, Transport,
};

use sluice_storage::units::{format_rate, parse_rate, parse_size};

/// Above this many nodes the live view is a compact grid.
const GRID_ABOVE: usize = 20;
/// How often the live view redraws.
const REDRAW: Duration = Duration::from_secs(1);

fn parse_slow_disk(s: &str) -> Result<(usize, u64), String> {
    let (k, rate) = s
        .split_once(':')
        .ok_or_else(|| format!("{s:?} is not K:RATE (e.g. 1:8MB/s)"))?;
    let k = k
        .parse()
        .map_err(|_| format!("{k:?} in {s:?} is not a node count"))?;
    Ok((k, parse_rate(rate)?))
}

#[derive(Debug, clap::Args)]
pub(crate) struct TestnetArgs {
    /// Nodes in all, seeders included [default: 8].
    #[arg(long)]
    nodes: Option<usize>,
    /// [default: 1]
    #[arg(long)]
    seeders: Option<usize>,
    /// Size of the generated file [default: 64MiB].
    #[arg(long, value_parser = parse_size)]
    size: Option<u64>,
    /// Piece size [default: from the size].
    #[arg(long, value_parser = parse_size)]
    piece_size: Option<u64>,
    /// Upload limit of each downloading node [default: 5MB/s].
    #[arg(long, value_parser = parse_rate)]
    up_rate: Option<u64>,
    /// Upload limit of each seeder [default: 20MB/s].
    #[arg(long, value_parser = parse_rate)]
    seeder_up_rate: Option<u64>,
    /// Download limit of each downloading node [default: none].
    #[arg(long, value_parser = parse_rate)]
    down_rate: Option<u64>,
    /// Downloading nodes that never unchoke anyone [default: 1].
    #[arg(long)]
    free_riders: Option<usize>,
    /// K nodes with a disk that writes at RATE, e.g. 1:8MB/s [default: 1:8MB/s].
    #[arg(long, value_parser = parse_slow_disk)]
    slow_disk: Option<(usize, u64)>,
    /// Each node's disk queue [default: 16MiB].
    #[arg(long, value_parser = parse_size)]
    disk_queue: Option<u64>,
    /// Choking strategy of every contributing node [default: tit-for-tat].
    #[arg(long, value_enum)]
    choker: Option<ChokerArg>,
    /// Upload slots per node, one optimistic [default: 4].
    #[arg(long)]
    slots: Option<u32>,
    /// Seconds between rechokes [default: 2].
    #[arg(long)]
    rechoke: Option<f64>,
    /// How nodes talk: libp2p over TCP or QUIC, or the BitTorrent wire
    /// (bt: nodes dial each other's BitTorrent address; implies
    /// --discovery fixed) [default: tcp].
    #[arg(long, value_enum)]
    transport: Option<TransportArg>,
    /// K of the downloading nodes are libtorrent 2.0 (Debian's
    /// python3-libtorrent) instead of sluice; implies --transport bt. The
    /// report compares the two side by side [default: 0].
    #[arg(long, value_name = "K")]
    libtorrent: Option<usize>,
    /// K of the seeders are libtorrent 2.0 [default: 0].
    #[arg(long, value_name = "K")]
    libtorrent_seeders: Option<usize>,
    /// How nodes find each other: through a DHT node started first, or a
    /// fixed list (every seeder and --peers-per-node earlier nodes)
    /// [default: dht].
    #[arg(long, value_enum)]
    discovery: Option<DiscoveryArg>,
    /// Fixes the content, node order, dialing and choker RNG [default: 1].
    #[arg(long)]
    seed: Option<u64>,
    /// Nodes (besides seeders and downloaders) that claim every piece and
    /// serve garbage [default: 0].
    #[arg(long)]
    liars: Option<usize>,
    /// Every SECS a running leecher leaves and comes back SECS/2 later,
    /// resuming from its data dir.
    #[arg(long, value_name = "SECS")]
    churn: Option<f64>,
    /// With --discovery fixed: earlier nodes each downloading node dials,
    /// besides the seeders [default: 8].
    #[arg(long)]
    peers_per_node: Option<usize>,
    /// Give up after this many seconds [default: 600].
    #[arg(long)]
    timeout: Option<f64>,
    /// A TOML scenario (the keys above, plus `[[event]]` tables); flags override it.
    #[arg(long)]
    scenario: Option<PathBuf>,
    /// Where the report goes [default: a fresh directory under the temp dir].
    #[arg(long)]
    report: Option<PathBuf>,
    /// Keep the nodes up after the run (inspect them with `sluice peers
    /// --data-dir …` or `sluice top --data-dir …`) until Ctrl-C.
    #[arg(long)]
    keep_running: bool,
    /// Keep the generated content and every node's copy and data dir in
    /// the report directory (by default only the reports stay: a 64 MiB
    /// testnet of 8 nodes writes over half a GiB).
    #[arg(long)]
    keep_data: bool,
    /// Run every node as a `sluice` process of its own (`seed`, `get
    /// --seed-after`, `node`), watched through its control API and stopped
    /// with Ctrl-C; each one's output is in nodes/NAME/sluice.log.
    #[arg(long)]
    processes: bool,
    /// Run every node as a `sluice` process in a network namespace of its
    /// own, with its own address on a shared bridge and its link shaped
    /// by the kernel (tc token-bucket filters) instead of sluice's rate
    /// limits. Needs root (CAP_SYS_ADMIN) and iptables.
    #[arg(long)]
    netns: bool,
    /// With --netns: K nodes behind NAT routers of their own (masquerade,
    /// nothing in unasked); they meet through relays and hole punching
    /// [default: 0].
    #[arg(long, value_name = "K")]
    nat: Option<usize>,
    /// With --netns: R public nodes that serve as relays besides the DHT
    /// node [default: 0].
    #[arg(long, value_name = "R")]
    relays: Option<usize>,
    /// With --netns: K of the NATed nodes have a router that maps ports
    /// on request (UPnP, a real miniupnpd) [default: 0].
    #[arg(long, value_name = "K")]
    upnp: Option<usize>,
    /// Where the nodes run: on this machine (in this process, or as
    /// processes with --processes or --netns), or as a stack on the Docker
    /// Swarm the local `docker` talks to, one container per node, found
    /// through the DHT (scripts/image builds the image) [default: local].
    #[arg(long, value_enum)]
    on: Option<OnArg>,
    /// With --on docker-swarm: the image every node runs, e.g.
    /// REGISTRY/sluice:TAG when the swarm's hosts pull from a registry
    /// [default: sluice:VERSION, here].
    #[arg(long, value_name = "IMAGE")]
    image: Option<String>,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum OnArg {
    Local,
    DockerSwarm,
}

/// `sluice sim`: the scenario flags of `sluice testnet`, and the model's.
#[derive(Debug, clap::Args)]
pub(crate) struct SimArgs {
    #[command(flatten)]
    scenario: TestnetArgs,
    /// One-way delay of every message, milliseconds [default: 2].
    #[arg(long, value_name = "MS")]
    latency: Option<f64>,
    /// Peers each node is handed when it joins and every 30 s, as a
    /// tracker or the DHT would [default: 50].
    #[arg(long)]
    peers: Option<usize>,
    /// A node dials the peers it is handed while it has fewer than this
    /// (as a real node does with those it discovers) [default: 24].
    #[arg(long)]
    dial_until: Option<usize>,
    /// Most peers a node keeps (its torrent's max_peers) [default: 64].
    #[arg(long)]
    max_peers: Option<usize>,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum ChokerArg {
    TitForTat,
    Propshare,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum DiscoveryArg {
    Dht,
    Fixed,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum TransportArg {
    Tcp,
    Quic,
    Bt,
}

impl TestnetArgs {
    /// The scenario (or the defaults) with the given flags on top.
    fn config(&self) -> Result<Config> {
        let mut c = match &self.scenario {
            Some(path) => Config::from_file(path)?,
            None => Config::default(),
        };
        macro_rules! set {
            ($($field:ident),*) => {
                $(if let Some(v) = self.$field { c.$field = v; })*
            };
        }
        set!(
            nodes,
            seeders,
            size,
            free_riders,
            disk_queue,
            slots,
            rechoke,
            seed,
            peers_per_node,
            timeout,
            libtorrent,
            libtorrent_seeders
        );
        if self.piece_size.is_some() {
            c.piece_size = self.piece_size;
        }
        if self.up_rate.is_some() {
            c.up_rate = self.up_rate;
        }
        if self.seeder_up_rate.is_some() {
            c.seeder_up_rate = self.seeder_up_rate;
        }
        if self.down_rate.is_some() {
            c.down_rate = self.down_rate;
        }
        if let Some(k) = self.liars {
            c.liars = k;
        }
        if self.churn.is_some() {
            c.churn = self.churn;
        }
        if let Some((k, rate)) = self.slow_disk {
            c.slow_disks = k;
            c.slow_disk_rate = rate;
        }
        if let Some(choker) = self.choker {
            c.choker = match choker {
                ChokerArg::TitForTat => ChokerKind::TitForTat,
                ChokerArg::Propshare => ChokerKind::Propshare,
            };
        }
        if let Some(t) = self.transport {
            c.transport = match t {
                TransportArg::Tcp => Transport::Tcp,
                TransportArg::Quic => Transport::Quic,
                TransportArg::Bt => Transport::Bt,
            };
        }
        // libtorrent nodes speak BitTorrent only.
        if self.transport.is_none() && c.libtorrent + c.libtorrent_seeders > 0 {
            c.transport = Transport::Bt;
        }
        if let Some(d) = self.discovery {
            c.discovery = match d {
                DiscoveryArg::Dht => Discovery::Dht,
                DiscoveryArg::Fixed => Discovery::Fixed,
            };
        } else if c.transport == Transport::Bt {
            // The DHT finds libp2p addresses only.
            c.discovery = Discovery::Fixed;
        }
        c.processes |= self.processes;
        c.netns |= self.netns;
        if let Some(k) = self.nat {
            c.nat = k;
        }
        if let Some(r) = self.relays {
            c.relays = r;
        }
        if let Some(k) = self.upnp {
            c.upnp = k;
        }
        if let Some(on) = self.on {
            c.on = match on {
                OnArg::Local => Platform::Local,
                OnArg::DockerSwarm => Platform::DockerSwarm,
            };
        }
        if self.image.is_some() && c.on != Platform::DockerSwarm {
            anyhow::bail!("--image is for --on docker-swarm");
        }
        c.validate()?;
        Ok(c)
    }
}

fn default_report_dir(kind: &str) -> PathBuf {
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    std::env::temp_dir().join(format!("sluice-{kind}-{stamp}-{}", std::process::id()))
}

pub(crate) fn sim(args: SimArgs) -> Result<ExitCode> {
    let a = &args.scenario;
    let not_here = [
        (a.processes, "--processes"),
        (a.netns, "--netns"),
        (a.nat.is_some(), "--nat"),
        (a.relays.is_some(), "--relays"),
        (a.upnp.is_some(), "--upnp"),
        (a.keep_running, "--keep-running"),
        (a.keep_data, "--keep-data"),
        (a.transport.is_some(), "--transport"),
        (a.libtorrent.is_some(), "--libtorrent"),
        (a.libtorrent_seeders.is_some(), "--libtorrent-seeders"),
        (a.discovery.is_some(), "--discovery"),
        (a.peers_per_node.is_some(), "--peers-per-node"),
        (a.on.is_some(), "--on"),
        (a.image.is_some(), "--image"),
    ];
    if let Some((_, flag)) = not_here.iter().find(|(given, _)| *given) {
        anyhow::bail!("{flag} is for real nodes (sluice testnet); a simulation has none");
    }
    let config = a.config()?;
    if config.node_processes() {
        anyhow::bail!(
            "the scenario sets `processes`, `netns` or `on`; a simulation runs no processes"
        );
    }
    if config.libtorrent + config.libtorrent_seeders > 0 || config.transport == Transport::Bt {
        anyhow::bail!(
            "the scenario has libtorrent nodes or the BitTorrent transport; a simulation models sluice's core alone"
        );
    }
    let mut options = sluice_testnet::SimOptions::default();
    if let Some(ms) = args.latency {
        if !(ms.is_finite() && (0.0..=10_000.0).contains(&ms)) {
            anyhow::bail!("--latency must be between 0 and 10000 milliseconds");
        }
        options.latency = Duration::from_secs_f64(ms / 1e3);
    }
    if let Some(p) = args.peers {
        options.peers = p;
    }
    if let Some(d) = args.dial_until {
        options.dial_until = d;
    }
    if let Some(m) = args.max_peers {
        if m == 0 {
            anyhow::bail!("--max-peers must be at least 1");
        }
        options.max_peers = m;
    }
    let dir = a
        .report
        .clone()
        .unwrap_or_else(|| default_report_dir("sim"));
    if std::fs::read_dir(&dir).is_ok_and(|mut d| d.next().is_some()) {
        anyhow::bail!(
            "the report directory {} is not empty; remove it or give another --report",
            dir.display()
        );
    }
    if dir.exists() && !dir.is_dir() {
        anyhow::bail!("--report {} is a file; give a directory", dir.display());
    }
    println!(
        "sim: {} nodes ({} seeders, {} free-riders, {} slow disks), {}; report in {}",
        config.nodes,
        config.seeders,
        config.free_riders,
        config.slow_disks,
        sluice_storage::units::format_size(config.size),
        dir.display()
    );
    let started = Instant::now();
    let sim = sluice_testnet::Sim::new(config, options)?;
    let mut shown: Option<Instant> = None;
    let report = sim.run(|p| {
        // A line every few seconds of wall time, whatever the pace.
        if shown.is_some_and(|s| s.elapsed() < REDRAW * 5) {
            return;
        }
        shown = Some(Instant::now());
        println!(
            "t = {:6.1} s simulated: {}/{} complete ({:.1} s wall, {} events)",
            p.simulated_seconds,
            p.complete,
            p.downloading,
            started.elapsed().as_secs_f64(),
            p.events
        );
    })?;
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    report.write(&dir)?;
    println!();
    print!("{}", report.summary());
    println!("report: {}", dir.join("report.md").display());
    Ok(exit_code(&report))
}

pub(crate) fn testnet(args: TestnetArgs) -> Result<ExitCode> {
    let config = args.config()?;
    let dir = args
        .report
        .clone()
        .unwrap_or_else(|| default_report_dir("testnet"));
    if dir.exists() && !dir.is_dir() {
        anyhow::bail!("--report {} is a file; give a directory", dir.display());
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    println!(
        "testnet: {} nodes ({} seeders, {} free-riders, {} slow disks), {}{}; report in {}",
        config.nodes,
        config.seeders,
        config.free_riders,
        config.slow_disks,
        sluice_storage::units::format_size(config.size),
        match config.on {
            Platform::Local => String::new(),
            Platform::DockerSwarm => format!(
                " on Docker Swarm ({})",
                args.image
                    .as_deref()
                    .unwrap_or(sluice_testnet::DEFAULT_IMAGE)
            ),
        },
        dir.display()
    );
    let exe = std::env::current_exe().context("finding the sluice executable")?;
    let mut testnet = Testnet::prepare(config, &dir)?
        .with_executable(exe)
        .with_image(args.image.clone());
    let keep_data = args.keep_data;
    let outcome = runtime.block_on(run(&mut testnet, &dir, &args));
    if let Some((stack, _)) = testnet.stack() {
        // Minutes for a large stack: a second Ctrl-C would leave it.
        eprintln!(
            "removing stack {stack} and waiting until its containers are gone (if cut short: docker stack rm {stack})"
        );
    }
    let stopped = runtime.block_on(testnet.shutdown());
    // The bulk goes on every way out, errors included, unless kept.
    if !keep_data {
        remove_data(&dir)?;
    }
    let code = outcome?;
    stopped?;
    Ok(code)
}

async fn run(testnet: &mut Testnet, dir: &std::path::Path, args: &TestnetArgs) -> Result<ExitCode> {
    let mut view = LiveView::new();
    // Ctrl-C or SIGTERM stops the nodes (processes included) cleanly.
    let mut stops = crate::net::Stops::new()?;
    let outcome = tokio::select! {
        r = testnet.run(|t, nodes| view.draw(t, nodes)) => Some(r),
        () = stops.recv() => None,
    };
    let Some(report) = outcome else {
        eprintln!("interrupted; stopping the nodes");
        return Ok(ExitCode::from(130));
    };
    let report = report?;
    report.write(dir)?;
    println!();
    print!("{}", report.summary());
    println!("report: {}", dir.join("report.md").display());
    if args.keep_running
        && let Some((stack, token)) = testnet.stack()
    {
        println!("stack {stack} keeps running; Ctrl-C removes it");
        println!("  every node's API takes the token: export SLUICE_API_TOKEN={token}");
        for (name, _, _, api) in testnet.endpoints() {
            if let Some(api) = api {
                println!("  {name:<10} sluice peers --api {api}");
            }
        }
        stops.recv().await;
    } else if args.keep_running {
        println!("nodes keep running; Ctrl-C to stop");
        for (name, data_dir, _, api) in testnet.endpoints() {
            if let Some(api) = api {
                match testnet.netns_of(&name) {
                    // The API listens on the namespace's own loopback.
                    Some(ns) => println!(
                        "  {name:<10} ip netns exec {ns} sluice peers --data-dir {}",
                        data_dir.display()
                    ),
                    None => println!(
                        "  {name:<10} --data-dir {}  api http://{api}",
                        data_dir.display()
                    ),
                }
            }
        }
        stops.recv().await;
    }
    Ok(exit_code(&report))
}

/// 1 when the run timed out (not every downloading node completed).
fn exit_code(report: &sluice_testnet::Report) -> ExitCode {
    if report.timed_out {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

/// Removes the bulk of a run (content, nodes' copies and data dirs),
/// keeping the torrent and the reports.
fn remove_data(dir: &std::path::Path) -> Result<()> {
    for (path, is_dir) in [(dir.join("nodes"), true), (dir.join("content.bin"), false)] {
        let removed = if is_dir {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        match removed {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing {}", path.display())),
        }
    }
    Ok(())
}

/// The live view: one line per node, or a grid above [`GRID_ABOVE`]
/// nodes; redrawn in place on a terminal, printed every few seconds
/// otherwise.
struct LiveView {
    tty: bool,
    last: Option<Instant>,
    lines: usize,
}

impl LiveView {
    fn new() -> Self {
        Self {
            tty: std::io::stdout().is_terminal(),
            last: None,
            lines: 0,
        }
    }

    fn draw(&mut self, t: f64, nodes: &[NodeView]) {
        let every = if self.tty { REDRAW } else { REDRAW * 5 };
        if self.last.is_some_and(|l| l.elapsed() < every) {
            return;
        }
        self.last = Some(Instant::now());
        let mut out = String::new();
        if self.tty && self.lines > 0 {
            // Up to the first line we drew, then clear downwards.
            out.push_str(&format!("\x1b[{}A\x1b[J", self.lines));
        }
        let body = if nodes.len() > GRID_ABOVE {
            grid(t, nodes)
        } else {
            lines(t, nodes)
        };
        self.lines = body.lines().count();
        out.push_str(&body);
        let mut stdout = std::io::stdout().lock();
        let _ = stdout.write_all(out.as_bytes());
        let _ = stdout.flush();
    }
}

fn role_tag(n: &NodeView) -> &'static str {
    match (n.role, n.slow_disk, n.client) {
        (Role::Seeder, _, Client::Libtorrent) => "seeder lt",
        (Role::Leecher, _, Client::Libtorrent) => "leecher lt",
        (Role::Seeder, _, _) => "seeder",
        (Role::FreeRider, _, _) => "free-rider",
        (Role::Leecher, true, _) => "slow disk",
        (Role::Leecher, false, _) => "leecher",
        (Role::Liar, _, _) => "liar",
    }
}

fn state(n: &NodeView) -> String {
    if n.left {
        "left".into()
    } else if !n.running {
        "waiting".into()
    } else if n.complete {
        "done".into()
    } else {
        format!("{:5.1}%", 100.0 * n.progress)
    }
}

fn lines(t: f64, nodes: &[NodeView]) -> String {
    let mut s = format!("t = {t:5.1} s\n");
    for n in nodes {
        s.push_str(&format!(
            "  {:<8} {:<10} {:>6}  down {:>10}  up {:>10}  peers {:>2} (unchoked {}, choked {})  disk {:>3}%\n",
            n.name,
            role_tag(n),
            state(n),
            format_rate(n.down_rate),
            format_rate(n.up_rate),
            n.peers,
            n.unchoked,
            n.choked,
            100 * n.disk_used / n.disk_capacity.max(1),
        ));
    }
    s
}

fn grid(t: f64, nodes: &[NodeView]) -> String {
    let done = nodes.iter().filter(|n| n.complete).count();
    let mut s = format!("t = {t:5.1} s   {done}/{} complete\n", nodes.len());
    for row in nodes.chunks(6) {
        for n in row {
            let mark = match n.role {
                Role::Seeder => 'S',
                Role::FreeRider => 'F',
                Role::Leecher if n.slow_disk => 'D',
                Role::Leecher => ' ',
                Role::Liar => 'L',
            };
            s.push_str(&format!(" {:<8}{mark}{:>6} ", n.name, state(n)));
        }
        s.push('\n');
    }
    s.push_str(" S seeder, F free-rider, D slow disk, L liar\n");
    s
}
