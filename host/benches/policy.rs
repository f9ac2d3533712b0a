//! Policy benchmarks (not tests): `cargo bench --bench policy`.
//!
//! Measures, in one run so that the figures share the machine's noise:
//! 1. one reference through a warm chain of 3 plugins (mirror, mirror, default);
//! 2. the same decision made by a plain native Rust function;
//! 3. `sifr resolve` as a whole process, compile cache cold, then warm.
//!
//! Prints medians and ratios; see BENCHMARKS.md.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

mod common;
use common::{fmt, median, time};

use sifr::{
    Config, ConfigSources, Context, ImageRef, Policy, PolicyOptions, PullRef, Purpose, Source,
};

const CHAIN: &str = r#"
[[plugin]]
name = "hub-mirror"
builtin = "mirror"
[plugin.settings]
registries = ["docker.io"]
[[plugin.settings.mirrors]]
registry = "harbor.example.org"
prefix = "dockerhub"

[[plugin]]
name = "quay-mirror"
builtin = "mirror"
[plugin.settings]
registries = ["quay.io"]
[[plugin.settings.mirrors]]
registry = "harbor.example.org"
prefix = "quay"

[[plugin]]
name = "default"
builtin = "default"
"#;

/// The chain's decision, written as a plain Rust function.
fn native(image: &ImageRef) -> Vec<Source> {
    let mut plan = vec![Source::origin(image)];
    for (registry, prefix) in [("docker.io", "dockerhub"), ("quay.io", "quay")] {
        if image.registry == registry {
            let reference = plan.last().unwrap().reference.clone();
            plan.insert(
                0,
                Source {
                    registry: "harbor.example.org".into(),
                    repository: format!("{prefix}/{}", image.repository),
                    reference,
                    plain_http: false,
                    note: format!("mirror of {registry}"),
                },
            );
        }
    }
    let reference = match (&image.manifest_digest, &image.tag) {
        (Some(d), _) => PullRef::Digest(d.clone()),
        (None, Some(t)) => PullRef::Tag(t.clone()),
        (None, None) => PullRef::Tag("latest".into()),
    };
    for source in &mut plan {
        source.reference = reference.clone();
        source.note.push_str("; by tag");
    }
    plan
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("config.toml");
    std::fs::write(&config_path, CHAIN).unwrap();
    let config = Config::load(&ConfigSources::only(&config_path)).unwrap();
    let policy = Policy::load(&config, &PolicyOptions::default()).unwrap();
    let image = ImageRef::parse("ncbi/blast:2.14.0").unwrap();
    let ctx = Context::new(Purpose::Pull);

    let wasm_plan = policy.resolve(&image, &ctx).into_plan().unwrap();
    let native_plan = native(&image);
    assert_eq!(
        wasm_plan.iter().map(Source::uri).collect::<Vec<_>>(),
        native_plan.iter().map(Source::uri).collect::<Vec<_>>(),
        "the native baseline must make the same decision"
    );

    for _ in 0..50 {
        std::hint::black_box(policy.resolve(&image, &ctx));
    }
    let chain = time(2000, || {
        std::hint::black_box(policy.resolve(&image, &ctx));
    });
    let baseline = time(2000, || {
        std::hint::black_box(native(&image));
    });
    println!(
        "chain of 3 plugins, warm, one reference: median {}",
        fmt(chain)
    );
    println!(
        "native Rust function, same decision:     median {}",
        fmt(baseline)
    );
    println!(
        "ratio: {:.0}x",
        chain.as_secs_f64() / baseline.as_secs_f64().max(1e-9)
    );

    let exe = Path::new(env!("CARGO_BIN_EXE_sifr"));
    let run = |cache: &Path| {
        let out = Command::new(exe)
            .args([
                "--config",
                config_path.to_str().unwrap(),
                "resolve",
                "ncbi/blast:2.14.0",
            ])
            .env("SIFR_CACHE_DIR", cache)
            .env("XDG_CONFIG_HOME", dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let runs = 15;
    let cold = median(
        (0..runs)
            .map(|i| {
                let cache = dir.path().join(format!("cold-{i}"));
                let t = Instant::now();
                run(&cache);
                t.elapsed()
            })
            .collect(),
    );
    let warm_cache = dir.path().join("warm");
    run(&warm_cache);
    let warm = time(runs, || run(&warm_cache));
    println!(
        "sifr resolve, whole process, compile cache cold: median {}",
        fmt(cold)
    );
    println!(
        "sifr resolve, whole process, compile cache warm: median {}",
        fmt(warm)
    );
    println!(
        "ratio cold/warm: {:.1}x",
        cold.as_secs_f64() / warm.as_secs_f64()
    );

    // The Python plugin (~18 MB with its interpreter), when built:
    // SIFR_BENCH_PYTHON_WASM=path/to/biocontainers.wasm.
    let Some(python) = std::env::var_os("SIFR_BENCH_PYTHON_WASM") else {
        println!("(set SIFR_BENCH_PYTHON_WASM to measure the Python plugin)");
        return;
    };
    let settings = dir.path().join("python-settings.toml");
    std::fs::write(&settings, "mirror = \"harbor.example.org\"\n").unwrap();
    let check = |cache: &Path| {
        let out = Command::new(exe)
            .arg("plugin")
            .arg("check")
            .arg(&python)
            .arg("--settings")
            .arg(&settings)
            .arg("quay.io/biocontainers/blast:2.15.0")
            .env("SIFR_CACHE_DIR", cache)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let cold = median(
        (0..3)
            .map(|i| {
                let cache = dir.path().join(format!("py-cold-{i}"));
                let t = Instant::now();
                check(&cache);
                t.elapsed()
            })
            .collect(),
    );
    let warm_cache = dir.path().join("py-warm");
    check(&warm_cache);
    let warm = time(11, || check(&warm_cache));
    println!(
        "Python plugin, `sifr plugin check`, compile cache cold: median {}",
        fmt(cold)
    );
    println!(
        "Python plugin, `sifr plugin check`, compile cache warm: median {}",
        fmt(warm)
    );
    println!(
        "ratio cold/warm: {:.0}x",
        cold.as_secs_f64() / warm.as_secs_f64()
    );
}
