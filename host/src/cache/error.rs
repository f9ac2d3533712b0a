//! How a cache operation fails: the cache's own error, naming the cache and
//! saying what to do. The cache works in `std::io` terms inside; a caller
//! that reports to a person turns an `io::Error` into a [`CacheError`] with
//! [`CacheError::at`], which tells a full disk from the rest.

use std::io;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// The cache's filesystem is full, or the user's quota is spent.
    #[error(
        "the cache at {} is out of space; free space there (e.g. `sifr cache prune \
         --max-size 20GiB`) or point SIFR_CACHE_DIR at a filesystem with room: {source}",
        root.display()
    )]
    Full {
        root: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Any other I/O failure in the cache.
    #[error("cache at {}: {source}", root.display())]
    Io {
        root: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl CacheError {
    /// `source`, which happened in the cache at `root`.
    pub fn at(root: &Path, source: io::Error) -> Self {
        use io::ErrorKind::{QuotaExceeded, StorageFull};
        let root = root.to_path_buf();
        if matches!(source.kind(), StorageFull | QuotaExceeded) {
            Self::Full { root, source }
        } else {
            Self::Io { root, source }
        }
    }

    /// The I/O error underneath.
    pub fn io(&self) -> &io::Error {
        match self {
            Self::Full { source, .. } | Self::Io { source, .. } => source,
        }
    }
}
