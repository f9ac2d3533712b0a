//! Helpers shared by the black-box tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A built plugin component (`sifr_plugin_<name>.wasm`).
pub fn plugin_wasm(name: &str) -> PathBuf {
    let path = Path::new(env!("SIFR_PLUGIN_DIR")).join(format!("sifr_plugin_{name}.wasm"));
    assert!(path.is_file(), "{} was not built", path.display());
    path
}

/// sha256 of a file, lowercase hex.
pub fn sha256_hex(path: &Path) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(std::fs::read(path).unwrap()))
}

/// A scratch home for one test: config and cache folders of its own, so no
/// test sees another's compiled plugins or the user's real config.
pub struct Scratch {
    pub dir: tempfile::TempDir,
}

impl Scratch {
    pub fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    /// `sifr ARGS...` with this scratch's XDG folders and cache.
    pub fn sifr(&self, args: &[&str]) -> Output {
        self.command().args(args).output().expect("running sifr")
    }

    /// `sifr ARGS...` as [`Scratch::sifr`], run in `dir`.
    pub fn sifr_in(&self, dir: &Path, args: &[&str]) -> Output {
        self.command()
            .current_dir(dir)
            .args(args)
            .output()
            .expect("running sifr")
    }

    /// The `sifr` binary with this scratch's XDG folders and cache.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sifr"));
        cmd.env("XDG_CONFIG_HOME", self.path().join("config"))
            .env("XDG_CACHE_HOME", self.path().join("cache"))
            .env("SIFR_CACHE_DIR", self.path().join("cache/sifr"))
            .env_remove("SIFR_CONFIG");
        cmd
    }
}

pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A config entry for a plugin file, as TOML.
pub fn entry(name: &str, wasm: &Path, extra: &str) -> String {
    format!(
        "[[plugin]]\nname = \"{name}\"\npath = \"{}\"\n{extra}\n",
        wasm.display()
    )
}

/// The apptainer test double (`tests/apptainer-double`), built by `cargo test`
/// at the workspace root.
pub fn apptainer_double() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(Path::parent).unwrap();
    let path = dir.join("apptainer-test-double");
    assert!(
        path.is_file(),
        "{} is missing: run the tests from the workspace root (`cargo test`), \
         or build it with `cargo build -p sifr-apptainer-double`",
        path.display()
    );
    path
}

/// Every invocation the double logged, as argv lists.
pub fn double_log(path: &Path) -> Vec<Vec<String>> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

/// Only the `pull` invocations.
pub fn pulls(path: &Path) -> Vec<Vec<String>> {
    double_log(path)
        .into_iter()
        .filter(|argv| argv.first().is_some_and(|a| a == "pull"))
        .collect()
}

/// A config layer that only gives plugins a generous deadline, for tests
/// that start many sifr processes at once on a small machine: the policy's
/// 100 ms wall-clock default is not what they test.
pub fn sandbox_config() -> PathBuf {
    static DIR: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    let dir = DIR.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("sandbox.toml"),
            "[sandbox]\ntimeout-ms = 10000\n",
        )
        .unwrap();
        dir
    });
    dir.path().join("sandbox.toml")
}

