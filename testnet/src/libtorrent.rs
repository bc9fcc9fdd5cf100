//! `--libtorrent K`: libtorrent 2.0 nodes in a testnet, each a Python
//! process of Debian's `python3-libtorrent` running `lt_node.py` (written
//! next to the report). It listens on 127.0.0.1, dials the peers it is
//! given, keeps the testnet's rates and slots, and prints its state as a
//! JSON line every 250 ms; the testnet samples the last line, as it reads
//! a sluice node's API. Closing its stdin stops it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::Deserialize;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};

/// The Python that has Debian's libtorrent bindings (not a virtualenv's).
pub const PYTHON: &str = "/usr/bin/python3";
/// The node script, written into the testnet's directory.
pub const SCRIPT: &str = include_str!("lt_node.py");
/// How long a node has to start and say its port.
const START_WAIT: Duration = Duration::from_secs(30);
/// How long a node has to exit once its stdin closes.
const STOP_WAIT: Duration = Duration::from_secs(15);

/// A libtorrent node's state, as its last status line said.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct LtStatus {
    pub(crate) pieces: u32,
    pub(crate) total: u32,
    pub(crate) complete: bool,
    pub(crate) down_rate: f64,
    pub(crate) up_rate: f64,
    pub(crate) downloaded: u64,
    pub(crate) uploaded: u64,
    pub(crate) hash_failures: u64,
    pub(crate) peers: Vec<LtPeer>,
}

#[derive(Debug, Clone, Deserialize)]
pub(crate) struct LtPeer {
    /// Its peer id as sluice shows it (client prefix and 4 bytes in hex).
    pub(crate) id: String,
    pub(crate) client: String,
    pub(crate) uploaded: u64,
    /// Whether this node chokes it.
    pub(crate) choked: bool,
}

/// Whether libtorrent's Python bindings are there; the reason if not.
pub fn available() -> Result<()> {
    let out = std::process::Command::new(PYTHON)
        .args(["-c", "import libtorrent"])
        .output()
        .with_context(|| format!("running {PYTHON}"))?;
    if !out.status.success() {
        bail!(
            "libtorrent nodes need Debian's python3-libtorrent (apt-get install python3-libtorrent): {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// What a libtorrent node is started with.
#[derive(Debug)]
pub(crate) struct LtSpec<'a> {
    pub(crate) name: &'a str,
    pub(crate) script: &'a Path,
    pub(crate) torrent: &'a Path,
    /// Where its copy lives (a seeder's is there already).
    pub(crate) save_dir: &'a Path,
    pub(crate) up_rate: Option<u64>,
    pub(crate) down_rate: Option<u64>,
    pub(crate) slots: u32,
    pub(crate) peers: &'a [SocketAddr],
    pub(crate) log: &'a Path,
}

/// One running libtorrent node.
#[derive(Debug)]
pub(crate) struct LtProc {
    name: String,
    log: PathBuf,
    child: Child,
    /// Closed to stop it.
    stdin: Option<ChildStdin>,
    pub(crate) addr: SocketAddr,
    status: Arc<Mutex<Option<LtStatus>>>,
    reader: tokio::task::JoinHandle<()>,
}

impl LtProc {
    /// Starts the node and waits until it listens.
    pub(crate) async fn spawn(spec: LtSpec<'_>) -> Result<Self> {
        std::fs::create_dir_all(spec.save_dir)
            .with_context(|| format!("creating {}", spec.save_dir.display()))?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(spec.log)
            .with_context(|| format!("opening {}", spec.log.display()))?;
        let mut command = Command::new(PYTHON);
        command
            .arg(spec.script)
            .arg(spec.torrent)
            .arg(spec.save_dir)
            .args(["--slots", &spec.slots.to_string()])
            .args(["--up", &spec.up_rate.unwrap_or(0).to_string()])
            .args(["--down", &spec.down_rate.unwrap_or(0).to_string()]);
        for p in spec.peers {
            command.args(["--peer", &p.to_string()]);
        }
        command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            .kill_on_drop(true);
        crate::process::stop_with_parent(&mut command);
        let mut child = command
            .spawn()
            .with_context(|| format!("starting libtorrent for {}", spec.name))?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut lines = BufReader::new(stdout).lines();
        let first = tokio::time::timeout(START_WAIT, lines.next_line()).await;
        let port = match first {
            Ok(Ok(Some(line))) => line
                .strip_prefix("port ")
                .and_then(|p| p.trim().parse::<u16>().ok()),
            _ => None,
        };
        let Some(port) = port else {
            let _ = child.kill().await;
            bail!(
                "libtorrent node {} did not start within {START_WAIT:?}; its output is in {}",
                spec.name,
                spec.log.display()
            );
        };
        let status = Arc::new(Mutex::new(None));
        let reader = tokio::spawn({
            let status = Arc::clone(&status);
            async move {
                // Our own script's output: a line per sample, a few hundred
                // bytes per peer.
                while let Ok(Some(line)) = lines.next_line().await {
                    if let Ok(s) = serde_json::from_str::<LtStatus>(&line) {
                        *status.lock().unwrap_or_else(|p| p.into_inner()) = Some(s);
                    }
                }
            }
        });
        Ok(Self {
            name: spec.name.to_owned(),
            log: spec.log.to_owned(),
            stdin: child.stdin.take(),
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            status,
            reader,
        })
    }

    /// Its last reported state.
    pub(crate) fn status(&self) -> Option<LtStatus> {
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub(crate) fn peak_rss(&self) -> Option<u64> {
        let pid = self.child.id()?;
        crate::report::peak_rss_of(&format!("/proc/{pid}/status"))
    }

    /// An error if it exited (it runs until stopped).
    pub(crate) fn check_running(&mut self) -> Result<()> {
        crate::process::still_running(&mut self.child, &self.name, &self.log)
    }

    /// Closes its stdin and waits for it to exit; one that does not
    /// within [`STOP_WAIT`] is killed, and that is an error.
    pub(crate) async fn stop(mut self) -> Result<()> {
        drop(self.stdin.take());
        let stopped = crate::process::wait_stopped(
            &mut self.child,
            &self.name,
            &self.log,
            STOP_WAIT,
            |status| status.success(),
        )
        .await;
        self.reader.abort();
        stopped
    }
}
