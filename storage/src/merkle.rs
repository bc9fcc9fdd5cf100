//! BEP 52 merkle trees: SHA-256 over 16 KiB blocks.
//!
//! A file's tree has `next_power_of_two(blocks)` leaves; leaves past the end
//! of the file are 32 zero bytes (not the hash of zeros). A piece's hash (its
//! entry in the piece layer) is the root of the subtree over its
//! `piece_length / 16 KiB` leaves. A file no longer than one piece has no
//! piece layer: its only piece is checked against the file's `pieces root`.
//!
//! Pure functions, no I/O. Padding subtrees are hashed once per height, not
//! leaf by leaf, so a 1-block piece of a 16 MiB piece size costs 10 hashes,
//! not 1024.

use sha2::{Digest, Sha256};

/// The BEP 52 leaf size.
pub const BLOCK_SIZE: u32 = 16 * 1024;

/// A SHA-256 digest.
pub type Hash = [u8; 32];

/// The leaf hash of a block. The last block of a file may be short; it is
/// hashed as it is, without padding.
pub fn leaf_hash(block: &[u8]) -> Hash {
    Sha256::digest(block).into()
}

fn node(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// Hashes of all-padding subtrees: `pad[k]` is the root of a subtree of
/// height `k` whose leaves are all zero.
fn pad_hashes(height: u32) -> Vec<Hash> {
    let mut pads = Vec::with_capacity(height as usize + 1);
    pads.push([0u8; 32]);
    for k in 0..height as usize {
        let p = pads[k];
        pads.push(node(&p, &p));
    }
    pads
}

/// Root of a tree with `width` leaves (a power of two), of which the first
/// `layer.len()` are given and the rest are padding subtrees of height
/// `base_height` (0 when `layer` are leaf hashes).
///
/// `layer.len()` must be ≤ `width`; `width` a power of two ≥ 1.
pub fn root_of_layer(layer: &[Hash], width: usize, base_height: u32) -> Hash {
    debug_assert!(width.is_power_of_two() && layer.len() <= width);
    let height = width.trailing_zeros();
    let pads = pad_hashes(base_height + height);
    if layer.is_empty() {
        return pads[(base_height + height) as usize];
    }
    let mut level: Vec<Hash> = layer.to_vec();
    let mut h = base_height as usize;
    let mut w = width;
    while w > 1 {
        let next: Vec<Hash> = level
            .chunks(2)
            .map(|pair| match pair {
                [l, r] => node(l, r),
                [l] => node(l, &pads[h]),
                _ => unreachable!("chunks(2) yields one or two items"),
            })
            .collect();
        level = next;
        h += 1;
        w /= 2;
    }
    level[0]
}

/// Number of 16 KiB blocks in `len` bytes (the last one possibly short).
pub fn blocks_in(len: u64) -> u64 {
    len.div_ceil(u64::from(BLOCK_SIZE))
}

/// Shape of one file's tree, for a given piece length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileTree {
    /// Blocks in the file.
    pub blocks: u64,
    /// Blocks per piece (a power of two).
    pub blocks_per_piece: u64,
}

impl FileTree {
    pub fn new(file_len: u64, piece_length: u32) -> Self {
        Self {
            blocks: blocks_in(file_len),
            blocks_per_piece: u64::from(piece_length / BLOCK_SIZE),
        }
    }

    /// Whether the file has a piece layer (more than one piece).
    pub fn has_piece_layer(&self) -> bool {
        self.blocks > self.blocks_per_piece
    }

    /// The number of leaves a piece's subtree is padded to: the piece width
    /// in a file with a piece layer, the whole (power-of-two) tree otherwise.
    pub fn piece_width(&self) -> usize {
        if self.has_piece_layer() {
            self.blocks_per_piece as usize
        } else {
            self.blocks.next_power_of_two().max(1) as usize
        }
    }

    /// The hash a piece with these leaf hashes must have: its piece-layer
    /// entry, or the file's root when there is no piece layer.
    pub fn piece_hash(&self, leaves: &[Hash]) -> Hash {
        root_of_layer(leaves, self.piece_width(), 0)
    }

