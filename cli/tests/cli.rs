//! The `sluice` binary as a user runs it: results, JSON, exit codes and
//! one-line errors.

#![allow(
    clippy::unwrap_used,
    clippy::print_stderr,
    reason = "test helpers; a skipped check says so"
)]

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::eventually;
use serde_json::Value;

fn sluice(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(args)
        .current_dir(cwd)
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8(o.stderr.clone()).unwrap()
}

fn content(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
}

#[test]
fn create_show_verify_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir_all(d.join("album/disc1")).unwrap();
    std::fs::write(d.join("album/disc1/a.flac"), content(300_000)).unwrap();
    std::fs::write(d.join("album/cover.jpg"), content(20_000)).unwrap();
    std::fs::write(d.join("album/empty.txt"), b"").unwrap();

    let o = sluice(
        &["create", "album", "--piece-size", "32KiB", "--no-date"],
        d,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    let mut lines = out.lines();
    let ih = lines.next().unwrap();
    assert_eq!(ih.len(), 64);
    assert!(ih.chars().all(|c| c.is_ascii_hexdigit()));
    // A hybrid by default: the v1 topic first, as libtorrent writes it.
    let magnet = lines.next().unwrap();
    assert!(magnet.starts_with("magnet:?xt=urn:btih:"), "{magnet}");
    assert!(
        magnet.ends_with(&format!("&xt=urn:btmh:1220{ih}&dn=album")),
        "{magnet}"
    );
    assert!(d.join("album.torrent").is_file());

    let o = sluice(&["show", "album.torrent", "--json"], d);
    assert!(o.status.success(), "{}", stderr(&o));
    let shown: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(shown["info_hash"], ih);
    assert_eq!(shown["piece_length"], 32 * 1024);
    assert_eq!(shown["total_size"], 320_000);
    let paths: Vec<&str> = shown["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap())
        .collect();
    assert_eq!(paths, ["cover.jpg", "disc1/a.flac", "empty.txt"]);

    let o = sluice(&["verify", "album.torrent", "album", "--json"], d);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["complete"], true);
    assert_eq!(v["verified_pieces"], v["total_pieces"]);

    // A missing empty file makes the data incomplete, though every piece
    // checks out.
    std::fs::remove_file(d.join("album/empty.txt")).unwrap();
    let o = sluice(&["verify", "album.torrent", "album", "--json"], d);
    assert_eq!(o.status.code(), Some(1));
    let v2: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v2["missing_files"][0], "empty.txt");
    std::fs::write(d.join("album/empty.txt"), b"").unwrap();

    // One flipped byte: one piece fails, exit 1.
    let mut data = std::fs::read(d.join("album/disc1/a.flac")).unwrap();
    data[100_000] ^= 1;
    std::fs::write(d.join("album/disc1/a.flac"), data).unwrap();
    let o = sluice(&["verify", "album.torrent", "album"], d);
    assert_eq!(o.status.code(), Some(1));
    let total = v["total_pieces"].as_u64().unwrap();
    let want = format!("{}/{total} pieces verified", total - 1);
    assert!(stdout(&o).starts_with(&want), "{}", stdout(&o));
}

#[test]
fn creation_without_a_date_is_deterministic() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("f.iso"), content(100_001)).unwrap();
    for out in ["a.torrent", "b.torrent"] {
        assert!(
            sluice(&["create", "f.iso", "--no-date", "-o", out], d)
                .status
                .success()
        );
    }
    assert_eq!(
        std::fs::read(d.join("a.torrent")).unwrap(),
        std::fs::read(d.join("b.torrent")).unwrap()
    );
}

#[test]
fn single_file_verify_accepts_the_file_or_its_directory() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("f.iso"), content(100_001)).unwrap();
    assert!(sluice(&["create", "f.iso"], d).status.success());
    assert_eq!(
        sluice(&["verify", "f.iso.torrent", "f.iso"], d)
            .status
            .code(),
        Some(0)
    );
    assert_eq!(
        sluice(&["verify", "f.iso.torrent", "."], d).status.code(),
        Some(0)
    );
}

/// Bad input: one clear line naming the input, exit code 2, nothing written.
const HASH: &str = "aabbccddeeff00112233445566778899aabbccddeeff00112233445566778899";

#[test]
fn bad_input_gets_one_line_and_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("f"), b"data").unwrap();
    std::fs::write(d.join("junk.torrent"), b"d4:infod4:name1:xee").unwrap();
    std::fs::create_dir(d.join("outdir")).unwrap();

    let cases: &[(&[&str], &str)] = &[
        (&["create", "f", "--piece-size", "12XB"], "12XB"),
        (
            &["create", "f", "--piece-size", "20000"],
            "not a power of two",
        ),
        (&["create", "missing"], "missing"),
        (&["create", "f", "-o", "outdir"], "outdir"),
        (&["show", "missing.torrent"], "missing.torrent"),
        (&["show", "junk.torrent"], "info.piece length: missing"),
        (&["verify", "junk.torrent", "f"], "junk.torrent"),
        (
            &["get", "missing.torrent", "-o", "dl"],
            "missing.torrent: no such file",
        ),
        (&["get", "magnet:?dn=x", "-o", "dl"], "has no info-hash"),
        (
            &["get", "magnet:?xt=urn:btih:0123456789abcdef", "-o", "dl"],
            "40 hex digits or 32 base32",
        ),
        (
            &[
                "get",
                &format!("magnet:?xt=urn:btmh:1114{HASH}"),
                "-o",
                "dl",
            ],
            "must be SHA-256",
        ),
        (
            &["get", "magnet:?xt=urn:btmh:1220xyz", "-o", "dl"],
            "not 64 hex digits",
        ),
        (
            &[
                "get",
                &format!("magnet:?xt=urn:btmh:1220{HASH}&x.pe=/ip4/1.2.3/tcp/1"),
                "-o",
                "dl",
            ],
            "x.pe=/ip4/1.2.3/tcp/1: not a multiaddr",
        ),
    ];
    for (args, needle) in cases {
        let o = sluice(args, d);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        let err = stderr(&o);
        assert!(err.contains(needle), "{args:?}: {err}");
        assert!(
            !err.contains("panicked") && !err.contains("backtrace"),
            "{err}"
        );
    }
    let mut left: Vec<String> = std::fs::read_dir(d)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    left.sort();
    assert_eq!(
        left,
        ["f", "junk.torrent", "outdir"],
        "nothing half-written"
    );
}

