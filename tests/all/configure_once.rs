//! Configure once, decide on a clean copy: `configure` runs once per
//! plugin and settings (and is kept across processes in the compiled-plugin
//! cache), every decision starts from the state `configure` left, and
//! nothing one decision does reaches the next. Also: the pool that makes a
//! fresh instance cheap makes callers wait, never fail, and one process
//! compiles a plugin while the others wait for it.

use crate::common;

use std::path::Path;

use common::{Scratch, entry, plugin_wasm, stderr, stdout};
use sifr::policy::{CompileCache, StepOutcome};
use sifr::{
    Config, ConfigSources, Context, Error, FailureKind, ImageRef, Outcome, PluginLoadError, Policy,
    PolicyError, PolicyOptions, Purpose,
};

/// The hostile plugin in `mode`, loaded with the compile cache `cache`
/// (none: every decision configures its own instance).
fn load(scratch: &Scratch, mode: &str, cache: Option<&Path>) -> Result<Policy, Error> {
    let toml = format!(
        "[sandbox]\ntimeout-ms = 10000\n{}",
        entry(
            "rogue",
            &plugin_wasm("hostile"),
            &format!("[plugin.settings]\nmode = \"{mode}\"")
        )
    );
    let config = Config::load(&ConfigSources::only(scratch.write("config.toml", &toml)))?;
    let options = PolicyOptions {
        compile_cache: cache.map(CompileCache::new),
        engine: None,
        registry: None,
    };
    Ok(Policy::load(&config, &options)?)
}

/// What the `remember` mode says: when `configure` ran, and how many
/// decisions this instance made before.
fn remembered(policy: &Policy) -> (u128, u64, Vec<String>) {
    let resolution = policy.resolve(
        &ImageRef::parse("ubuntu:22.04").unwrap(),
        &Context::new(Purpose::Pull),
    );
    let Outcome::Deny { reason, .. } = resolution.outcome else {
        panic!("remember denies: {:?}", resolution.outcome);
    };
    let (at, rest) = reason
        .strip_prefix("configured at ")
        .and_then(|r| r.split_once("; "))
        .unwrap_or_else(|| panic!("{reason}"));
    let before = rest
        .strip_suffix(" decisions before this one")
        .unwrap_or_else(|| panic!("{reason}"));
    let logs = resolution.steps[0]
        .logs
        .iter()
        .map(|l| l.message.clone())
        .collect();
    (at.parse().unwrap(), before.parse().unwrap(), logs)
}

#[test]
fn configure_runs_once_and_every_decision_starts_where_it_left_off() {
    let scratch = Scratch::new();
    let cache = scratch.path().join("compiled");
    let policy = load(&scratch, "remember", Some(&cache)).unwrap();
    assert!(policy.plugins()[0].configured_once());
    let (at, before, logs) = remembered(&policy);
    assert!(at > 0);
    // A fresh copy each time: no decision sees another's count.
    assert_eq!(before, 0);
    // What `configure` logged is shown with each decision, as it was when
    // each decision configured its own instance.
    assert!(
        logs.contains(&"remember: configured".to_string()),
        "{logs:?}"
    );
    for _ in 0..3 {
        let (again, before, logs) = remembered(&policy);
        assert_eq!(again, at, "configure ran again");
        assert_eq!(before, 0, "a decision saw another's state");
        assert!(
            logs.contains(&"remember: configured".to_string()),
            "{logs:?}"
        );
    }
    // Another load (another process, say) takes the configured snapshot
    // from the cache: configure does not run at all.
    let reloaded = load(&scratch, "remember", Some(&cache)).unwrap();
    assert_eq!(
        reloaded.plugins()[0].artifact,
        sifr::policy::ArtifactOrigin::CacheHit
    );
    let (again, before, logs) = remembered(&reloaded);
    assert_eq!((again, before), (at, 0));
    assert!(
        logs.contains(&"remember: configured".to_string()),
        "{logs:?}"
    );
}

#[test]
fn without_a_compile_cache_each_decision_configures_a_fresh_instance() {
    let scratch = Scratch::new();
    let policy = load(&scratch, "remember", None).unwrap();
    assert!(!policy.plugins()[0].configured_once());
    let (first, before, _) = remembered(&policy);
    assert_eq!(before, 0);
    let (second, before, _) = remembered(&policy);
    assert_eq!(before, 0);
    assert_ne!(second, first, "configure should have run again");
}

