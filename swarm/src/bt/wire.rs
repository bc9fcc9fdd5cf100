//! The BitTorrent peer wire as a pure codec: BEP 3 messages, BEP 6 (fast
//! extension), BEP 10 (extension protocol) and BEP 52 (hash request,
//! hashes, hash reject), translated to and from the torrent core's
//! [`Message`]s so a BitTorrent peer feeds the same core as a libp2p one.
//!
//! - What both wires say (choke, have, request, piece, reject, …) becomes
//!   a [`Message`]; what only BitTorrent says becomes an [`Extra`] that the
//!   session answers itself (an extension handshake, a hash request).
//! - What the core says that this peer cannot hear is translated or left
//!   out: `HaveAll` becomes a full bitfield and `Reject` nothing for a peer
//!   without the fast extension; `MaxRequests` becomes an extension
//!   handshake carrying `reqq`; the core's bitfield chunks become one
//!   `bitfield` message.
//! - v2 and hybrid torrents pad every file to a whole piece on this wire
//!   (libtorrent 2.0 adds a pad file after each, the last included), so
//!   every block is 16 KiB here: a file's short last block is asked for
//!   and sent as 16 KiB, the tail zeros. The codec maps between those
//!   and the core's exact block lengths, which it knows from the layout.
//!   (A hybrid of one file has no pad file: its last block is exact.)
//! - Lengths are checked before anything is buffered: a bitfield must be
//!   exactly the torrent's length (spare bits are the core's to check),
//!   every other message at most [`MAX_MESSAGE`].

use std::sync::Arc;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use sluice_storage::bencode::{self, Dict, Value};
use sluice_storage::{BLOCK_SIZE, Layout};

use crate::codec::{Codec, Inbound};
use crate::wire::{BlockSpec, MAX_BLOCK, Message, WireError};

/// `\x13BitTorrent protocol`: the handshake's first 20 bytes.
pub const PROTOCOL: &[u8; 20] = b"\x13BitTorrent protocol";
/// A handshake's length: protocol, reserved, info-hash, peer id.
pub const HANDSHAKE_LEN: usize = 68;
/// The largest message other than a bitfield: a 16 KiB block plus its
/// header, or a `ut_metadata` piece (16 KiB plus a small dict), or a
/// `hashes` message of 512 hashes plus proof; 32 KiB covers each with
/// room. (A peer that requests larger blocks gets a `Reject`; we never
/// request more than 16 KiB.)
pub const MAX_MESSAGE: usize = 32 * 1024 + 64;
/// Our client name in the extension handshake (`v`).
pub const CLIENT_NAME: &str = concat!("sluice ", env!("CARGO_PKG_VERSION"));
/// The id peers send us `ut_metadata` messages with (BEP 9; ours to pick).
pub const UT_METADATA_ID: u8 = 2;
/// A `ut_metadata` piece: the info dict travels in 16 KiB pieces.
pub const METADATA_PIECE: usize = 16 * 1024;

mod id {
    pub(super) const CHOKE: u8 = 0;
    pub(super) const UNCHOKE: u8 = 1;
    pub(super) const INTERESTED: u8 = 2;
    pub(super) const NOT_INTERESTED: u8 = 3;
    pub(super) const HAVE: u8 = 4;
    pub(super) const BITFIELD: u8 = 5;
    pub(super) const REQUEST: u8 = 6;
    pub(super) const PIECE: u8 = 7;
    pub(super) const CANCEL: u8 = 8;
    pub(super) const PORT: u8 = 9;
    pub(super) const SUGGEST: u8 = 13;
    pub(super) const HAVE_ALL: u8 = 14;
    pub(super) const HAVE_NONE: u8 = 15;
    pub(super) const REJECT: u8 = 16;
    pub(super) const ALLOWED_FAST: u8 = 17;
    pub(super) const EXTENDED: u8 = 20;
    pub(super) const HASH_REQUEST: u8 = 21;
    pub(super) const HASHES: u8 = 22;
    pub(super) const HASH_REJECT: u8 = 23;
}

/// Reserved bits we set and read (byte, mask).
mod reserved {
    /// BEP 10: the extension protocol.
    pub(super) const EXTENDED: (usize, u8) = (5, 0x10);
    /// BEP 6: the fast extension.
    pub(super) const FAST: (usize, u8) = (7, 0x04);
}

