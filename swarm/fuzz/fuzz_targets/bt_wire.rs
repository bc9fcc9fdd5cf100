//! Bytes from a BitTorrent peer must decode to messages or an error,
//! never a panic, with or without the extensions negotiated; whatever
//! decodes must encode again without a panic.
#![no_main]

use std::sync::Arc;

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use sluice_storage::Layout;
use sluice_swarm::bt::wire::{BtCodec, Handshake};
use sluice_swarm::codec::{Codec, Inbound};

fuzz_target!(|data: &[u8]| {
    let Some((&flags, data)) = data.split_first() else {
        return;
    };
    // 21 pieces of 32 KiB, the last one short; extensions from the flags.
    let layout = Arc::new(Layout::from_lengths(32 * 1024, [20 * 32 * 1024 + 1000]));
    let mut theirs = Handshake::ours([0; 20], [0; 20]);
    if flags & 1 == 0 {
        theirs.reserved = [0; 8];
    }
    let mut codec = BtCodec::new(layout, true, &theirs);
    let cut = usize::from(flags >> 1) % (data.len() + 1);
    let mut buf = BytesMut::new();
    for part in [&data[..cut], &data[cut..]] {
        buf.extend_from_slice(part);
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(Inbound::Core(m))) => codec.encode(&m, &mut BytesMut::new()),
                Ok(Some(Inbound::Bt(e))) => e.encode(&mut BytesMut::new()),
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
});
