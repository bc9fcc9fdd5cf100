//! What a run measured: `report.json` for programs, `report.md` for
//! people, and the numbers the terminal summary prints.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::bound::{BoundInput, kumar_ross};
use crate::config::{Client, Config, Role};
use sluice_storage::units::{format_rate, format_size};

/// One sample of one node.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Sample {
    /// Seconds from the start of the run.
    pub t: f64,
    /// Verified pieces / all pieces.
    pub progress: f64,
    /// Queued + outstanding disk-queue bytes.
    pub disk_used: u64,
    pub downloaded: u64,
    pub uploaded: u64,
}

/// One node's outcome.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeReport {
    pub name: String,
    pub role: Role,
    #[serde(default = "sluice")]
    pub client: Client,
    pub up_rate: Option<u64>,
    pub down_rate: Option<u64>,
    pub slow_disk_rate: Option<u64>,
    /// Seconds from the start.
    pub joined_at: Option<f64>,
    pub left_at: Option<f64>,
    pub completed_at: Option<f64>,
    /// From joining to holding every piece, verified and flushed.
    pub completion_seconds: Option<f64>,
    pub downloaded: u64,
    pub uploaded: u64,
    pub hash_failures: u64,
    /// Peers this node banned for corrupt data.
    #[serde(default)]
    pub banned_peers: usize,
    /// Times it was churned out and came back.
    #[serde(default)]
    pub restarts: usize,
    /// Highest sampled queued + outstanding bytes.
    pub peak_disk_bytes: u64,
    pub disk_capacity_bytes: u64,
    /// Time requesting was held back by a full disk queue.
    pub throttled_seconds: f64,
    /// From its start to the first block it received.
    #[serde(default)]
    pub first_block_seconds: Option<f64>,
    /// Most peers it had at once, as sampled.
    #[serde(default)]
    pub peers_max: usize,
    /// Of `uploaded`, what went to free-riders.
    #[serde(default)]
    pub uploaded_to_free_riders: u64,
    /// Its process's peak resident memory (with `processes`).
    #[serde(default)]
    pub peak_rss_bytes: Option<u64>,
    /// Samples × libtorrent peers it held in a regular upload slot (one
    /// earned by what the peer uploads to it), in a mixed swarm.
    #[serde(default)]
    pub libtorrent_regular_unchokes: u64,
    /// Reachability (with `netns`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reach: Option<NodeReach>,
    /// The time series behind the plots (not in report.json).
    #[serde(skip)]
    pub samples: Vec<Sample>,
}

/// How a node in a network namespace was reached (`--netns`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct NodeReach {
    pub behind_nat: bool,
    /// Its router forwards ports on request (UPnP).
    #[serde(default)]
    pub upnp: bool,
    pub relay: bool,
    /// As the node last said: `public`, `private` or `unknown`.
    pub reachability: String,
    /// Its connections by path, as last sampled.
    pub connections: sluice_node::links::PathCounts,
    /// Hole-punched connections it made.
    pub hole_punches: u64,
    /// Bytes that crossed relays, both ways.
    pub relayed_bytes: u64,
    /// Piece bytes it downloaded over each path.
    pub downloaded_direct: u64,
    pub downloaded_hole_punched: u64,
    pub downloaded_relayed: u64,
}

/// What a run's delivered bytes cost (`scripts/bench-scale` prints it).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Cost {
    /// The file's size times the downloaders that completed.
    pub delivered_bytes: u64,
    /// [`Report::cpu_seconds`] per GiB delivered.
    pub cpu_seconds_per_gib: Option<f64>,
    /// [`Report::peak_rss_bytes`] over the number of nodes.
    pub peak_rss_per_node: Option<u64>,
    /// Downloaders' time from their start to their first block: median
    /// and slowest.
    pub first_block_median_seconds: Option<f64>,
    pub first_block_max_seconds: Option<f64>,
    /// The most peers each node had at once: median over the nodes.
    #[serde(default)]
    pub peers_median: Option<f64>,
}

