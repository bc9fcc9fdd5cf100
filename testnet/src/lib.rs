//! `sluice-testnet`: many real sluice nodes on one machine — the engine
//! behind `sluice testnet`.
//!
//! Every node is a real [`sluice_node`] node, the same code `sluice seed`
//! and `sluice get` run, with its own identity, data dir, control API and
//! 127.0.0.1 sockets; they share this process (and its tokio runtime), so
//! a hundred of them fit on two cores. Links are the nodes' upload and
//! download limits, disks the storage writer's emulated rate, behaviour
//! the choker (free-riders never unchoke anyone).
//!
//! - [`config`]: the scenario (flags or a TOML file) and the node plan;
//! - [`run`]: starting, connecting, events, sampling;
//! - [`libtorrent`]: libtorrent 2.0 nodes beside sluice's (`--libtorrent K`);
//! - [`netns`]: hosts in network namespaces, some behind NAT routers
//!   (`--netns`);
//! - `docker`: the testnet as a stack on Docker Swarm (`--on
//!   docker-swarm`), its nodes containers of the sluice image;
//! - [`report`]: report.json, report.md and the terminal summary;
//! - [`plot`]: the SVG plots;
//! - [`bound`]: Kumar & Ross's lower bound on distribution time;
//! - sizes and rates with units come from `sluice_storage::units`.

pub mod bound;
pub mod config;
mod docker;
pub mod libtorrent;
pub mod netns;
pub mod plot;
mod process;
pub mod report;
pub mod run;
pub mod sim;

pub use config::{Action, ChokerKind, Client, Config, Discovery, Event, Platform, Role, Transport};
pub use docker::DEFAULT_IMAGE;
pub use report::Report;
pub use run::{NodeView, Testnet};
pub use sim::{Sim, SimOptions};
