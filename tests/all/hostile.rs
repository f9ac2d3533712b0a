//! Deliberately hostile and buggy plugins are contained: each ends in a
//! clear error that names the plugin, its hash, the function and what
//! happened, and the host keeps working for the next call.

use crate::common;
use crate::components;

use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use common::{Scratch, entry, plugin_wasm, stderr, stdout};
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
    Ok(Policy::load(&config, &PolicyOptions::default())?)
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
            "[plugin.settings]\nmode = \"huge-string\"\nbytes = 600",
        )
    );
    let config = Config::load(&ConfigSources::only(scratch.write("c.toml", &toml))).unwrap();
    let policy = Policy::load(&config, &PolicyOptions::default()).unwrap();
    let Outcome::Failed(f) = policy
        .resolve(&image(), &Context::new(Purpose::Pull))
        .outcome
    else {
        panic!("a 600-byte note was accepted");
    };
    assert_eq!(
        f.kind,
        FailureKind::InvalidOutput("source #1: a note of 600 bytes (at most 512)".into())
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
        ("many-sources", "a plan of 100 sources (at most 32)"),
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
    let err = Error::from(Policy::load(&config, &PolicyOptions::default()).unwrap_err());
    assert!(
        matches!(
            err,
            Error::PluginLoad(PluginLoadError::WrongContract { .. })
        ),
        "{err}"
    );
    let shown = err.to_string();
    assert!(
        shown.contains("does not export sifr:policy/policy@0.2.0"),
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
    assert_eq!(messages[255], "log line 255");
    let dropped = logs.last().unwrap();
    assert_eq!(dropped.level, LogLevel::Warn);
    // 10,000 `log` lines and one line each on stdout and stderr share the
    // cap of 256 a call.
    assert_eq!(
        dropped.message,
        "9746 more log lines were dropped (at most 256 a call, stdout and stderr included)"
    );
    assert!(matches!(resolution.outcome, Outcome::Plan(_)));
}

// ---------------------------------------------------------------------------
// Attacks on the limits themselves: each test below fails if the limit it
// names does not hold.

/// Run `f` on a thread and fail the test if it has not returned after
/// `limit`: the attacks below block for an hour when a deadline does not
/// hold, and the test must say so rather than hang.
fn within<T: Send + 'static>(limit: Duration, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(limit)
        .unwrap_or_else(|_| panic!("still running after {limit:?}: the deadline did not hold"))
}

/// The policy of one plugin file, with `sandbox` lines under [sandbox].
fn policy_of(scratch: &Scratch, wasm: &Path, sandbox: &str) -> Result<Policy, Error> {
    let toml = format!("[sandbox]\n{sandbox}\n{}", entry("rogue", wasm, ""));
    let config = Config::load(&ConfigSources::only(scratch.write("c.toml", &toml)))?;
    Ok(Policy::load(&config, &PolicyOptions::default())?)
}

/// The failure that loading `wasm` ends in (`configure` runs at load).
fn load_failure(wasm: &Path, sandbox: &str) -> sifr::PluginFailure {
    let scratch = Scratch::new();
    match policy_of(&scratch, wasm, sandbox) {
        Err(Error::PluginLoad(PluginLoadError::Failed { failure, .. })) => *failure,
        Err(other) => panic!("failed otherwise: {other}"),
        Ok(_) => panic!("{} loaded", wasm.display()),
    }
}

/// What loading the component `build` writes ends in, with a deadline
/// generous enough that the limit under test trips, not the clock.
fn load_failure_of(build: impl FnOnce(&Path) -> std::path::PathBuf) -> sifr::PluginFailure {
    let scratch = Scratch::new();
    load_failure(&build(scratch.path()), "timeout-ms = 10000")
}

const HOUR_BOUND: Duration = Duration::from_secs(120);

#[test]
fn a_sleep_in_decide_is_stopped_at_the_deadline() {
    // std::thread::sleep is a WASI clock subscription and a blocking
    // `pollable.block`: host code, where epoch interruption never fires.
    let f = within(HOUR_BOUND, || {
        let scratch = Scratch::new();
        let policy = hostile_in(&scratch, "sleep", "", "").unwrap();
        match policy
            .resolve(&image(), &Context::new(Purpose::Pull))
            .outcome
        {
            Outcome::Failed(f) => f,
            other => panic!("{other:?}"),
        }
    });
    assert_eq!(f.function, "decide");
    assert_eq!(f.kind, FailureKind::Blocked(Duration::from_millis(100)));
    let shown = f.to_string();
    assert!(
        shown.contains("blocked past its 100 ms deadline in a clock wait or poll in decide()"),
        "{shown}"
    );
}

