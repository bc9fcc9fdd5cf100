//! `sluice-swarm`: libp2p transport and discovery, the `/sluice/pieces/1`
//! wire protocol, per-peer sessions and the piece picker.
//!
//! - [`picker`]: which block to request next, from whom — a sans-IO core
//!   (rarest first, random first pieces, finish partial pieces, endgame),
//!   with the block-level bookkeeping of `docs/STATE.md`.
//!
//! - [`wire`]: the `/sluice/pieces/1` frames and their pure codec.
//! - [`metadata`]: `/sluice/metadata/1`, fetching a torrent's info dict
//!   and piece layers from peers (for magnet links), and serving them.
//! - [`magnet`]: magnet links with a v2 info-hash and multiaddr hints.
//! - [`window`]: per-peer request-window sizing and request timeouts.
//!
//! - [`bt`]: the BitTorrent peer wire (BEP 3/6/10/52) over TCP, a second
//!   kind of session for the same core; [`codec`] is what both wires
//!   implement.
//! - [`transport`]: the libp2p swarm; [`torrent`] and its sessions drive
//!   the piece protocol.

pub mod admission;
pub mod bt;
pub mod codec;
pub mod framed;
pub mod handshake;
pub mod magnet;
pub mod metadata;
pub mod picker;
pub mod ratelimit;
pub mod reach;
mod session;
pub mod torrent;
pub mod torrent_core;
pub mod tracker;
pub mod transport;
pub mod upload;
pub mod window;
pub mod wire;

pub use picker::{Picker, PickerConfig, PickerError, Received};
pub use window::{RequestWindow, WindowConfig};
pub use wire::{BlockSpec, Message, WireError};
