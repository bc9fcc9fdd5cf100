//! Magnet links, with libp2p peer hints:
//! `magnet:?xt=urn:btmh:1220<64 hex>&xt=urn:btih:<40 hex>&dn=<name>&x.pe=<multiaddr>…`.
//!
//! `xt` carries the v2 info-hash as a multihash (`0x12` SHA-256, `0x20`
//! 32 bytes long), the v1 info-hash (`urn:btih:`, 40 hex digits or 32
//! base32 ones), or both (a hybrid). The torrent is known by its v2 hash
//! where the link gives one, else by its v1 hash. `x.pe` (BEP 9's peer address) holds a multiaddr (a sluice
//! node, ideally ending in `/p2p/<peer id>`) or `HOST:PORT` (a BitTorrent
//! peer). `tr` names trackers. Other parameters (`ws`, …) are ignored. A
//! link is untrusted input: its length and its number of hints are
//! bounded and every part is checked, errors name the part.

use std::fmt;
use std::str::FromStr;

use std::net::SocketAddr;

use libp2p::Multiaddr;
use sluice_storage::InfoHash;

/// Longest magnet link accepted, in bytes.
pub const MAX_LINK: usize = 16 * 1024;
/// Most `x.pe` peer hints in one link.
pub const MAX_HINTS: usize = 64;
/// Most `tr` trackers in one link.
pub const MAX_TRACKERS: usize = 16;
/// The multihash prefix of a SHA-256 digest: code 0x12, length 0x20.
const SHA256_MULTIHASH: &str = "1220";

/// A parsed magnet link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Magnet {
    pub info_hash: InfoHash,
    /// `xt=urn:btih:`: a hybrid torrent's v1 info-hash (SHA-1), which
    /// v1-only clients know it by.
    pub v1_info_hash: Option<[u8; 20]>,
    /// `dn`: a display name, nothing vouches for it.
    pub name: Option<String>,
    /// `x.pe`: sluice nodes to try first.
    pub peers: Vec<Multiaddr>,
    /// `x.pe`: BitTorrent peers (`HOST:PORT`) to try first.
    pub bt_peers: Vec<SocketAddr>,
    /// `tr`: trackers, each its own tier.
    pub trackers: Vec<String>,
}

/// Why a magnet link was refused; each names the part at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MagnetError {
    #[error("not a magnet link: it must start with \"magnet:?\"")]
    NotMagnet,
    #[error("the magnet link is {0} bytes; at most {MAX_LINK} are accepted")]
    TooLong(usize),
    #[error("the magnet link has no info-hash (xt=urn:btmh:1220… for v2, xt=urn:btih:… for v1)")]
    MissingTopic,
    #[error("xt={0}: a v1 info-hash is 40 hex digits or 32 base32 ones")]
    BadV1Hash(String),
    #[error("xt={0}: the multihash must be SHA-256 (urn:btmh:1220 followed by 64 hex digits)")]
    WrongMultihash(String),
    #[error("xt={0}: the info-hash is not 64 hex digits")]
    BadHex(String),
    #[error("the magnet link has two different v2 info-hashes")]
    TwoHashes,
    #[error("x.pe={value}: not a multiaddr or HOST:PORT ({reason})")]
    BadPeer { value: String, reason: String },
    #[error("the magnet link has more than {MAX_TRACKERS} tr trackers")]
    TooManyTrackers,
    #[error("the magnet link has more than {MAX_HINTS} x.pe peer hints")]
    TooManyPeers,
    #[error("{0}: bad %-escape")]
    BadEscape(String),
}

impl FromStr for Magnet {
    type Err = MagnetError;

