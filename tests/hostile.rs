//! Deliberately hostile and buggy plugins are contained: each ends in a
//! clear error that names the plugin, its hash, the function and what
//! happened, and the host keeps working for the next call.

mod common;

use common::{Scratch, entry, plugin_wasm};
use sifr::policy::{LogLevel, StepOutcome};
use sifr::{
    Config, ConfigSources, Context, Error, FailureKind, ImageRef, Outcome, PluginLoadError, Policy,
    PolicyOptions, Purpose,
};

fn hostile(scratch: &Scratch, mode: &str, extra: &str) -> Result<Policy, Error> {
    hostile_in(scratch, mode, extra, "")
}

/// The hostile plugin in `mode`, with `sandbox` lines under [sandbox].
fn hostile_in(scratch: &Scratch, mode: &str, extra: &str, sandbox: &str) -> Result<Policy, Error> {
    let wasm = plugin_wasm("hostile");
    let toml = format!(
        "[sandbox]\n{sandbox}\n{}",
        entry(
            "rogue",
            &wasm,
            &format!("{extra}\n[plugin.settings]\nmode = \"{mode}\"")
        )
    );
    let path = scratch.write("config.toml", &toml);
    let config = Config::load(&ConfigSources::only(path))?;
    Policy::load(&config, &PolicyOptions::default())
}

fn image() -> ImageRef {
    ImageRef::parse("ncbi/blast:2.14.0").unwrap()
}

/// The failure of a fail-closed hostile plugin in `mode`, checked to be
/// contained: it is the same on a second call, and a healthy policy in the
/// same process still works afterwards.
///
/// Every mode but `loop` gets a 10 s deadline, so that on a loaded machine
/// the limit under test (memory, output) trips rather than the clock.
fn failure(mode: &str) -> sifr::PluginFailure {
    let scratch = Scratch::new();
    let sandbox = if mode == "loop" {
        ""
    } else {
        "timeout-ms = 10000"
    };
    let policy = hostile_in(&scratch, mode, "", sandbox).unwrap();
    let ctx = Context::new(Purpose::Pull);
    let Outcome::Failed(first) = policy.resolve(&image(), &ctx).outcome else {
        panic!("mode {mode} did not fail");
    };
    let Outcome::Failed(again) = policy.resolve(&image(), &ctx).outcome else {
        panic!("mode {mode} did not fail the second time");
    };
    assert_eq!(first.kind, again.kind, "each call gets a fresh instance");
    let healthy = Policy::load(&Config::default(), &PolicyOptions::default()).unwrap();
    let plan = healthy.resolve(&image(), &ctx).into_plan().unwrap();
    assert_eq!(plan[0].uri(), "docker://ncbi/blast:2.14.0");

    let shown = first.to_string();
    assert!(shown.starts_with("plugin 'rogue' (sha256:"), "{shown}");
    assert_eq!(first.plugin, "rogue");
    assert_eq!(first.sha256.len(), "sha256:".len() + 12);
    first
}

#[test]
fn an_infinite_loop_hits_the_deadline() {
    let f = failure("loop");
    assert_eq!(f.function, "decide");
    assert_eq!(
        f.kind,
        FailureKind::Timeout(std::time::Duration::from_millis(100))
    );
    let shown = f.to_string();
    assert!(
        shown.contains("exceeded its 100 ms deadline in decide()"),
        "{shown}"
    );
    assert!(
        shown.contains("timeout-ms"),
        "says how to raise it: {shown}"
    );
}

#[test]
fn a_loop_in_configure_fails_loading_with_a_timeout() {
    let scratch = Scratch::new();
    let err = hostile(&scratch, "configure-loop", "").unwrap_err();
    let Error::PluginLoad(PluginLoadError::Failed { failure, .. }) = &err else {
        panic!("{err}");
    };
    assert_eq!(failure.function, "configure");
    assert!(matches!(failure.kind, FailureKind::Timeout(_)), "{err}");
}

