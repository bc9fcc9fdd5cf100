//! Real nodes on 127.0.0.1 exchanging a real torrent.

#![allow(clippy::unwrap_used, reason = "test helpers")]

mod common;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use anyhow::Result;
use sluice_node::NodeConfig;
use sluice_storage::{CreateOptions, content_paths, create};

use common::*;
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_to_get_multi_file_is_byte_identical() -> Result<()> {
    init_logs();
    let dir = tempfile::tempdir()?;
    let (root, meta) = make_content(dir.path());
    let seeder = node(dir.path(), "seeder", |c| c).await;
    let seed = seeder.add_torrent(Arc::clone(&meta), root.clone()).await?;
    assert!(
        seed.stats().verified_pieces == seed.stats().total_pieces,
        "the seeder has it all"
    );
    let addr = seeder.listen_addrs().await.remove(0);

    let leecher = node(dir.path(), "leecher", |c| c.with_disk_queue(1024 * 1024)).await;
    let out = dir.path().join("out/album");
    let get = leecher.add_torrent(Arc::clone(&meta), out.clone()).await?;
    leecher.dial(addr).await?;
    let done = until(&get, "completion", |s| s.complete).await?;
    assert_eq!(done.verified_pieces, done.total_pieces);
    same_files(&meta, &root, &out);

    stop([leecher]).await?;
    stop([seeder]).await?;
    Ok(())
}

fn fast_rechoke() -> sluice_swarm::torrent::TorrentConfig {
    use sluice_choke::TitForTatConfig;
    use sluice_swarm::torrent::{ChokerChoice, TorrentConfig};
    TorrentConfig::default().with_choker(ChokerChoice::TitForTat(
        TitForTatConfig::default()
            .with_rechoke_interval(Duration::from_secs(1))
            .with_optimistic_every(2),
    ))
}

/// One seeder with a capped upload and three leechers that know each
/// other: the leechers must trade pieces among themselves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leechers_trade_with_each_other() -> Result<()> {
    init_logs();
    let dir = tempfile::tempdir()?;
    let (root, meta) = make_content(dir.path());
    let seeder = node(dir.path(), "seeder", |c| {
        c.with_up_rate(Some(1_500_000)).with_torrent(fast_rechoke())
    })
    .await;
    seeder.add_torrent(Arc::clone(&meta), root.clone()).await?;
    let seed_addr = seeder.listen_addrs().await.remove(0);

    let mut leechers = Vec::new();
    for i in 0..3 {
        let n = node(dir.path(), &format!("leecher{i}"), |c| {
            c.with_torrent(fast_rechoke())
        })
        .await;
        let out = dir.path().join(format!("out{i}/album"));
        let t = n.add_torrent(Arc::clone(&meta), out.clone()).await?;
        leechers.push((n, t, out));
    }
    for (i, (n, _, _)) in leechers.iter().enumerate() {
        n.dial(seed_addr.clone()).await?;
        for (earlier, _, _) in &leechers[..i] {
            n.dial(earlier.listen_addrs().await.remove(0)).await?;
        }
    }
    let mut uploaded_by_leechers = 0;
    for (_, t, out) in &leechers {
        let s = until(t, "completion", |s| s.complete).await?;
        same_files(&meta, &root, out);
        uploaded_by_leechers += s.uploaded;
    }
    // Some leecher may still be counting; take the final numbers.
    let uploaded_by_leechers =
        uploaded_by_leechers.max(leechers.iter().map(|(_, t, _)| t.stats().uploaded).sum());
    println!("leechers uploaded {uploaded_by_leechers} bytes to each other");
    assert!(uploaded_by_leechers > 0, "leechers never traded");
    stop(leechers.into_iter().map(|(n, _, _)| n)).await?;
    stop([seeder]).await?;
    Ok(())
}

