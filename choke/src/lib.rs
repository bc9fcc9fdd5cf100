//! `sluice-choke`: who gets our upload slots, and why.
//!
//! The tit-for-tat scheduler (regular slots by reciprocation, optimistic
//! unchoke, anti-snubbing) lands with issue 3 as a sans-IO core: events and
//! an explicit `now` in, decisions with reasons out. Nothing here yet.
