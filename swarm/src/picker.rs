//! The piece picker: which block to ask a peer for next.
//!
//! A sans-IO core. Inputs: peers' bitfields and `have`s, block arrivals,
//! failed requests (reject, cancel, timeout), departures, verification
//! results, and a seeded RNG. Output: the next [`BlockRef`] to request from
//! a given peer, and which duplicate requests to cancel.
//!
//! Rules, in order:
//! 1. Finish partial pieces first (the one with the fewest blocks left).
//! 2. Until `random_first` pieces are held, start a random piece (so a
//!    newcomer quickly has something to trade); then the rarest piece, ties
//!    broken at random.
//! 3. Never request a piece the peer lacks or we already verified; never a
//!    block twice — except in endgame.
//! 4. Endgame: once every missing block has been requested, ask other peers
//!    for the outstanding ones too (at most `endgame_max_requesters` per
//!    block); when one arrives, the rest are reported for cancelling.
//!
//! Why it lives in `swarm` and not in `choke`: it is built on storage's
//! validated [`Layout`]/[`PieceIndex`]/[`BlockRef`] types and is driven
//! only by the swarm's sessions, while `choke` stays free of storage.
//!
//! Block states (see `docs/STATE.md`): missing → requested from {peers} →
//! received (from one peer) → verified with its piece. A failed request,
//! a departed peer or a hash failure send blocks back to missing.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use rand::{Rng, RngCore};
use sluice_choke::PeerKey;
use sluice_storage::{Bitfield, BlockRef, Layout, PieceIndex};

/// Picker settings.
#[derive(Debug, Clone)]
pub struct PickerConfig {
    random_first: u32,
    endgame_max_requesters: usize,
}

impl Default for PickerConfig {
    fn default() -> Self {
        Self {
            random_first: 4,
            endgame_max_requesters: 3,
        }
    }
}

impl PickerConfig {
    /// Pieces picked at random before rarest-first takes over. Default 4.
    pub fn with_random_first(mut self, n: u32) -> Self {
        self.random_first = n;
        self
    }

    /// Most peers one block is requested from in endgame. Default 3.
    pub fn with_endgame_max_requesters(mut self, n: usize) -> Self {
        self.endgame_max_requesters = n.max(1);
        self
    }

    pub fn endgame_max_requesters(&self) -> usize {
        self.endgame_max_requesters
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum BlockState {
    Missing,
    /// Requested from these peers (more than one only in endgame).
    Requested(Vec<PeerKey>),
    Received(PeerKey),
}

#[derive(Debug, Clone)]
struct Progress {
    blocks: Vec<BlockState>,
    missing: u32,
    /// The piece failed its hash check with blocks from several peers:
    /// its retry goes to one peer (`owner`, the first to ask) so the
    /// next outcome says who was at fault.
    retry: bool,
    owner: Option<PeerKey>,
}

impl Progress {
    /// Whether `peer` may take blocks of this piece.
    /// An owner with nothing of the piece outstanding (it delivered and
    /// then choked us, say) holds it no longer.
    fn open_to(&self, peer: PeerKey) -> bool {
        !self.retry
            || self.owner.is_none_or(|o| {
                o == peer
                    || !self
                        .blocks
                        .iter()
                        .any(|b| matches!(b, BlockState::Requested(ps) if ps.contains(&o)))
            })
    }
}

#[derive(Debug, Clone)]
struct PeerPieces {
    bits: Bitfield,
    lacking: u32,
    /// Of those, the ones not started (candidates): with none, the
    /// candidate buckets need not be searched for this peer.
    startable: u32,
}

/// A peer's announcement the picker cannot use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PickerError {
    #[error("bitfield of {got} bits for a torrent of {want} pieces")]
    BitfieldLength { got: usize, want: usize },
}

/// What [`Picker::block_received`] made of an arriving block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Received {
    /// Expected. Cancel the same block at these peers (endgame duplicates).
    Accepted { cancel: Vec<PeerKey> },
    /// Not requested from this peer (or no longer): drop it.
    Unrequested,
}

/// What [`Picker::hash_failed`] made of a failed piece.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FailedPiece {
    /// Who sent each received block: (block index, sender).
    pub senders: Vec<(u32, PeerKey)>,
    /// Requests of its blocks that were still out: they end here.
    pub dropped: Vec<(PeerKey, BlockRef)>,
}

