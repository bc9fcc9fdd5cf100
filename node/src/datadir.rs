//! A node's data directory: `identity.key` (so the peer id survives
//! restarts), `lock` (held while the node runs), `resume/<info-hash>`.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use libp2p::identity::Keypair;
use sluice_storage::InfoHash;

/// Why a data directory cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    #[error("cannot use data dir {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("data dir {path} is in use by another sluice node (pick another with --data-dir)")]
    Locked { path: PathBuf },
    #[error("{path} is not a valid identity key")]
    BadKey { path: PathBuf },
    #[error("cannot use the identity key file {path}")]
    KeyFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Reads an identity key file (libp2p's protobuf encoding, as
/// `identity.key` and [`new_identity`] write it).
pub fn read_identity(path: &Path) -> Result<Keypair, DataDirError> {
    let bytes = fs::read(path).map_err(|source| DataDirError::KeyFile {
        path: path.to_owned(),
        source,
    })?;
    Keypair::from_protobuf_encoding(&bytes).map_err(|_| DataDirError::BadKey {
        path: path.to_owned(),
    })
}

/// Makes a new ed25519 identity key in `path`, readable by its owner
/// only; an existing file is left alone (an error).
pub fn new_identity(path: &Path) -> Result<Keypair, DataDirError> {
    let io = |source| DataDirError::KeyFile {
        path: path.to_owned(),
        source,
    };
    let key = Keypair::generate_ed25519();
    let bytes = key.to_protobuf_encoding().expect("ed25519 keys encode");
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut f = options.open(path).map_err(io)?;
    f.write_all(&bytes).map_err(io)?;
    f.sync_all().map_err(io)?;
    Ok(key)
}

/// An open, locked data directory. The lock is released when dropped.
#[derive(Debug)]
pub struct DataDir {
    root: PathBuf,
    _lock: File,
}

impl DataDir {
    /// Creates the directory if needed and takes its lock.
    pub fn open(root: &Path) -> Result<Self, DataDirError> {
        let io = |source| DataDirError::Io {
            path: root.to_owned(),
            source,
        };
        fs::create_dir_all(root.join("resume")).map_err(io)?;
        let lock_path = root.join("lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io)?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                return Err(DataDirError::Locked {
                    path: root.to_owned(),
                });
            }
            Err(fs::TryLockError::Error(e)) => return Err(io(e)),
        }
        Ok(Self {
            root: root.to_owned(),
            _lock: lock,
        })
    }

    pub fn path(&self) -> &Path {
        &self.root
    }

    /// The node's identity, made on first use.
    pub fn identity(&self) -> Result<Keypair, DataDirError> {
        let path = self.root.join("identity.key");
        match read_identity(&path) {
            Err(DataDirError::KeyFile { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                new_identity(&path)
            }
            other => other,
        }
    }

    /// Where the resume file of a torrent lives.
    pub fn resume_file(&self, ih: InfoHash) -> PathBuf {
        self.root.join("resume").join(format!("{ih}.resume"))
    }
}
