//! The control API: HTTP/JSON under `/api/v1/…` and Prometheus text at
//! `/metrics`, served with axum on 127.0.0.1 (port 0 unless given).
//!
//! The node writes the bound address to `<data-dir>/api`, so
//! [`ApiClient::from_data_dir`] (what `sluice status`, `peers` and `top`
//! use) finds a running node without flags. Binding to any address that is
//! not loopback needs a token; every request must then carry
//! `Authorization: Bearer <token>`, and nothing answers without it (401).
//!
//! Handlers only read snapshots: each torrent's latest [`TorrentStats`]
//! (a `watch` value its task publishes every tick), the write queue's
//! counters and the peer address map. Nothing here waits on the swarm.
//! At most [`MAX_CONCURRENT_REQUESTS`] requests are served at once.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path as UrlPath, Query, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use libp2p::{Multiaddr, PeerId};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sluice_storage::{InfoHash, QueueStats, WriteQueue};
use sluice_swarm::reach::{Path as LinkPath, Reachability, RelayedBytes};
use sluice_swarm::torrent::{PeerStats, TorrentStats};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::links::{PathCounts, PeerLink, ReachView};
use crate::{Torrents, lock};

/// The file in a node's data dir that holds its API address.
pub const API_FILE: &str = "api";
/// Requests served at once; more wait for a slot.
pub const MAX_CONCURRENT_REQUESTS: usize = 32;
/// How long a client waits for a node to answer.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest response body a client accepts.
pub const MAX_RESPONSE_BYTES: usize = 16 * 1024 * 1024;
/// Largest request body the API takes (a `.torrent` upload).
pub const MAX_UPLOAD_BYTES: usize = 16 * 1024 * 1024;
/// Event streams (`GET /api/v1/events`) open at once; each also holds one
/// of the [`MAX_CONCURRENT_REQUESTS`] slots while it lasts.
pub const MAX_EVENT_STREAMS: usize = 8;
/// How often an event stream looks for a change to send.
pub const EVENT_INTERVAL: Duration = Duration::from_millis(500);

/// Where the API listens and who may use it.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// Default `127.0.0.1:0`.
    pub addr: SocketAddr,
    /// Required when `addr` is not loopback.
    pub token: Option<String>,
    /// Required for every request that changes something (add, pause,
    /// remove…), loopback included: a web page in the user's browser can
    /// POST to 127.0.0.1. Without one, nothing can be changed.
    pub write_token: Option<String>,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            token: None,
            write_token: None,
        }
    }
}

/// `GET /api/v1/node`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeInfo {
    pub peer_id: String,
    pub listen_addrs: Vec<String>,
    /// Where it takes BitTorrent peers (none with `--no-bt`).
    #[serde(default)]
    pub bt_addr: Option<SocketAddr>,
    /// Its BitTorrent peer id, as other nodes' peer lists show it.
    #[serde(default)]
    pub bt_peer_id: Option<String>,
    pub uptime_seconds: f64,
    pub version: String,
    pub torrents: usize,
    pub connected_peers: usize,
    /// Whether others can dial it: `unknown` until a peer has tried,
    /// then `public` or `private` (behind NAT: reached through relays).
    #[serde(default)]
    pub reachability: Reachability,
    /// Confirmed external addresses (AutoNAT's, and relayed ones from
    /// reservations), each ending in `/p2p/<peer id>`.
    #[serde(default)]
    pub external_addrs: Vec<String>,
    /// What it gives others to reach it (magnet hints): the external
    /// addresses, or the listen addresses while there are none.
    #[serde(default)]
    pub advertised_addrs: Vec<String>,
    /// Open libp2p connections by how they were made.
    #[serde(default)]
    pub connections: PathCounts,
    /// Hole punching tried (relayed connections made: DCUtR tries to
    /// upgrade each), and succeeded (hole-punched connections made).
    #[serde(default)]
    pub hole_punch_attempts: u64,
    #[serde(default)]
    pub hole_punch_successes: u64,
    /// Bytes that crossed relays (framing included).
    #[serde(default)]
    pub relayed_bytes_received: u64,
    #[serde(default)]
    pub relayed_bytes_sent: u64,
    /// The node process's peak resident memory (`VmHWM`; Linux only).
    #[serde(default)]
    pub peak_rss_bytes: Option<u64>,
}

/// The write queue as the API shows it (node-wide: torrents share it).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DiskInfo {
    /// Bytes received and waiting for the writer.
    pub queued_bytes: u64,
    /// Bytes requested from peers and not yet arrived.
    pub outstanding_bytes: u64,
    /// `--disk-queue`.
    pub capacity_bytes: u64,
    /// `capacity − queued − outstanding`: what may still be requested.
    pub headroom_bytes: u64,
    /// Requesting resumes when queued + outstanding drains to this.
    pub low_watermark_bytes: u64,
    /// Requesting is held back right now.
    pub throttled: bool,
    /// Total time requesting was held back by the write queue.
    pub throttled_seconds: f64,
}

impl DiskInfo {
    /// Queued plus outstanding: what counts against the capacity.
    pub fn used_bytes(&self) -> u64 {
        self.queued_bytes.saturating_add(self.outstanding_bytes)
    }
}