/// Runs `sluice seed` until the test ends (killed on drop).
struct Seeder(std::process::Child);

impl Drop for Seeder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Reads the seeder's stdout until a line starting with `prefix`.
fn line_starting(lines: &std::sync::mpsc::Receiver<String>, prefix: &str) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let line = lines
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("no {prefix:?} line in time"));
        if let Some(rest) = line.strip_prefix(prefix) {
            return rest.trim().to_owned();
        }
    }
}

#[test]
fn seed_then_get_then_resume() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir(d.join("share")).unwrap();
    std::fs::write(d.join("share/a.bin"), content(700_000)).unwrap();
    std::fs::write(d.join("share/b.bin"), content(5)).unwrap();
    // Round-robin seeding here; the other tests use the default.
    let seeder = local_seeder("share", &["--seed-mode", "round-robin"], d);
    let lines = &seeder.lines;
    let torrent = line_starting(lines, "torrent:");
    let peer = line_starting(lines, "peer:");
    assert!(peer.contains("/p2p/12D3KooW"), "{peer}");

    let get = |args: &[&str]| {
        let mut all = vec![
            "get",
            torrent.as_str(),
            "-o",
            "dl",
            "--data-dir",
            "getd",
            "--no-mdns",
            "--no-upnp",
        ];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--listen", "/ip4/127.0.0.1/tcp/0"]);
        sluice(&all, d)
    };
    let o = get(&["--peer", &peer]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    for f in ["a.bin", "b.bin"] {
        assert_eq!(
            std::fs::read(d.join("dl/share").join(f)).unwrap(),
            std::fs::read(d.join("share").join(f)).unwrap()
        );
    }
    // A second run resumes from the resume file: complete with no peer.
    let o = get(&[]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    drop(seeder);
}

#[test]
fn a_magnet_link_alone_downloads_and_saves_the_same_torrent() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir(d.join("share")).unwrap();
    std::fs::write(d.join("share/a.bin"), content(900_000)).unwrap();
    std::fs::write(d.join("share/b.bin"), content(3)).unwrap();
    let seeder = local_seeder("share", &[], d);
    let torrent = line_starting(&seeder.lines, "torrent:");
    let info_hash = line_starting(&seeder.lines, "info-hash:");
    let magnet = line_starting(&seeder.lines, "magnet:");
    assert!(
        magnet.starts_with("magnet:?xt=urn:btih:")
            && magnet.contains(&format!(
                "&xt=urn:btmh:1220{info_hash}&dn=share&x.pe=/ip4/127.0.0.1/tcp/"
            )),
        "{magnet}"
    );
    let get = |source: &str, extra: &[&str]| {
        let mut all = vec![
            "get",
            source,
            "-o",
            "dl",
            "--data-dir",
            "getd",
            "--no-mdns",
            "--no-upnp",
        ];
        all.extend_from_slice(extra);
        all.extend_from_slice(&["--listen", "/ip4/127.0.0.1/tcp/0"]);
        sluice(&all, d)
    };
    let o = get(&magnet, &["--save-torrent", "saved.torrent"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    for f in ["a.bin", "b.bin"] {
        assert_eq!(
            std::fs::read(d.join("dl/share").join(f)).unwrap(),
            std::fs::read(d.join("share").join(f)).unwrap()
        );
    }
    assert_eq!(
        std::fs::read(d.join("saved.torrent")).unwrap(),
        std::fs::read(d.join(&torrent)).unwrap(),
        "the rebuilt .torrent is the seeder's"
    );
    // With the seeder gone, the link and the bare hash both resume from
    // the .torrent kept in the data dir, asking no one.
    drop(seeder);
    for source in [magnet.as_str(), info_hash.as_str()] {
        let o = get(source, &[]);
        assert_eq!(o.status.code(), Some(0), "{source}: {}", stderr(&o));
    }
}

/// `sluice seed WHAT` on 127.0.0.1 with its data in `seedd`, no mDNS.
fn local_seeder(what: &str, extra: &[&str], d: &Path) -> Running {
    let mut args = vec![
        "seed",
        what,
        "--data-dir",
        "seedd",
        "--no-mdns",
        "--no-upnp",
        "--listen",
        "/ip4/127.0.0.1/tcp/0",
    ];
    args.extend_from_slice(extra);
    spawn(&args, d)
}

/// A `sluice` child process whose stdout lines arrive on a channel;
/// killed when dropped.
struct Running {
    _child: Seeder,
    lines: std::sync::mpsc::Receiver<String>,
}

fn spawn(args: &[&str], cwd: &Path) -> Running {
    let mut command = Command::new(env!("CARGO_BIN_EXE_sluice"));
    command.args(args);
    spawn_command(command, cwd)
}

fn spawn_command(mut command: Command, cwd: &Path) -> Running {
    use std::io::BufRead;
    let mut child = command
        .current_dir(cwd)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, lines) = std::sync::mpsc::sync_channel(64);
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    Running {
        _child: Seeder(child),
        lines,
    }
}

#[test]
fn a_node_runs_with_the_identity_made_for_it_beforehand() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let made = sluice(&["identity", "new", "node.key"], d);
    assert!(made.status.success(), "{}", stderr(&made));
    let id = stdout(&made).trim().to_owned();
    assert!(id.starts_with("12D3KooW"), "an ed25519 peer id: {id}");
    let shown = sluice(&["identity", "show", "node.key"], d);
    assert_eq!(stdout(&shown).trim(), id);
    // Never overwritten; a file that is no key is named.
    let again = sluice(&["identity", "new", "node.key"], d);
    assert_eq!(again.status.code(), Some(2));
    assert!(stderr(&again).contains("node.key"), "{}", stderr(&again));
    std::fs::write(d.join("bad.key"), b"not a key").unwrap();
    let bad = sluice(&["identity", "show", "bad.key"], d);
    assert_eq!(bad.status.code(), Some(2));
    assert!(stderr(&bad).contains("bad.key is not a valid identity key"));

    std::fs::write(d.join("a.bin"), content(1000)).unwrap();
    let seeder = local_seeder("a.bin", &["--identity", "node.key"], d);
    let peer = line_starting(&seeder.lines, "peer:");
    assert!(peer.ends_with(&format!("/p2p/{id}")), "{peer}");
    assert!(
        !d.join("seedd/identity.key").exists(),
        "the data dir's own key is not made"
    );
}

