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

    /// The `sifr` binary with this scratch's XDG folders and cache, and
    /// nothing of the caller's environment that could change its answer
    /// ([`sifr_command`]).
    pub fn command(&self) -> Command {
        let mut cmd = sifr_command(self.path());
        cmd.env("SIFR_CACHE_DIR", self.path().join("cache/sifr"));
        cmd
    }
}

/// Whether a variable of the caller's environment can change what sifr, or
/// the apptainer it starts, does: sifr's own (`SIFR_LOCKED`, `SIFR_FROZEN`,
/// `SIFR_PULL_TIMEOUT`, ...), apptainer's and singularity's (a test run
/// inside a container has `APPTAINER_CONTAINER`), the double's, where
/// credentials and configs are found, and proxies (a proxy on the machine
/// would take the tests' requests to 127.0.0.1).
pub fn leaks_into_sifr(name: &str) -> bool {
    const PREFIXES: &[&str] = &["SIFR_", "APPTAINER", "SINGULARITY", "XDG_"];
    const NAMES: &[&str] = &[
        "DOCKER_CONFIG",
        "REGISTRY_AUTH_FILE",
        "CONTAINERS_REGISTRIES_CONF",
        "CONTAINERS_CONF",
        "SSL_CERT_FILE",
        "SSL_CERT_DIR",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "NO_PROXY",
    ];
    PREFIXES.iter().any(|p| name.starts_with(p))
        || NAMES.iter().any(|n| name.eq_ignore_ascii_case(n))
}

/// The `sifr` binary, hermetic: every variable [`leaks_into_sifr`] names
/// is removed, and `HOME` and the XDG folders point under `home`, so what
/// the machine's or the caller's environment holds (a `SIFR_LOCKED` in a
/// CI's environment, a `~/.docker/config.json`, a group-writable `TMPDIR`
/// that sends the cache to the per-user fallback) cannot change a test's
/// answer. A test sets what it means to set on the returned command.
pub fn sifr_command(home: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sifr"));
    hermetic(&mut cmd, home);
    cmd
}

/// What [`sifr_command`] does to its environment, for a command that runs
/// sifr underneath (`unshare ... sifr`, a shell, a workflow engine).
pub fn hermetic<'a>(cmd: &'a mut Command, home: &Path) -> &'a mut Command {
    for (name, _) in std::env::vars_os() {
        if name.to_str().is_none_or(leaks_into_sifr) {
            cmd.env_remove(&name);
        }
    }
    cmd.env("HOME", home.join("home"))
        .env("XDG_CONFIG_HOME", home.join("config"))
        .env("XDG_CACHE_HOME", home.join("cache"))
        .env("XDG_RUNTIME_DIR", home.join("run"))
}

/// A port on 127.0.0.1 that refuses connections for as long as the guard
/// lives: a socket bound to it that never listens, so a connection gets a
/// reset at once and no other process can take the port meanwhile. For a
/// mirror or registry a test means to be down (a fixed port such as 9, or
/// a port found free and then let go, may be some other test's server).
pub struct RefusedPort {
    _socket: rustix::fd::OwnedFd,
    pub port: u16,
}

