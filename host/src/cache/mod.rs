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

mod handoff;
mod hash;
mod lock;
mod trust;

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cap_std::ambient_authority;
use cap_std::fs::{Dir, OpenOptions};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use handoff::{RunnableSif, VerifiedBlob};
pub use hash::{HashProgress, sha256_file};
pub use lock::{ImageLock, LockMode, Wait};
pub use trust::{Distrust, Trust, Untrusted, owner_name, owner_uid};

use crate::reference::{GrammarError, ImageRef, ManifestDigest, SifDigest, SifDigestPrefix};

/// How old a blob no record refers to must be before `prune` removes it.
/// A pull moves its blob into place, then writes its record; a blob younger
/// than this may be one whose record is being written, so it is kept.
pub const ORPHAN_GRACE: Duration = Duration::from_secs(3600);

/// The identity of a cached image.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Identity {
    /// `registry/repository@digest` when pinned, else `registry/repository:tag`,
    /// then ` (arch)`.
    pub text: String,
    /// sha256 of `text`: the file-name-safe key.
    pub key: String,
}

impl Identity {
    pub fn of(image: &ImageRef, arch: &str) -> Self {
        let name = format!("{}/{}", image.registry, image.repository);
        let text = match (&image.manifest_digest, &image.tag) {
            (Some(digest), _) => format!("{name}@{digest} ({arch})"),
            (None, Some(tag)) => format!("{name}:{tag} ({arch})"),
            (None, None) => format!("{name}:latest ({arch})"),
        };
        Self::from_text(text)
    }

    /// The identity an index record names (its `identity` field).
    pub fn from_text(text: impl Into<String>) -> Self {
        let text = text.into();
        let key = hex::encode(Sha256::digest(text.as_bytes()));
        Self { text, key }
    }
}

/// Cheap evidence that a blob is unchanged since it was hashed. A write of
/// any kind changes ctime, which no user can set back.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stamp {
    pub size: u64,
    pub mtime_ns: i128,
    pub ctime_ns: i128,
    pub ino: u64,
}

impl Stamp {
    fn of(meta: &std::fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt;
        Self {
            size: meta.len(),
            mtime_ns: meta.mtime() as i128 * 1_000_000_000 + meta.mtime_nsec() as i128,
            ctime_ns: meta.ctime() as i128 * 1_000_000_000 + meta.ctime_nsec() as i128,
            ino: meta.ino(),
        }
    }
}

/// One index record: what is cached for an identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Entry {
    /// The identity text (see [`Identity`]).
    pub identity: String,
    /// The canonical reference as the user asked for it.
    pub image: String,
    pub arch: String,
    /// Manifest digest, when the reference was pinned.
    pub manifest_digest: Option<ManifestDigest>,
    /// sha256 of the SIF file: a local integrity check, not an identity.
    pub sif_digest: SifDigest,
    pub size: u64,
    /// The URI actually pulled (and so the mirror, if one served it).
    pub source_uri: String,
    pub source_note: String,
    /// Seconds since the Unix epoch.
    pub pulled_at: u64,
    pub apptainer_version: String,
    /// The notes of the plan that was tried.
    pub plan_notes: Vec<String>,
    pub stamp: Stamp,
}

impl Entry {
    /// The record with every free-text field passed through
    /// [`untrusted::escape`](crate::untrusted::escape).
    fn escaped(mut self) -> Self {
        use crate::untrusted::escape;
        for text in [
            &mut self.image,
            &mut self.arch,
            &mut self.source_uri,
            &mut self.source_note,
            &mut self.apptainer_version,
        ] {
            *text = escape(text, 1024);
        }
        for note in &mut self.plan_notes {
            *note = escape(note, 1024);
        }
        self
    }

    /// Whether the entry was pulled by the manifest digest it is filed
    /// under, when it is filed under one. The identity of a pinned
    /// reference is its digest, so a hit must be that image: a record of a
    /// tag pull (which could be anything the tag pointed at) does not count.
    pub fn pulled_as_pinned(&self) -> bool {
        match &self.manifest_digest {
            Some(digest) => self.source_uri.ends_with(&format!("@{digest}")),
            None => true,
        }
    }

    pub fn blob_name(&self) -> String {
        blob_name(self.sif_digest.hex())
    }
}

/// What a pull knows of the image it stored: an [`Entry`] but for what
/// [`Cache::commit`] learns from the file (digest, size, stamp).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Provenance {
    /// The identity text (see [`Identity`]).
    pub identity: String,
    /// The canonical reference as the user asked for it.
    pub image: String,
    pub arch: String,
    /// Manifest digest, when the reference was pinned.
    pub manifest_digest: Option<ManifestDigest>,
    /// The URI actually pulled (and so the mirror, if one served it).
    pub source_uri: String,
    pub source_note: String,
    /// Seconds since the Unix epoch.
    pub pulled_at: u64,
    pub apptainer_version: String,
    /// The notes of the plan that was tried.
    pub plan_notes: Vec<String>,
}

