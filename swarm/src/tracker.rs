//! BitTorrent trackers as pure codecs: the HTTP announce (BEP 3, compact
//! peers BEP 23, IPv6 peers BEP 7) and the UDP tracker protocol (BEP 15).
//! The node's announce task does the I/O and the timing.
//!
//! A tracker's answer is untrusted: sizes are bounded ([`MAX_RESPONSE`],
//! [`MAX_PEERS`]), intervals clamped ([`MIN_INTERVAL`] to
//! [`MAX_INTERVAL`]), and anything malformed is a [`TrackerError`].

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use sluice_storage::bencode::{self, Value};

/// Largest tracker response read, in bytes.
pub const MAX_RESPONSE: usize = 1024 * 1024;
/// Most peers taken from one response.
pub const MAX_PEERS: usize = 1000;
/// Announce no more often than this, whatever the tracker says.
pub const MIN_INTERVAL: Duration = Duration::from_secs(30);
/// Announce at least this often, whatever the tracker says.
pub const MAX_INTERVAL: Duration = Duration::from_secs(3600);
/// Peers asked for in each announce.
pub const NUM_WANT: u32 = 50;

/// Why an announce is made (BEP 3 `event`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A regular re-announce.
    None,
    Started,
    Completed,
    Stopped,
}

impl Event {
    fn http(self) -> Option<&'static str> {
        match self {
            Event::None => None,
            Event::Started => Some("started"),
            Event::Completed => Some("completed"),
            Event::Stopped => Some("stopped"),
        }
    }

    fn udp(self) -> u32 {
        match self {
            Event::None => 0,
            Event::Completed => 1,
            Event::Started => 2,
            Event::Stopped => 3,
        }
    }
}

/// One announce: who we are and how far along.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Announce {
    /// The 20-byte info-hash (v1, or v2 truncated).
    pub info_hash: [u8; 20],
    pub peer_id: [u8; 20],
    /// Where BitTorrent peers reach us.
    pub port: u16,
    pub uploaded: u64,
    pub downloaded: u64,
    pub left: u64,
    pub event: Event,
    /// Random per session, so a tracker knows us across address changes.
    pub key: u32,
}

/// What a tracker answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnnounceReply {
    /// When to announce again (clamped).
    pub interval: Duration,
    pub peers: Vec<SocketAddr>,
    pub seeders: Option<u32>,
    pub leechers: Option<u32>,
    pub warning: Option<String>,
}

/// Why an announce failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrackerError {
    /// The tracker said no (`failure reason`, or a UDP error packet).
    #[error("tracker refused: {0}")]
    Refused(String),
    #[error("malformed tracker response: {0}")]
    Malformed(String),
    #[error("tracker URL {0:?} is not http://, https:// or udp://")]
    BadUrl(String),
}

fn malformed(what: impl Into<String>) -> TrackerError {
    TrackerError::Malformed(what.into())
}

