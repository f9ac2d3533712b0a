//! bv's Apptainer runtime, on sifr.
//!
//! [`SifrRuntime`] implements bv's [`ContainerRuntime`] (crate `bv-runtime`,
//! pinned to 0.1.40) over sifr's library: every pull goes through the
//! site's policy chain (mirrors with fallback, rewrites, denials), into
//! sifr's shared, content-addressed SIF cache, one process at a time per
//! image; every run is `apptainer run --cleanenv --no-home` of a verified,
//! held cache entry.
//!
//! ```no_run
//! use bv_runtime::{ContainerRuntime, NoopProgress, OciRef};
//!
//! let runtime = sifr_bv::SifrRuntime::from_environment()?;
//! let image: OciRef = "ncbi/blast:2.14.0".parse().unwrap();
//! let digest = runtime.pull(&image, &NoopProgress).map_err(|e| e.to_string()).unwrap();
//! println!("{digest}");
//! # Ok::<(), sifr::Error>(())
//! ```
//!
//! # Which digest `pull` returns
//!
//! bv records the [`ImageDigest`] that `pull` returns in `bv.lock`
//! (`image_digest`), and later uses it three ways: `bv run` asks
//! `is_locally_available(name, digest)` and runs `name@digest`; `bv sync`
//! on another machine pulls `name:tag@digest` and fails unless `pull`
//! returns the same digest; `bv lock --check` compares it for drift. So the
//! value must name the *image*, the same on every machine.
//!
//! - **A reference pinned to a manifest digest** (`name@sha256:…`): `pull`
//!   returns that **registry manifest digest**. It names the image in every
//!   registry and mirror, sifr pulls by it from every source, and `bv sync`
//!   elsewhere gets it back. A lockfile written this way also works with
//!   bv's docker backend.
//! - **A tag** (`name:tag`): sifr does not learn the manifest digest.
//!   `apptainer pull docker://…` builds a new SIF from the layers, does not
//!   report the digest it resolved, and a SIF does not record it
//!   (apptainer/apptainer#2764). The SIF file's sha256 is no substitute:
//!   two pulls of one image give files with different bytes, so it is a
//!   local integrity check, and pulling by it 404s — the trap bv's own
//!   apptainer backend fell into (it wrote the SIF hash as `sha256:…`,
//!   indistinguishable from a manifest digest). `pull` therefore returns
//!   the SIF digest **marked as one**: `sif:sha256:<hex>` ([`SIF_DIGEST_PREFIX`]).
//!   No OCI tool can mistake it for a manifest digest (`sif:sha256:…` is
//!   not valid digest syntax), the adapter never pulls by it, and it finds
//!   the cached file on this machine (`bv run`, `bv sync` here). On another
//!   machine, or after the entry was pruned, `bv sync` cannot reproduce it:
//!   the adapter pulls the tag again and, if the new SIF differs, fails
//!   saying so and that the image should be pinned by manifest digest.
//!
//! A `sha256:` digest handed back to the adapter is always read as a
//! manifest digest. Lockfiles written by bv's own apptainer backend hold
//! SIF hashes in that form; pulling by one fails at every source, and the
//! error says that the lockfile should be written again (`bv lock`).
//!
//! # Where bv's trait does not fit sifr
//!
//! See the README's section on bv; in short: `OciRef` always names a
//! registry (bv fills in `docker.io`), so sifr's short-name policy (aliases,
//! search registries) never applies to bv's images; `BvError` is a closed
//! enum of strings, so sifr's typed errors (a policy denial, every source
//! failing) reach bv as `RuntimeError` messages; `ProgressReporter` has no
//! warning channel, so sifr's warnings go through `update`; `gpu_args` and
//! `mount_args` cannot fail, so a mount apptainer cannot express is refused
//! by `run`, not by them; `ImageMetadata::labels` stays empty (sifr does
//! not read a SIF's labels).

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use bv_core::error::{BvError, Result};
use bv_runtime::{
    ContainerRuntime, GpuProfile, ImageDigest, ImageMetadata, Mount, OciRef, ProgressReporter,
    RunOutcome, RunSpec, RuntimeInfo,
};
use sifr::apptainer::{Apptainer, RunMode, RunOptions};
use sifr::cache::{Entry, Identity};
use sifr::{
    Config, ConfigSources, Error, ImageRef, ManifestDigest, Progress, Pulled, Purpose, Runtime,
    RuntimeOptions, SifDigest,
};

