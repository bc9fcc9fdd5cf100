//! The fetcher against a scripted peer that serves a real torrent's
//! metadata, honestly or with one lie.

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use sluice_storage::merkle::PieceTree;
use sluice_storage::{CreateOptions, MetaVersion, create};
use tokio::io::DuplexStream;

use super::*;
use crate::metadata::DEFAULT_MAX_METADATA;

/// How the scripted peer misbehaves.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Lie {
    None,
    /// One byte of the info dict flipped.
    Info,
    /// One piece hash flipped in every answer.
    Layer,
    /// A `metadata_size` of 1 GiB.
    Size,
    /// Rejects every `ut_metadata` request.
    Reject,
    /// Rejects every hash request.
    HashReject,
    /// Says nothing after its extension handshake.
    Silent,
    /// Asks us for metadata every few seconds instead of answering.
    Chatty,
}

/// A file of 40 pieces of 32 KiB (and a short tail): its piece layer is
/// asked for in one range; `torrent_of(600)` needs two.
fn torrent_of(pieces: u64, version: MetaVersion) -> (tempfile::TempDir, Metainfo) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("f.bin");
    let len = pieces * 32 * 1024 - 999;
    let data: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
    std::fs::write(&path, data).expect("write");
    let opts = CreateOptions::default()
        .with_piece_length(Some(32 * 1024))
        .with_version(version);
    let meta = create(&path, &opts, &AtomicU64::new(0)).expect("create");
    (dir, meta)
}

fn frame(id: u8, body: &[u8], out: &mut BytesMut) {
    out.put_u32(1 + body.len() as u32);
    out.put_u8(id);
    out.put_slice(body);
}

/// The scripted peer: answers what it is asked on `io` until it closes.
async fn peer(io: DuplexStream, meta: Metainfo, lie: Lie) {
    const THEIR_ID: u8 = 3;
    let mut conn = Conn {
        io,
        buf: BytesMut::new(),
        out: BytesMut::new(),
    };
    let mut info = meta.info().raw().to_vec();
    if lie == Lie::Info {
        info[10] ^= 1;
    }
    let size = if lie == Lie::Size {
        1 << 30
    } else {
        info.len()
    };
    let hs = ExtHandshake {
        client: Some("scripted".into()),
        reqq: None,
        ut_metadata: Some(THEIR_ID),
        metadata_size: Some(size as u32),
    };
    Extra::ExtHandshake(hs).encode(&mut conn.out);
    // What a seeder sends: a bitfield (dropped by the fetcher).
    frame(5, &[0xff; 8], &mut conn.out);
    if conn.send().await.is_err() {
        return;
    }
    if lie == Lie::Chatty {
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            Extra::Extended {
                id: UT_METADATA_ID,
                payload: MetadataMsg::Request { piece: 0 }.to_bytes().into(),
            }
            .encode(&mut conn.out);
            if conn.send().await.is_err() {
                return;
            }
        }
    }
    let far = Instant::now() + Duration::from_secs(30);
    while let Ok((id, body)) = conn.next(far).await {
        if lie == Lie::Silent {
            continue;
        }
        match id {
            EXTENDED if body.first() == Some(&THEIR_ID) => {
                let Some((MetadataMsg::Request { piece }, _)) = MetadataMsg::parse(&body[1..])
                else {
                    continue;
                };
                let mut payload = if lie == Lie::Reject {
                    MetadataMsg::Reject { piece }.to_bytes()
                } else {
                    MetadataMsg::Data {
                        piece,
                        total_size: size as u32,
                    }
                    .to_bytes()
                };
                if lie != Lie::Reject {
                    let start = piece as usize * METADATA_PIECE;
                    payload
                        .extend_from_slice(&info[start..(start + METADATA_PIECE).min(info.len())]);
                }
                Extra::Extended {
                    id: UT_METADATA_ID,
                    payload: payload.into(),
                }
                .encode(&mut conn.out);
            }
            21 => {
                let mut body = body;
                let spec = HashSpec::read(&mut body);
                let file = &meta.info().files()[0];
                let tree = PieceTree::new(
                    FileTree::new(file.length, meta.info().piece_length()),
                    meta.piece_layer(0),
                );
                let range = HashRange {
                    base: spec.base_layer,
                    index: spec.index,
                    count: spec.length,
                    proof_layers: spec.proof_layers,
                };
                match tree.answer(&range) {
                    Some(mut hashes) if lie != Lie::HashReject => {
                        if lie == Lie::Layer {
                            hashes[1][0] ^= 1;
                        }
                        Extra::Hashes {
                            spec,
                            hashes: hashes.concat().into(),
                        }
                        .encode(&mut conn.out);
                    }
                    _ => Extra::HashReject(spec).encode(&mut conn.out),
                }
            }
            _ => {}
        }
        if conn.send().await.is_err() {
            return;
        }
    }
}

async fn fetch_with(meta: &Metainfo, key: InfoHash, lie: Lie) -> Result<Fetched, FetchError> {
    fetch_capped(meta, key, lie, DEFAULT_MAX_METADATA).await
}

