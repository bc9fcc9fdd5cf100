//! One test per picking rule, with a fixed seed; proptest invariants.

use proptest::prelude::*;
use rand::SeedableRng;
use rand::rngs::StdRng;
use sluice_storage::BLOCK_SIZE;

use super::*;

const B: u64 = BLOCK_SIZE as u64;

/// `pieces` pieces of 2 blocks each, in one file.
fn layout(pieces: u64) -> Layout {
    Layout::from_lengths(2 * BLOCK_SIZE, [pieces * 2 * B])
}

fn bits(n: usize, set: impl IntoIterator<Item = usize>) -> Bitfield {
    let mut b = Bitfield::repeat(false, n);
    for i in set {
        b.set(i, true);
    }
    b
}

fn all(n: usize) -> Bitfield {
    Bitfield::repeat(true, n)
}

fn rng() -> StdRng {
    StdRng::seed_from_u64(11)
}

fn picker(pieces: u64, random_first: u32) -> Picker {
    let l = layout(pieces);
    let have = l.empty_bitfield();
    Picker::new(
        l,
        have,
        PickerConfig::default().with_random_first(random_first),
    )
}

const P1: PeerKey = PeerKey(1);
const P2: PeerKey = PeerKey(2);
const P3: PeerKey = PeerKey(3);

#[test]
fn rarest_first_with_a_random_tie_break() {
    let mut p = picker(6, 0);
    p.peer_bitfield(P1, all(6)).unwrap();
    p.peer_bitfield(PeerKey(10), bits(6, [0, 1, 2, 3])).unwrap();
    p.peer_bitfield(PeerKey(11), bits(6, [0, 1])).unwrap();
    // Availability: 3 3 2 2 1 1 — pieces 4 and 5 are rarest.
    let mut r = rng();
    let first = p.next_request(P1, &mut r).unwrap().piece().get();
    assert!(first == 4 || first == 5);
    // Finish it, then the other rarest.
    p.next_request(P1, &mut r).unwrap();
    let next = p.next_request(P1, &mut r).unwrap().piece().get();
    assert_eq!(next, 9 - first);
    // The tie-break depends on the seed, not on index order.
    let firsts: std::collections::BTreeSet<u32> = (0..16)
        .map(|seed| {
            let mut p = picker(6, 0);
            p.peer_bitfield(P1, all(6)).unwrap();
            p.next_request(P1, &mut StdRng::seed_from_u64(seed))
                .unwrap()
                .piece()
                .get()
        })
        .collect();
    assert!(
        firsts.len() > 2,
        "ties always broken the same way: {firsts:?}"
    );
}

#[test]
fn random_pieces_first_until_four_are_held() {
    let n = 64;
    // Availability rises with the index: piece 0 is the rarest.
    let setup = || {
        let mut p = picker(n as u64, 4);
        for k in 0..n {
            p.peer_bitfield(PeerKey(100 + k as u64), bits(n, k..n))
                .unwrap();
        }
        p.peer_bitfield(P1, all(n)).unwrap();
        p
    };
    // The first pick ignores rarity: over many seeds it lands all over.
    let firsts: std::collections::BTreeSet<u32> = (0..40)
        .map(|seed| {
            let mut p = setup();
            p.next_request(P1, &mut StdRng::seed_from_u64(seed))
                .unwrap()
                .piece()
                .get()
        })
        .collect();
    assert!(firsts.len() > 20, "random-first picks cluster: {firsts:?}");

    let mut p = setup();
    let mut r = rng();
    for _ in 0..4 {
        let b = p.next_request(P1, &mut r).unwrap();
        p.block_received(P1, b);
        let b2 = p.next_request(P1, &mut r).unwrap();
        assert_eq!(b2.piece(), b.piece(), "finishing the piece");
        p.block_received(P1, b2);
        p.piece_verified(b.piece());
    }
    // Four held: now the rarest piece we lack.
    let rarest = (0..n as u32).find(|&i| !p.have[i as usize]).unwrap();
    assert_eq!(p.next_request(P1, &mut r).unwrap().piece().get(), rarest);
}

#[test]
fn partial_pieces_are_finished_before_new_ones_start() {
    let mut p = picker(4, 0);
    for peer in [P1, P2, P3] {
        p.peer_bitfield(peer, all(4)).unwrap();
    }
    let mut r = rng();
    let a = p.next_request(P1, &mut r).unwrap();
    // Another peer continues the same piece rather than starting a new one.
    let b = p.next_request(P2, &mut r).unwrap();
    assert_eq!(a.piece(), b.piece());
    assert_ne!(a, b);
    // The piece has no missing blocks left: the next request starts another.
    let c = p.next_request(P3, &mut r).unwrap();
    assert_ne!(c.piece(), a.piece());
}