impl RefusedPort {
    pub fn new() -> Self {
        use rustix::net::{
            AddressFamily, SocketAddrAny, SocketFlags, SocketType, bind, getsockname, socket_with,
        };
        // CLOEXEC: a child sifr or registry must not inherit the socket.
        let socket = socket_with(
            AddressFamily::INET,
            SocketType::STREAM,
            SocketFlags::CLOEXEC,
            None,
        )
        .unwrap();
        bind(&socket, &std::net::SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
        let addr: SocketAddrAny = getsockname(&socket).unwrap();
        let port = std::net::SocketAddr::try_from(addr).unwrap().port();
        Self {
            _socket: socket,
            port,
        }
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

/// A `docker-registry` serving on a port the kernel chose: `http.addr` is
/// `127.0.0.1:0`, and the port is read from the registry's own "listening
/// on" line, so no port is found free, let go, and raced for. `config` is
/// the YAML of everything but `http.addr` and `log.level` (it must not
/// have a `log:` or `http:` section of its own; `http_extra` is appended
/// under `http:`, indented, e.g. a `tls:` section). stdout and stderr go
/// to `log`. The child is returned with its port; the caller kills it.
pub fn start_registry(
    dir: &Path,
    config: &str,
    http_extra: &str,
    log: &Path,
) -> (std::process::Child, u16) {
    let config_path = dir.join("registry-config.yml");
    std::fs::write(
        &config_path,
        format!(
            "version: 0.1
log:
  level: info
  accesslog:
    disabled: false
{config}http:
  addr: 127.0.0.1:0
{http_extra}"
        ),
    )
    .unwrap();
    let file = std::fs::File::create(log).unwrap();
    let mut registry = Command::new("docker-registry");
    // docker-registry reads any REGISTRY_<SECTION>_<KEY> variable as a
    // config override (a caller's REGISTRY_AUTH_FILE, podman's, stops it
    // from starting): the file above is its whole config.
    for (name, _) in std::env::vars_os() {
        if name.to_str().is_none_or(|n| n.starts_with("REGISTRY_")) {
            registry.env_remove(&name);
        }
    }
    let mut child = registry
        .arg("serve")
        .arg(&config_path)
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .spawn()
        .expect("docker-registry (Debian package docker-registry)");
    let mut port = None;
    let started = std::time::Instant::now();
    while port.is_none() {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        port = text.lines().find_map(|line| {
            let rest = line.split("listening on 127.0.0.1:").nth(1)?;
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            digits.parse::<u16>().ok()
        });
        if port.is_none() {
            if let Some(status) = child.try_wait().unwrap() {
                panic!("docker-registry exited ({status}) before listening:\n{text}");
            }
            if started.elapsed() > std::time::Duration::from_secs(30) {
                let _ = child.kill();
                let _ = child.wait();
                panic!("docker-registry did not listen within 30 s:\n{text}");
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
    (child, port.unwrap())
}

/// Skip (return `false`, with a line saying why) or, under `SIFR_E2E=1`,
/// fail when the test is not run as root: the tests that need root (an
/// overlay mount, other users, the Slurm cluster) say so themselves,
/// rather than fail on a bind or chown deep inside.
pub fn require_root(what: &str) -> bool {
    if rustix::process::geteuid().is_root() {
        return true;
    }
    assert!(
        !std::env::var("SIFR_E2E").is_ok_and(|v| v == "1"),
        "{what} needs root, and SIFR_E2E=1 asks that nothing is skipped: run the suite as root"
    );
    eprintln!("skipped: {what} needs root");
    false
}

/// The one record in a cache's `index` (its `.json` file), whatever else
/// the index holds (locks, files being written) and in whatever order the
/// filesystem lists them.
pub fn the_record(index: &Path) -> PathBuf {
    let records: Vec<PathBuf> = std::fs::read_dir(index)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    assert_eq!(
        records.len(),
        1,
        "one record in {}: {records:?}",
        index.display()
    );
    records.into_iter().next().unwrap()
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

static PROCESS_ROOT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// A directory `name` for what the whole test process shares (fixtures
/// built once, one compile cache for a file), under one directory in
/// TMPDIR that is removed when the process exits. (A `TempDir` in a static
/// is never dropped, so each run would leave its fixtures behind.)
pub fn process_dir(name: &str) -> PathBuf {
    extern "C" fn remove_root() {
        if let Some(root) = PROCESS_ROOT.get() {
            let _ = std::fs::remove_dir_all(root);
        }
    }
    let root = PROCESS_ROOT.get_or_init(|| {
        let root = tempfile::Builder::new()
            .prefix("sifr-tests-")
            .tempdir()
            .unwrap()
            .keep();
        // SAFETY: atexit takes a plain extern "C" function; remove_root
        // only reads a static that is set before it is registered.
        let registered = unsafe { libc::atexit(remove_root) };
        assert_eq!(registered, 0, "atexit");
        root
    });
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A config layer that only gives plugins a generous deadline, for tests
/// that start many sifr processes at once on a small machine: the policy's
/// 100 ms wall-clock default is not what they test.
pub fn sandbox_config() -> PathBuf {
    static FILE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    FILE.get_or_init(|| {
        let file = process_dir("sandbox").join("sandbox.toml");
        std::fs::write(&file, "[sandbox]\ntimeout-ms = 10000\n").unwrap();
        file
    })
    .clone()
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
