//! Driving apptainer (or singularity): finding it, pulling, running.

use std::io::{BufRead, BufReader};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde::Serialize;

/// Lines of apptainer's output kept for an error message.
const TAIL_LINES: usize = 8;

/// Which program it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Flavor {
    Apptainer,
    Singularity,
}

/// A parsed version: `1.3.4-1.el9`, `4.0.1+dfsg-1`, `1.4.0+105-g938b609b6`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Version {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
    /// What follows the numbers (distro or build suffix), if anything.
    pub suffix: String,
    /// As printed.
    pub raw: String,
}

impl Version {
    /// Parse `apptainer version`'s bare output or `--version`'s
    /// `apptainer version X` / `singularity-ce version X`.
    pub fn parse(output: &str) -> Option<Self> {
        let raw = output.split_whitespace().last()?.trim_start_matches('v');
        let numeric_end = raw
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(raw.len());
        let mut parts = raw[..numeric_end].split('.').filter(|p| !p.is_empty());
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next().map_or(Some(0), |p| p.parse().ok())?;
        let patch = parts.next().map_or(Some(0), |p| p.parse().ok())?;
        Some(Self {
            major,
            minor,
            patch,
            suffix: raw[numeric_end..].to_string(),
            raw: raw.to_string(),
        })
    }
}

/// A found apptainer.
#[derive(Debug, Clone, Serialize)]
pub struct Apptainer {
    pub path: PathBuf,
    pub flavor: Flavor,
    pub version: Version,
}

/// Why apptainer could not be used.
#[derive(Debug, thiserror::Error)]
pub enum DiscoverError {
    #[error(
        "neither apptainer nor singularity was found on PATH; install Apptainer \
         (EL: `dnf install apptainer` from EPEL; Debian/Ubuntu: the apptainer package \
         from the Apptainer PPA or release .deb), or point sifr at it with \
         --apptainer PATH, SIFR_APPTAINER=PATH or `[apptainer] path` in the config"
    )]
    NotFound,
    #[error("{what} names {}, which cannot be run: {reason}; fix {what} or unset it", path.display())]
    Unusable {
        what: String,
        path: PathBuf,
        reason: String,
    },
}

/// Where to look, in order: `--apptainer`, `SIFR_APPTAINER`, the config,
/// then `apptainer` and `singularity` on PATH.
pub fn discover(
    explicit: Option<&Path>,
    configured: Option<&Path>,
) -> Result<Apptainer, DiscoverError> {
    let env = std::env::var_os("SIFR_APPTAINER")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from);
    let named = [
        ("--apptainer", explicit.map(Path::to_path_buf)),
        ("$SIFR_APPTAINER", env),
        (
            "`[apptainer] path` in the config",
            configured.map(Path::to_path_buf),
        ),
    ];
    for (what, path) in named {
        if let Some(path) = path {
            let resolved = which::which(&path).unwrap_or(path.clone());
            return probe(&resolved).map_err(|reason| DiscoverError::Unusable {
                what: what.to_string(),
                path,
                reason,
            });
        }
    }
    for name in ["apptainer", "singularity"] {
        if let Ok(path) = which::which(name) {
            return probe(&path).map_err(|reason| DiscoverError::Unusable {
                what: format!("`{name}` on PATH"),
                path,
                reason,
            });
        }
    }
    Err(DiscoverError::NotFound)
}

fn probe(path: &Path) -> Result<Apptainer, String> {
    let run = |arg: &str| {
        Command::new(path)
            .arg(arg)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| e.to_string())
    };
    let out = run("version")?;
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() || Version::parse(&text).is_none() {
        let out = run("--version")?;
        text = String::from_utf8_lossy(&out.stdout).into_owned();
    }
    let version = Version::parse(text.trim())
        .ok_or_else(|| format!("its version output {:?} is not a version", text.trim()))?;
    let flavor = if text.contains("singularity")
        || path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().contains("singularity"))
    {
        Flavor::Singularity
    } else {
        Flavor::Apptainer
    };
    Ok(Apptainer {
        path: path.to_path_buf(),
        flavor,
        version,
    })
}

/// How one pull attempt ended, when it did not succeed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum AttemptFailure {
    /// apptainer exited non-zero (or was killed).
    Failed { status: String, tail: Vec<String> },
    /// The attempt ran past the pull timeout and was killed.
    TimedOut { after_secs: u64, tail: Vec<String> },
    /// apptainer could not be started.
    Spawn { error: String },
    /// sifr was asked to stop (by this signal) and stopped the pull.
    Interrupted { signal: i32 },
}

