//! Announcing a torrent to its trackers and dialing the BitTorrent peers
//! they name: one task per torrent, the I/O around the pure codecs of
//! [`sluice_swarm::tracker`].
//!
//! - Tiers are tried in order and the URLs of a tier in a random order
//!   fixed at start; a tracker that answers moves to the front of its tier
//!   (BEP 12). One answer per announce is enough.
//! - `started` first, `completed` as soon as the torrent completes,
//!   `stopped` when the node stops (bounded by [`STOP_ANNOUNCE_TIMEOUT`]);
//!   in between, on the interval the tracker asked for. When every tracker
//!   fails, the next try waits [`BACKOFF_MIN`], doubling to
//!   [`BACKOFF_MAX`].
//! - Uploaded, downloaded and left are the torrent's own counts.

use std::net::SocketAddr;
use std::time::Duration;

use rand::Rng;
use rand::seq::SliceRandom;
use sluice_swarm::torrent::{TorrentHandle, TorrentStats};
use sluice_swarm::tracker::{
    Announce, AnnounceReply, Event, MAX_RESPONSE, TrackerError, TrackerUrl, http_url, parse_http,
    udp,
};
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// How long one HTTP announce may take.
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(15);
/// UDP: each request is sent up to this many times, waiting 3 s, 6 s,
/// 12 s for the answer. (BEP 15 waits 15·2ⁿ s up to an hour; we would
/// rather move on to the next tracker.)
const UDP_ATTEMPTS: u32 = 3;
const UDP_FIRST_WAIT: Duration = Duration::from_secs(3);
/// Shortest wait after every tracker failed.
pub const BACKOFF_MIN: Duration = Duration::from_secs(5);
/// Longest wait after every tracker failed.
pub const BACKOFF_MAX: Duration = Duration::from_secs(15 * 60);
/// The `stopped` announce at shutdown gets this long.
pub const STOP_ANNOUNCE_TIMEOUT: Duration = Duration::from_secs(5);

/// What a torrent announces as.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Me {
    pub(crate) peer_id: [u8; 20],
    pub(crate) port: u16,
    /// The name announced under (a hybrid has two).
    pub(crate) info_hash: [u8; 20],
}

/// One torrent's trackers, tier by tier.
#[derive(Debug)]
struct Tiers(Vec<Vec<(String, TrackerUrl)>>);

impl Tiers {
    /// Parses and shuffles; URLs sluice cannot use are dropped with a
    /// warning (`wss://`, say).
    fn new(tiers: &[Vec<String>], rng: &mut impl Rng) -> Self {
        let mut out = Vec::new();
        for tier in tiers {
            let mut urls: Vec<(String, TrackerUrl)> = tier
                .iter()
                .filter_map(|u| match TrackerUrl::parse(u) {
                    Ok(t) => Some((u.clone(), t)),
                    Err(e) => {
                        warn!(error = %e, "tracker skipped");
                        None
                    }
                })
                .collect();
            urls.shuffle(rng);
            if !urls.is_empty() {
                out.push(urls);
            }
        }
        Self(out)
    }
}

/// Announces `torrent` to `tiers` until `cancel`, handing the peers each
/// answer names to `dial`. Without a torrent (its metadata is being
/// fetched) it announces as a leecher that has nothing, and sends no
/// `stopped`: the torrent's own announces follow.
pub(crate) async fn announce_loop(
    torrent: Option<TorrentHandle>,
    tiers: Vec<Vec<String>>,
    me: Me,
    http: reqwest::Client,
    dial: impl Fn(Vec<SocketAddr>) + Send,
    cancel: CancellationToken,
) {
    let mut tiers = Tiers::new(&tiers, &mut rand::thread_rng());
    if tiers.0.is_empty() {
        return;
    }
    let key: u32 = rand::thread_rng().r#gen();
    let mut stats = torrent.as_ref().map(TorrentHandle::watch);
    let mut event = Event::Started;
    // A torrent that starts with every piece (a seeder) never announces
    // `completed`: it downloaded nothing.
    let mut was_complete = torrent.as_ref().is_some_and(|t| {
        let start = t.stats();
        start.verified_pieces == start.total_pieces
    });
    let mut backoff = BACKOFF_MIN;
    // `stopped`, for a torrent (bounded by STOP_ANNOUNCE_TIMEOUT).
    let stop = async |tiers: &mut Tiers| {
        if torrent.is_some() {
            let a = announce_of(torrent.as_ref(), me, key, Event::Stopped);
            let _ = tokio::time::timeout(STOP_ANNOUNCE_TIMEOUT, announce(tiers, &a, &http)).await;
        }
    };
    loop {
        let a = announce_of(torrent.as_ref(), me, key, event);
        // Dead trackers take seconds each: a stop does not wait for them.
        let answer = tokio::select! {
            r = announce(&mut tiers, &a, &http) => r,
            () = cancel.cancelled() => {
                stop(&mut tiers).await;
                return;
            }
        };
        let wait = match answer {
            Ok(reply) => {
                debug!(peers = reply.peers.len(), interval = ?reply.interval, "tracker answered");
                backoff = BACKOFF_MIN;
                if event == Event::Completed {
                    info!("announced completion to the tracker");
                }
                dial(reply.peers);
                event = Event::None;
                reply.interval
            }
            Err(e) => {
                warn!(error = %e, retry_in = ?backoff, "no tracker answered");
                let wait = backoff;
                backoff = (backoff * 2).min(BACKOFF_MAX);
                wait
            }
        };
        let until = tokio::time::Instant::now() + wait;
        // Wait out the interval, but announce completion at once.
        loop {
            tokio::select! {
                () = cancel.cancelled() => {
                    stop(&mut tiers).await;
                    return;
                }
                () = tokio::time::sleep_until(until) => break,
                changed = changed(&mut stats) => {
                    let Some(stats) = changed else {
                        return; // the torrent is gone
                    };
                    let complete = stats.borrow_and_update().complete;
                    if complete && !was_complete {
                        was_complete = true;
                        if event != Event::Started {
                            event = Event::Completed;
                        }
                        break;
                    }
                }
            }
        }
    }
}

