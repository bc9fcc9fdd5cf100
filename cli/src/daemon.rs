//! `sluice daemon` and the verbs that drive it: `add`, `remove`, `pause`,
//! `resume`, `list`. The daemon is one node with many torrents (see
//! `sluice_node::daemon`); the verbs talk to it over its control API,
//! found through the data dir like `status`, with the token the daemon
//! keeps there.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use sluice_node::api::Added;
use sluice_node::daemon::{Daemon, Limits, Listed, TorrentState, load_or_make_token};
use sluice_storage::units::{format_rate, parse_size};

use crate::inspect::ApiArgs;
use crate::net::{NetArgs, Stops};

#[derive(Debug, clap::Args)]
pub(crate) struct DaemonArgs {
    #[command(flatten)]
    net: NetArgs,
    /// Where torrents added without -o go (default: DATA_DIR/downloads).
    #[arg(long)]
    download_dir: Option<PathBuf>,
    /// Largest metadata (info dict plus piece layers) taken from peers.
    #[arg(long, value_parser = parse_size, default_value = "16MiB")]
    max_metadata: u64,
}

/// The ports a daemon chose at its first start, kept in its data dir so
/// that its magnet hints, DHT records and port forwards stay valid.
const PORTS_FILE: &str = "ports.json";

#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct Ports {
    tcp: Option<u16>,
    quic: Option<u16>,
    /// IPv6's (a port of its own), where the host has IPv6.
    #[serde(default)]
    tcp6: Option<u16>,
    #[serde(default)]
    quic6: Option<u16>,
    bt: Option<u16>,
}

