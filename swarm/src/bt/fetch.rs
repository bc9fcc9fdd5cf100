//! Fetching a torrent's metadata from a BitTorrent peer, for a download
//! that starts from a magnet link or a bare info-hash: the info dict over
//! BEP 9 `ut_metadata`, then (v2 and hybrid torrents) every piece layer
//! over BEP 52 hash requests, each proven against its file's root.
//!
//! One connection, after the handshakes, until the metadata is whole or
//! the peer fails us; nothing is parsed before it is checked (the info
//! dict against the info-hash, a layer range against the root). The
//! torrent's own session dials the peer again once the torrent exists
//! (what a `ut_metadata` peer sends meanwhile, bitfields and haves, is
//! read and dropped).
//!
//! - The info dict is asked for [`METADATA_WINDOW`] pieces at a time;
//!   its size is the peer's word until the hash checks, and must not
//!   exceed the caller's cap.
//! - Piece layers are asked for 512 hashes at a time, as libtorrent does,
//!   each range with the uncles that prove it up to the root.
//! - Every answer must come within [`ANSWER_TIMEOUT`] of its request,
//!   whatever else the peer sends meanwhile.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use sluice_storage::merkle::{FileTree, HashRange, MAX_HASH_RANGE, check_answer};
use sluice_storage::{Hash, Info, InfoHash, Metainfo};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

use super::wire::{
    CLIENT_NAME, ExtHandshake, Extra, Handshake, HashSpec, METADATA_PIECE, MetadataMsg,
    UT_METADATA_ID,
};
use crate::metadata::{ANSWER_TIMEOUT, FetchError};

/// `ut_metadata` pieces asked for at once.
pub const METADATA_WINDOW: u32 = 4;
/// The largest message read while fetching: a bitfield of up to two
/// million pieces (we do not know the torrent's piece count yet), or a
/// `ut_metadata` piece, or a `hashes` answer.
pub const MAX_FETCH_MESSAGE: usize = 256 * 1024 + 64;

const EXTENDED: u8 = 20;
const HASHES: u8 = 22;
const HASH_REJECT: u8 = 23;
const HAVE_NONE: u8 = 15;

/// Messages over the connection, as far as a metadata fetch needs them.
struct Conn<S> {
    io: S,
    buf: BytesMut,
    out: BytesMut,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    /// The next message's id and body, by `deadline`.
    async fn next(&mut self, deadline: Instant) -> Result<(u8, Bytes), FetchError> {
        loop {
            if self.buf.len() >= 4 {
                let len = u32::from_be_bytes(self.buf[..4].try_into().expect("4 bytes")) as usize;
                if len > MAX_FETCH_MESSAGE {
                    return Err(FetchError::Protocol(format!(
                        "a {len}-byte message (at most {MAX_FETCH_MESSAGE} before the metadata)"
                    )));
                }
                if self.buf.len() >= 4 + len {
                    self.buf.advance(4);
                    let mut body = self.buf.split_to(len).freeze();
                    if len == 0 {
                        continue; // keep-alive
                    }
                    let id = body.get_u8();
                    return Ok((id, body));
                }
                self.buf.reserve(4 + len - self.buf.len());
            }
            let read = tokio::time::timeout_at(deadline, self.io.read_buf(&mut self.buf))
                .await
                .map_err(|_| FetchError::Timeout(ANSWER_TIMEOUT))??;
            if read == 0 {
                return Err(FetchError::Closed);
            }
        }
    }

    /// Sends what is queued; a peer that does not read it within
    /// [`ANSWER_TIMEOUT`] is given up on.
    async fn send(&mut self) -> Result<(), FetchError> {
        let write = async {
            self.io.write_all(&self.out).await?;
            self.io.flush().await
        };
        tokio::time::timeout(ANSWER_TIMEOUT, write)
            .await
            .map_err(|_| FetchError::Timeout(ANSWER_TIMEOUT))??;
        self.out.clear();
        Ok(())
    }
}

/// What [`fetch`] got.
#[derive(Debug)]
pub enum Fetched {
    /// The whole metadata, checked.
    Whole(Box<Metainfo>),
    /// The info dict of a hybrid, checked, over a connection named by its
    /// v1 info-hash: libtorrent answers hash requests only on connections
    /// named by the v2 one, so the piece layers come over another
    /// ([`fetch_layers`], after a handshake with the truncated SHA-256 of
    /// this dict).
    Info(Vec<u8>),
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    /// Our extension handshake (ut_metadata, no metadata to give), and
    /// `have none` to a fast peer.
    async fn intro(io: S, theirs: &Handshake) -> Result<Self, FetchError> {
        if !theirs.extended() {
            return Err(FetchError::Lacks);
        }
        let mut conn = Conn {
            io,
            buf: BytesMut::with_capacity(64 * 1024),
            out: BytesMut::new(),
        };
        let ours = ExtHandshake {
            client: Some(CLIENT_NAME.to_owned()),
            reqq: None,
            ut_metadata: Some(UT_METADATA_ID),
            metadata_size: None,
        };
        Extra::ExtHandshake(ours).encode(&mut conn.out);
        if theirs.fast() {
            conn.out.put_u32(1);
            conn.out.put_u8(HAVE_NONE);
        }
        conn.send().await?;
        Ok(conn)
    }
}