async fn fetch_capped(
    meta: &Metainfo,
    key: InfoHash,
    lie: Lie,
    cap: u64,
) -> Result<Fetched, FetchError> {
    let (a, b) = tokio::io::duplex(256 * 1024);
    let server = tokio::spawn(peer(b, meta.clone(), lie));
    let theirs = Handshake::ours([1; 20], [2; 20]);
    let got = tokio::time::timeout(Duration::from_secs(60), fetch(a, &theirs, key, cap))
        .await
        .expect("the fetch ends");
    server.abort();
    got
}

#[tokio::test]
async fn a_v2_torrent_comes_whole_and_byte_identical() {
    for pieces in [40, 600] {
        let (_dir, meta) = torrent_of(pieces, MetaVersion::V2);
        let got = fetch_with(&meta, meta.info().info_hash(), Lie::None).await;
        let Ok(Fetched::Whole(got)) = got else {
            panic!("{pieces} pieces: {got:?}");
        };
        assert_eq!(got.info().raw(), meta.info().raw());
        assert_eq!(got.piece_layer(0), meta.piece_layer(0), "{pieces} pieces");
    }
}

#[tokio::test]
async fn a_hybrid_by_its_v1_hash_leaves_the_layers_to_a_v2_connection() {
    let (_dir, meta) = torrent_of(40, MetaVersion::Hybrid);
    let v1 = InfoHash::of_v1(meta.info().v1_info_hash().expect("hybrid"));
    let Ok(Fetched::Info(raw)) = fetch_with(&meta, v1, Lie::None).await else {
        panic!("a hybrid by its v1 hash gives the info dict alone");
    };
    assert_eq!(raw, meta.info().raw());
    // The layers, over a second connection.
    let (a, b) = tokio::io::duplex(256 * 1024);
    let server = tokio::spawn(peer(b, meta.clone(), Lie::None));
    let theirs = Handshake::ours([1; 20], [2; 20]);
    let got = tokio::time::timeout(
        Duration::from_secs(30),
        fetch_layers(a, &theirs, &raw, DEFAULT_MAX_METADATA),
    )
    .await
    .expect("the fetch ends")
    .expect("layers");
    server.abort();
    assert_eq!(got.info().info_hash(), meta.info().info_hash());
    assert_eq!(got.piece_layer(0), meta.piece_layer(0));
}

#[tokio::test]
async fn a_v1_torrent_needs_no_layers() {
    let (_dir, meta) = torrent_of(40, MetaVersion::V1);
    let key = meta.info().info_hash();
    assert!(key.as_v1().is_some());
    let Ok(Fetched::Whole(got)) = fetch_with(&meta, key, Lie::None).await else {
        panic!("a v1 torrent comes whole");
    };
    assert_eq!(got.info().raw(), meta.info().raw());
}

#[tokio::test]
async fn lies_and_refusals_are_told_apart() {
    let (_dir, meta) = torrent_of(40, MetaVersion::V2);
    let key = meta.info().info_hash();
    for (lie, misbehaved) in [
        (Lie::Info, true),
        (Lie::Layer, true),
        (Lie::Size, true),
        (Lie::Reject, false),
        (Lie::HashReject, false),
    ] {
        let got = fetch_with(&meta, key, lie).await;
        let Err(e) = got else {
            panic!("{lie:?}: fetched");
        };
        assert_eq!(e.is_misbehaviour(), misbehaved, "{lie:?}: {e}");
    }
    // Another torrent's info dict is false, not lacking.
    let (_other_dir, other) = torrent_of(41, MetaVersion::V2);
    let got = fetch_with(&other, key, Lie::None).await;
    assert!(matches!(got, Err(FetchError::False(_))), "{got:?}");
}

#[tokio::test(start_paused = true)]
async fn a_silent_or_chatty_peer_times_out() {
    let (_dir, meta) = torrent_of(40, MetaVersion::V2);
    for lie in [Lie::Silent, Lie::Chatty] {
        let got = fetch_with(&meta, meta.info().info_hash(), lie).await;
        assert!(
            matches!(got, Err(FetchError::Timeout(_))),
            "{lie:?}: {got:?}"
        );
    }
}

#[tokio::test]
async fn layers_over_the_cap_are_refused_before_they_are_asked_for() {
    let (_dir, meta) = torrent_of(600, MetaVersion::V2);
    let dict = meta.info().raw().len() as u64;
    // Room for the dict and half the layer (600 pieces, 32 bytes each).
    let got = fetch_capped(&meta, meta.info().info_hash(), Lie::None, dict + 300 * 32).await;
    assert!(
        matches!(got, Err(FetchError::TooLarge { size, .. }) if size == dict + 600 * 32),
        "{got:?}"
    );
}

#[tokio::test]
async fn a_peer_without_the_extension_protocol_lacks_it() {
    let (a, _b) = tokio::io::duplex(1024);
    let plain = Handshake {
        reserved: [0; 8],
        info_hash: [1; 20],
        peer_id: [2; 20],
    };
    let got = fetch(a, &plain, InfoHash([7; 32]), DEFAULT_MAX_METADATA).await;
    assert!(matches!(got, Err(FetchError::Lacks)), "{got:?}");
}
