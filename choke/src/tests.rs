//! One test per choking rule, on a fake clock and a fixed seed.

use std::time::{Duration, Instant};

use proptest::prelude::*;
use rand::SeedableRng;
use rand::rngs::StdRng;

use crate::*;

const S: Duration = Duration::from_secs(1);

fn peer(key: u64, t0: Instant, down: f64) -> PeerSnapshot {
    // Connected long ago unless a test says otherwise, so the new-peer
    // weight does not interfere.
    let mut p = PeerSnapshot::new(PeerKey(key), t0 - 3600 * S);
    p.down_rate = down;
    p.up_rate = down;
    p.last_block_at = Some(t0);
    p
}

fn unchoked(ds: &[Decision]) -> Vec<u64> {
    let mut v: Vec<u64> = ds.iter().filter(|d| d.unchoke).map(|d| d.peer.0).collect();
    v.sort();
    v
}

fn regular(ds: &[Decision]) -> Vec<u64> {
    let mut v: Vec<u64> = ds
        .iter()
        .filter(|d| d.unchoke && !d.is_optimistic())
        .map(|d| d.peer.0)
        .collect();
    v.sort();
    v
}

fn optimistic(ds: &[Decision]) -> Option<u64> {
    ds.iter().find(|d| d.is_optimistic()).map(|d| d.peer.0)
}

fn rng() -> StdRng {
    StdRng::seed_from_u64(7)
}

#[test]
fn leeching_regular_slots_go_to_the_fastest_uploaders() {
    let t0 = Instant::now();
    let peers: Vec<_> = (1..=6).map(|k| peer(k, t0, k as f64 * 1000.0)).collect();
    let mut c = TitForTat::new(TitForTatConfig::default());
    let ds = c.rechoke(t0, Mode::Leeching, &peers, &mut rng());
    assert_eq!(regular(&ds), vec![4, 5, 6]);
    let best = ds.iter().find(|d| d.peer == PeerKey(6)).unwrap();
    assert_eq!(
        best.reason,
        Reason::RegularSlot {
            rank: 1,
            slots: 3,
            rate: 6000.0
        }
    );
    assert_eq!(best.reason.to_string(), "regular slot 1 of 3, 6 kB/s");
    let opt = optimistic(&ds).expect("an optimistic slot");
    assert!((1..=3).contains(&opt));
    assert_eq!(unchoked(&ds).len(), 4);
    let third = ds.iter().find(|d| d.peer == PeerKey(3)).unwrap();
    if !third.unchoke {
        assert_eq!(third.reason, Reason::SlotsFull { rank: 4 });
        assert_eq!(third.reason.to_string(), "rank 4, slots full");
    }
    assert_eq!(c.next_rechoke(), Some(t0 + 10 * S));
}

#[test]
fn ties_are_broken_by_the_seeded_rng() {
    let t0 = Instant::now();
    let peers: Vec<_> = (1..=8).map(|k| peer(k, t0, 500.0)).collect();
    let pick = |seed| {
        let mut c = TitForTat::new(TitForTatConfig::default());
        regular(&c.rechoke(t0, Mode::Leeching, &peers, &mut StdRng::seed_from_u64(seed)))
    };
    assert_eq!(pick(1), pick(1), "same seed, same choice");
    let distinct: std::collections::BTreeSet<_> = (0..20).map(pick).collect();
    assert!(
        distinct.len() > 1,
        "ties must not always favour the same peers"
    );
}

#[test]
fn the_optimistic_slot_rotates_every_third_rechoke() {
    let t0 = Instant::now();
    // Three fast peers fill the regular slots; five slow ones compete for
    // the optimistic slot.
    let mut peers: Vec<_> = (1..=8)
        .map(|k| peer(k, t0, if k > 5 { 9000.0 } else { 0.0 }))
        .collect();
    let mut c = TitForTat::new(TitForTatConfig::default());
    let mut r = rng();
    let mut opts = Vec::new();
    for i in 0..9 {
        let now = t0 + 10 * S * i;
        for p in &mut peers {
            p.last_block_at = Some(now);
        }
        let ds = c.rechoke(now, Mode::Leeching, &peers, &mut r);
        assert_eq!(regular(&ds), vec![6, 7, 8]);
        opts.push(optimistic(&ds).unwrap());
    }
    // Held for three rechokes, then drawn again (and a draw excludes the
    // current holder, so it changes).
    for chunk in opts.chunks(3) {
        assert!(chunk.iter().all(|&o| o == chunk[0]), "{opts:?}");
    }
    assert_ne!(opts[0], opts[3]);
    assert_ne!(opts[3], opts[6]);
}

