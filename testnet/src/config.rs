//! What a testnet run is: the flags of `sluice testnet`, or the same keys in
//! a scenario file (TOML), plus timed events.
//!
//! ```toml
//! nodes = 16
//! seeders = 1
//! size = "64MiB"
//! up_rate = "5MB/s"
//! seeder_up_rate = "20MB/s"
//! free_riders = 2
//! slow_disks = 1
//! slow_disk_rate = "8MB/s"
//! choker = "propshare"
//! rechoke = 2.0
//!
//! [[event]]
//! at = 5.0
//! node = "peer-03"
//! action = "leave"
//!
//! [[event]]
//! at = 3.0
//! node = "peer-05"
//! action = "up-rate"
//! rate = "1MB/s"
//!
//! [[event]]
//! node = "seed-1"
//! action = "leave-after-copies"
//! copies = 3
//!
//! [[event]]
//! at = 4.0
//! node = "peer-07"
//! action = "join"
//! ```

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use sluice_storage::units::serde_units;

const MIB: u64 = 1024 * 1024;

/// The choking strategy every contributing node runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ChokerKind {
    TitForTat,
    Propshare,
}

/// The transport between nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Transport {
    /// libp2p over TCP (Noise, Yamux).
    Tcp,
    /// libp2p over QUIC.
    Quic,
    /// The BitTorrent peer wire over TCP (plaintext): every node is
    /// dialed at its BitTorrent address, as libtorrent nodes are.
    Bt,
}

/// What runs a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Client {
    Sluice,
    /// libtorrent 2.0 (Debian's `python3-libtorrent`), a process of its
    /// own, over the BitTorrent wire.
    Libtorrent,
}

impl Client {
    pub fn name(self) -> &'static str {
        match self {
            Client::Sluice => "sluice",
            Client::Libtorrent => "libtorrent",
        }
    }
}

/// How nodes find each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Discovery {
    /// A DHT node starts first; every node bootstraps from it, provides
    /// the info-hash and dials the providers it finds.
    Dht,
    /// Each node dials every seeder and `peers_per_node` earlier nodes.
    Fixed,
}

/// Where the nodes run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Platform {
    /// On this machine: in the testnet's process, or as processes
    /// (`processes`, `netns`).
    #[default]
    Local,
    /// As a stack on the Docker Swarm the local `docker` talks to: one
    /// service per kind of node, its nodes the service's replicas, each a
    /// container of the sluice image.
    DockerSwarm,
}

impl Platform {
    pub fn name(self) -> &'static str {
        match self {
            Platform::Local => "local",
            Platform::DockerSwarm => "docker-swarm",
        }
    }
}