/// The first 68 bytes each way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Handshake {
    pub reserved: [u8; 8],
    /// The v1 info-hash, or the v2 one truncated to 20 bytes (BEP 52).
    pub info_hash: [u8; 20],
    pub peer_id: [u8; 20],
}

impl Handshake {
    /// Ours: fast extension and extension protocol on.
    pub fn ours(info_hash: [u8; 20], peer_id: [u8; 20]) -> Self {
        let mut reserved = [0u8; 8];
        for (byte, mask) in [reserved::EXTENDED, reserved::FAST] {
            reserved[byte] |= mask;
        }
        Self {
            reserved,
            info_hash,
            peer_id,
        }
    }

    pub fn encode(&self) -> [u8; HANDSHAKE_LEN] {
        let mut out = [0u8; HANDSHAKE_LEN];
        out[..20].copy_from_slice(PROTOCOL);
        out[20..28].copy_from_slice(&self.reserved);
        out[28..48].copy_from_slice(&self.info_hash);
        out[48..].copy_from_slice(&self.peer_id);
        out
    }

    /// The protocol string and info-hash (the first 48 bytes) are enough
    /// for an acceptor to pick the torrent before it answers.
    pub fn decode(bytes: &[u8; HANDSHAKE_LEN]) -> Result<Self, WireError> {
        if &bytes[..20] != PROTOCOL {
            return Err(WireError::NotBitTorrent);
        }
        let mut h = Self {
            reserved: [0; 8],
            info_hash: [0; 20],
            peer_id: [0; 20],
        };
        h.reserved.copy_from_slice(&bytes[20..28]);
        h.info_hash.copy_from_slice(&bytes[28..48]);
        h.peer_id.copy_from_slice(&bytes[48..]);
        Ok(h)
    }

    fn has(&self, (byte, mask): (usize, u8)) -> bool {
        self.reserved[byte] & mask != 0
    }

    /// It speaks BEP 6.
    pub fn fast(&self) -> bool {
        self.has(reserved::FAST)
    }

    /// It speaks BEP 10.
    pub fn extended(&self) -> bool {
        self.has(reserved::EXTENDED)
    }
}

/// A BEP 52 hash request, answer or refusal names a range of one layer
/// of one file's merkle tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HashSpec {
    pub pieces_root: [u8; 32],
    pub base_layer: u32,
    pub index: u32,
    pub length: u32,
    pub proof_layers: u32,
}

const HASH_SPEC_LEN: usize = HashSpec::LEN;

impl HashSpec {
    /// Its length on the wire.
    pub(crate) const LEN: usize = 32 + 4 * 4;

    /// Reads one from `body`, which must hold [`Self::LEN`] bytes.
    pub(crate) fn read(body: &mut impl Buf) -> Self {
        let mut pieces_root = [0u8; 32];
        body.copy_to_slice(&mut pieces_root);
        Self {
            pieces_root,
            base_layer: body.get_u32(),
            index: body.get_u32(),
            length: body.get_u32(),
            proof_layers: body.get_u32(),
        }
    }

    fn write(&self, dst: &mut BytesMut) {
        dst.put_slice(&self.pieces_root);
        for v in [self.base_layer, self.index, self.length, self.proof_layers] {
            dst.put_u32(v);
        }
    }
}

/// What the peer said in its extension handshake (BEP 10), as far as we
/// use it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExtHandshake {
    /// `v`: its client name and version.
    pub client: Option<String>,
    /// `reqq`: requests it queues before it drops them.
    pub reqq: Option<u32>,
    /// The id it wants `ut_metadata` messages sent with (0: none).
    pub ut_metadata: Option<u8>,
    pub metadata_size: Option<u32>,
}

/// Longest client name kept from a peer.
const MAX_CLIENT_NAME: usize = 64;