#[test]
fn a_memory_hog_hits_the_memory_cap() {
    let f = failure("memory-hog");
    assert_eq!(
        f.kind,
        FailureKind::OutOfMemory {
            limit_bytes: 64 << 20
        }
    );
    assert!(
        f.to_string()
            .contains("exceeded its 64 MiB memory limit in decide()"),
        "{f}"
    );
}

#[test]
fn the_memory_cap_is_configurable() {
    let scratch = Scratch::new();
    let wasm = plugin_wasm("hostile");
    let toml = format!(
        "[sandbox]\nmemory-mib = 8\ntimeout-ms = 10000\n{}",
        entry(
            "rogue",
            &wasm,
            "[plugin.settings]\nmode = \"huge-string\"\nbytes = 16777216"
        )
    );
    let config = Config::load(&ConfigSources::only(scratch.write("c.toml", &toml))).unwrap();
    let policy = Policy::load(&config, &PolicyOptions::default()).unwrap();
    let Outcome::Failed(f) = policy
        .resolve(&image(), &Context::new(Purpose::Pull))
        .outcome
    else {
        panic!("a 16 MiB string fits in 8 MiB?");
    };
    assert_eq!(
        f.kind,
        FailureKind::OutOfMemory {
            limit_bytes: 8 << 20
        }
    );
}

#[test]
fn a_panic_is_reported_with_its_message() {
    let f = failure("panic");
    let FailureKind::Panic(message) = &f.kind else {
        panic!("{f}");
    };
    assert!(
        message.starts_with("hostile plugin panicked on purpose (at "),
        "{message}"
    );
    assert!(message.contains("src/lib.rs:"), "{message}");
}

#[test]
fn a_100_mb_string_is_contained() {
    // It cannot even be built inside the 64 MiB sandbox.
    let f = failure("huge-string");
    assert!(matches!(f.kind, FailureKind::OutOfMemory { .. }), "{f}");
}

#[test]
fn an_oversized_note_is_refused() {
    let scratch = Scratch::new();
    let wasm = plugin_wasm("hostile");
    let toml = format!(
        "[sandbox]\ntimeout-ms = 10000\n{}",
        entry(
            "rogue",
            &wasm,
            "[plugin.settings]\nmode = \"huge-string\"\nbytes = 1048576",
        )
    );
    let config = Config::load(&ConfigSources::only(scratch.write("c.toml", &toml))).unwrap();
    let policy = Policy::load(&config, &PolicyOptions::default()).unwrap();
    let Outcome::Failed(f) = policy
        .resolve(&image(), &Context::new(Purpose::Pull))
        .outcome
    else {
        panic!("a 1 MiB note was accepted");
    };
    assert_eq!(
        f.kind,
        FailureKind::InvalidOutput("source #1: a note of 1048576 bytes (at most 512)".into())
    );
}

#[test]
fn a_flag_as_registry_never_gets_through() {
    let f = failure("bind-registry");
    let FailureKind::InvalidOutput(why) = &f.kind else {
        panic!("{f}");
    };
    assert!(
        why.contains("registry \"--bind=/:/x\" is not host[:port]"),
        "{why}"
    );
}

#[test]
fn a_tag_with_spaces_never_gets_through() {
    let f = failure("tag-with-spaces");
    let FailureKind::InvalidOutput(why) = &f.kind else {
        panic!("{f}");
    };
    assert!(
        why.contains("tag \"1.0 --bind /:/x\" is not valid"),
        "{why}"
    );
}

#[test]
fn other_invalid_output_is_refused() {
    for (mode, expect) in [
        ("shell-repository", "repository \"library/ubuntu;reboot\""),
        ("bad-digest", "digest \"sha256:ABC\""),
        ("empty-plan", "an empty plan"),
        ("many-sources", "a plan of 10000 sources"),
    ] {
        let f = failure(mode);
        let FailureKind::InvalidOutput(why) = &f.kind else {
            panic!("{mode}: {f}");
        };
        assert!(why.contains(expect), "{mode}: {why}");
    }
}