impl Cost {
    fn of(file_size: u64, nodes: &[NodeReport], cpu: Option<f64>, rss: Option<u64>) -> Self {
        let completed = nodes
            .iter()
            .filter(|n| n.role.downloads() && n.completion_seconds.is_some())
            .count() as u64;
        let delivered_bytes = file_size * completed;
        let gib = delivered_bytes as f64 / (1u64 << 30) as f64;
        let mut first: Vec<f64> = nodes
            .iter()
            .filter(|n| n.role.downloads())
            .filter_map(|n| n.first_block_seconds)
            .collect();
        first.sort_by(f64::total_cmp);
        let mut peers: Vec<f64> = nodes.iter().map(|n| n.peers_max as f64).collect();
        peers.sort_by(f64::total_cmp);
        Self {
            delivered_bytes,
            cpu_seconds_per_gib: cpu.filter(|_| gib > 0.0).map(|c| c / gib),
            peak_rss_per_node: rss.map(|r| r / (nodes.len().max(1) as u64)),
            first_block_median_seconds: median(&first),
            first_block_max_seconds: first.last().copied(),
            peers_median: median(&peers),
        }
    }
}

/// What a run in network namespaces adds to the report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NetnsSummary {
    /// Nodes behind NAT.
    pub nat_nodes: usize,
    /// Of all piece bytes downloaded, the share over hole-punched
    /// connections.
    pub hole_punched_share: f64,
    /// From the start to the first hole-punched connection between two
    /// NATed nodes (as sampled).
    pub first_hole_punch_seconds: Option<f64>,
    /// Bytes that crossed relays, all nodes, both ways.
    pub relayed_bytes: u64,
}

impl NodeReport {
    /// A node of `plan` that joined, left and completed when given, with
    /// every count zero (callers fill in what they measured).
    pub fn of_plan(
        plan: &crate::config::NodePlan,
        joined_at: Option<f64>,
        left_at: Option<f64>,
        completed_at: Option<f64>,
    ) -> Self {
        Self {
            name: plan.name.clone(),
            role: plan.role,
            client: plan.client,
            up_rate: plan.up_rate,
            down_rate: plan.down_rate,
            slow_disk_rate: plan.disk_rate,
            joined_at,
            left_at,
            completed_at,
            completion_seconds: completed_at.zip(joined_at).map(|(c, j)| c - j),
            downloaded: 0,
            uploaded: 0,
            hash_failures: 0,
            banned_peers: 0,
            restarts: 0,
            peak_disk_bytes: 0,
            disk_capacity_bytes: 0,
            throttled_seconds: 0.0,
            first_block_seconds: None,
            peers_max: 0,
            uploaded_to_free_riders: 0,
            peak_rss_bytes: None,
            libtorrent_regular_unchokes: 0,
            reach: None,
            samples: Vec::new(),
        }
    }
}

fn sluice() -> Client {
    Client::Sluice
}

/// Completion times of the contributing downloaders (slow disks left
/// out) of one client, in a swarm of more than one.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClientSummary {
    pub client: Client,
    pub nodes: usize,
    pub completed: usize,
    pub median_seconds: Option<f64>,
    pub max_seconds: Option<f64>,
    /// What they uploaded, in all.
    pub uploaded: u64,
}

/// Completion times of one role.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RoleSummary {
    pub role: Role,
    pub nodes: usize,
    pub completed: usize,
    pub min_seconds: Option<f64>,
    pub median_seconds: Option<f64>,
    pub max_seconds: Option<f64>,
}

/// The run against Kumar & Ross's lower bound.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BoundReport {
    /// T_min in seconds (`None` when no rate is limited).
    pub bound_seconds: Option<f64>,
    /// Until the last downloading node that was there from the start and
    /// stayed was complete.
    pub measured_seconds: Option<f64>,
    /// measured / bound.
    pub ratio: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Totals {
    pub downloaded: u64,
    pub uploaded: u64,
    /// Bytes downloading nodes uploaded to each other (not from seeders).
    pub uploaded_by_peers: u64,
    /// Bytes seeders uploaded to free-riders.
    #[serde(default)]
    pub seeders_to_free_riders: u64,
    /// Bytes contributors (leechers) uploaded to free-riders.
    #[serde(default)]
    pub contributors_to_free_riders: u64,
    pub hash_failures: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub scenario: Config,
    pub info_hash: String,
    pub file_size: u64,
    pub piece_size: u32,
    pub wall_seconds: f64,
    pub timed_out: bool,
    pub by_role: Vec<RoleSummary>,
    /// Leechers by client, when the swarm mixes sluice and libtorrent.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub by_client: Vec<ClientSummary>,
    pub bound: BoundReport,
    /// Free-riders' median completion / contributors' median (`None`
    /// without both).
    pub free_rider_slowdown: Option<f64>,
    /// Every free-rider finished after every contributor.
    pub free_riders_finished_last: Option<bool>,
    pub totals: Totals,
    /// Peak resident memory: this process's (all nodes together), plus,
    /// with `processes`, the sum of every node process's peak.
    pub peak_rss_bytes: Option<u64>,
    /// CPU time (user + system) of this process over the whole run
    /// (Linux), when every node ran in it (not with node processes or
    /// libtorrent nodes: `scripts/bench-scale` measures those from
    /// outside).
    #[serde(default)]
    pub cpu_seconds: Option<f64>,
    /// What moving the bytes cost.
    #[serde(default)]
    pub cost: Cost,
    /// Set when the run was simulated (`sluice sim`): its times are
    /// simulated seconds, `wall_seconds` what the simulation took.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub simulated: Option<Simulated>,
    /// Set with `netns`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<NetnsSummary>,
    pub nodes: Vec<NodeReport>,
}

