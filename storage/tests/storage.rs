//! The storage engine end to end on real files: blocks go through the write
//! queue to the writer, pieces verify from leaf hashes, reads serve uploads,
//! resume survives an interrupted run.

#![allow(clippy::unwrap_used, reason = "test helpers")]

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use bytes::Bytes;
use sluice_storage::{
    BlockRef, CreateOptions, Metainfo, PieceIndex, Storage, StorageConfig, StorageEvent,
    content_paths, create,
};
use tokio::sync::mpsc;

const B: usize = 16 * 1024;
const WAIT: Duration = Duration::from_secs(20);

fn content(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A seeded copy of a torrent's content plus its metainfo.
struct Source {
    _dir: tempfile::TempDir,
    meta: Arc<Metainfo>,
    paths: Vec<PathBuf>,
}

impl Source {
    /// A directory: a multi-piece file with a short last piece, an empty
    /// file, a one-byte file and a one-block file; pieces of 32 KiB.
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("data");
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::write(root.join("big.bin"), content(5 * B + 777, 1)).unwrap();
        std::fs::write(root.join("empty"), b"").unwrap();
        std::fs::write(root.join("sub/one"), b"x").unwrap();
        std::fs::write(root.join("sub/block"), content(B, 2)).unwrap();
        let opts = CreateOptions::default().with_piece_length(Some(2 * B as u32));
        let meta = Arc::new(create(&root, &opts, &AtomicU64::new(0)).unwrap());
        let paths = content_paths(meta.info(), &root);
        Self {
            _dir: dir,
            meta,
            paths,
        }
    }

    fn block(&self, s: &Storage, block: BlockRef) -> Bytes {
        let r = s.layout().block_range(block);
        let mut buf = vec![0; r.len as usize];
        std::fs::File::open(&self.paths[r.file])
            .unwrap()
            .read_exact_at(&mut buf, r.offset)
            .unwrap();
        Bytes::from(buf)
    }

    fn all_blocks(&self, s: &Storage) -> Vec<BlockRef> {
        s.layout()
            .pieces()
            .flat_map(|p| s.layout().blocks(p))
            .collect()
    }
}

async fn open(
    meta: &Arc<Metainfo>,
    dir: &Path,
    config: StorageConfig,
) -> (Storage, mpsc::Receiver<StorageEvent>) {
    let (meta, dir) = (Arc::clone(meta), dir.to_owned());
    tokio::task::spawn_blocking(move || Storage::open(meta, &dir, config).unwrap())
        .await
        .unwrap()
}

/// Submits a block through the queue, waiting for a credit.
async fn put(s: &Storage, block: BlockRef, data: Bytes) -> bool {
    let credit = tokio::time::timeout(WAIT, s.queue().reserve(data.len() as u32))
        .await
        .expect("a credit within the timeout")
        .unwrap();
    s.submit(credit, block, data).unwrap()
}

async fn next_event(rx: &mut mpsc::Receiver<StorageEvent>) -> StorageEvent {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("an event in time")
        .expect("channel open")
}

fn files_equal(a: &[PathBuf], b: &[PathBuf]) {
    for (a, b) in a.iter().zip(b) {
        assert_eq!(
            std::fs::read(a).unwrap(),
            std::fs::read(b).unwrap(),
            "{}",
            b.display()
        );
    }
}

#[tokio::test]
async fn blocks_become_verified_pieces_and_read_back() {
    let src = Source::new();
    let out = tempfile::tempdir().unwrap();
    let target = out.path().join("data");
    let (s, mut rx) = open(&src.meta, &target, StorageConfig::default()).await;
    assert_eq!(s.verified_count(), 0);
    let pieces = s.layout().num_pieces();
    assert_eq!(pieces, 3 + 1 + 1);
    for block in src.all_blocks(&s) {
        assert!(put(&s, block, src.block(&s, block)).await);
    }
    let mut verified = Vec::new();
    for _ in 0..pieces {
        match next_event(&mut rx).await {
            StorageEvent::PieceVerified(p) => verified.push(p.get()),
            other => panic!("unexpected {other:?}"),
        }
    }
    verified.sort();
    assert_eq!(verified, (0..pieces).collect::<Vec<_>>());
    assert!(s.is_complete());
    for block in src.all_blocks(&s) {
        assert_eq!(s.read_block(block).unwrap(), src.block(&s, block));
    }
    let stats = s.queue_stats();
    assert_eq!((stats.queued_bytes, stats.reserved_bytes), (0, 0));
    s.close().unwrap();
    files_equal(&src.paths, &content_paths(src.meta.info(), &target));
}

