//! The per-user TTL cache of tag → digest answers, so that a job array of a
//! thousand tasks asks the registry once, not a thousand times.
//!
//! One small JSON file per (registry, repository, tag, arch), named by a
//! hash of the four, in a directory that must be the user's own with mode
//! 0700 (created so). Entries are written to a temporary file and renamed,
//! so a reader sees a whole entry or none. Only successful answers are
//! stored; an entry that is unreadable, for another key, from the future
//! or older than the TTL is a miss.

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustix::fs::{Mode, OFlags};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{RegistryError, Resolved};
use crate::ManifestDigest;

/// Where the cache lives and how long its answers hold.
#[derive(Debug, Clone)]
pub struct TtlCache {
    pub dir: PathBuf,
    pub ttl: Duration,
}

#[derive(Serialize, Deserialize)]
struct Record {
    registry: String,
    repository: String,
    tag: String,
    arch: String,
    digest: ManifestDigest,
    index_digest: Option<ManifestDigest>,
    media_type: String,
    /// Seconds since the epoch.
    stored_at: u64,
}

pub(crate) struct Key<'a> {
    pub registry: &'a str,
    pub repository: &'a str,
    pub tag: &'a str,
    pub arch: &'a str,
}

/// An entry is a few hundred bytes.
const MAX_ENTRY: u64 = 64 * 1024;

