//! One torrent's data on disk: the writer thread behind the write queue,
//! piece verification from leaf hashes, reads for upload, flush and resume.
//!
//! Ownership: the writer thread is the only code that writes file data and
//! the only code that moves a piece to *verified*; [`Storage::submit`] and
//! readers only look. See `docs/STATE.md` for the piece states.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::cache::PieceCache;
use crate::error::StorageError;
use crate::hash::{default_threads, hash_pieces, hash_pieces_v1};
use crate::layout::{Bitfield, BlockRef, FileRange, Layout, PieceIndex};
use crate::merkle::{BLOCK_SIZE, FileTree, Hash, PieceTree, leaf_hash};
use crate::metainfo::{Info, MetaVersion, Metainfo, Sha1Hash};
use crate::queue::{Credit, QueueStats, WriteQueue};
use crate::resume;

const MIB: u64 = 1024 * 1024;

/// Storage settings. Every field has a `with_*` setter documenting its unit
/// and default.
#[derive(Debug, Clone)]
pub struct StorageConfig {
    disk_queue: u64,
    low_watermark: Option<u64>,
    write_rate: Option<u64>,
    max_open_files: usize,
    event_capacity: usize,
    hash_threads: usize,
    resume_file: Option<PathBuf>,
    recheck: bool,
    queue: Option<WriteQueue>,
    verify_reads: bool,
    read_cache: usize,
    leaf_cache: usize,
    read_aheads: usize,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            disk_queue: 64 * MIB,
            low_watermark: None,
            write_rate: None,
            max_open_files: 128,
            event_capacity: 1024,
            hash_threads: default_threads(),
            resume_file: None,
            recheck: false,
            queue: None,
            verify_reads: true,
            read_cache: 16 * MIB as usize,
            leaf_cache: 2 * MIB as usize,
            read_aheads: 4,
        }
    }
}

impl StorageConfig {
    /// Write-queue capacity in bytes: requested-but-not-arrived plus
    /// arrived-but-not-written never exceeds it. Default 64 MiB.
    pub fn with_disk_queue(mut self, bytes: u64) -> Self {
        self.disk_queue = bytes;
        self
    }

    /// Bytes the queue must drain to before a throttled queue accepts
    /// reservations again. Default ¾ of the disk queue.
    pub fn with_low_watermark(mut self, bytes: u64) -> Self {
        self.low_watermark = Some(bytes);
        self
    }

    /// Emulated disk speed in bytes/s for the writer (tests, demos, testnet
    /// slow disks). Default: none (as fast as the disk goes).
    pub fn with_write_rate(mut self, bytes_per_sec: Option<u64>) -> Self {
        self.write_rate = bytes_per_sec.filter(|&r| r > 0);
        self
    }

    /// Most file handles kept open at once. Default 128.
    pub fn with_max_open_files(mut self, n: usize) -> Self {
        self.max_open_files = n.max(1);
        self
    }

    /// Capacity of the storage event channel. When it is full the writer
    /// waits, the queue fills and requesting stops. Default 1024.
    pub fn with_event_capacity(mut self, n: usize) -> Self {
        self.event_capacity = n.max(1);
        self
    }

    /// Threads used to recheck data. Default: every core.
    pub fn with_hash_threads(mut self, n: usize) -> Self {
        self.hash_threads = n.max(1);
        self
    }

    /// Where verified pieces are recorded. Default: nowhere (every open
    /// rechecks what is on disk).
    pub fn with_resume_file(mut self, path: Option<PathBuf>) -> Self {
        self.resume_file = path;
        self
    }

    /// Ignore the resume file and re-verify everything on disk. Default off.
    pub fn with_recheck(mut self, recheck: bool) -> Self {
        self.recheck = recheck;
        self
    }

    /// Draw credits from this queue (shared by every torrent of a node, so
    /// `--disk-queue` bounds the node). Default: a queue of this torrent's
    /// own, sized by [`Self::with_disk_queue`] and
    /// [`Self::with_low_watermark`].
    pub fn with_write_queue(mut self, queue: Option<WriteQueue>) -> Self {
        self.queue = queue;
        self
    }

    /// Check what is read for upload against the piece layer before it is
    /// sent: a piece changed on disk behind our back is dropped (and
    /// fetched again) instead of served. Default on.
    pub fn with_verify_reads(mut self, on: bool) -> Self {
        self.verify_reads = on;
        self
    }

    /// Bytes of checked pieces kept in memory for upload, so a piece is
    /// read and hashed once however its blocks are requested. Pieces
    /// larger than a quarter of it are checked block by block against
    /// their leaf hashes instead. Default 16 MiB.
    pub fn with_read_cache(mut self, bytes: usize) -> Self {
        self.read_cache = bytes;
        self
    }

    /// Most pieces read and checked ahead of their requests at once, over
    /// all peers ([`Storage::read_ahead_permit`]); each holds at most a
    /// quarter of the read cache in memory while it runs. Default 4.
    pub fn with_read_aheads(mut self, n: usize) -> Self {
        self.read_aheads = n;
        self
    }

    /// Bytes of leaf hashes kept for pieces checked on read (32 bytes per
    /// 16 KiB block: 2 MiB covers 1 GiB of pieces), so a piece evicted
    /// from the read cache is not read and hashed whole again. Default
    /// 2 MiB.
    pub fn with_leaf_cache(mut self, bytes: usize) -> Self {
        self.leaf_cache = bytes;
        self
    }

    pub fn disk_queue(&self) -> u64 {
        self.disk_queue
    }

    /// The queue [`Self::with_write_queue`] gave, or a new one as configured.
    fn make_queue(&self) -> WriteQueue {
        self.queue.clone().unwrap_or_else(|| {
            let low = self.low_watermark.unwrap_or(self.disk_queue / 4 * 3);
            WriteQueue::new(self.disk_queue, low)
        })
    }
}

fn is_read_only(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::ReadOnlyFilesystem
    )
}