#[test]
fn a_plugin_that_keeps_a_wasi_handle_from_configure_is_configured_per_decision() {
    // A snapshot of its memory would hold a stream handle no copy has; sifr
    // sees the open handle and configures each instance instead.
    let scratch = Scratch::new();
    let cache = scratch.path().join("compiled");
    let policy = load(&scratch, "keep-stream", Some(&cache)).unwrap();
    assert!(!policy.plugins()[0].configured_once());
    // It is not tried again on the next load (for a Python plugin, trying
    // costs a 10 s compile): the cache says so.
    let marked = std::fs::read_dir(&cache)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".unsnapshottable")
        })
        .count();
    assert_eq!(marked, 1);
    let policy = load(&scratch, "keep-stream", Some(&cache)).unwrap();
    assert!(!policy.plugins()[0].configured_once());
    for _ in 0..2 {
        let resolution = policy.resolve(
            &ImageRef::parse("ubuntu:22.04").unwrap(),
            &Context::new(Purpose::Pull),
        );
        assert!(
            matches!(resolution.outcome, Outcome::Plan(_)),
            "{:?}",
            resolution.steps
        );
        let logs: Vec<_> = resolution.steps[0]
            .logs
            .iter()
            .map(|l| &l.message)
            .collect();
        assert!(
            logs.iter().any(|l| l.contains("kept stream works")),
            "{logs:?}"
        );
    }
}

#[test]
fn a_hostile_configure_fails_the_same_way_when_it_runs_once() {
    let scratch = Scratch::new();
    let cache = scratch.path().join("compiled");
    match load(&scratch, "configure-reject", Some(&cache)) {
        Err(Error::PluginLoad(PluginLoadError::SettingsRejected { message, .. })) => {
            assert_eq!(message, "this plugin rejects every setting");
        }
        other => panic!("{other:?}"),
    }
    let toml = format!(
        "[sandbox]\ntimeout-ms = 200\n{}",
        entry(
            "rogue",
            &plugin_wasm("hostile"),
            "[plugin.settings]\nmode = \"configure-loop\""
        )
    );
    let config = Config::load(&ConfigSources::only(scratch.write("loop.toml", &toml))).unwrap();
    let options = PolicyOptions {
        compile_cache: Some(CompileCache::new(&cache)),
        engine: None,
        registry: None,
    };
    match Policy::load(&config, &options) {
        Err(PolicyError::PluginLoad(PluginLoadError::Failed { failure, .. })) => {
            assert_eq!(failure.function, "configure");
            assert!(matches!(failure.kind, FailureKind::Timeout(_)), "{failure}");
        }
        other => panic!("{other:?}"),
    }
    // Nothing configured was kept for the failed settings.
    let kept: Vec<_> = std::fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("-configured-") && n.ends_with(".cwasm"))
        .collect();
    assert!(kept.is_empty(), "{kept:?}");
}

#[test]
fn many_threads_share_the_pool_and_wait_rather_than_fail() {
    // More threads than the pool has slots (16 at the default budget), all
    // deciding at once on one policy, each holding its instance 200 ms (a
    // clock wait): without waiting for a slot, most would fail.
    let scratch = Scratch::new();
    let cache = scratch.path().join("compiled");
    let policy = load(&scratch, "nap", Some(&cache)).unwrap();
    let image = ImageRef::parse("ubuntu:22.04").unwrap();
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..40)
            .map(|_| {
                s.spawn(|| {
                    for _ in 0..2 {
                        let resolution = policy.resolve(&image, &Context::new(Purpose::Pull));
                        match resolution.outcome {
                            Outcome::Plan(plan) => assert_eq!(plan.len(), 1),
                            other => panic!("{other:?} {:?}", resolution.steps),
                        }
                    }
                })
            })
            .collect();
        for handle in handles {
            handle.join().unwrap();
        }
    });
}

