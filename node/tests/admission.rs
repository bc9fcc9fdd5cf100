//! Admission under abuse, tried as a hostile host would: 100 TCP
//! connections from another address (127.0.0.2) to a seeder's listen port
//! that never send a byte, or that send garbage over and over, while an
//! honest leecher (127.0.0.1) downloads. The flood holds only its share of
//! the handshake slots, its oldest connections are dropped, and the honest
//! peer completes: over libp2p (TCP + Noise) and over the BitTorrent wire.

#![allow(clippy::unwrap_used, reason = "test helpers")]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use sluice_node::NodeHandle;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

mod common;

use common::*;

/// Connections in the flood.
const FLOOD: usize = 100;

/// One connection from 127.0.0.2 to `to`.
async fn from_other_host(to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind("127.0.0.2:0".parse().expect("an address"))?;
    socket.connect(to).await
}

/// 100 silent connections to `to`, held open.
async fn silent_flood(to: SocketAddr) -> Result<Vec<TcpStream>> {
    let mut held = Vec::with_capacity(FLOOD);
    for _ in 0..FLOOD {
        held.push(tokio::time::timeout(WAIT, from_other_host(to)).await??);
    }
    Ok(held)
}

/// How many of `held` the other side has closed: a read ends (EOF or a
/// reset) rather than waiting.
async fn closed_by_peer(held: &mut [TcpStream]) -> usize {
    let mut closed = 0;
    for s in held {
        let mut b = [0u8; 64];
        // A connection left open has nothing to read: the short wait ends
        // it. One the peer closed answers at once.
        if let Ok(r) = tokio::time::timeout(Duration::from_millis(20), s.read(&mut b)).await
            && r.map_or(true, |n| n == 0)
        {
            closed += 1;
        }
    }
    closed
}

/// The flood kept only its share: its oldest connections were dropped.
/// (On a very slow run the handshake timeouts could close them too; what
/// proves the admission is the honest peer's one dial or handshake
/// answered while the flood is held.)
async fn assert_flood_dropped(held: &mut [TcpStream]) {
    let closed = closed_by_peer(held).await;
    assert!(
        closed >= FLOOD - sluice_swarm::admission::DEFAULT_MAX_PENDING_PER_IP,
        "only {closed} of {FLOOD} silent connections dropped"
    );
}

/// A flood that never stops: 100 connections that each send garbage and
/// reconnect when dropped, until the task is aborted.
fn garbage_flood(to: SocketAddr) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..FLOOD {
            tasks.spawn(async move {
                let junk: Vec<u8> = (0..512u32).map(|j| (j * 31 + i as u32) as u8).collect();
                loop {
                    if let Ok(mut s) = from_other_host(to).await {
                        while s.write_all(&junk).await.is_ok() {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            });
        }
        while tasks.join_next().await.is_some() {}
    })
}

/// The seeder's TCP listen address (libp2p).
async fn tcp_addr(n: &NodeHandle) -> SocketAddr {
    let addr = n.listen_addrs().await.remove(0);
    let text = addr.to_string();
    let parts: Vec<&str> = text.split('/').collect();
    format!("{}:{}", parts[2], parts[4])
        .parse()
        .expect("an /ip4/…/tcp/… address")
}

async fn seeder_and_leecher(
    dir: &std::path::Path,
) -> Result<(
    NodeHandle,
    NodeHandle,
    sluice_swarm::torrent::TorrentHandle,
    std::path::PathBuf,
    std::path::PathBuf,
    Arc<sluice_storage::Metainfo>,
)> {
    let (root, meta) = make_content(dir);
    let seeder = node(dir, "seeder", |c| c).await;
    seeder.add_torrent(Arc::clone(&meta), root.clone()).await?;
    let leecher = node(dir, "leecher", |c| c).await;
    let out = dir.join("out/album");
    let get = leecher.add_torrent(Arc::clone(&meta), out.clone()).await?;
    Ok((seeder, leecher, get, root, out, meta))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_honest_peer_completes_through_a_silent_flood() -> Result<()> {
    init_logs();
    let dir = tempfile::tempdir()?;
    let (seeder, leecher, get, root, out, meta) = seeder_and_leecher(dir.path()).await?;
    let mut held = silent_flood(tcp_addr(&seeder).await).await?;
    let addr = seeder.listen_addrs().await.remove(0);
    tokio::time::timeout(WAIT, leecher.dial(addr)).await??;
    until(&get, "completion", |s| s.complete).await?;
    same_files(&meta, &root, &out);
    assert_flood_dropped(&mut held).await;
    stop([leecher, seeder]).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_honest_peer_completes_through_a_garbage_flood() -> Result<()> {
    init_logs();
    let dir = tempfile::tempdir()?;
    let (seeder, leecher, get, root, out, meta) = seeder_and_leecher(dir.path()).await?;
    let flood = garbage_flood(tcp_addr(&seeder).await);
    let addr = seeder.listen_addrs().await.remove(0);
    tokio::time::timeout(WAIT, leecher.dial(addr)).await??;
    until(&get, "completion", |s| s.complete).await?;
    same_files(&meta, &root, &out);
    flood.abort();
    stop([leecher, seeder]).await?;
    Ok(())
}

/// The same on the BitTorrent listener: a silent flood there, and the
/// leecher reaches the seeder over the BitTorrent wire.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_honest_bittorrent_peer_completes_through_a_silent_flood() -> Result<()> {
    init_logs();
    let dir = tempfile::tempdir()?;
    let (seeder, leecher, get, root, out, meta) = seeder_and_leecher(dir.path()).await?;
    let bt = seeder.bt_addr().expect("a BitTorrent listener");
    let mut held = silent_flood(bt).await?;
    // One handshake, not retried: it is answered at once.
    let ih = sluice_swarm::torrent::bt_info_hash(meta.info().info_hash());
    let ours = sluice_swarm::bt::wire::Handshake::ours(ih, *b"-XX0000-honest-peer!");
    let (_stream, theirs) = sluice_swarm::bt::connect(bt, ours).await?;
    assert_eq!(theirs.info_hash, ih);
    leecher.add_bt_peer(meta.info().info_hash(), bt)?;
    until(&get, "completion", |s| s.complete).await?;
    same_files(&meta, &root, &out);
    assert_flood_dropped(&mut held).await;
    stop([leecher, seeder]).await?;
    Ok(())
}
