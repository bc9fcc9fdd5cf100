//! One peer's session for one torrent: the task that owns the stream.
//!
//! It decodes what the peer sends and forwards it to the torrent task
//! (bounded channel: when the torrent falls behind, we stop reading and TCP
//! pushes back on the peer), writes what the torrent tells it to, and serves
//! the peer's requests itself:
//!
//! - requests wait in a queue bounded by the `max_requests` (`reqq`) we advertise; a
//!   request while choked, beyond the queue, or for a piece we do not hold
//!   gets an explicit `Reject` at once;
//! - blocks are read from storage only as the stream drains, at most
//!   `upload_window` bytes ahead of the socket;
//! - choking the peer rejects everything queued, so it can ask elsewhere.
//!
//! Those rules are [`crate::upload`]'s (pure, unit-tested); this task does
//! the reading, writing and waiting around them.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use sluice_choke::PeerKey;
use sluice_storage::Storage;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tracing::debug;

use crate::bt::wire::{Extra, HashSpec, METADATA_PIECE, MetadataMsg, UT_METADATA_ID};
use crate::codec::{Codec, Inbound, SluiceCodec};
use crate::framed::{FrameReader, FrameWriter, StreamError};
use crate::ratelimit::{Limiters, RateLimiter};
use crate::torrent_core::CloseReason;
use crate::upload::{Admission, UploadQueue, batch_blocks};
use crate::wire::{BlockSpec, Message};
use sluice_storage::merkle::HashRange;

/// What a session reports to its torrent.
#[derive(Debug)]
pub(crate) enum FromSession {
    Message(PeerKey, Message),
    /// We sent it a block of this piece, the first of that piece in this
    /// session (what it can pass on).
    Served(PeerKey, u32),
    Closed(PeerKey, SessionEnd),
}

/// Why a session ended.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SessionEnd {
    /// The torrent closed it.
    #[error("{0}")]
    Closed(CloseReason),
    /// The torrent is gone (its command channel closed: it stopped, or it
    /// cut this session loose for not keeping up).
    #[error("torrent stopped")]
    TorrentGone,
    #[error(transparent)]
    Stream(#[from] StreamError),
}

/// What the torrent tells a session.
#[derive(Debug)]
pub(crate) enum ToSession {
    Send(Message),
    /// A `Have` for each piece.
    Haves(Vec<u32>),
    /// Choke (true) or unchoke the peer: sends the message; choking rejects
    /// every queued request.
    Choke(bool),
    /// At most this many bytes/s to this peer (`None`: only the node's
    /// limit).
    Cap(Option<u64>),
    Close(CloseReason),
}

/// A block of pad-file zeros.
static ZEROS: [u8; sluice_storage::BLOCK_SIZE as usize] = [0; sluice_storage::BLOCK_SIZE as usize];

/// How long a closing session tries to hand its last bytes to the peer.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Under a rate limit, blocks are sent in batches of about this many
/// bytes (4 blocks) rather than one by one ([`Session::batch_wait`]).
pub(crate) const SERVE_BATCH: u64 = 4 * sluice_storage::BLOCK_SIZE as u64;
/// The longest a serve waits beyond its rate's debt to make a batch.
pub(crate) const SERVE_BATCH_WAIT: Duration = Duration::from_millis(25);

/// Limits of one session.
#[derive(Debug, Clone)]
pub(crate) struct SessionLimits {
    /// Most queued requests we accept (what we advertise).
    pub(crate) max_requests: u32,
    /// Bytes read from disk ahead of the socket.
    pub(crate) upload_window: u32,
    /// Close the stream when the peer is silent this long.
    pub(crate) idle_timeout: Duration,
}

/// Live numbers of one session, shared with the torrent.
#[derive(Debug, Default)]
pub(crate) struct SessionStats {
    /// Requests waiting to be served.
    pub(crate) upload_queue: AtomicU64,
    /// Block bytes written to the stream.
    pub(crate) uploaded: AtomicU64,
    /// Bytes in our write buffer, not yet taken by the stream (sampled
    /// before each flush).
    pub(crate) upload_buffered: AtomicU64,
    /// The client name a BitTorrent peer gave (BEP 10 `v`).
    pub(crate) client: std::sync::OnceLock<String>,
}