/// A seeder whose data went bad behind its back serves corrupt blocks: the
/// leecher bans it and completes from the honest seeder.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_sending_corrupt_data_is_banned() -> Result<()> {
    init_logs();
    let dir = tempfile::tempdir()?;
    let (root, meta) = make_content(dir.path());
    let honest = node(dir.path(), "honest", |c| c.with_up_rate(Some(2_000_000))).await;
    honest.add_torrent(Arc::clone(&meta), root.clone()).await?;

    let liar = liar(dir.path(), &root, &meta, |c| c).await?;

    // The leecher meets the liar first: three bad pieces get it banned.
    let leecher = node(dir.path(), "leecher", |c| c).await;
    let out = dir.path().join("out/album");
    let get = leecher.add_torrent(Arc::clone(&meta), out.clone()).await?;
    leecher.dial(liar.listen_addrs().await.remove(0)).await?;
    let banned = until(&get, "the ban", |s| s.banned_peers == 1).await?;
    assert!(
        banned.hash_failures >= 3,
        "{} failures",
        banned.hash_failures
    );
    let liar_id = liar.peer_id().to_string();
    let gone = until(&get, "the liar's disconnection", |s| {
        s.peers.iter().all(|p| p.peer_id != liar_id)
    })
    .await?;
    assert_eq!(gone.verified_pieces, 0, "nothing from the liar verified");
    // A banned peer stays out for the session.
    leecher.dial(liar.listen_addrs().await.remove(0)).await?;
    // The honest seeder completes the download.
    leecher.dial(honest.listen_addrs().await.remove(0)).await?;
    let done = until(&get, "completion", |s| s.complete).await?;
    same_files(&meta, &root, &out);
    assert!(
        done.peers.iter().all(|p| p.peer_id != liar_id),
        "the banned liar came back"
    );
    println!(
        "hash failures {}, banned {}",
        done.hash_failures, done.banned_peers
    );
    stop([leecher, liar, honest]).await?;
    Ok(())
}

/// A seeder goes away mid-transfer: the leecher finishes from the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seeder_leaving_mid_transfer_does_not_stop_the_download() -> Result<()> {
    init_logs();
    let dir = tempfile::tempdir()?;
    let (root, meta) = make_content(dir.path());
    let mut seeders = Vec::new();
    for i in 0..2 {
        let n = node(dir.path(), &format!("seeder{i}"), |c| {
            c.with_up_rate(Some(1_000_000))
        })
        .await;
        n.add_torrent(Arc::clone(&meta), root.clone()).await?;
        seeders.push(n);
    }
    let leecher = node(dir.path(), "leecher", |c| c).await;
    let out = dir.path().join("out/album");
    let get = leecher.add_torrent(Arc::clone(&meta), out.clone()).await?;
    for s in &seeders {
        leecher.dial(s.listen_addrs().await.remove(0)).await?;
    }
    let total = get.stats().total_pieces;
    until(&get, "some progress", |s| s.verified_pieces >= total / 4).await?;
    let gone = seeders.remove(0);
    stop([gone]).await?;
    let done = until(&get, "completion", |s| s.complete).await?;
    assert_eq!(done.verified_pieces, total);
    same_files(&meta, &root, &out);
    stop([leecher, seeders.remove(0)]).await?;
    Ok(())
}