impl From<&QueueStats> for DiskInfo {
    fn from(q: &QueueStats) -> Self {
        Self {
            queued_bytes: q.queued_bytes,
            outstanding_bytes: q.reserved_bytes,
            capacity_bytes: q.capacity_bytes,
            headroom_bytes: q.headroom_bytes,
            low_watermark_bytes: q.low_watermark_bytes,
            throttled: q.throttled,
            throttled_seconds: q.throttled_total.as_secs_f64(),
        }
    }
}

/// One entry of `GET /api/v1/torrents`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TorrentInfo {
    pub info_hash: String,
    pub name: String,
    pub size: u64,
    pub verified_pieces: u32,
    pub total_pieces: u32,
    /// Pieces already verified when the torrent started (resume).
    pub pieces_at_start: u32,
    /// Piece size in bytes.
    pub piece_length: u32,
    /// Verified pieces / total pieces, 0 to 1.
    pub progress: f64,
    /// Every piece verified and flushed.
    pub complete: bool,
    /// Bytes per second over the rate window.
    pub down_rate: f64,
    pub up_rate: f64,
    pub downloaded: u64,
    pub uploaded: u64,
    pub peers: usize,
    pub hash_failures: u64,
    pub requests_rejected: u64,
    /// Pieces read whole and checked before upload (verify on read).
    pub read_checks: u64,
    pub banned_peers: usize,
    pub disk: DiskInfo,
    pub disk_error: Option<String>,
    /// Seconds until complete at the current download rate (none when
    /// complete or while nothing arrives).
    #[serde(default)]
    pub eta_seconds: Option<f64>,
    /// Seconds from the torrent's start to the first block it received.
    #[serde(default)]
    pub first_block_seconds: Option<f64>,
}

impl From<&TorrentStats> for TorrentInfo {
    fn from(s: &TorrentStats) -> Self {
        Self {
            info_hash: s.info_hash.to_string(),
            name: s.name.clone(),
            size: s.size,
            verified_pieces: s.verified_pieces,
            total_pieces: s.total_pieces,
            pieces_at_start: s.pieces_at_start,
            piece_length: s.piece_length,
            progress: if s.total_pieces == 0 {
                1.0
            } else {
                f64::from(s.verified_pieces) / f64::from(s.total_pieces)
            },
            complete: s.complete,
            down_rate: s.down_rate,
            up_rate: s.up_rate,
            downloaded: s.downloaded,
            uploaded: s.uploaded,
            peers: s.peers.len(),
            hash_failures: s.hash_failures,
            requests_rejected: s.requests_rejected,
            read_checks: s.read_checks,
            banned_peers: s.banned_peers,
            disk: DiskInfo::from(&s.disk),
            disk_error: s.disk_error.clone(),
            eta_seconds: s.eta().map(|d| d.as_secs_f64()),
            first_block_seconds: s.first_block_after,
        }
    }
}

/// One entry of `GET /api/v1/torrents/{info_hash}/peers`: the torrent's
/// own numbers for the peer (flattened into the same JSON object) and the
/// connection's address.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerInfo {
    #[serde(flatten)]
    pub stats: PeerStats,
    /// The connection's remote address, when the connection is known.
    pub addr: Option<String>,
    /// How that connection was made (sluice peers; BitTorrent peers are
    /// direct).
    #[serde(default)]
    pub path: Option<LinkPath>,
}

/// The body of every error answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApiErrorBody {
    pub error: String,
}

/// The best connection of each connected peer, kept by the swarm task.
pub(crate) type PeerAddrs = Arc<Mutex<HashMap<PeerId, PeerLink>>>;

/// What the handlers read.
#[derive(Clone)]
pub(crate) struct ApiState {
    pub(crate) peer_id: PeerId,
    pub(crate) started: Instant,
    pub(crate) listen: watch::Receiver<Vec<Multiaddr>>,
    pub(crate) torrents: Torrents,
    pub(crate) peer_addrs: PeerAddrs,
    pub(crate) registry: Arc<Registry>,
    pub(crate) token: Option<Arc<str>>,
    pub(crate) write_token: Option<Arc<str>>,
    /// Where the API listens (for the `Host` check).
    pub(crate) addr: SocketAddr,
    pub(crate) daemon: Arc<std::sync::OnceLock<crate::daemon::Daemon>>,
    pub(crate) event_streams: Arc<tokio::sync::Semaphore>,
    /// Ends the event streams when the node stops.
    pub(crate) cancel: CancellationToken,
    pub(crate) bt_addr: Option<SocketAddr>,
    pub(crate) bt_peer_id: Option<String>,
    pub(crate) reach: watch::Receiver<ReachView>,
    pub(crate) relayed: RelayedBytes,
}

