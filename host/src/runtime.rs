//! Pull and run through the policy and the cache: what `sifr pull`, `run`
//! and `exec` do, as a library.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use serde::Serialize;

pub use crate::apptainer::Attempt;
use crate::apptainer::{Apptainer, AttemptFailure, RunMode, RunOptions};
use crate::cache::{
    Cache, Entry, Identity, ImageLock, LockMode, Lookup, Provenance, Untrusted, VerifiedBlob, Wait,
    unix_now,
};
use crate::config::Config;
use crate::error::Error;
use crate::policy::{Context, Policy, PolicyOptions, Purpose, Resolution};
use crate::reference::{ImageRef, SifDigest};

/// The default limit on one pull attempt, as Nextflow's `pullTimeout`.
pub const DEFAULT_PULL_TIMEOUT: Duration = Duration::from_secs(20 * 60);

/// What is happening, for a progress display or an embedder's log.
#[derive(Debug)]
pub enum Progress<'a> {
    /// Another process (or thread) is pulling this image (or evicting it);
    /// waiting for it. Sent when the wait begins (`waited` zero, or nearly)
    /// and then about every 100 ms while it lasts.
    Waiting {
        identity: &'a str,
        waited: Duration,
        /// When the wait gives up (the pull timeout).
        limit: Duration,
    },
    /// Trying a source.
    Attempt {
        uri: &'a str,
        index: usize,
        of: usize,
    },
    /// A line of apptainer's output.
    Output { line: &'a str },
    /// A source failed; the next one (if any) is tried.
    Fallback {
        uri: &'a str,
        failure: &'a AttemptFailure,
        next: Option<&'a str>,
    },
    /// Hashing a SIF file.
    Hashing { done: u64, total: u64 },
    /// Something the user should know (a corrupt cache entry evicted, say).
    Warning { message: &'a str },
}

/// A pulled (or already cached) image.
///
/// It holds the image in the cache (its identity's lock, shared) until it
/// and its clones are dropped or [`Pulled::release`] is called: `sifr cache
/// rm` waits for it, and `prune` keeps the image. So the SIF that was
/// verified is still there when apptainer opens it.
#[derive(Debug, Clone, Serialize)]
pub struct Pulled {
    pub image: String,
    /// Absolute path of the SIF file in the cache.
    pub path: PathBuf,
    /// Served from the cache without pulling.
    pub cached: bool,
    pub entry: Entry,
    #[serde(skip)]
    hold: Option<Arc<ImageLock>>,
    /// The SIF that was checked, held open: what apptainer will run.
    #[serde(skip)]
    blob: Option<VerifiedBlob>,
}

impl Pulled {
    /// Let eviction have the image again. [`Runtime::run_pulled`] takes it
    /// again, and checks it, before it runs.
    pub fn release(&mut self) {
        self.hold = None;
    }

    /// Whether this still holds the image in the cache.
    pub fn is_held(&self) -> bool {
        self.hold.is_some()
    }

    /// The SIF that was checked, held open, while this holds the image:
    /// what an embedder copies from, or hands to [`Cache::runnable`] for a
    /// path apptainer can be given (sifr's front does both).
    ///
    /// [`Cache::runnable`]: crate::cache::Cache::runnable
    pub fn verified_blob(&self) -> Option<&VerifiedBlob> {
        self.hold.as_ref().and(self.blob.as_ref())
    }
}

/// A pull stopped by a signal (see [`RuntimeOptions::cancel`]): the source
/// of the [`Error::Io`] a pull then returns.
#[derive(Debug, thiserror::Error)]
#[error("stopped by signal {signal}")]
pub struct Interrupted {
    pub signal: i32,
}

/// The signal that stopped a pull, if that is what `error` is.
pub fn interrupted_by(error: &Error) -> Option<i32> {
    match error {
        Error::Io { source, .. } => source
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<Interrupted>())
            .map(|i| i.signal),
        _ => None,
    }
}

fn interrupted(signal: i32) -> Error {
    Error::io(
        "the pull was stopped",
        std::io::Error::new(std::io::ErrorKind::Interrupted, Interrupted { signal }),
    )
}

