//! Whole testnets on 127.0.0.1, small and fast: outcomes, not timings.

#![allow(clippy::unwrap_used, reason = "test helpers")]

use std::time::Duration;

use anyhow::Result;
use sluice_testnet::{Action, Config, Event, Report, Role, Testnet};

const MIB: u64 = 1024 * 1024;
/// Each run must end well inside this.
const WAIT: Duration = Duration::from_secs(120);

fn small() -> Config {
    Config {
        nodes: 6,
        seeders: 1,
        size: 3 * MIB + 12_345,
        piece_size: Some(64 * 1024),
        up_rate: Some(2_000_000),
        seeder_up_rate: Some(4_000_000),
        free_riders: 1,
        slow_disks: 1,
        slow_disk_rate: 1_000_000,
        disk_queue: 512 * 1024,
        rechoke: 0.5,
        timeout: 100.0,
        ..Config::default()
    }
}

async fn run(config: Config, dir: &std::path::Path) -> Result<(Testnet, Report)> {
    let mut testnet = Testnet::prepare(config, dir)?;
    let mut rounds = 0;
    let report = tokio::time::timeout(WAIT, testnet.run(|_, _| rounds += 1)).await??;
    assert!(rounds > 0, "the live view saw no sample");
    Ok((testnet, report))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_contributor_completes_with_verified_content_and_a_report() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (testnet, report) = run(small(), dir.path()).await?;
    assert!(!report.timed_out);
    let want = std::fs::read(testnet.content())?;
    for (name, _, content, _) in testnet.endpoints() {
        let n = report.nodes.iter().find(|n| n.name == name).unwrap();
        if n.role == Role::Leecher {
            assert!(n.completion_seconds.is_some(), "{name} did not complete");
            assert!(std::fs::read(&content)? == want, "{name}'s copy differs");
            let first = n.first_block_seconds.expect("a first block");
            assert!(
                first <= n.completion_seconds.unwrap(),
                "{name}: first block after completion"
            );
            assert!(n.peers_max > 0, "{name} had no peer");
        }
    }
    // What it cost: every completed download counted once.
    let completed = report
        .nodes
        .iter()
        .filter(|n| n.completion_seconds.is_some())
        .count() as u64;
    assert_eq!(report.cost.delivered_bytes, completed * report.file_size);
    assert!(report.cpu_seconds.is_some_and(|c| c > 0.0));
    assert!(report.cost.cpu_seconds_per_gib.is_some_and(|c| c > 0.0));
    assert!(report.cost.first_block_median_seconds.is_some());
    // The slow disk held its queue bound.
    let slow: Vec<_> = report
        .nodes
        .iter()
        .filter(|n| n.slow_disk_rate.is_some())
        .collect();
    assert_eq!(slow.len(), 1);
    for n in &slow {
        assert!(n.peak_disk_bytes > 0, "{} never queued anything", n.name);
        assert!(
            n.peak_disk_bytes <= n.disk_capacity_bytes,
            "{}: {} > {}",
            n.name,
            n.peak_disk_bytes,
            n.disk_capacity_bytes
        );
    }
    assert_eq!(report.totals.hash_failures, 0);
    assert!(
        report.totals.uploaded_by_peers > 0,
        "peers traded with each other"
    );

    // The report: files exist and parse.
    report.write(dir.path())?;
    let parsed: Report = serde_json::from_slice(&std::fs::read(dir.path().join("report.json"))?)?;
    assert_eq!(parsed.nodes.len(), 6);
    assert_eq!(parsed.info_hash, report.info_hash);
    assert!(parsed.bound.bound_seconds.is_some_and(|b| b > 0.0));
    let md = std::fs::read_to_string(dir.path().join("report.md"))?;
    assert!(md.starts_with("# sluice testnet report"));
    for svg in [
        "progress.svg",
        "completion_cdf.svg",
        "disk_queue.svg",
        "upload_vs_download.svg",
    ] {
        let text = std::fs::read_to_string(dir.path().join(svg))?;
        assert!(text.contains("<svg") && text.contains("</svg>"), "{svg}");
    }
    testnet.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_leaving_mid_run_do_not_stop_the_others() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let config = Config {
        free_riders: 0,
        slow_disks: 0,
        events: vec![
            // A downloading node leaves early; the seeder leaves once two
            // others hold the whole file; a late node joins.
            Event {
                at: 0.5,
                node: "peer-02".into(),
                action: Action::Leave,
            },
            Event {
                at: 0.0,
                node: "seed-1".into(),
                action: Action::LeaveAfterCopies { copies: 2 },
            },
            Event {
                at: 1.0,
                node: "peer-05".into(),
                action: Action::Join,
            },
        ],
        ..small()
    };
    let (testnet, report) = run(config, dir.path()).await?;
    assert!(!report.timed_out);
    let node = |name: &str| report.nodes.iter().find(|n| n.name == name).unwrap();
    assert!(node("peer-02").left_at.is_some());
    assert!(
        node("seed-1").left_at.is_some(),
        "the seeder left after two copies"
    );
    assert!(node("peer-05").joined_at.is_some_and(|t| t >= 1.0));
    let want = std::fs::read(testnet.content())?;
    for (name, _, content, _) in testnet.endpoints() {
        if name == "seed-1" || name == "peer-02" {
            continue;
        }
        assert!(node(&name).completion_seconds.is_some(), "{name}");
        assert!(std::fs::read(&content)? == want, "{name}'s copy differs");
    }
    testnet.shutdown().await?;
    Ok(())
}

#[test]
fn a_used_report_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("old.txt"), "x").unwrap();
    let err = Testnet::prepare(small(), dir.path()).unwrap_err();
    assert!(err.to_string().contains("not empty"), "{err}");
}

/// A soak in small: two liars (every piece claimed, garbage served) and a
/// leecher leaving and coming back every 0.7 s. Every honest copy is
/// identical, nobody bans more peers than there are liars (no honest peer
/// is banned), some liar is caught, and the churned nodes resumed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn liars_are_banned_and_churned_nodes_resume() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let config = Config {
        nodes: 10,
        liars: 2,
        churn: Some(0.7),
        free_riders: 0,
        slow_disks: 0,
        size: 4 * MIB,
        ..small()
    };
    let (testnet, report) = run(config, dir.path()).await?;
    assert!(!report.timed_out);
    let want = std::fs::read(testnet.content())?;
    for (name, _, content, _) in testnet.endpoints() {
        let n = report.nodes.iter().find(|n| n.name == name).unwrap();
        if n.role.downloads() {
            assert!(std::fs::read(&content)? == want, "{name}'s copy differs");
        }
        assert!(
            n.banned_peers <= 2,
            "{name} banned {} peers with 2 liars",
            n.banned_peers
        );
    }
    assert!(report.totals.hash_failures > 0, "the liars were heard");
    assert!(
        report.nodes.iter().any(|n| n.banned_peers > 0),
        "some liar was caught"
    );
    assert!(
        report.nodes.iter().map(|n| n.restarts).sum::<usize>() > 0,
        "churn happened"
    );
    Ok(())
}

// Who finishes first (free-riders after contributors) is a question of
// order in time: it is asked of the simulator, on its fake clock
// (`tests/sim.rs`), not of real nodes racing on a loaded machine.
