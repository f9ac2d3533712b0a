//! `sifr pull`, and what every command that may pull shares: the
//! options, the runtime, and stopping on a signal.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::Result;
use sifr::report::PullReport;
use sifr::runtime::interrupted_by;
use sifr::{Config, ConfigSources, ImageRef, Purpose, Runtime};

use super::progress::Display;
use super::{Globals, exit};

/// Options shared by the commands that may pull.
#[derive(clap::Args)]
pub struct PullOptions {
    /// The apptainer (or singularity) binary [default: $SIFR_APPTAINER, the
    /// config's `[apptainer] path`, then `apptainer` or `singularity` on PATH].
    #[arg(long, value_name = "PATH")]
    pub apptainer: Option<PathBuf>,

    /// Limit on each pull attempt, e.g. `20m`, `1h 30m` [default: the
    /// config's `[apptainer] pull-timeout`, else 20m].
    #[arg(long, value_name = "DURATION", env = "SIFR_PULL_TIMEOUT", value_parser = humantime::parse_duration)]
    pub pull_timeout: Option<Duration>,
}

#[derive(clap::Args)]
pub struct PullArgs {
    /// Image references, e.g. `ncbi/blast:2.14.0`.
    #[arg(required = true, value_name = "IMAGE")]
    images: Vec<String>,

    /// Print what was pulled as JSON.
    #[arg(long)]
    json: bool,

    #[command(flatten)]
    locked: super::lock::LockedArgs,

    #[command(flatten)]
    options: PullOptions,
}

pub(super) fn runtime(
    globals: &Globals,
    options: &PullOptions,
    cancel: &Cancel,
) -> Result<Runtime> {
    let config = Config::load(&ConfigSources::standard(
        globals.config.clone(),
        super::config_env(),
    ))?;
    // `--pull-timeout` has read $SIFR_PULL_TIMEOUT already (clap's `env`).
    let runtime = super::builder(config)
        .apptainer(options.apptainer.clone(), super::apptainer_env())
        .pull_timeout(options.pull_timeout, None)
        .cancel(cancel.flag())
        .build()?;
    globals.warn_site_store(runtime.policy());
    Ok(runtime)
}

/// SIGINT, SIGTERM and SIGHUP while pulling: the pull stops (apptainer's
/// process group with it, and its temporary file goes), then sifr exits
/// 128 + the signal. Without this, apptainer, in a process group of its
/// own, would go on pulling after sifr died, past any timeout.
#[derive(Default)]
pub(super) struct Cancel(Arc<AtomicUsize>);

impl Cancel {
    /// Catch the signals from now on. Until then (loading the config and
    /// the plugins), they end sifr as usual: there is nothing to clean up.
    pub(super) fn install(&self) -> std::io::Result<()> {
        use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
        for signal in [SIGINT, SIGTERM, SIGHUP] {
            signal_hook::flag::register_usize(signal, self.0.clone(), signal as usize)?;
        }
        Ok(())
    }

    /// The flag the runtime checks (see `RuntimeBuilder::cancel`).
    pub(super) fn flag(&self) -> Arc<AtomicUsize> {
        self.0.clone()
    }

    /// The exit code for a signal that stopped us, if one did.
    pub(super) fn code(&self) -> Option<u8> {
        match self.0.load(Ordering::SeqCst) {
            0 => None,
            signal => Some(u8::try_from(128 + signal).unwrap_or(exit::FAILURE)),
        }
    }
}

/// 128 + the signal, if `error` is a pull stopped by one.
pub(super) fn interrupted_code(error: &sifr::Error) -> Option<u8> {
    interrupted_by(error).map(|signal| u8::try_from(128 + signal).unwrap_or(exit::FAILURE))
}

pub fn pull(globals: &Globals, args: PullArgs) -> Result<u8> {
    let locked = args.locked.load()?;
    let cancel = Cancel::default();
    let runtime = runtime(globals, &args.options, &cancel)?;
    cancel.install()?;
    let mut code = exit::FirstFailure::default();
    let mut out = Vec::new();
    // --locked: every image is found in the lock (and, with --frozen,
    // found current) before anything is pulled, or nothing is.
    let mut pinned: Vec<Option<(ImageRef, sifr::lock::LockedImage)>> = Vec::new();
    if let Some(locked) = &locked {
        for input in &args.images {
            match locked.pin(input, runtime.policy()) {
                Ok(pin) => pinned.push(Some(pin)),
                Err(e) => {
                    eprintln!("sifr: error: {e}");
                    code.note(super::lock::exit_code(&e));
                    out.push(PullReport::failed(input, &e));
                    pinned.push(None);
                }
            }
        }
        if code.code() != 0 {
            if args.json {
                println!("{}", serde_json::to_string_pretty(&out)?);
            }
            return Ok(code.code());
        }
    }
    for (i, input) in args.images.iter().enumerate() {
        let (image, entry) = match pinned.get_mut(i).and_then(Option::take) {
            Some((image, entry)) => (image, Some(entry)),
            None => match ImageRef::parse(input) {
                Ok(image) => (image, None),
                Err(e) => {
                    eprintln!("sifr: error: {e}");
                    code.note(exit::INVALID_REFERENCE);
                    out.push(PullReport::failed(input, &e));
                    continue;
                }
            },
        };
        let mut display = Display::new(globals);
        let result = runtime.pull(&image, Purpose::Pull, &mut |p| display.update(p));
        display.finish();
        match result {
            Ok(pulled) => {
                if let (Some(locked), Some(entry)) = (&locked, &entry) {
                    locked.check_local(globals, entry, &pulled);
                }
                if args.json {
                    out.push(PullReport::pulled(input, &pulled));
                } else {
                    println!("{}", pulled.path.display());
                    // A one-line summary for people; scripts read stdout.
                    if !globals.quiet && std::io::IsTerminal::is_terminal(&std::io::stderr()) {
                        let how = if pulled.cached {
                            "cached".to_string()
                        } else {
                            format!("pulled from {}", pulled.entry.source_uri)
                        };
                        eprintln!("sifr: {} {how} ({})", pulled.image, pulled.entry.sif_digest);
                    }
                }
            }
            Err(e) => {
                eprintln!("sifr: error: {e}");
                if let Some(stopped) = interrupted_code(&e) {
                    return Ok(stopped);
                }
                code.note(super::sifr_exit_code(&e));
                out.push(PullReport::failed(input, &e));
            }
        }
    }
    if let Some(stopped) = cancel.code() {
        return Ok(stopped);
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    }
    Ok(code.code())
}