impl ExtHandshake {
    /// A handshake that does not decode is treated as empty: the
    /// extensions it names are optional, the connection is not.
    pub fn parse(payload: &[u8]) -> Self {
        let Ok(Value::Dict(d)) = bencode::decode(payload) else {
            return Self::default();
        };
        let int = |d: &Dict<'_>, k: &[u8]| match d.get(k) {
            Some(Value::Int(i)) => u32::try_from(*i).ok(),
            _ => None,
        };
        let ut_metadata = match d.get(b"m") {
            Some(Value::Dict(m)) => int(m, b"ut_metadata").and_then(|i| u8::try_from(i).ok()),
            _ => None,
        };
        let client = match d.get(b"v") {
            Some(Value::Bytes(v)) => {
                let v = &v[..v.len().min(MAX_CLIENT_NAME)];
                Some(String::from_utf8_lossy(v).into_owned())
            }
            _ => None,
        };
        Self {
            client,
            reqq: int(&d, b"reqq"),
            ut_metadata: ut_metadata.filter(|&i| i != 0),
            metadata_size: int(&d, b"metadata_size"),
        }
    }

    /// Ours: client name, queue depth, and, when we have the info dict to
    /// serve, `ut_metadata` and `metadata_size`.
    pub fn encode(reqq: u32, metadata_size: Option<usize>) -> Vec<u8> {
        let metadata_size = metadata_size.and_then(|s| u32::try_from(s).ok());
        Self {
            client: Some(CLIENT_NAME.to_owned()),
            reqq: Some(reqq),
            ut_metadata: metadata_size.map(|_| UT_METADATA_ID),
            metadata_size,
        }
        .to_bytes()
    }

    /// The bencoded dict (what follows the extended message's id 0).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut m = Dict::new();
        if let Some(id) = self.ut_metadata {
            m.insert(b"ut_metadata", Value::Int(i64::from(id)));
        }
        let mut d = Dict::new();
        d.insert(b"m", Value::Dict(m));
        if let Some(size) = self.metadata_size {
            d.insert(b"metadata_size", Value::Int(i64::from(size)));
        }
        if let Some(reqq) = self.reqq {
            d.insert(b"reqq", Value::Int(i64::from(reqq)));
        }
        if let Some(v) = &self.client {
            d.insert(b"v", Value::Bytes(v.as_bytes()));
        }
        bencode::encode(&Value::Dict(d))
    }
}

/// What only the BitTorrent wire says: the session answers these itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Extra {
    /// BEP 10 handshake (extended message 0).
    ExtHandshake(ExtHandshake),
    /// Another extended message, by the id we assigned.
    Extended {
        id: u8,
        payload: Bytes,
    },
    HashRequest(HashSpec),
    Hashes {
        spec: HashSpec,
        hashes: Bytes,
    },
    HashReject(HashSpec),
    /// BEP 6: pieces it would serve us while choked (we do not use them).
    AllowedFast(u32),
    /// BEP 6: a piece it suggests (the picker decides for itself).
    Suggest(u32),
    /// BEP 5: its DHT port (we have no BitTorrent DHT).
    Port(u16),
}

impl Extra {
    /// Writes a message only the BitTorrent wire has (our replies).
    pub fn encode(&self, dst: &mut BytesMut) {
        match self {
            Extra::ExtHandshake(h) => encode_ext_handshake(&h.to_bytes(), dst),
            Extra::Extended { id: ext, payload } => {
                dst.put_u32(2 + payload.len() as u32);
                dst.put_u8(id::EXTENDED);
                dst.put_u8(*ext);
                dst.put_slice(payload);
            }
            Extra::HashRequest(s) | Extra::HashReject(s) => {
                dst.put_u32(1 + HASH_SPEC_LEN as u32);
                dst.put_u8(if matches!(self, Extra::HashRequest(_)) {
                    id::HASH_REQUEST
                } else {
                    id::HASH_REJECT
                });
                s.write(dst);
            }
            Extra::Hashes { spec, hashes } => {
                dst.put_u32((1 + HASH_SPEC_LEN + hashes.len()) as u32);
                dst.put_u8(id::HASHES);
                spec.write(dst);
                dst.put_slice(hashes);
            }
            Extra::AllowedFast(p) | Extra::Suggest(p) => {
                dst.put_u32(5);
                dst.put_u8(if matches!(self, Extra::Suggest(_)) {
                    id::SUGGEST
                } else {
                    id::ALLOWED_FAST
                });
                dst.put_u32(*p);
            }
            Extra::Port(p) => {
                dst.put_u32(3);
                dst.put_u8(id::PORT);
                dst.put_u16(*p);
            }
        }
    }
}