impl std::fmt::Display for AttemptFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let tail = |f: &mut std::fmt::Formatter<'_>, tail: &[String]| {
            for line in tail {
                write!(f, "\n      | {line}")?;
            }
            Ok(())
        };
        match self {
            Self::Failed { status, tail: t } => {
                write!(f, "apptainer {status}")?;
                tail(f, t)
            }
            Self::TimedOut {
                after_secs,
                tail: t,
            } => {
                write!(
                    f,
                    "timed out after {after_secs} s and was stopped; raise the limit with \
                     --pull-timeout (e.g. --pull-timeout 1h) or SIFR_PULL_TIMEOUT"
                )?;
                tail(f, t)
            }
            Self::Spawn { error } => write!(f, "apptainer could not be started: {error}"),
            Self::Interrupted { signal } => write!(f, "stopped by signal {signal}"),
        }
    }
}

impl Apptainer {
    /// The argv of a pull, after the program name.
    pub fn pull_args(out: &Path, uri: &str, plain_http: bool, arch: Option<&str>) -> Vec<String> {
        let mut args = vec!["pull".to_string(), "--force".to_string()];
        if plain_http {
            args.push("--no-https".to_string());
        }
        if let Some(arch) = arch {
            args.push("--arch".to_string());
            args.push(arch.to_string());
        }
        args.push(out.display().to_string());
        args.push(uri.to_string());
        args
    }

    /// Run one pull, calling `on_line` with each line of its output, and
    /// stop it (its whole process group) after `timeout`, or as soon as
    /// `cancelled` names a signal (then with
    /// [`AttemptFailure::Interrupted`]).
    ///
    /// apptainer runs in a process group of its own, so that stopping it
    /// stops its helpers too (and a terminal's Ctrl-C reaches sifr alone,
    /// which stops the pull and cleans up).
    pub fn pull(
        &self,
        args: &[String],
        timeout: Duration,
        cancelled: &dyn Fn() -> Option<i32>,
        on_line: &mut dyn FnMut(&str),
    ) -> Result<(), AttemptFailure> {
        let mut command = Command::new(&self.path);
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group, so a timeout stops its helpers too.
            .process_group(0);
        // The SIF is written in the cache's shared temporary area: with a
        // group's umask (002) anyone in the group could open it for writing
        // while it is being pulled, and change what sifr then hashes and
        // stores as yours. So the pull never makes group- or
        // other-writable files.
        // SAFETY: umask(2) is async-signal-safe and touches no memory.
        unsafe {
            command.pre_exec(|| {
                use rustix::fs::Mode;
                let old = rustix::process::umask(Mode::empty());
                rustix::process::umask(old | Mode::from_raw_mode(0o022));
                Ok(())
            });
        }
        let mut child = command.spawn().map_err(|e| AttemptFailure::Spawn {
            error: e.to_string(),
        })?;
        let (tx, rx) = mpsc::channel::<String>();
        let readers: Vec<_> = [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        ]
        .into_iter()
        .flatten()
        .map(|stream| {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            })
        })
        .collect();
        drop(tx);
        let started = Instant::now();
        let mut tail: Vec<String> = Vec::new();
        let mut keep = |line: String, on_line: &mut dyn FnMut(&str)| {
            on_line(&line);
            if !line.trim().is_empty() {
                if tail.len() == TAIL_LINES {
                    tail.remove(0);
                }
                tail.push(line);
            }
        };
        let mut signal = None;
        let status = loop {
            match rx.recv_timeout(Duration::from_millis(50)) {
                Ok(line) => keep(line, on_line),
                // Both streams closed: only the exit is left to wait for.
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
            }
            if let Ok(Some(status)) = child.try_wait() {
                break Some(status);
            }
            if started.elapsed() > timeout {
                break None;
            }
            if let Some(sig) = cancelled() {
                signal = Some(sig);
                break None;
            }
        };
        let status = match status {
            Some(status) => status,
            None => {
                stop_group(&mut child);
                for line in rx.try_iter() {
                    keep(line, on_line);
                }
                if let Some(signal) = signal {
                    return Err(AttemptFailure::Interrupted { signal });
                }
                return Err(AttemptFailure::TimedOut {
                    after_secs: timeout.as_secs(),
                    tail,
                });
            }
        };
        for reader in readers {
            let _ = reader.join();
        }
        for line in rx.try_iter() {
            keep(line, on_line);
        }
        if status.success() {
            Ok(())
        } else {
            Err(AttemptFailure::Failed {
                status: describe(status),
                tail,
            })
        }
    }
}

