//! The environment variables a test sets to steer the double.
//!
//! Every invocation reads and checks all of them, so a typo in a test's
//! setting fails loudly instead of being silently ignored. An empty value
//! means the same as an unset one.

use std::env;
use std::ffi::OsString;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::failure::{Failure, go_error_text};

pub const VERSION_VAR: &str = "APPTAINER_DOUBLE_VERSION";
pub const LOG_VAR: &str = "APPTAINER_DOUBLE_LOG";
pub const FAIL_VAR: &str = "APPTAINER_DOUBLE_FAIL";
pub const SLEEP_VAR: &str = "APPTAINER_DOUBLE_SLEEP_MS";
pub const DIE_VAR: &str = "APPTAINER_DOUBLE_DIE";
pub const STDERR_LINES_VAR: &str = "APPTAINER_DOUBLE_STDERR_LINES";
pub const SIZE_VAR: &str = "APPTAINER_DOUBLE_SIZE";
pub const REQUIRE_ENV_VAR: &str = "APPTAINER_DOUBLE_REQUIRE_ENV";
pub const BACKEND_VAR: &str = "APPTAINER_DOUBLE_BACKEND";
pub const TMPDIR_VAR: &str = "APPTAINER_DOUBLE_TMPDIR";
pub const CERT_DIR_VAR: &str = "APPTAINER_DOUBLE_CERT_DIR";
pub const PID_FILE_VAR: &str = "APPTAINER_DOUBLE_PID_FILE";
pub const HOLD_VAR: &str = "APPTAINER_DOUBLE_HOLD";
pub const HELPER_VAR: &str = "APPTAINER_DOUBLE_HELPER";
pub const RUN_HOLD_VAR: &str = "APPTAINER_DOUBLE_RUN_HOLD";
pub const RAN_VAR: &str = "APPTAINER_DOUBLE_RAN";
pub const ENV_LOG_VAR: &str = "APPTAINER_DOUBLE_ENV_LOG";

/// Controls that shape how the fake backend writes its file. The real
/// backend has no such file to shape, so it refuses them rather than
/// silently ignore them.
const FAKE_PULL_VARS: &[&str] = &[SLEEP_VAR, DIE_VAR, STDERR_LINES_VAR, SIZE_VAR, HELPER_VAR];

const DEFAULT_VERSION: &str = "1.4.1";
const DEFAULT_SIZE: u64 = 64 * 1024;

/// Which implementation does the work behind the command line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Backend {
    /// Fake SIFs and commands run on the host (the default).
    #[default]
    Fake,
    /// Real SIFs built with skopeo, umoci, squashfs-tools and siftool, run
    /// with bubblewrap (see [`crate::real`]).
    Real,
}

/// How a test wants this invocation to behave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Controls {
    /// Which backend does the work.
    pub backend: Backend,
    /// What `version` reports.
    pub version: String,
    /// A pull whose URI contains any of these fails as if the registry were
    /// unreachable.
    pub fail_patterns: Vec<String>,
    /// How long a pull takes in all, spread over its writes.
    pub pull_time: Duration,
    /// Whether a pull kills itself with SIGKILL halfway through the file.
    pub die_mid_pull: bool,
    /// Extra progress lines a pull prints to stderr.
    pub progress_lines: u64,
    /// Size of the file a pull writes (at least the fake SIF header).
    pub image_size: u64,
    /// Environment a pull must see, as a registry needing credentials would:
    /// `(name, Some(value))` for `NAME=VALUE`, `(name, None)` for a bare
    /// `NAME` that only has to be set.
    pub required_env: Vec<(String, Option<String>)>,
    /// The fake-only pull controls that are set (see [`FAKE_PULL_VARS`]).
    pub fake_pull_controls: Vec<&'static str>,
    /// Where the real backend makes its scratch directories (default: the
    /// system's temporary directory).
    pub tmpdir: Option<PathBuf>,
    /// Certificates for the real backend's registry connections, as
    /// `skopeo --src-cert-dir` takes them (`*.crt`, `*.cert`, `*.key`).
    pub cert_dir: Option<PathBuf>,
    /// A pull waits, once under way, until this file exists: a test holds
    /// a pull in progress for as long as it needs, instead of guessing
    /// with a sleep how long the pull must take.
    pub hold: Option<PathBuf>,
    /// Whether a pull starts a helper process that lives as long as the
    /// pull, as apptainer's pulls run helpers (mksquashfs and the like).
    pub helper: bool,
    /// `run` and `exec` wait, before they open the image, until this file
    /// exists: a test holds the moment between sifr's check of the image
    /// and apptainer's open of it.
    pub run_hold: Option<PathBuf>,
}