#[test]
fn new_peers_are_three_times_as_likely_to_win_the_optimistic_slot() {
    let t0 = Instant::now();
    let mut r = rng();
    let (mut new_wins, mut old_wins) = (0, 0);
    for _ in 0..4000 {
        // No regular slots: every pick is the optimistic lottery.
        let mut c = TitForTat::new(TitForTatConfig::default().with_slots(1));
        let old = peer(1, t0, 0.0);
        let mut new = peer(2, t0, 0.0);
        new.connected_at = t0 - 10 * S;
        match optimistic(&c.rechoke(t0, Mode::Leeching, &[old, new], &mut r)) {
            Some(2) => new_wins += 1,
            Some(1) => old_wins += 1,
            other => panic!("no optimistic pick: {other:?}"),
        }
    }
    let ratio = f64::from(new_wins) / f64::from(old_wins);
    assert!(
        (2.6..3.4).contains(&ratio),
        "new:old = {new_wins}:{old_wins} = {ratio:.2}"
    );
}

#[test]
fn a_snubbing_peer_loses_its_regular_slot_until_it_sends_again() {
    let t0 = Instant::now();
    let mut peers: Vec<_> = (1..=5).map(|k| peer(k, t0, k as f64 * 1000.0)).collect();
    let cfg = TitForTatConfig::default().with_optimistic_every(1000);
    let mut c = TitForTat::new(cfg);
    let mut r = rng();
    assert_eq!(
        regular(&c.rechoke(t0, Mode::Leeching, &peers, &mut r)),
        vec![3, 4, 5]
    );
    // Peer 5 (the fastest by its old rate) stops sending; the rest keep on.
    for t in 1..=7 {
        let now = t0 + 10 * S * t;
        for p in peers.iter_mut().filter(|p| p.key != PeerKey(5)) {
            p.last_block_at = Some(now);
        }
        let ds = c.rechoke(now, Mode::Leeching, &peers, &mut r);
        let five = ds.iter().find(|d| d.peer == PeerKey(5)).unwrap();
        if t < 6 {
            assert!(five.unchoke, "not yet snubbed at {t}0 s");
        } else {
            assert_eq!(
                five.reason,
                Reason::Snubbed,
                "snubbed after 60 s of nothing"
            );
            assert!(!regular(&ds).contains(&5));
            assert_eq!(regular(&ds), vec![2, 3, 4]);
        }
    }
    // It sends a block: forgiven at the next rechoke.
    let now = t0 + 80 * S;
    peers[4].last_block_at = Some(now);
    let ds = c.rechoke(now, Mode::Leeching, &peers, &mut r);
    assert!(regular(&ds).contains(&5));
}

#[test]
fn a_peer_we_want_nothing_from_is_never_snubbed() {
    let t0 = Instant::now();
    let mut p = peer(1, t0, 100.0);
    p.we_are_interested = false;
    p.last_block_at = None;
    let mut c = TitForTat::new(TitForTatConfig::default());
    let mut r = rng();
    for t in 0..10 {
        let ds = c.rechoke(
            t0 + 10 * S * t,
            Mode::Leeching,
            std::slice::from_ref(&p),
            &mut r,
        );
        assert!(ds[0].unchoke, "{:?}", ds[0].reason);
    }
}

#[test]
fn seeding_slots_go_to_the_peers_we_upload_to_fastest() {
    let t0 = Instant::now();
    let peers: Vec<_> = (1..=6)
        .map(|k| {
            let mut p = peer(k, t0, 0.0);
            p.up_rate = (7 - k) as f64 * 1e6;
            p.last_block_at = None; // seeders receive nothing; no snubbing
            p
        })
        .collect();
    let mut c = TitForTat::new(TitForTatConfig::default());
    let mut r = rng();
    for t in 0..8 {
        let ds = c.rechoke(t0 + 10 * S * t, Mode::Seeding, &peers, &mut r);
        assert_eq!(regular(&ds), vec![1, 2, 3]);
        let d = ds.iter().find(|d| d.peer == PeerKey(1)).unwrap();
        assert_eq!(d.reason.to_string(), "seeding slot 1 of 3, 6.0 MB/s");
        assert_eq!(d.reason.code(), "seeding_slot");
    }
}