/// How the adapter writes a SIF file's sha256 as an [`ImageDigest`]:
/// `sif:sha256:<hex>`, never to be read as a manifest digest.
pub const SIF_DIGEST_PREFIX: &str = "sif:";

/// The name bv knows this runtime by. bv's `run` gives apptainer runtimes
/// writable bind mounts for tool caches by this name, so it is apptainer's.
pub const NAME: &str = "apptainer";

/// What a digest bv hands back names.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Recorded {
    /// A registry manifest digest: pull by it.
    Manifest(ManifestDigest),
    /// The sha256 of a SIF file in this machine's cache: never pulled by.
    Sif(SifDigest),
}

impl Recorded {
    fn parse(digest: &str) -> Result<Self> {
        if let Some(rest) = digest.strip_prefix(SIF_DIGEST_PREFIX) {
            return SifDigest::parse(rest).map(Recorded::Sif).map_err(|_| {
                BvError::RuntimeError(format!(
                    "{digest:?} is not a SIF digest (`sif:sha256:` and 64 hex digits)"
                ))
            });
        }
        ManifestDigest::parse(digest)
            .map(Recorded::Manifest)
            .map_err(|e| BvError::RuntimeError(format!("{digest:?} is not a manifest digest: {e}")))
    }
}

/// The [`ImageDigest`] of a pulled image: its manifest digest when the
/// reference pinned one, else its SIF digest, marked (see the crate docs).
fn image_digest(pulled: &Pulled) -> ImageDigest {
    match &pulled.entry.manifest_digest {
        Some(manifest) => ImageDigest(manifest.to_string()),
        None => ImageDigest(sif_image_digest(&pulled.entry.sif_digest)),
    }
}

fn sif_image_digest(sif_digest: &SifDigest) -> String {
    format!("{SIF_DIGEST_PREFIX}{sif_digest}")
}

/// bv's `ContainerRuntime` on sifr's policy, cache and apptainer.
pub struct SifrRuntime {
    runtime: Runtime,
}

impl SifrRuntime {
    /// Load the policy chain and open the cache, as [`Runtime::new`].
    pub fn new(config: Config, options: RuntimeOptions) -> std::result::Result<Self, Error> {
        Ok(Self::from_runtime(Runtime::new(config, options)?))
    }

    /// sifr as its CLI would be set up: the standard config layers
    /// (`/etc/sifr/config.toml`, the user's, `$SIFR_CONFIG`) and cache
    /// (`$SIFR_CACHE_DIR`, …), and apptainer found as `sifr` finds it.
    pub fn from_environment() -> std::result::Result<Self, Error> {
        let env = |name| std::env::var_os(name).map(Into::into);
        let config = Config::load(&ConfigSources::standard(None, env("SIFR_CONFIG")))?;
        let options = RuntimeOptions {
            apptainer_env: env("SIFR_APPTAINER"),
            ..RuntimeOptions::default()
        };
        Self::new(config, options)
    }

    /// Wrap a runtime an embedder built.
    pub fn from_runtime(runtime: Runtime) -> Self {
        Self { runtime }
    }

    /// The sifr runtime underneath, for what bv's trait cannot ask.
    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    /// Make `image` ready through sifr: policy, cache, lock, pull.
    fn pull_image(
        &self,
        image: &ImageRef,
        purpose: Purpose,
        progress: &dyn ProgressReporter,
    ) -> Result<Pulled> {
        self.runtime
            .pull(image, purpose, &mut |event| report(progress, event))
            .map_err(bv_error)
    }

    /// The cache entry holding the SIF file with `sif`'s digest, if any,
    /// among entries for `name` (`registry/repository`) when it is given.
    fn entry_by_sif(&self, sif: &SifDigest, name: Option<&str>) -> Result<Option<Entry>> {
        let entries = self.runtime.cache().entries().map_err(|e| {
            BvError::RuntimeError(format!(
                "cannot read sifr's cache at {}: {e}",
                self.runtime.cache().root().display()
            ))
        })?;
        Ok(entries.into_iter().map(|(_, entry)| entry).find(|entry| {
            entry.sif_digest == *sif
                && name.is_none_or(|name| entry_name(entry).as_deref() == Some(name))
        }))
    }

