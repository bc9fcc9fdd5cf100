//! BitTorrent v2 (BEP 52) metainfo, and hybrid torrents (a v2 info dict
//! that also carries a v1 `files` list with pad files and SHA-1 `pieces`):
//! parse and validate untrusted `.torrent` bytes, and build them.
//!
//! A hybrid's v1 part must describe exactly the v2 files, each padded to
//! a whole piece (BEP 47 pad files), so v1 piece *i* is v2 piece *i* plus
//! zeros: one layout serves both.
//!
//! Everything a peer or a file can put here is checked once, at this
//! boundary: path components, sizes, piece length, and that every piece
//! layer hashes up to its file's `pieces root`. Errors name the field.

use std::fmt;
use std::str::FromStr;

use sha1::Sha1;
use sha2::{Digest, Sha256};

use crate::bencode::{self, Dict, Value};
use crate::merkle::{BLOCK_SIZE, FileTree, Hash};

/// Smallest piece length BEP 52 allows (one block).
pub const MIN_PIECE_LENGTH: u32 = BLOCK_SIZE;
/// Largest piece length sluice accepts (256 MiB): a piece's leaf hashes and
/// its blocks are tracked in memory while it downloads.
pub const MAX_PIECE_LENGTH: u32 = 256 * 1024 * 1024;
/// Most files one torrent may list.
pub const MAX_FILES: usize = 1 << 20;
/// Longest path component, in bytes (what common file systems allow).
pub const MAX_COMPONENT: usize = 255;
/// Longest path of one file, in bytes, components joined with `/`.
pub const MAX_PATH: usize = 4096;
/// Most bytes of file paths (all files together) a torrent may describe:
/// deep directories shared by many files must not multiply into gigabytes.
pub const MAX_TOTAL_PATH_BYTES: usize = 64 * 1024 * 1024;
/// Largest `.torrent` accepted, in bytes. Piece layers of a 1 TiB torrent
/// in 1 MiB pieces take 32 MiB.
pub const MAX_TORRENT_BYTES: usize = 64 * 1024 * 1024;

/// What a torrent is known by: the v2 info-hash (SHA-256 of the bencoded
/// `info` dict) of a v2 or hybrid torrent; for a v1-only torrent its v1
/// info-hash (SHA-1) followed by 12 zero bytes, shown as 40 hex digits
/// (a SHA-256 digest ending in 96 zero bits does not happen).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InfoHash(pub [u8; 32]);

impl InfoHash {
    pub fn of_info_bytes(info: &[u8]) -> Self {
        Self(Sha256::digest(info).into())
    }

    /// A v1-only torrent's key: its SHA-1 info-hash, zero-extended.
    pub fn of_v1(v1: Sha1Hash) -> Self {
        let mut out = [0u8; 32];
        out[..20].copy_from_slice(&v1);
        Self(out)
    }

    /// The v1 info-hash, if this is a v1-only torrent's key.
    pub fn as_v1(&self) -> Option<Sha1Hash> {
        self.0[20..]
            .iter()
            .all(|&b| b == 0)
            .then(|| self.0[..20].try_into().expect("20 bytes"))
    }

    /// Whether `info` (a bencoded info dict) is the one this names: its
    /// SHA-1 for a v1 key, else its SHA-256.
    pub fn names_info(&self, info: &[u8]) -> bool {
        match self.as_v1() {
            Some(v1) => <[u8; 20]>::from(Sha1::digest(info)) == v1,
            None => Self::of_info_bytes(info) == *self,
        }
    }

    /// First 8 hex digits, for logs.
    pub fn short(&self) -> String {
        hex::encode(&self.0[..4])
    }
}

impl fmt::Display for InfoHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.as_v1() {
            Some(v1) => f.write_str(&hex::encode(v1)),
            None => f.write_str(&hex::encode(self.0)),
        }
    }
}

impl fmt::Debug for InfoHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "InfoHash({self})")
    }
}

impl FromStr for InfoHash {
    type Err = MetainfoError;

    /// 64 hex digits (v2), or 40 (a v1-only torrent's).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || MetainfoError::Field {
            field: "info-hash".into(),
            reason: format!("{s:?} is not 64 (v2) or 40 (v1) hex digits"),
        };
        if s.len() == 40 {
            let mut v1 = [0u8; 20];
            hex::decode_to_slice(s, &mut v1).map_err(|_| bad())?;
            return Ok(Self::of_v1(v1));
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).map_err(|_| bad())?;
        Ok(Self(out))
    }
}

impl serde::Serialize for InfoHash {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Why a `.torrent` or an `info` dict was refused.
#[derive(Debug, thiserror::Error)]
pub enum MetainfoError {
    #[error(transparent)]
    Bencode(#[from] bencode::DecodeError),
    #[error("{field}: {reason}")]
    Field { field: String, reason: String },
}

fn field_err(field: impl Into<String>, reason: impl Into<String>) -> MetainfoError {
    MetainfoError::Field {
        field: field.into(),
        reason: reason.into(),
    }
}

/// One file of a torrent, in file-tree order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileInfo {
    /// Path components below the torrent's root, each validated: not empty,
    /// not `.` or `..`, no `/`, `\` or NUL, valid UTF-8.
    pub path: Vec<String>,
    /// Length in bytes.
    pub length: u64,
    /// Merkle root of the file (`None` for an empty file).
    pub pieces_root: Option<Hash>,
}

impl FileInfo {
    /// The path joined with `/`, for display.
    pub fn display_path(&self) -> String {
        self.path.join("/")
    }
}

/// Which BitTorrent versions a torrent speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MetaVersion {
    /// BEP 3 only: SHA-1 piece hashes over the files end to end.
    V1,
    /// BEP 52 only.
    V2,
    /// BEP 52 and a v1 part (SHA-1 pieces over files padded to pieces).
    Hybrid,
}

/// A v1 info-hash or piece hash: SHA-1.
pub type Sha1Hash = [u8; 20];

