//! `sluice daemon` driven from the CLI: a torrent added by magnet link
//! downloads from a seeder, pauses, survives a restart (SIGTERM) paused,
//! resumes complete without downloading again, and is removed with its
//! data. Changes without the daemon's token, or with a foreign `Host`,
//! are refused.

#![allow(clippy::unwrap_used, reason = "test helpers")]

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

mod common;

use common::{LOCAL, Running, WAIT, eventually};

fn sluice(args: &[&str], cwd: &Path) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_sluice"));
    c.args(args).current_dir(cwd).stdin(Stdio::null());
    let mut child = c
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + WAIT;
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "sluice {args:?} did not finish");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

fn daemon(d: &Path) -> Running {
    let mut args = vec!["daemon", "--data-dir", "dd"];
    args.extend(LOCAL);
    let daemon = Running::spawn(&args, d);
    daemon.line("daemon:");
    daemon
}

/// The daemon's one torrent, as `sluice list --json` shows it.
fn listed(d: &Path) -> Option<Value> {
    let o = sluice(&["list", "--data-dir", "dd", "--json"], d);
    let v: Value = serde_json::from_slice(&o.stdout).ok()?;
    v.get(0).cloned()
}

/// `sluice add SOURCE -o dl` to the daemon in `dd`; the info-hash.
fn add(d: &Path, source: &str) -> String {
    let out = sluice(&["add", source, "-o", "dl", "--data-dir", "dd"], d);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let added = String::from_utf8_lossy(&out.stdout);
    added.trim().strip_prefix("added ").unwrap().to_owned()
}

