//! The real backend through the binary: a busybox image pushed to Debian's
//! `docker-registry` on 127.0.0.1, pulled into a real SIF, and run in
//! bubblewrap.
//!
//! Without the tools (and without `SIFR_E2E=1`) the build marks these tests
//! ignored; once they run, a missing tool fails them (see `build.rs` and
//! `src/real/test_support.rs`).

#[path = "../src/real/test_support.rs"]
mod test_support;

use std::fs;
use std::io::{BufRead, BufReader};
use std::net::Ipv4Addr;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use test_support::{DEFAULT_OUTPUT, SIF_TOOLS, busybox_layout, require_tools, run_ok};

const DOUBLE: &str = env!("CARGO_BIN_EXE_apptainer-test-double");
const REPOSITORY: &str = "test/busybox";

/// Everything these tests need: building and running a SIF, and a registry.
fn require_all_tools() {
    let mut tools = SIF_TOOLS.to_vec();
    tools.push(("docker-registry", "docker-registry"));
    require_tools(&tools);
}

/// A fresh directory, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Self {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "apptainer-double-test-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir(&path).unwrap();
        Self(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A plain-HTTP `docker-registry` on 127.0.0.1 holding the busybox image
/// as `test/busybox:1`, stopped when dropped.
struct Registry {
    child: Child,
    host: String,
}

impl Registry {
    /// On a port the kernel chose: `http.addr` is `127.0.0.1:0`, and the
    /// port is read from the registry's own "listening on" line, so no port
    /// is found free, let go, and raced for.
    fn start(scratch: &Path) -> Self {
        let config = scratch.join("registry.yml");
        fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    \
                 rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:0\n",
                scratch.join("registry").display()
            ),
        )
        .unwrap();
        let log_path = scratch.join("registry.log");
        let log = fs::File::create(&log_path).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut registry = Self {
            child,
            host: String::new(),
        };
        let port = registry.wait_for_port(&log_path);
        registry.host = format!("127.0.0.1:{port}");

        let layout = busybox_layout(&mkdir(scratch.join("image")), "1");
        run_ok(
            Command::new("skopeo")
                .args([
                    "--insecure-policy",
                    "copy",
                    "--quiet",
                    "--dest-tls-verify=false",
                ])
                .arg(format!("oci:{}:1", layout.display()))
                .arg(format!("docker://{}/{REPOSITORY}:1", registry.host)),
        );
        registry
    }

    /// Wait for the "listening on 127.0.0.1:PORT" line in the log, and give
    /// the port; fail, with the log, if the registry exits first or has not
    /// listened after 30 s.
    fn wait_for_port(&mut self, log: &Path) -> u16 {
        let started = Instant::now();
        loop {
            let text = fs::read_to_string(log).unwrap_or_default();
            let port = text.lines().find_map(|line| {
                let rest = line.split("listening on 127.0.0.1:").nth(1)?;
                let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
                digits.parse::<u16>().ok()
            });
            if let Some(port) = port {
                return port;
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("docker-registry exited ({status}) before listening:\n{text}");
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "docker-registry did not listen within 30 s:\n{text}"
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    fn uri(&self, tag: &str) -> String {
        format!("docker://{}/{REPOSITORY}:{tag}", self.host)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port on 127.0.0.1 that refuses connections for as long as this lives:
/// a socket bound to it that never listens, so a connection is refused at
/// once and no other process can take the port meanwhile (a fixed port
/// such as 1 may be some service's, and a port found free and let go may
/// be another test's server). A `TcpListener` would not do: it listens, and
/// the kernel completes connections into its backlog. std cannot bind
/// without listening, hence libc.
struct RefusedPort {
    _socket: OwnedFd,
    port: u16,
}

impl RefusedPort {
    fn new() -> Self {
        let os_error = std::io::Error::last_os_error;
        // SAFETY: a socket this function creates and owns at once, and a
        // `sockaddr_in` of the size given for it.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
            assert!(fd >= 0, "socket: {}", os_error());
            let socket = OwnedFd::from_raw_fd(fd);
            let mut addr: libc::sockaddr_in = std::mem::zeroed();
            addr.sin_family = libc::AF_INET as libc::sa_family_t;
            addr.sin_addr.s_addr = u32::from(Ipv4Addr::LOCALHOST).to_be();
            let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            let sockaddr = (&raw mut addr).cast::<libc::sockaddr>();
            assert_eq!(libc::bind(fd, sockaddr, len), 0, "bind: {}", os_error());
            assert_eq!(
                libc::getsockname(fd, sockaddr, &mut len),
                0,
                "getsockname: {}",
                os_error()
            );
            Self {
                _socket: socket,
                port: u16::from_be(addr.sin_port),
            }
        }
    }
}

/// Create the directory `path`, and hand the path back.
fn mkdir(path: PathBuf) -> PathBuf {
    fs::create_dir_all(&path).unwrap();
    path
}

/// The double, with nothing of the caller's environment that could change
/// what it or skopeo does: apptainer's, singularity's and the double's own
/// variables (`APPTAINER_DOUBLE_HOLD`, `APPTAINER_DOUBLE_FAIL`, ...), where
/// registry credentials and configs are found, and proxies. A test sets
/// what it means to set on the returned command.
fn hermetic_double() -> Command {
    const NAMES: &[&str] = &[
        "DOCKER_CONFIG",
        "REGISTRY_AUTH_FILE",
        "CONTAINERS_REGISTRIES_CONF",
        "CONTAINERS_CONF",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "NO_PROXY",
    ];
    let mut command = Command::new(DOUBLE);
    for (name, _) in std::env::vars_os() {
        let leaks = name.to_str().is_none_or(|name| {
            name.starts_with("APPTAINER")
                || name.starts_with("SINGULARITY")
                || NAMES.iter().any(|n| name.eq_ignore_ascii_case(n))
        });
        if leaks {
            command.env_remove(&name);
        }
    }
    command
}

/// The double with the real backend, its scratch directories in `tmp`.
fn double(tmp: &Path, args: &[&str]) -> Command {
    let mut command = hermetic_double();
    command
        .args(args)
        .env("APPTAINER_DOUBLE_BACKEND", "real")
        .env("APPTAINER_DOUBLE_TMPDIR", tmp)
        .stdin(Stdio::null());
    command
}

fn output(tmp: &Path, args: &[&str]) -> Output {
    double(tmp, args).output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Pull the test image into `dir/busybox.sif`.
fn pull(registry: &Registry, tmp: &Path, dir: &Path) -> String {
    let sif = dir.join("busybox.sif").display().to_string();
    let out = output(tmp, &["pull", "--no-https", &sif, &registry.uri("1")]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    sif
}

#[test]
#[cfg_attr(
    not(sifr_e2e),
    ignore = "needs skopeo umoci squashfs-tools siftool bubblewrap busybox-static docker-registry, or SIFR_E2E=1"
)]
fn pulls_a_real_sif_from_a_registry() {
    require_all_tools();
    let scratch = Scratch::new();
    let registry = Registry::start(scratch.path());
    let tmp = mkdir(scratch.path().join("tmp"));
    let images = mkdir(scratch.path().join("images"));
    let sif = pull(&registry, &tmp, &images);

    let listing = run_ok(Command::new("siftool").args(["list", &sif]));
    let listing = text(&listing.stdout);
    assert!(listing.contains("FS (Squashfs/*System/"), "{listing}");
    let header = fs::read(&sif).unwrap();
    assert!(header.starts_with(b"#!/usr/bin/env run-singularity\n"));

    // apptainer's checks come first: an existing file needs --force.
    let again = output(&tmp, &["pull", "--no-https", &sif, &registry.uri("1")]);
    assert_eq!(again.status.code(), Some(255));
    assert!(text(&again.stderr).contains("will not overwrite"));
    let forced = output(
        &tmp,
        &["pull", "--force", "--no-https", &sif, &registry.uri("1")],
    );
    assert_eq!(forced.status.code(), Some(0), "{}", text(&forced.stderr));

    // By digest.
    let digest = run_ok(
        Command::new("skopeo")
            .args(["inspect", "--tls-verify=false", "--format", "{{.Digest}}"])
            .arg(registry.uri("1")),
    );
    let digest = text(&digest.stdout).trim().to_owned();
    let pinned = images.join("pinned.sif").display().to_string();
    let uri = format!("docker://{}/{REPOSITORY}@{digest}", registry.host);
    let out = output(&tmp, &["pull", "--no-https", &pinned, &uri]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));

    // Failures are apptainer's FATAL, exit 255, and leave no file behind.
    let missing = images.join("missing.sif").display().to_string();
    let refused = RefusedPort::new();
    for (uri, options, expected) in [
        (
            registry.uri("nope"),
            &["--no-https"][..],
            "manifest unknown",
        ),
        (
            registry.uri("1"),
            &[],
            "server gave HTTP response to HTTPS client",
        ),
        (
            format!("docker://127.0.0.1:{}/test/busybox:1", refused.port),
            &["--no-https"],
            "connection refused",
        ),
    ] {
        let mut args = vec!["pull"];
        args.extend(options);
        args.extend([missing.as_str(), uri.as_str()]);
        let out = output(&tmp, &args);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(255), "{uri}: {stderr}");
        assert!(
            stderr.contains("FATAL:   While making image from oci registry: ")
                && stderr.contains(expected),
            "{uri}: {stderr}"
        );
    }
    let mut left: Vec<String> = fs::read_dir(&images)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left, ["busybox.sif", "pinned.sif"]);
    assert_eq!(
        fs::read_dir(&tmp).unwrap().count(),
        0,
        "scratch files are removed"
    );
}