/// How long apptainer gets to clean up after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Stop `child`'s process group (the child leads it): SIGTERM, so that
/// apptainer removes its temporary directories; SIGKILL to the whole group
/// once the leader has exited or after [`STOP_GRACE`], for helpers that
/// outlive it; then reap the leader. The leader is not reaped before the
/// SIGKILL, so its pid, the group's id, cannot have been reused.
fn stop_group(child: &mut std::process::Child) {
    use rustix::process::{Pid, Signal, WaitId, WaitIdOptions, kill_process_group, waitid};
    let Some(pid) = Pid::from_raw(child.id() as i32) else {
        return;
    };
    let _ = kill_process_group(pid, Signal::TERM);
    let started = Instant::now();
    while started.elapsed() < STOP_GRACE {
        let exited = waitid(
            WaitId::Pid(pid),
            WaitIdOptions::EXITED | WaitIdOptions::NOHANG | WaitIdOptions::NOWAIT,
        );
        if matches!(exited, Ok(Some(_)) | Err(_)) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = kill_process_group(pid, Signal::KILL);
    let _ = child.wait();
}

/// `exited with status 255` / `was killed by signal 9`.
pub fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(signal)) => format!("was killed by signal {signal}"),
        _ => "failed".to_string(),
    }
}

/// The exit code a shell would report: the code, or 128 + the signal.
pub fn shell_code(status: ExitStatus) -> i32 {
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(1)
}

/// Options of `sifr run` / `sifr exec`.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// `SRC:DST[:ro]` binds.
    pub binds: Vec<String>,
    /// `K=V` environment for the container.
    pub env: Vec<String>,
    pub pwd: Option<String>,
    pub nv: bool,
    /// Passed to apptainer as they are, before the image.
    pub extra_args: Vec<String>,
    /// Which of the host's apptainer variables reach apptainer.
    pub host_env: HostEnv,
}

/// Which host variables that change a run apptainer gets. `--cleanenv`
/// keeps the host's environment out of the container, but apptainer still
/// reads its own variables from it: `APPTAINERENV_FOO` sets `FOO` in the
/// container and `APPTAINER_BIND` adds binds, whatever sifr's flags say.
/// Each class is passed or dropped as a whole, by this rule (the README
/// says why):
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostEnv {
    /// [`CONTAINER_ENV_VARS`]: the container's environment, set from the
    /// host. Dropped by default (`sifr run --keep-container-env` passes
    /// them): hermetic means `--env` is the only way in.
    pub container_env: bool,
    /// [`BIND_VARS`]: binds, which sites set in environment modules (a
    /// scratch or project filesystem every job expects). Passed by default
    /// (`sifr run --no-env-binds` drops them).
    pub binds: bool,
}

impl Default for HostEnv {
    fn default() -> Self {
        Self {
            container_env: false,
            binds: true,
        }
    }
}

/// Variables (prefixes end in `_`) that set the container's environment.
pub const CONTAINER_ENV_VARS: &[&str] = &[
    "APPTAINERENV_",
    "SINGULARITYENV_",
    "APPTAINER_ENV_FILE",
    "SINGULARITY_ENV_FILE",
];

/// Variables that add binds.
pub const BIND_VARS: &[&str] = &[
    "APPTAINER_BIND",
    "APPTAINER_BINDPATH",
    "SINGULARITY_BIND",
    "SINGULARITY_BINDPATH",
];

impl HostEnv {
    /// Whether a host variable named `name` reaches apptainer on a run.
    pub fn passes(&self, name: &str) -> bool {
        let container_env = CONTAINER_ENV_VARS.iter().any(|var| {
            if var.ends_with('_') {
                name.starts_with(var)
            } else {
                name == *var
            }
        });
        if container_env {
            return self.container_env;
        }
        if BIND_VARS.contains(&name) {
            return self.binds;
        }
        true
    }

    /// The host's variables this rule drops.
    pub fn dropped(&self) -> Vec<std::ffi::OsString> {
        std::env::vars_os()
            .map(|(name, _)| name)
            .filter(|name| !self.passes(&name.to_string_lossy()))
            .collect()
    }
}

/// `run` or `exec`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunMode {
    Run,
    Exec,
}

impl Apptainer {
    /// The argv of a run, after the program name:
    /// `run|exec --cleanenv --no-home [--pwd D] [--bind B]... [--env K=V]... [--nv] [EXTRA]... SIF ARGS...`.
    pub fn run_args(
        mode: RunMode,
        sif: &Path,
        options: &RunOptions,
        args: &[String],
    ) -> Vec<String> {
        let mut argv = vec![
            match mode {
                RunMode::Run => "run",
                RunMode::Exec => "exec",
            }
            .to_string(),
            "--cleanenv".to_string(),
            "--no-home".to_string(),
        ];
        if let Some(pwd) = &options.pwd {
            argv.extend(["--pwd".to_string(), pwd.clone()]);
        }
        for bind in &options.binds {
            argv.extend(["--bind".to_string(), bind.clone()]);
        }
        for env in &options.env {
            argv.extend(["--env".to_string(), env.clone()]);
        }
        if options.nv {
            argv.push("--nv".to_string());
        }
        argv.extend(options.extra_args.iter().cloned());
        argv.push(sif.display().to_string());
        argv.extend(args.iter().cloned());
        argv
    }

