//! The `/sluice/pieces/1` wire protocol: length-prefixed frames, a pure
//! codec.
//!
//! Frame: `u32` big-endian length of what follows, then a one-byte message
//! type and its payload. A zero length is a keep-alive. No frame is longer
//! than [`MAX_FRAME`] (a 16 KiB block plus its header); a longer length
//! prefix, an unknown type or a payload of the wrong size is a
//! [`WireError`], on which the session closes the stream — the decoder never
//! panics and never buffers more than one maximal frame.
//!
//! Bitfields longer than one frame (torrents of more than 131,008 pieces)
//! travel as several [`Message::Bitfield`] chunks, each saying which piece
//! its first bit is.
//!
//! Indices are not checked against a torrent here; the session does that
//! with the torrent's `Layout`.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Protocol version carried in the handshake.
pub const VERSION: u8 = 1;
/// The largest block a `Piece` may carry.
pub const MAX_BLOCK: usize = 16 * 1024;
/// Header of a `Piece` frame after the length: type, piece, offset.
const PIECE_HEADER: usize = 1 + 4 + 4;
/// The largest frame body (after the length prefix).
pub const MAX_FRAME: usize = MAX_BLOCK + PIECE_HEADER;
/// Most bitfield bytes in one frame (after type and first-piece index).
pub const MAX_BITFIELD_CHUNK: usize = MAX_FRAME - 1 - 4;

/// A request, cancel or reject names a block by piece, byte offset within
/// the piece, and length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BlockSpec {
    pub piece: u32,
    pub offset: u32,
    pub len: u32,
}

/// One message of the protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    KeepAlive,
    /// First message each way: who we are, for which torrent, and how many
    /// requests we accept outstanding (like BitTorrent's `reqq`).
    Handshake {
        version: u8,
        info_hash: [u8; 32],
        pieces: u32,
        max_requests: u32,
    },
    /// A chunk of the sender's bitfield (MSB first) starting at piece
    /// `first_piece` (a multiple of 8).
    Bitfield {
        first_piece: u32,
        bits: Bytes,
    },
    HaveAll,
    HaveNone,
    Have(u32),
    Interested,
    NotInterested,
    Choke,
    Unchoke,
    Request(BlockSpec),
    Piece {
        piece: u32,
        offset: u32,
        data: Bytes,
    },
    Cancel(BlockSpec),
    /// We will not serve this request (choked, queue full, piece not held).
    Reject(BlockSpec),
    /// Our maximum outstanding requests changed.
    MaxRequests(u32),
}

mod kind {
    pub(super) const HANDSHAKE: u8 = 0;
    pub(super) const BITFIELD: u8 = 1;
    pub(super) const HAVE_ALL: u8 = 2;
    pub(super) const HAVE_NONE: u8 = 3;
    pub(super) const HAVE: u8 = 4;
    pub(super) const INTERESTED: u8 = 5;
    pub(super) const NOT_INTERESTED: u8 = 6;
    pub(super) const CHOKE: u8 = 7;
    pub(super) const UNCHOKE: u8 = 8;
    pub(super) const REQUEST: u8 = 9;
    pub(super) const PIECE: u8 = 10;
    pub(super) const CANCEL: u8 = 11;
    pub(super) const REJECT: u8 = 12;
    pub(super) const MAX_REQUESTS: u8 = 13;
}

/// Why a peer's bytes were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("frame of {0} bytes exceeds the maximum of {MAX_FRAME}")]
    TooLong(usize),
    #[error("unknown message type {0}")]
    UnknownType(u8),
    #[error("message type {kind} with a {len}-byte payload")]
    BadLength { kind: u8, len: usize },
    #[error("bitfield chunk starts at piece {0}, not a multiple of 8")]
    Misaligned(u32),
    #[error("not a BitTorrent handshake")]
    NotBitTorrent,
    #[error("bitfield of {got} bytes for a torrent that needs {want}")]
    BitfieldLength { got: usize, want: usize },
}