/// Serves the API on `listener` until `cancel` fires.
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    state: ApiState,
    cancel: CancellationToken,
) {
    let app = Router::new()
        .route("/api/v1/node", get(node_info))
        .route("/api/v1/torrents", get(torrents).post(add_torrent))
        .route(
            "/api/v1/torrents/{info_hash}",
            get(torrent).delete(remove_torrent),
        )
        .route("/api/v1/torrents/{info_hash}/peers", get(peers))
        .route(
            "/api/v1/torrents/{info_hash}/limits",
            get(get_torrent_limits).post(set_torrent_limits),
        )
        .route(
            "/api/v1/torrents/{info_hash}/{action}",
            post(pause_or_resume),
        )
        .route("/api/v1/daemon/torrents", get(daemon_torrents))
        .route("/api/v1/events", get(events))
        .route("/api/v1/limits", get(get_limits).post(set_limits))
        .route("/", get(ui_page))
        .route("/ui.js", get(ui_script))
        .route("/ui.css", get(ui_style))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .layer(axum::extract::DefaultBodyLimit::max(MAX_UPLOAD_BYTES))
        .layer(middleware::from_fn_with_state(state.clone(), authorize))
        .layer(tower::limit::GlobalConcurrencyLimitLayer::new(
            MAX_CONCURRENT_REQUESTS,
        ))
        .with_state(state);
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(cancel.cancelled_owned())
        .await;
    if let Err(e) = served {
        warn!(error = %e, "control API stopped");
    }
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    let body = ApiErrorBody {
        error: message.into(),
    };
    (status, axum::Json(body)).into_response()
}

async fn authorize(
    State(state): State<ApiState>,
    headers: HeaderMap,
    request: Request,
    next: Next,
) -> Response {
    // DNS rebinding: a page from evil.example that resolves to 127.0.0.1
    // still sends `Host: evil.example`.
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    // Only a loopback API needs it: one bound elsewhere has a token for
    // every request, and its Host is whatever name reaches the machine.
    if state.addr.ip().is_loopback() && !host_is_ours(host, state.addr) {
        return error(
            StatusCode::MISDIRECTED_REQUEST,
            format!("Host {host:?} is not this API's address"),
        );
    }
    let changes = !matches!(request.method(), &Method::GET | &Method::HEAD);
    if changes {
        let Some(token) = &state.write_token else {
            return error(
                StatusCode::FORBIDDEN,
                "this node takes no changes over its API (a `sluice daemon` does)",
            );
        };
        if !same_secret(bearer(&headers).as_bytes(), token.as_bytes()) {
            return error(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
        }
        return next.run(request).await;
    }
    if let Some(token) = &state.token {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if !same_secret(given.as_bytes(), token.as_bytes()) {
            return error(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
        }
    }
    next.run(request).await
}

fn bearer(headers: &HeaderMap) -> &str {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("")
}

/// Whether a `Host` header names the API: its own address, or loopback by
/// name or number on its port.
fn host_is_ours(host: &str, addr: SocketAddr) -> bool {
    if host == addr.to_string() {
        return true;
    }
    let port = addr.port().to_string();
    let Some((name, p)) = host.rsplit_once(':') else {
        return false;
    };
    p == port && matches!(name, "127.0.0.1" | "localhost" | "[::1]")
}

/// Compares without stopping at the first difference, so the time taken
/// does not tell how much of a guess was right.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `POST /api/v1/torrents?output=DIR&paused=BOOL` answers this (201).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Added {
    pub info_hash: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AddQuery {
    output: Option<PathBuf>,
    #[serde(default)]
    paused: bool,
}

/// A link to add: `{"source": "magnet:?…"}` or an info-hash.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AddLink {
    source: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RemoveQuery {
    #[serde(default)]
    delete_data: bool,
}

fn not_a_daemon() -> Response {
    error(
        StatusCode::NOT_FOUND,
        "this node has no torrents to change (a `sluice daemon` has)",
    )
}

fn daemon_error(e: &crate::daemon::DaemonError) -> Response {
    let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    error(status, e.to_string())
}

fn query_error(e: &QueryRejection) -> Response {
    error(StatusCode::BAD_REQUEST, format!("query: {}", e.body_text()))
}

/// Adds a torrent: a `.torrent` as the body with `Content-Type:
/// application/x-bittorrent`, or `{"source": MAGNET_OR_INFO_HASH}`.
async fn add_torrent(
    State(state): State<ApiState>,
    query: Result<Query<AddQuery>, QueryRejection>,
    headers: HeaderMap,
    body: bytes::Bytes,
) -> Response {
    let Some(daemon) = state.daemon.get().cloned() else {
        return not_a_daemon();
    };
    let Query(q) = match query {
        Ok(q) => q,
        Err(e) => return query_error(&e),
    };
    let torrent_file = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-bittorrent"));
    let added = if torrent_file {
        daemon.add_torrent(&body, q.output, q.paused).await
    } else {
        let link: AddLink = match serde_json::from_slice(&body) {
            Ok(l) => l,
            Err(e) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "body: {e}; send {{\"source\": \"magnet:?…\"}} or a .torrent with Content-Type: application/x-bittorrent"
                    ),
                );
            }
        };
        daemon.add_link(&link.source, q.output, q.paused).await
    };
    match added {
        Ok(ih) => (
            StatusCode::CREATED,
            axum::Json(Added {
                info_hash: ih.to_string(),
            }),
        )
            .into_response(),
        Err(e) => daemon_error(&e),
    }
}