/// With a slow emulated disk and a small disk queue, requested-but-not-
/// arrived plus arrived-but-not-written bytes stay within the queue at
/// every sample and the download completes at about the disk's speed; a
/// fast-disk leecher of the same seeder at the same time is not held back.
/// (Speeds are printed, not asserted: this machine is shared.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_disk_holds_the_disk_queue_bound() -> Result<()> {
    init_logs();
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("big.bin");
    std::fs::write(&file, content(24 * 1024 * 1024, 5))?;
    let opts = CreateOptions::default().with_piece_length(Some(256 * 1024));
    let meta = Arc::new(create(&file, &opts, &AtomicU64::new(0))?);
    let seeder = node(dir.path(), "seeder", |c| c).await;
    seeder.add_torrent(Arc::clone(&meta), file.clone()).await?;
    let seed_addr = seeder.listen_addrs().await.remove(0);

    let cap = 2 * 1024 * 1024u64;
    // Slow enough that the disk, not the network, is the bottleneck.
    let disk_rate = 4_000_000u64;
    let slow = node(dir.path(), "slow", |c| {
        c.with_disk_queue(cap).with_disk_rate(Some(disk_rate))
    })
    .await;
    let fast = node(dir.path(), "fast", |c| c).await;
    let slow_out = dir.path().join("slow/big.bin");
    let fast_out = dir.path().join("fast/big.bin");
    let slow_t = slow
        .add_torrent(Arc::clone(&meta), slow_out.clone())
        .await?;
    let fast_t = fast
        .add_torrent(Arc::clone(&meta), fast_out.clone())
        .await?;
    let started = std::time::Instant::now();
    slow.dial(seed_addr.clone()).await?;
    fast.dial(seed_addr).await?;

    let queue = slow.queue().clone();
    let mut peak = 0;
    let mut fast_secs = None;
    let mut ticker = tokio::time::interval(Duration::from_millis(5));
    while !slow_t.stats().complete {
        ticker.tick().await;
        let s = queue.stats();
        peak = peak.max(s.queued_bytes + s.reserved_bytes);
        assert!(s.queued_bytes + s.reserved_bytes <= cap, "{s:?}");
        if fast_secs.is_none() && fast_t.stats().complete {
            fast_secs = Some(started.elapsed().as_secs_f64());
        }
        assert!(started.elapsed() < WAIT, "no completion in {WAIT:?}");
    }
    let slow_secs = started.elapsed().as_secs_f64();
    until(&fast_t, "the fast leecher", |s| s.complete).await?;
    let fast_secs = fast_secs.unwrap_or_else(|| started.elapsed().as_secs_f64());
    let st = queue.stats();
    let size = meta.info().total_size() as f64;
    println!(
        "slow disk ({:.0} MB/s, queue {} KiB): {:.1} MB/s, peak queue {} KiB, throttled {:.2} s; \
         fast leecher beside it: {:.1} MB/s",
        disk_rate as f64 / 1e6,
        cap / 1024,
        size / slow_secs / 1e6,
        peak / 1024,
        st.throttled_total.as_secs_f64(),
        size / fast_secs / 1e6,
    );
    assert!(
        peak > cap / 2,
        "the queue never filled: the disk was not the bottleneck"
    );
    assert!(
        st.throttled_total > Duration::ZERO,
        "requesting was never held back"
    );
    assert_eq!(std::fs::read(&file)?, std::fs::read(&slow_out)?);
    assert_eq!(std::fs::read(&file)?, std::fs::read(&fast_out)?);
    stop([slow, fast, seeder]).await?;
    Ok(())
}

/// A node seeding a copy of `root` that verified at open, then was
/// overwritten with garbage and is served unchecked (an honest node checks
/// what it reads and refuses).
async fn liar(
    dir: &Path,
    root: &Path,
    meta: &Arc<sluice_storage::Metainfo>,
    f: impl FnOnce(NodeConfig) -> NodeConfig,
) -> Result<sluice_node::NodeHandle> {
    let bad_root = dir
        .join("bad")
        .join(root.file_name().expect("a named root"));
    copy_dir(root, &bad_root)?;
    let liar = node(dir, "liar", |c| f(c.with_verify_reads(false))).await;
    liar.add_torrent(Arc::clone(meta), bad_root.clone()).await?;
    for path in content_paths(meta.info(), &bad_root) {
        let len = std::fs::metadata(&path)?.len() as usize;
        std::fs::write(&path, content(len, 99))?;
    }
    Ok(liar)
}

fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        let target = to.join(e.file_name());
        if e.file_type()?.is_dir() {
            copy_dir(&e.path(), &target)?;
        } else {
            std::fs::copy(e.path(), target)?;
        }
    }
    Ok(())
}

