//! What a session's framing needs from a wire: a pure codec between bytes
//! and the torrent core's [`Message`]s. The `/sluice/pieces/1` frames
//! ([`SluiceCodec`]) and the BitTorrent peer wire
//! ([`crate::bt::wire::BtCodec`]) are two of them; the session, its upload
//! rules and the core are the same for both.

use bytes::BytesMut;

use crate::bt::wire::Extra;
use crate::wire::{MAX_FRAME, Message, WireError};

/// One decoded message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inbound {
    /// Something the core understands, whatever the wire.
    Core(Message),
    /// Something only the BitTorrent wire says; the session answers it.
    Bt(Extra),
}

/// Bytes to messages and back, for one peer.
pub trait Codec: Send + 'static {
    /// The longest message body (after the length prefix) accepted: what a
    /// reader may buffer beyond what it decoded.
    fn max_frame(&self) -> usize;

    /// Appends `m` as this wire says it (or nothing, where this wire has
    /// no such message and leaving it out is what its peers expect).
    fn encode(&mut self, m: &Message, dst: &mut BytesMut);

    /// Takes one whole message off the front of `src`, if there is one.
    /// `Ok(None)`: more bytes needed (`src` grows to at most one frame).
    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Inbound>, WireError>;
}

/// The `/sluice/pieces/1` frames of [`crate::wire`].
#[derive(Debug, Clone, Copy, Default)]
pub struct SluiceCodec;

impl Codec for SluiceCodec {
    fn max_frame(&self) -> usize {
        MAX_FRAME
    }

    fn encode(&mut self, m: &Message, dst: &mut BytesMut) {
        m.encode(dst);
    }

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Inbound>, WireError> {
        Ok(Message::decode(src)?.map(Inbound::Core))
    }
}