/// Locks a mutex whose holders leave it consistent at every step, so a
/// panic elsewhere (poisoning) does not matter.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What the writer reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorageEvent {
    /// All blocks of the piece are on disk and its merkle hash matched.
    PieceVerified(PieceIndex),
    /// All blocks arrived but the piece hash did not match; the piece is
    /// missing again. `leaves` are the leaf hashes of what was written,
    /// one per block: once the piece verifies, the blocks whose leaf
    /// differs from [`StorageEvent::GoodLeaves`] tell who sent bad data.
    HashFailed {
        piece: PieceIndex,
        leaves: Vec<Hash>,
    },
    /// Sent right after `PieceVerified` for a piece that failed before:
    /// its verified leaf hashes.
    GoodLeaves {
        piece: PieceIndex,
        leaves: Vec<Hash>,
    },
    /// A block could not be written; it is missing again.
    WriteFailed { block: BlockRef, error: String },
    /// A verified piece read for upload no longer matches its hash (the
    /// file changed behind our back): it is missing again, not served.
    PieceLost(PieceIndex),
}

/// Where each file of a torrent lives: a single-file torrent's content is
/// the file itself; otherwise a directory holding the file tree.
pub fn content_paths(info: &Info, content: &Path) -> Vec<PathBuf> {
    if info.is_single_file() {
        return vec![content.to_owned()];
    }
    info.files()
        .iter()
        .map(|f| f.path.iter().fold(content.to_owned(), |p, c| p.join(c)))
        .collect()
}

/// The hash piece `piece` must have: its piece-layer entry, or the file's
/// root when the file has no piece layer.
pub fn expected_piece_hash(meta: &Metainfo, layout: &Layout, piece: PieceIndex) -> Hash {
    let file = layout.piece_file(piece);
    let layer = meta.piece_layer(file);
    if layer.is_empty() {
        meta.info().files()[file]
            .pieces_root
            .expect("a file holding a piece is not empty")
    } else {
        layer[(piece.get() - layout.file_pieces(file).start) as usize]
    }
}

/// Hashes whatever is on disk at `content` and returns the pieces that
/// match. Read-only: creates and changes nothing.
pub fn recheck(meta: &Metainfo, content: &Path, threads: usize, progress: &AtomicU64) -> Bitfield {
    let layout = Layout::new(meta.info());
    let paths = content_paths(meta.info(), content);
    if meta.info().version() == MetaVersion::V1 {
        let hashes = hash_pieces_v1(&layout, &paths, threads, progress);
        return layout
            .pieces()
            .map(|p| hashes[p.as_usize()].as_ref() == meta.info().v1_piece_hash(p.get()))
            .collect();
    }
    let hashes = hash_pieces(&layout, &paths, threads, progress);
    layout
        .pieces()
        .map(|p| hashes[p.as_usize()] == Some(expected_piece_hash(meta, &layout, p)))
        .collect()
}

/// A block received and waiting for the writer. Holds its credit, so the
/// bytes return when it is written or dropped.
#[derive(Debug)]
struct PendingWrite {
    block: BlockRef,
    data: Bytes,
    credit: Credit,
}

/// Blocks waiting for this torrent's writer. Bounded through the credits:
/// every entry holds one.
#[derive(Debug, Default)]
struct Writes {
    state: Mutex<WritesState>,
    wake: Condvar,
}

#[derive(Debug, Default)]
struct WritesState {
    pending: VecDeque<PendingWrite>,
    closed: bool,
    /// The writer is asleep on the condvar (only then is a wake-up, a
    /// syscall, worth making).
    writer_waiting: bool,
}

impl Writes {
    fn lock(&self) -> MutexGuard<'_, WritesState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues a write; hands it back when the writer has stopped.
    fn push(&self, w: PendingWrite) -> Result<(), PendingWrite> {
        let mut state = self.lock();
        if state.closed {
            return Err(w);
        }
        state.pending.push_back(w);
        let wake = state.writer_waiting;
        drop(state);
        if wake {
            self.wake.notify_one();
        }
        Ok(())
    }

    /// Blocks until a write is pending; `None` once closed and drained.
    fn next(&self) -> Option<PendingWrite> {
        let mut state = self.lock();
        loop {
            if let Some(w) = state.pending.pop_front() {
                return Some(w);
            }
            if state.closed {
                return None;
            }
            state.writer_waiting = true;
            state = self.wake.wait(state).unwrap_or_else(|p| p.into_inner());
            state.writer_waiting = false;
        }
    }

    fn close(&self) {
        self.lock().closed = true;
        self.wake.notify_all();
    }

    fn is_closed(&self) -> bool {
        self.lock().closed
    }
}

#[derive(Debug)]
struct Partial {
    leaves: Vec<Option<Hash>>,
    have: u32,
    /// A v1 piece's SHA-1 over its blocks so far, and the next block it
    /// takes: blocks hashed as they are written, in order. `None` once one
    /// came out of order (the piece is then read back whole at the end),
    /// and for v2 pieces, which verify from their leaves.
    sha1: Option<(sha1::Sha1, u32)>,
}

impl Partial {
    fn new(blocks: usize, v1: bool) -> Self {
        Self {
            leaves: vec![None; blocks],
            have: 0,
            sha1: v1.then(|| (sha1::Sha1::default(), 0)),
        }
    }
}

#[derive(Debug)]
struct Pieces {
    verified: Bitfield,
    /// Pieces with some blocks written, and those blocks' leaf hashes.
    partial: HashMap<PieceIndex, Partial>,
    /// Files written since the last flush.
    dirty: BTreeSet<usize>,
    /// Pieces that failed their hash check and have not verified since
    /// (at most one entry per piece).
    failed: HashSet<PieceIndex>,
    /// Bumped on every change to `verified` (set or, for a piece lost on
    /// read, cleared).
    generation: u64,
    /// Per piece, bumped on each change of its verified bit: a check that
    /// started before a change drops nothing.
    stamps: Vec<u32>,
    /// The `generation` the resume file last recorded (`None`: not written
    /// yet).
    saved: Option<u64>,
}

#[derive(Debug)]
struct FilePool {
    paths: Vec<PathBuf>,
    /// A complete torrent's files are opened read-only, until a piece is
    /// lost and must be written again.
    writable: AtomicBool,
    capacity: usize,
    open: Mutex<OpenFiles>,
}

