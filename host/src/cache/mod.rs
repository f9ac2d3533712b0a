//! The SIF cache: content-addressed blobs, an index keyed by image identity,
//! and a lock per identity. Many jobs can share one cache safely.
//!
//! Layout under the cache root (every access goes through a cap-std `Dir`
//! opened on the root, so no name built from a reference or digest can
//! escape it; names are hex digests that sifr makes itself):
//!
//! ```text
//! blobs/sha256/<hex>.sif    SIF files, named by the sha256 of their bytes
//! index/<key>.json          identity -> blob, source, time, size, notes
//! locks/<key>.lock          flock(2) target, one per identity (see lock.rs)
//! tmp/<key>-<pid>-<n>.sif   pulls in progress; never counted as cached
//! plugins/                  compiled policy plugins (see policy::CompileCache)
//! ```
//!
//! **A `docker://` pull is a build.** Apptainer converts the image's layers
//! into a new SIF file, with timestamps, so two pulls of one image give
//! files with different bytes. The SIF sha256 is therefore a local integrity
//! check only, never an image identity across machines. The identity is the
//! canonical upstream reference *before* any plugin rewrote it (so a mirror
//! change does not cause a re-pull), keyed by its manifest digest when the
//! reference is pinned, plus the architecture.
//!
//! **Eviction takes the identity's lock** exclusively (`remove`, `prune`, a
//! corrupt entry found by a pull), so it never deletes what a pull has just
//! committed, nor a SIF that a run has verified and apptainer has not opened
//! yet (runs hold the lock shared). Blobs that no record refers to are swept
//! only once they are older than [`ORPHAN_GRACE`]: a pull renames its blob
//! into place a moment before it writes the record.
//!
//! One file per job: `identity` (what an image is cached as), `index`
//! (the records), `store` (blobs, pulls in progress, lookups), `prune`
//! (removal), `verify`; `lock`, `hash`, `trust` and `handoff` as before.

mod error;
mod handoff;
mod hash;
mod identity;
mod index;
mod lock;
mod prune;
mod store;
mod trust;
mod verify;

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cap_std::ambient_authority;
use cap_std::fs::{Dir, OpenOptions};

pub use error::CacheError;
pub use handoff::{RunnableSif, VerifiedBlob};
pub use hash::{HashProgress, sha256_file};
pub use identity::Identity;
pub use index::{Entry, Provenance, Stamp};
pub use lock::{ImageLock, LockMode, Wait};
pub use prune::{Pruned, Selector};
pub use trust::{Distrust, Trust, Untrusted, owner_name, owner_uid};
pub use verify::BadEntry;

use crate::reference::SifDigest;

/// How old a blob no record refers to must be before `prune` removes it.
/// A pull moves its blob into place, then writes its record; a blob younger
/// than this may be one whose record is being written, so it is kept.
pub const ORPHAN_GRACE: Duration = Duration::from_secs(3600);

/// What a lookup found.
pub enum Lookup {
    /// Cached, and the stamp (or a re-hash) says the file is intact. `blob`
    /// is the checked file, held open (see [`Cache::runnable`]).
    Hit {
        entry: Entry,
        rehashed: bool,
        blob: VerifiedBlob,
    },
    /// Not cached.
    Miss,
    /// Was cached, but the file changed and no longer matches its digest.
    /// Under an exclusive lock it has been evicted; under a shared one it is
    /// left for a holder of the exclusive lock to evict.
    Corrupt { entry: Entry, actual: SifDigest },
    /// The record, or the blob it names, may have been written by someone
    /// you do not trust (see [`Trust`]). It was ignored and left in place:
    /// a pull writes a record and a blob of your own.
    Untrusted(Untrusted),
}

/// A SIF cache rooted at one directory.
pub struct Cache {
    root: PathBuf,
    dir: Dir,
    trust: Trust,
}

impl Cache {
    /// Open (creating) the cache at `root`. A relative root is made
    /// absolute against the current directory, so that the paths given to
    /// apptainer are absolute (a relative `-x/...` would read as a flag).
    pub fn open(root: impl Into<PathBuf>) -> io::Result<Self> {
        let root = std::path::absolute(root.into())?;
        std::fs::create_dir_all(&root)?;
        let dir = Dir::open_ambient_dir(&root, ambient_authority())?;
        for sub in ["blobs/sha256", "index", "locks", "tmp"] {
            dir.create_dir_all(sub)?;
        }
        Ok(Self {
            root,
            dir,
            trust: Trust::default(),
        })
    }

    /// Use the records and blobs of these owners too, not only your own
    /// (the config's `[cache] trusted-owners`, as uids). See [`Trust`].
    pub fn trusting(mut self, trusted_owners: &[u32]) -> Self {
        self.trust = Trust::new(trusted_owners);
        self
    }

    /// Whose records and blobs this cache uses.
    pub fn trust(&self) -> &Trust {
        &self.trust
    }

    /// A path for apptainer that names `blob`, the file that was checked,
    /// and that nobody outside [`Cache::trust`] can swap before apptainer
    /// opens it (see the `handoff` module for how, and why not
    /// `/proc/self/fd/N`). Keep it until apptainer has exited.
    pub fn runnable(&self, blob: &VerifiedBlob) -> io::Result<RunnableSif> {
        handoff::runnable(&self.root, &self.dir, &self.trust, blob)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The absolute path of a blob, for apptainer.
    pub fn blob_path(&self, entry: &Entry) -> PathBuf {
        self.root.join(entry.blob_name())
    }

    /// Take `identity`'s lock: shared to use its image, exclusive to pull or
    /// evict it (see the `lock` module).
    pub fn lock(
        &self,
        identity: &Identity,
        mode: LockMode,
        wait: &mut Wait<'_>,
    ) -> io::Result<ImageLock> {
        self.lock_key(&identity.key, mode, wait)
    }

    fn lock_key(&self, key: &str, mode: LockMode, wait: &mut Wait<'_>) -> io::Result<ImageLock> {
        // Read and write: on NFS a shared flock is a POSIX read lock, which
        // the server refuses on a file not open for reading.
        let open = || {
            Ok(self
                .dir
                .open_with(
                    format!("locks/{key}.lock"),
                    OpenOptions::new()
                        .create(true)
                        .truncate(false)
                        .read(true)
                        .write(true),
                )?
                .into_std())
        };
        ImageLock::acquire(key, mode, open, wait)
    }

    /// Take `key`'s lock if nobody holds it in a conflicting mode.
    fn try_lock_key(&self, key: &str, mode: LockMode) -> io::Result<Option<ImageLock>> {
        match self.lock_key(key, mode, &mut Wait::never()) {
            Ok(lock) => Ok(Some(lock)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// Distinguishes temporary files of one process's threads.
fn next_seq() -> u64 {
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn ignore_missing(result: io::Result<()>) -> io::Result<()> {
    match result {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}
