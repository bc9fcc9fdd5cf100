//! The resume file: which pieces were verified *and flushed to disk*.
//!
//! Binary, small, self-checking:
//! `magic (16) | info-hash (32) | piece count (u32 LE) | bitfield | SHA-256 of all before (32)`.
//! Written atomically (temp file, fsync, rename, fsync of the directory), so
//! a crash leaves either the old file or the new one, never a torn one; a
//! torn, corrupt or foreign file is still detected by the checksum and the
//! header, and the caller falls back to a recheck.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::layout::Bitfield;
use crate::metainfo::InfoHash;

const MAGIC: &[u8; 16] = b"sluice-resume-01";

/// Why a resume file was not used.
#[derive(Debug, thiserror::Error)]
pub enum ResumeError {
    #[error("cannot read it")]
    Io(#[from] std::io::Error),
    #[error("it is not a sluice resume file")]
    NotResume,
    #[error("it is truncated or corrupt (checksum mismatch)")]
    Corrupt,
    #[error("it belongs to another torrent ({0})")]
    OtherTorrent(InfoHash),
    #[error("it records {found} pieces, the torrent has {expected}")]
    PieceCount { found: u32, expected: u32 },
}

/// Serialises the resume state.
pub fn encode(info_hash: InfoHash, verified: &Bitfield) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + 32 + 4 + verified.as_raw_slice().len() + 32);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&info_hash.0);
    out.extend_from_slice(&(verified.len() as u32).to_le_bytes());
    out.extend_from_slice(verified.as_raw_slice());
    let sum = Sha256::digest(&out);
    out.extend_from_slice(&sum);
    out
}

/// Parses resume state for the torrent `info_hash` with `pieces` pieces.
pub fn decode(bytes: &[u8], info_hash: InfoHash, pieces: u32) -> Result<Bitfield, ResumeError> {
    if bytes.len() < 16 || &bytes[..16] != MAGIC {
        return Err(ResumeError::NotResume);
    }
    let (body, sum) = bytes.split_at(bytes.len().saturating_sub(32).max(16));
    if sum.len() != 32 || Sha256::digest(body)[..] != sum[..] || body.len() < 16 + 32 + 4 {
        return Err(ResumeError::Corrupt);
    }
    let hash = InfoHash(body[16..48].try_into().expect("32 bytes"));
    if hash != info_hash {
        return Err(ResumeError::OtherTorrent(hash));
    }
    let found = u32::from_le_bytes(body[48..52].try_into().expect("4 bytes"));
    let raw = &body[52..];
    if found != pieces || raw.len() != (pieces as usize).div_ceil(8) {
        return Err(ResumeError::PieceCount {
            found,
            expected: pieces,
        });
    }
    let mut bits = Bitfield::from_slice(raw);
    bits.truncate(pieces as usize);
    Ok(bits)
}

/// Loads and checks the resume file at `path`.
pub fn load(path: &Path, info_hash: InfoHash, pieces: u32) -> Result<Bitfield, ResumeError> {
    decode(&fs::read(path)?, info_hash, pieces)
}

/// Writes the resume file atomically.
pub fn save(path: &Path, info_hash: InfoHash, verified: &Bitfield) -> std::io::Result<()> {
    write_atomically(path, &encode(info_hash, verified))
}

/// Writes `bytes` to `path` so that a crash or an error leaves either the old
/// file or the new one, never a torn one: a temp file beside it (created
/// with the usual permissions), fsync, rename, fsync of the directory.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fs::create_dir_all(dir)?;
    let mut tmp_name = path.file_name().unwrap_or_default().to_owned();
    tmp_name.push(format!(".{}.tmp", std::process::id()));
    let tmp = dir.join(tmp_name);
    let written = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written?;
    // Make the rename itself durable.
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bits(n: usize, set: &[usize]) -> Bitfield {
        let mut b = Bitfield::repeat(false, n);
        for &i in set {
            b.set(i, true);
        }
        b
    }

    #[test]
    fn round_trip_and_every_damage_is_detected() {
        let ih = InfoHash([3; 32]);
        let b = bits(13, &[0, 5, 12]);
        let bytes = encode(ih, &b);
        assert_eq!(decode(&bytes, ih, 13).unwrap(), b);
        for cut in 0..bytes.len() {
            assert!(
                decode(&bytes[..cut], ih, 13).is_err(),
                "truncated at {cut} accepted"
            );
        }
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x10;
            assert!(decode(&bad, ih, 13).is_err(), "flip at {i} accepted");
        }
        assert!(matches!(
            decode(&bytes, InfoHash([4; 32]), 13),
            Err(ResumeError::OtherTorrent(_))
        ));
        assert!(matches!(
            decode(&bytes, ih, 14),
            Err(ResumeError::PieceCount { .. })
        ));
    }

    #[test]
    fn save_is_atomic_and_loadable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/x.resume");
        let ih = InfoHash([9; 32]);
        save(&path, ih, &bits(3, &[1])).unwrap();
        save(&path, ih, &bits(3, &[1, 2])).unwrap();
        assert_eq!(load(&path, ih, 3).unwrap(), bits(3, &[1, 2]));
        let names: Vec<_> = fs::read_dir(path.parent().unwrap()).unwrap().collect();
        assert_eq!(names.len(), 1, "no temp file left behind");
    }
}
