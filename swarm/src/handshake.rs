//! Opening a piece-protocol stream: both sides send a `Handshake` first.
//! The opener names the torrent; the acceptor reads which torrent is meant
//! before it answers.

use std::time::Duration;

use sluice_storage::InfoHash;
use tokio_util::compat::FuturesAsyncReadCompatExt;

use crate::codec::Inbound;
use crate::framed::{FrameReader, FrameWriter, StreamError};
use crate::torrent::{PeerReader, PeerWriter};
use crate::wire::{Message, VERSION};

/// What a handshake says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hello {
    pub info_hash: InfoHash,
    pub pieces: u32,
    pub max_requests: u32,
}

impl Hello {
    fn message(&self) -> Message {
        Message::Handshake {
            version: VERSION,
            info_hash: self.info_hash.0,
            pieces: self.pieces,
            max_requests: self.max_requests,
        }
    }
}

/// How long a peer may take to say hello.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

fn split(stream: libp2p::Stream) -> (PeerReader, PeerWriter) {
    let (r, w) = tokio::io::split(stream.compat());
    (FrameReader::new(r), FrameWriter::new(w))
}

async fn read_hello(reader: &mut PeerReader) -> Result<Hello, StreamError> {
    let first = tokio::time::timeout(HANDSHAKE_TIMEOUT, reader.next())
        .await
        .map_err(|_| StreamError::Timeout(HANDSHAKE_TIMEOUT))??;
    match first {
        Inbound::Core(Message::Handshake {
            version: VERSION,
            info_hash,
            pieces,
            max_requests,
        }) => Ok(Hello {
            info_hash: InfoHash(info_hash),
            pieces,
            max_requests,
        }),
        Inbound::Core(Message::Handshake { version, .. }) => Err(StreamError::Protocol(format!(
            "protocol version {version}, we speak {VERSION}"
        ))),
        other => Err(StreamError::Protocol(format!(
            "expected a handshake, got {other:?}"
        ))),
    }
}

/// Opener side: says hello for `ours` and checks the answer is for the
/// same torrent.
pub async fn open(
    stream: libp2p::Stream,
    ours: Hello,
) -> Result<(PeerReader, PeerWriter, Hello), StreamError> {
    let (mut reader, mut writer) = split(stream);
    writer.send(&ours.message()).await?;
    let theirs = read_hello(&mut reader).await?;
    if theirs.info_hash != ours.info_hash || theirs.pieces != ours.pieces {
        return Err(StreamError::Protocol(
            "handshake for another torrent".into(),
        ));
    }
    Ok((reader, writer, theirs))
}

/// Acceptor side, first half: reads the opener's hello.
pub async fn accept(
    stream: libp2p::Stream,
) -> Result<(PeerReader, PeerWriter, Hello), StreamError> {
    let (mut reader, writer) = split(stream);
    let theirs = read_hello(&mut reader).await?;
    Ok((reader, writer, theirs))
}

/// Acceptor side, second half: answers for the torrent it asked for.
pub async fn answer(
    writer: &mut PeerWriter,
    ours: Hello,
    theirs: Hello,
) -> Result<(), StreamError> {
    if theirs.pieces != ours.pieces {
        return Err(StreamError::Protocol(format!(
            "peer says {} pieces, the torrent has {}",
            theirs.pieces, ours.pieces
        )));
    }
    writer.send(&ours.message()).await
}
