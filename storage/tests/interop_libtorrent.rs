//! Interop with libtorrent, the reference BitTorrent v2 implementation: for
//! each layout, sluice and libtorrent must make the same info-hash and piece
//! layers from the same files, and each must read the other's `.torrent`
//! the same way.
//!
//! Needs Debian's `python3-libtorrent` (imported by `/usr/bin/python3`).
//! Without it the build script marks the test ignored, so it shows as
//! skipped — unless `SLUICE_REQUIRE_LIBTORRENT=1` (CI sets it), when the
//! build fails.

#![allow(clippy::unwrap_used, clippy::print_stdout, reason = "test helpers")]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::AtomicU64;

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;
use sluice_storage::{CreateOptions, Layout, MetaVersion, Metainfo, create};

const PYTHON: &str = "/usr/bin/python3";
const B: usize = 16 * 1024;

fn helper() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/lt_helper.py")
}

fn python(args: &[&str]) -> Result<String> {
    let out = Command::new(PYTHON)
        .arg(helper())
        .args(args)
        .output()
        .context("running python")?;
    if !out.status.success() {
        bail!(
            "libtorrent helper {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8(out.stdout)?)
}

/// Deterministic, incompressible-enough content.
fn content(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn write(path: &Path, len: usize, seed: u64) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, content(len, seed)).unwrap();
}

/// Compares one layout, as v2 only and as hybrid. `root` is the file or
/// directory to share.
fn check(root: &Path, piece_length: u32) -> Result<()> {
    for version in [MetaVersion::V2, MetaVersion::Hybrid, MetaVersion::V1] {
        check_version(root, piece_length, version).with_context(|| format!("{version:?}"))?;
    }
    Ok(())
}

fn check_version(root: &Path, piece_length: u32, version: MetaVersion) -> Result<()> {
    let work = root.parent().unwrap();
    let theirs_path = work.join("libtorrent.torrent");
    let kind = match version {
        MetaVersion::V2 => "v2",
        MetaVersion::Hybrid => "hybrid",
        MetaVersion::V1 => "v1",
    };
    python(&[
        "create",
        root.to_str().unwrap(),
        &piece_length.to_string(),
        theirs_path.to_str().unwrap(),
        kind,
    ])?;
    let theirs = Metainfo::from_bytes(&std::fs::read(&theirs_path)?)
        .context("sluice refused libtorrent's torrent")?;

    let ours = create(
        root,
        &CreateOptions::default()
            .with_piece_length(Some(piece_length))
            .with_version(version)
            .with_threads(2),
        &AtomicU64::new(0),
    )?;
    let ours_path = work.join("sluice.torrent");
    std::fs::write(&ours_path, ours.to_bytes())?;

    // Same info dict, byte for byte.
    ensure!(
        ours.info().info_hash() == theirs.info().info_hash(),
        "info-hash differs: sluice {} libtorrent {}\nsluice info: {}\nlibtorrent info: {}",
        ours.info().info_hash(),
        theirs.info().info_hash(),
        String::from_utf8_lossy(ours.info().raw()),
        String::from_utf8_lossy(theirs.info().raw()),
    );
    ensure!(ours.info().files() == theirs.info().files(), "files differ");
    ensure!(ours.info().version() == version && theirs.info().version() == version);
    ensure!(ours.info().v1_info_hash() == theirs.info().v1_info_hash());
    for i in 0..ours.info().files().len() {
        ensure!(
            ours.piece_layer(i) == theirs.piece_layer(i),
            "piece layer of file {i} differs"
        );
    }

    // libtorrent reads sluice's torrent as sluice reads it.
    let seen: Value = serde_json::from_str(&python(&["inspect", ours_path.to_str().unwrap()])?)?;
    let info = ours.info();
    let layout = Layout::new(info);
    let v2_hash = (version != MetaVersion::V1).then(|| info.info_hash().to_string());
    ensure!(
        seen["info_hash"].as_str() == v2_hash.as_deref(),
        "libtorrent info-hash {seen}"
    );
    ensure!(
        seen["v1_info_hash"].as_str() == info.v1_info_hash().map(hex::encode).as_deref(),
        "libtorrent v1 info-hash {seen}"
    );
    // libtorrent names a single-file torrent after its file (which is
    // also the torrent's name unless a directory held that one file).
    let want_name = if info.is_single_file() {
        info.files()[0].path[0].as_str()
    } else {
        info.name()
    };
    ensure!(seen["name"] == want_name, "name: {}", seen["name"]);
    ensure!(seen["piece_length"] == info.piece_length(), "piece length");
    ensure!(
        seen["num_pieces"] == layout.num_pieces(),
        "libtorrent counts {} pieces, sluice {}",
        seen["num_pieces"],
        layout.num_pieces()
    );
    let their_files = seen["files"].as_array().context("files")?;
    ensure!(their_files.len() == info.files().len(), "file count");
    for (i, (f, t)) in info.files().iter().zip(their_files).enumerate() {
        let want_path = if info.is_single_file() {
            f.display_path()
        } else {
            format!("{}/{}", info.name(), f.display_path())
        };
        ensure!(
            t["path"] == want_path.as_str(),
            "file {i}: {} vs {want_path}",
            t["path"]
        );
        ensure!(t["size"] == f.length, "file {i} size");
        let root = f.pieces_root.map(hex::encode);
        ensure!(t["root"].as_str() == root.as_deref(), "file {i} root");
        if f.length > 0 && version != MetaVersion::V1 {
            ensure!(
                t["first_piece"] == layout.file_pieces(i).start,
                "file {i} first piece"
            );
        }
    }
    Ok(())
}

#[test]
#[cfg_attr(
    sluice_no_libtorrent,
    ignore = "needs /usr/bin/python3 with libtorrent: apt-get install python3-libtorrent"
)]
fn same_torrents_as_libtorrent() -> Result<()> {
    let single: &[(&str, usize, u32)] = &[
        ("one-byte", 1, 16 * 1024),
        ("one-block", B, 16 * 1024),
        ("block-plus-one", B + 1, 16 * 1024),
        ("one-piece", 4 * B, 64 * 1024),
        ("many-pieces-short-last", 37 * B + 1234, 64 * 1024),
        ("small-in-big-piece", 3 * B + 5, 1024 * 1024),
        ("big-pieces", 5 * 1024 * 1024 + 77, 1024 * 1024),
    ];
    for (i, &(name, len, piece_length)) in single.iter().enumerate() {
        let dir = tempfile::tempdir()?;
        let file = dir.path().join(format!("{name}.bin"));
        write(&file, len, i as u64);
        check(&file, piece_length).with_context(|| format!("layout {name}"))?;
    }

    // A directory with nested and empty files, names that sort tricky
    // (bytewise: "a" < "a.txt" < "b"; "B" < "a").
    for piece_length in [16 * 1024, 32 * 1024] {
        let dir = tempfile::tempdir()?;
        let root = dir.path().join("tree");
        write(&root.join("a/x.bin"), 3 * B + 1, 10);
        write(&root.join("a/deeper/y.bin"), B, 11);
        write(&root.join("a.txt"), 100, 12);
        write(&root.join("B.bin"), 70_000, 13);
        write(&root.join("empty"), 0, 14);
        write(&root.join("a/also-empty"), 0, 15);
        write(&root.join("z/one-byte"), 1, 16);
        check(&root, piece_length)
            .with_context(|| format!("directory, pieces of {piece_length}"))?;
    }

    // A directory holding one file: the file keeps its own name in the
    // file tree, under the directory's name.
    let dir = tempfile::tempdir()?;
    let root = dir.path().join("share");
    write(&root.join("a.bin"), 5 * B + 3, 17);
    check(&root, 16 * 1024).context("a directory with one file")?;
    Ok(())
}