#[tokio::test]
async fn a_corrupt_block_fails_its_piece_and_the_piece_can_be_fetched_again() {
    let src = Source::new();
    let out = tempfile::tempdir().unwrap();
    let target = out.path().join("data");
    let (s, mut rx) = open(&src.meta, &target, StorageConfig::default()).await;
    let piece = s.layout().piece(0).unwrap();
    let blocks: Vec<BlockRef> = s.layout().blocks(piece).collect();
    let mut bad = src.block(&s, blocks[1]).to_vec();
    bad[100] ^= 0xff;
    assert!(put(&s, blocks[0], src.block(&s, blocks[0])).await);
    assert!(put(&s, blocks[1], Bytes::from(bad.clone())).await);
    let bad_leaf = sluice_storage::merkle::leaf_hash(&bad);
    match next_event(&mut rx).await {
        StorageEvent::HashFailed { piece: p, leaves } => {
            assert_eq!(p, piece);
            assert_eq!(leaves[1], bad_leaf, "the leaves of what was written");
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(!s.has_piece(piece));
    assert!(matches!(
        s.read_block(blocks[0]),
        Err(sluice_storage::StorageError::NotHeld { .. })
    ));
    for &b in &blocks {
        assert!(
            put(&s, b, src.block(&s, b)).await,
            "the failed piece takes blocks again"
        );
    }
    assert_eq!(
        next_event(&mut rx).await,
        StorageEvent::PieceVerified(piece)
    );
    // Then the good leaves, to judge who sent the bad block.
    match next_event(&mut rx).await {
        StorageEvent::GoodLeaves { piece: p, leaves } => {
            assert_eq!(p, piece);
            assert_ne!(leaves[1], bad_leaf);
            assert_eq!(
                leaves[0],
                sluice_storage::merkle::leaf_hash(&src.block(&s, blocks[0]))
            );
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn a_duplicate_never_overwrites_verified_data() {
    let src = Source::new();
    let out = tempfile::tempdir().unwrap();
    let target = out.path().join("data");
    let (s, mut rx) = open(&src.meta, &target, StorageConfig::default()).await;
    let piece = s.layout().piece(3).unwrap(); // sub/block: one block
    let block = s.layout().block(piece, 0).unwrap();
    assert!(put(&s, block, src.block(&s, block)).await);
    assert_eq!(
        next_event(&mut rx).await,
        StorageEvent::PieceVerified(piece)
    );
    let garbage = Bytes::from(vec![0xAA; B]);
    assert!(!put(&s, block, garbage).await, "duplicate refused");
    assert_eq!(s.read_block(block).unwrap(), src.block(&s, block));
    assert_eq!(
        s.queue_stats().reserved_bytes,
        0,
        "the refused credit returned"
    );
}

#[tokio::test]
async fn a_wrong_length_is_refused_and_its_credit_returns() {
    let src = Source::new();
    let out = tempfile::tempdir().unwrap();
    let (s, _rx) = open(
        &src.meta,
        &out.path().join("data"),
        StorageConfig::default(),
    )
    .await;
    let block = s.layout().block(s.layout().piece(0).unwrap(), 0).unwrap();
    let credit = s.queue().try_reserve(B as u32).unwrap().unwrap();
    let err = s
        .submit(credit, block, Bytes::from(vec![0; 10]))
        .unwrap_err();
    assert!(err.to_string().contains("is 10 bytes"), "{err}");
    assert_eq!(s.queue_stats().reserved_bytes, 0);
}

/// The pieces `s` holds.
fn held_pieces(s: &Storage) -> Vec<u32> {
    s.layout()
        .pieces()
        .filter(|&p| s.has_piece(p))
        .map(PieceIndex::get)
        .collect()
}

/// Pieces count as held after a restart only if the resume file recorded
/// them after their data was flushed; everything else is missing again.
#[tokio::test]
async fn resume_after_an_interrupted_run() {
    let src = Source::new();
    let out = tempfile::tempdir().unwrap();
    let target = out.path().join("data");
    let resume = out.path().join("state/data.resume");
    let config = || StorageConfig::default().with_resume_file(Some(resume.clone()));
    let piece = |s: &Storage, i| s.layout().piece(i).unwrap();

    let (s, mut rx) = open(&src.meta, &target, config()).await;
    // Piece 0 complete and flushed; piece 1 half written.
    let p0 = piece(&s, 0);
    for b in s.layout().blocks(p0).collect::<Vec<_>>() {
        put(&s, b, src.block(&s, b)).await;
    }
    assert_eq!(next_event(&mut rx).await, StorageEvent::PieceVerified(p0));
    let b10 = s.layout().block(piece(&s, 1), 0).unwrap();
    put(&s, b10, src.block(&s, b10)).await;
    s.flush().unwrap();
    // Piece 4 verified but never flushed: then the process dies.
    let p4 = piece(&s, 4);
    let b40 = s.layout().block(p4, 0).unwrap();
    put(&s, b40, src.block(&s, b40)).await;
    assert_eq!(next_event(&mut rx).await, StorageEvent::PieceVerified(p4));
    std::mem::forget(s); // a crash: no close, no final flush
    drop(rx);

    let (s, _rx) = open(&src.meta, &target, config()).await;
    let held = held_pieces(&s);
    assert_eq!(held, vec![0], "only the flushed piece counts");
    drop(s);

    // --recheck trusts the data, not the file: pieces 0 and 4 are whole.
    let (s, _rx) = open(&src.meta, &target, config().with_recheck(true)).await;
    let held = held_pieces(&s);
    assert_eq!(held, vec![0, 4]);
    drop(s);

    // A damaged resume file is ignored with a warning and the data rechecked.
    std::fs::write(&resume, b"sluice-resume-01 but torn").unwrap();
    let (s, _rx) = open(&src.meta, &target, config()).await;
    let held = held_pieces(&s);
    assert_eq!(held, vec![0, 4]);
    drop(s);

    // big.bin deleted behind its back: the resume file no longer vouches
    // for anything; the recheck finds piece 4 (sub/block) whole, and no
    // piece of the deleted file is claimed.
    let (s, _rx) = open(&src.meta, &target, config()).await;
    drop(s);
    std::fs::remove_file(target.join("big.bin")).unwrap();
    let (s, _rx) = open(&src.meta, &target, config()).await;
    let held = held_pieces(&s);
    assert_eq!(held, vec![4], "pieces of a deleted file claimed");
}

/// With an emulated slow disk and a greedy downloader, the queue fills,
/// throttles, drains and recovers — and reserved + queued never exceeds the
/// capacity.
#[tokio::test]
async fn backpressure_holds_the_bound_under_a_slow_disk() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("f.bin");
    std::fs::write(&file, content(64 * B, 3)).unwrap();
    let meta = Arc::new(
        create(
            &file,
            &CreateOptions::default().with_piece_length(Some(4 * B as u32)),
            &AtomicU64::new(0),
        )
        .unwrap(),
    );
    let src = Source {
        _dir: dir,
        paths: vec![file],
        meta: Arc::clone(&meta),
    };
    let out = tempfile::tempdir().unwrap();
    let capacity = 8 * B as u64;
    let config = StorageConfig::default()
        .with_disk_queue(capacity)
        .with_low_watermark(4 * B as u64)
        .with_write_rate(Some(8 * 1024 * 1024));
    let (s, mut rx) = open(&meta, &out.path().join("f.bin"), config).await;
    let mut refused = 0;
    for block in src.all_blocks(&s) {
        let data = src.block(&s, block);
        let st = s.queue_stats();
        assert!(st.queued_bytes + st.reserved_bytes <= capacity, "{st:?}");
        let credit = match s.queue().try_reserve(data.len() as u32).unwrap() {
            Some(c) => c,
            None => {
                refused += 1;
                // Wait for recovery the way a session would.
                let c = tokio::time::timeout(WAIT, s.queue().reserve(data.len() as u32)).await;
                c.expect("recovery in time").unwrap()
            }
        };
        s.submit(credit, block, data).unwrap();
    }
    for _ in 0..s.layout().num_pieces() {
        assert!(matches!(
            next_event(&mut rx).await,
            StorageEvent::PieceVerified(_)
        ));
    }
    let st = s.queue_stats();
    assert!(refused > 0, "the queue never pushed back");
    assert!(st.throttled_total > Duration::ZERO);
    assert!(!st.throttled);
    assert_eq!((st.queued_bytes, st.reserved_bytes), (0, 0));
    s.close().unwrap();
}

#[tokio::test]
async fn a_credit_from_another_queue_is_refused() {
    let src = Source::new();
    let out = tempfile::tempdir().unwrap();
    let (s, _rx) = open(
        &src.meta,
        &out.path().join("data"),
        StorageConfig::default(),
    )
    .await;
    let other = sluice_storage::WriteQueue::new(1 << 20, 0);
    let block = s.layout().block(s.layout().piece(0).unwrap(), 0).unwrap();
    let credit = other.try_reserve(B as u32).unwrap().unwrap();
    let err = s.submit(credit, block, src.block(&s, block)).unwrap_err();
    assert!(
        matches!(err, sluice_storage::StorageError::ForeignCredit),
        "{err}"
    );
    assert_eq!(other.stats().reserved_bytes, 0, "the credit went home");
    assert_eq!(s.queue_stats().queued_bytes, 0);
}

/// Two torrents drawing on one node-wide queue share its bound.
#[tokio::test]
async fn torrents_can_share_one_write_queue() {
    let (a, b) = (Source::new(), Source::new());
    let out = tempfile::tempdir().unwrap();
    let queue = sluice_storage::WriteQueue::new(3 * B as u64, B as u64);
    let config = || StorageConfig::default().with_write_queue(Some(queue.clone()));
    let (sa, _ra) = open(&a.meta, &out.path().join("a"), config()).await;
    let (sb, _rb) = open(&b.meta, &out.path().join("b"), config()).await;
    let held: Vec<_> = (0..3)
        .map(|_| sa.queue().try_reserve(B as u32).unwrap().unwrap())
        .collect();
    assert!(
        sb.queue().try_reserve(1).unwrap().is_none(),
        "b sees a's reservations"
    );
    drop(held);
    assert!(sb.queue().try_reserve(B as u32).unwrap().is_some());
}

/// Shutdown never waits on a node that stopped reading events.
#[tokio::test]
async fn close_does_not_hang_when_nobody_reads_events() {
    let src = Source::new();
    let out = tempfile::tempdir().unwrap();
    let config = StorageConfig::default().with_event_capacity(1);
    let (s, rx) = open(&src.meta, &out.path().join("data"), config).await;
    for block in src.all_blocks(&s) {
        put(&s, block, src.block(&s, block)).await;
    }
    // Five pieces verify; the channel holds one event and nobody reads.
    let closed = tokio::task::spawn_blocking(move || s.close());
    tokio::time::timeout(WAIT, closed)
        .await
        .expect("close returned")
        .unwrap()
        .unwrap();
    drop(rx);
}

#[tokio::test]
async fn opening_complete_data_creates_missing_empty_files() {
    let src = Source::new();
    let root = src.paths[0].parent().unwrap().to_owned();
    let empty = root.join("empty");
    std::fs::remove_file(&empty).unwrap();
    let (s, _rx) = open(&src.meta, &root, StorageConfig::default()).await;
    assert!(s.is_complete());
    assert!(empty.is_file());
}

/// Verify on read: a seeded copy changed behind the storage's back is
/// caught when read for upload, with the whole-piece read cache and with
/// the block-by-block leaf path for pieces too large for it; the piece is
/// dropped (event, bitfield, resume file), the rest still served.
#[tokio::test]
async fn data_changed_on_disk_is_caught_on_read_and_the_piece_dropped() {
    // Read cache of 4 pieces' worth (whole pieces), then of none (leaves).
    for read_cache in [8 * B, 0] {
        let src = Source::new();
        let out = tempfile::tempdir().unwrap();
        let resume = out.path().join("data.resume");
        let root = src.paths[0].parent().unwrap().to_owned();
        let config = || {
            StorageConfig::default()
                .with_resume_file(Some(resume.clone()))
                .with_read_cache(read_cache)
        };
        let (s, mut rx) = open(&src.meta, &root, config()).await;
        assert!(s.is_complete());
        let p0 = s.layout().piece(0).unwrap();
        let p1 = s.layout().piece(1).unwrap();
        let b0 = s.layout().block(p0, 0).unwrap();
        let b1 = s.layout().block(p1, 1).unwrap();
        let read = |b| s.read_block(b);
        assert_eq!(read(b0).unwrap(), src.block(&s, b0));
        s.flush().unwrap();

        // One byte of piece 1 changes on disk (big.bin is file 0).
        let r = s.layout().block_range(b1);
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&src.paths[r.file])
            .unwrap();
        f.write_all_at(&[!src.block(&s, b1)[5]], r.offset + 5)
            .unwrap();

        let lost = read(b1).unwrap_err();
        assert!(lost.to_string().contains("no longer matches"), "{lost}");
        assert_eq!(next_event(&mut rx).await, StorageEvent::PieceLost(p1));
        assert!(!s.has_piece(p1) && !s.is_complete());
        assert!(read(b1).is_err(), "not served any more");
        assert!(s.read_block_cached(b1).is_none());
        // The rest is still served, checked.
        assert_eq!(read(b0).unwrap(), src.block(&s, b0));
        // The resume file no longer vouches for it.
        s.flush().unwrap();
        drop(s);
        let (s, _rx) = open(&src.meta, &root, config()).await;
        assert!(s.has_piece(p0) && !s.has_piece(p1));
        drop(s);
    }
}

/// Read-ahead checks a piece before its requests arrive: afterwards it is
/// served without a whole-piece check, and a piece changed on disk is
/// dropped by the read-ahead itself, before any of it is sent.
#[tokio::test]
async fn read_ahead_checks_a_piece_before_it_is_served() {
    for read_cache in [8 * B, 0] {
        let src = Source::new();
        let root = src.paths[0].parent().unwrap().to_owned();
        let config = StorageConfig::default()
            .with_read_cache(read_cache)
            .with_read_aheads(1);
        let (s, mut rx) = open(&src.meta, &root, config).await;
        let permit = s.read_ahead_permit().expect("one read-ahead may run");
        assert!(s.read_ahead_permit().is_none(), "only one at a time");
        drop(permit);
        assert!(s.read_ahead_permit().is_some(), "free again");
        let p0 = s.layout().piece(0).unwrap();
        let p1 = s.layout().piece(1).unwrap();
        assert!(!s.is_checked(p0), "nothing read yet");
        s.read_ahead(p0);
        assert!(s.is_checked(p0), "read cache {read_cache}");
        assert!(!s.is_checked(p1), "only the piece asked for");
        let b0 = s.layout().block(p0, 1).unwrap();
        assert_eq!(s.read_block(b0).unwrap(), src.block(&s, b0));

        // Piece 1 changes on disk: the read-ahead drops it.
        let b1 = s.layout().block(p1, 0).unwrap();
        let r = s.layout().block_range(b1);
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&src.paths[r.file])
            .unwrap();
        f.write_all_at(&[!src.block(&s, b1)[0]], r.offset).unwrap();
        s.read_ahead(p1);
        assert_eq!(next_event(&mut rx).await, StorageEvent::PieceLost(p1));
        assert!(!s.has_piece(p1) && !s.is_checked(p1));
        assert!(s.read_block(b1).is_err(), "not served");
    }
}

/// Readers of a piece nobody has checked yet, all at once (sessions of
/// several peers asking for the same rare piece): one checks it, the
/// others wait for that check and serve from it; the piece is hashed once.
#[tokio::test]
async fn a_piece_read_by_many_at_once_is_checked_once() {
    for read_cache in [8 * B, 0] {
        let src = Source::new();
        let root = src.paths[0].parent().unwrap().to_owned();
        let config = StorageConfig::default().with_read_cache(read_cache);
        let (s, _rx) = open(&src.meta, &root, config).await;
        let s = std::sync::Arc::new(s);
        let p0 = s.layout().piece(0).unwrap();
        let readers = 8;
        let start = std::sync::Arc::new(std::sync::Barrier::new(readers));
        let threads: Vec<_> = (0..readers)
            .map(|i| {
                let (s, start) = (s.clone(), start.clone());
                std::thread::spawn(move || {
                    let blocks = s.layout().blocks_in_piece(p0);
                    let b = s.layout().block(p0, i as u32 % blocks).unwrap();
                    start.wait();
                    (b, s.read_block(b).unwrap())
                })
            })
            .collect();
        for t in threads {
            let (b, data) = t.join().unwrap();
            assert_eq!(data, src.block(&s, b), "read cache {read_cache}");
        }
        assert_eq!(s.whole_checks(), 1, "read cache {read_cache}");
    }
}

/// With verify-on-read, only bytes that were checked are returned, even
/// when the file changes after a piece was read into the cache.
#[tokio::test]
async fn with_the_read_cache_a_piece_is_served_as_it_was_checked() {
    let src = Source::new();
    let root = src.paths[0].parent().unwrap().to_owned();
    let (s, _rx) = open(&src.meta, &root, StorageConfig::default()).await;
    let p0 = s.layout().piece(0).unwrap();
    let (b0, b1) = (
        s.layout().block(p0, 0).unwrap(),
        s.layout().block(p0, 1).unwrap(),
    );
    let good = src.block(&s, b1);
    assert_eq!(s.read_block(b0).unwrap(), src.block(&s, b0));
    let r = s.layout().block_range(b1);
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&src.paths[r.file])
        .unwrap();
    f.write_all_at(&[!good[0]], r.offset).unwrap();
    // Block 1 of the same piece comes from what was checked.
    assert_eq!(s.read_block_cached(b1).unwrap(), good);
}

/// A v1 torrent: pieces run over the files end to end, so blocks cross
/// from one file into the next. Blocks in order are hashed as they come,
/// blocks out of order are verified by reading the piece back; a bad
/// block fails its piece; reads, a recheck and the files all agree.
#[tokio::test]
async fn v1_pieces_across_files_verify_in_any_order() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    std::fs::create_dir_all(root.join("sub")).unwrap();
    std::fs::write(root.join("a.bin"), content(B + 5000, 7)).unwrap();
    std::fs::write(root.join("empty"), b"").unwrap();
    std::fs::write(root.join("sub/b.bin"), content(3 * B + 1, 8)).unwrap();
    std::fs::write(root.join("c.bin"), content(777, 9)).unwrap();
    let opts = CreateOptions::default()
        .with_piece_length(Some(2 * B as u32))
        .with_version(sluice_storage::MetaVersion::V1);
    let meta = Arc::new(create(&root, &opts, &AtomicU64::new(0)).unwrap());
    assert_eq!(meta.info().version(), sluice_storage::MetaVersion::V1);
    let paths = content_paths(meta.info(), &root);
    let all: Vec<u8> = paths
        .iter()
        .flat_map(|p| std::fs::read(p).unwrap())
        .collect();
    let out = tempfile::tempdir().unwrap();
    let target = out.path().join("data");
    let (s, mut rx) = open(&meta, &target, StorageConfig::default()).await;
    let layout = s.layout().clone();
    let pieces = layout.num_pieces();
    assert_eq!(u64::from(pieces), (all.len() as u64).div_ceil(2 * B as u64));
    let data = |b: BlockRef| {
        let at = u64::from(b.piece().get()) * u64::from(layout.piece_length())
            + u64::from(layout.block_offset(b));
        Bytes::copy_from_slice(&all[at as usize..at as usize + layout.block_len(b) as usize])
    };
    // Piece 0 with a corrupt block: it fails.
    let first: Vec<BlockRef> = layout.blocks(layout.piece(0).unwrap()).collect();
    let mut bad = data(first[1]).to_vec();
    bad[3] ^= 1;
    assert!(put(&s, first[0], data(first[0])).await);
    assert!(put(&s, first[1], Bytes::from(bad)).await);
    assert!(matches!(
        next_event(&mut rx).await,
        StorageEvent::HashFailed { .. }
    ));
    // Then every piece: the first out of order, the rest in order.
    for p in layout.pieces() {
        let mut blocks: Vec<BlockRef> = layout.blocks(p).collect();
        if p.get() == 0 {
            blocks.reverse();
        }
        for b in blocks {
            assert!(put(&s, b, data(b)).await);
        }
    }
    let mut verified = 0;
    while verified < pieces {
        match next_event(&mut rx).await {
            StorageEvent::PieceVerified(_) => verified += 1,
            StorageEvent::GoodLeaves { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(s.is_complete());
    for p in layout.pieces() {
        for b in layout.blocks(p) {
            assert_eq!(s.read_block(b).unwrap(), data(b), "{b:?}");
        }
    }
    s.close().unwrap();
    drop(s);
    files_equal(&paths, &content_paths(meta.info(), &target));
    let found = sluice_storage::recheck(&meta, &target, 2, &AtomicU64::new(0));
    assert!(found.all(), "a recheck finds every piece");
}