    /// The pulled (held, verified) image a [`RunSpec`] names.
    fn ready_for_run(&self, spec: &RunSpec) -> Result<Pulled> {
        let image = &spec.image;
        match image.digest.as_deref().map(Recorded::parse).transpose()? {
            Some(Recorded::Sif(sif)) => {
                let name = image_ref(&OciRef {
                    tag: None,
                    digest: None,
                    ..image.clone()
                })?;
                let name = format!("{}/{}", name.registry, name.repository);
                let entry = self.entry_by_sif(&sif, Some(&name))?.ok_or_else(|| {
                    BvError::RuntimeError(format!(
                        "{} is not in sifr's cache with SIF digest {sif}; run `bv sync` to pull it",
                        oci_text(image)
                    ))
                })?;
                self.pulled_as_recorded(&entry, &sif, Purpose::Run, &NoProgress)
            }
            Some(Recorded::Manifest(_)) | None => {
                self.pull_image(&image_ref(image)?, Purpose::Run, &NoProgress)
            }
        }
    }

    /// The image a cache entry was pulled as, made ready again (policy
    /// asked, file verified and held); an error unless it is still the SIF
    /// with digest `sif`.
    fn pulled_as_recorded(
        &self,
        entry: &Entry,
        sif: &SifDigest,
        purpose: Purpose,
        progress: &dyn ProgressReporter,
    ) -> Result<Pulled> {
        let image = ImageRef::parse(&entry.image).map_err(|e| bv_error(e.into()))?;
        let pulled = self.pull_image(&image, purpose, progress)?;
        if pulled.entry.sif_digest != *sif {
            return Err(not_reproducible(
                &entry.image,
                sif,
                &pulled.entry.sif_digest,
            ));
        }
        Ok(pulled)
    }
}

/// A progress reporter that shows nothing.
struct NoProgress;

impl ProgressReporter for NoProgress {
    fn update(&self, _: &str, _: Option<u64>, _: Option<u64>) {}
    fn finish(&self, _: &str) {}
}

fn not_reproducible(image: &str, recorded: &SifDigest, now: &SifDigest) -> BvError {
    BvError::RuntimeError(format!(
        "{image}: bv.lock records the SIF digest {recorded}, but sifr's cache now has {now}. \
         A docker:// pull builds a new SIF file, so a SIF digest names one file on one \
         machine, never the image; pin the image by its registry manifest digest \
         (name@sha256:…) in the tool's manifest and run `bv lock` again"
    ))
}

/// `registry/repository` of a cache entry's image.
fn entry_name(entry: &Entry) -> Option<String> {
    ImageRef::parse(&entry.image)
        .ok()
        .map(|image| format!("{}/{}", image.registry, image.repository))
}

/// bv's reference as text sifr parses: always with its registry, since
/// bv's parser has already put `docker.io` in front of a short name.
fn oci_text(image: &OciRef) -> String {
    let mut text = format!("{}/{}", image.registry, image.repository);
    if let Some(tag) = &image.tag {
        text.push(':');
        text.push_str(tag);
    }
    if let Some(digest) = &image.digest {
        text.push('@');
        text.push_str(digest);
    }
    text
}

/// bv's [`OciRef`] as sifr's [`ImageRef`]; a tag and a manifest digest
/// together pull by the digest.
fn image_ref(image: &OciRef) -> Result<ImageRef> {
    ImageRef::parse(&oci_text(image)).map_err(|e| bv_error(e.into()))
}

/// sifr's progress events, as bv's reporter takes them. The reporter has
/// no warning channel: a warning is an update that says so.
fn report(progress: &dyn ProgressReporter, event: Progress<'_>) {
    match event {
        Progress::Waiting { identity, .. } => {
            progress.update(
                &format!("waiting for another sifr pulling {identity}"),
                None,
                None,
            );
        }
        Progress::Attempt { uri, index, of } => {
            progress.update(&format!("pulling {uri} ({index}/{of})"), None, None);
        }
        Progress::Output { line } => progress.update(line, None, None),
        Progress::Fallback { uri, next, .. } => {
            let next = next.map_or_else(String::new, |n| format!("; trying {n}"));
            progress.update(&format!("{uri} failed{next}"), None, None);
        }
        Progress::Hashing { done, total } => {
            progress.update("hashing the SIF", Some(done), Some(total));
        }
        Progress::Warning { message } => {
            progress.update(&format!("warning: {message}"), None, None)
        }
        #[allow(unreachable_patterns)]
        _ => {}
    }
}

