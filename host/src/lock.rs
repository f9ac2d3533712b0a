//! `sifr.lock`: images pinned to the manifest digests they named when they
//! were locked, with the policy chain that decided them.
//!
//! A lock file is TOML, written by `sifr lock` and read by `sifr
//! pull|run|exec --locked`:
//!
//! ```toml
//! # written by `sifr lock`; update it with `sifr lock`, not by hand.
//! version = 1
//!
//! [[image]]
//! reference = "ubuntu:22.04"
//! canonical = "docker.io/library/ubuntu:22.04"
//! arch = "amd64"
//! manifest-digest = "sha256:<64 hex>"
//! index-digest = "sha256:<64 hex>"
//! resolved-at = "docker.io"
//! policy = [
//!   { name = "default", sha256 = "<64 hex>" },
//! ]
//!
//! [image.local]
//! sif-sha256 = "sha256:<64 hex>"
//! ```
//!
//! An entry is keyed by the reference as written and the architecture.
//! `manifest-digest` is what is pulled; `index-digest` is there when the
//! tag named a multi-arch index; `resolved-at` is the registry that
//! answered (the origin, or the first reachable source of the plan: see
//! [`resolve_entry`]); `policy` is the chain that decided, each plugin by
//! the sha256 of its component. `[image.local]` is this machine's SIF file
//! built from the image: a local integrity check, never pulled by (a
//! `docker://` pull is a build, and two builds differ in their bytes).
//!
//! Reading is strict: unknown keys, an unknown `version`, a digest that is
//! not `sha256:<64 hex>`, and two entries for one reference and
//! architecture are errors that name the file (and the line, where TOML
//! knows it). Writing keeps the other entries, sorted for stable diffs,
//! and replaces the file atomically.

use std::fmt::{self, Write as _};
use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::cache::{Cache, Identity, LockMode, Lookup, Wait};
use crate::error::PolicyError;
use crate::policy::{Context, LookupOutcome, Outcome, Policy, PullRef, Purpose};
use crate::reference::{
    GrammarError, ImageRef, ManifestDigest, SifDigest, WasmDigest, canonical_registry,
};
use crate::registry::RegistryClient;

/// The version of the format this module reads and writes.
pub const VERSION: u32 = 1;

/// The largest lock file read: some 40,000 entries.
const MAX_FILE: u64 = 16 << 20;

/// The file name `sifr lock` writes by default, in the current directory.
pub const DEFAULT_FILE: &str = "sifr.lock";

/// The comment a written lock file starts with.
const HEADER: &str = "\
# written by `sifr lock`; update it with `sifr lock`, not by hand.
# Each [[image]] pins a reference, as written, for one architecture, to the
# manifest digest it named when locked: `sifr pull|run|exec --locked FILE`
# pulls by that digest. [image.local] is this machine's SIF file: a local
# integrity check, never pulled by.
";

/// A lock file: its entries, one per reference as written and architecture.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockFile {
    /// The format's version: [`VERSION`].
    pub version: u32,
    /// The entries, `[[image]]` tables.
    #[serde(rename = "image", default)]
    pub images: Vec<LockedImage>,
}

/// One locked image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct LockedImage {
    /// The reference as written (`ubuntu:22.04`): what `--locked` looks up.
    pub reference: String,
    /// Its fully qualified form (`docker.io/library/ubuntu:22.04`).
    pub canonical: String,
    /// The OCI architecture it was locked for (`amd64`, `arm64`, ...).
    pub arch: String,
    /// The manifest digest pulled: for a multi-arch index, of `arch`'s
    /// manifest.
    pub manifest_digest: ManifestDigest,
    /// The index's digest, when the tag named a multi-arch index.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index_digest: Option<ManifestDigest>,
    /// The registry that answered: the origin, or a source of the plan.
    pub resolved_at: String,
    /// The policy chain that decided, in order.
    #[serde(default)]
    pub policy: Vec<LockedPlugin>,
    /// This machine's SIF file: local integrity only, never pulled by.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local: Option<LocalSif>,
}

/// One plugin of the chain, by the sha256 of its component.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockedPlugin {
    pub name: String,
    /// 64 lowercase hex digits, as `sha256sum` prints them.
    pub sha256: WasmDigest,
}

/// `[image.local]`: the SIF file this machine's cache holds for the image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct LocalSif {
    /// The SIF file's sha256: a local integrity check, never an identity
    /// across machines, never pulled by.
    pub sif_sha256: SifDigest,
}

