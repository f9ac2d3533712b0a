//! Pulling, caching and running through the apptainer test double, which
//! records every argv and pid and can be told to fail, be slow, hold a pull
//! until the test releases it, or die mid-pull. The tests wait on events
//! (a file appearing, a line on a pipe), each bounded so that a hang fails
//! loudly; none guesses timing with a sleep.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::{
    Lines, Reaper, Scratch, TouchOnDrop, apptainer_double, output_within, process_running, pulls,
    recorded_pids, sandbox_config, stderr, stdout, wait_until, wait_within,
};

/// A bound on how long any one step may hang before the test fails. Generous:
/// a loaded 2-core machine starting 16 sifr processes is slow, and this is
/// not what the tests measure.
const PATIENCE: Duration = Duration::from_secs(300);

/// What sifr prints when another process holds the image's pull lock.
const WAITING: &str = "waiting for another sifr pulling";

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
        let mut cmd = self.scratch.command();
        cmd.args(args)
            .env("SIFR_APPTAINER", apptainer_double())
            .env("APPTAINER_DOUBLE_LOG", &self.log)
            .env("SIFR_CONFIG", sandbox_config());
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

impl Env {
    /// A file the double's held pulls wait for (`APPTAINER_DOUBLE_HOLD`);
    /// it does not exist until [`Env::release`].
    fn hold(&self) -> PathBuf {
        self.scratch.path().join("release-the-pulls")
    }

    fn release(&self) {
        std::fs::write(self.hold(), "").unwrap();
    }

    /// Where the double records its pids (`APPTAINER_DOUBLE_PID_FILE`).
    fn pid_file(&self) -> PathBuf {
        self.scratch.path().join("apptainer.pids")
    }