#[test]
fn never_a_piece_the_peer_lacks_or_we_hold() {
    let l = layout(4);
    let have = bits(4, [1]);
    let mut p = Picker::new(l, have, PickerConfig::default());
    p.peer_bitfield(P1, bits(4, [1, 2])).unwrap();
    let mut r = rng();
    for _ in 0..2 {
        assert_eq!(p.next_request(P1, &mut r).unwrap().piece().get(), 2);
    }
    assert_eq!(
        p.next_request(P1, &mut r),
        None,
        "piece 1 is ours, 0 and 3 it lacks"
    );
}

#[test]
fn endgame_duplicates_outstanding_blocks_and_reports_cancels() {
    let mut p = picker(1, 0);
    p.peer_bitfield(P1, all(1)).unwrap();
    p.peer_bitfield(P2, all(1)).unwrap();
    let mut r = rng();
    let b0 = p.next_request(P1, &mut r).unwrap();
    assert!(!p.in_endgame());
    let b1 = p.next_request(P1, &mut r).unwrap();
    assert!(p.in_endgame(), "every missing block is requested");
    assert_eq!(
        p.next_request(P1, &mut r),
        None,
        "never twice from the same peer"
    );
    let d = p.next_request(P2, &mut r).unwrap();
    assert!(d == b0 || d == b1);
    assert_eq!(
        p.block_received(P2, d),
        Received::Accepted { cancel: vec![P1] }
    );
    // P1's request for that block is cancelled; its late copy is refused.
    assert_eq!(p.block_received(P1, d), Received::Unrequested);
    assert_eq!(p.outstanding(P1), 1);
    p.check_invariants().unwrap();
}

#[test]
fn a_departing_peer_returns_its_requests_at_once() {
    let mut p = picker(2, 0);
    p.peer_bitfield(P1, all(2)).unwrap();
    p.peer_bitfield(P2, all(2)).unwrap();
    let mut r = rng();
    let a = p.next_request(P1, &mut r).unwrap();
    let b = p.next_request(P1, &mut r).unwrap();
    let mut back = p.peer_gone(P1);
    back.sort();
    let mut want = vec![a, b];
    want.sort();
    assert_eq!(back, want);
    assert_eq!(p.availability(a.piece()), 1);
    // Another peer can have them now.
    let c = p.next_request(P2, &mut r).unwrap();
    assert!(want.contains(&c));
    p.check_invariants().unwrap();
}

#[test]
fn a_hash_failure_returns_the_piece_and_names_the_senders() {
    let mut p = picker(1, 0);
    for peer in [P1, P2, P3] {
        p.peer_bitfield(peer, all(1)).unwrap();
    }
    let mut r = rng();
    let a = p.next_request(P1, &mut r).unwrap();
    let b = p.next_request(P2, &mut r).unwrap();
    p.block_received(P1, a);
    p.block_received(P2, b);
    let mut senders = p.hash_failed(a.piece()).senders;
    senders.sort();
    let mut want = vec![(a.index(), P1), (b.index(), P2)];
    want.sort();
    assert_eq!(senders, want);
    assert!(!p.in_endgame());
    let again = p.next_request(P3, &mut r).unwrap();
    assert_eq!(again.piece(), a.piece());
    p.check_invariants().unwrap();
}

#[test]
fn repeated_haves_count_once_and_bad_bitfields_are_refused() {
    let mut p = picker(4, 0);
    let piece = p.layout().piece(2).unwrap();
    assert!(p.peer_have(P1, piece));
    for _ in 0..1000 {
        assert!(!p.peer_have(P1, piece));
    }
    assert_eq!(p.availability(piece), 1);
    assert!(p.wants_from(P1));
    assert_eq!(
        p.peer_bitfield(P2, bits(5, [])),
        Err(PickerError::BitfieldLength { got: 5, want: 4 })
    );
    p.peer_gone(P1);
    assert_eq!(p.availability(piece), 0);
    assert_eq!(
        p.next_request(P1, &mut rng()),
        None,
        "a departed peer gets nothing"
    );
    p.check_invariants().unwrap();
}

#[test]
fn a_piece_that_failed_with_several_senders_is_retried_by_one_peer() {
    let mut p = picker(1, 0);
    for peer in [P1, P2, P3] {
        p.peer_bitfield(peer, all(1)).unwrap();
    }
    let mut r = rng();
    let a = p.next_request(P1, &mut r).unwrap();
    let b = p.next_request(P2, &mut r).unwrap();
    p.block_received(P1, a);
    p.block_received(P2, b);
    p.hash_failed(a.piece());
    // The first to ask owns the retry; the others get none of it.
    let first = p.next_request(P3, &mut r).unwrap();
    assert_eq!(first.piece(), a.piece());
    assert_eq!(p.next_request(P1, &mut r), None);
    assert_eq!(p.next_request(P2, &mut r), None);
    assert!(
        p.next_request(P3, &mut r).is_some(),
        "the owner takes the rest"
    );
    // The owner leaves: the piece is open again.
    p.peer_gone(P3);
    assert!(p.next_request(P1, &mut r).is_some());
    p.check_invariants().unwrap();
}

