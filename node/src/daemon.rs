//! `sluice daemon`: one node left running with many torrents, added,
//! paused, resumed and removed while it runs, and all of them back after
//! a restart.
//!
//! The daemon owns the list of torrents; the node runs the ones not
//! paused. The list lives in `<data-dir>/daemon.json`, rewritten
//! atomically on every change: for each torrent its info-hash, name, the
//! directory its data goes in, whether it is paused, and, while its
//! metadata is still being fetched, the link or info-hash it was added
//! by. `.torrent`s are kept in `<data-dir>/torrents/`, resume files where
//! every node keeps them, so a restarted daemon picks every torrent up
//! where it was without rechecking intact data.
//!
//! A paused torrent is stopped (writes flushed, peers closed) and started
//! again on resume. Adding by link fetches the metadata in the
//! background (from the link's peers and trackers, the DHT and mDNS); the
//! torrent is listed as `fetching` meanwhile, and a restart fetches on.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use sluice_storage::{InfoHash, Metainfo, MetainfoError};
use sluice_swarm::magnet::Magnet;
use tracing::{info, warn};

use crate::{NodeError, NodeHandle, lock};

/// The daemon's list of torrents, in its data dir.
pub const STATE_FILE: &str = "daemon.json";
/// Fewest hex digits of an info-hash that name a torrent (`sluice
/// pause 1a2b3c4d`).
pub const MIN_PREFIX: usize = 8;
/// Most torrents one daemon holds.
pub const MAX_TORRENTS: usize = 10_000;
/// The API token for changes, in the data dir (readable by its owner
/// only); the CLI reads it from there.
pub const TOKEN_FILE: &str = "token";

/// The daemon's API token: read from `<data_dir>/token`, or made (32
/// random bytes, hex) and written there with mode 0600 at first start.
pub fn load_or_make_token(data_dir: &Path) -> std::io::Result<String> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let path = data_dir.join(TOKEN_FILE);
    if let Ok(t) = std::fs::read_to_string(&path)
        && !t.trim().is_empty()
    {
        return Ok(t.trim().to_owned());
    }
    std::fs::create_dir_all(data_dir)?;
    let token = hex::encode(rand::random::<[u8; 32]>());
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)?;
    writeln!(f, "{token}")?;
    Ok(token)
}

/// One torrent as the daemon keeps it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Entry {
    info_hash: String,
    name: String,
    /// The directory its data goes in.
    output: PathBuf,
    paused: bool,
    /// The magnet link or info-hash it was added by, while its metadata
    /// is being fetched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    fetching: Option<String>,
    /// Trackers and BitTorrent peers its magnet link named: asked every
    /// time it starts (they are not in its `.torrent`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    trackers: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    bt_peers: Vec<std::net::SocketAddr>,
    /// Its own limits, under the node's.
    #[serde(default)]
    limits: Limits,
}

// Unknown keys are passed over, not refused: a downgraded daemon starts.
#[derive(Debug, Default, Serialize, Deserialize)]
struct State {
    torrents: Vec<Entry>,
    /// Node-wide limits set while running, bytes/s (none: unlimited).
    #[serde(default)]
    limits: Limits,
}

/// Rate limits (bytes/s; `None` is unlimited) and upload slots, of the
/// node (`GET`/`POST /api/v1/limits`) or of one torrent
/// (`…/torrents/{ih}/limits`).
///
/// A torrent's rates hold under the node's: its bytes pass both. Each
/// torrent has its own choker with its own slots (`slots`, or else the
/// node's `slots`, or else `--slots`), so one busy torrent never takes
/// another's slots; the node's upload rate is the budget they share.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    pub up_rate: Option<u64>,
    pub down_rate: Option<u64>,
    /// Upload slots per torrent (one of them optimistic).
    #[serde(default)]
    pub slots: Option<u32>,
}

/// What a torrent is doing, as the daemon lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TorrentState {
    Running,
    Paused,
    /// Its metadata is being fetched from peers.
    Fetching,
    /// Its data is being checked (a recheck).
    Checking,
}

