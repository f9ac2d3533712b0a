//! `sifr lock`, and `--locked`/`--frozen` for the commands that pull.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context as _, Result};
use sifr::lock::{self, LockError, LockFile, LockedImage};
use sifr::policy::PolicyOptions;
use sifr::registry::{RegistryClient, RegistryOptions};
use sifr::report::LockReport;
use sifr::{Config, ConfigSources, ImageRef, Policy};

use super::{Globals, exit};

#[derive(clap::Args)]
pub struct Args {
    /// Image references to lock, e.g. `ubuntu:22.04`. With none (and no
    /// --from), every image already in the lock file is locked again.
    #[arg(value_name = "IMAGE")]
    images: Vec<String>,

    /// Also read references from FILE, one a line (`-`: standard input);
    /// blank lines and lines starting with `#` are skipped.
    #[arg(long, value_name = "FILE")]
    from: Option<PathBuf>,

    /// The lock file to write (or check).
    #[arg(long, value_name = "PATH", default_value = lock::DEFAULT_FILE)]
    file: PathBuf,

    /// Lock for this architecture, in OCI terms [default: this machine's].
    /// With no IMAGE, only the entries for it are locked again.
    #[arg(long, value_name = "ARCH")]
    arch: Option<String>,

    /// Write nothing; instead lock each image again, asking the registries
    /// now (never the digest cache), and report drift: the tag names
    /// another digest, the policy chain's plugins changed, or the policy
    /// now denies the image. Exits 10 when anything drifted.
    #[arg(long)]
    check: bool,

    /// Print the results as JSON (an array, one object per image).
    #[arg(long)]
    json: bool,
}

/// `--locked` and `--frozen`, for `pull`, `run` and `exec`.
#[derive(clap::Args)]
pub struct LockedArgs {
    /// Pull by the manifest digests locked in FILE (written by `sifr
    /// lock`), not by what the tags name now. Every IMAGE must be in it,
    /// for this machine's architecture, or nothing is pulled (exit 11).
    /// The policy still chooses the sources; each pulls exactly the locked
    /// digest. The lock file is only read, never written.
    /// $SIFR_LOCKED sets it too, for every sifr command and for the front:
    /// the pulls a workflow engine makes through `apptainer` are then
    /// pinned by the workflow's lock file as well.
    #[arg(long, value_name = "FILE", env = "SIFR_LOCKED")]
    pub locked: Option<PathBuf>,

    /// With --locked: also refuse (exit 10), before pulling anything, when
    /// the lock is out of date: the policy chain's plugins are not the
    /// ones locked, or the chain now denies an image or pins it to another
    /// digest. Asks no registry of its own, as cargo's --frozen is
    /// --locked offline. (uv's --frozen skips that check; sifr's does it.)
    #[arg(long, requires = "locked")]
    pub frozen: bool,
}

/// A lock file loaded for `--locked`.
pub(super) struct Locked {
    path: PathBuf,
    file: LockFile,
    frozen: bool,
}

impl LockedArgs {
    /// The lock file, when `--locked` names one.
    pub(super) fn load(&self) -> Result<Option<Locked>, LockError> {
        let Some(path) = &self.locked else {
            return Ok(None);
        };
        Locked::open(path.clone(), self.frozen).map(Some)
    }
}

impl Locked {
    /// The lock file at `path`, read for `--locked` (and `--frozen`).
    pub(super) fn open(path: PathBuf, frozen: bool) -> Result<Self, LockError> {
        Ok(Self {
            file: LockFile::load(&path)?,
            path,
            frozen,
        })
    }

