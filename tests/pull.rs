//! Pulling, caching and running through the apptainer test double, which
//! records every argv and can be told to fail, be slow or die mid-pull.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::{Scratch, apptainer_double, pulls, sandbox_config, stderr, stdout};

/// A scratch cache and config, with sifr pointed at the test double.
struct Env {
    scratch: Scratch,
    log: PathBuf,
}

impl Env {
    fn new() -> Self {
        let scratch = Scratch::new();
        let log = scratch.path().join("apptainer.log");
        Self { scratch, log }
    }

    fn cache(&self) -> PathBuf {
        self.scratch.path().join("cache/sifr")
    }

    fn command(&self, args: &[&str], vars: &[(&str, &str)]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sifr"));
        cmd.args(args)
            .env("XDG_CONFIG_HOME", self.scratch.path().join("config"))
            .env("SIFR_CACHE_DIR", self.cache())
            .env("SIFR_APPTAINER", apptainer_double())
            .env("APPTAINER_DOUBLE_LOG", &self.log)
            .env("SIFR_CONFIG", sandbox_config())
            .env_remove("SIFR_PULL_TIMEOUT");
        for (k, v) in vars {
            cmd.env(k, v);
        }
        cmd
    }

    fn sifr(&self, args: &[&str], vars: &[(&str, &str)]) -> Output {
        self.command(args, vars).output().unwrap()
    }

    fn mirrors(&self, mirrors: &[(&str, bool)]) -> PathBuf {
        let mut toml = String::from(
            "[[plugin]]\nname = \"hub\"\nbuiltin = \"mirror\"\n[plugin.settings]\nregistries = [\"docker.io\"]\n",
        );
        for (registry, plain) in mirrors {
            toml.push_str(&format!(
                "[[plugin.settings.mirrors]]\nregistry = \"{registry}\"\nplain-http = {plain}\n"
            ));
        }
        self.scratch.write("mirrors.toml", &toml)
    }
}

