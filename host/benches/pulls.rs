//! Concurrent pull benchmarks (not tests): `cargo bench -p sifr --bench pulls`.
//!
//! The goal: 16 `sifr pull` processes of one image, started together, take
//! no more than 1.1x the wall time of one pull. This measures, in one run so
//! that the figures share the machine's noise, with the apptainer test
//! double taking 1 s per pull:
//! 1. one `sifr pull` into a fresh cache, compile cache cold (a fresh
//!    `SIFR_CACHE_DIR` and a fresh `XDG_CACHE_HOME`);
//! 2. 16 concurrent `sifr pull` processes of that image into one fresh
//!    shared cache, compile cache cold: all 16 compile the plugin at once;
//! 3. the same 16 with the compile cache warm (compiled plugins present,
//!    no image cached);
//! 4. to show where the time goes, one pull with the compile cache warm.
//!
//! The measures are interleaved, round by round (the order rotating), and
//! each run is checked: every process succeeded and printed the same SIF
//! path, apptainer pulled once, and the cache holds the image once.
//!
//! The double is found next to the sifr binary (`cargo build --release -p
//! sifr-apptainer-double` builds it), or at `$SIFR_BENCH_APPTAINER`.
//! `SIFR_BENCH_ROUNDS` sets the number of rounds (default 5).
//!
//! Prints medians and ratios.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[allow(dead_code)] // `time` is not used here
mod common;
use common::{fmt, median};

const IMAGE: &str = "ncbi/blast:2.14.0";
const CONCURRENT: usize = 16;
const PULL_MS: &str = "1000";

/// The built-in default chain, with the default sandbox: one plugin,
/// compiled when the compile cache is cold. (A plugin call that misses the
/// default 100 ms deadline under the load of 16 processes fails the
/// benchmark: users would see that failure too.)
const CONFIG: &str = r#"
[[plugin]]
name = "default"
builtin = "default"
"#;

/// The apptainer test double: `$SIFR_BENCH_APPTAINER`, else the one built
/// next to the sifr binary. Missing, the benchmark says how to build it and
/// exits non-zero.
fn double() -> PathBuf {
    if let Some(path) = std::env::var_os("SIFR_BENCH_APPTAINER") {
        return PathBuf::from(path);
    }
    let sifr = Path::new(env!("CARGO_BIN_EXE_sifr"));
    let path = sifr.with_file_name("apptainer-test-double");
    if !path.is_file() {
        eprintln!(
            "the apptainer test double is not built: {} is missing.\n\
             Build it with `cargo build --release -p sifr-apptainer-double` \
             (the profile of this benchmark), or set SIFR_BENCH_APPTAINER to it.",
            path.display()
        );
        std::process::exit(2);
    }
    path
}

/// One measure's setting: a sifr cache and an XDG cache home (where the
/// compiled plugins may go) that its processes share.
struct Setting<'a> {
    config: &'a Path,
    config_home: &'a Path,
    double: &'a Path,
    root: PathBuf,
    xdg_cache: PathBuf,
    log: PathBuf,
}

impl Setting<'_> {
    fn sifr(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sifr"));
        cmd.arg("--config")
            .arg(self.config)
            .args(args)
            .env("SIFR_CACHE_DIR", &self.root)
            .env("XDG_CACHE_HOME", &self.xdg_cache)
            .env("XDG_CONFIG_HOME", self.config_home)
            .env_remove("SIFR_CONFIG")
            .env("SIFR_APPTAINER", self.double)
            .env("APPTAINER_DOUBLE_SLEEP_MS", PULL_MS)
            .env("APPTAINER_DOUBLE_LOG", &self.log)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }

    /// Compile the plugin into this setting's compile cache, untimed, with
    /// a `sifr resolve` (which pulls nothing).
    fn warm_up(&self) {
        let out = self.sifr(&["-q", "resolve", IMAGE]).output().unwrap();
        assert!(
            out.status.success(),
            "sifr resolve failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            compiled(&self.root) + compiled(&self.xdg_cache) > 0,
            "the warm-up left no compiled plugin behind"
        );
    }

    /// `n` `sifr pull` processes of IMAGE, started together; the times from
    /// the first spawn until the first and the last have exited. Checks
    /// that each succeeded, all name the same SIF, apptainer pulled once,
    /// and the cache holds the image once.
    fn pull(&self, n: usize) -> Run {
        let start = Instant::now();
        let children: Vec<_> = (0..n)
            .map(|_| self.sifr(&["-q", "pull", IMAGE]).spawn().unwrap())
            .collect();
        // A thread per process, so each exit is timed when it happens.
        let outputs: Vec<_> = std::thread::scope(|scope| {
            let waits: Vec<_> = children
                .into_iter()
                .map(|child| {
                    scope.spawn(move || {
                        let out = child.wait_with_output().unwrap();
                        (out, start.elapsed())
                    })
                })
                .collect();
            waits.into_iter().map(|w| w.join().unwrap()).collect()
        });
        let run = Run {
            first: outputs.iter().map(|(_, t)| *t).min().unwrap(),
            last: outputs.iter().map(|(_, t)| *t).max().unwrap(),
        };
        let outputs: Vec<_> = outputs.into_iter().map(|(out, _)| out).collect();

        let mut paths = Vec::new();
        for out in &outputs {
            assert!(
                out.status.success(),
                "sifr pull failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
            paths.push(String::from_utf8_lossy(&out.stdout).trim().to_string());
        }
        assert!(
            paths.iter().all(|p| p == &paths[0]) && Path::new(&paths[0]).is_file(),
            "the pulls do not agree on one SIF file: {paths:?}"
        );
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let pulls = log.lines().filter(|l| l.starts_with("[\"pull\"")).count();
        assert_eq!(pulls, 1, "apptainer pulled {pulls} times:\n{log}");
        let ls = self.sifr(&["cache", "ls", "--json"]).output().unwrap();
        assert!(
            ls.status.success(),
            "{}",
            String::from_utf8_lossy(&ls.stderr)
        );
        let entries: Vec<serde_json::Value> = serde_json::from_slice(&ls.stdout).unwrap();
        assert_eq!(
            entries.len(),
            1,
            "the cache should hold the image once: {entries:?}"
        );
        assert!(
            entries[0]["image"].as_str().unwrap().contains("ncbi/blast"),
            "{entries:?}"
        );
        run
    }
}