/// Peers with nothing to exchange stay connected: keep-alives cover the
/// silence, so the idle timeout only cuts peers that are really gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_peers_stay_connected_through_keepalives() -> Result<()> {
    init_logs();
    let dir = tempfile::tempdir()?;
    let (root, meta) = make_content(dir.path());
    let idle = Duration::from_millis(600);
    let config = |c: NodeConfig| {
        c.with_torrent(sluice_swarm::torrent::TorrentConfig::default().with_idle_timeout(idle))
    };
    let a = node(dir.path(), "a", config).await;
    let b = node(dir.path(), "b", config).await;
    let ta = a.add_torrent(Arc::clone(&meta), root.clone()).await?;
    b.add_torrent(Arc::clone(&meta), root.clone()).await?;
    b.dial(a.listen_addrs().await.remove(0)).await?;
    until(&ta, "the session", |s| s.peers.len() == 1).await?;
    // Both are seeders: neither is interested, nothing but keep-alives
    // crosses for five idle timeouts.
    tokio::time::sleep(idle * 5).await;
    assert_eq!(
        ta.stats().peers.len(),
        1,
        "an idle but live peer was dropped"
    );
    stop([a, b]).await?;
    Ok(())
}

/// Both nodes dial each other at once: each side opens a stream, both
/// keep the same one, and the download completes over it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dialing_each_other_keeps_one_session() -> Result<()> {
    init_logs();
    let dir = tempfile::tempdir()?;
    let (root, meta) = make_content(dir.path());
    let seeder = node(dir.path(), "seeder", |c| c).await;
    let ts = seeder.add_torrent(Arc::clone(&meta), root.clone()).await?;
    let leecher = node(dir.path(), "leecher", |c| c).await;
    let out = dir.path().join("out/album");
    let tl = leecher.add_torrent(Arc::clone(&meta), out.clone()).await?;
    let (sa, la) = (
        seeder.listen_addrs().await.remove(0),
        leecher.listen_addrs().await.remove(0),
    );
    let (x, y) = tokio::join!(seeder.dial(la), leecher.dial(sa));
    x?;
    y?;
    until(&tl, "completion", |s| s.complete).await?;
    same_files(&meta, &root, &out);
    assert_eq!(tl.stats().peers.len(), 1);
    until(&ts, "one session on the seeder", |s| s.peers.len() == 1).await?;
    stop([leecher, seeder]).await?;
    Ok(())
}

/// A node started before its bootstrap node (as a container stack may
/// start them) joins the DHT once the bootstrap node is up: its first dial
/// fails, and it tries again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_joins_the_dht_once_its_bootstrap_node_comes_up() -> Result<()> {
    init_logs();
    let dir = tempfile::tempdir()?;
    let key = dir.path().join("dht.key");
    let id = sluice_node::datadir::new_identity(&key)?
        .public()
        .to_peer_id();
    // Where the bootstrap node will listen; until then something that
    // takes each connection and drops it, so every dial fails. Starting,
    // a node dials its bootstrap nodes a few times at once (the DHT's
    // bootstrap, relay reservations); only trying again later, while it
    // knows no DHT peer, brings the count past that.
    let squatter = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = squatter.local_addr()?.port();
    let boot: sluice_node::Multiaddr = format!("/ip4/127.0.0.1/tcp/{port}/p2p/{id}").parse()?;
    let early = node(dir.path(), "early", |c| {
        c.with_bootstrap(vec![boot]).with_dht_server(true)
    })
    .await;
    for _ in 0..6 {
        let (dropped, _) = tokio::time::timeout(WAIT, squatter.accept()).await??;
        drop(dropped);
    }
    drop(squatter);
    let dht = node(dir.path(), "dht", |c| {
        c.with_identity_file(Some(key))
            .with_listen(vec![format!("/ip4/127.0.0.1/tcp/{port}").parse().unwrap()])
            .with_dht_server(true)
    })
    .await;
    assert_eq!(
        dht.peer_id(),
        id,
        "the bootstrap node has the key made for it"
    );
    let mut connected = early.watch_connected();
    tokio::time::timeout(WAIT, connected.wait_for(|peers| peers.contains(&id)))
        .await?
        .map_err(anyhow::Error::msg)?;
    stop([early, dht]).await
}