async fn remove_torrent(
    State(state): State<ApiState>,
    UrlPath(info_hash): UrlPath<String>,
    query: Result<Query<RemoveQuery>, QueryRejection>,
) -> Response {
    let Some(daemon) = state.daemon.get().cloned() else {
        return not_a_daemon();
    };
    let Query(q) = match query {
        Ok(q) => q,
        Err(e) => return query_error(&e),
    };
    match daemon.remove(&info_hash, q.delete_data).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => daemon_error(&e),
    }
}

/// `POST /api/v1/torrents/{ih}/pause` and `…/resume`.
async fn pause_or_resume(
    State(state): State<ApiState>,
    UrlPath((info_hash, action)): UrlPath<(String, String)>,
) -> Response {
    let Some(daemon) = state.daemon.get().cloned() else {
        return not_a_daemon();
    };
    let (done, status) = match action.as_str() {
        "pause" => (daemon.pause(&info_hash).await, StatusCode::NO_CONTENT),
        "resume" => (daemon.resume(&info_hash).await, StatusCode::NO_CONTENT),
        // Checked in the background: listed as `checking` until done.
        "recheck" => (daemon.recheck(&info_hash).await, StatusCode::ACCEPTED),
        _ => return not_found().await,
    };
    match done {
        Ok(()) => status.into_response(),
        Err(e) => daemon_error(&e),
    }
}

/// One message of `GET /api/v1/events` (event `state`): every running
/// torrent as `GET /api/v1/torrents` shows it, and a daemon's list.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StateEvent {
    pub torrents: Vec<TorrentInfo>,
    #[serde(default)]
    pub daemon: Option<Vec<crate::daemon::Listed>>,
}

fn state_event(state: &ApiState) -> String {
    let mut torrents: Vec<TorrentInfo> = lock(&state.torrents)
        .values()
        .map(|t| TorrentInfo::from(&t.stats()))
        .collect();
    torrents.sort_by(|a, b| a.info_hash.cmp(&b.info_hash));
    let event = StateEvent {
        torrents,
        daemon: state.daemon.get().map(crate::daemon::Daemon::list),
    };
    serde_json::to_string(&event).expect("the state serializes")
}