/// What a simulated run adds to the report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Simulated {
    /// Simulated seconds until the run ended.
    pub seconds: f64,
    /// Events the simulator handled.
    pub events: u64,
    /// One-way delay of every message.
    pub latency_ms: f64,
    /// Peers each node was handed; it dialed them while it had fewer
    /// than `dial_until`, and kept at most `max_peers`.
    pub peers: usize,
    pub dial_until: usize,
    pub max_peers: usize,
    /// Peers of the nodes still running at the end: fewest, median, most.
    pub peers_at_end: [usize; 3],
}

fn median(sorted: &[f64]) -> Option<f64> {
    match sorted.len() {
        0 => None,
        n if n % 2 == 1 => Some(sorted[n / 2]),
        n => Some((sorted[n / 2 - 1] + sorted[n / 2]) / 2.0),
    }
}

/// User + system CPU time of this process, from /proc (Linux); `None`
/// elsewhere.
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // After the command name (in parentheses, which may hold spaces):
    // state is field 3, utime/stime are fields 14-15.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields
        .get(11..13)?
        .iter()
        .map(|f| f.parse::<u64>().ok())
        .sum::<Option<u64>>()?;
    // The kernel reports in USER_HZ, 100 on every Linux architecture
    // sluice runs on.
    Some(ticks as f64 / 100.0)
}

/// `VmHWM` of this process, from /proc (Linux); `None` elsewhere.
fn peak_rss() -> Option<u64> {
    peak_rss_of("/proc/self/status")
}

pub(crate) use sluice_node::api::peak_rss_of;

