//! Digest look-up benchmark (not a test): `cargo bench -p sifr --bench registry`.
//!
//! `RegistryClient::resolve_digest` against a real, local, plain-HTTP
//! `docker-registry` (Debian's package), an image pushed to it by skopeo
//! from an OCI layout made with umoci. In one run, so that the figures
//! share the machine's noise:
//! 1. cold: a client with a `TtlCache` whose directory is emptied before
//!    each call (the look-up goes to the registry, and the answer is
//!    written to the cache);
//! 2. warm: a client with a `TtlCache` already holding the answer;
//! 3. no cache at all (`cache: None`), as a baseline.
//!
//! The measures run in blocks of `BLOCK` calls, the order of the three
//! rotating from pass to pass. Every answer is checked against the digest
//! `skopeo inspect` reports; every warm answer must say `from_cache`, and
//! the registry's access log must show no manifest request during the warm
//! blocks (the proof that a warm look-up costs no network), while it shows
//! one or more for each cold look-up (the proof that the log is read
//! right). `SIFR_BENCH_PASSES` sets the number of passes (default 10, so
//! 200 calls a measure).
//!
//! Needs the Debian packages docker-registry, skopeo and umoci; without
//! them it says so and exits non-zero. Prints medians and ratios; see
//! BENCHMARKS.md.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[allow(dead_code)] // `time` is not used here
mod common;
use common::{fmt, median};

use sifr::registry::{RegistryClient, RegistryOptions, TtlCache};

const REPOSITORY: &str = "bench/app";
const TAG: &str = "v1";
const ARCH: &str = "amd64";
/// Calls in a block.
const BLOCK: usize = 20;
/// How long the registry gets to write its access log before it is read.
const SETTLE: Duration = Duration::from_millis(150);

/// The tools, and the Debian package that brings each.
const TOOLS: &[(&str, &str)] = &[
    ("docker-registry", "docker-registry"),
    ("skopeo", "skopeo"),
    ("umoci", "umoci"),
];

fn require_tools() {
    let missing: Vec<&str> = TOOLS
        .iter()
        .filter(|(tool, _)| which::which(tool).is_err())
        .map(|(_, package)| *package)
        .collect();
    if !missing.is_empty() {
        eprintln!(
            "the registry benchmark needs the Debian packages docker-registry, skopeo \
             and umoci; missing: {}.\nInstall them with `apt-get install {}`.",
            missing.join(", "),
            missing.join(" ")
        );
        std::process::exit(2);
    }
}

