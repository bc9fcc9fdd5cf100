//! A magnet link is untrusted text: parsing must give a link or an error,
//! never a panic, and a parsed link printed and parsed again must be the
//! same link.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_swarm::magnet::Magnet;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(m) = text.parse::<Magnet>() {
        let again: Magnet = m.to_string().parse().expect("a printed link parses");
        assert_eq!(again, m);
    }
});