impl Entry {
    fn new(provenance: Provenance, sif_digest: SifDigest, size: u64, stamp: Stamp) -> Self {
        let Provenance {
            identity,
            image,
            arch,
            manifest_digest,
            source_uri,
            source_note,
            pulled_at,
            apptainer_version,
            plan_notes,
        } = provenance;
        Self {
            identity,
            image,
            arch,
            manifest_digest,
            sif_digest,
            size,
            source_uri,
            source_note,
            pulled_at,
            apptainer_version,
            plan_notes,
            stamp,
        }
    }
}

fn blob_name(hex: &str) -> String {
    format!("blobs/sha256/{hex}.sif")
}

fn index_name(key: &str) -> String {
    format!("index/{key}.json")
}

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

/// What [`Cache::prune`] did.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Pruned {
    /// Removed (or, in a dry run, would be).
    pub removed: Vec<Entry>,
    /// Due for removal, but kept: a pull or a run held them.
    pub in_use: Vec<Entry>,
}

/// A problem found by [`Cache::verify`].
#[derive(Debug, Clone, Serialize)]
pub struct BadEntry {
    pub image: String,
    pub path: PathBuf,
    pub problem: String,
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

    /// Whether `identity` looks cached (a record, and its blob), without a
    /// lock and without checking the blob: a hint of which lock to take.
    pub fn peek(&self, identity: &Identity) -> bool {
        matches!(self.read_entry(&identity.key), Ok(Some(entry))
            if self.dir.metadata(entry.blob_name()).is_ok())
    }