/// A testnet: nodes, content, links, disks, behaviour and events.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Nodes in all, seeders included.
    pub nodes: usize,
    pub seeders: usize,
    /// Bytes of generated content (one file).
    #[serde(deserialize_with = "serde_units::size")]
    pub size: u64,
    /// Piece size (default: chosen from the size).
    #[serde(deserialize_with = "serde_units::opt_size")]
    pub piece_size: Option<u64>,
    /// Upload limit of every downloading node, bytes/s.
    #[serde(deserialize_with = "serde_units::opt_rate")]
    pub up_rate: Option<u64>,
    /// Upload limit of every seeder, bytes/s.
    #[serde(deserialize_with = "serde_units::opt_rate")]
    pub seeder_up_rate: Option<u64>,
    /// Download limit of every downloading node, bytes/s.
    #[serde(deserialize_with = "serde_units::opt_rate")]
    pub down_rate: Option<u64>,
    /// Downloading nodes that never unchoke anyone.
    pub free_riders: usize,
    /// Nodes (besides seeders and downloading nodes) that claim every
    /// piece and serve garbage: a copy overwritten after it was verified,
    /// served unchecked.
    pub liars: usize,
    /// Every this many seconds a running, unfinished leecher leaves and
    /// comes back half as long later (same data dir: it resumes).
    pub churn: Option<f64>,
    /// Downloading nodes whose disk writes at `slow_disk_rate`.
    pub slow_disks: usize,
    #[serde(deserialize_with = "serde_units::rate")]
    pub slow_disk_rate: u64,
    /// Each node's disk queue (requested + unwritten bytes).
    #[serde(deserialize_with = "serde_units::size")]
    pub disk_queue: u64,
    pub choker: ChokerKind,
    /// Upload slots per node, one of them optimistic.
    pub slots: u32,
    /// Seconds between rechokes.
    pub rechoke: f64,
    pub transport: Transport,
    pub discovery: Discovery,
    /// Fixes the content, node order, who dials whom and the chokers' RNG.
    pub seed: u64,
    /// With fixed discovery: how many earlier nodes each downloading node
    /// dials (besides every seeder).
    pub peers_per_node: usize,
    /// Give up after this many seconds.
    pub timeout: f64,
    /// Every node a `sluice` process of its own rather than a node in the
    /// testnet's process.
    pub processes: bool,
    /// Downloading nodes that are libtorrent 2.0 processes instead of
    /// sluice nodes (contributors: never free-riders or slow disks).
    /// Needs the BitTorrent transport.
    pub libtorrent: usize,
    /// Seeders that are libtorrent 2.0 processes.
    pub libtorrent_seeders: usize,
    /// Every node a `sluice` process in a network namespace of its own,
    /// with its own address on a shared bridge; rates are the kernel's
    /// (`tc` token-bucket filters on each node's link), not sluice's.
    /// Needs root (CAP_SYS_ADMIN).
    pub netns: bool,
    /// With `netns`: nodes behind NAT routers of their own (masquerade,
    /// nothing in unasked), picked by `seed`. They reach each other
    /// through relays and hole punching.
    pub nat: usize,
    /// With `netns`: public nodes that also serve as relays (the DHT node
    /// always does).
    pub relays: usize,
    /// With `netns`: of the NATed nodes, how many have a router that maps
    /// ports on request (UPnP: a real miniupnpd).
    pub upnp: usize,
    /// Where the nodes run.
    pub on: Platform,
    #[serde(rename = "event")]
    pub events: Vec<Event>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            nodes: 8,
            seeders: 1,
            size: 64 * MIB,
            piece_size: None,
            up_rate: Some(5_000_000),
            seeder_up_rate: Some(20_000_000),
            down_rate: None,
            free_riders: 1,
            liars: 0,
            churn: None,
            slow_disks: 1,
            slow_disk_rate: 8_000_000,
            disk_queue: 16 * MIB,
            choker: ChokerKind::TitForTat,
            slots: 4,
            rechoke: 2.0,
            transport: Transport::Tcp,
            discovery: Discovery::Dht,
            seed: 1,
            peers_per_node: 8,
            timeout: 600.0,
            processes: false,
            libtorrent: 0,
            libtorrent_seeders: 0,
            netns: false,
            nat: 0,
            relays: 0,
            upnp: 0,
            on: Platform::Local,
            events: Vec::new(),
        }
    }
}

/// Something that happens to one node during the run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "RawEvent")]
pub struct Event {
    /// Seconds from the start (not used by `leave-after-copies`).
    pub at: f64,
    /// The node's name (`seed-1`, `peer-03`, …).
    pub node: String,
    #[serde(flatten)]
    pub action: Action,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "action", rename_all = "kebab-case")]
pub enum Action {
    /// The node starts at `at` instead of at once.
    Join,
    /// The node shuts down at `at`.
    Leave,
    /// The node's upload limit becomes `rate` at `at`.
    UpRate { rate: u64 },
    /// The node (a seeder) leaves once `copies` other nodes hold the
    /// whole file.
    LeaveAfterCopies { copies: usize },
}

/// An event as written in a scenario file (every key checked).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEvent {
    #[serde(default)]
    at: f64,
    node: String,
    action: String,
    #[serde(default, deserialize_with = "serde_units::opt_rate")]
    rate: Option<u64>,
    copies: Option<usize>,
}

impl TryFrom<RawEvent> for Event {
    type Error = String;

