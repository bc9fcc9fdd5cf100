use super::*;

const PIECES: u32 = 21; // 3 bitfield bytes, 3 spare bits
const PIECE: u32 = 2 * BLOCK_SIZE;
/// The last piece's only block.
const SHORT: u32 = 1000;

/// 21 pieces of two blocks, the last one 1000 bytes.
fn layout(pieces: u32) -> Arc<Layout> {
    let len = u64::from(pieces - 1) * u64::from(PIECE) + u64::from(SHORT);
    Arc::new(Layout::from_lengths(PIECE, [len]))
}

fn full() -> BtCodec {
    BtCodec::new(layout(PIECES), true, &Handshake::ours([1; 20], [2; 20]))
}

fn plain() -> BtCodec {
    let h = Handshake {
        reserved: [0; 8],
        info_hash: [1; 20],
        peer_id: [2; 20],
    };
    BtCodec::new(layout(PIECES), true, &h)
}

fn spec() -> BlockSpec {
    BlockSpec {
        piece: 7,
        offset: 16384,
        len: 16384,
    }
}

fn hash_spec() -> HashSpec {
    HashSpec {
        pieces_root: [0xab; 32],
        base_layer: 0,
        index: 512,
        length: 512,
        proof_layers: 3,
    }
}

/// Messages both wires have, as the core sends them.
fn core_samples() -> Vec<Message> {
    vec![
        Message::KeepAlive,
        Message::Bitfield {
            first_piece: 0,
            bits: Bytes::from_static(&[0xff, 0x01, 0xf8]),
        },
        Message::HaveAll,
        Message::HaveNone,
        Message::Have(20),
        Message::Interested,
        Message::NotInterested,
        Message::Choke,
        Message::Unchoke,
        Message::Request(spec()),
        Message::Piece {
            piece: 3,
            offset: 0,
            data: Bytes::from(vec![0x5a; MAX_BLOCK]),
        },
        Message::Piece {
            piece: 20,
            offset: 0,
            data: Bytes::from(vec![0x33; SHORT as usize]),
        },
        Message::Request(BlockSpec {
            piece: 20,
            offset: 0,
            len: SHORT,
        }),
        Message::Cancel(spec()),
        Message::Reject(spec()),
    ]
}

fn extra_samples() -> Vec<Extra> {
    vec![
        Extra::ExtHandshake(ExtHandshake {
            client: Some("libtorrent/2.0.8".into()),
            reqq: Some(500),
            ut_metadata: Some(2),
            metadata_size: Some(12_345),
        }),
        Extra::Extended {
            id: 3,
            payload: Bytes::from_static(b"d8:msg_typei0e5:piecei0ee"),
        },
        Extra::HashRequest(hash_spec()),
        Extra::Hashes {
            spec: hash_spec(),
            hashes: Bytes::from(vec![7u8; 64]),
        },
        Extra::HashReject(hash_spec()),
        Extra::AllowedFast(4),
        Extra::Suggest(5),
        Extra::Port(6881),
    ]
}

fn encode_all(codec: &mut BtCodec) -> BytesMut {
    let mut buf = BytesMut::new();
    for m in core_samples() {
        codec.encode(&m, &mut buf);
    }
    for e in extra_samples() {
        e.encode(&mut buf);
    }
    buf
}

fn expected() -> Vec<Inbound> {
    core_samples()
        .into_iter()
        .map(Inbound::Core)
        .chain(extra_samples().into_iter().map(Inbound::Bt))
        .collect()
}

#[test]
fn every_message_round_trips_with_the_fast_extension() {
    let mut codec = full();
    let mut buf = encode_all(&mut codec);
    for want in expected() {
        assert_eq!(codec.decode(&mut buf).unwrap(), Some(want));
    }
    assert!(buf.is_empty());
    assert_eq!(codec.decode(&mut buf).unwrap(), None);
}

/// Feeding the stream cut at every offset gives the same messages.
#[test]
fn split_at_every_offset() {
    let all = encode_all(&mut full()).freeze();
    let step = if cfg!(debug_assertions) { 7 } else { 1 };
    for cut in (0..=all.len()).step_by(step) {
        let mut codec = full();
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for part in [&all[..cut], &all[cut..]] {
            buf.extend_from_slice(part);
            while let Some(m) = codec.decode(&mut buf).unwrap() {
                got.push(m);
            }
        }
        assert_eq!(got, expected(), "cut at {cut}");
    }
}

