//! The BitTorrent peer wire, end to end with real processes on
//! 127.0.0.1: sluice with sluice (no libp2p path at all), and sluice with
//! libtorrent 2.0 (Debian's `python3-libtorrent`, driven by
//! `tests/lt_peer.py`) both ways, and peers that find each other only
//! through a real tracker (Debian's `opentracker`, over HTTP and UDP).
//! Content must arrive byte-identical, and libtorrent's own recheck must
//! pass on what sluice sent it. Transmission 3 (Debian's `transmission-cli`)
//! trades v1 torrents with sluice both ways through opentracker, in a
//! network namespace of the test's own: Transmission refuses peers on
//! 127.0.0.0/8, so the peers there use a veth pair's private addresses.
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

fn sluice(args: &[impl AsRef<std::ffi::OsStr>], cwd: &Path) -> Command {
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

/// What `sluice create` makes: v2 only, hybrid (the default), v1 only.
const KINDS: [&str; 3] = ["--v2", "--hybrid", "--v1"];

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
    let seed = Proc::spawn(sluice(&seed_args(torrent, "127.0.0.1"), d), "sluice seed");
    let addr = seed.line("bittorrent:");
    (seed, addr)
}

/// `sluice seed` of the album, listening for BitTorrent peers on `ip`.
fn seed_args(torrent: &Path, ip: &str) -> Vec<String> {
    [
        "seed",
        "seed/album",
        "--torrent",
        torrent.to_str().unwrap(),
        "--data-dir",
        "seed-data",
        "--no-mdns",
        "--no-upnp",
        "--bt-listen",
        &format!("{ip}:0"),
    ]
    .map(str::to_owned)
    .to_vec()
}

/// `sluice get` into `got/` from one BitTorrent peer (or, with none,
/// whoever its trackers name); must succeed.
fn sluice_get(d: &Path, torrent: &Path, peer: Option<&str>) {
    sluice_get_source(d, torrent.to_str().unwrap(), peer);
}

/// `sluice get SOURCE` (a `.torrent`, a magnet link, an info-hash).
fn sluice_get_source(d: &Path, source: &str, peer: Option<&str>) {
    let mut args = vec![
        "get",
        source,
        "-o",
        "got",
        "--data-dir",
        "get-data",
        "--no-mdns",
        "--no-upnp",
    ];
    if let Some(p) = peer {
        args.extend(["--peer", p]);
    }
    let get = Proc::spawn(sluice(&args, d), "sluice get");
    assert!(get.wait(), "sluice get {source} failed");
}

/// Debian's opentracker on 127.0.0.1 (HTTP and UDP on one port), taking
/// announces for `torrent` only (Debian builds it with a whitelist).
struct Tracker {
    _proc: Proc,
    port: u16,
    ip: String,
}

impl Tracker {
    fn start(d: &Path, torrent: &Path) -> Self {
        Self::start_in(d, torrent, None, "127.0.0.1")
    }