/// What can go wrong with a lock file, or in locking an image.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// The lock file cannot be read (it may not be there).
    #[error("cannot read the lock file {}: {error}{}", path.display(), if error.kind() == std::io::ErrorKind::NotFound { "; write it with `sifr lock IMAGE...`, or name it with --file" } else { "" })]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },

    /// The lock file is not one this sifr reads.
    #[error("{} is not a valid lock file: {message}", path.display())]
    Malformed { path: PathBuf, message: String },

    /// The lock file cannot be written.
    #[error("cannot write the lock file {}: {error}", path.display())]
    Write {
        path: PathBuf,
        error: std::io::Error,
    },

    /// The reference does not parse.
    #[error(transparent)]
    InvalidReference(#[from] GrammarError),

    /// The policy denied the image, or a plugin failed deciding.
    #[error("{0}")]
    Policy(Box<crate::Error>),

    /// No registry could say which digest the tag names.
    #[error(
        "cannot lock {image}: no registry said which digest it names:{}\nCheck the network and the registry; `sifr resolve --explain {image}` shows the plan",
        attempts.iter().enumerate().map(|(i, (at, e))| format!("\n  {}. {at}: {e}", i + 1)).collect::<String>()
    )]
    Unresolved {
        image: String,
        /// Each source asked (`registry/repository:tag`), with its error.
        attempts: Vec<(String, String)>,
    },

    /// `--locked`: the image is not in the lock file.
    #[error("{reference} is not in {}{}; add it with `sifr lock{} {reference}`", path.display(), locked_for(reference, arch, locked), arch_flag(arch))]
    NotLocked {
        path: PathBuf,
        reference: String,
        arch: String,
        /// What the file locks: `(reference, arch)`.
        locked: Vec<(String, String)>,
    },

    /// `--frozen`: the lock would change if made now.
    #[error(
        "{} is out of date for {reference} ({arch}): {}; update it with `sifr lock{} {reference}`, or drop --frozen",
        path.display(),
        drift.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "),
        arch_flag(arch)
    )]
    Frozen {
        path: PathBuf,
        reference: String,
        arch: String,
        drift: Vec<Drift>,
    },
}

/// What a [`LockError::NotLocked`] message says the file locks instead.
fn locked_for(reference: &str, arch: &str, locked: &[(String, String)]) -> String {
    let canonical = ImageRef::parse(reference).ok().map(|i| i.to_string());
    let same: Vec<&str> = locked
        .iter()
        .filter(|(r, _)| {
            r == reference || ImageRef::parse(r).ok().map(|i| i.to_string()) == canonical
        })
        .map(|(_, a)| a.as_str())
        .collect();
    if !same.is_empty() {
        return format!(" for {arch} (it is locked for {})", same.join(", "));
    }
    if locked.is_empty() {
        return " (it locks no image)".to_string();
    }
    const SHOWN: usize = 8;
    let mut names: Vec<String> = locked
        .iter()
        .take(SHOWN)
        .map(|(r, a)| format!("{r} ({a})"))
        .collect();
    if locked.len() > SHOWN {
        names.push(format!("and {} more", locked.len() - SHOWN));
    }
    format!(" (locked for: {})", names.join(", "))
}

/// ` --arch ARCH` in a suggested command, unless ARCH is this machine's.
fn arch_flag(arch: &str) -> String {
    if arch == crate::policy::host_arch() {
        String::new()
    } else {
        format!(" --arch {arch}")
    }
}

/// How a locked image differs from what locking it now gives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Drift {
    /// The tag names another manifest now.
    TagMoved {
        /// `registry/repository`.
        name: String,
        tag: String,
        locked: ManifestDigest,
        now: ManifestDigest,
    },
    /// The tag names another index now, though `arch`'s manifest is the
    /// same (another architecture's image changed, say).
    IndexMoved {
        name: String,
        tag: String,
        locked: Option<ManifestDigest>,
        now: Option<ManifestDigest>,
    },
    /// The policy chain's plugins, or their components, changed.
    PolicyChanged {
        locked: Vec<LockedPlugin>,
        now: Vec<LockedPlugin>,
    },
    /// The policy now denies the image.
    Denied { plugin: String, reason: String },
    /// The lock file has no entry for it.
    NotLocked,
}

impl fmt::Display for Drift {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let digest = |d: &Option<ManifestDigest>| {
            d.as_ref()
                .map_or_else(|| "no index".to_string(), ToString::to_string)
        };
        match self {
            Self::TagMoved {
                name,
                tag,
                locked,
                now,
            } => write!(f, "tag {tag} of {name} now names {now} (locked {locked})"),
            Self::IndexMoved {
                name,
                tag,
                locked,
                now,
            } => write!(
                f,
                "tag {tag} of {name} now names index {} (locked {}); the manifest for this \
                 architecture is the same",
                digest(now),
                digest(locked)
            ),
            Self::PolicyChanged { locked, now } => write!(
                f,
                "the policy chain is now {} (locked {})",
                chain(now),
                chain(locked)
            ),
            Self::Denied { plugin, reason } => {
                write!(f, "the policy now denies it: plugin '{plugin}': {reason}")
            }
            Self::NotLocked => f.write_str("it is not in the lock file"),
        }
    }
}