/// The bytes of BEP 3's and BEP 6's examples, by hand.
#[test]
fn encodings_are_the_beps() {
    let mut c = full();
    let enc = |c: &mut BtCodec, m: Message| {
        let mut b = BytesMut::new();
        c.encode(&m, &mut b);
        b.to_vec()
    };
    assert_eq!(enc(&mut c, Message::Have(1)), [0, 0, 0, 5, 4, 0, 0, 0, 1]);
    assert_eq!(enc(&mut c, Message::HaveAll), [0, 0, 0, 1, 0x0e]);
    assert_eq!(
        enc(&mut c, Message::Request(spec())),
        [0, 0, 0, 13, 6, 0, 0, 0, 7, 0, 0, 0x40, 0, 0, 0, 0x40, 0]
    );
    assert_eq!(enc(&mut c, Message::KeepAlive), [0, 0, 0, 0]);
}

/// A peer without BEP 6 gets a full bitfield for "have all", nothing for
/// "have none" or a reject; one without BEP 10 gets no extension
/// handshake.
#[test]
fn a_plain_peer_hears_only_bep_3() {
    let mut c = plain();
    let mut b = BytesMut::new();
    c.encode(&Message::HaveAll, &mut b);
    assert_eq!(
        &b[..],
        [0, 0, 0, 4, 5, 0xff, 0xff, 0xf8],
        "21 pieces, spare bits clear"
    );
    b.clear();
    for m in [
        Message::HaveNone,
        Message::Reject(spec()),
        Message::MaxRequests(500),
    ] {
        c.encode(&m, &mut b);
    }
    assert!(b.is_empty(), "sent {b:?}");
    // And what it should not say is refused.
    for id in [id::HAVE_ALL, id::HAVE_NONE, id::EXTENDED] {
        let mut m = BytesMut::from(&[0, 0, 0, 1, id][..]);
        assert_eq!(c.decode(&mut m), Err(WireError::UnknownType(id)));
    }
}

/// The core's bitfield chunks become one message.
#[test]
fn bitfield_chunks_become_one_message() {
    let mut c = BtCodec::new(layout(8 * 5), true, &Handshake::ours([0; 20], [0; 20]));
    let mut b = BytesMut::new();
    c.encode(
        &Message::Bitfield {
            first_piece: 0,
            bits: Bytes::from_static(&[1, 2, 3]),
        },
        &mut b,
    );
    c.encode(
        &Message::Bitfield {
            first_piece: 24,
            bits: Bytes::from_static(&[4, 5]),
        },
        &mut b,
    );
    c.encode(&Message::Have(1), &mut b);
    assert_eq!(
        c.decode(&mut b).unwrap(),
        Some(Inbound::Core(Message::Bitfield {
            first_piece: 0,
            bits: Bytes::from_static(&[1, 2, 3, 4, 5]),
        }))
    );
    assert_eq!(
        c.decode(&mut b).unwrap(),
        Some(Inbound::Core(Message::Have(1)))
    );
}

/// On this wire a file's short last block is a whole 16 KiB, the tail
/// zeros (libtorrent pads every v2 file to a piece); the core sees its
/// exact length.
#[test]
fn a_short_block_travels_padded() {
    let mut c = full();
    let mut b = BytesMut::new();
    let short = BlockSpec {
        piece: 20,
        offset: 0,
        len: SHORT,
    };
    c.encode(&Message::Request(short), &mut b);
    assert_eq!(&b[13..], &BLOCK_SIZE.to_be_bytes(), "asked for as 16 KiB");
    b.clear();
    let data = Bytes::from(vec![9u8; SHORT as usize]);
    c.encode(
        &Message::Piece {
            piece: 20,
            offset: 0,
            data: data.clone(),
        },
        &mut b,
    );
    assert_eq!(b.len(), 4 + 9 + BLOCK_SIZE as usize);
    assert!(b[4 + 9 + SHORT as usize..].iter().all(|&z| z == 0));
    assert_eq!(
        c.decode(&mut b).unwrap(),
        Some(Inbound::Core(Message::Piece {
            piece: 20,
            offset: 0,
            data
        }))
    );
    // A block past the data (all padding) stays as named: refused later.
    let mut b = BytesMut::new();
    b.put_u32(13);
    b.put_u8(id::REQUEST);
    for v in [20, BLOCK_SIZE, BLOCK_SIZE] {
        b.put_u32(v);
    }
    assert_eq!(
        c.decode(&mut b).unwrap(),
        Some(Inbound::Core(Message::Request(BlockSpec {
            piece: 20,
            offset: BLOCK_SIZE,
            len: BLOCK_SIZE
        })))
    );
}