impl Message {
    /// Appends this message as one frame.
    pub fn encode(&self, dst: &mut BytesMut) {
        let fixed = |dst: &mut BytesMut, kind: u8, body: &[u32]| {
            dst.put_u32(1 + 4 * body.len() as u32);
            dst.put_u8(kind);
            for &v in body {
                dst.put_u32(v);
            }
        };
        match self {
            Message::KeepAlive => dst.put_u32(0),
            Message::Handshake {
                version,
                info_hash,
                pieces,
                max_requests,
            } => {
                dst.put_u32(1 + 1 + 32 + 4 + 4);
                dst.put_u8(kind::HANDSHAKE);
                dst.put_u8(*version);
                dst.put_slice(info_hash);
                dst.put_u32(*pieces);
                dst.put_u32(*max_requests);
            }
            Message::Bitfield { first_piece, bits } => {
                debug_assert!(bits.len() <= MAX_BITFIELD_CHUNK);
                dst.put_u32(1 + 4 + bits.len() as u32);
                dst.put_u8(kind::BITFIELD);
                dst.put_u32(*first_piece);
                dst.put_slice(bits);
            }
            Message::HaveAll => fixed(dst, kind::HAVE_ALL, &[]),
            Message::HaveNone => fixed(dst, kind::HAVE_NONE, &[]),
            Message::Have(p) => fixed(dst, kind::HAVE, &[*p]),
            Message::Interested => fixed(dst, kind::INTERESTED, &[]),
            Message::NotInterested => fixed(dst, kind::NOT_INTERESTED, &[]),
            Message::Choke => fixed(dst, kind::CHOKE, &[]),
            Message::Unchoke => fixed(dst, kind::UNCHOKE, &[]),
            Message::Request(b) => fixed(dst, kind::REQUEST, &[b.piece, b.offset, b.len]),
            Message::Cancel(b) => fixed(dst, kind::CANCEL, &[b.piece, b.offset, b.len]),
            Message::Reject(b) => fixed(dst, kind::REJECT, &[b.piece, b.offset, b.len]),
            Message::MaxRequests(n) => fixed(dst, kind::MAX_REQUESTS, &[*n]),
            Message::Piece {
                piece,
                offset,
                data,
            } => {
                debug_assert!(data.len() <= MAX_BLOCK);
                dst.reserve(4 + PIECE_HEADER + data.len());
                dst.put_u32((PIECE_HEADER + data.len()) as u32);
                dst.put_u8(kind::PIECE);
                dst.put_u32(*piece);
                dst.put_u32(*offset);
                dst.put_slice(data);
            }
        }
    }