/// `a (0123456789ab), b (…)`, or `empty`.
fn chain(plugins: &[LockedPlugin]) -> String {
    if plugins.is_empty() {
        return "empty".to_string();
    }
    plugins
        .iter()
        .map(|p| format!("{} ({})", p.name, &p.sha256.as_hex()[..12]))
        .collect::<Vec<_>>()
        .join(", ")
}

impl Default for LockFile {
    fn default() -> Self {
        Self {
            version: VERSION,
            images: Vec::new(),
        }
    }
}

/// Just enough of a lock file to read its version before the rest.
#[derive(Deserialize)]
struct Header {
    version: Option<toml::Spanned<toml::Value>>,
}

impl LockFile {
    /// Read and check the lock file at `path`.
    pub fn load(path: &Path) -> Result<Self, LockError> {
        use std::io::Read as _;
        let read_err = |error| LockError::Read {
            path: path.to_path_buf(),
            error,
        };
        // Read at most one byte past the cap, so that a huge file (or a
        // device) is refused without being read whole.
        let mut text = String::new();
        std::fs::File::open(path)
            .map_err(read_err)?
            .take(MAX_FILE + 1)
            .read_to_string(&mut text)
            .map_err(read_err)?;
        if text.len() as u64 > MAX_FILE {
            return Err(LockError::Malformed {
                path: path.to_path_buf(),
                message: format!(
                    "it is larger than {} MiB, far more than any lock file sifr writes; \
                     check that --locked names a lock file",
                    MAX_FILE >> 20
                ),
            });
        }
        Self::parse(&text, path)
    }

    /// [`LockFile::load`], or an empty lock file when there is none yet.
    pub fn load_or_new(path: &Path) -> Result<Self, LockError> {
        match std::fs::metadata(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            _ => Self::load(path),
        }
    }