    fn try_from(r: RawEvent) -> Result<Self, String> {
        let action = match (r.action.as_str(), r.rate, r.copies) {
            ("join", None, None) => Action::Join,
            ("leave", None, None) => Action::Leave,
            ("up-rate", Some(rate), None) => Action::UpRate { rate },
            ("leave-after-copies", None, Some(copies)) => Action::LeaveAfterCopies { copies },
            ("up-rate", None, _) => return Err("an up-rate event needs `rate`".into()),
            ("leave-after-copies", _, None) => {
                return Err("a leave-after-copies event needs `copies`".into());
            }
            ("join" | "leave" | "up-rate" | "leave-after-copies", _, _) => {
                return Err(format!("event {:?} has a key it does not use", r.action));
            }
            (other, _, _) => {
                return Err(format!(
                    "unknown action {other:?} (join, leave, up-rate, leave-after-copies)"
                ));
            }
        };
        Ok(Event {
            at: r.at,
            node: r.node,
            action,
        })
    }
}

/// A node's part in the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    Seeder,
    Leecher,
    FreeRider,
    /// Claims every piece, serves garbage.
    Liar,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Seeder => "seeder",
            Role::Leecher => "leecher",
            Role::FreeRider => "free-rider",
            Role::Liar => "liar",
        }
    }

    /// Whether nodes of this role download (and the run waits for them).
    pub fn downloads(self) -> bool {
        matches!(self, Role::Leecher | Role::FreeRider)
    }
}

/// One node as the run will start it.
#[derive(Debug, Clone, Serialize)]
pub struct NodePlan {
    pub name: String,
    pub role: Role,
    pub client: Client,
    pub up_rate: Option<u64>,
    pub down_rate: Option<u64>,
    /// Emulated disk speed (slow-disk nodes).
    pub disk_rate: Option<u64>,
    /// Seconds after the start that the node joins.
    pub join_at: f64,
    /// Behind a NAT router (`--netns --nat K`).
    pub behind_nat: bool,
    /// Serves as a relay (`--netns --relays R`).
    pub relay: bool,
    /// Behind a router with UPnP (`--netns --upnp K`).
    pub upnp: bool,
}

