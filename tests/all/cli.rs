//! The `sifr` binary as users and scripts meet it: output, errors and exit codes.

use crate::common;

use common::{Scratch, entry, plugin_wasm, stderr, stdout};

/// A scratch home whose user config gives plugins a generous deadline: the
/// 100 ms default is not what these tests are about, and a loaded machine
/// can miss it. Tests of the deadline itself use [`Scratch::new`].
fn scratch() -> Scratch {
    let scratch = Scratch::new();
    std::fs::create_dir_all(scratch.path().join("config/sifr")).unwrap();
    scratch.write("config/sifr/config.toml", "[sandbox]\ntimeout-ms = 10000\n");
    scratch
}

const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

#[test]
fn resolve_prints_the_uris_apptainer_would_receive() {
    let scratch = scratch();
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

/// The README's first command, read from the README itself: the example
/// site policy shows a mirror ahead of its origin, and two denials, each
/// explained, with no network and no apptainer.
#[test]
fn the_readmes_first_command_shows_a_mirror_a_fallback_and_denials() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap();
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let command = readme
        .lines()
        .find(|line| line.starts_with("cargo run -p sifr -- "))
        .expect("the README's first command");
    let args: Vec<&str> = command
        .trim_start_matches("cargo run -p sifr -- ")
        .split_whitespace()
        .collect();
    let scratch = Scratch::new();
    let out = scratch.sifr_in(root, &args);
    assert_eq!(out.status.code(), Some(4), "denied: {}", stderr(&out));
    let text = stdout(&out);
    let blast = text.split("\n\n").next().unwrap();
    assert!(
        blast.ends_with(
            "  result: try in this order\n\
             \x20   1. docker://harbor.example.org/dockerhub/ncbi/blast:2.14.0\n\
             \x20   2. docker://ncbi/blast:2.14.0"
        ),
        "the mirror first, then Docker Hub:\n{text}"
    );
    assert!(
        blast.contains("# mirror of [[registry]] \"docker.io\" (registries.conf)"),
        "{text}"
    );
    assert!(
        text.contains(
            "  result: denied by 'site-rules': `:latest` is not reproducible (rule deny-latest)"
        ),
        "{text}"
    );
    assert!(
        text.contains(
            "  result: denied by 'site-registries': registry.example.com/lab/tool:1.0 is blocked \
             by registries.conf: [[registry]] prefix = \"registry.example.com\" has blocked = true"
        ),
        "{text}"
    );
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 2, "one error line per denial: {err}");
}