/// Percent-encodes bytes for a query string (everything but RFC 3986's
/// unreserved characters).
fn url_encode(bytes: &[u8], out: &mut String) {
    for &b in bytes {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
}

/// The HTTP announce URL: `base` (which may carry a query of its own)
/// with BEP 3's parameters, asking for compact peers.
pub fn http_url(base: &str, a: &Announce) -> String {
    let mut url = String::with_capacity(base.len() + 256);
    url.push_str(base);
    url.push(if base.contains('?') { '&' } else { '?' });
    url.push_str("info_hash=");
    url_encode(&a.info_hash, &mut url);
    url.push_str("&peer_id=");
    url_encode(&a.peer_id, &mut url);
    let _ = write!(
        url,
        "&port={}&uploaded={}&downloaded={}&left={}&compact=1&no_peer_id=1&numwant={NUM_WANT}&key={:08x}",
        a.port, a.uploaded, a.downloaded, a.left, a.key
    );
    if let Some(e) = a.event.http() {
        let _ = write!(url, "&event={e}");
    }
    url
}

fn clamp_interval(secs: i64) -> Duration {
    Duration::from_secs(secs.max(0) as u64).clamp(MIN_INTERVAL, MAX_INTERVAL)
}

/// Compact peers: 6 bytes (IPv4) or 18 (IPv6) each, address then port.
fn compact_peers(raw: &[u8], v6: bool, out: &mut Vec<SocketAddr>) -> Result<(), TrackerError> {
    let size = if v6 { 18 } else { 6 };
    if !raw.len().is_multiple_of(size) {
        return Err(malformed(format!(
            "compact peers of {} bytes, not a multiple of {size}",
            raw.len()
        )));
    }
    for c in raw
        .chunks_exact(size)
        .take(MAX_PEERS.saturating_sub(out.len()))
    {
        let (ip, port) = c.split_at(size - 2);
        let ip: IpAddr = if v6 {
            Ipv6Addr::from(<[u8; 16]>::try_from(ip).expect("16 bytes")).into()
        } else {
            Ipv4Addr::from(<[u8; 4]>::try_from(ip).expect("4 bytes")).into()
        };
        let port = u16::from_be_bytes([port[0], port[1]]);
        if port != 0 {
            out.push(SocketAddr::new(ip, port));
        }
    }
    Ok(())
}

/// Parses an HTTP tracker's bencoded answer (keys in any order).
pub fn parse_http(body: &[u8]) -> Result<AnnounceReply, TrackerError> {
    if body.len() > MAX_RESPONSE {
        return Err(malformed(format!("{} bytes", body.len())));
    }
    let value = bencode::decode_lenient(body).map_err(|e| malformed(e.to_string()))?;
    let Value::Dict(d) = value else {
        return Err(malformed("not a dict"));
    };
    let text = |k: &[u8]| match d.get(k) {
        Some(Value::Bytes(b)) => Some(String::from_utf8_lossy(&b[..b.len().min(512)]).into_owned()),
        _ => None,
    };
    if let Some(reason) = text(b"failure reason") {
        return Err(TrackerError::Refused(reason));
    }
    let int = |k: &[u8]| match d.get(k) {
        Some(Value::Int(i)) => Some(*i),
        _ => None,
    };
    let interval = int(b"interval").ok_or_else(|| malformed("no interval"))?;
    let interval = clamp_interval(interval.max(int(b"min interval").unwrap_or(0)));
    let mut peers = Vec::new();
    match d.get(b"peers") {
        Some(Value::Bytes(raw)) => compact_peers(raw, false, &mut peers)?,
        // The original form: a list of dicts with `ip` and `port`.
        Some(Value::List(list)) => {
            for p in list.iter().take(MAX_PEERS) {
                let Value::Dict(p) = p else { continue };
                let (Some(Value::Bytes(ip)), Some(Value::Int(port))) =
                    (p.get(b"ip"), p.get(b"port"))
                else {
                    continue;
                };
                let ip = std::str::from_utf8(ip)
                    .ok()
                    .and_then(|s| s.parse::<IpAddr>().ok());
                if let (Some(ip), Ok(port)) = (ip, u16::try_from(*port))
                    && port != 0
                {
                    peers.push(SocketAddr::new(ip, port));
                }
            }
        }
        None => {}
        Some(_) => return Err(malformed("peers is neither a string nor a list")),
    }
    if let Some(Value::Bytes(raw)) = d.get(b"peers6") {
        compact_peers(raw, true, &mut peers)?;
    }
    let count = |k: &[u8]| int(k).and_then(|i| u32::try_from(i).ok());
    Ok(AnnounceReply {
        interval,
        peers,
        seeders: count(b"complete"),
        leechers: count(b"incomplete"),
        warning: text(b"warning message"),
    })
}

/// The UDP tracker protocol (BEP 15): connect, then announce with the
/// connection id it gave (valid for a minute).
pub mod udp {
    use super::{Announce, AnnounceReply, TrackerError, clamp_interval, compact_peers, malformed};

    /// The connect request's magic constant.
    const PROTOCOL_ID: u64 = 0x0417_2710_1980;
    const CONNECT: u32 = 0;
    const ANNOUNCE: u32 = 1;
    const ERROR: u32 = 3;
    /// Largest datagram read: a header and [`super::MAX_PEERS`] IPv6 peers.
    pub const MAX_DATAGRAM: usize = 20 + 18 * super::MAX_PEERS;

    pub fn connect_request(transaction: u32) -> [u8; 16] {
        let mut out = [0u8; 16];
        out[..8].copy_from_slice(&PROTOCOL_ID.to_be_bytes());
        out[8..12].copy_from_slice(&CONNECT.to_be_bytes());
        out[12..].copy_from_slice(&transaction.to_be_bytes());
        out
    }

    fn header(resp: &[u8], action: u32, transaction: u32) -> Result<(), TrackerError> {
        if resp.len() < 8 {
            return Err(malformed(format!("a {}-byte datagram", resp.len())));
        }
        let got = u32::from_be_bytes(resp[..4].try_into().expect("4 bytes"));
        let tid = u32::from_be_bytes(resp[4..8].try_into().expect("4 bytes"));
        if tid != transaction {
            return Err(malformed("transaction id does not match"));
        }
        if got == ERROR {
            let msg = String::from_utf8_lossy(&resp[8..resp.len().min(8 + 512)]).into_owned();
            return Err(TrackerError::Refused(msg));
        }
        if got != action {
            return Err(malformed(format!("action {got}, expected {action}")));
        }
        Ok(())
    }

    /// The connection id from a connect response.
    pub fn parse_connect(resp: &[u8], transaction: u32) -> Result<u64, TrackerError> {
        header(resp, CONNECT, transaction)?;
        if resp.len() < 16 {
            return Err(malformed("short connect response"));
        }
        Ok(u64::from_be_bytes(resp[8..16].try_into().expect("8 bytes")))
    }

    pub fn announce_request(connection: u64, transaction: u32, a: &Announce) -> [u8; 98] {
        let mut out = [0u8; 98];
        out[..8].copy_from_slice(&connection.to_be_bytes());
        out[8..12].copy_from_slice(&ANNOUNCE.to_be_bytes());
        out[12..16].copy_from_slice(&transaction.to_be_bytes());
        out[16..36].copy_from_slice(&a.info_hash);
        out[36..56].copy_from_slice(&a.peer_id);
        out[56..64].copy_from_slice(&a.downloaded.to_be_bytes());
        out[64..72].copy_from_slice(&a.left.to_be_bytes());
        out[72..80].copy_from_slice(&a.uploaded.to_be_bytes());
        out[80..84].copy_from_slice(&a.event.udp().to_be_bytes());
        // 84..88: IP address, 0 = the sender's.
        out[88..92].copy_from_slice(&a.key.to_be_bytes());
        out[92..96].copy_from_slice(&super::NUM_WANT.to_be_bytes());
        out[96..98].copy_from_slice(&a.port.to_be_bytes());
        out
    }

    /// An announce response; peers are IPv6 when the request went over
    /// IPv6 (`v6`).
    pub fn parse_announce(
        resp: &[u8],
        transaction: u32,
        v6: bool,
    ) -> Result<AnnounceReply, TrackerError> {
        header(resp, ANNOUNCE, transaction)?;
        if resp.len() < 20 {
            return Err(malformed("short announce response"));
        }
        let word = |i: usize| u32::from_be_bytes(resp[i..i + 4].try_into().expect("4 bytes"));
        let mut peers = Vec::new();
        compact_peers(&resp[20..], v6, &mut peers)?;
        Ok(AnnounceReply {
            interval: clamp_interval(i64::from(word(8))),
            peers,
            leechers: Some(word(12)),
            seeders: Some(word(16)),
            warning: None,
        })
    }
}

/// Which protocol a tracker URL speaks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrackerUrl {
    Http(String),
    /// `udp://host:port[/…]`: the host and port.
    Udp(String),
}

impl TrackerUrl {
    pub fn parse(url: &str) -> Result<Self, TrackerError> {
        let lower = url.to_ascii_lowercase();
        if lower.starts_with("http://") || lower.starts_with("https://") {
            Ok(Self::Http(url.to_owned()))
        } else if let Some(rest) = lower.strip_prefix("udp://") {
            let host = &url[6..6 + rest.split('/').next().unwrap_or("").len()];
            if host.is_empty() || !host.contains(':') {
                return Err(TrackerError::BadUrl(url.to_owned()));
            }
            Ok(Self::Udp(host.to_owned()))
        } else {
            Err(TrackerError::BadUrl(url.to_owned()))
        }
    }
}

#[cfg(test)]
mod tests;