#[test]
fn status_without_a_node_names_the_dir_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    for cmd in ["status", "peers", "top"] {
        let o = sluice(&[cmd, "--data-dir", "nothing-here"], dir.path());
        assert_eq!(o.status.code(), Some(2), "{cmd}");
        let err = stderr(&o);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.contains("no running node") && err.contains("nothing-here"),
            "{err}"
        );
    }
    // A stale address (the node died): one line naming it.
    std::fs::create_dir(dir.path().join("stale")).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    std::fs::write(dir.path().join("stale/api"), format!("{port}\n")).unwrap();
    let o = sluice(&["status", "--data-dir", "stale"], dir.path());
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("no node answers"), "{}", stderr(&o));
}

/// `sluice status`, `peers` and `top` against real `seed` and `get`
/// processes, mid-transfer.
/// A seeder (`seedd`, capped at 200 KiB/s) and a leecher (`getd`) of a
/// 3 MB file, the leecher holding its first pieces; the seeder's peer id.
fn a_running_transfer(d: &Path) -> (Running, Running, Value, String) {
    std::fs::create_dir(d.join("share")).unwrap();
    std::fs::write(d.join("share/a.bin"), content(3_000_000)).unwrap();
    let local = ["--no-mdns", "--no-upnp", "--listen", "/ip4/127.0.0.1/tcp/0"];
    let mut seed_args = vec![
        "seed",
        "share",
        "--data-dir",
        "seedd",
        "--up-rate",
        "200KiB/s",
    ];
    seed_args.extend_from_slice(&local);
    let seeder = spawn(&seed_args, d);
    let torrent = line_starting(&seeder.lines, "torrent:");
    let peer = line_starting(&seeder.lines, "peer:");
    let seeder_id = peer.rsplit('/').next().unwrap().to_owned();
    let mut get_args = vec![
        "get",
        &torrent,
        "-o",
        "dl",
        "--data-dir",
        "getd",
        "--peer",
        &peer,
    ];
    get_args.extend_from_slice(&local);
    let leecher = spawn(&get_args, d);

    // Both nodes see each other, and data flows.
    let status = eventually("the leecher's first pieces", || {
        let o = sluice(&["status", "--data-dir", "getd", "--json"], d);
        let v: Value = serde_json::from_slice(&o.stdout).ok()?;
        let t = v.get(0)?;
        (t["peers"] == 1 && t["verified_pieces"].as_u64()? > 0).then(|| t.clone())
    });
    (seeder, leecher, status, seeder_id)
}

#[test]
fn inspect_a_running_transfer() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (_seeder, _leecher, status, seeder_id) = a_running_transfer(d);
    assert_eq!(
        status["complete"], false,
        "the transfer is still going: {status}"
    );
    // 3 MB at 200 KiB/s: an ETA of seconds, not hours.
    let eta = eventually("an ETA", || {
        let o = sluice(&["status", "--data-dir", "getd", "--json"], d);
        let v: Value = serde_json::from_slice(&o.stdout).ok()?;
        v[0]["eta_seconds"].as_f64()
    });
    assert!(eta > 0.0 && eta < 600.0, "ETA {eta} s");
    let o = sluice(&["peers", "--data-dir", "getd", "--json"], d);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v[0]["info_hash"], status["info_hash"]);
    assert_eq!(v[0]["peers"][0]["peer_id"], seeder_id.as_str());
    assert_eq!(v[0]["peers"][0]["am_interested"], true);

    let o = sluice(&["peers", "--data-dir", "getd"], d);
    let table = stdout(&o);
    assert!(
        table.contains("PEER") && table.contains("REASON"),
        "{table}"
    );
    assert!(table.contains(&seeder_id[seeder_id.len() - 8..]), "{table}");
    let o = sluice(&["status", "--data-dir", "seedd"], d);
    assert!(
        stdout(&o).contains("share") && stdout(&o).contains("100.0%"),
        "{}",
        stdout(&o)
    );
}