/// The piece picker for one torrent.
#[derive(Debug, Clone)]
pub struct Picker {
    layout: Layout,
    config: PickerConfig,
    have: Bitfield,
    have_count: u32,
    availability: Vec<u32>,
    /// Pieces with at least one block requested or received.
    progress: BTreeMap<PieceIndex, Progress>,
    /// Of those, the ones with a missing block, fewest missing first: the
    /// partial piece to finish is the first here the peer has (an index
    /// over `progress`, kept by [`reindex`]).
    open: BTreeSet<(u32, PieceIndex)>,
    /// Pieces we could start (not held, not in progress) by availability.
    candidates: Candidates,
    /// What each peer has announced (one bit per piece), and how many of
    /// those pieces we lack (so interest is O(1) to answer).
    peers: HashMap<PeerKey, PeerPieces>,
    /// Blocks in the missing state, over all pieces not verified.
    missing_blocks: u64,
}

impl Picker {
    /// A picker for `layout`, holding the verified pieces in `have`.
    pub fn new(layout: Layout, have: Bitfield, config: PickerConfig) -> Self {
        let missing_blocks = layout
            .pieces()
            .filter(|p| !have[p.as_usize()])
            .map(|p| u64::from(layout.blocks_in_piece(p)))
            .sum();
        let n = layout.num_pieces() as usize;
        let mut candidates = Candidates::new(n);
        for i in have.iter_zeros().take(n) {
            candidates.insert(i as u32, 0);
        }
        Self {
            have_count: have.count_ones() as u32,
            availability: vec![0; n],
            candidates,
            progress: BTreeMap::new(),
            open: BTreeSet::new(),
            peers: HashMap::new(),
            layout,
            config,
            have,
            missing_blocks,
        }
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Whether every missing block is already requested (and we are not
    /// done): duplicates are allowed now.
    pub fn in_endgame(&self) -> bool {
        self.missing_blocks == 0 && self.have_count < self.layout.num_pieces()
    }

    /// The pieces verified, as this picker knows them.
    pub fn have(&self) -> &Bitfield {
        &self.have
    }

    pub fn is_complete(&self) -> bool {
        self.have_count == self.layout.num_pieces()
    }

    /// How many connected peers have `piece`.
    pub fn availability(&self, piece: PieceIndex) -> u32 {
        self.availability[piece.as_usize()]
    }

    /// Blocks currently requested from `peer` (a scan of the pieces in
    /// progress: for tests and invariants; the torrent core keeps each
    /// peer's requests with their credits).
    pub fn outstanding(&self, peer: PeerKey) -> usize {
        self.requested_from(peer).len()
    }

    /// The blocks requested from `peer`, in block order.
    pub fn requested_from(&self, peer: PeerKey) -> Vec<BlockRef> {
        let mut blocks = Vec::new();
        for (&piece, prog) in &self.progress {
            for (i, state) in prog.blocks.iter().enumerate() {
                if matches!(state, BlockState::Requested(ps) if ps.contains(&peer)) {
                    blocks.push(
                        self.layout
                            .block(piece, i as u32)
                            .expect("index from the piece"),
                    );
                }
            }
        }
        blocks
    }

    /// Every peer the picker knows of: it announced pieces or has blocks
    /// requested (a scan, for invariants).
    pub fn known_peers(&self) -> std::collections::BTreeSet<PeerKey> {
        let mut out: std::collections::BTreeSet<PeerKey> = self.peers.keys().copied().collect();
        for prog in self.progress.values() {
            for state in &prog.blocks {
                if let BlockState::Requested(ps) = state {
                    out.extend(ps.iter().copied());
                }
            }
        }
        out
    }

    /// Whether `block` is requested from `peer` now.
    pub fn is_requested_from(&self, peer: PeerKey, block: BlockRef) -> bool {
        matches!(
            self.progress.get(&block.piece()).map(|p| &p.blocks[block.index() as usize]),
            Some(BlockState::Requested(ps)) if ps.contains(&peer)
        )
    }

    /// A peer's bitfield arrived (`have_all`/`have_none` are full and
    /// empty ones). A second bitfield replaces the first.
    pub fn peer_bitfield(&mut self, peer: PeerKey, bits: Bitfield) -> Result<(), PickerError> {
        if bits.len() != self.availability.len() {
            return Err(PickerError::BitfieldLength {
                got: bits.len(),
                want: self.availability.len(),
            });
        }
        if let Some(old) = self.peers.remove(&peer) {
            self.count(&old.bits, false);
        }
        self.count(&bits, true);
        let lacking = bits.iter_ones().filter(|&i| !self.have[i]).count() as u32;
        let startable = bits
            .iter_ones()
            .filter(|&i| self.candidates.contains(i))
            .count() as u32;
        self.peers.insert(
            peer,
            PeerPieces {
                bits,
                lacking,
                startable,
            },
        );
        Ok(())
    }

    /// A peer announced a piece. Returns whether that was news (a repeated
    /// `have` changes nothing). A peer without a bitfield starts from
    /// `have_none`.
    pub fn peer_have(&mut self, peer: PeerKey, piece: PieceIndex) -> bool {
        let n = self.availability.len();
        let entry = self.peers.entry(peer).or_insert_with(|| PeerPieces {
            bits: Bitfield::repeat(false, n),
            lacking: 0,
            startable: 0,
        });
        let i = piece.as_usize();
        if entry.bits[i] {
            return false;
        }
        entry.bits.set(i, true);
        if !self.have[i] {
            entry.lacking += 1;
        }
        if self.candidates.contains(i) {
            entry.startable += 1;
        }
        self.availability[i] += 1;
        self.candidates
            .set_availability(i as u32, self.availability[i]);
        true
    }

    /// `peer` refused a block of `piece` while it had us unchoked: it does
    /// not have the piece, whatever it announced. Its claim is withdrawn
    /// until it announces the piece again. Returns whether it had claimed
    /// it.
    pub fn peer_lacks(&mut self, peer: PeerKey, piece: PieceIndex) -> bool {
        let i = piece.as_usize();
        let Some(entry) = self.peers.get_mut(&peer).filter(|e| e.bits[i]) else {
            return false;
        };
        entry.bits.set(i, false);
        if !self.have[i] {
            entry.lacking -= 1;
        }
        if self.candidates.contains(i) {
            entry.startable -= 1;
        }
        self.availability[i] -= 1;
        self.candidates
            .set_availability(i as u32, self.availability[i]);
        true
    }

    /// A block written earlier could not be (a full disk): it is missing
    /// again, the rest of its piece stays as it is.
    pub fn block_lost(&mut self, block: BlockRef) {
        let Some(progress) = self.progress.get_mut(&block.piece()) else {
            return;
        };
        let state = &mut progress.blocks[block.index() as usize];
        if matches!(state, BlockState::Received(_)) {
            *state = BlockState::Missing;
            reindex(
                &mut self.open,
                block.piece(),
                progress.missing,
                progress.missing + 1,
            );
            progress.missing += 1;
            self.missing_blocks += 1;
        }
    }

    /// The pieces `peer` has announced.
    pub fn peer_has(&self, peer: PeerKey) -> Option<&Bitfield> {
        self.peers.get(&peer).map(|p| &p.bits)
    }

    /// Whether `peer` has a piece we lack (then we are interested).
    pub fn wants_from(&self, peer: PeerKey) -> bool {
        self.peers.get(&peer).is_some_and(|p| p.lacking > 0)
    }

    /// A peer left: its pieces no longer count and its requests go back to
    /// missing at once. Returns those requests (their credits can go).
    pub fn peer_gone(&mut self, peer: PeerKey) -> Vec<BlockRef> {
        if let Some(old) = self.peers.remove(&peer) {
            self.count(&old.bits, false);
        }
        let blocks = self.requested_from(peer);
        for &b in &blocks {
            self.drop_requester(peer, b);
        }
        for prog in self.progress.values_mut() {
            if prog.owner == Some(peer) {
                prog.owner = None;
            }
        }
        blocks
    }

    /// Adds (or removes) one peer's pieces to (from) the availability.
    fn count(&mut self, bits: &Bitfield, add: bool) {
        for i in bits.iter_ones() {
            let a = &mut self.availability[i];
            *a = if add { *a + 1 } else { a.saturating_sub(1) };
            self.candidates.set_availability(i as u32, *a);
        }
    }

    fn drop_requester(&mut self, peer: PeerKey, block: BlockRef) {
        let Some(progress) = self.progress.get_mut(&block.piece()) else {
            return;
        };
        if progress.owner == Some(peer) {
            // The owner is not delivering: let another peer retry it.
            progress.owner = None;
        }
        let state = &mut progress.blocks[block.index() as usize];
        if let BlockState::Requested(peers) = state {
            peers.retain(|&p| p != peer);
            if peers.is_empty() {
                *state = BlockState::Missing;
                reindex(
                    &mut self.open,
                    block.piece(),
                    progress.missing,
                    progress.missing + 1,
                );
                progress.missing += 1;
                self.missing_blocks += 1;
            }
        }
    }

    /// A request ended without data (rejected, cancelled, timed out): the
    /// block is missing again unless another peer still has it requested.
    pub fn request_failed(&mut self, peer: PeerKey, block: BlockRef) {
        if self.is_requested_from(peer, block) {
            self.drop_requester(peer, block);
        }
    }

    /// A block arrived from `peer` after its request ended (it timed out
    /// or was cancelled while the data was on the way). Still wanted — its
    /// piece in progress and the block not yet received — it is taken
    /// like any block: bandwidth already spent is not thrown away. Other
    /// peers it is requested from are returned to be cancelled.
    pub fn late_block(&mut self, peer: PeerKey, block: BlockRef) -> Received {
        if self.have[block.piece().as_usize()] {
            return Received::Unrequested;
        }
        let Some(progress) = self.progress.get_mut(&block.piece()) else {
            return Received::Unrequested;
        };
        let state = &mut progress.blocks[block.index() as usize];
        let cancel = match state {
            BlockState::Received(_) => return Received::Unrequested,
            BlockState::Missing => {
                reindex(
                    &mut self.open,
                    block.piece(),
                    progress.missing,
                    progress.missing - 1,
                );
                progress.missing -= 1;
                self.missing_blocks -= 1;
                Vec::new()
            }
            BlockState::Requested(peers) => std::mem::take(peers),
        };
        *state = BlockState::Received(peer);
        Received::Accepted { cancel }
    }

    /// A block arrived from `peer`.
    pub fn block_received(&mut self, peer: PeerKey, block: BlockRef) -> Received {
        if !self.is_requested_from(peer, block) {
            return Received::Unrequested;
        }
        let progress = self
            .progress
            .get_mut(&block.piece())
            .expect("a requested block's piece is in progress");
        let state = std::mem::replace(
            &mut progress.blocks[block.index() as usize],
            BlockState::Received(peer),
        );
        let cancel: Vec<PeerKey> = match state {
            BlockState::Requested(peers) => peers.into_iter().filter(|&p| p != peer).collect(),
            other => unreachable!("a block requested from the peer, found {other:?}"),
        };
        Received::Accepted { cancel }
    }

    /// The piece verified: it is ours. Returns the requests of its blocks
    /// still out (normally none: every block was received), which end
    /// here: their credits can go.
    pub fn piece_verified(&mut self, piece: PieceIndex) -> Vec<(PeerKey, BlockRef)> {
        let mut dropped = Vec::new();
        if self.have[piece.as_usize()] {
            return dropped;
        }
        let missing = match self.progress.remove(&piece) {
            Some(p) => {
                for (i, b) in p.blocks.iter().enumerate() {
                    if let BlockState::Requested(peers) = b {
                        let block = self
                            .layout
                            .block(piece, i as u32)
                            .expect("index from the piece");
                        dropped.extend(peers.iter().map(|&peer| (peer, block)));
                    }
                }
                reindex(&mut self.open, piece, p.missing, 0);
                u64::from(p.missing)
            }
            None => u64::from(self.layout.blocks_in_piece(piece)),
        };
        self.missing_blocks -= missing;
        self.have.set(piece.as_usize(), true);
        let was_candidate = self.candidates.remove(piece.get()).is_some();
        for p in self.peers.values_mut().filter(|p| p.bits[piece.as_usize()]) {
            p.lacking -= 1;
            if was_candidate {
                p.startable -= 1;
            }
        }
        self.have_count += 1;
        dropped
    }

    /// A verified piece is gone (its data changed on disk): it is missing
    /// again, a candidate like any other.
    pub fn piece_lost(&mut self, piece: PieceIndex) {
        let i = piece.as_usize();
        if !self.have[i] {
            return;
        }
        self.have.set(i, false);
        self.have_count -= 1;
        self.missing_blocks += u64::from(self.layout.blocks_in_piece(piece));
        for p in self.peers.values_mut().filter(|p| p.bits[i]) {
            p.lacking += 1;
            p.startable += 1;
        }
        self.candidates.insert(piece.get(), self.availability[i]);
    }

    /// The piece failed its hash check: every block is missing again.
    /// Returns who sent each received block (block index, sender), for
    /// penalties, and the requests of its blocks still out (normally
    /// none), which end here.
    pub fn hash_failed(&mut self, piece: PieceIndex) -> FailedPiece {
        let mut failed = FailedPiece::default();
        let Some(progress) = self.progress.get_mut(&piece) else {
            return failed;
        };
        let senders = &mut failed.senders;
        progress.owner = None;
        let was = progress.missing;
        for (i, state) in progress.blocks.iter_mut().enumerate() {
            match std::mem::replace(state, BlockState::Missing) {
                BlockState::Received(p) => {
                    senders.push((i as u32, p));
                    progress.missing += 1;
                    self.missing_blocks += 1;
                }
                BlockState::Requested(peers) => {
                    let block = self
                        .layout
                        .block(piece, i as u32)
                        .expect("index from the piece");
                    failed.dropped.extend(peers.into_iter().map(|p| (p, block)));
                    progress.missing += 1;
                    self.missing_blocks += 1;
                }
                BlockState::Missing => {}
            }
        }
        reindex(&mut self.open, piece, was, progress.missing);
        let mut distinct: Vec<PeerKey> = senders.iter().map(|(_, p)| *p).collect();
        distinct.sort();
        distinct.dedup();
        progress.retry |= distinct.len() > 1;
        failed
    }

    /// The next block to request from `peer`, which has the pieces in
    /// `peer_has`; `None` when it has nothing we can ask for now.
    pub fn next_request(&mut self, peer: PeerKey, rng: &mut dyn RngCore) -> Option<BlockRef> {
        // The map is moved out for the duration (a pointer swap, not a
        // rehash), so `self` can be borrowed mutably beside the bitfield.
        let mut peers = std::mem::take(&mut self.peers);
        let pick = peers
            .get(&peer)
            .and_then(|entry| self.pick(peer, entry, rng));
        if let Some((block, true)) = pick {
            // A new piece: no longer a candidate at any peer.
            let i = block.piece().as_usize();
            for p in peers.values_mut().filter(|p| p.bits[i]) {
                p.startable -= 1;
            }
        }
        self.peers = peers;
        pick.map(|(block, _)| block)
    }

    /// The next block for `peer`, and whether it starts a new piece.
    fn pick(
        &mut self,
        peer: PeerKey,
        entry: &PeerPieces,
        rng: &mut dyn RngCore,
    ) -> Option<(BlockRef, bool)> {
        let peer_has = &entry.bits;
        let has = |p: PieceIndex| peer_has.get(p.as_usize()).is_some_and(|b| *b);
        // 1. The partial piece closest to done that has a missing block.
        let partial = self
            .open
            .iter()
            .map(|&(_, p)| p)
            .find(|p| has(*p) && self.progress[p].open_to(peer));
        if let Some(piece) = partial {
            return Some((self.take_missing(peer, piece), false));
        }
        // 2. A new piece: random first, then rarest first.
        if self.missing_blocks > 0 && entry.startable > 0 {
            let piece = if self.have_count < self.config.random_first {
                self.candidates.random(peer_has, rng)
            } else {
                self.candidates.rarest(peer_has, rng)
            };
            if let Some(i) = piece {
                let piece = self.layout.piece(i).expect("candidates are valid pieces");
                self.start(piece);
                return Some((self.take_missing(peer, piece), true));
            }
        }
        // 3. Endgame: a block outstanding elsewhere, fewest requesters first.
        if !self.in_endgame() {
            return None;
        }
        let max = self.config.endgame_max_requesters;
        let mut pick: Option<(usize, BlockRef)> = None;
        for (&piece, prog) in &self.progress {
            if !has(piece) || !prog.open_to(peer) {
                continue;
            }
            for (i, state) in prog.blocks.iter().enumerate() {
                if let BlockState::Requested(peers) = state
                    && peers.len() < max
                    && !peers.contains(&peer)
                    && pick.is_none_or(|(n, _)| peers.len() < n)
                {
                    pick = Some((
                        peers.len(),
                        self.layout
                            .block(piece, i as u32)
                            .expect("index from the piece"),
                    ));
                }
            }
        }
        let (_, block) = pick?;
        if let Some(BlockState::Requested(peers)) = self
            .progress
            .get_mut(&block.piece())
            .map(|p| &mut p.blocks[block.index() as usize])
        {
            peers.push(peer);
        }
        Some((block, false))
    }

    fn start(&mut self, piece: PieceIndex) {
        let n = self.layout.blocks_in_piece(piece);
        self.candidates.remove(piece.get());
        reindex(&mut self.open, piece, 0, n);
        self.progress.insert(
            piece,
            Progress {
                blocks: vec![BlockState::Missing; n as usize],
                missing: n,
                retry: false,
                owner: None,
            },
        );
    }

    fn take_missing(&mut self, peer: PeerKey, piece: PieceIndex) -> BlockRef {
        let progress = self.progress.get_mut(&piece).expect("piece in progress");
        let i = progress
            .blocks
            .iter()
            .position(|b| *b == BlockState::Missing)
            .expect("a piece with missing > 0 has a missing block");
        progress.blocks[i] = BlockState::Requested(vec![peer]);
        reindex(
            &mut self.open,
            piece,
            progress.missing,
            progress.missing - 1,
        );
        progress.missing -= 1;
        if progress.retry {
            progress.owner = Some(peer);
        }
        self.missing_blocks -= 1;
        self.layout
            .block(piece, i as u32)
            .expect("index from the piece")
    }

    /// Checks internal consistency (tests and debug builds).
    #[doc(hidden)]
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut missing = 0u64;
        for p in self.layout.pieces() {
            let i = p.as_usize();
            match self.progress.get(&p) {
                _ if self.have[i] => {
                    if self.progress.contains_key(&p) {
                        return Err(format!("{p:?} verified but in progress"));
                    }
                }
                None => missing += u64::from(self.layout.blocks_in_piece(p)),
                Some(prog) => {
                    let m = prog
                        .blocks
                        .iter()
                        .filter(|b| **b == BlockState::Missing)
                        .count() as u32;
                    if m != prog.missing {
                        return Err(format!(
                            "{p:?}: {m} missing blocks, counted {}",
                            prog.missing
                        ));
                    }
                    missing += u64::from(m);
                    for (b, state) in prog.blocks.iter().enumerate() {
                        let block = self.layout.block(p, b as u32).ok_or("bad block")?;
                        if let BlockState::Requested(peers) = state {
                            if peers.is_empty() {
                                return Err(format!("{block:?} requested from nobody"));
                            }
                            let mut distinct = peers.clone();
                            distinct.sort();
                            distinct.dedup();
                            if distinct.len() != peers.len() {
                                return Err(format!("{block:?} requested twice from one peer"));
                            }
                        }
                    }
                }
            }
        }
        for p in self.layout.pieces() {
            let i = p.as_usize();
            let candidate = !self.have[i] && !self.progress.contains_key(&p);
            match self.candidates.slot[i] {
                Some((a, _)) if !candidate || a != self.availability[i] => {
                    return Err(format!(
                        "{p:?} in bucket {a}, availability {}",
                        self.availability[i]
                    ));
                }
                None if candidate => return Err(format!("{p:?} is not a candidate")),
                _ => {}
            }
        }
        let candidates = self
            .layout
            .pieces()
            .filter(|p| !self.have[p.as_usize()] && !self.progress.contains_key(p))
            .count();
        if candidates != self.candidates.len {
            return Err(format!(
                "{candidates} candidates, counted {}",
                self.candidates.len
            ));
        }
        for (peer, p) in &self.peers {
            let startable = p
                .bits
                .iter_ones()
                .filter(|&i| self.candidates.contains(i))
                .count() as u32;
            if startable != p.startable {
                return Err(format!(
                    "{peer:?} has {startable} pieces not started, counted {}",
                    p.startable
                ));
            }
            let lacking = p.bits.iter_ones().filter(|&i| !self.have[i]).count() as u32;
            if lacking != p.lacking {
                return Err(format!(
                    "{peer:?} lacks {lacking} of ours, counted {}",
                    p.lacking
                ));
            }
        }
        let open: BTreeSet<(u32, PieceIndex)> = self
            .progress
            .iter()
            .filter(|(_, prog)| prog.missing > 0)
            .map(|(p, prog)| (prog.missing, *p))
            .collect();
        if open != self.open {
            return Err(format!(
                "pieces with missing blocks: {} indexed, {} in progress",
                self.open.len(),
                open.len()
            ));
        }
        if missing != self.missing_blocks {
            return Err(format!(
                "{missing} missing blocks, counted {}",
                self.missing_blocks
            ));
        }
        Ok(())
    }
}

/// Moves `piece` in the index of partial pieces from `old` to `new`
/// missing blocks (a piece with none missing is not in it).
fn reindex(open: &mut BTreeSet<(u32, PieceIndex)>, piece: PieceIndex, old: u32, new: u32) {
    if old > 0 {
        open.remove(&(old, piece));
    }
    if new > 0 {
        open.insert((new, piece));
    }
}

/// Pieces that could be started, bucketed by availability, so that
/// rarest-first looks at the rarest pieces first instead of scanning every
/// piece: O(1) to move a piece between buckets when a `have` arrives.
#[derive(Debug, Clone)]
struct Candidates {
    /// `buckets[a]`: candidate pieces that `a` peers have, in no order.
    buckets: Vec<Vec<u32>>,
    /// Where each piece sits: (availability, index in its bucket).
    slot: Vec<Option<(u32, u32)>>,
    len: usize,
}

impl Candidates {
    fn new(pieces: usize) -> Self {
        Self {
            buckets: Vec::new(),
            slot: vec![None; pieces],
            len: 0,
        }
    }