    /// The image to pull for `input`, as written: its locked entry for
    /// this machine's architecture, pinned to the locked digest. With
    /// `--frozen`, an entry the policy would lock differently now is an
    /// error.
    pub(super) fn pin(
        &self,
        input: &str,
        policy: &Policy,
    ) -> Result<(ImageRef, LockedImage), LockError> {
        let arch = sifr::policy::host_arch();
        let entry = self.file.require(&self.path, input, arch)?;
        if self.frozen {
            let drift = lock::offline_drift(policy, entry)?;
            if !drift.is_empty() {
                return Err(LockError::Frozen {
                    path: self.path.clone(),
                    reference: entry.reference.clone(),
                    arch: arch.to_string(),
                    drift,
                });
            }
        }
        Ok((entry.pinned()?, entry.clone()))
    }

    /// A warning when the cache's SIF file is not the one the lock
    /// recorded: it was built again (a pull is a build), from the locked
    /// digest all the same.
    pub(super) fn check_local(
        &self,
        globals: &Globals,
        entry: &LockedImage,
        pulled: &sifr::Pulled,
    ) {
        if let Some(local) = &entry.local
            && local.sif_sha256 != pulled.entry.sif_digest
        {
            globals.warn(&format!(
                "{}: the cached SIF file ({}) is not the one {} records ({}); it was built \
                 again from the locked digest since (a pull is a build); `sifr lock --file {} {}` \
                 records the new file",
                entry.reference,
                pulled.entry.sif_digest,
                self.path.display(),
                local.sif_sha256,
                self.path.display(),
                entry.reference
            ));
        }
    }
}

/// The exit code for a lock error.
pub fn exit_code(error: &LockError) -> u8 {
    match error {
        LockError::Read { .. } | LockError::Malformed { .. } | LockError::NotLocked { .. } => {
            exit::NOT_LOCKED
        }
        LockError::Frozen { .. } => exit::LOCK_DRIFT,
        LockError::InvalidReference(_) => exit::INVALID_REFERENCE,
        LockError::Policy(e) => super::sifr_exit_code(e),
        LockError::Unresolved { .. } => exit::PULL_FAILED,
        LockError::Write { .. } => exit::FAILURE,
    }
}

/// References from `--from FILE` (`-`: stdin): one a line, blank lines and
/// `#` comments skipped, as `sifr resolve --from` reads them.
fn read_references(from: &Path) -> Result<Vec<String>> {
    let text = if from.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin()).context("reading references from stdin")?
    } else {
        std::fs::read_to_string(from)
            .with_context(|| format!("reading references from {}", from.display()))?
    };
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(String::from)
        .collect())
}

pub fn run(globals: &Globals, args: Args) -> Result<u8> {
    let config = Config::load(&ConfigSources::standard(
        globals.config.clone(),
        super::config_env(),
    ))?;
    let path = &args.file;
    // `--check` needs a lock file to check; `sifr lock` makes one.
    let mut file = if args.check {
        LockFile::load(path)?
    } else {
        LockFile::load_or_new(path)?
    };

    let mut inputs = args.images.clone();
    if let Some(from) = &args.from {
        inputs.extend(read_references(from)?);
    }
    let host = sifr::policy::host_arch().to_string();
    let targets: Vec<(String, String)> = if inputs.is_empty() && args.from.is_none() {
        let all: Vec<_> = file
            .images
            .iter()
            .filter(|i| args.arch.as_ref().is_none_or(|a| *a == i.arch))
            .map(|i| (i.reference.clone(), i.arch.clone()))
            .collect();
        if all.is_empty() {
            let what = if path.exists() {
                let arch = args.arch.as_ref().map(|a| format!(" for {a}"));
                format!(
                    "{} has no images{}",
                    path.display(),
                    arch.unwrap_or_default()
                )
            } else {
                format!("there is no {} yet", path.display())
            };
            anyhow::bail!(
                "nothing to lock: {what}; name the images: sifr lock IMAGE... (or --from FILE)"
            );
        }
        all
    } else {
        let arch = args.arch.clone().unwrap_or(host);
        inputs.into_iter().map(|i| (i, arch.clone())).collect()
    };

    let builder = super::builder(config);
    // A lock (and a check) asks the registries now: a client, and a
    // policy, without the digest cache, so that a tag that moved a minute
    // ago is seen, and `sifr lock` after `--check` locks what it reported.
    let client = Arc::new(RegistryClient::new(RegistryOptions {
        cache: None,
        ..builder.registry_client().options().clone()
    }));
    let options = PolicyOptions {
        registry: Some(client.clone()),
        ..builder.policy_options()
    };
    let policy = Policy::load(builder.config(), &options).map_err(sifr::Error::from);
    let policy = policy.context("loading the policy chain")?;
    globals.warn_site_store(&policy);
    // The SIF files already cached, for `[image.local]`; a cache that is
    // not there yet is not made for that.
    let cache = builder
        .cache_root()
        .filter(|root| root.exists())
        .and_then(|_| builder.cache().ok());

    let mut code = exit::FirstFailure::default();
    let mut reports = Vec::new();
    let mut locked_any = false;
    for (input, arch) in &targets {
        let report = if args.check {
            check_one(&file, &policy, &client, input, arch)
        } else {
            lock_one(&mut file, cache.as_ref(), &policy, &client, input, arch)
        };
        let report = match report {
            Ok(report) => report,
            Err(e) => {
                eprintln!("sifr: error: {e}");
                code.note(exit_code(&e));
                reports.push(LockReport::failed(input, arch, &e));
                continue;
            }
        };
        match report.outcome {
            "drift" => code.note(exit::LOCK_DRIFT),
            "locked" | "updated" | "unchanged" => locked_any = true,
            _ => {}
        }
        if !args.json {
            print_report(&report);
        }
        reports.push(report);
    }
    // What was locked is written, and the entries that failed are left as
    // they were: the file stays one the commands can use.
    if locked_any {
        file.save(path)?;
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
    }
    Ok(code.code())
}

