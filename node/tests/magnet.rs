//! Downloads that start from an info-hash alone: metadata fetched from
//! peers over `/sluice/metadata/1`, peers found by dialing hints or
//! through the DHT, and a peer that lies about the metadata.

#![allow(clippy::unwrap_used, reason = "test helpers")]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::Result;
use futures::StreamExt;
use libp2p::identity::Keypair;
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId};
use sluice_storage::Metainfo;
use sluice_swarm::metadata::{self, DEFAULT_MAX_METADATA, METADATA_PROTOCOL};
use sluice_swarm::transport::{TransportConfig, build_swarm};
use tokio_util::compat::FuturesAsyncReadCompatExt;

use common::*;

/// Fetches `meta`'s metadata through `leecher`, then downloads it into
/// `out` and checks it against `root`.
async fn fetch_and_download(
    leecher: &sluice_node::NodeHandle,
    meta: &Arc<Metainfo>,
    root: &std::path::Path,
    out: &std::path::Path,
) -> Result<()> {
    let ih = meta.info().info_hash();
    let fetched =
        tokio::time::timeout(WAIT, leecher.fetch_metadata(ih, DEFAULT_MAX_METADATA)).await??;
    assert_eq!(
        fetched.to_bytes(),
        meta.to_bytes(),
        "the rebuilt .torrent is the seeder's, byte for byte"
    );
    let get = leecher
        .add_torrent(Arc::new(fetched), out.to_owned())
        .await?;
    until(&get, "completion", |s| s.complete).await?;
    same_files(meta, root, out);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_from_a_dialed_peer_then_the_download() -> Result<()> {
    init_logs();
    let dir = tempfile::tempdir()?;
    let (root, meta) = make_content(dir.path());
    let seeder = node(dir.path(), "seeder", |c| c).await;
    seeder.add_torrent(Arc::clone(&meta), root.clone()).await?;
    let addr = seeder.listen_addrs().await.remove(0);

    let leecher = node(dir.path(), "leecher", |c| c).await;
    leecher.dial(addr).await?;
    fetch_and_download(&leecher, &meta, &root, &dir.path().join("out/album")).await?;
    stop([leecher, seeder]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_info_hash_alone_is_found_through_a_three_node_dht() -> Result<()> {
    init_logs();
    let dir = tempfile::tempdir()?;
    let (root, meta) = make_content(dir.path());
    // No dial and no hint: the leecher knows the DHT node and the hash.
    let (dht, seeder, leecher) = dht_swarm(dir.path(), &meta, &root).await?;
    fetch_and_download(&leecher, &meta, &root, &dir.path().join("out/album")).await?;
    assert!(leecher.connected_peers().contains(&seeder.peer_id()));
    stop([leecher, seeder, dht]).await
}

/// A peer that answers every metadata request with another torrent's
/// metadata, counting the streams it is asked on.
struct Liar {
    addr: Multiaddr,
    asked: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Liar {
    async fn start(other: Arc<Metainfo>) -> Self {
        let mut swarm = build_swarm(
            Keypair::generate_ed25519(),
            &TransportConfig::default().with_mdns(false),
        )
        .unwrap();
        let mut incoming = swarm
            .behaviour()
            .stream
            .new_control()
            .accept(METADATA_PROTOCOL)
            .unwrap();
        swarm
            .listen_on("/ip4/127.0.0.1/tcp/0".parse().unwrap())
            .unwrap();
        let id: PeerId = *swarm.local_peer_id();
        let addr = loop {
            let event = tokio::time::timeout(WAIT, swarm.select_next_some())
                .await
                .unwrap();
            if let SwarmEvent::NewListenAddr { address, .. } = event {
                break address.with(libp2p::multiaddr::Protocol::P2p(id));
            }
        };
        let asked = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&asked);
        let task = tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = swarm.select_next_some() => {}
                    Some((_, stream)) = incoming.next() => {
                        counter.fetch_add(1, Ordering::SeqCst);
                        let other = Arc::clone(&other);
                        tokio::spawn(metadata::serve(
                            stream.compat(),
                            move |_| Some(Arc::clone(&other)),
                            WAIT,
                        ));
                    }
                }
            }
        });
        Self { addr, asked, task }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_serving_false_metadata_is_asked_once_and_an_honest_one_used() -> Result<()> {
    init_logs();
    let dir = tempfile::tempdir()?;
    let (root, meta) = make_content(dir.path());
    // The same files in 32 KiB pieces: another torrent, another hash.
    let other = sluice_storage::create(
        &root,
        &sluice_storage::CreateOptions::default().with_piece_length(Some(32 * 1024)),
        &std::sync::atomic::AtomicU64::new(0),
    )?;
    assert_ne!(other.info().info_hash(), meta.info().info_hash());
    let liar = Liar::start(Arc::new(other)).await;

    let leecher = node(dir.path(), "leecher", |c| c).await;
    // The liar first, alone: the fetch must not take its word.
    leecher.dial(liar.addr.clone()).await?;
    let ih = meta.info().info_hash();
    let early = tokio::time::timeout(
        Duration::from_secs(4),
        leecher.fetch_metadata(ih, DEFAULT_MAX_METADATA),
    )
    .await;
    assert!(
        early.is_err(),
        "nothing is accepted from the liar: {early:?}"
    );
    assert_eq!(liar.asked.load(Ordering::SeqCst), 1);

    let seeder = node(dir.path(), "seeder", |c| c).await;
    seeder.add_torrent(Arc::clone(&meta), root.clone()).await?;
    leecher.dial(seeder.listen_addrs().await.remove(0)).await?;
    fetch_and_download(&leecher, &meta, &root, &dir.path().join("out/album")).await?;
    // A new fetch starts afresh, so the liar may have been asked once
    // more; never more than once per fetch.
    assert!(liar.asked.load(Ordering::SeqCst) <= 2);
    liar.task.abort();
    stop([leecher, seeder]).await
}

/// A v1 torrent by its (SHA-1) info-hash, and a hybrid by its v1 hash (a
/// `btih` link), fetched from a sluice seeder over libp2p.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1_and_hybrid_torrents_by_their_v1_hash() -> Result<()> {
    use sluice_storage::{CreateOptions, InfoHash, MetaVersion, create};
    init_logs();
    for version in [MetaVersion::V1, MetaVersion::Hybrid] {
        let dir = tempfile::tempdir()?;
        let (root, _) = make_content(dir.path());
        let opts = CreateOptions::default()
            .with_piece_length(Some(64 * 1024))
            .with_version(version);
        let meta = Arc::new(create(&root, &opts, &std::sync::atomic::AtomicU64::new(0))?);
        let v1 = InfoHash::of_v1(meta.info().v1_info_hash().unwrap());
        let seeder = node(dir.path(), "seeder", |c| c).await;
        seeder.add_torrent(Arc::clone(&meta), root.clone()).await?;
        let addr = seeder.listen_addrs().await.remove(0);
        let leecher = node(dir.path(), "leecher", |c| c).await;
        leecher.dial(addr).await?;
        let fetched =
            tokio::time::timeout(WAIT, leecher.fetch_metadata(v1, DEFAULT_MAX_METADATA)).await??;
        assert_eq!(fetched.to_bytes(), meta.to_bytes(), "{version:?}");
        assert!(fetched.info().known_by(&v1));
        leecher.shutdown().await.map_err(anyhow::Error::msg)?;
        seeder.shutdown().await.map_err(anyhow::Error::msg)?;
    }
    Ok(())
}