/// Open handles by file index, each with the tick it was last used at.
#[derive(Debug, Default)]
struct OpenFiles {
    tick: u64,
    handles: HashMap<usize, (Arc<File>, u64)>,
}

impl FilePool {
    /// From now on files open for writing too; open read-only handles
    /// are dropped so they reopen.
    fn make_writable(&self) {
        if !self.writable.swap(true, Ordering::Relaxed) {
            self.open
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .handles
                .clear();
        }
    }

    /// An open handle to file `i`, evicting the least recently used handle
    /// when `capacity` are open.
    fn get(&self, i: usize) -> Result<Arc<File>, StorageError> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.tick += 1;
        let tick = open.tick;
        if let Some((f, used)) = open.handles.get_mut(&i) {
            *used = tick;
            return Ok(Arc::clone(f));
        }
        if open.handles.len() >= self.capacity
            && let Some(lru) = open
                .handles
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(k, _)| *k)
        {
            open.handles.remove(&lru);
        }
        let path = &self.paths[i];
        let writable = self.writable.load(Ordering::Relaxed);
        let opened = OpenOptions::new().read(true).write(writable).open(path);
        let f = match opened {
            // Content on a read-only mount (or not ours to write) can still
            // be served; a write to it fails and is reported as such.
            Err(e) if writable && is_read_only(&e) => OpenOptions::new().read(true).open(path),
            r => r,
        }
        .map_err(StorageError::io("opening", path))?;
        let f = Arc::new(f);
        open.handles.insert(i, (Arc::clone(&f), tick));
        Ok(f)
    }
}

#[derive(Debug)]
struct Inner {
    meta: Arc<Metainfo>,
    layout: Layout,
    files: FilePool,
    queue: WriteQueue,
    writes: Writes,
    pieces: Mutex<Pieces>,
    events: mpsc::Sender<StorageEvent>,
    config: StorageConfig,
    flush_lock: Mutex<()>,
    /// Whole pieces checked on read, served from memory.
    read_cache: Mutex<PieceCache<Bytes>>,
    /// Leaf hashes of pieces checked on read.
    leaf_cache: Mutex<PieceCache<Arc<[Hash]>>>,
    /// Read-aheads that may run at once.
    read_aheads: Arc<tokio::sync::Semaphore>,
    /// Pieces being checked whole on read right now; other readers of one
    /// wait for that check (`checked` wakes them) instead of repeating it.
    checking: Mutex<HashSet<PieceIndex>>,
    checked: Condvar,
    /// Whole-piece checks on read so far.
    whole_checks: AtomicU64,
    /// Files' trees from the piece layer up, built on the first hash
    /// request for each (at most one per file).
    piece_trees: Mutex<HashMap<Hash, Arc<PieceTree>>>,
}

/// An opened torrent on disk. Dropping it (or [`Storage::close`]) lets the
/// writer finish what is queued, then flushes.
#[derive(Debug)]
pub struct Storage {
    inner: Arc<Inner>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

impl Storage {
    /// Opens (creating files as needed) the data of `meta` at `content` (the
    /// file of a single-file torrent, else its directory), establishes which
    /// pieces are verified (resume file, else a recheck of what exists) and
    /// starts the writer. Returns the storage and its event stream.
    ///
    /// Blocking (may hash the data): call from a blocking context.
    pub fn open(
        meta: Arc<Metainfo>,
        content: &Path,
        config: StorageConfig,
    ) -> Result<(Self, mpsc::Receiver<StorageEvent>), StorageError> {
        let layout = Layout::new(meta.info());
        let paths = content_paths(meta.info(), content);
        let (verified, rechecked) = initial_pieces(&meta, &layout, content, &paths, &config);
        let complete = verified.all();
        for (i, path) in paths.iter().enumerate() {
            // A complete torrent is served read-only and its files are left
            // as they are; but an empty file costs nothing to create.
            let len = layout.file_len(i);
            if !complete || (len == 0 && !path.exists()) {
                prepare_file(path, len)?;
            }
        }
        // What a recheck found may sit only in the page cache of a run that
        // died: make it durable before a resume file vouches for it.
        let dirty = if rechecked {
            layout
                .pieces()
                .filter(|p| verified[p.as_usize()])
                .flat_map(|p| layout.segments(layout.piece_range(p)).map(|r| r.file))
                .collect()
        } else {
            BTreeSet::new()
        };
        let (tx, rx) = mpsc::channel(config.event_capacity);
        let inner = Arc::new(Inner {
            files: FilePool {
                paths,
                writable: AtomicBool::new(!complete),
                capacity: config.max_open_files,
                open: Mutex::new(OpenFiles::default()),
            },
            queue: config.make_queue(),
            writes: Writes::default(),
            pieces: Mutex::new(Pieces {
                // A loaded resume file already says what it says.
                saved: (!rechecked).then_some(0),
                generation: 0,
                stamps: vec![0; layout.num_pieces() as usize],
                verified,
                partial: HashMap::new(),
                failed: HashSet::new(),
                dirty,
            }),
            events: tx,
            read_cache: Mutex::new(PieceCache::new(config.read_cache)),
            leaf_cache: Mutex::new(PieceCache::new(config.leaf_cache)),
            read_aheads: Arc::new(tokio::sync::Semaphore::new(config.read_aheads)),
            checking: Mutex::new(HashSet::new()),
            checked: Condvar::new(),
            whole_checks: AtomicU64::new(0),
            piece_trees: Mutex::new(HashMap::new()),
            layout,
            meta,
            config,
            flush_lock: Mutex::new(()),
        });
        let writer = std::thread::Builder::new()
            .name(format!(
                "sluice-writer-{}",
                inner.meta.info().info_hash().short()
            ))
            .spawn({
                let inner = Arc::clone(&inner);
                move || writer_loop(&inner)
            })
            .map_err(StorageError::io("starting the writer thread for", content))?;
        Ok((
            Self {
                inner,
                writer: Mutex::new(Some(writer)),
            },
            rx,
        ))
    }

    fn pieces(&self) -> MutexGuard<'_, Pieces> {
        self.inner.pieces()
    }

