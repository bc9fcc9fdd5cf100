//! The slow-disk figures: one fast seeder, a leecher whose disk writes at
//! `--disk-rate` with a `--disk-queue` bound, and a fast-disk leecher of the
//! same seeder at the same time. Samples the slow leecher's queued +
//! outstanding bytes every 5 ms and prints the peak, both throughputs and
//! the time requesting was held back.
//!
//! `cargo run --release -p sluice-node --example slow_disk -- [MiB] [disk MB/s] [queue MiB]`
//! (defaults 256, 20, 16).

#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use sluice_node::{Node, NodeConfig};
use sluice_storage::{CreateOptions, create};

#[tokio::main]
async fn main() {
    let arg = |i: usize, default: u64| {
        std::env::args()
            .nth(i)
            .map_or(default, |s| s.parse().expect("a number"))
    };
    let (mib, rate_mb, queue_mib) = (arg(1, 256), arg(2, 20), arg(3, 16));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("data.bin");
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let data: Vec<u8> = (0..mib * 1024 * 1024)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    std::fs::write(&file, &data).unwrap();
    drop(data);
    let meta = Arc::new(create(&file, &CreateOptions::default(), &AtomicU64::new(0)).unwrap());
    let cfg = |name: &str| NodeConfig::new(dir.path().join(name)).with_mdns(false);
    let seeder = Node::start(cfg("seeder")).await.unwrap();
    seeder
        .add_torrent(Arc::clone(&meta), file.clone())
        .await
        .unwrap();
    let addr = seeder.listen_addrs().await.remove(0);
    let cap = queue_mib * 1024 * 1024;
    let slow = Node::start(
        cfg("slow")
            .with_disk_queue(cap)
            .with_disk_rate(Some(rate_mb * 1_000_000)),
    )
    .await
    .unwrap();
    let fast = Node::start(cfg("fast")).await.unwrap();
    let ts = slow
        .add_torrent(Arc::clone(&meta), dir.path().join("slow.bin"))
        .await
        .unwrap();
    let tf = fast
        .add_torrent(Arc::clone(&meta), dir.path().join("fast.bin"))
        .await
        .unwrap();
    let started = Instant::now();
    slow.dial(addr.clone()).await.unwrap();
    fast.dial(addr).await.unwrap();
    let (mut peak, mut samples, mut fast_done) = (0u64, 0u64, None);
    let mut tick = tokio::time::interval(Duration::from_millis(5));
    while !ts.stats().complete {
        tick.tick().await;
        let q = slow.queue().stats();
        peak = peak.max(q.queued_bytes + q.reserved_bytes);
        samples += 1;
        if fast_done.is_none() && tf.stats().complete {
            fast_done = Some(started.elapsed());
        }
    }
    let slow_secs = started.elapsed().as_secs_f64();
    let size = meta.info().total_size() as f64;
    let fast_secs = fast_done.map_or(slow_secs, |d| d.as_secs_f64());
    let q = slow.queue().stats();
    println!("file {mib} MiB; slow leecher: --disk-rate {rate_mb}MB/s --disk-queue {queue_mib}MiB");
    println!(
        "slow leecher: {:.1} MB/s ({:+.1}% of the disk rate), peak queued+outstanding {:.2} MiB of {queue_mib} MiB over {samples} samples, throttled {:.1} s",
        size / slow_secs / 1e6,
        (size / slow_secs / 1e6 / rate_mb as f64 - 1.0) * 100.0,
        peak as f64 / 1048576.0,
        q.throttled_total.as_secs_f64(),
    );
    println!("fast leecher beside it: {:.1} MB/s", size / fast_secs / 1e6);
    assert!(peak <= cap, "bound broken");
    for n in [slow, fast, seeder] {
        n.shutdown().await.unwrap();
    }
}
