//! `sluice-swarm`: libp2p transport and discovery, the `/sluice/pieces/1`
//! wire protocol, per-peer sessions and the piece picker.
//!
//! Lands with issue 4; nothing here yet.