#[test]
fn round_robin_seeding_rotates_after_the_quota_or_the_time() {
    let t0 = Instant::now();
    let mut peers: Vec<_> = (1..=6).map(|k| peer(k, t0, 0.0)).collect();
    let cfg = TitForTatConfig::default()
        .with_slots(3)
        .with_optimistic_every(1000)
        .with_seed_mode(SeedMode::RoundRobin {
            quota: 1_000_000,
            max_time: 60 * S,
        });
    let mut c = TitForTat::new(cfg);
    let mut r = rng();
    let first = regular(&c.rechoke(t0, Mode::Seeding, &peers, &mut r));
    assert_eq!(first.len(), 2);
    // Under quota and time: they keep their turn.
    let again = regular(&c.rechoke(t0 + 10 * S, Mode::Seeding, &peers, &mut r));
    assert_eq!(again, first);
    // One of them receives its quota: it makes way for a peer that waited.
    let used = first[0];
    peers[used as usize - 1].uploaded += 1_000_000;
    let ds = c.rechoke(t0 + 20 * S, Mode::Seeding, &peers, &mut r);
    let now = regular(&ds);
    assert!(!now.contains(&used), "{used} used its quota: {now:?}");
    assert!(now.contains(&first[1]));
    let d = ds.iter().find(|d| d.peer == PeerKey(used)).unwrap();
    assert!(
        matches!(d.reason, Reason::SeedingTurnUsed { .. }) || d.is_optimistic(),
        "{d:?}"
    );
    // After 60 s, the other one rotates out too.
    let later = regular(&c.rechoke(t0 + 70 * S, Mode::Seeding, &peers, &mut r));
    assert!(!later.contains(&first[1]), "time limit: {later:?}");
}

#[test]
fn not_interested_peers_never_hold_a_slot() {
    let t0 = Instant::now();
    let mut peers: Vec<_> = (1..=3).map(|k| peer(k, t0, 1e6 * k as f64)).collect();
    peers[2].interested = false; // the fastest
    let mut c = TitForTat::new(TitForTatConfig::default());
    let mut r = rng();
    let ds = c.rechoke(t0, Mode::Leeching, &peers, &mut r);
    assert_eq!(ds[2].reason, Reason::NotInterested);
    assert!(!ds[2].unchoke);
    // Losing interest between rechokes gives up the slot at once.
    peers[1].interested = false;
    let ds = c.on_peers_changed(t0 + S, Mode::Leeching, &peers, &mut r);
    assert!(!ds[1].unchoke);
    assert_eq!(ds[1].reason.code(), "not_interested");
}

#[test]
fn a_newly_interested_peer_waits_unless_a_slot_is_empty() {
    let t0 = Instant::now();
    let mut peers: Vec<_> = (1..=5).map(|k| peer(k, t0, 1000.0 * k as f64)).collect();
    peers[4].interested = false;
    let mut c = TitForTat::new(TitForTatConfig::default());
    let mut r = rng();
    let ds = c.rechoke(t0, Mode::Leeching, &peers, &mut r);
    assert_eq!(unchoked(&ds).len(), 4, "4 interested peers fill 4 slots");
    // Peer 5 becomes interested: every slot is taken, so it waits.
    peers[4].interested = true;
    let ds = c.on_peers_changed(t0 + S, Mode::Leeching, &peers, &mut r);
    assert!(!ds[4].unchoke);
    assert_eq!(unchoked(&ds).len(), 4);
    // Peer 1 leaves: its slot is empty, filled at once.
    peers.remove(0);
    let ds = c.on_peers_changed(t0 + 2 * S, Mode::Leeching, &peers, &mut r);
    assert_eq!(unchoked(&ds), vec![2, 3, 4, 5]);
    // And with slots to spare, a newcomer is served at once.
    let mut c = TitForTat::new(TitForTatConfig::default());
    let ds = c.rechoke(t0, Mode::Leeching, &peers[..1], &mut r);
    assert_eq!(unchoked(&ds).len(), 1);
    let ds = c.on_peers_changed(t0 + S, Mode::Leeching, &peers[..2], &mut r);
    assert_eq!(unchoked(&ds).len(), 2);
}

