//! `--on docker-swarm`: the testnet as a stack on the Docker Swarm that
//! the local `docker` CLI talks to.
//!
//! The stack is generated from the scenario: a DHT bootstrap node (its key
//! made here and handed over as a secret), and one service per kind of
//! node (`seeder`, `leecher`, `free-rider`, `slow-disk`) whose replicas
//! are the scenario's nodes, slot `k` of a service being its `k`-th node
//! in plan order. Each replica is the sluice image running the command a
//! person would type (`seed`, `get --seed-after`), with the flags
//! `--processes` gives a local process; seeders write the testnet's
//! content where they run, and every node gets the torrent as a Docker
//! config, so nothing needs a shared disk and the same stack runs on one
//! host or many. Nodes find each other through the DHT, as replicas have
//! no address known beforehand.
//!
//! The collector is this process: each node's control API is published on
//! a port of its host (host mode) and read with the stack's token, the
//! host found from the task's swarm node. The stack is removed with
//! `docker stack rm`, and this waits until its containers and network are
//! gone.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Deserialize;
use serde_json::json;
use sluice_node::api::{ApiClient, NodeInfo, PeerInfo, TorrentInfo};

use crate::config::{NodePlan, Role, Transport};

/// The image a stack runs unless told otherwise: what `scripts/image`
/// builds from this version.
pub const DEFAULT_IMAGE: &str = concat!("sluice:", env!("CARGO_PKG_VERSION"));
/// The port every node's control API listens on inside its container.
const API_PORT: u16 = 7070;
/// The port every node's libp2p transport listens on inside its container.
const P2P_PORT: u16 = 4001;
/// How long one `docker` command may take.
const DOCKER_WAIT: Duration = Duration::from_secs(120);
/// How long the stack has to go once removed: this, and more per
/// container.
const REMOVE_WAIT: Duration = Duration::from_secs(60);
const REMOVE_PER_CONTAINER: Duration = Duration::from_secs(3);
/// How long a running node may go without answering on its API.
const SILENCE: Duration = Duration::from_secs(30);
/// How often removal is checked on.
const REMOVE_POLL: Duration = Duration::from_millis(500);
/// Where each container finds the torrent (a Docker config).
const TORRENT_AT: &str = "/testnet.torrent";
/// Where each container finds the DHT node's key (a Docker secret).
const DHT_KEY_AT: &str = "/run/secrets/dht-key";
/// The image's user, who must be able to read the config and secret.
const IMAGE_UID: &str = "10001";

/// One service of the stack: nodes alike in everything but their slot.
#[derive(Debug)]
pub(crate) struct Service {
    /// Its name in the stack (a DNS label).
    pub name: String,
    /// The testnet's nodes it runs, by index; slot `k` is `nodes[k - 1]`.
    pub nodes: Vec<usize>,
    /// The node command and its flags.
    args: Vec<String>,
    /// Its nodes are seeders.
    seeds: bool,
}

/// One task (a replica's container) as Docker reports it.
#[derive(Debug)]
pub(crate) struct Task {
    /// Index into the testnet's nodes.
    pub node: usize,
    /// Set when its container ended (or will never run): Docker's state
    /// and error. A node runs until the testnet stops it.
    pub ended: Option<String>,
    /// Where its control API is published (host and port), once running.
    pub api: Option<SocketAddr>,
}

impl RawTask {
    /// Docker's state and error, when the container ended or will never
    /// run.
    fn ended(&self) -> Option<String> {
        let ended = matches!(
            self.status.state.as_str(),
            "complete" | "failed" | "shutdown" | "rejected" | "orphaned" | "remove"
        );
        ended.then(|| match self.status.err.as_deref() {
            Some(e) if !e.is_empty() => format!("{} ({e})", self.status.state),
            _ => self.status.state.clone(),
        })
    }
}

/// The deployed stack.
#[derive(Debug)]
pub(crate) struct Stack {
    pub name: String,
    pub token: String,
    pub services: Vec<Service>,
    /// Each swarm node's address, by node id.
    hosts: HashMap<String, IpAddr>,
    /// The `docker` arguments that deploy it, and the DHT node's key
    /// file (deleted once deployed).
    deploy: Vec<std::ffi::OsString>,
    key: PathBuf,
    removed: bool,
}

