//! `sluice-node`: one running node — its torrents, the rechoke timer, rate
//! limits and the control API.
//!
//! Lands with issues 4 and 5; nothing here yet.
