//! The control API of real nodes, read mid-transfer over HTTP on
//! 127.0.0.1 with the same client the CLI uses.

#![allow(clippy::unwrap_used, reason = "test helpers")]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Result;
use sluice_node::api::{ApiClient, ApiConfig, ClientError, NodeInfo, PeerInfo, TorrentInfo};
use sluice_node::{Node, NodeConfig, NodeError};

use common::*;

const MIB: u64 = 1024 * 1024;

/// Every field the issue promises for a peer.
const PEER_FIELDS: [&str; 21] = [
    "peer_id",
    "addr",
    "am_choking",
    "am_interested",
    "peer_choking",
    "peer_interested",
    "optimistic",
    "snubbed",
    "choke_reason",
    "choke_reason_code",
    "down_rate",
    "up_rate",
    "downloaded",
    "uploaded",
    "outstanding_requests",
    "request_window",
    "upload_queue",
    "upload_window_bytes",
    "pieces",
    "connected_seconds",
    "upload_buffered_bytes",
];

const TORRENT_FIELDS: [&str; 11] = [
    "info_hash",
    "name",
    "size",
    "verified_pieces",
    "total_pieces",
    "progress",
    "down_rate",
    "up_rate",
    "peers",
    "disk",
    "complete",
];

const DISK_FIELDS: [&str; 5] = [
    "queued_bytes",
    "outstanding_bytes",
    "capacity_bytes",
    "headroom_bytes",
    "throttled_seconds",
];

fn has_fields(v: &serde_json::Value, fields: &[&str]) {
    for f in fields {
        assert!(v.get(f).is_some(), "field {f} missing in {v}");
    }
}

/// What a choke reason code says about the choke flag: `Some(true)` the
/// peer is unchoked, `Some(false)` choked, `None` no decision yet.
fn unchoked_by(code: &str) -> Option<bool> {
    match code {
        "regular_slot" | "optimistic" | "seeding_slot" | "seeding_turn" | "proportional_share" => {
            Some(true)
        }
        "snubbed" | "not_interested" | "slots_full" | "seeding_turn_used" | "no_contribution"
        | "no_reciprocation" => Some(false),
        "undecided" => None,
        other => panic!("unknown choke reason code {other}"),
    }
}

fn consistent(p: &PeerInfo) {
    if let Some(unchoked) = unchoked_by(&p.stats.choke_reason_code) {
        assert_eq!(
            !p.stats.am_choking, unchoked,
            "flags disagree with the reason: {p:?}"
        );
    }
    assert_eq!(
        p.stats.optimistic,
        p.stats.choke_reason_code == "optimistic",
        "{p:?}"
    );
    assert_eq!(
        p.stats.snubbed,
        p.stats.choke_reason_code == "snubbed",
        "{p:?}"
    );
    assert!(!p.stats.choke_reason.is_empty());
}