    fn insert(&mut self, piece: u32, availability: u32) {
        debug_assert!(self.slot[piece as usize].is_none());
        let a = availability as usize;
        if self.buckets.len() <= a {
            self.buckets.resize_with(a + 1, Vec::new);
        }
        self.slot[piece as usize] = Some((availability, self.buckets[a].len() as u32));
        self.buckets[a].push(piece);
        self.len += 1;
    }

    fn contains(&self, piece: usize) -> bool {
        self.slot.get(piece).is_some_and(Option::is_some)
    }

    /// Removes `piece` if it is a candidate; returns its availability.
    fn remove(&mut self, piece: u32) -> Option<u32> {
        let (a, i) = self.slot[piece as usize].take()?;
        let bucket = &mut self.buckets[a as usize];
        bucket.swap_remove(i as usize);
        if let Some(&moved) = bucket.get(i as usize) {
            self.slot[moved as usize] = Some((a, i));
        }
        self.len -= 1;
        Some(a)
    }

    fn set_availability(&mut self, piece: u32, availability: u32) {
        if self.remove(piece).is_some() {
            self.insert(piece, availability);
        }
    }

    /// A uniformly random candidate among those `peer_has` in `pieces`.
    fn sample<'a>(
        pieces: impl Iterator<Item = &'a u32>,
        peer_has: &Bitfield,
        rng: &mut dyn RngCore,
    ) -> Option<u32> {
        let mut pick = None;
        let mut seen = 0u32;
        for &p in pieces {
            if peer_has.get(p as usize).is_some_and(|b| *b) {
                seen += 1;
                if rng.gen_range(0..seen) == 0 {
                    pick = Some(p);
                }
            }
        }
        pick
    }

    /// The rarest candidate the peer has, ties broken at random.
    fn rarest(&self, peer_has: &Bitfield, rng: &mut dyn RngCore) -> Option<u32> {
        self.buckets
            .iter()
            .find_map(|bucket| Self::sample(bucket.iter(), peer_has, rng))
    }

    /// Any candidate the peer has, uniformly at random.
    fn random(&self, peer_has: &Bitfield, rng: &mut dyn RngCore) -> Option<u32> {
        Self::sample(self.buckets.iter().flatten(), peer_has, rng)
    }
}

#[cfg(test)]
mod tests;
