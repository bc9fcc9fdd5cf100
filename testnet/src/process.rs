//! `--processes`: every node a `sluice` process of its own (`seed`, `get
//! --seed-after` or `node`), started with the flags a person would type,
//! watched through its control API and stopped with Ctrl-C (SIGINT), as a
//! person would. Its output goes to `nodes/NAME/sluice.log`.

use std::ffi::OsString;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use sluice_node::Multiaddr;
use sluice_node::api::{API_FILE, ApiClient, NodeInfo, PeerInfo, TorrentInfo};
use tokio::process::{Child, Command};

/// How long a process has to start: write its `api` file and answer with
/// a listen address.
const START_WAIT: Duration = Duration::from_secs(30);
/// How often a starting process is asked whether it is up.
const START_POLL: Duration = Duration::from_millis(50);
/// How long a process has to stop after Ctrl-C before it is killed.
const STOP_WAIT: Duration = Duration::from_secs(30);

/// One running `sluice` process.
#[derive(Debug)]
pub(crate) struct Proc {
    name: String,
    log: PathBuf,
    child: Child,
    api: ApiClient,
    pub(crate) peer_id: String,
    /// Its listen addresses, each ending in `/p2p/<peer id>`.
    pub(crate) listen: Vec<Multiaddr>,
    /// Where it takes BitTorrent peers, and its BitTorrent peer id as
    /// others' peer lists show it.
    pub(crate) bt_addr: Option<std::net::SocketAddr>,
    pub(crate) bt_label: Option<String>,
    /// Runs in this network namespace (`--netns`).
    pub(crate) netns: Option<String>,
}

impl Proc {
    /// Starts `exe args…` (with `--data-dir data_dir` among the args),
    /// output to `log`, and waits until its API answers with an address
    /// others can dial.
    pub(crate) async fn spawn(
        exe: &Path,
        name: &str,
        args: Vec<OsString>,
        data_dir: &Path,
        log: &Path,
        netns: Option<&str>,
    ) -> Result<Self> {
        std::fs::create_dir_all(data_dir)
            .with_context(|| format!("creating {}", data_dir.display()))?;
        // Left by an earlier run of this node (churn): not its address now.
        let _ = std::fs::remove_file(data_dir.join(API_FILE));
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening {}", log.display()))?;
        let err = out
            .try_clone()
            .with_context(|| format!("opening {}", log.display()))?;
        // `ip netns exec` execs the node in place: the same process (its
        // pid, its signals, its memory figures), in the namespace.
        let mut command = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(exe);
                c
            }
            None => Command::new(exe),
        };
        command
            .args(&args)
            // Each node's addresses and key are the testnet's to give: a
            // user's exported ones would have every node bind one port or
            // share one peer id.
            .env_remove("SLUICE_LISTEN")
            .env_remove("SLUICE_BT_LISTEN")
            .env_remove("SLUICE_API")
            .env_remove("SLUICE_API_TOKEN")
            .env_remove("SLUICE_IDENTITY")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            // A testnet that fails half-way leaves no node behind.
            .kill_on_drop(true);
        stop_with_parent(&mut command);
        let mut child = command
            .spawn()
            .with_context(|| format!("starting {} for {name}", exe.display()))?;
        let started = tokio::time::Instant::now();
        loop {
            if let Some(status) = child.try_wait().context("waiting for a node")? {
                bail!(
                    "{name} exited as it started ({status}); its output is in {}",
                    log.display()
                );
            }
            let api = ApiClient::from_data_dir(data_dir, None).map(|api| match netns {
                Some(ns) => api.with_connector(crate::netns::connector(ns)),
                None => api,
            });
            if let Ok(api) = api
                && let Ok(info) = api.get_json::<NodeInfo>("/api/v1/node").await
                && !info.listen_addrs.is_empty()
            {
                let listen = info
                    .listen_addrs
                    .iter()
                    .map(|a| a.parse())
                    .collect::<Result<Vec<Multiaddr>, _>>()
                    .with_context(|| format!("{name} listens on {:?}", info.listen_addrs))?;
                // In a namespace, an address others can dial: the
                // interface's may come a moment after loopback's.
                if netns.is_none() || listen.iter().any(off_host) {
                    return Ok(Self {
                        name: name.to_owned(),
                        log: log.to_owned(),
                        child,
                        api,
                        peer_id: info.peer_id,
                        listen,
                        bt_addr: info.bt_addr,
                        bt_label: info.bt_peer_id,
                        netns: netns.map(str::to_owned),
                    });
                }
            }
            if started.elapsed() > START_WAIT {
                bail!(
                    "{name} did not answer on its control API with an address others can dial within {START_WAIT:?}; its output is in {}",
                    log.display()
                );
            }
            tokio::time::sleep(START_POLL).await;
        }
    }

    /// Its peak resident memory so far (`VmHWM`; Linux only).
    pub(crate) fn peak_rss(&self) -> Option<u64> {
        let pid = self.child.id()?;
        crate::report::peak_rss_of(&format!("/proc/{pid}/status"))
    }

    pub(crate) fn api_addr(&self) -> std::net::SocketAddr {
        self.api.addr()
    }

    /// An error if the process has exited (it should run until stopped).
    pub(crate) fn check_running(&mut self) -> Result<()> {
        still_running(&mut self.child, &self.name, &self.log)
    }

    /// The torrent and its peers as the node's API shows them; `None`
    /// while the node does not answer or has not added it yet.
    pub(crate) async fn torrent(&self, info_hash: &str) -> Option<(TorrentInfo, Vec<PeerInfo>)> {
        torrent_of(&self.api, info_hash).await.ok()
    }

    /// The node itself as its API shows it (reachability, paths).
    pub(crate) async fn node_info(&self) -> Option<NodeInfo> {
        self.api.get_json("/api/v1/node").await.ok()
    }

    /// An address others dial it at: in a namespace, not loopback.
    pub(crate) fn dial_addr(&self) -> Option<Multiaddr> {
        match self.netns {
            Some(_) => self.listen.iter().find(|a| off_host(a)).cloned(),
            None => self.listen.first().cloned(),
        }
    }

    /// Ctrl-C (SIGINT), then waits for it to finish its writes and exit;
    /// one that does not within [`STOP_WAIT`] is killed, and that is an
    /// error.
    pub(crate) async fn stop(mut self) -> Result<()> {
        if let Some(pid) = self.child.id() {
            interrupt(pid);
        }
        // 130: stopped before its download was complete (churn); killed
        // by the signal itself: it came before the process listened for
        // Ctrl-C (just started), when it had nothing to lose.
        let clean = |status: std::process::ExitStatus| {
            status.success() || status.code() == Some(130) || status.signal() == Some(libc::SIGINT)
        };
        wait_stopped(&mut self.child, &self.name, &self.log, STOP_WAIT, clean).await
    }
}

