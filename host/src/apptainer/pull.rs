//! One pull attempt: apptainer in a process group of its own, its output
//! streamed, stopped on a timeout or a signal; and how an attempt fails.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::{Apptainer, describe};

/// Lines of apptainer's output kept for an error message.
const TAIL_LINES: usize = 8;

/// One failed pull attempt: the source tried, and how it failed.
#[derive(Debug, Clone, Serialize)]
pub struct Attempt {
    pub uri: String,
    pub failure: AttemptFailure,
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