    /// Run apptainer with inherited stdio and return its exit code.
    /// SIGINT, SIGTERM, SIGHUP and SIGQUIT sent to sifr by another process
    /// are forwarded; those from the terminal already reach apptainer, which
    /// shares sifr's process group.
    pub fn run(&self, argv: &[String], host_env: &HostEnv) -> std::io::Result<i32> {
        use signal_hook::consts::{SIGHUP, SIGINT, SIGQUIT, SIGTERM};
        use signal_hook::iterator::SignalsInfo;
        use signal_hook::iterator::exfiltrator::WithOrigin;

        let mut signals = SignalsInfo::<WithOrigin>::new([SIGINT, SIGTERM, SIGHUP, SIGQUIT])?;
        let handle = signals.handle();
        let mut command = Command::new(&self.path);
        command.args(argv);
        for name in host_env.dropped() {
            command.env_remove(name);
        }
        let mut child = command.spawn()?;
        let pid = child.id() as i32;
        let forwarder = std::thread::spawn(move || {
            for info in signals.forever() {
                // No sending process means the kernel (the terminal) sent it
                // to the whole foreground group, apptainer included.
                if info.process.is_some()
                    && let (Some(pid), Some(signal)) = (
                        rustix::process::Pid::from_raw(pid),
                        rustix::process::Signal::from_named_raw(info.signal),
                    )
                {
                    let _ = rustix::process::kill_process(pid, signal);
                }
            }
        });
        let status = child.wait();
        handle.close();
        let _ = forwarder.join();
        Ok(shell_code(status?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_env_rule_drops_container_env_and_keeps_binds_by_default() {
        let rule = HostEnv::default();
        for name in [
            "APPTAINERENV_FOO",
            "SINGULARITYENV_PREPEND_PATH",
            "APPTAINER_ENV_FILE",
            "SINGULARITY_ENV_FILE",
        ] {
            assert!(!rule.passes(name), "{name}");
        }
        for name in [
            "APPTAINER_BIND",
            "APPTAINER_BINDPATH",
            "SINGULARITY_BIND",
            "SINGULARITY_BINDPATH",
            "APPTAINER_CACHEDIR",
            "APPTAINER_TMPDIR",
            "APPTAINER_DOCKER_USERNAME",
            "PATH",
        ] {
            assert!(rule.passes(name), "{name}");
        }
        let flipped = HostEnv {
            container_env: true,
            binds: false,
        };
        assert!(flipped.passes("APPTAINERENV_FOO"));
        assert!(!flipped.passes("SINGULARITY_BINDPATH"));
        assert!(flipped.passes("APPTAINER_CACHEDIR"));
    }

    #[test]
    fn versions_parse_with_distro_suffixes() {
        for (text, (major, minor, patch), suffix) in [
            ("1.3.4-1.el9", (1, 3, 4), "-1.el9"),
            ("4.0.1+dfsg-1", (4, 0, 1), "+dfsg-1"),
            ("1.4.0+105-g938b609b6", (1, 4, 0), "+105-g938b609b6"),
            ("apptainer version 1.3.4-1.el9", (1, 3, 4), "-1.el9"),
            ("singularity-ce version 4.1.2-jammy", (4, 1, 2), "-jammy"),
            ("1.2", (1, 2, 0), ""),
        ] {
            let v = Version::parse(text).unwrap_or_else(|| panic!("{text}"));
            assert_eq!((v.major, v.minor, v.patch), (major, minor, patch), "{text}");
            assert_eq!(v.suffix, suffix, "{text}");
        }
        assert!(Version::parse("").is_none());
        assert!(Version::parse("apptainer version unknown").is_none());
    }

    #[test]
    fn pull_and_run_argv_have_apptainer_s_shape() {
        assert_eq!(
            Apptainer::pull_args(Path::new("/c/tmp/x.sif"), "docker://a/b:1", true, None),
            [
                "pull",
                "--force",
                "--no-https",
                "/c/tmp/x.sif",
                "docker://a/b:1"
            ]
        );
        let options = RunOptions {
            binds: vec!["/data:/data:ro".into()],
            env: vec!["A=1".into()],
            pwd: Some("/data".into()),
            nv: true,
            extra_args: vec!["--contain".into()],
            host_env: HostEnv::default(),
        };
        assert_eq!(
            Apptainer::run_args(
                RunMode::Exec,
                Path::new("/c/x.sif"),
                &options,
                &["ls".into(), "-l".into()]
            ),
            [
                "exec",
                "--cleanenv",
                "--no-home",
                "--pwd",
                "/data",
                "--bind",
                "/data:/data:ro",
                "--env",
                "A=1",
                "--nv",
                "--contain",
                "/c/x.sif",
                "ls",
                "-l"
            ]
        );
    }
}