/// The v1 part of a hybrid torrent.
#[derive(Debug, Clone)]
struct V1Part {
    /// SHA-1 of each piece, padded with zeros to the piece length (but a
    /// single file's last piece).
    pieces: Vec<Sha1Hash>,
    /// SHA-1 of the info dict: what v1 peers and trackers know it by.
    info_hash: Sha1Hash,
    /// The `length` form: one file, named after the torrent.
    single: bool,
    /// A hybrid's last file is followed by a pad file (libtorrent 2.0.4
    /// and later write one; older ones and others may not).
    tail_padded: bool,
}

/// The validated `info` dict.
#[derive(Debug, Clone)]
pub struct Info {
    name: String,
    piece_length: u32,
    files: Vec<FileInfo>,
    info_hash: InfoHash,
    v1: Option<V1Part>,
    /// It has a v2 part (file tree, piece layers).
    v2: bool,
    raw: Vec<u8>,
}

/// The pad after a file of `length` bytes to the next piece boundary.
pub fn pad_after(length: u64, piece_length: u32) -> u64 {
    let rem = length % u64::from(piece_length);
    if rem == 0 {
        0
    } else {
        u64::from(piece_length) - rem
    }
}

/// A `files` entry marked as a pad file (BEP 47 `attr` containing `p`).
fn is_pad(entry: &Dict<'_>) -> bool {
    matches!(entry.get(b"attr"), Some(Value::Bytes(a)) if a.contains(&b'p'))
}

/// Checks a hybrid's v1 part against its (validated) v2 files.
fn parse_v1_part(
    dict: &Dict<'_>,
    pieces: &[u8],
    files: &[FileInfo],
    name: &str,
    piece_length: u32,
    num_pieces: u64,
) -> Result<V1Part, MetainfoError> {
    if !pieces.len().is_multiple_of(20) || pieces.len() as u64 / 20 != num_pieces {
        return Err(field_err(
            "info.pieces",
            format!(
                "is {} bytes; the files' {num_pieces} pieces need {}",
                pieces.len(),
                num_pieces * 20
            ),
        ));
    }
    let differ = |why: String| {
        field_err(
            "info.files",
            format!("the v1 part describes other files than the v2 file tree: {why}"),
        )
    };
    let mut tail_padded = false;
    match (dict.get(b"files"), dict.get(b"length")) {
        (Some(Value::List(list)), None) => {
            let mut want = files.iter().peekable();
            let mut pad_due = 0u64;
            let mut last_was_pad = false;
            for (i, entry) in list.iter().enumerate() {
                let Value::Dict(f) = entry else {
                    return Err(differ(format!("entry {i} is not a dict")));
                };
                let length = match f.get(b"length") {
                    Some(Value::Int(n)) => u64::try_from(*n)
                        .map_err(|_| differ(format!("entry {i} has length {n}")))?,
                    _ => return Err(differ(format!("entry {i} has no length"))),
                };
                let is_pad = is_pad(f);
                last_was_pad = is_pad;
                if is_pad {
                    if length != pad_due {
                        return Err(differ(format!(
                            "pad file {i} is {length} bytes, the file before it needs {pad_due}"
                        )));
                    }
                    pad_due = 0;
                    continue;
                }
                if pad_due != 0 {
                    return Err(differ(format!("no pad file before entry {i}")));
                }
                let path: Vec<&[u8]> = match f.get(b"path") {
                    Some(Value::List(p)) => p
                        .iter()
                        .map(|c| match c {
                            Value::Bytes(b) => Ok(*b),
                            _ => Err(differ(format!("entry {i}'s path is not strings"))),
                        })
                        .collect::<Result<_, _>>()?,
                    _ => return Err(differ(format!("entry {i} has no path"))),
                };
                let Some(v2) = want.next() else {
                    return Err(differ(format!("entry {i} is extra")));
                };
                let same_path = path.len() == v2.path.len()
                    && path.iter().zip(&v2.path).all(|(a, b)| *a == b.as_bytes());
                if !same_path || length != v2.length {
                    return Err(differ(format!(
                        "entry {i} is not {} ({} bytes)",
                        v2.display_path(),
                        v2.length
                    )));
                }
                pad_due = pad_after(length, piece_length);
            }
            // The last file's pad is optional (libtorrent writes it).
            if let Some(missing) = want.next() {
                return Err(differ(format!("{} is missing", missing.display_path())));
            }
            tail_padded = last_was_pad || pad_due == 0;
        }
        (None, Some(Value::Int(n))) => {
            let single = files.len() == 1 && files[0].path == [name];
            if !single || u64::try_from(*n).ok() != Some(files[0].length) {
                return Err(differ("a single-file v1 part for other files".into()));
            }
        }
        _ => return Err(differ("neither `files` nor `length`".into())),
    }
    Ok(V1Part {
        pieces: pieces
            .chunks_exact(20)
            .map(|c| c.try_into().expect("chunks of 20"))
            .collect(),
        info_hash: Sha1::digest(dict.raw).into(),
        single: dict.get(b"length").is_some(),
        tail_padded,
    })
}

impl Info {
    /// Parses and validates a bencoded `info` dict.
    pub fn from_bytes(raw: &[u8]) -> Result<Self, MetainfoError> {
        if raw.len() > MAX_TORRENT_BYTES {
            return Err(field_err(
                "info",
                format!("is {} bytes; the limit is {MAX_TORRENT_BYTES}", raw.len()),
            ));
        }
        let value = bencode::decode_lenient(raw)?;
        let Value::Dict(dict) = &value else {
            return Err(field_err("info", "is not a dict"));
        };
        Self::from_dict(dict)
    }

