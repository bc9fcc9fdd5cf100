//! Sizes and rates with units: shared with the testnet's scenario files,
//! so they live in `sluice_testnet::units`.

pub(crate) use sluice_testnet::units::{format_rate, format_size, parse_rate, parse_size};