/// Most requests we let a BitTorrent peer's `reqq` promise us: beyond it
/// the request window's own maximum rules anyway.
const MAX_REQQ: u32 = 10_000;

pub(crate) struct Session<R, W, C = SluiceCodec> {
    pub(crate) key: PeerKey,
    pub(crate) reader: FrameReader<R, C>,
    pub(crate) writer: FrameWriter<W, C>,
    pub(crate) storage: Arc<Storage>,
    pub(crate) to_torrent: mpsc::Sender<FromSession>,
    pub(crate) commands: mpsc::Receiver<ToSession>,
    pub(crate) limits: SessionLimits,
    pub(crate) stats: Arc<SessionStats>,
    /// The node's and the torrent's limiters.
    pub(crate) up_limit: Limiters,
    pub(crate) down_limit: Limiters,
    /// This peer's own upload cap, on top of `up_limit`.
    pub(crate) cap: Option<RateLimiter>,
    /// Pieces we sent it a block of (grown on first use).
    pub(crate) served: sluice_storage::Bitfield,
    /// When the peer last sent anything; silent for the idle timeout, it
    /// is cut off.
    pub(crate) last_read: tokio::time::Instant,
    /// The next queued piece being read and checked on the blocking pool
    /// while this one is sent (at most one per session; a batch reaching
    /// that piece meanwhile waits for its check in the storage).
    pub(crate) read_ahead: Option<tokio::task::JoinHandle<()>>,
    /// Upload paused by a rate limit (the node's or this peer's cap) until
    /// then; the session still reads and sends everything else meanwhile.
    pub(crate) serve_at: Option<tokio::time::Instant>,
    /// A BitTorrent peer's id for `ut_metadata` messages (from its
    /// extension handshake), and the metadata bytes sent it so far.
    pub(crate) ut_metadata: Option<u8>,
    pub(crate) metadata_sent: u64,
}

/// Most info-dict bytes served to one peer, as multiples of the dict: a
/// peer that asks for more is refused (nobody needs it twice).
const METADATA_SERVINGS: u64 = 2;