    fn from_dict(dict: &Dict<'_>) -> Result<Self, MetainfoError> {
        match dict.get(b"meta version") {
            Some(Value::Int(2)) => {}
            Some(Value::Int(v)) => {
                return Err(field_err(
                    "info.meta version",
                    format!("version {v} is not supported (sluice reads BitTorrent v1 and v2)"),
                ));
            }
            Some(_) => return Err(field_err("info.meta version", "is not an integer")),
            None => return Self::from_v1_dict(dict),
        }
        let name = name_of(dict)?;
        let piece_length = piece_length_of(dict)?;
        let tree = match dict.get(b"file tree") {
            Some(Value::Dict(d)) => d,
            Some(_) => return Err(field_err("info.file tree", "is not a dict")),
            None => return Err(field_err("info.file tree", "missing")),
        };
        let mut files = Vec::new();
        let mut path = Vec::new();
        walk_file_tree(tree, &mut path, 0, &mut 0, &mut files)?;
        if files.is_empty() {
            return Err(field_err("info.file tree", "lists no files"));
        }
        let total: u64 = files
            .iter()
            .try_fold(0u64, |acc, f| acc.checked_add(f.length))
            .ok_or_else(|| field_err("info.file tree", "total size overflows 64 bits"))?;
        let pieces: u64 = files
            .iter()
            .map(|f| f.length.div_ceil(u64::from(piece_length)))
            .sum();
        if pieces > u64::from(u32::MAX) {
            return Err(field_err(
                "info.piece length",
                format!("{total} bytes in {piece_length}-byte pieces is more than 2^32 pieces"),
            ));
        }
        let v1 = match dict.get(b"pieces") {
            None => None,
            Some(Value::Bytes(p)) => {
                Some(parse_v1_part(dict, p, &files, &name, piece_length, pieces)?)
            }
            Some(_) => return Err(field_err("info.pieces", "is not a string")),
        };
        Ok(Self {
            name,
            piece_length,
            files,
            info_hash: InfoHash::of_info_bytes(dict.raw),
            v1,
            v2: true,
            raw: dict.raw.to_vec(),
        })
    }

    /// A v1-only info dict (BEP 3): `pieces`, and `length` (one file named
    /// after the torrent) or `files`. Pad files (BEP 47) are kept as
    /// files, as clients without BEP 47 keep them.
    fn from_v1_dict(dict: &Dict<'_>) -> Result<Self, MetainfoError> {
        let name = name_of(dict)?;
        let piece_length = piece_length_of(dict)?;
        let mut files = Vec::new();
        let single = dict.get(b"length").is_some();
        match (dict.get(b"length"), dict.get(b"files")) {
            (Some(Value::Int(n)), None) => {
                let length = u64::try_from(*n)
                    .map_err(|_| field_err("info.length", format!("{n} is negative")))?;
                files.push(FileInfo {
                    path: vec![name.clone()],
                    length,
                    pieces_root: None,
                });
            }
            (None, Some(Value::List(list))) => {
                let mut total_path_bytes = 0usize;
                let mut pads = std::collections::HashSet::new();
                for (i, entry) in list.iter().enumerate() {
                    let field = |what: &str| format!("info.files[{i}]{what}");
                    let Value::Dict(f) = entry else {
                        return Err(field_err(field(""), "is not a dict"));
                    };
                    let length = match f.get(b"length") {
                        Some(Value::Int(n)) => u64::try_from(*n)
                            .map_err(|_| field_err(field(".length"), format!("{n} is negative")))?,
                        _ => return Err(field_err(field(".length"), "missing or not an integer")),
                    };
                    let Some(Value::List(parts)) = f.get(b"path") else {
                        return Err(field_err(field(".path"), "missing or not a list"));
                    };
                    if parts.is_empty() {
                        return Err(field_err(field(".path"), "is empty"));
                    }
                    let mut path = Vec::with_capacity(parts.len());
                    for c in parts {
                        let Value::Bytes(b) = c else {
                            return Err(field_err(
                                field(".path"),
                                "has a part that is not a string",
                            ));
                        };
                        path.push(path_component(|| field(".path"), b)?);
                    }
                    let bytes = path.iter().map(|c| c.len() + 1).sum::<usize>();
                    if bytes > MAX_PATH {
                        return Err(field_err(
                            field(".path"),
                            format!("is longer than {MAX_PATH} bytes"),
                        ));
                    }
                    total_path_bytes += bytes;
                    if total_path_bytes > MAX_TOTAL_PATH_BYTES {
                        return Err(field_err(
                            "info.files",
                            format!("file paths add up to more than {MAX_TOTAL_PATH_BYTES} bytes"),
                        ));
                    }
                    if files.len() == MAX_FILES {
                        return Err(field_err(
                            "info.files",
                            format!("more than {MAX_FILES} files"),
                        ));
                    }
                    if is_pad(f) {
                        pads.insert(files.len());
                    }
                    files.push(FileInfo {
                        path,
                        length,
                        pieces_root: None,
                    });
                }
                // Two files at one path would overwrite each other (pad
                // files are all zeros: libtorrent names them by size).
                let mut seen = std::collections::HashSet::new();
                for (i, f) in files.iter().enumerate() {
                    if !pads.contains(&i) && !seen.insert(&f.path) {
                        return Err(field_err(
                            "info.files",
                            format!("{} is listed twice", f.display_path()),
                        ));
                    }
                }
            }
            (Some(_), Some(_)) => return Err(field_err("info", "has both length and files")),
            _ => return Err(field_err("info.files", "missing (and no length)")),
        }
        let total: u64 = files
            .iter()
            .try_fold(0u64, |acc, f| acc.checked_add(f.length))
            .ok_or_else(|| field_err("info.files", "total size overflows 64 bits"))?;
        if total == 0 {
            return Err(field_err("info", "the torrent holds no data"));
        }
        let pieces = total.div_ceil(u64::from(piece_length));
        if pieces > u64::from(u32::MAX) {
            return Err(field_err(
                "info.piece length",
                format!("{total} bytes in {piece_length}-byte pieces is more than 2^32 pieces"),
            ));
        }
        let hashes = match dict.get(b"pieces") {
            Some(Value::Bytes(p)) if p.len() as u64 == pieces * 20 => *p,
            Some(Value::Bytes(p)) => {
                return Err(field_err(
                    "info.pieces",
                    format!("is {} bytes; {pieces} pieces need {}", p.len(), pieces * 20),
                ));
            }
            Some(_) => return Err(field_err("info.pieces", "is not a string")),
            None => return Err(field_err("info.pieces", "missing")),
        };
        let v1_hash: Sha1Hash = Sha1::digest(dict.raw).into();
        Ok(Self {
            name,
            piece_length,
            files,
            info_hash: InfoHash::of_v1(v1_hash),
            v1: Some(V1Part {
                pieces: hashes
                    .chunks_exact(20)
                    .map(|c| c.try_into().expect("chunks of 20"))
                    .collect(),
                info_hash: v1_hash,
                single,
                tail_padded: false,
            }),
            v2: false,
            raw: dict.raw.to_vec(),
        })
    }