/// When the first and the last of a measure's processes exited, counted
/// from the first spawn. The last is the measure's wall time.
#[derive(Clone, Copy)]
struct Run {
    first: Duration,
    last: Duration,
}

/// The number of compiled plugin artifacts (`*.cwasm`) under `dir`.
fn compiled(dir: &Path) -> usize {
    let Ok(read) = std::fs::read_dir(dir) else {
        return 0;
    };
    read.flatten()
        .map(|e| {
            let path = e.path();
            if path.is_dir() {
                compiled(&path)
            } else {
                usize::from(path.extension().is_some_and(|x| x == "cwasm"))
            }
        })
        .sum()
}

/// The measures, in the order of the first round; each round starts one
/// further along. `as usize` is the index into `MEASURES`.
#[derive(Clone, Copy)]
enum Measure {
    OneCold,
    ManyCold,
    ManyWarm,
    OneWarm,
}

const MEASURES: [Measure; 4] = [
    Measure::OneCold,
    Measure::ManyCold,
    Measure::ManyWarm,
    Measure::OneWarm,
];

fn main() {
    let double = double();
    let rounds: usize = std::env::var("SIFR_BENCH_ROUNDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(5);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(&config, CONFIG).unwrap();
    let config_home = dir.path().join("config-home");
    std::fs::create_dir(&config_home).unwrap();

    let mut samples: [Vec<Run>; MEASURES.len()] = Default::default();
    for round in 0..rounds {
        for k in 0..MEASURES.len() {
            let i = (round + k) % MEASURES.len();
            let name = format!("r{round}-m{i}");
            let setting = Setting {
                config: &config,
                config_home: &config_home,
                double: &double,
                root: dir.path().join(&name).join("sifr"),
                xdg_cache: dir.path().join(&name).join("xdg-cache"),
                log: dir.path().join(&name).join("apptainer.log"),
            };
            std::fs::create_dir(dir.path().join(&name)).unwrap();
            let run = match MEASURES[i] {
                Measure::OneCold => setting.pull(1),
                Measure::ManyCold => setting.pull(CONCURRENT),
                Measure::ManyWarm => {
                    setting.warm_up();
                    setting.pull(CONCURRENT)
                }
                Measure::OneWarm => {
                    setting.warm_up();
                    setting.pull(1)
                }
            };
            samples[i].push(run);
            // Each setting's files go, so the next one starts from the same
            // state of the disk.
            std::fs::remove_dir_all(dir.path().join(&name)).unwrap();
        }
    }
    let wall = |i: usize| median(samples[i].iter().map(|r| r.last).collect());
    let first = |i: usize| median(samples[i].iter().map(|r| r.first).collect());
    let (one_cold, many_cold, many_warm, one_warm) = (
        wall(Measure::OneCold as usize),
        wall(Measure::ManyCold as usize),
        wall(Measure::ManyWarm as usize),
        wall(Measure::OneWarm as usize),
    );
    let ratio = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64();

    println!(
        "{rounds} rounds, the apptainer test double taking {PULL_MS} ms per pull; medians of wall time:"
    );
    println!(
        "1 `sifr pull`, compile cache cold:               {}",
        fmt(one_cold)
    );
    println!(
        "{CONCURRENT} concurrent `sifr pull`, compile cache cold: {} (the first done at {})",
        fmt(many_cold),
        fmt(first(Measure::ManyCold as usize))
    );
    println!(
        "{CONCURRENT} concurrent `sifr pull`, compile cache warm: {} (the first done at {})",
        fmt(many_warm),
        fmt(first(Measure::ManyWarm as usize))
    );
    println!(
        "1 `sifr pull`, compile cache warm:               {}",
        fmt(one_warm)
    );
    println!(
        "ratio {CONCURRENT} concurrent / 1, compile cache cold: {:.2} (goal <= 1.10)",
        ratio(many_cold, one_cold)
    );
    println!(
        "ratio {CONCURRENT} concurrent / 1, compile cache warm: {:.2} (against 1 cold: {:.2})",
        ratio(many_warm, one_warm),
        ratio(many_warm, one_cold)
    );
}