/// Drives `sluice top` in an 80×24 tmux pane on the seeder of a running
/// transfer: the leecher's row with the choker's reason appears, and `q`
/// quits.
#[test]
#[cfg_attr(sluice_no_tmux, ignore = "needs tmux: apt-get install tmux")]
fn top_in_a_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (_seeder, _leecher, _, _) = a_running_transfer(d);
    let data_dir = "seedd";
    let socket = format!("sluice-test-{}", std::process::id());
    let tmux = |args: &[&str]| {
        Command::new("tmux")
            .args(["-L", &socket])
            .args(args)
            .current_dir(d)
            .output()
            .unwrap()
    };
    let top = format!(
        "{} top --data-dir {data_dir} --refresh 0.2",
        env!("CARGO_BIN_EXE_sluice")
    );
    let o = tmux(&[
        "new-session",
        "-d",
        "-s",
        "top",
        "-x",
        "80",
        "-y",
        "24",
        &top,
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let screen = eventually("a peer row with its reason in sluice top", || {
        let s = stdout(&tmux(&["capture-pane", "-p", "-t", "top"]));
        s.lines()
            .any(|l| l.contains("seeding slot") && l.contains('U'))
            .then_some(s)
    });
    assert!(
        screen.contains("REASON") && screen.contains("disk queue"),
        "{screen}"
    );
    assert!(screen.lines().all(|l| l.chars().count() <= 80), "{screen}");
    tmux(&["send-keys", "-t", "top", "q"]);
    eventually("sluice top to quit on q", || {
        (!tmux(&["has-session", "-t", "top"]).status.success()).then_some(())
    });
    tmux(&["kill-server"]);
}

#[test]
fn testnet_runs_and_reports() {
    let dir = tempfile::tempdir().unwrap();
    let o = sluice(
        &[
            "testnet",
            "--nodes",
            "5",
            "--size",
            "1MiB",
            "--piece-size",
            "64KiB",
            "--rechoke",
            "0.5",
            "--slow-disk",
            "1:2MB/s",
            "--report",
            "rep",
        ],
        dir.path(),
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(
        out.contains("leecher") && out.contains("lower bound"),
        "{out}"
    );
    assert!(out.contains("report: "), "{out}");
    let report: Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("rep/report.json")).unwrap())
            .unwrap();
    assert_eq!(report["nodes"].as_array().unwrap().len(), 5);
    assert_eq!(report["timed_out"], false);
    // Only the reports stay behind.
    assert!(dir.path().join("rep/report.md").is_file());
    assert!(dir.path().join("rep/progress.svg").is_file());
    assert!(!dir.path().join("rep/nodes").exists());
    assert!(!dir.path().join("rep/content.bin").exists());
    // Bad input: one line naming it, exit 2, and the used directory is
    // refused rather than mixed into.
    for (args, names) in [
        (&["testnet", "--slow-disk", "3"][..], "--slow-disk"),
        (&["testnet", "--nodes", "1"][..], "--nodes 1"),
        (&["testnet", "--report", "rep"][..], "not empty"),
    ] {
        let o = sluice(args, dir.path());
        assert_eq!(o.status.code(), Some(2), "{args:?}");
        let first = stderr(&o).lines().next().unwrap_or("").to_owned();
        assert!(first.contains(names), "{args:?}: {}", stderr(&o));
    }
}

/// `--processes`: every node a `sluice` process (`seed`, `get
/// --seed-after`, `node`), a liar and a churned leecher included. Every
/// copy is identical, every process stopped cleanly on Ctrl-C, and the
/// report has each process's memory.
#[test]
fn testnet_with_a_process_per_node() {
    let dir = tempfile::tempdir().unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_sluice"));
    command.args([
        "testnet",
        "--processes",
        "--nodes",
        "6",
        "--liars",
        "1",
        "--churn",
        "1",
        "--size",
        "2MiB",
        "--piece-size",
        "64KiB",
        "--up-rate",
        "500kB/s",
        "--seeder-up-rate",
        "1MB/s",
        "--rechoke",
        "0.5",
        "--timeout",
        "45",
        "--keep-data",
        "--report",
        "rep",
    ]);
    let o = output_within_a_minute(command, dir.path());
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let rep = dir.path().join("rep");
    let report: Value =
        serde_json::from_slice(&std::fs::read(rep.join("report.json")).unwrap()).unwrap();
    assert_eq!(report["timed_out"], false);
    let content = std::fs::read(rep.join("content.bin")).unwrap();
    let nodes = report["nodes"].as_array().unwrap();
    let mut restarts = 0;
    for n in nodes {
        let name = n["name"].as_str().unwrap();
        let role = n["role"].as_str().unwrap();
        let log = std::fs::read_to_string(rep.join("nodes").join(name).join("sluice.log"))
            .unwrap_or_else(|e| panic!("{name}: no log: {e}"));
        assert!(
            log.contains("stopping"),
            "{name} did not stop on Ctrl-C:\n{log}"
        );
        assert!(n["peak_rss_bytes"].as_u64().is_some_and(|b| b > 0), "{n}");
        restarts += n["restarts"].as_u64().unwrap();
        if role == "leecher" || role == "free-rider" {
            assert!(n["completed_at"].is_number(), "{name} did not complete");
            let copy = rep.join("nodes").join(name).join("download/content.bin");
            assert!(
                std::fs::read(&copy).unwrap() == content,
                "{name}: copy differs"
            );
        }
    }
    assert!(restarts >= 1, "no leecher was churned");
    assert!(rep.join("nodes/dht/sluice.log").is_file());
}

/// `sluice seed` of a 6 MB file at 1 MB/s on 127.0.0.1 (`seedd`): the
/// seeder, its `.torrent` and its peer address.
fn slow_seeder(d: &Path) -> (Running, String, String) {
    std::fs::create_dir(d.join("share")).unwrap();
    std::fs::write(d.join("share/a.bin"), content(6_000_000)).unwrap();
    let seeder = spawn(
        &[
            "seed",
            "share",
            "--data-dir",
            "seedd",
            "--up-rate",
            "1MB/s",
            "--no-mdns",
            "--no-upnp",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
        ],
        d,
    );
    let torrent = line_starting(&seeder.lines, "torrent:");
    let peer = line_starting(&seeder.lines, "peer:");
    (seeder, torrent, peer)
}

