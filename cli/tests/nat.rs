//! Reachability on real kernel networking: nodes in network namespaces,
//! two of them behind NAT routers of their own (iptables masquerade, no
//! inbound), and one public node that is DHT bootstrap and relay.
//!
//! The NATed leecher finds the NATed seeder through the DHT by info-hash,
//! reaches it through the relay, and the two punch a hole: the pieces
//! travel over the direct connection, and what crossed the relay stays
//! under the relay's per-circuit cap.

#![cfg(not(sluice_no_nat))]
#![allow(
    clippy::unwrap_used,
    clippy::print_stderr,
    reason = "test helpers; failures print the nodes' logs"
)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;
use sluice_testnet::netns::{Host, Internet};

use common::Running;

/// Bytes a circuit may carry at the relay (`--relay-circuit-bytes`).
const CAP: u64 = 1 << 20;

fn content(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 13 + i / 509) as u8).collect()
}

/// Node logs, printed when the test fails.
struct Logs(Vec<PathBuf>);

impl Drop for Logs {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for log in &self.0 {
                let text = std::fs::read_to_string(log).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(60).collect();
                eprintln!("--- {} (last lines)", log.display());
                for line in tail.into_iter().rev() {
                    eprintln!("{line}");
                }
            }
        }
    }
}

/// `sluice ARGS` in `host`'s namespace, logging to `DIR/NAME.log`.
fn sluice(host: &Host, d: &Path, name: &str, args: &[&str], logs: &mut Logs) -> Command {
    let log = d.join(format!("{name}.log"));
    logs.0.push(log.clone());
    let mut c = host.command(env!("CARGO_BIN_EXE_sluice"));
    c.args(args)
        .current_dir(d)
        .env(
            "RUST_LOG",
            "info,sluice_node=debug,libp2p_dcutr=debug,libp2p_relay=debug,libp2p_autonat=debug",
        )
        .stderr(Stdio::from(std::fs::File::create(log).unwrap()));
    c
}

/// The JSON a `sluice` command prints, run in `host`'s namespace.
fn json(host: &Host, args: &[&str], d: &Path) -> Value {
    let o = host
        .command(env!("CARGO_BIN_EXE_sluice"))
        .args(args)
        .current_dir(d)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap()
}

/// How `host`'s node (data dir `dir`) reaches its peers: each one's path.
fn paths_of(host: &Host, dir: &str, d: &Path) -> (Vec<String>, Value) {
    let peers = json(host, &["peers", "--json", "--data-dir", dir], d);
    let paths = peers[0]["peers"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["path"].as_str().map(str::to_owned))
        .collect();
    (paths, peers)
}

