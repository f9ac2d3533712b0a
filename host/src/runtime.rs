//! Pull and run through the policy and the cache: what `sifr pull`, `run`
//! and `exec` do, as a library.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use serde::Serialize;

use crate::apptainer::{Apptainer, AttemptFailure, RunMode, RunOptions};
use crate::cache::{Cache, Entry, Identity, Lookup, unix_now};
use crate::config::Config;
use crate::error::Error;
use crate::policy::{Context, Policy, PolicyOptions, Purpose, Resolution};
use crate::reference::ImageRef;

/// The default limit on one pull attempt, as Nextflow's `pullTimeout`.
pub const DEFAULT_PULL_TIMEOUT: Duration = Duration::from_secs(20 * 60);

/// What is happening, for a progress display or an embedder's log.
#[derive(Debug)]
pub enum Progress<'a> {
    /// Another process (or thread) is pulling this image; waiting for it.
    Waiting { identity: &'a str },
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
#[derive(Debug, Clone, Serialize)]
pub struct Pulled {
    pub image: String,
    /// Absolute path of the SIF file in the cache.
    pub path: PathBuf,
    /// Served from the cache without pulling.
    pub cached: bool,
    pub entry: Entry,
}

/// One failed pull attempt.
#[derive(Debug, Clone, Serialize)]
pub struct Attempt {
    pub uri: String,
    pub failure: AttemptFailure,
}

/// Where things are, and how long a pull may take.
#[derive(Debug, Clone, Default)]
pub struct RuntimeOptions {
    /// `--apptainer`: wins over `SIFR_APPTAINER` and the config.
    pub apptainer: Option<PathBuf>,
    /// The cache root; default [`crate::cache_root_for`].
    pub cache_dir: Option<PathBuf>,
    /// Per-attempt limit; default the config's, else 20 minutes.
    pub pull_timeout: Option<Duration>,
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
            .or_else(|| crate::cache_root_for(&config))
            .ok_or_else(|| {
                Error::io(
                    "no cache directory: set SIFR_CACHE_DIR or `[cache] dir` in the config",
                    std::io::Error::from(std::io::ErrorKind::NotFound),
                )
            })?;
        let cache = Cache::open(&root)
            .map_err(|e| Error::io(format!("cannot open the cache at {}", root.display()), e))?;
        let policy_options = PolicyOptions {
            compile_cache: crate::policy::CompileCache::for_cache_root(&root),
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

    /// Make `image` ready in the cache: a verified hit, or a pull through
    /// the policy's plan, one process at a time per image.
    pub fn pull(
        &self,
        image: &ImageRef,
        purpose: Purpose,
        progress: &mut dyn FnMut(Progress<'_>),
    ) -> Result<Pulled, Error> {
        let mut ctx = Context::new(purpose);
        let identity = Identity::of(image, &ctx.arch);
        let cache_err = |e| cache_error(self.cache.root(), e);

        let mut hashing = |done, total| progress(Progress::Hashing { done, total });
        let first = self
            .cache
            .lookup(&identity, &mut hashing)
            .map_err(cache_err)?;
        if let Lookup::Hit { entry, .. } = &first {
            ctx.local_sif_digest = entry.sif_digest();
        }
        // The policy is asked even for a cached image: a site may have
        // blocked it since.
        let plan = self.policy.resolve(image, &ctx).into_plan()?;
        match first {
            Lookup::Hit { entry, .. } => return Ok(self.hit(image, entry)),
            Lookup::Corrupt { entry, actual } => warn_corrupt(&entry, &actual, progress),
            Lookup::Miss => {}
        }

        let _lock = self
            .cache
            .lock(&identity, || {
                progress(Progress::Waiting {
                    identity: &identity.text,
                })
            })
            .map_err(cache_err)?;
        // Whoever held the lock may have pulled it for us.
        let mut hashing = |done, total| progress(Progress::Hashing { done, total });
        match self
            .cache
            .lookup(&identity, &mut hashing)
            .map_err(cache_err)?
        {
            Lookup::Hit { entry, .. } => return Ok(self.hit(image, entry)),
            Lookup::Corrupt { entry, actual } => warn_corrupt(&entry, &actual, progress),
            Lookup::Miss => {}
        }

        let apptainer = self.apptainer()?;
        let arch = (ctx.arch != crate::policy::host_arch()).then_some(ctx.arch.as_str());
        let mut attempts = Vec::new();
        for (i, source) in plan.iter().enumerate() {
            let uri = source.uri();
            progress(Progress::Attempt {
                uri: &uri,
                index: i + 1,
                of: plan.len(),
            });
            let (tmp_name, tmp_path) = self.cache.temp_pull_path(&identity).map_err(cache_err)?;
            let args = Apptainer::pull_args(&tmp_path, &uri, source.plain_http, arch);
            let result = apptainer.pull(&args, self.pull_timeout(), &mut |line| {
                progress(Progress::Output { line })
            });
            match result {
                Ok(()) => {
                    let entry = Entry {
                        identity: identity.text.clone(),
                        image: image.to_string(),
                        arch: ctx.arch.clone(),
                        manifest_digest: image.manifest_digest.as_ref().map(|d| d.to_string()),
                        sif_digest: String::new(),
                        size: 0,
                        source_uri: uri.clone(),
                        source_note: source.note.clone(),
                        pulled_at: unix_now(),
                        apptainer_version: apptainer.version.raw.clone(),
                        plan_notes: plan
                            .iter()
                            .map(|s| format!("{}: {}", s.uri(), s.note))
                            .collect(),
                        stamp: Default::default(),
                    };
                    let mut hashing = |done, total| progress(Progress::Hashing { done, total });
                    let entry = self
                        .cache
                        .commit(&identity, &tmp_name, entry, &mut hashing)
                        .map_err(|e| {
                            self.cache.discard_temp(&tmp_name);
                            cache_err(e)
                        })?;
                    return Ok(Pulled {
                        image: image.to_string(),
                        path: self.cache.blob_path(&entry),
                        cached: false,
                        entry,
                    });
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

    fn hit(&self, image: &ImageRef, entry: Entry) -> Pulled {
        Pulled {
            image: image.to_string(),
            path: self.cache.blob_path(&entry),
            cached: true,
            entry,
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

    /// `apptainer run|exec` an image [`Runtime::pull`] made ready.
    pub fn run_pulled(
        &self,
        pulled: &Pulled,
        mode: RunMode,
        options: &RunOptions,
        args: &[String],
    ) -> Result<i32, Error> {
        let apptainer = self.apptainer()?;
        let argv = Apptainer::run_args(mode, &pulled.path, options, args);
        apptainer
            .run(&argv)
            .map_err(|e| Error::io(format!("running {}", apptainer.path.display()), e))
    }
}

/// An I/O error in the cache, saying what to do when it is full.
fn cache_error(root: &Path, e: std::io::Error) -> Error {
    use std::io::ErrorKind::{QuotaExceeded, StorageFull};
    let root = root.display();
    if matches!(e.kind(), StorageFull | QuotaExceeded) {
        return Error::io(
            format!(
                "the cache at {root} is out of space; free space there \
                 (e.g. `sifr cache prune --max-size 20GiB`) or point SIFR_CACHE_DIR at a \
                 filesystem with room"
            ),
            e,
        );
    }
    Error::io(format!("cache at {root}"), e)
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

fn warn_corrupt(entry: &Entry, actual: &str, progress: &mut dyn FnMut(Progress<'_>)) {
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
