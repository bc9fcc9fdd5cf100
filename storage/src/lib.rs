//! `sluice-storage`: everything sluice keeps on disk, and nothing that
//! touches the network.
//!
//! - [`metainfo`]: BitTorrent v2 (BEP 52) `.torrent` files: parse untrusted
//!   bytes (errors name the field), build new ones, the info-hash.
//! - [`bencode`]: the strict codec underneath (bounded depth, canonical only,
//!   raw spans kept for hashing).
//! - [`merkle`]: SHA-256 trees over 16 KiB blocks, padding as BEP 52 says.
//! - [`layout`]: validated piece and block indices and where they live in
//!   the files; the verified-pieces [`Bitfield`].
//! - [`queue`]: the byte-bounded write queue and its [`Credit`]s — disk
//!   backpressure.
//! - [`storage`]: the writer thread, verification from leaf hashes, reads for
//!   upload, flush and resume.
//! - [`mod@create`]: `.torrent` creation, hashing on every core; [`resume`]: the
//!   resume file.
//! - [`units`]: sizes and rates with units (`64MiB`, `5MB/s`), as the CLI
//!   and scenario files take them.
//!
//! Blocking work (file I/O, hashing) runs on plain threads or must be called
//! from a blocking context; the only async API is [`WriteQueue::reserve`].

pub mod bencode;
mod cache;
pub mod create;
mod error;
mod hash;
pub mod layout;
pub mod merkle;
pub mod metainfo;
pub mod queue;
pub mod resume;
pub mod storage;
pub mod units;

pub use create::{CreateOptions, auto_piece_length, create};
pub use error::StorageError;
pub use hash::{default_threads, hash_pieces, hash_pieces_hybrid, hash_pieces_v1};
pub use layout::{Bitfield, BlockRef, FileRange, Layout, PieceIndex};
pub use merkle::{BLOCK_SIZE, Hash};
pub use metainfo::{FileInfo, Info, InfoHash, MetaVersion, Metainfo, MetainfoError, Sha1Hash};
pub use queue::{Credit, QueueStats, ReserveError, WriteQueue};
pub use storage::{
    Storage, StorageConfig, StorageEvent, content_paths, expected_piece_hash, recheck,
};