#[test]
fn reasons_read_well_and_have_stable_codes() {
    let cases = [
        (
            Reason::RegularSlot {
                rank: 2,
                slots: 3,
                rate: 4.1e6,
            },
            "regular slot 2 of 3, 4.1 MB/s",
            "regular_slot",
        ),
        (Reason::Optimistic, "optimistic", "optimistic"),
        (Reason::Snubbed, "snubbed", "snubbed"),
        (Reason::NotInterested, "not interested", "not_interested"),
        (
            Reason::SlotsFull { rank: 7 },
            "rank 7, slots full",
            "slots_full",
        ),
        (
            Reason::ProportionalShare {
                share: 0.25,
                rate: 2e5,
            },
            "25% of upload for 200 kB/s",
            "proportional_share",
        ),
        (
            Reason::NoContribution,
            "gave nothing last round",
            "no_contribution",
        ),
        (
            Reason::NoReciprocation,
            "gave nothing back",
            "no_reciprocation",
        ),
    ];
    for (r, text, code) in cases {
        assert_eq!(r.to_string(), text);
        assert_eq!(r.code(), code);
    }
}

#[test]
fn propshare_splits_upload_in_proportion_to_what_peers_gave() {
    let t0 = Instant::now();
    let mut peers: Vec<_> = [3000.0, 1000.0, 0.0, 0.0]
        .iter()
        .enumerate()
        .map(|(i, &d)| peer(i as u64 + 1, t0, d))
        .collect();
    peers[3].interested = false;
    let mut c = PropShare::new(PropShareConfig::default());
    let ds = c.rechoke(t0, Mode::Leeching, &peers, &mut rng());
    assert!((ds[0].weight - 0.6).abs() < 1e-9, "{:?}", ds[0]);
    assert!((ds[1].weight - 0.2).abs() < 1e-9);
    assert!(
        ds[2].is_optimistic(),
        "the only non-contributor gets the optimistic share"
    );
    assert!((ds[2].weight - 0.2).abs() < 1e-9);
    assert_eq!(ds[3].reason, Reason::NotInterested);
    let total: f64 = ds.iter().map(|d| d.weight).sum();
    assert!((total - 1.0).abs() < 1e-9);
}

fn arb_peers() -> impl Strategy<Value = Vec<(bool, bool, u32, u32, u8)>> {
    // (interested, recently sent, down kB/s, up kB/s, connected minutes ago)
    proptest::collection::vec(
        (any::<bool>(), any::<bool>(), 0u32..100, 0u32..100, 0u8..5),
        0..25,
    )
}

fn snapshots(spec: &[(bool, bool, u32, u32, u8)], now: Instant) -> Vec<PeerSnapshot> {
    spec.iter()
        .enumerate()
        .map(|(i, &(interested, sent, down, up, age))| PeerSnapshot {
            key: PeerKey(i as u64),
            interested,
            we_are_interested: true,
            connected_at: now - 60 * S * u32::from(age),
            down_rate: f64::from(down) * 1000.0,
            up_rate: f64::from(up) * 1000.0,
            last_block_at: sent.then_some(now),
            uploaded: u64::from(up) * 10_000,
            // Hoarding peers take the same paths as unreciprocating ones.
            sole_pieces: if up % 3 == 0 { 8 } else { 0 },
            spread_pieces: u32::from(up % 3 == 1),
            first_sole_at: Some(now - 3600 * S),
        })
        .collect()
}