/// Checks that the local `docker` talks to a swarm manager and (unless
/// another image is given) that the default image is here.
pub(crate) async fn check(image: Option<&str>) -> Result<()> {
    let state = docker([
        "info",
        "--format",
        "{{.Swarm.LocalNodeState}} {{.Swarm.ControlAvailable}}",
    ])
    .await
    .context("--on docker-swarm needs Docker (`docker info` failed)")?;
    if state.trim() != "active true" {
        bail!(
            "--on docker-swarm needs this Docker to be a swarm manager (its swarm state: {}); `docker swarm init` makes a one-node swarm",
            state.trim()
        );
    }
    if image.is_none() && !image_here(DEFAULT_IMAGE).await {
        bail!(
            "there is no image {DEFAULT_IMAGE} here: build it with scripts/image, or give --image REGISTRY/sluice:TAG"
        );
    }
    Ok(())
}

/// Whether this Docker has `image` (no registry asked).
async fn image_here(image: &str) -> bool {
    docker(["image", "inspect", "--format", "{{.Id}}", image])
        .await
        .is_ok()
}

/// What the stack is made from.
pub(crate) struct StackSpec<'a> {
    pub name: &'a str,
    pub image: Option<&'a str>,
    /// The report directory: the stack file, the torrent and (for the
    /// deploy only) the DHT node's key go there.
    pub dir: &'a Path,
    pub torrent: &'a Path,
    pub transport: Transport,
    /// The testnet's content seed (seeders write the content from it).
    pub seed: u64,
    pub disk_queue: u64,
    pub plans: &'a [NodePlan],
    /// A node's flags beside its command (choking, rates): the same as
    /// `--processes` gives.
    pub flags: &'a dyn Fn(&NodePlan) -> Vec<std::ffi::OsString>,
}