    /// The torrent's name (a single path component).
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn piece_length(&self) -> u32 {
        self.piece_length
    }

    /// Files in file-tree order (the order pieces are numbered in).
    pub fn files(&self) -> &[FileInfo] {
        &self.files
    }

    pub fn info_hash(&self) -> InfoHash {
        self.info_hash
    }

    /// Whether `key` names this torrent: its info-hash, or a hybrid's v1
    /// info-hash (what a `btih` magnet gives).
    pub fn known_by(&self, key: &InfoHash) -> bool {
        self.info_hash == *key || self.v1_info_hash().map(InfoHash::of_v1) == Some(*key)
    }

    /// Which versions it speaks.
    pub fn version(&self) -> MetaVersion {
        match (self.v1.is_some(), self.v2) {
            (true, true) => MetaVersion::Hybrid,
            (true, false) => MetaVersion::V1,
            _ => MetaVersion::V2,
        }
    }

    /// The v1 info-hash (SHA-1 of the info dict) of a v1 or hybrid torrent.
    pub fn v1_info_hash(&self) -> Option<Sha1Hash> {
        self.v1.as_ref().map(|v| v.info_hash)
    }

    /// A hybrid whose v1 part pads its last file to a whole piece (so v1
    /// peers see every piece whole).
    pub fn v1_tail_padded(&self) -> bool {
        self.v1.as_ref().is_some_and(|v| v.tail_padded)
    }

    /// The v1 hash of piece `index`: SHA-1 of the piece (a hybrid's padded
    /// with zeros to the piece length, but a single file's last piece).
    pub fn v1_piece_hash(&self, index: u32) -> Option<&Sha1Hash> {
        self.v1.as_ref()?.pieces.get(index as usize)
    }

    /// The bencoded `info` dict exactly as received.
    pub fn raw(&self) -> &[u8] {
        &self.raw
    }

    /// Sum of all file lengths.
    pub fn total_size(&self) -> u64 {
        self.files.iter().map(|f| f.length).sum()
    }

    /// A single-file torrent has one file at the top of the file tree; its
    /// content is that file. Otherwise the content is a directory named
    /// after the torrent.
    ///
    /// A hybrid follows its v1 part, as libtorrent does: one file is
    /// single only when it is named after the torrent (v1's `length`
    /// form); a directory holding one file stays a directory.
    pub fn is_single_file(&self) -> bool {
        match &self.v1 {
            None => self.files.len() == 1 && self.files[0].path.len() == 1,
            Some(v1) => v1.single,
        }
    }
}

fn name_of(dict: &Dict<'_>) -> Result<String, MetainfoError> {
    match dict.get(b"name") {
        Some(Value::Bytes(b)) => path_component(|| "info.name".into(), b),
        Some(_) => Err(field_err("info.name", "is not a string")),
        None => Err(field_err("info.name", "missing")),
    }
}

fn piece_length_of(dict: &Dict<'_>) -> Result<u32, MetainfoError> {
    match dict.get(b"piece length") {
        Some(Value::Int(n)) => u32::try_from(*n)
            .ok()
            .filter(|n| n.is_power_of_two() && (MIN_PIECE_LENGTH..=MAX_PIECE_LENGTH).contains(n))
            .ok_or_else(|| {
                field_err(
                    "info.piece length",
                    format!("{n} is not a power of two between 16 KiB and 256 MiB"),
                )
            }),
        Some(_) => Err(field_err("info.piece length", "is not an integer")),
        None => Err(field_err("info.piece length", "missing")),
    }
}

/// Validates one untrusted path component.
fn path_component(field: impl Fn() -> String, raw: &[u8]) -> Result<String, MetainfoError> {
    if raw.len() > MAX_COMPONENT {
        return Err(field_err(
            field(),
            format!(
                "a path component of {} bytes is longer than {MAX_COMPONENT}",
                raw.len()
            ),
        ));
    }
    let s = std::str::from_utf8(raw).map_err(|_| field_err(field(), "is not valid UTF-8"))?;
    let reason = if s.is_empty() {
        "is an empty path component"
    } else if s == "." || s == ".." {
        "is a relative path component (. or ..)"
    } else if s.contains(['/', '\\']) {
        "contains a path separator (absolute or nested path)"
    } else if s.contains('\0') {
        "contains a NUL byte"
    } else {
        return Ok(s.to_owned());
    };
    Err(field_err(field(), format!("{s:?} {reason}")))
}

