//! `/sluice/metadata/1`: fetching a torrent's metadata from peers, for a
//! download that starts from a magnet link or a bare info-hash.
//!
//! Like BEP 9 (`ut_metadata`) and BEP 52's hash requests, on its own
//! libp2p stream beside the piece streams. The fetcher asks for one object
//! at a time, in chunks of at most [`CHUNK`] bytes, one request in flight:
//!
//! - [`Object::Info`]: the bencoded `info` dict. Its SHA-256 must be the
//!   info-hash before a byte of it is parsed.
//! - [`Object::Layer`]: a file's piece layer, named by its `pieces root`;
//!   checked against the root when the `.torrent` is assembled.
//! - [`Object::Extras`]: `comment`, `created by`, `creation date` (nothing
//!   vouches for them; they make the rebuilt `.torrent` byte-identical).
//!
//! Frames: `u32` big-endian body length, then a type byte.
//! - 1 request: info-hash (32), object (1: 0 info, 1 layer, 2 extras),
//!   pieces root (32, layers only), offset (`u64`).
//! - 2 chunk: total length of the object (`u64`), offset (`u64`), data.
//! - 3 reject: reason (1: 0 unknown torrent, 1 unknown object, 2 bad offset).
//!
//! The codec is pure ([`Frame::decode`] / [`Frame::encode`]); [`fetch`] and
//! [`serve`] drive it over any async byte stream.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use libp2p::StreamProtocol;
use sluice_storage::{Hash, Info, InfoHash, Metainfo};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The metadata protocol.
pub const METADATA_PROTOCOL: StreamProtocol = StreamProtocol::new("/sluice/metadata/1");
/// The most data one chunk carries (BEP 9's metadata piece size).
pub const CHUNK: usize = 16 * 1024;
/// The largest frame body: a chunk's header and data.
pub const MAX_META_FRAME: usize = 1 + 8 + 8 + CHUNK;
/// Extras are a few short strings; more is not believed.
pub const MAX_EXTRAS: u64 = 64 * 1024;
/// Default cap on an info dict plus its piece layers.
pub const DEFAULT_MAX_METADATA: u64 = 16 * 1024 * 1024;

const REQUEST: u8 = 1;
const CHUNK_TYPE: u8 = 2;
const REJECT: u8 = 3;

/// What a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Object {
    Info,
    Layer(Hash),
    Extras,
}

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reject {
    UnknownTorrent = 0,
    UnknownObject = 1,
    BadOffset = 2,
}

/// One frame of the protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Request {
        info_hash: InfoHash,
        object: Object,
        offset: u64,
    },
    Chunk {
        total: u64,
        offset: u64,
        data: Bytes,
    },
    Reject(Reject),
}

/// A frame that cannot be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("metadata frame of {0} bytes exceeds the maximum of {MAX_META_FRAME}")]
    TooLong(usize),
    #[error("unknown metadata frame type {0}")]
    UnknownType(u8),
    #[error("metadata frame type {kind} with a {len}-byte body")]
    BadLength { kind: u8, len: usize },
    #[error("unknown metadata object {0}")]
    UnknownObject(u8),
    #[error("unknown reject reason {0}")]
    UnknownReason(u8),
}

impl Frame {
    /// Appends the frame, length prefix included.
    pub fn encode(&self, out: &mut BytesMut) {
        let start = out.len();
        out.put_u32(0);
        match self {
            Frame::Request {
                info_hash,
                object,
                offset,
            } => {
                out.put_u8(REQUEST);
                out.put_slice(&info_hash.0);
                match object {
                    Object::Info => out.put_u8(0),
                    Object::Layer(root) => {
                        out.put_u8(1);
                        out.put_slice(root);
                    }
                    Object::Extras => out.put_u8(2),
                }
                out.put_u64(*offset);
            }
            Frame::Chunk {
                total,
                offset,
                data,
            } => {
                out.put_u8(CHUNK_TYPE);
                out.put_u64(*total);
                out.put_u64(*offset);
                out.put_slice(data);
            }
            Frame::Reject(r) => {
                out.put_u8(REJECT);
                out.put_u8(*r as u8);
            }
        }
        let len = (out.len() - start - 4) as u32;
        out[start..start + 4].copy_from_slice(&len.to_be_bytes());
    }