proptest! {
    /// Never more unchoked peers than slots; an optimistic slot whenever
    /// an interested, not regularly unchoked peer exists; never an
    /// uninterested peer in a slot; same inputs and seed, same decisions.
    #[test]
    fn choker_invariants(
        propshare in any::<bool>(),
        slots in 1u32..6,
        seeding in any::<bool>(),
        rounds in proptest::collection::vec(arb_peers(), 1..8),
        seed in any::<u64>(),
    ) {
        let t0 = Instant::now() + 3600 * S;
        let mode = if seeding { Mode::Seeding } else { Mode::Leeching };
        let run = || {
            let tft = TitForTatConfig::default().with_slots(slots);
            let mut c: Box<dyn Choker> = if propshare {
                Box::new(PropShare::new(PropShareConfig::default().with_tit_for_tat(tft)))
            } else {
                Box::new(TitForTat::new(tft))
            };
            let mut r = StdRng::seed_from_u64(seed);
            let mut all = Vec::new();
            for (i, spec) in rounds.iter().enumerate() {
                let now = t0 + 10 * S * i as u32;
                let peers = snapshots(spec, now);
                let ds = if i % 2 == 0 {
                    c.rechoke(now, mode, &peers, &mut r)
                } else {
                    c.on_peers_changed(now, mode, &peers, &mut r)
                };
                all.push((peers, ds));
            }
            all
        };
        let first = run();
        for (i, (peers, ds)) in first.iter().enumerate() {
            prop_assert_eq!(ds.len(), peers.len());
            let up = ds.iter().filter(|d| d.unchoke).count() as u32;
            prop_assert!(up <= slots, "{} unchoked, {} slots", up, slots);
            prop_assert!(ds.iter().filter(|d| d.is_optimistic()).count() <= 1);
            for (p, d) in peers.iter().zip(ds) {
                prop_assert_eq!(p.key, d.peer);
                prop_assert!(!d.unchoke || p.interested, "uninterested peer unchoked");
            }
            // Peers that gave nothing back wait for their turn.
            let eligible = peers
                .iter()
                .zip(ds)
                .any(|(p, d)| p.interested && !d.unchoke && d.reason != Reason::NoReciprocation)
                || ds.iter().any(|d| d.is_optimistic());
            if i % 2 == 0 && eligible {
                prop_assert!(ds.iter().any(|d| d.is_optimistic()), "no optimistic slot: {:?}", ds);
            }
        }
        let second = run();
        prop_assert_eq!(first, second);
    }
}

/// A peer that takes an optimistic turn and sends nothing back loses the
/// rest of the turn two rechokes in, gets no regular slot, and waits
/// while anyone else is choked; one block from it is forgiveness.
#[test]
fn a_peer_that_gives_nothing_back_loses_its_optimistic_turn() {
    let t0 = Instant::now();
    let ten = 10 * S;
    // Three fast contributors hold the regular slots; 4 and 5 are choked
    // and interested. 5 has never sent anything.
    let mut peers: Vec<PeerSnapshot> = (1..=4).map(|k| peer(k, t0, 1000.0 * k as f64)).collect();
    let mut free = peer(5, t0, 0.0);
    free.last_block_at = None;
    peers.push(free);
    // 4 is slower than 1..3 but not slow enough to matter here.
    peers[3].down_rate = 500.0;
    let mut c = TitForTat::new(TitForTatConfig::default());
    // Rechoke until 5 holds the optimistic slot.
    let mut t = t0;
    let mut guard = 0;
    loop {
        let ds = c.rechoke(t, Mode::Leeching, &peers, &mut rng());
        if optimistic(&ds) == Some(5) {
            break;
        }
        t += ten;
        guard += 1;
        assert!(guard < 50, "5 never got an optimistic turn");
    }
    let turn = t;
    // One rechoke later it keeps the turn (not yet two rechokes).
    t += ten;
    let ds = c.rechoke(t, Mode::Leeching, &peers, &mut rng());
    assert_eq!(optimistic(&ds), Some(5), "a turn is not cut short at once");
    // Two rechokes after the turn began, still nothing from 5: its turn
    // ends early, 4 gets the slot, and 5's reason says why.
    t = turn + 2 * ten;
    peers[3].last_block_at = Some(t);
    let ds = c.rechoke(t, Mode::Leeching, &peers, &mut rng());
    assert_eq!(optimistic(&ds), Some(4));
    let five = ds.iter().find(|d| d.peer == PeerKey(5)).unwrap();
    assert!(!five.unchoke);
    assert_eq!(five.reason, Reason::NoReciprocation);
    // Later rotations prefer anyone else while 5 stays silent...
    for _ in 0..6 {
        t += ten;
        // 4 keeps sending: it stays a fair pick.
        peers[3].last_block_at = Some(t);
        let ds = c.rechoke(t, Mode::Leeching, &peers, &mut rng());
        assert_ne!(optimistic(&ds), Some(5));
    }
    // ...and a block from it forgives it.
    peers[4].last_block_at = Some(t);
    peers[4].down_rate = 5000.0;
    t += ten;
    let ds = c.rechoke(t, Mode::Leeching, &peers, &mut rng());
    assert!(
        regular(&ds).contains(&5),
        "now the fastest: {:?}",
        regular(&ds)
    );
}