fn print_report(report: &LockReport) {
    let what = format!("{} ({})", report.input, report.arch);
    let digest = report
        .entry
        .as_ref()
        .map(|e| e.manifest_digest.to_string())
        .unwrap_or_default();
    match report.outcome {
        "drift" => {
            for drift in &report.drift {
                println!("{what}: drift: {}", drift.message);
            }
        }
        "ok" => println!("{what}: ok"),
        outcome => println!("{what}: {outcome} {digest}"),
    }
}

/// Lock one image into `file`.
fn lock_one(
    file: &mut LockFile,
    cache: Option<&sifr::cache::Cache>,
    policy: &Policy,
    client: &RegistryClient,
    input: &str,
    arch: &str,
) -> Result<LockReport, LockError> {
    let mut entry = lock::resolve_entry(policy, client, input, arch)?;
    let old = file.get(input, arch);
    // The cache's SIF file, else the one recorded, if it is of this digest.
    entry.local = cache
        .and_then(|c| lock::local_sif(c, &entry))
        .map(|sif_sha256| lock::LocalSif { sif_sha256 })
        .or_else(|| {
            old.filter(|o| o.manifest_digest == entry.manifest_digest)
                .and_then(|o| o.local.clone())
        });
    let outcome = match old {
        None => "locked",
        Some(old) if *old == entry => "unchanged",
        Some(_) => "updated",
    };
    let report = LockReport::new(input, arch, outcome).with_entry(&entry);
    file.upsert(entry);
    Ok(report)
}

/// Check one image of `file` against what locking it now gives.
fn check_one(
    file: &LockFile,
    policy: &Policy,
    client: &RegistryClient,
    input: &str,
    arch: &str,
) -> Result<LockReport, LockError> {
    let Some(entry) = file.find(input, arch) else {
        // Not locked: the lock would change. Unless it does not parse.
        ImageRef::parse(input)?;
        return Ok(LockReport::new(input, arch, "drift").with_drift(&[lock::Drift::NotLocked]));
    };
    let drift = lock::check_entry(policy, client, entry)?;
    let outcome = if drift.is_empty() { "ok" } else { "drift" };
    Ok(LockReport::new(input, arch, outcome)
        .with_entry(entry)
        .with_drift(&drift))
}
