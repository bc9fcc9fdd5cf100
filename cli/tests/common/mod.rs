//! What the daemon and web UI tests share: `sluice` children.

#![allow(dead_code, reason = "each test crate uses its own part")]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub(crate) const WAIT: Duration = Duration::from_secs(60);

/// Calls `probe` until it returns something, for at most [`WAIT`].
pub(crate) fn eventually<T>(what: &str, probe: impl FnMut() -> Option<T>) -> T {
    eventually_within(WAIT, what, probe)
}

/// Calls `probe` every 100 ms until it returns something, for at most
/// `limit`.
pub(crate) fn eventually_within<T>(
    limit: Duration,
    what: &str,
    mut probe: impl FnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = probe() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Flags that keep a node on 127.0.0.1 and off mDNS.
pub(crate) const LOCAL: [&str; 5] = [
    "--no-mdns",
    "--listen",
    "/ip4/127.0.0.1/tcp/0",
    "--bt-listen",
    "127.0.0.1:0",
];

/// A child whose stdout lines arrive on a channel; killed when dropped.
pub(crate) struct Running {
    pub(crate) child: Child,
    pub(crate) lines: mpsc::Receiver<String>,
}

impl Running {
    pub(crate) fn spawn(args: &[&str], cwd: &Path) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_sluice"));
        command.args(args);
        Self::spawn_command(command, cwd)
    }

    /// `command` (a `sluice` one, in a namespace, say) with its stdout
    /// read.
    pub(crate) fn spawn_command(mut command: Command, cwd: &Path) -> Self {
        let mut child = command
            .current_dir(cwd)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::sync_channel(256);
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self { child, lines }
    }

    pub(crate) fn line(&self, prefix: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self
                .lines
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no {prefix:?} line within {WAIT:?}"));
            if let Some(rest) = line.strip_prefix(prefix) {
                return rest.trim().to_owned();
            }
        }
    }

    /// SIGTERM, then its exit status.
    pub(crate) fn terminate(mut self) -> std::process::ExitStatus {
        // SAFETY: kill(2) on our own child, not yet reaped.
        #[allow(unsafe_code)]
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "the daemon did not stop");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