    /// Parse a lock file's text; `path` names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, LockError> {
        let malformed = |message: String| LockError::Malformed {
            path: path.to_path_buf(),
            message,
        };
        let toml_error = |e: toml::de::Error| malformed(toml_message(text, &e));
        // The version first: a newer format may have keys this one lacks.
        let header: Header = toml::from_str(text).map_err(toml_error)?;
        match &header.version {
            None => {
                return Err(malformed(format!(
                    "it has no `version`; this sifr reads version {VERSION}"
                )));
            }
            Some(v) if v.get_ref().as_integer() != Some(i64::from(VERSION)) => {
                return Err(malformed(format!(
                    "line {}: version {} is not one this sifr reads (version {VERSION}); \
                     write it again with `sifr lock`, or use the sifr that wrote it",
                    line_of(text, v.span().start),
                    v.get_ref()
                )));
            }
            Some(_) => {}
        }
        let file: Self = toml::from_str(text).map_err(toml_error)?;
        let mut seen = std::collections::HashSet::new();
        for image in &file.images {
            if !seen.insert((image.reference.as_str(), image.arch.as_str())) {
                return Err(malformed(format!(
                    "{} ({}) is locked twice; keep one of its [[image]] entries",
                    image.reference, image.arch
                )));
            }
            let parsed = ImageRef::parse(&image.canonical).map_err(|e| {
                malformed(format!(
                    "the canonical reference of {}: {e}",
                    image.reference
                ))
            })?;
            if let Some(d) = &parsed.manifest_digest
                && *d != image.manifest_digest
            {
                return Err(malformed(format!(
                    "{} names {d}, but its manifest-digest is {}",
                    image.canonical, image.manifest_digest
                )));
            }
        }
        Ok(file)
    }

    /// The file's text: a header comment, then the entries sorted by
    /// reference and architecture.
    pub fn to_toml(&self) -> String {
        let mut images: Vec<&LockedImage> = self.images.iter().collect();
        images.sort_by(|a, b| (&a.reference, &a.arch).cmp(&(&b.reference, &b.arch)));
        let mut out = String::from(HEADER);
        let _ = writeln!(out, "version = {}", self.version);
        for image in images {
            let _ = writeln!(out, "\n[[image]]");
            let _ = writeln!(out, "reference = {}", quote(&image.reference));
            let _ = writeln!(out, "canonical = {}", quote(&image.canonical));
            let _ = writeln!(out, "arch = {}", quote(&image.arch));
            let _ = writeln!(
                out,
                "manifest-digest = {}",
                quote(image.manifest_digest.as_str())
            );
            if let Some(index) = &image.index_digest {
                let _ = writeln!(out, "index-digest = {}", quote(index.as_str()));
            }
            let _ = writeln!(out, "resolved-at = {}", quote(&image.resolved_at));
            if image.policy.is_empty() {
                let _ = writeln!(out, "policy = []");
            } else {
                let _ = writeln!(out, "policy = [");
                for plugin in &image.policy {
                    let _ = writeln!(
                        out,
                        "  {{ name = {}, sha256 = {} }},",
                        quote(&plugin.name),
                        quote(plugin.sha256.as_hex())
                    );
                }
                let _ = writeln!(out, "]");
            }
            if let Some(local) = &image.local {
                let _ = writeln!(out, "\n[image.local]");
                let _ = writeln!(
                    out,
                    "# This machine's SIF file: local integrity only, never pulled by."
                );
                let _ = writeln!(out, "sif-sha256 = {}", quote(local.sif_sha256.as_str()));
            }
        }
        out
    }

    /// Write the file at `path` atomically: a temporary file in the same
    /// directory, renamed over it. An existing file keeps its permissions.
    pub fn save(&self, path: &Path) -> Result<(), LockError> {
        let write_err = |error| LockError::Write {
            path: path.to_path_buf(),
            error,
        };
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let mut tmp = tempfile::Builder::new()
            .prefix(".sifr.lock.")
            .tempfile_in(dir)
            .map_err(write_err)?;
        let permissions = match std::fs::metadata(path) {
            Ok(meta) => meta.permissions(),
            Err(_) => std::os::unix::fs::PermissionsExt::from_mode(0o644),
        };
        tmp.as_file()
            .set_permissions(permissions)
            .map_err(write_err)?;
        tmp.write_all(self.to_toml().as_bytes())
            .map_err(write_err)?;
        tmp.as_file().sync_all().map_err(write_err)?;
        tmp.persist(path).map_err(|e| write_err(e.error))?;
        Ok(())
    }

    /// The entry for `reference` as written and `arch`.
    pub fn get(&self, reference: &str, arch: &str) -> Option<&LockedImage> {
        self.images
            .iter()
            .find(|i| i.reference == reference && i.arch == arch)
    }

    /// The entry `--locked` uses for `written` on `arch`: the one for the
    /// reference as written, else one whose canonical form is the same
    /// image (`ubuntu:22.04` and `docker.io/library/ubuntu:22.04` are one
    /// image, and so is `docker://ubuntu:22.04`).
    pub fn find(&self, written: &str, arch: &str) -> Option<&LockedImage> {
        self.get(written, arch).or_else(|| {
            let canonical = ImageRef::parse(written).ok()?.to_string();
            self.images
                .iter()
                .find(|i| i.arch == arch && i.canonical == canonical)
        })
    }

    /// Add `image`, replacing the entry for its reference and arch; the
    /// entries stay sorted. Returns the entry it replaced.
    pub fn upsert(&mut self, image: LockedImage) -> Option<LockedImage> {
        let old = self
            .images
            .iter()
            .position(|i| i.reference == image.reference && i.arch == image.arch)
            .map(|at| self.images.remove(at));
        self.images.push(image);
        self.images
            .sort_by(|a, b| (&a.reference, &a.arch).cmp(&(&b.reference, &b.arch)));
        old
    }

    /// [`LockFile::find`], or the error `--locked` reports.
    pub fn require(
        &self,
        path: &Path,
        written: &str,
        arch: &str,
    ) -> Result<&LockedImage, LockError> {
        self.find(written, arch)
            .ok_or_else(|| LockError::NotLocked {
                path: path.to_path_buf(),
                reference: written.to_string(),
                arch: arch.to_string(),
                locked: self
                    .images
                    .iter()
                    .map(|i| (i.reference.clone(), i.arch.clone()))
                    .collect(),
            })
    }
}

impl LockedImage {
    /// The image to pull: the canonical reference at the locked digest.
    pub fn pinned(&self) -> Result<ImageRef, GrammarError> {
        let image = ImageRef::parse(&self.canonical)?;
        Ok(ImageRef {
            manifest_digest: Some(self.manifest_digest.clone()),
            ..image
        })
    }

