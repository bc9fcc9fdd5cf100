//! Metadata frames from a peer must decode to frames or an error, never a
//! panic, and every frame decoded must re-encode to the bytes it came from.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use sluice_swarm::metadata::Frame;

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    let mut consumed = 0usize;
    loop {
        let before = buf.len();
        match Frame::decode(&mut buf) {
            Ok(Some(f)) => {
                let used = before - buf.len();
                let mut again = BytesMut::new();
                f.encode(&mut again);
                assert_eq!(&again[..], &data[consumed..consumed + used]);
                consumed += used;
            }
            Ok(None) | Err(_) => return,
        }
    }
});