    /// On `ip`, inside `ns` if given.
    fn start_in(d: &Path, torrent: &Path, ns: Option<&Netns>, ip: &str) -> Self {
        let o = sluice(&["show", torrent.to_str().unwrap(), "--json"], d)
            .output()
            .unwrap();
        let shown: Value = serde_json::from_slice(&o.stdout).unwrap();
        // A v2 torrent is announced by its info-hash truncated to 20
        // bytes, a hybrid by that and its v1 info-hash, a v1 torrent by
        // its (40-digit) info-hash.
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
        let p = port.to_string();
        let dir_arg = dir.to_str().unwrap();
        let args = [
            "-i",
            ip,
            "-p",
            &p,
            "-P",
            &p,
            "-d",
            dir_arg,
            "-w",
            "whitelist",
        ];
        let mut cmd = match ns {
            Some(ns) => ns.command("/usr/bin/opentracker", &args),
            None => {
                let mut c = Command::new("/usr/bin/opentracker");
                c.args(args);
                c
            }
        };
        cmd.current_dir(&dir);
        let proc = Proc::spawn(cmd, "opentracker");
        // Up once it takes a connection (inside the namespace, ask there).
        let deadline = std::time::Instant::now() + WAIT;
        let probe = format!("import socket; socket.create_connection(('{ip}', {port}), 1)");
        let up = || match ns {
            None => std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(),
            Some(ns) => ns
                .command(PYTHON, &["-c", &probe])
                .output()
                .is_ok_and(|o| o.status.success()),
        };
        while !up() {
            assert!(
                std::time::Instant::now() < deadline,
                "opentracker did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Self {
            _proc: proc,
            port,
            ip: ip.to_owned(),
        }
    }

    fn http(&self) -> String {
        format!("http://{}:{}/announce", self.ip, self.port)
    }

    fn udp(&self) -> String {
        format!("udp://{}:{}", self.ip, self.port)
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

/// libtorrent downloads `source` (a `.torrent` or a magnet link) into
/// `lt/` from `peer`; it must finish, and its own recheck pass. Returns
/// its report.
fn libtorrent_get(d: &Path, source: &str, peer: &str) -> Value {
    std::fs::create_dir_all(d.join("lt")).unwrap();
    let lt = Proc::spawn(
        lt_peer(&["get", source, "lt", peer, "60"], d),
        "libtorrent get",
    );
    let line = format!("{{{}", lt.line("{"));
    let report: Value = serde_json::from_str(&line).unwrap_or_else(|e| {
        panic!("libtorrent's report is not JSON ({e}): {line}");
    });
    assert_eq!(report["finished"], true, "{report}");
    assert_eq!(report["rechecked"], true, "{report}");
    assert_eq!(report["pieces"], report["total"], "recheck: {report}");
    report
}

fn libtorrent_downloads_from_sluice(kind: &str) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let torrent = album_with(d, &[], kind);
    let (_seed, addr) = sluice_seed(d, &torrent);
    let report = libtorrent_get(d, torrent.to_str().unwrap(), &addr);
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

/// The magnet link `sluice show` gives for `torrent`.
fn magnet_of(d: &Path, torrent: &Path) -> String {
    let o = sluice(&["show", torrent.to_str().unwrap(), "--json"], d)
        .output()
        .unwrap();
    let shown: Value = serde_json::from_slice(&o.stdout).unwrap();
    shown["magnet"].as_str().unwrap().to_owned()
}

/// libtorrent, given only a magnet link and the seeder's address, fetches
/// the info dict from `sluice seed` over `ut_metadata` (BEP 9) and, for
/// v2 and hybrid torrents, the piece layers by hash requests (BEP 52),
/// and downloads.
#[test]
#[cfg_attr(
    sluice_no_libtorrent,
    ignore = "needs libtorrent: apt-get install python3-libtorrent"
)]
fn libtorrent_fetches_metadata_from_sluice_by_magnet() {
    each_kind(|d, torrent| {
        let magnet = magnet_of(d, torrent);
        let (_seed, addr) = sluice_seed(d, torrent);
        libtorrent_get(d, &magnet, &addr);
        same_tree(&d.join("seed/album"), &d.join("lt/album"));
    });
}

/// Runs `f` in a fresh directory with an [`album`] of each of [`KINDS`].
fn each_kind(f: impl Fn(&Path, &Path)) {
    for kind in KINDS {
        let dir = tempfile::tempdir().unwrap();
        let torrent = album_with(dir.path(), &[], kind);
        f(dir.path(), &torrent);
    }
}

/// `sluice get MAGNET` from BitTorrent peers alone: the info dict over
/// `ut_metadata`, piece layers (v2, hybrid) over hash requests, proven
/// against the roots; then the download.
fn sluice_get_magnet(d: &Path, magnet: &str, peer: Option<&str>) {
    sluice_get_source(d, magnet, peer);
    same_tree(&d.join("seed/album"), &d.join("got/album"));
}

#[test]
fn sluice_fetches_metadata_from_sluice_over_the_bittorrent_wire() {
    each_kind(|d, torrent| {
        let (_seed, addr) = sluice_seed(d, torrent);
        sluice_get_magnet(d, &magnet_of(d, torrent), Some(&addr));
    });
}

#[test]
#[cfg_attr(
    sluice_no_libtorrent,
    ignore = "needs libtorrent: apt-get install python3-libtorrent"
)]
fn sluice_fetches_metadata_from_libtorrent_by_magnet() {
    each_kind(|d, torrent| {
        let lt = Proc::spawn(
            lt_peer(&["seed", torrent.to_str().unwrap(), "seed", "120"], d),
            "libtorrent seed",
        );
        let peer = format!("127.0.0.1:{}", lt.line("port"));
        sluice_get_magnet(d, &magnet_of(d, torrent), Some(&peer));
    });
}

/// A `btih` magnet naming only a tracker: sluice finds libtorrent seeding
/// a hybrid there, fetches the info dict and piece layers from it, and
/// downloads.
#[test]
#[cfg_attr(
    any(sluice_no_libtorrent, sluice_no_opentracker),
    ignore = "needs libtorrent and opentracker: apt-get install python3-libtorrent opentracker"
)]
fn sluice_gets_a_btih_magnet_from_libtorrent_through_a_tracker() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let tracker = Tracker::start(d, &album(d));
    let torrent = album_with(d, &[tracker.http()], KINDS[1]);
    let o = sluice(&["show", torrent.to_str().unwrap(), "--json"], d)
        .output()
        .unwrap();
    let shown: Value = serde_json::from_slice(&o.stdout).unwrap();
    let v1 = shown["v1_info_hash"].as_str().unwrap();
    let magnet = format!(
        "magnet:?xt=urn:btih:{v1}&tr={}",
        tracker.http().replace(':', "%3A").replace('/', "%2F")
    );
    let lt = Proc::spawn(
        lt_peer(&["seed", torrent.to_str().unwrap(), "seed", "120"], d),
        "libtorrent seed",
    );
    lt.line("port");
    sluice_get_magnet(d, &magnet, None);
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