/// `kill -9` a downloading `sluice get` three times at different points and
/// start it again with the same command: it completes with identical
/// content, and the run that finishes downloads no more than what was not
/// yet verified when it started, plus one piece (one peer).
#[test]
fn a_leecher_killed_and_restarted_loses_nothing_verified() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (_seeder, torrent, peer) = slow_seeder(d);
    let local = ["--no-mdns", "--no-upnp", "--listen", "/ip4/127.0.0.1/tcp/0"];
    let mut get_args = vec![
        "get",
        &torrent,
        "-o",
        "dl",
        "--data-dir",
        "getd",
        "--peer",
        &peer,
        "--seed-after",
    ];
    get_args.extend_from_slice(&local);
    let status = || -> Option<Value> {
        let o = sluice(&["status", "--data-dir", "getd", "--json"], d);
        let v: Value = serde_json::from_slice(&o.stdout).ok()?;
        v.get(0).cloned()
    };
    let mut last_start = 0;
    for round in 1..=3u64 {
        let leecher = spawn(&get_args, d);
        let s = eventually("progress before the kill", || {
            let t = status()?;
            let total = t["total_pieces"].as_u64()?;
            (t["verified_pieces"].as_u64()? >= total * round / 4).then_some(t)
        });
        let start = s["pieces_at_start"].as_u64().unwrap();
        assert!(start >= last_start, "round {round}: {start} < {last_start}");
        last_start = start;
        drop(leecher); // SIGKILL, then reaped
    }
    let _leecher = spawn(&get_args, d);
    let done = eventually("completion after the restarts", || {
        status().filter(|t| t["complete"] == true)
    });
    let total = done["total_pieces"].as_u64().unwrap();
    let start = done["pieces_at_start"].as_u64().unwrap();
    let piece = done["piece_length"].as_u64().unwrap();
    let downloaded = done["downloaded"].as_u64().unwrap();
    assert!(start > 0, "the last restart found nothing it had");
    assert!(
        downloaded <= (total - start) * piece + piece,
        "downloaded {downloaded} bytes, but only {} pieces of {piece} were missing",
        total - start
    );
    // A directory holding one file stays a directory (a hybrid's v1
    // part says so, and libtorrent keeps it).
    assert_eq!(
        std::fs::read(d.join("dl/share/a.bin")).unwrap(),
        std::fs::read(d.join("share/a.bin")).unwrap()
    );
}

/// A network namespace of the test's own, with a veth pair (two addresses
/// on a private subnet) besides loopback: libp2p-mdns ignores loopback
/// interfaces, so mDNS needs a real one, and this keeps the traffic off
/// every network but the test's. Deleted on drop.
struct Netns(String);

impl Netns {
    /// A fresh namespace; panics where it cannot be made (the test is
    /// ignored on machines the build script found unable).
    fn create() -> Self {
        let name = format!("sluice-test-{}", std::process::id());
        let ip = |args: &[&str]| {
            Command::new("ip")
                .args(args)
                .output()
                .is_ok_and(|o| o.status.success())
        };
        // The build script found namespaces possible (else this test is
        // ignored), so failing here is a failure, not a skip.
        assert!(
            ip(&["netns", "add", &name]),
            "cannot make a network namespace (`ip netns add`)"
        );
        let ns = Self(name);
        let n = ns.0.as_str();
        for args in [
            &["-n", n, "link", "set", "lo", "up"][..],
            &[
                "-n", n, "link", "add", "v0", "type", "veth", "peer", "name", "v1",
            ],
            &["-n", n, "addr", "add", "10.231.0.1/24", "dev", "v0"],
            &["-n", n, "addr", "add", "10.231.0.2/24", "dev", "v1"],
            &["-n", n, "link", "set", "v0", "up"],
            &["-n", n, "link", "set", "v1", "up"],
        ] {
            assert!(ip(args), "ip {args:?} failed");
        }
        ns
    }

    /// `sluice ARGS` run inside the namespace.
    fn sluice(&self, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.0, env!("CARGO_BIN_EXE_sluice")])
            .args(args);
        c
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

/// A testnet killed outright runs no destructor; its nodes must still stop
/// (they get Ctrl-C from the kernel when it dies) rather than seed on as
/// orphans.
#[test]
#[cfg(target_os = "linux")]
fn a_killed_testnet_leaves_no_node_behind() {
    let dir = tempfile::tempdir().unwrap();
    let mut testnet = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args([
            "testnet",
            "--processes",
            "--nodes",
            "3",
            "--size",
            "1MiB",
            "--keep-running",
            "-q",
        ])
        .current_dir(dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pid = testnet.id();
    // The DHT node and the three nodes.
    let nodes = eventually("the testnet's node processes", || {
        let nodes = children(pid);
        (nodes.len() >= 4).then_some(nodes)
    });
    // Should this test fail, its nodes do not outlive it.
    let _reaper = KillOnDrop(nodes.clone());
    testnet.kill().unwrap();
    testnet.wait().unwrap();
    eventually("every node to exit after the testnet was killed", || {
        nodes.iter().all(|&p| !running(p)).then_some(())
    });
}

/// SIGKILLs these processes when dropped.
#[cfg(target_os = "linux")]
struct KillOnDrop(Vec<u32>);

#[cfg(target_os = "linux")]
impl Drop for KillOnDrop {
    fn drop(&mut self) {
        for pid in &self.0 {
            if running(*pid) {
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
            }
        }
    }
}

/// A process's parent and state, from `/proc/PID/stat`.
#[cfg(target_os = "linux")]
fn parent_and_state(pid: u32) -> Option<(u32, String)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) state ppid …"; comm may hold spaces and parentheses.
    let mut rest = stat.rsplit_once(')')?.1.split_whitespace();
    let state = rest.next()?.to_owned();
    Some((rest.next()?.parse().ok()?, state))
}