#[test]
fn a_plugin_built_against_another_world_is_refused_at_load() {
    let scratch = Scratch::new();
    let wasm = plugin_wasm("wrong_world");
    let path = scratch.write("c.toml", &entry("other", &wasm, ""));
    let config = Config::load(&ConfigSources::only(path)).unwrap();
    let err = Policy::load(&config, &PolicyOptions::default()).unwrap_err();
    assert!(
        matches!(
            err,
            Error::PluginLoad(PluginLoadError::WrongContract { .. })
        ),
        "{err}"
    );
    let shown = err.to_string();
    assert!(
        shown.contains("does not export sifr:policy/policy@0.1.0"),
        "{shown}"
    );
    assert!(
        shown.contains("acme:filter/filter@2.0.0"),
        "names what it found: {shown}"
    );
}

#[test]
fn files_that_are_not_components_are_refused_at_load() {
    let scratch = Scratch::new();
    for (name, bytes, expect) in [
        (
            "core.wasm",
            &b"\0asm\x01\0\0\0"[..],
            "core WebAssembly module, not a component",
        ),
        (
            "junk.wasm",
            &b"#!/bin/sh\nrm -rf /\n"[..],
            "not a valid WebAssembly component",
        ),
    ] {
        let wasm = scratch.path().join(name);
        std::fs::write(&wasm, bytes).unwrap();
        let path = scratch.write("c.toml", &entry("x", &wasm, ""));
        let config = Config::load(&ConfigSources::only(path)).unwrap();
        let err = Policy::load(&config, &PolicyOptions::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains(expect), "{name}: {err}");
    }
}

#[test]
fn fail_open_skips_the_plugin_with_a_warning_and_keeps_the_plan() {
    let scratch = Scratch::new();
    let wasm = plugin_wasm("hostile");
    let toml = format!(
        "{}[[plugin]]\nname = \"default\"\nbuiltin = \"default\"\n",
        entry(
            "rogue",
            &wasm,
            "on-error = \"fail-open\"\n[plugin.settings]\nmode = \"loop\""
        )
    );
    let config = Config::load(&ConfigSources::only(scratch.write("c.toml", &toml))).unwrap();
    let policy = Policy::load(&config, &PolicyOptions::default()).unwrap();
    let resolution = policy.resolve(&image(), &Context::new(Purpose::Pull));
    assert!(
        matches!(&resolution.steps[0].outcome, StepOutcome::Skipped { error } if error.contains("deadline")),
        "{:?}",
        resolution.steps[0]
    );
    let plan = resolution.into_plan().unwrap();
    assert_eq!(plan[0].uri(), "docker://ncbi/blast:2.14.0");
}

#[test]
fn settings_can_be_rejected_with_the_plugins_message() {
    let scratch = Scratch::new();
    let err = hostile(&scratch, "configure-reject", "")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("refused its settings: this plugin rejects every setting"),
        "{err}"
    );
}

#[test]
fn stdout_stderr_and_logs_are_captured_and_capped() {
    let scratch = Scratch::new();
    let policy = hostile_in(&scratch, "chatty", "", "timeout-ms = 10000").unwrap();
    let resolution = policy.resolve(&image(), &Context::new(Purpose::Pull));
    let logs = &resolution.steps[0].logs;
    let messages: Vec<&str> = logs.iter().map(|l| l.message.as_str()).collect();
    assert_eq!(messages[0], "log line 0");
    assert!(
        messages.contains(&"[stdout] hello on stdout"),
        "{messages:?}"
    );
    assert!(
        messages.contains(&"[stderr] hello on stderr"),
        "{messages:?}"
    );
    let dropped = logs.last().unwrap();
    assert_eq!(dropped.level, LogLevel::Warn);
    assert_eq!(
        dropped.message,
        "9744 more log lines were dropped (at most 256 a call)"
    );
    assert!(matches!(resolution.outcome, Outcome::Plan(_)));
}
