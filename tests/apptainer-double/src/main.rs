//! `apptainer-test-double`: a TEST DOUBLE of apptainer for sifr's tests.
//!
//! This is NOT apptainer and must never be installed or deployed as one. It
//! makes no containers: `run` and `exec` run their command on the host, and
//! `pull` writes a fake SIF file without touching any registry.
//!
//! What it does copy from apptainer is the command line: the subset of
//! apptainer's syntax sifr uses is accepted and parsed the way apptainer's
//! cobra/pflag parser does (flags stop at the image, `--` ends flags,
//! `--flag=value`, clustered shorthands), and everything else — an unknown
//! flag, a missing argument, a command the double lacks — is rejected with
//! apptainer's message and exit code. A change in the argv sifr builds that
//! real apptainer would refuse therefore fails sifr's tests.
//!
//! Tests steer it with `APPTAINER_DOUBLE_*` environment variables (see
//! [`HELP`] and [`controls`]): log each argv, fail or slow down a pull, kill
//! a pull midway, set the version and the image size.
//!
//! Exit codes follow apptainer: 0 on success, 1 for a usage error (cobra),
//! 255 for a `FATAL:` error (sylog), and for `run`/`exec` whatever the
//! command does, because the command replaces this process.

mod action;
mod cli;
mod controls;
mod failure;
mod pull;

use std::ffi::OsString;
use std::process::ExitCode;

use crate::cli::Invocation;
use crate::controls::Controls;
use crate::failure::Failure;

/// The short usage shown by `help` and after a bare `apptainer`.
pub const USAGE: &str = "\
Usage (apptainer TEST DOUBLE; a strict subset of apptainer's syntax):
  apptainer version | --version | help | --help
  apptainer pull [-F|--force] [--no-https] [--arch ARCH] [--disable-cache] OUT.sif docker://REF
  apptainer run  [action options] IMAGE.sif [ARGS...]
  apptainer exec [action options] IMAGE.sif COMMAND [ARGS...]";

/// Full help: says plainly what this program is, then how to use it.
pub const HELP: &str = "\
apptainer-test-double: a TEST DOUBLE of apptainer, for sifr's tests.
This is NOT apptainer. It makes no containers: run and exec run the command on
the host, and pull writes a fake SIF without contacting any registry.
Never install or deploy it as apptainer.

Usage (a strict subset of apptainer's syntax; anything else is rejected):
  apptainer version | --version | help | --help
  apptainer pull [-F|--force] [--no-https] [--arch ARCH] [--disable-cache] OUT.sif docker://REF
  apptainer run  [action options] IMAGE.sif [ARGS...]
  apptainer exec [action options] IMAGE.sif COMMAND [ARGS...]

Action options (flags stop at IMAGE.sif; what follows goes to the command):
  -e, --cleanenv         environment of only PATH, --env values and APPTAINER_*
      --no-home          accepted, no effect
      --pwd DIR          working directory of the command (a host directory)
  -B, --bind SPEC        SRC[:DST[:ro|rw]], repeatable, comma-separated lists;
                         SRC must exist on the host
      --env K=V          repeatable; K=V,K2=V2 with more than one '='
      --nv               accepted, no effect
  -c, --contain          accepted, no effect
      --writable-tmpfs   accepted, no effect

Controls (environment; empty means unset):
  APPTAINER_DOUBLE_VERSION=V       version to report (default 1.4.1)
  APPTAINER_DOUBLE_LOG=PATH        append each argv as a JSON array line
  APPTAINER_DOUBLE_FAIL=A,B        pulls whose URI contains A or B fail (exit 255)
  APPTAINER_DOUBLE_SLEEP_MS=N      a pull takes N ms, spread over its writes
  APPTAINER_DOUBLE_DIE=1           a pull writes half its file, then SIGKILLs itself
  APPTAINER_DOUBLE_STDERR_LINES=N  a pull prints N extra progress lines to stderr
  APPTAINER_DOUBLE_SIZE=N          size in bytes of a pulled file (default 65536)
  APPTAINER_DOUBLE_REQUIRE_ENV=K=V,K2
                                   a pull fails (exit 255, unauthorized) unless its
                                   environment has K=V and K2 set to anything

Exit codes: 0 success, 1 usage error, 255 FATAL error; run/exec exit as the
command does (the command replaces this process, so a signal that kills it
kills the caller's child).";

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => failure.report(),
    }
}

fn run() -> Result<(), Failure> {
    let raw_args: Vec<OsString> = std::env::args_os().skip(1).collect();
    controls::log_invocation(&raw_args)?;
    let controls = Controls::from_env()?;
    let args = raw_args
        .into_iter()
        .map(|arg| {
            arg.into_string().map_err(|arg| {
                Failure::fatal(format!(
                    "apptainer test double: argument {arg:?} is not UTF-8, which the double does not handle"
                ))
            })
        })
        .collect::<Result<Vec<String>, Failure>>()?;

    match cli::parse(&args)? {
        Invocation::Help => println!("{HELP}"),
        Invocation::Version => println!("{}", controls.version),
        Invocation::VersionFlag => println!("apptainer version {}", controls.version),
        Invocation::Pull(pull) => pull::pull(&pull, &controls)?,
        Invocation::Action(action) => return Err(action::run(&action)),
    }
    Ok(())
}
