//! `cargo bench -p sluice-swarm --bench picker`: the piece picker with
//! 10,000 pieces and 200 peers.

#![allow(missing_docs, clippy::unwrap_used)]

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sluice_choke::PeerKey;
use sluice_storage::{BLOCK_SIZE, Bitfield, Layout};
use sluice_swarm::{Picker, PickerConfig, Received};

const PIECES: usize = 10_000;
const PEERS: u64 = 200;
const BLOCKS_PER_PIECE: u32 = 4;

fn setup() -> Picker {
    let piece = BLOCKS_PER_PIECE * BLOCK_SIZE;
    let layout = Layout::from_lengths(piece, [PIECES as u64 * u64::from(piece)]);
    let mut r = StdRng::seed_from_u64(1);
    // Start past random-first, so rarest-first scans run.
    let mut have = layout.empty_bitfield();
    for i in 0..4 {
        have.set(i, true);
    }
    let mut picker = Picker::new(layout, have, PickerConfig::default());
    for peer in 0..PEERS {
        let bits: Bitfield = (0..PIECES).map(|_| r.gen_bool(0.5)).collect();
        picker.peer_bitfield(PeerKey(peer), bits).unwrap();
    }
    picker
}

fn bench(c: &mut Criterion) {
    let picker = setup();
    let mut g = c.benchmark_group("picker_10k_pieces_200_peers");

    // Worst case: no partial piece, so a rarest-first scan of every piece.
    g.bench_function("new_piece_scan", |b| {
        let mut r = StdRng::seed_from_u64(2);
        b.iter_batched(
            || picker.clone(),
            // Return the picker so dropping it is not timed.
            |mut p| {
                let b = p.next_request(PeerKey(0), &mut r).unwrap();
                (p, b)
            },
            BatchSize::LargeInput,
        )
    });

    // A whole download: peers take turns requesting; blocks arrive at once.
    let blocks = (PIECES as u64 - 4) * u64::from(BLOCKS_PER_PIECE);
    g.throughput(Throughput::Elements(blocks));
    g.sample_size(10);
    g.bench_function("whole_download_per_block", |b| {
        b.iter_batched(
            || picker.clone(),
            |mut p| {
                let mut r = StdRng::seed_from_u64(3);
                let mut done = 0u64;
                let mut arrived = vec![0u32; PIECES];
                let mut idle = 0;
                let mut k = 0usize;
                while idle < PEERS {
                    let peer = PeerKey((k % PEERS as usize) as u64);
                    k += 1;
                    match p.next_request(peer, &mut r) {
                        Some(block) => {
                            idle = 0;
                            assert!(matches!(
                                p.block_received(peer, block),
                                Received::Accepted { .. }
                            ));
                            done += 1;
                            let n = &mut arrived[block.piece().as_usize()];
                            *n += 1;
                            if *n == BLOCKS_PER_PIECE {
                                p.piece_verified(block.piece());
                            }
                        }
                        None => idle += 1,
                    }
                }
                done
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