/// The live processes whose parent is `pid`.
#[cfg(target_os = "linux")]
fn children(pid: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&p| parent_and_state(p).is_some_and(|(parent, _)| parent == pid))
        .filter(|&p| running(p))
        .collect()
}

/// Whether `pid` still runs: gone, or a zombie nobody reaped, has exited.
#[cfg(target_os = "linux")]
fn running(pid: u32) -> bool {
    parent_and_state(pid).is_some_and(|(_, state)| state != "Z")
}

/// Runs `command` to its end, killing it after a minute.
fn output_within_a_minute(mut command: Command, cwd: &Path) -> Output {
    let child = command
        .current_dir(cwd)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let id = child.id();
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(std::time::Duration::from_secs(60)) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            let _ = Command::new("kill").args(["-9", &id.to_string()]).output();
            // What it said before it was killed.
            let said = rx
                .recv_timeout(std::time::Duration::from_secs(5))
                .ok()
                .and_then(Result::ok)
                .map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
                .unwrap_or_default();
            panic!("{command:?} did not finish within a minute; its stderr:\n{said}");
        }
    }
}

#[test]
#[cfg_attr(
    sluice_no_namespaces,
    ignore = "needs network namespaces (root, iproute2, unshare)"
)]
fn mdns_finds_a_seeder_on_the_local_network_with_no_flags() {
    let ns = Netns::create();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("song.flac"), content(1_500_000)).unwrap();
    let seeder = spawn_command(ns.sluice(&["seed", "song.flac", "--data-dir", "seedd"]), d);
    let info_hash = line_starting(&seeder.lines, "info-hash:");
    line_starting(&seeder.lines, "seeding");
    // Only the info-hash: no --peer, no --bootstrap, no hint.
    let o = output_within_a_minute(
        ns.sluice(&["get", &info_hash, "-o", "dl", "--data-dir", "getd"]),
        d,
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(
        std::fs::read(d.join("dl/song.flac")).unwrap(),
        std::fs::read(d.join("song.flac")).unwrap()
    );
    drop(seeder);
}

/// Checks that this process may make a mount namespace with a tmpfs in
/// it at `at` (the test is ignored where the build script found it
/// cannot).
fn check_tmpfs_mount(at: &Path) {
    let ok = Command::new("unshare")
        .args([
            "-m",
            "--propagation",
            "private",
            "mount",
            "-t",
            "tmpfs",
            "-o",
            "size=1m",
            "probe",
        ])
        .arg(at)
        .output()
        .is_ok_and(|o| o.status.success());
    // The build script found namespaces possible (else this test is
    // ignored), so failing here is a failure, not a skip.
    assert!(
        ok,
        "cannot mount a tmpfs in a mount namespace (`unshare -m`)"
    );
}

#[test]
#[cfg_attr(
    sluice_no_namespaces,
    ignore = "needs a mount namespace (root, unshare)"
)]
fn a_full_disk_pauses_the_download_until_there_is_room() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir(d.join("dl")).unwrap();
    check_tmpfs_mount(&d.join("dl"));
    std::fs::write(d.join("big.bin"), content(3_000_000)).unwrap();
    let seeder = local_seeder("big.bin", &[], d);
    let torrent = line_starting(&seeder.lines, "torrent:");
    let peer = line_starting(&seeder.lines, "peer:");
    // The download goes to a 1 MiB tmpfs that only the leecher sees (a
    // mount namespace of its own); its data dir stays outside it.
    let script = format!(
        "mount -t tmpfs -o size=1m sluice-test dl && exec {} get {torrent} -o dl --data-dir getd --no-mdns \
         --listen /ip4/127.0.0.1/tcp/0 --peer {peer} --seed-after",
        env!("CARGO_BIN_EXE_sluice")
    );
    let mut command = Command::new("unshare");
    command.args(["-m", "--propagation", "private", "sh", "-c", &script]);
    let leecher = spawn_command(command, d);
    let pid = leecher._child.0.id().to_string();

    let status = |d: &Path| -> Option<Value> {
        let o = sluice(&["status", "--data-dir", "getd", "--json"], d);
        let v: Value = serde_json::from_slice(&o.stdout).ok()?;
        v.get(0).cloned()
    };
    let full = eventually("the disk error in status", || {
        status(d).filter(|t| {
            t["disk_error"]
                .as_str()
                .is_some_and(|e| e.contains("No space left"))
        })
    });
    let kept = full["verified_pieces"].as_u64().unwrap();
    assert!(kept > 0 && full["complete"] == false, "{full}");
    // More room, in the leecher's namespace: the same process carries on.
    let grown = Command::new("nsenter")
        .args([
            "-t",
            &pid,
            "-m",
            "mount",
            "-o",
            "remount,size=16m",
            "sluice-test",
        ])
        .arg(d.join("dl"))
        .status()
        .unwrap();
    assert!(grown.success());
    let done = eventually("completion", || status(d).filter(|t| t["complete"] == true));
    assert!(done["disk_error"].is_null(), "{done}");
    assert!(done["pieces_at_start"].as_u64() == Some(0));
    let copy = Command::new("nsenter")
        .args(["-t", &pid, "-m", "cat"])
        .arg(d.join("dl/big.bin"))
        .output()
        .unwrap();
    assert!(
        copy.stdout == std::fs::read(d.join("big.bin")).unwrap(),
        "content differs"
    );
    // Ctrl-C: a clean exit.
    Command::new("kill").args(["-INT", &pid]).status().unwrap();
    let mut child = leecher._child;
    let code = eventually("the leecher to exit", || child.0.try_wait().unwrap());
    assert_eq!(code.code(), Some(0));
    drop(seeder);
}

