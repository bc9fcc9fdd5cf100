//! Reading and writing `/sluice/pieces/1` frames on a byte stream.

use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::wire::{MAX_FRAME, Message, WireError};

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
pub struct FrameReader<R> {
    io: R,
    buf: BytesMut,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub fn new(io: R) -> Self {
        Self {
            io,
            buf: BytesMut::with_capacity(2 * (MAX_FRAME + 4)),
        }
    }

    /// The next message already in the buffer, without reading more.
    pub fn try_next(&mut self) -> Result<Option<Message>, StreamError> {
        Ok(Message::decode(&mut self.buf)?)
    }

    /// The next message.
    ///
    /// Cancel-safe: bytes read before cancellation stay in the buffer.
    pub async fn next(&mut self) -> Result<Message, StreamError> {
        loop {
            if let Some(m) = Message::decode(&mut self.buf)? {
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
pub struct FrameWriter<W> {
    io: W,
    buf: BytesMut,
    /// Bytes written to `io` since its last flush.
    unflushed: bool,
}

impl<W: AsyncWrite + Unpin> FrameWriter<W> {
    pub fn new(io: W) -> Self {
        Self {
            io,
            buf: BytesMut::with_capacity(4 * (MAX_FRAME + 4)),
            unflushed: false,
        }
    }

    /// Queues a message for the next flush.
    pub fn push(&mut self, m: &Message) {
        m.encode(&mut self.buf);
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
