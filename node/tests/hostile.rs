//! Misbehaving peers on real 127.0.0.1 sockets: a raw libp2p client that
//! opens a piece stream to a seeder and breaks the protocol in one way
//! each. Every case ends with the seeder closing that stream (or
//! rejecting), and an honest leecher downloading everything afterwards.

#![allow(clippy::unwrap_used, reason = "test helpers")]

mod common;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use bytes::{BufMut, BytesMut};
use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use libp2p::identity::Keypair;
use libp2p::{Multiaddr, PeerId};
use sluice_swarm::torrent::TorrentConfig;
use sluice_swarm::transport::{PIECES_PROTOCOL, TransportConfig, build_swarm};
use sluice_swarm::wire::{MAX_FRAME, VERSION};
use sluice_swarm::{BlockSpec, Message};

use common::*;

/// A raw client: its own swarm, driven in the background.
struct Raw {
    control: libp2p_stream::Control,
    task: tokio::task::JoinHandle<()>,
}

impl Raw {
    async fn connect(addr: Multiaddr) -> Self {
        let mut swarm = build_swarm(
            Keypair::generate_ed25519(),
            &TransportConfig::default().with_mdns(false),
        )
        .unwrap();
        let control = swarm.behaviour().stream.new_control();
        swarm.dial(addr).unwrap();
        let task = tokio::spawn(async move {
            loop {
                swarm.select_next_some().await;
            }
        });
        Self { control, task }
    }

    async fn stream(&mut self, peer: PeerId) -> libp2p::Stream {
        tokio::time::timeout(WAIT, self.control.open_stream(peer, PIECES_PROTOCOL))
            .await
            .unwrap()
            .unwrap()
    }
}