    /// The next whole frame in `src`, consumed; `None` until one is there.
    /// Never buffers beyond one maximal frame: a longer length is an error.
    pub fn decode(src: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        let Some(prefix) = src.get(..4) else {
            return Ok(None);
        };
        let len = u32::from_be_bytes(prefix.try_into().expect("4 bytes")) as usize;
        if len > MAX_META_FRAME {
            return Err(FrameError::TooLong(len));
        }
        if src.len() < 4 + len {
            return Ok(None);
        }
        src.advance(4);
        let mut body = src.split_to(len).freeze();
        let bad = |kind, len| FrameError::BadLength { kind, len };
        if body.is_empty() {
            return Err(bad(0, 0));
        }
        let kind = body.get_u8();
        let frame = match kind {
            REQUEST => {
                if body.len() != 32 + 1 + 8 && body.len() != 32 + 1 + 32 + 8 {
                    return Err(bad(kind, len));
                }
                let mut ih = [0u8; 32];
                body.copy_to_slice(&mut ih);
                let object = match (body.get_u8(), body.len()) {
                    (0, 8) => Object::Info,
                    (2, 8) => Object::Extras,
                    (1, 40) => {
                        let mut root = [0u8; 32];
                        body.copy_to_slice(&mut root);
                        Object::Layer(root)
                    }
                    (0..=2, _) => return Err(bad(kind, len)),
                    (other, _) => return Err(FrameError::UnknownObject(other)),
                };
                Frame::Request {
                    info_hash: InfoHash(ih),
                    object,
                    offset: body.get_u64(),
                }
            }
            CHUNK_TYPE => {
                if body.len() < 16 {
                    return Err(bad(kind, len));
                }
                let total = body.get_u64();
                let offset = body.get_u64();
                Frame::Chunk {
                    total,
                    offset,
                    data: body,
                }
            }
            REJECT => {
                if body.len() != 1 {
                    return Err(bad(kind, len));
                }
                Frame::Reject(match body.get_u8() {
                    0 => Reject::UnknownTorrent,
                    1 => Reject::UnknownObject,
                    2 => Reject::BadOffset,
                    other => return Err(FrameError::UnknownReason(other)),
                })
            }
            other => return Err(FrameError::UnknownType(other)),
        };
        Ok(Some(frame))
    }
}