#[test]
fn of_many_processes_starting_together_on_a_cold_cache_one_compiles() {
    let scratch = Scratch::new();
    let wasm = plugin_wasm("default");
    let children: Vec<_> = (0..6)
        .map(|_| {
            scratch
                .command()
                .args(["plugin", "check", "--json", "--timeout-ms", "10000"])
                .arg(&wasm)
                .arg("ubuntu:22.04")
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut origins = Vec::new();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        let json: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
        origins.push(json["plugin"]["artifact"].as_str().unwrap().to_string());
    }
    origins.sort();
    let compiled = origins.iter().filter(|o| *o == "compiled").count();
    assert_eq!(compiled, 1, "{origins:?}");
}

#[test]
fn step_outcomes_from_a_snapshot_match_a_fresh_configure() {
    // The same chain, with and without configure-once, plans the same.
    let scratch = Scratch::new();
    let cache = scratch.path().join("compiled");
    let image = ImageRef::parse("quay.io/biocontainers/blast:2.15.0").unwrap();
    let once = load(&scratch, "identity", Some(&cache)).unwrap();
    let each = load(&scratch, "identity", None).unwrap();
    let plan = |p: &Policy| match &p.resolve(&image, &Context::new(Purpose::Run)).steps[0].outcome {
        StepOutcome::Plan { sources } => sources.iter().map(|s| s.uri()).collect::<Vec<_>>(),
        other => panic!("{other:?}"),
    };
    assert_eq!(plan(&once), plan(&each));
}

#[test]
fn a_remembered_wasm_digest_never_hides_a_changed_file() {
    // A warm run does not read the plugin (its digest is remembered by
    // file identity). Rewrite the file with other bytes of the same size,
    // in place (same inode), and put its modification time back: only the
    // change time tells, and the pin still catches it.
    let scratch = Scratch::new();
    let cache = scratch.path().join("compiled");
    let wasm = scratch.path().join("plugin.wasm");
    std::fs::copy(plugin_wasm("hostile"), &wasm).unwrap();
    let pin = common::sha256_hex(&wasm);
    let config = |pin: &str| {
        let toml = format!(
            "[sandbox]\ntimeout-ms = 10000\n{}",
            entry(
                "rogue",
                &wasm,
                &format!("sha256 = \"{pin}\"\n[plugin.settings]\nmode = \"identity\"")
            )
        );
        Config::load(&ConfigSources::only(scratch.write("config.toml", &toml))).unwrap()
    };
    let options = PolicyOptions {
        compile_cache: Some(CompileCache::new(&cache)),
        engine: None,
        registry: None,
    };
    for _ in 0..2 {
        Policy::load(&config(&pin), &options).unwrap();
    }
    let before = std::fs::metadata(&wasm).unwrap();
    let modified = before.modified().unwrap();
    let mut bytes = std::fs::read(&wasm).unwrap();
    *bytes.last_mut().unwrap() ^= 0xff;
    std::fs::write(&wasm, &bytes).unwrap();
    {
        use std::os::unix::fs::MetadataExt;
        let after = std::fs::metadata(&wasm).unwrap();
        assert_eq!((after.ino(), after.size()), (before.ino(), before.size()));
    }
    std::fs::File::options()
        .write(true)
        .open(&wasm)
        .unwrap()
        .set_modified(modified)
        .unwrap();
    match Policy::load(&config(&pin), &options) {
        Err(PolicyError::PluginLoad(PluginLoadError::PinMismatch { actual, .. })) => {
            assert_eq!(actual, common::sha256_hex(&wasm));
        }
        other => panic!("the changed file was not caught: {other:?}"),
    }
}

#[test]
fn the_pool_gives_no_plugin_more_than_its_own_budget() {
    // One engine sized for 256 MiB plugins (its pool's slots are that big);
    // a plugin with an 8 MiB budget on it, configured once, still gets 8.
    let scratch = Scratch::new();
    let toml = format!(
        "[sandbox]\nmemory-mib = 8\ntimeout-ms = 10000\n{}",
        entry(
            "rogue",
            &plugin_wasm("hostile"),
            "[plugin.settings]\nmode = \"memory-hog\""
        )
    );
    let config = Config::load(&ConfigSources::only(scratch.write("c.toml", &toml))).unwrap();
    let options = PolicyOptions {
        compile_cache: Some(CompileCache::new(scratch.path().join("compiled"))),
        engine: Some(sifr::policy::PolicyEngine::new(256 << 20).unwrap()),
        registry: None,
    };
    let policy = Policy::load(&config, &options).unwrap();
    assert!(policy.plugins()[0].configured_once());
    for _ in 0..2 {
        let Outcome::Failed(f) = policy
            .resolve(
                &ImageRef::parse("ubuntu:22.04").unwrap(),
                &Context::new(Purpose::Pull),
            )
            .outcome
        else {
            panic!("the hog got its memory");
        };
        assert_eq!(
            f.kind,
            FailureKind::OutOfMemory {
                limit_bytes: 8 << 20
            },
            "{f}"
        );
    }
}

#[test]
fn plugin_check_tells_an_author_whose_plugin_cannot_be_configured_once() {
    let scratch = Scratch::new();
    let wasm = plugin_wasm("hostile");
    for (mode, noted) in [("keep-stream", true), ("identity", false)] {
        let settings = scratch.write("settings.toml", &format!("mode = \"{mode}\"\n"));
        let out = scratch.sifr(&[
            "plugin",
            "check",
            wasm.to_str().unwrap(),
            "--settings",
            settings.to_str().unwrap(),
            "--timeout-ms",
            "10000",
            "ubuntu:22.04",
        ]);
        assert!(out.status.success(), "{}", stderr(&out));
        assert_eq!(
            stdout(&out).contains("note: configure() runs again for every decision"),
            noted,
            "{mode}: {}",
            stdout(&out)
        );
    }
}