impl Stack {
    /// Writes the stack file (`stack.json`) and the DHT node's key;
    /// [`Stack::deploy`] deploys them. Kept before it is deployed, so
    /// that a deploy stopped half-way (Ctrl-C, an error) is removed too.
    pub(crate) async fn prepare(spec: StackSpec<'_>) -> Result<Self> {
        let stacks = docker(["stack", "ls", "--format", "{{.Name}}"]).await?;
        if stacks.lines().any(|s| s.trim() == spec.name) {
            bail!(
                "a stack named {} already runs (`docker stack rm {}` removes it)",
                spec.name,
                spec.name
            );
        }
        let key_path = spec.dir.join("dht.key");
        let key =
            sluice_node::datadir::new_identity(&key_path).context("making the DHT node's key")?;
        let dht_id = key.public().to_peer_id();
        let bootstrap = match spec.transport {
            Transport::Quic => format!("/dns4/dht/udp/{P2P_PORT}/quic-v1/p2p/{dht_id}"),
            _ => format!("/dns4/dht/tcp/{P2P_PORT}/p2p/{dht_id}"),
        };
        let listen = match spec.transport {
            Transport::Quic => format!("/ip4/0.0.0.0/udp/{P2P_PORT}/quic-v1"),
            _ => format!("/ip4/0.0.0.0/tcp/{P2P_PORT}"),
        };
        let services = group(&spec);
        let token = token();
        let image = spec.image.unwrap_or(DEFAULT_IMAGE);
        let node = |command: Vec<String>, replicas: usize| {
            json!({
                "image": image,
                "command": command,
                "networks": ["net"],
                "environment": {
                    "SLUICE_API": format!("0.0.0.0:{API_PORT}"),
                    "SLUICE_API_TOKEN": token,
                    "SLUICE_LISTEN": listen,
                },
                "configs": [{
                    "source": "torrent",
                    "target": TORRENT_AT,
                    "uid": IMAGE_UID,
                    "mode": 0o444,
                }],
                "ports": [{ "target": API_PORT, "mode": "host" }],
                // A task with a healthcheck is in the swarm's DNS only
                // once healthy, seconds after it starts; without, at once.
                // The collector watches every node's API itself.
                "healthcheck": { "disable": true },
                "stop_grace_period": "30s",
                "deploy": {
                    // The swarm's virtual IPs are not needed (nodes dial
                    // each other's own addresses) and not reachable on
                    // every host.
                    "endpoint_mode": "dnsrr",
                    "replicas": replicas,
                    // A node that exits is an error the collector reports,
                    // not something to paper over.
                    "restart_policy": { "condition": "none" },
                },
            })
        };
        let mut all = serde_json::Map::new();
        let mut dht_args: Vec<String> = vec!["node".into(), "--identity".into(), DHT_KEY_AT.into()];
        dht_args.extend(node_args(None));
        let mut dht = node(dht_args, 1);
        dht["secrets"] = json!([{
            "source": "dht-key",
            "target": "dht-key",
            "uid": IMAGE_UID,
            "mode": 0o400,
        }]);
        all.insert("dht".into(), dht);
        for s in &services {
            let mut args = s.args.clone();
            args.extend(node_args(Some(&bootstrap)));
            // Seeders start once every other node runs (`start_seeders`).
            let replicas = if s.seeds { 0 } else { s.nodes.len() };
            all.insert(s.name.clone(), node(args, replicas));
        }
        let stack = json!({
            "version": "3.8",
            "networks": { "net": { "driver": "overlay" } },
            "configs": { "torrent": { "file": spec.torrent } },
            "secrets": { "dht-key": { "file": key_path } },
            "services": all,
        });
        // JSON is YAML: `docker stack deploy` reads it as it is.
        let file = spec.dir.join("stack.json");
        std::fs::write(
            &file,
            serde_json::to_vec_pretty(&stack).expect("JSON values serialize"),
        )
        .with_context(|| format!("writing {}", file.display()))?;
        let mut deploy: Vec<std::ffi::OsString> = vec!["stack".into(), "deploy".into()];
        if image_here(image).await {
            // A local image (loaded on every host of a larger swarm): no
            // registry to ask for its digest.
            deploy.extend(["--resolve-image".into(), "never".into()]);
        } else {
            // Each host pulls it, with this client's credentials.
            deploy.push("--with-registry-auth".into());
        }
        deploy.extend(["-c".into(), file.clone().into(), spec.name.into()]);
        Ok(Self {
            name: spec.name.to_owned(),
            token,
            services,
            hosts: HashMap::new(),
            deploy,
            key: key_path,
            removed: false,
        })
    }

    /// `docker stack deploy` of what [`Stack::prepare`] wrote. On an error
    /// some of it may run: [`Stack::remove`] removes it.
    pub(crate) async fn deploy(&mut self) -> Result<()> {
        let deployed = docker(&self.deploy).await;
        // In the swarm's store now (or never to be): not left lying about.
        let _ = std::fs::remove_file(&self.key);
        deployed.map(|_| ()).context("deploying the stack")
    }

    /// Every task of the stack's node services, with where its API is. An
    /// error when the DHT node's container ended: nobody would find
    /// anybody.
    pub(crate) async fn tasks(&mut self) -> Result<Vec<Task>> {
        for t in self.raw_tasks("dht").await? {
            if let Some(ended) = t.ended() {
                bail!(
                    "the DHT node's container is {ended}; its output is in logs/dht.log of the report"
                );
            }
        }
        let mut tasks = Vec::new();
        for s in 0..self.services.len() {
            let raw = self.raw_tasks(&self.services[s].name.clone()).await?;
            for t in raw {
                let service = &self.services[s];
                let Some(&node) = t
                    .slot
                    .and_then(|k| k.checked_sub(1))
                    .and_then(|k| service.nodes.get(k))
                else {
                    continue;
                };
                let port = t
                    .status
                    .port_status
                    .as_ref()
                    .and_then(|p| p.ports.as_ref())
                    .and_then(|ports| ports.iter().find(|p| p.target_port == API_PORT))
                    .map(|p| p.published_port);
                let api = match port {
                    Some(port) if t.status.state == "running" => {
                        Some(SocketAddr::new(self.host(&t.node_id).await?, port))
                    }
                    _ => None,
                };
                tasks.push(Task {
                    node,
                    ended: t.ended(),
                    api,
                });
            }
        }
        Ok(tasks)
    }