/// A `ut_metadata` message (BEP 9), as far as a server needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetadataMsg {
    Request { piece: u32 },
    Data { piece: u32, total_size: u32 },
    Reject { piece: u32 },
}

impl MetadataMsg {
    /// Parses the dict at the start of a `ut_metadata` payload; what
    /// follows it (a data message's bytes) starts at the returned offset.
    pub fn parse(payload: &[u8]) -> Option<(Self, usize)> {
        let (Value::Dict(d), used) = bencode::decode_prefix(payload).ok()? else {
            return None;
        };
        let int = |k: &[u8]| match d.get(k) {
            Some(Value::Int(i)) => u32::try_from(*i).ok(),
            _ => None,
        };
        let piece = int(b"piece")?;
        let msg = match int(b"msg_type")? {
            0 => Self::Request { piece },
            1 => Self::Data {
                piece,
                total_size: int(b"total_size")?,
            },
            2 => Self::Reject { piece },
            _ => return None,
        };
        Some((msg, used))
    }

    /// The payload of this message (the dict; a data message's bytes go
    /// after it).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut d = Dict::new();
        let (kind, piece) = match *self {
            Self::Request { piece } => (0, piece),
            Self::Data { piece, total_size } => {
                d.insert(b"total_size", Value::Int(i64::from(total_size)));
                (1, piece)
            }
            Self::Reject { piece } => (2, piece),
        };
        d.insert(b"msg_type", Value::Int(kind));
        d.insert(b"piece", Value::Int(i64::from(piece)));
        bencode::encode(&Value::Dict(d))
    }
}

/// Writes an extension handshake.
pub fn encode_ext_handshake(payload: &[u8], dst: &mut BytesMut) {
    dst.put_u32(2 + payload.len() as u32);
    dst.put_u8(id::EXTENDED);
    dst.put_u8(0);
    dst.put_slice(payload);
}

/// One peer's codec: what it speaks (from its handshake) and the
/// torrent's piece count (a bitfield's exact length).
#[derive(Debug, Clone)]
pub struct BtCodec {
    pieces: u32,
    /// The torrent's blocks, to map padded 16 KiB blocks to exact ones.
    layout: Arc<Layout>,
    /// Short blocks travel padded to 16 KiB.
    pad: bool,
    /// ...but for the torrent's last piece (no pad file after it).
    unpadded_tail: bool,
    /// The info dict's size, offered over `ut_metadata` (BEP 9).
    metadata_size: Option<usize>,
    fast: bool,
    extended: bool,
    /// Bytes of a bitfield being written in chunks still to come.
    bitfield_left: usize,
}

impl BtCodec {
    /// `pad`: files are padded to whole pieces on the wire (v2, and
    /// hybrids of more than one file).
    pub fn new(layout: Arc<Layout>, pad: bool, theirs: &Handshake) -> Self {
        Self {
            pieces: layout.num_pieces(),
            layout,
            pad,
            unpadded_tail: false,
            metadata_size: None,
            fast: theirs.fast(),
            extended: theirs.extended(),
            bitfield_left: 0,
        }
    }

    /// The torrent's last piece is not padded on the wire, though the
    /// others are (a hybrid without a pad file after its last file).
    pub fn with_unpadded_tail(mut self, on: bool) -> Self {
        self.unpadded_tail = on;
        self
    }

    /// Whether a short block of `piece` travels padded to 16 KiB.
    fn pads(&self, piece: u32) -> bool {
        self.pad && !(self.unpadded_tail && piece + 1 == self.pieces)
    }

    /// Offers the info dict (`size` bytes) over `ut_metadata` in our
    /// extension handshake.
    pub fn with_metadata_size(mut self, size: usize) -> Self {
        self.metadata_size = Some(size);
        self
    }

    /// The exact length of the block at `piece`/`offset`, if there is one.
    fn exact_len(&self, piece: u32, offset: u32) -> Option<u32> {
        if !offset.is_multiple_of(BLOCK_SIZE) {
            return None;
        }
        let p = self.layout.piece(piece)?;
        let b = self.layout.block(p, offset / BLOCK_SIZE)?;
        Some(self.layout.block_len(b))
    }