    /// Pulls in progress in the cache's temp area (index writes, dot
    /// files, aside).
    fn temp_pulls(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.cache().join("tmp"))
            .map(|dir| {
                dir.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .filter(|name| !name.starts_with('.'))
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    /// Everything in the cache's temp area.
    fn temp_area(&self) -> Vec<String> {
        std::fs::read_dir(self.cache().join("tmp"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
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
    let hold = env.hold();
    let _release = TouchOnDrop(hold.clone());
    let mut children: Vec<_> = (0..16)
        .map(|_| {
            env.command(
                &["pull", "ncbi/blast:2.14.0"],
                &[("APPTAINER_DOUBLE_HOLD", hold.to_str().unwrap())],
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
        })
        .collect();
    let mut errs: Vec<Lines> = children
        .iter_mut()
        .map(|c| Lines::of(c.stderr.take().unwrap()))
        .collect();
    // The pull is held until all sixteen have met at the lock: one pulls,
    // and every other one says it waits for it.
    wait_until(
        "one apptainer pull, and fifteen sifr processes waiting for its lock",
        PATIENCE,
        || {
            let waiting = errs
                .iter_mut()
                .filter_map(|e| e.saw(WAITING).then_some(()))
                .count();
            let pulls = pulls(&env.log).len();
            assert!(pulls <= 1, "{pulls} apptainer pulls of one image at once");
            pulls == 1 && waiting == 15
        },
    );
    env.release();

    let mut paths = std::collections::HashSet::new();
    for (mut child, err) in children.into_iter().zip(errs) {
        let status = wait_within(&mut child, PATIENCE);
        let mut out = String::new();
        std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut out).unwrap();
        let err = err.all().join("\n");
        assert_eq!(status.code(), Some(0), "{err}");
        paths.insert(out);
    }
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
    assert!(env.temp_pulls().is_empty(), "sifr removed the half file");

    // sifr itself is killed with SIGKILL mid-pull, once for each of two
    // images, and then its orphaned apptainer too (as a batch system ends a
    // job): each pull leaves a half-written temp file and a lock whose
    // holder is dead.
    let reaper = Reaper(env.pid_file());
    let hold = env.hold();
    let mut leftovers = Vec::new();
    for image in ["alpine:3.19", "busybox:1.36"] {
        let before = env.temp_pulls();
        let mut child = env
            .command(
                &["pull", image],
                &[
                    ("APPTAINER_DOUBLE_HOLD", hold.to_str().unwrap()),
                    (
                        "APPTAINER_DOUBLE_PID_FILE",
                        env.pid_file().to_str().unwrap(),
                    ),
                ],
            )
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_until(
            &format!("the pull of {image} to begin its file"),
            PATIENCE,
            || env.temp_pulls().len() > before.len(),
        );
        let started: Vec<String> = env
            .temp_pulls()
            .into_iter()
            .filter(|name| !before.contains(name))
            .collect();
        assert_eq!(started.len(), 1, "{started:?}");
        child.kill().unwrap();
        child.wait().unwrap();
        leftovers.push(started);
    }
    reaper.kill_all();
    assert!(entries(&env).is_empty(), "nothing counts as cached");
    let [alpine, busybox] = [&leftovers[0], &leftovers[1]];
    let mut both = [alpine.clone(), busybox.clone()].concat();
    both.sort();
    assert_eq!(
        env.temp_pulls(),
        both,
        "each killed pull left its half file"
    );

    // The locks died with their holders: the retry does not wait, and
    // succeeds, replacing its own image's leftovers.
    let out = output_within(&mut env.command(&["pull", "alpine:3.19"], &[]), PATIENCE);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(!stderr(&out).contains(WAITING), "{}", stderr(&out));
    assert_eq!(entries(&env).len(), 1);
    assert_eq!(
        &env.temp_pulls(),
        busybox,
        "the other image's leftovers are for prune"
    );

    // Prune sweeps what the killed pull of the other image left behind.
    let out = output_within(&mut env.command(&["cache", "prune"], &[]), PATIENCE);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(env.temp_area(), Vec::<String>::new());
    assert_eq!(entries(&env).len(), 1, "prune kept the good entry");
}

#[test]
fn a_pull_past_its_timeout_is_stopped_and_says_how_to_raise_it() {
    let env = Env::new();
    let _reaper = Reaper(env.pid_file());
    // The pull would wait forever, with a helper process beside it.
    let out = output_within(
        &mut env.command(
            &["pull", "--pull-timeout", "1s", "alpine:3.19"],
            &[
                ("APPTAINER_DOUBLE_HOLD", env.hold().to_str().unwrap()),
                ("APPTAINER_DOUBLE_HELPER", "1"),
                (
                    "APPTAINER_DOUBLE_PID_FILE",
                    env.pid_file().to_str().unwrap(),
                ),
            ],
        ),
        PATIENCE,
    );
    assert_eq!(out.status.code(), Some(8));
    let err = stderr(&out);
    assert!(
        err.contains("docker://alpine:3.19: timed out after 1 s"),
        "{err}"
    );
    assert!(err.contains("--pull-timeout"), "{err}");

    // Stopped: apptainer and its helper are gone, and so is its file.
    let pids = recorded_pids(&env.pid_file());
    assert_eq!(pulls(&env.log).len(), 1);
    // Every invocation of the double is there (`apptainer version` too),
    // and the pull's helper.
    assert!(pids.len() >= 2, "apptainer and its helper ran: {pids:?}");
    wait_until(
        "apptainer and its helper to be gone",
        Duration::from_secs(30),
        || pids.iter().all(|&pid| !process_running(pid)),
    );
    assert_eq!(env.temp_area(), Vec::<String>::new());
    assert!(entries(&env).is_empty());
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
    // Start the container, wait until it runs, then SIGTERM sifr.
    let terminate = |script: &str| {
        let mut child = env
            .command(&["run", "alpine:3.19", "--", "sh", "-c", script], &[])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut out = Lines::of(child.stdout.take().unwrap());
        out.wait_for("ready", PATIENCE);
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        let status = wait_within(&mut child, PATIENCE);
        (status, out.all())
    };
    // The container traps TERM: it gets it, and its own exit code is sifr's.
    let (status, lines) = terminate(
        "trap 'echo got TERM; exit 7' TERM; echo ready; i=0; \
         while [ $i -lt 1200 ]; do sleep 0.1; i=$((i+1)); done",
    );
    assert_eq!(lines, ["ready", "got TERM"]);
    assert_eq!(status.code(), Some(7), "the container's own exit code");
    // Dead of the signal, the container makes sifr exit 128 + 15.
    let (status, _) = terminate("echo ready; exec sleep 60");
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
    // The double's registry wants these, as a private registry would.
    let require = (
        "APPTAINER_DOUBLE_REQUIRE_ENV",
        "APPTAINER_DOCKER_USERNAME=alice,APPTAINER_DOCKER_PASSWORD,APPTAINER_CACHEDIR",
    );
    let cachedir = env.scratch.path().join("apptainer-cache");
    let settings = [
        ("APPTAINER_DOCKER_USERNAME", "alice"),
        ("APPTAINER_DOCKER_PASSWORD", "s3cret"),
        ("APPTAINER_CACHEDIR", cachedir.to_str().unwrap()),
    ];
    let pull = |leave_out: &str| {
        let mut cmd = env.command(&["pull", "private/tool:1"], &[require]);
        for (name, value) in settings {
            if name == leave_out {
                cmd.env_remove(name);
            } else {
                cmd.env(name, value);
            }
        }
        cmd.output().unwrap()
    };

    // Without any one of them the registry refuses, and sifr says so.
    for (name, _) in settings {
        let out = pull(name);
        assert_eq!(out.status.code(), Some(8), "without {name}");
        let err = stderr(&out);
        assert!(
            err.contains("unauthorized: authentication required")
                && err.contains(&format!("{name} is not set")),
            "without {name}: {err}"
        );
        assert!(!err.contains("s3cret"), "{err}");
    }
    assert!(entries(&env).is_empty());

    // With all of them, the pull goes through.
    let out = pull("");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(entries(&env).len(), 1);
}

/// A size-limited tmpfs, unmounted when dropped (even when the test fails).
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: PathBuf, size: &str) -> Self {
        assert!(
            rustix::process::geteuid().is_root(),
            "this test mounts a tmpfs, which needs root (CI runs the suite as root)"
        );
        std::fs::create_dir_all(&at).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&at)
            .output()
            .unwrap();
        assert!(out.status.success(), "mount: {}", stderr(&out));
        Self(at)
    }

    /// Fill the filesystem with one file, then give back `room` bytes.
    fn fill_leaving(&self, room: u64) -> PathBuf {
        use std::io::Write;
        let path = self.0.join("filler");
        let mut file = std::fs::File::create(&path).unwrap();
        let chunk = vec![0xa5u8; 64 * 1024];
        let mut len = 0u64;
        loop {
            match file.write(&chunk) {
                Ok(0) => break,
                Ok(n) => len += n as u64,
                Err(e) if e.raw_os_error() == Some(28) => break,
                Err(e) => panic!("filling {}: {e}", path.display()),
            }
        }
        file.set_len(len.saturating_sub(room)).unwrap();
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let umount = |args: &[&str]| {
            Command::new("umount")
                .args(args)
                .arg(&self.0)
                .status()
                .is_ok_and(|s| s.success())
        };
        if !umount(&[]) {
            // Busy (a process of a failed test still in it): detach it.
            umount(&["--lazy"]);
        }
    }
}

#[test]
#[cfg_attr(
    not(sifr_e2e),
    ignore = "mounts a small tmpfs as the cache, which needs root: run as root with SIFR_E2E=1, as CI does"
)]
fn a_full_cache_fails_the_pull_clearly_and_keeps_the_index_readable() {
    let env = Env::new();
    let disk = Tmpfs::mount(env.scratch.path().join("cache"), "16m");
    // A first image, and the compiled policy plugin, fit.
    let out = env.sifr(&["pull", "a/small:1"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));

    // Then the disk fills up: 1 MiB is left, and the image is 4 MiB.
    let filler = disk.fill_leaving(1 << 20);
    let big = [("APPTAINER_DOUBLE_SIZE", "4194304")];
    let out = output_within(&mut env.command(&["pull", "a/big:1"], &big), PATIENCE);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains(&format!("the cache at {}", env.cache().display()))
            && err.contains("No space left on device")
            && err.contains("free space")
            && err.contains("SIFR_CACHE_DIR"),
        "names the cache, the cause and what to do: {err}"
    );
    assert_eq!(
        pulls(&env.log).len(),
        2,
        "one attempt: no point in retrying"
    );
    assert_eq!(env.temp_area(), Vec::<String>::new(), "no temp file left");
    let images: Vec<_> = entries(&env).iter().map(|e| e["image"].clone()).collect();
    assert_eq!(images, ["docker.io/a/small:1"], "the index reads as before");
    let out = env.sifr(&["cache", "verify"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));

    // Once there is room again, the pull succeeds.
    std::fs::remove_file(filler).unwrap();
    let out = output_within(&mut env.command(&["pull", "a/big:1"], &big), PATIENCE);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let sizes: Vec<_> = entries(&env).iter().map(|e| e["size"].clone()).collect();
    assert_eq!(sizes, [4194304, 65536]);
    assert_eq!(env.sifr(&["cache", "verify"], &[]).status.code(), Some(0));
}

