//! `sluice status` and `sluice peers`: read a running node's control API.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use sluice_node::api::{ApiClient, PeerInfo, TorrentInfo};
use sluice_swarm::torrent::Transport;

use sluice_storage::units::{format_rate, format_size};

/// How a command finds the node it reads.
#[derive(Debug, clap::Args)]
pub(crate) struct ApiArgs {
    /// The node's data directory; its `api` file says where the node
    /// listens (default: $SLUICE_DATA_DIR, else ~/.local/share/sluice).
    #[arg(long, conflicts_with = "api")]
    data_dir: Option<PathBuf>,
    /// The node's control API address instead, e.g. 127.0.0.1:7070.
    #[arg(long)]
    api: Option<SocketAddr>,
    /// Bearer token, for a node whose API needs one ($SLUICE_API_TOKEN).
    #[arg(long, env = "SLUICE_API_TOKEN", hide_env_values = true)]
    api_token: Option<String>,
    /// Read the token from this file (first line).
    #[arg(long, conflicts_with = "api_token")]
    api_token_file: Option<PathBuf>,
}

impl ApiArgs {
    pub(crate) fn client(&self) -> Result<ApiClient> {
        let token =
            crate::net::api_token(self.api_token.as_deref(), self.api_token_file.as_deref())?;
        Ok(match self.api {
            Some(addr) => ApiClient::new(addr, token),
            None => {
                let dir = self
                    .data_dir
                    .clone()
                    .unwrap_or_else(crate::net::default_data_dir);
                // A daemon keeps the token for changes in its data dir.
                let token = token.or_else(|| {
                    std::fs::read_to_string(dir.join(sluice_node::daemon::TOKEN_FILE))
                        .ok()
                        .map(|t| t.trim().to_owned())
                });
                ApiClient::from_data_dir(&dir, token)?
            }
        })
    }
}

#[derive(Debug, clap::Args)]
pub(crate) struct StatusArgs {
    #[command(flatten)]
    api: ApiArgs,
    /// Print the API's JSON.
    #[arg(long)]
    json: bool,
    /// The node itself instead of its torrents: reachability, addresses,
    /// connections by path (direct, relayed, hole-punched), relayed bytes.
    #[arg(long)]
    node: bool,
}

#[derive(Debug, clap::Args)]
pub(crate) struct PeersArgs {
    /// Only this torrent (64 hex digits; default: every torrent).
    info_hash: Option<String>,
    #[command(flatten)]
    api: ApiArgs,
    /// Print JSON: a list of {info_hash, name, peers: [...]}.
    #[arg(long, conflicts_with = "watch")]
    json: bool,
    /// Redraw every second until Ctrl-C.
    #[arg(long)]
    watch: bool,
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

pub(crate) fn status(args: StatusArgs) -> Result<ExitCode> {
    let client = args.api.client()?;
    if args.node {
        let node: sluice_node::api::NodeInfo =
            runtime()?.block_on(client.get_json("/api/v1/node"))?;
        if args.json {
            crate::print_json(&node)?;
        } else {
            print!("{}", node_lines(&node));
        }
        return Ok(ExitCode::SUCCESS);
    }
    let torrents: Vec<TorrentInfo> = runtime()?.block_on(client.get_json("/api/v1/torrents"))?;
    if args.json {
        crate::print_json(&torrents)?;
        return Ok(ExitCode::SUCCESS);
    }
    if torrents.is_empty() {
        println!("no torrents");
    }
    for t in &torrents {
        println!("{}", status_line(t));
    }
    Ok(ExitCode::SUCCESS)
}

/// The node as `sluice status --node` shows it.
pub(crate) fn node_lines(n: &sluice_node::api::NodeInfo) -> String {
    let c = &n.connections;
    let mut out = format!(
        "node {}  reachability {}\nconnections  {} direct, {} hole-punched, {} relayed, {} upnp\nhole punches {}/{} made\nrelayed      {} in, {} out\n",
        n.peer_id,
        n.reachability,
        c.direct,
        c.hole_punched,
        c.relayed,
        c.upnp,
        n.hole_punch_successes,
        n.hole_punch_attempts,
        format_size(n.relayed_bytes_received),
        format_size(n.relayed_bytes_sent),
    );
    for a in &n.advertised_addrs {
        out.push_str(&format!("advertised   {a}\n"));
    }
    out
}

/// One line per torrent: progress, rates, peers, disk-queue fill.
pub(crate) fn status_line(t: &TorrentInfo) -> String {
    let d = &t.disk;
    let used = d.used_bytes();
    let fill = 100.0 * used as f64 / d.capacity_bytes.max(1) as f64;
    format!(
        "{}  {}  {:5.1}% {}/{}  down {}  up {}  {} peers  disk {}/{} ({fill:.0}%){}{}{}",
        prefix(&t.info_hash, 8),
        printable(&t.name),
        100.0 * t.progress,
        t.verified_pieces,
        t.total_pieces,
        format_rate(t.down_rate),
        format_rate(t.up_rate),
        t.peers,
        format_size(used),
        format_size(d.capacity_bytes),
        if d.throttled { " throttled" } else { "" },
        match (t.complete, t.eta_seconds) {
            (true, _) => "  complete".to_owned(),
            (false, Some(eta)) => format!(
                "  ETA {}",
                crate::net::format_eta(std::time::Duration::from_secs_f64(eta))
            ),
            (false, None) => String::new(),
        },
        t.disk_error
            .as_ref()
            .map(|e| format!("  disk error: {e}"))
            .unwrap_or_default(),
    )
}

/// One torrent's peers, as `sluice peers --json` prints them.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct TorrentPeers {
    pub(crate) info_hash: String,
    pub(crate) name: String,
    pub(crate) peers: Vec<PeerInfo>,
}

