//! The ceiling sluice's transfers are measured against: raw bytes through
//! one libp2p stream (TCP + Noise + Yamux, the same transport sluice uses)
//! between two swarms on 127.0.0.1, no framing, hashing or disk.
//!
//! `cargo run --release -p sluice-swarm --example stream_ceiling -- [MiB] [--hash]`
//! prints `MB/s`. `scripts/bench-transfer` runs it beside a real transfer.
//!
//! `--hash` adds the one piece of per-byte work no verifying transfer can
//! skip: both ends SHA-256 every 16 KiB block (the sender as verify on
//! read does, the receiver as BEP 52 leaf hashing does). That is the
//! ceiling for a transfer whose bytes are all checked, on the same cores.

#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)]

use std::time::Instant;

use futures::StreamExt;
use libp2p::identity::Keypair;
use libp2p::swarm::SwarmEvent;
use sluice_storage::BLOCK_SIZE;
use sluice_storage::merkle::leaf_hash;
use sluice_swarm::transport::{PIECES_PROTOCOL, TransportConfig, build_swarm};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::compat::FuturesAsyncReadCompatExt;

const BLOCK: usize = BLOCK_SIZE as usize;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let hash = args.iter().any(|a| a == "--hash");
    let mib: usize = args
        .iter()
        .find(|a| *a != "--hash")
        .map_or(1024, |s| s.parse().expect("MiB as a number"));
    let config = TransportConfig::default().with_mdns(false);
    let mut a = build_swarm(Keypair::generate_ed25519(), &config).unwrap();
    let mut b = build_swarm(Keypair::generate_ed25519(), &config).unwrap();
    a.listen_on("/ip4/127.0.0.1/tcp/0".parse().unwrap())
        .unwrap();
    let addr = loop {
        if let SwarmEvent::NewListenAddr { address, .. } = a.select_next_some().await {
            break address;
        }
    };
    let a_id = *a.local_peer_id();
    let mut incoming = a
        .behaviour()
        .stream
        .new_control()
        .accept(PIECES_PROTOCOL)
        .unwrap();
    let mut control = b.behaviour().stream.new_control();
    b.dial(addr.with(libp2p::multiaddr::Protocol::P2p(a_id)))
        .unwrap();
    tokio::spawn(async move {
        loop {
            a.select_next_some().await;
        }
    });
    tokio::spawn(async move {
        loop {
            b.select_next_some().await;
        }
    });
    let total = mib * 1024 * 1024;
    let receiver = tokio::spawn(async move {
        let (_, stream) = incoming.next().await.unwrap();
        let mut stream = stream.compat();
        let mut buf = vec![0u8; 256 * 1024];
        let mut got = 0;
        while got < total {
            let n = if hash {
                // Whole blocks, each hashed as it arrives.
                let n = BLOCK.min(total - got);
                stream.read_exact(&mut buf[..n]).await.unwrap();
                std::hint::black_box(leaf_hash(&buf[..n]));
                n
            } else {
                stream.read(&mut buf).await.unwrap()
            };
            assert!(n > 0, "stream ended early");
            got += n;
        }
        stream.write_all(b"k").await.unwrap();
        stream.flush().await.unwrap();
    });
    let mut stream = control
        .open_stream(a_id, PIECES_PROTOCOL)
        .await
        .unwrap()
        .compat();
    let chunk = vec![0x5au8; 64 * 1024];
    let started = Instant::now();
    let mut sent = 0;
    while sent < total {
        if hash {
            for block in chunk.chunks(BLOCK) {
                std::hint::black_box(leaf_hash(block));
            }
        }
        stream.write_all(&chunk).await.unwrap();
        sent += chunk.len();
    }
    stream.flush().await.unwrap();
    let mut ack = [0u8; 1];
    stream.read_exact(&mut ack).await.unwrap();
    let secs = started.elapsed().as_secs_f64();
    receiver.await.unwrap();
    println!(
        "{:.0} MB/s ({mib} MiB in {secs:.2} s, one libp2p stream{})",
        total as f64 / secs / 1e6,
        if hash { ", SHA-256 at both ends" } else { "" }
    );
}