impl<R, W, C> std::fmt::Debug for Session<R, W, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl<R: AsyncRead + Unpin + Send, W: AsyncWrite + Unpin + Send, C: Codec> Session<R, W, C> {
    /// Runs until the stream ends, the torrent says to close, or the peer
    /// breaks the protocol; reports why to the torrent.
    pub(crate) async fn run(mut self) {
        let key = self.key;
        let to_torrent = self.to_torrent.clone();
        let mut queue = UploadQueue::new(self.limits.max_requests);
        let reason = match self.drive(&mut queue).await {
            Ok(reason) => reason,
            Err(e) => SessionEnd::Stream(e),
        };
        // A peer that stopped reading would hold the close forever.
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, self.writer.close()).await;
        debug!(peer = key.0, %reason, "session ended");
        let _ = to_torrent.send(FromSession::Closed(key, reason)).await;
    }

    async fn drive(&mut self, queue: &mut UploadQueue) -> Result<SessionEnd, StreamError> {
        // A peer we choke may have nothing to say for minutes; a keep-alive
        // at half the idle timeout tells it we are still here.
        let keepalive = self.limits.idle_timeout / 2;
        let mut last_write = tokio::time::Instant::now();
        // Two timers, made once and moved only when they fire or the rate
        // limit's wait changes (a timer made per loop turn is a timer-wheel
        // insert and removal per message). The housekeeping one fires at
        // the earlier of the keep-alive and the idle deadline as they were
        // when it was set; both only move later, so on firing it checks
        // them again and is set anew.
        let housekeeping = tokio::time::sleep_until(last_write + keepalive);
        tokio::pin!(housekeeping);
        let pacing = tokio::time::sleep_until(last_write);
        tokio::pin!(pacing);
        loop {
            // Local work first: serve what is queued, then read more.
            if self
                .serve_at
                .is_some_and(|t| t <= tokio::time::Instant::now())
            {
                self.serve_at = None;
            }
            if queue.ready() && self.serve_at.is_none() {
                self.serve(queue).await?;
            }
            self.stats
                .upload_queue
                .store(queue.len() as u64, Ordering::Relaxed);
            let pending = self.writer.pending();
            self.stats
                .upload_buffered
                .store(pending as u64, Ordering::Relaxed);
            if pending > 0 {
                last_write = tokio::time::Instant::now();
            }
            self.flush(queue).await?;
            if let Some(at) = self.serve_at
                && pacing.deadline() != at
            {
                pacing.as_mut().reset(at);
            }
            tokio::select! {
                biased;
                cmd = self.commands.recv() => {
                    let Some(cmd) = cmd else { return Ok(SessionEnd::TorrentGone) };
                    if let Some(reason) = self.on_command(cmd, queue) {
                        return Ok(SessionEnd::Closed(reason));
                    }
                    // Whatever else is waiting goes out in the same write.
                    while let Ok(cmd) = self.commands.try_recv() {
                        if let Some(reason) = self.on_command(cmd, queue) {
                            return Ok(SessionEnd::Closed(reason));
                        }
                    }
                }
                msg = self.reader.next() => {
                    self.on_message(msg?, queue).await?;
                    // Take every message already read before serving, so
                    // requests queue up and go out in full batches.
                    while let Some(msg) = self.reader.try_next()? {
                        self.on_message(msg, queue).await?;
                    }
                }
                // Nothing to read or do: keep serving the queue rather than
                // wait for the next message, or until the rate allows.
                () = std::future::ready(()), if queue.ready() && self.serve_at.is_none() => {}
                () = &mut pacing, if self.serve_at.is_some() => {}
                () = &mut housekeeping => {
                    let now = tokio::time::Instant::now();
                    let idle_at = self.last_read + self.limits.idle_timeout;
                    if now >= idle_at {
                        return Err(StreamError::Timeout(self.limits.idle_timeout));
                    }
                    if now >= last_write + keepalive {
                        self.writer.push(&Message::KeepAlive);
                        last_write = now;
                    }
                    housekeeping.as_mut().reset((last_write + keepalive).min(idle_at));
                }
            }
        }
    }

    /// Writes what is queued, reading the peer's messages meanwhile: both
    /// sides may be writing at once (each uploading to the other), and a
    /// side that stopped reading until its own write finished would wait
    /// for the other forever once both muxer windows are full. A peer that
    /// takes nothing for the idle timeout is cut off.
    async fn flush(&mut self, queue: &mut UploadQueue) -> Result<(), StreamError> {
        // Most flushes fit in the socket at once: no timers for those
        // (cancel-safe, so a flush cut short here resumes below).
        if let Some(done) = futures::FutureExt::now_or_never(self.writer.flush()) {
            return done;
        }
        let limit = self.limits.idle_timeout;
        let mut deadline = tokio::time::Instant::now() + limit;
        let mut left = self.writer.pending();
        let mut check = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                biased;
                // Cancel-safe: a write cut short resumes on the next turn.
                done = self.writer.flush() => return done,
                msg = self.reader.next() => self.on_message(msg?, queue).await?,
                _ = check.tick() => {
                    // A slow peer that still takes bytes is not idle.
                    if self.writer.pending() < left {
                        left = self.writer.pending();
                        deadline = tokio::time::Instant::now() + limit;
                    }
                }
                () = tokio::time::sleep_until(deadline) => return Err(StreamError::Timeout(limit)),
            }
        }
    }

    /// Applies a command; `Some(reason)` when the session must end.
    fn on_command(&mut self, cmd: ToSession, queue: &mut UploadQueue) -> Option<CloseReason> {
        match cmd {
            ToSession::Close(reason) => return Some(reason),
            ToSession::Send(m) => self.writer.push(&m),
            ToSession::Haves(pieces) => {
                for piece in pieces {
                    self.writer.push(&Message::Have(piece));
                }
            }
            ToSession::Cap(rate) => {
                match (rate, &self.cap) {
                    (None, _) => self.cap = None,
                    (Some(r), Some(cap)) => cap.set_rate(r),
                    (Some(r), None) => self.cap = Some(RateLimiter::new(r)),
                }
                // A wait set under the old cap may be far too long now;
                // the limiters' own debt still holds the new rate.
                self.serve_at = None;
            }
            ToSession::Choke(c) => {
                let refused = queue.set_choked(c);
                self.writer.push(if c {
                    &Message::Choke
                } else {
                    &Message::Unchoke
                });
                for spec in refused {
                    self.writer.push(&Message::Reject(spec));
                }
            }
        }
        None
    }

    async fn on_message(
        &mut self,
        msg: Inbound,
        queue: &mut UploadQueue,
    ) -> Result<(), StreamError> {
        self.last_read = tokio::time::Instant::now();
        let msg = match msg {
            Inbound::Core(m) => m,
            Inbound::Bt(extra) => return self.on_extra(extra).await,
        };
        match msg {
            Message::KeepAlive => {}
            Message::Request(spec) => {
                let layout = self.storage.layout();
                let piece = layout
                    .block_at(spec.piece, spec.offset, spec.len)
                    .map(|b| b.piece())
                    .or_else(|| self.pad_block(spec));
                let held = piece.is_some_and(|p| self.storage.has_piece(p));
                if let Admission::Rejected(_) = queue.request(spec, held) {
                    self.writer.push(&Message::Reject(spec));
                }
            }
            Message::Cancel(spec) => queue.cancel(spec),
            Message::Piece {
                piece,
                offset,
                data,
            } => {
                self.down_limit.acquire(data.len() as u64).await;
                // The decoded block shares the read buffer's allocation with
                // its neighbours; a block waiting for the disk would pin
                // all of it. One 16 KiB copy keeps queued memory equal to
                // the credits that pay for it.
                let data = Bytes::copy_from_slice(&data);
                self.forward(Message::Piece {
                    piece,
                    offset,
                    data,
                })
                .await?;
            }
            Message::Handshake { .. } => {
                return Err(StreamError::Protocol("a second handshake".into()));
            }
            other => self.forward(other).await?,
        }
        Ok(())
    }

    /// What only the BitTorrent wire says.
    async fn on_extra(&mut self, extra: Extra) -> Result<(), StreamError> {
        match extra {
            Extra::ExtHandshake(h) => {
                if let Some(client) = h.client {
                    let _ = self.stats.client.set(client);
                }
                if h.ut_metadata.is_some() {
                    self.ut_metadata = h.ut_metadata;
                }
                if let Some(reqq) = h.reqq {
                    self.forward(Message::MaxRequests(reqq.clamp(1, MAX_REQQ)))
                        .await?;
                }
            }
            // BEP 52: the piece layers (and the layers above them) of our
            // files, with their proofs; block hashes are not kept, so a
            // request for them is refused. A peer that does not read what
            // we send is not answered (the upload window bounds what waits
            // for it).
            Extra::HashRequest(spec) => {
                if self.writer.pending() < self.limits.upload_window as usize {
                    let reply = match self.answer_hashes(&spec) {
                        Some(hashes) => Extra::Hashes { spec, hashes },
                        None => Extra::HashReject(spec),
                    };
                    self.writer.push_extra(&reply);
                }
            }
            Extra::Extended {
                id: UT_METADATA_ID,
                payload,
            } => self.on_metadata(&payload),
            // We ask for no hashes and offer no other extended messages;
            // what we did not ask for is dropped. Allowed-fast pieces,
            // suggestions and DHT ports are hints we do not use.
            Extra::Hashes { .. }
            | Extra::HashReject(_)
            | Extra::Extended { .. }
            | Extra::AllowedFast(_)
            | Extra::Suggest(_)
            | Extra::Port(_) => {}
        }
        Ok(())
    }

    /// The hashes a BEP 52 hash request asks for, with their proof.
    fn answer_hashes(&self, spec: &HashSpec) -> Option<Bytes> {
        let tree = self.storage.piece_tree(&spec.pieces_root)?;
        let hashes = tree.answer(&HashRange {
            base: spec.base_layer,
            index: spec.index,
            count: spec.length,
            proof_layers: spec.proof_layers,
        })?;
        Some(hashes.concat().into())
    }

    /// The piece of a block that lies in a hybrid's pad file, where there
    /// is one (not after the last file unless the torrent says so).
    fn pad_block(&self, spec: BlockSpec) -> Option<sluice_storage::PieceIndex> {
        let info = self.storage.metainfo().info();
        let layout = self.storage.layout();
        let p = layout.pad_block(spec.piece, spec.offset, spec.len)?;
        let padded = info.version() == sluice_storage::MetaVersion::Hybrid
            && info.files().len() > 1
            && (p.get() + 1 < layout.num_pieces() || info.v1_tail_padded());
        padded.then_some(p)
    }

    /// A `ut_metadata` request (BEP 9): the info dict's piece, or a
    /// reject (no such piece, or this peer had the dict twice already).
    fn on_metadata(&mut self, payload: &[u8]) {
        let (Some(their_id), Some((MetadataMsg::Request { piece }, _))) =
            (self.ut_metadata, MetadataMsg::parse(payload))
        else {
            return; // not a request, or a peer that gave no id to answer with
        };
        let info = self.storage.metainfo().info().raw();
        let start = piece as usize * METADATA_PIECE;
        let limit = METADATA_SERVINGS * info.len() as u64;
        // A peer that does not read what we send gets rejects, not more
        // of our memory (the upload window bounds what waits for it).
        let reading = self.writer.pending() < self.limits.upload_window as usize;
        let reply = if start < info.len() && self.metadata_sent < limit && reading {
            let chunk = &info[start..(start + METADATA_PIECE).min(info.len())];
            self.metadata_sent += chunk.len() as u64;
            let mut out = MetadataMsg::Data {
                piece,
                total_size: info.len() as u32,
            }
            .to_bytes();
            out.extend_from_slice(chunk);
            out
        } else {
            MetadataMsg::Reject { piece }.to_bytes()
        };
        self.writer.push_extra(&Extra::Extended {
            id: their_id,
            payload: reply.into(),
        });
    }

    /// Tells the torrent the first time we send a block of `piece`.
    async fn note_served(&mut self, piece: u32) -> Result<(), StreamError> {
        let i = piece as usize;
        if self.served.len() <= i {
            let pieces = self.storage.layout().num_pieces() as usize;
            self.served.resize(pieces.max(i + 1), false);
        }
        if self.served.replace(i, true) {
            return Ok(());
        }
        self.to_torrent
            .send(FromSession::Served(self.key, piece))
            .await
            .map_err(|_| StreamError::Protocol("torrent stopped".into()))
    }

    async fn forward(&mut self, msg: Message) -> Result<(), StreamError> {
        self.to_torrent
            .send(FromSession::Message(self.key, msg))
            .await
            .map_err(|_| StreamError::Protocol("torrent stopped".into()))
    }

    /// Reads up to one upload window of queued blocks (one blocking call)
    /// and writes them out.
    async fn serve(&mut self, queue: &mut UploadQueue) -> Result<(), StreamError> {
        // Under a rate limit, read no more than it lets us send now.
        let available = self
            .cap
            .as_ref()
            .map(RateLimiter::available)
            .into_iter()
            .chain(self.up_limit.available());
        let batch = queue.next_batch(batch_blocks(self.limits.upload_window, available));
        // Blocks in the page cache are read here and now; the rest (a cold
        // disk) in one call on the blocking pool, so no read stalls this
        // thread. Measured: reading cached blocks in place rather than
        // handing every batch to another thread is +30% end to end.
        let mut read: Vec<(
            BlockSpec,
            Option<Result<Bytes, sluice_storage::StorageError>>,
        )> = batch
            .into_iter()
            .map(|spec| {
                let layout = self.storage.layout();
                let cached = match layout.block_at(spec.piece, spec.offset, spec.len) {
                    Some(b) => self.storage.read_block_cached(b).map(Ok),
                    // Pad zeros (a v1 peer of a hybrid torrent asks).
                    None => self.pad_block(spec).map(|_| Ok(Bytes::from_static(&ZEROS))),
                };
                (spec, cached)
            })
            .collect();
        if read.iter().any(|(_, d)| d.is_none()) {
            let storage = Arc::clone(&self.storage);
            read = tokio::task::spawn_blocking(move || {
                read.into_iter()
                    .map(|(spec, data)| {
                        let data = data.or_else(|| {
                            storage
                                .layout()
                                .block_at(spec.piece, spec.offset, spec.len)
                                .map(|b| storage.read_block(b))
                        });
                        (spec, data)
                    })
                    .collect()
            })
            .await
            .map_err(|e| StreamError::Protocol(format!("block reader failed: {e}")))?;
        }
        // The whole batch is spent at once (it was sized to what the rate
        // allowed, so at most one batch goes into debt), and paid for by
        // waiting before the next: every block read is sent.
        let bytes: u64 = read
            .iter()
            .filter_map(|(_, d)| d.as_ref()?.as_ref().ok())
            .map(|d| d.len() as u64)
            .sum();
        if bytes > 0 {
            let wait = self
                .cap
                .as_ref()
                .map(|c| c.spend(bytes))
                .unwrap_or_default()
                .max(self.up_limit.spend(bytes));
            if !wait.is_zero() {
                self.serve_at = Some(tokio::time::Instant::now() + wait + self.batch_wait());
            }
        }
        let mut sent = 0u64;
        for (spec, data) in read {
            match data {
                Some(Ok(data)) => {
                    self.note_served(spec.piece).await?;
                    sent += data.len() as u64;
                    self.writer.push(&piece(spec, data));
                }
                _ => self.writer.push(&Message::Reject(spec)),
            }
            // Bound what sits in our buffer to the upload window.
            if self.writer.pending() >= self.limits.upload_window as usize {
                self.flush(queue).await?;
            }
        }
        self.stats.uploaded.fetch_add(sent, Ordering::Relaxed);
        self.start_read_ahead(queue);
        Ok(())
    }

    /// Under a rate limit, how much longer than the debt takes to clear
    /// the next serve waits, so that it finds [`SERVE_BATCH`] bytes'
    /// worth of tokens: blocks go out a few per write, not one per write
    /// (each write is a muxer frame, an encryption and a wake-up at both
    /// ends). The average rate is the limiters' still; at most
    /// [`SERVE_BATCH_WAIT`] is added, so a slow limit keeps its pace.
    fn batch_wait(&self) -> Duration {
        let rate = self
            .cap
            .as_ref()
            .map(RateLimiter::rate)
            .into_iter()
            .chain(self.up_limit.rate())
            .min();
        rate.map_or(Duration::ZERO, |r| {
            Duration::from_secs_f64(SERVE_BATCH as f64 / r.max(1) as f64).min(SERVE_BATCH_WAIT)
        })
    }

    /// Starts checking the first piece still queued that is not checked
    /// yet (looking at a few pieces at most), unless a read-ahead of this
    /// session runs or the node's read-aheads are all taken.
    fn start_read_ahead(&mut self, queue: &UploadQueue) {
        /// Distinct pieces looked at: the queue holds a few at a time.
        const LOOK_AT: usize = 4;
        if self.read_ahead.as_ref().is_some_and(|a| !a.is_finished()) {
            return;
        }
        let layout = self.storage.layout();
        let next = queue
            .upcoming_pieces(LOOK_AT)
            .filter_map(|p| layout.piece(p))
            .find(|&p| !self.storage.is_checked(p));
        if let Some(piece) = next
            && let Some(permit) = self.storage.read_ahead_permit()
        {
            let storage = Arc::clone(&self.storage);
            self.read_ahead = Some(tokio::task::spawn_blocking(move || {
                storage.read_ahead(piece);
                drop(permit);
            }));
        }
    }
}

