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
        let mut buf = BytesMut::with_capacity(2 * (codec.max_frame() + 4));
        buf.extend_from_slice(&read);
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
            if self.io.read_buf(&mut self.buf).await? == 0 {
                return Err(StreamError::Closed);
            }
        }
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
            buf: BytesMut::with_capacity(4 * (codec.max_frame().min(64 * 1024) + 4)),
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
        while !self.buf.is_empty() {
            let n = self.io.write(&self.buf).await?;
            if n == 0 {
                return Err(std::io::Error::from(std::io::ErrorKind::WriteZero).into());
            }
            self.buf.advance(n);
            self.unflushed = true;
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