/// A torrent and its peers as the node at `api` shows them (both asked at
/// once).
pub(crate) async fn torrent_of(
    api: &ApiClient,
    info_hash: &str,
) -> Result<(TorrentInfo, Vec<PeerInfo>), sluice_node::api::ClientError> {
    let path = format!("/api/v1/torrents/{info_hash}");
    let peers_path = format!("{path}/peers");
    let (info, peers) = tokio::join!(
        api.get_json::<TorrentInfo>(&path),
        api.get_json::<Vec<PeerInfo>>(&peers_path),
    );
    Ok((info?, peers?))
}

/// Not a loopback address: one another host can dial.
fn off_host(a: &Multiaddr) -> bool {
    !matches!(
        a.iter().next(),
        Some(sluice_node::multiaddr::Protocol::Ip4(ip)) if ip.is_loopback()
    )
}

/// Waits up to `wait` for `child` (`name`, writing to `log`), asked to
/// stop, to exit; an exit `clean` does not accept is an error, and so is
/// one that had to be killed.
pub(crate) async fn wait_stopped(
    child: &mut Child,
    name: &str,
    log: &Path,
    wait: Duration,
    clean: impl Fn(std::process::ExitStatus) -> bool,
) -> Result<()> {
    match tokio::time::timeout(wait, child.wait()).await {
        Ok(Ok(status)) if clean(status) => Ok(()),
        Ok(Ok(status)) => bail!(
            "{name} exited with {status}; its output is in {}",
            log.display()
        ),
        Ok(Err(e)) => Err(e).with_context(|| format!("waiting for {name}")),
        Err(_) => {
            let _ = child.kill().await;
            bail!(
                "{name} did not stop within {wait:?} and was killed; its output is in {}",
                log.display()
            )
        }
    }
}

/// An error if `child` (`name`, writing to `log`) has exited: a node runs
/// until the testnet stops it.
pub(crate) fn still_running(child: &mut Child, name: &str, log: &Path) -> Result<()> {
    match child.try_wait() {
        Ok(None) => Ok(()),
        Ok(Some(status)) => bail!(
            "{name} exited on its own ({status}); its output is in {}",
            log.display()
        ),
        Err(e) => Err(e).with_context(|| format!("checking on {name}")),
    }
}

/// A testnet killed outright (SIGKILL, OOM) runs no destructor, so
/// `kill_on_drop` cannot stop its nodes: on Linux each node gets Ctrl-C
/// from the kernel when the thread that started it ends (`PR_SET_PDEATHSIG`).
/// Nodes are started from async code (the thread running the testnet's
/// `block_on`, or a runtime worker), threads that live as long as the
/// testnet; starting one from `spawn_blocking` would break this, since an
/// idle blocking thread exits and would stop its nodes with it. A node
/// whose parent is already gone is not started.
#[cfg(target_os = "linux")]
#[allow(unsafe_code, reason = "prctl(2) in the child before exec")]
pub(crate) fn stop_with_parent(command: &mut Command) {
    let parent = std::process::id();
    // SAFETY: the closure runs in the forked child before exec and only
    // makes async-signal-safe calls (prctl, getppid) and builds an error
    // from errno; it allocates nothing.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGINT) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            if u32::try_from(libc::getppid()).ok() != Some(parent) {
                return Err(std::io::ErrorKind::BrokenPipe.into());
            }
            Ok(())
        });
    }
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn stop_with_parent(_: &mut Command) {}

/// Ctrl-C for a child we spawned.
#[allow(unsafe_code, reason = "kill(2): no safe wrapper in std or tokio")]
fn interrupt(pid: u32) {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return;
    };
    // SAFETY: kill(2) takes plain integers and touches no memory of ours;
    // the pid is a child we have not reaped, so it names no other process.
    unsafe {
        libc::kill(pid, libc::SIGINT);
    }
}