/// Where things are, and how long a pull may take.
#[derive(Debug, Clone, Default)]
pub struct RuntimeOptions {
    /// `--apptainer`: wins over `apptainer_env` and the config.
    pub apptainer: Option<PathBuf>,
    /// `$SIFR_APPTAINER`, as the CLI passes it: wins over the config's
    /// `[apptainer] path`. The library reads no environment variable.
    pub apptainer_env: Option<PathBuf>,
    /// The cache root; default [`crate::default_cache_root`]. Settled by
    /// [`crate::RuntimeBuilder`].
    pub cache_dir: Option<PathBuf>,
    /// Per-attempt limit; default the config's, else 20 minutes. Waiting
    /// for another process's pull of the same image is bounded by it too.
    pub pull_timeout: Option<Duration>,
    /// Set it to a signal number (as `signal_hook::flag::register_usize`
    /// does) to stop a pull: apptainer's process group is stopped, its
    /// temporary file removed, and the pull returns an error that
    /// [`interrupted_by`] recognises. Checked while waiting for a lock,
    /// pulling and hashing.
    pub cancel: Option<Arc<AtomicUsize>>,
    /// The engine plugins run on, shared with other runtimes; `None` starts
    /// one for this runtime.
    pub engine: Option<crate::policy::PolicyEngine>,
    /// The registry client for digest look-ups (`resolve-digest`); `None`
    /// makes an anonymous one with no digest cache.
    pub registry: Option<Arc<crate::registry::RegistryClient>>,
}

/// Policy, cache and apptainer, together.
pub struct Runtime {
    config: Config,
    policy: Policy,
    cache: Cache,
    options: RuntimeOptions,
    apptainer: OnceLock<Apptainer>,
}