/// Three network namespaces of the test's own on one bridge, a private
/// address each; deleted on drop. Three, because Transmission 3 keeps one
/// peer per address: each sluice node it meets needs an address of its
/// own. The tracker and the seeder are in the first ([`Netns::A`]),
/// Transmission in the second, the downloading sluice in the third.
struct Netns([String; 3]);

impl Netns {
    /// The tracker's and the seeder's address, in the first namespace.
    const A: &str = "10.232.0.1";

    fn create(tag: &str) -> Self {
        let pid = std::process::id();
        let names = ["a", "b", "c"].map(|x| format!("sluice-bt-{tag}-{x}-{pid}"));
        let ip = |args: &[&str]| {
            Command::new("ip")
                .args(args)
                .output()
                .is_ok_and(|o| o.status.success())
        };
        for n in &names {
            let _ = ip(&["netns", "del", n]);
            assert!(ip(&["netns", "add", n]), "cannot make a network namespace");
        }
        let ns = Self(names);
        let [a, b, c] = [0, 1, 2].map(|i| ns.0[i].as_str());
        for args in [
            &["-n", a, "link", "set", "lo", "up"][..],
            &["-n", b, "link", "set", "lo", "up"],
            &["-n", c, "link", "set", "lo", "up"],
            &["-n", a, "link", "add", "br0", "type", "bridge"],
            &["-n", a, "addr", "add", "10.232.0.1/24", "dev", "br0"],
            &["-n", a, "link", "set", "br0", "up"],
            &[
                "-n", a, "link", "add", "vb", "type", "veth", "peer", "name", "v0", "netns", b,
            ],
            &[
                "-n", a, "link", "add", "vc", "type", "veth", "peer", "name", "v0", "netns", c,
            ],
            &["-n", a, "link", "set", "vb", "master", "br0", "up"],
            &["-n", a, "link", "set", "vc", "master", "br0", "up"],
            &["-n", b, "addr", "add", "10.232.0.2/24", "dev", "v0"],
            &["-n", c, "addr", "add", "10.232.0.3/24", "dev", "v0"],
            &["-n", b, "link", "set", "v0", "up"],
            &["-n", c, "link", "set", "v0", "up"],
        ] {
            assert!(ip(args), "ip {args:?} failed");
        }
        ns
    }

    /// A command in the first namespace.
    fn command(&self, program: &str, args: &[&str]) -> Command {
        self.command_in(0, program, args)
    }

    fn command_in(&self, which: usize, program: &str, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.0[which], program])
            .args(args);
        c
    }

    /// `sluice ARGS` in namespace `which`.
    fn sluice(&self, which: usize, args: &[&str], cwd: &Path) -> Command {
        let mut c = self.command_in(which, env!("CARGO_BIN_EXE_sluice"), args);
        c.current_dir(cwd);
        c
    }

    /// `transmission-cli`, in the second namespace, downloading (or, with
    /// the data there, seeding) `torrent` into `dir` on peer port `port`.
    fn transmission(&self, d: &Path, torrent: &Path, dir: &str, port: u16) -> Proc {
        let config = d.join(format!("{dir}-config"));
        // TCP only (sluice speaks no µTP), and nothing that reaches out
        // of the namespace's own peers.
        std::fs::create_dir_all(&config).unwrap();
        std::fs::write(
            config.join("settings.json"),
            r#"{"utp-enabled": false, "dht-enabled": false, "lpd-enabled": false, "pex-enabled": false, "port-forwarding-enabled": false}"#,
        )
        .unwrap();
        let mut c = self.command_in(
            1,
            "/usr/bin/transmission-cli",
            &[
                "-g",
                config.to_str().unwrap(),
                "-w",
                d.join(dir).to_str().unwrap(),
                "-p",
                &port.to_string(),
                "-et",
                "-M",
                torrent.to_str().unwrap(),
            ],
        );
        c.current_dir(d);
        Proc::spawn(c, "transmission-cli")
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for n in &self.0 {
            let _ = Command::new("ip").args(["netns", "del", n]).output();
        }
    }
}