/// sifr's error as bv's. `BvError` has no variant for a policy denial or a
/// failed pull, so those are `RuntimeError` with sifr's full message (what
/// happened, to what, and what to do); apptainer missing is
/// `RuntimeNotAvailable`; an I/O error keeps its kind.
pub fn bv_error(error: Error) -> BvError {
    match error {
        Error::Apptainer(e) => BvError::RuntimeNotAvailable {
            runtime: NAME.to_string(),
            reason: e.to_string(),
        },
        Error::Cache(ref cache) => {
            BvError::Io(std::io::Error::new(cache.io().kind(), error.to_string()))
        }
        Error::Io { ref source, .. } => {
            BvError::Io(std::io::Error::new(source.kind(), error.to_string()))
        }
        Error::NoCacheDir => BvError::Io(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            error.to_string(),
        )),
        other => BvError::RuntimeError(other.to_string()),
    }
}

/// The `--bind` value of a mount, or why apptainer cannot take it: it
/// splits a bind list at `,` and a bind at `:`.
fn bind(mount: &Mount) -> Result<String> {
    let path = |p: &Path, what: &str| -> Result<String> {
        let text = p.to_str().ok_or_else(|| {
            BvError::RuntimeError(format!(
                "mount {what} {} is not UTF-8; apptainer's --bind cannot name it",
                p.display()
            ))
        })?;
        if text.is_empty() || text.contains([',', ':']) {
            return Err(BvError::RuntimeError(format!(
                "mount {what} {text:?} is empty or contains ',' or ':', which apptainer's \
                 --bind reads as separators; mount a parent directory or a symlink without them"
            )));
        }
        Ok(text.to_string())
    };
    let host = path(&mount.host_path, "source")?;
    let container = path(&mount.container_path, "destination")?;
    Ok(if mount.read_only {
        format!("{host}:{container}:ro")
    } else {
        format!("{host}:{container}")
    })
}

/// One `--env` value that sets exactly `key` to `value`. apptainer reads
/// `--env` as pflag's string-to-string map: a value with one `=` is one
/// assignment with surrounding `"` trimmed; with more, a CSV record of
/// assignments. So a value holding `=` is sent as one quoted CSV field.
fn env_arg(key: &str, value: &str) -> Result<String> {
    if key.is_empty() || key.contains(['=', ',', '"']) || key.contains(char::is_whitespace) {
        return Err(BvError::RuntimeError(format!(
            "environment variable name {key:?} cannot be passed to apptainer"
        )));
    }
    if value.contains('=') {
        return Ok(format!("\"{key}={}\"", value.replace('"', "\"\"")));
    }
    if value.ends_with('"') {
        return Err(BvError::RuntimeError(format!(
            "the value of {key} ends in '\"', which apptainer's --env would strip; \
             no --env value can carry it"
        )));
    }
    Ok(format!("{key}={value}"))
}

/// `--nv` when the tool requires a GPU, as bv's own apptainer backend.
fn wants_gpu(profile: &GpuProfile) -> bool {
    profile.spec.as_ref().is_some_and(|spec| spec.required)
}

/// sifr's run options for a bv [`RunSpec`].
fn run_options(spec: &RunSpec) -> Result<RunOptions> {
    let pwd = spec
        .working_dir
        .as_ref()
        .map(|dir| {
            dir.to_str().map(str::to_string).ok_or_else(|| {
                BvError::RuntimeError(format!("working dir {} is not UTF-8", dir.display()))
            })
        })
        .transpose()?;
    let mut env: Vec<(&String, &String)> = spec.env.iter().collect();
    env.sort();
    Ok(RunOptions {
        binds: spec.mounts.iter().map(bind).collect::<Result<_>>()?,
        env: env
            .into_iter()
            .map(|(k, v)| env_arg(k, v))
            .collect::<Result<_>>()?,
        pwd,
        nv: wants_gpu(&spec.gpu),
        ..RunOptions::default()
    })
}

impl ContainerRuntime for SifrRuntime {
    fn name(&self) -> &str {
        NAME
    }