impl Config {
    /// Reads a scenario file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the scenario {}", path.display()))?;
        let config: Config = toml::from_str(&text)
            .with_context(|| format!("{} is not a valid scenario", path.display()))?;
        Ok(config)
    }

    /// Whether every node is a process of its own (`processes`, `netns`,
    /// or a container on Docker Swarm) rather than one of the testnet's.
    pub fn node_processes(&self) -> bool {
        self.processes || self.netns || self.on == Platform::DockerSwarm
    }

    pub fn rechoke_interval(&self) -> Duration {
        Duration::from_secs_f64(self.rechoke)
    }

    /// Refuses what cannot run, naming the setting.
    pub fn validate(&self) -> Result<()> {
        if self.seeders == 0 {
            bail!("a testnet needs at least one seeder");
        }
        if self.nodes <= self.seeders + self.liars {
            bail!(
                "--nodes {} leaves no downloading node beside {} seeders and {} liars",
                self.nodes,
                self.seeders,
                self.liars
            );
        }
        if self.churn.is_some_and(|c| !(c.is_finite() && c > 0.0)) {
            bail!("--churn must be a positive number of seconds");
        }
        let leechers = self.nodes - self.seeders - self.liars;
        if self.free_riders + self.slow_disks > leechers {
            bail!(
                "{} free-riders and {} slow disks do not fit in {leechers} downloading nodes",
                self.free_riders,
                self.slow_disks
            );
        }
        if self.size == 0 {
            bail!("--size must be at least one byte");
        }
        if self.libtorrent + self.libtorrent_seeders > 0 && self.transport != Transport::Bt {
            bail!(
                "libtorrent nodes speak BitTorrent: use --transport bt (and --discovery fixed) with --libtorrent"
            );
        }
        if self.transport == Transport::Bt && self.discovery == Discovery::Dht {
            bail!(
                "--transport bt needs --discovery fixed: the DHT finds libp2p addresses, not BitTorrent ones"
            );
        }
        if self.libtorrent_seeders > self.seeders {
            bail!(
                "--libtorrent-seeders {} is more than the {} seeders",
                self.libtorrent_seeders,
                self.seeders
            );
        }
        if self.free_riders + self.slow_disks + self.libtorrent > leechers {
            bail!(
                "{} libtorrent nodes do not fit in {leechers} downloading nodes beside {} free-riders and {} slow disks",
                self.libtorrent,
                self.free_riders,
                self.slow_disks
            );
        }
        // The range `sluice seed/get --rechoke` takes (what --processes
        // passes on).
        if !(self.rechoke.is_finite() && (0.05..=3600.0).contains(&self.rechoke)) {
            bail!("--rechoke must be between 0.05 and 3600 seconds");
        }
        if !(self.timeout.is_finite() && self.timeout > 0.0) {
            bail!("the timeout must be a positive number of seconds");
        }
        if self.slots < 2 {
            bail!("--slots must be at least 2 (one of them is optimistic)");
        }
        if self.slow_disk_rate == 0 {
            bail!("the slow disk rate must be positive");
        }
        if self.netns {
            if self.transport == Transport::Bt || self.libtorrent + self.libtorrent_seeders > 0 {
                bail!(
                    "--netns runs sluice nodes over libp2p: use --transport tcp or quic, without libtorrent nodes"
                );
            }
            if self.nat > 0 && self.discovery != Discovery::Dht {
                bail!(
                    "nodes behind NAT (--nat) find each other through the DHT: use --discovery dht"
                );
            }
            if self.upnp > self.nat {
                bail!(
                    "--upnp {} is more than the {} nodes behind NAT (--nat)",
                    self.upnp,
                    self.nat
                );
            }
            if self.nat + self.relays > self.nodes {
                bail!(
                    "--nat {} and --relays {} are more than the {} nodes",
                    self.nat,
                    self.relays,
                    self.nodes
                );
            }
        } else if self.nat + self.relays + self.upnp > 0 {
            bail!("--nat, --relays and --upnp need --netns (nodes in network namespaces)");
        }
        if self.on == Platform::DockerSwarm {
            self.validate_on_swarm()?;
        }
        let names: Vec<String> = self.plan().into_iter().map(|n| n.name).collect();
        for e in &self.events {
            if !names.contains(&e.node) {
                bail!(
                    "event for {:?}: no such node (nodes are {} … {})",
                    e.node,
                    names[0],
                    names[names.len() - 1]
                );
            }
            if !(e.at.is_finite() && e.at >= 0.0) {
                bail!("event for {}: `at` must be seconds ≥ 0", e.node);
            }
            let client = self
                .plan()
                .into_iter()
                .find(|n| n.name == e.node)
                .map(|n| n.client);
            if client == Some(Client::Libtorrent) && matches!(e.action, Action::UpRate { .. }) {
                bail!(
                    "event for {}: up-rate events change sluice nodes only",
                    e.node
                );
            }
            if (self.processes || self.netns) && matches!(e.action, Action::UpRate { .. }) {
                bail!(
                    "event for {}: up-rate events need the nodes in one process (without --processes): a running `sluice` has no way to change its rate",
                    e.node
                );
            }
        }
        Ok(())
    }

    /// What a run on Docker Swarm cannot do yet: its nodes are a
    /// service's replicas, all started by one deploy and found through
    /// the DHT, each the sluice image.
    fn validate_on_swarm(&self) -> Result<()> {
        let refused = [
            (self.processes, "--processes (every node is a container)"),
            (self.netns, "--netns (every node is a container)"),
            (
                self.libtorrent + self.libtorrent_seeders > 0,
                "libtorrent nodes (the image holds sluice only)",
            ),
            (self.transport == Transport::Bt, "--transport bt"),
            (
                self.discovery == Discovery::Fixed,
                "--discovery fixed (replicas find each other through the DHT)",
            ),
            (self.liars > 0, "liars"),
            (self.churn.is_some(), "--churn"),
            (
                !self.events.is_empty(),
                "events (they name single nodes; on Docker Swarm nodes are replicas, started together)",
            ),
        ];
        match refused.iter().find(|(given, _)| *given) {
            Some((_, what)) => bail!("--on docker-swarm does not run {what}"),
            None => Ok(()),
        }
    }

    /// Every node, in start order: seeders, then the downloading nodes.
    /// Which downloading nodes free-ride or have slow disks is fixed by
    /// `seed`.
    pub fn plan(&self) -> Vec<NodePlan> {
        use rand::SeedableRng;
        use rand::seq::SliceRandom;

        let leechers = self.nodes.saturating_sub(self.seeders + self.liars);
        let lt_from = self.free_riders + self.slow_disks;
        let mut kinds: Vec<(Role, bool, Client)> = (0..leechers)
            .map(|i| {
                if i < self.free_riders {
                    (Role::FreeRider, false, Client::Sluice)
                } else if i < lt_from {
                    (Role::Leecher, true, Client::Sluice)
                } else if i < lt_from + self.libtorrent {
                    (Role::Leecher, false, Client::Libtorrent)
                } else {
                    (Role::Leecher, false, Client::Sluice)
                }
            })
            .collect();
        let mut rng = rand::rngs::StdRng::seed_from_u64(self.seed);
        kinds.shuffle(&mut rng);
        let mut plan: Vec<NodePlan> = (1..=self.seeders)
            .map(|i| NodePlan {
                name: format!("seed-{i}"),
                role: Role::Seeder,
                // The last ones: seed-1 stays a sluice node unless every
                // seeder is libtorrent.
                client: if i > self.seeders - self.libtorrent_seeders {
                    Client::Libtorrent
                } else {
                    Client::Sluice
                },
                up_rate: self.seeder_up_rate,
                down_rate: None,
                disk_rate: None,
                join_at: 0.0,
                behind_nat: false,
                relay: false,
                upnp: false,
            })
            .collect();
        plan.extend((1..=self.liars).map(|i| NodePlan {
            name: format!("liar-{i}"),
            role: Role::Liar,
            client: Client::Sluice,
            up_rate: self.up_rate,
            down_rate: None,
            disk_rate: None,
            join_at: 0.0,
            behind_nat: false,
            relay: false,
            upnp: false,
        }));
        let width = leechers.to_string().len().max(2);
        for (i, (role, slow, client)) in kinds.into_iter().enumerate() {
            plan.push(NodePlan {
                name: format!("peer-{:0width$}", i + 1),
                role,
                client,
                up_rate: self.up_rate,
                down_rate: self.down_rate,
                disk_rate: slow.then_some(self.slow_disk_rate),
                join_at: 0.0,
                behind_nat: false,
                relay: false,
                upnp: false,
            });
        }
        for e in &self.events {
            if e.action == Action::Join
                && let Some(n) = plan.iter_mut().find(|n| n.name == e.node)
            {
                n.join_at = e.at;
            }
        }
        // Who is behind NAT and who relays: fixed by the seed, drawn
        // apart from the roles above so that those stay as they were.
        let mut order: Vec<usize> = (0..plan.len()).collect();
        order.shuffle(&mut rand::rngs::StdRng::seed_from_u64(self.seed ^ 0x4a7));
        for (k, &i) in order.iter().enumerate() {
            plan[i].behind_nat = k < self.nat;
            plan[i].upnp = k < self.upnp;
            plan[i].relay = (self.nat..self.nat + self.relays).contains(&k);
        }
        plan
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scenario_file_says_what_the_flags_say() {
        let text = r#"
            nodes = 6
            size = "2MiB"
            up_rate = "1MB/s"
            seeder_up_rate = 3000000
            free_riders = 2
            slow_disks = 1
            slow_disk_rate = "512KiB/s"
            choker = "propshare"
            rechoke = 0.5

            [[event]]
            at = 1.5
            node = "peer-02"
            action = "leave"

            [[event]]
            node = "seed-1"
            action = "leave-after-copies"
            copies = 2

            [[event]]
            at = 2.0
            node = "peer-03"
            action = "up-rate"
            rate = "2MB/s"
        "#;
        let c: Config = toml::from_str(text).unwrap();
        c.validate().unwrap();
        assert_eq!(c.size, 2 * MIB);
        assert_eq!(c.up_rate, Some(1_000_000));
        assert_eq!(c.seeder_up_rate, Some(3_000_000));
        assert_eq!(c.slow_disk_rate, 512 * 1024);
        assert_eq!(c.choker, ChokerKind::Propshare);
        assert_eq!(c.events.len(), 3);
        assert_eq!(c.events[1].action, Action::LeaveAfterCopies { copies: 2 });
        assert_eq!(c.events[2].action, Action::UpRate { rate: 2_000_000 });
        let plan = c.plan();
        assert_eq!(plan.len(), 6);
        assert_eq!(plan.iter().filter(|n| n.role == Role::FreeRider).count(), 2);
        assert_eq!(plan.iter().filter(|n| n.disk_rate.is_some()).count(), 1);
        assert_eq!(c.plan()[1].name, "peer-01");
    }

    #[test]
    fn bad_scenarios_name_the_problem() {
        let err = toml::from_str::<Config>("nodes = 3\nbogus = 1").unwrap_err();
        assert!(err.to_string().contains("bogus"), "{err}");
        let err = toml::from_str::<Config>("size = \"12XB\"").unwrap_err();
        assert!(err.to_string().contains("12XB"), "{err}");
        let c: Config = toml::from_str(
            "nodes = 3\n[[event]]\nat = 1.0\nnode = \"peer-09\"\naction = \"leave\"",
        )
        .unwrap();
        let err = toml::from_str::<Config>("[[event]]\nnode = \"peer-01\"\naction = \"explode\"")
            .unwrap_err();
        assert!(err.to_string().contains("explode"), "{err}");
        let err = toml::from_str::<Config>("[[event]]\nnode = \"peer-01\"\naction = \"up-rate\"")
            .unwrap_err();
        assert!(err.to_string().contains("rate"), "{err}");
        assert!(c.validate().unwrap_err().to_string().contains("peer-09"));
        let c = Config {
            nodes: 2,
            free_riders: 1,
            slow_disks: 1,
            ..Config::default()
        };
        assert!(c.validate().is_err());
    }

    #[test]
    fn docker_swarm_refuses_what_it_cannot_run_and_says_what() {
        let on_swarm = Config {
            on: Platform::DockerSwarm,
            ..Config::default()
        };
        on_swarm.validate().unwrap();
        let c: Config = toml::from_str("on = \"docker-swarm\"").unwrap();
        assert_eq!(c.on, Platform::DockerSwarm);
        assert!(c.node_processes());
        for (c, says) in [
            (
                Config {
                    churn: Some(5.0),
                    ..on_swarm.clone()
                },
                "--churn",
            ),
            (
                Config {
                    discovery: Discovery::Fixed,
                    ..on_swarm.clone()
                },
                "--discovery fixed",
            ),
            (
                Config {
                    processes: true,
                    ..on_swarm.clone()
                },
                "--processes",
            ),
            (
                Config {
                    events: vec![Event {
                        at: 1.0,
                        node: "peer-01".into(),
                        action: Action::Leave,
                    }],
                    ..on_swarm.clone()
                },
                "events",
            ),
        ] {
            let err = c.validate().unwrap_err().to_string();
            assert!(err.contains("docker-swarm") && err.contains(says), "{err}");
        }
    }

    /// The scenario the README shows parses and validates.
    #[test]
    fn the_readme_scenario_is_valid() {
        let readme = include_str!("../../README.md");
        let start = readme
            .find("```toml\n")
            .expect("a toml block in the README")
            + 8;
        let len = readme[start..].find("```").unwrap();
        let c: Config = toml::from_str(&readme[start..start + len]).unwrap();
        c.validate().unwrap();
        assert_eq!(c.events.len(), 3);
    }

    #[test]
    fn the_seed_fixes_who_is_who() {
        let c = Config {
            nodes: 20,
            free_riders: 3,
            slow_disks: 2,
            ..Config::default()
        };
        let a: Vec<_> = c
            .plan()
            .into_iter()
            .map(|n| (n.role, n.disk_rate))
            .collect();
        let b: Vec<_> = c
            .plan()
            .into_iter()
            .map(|n| (n.role, n.disk_rate))
            .collect();
        assert_eq!(a, b);
        let other = Config { seed: 2, ..c };
        let d: Vec<_> = other
            .plan()
            .into_iter()
            .map(|n| (n.role, n.disk_rate))
            .collect();
        assert_ne!(a, d, "another seed, another order");
    }
}