/// Walks the file tree depth first (bytewise key order, which is the
/// order pieces are numbered in). `path_bytes` is the length of `path`
/// joined with `/`; the path is only formatted for an error message.
fn walk_file_tree(
    dir: &Dict<'_>,
    path: &mut Vec<String>,
    path_bytes: usize,
    total_path_bytes: &mut usize,
    files: &mut Vec<FileInfo>,
) -> Result<(), MetainfoError> {
    for (key, value) in &dir.entries {
        let here = || format!("info.file tree.{}", path.join("/"));
        if key.is_empty() {
            return Err(field_err(
                here(),
                "a directory has an entry with an empty name",
            ));
        }
        let component = path_component(|| format!("{}/<name>", here()), key)?;
        let path_bytes = path_bytes + usize::from(!path.is_empty()) + component.len();
        if path_bytes > MAX_PATH {
            return Err(field_err(
                here(),
                format!("a path is longer than {MAX_PATH} bytes"),
            ));
        }
        path.push(component);
        let field = || format!("info.file tree.{}", path.join("/"));
        let Value::Dict(node) = value else {
            return Err(field_err(field(), "is not a dict"));
        };
        match node.get(b"") {
            Some(Value::Dict(attrs)) => {
                if node.entries.len() != 1 {
                    return Err(field_err(field(), "is both a file and a directory"));
                }
                let length = match attrs.get(b"length") {
                    Some(Value::Int(n)) => u64::try_from(*n)
                        .map_err(|_| field_err(field() + ".length", format!("{n} is negative")))?,
                    _ => return Err(field_err(field() + ".length", "missing or not an integer")),
                };
                let pieces_root = match (length, attrs.get(b"pieces root")) {
                    (0, _) => None,
                    (_, Some(Value::Bytes(b))) => Some(<Hash>::try_from(*b).map_err(|_| {
                        field_err(
                            field() + ".pieces root",
                            format!("is {} bytes, not 32", b.len()),
                        )
                    })?),
                    (_, _) => return Err(field_err(field() + ".pieces root", "missing")),
                };
                *total_path_bytes += path_bytes;
                if *total_path_bytes > MAX_TOTAL_PATH_BYTES {
                    return Err(field_err(
                        "info.file tree",
                        format!("file paths add up to more than {MAX_TOTAL_PATH_BYTES} bytes"),
                    ));
                }
                if files.len() == MAX_FILES {
                    return Err(field_err(
                        "info.file tree",
                        format!("more than {MAX_FILES} files"),
                    ));
                }
                files.push(FileInfo {
                    path: path.clone(),
                    length,
                    pieces_root,
                });
            }
            Some(_) => return Err(field_err(field(), "file entry is not a dict")),
            None if node.entries.is_empty() => {
                return Err(field_err(field(), "is an empty directory"));
            }
            None => walk_file_tree(node, path, path_bytes, total_path_bytes, files)?,
        }
        path.pop();
    }
    Ok(())
}

/// A whole `.torrent`: the info dict plus each file's piece layer.
#[derive(Debug, Clone)]
pub struct Metainfo {
    info: Info,
    /// One entry per file, parallel to `info.files()`: the piece layer, empty
    /// for files of at most one piece.
    piece_layers: Vec<Vec<Hash>>,
    /// Tracker URLs in tiers (BEP 12 `announce-list`, else `announce`).
    trackers: Vec<Vec<String>>,
    bytes: Vec<u8>,
}

/// Most tracker URLs kept from a `.torrent` (all tiers together).
pub const MAX_TRACKERS: usize = 64;
/// Longest tracker URL kept.
const MAX_TRACKER_URL: usize = 2048;

/// `announce-list` (tiers of URLs), else `announce`; URLs that are not
/// UTF-8, too long, or beyond [`MAX_TRACKERS`] are dropped (a tracker is a
/// hint, not part of what the info-hash covers).
fn parse_trackers(top: &Dict<'_>) -> Vec<Vec<String>> {
    let url = |v: &Value<'_>| match v {
        Value::Bytes(b) if !b.is_empty() && b.len() <= MAX_TRACKER_URL => {
            std::str::from_utf8(b).ok().map(|s| s.trim().to_owned())
        }
        _ => None,
    };
    let mut kept = 0;
    let mut tiers = Vec::new();
    if let Some(Value::List(list)) = top.get(b"announce-list") {
        for tier in list {
            let Value::List(urls) = tier else { continue };
            let urls: Vec<String> = urls
                .iter()
                .filter_map(url)
                .take(MAX_TRACKERS - kept)
                .collect();
            kept += urls.len();
            if !urls.is_empty() {
                tiers.push(urls);
            }
        }
    }
    if tiers.is_empty()
        && let Some(u) = top.get(b"announce").and_then(url)
    {
        tiers.push(vec![u]);
    }
    tiers
}