#[test]
fn resolve_with_mirrors_lists_them_in_try_order() {
    let scratch = scratch();
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
    let scratch = scratch();
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
    let scratch = scratch();
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
    let scratch = scratch();
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
    let chain = |name: &str| format!("[[plugin]]\nname = \"{name}\"\nbuiltin = \"default\"\n");
    std::fs::create_dir_all(scratch.path().join("config/sifr")).unwrap();
    let user = scratch.write(
        "config/sifr/config.toml",
        &format!(
            "[sandbox]\ntimeout-ms = 10000\nmemory-mib = 32\n{}",
            chain("user")
        ),
    );
    let env = scratch.write(
        "env.toml",
        &format!("[sandbox]\nmemory-mib = 48\n{}", chain("env")),
    );
    let env_sandbox_only = scratch.write("env-sandbox.toml", "[sandbox]\nmemory-mib = 40\n");
    let flag = scratch.write("flag.toml", &chain("flag"));
    let flag_empty = scratch.write("flag-empty.toml", "plugin = []\n");

    // `sifr plugin ls --json` with $SIFR_CONFIG and --config as given.
    let ls = |sifr_config: Option<&std::path::Path>, flag: Option<&std::path::Path>| {
        let mut cmd = common::sifr_command(scratch.path());
        if let Some(flag) = flag {
            cmd.arg("--config").arg(flag);
        }
        cmd.args(["plugin", "ls", "--json"])
            .env("SIFR_CACHE_DIR", scratch.path().join("cache"));
        if let Some(file) = sifr_config {
            cmd.env("SIFR_CONFIG", file);
        }
        let out = cmd.output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let names: Vec<String> = json["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap().to_string())
            .collect();
        let files: Vec<std::path::PathBuf> = json["config-files"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f.as_str().unwrap().into())
            .filter(|f: &std::path::PathBuf| f.starts_with(scratch.path()))
            .collect();
        let sandbox = (
            json["sandbox"]["timeout-ms"].as_u64().unwrap(),
            json["sandbox"]["memory-mib"].as_u64().unwrap(),
        );
        (names, files, sandbox)
    };

    // The user file alone.
    assert_eq!(
        ls(None, None),
        (vec!["user".into()], vec![user.clone()], (10000, 32))
    );
    // $SIFR_CONFIG comes after the user file: its chain wins, and its
    // sandbox keys override the user's one by one.
    assert_eq!(
        ls(Some(&env), None),
        (
            vec!["env".into()],
            vec![user.clone(), env.clone()],
            (10000, 48)
        )
    );
    // A layer without [[plugin]] keeps the chain of the one before.
    assert_eq!(
        ls(Some(&env_sandbox_only), None),
        (
            vec!["user".into()],
            vec![user.clone(), env_sandbox_only.clone()],
            (10000, 40)
        )
    );
    // --config comes after $SIFR_CONFIG.
    assert_eq!(
        ls(Some(&env), Some(&flag)),
        (
            vec!["flag".into()],
            vec![user.clone(), env.clone(), flag.clone()],
            (10000, 48)
        )
    );
    // ... and its `plugin = []` empties the chain.
    assert_eq!(
        ls(Some(&env), Some(&flag_empty)),
        (
            Vec::<String>::new(),
            vec![user.clone(), env.clone(), flag_empty.clone()],
            (10000, 48)
        )
    );

    // Unlike the user file, $SIFR_CONFIG must exist; and its errors name it.
    let missing = scratch.path().join("missing.toml");
    let bad = scratch.write("bad-env.toml", "plugin = []\n[sandbox]\nwhat = 1\n");
    for (file, expected) in [
        (&missing, "missing.toml".to_string()),
        (&bad, "bad-env.toml:3:1".to_string()),
    ] {
        let out = common::sifr_command(scratch.path())
            .args(["resolve", "ubuntu"])
            .env("SIFR_CONFIG", file)
            .env("SIFR_CACHE_DIR", scratch.path().join("cache"))
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
        assert!(stderr(&out).contains(&expected), "{}", stderr(&out));
    }
}

#[test]
fn plugin_ls_shows_the_chain_and_the_second_run_does_not_compile() {
    let scratch = scratch();
    let run = || {
        let out = scratch.sifr(&["plugin", "ls", "--json"]);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let first = run();
    let plugin = &first["plugins"][0];
    assert_eq!(plugin["name"], "default");
    assert_eq!(plugin["source"], "builtin:default");
    assert_eq!(plugin["api-version"], "0.2.0");
    assert_eq!(plugin["sha256"].as_str().unwrap().len(), 64);
    assert_eq!(plugin["artifact"], "compiled");
    assert_eq!(plugin["capabilities"], serde_json::json!([]));
    assert_eq!(run()["plugins"][0]["artifact"], "cache-hit");

    let out = scratch.sifr(&["plugin", "ls"]);
    let text = stdout(&out);
    assert!(text.contains("1. default (fail-closed)"), "{text}");
    assert!(text.contains("api:      sifr:policy@0.2.0"), "{text}");
}

#[test]
fn plugin_check_runs_a_plugin_offline() {
    let scratch = scratch();
    let settings = scratch.write(
        "settings.toml",
        "registries = [\"*\"]\n[[mirrors]]\nregistry = \"mirror.example.org\"\n",
    );
    let wasm = plugin_wasm("mirror");
    let out = scratch.sifr(&[
        "plugin",
        "check",
        "--timeout-ms",
        "10000",
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
    let scratch = scratch();
    let out = scratch.sifr(&["resolve", "--help"]);
    let text = stdout(&out);
    assert!(text.contains("sifr resolve --explain"), "{text}");
    let out = scratch.sifr(&["resolve"]);
    assert_eq!(out.status.code(), Some(2));
}

/// `sifr ARGS` as a user would run it on a node whose `/etc/sifr/` holds
/// `site`: `/etc` is overlaid in a private mount namespace, so the site
/// layer is read from its real, fixed path, and nothing on the host
/// changes.
fn sifr_with_site_file(scratch: &Scratch, site: &str, args: &[&str]) -> std::process::Output {
    let upper = scratch.path().join("etc-upper");
    std::fs::create_dir_all(upper.join("sifr")).unwrap();
    std::fs::create_dir_all(scratch.path().join("etc-work")).unwrap();
    std::fs::write(upper.join("sifr/config.toml"), site).unwrap();
    let overlay = format!(
        "lowerdir=/etc,upperdir={},workdir={}",
        upper.display(),
        scratch.path().join("etc-work").display()
    );
    common::hermetic(&mut std::process::Command::new("unshare"), scratch.path())
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg("mount -t overlay overlay -o \"$0\" /etc && shift && exec \"$@\"")
        .arg(overlay)
        .arg("-")
        .arg(env!("CARGO_BIN_EXE_sifr"))
        .args(args)
        .env("SIFR_CACHE_DIR", scratch.path().join("cache/sifr"))
        .output()
        .expect("running unshare (util-linux)")
}

#[test]
#[cfg_attr(
    not(sifr_e2e),
    ignore = "needs root, unshare(1) and overlayfs for a private /etc: run with SIFR_E2E=1"
)]
fn the_site_file_locks_its_rules_and_limits_against_every_user_layer() {
    let scratch = Scratch::new();
    let site = "[sandbox]\ntimeout-ms = 10000\n\
                [[plugin]]\nname = \"site-rules\"\nbuiltin = \"tags\"\nlocked = true\n\
                [plugin.settings]\ndeny-latest = true\ndeny = [\"evil.example.com/**\"]\n";
    // The user tries everything a user file can: an empty chain, a 1 ms
    // deadline for every plugin, and a rewrite to a registry the site denies.
    std::fs::create_dir_all(scratch.path().join("config/sifr")).unwrap();
    scratch.write(
        "config/sifr/config.toml",
        "plugin = []\n[sandbox]\ntimeout-ms = 1\n",
    );
    let rewrite = scratch.write(
        "rewrite.toml",
        "[sandbox]\ntimeout-ms = 10000\n\
         [[plugin]]\nname = \"mine\"\nbuiltin = \"mirror\"\n\
         [plugin.settings]\nregistries = [\"quay.io\"]\n\
         [[plugin.settings.mirrors]]\nregistry = \"EVIL.example.com\"\n",
    );
    let rewrite = rewrite.to_str().unwrap();

    // Probe: the overlay works here (a failure to mount must fail the test,
    // not pass it).
    let out = sifr_with_site_file(&scratch, site, &["plugin", "ls"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stdout(&out).contains("site-rules"), "{}", stdout(&out));
    assert!(stdout(&out).contains("locked"), "{}", stdout(&out));

    let out = sifr_with_site_file(&scratch, site, &["resolve", "ubuntu"]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("denied by plugin 'site-rules'")
            && stderr(&out).contains("(rule deny-latest)"),
        "{}",
        stderr(&out)
    );
    let out = sifr_with_site_file(&scratch, site, &["resolve", "ubuntu:22.04"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out), "docker://ubuntu:22.04\n");

    // The user's rewrite to a denied host is judged by the site's rule,
    // which runs after it.
    let out = sifr_with_site_file(
        &scratch,
        site,
        &[
            "--config",
            rewrite,
            "resolve",
            "quay.io/biocontainers/blast:2.15.0",
        ],
    );
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(
        stderr(&out)
            .contains("would be pulled from source #1 evil.example.com/biocontainers/blast"),
        "{}",
        stderr(&out)
    );

    // Without the site file, the same user layers would have had their way.
    let out = scratch.sifr(&["resolve", "ubuntu"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

#[test]
#[cfg_attr(
    not(sifr_e2e),
    ignore = "needs root, unshare(1) and overlayfs for a private /etc: run with SIFR_E2E=1"
)]
fn the_site_file_limits_the_capabilities_users_grant() {
    let scratch = Scratch::new();
    let site = "[sandbox]\ntimeout-ms = 10000\n[site]\nuser-capabilities = []\n";
    std::fs::create_dir_all(scratch.path().join("config/sifr")).unwrap();
    let user = scratch.write(
        "config/sifr/config.toml",
        "[sandbox]\ntimeout-ms = 10000\n\
         [[plugin]]\nname = \"mine\"\nbuiltin = \"default\"\ncapabilities = [\"resolve-digest\"]\n",
    );
    // Probe: without the limit the user's grant loads.
    let out = sifr_with_site_file(&scratch, "", &["plugin", "ls"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));

    // The user's config is refused where it grants, exit 3 (config).
    let out = sifr_with_site_file(&scratch, site, &["resolve", "ubuntu:22.04"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains(&format!("{}:3:1", user.display()))
            && err.contains("the site does not let users grant the capability \"resolve-digest\"")
            && err.contains("/etc/sifr/config.toml has [site] user-capabilities = []")
            && err.contains("remove it from this plugin's capabilities"),
        "{err}"
    );
    // A user layer cannot set the limit itself.
    std::fs::remove_file(&user).unwrap();
    let widen = scratch.write(
        "widen.toml",
        "[site]\nuser-capabilities = [\"resolve-digest\"]\n",
    );
    let out = sifr_with_site_file(
        &scratch,
        site,
        &[
            "--config",
            widen.to_str().unwrap(),
            "resolve",
            "ubuntu:22.04",
        ],
    );
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("[site] is only honoured in the site config"),
        "{}",
        stderr(&out)
    );

    // Nor can a grant on the command line of the offline harness.
    let wasm = plugin_wasm("default");
    let out = sifr_with_site_file(
        &scratch,
        site,
        &[
            "plugin",
            "check",
            "--timeout-ms",
            "10000",
            "--grant",
            "resolve-digest",
            wasm.to_str().unwrap(),
            "ubuntu:22.04",
        ],
    );
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("does not let users grant the capability \"resolve-digest\"")
            && stderr(&out).contains("remove it from --grant"),
        "{}",
        stderr(&out)
    );
    let out = sifr_with_site_file(
        &scratch,
        site,
        &[
            "plugin",
            "check",
            "--timeout-ms",
            "10000",
            wasm.to_str().unwrap(),
            "ubuntu:22.04",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

/// `sifr completions SHELL` prints a script its shell accepts: `bash -n`
/// parses the bash one, `zsh -n` and `fish --no-execute` the others (under
/// `SIFR_E2E=1`, as in CI, a missing shell fails the test; elsewhere those
/// two are checked where installed), and each completes sifr's subcommands.
#[test]
fn completions_are_scripts_their_shells_parse() {
    let scratch = scratch();
    let have = |shell: &str| {
        std::process::Command::new(shell)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    let cases: [(&str, &str, &[&str]); 3] = [
        ("bash", "complete -F _sifr", &["-n"]),
        ("zsh", "#compdef sifr", &["-n"]),
        ("fish", "complete -c sifr", &["--no-execute"]),
    ];
    for (shell, marker, check) in cases {
        let out = scratch.sifr(&["completions", shell]);
        assert_eq!(out.status.code(), Some(0), "{shell}: {}", stderr(&out));
        let script = stdout(&out);
        assert!(script.contains(marker), "{shell}: no {marker:?}");
        for sub in [
            "resolve",
            "pull",
            "run",
            "exec",
            "cache",
            "plugin",
            "completions",
        ] {
            assert!(script.contains(sub), "{shell}: {sub} is not completed");
        }
        if shell == "bash" || have(shell) || cfg!(sifr_e2e) {
            let file = scratch.write(&format!("sifr.{shell}"), &script);
            let parsed = std::process::Command::new(shell)
                .args(check)
                .arg(&file)
                .output()
                .unwrap_or_else(|e| panic!("{shell} is needed to check its completions: {e}"));
            assert!(
                parsed.status.success(),
                "{shell} {check:?} refuses the script: {}",
                String::from_utf8_lossy(&parsed.stderr)
            );
        }
    }
    let out = scratch.sifr(&["completions", "tcsh"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}

/// `sifr man DIR` writes one page per command and subcommand, from the
/// same clap definitions; each is a man page groff reads without a warning
/// (UTF-8 through preconv, `-k`, as `man` reads it).
#[test]
fn man_pages_cover_every_subcommand_and_groff_reads_them() {
    let scratch = scratch();
    let dir = scratch.path().join("man/man1");
    let out = scratch.sifr(&["man", dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let listed: Vec<String> = stdout(&out).lines().map(str::to_string).collect();
    for page in [
        "sifr",
        "sifr-resolve",
        "sifr-pull",
        "sifr-run",
        "sifr-exec",
        "sifr-cache",
        "sifr-cache-ls",
        "sifr-cache-du",
        "sifr-cache-rm",
        "sifr-cache-prune",
        "sifr-cache-verify",
        "sifr-plugin",
        "sifr-plugin-ls",
        "sifr-plugin-check",
        "sifr-completions",
        "sifr-man",
    ] {
        let path = dir.join(format!("{page}.1"));
        assert!(
            listed.contains(&path.display().to_string()),
            "{page}.1 is not listed: {listed:?}"
        );
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.starts_with(&format!(
                ".ie \\n(.g .ds Aq \\(aq\n.el .ds Aq '\n.TH {page} 1"
            )) || text.contains(&format!(".TH {page} 1")),
            "{page}.1 has no title line: {}",
            &text[..text.len().min(200)]
        );
        assert!(
            text.contains(".SH NAME") && text.contains(".SH SYNOPSIS"),
            "{page}.1"
        );
    }
    let groff = std::process::Command::new("groff")
        .arg("--version")
        .output();
    // groff-base is on every Debian system with man-db; CI installs it.
    if groff.is_ok_and(|o| o.status.success()) || cfg!(sifr_e2e) {
        for page in &listed {
            // One locale everywhere: preconv (-k) reads the page by it.
            let out = std::process::Command::new("groff")
                .args(["-k", "-man", "-ww", "-z", page])
                .env("LC_ALL", "C.UTF-8")
                .output()
                .unwrap();
            assert!(
                out.status.success() && out.stderr.is_empty(),
                "groff warns about {page}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

/// `sifr ARGS` with the apptainer test double and this scratch's cache.
fn sifr_with_double(scratch: &Scratch, args: &[&str], vars: &[(&str, &str)]) -> String {
    let mut cmd = common::sifr_command(scratch.path());
    cmd.args(args)
        .env("SIFR_CACHE_DIR", scratch.path().join("cache/sifr"))
        .env("SIFR_APPTAINER", common::apptainer_double());
    for (k, v) in vars {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{args:?}: {}", stderr(&out));
    stdout(&out)
}

/// Three cached images of known sizes, one served by a mirror, pulled (as
/// their records say) 3 days, 2 hours and 0 seconds ago.
fn three_cached_images(scratch: &Scratch) {
    let mirror = scratch.write(
        "mirror.toml",
        "[[plugin]]\nname = \"hub\"\nbuiltin = \"mirror\"\n[plugin.settings]\n\
         registries = [\"quay.io\"]\n[[plugin.settings.mirrors]]\nregistry = \"harbor.example.org\"\n",
    );
    let mirror = mirror.to_str().unwrap();
    for (image, size) in [
        ("ubuntu:22.04", "100000"),
        ("quay.io/biocontainers/blast:2.15.0", "300000"),
        ("alpine:3.19", "200000"),
    ] {
        sifr_with_double(
            scratch,
            &["--config", mirror, "pull", image],
            &[("APPTAINER_DOUBLE_SIZE", size)],
        );
    }
    // Back-date the records: ubuntu 3 days, blast 2 hours.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let index = scratch.path().join("cache/sifr/index");
    for item in std::fs::read_dir(&index).unwrap() {
        let path = item.unwrap().path();
        let mut record: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let back = match record["image"].as_str().unwrap() {
            i if i.contains("ubuntu") => 3 * 86400,
            i if i.contains("blast") => 2 * 3600,
            _ => 0,
        };
        record["pulled-at"] = serde_json::json!(now - back);
        std::fs::write(&path, serde_json::to_vec_pretty(&record).unwrap()).unwrap();
    }
}

/// The images of a `cache ls` table, in order, and the table's lines.
fn table_images(table: &str) -> Vec<String> {
    table
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().next().unwrap().to_string())
        .collect()
}

#[test]
fn cache_ls_is_an_aligned_table_sorted_by_name_size_or_age() {
    let scratch = scratch();
    three_cached_images(&scratch);
    let table = sifr_with_double(&scratch, &["cache", "ls"], &[]);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 4, "{table}");
    let header = lines[0];
    for column in ["IMAGE", "SIZE", "AGE", "LAST USED", "SOURCE", "SIF"] {
        assert!(header.contains(column), "{header}");
    }
    // Left-aligned columns start where their heading does; sizes end where
    // theirs does.
    let source_at = header.find("SOURCE").unwrap();
    let sif_at = header.find("SIF").unwrap();
    let size_end = header.find("SIZE").unwrap() + "SIZE".len();
    for line in &lines[1..] {
        assert_eq!(line[..size_end].chars().last(), Some('B'), "{table}");
        assert_eq!(&line[size_end..size_end + 2], "  ", "{table}");
        assert_eq!(&line[source_at - 2..source_at], "  ", "{table}");
        assert!(!line[source_at..].starts_with(' '), "{table}");
        assert_eq!(line[sif_at..].len(), 12, "a short SIF digest: {table}");
    }
    let row = |image: &str| *lines.iter().find(|l| l.contains(image)).unwrap();
    let blast = row("blast");
    assert!(
        blast.contains("293.0 KiB") && blast.contains("2h ago"),
        "{table}"
    );
    assert!(
        blast.contains("harbor.example.org"),
        "the mirror that served it: {table}"
    );
    let ubuntu = row("ubuntu");
    assert!(
        ubuntu.contains("97.7 KiB") && ubuntu.contains("3d ago"),
        "{table}"
    );
    assert!(ubuntu.contains("docker.io"), "{table}");

    assert_eq!(
        table_images(&table),
        [
            "docker.io/library/alpine:3.19",
            "docker.io/library/ubuntu:22.04",
            "quay.io/biocontainers/blast:2.15.0"
        ]
    );
    let by_size = sifr_with_double(&scratch, &["cache", "ls", "--sort", "size"], &[]);
    assert_eq!(
        table_images(&by_size),
        [
            "quay.io/biocontainers/blast:2.15.0",
            "docker.io/library/alpine:3.19",
            "docker.io/library/ubuntu:22.04"
        ]
    );
    let by_age = sifr_with_double(&scratch, &["cache", "ls", "--sort", "age"], &[]);
    assert_eq!(
        table_images(&by_age),
        [
            "docker.io/library/alpine:3.19",
            "quay.io/biocontainers/blast:2.15.0",
            "docker.io/library/ubuntu:22.04"
        ]
    );

    // --json is the index records, as before.
    let json: Vec<serde_json::Value> =
        serde_json::from_str(&sifr_with_double(&scratch, &["cache", "ls", "--json"], &[])).unwrap();
    assert_eq!(json.len(), 3);
    for record in &json {
        for key in ["image", "sif-digest", "size", "source-uri", "pulled-at"] {
            assert!(record.get(key).is_some(), "{key} in {record}");
        }
    }
}

#[test]
fn cache_du_shows_totals_and_what_prune_max_size_would_remove() {
    let scratch = scratch();
    three_cached_images(&scratch);
    let du = sifr_with_double(&scratch, &["cache", "du"], &[]);
    assert!(du.starts_with("3 images, 585.9 KiB in "), "{du}");
    let source = |registry: &str| {
        du.lines()
            .find(|l| l.starts_with(registry))
            .unwrap_or_else(|| panic!("no {registry} line: {du}"))
            .split_whitespace()
            .skip(1)
            .collect::<Vec<_>>()
            .join(" ")
    };
    assert_eq!(source("docker.io"), "2 293.0 KiB");
    assert_eq!(source("harbor.example.org"), "1 293.0 KiB");
    assert!(!du.contains("would remove"), "{du}");

    // 500 KB keeps the two newest; the oldest (ubuntu) would go.
    let du = sifr_with_double(&scratch, &["cache", "du", "--max-size", "500KB"], &[]);
    let plan = du
        .split_once("`sifr cache prune --max-size")
        .unwrap_or_else(|| panic!("{du}"))
        .1;
    assert!(
        plan.contains("would remove 1 images (oldest first), 97.7 KiB"),
        "{du}"
    );
    assert_eq!(
        table_images(plan.split_once('\n').unwrap().1),
        ["docker.io/library/ubuntu:22.04"]
    );
    let fits = sifr_with_double(&scratch, &["cache", "du", "--max-size", "1GiB"], &[]);
    assert!(fits.contains("would remove nothing"), "{fits}");

    let json: serde_json::Value = serde_json::from_str(&sifr_with_double(
        &scratch,
        &["cache", "du", "--max-size", "500KB", "--json"],
        &[],
    ))
    .unwrap();
    assert_eq!(json["images"], 3);
    assert_eq!(json["size"], 600000);
    assert_eq!(json["prune-max-size"]["would-free"], 100000);
    // Nothing was removed: du only looks.
    let ls = sifr_with_double(&scratch, &["cache", "ls"], &[]);
    assert_eq!(ls.lines().count(), 4, "{ls}");
}