/// Why a fetch from one peer failed. [`is_misbehaviour`](Self::is_misbehaviour)
/// tells the ones that make the peer not worth asking again.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("the peer does not have this torrent")]
    Lacks,
    #[error("the metadata is {size} bytes, over the cap of {cap} (--max-metadata)")]
    TooLarge { size: u64, cap: u64 },
    #[error("the peer sent false metadata: {0}")]
    False(String),
    #[error("protocol violation: {0}")]
    Protocol(String),
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("i/o error")]
    Io(#[from] std::io::Error),
    #[error("the peer closed the stream")]
    Closed,
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

impl FetchError {
    /// The peer lied or broke the protocol: never ask it again.
    pub fn is_misbehaviour(&self) -> bool {
        matches!(
            self,
            Self::TooLarge { .. } | Self::False(_) | Self::Protocol(_) | Self::Frame(_)
        )
    }
}

/// Frames over a byte stream.
struct Framed<S> {
    io: S,
    buf: BytesMut,
    out: BytesMut,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Framed<S> {
    fn new(io: S) -> Self {
        Self {
            io,
            buf: BytesMut::with_capacity(MAX_META_FRAME + 4),
            out: BytesMut::with_capacity(MAX_META_FRAME + 4),
        }
    }

    /// The next frame, or `None` once the peer closed the stream cleanly.
    async fn next(&mut self, timeout: Duration) -> Result<Option<Frame>, FetchError> {
        loop {
            if let Some(f) = Frame::decode(&mut self.buf)? {
                return Ok(Some(f));
            }
            let read = tokio::time::timeout(timeout, self.io.read_buf(&mut self.buf))
                .await
                .map_err(|_| FetchError::Timeout(timeout))??;
            if read == 0 {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                return Err(FetchError::Closed);
            }
        }
    }

    async fn send(&mut self, f: &Frame) -> Result<(), FetchError> {
        self.out.clear();
        f.encode(&mut self.out);
        self.io.write_all(&self.out).await?;
        self.io.flush().await?;
        Ok(())
    }
}

/// How long a peer may take to answer one request.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(20);

/// Fetches one object chunk by chunk; its size must not exceed `cap`.
async fn fetch_object<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut Framed<S>,
    info_hash: InfoHash,
    object: Object,
    cap: u64,
) -> Result<Vec<u8>, FetchError> {
    let mut out = Vec::new();
    let mut total = None;
    loop {
        let offset = out.len() as u64;
        io.send(&Frame::Request {
            info_hash,
            object,
            offset,
        })
        .await?;
        let frame = io.next(ANSWER_TIMEOUT).await?.ok_or(FetchError::Closed)?;
        let (t, at, data) = match frame {
            Frame::Chunk {
                total,
                offset,
                data,
            } => (total, offset, data),
            Frame::Reject(Reject::UnknownTorrent | Reject::UnknownObject) => {
                return Err(FetchError::Lacks);
            }
            Frame::Reject(Reject::BadOffset) => {
                return Err(FetchError::Protocol(format!(
                    "offset {offset} refused inside the object"
                )));
            }
            Frame::Request { .. } => {
                return Err(FetchError::Protocol(
                    "a request where a chunk was due".into(),
                ));
            }
        };
        if t > cap {
            return Err(FetchError::TooLarge { size: t, cap });
        }
        // The total never changes, so offset < t below.
        if *total.get_or_insert(t) != t {
            return Err(FetchError::Protocol(format!(
                "the object's size changed to {t} mid-fetch"
            )));
        }
        let want = (t - offset).min(CHUNK as u64);
        if at != offset || data.len() as u64 != want {
            return Err(FetchError::Protocol(format!(
                "chunk at {at} of {} bytes (total {t}), asked for {want} at {offset}",
                data.len()
            )));
        }
        if out.is_empty() {
            // Grow with what arrives, not with what the peer claims.
            out.reserve(t.min(4 * CHUNK as u64) as usize);
        }
        out.extend_from_slice(&data);
        if out.len() as u64 == t {
            return Ok(out);
        }
    }
}

/// Fetches and checks a whole torrent's metadata from one peer over `io`:
/// the info dict (its hash must be `info_hash`), every piece layer (each
/// must hash to its file's root) and the extras. `cap` bounds the info dict
/// and the layers together.
///
/// Cancel-safe in the sense that dropping it drops the stream.
pub async fn fetch<S: AsyncRead + AsyncWrite + Unpin>(
    io: S,
    info_hash: InfoHash,
    cap: u64,
) -> Result<Metainfo, FetchError> {
    let mut io = Framed::new(io);
    let raw = fetch_object(&mut io, info_hash, Object::Info, cap).await?;
    // A v1 key names the dict by its SHA-1.
    if !info_hash.names_info(&raw) {
        return Err(FetchError::False(format!(
            "an info dict that does not hash to {info_hash}"
        )));
    }
    let info = Info::from_bytes(&raw).map_err(|e| FetchError::False(e.to_string()))?;
    let mut left = cap - raw.len() as u64;
    let mut layers = Vec::with_capacity(info.files().len());
    for file in info.files() {
        match file.pieces_root {
            Some(root) if file.length > u64::from(info.piece_length()) => {
                let layer = fetch_object(&mut io, info_hash, Object::Layer(root), left)
                    .await
                    .map_err(|e| match e {
                        // It served the info dict, so it has the torrent.
                        FetchError::Lacks => {
                            FetchError::False(format!("no piece layer for {}", file.display_path()))
                        }
                        FetchError::TooLarge { size, .. } => FetchError::TooLarge {
                            size: size.saturating_add(cap - left),
                            cap,
                        },
                        e => e,
                    })?;
                left -= layer.len() as u64;
                layers.push(layer);
            }
            _ => layers.push(Vec::new()),
        }
    }
    let extras = match fetch_object(&mut io, info_hash, Object::Extras, MAX_EXTRAS).await {
        Ok(e) => e,
        Err(FetchError::Lacks | FetchError::TooLarge { .. }) => b"de".to_vec(),
        Err(e) => return Err(e),
    };
    Metainfo::assemble(&raw, &layers, &extras).map_err(|e| FetchError::False(e.to_string()))
}

/// Answers metadata requests on `io` until the peer closes it, breaks the
/// protocol, or says nothing for `idle`. `lookup` finds a torrent we serve.
/// Each object is built once per stream, not once per chunk.
pub async fn serve<S, F>(io: S, lookup: F, idle: Duration) -> Result<(), FetchError>
where
    S: AsyncRead + AsyncWrite + Unpin,
    F: Fn(&InfoHash) -> Option<Arc<Metainfo>>,
{
    let mut io = Framed::new(io);
    let mut built: Option<(InfoHash, Object, Bytes)> = None;
    while let Some(frame) = io.next(idle).await? {
        let Frame::Request {
            info_hash,
            object,
            offset,
        } = frame
        else {
            return Err(FetchError::Protocol(format!(
                "{frame:?} where a request was due"
            )));
        };
        let cached = built
            .as_ref()
            .filter(|(ih, o, _)| *ih == info_hash && *o == object)
            .map(|(_, _, b)| b.clone());
        let bytes = match cached {
            Some(b) => Some(b),
            None => match lookup(&info_hash) {
                None => {
                    io.send(&Frame::Reject(Reject::UnknownTorrent)).await?;
                    continue;
                }
                Some(meta) => object_bytes(&meta, object).inspect(|b| {
                    built = Some((info_hash, object, b.clone()));
                }),
            },
        };
        let reply = match bytes {
            None => Frame::Reject(Reject::UnknownObject),
            Some(b) if offset >= b.len() as u64 && !(offset == 0 && b.is_empty()) => {
                Frame::Reject(Reject::BadOffset)
            }
            Some(b) => {
                let start = offset as usize;
                let end = (start + CHUNK).min(b.len());
                Frame::Chunk {
                    total: b.len() as u64,
                    offset,
                    data: b.slice(start..end),
                }
            }
        };
        io.send(&reply).await?;
    }
    Ok(())
}

fn object_bytes(meta: &Metainfo, object: Object) -> Option<Bytes> {
    match object {
        Object::Info => Some(Bytes::copy_from_slice(meta.info().raw())),
        Object::Extras => Some(Bytes::from(meta.extras())),
        Object::Layer(root) => meta
            .info()
            .files()
            .iter()
            .position(|f| f.pieces_root == Some(root))
            .map(|i| meta.piece_layer(i))
            .filter(|l| !l.is_empty())
            .map(|l| Bytes::from(l.concat())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames() -> Vec<Frame> {
        vec![
            Frame::Request {
                info_hash: InfoHash([7; 32]),
                object: Object::Info,
                offset: 0,
            },
            Frame::Request {
                info_hash: InfoHash([1; 32]),
                object: Object::Layer([9; 32]),
                offset: 16384,
            },
            Frame::Request {
                info_hash: InfoHash([2; 32]),
                object: Object::Extras,
                offset: u64::MAX,
            },
            Frame::Chunk {
                total: 100_000,
                offset: 16384,
                data: Bytes::from(vec![5u8; CHUNK]),
            },
            Frame::Chunk {
                total: 0,
                offset: 0,
                data: Bytes::new(),
            },
            Frame::Reject(Reject::UnknownTorrent),
            Frame::Reject(Reject::UnknownObject),
            Frame::Reject(Reject::BadOffset),
        ]
    }

    #[test]
    fn frames_decode_when_cut_at_every_point() {
        let mut all = BytesMut::new();
        for f in frames() {
            f.encode(&mut all);
        }
        for cut in 0..=all.len() {
            let mut buf = BytesMut::from(&all[..cut]);
            let mut got = Vec::new();
            while let Some(f) = Frame::decode(&mut buf).expect("valid") {
                got.push(f);
            }
            buf.extend_from_slice(&all[cut..]);
            while let Some(f) = Frame::decode(&mut buf).expect("valid") {
                got.push(f);
            }
            assert_eq!(got, frames(), "cut at {cut}");
            assert!(buf.is_empty());
        }
    }

    #[test]
    fn bad_frames_are_errors() {
        let cases: Vec<(Vec<u8>, FrameError)> = vec![
            (
                ((MAX_META_FRAME + 1) as u32).to_be_bytes().to_vec(),
                FrameError::TooLong(MAX_META_FRAME + 1),
            ),
            (vec![0, 0, 0, 0], FrameError::BadLength { kind: 0, len: 0 }),
            (vec![0, 0, 0, 1, 9], FrameError::UnknownType(9)),
            (vec![0, 0, 0, 2, 3, 7], FrameError::UnknownReason(7)),
            (
                vec![0, 0, 0, 3, 3, 0, 0],
                FrameError::BadLength { kind: 3, len: 3 },
            ),
            (
                vec![0, 0, 0, 5, 2, 0, 0, 0, 0],
                FrameError::BadLength { kind: 2, len: 5 },
            ),
            (
                [&[0, 0, 0, 42, 1][..], &[0; 32], &[5], &[0; 8]].concat(),
                FrameError::UnknownObject(5),
            ),
            (
                [&[0, 0, 0, 42, 1][..], &[0; 32], &[1], &[0; 8]].concat(),
                FrameError::BadLength { kind: 1, len: 42 },
            ),
        ];
        for (bytes, want) in cases {
            let mut buf = BytesMut::from(&bytes[..]);
            assert_eq!(Frame::decode(&mut buf), Err(want), "{bytes:?}");
        }
    }

    fn torrent(len: usize, piece: u32) -> (tempfile::TempDir, Metainfo) {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("f.bin");
        let data: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
        std::fs::write(&path, data).expect("write");
        let opts = sluice_storage::CreateOptions::default().with_piece_length(Some(piece));
        let meta = sluice_storage::create(&path, &opts, &std::sync::atomic::AtomicU64::new(0))
            .expect("create");
        (dir, meta)
    }

    async fn fetch_from(
        served: Option<Arc<Metainfo>>,
        ih: InfoHash,
        cap: u64,
    ) -> Result<Metainfo, FetchError> {
        let (a, b) = tokio::io::duplex(64 * 1024);
        let server = tokio::spawn(serve(b, move |_| served.clone(), Duration::from_secs(5)));
        let got = tokio::time::timeout(Duration::from_secs(10), fetch(a, ih, cap))
            .await
            .expect("fetch finishes");
        let _ = tokio::time::timeout(Duration::from_secs(10), server).await;
        got
    }

    #[tokio::test]
    async fn a_fetched_torrent_is_the_served_one_byte_for_byte() {
        // 64 pieces of 16 KiB: a 2 KiB layer; the info dict is small.
        let (_dir, meta) = torrent(64 * 16384 + 5, 16384);
        let ih = meta.info().info_hash();
        let meta = Arc::new(meta);
        let got = fetch_from(Some(Arc::clone(&meta)), ih, DEFAULT_MAX_METADATA)
            .await
            .expect("fetched");
        assert_eq!(got.to_bytes(), meta.to_bytes());
    }

    #[tokio::test]
    async fn over_the_cap_unknown_and_false_metadata_are_told_apart() {
        let (_d1, meta) = torrent(64 * 16384, 16384);
        let (_d2, other) = torrent(3 * 16384, 16384);
        let ih = meta.info().info_hash();
        let meta = Arc::new(meta);

        let e = fetch_from(Some(Arc::clone(&meta)), ih, 100)
            .await
            .unwrap_err();
        assert!(matches!(e, FetchError::TooLarge { cap: 100, .. }), "{e}");
        assert!(e.is_misbehaviour());
        // The info dict fits but the layer does not: the size named is both.
        let cap = meta.info().raw().len() as u64 + 10;
        let e = fetch_from(Some(Arc::clone(&meta)), ih, cap)
            .await
            .unwrap_err();
        let FetchError::TooLarge { size, .. } = e else {
            panic!("{e}")
        };
        assert_eq!(size, meta.info().raw().len() as u64 + 64 * 32);

        let e = fetch_from(None, ih, DEFAULT_MAX_METADATA)
            .await
            .unwrap_err();
        assert!(matches!(e, FetchError::Lacks), "{e}");
        assert!(!e.is_misbehaviour());

        // A peer that answers every info-hash with another torrent's.
        let e = fetch_from(Some(Arc::new(other)), ih, DEFAULT_MAX_METADATA)
            .await
            .unwrap_err();
        assert!(matches!(e, FetchError::False(_)), "{e}");
        assert!(e.is_misbehaviour());
    }
}
