//! Making a `.torrent` from files on disk (`sluice create`).

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;

use crate::error::StorageError;
use crate::hash::{default_threads, hash_pieces, hash_pieces_hybrid, hash_pieces_v1};
use crate::layout::Layout;
use crate::merkle::{FileTree, Hash};
use crate::metainfo::{
    FileInfo, MAX_FILES, MAX_PIECE_LENGTH, MIN_PIECE_LENGTH, MetaVersion, Metainfo, Sha1Hash,
};

/// Options for [`create`].
#[derive(Debug, Clone)]
pub struct CreateOptions {
    piece_length: Option<u32>,
    name: Option<String>,
    threads: usize,
    creation_date: Option<i64>,
    trackers: Vec<String>,
    version: MetaVersion,
}

impl Default for CreateOptions {
    fn default() -> Self {
        Self {
            piece_length: None,
            name: None,
            threads: default_threads(),
            creation_date: None,
            trackers: Vec::new(),
            version: MetaVersion::Hybrid,
        }
    }
}

impl CreateOptions {
    /// Piece length in bytes; default: chosen from the total size
    /// ([`auto_piece_length`]).
    pub fn with_piece_length(mut self, piece_length: Option<u32>) -> Self {
        self.piece_length = piece_length;
        self
    }

    /// The torrent's name; default: the file or directory name.
    pub fn with_name(mut self, name: Option<String>) -> Self {
        self.name = name;
        self
    }

    /// Hashing threads; default: every core.
    pub fn with_threads(mut self, threads: usize) -> Self {
        self.threads = threads.max(1);
        self
    }

    /// `creation date` (Unix seconds) written outside the info dict;
    /// default: none, so the same files always give the same bytes.
    pub fn with_creation_date(mut self, date: Option<i64>) -> Self {
        self.creation_date = date;
        self
    }

    /// v1 only, v2 only, or hybrid (v2 with a v1 part, so v1-only
    /// clients can join); default hybrid, as libtorrent 2.0 makes.
    pub fn with_version(mut self, version: MetaVersion) -> Self {
        self.version = version;
        self
    }

    /// Tracker URLs (`announce`, and `announce-list` with each in its own
    /// tier, tried in this order); default none.
    pub fn with_trackers(mut self, urls: Vec<String>) -> Self {
        self.trackers = urls;
        self
    }
}

/// Smallest power of two ≥ 16 KiB giving at most ~1500 pieces, capped at
/// 16 MiB. v2 piece layers cost 32 bytes a piece, so this keeps a `.torrent`
/// small while pieces stay fine-grained enough to spread in a swarm.
pub fn auto_piece_length(total_size: u64) -> u32 {
    const TARGET_PIECES: u64 = 1500;
    let want = total_size.div_ceil(TARGET_PIECES).next_power_of_two();
    want.clamp(u64::from(MIN_PIECE_LENGTH), 16 * 1024 * 1024) as u32
}

/// A file found under the path given to [`create`].
#[derive(Debug, Clone)]
pub struct SourceFile {
    pub path: Vec<String>,
    pub disk_path: PathBuf,
    pub length: u64,
}

/// Lists the files of `root` (a file or a directory) in file-tree order.
/// Symlinks are followed; empty directories are skipped (v2 cannot express
/// them); anything that is not a regular file is refused.
pub fn scan(root: &Path) -> Result<(String, Vec<SourceFile>), StorageError> {
    let (name, mut files) = scan_in_walk_order(root)?;
    // File-tree order: bytewise by path components (bencode dict order).
    files.sort_by(|a, b| a.path.cmp(&b.path));
    Ok((name, files))
}

/// [`scan`], in the order the directories list their entries, depth
/// first: the order libtorrent puts a v1 torrent's files in.
fn scan_in_walk_order(root: &Path) -> Result<(String, Vec<SourceFile>), StorageError> {
    let meta = std::fs::metadata(root).map_err(StorageError::io("reading", root))?;
    let name = root
        .canonicalize()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_owned()))
        .and_then(|n| n.into_string().ok())
        .ok_or_else(|| input(root, "has no usable UTF-8 file name"))?;
    if meta.is_file() {
        let file = SourceFile {
            path: vec![name.clone()],
            disk_path: root.to_owned(),
            length: meta.len(),
        };
        return Ok((name, vec![file]));
    }
    if !meta.is_dir() {
        return Err(input(root, "is neither a file nor a directory"));
    }
    let mut files = Vec::new();
    walk(root, &mut Vec::new(), &mut files)?;
    if files.is_empty() {
        return Err(input(root, "contains no files"));
    }
    Ok((name, files))
}

fn input(path: &Path, reason: &str) -> StorageError {
    StorageError::Input {
        path: path.to_owned(),
        reason: reason.to_owned(),
    }
}

fn walk(dir: &Path, rel: &mut Vec<String>, out: &mut Vec<SourceFile>) -> Result<(), StorageError> {
    let entries = std::fs::read_dir(dir).map_err(StorageError::io("listing", dir))?;
    for entry in entries {
        let entry = entry.map_err(StorageError::io("listing", dir))?;
        let path = entry.path();
        let name = entry
            .file_name()
            .into_string()
            .map_err(|_| input(&path, "file name is not valid UTF-8"))?;
        let meta = std::fs::metadata(&path).map_err(StorageError::io("reading", &path))?;
        rel.push(name);
        if meta.is_dir() {
            walk(&path, rel, out)?;
        } else if meta.is_file() {
            if out.len() == MAX_FILES {
                return Err(input(dir, &format!("holds more than {MAX_FILES} files")));
            }
            out.push(SourceFile {
                path: rel.clone(),
                disk_path: path,
                length: meta.len(),
            });
        } else {
            return Err(input(&path, "is neither a file nor a directory"));
        }
        rel.pop();
    }
    Ok(())
}