impl Controls {
    pub fn from_env() -> Result<Self, Failure> {
        Ok(Self {
            backend: backend()?,
            version: var(VERSION_VAR).unwrap_or_else(|| DEFAULT_VERSION.to_owned()),
            fail_patterns: var(FAIL_VAR)
                .map(|patterns| {
                    patterns
                        .split(',')
                        .filter(|pattern| !pattern.is_empty())
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default(),
            pull_time: Duration::from_millis(number(SLEEP_VAR, 0)?),
            die_mid_pull: flag(DIE_VAR)?,
            progress_lines: number(STDERR_LINES_VAR, 0)?,
            image_size: number(SIZE_VAR, DEFAULT_SIZE)?,
            required_env: var(REQUIRE_ENV_VAR)
                .map(|entries| {
                    entries
                        .split(',')
                        .filter(|entry| !entry.is_empty())
                        .map(|entry| match entry.split_once('=') {
                            Some((name, value)) => (name.to_owned(), Some(value.to_owned())),
                            None => (entry.to_owned(), None),
                        })
                        .collect()
                })
                .unwrap_or_default(),
            fake_pull_controls: FAKE_PULL_VARS
                .iter()
                .copied()
                .filter(|name| var(name).is_some())
                .collect(),
            tmpdir: path_var(TMPDIR_VAR),
            cert_dir: path_var(CERT_DIR_VAR),
            hold: path_var(HOLD_VAR),
            helper: flag(HELPER_VAR)?,
            run_hold: path_var(RUN_HOLD_VAR),
        })
    }
}

/// Append `args` (the argv after the program name) to the log named by
/// `APPTAINER_DOUBLE_LOG`, as one JSON array per line. One `write_all` on an
/// `O_APPEND` file is one `write(2)`, so lines from concurrent invocations do
/// not interleave. This runs before anything else is checked, so even a
/// rejected argv is logged.
pub fn log_invocation(args: &[OsString]) -> Result<(), Failure> {
    let Some(path) = env::var_os(LOG_VAR).filter(|path| !path.is_empty()) else {
        return Ok(());
    };
    let path = PathBuf::from(path);
    let argv: Vec<String> = args
        .iter()
        .map(|arg| arg.to_string_lossy().into_owned())
        .collect();
    let mut line = serde_json::to_string(&argv)
        .map_err(|err| Failure::fatal(format!("apptainer test double: {err}")))?;
    line.push('\n');
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut file| file.write_all(line.as_bytes()))
        .map_err(|err| {
            Failure::fatal(format!(
                "apptainer test double: cannot append to {LOG_VAR}={}: {}",
                path.display(),
                go_error_text(&err)
            ))
        })
}

/// Append the apptainer and singularity variables this invocation got
/// (`APPTAINER*` and `SINGULARITY*`, but not the double's own controls) to
/// the file `APPTAINER_DOUBLE_ENV_LOG` names: one JSON line per invocation,
/// `{"argv": [...], "env": {"NAME": "VALUE", ...}}`, so a test sees what
/// reached apptainer from the host. Like the argv log, this runs first.
pub fn log_env(args: &[OsString]) -> Result<(), Failure> {
    let Some(path) = path_var(ENV_LOG_VAR) else {
        return Ok(());
    };
    let env: std::collections::BTreeMap<String, String> = env::vars_os()
        .map(|(name, value)| {
            (
                name.to_string_lossy().into_owned(),
                value.to_string_lossy().into_owned(),
            )
        })
        .filter(|(name, _)| {
            (name.starts_with("APPTAINER") || name.starts_with("SINGULARITY"))
                && !name.starts_with("APPTAINER_DOUBLE_")
        })
        .collect();
    let argv: Vec<String> = args
        .iter()
        .map(|arg| arg.to_string_lossy().into_owned())
        .collect();
    let mut line = serde_json::to_string(&serde_json::json!({"argv": argv, "env": env}))
        .map_err(|err| Failure::fatal(format!("apptainer test double: {err}")))?;
    line.push('\n');
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut file| file.write_all(line.as_bytes()))
        .map_err(|err| {
            Failure::fatal(format!(
                "apptainer test double: cannot append to {ENV_LOG_VAR}={}: {}",
                path.display(),
                go_error_text(&err)
            ))
        })
}