/// No peer addresses given: seeder and leecher only know a DHT node, and
/// find each other through provider records keyed by the info-hash.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_find_each_other_through_the_dht() -> Result<()> {
    init_logs();
    let dir = tempfile::tempdir()?;
    let (root, meta) = make_content(dir.path());
    let (dht, seeder, leecher) = dht_swarm(dir.path(), &meta, &root).await?;
    let out = dir.path().join("out/album");
    let get = leecher.add_torrent(Arc::clone(&meta), out.clone()).await?;
    until(&get, "completion", |s| s.complete).await?;
    same_files(&meta, &root, &out);
    let seeder_id = seeder.peer_id().to_string();
    assert!(
        get.stats().peers.iter().any(|p| p.peer_id == seeder_id),
        "found someone else?"
    );
    stop([leecher, seeder, dht]).await?;
    Ok(())
}

/// The same transfer over QUIC instead of TCP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_to_get_over_quic() -> Result<()> {
    init_logs();
    let dir = tempfile::tempdir()?;
    let (root, meta) = make_content(dir.path());
    let quic = || vec!["/ip4/127.0.0.1/udp/0/quic-v1".parse().unwrap()];
    let seeder = node(dir.path(), "seeder", |c| c.with_listen(quic())).await;
    seeder.add_torrent(Arc::clone(&meta), root.clone()).await?;
    let addr = seeder.listen_addrs().await.remove(0);
    assert!(addr.to_string().contains("/quic-v1/"), "{addr}");
    let leecher = node(dir.path(), "leecher", |c| c.with_listen(quic())).await;
    let out = dir.path().join("out/album");
    let get = leecher.add_torrent(Arc::clone(&meta), out.clone()).await?;
    leecher.dial(addr).await?;
    until(&get, "completion", |s| s.complete).await?;
    same_files(&meta, &root, &out);
    stop([leecher, seeder]).await?;
    Ok(())
}

/// Two nodes each hold half of the pieces and upload to each other at
/// once through a rate limit: both streams carry data both ways. A
/// session that stopped reading while its own write waited would stall
/// with its peer doing the same (both muxer windows full) until the idle
/// timeout; both must finish instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_halves_trade_both_ways_under_rate_limits() -> Result<()> {
    init_logs();
    let dir = tempfile::tempdir()?;
    let piece = 64 * 1024;
    let file = dir.path().join("whole.bin");
    let data = content(8 * 1024 * 1024, 7);
    std::fs::write(&file, &data)?;
    let opts = CreateOptions::default().with_piece_length(Some(piece as u32));
    let meta = Arc::new(create(&file, &opts, &AtomicU64::new(0))?);
    let mut nodes = Vec::new();
    let mut handles = Vec::new();
    for half in 0..2 {
        // Every other piece zeroed: this node holds the other half.
        let mut mine = data.clone();
        for (i, chunk) in mine.chunks_mut(piece).enumerate() {
            if i % 2 == half {
                chunk.fill(0);
            }
        }
        let path = dir.path().join(format!("half{half}/whole.bin"));
        std::fs::create_dir_all(path.parent().unwrap())?;
        std::fs::write(&path, &mine)?;
        let n = node(dir.path(), &format!("node{half}"), |c| {
            c.with_up_rate(Some(1024 * 1024))
        })
        .await;
        let t = n.add_torrent(Arc::clone(&meta), path).await?;
        let s = t.stats();
        assert_eq!(s.verified_pieces * 2, s.total_pieces, "half the pieces");
        nodes.push(n);
        handles.push(t);
    }
    nodes[0]
        .dial(nodes[1].listen_addrs().await.remove(0))
        .await?;
    for (i, t) in handles.iter().enumerate() {
        let done = until(t, "completion", |s| s.complete).await?;
        assert!(done.uploaded > 0, "node {i} uploaded nothing");
        let got = std::fs::read(dir.path().join(format!("half{i}/whole.bin")))?;
        assert!(got == data, "node {i}'s copy differs");
    }
    stop(nodes).await?;
    Ok(())
}