#[test]
fn a_poll_on_far_off_clocks_is_stopped_at_the_deadline() {
    let f = within(HOUR_BOUND, || failure("poll"));
    assert!(matches!(f.kind, FailureKind::Blocked(_)), "{f}");
}

#[test]
fn a_sleep_in_configure_fails_loading_at_the_deadline() {
    let err = within(HOUR_BOUND, || {
        let scratch = Scratch::new();
        hostile(&scratch, "configure-sleep", "").unwrap_err()
    });
    let Error::PluginLoad(PluginLoadError::Failed { failure, .. }) = &err else {
        panic!("{err}");
    };
    assert_eq!(failure.function, "configure");
    assert_eq!(
        failure.kind,
        FailureKind::Blocked(Duration::from_millis(100))
    );
}

#[test]
fn blocking_during_instantiation_is_stopped_at_the_deadline() {
    let f = within(HOUR_BOUND, || {
        let scratch = Scratch::new();
        let wasm = components::blocking_start(scratch.path());
        load_failure(&wasm, "")
    });
    assert_eq!(f.function, "configure");
    assert_eq!(f.kind, FailureKind::Blocked(Duration::from_millis(100)));
}

#[test]
fn fail_open_does_not_wait_for_a_sleeping_plugin() {
    let resolution = within(HOUR_BOUND, || {
        let scratch = Scratch::new();
        let wasm = plugin_wasm("hostile");
        let toml = format!(
            "{}[[plugin]]\nname = \"default\"\nbuiltin = \"default\"\n",
            entry(
                "rogue",
                &wasm,
                "on-error = \"fail-open\"\n[plugin.settings]\nmode = \"sleep\""
            )
        );
        let config = Config::load(&ConfigSources::only(scratch.write("c.toml", &toml))).unwrap();
        let policy = Policy::load(&config, &PolicyOptions::default()).unwrap();
        policy.resolve(&image(), &Context::new(Purpose::Pull))
    });
    assert!(
        matches!(&resolution.steps[0].outcome, StepOutcome::Skipped { error } if error.contains("blocked past")),
        "{:?}",
        resolution.steps[0]
    );
    assert_eq!(
        resolution.into_plan().unwrap()[0].uri(),
        "docker://ncbi/blast:2.14.0"
    );
}

#[test]
fn all_memories_of_a_plugin_share_one_budget() {
    // 7 memories besides the main one, 40 MiB each: each fits in 64 MiB,
    // together they do not.
    let f = load_failure_of(|dir| components::many_memories(dir, 7, 40));
    assert_eq!(
        f.kind,
        FailureKind::OutOfMemory {
            limit_bytes: 64 << 20
        },
        "{f}"
    );
    assert!(
        f.to_string().contains("exceeded its 64 MiB memory limit"),
        "{f}"
    );
}

#[test]
fn the_number_of_memories_is_bounded() {
    let f = load_failure_of(|dir| components::many_memories(dir, 16, 0));
    assert_eq!(
        f.kind,
        FailureKind::ResourceLimit("more than 8 memories".into()),
        "{f}"
    );
}

#[test]
fn the_number_of_core_instances_is_bounded() {
    let f = load_failure_of(|dir| components::many_instances(dir, 100));
    assert_eq!(
        f.kind,
        FailureKind::ResourceLimit("more than 64 instances".into()),
        "{f}"
    );
    // The same component with a few extra instances loads: the count is
    // what is refused.
    let scratch = Scratch::new();
    let few = components::many_instances(scratch.path(), 4);
    assert!(policy_of(&scratch, &few, "timeout-ms = 10000").is_ok());
}

#[test]
fn table_elements_are_bounded_over_all_tables() {
    let f = load_failure_of(|dir| components::many_tables(dir, 2, 60_000));
    assert_eq!(
        f.kind,
        FailureKind::ResourceLimit("more than 100000 table elements in all".into()),
        "{f}"
    );
}

#[test]
fn the_number_of_tables_is_bounded() {
    let f = load_failure_of(|dir| components::many_tables(dir, 100, 1_000));
    assert_eq!(
        f.kind,
        FailureKind::ResourceLimit("more than 64 tables".into()),
        "{f}"
    );
}

#[test]
fn a_full_wasi_resource_table_is_named() {
    let f = failure("handles");
    assert_eq!(
        f.kind,
        FailureKind::ResourceLimit(
            "WASI resource table full (at most 1000 handles at once)".into()
        ),
        "{f}"
    );
    assert!(!f.to_string().contains("backtrace"), "{f}");
}