    /// The file's `pieces root` computed from its piece layer.
    pub fn root_from_piece_layer(&self, layer: &[Hash]) -> Hash {
        debug_assert!(self.has_piece_layer());
        let width = (self.blocks.next_power_of_two() / self.blocks_per_piece) as usize;
        root_of_layer(layer, width, self.blocks_per_piece.trailing_zeros())
    }
}

/// Most hashes one BEP 52 hash request may ask for (libtorrent asks for
/// piece layers 512 at a time; 512 hashes and their proof fit in one
/// message).
pub const MAX_HASH_RANGE: u32 = 512;

/// A range of one layer of a file's tree, as a BEP 52 hash request names
/// it: `count` hashes from `index` in layer `base` (0: the 16 KiB block
/// hashes), and enough of the hashes beside their path to prove them
/// against the root: `proof_layers` ancestor layers above the base, the
/// first `log2(count) - 1` of which the range itself gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HashRange {
    pub base: u32,
    pub index: u32,
    pub count: u32,
    pub proof_layers: u32,
}

impl HashRange {
    /// Uncle hashes that follow the range in an answer.
    pub fn uncles(&self) -> u32 {
        (self.proof_layers + 1).saturating_sub(self.count.trailing_zeros())
    }

    /// The request for layer `base` of a tree `height` layers above its
    /// leaves (`log2` of its padded width) that brings hashes
    /// `index..index + count` with every uncle up to the root.
    pub fn to_root(base: u32, index: u32, count: u32, height: u32) -> Self {
        Self {
            base,
            index,
            count,
            proof_layers: height.saturating_sub(base + 1),
        }
    }

    /// Whether the range is well formed for a tree of `height` layers
    /// above its leaves: `count` a power of two from 2 to
    /// [`MAX_HASH_RANGE`] (libtorrent's reading of one hash and its proof
    /// differs from the BEP's), `index` a multiple of it, inside the layer, and
    /// proof layers that stop below the root.
    pub fn fits(&self, height: u32) -> bool {
        let width = 1u64 << height.min(63);
        self.base <= height
            && self.count.is_power_of_two()
            && (2..=MAX_HASH_RANGE).contains(&self.count)
            && self.index.is_multiple_of(self.count)
            && u64::from(self.index) + u64::from(self.count) <= width >> self.base
            && self.proof_layers < (height - self.base).max(1)
            && self.count.trailing_zeros() <= height - self.base
    }
}

/// A file's tree from its piece layer up, to answer hash requests for
/// the layers a `.torrent` carries (the piece layer and those above it).
/// Built once per file; `2 × width` hashes.
#[derive(Debug, Clone)]
pub struct PieceTree {
    /// Layer of the piece hashes (`log2` of blocks per piece).
    piece_base: u32,
    /// `levels[0]`: the piece layer padded to a power of two; the last
    /// holds the root alone.
    levels: Vec<Vec<Hash>>,
}

impl PieceTree {
    /// The tree over `layer` (a file's piece hashes, for a file with a
    /// piece layer).
    pub fn new(tree: FileTree, layer: &[Hash]) -> Self {
        debug_assert!(tree.has_piece_layer());
        let piece_base = tree.blocks_per_piece.trailing_zeros();
        let width = (tree.blocks.next_power_of_two() / tree.blocks_per_piece) as usize;
        let pads = pad_hashes(piece_base);
        let mut level = layer.to_vec();
        level.resize(width.max(layer.len()), pads[piece_base as usize]);
        let mut levels = vec![level];
        while levels.last().is_some_and(|l| l.len() > 1) {
            let below = levels.last().expect("not empty");
            let next = below.chunks(2).map(|p| node(&p[0], &p[1])).collect();
            levels.push(next);
        }
        Self { piece_base, levels }
    }

    /// The file's root.
    pub fn root(&self) -> Hash {
        self.levels.last().expect("a tree has a root")[0]
    }

    /// Layers above the leaves (the blocks) to the root.
    pub fn height(&self) -> u32 {
        self.piece_base + self.levels.len() as u32 - 1
    }