    /// How `now` (the image locked again) differs from this entry.
    /// `resolved-at` and `[image.local]` are not compared: another source
    /// answering with the same digest, or another local build, changes
    /// nothing that is pulled.
    pub fn drift(&self, now: &LockedImage) -> Vec<Drift> {
        let mut drift = Vec::new();
        if self.policy != now.policy {
            drift.push(Drift::PolicyChanged {
                locked: self.policy.clone(),
                now: now.policy.clone(),
            });
        }
        let (name, tag) = self.name_and_tag();
        if self.manifest_digest != now.manifest_digest {
            drift.push(Drift::TagMoved {
                name,
                tag,
                locked: self.manifest_digest.clone(),
                now: now.manifest_digest.clone(),
            });
        } else if self.index_digest != now.index_digest {
            drift.push(Drift::IndexMoved {
                name,
                tag,
                locked: self.index_digest.clone(),
                now: now.index_digest.clone(),
            });
        }
        drift
    }

    /// `registry/repository` and the tag (`latest` when none).
    fn name_and_tag(&self) -> (String, String) {
        match ImageRef::parse(&self.canonical) {
            Ok(image) => (
                format!("{}/{}", image.registry, image.repository),
                image.tag.unwrap_or_else(|| "latest".to_string()),
            ),
            Err(_) => (self.canonical.clone(), "latest".to_string()),
        }
    }
}

