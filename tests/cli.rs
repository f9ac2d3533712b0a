//! The `sifr` binary as users and scripts meet it: output, errors and exit codes.

mod common;

use common::{Scratch, entry, plugin_wasm, stderr, stdout};

const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

#[test]
fn resolve_prints_the_uris_apptainer_would_receive() {
    let scratch = Scratch::new();
    let cases = [
        (
            "ncbi/blast:2.14.0",
            "docker://ncbi/blast:2.14.0".to_string(),
        ),
        (
            &*format!("ubuntu:22.04@{DIGEST}"),
            format!("docker://ubuntu@{DIGEST}"),
        ),
        (
            "quay.io/biocontainers/blast:2.15.0",
            "docker://quay.io/biocontainers/blast:2.15.0".to_string(),
        ),
        (
            "localhost:5000/foo/bar:1.0",
            "docker://localhost:5000/foo/bar:1.0".to_string(),
        ),
    ];
    for (image, uri) in cases {
        let out = scratch.sifr(&["resolve", image]);
        assert_eq!(out.status.code(), Some(0), "{image}: {}", stderr(&out));
        assert_eq!(stdout(&out), format!("{uri}\n"), "{image}");
        assert_eq!(stderr(&out), "", "quiet on success");
    }
}

#[test]
fn resolve_with_mirrors_lists_them_in_try_order() {
    let scratch = Scratch::new();
    let config = scratch.write(
        "site.toml",
        "[[plugin]]\nname = \"hub\"\nbuiltin = \"mirror\"\n[plugin.settings]\n\
         registries = [\"docker.io\"]\n[[plugin.settings.mirrors]]\n\
         registry = \"127.0.0.1:5001\"\nprefix = \"hub\"\nplain-http = true\n",
    );
    let out = scratch.sifr(&[
        "--config",
        config.to_str().unwrap(),
        "resolve",
        "ncbi/blast:2.14.0",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "docker://127.0.0.1:5001/hub/ncbi/blast:2.14.0\ndocker://ncbi/blast:2.14.0\n"
    );

    let out = scratch.sifr(&[
        "--config",
        config.to_str().unwrap(),
        "resolve",
        "--json",
        "ncbi/blast:2.14.0",
    ]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let plan = &json[0];
    assert_eq!(plan["outcome"], "plan");
    assert_eq!(plan["canonical"], "docker.io/ncbi/blast:2.14.0");
    assert_eq!(plan["sources"][0]["plain_http"], true);
    assert_eq!(plan["sources"][0]["note"], "mirror of docker.io");
    assert_eq!(plan["sources"][0]["reference"]["tag"], "2.14.0");
    assert_eq!(plan["sources"][1]["uri"], "docker://ncbi/blast:2.14.0");
    assert_eq!(plan["steps"][0]["plugin"], "hub");

    let out = scratch.sifr(&[
        "--config",
        config.to_str().unwrap(),
        "resolve",
        "--explain",
        "ncbi/blast:2.14.0",
    ]);
    let text = stdout(&out);
    assert!(text.contains("step 1: plugin 'hub' (sha256:"), "{text}");
    assert!(
        text.contains(
            "1. docker://127.0.0.1:5001/hub/ncbi/blast:2.14.0 (plain HTTP)  # mirror of docker.io"
        ),
        "{text}"
    );
    assert!(text.contains("result: try in this order"), "{text}");
}

#[test]
fn an_invalid_reference_exits_5_and_says_why() {
    let scratch = Scratch::new();
    let out = scratch.sifr(&["resolve", "Ubuntu:22.04"]);
    assert_eq!(out.status.code(), Some(5));
    assert_eq!(stdout(&out), "");
    let err = stderr(&out);
    assert!(
        err.contains("invalid image reference \"Ubuntu:22.04\""),
        "{err}"
    );
    assert!(err.contains("try \"ubuntu\""), "{err}");
}

#[test]
fn a_denial_exits_4_with_the_reason_on_stderr() {
    let scratch = Scratch::new();
    let config = scratch.write(
        "c.toml",
        &entry(
            "no-latest",
            &plugin_wasm("hostile"),
            "[plugin.settings]\nmode = \"deny\"",
        ),
    );
    let out = scratch.sifr(&[
        "--config",
        config.to_str().unwrap(),
        "resolve",
        "ubuntu:latest",
    ]);
    assert_eq!(out.status.code(), Some(4));
    assert_eq!(stdout(&out), "");
    assert!(
        stderr(&out).contains("denied by plugin 'no-latest': hostile plugin says no"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_failing_plugin_exits_6_and_a_broken_config_exits_3_with_its_location() {
    let scratch = Scratch::new();
    let config = scratch.write(
        "c.toml",
        &entry(
            "rogue",
            &plugin_wasm("hostile"),
            "[plugin.settings]\nmode = \"panic\"",
        ),
    );
    let out = scratch.sifr(&["--config", config.to_str().unwrap(), "resolve", "ubuntu"]);
    assert_eq!(out.status.code(), Some(6));
    assert!(
        stderr(&out).contains("panicked: hostile plugin panicked on purpose"),
        "{}",
        stderr(&out)
    );

    let config = scratch.write("bad.toml", "[sandbox]\ntimeout_ms = 5\n");
    let out = scratch.sifr(&["--config", config.to_str().unwrap(), "resolve", "ubuntu"]);
    assert_eq!(out.status.code(), Some(3));
    let err = stderr(&out);
    assert!(
        err.contains("bad.toml:2:1") && err.contains("unknown field `timeout_ms`"),
        "{err}"
    );
}

#[test]
fn sifr_config_is_a_layer_of_its_own() {
    let scratch = Scratch::new();
    let config = scratch.write("env.toml", "plugin = []\n[sandbox]\nwhat = 1\n");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sifr"))
        .args(["resolve", "ubuntu"])
        .env("SIFR_CONFIG", &config)
        .env("XDG_CONFIG_HOME", scratch.path())
        .env("SIFR_CACHE_DIR", scratch.path().join("cache"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(stderr(&out).contains("env.toml:3:1"), "{}", stderr(&out));
}

#[test]
fn plugin_ls_shows_the_chain_and_the_second_run_does_not_compile() {
    let scratch = Scratch::new();
    let run = || {
        let out = scratch.sifr(&["plugin", "ls", "--json"]);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let first = run();
    let plugin = &first["plugins"][0];
    assert_eq!(plugin["name"], "default");
    assert_eq!(plugin["source"], "builtin:default");
    assert_eq!(plugin["api-version"], "0.1.0");
    assert_eq!(plugin["sha256"].as_str().unwrap().len(), 64);
    assert_eq!(plugin["artifact"], "compiled");
    assert_eq!(run()["plugins"][0]["artifact"], "cache-hit");

    let out = scratch.sifr(&["plugin", "ls"]);
    let text = stdout(&out);
    assert!(text.contains("1. default (fail-closed)"), "{text}");
    assert!(text.contains("api:      sifr:policy@0.1.0"), "{text}");
}

#[test]
fn plugin_check_runs_a_plugin_offline() {
    let scratch = Scratch::new();
    let settings = scratch.write(
        "settings.toml",
        "registries = [\"*\"]\n[[mirrors]]\nregistry = \"mirror.example.org\"\n",
    );
    let wasm = plugin_wasm("mirror");
    let out = scratch.sifr(&[
        "plugin",
        "check",
        wasm.to_str().unwrap(),
        "--settings",
        settings.to_str().unwrap(),
        "quay.io/biocontainers/blast:2.15.0",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("settings accepted"), "{text}");
    assert!(
        text.contains(
            "1. docker://mirror.example.org/biocontainers/blast:2.15.0  # mirror of quay.io"
        ),
        "{text}"
    );
    assert!(
        text.contains("2. docker://quay.io/biocontainers/blast:2.15.0  # origin"),
        "{text}"
    );

    // Bad settings, a hostile plugin and the wrong contract all fail.
    let bad = scratch.write("bad.toml", "mirrors = 3\n");
    let out = scratch.sifr(&[
        "plugin",
        "check",
        wasm.to_str().unwrap(),
        "--settings",
        bad.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(3));
    assert!(
        stderr(&out).contains("refused its settings"),
        "{}",
        stderr(&out)
    );

    let loop_settings = scratch.write("loop.toml", "mode = \"loop\"\n");
    let hostile = plugin_wasm("hostile");
    let out = scratch.sifr(&[
        "plugin",
        "check",
        hostile.to_str().unwrap(),
        "--settings",
        loop_settings.to_str().unwrap(),
        "ubuntu",
    ]);
    assert_eq!(out.status.code(), Some(6));
    assert!(stdout(&out).contains("FAILED: plugin"), "{}", stdout(&out));

    let other = plugin_wasm("wrong_world");
    let out = scratch.sifr(&["plugin", "check", other.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(3));
    assert!(
        stderr(&out).contains("is not a sifr policy plugin"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn verbose_shows_plugin_logs_and_quiet_hides_warnings() {
    let scratch = Scratch::new();
    let config = scratch.write(
        "c.toml",
        &format!(
            "{}{}",
            entry("rogue", &plugin_wasm("hostile"), "on-error = \"fail-open\"\n[plugin.settings]\nmode = \"loop\""),
            "[[plugin]]\nname = \"hub\"\nbuiltin = \"mirror\"\n[plugin.settings]\nregistries = [\"docker.io\"]\n\
             [[plugin.settings.mirrors]]\nregistry = \"m.example\"\n"
        ),
    );
    let c = config.to_str().unwrap();
    let out = scratch.sifr(&["--config", c, "resolve", "quay.io/a/b:1"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(
        stderr(&out).contains("warning: skipping fail-open plugin: plugin 'rogue'"),
        "{}",
        stderr(&out)
    );
    assert!(
        !stderr(&out).contains("is not mirrored"),
        "debug logs hidden by default"
    );

    let out = scratch.sifr(&["--config", c, "-vv", "resolve", "quay.io/a/b:1"]);
    assert!(
        stderr(&out).contains("plugin 'hub': debug: quay.io is not mirrored"),
        "{}",
        stderr(&out)
    );

    let out = scratch.sifr(&["--config", c, "-q", "resolve", "quay.io/a/b:1"]);
    assert_eq!(stderr(&out), "");
    assert_eq!(stdout(&out), "docker://quay.io/a/b:1\n");
}

#[test]
fn help_teaches_and_usage_errors_exit_2() {
    let scratch = Scratch::new();
    let out = scratch.sifr(&["resolve", "--help"]);
    let text = stdout(&out);
    assert!(text.contains("sifr resolve --explain"), "{text}");
    let out = scratch.sifr(&["resolve"]);
    assert_eq!(out.status.code(), Some(2));
}