/// Server-sent events: a `state` event whenever what a UI shows changed
/// (checked every [`EVENT_INTERVAL`]), the first at once; a comment
/// every 15 s keeps idle proxies from closing it. Ends when the node
/// stops.
async fn events(State(state): State<ApiState>) -> Response {
    use axum::response::sse::{Event, KeepAlive, Sse};
    let Ok(permit) = Arc::clone(&state.event_streams).try_acquire_owned() else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{MAX_EVENT_STREAMS} event streams are open already"),
        );
    };
    let tick = tokio::time::interval(EVENT_INTERVAL);
    let start = (state, permit, String::new(), tick);
    let stream = futures::stream::unfold(start, |(state, permit, last, mut tick)| async move {
        loop {
            tokio::select! {
                () = state.cancel.cancelled() => return None,
                _ = tick.tick() => {}
            }
            let now = state_event(&state);
            if now != last {
                let event = Event::default().event("state").data(now.clone());
                return Some((
                    Ok::<_, std::convert::Infallible>(event),
                    (state, permit, now, tick),
                ));
            }
        }
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

async fn get_limits(State(state): State<ApiState>) -> Response {
    match state.daemon.get() {
        Some(d) => axum::Json(d.limits()).into_response(),
        None => not_a_daemon(),
    }
}

/// A change of limits: `{"up_rate": BYTES_PER_SEC | null, "down_rate":
/// …, "slots": N | null}` (null: unlimited, or the default slots; a key
/// left out is left as it is), applied to `limits`.
fn change_limits(
    mut limits: crate::daemon::Limits,
    body: &[u8],
) -> Result<crate::daemon::Limits, String> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Change {
        #[serde(default, with = "serde_with_null")]
        up_rate: Option<Option<u64>>,
        #[serde(default, with = "serde_with_null")]
        down_rate: Option<Option<u64>>,
        #[serde(default, with = "serde_with_null")]
        slots: Option<Option<u32>>,
    }
    let change: Change = serde_json::from_slice(body).map_err(|e| format!("body: {e}"))?;
    if let Some(up) = change.up_rate {
        limits.up_rate = up;
    }
    if let Some(down) = change.down_rate {
        limits.down_rate = down;
    }
    if let Some(slots) = change.slots {
        limits.slots = slots;
    }
    if limits.up_rate == Some(0) || limits.down_rate == Some(0) {
        return Err("up_rate, down_rate: a rate must be positive (null is unlimited)".into());
    }
    if limits.slots.is_some_and(|s| s == 0 || s > MAX_SLOTS) {
        return Err(format!(
            "slots: from 1 to {MAX_SLOTS} (null is the default)"
        ));
    }
    Ok(limits)
}

/// Most upload slots a torrent may be given.
pub const MAX_SLOTS: u32 = 1000;

/// Sets the node-wide limits (see [`change_limits`]).
async fn set_limits(State(state): State<ApiState>, body: bytes::Bytes) -> Response {
    let Some(daemon) = state.daemon.get().cloned() else {
        return not_a_daemon();
    };
    let limits = match change_limits(daemon.limits(), &body) {
        Ok(l) => l,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    match daemon.set_limits(limits).await {
        Ok(()) => axum::Json(limits).into_response(),
        Err(e) => daemon_error(&e),
    }
}

async fn get_torrent_limits(
    State(state): State<ApiState>,
    UrlPath(info_hash): UrlPath<String>,
) -> Response {
    let Some(daemon) = state.daemon.get() else {
        return not_a_daemon();
    };
    match daemon.torrent_limits(&info_hash) {
        Ok(l) => axum::Json(l).into_response(),
        Err(e) => daemon_error(&e),
    }
}

/// Sets a torrent's own limits (see [`change_limits`]).
async fn set_torrent_limits(
    State(state): State<ApiState>,
    UrlPath(info_hash): UrlPath<String>,
    body: bytes::Bytes,
) -> Response {
    let Some(daemon) = state.daemon.get().cloned() else {
        return not_a_daemon();
    };
    let limits = match daemon.torrent_limits(&info_hash) {
        Ok(l) => l,
        Err(e) => return daemon_error(&e),
    };
    let limits = match change_limits(limits, &body) {
        Ok(l) => l,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    match daemon.set_torrent_limits(&info_hash, limits).await {
        Ok(()) => axum::Json(limits).into_response(),
        Err(e) => daemon_error(&e),
    }
}

/// A key that may be absent (leave it), `null` (clear it) or a value.
mod serde_with_null {
    use serde::{Deserialize, Deserializer};

    pub(super) fn deserialize<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
    where
        D: Deserializer<'de>,
        T: Deserialize<'de>,
    {
        Option::<T>::deserialize(d).map(Some)
    }
}

/// Every torrent of the daemon, paused and fetching ones included.
async fn daemon_torrents(State(state): State<ApiState>) -> Response {
    match state.daemon.get() {
        Some(d) => axum::Json(d.list()).into_response(),
        None => not_a_daemon(),
    }
}

/// The web UI: one page, its script and its style, embedded in the
/// binary (nothing is fetched from elsewhere, and the policy says so).
fn ui_file(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
            ),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

async fn ui_page() -> Response {
    ui_file("text/html; charset=utf-8", include_str!("ui/index.html"))
}

async fn ui_script() -> Response {
    ui_file("text/javascript; charset=utf-8", include_str!("ui/ui.js"))
}

async fn ui_style() -> Response {
    ui_file("text/css; charset=utf-8", include_str!("ui/ui.css"))
}

async fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, "no such endpoint")
}

async fn node_info(State(state): State<ApiState>) -> axum::Json<NodeInfo> {
    let listen = state
        .listen
        .borrow()
        .iter()
        .map(|a| {
            a.clone()
                .with(libp2p::multiaddr::Protocol::P2p(state.peer_id))
                .to_string()
        })
        .collect();
    let torrents = lock(&state.torrents).len();
    let connected_peers = lock(&state.peer_addrs).len();
    let reach = state.reach.borrow().clone();
    let with_id = |a: &Multiaddr| {
        let mut a = a.clone();
        if !matches!(a.iter().last(), Some(libp2p::multiaddr::Protocol::P2p(_))) {
            a.push(libp2p::multiaddr::Protocol::P2p(state.peer_id));
        }
        a.to_string()
    };
    let external_addrs = reach.external.iter().map(with_id).collect();
    let advertised_addrs = sluice_swarm::reach::advertised(&reach.external, &state.listen.borrow())
        .iter()
        .map(with_id)
        .collect();
    axum::Json(NodeInfo {
        peer_id: state.peer_id.to_string(),
        listen_addrs: listen,
        bt_addr: state.bt_addr,
        bt_peer_id: state.bt_peer_id.clone(),
        uptime_seconds: state.started.elapsed().as_secs_f64(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        torrents,
        connected_peers,
        reachability: reach.reachability,
        external_addrs,
        advertised_addrs,
        connections: reach.paths,
        hole_punch_attempts: reach.hole_punch_attempts,
        hole_punch_successes: reach.hole_punch_successes,
        relayed_bytes_received: state.relayed.received(),
        relayed_bytes_sent: state.relayed.sent(),
        peak_rss_bytes: peak_rss_of("/proc/self/status"),
    })
}

/// A process's peak resident memory (`VmHWM`) from its
/// `/proc/PID/status` (Linux; `None` elsewhere or when unreadable).
pub fn peak_rss_of(status_path: &str) -> Option<u64> {
    let status = std::fs::read_to_string(status_path).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn snapshots(torrents: &Torrents) -> Vec<TorrentStats> {
    let mut all: Vec<TorrentStats> = lock(torrents).values().map(|t| t.stats()).collect();
    all.sort_by(|a, b| a.name.cmp(&b.name).then(a.info_hash.0.cmp(&b.info_hash.0)));
    all
}

async fn torrents(State(state): State<ApiState>) -> axum::Json<Vec<TorrentInfo>> {
    axum::Json(
        snapshots(&state.torrents)
            .iter()
            .map(TorrentInfo::from)
            .collect(),
    )
}

fn find(state: &ApiState, info_hash: &str) -> Result<TorrentStats, (StatusCode, String)> {
    let ih: InfoHash = info_hash.parse().map_err(|_| {
        (
            StatusCode::BAD_REQUEST,
            format!("{info_hash:?} is not an info-hash (64 hex digits)"),
        )
    })?;
    let stats = lock(&state.torrents).get(&ih).map(|t| t.stats());
    stats.ok_or_else(|| {
        (
            StatusCode::NOT_FOUND,
            format!("no torrent {ih} on this node"),
        )
    })
}

async fn torrent(State(state): State<ApiState>, UrlPath(ih): UrlPath<String>) -> Response {
    match find(&state, &ih) {
        Ok(s) => axum::Json(TorrentInfo::from(&s)).into_response(),
        Err((status, message)) => error(status, message),
    }
}

async fn peers(State(state): State<ApiState>, UrlPath(ih): UrlPath<String>) -> Response {
    let s = match find(&state, &ih) {
        Ok(s) => s,
        Err((status, message)) => return error(status, message),
    };
    let addrs = lock(&state.peer_addrs);
    let peers: Vec<PeerInfo> = s
        .peers
        .iter()
        .map(|p| {
            let (addr, path) = match p.socket_addr {
                Some(a) => (Some(a.to_string()), Some(LinkPath::Direct)),
                None => match p
                    .peer_id
                    .parse::<PeerId>()
                    .ok()
                    .and_then(|id| addrs.get(&id))
                {
                    Some(link) => (Some(link.addr.to_string()), Some(link.path)),
                    None => (None, None),
                },
            };
            PeerInfo {
                stats: p.clone(),
                addr,
                path,
            }
        })
        .collect();
    drop(addrs);
    axum::Json(peers).into_response()
}

async fn metrics(State(state): State<ApiState>) -> Response {
    let mut body = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut body, &state.registry) {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding metrics: {e}"),
        );
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

/// sluice's own metrics, read from the snapshots at each scrape.
#[derive(Debug)]
pub(crate) struct SluiceCollector {
    pub(crate) torrents: Torrents,
    pub(crate) queue: WriteQueue,
    pub(crate) relayed: RelayedBytes,
    pub(crate) reach: watch::Receiver<ReachView>,
}

impl Collector for SluiceCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let q = self.queue.stats();
        let node_gauges: [(&str, &str, u64); 4] = [
            (
                "sluice_disk_queue_bytes",
                "Bytes received and waiting for the disk writer",
                q.queued_bytes,
            ),
            (
                "sluice_disk_outstanding_bytes",
                "Bytes requested from peers and not yet arrived (credits out)",
                q.reserved_bytes,
            ),
            (
                "sluice_disk_queue_capacity_bytes",
                "Capacity of the disk write queue (--disk-queue)",
                q.capacity_bytes,
            ),
            (
                "sluice_disk_headroom_bytes",
                "Bytes that may still be requested before backpressure holds requests",
                q.headroom_bytes,
            ),
        ];
        for (name, help, v) in node_gauges {
            let g = ConstGauge::new(v as i64);
            g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)?;
        }
        let throttled = ConstCounter::new(q.throttled_total.as_secs_f64());
        throttled.encode(encoder.encode_descriptor(
            "sluice_backpressure_throttled_seconds",
            "Time requesting was held back because the disk write queue was full",
            None,
            throttled.metric_type(),
        )?)?;

        let reach = self.reach.borrow().clone();
        let node_counters: [(&str, &str, u64); 4] = [
            (
                "sluice_relayed_received_bytes",
                "Bytes received through relays (framing included)",
                self.relayed.received(),
            ),
            (
                "sluice_relayed_sent_bytes",
                "Bytes sent through relays (framing included)",
                self.relayed.sent(),
            ),
            (
                "sluice_hole_punch_attempts",
                "Relayed connections made (hole punching tries to upgrade each, DCUtR)",
                reach.hole_punch_attempts,
            ),
            (
                "sluice_hole_punch_successes",
                "Hole-punched (direct) connections made from relayed ones",
                reach.hole_punch_successes,
            ),
        ];
        for (name, help, v) in node_counters {
            let c = ConstCounter::new(v);
            c.encode(encoder.encode_descriptor(name, help, None, c.metric_type())?)?;
        }
        {
            let mut family = encoder.encode_descriptor(
                "sluice_connections",
                "Open libp2p connections by how they were made",
                None,
                ConstGauge::new(0i64).metric_type(),
            )?;
            for (path, n) in [
                (LinkPath::Direct, reach.paths.direct),
                (LinkPath::Relayed, reach.paths.relayed),
                (LinkPath::HolePunched, reach.paths.hole_punched),
                (LinkPath::Upnp, reach.paths.upnp),
            ] {
                let labels = [("path", path.as_str())];
                ConstGauge::new(n as i64).encode(family.encode_family(&labels)?)?;
            }
        }
        let reachable = ConstGauge::new(i64::from(reach.reachability == Reachability::Public));
        reachable.encode(encoder.encode_descriptor(
            "sluice_reachable",
            "1 once the node has an external address other than a relayed one: dialed back by a peer (AutoNAT), mapped by the router (UPnP), given, or a global address of its own",
            None,
            reachable.metric_type(),
        )?)?;

        let all = snapshots(&self.torrents);
        type Field = fn(&TorrentStats) -> u64;
        let counters: [(&str, &str, Field); 5] = [
            (
                "sluice_downloaded_bytes",
                "Verified block bytes received",
                |s| s.downloaded,
            ),
            ("sluice_uploaded_bytes", "Block bytes sent", |s| s.uploaded),
            (
                "sluice_hash_failures",
                "Pieces that failed their hash check",
                |s| s.hash_failures,
            ),
            (
                "sluice_requests_rejected",
                "Requests from peers answered with a reject",
                |s| s.requests_rejected,
            ),
            (
                "sluice_read_checks",
                "Pieces read whole and checked against their hash before upload (verify on read)",
                |s| s.read_checks,
            ),
        ];
        for (name, help, field) in counters {
            let mut family = encoder.encode_descriptor(
                name,
                help,
                None,
                ConstCounter::new(0u64).metric_type(),
            )?;
            for s in &all {
                let labels = [("info_hash", s.info_hash.to_string())];
                ConstCounter::new(field(s)).encode(family.encode_family(&labels)?)?;
            }
        }
        type Gauge = fn(&TorrentStats) -> f64;
        let gauges: [(&str, &str, Gauge); 4] = [
            (
                "sluice_verified_pieces",
                "Pieces verified and on disk",
                |s| f64::from(s.verified_pieces),
            ),
            ("sluice_pieces", "Pieces in the torrent", |s| {
                f64::from(s.total_pieces)
            }),
            (
                "sluice_download_rate_bytes",
                "Download rate over the rate window, bytes per second",
                |s| s.down_rate,
            ),
            (
                "sluice_upload_rate_bytes",
                "Upload rate over the rate window, bytes per second",
                |s| s.up_rate,
            ),
        ];
        for (name, help, field) in gauges {
            let mut family =
                encoder.encode_descriptor(name, help, None, ConstGauge::new(0.0).metric_type())?;
            for s in &all {
                let labels = [("info_hash", s.info_hash.to_string())];
                ConstGauge::new(field(s)).encode(family.encode_family(&labels)?)?;
            }
        }
        let mut family = encoder.encode_descriptor(
            "sluice_peers",
            "Peers by our choke state: unchoked (regular slot), optimistic, choked, snubbed",
            None,
            ConstGauge::new(0i64).metric_type(),
        )?;
        for s in &all {
            let mut counts = [0i64; 4];
            for p in s.peers.iter() {
                counts[choke_state(p) as usize] += 1;
            }
            for (state, n) in ChokeState::ALL.iter().zip(counts) {
                let labels = [
                    ("info_hash", s.info_hash.to_string()),
                    ("state", state.name().to_owned()),
                ];
                ConstGauge::new(n).encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

/// Where a peer stands with our choker; disjoint, so the four add up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChokeState {
    Unchoked,
    Optimistic,
    Choked,
    Snubbed,
}

impl ChokeState {
    pub const ALL: [ChokeState; 4] = [
        ChokeState::Unchoked,
        ChokeState::Optimistic,
        ChokeState::Choked,
        ChokeState::Snubbed,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ChokeState::Unchoked => "unchoked",
            ChokeState::Optimistic => "optimistic",
            ChokeState::Choked => "choked",
            ChokeState::Snubbed => "snubbed",
        }
    }
}

fn choke_state(p: &PeerStats) -> ChokeState {
    match (p.am_choking, p.optimistic, p.snubbed) {
        (_, _, true) => ChokeState::Snubbed,
        (false, true, _) => ChokeState::Optimistic,
        (false, false, _) => ChokeState::Unchoked,
        (true, _, _) => ChokeState::Choked,
    }
}

/// Writes the API address into the data dir (temp file + rename).
pub(crate) fn write_api_file(data_dir: &Path, addr: SocketAddr) -> std::io::Result<()> {
    let path = data_dir.join(API_FILE);
    let tmp = data_dir.join(format!("{API_FILE}.tmp"));
    std::fs::write(&tmp, format!("{addr}\n"))?;
    std::fs::rename(&tmp, &path)
}

/// Why a client could not get an answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "no running node found in {dir} (no {API_FILE} file there; start one with `sluice seed` or `sluice get`, or pass --data-dir or --api)"
    )]
    NoApiFile { dir: PathBuf },
    #[error("{path} does not hold an address: {content:?}")]
    BadApiFile { path: PathBuf, content: String },
    #[error("no node answers at {addr}{hint}")]
    Connect {
        addr: SocketAddr,
        hint: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the node at {addr} did not answer within {CLIENT_TIMEOUT:?}")]
    Timeout { addr: SocketAddr },
    #[error("talking to the node at {addr}: {reason}")]
    Http { addr: SocketAddr, reason: String },
    #[error("the node at {addr} says {status}: {message}")]
    Status {
        addr: SocketAddr,
        status: u16,
        message: String,
    },
    #[error("the node at {addr} sent an answer that does not parse: {reason}")]
    Decode { addr: SocketAddr, reason: String },
}

