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
}
