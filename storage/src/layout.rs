//! Where pieces and blocks live in the files.
//!
//! In BitTorrent v2 every file starts on a piece boundary, so a piece never
//! spans two files and a block maps to one byte range of one file. Pieces are
//! numbered through the files in file-tree order; empty files hold no piece.
//!
//! A v1 torrent's pieces run over its files end to end instead: the layout
//! then has one span, the files back to back, and [`Layout::segments`]
//! splits a range of it into the files' own ranges (a piece, or a block,
//! may cross from one file into the next).
//!
//! Indices are validated once: a [`PieceIndex`] is only made by
//! [`Layout::piece`] and a [`BlockRef`] by [`Layout::block`], so nothing
//! downstream re-checks bounds.

use std::fmt;

use bitvec::prelude::{BitVec, Msb0};

use crate::merkle::{BLOCK_SIZE, FileTree};
use crate::metainfo::Info;

/// One bit per piece, in wire order (BitTorrent's bitfield is MSB-first).
pub type Bitfield = BitVec<u8, Msb0>;

/// A piece index known to be in range for its layout.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PieceIndex(u32);

impl PieceIndex {
    pub fn get(self) -> u32 {
        self.0
    }

    pub fn as_usize(self) -> usize {
        self.0 as usize
    }
}

impl fmt::Display for PieceIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Debug for PieceIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "piece {}", self.0)
    }
}

/// A block (16 KiB, the last of a file possibly shorter) of a piece.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlockRef {
    piece: PieceIndex,
    block: u32,
}

impl BlockRef {
    pub fn piece(self) -> PieceIndex {
        self.piece
    }

    /// Index of the block within its piece.
    pub fn index(self) -> u32 {
        self.block
    }
}

impl fmt::Debug for BlockRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "block {}.{}", self.piece.0, self.block)
    }
}

/// A byte range of one file (of a v1 layout: of the files end to end,
/// until [`Layout::segments`] splits it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileRange {
    /// Index into [`Info::files`] (0 in a v1 layout's span).
    pub file: usize,
    pub offset: u64,
    pub len: u32,
}

#[derive(Debug, Clone)]
struct FileSpan {
    length: u64,
    first_piece: u32,
    pieces: u32,
}

/// See [`Layout::segments`].
#[derive(Debug)]
pub struct Segments<'a> {
    files: Option<&'a [(u64, u64)]>,
    next: FileRange,
    left: u64,
}

impl Iterator for Segments<'_> {
    type Item = FileRange;

    fn next(&mut self) -> Option<FileRange> {
        if self.left == 0 {
            return None;
        }
        let Some(files) = self.files else {
            self.left = 0;
            return Some(self.next);
        };
        let at = self.next.offset;
        // The first non-empty file ending after `at`.
        let i = files.partition_point(|&(start, len)| start + len <= at);
        let (start, len) = *files.get(i)?;
        let n = self.left.min(start + len - at);
        self.left -= n;
        self.next.offset += n;
        Some(FileRange {
            file: i,
            offset: at - start,
            len: n as u32,
        })
    }
}

/// The piece/block geometry of one torrent.
#[derive(Debug, Clone)]
pub struct Layout {
    piece_length: u32,
    files: Vec<FileSpan>,
    num_pieces: u32,
    /// A v1 layout: where each file starts in the one span, and its length.
    end_to_end: Option<Vec<(u64, u64)>>,
}

impl Layout {
    pub fn new(info: &Info) -> Self {
        let lengths = info.files().iter().map(|f| f.length);
        if info.version() == crate::metainfo::MetaVersion::V1 {
            Self::end_to_end(info.piece_length(), lengths)
        } else {
            Self::from_lengths(info.piece_length(), lengths)
        }
    }