/// `dial` answers with the peer's id once connected, or why not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dial_reports_its_outcome() -> Result<()> {
    init_logs();
    let dir = tempfile::tempdir()?;
    let a = node(dir.path(), "a", |c| c).await;
    let b = node(dir.path(), "b", |c| c).await;
    let got = tokio::time::timeout(WAIT, a.dial(b.listen_addrs().await.remove(0))).await??;
    assert_eq!(got, b.peer_id());
    // Nothing listens on a port we just let go of.
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let nowhere = format!("/ip4/127.0.0.1/tcp/{port}").parse()?;
    let err = tokio::time::timeout(WAIT, a.dial(nowhere))
        .await?
        .unwrap_err();
    assert!(err.to_string().contains(&port.to_string()), "{err}");
    stop([a, b]).await?;
    Ok(())
}

/// A node at its connection limit refuses more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_limit_are_refused() -> Result<()> {
    init_logs();
    let dir = tempfile::tempdir()?;
    let a = node(dir.path(), "a", |c| c.with_max_connections(1)).await;
    let b = node(dir.path(), "b", |c| c).await;
    let c = node(dir.path(), "c", |c| c).await;
    tokio::time::timeout(WAIT, a.dial(b.listen_addrs().await.remove(0))).await??;
    let err = tokio::time::timeout(WAIT, a.dial(c.listen_addrs().await.remove(0)))
        .await?
        .unwrap_err();
    assert!(
        err.to_string().to_lowercase().contains("limit")
            || err.to_string().to_lowercase().contains("denied"),
        "{err}"
    );
    stop([a, b, c]).await?;
    Ok(())
}

/// A liar and an honest seeder serve the same pieces at once, so failed
/// pieces have several senders: only the peer whose blocks differed from
/// the verified ones is held responsible (smart ban); the honest seeder is
/// never banned and the download completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_sender_of_bad_blocks_is_banned_when_pieces_are_shared() -> Result<()> {
    init_logs();
    let dir = tempfile::tempdir()?;
    // Pieces of 32 blocks: both seeders send blocks of the same pieces.
    let root = dir.path().join("album");
    std::fs::create_dir_all(&root)?;
    std::fs::write(root.join("track.flac"), content(6 * 1024 * 1024, 5))?;
    std::fs::write(root.join("notes.txt"), content(1000, 6))?;
    let opts = CreateOptions::default().with_piece_length(Some(512 * 1024));
    let meta = Arc::new(create(&root, &opts, &AtomicU64::new(0))?);
    let honest = node(dir.path(), "honest", |c| c.with_up_rate(Some(3_000_000))).await;
    honest.add_torrent(Arc::clone(&meta), root.clone()).await?;
    let liar = liar(dir.path(), &root, &meta, |c| {
        c.with_up_rate(Some(3_000_000))
    })
    .await?;
    let leecher = node(dir.path(), "leecher", |c| c).await;
    let out = dir.path().join("out/album");
    let get = leecher.add_torrent(Arc::clone(&meta), out.clone()).await?;
    leecher.dial(liar.listen_addrs().await.remove(0)).await?;
    leecher.dial(honest.listen_addrs().await.remove(0)).await?;
    let done = until(&get, "completion", |s| s.complete).await?;
    same_files(&meta, &root, &out);
    let honest_id = honest.peer_id().to_string();
    assert!(done.hash_failures > 0, "the liar's data was seen");
    assert!(done.banned_peers <= 1, "{} banned", done.banned_peers);
    assert!(
        done.peers.iter().any(|p| p.peer_id == honest_id),
        "the honest seeder is still connected"
    );
    stop([leecher, liar, honest]).await?;
    Ok(())
}