#[test]
fn output_is_not_copied_past_the_hostcall_cap() {
    for mode in ["flood", "log-flood"] {
        let f = failure(mode);
        let FailureKind::InvalidOutput(why) = &f.kind else {
            panic!("{mode}: {f}");
        };
        assert!(
            why.starts_with("more than 64 KiB in one call"),
            "{mode}: {why}"
        );
    }
}

#[test]
fn stdout_and_stderr_lines_share_the_log_line_cap() {
    let scratch = Scratch::new();
    let policy = hostile_in(&scratch, "stderr-lines", "", "timeout-ms = 10000").unwrap();
    let resolution = policy.resolve(&image(), &Context::new(Purpose::Pull));
    let logs = &resolution.steps[0].logs;
    assert_eq!(logs[0].message, "[stderr] w0", "stderr is captured");
    assert_eq!(logs[0].level, LogLevel::Warn);
    assert!(logs.len() <= 256 + 2, "{} lines kept", logs.len());
    let last = &logs.last().unwrap().message;
    assert!(
        last.ends_with(
            "more log lines were dropped (at most 256 a call, stdout and stderr included)"
        ),
        "{last}"
    );
    // The pipe keeps 64 KiB: "wNNNNN\n" lines, of which 256 are shown.
    let dropped: usize = last.split(' ').next().unwrap().parse().unwrap();
    assert!(dropped > 5_000, "{last}");
}

#[test]
fn stdout_past_its_cap_is_cut_and_says_so() {
    let scratch = Scratch::new();
    let policy = hostile_in(&scratch, "stdout-flood", "", "timeout-ms = 10000").unwrap();
    let resolution = policy.resolve(&image(), &Context::new(Purpose::Pull));
    let messages: Vec<&str> = resolution.steps[0]
        .logs
        .iter()
        .map(|l| l.message.as_str())
        .collect();
    // 200 lines of 1 KiB were written; 64 KiB were kept.
    let kept = messages
        .iter()
        .filter(|m| m.starts_with("[stdout] yyy"))
        .count();
    assert!((60..=64).contains(&kept), "{kept} lines kept");
    assert!(
        messages.contains(&"[stdout] cut: a plugin may write at most 64 KiB a call"),
        "{messages:?}"
    );
}

#[test]
fn site_locked_plugins_keep_the_site_limits() {
    let scratch = Scratch::new();
    let wasm = plugin_wasm("hostile");
    // The site gives its fail-open plugin 10 s and 64 MiB; the user tries to
    // starve it so that it fails and is skipped.
    let site = scratch.write(
        "site.toml",
        &format!(
            "[sandbox]\ntimeout-ms = 10000\nmemory-mib = 64\n{}",
            entry(
                "site-rules",
                &wasm,
                "locked = true\non-error = \"fail-open\"\n[plugin.settings]\nmode = \"deny\""
            )
        ),
    );
    let user = scratch.write(
        "user.toml",
        "plugin = []\n[sandbox]\ntimeout-ms = 1\nmemory-mib = 1\n",
    );
    let sources = ConfigSources {
        site: Some(site),
        cli: Some(user),
        ..ConfigSources::default()
    };
    let config = Config::load(&sources).unwrap();
    assert_eq!(config.sandbox.timeout, Duration::from_millis(1));
    assert_eq!(config.site_sandbox.timeout, Duration::from_millis(10_000));
    assert_eq!(config.sandbox.memory_bytes, 1 << 20);
    let policy = Policy::load(&config, &PolicyOptions::default()).unwrap();
    let site_rules = &policy.plugins()[0];
    assert_eq!(site_rules.name, "site-rules");
    assert_eq!(site_rules.limits.timeout, Duration::from_millis(10_000));
    assert_eq!(site_rules.limits.memory_bytes, 64 << 20);
    // The site's rule still has the last word.
    let resolution = policy.resolve(&image(), &Context::new(Purpose::Pull));
    assert!(
        matches!(&resolution.outcome, Outcome::Deny { plugin, .. } if plugin == "site-rules"),
        "{:?}",
        resolution.steps
    );
}

// ---------------------------------------------------------------------------
// What the sifr process itself holds while a plugin attacks.