/// `host`'s node (data dir `dir`) as `sluice status --node` shows it,
/// once `ready` holds (within a minute).
fn node_once(
    host: &Host,
    dir: &str,
    d: &Path,
    what: &str,
    ready: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = std::time::Instant::now() + common::WAIT;
    loop {
        let node = json(host, &["status", "--node", "--json", "--data-dir", dir], d);
        if ready(&node) {
            return node;
        }
        assert!(std::time::Instant::now() < deadline, "never {what}: {node}");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

const LISTEN: [&str; 4] = [
    "--listen",
    "/ip4/0.0.0.0/tcp/4001",
    "--listen",
    "/ip4/0.0.0.0/udp/4001/quic-v1",
];

#[test]
fn two_nodes_behind_nat_meet_through_a_relay_and_trade_pieces_directly() {
    let mut net = Internet::new().unwrap();
    let relay = net.public_host("relay").unwrap();
    let seeder = net.home_host("seeder", false).unwrap();
    let leecher = net.home_host("leecher", false).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut logs = Logs(Vec::new());
    // Four times what a circuit may carry: it cannot have come that way.
    let file = content(4 * CAP as usize);
    std::fs::write(d.join("film.mkv"), &file).unwrap();

    let cap = CAP.to_string();
    let r = Running::spawn_command(
        sluice(
            &relay,
            d,
            "relay",
            &[
                &[
                    "node",
                    "--data-dir",
                    "relayd",
                    "--no-mdns",
                    "--relay-circuit-bytes",
                    &cap,
                ][..],
                &LISTEN,
            ]
            .concat(),
            &mut logs,
        ),
        d,
    );
    let public = format!("/ip4/{}/", relay.ip);
    let boot = (0..8)
        .map(|_| r.line("peer:"))
        .find(|a| a.starts_with(&public))
        .expect("the relay listens on its public address");
    let boot = boot.as_str();

    let common = [
        "--no-mdns",
        "--bootstrap",
        boot,
        "--discovery-interval",
        "1",
        "--no-bt",
    ];
    let s = Running::spawn_command(
        sluice(
            &seeder,
            d,
            "seeder",
            &[
                &["seed", "film.mkv", "--data-dir", "seedd", "--relay", boot][..],
                &common,
                &LISTEN,
            ]
            .concat(),
            &mut logs,
        ),
        d,
    );
    let info_hash = s.line("info-hash:");
    let magnet = s.line("magnet:");
    // Hints others can dial: the relayed address, nothing private.
    let hints: Vec<&str> = magnet
        .split('&')
        .filter_map(|kv| kv.strip_prefix("x.pe="))
        .collect();
    assert!(!hints.is_empty(), "no hints in {magnet}");
    for h in &hints {
        let h = h.replace("%2F", "/");
        assert!(h.contains("p2p-circuit"), "a hint that is not relayed: {h}");
        assert!(
            !h.contains("/10.") && !h.contains("/127."),
            "a private hint: {h}"
        );
    }

    // The leecher: an info-hash and the bootstrap node, nothing else.
    let g = Running::spawn_command(
        sluice(
            &leecher,
            d,
            "leecher",
            &[
                &[
                    "get",
                    &info_hash,
                    "-o",
                    "dl",
                    "--data-dir",
                    "getd",
                    "--seed-after",
                    "--timeout",
                    "50",
                ][..],
                &common,
                &LISTEN,
            ]
            .concat(),
            &mut logs,
        ),
        d,
    );
    g.line("seeding");
    assert!(
        std::fs::read(d.join("dl/film.mkv")).unwrap() == file,
        "the downloaded file differs"
    );

    // How the leecher reached the seeder, from its own API.
    let (paths, _) = paths_of(&leecher, "getd", d);
    let node = node_once(&leecher, "getd", d, "read", |_| true);
    assert!(
        paths.iter().any(|p| p == "hole-punched"),
        "the seeder is not on a hole-punched connection: {paths:?}; node: {node}"
    );
    assert!(
        node["hole_punch_successes"].as_u64().unwrap() >= 1,
        "{node}"
    );
    let relayed = node["relayed_bytes_received"].as_u64().unwrap();
    assert!(relayed > 0, "nothing came through the relay: {node}");
    assert!(
        relayed < CAP,
        "{relayed} bytes came through the relay: {node}"
    );
    // AutoNAT: the relay failed to dial the leecher back.
    node_once(&leecher, "getd", d, "private", |n| {
        n["reachability"] == "private"
    });
    drop((g, s, r));
    drop(net);
}

/// `sluice testnet --netns`: every node a process in a namespace of its
/// own, three behind NAT; all complete, the report says how they were
/// reached, and no namespace is left behind.
#[test]
fn a_testnet_in_namespaces_with_nodes_behind_nat_completes_and_cleans_up() {
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("report");
    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args([
            "testnet",
            "--netns",
            "--nodes",
            "6",
            "--nat",
            "3",
            "--size",
            "12MiB",
            "--timeout",
            "120",
            "--report",
        ])
        .arg(&report)
        .stdout(Stdio::null())
        .stderr(Stdio::from(
            std::fs::File::create(dir.path().join("testnet.log")).unwrap(),
        ))
        .spawn()
        .unwrap();
    let pid = child.id();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(180);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            // Ctrl-C first: the testnet removes its namespaces on the
            // way out (a kill would leave them to the next run's sweep).
            // SAFETY: kill(2) on our own child, not yet reaped.
            #[allow(unsafe_code)]
            unsafe {
                libc::kill(pid as libc::pid_t, libc::SIGINT);
            }
            let stopping = std::time::Instant::now();
            while child.try_wait().unwrap().is_none() && stopping.elapsed().as_secs() < 30 {
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            let _ = child.kill();
            panic!("the testnet did not finish within 3 minutes");
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let err = std::fs::read_to_string(dir.path().join("testnet.log")).unwrap();
    assert!(status.success(), "{status}: {err}");

    let r: Value =
        serde_json::from_str(&std::fs::read_to_string(report.join("report.json")).unwrap())
            .unwrap();
    assert_eq!(r["timed_out"], false);
    assert_eq!(r["netns"]["nat_nodes"], 3, "{}", r["netns"]);
    let nodes = r["nodes"].as_array().unwrap();
    let natted: Vec<&Value> = nodes
        .iter()
        .filter(|n| n["reach"]["behind_nat"] == true)
        .collect();
    assert_eq!(natted.len(), 3);
    for n in &natted {
        // Everything a NATed node got came over connections it dialed or
        // that were punched for it; none over a relay.
        assert_eq!(n["reach"]["downloaded_relayed"], 0, "{n}");
        if n["role"] != "seeder" {
            assert!(n["completed_at"].is_number(), "{n}");
        }
    }
    // The two NATed nodes met through the relay and punched a hole.
    assert!(
        r["netns"]["first_hole_punch_seconds"].is_number(),
        "no hole punch between the NATed nodes: {}",
        r["netns"]
    );
    let md = std::fs::read_to_string(report.join("report.md")).unwrap();
    assert!(md.contains("behind NAT routers"), "{md}");

    let left = Command::new("ip").args(["netns", "list"]).output().unwrap();
    let left = String::from_utf8_lossy(&left.stdout);
    assert!(
        !left.contains(&format!("{}{pid}-", sluice_testnet::netns::PREFIX)),
        "namespaces left behind:\n{left}"
    );
}

/// A node behind a router with a real UPnP gateway (miniupnpd) asks it to
/// forward its port, takes the mapped address as its own, and a peer that
/// dials that address reaches it directly: no relay, no hole punching.
#[test]
fn a_node_behind_a_upnp_router_is_reached_at_its_mapped_port() {
    let mut net = Internet::new().unwrap();
    let seeder = net.home_host("seeder", true).unwrap();
    let leecher = net.public_host("leecher").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut logs = Logs(Vec::new());
    let file = content(3_000_000);
    std::fs::write(d.join("film.mkv"), &file).unwrap();
    let tcp = ["--listen", "/ip4/0.0.0.0/tcp/4001", "--no-mdns", "--no-bt"];
    let s = Running::spawn_command(
        sluice(
            &seeder,
            d,
            "seeder",
            &[&["seed", "film.mkv", "--data-dir", "seedd"][..], &tcp].concat(),
            &mut logs,
        ),
        d,
    );
    let info_hash = s.line("info-hash:");
    let id = s.line("peer:").rsplit('/').next().unwrap().to_owned();
    // The mapping, as the seeder itself reports it.
    let mapped = format!("/ip4/{}/tcp/4001", seeder.public_ip);
    let node = node_once(&seeder, "seedd", d, "mapped (UPnP)", |n| {
        n["external_addrs"].as_array().is_some_and(|a| {
            a.iter()
                .any(|a| a.as_str().is_some_and(|a| a.starts_with(&mapped)))
        })
    });
    assert_eq!(node["reachability"], "public", "{node}");
    for a in node["advertised_addrs"].as_array().unwrap() {
        let a = a.as_str().unwrap();
        assert!(
            !a.contains("/10.") && !a.contains("/127."),
            "a private hint: {a}"
        );
    }

    let peer = format!("{mapped}/p2p/{id}");
    let g = Running::spawn_command(
        sluice(
            &leecher,
            d,
            "leecher",
            &[
                &[
                    "get",
                    &info_hash,
                    "-o",
                    "dl",
                    "--data-dir",
                    "getd",
                    "--seed-after",
                    "--peer",
                    &peer,
                ][..],
                &tcp,
            ]
            .concat(),
            &mut logs,
        ),
        d,
    );
    g.line("seeding");
    assert!(
        std::fs::read(d.join("dl/film.mkv")).unwrap() == file,
        "the downloaded file differs"
    );
    // The seeder took the leecher in through the mapped port.
    let (paths, peers) = paths_of(&seeder, "seedd", d);
    assert_eq!(paths, ["upnp"], "{peers}");
    let leecher_node = json(
        &leecher,
        &["status", "--node", "--json", "--data-dir", "getd"],
        d,
    );
    assert_eq!(leecher_node["relayed_bytes_received"], 0, "{leecher_node}");
    drop((g, s));
    drop(net);
}