impl Ports {
    fn load(data_dir: &std::path::Path) -> Self {
        std::fs::read(data_dir.join(PORTS_FILE))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    /// What `node` listens on now.
    fn of(node: &sluice_node::NodeHandle, addrs: &[sluice_node::Multiaddr]) -> Self {
        let mut ports = Self {
            bt: node.bt_addr().map(|a| a.port()),
            ..Self::default()
        };
        for a in addrs {
            // `/ip4/HOST/tcp/PORT/…` or `/ip4/HOST/udp/PORT/quic-v1/…`.
            let text = a.to_string();
            let parts: Vec<&str> = text.split('/').collect();
            let slot = match parts.as_slice() {
                ["", "ip4", _, "tcp", p, ..] => Some((&mut ports.tcp, p)),
                ["", "ip4", _, "udp", p, "quic-v1", ..] => Some((&mut ports.quic, p)),
                ["", "ip6", _, "tcp", p, ..] => Some((&mut ports.tcp6, p)),
                ["", "ip6", _, "udp", p, "quic-v1", ..] => Some((&mut ports.quic6, p)),
                _ => None,
            };
            if let Some((slot, p)) = slot {
                *slot = slot.or(p.parse().ok());
            }
        }
        ports
    }
}

pub(crate) fn daemon(mut args: DaemonArgs) -> Result<ExitCode> {
    let data_dir = args
        .net
        .data_dir
        .clone()
        .unwrap_or_else(crate::net::default_data_dir);
    let token = load_or_make_token(&data_dir)
        .with_context(|| format!("making the API token in {}", data_dir.display()))?;
    // Limiters that can be changed while it runs (`sluice limit`), and the
    // token for changes.
    let unlimited = sluice_node::UNLIMITED;
    let configure = |net: &NetArgs| -> Result<sluice_node::NodeConfig> {
        Ok(crate::net::node_config(net, None, None)?
            .with_up_rate(Some(net.up_rate.unwrap_or(unlimited)))
            .with_down_rate(Some(net.down_rate.unwrap_or(unlimited)))
            .with_api_write_token(Some(token.clone())))
    };
    // Where it listens if the kept ports are taken now.
    let fresh = configure(&args.net)?;
    // The ports of the first start, unless told otherwise.
    let kept = Ports::load(&data_dir);
    let kept_v6 = (kept.tcp6, kept.quic6);
    let mut uses_kept = false;
    if args.net.listen.is_empty() && (kept.tcp.is_some() || kept.quic.is_some()) {
        let mut listen = Vec::new();
        if let Some(p) = kept.tcp {
            listen.push(format!("/ip4/0.0.0.0/tcp/{p}").parse()?);
        }
        if let Some(p) = kept.quic {
            listen.push(format!("/ip4/0.0.0.0/udp/{p}/quic-v1").parse()?);
        }
        args.net.listen = listen;
        // IPv6 on its kept ports, or on new ones where none were kept
        // (IPv6 off at the first start, or a data dir older than IPv6).
        args.net.listen_optional = vec![
            format!("/ip6/::/tcp/{}", kept.tcp6.unwrap_or(0)).parse()?,
            format!("/ip6/::/udp/{}/quic-v1", kept.quic6.unwrap_or(0)).parse()?,
        ];
        uses_kept = true;
    }
    if let Some(p) = kept.bt
        && args.net.bt_listen == std::net::SocketAddr::from(([0, 0, 0, 0], 0))
    {
        args.net.bt_listen.set_port(p);
        uses_kept = true;
    }
    let config = configure(&args.net)?;
    let download_dir = match args.download_dir {
        Some(d) => std::path::absolute(&d).with_context(|| format!("{}", d.display()))?,
        None => {
            std::path::absolute(data_dir.join("downloads")).context("the download directory")?
        }
    };
    crate::net::runtime()?.block_on(async move {
        let mut stops = Stops::new()?;
        let peers = args.net.libp2p_peers();
        let node = match crate::net::start(config, &peers).await {
            Ok(node) => node,
            // Another program took a kept port meanwhile: new ones.
            Err(e)
                if uses_kept
                    && matches!(
                        e.downcast_ref::<sluice_node::NodeError>(),
                        Some(
                            sluice_node::NodeError::Listen { .. }
                                | sluice_node::NodeError::BtListen { .. }
                        )
                    ) =>
            {
                eprintln!("warning: {e:#}; listening on new ports");
                crate::net::start(fresh, &peers).await?
            }
            Err(e) => return Err(e),
        };
        let daemon = Daemon::start(node.clone(), download_dir.clone(), args.max_metadata)
            .await
            .context("starting the daemon")?;
        node.attach_daemon(daemon.clone());
        let addrs = node.listen_addrs().await;
        // IPv6's addresses may come a moment after the others: a port
        // kept and not seen yet stays kept.
        let mut now = Ports::of(&node, &addrs);
        now.tcp6 = now.tcp6.or(kept_v6.0);
        now.quic6 = now.quic6.or(kept_v6.1);
        let ports = serde_json::to_vec_pretty(&now)?;
        let ports_file = data_dir.join(PORTS_FILE);
        sluice_storage::resume::write_atomically(&ports_file, &ports)
            .with_context(|| format!("writing {}", ports_file.display()))?;
        for a in addrs {
            println!("peer:      {a}");
        }
        crate::net::print_bt(&node);
        if let Some(addr) = node.api_addr() {
            println!("api:       http://{addr} (sluice add / list / pause / resume / remove)");
            println!("web ui:    {}", ui_link(addr, &data_dir));
        }
        println!(
            "daemon: {} torrents, downloads in {}; Ctrl-C to stop",
            daemon.list().len(),
            download_dir.display()
        );
        crate::net::until_stop(&mut stops, &node).await?;
        eprintln!("stopping…");
        daemon.shutdown().await.map_err(anyhow::Error::msg)?;
        Ok(ExitCode::SUCCESS)
    })
}

/// The web UI's address, carrying the token (in the fragment, which the
/// browser never sends: the page keeps it for its tab).
fn ui_link(addr: std::net::SocketAddr, data_dir: &std::path::Path) -> String {
    match std::fs::read_to_string(data_dir.join(sluice_node::daemon::TOKEN_FILE)) {
        Ok(t) => format!("http://{addr}/#token={}", t.trim()),
        Err(_) => format!("http://{addr}/"),
    }
}

#[derive(Debug, clap::Args)]
pub(crate) struct UiArgs {
    /// The daemon's data directory (default: $SLUICE_DATA_DIR, else
    /// ~/.local/share/sluice).
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

/// `sluice ui`: the running daemon's web UI link, token included.
pub(crate) fn ui(args: UiArgs) -> Result<ExitCode> {
    let dir = args.data_dir.unwrap_or_else(crate::net::default_data_dir);
    let client = sluice_node::api::ApiClient::from_data_dir(&dir, None)?;
    println!("{}", ui_link(client.addr(), &dir));
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, clap::Args)]
pub(crate) struct AddArgs {
    /// A .torrent file, a magnet link, or an info-hash (64 hex digits, or
    /// 40 for v1).
    source: String,
    /// Directory its data goes in (default: the daemon's download dir).
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// Add it paused.
    #[arg(long)]
    paused: bool,
    #[command(flatten)]
    api: ApiArgs,
}

#[derive(Debug, clap::Args)]
pub(crate) struct TorrentArgs {
    /// The torrent's info-hash, or its first 8 or more hex digits (as
    /// `sluice list` shows them).
    info_hash: String,
    #[command(flatten)]
    api: ApiArgs,
}

#[derive(Debug, clap::Args)]
pub(crate) struct RemoveArgs {
    #[command(flatten)]
    torrent: TorrentArgs,
    /// Delete its downloaded data too.
    #[arg(long)]
    delete_data: bool,
}

/// A limit as typed: a rate, or none.
#[derive(Debug, Clone, Copy)]
struct Limit(Option<u64>);

/// `none` or `unlimited`, else a rate such as `5MB/s`.
fn parse_limit(s: &str) -> Result<Limit, String> {
    if matches!(s, "none" | "unlimited") {
        return Ok(Limit(None));
    }
    match sluice_storage::units::parse_rate(s)? {
        0 => Err("a rate must be positive (none: unlimited)".into()),
        r => Ok(Limit(Some(r))),
    }
}

/// Upload slots as typed: a count, or `default`.
#[derive(Debug, Clone, Copy)]
struct Slots(Option<u32>);

fn parse_slots(s: &str) -> Result<Slots, String> {
    if s == "default" {
        return Ok(Slots(None));
    }
    match s.parse::<u32>() {
        Ok(n) if (1..=sluice_node::api::MAX_SLOTS).contains(&n) => Ok(Slots(Some(n))),
        _ => Err(format!(
            "from 1 to {}, or default",
            sluice_node::api::MAX_SLOTS
        )),
    }
}

#[derive(Debug, clap::Args)]
pub(crate) struct LimitArgs {
    /// A torrent's info-hash (or a prefix of it): its own limits, under
    /// the node's. Without it, the node's.
    info_hash: Option<String>,
    /// Upload limit, e.g. 5MB/s, or none.
    #[arg(long, value_parser = parse_limit)]
    up_rate: Option<Limit>,
    /// Download limit, e.g. 20MB/s, or none.
    #[arg(long, value_parser = parse_limit)]
    down_rate: Option<Limit>,
    /// Upload slots per torrent (one of them optimistic), or default: a
    /// torrent's own, or the node's for every torrent without its own.
    #[arg(long, value_parser = parse_slots)]
    slots: Option<Slots>,
    #[command(flatten)]
    api: ApiArgs,
}

/// `sluice limit [IH]`: shows the daemon's node-wide limits, or a
/// torrent's, or changes them while it runs (kept across restarts).
pub(crate) fn limit(args: LimitArgs) -> Result<ExitCode> {
    let client = args.api.client()?;
    let mut change = serde_json::Map::new();
    if let Some(Limit(up)) = args.up_rate {
        change.insert("up_rate".into(), serde_json::json!(up));
    }
    if let Some(Limit(down)) = args.down_rate {
        change.insert("down_rate".into(), serde_json::json!(down));
    }
    if let Some(Slots(slots)) = args.slots {
        change.insert("slots".into(), serde_json::json!(slots));
    }
    let path = match &args.info_hash {
        Some(ih) => format!("/api/v1/torrents/{}/limits", query_value(ih)),
        None => "/api/v1/limits".to_owned(),
    };
    let limits: Limits = crate::net::runtime()?.block_on(async {
        if change.is_empty() {
            client.get_json(&path).await
        } else {
            let body = serde_json::to_vec(&change).expect("JSON");
            let answer = client.post(&path, "application/json", body.into()).await?;
            serde_json::from_slice(&answer).map_err(|e| sluice_node::api::ClientError::Decode {
                addr: client.addr(),
                reason: e.to_string(),
            })
        }
    })?;
    let show = |r: Option<u64>| r.map_or("unlimited".to_owned(), |r| format_rate(r as f64));
    let slots = limits.slots.map_or("default".to_owned(), |s| s.to_string());
    println!(
        "up {}  down {}  slots {slots}",
        show(limits.up_rate),
        show(limits.down_rate)
    );
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, clap::Args)]
pub(crate) struct ListArgs {
    #[command(flatten)]
    api: ApiArgs,
    /// Print the API's JSON.
    #[arg(long)]
    json: bool,
}