fn entries(env: &Env) -> Vec<serde_json::Value> {
    let out = env.sifr(&["cache", "ls", "--json"], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    serde_json::from_slice::<Vec<serde_json::Value>>(&out.stdout).unwrap()
}

#[test]
fn pull_passes_apptainer_exactly_its_argv_and_caches_by_content() {
    let env = Env::new();
    let out = env.sifr(&["pull", "ncbi/blast:2.14.0"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let path = PathBuf::from(stdout(&out).trim());
    assert!(
        path.starts_with(env.cache().join("blobs/sha256")),
        "{}",
        path.display()
    );

    let pulls = pulls(&env.log);
    assert_eq!(pulls.len(), 1);
    let argv = &pulls[0];
    assert_eq!(argv[..2], ["pull", "--force"]);
    assert_eq!(argv[3], "docker://ncbi/blast:2.14.0");
    assert_eq!(argv.len(), 4, "{argv:?}");
    let tmp = Path::new(&argv[2]);
    assert_eq!(
        tmp.parent().unwrap(),
        env.cache().join("tmp"),
        "pulls land inside the cache"
    );

    // The blob is named by its content's sha256.
    let digest = common::sha256_hex(&path);
    assert_eq!(
        path.file_name().unwrap().to_string_lossy(),
        format!("{digest}.sif")
    );
    let entry = &entries(&env)[0];
    assert_eq!(entry["image"], "docker.io/ncbi/blast:2.14.0");
    assert_eq!(entry["sif-digest"], format!("sha256:{digest}"));
    assert_eq!(entry["source-uri"], "docker://ncbi/blast:2.14.0");
    assert_eq!(entry["apptainer-version"], "1.4.1");

    // A second pull is a hit: no apptainer pull, the same file.
    let again = env.sifr(&["pull", "ncbi/blast:2.14.0"], &[]);
    assert_eq!(stdout(&again), stdout(&out));
    assert_eq!(common::pulls(&env.log).len(), 1);
}

#[test]
fn a_failed_mirror_falls_back_in_order_and_the_fallback_is_reported() {
    let env = Env::new();
    let config = env.mirrors(&[("down.example", false), ("insecure.example:5000", true)]);
    let out = env.sifr(
        &[
            "--config",
            config.to_str().unwrap(),
            "pull",
            "--json",
            "ubuntu:22.04",
        ],
        &[("APPTAINER_DOUBLE_FAIL", "down.example")],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let uris: Vec<String> = pulls(&env.log)
        .iter()
        .map(|a| a.last().unwrap().clone())
        .collect();
    assert_eq!(
        uris,
        [
            "docker://down.example/library/ubuntu:22.04",
            "docker://insecure.example:5000/library/ubuntu:22.04"
        ]
    );
    assert!(
        pulls(&env.log)[1].contains(&"--no-https".to_string()),
        "plain HTTP mirror"
    );
    let err = stderr(&out);
    assert!(
        err.contains("pull from docker://down.example/library/ubuntu:22.04 failed")
            && err.contains("falling back to docker://insecure.example:5000/library/ubuntu:22.04"),
        "{err}"
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        json[0]["pulled"]["entry"]["source-uri"],
        "docker://insecure.example:5000/library/ubuntu:22.04"
    );
    // The identity is the upstream reference, so the mirror does not matter.
    assert_eq!(
        json[0]["pulled"]["entry"]["image"],
        "docker.io/library/ubuntu:22.04"
    );
}

#[test]
fn when_every_source_fails_each_attempt_is_listed_with_apptainer_s_stderr() {
    let env = Env::new();
    let config = env.mirrors(&[("down.example", false)]);
    let out = env.sifr(
        &["--config", config.to_str().unwrap(), "pull", "ubuntu:22.04"],
        &[("APPTAINER_DOUBLE_FAIL", "ubuntu")],
    );
    assert_eq!(out.status.code(), Some(8));
    let err = stderr(&out);
    assert!(
        err.contains("could not pull docker.io/library/ubuntu:22.04: every source failed"),
        "{err}"
    );
    assert!(
        err.contains(
            "1. docker://down.example/library/ubuntu:22.04: apptainer exited with status 255"
        ),
        "{err}"
    );
    assert!(
        err.contains("2. docker://ubuntu:22.04: apptainer exited with status 255"),
        "{err}"
    );
    assert!(
        err.contains("connection refused"),
        "the tail of apptainer's stderr: {err}"
    );
    assert!(entries(&env).is_empty());
}

#[test]
fn sixteen_concurrent_pulls_of_one_image_make_one_apptainer_pull() {
    let env = Env::new();
    let children: Vec<_> = (0..16)
        .map(|_| {
            env.command(
                &["pull", "ncbi/blast:2.14.0"],
                &[("APPTAINER_DOUBLE_SLEEP_MS", "1500")],
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
        })
        .collect();
    let outputs: Vec<Output> = children
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect();
    for out in &outputs {
        assert_eq!(out.status.code(), Some(0), "{}", stderr(out));
    }
    let paths: std::collections::HashSet<String> = outputs.iter().map(stdout).collect();
    assert_eq!(paths.len(), 1, "all got the same SIF: {paths:?}");
    assert_eq!(pulls(&env.log).len(), 1, "exactly one apptainer pull");
    assert_eq!(entries(&env).len(), 1);
}

#[test]
fn a_pull_killed_mid_way_leaves_nothing_cached_and_a_retry_succeeds() {
    let env = Env::new();
    // apptainer dies with SIGKILL half-way through writing.
    let out = env.sifr(&["pull", "alpine:3.19"], &[("APPTAINER_DOUBLE_DIE", "1")]);
    assert_eq!(out.status.code(), Some(8));
    assert!(
        stderr(&out).contains("apptainer was killed by signal 9"),
        "{}",
        stderr(&out)
    );
    assert!(entries(&env).is_empty());

    // sifr itself is killed with SIGKILL while apptainer is pulling.
    let mut child = env
        .command(
            &["pull", "alpine:3.19"],
            &[("APPTAINER_DOUBLE_SLEEP_MS", "3000")],
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let tmp = env.cache().join("tmp");
    let started = std::time::Instant::now();
    while pulls(&env.log).len() < 2 && started.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(entries(&env).is_empty(), "nothing counts as cached");

    // The lock died with the process: the retry does not wait, and succeeds.
    let out = env.sifr(&["pull", "alpine:3.19"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(entries(&env).len(), 1);
    // Prune sweeps whatever the killed pulls left behind.
    std::thread::sleep(Duration::from_millis(3500));
    let out = env.sifr(&["cache", "prune"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let left: Vec<_> = std::fs::read_dir(&tmp).unwrap().collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn a_pull_past_its_timeout_is_stopped_and_says_how_to_raise_it() {
    let env = Env::new();
    let out = env.sifr(
        &["pull", "--pull-timeout", "1s", "alpine:3.19"],
        &[("APPTAINER_DOUBLE_SLEEP_MS", "20000")],
    );
    assert_eq!(out.status.code(), Some(8));
    let err = stderr(&out);
    assert!(
        err.contains("docker://alpine:3.19: timed out after 1 s"),
        "{err}"
    );
    assert!(err.contains("--pull-timeout"), "{err}");
}

#[test]
fn tampering_is_caught_by_verify_and_by_the_next_run() {
    let env = Env::new();
    let out = env.sifr(&["pull", "ncbi/blast:2.14.0"], &[]);
    let sif = PathBuf::from(stdout(&out).trim());
    assert_eq!(env.sifr(&["cache", "verify"], &[]).status.code(), Some(0));

    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&sif, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut bytes = std::fs::read(&sif).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&sif, bytes).unwrap();

    let out = env.sifr(&["cache", "verify"], &[]);
    assert_eq!(out.status.code(), Some(9));
    let err = stderr(&out);
    assert!(
        err.contains("docker.io/ncbi/blast:2.14.0") && err.contains("content changed"),
        "{err}"
    );

    let out = env.sifr(&["run", "ncbi/blast:2.14.0", "--", "true"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("was changed on disk"),
        "{}",
        stderr(&out)
    );
    assert_eq!(pulls(&env.log).len(), 2, "re-pulled");
    assert_eq!(env.sifr(&["cache", "verify"], &[]).status.code(), Some(0));
}

#[test]
fn run_passes_flags_and_the_exit_code_through_and_keeps_the_host_env_out() {
    let env = Env::new();
    let data = env.scratch.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let bind = format!("{}:/data:ro", data.display());
    let out = env.sifr(
        &[
            "run",
            "--bind",
            &bind,
            "--env",
            "GREETING=hi",
            "--pwd",
            "/",
            "ubuntu:22.04",
            "--",
            "sh",
            "-c",
            "echo $GREETING; echo secret=$HOST_SECRET; exit 7",
        ],
        &[("HOST_SECRET", "leaked")],
    );
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
    assert_eq!(stdout(&out), "hi\nsecret=\n");
    let log = common::double_log(&env.log);
    let run = log.iter().find(|a| a[0] == "run").unwrap();
    let sif = &run[9];
    assert_eq!(
        run[..10],
        [
            "run",
            "--cleanenv",
            "--no-home",
            "--pwd",
            "/",
            "--bind",
            &bind,
            "--env",
            "GREETING=hi",
            sif.as_str()
        ]
    );
    assert!(sif.ends_with(".sif") && Path::new(sif).starts_with(env.cache()));
    assert_eq!(
        run[10..],
        [
            "sh",
            "-c",
            "echo $GREETING; echo secret=$HOST_SECRET; exit 7"
        ]
    );

    let out = env.sifr(
        &[
            "exec",
            "--nv",
            "--apptainer-arg=--contain",
            "ubuntu:22.04",
            "--",
            "true",
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let log = common::double_log(&env.log);
    let exec = log.iter().find(|a| a[0] == "exec").unwrap();
    assert_eq!(
        exec[..5],
        ["exec", "--cleanenv", "--no-home", "--nv", "--contain"]
    );
}

#[test]
fn sigterm_to_sifr_reaches_the_container() {
    let env = Env::new();
    assert!(env.sifr(&["pull", "alpine:3.19"], &[]).status.success());
    let mut child = env
        .command(&["run", "alpine:3.19", "--", "sleep", "60"], &[])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    while !common::double_log(&env.log).iter().any(|a| a[0] == "run")
        && started.elapsed() < Duration::from_secs(30)
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(143), "128 + SIGTERM");
}

#[test]
fn prune_removes_old_and_oversized_entries_and_rm_takes_images_or_digests() {
    let env = Env::new();
    for image in ["a/one:1", "a/two:1", "a/three:1"] {
        assert!(env.sifr(&["pull", image], &[]).status.success());
    }
    // Age the entries: one 10 days, two 5 days, three now.
    let index = env.cache().join("index");
    for file in std::fs::read_dir(&index).unwrap() {
        let path = file.unwrap().path();
        let mut entry: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        let days = match entry["image"].as_str().unwrap() {
            "docker.io/a/one:1" => 10,
            "docker.io/a/two:1" => 5,
            _ => 0,
        };
        entry["pulled-at"] = (entry["pulled-at"].as_u64().unwrap() - days * 86_400).into();
        std::fs::write(&path, serde_json::to_vec(&entry).unwrap()).unwrap();
    }
    let images = |env: &Env| -> Vec<String> {
        entries(env)
            .iter()
            .map(|e| e["image"].as_str().unwrap().to_string())
            .collect()
    };

    let out = env.sifr(&["cache", "prune", "--older-than", "7d", "--dry-run"], &[]);
    assert!(
        stdout(&out).contains("would remove docker.io/a/one:1"),
        "{}",
        stdout(&out)
    );
    assert_eq!(images(&env).len(), 3, "dry run removes nothing");

    let out = env.sifr(&["cache", "prune", "--older-than", "7d"], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(images(&env), ["docker.io/a/three:1", "docker.io/a/two:1"]);

    // 64 KiB each: a 100 KiB cap keeps only the newest.
    let out = env.sifr(&["cache", "prune", "--max-size", "100KiB"], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(images(&env), ["docker.io/a/three:1"]);
    let blobs = std::fs::read_dir(env.cache().join("blobs/sha256"))
        .unwrap()
        .count();
    assert_eq!(blobs, 1, "blobs of pruned entries are gone");

    let digest = entries(&env)[0]["sif-digest"].as_str().unwrap()[7..19].to_string();
    let out = env.sifr(&["cache", "rm", &digest], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(images(&env).is_empty());

    assert!(env.sifr(&["pull", "a/one:1"], &[]).status.success());
    let out = env.sifr(&["cache", "rm", "a/one"], &[]);
    assert!(
        stdout(&out).contains("removed docker.io/a/one:1"),
        "{}",
        stdout(&out)
    );
    let out = env.sifr(&["cache", "rm", "a/one"], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("nothing cached matches"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_missing_apptainer_says_what_to_install_or_set() {
    let env = Env::new();
    let out = env
        .command(&["pull", "alpine:3.19"], &[("PATH", "/nonexistent")])
        .env_remove("SIFR_APPTAINER")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(7));
    let err = stderr(&out);
    assert!(
        err.contains("neither apptainer nor singularity was found"),
        "{err}"
    );
    assert!(err.contains("SIFR_APPTAINER"), "{err}");

    let out = env.sifr(
        &["pull", "alpine:3.19"],
        &[("SIFR_APPTAINER", "/nonexistent/apptainer")],
    );
    assert_eq!(out.status.code(), Some(7));
    assert!(
        stderr(&out).contains("$SIFR_APPTAINER names /nonexistent/apptainer"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn credentials_and_apptainer_settings_pass_through_to_the_pull() {
    let env = Env::new();
    let out = env.sifr(
        &["pull", "private/tool:1"],
        &[
            ("APPTAINER_DOCKER_USERNAME", "alice"),
            (
                "APPTAINER_DOUBLE_REQUIRE_ENV",
                "APPTAINER_DOCKER_USERNAME=alice",
            ),
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}