    pub fn metainfo(&self) -> &Arc<Metainfo> {
        &self.inner.meta
    }

    pub fn layout(&self) -> &Layout {
        &self.inner.layout
    }

    /// The tree of the file whose `pieces root` is `root`, from its piece
    /// layer up, to answer BEP 52 hash requests: built on first use and
    /// kept while the torrent is open. `None` for a root none of our
    /// files has, or a file without a piece layer (one piece or less).
    ///
    /// Builds outside the lock (two sessions asking at once may both
    /// build; one is kept): a layer of a million pieces takes a while.
    pub fn piece_tree(&self, root: &Hash) -> Option<Arc<PieceTree>> {
        if let Some(t) = lock(&self.inner.piece_trees).get(root) {
            return Some(Arc::clone(t));
        }
        let meta = &self.inner.meta;
        let piece_length = meta.info().piece_length();
        let (i, file) = meta
            .info()
            .files()
            .iter()
            .enumerate()
            .find(|(_, f)| f.pieces_root.as_ref() == Some(root))?;
        let shape = FileTree::new(file.length, piece_length);
        if !shape.has_piece_layer() {
            return None;
        }
        let tree = Arc::new(PieceTree::new(shape, meta.piece_layer(i)));
        let mut trees = lock(&self.inner.piece_trees);
        Some(Arc::clone(trees.entry(*root).or_insert(tree)))
    }

    /// The write queue: reserve a credit here before requesting a block.
    pub fn queue(&self) -> &WriteQueue {
        &self.inner.queue
    }

    pub fn queue_stats(&self) -> QueueStats {
        self.inner.queue.stats()
    }

    /// A copy of the verified-pieces bitfield.
    pub fn verified(&self) -> Bitfield {
        self.pieces().verified.clone()
    }

    pub fn verified_count(&self) -> u32 {
        self.pieces().verified.count_ones() as u32
    }

    pub fn is_complete(&self) -> bool {
        self.pieces().verified.all()
    }

    pub fn has_piece(&self, piece: PieceIndex) -> bool {
        self.pieces().verified[piece.as_usize()]
    }

    /// Hands a received block to the writer, consuming the credit that was
    /// reserved when it was requested. Returns `Ok(false)` (and returns the
    /// credit) when the piece is already verified or the block already
    /// written: a duplicate never overwrites data.
    ///
    /// Does not block: the credit already paid for the queue space.
    pub fn submit(
        &self,
        mut credit: Credit,
        block: BlockRef,
        data: Bytes,
    ) -> Result<bool, StorageError> {
        if !self.inner.queue.owns(&credit) {
            return Err(StorageError::ForeignCredit);
        }
        let want = self.inner.layout.block_len(block);
        if data.len() != want as usize || credit.bytes() != want {
            return Err(StorageError::WrongLength {
                block,
                got: data.len(),
                want,
            });
        }
        if self.inner.is_duplicate(&self.pieces(), block) {
            return Ok(false);
        }
        credit.mark_queued();
        match self.inner.writes.push(PendingWrite {
            block,
            data,
            credit,
        }) {
            Ok(()) => Ok(true),
            Err(_) => Err(StorageError::Closed),
        }
    }