impl Report {
    pub fn new(
        scenario: Config,
        info_hash: String,
        file_size: u64,
        piece_size: u32,
        wall_seconds: f64,
        timed_out: bool,
        nodes: Vec<NodeReport>,
    ) -> Self {
        let by_role: Vec<RoleSummary> = [Role::Seeder, Role::Leecher, Role::FreeRider, Role::Liar]
            .into_iter()
            .filter(|r| nodes.iter().any(|n| n.role == *r))
            .map(|role| {
                let of_role: Vec<&NodeReport> = nodes.iter().filter(|n| n.role == role).collect();
                let mut times: Vec<f64> = of_role
                    .iter()
                    .filter_map(|n| n.completion_seconds)
                    .collect();
                times.sort_by(f64::total_cmp);
                RoleSummary {
                    role,
                    nodes: of_role.len(),
                    completed: times.len(),
                    min_seconds: times.first().copied(),
                    median_seconds: median(&times),
                    max_seconds: times.last().copied(),
                }
            })
            .collect();

        let mixed = nodes.iter().any(|n| n.client != Client::Sluice);
        let by_client: Vec<ClientSummary> = [Client::Sluice, Client::Libtorrent]
            .into_iter()
            .filter(|_| mixed)
            .map(|client| {
                // Contributors with a normal disk: what libtorrent nodes are.
                let of: Vec<&NodeReport> = nodes
                    .iter()
                    .filter(|n| {
                        n.client == client && n.role == Role::Leecher && n.slow_disk_rate.is_none()
                    })
                    .collect();
                let mut times: Vec<f64> = of.iter().filter_map(|n| n.completion_seconds).collect();
                times.sort_by(f64::total_cmp);
                ClientSummary {
                    client,
                    nodes: of.len(),
                    completed: times.len(),
                    median_seconds: median(&times),
                    max_seconds: times.last().copied(),
                    uploaded: of.iter().map(|n| n.uploaded).sum(),
                }
            })
            .filter(|c| c.nodes > 0)
            .collect();

        // The bound covers the nodes there from the start to the end.
        let stayed: Vec<&NodeReport> = nodes
            .iter()
            .filter(|n| n.role.downloads() && n.joined_at == Some(0.0) && n.left_at.is_none())
            .collect();
        let seeders: Vec<&NodeReport> = nodes.iter().filter(|n| n.role == Role::Seeder).collect();
        let seeders_up: Option<f64> = seeders.iter().map(|n| n.up_rate.map(|r| r as f64)).sum();
        let input = BoundInput {
            file_size,
            seeders_up,
            peers_up: stayed
                .iter()
                .map(|n| match n.role {
                    Role::FreeRider => Some(0.0),
                    _ => n.up_rate.map(|r| r as f64),
                })
                .collect(),
            peers_down: stayed
                .iter()
                .map(|n| match (n.down_rate, n.slow_disk_rate) {
                    (Some(a), Some(b)) => Some(a.min(b) as f64),
                    (a, b) => a.or(b).map(|r| r as f64),
                })
                .collect(),
        };
        let bound_seconds = kumar_ross(&input);
        let measured_seconds = stayed
            .iter()
            .map(|n| n.completed_at)
            .collect::<Option<Vec<f64>>>()
            .and_then(|t| t.into_iter().max_by(f64::total_cmp));
        let ratio = match (measured_seconds, bound_seconds) {
            (Some(m), Some(b)) if b > 0.0 => Some(m / b),
            _ => None,
        };

        let med = |role| {
            by_role
                .iter()
                .find(|r| r.role == role)
                .and_then(|r| r.median_seconds)
        };
        let free_rider_slowdown = match (med(Role::FreeRider), med(Role::Leecher)) {
            (Some(f), Some(c)) if c > 0.0 => Some(f / c),
            _ => None,
        };
        let slowest_contributor = by_role
            .iter()
            .find(|r| r.role == Role::Leecher)
            .and_then(|r| r.max_seconds);
        let free = by_role.iter().find(|r| r.role == Role::FreeRider);
        let free_riders_finished_last = match (free, slowest_contributor) {
            (Some(f), Some(slowest)) => {
                Some(f.completed < f.nodes || f.min_seconds.is_some_and(|m| m >= slowest))
            }
            _ => None,
        };
        let totals = Totals {
            downloaded: nodes.iter().map(|n| n.downloaded).sum(),
            uploaded: nodes.iter().map(|n| n.uploaded).sum(),
            uploaded_by_peers: nodes
                .iter()
                .filter(|n| n.role.downloads())
                .map(|n| n.uploaded)
                .sum(),
            hash_failures: nodes.iter().map(|n| n.hash_failures).sum(),
            seeders_to_free_riders: nodes
                .iter()
                .filter(|n| n.role == Role::Seeder)
                .map(|n| n.uploaded_to_free_riders)
                .sum(),
            contributors_to_free_riders: nodes
                .iter()
                .filter(|n| n.role == Role::Leecher)
                .map(|n| n.uploaded_to_free_riders)
                .sum(),
        };
        let peak_rss_bytes =
            peak_rss().map(|own| own + nodes.iter().filter_map(|n| n.peak_rss_bytes).sum::<u64>());
        // Node processes count only once they have exited and been
        // reaped, which is after the report: their CPU is not known here.
        let separate =
            scenario.node_processes() || scenario.libtorrent > 0 || scenario.libtorrent_seeders > 0;
        let cpu_seconds = cpu_seconds().filter(|_| !separate);
        Self {
            cost: Cost::of(file_size, &nodes, cpu_seconds, peak_rss_bytes),
            scenario,
            info_hash,
            file_size,
            piece_size,
            wall_seconds,
            timed_out,
            by_role,
            by_client,
            bound: BoundReport {
                bound_seconds,
                measured_seconds,
                ratio,
            },
            free_rider_slowdown,
            free_riders_finished_last,
            totals,
            peak_rss_bytes,
            cpu_seconds,
            simulated: None,
            netns: None,
            nodes,
        }
    }