/// A TOML basic string.
fn quote(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// The 1-based line of byte `offset` in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// A TOML error on one line: `line N, column M: message`.
fn toml_message(text: &str, e: &toml::de::Error) -> String {
    let message = e.message().trim_end();
    match e.span() {
        Some(span) => {
            let start = span.start.min(text.len());
            let line = line_of(text, start);
            let column = text[..start].rsplit('\n').next().map_or(0, str::len) + 1;
            format!("line {line}, column {column}: {message}")
        }
        None => message.to_string(),
    }
}

/// The plugins of `policy`, as an entry records them.
pub fn chain_of(policy: &Policy) -> Vec<LockedPlugin> {
    policy
        .plugins()
        .iter()
        .map(|p| LockedPlugin {
            name: p.name.clone(),
            sha256: p.sha256.clone(),
        })
        .collect()
}

/// Lock `written` for `arch`: run the policy chain for it (as a pull
/// would), then take its manifest digest
///
/// - from the reference itself, when it has one;
/// - else from the plan, when the policy pinned the tag (`pin =
///   "resolve"`): the index digest and `resolved-at` come from the host's
///   record of that look-up;
/// - else from `client`: the origin first, then the plan's sources in
///   order, the first that answers. Plain HTTP is used for a registry the
///   plan marks `plain-http`, and only for it.
///
/// A denial or a plugin failure is an error naming the plugin and why.
pub fn resolve_entry(
    policy: &Policy,
    client: &RegistryClient,
    written: &str,
    arch: &str,
) -> Result<LockedImage, LockError> {
    let image = ImageRef::parse(written)?;
    let ctx = pull_context(arch);
    let resolution = policy.resolve(&image, &ctx);
    let steps = resolution.steps.clone();
    let plan = resolution
        .into_plan()
        .map_err(|e| LockError::Policy(Box::new(e.into())))?;
    let (manifest_digest, index_digest, resolved_at) = if let Some(digest) = &image.manifest_digest
    {
        (digest.clone(), None, image.registry.clone())
    } else if let Some(pinned) = crate::runtime::pinned_by(&image, &plan) {
        let digest = pinned.manifest_digest.expect("pinned_by pins");
        let lookup = steps
            .iter()
            .flat_map(|s| &s.lookups)
            .find_map(|l| match &l.outcome {
                LookupOutcome::Resolved {
                    manifest_digest,
                    index_digest,
                    stale,
                    ..
                } if manifest_digest == digest.as_str() => Some((
                    l,
                    canonical_registry(&l.registry),
                    index_digest
                        .as_deref()
                        .and_then(|d| ManifestDigest::parse(d).ok()),
                    stale.as_ref(),
                )),
                _ => None,
            });
        // A lock file records what a registry says now: never an old
        // answer given because the registry failed (stale-if-error).
        if let Some((l, _, _, Some(stale))) = lookup {
            return Err(LockError::Unresolved {
                image: image.to_string(),
                attempts: vec![(
                    format!("{}/{}:{}", l.registry, l.repository, l.tag),
                    format!(
                        "{}; the digest cache's answer is stale ({}s old), and a lock file \
                         records only a digest a registry gives now",
                        stale.error, stale.age_secs
                    ),
                )],
            });
        }
        let lookup = lookup.map(|(_, at, index, _)| (at, index));
        // A plugin that pinned without asking the host: the plan's first
        // source is where the digest will be pulled from.
        let (at, index) = lookup.unwrap_or_else(|| (plan[0].registry.clone(), None));
        (digest, index, at)
    } else {
        let resolved = resolve_at_sources(client, &image, &plan, arch)?;
        (resolved.0, resolved.1, resolved.2)
    };
    Ok(LockedImage {
        reference: written.to_string(),
        canonical: image.to_string(),
        arch: arch.to_string(),
        manifest_digest,
        index_digest,
        resolved_at,
        policy: chain_of(policy),
        local: None,
    })
}

/// Ask the origin, then each source of `plan`, which digest the tag
/// names; the first answer wins.
fn resolve_at_sources(
    client: &RegistryClient,
    image: &ImageRef,
    plan: &[crate::policy::Source],
    arch: &str,
) -> Result<(ManifestDigest, Option<ManifestDigest>, String), LockError> {
    let plain_http = |registry: &str| {
        plan.iter()
            .any(|s| s.plain_http && canonical_registry(&s.registry) == registry)
    };
    let tag = image.tag.clone().unwrap_or_else(|| "latest".to_string());
    let mut targets = vec![(image.registry.clone(), image.repository.clone(), tag)];
    for source in plan {
        let PullRef::Tag(tag) = &source.reference else {
            continue;
        };
        let target = (
            canonical_registry(&source.registry),
            source.repository.clone(),
            tag.clone(),
        );
        if !targets.contains(&target) {
            targets.push(target);
        }
    }
    let mut attempts = Vec::new();
    for (registry, repository, tag) in targets {
        match client.resolve_digest(&registry, &repository, &tag, arch, plain_http(&registry)) {
            Ok(resolved) => return Ok((resolved.digest, resolved.index_digest, registry)),
            Err(e) => attempts.push((format!("{registry}/{repository}:{tag}"), e.to_string())),
        }
    }
    Err(LockError::Unresolved {
        image: image.to_string(),
        attempts,
    })
}

/// `sifr lock --check` for one entry: lock it again (with `client`,
/// which should not answer from a digest cache) and compare. A denial is
/// drift; a plugin failure or no registry answering is an error.
pub fn check_entry(
    policy: &Policy,
    client: &RegistryClient,
    entry: &LockedImage,
) -> Result<Vec<Drift>, LockError> {
    match resolve_entry(policy, client, &entry.reference, &entry.arch) {
        Ok(now) => Ok(entry.drift(&now)),
        Err(LockError::Policy(e)) => match *e {
            crate::Error::Deny { plugin, reason, .. } => {
                let mut drift: Vec<Drift> = policy_drift(policy, entry).into_iter().collect();
                drift.push(Drift::Denied { plugin, reason });
                Ok(drift)
            }
            other => Err(LockError::Policy(Box::new(other))),
        },
        Err(e) => Err(e),
    }
}

/// How the chain differs from the one `entry` was locked with, if it does.
fn policy_drift(policy: &Policy, entry: &LockedImage) -> Option<Drift> {
    let now = chain_of(policy);
    (now != entry.policy).then(|| Drift::PolicyChanged {
        locked: entry.policy.clone(),
        now,
    })
}

/// What locking asks the chain with: a pull, for `arch`.
fn pull_context(arch: &str) -> Context {
    Context {
        purpose: Purpose::Pull,
        arch: arch.to_string(),
        local_sif_digest: None,
    }
}

/// `--frozen`: how the entry would change if locked again now, as far as
/// can be told without asking a registry: the chain's plugins, and what
/// the chain decides for the reference (a denial, or a pin to another
/// digest). A plugin failure is an error.
pub fn offline_drift(policy: &Policy, entry: &LockedImage) -> Result<Vec<Drift>, LockError> {
    let mut drift: Vec<Drift> = policy_drift(policy, entry).into_iter().collect();
    let image = ImageRef::parse(&entry.reference)?;
    let ctx = pull_context(&entry.arch);
    let resolution = policy.resolve(&image, &ctx);
    match resolution.outcome {
        Outcome::Plan(plan) => {
            if let Some(pinned) = crate::runtime::pinned_by(&image, &plan)
                && let Some(digest) = pinned.manifest_digest
                && digest != entry.manifest_digest
            {
                let (name, tag) = entry.name_and_tag();
                drift.push(Drift::TagMoved {
                    name,
                    tag,
                    locked: entry.manifest_digest.clone(),
                    now: digest,
                });
            }
        }
        Outcome::Deny { plugin, reason } => drift.push(Drift::Denied { plugin, reason }),
        Outcome::Failed(failure) => {
            return Err(LockError::Policy(Box::new(
                PolicyError::from(failure).into(),
            )));
        }
    }
    Ok(drift)
}

/// The SIF file `cache` holds for the locked image, if it holds one it
/// pulled by the locked digest, verified. Never waits: an image being
/// pulled or evicted now counts as not cached.
pub fn local_sif(cache: &Cache, entry: &LockedImage) -> Option<SifDigest> {
    let image = entry.pinned().ok()?;
    let identity = Identity::of(&image, &entry.arch);
    if !cache.peek(&identity) {
        return None;
    }
    let hold = cache
        .lock(&identity, LockMode::Shared, &mut Wait::never())
        .ok()?;
    match cache.lookup_held(&identity, &hold, &mut ()).ok()? {
        Lookup::Hit { entry: cached, .. }
            if cached.manifest_digest.as_ref() == Some(&entry.manifest_digest)
                && cached.pulled_as_pinned() =>
        {
            Some(cached.sif_digest)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(c: char) -> ManifestDigest {
        ManifestDigest::parse(&format!("sha256:{}", c.to_string().repeat(64))).unwrap()
    }

    fn entry(reference: &str, arch: &str) -> LockedImage {
        let image = ImageRef::parse(reference).unwrap();
        LockedImage {
            reference: reference.to_string(),
            canonical: image.to_string(),
            arch: arch.to_string(),
            manifest_digest: digest('a'),
            index_digest: Some(digest('b')),
            resolved_at: image.registry.clone(),
            policy: vec![LockedPlugin {
                name: "default".into(),
                sha256: WasmDigest::from_hex(&"c".repeat(64)).unwrap(),
            }],
            local: None,
        }
    }

    fn path() -> &'static Path {
        Path::new("dir/sifr.lock")
    }

    fn error(text: &str) -> String {
        LockFile::parse(text, path()).unwrap_err().to_string()
    }

    fn sample() -> LockFile {
        let mut file = LockFile::default();
        file.upsert(entry("ubuntu:22.04", "amd64"));
        let mut arm = entry("ubuntu:22.04", "arm64");
        arm.local = Some(LocalSif {
            sif_sha256: SifDigest::from_hex(&"d".repeat(64)).unwrap(),
        });
        file.upsert(arm);
        let mut quay = entry("quay.io/biocontainers/blast:2.15.0", "amd64");
        quay.index_digest = None;
        quay.policy.clear();
        file.upsert(quay);
        file
    }

    #[test]
    fn a_lock_file_round_trips_with_its_header_and_sorted_entries() {
        let file = sample();
        let text = file.to_toml();
        assert!(text.starts_with("# written by `sifr lock`"), "{text}");
        assert!(text.contains("[image.local]\n"), "{text}");
        assert!(text.contains("policy = []\n"), "{text}");
        let back = LockFile::parse(&text, path()).unwrap();
        assert_eq!(back, file);
        let refs: Vec<_> = back
            .images
            .iter()
            .map(|i| (i.reference.as_str(), i.arch.as_str()))
            .collect();
        assert_eq!(
            refs,
            [
                ("quay.io/biocontainers/blast:2.15.0", "amd64"),
                ("ubuntu:22.04", "amd64"),
                ("ubuntu:22.04", "arm64")
            ]
        );
        // Written again, byte for byte the same: stable diffs.
        assert_eq!(back.to_toml(), text);
    }

    #[test]
    fn upsert_replaces_the_entry_for_a_reference_and_arch_and_keeps_the_rest() {
        let mut file = sample();
        let mut moved = entry("ubuntu:22.04", "amd64");
        moved.manifest_digest = digest('e');
        let old = file.upsert(moved).unwrap();
        assert_eq!(old.manifest_digest, digest('a'));
        assert_eq!(file.images.len(), 3);
        assert_eq!(
            file.get("ubuntu:22.04", "amd64").unwrap().manifest_digest,
            digest('e')
        );
        assert_eq!(
            file.get("ubuntu:22.04", "arm64").unwrap().manifest_digest,
            digest('a')
        );
    }

    #[test]
    fn find_matches_the_reference_as_written_or_the_same_image() {
        let file = sample();
        assert!(file.find("ubuntu:22.04", "amd64").is_some());
        assert!(
            file.find("docker.io/library/ubuntu:22.04", "amd64")
                .is_some()
        );
        assert!(file.find("docker://ubuntu:22.04", "amd64").is_some());
        assert!(file.find("ubuntu:24.04", "amd64").is_none());
        assert!(file.find("ubuntu:22.04", "ppc64le").is_none());
        let e = file
            .require(path(), "ubuntu:22.04", "ppc64le")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with(
                "ubuntu:22.04 is not in dir/sifr.lock for ppc64le (it is locked for amd64, arm64);"
            ) && e.contains("add it with `sifr lock --arch ppc64le ubuntu:22.04`"),
            "{e}"
        );
    }

    #[test]
    fn pinned_is_the_canonical_reference_at_the_locked_digest() {
        let pinned = entry("ubuntu:22.04", "amd64").pinned().unwrap();
        assert_eq!(
            pinned.to_string(),
            format!("docker.io/library/ubuntu:22.04@{}", digest('a'))
        );
    }

    #[test]
    fn malformed_toml_names_the_file_and_the_line() {
        let e = error("version = 1\n\n[[image]\nreference = 1\n");
        assert!(
            e.starts_with("dir/sifr.lock is not a valid lock file: line 3"),
            "{e}"
        );
    }

    #[test]
    fn an_unknown_or_missing_version_is_refused() {
        let e = error("version = 2\n[[image]]\nsomething-new = true\n");
        assert!(
            e.contains("dir/sifr.lock")
                && e.contains("line 1: version 2 is not one this sifr reads"),
            "{e}"
        );
        let e = error("[[image]]\nreference = \"x\"\n");
        assert!(e.contains("has no `version`"), "{e}");
        let e = error("version = \"1\"\n");
        assert!(e.contains("version \"1\" is not one"), "{e}");
    }

    #[test]
    fn unknown_keys_are_refused() {
        let mut text = sample().to_toml();
        text = text.replacen(
            "arch = \"amd64\"\n",
            "arch = \"amd64\"\ncolour = \"red\"\n",
            1,
        );
        let e = error(&text);
        assert!(e.contains("dir/sifr.lock") && e.contains("colour"), "{e}");
        assert!(e.contains("line "), "{e}");
    }

    #[test]
    fn a_digest_that_is_not_sha256_hex_is_refused_with_its_line() {
        let text = sample()
            .to_toml()
            .replacen(&digest('a').to_string(), "sha256:nothex", 1);
        let e = error(&text);
        assert!(e.contains("line ") && e.contains("nothex"), "{e}");
        let text = sample().to_toml().replacen(&"c".repeat(64), "C0FFEE", 1);
        let e = error(&text);
        assert!(e.contains("C0FFEE"), "{e}");
    }

    #[test]
    fn duplicate_entries_are_refused() {
        let file = sample();
        let mut text = file.to_toml();
        let one = LockFile {
            version: 1,
            images: vec![entry("ubuntu:22.04", "amd64")],
        }
        .to_toml();
        text.push_str(&one[one.find("\n[[image]]").unwrap()..]);
        let e = error(&text);
        assert!(e.contains("ubuntu:22.04 (amd64) is locked twice"), "{e}");
    }

    #[test]
    fn a_canonical_digest_must_be_the_locked_one() {
        let mut e = entry("ubuntu:22.04", "amd64");
        e.canonical = format!("docker.io/library/ubuntu:22.04@{}", digest('f'));
        let text = LockFile {
            version: 1,
            images: vec![e],
        }
        .to_toml();
        let e = error(&text);
        assert!(e.contains("but its manifest-digest is"), "{e}");
    }

    #[test]
    fn drift_names_the_tag_and_both_digests() {
        let locked = entry("ubuntu:22.04", "amd64");
        assert!(locked.drift(&locked).is_empty());
        let mut now = locked.clone();
        now.manifest_digest = digest('e');
        now.resolved_at = "mirror.example.org".into();
        let drift = locked.drift(&now);
        assert_eq!(drift.len(), 1);
        assert_eq!(
            drift[0].to_string(),
            format!(
                "tag 22.04 of docker.io/library/ubuntu now names {} (locked {})",
                digest('e'),
                digest('a')
            )
        );
        let mut now = locked.clone();
        now.index_digest = Some(digest('f'));
        now.policy[0].sha256 = WasmDigest::from_hex(&"0".repeat(64)).unwrap();
        let drift = locked.drift(&now);
        assert!(matches!(drift[0], Drift::PolicyChanged { .. }));
        assert!(matches!(drift[1], Drift::IndexMoved { .. }));
        assert_eq!(
            drift[0].to_string(),
            "the policy chain is now default (000000000000) (locked default (cccccccccccc))"
        );
    }

    #[test]
    fn save_writes_atomically_and_keeps_permissions() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sifr.lock");
        let file = sample();
        file.save(&path).unwrap();
        assert_eq!(LockFile::load(&path).unwrap(), file);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o644);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        LockFile::default().save(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["sifr.lock"], "no temporary file is left");
        assert!(
            LockFile::load_or_new(&dir.path().join("none"))
                .unwrap()
                .images
                .is_empty()
        );
        let e = LockFile::load(&dir.path().join("none"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("cannot read the lock file "), "{e}");
    }
}