/// Wait until `done()` holds, checking every 20 ms; fail loudly, naming
/// `what`, once `timeout` has passed. The timeout is a bound on a hang, not
/// a guess at how long something takes.
pub fn wait_until(what: &str, timeout: std::time::Duration, mut done: impl FnMut() -> bool) {
    let started = std::time::Instant::now();
    while !done() {
        assert!(
            started.elapsed() < timeout,
            "gave up after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// A stream of a child (its stdout or stderr) read line by line as it
/// comes, so a test can wait for a line instead of sleeping.
pub struct Lines {
    rx: std::sync::mpsc::Receiver<String>,
    seen: Vec<String>,
    closed: bool,
}

impl Lines {
    pub fn of(stream: impl std::io::Read + Send + 'static) -> Self {
        use std::io::BufRead;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stream)
                .lines()
                .map_while(Result::ok)
            {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            rx,
            seen: Vec::new(),
            closed: false,
        }
    }

    /// Take in whatever lines have arrived, without waiting.
    pub fn poll(&mut self) -> &[String] {
        loop {
            match self.rx.try_recv() {
                Ok(line) => self.seen.push(line),
                Err(std::sync::mpsc::TryRecvError::Empty) => break,
                Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                    self.closed = true;
                    break;
                }
            }
        }
        &self.seen
    }

    /// Whether a line seen so far contains `needle`.
    pub fn saw(&mut self, needle: &str) -> bool {
        self.poll().iter().any(|line| line.contains(needle))
    }

    /// Wait for a line containing `needle`; fail, with the lines seen, if
    /// the stream ends first or `timeout` passes.
    pub fn wait_for(&mut self, needle: &str, timeout: std::time::Duration) {
        let deadline = std::time::Instant::now() + timeout;
        while !self.seen.iter().any(|line| line.contains(needle)) {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(e) => panic!(
                    "no line with {needle:?} ({}); lines so far:\n{}",
                    match e {
                        std::sync::mpsc::RecvTimeoutError::Timeout =>
                            format!("gave up after {timeout:?}"),
                        std::sync::mpsc::RecvTimeoutError::Disconnected =>
                            "the stream ended".into(),
                    },
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// Every line, once the stream has ended (the child has exited).
    pub fn all(mut self) -> Vec<String> {
        if !self.closed {
            self.seen.extend(self.rx.iter());
        }
        self.seen
    }
}

/// Wait for `child` to exit, failing loudly (and killing it) if it has not
/// after `timeout`.
pub fn wait_within(
    child: &mut std::process::Child,
    timeout: std::time::Duration,
) -> std::process::ExitStatus {
    let mut status = None;
    let started = std::time::Instant::now();
    while status.is_none() {
        status = child.try_wait().unwrap();
        if status.is_none() && started.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{} did not exit within {timeout:?}", child.id());
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    status.unwrap()
}

/// Run `cmd` to completion with its output captured, failing loudly (and
/// killing it) if it has not finished after `timeout`, so a hang is a
/// failure that shows what the command printed.
pub fn output_within(cmd: &mut Command, timeout: std::time::Duration) -> Output {
    use std::process::Stdio;
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting the command");
    let out = Lines::of(child.stdout.take().unwrap());
    let err = Lines::of(child.stderr.take().unwrap());
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{cmd:?} did not finish within {timeout:?}; its stderr:\n{}",
                err.all().join("\n")
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let lines = |l: Lines| {
        l.all()
            .into_iter()
            .flat_map(|line| [line, "\n".to_string()])
            .collect::<String>()
            .into_bytes()
    };
    Output {
        status,
        stdout: lines(out),
        stderr: lines(err),
    }
}

/// Whether process `pid` is running. A zombie is not: it has exited and
/// only waits to be reaped (a container's init may never reap it).
pub fn process_running(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => false,
        Ok(stat) => {
            let state = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next());
            !matches!(state, Some("Z" | "X" | "x"))
        }
    }
}

/// The processes the apptainer double recorded in its
/// `APPTAINER_DOUBLE_PID_FILE`: its invocations and their helpers.
pub fn recorded_pids(pid_file: &Path) -> Vec<u32> {
    std::fs::read_to_string(pid_file)
        .unwrap_or_default()
        .lines()
        .map(|line| line.parse().unwrap())
        .collect()
}

/// SIGKILL every process the double recorded in a pid file, and wait until
/// none runs. Also on drop, so a failing test leaves no process behind.
pub struct Reaper(pub PathBuf);

impl Reaper {
    fn signal_all(&self) -> Vec<u32> {
        let pids = recorded_pids(&self.0);
        for &pid in &pids {
            if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
        }
        pids
    }

    pub fn kill_all(&self) {
        let pids = self.signal_all();
        wait_until(
            "the double's processes to die of SIGKILL",
            std::time::Duration::from_secs(30),
            || pids.iter().all(|&pid| !process_running(pid)),
        );
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        // No waiting here: this may run while a failed test unwinds.
        self.signal_all();
    }
}

/// Creates its file when dropped. Given the double's `APPTAINER_DOUBLE_HOLD`
/// file, it releases held pulls however the test ends, so that a failing
/// test leaves no process waiting forever.
pub struct TouchOnDrop(pub PathBuf);

impl Drop for TouchOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::write(&self.0, "");
    }
}
