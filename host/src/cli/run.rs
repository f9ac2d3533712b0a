//! `sifr run` and `sifr exec`: make the image ready, then run it with
//! hermetic defaults.

use anyhow::Result;
use sifr::apptainer::{HostEnv, RunMode, RunOptions};
use sifr::{ImageRef, Purpose};

use super::progress::Display;
use super::pull::{Cancel, PullOptions, interrupted_code, runtime};
use super::{Globals, exit};

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
    locked: super::lock::LockedArgs,

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

pub fn run(globals: &Globals, args: RunArgs, mode: RunMode) -> Result<u8> {
    if mode == RunMode::Exec && args.args.is_empty() {
        anyhow::bail!("`sifr exec` needs a command: sifr exec IMAGE -- COMMAND [ARGS...]");
    }
    let image = ImageRef::parse(&args.image)?;
    let locked = args.locked.load()?;
    let cancel = Cancel::default();
    let runtime = runtime(globals, &args.options, &cancel)?;
    // --locked: the locked digest, or nothing.
    let (image, entry) = match &locked {
        Some(locked) => {
            let (image, entry) = locked.pin(&args.image, runtime.policy())?;
            (image, Some(entry))
        }
        None => (image, None),
    };
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
    if let (Some(locked), Some(entry)) = (&locked, &entry) {
        locked.check_local(globals, entry, &pulled);
    }
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