    /// Adds the `--netns` summary, from the nodes' reach and the first
    /// hole punch between NATed nodes the testnet saw.
    pub fn with_netns(mut self, first_hole_punch_seconds: Option<f64>) -> Self {
        let reach: Vec<&NodeReach> = self.nodes.iter().filter_map(|n| n.reach.as_ref()).collect();
        let all: u64 = reach
            .iter()
            .map(|r| r.downloaded_direct + r.downloaded_hole_punched + r.downloaded_relayed)
            .sum();
        let punched: u64 = reach.iter().map(|r| r.downloaded_hole_punched).sum();
        self.netns = Some(NetnsSummary {
            nat_nodes: reach.iter().filter(|r| r.behind_nat).count(),
            hole_punched_share: if all == 0 {
                0.0
            } else {
                punched as f64 / all as f64
            },
            first_hole_punch_seconds,
            relayed_bytes: reach.iter().map(|r| r.relayed_bytes).sum(),
        });
        self
    }

    /// Writes report.json, report.md and the plots into `dir`.
    pub fn write(&self, dir: &Path) -> Result<()> {
        let json = serde_json::to_string_pretty(self).context("encoding report.json")?;
        std::fs::write(dir.join("report.json"), json).context("writing report.json")?;
        std::fs::write(dir.join("report.md"), self.markdown()).context("writing report.md")?;
        std::fs::write(dir.join("samples.csv"), self.samples_csv())
            .context("writing samples.csv")?;
        crate::plot::write_all(self, dir)?;
        Ok(())
    }

    /// Every node's samples, one row each (the data behind the plots).
    pub fn samples_csv(&self) -> String {
        let mut s = String::from("t,node,role,progress,disk_used,downloaded,uploaded\n");
        for n in &self.nodes {
            for x in &n.samples {
                let _ = writeln!(
                    s,
                    "{:.3},{},{},{:.4},{},{},{}",
                    x.t,
                    n.name,
                    n.role.name(),
                    x.progress,
                    x.disk_used,
                    x.downloaded,
                    x.uploaded
                );
            }
        }
        s
    }