/// Run `sifr` with `args` and return its output and peak resident set (KiB),
/// read with wait4 for that child alone.
#[expect(
    clippy::zombie_processes,
    reason = "the child is reaped by wait4, which std's wait cannot give rusage for"
)]
fn sifr_with_rusage(scratch: &Scratch, args: &[&str]) -> (std::process::ExitStatus, i64) {
    use std::os::unix::process::ExitStatusExt;
    let child = crate::common::sifr_command(scratch.path())
        .args(args)
        .env("SIFR_CACHE_DIR", scratch.path().join("cache"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut status = 0;
    // SAFETY: a zeroed rusage is a valid value for wait4 to fill in.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: the pid is our own unwaited child; both pointers are valid.
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    assert_eq!(pid, child.id() as i32);
    (std::process::ExitStatus::from_raw(status), usage.ru_maxrss)
}

#[test]
fn peak_memory_stays_bounded_while_a_plugin_attacks() {
    let scratch = Scratch::new();
    // Baseline in the same run: the built-in chain, the same work otherwise.
    let (status, baseline) = sifr_with_rusage(&scratch, &["resolve", "ubuntu:22.04"]);
    assert!(status.success());
    // 7 memories of 60 MiB, each written in full: 420 MiB resident if the
    // budget were per memory.
    let wasm = components::many_memories(scratch.path(), 7, 60);
    let config = scratch.write(
        "attack.toml",
        &format!(
            "[sandbox]\ntimeout-ms = 10000\n{}",
            entry("rogue", &wasm, "")
        ),
    );
    let (status, attacked) = sifr_with_rusage(
        &scratch,
        &[
            "--config",
            config.to_str().unwrap(),
            "resolve",
            "ubuntu:22.04",
        ],
    );
    assert_eq!(status.code(), Some(3), "the plugin fails to load");
    let budget_kib = 64 << 10;
    assert!(
        attacked < baseline + budget_kib + (32 << 10),
        "peak RSS {attacked} KiB under attack, {baseline} KiB without"
    );
}

/// `sifr ARGS` under an address-space limit, as `ulimit -v` sets on HPC
/// login and batch nodes.
fn sifr_under_address_limit(scratch: &Scratch, bytes: u64, args: &[&str]) -> std::process::Output {
    use std::os::unix::process::CommandExt;
    let mut cmd = crate::common::sifr_command(scratch.path());
    cmd.args(args)
        .env("SIFR_CACHE_DIR", scratch.path().join("cache"));
    // SAFETY: setrlimit is async-signal-safe, as pre_exec requires.
    unsafe {
        cmd.pre_exec(move || {
            let limit = libc::rlimit {
                rlim_cur: bytes,
                rlim_max: bytes,
            };
            if libc::setrlimit(libc::RLIMIT_AS, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.output().unwrap()
}

#[test]
fn sifr_resolves_under_a_2_gib_address_space_limit() {
    let scratch = Scratch::new();
    std::fs::create_dir_all(scratch.path().join("config/sifr")).unwrap();
    scratch.write("config/sifr/config.toml", "[sandbox]\ntimeout-ms = 10000\n");
    let two_gib = 2 << 30;
    // The built-in chain, twice: compiling cold, then from the cache.
    for _ in 0..2 {
        let out = sifr_under_address_limit(&scratch, two_gib, &["resolve", "ubuntu:22.04"]);
        assert!(out.status.success(), "{}", stderr(&out));
        assert_eq!(stdout(&out), "docker://ubuntu:22.04\n");
    }
    // A 3-plugin chain.
    let chain = scratch.write(
        "chain.toml",
        "[sandbox]\ntimeout-ms = 10000\n\
         [[plugin]]\nname = \"hub\"\nbuiltin = \"mirror\"\n[plugin.settings]\n\
         registries = [\"docker.io\"]\n[[plugin.settings.mirrors]]\n\
         registry = \"mirror.example.org\"\nprefix = \"hub\"\n\
         [[plugin]]\nname = \"rules\"\nbuiltin = \"tags\"\n[plugin.settings]\ndeny-latest = true\n\
         [[plugin]]\nname = \"default\"\nbuiltin = \"default\"\n",
    );
    let out = sifr_under_address_limit(
        &scratch,
        two_gib,
        &[
            "--config",
            chain.to_str().unwrap(),
            "resolve",
            "ubuntu:22.04",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "docker://mirror.example.org/hub/library/ubuntu:22.04\ndocker://ubuntu:22.04\n"
    );
}

// ---------------------------------------------------------------------------
// Untrusted text: nothing a plugin or a wasm file says reaches a terminal raw.

#[test]
fn no_output_channel_carries_raw_escapes_or_bidi_controls() {
    let scratch = Scratch::new();
    let wasm = plugin_wasm("hostile");
    let mut outputs = Vec::new();
    let config = |mode: &str| {
        scratch.write(
            &format!("{mode}.toml"),
            &format!(
                "[sandbox]\ntimeout-ms = 10000\n{}",
                entry(
                    "rogue",
                    &wasm,
                    &format!("[plugin.settings]\nmode = \"{mode}\"")
                )
            ),
        )
    };
    for mode in [
        "escapes",
        "deny-escapes",
        "panic-escapes",
        "configure-reject-escapes",
    ] {
        let config = config(mode);
        let config = config.to_str().unwrap();
        let settings = scratch.write(
            &format!("{mode}.settings.toml"),
            &format!("mode = \"{mode}\""),
        );
        let settings = settings.to_str().unwrap();
        let wasm = wasm.to_str().unwrap();
        let check = [
            "plugin",
            "check",
            "--timeout-ms",
            "10000",
            "--settings",
            settings,
            wasm,
        ];
        for args in [
            &["-vv", "--config", config, "resolve", "ubuntu"][..],
            &["-vv", "--config", config, "resolve", "--explain", "ubuntu"],
            &["--config", config, "resolve", "--json", "ubuntu"],
            &[&check[..], &["ubuntu"]].concat(),
            &[&check[..], &["--json", "ubuntu"]].concat(),
        ] {
            outputs.push((format!("{mode}: {args:?}"), scratch.sifr(args)));
        }
    }
    for file in [
        components::trap_in_evil_name(scratch.path()),
        components::evil_export_name(scratch.path()),
    ] {
        let file = file.to_str().unwrap();
        outputs.push((
            format!("plugin check {file}"),
            scratch.sifr(&["plugin", "check", file, "ubuntu"]),
        ));
        outputs.push((
            format!("plugin check --json {file}"),
            scratch.sifr(&["plugin", "check", "--json", file, "ubuntu"]),
        ));
    }
    for (what, out) in &outputs {
        for (channel, text) in [("stdout", stdout(out)), ("stderr", stderr(out))] {
            let raw = components::raw_controls(&text);
            assert!(raw.is_empty(), "{what}: raw {raw:?} on {channel}:\n{text}");
        }
    }
    // And the escaped text is still there to read.
    let all: String = outputs
        .iter()
        .map(|(_, o)| stdout(o) + &stderr(o))
        .collect();
    for shown in ["\\u{1b}[2J", "\\u{202e}gnp.exe", "\\u{d}"] {
        assert!(all.contains(shown), "{shown} not shown escaped");
    }
}

#[test]
fn wasi_gives_a_plugin_nothing_of_the_host() {
    let scratch = Scratch::new();
    let wasm = plugin_wasm("hostile");
    let config = scratch.write(
        "probe.toml",
        &format!(
            "[sandbox]\ntimeout-ms = 10000\n{}",
            entry("rogue", &wasm, "[plugin.settings]\nmode = \"probe\"")
        ),
    );
    let canary = format!("canary-{}", std::process::id());
    let out = crate::common::sifr_command(scratch.path())
        .args([
            "--config",
            config.to_str().unwrap(),
            "resolve",
            "--json",
            "ubuntu",
        ])
        .current_dir(scratch.path())
        .env("SIFR_CACHE_DIR", scratch.path().join("cache"))
        .env("SIFR_TEST_CANARY", &canary)
        .stdin(std::process::Stdio::piped())
        .output()
        .unwrap();
    let text = stdout(&out) + &stderr(&out);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let probes: Vec<String> = json[0]["steps"][0]["logs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["message"].as_str().unwrap().to_string())
        .filter(|m| m.starts_with("probe "))
        .collect();
    // Every door was tried: env, args, cwd, 4 reads, 4 listings, a write,
    // 2 TCP, UDP, DNS and stdin.
    assert_eq!(probes.len(), 17, "{probes:#?}");
    assert!(
        probes.contains(&"probe env: 0 variables []".to_string()),
        "{probes:#?}"
    );
    assert!(
        probes.contains(&"probe args: 0 []".to_string()),
        "{probes:#?}"
    );
    for probe in &probes {
        if ["probe env", "probe args", "probe cwd"]
            .iter()
            .any(|p| probe.starts_with(p))
        {
            continue;
        }
        assert!(probe.contains(": denied ("), "{probe}");
    }
    // The working directory a plugin sees is WASI's own, never sifr's.
    let scratch_dir = scratch.path().to_string_lossy().into_owned();
    assert!(!text.contains(&scratch_dir), "{text}");
    assert!(
        !text.contains(&canary),
        "the canary in sifr's environment reached the plugin: {text}"
    );
    assert!(!scratch.path().join("planted").exists());
}