/// A hybrid of one file has no pad file: its short last block travels
/// at its exact length.
#[test]
fn without_padding_a_short_block_travels_exact() {
    let mut c = BtCodec::new(layout(PIECES), false, &Handshake::ours([1; 20], [2; 20]));
    let short = BlockSpec {
        piece: 20,
        offset: 0,
        len: SHORT,
    };
    let mut b = BytesMut::new();
    c.encode(&Message::Request(short), &mut b);
    assert_eq!(&b[13..], &SHORT.to_be_bytes());
    b.clear();
    let data = Bytes::from(vec![9u8; SHORT as usize]);
    let piece = Message::Piece {
        piece: 20,
        offset: 0,
        data,
    };
    c.encode(&piece, &mut b);
    assert_eq!(b.len(), 4 + 9 + SHORT as usize);
    assert_eq!(c.decode(&mut b).unwrap(), Some(Inbound::Core(piece)));
}

/// A hybrid with no pad file after its last file: its last piece's short
/// block travels exact while the others are padded.
#[test]
fn an_unpadded_tail_travels_exact() {
    let mut c = full().with_unpadded_tail(true);
    let mut b = BytesMut::new();
    let short = BlockSpec {
        piece: 20,
        offset: 0,
        len: SHORT,
    };
    c.encode(&Message::Request(short), &mut b);
    assert_eq!(&b[13..], &SHORT.to_be_bytes(), "the last piece: exact");
}

#[test]
fn bad_messages_are_errors_not_panics() {
    let frame = |len: u32, body: &[u8]| {
        let mut b = BytesMut::new();
        b.put_u32(len);
        b.put_slice(body);
        b
    };
    let cases: Vec<(BytesMut, WireError)> = vec![
        (
            frame(MAX_MESSAGE as u32 + 1, &[id::PIECE]),
            WireError::TooLong(MAX_MESSAGE + 1),
        ),
        (frame(u32::MAX, &[]), WireError::TooLong(u32::MAX as usize)),
        (frame(1, &[99]), WireError::UnknownType(99)),
        (
            frame(2, &[id::CHOKE, 0]),
            WireError::BadLength {
                kind: id::CHOKE,
                len: 1,
            },
        ),
        (
            frame(4, &[id::HAVE, 0, 0, 0]),
            WireError::BadLength {
                kind: id::HAVE,
                len: 3,
            },
        ),
        (
            frame(5, &[id::PIECE, 0, 0, 0, 0]),
            WireError::BadLength {
                kind: id::PIECE,
                len: 4,
            },
        ),
        (
            frame(9 + MAX_BLOCK as u32 + 1, &[id::PIECE]),
            WireError::BadLength {
                kind: id::PIECE,
                len: 8 + MAX_BLOCK + 1,
            },
        ),
        // Too short and too long a bitfield, refused before its bytes.
        (
            frame(3, &[id::BITFIELD]),
            WireError::BitfieldLength { got: 2, want: 3 },
        ),
        (
            frame(1 << 20, &[id::BITFIELD]),
            WireError::BitfieldLength {
                got: (1 << 20) - 1,
                want: 3,
            },
        ),
        (
            frame(1, &[id::EXTENDED]),
            WireError::BadLength {
                kind: id::EXTENDED,
                len: 0,
            },
        ),
        (
            frame(1 + 48 + 31, &[id::HASHES]),
            WireError::BadLength {
                kind: id::HASHES,
                len: 48 + 31,
            },
        ),
    ];
    for (mut buf, want) in cases {
        // A message of a plausible length is judged once all of it is in.
        let declared = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        if declared <= MAX_MESSAGE && buf.len() < 4 + declared {
            buf.resize(4 + declared, 0);
        }
        assert_eq!(full().decode(&mut buf), Err(want));
    }
}

