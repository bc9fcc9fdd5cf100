//! Whole swarms in simulated time: the real torrent rules on modelled
//! links and disks. Deterministic (a fake clock, one seeded RNG), so these
//! may ask who finished first.

#![allow(clippy::unwrap_used, reason = "test helpers")]

use sluice_testnet::{Action, Config, Event, Report, Role, Sim, SimOptions};

const MIB: u64 = 1024 * 1024;

fn small() -> Config {
    Config {
        nodes: 6,
        seeders: 1,
        size: 4 * MIB,
        piece_size: Some(64 * 1024),
        up_rate: Some(2_000_000),
        seeder_up_rate: Some(4_000_000),
        free_riders: 1,
        slow_disks: 1,
        slow_disk_rate: 1_000_000,
        disk_queue: 512 * 1024,
        rechoke: 0.5,
        timeout: 300.0,
        ..Config::default()
    }
}

fn run(config: Config) -> Report {
    Sim::new(config, SimOptions::default())
        .unwrap()
        .run(|_| {})
        .unwrap()
}

/// report.json without what the machine decides (wall time, memory, CPU).
fn canonical(report: &Report) -> String {
    let mut v = serde_json::to_value(report).unwrap();
    let o = v.as_object_mut().unwrap();
    o.remove("wall_seconds");
    o.remove("peak_rss_bytes");
    o.remove("cpu_seconds");
    let cost = o["cost"].as_object_mut().unwrap();
    cost.remove("cpu_seconds_per_gib");
    cost.remove("peak_rss_per_node");
    serde_json::to_string(&v).unwrap()
}

#[test]
fn the_same_scenario_and_seed_give_the_same_report() {
    let a = run(small());
    let b = run(small());
    assert!(!a.timed_out);
    assert_eq!(canonical(&a), canonical(&b));
    assert_eq!(a.samples_csv(), b.samples_csv());
    let other = run(Config { seed: 2, ..small() });
    assert_ne!(canonical(&a), canonical(&other), "the seed is used");
}

#[test]
fn every_downloading_node_completes_within_its_disk_queue() {
    let report = run(small());
    assert!(!report.timed_out);
    for n in report.nodes.iter().filter(|n| n.role.downloads()) {
        assert!(
            n.completion_seconds.is_some(),
            "{} did not complete",
            n.name
        );
        assert!(
            n.peak_disk_bytes <= n.disk_capacity_bytes,
            "{}: {} of {}",
            n.name,
            n.peak_disk_bytes,
            n.disk_capacity_bytes
        );
    }
    // The slow disk was the bottleneck of its node: its queue filled and
    // requesting was held back.
    let slow = report
        .nodes
        .iter()
        .find(|n| n.slow_disk_rate.is_some())
        .unwrap();
    assert!(slow.peak_disk_bytes > slow.disk_capacity_bytes / 2);
    assert!(slow.throttled_seconds > 0.0);
    // Nobody beats Kumar & Ross.
    assert!(report.bound.ratio.unwrap() >= 1.0, "{:?}", report.bound);
}

/// With capped uploads, tit-for-tat holds a free-rider back: it finishes
/// after every contributor, and the seeder, which sees that the pieces
/// only it sent the free-rider never reach anyone else, gives it less
/// than a contributor's share.
#[test]
fn free_riders_finish_after_the_contributors_when_uploads_are_capped() {
    let report = run(Config {
        size: 16 * MIB,
        up_rate: Some(1_000_000),
        seeder_up_rate: Some(2_000_000),
        slow_disks: 0,
        disk_queue: 2 * MIB,
        ..small()
    });
    assert!(!report.timed_out);
    let slowest = |role| {
        report
            .nodes
            .iter()
            .filter(|n| n.role == role)
            .filter_map(|n| n.completion_seconds)
            .max_by(f64::total_cmp)
            .unwrap()
    };
    let (free, contributors) = (slowest(Role::FreeRider), slowest(Role::Leecher));
    assert!(
        free > contributors,
        "free-rider done after {free:.1} s, slowest contributor {contributors:.1} s"
    );
    assert_eq!(report.free_riders_finished_last, Some(true));
    let seeder_up: u64 = report
        .nodes
        .iter()
        .filter(|n| n.role == Role::Seeder)
        .map(|n| n.uploaded)
        .sum();
    let to_free = report.totals.seeders_to_free_riders;
    assert!(
        to_free * 5 < seeder_up,
        "the seeder sent the free-rider {to_free} of {seeder_up} bytes"
    );
}

#[test]
fn liars_are_banned_and_the_download_completes_anyway() {
    let report = run(Config {
        liars: 1,
        free_riders: 0,
        slow_disks: 0,
        ..small()
    });
    assert!(!report.timed_out);
    assert!(report.totals.hash_failures > 0, "the liar was asked");
    for n in report.nodes.iter().filter(|n| n.role == Role::Leecher) {
        assert!(
            n.completion_seconds.is_some(),
            "{} did not complete",
            n.name
        );
    }
    let banned: usize = report.nodes.iter().map(|n| n.banned_peers).sum();
    assert!(banned > 0, "nobody banned the liar");
}

#[test]
fn leaving_seeders_churn_and_late_joins_do_not_stop_the_others() {
    let report = run(Config {
        nodes: 8,
        churn: Some(2.0),
        events: vec![
            Event {
                at: 0.0,
                node: "seed-1".into(),
                action: Action::LeaveAfterCopies { copies: 2 },
            },
            Event {
                at: 1.5,
                node: "peer-07".into(),
                action: Action::Join,
            },
        ],
        ..small()
    });
    assert!(!report.timed_out);
    let seed = report.nodes.iter().find(|n| n.name == "seed-1").unwrap();
    assert!(seed.left_at.is_some(), "the seeder left");
    let late = report.nodes.iter().find(|n| n.name == "peer-07").unwrap();
    assert_eq!(late.joined_at, Some(1.5));
    let restarts: usize = report.nodes.iter().map(|n| n.restarts).sum();
    assert!(restarts > 0, "churn happened");
    for n in report.nodes.iter().filter(|n| n.role.downloads()) {
        assert!(
            n.completion_seconds.is_some(),
            "{} did not complete",
            n.name
        );
    }
}