/// A client for a node's control API (HTTP/1.1, one connection per call).
#[derive(Clone)]
pub struct ApiClient {
    addr: SocketAddr,
    token: Option<String>,
    /// Said when the address does not answer (a stale `api` file).
    hint: String,
    /// How to reach the address, when not from here (a node in another
    /// network namespace).
    connect: Option<Connector>,
}

impl std::fmt::Debug for ApiClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiClient")
            .field("addr", &self.addr)
            .field("token", &self.token.as_ref().map(|_| "…"))
            .field("connect", &self.connect.as_ref().map(|_| "custom"))
            .finish_non_exhaustive()
    }
}

/// Opens the TCP connection to an API address some other way than
/// `TcpStream::connect` (from inside another network namespace, say).
pub type Connector = Arc<
    dyn Fn(
            SocketAddr,
        ) -> futures::future::BoxFuture<'static, std::io::Result<tokio::net::TcpStream>>
        + Send
        + Sync,
>;

impl ApiClient {
    /// A client for the API at `addr`.
    pub fn new(addr: SocketAddr, token: Option<String>) -> Self {
        Self {
            addr,
            token,
            hint: String::new(),
            connect: None,
        }
    }

    /// Connects through `connect` instead of from this network namespace.
    pub fn with_connector(mut self, connect: Connector) -> Self {
        self.connect = Some(connect);
        self
    }

