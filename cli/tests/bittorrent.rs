//! The BitTorrent peer wire, end to end with real processes on
//! 127.0.0.1: sluice with sluice (no libp2p path at all), and sluice with
//! libtorrent 2.0 (Debian's `python3-libtorrent`, driven by
//! `tests/lt_peer.py`) both ways, and peers that find each other only
//! through a real tracker (Debian's `opentracker`, over HTTP and UDP).
//! Content must arrive byte-identical, and libtorrent's own recheck must
//! pass on what sluice sent it.
//!
//! Without libtorrent the build script marks its tests ignored (skipped),
//! unless `SLUICE_REQUIRE_LIBTORRENT=1` (CI), when the build fails.

#![allow(clippy::unwrap_used, reason = "test helpers")]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;

/// Longest wait for a process to say something or finish.
const WAIT: Duration = Duration::from_secs(90);
const PYTHON: &str = "/usr/bin/python3";
/// Output lines a child may have waiting (it blocks beyond: nothing here
/// prints more than a few).
const LINES: usize = 1024;

/// A child process killed when the test ends, however it ends, with its
/// stdout lines arriving on a channel (so every wait has a timeout).
struct Proc {
    child: Child,
    lines: mpsc::Receiver<String>,
    name: String,
}

impl Proc {
    fn spawn(mut cmd: Command, name: &str) -> Self {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        let out = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::sync_channel(LINES);
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            child,
            lines,
            name: name.to_owned(),
        }
    }

    /// The first line starting with `prefix`, without it.
    fn line(&self, prefix: &str) -> String {
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if l.starts_with(prefix) => return l[prefix.len()..].trim().to_owned(),
                Ok(_) => {}
                Err(e) => panic!("{}: no line {prefix:?} ({e})", self.name),
            }
        }
    }

    /// Waits for the exit (killing it after [`WAIT`]); whether it succeeded.
    fn wait(mut self) -> bool {
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.success();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{} did not finish within {WAIT:?}",
                self.name
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn sluice(args: &[&str], cwd: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_sluice"));
    c.args(args).current_dir(cwd);
    c
}

fn lt_peer(args: &[&str], cwd: &Path) -> Command {
    let mut c = Command::new(PYTHON);
    c.arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/lt_peer.py"))
        .args(args)
        .current_dir(cwd);
    c
}

/// Deterministic content.
fn content(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A multi-file torrent whose files end mid-block (v2 pads each file to a
/// piece on this wire), with an empty file, and its `.torrent`.
fn album(d: &Path) -> PathBuf {
    album_with(d, &[], KINDS[1])
}

/// What `sluice create` makes: v2 only, or hybrid (the default).
const KINDS: [&str; 2] = ["--v2", "--hybrid"];

/// [`album`], announcing to `trackers`, of a kind from [`KINDS`].
fn album_with(d: &Path, trackers: &[String], kind: &str) -> PathBuf {
    let root = d.join("seed/album");
    std::fs::create_dir_all(root.join("disc1")).unwrap();
    std::fs::write(root.join("disc1/a.flac"), content(300_001, 1)).unwrap();
    std::fs::write(root.join("cover.jpg"), content(20_000, 2)).unwrap();
    std::fs::write(root.join("notes.txt"), content(100, 3)).unwrap();
    std::fs::write(root.join("empty.txt"), b"").unwrap();
    let torrent = d.join("album.torrent");
    let mut args = vec![
        "create".to_owned(),
        "seed/album".into(),
        "--piece-size".into(),
        "32KiB".into(),
        "-o".into(),
        torrent.to_str().unwrap().into(),
        kind.into(),
    ];
    for t in trackers {
        args.extend(["--tracker".into(), t.clone()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = sluice(&args, d).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    torrent
}

fn same_tree(a: &Path, b: &Path) {
    for name in ["disc1/a.flac", "cover.jpg", "notes.txt", "empty.txt"] {
        let (x, y) = (a.join(name), b.join(name));
        assert!(
            std::fs::read(&x).unwrap() == std::fs::read(&y).unwrap(),
            "{} differs from {}",
            y.display(),
            x.display()
        );
    }
}

/// A seeding sluice, answering BitTorrent only (no mDNS; its libp2p
/// address is never given out).
fn sluice_seed(d: &Path, torrent: &Path) -> (Proc, String) {
    let seed = Proc::spawn(
        sluice(
            &[
                "seed",
                "seed/album",
                "--torrent",
                torrent.to_str().unwrap(),
                "--data-dir",
                "seed-data",
                "--no-mdns",
                "--bt-listen",
                "127.0.0.1:0",
            ],
            d,
        ),
        "sluice seed",
    );
    let addr = seed.line("bittorrent:");
    (seed, addr)
}

/// `sluice get` into `got/` from one BitTorrent peer (or, with none,
/// whoever its trackers name); must succeed.
fn sluice_get(d: &Path, torrent: &Path, peer: Option<&str>) {
    let mut args = vec![
        "get",
        torrent.to_str().unwrap(),
        "-o",
        "got",
        "--data-dir",
        "get-data",
        "--no-mdns",
    ];
    if let Some(p) = peer {
        args.extend(["--peer", p]);
    }
    let get = Proc::spawn(sluice(&args, d), "sluice get");
    assert!(get.wait(), "sluice get failed");
}

/// Debian's opentracker on 127.0.0.1 (HTTP and UDP on one port), taking
/// announces for `torrent` only (Debian builds it with a whitelist).
struct Tracker {
    _proc: Proc,
    port: u16,
}

impl Tracker {
    fn start(d: &Path, torrent: &Path) -> Self {
        let o = sluice(&["show", torrent.to_str().unwrap(), "--json"], d)
            .output()
            .unwrap();
        let shown: Value = serde_json::from_slice(&o.stdout).unwrap();
        // A v2 torrent is announced by its info-hash truncated to 20
        // bytes, a hybrid by that and its v1 info-hash.
        let mut list = format!("{}\n", &shown["info_hash"].as_str().unwrap()[..40]);
        if let Some(v1) = shown["v1_info_hash"].as_str() {
            list.push_str(&format!("{v1}\n"));
        }
        let dir = d.join("tracker");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("whitelist"), list).unwrap();
        // A free port for TCP and UDP alike (opentracker takes no 0).
        let port = loop {
            let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            let port = udp.local_addr().unwrap().port();
            if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
                break port;
            }
        };
        let mut cmd = Command::new("/usr/bin/opentracker");
        let p = port.to_string();
        cmd.args(["-i", "127.0.0.1", "-p", &p, "-P", &p, "-d"])
            .arg(&dir)
            .args(["-w", "whitelist"])
            .current_dir(&dir);
        let proc = Proc::spawn(cmd, "opentracker");
        let deadline = std::time::Instant::now() + WAIT;
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "opentracker did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Self { _proc: proc, port }
    }

    fn http(&self) -> String {
        format!("http://127.0.0.1:{}/announce", self.port)
    }

    fn udp(&self) -> String {
        format!("udp://127.0.0.1:{}", self.port)
    }
}

#[test]
fn sluice_and_sluice_over_the_bittorrent_wire_alone() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let torrent = album(d);
    let (_seed, addr) = sluice_seed(d, &torrent);
    assert!(addr.starts_with("127.0.0.1:"), "{addr}");
    sluice_get(d, &torrent, Some(&addr));
    same_tree(&d.join("seed/album"), &d.join("got/album"));
}

#[test]
#[cfg_attr(
    sluice_no_libtorrent,
    ignore = "needs libtorrent: apt-get install python3-libtorrent"
)]
fn libtorrent_downloads_from_sluice_and_its_recheck_passes() {
    for kind in KINDS {
        libtorrent_downloads_from_sluice(kind);
    }
}

fn libtorrent_downloads_from_sluice(kind: &str) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let torrent = album_with(d, &[], kind);
    let (_seed, addr) = sluice_seed(d, &torrent);
    std::fs::create_dir_all(d.join("lt")).unwrap();
    let lt = Proc::spawn(
        lt_peer(&["get", torrent.to_str().unwrap(), "lt", &addr, "60"], d),
        "libtorrent get",
    );
    let line = format!("{{{}", lt.line("{"));
    let report: Value = serde_json::from_str(&line).unwrap_or_else(|e| {
        panic!("libtorrent's report is not JSON ({e}): {line}");
    });
    assert_eq!(report["finished"], true, "{report}");
    assert_eq!(report["rechecked"], true, "{report}");
    assert_eq!(report["pieces"], report["total"], "recheck: {report}");
    assert!(
        report["clients"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c.as_str().unwrap().starts_with("sluice")),
        "libtorrent saw no sluice client: {report}"
    );
    same_tree(&d.join("seed/album"), &d.join("lt/album"));
}