/// Fetches and checks a torrent's metadata from a BitTorrent peer whose
/// handshake (`theirs`) we have read on `io`. The info dict must be the
/// one `info_hash` names (a v1 key's SHA-1, else SHA-256); the info dict
/// and its piece layers together may not exceed `cap` bytes.
///
/// Cancel-safe in the sense that dropping it drops the connection.
pub async fn fetch<S: AsyncRead + AsyncWrite + Unpin>(
    io: S,
    theirs: &Handshake,
    info_hash: InfoHash,
    cap: u64,
) -> Result<Fetched, FetchError> {
    let mut conn = Conn::intro(io, theirs).await?;
    let raw = fetch_info(&mut conn, cap).await?;
    if !info_hash.names_info(&raw) {
        return Err(FetchError::False(
            "an info dict that does not hash to the info-hash".into(),
        ));
    }
    let info = Info::from_bytes(&raw).map_err(|e| FetchError::False(e.to_string()))?;
    let has_layers = info.files().iter().any(|f| {
        FileTree::new(f.length, info.piece_length()).has_piece_layer() && f.pieces_root.is_some()
    });
    if info_hash.as_v1().is_some() && has_layers {
        return Ok(Fetched::Info(raw));
    }
    layers(&mut conn, &raw, &info, cap)
        .await
        .map(|m| Fetched::Whole(Box::new(m)))
}

/// The piece layers of `raw` (an info dict already checked, see
/// [`Fetched::Info`]) from a peer whose handshake we have read on `io`;
/// `cap` bounds the dict and the layers together.
///
/// Cancel-safe in the sense that dropping it drops the connection.
pub async fn fetch_layers<S: AsyncRead + AsyncWrite + Unpin>(
    io: S,
    theirs: &Handshake,
    raw: &[u8],
    cap: u64,
) -> Result<Metainfo, FetchError> {
    let info = Info::from_bytes(raw).map_err(|e| FetchError::False(e.to_string()))?;
    let mut conn = Conn::intro(io, theirs).await?;
    layers(&mut conn, raw, &info, cap).await
}

/// Every file's piece layer, then the `.torrent` they make with `raw`.
async fn layers<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut Conn<S>,
    raw: &[u8],
    info: &Info,
    cap: u64,
) -> Result<Metainfo, FetchError> {
    // The layers' sizes follow from the (checked) info dict: refuse a
    // torrent over the cap before asking for any of them.
    let shapes: Vec<(Option<Hash>, FileTree)> = info
        .files()
        .iter()
        .map(|f| (f.pieces_root, FileTree::new(f.length, info.piece_length())))
        .collect();
    let layer_bytes: u64 = shapes
        .iter()
        .filter(|(root, shape)| root.is_some() && shape.has_piece_layer())
        .map(|(_, shape)| shape.blocks.div_ceil(shape.blocks_per_piece) * 32)
        .fold(0u64, u64::saturating_add);
    let size = layer_bytes.saturating_add(raw.len() as u64);
    if size > cap {
        return Err(FetchError::TooLarge { size, cap });
    }
    let mut layers = Vec::with_capacity(shapes.len());
    for (root, shape) in shapes {
        match root {
            Some(root) if shape.has_piece_layer() => {
                layers.push(fetch_layer(conn, &root, shape).await?);
            }
            _ => layers.push(Vec::new()),
        }
    }
    Metainfo::assemble(raw, &layers, b"de").map_err(|e| FetchError::False(e.to_string()))
}