/// Waits until every file of the album with data under `got` equals the
/// seed's. (Transmission 3 creates no empty files.)
fn until_same_tree(d: &Path, got: &str) {
    let deadline = std::time::Instant::now() + WAIT;
    let same = || {
        ["disc1/a.flac", "cover.jpg", "notes.txt"].iter().all(|f| {
            std::fs::read(d.join("seed/album").join(f)).ok()
                == std::fs::read(d.join(got).join("album").join(f)).ok()
        })
    };
    while !same() {
        assert!(
            std::time::Instant::now() < deadline,
            "{got}/album is not the seed's within {WAIT:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Transmission downloads a v1 torrent from `sluice seed`, finding it
/// through the tracker; then `sluice get` downloads it from Transmission
/// alone.
#[test]
#[cfg_attr(
    any(sluice_no_transmission, sluice_no_opentracker, sluice_no_namespaces),
    ignore = "needs transmission-cli, opentracker, and root with `ip` for a network namespace"
)]
fn sluice_and_transmission_trade_a_v1_torrent_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ns = Netns::create("tr");
    let tracker = Tracker::start_in(d, &album_with(d, &[], "--v1"), Some(&ns), Netns::A);
    let torrent = album_with(d, &[tracker.http()], "--v1");

    // sluice seeds; Transmission downloads.
    let args = seed_args(&torrent, Netns::A);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let seed = Proc::spawn(ns.sluice(0, &args, d), "sluice seed");
    seed.line("bittorrent:");
    let tr = ns.transmission(d, &torrent, "tr", 51401);
    until_same_tree(d, "tr");
    drop(seed);

    // Transmission seeds what it downloaded; sluice gets it from there.
    let get = Proc::spawn(
        ns.sluice(
            2,
            &[
                "get",
                torrent.to_str().unwrap(),
                "-o",
                "got",
                "--data-dir",
                "get-data",
                "--no-mdns",
                "--no-upnp",
            ],
            d,
        ),
        "sluice get",
    );
    assert!(get.wait(), "sluice get from Transmission failed");
    same_tree(&d.join("seed/album"), &d.join("got/album"));
    drop(tr);
}

/// `sluice testnet` over the BitTorrent wire: first sluice alone, then a
/// mixed swarm of 4 sluice nodes (the seeder among them) and 2 libtorrent
/// leechers with capped uploads. Every leecher completes with the exact
/// content, and sluice's choker gives libtorrent peers regular
/// (reciprocation) upload slots, not only optimistic ones.
#[test]
#[cfg_attr(
    sluice_no_libtorrent,
    ignore = "needs libtorrent: apt-get install python3-libtorrent"
)]
fn testnets_over_the_bittorrent_wire_alone_and_mixed_with_libtorrent() {
    for libtorrent in [0, 2] {
        let dir = tempfile::tempdir().unwrap();
        let report_dir = dir.path().join("report");
        let lt = libtorrent.to_string();
        let args = [
            "testnet",
            "--transport",
            "bt",
            "--libtorrent",
            &lt,
            "--nodes",
            "6",
            "--size",
            "8MiB",
            "--free-riders",
            "0",
            "--slow-disk",
            "0:1MB/s",
            "--up-rate",
            "1MB/s",
            "--seeder-up-rate",
            "2MB/s",
            "--timeout",
            "80",
            "--keep-data",
            "--report",
            report_dir.to_str().unwrap(),
        ];
        let run = Proc::spawn(sluice(&args, dir.path()), "sluice testnet");
        assert!(
            run.wait(),
            "sluice testnet --libtorrent {libtorrent} failed"
        );
        let report: Value =
            serde_json::from_slice(&std::fs::read(report_dir.join("report.json")).unwrap())
                .unwrap();
        assert_eq!(report["timed_out"], false, "{report}");
        let content = std::fs::read(report_dir.join("content.bin")).unwrap();
        let nodes = report["nodes"].as_array().unwrap();
        let leechers: Vec<&Value> = nodes.iter().filter(|n| n["role"] == "leecher").collect();
        assert_eq!(leechers.len(), 5);
        for n in &leechers {
            let name = n["name"].as_str().unwrap();
            assert!(n["completed_at"].is_f64(), "{name} did not complete: {n}");
            let copy = report_dir.join(format!("nodes/{name}/download/content.bin"));
            assert!(
                std::fs::read(&copy).unwrap() == content,
                "{name} ({}) has different content",
                n["client"]
            );
        }
        let lt_nodes = leechers
            .iter()
            .filter(|n| n["client"] == "libtorrent")
            .count();
        assert_eq!(lt_nodes, libtorrent);
        if libtorrent > 0 {
            let regular: u64 = nodes
                .iter()
                .map(|n| n["libtorrent_regular_unchokes"].as_u64().unwrap())
                .sum();
            assert!(
                regular > 0,
                "no sluice node gave a libtorrent peer a regular slot"
            );
            assert_eq!(report["by_client"].as_array().unwrap().len(), 2, "{report}");
        }
    }
}
