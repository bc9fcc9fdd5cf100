//! `sluice-swarm`: libp2p transport and discovery, the `/sluice/pieces/1`
//! wire protocol, per-peer sessions and the piece picker.
//!
//! - [`picker`]: which block to request next, from whom — a sans-IO core
//!   (rarest first, random first pieces, finish partial pieces, endgame),
//!   with the block-level bookkeeping of `docs/STATE.md`.
//!
//! The transport, codec and sessions land with issue 4.

pub mod picker;

pub use picker::{Picker, PickerConfig, Received};