/// Least-served seeding: slots go to the peers we have sent the least,
/// whatever their speed.
#[test]
fn least_served_seeding_evens_out_bytes() {
    let t0 = Instant::now();
    let mut peers: Vec<PeerSnapshot> = (1..=5).map(|k| peer(k, t0, 0.0)).collect();
    for (i, p) in peers.iter_mut().enumerate() {
        // Peer 1 took the most and is the fastest taker now.
        p.uploaded = 1_000_000 - 100_000 * i as u64;
        p.up_rate = 1e6 / (i + 1) as f64;
    }
    let mut c = TitForTat::new(TitForTatConfig::default().with_seed_mode(SeedMode::LeastServed));
    let ds = c.rechoke(t0, Mode::Seeding, &peers, &mut rng());
    assert_eq!(regular(&ds), vec![3, 4, 5], "the three least served");
}

/// A seeder has nothing to reciprocate, so it watches what peers pass on:
/// one that received pieces only we had and passed none of them on ranks
/// after everyone else (even while least served), and when nobody else
/// wants a slot it gets one capped at one slot's share. Passing one piece
/// on clears it.
#[test]
fn a_seeder_holds_back_a_peer_that_passes_nothing_on() {
    let t0 = Instant::now();
    let ten = 10 * S;
    let config = TitForTatConfig::default()
        .with_slots(2)
        .with_seed_mode(SeedMode::LeastServed);
    let mut c = TitForTat::new(config);
    // 1 and 2 pass pieces on; 3 took the least and passed nothing on.
    let mut peers: Vec<PeerSnapshot> = (1..=3).map(|k| peer(k, t0, 0.0)).collect();
    for (i, p) in peers.iter_mut().enumerate() {
        // A seeder receives no blocks.
        p.last_block_at = None;
        p.uploaded = 1_000_000 - 400_000 * i as u64;
        p.sole_pieces = 8;
        p.spread_pieces = if i == 2 { 0 } else { 3 };
        p.first_sole_at = Some(t0);
    }
    // Too early to judge: least served first, so 3 holds the regular slot.
    let ds = c.rechoke(t0 + ten, Mode::Seeding, &peers, &mut rng());
    assert_eq!(regular(&ds), vec![3]);
    assert!(ds.iter().all(|d| d.cap.is_none()));
    // Two rechokes after the first sole piece: never a slot while 1 or 2
    // wants one.
    for r in 2..20 {
        let ds = c.rechoke(t0 + r * ten, Mode::Seeding, &peers, &mut rng());
        assert!(!unchoked(&ds).contains(&3), "round {r}: {ds:?}");
        let three = ds.iter().find(|d| d.peer == PeerKey(3)).unwrap();
        assert_eq!(three.reason, Reason::NoReciprocation);
    }
    // Alone, it is served, at one slot's share.
    peers[0].interested = false;
    peers[1].interested = false;
    let t = t0 + 20 * ten;
    let ds = c.rechoke(t, Mode::Seeding, &peers, &mut rng());
    let three = ds.iter().find(|d| d.peer == PeerKey(3)).unwrap();
    assert!(three.unchoke);
    assert_eq!(three.cap, Some(0.5));
    // Fewer sole pieces than the threshold is not enough to judge.
    let mut few = peers[2].clone();
    few.sole_pieces = 7;
    let ds = c.rechoke(t + ten, Mode::Seeding, &[few], &mut rng());
    assert_eq!(ds[0].cap, None);
    // One piece passed on clears it.
    peers[2].spread_pieces = 1;
    let ds = c.rechoke(t + 2 * ten, Mode::Seeding, &peers, &mut rng());
    let three = ds.iter().find(|d| d.peer == PeerKey(3)).unwrap();
    assert!(three.unchoke);
    assert_eq!(three.cap, None);
}