    fn health_check(&self) -> Result<RuntimeInfo> {
        let apptainer = self.runtime.apptainer().map_err(bv_error)?;
        let mut extra = HashMap::new();
        extra.insert("binary".into(), apptainer.path.display().to_string());
        extra.insert(
            "flavor".into(),
            format!("{:?}", apptainer.flavor).to_lowercase(),
        );
        extra.insert("sifr".into(), env!("CARGO_PKG_VERSION").into());
        extra.insert(
            "cache".into(),
            self.runtime.cache().root().display().to_string(),
        );
        Ok(RuntimeInfo {
            name: NAME.to_string(),
            version: apptainer.version.raw.clone(),
            extra,
        })
    }

    fn pull(&self, image: &OciRef, progress: &dyn ProgressReporter) -> Result<ImageDigest> {
        let recorded = image.digest.as_deref().map(Recorded::parse).transpose()?;
        let pulled = match recorded {
            Some(Recorded::Sif(sif)) => {
                // Never a pull reference. Here it is the file this machine
                // has; elsewhere, only the tag can be pulled, and the new
                // SIF is a different file.
                let by_tag = OciRef {
                    digest: None,
                    ..image.clone()
                };
                let name = image_ref(&by_tag)?;
                let name = format!("{}/{}", name.registry, name.repository);
                match self.entry_by_sif(&sif, Some(&name))? {
                    Some(entry) => {
                        self.pulled_as_recorded(&entry, &sif, Purpose::Pull, progress)?
                    }
                    None if image.tag.is_some() => {
                        let pulled =
                            self.pull_image(&image_ref(&by_tag)?, Purpose::Pull, progress)?;
                        if pulled.entry.sif_digest != sif {
                            return Err(not_reproducible(
                                &pulled.image,
                                &sif,
                                &pulled.entry.sif_digest,
                            ));
                        }
                        pulled
                    }
                    None => {
                        return Err(BvError::RuntimeError(format!(
                            "{}: a SIF digest names a file in one machine's cache, and this \
                             cache does not have it; it cannot be pulled by. Pin the image by \
                             its registry manifest digest (name@sha256:…)",
                            oci_text(image)
                        )));
                    }
                }
            }
            Some(Recorded::Manifest(_)) | None => {
                let reference = image_ref(image)?;
                let pulled = self.runtime.pull(&reference, Purpose::Pull, &mut |event| {
                    report(progress, event)
                });
                match pulled {
                    Ok(pulled) => pulled,
                    // `bv sync` sends name:tag@digest; the digest may be a
                    // SIF hash that bv's own apptainer backend wrote.
                    Err(e @ Error::PullFailed { .. })
                        if image.tag.is_some() && image.digest.is_some() =>
                    {
                        return Err(BvError::RuntimeError(format!(
                            "{e}\nIf bv.lock was written by bv's own apptainer backend, its \
                             image_digest {} is a SIF file hash, not a registry digest, and \
                             cannot be pulled by: run `bv lock` again with this runtime",
                            image.digest.as_deref().unwrap_or_default()
                        )));
                    }
                    Err(e) => return Err(bv_error(e)),
                }
            }
        };
        progress.finish("");
        Ok(image_digest(&pulled))
    }

    fn run(&self, spec: &RunSpec) -> Result<RunOutcome> {
        let options = run_options(spec)?;
        let pulled = self.ready_for_run(spec)?;
        let started = Instant::now();
        if !spec.capture_output {
            let exit_code = self
                .runtime
                .run_pulled(&pulled, RunMode::Run, &options, &spec.command)
                .map_err(bv_error)?;
            return Ok(RunOutcome {
                exit_code,
                duration: started.elapsed(),
                ..RunOutcome::default()
            });
        }
        // sifr's run inherits stdio; bv's conformance checks want the
        // output, so this one is run here, with sifr's argv and rule for
        // the host's apptainer variables, while `pulled` holds the image.
        let apptainer = self.runtime.apptainer().map_err(bv_error)?;
        let argv = Apptainer::run_args(RunMode::Run, &pulled.path, &options, &spec.command);
        let mut command = Command::new(&apptainer.path);
        command
            .args(&argv)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for name in options.host_env.dropped() {
            command.env_remove(name);
        }
        let output = command.output().map_err(|e| {
            BvError::RuntimeError(format!("running {}: {e}", apptainer.path.display()))
        })?;
        drop(pulled);
        Ok(RunOutcome {
            exit_code: sifr::apptainer::shell_code(output.status),
            duration: started.elapsed(),
            stdout: output.stdout,
            stderr: output.stderr,
        })
    }