#[test]
fn a_rejected_request_is_missing_again() {
    let mut p = picker(1, 0);
    p.peer_bitfield(P1, all(1)).unwrap();
    p.peer_bitfield(P2, all(1)).unwrap();
    let mut r = rng();
    let a = p.next_request(P1, &mut r).unwrap();
    p.request_failed(P1, a);
    assert_eq!(p.outstanding(P1), 0);
    assert_eq!(p.next_request(P2, &mut r), Some(a));
    assert_eq!(
        p.block_received(P1, a),
        Received::Unrequested,
        "not requested from P1 any more"
    );
}

#[test]
fn a_peer_that_refuses_a_piece_it_claimed_is_not_asked_for_it_again() {
    let mut p = picker(2, 0);
    p.peer_bitfield(P1, all(2)).unwrap();
    let mut r = rng();
    let a = p.next_request(P1, &mut r).unwrap();
    p.request_failed(P1, a);
    assert!(p.peer_lacks(P1, a.piece()));
    assert_eq!(p.availability(a.piece()), 0);
    assert!(!p.peer_lacks(P1, a.piece()), "once");
    // Only the other piece is left to ask P1 for.
    let b = p.next_request(P1, &mut r).unwrap();
    assert_ne!(b.piece(), a.piece());
    p.request_failed(P1, b);
    p.peer_lacks(P1, b.piece());
    assert!(!p.wants_from(P1), "nothing left we want from it");
    assert_eq!(p.next_request(P1, &mut r), None);
    // Announcing the piece again restores the claim.
    assert!(p.peer_have(P1, a.piece()));
    assert!(p.wants_from(P1));
    p.check_invariants().unwrap();
}

#[test]
fn a_lost_piece_is_fetched_again_like_any_missing_one() {
    let l = layout(3);
    let one = l.piece(1).unwrap();
    let mut have = l.empty_bitfield();
    have.set(1, true);
    let mut p = Picker::new(l, have, PickerConfig::default().with_random_first(0));
    p.peer_bitfield(P1, all(3)).unwrap();
    p.piece_lost(one);
    p.piece_lost(one);
    p.check_invariants().unwrap();
    let mut r = rng();
    let mut pieces = std::collections::BTreeSet::new();
    while let Some(b) = p.next_request(P1, &mut r) {
        pieces.insert(b.piece().get());
    }
    assert_eq!(pieces, [0, 1, 2].into(), "piece 1 is asked for again");
}

#[test]
fn a_block_lost_to_a_failed_write_is_the_only_one_asked_again() {
    let mut p = picker(1, 0);
    p.peer_bitfield(P1, all(1)).unwrap();
    let mut r = rng();
    let a = p.next_request(P1, &mut r).unwrap();
    let b = p.next_request(P1, &mut r).unwrap();
    assert!(matches!(p.block_received(P1, a), Received::Accepted { .. }));
    assert!(matches!(p.block_received(P1, b), Received::Accepted { .. }));
    p.block_lost(b);
    p.check_invariants().unwrap();
    assert_eq!(p.next_request(P1, &mut r), Some(b));
    assert_eq!(p.next_request(P1, &mut r), None, "a stays received");
}

#[test]
fn a_late_block_is_taken_while_still_wanted() {
    let mut p = picker(2, 0);
    p.peer_bitfield(P1, all(2)).unwrap();
    p.peer_bitfield(P2, all(2)).unwrap();
    let mut r = rng();
    // Timed out at P1, nobody else asked: taken, nothing to cancel.
    let a = p.next_request(P1, &mut r).unwrap();
    p.request_failed(P1, a);
    assert_eq!(p.late_block(P1, a), Received::Accepted { cancel: vec![] });
    p.check_invariants().unwrap();
    // Timed out at P1 and asked of P2 since: taken, P2 cancelled.
    let b = p.next_request(P1, &mut r).unwrap();
    p.request_failed(P1, b);
    assert_eq!(p.next_request(P2, &mut r), Some(b));
    assert_eq!(p.late_block(P1, b), Received::Accepted { cancel: vec![P2] });
    assert_eq!(p.outstanding(P2), 0);
    p.check_invariants().unwrap();
    // Already received: dropped.
    assert_eq!(p.late_block(P2, b), Received::Unrequested);
    // A piece we hold, or one not started: dropped.
    p.piece_verified(a.piece());
    assert_eq!(p.late_block(P2, a), Received::Unrequested);
    p.check_invariants().unwrap();
}

