//! sifr as a drop-in `apptainer` (the front): what it takes over, what it
//! passes through untouched, and how it refuses.
//!
//! The first tests drive the front with the apptainer test double's fake
//! backend (fast, no registry). The last ones run it under the real engines
//! against real registries: Snakemake (`--sdm apptainer`) and an `sbatch
//! --array` on a single-node Slurm cluster the test starts, with the
//! double's real backend behind the front. Those need the end-to-end tools
//! plus Snakemake (`$SIFR_SNAKEMAKE`, installed in a venv by `.ci/run`) or
//! Debian's slurm-wlm and munge; without them `cargo test` lists them as
//! ignored, and under `SIFR_E2E=1` a missing tool fails them.

use crate::common;

use std::ffi::OsString;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::{apptainer_double, double_log, output_within, pulls, stderr, stdout};

/// The double's `--version` line (its default version).
const DOUBLE_VERSION: &str = "apptainer version 1.4.1\n";

/// A scratch machine: a front directory made by `sifr front install`, a
/// "real" apptainer (the test double) further down PATH, a cache and a
/// config of its own.
struct Machine {
    dir: tempfile::TempDir,
    front: PathBuf,
    real: PathBuf,
    log: PathBuf,
    config: PathBuf,
}

impl Machine {
    fn new() -> Self {
        Self::with_config("")
    }

    fn with_config(config: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let front = dir.path().join("front");
        let real = dir.path().join("real");
        std::fs::create_dir(&real).unwrap();
        std::os::unix::fs::symlink(apptainer_double(), real.join("apptainer")).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_sifr"))
            .args(["front", "install"])
            .arg(&front)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        let config_path = dir.path().join("config.toml");
        std::fs::write(
            &config_path,
            format!("[sandbox]\ntimeout-ms = 10000\n{config}"),
        )
        .unwrap();
        let log = dir.path().join("apptainer.log");
        Self {
            dir,
            front,
            real,
            log,
            config: config_path,
        }
    }

    fn path(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    fn cache(&self) -> PathBuf {
        self.dir.path().join("cache")
    }

    /// PATH as a site module sets it: the front first, then the rest.
    fn path_var(&self) -> OsString {
        let system = std::env::var_os("PATH").unwrap_or_default();
        let mut dirs = vec![self.front.clone(), self.real.clone()];
        dirs.extend(std::env::split_paths(&system));
        std::env::join_paths(dirs).unwrap()
    }

    fn env(&self, cmd: &mut Command) {
        cmd.env("PATH", self.path_var())
            .env("SIFR_CACHE_DIR", self.cache())
            .env("SIFR_CONFIG", &self.config)
            .env("XDG_CONFIG_HOME", self.dir.path().join("xdg"))
            .env("APPTAINER_DOUBLE_LOG", &self.log)
            .env_remove("SIFR_APPTAINER")
            .env_remove("SIFR_FRONT_REAL")
            .env_remove("APPTAINER_CONTAINER");
    }

    /// `apptainer ARGS` as a user (or an engine) types it: the front.
    fn apptainer(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(self.front.join("apptainer"));
        cmd.args(args).current_dir(self.dir.path());
        self.env(&mut cmd);
        cmd
    }

    /// The double itself, with the same environment, to compare with.
    fn real_apptainer(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(self.real.join("apptainer"));
        cmd.args(args).current_dir(self.dir.path());
        self.env(&mut cmd);
        cmd
    }

    fn sifr(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sifr"));
        cmd.args(args).current_dir(self.dir.path());
        self.env(&mut cmd);
        cmd
    }

    /// The SIF files in the cache.
    fn blobs(&self) -> Vec<PathBuf> {
        match std::fs::read_dir(self.cache().join("blobs/sha256")) {
            Ok(dir) => dir.map(|e| e.unwrap().path()).collect(),
            Err(_) => Vec::new(),
        }
    }
}

fn run(cmd: &mut Command) -> Output {
    output_within(cmd, Duration::from_secs(120))
}

fn ok(cmd: &mut Command) -> Output {
    let out = run(cmd);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{cmd:?}\nstdout:\n{}\nstderr:\n{}",
        stdout(&out),
        stderr(&out)
    );
    out
}

fn is_sif(path: &Path) -> bool {
    std::fs::read(path).is_ok_and(|b| b.get(32..41) == Some(&b"SIF_MAGIC"[..]))
}

#[test]
fn version_is_the_real_apptainer_s() {
    let m = Machine::new();
    for args in [&["--version"][..], &["version"]] {
        let front = ok(&mut m.apptainer(args));
        let real = ok(&mut m.real_apptainer(args));
        assert_eq!(front.stdout, real.stdout, "{args:?}");
        assert_eq!(front.stderr, real.stderr, "{args:?}");
    }
    assert_eq!(
        stdout(&ok(&mut m.apptainer(&["--version"]))),
        DOUBLE_VERSION
    );
}