    /// A client for the node whose data dir is `dir`, from its `api` file.
    pub fn from_data_dir(dir: &Path, token: Option<String>) -> Result<Self, ClientError> {
        let path = dir.join(API_FILE);
        let content = match std::fs::read_to_string(&path) {
            Ok(c) => c,
            Err(_) => {
                return Err(ClientError::NoApiFile {
                    dir: dir.to_owned(),
                });
            }
        };
        let addr = content
            .trim()
            .parse()
            .map_err(|_| ClientError::BadApiFile {
                path: path.clone(),
                content: content.chars().take(80).collect(),
            })?;
        Ok(Self {
            addr,
            token,
            hint: format!(" (from {}; the node there has stopped?)", path.display()),
            connect: None,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `GET path`, parsed as JSON.
    pub async fn get_json<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let body = self.get(path).await?;
        serde_json::from_slice(&body).map_err(|e| ClientError::Decode {
            addr: self.addr,
            reason: e.to_string(),
        })
    }

    /// `GET path`: the body of a 200 answer; any other status is an error
    /// carrying the node's message.
    pub async fn get(&self, path: &str) -> Result<bytes::Bytes, ClientError> {
        self.send(Method::GET, path, None).await
    }

    /// `POST path` with `body` of `content_type` (a change: needs the
    /// token); the body of a 2xx answer.
    pub async fn post(
        &self,
        path: &str,
        content_type: &str,
        body: bytes::Bytes,
    ) -> Result<bytes::Bytes, ClientError> {
        self.send(Method::POST, path, Some((content_type, body)))
            .await
    }

    /// `DELETE path` (a change: needs the token).
    pub async fn delete(&self, path: &str) -> Result<bytes::Bytes, ClientError> {
        self.send(Method::DELETE, path, None).await
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<(&str, bytes::Bytes)>,
    ) -> Result<bytes::Bytes, ClientError> {
        tokio::time::timeout(CLIENT_TIMEOUT, self.send_inner(method, path, body))
            .await
            .map_err(|_| ClientError::Timeout { addr: self.addr })?
    }

    async fn send_inner(
        &self,
        method: Method,
        path: &str,
        body: Option<(&str, bytes::Bytes)>,
    ) -> Result<bytes::Bytes, ClientError> {
        use http_body_util::{BodyExt, Full, Limited};

        let addr = self.addr;
        let http = |e: &dyn std::fmt::Display| ClientError::Http {
            addr,
            reason: e.to_string(),
        };
        let stream = match &self.connect {
            Some(connect) => connect(addr).await,
            None => tokio::net::TcpStream::connect(addr).await,
        };
        let stream = stream.map_err(|source| ClientError::Connect {
            addr,
            hint: self.hint.clone(),
            source,
        })?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| http(&e))?;
        let conn = tokio::spawn(conn);
        let mut request = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, addr.to_string());
        if let Some(token) = &self.token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let content = match body {
            Some((content_type, bytes)) => {
                request = request.header(header::CONTENT_TYPE, content_type);
                bytes
            }
            None => bytes::Bytes::new(),
        };
        let request = request.body(Full::new(content)).map_err(|e| http(&e))?;
        let response = sender.send_request(request).await.map_err(|e| http(&e))?;
        let status = response.status();
        let body = Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
            .collect()
            .await
            .map_err(|e| http(&e))?
            .to_bytes();
        conn.abort();
        if !status.is_success() {
            let message = serde_json::from_slice::<ApiErrorBody>(&body)
                .map(|b| b.error)
                .unwrap_or_else(|_| String::from_utf8_lossy(&body).into_owned());
            return Err(ClientError::Status {
                addr,
                status: status.as_u16(),
                message,
            });
        }
        Ok(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_compare_whole() {
        assert!(same_secret(b"abc", b"abc"));
        assert!(!same_secret(b"abc", b"abd"));
        assert!(!same_secret(b"abc", b"abcd"));
        assert!(!same_secret(b"", b"a"));
    }
}
