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

/// Whether a variable of the caller's environment can change what the
/// programs these tests run (Snakemake, Slurm's commands and daemons, a
/// shell) do, beyond what reaches sifr ([`common::leaks_into_sifr`]):
/// Slurm's own (`SLURM_CONF`, `SBATCH_PARTITION`, `SQUEUE_FORMAT`, a
/// `SLURM_JOB_ID` when the suite itself runs in a job), Snakemake's
/// (`SNAKEMAKE_PROFILE`), and what Python and bash read at start-up.
fn leaks_into_engines(name: &str) -> bool {
    const PREFIXES: &[&str] = &[
        "SLURM_",
        "SBATCH_",
        "SALLOC_",
        "SRUN_",
        "SQUEUE_",
        "SINFO_",
        "SACCT_",
        "SCONTROL_",
        "SCANCEL_",
        "SNAKEMAKE_",
    ];
    const NAMES: &[&str] = &[
        "PYTHONPATH",
        "PYTHONHOME",
        "BASH_ENV",
        "ENV",
        "SHELLOPTS",
        "BASHOPTS",
        "CDPATH",
    ];
    PREFIXES.iter().any(|p| name.starts_with(p)) || NAMES.contains(&name)
}

/// Remove from `cmd` every variable of the caller's environment that
/// [`common::leaks_into_sifr`] or [`leaks_into_engines`] names, for a
/// command that runs sifr, or runs what runs it (the front, bash,
/// Snakemake, sbatch), or is part of the test's cluster. The test sets
/// what it means to set afterwards.
fn hermetic(cmd: &mut Command) -> &mut Command {
    for (name, _) in std::env::vars_os() {
        if name
            .to_str()
            .is_none_or(|n| common::leaks_into_sifr(n) || leaks_into_engines(n))
        {
            cmd.env_remove(&name);
        }
    }
    cmd
}

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
        std::fs::create_dir(dir.path().join("home")).unwrap();
        std::fs::create_dir(dir.path().join("run")).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            dir.path().join("run"),
            std::fs::Permissions::from_mode(0o700),
        )
        .unwrap();
        let out = common::sifr_command(dir.path())
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

    /// The machine's environment, and nothing of the caller's that could
    /// change what sifr, the double or an engine does ([`hermetic`]: no
    /// `SIFR_LOCKED`, `APPTAINER_CACHEDIR` or `XDG_CACHE_HOME` of whoever
    /// runs the tests): a home, XDG folders, a cache and a config of its
    /// own.
    fn env(&self, cmd: &mut Command) {
        hermetic(cmd)
            .env("PATH", self.path_var())
            .env("HOME", self.path().join("home"))
            .env("XDG_CONFIG_HOME", self.path().join("xdg"))
            .env("XDG_CACHE_HOME", self.path().join("xdg-cache"))
            .env("XDG_RUNTIME_DIR", self.path().join("run"))
            .env("SIFR_CACHE_DIR", self.cache())
            .env("SIFR_CONFIG", &self.config)
            .env("APPTAINER_DOUBLE_LOG", &self.log);
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
        let mut cmd = common::sifr_command(self.dir.path());
        cmd.args(args).current_dir(self.dir.path());
        self.env(&mut cmd);
        cmd
    }

    /// The SIF files in the cache, sorted (not in `read_dir`'s order).
    fn blobs(&self) -> Vec<PathBuf> {
        let mut blobs: Vec<PathBuf> = match std::fs::read_dir(self.cache().join("blobs/sha256")) {
            Ok(dir) => dir.map(|e| e.unwrap().path()).collect(),
            Err(_) => Vec::new(),
        };
        blobs.sort();
        blobs
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
            // Any of the front's children, not the first listed.
            std::fs::read_to_string(format!("/proc/{front}/task/{front}/children")).is_ok_and(|c| {
                c.split_whitespace().any(|pid| {
                    std::fs::read_to_string(format!("/proc/{pid}/comm"))
                        .is_ok_and(|c| c.trim() == "sleep")
                })
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

/// Run a shell line instead of the program (engines go through a shell),
/// with the program's environment, and none of the caller's start-up
/// files (`BASH_ENV`, [`leaks_into_engines`]).
trait Bash {
    fn through_bash(&mut self, line: &str) -> &mut Command;
}

impl Bash for Command {
    fn through_bash(&mut self, line: &str) -> &mut Command {
        let mut bash = Command::new("bash");
        hermetic(&mut bash).arg("-c").arg(line);
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
    // With the machine's generous plugin deadline: the default 100 ms is
    // not what this tests.
    let config = m.path().join("wrapped.toml");
    std::fs::write(
        &config,
        format!(
            "[sandbox]\ntimeout-ms = 10000\n[apptainer]\npath = \"{}\"\n",
            execs_front.display()
        ),
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
        std::fs::create_dir(p.join("home")).unwrap();
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

/// A `docker-registry` on 127.0.0.1, on a port the kernel chose
/// ([`common::start_registry`]), stopped when dropped.
struct Registry {
    child: std::process::Child,
    port: u16,
    _dir: tempfile::TempDir,
    tls: bool,
}

impl Registry {
    fn start(fx: &Fixtures, tls: bool) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = format!(
            "storage:\n  filesystem:\n    rootdirectory: {}\n",
            dir.path().join("data").display()
        );
        let tls_config = if tls {
            format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                fx.dir.path().join("cert.pem").display(),
                fx.dir.path().join("key.pem").display()
            )
        } else {
            String::new()
        };
        let (child, port) = common::start_registry(
            dir.path(),
            &config,
            &tls_config,
            &dir.path().join("registry.log"),
        );
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
        // No credentials, registries.conf or proxy of the caller's: a home
        // of the fixtures' own.
        let mut cmd = Command::new("skopeo");
        hermetic(&mut cmd)
            .env("HOME", fx.dir.path().join("home"))
            .args(["copy", "--insecure-policy", "--quiet"]);
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
    // The slurm executor's sbatch and squeue read the test cluster's
    // config (where there is one).
    cmd.env("PATH", std::env::join_paths(path).unwrap())
        .env("SLURM_CONF", SLURM_CONF);
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
        let simg: Vec<PathBuf> = std::fs::read_dir(dir.join(".snakemake/singularity"))
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
    let mut log_files: Vec<PathBuf> = std::fs::read_dir(dir.join(".snakemake/log"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    log_files.sort();
    let logs: String = log_files
        .iter()
        .map(|path| std::fs::read_to_string(path).unwrap())
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
/// restored or removed, also when the test fails.
struct Cluster {
    dir: tempfile::TempDir,
    munged: Option<std::process::Child>,
    /// slurmctld and slurmd, of the current try.
    slurm: Vec<std::process::Child>,
    /// The current try's folder: its state, spool and logs.
    run: PathBuf,
    saved_conf: Option<Vec<u8>>,
    /// Dropped last, once the configuration is restored.
    _one: std::fs::File,
}

const SLURM_CONF: &str = "/etc/slurm/slurm.conf";

/// The test cluster's name: a `slurm.conf` naming it is one a test wrote.
const CLUSTER_NAME: &str = "sifrfront";

/// The Slurm daemons, in the order they are started.
const SLURM_DAEMONS: [&str; 2] = ["slurmctld", "slurmd"];

/// How many times the daemons are started on new ports when one was taken.
const SLURM_TRIES: u32 = 3;

/// One cluster at a time on the machine, across test processes too: they
/// share `/etc/slurm/slurm.conf`, which each saves and restores. An `flock`
/// on `/etc/slurm` itself, the folder they share (not a file under
/// `$TMPDIR`, which two runs may see differently), held for the cluster's
/// life; the kernel drops it however a test ends.
fn one_cluster_at_a_time() -> std::fs::File {
    let dir = Path::new(SLURM_CONF).parent().unwrap();
    std::fs::create_dir_all(dir).unwrap();
    let lock = std::fs::File::open(dir).unwrap();
    rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive).unwrap();
    lock
}

/// `cmd` as a daemon of the test cluster: hermetic, reading the cluster's
/// config, its output in `out`, and sent SIGTERM should the thread that
/// started it die without stopping it (a test run killed), so that no
/// daemon outlives its test.
fn spawn_daemon(cmd: &mut Command, out: &Path) -> std::process::Child {
    use std::os::unix::process::CommandExt;
    let file = std::fs::File::create(out).unwrap();
    hermetic(cmd)
        .env("SLURM_CONF", SLURM_CONF)
        .stdin(Stdio::null())
        .stdout(file.try_clone().unwrap())
        .stderr(file);
    // SAFETY: prctl(PR_SET_PDEATHSIG) is async-signal-safe, as pre_exec
    // requires.
    unsafe {
        cmd.pre_exec(|| {
            rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::TERM))
                .map_err(std::io::Error::from)
        });
    }
    cmd.spawn()
        .unwrap_or_else(|e| panic!("starting {:?}: {e}", cmd.get_program()))
}

/// SIGTERM to `daemon`, by its pid, then SIGKILL if it has not exited
/// after 10 s. One already reaped is left alone: its pid may be another
/// process's by now.
fn stop(daemon: &mut std::process::Child) {
    if !matches!(daemon.try_wait(), Ok(None)) {
        return;
    }
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

/// The node's state as `sinfo` reports it (`idle` once it takes jobs).
fn node_state() -> String {
    let mut sinfo = Command::new("sinfo");
    hermetic(&mut sinfo)
        .env("SLURM_CONF", SLURM_CONF)
        .args(["-h", "-o", "%t"]);
    stdout(&output_within(&mut sinfo, Duration::from_secs(60)))
        .trim()
        .to_string()
}

/// Two ports that were free on every address, distinct (both are held at
/// once), then let go: Slurm takes its ports from slurm.conf, not from the
/// kernel, so another process may take one before the daemon binds it.
/// [`Cluster::start_slurm`] sees that, and the cluster is tried again.
fn two_ports() -> (u16, u16) {
    let a = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let b = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    (
        a.local_addr().unwrap().port(),
        b.local_addr().unwrap().port(),
    )
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
        // A config a test run that was killed left behind is not the
        // machine's: it is removed, not restored.
        let saved_conf = std::fs::read(SLURM_CONF).ok().filter(|conf| {
            !String::from_utf8_lossy(conf)
                .lines()
                .any(|line| line == format!("ClusterName={CLUSTER_NAME}"))
        });
        // From here on, a panic drops the cluster: its daemons are stopped
        // and the config restored.
        let mut cluster = Self {
            dir,
            munged: None,
            slurm: Vec::new(),
            run: p.clone(),
            saved_conf,
            _one: one,
        };
        std::fs::create_dir(p.join("munge")).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(p.join("munge"), std::fs::Permissions::from_mode(0o711)).unwrap();
        ok(hermetic(&mut Command::new("mungekey"))
            .args(["-c", "-f", "-k"])
            .arg(p.join("munge.key")));
        let socket = p.join("munge/socket");
        let munged = cluster.munged.insert(spawn_daemon(
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
                .arg(p.join("munged.log")),
            &p.join("munged.out"),
        ));
        common::wait_until("munged's socket", Duration::from_secs(60), || {
            if let Some(status) = munged.try_wait().unwrap() {
                panic!(
                    "munged exited ({status}):\n{}{}",
                    std::fs::read_to_string(p.join("munged.out")).unwrap_or_default(),
                    std::fs::read_to_string(p.join("munged.log")).unwrap_or_default()
                );
            }
            socket.exists()
        });
        for attempt in 1..=SLURM_TRIES {
            match cluster.start_slurm(attempt) {
                Ok(()) => return cluster,
                Err(taken) => {
                    assert!(
                        attempt < SLURM_TRIES,
                        "{taken}, {SLURM_TRIES} times:\n{}",
                        cluster.logs()
                    );
                    eprintln!("{taken}: starting the cluster again on new ports");
                }
            }
        }
        unreachable!()
    }

    /// Start slurmctld and slurmd on new ports and wait until the node is
    /// idle; `Err` if a daemon exited because its port was taken meanwhile
    /// (its log says "Address already in use"), once both are stopped.
    fn start_slurm(&mut self, attempt: u32) -> Result<(), String> {
        let p = self.dir.path().to_path_buf();
        let run = p.join(format!("try-{attempt}"));
        for sub in ["state", "spool", "log"] {
            std::fs::create_dir_all(run.join(sub)).unwrap();
        }
        self.run = run.clone();
        let host = String::from_utf8(ok(Command::new("hostname").arg("-s")).stdout)
            .unwrap()
            .trim()
            .to_string();
        let (ctld_port, slurmd_port) = two_ports();
        let conf = format!(
            "ClusterName={CLUSTER_NAME}\nSlurmctldHost={host}(127.0.0.1)\n\
             SlurmctldPort={ctld_port}\nSlurmdPort={slurmd_port}\n\
             AuthType=auth/munge\nCredType=cred/munge\nAuthInfo=socket={socket}\n\
             ProctrackType=proctrack/linuxproc\nTaskPlugin=task/none\n\
             SlurmUser=root\nSlurmdUser=root\n\
             StateSaveLocation={r}/state\nSlurmdSpoolDir={r}/spool\n\
             SlurmctldPidFile={r}/slurmctld.pid\nSlurmdPidFile={r}/slurmd.pid\n\
             SlurmctldLogFile={r}/log/slurmctld.log\nSlurmdLogFile={r}/log/slurmd.log\n\
             AccountingStorageType=accounting_storage/none\nJobAcctGatherType=jobacct_gather/none\n\
             JobCompType=jobcomp/none\nSchedulerType=sched/backfill\n\
             SchedulerParameters=sched_interval=1\nSelectType=select/cons_tres\n\
             SelectTypeParameters=CR_Core\nReturnToService=2\nMpiDefault=none\n\
             NodeName={host} NodeAddr=127.0.0.1 CPUs=2 RealMemory=1000 State=UNKNOWN\n\
             PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4\n",
            socket = p.join("munge/socket").display(),
            r = run.display()
        );
        // Snakemake's job step drops SLURM_CONF, so the file must be here.
        std::fs::write(SLURM_CONF, conf).unwrap();
        for daemon in SLURM_DAEMONS {
            let child = spawn_daemon(
                Command::new(daemon).arg("-D"),
                &run.join("log").join(format!("{daemon}.out")),
            );
            self.slurm.push(child);
        }
        // Until the node takes jobs, or a daemon exits: a bound on a hang,
        // not a guess at how long starting takes.
        let timeout = Duration::from_secs(60);
        let started = std::time::Instant::now();
        loop {
            for (i, daemon) in SLURM_DAEMONS.iter().enumerate() {
                if let Some(status) = self.slurm[i].try_wait().unwrap() {
                    let text = self.output_of(daemon);
                    for child in &mut self.slurm {
                        stop(child);
                    }
                    self.slurm.clear();
                    if text.contains("Address already in use") {
                        return Err(format!(
                            "{daemon} exited ({status}): its port was taken \
                             (SlurmctldPort={ctld_port}, SlurmdPort={slurmd_port})"
                        ));
                    }
                    panic!("{daemon} exited ({status}) while starting:\n{text}");
                }
            }
            if node_state() == "idle" {
                return Ok(());
            }
            assert!(
                started.elapsed() < timeout,
                "the node was not idle after {timeout:?}:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// What a daemon of the current try printed and logged.
    fn output_of(&self, daemon: &str) -> String {
        ["out", "log"]
            .iter()
            .map(|ext| {
                std::fs::read_to_string(self.run.join("log").join(format!("{daemon}.{ext}")))
                    .unwrap_or_default()
            })
            .collect()
    }

    /// slurmctld's and slurmd's logs, of the current try.
    fn logs(&self) -> String {
        SLURM_DAEMONS
            .iter()
            .map(|daemon| {
                std::fs::read_to_string(self.run.join("log").join(format!("{daemon}.log")))
                    .unwrap_or_default()
            })
            .collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // slurmd, slurmctld, then munged; each by its own pid.
        for daemon in self.slurm.iter_mut().rev().chain(self.munged.as_mut()) {
            stop(daemon);
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
    if !common::require_root("a Slurm cluster (slurmctld and slurmd as root, /etc/slurm)") {
        return;
    }
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
    sbatch.env("SLURM_CONF", SLURM_CONF);
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
    if !common::require_root("a Slurm cluster (slurmctld and slurmd as root, /etc/slurm)") {
        return;
    }
    let fx = Fixtures::new();
    let origin = Registry::start(&fx, true);
    origin.push(&fx, "e2e/busybox:1");
    let m = real_machine(&fx, "");
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