/// The info dict over `ut_metadata`: the peer's extension handshake says
/// its size and the id to ask with.
async fn fetch_info<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut Conn<S>,
    cap: u64,
) -> Result<Vec<u8>, FetchError> {
    let deadline = Instant::now() + ANSWER_TIMEOUT;
    let (their_id, size) = loop {
        let (id, body) = conn.next(deadline).await?;
        if id != EXTENDED || body.first() != Some(&0) {
            continue;
        }
        let h = ExtHandshake::parse(&body[1..]);
        match (h.ut_metadata, h.metadata_size) {
            (Some(id), Some(size)) if size > 0 => break (id, size),
            _ => return Err(FetchError::Lacks),
        }
    };
    if u64::from(size) > cap {
        return Err(FetchError::TooLarge {
            size: u64::from(size),
            cap,
        });
    }
    let size = size as usize;
    let pieces = size.div_ceil(METADATA_PIECE) as u32;
    let mut raw = vec![0u8; size];
    let mut got = vec![false; pieces as usize];
    let mut asked = 0u32;
    let mut received = 0u32;
    // Reset only by progress: a peer that talks without answering runs
    // out of time all the same.
    let mut deadline = Instant::now() + ANSWER_TIMEOUT;
    while received < pieces {
        if asked < pieces && asked < received + METADATA_WINDOW {
            deadline = Instant::now() + ANSWER_TIMEOUT;
        }
        while asked < pieces && asked < received + METADATA_WINDOW {
            let payload = MetadataMsg::Request { piece: asked }.to_bytes();
            Extra::Extended {
                id: their_id,
                payload: payload.into(),
            }
            .encode(&mut conn.out);
            asked += 1;
        }
        if !conn.out.is_empty() {
            conn.send().await?;
        }
        let (id, body) = conn.next(deadline).await?;
        if id != EXTENDED || body.first() != Some(&UT_METADATA_ID) {
            continue;
        }
        let payload = &body[1..];
        let Some((msg, at)) = MetadataMsg::parse(payload) else {
            return Err(FetchError::Protocol(
                "a ut_metadata message that does not parse".into(),
            ));
        };
        match msg {
            MetadataMsg::Data { piece, total_size } => {
                let start = piece as usize * METADATA_PIECE;
                let want = (size.saturating_sub(start)).min(METADATA_PIECE);
                let data = &payload[at..];
                if total_size as usize != size
                    || piece >= asked
                    || got[piece as usize]
                    || data.len() != want
                {
                    return Err(FetchError::Protocol(format!(
                        "ut_metadata piece {piece} of {} bytes (total {total_size}) where {want} bytes of {size} were due",
                        data.len()
                    )));
                }
                raw[start..start + want].copy_from_slice(data);
                got[piece as usize] = true;
                received += 1;
            }
            MetadataMsg::Reject { .. } => return Err(FetchError::Lacks),
            // A peer asking us for metadata: we have none to give.
            MetadataMsg::Request { piece } => {
                Extra::Extended {
                    id: their_id,
                    payload: MetadataMsg::Reject { piece }.to_bytes().into(),
                }
                .encode(&mut conn.out);
            }
        }
    }
    Ok(raw)
}

/// One file's piece layer over BEP 52 hash requests, proven range by
/// range against `root`; returns the layer's bytes. The caller has
/// checked the layer's size against the cap.
async fn fetch_layer<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut Conn<S>,
    root: &Hash,
    shape: FileTree,
) -> Result<Vec<u8>, FetchError> {
    let pieces = shape.blocks.div_ceil(shape.blocks_per_piece);
    // Hash requests name pieces in 32 bits.
    let Ok(last) = u32::try_from(pieces) else {
        return Err(FetchError::False(format!(
            "a file of {pieces} pieces, more than a hash request can name"
        )));
    };
    let base = shape.blocks_per_piece.trailing_zeros();
    let height = shape.blocks.next_power_of_two().trailing_zeros();
    let mut layer = Vec::with_capacity(pieces as usize * 32);
    let mut index = 0u32;
    while index < last {
        let count = u64::from(last - index)
            .next_power_of_two()
            .clamp(2, u64::from(MAX_HASH_RANGE)) as u32;
        let range = HashRange::to_root(base, index, count, height);
        let spec = HashSpec {
            pieces_root: *root,
            base_layer: range.base,
            index: range.index,
            length: range.count,
            proof_layers: range.proof_layers,
        };
        Extra::HashRequest(spec).encode(&mut conn.out);
        conn.send().await?;
        let deadline = Instant::now() + ANSWER_TIMEOUT;
        let hashes = loop {
            let (id, mut body) = conn.next(deadline).await?;
            if id != HASHES && id != HASH_REJECT {
                continue;
            }
            if body.len() < HashSpec::LEN {
                return Err(FetchError::Protocol(format!(
                    "a hash message of {} bytes",
                    body.len()
                )));
            }
            let got = HashSpec::read(&mut body);
            if got != spec {
                continue; // an answer to a request of someone else's
            }
            if id == HASH_REJECT {
                return Err(FetchError::Lacks);
            }
            break body;
        };
        if hashes.len() % 32 != 0 {
            return Err(FetchError::Protocol(
                "hashes not a multiple of 32 bytes".into(),
            ));
        }
        let hashes: Vec<Hash> = hashes
            .chunks_exact(32)
            .map(|h| h.try_into().expect("32 bytes"))
            .collect();
        let proven = check_answer(root, height, &range, &hashes).ok_or_else(|| {
            FetchError::False(format!(
                "piece hashes from {index} ({count}) that do not prove against the file's root"
            ))
        })?;
        let real = (last - index).min(count) as usize;
        for h in &proven[..real] {
            layer.extend_from_slice(h);
        }
        index = index.saturating_add(count);
    }
    Ok(layer)
}

#[cfg(test)]
mod tests;
