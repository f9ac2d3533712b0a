//! Blobs (`blobs/sha256/<hex>.sif`), pulls in progress (`tmp/`), the
//! commit of a pull into the cache, and lookups that check what they find.

use std::io;
use std::path::{Path, PathBuf};

use super::index::{blob_name, index_name};
use super::trust::{self, Distrust, Untrusted};
use super::{
    Cache, Entry, HashProgress, Identity, ImageLock, LockMode, Lookup, Provenance, Stamp,
    VerifiedBlob, Wait, next_seq, owner_name, sha256_file,
};
use crate::reference::SifDigest;

impl Cache {
    /// Whether `identity` looks cached (a record, and its blob), without a
    /// lock and without checking the blob: a hint of which lock to take.
    pub fn peek(&self, identity: &Identity) -> bool {
        matches!(self.read_entry(&identity.key), Ok(Some(entry))
            if self.dir.metadata(entry.blob_name()).is_ok())
    }

    /// `entry`'s blob, opened without following a symlink, if it is there.
    fn open_blob(&self, entry: &Entry) -> io::Result<Option<(std::fs::File, std::fs::Metadata)>> {
        let blobs = self.dir.open_dir("blobs/sha256")?;
        match trust::open_no_follow(&blobs, &format!("{}.sif", entry.sif_digest.hex())) {
            Ok(found) => Ok(Some(found)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub(super) fn stamp(&self, name: &str) -> io::Result<Stamp> {
        let file = self.dir.open(name)?.into_std();
        Ok(Stamp::of(&file.metadata()?))
    }

    /// After a run through a private link (see [`Cache::runnable`]): making
    /// and removing the link changed the blob's ctime and nothing else, so
    /// your record gets the new stamp, instead of the next hit re-hashing
    /// the file. Only a record of yours that still has the stamp that was
    /// checked (`verified`'s) is rewritten, and only if size, mtime and
    /// inode are unchanged.
    pub fn restamp_after_link(&self, verified: &Entry, blob: &VerifiedBlob) -> io::Result<()> {
        let now = Stamp::of(&blob.file.metadata()?);
        let old = verified.stamp;
        if now == old || (now.size, now.mtime_ns, now.ino) != (old.size, old.mtime_ns, old.ino) {
            return Ok(());
        }
        let key = Identity::from_text(verified.identity.clone()).key;
        match self.read_trusted_entry(&key)? {
            Ok(Some((current, owner)))
                if owner == self.trust.me()
                    && current.sif_digest == verified.sif_digest
                    && current.stamp == old =>
            {
                self.write_entry(
                    &key,
                    &Entry {
                        stamp: now,
                        ..current
                    },
                )
            }
            _ => Ok(()),
        }
    }

    /// Look `identity` up, under a shared lock taken for the lookup alone
    /// (waiting for a pull or an eviction in progress). See
    /// [`Cache::lookup_held`].
    pub fn lookup(
        &self,
        identity: &Identity,
        progress: &mut dyn HashProgress,
    ) -> io::Result<Lookup> {
        let hold = self.lock(
            identity,
            LockMode::Shared,
            &mut Wait {
                timeout: None,
                on_wait: None,
            },
        )?;
        self.lookup_held(identity, &hold, progress)
    }

    /// Look `identity` up while holding its lock. A hit whose stamp is
    /// unchanged costs two small reads and two fstats; a changed stamp costs
    /// a re-hash. Under an exclusive lock, a mismatch evicts the entry, and a
    /// record whose blob is gone is removed.
    ///
    /// The record and the blob must each pass [`Trust`](super::Trust), checked on the
    /// descriptor that is then read (the stamp says nothing about who wrote
    /// the file: whoever writes a record writes its stamp). What fails is
    /// [`Lookup::Untrusted`], and is left alone.
    pub fn lookup_held(
        &self,
        identity: &Identity,
        hold: &ImageLock,
        progress: &mut dyn HashProgress,
    ) -> io::Result<Lookup> {
        debug_assert_eq!(hold.key(), identity.key);
        let exclusive = hold.mode() == LockMode::Exclusive;
        let (entry, record_owner) = match self.read_trusted_entry(&identity.key)? {
            Ok(Some(found)) => found,
            Ok(None) => return Ok(Lookup::Miss),
            Err(untrusted) => return Ok(Lookup::Untrusted(untrusted)),
        };
        if !entry.pulled_as_pinned() {
            // Filed under a pin, but pulled by something else (a tag, once):
            // not the pinned image. Pulled again, by the digest.
            return Ok(Lookup::Miss);
        }
        let name = entry.blob_name();
        let untrusted_blob = |why| {
            Lookup::Untrusted(Untrusted {
                path: self.root.join(&name),
                why,
            })
        };
        let (file, meta) = match self.open_blob(&entry) {
            Ok(Some(found)) => found,
            Ok(None) => {
                if exclusive {
                    let _ = self.dir.remove_file(index_name(&identity.key));
                }
                return Ok(Lookup::Miss);
            }
            Err(e) if trust::is_symlink_error(&e) => return Ok(untrusted_blob(Distrust::NotAFile)),
            Err(e) => return Err(e),
        };
        if let Err(why) = self.trust.check_file(&meta) {
            return Ok(untrusted_blob(why));
        }
        let stamp = Stamp::of(&meta);
        let blob = VerifiedBlob {
            file: std::sync::Arc::new(file),
            name: name.clone(),
        };
        if stamp == entry.stamp {
            return Ok(Lookup::Hit {
                entry,
                rehashed: false,
                blob,
            });
        }
        // Hash what was checked: the descriptor, from its start.
        let reader = blob.file.try_clone()?;
        std::io::Seek::rewind(&mut &*blob.file)?;
        let actual = sha256_file(reader, stamp.size, progress)?;
        if actual == entry.sif_digest.hex() {
            let entry = Entry { stamp, ..entry };
            // A trusted owner's record is theirs to refresh: yours in its
            // place is one that users who trust only them would ignore.
            if record_owner == self.trust.me() {
                self.write_entry(&identity.key, &entry)?;
            }
            return Ok(Lookup::Hit {
                entry,
                rehashed: true,
                blob,
            });
        }
        if exclusive {
            self.evict(hold, &entry)?;
        }
        Ok(Lookup::Corrupt {
            entry,
            actual: SifDigest::from_hex(&actual).map_err(io::Error::other)?,
        })
    }

    /// A fresh path for apptainer to pull into, inside the cache (so the
    /// final rename is atomic). Leftovers of killed pulls of the same
    /// identity are removed first: the caller holds the lock, so they are
    /// nobody's.
    pub fn temp_pull_path(&self, identity: &Identity) -> io::Result<(String, PathBuf)> {
        for entry in self.dir.read_dir("tmp")? {
            let name = entry?.file_name();
            if name.to_string_lossy().starts_with(&identity.key) {
                let _ = self.dir.remove_file(Path::new("tmp").join(&name));
            }
        }
        let name = format!(
            "tmp/{}-{}-{}.sif",
            identity.key,
            std::process::id(),
            next_seq()
        );
        let path = self.root.join(&name);
        Ok((name, path))
    }

    /// Remove a temporary pull file, if it is there.
    pub fn discard_temp(&self, name: &str) {
        let _ = self.dir.remove_file(name);
    }

    /// Hash the pulled file `tmp_name`, move it into `blobs/` and record it
    /// for `identity`, with its `provenance`; the digest, size and stamp
    /// come from the file.
    pub fn commit(
        &self,
        identity: &Identity,
        tmp_name: &str,
        provenance: Provenance,
        progress: &mut dyn HashProgress,
    ) -> io::Result<Entry> {
        use std::os::unix::fs::MetadataExt;
        let (dir, file_name) = tmp_name.rsplit_once('/').unwrap_or(("", tmp_name));
        let (file, meta) = trust::open_no_follow(&self.dir.open_dir(dir)?, file_name)?;
        // The pull is ours: a file someone else put in its place (the temp
        // area is shared) is not stored as ours.
        if !meta.is_file() || meta.uid() != self.trust.me() {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "the pulled file {} was replaced by {}'s before sifr could store it;                      pull again, and see \"Sharing a cache\" in sifr's README",
                    self.root.join(tmp_name).display(),
                    owner_name(meta.uid())
                ),
            ));
        }
        // Read-only, so that nobody edits a cached image in place by
        // accident, and changed before hashing, on the descriptor.
        file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o444))?;
        let size = meta.len();
        let hex = sha256_file(file.try_clone()?, size, progress)?;
        let sif_digest = SifDigest::from_hex(&hex).map_err(io::Error::other)?;
        let name = blob_name(sif_digest.hex());
        self.dir.rename(tmp_name, &self.dir, &name)?;
        // The stamp of the hashed file (the rename may change its ctime);
        // if anyone swapped the path meanwhile, its inode differs, and a
        // lookup sees it.
        let stamp = Stamp::of(&file.metadata()?);
        let entry = Entry::new(provenance, sif_digest, size, stamp);
        self.write_entry(&identity.key, &entry)?;
        Ok(entry)
    }
}