/// A raw HTTP request to the API; the status code.
fn raw(api: &str, request: &str) -> u16 {
    let mut s = std::net::TcpStream::connect(api).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    answer
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

#[test]
fn a_daemon_adds_pauses_restarts_resumes_and_removes() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir_all(d.join("share")).unwrap();
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(d.join("share/a.bin"), &data).unwrap();
    let mut seed_args = vec!["seed", "share", "--data-dir", "seedd"];
    seed_args.extend(LOCAL);
    let seeder = Running::spawn(&seed_args, d);
    let magnet = seeder.line("magnet:");

    let first = daemon(d);
    // Added paused, it is listed paused and asks nobody; resumed, it
    // fetches its metadata and downloads.
    let out = sluice(
        &["add", &magnet, "-o", "dl", "--paused", "--data-dir", "dd"],
        d,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(listed(d).unwrap()["state"], "paused");
    let ih = listed(d).unwrap()["info_hash"].as_str().unwrap().to_owned();
    let out = sluice(&["resume", &ih, "--data-dir", "dd"], d);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eventually("the download", || {
        listed(d).filter(|t| t["complete"] == true)
    });
    assert!(std::fs::read(d.join("dl/share/a.bin")).unwrap() == data);

    // Changes need the token, and the API's own Host.
    let api = std::fs::read_to_string(d.join("dd/api")).unwrap();
    let api = api.trim();
    let pause = |host: &str, token: &str| {
        raw(
            api,
            &format!(
                "POST /api/v1/torrents/{ih}/pause HTTP/1.1\r\nHost: {host}\r\n{token}Content-Length: 0\r\nConnection: close\r\n\r\n"
            ),
        )
    };
    assert_eq!(pause(api, ""), 401, "no token");
    assert_eq!(
        pause(api, "Authorization: Bearer nope\r\n"),
        401,
        "wrong token"
    );
    let token = std::fs::read_to_string(d.join("dd/token")).unwrap();
    let bearer = format!("Authorization: Bearer {}\r\n", token.trim());
    assert_eq!(pause("evil.example", &bearer), 421, "DNS rebinding");
    assert_eq!(listed(d).unwrap()["state"], "running");

    // By the first hex digits `list` shows.
    let out = sluice(&["pause", &ih[..12], "--data-dir", "dd"], d);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(listed(d).unwrap()["state"], "paused");

    // Node-wide limits, changed while it runs.
    let limit = |args: &[&str]| {
        let mut all = vec!["limit", "--data-dir", "dd"];
        all.extend_from_slice(args);
        let out = sluice(&all, d);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    assert_eq!(limit(&[]), "up unlimited  down unlimited  slots default");
    let set = limit(&["--up-rate", "2MiB/s", "--slots", "3"]);
    assert_eq!(set, "up 2.00 MiB/s  down unlimited  slots 3");
    // And the torrent's own, under them.
    let own = limit(&[&ih[..12], "--down-rate", "1MiB/s", "--slots", "2"]);
    assert_eq!(own, "up unlimited  down 1.00 MiB/s  slots 2");
    let out = sluice(&["limit", "--data-dir", "dd", &ih, "--slots", "0"], d);
    assert_eq!(out.status.code(), Some(2), "zero slots taken");

    // A restart keeps it, paused, and the limits; the api file goes with
    // the daemon.
    assert!(first.terminate().success());
    assert!(
        !d.join("dd/api").exists(),
        "a stopped daemon left its api file"
    );
    drop(seeder);
    let _second = daemon(d);
    assert_eq!(listed(d).unwrap()["state"], "paused");
    assert_eq!(limit(&[]), set, "the limits after a restart");
    assert_eq!(limit(&[&ih]), own, "the torrent's limits after a restart");
    assert_eq!(listed(d).unwrap()["limits"]["slots"], 2);
    assert_eq!(
        limit(&["--up-rate", "none", "--slots", "default"]),
        "up unlimited  down unlimited  slots default"
    );
    assert_eq!(
        limit(&[&ih, "--down-rate", "none"]),
        "up unlimited  down unlimited  slots 2"
    );
    let out = sluice(&["resume", &ih, "--data-dir", "dd"], d);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Complete again from its resume file, with the seeder gone.
    eventually("the resumed torrent", || {
        listed(d).filter(|t| t["state"] == "running" && t["complete"] == true)
    });

    // --delete-data takes the torrent's files, not a file of the user's
    // that sits beside them.
    std::fs::write(d.join("dl/share/mine.txt"), b"not the torrent's").unwrap();
    let out = sluice(&["remove", &ih, "--delete-data", "--data-dir", "dd"], d);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(listed(d).is_none(), "still listed");
    assert!(
        !d.join("dl/share/a.bin").exists(),
        "its data is still there"
    );
    assert!(
        d.join("dl/share/mine.txt").exists(),
        "a file not of the torrent went too"
    );
    let out = sluice(&["pause", &ih, "--data-dir", "dd"], d);
    assert_eq!(out.status.code(), Some(2), "pausing what is gone");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no torrent"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A daemon keeps the ports it chose at its first start (stable magnet
/// hints, DHT records and port forwards).
#[test]
fn a_daemon_keeps_its_ports_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ports = || {
        let daemon = Running::spawn(&["daemon", "--data-dir", "dd", "--no-mdns", "--no-upnp"], d);
        // The IPv4 TCP address (IPv6 ones may come first).
        let peer = loop {
            let p = daemon.line("peer:");
            if p.starts_with("/ip4/") && p.contains("/tcp/") {
                break p;
            }
        };
        let bt = daemon.line("bittorrent:");
        daemon.line("daemon:");
        assert!(daemon.terminate().success());
        let tcp = peer.split('/').nth(4).unwrap().to_owned();
        let bt = bt.rsplit(':').next().unwrap().to_owned();
        (tcp, bt)
    };
    let first = ports();
    assert_ne!(first.0, "0");
    assert_eq!(ports(), first, "the ports changed across a restart");
}

/// `sluice recheck` hashes a torrent's data again: a piece damaged on the
/// disk behind the daemon's back is found and no longer counted.
#[test]
fn a_recheck_finds_data_damaged_behind_the_daemons_back() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir_all(d.join("dl")).unwrap();
    let data: Vec<u8> = (0..2_000_000u32).map(|i| (i * 13 % 251) as u8).collect();
    std::fs::write(d.join("dl/b.bin"), &data).unwrap();
    let out = sluice(
        &[
            "create",
            "dl/b.bin",
            "-o",
            "b.torrent",
            "--piece-size",
            "256KiB",
        ],
        d,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _daemon = daemon(d);
    let ih = add(d, "b.torrent");
    // Its data was there: checked at the add, complete.
    eventually("the check at the add", || {
        listed(d).filter(|t| t["complete"] == true)
    });

    // One byte of the fourth piece changes on the disk.
    let mut damaged = data.clone();
    damaged[3 * 262_144 + 5] ^= 0xff;
    std::fs::write(d.join("dl/b.bin"), &damaged).unwrap();
    let out = sluice(&["recheck", &ih[..10], "--data-dir", "dd"], d);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let t = eventually("the recheck", || {
        listed(d).filter(|t| t["state"] == "running" && t["complete"] == false)
    });
    let pieces = 2_000_000f64 / 262_144f64;
    let expected = (pieces.ceil() - 1.0) / pieces.ceil();
    let progress = t["progress"].as_f64().unwrap();
    assert!(
        (progress - expected).abs() < 1e-9,
        "progress {progress} after the recheck, not {expected}"
    );
}