#[test]
#[cfg_attr(
    sluice_no_libtorrent,
    ignore = "needs libtorrent: apt-get install python3-libtorrent"
)]
fn sluice_downloads_from_libtorrent() {
    for kind in KINDS {
        sluice_downloads_from_libtorrent_as(kind);
    }
}

fn sluice_downloads_from_libtorrent_as(kind: &str) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let torrent = album_with(d, &[], kind);
    let lt = Proc::spawn(
        lt_peer(&["seed", torrent.to_str().unwrap(), "seed", "120"], d),
        "libtorrent seed",
    );
    let port = lt.line("port");
    sluice_get(d, &torrent, Some(&format!("127.0.0.1:{port}")));
    same_tree(&d.join("seed/album"), &d.join("got/album"));
}

/// Two sluice nodes that know nothing of each other but the tracker in
/// the `.torrent`: over HTTP, then over UDP.
#[test]
#[cfg_attr(
    sluice_no_opentracker,
    ignore = "needs opentracker: apt-get install opentracker"
)]
fn sluice_peers_meet_through_a_tracker_over_http_and_udp() {
    for udp in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        // The tracker needs the info-hash first; trackers are outside the
        // info dict, so the hash is the same with or without them.
        let tracker = Tracker::start(d, &album(d));
        let url = if udp { tracker.udp() } else { tracker.http() };
        let torrent = album_with(d, &[url], KINDS[1]);
        let (_seed, _) = sluice_seed(d, &torrent);
        sluice_get(d, &torrent, None);
        same_tree(&d.join("seed/album"), &d.join("got/album"));
    }
}

/// libtorrent seeds and announces to the tracker; sluice, given only the
/// `.torrent`, finds it there.
#[test]
#[cfg_attr(
    any(sluice_no_libtorrent, sluice_no_opentracker),
    ignore = "needs libtorrent and opentracker: apt-get install python3-libtorrent opentracker"
)]
fn sluice_finds_libtorrent_through_a_tracker() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let tracker = Tracker::start(d, &album(d));
    let torrent = album_with(d, &[tracker.http()], KINDS[1]);
    let lt = Proc::spawn(
        lt_peer(&["seed", torrent.to_str().unwrap(), "seed", "120"], d),
        "libtorrent seed",
    );
    lt.line("port");
    sluice_get(d, &torrent, None);
    same_tree(&d.join("seed/album"), &d.join("got/album"));
}