fn piece(spec: BlockSpec, data: Bytes) -> Message {
    Message::Piece {
        piece: spec.piece,
        offset: spec.offset,
        data,
    }
}

#[cfg(test)]
mod tests {
    //! The upload side's load shedding, on an in-memory stream: requests
    //! while choked, beyond our queue, or for pieces we lack get an
    //! explicit `Reject`; choking rejects what is queued.

    use std::sync::atomic::AtomicU64;

    use sluice_storage::{BLOCK_SIZE, CreateOptions, StorageConfig, create};
    use tokio::io::{DuplexStream, ReadHalf, WriteHalf};

    use super::*;

    const WAIT: Duration = Duration::from_secs(10);
    type Io = (
        FrameReader<ReadHalf<DuplexStream>>,
        FrameWriter<WriteHalf<DuplexStream>>,
    );

    fn split(s: DuplexStream) -> Io {
        let (r, w) = tokio::io::split(s);
        (FrameReader::new(r), FrameWriter::new(w))
    }

    /// Block `block` of piece `piece`.
    fn req(piece: u32, block: u32) -> BlockSpec {
        BlockSpec {
            piece,
            offset: block * BLOCK_SIZE,
            len: BLOCK_SIZE,
        }
    }

    /// Tells the session to close and waits for it to end.
    async fn close(commands_tx: mpsc::Sender<ToSession>, task: tokio::task::JoinHandle<()>) {
        commands_tx
            .send(ToSession::Close(CloseReason::ShuttingDown))
            .await
            .unwrap();
        tokio::time::timeout(WAIT, task).await.unwrap().unwrap();
    }