#[test]
fn other_commands_and_uris_pass_through_byte_for_byte() {
    let m = Machine::new();
    // A SIF to run, pulled by the double itself.
    ok(&mut m.real_apptainer(&["pull", "x.sif", "docker://example.test/a:1"]));
    let before = double_log(&m.log).len();
    let cases: &[&[&str]] = &[
        &["pull", "out.sif", "oras://example.test/x:1"],
        &["pull", "library://alpine"],
        &["exec", "x.sif", "echo", "docker://busybox"],
        &[
            "exec",
            "--cleanenv",
            "x.sif",
            "sh",
            "-c",
            "echo hi >&2; exit 3",
        ],
        &["run", "x.sif"],
        &["shell", "x.sif"],
        &["instance", "start", "docker://example.test/a:1", "web"],
        &["build", "--sandbox", "d", "docker://example.test/a:1"],
        &["frobnicate"],
        &["help"],
        &[],
    ];
    for args in cases {
        let front = run(&mut m.apptainer(args));
        let real = run(&mut m.real_apptainer(args));
        assert_eq!(front.status.code(), real.status.code(), "{args:?}");
        assert_eq!(stdout(&front), stdout(&real), "{args:?}");
        assert_eq!(stderr(&front), stderr(&real), "{args:?}");
    }
    let log = double_log(&m.log);
    let seen: Vec<&Vec<String>> = log[before..].iter().step_by(2).collect();
    for (argv, args) in seen.iter().zip(cases) {
        assert_eq!(argv, args, "the double got the argv untouched");
    }
    assert!(m.blobs().is_empty(), "nothing went through sifr's cache");

    // stdin reaches it, and the exit code is its own.
    let mut child = m
        .apptainer(&["exec", "x.sif", "cat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), b"from stdin\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(stdout(&out), "from stdin\n");
}

#[test]
fn a_signal_reaches_what_the_front_passes_through() {
    let m = Machine::new();
    ok(&mut m.real_apptainer(&["pull", "x.sif", "docker://example.test/a:1"]));
    let mut child = m
        .apptainer(&["exec", "x.sif", "sleep", "60"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    common::wait_until(
        "the front to become the command",
        Duration::from_secs(30),
        || {
            std::fs::read_to_string(format!("/proc/{}/comm", child.id()))
                .is_ok_and(|c| c.trim() == "sleep")
        },
    );
    let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    let status = common::wait_within(&mut child, Duration::from_secs(30));
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(15));
}

/// A taken-over action runs apptainer as the front's child: a signal sent
/// to the front (scancel, an engine's timeout) reaches it, and the front
/// dies of it as apptainer did.
#[test]
fn a_signal_reaches_a_taken_over_action_and_the_front_dies_of_it() {
    let m = Machine::new();
    let mut child = m
        .apptainer(&["exec", "docker://example.test/a:1", "sleep", "60"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let front = child.id();
    common::wait_until(
        "apptainer (the double, become sleep) to run under the front",
        Duration::from_secs(60),
        || {
            std::fs::read_to_string(format!("/proc/{front}/task/{front}/children"))
                .ok()
                .and_then(|c| c.split_whitespace().next().map(str::to_string))
                .is_some_and(|pid| {
                    std::fs::read_to_string(format!("/proc/{pid}/comm"))
                        .is_ok_and(|c| c.trim() == "sleep")
                })
        },
    );
    let pid = rustix::process::Pid::from_raw(front as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    let status = common::wait_within(&mut child, Duration::from_secs(30));
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(15), "{status:?}");
}

/// A signal to the front while it pulls (scancel, an engine's timeout)
/// stops the pull: apptainer's process group is stopped, nothing is left
/// in the cache or at DEST, and the front dies of the signal.
#[test]
fn a_signal_stops_a_pull_through_the_front_and_leaves_nothing() {
    let m = Machine::new();
    let hold = m.path().join("release");
    let _release = common::TouchOnDrop(hold.clone());
    let pids = m.path().join("pids");
    let reaper = common::Reaper(pids.clone());
    let mut child = m
        .apptainer(&["pull", "--name", "x.simg", "docker://example.test/a:1"])
        .env("APPTAINER_DOUBLE_HOLD", &hold)
        .env("APPTAINER_DOUBLE_PID_FILE", &pids)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    common::wait_until(
        "the double's pull to begin",
        Duration::from_secs(60),
        || pulls(&m.log).len() == 1,
    );
    let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    let status = common::wait_within(&mut child, Duration::from_secs(60));
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(15), "{status:?}");
    common::wait_until(
        "the pull's processes to end",
        Duration::from_secs(30),
        || {
            common::recorded_pids(&pids)
                .iter()
                .all(|&pid| !common::process_running(pid))
        },
    );
    drop(reaper);
    assert!(!m.path().join("x.simg").exists());
    assert!(m.blobs().is_empty());
    let leftovers: Vec<_> = std::fs::read_dir(m.cache().join("tmp"))
        .map(|d| d.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn pulls_with_name_in_two_workflow_directories_make_one_pull() {
    let m = Machine::new();
    let uri = "docker://example.test/busybox:1.36";
    let mut dests = Vec::new();
    for workflow in ["one", "two"] {
        // Snakemake: `apptainer pull --name <md5>.simg URL`, run in
        // .snakemake/singularity/.
        let dir = m.path().join(workflow).join(".snakemake/singularity");
        std::fs::create_dir_all(&dir).unwrap();
        let out = ok(m
            .apptainer(&["pull", "--name", "0a1b2c.simg", uri])
            .current_dir(&dir));
        assert!(stderr(&out).contains("INFO:    sifr:"), "{}", stderr(&out));
        dests.push(dir.join("0a1b2c.simg"));
    }
    let pulls = pulls(&m.log);
    assert_eq!(pulls.len(), 1, "one pull for both: {pulls:?}");
    assert_eq!(pulls[0][1], "--force", "sifr's own pull into its cache");
    assert!(
        pulls[0]
            .iter()
            .any(|a| a.starts_with(&m.cache().display().to_string()))
    );
    assert_eq!(pulls[0].last().unwrap(), uri);

    let blobs = m.blobs();
    assert_eq!(blobs.len(), 1);
    let blob = std::fs::metadata(&blobs[0]).unwrap();
    for dest in &dests {
        assert!(is_sif(dest), "{}", dest.display());
        let meta = std::fs::metadata(dest).unwrap();
        assert_ne!(meta.ino(), blob.ino(), "a file of its own, never the blob");
        assert_eq!(meta.len(), blob.len());
        // And apptainer runs it.
        ok(&mut m.apptainer(&["exec", dest.to_str().unwrap(), "true"]));
    }
    // Deleting or changing a destination leaves the cache intact.
    std::fs::write(&dests[0], "changed").unwrap();
    std::fs::remove_file(&dests[1]).unwrap();
    ok(&mut m.sifr(&["cache", "verify"]));
}

#[test]
fn pull_destinations_force_and_build() {
    let m = Machine::new();
    let uri = "docker://example.test/tool:2";
    ok(&mut m.apptainer(&["pull", uri]));
    assert!(
        is_sif(&m.path().join("tool_2.sif")),
        "apptainer's default name"
    );
    std::fs::create_dir_all(m.path().join("images")).unwrap();
    ok(&mut m.apptainer(&["pull", "--dir", "images", "--name", "t.sif", uri]));
    assert!(is_sif(&m.path().join("images/t.sif")));

    // apptainer's rule: an existing file is not overwritten without --force.
    std::fs::write(m.path().join("mine.sif"), "mine").unwrap();
    let out = run(&mut m.apptainer(&["pull", "mine.sif", uri]));
    assert_eq!(out.status.code(), Some(255));
    assert_eq!(
        stderr(&out),
        format!(
            "FATAL:   Image file already exists: \"{}\" - will not overwrite\n",
            m.path().join("mine.sif").display()
        )
    );
    assert_eq!(std::fs::read(m.path().join("mine.sif")).unwrap(), b"mine");
    ok(&mut m.apptainer(&["pull", "-F", "mine.sif", uri]));
    assert!(is_sif(&m.path().join("mine.sif")));

    // `build DEST docker://REF` is a pull.
    ok(&mut m.apptainer(&["build", "built.sif", uri]));
    assert!(is_sif(&m.path().join("built.sif")));
    assert_eq!(pulls(&m.log).len(), 1, "all from one pull");

    // --disable-cache: apptainer's own layer cache is off for sifr's pull.
    let env_log = m.path().join("env.log");
    ok(
        m.apptainer(&["pull", "--disable-cache", "docker://example.test/other:1"])
            .env("APPTAINER_DOUBLE_ENV_LOG", &env_log),
    );
    assert!(is_sif(&m.path().join("other_1.sif")));
    let pull_env: serde_json::Value = std::fs::read_to_string(&env_log)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
        .find(|entry| entry["argv"][0] == "pull")
        .unwrap();
    assert_eq!(
        pull_env["env"]["APPTAINER_DISABLE_CACHE"], "true",
        "{pull_env}"
    );
    assert_eq!(pulls(&m.log).len(), 2);
}

#[test]
fn a_docker_image_of_an_action_becomes_the_cached_sif() {
    let m = Machine::new();
    let work = m.path().join("work");
    std::fs::create_dir(&work).unwrap();
    let w = work.to_str().unwrap();
    // Snakemake's job command line, with a docker:// image.
    let args = [
        "exec",
        "--home",
        w,
        "--bind",
        w,
        "docker://example.test/busybox:1",
        "sh",
        "-c",
        "echo $APPTAINER_CONTAINER; exit 4",
    ];
    let out = run(&mut m.apptainer(&args));
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    let blobs = m.blobs();
    assert_eq!(blobs.len(), 1);
    let blob = std::fs::canonicalize(&blobs[0]).unwrap();
    assert_eq!(stdout(&out).trim(), blob.display().to_string());
    let log = double_log(&m.log);
    let exec = log.iter().find(|a| a[0] == "exec").unwrap();
    let mut expected: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    expected[5] = blobs[0].display().to_string();
    assert_eq!(exec, &expected, "only the image changed");

    // Nextflow's run command line: `-q -v exec --no-home --pid -B DIR IMG …`.
    let out = ok(&mut m.apptainer(&[
        "-q",
        "-v",
        "exec",
        "--no-home",
        "--pid",
        "-B",
        w,
        "docker://example.test/busybox:1",
        "/bin/sh",
        "-c",
        "echo nextflow",
    ]));
    assert_eq!(stdout(&out), "nextflow\n");
    assert_eq!(pulls(&m.log).len(), 1, "cached");

    // run, shell, inspect and test get the cached SIF the same way (the
    // double implements only run of them; its log shows what apptainer got).
    for command in [
        &["run", "--cleanenv"][..],
        &["shell", "-s", "/bin/sh"],
        &["inspect", "--json"],
        &["test"],
    ] {
        let mut args = command.to_vec();
        args.push("docker://example.test/busybox:1");
        let _ = run(&mut m.apptainer(&args));
        let last = double_log(&m.log).pop().unwrap();
        let mut expected: Vec<String> = command.iter().map(|a| a.to_string()).collect();
        expected.push(blobs[0].display().to_string());
        assert_eq!(last, expected, "{command:?}");
    }
    assert_eq!(pulls(&m.log).len(), 1, "cached");
}

/// Nextflow's own command lines (nextflow-io/nextflow: SingularityCache
/// `downloadContainerImage0` and ApptainerBuilderTest), through `bash -c`
/// as Nextflow runs them; the task's `env -` leaves apptainer PATH alone.
#[test]
fn nextflow_s_command_lines() {
    let m = Machine::new();
    let cache = m.path().join("nxf-cache");
    std::fs::create_dir(&cache).unwrap();
    let out = ok(m.apptainer(&[]).current_dir(&cache).through_bash(
        "apptainer pull  --name example.test-foo-1.img.pulling.1700000000000 \
             docker://example.test/foo:1 > /dev/null \
             && mv example.test-foo-1.img.pulling.1700000000000 example.test-foo-1.img",
    ));
    assert_eq!(stdout(&out), "");
    assert!(is_sif(&cache.join("example.test-foo-1.img")));
    // `noHttps = true` adds the deprecated flag: the policy decides instead.
    let out = ok(m.apptainer(&[]).current_dir(&cache).through_bash(
        "apptainer pull --nohttps --name x.img.pulling.1 docker://example.test/foo:1 > /dev/null",
    ));
    assert!(
        stderr(&out).contains("--no-https is ignored"),
        "{}",
        stderr(&out)
    );
    assert_eq!(pulls(&m.log).len(), 1);

    let task = m.path().join("work/ab/cdef");
    std::fs::create_dir_all(&task).unwrap();
    let out = ok(m
        .apptainer(&[])
        .current_dir(&task)
        .env("NXF_TASK_WORKDIR", &task)
        .through_bash(&format!(
            "set +u; env - PATH=\"$PATH\" ${{TMP:+APPTAINERENV_TMP=\"$TMP\"}} \
             ${{TMPDIR:+APPTAINERENV_TMPDIR=\"$TMPDIR\"}} apptainer exec --no-home --pid \
             -B \"$NXF_TASK_WORKDIR\" {} /bin/bash -c \"cd $NXF_TASK_WORKDIR; pwd\"",
            cache.join("example.test-foo-1.img").display()
        )));
    assert_eq!(stdout(&out).trim(), task.display().to_string());
}

/// Run a shell line instead of the program (engines go through a shell).
trait Bash {
    fn through_bash(&mut self, line: &str) -> &mut Command;
}

impl Bash for Command {
    fn through_bash(&mut self, line: &str) -> &mut Command {
        let mut bash = Command::new("bash");
        bash.arg("-c").arg(line);
        if let Some(dir) = self.get_current_dir() {
            bash.current_dir(dir);
        }
        for (key, value) in self.get_envs() {
            match value {
                Some(value) => bash.env(key, value),
                None => bash.env_remove(key),
            };
        }
        *self = bash;
        self
    }
}

#[test]
fn a_denial_is_one_fatal_line_and_nothing_is_pulled() {
    let m = Machine::with_config(
        "[[plugin]]\nname = \"no-latest\"\nbuiltin = \"tags\"\n[plugin.settings]\ndeny-latest = true\n",
    );
    for args in [
        &[
            "pull",
            "--name",
            "x.simg",
            "docker://example.test/busybox:latest",
        ][..],
        &["exec", "docker://example.test/busybox", "true"],
    ] {
        let out = run(&mut m.apptainer(args));
        assert_eq!(out.status.code(), Some(4), "{args:?}");
        let err = stderr(&out);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.starts_with("FATAL:   sifr: ")
                && err.contains("denied by plugin 'no-latest'")
                && err.contains("deny-latest"),
            "{err}"
        );
    }
    assert!(!m.path().join("x.simg").exists());
    assert!(pulls(&m.log).is_empty());

    // A pull timeout that is not a duration: refused, as `sifr pull`
    // refuses it, never a silent default.
    let out = run(m
        .apptainer(&["pull", "docker://example.test/busybox:1"])
        .env("SIFR_PULL_TIMEOUT", "soon"));
    assert_eq!(out.status.code(), Some(3));
    let err = stderr(&out);
    assert!(
        err.starts_with("FATAL:   sifr: $SIFR_PULL_TIMEOUT: \"soon\" is not a duration"),
        "{err}"
    );
    assert!(pulls(&m.log).is_empty());

    // Every source failing is one line too.
    let out = run(m
        .apptainer(&["pull", "docker://example.test/busybox:1"])
        .env("APPTAINER_DOUBLE_FAIL", "example.test"));
    assert_eq!(out.status.code(), Some(8));
    let err = stderr(&out);
    let fatal: Vec<&str> = err.lines().filter(|l| l.starts_with("FATAL:")).collect();
    assert_eq!(fatal.len(), 1, "{err}");
    assert!(fatal[0].contains("every source failed"), "{err}");
}

#[test]
fn sifr_locked_pins_a_workflow_s_pulls_through_the_front() {
    let m = Machine::new();
    let digest = format!("sha256:{}", "a".repeat(64));
    let lock = m.path().join("sifr.lock");
    // As `sifr lock` writes it, for this machine; the chain it names is
    // not the one in use (for the --frozen case below).
    std::fs::write(
        &lock,
        format!(
            "version = 1\n\n[[image]]\nreference = \"docker://example.test/busybox:1.36\"\n\
             canonical = \"example.test/busybox:1.36\"\narch = \"{}\"\n\
             manifest-digest = \"{digest}\"\nresolved-at = \"example.test\"\npolicy = []\n",
            sifr::policy::host_arch()
        ),
    )
    .unwrap();
    let out = ok(m
        .apptainer(&[
            "pull",
            "--name",
            "x.simg",
            "docker://example.test/busybox:1.36",
        ])
        .env("SIFR_LOCKED", &lock));
    assert!(is_sif(&m.path().join("x.simg")), "{}", stderr(&out));
    let pulls = pulls(&m.log);
    assert_eq!(
        pulls[0].last().unwrap(),
        &format!("docker://example.test/busybox@{digest}"),
        "pulled by the locked digest, whatever the tag names"
    );

    // An image the lock does not cover: one FATAL line, nothing pulled.
    for args in [
        &["pull", "docker://example.test/busybox:1.37"][..],
        &["exec", "docker://example.test/other:1", "true"],
    ] {
        let out = run(m.apptainer(args).env("SIFR_LOCKED", &lock));
        assert_eq!(out.status.code(), Some(11), "{args:?}");
        let err = stderr(&out);
        assert!(
            err.starts_with("FATAL:   sifr: ")
                && err.contains("is not in")
                && err.contains("sifr lock"),
            "{err}"
        );
    }
    assert_eq!(common::pulls(&m.log).len(), 1);

    // SIFR_FROZEN=1: the chain is not the locked one, so it refuses.
    let out = run(m
        .apptainer(&[
            "pull",
            "--force",
            "--name",
            "y.simg",
            "docker://example.test/busybox:1.36",
        ])
        .env("SIFR_LOCKED", &lock)
        .env("SIFR_FROZEN", "1"));
    assert_eq!(out.status.code(), Some(10), "{}", stderr(&out));
    assert!(stderr(&out).contains("out of date"), "{}", stderr(&out));
    assert!(!m.path().join("y.simg").exists());

    // A lock file that is not one: exit 11, naming it.
    let bad = m.path().join("bad.lock");
    std::fs::write(&bad, "version = 7\n").unwrap();
    let out = run(m
        .apptainer(&["pull", "docker://example.test/busybox:1.36"])
        .env("SIFR_LOCKED", &bad));
    assert_eq!(out.status.code(), Some(11));
    assert!(stderr(&out).contains("bad.lock"), "{}", stderr(&out));
}

#[test]
fn a_pull_flag_the_front_does_not_take_goes_to_apptainer_with_the_policy_s_uri() {
    let m = Machine::with_config(
        "[[plugin]]\nname = \"site-mirror\"\nbuiltin = \"mirror\"\n[plugin.settings]\n\
         registries = [\"example.test\"]\n[[plugin.settings.mirrors]]\nregistry = \"mirror.test\"\n\
         plain-http = true\n[[plugin]]\nname = \"default\"\nbuiltin = \"default\"\n",
    );
    // Another architecture is not this host's cache: apptainer pulls it.
    let out = ok(m
        .apptainer(&[
            "pull",
            "--arch",
            "arm64",
            "x.sif",
            "docker://example.test/a:1",
        ])
        .env("APPTAINER_DOUBLE_FAIL", "mirror.test"));
    let err = stderr(&out);
    assert!(
        err.contains("WARNING: sifr: --arch arm64 is not this host's")
            && err.contains(
                "rewrote docker://example.test/a:1 to docker://mirror.test/a:1, then docker://example.test/a:1"
            )
            && err.contains("falling back to docker://example.test/a:1"),
        "{err}"
    );
    assert_eq!(
        pulls(&m.log),
        [
            vec![
                "pull",
                "--no-https",
                "--arch",
                "arm64",
                "x.sif",
                "docker://mirror.test/a:1"
            ],
            vec![
                "pull",
                "--arch",
                "arm64",
                "x.sif",
                "docker://example.test/a:1"
            ],
        ]
    );
    assert!(is_sif(&m.path().join("x.sif")));
    assert!(m.blobs().is_empty(), "not in sifr's cache");
}

#[test]
fn the_front_refuses_to_recurse() {
    let m = Machine::new();
    // $SIFR_APPTAINER naming the front.
    let out = run(m
        .apptainer(&["pull", "docker://example.test/a:1"])
        .env("SIFR_APPTAINER", m.front.join("apptainer")));
    assert_eq!(out.status.code(), Some(7));
    assert!(
        stderr(&out).contains("which is sifr itself"),
        "{}",
        stderr(&out)
    );

    // Only the front on PATH.
    let out = run(m.apptainer(&["--version"]).env("PATH", &m.front));
    assert_eq!(out.status.code(), Some(7));
    assert!(
        stderr(&out).starts_with(
            "FATAL:   sifr: no real apptainer or singularity on PATH besides sifr's front"
        ),
        "{}",
        stderr(&out)
    );

    // A site wrapper that runs `apptainer` from PATH leads back to the front.
    let wrapper = m.path().join("wrapper");
    std::fs::create_dir(&wrapper).unwrap();
    std::fs::write(
        wrapper.join("apptainer"),
        "#!/bin/sh\nexec apptainer \"$@\"\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        wrapper.join("apptainer"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    let path = std::env::join_paths([&m.front, &wrapper, &m.real]).unwrap();
    let out = run(m.apptainer(&["--version"]).env("PATH", path));
    assert_eq!(out.status.code(), Some(7));
    assert!(stderr(&out).contains("recursion"), "{}", stderr(&out));

    // `[apptainer] path` naming a wrapper that execs the front itself; from
    // sifr too, whose calls the front otherwise passes straight through.
    let execs_front = wrapper.join("execs-front");
    std::fs::write(
        &execs_front,
        format!(
            "#!/bin/sh\nexec '{}' \"$@\"\n",
            m.front.join("apptainer").display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&execs_front, std::fs::Permissions::from_mode(0o755)).unwrap();
    let config = m.path().join("wrapped.toml");
    std::fs::write(
        &config,
        format!("[apptainer]\npath = \"{}\"\n", execs_front.display()),
    )
    .unwrap();
    let out = run(m.apptainer(&["--version"]).env("SIFR_CONFIG", &config));
    assert_eq!(out.status.code(), Some(7));
    assert!(stderr(&out).contains("recursion"), "{}", stderr(&out));
    let out = run(m
        .sifr(&["pull", "example.test/a:1"])
        .env("SIFR_CONFIG", &config));
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
    assert!(pulls(&m.log).is_empty());
}

#[test]
fn sifr_itself_with_the_front_on_path_reaches_the_real_apptainer() {
    let m = Machine::new();
    // No SIFR_APPTAINER: sifr finds `apptainer` on PATH, which is the front.
    let out = ok(&mut m.sifr(&["pull", "example.test/a:1"]));
    assert!(is_sif(Path::new(stdout(&out).trim())));
    assert_eq!(pulls(&m.log).len(), 1);
}

#[test]
fn explain_and_status_say_what_the_front_does() {
    let m = Machine::new();
    let out = ok(&mut m.apptainer(&[
        "--explain",
        "pull",
        "--name",
        "x.simg",
        "docker://example.test/a:1",
    ]));
    let text = stdout(&out);
    assert!(
        text.contains("taken over")
            && text.contains(&m.path().join("x.simg").display().to_string())
            && text.contains("result: try in this order")
            && text.contains("1. docker://example.test/a:1"),
        "{text}"
    );
    assert!(!m.path().join("x.simg").exists() && pulls(&m.log).is_empty());

    let text = stdout(&ok(&mut m.apptainer(&["--explain", "exec", "x.sif", "ls"])));
    assert!(
        text.contains("passed to the real apptainer untouched: x.sif is not a docker:// reference"),
        "{text}"
    );

    let text = stdout(&ok(&mut m.sifr(&["front", "status"])));
    assert!(
        text.contains(&format!(
            "apptainer on PATH: {} (sifr's front: in use)",
            m.front.join("apptainer").display()
        )) && text.contains(&format!(
            "real apptainer: {}",
            m.real.join("apptainer").display()
        )) && text.contains(&format!("cache: {}", m.cache().display())),
        "{text}"
    );
    let text = stdout(&ok(&mut m.sifr(&[
        "front",
        "status",
        "--",
        "exec",
        "--home",
        "/w",
        "docker://example.test/a:1",
        "ls",
    ])));
    assert!(
        text.contains("exec --home /w <cached SIF of example.test/a:1> ls"),
        "{text}"
    );
}

// ---------------------------------------------------------------------------
// Under real engines, on real registries.

const E2E_TOOLS: &[(&str, &str)] = &[
    ("docker-registry", "docker-registry"),
    ("skopeo", "skopeo"),
    ("umoci", "umoci"),
    ("mksquashfs", "squashfs-tools"),
    ("unsquashfs", "squashfs-tools"),
    ("siftool", "siftool"),
    ("bwrap", "bubblewrap"),
    ("busybox", "busybox-static"),
    ("openssl", "openssl"),
];

fn require(tools: &[(&str, &str)]) {
    let missing: Vec<&str> = tools
        .iter()
        .filter(|(tool, _)| which::which(tool).is_err())
        .map(|(_, package)| *package)
        .collect();
    assert!(
        missing.is_empty(),
        "these tests need: apt-get install {}",
        missing.join(" ")
    );
}

/// A certificate for 127.0.0.1 and an OCI layout: busybox, a `bash` that
/// is busybox's sh (engines run `bash -c`), and `/IMAGE` saying which
/// image it is.
struct Fixtures {
    dir: tempfile::TempDir,
}

impl Fixtures {
    fn new() -> Self {
        require(E2E_TOOLS);
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        std::fs::create_dir(p.join("certs")).unwrap();
        ok(Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            ])
            .args([
                "-subj",
                "/CN=127.0.0.1",
                "-addext",
                "subjectAltName=IP:127.0.0.1",
            ])
            .arg("-keyout")
            .arg(p.join("key.pem"))
            .arg("-out")
            .arg(p.join("cert.pem")));
        std::fs::copy(p.join("cert.pem"), p.join("certs/ca.crt")).unwrap();
        let root = p.join("root");
        std::fs::create_dir_all(root.join("bin")).unwrap();
        std::fs::copy(which::which("busybox").unwrap(), root.join("bin/busybox")).unwrap();
        for applet in ["sh", "cat", "echo", "wc", "true", "ls", "env", "pwd"] {
            std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
        }
        std::fs::write(root.join("bin/bash"), "#!/bin/sh\nexec /bin/sh \"$@\"\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            root.join("bin/bash"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        std::fs::write(p.join("marker"), "busybox for engines\n").unwrap();
        let image = format!("{}:1", p.join("layout").display());
        ok(Command::new("umoci")
            .arg("init")
            .arg("--layout")
            .arg(p.join("layout")));
        ok(Command::new("umoci").args(["new", "--image", &image]));
        ok(Command::new("umoci")
            .args(["insert", "--image", &image])
            .arg(&root)
            .arg("/"));
        ok(Command::new("umoci")
            .args(["insert", "--image", &image])
            .arg(p.join("marker"))
            .arg("/IMAGE"));
        ok(Command::new("umoci").args([
            "config",
            "--image",
            &image,
            "--config.cmd",
            "sh",
            "--config.env",
            "PATH=/bin",
        ]));
        Self { dir }
    }

    fn certs(&self) -> PathBuf {
        self.dir.path().join("certs")
    }
}

/// A `docker-registry` on 127.0.0.1, stopped when dropped.
struct Registry {
    child: std::process::Child,
    port: u16,
    _dir: tempfile::TempDir,
    tls: bool,
}

impl Registry {
    fn start(fx: &Fixtures, tls: bool) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let tls_config = if tls {
            format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                fx.dir.path().join("cert.pem").display(),
                fx.dir.path().join("key.pem").display()
            )
        } else {
            String::new()
        };
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n\
                 http:\n  addr: 127.0.0.1:{port}\n{tls_config}",
                dir.path().join("data").display()
            ),
        )
        .unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        common::wait_until("the registry to listen", Duration::from_secs(30), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        Self {
            child,
            port,
            _dir: dir,
            tls,
        }
    }

    fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn push(&self, fx: &Fixtures, repository: &str) {
        let mut cmd = Command::new("skopeo");
        cmd.args(["copy", "--insecure-policy", "--quiet"]);
        if self.tls {
            cmd.arg("--dest-cert-dir").arg(fx.certs());
        } else {
            cmd.arg("--dest-tls-verify=false");
        }
        cmd.arg(format!("oci:{}:1", fx.dir.path().join("layout").display()))
            .arg(format!("docker://{}/{repository}", self.host()));
        ok(&mut cmd);
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A machine whose apptainer is the double's real backend, trusting the
/// registries' certificate.
fn real_machine(fx: &Fixtures, config: &str) -> Machine {
    let m = Machine::with_config(config);
    // The double's real backend, with its controls, wherever the front is
    // run from (jobs inherit the environment).
    let wrapper = m.real.join("apptainer");
    std::fs::remove_file(&wrapper).unwrap();
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nAPPTAINER_DOUBLE_BACKEND=real APPTAINER_DOUBLE_CERT_DIR='{}' exec '{}' \"$@\"\n",
            fx.certs().display(),
            apptainer_double().display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    m
}

fn mirror_config(origin: &Registry, mirror: &Registry) -> String {
    format!(
        "[[plugin]]\nname = \"site-mirror\"\nbuiltin = \"mirror\"\n[plugin.settings]\n\
         registries = [\"{}\"]\n[[plugin.settings.mirrors]]\nregistry = \"{}\"\nplain-http = true\n\
         [[plugin]]\nname = \"default\"\nbuiltin = \"default\"\n\
         [[plugin]]\nname = \"no-latest\"\nbuiltin = \"tags\"\n[plugin.settings]\ndeny-latest = true\n",
        origin.host(),
        mirror.host()
    )
}

/// Snakemake, from `$SIFR_SNAKEMAKE` (the venv `.ci/run` makes) or PATH.
fn snakemake() -> PathBuf {
    let found = std::env::var_os("SIFR_SNAKEMAKE")
        .map(PathBuf::from)
        .filter(|p| p.is_file())
        .or_else(|| which::which("snakemake").ok());
    found.expect(
        "these tests need Snakemake 9.27.1: python3 -m venv VENV && VENV/bin/pip install \
         snakemake==9.27.1 snakemake-executor-plugin-slurm==2.8.0, then \
         SIFR_SNAKEMAKE=VENV/bin/snakemake (.ci/run does this)",
    )
}

fn snakefile(image: &str) -> String {
    format!(
        "rule all:\n    input: \"b.txt\"\n\n\
         rule a:\n    output: \"a.txt\"\n    container: \"docker://{image}\"\n    \
         shell: \"cat /IMAGE > {{output}}\"\n\n\
         rule b:\n    input: \"a.txt\"\n    output: \"b.txt\"\n    container: \"docker://{image}\"\n    \
         shell: \"wc -l < {{input}} > {{output}}; cat {{input}} >> {{output}}\"\n"
    )
}

fn run_snakemake(m: &Machine, workdir: &Path) -> Output {
    run_snakemake_with(m, workdir, &["--cores", "2"])
}

fn run_snakemake_with(m: &Machine, workdir: &Path, args: &[&str]) -> Output {
    let venv_bin = snakemake().parent().unwrap().to_path_buf();
    let mut cmd = Command::new(snakemake());
    cmd.args(args)
        .args(["--sdm", "apptainer", "--snakefile"])
        .arg(workdir.join("Snakefile"))
        .arg("--directory")
        .arg(workdir)
        .current_dir(workdir);
    m.env(&mut cmd);
    let mut path = vec![m.front.clone(), m.real.clone(), venv_bin];
    path.extend(std::env::split_paths(&std::env::var_os("PATH").unwrap()));
    cmd.env("PATH", std::env::join_paths(path).unwrap())
        .env("HOME", m.path().join("home"))
        .env("XDG_CACHE_HOME", m.path().join("xdg-cache"));
    output_within(&mut cmd, Duration::from_secs(600))
}

#[test]
#[cfg_attr(
    not(all(sifr_e2e, sifr_snakemake)),
    ignore = "Snakemake: needs the end-to-end tools and Snakemake 9.27.1 (SIFR_SNAKEMAKE=VENV/bin/snakemake), or SIFR_E2E=1"
)]
fn snakemake_pulls_through_the_front_once_for_two_workflows() {
    let fx = Fixtures::new();
    let origin = Registry::start(&fx, true);
    let mirror = Registry::start(&fx, false);
    // Only the origin has it: the mirror fails and the pull falls back.
    origin.push(&fx, "e2e/busybox:1");
    origin.push(&fx, "e2e/busybox:latest");
    let m = real_machine(&fx, &mirror_config(&origin, &mirror));
    std::fs::create_dir(m.path().join("home")).unwrap();
    let image = format!("{}/e2e/busybox:1", origin.host());

    for (n, workflow) in ["one", "two"].iter().enumerate() {
        let dir = m.path().join(workflow);
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("Snakefile"), snakefile(&image)).unwrap();
        let out = run_snakemake(&m, &dir);
        assert!(
            out.status.success(),
            "snakemake in {workflow}:\n{}\n{}",
            stdout(&out),
            stderr(&out)
        );
        assert_eq!(
            std::fs::read_to_string(dir.join("a.txt")).unwrap(),
            "busybox for engines\n"
        );
        assert_eq!(
            std::fs::read_to_string(dir.join("b.txt")).unwrap(),
            "1\nbusybox for engines\n"
        );
        // Snakemake's own copy, from sifr's cache.
        let simg: Vec<_> = std::fs::read_dir(dir.join(".snakemake/singularity"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "simg"))
            .collect();
        assert_eq!(simg.len(), 1, "{simg:?}");
        assert!(is_sif(&simg[0]));
        let pulls = pulls(&m.log);
        assert_eq!(
            pulls
                .iter()
                .map(|p| p.last().unwrap().clone())
                .collect::<Vec<_>>(),
            [
                format!("docker://{}/e2e/busybox:1", mirror.host()),
                format!("docker://{image}")
            ],
            "after workflow {n}: one pull through sifr (the mirror, then the origin)"
        );
    }
    assert_eq!(m.blobs().len(), 1);

    // A denied image fails the workflow with the policy's reason in its log.
    let dir = m.path().join("denied");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(
        dir.join("Snakefile"),
        snakefile(&format!("{}/e2e/busybox:latest", origin.host())),
    )
    .unwrap();
    let out = run_snakemake(&m, &dir);
    assert!(!out.status.success());
    let logs: String = std::fs::read_dir(dir.join(".snakemake/log"))
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
        .collect();
    for text in [&logs, &stderr(&out)] {
        assert!(
            text.contains("FATAL:   sifr: ")
                && text.contains("denied by plugin 'no-latest'")
                && text.contains("deny-latest"),
            "{text}"
        );
    }
    assert!(!dir.join("a.txt").exists());
    assert_eq!(pulls(&m.log).len(), 2, "nothing more pulled");
}

/// A single-node Slurm cluster: munged, slurmctld and slurmd, started by
/// the test and stopped (by pid) when dropped, with `/etc/slurm/slurm.conf`
/// restored or removed.
struct Cluster {
    dir: tempfile::TempDir,
    daemons: Vec<std::process::Child>,
    saved_conf: Option<Vec<u8>>,
    /// Dropped last, once the configuration is restored.
    _one: std::fs::File,
}

const SLURM_CONF: &str = "/etc/slurm/slurm.conf";

/// One cluster at a time on the machine, across test processes too: they
/// share `/etc/slurm/slurm.conf`, which each saves and restores. An `flock`
/// held for the cluster's life (the kernel drops it however a test ends).
fn one_cluster_at_a_time() -> std::fs::File {
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(std::env::temp_dir().join("sifr-front-tests-slurm.lock"))
        .unwrap();
    rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive).unwrap();
    lock
}

impl Cluster {
    fn start() -> Self {
        require(&[
            ("slurmctld", "slurm-wlm"),
            ("slurmd", "slurm-wlm"),
            ("sbatch", "slurm-wlm"),
            ("sinfo", "slurm-wlm"),
            ("munged", "munge"),
            ("mungekey", "munge"),
        ]);
        let one = one_cluster_at_a_time();
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().to_path_buf();
        let mut cluster = Self {
            dir,
            daemons: Vec::new(),
            saved_conf: std::fs::read(SLURM_CONF).ok(),
            _one: one,
        };
        for sub in ["munge", "state", "spool", "log"] {
            std::fs::create_dir(p.join(sub)).unwrap();
        }
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(p.join("munge"), std::fs::Permissions::from_mode(0o711)).unwrap();
        ok(Command::new("mungekey")
            .args(["-c", "-f", "-k"])
            .arg(p.join("munge.key")));
        let socket = p.join("munge/socket");
        cluster.daemons.push(
            Command::new("munged")
                .arg("--foreground")
                .arg("--key-file")
                .arg(p.join("munge.key"))
                .arg("--socket")
                .arg(&socket)
                .arg("--pid-file")
                .arg(p.join("munged.pid"))
                .arg("--seed-file")
                .arg(p.join("munged.seed"))
                .arg("--log-file")
                .arg(p.join("log/munged.log"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        common::wait_until("munged's socket", Duration::from_secs(30), || {
            socket.exists()
        });
        let host = String::from_utf8(ok(Command::new("hostname").arg("-s")).stdout)
            .unwrap()
            .trim()
            .to_string();
        let port = || {
            std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port()
        };
        let conf = format!(
            "ClusterName=sifrfront\nSlurmctldHost={host}(127.0.0.1)\n\
             SlurmctldPort={}\nSlurmdPort={}\n\
             AuthType=auth/munge\nCredType=cred/munge\nAuthInfo=socket={socket}\n\
             ProctrackType=proctrack/linuxproc\nTaskPlugin=task/none\n\
             SlurmUser=root\nSlurmdUser=root\n\
             StateSaveLocation={p}/state\nSlurmdSpoolDir={p}/spool\n\
             SlurmctldPidFile={p}/slurmctld.pid\nSlurmdPidFile={p}/slurmd.pid\n\
             SlurmctldLogFile={p}/log/slurmctld.log\nSlurmdLogFile={p}/log/slurmd.log\n\
             AccountingStorageType=accounting_storage/none\nJobAcctGatherType=jobacct_gather/none\n\
             JobCompType=jobcomp/none\nSchedulerType=sched/backfill\n\
             SchedulerParameters=sched_interval=1\nSelectType=select/cons_tres\n\
             SelectTypeParameters=CR_Core\nReturnToService=2\nMpiDefault=none\n\
             NodeName={host} NodeAddr=127.0.0.1 CPUs=2 RealMemory=1000 State=UNKNOWN\n\
             PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4\n",
            port(),
            port(),
            socket = socket.display(),
            p = p.display()
        );
        // Snakemake's job step drops SLURM_CONF, so the file must be here.
        std::fs::create_dir_all("/etc/slurm").unwrap();
        std::fs::write(SLURM_CONF, conf).unwrap();
        for daemon in ["slurmctld", "slurmd"] {
            cluster.daemons.push(
                Command::new(daemon)
                    .arg("-D")
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .unwrap(),
            );
        }
        common::wait_until("the node to be idle", Duration::from_secs(60), || {
            Command::new("sinfo")
                .args(["-h", "-o", "%t"])
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "idle")
        });
        cluster
    }

    fn logs(&self) -> String {
        ["slurmctld.log", "slurmd.log"]
            .iter()
            .map(|f| {
                std::fs::read_to_string(self.dir.path().join("log").join(f)).unwrap_or_default()
            })
            .collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // slurmd, slurmctld, then munged; each by its own pid.
        for daemon in self.daemons.iter_mut().rev() {
            if let Some(pid) = rustix::process::Pid::from_raw(daemon.id() as i32) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
            }
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while matches!(daemon.try_wait(), Ok(None)) && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = daemon.kill();
            let _ = daemon.wait();
        }
        match &self.saved_conf {
            Some(conf) => {
                let _ = std::fs::write(SLURM_CONF, conf);
            }
            None => {
                let _ = std::fs::remove_file(SLURM_CONF);
            }
        }
    }
}

#[test]
#[cfg_attr(
    not(all(sifr_e2e, sifr_slurm)),
    ignore = "Slurm: needs the end-to-end tools and Debian's slurm-wlm and munge (run as root), or SIFR_E2E=1"
)]
fn an_sbatch_array_through_the_front_makes_one_pull() {
    let fx = Fixtures::new();
    let origin = Registry::start(&fx, true);
    origin.push(&fx, "e2e/busybox:1");
    let m = real_machine(&fx, "");
    let cluster = Cluster::start();
    let image = format!("{}/e2e/busybox:1", origin.host());
    let out_dir = m.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    let script = m.path().join("job.sh");
    std::fs::write(
        &script,
        format!("#!/bin/sh\nexec apptainer exec docker://{image} cat /IMAGE\n"),
    )
    .unwrap();
    let mut sbatch = Command::new("sbatch");
    sbatch
        .args(["--wait", "--array=1-8", "--output"])
        .arg(out_dir.join("%a.out"))
        .arg(&script)
        .current_dir(m.path());
    m.env(&mut sbatch);
    let out = output_within(&mut sbatch, Duration::from_secs(600));
    let outputs: Vec<String> = (1..=8)
        .map(|i| std::fs::read_to_string(out_dir.join(format!("{i}.out"))).unwrap_or_default())
        .collect();
    assert!(
        out.status.success(),
        "sbatch: {}\ntasks:\n{}\nslurm:\n{}",
        stderr(&out),
        outputs.join("\n--\n"),
        cluster.logs()
    );
    for (i, text) in outputs.iter().enumerate() {
        assert!(
            text.ends_with("busybox for engines\n"),
            "task {}: {text}",
            i + 1
        );
    }
    let pulls = pulls(&m.log);
    assert_eq!(pulls.len(), 1, "{pulls:?}");
    assert_eq!(m.blobs().len(), 1);
    let execs = double_log(&m.log)
        .into_iter()
        .filter(|a| a[0] == "exec")
        .count();
    assert_eq!(execs, 8);
}