    /// A block as the peer names it (16 KiB) to the core's exact one.
    fn exact_spec(&self, mut b: BlockSpec) -> BlockSpec {
        if self.pads(b.piece)
            && b.len == BLOCK_SIZE
            && let Some(len) = self.exact_len(b.piece, b.offset)
        {
            b.len = len;
        }
        b
    }

    fn bitfield_bytes(&self) -> usize {
        (self.pieces as usize).div_ceil(8)
    }

    fn fixed(dst: &mut BytesMut, kind: u8, body: &[u32]) {
        dst.put_u32(1 + 4 * body.len() as u32);
        dst.put_u8(kind);
        for &v in body {
            dst.put_u32(v);
        }
    }
}

impl Codec for BtCodec {
    fn max_frame(&self) -> usize {
        MAX_MESSAGE.max(1 + self.bitfield_bytes())
    }

    fn encode(&mut self, m: &Message, dst: &mut BytesMut) {
        let spec = |b: &BlockSpec| {
            let len = if self.pads(b.piece) {
                b.len.max(BLOCK_SIZE)
            } else {
                b.len
            };
            [b.piece, b.offset, len]
        };
        match m {
            Message::KeepAlive => dst.put_u32(0),
            // The BitTorrent handshake is not a message (see `Handshake`).
            Message::Handshake { .. } => {}
            Message::Bitfield { first_piece, bits } => {
                if *first_piece == 0 {
                    let total = self.bitfield_bytes();
                    dst.put_u32(1 + total as u32);
                    dst.put_u8(id::BITFIELD);
                    self.bitfield_left = total;
                }
                // The core's chunks follow each other: one message.
                let n = bits.len().min(self.bitfield_left);
                debug_assert_eq!(n, bits.len(), "bitfield chunk out of order");
                dst.put_slice(&bits[..n]);
                self.bitfield_left -= n;
            }
            Message::HaveAll if self.fast => Self::fixed(dst, id::HAVE_ALL, &[]),
            Message::HaveAll => {
                let total = self.bitfield_bytes();
                dst.put_u32(1 + total as u32);
                dst.put_u8(id::BITFIELD);
                let spare = total * 8 - self.pieces as usize;
                dst.put_bytes(0xff, total.saturating_sub(1));
                if total > 0 {
                    dst.put_u8(0xffu8 << spare);
                }
            }
            Message::HaveNone if self.fast => Self::fixed(dst, id::HAVE_NONE, &[]),
            // BEP 3: a peer with nothing may leave the bitfield out.
            Message::HaveNone => {}
            Message::Have(p) => Self::fixed(dst, id::HAVE, &[*p]),
            Message::Interested => Self::fixed(dst, id::INTERESTED, &[]),
            Message::NotInterested => Self::fixed(dst, id::NOT_INTERESTED, &[]),
            Message::Choke => Self::fixed(dst, id::CHOKE, &[]),
            Message::Unchoke => Self::fixed(dst, id::UNCHOKE, &[]),
            Message::Request(b) => Self::fixed(dst, id::REQUEST, &spec(b)),
            Message::Cancel(b) => Self::fixed(dst, id::CANCEL, &spec(b)),
            Message::Reject(b) if self.fast => Self::fixed(dst, id::REJECT, &spec(b)),
            // Without BEP 6 a refused request is dropped silently; the
            // peer's own timeout recovers it (as BEP 3 clients expect).
            Message::Reject(_) => {}
            Message::MaxRequests(n) if self.extended => {
                encode_ext_handshake(&ExtHandshake::encode(*n, self.metadata_size), dst);
            }
            Message::MaxRequests(_) => {}
            Message::Piece {
                piece,
                offset,
                data,
            } => {
                let padded = if self.pads(*piece) {
                    data.len().max(BLOCK_SIZE as usize)
                } else {
                    data.len()
                };
                dst.reserve(4 + 9 + padded);
                dst.put_u32(9 + padded as u32);
                dst.put_u8(id::PIECE);
                dst.put_u32(*piece);
                dst.put_u32(*offset);
                dst.put_slice(data);
                dst.put_bytes(0, padded - data.len());
            }
        }
    }

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Inbound>, WireError> {
        if src.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([src[0], src[1], src[2], src[3]]) as usize;
        if len == 0 {
            src.advance(4);
            return Ok(Some(Inbound::Core(Message::KeepAlive)));
        }
        // A bitfield's length is known exactly; refuse a wrong one before
        // waiting for its bytes.
        if src.len() >= 5 && src[4] == id::BITFIELD && len != 1 + self.bitfield_bytes() {
            return Err(WireError::BitfieldLength {
                got: len - 1,
                want: self.bitfield_bytes(),
            });
        }
        if len > self.max_frame() {
            return Err(WireError::TooLong(len));
        }
        if src.len() < 4 + len {
            src.reserve(4 + len - src.len());
            return Ok(None);
        }
        src.advance(4);
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
        let spec = |body: &mut BytesMut| {
            self.exact_spec(BlockSpec {
                piece: body.get_u32(),
                offset: body.get_u32(),
                len: body.get_u32(),
            })
        };
        let core = |m: Message| Ok(Some(Inbound::Core(m)));
        let extra = |e: Extra| Ok(Some(Inbound::Bt(e)));
        match kind {
            id::CHOKE => want(0).and_then(|()| core(Message::Choke)),
            id::UNCHOKE => want(0).and_then(|()| core(Message::Unchoke)),
            id::INTERESTED => want(0).and_then(|()| core(Message::Interested)),
            id::NOT_INTERESTED => want(0).and_then(|()| core(Message::NotInterested)),
            id::HAVE => want(4).and_then(|()| core(Message::Have(body.get_u32()))),
            id::BITFIELD => core(Message::Bitfield {
                first_piece: 0,
                bits: body.freeze(),
            }),
            id::REQUEST => want(12).and_then(|()| core(Message::Request(spec(&mut body)))),
            id::CANCEL => want(12).and_then(|()| core(Message::Cancel(spec(&mut body)))),
            id::PIECE => {
                if !(8..=8 + MAX_BLOCK).contains(&n) {
                    return Err(WireError::BadLength { kind, len: n });
                }
                let piece = body.get_u32();
                let offset = body.get_u32();
                // A padded block: the tail is the pad file's zeros.
                if self.pads(piece)
                    && body.len() == BLOCK_SIZE as usize
                    && let Some(len) = self.exact_len(piece, offset)
                {
                    body.truncate(len as usize);
                }
                core(Message::Piece {
                    piece,
                    offset,
                    data: body.freeze(),
                })
            }
            id::PORT => want(2).and_then(|()| extra(Extra::Port(body.get_u16()))),
            id::SUGGEST if self.fast => {
                want(4).and_then(|()| extra(Extra::Suggest(body.get_u32())))
            }
            id::HAVE_ALL if self.fast => want(0).and_then(|()| core(Message::HaveAll)),
            id::HAVE_NONE if self.fast => want(0).and_then(|()| core(Message::HaveNone)),
            id::REJECT if self.fast => {
                want(12).and_then(|()| core(Message::Reject(spec(&mut body))))
            }
            id::ALLOWED_FAST if self.fast => {
                want(4).and_then(|()| extra(Extra::AllowedFast(body.get_u32())))
            }
            id::EXTENDED if self.extended => {
                if n < 1 {
                    return Err(WireError::BadLength { kind, len: n });
                }
                let ext = body.get_u8();
                if ext == 0 {
                    extra(Extra::ExtHandshake(ExtHandshake::parse(&body)))
                } else {
                    extra(Extra::Extended {
                        id: ext,
                        payload: body.freeze(),
                    })
                }
            }
            id::HASH_REQUEST | id::HASH_REJECT => {
                want(HASH_SPEC_LEN)?;
                let s = HashSpec::read(&mut body);
                extra(if kind == id::HASH_REQUEST {
                    Extra::HashRequest(s)
                } else {
                    Extra::HashReject(s)
                })
            }
            id::HASHES => {
                if n < HASH_SPEC_LEN || !(n - HASH_SPEC_LEN).is_multiple_of(32) {
                    return Err(WireError::BadLength { kind, len: n });
                }
                let spec = HashSpec::read(&mut body);
                extra(Extra::Hashes {
                    spec,
                    hashes: body.freeze(),
                })
            }
            // Unknown ids, and BEP 6/10 messages from a peer that did not
            // say it speaks them: a broken or hostile peer.
            other => Err(WireError::UnknownType(other)),
        }
    }
}

#[cfg(test)]
mod tests;