fn status(e: ClientError) -> u16 {
    match e {
        ClientError::Status { status, .. } => status,
        other => panic!("expected an HTTP status, got {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_shows_a_transfer_in_progress() -> Result<()> {
    init_logs();
    let dir = tempfile::tempdir()?;
    let (root, meta) = make_content(dir.path());
    // A slow seeder keeps the transfer going while we look.
    let seeder = node(dir.path(), "seeder", |c| c.with_up_rate(Some(MIB / 2))).await;
    let ts = seeder.add_torrent(Arc::clone(&meta), root.clone()).await?;
    let leecher = node(dir.path(), "leecher", |c| c.with_disk_queue(MIB)).await;
    let tl = leecher
        .add_torrent(Arc::clone(&meta), dir.path().join("out/album"))
        .await?;
    leecher.dial(seeder.listen_addrs().await.remove(0)).await?;
    until(&tl, "a first verified piece", |s| {
        s.verified_pieces > 0 && s.peers.len() == 1
    })
    .await?;
    until(&ts, "the seeder deciding", |s| {
        s.peers.iter().any(|p| p.choke_reason_code != "undecided")
    })
    .await?;

    // The CLI's way in: the data dir's `api` file.
    let client = ApiClient::from_data_dir(&dir.path().join("leecher"), None)?;
    assert_eq!(Some(client.addr()), leecher.api_addr());
    let info: NodeInfo = client.get_json("/api/v1/node").await?;
    assert_eq!(info.peer_id, leecher.peer_id().to_string());
    assert!(!info.listen_addrs.is_empty());
    assert!(info.listen_addrs.iter().all(|a| a.contains("/p2p/")));
    assert!(!info.version.is_empty());
    assert_eq!(info.torrents, 1);

    let raw: serde_json::Value = serde_json::from_slice(&client.get("/api/v1/torrents").await?)?;
    has_fields(&raw[0], &TORRENT_FIELDS);
    has_fields(&raw[0]["disk"], &DISK_FIELDS);
    let torrents: Vec<TorrentInfo> = client.get_json("/api/v1/torrents").await?;
    assert_eq!(torrents.len(), 1);
    let t = &torrents[0];
    assert_eq!(t.info_hash, meta.info().info_hash().to_string());
    assert_eq!(t.size, meta.info().total_size());
    assert!(t.verified_pieces > 0 && t.verified_pieces <= t.total_pieces);
    assert!((0.0..=1.0).contains(&t.progress));
    assert_eq!(t.peers, 1);
    let d = &t.disk;
    assert_eq!(d.capacity_bytes, MIB);
    assert!(
        d.queued_bytes + d.outstanding_bytes <= d.capacity_bytes,
        "{d:?}"
    );
    assert!(
        d.headroom_bytes + d.queued_bytes + d.outstanding_bytes <= d.capacity_bytes,
        "{d:?}"
    );
    assert!(d.throttled_seconds >= 0.0);

    let path = format!("/api/v1/torrents/{}/peers", t.info_hash);
    let raw: serde_json::Value = serde_json::from_slice(&client.get(&path).await?)?;
    has_fields(&raw[0], &PEER_FIELDS);
    let peers: Vec<PeerInfo> = client.get_json(&path).await?;
    assert_eq!(peers.len(), 1);
    let p = &peers[0];
    assert_eq!(p.stats.peer_id, seeder.peer_id().to_string());
    assert!(
        p.addr
            .as_deref()
            .unwrap_or("")
            .starts_with("/ip4/127.0.0.1/"),
        "{p:?}"
    );
    assert!(
        p.stats.am_interested,
        "the leecher wants the seeder's pieces: {p:?}"
    );
    assert!(!p.stats.peer_interested, "a seeder wants nothing: {p:?}");
    assert_eq!(
        p.stats.pieces, t.total_pieces as usize,
        "a seeder has every piece"
    );
    consistent(p);

    // The seeder's side: the leecher is interested and holds a slot.
    let seeder_api = ApiClient::new(seeder.api_addr().unwrap(), None);
    let peers: Vec<PeerInfo> = seeder_api.get_json(&path).await?;
    assert_eq!(peers.len(), 1);
    let p = &peers[0];
    assert_eq!(p.stats.peer_id, leecher.peer_id().to_string());
    assert!(p.stats.peer_interested && !p.stats.am_choking, "{p:?}");
    assert!(p.stats.upload_window_bytes > 0);
    consistent(p);

    let metrics = String::from_utf8(seeder_api.get("/metrics").await?.to_vec())?;
    for name in [
        "sluice_disk_queue_bytes ",
        "sluice_disk_outstanding_bytes ",
        "sluice_disk_queue_capacity_bytes ",
        "sluice_backpressure_throttled_seconds_total ",
        "sluice_downloaded_bytes_total{",
        "sluice_uploaded_bytes_total{",
        "sluice_peers{",
        "sluice_hash_failures_total{",
        "sluice_requests_rejected_total{",
        "sluice_read_checks_total{",
        "libp2p_",
    ] {
        assert!(metrics.contains(name), "{name} missing from /metrics");
    }
    let unchoked = format!(
        "sluice_peers{{info_hash=\"{}\",state=\"unchoked\"}} 1",
        t.info_hash
    );
    assert!(metrics.contains(&unchoked), "{unchoked} missing");

    // Unknown things: JSON errors with the right status.
    let unknown = format!("/api/v1/torrents/{}/peers", "ab".repeat(32));
    assert_eq!(status(client.get(&unknown).await.unwrap_err()), 404);
    assert_eq!(
        status(client.get("/api/v1/torrents/xyz/peers").await.unwrap_err()),
        400
    );
    assert_eq!(
        status(client.get("/api/v2/nothing").await.unwrap_err()),
        404
    );

    stop([leecher, seeder]).await?;
    // A stopped node leaves no address behind.
    let gone = ApiClient::from_data_dir(&dir.path().join("leecher"), None).unwrap_err();
    assert!(matches!(gone, ClientError::NoApiFile { .. }), "{gone}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_guards_every_endpoint() -> Result<()> {
    init_logs();
    let dir = tempfile::tempdir()?;
    let token = "s3cret-token";
    let n = node(dir.path(), "n", |c| {
        c.with_api(Some(ApiConfig {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            token: Some(token.into()),
            write_token: None,
        }))
    })
    .await;
    let addr = n.api_addr().unwrap();
    for path in ["/api/v1/node", "/api/v1/torrents", "/metrics", "/nowhere"] {
        let none = ApiClient::new(addr, None);
        assert_eq!(status(none.get(path).await.unwrap_err()), 401, "{path}");
        let wrong = ApiClient::new(addr, Some("s3cret-tokem".into()));
        assert_eq!(status(wrong.get(path).await.unwrap_err()), 401, "{path}");
    }
    let right = ApiClient::new(addr, Some(token.into()));
    let info: NodeInfo = right.get_json("/api/v1/node").await?;
    assert_eq!(info.peer_id, n.peer_id().to_string());
    assert!(right.get("/metrics").await.is_ok());
    stop([n]).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_off_loopback_needs_a_token() -> Result<()> {
    let dir = tempfile::tempdir()?;
    // No token, or an empty one (which would let in requests without any).
    for token in [None, Some(String::new())] {
        let config = NodeConfig::new(dir.path().join("n"))
            .with_mdns(false)
            .with_api(Some(ApiConfig {
                addr: SocketAddr::from(([0, 0, 0, 0], 0)),
                token,
                write_token: None,
            }));
        let err = tokio::time::timeout(WAIT, Node::start(config))
            .await?
            .unwrap_err();
        assert!(matches!(err, NodeError::ApiNeedsToken { .. }), "{err}");
        assert!(!dir.path().join("n/api").exists());
    }
    Ok(())
}

/// `GET /api/v1/events`: a `state` event at once with the running
/// torrents, and the stream ends when the node stops (it does not hold
/// the shutdown up).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_stream_sends_the_state_and_ends_with_the_node() -> Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    init_logs();
    let dir = tempfile::tempdir()?;
    let (root, meta) = make_content(dir.path());
    let n = node(dir.path(), "n", |c| c).await;
    n.add_torrent(Arc::clone(&meta), root).await?;
    let addr = n.api_addr().unwrap();
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    let request =
        format!("GET /api/v1/events HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n");
    s.write_all(request.as_bytes()).await?;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let event = loop {
        let n = tokio::time::timeout(WAIT, s.read(&mut buf)).await??;
        assert!(
            n > 0,
            "the stream closed early: {}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got).into_owned();
        if let Some(at) = text.find("event: state\ndata: ")
            && let Some(line) = text[at..].lines().nth(1)
            && text[at..].contains("\n\n")
        {
            break line.trim_start_matches("data: ").to_owned();
        }
    };
    let state: sluice_node::api::StateEvent = serde_json::from_str(&event)?;
    assert_eq!(state.torrents.len(), 1);
    assert_eq!(
        state.torrents[0].info_hash,
        meta.info().info_hash().to_string()
    );
    assert!(state.daemon.is_none(), "not a daemon");
    tokio::time::timeout(WAIT, n.shutdown())
        .await?
        .map_err(anyhow::Error::msg)?;
    // The server ends the stream: the connection reaches its end.
    let rest = tokio::time::timeout(WAIT, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(rest.is_ok(), "the event stream outlived the node");
    Ok(())
}