    /// Takes one whole frame off the front of `src`, if there is one.
    /// `Ok(None)`: more bytes needed (and `src` can grow to at most one
    /// frame). A `Piece`'s data is split off `src` without copying.
    pub fn decode(src: &mut BytesMut) -> Result<Option<Message>, WireError> {
        if src.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([src[0], src[1], src[2], src[3]]) as usize;
        if len > MAX_FRAME {
            return Err(WireError::TooLong(len));
        }
        if src.len() < 4 + len {
            src.reserve(4 + len - src.len());
            return Ok(None);
        }
        src.advance(4);
        if len == 0 {
            return Ok(Some(Message::KeepAlive));
        }
        let mut body = src.split_to(len);
        let kind = body.get_u8();
        let n = body.len();
        let want = |expected: usize| {
            if n == expected {
                Ok(())
            } else {
                Err(WireError::BadLength { kind, len: n })
            }
        };
        let spec = |body: &mut BytesMut| BlockSpec {
            piece: body.get_u32(),
            offset: body.get_u32(),
            len: body.get_u32(),
        };
        let msg = match kind {
            kind::HANDSHAKE => {
                want(1 + 32 + 4 + 4)?;
                let version = body.get_u8();
                let mut info_hash = [0u8; 32];
                body.copy_to_slice(&mut info_hash);
                Message::Handshake {
                    version,
                    info_hash,
                    pieces: body.get_u32(),
                    max_requests: body.get_u32(),
                }
            }
            kind::BITFIELD => {
                if n < 4 {
                    return Err(WireError::BadLength { kind, len: n });
                }
                let first_piece = body.get_u32();
                if !first_piece.is_multiple_of(8) {
                    return Err(WireError::Misaligned(first_piece));
                }
                Message::Bitfield {
                    first_piece,
                    bits: body.freeze(),
                }
            }
            kind::HAVE_ALL => want(0).map(|()| Message::HaveAll)?,
            kind::HAVE_NONE => want(0).map(|()| Message::HaveNone)?,
            kind::HAVE => want(4).map(|()| Message::Have(body.get_u32()))?,
            kind::INTERESTED => want(0).map(|()| Message::Interested)?,
            kind::NOT_INTERESTED => want(0).map(|()| Message::NotInterested)?,
            kind::CHOKE => want(0).map(|()| Message::Choke)?,
            kind::UNCHOKE => want(0).map(|()| Message::Unchoke)?,
            kind::REQUEST => want(12).map(|()| Message::Request(spec(&mut body)))?,
            kind::CANCEL => want(12).map(|()| Message::Cancel(spec(&mut body)))?,
            kind::REJECT => want(12).map(|()| Message::Reject(spec(&mut body)))?,
            kind::MAX_REQUESTS => want(4).map(|()| Message::MaxRequests(body.get_u32()))?,
            kind::PIECE => {
                if n < 8 {
                    return Err(WireError::BadLength { kind, len: n });
                }
                let piece = body.get_u32();
                let offset = body.get_u32();
                Message::Piece {
                    piece,
                    offset,
                    data: body.freeze(),
                }
            }
            other => return Err(WireError::UnknownType(other)),
        };
        Ok(Some(msg))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples() -> Vec<Message> {
        let spec = BlockSpec {
            piece: 7,
            offset: 16384,
            len: 16384,
        };
        vec![
            Message::Handshake {
                version: VERSION,
                info_hash: [9; 32],
                pieces: 1000,
                max_requests: 250,
            },
            Message::Bitfield {
                first_piece: 0,
                bits: Bytes::from_static(&[0xff, 0x80]),
            },
            Message::Bitfield {
                first_piece: 8 * MAX_BITFIELD_CHUNK as u32,
                bits: Bytes::from(vec![0xAA; MAX_BITFIELD_CHUNK]),
            },
            Message::KeepAlive,
            Message::HaveAll,
            Message::HaveNone,
            Message::Have(u32::MAX),
            Message::Interested,
            Message::NotInterested,
            Message::Choke,
            Message::Unchoke,
            Message::Request(spec),
            Message::Piece {
                piece: 3,
                offset: 0,
                data: Bytes::from(vec![0x5a; MAX_BLOCK]),
            },
            Message::Piece {
                piece: 3,
                offset: 16384,
                data: Bytes::from_static(b"x"),
            },
            Message::Cancel(spec),
            Message::Reject(spec),
            Message::MaxRequests(17),
        ]
    }

    #[test]
    fn every_message_round_trips() {
        let mut buf = BytesMut::new();
        for m in samples() {
            m.encode(&mut buf);
        }
        for m in samples() {
            assert_eq!(Message::decode(&mut buf).unwrap(), Some(m));
        }
        assert!(buf.is_empty());
        assert_eq!(Message::decode(&mut buf).unwrap(), None);
    }

    /// Feeding the stream cut at every offset gives the same messages.
    #[test]
    fn split_at_every_offset() {
        let mut all = BytesMut::new();
        for m in samples() {
            m.encode(&mut all);
        }
        let all = all.freeze();
        let step = if cfg!(debug_assertions) { 7 } else { 1 };
        for cut in (0..=all.len()).step_by(step) {
            let mut buf = BytesMut::new();
            let mut got = Vec::new();
            for part in [&all[..cut], &all[cut..]] {
                buf.extend_from_slice(part);
                while let Some(m) = Message::decode(&mut buf).unwrap() {
                    got.push(m);
                }
            }
            assert_eq!(got, samples(), "cut at {cut}");
        }
    }

    #[test]
    fn bad_frames_are_errors_not_panics() {
        let frame = |len: u32, body: &[u8]| {
            let mut b = BytesMut::new();
            b.put_u32(len);
            b.put_slice(body);
            b
        };
        let cases: Vec<(BytesMut, WireError)> = vec![
            (
                frame(MAX_FRAME as u32 + 1, &[]),
                WireError::TooLong(MAX_FRAME + 1),
            ),
            (frame(u32::MAX, &[]), WireError::TooLong(u32::MAX as usize)),
            (frame(1, &[99]), WireError::UnknownType(99)),
            (
                frame(2, &[kind::CHOKE, 0]),
                WireError::BadLength {
                    kind: kind::CHOKE,
                    len: 1,
                },
            ),
            (
                frame(4, &[kind::HAVE, 0, 0, 0]),
                WireError::BadLength {
                    kind: kind::HAVE,
                    len: 3,
                },
            ),
            (
                frame(5, &[kind::PIECE, 0, 0, 0, 0]),
                WireError::BadLength {
                    kind: kind::PIECE,
                    len: 4,
                },
            ),
            (
                frame(6, &[kind::BITFIELD, 0, 0, 0, 3, 0xff]),
                WireError::Misaligned(3),
            ),
            (
                frame(3, &[kind::HANDSHAKE, 1, 2]),
                WireError::BadLength {
                    kind: kind::HANDSHAKE,
                    len: 2,
                },
            ),
        ];
        for (mut buf, want) in cases {
            assert_eq!(Message::decode(&mut buf), Err(want));
        }
    }

    #[test]
    fn a_too_long_prefix_is_refused_before_buffering() {
        let mut b = BytesMut::new();
        b.put_u32(1 << 30);
        assert!(Message::decode(&mut b).is_err());
        assert!(b.capacity() < 1 << 20, "never reserved the claimed length");
    }
}