    fn from_str(link: &str) -> Result<Self, MagnetError> {
        if link.len() > MAX_LINK {
            return Err(MagnetError::TooLong(link.len()));
        }
        let query = link
            .strip_prefix("magnet:?")
            .ok_or(MagnetError::NotMagnet)?;
        let mut info_hash = None;
        let mut v1: Option<String> = None;
        let mut v1_info_hash = None;
        let mut name = None;
        let mut peers = Vec::new();
        let mut bt_peers = Vec::new();
        let mut trackers = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, raw) = pair.split_once('=').unwrap_or((pair, ""));
            match key {
                "xt" => {
                    let value = decode(raw, false)?;
                    if let Some(mh) = value.strip_prefix("urn:btmh:") {
                        let ih = parse_multihash(mh, &value)?;
                        if info_hash.is_some_and(|old| old != ih) {
                            return Err(MagnetError::TwoHashes);
                        }
                        info_hash = Some(ih);
                    } else if let Some(h) = value.strip_prefix("urn:btih:") {
                        // Checked below, if it is the only topic.
                        v1 = Some(value.clone());
                        v1_info_hash = parse_btih(h);
                    }
                }
                "dn" => name = Some(decode(raw, true)?),
                "x.pe" => {
                    if peers.len() + bt_peers.len() == MAX_HINTS {
                        return Err(MagnetError::TooManyPeers);
                    }
                    let value = decode(raw, false)?;
                    if value.starts_with('/') {
                        let addr = value.parse().map_err(|e: libp2p::multiaddr::Error| {
                            MagnetError::BadPeer {
                                value: value.clone(),
                                reason: e.to_string(),
                            }
                        })?;
                        peers.push(addr);
                    } else {
                        // A literal address: a link must not make us
                        // resolve names (or wait on DNS) to parse it.
                        let addr = value.parse().map_err(|e: std::net::AddrParseError| {
                            MagnetError::BadPeer {
                                value: value.clone(),
                                reason: e.to_string(),
                            }
                        })?;
                        bt_peers.push(addr);
                    }
                }
                "tr" => {
                    if trackers.len() == MAX_TRACKERS {
                        return Err(MagnetError::TooManyTrackers);
                    }
                    trackers.push(decode(raw, false)?);
                }
                _ => {}
            }
        }
        let info_hash = match (info_hash, v1_info_hash, v1) {
            (Some(ih), _, _) => ih,
            (None, Some(v1), _) => InfoHash::of_v1(v1),
            (None, None, Some(value)) => return Err(MagnetError::BadV1Hash(value)),
            (None, None, None) => return Err(MagnetError::MissingTopic),
        };
        Ok(Self {
            info_hash,
            v1_info_hash,
            name,
            peers,
            bt_peers,
            trackers,
        })
    }
}

/// A `btih` topic: 40 hex digits, or 32 base32 ones (RFC 4648, the old
/// form some links still use).
fn parse_btih(h: &str) -> Option<[u8; 20]> {
    let mut out = [0u8; 20];
    if h.len() == 40 {
        return hex::decode_to_slice(h, &mut out).ok().map(|()| out);
    }
    if h.len() != 32 {
        return None;
    }
    let mut acc: u64 = 0;
    let mut bits = 0;
    let mut at = 0;
    for c in h.bytes() {
        let v = match c.to_ascii_uppercase() {
            c @ b'A'..=b'Z' => c - b'A',
            c @ b'2'..=b'7' => c - b'2' + 26,
            _ => return None,
        };
        acc = (acc << 5) | u64::from(v);
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out[at] = (acc >> bits) as u8;
            at += 1;
        }
    }
    Some(out)
}

fn parse_multihash(mh: &str, whole: &str) -> Result<InfoHash, MagnetError> {
    let digest = mh
        .get(..4)
        .filter(|p| p.eq_ignore_ascii_case(SHA256_MULTIHASH))
        .and_then(|_| mh.get(4..))
        .ok_or_else(|| MagnetError::WrongMultihash(whole.to_owned()))?;
    let mut out = [0u8; 32];
    hex::decode_to_slice(digest, &mut out).map_err(|_| MagnetError::BadHex(whole.to_owned()))?;
    Ok(InfoHash(out))
}

