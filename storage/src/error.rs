use std::io;
use std::path::PathBuf;

use crate::layout::{BlockRef, PieceIndex};
use crate::metainfo::MetainfoError;
use crate::queue::ReserveError;

/// Everything the storage crate can fail with.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("{action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Metainfo(#[from] MetainfoError),
    #[error("{path}: {reason}")]
    Input { path: PathBuf, reason: String },
    #[error("{piece:?} is not verified here, so it cannot be read for upload")]
    NotHeld { piece: PieceIndex },
    #[error("{block:?} is {got} bytes; the layout says {want}")]
    WrongLength {
        block: BlockRef,
        got: usize,
        want: u32,
    },
    #[error(transparent)]
    Reserve(#[from] ReserveError),
    #[error(
        "piece {piece} no longer matches the torrent on disk (changed behind our back); dropped"
    )]
    PieceLost { piece: PieceIndex },
    #[error("the disk writer thread stopped unexpectedly")]
    WriterGone,
    #[error("the credit was reserved from another write queue")]
    ForeignCredit,
    #[error("the storage is closed")]
    Closed,
}

impl StorageError {
    /// The message with its causes, `outer: inner` ("writing a.bin: No
    /// space left on device"), for status lines that have no error chain.
    pub fn with_causes(&self) -> String {
        let mut text = self.to_string();
        let mut source = std::error::Error::source(self);
        while let Some(s) = source {
            text.push_str(": ");
            text.push_str(&s.to_string());
            source = s.source();
        }
        text
    }

    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io {
            action,
            path,
            source,
        }
    }
}