    fn inspect(&self, digest: &ImageDigest) -> Result<ImageMetadata> {
        let recorded = Recorded::parse(&digest.0)?;
        let entries = self.runtime.cache().entries().map_err(|e| {
            BvError::RuntimeError(format!(
                "cannot read sifr's cache at {}: {e}",
                self.runtime.cache().root().display()
            ))
        })?;
        let found = entries
            .into_iter()
            .map(|(_, e)| e)
            .find(|entry| match &recorded {
                Recorded::Manifest(m) => entry.manifest_digest.as_ref() == Some(m),
                Recorded::Sif(s) => entry.sif_digest == *s,
            });
        let entry = found.ok_or_else(|| {
            BvError::RuntimeError(format!(
                "no image with digest {digest} in sifr's cache at {}",
                self.runtime.cache().root().display()
            ))
        })?;
        Ok(ImageMetadata {
            digest: digest.clone(),
            size_bytes: Some(entry.size),
            labels: HashMap::new(),
        })
    }

    fn is_locally_available(&self, image_ref: &str, digest: &str) -> bool {
        let Ok(recorded) = Recorded::parse(digest) else {
            return false;
        };
        // bv passes the name without tag (or with it); either way only the
        // repository and the digest count.
        let Ok(name) = ImageRef::parse(image_ref) else {
            return false;
        };
        match recorded {
            Recorded::Manifest(manifest) => {
                let pinned = ImageRef {
                    tag: None,
                    manifest_digest: Some(manifest),
                    short_name: None,
                    ..name
                };
                let identity = Identity::of(&pinned, sifr::policy::host_arch());
                self.runtime.cache().peek(&identity)
            }
            Recorded::Sif(sif) => {
                let name = format!("{}/{}", name.registry, name.repository);
                matches!(self.entry_by_sif(&sif, Some(&name)), Ok(Some(entry))
                    if self.runtime.cache().blob_path(&entry).is_file())
            }
        }
    }

    fn gpu_args(&self, profile: &GpuProfile) -> Vec<String> {
        if wants_gpu(profile) {
            vec!["--nv".to_string()]
        } else {
            Vec::new()
        }
    }

    /// The `--bind` arguments `run` passes. This cannot fail, so a mount
    /// apptainer cannot express (a `,` or `:` in a path) is shown as given
    /// here, and refused by `run`.
    fn mount_args(&self, mounts: &[Mount]) -> Vec<String> {
        mounts
            .iter()
            .flat_map(|mount| {
                let spec = bind(mount).unwrap_or_else(|_| {
                    let ro = if mount.read_only { ":ro" } else { "" };
                    format!(
                        "{}:{}{ro}",
                        mount.host_path.display(),
                        mount.container_path.display()
                    )
                });
                ["--bind".to_string(), spec]
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_values_reach_apptainer_exactly() {
        // pflag's string-to-string: one '=' is taken whole; more is CSV.
        assert_eq!(env_arg("A", "1,2").unwrap(), "A=1,2");
        assert_eq!(env_arg("A", "x=y,z").unwrap(), "\"A=x=y,z\"");
        assert_eq!(
            env_arg("A", "say \"hi\" =").unwrap(),
            "\"A=say \"\"hi\"\" =\""
        );
        assert_eq!(env_arg("A", "").unwrap(), "A=");
        assert!(env_arg("A", "ends\"").is_err());
        assert!(env_arg("", "x").is_err());
        assert!(env_arg("A B", "x").is_err());
    }

    #[test]
    fn digests_are_manifest_digests_unless_marked_as_sif() {
        let hex = "ab".repeat(32);
        assert!(matches!(
            Recorded::parse(&format!("sha256:{hex}")),
            Ok(Recorded::Manifest(_))
        ));
        assert!(matches!(
            Recorded::parse(&format!("sif:sha256:{hex}")),
            Ok(Recorded::Sif(_))
        ));
        assert!(Recorded::parse("sif:sha256:abc").is_err());
        assert!(Recorded::parse("sha256:abc").is_err());
    }
}
