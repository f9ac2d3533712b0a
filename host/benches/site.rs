//! Site-locked plugins with and without the site store (not tests):
//! `cargo bench --bench site`, as root, after
//! `cargo build --release -p sifr-apptainer-double`.
//!
//! In one run, paired and in rotating order, each `sifr resolve
//! ncbi/blast:2.14.0` as a whole process, with the built-in `registries`
//! plugin reading a registries.conf of 41 `[[registry]]` tables, each with a
//! mirror:
//! 1. the plugin in the user's config (`--config`), compile cache warm: the
//!    baseline;
//! 2. the same plugin and settings in the site file, `locked = true`, with
//!    the site store prepared (`sifr site prepare`);
//! 3. the same, with no site store: compiled in every process.
//!
//! And the front: `apptainer exec docker://… true` through the front with
//! that site-locked chain (store prepared), on a cached image, against the
//! real apptainer (the test double) called directly on the SIF.
//!
//! The site file must be read from `/etc/sifr/config.toml`, so the bench
//! re-runs itself in a private mount namespace with `/etc` overlaid (its
//! upper layer on a tmpfs there): nothing on the host changes. Prints
//! medians (wall, and CPU from the children's rusage) and ratios; see
//! BENCHMARKS.md.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[allow(dead_code)]
mod common;
use common::{fmt, median};

const ROUNDS: usize = 10;

/// One measured case: makes the process to run.
type Case<'a> = Box<dyn Fn() -> Command + 'a>;
const NS_MARK: &str = "SIFR_BENCH_SITE_NAMESPACE";

fn main() {
    if std::env::var_os(NS_MARK).is_none() {
        return reexec_in_namespace();
    }
    let sifr = PathBuf::from(env!("CARGO_BIN_EXE_sifr"));
    let base = tempfile::Builder::new()
        .prefix("sifr-bench-site-")
        .tempdir_in("/var/cache")
        .expect("a private directory under /var/cache (run as root)");
    let dir = base.path();
    let conf = dir.join("registries.conf");
    std::fs::write(&conf, registries_conf(41)).unwrap();
    let entry = |locked: bool| {
        format!(
            "[[plugin]]\nname = \"site-registries\"\nbuiltin = \"registries\"\n{}\
             settings-files = {{ conf = \"{}\" }}\n",
            if locked { "locked = true\n" } else { "" },
            conf.display()
        )
    };
    let store = dir.join("store");
    let site_file =
        |store: &Path, body: &str| format!("[site]\nstore = \"{}\"\n{body}", store.display());
    let user = dir.join("user.toml");
    std::fs::write(&user, entry(false)).unwrap();
    let env = |cmd: &mut Command| {
        cmd.env("XDG_CONFIG_HOME", dir.join("xdg-config"))
            .env("XDG_CACHE_HOME", dir.join("xdg-cache"))
            .env("SIFR_CACHE_DIR", dir.join("cache"))
            .env_remove("SIFR_CONFIG")
            .env_remove("SIFR_LOCKED")
            .stdout(Stdio::null());
    };
    std::fs::create_dir_all("/etc/sifr").unwrap();
    let set_site = |text: &str| std::fs::write("/etc/sifr/config.toml", text).unwrap();

    // The three cases, each a closure that runs one process.
    let resolve = |config: Option<&Path>| {
        let mut cmd = Command::new(&sifr);
        if let Some(config) = config {
            cmd.arg("--config").arg(config);
        }
        cmd.args(["resolve", "ncbi/blast:2.14.0"]);
        env(&mut cmd);
        cmd
    };
    set_site(&site_file(&store, &entry(true)));
    let mut prepare = Command::new(&sifr);
    prepare.args(["site", "prepare"]);
    env(&mut prepare);
    assert!(prepare.status().unwrap().success(), "sifr site prepare");
    let cases: [(&str, Case); 3] = [
        (
            "user config, compile cache warm",
            Box::new(|| {
                set_site(&site_file(&store, ""));
                resolve(Some(&user))
            }),
        ),
        (
            "site-locked, site store prepared",
            Box::new(|| {
                set_site(&site_file(&store, &entry(true)));
                resolve(None)
            }),
        ),
        (
            "site-locked, no site store",
            Box::new(|| {
                set_site(&site_file(&dir.join("none"), &entry(true)));
                resolve(None)
            }),
        ),
    ];
    let mut samples: Vec<(Vec<Duration>, Vec<Duration>)> = vec![Default::default(); 3];
    for round in 0..=ROUNDS {
        for k in 0..cases.len() {
            let i = (round + k) % cases.len();
            let (wall, cpu) = run(&mut cases[i].1());
            // Round 0 warms every cache.
            if round > 0 {
                samples[i].0.push(wall);
                samples[i].1.push(cpu);
            }
        }
    }
    println!("sifr resolve, one process, medians of {ROUNDS} paired runs:");
    let base_wall = median(samples[0].0.clone());
    for ((name, _), (wall, cpu)) in cases.iter().zip(&samples) {
        let wall = median(wall.clone());
        println!(
            "  {name:34} wall {:>9}  cpu {:>9}  {:.2}x the user config",
            fmt(wall),
            fmt(median(cpu.clone())),
            wall.as_secs_f64() / base_wall.as_secs_f64()
        );
    }

    // The front, on a cached image, with the site-locked chain.
    set_site(&site_file(&store, &entry(true)));
    let double = double();
    let front = dir.join("front");
    let real = dir.join("real");
    std::fs::create_dir_all(&real).unwrap();
    std::os::unix::fs::symlink(&double, real.join("apptainer")).unwrap();
    let mut install = Command::new(&sifr);
    install.args(["front", "install"]).arg(&front);
    env(&mut install);
    assert!(install.status().unwrap().success(), "sifr front install");
    let path = std::env::join_paths(
        [front.clone(), real.clone()]
            .into_iter()
            .chain(std::env::split_paths(&std::env::var_os("PATH").unwrap())),
    )
    .unwrap();
    let apptainer = |program: &Path, args: &[&str]| {
        let mut cmd = Command::new(program);
        cmd.args(args)
            .env("PATH", &path)
            .env("APPTAINER_DOUBLE_LOG", dir.join("double.log"))
            .env_remove("SIFR_FRONT_REAL")
            .env_remove("SIFR_APPTAINER");
        env(&mut cmd);
        cmd
    };
    let image = "docker://ncbi/blast:2.14.0";
    let pulled = apptainer(
        &front.join("apptainer"),
        &["pull", "--force", "blast.sif", image],
    )
    .current_dir(dir)
    .status()
    .unwrap();
    assert!(pulled.success(), "the front's pull");
    let sif = dir.join("blast.sif");
    let mut front_samples = (Vec::new(), Vec::new());
    let mut direct_samples = (Vec::new(), Vec::new());
    for round in 0..=ROUNDS {
        let sif = sif.to_str().unwrap();
        let mut pair = [
            apptainer(&front.join("apptainer"), &["exec", image, "true"]),
            apptainer(&real.join("apptainer"), &["exec", sif, "true"]),
        ];
        if round % 2 == 1 {
            pair.reverse();
        }
        let a = run(&mut pair[0]);
        let b = run(&mut pair[1]);
        let (front_run, direct_run) = if round % 2 == 1 { (b, a) } else { (a, b) };
        if round > 0 {
            front_samples.0.push(front_run.0);
            front_samples.1.push(front_run.1);
            direct_samples.0.push(direct_run.0);
            direct_samples.1.push(direct_run.1);
        }
    }
    let front_wall = median(front_samples.0);
    let direct_wall = median(direct_samples.0);
    println!("apptainer exec … true, cached image, medians of {ROUNDS} paired runs:");
    println!(
        "  through the front, site-locked chain  wall {:>9}  cpu {:>9}",
        fmt(front_wall),
        fmt(median(front_samples.1))
    );
    println!(
        "  the real apptainer on the SIF         wall {:>9}  cpu {:>9}",
        fmt(direct_wall),
        fmt(median(direct_samples.1))
    );
    println!(
        "  the front adds {}",
        fmt(front_wall.saturating_sub(direct_wall))
    );
}