    /// Reads a block of a verified piece, for upload.
    ///
    /// Blocking (a positioned read): call from a blocking context.
    ///
    /// With verify-on-read (the default) only checked bytes are returned:
    /// the first read of a piece reads and hashes it whole and keeps its
    /// leaf hashes (and its bytes in the read cache when it fits); later
    /// blocks come from the read cache or are hashed against their leaf.
    /// So each byte sent is hashed at most twice, however small the cache. Data that no longer matches
    /// loses the piece ([`StorageEvent::PieceLost`]) and fails with
    /// [`StorageError::PieceLost`].
    pub fn read_block(&self, block: BlockRef) -> Result<Bytes, StorageError> {
        let piece = block.piece();
        if !self.has_piece(piece) {
            return Err(StorageError::NotHeld { piece });
        }
        if !self.inner.config.verify_reads {
            return self.inner.read_raw(block);
        }
        if let Some(b) = self.cached(block) {
            return Ok(b);
        }
        // A piece not checked yet is checked by one reader at a time; the
        // others wait and then serve from what that check left.
        let _turn = if lock(&self.inner.leaf_cache).contains(piece) {
            None
        } else {
            let turn = CheckTurn::take(&self.inner, piece);
            if !self.has_piece(piece) {
                return Err(StorageError::NotHeld { piece });
            }
            if let Some(b) = self.cached(block) {
                return Ok(b);
            }
            Some(turn)
        };
        let stamp = self.inner.pieces().stamps[piece.as_usize()];
        match self.read_checked(block, stamp) {
            // A file shorter than the torrent says has changed too.
            Err(StorageError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::UnexpectedEof =>
            {
                Err(self.inner.lose(piece, stamp))
            }
            r => r,
        }
    }

    /// `read_block` with verify-on-read, for a piece whose verification
    /// is `stamp`.
    fn read_checked(&self, block: BlockRef, stamp: u32) -> Result<Bytes, StorageError> {
        let piece = block.piece();
        let known = lock(&self.inner.leaf_cache).get(piece);
        if let Some(leaves) = known {
            // Checked before (its bytes since evicted): this block alone.
            return self.checked_block(block, &leaves, stamp);
        }
        // First read of the piece: check it whole, keep its leaf hashes
        // (and, when it fits, its bytes).
        self.inner.whole_checks.fetch_add(1, Ordering::Relaxed);
        if self.fits_read_cache(piece) {
            let data = self.inner.read_piece(piece)?;
            let leaves: Vec<Hash> = data.chunks(BLOCK_SIZE as usize).map(leaf_hash).collect();
            let sha1 = self.inner.v1_only().then(|| sha1_of(&data));
            self.inner.check_leaves(piece, &leaves, sha1, stamp)?;
            self.keep_leaves(piece, leaves);
            let data = Bytes::from(data);
            let whole = data.len();
            lock(&self.inner.read_cache).insert(piece, data.clone(), whole);
            return Ok(self.slice(&data, block));
        }
        // Block by block: a large piece is never held whole.
        let mut sha1 = self.inner.v1_only().then(sha1::Sha1::default);
        let leaves = self
            .inner
            .layout
            .blocks(piece)
            .map(|b| {
                self.inner.read_raw(b).map(|d| {
                    if let Some(h) = &mut sha1 {
                        sha1::Digest::update(h, &d);
                    }
                    leaf_hash(&d)
                })
            })
            .collect::<Result<Vec<Hash>, _>>()?;
        let sha1 = sha1.map(|h| sha1::Digest::finalize(h).into());
        self.inner.check_leaves(piece, &leaves, sha1, stamp)?;
        let leaves = self.keep_leaves(piece, leaves);
        self.checked_block(block, &leaves, stamp)
    }

    fn keep_leaves(&self, piece: PieceIndex, leaves: Vec<Hash>) -> Arc<[Hash]> {
        let leaves: Arc<[Hash]> = leaves.into();
        let bytes = leaves.len() * 32;
        lock(&self.inner.leaf_cache).insert(piece, Arc::clone(&leaves), bytes);
        leaves
    }

    /// A block read from disk and checked against its known leaf hash.
    fn checked_block(
        &self,
        block: BlockRef,
        leaves: &[Hash],
        stamp: u32,
    ) -> Result<Bytes, StorageError> {
        let data = self.inner.read_raw(block)?;
        if leaf_hash(&data) != leaves[block.index() as usize] {
            return Err(self.inner.lose(block.piece(), stamp));
        }
        Ok(data)
    }

    fn fits_read_cache(&self, piece: PieceIndex) -> bool {
        self.inner.layout.piece_len(piece) as usize <= self.inner.config.read_cache / 4
    }

    fn slice(&self, piece: &Bytes, block: BlockRef) -> Bytes {
        let at = self.inner.layout.block_offset(block) as usize;
        piece.slice(at..at + self.inner.layout.block_len(block) as usize)
    }

    /// The block from the read cache, if its piece is there.
    fn cached(&self, block: BlockRef) -> Option<Bytes> {
        let piece = lock(&self.inner.read_cache).get(block.piece())?;
        Some(self.slice(&piece, block))
    }

    /// Reads and checks a verified piece ahead of the requests for it, so
    /// that serving them finds it checked (verify on read). A session
    /// calls this for the next piece in a peer's queue while it sends the
    /// current one: the check overlaps the sending instead of stalling
    /// it. Does nothing without verify on read or for a piece checked
    /// already; a piece that fails its check is dropped as by
    /// [`Storage::read_block`], whose caller then sees the error.
    ///
    /// Blocking: call from a blocking context.
    pub fn read_ahead(&self, piece: PieceIndex) {
        if !self.inner.config.verify_reads || !self.has_piece(piece) || self.is_checked(piece) {
            return;
        }
        if let Some(first) = self.inner.layout.blocks(piece).next()
            && let Err(e) = self.read_block(first)
        {
            debug!(%piece, error = %e, "read-ahead failed");
        }
    }

    /// Leave to run one [`Storage::read_ahead`], if fewer than the
    /// configured number run now; hold it until the read-ahead returns.
    pub fn read_ahead_permit(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        Arc::clone(&self.inner.read_aheads).try_acquire_owned().ok()
    }

    /// Whole-piece checks on read (verify on read) since the torrent was
    /// opened: one per piece served, unless the caches dropped it.
    pub fn whole_checks(&self) -> u64 {
        self.inner.whole_checks.load(Ordering::Relaxed)
    }

    /// Whether a verified piece can be served without checking it whole
    /// first: its bytes or its leaf hashes are at hand (always true
    /// without verify on read).
    pub fn is_checked(&self, piece: PieceIndex) -> bool {
        !self.inner.config.verify_reads
            || lock(&self.inner.read_cache).contains(piece)
            || lock(&self.inner.leaf_cache).contains(piece)
    }

    /// Reads a block of a verified piece only if that cannot block: the
    /// data is in the page cache (Linux `preadv2` with `RWF_NOWAIT`).
    /// `None` means "use [`Storage::read_block`] from a blocking context"
    /// (not cached, partly cached, or not supported here).
    ///
    /// Non-blocking: fine on an async thread.
    /// With verify-on-read, a block comes from the read cache, or (a piece
    /// checked before) is hashed here against its leaf; a first read of a
    /// piece is left to [`Storage::read_block`].
    pub fn read_block_cached(&self, block: BlockRef) -> Option<Bytes> {
        if !self.has_piece(block.piece()) {
            return None;
        }
        let verify = self.inner.config.verify_reads;
        if verify && let Some(b) = self.cached(block) {
            return Some(b);
        }
        let leaves = if verify {
            // Not checked yet: the blocking read checks the whole piece.
            Some(lock(&self.inner.leaf_cache).get(block.piece())?)
        } else {
            None
        };
        let mut segments = self
            .inner
            .layout
            .segments(self.inner.layout.block_range(block));
        let range = segments.next()?;
        if segments.next().is_some() {
            // Across two files (v1): the blocking read.
            return None;
        }
        let file = self.inner.files.get(range.file).ok()?;
        let buf = nowait::pread(&file, range.len as usize, range.offset)?;
        // A mismatch is left to the blocking read, which drops the piece.
        match leaves {
            Some(l) if leaf_hash(&buf) != l[block.index() as usize] => None,
            _ => Some(Bytes::from(buf)),
        }
    }

    /// Makes every verified piece durable: fsyncs the files written since
    /// the last flush, then records the pieces verified before that fsync in
    /// the resume file. A piece verified meanwhile waits for the next flush.
    ///
    /// Blocking: call from a blocking context.
    pub fn flush(&self) -> Result<(), StorageError> {
        self.inner.flush()
    }

    /// Stops accepting writes, lets the writer finish what is queued, and
    /// flushes.
    ///
    /// Blocking: call from a blocking context. Later calls only flush;
    /// [`Storage::submit`] fails with [`StorageError::Closed`] from now on.
    pub fn close(&self) -> Result<(), StorageError> {
        self.stop_writer()?;
        self.inner.flush()
    }

    fn stop_writer(&self) -> Result<(), StorageError> {
        self.inner.writes.close();
        let writer = self.writer.lock().unwrap_or_else(|p| p.into_inner()).take();
        match writer.map(JoinHandle::join) {
            Some(Err(_)) => Err(StorageError::WriterGone),
            _ => Ok(()),
        }
    }
}

impl Drop for Storage {
    fn drop(&mut self) {
        let running = self
            .writer
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .is_some();
        if running && let Err(e) = self.close() {
            warn!(error = %e, "flushing storage on drop failed");
        }
    }
}

impl Inner {
    fn pieces(&self) -> MutexGuard<'_, Pieces> {
        self.pieces.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A block as it is on disk, unchecked.
    fn read_raw(&self, block: BlockRef) -> Result<Bytes, StorageError> {
        Ok(Bytes::from(
            self.read_range(self.layout.block_range(block))?,
        ))
    }