/// Append the image a `run` or `exec` opened to the file named by
/// `APPTAINER_DOUBLE_RAN`, as a JSON line `{"image": PATH, "nonce": N}`:
/// its resolved path, and the nonce a fake pull wrote into it (`null` for
/// a file without one), read from the same open that checked the image. A
/// test tells from it which file ran, whatever path the double was given.
pub fn record_ran(image: &Path, nonce: Option<&str>) -> Result<(), Failure> {
    let Some(path) = path_var(RAN_VAR) else {
        return Ok(());
    };
    let mut line =
        serde_json::json!({"image": image.to_string_lossy(), "nonce": nonce}).to_string();
    line.push('\n');
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut file| file.write_all(line.as_bytes()))
        .map_err(|err| {
            Failure::fatal(format!(
                "apptainer test double: cannot append to {RAN_VAR}={}: {}",
                path.display(),
                go_error_text(&err)
            ))
        })
}

/// Append `pid` to the file named by `APPTAINER_DOUBLE_PID_FILE`, one per
/// line, so a test can check that every process the double started is gone.
/// Each invocation records its own pid before anything else is checked.
pub fn record_pid(pid: u32) -> Result<(), Failure> {
    let Some(path) = path_var(PID_FILE_VAR) else {
        return Ok(());
    };
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut file| file.write_all(format!("{pid}\n").as_bytes()))
        .map_err(|err| {
            Failure::fatal(format!(
                "apptainer test double: cannot append to {PID_FILE_VAR}={}: {}",
                path.display(),
                go_error_text(&err)
            ))
        })
}

/// Wait until the file `hold` names exists (see [`Controls::hold`]), or
/// its directory is gone: the test that held the pull is over, and nobody
/// is left to release it.
pub fn wait_for_release(hold: &Path) {
    let dir = hold.parent().filter(|dir| !dir.as_os_str().is_empty());
    while !hold.exists() && dir.is_none_or(Path::is_dir) {
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A set, non-empty, UTF-8 variable.
fn var(name: &str) -> Option<String> {
    env::var(name).ok().filter(|value| !value.is_empty())
}

/// A set, non-empty path, in whatever bytes it has.
fn path_var(name: &str) -> Option<PathBuf> {
    env::var_os(name)
        .filter(|value| !value.is_empty())
        .map(PathBuf::from)
}

fn backend() -> Result<Backend, Failure> {
    match var(BACKEND_VAR).as_deref() {
        None | Some("fake") => Ok(Backend::Fake),
        Some("real") => Ok(Backend::Real),
        Some(value) => Err(Failure::fatal(format!(
            "apptainer test double: {BACKEND_VAR}={value:?} is not fake or real"
        ))),
    }
}

fn number(name: &str, default: u64) -> Result<u64, Failure> {
    match var(name) {
        None => Ok(default),
        Some(value) => value.parse().map_err(|_| {
            Failure::fatal(format!(
                "apptainer test double: {name}={value:?} is not a whole number"
            ))
        }),
    }
}

fn flag(name: &str) -> Result<bool, Failure> {
    match var(name).as_deref() {
        None | Some("0" | "false") => Ok(false),
        Some("1" | "true") => Ok(true),
        Some(value) => Err(Failure::fatal(format!(
            "apptainer test double: {name}={value:?} is not 1 or 0"
        ))),
    }
}