#[test]
#[cfg_attr(
    not(all(sifr_e2e, sifr_snakemake, sifr_slurm)),
    ignore = "Snakemake on Slurm: needs the end-to-end tools, Snakemake 9.27.1 with \
              snakemake-executor-plugin-slurm (SIFR_SNAKEMAKE=VENV/bin/snakemake), slurm-wlm and \
              munge, or SIFR_E2E=1"
)]
fn snakemake_s_slurm_executor_runs_its_jobs_through_the_front() {
    let fx = Fixtures::new();
    let origin = Registry::start(&fx, true);
    origin.push(&fx, "e2e/busybox:1");
    let m = real_machine(&fx, "");
    std::fs::create_dir(m.path().join("home")).unwrap();
    let cluster = Cluster::start();
    let dir = m.path().join("flow");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(
        dir.join("Snakefile"),
        snakefile(&format!("{}/e2e/busybox:1", origin.host())),
    )
    .unwrap();
    let out = run_snakemake_with(
        &m,
        &dir,
        &[
            "--executor",
            "slurm",
            "--jobs",
            "2",
            // Accounting is off: ask squeue, not sacct.
            "--slurm-status-command",
            "squeue",
            "--slurm-no-account",
            "--slurm-init-seconds-before-status-checks",
            "1",
            "--default-resources",
            "slurm_partition=debug",
            "mem_mb=100",
            "runtime=5",
        ],
    );
    assert!(
        out.status.success(),
        "snakemake:\n{}\n{}\nslurm:\n{}",
        stdout(&out),
        stderr(&out),
        cluster.logs()
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("b.txt")).unwrap(),
        "1\nbusybox for engines\n"
    );
    let logs = cluster.logs();
    assert!(
        logs.matches("_slurm_rpc_submit_batch_job").count() >= 2,
        "each rule ran as a Slurm job:\n{logs}"
    );
    assert_eq!(pulls(&m.log).len(), 1);
}
