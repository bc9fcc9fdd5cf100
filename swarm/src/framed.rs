//! Reading and writing a wire's messages on a byte stream, through its
//! [`Codec`] (the `/sluice/pieces/1` frames by default).

use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::bt::wire::Extra;
use crate::codec::{Codec, Inbound, SluiceCodec};
use crate::wire::{Message, WireError};

/// Why a peer's stream ended.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("stream closed by the peer")]
    Closed,
    #[error("i/o error")]
    Io(#[from] std::io::Error),
    #[error("protocol violation: {0}")]
    Wire(#[from] WireError),
    #[error("peer sent nothing for {0:?}")]
    Timeout(Duration),
    #[error("{0}")]
    Protocol(String),
}

/// The read half: a buffer that never holds more than one frame beyond
/// what has been decoded.
#[derive(Debug)]
pub struct FrameReader<R, C = SluiceCodec> {
    io: R,
    codec: C,
    buf: BytesMut,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub fn new(io: R) -> Self {
        Self::with_codec(io, SluiceCodec, BytesMut::new())
    }
}

impl<R: AsyncRead + Unpin, C: Codec> FrameReader<R, C> {
    /// A reader decoding with `codec`, starting with bytes already read
    /// from `io` (what a handshake read past its own end).
    pub fn with_codec(io: R, codec: C, read: BytesMut) -> Self {
        // No room up front: each read reserves what its frame needs, so a
        // peer that only sends `Have`s holds a few bytes, not two frames.
        let buf = BytesMut::from(&read[..]);
        Self { io, codec, buf }
    }

    /// The next message already in the buffer, without reading more.
    pub fn try_next(&mut self) -> Result<Option<Inbound>, StreamError> {
        Ok(self.codec.decode(&mut self.buf)?)
    }

    /// The next message.
    ///
    /// Cancel-safe: bytes read before cancellation stay in the buffer.
    pub async fn next(&mut self) -> Result<Inbound, StreamError> {
        loop {
            if let Some(m) = self.codec.decode(&mut self.buf)? {
                return Ok(m);
            }
            // Ask for what completes the next frame, and little more: a
            // reader over a futures-io stream (libp2p's, through
            // `Compat`) zeroes all the room it is offered before each
            // read, and a 9-byte `Have` should not cost zeroing 32 KiB.
            let want = frame_remaining(&self.buf).clamp(MIN_READ, self.codec.max_frame() + 4);
            self.buf.reserve(want);
            let limited = (&mut self.io).take(want as u64);
            tokio::pin!(limited);
            if limited.read_buf(&mut self.buf).await? == 0 {
                return Err(StreamError::Closed);
            }
        }
    }
}

/// The most a writer keeps allocated once everything is written.
const KEEP_WRITE_BUFFER: usize = 4 * 1024;

/// The least a read asks for: room for a batch of small messages.
const MIN_READ: usize = 1024;

/// Bytes missing from the frame at the front of `buf` (both wires frame
/// every message with a 4-byte big-endian length).
fn frame_remaining(buf: &[u8]) -> usize {
    match buf.get(..4) {
        Some(prefix) => {
            let len = u32::from_be_bytes(prefix.try_into().expect("4 bytes")) as usize;
            (4 + len).saturating_sub(buf.len())
        }
        None => 4 - buf.len(),
    }
}

/// The write half, batching messages into one buffer per flush.
#[derive(Debug)]
pub struct FrameWriter<W, C = SluiceCodec> {
    io: W,
    codec: C,
    buf: BytesMut,
    /// Bytes written to `io` since its last flush.
    unflushed: bool,
}

impl<W: AsyncWrite + Unpin> FrameWriter<W> {
    pub fn new(io: W) -> Self {
        Self::with_codec(io, SluiceCodec)
    }
}

impl<W: AsyncWrite + Unpin, C: Codec> FrameWriter<W, C> {
    pub fn with_codec(io: W, codec: C) -> Self {
        Self {
            io,
            buf: BytesMut::new(),
            codec,
            unflushed: false,
        }
    }

    /// Queues a message for the next flush.
    pub fn push(&mut self, m: &Message) {
        self.codec.encode(m, &mut self.buf);
    }

    /// Queues a message only the BitTorrent wire has (a session's reply).
    pub fn push_extra(&mut self, e: &Extra) {
        e.encode(&mut self.buf);
    }

    /// Queues bytes already encoded for this wire.
    pub fn push_raw(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes queued and not yet written.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// Writes everything queued.
    ///
    /// Cancel-safe: what was written is dropped from the buffer as it goes,
    /// so a cancelled flush loses nothing and the next one continues; the
    /// session relies on this to keep reading while a write waits.
    pub async fn flush(&mut self) -> Result<(), StreamError> {
        // What the buffer holds now (`capacity` shrinks as written bytes
        // are advanced past).
        let grown = self.buf.capacity() > KEEP_WRITE_BUFFER;
        while !self.buf.is_empty() {
            let n = self.io.write(&self.buf).await?;
            if n == 0 {
                return Err(std::io::Error::from(std::io::ErrorKind::WriteZero).into());
            }
            self.buf.advance(n);
            self.unflushed = true;
        }
        // A batch of blocks grew the buffer to hundreds of KiB: give it
        // back, so sessions that have nothing to send hold nothing (one
        // per peer; a node has dozens).
        if grown {
            self.buf = BytesMut::new();
        }
        // Nothing new: do not poke the muxer (a flush wakes its task).
        if self.unflushed {
            self.io.flush().await?;
            self.unflushed = false;
        }
        Ok(())
    }

    /// Sends one message at once.
    pub async fn send(&mut self, m: &Message) -> Result<(), StreamError> {
        self.push(m);
        self.flush().await
    }

    /// Half-closes the stream.
    pub async fn close(&mut self) -> Result<(), StreamError> {
        self.flush().await?;
        self.io.shutdown().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn a_read_asks_for_the_rest_of_the_frame() {
        assert_eq!(frame_remaining(&[]), 4);
        assert_eq!(frame_remaining(&[0, 0]), 2);
        assert_eq!(frame_remaining(&[0, 0, 0, 5]), 5);
        assert_eq!(frame_remaining(&[0, 0, 0, 5, 1, 2]), 3);
        assert_eq!(
            frame_remaining(&[0, 0, 0, 1, 9, 0, 0]),
            0,
            "a whole frame and more"
        );
    }

    /// Messages of every size, written in one go and read back through a
    /// pipe far smaller than a block: nothing lost, nothing reordered.
    #[tokio::test]
    async fn messages_come_back_whole_through_a_narrow_pipe() {
        let mut sent = Vec::new();
        for i in 0..40u32 {
            sent.push(Message::Have(i));
            sent.push(Message::Piece {
                piece: i,
                offset: 0,
                data: Bytes::from(vec![i as u8; 1 + (i as usize * 997) % (16 * 1024)]),
            });
        }
        let (a, b) = tokio::io::duplex(1000);
        let mut writer = FrameWriter::new(a);
        let mut reader = FrameReader::new(b);
        let expected = sent.clone();
        let write = tokio::spawn(async move {
            for m in &sent {
                writer.push(m);
            }
            writer.flush().await.unwrap();
            writer
        });
        for want in &expected {
            let got = tokio::time::timeout(Duration::from_secs(10), reader.next())
                .await
                .expect("no hang")
                .unwrap();
            assert!(matches!(got, Inbound::Core(ref m) if m == want), "{got:?}");
        }
        drop(tokio::time::timeout(Duration::from_secs(10), write).await);
    }
}