    /// The tasks of one service, as `docker inspect` shows them.
    async fn raw_tasks(&self, service: &str) -> Result<Vec<RawTask>> {
        let full = format!("{}_{service}", self.name);
        let ids = docker(["service", "ps", "--no-trunc", "-q", &full]).await?;
        if ids.trim().is_empty() {
            return Ok(Vec::new());
        }
        let mut inspect = vec!["inspect".to_owned(), "--type".into(), "task".into()];
        inspect.extend(ids.split_whitespace().map(str::to_owned));
        let out = docker(&inspect).await?;
        serde_json::from_str(&out)
            .with_context(|| format!("reading `docker inspect` of {full}'s tasks"))
    }

    /// Starts the seeders: deployed with no replicas, so that the others
    /// are up (containers start a few a second on one host) before any
    /// piece moves.
    pub(crate) async fn start_seeders(&self) -> Result<()> {
        for s in self.services.iter().filter(|s| s.seeds) {
            let scale = format!("{}_{}={}", self.name, s.name, s.nodes.len());
            docker(["service", "scale", "--detach", &scale]).await?;
        }
        Ok(())
    }

    /// A client for a node's API at `addr`.
    pub(crate) fn client(&self, addr: SocketAddr) -> ApiClient {
        ApiClient::new(addr, Some(self.token.clone()))
    }

    /// The address of swarm node `id`, as the swarm knows it.
    async fn host(&mut self, id: &str) -> Result<IpAddr> {
        if let Some(ip) = self.hosts.get(id) {
            return Ok(*ip);
        }
        let out = docker([
            "node",
            "inspect",
            "--format",
            "{{.Status.Addr}} {{if .ManagerStatus}}{{.ManagerStatus.Addr}}{{end}}",
            id,
        ])
        .await?;
        let mut words = out.split_whitespace();
        let status: Option<IpAddr> = words.next().and_then(|a| a.parse().ok());
        // A manager may report 0.0.0.0 as its address; its manager
        // address (ip:port) then says where it is.
        let manager: Option<IpAddr> = words
            .next()
            .and_then(|a| a.parse::<SocketAddr>().ok())
            .map(|a| a.ip());
        let ip = status
            .filter(|ip| !ip.is_unspecified())
            .or(manager)
            .with_context(|| format!("swarm node {id} has no address ({})", out.trim()))?;
        self.hosts.insert(id.to_owned(), ip);
        Ok(ip)
    }