/// Every JSON line the double wrote to its `APPTAINER_DOUBLE_ENV_LOG`.
fn env_lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

#[test]
fn pulls_racing_a_looping_prune_all_print_paths_that_exist() {
    let env = Env::new();
    let images: Vec<String> = (0..12).map(|i| format!("race/image{i}:1")).collect();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // `cache prune` with no limits: it only sweeps orphans and leftovers,
    // over and over, while the pulls commit their blobs.
    let pruner = {
        let done = done.clone();
        let mut cmd = env.command(&["cache", "prune"], &[]);
        std::thread::spawn(move || {
            let mut rounds = 0;
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                let out = output_within(&mut cmd, PATIENCE);
                assert!(out.status.success(), "prune: {}", stderr(&out));
                rounds += 1;
            }
            rounds
        })
    };
    let children: Vec<_> = images
        .iter()
        .map(|image| {
            env.command(&["pull", image], &[])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut paths = Vec::new();
    for mut child in children {
        let out = Lines::of(child.stdout.take().unwrap());
        let err = Lines::of(child.stderr.take().unwrap());
        let status = wait_within(&mut child, PATIENCE);
        assert_eq!(status.code(), Some(0), "{}", err.all().join("\n"));
        let out = out.all();
        assert_eq!(out.len(), 1, "{out:?}");
        let path = PathBuf::from(&out[0]);
        // Checked as soon as the pull is done, with the prune still going.
        assert!(path.is_file(), "{} was printed but is gone", path.display());
        paths.push(path);
    }
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let rounds = pruner.join().unwrap();
    assert!(rounds >= 1);
    for path in &paths {
        assert!(path.is_file(), "{} was printed but is gone", path.display());
    }
    assert_eq!(entries(&env).len(), images.len());
    assert_eq!(
        pulls(&env.log).len(),
        images.len(),
        "one apptainer pull each: no blob was swept from under its pull"
    );
    assert_eq!(env.sifr(&["cache", "verify"], &[]).status.code(), Some(0));
}

#[test]
fn cache_rm_waits_for_a_run_that_holds_the_image_then_removes_it() {
    let env = Env::new();
    let out = env.sifr(&["pull", "alpine:3.19"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let sif = PathBuf::from(stdout(&out).trim());

    // The run is held after sifr has checked the SIF, before apptainer
    // opens it.
    let hold = env.scratch.path().join("release-the-run");
    let _release = TouchOnDrop(hold.clone());
    let mut run = env
        .command(
            &["run", "alpine:3.19", "--", "true"],
            &[("APPTAINER_DOUBLE_RUN_HOLD", hold.to_str().unwrap())],
        )
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let run_err = Lines::of(run.stderr.take().unwrap());
    wait_until("apptainer run to start", PATIENCE, || {
        common::double_log(&env.log).iter().any(|a| a[0] == "run")
    });

    let mut rm = env
        .command(&["cache", "rm", "alpine:3.19"], &[])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut rm_err = Lines::of(rm.stderr.take().unwrap());
    let rm_out = Lines::of(rm.stdout.take().unwrap());
    rm_err.wait_for(
        "waiting for the sifr processes using docker.io/library/alpine:3.19",
        PATIENCE,
    );
    assert!(sif.is_file(), "nothing removed while the run holds it");
    assert_eq!(rm.try_wait().unwrap(), None, "rm waits for the run");

    std::fs::write(&hold, "").unwrap();
    let status = wait_within(&mut run, PATIENCE);
    assert_eq!(status.code(), Some(0), "{}", run_err.all().join("\n"));
    let status = wait_within(&mut rm, PATIENCE);
    assert_eq!(status.code(), Some(0), "{}", rm_err.all().join("\n"));
    assert!(
        rm_out
            .all()
            .join("\n")
            .contains("removed docker.io/library/alpine:3.19"),
        "rm removed it once the run let go"
    );
    assert!(!sif.exists());
    assert!(entries(&env).is_empty());
}

#[test]
fn prune_keeps_an_image_a_run_holds() {
    let env = Env::new();
    let out = env.sifr(&["pull", "alpine:3.19"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let sif = PathBuf::from(stdout(&out).trim());
    let hold = env.scratch.path().join("release-the-run");
    let _release = TouchOnDrop(hold.clone());
    let mut run = env
        .command(
            &["run", "alpine:3.19", "--", "true"],
            &[("APPTAINER_DOUBLE_RUN_HOLD", hold.to_str().unwrap())],
        )
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let run_err = Lines::of(run.stderr.take().unwrap());
    wait_until("apptainer run to start", PATIENCE, || {
        common::double_log(&env.log).iter().any(|a| a[0] == "run")
    });
    // Everything is over the size limit, but the held image is in use.
    let out = output_within(
        &mut env.command(&["cache", "prune", "--max-size", "1KiB"], &[]),
        PATIENCE,
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("kept (in use) docker.io/library/alpine:3.19"),
        "{}",
        stdout(&out)
    );
    assert!(sif.is_file());
    std::fs::write(&hold, "").unwrap();
    let status = wait_within(&mut run, PATIENCE);
    assert_eq!(status.code(), Some(0), "{}", run_err.all().join("\n"));

    let out = env.sifr(&["cache", "prune", "--max-size", "1KiB"], &[]);
    assert!(
        stdout(&out).contains("removed docker.io/library/alpine:3.19"),
        "{}",
        stdout(&out)
    );
    assert!(!sif.exists());
}

#[test]
fn a_signal_during_a_pull_stops_apptainer_s_group_and_removes_its_file() {
    for (signal, name, code) in [
        (rustix::process::Signal::TERM, "TERM", 143),
        (rustix::process::Signal::INT, "INT", 130),
    ] {
        let env = Env::new();
        let reaper = Reaper(env.pid_file());
        let _release = TouchOnDrop(env.hold());
        let mut child = env
            .command(
                &["pull", "alpine:3.19"],
                &[
                    ("APPTAINER_DOUBLE_HOLD", env.hold().to_str().unwrap()),
                    ("APPTAINER_DOUBLE_HELPER", "1"),
                    (
                        "APPTAINER_DOUBLE_PID_FILE",
                        env.pid_file().to_str().unwrap(),
                    ),
                ],
            )
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let err = Lines::of(child.stderr.take().unwrap());
        wait_until("the pull to begin its file", PATIENCE, || {
            !env.temp_pulls().is_empty()
        });
        // The pull's apptainer and its helper are running.
        let pids = recorded_pids(&env.pid_file());
        let running: Vec<u32> = pids
            .iter()
            .copied()
            .filter(|&pid| process_running(pid))
            .collect();
        assert_eq!(running.len(), 2, "apptainer and its helper: {pids:?}");

        let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
        rustix::process::kill_process(pid, signal).unwrap();
        let status = wait_within(&mut child, PATIENCE);
        let err = err.all().join("\n");
        assert_eq!(status.code(), Some(code), "SIG{name}: {err}");
        wait_until(
            &format!("apptainer's group to be gone after SIG{name}"),
            Duration::from_secs(30),
            || running.iter().all(|&pid| !process_running(pid)),
        );
        assert_eq!(env.temp_pulls(), Vec::<String>::new(), "SIG{name}");
        assert!(entries(&env).is_empty());
        reaper.kill_all();
    }
}

#[test]
fn a_relative_cache_dir_that_looks_like_a_flag_is_made_absolute() {
    let env = Env::new();
    let out = env
        .command(&["pull", "alpine:3.19"], &[("SIFR_CACHE_DIR", "-x")])
        .current_dir(env.scratch.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let path = PathBuf::from(stdout(&out).trim());
    assert!(
        path.starts_with(env.scratch.path().join("-x/blobs/sha256")),
        "{}",
        path.display()
    );
    let pulls = pulls(&env.log);
    assert!(
        pulls[0][2].starts_with(&env.scratch.path().join("-x/tmp").display().to_string()),
        "apptainer gets an absolute path: {:?}",
        pulls[0]
    );
}

#[test]
fn waiting_for_another_pull_gives_up_at_the_pull_timeout_naming_the_image() {
    let env = Env::new();
    let _release = TouchOnDrop(env.hold());
    let hold_file = env.hold();
    let hold = [("APPTAINER_DOUBLE_HOLD", hold_file.to_str().unwrap())];
    let mut first = env
        .command(&["pull", "alpine:3.19"], &hold)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_until("the first pull to begin its file", PATIENCE, || {
        !env.temp_pulls().is_empty()
    });
    // Not PATIENCE: without the limit, this waits until the hold goes.
    let out = output_within(
        &mut env.command(&["pull", "--pull-timeout", "1s", "alpine:3.19"], &[]),
        Duration::from_secs(120),
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains(WAITING), "{err}");
    assert!(
        err.contains("gave up on docker.io/library/alpine:3.19")
            && err.contains("after waiting 1s (the pull timeout)")
            && err.contains("--pull-timeout"),
        "{err}"
    );
    assert_eq!(pulls(&env.log).len(), 1, "the second never pulled");

    env.release();
    let status = wait_within(&mut first, PATIENCE);
    assert_eq!(status.code(), Some(0));
}

#[test]
fn a_run_drops_the_host_s_container_env_keeps_site_binds_and_pulls_keep_their_settings() {
    let env = Env::new();
    let env_log = env.scratch.path().join("apptainer-env.log");
    let site = env.scratch.path().join("site");
    std::fs::create_dir(&site).unwrap();
    let site = site.to_str().unwrap();
    let cachedir = env.scratch.path().join("apptainer-cache");
    let host = [
        ("APPTAINER_DOUBLE_ENV_LOG", env_log.to_str().unwrap()),
        ("APPTAINERENV_INJECTED", "from-host"),
        ("SINGULARITYENV_INJECTED2", "from-host"),
        ("APPTAINER_ENV_FILE", "/nonexistent/env"),
        ("APPTAINER_BIND", site),
        ("APPTAINER_BINDPATH", site),
        ("SINGULARITY_BIND", site),
        ("SINGULARITY_BINDPATH", site),
        ("APPTAINER_CACHEDIR", cachedir.to_str().unwrap()),
        ("APPTAINER_TMPDIR", cachedir.to_str().unwrap()),
        ("APPTAINER_DOCKER_USERNAME", "alice"),
        ("APPTAINER_DOCKER_PASSWORD", "s3cret"),
    ];
    let names = |line: &serde_json::Value| -> Vec<String> {
        line["env"].as_object().unwrap().keys().cloned().collect()
    };
    let container_env = [
        "APPTAINERENV_INJECTED",
        "SINGULARITYENV_INJECTED2",
        "APPTAINER_ENV_FILE",
    ];
    let binds = [
        "APPTAINER_BIND",
        "APPTAINER_BINDPATH",
        "SINGULARITY_BIND",
        "SINGULARITY_BINDPATH",
    ];
    let settings = [
        "APPTAINER_CACHEDIR",
        "APPTAINER_TMPDIR",
        "APPTAINER_DOCKER_USERNAME",
        "APPTAINER_DOCKER_PASSWORD",
    ];

    let out = env.sifr(&["run", "alpine:3.19", "--", "true"], &host);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let log = env_lines(&env_log);
    let pull = names(log.iter().find(|l| l["argv"][0] == "pull").unwrap());
    let run = names(log.iter().find(|l| l["argv"][0] == "run").unwrap());
    for name in settings {
        assert!(
            pull.contains(&name.to_string()),
            "the pull gets {name}: {pull:?}"
        );
    }
    for name in container_env {
        assert!(
            !run.contains(&name.to_string()),
            "the run does not get {name}: {run:?}"
        );
    }
    for name in binds {
        assert!(
            run.contains(&name.to_string()),
            "site binds reach the run: {name}: {run:?}"
        );
    }

    // Asked for, the container env passes; asked to, the binds go.
    std::fs::remove_file(&env_log).unwrap();
    let out = env.sifr(
        &[
            "run",
            "--keep-container-env",
            "--no-env-binds",
            "alpine:3.19",
            "--",
            "true",
        ],
        &host,
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let log = env_lines(&env_log);
    let run = names(log.iter().find(|l| l["argv"][0] == "run").unwrap());
    for name in container_env {
        assert!(run.contains(&name.to_string()), "{name}: {run:?}");
    }
    for name in binds {
        assert!(!run.contains(&name.to_string()), "{name}: {run:?}");
    }
    assert!(run.contains(&"APPTAINER_CACHEDIR".to_string()), "{run:?}");
}

#[test]
fn a_pinned_image_is_a_hit_only_when_it_was_pulled_by_its_digest() {
    let env = Env::new();
    let digest = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    let image = format!("ubuntu:22.04@{digest}");
    let out = env.sifr(&["pull", &image], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let pulls_so_far = pulls(&env.log);
    assert_eq!(pulls_so_far.len(), 1);
    assert_eq!(pulls_so_far[0][3], format!("docker://ubuntu@{digest}"));
    // A hit, by the digest.
    let again = env.sifr(&["pull", &image], &[]);
    assert_eq!(again.status.code(), Some(0), "{}", stderr(&again));
    assert_eq!(pulls(&env.log).len(), 1);

    // A record filed under the pin that says the image came by tag (as an
    // older sifr with `prefer = "tag"` wrote them) is not the pinned image.
    let index = env.cache().join("index");
    let record = crate::common::the_record(&index);
    let mut json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&record).unwrap()).unwrap();
    json["source-uri"] = "docker://ubuntu:22.04".into();
    let tmp = record.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec(&json).unwrap()).unwrap();
    std::fs::rename(&tmp, &record).unwrap();
    let repulled = env.sifr(&["pull", &image], &[]);
    assert_eq!(repulled.status.code(), Some(0), "{}", stderr(&repulled));
    let all = pulls(&env.log);
    assert_eq!(all.len(), 2, "pulled again");
    assert_eq!(all[1][3], format!("docker://ubuntu@{digest}"));
    assert_eq!(
        entries(&env)[0]["source-uri"],
        format!("docker://ubuntu@{digest}")
    );
}

#[test]
fn on_a_terminal_a_lock_wait_shows_how_long_it_has_lasted() {
    // script(1) (util-linux; Debian's bsdutils, which is essential) runs
    // sifr on a pseudo-terminal and copies what it draws to its stdout.
    let script = which::which("script").expect("script(1), from util-linux, gives sifr a terminal");
    let env = Env::new();
    let _release = TouchOnDrop(env.hold());
    let hold_file = env.hold();
    let hold = [("APPTAINER_DOUBLE_HOLD", hold_file.to_str().unwrap())];
    let mut first = env
        .command(&["pull", "alpine:3.19"], &hold)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_until("the first pull to begin its file", PATIENCE, || {
        !env.temp_pulls().is_empty()
    });
    // The second waits on a terminal (script's pty) until it gives up.
    let sifr = env!("CARGO_BIN_EXE_sifr");
    let line = format!("'{sifr}' pull --pull-timeout 5s alpine:3.19");
    let cmd = env.command(&[], &[]);
    let mut script_cmd = Command::new(script);
    script_cmd.args(["-qec", &line, "/dev/null"]);
    for (key, value) in cmd.get_envs() {
        match value {
            Some(value) => script_cmd.env(key, value),
            None => script_cmd.env_remove(key),
        };
    }
    let out = output_within(&mut script_cmd, Duration::from_secs(120));
    let screen = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{screen}");
    // The spinner's line, redrawn while the wait lasts: some second of
    // the five, whichever a loaded machine drew.
    assert!(
        (1..5).any(|s| screen.contains(&format!(
            "waited {s}s of at most 5s: waiting for another sifr pulling"
        ))),
        "{screen}"
    );
    assert!(
        screen.contains("gave up on docker.io/library/alpine:3.19"),
        "{screen}"
    );

    env.release();
    let status = wait_within(&mut first, PATIENCE);
    assert_eq!(status.code(), Some(0));
}
