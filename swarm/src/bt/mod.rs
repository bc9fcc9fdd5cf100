//! The BitTorrent peer wire over TCP: a BitTorrent peer is one more kind
//! of session feeding the same torrent core as a libp2p peer.
//!
//! - [`wire`]: the handshake and the message codec (pure).
//! - this module: the handshake on a socket, with its timeout, and the
//!   identity a BitTorrent peer has in the core ([`BtRemote`]).
//!
//! Connections are plaintext: MSE/PE stream encryption is not spoken.

pub mod fetch;
pub mod wire;

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use rand::Rng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::framed::StreamError;
use wire::{HANDSHAKE_LEN, Handshake};

/// How long a peer may take to connect and say its handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Our peer id prefix (Azureus style: client `SL`, version 0.1.0).
const PEER_ID_PREFIX: &[u8; 8] = b"-SL0100-";

/// A fresh BitTorrent peer id: our prefix and 12 random printable bytes
/// (a node makes one at start).
pub fn new_peer_id(rng: &mut impl Rng) -> [u8; 20] {
    const ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut id = [0u8; 20];
    id[..8].copy_from_slice(PEER_ID_PREFIX);
    for b in &mut id[8..] {
        *b = ALPHABET[rng.gen_range(0..ALPHABET.len())];
    }
    id
}

/// A BitTorrent peer as the core knows it: strikes, bans and duplicate
/// sessions go by its address and the peer id it gave. (A liar that
/// changes its peer id on every connection starts afresh; libtorrent
/// bans by address instead, which on loopback would ban every test peer.)
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BtRemote {
    pub ip: IpAddr,
    pub peer_id: [u8; 20],
}

impl fmt::Display for BtRemote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "bt:{}/{}", self.ip, peer_id_label(&self.peer_id))
    }
}

/// A BitTorrent peer id as logs and stats show it: the client prefix
/// (`-LT2080-` and the like name the client; hex when not printable) and
/// 4 bytes of the random rest, in hex.
pub fn peer_id_label(peer_id: &[u8; 20]) -> String {
    let (head, tail) = peer_id.split_at(8);
    let mut out = if head.iter().all(|c| c.is_ascii_graphic()) {
        String::from_utf8_lossy(head).into_owned()
    } else {
        hex::encode(head)
    };
    out.push_str(&hex::encode(&tail[..4]));
    out
}

impl fmt::Debug for BtRemote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Reads a peer's 68-byte handshake (within [`HANDSHAKE_TIMEOUT`]).
///
/// Not cancel-safe (a partial read is lost); run it to the end.
pub async fn read_handshake(stream: &mut TcpStream) -> Result<Handshake, StreamError> {
    let mut buf = [0u8; HANDSHAKE_LEN];
    tokio::time::timeout(HANDSHAKE_TIMEOUT, stream.read_exact(&mut buf))
        .await
        .map_err(|_| StreamError::Timeout(HANDSHAKE_TIMEOUT))??;
    Ok(Handshake::decode(&buf)?)
}

/// Sends our handshake.
pub async fn write_handshake(stream: &mut TcpStream, ours: &Handshake) -> Result<(), StreamError> {
    tokio::time::timeout(HANDSHAKE_TIMEOUT, stream.write_all(&ours.encode()))
        .await
        .map_err(|_| StreamError::Timeout(HANDSHAKE_TIMEOUT))??;
    Ok(())
}

/// Dials `addr` and exchanges handshakes; the answer must name the same
/// torrent and not be ourselves.
pub async fn connect(
    addr: SocketAddr,
    ours: Handshake,
) -> Result<(TcpStream, Handshake), StreamError> {
    let mut stream = tokio::time::timeout(HANDSHAKE_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| StreamError::Timeout(HANDSHAKE_TIMEOUT))??;
    stream.set_nodelay(true)?;
    write_handshake(&mut stream, &ours).await?;
    let theirs = read_handshake(&mut stream).await?;
    if theirs.info_hash != ours.info_hash {
        return Err(StreamError::Protocol(
            "handshake for another torrent".into(),
        ));
    }
    if theirs.peer_id == ours.peer_id {
        return Err(StreamError::Protocol("connected to ourselves".into()));
    }
    Ok((stream, theirs))
}
