//! Helpers shared by the node tests: content, nodes, waiting, comparing.

#![allow(dead_code, unreachable_pub, reason = "each test binary uses a subset")]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use anyhow::{Context, Result};
use sluice_node::{Node, NodeConfig, NodeHandle};
use sluice_storage::{CreateOptions, Metainfo, content_paths, create};
use sluice_swarm::torrent::{TorrentHandle, TorrentStats};

pub const WAIT: Duration = Duration::from_secs(60);

pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
}

pub fn content(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A directory torrent: nested files, an empty one, a short last piece.
pub fn make_content(dir: &Path) -> (PathBuf, Arc<Metainfo>) {
    let root = dir.join("album");
    std::fs::create_dir_all(root.join("disc1")).unwrap();
    std::fs::write(
        root.join("disc1/a.flac"),
        content(3 * 1024 * 1024 + 12345, 1),
    )
    .unwrap();
    std::fs::write(root.join("cover.jpg"), content(200_000, 2)).unwrap();
    std::fs::write(root.join("empty.txt"), b"").unwrap();
    let opts = CreateOptions::default().with_piece_length(Some(64 * 1024));
    let meta = create(&root, &opts, &AtomicU64::new(0)).unwrap();
    (root, Arc::new(meta))
}

pub async fn node(dir: &Path, name: &str, f: impl FnOnce(NodeConfig) -> NodeConfig) -> NodeHandle {
    let config = f(NodeConfig::new(dir.join(name)).with_mdns(false));
    tokio::time::timeout(WAIT, Node::start(config))
        .await
        .unwrap()
        .unwrap()
}

pub async fn until(
    t: &TorrentHandle,
    what: &str,
    pred: impl Fn(&TorrentStats) -> bool,
) -> Result<TorrentStats> {
    let mut rx = t.watch();
    let s = tokio::time::timeout(WAIT, rx.wait_for(|s| pred(s)))
        .await
        .with_context(|| format!("timed out waiting for {what}: {:?}", strip(&t.stats())))?
        .context("torrent stopped")?
        .clone();
    Ok(s)
}

pub fn strip(s: &TorrentStats) -> (u32, u32, bool, usize) {
    (s.verified_pieces, s.total_pieces, s.complete, s.peers.len())
}

/// A DHT node, a seeder of `meta` at `root` and a leecher with no torrent
/// yet, the two bootstrapped from the DHT node and nothing else, with
/// fast discovery rounds.
pub async fn dht_swarm(
    dir: &Path,
    meta: &Arc<Metainfo>,
    root: &Path,
) -> Result<(NodeHandle, NodeHandle, NodeHandle)> {
    // Loopback: nobody confirms an address, so all serve the DHT.
    let dht = node(dir, "dht", |c| c.with_dht_server(true)).await;
    let boot = vec![dht.listen_addrs().await.remove(0)];
    let fast = Duration::from_millis(300);
    let seeder = node(dir, "seeder", |c| {
        c.with_bootstrap(boot.clone())
            .with_discovery_interval(fast)
            .with_dht_server(true)
    })
    .await;
    seeder
        .add_torrent(Arc::clone(meta), root.to_owned())
        .await?;
    let leecher = node(dir, "leecher", |c| {
        c.with_bootstrap(boot)
            .with_discovery_interval(fast)
            .with_dht_server(true)
    })
    .await;
    Ok((dht, seeder, leecher))
}

/// Shuts nodes down (each within the timeout), failing on any error.
pub async fn stop(nodes: impl IntoIterator<Item = NodeHandle>) -> Result<()> {
    for n in nodes {
        tokio::time::timeout(WAIT, n.shutdown())
            .await?
            .map_err(anyhow::Error::msg)?;
    }
    Ok(())
}

pub fn same_files(meta: &Metainfo, a: &Path, b: &Path) {
    for (x, y) in content_paths(meta.info(), a)
        .iter()
        .zip(content_paths(meta.info(), b))
    {
        assert_eq!(
            std::fs::read(x).unwrap(),
            std::fs::read(&y).unwrap(),
            "{}",
            y.display()
        );
    }
}