/// A seeder has nothing to reciprocate, so it watches whether the pieces
/// it sent one peer alone reach anyone else. Alone, a downloader has
/// nobody to pass pieces to and is not held back. Once a leecher that
/// passes pieces on is there, the free-rider that keeps them is capped at
/// one slot's share of the seeder's upload; the leecher never is; both
/// complete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seeder_caps_a_peer_that_passes_nothing_on() -> Result<()> {
    use sluice_swarm::torrent::ChokerChoice;
    init_logs();
    let dir = tempfile::tempdir()?;
    let (root, meta) = make_content(dir.path());
    // Slow enough that the free-rider is judged long before it is done.
    let rate = 300_000;
    let seeder = node(dir.path(), "seeder", |c| {
        c.with_up_rate(Some(rate)).with_torrent(fast_rechoke())
    })
    .await;
    let seed = seeder.add_torrent(Arc::clone(&meta), root.clone()).await?;
    let seed_addr = seeder.listen_addrs().await.remove(0);

    let free = node(dir.path(), "free", |c| {
        c.with_torrent(fast_rechoke().with_choker(ChokerChoice::FreeRider))
    })
    .await;
    let free_out = dir.path().join("free/album");
    let free_t = free
        .add_torrent(Arc::clone(&meta), free_out.clone())
        .await?;
    free.dial(seed_addr.clone()).await?;
    let free_id = free.peer_id().to_string();
    // Alone: well past the point where it would be judged (8 sole pieces,
    // two 1 s rechokes), and not capped.
    let s = until(&seed, "the free-rider alone for a while", |s| {
        s.peers
            .iter()
            .any(|p| p.peer_id == free_id && p.sole_pieces >= 12 && p.connected_seconds >= 4.0)
    })
    .await?;
    let p = s.peers.iter().find(|p| p.peer_id == free_id).unwrap();
    assert_eq!(
        p.upload_cap, None,
        "a lone downloader is not held back: {p:?}"
    );

    let honest = node(dir.path(), "honest", |c| c.with_torrent(fast_rechoke())).await;
    let honest_out = dir.path().join("honest/album");
    let honest_t = honest
        .add_torrent(Arc::clone(&meta), honest_out.clone())
        .await?;
    honest.dial(seed_addr).await?;
    honest.dial(free.listen_addrs().await.remove(0)).await?;
    let honest_id = honest.peer_id().to_string();
    // Four slots by default: one slot's share is a quarter.
    let share = rate / 4;
    let s = until(&seed, "the free-rider capped", |s| {
        s.peers
            .iter()
            .any(|p| p.peer_id == free_id && p.upload_cap == Some(share))
    })
    .await?;
    let p = s.peers.iter().find(|p| p.peer_id == free_id).unwrap();
    assert!(p.sole_pieces >= 8 && p.spread_pieces == 0, "{p:?}");
    until(&honest_t, "the leecher completes", |s| s.complete).await?;
    let s = seed.stats();
    let h = s.peers.iter().find(|p| p.peer_id == honest_id).unwrap();
    assert!(h.spread_pieces > 0, "the leecher passed pieces on: {h:?}");
    assert_eq!(h.upload_cap, None);
    until(&free_t, "the free-rider completes", |s| s.complete).await?;
    same_files(&meta, &root, &honest_out);
    same_files(&meta, &root, &free_out);
    stop([honest, free]).await?;
    stop([seeder]).await?;
    Ok(())
}

/// A peer known only by name: `/dns4/localhost/tcp/PORT/p2p/ID` is
/// resolved (the hosts file) and dialed, and the download completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_named_by_dns_connects() -> Result<()> {
    init_logs();
    let dir = tempfile::tempdir()?;
    let (root, meta) = make_content(dir.path());
    let seeder = node(dir.path(), "seeder", |c| c).await;
    seeder.add_torrent(Arc::clone(&meta), root.clone()).await?;
    let addr = seeder.listen_addrs().await.remove(0).to_string();
    let named: sluice_node::Multiaddr = addr
        .replace("/ip4/127.0.0.1/", "/dns4/localhost/")
        .parse()?;
    assert!(
        named.to_string().starts_with("/dns4/localhost/tcp/"),
        "{named}"
    );
    let leecher = node(dir.path(), "leecher", |c| c).await;
    let out = dir.path().join("out/album");
    let get = leecher.add_torrent(Arc::clone(&meta), out.clone()).await?;
    let peer = tokio::time::timeout(WAIT, leecher.dial(named)).await??;
    assert_eq!(peer, seeder.peer_id());
    until(&get, "completion", |s| s.complete).await?;
    same_files(&meta, &root, &out);
    stop([leecher, seeder]).await?;
    Ok(())
}
