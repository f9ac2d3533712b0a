//! `sifr pull`, `sifr run` and `sifr exec`.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::Result;
use serde_json::json;
use sifr::apptainer::{HostEnv, RunMode, RunOptions};
use sifr::runtime::interrupted_by;
use sifr::{Config, ConfigSources, ImageRef, Purpose, Runtime, RuntimeOptions};

use super::progress::Display;
use super::{Globals, exit};

/// Options shared by the commands that may pull.
#[derive(clap::Args)]
pub struct PullOptions {
    /// The apptainer (or singularity) binary [default: $SIFR_APPTAINER, the
    /// config's `[apptainer] path`, then `apptainer` or `singularity` on PATH].
    #[arg(long, value_name = "PATH")]
    apptainer: Option<PathBuf>,

    /// Limit on each pull attempt, e.g. `20m`, `1h 30m` [default: the
    /// config's `[apptainer] pull-timeout`, else 20m].
    #[arg(long, value_name = "DURATION", env = "SIFR_PULL_TIMEOUT", value_parser = humantime::parse_duration)]
    pull_timeout: Option<Duration>,
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
    options: PullOptions,
}

#[derive(clap::Args)]
pub struct RunArgs {
    /// The image to run.
    #[arg(value_name = "IMAGE")]
    image: String,

    /// Bind a host path into the container: `SRC[:DST[:ro]]` (repeatable).
    #[arg(long, short = 'B', value_name = "SRC[:DST[:ro]]")]
    bind: Vec<String>,

    /// Set a variable in the container: `K=V` (repeatable). The host's
    /// environment is not passed in (--cleanenv).
    #[arg(long, value_name = "K=V", value_parser = parse_env)]
    env: Vec<String>,

    /// The working directory inside the container.
    #[arg(long, value_name = "DIR")]
    pwd: Option<String>,

    /// Enable NVIDIA GPU support.
    #[arg(long)]
    nv: bool,

    /// Pass an argument to apptainer as it is (repeatable), e.g.
    /// `--apptainer-arg=--contain`.
    #[arg(long, value_name = "ARG", allow_hyphen_values = true)]
    apptainer_arg: Vec<String>,

    /// Let the host's APPTAINERENV_*, SINGULARITYENV_* and
    /// APPTAINER_ENV_FILE set variables in the container (dropped by
    /// default: --env is the way in).
    #[arg(long)]
    keep_container_env: bool,

    /// Drop the host's APPTAINER_BIND, APPTAINER_BINDPATH and their
    /// SINGULARITY_* twins (passed by default: sites set them for their
    /// filesystems).
    #[arg(long)]
    no_env_binds: bool,

    #[command(flatten)]
    options: PullOptions,

    /// The command and its arguments (after `--`).
    #[arg(last = true, value_name = "ARGS")]
    args: Vec<String>,
}

fn parse_env(s: &str) -> Result<String, String> {
    match s.split_once('=') {
        Some((k, _)) if !k.is_empty() && !k.contains(char::is_whitespace) => Ok(s.to_string()),
        _ => Err(format!("{s:?} is not K=V")),
    }
}

fn runtime(globals: &Globals, options: &PullOptions, cancel: &Cancel) -> Result<Runtime> {
    let config = Config::load(&ConfigSources::standard(
        globals.config.clone(),
        super::config_env(),
    ))?;
    Ok(Runtime::new(
        config,
        RuntimeOptions {
            apptainer: options.apptainer.clone(),
            apptainer_env: super::apptainer_env(),
            cache_dir: None,
            pull_timeout: options.pull_timeout,
            cancel: Some(cancel.0.clone()),
        },
    )?)
}

/// SIGINT, SIGTERM and SIGHUP while pulling: the pull stops (apptainer's
/// process group with it, and its temporary file goes), then sifr exits
/// 128 + the signal. Without this, apptainer, in a process group of its
/// own, would go on pulling after sifr died, past any timeout.
#[derive(Default)]
struct Cancel(Arc<AtomicUsize>);