/// A peer that gave nothing back gets the optimistic slot, when it is the
/// only candidate, one rechoke in `slots × optimistic_every`: the slot
/// stays empty meanwhile (the regular slots take the upload).
#[test]
fn a_peer_that_gave_nothing_back_gets_a_rare_optimistic_turn() {
    let t0 = Instant::now();
    let config = TitForTatConfig::default()
        .with_slots(2)
        .with_optimistic_every(3);
    let mut c = TitForTat::new(config);
    let mut fast = peer(1, t0, 5000.0);
    // It passes pieces on: pieces do travel, so keeping them is telling.
    fast.spread_pieces = 1;
    let mut hoarder = peer(2, t0, 0.0);
    hoarder.last_block_at = None;
    hoarder.sole_pieces = 8;
    hoarder.first_sole_at = Some(t0 - 3600 * S);
    let mut peers = [fast, hoarder];
    let mut turns = Vec::new();
    for r in 0..24u32 {
        let now = t0 + r * 10 * S;
        // The fast peer keeps sending (no snub).
        peers[0].last_block_at = Some(now);
        let ds = c.rechoke(now, Mode::Leeching, &peers, &mut rng());
        assert_eq!(regular(&ds), vec![1], "rechoke {r}: {ds:?}");
        if optimistic(&ds) == Some(2) {
            turns.push(r);
        }
    }
    assert_eq!(turns, vec![0, 6, 12, 18], "one rechoke in 2 × 3");
}

/// While leeching, a peer judged not to reciprocate gets no regular slot,
/// even one nobody else wants, and stays judged when it no longer has
/// anything we want; a block from it clears it.
#[test]
fn a_judged_peer_stays_judged_until_it_sends_a_block() {
    let t0 = Instant::now();
    let ten = 10 * S;
    let config = TitForTatConfig::default().with_slots(4);
    let mut c = TitForTat::new(config);
    // 1 gives; 2 never does.
    let mut peers = vec![peer(1, t0, 5000.0), peer(2, t0, 0.0)];
    peers[1].last_block_at = None;
    // Both get slots at first (3 regular slots, 2 peers).
    let ds = c.rechoke(t0, Mode::Leeching, &peers, &mut rng());
    assert_eq!(unchoked(&ds), vec![1, 2]);
    // Two rechokes on, 2 has sent nothing: judged, no regular slot.
    for r in 1..=2 {
        peers[0].last_block_at = Some(t0 + r * ten);
        let ds = c.rechoke(t0 + r * ten, Mode::Leeching, &peers, &mut rng());
        if r == 2 {
            assert_eq!(regular(&ds), vec![1], "{ds:?}");
        }
    }
    // Now we want nothing of 2's: still judged.
    peers[1].we_are_interested = false;
    for r in 3..6 {
        peers[0].last_block_at = Some(t0 + r * ten);
        let ds = c.rechoke(t0 + r * ten, Mode::Leeching, &peers, &mut rng());
        assert_eq!(regular(&ds), vec![1], "round {r}: {ds:?}");
        let two = ds.iter().find(|d| d.peer == PeerKey(2)).unwrap();
        assert!(!two.unchoke || two.is_optimistic());
    }
    // A block from 2 clears it.
    peers[1].last_block_at = Some(t0 + 6 * ten);
    peers[0].last_block_at = Some(t0 + 6 * ten);
    let ds = c.rechoke(t0 + 6 * ten, Mode::Leeching, &peers, &mut rng());
    assert_eq!(regular(&ds), vec![1, 2]);
}

/// A lone downloader, or downloaders that cannot reach each other, have
/// nobody to pass pieces to: keeping them is not held against anyone.
#[test]
fn nobody_is_a_hoarder_when_no_peer_passes_pieces_on() {
    let t0 = Instant::now();
    let config = TitForTatConfig::default()
        .with_slots(2)
        .with_seed_mode(SeedMode::LeastServed);
    let mut c = TitForTat::new(config);
    let mut peers: Vec<PeerSnapshot> = (1..=2).map(|k| peer(k, t0, 0.0)).collect();
    for p in &mut peers {
        p.last_block_at = None;
        p.sole_pieces = 50;
        p.first_sole_at = Some(t0 - 3600 * S);
    }
    let ds = c.rechoke(t0, Mode::Seeding, &peers, &mut rng());
    assert_eq!(unchoked(&ds), vec![1, 2]);
    assert!(ds.iter().all(|d| d.cap.is_none()), "{ds:?}");
    // Once one of them passes a piece on, the other is judged.
    peers[0].spread_pieces = 1;
    let ds = c.rechoke(t0 + 10 * S, Mode::Seeding, &peers, &mut rng());
    let two = ds.iter().find(|d| d.peer == PeerKey(2)).unwrap();
    assert_eq!(two.cap, Some(0.5), "{ds:?}");
}