pub(crate) async fn fetch_peers(
    client: &ApiClient,
    only: Option<&str>,
) -> Result<Vec<TorrentPeers>> {
    let torrents: Vec<TorrentInfo> = match only {
        Some(ih) => vec![client.get_json(&format!("/api/v1/torrents/{ih}")).await?],
        None => client.get_json("/api/v1/torrents").await?,
    };
    let mut all = Vec::with_capacity(torrents.len());
    for t in torrents {
        let peers = client
            .get_json(&format!("/api/v1/torrents/{}/peers", t.info_hash))
            .await?;
        all.push(TorrentPeers {
            info_hash: t.info_hash,
            name: t.name,
            peers,
        });
    }
    Ok(all)
}

pub(crate) fn peers(args: PeersArgs) -> Result<ExitCode> {
    if let Some(ih) = &args.info_hash
        && (ih.len() != 64 || !ih.bytes().all(|b| b.is_ascii_hexdigit()))
    {
        anyhow::bail!("{ih:?} is not an info-hash (64 hex digits)");
    }
    let client = args.api.client()?;
    runtime()?.block_on(async {
        let ctrl_c = tokio::signal::ctrl_c();
        tokio::pin!(ctrl_c);
        loop {
            let all = fetch_peers(&client, args.info_hash.as_deref()).await?;
            if args.json {
                crate::print_json(&all)?;
                return Ok(ExitCode::SUCCESS);
            }
            let mut out = String::new();
            if args.watch {
                // Home, clear: redraw in place.
                out.push_str("\x1b[H\x1b[2J");
            }
            for t in &all {
                out.push_str(&format!(
                    "{} {} ({} peers)\n",
                    prefix(&t.info_hash, 8),
                    printable(&t.name),
                    t.peers.len()
                ));
                out.push_str(&peer_table(&t.peers));
            }
            print!("{out}");
            if !args.watch {
                return Ok(ExitCode::SUCCESS);
            }
            tokio::select! {
                _ = &mut ctrl_c => return Ok(ExitCode::SUCCESS),
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    })
}

/// The last 8 characters of a peer id: enough to tell peers apart.
pub(crate) fn short_id(id: &str) -> &str {
    let skip = id.chars().count().saturating_sub(8);
    id.char_indices().nth(skip).map_or(id, |(i, _)| &id[i..])
}

/// The first `n` characters of `s` (all of it when shorter).
pub(crate) fn prefix(s: &str, n: usize) -> &str {
    s.char_indices().nth(n).map_or(s, |(i, _)| &s[..i])
}

/// Choke and interest as letters, as uTorrent and qBittorrent show them:
/// `D` we download from it (we want, it unchoked us), `d` we want but it
/// chokes us, `K` it unchoked us but we do not want; `U` we upload to it,
/// `u` it wants but we choke it, `?` we unchoked it but it does not want;
/// `O` optimistic unchoke, `S` snubbed.
pub(crate) fn flags(p: &PeerInfo) -> String {
    let mut f = String::new();
    match (p.stats.am_interested, p.stats.peer_choking) {
        (true, false) => f.push('D'),
        (true, true) => f.push('d'),
        (false, false) => f.push('K'),
        (false, true) => {}
    }
    match (p.stats.peer_interested, p.stats.am_choking) {
        (true, false) => f.push('U'),
        (true, true) => f.push('u'),
        (false, false) => f.push('?'),
        (false, true) => {}
    }
    if p.stats.optimistic {
        f.push('O');
    }
    if p.stats.snubbed {
        f.push('S');
    }
    f
}

/// The `sluice peers` table.
pub(crate) fn peer_table(peers: &[PeerInfo]) -> String {
    let mut out = format!(
        "{:<8} {:<21} {:<12} {:<16} {:<5} {:<30} {:>10} {:>10} {:>7} {:>4}\n",
        "PEER", "ADDR", "PATH", "CLIENT", "FLAGS", "REASON", "DOWN/s", "UP/s", "WINDOW", "UPQ"
    );
    for p in peers {
        out.push_str(&format!(
            "{:<8} {:<21} {:<12} {:<16} {:<5} {:<30} {:>10} {:>10} {:>7} {:>4}\n",
            short_id(&p.stats.peer_id),
            clip(&p.addr.as_deref().map(short_addr).unwrap_or_default(), 21),
            p.path.map(|p| p.as_str()).unwrap_or("-"),
            clip(&client(p), 16),
            flags(p),
            clip(&p.stats.choke_reason, 30),
            format_rate(p.stats.down_rate),
            format_rate(p.stats.up_rate),
            format!(
                "{}/{}",
                p.stats.outstanding_requests, p.stats.request_window
            ),
            p.stats.upload_queue,
        ));
    }
    out
}

/// A name that came from the network (a torrent's, a client's), safe to
/// print: control characters (terminal escapes among them) become `?`.
pub(crate) fn printable(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// Which wire and client: `bt libtorrent/2.0.8`, `bt` (no name given),
/// or `sluice` (a libp2p peer is a sluice node).
pub(crate) fn client(p: &PeerInfo) -> String {
    match (p.stats.transport, &p.stats.client) {
        (Transport::Bt, Some(name)) => format!("bt {}", printable(name)),
        (Transport::Bt, None) => "bt".into(),
        (Transport::Libp2p, _) => "sluice (libp2p)".into(),
    }
}

/// `/ip4/127.0.0.1/tcp/4001` → `127.0.0.1:4001` (QUIC gets a `/quic`).
pub(crate) fn short_addr(addr: &str) -> String {
    let parts: Vec<&str> = addr.split('/').collect();
    match parts.as_slice() {
        [
            "",
            "ip4" | "ip6" | "dns" | "dns4" | "dns6",
            host,
            "tcp",
            port,
            ..,
        ] => {
            format!("{host}:{port}")
        }
        [
            "",
            "ip4" | "ip6" | "dns" | "dns4" | "dns6",
            host,
            "udp",
            port,
            ..,
        ] => {
            format!("{host}:{port}/quic")
        }
        _ => addr.to_owned(),
    }
}

pub(crate) fn clip(s: &str, width: usize) -> String {
    if s.chars().count() <= width {
        s.to_owned()
    } else {
        let mut c: String = s.chars().take(width.saturating_sub(1)).collect();
        c.push('…');
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_shorten() {
        assert_eq!(short_addr("/ip4/127.0.0.1/tcp/4001"), "127.0.0.1:4001");
        assert_eq!(
            short_addr("/ip4/127.0.0.1/udp/4001/quic-v1"),
            "127.0.0.1:4001/quic"
        );
        assert_eq!(short_addr("/memory/5"), "/memory/5");
        assert_eq!(clip("abcdef", 4), "abc…");
        assert_eq!(clip("abc", 4), "abc");
        assert_eq!(short_id("12D3KooWabcdefgh"), "abcdefgh");
        assert_eq!(short_id("ab"), "ab");
        assert_eq!(short_id("ééééééééé"), "éééééééé");
        assert_eq!(prefix("abcdef", 3), "abc");
        assert_eq!(prefix("ab", 3), "ab");
    }

    #[test]
    fn names_from_the_network_lose_their_escapes() {
        assert_eq!(printable("film\u{1b}[2J.mkv"), "film?[2J.mkv");
        assert_eq!(printable("a\nb\tc"), "a?b?c");
        assert_eq!(printable("été 日本"), "été 日本");
    }
}
