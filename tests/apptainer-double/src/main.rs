//! `apptainer-test-double`: a TEST DOUBLE of apptainer for sifr's tests.
//!
//! This is NOT apptainer and must never be installed or deployed as one. It
//! has two backends, chosen with `APPTAINER_DOUBLE_BACKEND`:
//!
//! * `fake` (the default) makes no containers: `run` and `exec` run their
//!   command on the host, and `pull` writes a fake SIF file without
//!   touching any registry ([`action`], [`pull`]).
//! * `real` builds real SIF files from real registries with skopeo, umoci,
//!   squashfs-tools and siftool, and runs them with bubblewrap ([`real`]).
//!   Still a double: it stands in for apptainer where apptainer is not
//!   installed, and does much less.
//!
//! What it copies from apptainer is the command line, whatever the backend:
//! the subset of apptainer's syntax sifr uses is accepted and parsed the way
//! apptainer's cobra/pflag parser does (flags stop at the image, `--` ends
//! flags, `--flag=value`, clustered shorthands), and everything else — an
//! unknown flag, a missing argument, a command the double lacks — is
//! rejected with apptainer's message and exit code. A change in the argv
//! sifr builds that real apptainer would refuse therefore fails sifr's
//! tests.
//!
//! Tests steer it with `APPTAINER_DOUBLE_*` environment variables (see
//! [`HELP`] and [`controls`]): choose the backend, log each argv and pid,
//! fail, slow down or hold a pull (or a run, before it opens the image),
//! log the apptainer variables it got, kill a pull midway, give it a helper
//! process, set the version and the image size.
//!
//! Exit codes follow apptainer: 0 on success, 1 for a usage error (cobra),
//! 255 for a `FATAL:` error (sylog), and for `run`/`exec` whatever the
//! command does: with the fake backend because the command replaces this
//! process, with the real one because its exit is passed on.

mod action;
mod cli;
mod controls;
mod failure;
mod pull;
mod real;

use std::ffi::OsString;
use std::process::ExitCode;

use crate::cli::Invocation;
use crate::controls::{Backend, Controls};
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
This is NOT apptainer. Never install or deploy it as apptainer.
It has two backends, chosen with APPTAINER_DOUBLE_BACKEND:
  fake (default)  makes no containers: run and exec run the command on the
                  host, and pull writes a fake SIF without contacting any
                  registry.
  real            still a test double, built from the closest real parts:
                  pull fetches the image with skopeo, unpacks it with umoci,
                  adds apptainer's runscript and writes a real SIF
                  (mksquashfs, siftool); run and exec unpack the SIF's
                  partition (siftool, unsquashfs) and run the command in it
                  with bubblewrap, the root read-only. Unlike apptainer: no
                  cache, no signature checks, the image's ENV is not applied,
                  the container gets a fresh /tmp and /dev and no home (as
                  with --contain), and the runscript never evals its
                  arguments (as with --no-eval).
                  Needs on PATH: skopeo, umoci, mksquashfs and unsquashfs
                  (squashfs-tools), siftool, bwrap (bubblewrap).

