//! Hashing files from disk on every core: used by `create` and by rechecks.
//!
//! Work is handed out in batches of whole pieces (at least 4 MiB per batch,
//! so tiny pieces do not turn into a lock-step of atomics); each worker keeps
//! one buffer and one open file. Positioned reads (`pread`) let workers share
//! nothing but the batch counter.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use sha1::{Digest, Sha1};

use crate::layout::Layout;
use crate::merkle::{BLOCK_SIZE, Hash, leaf_hash};
use crate::metainfo::Sha1Hash;

/// Largest read issued at once.
const READ_CHUNK: usize = 4 * 1024 * 1024;

/// The default worker count: every core.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

/// Hashes every piece of `layout` from the files at `paths` (parallel to
/// the layout's files) on `threads` threads, adding bytes hashed to
/// `progress` as it goes.
///
/// Returns each piece's hash as [`crate::merkle::FileTree::piece_hash`]
/// defines it, or `None` where the file is missing, short or unreadable.
pub fn hash_pieces(
    layout: &Layout,
    paths: &[PathBuf],
    threads: usize,
    progress: &AtomicU64,
) -> Vec<Option<Hash>> {
    hash_all(layout, paths, threads, progress, V1::No)
        .into_iter()
        .map(|h| h.map(|(v2, _)| v2))
        .collect()
}

/// Each piece's v1 hash (SHA-1) alone, for a v1 torrent (pieces over the
/// files end to end, no padding).
pub fn hash_pieces_v1(
    layout: &Layout,
    paths: &[PathBuf],
    threads: usize,
    progress: &AtomicU64,
) -> Vec<Option<Sha1Hash>> {
    hash_all(layout, paths, threads, progress, V1::Only)
        .into_iter()
        .map(|h| h.and_then(|(_, v1)| v1))
        .collect()
}

/// [`hash_pieces`], and each piece's v1 hash as a hybrid torrent has it:
/// SHA-1 of the piece, padded with zeros to the piece length when `pad`
/// (the pad file after each file of a multi-file torrent; a single file
/// has none), read once for both.
pub fn hash_pieces_hybrid(
    layout: &Layout,
    paths: &[PathBuf],
    threads: usize,
    progress: &AtomicU64,
    pad: bool,
) -> Vec<Option<(Hash, Sha1Hash)>> {
    let mode = if pad { V1::Padded } else { V1::Unpadded };
    hash_all(layout, paths, threads, progress, mode)
        .into_iter()
        .map(|h| h.map(|(v2, v1)| (v2, v1.expect("asked for"))))
        .collect()
}

type PieceHashes = (Hash, Option<Sha1Hash>);

/// Which SHA-1 a piece gets besides (or instead of) its v2 hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum V1 {
    /// None: v2 only.
    No,
    /// A hybrid's, padded with zeros to the piece length.
    Padded,
    /// A hybrid's of one file: as it is.
    Unpadded,
    /// A v1 torrent's, instead of the v2 hash (pieces over files end to
    /// end have no leaves).
    Only,
}

fn hash_all(
    layout: &Layout,
    paths: &[PathBuf],
    threads: usize,
    progress: &AtomicU64,
    v1: V1,
) -> Vec<Option<PieceHashes>> {
    let per_batch = u64::from((READ_CHUNK as u32 / layout.piece_length()).max(1));
    // u64: a u32 counter could wrap past the last piece and start over.
    let next = AtomicU64::new(0);
    let mut out = vec![None; layout.num_pieces() as usize];
    let results: Vec<Vec<(u32, Option<PieceHashes>)>> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads.max(1))
            .map(|_| {
                s.spawn(|| {
                    let mut w = Worker::default();
                    let mut done = Vec::new();
                    loop {
                        let start = next.fetch_add(per_batch, Ordering::Relaxed);
                        let pieces = u64::from(layout.num_pieces());
                        if start >= pieces {
                            break;
                        }
                        // Both below num_pieces, a u32.
                        let (start, end) = (start as u32, (start + per_batch).min(pieces) as u32);
                        for index in start..end {
                            let piece = layout.piece(index).expect("index < num_pieces");
                            done.push((index, w.hash_piece(layout, paths, piece, progress, v1)));
                        }
                    }
                    done
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().expect("hash worker panicked"))
            .collect()
    });
    for (index, hash) in results.into_iter().flatten() {
        out[index as usize] = hash;
    }
    out
}

#[derive(Default)]
struct Worker {
    buf: Vec<u8>,
    leaves: Vec<Hash>,
    file: Option<(usize, Option<File>)>,
}

impl Worker {
    fn hash_piece(
        &mut self,
        layout: &Layout,
        paths: &[PathBuf],
        piece: crate::layout::PieceIndex,
        progress: &AtomicU64,
        v1: V1,
    ) -> Option<PieceHashes> {
        let range = layout.piece_range(piece);
        self.leaves.clear();
        let mut sha1 = (v1 != V1::No).then(Sha1::new);
        // A v1 torrent's pieces have no leaves (and may span files).
        let want_leaves = v1 != V1::Only;
        let len = range.len as usize;
        // One range, but in a v1 layout, where a piece may span files (its
        // leaves then mean nothing and are not used).
        for seg in layout.segments(range) {
            if self.file.as_ref().is_none_or(|(i, _)| *i != seg.file) {
                self.file = Some((seg.file, File::open(&paths[seg.file]).ok()));
            }
            let file = self.file.as_ref().and_then(|(_, f)| f.as_ref())?;
            let mut done = 0usize;
            let seg_len = seg.len as usize;
            while done < seg_len {
                let n = (seg_len - done).min(READ_CHUNK);
                self.buf.resize(n, 0);
                file.read_exact_at(&mut self.buf[..n], seg.offset + done as u64)
                    .ok()?;
                if want_leaves {
                    self.leaves
                        .extend(self.buf[..n].chunks(BLOCK_SIZE as usize).map(leaf_hash));
                }
                if let Some(h) = &mut sha1 {
                    h.update(&self.buf[..n]);
                }
                done += n;
                progress.fetch_add(n as u64, Ordering::Relaxed);
            }
        }
        let v1 = sha1.map(|mut h| {
            // The pad file's zeros up to the piece length.
            let pad = if v1 == V1::Padded {
                layout.piece_length() as usize - len
            } else {
                0
            };
            self.buf.clear();
            self.buf.resize(pad, 0);
            h.update(&self.buf);
            h.finalize().into()
        });
        let v2 = if want_leaves {
            layout.piece_tree(piece).piece_hash(&self.leaves)
        } else {
            [0; 32]
        };
        Some((v2, v1))
    }
}
