//! The config file: `--config FILE`, else `$SLUICE_CONFIG`, else
//! `$XDG_CONFIG_HOME/sluice/config.toml` (`~/.config/sluice/config.toml`).
//!
//! Each key is the long flag of the same name (`up_rate = "5MB/s"` is
//! `--up-rate 5MB/s`), and the file sets that flag's default for the
//! commands that run a node (`seed`, `get`, `node`, `daemon`; `data_dir`
//! also for the commands that talk to one): a flag given still wins, and
//! every value is parsed and checked exactly as the flag's would be.
//! Unknown keys are refused by name. `sluice config` prints what applies.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Deserialize;

/// Commands that run a node and take the network keys.
const NODE_COMMANDS: [&str; 4] = ["seed", "get", "node", "daemon"];
/// Commands that find a running node by its data dir.
const CLIENT_COMMANDS: [&str; 12] = [
    "status", "peers", "top", "add", "remove", "pause", "resume", "list", "ui", "limit", "seed",
    "get",
];

/// What a config file may say.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileConfig {
    data_dir: Option<PathBuf>,
    download_dir: Option<PathBuf>,
    listen: Option<Vec<String>>,
    bt_listen: Option<String>,
    api: Option<String>,
    bootstrap: Option<Vec<String>>,
    relay: Option<Vec<String>>,
    mdns: Option<bool>,
    upnp: Option<bool>,
    serve_relay: Option<bool>,
    up_rate: Option<toml::Value>,
    down_rate: Option<toml::Value>,
    slots: Option<u32>,
    choker: Option<String>,
    disk_queue: Option<toml::Value>,
    max_metadata: Option<toml::Value>,
}

/// A value as its flag would be typed (`5MB/s`, `64MiB`, `4`).
fn flag_text(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => s.clone(),
        toml::Value::Integer(i) => i.to_string(),
        toml::Value::Float(f) => f.to_string(),
        toml::Value::Boolean(b) => b.to_string(),
        // Refused by the flag's parser, with the flag's message.
        _ => "(not a number or a string)".to_owned(),
    }
}

/// The file the command line names, else the default one if it exists.
pub(crate) fn path_from_args(args: &[std::ffi::OsString]) -> (Option<PathBuf>, bool) {
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let a = a.to_string_lossy();
        if a == "--config" {
            return (it.next().map(PathBuf::from), true);
        }
        if let Some(v) = a.strip_prefix("--config=") {
            return (Some(PathBuf::from(v)), true);
        }
    }
    if let Some(p) = std::env::var_os("SLUICE_CONFIG") {
        return (Some(PathBuf::from(p)), true);
    }
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")));
    (base.map(|b| b.join("sluice/config.toml")), false)
}

/// Reads `path`; a default path that does not exist is no config.
pub(crate) fn load(path: &Path, explicit: bool) -> Result<FileConfig> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if !explicit && e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(FileConfig::default());
        }
        Err(e) => return Err(e).with_context(|| format!("reading the config {}", path.display())),
    };
    toml::from_str(&text).with_context(|| format!("the config {}", path.display()))
}