    /// A v1 layout: pieces over the files end to end.
    pub fn end_to_end(piece_length: u32, lengths: impl IntoIterator<Item = u64>) -> Self {
        let mut start = 0u64;
        let files: Vec<(u64, u64)> = lengths
            .into_iter()
            .map(|len| {
                let at = start;
                start += len;
                (at, len)
            })
            .collect();
        let mut span = Self::from_lengths(piece_length, [start]);
        span.end_to_end = Some(files);
        span
    }

    /// The files' own ranges that make up `range`, in order (one, but in a
    /// v1 layout, where a range may cross files; empty files are skipped).
    pub fn segments(&self, range: FileRange) -> Segments<'_> {
        Segments {
            files: self.end_to_end.as_deref(),
            next: range,
            left: u64::from(range.len),
        }
    }

    /// A layout for files of these lengths, in order. The caller guarantees
    /// the piece count fits in a `u32` (validated [`Info`] does).
    pub fn from_lengths(piece_length: u32, lengths: impl IntoIterator<Item = u64>) -> Self {
        let mut next = 0u32;
        let files = lengths
            .into_iter()
            .map(|length| {
                let pieces = length.div_ceil(u64::from(piece_length)) as u32;
                let span = FileSpan {
                    length,
                    first_piece: next,
                    pieces,
                };
                next += pieces;
                span
            })
            .collect();
        Self {
            piece_length,
            files,
            num_pieces: next,
            end_to_end: None,
        }
    }

    /// Length of file `file` in bytes.
    pub fn file_len(&self, file: usize) -> u64 {
        match &self.end_to_end {
            Some(files) => files[file].1,
            None => self.files[file].length,
        }
    }

    pub fn piece_length(&self) -> u32 {
        self.piece_length
    }

    pub fn num_pieces(&self) -> u32 {
        self.num_pieces
    }

    pub fn num_files(&self) -> usize {
        self.files.len()
    }

    /// Validates a piece index.
    pub fn piece(&self, index: u32) -> Option<PieceIndex> {
        (index < self.num_pieces).then_some(PieceIndex(index))
    }

    pub fn pieces(&self) -> impl Iterator<Item = PieceIndex> + use<> {
        (0..self.num_pieces).map(PieceIndex)
    }

    /// An empty bitfield sized for this layout.
    pub fn empty_bitfield(&self) -> Bitfield {
        Bitfield::repeat(false, self.num_pieces as usize)
    }

    /// The file holding `piece`.
    pub fn piece_file(&self, piece: PieceIndex) -> usize {
        self.files
            .partition_point(|f| f.first_piece + f.pieces <= piece.0)
    }

    /// The pieces of file `file` (empty for an empty file).
    pub fn file_pieces(&self, file: usize) -> std::ops::Range<u32> {
        let f = &self.files[file];
        f.first_piece..f.first_piece + f.pieces
    }

    /// Where `piece` lives: its file, its offset there and its length.
    pub fn piece_range(&self, piece: PieceIndex) -> FileRange {
        let file = self.piece_file(piece);
        let f = &self.files[file];
        let offset = u64::from(piece.0 - f.first_piece) * u64::from(self.piece_length);
        let len = (f.length - offset).min(u64::from(self.piece_length)) as u32;
        FileRange { file, offset, len }
    }

    pub fn piece_len(&self, piece: PieceIndex) -> u32 {
        self.piece_range(piece).len
    }

    pub fn blocks_in_piece(&self, piece: PieceIndex) -> u32 {
        self.piece_len(piece).div_ceil(BLOCK_SIZE)
    }

    /// The merkle shape of the file holding `piece`.
    pub fn piece_tree(&self, piece: PieceIndex) -> FileTree {
        FileTree::new(self.files[self.piece_file(piece)].length, self.piece_length)
    }

    /// Validates a block index within a piece.
    pub fn block(&self, piece: PieceIndex, block: u32) -> Option<BlockRef> {
        (block < self.blocks_in_piece(piece)).then_some(BlockRef { piece, block })
    }

    /// Validates a (piece, byte offset, length) triple as sent on the wire:
    /// the offset must be block-aligned and the length that block's length.
    pub fn block_at(&self, piece: u32, offset: u32, len: u32) -> Option<BlockRef> {
        let piece = self.piece(piece)?;
        if !offset.is_multiple_of(BLOCK_SIZE) {
            return None;
        }
        let block = self.block(piece, offset / BLOCK_SIZE)?;
        (self.block_len(block) == len).then_some(block)
    }

    /// The piece of a 16 KiB block that lies wholly in the padding after
    /// a piece's data (the pad file a hybrid torrent's v1 part puts after
    /// each file: zeros a v1 peer may ask for), if it is one.
    pub fn pad_block(&self, piece: u32, offset: u32, len: u32) -> Option<PieceIndex> {
        let p = self.piece(piece)?;
        let in_pad = len == BLOCK_SIZE
            && offset.is_multiple_of(BLOCK_SIZE)
            && offset >= self.piece_len(p)
            && offset.checked_add(len)? <= self.piece_length;
        in_pad.then_some(p)
    }

    pub fn blocks(&self, piece: PieceIndex) -> impl Iterator<Item = BlockRef> + use<> {
        (0..self.blocks_in_piece(piece)).map(move |block| BlockRef { piece, block })
    }

    /// Byte offset of a block within its piece.
    pub fn block_offset(&self, block: BlockRef) -> u32 {
        block.block * BLOCK_SIZE
    }

    pub fn block_len(&self, block: BlockRef) -> u32 {
        (self.piece_len(block.piece) - self.block_offset(block)).min(BLOCK_SIZE)
    }

    /// Where `block` lives in its file.
    pub fn block_range(&self, block: BlockRef) -> FileRange {
        let piece = self.piece_range(block.piece);
        let start = block.block * BLOCK_SIZE;
        FileRange {
            file: piece.file,
            offset: piece.offset + u64::from(start),
            len: (piece.len - start).min(BLOCK_SIZE),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metainfo::FileInfo;

    const B: u64 = BLOCK_SIZE as u64;

    /// v1: pieces over the files end to end; a range splits at file ends
    /// and skips empty files; the last piece is short.
    #[test]
    fn end_to_end_segments_cross_files() {
        let l = Layout::end_to_end(2 * BLOCK_SIZE, [10_000, 0, 30_000, 5]);
        assert_eq!(l.num_pieces(), 2);
        assert_eq!(l.file_len(3), 5);
        assert_eq!(l.file_len(2), 30_000);
        let p0 = l.piece(0).unwrap();
        let segs: Vec<FileRange> = l.segments(l.piece_range(p0)).collect();
        assert_eq!(
            segs,
            [
                FileRange {
                    file: 0,
                    offset: 0,
                    len: 10_000
                },
                FileRange {
                    file: 2,
                    offset: 0,
                    len: 2 * BLOCK_SIZE - 10_000
                },
            ]
        );
        let p1 = l.piece(1).unwrap();
        assert_eq!(l.piece_len(p1), 40_005 - 2 * BLOCK_SIZE);
        let last = l.blocks(p1).last().unwrap();
        let segs: Vec<FileRange> = l.segments(l.block_range(last)).collect();
        assert_eq!(
            segs.last(),
            Some(&FileRange {
                file: 3,
                offset: 0,
                len: 5
            })
        );
        let total: u32 = segs.iter().map(|r| r.len).sum();
        assert_eq!(total, l.block_len(last));
        // A v2 layout's range is its own one segment.
        let v2 = Layout::from_lengths(2 * BLOCK_SIZE, [10_000, 30_000]);
        let r = v2.piece_range(v2.piece(1).unwrap());
        assert_eq!(v2.segments(r).collect::<Vec<_>>(), [r]);
    }

    /// A layout from file lengths only (Layout never looks at the roots).
    fn layout(piece_length: u32, lengths: &[u64]) -> Layout {
        let files: Vec<FileInfo> = lengths
            .iter()
            .enumerate()
            .map(|(i, &length)| FileInfo {
                path: vec![format!("f{i:02}")],
                length,
                pieces_root: (length > 0).then_some([7; 32]),
            })
            .collect();
        Layout::new(&build_info(piece_length, &files))
    }

    fn build_info(piece_length: u32, files: &[FileInfo]) -> Info {
        use crate::bencode::{Dict, Value, encode};
        let mut tree = Dict::new();
        let mut attrs_store = Vec::new();
        for f in files {
            let mut attrs = Dict::new();
            attrs.insert(b"length", Value::Int(f.length as i64));
            if let Some(r) = &f.pieces_root {
                attrs.insert(b"pieces root", Value::Bytes(r));
            }
            attrs_store.push((f.path[0].as_bytes(), attrs));
        }
        for (name, attrs) in attrs_store {
            let mut leaf = Dict::new();
            leaf.insert(b"", Value::Dict(attrs));
            tree.insert(name, Value::Dict(leaf));
        }
        let mut info = Dict::new();
        info.insert(b"file tree", Value::Dict(tree))
            .insert(b"meta version", Value::Int(2))
            .insert(b"name", Value::Bytes(b"t"))
            .insert(b"piece length", Value::Int(i64::from(piece_length)));
        Info::from_bytes(&encode(&Value::Dict(info))).unwrap()
    }

    #[test]
    fn boundary_sizes() {
        let p = 4 * BLOCK_SIZE;
        // 0, 1, block-1, block, block+1, piece, piece+1 (short last piece).
        let lens = [0, 1, B - 1, B, B + 1, 4 * B, 4 * B + 1];
        let l = layout(p, &lens);
        assert_eq!(l.num_pieces(), 1 + 1 + 1 + 1 + 1 + 2);
        let expect_piece_lens = [1, B - 1, B, B + 1, 4 * B, 4 * B, 1];
        for (piece, want) in l.pieces().zip(expect_piece_lens) {
            assert_eq!(u64::from(l.piece_len(piece)), want, "{piece:?}");
        }
        // The empty file holds no piece; piece 0 is in file 1.
        assert_eq!(l.file_pieces(0), 0..0);
        assert_eq!(l.piece_file(l.piece(0).unwrap()), 1);
        assert_eq!(l.piece_file(l.piece(6).unwrap()), 6);
        // block+1 piece: two blocks, the second one byte long.
        let p4 = l.piece(3).unwrap();
        assert_eq!(l.blocks_in_piece(p4), 2);
        let b1 = l.block(p4, 1).unwrap();
        assert_eq!(l.block_len(b1), 1);
        assert_eq!(
            l.block_range(b1),
            FileRange {
                file: 4,
                offset: B,
                len: 1
            }
        );
        assert!(l.block(p4, 2).is_none());
        // Second piece of the last file starts a piece into the file.
        let last = l.piece(6).unwrap();
        assert_eq!(
            l.piece_range(last),
            FileRange {
                file: 6,
                offset: 4 * B,
                len: 1
            }
        );
        assert!(l.piece(7).is_none());
    }

    #[test]
    fn wire_block_validation() {
        let l = layout(2 * BLOCK_SIZE, &[3 * B - 10]);
        assert!(l.block_at(0, 0, BLOCK_SIZE).is_some());
        assert!(l.block_at(1, 0, BLOCK_SIZE - 10).is_some());
        assert!(l.block_at(1, 0, BLOCK_SIZE).is_none(), "wrong length");
        assert!(l.block_at(0, 1, BLOCK_SIZE).is_none(), "unaligned");
        assert!(l.block_at(1, BLOCK_SIZE, 1).is_none(), "past the piece");
        assert!(l.block_at(2, 0, 1).is_none(), "past the torrent");
    }
}