    async fn next(peer: &mut FrameReader<ReadHalf<DuplexStream>>) -> Message {
        let m = tokio::time::timeout(WAIT, peer.next())
            .await
            .expect("a message in time")
            .expect("stream open");
        match m {
            crate::codec::Inbound::Core(m) => m,
            other => panic!("a BitTorrent-only message on our wire: {other:?}"),
        }
    }

    struct Running {
        task: tokio::task::JoinHandle<()>,
        peer_r: FrameReader<ReadHalf<DuplexStream>>,
        peer_w: FrameWriter<WriteHalf<DuplexStream>>,
        commands_tx: mpsc::Sender<ToSession>,
        from_session: mpsc::Receiver<FromSession>,
        _events: tokio::sync::mpsc::Receiver<sluice_storage::StorageEvent>,
        _dir: tempfile::TempDir,
    }

    /// A session over an in-memory stream, serving a 4-block file.
    fn start(idle_timeout: Duration) -> Running {
        start_with(idle_timeout, None)
    }

    /// `start`, with the node's upload rate limit.
    fn start_with(idle_timeout: Duration, up_limit: Option<Arc<RateLimiter>>) -> Running {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f.bin");
        std::fs::write(&file, vec![7u8; 4 * BLOCK_SIZE as usize]).unwrap();
        let opts = CreateOptions::default().with_piece_length(Some(2 * BLOCK_SIZE));
        let meta = Arc::new(create(&file, &opts, &AtomicU64::new(0)).unwrap());
        let (storage, events) = Storage::open(meta, &file, StorageConfig::default()).unwrap();
        let storage = Arc::new(storage);

        let (ours, theirs) = tokio::io::duplex(1 << 20);
        let (reader, writer) = split(ours);
        let (peer_r, peer_w) = split(theirs);
        let (to_torrent, from_session) = mpsc::channel(16);
        let (commands_tx, commands) = mpsc::channel(16);
        let session = Session {
            key: PeerKey(1),
            reader,
            writer,
            storage,
            to_torrent,
            commands,
            limits: SessionLimits {
                max_requests: 2,
                upload_window: BLOCK_SIZE,
                idle_timeout,
            },
            stats: Arc::default(),
            up_limit: Limiters::new(up_limit, None),
            down_limit: Limiters::default(),
            cap: None,
            served: sluice_storage::Bitfield::new(),
            last_read: tokio::time::Instant::now(),
            read_ahead: None,
            serve_at: None,
            ut_metadata: None,
            metadata_sent: 0,
        };
        Running {
            task: tokio::spawn(session.run()),
            peer_r,
            peer_w,
            commands_tx,
            from_session,
            _events: events,
            _dir: dir,
        }
    }

