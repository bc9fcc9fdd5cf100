//! Misbehaving BitTorrent peers on real 127.0.0.1 sockets: raw TCP
//! clients that break the peer wire one way each against a seeder (each
//! is disconnected; a request flood is answered with rejects), and a
//! BitTorrent peer that serves corrupt blocks to a leecher, which bans it
//! and completes from an honest libp2p peer: one core judges both wires.

#![allow(clippy::unwrap_used, reason = "test helpers")]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Result;
use bytes::{BufMut, BytesMut};
use sluice_storage::{BLOCK_SIZE, Layout};
use sluice_swarm::bt::wire::{BtCodec, HANDSHAKE_LEN, Handshake};
use sluice_swarm::codec::{Codec, Inbound};
use sluice_swarm::torrent::{TorrentConfig, Transport, bt_info_hash};
use sluice_swarm::{BlockSpec, Message};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use common::*;

/// Connects and sends `first` (a handshake, or garbage).
async fn raw(addr: SocketAddr, first: &[u8]) -> TcpStream {
    let mut s = tokio::time::timeout(WAIT, TcpStream::connect(addr))
        .await
        .unwrap()
        .unwrap();
    s.write_all(first).await.unwrap();
    s
}

/// Reads until the other side closes; fails if it does not within the
/// wait. Returns what was read.
async fn until_closed(s: &mut TcpStream) -> Vec<u8> {
    let mut all = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    tokio::time::timeout(WAIT, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => all.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .expect("the seeder closes the connection");
    all
}

fn handshake(ih: [u8; 20], id: u8) -> Handshake {
    Handshake::ours(ih, [id; 20])
}

/// Sends a handshake for `ih` and reads the answer.
async fn greet(addr: SocketAddr, ih: [u8; 20], id: u8) -> (TcpStream, Handshake) {
    let mut s = raw(addr, &handshake(ih, id).encode()).await;
    let mut buf = [0u8; HANDSHAKE_LEN];
    tokio::time::timeout(WAIT, s.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    (s, Handshake::decode(&buf).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_bittorrent_peers_are_cut_off_and_a_flood_is_rejected() -> Result<()> {
    init_logs();
    let dir = tempfile::tempdir()?;
    let (root, meta) = make_content(dir.path());
    let seeder = node(dir.path(), "seeder", |c| c).await;
    let torrent = seeder.add_torrent(Arc::clone(&meta), root.clone()).await?;
    let addr = seeder.bt_addr().unwrap();
    let ih = bt_info_hash(meta.info().info_hash());
    let layout = Arc::new(Layout::new(meta.info()));

    // Not BitTorrent at all.
    let mut s = raw(addr, &[b'x'; HANDSHAKE_LEN]).await;
    assert!(
        until_closed(&mut s).await.is_empty(),
        "no answer to garbage"
    );
    // A torrent it does not have.
    let mut s = raw(addr, &handshake([7; 20], 1).encode()).await;
    assert!(until_closed(&mut s).await.is_empty());
    // A message far over the limit, after a good handshake.
    let (mut s, _) = greet(addr, ih, 2).await;
    s.write_all(&[0x00, 0x10, 0x00, 0x00, 7]).await?;
    until_closed(&mut s).await;
    // A bitfield of the wrong length.
    let (mut s, _) = greet(addr, ih, 3).await;
    let n = layout.num_pieces() as usize;
    let mut b = BytesMut::new();
    b.put_u32(1 + n.div_ceil(8) as u32 + 1);
    b.put_u8(5);
    b.put_bytes(0, n.div_ceil(8) + 1);
    s.write_all(&b).await?;
    until_closed(&mut s).await;
    // Bits set past the last piece.
    let (mut s, _) = greet(addr, ih, 4).await;
    let mut b = BytesMut::new();
    b.put_u32(1 + n.div_ceil(8) as u32);
    b.put_u8(5);
    b.put_bytes(0xff, n.div_ceil(8));
    s.write_all(&b).await?;
    if !n.is_multiple_of(8) {
        until_closed(&mut s).await;
    }

    // A flood of requests while choked: each one rejected at once (BEP 6),
    // the connection kept.
    let (mut s, theirs) = greet(addr, ih, 5).await;
    assert!(
        theirs.fast() && theirs.extended(),
        "sluice speaks BEP 6 and 10"
    );
    let mut codec = BtCodec::new(Arc::clone(&layout), true, &handshake(ih, 5));
    const FLOOD: u32 = 2000;
    let mut out = BytesMut::new();
    for i in 0..FLOOD {
        let spec = BlockSpec {
            piece: i % layout.num_pieces(),
            offset: 0,
            len: BLOCK_SIZE,
        };
        codec.encode(&Message::Request(spec), &mut out);
    }
    s.write_all(&out).await?;
    let mut rejects = 0;
    let mut buf = BytesMut::new();
    let mut other = Vec::new();
    let got = tokio::time::timeout(WAIT, async {
        while rejects < FLOOD {
            while let Some(m) = codec.decode(&mut buf).unwrap() {
                if let Inbound::Core(Message::Reject(_)) = m {
                    rejects += 1;
                } else {
                    other.push(m);
                }
            }
            if rejects == FLOOD {
                break;
            }
            if s.read_buf(&mut buf).await.unwrap() == 0 {
                panic!("closed after {rejects} rejects");
            }
        }
    })
    .await;
    assert!(
        got.is_ok(),
        "{rejects} of {FLOOD} rejected; also got {other:?}"
    );

    // An honest BitTorrent peer is served in full after all that.
    let leecher = node(dir.path(), "leecher", |c| c).await;
    let out_dir = dir.path().join("out");
    let lt = leecher
        .add_torrent(Arc::clone(&meta), out_dir.clone())
        .await?;
    leecher.add_bt_peer(meta.info().info_hash(), addr)?;
    until(&lt, "complete", |s| s.complete).await?;
    same_files(&meta, &root, &out_dir);
    let peers = torrent.stats().peers;
    assert!(
        peers.iter().all(|p| p.transport == Transport::Bt),
        "{peers:?}"
    );
    drop(s);
    stop([leecher, seeder]).await
}

/// A BitTorrent peer that has everything, unchokes everyone, and answers
/// every request with garbage of the right length.
async fn liar(listener: tokio::net::TcpListener, layout: Arc<Layout>) {
    while let Ok((mut s, _)) = listener.accept().await {
        let layout = Arc::clone(&layout);
        tokio::spawn(async move {
            let mut hs = [0u8; HANDSHAKE_LEN];
            if s.read_exact(&mut hs).await.is_err() {
                return;
            }
            let Ok(theirs) = Handshake::decode(&hs) else {
                return;
            };
            // Echoes the name it was asked by (a hybrid has two).
            let ours = handshake(theirs.info_hash, 0xbd);
            if s.write_all(&ours.encode()).await.is_err() {
                return;
            }
            let mut codec = BtCodec::new(layout, true, &theirs);
            let mut out = BytesMut::new();
            codec.encode(&Message::HaveAll, &mut out);
            codec.encode(&Message::Unchoke, &mut out);
            let mut buf = BytesMut::new();
            loop {
                if s.write_all(&out).await.is_err() {
                    return;
                }
                out.clear();
                match s.read_buf(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
                loop {
                    match codec.decode(&mut buf) {
                        Ok(Some(Inbound::Core(Message::Request(spec)))) => {
                            let data = vec![0xa5; spec.len as usize].into();
                            let piece = Message::Piece {
                                piece: spec.piece,
                                offset: spec.offset,
                                data,
                            };
                            codec.encode(&piece, &mut out);
                        }
                        Ok(Some(_)) => {}
                        Ok(None) => break,
                        Err(_) => return,
                    }
                }
            }
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bittorrent_liar_is_banned_and_a_libp2p_seeder_completes_the_download() -> Result<()> {
    init_logs();
    let dir = tempfile::tempdir()?;
    let (root, meta) = make_content(dir.path());
    let layout = Arc::new(Layout::new(meta.info()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let liar_addr = listener.local_addr()?;
    let liar = tokio::spawn(liar(listener, layout));

    let seeder = node(dir.path(), "seeder", |c| c.with_bt_listen(None)).await;
    seeder.add_torrent(Arc::clone(&meta), root.clone()).await?;
    let leecher = node(dir.path(), "leecher", |c| {
        c.with_torrent(TorrentConfig::default())
    })
    .await;
    let out_dir = dir.path().join("out");
    let t = leecher
        .add_torrent(Arc::clone(&meta), out_dir.clone())
        .await?;
    leecher.add_bt_peer(meta.info().info_hash(), liar_addr)?;
    // Alone with the liar, nothing verifies and it is soon banned.
    until(&t, "the liar banned", |s| s.banned_peers == 1).await?;
    assert_eq!(t.stats().verified_pieces, 0);
    leecher.dial(seeder.listen_addrs().await.remove(0)).await?;

    let s = until(&t, "complete", |s| s.complete).await?;
    assert!(s.hash_failures > 0, "the liar's blocks failed");
    assert_eq!(s.banned_peers, 1, "the liar is banned");
    assert!(
        s.peers.iter().all(|p| p.transport == Transport::Libp2p),
        "only the honest seeder is left: {:?}",
        s.peers
    );
    same_files(&meta, &root, &out_dir);
    liar.abort();
    stop([leecher, seeder]).await
}