    /// A whole piece as it is on disk, unchecked.
    fn read_piece(&self, piece: PieceIndex) -> Result<Vec<u8>, StorageError> {
        self.read_range(self.layout.piece_range(piece))
    }

    /// A range of the layout, from as many files as it spans.
    fn read_range(&self, range: FileRange) -> Result<Vec<u8>, StorageError> {
        let mut segments = self.layout.segments(range);
        let first = segments.next().expect("a range of at least one byte");
        let mut out = self.read_at(first.file, first.len, first.offset)?;
        for r in segments {
            out.extend_from_slice(&self.read_at(r.file, r.len, r.offset)?);
        }
        Ok(out)
    }

    /// `len` bytes of file `file` from `offset`.
    fn read_at(&self, file: usize, len: u32, offset: u64) -> Result<Vec<u8>, StorageError> {
        let path = &self.files.paths[file];
        fresh::read_exact_at(&*self.files.get(file)?, len as usize, offset)
            .map_err(StorageError::io("reading", path))
    }

    /// Checks a verified piece's leaf hashes (just read from disk) against
    /// the piece layer, or for a v1 torrent its SHA-1; a mismatch loses the
    /// piece.
    fn check_leaves(
        &self,
        piece: PieceIndex,
        leaves: &[Hash],
        sha1: Option<Sha1Hash>,
        stamp: u32,
    ) -> Result<(), StorageError> {
        if self.piece_matches(piece, leaves, sha1) {
            Ok(())
        } else {
            Err(self.lose(piece, stamp))
        }
    }

    /// A v1-only torrent: pieces verify by SHA-1, not from leaf hashes.
    fn v1_only(&self) -> bool {
        self.meta.info().version() == MetaVersion::V1
    }

    /// Whether a piece with these leaf hashes (v2) or this SHA-1 (v1) is
    /// the torrent's.
    fn piece_matches(&self, piece: PieceIndex, leaves: &[Hash], sha1: Option<Sha1Hash>) -> bool {
        if self.v1_only() {
            sha1.is_some() && sha1.as_ref() == self.meta.info().v1_piece_hash(piece.get())
        } else {
            self.layout.piece_tree(piece).piece_hash(leaves)
                == expected_piece_hash(&self.meta, &self.layout, piece)
        }
    }

    /// Feeds a just-written block of a v1 piece to its SHA-1, if it is
    /// the next one; one out of order ends the running hash.
    fn v1_hash_in_order(&self, block: BlockRef, data: &[u8]) {
        let piece = block.piece();
        let blocks = self.layout.blocks_in_piece(piece) as usize;
        // Taken out to hash, so the lock is not held for it (only this
        // thread touches a partial's hash).
        let taken = {
            let mut p = self.pieces();
            let partial = p
                .partial
                .entry(piece)
                .or_insert_with(|| Partial::new(blocks, true));
            match partial.sha1.take() {
                Some((h, next)) if next == block.index() => Some(h),
                _ => None,
            }
        };
        if let Some(mut h) = taken {
            sha1::Digest::update(&mut h, data);
            if let Some(partial) = self.pieces().partial.get_mut(&piece) {
                partial.sha1 = Some((h, block.index() + 1));
            }
        }
    }

    /// A verified piece's data changed on disk: it is missing again. The
    /// resume file is rewritten at the next flush, the files become
    /// writable, and the torrent hears of it to fetch it again.
    ///
    /// `stamp` is the piece's verification the reader started from: if the
    /// piece was lost and verified again meanwhile, this stale read drops
    /// nothing.
    fn lose(&self, piece: PieceIndex, stamp: u32) -> StorageError {
        {
            let mut p = self.pieces();
            let i = piece.as_usize();
            if !p.verified[i] || p.stamps[i] != stamp {
                return StorageError::NotHeld { piece };
            }
            p.verified.set(i, false);
            p.stamps[i] = p.stamps[i].wrapping_add(1);
            p.generation += 1;
        }
        lock(&self.read_cache).remove(piece);
        lock(&self.leaf_cache).remove(piece);
        self.files.make_writable();
        warn!(%piece, "data on disk no longer matches the torrent; piece dropped, to be fetched again");
        self.send(StorageEvent::PieceLost(piece));
        StorageError::PieceLost { piece }
    }

    fn is_duplicate(&self, pieces: &Pieces, block: BlockRef) -> bool {
        pieces.verified[block.piece().as_usize()]
            || pieces
                .partial
                .get(&block.piece())
                .is_some_and(|p| p.leaves[block.index() as usize].is_some())
    }

    fn flush(&self) -> Result<(), StorageError> {
        // One flush at a time, so an older snapshot never overwrites a newer.
        let _one = self.flush_lock.lock().unwrap_or_else(|p| p.into_inner());
        let (verified, dirty) = {
            let mut p = self.pieces();
            if p.dirty.is_empty() && p.saved == Some(p.generation) {
                // Nothing written and nothing verified since: no fsync, no
                // rewrite (a seeder flushes every interval too).
                return Ok(());
            }
            (
                (p.verified.clone(), p.generation),
                std::mem::take(&mut p.dirty),
            )
        };
        let (verified, generation) = verified;
        let synced = dirty.iter().try_for_each(|&i| {
            self.files
                .get(i)?
                .sync_data()
                .map_err(StorageError::io("syncing", &self.files.paths[i]))
        });
        if let Err(e) = synced {
            // Not durable yet: every one of them waits for the next flush.
            self.pieces().dirty.extend(dirty);
            return Err(e);
        }
        if let Some(path) = &self.config.resume_file {
            resume::save(path, self.meta.info().info_hash(), &verified)
                .map_err(StorageError::io("writing resume file", path))?;
        }
        self.pieces().saved = Some(generation);
        Ok(())
    }