#[test]
#[cfg_attr(
    not(sifr_e2e),
    ignore = "needs skopeo umoci squashfs-tools siftool bubblewrap busybox-static docker-registry, or SIFR_E2E=1"
)]
fn runs_commands_in_the_image() {
    require_all_tools();
    let scratch = Scratch::new();
    let registry = Registry::start(scratch.path());
    let tmp = mkdir(scratch.path().join("tmp"));
    let sif = pull(&registry, &tmp, scratch.path());

    let out = output(&tmp, &["exec", &sif, "echo", "hi"]);
    assert_eq!(
        (out.status.code(), text(&out.stdout)),
        (Some(0), "hi\n".into())
    );
    // run: the image's CMD, or the arguments in its place.
    let out = output(&tmp, &["run", &sif]);
    assert_eq!(
        text(&out.stdout),
        format!("{DEFAULT_OUTPUT}\n"),
        "{}",
        text(&out.stderr)
    );
    let out = output(&tmp, &["run", &sif, "echo", "a  b"]);
    assert_eq!(text(&out.stdout), "a  b\n");
    let out = output(&tmp, &["exec", &sif, "sh", "-c", "exit 7"]);
    assert_eq!(out.status.code(), Some(7));
    // The image's own root, read-only.
    let out = output(
        &tmp,
        &["exec", &sif, "sh", "-c", "ls /bin/busybox; touch /x"],
    );
    assert_eq!(text(&out.stdout), "/bin/busybox\n");
    assert_ne!(out.status.code(), Some(0));

    let out = output(&tmp, &["exec", &sif, "nope"]);
    assert_eq!(out.status.code(), Some(255));
    assert_eq!(
        text(&out.stderr),
        "FATAL:   \"nope\": executable file not found in $PATH\n"
    );

    // The environment: the host's, or with --cleanenv only PATH, --env and
    // APPTAINER_*.
    let script = "echo ${HOST_VAR:-unset} $GREETING $APPTAINER_NAME";
    let out = double(
        &tmp,
        &["exec", "--env", "GREETING=hi", &sif, "sh", "-c", script],
    )
    .env("HOST_VAR", "host")
    .output()
    .unwrap();
    assert_eq!(text(&out.stdout), "host hi busybox.sif\n");
    let out = double(
        &tmp,
        &[
            "exec",
            "-e",
            "--env",
            "GREETING=hi",
            &sif,
            "sh",
            "-c",
            script,
        ],
    )
    .env("HOST_VAR", "host")
    .output()
    .unwrap();
    assert_eq!(text(&out.stdout), "unset hi busybox.sif\n");

    // Binds, read-only or not, and --pwd in the container.
    let data = mkdir(scratch.path().join("data"));
    fs::write(data.join("in.txt"), "from the host\n").unwrap();
    let ro = format!("{}:/data:ro", data.display());
    let out = output(
        &tmp,
        &[
            "exec", "--bind", &ro, "--pwd", "/data", &sif, "cat", "in.txt",
        ],
    );
    assert_eq!(
        text(&out.stdout),
        "from the host\n",
        "{}",
        text(&out.stderr)
    );
    let out = output(&tmp, &["exec", "-B", &ro, &sif, "touch", "/data/new"]);
    assert_ne!(out.status.code(), Some(0));
    let rw = format!("{}:/data", data.display());
    let out = output(&tmp, &["exec", "-B", &rw, &sif, "touch", "/data/new"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(data.join("new").exists());
    let out = output(&tmp, &["exec", "--bind", "/nonexistent:/x", &sif, "true"]);
    assert_eq!(out.status.code(), Some(255));
    assert!(text(&out.stderr).contains("mount source /nonexistent doesn't exist"));

    // A fake backend's SIF is no SIF to siftool.
    let fake = scratch.path().join("fake.sif").display().to_string();
    let out = hermetic_double()
        .args(["pull", &fake, "docker://example.test/a:1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let out = output(&tmp, &["exec", &fake, "true"]);
    assert_eq!(out.status.code(), Some(255));
    assert!(text(&out.stderr).starts_with(&format!("FATAL:   could not open image {fake}: ")));

    assert_eq!(
        fs::read_dir(&tmp).unwrap().count(),
        0,
        "scratch files are removed"
    );
}

#[test]
#[cfg_attr(
    not(sifr_e2e),
    ignore = "needs skopeo umoci squashfs-tools siftool bubblewrap busybox-static docker-registry, or SIFR_E2E=1"
)]
fn signals_reach_the_command() {
    require_all_tools();
    let scratch = Scratch::new();
    let registry = Registry::start(scratch.path());
    let tmp = mkdir(scratch.path().join("tmp"));
    let sif = pull(&registry, &tmp, scratch.path());

    // Start the command, wait until it is running, then SIGTERM the double.
    let terminate = |script: &str| {
        let mut child = double(&tmp, &["exec", &sif, "sh", "-c", script])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        assert_eq!(lines.next().unwrap().unwrap(), "ready");
        run_ok(Command::new("kill").args(["-TERM", &child.id().to_string()]));
        let rest: Vec<String> = lines.map(Result::unwrap).collect();
        (child.wait().unwrap(), rest)
    };
    let (status, rest) =
        terminate("trap 'echo got TERM; exit 7' TERM; echo ready; while true; do sleep 0.1; done");
    assert_eq!(
        (status.code(), rest),
        (Some(7), vec!["got TERM".to_owned()])
    );
    // Dead of the signal, the command takes the double with it.
    let (status, _) = terminate("echo ready; exec sleep 60");
    assert_eq!(status.signal(), Some(15), "{status}");
    assert_eq!(
        fs::read_dir(&tmp).unwrap().count(),
        0,
        "scratch files are removed"
    );
}