    /// The closing summary, a few lines.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        for r in &self.by_role {
            if !r.role.downloads() {
                continue;
            }
            let _ = writeln!(
                s,
                "{:<11} {}/{} complete   median {}   slowest {}",
                r.role.name(),
                r.completed,
                r.nodes,
                secs(r.median_seconds),
                secs(r.max_seconds)
            );
        }
        for c in &self.by_client {
            let _ = writeln!(
                s,
                "{:<11} {}/{} leechers complete   median {}   slowest {}   uploaded {}",
                c.client.name(),
                c.completed,
                c.nodes,
                secs(c.median_seconds),
                secs(c.max_seconds),
                format_size(c.uploaded)
            );
        }
        match (self.bound.measured_seconds, self.bound.bound_seconds) {
            (Some(m), Some(b)) => {
                let _ = writeln!(
                    s,
                    "distribution {m:.1} s vs lower bound {b:.1} s (Kumar & Ross): {:.2}x",
                    m / b
                );
            }
            (None, _) => {
                let _ = writeln!(s, "not every downloading node completed");
            }
            (_, None) => {
                let _ = writeln!(s, "no lower bound: no rate is limited");
            }
        }
        if let (Some(slow), Some(last)) = (self.free_rider_slowdown, self.free_riders_finished_last)
        {
            let _ = writeln!(
                s,
                "free-riders took {slow:.2}x the contributors' median; {}",
                if last {
                    "held back: they finished last"
                } else {
                    "not held back: some finished before a contributor"
                }
            );
            let _ = writeln!(s, "{}", self.free_rider_sources());
        }
        let bans: usize = self.nodes.iter().map(|n| n.banned_peers).sum();
        let restarts: usize = self.nodes.iter().map(|n| n.restarts).sum();
        if bans > 0 || restarts > 0 || self.scenario.liars > 0 {
            let most = self.nodes.iter().map(|n| n.banned_peers).max().unwrap_or(0);
            let _ = writeln!(
                s,
                "{bans} bans ({} liars; at most {most} by one node), {} hash failures, {restarts} churn restarts",
                self.scenario.liars, self.totals.hash_failures
            );
        }
        if let Some(rss) = self.peak_rss_bytes {
            let _ = writeln!(
                s,
                "peak memory {}{}",
                format_size(rss),
                if self.scenario.node_processes() {
                    " (the testnet plus each node process's peak)"
                } else {
                    ""
                }
            );
        }
        if let (Some(cpu), Some(per_gib)) = (self.cpu_seconds, self.cost.cpu_seconds_per_gib) {
            let _ = writeln!(
                s,
                "cost {cpu:.1} CPU-s, {per_gib:.1} per delivered GiB ({}); {} peak memory per node; first block after {} (median), {} (slowest); {} peers per node at most (median)",
                format_size(self.cost.delivered_bytes),
                self.cost.peak_rss_per_node.map_or("-".into(), format_size),
                secs(self.cost.first_block_median_seconds),
                secs(self.cost.first_block_max_seconds),
                self.cost
                    .peers_median
                    .map_or("-".into(), |p| format!("{p:.0}")),
            );
        }
        if let Some(sim) = &self.simulated {
            let _ = writeln!(
                s,
                "simulated {:.1} s in {:.1} s of wall time ({} events)",
                sim.seconds, self.wall_seconds, sim.events
            );
        }
        if self.timed_out {
            let _ = writeln!(
                s,
                "timed out after {:.0} s",
                self.simulated
                    .as_ref()
                    .map_or(self.wall_seconds, |x| x.seconds)
            );
        }
        s
    }

    /// Where free-riders' bytes came from, one line.
    fn free_rider_sources(&self) -> String {
        let t = &self.totals;
        // Free-riders upload nothing: what downloading nodes uploaded is
        // what contributors uploaded.
        let contributed = t.uploaded_by_peers;
        let share = if contributed > 0 {
            100.0 * t.contributors_to_free_riders as f64 / contributed as f64
        } else {
            0.0
        };
        format!(
            "free-riders got {} from seeders and {} from contributors ({share:.1}% of what contributors uploaded)",
            format_size(t.seeders_to_free_riders),
            format_size(t.contributors_to_free_riders),
        )
    }

    pub fn markdown(&self) -> String {
        let c = &self.scenario;
        let mut s = String::new();
        match &self.simulated {
            None => {
                let _ = writeln!(s, "# sluice testnet report\n");
            }
            Some(sim) => {
                let _ = writeln!(
                    s,
                    "# sluice sim report\n\nSimulated: every node the real torrent core on modelled links ({:.1} ms per message) and disks; each node handed {} peers, dialing them while it had fewer than {} and keeping at most {} (at the end: {} fewest, {} median, {} most). {:.1} simulated seconds in {:.1} s of wall time ({} events); the times below are simulated.\n",
                    sim.latency_ms,
                    sim.peers,
                    sim.dial_until,
                    sim.max_peers,
                    sim.peers_at_end[0],
                    sim.peers_at_end[1],
                    sim.peers_at_end[2],
                    sim.seconds,
                    self.wall_seconds,
                    sim.events
                );
            }
        }
        let _ = writeln!(
            s,
            "{} nodes ({} seeders, {} free-riders, {} slow disks), {} in pieces of {}, {} choker, rechoke {} s, seed {}; wall time {:.1} s{}.\n",
            c.nodes,
            c.seeders,
            c.free_riders,
            c.slow_disks,
            format_size(self.file_size),
            format_size(u64::from(self.piece_size)),
            match c.choker {
                crate::config::ChokerKind::TitForTat => "tit-for-tat",
                crate::config::ChokerKind::Propshare => "PropShare",
            },
            c.rechoke,
            c.seed,
            self.wall_seconds,
            if self.timed_out { " (timed out)" } else { "" }
        );
        let _ = writeln!(
            s,
            "| role | nodes | complete | fastest | median | slowest |\n|---|---|---|---|---|---|"
        );
        for r in &self.by_role {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} |",
                r.role.name(),
                r.nodes,
                r.completed,
                secs(r.min_seconds),
                secs(r.median_seconds),
                secs(r.max_seconds)
            );
        }
        let _ = writeln!(s);
        if !self.by_client.is_empty() {
            let _ = writeln!(
                s,
                "Leechers by client:\n\n| client | nodes | complete | median | slowest | uploaded |\n|---|---|---|---|---|---|"
            );
            for c in &self.by_client {
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {} | {} | {} |",
                    c.client.name(),
                    c.nodes,
                    c.completed,
                    secs(c.median_seconds),
                    secs(c.max_seconds),
                    format_size(c.uploaded)
                );
            }
            let regular: u64 = self
                .nodes
                .iter()
                .map(|n| n.libtorrent_regular_unchokes)
                .sum();
            let _ = writeln!(
                s,
                "\nsluice nodes held libtorrent peers in regular (reciprocation) upload slots in {regular} peer-samples.\n"
            );
        }
        match (self.bound.measured_seconds, self.bound.bound_seconds) {
            (Some(m), Some(b)) => {
                let _ = writeln!(
                    s,
                    "Distribution time **{m:.1} s** against the lower bound T_min = max(F/u_s, F/d_min, N·F/(u_s+Σu_i)) = **{b:.1} s** (Kumar & Ross): **{:.2}×**.\n",
                    m / b
                );
            }
            _ => {
                let _ = writeln!(
                    s,
                    "No measured/bound ratio (incomplete run or unlimited rates).\n"
                );
            }
        }
        if let Some(slow) = self.free_rider_slowdown {
            let _ = writeln!(
                s,
                "Free-riders' median completion is {slow:.2}× the contributors'{}.\n",
                if self.free_riders_finished_last == Some(true) {
                    "; every free-rider finished after every contributor"
                } else {
                    ""
                }
            );
            let _ = writeln!(s, "{}.\n", self.free_rider_sources());
        }
        let _ = writeln!(
            s,
            "Totals: {} downloaded, {} uploaded ({} of it by downloading nodes to each other), {} hash failures.{}\n",
            format_size(self.totals.downloaded),
            format_size(self.totals.uploaded),
            format_size(self.totals.uploaded_by_peers),
            self.totals.hash_failures,
            self.peak_rss_bytes
                .map(|b| format!(
                    " Peak memory (the testnet process{}): {}.",
                    if self.scenario.node_processes() {
                        " plus each node process's peak"
                    } else {
                        ", every node in it"
                    },
                    format_size(b)
                ))
                .unwrap_or_default()
        );
        let _ = writeln!(
            s,
            "| node | role | up limit | disk | joined | left | complete after | downloaded | uploaded | peak disk queue | throttled |\n|---|---|---|---|---|---|---|---|---|---|---|"
        );
        for n in &self.nodes {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} / {} | {:.1} s |",
                n.name,
                match n.client {
                    Client::Sluice => n.role.name().to_owned(),
                    other => format!("{} ({})", n.role.name(), other.name()),
                },
                n.up_rate.map_or("-".into(), |r| format_rate(r as f64)),
                n.slow_disk_rate
                    .map_or("fast".into(), |r| format_rate(r as f64)),
                secs(n.joined_at),
                secs(n.left_at),
                secs(n.completion_seconds),
                format_size(n.downloaded),
                format_size(n.uploaded),
                format_size(n.peak_disk_bytes),
                format_size(n.disk_capacity_bytes),
                n.throttled_seconds
            );
        }
        if let Some(net) = &self.netns {
            let _ = writeln!(
                s,
                "\nEvery node a process in a network namespace of its own, links shaped by the kernel (tc token-bucket filters), {} behind NAT routers. Of the piece bytes downloaded, **{:.0}%** came over hole-punched connections; the first hole-punched connection between two NATed nodes was seen after **{}**; {} crossed relays.\n",
                net.nat_nodes,
                100.0 * net.hole_punched_share,
                secs(net.first_hole_punch_seconds),
                format_size(net.relayed_bytes),
            );
            let _ = writeln!(
                s,
                "| node | NAT | relay | reachability | connections direct / hole-punched / relayed / upnp | hole punches | relayed | downloaded direct / hole-punched / relayed |\n|---|---|---|---|---|---|---|---|"
            );
            for n in &self.nodes {
                let Some(r) = &n.reach else { continue };
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {} | {} / {} / {} / {} | {} | {} | {} / {} / {} |",
                    n.name,
                    match (r.behind_nat, r.upnp) {
                        (true, true) => "yes (UPnP)",
                        (true, false) => "yes",
                        _ => "-",
                    },
                    if r.relay { "yes" } else { "-" },
                    r.reachability,
                    r.connections.direct,
                    r.connections.hole_punched,
                    r.connections.relayed,
                    r.connections.upnp,
                    r.hole_punches,
                    format_size(r.relayed_bytes),
                    format_size(r.downloaded_direct),
                    format_size(r.downloaded_hole_punched),
                    format_size(r.downloaded_relayed),
                );
            }
        }
        let _ = writeln!(
            s,
            "\n![progress](progress.svg)\n![completion](completion_cdf.svg)\n![disk queue](disk_queue.svg)\n![given vs received](upload_vs_download.svg)"
        );
        s
    }
}

fn secs(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.1} s"))
}