#[derive(Debug, Clone)]
enum Op {
    Join(u8, Vec<bool>),
    Request(u8),
    Receive(usize),
    Fail(usize),
    Leave(u8),
    Verify(usize),
    HashFail(usize),
}

fn op(pieces: usize) -> impl Strategy<Value = Op> {
    prop_oneof![
        1 => (0u8..5, proptest::collection::vec(any::<bool>(), pieces)).prop_map(|(p, b)| Op::Join(p, b)),
        6 => (0u8..5).prop_map(Op::Request),
        4 => any::<usize>().prop_map(Op::Receive),
        1 => any::<usize>().prop_map(Op::Fail),
        1 => (0u8..5).prop_map(Op::Leave),
        2 => any::<usize>().prop_map(Op::Verify),
        1 => any::<usize>().prop_map(Op::HashFail),
    ]
}

proptest! {
    /// Bookkeeping stays consistent; a block is never requested twice
    /// outside endgame; once every peer is gone nothing is left requested.
    #[test]
    fn picker_invariants(ops in proptest::collection::vec(op(6), 1..300), seed in any::<u64>()) {
        let n = 6usize;
        let mut p = picker(n as u64, 2);
        let mut r = StdRng::seed_from_u64(seed);
        let mut peers: HashMap<u8, Bitfield> = HashMap::new();
        let mut outstanding: Vec<(u8, BlockRef)> = Vec::new();
        let mut received: HashMap<PieceIndex, usize> = HashMap::new();
        for op in ops {
            match op {
                Op::Join(k, b) if !peers.contains_key(&k) => {
                    let bf: Bitfield = b.into_iter().collect();
                    p.peer_bitfield(PeerKey(k.into()), bf.clone()).unwrap();
                    peers.insert(k, bf);
                }
                Op::Request(k) => {
                    if let Some(has) = peers.get(&k) {
                        let endgame = p.in_endgame();
                        if let Some(b) = p.next_request(PeerKey(k.into()), &mut r) {
                            prop_assert!(has[b.piece().as_usize()], "requested a piece the peer lacks");
                            let dup = outstanding.iter().any(|&(_, o)| o == b);
                            prop_assert!(!dup || endgame, "{:?} requested twice outside endgame", b);
                            prop_assert!(!outstanding.contains(&(k, b)), "twice from one peer");
                            outstanding.push((k, b));
                        }
                    }
                }
                Op::Receive(i) if !outstanding.is_empty() => {
                    let (k, b) = outstanding.swap_remove(i % outstanding.len());
                    if let Received::Accepted { cancel } = p.block_received(PeerKey(k.into()), b) {
                        outstanding.retain(|&(o, ob)| !(ob == b && cancel.contains(&PeerKey(o.into()))));
                        *received.entry(b.piece()).or_default() += 1;
                    }
                }
                Op::Fail(i) if !outstanding.is_empty() => {
                    let (k, b) = outstanding.swap_remove(i % outstanding.len());
                    p.request_failed(PeerKey(k.into()), b);
                }
                Op::Leave(k) if peers.remove(&k).is_some() => {
                    p.peer_gone(PeerKey(k.into()));
                    outstanding.retain(|&(o, _)| o != k);
                }
                Op::Verify(i) => {
                    // Only a piece whose every block arrived can verify.
                    let piece = p.layout().piece((i % n) as u32).unwrap();
                    if received.get(&piece).copied() == Some(p.layout().blocks_in_piece(piece) as usize) {
                        p.piece_verified(piece);
                        received.remove(&piece);
                        outstanding.retain(|&(_, b)| b.piece() != piece);
                    }
                }
                Op::HashFail(i) => {
                    let piece = p.layout().piece((i % n) as u32).unwrap();
                    if received.get(&piece).copied() == Some(p.layout().blocks_in_piece(piece) as usize) {
                        p.hash_failed(piece);
                        received.remove(&piece);
                        outstanding.retain(|&(_, b)| b.piece() != piece);
                    }
                }
                _ => {}
            }
            p.check_invariants().map_err(TestCaseError::fail)?;
        }
        // Every requested block ends received or missing: once every peer
        // has gone, nothing is outstanding.
        for (k, _) in peers.drain() {
            p.peer_gone(PeerKey(k.into()));
        }
        p.check_invariants().map_err(TestCaseError::fail)?;
        for k in 0..5u8 {
            prop_assert_eq!(p.outstanding(PeerKey(k.into())), 0);
        }
    }
}