    /// Saves each service's output in `dir/logs/SERVICE.log`.
    pub(crate) async fn save_logs(&self, dir: &Path) -> Result<PathBuf> {
        let logs = dir.join("logs");
        std::fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
        let names = std::iter::once("dht").chain(self.services.iter().map(|s| s.name.as_str()));
        let mut first_error = None;
        for name in names {
            let full = format!("{}_{name}", self.name);
            let path = logs.join(format!("{name}.log"));
            // Straight into the file (a long run's output is large).
            let saved = async {
                let file = std::fs::File::create(&path)
                    .with_context(|| format!("creating {}", path.display()))?;
                let args = ["service", "logs", "--no-task-ids", "--timestamps", &full];
                run_docker(args, Some(file)).await.map(|_| ())
            };
            if let Err(e) = saved.await {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(logs), Err)
    }

    /// `docker stack rm`, then waits until the stack's containers and
    /// network are gone.
    pub(crate) async fn remove(&mut self) -> Result<()> {
        if self.removed {
            return Ok(());
        }
        let _ = std::fs::remove_file(&self.key);
        docker(["stack", "rm", &self.name]).await?;
        self.removed = true;
        // One host removes a container a second or two.
        let containers: usize = self.services.iter().map(|s| s.nodes.len()).sum::<usize>() + 1;
        let wait =
            REMOVE_WAIT + REMOVE_PER_CONTAINER * u32::try_from(containers).unwrap_or(u32::MAX);
        let label = format!("label=com.docker.stack.namespace={}", self.name);
        let started = tokio::time::Instant::now();
        loop {
            let containers = docker(["ps", "-aq", "--filter", &label]).await?;
            let networks = docker(["network", "ls", "-q", "--filter", &label]).await?;
            if containers.trim().is_empty() && networks.trim().is_empty() {
                return Ok(());
            }
            if started.elapsed() > wait {
                bail!(
                    "stack {} was removed but its containers or network were still there after {wait:?}",
                    self.name
                );
            }
            tokio::time::sleep(REMOVE_POLL).await;
        }
    }
}

/// Flags every node of the stack gets: no mDNS or UPnP (the overlay is
/// the network), the DHT served from the start (as on loopback, nobody
/// need confirm an address on an overlay network), and the DHT node to
/// bootstrap from (all but that node).
fn node_args(bootstrap: Option<&str>) -> Vec<String> {
    let mut a: Vec<String> = vec!["--no-mdns".into(), "--no-upnp".into()];
    a.extend(strings(crate::run::dht_flags(bootstrap, true)));
    a
}

/// Arguments as the stack file's strings.
fn strings(args: Vec<std::ffi::OsString>) -> Vec<String> {
    args.into_iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect()
}

/// The services: nodes of one role with the same rates and disk run as
/// one service.
fn group(spec: &StackSpec<'_>) -> Vec<Service> {
    let mut services: Vec<(Key, Service)> = Vec::new();
    type Key = (Role, Option<u64>, Option<u64>, Option<u64>);
    for (i, plan) in spec.plans.iter().enumerate() {
        let key: Key = (plan.role, plan.up_rate, plan.down_rate, plan.disk_rate);
        if let Some((_, s)) = services.iter_mut().find(|(k, _)| *k == key) {
            s.nodes.push(i);
            continue;
        }
        let base = match (plan.role, plan.disk_rate) {
            (Role::Seeder, _) => "seeder",
            (Role::Leecher, Some(_)) => "slow-disk",
            (Role::Leecher, None) => "leecher",
            (Role::FreeRider, _) => "free-rider",
            (Role::Liar, _) => "liar",
        };
        let taken = |name: &str| services.iter().any(|(_, s)| s.name == name);
        let name = (1..)
            .map(|n| match n {
                1 => base.to_owned(),
                n => format!("{base}-{n}"),
            })
            .find(|name| !taken(name))
            .expect("a free name");
        let content = match plan.role {
            Role::Seeder | Role::Liar => "/data/content.bin",
            Role::Leecher | Role::FreeRider => "/data/download/content.bin",
        };
        let mut args = strings(crate::run::node_command(
            plan,
            Path::new(content),
            Path::new(TORRENT_AT),
            spec.disk_queue,
        ));
        if plan.role == Role::Seeder {
            args.extend(["--testnet-content".into(), spec.seed.to_string()]);
        }
        args.extend(strings((spec.flags)(plan)));
        services.push((
            key,
            Service {
                name,
                nodes: vec![i],
                args,
                seeds: plan.role == Role::Seeder,
            },
        ));
    }
    services.into_iter().map(|(_, s)| s).collect()
}

/// A fresh bearer token for the stack's APIs.
fn token() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Runs `docker ARGS`; its output, or an error with what it said.
pub(crate) async fn docker<I, S>(args: I) -> Result<String>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let (shown, out) = run_docker(args, None).await?;
    String::from_utf8(out).with_context(|| format!("`docker {shown}` said non-UTF-8"))
}

/// Runs `docker ARGS` within [`DOCKER_WAIT`], its output (both streams)
/// into `into` when given, else returned (standard output; standard
/// error goes into the error). Also how the command was shown.
async fn run_docker<I, S>(args: I, into: Option<std::fs::File>) -> Result<(String, Vec<u8>)>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let args: Vec<_> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
    let shown = args
        .iter()
        .take(3)
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ");
    let mut command = tokio::process::Command::new("docker");
    command
        .args(&args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    if let Some(file) = into {
        command.stdout(file.try_clone().context("opening a log file")?);
        command.stderr(file);
    }
    let out = tokio::time::timeout(DOCKER_WAIT, command.output())
        .await
        .map_err(|_| anyhow::anyhow!("`docker {shown}` took more than {DOCKER_WAIT:?}"))?
        .with_context(|| format!("running `docker {shown}` (is Docker installed?)"))?;
    if !out.status.success() {
        let said = String::from_utf8_lossy(&out.stderr);
        bail!("`docker {shown}` failed ({}): {}", out.status, said.trim());
    }
    Ok((shown, out.stdout))
}