    /// A peer that reads what we send (our keep-alives included) but never
    /// says anything is cut off after the idle timeout: our own
    /// keep-alives do not count as hearing from it. (Paused clock.)
    #[tokio::test(start_paused = true)]
    async fn a_silent_peer_is_cut_off_after_the_idle_timeout() {
        let idle = Duration::from_secs(120);
        let Running {
            task,
            mut peer_r,
            peer_w,
            mut from_session,
            commands_tx: _commands,
            _events,
            _dir,
        } = start(idle);
        let started = tokio::time::Instant::now();
        let drain = tokio::spawn(async move { while peer_r.next().await.is_ok() {} });
        let closed = tokio::time::timeout(idle * 2, from_session.recv())
            .await
            .expect("the session ends within twice the idle timeout");
        match closed {
            Some(FromSession::Closed(_, SessionEnd::Stream(StreamError::Timeout(d)))) => {
                assert_eq!(d, idle);
            }
            other => panic!("expected Closed, got {other:?}"),
        }
        assert!(
            started.elapsed() >= idle,
            "cut off early: {:?}",
            started.elapsed()
        );
        task.await.unwrap();
        drop(peer_w);
        drain.abort();
    }

    /// A block waiting for the upload rate holds up nothing else: the
    /// session goes on reading the peer and obeying the torrent, so a
    /// choke meanwhile rejects the waiting request at once.
    #[tokio::test]
    async fn a_rate_limited_upload_does_not_hold_up_the_session() {
        // 1 KiB/s: a first block at once, the next some 15 s later (longer
        // than the test waits for anything).
        let limit = Arc::new(RateLimiter::new(1024));
        let Running {
            task,
            mut peer_r,
            mut peer_w,
            commands_tx,
            mut from_session,
            _events,
            _dir,
        } = start_with(WAIT, Some(limit));
        commands_tx.send(ToSession::Choke(false)).await.unwrap();
        assert_eq!(next(&mut peer_r).await, Message::Unchoke);
        let block = |m: Message| match m {
            Message::Piece { piece, offset, .. } => (piece, offset),
            other => panic!("expected a block, got {other:?}"),
        };
        peer_w.send(&Message::Request(req(0, 0))).await.unwrap();
        assert_eq!(block(next(&mut peer_r).await), (0, 0));
        // The next block must wait. Once the session has read its request
        // (it forwards the message sent after it)...
        peer_w.push(&Message::Request(req(1, 0)));
        peer_w.push(&Message::Interested);
        peer_w.flush().await.unwrap();
        loop {
            let got = tokio::time::timeout(WAIT, from_session.recv()).await;
            match got.expect("forwarded in time").expect("session running") {
                FromSession::Message(_, Message::Interested) => break,
                FromSession::Served(..) => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        // ...a choke is obeyed at once, the waiting request rejected and
        // its block never sent.
        commands_tx.send(ToSession::Choke(true)).await.unwrap();
        match next(&mut peer_r).await {
            Message::Choke => {}
            Message::Piece { piece, offset, .. } => {
                panic!("block {piece}/{offset} sent first: the session waited for the rate")
            }
            other => panic!("expected Choke, got {other:?}"),
        }
        assert_eq!(next(&mut peer_r).await, Message::Reject(req(1, 0)));

        close(commands_tx, task).await;
    }

    #[tokio::test]
    async fn requests_are_rejected_while_choked_beyond_the_queue_or_for_missing_pieces() {
        let Running {
            task,
            mut peer_r,
            mut peer_w,
            commands_tx,
            from_session: _from_session,
            _events,
            _dir,
        } = start(WAIT);

        // Choked (the starting state): rejected at once.
        peer_w.send(&Message::Request(req(0, 0))).await.unwrap();
        assert_eq!(next(&mut peer_r).await, Message::Reject(req(0, 0)));
        // No such piece: rejected even when unchoked.
        commands_tx.send(ToSession::Choke(false)).await.unwrap();
        assert_eq!(next(&mut peer_r).await, Message::Unchoke);
        peer_w.send(&Message::Request(req(9, 0))).await.unwrap();
        assert_eq!(next(&mut peer_r).await, Message::Reject(req(9, 0)));
        // Served.
        peer_w.send(&Message::Request(req(1, 1))).await.unwrap();
        match next(&mut peer_r).await {
            Message::Piece {
                piece: 1,
                offset,
                data,
            } => {
                assert_eq!(offset, BLOCK_SIZE);
                assert_eq!(data.len(), BLOCK_SIZE as usize);
            }
            other => panic!("expected the block, got {other:?}"),
        }
        // Beyond our queue of 2: rejected. (Sent in one write, so all of
        // them are read before anything is served.)
        for b in 0..2 {
            for p in 0..2 {
                peer_w.push(&Message::Request(req(p, b)));
            }
        }
        peer_w.flush().await.unwrap();
        let mut served = 0;
        let mut rejected = Vec::new();
        for _ in 0..4 {
            match next(&mut peer_r).await {
                Message::Piece { .. } => served += 1,
                Message::Reject(spec) => rejected.push(spec),
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!((served, rejected.len()), (2, 2), "rejected {rejected:?}");
        // Choking rejects whatever is still queued; nothing is served after.
        commands_tx.send(ToSession::Choke(true)).await.unwrap();
        assert_eq!(next(&mut peer_r).await, Message::Choke);
        peer_w.send(&Message::Request(req(0, 1))).await.unwrap();
        assert_eq!(next(&mut peer_r).await, Message::Reject(req(0, 1)));

        close(commands_tx, task).await;
    }
}