/// `%` escapes for a query value.
fn query_value(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

pub(crate) fn add(args: AddArgs) -> Result<ExitCode> {
    let client = args.api.client()?;
    let mut query = format!("paused={}", args.paused);
    if let Some(out) = &args.output {
        let out = std::path::absolute(out).with_context(|| format!("{}", out.display()))?;
        let out = out
            .to_str()
            .with_context(|| format!("{} is not UTF-8", out.display()))?;
        query.push_str(&format!("&output={}", query_value(out)));
    }
    let path = std::path::Path::new(&args.source);
    let (content_type, body) = if path.is_file() {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        ("application/x-bittorrent", bytes)
    } else {
        let body = serde_json::json!({ "source": args.source });
        ("application/json", serde_json::to_vec(&body)?)
    };
    let added = crate::net::runtime()?.block_on(async {
        client
            .post(
                &format!("/api/v1/torrents?{query}"),
                content_type,
                body.into(),
            )
            .await
    })?;
    let added: Added = serde_json::from_slice(&added).context("the daemon's answer")?;
    println!("added {}", added.info_hash);
    Ok(ExitCode::SUCCESS)
}

fn change(
    api: &ApiArgs,
    what: &str,
    run: impl AsyncFnOnce(
        sluice_node::api::ApiClient,
    ) -> Result<bytes::Bytes, sluice_node::api::ClientError>,
) -> Result<ExitCode> {
    let client = api.client()?;
    crate::net::runtime()?.block_on(run(client))?;
    println!("{what}");
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn remove(args: RemoveArgs) -> Result<ExitCode> {
    let t = &args.torrent;
    let path = format!(
        "/api/v1/torrents/{}?delete_data={}",
        query_value(&t.info_hash),
        args.delete_data
    );
    change(
        &t.api,
        &format!("removed {}", t.info_hash),
        async move |c| c.delete(&path).await,
    )
}

pub(crate) fn pause(args: TorrentArgs) -> Result<ExitCode> {
    let path = format!("/api/v1/torrents/{}/pause", query_value(&args.info_hash));
    change(
        &args.api,
        &format!("paused {}", args.info_hash),
        async move |c| c.post(&path, "application/json", bytes::Bytes::new()).await,
    )
}

pub(crate) fn resume(args: TorrentArgs) -> Result<ExitCode> {
    let path = format!("/api/v1/torrents/{}/resume", query_value(&args.info_hash));
    change(
        &args.api,
        &format!("resumed {}", args.info_hash),
        async move |c| c.post(&path, "application/json", bytes::Bytes::new()).await,
    )
}

pub(crate) fn recheck(args: TorrentArgs) -> Result<ExitCode> {
    let path = format!("/api/v1/torrents/{}/recheck", query_value(&args.info_hash));
    change(
        &args.api,
        &format!(
            "checking {} (sluice list shows it as checking until done)",
            args.info_hash
        ),
        async move |c| c.post(&path, "application/json", bytes::Bytes::new()).await,
    )
}

pub(crate) fn list(args: ListArgs) -> Result<ExitCode> {
    let client = args.api.client()?;
    let listed: Vec<Listed> = crate::net::runtime()?
        .block_on(async { client.get_json("/api/v1/daemon/torrents").await })?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&listed)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<16} {:<9} {:>7} {:>11} {:>11} {:>5}  NAME",
        "INFO-HASH", "STATE", "DONE", "DOWN", "UP", "PEERS"
    );
    for t in &listed {
        let state = match t.state {
            TorrentState::Running if t.complete => "seeding",
            TorrentState::Running => "running",
            TorrentState::Paused => "paused",
            TorrentState::Fetching => "fetching",
            TorrentState::Checking => "checking",
        };
        println!(
            "{:<16} {:<9} {:>6.1}% {:>11} {:>11} {:>5}  {}",
            &t.info_hash[..16.min(t.info_hash.len())],
            state,
            t.progress * 100.0,
            format_rate(t.down_rate),
            format_rate(t.up_rate),
            t.peers,
            // A name comes from the network: no terminal escapes.
            crate::inspect::printable(&t.name)
        );
    }
    Ok(ExitCode::SUCCESS)
}
