//! The container image (`scripts/image`) under a real Docker daemon: it
//! builds offline (`FROM scratch`), a seeder container serves a getter
//! container that knows only the magnet link, the healthcheck's command
//! answers, and a getter stopped by `docker stop` (SIGTERM) resumes where
//! it left off when started again.
//!
//! Each test builds its own image tag from the binary under test and
//! removes its containers, network and image afterwards, also when it
//! fails. Without a Docker daemon the build script marks these tests
//! ignored (skipped), unless `SLUICE_REQUIRE_DOCKER=1` (CI) makes that a
//! build failure.

#![allow(
    clippy::unwrap_used,
    clippy::print_stderr,
    reason = "test helpers; failures print the containers' logs"
)]

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::eventually_within;
use serde_json::Value;

mod common;

/// The longest any one docker command may take.
const STEP: Duration = Duration::from_secs(120);

fn content(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 1021) as u8).collect()
}

/// `program` under `timeout`, so that a wedged daemon fails the test
/// instead of hanging it.
fn within(limit: Duration, program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut command = Command::new("timeout");
    command.arg(limit.as_secs().to_string()).arg(program);
    command
}

/// `out` of `what`, which must have succeeded; its stdout.
fn succeeded(what: &str, out: Output) -> String {
    assert!(
        out.status.success(),
        "{what}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs `docker ARGS`, within [`STEP`].
fn docker(args: &[&str]) -> Output {
    within(STEP, "docker").args(args).output().unwrap()
}

/// `docker ARGS`, which must succeed; its stdout.
fn docker_ok(args: &[&str]) -> String {
    succeeded(&format!("docker {args:?}"), docker(args))
}

/// What one test made in Docker: removed when dropped, whatever happened.
struct Stage {
    tag: String,
    network: String,
    containers: Vec<String>,
}

impl Stage {
    /// Builds the image from the binary under test, and a network.
    fn new(name: &str) -> Self {
        let id = format!("{name}-{}", std::process::id());
        let stage = Self {
            tag: format!("sluice-test-{id}:test"),
            network: format!("sluice-test-{id}"),
            containers: Vec::new(),
        };
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/image");
        let out = within(STEP, &script)
            .args(["-t", &stage.tag])
            .env("SLUICE_BIN", env!("CARGO_BIN_EXE_sluice"))
            .output()
            .unwrap();
        eprintln!("image: {}", succeeded("scripts/image", out).trim());
        docker_ok(&[
            "network",
            "create",
            "--label",
            "sluice-test",
            &stage.network,
        ]);
        stage
    }

    /// Starts a container of the image, detached, as this user (so that
    /// the bind-mounted data dir is its own), with `data` as /data.
    fn run(&mut self, name: &str, data: &Path, args: &[&str]) -> String {
        let name = format!("{}-{name}", self.network);
        let user = format!("{}:{}", uid("-u"), uid("-g"));
        let volume = format!("{}:/data", data.display());
        let mut all = vec![
            "run",
            "-d",
            "--name",
            &name,
            "--network",
            &self.network,
            "--user",
            &user,
            "--label",
            "sluice-test",
            "-v",
            &volume,
            &self.tag,
        ];
        all.extend_from_slice(args);
        self.containers.push(name.clone());
        docker_ok(&all);
        name
    }

    /// `sluice status --json` inside the container (what its healthcheck
    /// runs, with JSON).
    fn status(&self, container: &str) -> Option<Value> {
        let out = docker(&[
            "exec",
            container,
            "/usr/local/bin/sluice",
            "status",
            "--json",
        ]);
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice::<Vec<Value>>(&out.stdout)
            .ok()?
            .into_iter()
            .next()
    }

    /// Waits for the container to exit; its exit code.
    fn wait(&self, container: &str) -> i64 {
        docker_ok(&["wait", container]).trim().parse().unwrap()
    }

    /// The line of the container's output that starts with `prefix`
    /// (after it), waiting for it.
    fn line(&self, container: &str, prefix: &str) -> String {
        eventually_within(STEP, &format!("{prefix:?} from {container}"), || {
            let out = docker(&["logs", container]);
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            text.lines()
                .find_map(|l| l.strip_prefix(prefix))
                .map(|rest| rest.trim().to_owned())
        })
    }
}

impl Drop for Stage {
    fn drop(&mut self) {
        for c in &self.containers {
            if std::thread::panicking() {
                let out = docker(&["logs", c]);
                eprintln!(
                    "--- {c}\n{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            docker(&["rm", "-f", "-v", c]);
        }
        docker(&["network", "rm", &self.network]);
        docker(&["rmi", "-f", &self.tag]);
    }
}

fn uid(flag: &str) -> String {
    let out = Command::new("id").arg(flag).output().unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

#[test]
#[cfg_attr(sluice_no_docker, ignore = "no Docker daemon answers here")]
fn a_seeder_container_serves_one_that_has_only_the_magnet_link() {
    let mut stage = Stage::new("magnet");
    // What people rely on: no root, /data, the healthcheck.
    let config: Value = serde_json::from_str(&docker_ok(&[
        "image",
        "inspect",
        "-f",
        "{{json .Config}}",
        &stage.tag,
    ]))
    .unwrap();
    assert_eq!(config["User"], "10001:10001");
    assert!(
        config["Env"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e == "SLUICE_DATA_DIR=/data")
    );
    assert_eq!(
        config["Healthcheck"]["Test"],
        serde_json::json!(["CMD", "/usr/local/bin/sluice", "status"])
    );

    let dir = tempfile::tempdir().unwrap();
    let (seed, get) = (dir.path().join("seed"), dir.path().join("get"));
    std::fs::create_dir_all(&seed).unwrap();
    std::fs::create_dir_all(&get).unwrap();
    let data = content(3 << 20);
    std::fs::write(seed.join("file.bin"), &data).unwrap();

    let seeder = stage.run("seed", &seed, &["seed", "/data/file.bin"]);
    let magnet = stage.line(&seeder, "magnet:");
    assert!(
        magnet.contains("x.pe="),
        "the magnet carries the seeder's address: {magnet}"
    );
    // The healthcheck's command, answered by the running node.
    eventually_within(STEP, "sluice status to say complete", || {
        stage.status(&seeder).filter(|s| s["complete"] == true)
    });

    let getter = stage.run("get", &get, &["get", &magnet, "-o", "/data/out"]);
    assert_eq!(stage.wait(&getter), 0, "the getter completes");
    assert!(
        std::fs::read(get.join("out/file.bin")).unwrap() == data,
        "content identical"
    );
}

#[test]
#[cfg_attr(sluice_no_docker, ignore = "no Docker daemon answers here")]
fn a_getter_stopped_by_docker_resumes_where_it_left_off() {
    let mut stage = Stage::new("resume");
    let dir = tempfile::tempdir().unwrap();
    let (seed, get) = (dir.path().join("seed"), dir.path().join("get"));
    std::fs::create_dir_all(&seed).unwrap();
    std::fs::create_dir_all(&get).unwrap();
    let data = content(6 << 20);
    std::fs::write(seed.join("file.bin"), &data).unwrap();

    // 6 MiB at 512 kB/s: about 8 s left to stop it once a third is in.
    let seeder = stage.run(
        "seed",
        &seed,
        &["seed", "/data/file.bin", "--up-rate", "512kB/s"],
    );
    let magnet = stage.line(&seeder, "magnet:");
    let getter = stage.run("get", &get, &["get", &magnet, "-o", "/data/out"]);
    let (verified, total) = eventually_within(STEP, "a third of the pieces", || {
        let s = stage.status(&getter)?;
        let v = s["verified_pieces"].as_u64()?;
        let total = s["total_pieces"].as_u64()?;
        (v * 3 >= total).then_some((v, total))
    });
    assert!(verified < total, "finished before it could be stopped");
    // SIGTERM, as Docker stops any container: progress saved, exit 130.
    docker_ok(&["stop", "-t", "30", &getter]);
    assert_eq!(stage.wait(&getter), 130, "interrupted, not killed");
    let logs = docker(&["logs", &getter]);
    assert!(
        String::from_utf8_lossy(&logs.stderr).contains("progress is saved"),
        "it says so"
    );

    docker_ok(&["start", &getter]);
    let resumed = eventually_within(STEP, "the restarted getter to answer", || {
        stage.status(&getter)?["pieces_at_start"].as_u64()
    });
    assert!(
        resumed >= verified,
        "started again with {resumed} pieces, had {verified} when stopped"
    );
    assert_eq!(stage.wait(&getter), 0, "the restarted getter completes");
    assert!(
        std::fs::read(get.join("out/file.bin")).unwrap() == data,
        "content identical"
    );
}

/// A single-node Docker Swarm for the test: initialised here if the
/// daemon is in none (and left again when dropped), else the one there is.
/// One test at a time has it (a lock file), so that one test's leaving
/// does not pull the swarm from under another's stack.
struct Swarm {
    made: bool,
    _lock: std::fs::File,
}

impl Swarm {
    fn join() -> Self {
        let path = std::env::temp_dir().join("sluice-test-docker-swarm.lock");
        let lock = std::fs::File::create(&path).unwrap();
        eventually_within(STEP * 5, "the swarm is free", || lock.try_lock().ok());
        let state = docker_ok(&["info", "-f", "{{.Swarm.LocalNodeState}}"]);
        let made = state.trim() != "active";
        if made {
            docker_ok(&["swarm", "init", "--advertise-addr", "127.0.0.1"]);
        }
        Self { made, _lock: lock }
    }
}

impl Drop for Swarm {
    fn drop(&mut self) {
        if self.made {
            docker(&["swarm", "leave", "--force"]);
        }
    }
}

/// Stacks whose names start with this: removed when dropped (a test that
/// failed before `sluice testnet` removed its own).
struct StacksNamed(String);

impl Drop for StacksNamed {
    fn drop(&mut self) {
        let listed = docker(&["stack", "ls", "--format", "{{.Name}}"]);
        for name in String::from_utf8_lossy(&listed.stdout).lines() {
            if name.starts_with(&self.0) {
                drop(Stack(name.to_owned()));
            }
        }
    }
}

/// A deployed stack: removed when dropped, and waited for until its
/// network is gone.
struct Stack(String);

impl Drop for Stack {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for service in ["dht", "seeder", "leecher"] {
                let out = docker(&["service", "logs", &format!("{}_{service}", self.0)]);
                eprintln!(
                    "--- {service}\n{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
        docker(&["stack", "rm", &self.0]);
        let deadline = Instant::now() + STEP;
        while Instant::now() < deadline
            && !docker_ok(&["network", "ls", "-q", "-f", &format!("name={}_net", self.0)])
                .trim()
                .is_empty()
        {
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

#[test]
#[cfg_attr(sluice_no_docker, ignore = "no Docker daemon answers here")]
fn the_example_stack_spreads_a_file_to_every_leecher_on_docker_swarm() {
    let stage = Stage::new("stack");
    let _swarm = Swarm::join();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let sluice = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(args)
            .current_dir(d)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let dht_id = sluice(&["identity", "new", "dht.key"]).trim().to_owned();
    std::fs::write(d.join("album.bin"), content(2 << 20)).unwrap();
    let shown = sluice(&["create", "album.bin", "-o", "album.torrent", "--json"]);
    let info_hash = serde_json::from_str::<Value>(&shown).unwrap()["info_hash"]
        .as_str()
        .unwrap()
        .to_owned();
    // The image's user reads the content and the key.
    for f in ["album.bin", "album.torrent", "dht.key"] {
        std::fs::set_permissions(
            d.join(f),
            std::os::unix::fs::PermissionsExt::from_mode(0o644),
        )
        .unwrap();
    }
    std::fs::set_permissions(d, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();

    let name = stage.network.replace('-', "");
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../image/stack.yml");
    let deploy = within(STEP, "docker")
        .args(["stack", "deploy", "-c"])
        .arg(&file)
        .arg(&name)
        .env("SLUICE_IMAGE", &stage.tag)
        .env("SLUICE_DHT_KEY", d.join("dht.key"))
        .env("SLUICE_DHT_ID", &dht_id)
        .env("SLUICE_CONTENT", d)
        .env("SLUICE_FILE", "album.bin")
        .env("SLUICE_TORRENT", "album.torrent")
        .env("SLUICE_INFO_HASH", &info_hash)
        .env("SLUICE_API_TOKEN", "test-token")
        .env("SLUICE_LEECHERS", "3")
        .output()
        .unwrap();
    let stack = Stack(name);
    succeeded("docker stack deploy", deploy);

    // Every leecher says, through its own API, that it has every piece.
    eventually_within(STEP * 2, "all 3 leechers complete", || {
        let ids = docker_ok(&["ps", "-q", "-f", &format!("name={}_leecher", stack.0)]);
        let done = ids
            .lines()
            .filter(|c| {
                stage.status(c).is_some_and(|s| {
                    s["complete"] == true && s["verified_pieces"] == s["total_pieces"]
                })
            })
            .count();
        (done == 3).then_some(())
    });
}

#[test]
#[cfg_attr(sluice_no_docker, ignore = "no Docker daemon answers here")]
fn the_testnet_runs_on_docker_swarm_and_leaves_nothing_behind() {
    let stage = Stage::new("testnet");
    let _swarm = Swarm::join();
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join(format!("tn{}", std::process::id()));
    // The stack is named after the report directory, with a random tail.
    let prefix = format!("sluice-testnet-tn{}-", std::process::id());
    let _left = StacksNamed(prefix.clone());
    let volumes_before = docker_ok(&["volume", "ls", "-q"]);
    let out = within(STEP * 5, env!("CARGO_BIN_EXE_sluice"))
        .args(["testnet", "--on", "docker-swarm", "--image", &stage.tag])
        .args(["--nodes", "8", "--size", "4MiB", "--report"])
        .arg(&report)
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "sluice testnet: {}\n{said}",
        out.status
    );

    let r: Value =
        serde_json::from_slice(&std::fs::read(report.join("report.json")).unwrap()).unwrap();
    assert_eq!(r["scenario"]["on"], "docker-swarm", "{said}");
    assert_eq!(r["timed_out"], false, "{said}");
    let nodes = r["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 8);
    for n in nodes {
        // Each node's own API said so: every piece verified against the
        // torrent's hashes.
        if n["role"] != "seeder" {
            assert!(
                n["completed_at"].is_number(),
                "{} did not complete: {said}",
                n["name"]
            );
            assert!(
                n["downloaded"].as_u64().unwrap() >= 4 << 20,
                "{} downloaded too little",
                n["name"]
            );
        }
        assert!(n["peak_rss_bytes"].as_u64().unwrap() > 0, "{}", n["name"]);
    }
    assert!(r["bound"]["ratio"].is_number(), "{said}");
    for f in [
        "report.md",
        "stack.json",
        "logs/seeder.log",
        "logs/leecher.log",
    ] {
        assert!(report.join(f).exists(), "{f} is missing");
    }
    assert!(
        !report.join("dht.key").exists(),
        "the DHT node's key is left behind"
    );

    // The stack, its network, config, secret and containers are gone.
    for what in [
        &["stack", "ls", "--format", "{{.Name}}"][..],
        &["network", "ls", "--format", "{{.Name}}"],
        &["ps", "-a", "--format", "{{.Names}}"],
        &["config", "ls", "--format", "{{.Name}}"],
        &["secret", "ls", "--format", "{{.Name}}"],
    ] {
        let listed = docker_ok(what);
        let left: Vec<&str> = listed.lines().filter(|l| l.starts_with(&prefix)).collect();
        assert!(left.is_empty(), "left behind: docker {what:?}: {left:?}");
    }
    // Nor the containers' /data volumes (anonymous: no label to filter by).
    let volumes = docker_ok(&["volume", "ls", "-q"]);
    let new: Vec<&str> = volumes
        .lines()
        .filter(|v| !volumes_before.lines().any(|b| b == *v))
        .collect();
    assert!(new.is_empty(), "volumes left behind: {new:?}");
}
