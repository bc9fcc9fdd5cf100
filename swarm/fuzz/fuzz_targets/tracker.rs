//! A tracker's answer, over HTTP or UDP, must parse or be refused with an
//! error, never panic, and never yield more than MAX_PEERS peers.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_swarm::tracker::{MAX_PEERS, parse_http, udp};

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = parse_http(data) {
        assert!(r.peers.len() <= MAX_PEERS);
    }
    for v6 in [false, true] {
        if let Ok(r) = udp::parse_announce(data, 0, v6) {
            assert!(r.peers.len() <= MAX_PEERS);
        }
    }
    let _ = udp::parse_connect(data, 0);
});