impl FileConfig {
    /// (flag id, its values) for each key set, and the commands it is for.
    fn defaults(&self) -> Vec<(&'static str, Vec<String>, &'static [&'static str])> {
        let mut out: Vec<(&'static str, Vec<String>, &'static [&'static str])> = Vec::new();
        let mut one = |id, v: Option<String>, cmds: &'static [&'static str]| {
            if let Some(v) = v {
                out.push((id, vec![v], cmds));
            }
        };
        let path = |p: &Option<PathBuf>| p.as_ref().map(|p| p.display().to_string());
        one("data_dir", path(&self.data_dir), &CLIENT_COMMANDS);
        one("data_dir", path(&self.data_dir), &["node", "daemon"]);
        one("download_dir", path(&self.download_dir), &["daemon"]);
        one("bt_listen", self.bt_listen.clone(), &NODE_COMMANDS);
        one("api", self.api.clone(), &NODE_COMMANDS);
        one(
            "no_mdns",
            self.mdns.map(|m| (!m).to_string()),
            &NODE_COMMANDS,
        );
        one(
            "up_rate",
            self.up_rate.as_ref().map(flag_text),
            &NODE_COMMANDS,
        );
        one(
            "down_rate",
            self.down_rate.as_ref().map(flag_text),
            &NODE_COMMANDS,
        );
        one(
            "no_upnp",
            self.upnp.map(|m| (!m).to_string()),
            &NODE_COMMANDS,
        );
        one(
            "serve_relay",
            self.serve_relay.map(|m| m.to_string()),
            &NODE_COMMANDS,
        );
        one("slots", self.slots.map(|s| s.to_string()), &NODE_COMMANDS);
        one("choker", self.choker.clone(), &NODE_COMMANDS);
        one(
            "disk_queue",
            self.disk_queue.as_ref().map(flag_text),
            &["get"],
        );
        one(
            "max_metadata",
            self.max_metadata.as_ref().map(flag_text),
            &["get", "daemon"],
        );
        for (id, list) in [
            ("listen", &self.listen),
            ("bootstrap", &self.bootstrap),
            ("relay", &self.relay),
        ] {
            if let Some(list) = list {
                out.push((id, list.clone(), &NODE_COMMANDS));
            }
        }
        out
    }

    /// `cmd` with the file's values as its flags' defaults.
    pub(crate) fn apply(&self, mut cmd: clap::Command) -> clap::Command {
        for (id, values, commands) in self.defaults() {
            for sub in commands {
                let has = cmd
                    .find_subcommand(sub)
                    .is_some_and(|c| c.get_arguments().any(|a| a.get_id() == id));
                if has {
                    // clap keeps defaults as `&'static str`; these few
                    // strings live as long as the process anyway.
                    let values: Vec<&'static str> = values
                        .iter()
                        .map(|v| &*Box::leak(v.clone().into_boxed_str()))
                        .collect();
                    cmd = cmd.mut_subcommand(sub, move |c| {
                        c.mut_arg(id, move |a| a.default_values(values))
                    });
                }
            }
        }
        cmd
    }
}

/// `sluice config`: the file used, and the defaults `sluice seed` (and
/// the other node commands) run with.
pub(crate) fn print(path: Option<&Path>, cmd: &clap::Command) {
    match path {
        Some(p) if p.exists() => println!("# config: {}", p.display()),
        Some(p) => println!("# config: {} (none there; built-in defaults)", p.display()),
        None => println!("# config: none (no $HOME)"),
    }
    for (sub, keys) in [
        (
            "seed",
            &[
                "data_dir",
                "listen",
                "bt_listen",
                "api",
                "bootstrap",
                "relay",
                "no_mdns",
                "no_upnp",
                "serve_relay",
                "up_rate",
                "down_rate",
                "slots",
                "choker",
            ][..],
        ),
        ("get", &["disk_queue", "max_metadata"][..]),
        ("daemon", &["download_dir"][..]),
    ] {
        let Some(c) = cmd.find_subcommand(sub) else {
            continue;
        };
        for key in keys {
            let Some(a) = c.get_arguments().find(|a| a.get_id() == *key) else {
                continue;
            };
            let values: Vec<String> = a
                .get_default_values()
                .iter()
                .map(|v| v.to_string_lossy().into_owned())
                .collect();
            let (key, shown) = match (*key, values.as_slice()) {
                ("no_mdns", [v]) => ("mdns", (v != "true").to_string()),
                ("no_upnp", [v]) => ("upnp", (v != "true").to_string()),
                (_, []) => {
                    println!("# {key}: not set");
                    continue;
                }
                ("listen" | "bootstrap" | "relay", vs) => (
                    *key,
                    format!(
                        "[{}]",
                        vs.iter()
                            .map(|v| format!("{v:?}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ),
                (_, [v]) if v.parse::<f64>().is_ok() || v == "true" || v == "false" => {
                    (*key, v.clone())
                }
                (_, vs) => (*key, format!("{:?}", vs.join(" "))),
            };
            println!("{key} = {shown}");
        }
    }
}