/// Run a command; panic with its stderr if it fails.
fn run(cmd: &mut Command) -> Vec<u8> {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// A plain-HTTP `docker-registry` on 127.0.0.1 with its access log on,
/// killed on drop.
struct Registry {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Registry {
    fn start(dir: &Path) -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = format!(
            "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: false\n\
             storage:\n  filesystem:\n    rootdirectory: {}\n\
             http:\n  addr: 127.0.0.1:{port}\n",
            dir.join("data").display()
        );
        let config_path = dir.join("config.yml");
        std::fs::write(&config_path, config).unwrap();
        let log = dir.join("registry.log");
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .expect("docker-registry (Debian package docker-registry)");
        let started = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "the registry did not start; see its log"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { child, port, log }
    }

    fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// What the registry's log says about the repository's manifests,
    /// after letting the registry finish writing.
    fn manifest_requests(&self) -> Requests {
        std::thread::sleep(SETTLE);
        let path = format!("/v2/{REPOSITORY}/manifests/");
        let (head, get) = (format!("\"HEAD {path}"), format!("\"GET {path}"));
        let log = std::fs::read_to_string(&self.log).unwrap();
        let lines: Vec<&str> = log.lines().filter(|l| l.contains(&path)).collect();
        Requests {
            lines: lines.len(),
            head: lines.iter().filter(|l| l.contains(&head)).count(),
            get: lines.iter().filter(|l| l.contains(&get)).count(),
        }
    }
}

/// Counts of log lines naming the repository's manifests: any line (each
/// request has two, the application's and the access log's), and the
/// access log's `HEAD` and `GET` lines.
#[derive(Clone, Copy, Default)]
struct Requests {
    lines: usize,
    head: usize,
    get: usize,
}

impl std::ops::Sub for Requests {
    type Output = Self;
    fn sub(self, before: Self) -> Self {
        Self {
            lines: self.lines - before.lines,
            head: self.head - before.head,
            get: self.get - before.get,
        }
    }
}

impl std::ops::AddAssign for Requests {
    fn add_assign(&mut self, other: Self) {
        self.lines += other.lines;
        self.head += other.head;
        self.get += other.get;
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An OCI layout holding one small image tagged `one`, made with umoci.
fn layout(dir: &Path) -> PathBuf {
    let layout = dir.join("layout");
    run(Command::new("umoci")
        .args(["init", "--layout"])
        .arg(&layout));
    let image = format!("{}:one", layout.display());
    run(Command::new("umoci").args(["new", "--image", &image]));
    let file = dir.join("file");
    std::fs::write(&file, "one").unwrap();
    run(Command::new("umoci")
        .args(["insert", "--image", &image])
        .arg(&file)
        .arg("/one"));
    layout
}

/// Remove the cache's entries, keeping its directory.
fn empty(dir: &Path) {
    for entry in std::fs::read_dir(dir).unwrap() {
        std::fs::remove_file(entry.unwrap().path()).unwrap();
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Measure {
    Cold,
    Warm,
    None,
}

fn main() {
    require_tools();
    let passes: usize = std::env::var("SIFR_BENCH_PASSES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let work = tempfile::tempdir().unwrap();
    let layout = layout(work.path());
    let registry = Registry::start(work.path());
    let host = registry.host();
    let reference = format!("{host}/{REPOSITORY}:{TAG}");
    run(Command::new("skopeo")
        .args([
            "copy",
            "--insecure-policy",
            "--quiet",
            "--dest-tls-verify=false",
        ])
        .arg(format!("oci:{}:one", layout.display()))
        .arg(format!("docker://{reference}")));
    let expected = String::from_utf8(run(Command::new("skopeo")
        .args(["inspect", "--tls-verify=false", "--format", "{{.Digest}}"])
        .arg(format!("docker://{reference}"))))
    .unwrap()
    .trim()
    .to_string();

    let hour = Duration::from_secs(3600);
    let cold_cache = TtlCache::new(work.path().join("cold"), hour);
    let cold_dir = cold_cache.dir.clone();
    let with_cache = |cache: TtlCache| {
        RegistryClient::new(RegistryOptions {
            cache: Some(cache),
            ..RegistryOptions::default()
        })
    };
    let cold = with_cache(cold_cache.clone());
    let warm = with_cache(TtlCache::new(work.path().join("warm"), hour));
    let none = RegistryClient::new(RegistryOptions::default());

    let call = |client: &RegistryClient| {
        let t = Instant::now();
        let got = client
            .resolve_digest(&host, REPOSITORY, TAG, ARCH, true)
            .unwrap();
        let elapsed = t.elapsed();
        assert_eq!(got.digest.as_str(), expected, "a wrong digest");
        (got.from_cache, elapsed)
    };

    // Warm-up: connections opened, the warm cache filled.
    for _ in 0..BLOCK {
        empty_if_present(&cold_dir);
        call(&cold);
        call(&warm);
        call(&none);
    }
    assert_eq!(cold_cache.entries(), 1, "the cold look-up was not cached");

    let order = [Measure::Cold, Measure::Warm, Measure::None];
    let (mut cold_t, mut warm_t, mut none_t) = (Vec::new(), Vec::new(), Vec::new());
    let mut requests = [Requests::default(); 3];
    for pass in 0..passes {
        for i in 0..order.len() {
            let measure = order[(pass + i) % order.len()];
            let before = registry.manifest_requests();
            for _ in 0..BLOCK {
                match measure {
                    Measure::Cold => {
                        empty(&cold_dir);
                        let (from_cache, t) = call(&cold);
                        assert!(!from_cache, "a cold look-up answered from the cache");
                        assert_eq!(cold_cache.entries(), 1, "the answer was not cached");
                        cold_t.push(t);
                    }
                    Measure::Warm => {
                        let (from_cache, t) = call(&warm);
                        assert!(from_cache, "a warm look-up did not answer from the cache");
                        warm_t.push(t);
                    }
                    Measure::None => {
                        let (from_cache, t) = call(&none);
                        assert!(!from_cache);
                        none_t.push(t);
                    }
                }
            }
            requests[measure as usize] += registry.manifest_requests() - before;
        }
    }
    let calls = cold_t.len();
    let [cold_r, warm_r, none_r] = requests;
    assert_eq!(
        warm_r.lines, 0,
        "the registry's log shows {} lines naming the manifests during the warm look-ups",
        warm_r.lines
    );
    assert!(
        cold_r.head + cold_r.get >= calls && none_r.head + none_r.get >= calls,
        "the access log shows fewer manifest requests than look-ups that went to the \
         registry: the log is not read right, so the warm proof proves nothing"
    );

    let (cold_m, warm_m, none_m) = (median(cold_t), median(warm_t), median(none_t));
    println!(
        "digest look-ups against a local docker-registry (plain HTTP), {calls} calls each, \
         {passes} passes of blocks of {BLOCK}, order rotating"
    );
    println!(
        "cold (TtlCache emptied before each call):  median {}",
        fmt(cold_m)
    );
    println!(
        "warm (TtlCache holding the answer):        median {}",
        fmt(warm_m)
    );
    println!(
        "no cache (cache: None):                    median {}",
        fmt(none_m)
    );
    println!(
        "ratio cold/warm: {:.0}x; no cache/warm: {:.0}x; cold/no cache: {:.2}",
        cold_m.as_secs_f64() / warm_m.as_secs_f64(),
        none_m.as_secs_f64() / warm_m.as_secs_f64(),
        cold_m.as_secs_f64() / none_m.as_secs_f64()
    );
    println!(
        "manifest requests in the registry's access log, {calls} look-ups each: \
         cold {} HEAD + {} GET; warm {} (no log line at all); no cache {} HEAD + {} GET",
        cold_r.head,
        cold_r.get,
        warm_r.head + warm_r.get,
        none_r.head,
        none_r.get
    );
}

/// Empty the cold cache, if its directory exists yet (the client creates it).
fn empty_if_present(dir: &Path) {
    if dir.exists() {
        empty(dir);
    }
}