impl Metainfo {
    /// Parses and validates `.torrent` bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, MetainfoError> {
        if bytes.len() > MAX_TORRENT_BYTES {
            return Err(field_err(
                "torrent",
                format!("is {} bytes; the limit is {MAX_TORRENT_BYTES}", bytes.len()),
            ));
        }
        // Real torrents are not always canonical (keys out of order): the
        // info-hash is taken over the info dict's bytes as they are.
        let value = bencode::decode_lenient(bytes)?;
        let Value::Dict(top) = &value else {
            return Err(field_err("torrent", "is not a dict"));
        };
        let info = match top.get(b"info") {
            Some(Value::Dict(d)) => Info::from_dict(d)?,
            Some(_) => return Err(field_err("info", "is not a dict")),
            None => return Err(field_err("info", "missing")),
        };
        let layers = match top.get(b"piece layers") {
            Some(Value::Dict(d)) => Some(d),
            Some(_) => return Err(field_err("piece layers", "is not a dict")),
            None => None,
        };
        let mut piece_layers = Vec::with_capacity(info.files.len());
        for file in &info.files {
            let tree = FileTree::new(file.length, info.piece_length);
            let (Some(root), true) = (file.pieces_root, tree.has_piece_layer()) else {
                piece_layers.push(Vec::new());
                continue;
            };
            let field = || {
                format!(
                    "piece layers.{} ({})",
                    hex::encode(root),
                    file.display_path()
                )
            };
            let raw = match layers.and_then(|l| l.get(&root[..])) {
                Some(Value::Bytes(b)) => *b,
                Some(_) => return Err(field_err(field(), "is not a string")),
                None => return Err(field_err(field(), "missing")),
            };
            let pieces = file.length.div_ceil(u64::from(info.piece_length));
            if raw.len() as u64 != pieces * 32 {
                return Err(field_err(
                    field(),
                    format!(
                        "is {} bytes; {pieces} pieces need {}",
                        raw.len(),
                        pieces * 32
                    ),
                ));
            }
            let layer: Vec<Hash> = raw
                .chunks_exact(32)
                .map(|c| c.try_into().expect("chunks_exact(32) yields 32 bytes"))
                .collect();
            if tree.root_from_piece_layer(&layer) != root {
                return Err(field_err(
                    field(),
                    "does not hash to the file's pieces root",
                ));
            }
            piece_layers.push(layer);
        }
        Ok(Self {
            info,
            piece_layers,
            trackers: parse_trackers(top),
            bytes: bytes.to_vec(),
        })
    }

    /// Builds a `.torrent` from already hashed files. `files` must be in
    /// file-tree order; `piece_layers` parallel to it.
    pub fn build(
        name: &str,
        piece_length: u32,
        files: &[FileInfo],
        piece_layers: &[Vec<Hash>],
        creation_date: Option<i64>,
        trackers: &[String],
        v1_pieces: Option<&[Sha1Hash]>,
    ) -> Result<Self, MetainfoError> {
        let mut tree = Dict::new();
        for file in files {
            let mut attrs = Dict::new();
            attrs.insert(b"length", Value::Int(file.length as i64));
            if let Some(root) = &file.pieces_root {
                attrs.insert(b"pieces root", Value::Bytes(root));
            }
            let mut leaf = Dict::new();
            leaf.insert(b"", Value::Dict(attrs));
            insert_path(&mut tree, &file.path, leaf)?;
        }
        let mut info = Dict::new();
        info.insert(b"file tree", Value::Dict(tree))
            .insert(b"meta version", Value::Int(2))
            .insert(b"name", Value::Bytes(name.as_bytes()))
            .insert(b"piece length", Value::Int(i64::from(piece_length)));
        // A hybrid's v1 part, as libtorrent 2.0 writes it: the files in
        // file-tree order, each but the empty ones followed by a pad file
        // `.pad/<length>` to the piece boundary (the last one too), unless
        // there is only one file.
        let pad_names: Vec<String> = files
            .iter()
            .map(|f| pad_after(f.length, piece_length).to_string())
            .collect();
        let flat_v1: Vec<u8> = v1_pieces.map(|p| p.concat()).unwrap_or_default();
        if v1_pieces.is_some() {
            // v1's single-file form names the file by the torrent's name.
            let single = files.len() == 1 && files[0].path == [name];
            if single {
                info.insert(b"length", Value::Int(files[0].length as i64));
            } else {
                let mut list = Vec::new();
                for (f, pad) in files.iter().zip(&pad_names) {
                    let mut entry = Dict::new();
                    entry.insert(b"length", Value::Int(f.length as i64)).insert(
                        b"path",
                        Value::List(f.path.iter().map(|c| Value::Bytes(c.as_bytes())).collect()),
                    );
                    list.push(Value::Dict(entry));
                    let pad_len = pad_after(f.length, piece_length);
                    if pad_len > 0 && files.len() > 1 {
                        let mut entry = Dict::new();
                        entry
                            .insert(b"attr", Value::Bytes(b"p"))
                            .insert(b"length", Value::Int(pad_len as i64))
                            .insert(
                                b"path",
                                Value::List(vec![
                                    Value::Bytes(b".pad"),
                                    Value::Bytes(pad.as_bytes()),
                                ]),
                            );
                        list.push(Value::Dict(entry));
                    }
                }
                info.insert(b"files", Value::List(list));
            }
            info.insert(b"pieces", Value::Bytes(&flat_v1));
        }
        let info_bytes = bencode::encode(&Value::Dict(info));
        // Re-decode so `info` borrows from the exact bytes that are hashed.
        let info_value = bencode::decode(&info_bytes)?;

        let flat: Vec<Vec<u8>> = piece_layers.iter().map(|l| l.concat()).collect();
        let mut layers = Dict::new();
        for ((file, layer), flat) in files.iter().zip(piece_layers).zip(&flat) {
            if let (Some(root), false) = (&file.pieces_root, layer.is_empty()) {
                layers.insert(root, Value::Bytes(flat));
            }
        }
        let mut top = Dict::new();
        top.insert(b"created by", Value::Bytes(CREATED_BY.as_bytes()))
            .insert(b"info", info_value)
            .insert(b"piece layers", Value::Dict(layers));
        if let Some(date) = creation_date {
            top.insert(b"creation date", Value::Int(date));
        }
        insert_trackers(&mut top, trackers);
        // Parse what we made: the same checks guard both directions.
        Self::from_bytes(&bencode::encode(&Value::Dict(top)))
    }

    /// Builds a v1-only `.torrent`: `files` in the order their bytes run
    /// end to end, `pieces` the SHA-1 of each piece over them.
    pub fn build_v1(
        name: &str,
        piece_length: u32,
        files: &[FileInfo],
        pieces: &[Sha1Hash],
        creation_date: Option<i64>,
        trackers: &[String],
    ) -> Result<Self, MetainfoError> {
        let flat = pieces.concat();
        let mut info = Dict::new();
        if files.len() == 1 && files[0].path == [name] {
            info.insert(b"length", Value::Int(files[0].length as i64));
        } else {
            let list = files
                .iter()
                .map(|f| {
                    let mut entry = Dict::new();
                    entry.insert(b"length", Value::Int(f.length as i64)).insert(
                        b"path",
                        Value::List(f.path.iter().map(|c| Value::Bytes(c.as_bytes())).collect()),
                    );
                    Value::Dict(entry)
                })
                .collect();
            info.insert(b"files", Value::List(list));
        }
        info.insert(b"name", Value::Bytes(name.as_bytes()))
            .insert(b"piece length", Value::Int(i64::from(piece_length)))
            .insert(b"pieces", Value::Bytes(&flat));
        let info_bytes = bencode::encode(&Value::Dict(info));
        let info_value = bencode::decode(&info_bytes)?;
        let mut top = Dict::new();
        top.insert(b"created by", Value::Bytes(CREATED_BY.as_bytes()))
            .insert(b"info", info_value);
        if let Some(date) = creation_date {
            top.insert(b"creation date", Value::Int(date));
        }
        insert_trackers(&mut top, trackers);
        Self::from_bytes(&bencode::encode(&Value::Dict(top)))
    }

    pub fn info(&self) -> &Info {
        &self.info
    }

    /// The piece layer of file `file` (empty when it has at most one piece).
    pub fn piece_layer(&self, file: usize) -> &[Hash] {
        &self.piece_layers[file]
    }

    /// Tracker URLs in tiers, tried tier by tier (BEP 12).
    pub fn trackers(&self) -> &[Vec<String>] {
        &self.trackers
    }

    /// The `.torrent` bytes exactly as read or built.
    pub fn to_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The top-level keys besides `info` and `piece layers` that a peer
    /// fetching the metadata may take on trust ([`EXTRA_KEYS`]), as a
    /// bencoded dict. They are not covered by the info-hash, so nothing
    /// else is passed on.
    pub fn extras(&self) -> Vec<u8> {
        let mut out = Dict::new();
        if let Ok(Value::Dict(top)) = bencode::decode_lenient(&self.bytes) {
            for key in EXTRA_KEYS {
                if let Some(v) = top.get(key) {
                    out.insert(key, v.clone());
                }
            }
        }
        bencode::encode(&Value::Dict(out))
    }

    /// Rebuilds a `.torrent` from metadata fetched from peers: the `info`
    /// dict (whose hash the caller has checked), one piece layer per file
    /// (parallel to the files, empty where a file has none; each is checked
    /// against its `pieces root` here) and the [`extras`](Self::extras)
    /// (unknown or mistyped keys in them are dropped). For a canonical
    /// `.torrent` with no other top-level keys the bytes are the original's.
    pub fn assemble(info: &[u8], layers: &[Vec<u8>], extras: &[u8]) -> Result<Self, MetainfoError> {
        let parsed = Info::from_bytes(info)?;
        if layers.len() != parsed.files.len() {
            return Err(field_err(
                "piece layers",
                format!("{} given for {} files", layers.len(), parsed.files.len()),
            ));
        }
        let info_value = bencode::decode(info)?;
        let mut layer_dict = Dict::new();
        for (file, layer) in parsed.files.iter().zip(layers) {
            if let (Some(root), false) = (&file.pieces_root, layer.is_empty()) {
                layer_dict.insert(root, Value::Bytes(layer));
            }
        }
        let mut top = Dict::new();
        if let Ok(Value::Dict(extra)) = bencode::decode(extras) {
            for (key, value) in extra.entries {
                let ok = matches!(
                    (key, &value),
                    (b"creation date", Value::Int(_))
                        | (b"comment" | b"created by", Value::Bytes(_))
                );
                if ok {
                    top.insert(key, value);
                }
            }
        }
        top.insert(b"info", info_value);
        // A v1 torrent has no piece layers (its piece hashes are in `info`).
        if parsed.version() != MetaVersion::V1 {
            top.insert(b"piece layers", Value::Dict(layer_dict));
        }
        Self::from_bytes(&bencode::encode(&Value::Dict(top)))
    }
}