    /// Reports to the node. While the torrent runs, a full channel makes the
    /// writer wait (the queue fills and requesting stops: backpressure).
    /// Once it is closing nobody may be reading any more, so events that do
    /// not fit are dropped rather than blocking shutdown.
    fn send(&self, mut event: StorageEvent) {
        loop {
            match self.events.try_send(event) {
                Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => return,
                Err(mpsc::error::TrySendError::Full(e)) if self.writes.is_closed() => {
                    debug!(event = ?e, "storage closing; event dropped");
                    return;
                }
                Err(mpsc::error::TrySendError::Full(e)) => {
                    event = e;
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
    }

    /// Starts writing a verified piece back to disk now, rather than
    /// leaving it all to the next flush: a download's final fsync then
    /// waits only for its last pieces, and dirty memory stays near the
    /// write queue's size. A hint only (`flush` is what makes it durable);
    /// it may wait while the device's queue is full, which slows this
    /// writer as a slow disk should.
    fn start_writeback(&self, piece: PieceIndex) {
        for range in self.layout.segments(self.layout.piece_range(piece)) {
            if let Ok(file) = self.files.get(range.file)
                && let Err(e) = writeback::start(&file, range.offset, u64::from(range.len))
            {
                debug!(%piece, error = %e, "early writeback refused");
            }
        }
    }

    /// Hashes, writes and records one block; verifies its piece when it is
    /// the last one.
    fn write(&self, w: PendingWrite) {
        let PendingWrite {
            block,
            data,
            credit,
        } = w;
        let piece = block.piece();
        if self.is_duplicate(&self.pieces(), block) {
            return;
        }
        let leaf = leaf_hash(&data);
        let range = self.layout.block_range(block);
        let mut at = 0usize;
        let mut touched = Vec::with_capacity(1);
        let written = self.layout.segments(range).try_for_each(|r| {
            let part = &data[at..at + r.len as usize];
            at += r.len as usize;
            touched.push(r.file);
            self.files.get(r.file).and_then(|f| {
                f.write_all_at(part, r.offset)
                    .map_err(StorageError::io("writing", &self.files.paths[r.file]))
            })
        });
        // A v1 piece is hashed as its blocks come, in order; one out of
        // order leaves it to a read at the end.
        if written.is_ok() && self.v1_only() {
            self.v1_hash_in_order(block, &data);
        }
        // Written (or failed): the bytes leave the queue now, before any
        // event reports on them.
        drop(data);
        drop(credit);
        if let Err(e) = written {
            // The torrent warns once per pause; a full disk fails every block.
            debug!(?block, error = %e, "block write failed");
            self.send(StorageEvent::WriteFailed {
                block,
                error: e.with_causes(),
            });
            return;
        }
        let finished = {
            let mut p = self.pieces();
            p.dirty.extend(touched);
            let blocks = self.layout.blocks_in_piece(piece) as usize;
            let v1 = self.v1_only();
            let partial = p
                .partial
                .entry(piece)
                .or_insert_with(|| Partial::new(blocks, v1));
            partial.leaves[block.index() as usize] = Some(leaf);
            partial.have += 1;
            if partial.have as usize == blocks {
                p.partial.remove(&piece)
            } else {
                None
            }
        };
        let Some(done) = finished else { return };
        let sha1 = match done.sha1 {
            Some((h, next)) if next as usize == done.leaves.len() => {
                Some(sha1::Digest::finalize(h).into())
            }
            // Out of order: read back whole (v1 only; a read error fails
            // the piece, which is then fetched again).
            _ if self.v1_only() => self.read_piece(piece).ok().map(|d| sha1_of(&d)),
            _ => None,
        };
        let leaves: Vec<Hash> = done.leaves.into_iter().flatten().collect();
        let ok = self.piece_matches(piece, &leaves, sha1);
        if ok {
            let mut p = self.pieces();
            p.verified.set(piece.as_usize(), true);
            p.stamps[piece.as_usize()] = p.stamps[piece.as_usize()].wrapping_add(1);
            p.generation += 1;
            let failed_before = p.failed.remove(&piece);
            drop(p);
            debug!(%piece, "piece verified");
            self.start_writeback(piece);
            self.send(StorageEvent::PieceVerified(piece));
            if failed_before {
                self.send(StorageEvent::GoodLeaves { piece, leaves });
            }
        } else {
            warn!(%piece, "piece failed its hash check");
            self.pieces().failed.insert(piece);
            self.send(StorageEvent::HashFailed { piece, leaves });
        }
    }
}

/// One reader's turn to check a piece whole; the next waits until it is
/// dropped.
struct CheckTurn<'a> {
    inner: &'a Inner,
    piece: PieceIndex,
}

impl<'a> CheckTurn<'a> {
    /// Waits while another reader checks `piece`, then takes the turn.
    fn take(inner: &'a Inner, piece: PieceIndex) -> Self {
        let mut checking = lock(&inner.checking);
        while checking.contains(&piece) {
            checking = inner
                .checked
                .wait(checking)
                .unwrap_or_else(|p| p.into_inner());
        }
        checking.insert(piece);
        Self { inner, piece }
    }
}

impl Drop for CheckTurn<'_> {
    fn drop(&mut self) {
        lock(&self.inner.checking).remove(&self.piece);
        self.inner.checked.notify_all();
    }
}

/// `preadv2(RWF_NOWAIT)`: a read that fails rather than wait for the disk.
mod nowait {
    use std::fs::File;