impl Drop for Raw {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn encode(msgs: &[Message]) -> Vec<u8> {
    let mut b = BytesMut::new();
    for m in msgs {
        m.encode(&mut b);
    }
    b.to_vec()
}

/// Reads until the other side closes the stream; fails if it does not
/// within the wait. Returns what was read.
async fn until_closed(stream: &mut libp2p::Stream) -> Vec<u8> {
    let mut all = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    tokio::time::timeout(WAIT, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => all.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .expect("the node closes the stream");
    all
}

/// Decodes whole frames from `bytes` (what the node sent us).
fn decode_all(bytes: &[u8]) -> Vec<Message> {
    let mut buf = BytesMut::from(bytes);
    let mut out = Vec::new();
    while let Ok(Some(m)) = Message::decode(&mut buf) {
        out.push(m);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_peers_are_cut_off_and_honest_ones_still_download() -> Result<()> {
    init_logs();
    let dir = tempfile::tempdir()?;
    let (root, meta) = make_content(dir.path());
    let idle = Duration::from_secs(2);
    let seeder = node(dir.path(), "seeder", |c| {
        c.with_torrent(TorrentConfig::default().with_idle_timeout(idle))
    })
    .await;
    let ts = seeder.add_torrent(Arc::clone(&meta), root.clone()).await?;
    let addr = seeder.listen_addrs().await.remove(0);
    let hello = Message::Handshake {
        version: VERSION,
        info_hash: meta.info().info_hash().0,
        pieces: ts.stats().total_pieces,
        max_requests: 8,
    };
    let pieces = ts.stats().total_pieces;

    // Each case: what we send after our handshake, and whether the node
    // must close the stream (else: it must answer with a reject).
    let oversized = {
        let mut b = BytesMut::new();
        b.put_u32(u32::try_from(MAX_FRAME).unwrap() + 1);
        b.put_bytes(7, 64);
        b.to_vec()
    };
    let unknown_type = vec![0, 0, 0, 1, 200];
    let wrong_bitfield = encode(&[Message::Bitfield {
        first_piece: 0,
        bits: vec![0xff; (pieces as usize).div_ceil(8) + 16].into(),
    }]);
    let second_handshake = encode(std::slice::from_ref(&hello));
    let unrequested_block = encode(&[Message::Piece {
        piece: 0,
        offset: 0,
        data: vec![0u8; 16 * 1024].into(),
    }]);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("an oversized frame", oversized),
        ("an unknown message type", unknown_type),
        ("a bitfield of the wrong length", wrong_bitfield),
        ("a second handshake", second_handshake),
        ("a block nobody asked for, then silence", unrequested_block),
        ("nothing after the handshake", Vec::new()),
    ];
    for (what, bytes) in cases {
        let mut raw = Raw::connect(addr.clone()).await;
        let mut stream = raw.stream(seeder.peer_id()).await;
        stream
            .write_all(&encode(std::slice::from_ref(&hello)))
            .await?;
        stream.write_all(&bytes).await?;
        stream.flush().await?;
        let started = tokio::time::Instant::now();
        let got = until_closed(&mut stream).await;
        assert!(
            matches!(decode_all(&got).first(), Some(Message::Handshake { .. })),
            "{what}: the node answered the handshake first"
        );
        if bytes.is_empty() {
            assert!(
                started.elapsed() >= idle,
                "{what}: cut off before the idle timeout"
            );
        }
        drop(raw);
    }

    // A request beyond the piece range, and requests while choked, get
    // explicit rejects (the stream stays open).
    let mut raw = Raw::connect(addr.clone()).await;
    let mut stream = raw.stream(seeder.peer_id()).await;
    let far = BlockSpec {
        piece: pieces + 10,
        offset: 0,
        len: 16 * 1024,
    };
    let first = BlockSpec {
        piece: 0,
        offset: 0,
        len: 16 * 1024,
    };
    stream
        .write_all(&encode(&[
            hello.clone(),
            Message::Request(far),
            Message::Request(first),
        ]))
        .await?;
    stream.flush().await?;
    let got = until_closed(&mut stream).await; // the idle timeout ends it
    let msgs = decode_all(&got);
    assert!(msgs.contains(&Message::Reject(far)), "{msgs:?}");
    assert!(msgs.contains(&Message::Reject(first)), "choked: {msgs:?}");
    drop(raw);

    // Through all of that, the seeder still serves an honest leecher.
    let leecher = node(dir.path(), "leecher", |c| c).await;
    let out = dir.path().join("out/album");
    let tl = leecher.add_torrent(Arc::clone(&meta), out.clone()).await?;
    leecher.dial(addr).await?;
    until(&tl, "the honest download", |s| s.complete).await?;
    same_files(&meta, &root, &out);
    stop([leecher, seeder]).await?;
    Ok(())
}

/// A peer that says it has everything, unchokes us, and refuses every
/// request: each block is asked of it at most once, then we lose interest;
/// the download completes from an honest seeder.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_rejects_everything_is_asked_no_more() -> Result<()> {
    init_logs();
    let dir = tempfile::tempdir()?;
    let (root, meta) = make_content(dir.path());
    let leecher = node(dir.path(), "leecher", |c| c).await;
    let out = dir.path().join("out/album");
    let tl = leecher.add_torrent(Arc::clone(&meta), out.clone()).await?;
    let pieces = tl.stats().total_pieces;
    let mut raw = Raw::connect(leecher.listen_addrs().await.remove(0)).await;
    let mut stream = raw.stream(leecher.peer_id()).await;
    let hello = Message::Handshake {
        version: VERSION,
        info_hash: meta.info().info_hash().0,
        pieces,
        max_requests: 250,
    };
    stream
        .write_all(&encode(&[hello, Message::HaveAll, Message::Unchoke]))
        .await?;
    stream.flush().await?;

    let mut asked = std::collections::HashSet::new();
    let mut buf = BytesMut::new();
    let mut chunk = vec![0u8; 64 * 1024];
    tokio::time::timeout(WAIT, async {
        loop {
            while let Some(m) = Message::decode(&mut buf).expect("the node speaks the protocol") {
                match m {
                    Message::Request(spec) => {
                        assert!(asked.insert(spec), "{spec:?} asked twice");
                        stream.write_all(&encode(&[Message::Reject(spec)])).await?;
                        stream.flush().await?;
                    }
                    Message::NotInterested => return Ok::<_, anyhow::Error>(()),
                    _ => {}
                }
            }
            let n = stream.read(&mut chunk).await?;
            anyhow::ensure!(n > 0, "the node closed the stream");
            buf.extend_from_slice(&chunk[..n]);
        }
    })
    .await
    .expect("the node loses interest in the peer")?;
    // Each block asked at most once (checked above), so never more than
    // the torrent has, then nothing more.
    let blocks: u64 = meta
        .info()
        .files()
        .iter()
        .map(|f| f.length.div_ceil(16 * 1024))
        .sum();
    assert!(
        !asked.is_empty() && asked.len() as u64 <= blocks,
        "{} requests for {blocks} blocks",
        asked.len()
    );

    let seeder = node(dir.path(), "seeder", |c| c).await;
    seeder.add_torrent(Arc::clone(&meta), root.clone()).await?;
    leecher.dial(seeder.listen_addrs().await.remove(0)).await?;
    until(&tl, "the honest download", |s| s.complete).await?;
    same_files(&meta, &root, &out);
    drop(raw);
    stop([leecher, seeder]).await?;
    Ok(())
}

/// A seeder whose copy changed on disk after it started: it catches the
/// change when a leecher asks for that piece, refuses it instead of
/// sending bad data, and fetches the piece back from an honest seeder; the
/// leecher ends with the right content.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seeder_whose_file_changed_stops_offering_the_piece() -> Result<()> {
    init_logs();
    let dir = tempfile::tempdir()?;
    let (root, meta) = make_content(dir.path());
    let copy = dir.path().join("copy/album");
    std::fs::create_dir_all(copy.join("disc1"))?;
    for f in ["disc1/a.flac", "cover.jpg", "empty.txt"] {
        std::fs::copy(root.join(f), copy.join(f))?;
    }
    let changed = node(dir.path(), "changed", |c| c).await;
    let tc = changed.add_torrent(Arc::clone(&meta), copy.clone()).await?;
    let total = tc.stats().total_pieces;
    assert_eq!(tc.stats().verified_pieces, total);
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(copy.join("disc1/a.flac"))?;
        let mut b = [0u8; 1];
        f.read_exact_at(&mut b, 200_000)?;
        f.write_all_at(&[!b[0]], 200_000)?;
    }

    let leecher = node(dir.path(), "leecher", |c| c).await;
    let out = dir.path().join("out/album");
    let tl = leecher.add_torrent(Arc::clone(&meta), out.clone()).await?;
    leecher.dial(changed.listen_addrs().await.remove(0)).await?;
    until(&tc, "the change to be caught", |s| {
        s.verified_pieces == total - 1
    })
    .await?;
    until(&tl, "all but the changed piece", |s| {
        s.verified_pieces == total - 1
    })
    .await?;
    assert_eq!(tl.stats().hash_failures, 0, "no bad data was sent");

    let honest = node(dir.path(), "honest", |c| c).await;
    honest.add_torrent(Arc::clone(&meta), root.clone()).await?;
    let honest_addr = honest.listen_addrs().await.remove(0);
    leecher.dial(honest_addr.clone()).await?;
    until(&tl, "the leecher's download", |s| s.complete).await?;
    same_files(&meta, &root, &out);
    changed.dial(honest_addr).await?;
    until(&tc, "the changed seeder whole again", |s| s.complete).await?;
    same_files(&meta, &root, &copy);
    stop([leecher, changed, honest]).await?;
    Ok(())
}
