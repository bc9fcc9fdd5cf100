//! Bytes from a peer must decode to messages or an error, never a panic,
//! and every frame decoded must re-encode to exactly the bytes it came from.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use sluice_swarm::Message;

fuzz_target!(|data: &[u8]| {
    // Feed in two parts, as a socket would.
    let cut = data.first().map_or(0, |&c| usize::from(c) % (data.len() + 1));
    let mut buf = BytesMut::new();
    let mut consumed = 0usize;
    for part in [&data[..cut], &data[cut..]] {
        buf.extend_from_slice(part);
        loop {
            let before = buf.len();
            match Message::decode(&mut buf) {
                Ok(Some(m)) => {
                    let used = before - buf.len();
                    let mut again = BytesMut::new();
                    m.encode(&mut again);
                    assert_eq!(&again[..], &data[consumed..consumed + used]);
                    consumed += used;
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
});