/// SIGTERM (what `kill`, systemd and Docker send) stops `sluice get` as
/// Ctrl-C does: exit 130, the `api` file gone, every verified piece still
/// there on restart. And `sluice get -v` whose stdout and stderr are a
/// pipe nobody reads any more (`… 2>&1 | head`) neither panics nor hangs:
/// the download completes.
#[test]
fn sigterm_stops_cleanly_and_a_closed_pipe_does_not_stop_a_download() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (_seeder, torrent, peer) = slow_seeder(d);
    let local = ["--no-mdns", "--no-upnp", "--listen", "/ip4/127.0.0.1/tcp/0"];
    let get_args = |data: &'static str, out: &'static str| {
        let mut a: Vec<String> = [
            "get",
            &torrent,
            "-o",
            out,
            "--data-dir",
            data,
            "--peer",
            &peer,
        ]
        .map(str::to_owned)
        .to_vec();
        a.extend(local.map(str::to_owned));
        a
    };
    let status = |data: &str| -> Option<Value> {
        let o = sluice(&["status", "--data-dir", data, "--json"], d);
        let v: Value = serde_json::from_slice(&o.stdout).ok()?;
        v.get(0).cloned()
    };

    let mut leecher = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(get_args("getd", "dl"))
        .current_dir(d)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let before = eventually("progress before SIGTERM", || {
        let t = status("getd")?;
        let v = t["verified_pieces"].as_u64()?;
        (v >= t["total_pieces"].as_u64()? / 4).then_some(v)
    });
    // SAFETY: kill(2) on our own child, not yet reaped.
    #[allow(unsafe_code)]
    unsafe {
        libc::kill(leecher.id() as libc::pid_t, libc::SIGTERM);
    }
    let code = eventually("the leecher to stop", || leecher.try_wait().unwrap());
    assert_eq!(code.code(), Some(130), "{code:?}");
    assert!(!d.join("getd/api").exists(), "SIGTERM left the api file");
    let _again = spawn(
        &get_args("getd", "dl")
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
        d,
    );
    let start = eventually("the restart", || {
        status("getd")?["pieces_at_start"].as_u64()
    });
    assert!(
        start >= before,
        "{before} pieces verified before SIGTERM, {start} after"
    );

    // Both output streams into a pipe whose reader is gone.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let mut args = get_args("getd2", "dl2");
    args.push("-v".into());
    let mut piped = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(&args)
        .current_dir(d)
        .stdout(writer.try_clone().unwrap())
        .stderr(writer)
        .spawn()
        .unwrap();
    let code = eventually("the download with its output closed", || {
        piped.try_wait().unwrap()
    });
    assert!(code.success(), "{code:?}");
    assert_eq!(
        std::fs::read(d.join("dl2/share/a.bin")).unwrap(),
        std::fs::read(d.join("share/a.bin")).unwrap()
    );
}

#[test]
fn completions_and_man_page() {
    let dir = tempfile::tempdir().unwrap();
    for shell in ["bash", "zsh", "fish"] {
        let o = sluice(&["completions", shell], dir.path());
        assert!(o.status.success(), "{shell}: {}", stderr(&o));
        let script = stdout(&o);
        assert!(
            script.contains("daemon") && script.contains("bt-listen"),
            "{shell}"
        );
    }
    let o = sluice(&["completions", "tcsh"], dir.path());
    assert_eq!(o.status.code(), Some(2));
    let o = sluice(&["man"], dir.path());
    assert!(o.status.success());
    let page = stdout(&o);
    assert!(
        page.contains(".TH sluice 1") && page.contains("testnet"),
        "{page}"
    );
}

/// With nobody to download from, `get --timeout` gives up with exit code 1
/// (a `.torrent` and a bare info-hash alike), saying so.
#[test]
fn get_with_no_peer_gives_up_after_its_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("f"), content(100_000)).unwrap();
    let o = sluice(&["create", "f", "-o", "f.torrent"], d);
    assert!(o.status.success(), "{}", stderr(&o));
    let local = [
        "--no-mdns",
        "--no-upnp",
        "--listen",
        "/ip4/127.0.0.1/tcp/0",
        "--timeout",
        "1.5",
    ];
    for source in ["f.torrent", &"ab".repeat(32)] {
        let mut args = vec!["get", source, "-o", "dl", "--data-dir", "gd"];
        args.extend(local);
        let o = sluice(&args, d);
        assert_eq!(o.status.code(), Some(1), "{source}: {}", stderr(&o));
        assert!(stderr(&o).contains("gave up"), "{source}: {}", stderr(&o));
    }
}

/// `seed PATH` hashes PATH once: a restart with the files unchanged reuses
/// the torrent without hashing, and a changed file makes a new one.
#[test]
fn seed_hashes_once_until_the_files_change() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir(d.join("share")).unwrap();
    std::fs::write(d.join("share/a.bin"), content(500_000)).unwrap();
    let mut args = vec!["seed", "share", "--data-dir", "seedd"];
    args.extend(["--no-mdns", "--no-upnp", "--listen", "/ip4/127.0.0.1/tcp/0"]);
    let torrent_line = || {
        let seeder = spawn(&args, d);
        let line = line_starting(&seeder.lines, "torrent:");
        let ih = line_starting(&seeder.lines, "info-hash:");
        // Killed when dropped: the torrent and index are written before it runs.
        (line, ih)
    };
    let (first, ih1) = torrent_line();
    assert!(!first.contains("not hashed again"), "{first}");
    let (second, ih2) = torrent_line();
    assert!(second.contains("not hashed again"), "{second}");
    assert_eq!(ih1, ih2);
    std::fs::write(d.join("share/a.bin"), content(500_001)).unwrap();
    let (third, ih3) = torrent_line();
    assert!(!third.contains("not hashed again"), "{third}");
    assert_ne!(ih1, ih3);
}