impl Cancel {
    /// Catch the signals from now on. Until then (loading the config and
    /// the plugins), they end sifr as usual: there is nothing to clean up.
    fn install(&self) -> Result<()> {
        use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
        for signal in [SIGINT, SIGTERM, SIGHUP] {
            signal_hook::flag::register_usize(signal, self.0.clone(), signal as usize)?;
        }
        Ok(())
    }

    /// The exit code for a signal that stopped us, if one did.
    fn code(&self) -> Option<u8> {
        match self.0.load(Ordering::SeqCst) {
            0 => None,
            signal => Some(u8::try_from(128 + signal).unwrap_or(exit::FAILURE)),
        }
    }
}

/// 128 + the signal, if `error` is a pull stopped by one.
fn interrupted_code(error: &sifr::Error) -> Option<u8> {
    interrupted_by(error).map(|signal| u8::try_from(128 + signal).unwrap_or(exit::FAILURE))
}

pub fn pull(globals: &Globals, args: PullArgs) -> Result<u8> {
    let cancel = Cancel::default();
    let runtime = runtime(globals, &args.options, &cancel)?;
    cancel.install()?;
    let mut code = 0;
    let mut out = Vec::new();
    for input in &args.images {
        let image = match ImageRef::parse(input) {
            Ok(image) => image,
            Err(e) => {
                eprintln!("sifr: error: {e}");
                code = if code == 0 {
                    exit::INVALID_REFERENCE
                } else {
                    code
                };
                out.push(json!({"input": input, "error": e.to_string()}));
                continue;
            }
        };
        let mut display = Display::new(globals);
        let result = runtime.pull(&image, Purpose::Pull, &mut |p| display.update(p));
        display.finish();
        match result {
            Ok(pulled) => {
                if args.json {
                    out.push(json!({"input": input, "pulled": pulled}));
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
                code = if code == 0 {
                    super::sifr_exit_code(&e)
                } else {
                    code
                };
                out.push(json!({"input": input, "error": e.to_string()}));
            }
        }
    }
    if let Some(stopped) = cancel.code() {
        return Ok(stopped);
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    }
    Ok(code)
}

pub fn run(globals: &Globals, args: RunArgs, mode: RunMode) -> Result<u8> {
    if mode == RunMode::Exec && args.args.is_empty() {
        anyhow::bail!("`sifr exec` needs a command: sifr exec IMAGE -- COMMAND [ARGS...]");
    }
    let image = ImageRef::parse(&args.image)?;
    let cancel = Cancel::default();
    let runtime = runtime(globals, &args.options, &cancel)?;
    cancel.install()?;
    let options = RunOptions {
        binds: args.bind,
        env: args.env,
        pwd: args.pwd,
        nv: args.nv,
        extra_args: args.apptainer_arg,
        host_env: HostEnv {
            container_env: args.keep_container_env,
            binds: !args.no_env_binds,
        },
    };
    let mut display = Display::new(globals);
    let pulled = runtime.pull(&image, Purpose::Run, &mut |p| display.update(p));
    display.finish();
    let pulled = match pulled {
        Err(e) if interrupted_code(&e).is_some() => {
            eprintln!("sifr: error: {e}");
            return Ok(interrupted_code(&e).unwrap_or(exit::FAILURE));
        }
        other => other?,
    };
    // Stopped after the pull, before the container started.
    if let Some(stopped) = cancel.code() {
        return Ok(stopped);
    }
    if globals.verbose > 0 {
        for name in sifr::apptainer::BIND_VARS {
            if let Some(value) = std::env::var_os(name).filter(|_| options.host_env.binds) {
                eprintln!(
                    "sifr: binds from the environment: {name}={}",
                    value.to_string_lossy()
                );
            }
        }
    }
    // The pulled image stays held until apptainer is done with it.
    let code = runtime.run_pulled(&pulled, mode, &options, &args.args)?;
    // The container's own code; codes beyond 255 cannot be passed on.
    Ok(u8::try_from(code).unwrap_or(exit::FAILURE))
}