/// Run `cmd` to completion: its wall time, and the CPU (user + system) its
/// process tree used, from the children's rusage before and after.
fn run(cmd: &mut Command) -> (Duration, Duration) {
    let before = children_cpu();
    let t = Instant::now();
    let status = cmd.status().unwrap();
    let wall = t.elapsed();
    assert!(status.success(), "{cmd:?}");
    (wall, children_cpu().saturating_sub(before))
}

fn children_cpu() -> Duration {
    // SAFETY: getrusage fills the struct it is given, nothing else.
    let usage = unsafe {
        let mut usage = std::mem::zeroed::<libc::rusage>();
        assert_eq!(libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage), 0);
        usage
    };
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// A registries.conf of `n` tables, each with a mirror; ncbi/blast matches
/// the last, Docker Hub's.
fn registries_conf(n: usize) -> String {
    let mut text = String::new();
    for i in 1..n {
        text.push_str(&format!(
            "[[registry]]\nprefix = \"registry{i}.example.org\"\nlocation = \"registry{i}.example.org\"\n\
             [[registry.mirror]]\nlocation = \"mirror{i}.example.net/r{i}\"\n\n"
        ));
    }
    text.push_str(
        "[[registry]]\nprefix = \"docker.io\"\nlocation = \"docker.io\"\n\
         [[registry.mirror]]\nlocation = \"harbor.example.org/dockerhub\"\n",
    );
    text
}

/// The apptainer test double built next to this benchmark (release).
fn double() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let path = exe
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .join("apptainer-test-double");
    assert!(
        path.is_file(),
        "run `cargo build --release -p sifr-apptainer-double` first: {} is missing",
        path.display()
    );
    path
}

/// Run this benchmark again in a private mount namespace whose `/etc` is an
/// overlay, so that `/etc/sifr/config.toml` can be written there alone.
fn reexec_in_namespace() {
    assert!(
        rustix::process::geteuid().is_root(),
        "the site benchmark needs root: a site store is root's, and it overlays /etc"
    );
    let layer = tempfile::tempdir().unwrap();
    let status = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-ec"])
        .arg(
            "t=$0\n\
             mount -t tmpfs tmpfs \"$t\"\n\
             mkdir -p \"$t/upper\" \"$t/work\"\n\
             mount -t overlay overlay -o \"lowerdir=/etc,upperdir=$t/upper,workdir=$t/work\" /etc\n\
             exec \"$@\"",
        )
        .arg(layer.path())
        .arg(std::env::current_exe().unwrap())
        .args(std::env::args_os().skip(1))
        .env(NS_MARK, "1")
        .status()
        .expect("running unshare (util-linux)");
    std::process::exit(status.code().unwrap_or(1));
}