/// Hashes the files at `root` and builds a v2 `.torrent`. `progress` counts
/// bytes hashed (for a progress bar).
pub fn create(
    root: &Path,
    options: &CreateOptions,
    progress: &AtomicU64,
) -> Result<Metainfo, StorageError> {
    // v1 keeps the directories' own order, as libtorrent does (so a v1
    // torrent of the same files matches libtorrent's on this machine).
    let (default_name, mut files) = if options.version == MetaVersion::V1 {
        scan_in_walk_order(root)?
    } else {
        scan(root)?
    };
    let name = options.name.clone().unwrap_or(default_name);
    if root.is_file() {
        // A single file is stored under the torrent's name. (A directory
        // holding one file keeps the file's own name, as libtorrent does.)
        files[0].path = vec![name.clone()];
    }
    let total: u64 = files.iter().map(|f| f.length).sum();
    let piece_length = match options.piece_length {
        None => auto_piece_length(total),
        Some(p) if p.is_power_of_two() && (MIN_PIECE_LENGTH..=MAX_PIECE_LENGTH).contains(&p) => p,
        Some(p) => {
            return Err(input(
                root,
                &format!("piece size {p} is not a power of two between 16 KiB and 256 MiB"),
            ));
        }
    };
    if options.version == MetaVersion::V1 {
        return create_v1(root, &name, files, piece_length, options, progress);
    }
    let layout = Layout::from_lengths(piece_length, files.iter().map(|f| f.length));
    let paths: Vec<PathBuf> = files.iter().map(|f| f.disk_path.clone()).collect();
    let (hashes, v1): (Vec<Option<Hash>>, Option<Vec<Option<Sha1Hash>>>) = match options.version {
        MetaVersion::V1 => unreachable!("made above"),
        MetaVersion::V2 => (
            hash_pieces(&layout, &paths, options.threads, progress),
            None,
        ),
        MetaVersion::Hybrid => {
            // A lone file has no pad file after it (libtorrent's rule).
            let pad = files.len() > 1;
            let both = hash_pieces_hybrid(&layout, &paths, options.threads, progress, pad);
            let v2 = both.iter().map(|h| h.map(|(v2, _)| v2)).collect();
            let v1 = both.iter().map(|h| h.map(|(_, v1)| v1)).collect();
            (v2, Some(v1))
        }
    };
    let v1: Option<Vec<Sha1Hash>> = v1
        .map(|v| v.into_iter().collect::<Option<_>>())
        .map(|v| v.ok_or_else(|| input(root, "changed or vanished while hashing")))
        .transpose()?;

    let mut infos = Vec::with_capacity(files.len());
    let mut layers = Vec::with_capacity(files.len());
    for (i, file) in files.iter().enumerate() {
        let pieces = layout.file_pieces(i);
        let hashes: Vec<Hash> = hashes[pieces.start as usize..pieces.end as usize]
            .iter()
            .map(|h| h.ok_or_else(|| input(&file.disk_path, "changed or vanished while hashing")))
            .collect::<Result<_, _>>()?;
        let tree = FileTree::new(file.length, piece_length);
        let (root, layer) = match hashes.as_slice() {
            [] => (None, Vec::new()),
            [only] if !tree.has_piece_layer() => (Some(*only), Vec::new()),
            _ => (Some(tree.root_from_piece_layer(&hashes)), hashes),
        };
        infos.push(FileInfo {
            path: file.path.clone(),
            length: file.length,
            pieces_root: root,
        });
        layers.push(layer);
    }
    Ok(Metainfo::build(
        &name,
        piece_length,
        &infos,
        &layers,
        options.creation_date,
        &options.trackers,
        v1.as_deref(),
    )?)
}

/// A v1-only torrent, as libtorrent 2.0 makes one: the files in the order
/// the directories list them (depth first), no pad files, SHA-1 pieces
/// over the files end to end.
fn create_v1(
    root: &Path,
    name: &str,
    files: Vec<SourceFile>,
    piece_length: u32,
    options: &CreateOptions,
    progress: &AtomicU64,
) -> Result<Metainfo, StorageError> {
    if files.iter().all(|f| f.length == 0) {
        return Err(input(
            root,
            "holds no data: a v1 torrent needs at least one byte",
        ));
    }
    let layout = Layout::end_to_end(piece_length, files.iter().map(|f| f.length));
    let paths: Vec<PathBuf> = files.iter().map(|f| f.disk_path.clone()).collect();
    let pieces: Vec<Sha1Hash> = hash_pieces_v1(&layout, &paths, options.threads, progress)
        .into_iter()
        .collect::<Option<_>>()
        .ok_or_else(|| input(root, "changed or vanished while hashing"))?;
    let infos: Vec<FileInfo> = files
        .iter()
        .map(|f| FileInfo {
            path: f.path.clone(),
            length: f.length,
            pieces_root: None,
        })
        .collect();
    Ok(Metainfo::build_v1(
        name,
        piece_length,
        &infos,
        &pieces,
        options.creation_date,
        &options.trackers,
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_piece_length_is_a_bounded_power_of_two() {
        assert_eq!(auto_piece_length(0), 16 * 1024);
        assert_eq!(auto_piece_length(1), 16 * 1024);
        assert_eq!(auto_piece_length(1 << 30), 1 << 20);
        assert_eq!(auto_piece_length(1 << 50), 16 << 20);
    }
}