/// `announce` and `announce-list`, each tracker its own tier: tried in
/// the order given (BEP 12).
fn insert_trackers<'a>(top: &mut Dict<'a>, trackers: &'a [String]) {
    if let Some(first) = trackers.first() {
        top.insert(b"announce", Value::Bytes(first.as_bytes()));
        let tiers = trackers
            .iter()
            .map(|t| Value::List(vec![Value::Bytes(t.as_bytes())]))
            .collect();
        top.insert(b"announce-list", Value::List(tiers));
    }
}

/// Top-level `.torrent` keys passed on with fetched metadata.
pub const EXTRA_KEYS: [&[u8]; 3] = [b"comment", b"created by", b"creation date"];

const CREATED_BY: &str = concat!("sluice/", env!("CARGO_PKG_VERSION"));

fn insert_path<'a>(
    dir: &mut Dict<'a>,
    path: &'a [String],
    leaf: Dict<'a>,
) -> Result<(), MetainfoError> {
    let (first, rest) = path
        .split_first()
        .ok_or_else(|| field_err("file", "has an empty path"))?;
    if rest.is_empty() {
        dir.insert(first.as_bytes(), Value::Dict(leaf));
        return Ok(());
    }
    let entry = dir
        .entries
        .entry(first.as_bytes())
        .or_insert_with(|| Value::Dict(Dict::new()));
    match entry {
        Value::Dict(sub) => insert_path(sub, rest, leaf),
        _ => Err(field_err(path.join("/"), "is both a file and a directory")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::merkle::leaf_hash;

    fn one_file(len: u64, piece_length: u32) -> Metainfo {
        // Content: all zero bytes; leaf hashes computed directly.
        let block = BLOCK_SIZE as u64;
        let leaves: Vec<Hash> = (0..len.div_ceil(block))
            .map(|i| leaf_hash(&vec![0u8; (len - i * block).min(block) as usize]))
            .collect();
        let tree = FileTree::new(len, piece_length);
        let bpp = (piece_length / BLOCK_SIZE) as usize;
        let (root, layer) = if tree.has_piece_layer() {
            let layer: Vec<Hash> = leaves.chunks(bpp).map(|c| tree.piece_hash(c)).collect();
            (tree.root_from_piece_layer(&layer), layer)
        } else {
            (tree.piece_hash(&leaves), vec![])
        };
        let file = FileInfo {
            path: vec!["f".into()],
            length: len,
            pieces_root: Some(root),
        };
        Metainfo::build("f", piece_length, &[file], &[layer], None, &[], None).unwrap()
    }

    #[test]
    fn build_then_parse_round_trips() {
        let m = one_file(5 * 16384 + 3, 32768);
        let again = Metainfo::from_bytes(m.to_bytes()).unwrap();
        assert_eq!(again.info().info_hash(), m.info().info_hash());
        assert_eq!(again.piece_layer(0).len(), 3);
        assert!(m.info().is_single_file());
    }

    #[test]
    fn assembled_from_its_parts_a_torrent_is_byte_identical() {
        let m = one_file(5 * 16384 + 3, 32768);
        let Value::Dict(mut top) = bencode::decode(m.to_bytes()).unwrap() else {
            panic!("a dict")
        };
        top.insert(b"comment", Value::Bytes(b"hello"));
        top.insert(b"creation date", Value::Int(1_700_000_000));
        let m = Metainfo::from_bytes(&bencode::encode(&Value::Dict(top))).unwrap();
        let layer = m.piece_layer(0).concat();
        let again =
            Metainfo::assemble(m.info().raw(), std::slice::from_ref(&layer), &m.extras()).unwrap();
        assert_eq!(again.to_bytes(), m.to_bytes());

        // Extras of the wrong type or unknown keys are dropped, not fatal.
        let odd = b"d7:comment3:abc13:creation datei1e8:announce3:urle";
        let with_odd =
            Metainfo::assemble(m.info().raw(), std::slice::from_ref(&layer), odd).unwrap();
        assert!(!String::from_utf8_lossy(with_odd.to_bytes()).contains("announce"));
        assert!(
            Metainfo::assemble(m.info().raw(), std::slice::from_ref(&layer), b"garbage").is_ok()
        );

        // A layer that does not hash to the root, or a missing one, fails.
        let mut bad = layer.clone();
        bad[0] ^= 1;
        let e = Metainfo::assemble(m.info().raw(), &[bad], b"de").unwrap_err();
        assert!(e.to_string().contains("does not hash"), "{e}");
        let e = Metainfo::assemble(m.info().raw(), &[], b"de").unwrap_err();
        assert!(e.to_string().contains("0 given for 1 files"), "{e}");
    }

    fn with_info_field(m: &Metainfo, key: &[u8], v: Value<'_>) -> Vec<u8> {
        let Value::Dict(mut top) = bencode::decode(m.to_bytes()).unwrap() else {
            panic!()
        };
        let Some(Value::Dict(info)) = top.entries.get_mut(&b"info"[..]) else {
            panic!()
        };
        info.insert(unsafe_key(key), v);
        bencode::encode(&Value::Dict(top))
    }

    // Test helper: keys in these tests are 'static literals.
    fn unsafe_key(k: &[u8]) -> &'static [u8] {
        Box::leak(k.to_vec().into_boxed_slice())
    }

    fn err_of(bytes: &[u8]) -> String {
        Metainfo::from_bytes(bytes).unwrap_err().to_string()
    }

    #[test]
    fn refuses_bad_fields_naming_them() {
        let m = one_file(100_000, 16384);
        let e = err_of(&with_info_field(&m, b"piece length", Value::Int(20000)));
        assert!(e.starts_with("info.piece length:"), "{e}");
        let e = err_of(&with_info_field(&m, b"meta version", Value::Int(1)));
        assert!(e.starts_with("info.meta version:"), "{e}");
        let e = err_of(&with_info_field(&m, b"name", Value::Bytes(b"..")));
        assert!(e.starts_with("info.name:"), "{e}");

        for bad in [&b".."[..], b"/etc", b"", b"a/b", b"a\\b", b"."] {
            let mut attrs = Dict::new();
            attrs.insert(b"length", Value::Int(0));
            let mut leaf = Dict::new();
            leaf.insert(b"", Value::Dict(attrs));
            let mut tree = Dict::new();
            tree.insert(unsafe_key(bad), Value::Dict(leaf));
            let e = err_of(&with_info_field(&m, b"file tree", Value::Dict(tree)));
            assert!(e.starts_with("info.file tree"), "{bad:?}: {e}");
        }

        let mut trailing = m.to_bytes().to_vec();
        trailing.push(b'x');
        assert!(err_of(&trailing).contains("trailing bytes"));
    }

    #[test]
    fn refuses_paths_that_are_too_long() {
        let m = one_file(100, 16384);
        let long = [b'a'; MAX_COMPONENT + 1];
        let mut attrs = Dict::new();
        attrs.insert(b"length", Value::Int(0));
        let mut leaf = Dict::new();
        leaf.insert(b"", Value::Dict(attrs));
        let mut tree = Dict::new();
        tree.insert(&long, Value::Dict(leaf.clone()));
        let e = err_of(&with_info_field(&m, b"file tree", Value::Dict(tree)));
        assert!(e.contains("longer than 255"), "{e}");

        // 20 nested directories of 250 bytes: each component is fine, the
        // path is not.
        let names: Vec<Vec<u8>> = (0..20u8).map(|i| vec![b'a' + i; 250]).collect();
        let mut node = leaf;
        for name in names.iter().rev() {
            let mut dir = Dict::new();
            dir.insert(name, Value::Dict(node));
            node = dir;
        }
        let e = err_of(&with_info_field(&m, b"file tree", Value::Dict(node)));
        assert!(e.contains("longer than 4096"), "{e}");
    }

    #[test]
    fn refuses_a_piece_layer_that_does_not_match_the_root() {
        let m = one_file(100_000, 16384);
        let Value::Dict(mut top) = bencode::decode(m.to_bytes()).unwrap() else {
            panic!()
        };
        let Some(Value::Dict(layers)) = top.entries.get_mut(&b"piece layers"[..]) else {
            panic!()
        };
        let (_, v) = layers.entries.iter_mut().next().unwrap();
        let Value::Bytes(b) = v else { panic!() };
        let mut changed = b.to_vec();
        changed[0] ^= 1;
        let changed: &'static [u8] = Box::leak(changed.into_boxed_slice());
        *v = Value::Bytes(changed);
        let e = err_of(&bencode::encode(&Value::Dict(top)));
        assert!(e.starts_with("piece layers."), "{e}");
        assert!(e.contains("does not hash to"), "{e}");
    }
}