    /// The answer to `r`: its hashes, then the uncles that prove them,
    /// lowest first. `None` when `r` is malformed or names layers below
    /// the piece layer (not kept).
    pub fn answer(&self, r: &HashRange) -> Option<Vec<Hash>> {
        if !r.fits(self.height()) || r.base < self.piece_base {
            return None;
        }
        let level = (r.base - self.piece_base) as usize;
        let start = r.index as usize;
        let mut out = self.levels[level][start..start + r.count as usize].to_vec();
        let top = level + r.count.trailing_zeros() as usize;
        let mut at = start >> r.count.trailing_zeros();
        for l in top..top + r.uncles() as usize {
            out.push(*self.levels.get(l)?.get(at ^ 1)?);
            at >>= 1;
        }
        Some(out)
    }
}

/// Checks an answer to `r` against a file's `root` in a tree of `height`
/// layers: the range's own hashes, hashed up and folded with the uncles,
/// must give the root. Returns the range's hashes when they do.
pub fn check_answer<'a>(
    root: &Hash,
    height: u32,
    r: &HashRange,
    hashes: &'a [Hash],
) -> Option<&'a [Hash]> {
    if !r.fits(height) || hashes.len() != (r.count + r.uncles()) as usize {
        return None;
    }
    let (range, uncles) = hashes.split_at(r.count as usize);
    let mut level = range.to_vec();
    while level.len() > 1 {
        level = level.chunks(2).map(|p| node(&p[0], &p[1])).collect();
    }
    let mut at = r.index >> r.count.trailing_zeros();
    let mut h = level[0];
    for u in uncles {
        h = if at & 1 == 0 {
            node(&h, u)
        } else {
            node(u, &h)
        };
        at >>= 1;
    }
    // Proof that stops below the root proves nothing.
    let reached = r.base + r.count.trailing_zeros() + r.uncles();
    (reached == height && h == *root).then_some(range)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive_root(leaves: &[Hash], width: usize) -> Hash {
        let mut level: Vec<Hash> = leaves.to_vec();
        level.resize(width, [0; 32]);
        while level.len() > 1 {
            level = level.chunks(2).map(|p| node(&p[0], &p[1])).collect();
        }
        level[0]
    }

    fn leaves(n: usize) -> Vec<Hash> {
        (0..n).map(|i| leaf_hash(&i.to_le_bytes())).collect()
    }

    #[test]
    fn padded_root_matches_the_naive_tree() {
        for n in 0..=9 {
            for width in [1usize, 2, 4, 8, 16] {
                if n <= width {
                    assert_eq!(
                        root_of_layer(&leaves(n), width, 0),
                        naive_root(&leaves(n), width)
                    );
                }
            }
        }
    }

    #[test]
    fn padding_leaves_are_zero_not_hashes_of_zero() {
        let l = leaves(1);
        assert_eq!(root_of_layer(&l, 2, 0), node(&l[0], &[0; 32]));
        assert_ne!(root_of_layer(&l, 2, 0), node(&l[0], &leaf_hash(&[])));
    }

    #[test]
    fn one_block_file_root_is_its_leaf() {
        let t = FileTree::new(1, 64 * 1024);
        let l = leaves(1);
        assert_eq!(t.piece_width(), 1);
        assert_eq!(t.piece_hash(&l), l[0]);
    }

    #[test]
    fn root_from_layer_equals_root_from_leaves() {
        // 4 blocks per piece, 11 blocks: 3 pieces, tree of 16 leaves.
        let piece_length = 4 * BLOCK_SIZE;
        let t = FileTree::new(11 * u64::from(BLOCK_SIZE) - 5, piece_length);
        assert!(t.has_piece_layer());
        let all = leaves(11);
        let layer: Vec<Hash> = all.chunks(4).map(|c| t.piece_hash(c)).collect();
        assert_eq!(t.root_from_piece_layer(&layer), naive_root(&all, 16));
    }

    #[test]
    fn small_file_pads_to_its_own_width_not_the_piece() {
        let t = FileTree::new(3 * u64::from(BLOCK_SIZE), 16 * BLOCK_SIZE);
        assert!(!t.has_piece_layer());
        assert_eq!(t.piece_width(), 4);
        assert_eq!(t.piece_hash(&leaves(3)), naive_root(&leaves(3), 4));
    }

    /// A file of `pieces` full 4-block pieces: its leaves and piece layer.
    fn file_of(pieces: usize) -> (FileTree, Vec<Hash>, Hash) {
        let piece_length = 4 * BLOCK_SIZE;
        let t = FileTree::new(pieces as u64 * u64::from(piece_length), piece_length);
        let all = leaves(pieces * 4);
        let layer: Vec<Hash> = all.chunks(4).map(|c| t.piece_hash(c)).collect();
        let width = (pieces * 4).next_power_of_two();
        (t, layer, naive_root(&all, width))
    }

    #[test]
    fn piece_tree_answers_prove_against_the_root() {
        for pieces in [2usize, 3, 5, 8, 9, 40] {
            let (t, layer, root) = file_of(pieces);
            let tree = PieceTree::new(t, &layer);
            assert_eq!(tree.root(), root, "{pieces} pieces");
            let height = tree.height();
            for count in [2u32, 4, 8, 16, 64] {
                for index in (0..pieces as u32).step_by(count as usize) {
                    let r = HashRange::to_root(2, index, count, height);
                    let Some(answer) = tree.answer(&r) else {
                        assert!(!r.fits(height), "{pieces} pieces, {r:?}");
                        continue;
                    };
                    let got = check_answer(&root, height, &r, &answer)
                        .unwrap_or_else(|| panic!("{pieces} pieces, {r:?} did not prove"));
                    for (i, h) in got.iter().enumerate() {
                        let p = index as usize + i;
                        if p < pieces {
                            assert_eq!(*h, layer[p]);
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn a_false_hash_or_a_short_proof_is_refused() {
        let (t, layer, root) = file_of(40);
        let tree = PieceTree::new(t, &layer);
        let height = tree.height();
        let r = HashRange::to_root(2, 8, 8, height);
        let mut answer = tree.answer(&r).expect("well formed");
        assert!(check_answer(&root, height, &r, &answer).is_some());
        answer[3][0] ^= 1;
        assert!(check_answer(&root, height, &r, &answer).is_none());
        answer[3][0] ^= 1;
        let uncle = answer.len() - 1;
        answer[uncle][5] ^= 1;
        assert!(check_answer(&root, height, &r, &answer).is_none());
        // Fewer proof layers: nothing reaches the root to compare.
        let short = HashRange {
            proof_layers: r.proof_layers - 1,
            ..r
        };
        let answer = tree.answer(&short).expect("well formed");
        assert!(check_answer(&root, height, &short, &answer).is_none());
        // The right hashes at the wrong index do not prove either.
        let moved = HashRange { index: 16, ..r };
        let answer = tree.answer(&r).expect("well formed");
        assert!(check_answer(&root, height, &moved, &answer).is_none());
    }

    #[test]
    fn malformed_ranges_are_not_answered() {
        let (t, layer, _) = file_of(9); // 16-piece layer, height 6
        let tree = PieceTree::new(t, &layer);
        let h = tree.height();
        assert_eq!(h, 6);
        for r in [
            HashRange {
                base: 2,
                index: 0,
                count: 3,
                proof_layers: 0,
            },
            HashRange {
                base: 2,
                index: 2,
                count: 4,
                proof_layers: 0,
            },
            HashRange {
                base: 2,
                index: 16,
                count: 2,
                proof_layers: 0,
            },
            HashRange {
                base: 2,
                index: 0,
                count: 2,
                proof_layers: 4,
            },
            HashRange {
                base: 1,
                index: 0,
                count: 2,
                proof_layers: 0,
            },
            HashRange {
                base: 7,
                index: 0,
                count: 1,
                proof_layers: 0,
            },
            HashRange {
                base: 2,
                index: 0,
                count: 1,
                proof_layers: 0,
            },
            HashRange {
                base: 2,
                index: 0,
                count: 1024,
                proof_layers: 0,
            },
        ] {
            assert!(tree.answer(&r).is_none(), "{r:?}");
        }
        // The whole layer with no uncles, and one above it.
        let whole = HashRange::to_root(2, 0, 16, h);
        assert_eq!(whole.uncles(), 0);
        assert_eq!(tree.answer(&whole).map(|a| a.len()), Some(16));
        let above = HashRange::to_root(3, 0, 8, h);
        assert!(tree.answer(&above).is_some());
    }
}