/// One torrent in [`Daemon::list`] (`GET /api/v1/daemon/torrents`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Listed {
    pub info_hash: String,
    pub name: String,
    pub output: PathBuf,
    pub state: TorrentState,
    /// Verified pieces / all pieces (0 while fetching or paused before
    /// it ever ran).
    pub progress: f64,
    pub complete: bool,
    pub down_rate: f64,
    pub up_rate: f64,
    pub peers: usize,
    /// Its own limits (the node's hold over them).
    pub limits: Limits,
}

/// Why a daemon request failed; each maps to one HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("the torrent {0} is already on this daemon")]
    Exists(String),
    #[error("no torrent {0} on this daemon")]
    NotFound(String),
    #[error("{0}")]
    BadSource(String),
    #[error("not a valid .torrent: {0}")]
    BadTorrent(#[from] MetainfoError),
    #[error("output must be an absolute path, not {0}")]
    RelativeOutput(PathBuf),
    #[error("this daemon holds {MAX_TORRENTS} torrents already")]
    TooMany,
    #[error("{0} names more than one torrent: give more of its info-hash")]
    Ambiguous(String),
    #[error("the torrent {0} is busy: {1}")]
    Busy(String, &'static str),
    #[error(transparent)]
    Node(#[from] NodeError),
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl DaemonError {
    /// The HTTP status the API answers it with.
    pub fn status(&self) -> u16 {
        match self {
            Self::Exists(_) | Self::Busy(..) => 409,
            Self::NotFound(_) => 404,
            Self::BadSource(_)
            | Self::BadTorrent(_)
            | Self::RelativeOutput(_)
            | Self::Ambiguous(_) => 400,
            Self::TooMany => 507,
            Self::Node(_) | Self::Io { .. } => 500,
        }
    }
}

/// A running daemon: cheap to clone, every clone the same daemon.
#[derive(Debug, Clone)]
pub struct Daemon {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    node: NodeHandle,
    download_dir: PathBuf,
    max_metadata: u64,
    /// The list (one lock: changes and their write to disk go together).
    entries: Mutex<Vec<Entry>>,
    limits: Mutex<Limits>,
    /// Metadata fetches under way, by info-hash.
    fetches: Mutex<HashMap<InfoHash, tokio::task::JoinHandle<()>>>,
    /// Torrents being rechecked.
    checking: Mutex<std::collections::HashSet<InfoHash>>,
    /// One change at a time (add, pause, resume, remove, a fetch's
    /// start): each checks the list and then starts or stops a torrent,
    /// which must not interleave with another.
    ops: tokio::sync::Mutex<()>,
}

impl Daemon {
    /// Loads the list from `node`'s data dir and starts every torrent not
    /// paused (and every fetch not finished). A torrent that cannot start
    /// (its data gone, say) is logged and left listed, paused.
    pub async fn start(
        node: NodeHandle,
        download_dir: PathBuf,
        max_metadata: u64,
    ) -> Result<Self, DaemonError> {
        let path = node.data_dir().join(STATE_FILE);
        let state: State = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| DaemonError::Io {
                what: "reading",
                path: path.clone(),
                source: std::io::Error::other(e),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => State::default(),
            Err(source) => {
                return Err(DaemonError::Io {
                    what: "reading",
                    path,
                    source,
                });
            }
        };
        let daemon = Self {
            inner: Arc::new(Inner {
                node,
                download_dir,
                max_metadata,
                entries: Mutex::new(state.torrents.clone()),
                limits: Mutex::new(Limits::default()),
                fetches: Mutex::new(HashMap::new()),
                checking: Mutex::new(std::collections::HashSet::new()),
                ops: tokio::sync::Mutex::new(()),
            }),
        };
        // Limits given on the command line win over the ones kept.
        let (up, down) = daemon.inner.node.rates();
        let limits = Limits {
            up_rate: up.or(state.limits.up_rate),
            down_rate: down.or(state.limits.down_rate),
            slots: state.limits.slots,
        };
        daemon.set_limits(limits).await?;
        for e in state.torrents {
            let Ok(ih) = e.info_hash.parse::<InfoHash>() else {
                warn!(info_hash = %e.info_hash, "not an info-hash in {STATE_FILE}; skipped");
                continue;
            };
            if let Some(source) = &e.fetching {
                if !e.paused {
                    daemon.spawn_fetch(ih, source.clone());
                }
            } else if !e.paused
                && let Err(err) = daemon.start_torrent(ih, &e.output).await
            {
                warn!(info_hash = %e.info_hash, error = %err, "cannot start; paused");
                daemon.update(ih, |e| e.paused = true)?;
            }
        }
        info!(
            torrents = lock(&daemon.inner.entries).len(),
            "daemon started"
        );
        Ok(daemon)
    }

    pub fn node(&self) -> &NodeHandle {
        &self.inner.node
    }

    fn torrent_file(&self, ih: InfoHash) -> PathBuf {
        self.inner
            .node
            .data_dir()
            .join("torrents")
            .join(format!("{ih}.torrent"))
    }

    /// Where a torrent's content is: its file, or its directory.
    fn content(meta: &Metainfo, output: &Path) -> PathBuf {
        let info = meta.info();
        if info.is_single_file() {
            output.join(&info.files()[0].path[0])
        } else {
            output.join(info.name())
        }
    }

    fn read_torrent(&self, ih: InfoHash) -> Result<Metainfo, DaemonError> {
        let path = self.torrent_file(ih);
        let bytes = std::fs::read(&path).map_err(|source| DaemonError::Io {
            what: "reading",
            path,
            source,
        })?;
        Ok(Metainfo::from_bytes(&bytes)?)
    }

    /// Keeps `meta` as `DATA_DIR/torrents/<ih>.torrent`.
    fn write_torrent(&self, ih: InfoHash, meta: &Metainfo) -> Result<(), DaemonError> {
        let path = self.torrent_file(ih);
        let io = |what, path: &Path| {
            let path = path.to_owned();
            move |source| DaemonError::Io { what, path, source }
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io("creating", dir))?;
        }
        sluice_storage::resume::write_atomically(&path, meta.to_bytes())
            .map_err(io("writing", &path))
    }

    async fn start_torrent(&self, ih: InfoHash, output: &Path) -> Result<(), DaemonError> {
        let meta = Arc::new(self.read_torrent(ih)?);
        let content = Self::content(&meta, output);
        let node = &self.inner.node;
        let key = ih.to_string();
        let (trackers, peers, limits) = lock(&self.inner.entries)
            .iter()
            .find(|e| e.info_hash == key)
            .map(|e| (e.trackers.clone(), e.bt_peers.clone(), e.limits))
            .unwrap_or_default();
        let handle = node.add_torrent(meta, content).await?;
        self.apply_limits(&handle, limits).await;
        if !trackers.is_empty() {
            let _ = node.add_trackers(ih, trackers);
        }
        for addr in peers {
            let _ = node.add_bt_peer(ih, addr);
        }
        Ok(())
    }

    /// Whether the node runs it now.
    fn running(&self, ih: InfoHash) -> bool {
        self.inner
            .node
            .torrents()
            .iter()
            .any(|t| t.info_hash() == ih)
    }

    /// The node's limits now.
    pub fn limits(&self) -> Limits {
        *lock(&self.inner.limits)
    }

    /// Changes the node's limits while it runs, and keeps them. Slots
    /// change in every torrent without slots of its own.
    pub async fn set_limits(&self, limits: Limits) -> Result<(), DaemonError> {
        let node = &self.inner.node;
        let up = node.set_up_rate(limits.up_rate.unwrap_or(crate::UNLIMITED));
        let down = node.set_down_rate(limits.down_rate.unwrap_or(crate::UNLIMITED));
        if !(up && down) {
            return Err(DaemonError::BadSource(
                "this node was started without changeable limits".into(),
            ));
        }
        *lock(&self.inner.limits) = limits;
        let own: Vec<(String, Limits)> = {
            let entries = lock(&self.inner.entries);
            self.save(&entries)?;
            entries
                .iter()
                .map(|e| (e.info_hash.clone(), e.limits))
                .collect()
        };
        for t in node.torrents() {
            let key = t.info_hash().to_string();
            if let Some((_, l)) = own.iter().find(|(k, _)| *k == key) {
                self.apply_limits(&t, *l).await;
            }
        }
        Ok(())
    }

    /// Sets a running torrent's own limits; slots it has none of come
    /// from the node's, else `--slots`.
    async fn apply_limits(&self, t: &sluice_swarm::torrent::TorrentHandle, own: Limits) {
        t.set_rates(own.up_rate, own.down_rate);
        let slots = own
            .slots
            .or(self.limits().slots)
            .unwrap_or_else(|| self.inner.node.default_upload_slots());
        if slots != t.upload_slots() {
            t.set_upload_slots(slots).await;
        }
    }

    /// A torrent's own limits.
    pub fn torrent_limits(&self, key: &str) -> Result<Limits, DaemonError> {
        Ok(self.find(key)?.1.limits)
    }

    /// Changes a torrent's own limits (running or not), and keeps them.
    pub async fn set_torrent_limits(&self, key: &str, limits: Limits) -> Result<(), DaemonError> {
        let _op = self.inner.ops.lock().await;
        let (ih, _) = self.find(key)?;
        self.update(ih, |e| e.limits = limits)?;
        if let Ok(t) = self.inner.node.torrent(ih) {
            self.apply_limits(&t, limits).await;
        }
        Ok(())
    }

    /// Checks a torrent's data again from the disk, in the background
    /// (listed as `checking` until done): stopped, its resume file
    /// dropped, started again (which hashes what is there), and stopped
    /// again if it was paused.
    pub async fn recheck(&self, key: &str) -> Result<(), DaemonError> {
        let (ih, entry) = self.find(key)?;
        if entry.fetching.is_some() {
            return Err(DaemonError::Busy(
                key.to_owned(),
                "its metadata is being fetched",
            ));
        }
        if !self.spawn_check(ih, true) {
            return Err(DaemonError::Busy(key.to_owned(), "it is being checked"));
        }
        Ok(())
    }

    /// Checks a torrent's data in the background, listed `checking` until
    /// done: a recheck (`recheck`: stopped first, its resume file dropped),
    /// or the start of one added with its data in place. False if it is
    /// being checked already.
    fn spawn_check(&self, ih: InfoHash, recheck: bool) -> bool {
        if !lock(&self.inner.checking).insert(ih) {
            return false;
        }
        let daemon = self.clone();
        tokio::spawn(async move {
            if let Err(e) = daemon.check(ih, recheck).await {
                warn!(info_hash = %ih, error = %e, "check failed");
            }
            lock(&daemon.inner.checking).remove(&ih);
        });
        true
    }

    async fn check(&self, ih: InfoHash, recheck: bool) -> Result<(), DaemonError> {
        if recheck {
            let _op = self.inner.ops.lock().await;
            // Removed (or re-added) meanwhile: nothing to check.
            let (ih, _) = self.find(&ih.to_string())?;
            match self.inner.node.remove_torrent(ih).await {
                Ok(()) | Err(NodeError::NoSuchTorrent(_)) => {}
                Err(e) => return Err(e.into()),
            }
            let resume = self.inner.node.data_dir_layout().resume_file(ih);
            match std::fs::remove_file(&resume) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(DaemonError::Io {
                        what: "deleting",
                        path: resume,
                        source,
                    });
                }
            }
        }
        self.hash_and_settle(ih).await?;
        info!(info_hash = %ih, "checked");
        Ok(())
    }

    /// Opens a torrent listed `checking` (which hashes its data, maybe for
    /// minutes) *without* the ops lock, so other changes go on meanwhile;
    /// they leave a checking torrent's running to this (pause and resume
    /// only mark it). Then, under the lock, settles it as its entry says
    /// now: running, stopped if paused meanwhile (its stop writes the
    /// resume file the check found), or stopped if removed.
    async fn hash_and_settle(&self, ih: InfoHash) -> Result<(), DaemonError> {
        let output = self.find(&ih.to_string())?.1.output;
        let started = self.start_torrent(ih, &output).await;
        let _op = self.inner.ops.lock().await;
        let entry = self.find(&ih.to_string()).ok().map(|(_, e)| e);
        match (started, entry) {
            (Err(e), Some(_)) => {
                self.update(ih, |e| e.paused = true)?;
                Err(e)
            }
            (Err(e), None) => Err(e),
            (Ok(()), Some(e)) if !e.paused => {
                // Limits changed while it was checked hold from now.
                if let Ok(t) = self.inner.node.torrent(ih) {
                    self.apply_limits(&t, e.limits).await;
                }
                Ok(())
            }
            (Ok(()), _) => match self.inner.node.remove_torrent(ih).await {
                Ok(()) | Err(NodeError::NoSuchTorrent(_)) => Ok(()),
                Err(e) => Err(e.into()),
            },
        }
    }

    /// Writes the list. Called with the list locked.
    fn save(&self, entries: &[Entry]) -> Result<(), DaemonError> {
        let path = self.inner.node.data_dir().join(STATE_FILE);
        let state = State {
            torrents: entries.to_vec(),
            limits: self.limits(),
        };
        let bytes = serde_json::to_vec_pretty(&state).expect("the state serializes");
        sluice_storage::resume::write_atomically(&path, &bytes).map_err(|source| DaemonError::Io {
            what: "writing",
            path,
            source,
        })
    }

    fn update(&self, ih: InfoHash, f: impl FnOnce(&mut Entry)) -> Result<(), DaemonError> {
        let key = ih.to_string();
        let mut entries = lock(&self.inner.entries);
        let entry = entries
            .iter_mut()
            .find(|e| e.info_hash == key)
            .ok_or(DaemonError::NotFound(key))?;
        f(entry);
        self.save(&entries)
    }

    /// Lists `entry`, refusing a second copy of a torrent or one past
    /// [`MAX_TORRENTS`].
    fn insert(&self, entry: Entry) -> Result<(), DaemonError> {
        let mut entries = lock(&self.inner.entries);
        if entries.iter().any(|e| e.info_hash == entry.info_hash) {
            return Err(DaemonError::Exists(entry.info_hash));
        }
        if entries.len() >= MAX_TORRENTS {
            return Err(DaemonError::TooMany);
        }
        entries.push(entry);
        self.save(&entries)
    }

    fn output(&self, output: Option<PathBuf>) -> Result<PathBuf, DaemonError> {
        match output {
            None => Ok(self.inner.download_dir.clone()),
            Some(p) if p.is_absolute() => Ok(p),
            Some(p) => Err(DaemonError::RelativeOutput(p)),
        }
    }

    /// Adds a torrent from its `.torrent` bytes, its data in `output`
    /// (absolute; default the download dir); starts it unless `paused`.
    pub async fn add_torrent(
        &self,
        bytes: &[u8],
        output: Option<PathBuf>,
        paused: bool,
    ) -> Result<InfoHash, DaemonError> {
        let meta = Metainfo::from_bytes(bytes)?;
        let output = self.output(output)?;
        let _op = self.inner.ops.lock().await;
        self.add_meta(meta, output, paused, Vec::new(), Vec::new())
            .await
    }

    /// Lists and (unless `paused`) starts a torrent whose metadata we
    /// have. Called with the ops lock held.
    async fn add_meta(
        &self,
        meta: Metainfo,
        output: PathBuf,
        paused: bool,
        trackers: Vec<String>,
        bt_peers: Vec<std::net::SocketAddr>,
    ) -> Result<InfoHash, DaemonError> {
        let ih = meta.info().info_hash();
        self.write_torrent(ih, &meta)?;
        self.insert(Entry {
            info_hash: ih.to_string(),
            name: meta.info().name().to_owned(),
            output: output.clone(),
            paused,
            fetching: None,
            trackers,
            bt_peers,
            limits: Limits::default(),
        })?;
        // A resume file of an earlier copy (elsewhere, maybe) says nothing
        // about this one: what is there gets checked.
        let _ = std::fs::remove_file(self.inner.node.data_dir_layout().resume_file(ih));
        if !paused {
            if Self::content(&meta, &output).exists() {
                // Data already there is hashed before the torrent runs,
                // which may take minutes: in the background, listed
                // `checking`.
                self.spawn_check(ih, false);
            } else if let Err(e) = self.start_torrent(ih, &output).await {
                self.update(ih, |e| e.paused = true)?;
                return Err(e);
            }
        }
        info!(info_hash = %ih, name = meta.info().name(), paused, "torrent added");
        Ok(ih)
    }

    /// Adds a torrent by magnet link or info-hash (64 hex digits, or 40
    /// for v1): listed at once as fetching, started (unless `paused`) once
    /// its metadata arrives.
    pub async fn add_link(
        &self,
        source: &str,
        output: Option<PathBuf>,
        paused: bool,
    ) -> Result<InfoHash, DaemonError> {
        let output = self.output(output)?;
        let (ih, name, trackers, bt_peers) = parse_link(source)?;
        let _op = self.inner.ops.lock().await;
        if let Ok(meta) = self.read_torrent(ih)
            && meta.info().known_by(&ih)
        {
            // Fetched before (and since removed): no need to ask anyone.
            return self
                .add_meta(meta, output, paused, trackers, bt_peers)
                .await;
        }
        self.insert(Entry {
            info_hash: ih.to_string(),
            name: name.unwrap_or_else(|| ih.to_string()),
            output,
            paused,
            fetching: Some(source.to_owned()),
            trackers,
            bt_peers,
            limits: Limits::default(),
        })?;
        // Added paused, it asks nobody until resumed.
        if !paused {
            self.spawn_fetch(ih, source.to_owned());
        }
        Ok(ih)
    }

    fn spawn_fetch(&self, ih: InfoHash, source: String) {
        let daemon = self.clone();
        // Listed before it can end, so its own removal below always finds
        // it (and never a later fetch of the same torrent).
        let mut fetches = lock(&self.inner.fetches);
        let task = tokio::spawn(async move {
            if let Err(e) = daemon.fetch(ih, &source).await {
                warn!(info_hash = %ih, error = %e, "metadata fetch ended");
            }
            let mut fetches = lock(&daemon.inner.fetches);
            if fetches
                .get(&ih)
                .is_some_and(|t| t.id() == tokio::task::id())
            {
                fetches.remove(&ih);
            }
        });
        fetches.insert(ih, task);
    }

    async fn fetch(&self, ih: InfoHash, source: &str) -> Result<(), DaemonError> {
        let node = &self.inner.node;
        let magnet = source.parse::<Magnet>().ok();
        let (bt_peers, trackers) = match &magnet {
            Some(m) => {
                for addr in &m.peers {
                    // Failures are fine: the DHT and mDNS may find others.
                    let _ = node.dial(addr.clone()).await;
                }
                (m.bt_peers.clone(), m.trackers.clone())
            }
            None => (Vec::new(), Vec::new()),
        };
        let meta = match self.read_torrent(ih) {
            // Fetched by a run cut short (a pause) before it was listed.
            Ok(meta) if meta.info().known_by(&ih) => meta,
            _ => {
                node.fetch_metadata_with(ih, self.inner.max_metadata, bt_peers, trackers)
                    .await?
            }
        };
        // A hybrid asked for by its v1 hash is kept under its v2 one, the
        // name the node runs it by.
        let key = meta.info().info_hash();
        self.write_torrent(key, &meta)?;
        let _op = self.inner.ops.lock().await;
        let name = meta.info().name().to_owned();
        let mut start = None;
        self.update(ih, |e| {
            e.fetching = None;
            e.name = name;
            e.info_hash = key.to_string();
            if !e.paused {
                start = Some(e.output.clone());
            }
        })?;
        if key != ih {
            let _ = std::fs::remove_file(self.torrent_file(ih));
        }
        info!(info_hash = %key, "metadata fetched");
        if let Some(output) = start
            && let Err(e) = self.start_torrent(key, &output).await
        {
            self.update(key, |e| e.paused = true)?;
            return Err(e);
        }
        Ok(())
    }

    /// The entry of a torrent `v1` names, whatever it is listed under.
    fn find_known_by(&self, v1: InfoHash) -> Result<(InfoHash, Entry), DaemonError> {
        let listed: Vec<Entry> = lock(&self.inner.entries).clone();
        for e in listed {
            if let Ok(ih) = e.info_hash.parse::<InfoHash>()
                && self.read_torrent(ih).is_ok_and(|m| m.info().known_by(&v1))
            {
                return Ok((ih, e));
            }
        }
        Err(DaemonError::NotFound(v1.to_string()))
    }

    /// The torrent `key` names: its info-hash, or a prefix of it (at
    /// least [`MIN_PREFIX`] hex digits, as `sluice list` shows them) that
    /// names one torrent only.
    fn find(&self, key: &str) -> Result<(InfoHash, Entry), DaemonError> {
        let not_found = || DaemonError::NotFound(key.to_owned());
        let entries = lock(&self.inner.entries);
        let entry = if let Ok(ih) = key.parse::<InfoHash>() {
            let full = ih.to_string();
            entries.iter().find(|e| e.info_hash == full)
        } else {
            let prefix = key.to_ascii_lowercase();
            if prefix.len() < MIN_PREFIX || !prefix.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(not_found());
            }
            let mut found = entries.iter().filter(|e| e.info_hash.starts_with(&prefix));
            match (found.next(), found.next()) {
                (Some(e), None) => Some(e),
                (Some(_), Some(_)) => return Err(DaemonError::Ambiguous(key.to_owned())),
                _ => None,
            }
        };
        let entry = entry.cloned().ok_or_else(not_found)?;
        let ih = entry.info_hash.parse().map_err(|_| not_found())?;
        Ok((ih, entry))
    }

    /// Stops a torrent (writes flushed, peers closed), keeping it listed.
    pub async fn pause(&self, key: &str) -> Result<(), DaemonError> {
        let _op = self.inner.ops.lock().await;
        let (ih, _) = self.find(key)?;
        self.update(ih, |e| e.paused = true)?;
        if lock(&self.inner.checking).contains(&ih) {
            // Its check stops it when done.
            return Ok(());
        }
        // A paused torrent asks nobody for its metadata either (the fetch
        // waits for the ops lock at its end, so it cannot be starting it).
        let fetch = lock(&self.inner.fetches).remove(&ih);
        if let Some(task) = fetch {
            task.abort();
            let _ = task.await;
        }
        match self.inner.node.remove_torrent(ih).await {
            Ok(()) | Err(NodeError::NoSuchTorrent(_)) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Starts a paused torrent again (its resume file says what it has).
    pub async fn resume(&self, key: &str) -> Result<(), DaemonError> {
        let _op = self.inner.ops.lock().await;
        let (ih, entry) = self.find(key)?;
        self.update(ih, |e| e.paused = false)?;
        if lock(&self.inner.checking).contains(&ih) {
            // Its check starts it when done.
            return Ok(());
        }
        if let Some(source) = &entry.fetching {
            if lock(&self.inner.fetches)
                .get(&ih)
                .is_none_or(|t| t.is_finished())
            {
                self.spawn_fetch(ih, source.clone());
            }
            return Ok(());
        }
        if entry.fetching.is_none()
            && !self.running(ih)
            && let Err(e) = self.start_torrent(ih, &entry.output).await
        {
            self.update(ih, |e| e.paused = true)?;
            return Err(e);
        }
        Ok(())
    }

    /// Stops and forgets a torrent (its `.torrent` and resume file go);
    /// with `delete_data`, its content too.
    pub async fn remove(&self, key: &str, delete_data: bool) -> Result<(), DaemonError> {
        let (first, _) = self.find(key)?;
        let fetch = lock(&self.inner.fetches).remove(&first);
        if let Some(task) = fetch {
            task.abort();
            // Ended (or finished) before anything else happens to it.
            let _ = task.await;
        }
        let _op = self.inner.ops.lock().await;
        // A fetch that finished meanwhile may have re-keyed it.
        let (ih, entry) = match self.find(key) {
            Ok(found) => found,
            Err(_) => self.find_known_by(first)?,
        };
        match self.inner.node.remove_torrent(ih).await {
            Ok(()) | Err(NodeError::NoSuchTorrent(_)) => {}
            Err(e) => return Err(e.into()),
        }
        let files = self.read_torrent(ih).ok().map(|m| {
            let content = Self::content(&m, &entry.output);
            (sluice_storage::content_paths(m.info(), &content), content)
        });
        {
            let mut entries = lock(&self.inner.entries);
            entries.retain(|e| e.info_hash != entry.info_hash);
            self.save(&entries)?;
        }
        let _ = std::fs::remove_file(self.torrent_file(ih));
        let _ = std::fs::remove_file(self.inner.node.data_dir_layout().resume_file(ih));
        if delete_data && let Some((paths, content)) = files {
            // The torrent's own files, then the directories they leave
            // empty, up to its content directory: nothing else of the
            // user's (or another torrent's) in there.
            for path in &paths {
                match std::fs::remove_file(path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(source) => {
                        return Err(DaemonError::Io {
                            what: "deleting",
                            path: path.clone(),
                            source,
                        });
                    }
                }
                let mut dir = path.parent();
                while let Some(d) = dir.filter(|d| d.starts_with(&content)) {
                    if std::fs::remove_dir(d).is_err() {
                        break; // not empty, or gone
                    }
                    dir = d.parent();
                }
            }
        }
        info!(info_hash = %ih, delete_data, "torrent removed");
        Ok(())
    }

    /// Every torrent, in the order added, with its live figures.
    pub fn list(&self) -> Vec<Listed> {
        let checking: Vec<String> = lock(&self.inner.checking)
            .iter()
            .map(ToString::to_string)
            .collect();
        let running: HashMap<String, sluice_swarm::torrent::TorrentStats> = self
            .inner
            .node
            .torrents()
            .into_iter()
            .map(|t| (t.info_hash().to_string(), t.stats()))
            .collect();
        lock(&self.inner.entries)
            .iter()
            .map(|e| {
                let stats = running.get(&e.info_hash);
                let state = match (&e.fetching, e.paused, stats) {
                    _ if checking.contains(&e.info_hash) => TorrentState::Checking,
                    (Some(_), false, _) => TorrentState::Fetching,
                    (None, false, Some(_)) => TorrentState::Running,
                    _ => TorrentState::Paused,
                };
                Listed {
                    info_hash: e.info_hash.clone(),
                    name: e.name.clone(),
                    output: e.output.clone(),
                    state,
                    progress: stats.map_or(0.0, |s| {
                        f64::from(s.verified_pieces) / f64::from(s.total_pieces.max(1))
                    }),
                    complete: stats.is_some_and(|s| s.complete),
                    down_rate: stats.map_or(0.0, |s| s.down_rate),
                    up_rate: stats.map_or(0.0, |s| s.up_rate),
                    peers: stats.map_or(0, |s| s.peers.len()),
                    limits: e.limits,
                }
            })
            .collect()
    }

    /// Ends the fetches, then stops the node (every torrent flushed).
    pub async fn shutdown(self) -> Result<(), String> {
        for (_, task) in lock(&self.inner.fetches).drain() {
            task.abort();
        }
        self.inner.node.clone().shutdown().await
    }
}

/// A link's key, name, trackers and BitTorrent peers.
type Link = (
    InfoHash,
    Option<String>,
    Vec<String>,
    Vec<std::net::SocketAddr>,
);

/// A magnet link's or a bare info-hash's key, and the link's name,
/// trackers and BitTorrent peers.
fn parse_link(source: &str) -> Result<Link, DaemonError> {
    if source.starts_with("magnet:") {
        let m: Magnet = source
            .parse()
            .map_err(|e: sluice_swarm::magnet::MagnetError| {
                DaemonError::BadSource(e.to_string())
            })?;
        return Ok((m.info_hash, m.name, m.trackers, m.bt_peers));
    }
    let ih = source.parse().map_err(|_| {
        DaemonError::BadSource(format!(
            "{source:?} is not a magnet link or an info-hash (64 hex digits, or 40 for v1)"
        ))
    })?;
    Ok((ih, None, Vec::new(), Vec::new()))
}