    /// An index record, or `None` when there is none or it does not parse,
    /// whoever wrote it (listings and eviction; a lookup uses only the
    /// records [`Cache::read_trusted_entry`] gives). A record may have been
    /// written by someone else (a shared cache), so its digest must be one,
    /// and its free text is escaped before anything can print it.
    fn read_entry(&self, key: &str) -> io::Result<Option<Entry>> {
        match self.open_record(key) {
            Ok(Some((file, meta))) => Ok(parse_record(file, &meta)),
            Ok(None) => Ok(None),
            Err(e) if trust::is_symlink_error(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The record for `key` if you trust it (see [`Trust`]): checked on the
    /// descriptor it is then read from.
    /// With the record comes its owner.
    #[allow(clippy::type_complexity)]
    fn read_trusted_entry(&self, key: &str) -> io::Result<Result<Option<(Entry, u32)>, Untrusted>> {
        let untrusted = |why| Untrusted {
            path: self.root.join(index_name(key)),
            why,
        };
        let (file, meta) = match self.open_record(key) {
            Ok(Some(found)) => found,
            Ok(None) => return Ok(Ok(None)),
            Err(e) if trust::is_symlink_error(&e) => return Ok(Err(untrusted(Distrust::NotAFile))),
            Err(e) => return Err(e),
        };
        if let Err(why) = self.trust.check_file(&meta) {
            return Ok(Err(untrusted(why)));
        }
        use std::os::unix::fs::MetadataExt;
        Ok(Ok(
            parse_record(file, &meta).map(|entry| (entry, meta.uid()))
        ))
    }

    /// `index/<key>.json`, opened without following a symlink.
    fn open_record(&self, key: &str) -> io::Result<Option<(std::fs::File, std::fs::Metadata)>> {
        let index = self.dir.open_dir("index")?;
        match trust::open_no_follow(&index, &format!("{key}.json")) {
            Ok(found) => Ok(Some(found)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
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

    fn write_entry(&self, key: &str, entry: &Entry) -> io::Result<()> {
        let bytes = serde_json::to_vec_pretty(entry).map_err(io::Error::other)?;
        // A leading dot: `sweep` leaves these alone unless they are stale,
        // since index writes happen outside the pull lock.
        let tmp = format!("tmp/.{key}.json.{}-{}", std::process::id(), next_seq());
        let mut file = self.dir.create(&tmp)?.into_std();
        // Writable by you alone, whatever the umask: a record others could
        // write is one a shared cache does not trust.
        file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644))?;
        file.write_all(&bytes)?;
        file.sync_all()?;
        self.dir.rename(&tmp, &self.dir, index_name(key))
    }

    fn stamp(&self, name: &str) -> io::Result<Stamp> {
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
    /// The record and the blob must each pass [`Trust`], checked on the
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

    /// Remove `entry`, and its blob unless another record refers to it. The
    /// caller holds the identity's lock exclusively.
    fn evict(&self, hold: &ImageLock, entry: &Entry) -> io::Result<()> {
        debug_assert_eq!(hold.mode(), LockMode::Exclusive);
        ignore_missing(self.dir.remove_file(index_name(hold.key())))?;
        if !self
            .entries()?
            .iter()
            .any(|(_, e)| e.sif_digest == entry.sif_digest)
        {
            ignore_missing(self.dir.remove_file(entry.blob_name()))?;
        }
        Ok(())
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

    /// Every index entry, with its key.
    pub fn entries(&self) -> io::Result<Vec<(String, Entry)>> {
        let mut out = Vec::new();
        for item in self.dir.read_dir("index")? {
            let name = item?.file_name().to_string_lossy().into_owned();
            let Some(key) = name.strip_suffix(".json") else {
                continue;
            };
            if let Some(entry) = self.read_entry(key)? {
                out.push((key.to_string(), entry));
            }
        }
        out.sort_by(|a, b| {
            a.1.image
                .cmp(&b.1.image)
                .then(a.1.pulled_at.cmp(&b.1.pulled_at))
        });
        Ok(out)
    }

    /// Remove the entries `what` selects (see [`Selector`]). Returns them.
    ///
    /// Each is removed under its identity's exclusive lock, so a pull of it
    /// in progress, or a run that holds it, is waited for: `on_wait` is
    /// told which entry and for how long (return `false` to give up, with
    /// [`io::ErrorKind::Interrupted`]); after `timeout`, the removal fails
    /// with [`io::ErrorKind::TimedOut`].
    pub fn remove(
        &self,
        what: &Selector,
        timeout: Option<Duration>,
        on_wait: &mut dyn FnMut(&Entry, Duration) -> bool,
    ) -> io::Result<Vec<Entry>> {
        let matches = |entry: &Entry| what.matches(entry);
        let mut removed = Vec::new();
        for (key, entry) in self.entries()? {
            if !matches(&entry) {
                continue;
            }
            let mut report = |waited| on_wait(&entry, waited);
            let lock = self.lock_key(
                &key,
                LockMode::Exclusive,
                &mut Wait {
                    timeout,
                    on_wait: Some(&mut report),
                },
            )?;
            // What the record says now: a pull may have replaced it, or
            // another removal taken it, while we waited.
            if let Some(current) = self.read_entry(&key)?
                && matches(&current)
            {
                self.evict(&lock, &current)?;
                removed.push(current);
            }
        }
        Ok(removed)
    }

    /// Remove entries pulled more than `older_than` ago, then the oldest
    /// ones until the cache fits in `max_size` bytes; also orphaned blobs
    /// older than [`ORPHAN_GRACE`] and leftovers of killed pulls. With
    /// `dry_run`, only report.
    ///
    /// An entry whose identity's lock is held (a pull, a run, another
    /// eviction) is not waited for: it is in use, so it is kept, and listed
    /// in [`Pruned::in_use`].
    pub fn prune(
        &self,
        older_than: Option<Duration>,
        max_size: Option<u64>,
        dry_run: bool,
    ) -> io::Result<Pruned> {
        let now = unix_now();
        let mut entries = self.entries()?;
        entries.sort_by_key(|(_, e)| e.pulled_at);
        let mut doomed = Vec::new();
        let mut kept = Vec::new();
        for (key, entry) in entries {
            let old = older_than.is_some_and(|d| now.saturating_sub(entry.pulled_at) > d.as_secs());
            if old {
                doomed.push((key, entry))
            } else {
                kept.push((key, entry))
            }
        }
        if let Some(max) = max_size {
            let mut total: u64 = kept.iter().map(|(_, e)| e.size).sum();
            let mut i = 0;
            while total > max && i < kept.len() {
                total -= kept[i].1.size;
                i += 1;
            }
            doomed.extend(kept.drain(..i));
        }
        let mut pruned = Pruned::default();
        if dry_run {
            pruned.removed = doomed.into_iter().map(|(_, e)| e).collect();
            return Ok(pruned);
        }
        for (key, entry) in doomed {
            let Some(lock) = self.try_lock_key(&key, LockMode::Exclusive)? else {
                pruned.in_use.push(entry);
                continue;
            };
            // Only the record that was judged: a newer pull is not old.
            match self.read_entry(&key)? {
                Some(current)
                    if current.sif_digest == entry.sif_digest
                        && current.pulled_at == entry.pulled_at =>
                {
                    self.evict(&lock, &current)?;
                    pruned.removed.push(current);
                }
                _ => {}
            }
        }
        self.sweep()?;
        Ok(pruned)
    }

    /// Remove blobs no entry refers to that are older than
    /// [`ORPHAN_GRACE`], and temporary files whose pull is not running
    /// (nobody holds their identity's lock).
    fn sweep(&self) -> io::Result<()> {
        let referenced: std::collections::HashSet<String> = self
            .entries()?
            .into_iter()
            .map(|(_, e)| e.blob_name())
            .collect();
        let grace_ns = ORPHAN_GRACE.as_nanos() as i128;
        let now_ns = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i128);
        for item in self.dir.read_dir("blobs/sha256")? {
            let name = format!("blobs/sha256/{}", item?.file_name().to_string_lossy());
            if referenced.contains(&name) {
                continue;
            }
            // The rename into place and the chmod before it set the ctime.
            let stamp = match self.stamp(&name) {
                Ok(stamp) => stamp,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            if now_ns - stamp.ctime_ns.max(stamp.mtime_ns) > grace_ns {
                ignore_missing(self.dir.remove_file(&name))?;
            }
        }
        for item in self.dir.read_dir("tmp")? {
            let item = item?;
            let file = item.file_name().to_string_lossy().into_owned();
            if file.starts_with('.') {
                let stale = item
                    .metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| SystemTime::now().duration_since(t.into_std()).ok())
                    .is_some_and(|age| age > Duration::from_secs(3600));
                if stale {
                    ignore_missing(self.dir.remove_file(format!("tmp/{file}")))?;
                }
                continue;
            }
            let key: String = file.chars().take(64).collect();
            if !crate::reference::is_lower_hex(&key, 64..=64) {
                continue;
            }
            if let Some(_pulling) = self.try_lock_key(&key, LockMode::Exclusive)? {
                ignore_missing(self.dir.remove_file(format!("tmp/{file}")))?;
            }
        }
        Ok(())
    }

    /// Re-hash every blob. Returns the entries that are missing or corrupt.
    pub fn verify(&self, progress: &mut dyn HashProgress) -> io::Result<Vec<BadEntry>> {
        let mut bad = Vec::new();
        for (key, entry) in self.entries()? {
            let name = entry.blob_name();
            let path = self.root.join(&name);
            let problem = match self.dir.open(&name) {
                Ok(file) => {
                    let file = file.into_std();
                    let size = file.metadata()?.len();
                    let actual = sha256_file(file, size, progress)?;
                    if actual == entry.sif_digest.hex() {
                        if self.stamp(&name)? != entry.stamp {
                            self.write_entry(
                                &key,
                                &Entry {
                                    stamp: self.stamp(&name)?,
                                    ..entry.clone()
                                },
                            )?;
                        }
                        continue;
                    }
                    format!(
                        "content changed: expected {}, found sha256:{actual}",
                        entry.sif_digest
                    )
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    "the SIF file is missing".to_string()
                }
                Err(e) => return Err(e),
            };
            bad.push(BadEntry {
                image: entry.image.clone(),
                path,
                problem,
            });
        }
        Ok(bad)
    }
}

/// The record in `file`, if it is one: a regular file of at most 1 MiB that
/// parses and names a SIF digest. Its free text is escaped.
fn parse_record(file: std::fs::File, meta: &std::fs::Metadata) -> Option<Entry> {
    use std::io::Read;
    const MAX_RECORD: u64 = 1 << 20;
    if !meta.is_file() || meta.len() > MAX_RECORD {
        return None;
    }
    let mut bytes = Vec::new();
    file.take(MAX_RECORD).read_to_end(&mut bytes).ok()?;
    // The digests are checked as they are parsed: a record with one that
    // is not a digest is not a record.
    serde_json::from_slice::<Entry>(&bytes)
        .ok()
        .map(Entry::escaped)
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

/// Which entries `sifr cache rm` removes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    /// The entries of this image: as canonical, or as typed; a reference
    /// with neither tag nor digest (`ubuntu`) selects all its tags.
    Image(ImageRef),
    /// The entries whose SIF file's digest starts with these hex digits.
    Sif(SifDigestPrefix),
}

impl Selector {
    /// `sha256:<hex>`, or 8 to 64 hex digits alone, is a SIF digest (or its
    /// start); anything else is an image reference.
    pub fn parse(what: &str) -> Result<Self, GrammarError> {
        let bare_hex = || crate::reference::is_lower_hex(&what.to_ascii_lowercase(), 8..=64);
        if what.starts_with("sha256:") || bare_hex() {
            SifDigestPrefix::parse(what).map(Self::Sif)
        } else {
            ImageRef::parse(what).map(Self::Image)
        }
    }

    pub fn matches(&self, entry: &Entry) -> bool {
        match self {
            Self::Image(image) => {
                let canonical = image.to_string();
                entry.image == canonical
                    || (image.tag.is_none()
                        && image.manifest_digest.is_none()
                        && entry.image.starts_with(&format!("{canonical}:")))
            }
            Self::Sif(prefix) => entry.sif_digest.starts_with(prefix),
        }
    }
}

impl std::str::FromStr for Selector {
    type Err = GrammarError;

    fn from_str(what: &str) -> Result<Self, Self::Err> {
        Self::parse(what)
    }
}