impl Runtime {
    /// Load the policy chain and open the cache.
    pub fn new(config: Config, options: RuntimeOptions) -> Result<Self, Error> {
        let root = options
            .cache_dir
            .clone()
            .or_else(|| crate::default_cache_root(&config))
            .ok_or(Error::NoCacheDir)?;
        let cache = open_cache(&root, &config)?;
        let policy_options = PolicyOptions {
            compile_cache: crate::policy::CompileCache::for_cache_root(cache.root()),
            engine: options.engine.clone(),
            registry: options.registry.clone(),
        };
        let policy = Policy::load(&config, &policy_options)?;
        Ok(Self {
            config,
            policy,
            cache,
            options,
            apptainer: OnceLock::new(),
        })
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    pub fn cache(&self) -> &Cache {
        &self.cache
    }

    /// The apptainer binary, found on first use.
    pub fn apptainer(&self) -> Result<&Apptainer, Error> {
        if let Some(found) = self.apptainer.get() {
            return Ok(found);
        }
        let found = crate::apptainer::discover(
            self.options.apptainer.as_deref(),
            self.options.apptainer_env.as_deref(),
            self.config.apptainer.as_deref(),
        )?;
        Ok(self.apptainer.get_or_init(|| found))
    }

    fn pull_timeout(&self) -> Duration {
        self.options
            .pull_timeout
            .or(self.config.pull_timeout)
            .unwrap_or(DEFAULT_PULL_TIMEOUT)
    }

    /// Run the policy chain for `image`.
    pub fn resolve(&self, image: &ImageRef, ctx: &Context) -> Resolution {
        self.policy.resolve(image, ctx)
    }

    /// The signal that asked to stop, if one has.
    fn cancelled(&self) -> Option<i32> {
        let signal = self.options.cancel.as_ref()?.load(Ordering::SeqCst);
        (signal != 0).then(|| i32::try_from(signal).unwrap_or(i32::MAX))
    }

    fn check_cancel(&self) -> Result<(), Error> {
        match self.cancelled() {
            Some(signal) => Err(interrupted(signal)),
            None => Ok(()),
        }
    }

    /// Take `identity`'s lock, reporting the wait, bounded by the pull
    /// timeout and cut short by a signal.
    fn hold(
        &self,
        identity: &Identity,
        mode: LockMode,
        progress: &mut dyn FnMut(Progress<'_>),
    ) -> Result<ImageLock, Error> {
        let limit = self.pull_timeout();
        let mut report = |waited| {
            progress(Progress::Waiting {
                identity: &identity.text,
                waited,
                limit,
            });
            self.cancelled().is_none()
        };
        let wait = &mut Wait {
            timeout: Some(limit),
            on_wait: Some(&mut report),
        };
        match self.cache.lock(identity, mode, wait) {
            Ok(lock) => Ok(lock),
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => Err(Error::io(
                format!(
                    "gave up on {} after waiting {} (the pull timeout) for another sifr \
                     pulling it, or removing it from the cache at {}; see whether that \
                     process is stuck, or raise the limit with --pull-timeout or \
                     SIFR_PULL_TIMEOUT",
                    identity.text,
                    humantime::format_duration(limit),
                    self.cache.root().display()
                ),
                e,
            )),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {
                Err(interrupted(self.cancelled().unwrap_or(0)))
            }
            Err(e) => Err(cache_error(self.cache.root(), e)),
        }
    }

    /// Make `image` ready in the cache: a verified hit, or a pull through
    /// the policy's plan, one process at a time per image. The result holds
    /// the image (see [`Pulled`]).
    ///
    /// The lock dance: a hit is verified under the identity's shared lock,
    /// which the result keeps. A miss takes the exclusive lock (never by
    /// upgrading a shared one, which could deadlock two upgraders), looks
    /// again (another process may have pulled it meanwhile), pulls, then
    /// lets go and re-takes the shared lock, verifying again: an eviction
    /// may have come in between, and then the image is pulled again.
    pub fn pull(
        &self,
        image: &ImageRef,
        purpose: Purpose,
        progress: &mut dyn FnMut(Progress<'_>),
    ) -> Result<Pulled, Error> {
        let mut ctx = Context::new(purpose);
        let identity = Identity::of(image, &ctx.arch);
        self.check_cancel()?;

        // A first look, under a shared hold when the image seems cached.
        let first = self.first_look(&identity, progress)?;
        if let Some((Lookup::Hit { entry, .. }, _)) = &first {
            ctx.local_sif_digest = Some(entry.sif_digest.clone());
        }
        // The policy is asked even for a cached image: a site may have
        // blocked it since.
        let plan = self.policy.resolve(image, &ctx).into_plan()?;
        // A policy that pinned a tag to a digest (`pin = "resolve"`) made
        // it another image: the one that digest names, cached under it. A
        // file pulled by the tag earlier may be another image by now.
        let (image, identity, first) = match pinned_by(image, &plan) {
            Some(pinned) => {
                drop(first);
                let identity = Identity::of(&pinned, &ctx.arch);
                let first = self.first_look(&identity, progress)?;
                (std::borrow::Cow::Owned(pinned), identity, first)
            }
            None => (std::borrow::Cow::Borrowed(image), identity, first),
        };
        let image = image.as_ref();
        match first {
            Some((Lookup::Hit { entry, blob, .. }, hold)) => {
                return Ok(self.hit(image, entry, blob, hold));
            }
            // Corrupt: evicted below, under the exclusive lock.
            Some((_, hold)) => drop(hold),
            None => {}
        }

        let cache_err = |e| self.cache_or_cancel_error(e);
        // A pull, then a verified hit; again if an eviction came between
        // the two, but not forever.
        const ROUNDS: usize = 3;
        for _ in 0..ROUNDS {
            let pulled = self.pull_exclusive(image, &identity, &ctx, &plan, progress)?;
            self.check_cancel()?;
            let hold = self.hold(&identity, LockMode::Shared, progress)?;
            let mut hashing = HashReport {
                runtime: self,
                progress: &mut *progress,
            };
            match self
                .cache
                .lookup_held(&identity, &hold, &mut hashing)
                .map_err(cache_err)?
            {
                Lookup::Hit { entry, blob, .. } => {
                    return Ok(Pulled {
                        hold: Some(Arc::new(hold)),
                        entry,
                        blob: Some(blob),
                        ..pulled
                    });
                }
                Lookup::Corrupt { .. } | Lookup::Untrusted(_) | Lookup::Miss => {}
            }
        }
        Err(Error::io(
            format!(
                "{} was removed from the cache at {} each time it was pulled ({ROUNDS} times); \
                 see what runs `sifr cache rm` or `sifr cache prune` there",
                image,
                self.cache.root().display()
            ),
            std::io::Error::from(std::io::ErrorKind::NotFound),
        ))
    }

    /// The cache's answer for `identity`, under a shared hold, when it
    /// seems cached; `None` when it does not.
    fn first_look(
        &self,
        identity: &Identity,
        progress: &mut dyn FnMut(Progress<'_>),
    ) -> Result<Option<(Lookup, ImageLock)>, Error> {
        if !self.cache.peek(identity) {
            return Ok(None);
        }
        let hold = self.hold(identity, LockMode::Shared, progress)?;
        let mut hashing = HashReport {
            runtime: self,
            progress: &mut *progress,
        };
        let found = self
            .cache
            .lookup_held(identity, &hold, &mut hashing)
            .map_err(|e| self.cache_or_cancel_error(e))?;
        Ok(Some((found, hold)))
    }

    /// Under the identity's exclusive lock: find it cached (another process
    /// pulled it while we waited), or pull it through `plan`. The result
    /// holds nothing.
    fn pull_exclusive(
        &self,
        image: &ImageRef,
        identity: &Identity,
        ctx: &Context,
        plan: &[crate::policy::Source],
        progress: &mut dyn FnMut(Progress<'_>),
    ) -> Result<Pulled, Error> {
        let cache_err = |e| self.cache_or_cancel_error(e);
        let lock = self.hold(identity, LockMode::Exclusive, progress)?;
        let mut hashing = HashReport {
            runtime: self,
            progress: &mut *progress,
        };
        match self
            .cache
            .lookup_held(identity, &lock, &mut hashing)
            .map_err(cache_err)?
        {
            Lookup::Hit { entry, .. } => return Ok(self.unheld(image, entry, true)),
            Lookup::Corrupt { entry, actual } => warn_corrupt(&entry, &actual, progress),
            Lookup::Untrusted(untrusted) => warn_untrusted(image, &untrusted, progress),
            Lookup::Miss => {}
        }

        let apptainer = self.apptainer()?;
        let arch = (ctx.arch != crate::policy::host_arch()).then_some(ctx.arch.as_str());
        let mut attempts = Vec::new();
        for (i, source) in plan.iter().enumerate() {
            self.check_cancel()?;
            let uri = source.uri();
            progress(Progress::Attempt {
                uri: &uri,
                index: i + 1,
                of: plan.len(),
            });
            let (tmp_name, tmp_path) = self.cache.temp_pull_path(identity).map_err(cache_err)?;
            let args = Apptainer::pull_args(&tmp_path, &uri, source.plain_http, arch);
            let cancelled = || self.cancelled();
            let result = apptainer.pull(&args, self.pull_timeout(), &cancelled, &mut |line| {
                progress(Progress::Output { line })
            });
            match result {
                Ok(()) => {
                    let provenance = Provenance {
                        identity: identity.text.clone(),
                        image: image.to_string(),
                        arch: ctx.arch.clone(),
                        manifest_digest: image.manifest_digest.clone(),
                        source_uri: uri.clone(),
                        source_note: source.note.clone(),
                        pulled_at: unix_now(),
                        apptainer_version: apptainer.version.raw.clone(),
                        plan_notes: plan
                            .iter()
                            .map(|s| format!("{}: {}", s.uri(), s.note))
                            .collect(),
                    };
                    let mut hashing = HashReport {
                        runtime: self,
                        progress: &mut *progress,
                    };
                    let entry = self
                        .cache
                        .commit(identity, &tmp_name, provenance, &mut hashing)
                        .map_err(|e| {
                            self.cache.discard_temp(&tmp_name);
                            cache_err(e)
                        })?;
                    return Ok(self.unheld(image, entry, false));
                }
                Err(AttemptFailure::Interrupted { signal }) => {
                    self.cache.discard_temp(&tmp_name);
                    return Err(interrupted(signal));
                }
                Err(failure) => {
                    self.cache.discard_temp(&tmp_name);
                    // The next source would fill the same disk.
                    if ran_out_of_space_in(self.cache.root(), &failure) {
                        let enospc = rustix::io::Errno::NOSPC.raw_os_error();
                        return Err(cache_error(
                            self.cache.root(),
                            std::io::Error::from_raw_os_error(enospc),
                        ));
                    }
                    let next = plan.get(i + 1).map(|s| s.uri());
                    progress(Progress::Fallback {
                        uri: &uri,
                        failure: &failure,
                        next: next.as_deref(),
                    });
                    attempts.push(Attempt { uri, failure });
                }
            }
        }
        Err(Error::PullFailed {
            image: image.to_string(),
            attempts,
        })
    }

    /// A cache I/O error, unless it happened because a signal asked to stop.
    fn cache_or_cancel_error(&self, e: std::io::Error) -> Error {
        match self.cancelled() {
            Some(signal) => interrupted(signal),
            None => cache_error(self.cache.root(), e),
        }
    }

    fn hit(&self, image: &ImageRef, entry: Entry, blob: VerifiedBlob, hold: ImageLock) -> Pulled {
        Pulled {
            hold: Some(Arc::new(hold)),
            blob: Some(blob),
            ..self.unheld(image, entry, true)
        }
    }

    fn unheld(&self, image: &ImageRef, entry: Entry, cached: bool) -> Pulled {
        Pulled {
            image: image.to_string(),
            path: self.cache.blob_path(&entry),
            cached,
            entry,
            hold: None,
            blob: None,
        }
    }

    /// Make `image` ready, then `apptainer run|exec` it with hermetic
    /// defaults (`--cleanenv --no-home`). Returns the container's exit code.
    pub fn run(
        &self,
        image: &ImageRef,
        mode: RunMode,
        options: &RunOptions,
        args: &[String],
        progress: &mut dyn FnMut(Progress<'_>),
    ) -> Result<i32, Error> {
        let pulled = self.pull(image, Purpose::Run, progress)?;
        self.run_pulled(&pulled, mode, options, args)
    }

    /// `apptainer run|exec` an image [`Runtime::pull`] made ready. The image
    /// stays held (eviction waits) until apptainer exits; if `pulled` no
    /// longer holds it, it is taken again and checked to be the same file.
    pub fn run_pulled(
        &self,
        pulled: &Pulled,
        mode: RunMode,
        options: &RunOptions,
        args: &[String],
    ) -> Result<i32, Error> {
        let apptainer = self.apptainer()?;
        let (_retaken, blob) = match (&pulled.hold, &pulled.blob) {
            (Some(_), Some(blob)) => (None, blob.clone()),
            _ => {
                let (hold, blob) = self.retake(pulled)?;
                (Some(hold), blob)
            }
        };
        // Not `pulled.path`: apptainer opens what it is given later, by
        // path, and in a shared cache that path could name another file by
        // then. This names the file that was checked (see Cache::runnable).
        // The whole story goes in the message; the source only says what
        // kind of failure it was (the CLI prints both).
        let sif = self.cache.runnable(&blob).map_err(|e| {
            Error::io(
                format!(
                    "cannot run {} from the cache at {}: {e}",
                    pulled.image,
                    self.cache.root().display()
                ),
                std::io::Error::from(e.kind()),
            )
        })?;
        let argv = Apptainer::run_args(mode, sif.path(), options, args);
        let code = apptainer
            .run(&argv, &options.host_env)
            .map_err(|e| Error::io(format!("running {}", apptainer.path.display()), e));
        if sif.is_link() {
            drop(sif);
            // Best effort: at worst, the next hit re-hashes the file.
            let _ = self.cache.restamp_after_link(&pulled.entry, &blob);
        }
        code
    }

    /// Hold a released [`Pulled`] again, and check that the cache still has
    /// the same file for it.
    fn retake(&self, pulled: &Pulled) -> Result<(ImageLock, VerifiedBlob), Error> {
        let identity = Identity::from_text(pulled.entry.identity.clone());
        let hold = self.hold(&identity, LockMode::Shared, &mut |_| {})?;
        match self
            .cache
            .lookup_held(&identity, &hold, &mut ())
            .map_err(|e| cache_error(self.cache.root(), e))?
        {
            Lookup::Hit { entry, blob, .. } if entry.sif_digest == pulled.entry.sif_digest => {
                Ok((hold, blob))
            }
            _ => Err(Error::io(
                format!(
                    "{} ({}) is no longer in the cache at {}; pull it again",
                    pulled.image,
                    pulled.entry.sif_digest,
                    self.cache.root().display()
                ),
                std::io::Error::from(std::io::ErrorKind::NotFound),
            )),
        }
    }
}

/// Hashing progress, as [`Progress::Hashing`]; a signal stops the hashing
/// (it fails, and [`Runtime::cache_or_cancel_error`] says why).
struct HashReport<'r, 'p> {
    runtime: &'r Runtime,
    progress: &'p mut dyn FnMut(Progress<'_>),
}

impl crate::cache::HashProgress for HashReport<'_, '_> {
    fn hashed(&mut self, done: u64, total: u64) {
        (self.progress)(Progress::Hashing { done, total });
    }

    fn keep_going(&mut self) -> bool {
        self.runtime.cancelled().is_none()
    }
}

/// `image` pinned to the digest its plan pulls, when the image has no
/// digest and every source of the plan pulls one and the same digest (as
/// `pin = "resolve"` makes it).
pub(crate) fn pinned_by(image: &ImageRef, plan: &[crate::policy::Source]) -> Option<ImageRef> {
    if image.manifest_digest.is_some() {
        return None;
    }
    let mut digests = plan.iter().map(|s| match &s.reference {
        crate::policy::PullRef::Digest(d) => Some(d),
        crate::policy::PullRef::Tag(_) => None,
    });
    let first = digests.next()??;
    if !digests.all(|d| d == Some(first)) {
        return None;
    }
    Some(ImageRef {
        manifest_digest: Some(first.clone()),
        ..image.clone()
    })
}

/// The cache at `root`, trusting whom `config` says to trust.
pub(crate) fn open_cache(root: &Path, config: &Config) -> Result<Cache, Error> {
    Ok(Cache::open(root)
        .map_err(|e| cache_error(root, e))?
        .trusting(&config.trusted_owners))
}

/// An I/O error in the cache at `root` (its message says what to do when
/// the cache is full).
fn cache_error(root: &Path, e: std::io::Error) -> Error {
    Error::Cache(crate::cache::CacheError::at(root, e))
}

/// Whether apptainer failed because the cache ran out of space: it says
/// so about a file in the cache (its out-of-space elsewhere, in its own
/// temporary or cache directories, is left to the attempt's message).
fn ran_out_of_space_in(root: &Path, failure: &AttemptFailure) -> bool {
    let AttemptFailure::Failed { tail, .. } = failure else {
        return false;
    };
    let root = root.display().to_string();
    tail.iter().any(|line| {
        let lower = line.to_ascii_lowercase();
        (lower.contains("no space left on device") || lower.contains("disk quota exceeded"))
            && line.contains(&root)
    })
}

/// A record or blob nobody you trust wrote: say whose, and what to do.
fn warn_untrusted(image: &ImageRef, untrusted: &Untrusted, progress: &mut dyn FnMut(Progress<'_>)) {
    let message = format!(
        "not using the cached {image}: {untrusted}; pulling it again into a file of your own \
         ({})",
        untrusted.advice()
    );
    progress(Progress::Warning { message: &message });
}

fn warn_corrupt(entry: &Entry, actual: &SifDigest, progress: &mut dyn FnMut(Progress<'_>)) {
    let message = format!(
        "the cached SIF of {} was changed on disk (expected {}, found {actual}); it was evicted and will be pulled again",
        entry.image, entry.sif_digest
    );
    progress(Progress::Warning { message: &message });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_running_out_of_space_in_the_cache_is_the_cache_being_full() {
        let failed = |line: &str| AttemptFailure::Failed {
            status: "exited with status 255".into(),
            tail: vec!["INFO:    Starting build...".into(), line.into()],
        };
        let root = Path::new("/shared/sifr");
        assert!(ran_out_of_space_in(
            root,
            &failed(
                "FATAL:   while building SIF: write /shared/sifr/tmp/ab-1-0.sif: no space left on device"
            )
        ));
        // apptainer's own temporary directory is not the cache.
        assert!(!ran_out_of_space_in(
            root,
            &failed("FATAL:   write /tmp/build-temp-1/rootfs/x: no space left on device")
        ));
        assert!(!ran_out_of_space_in(
            root,
            &failed("FATAL:   /shared/sifr/tmp/ab-1-0.sif: connection refused")
        ));
        let err = cache_error(root, std::io::Error::from_raw_os_error(28)).to_string();
        assert!(
            err.starts_with("the cache at /shared/sifr is out of space; free space there")
                && err.contains("SIFR_CACHE_DIR"),
            "{err}"
        );
    }
}