#[test]
fn a_too_long_prefix_is_refused_before_buffering() {
    let mut b = BytesMut::new();
    b.put_u32(1 << 30);
    b.put_u8(id::PIECE);
    assert!(full().decode(&mut b).is_err());
    assert!(b.capacity() < 1 << 20, "never reserved the claimed length");
}

#[test]
fn handshakes_round_trip_and_say_what_they_speak() {
    let ours = Handshake::ours([3; 20], *b"-SL0100-abcdefghijkl");
    let bytes = ours.encode();
    assert_eq!(&bytes[..20], PROTOCOL);
    assert_eq!(bytes[25], 0x10, "BEP 10 bit");
    assert_eq!(bytes[27], 0x04, "BEP 6 bit");
    let back = Handshake::decode(&bytes).unwrap();
    assert_eq!(back, ours);
    assert!(back.fast() && back.extended());
    let mut other = bytes;
    other[1] = b'b';
    assert_eq!(Handshake::decode(&other), Err(WireError::NotBitTorrent));
}

#[test]
fn extension_handshakes_give_client_and_queue_depth() {
    let theirs = b"d1:md11:ut_metadatai3e6:ut_pexi1ee13:metadata_sizei31235e4:reqqi500e1:v17:libtorrent 2.0.8 e";
    let h = ExtHandshake::parse(theirs);
    assert_eq!(
        h,
        ExtHandshake {
            client: Some("libtorrent 2.0.8 ".into()),
            reqq: Some(500),
            ut_metadata: Some(3),
            metadata_size: Some(31235),
        }
    );
    // Garbage is an empty handshake, not an error.
    assert_eq!(ExtHandshake::parse(b"d1:v"), ExtHandshake::default());
    // Ours parses back.
    let ours = ExtHandshake::parse(&ExtHandshake::encode(250, Some(99)));
    assert_eq!(ours.reqq, Some(250));
    assert_eq!(ours.metadata_size, Some(99));
    assert_eq!(ours.client.as_deref(), Some(CLIENT_NAME));
    // A MaxRequests from the core reaches an extended peer as `reqq`.
    let mut c = full();
    let mut b = BytesMut::new();
    c.encode(&Message::MaxRequests(77), &mut b);
    match c.decode(&mut b).unwrap() {
        Some(Inbound::Bt(Extra::ExtHandshake(h))) => assert_eq!(h.reqq, Some(77)),
        other => panic!("expected an extension handshake, got {other:?}"),
    }
}

/// BEP 9's messages: a request, a data message with its bytes after the
/// dict, a reject; anything else is not one.
#[test]
fn ut_metadata_messages() {
    for m in [
        MetadataMsg::Request { piece: 3 },
        MetadataMsg::Data {
            piece: 1,
            total_size: 40_000,
        },
        MetadataMsg::Reject { piece: 9 },
    ] {
        let mut bytes = m.to_bytes();
        let dict_len = bytes.len();
        bytes.extend_from_slice(b"INFO DICT BYTES");
        assert_eq!(MetadataMsg::parse(&bytes), Some((m, dict_len)));
    }
    assert_eq!(
        MetadataMsg::parse(b"d8:msg_typei0e5:piecei0ee"),
        Some((MetadataMsg::Request { piece: 0 }, 25))
    );
    for bad in [
        &b"d8:msg_typei7e5:piecei0ee"[..],
        b"d5:piecei0ee",
        b"junk",
        b"",
    ] {
        assert_eq!(MetadataMsg::parse(bad), None, "{bad:?}");
    }
    // Ours offers ut_metadata when given the dict's size.
    let h = ExtHandshake::parse(&ExtHandshake::encode(10, Some(1234)));
    assert_eq!(
        (h.ut_metadata, h.metadata_size),
        (Some(UT_METADATA_ID), Some(1234))
    );
}
