//! Untrusted `.torrent` bytes must give a value or an error, never a panic,
//! and whatever the strict bencode decoder accepts must re-encode to the
//! same bytes (it only accepts canonical input).
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_storage::bencode;
use sluice_storage::{Info, Layout, Metainfo};

fuzz_target!(|data: &[u8]| {
    if let Ok(v) = bencode::decode(data) {
        assert_eq!(bencode::encode(&v), data);
    }
    if let Ok(m) = Metainfo::from_bytes(data) {
        // Everything downstream of a parsed torrent must hold up too.
        let layout = Layout::new(m.info());
        if let Some(last) = layout.num_pieces().checked_sub(1).and_then(|i| layout.piece(i)) {
            let _ = layout.piece_range(last);
            let _ = sluice_storage::expected_piece_hash(&m, &layout, last);
        }
        assert_eq!(Metainfo::from_bytes(m.to_bytes()).map(|n| n.info().info_hash()).ok(), Some(m.info().info_hash()));
    }
    let _ = Info::from_bytes(data);
});
