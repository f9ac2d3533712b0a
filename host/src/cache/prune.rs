//! Removal: `cache rm` by [`Selector`], `cache prune` by age and size, the
//! sweep of orphans and leftovers, and the eviction they share, always
//! under the identity's exclusive lock.

use std::io;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use super::index::index_name;
use super::{Cache, Entry, ImageLock, LockMode, ORPHAN_GRACE, Wait, ignore_missing, unix_now};
use crate::reference::{GrammarError, ImageRef, SifDigestPrefix, is_lower_hex};

/// What [`Cache::prune`] did.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Pruned {
    /// Removed (or, in a dry run, would be).
    pub removed: Vec<Entry>,
    /// Due for removal, but kept: a pull or a run held them.
    pub in_use: Vec<Entry>,
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
        let bare_hex = || is_lower_hex(&what.to_ascii_lowercase(), 8..=64);
        if what.starts_with("sha256:") || bare_hex() {
            SifDigestPrefix::parse(what).map(Self::Sif)
        } else {
            ImageRef::parse(what).map(Self::Image)
        }
    }

    pub fn matches(&self, entry: &Entry) -> bool {
        match self {
            Self::Image(image) => selects(image, &entry.image),
            Self::Sif(prefix) => entry.sif_digest.starts_with(prefix),
        }
    }
}

/// Whether `image`, as `sifr cache rm` takes it, selects a record of
/// `cached` (a canonical reference): the same reference; for `name:tag`,
/// also that tag pinned to any digest (as `pin = "resolve"` and `--locked`
/// cache it); for `name` alone, every tag and pin of it.
fn selects(image: &ImageRef, cached: &str) -> bool {
    let canonical = image.to_string();
    if cached == canonical {
        return true;
    }
    let below = |sep: char| {
        cached
            .strip_prefix(canonical.as_str())
            .is_some_and(|rest| rest.starts_with(sep))
    };
    match (&image.tag, &image.manifest_digest) {
        (None, None) => below(':') || below('@'),
        (Some(_), None) => below('@'),
        (_, Some(_)) => false,
    }
}

impl std::str::FromStr for Selector {
    type Err = GrammarError;

    fn from_str(what: &str) -> Result<Self, Self::Err> {
        Self::parse(what)
    }
}

impl Cache {
    /// Remove `entry`, and its blob unless another record refers to it. The
    /// caller holds the identity's lock exclusively.
    pub(super) fn evict(&self, hold: &ImageLock, entry: &Entry) -> io::Result<()> {
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
            if !is_lower_hex(&key, 64..=64) {
                continue;
            }
            if let Some(_pulling) = self.try_lock_key(&key, LockMode::Exclusive)? {
                ignore_missing(self.dir.remove_file(format!("tmp/{file}")))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rm_reads_a_digest_or_its_start_as_a_sif_digest_and_anything_else_as_an_image() {
        let hex = "921888871477".to_string() + &"0".repeat(52);
        for sif in [
            "92188887",
            "921888871477",
            "921888871477ABCD",
            &format!("sha256:{hex}"),
            &hex,
        ] {
            assert!(
                matches!(Selector::parse(sif), Ok(Selector::Sif(_))),
                "{sif}"
            );
        }
        for image in ["ubuntu", "ubuntu:22.04", "9218888", "deadbeef:1", "a/one"] {
            assert!(
                matches!(Selector::parse(image), Ok(Selector::Image(_))),
                "{image}"
            );
        }
        for bad in ["sha256:xyz", "sha256:0123", "Ubuntu", ""] {
            assert!(Selector::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn an_image_selects_its_tags_and_their_pins_and_nothing_else() {
        let digest = format!("sha256:{}", "a".repeat(64));
        let ubuntu = "docker.io/library/ubuntu";
        let records = [
            format!("{ubuntu}:22.04"),
            format!("{ubuntu}:22.04@{digest}"),
            format!("{ubuntu}:24.04"),
            format!("{ubuntu}@{digest}"),
            "docker.io/library/ubuntu-debootstrap:22.04".to_string(),
            format!("docker.io/library/ubuntu-debootstrap:22.04@{digest}"),
        ];
        let selected = |what: &str| -> Vec<&str> {
            let image = ImageRef::parse(what).unwrap();
            records
                .iter()
                .filter(|r| selects(&image, r))
                .map(String::as_str)
                .collect()
        };
        assert_eq!(
            selected("ubuntu"),
            [&records[0], &records[1], &records[2], &records[3]]
        );
        assert_eq!(selected("ubuntu:22.04"), [&records[0], &records[1]]);
        assert_eq!(selected(&format!("ubuntu:22.04@{digest}")), [&records[1]]);
        assert_eq!(selected(&format!("ubuntu@{digest}")), [&records[3]]);
    }
}