impl Key<'_> {
    fn file_name(&self) -> String {
        let mut h = Sha256::new();
        for part in [self.registry, self.repository, self.tag, self.arch] {
            h.update(part.as_bytes());
            h.update([0]);
        }
        format!("{}.json", hex::encode(&h.finalize()[..20]))
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl TtlCache {
    pub fn new(dir: impl Into<PathBuf>, ttl: Duration) -> Self {
        Self {
            dir: dir.into(),
            ttl,
        }
    }

    /// The cached answer for `key`, if fresh.
    pub(crate) fn get(&self, key: &Key<'_>) -> Result<Option<Resolved>, RegistryError> {
        let ttl = self.ttl.as_secs().max(1);
        Ok(self
            .read(key)?
            .filter(|(_, age)| *age < ttl)
            .map(|(r, _)| r))
    }

    /// The cached answer for `key` when it is past the TTL by less than
    /// `window` (HTTP's stale-if-error, RFC 5861): for a registry that
    /// failed just now. With its age. Nothing with a zero window.
    pub(crate) fn get_stale(
        &self,
        key: &Key<'_>,
        window: Duration,
    ) -> Result<Option<(Resolved, Duration)>, RegistryError> {
        if window.is_zero() {
            return Ok(None);
        }
        let limit = self.ttl.as_secs().max(1).saturating_add(window.as_secs());
        Ok(self
            .read(key)?
            .filter(|(_, age)| *age < limit)
            .map(|(r, age)| (r, Duration::from_secs(age))))
    }

    /// The entry for `key`, whatever its age, with its age in seconds; not
    /// one from the future, of another key, or unreadable.
    fn read(&self, key: &Key<'_>) -> Result<Option<(Resolved, u64)>, RegistryError> {
        if self.ttl.is_zero() {
            return Ok(None);
        }
        let Some(dir) = self.open_dir(false)? else {
            return Ok(None);
        };
        let Ok(fd) = rustix::fs::openat(
            &dir,
            key.file_name(),
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        ) else {
            return Ok(None);
        };
        let mut text = String::new();
        if std::fs::File::from(fd)
            .take(MAX_ENTRY)
            .read_to_string(&mut text)
            .is_err()
        {
            return Ok(None);
        }
        let Ok(record) = serde_json::from_str::<Record>(&text) else {
            return Ok(None);
        };
        let same = record.registry == key.registry
            && record.repository == key.repository
            && record.tag == key.tag
            && record.arch == key.arch;
        let now = now();
        let past = record.stored_at <= now;
        Ok((same && past).then(|| {
            let resolved = Resolved {
                digest: record.digest,
                index_digest: record.index_digest,
                media_type: crate::untrusted::escape(&record.media_type, 256),
                from_cache: true,
                stale: None,
            };
            (resolved, now - record.stored_at)
        }))
    }

    /// Store a successful answer. A failure to write is not an error of the
    /// look-up (the answer is good), so it is returned for the caller to
    /// ignore or report.
    pub(crate) fn put(&self, key: &Key<'_>, resolved: &Resolved) -> Result<(), RegistryError> {
        if self.ttl.is_zero() {
            return Ok(());
        }
        let Some(dir) = self.open_dir(true)? else {
            return Ok(());
        };
        let record = Record {
            registry: key.registry.to_string(),
            repository: key.repository.to_string(),
            tag: key.tag.to_string(),
            arch: key.arch.to_string(),
            digest: resolved.digest.clone(),
            index_digest: resolved.index_digest.clone(),
            media_type: resolved.media_type.clone(),
            stored_at: now(),
        };
        let bytes = serde_json::to_vec(&record).expect("a record serializes");
        let name = key.file_name();
        let tmp = format!(".tmp-{}-{name}", std::process::id());
        let io = |e: std::io::Error| RegistryError::CacheDir {
            dir: self.dir.clone(),
            reason: format!("writing an entry: {e}"),
        };
        let fd = rustix::fs::openat(
            &dir,
            &tmp,
            OFlags::WRONLY | OFlags::CREATE | OFlags::TRUNC | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .map_err(|e| io(e.into()))?;
        let mut file = std::fs::File::from(fd);
        let written = file.write_all(&bytes).and_then(|()| file.sync_data());
        let renamed =
            written.and_then(|()| Ok(rustix::fs::renameat(&dir, &tmp, &dir, name.as_str())?));
        if let Err(e) = renamed {
            let _ = rustix::fs::unlinkat(&dir, &tmp, rustix::fs::AtFlags::empty());
            return Err(io(e));
        }
        Ok(())
    }

    /// The cache directory, checked to be ours and private. `None` when it
    /// does not exist and `create` is false.
    fn open_dir(&self, create: bool) -> Result<Option<OwnedFd>, RegistryError> {
        let bad = |reason: String| RegistryError::CacheDir {
            dir: self.dir.clone(),
            reason,
        };
        if create {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&self.dir)
                .map_err(|e| bad(format!("cannot create it: {e}")))?;
        }
        let dir = match rustix::fs::open(
            &self.dir,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            Ok(dir) => dir,
            Err(rustix::io::Errno::NOENT) if !create => return Ok(None),
            Err(e) => return Err(bad(format!("cannot open it: {e}"))),
        };
        let stat = rustix::fs::fstat(&dir).map_err(|e| bad(e.to_string()))?;
        let me = rustix::process::geteuid().as_raw();
        if stat.st_uid != me {
            return Err(bad(format!("it is owned by uid {}", stat.st_uid)));
        }
        if stat.st_mode & 0o077 != 0 {
            return Err(bad(format!("its mode is {:o}", stat.st_mode & 0o7777)));
        }
        Ok(Some(dir))
    }

    /// Whether the cache holds any entry (for tests and `cache ls`-like
    /// tools): counts the entry files.
    pub fn entries(&self) -> usize {
        count_entries(&self.dir)
    }
}

fn count_entries(dir: &Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |d| {
        d.filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
            .count()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: Key<'static> = Key {
        registry: "reg.example",
        repository: "team/app",
        tag: "v1",
        arch: "amd64",
    };

    fn resolved() -> Resolved {
        Resolved {
            digest: ManifestDigest::parse(&format!("sha256:{}", "a".repeat(64))).unwrap(),
            index_digest: None,
            media_type: super::super::OCI_MANIFEST.into(),
            from_cache: false,
            stale: None,
        }
    }

    /// Rewrite the entry's JSON with `edit`.
    fn edit(cache: &TtlCache, edit: impl Fn(&mut serde_json::Value)) {
        let path = cache.dir.join(KEY.file_name());
        let mut json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        edit(&mut json);
        std::fs::write(&path, json.to_string()).unwrap();
    }

    #[test]
    fn a_fresh_entry_hits_and_an_old_or_foreign_one_misses() {
        let dir = tempfile::tempdir().unwrap();
        let cache = TtlCache::new(dir.path().join("c"), Duration::from_secs(600));
        assert_eq!(cache.get(&KEY).unwrap(), None);
        cache.put(&KEY, &resolved()).unwrap();
        let hit = cache.get(&KEY).unwrap().unwrap();
        assert!(hit.from_cache);
        assert_eq!(hit.digest, resolved().digest);
        let other = Key { tag: "v2", ..KEY };
        assert_eq!(cache.get(&other).unwrap(), None);

        edit(&cache, |j| j["stored_at"] = (now() - 601).into());
        assert_eq!(cache.get(&KEY).unwrap(), None, "expired");
        edit(&cache, |j| j["stored_at"] = (now() + 3600).into());
        assert_eq!(cache.get(&KEY).unwrap(), None, "from the future");
        edit(&cache, |j| {
            j["stored_at"] = now().into();
            j["tag"] = "v9".into();
        });
        assert_eq!(cache.get(&KEY).unwrap(), None, "another key's entry");
        edit(&cache, |j| {
            j["tag"] = "v1".into();
            j["digest"] = "sha256:nothex".into();
        });
        assert_eq!(cache.get(&KEY).unwrap(), None, "a bad digest");
        // No temporary file is left behind.
        assert_eq!(cache.entries(), 1);
    }

    #[test]
    fn a_stale_entry_serves_only_within_the_window_past_the_ttl() {
        let dir = tempfile::tempdir().unwrap();
        let cache = TtlCache::new(dir.path().join("c"), Duration::from_secs(600));
        cache.put(&KEY, &resolved()).unwrap();
        let hour = Duration::from_secs(3600);
        assert_eq!(cache.get_stale(&KEY, Duration::ZERO).unwrap(), None, "off");
        let (fresh, age) = cache.get_stale(&KEY, hour).unwrap().unwrap();
        assert_eq!(fresh.digest, resolved().digest);
        assert!(age < Duration::from_secs(600));

        // 601 s old: past the TTL, within the hour after it.
        edit(&cache, |j| j["stored_at"] = (now() - 601).into());
        assert_eq!(cache.get(&KEY).unwrap(), None);
        let (stale, age) = cache.get_stale(&KEY, hour).unwrap().unwrap();
        assert_eq!(stale.digest, resolved().digest);
        assert!(age >= Duration::from_secs(601), "{age:?}");
        // Past TTL + window, or from the future: nothing.
        edit(&cache, |j| j["stored_at"] = (now() - 600 - 3601).into());
        assert_eq!(cache.get_stale(&KEY, hour).unwrap(), None);
        edit(&cache, |j| j["stored_at"] = (now() + 60).into());
        assert_eq!(cache.get_stale(&KEY, hour).unwrap(), None);
    }

    #[test]
    fn a_zero_ttl_neither_reads_nor_writes() {
        let dir = tempfile::tempdir().unwrap();
        let cache = TtlCache::new(dir.path().join("c"), Duration::ZERO);
        cache.put(&KEY, &resolved()).unwrap();
        assert_eq!(cache.get(&KEY).unwrap(), None);
        assert_eq!(cache.entries(), 0);
    }
}
