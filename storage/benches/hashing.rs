//! `cargo bench -p sluice-storage`: leaf hashing, merkle roots, and
//! `create` on a real file with one thread and with every core.
//! (`scripts/bench-create` compares `sluice create` with openssl.)

#![allow(missing_docs, clippy::unwrap_used)]

use std::sync::atomic::AtomicU64;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sluice_storage::merkle::{FileTree, leaf_hash};
use sluice_storage::{BLOCK_SIZE, CreateOptions, create, default_threads};

fn leaves(c: &mut Criterion) {
    let block = vec![0x5au8; BLOCK_SIZE as usize];
    let mut g = c.benchmark_group("leaf");
    g.throughput(Throughput::Bytes(u64::from(BLOCK_SIZE)));
    g.bench_function("sha256_16KiB", |b| {
        b.iter(|| leaf_hash(std::hint::black_box(&block)))
    });
    g.finish();

    // Interior hashing of a 4 MiB piece (256 leaves): the per-piece cost on
    // top of leaf hashing.
    let tree = FileTree::new(1 << 30, 4 << 20);
    let hashes: Vec<_> = (0..256u32).map(|i| leaf_hash(&i.to_le_bytes())).collect();
    c.bench_function("piece_root_256_leaves", |b| {
        b.iter(|| tree.piece_hash(&hashes))
    });
}

fn create_file(c: &mut Criterion) {
    const SIZE: usize = 128 << 20;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bench.bin");
    let data: Vec<u8> = (0..SIZE)
        .map(|i| (i as u64).wrapping_mul(0x9E37_79B9) as u8)
        .collect();
    std::fs::write(&path, data).unwrap();
    let mut g = c.benchmark_group("create_128MiB");
    g.sample_size(10);
    g.throughput(Throughput::Bytes(SIZE as u64));
    for threads in [1, default_threads()] {
        let opts = CreateOptions::default()
            .with_threads(threads)
            .with_piece_length(Some(1 << 20));
        g.bench_function(format!("{threads}_threads"), |b| {
            b.iter(|| create(&path, &opts, &AtomicU64::new(0)).unwrap())
        });
    }
    g.finish();
}

criterion_group!(benches, leaves, create_file);
criterion_main!(benches);
