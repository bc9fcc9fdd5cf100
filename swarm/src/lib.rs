//! `sluice-swarm`: libp2p transport and discovery, the `/sluice/pieces/1`
//! wire protocol, per-peer sessions and the piece picker.
//!
//! - [`picker`]: which block to request next, from whom — a sans-IO core
//!   (rarest first, random first pieces, finish partial pieces, endgame),
//!   with the block-level bookkeeping of `docs/STATE.md`.
//!
//! - [`wire`]: the `/sluice/pieces/1` frames and their pure codec.
//! - [`window`]: per-peer request-window sizing and request timeouts.
//!
//! The transport and the sessions that drive these land with issue 4.

pub mod framed;
pub mod handshake;
pub mod picker;
pub mod ratelimit;
mod session;
pub mod torrent;
pub mod transport;
pub mod window;
pub mod wire;

pub use picker::{Picker, PickerConfig, PickerError, Received};
pub use window::{RequestWindow, WindowConfig};
pub use wire::{BlockSpec, Message, WireError};