/// A node container as the collector reaches it.
#[derive(Debug)]
pub(crate) struct Container {
    api: ApiClient,
    pub peer_id: String,
    /// Its process's peak memory, as last reported.
    pub peak_rss: Option<u64>,
    /// When its node started, by the node's own uptime.
    pub started: Instant,
    /// When it last answered, and what went wrong since (a node that
    /// stops answering is an error, not a frozen row).
    heard: std::sync::Mutex<Heard>,
}

#[derive(Debug)]
struct Heard {
    at: Instant,
    failure: Option<String>,
}

impl Container {
    /// The node at `api`, once it answers.
    pub(crate) async fn reach(api: ApiClient) -> Option<Self> {
        let info: NodeInfo = api.get_json("/api/v1/node").await.ok()?;
        let now = Instant::now();
        Some(Self {
            api,
            peer_id: info.peer_id,
            peak_rss: info.peak_rss_bytes,
            started: now
                .checked_sub(Duration::from_secs_f64(info.uptime_seconds.clamp(0.0, 1e6)))
                .unwrap_or(now),
            heard: std::sync::Mutex::new(Heard {
                at: now,
                failure: None,
            }),
        })
    }

    pub(crate) fn api_addr(&self) -> SocketAddr {
        self.api.addr()
    }

    /// Asks for its peak memory again.
    pub(crate) async fn refresh(&mut self) {
        let info = self.api.get_json::<NodeInfo>("/api/v1/node").await;
        if let Ok(info) = &info {
            self.peak_rss = info.peak_rss_bytes.or(self.peak_rss);
        }
        self.heard(info.map(|_| ()));
    }

    /// Notes an answer, or what went wrong.
    fn heard(&self, answer: Result<(), sluice_node::api::ClientError>) {
        let mut heard = self.heard.lock().unwrap_or_else(|e| e.into_inner());
        match answer {
            Ok(()) => heard.at = Instant::now(),
            Err(e) => heard.failure = Some(e.to_string()),
        }
    }

    /// An error when it has not answered for [`SILENCE`].
    pub(crate) fn check_answers(&self, name: &str) -> Result<()> {
        let heard = self.heard.lock().unwrap_or_else(|e| e.into_inner());
        if heard.at.elapsed() > SILENCE {
            bail!(
                "{name} has not answered on its control API at {} for {SILENCE:?}{}",
                self.api.addr(),
                heard
                    .failure
                    .as_deref()
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default()
            );
        }
        Ok(())
    }

    /// The torrent and its peers as the node's API shows them.
    pub(crate) async fn torrent(&self, info_hash: &str) -> Option<(TorrentInfo, Vec<PeerInfo>)> {
        let answer = crate::process::torrent_of(&self.api, info_hash).await;
        match answer {
            Ok(both) => {
                self.heard(Ok(()));
                Some(both)
            }
            Err(e) => {
                self.heard(Err(e));
                None
            }
        }
    }
}

#[derive(Deserialize)]
struct RawTask {
    #[serde(rename = "Slot")]
    slot: Option<usize>,
    #[serde(rename = "NodeID", default)]
    node_id: String,
    #[serde(rename = "Status")]
    status: RawStatus,
}

#[derive(Deserialize)]
struct RawStatus {
    #[serde(rename = "State")]
    state: String,
    #[serde(rename = "Err")]
    err: Option<String>,
    #[serde(rename = "PortStatus")]
    port_status: Option<RawPorts>,
}

#[derive(Deserialize)]
struct RawPorts {
    #[serde(rename = "Ports")]
    ports: Option<Vec<RawPort>>,
}

#[derive(Deserialize)]
struct RawPort {
    #[serde(rename = "TargetPort")]
    target_port: u16,
    #[serde(rename = "PublishedPort")]
    published_port: u16,
}