/// Undoes %-escapes (and `+` as a space in names).
fn decode(raw: &str, plus_is_space: bool) -> Result<String, MagnetError> {
    let bad = || MagnetError::BadEscape(raw.to_owned());
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3).ok_or_else(bad)?;
                let mut b = [0u8; 1];
                hex::decode_to_slice(hex, &mut b).map_err(|_| bad())?;
                out.push(b[0]);
                i += 3;
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| bad())
}

/// %-escapes everything but unreserved characters and `keep`.
fn encode(s: &str, keep: &[u8], out: &mut String) {
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) || keep.contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
}

impl fmt::Display for Magnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = String::from("magnet:?");
        let v1 = self.v1_info_hash.or_else(|| self.info_hash.as_v1());
        if let Some(v1) = &v1 {
            out.push_str(&format!("xt=urn:btih:{}", hex::encode(v1)));
        }
        // A v1-only torrent has no v2 topic.
        if self.info_hash.as_v1().is_none() {
            if v1.is_some() {
                out.push('&');
            }
            out.push_str(&format!("xt=urn:btmh:{SHA256_MULTIHASH}{}", self.info_hash));
        }
        if let Some(name) = &self.name {
            out.push_str("&dn=");
            encode(name, b"", &mut out);
        }
        for tr in &self.trackers {
            out.push_str("&tr=");
            encode(tr, b"", &mut out);
        }
        let peers = self.peers.iter().map(ToString::to_string);
        for peer in peers.chain(self.bt_peers.iter().map(ToString::to_string)) {
            out.push_str("&x.pe=");
            // Slashes and colons read better as they are; both are legal
            // in a query.
            encode(&peer, b"/:", &mut out);
        }
        f.write_str(&out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "aabbccddeeff00112233445566778899aabbccddeeff00112233445566778899";

    fn parse(s: &str) -> Result<Magnet, MagnetError> {
        s.parse()
    }

    #[test]
    fn round_trip_with_name_and_hints() {
        let m = Magnet {
            info_hash: HEX.parse().expect("hex"),
            v1_info_hash: Some([0xab; 20]),
            name: Some("my file & more+ü.bin".into()),
            peers: vec![
                "/ip4/127.0.0.1/tcp/4001/p2p/12D3KooWGzB6Nar6B38oyN5iYsLDYbnEEB8sW8rrZDMtSz7gGLaX"
                    .parse()
                    .expect("multiaddr"),
                "/ip6/::1/udp/4001/quic-v1".parse().expect("multiaddr"),
            ],
            bt_peers: vec![
                "127.0.0.1:6881".parse().expect("addr"),
                "[::1]:6882".parse().expect("addr"),
            ],
            trackers: vec![
                "udp://t.example:6969/announce".into(),
                "http://t/a?k=1".into(),
            ],
        };
        let link = m.to_string();
        assert!(link.starts_with(&format!(
            "magnet:?xt=urn:btih:{}&xt=urn:btmh:1220{HEX}&dn=my%20file%20%26",
            "ab".repeat(20)
        )));
        assert!(link.contains("&x.pe=/ip4/127.0.0.1/tcp/4001/p2p/12D3KooW"));
        assert!(link.contains("&x.pe=127.0.0.1:6881"));
        assert!(link.contains("&tr=udp%3A%2F%2Ft.example%3A6969%2Fannounce"));
        assert_eq!(parse(&link), Ok(m));
    }

    #[test]
    fn hybrid_links_use_the_v2_hash_and_unknown_keys_are_ignored() {
        let link = format!(
            "magnet:?xt=urn:btih:0123456789abcdef0123456789abcdef01234567&xt=urn:btmh:1220{HEX}&tr=udp%3A%2F%2Fx&dn=a+b"
        );
        let m = parse(&link).expect("valid");
        assert_eq!(m.info_hash.to_string(), HEX);
        assert_eq!(m.name.as_deref(), Some("a b"));
        assert!(m.peers.is_empty());
        assert_eq!(m.trackers, ["udp://x"]);
    }

    #[test]
    fn bad_links_name_what_is_wrong() {
        let long = format!("magnet:?xt=urn:btmh:1220{HEX}&dn={}", "a".repeat(MAX_LINK));
        let many = format!(
            "magnet:?xt=urn:btmh:1220{HEX}{}",
            "&x.pe=/ip4/127.0.0.1/tcp/1".repeat(MAX_HINTS + 1)
        );
        let cases: Vec<(String, MagnetError)> = vec![
            ("http://x".into(), MagnetError::NotMagnet),
            ("magnet:?dn=x".into(), MagnetError::MissingTopic),
            (
                "magnet:?xt=urn:btih:0123".into(),
                MagnetError::BadV1Hash("urn:btih:0123".into()),
            ),
            (
                format!("magnet:?xt=urn:btmh:1114{HEX}"),
                MagnetError::WrongMultihash(format!("urn:btmh:1114{HEX}")),
            ),
            (
                "magnet:?xt=urn:btmh:12".into(),
                MagnetError::WrongMultihash("urn:btmh:12".into()),
            ),
            (
                "magnet:?xt=urn:btmh:1220zz".into(),
                MagnetError::BadHex("urn:btmh:1220zz".into()),
            ),
            (
                format!(
                    "magnet:?xt=urn:btmh:1220{HEX}&xt=urn:btmh:1220{}",
                    "00".repeat(32)
                ),
                MagnetError::TwoHashes,
            ),
            (
                format!("magnet:?xt=urn:btmh:1220{HEX}&dn=%G1"),
                MagnetError::BadEscape("%G1".into()),
            ),
            (
                format!("magnet:?xt=urn:btmh:1220{HEX}&dn=%4"),
                MagnetError::BadEscape("%4".into()),
            ),
            (long.clone(), MagnetError::TooLong(long.len())),
            (many, MagnetError::TooManyPeers),
        ];
        for (link, want) in cases {
            assert_eq!(parse(&link), Err(want), "{link}");
        }
        let bad_peer = parse(&format!(
            "magnet:?xt=urn:btmh:1220{HEX}&x.pe=/ip4/300.0.0.1/tcp/1"
        ));
        assert!(
            matches!(&bad_peer, Err(MagnetError::BadPeer { value, .. }) if value == "/ip4/300.0.0.1/tcp/1"),
            "{bad_peer:?}"
        );
    }

    #[test]
    fn v1_links_are_known_by_their_v1_hash_hex_or_base32() {
        let hex = "0123456789abcdef0123456789abcdef01234567";
        let m = parse(&format!("magnet:?xt=urn:btih:{hex}")).expect("valid");
        assert_eq!(m.info_hash.to_string(), hex);
        assert_eq!(m.info_hash.as_v1().map(hex::encode).as_deref(), Some(hex));
        // The same 20 bytes in base32.
        let b32 = parse("magnet:?xt=urn:btih:AERUKZ4JVPG66AJDIVTYTK6N54ASGRLH").expect("valid");
        assert_eq!(b32.info_hash, m.info_hash);
        assert_eq!(
            parse("magnet:?xt=urn:btih:AERUKZ4JVPG66AJDIVTYTK6N54ASGRL1"),
            Err(MagnetError::BadV1Hash(
                "urn:btih:AERUKZ4JVPG66AJDIVTYTK6N54ASGRL1".into()
            ))
        );
    }

    #[test]
    fn the_same_hash_twice_is_fine() {
        let link = format!(
            "magnet:?xt=urn:btmh:1220{HEX}&xt=urn:btmh:1220{}",
            HEX.to_uppercase()
        );
        assert!(parse(&link).is_ok());
    }
}