    /// All `len` bytes from `offset`, or `None` when the read would block,
    /// comes up short, or is unsupported.
    #[cfg(target_os = "linux")]
    #[allow(unsafe_code, reason = "one FFI call; std has no RWF_NOWAIT")]
    pub(super) fn pread(file: &File, len: usize, offset: u64) -> Option<Vec<u8>> {
        use std::os::fd::AsRawFd;
        let mut buf: Vec<u8> = Vec::with_capacity(len);
        let iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: len,
        };
        let offset = libc::off_t::try_from(offset).ok()?;
        // SAFETY: `iov` points at `buf`'s allocation, valid and writable
        // for `len` bytes for the duration of the call; the fd is open
        // (borrowed from `file`).
        let n = unsafe { libc::preadv2(file.as_raw_fd(), &iov, 1, offset, libc::RWF_NOWAIT) };
        if usize::try_from(n).ok()? != len {
            return None;
        }
        // SAFETY: the kernel wrote all `len` bytes (checked just above).
        unsafe { buf.set_len(len) };
        Some(buf)
    }

    #[cfg(not(target_os = "linux"))]
    pub(super) fn pread(_: &File, _: usize, _: u64) -> Option<Vec<u8>> {
        None
    }
}

/// `sync_file_range(SYNC_FILE_RANGE_WRITE)`: start writeback of a range
/// without waiting for it.
mod writeback {
    use std::fs::File;
    use std::io;

    #[cfg(target_os = "linux")]
    #[allow(unsafe_code, reason = "one FFI call; std has no sync_file_range")]
    pub(super) fn start(file: &File, offset: u64, len: u64) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        let (Ok(offset), Ok(len)) = (
            libc::off64_t::try_from(offset),
            libc::off64_t::try_from(len),
        ) else {
            return Err(io::ErrorKind::InvalidInput.into());
        };
        // SAFETY: plain syscall on an open fd (borrowed from `file`); no
        // memory is passed.
        let r = unsafe {
            libc::sync_file_range(file.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE)
        };
        if r == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    #[cfg(not(target_os = "linux"))]
    pub(super) fn start(_: &File, _: u64, _: u64) -> io::Result<()> {
        Ok(())
    }
}

/// Reads into fresh buffers without zeroing them first: every block sent
/// is read once, and filling a megabyte with zeros just to overwrite it
/// cost a seeder 5% of its CPU.
mod fresh {
    use std::fs::File;
    use std::io;

    /// Exactly `len` bytes from `offset` (`UnexpectedEof` if the file
    /// ends first).
    #[allow(unsafe_code, reason = "pread into uninitialised capacity")]
    pub(super) fn read_exact_at(file: &File, len: usize, offset: u64) -> io::Result<Vec<u8>> {
        use std::os::fd::AsRawFd;
        let mut buf: Vec<u8> = Vec::with_capacity(len);
        while buf.len() < len {
            let filled = buf.len();
            let at = offset
                .checked_add(filled as u64)
                .and_then(|o| libc::off_t::try_from(o).ok())
                .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
            // Never past `len`, however much capacity the allocator gave.
            let spare = &mut buf.spare_capacity_mut()[..len - filled];
            // SAFETY: `spare` is `buf`'s unused capacity, valid and
            // writable for `spare.len()` bytes during the call; the fd is
            // open (borrowed from `file`).
            let n = unsafe {
                libc::pread(file.as_raw_fd(), spare.as_mut_ptr().cast(), spare.len(), at)
            };
            match n {
                0 => return Err(io::ErrorKind::UnexpectedEof.into()),
                n if n < 0 => {
                    let e = io::Error::last_os_error();
                    if e.kind() != io::ErrorKind::Interrupted {
                        return Err(e);
                    }
                }
                // SAFETY: the kernel initialised the next `n` bytes, and
                // `n <= spare.len()` keeps the length within capacity.
                n => unsafe { buf.set_len(filled + n as usize) },
            }
        }
        Ok(buf)
    }
}

fn writer_loop(inner: &Inner) {
    let started = Instant::now();
    let mut written: u64 = 0;
    while let Some(w) = inner.writes.next() {
        if let Some(rate) = inner.config.write_rate {
            // Emulated disk: never run ahead of `rate` bytes/s on average.
            let due = Duration::from_secs_f64(written as f64 / rate as f64);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                std::thread::sleep(wait);
            }
        }
        written += w.data.len() as u64;
        inner.write(w);
    }
}

/// The verified pieces to start from, and whether they come from a recheck
/// (rather than a resume file).
///
/// A resume file vouches for pieces only while every file is there at its
/// length (an open makes each one so): a file deleted, truncated or
/// replaced by another of another size since means a recheck, not pieces
/// claimed that are gone.
fn initial_pieces(
    meta: &Metainfo,
    layout: &Layout,
    content: &Path,
    paths: &[PathBuf],
    config: &StorageConfig,
) -> (Bitfield, bool) {
    let ih = meta.info().info_hash();
    if let (Some(path), false) = (&config.resume_file, config.recheck) {
        match resume::load(path, ih, layout.num_pieces()) {
            Ok(bits) if bits.not_any() => return (bits, false),
            Ok(bits) => {
                let changed = paths.iter().enumerate().find(|(i, p)| {
                    let len = layout.file_len(*i);
                    len > 0 && std::fs::metadata(p).map_or(true, |m| m.len() != len)
                });
                match changed {
                    None => return (bits, false),
                    Some((_, p)) => warn!(
                        file = %p.display(),
                        "missing or of another size since the resume file; rechecking"
                    ),
                }
            }
            Err(resume::ResumeError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => warn!(path = %path.display(), error = %e, "ignoring resume file; rechecking"),
        }
    }
    (
        recheck(meta, content, config.hash_threads, &AtomicU64::new(0)),
        true,
    )
}

fn sha1_of(data: &[u8]) -> Sha1Hash {
    <sha1::Sha1 as sha1::Digest>::digest(data).into()
}

/// Creates the file (and its directories) at its full length, sparse.
fn prepare_file(path: &Path, len: u64) -> Result<(), StorageError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(StorageError::io("creating directory", dir))?;
    }
    let f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(StorageError::io("creating", path))?;
    let current = f
        .metadata()
        .map_err(StorageError::io("reading", path))?
        .len();
    if current != len {
        f.set_len(len).map_err(StorageError::io("resizing", path))?;
    }
    Ok(())
}
