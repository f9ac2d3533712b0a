//! Policy benchmarks (not tests): `cargo bench --bench policy`.
//!
//! Measures, in one run so that the figures share the machine's noise, each
//! figure beside its baseline:
//! 1. one reference through a warm chain of 3 plugins (mirror, mirror,
//!    default), configured once (a snapshot per plugin) and configured on
//!    every decision (no compile cache), beside the same decision made by a
//!    plain native Rust function;
//! 2. 1000 references: `Policy::resolve` in a loop, and `resolve_many`;
//! 3. `sifr resolve` as a whole process: compile cache cold, then warm; and
//!    1000 references (`--from`) beside one reference;
//! 4. with SIFR_BENCH_PYTHON_WASM, the Python plugin: cold, warm, warm but
//!    with its file touched (so it is read and hashed again), and the
//!    decision alone.
//!
//! Prints medians and ratios; see BENCHMARKS.md.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

mod common;
use common::{fmt, median, time};

use sifr::policy::CompileCache;
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
    let each = Policy::load(&config, &PolicyOptions::default()).unwrap();
    let once = Policy::load(
        &config,
        &PolicyOptions {
            compile_cache: Some(CompileCache::new(dir.path().join("compiled"))),
            engine: None,
            registry: None,
        },
    )
    .unwrap();
    assert!(once.plugins().iter().all(|p| p.configured_once()));
    assert!(!each.plugins().iter().any(|p| p.configured_once()));
    let image = ImageRef::parse("ncbi/blast:2.14.0").unwrap();
    let ctx = Context::new(Purpose::Pull);

    let native_plan = native(&image);
    for policy in [&once, &each] {
        let wasm_plan = policy.resolve(&image, &ctx).into_plan().unwrap();
        assert_eq!(
            wasm_plan.iter().map(Source::uri).collect::<Vec<_>>(),
            native_plan.iter().map(Source::uri).collect::<Vec<_>>(),
            "the native baseline must make the same decision"
        );
    }

    for _ in 0..50 {
        std::hint::black_box(once.resolve(&image, &ctx));
        std::hint::black_box(each.resolve(&image, &ctx));
    }
    let chain_once = time(2000, || {
        std::hint::black_box(once.resolve(&image, &ctx));
    });
    let chain_each = time(2000, || {
        std::hint::black_box(each.resolve(&image, &ctx));
    });
    let baseline = time(2000, || {
        std::hint::black_box(native(&image));
    });
    println!(
        "chain of 3 plugins, warm, one reference, configured once:     median {}",
        fmt(chain_once)
    );
    println!(
        "chain of 3 plugins, warm, one reference, configure each time: median {}",
        fmt(chain_each)
    );
    println!(
        "native Rust function, same decision:                          median {}",
        fmt(baseline)
    );
    println!(
        "ratios: once/native {:.0}x, each/once {:.2}x",
        chain_once.as_secs_f64() / baseline.as_secs_f64().max(1e-9),
        chain_each.as_secs_f64() / chain_once.as_secs_f64()
    );

    // The registries plugin with a site-sized registries.conf (40 tables
    // with a mirror each): the settings `configure` parses are the larger
    // part of its work.
    let mut conf = String::from("unqualified-search-registries = [\"docker.io\"]\n");
    for i in 0..40 {
        conf.push_str(&format!(
            "[[registry]]\nprefix = \"r{i}.example.org\"\nlocation = \"r{i}.example.org\"\n\
             [[registry.mirror]]\nlocation = \"mirror.example.org/r{i}\"\n"
        ));
    }
    let mut spec = sifr::PluginSpec::default_builtin();
    spec.name = "registries".to_string();
    spec.source = sifr::PluginSource::Builtin("registries".to_string());
    spec.settings = serde_json::json!({ "conf": conf });
    let registries = Config {
        plugins: vec![spec],
        ..Config::default()
    };
    let reg_once = Policy::load(
        &registries,
        &PolicyOptions {
            compile_cache: Some(CompileCache::new(dir.path().join("compiled"))),
            engine: None,
            registry: None,
        },
    )
    .unwrap();
    let reg_each = Policy::load(&registries, &PolicyOptions::default()).unwrap();
    let mirrored = ImageRef::parse("r39.example.org/x/y:1").unwrap();
    for policy in [&reg_once, &reg_each] {
        let plan = policy.resolve(&mirrored, &ctx).into_plan().unwrap();
        assert_eq!(plan.len(), 2, "mirror, then origin");
    }
    let reg_once_t = time(2000, || {
        std::hint::black_box(reg_once.resolve(&mirrored, &ctx));
    });
    let reg_each_t = time(2000, || {
        std::hint::black_box(reg_each.resolve(&mirrored, &ctx));
    });
    println!(
        "registries plugin, 40-table registries.conf, configured once:     median {}",
        fmt(reg_once_t)
    );
    println!(
        "registries plugin, 40-table registries.conf, configure each time: median {}",
        fmt(reg_each_t)
    );
    println!(
        "ratio each/once: {:.2}x",
        reg_each_t.as_secs_f64() / reg_once_t.as_secs_f64()
    );

    // 1000 references, in a loop and in bulk.
    let images: Vec<ImageRef> = (0..1000)
        .map(|i| ImageRef::parse(&format!("ncbi/blast:2.{i}")).unwrap())
        .collect();
    let looped = time(9, || {
        for image in &images {
            std::hint::black_box(once.resolve(image, &ctx));
        }
    });
    let bulk = time(9, || {
        std::hint::black_box(once.resolve_many(&images, &ctx));
    });
    let natives = time(9, || {
        for image in &images {
            std::hint::black_box(native(image));
        }
    });
    println!(
        "1000 references, Policy::resolve in a loop: median {} ({} a reference)",
        fmt(looped),
        fmt(looped / 1000)
    );
    println!(
        "1000 references, Policy::resolve_many:      median {} ({} a reference)",
        fmt(bulk),
        fmt(bulk / 1000)
    );
    println!(
        "1000 references, native Rust:               median {}",
        fmt(natives)
    );
    println!(
        "ratio loop/bulk: {:.2}x",
        looped.as_secs_f64() / bulk.as_secs_f64()
    );

    let exe = Path::new(env!("CARGO_BIN_EXE_sifr"));
    let refs = dir.path().join("refs.txt");
    std::fs::write(
        &refs,
        (0..1000)
            .map(|i| format!("ncbi/blast:2.{i}\n"))
            .collect::<String>(),
    )
    .unwrap();
    let resolve = |cache: &Path, args: &[&std::ffi::OsStr]| {
        let out = Command::new(exe)
            .arg("--config")
            .arg(&config_path)
            .arg("resolve")
            .args(args)
            .env("SIFR_CACHE_DIR", cache)
            .env("XDG_CONFIG_HOME", dir.path())
            .env("XDG_CACHE_HOME", dir.path().join("xdg-cache"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    };
    let one = [std::ffi::OsStr::new("ncbi/blast:2.14.0")];
    let run = |cache: &Path| {
        resolve(cache, &one);
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
    let from = [std::ffi::OsStr::new("--from"), refs.as_os_str()];
    let lines = resolve(&warm_cache, &from);
    assert_eq!(
        String::from_utf8_lossy(&lines).matches("docker://").count(),
        2000,
        "two sources for each of 1000 references"
    );
    let (mut ones, mut thousands) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let t = Instant::now();
        run(&warm_cache);
        ones.push(t.elapsed());
        let t = Instant::now();
        resolve(&warm_cache, &from);
        thousands.push(t.elapsed());
    }
    let (one_ref, thousand) = (median(ones), median(thousands));
    println!(
        "sifr resolve, warm, 1 reference:     median {}",
        fmt(one_ref)
    );
    println!(
        "sifr resolve, warm, 1000 references: median {}",
        fmt(thousand)
    );
    println!(
        "ratio 1000/1: {:.1}x ({} a reference over the 1-reference process)",
        thousand.as_secs_f64() / one_ref.as_secs_f64(),
        fmt(thousand.saturating_sub(one_ref) / 999)
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
            .arg("--json")
            .arg(&python)
            .arg("--settings")
            .arg(&settings)
            .args(["--timeout-ms", "10000"])
            .arg("quay.io/biocontainers/blast:2.15.0")
            .env("SIFR_CACHE_DIR", cache)
            .env("XDG_CACHE_HOME", dir.path().join("xdg-cache"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(json["plugin"]["configure"], "once");
        // The decision alone: a fresh instance of the configured snapshot,
        // and `decide`.
        std::time::Duration::from_micros(json["results"][0]["step"]["elapsed"].as_u64().unwrap())
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
    // A process with no plugin at all: the floor under every figure.
    let empty = dir.path().join("empty.toml");
    std::fs::write(&empty, "plugin = []\n").unwrap();
    let (mut warms, mut touched, mut decisions, mut floors) = (vec![], vec![], vec![], vec![]);
    for _ in 0..11 {
        let t = Instant::now();
        decisions.push(check(&warm_cache));
        warms.push(t.elapsed());
        // A touched file is read and hashed again (its identity changed).
        std::fs::File::options()
            .append(true)
            .open(&python)
            .unwrap()
            .set_modified(std::time::SystemTime::now())
            .unwrap();
        let t = Instant::now();
        check(&warm_cache);
        touched.push(t.elapsed());
        let t = Instant::now();
        let out = Command::new(exe)
            .arg("--config")
            .arg(&empty)
            .args(["resolve", "quay.io/biocontainers/blast:2.15.0"])
            .env("SIFR_CACHE_DIR", &warm_cache)
            .output()
            .unwrap();
        assert!(out.status.success());
        floors.push(t.elapsed());
    }
    let (warm, touched, decision, floor) = (
        median(warms),
        median(touched),
        median(decisions),
        median(floors),
    );
    println!(
        "Python plugin, `sifr plugin check`, compile cache cold: median {}",
        fmt(cold)
    );
    println!(
        "Python plugin, `sifr plugin check`, compile cache warm: median {}",
        fmt(warm)
    );
    println!(
        "  of which the decision (fresh instance of the snapshot + decide): median {}",
        fmt(decision)
    );
    println!(
        "  a sifr process with no plugin:                                  median {}",
        fmt(floor)
    );
    println!(
        "Python plugin, warm, file touched (read and hashed again): median {} (+{})",
        fmt(touched),
        fmt(touched.saturating_sub(warm))
    );
    println!(
        "ratio cold/warm: {:.0}x",
        cold.as_secs_f64() / warm.as_secs_f64()
    );
}