Usage (a strict subset of apptainer's syntax; anything else is rejected):
  apptainer version | --version | help | --help
  apptainer pull [-F|--force] [--no-https] [--arch ARCH] [--disable-cache] OUT.sif docker://REF
  apptainer run  [action options] IMAGE.sif [ARGS...]
  apptainer exec [action options] IMAGE.sif COMMAND [ARGS...]

Pull options: --no-https and --arch reach skopeo in the real backend
(--src-tls-verify=false, --override-arch); --disable-cache has no effect.

Action options (flags stop at IMAGE.sif; what follows goes to the command):
  -e, --cleanenv         environment of only PATH, --env values and APPTAINER_*
      --no-home          accepted, no effect (no home is ever bound)
      --pwd DIR          working directory of the command (fake: a host
                         directory; real: a directory in the container)
  -B, --bind SPEC        SRC[:DST[:ro|rw]], repeatable, comma-separated lists;
                         SRC must exist on the host (real: bind-mounted)
      --env K=V          repeatable; K=V,K2=V2 with more than one '='
      --nv               accepted, no effect
  -c, --contain          accepted, no effect
      --writable-tmpfs   fake: no effect; real: the root is writable, and
                         what is written is discarded after the run
  -H, --home SRC[:DST]   fake: no effect; real: SRC bound at DST (default
                         SRC) and HOME=DST; as engines pass it (Snakemake)
  -p, --pid              accepted, no effect (Nextflow passes it)
 Without --pwd, real: the command starts in the host's working directory
 when --home or a bind brings it into the container, as with apptainer.
 Root flags -q/--quiet, -s/--silent, -v/--verbose: accepted, no effect.

Controls (environment; empty means unset):
  APPTAINER_DOUBLE_BACKEND=fake|real
                                   the backend (default fake)
  APPTAINER_DOUBLE_VERSION=V       version to report (default 1.4.1)
  APPTAINER_DOUBLE_LOG=PATH        append each argv as a JSON array line
  APPTAINER_DOUBLE_FAIL=A,B        pulls whose URI contains A or B fail (exit 255)
  APPTAINER_DOUBLE_REQUIRE_ENV=K=V,K2
                                   a pull fails (exit 255, unauthorized) unless its
                                   environment has K=V and K2 set to anything
  APPTAINER_DOUBLE_PID_FILE=PATH   append each invocation's process id (and its
                                   helper's) to PATH, one per line
  APPTAINER_DOUBLE_HOLD=PATH       a pull, once under way (fake: its file begun),
                                   waits until PATH exists (or its directory is gone)
  APPTAINER_DOUBLE_RUN_HOLD=PATH   run and exec wait, before they open the image,
                                   until PATH exists (or its directory is gone)
  APPTAINER_DOUBLE_RAN=PATH        run and exec append the image they opened to PATH
                                   as a JSON line: image (its resolved path), nonce
                                   (the one a fake pull wrote into it, or null)
  APPTAINER_DOUBLE_ENV_LOG=PATH    append each invocation's argv and APPTAINER* and
                                   SINGULARITY* variables (not the double's own)
                                   to PATH as a JSON line: argv (an array), env
                                   (an object)
 fake backend only (a real pull refuses them):
  APPTAINER_DOUBLE_SLEEP_MS=N      a pull takes N ms, spread over its writes
  APPTAINER_DOUBLE_DIE=1           a pull writes half its file, then SIGKILLs itself
  APPTAINER_DOUBLE_STDERR_LINES=N  a pull prints N extra progress lines to stderr
  APPTAINER_DOUBLE_SIZE=N          size in bytes of a pulled file (default 65536)
  APPTAINER_DOUBLE_HELPER=1        a pull runs a helper process (`sleep`) that
                                   lives until the pull ends
 real backend only:
  APPTAINER_DOUBLE_TMPDIR=DIR      where scratch directories go (default: $TMPDIR
                                   or /tmp); each is removed when done
  APPTAINER_DOUBLE_CERT_DIR=DIR    CA certificates for registries (skopeo
                                   --src-cert-dir: *.crt, *.cert, *.key)
  APPTAINER_DOCKER_USERNAME, APPTAINER_DOCKER_PASSWORD
                                   registry credentials, as apptainer takes them

Exit codes: 0 success, 1 usage error, 255 FATAL error; run/exec exit as the
command does. Fake: the command replaces this process, so a signal that kills
it kills the caller's child. Real: SIGHUP, SIGINT, SIGQUIT and SIGTERM are
passed on to the command; if it dies of one, the double removes its scratch
files and dies of the same signal; bubblewrap's 128+N otherwise.";

fn main() -> ExitCode {
    run().unwrap_or_else(|failure| failure.report())
}

fn run() -> Result<ExitCode, Failure> {
    let raw_args: Vec<OsString> = std::env::args_os().skip(1).collect();
    controls::log_invocation(&raw_args)?;
    controls::log_env(&raw_args)?;
    controls::record_pid(std::process::id())?;
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
        Invocation::Pull(pull) => match controls.backend {
            Backend::Fake => pull::pull(&pull, &controls)?,
            Backend::Real => real::pull(&pull, &controls)?,
        },
        Invocation::Action(action) => {
            if let Some(hold) = &controls.run_hold {
                controls::wait_for_release(hold);
            }
            return match controls.backend {
                Backend::Fake => Err(action::run(&action)),
                Backend::Real => real::run(&action, &controls),
            };
        }
    }
    Ok(ExitCode::SUCCESS)
}
