//! The web UI in a real browser: Debian's headless Chromium, driven over
//! the DevTools protocol (on a pipe: `--remote-debugging-pipe`), against
//! a running `sluice daemon`. Through the page: add a torrent by magnet
//! link, watch it reach 100% from a seeder, open it and see a peer row
//! with its choke reason, set its limits, pause and resume it. With
//! `SLUICE_UI_SCREENSHOTS=DIR` it also saves the two pages as PNGs there
//! (the README's screenshots).
//!
//! Without Chromium the build script marks it ignored (skipped), unless
//! `SLUICE_REQUIRE_CHROMIUM=1` (CI), when the build fails.

#![allow(clippy::unwrap_used, reason = "test helpers")]

use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

mod common;

use common::{LOCAL, Running, WAIT};

/// Headless Chromium with the DevTools protocol on fds 3 (its input) and
/// 4 (its output): JSON messages, each ended by a NUL byte. Killed when
/// dropped.
struct Browser {
    child: Child,
    to: std::io::PipeWriter,
    /// Messages from the browser (a reader thread splits them).
    from: mpsc::Receiver<Value>,
    next_id: u64,
    session: Option<String>,
}

impl Browser {
    fn start(profile: &Path) -> Self {
        let (cmd_read, cmd_write) = std::io::pipe().unwrap();
        let (out_read, out_write) = std::io::pipe().unwrap();
        let (a, b) = (cmd_read.as_raw_fd(), out_write.as_raw_fd());
        let mut command = Command::new("/usr/bin/chromium");
        command
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--remote-debugging-pipe",
                "--window-size=1100,700",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: between fork and exec, only dup2(2), which is
        // async-signal-safe; the fds are open pipes of ours.
        #[allow(unsafe_code)]
        unsafe {
            use std::os::unix::process::CommandExt;
            command.pre_exec(move || {
                if libc::dup2(a, 3) < 0 || libc::dup2(b, 4) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command.spawn().unwrap();
        drop((cmd_read, out_write));
        let (tx, from) = mpsc::sync_channel(1024);
        std::thread::spawn(move || {
            let mut r = BufReader::new(out_read);
            let mut buf = Vec::new();
            while let Ok(n) = r.read_until(0, &mut buf) {
                if n == 0 {
                    break;
                }
                buf.pop_if(|b| *b == 0);
                if let Ok(v) = serde_json::from_slice(&buf)
                    && tx.send(v).is_err()
                {
                    break;
                }
                buf.clear();
            }
        });
        Self {
            child,
            to: cmd_write,
            from,
            next_id: 1,
            session: None,
        }
    }

    /// Sends a command (to the page once attached) and waits for its
    /// answer; events on the way are dropped.
    fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let mut msg = json!({ "id": id, "method": method, "params": params });
        if let Some(s) = &self.session {
            msg["sessionId"] = json!(s);
        }
        let mut bytes = serde_json::to_vec(&msg).unwrap();
        bytes.push(0);
        self.to.write_all(&bytes).unwrap();
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let v = self
                .from
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no answer to {method}"));
            if v["id"] == json!(id) {
                assert!(v.get("error").is_none(), "{method}: {v}");
                return v["result"].clone();
            }
        }
    }

    /// Opens `url` in a new page and talks to that page from then on.
    fn open(&mut self, url: &str) {
        let target = self.call("Target.createTarget", json!({ "url": url }));
        let attached = self.call(
            "Target.attachToTarget",
            json!({ "targetId": target["targetId"], "flatten": true }),
        );
        self.session = Some(attached["sessionId"].as_str().unwrap().to_owned());
    }

    /// The value of a JavaScript expression in the page.
    fn eval(&mut self, expr: &str) -> Value {
        let r = self.call(
            "Runtime.evaluate",
            json!({ "expression": expr, "returnByValue": true, "awaitPromise": true }),
        );
        r["result"]["value"].clone()
    }

    /// Evaluates `expr` until it is true.
    fn until(&mut self, what: &str, expr: &str) {
        let deadline = Instant::now() + WAIT;
        while self.eval(expr) != json!(true) {
            assert!(Instant::now() < deadline, "the page never showed {what}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn screenshot(&mut self, path: &Path) {
        let shot = self.call("Page.captureScreenshot", json!({ "format": "png" }));
        std::fs::write(path, base64_decode(shot["data"].as_str().unwrap())).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Standard base64 (for screenshots only; no crate for one call).
fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        _ => 63,
    };
    let mut out = Vec::with_capacity(s.len() / 4 * 3);
    let mut acc = 0u32;
    let mut bits = 0;
    for &c in s.as_bytes().iter().filter(|c| **c != b'=') {
        acc = (acc << 6) | u32::from(val(c));
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

#[test]
#[cfg_attr(
    sluice_no_chromium,
    ignore = "needs Chromium: apt-get install chromium"
)]
fn the_web_ui_adds_downloads_shows_peers_pauses_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir_all(d.join("share")).unwrap();
    let data: Vec<u8> = (0..4_000_000u32).map(|i| (i * 13 % 251) as u8).collect();
    std::fs::write(d.join("share/album.bin"), &data).unwrap();
    // A capped seeder: the download takes a few seconds, long enough to
    // see it move.
    let mut seed_args = vec!["seed", "share", "--data-dir", "seedd", "--up-rate", "2MB/s"];
    seed_args.extend(LOCAL);
    let seeder = Running::spawn(&seed_args, d);
    let magnet = seeder.line("magnet:");
    let mut daemon_args = vec!["daemon", "--data-dir", "dd", "--download-dir"];
    let downloads = d.join("dl");
    daemon_args.push(downloads.to_str().unwrap());
    daemon_args.extend(LOCAL);
    let daemon = Running::spawn(&daemon_args, d);
    let ui = daemon.line("web ui:");
    assert!(ui.contains("#token="), "{ui}");

    let mut b = Browser::start(&d.join("profile"));
    b.open(&ui);
    b.until(
        "the live connection",
        "document.querySelector('#conn')?.textContent === 'live'",
    );
    b.until("the add form", "!document.querySelector('#add').hidden");
    assert_eq!(
        b.eval("document.querySelector('#readonly').hidden"),
        json!(true)
    );

    // Add by magnet link, through the form.
    let add = format!(
        "document.querySelector('#add-source').value = {}; document.querySelector('#add-button').click(); true",
        serde_json::to_string(&magnet).unwrap()
    );
    assert_eq!(b.eval(&add), json!(true));
    b.until(
        "the torrent at 100%",
        "[...document.querySelectorAll('#torrents tr.torrent')].some(r => r.querySelector('.bar em')?.textContent === '100.0%')",
    );
    assert!(std::fs::read(d.join("dl/share/album.bin")).unwrap() == data);
    if let Some(shots) = std::env::var_os("SLUICE_UI_SCREENSHOTS") {
        b.screenshot(&Path::new(&shots).join("ui-list.png"));
    }

    // Its page: a peer row with the choker's reason.
    b.eval("document.querySelector('#torrents tr.torrent').click(); true");
    b.until(
        "a peer with its choke reason",
        "[...document.querySelectorAll('#peers tr.peer td.why')].some(td => td.textContent.length > 0)",
    );
    b.until(
        "the summary",
        "document.querySelector('#t-summary').textContent.startsWith('seeding')",
    );
    if let Some(shots) = std::env::var_os("SLUICE_UI_SCREENSHOTS") {
        // A few more points on the chart first.
        std::thread::sleep(Duration::from_secs(2));
        b.screenshot(&Path::new(&shots).join("ui-torrent.png"));
    }

    // Its own limits, set through the form and read back from the API.
    b.eval(
        "const f = document.querySelector('#t-limits'); f.elements.up.value = '512'; \
         f.elements.slots.value = '2'; f.querySelector('button').click(); true",
    );
    b.until(
        "the limits set",
        "document.querySelector('#t-limits .result').textContent === 'set'",
    );
    let limits = b.eval(
        "fetch('/api/v1/torrents/' + location.hash.slice(4) + '/limits').then(r => r.json())",
    );
    assert_eq!(
        limits,
        json!({ "up_rate": 512 * 1024, "down_rate": null, "slots": 2 })
    );

    // Pause and resume from the page.
    b.eval("document.querySelector('#t-pause').click(); true");
    b.until(
        "the torrent paused",
        "document.querySelector('#t-summary').textContent.startsWith('paused')",
    );
    b.eval("document.querySelector('#t-resume').click(); true");
    b.until(
        "the torrent running again",
        "document.querySelector('#t-summary').textContent.startsWith('seeding')",
    );
}
