//! `sluice-testnet`: many real sluice nodes on one machine, scenarios,
//! measurements, reports and plots.
//!
//! Lands with issue 6; nothing here yet.
