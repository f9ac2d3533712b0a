//! The index: one JSON record per identity (`index/<key>.json`), naming
//! its blob and where it came from. Records are read whoever wrote them
//! (listings, eviction) or only if trusted (lookups), and always parsed with
//! their digests checked and their free text escaped.

use std::io::{self, Write};

use serde::{Deserialize, Serialize};

use super::trust::{self, Distrust, Untrusted};
use super::{Cache, next_seq};
use crate::reference::{ManifestDigest, SifDigest};

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
    pub(super) fn of(meta: &std::fs::Metadata) -> Self {
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
    /// The identity text (see [`Identity`](super::Identity)).
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
    /// The identity text (see [`Identity`](super::Identity)).
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
    pub(super) fn new(
        provenance: Provenance,
        sif_digest: SifDigest,
        size: u64,
        stamp: Stamp,
    ) -> Self {
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

pub(super) fn blob_name(hex: &str) -> String {
    format!("blobs/sha256/{hex}.sif")
}

pub(super) fn index_name(key: &str) -> String {
    format!("index/{key}.json")
}

impl Cache {
    /// An index record, or `None` when there is none or it does not parse,
    /// whoever wrote it (listings and eviction; a lookup uses only the
    /// records [`Cache::read_trusted_entry`] gives). A record may have been
    /// written by someone else (a shared cache), so its digest must be one,
    /// and its free text is escaped before anything can print it.
    pub(super) fn read_entry(&self, key: &str) -> io::Result<Option<Entry>> {
        match self.open_record(key) {
            Ok(Some((file, meta))) => Ok(parse_record(file, &meta)),
            Ok(None) => Ok(None),
            Err(e) if trust::is_symlink_error(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The record for `key` if you trust it (see [`Trust`](super::Trust)): checked on the
    /// descriptor it is then read from.
    /// With the record comes its owner.
    #[allow(clippy::type_complexity)]
    pub(super) fn read_trusted_entry(
        &self,
        key: &str,
    ) -> io::Result<Result<Option<(Entry, u32)>, Untrusted>> {
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

    pub(super) fn write_entry(&self, key: &str, entry: &Entry) -> io::Result<()> {
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

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn record(sif_digest: &str, manifest_digest: Option<&str>) -> serde_json::Value {
        serde_json::json!({
            "identity": "docker.io/library/ubuntu:22.04 (amd64)",
            "image": "docker.io/library/ubuntu:22.04",
            "arch": "amd64",
            "manifest-digest": manifest_digest,
            "sif-digest": sif_digest,
            "size": 1,
            "source-uri": "docker://ubuntu:22.04",
            "source-note": "origin",
            "pulled-at": 0,
            "apptainer-version": "1.3.0",
            "plan-notes": [],
            "stamp": {"size": 1, "mtime_ns": 0, "ctime_ns": 0, "ino": 0},
        })
    }

    fn parsed(record: &serde_json::Value) -> Option<Entry> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.json");
        std::fs::write(&path, serde_json::to_vec(record).unwrap()).unwrap();
        let file = std::fs::File::open(&path).unwrap();
        let meta = file.metadata().unwrap();
        parse_record(file, &meta)
    }

    #[test]
    fn a_record_is_written_as_it_always_was() {
        let sif = format!("sha256:{HEX}");
        let written = record(&sif, Some(&sif));
        let entry = parsed(&written).expect("a valid record");
        assert_eq!(entry.sif_digest.hex(), HEX);
        assert_eq!(serde_json::to_value(&entry).unwrap(), written);
    }

    #[test]
    fn a_record_whose_digests_are_not_digests_is_not_an_entry() {
        let sif = format!("sha256:{HEX}");
        assert!(parsed(&record(&sif, None)).is_some());
        for bad_sif in [HEX, "sha256:abc", "sha256:../../etc/passwd", ""] {
            assert!(parsed(&record(bad_sif, None)).is_none(), "{bad_sif}");
        }
        for bad_manifest in ["sha256:abc", "latest", "sha256:\u{1b}[2J"] {
            assert!(
                parsed(&record(&sif, Some(bad_manifest))).is_none(),
                "{bad_manifest}"
            );
        }
    }
}