/// A config file sets the flags' defaults (here the data dir `status`
/// looks in); a flag still wins; an unknown key is refused by name.
#[test]
fn a_config_file_sets_defaults_and_flags_win() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("c.toml"), "data_dir = \"from-config\"\nslots = 6\n").unwrap();
    let o = sluice(&["--config", "c.toml", "status"], d);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("from-config"), "{}", stderr(&o));
    let o = sluice(
        &["--config", "c.toml", "status", "--data-dir", "from-flag"],
        d,
    );
    assert!(stderr(&o).contains("from-flag"), "{}", stderr(&o));
    let o = sluice(&["--config", "c.toml", "config"], d);
    assert!(o.status.success());
    assert!(stdout(&o).contains("slots = 6"), "{}", stdout(&o));
    std::fs::write(d.join("bad.toml"), "slotz = 6\n").unwrap();
    let o = sluice(&["--config", "bad.toml", "config"], d);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("unknown field `slotz`"),
        "{}",
        stderr(&o)
    );
    let o = sluice(&["--config", "missing.toml", "config"], d);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("missing.toml"), "{}", stderr(&o));
}

/// Two one-shot commands with no `--data-dir`: the second (here a `get`
/// beside a running `seed`) finds the default data dir taken, keeps its
/// state in a free `instances/N` beside it and says so, and downloads.
#[test]
fn a_second_one_shot_node_with_the_default_data_dir_runs_beside_the_first() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("film.mkv"), content(700_000)).unwrap();
    let home = d.join("share");
    // No --data-dir: both take SLUICE_DATA_DIR's.
    let one_shot = |args: &[&str]| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_sluice"));
        c.args(args)
            .args(["--no-mdns", "--no-upnp", "--listen", "/ip4/127.0.0.1/tcp/0"])
            .env("SLUICE_DATA_DIR", &home);
        c
    };
    let seeder = spawn_command(one_shot(&["seed", "film.mkv"]), d);
    let magnet = line_starting(&seeder.lines, "magnet:");
    line_starting(&seeder.lines, "seeding");
    let get = one_shot(&["get", &magnet, "-o", "dl"]);
    let o = output_within_a_minute(get, d);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("instances/1"),
        "no word of the data dir it took: {}",
        stderr(&o)
    );
    assert!(home.join("instances/1/identity.key").exists());
    assert_eq!(
        std::fs::read(d.join("dl/film.mkv")).unwrap(),
        std::fs::read(d.join("film.mkv")).unwrap()
    );
    drop(seeder);
}

/// A data dir another node runs in is left alone: a second `seed` there
/// says it is in use, and writes no seeds index or resume file into it.
#[test]
fn a_seed_into_a_data_dir_in_use_writes_nothing_there() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("one.bin"), content(300_000)).unwrap();
    std::fs::write(d.join("two.bin"), content(400_000)).unwrap();
    let first = local_seeder("one.bin", &[], d);
    line_starting(&first.lines, "seeding");
    let seeds = std::fs::read(d.join("seedd/seeds.json")).unwrap();
    let resumes = || std::fs::read_dir(d.join("seedd/resume")).unwrap().count();
    let before = resumes();
    let o = sluice(
        &[
            "seed",
            "two.bin",
            "--data-dir",
            "seedd",
            "--no-mdns",
            "--no-upnp",
        ],
        d,
    );
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("in use"), "{}", stderr(&o));
    assert_eq!(std::fs::read(d.join("seedd/seeds.json")).unwrap(), seeds);
    assert_eq!(resumes(), before, "a resume file written into a dir in use");
    drop(first);
}

/// A `--peer` that is not up when `get` starts is tried again until it
/// is: the seeder comes up later at the address given, and the download
/// completes.
#[test]
fn a_peer_that_comes_up_later_is_tried_again() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("late.bin"), content(600_000)).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("/ip4/127.0.0.1/tcp/{port}");
    let seed_args = [
        "seed",
        "late.bin",
        "--data-dir",
        "seedd",
        "--no-mdns",
        "--no-upnp",
        "--no-bt",
        "--listen",
        &listen,
    ];
    // Its identity (kept in seedd) and info-hash, then it stops.
    let first = spawn(&seed_args, d);
    let info_hash = line_starting(&first.lines, "info-hash:");
    let peer = line_starting(&first.lines, "peer:");
    line_starting(&first.lines, "seeding");
    drop(first);

    let mut get = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args([
            "get",
            &info_hash,
            "--peer",
            &peer,
            "-o",
            "dl",
            "--data-dir",
            "getd",
            "--no-mdns",
            "--no-upnp",
            "--no-bt",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
        ])
        .current_dir(d)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The reader never stops draining get's stderr (lines past what the
    // channel holds are dropped), so get never blocks writing to it.
    let (tx, said) = std::sync::mpsc::sync_channel(1024);
    let stderr = get.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if let Err(std::sync::mpsc::TrySendError::Disconnected(_)) = tx.try_send(line) {
                break;
            }
        }
    });
    let mut get = Seeder(get);
    // Its first dial failed.
    eventually("the failed first dial", || {
        said.try_recv()
            .ok()
            .filter(|l: &String| l.contains("trying again"))
    });
    let _second = spawn(&seed_args, d);
    let status = eventually("the download", || get.0.try_wait().unwrap());
    assert!(status.success(), "{status:?}");
    assert_eq!(
        std::fs::read(d.join("dl/late.bin")).unwrap(),
        std::fs::read(d.join("late.bin")).unwrap()
    );
}