/// The next change of a torrent's stats; never, without a torrent.
async fn changed(
    stats: &mut Option<tokio::sync::watch::Receiver<TorrentStats>>,
) -> Option<&mut tokio::sync::watch::Receiver<TorrentStats>> {
    match stats {
        Some(rx) => rx.changed().await.is_ok().then_some(rx),
        None => std::future::pending().await,
    }
}

/// What a fetch of the metadata announces as left: the size is not known
/// yet, and 0 would make us a seeder.
const LEFT_UNKNOWN: u64 = 16 * 1024;

fn announce_of(torrent: Option<&TorrentHandle>, me: Me, key: u32, event: Event) -> Announce {
    let Some(torrent) = torrent else {
        return Announce {
            info_hash: me.info_hash,
            peer_id: me.peer_id,
            port: me.port,
            uploaded: 0,
            downloaded: 0,
            left: LEFT_UNKNOWN,
            event,
            key,
        };
    };
    let s = torrent.stats();
    let have = u64::from(s.verified_pieces) * u64::from(s.piece_length);
    Announce {
        info_hash: me.info_hash,
        peer_id: me.peer_id,
        port: me.port,
        uploaded: s.uploaded,
        downloaded: s.downloaded,
        left: if s.complete {
            0
        } else {
            s.size.saturating_sub(have)
        },
        event,
        key,
    }
}

/// One announce, tier by tier until a tracker answers.
async fn announce(
    tiers: &mut Tiers,
    a: &Announce,
    http: &reqwest::Client,
) -> Result<AnnounceReply, TrackerError> {
    let mut last = TrackerError::Malformed("no tracker".into());
    for tier in &mut tiers.0 {
        for i in 0..tier.len() {
            let (url, kind) = &tier[i];
            let result = match kind {
                TrackerUrl::Http(u) => announce_http(http, u, a).await,
                TrackerUrl::Udp(host) => announce_udp(host, a).await,
            };
            match result {
                Ok(reply) => {
                    if let Some(w) = &reply.warning {
                        warn!(tracker = %url, warning = %w, "tracker warning");
                    }
                    // BEP 12: the one that answered goes first next time.
                    let answered = tier.remove(i);
                    tier.insert(0, answered);
                    return Ok(reply);
                }
                Err(e) => {
                    debug!(tracker = %url, error = %e, "announce failed");
                    last = e;
                }
            }
        }
    }
    Err(last)
}

fn unreachable(e: impl std::fmt::Display) -> TrackerError {
    TrackerError::Refused(format!("unreachable: {e}"))
}

async fn announce_http(
    http: &reqwest::Client,
    base: &str,
    a: &Announce,
) -> Result<AnnounceReply, TrackerError> {
    let mut resp = http
        .get(http_url(base, a))
        .timeout(HTTP_TIMEOUT)
        .send()
        .await
        .map_err(unreachable)?;
    if !resp.status().is_success() {
        return Err(TrackerError::Refused(format!("HTTP {}", resp.status())));
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(unreachable)? {
        if body.len() + chunk.len() > MAX_RESPONSE {
            return Err(TrackerError::Malformed(format!(
                "answer longer than {MAX_RESPONSE} bytes"
            )));
        }
        body.extend_from_slice(&chunk);
    }
    parse_http(&body)
}

async fn announce_udp(host: &str, a: &Announce) -> Result<AnnounceReply, TrackerError> {
    let addr = tokio::net::lookup_host(host)
        .await
        .map_err(unreachable)?
        .next()
        .ok_or_else(|| unreachable(format!("{host} has no address")))?;
    let bind: SocketAddr = if addr.is_ipv6() {
        "[::]:0".parse().expect("valid")
    } else {
        "0.0.0.0:0".parse().expect("valid")
    };
    let sock = UdpSocket::bind(bind).await.map_err(unreachable)?;
    sock.connect(addr).await.map_err(unreachable)?;
    let tid: u32 = rand::thread_rng().r#gen();
    let connect = udp::connect_request(tid);
    let resp = exchange(&sock, &connect).await?;
    let conn = udp::parse_connect(&resp, tid)?;
    let tid: u32 = rand::thread_rng().r#gen();
    let resp = exchange(&sock, &udp::announce_request(conn, tid, a)).await?;
    udp::parse_announce(&resp, tid, addr.is_ipv6())
}

/// Sends `req` and waits for one datagram, resending on silence.
async fn exchange(sock: &UdpSocket, req: &[u8]) -> Result<Vec<u8>, TrackerError> {
    let mut buf = vec![0u8; udp::MAX_DATAGRAM];
    let mut wait = UDP_FIRST_WAIT;
    for _ in 0..UDP_ATTEMPTS {
        sock.send(req).await.map_err(unreachable)?;
        if let Ok(got) = tokio::time::timeout(wait, sock.recv(&mut buf)).await {
            let n = got.map_err(unreachable)?;
            buf.truncate(n);
            return Ok(buf);
        }
        wait *= 2;
    }
    Err(unreachable("no answer over UDP"))
}
