//! A cache that several users share: whose records and blobs count, and
//! that apptainer runs the very file sifr checked.
//!
//! The apptainer double records, for each `run`, the image it opened and
//! the nonce a fake pull wrote into it (`APPTAINER_DOUBLE_RAN`), so the
//! tests see which file ran, not only which path was passed.
//!
//! The two-user test needs root (to make users, and to run sifr as each of
//! them with `setpriv`); it is gated like the end-to-end tests: under
//! `SIFR_E2E=1` it runs, and a missing tool or privilege fails it.

use crate::common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::{Lines, apptainer_double, sandbox_config, stderr, stdout, wait_until, wait_within};

/// A bound on any one step, so a hang fails loudly.
const PATIENCE: Duration = Duration::from_secs(300);

const IMAGE: &str = "ncbi/blast:2.14.0";

/// What the double recorded for each `run` and `exec`: the image it
/// opened, and the nonce inside it.
fn ran(log: &Path) -> Vec<(String, Option<String>)> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            (
                v["image"].as_str().unwrap().to_string(),
                v["nonce"].as_str().map(str::to_string),
            )
        })
        .collect()
}

/// The nonce a fake pull wrote into a SIF file.
fn nonce_of(sif: &Path) -> String {
    let bytes = std::fs::read(sif).unwrap();
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(4096)]).into_owned();
    text.lines()
        .find_map(|line| line.strip_prefix("nonce="))
        .unwrap_or_else(|| panic!("{} has no nonce", sif.display()))
        .to_string()
}

/// A file the double's `run` accepts as a SIF, with `nonce` inside.
fn fake_sif(path: &Path, nonce: &str) {
    let mut bytes = b"#!/usr/bin/env run-singularity\n".to_vec();
    bytes.resize(32, 0);
    bytes.extend_from_slice(b"SIF_MAGIC\0");
    bytes.extend_from_slice(b"01\0");
    bytes.extend_from_slice(format!("\nplanted by a test\nnonce={nonce}\n").as_bytes());
    bytes.resize(8192, 0x5a);
    std::fs::write(path, bytes).unwrap();
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// One user's cache, with sifr pointed at the double.
struct Env {
    dir: tempfile::TempDir,
    log: PathBuf,
    ran: PathBuf,
}

impl Env {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("apptainer.log");
        let ran = dir.path().join("ran.jsonl");
        Self { dir, log, ran }
    }

    fn cache(&self) -> PathBuf {
        self.dir.path().join("cache/sifr")
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = common::sifr_command(self.dir.path());
        cmd.args(args)
            .env("XDG_CACHE_HOME", self.dir.path().join("xdg-cache"))
            .env("SIFR_CACHE_DIR", self.cache())
            .env("SIFR_APPTAINER", apptainer_double())
            .env("APPTAINER_DOUBLE_LOG", &self.log)
            .env("APPTAINER_DOUBLE_RAN", &self.ran)
            .env("SIFR_CONFIG", sandbox_config());
        cmd
    }

    fn sifr(&self, args: &[&str]) -> Output {
        common::output_within(&mut self.command(args), PATIENCE)
    }

    /// `sifr pull`, and the blob it printed.
    fn pull(&self) -> PathBuf {
        let out = self.sifr(&["pull", IMAGE]);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        PathBuf::from(stdout(&out).trim())
    }

    fn pulls(&self) -> usize {
        common::pulls(&self.log).len()
    }
}

#[test]
fn a_blob_with_a_group_write_bit_is_not_trusted() {
    let env = Env::new();
    let blob = env.pull();
    let first = nonce_of(&blob);
    // Its owner made it group-writable: anyone in the group could have
    // changed it since. The content still matches the record.
    chmod(&blob, 0o464);

    let out = env.sifr(&["run", IMAGE]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let ran = ran(&env.ran);
    assert_eq!(ran.len(), 1, "{ran:?}");
    assert_ne!(
        ran[0].1.as_deref(),
        Some(first.as_str()),
        "the group-writable file ran"
    );
    assert_eq!(env.pulls(), 2, "pulled again instead");
    let err = stderr(&out);
    assert!(
        err.contains(&blob.display().to_string())
            && err.contains("writable by its group (mode 0464)")
            && err.contains("chmod go-w"),
        "the warning names the file, what is wrong, and what to do: {err}"
    );
}

#[test]
fn a_record_with_a_group_write_bit_is_not_trusted() {
    let env = Env::new();
    let blob = env.pull();
    let first = nonce_of(&blob);
    let index = env.cache().join("index");
    let record = common::the_record(&index);
    chmod(&record, 0o664);

    let out = env.sifr(&["run", IMAGE]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_ne!(
        ran(&env.ran)[0].1.as_deref(),
        Some(first.as_str()),
        "the file of the group-writable record ran"
    );
    assert_eq!(env.pulls(), 2, "pulled again instead");
    assert!(
        stderr(&out).contains("writable by its group (mode 0664)"),
        "{}",
        stderr(&out)
    );
    // The pull wrote a record that is its own and writable by it alone.
    let mode = std::fs::metadata(&record).unwrap().mode() & 0o777;
    assert_eq!(mode, 0o644, "{mode:o}");
}

#[test]
fn a_swap_after_the_check_cannot_change_what_apptainer_runs() {
    let env = Env::new();
    let blob = env.pull();
    let verified = nonce_of(&blob);
    // As in a cache shared without sticky directories: others can rename
    // files over the blob, so its path is not what apptainer gets. (Other
    // write, not group write: the test's group may be its user's own.)
    chmod(&env.cache().join("blobs/sha256"), 0o777);
    let planted = env.dir.path().join("planted.sif");
    fake_sif(&planted, "swapped-in");

    let hold = env.dir.path().join("release-the-run");
    let _release = common::TouchOnDrop(hold.clone());
    let mut child = env
        .command(&["run", IMAGE])
        .env("APPTAINER_DOUBLE_RUN_HOLD", &hold)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let err = Lines::of(child.stderr.take().unwrap());
    // sifr has checked the blob and started apptainer, which waits before
    // it opens the image.
    wait_until("the double to be asked to run", PATIENCE, || {
        common::double_log(&env.log).iter().any(|a| a[0] == "run")
    });
    std::fs::rename(&planted, &blob).unwrap();
    std::fs::write(&hold, "").unwrap();
    let status = wait_within(&mut child, PATIENCE);
    assert!(status.success(), "{}", err.all().join("\n"));

    let ran = ran(&env.ran);
    assert_eq!(ran.len(), 1, "{ran:?}");
    assert_eq!(
        ran[0].1.as_deref(),
        Some(verified.as_str()),
        "apptainer ran {} instead of the file sifr checked",
        ran[0].0
    );
    // The private link is gone once the run is over.
    let uid = std::fs::metadata(env.dir.path()).unwrap().uid();
    let links = env.cache().join(format!("run/{uid}"));
    assert_eq!(std::fs::read_dir(&links).unwrap().count(), 0);
}

#[test]
fn a_run_through_a_private_link_leaves_the_record_matching_its_blob() {
    let env = Env::new();
    let blob = env.pull();
    chmod(&env.cache().join("blobs/sha256"), 0o777);
    let out = env.sifr(&["run", IMAGE]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        ran(&env.ran)[0].0.contains("/run/"),
        "not run through a private link: {:?}",
        ran(&env.ran)
    );
    // Making and removing the link changed the blob's ctime; the record
    // follows, so the next hit does not re-hash the whole file.
    let index = env.cache().join("index");
    let record = common::the_record(&index);
    let entry: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&record).unwrap()).unwrap();
    let meta = std::fs::metadata(&blob).unwrap();
    let ctime = meta.ctime() as i128 * 1_000_000_000 + meta.ctime_nsec() as i128;
    assert_eq!(
        entry["stamp"]["ctime_ns"].as_i64().map(i128::from),
        Some(ctime),
        "{entry}"
    );
}

#[test]
fn with_no_path_others_cannot_swap_sifr_refuses_to_run_and_names_the_directory() {
    let env = Env::new();
    env.pull();
    // Every directory of the cache writable by others, none sticky: no
    // path to the blob, and no private link, is out of their reach.
    for dir in ["", "blobs", "blobs/sha256", "index", "locks", "tmp"] {
        chmod(&env.cache().join(dir), 0o777);
    }
    let out = env.sifr(&["run", IMAGE]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        ran(&env.ran).is_empty(),
        "apptainer ran: {:?}",
        ran(&env.ran)
    );
    let err = stderr(&out);
    let root = std::fs::canonicalize(env.cache()).unwrap();
    assert!(
        err.contains("cannot hand apptainer the checked SIF")
            && err.contains(&format!("{} can be changed by others", root.display()))
            && err.contains("Sharing a cache"),
        "{err}"
    );
}

#[test]
fn a_symlink_planted_as_a_blob_is_not_followed() {
    let env = Env::new();
    let blob = env.pull();
    let planted = env.dir.path().join("elsewhere.sif");
    fake_sif(&planted, "behind-a-symlink");
    std::fs::remove_file(&blob).unwrap();
    std::os::unix::fs::symlink(&planted, &blob).unwrap();

    let out = env.sifr(&["run", IMAGE]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("not a regular file"),
        "{}",
        stderr(&out)
    );
    assert_ne!(
        ran(&env.ran)[0].1.as_deref(),
        Some("behind-a-symlink"),
        "the symlink was followed"
    );
}

/// Two users made for one test, a group they share, and the cache they
/// share, all removed when the test ends, however it ends.
struct TwoUsers {
    a: String,
    b: String,
    group: String,
    dir: tempfile::TempDir,
}

impl TwoUsers {
    /// `None` when not root and `SIFR_E2E=1` is not set (the tools can be
    /// on PATH of a developer's machine, without root); under
    /// `SIFR_E2E=1`, not being root fails the test.
    fn new() -> Option<Self> {
        let required = std::env::var("SIFR_E2E").is_ok_and(|v| v == "1");
        if !required && !rustix::process::geteuid().is_root() {
            eprintln!("skipped: not root (SIFR_E2E=1 makes this a failure)");
            return None;
        }
        assert!(
            rustix::process::geteuid().is_root(),
            "the shared-cache test makes users: run it as root (it runs in CI under SIFR_E2E=1)"
        );
        for tool in ["useradd", "userdel", "groupadd", "groupdel", "setpriv"] {
            assert!(
                Command::new("sh")
                    .args(["-c", &format!("command -v {tool}")])
                    .stdout(Stdio::null())
                    .status()
                    .unwrap()
                    .success(),
                "{tool} is missing: install util-linux (setpriv) and passwd/shadow-utils (useradd)"
            );
        }
        let tag = format!("sifr-t-{}", std::process::id());
        let dir = tempfile::tempdir().unwrap();
        let users = Self {
            a: format!("{tag}-a"),
            b: format!("{tag}-b"),
            group: format!("{tag}-g"),
            dir,
        };
        run_ok(Command::new("groupadd").args(["--system", &users.group]));
        for user in [&users.a, &users.b] {
            run_ok(Command::new("useradd").args([
                "--system",
                "--no-create-home",
                "--user-group",
                "--groups",
                &users.group,
                user,
            ]));
        }
        Some(users)
    }

    fn base(&self) -> &Path {
        self.dir.path()
    }

    fn cache(&self) -> PathBuf {
        self.base().join("cache")
    }

    fn uid(&self, user: &str) -> u32 {
        let out = Command::new("id").args(["-u", user]).output().unwrap();
        stdout(&out).trim().parse().unwrap()
    }

    /// The shared cache as README's "Sharing a cache" sets it up: owned by
    /// root and the group, setgid; sticky where files are renamed into
    /// place and run from, not where records are replaced.
    fn set_up(&self) {
        chmod(self.base(), 0o755);
        let bin = self.base().join("bin");
        std::fs::create_dir(&bin).unwrap();
        for (from, to) in [
            (PathBuf::from(env!("CARGO_BIN_EXE_sifr")), "sifr"),
            (apptainer_double(), "apptainer"),
        ] {
            std::fs::copy(from, bin.join(to)).unwrap();
            chmod(&bin.join(to), 0o755);
        }
        let group = &self.group;
        for (dir, mode) in [
            ("cache", 0o3775),
            ("cache/blobs", 0o3775),
            ("cache/blobs/sha256", 0o3775),
            ("cache/tmp", 0o3775),
            ("cache/run", 0o3775),
            ("cache/index", 0o2775),
            ("cache/locks", 0o2775),
        ] {
            let path = self.base().join(dir);
            std::fs::create_dir(&path).unwrap();
            run_ok(
                Command::new("chown")
                    .arg(format!("root:{group}"))
                    .arg(&path),
            );
            chmod(&path, mode);
        }
        for file in ["apptainer.log", "ran.jsonl"] {
            let path = self.base().join(file);
            std::fs::write(&path, "").unwrap();
            chmod(&path, 0o666);
        }
        for user in [&self.a, &self.b] {
            let home = self.base().join(user);
            std::fs::create_dir(&home).unwrap();
            run_ok(
                Command::new("chown")
                    .arg(format!("{user}:{user}"))
                    .arg(&home),
            );
            self.config(user, "");
        }
    }

    /// `user`'s config: a generous plugin deadline, and `extra`.
    fn config(&self, user: &str, extra: &str) {
        let path = self.base().join(user).join("config.toml");
        std::fs::write(&path, format!("[sandbox]\ntimeout-ms = 10000\n{extra}")).unwrap();
        chmod(&path, 0o644);
    }

    /// `program ARGS...` as `user`, with the group's umask (002).
    fn as_user(&self, user: &str, program: &Path, args: &[&str]) -> Command {
        let home = self.base().join(user);
        let mut cmd = Command::new("setpriv");
        cmd.args(["--reuid", user, "--regid", user, "--init-groups", "--"])
            .arg(program)
            .args(args)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("HOME", &home)
            .env("XDG_CONFIG_HOME", home.join("config"))
            .env("XDG_CACHE_HOME", home.join("xdg-cache"))
            .env("SIFR_CONFIG", home.join("config.toml"))
            .env("SIFR_CACHE_DIR", self.cache())
            .env("SIFR_APPTAINER", self.base().join("bin/apptainer"))
            .env("APPTAINER_DOUBLE_LOG", self.base().join("apptainer.log"))
            .env("APPTAINER_DOUBLE_RAN", self.base().join("ran.jsonl"));
        // SAFETY: umask(2) is async-signal-safe.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
                libc::umask(0o002);
                Ok(())
            });
        }
        cmd
    }

    fn sifr(&self, user: &str, args: &[&str]) -> Output {
        let sifr = self.base().join("bin/sifr");
        common::output_within(&mut self.as_user(user, &sifr, args), PATIENCE)
    }

    fn ran(&self) -> Vec<(String, Option<String>)> {
        ran(&self.base().join("ran.jsonl"))
    }

    fn pulls(&self) -> usize {
        common::pulls(&self.base().join("apptainer.log")).len()
    }

    /// As user B, put a SIF of B's own in the cache and a record for
    /// IMAGE that names it, with a stamp that matches it: the attack.
    fn plant(&self, nonce: &str) {
        let b = &self.b;
        let staging = self.base().join(b);
        let sif = staging.join("planted.sif");
        fake_sif(&sif, nonce);
        run_ok(Command::new("chown").arg(format!("{b}:{b}")).arg(&sif));
        chmod(&sif, 0o444);
        let hex = common::sha256_hex(&sif);
        let blob = self.cache().join(format!("blobs/sha256/{hex}.sif"));
        let mv = |from: &Path, to: &Path| {
            let out = common::output_within(
                &mut self.as_user(
                    b,
                    Path::new("/bin/mv"),
                    &[from.to_str().unwrap(), to.to_str().unwrap()],
                ),
                PATIENCE,
            );
            assert!(out.status.success(), "{b} could not mv: {}", stderr(&out));
        };
        mv(&sif, &blob);

        // The record: user A's, pointing at B's file, its stamp B's file's.
        let index = self.cache().join("index");
        let record = common::the_record(&index);
        let mut entry: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&record).unwrap()).unwrap();
        let meta = std::fs::metadata(&blob).unwrap();
        entry["sif-digest"] = format!("sha256:{hex}").into();
        entry["size"] = meta.len().into();
        entry["stamp"] = serde_json::json!({
            "size": meta.len(),
            "mtime_ns": meta.mtime() as i128 * 1_000_000_000 + meta.mtime_nsec() as i128,
            "ctime_ns": meta.ctime() as i128 * 1_000_000_000 + meta.ctime_nsec() as i128,
            "ino": meta.ino(),
        });
        let forged = staging.join("record.json");
        std::fs::write(&forged, serde_json::to_vec_pretty(&entry).unwrap()).unwrap();
        run_ok(Command::new("chown").arg(format!("{b}:{b}")).arg(&forged));
        chmod(&forged, 0o644);
        mv(&forged, &record);
        assert_eq!(std::fs::metadata(&record).unwrap().uid(), self.uid(b));
    }
}

impl Drop for TwoUsers {
    fn drop(&mut self) {
        for user in [&self.a, &self.b] {
            let _ = Command::new("userdel").arg(user).status();
        }
        let _ = Command::new("groupdel").arg(&self.group).status();
    }
}

fn run_ok(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        stdout(&out),
        stderr(&out)
    );
}

#[test]
#[cfg_attr(
    not(sifr_e2e),
    ignore = "needs root, useradd and setpriv (util-linux); runs under SIFR_E2E=1"
)]
fn a_co_user_s_planted_blob_and_record_are_not_run_unless_trusted() {
    let Some(users) = TwoUsers::new() else {
        return;
    };
    users.set_up();
    let (a, b) = (&users.a, &users.b);

    // A pulls, and has their own entry.
    let out = users.sifr(a, &["pull", IMAGE]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let own = nonce_of(Path::new(stdout(&out).trim()));

    // B replaces A's record with one naming B's file, stamp and all.
    users.plant("planted-by-b");
    let out = users.sifr(a, &["run", IMAGE]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let ran = users.ran();
    assert_eq!(ran.len(), 1, "{ran:?}");
    assert_ne!(ran[0].1.as_deref(), Some("planted-by-b"), "A ran B's file");
    assert_ne!(ran[0].1.as_deref(), Some(own.as_str()), "pulled afresh");
    assert_eq!(users.pulls(), 2, "A pulled again, as A");
    let err = stderr(&out);
    assert!(
        err.contains(b) && err.contains("whom you do not trust") && err.contains("trusted-owners"),
        "the warning names the file's owner and what to do: {err}"
    );

    // The positive control: A names B as trusted, and uses B's entry (so
    // the planted stamp did match, and only trust kept it out above).
    users.plant("trusted-b");
    users.config(a, &format!("[cache]\ntrusted-owners = [\"{b}\"]\n"));
    let out = users.sifr(a, &["run", IMAGE]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(!stderr(&out).contains("not using"), "{}", stderr(&out));
    let ran = users.ran();
    assert_eq!(ran.len(), 2, "{ran:?}");
    assert_eq!(ran[1].1.as_deref(), Some("trusted-b"));
    assert_eq!(users.pulls(), 2, "a hit: no pull");
}

#[test]
#[cfg_attr(
    not(sifr_e2e),
    ignore = "needs root, useradd and setpriv (util-linux); runs under SIFR_E2E=1"
)]
fn compiled_plugins_never_live_in_a_shared_cache_and_a_co_user_s_are_not_loaded() {
    let Some(users) = TwoUsers::new() else {
        return;
    };
    users.set_up();
    let (a, b) = (&users.a, &users.b);
    let artifact = |user: &str| -> String {
        let out = users.sifr(user, &["plugin", "ls", "--json"]);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        json["plugins"][0]["artifact"].as_str().unwrap().to_string()
    };
    let cwasm_in = |dir: &Path| -> Vec<PathBuf> {
        std::fs::read_dir(dir)
            .map(|d| {
                d.map(|e| e.unwrap().path())
                    .filter(|p| p.extension().is_some_and(|x| x == "cwasm"))
                    .collect()
            })
            .unwrap_or_default()
    };

    // B compiles; the native code goes to B's own cache, not the shared one.
    assert_eq!(artifact(b), "compiled");
    let shared = users.cache().join("plugins");
    assert!(
        cwasm_in(&shared).is_empty(),
        "native code in the shared root"
    );
    let b_own = users.base().join(b).join("xdg-cache/sifr/plugins");
    let b_artifacts = cwasm_in(&b_own);
    assert_eq!(b_artifacts.len(), 1, "{}", b_own.display());

    // B plants it where an old sifr would have looked for A's, under the
    // same name (the default plugin is the same wasm for both).
    let sh = |script: &str| {
        let out = common::output_within(
            &mut users.as_user(b, Path::new("/bin/sh"), &["-c", script]),
            PATIENCE,
        );
        assert!(out.status.success(), "{b}: {script}: {}", stderr(&out));
    };
    sh(&format!(
        "mkdir -p -m 0700 {0} && cp {1} {0}/",
        shared.display(),
        b_artifacts[0].display()
    ));

    // A compiles its own, keeps it privately, and loads that next time.
    assert_eq!(artifact(a), "compiled");
    let a_own = users.base().join(a).join("xdg-cache/sifr/plugins");
    assert_eq!(cwasm_in(&a_own).len(), 1, "{}", a_own.display());
    let mode = std::fs::metadata(&a_own).unwrap().mode() & 0o777;
    assert_eq!(mode, 0o700, "A's compiled plugins are A's alone");
    assert_eq!(artifact(a), "cache-hit");
    let planted = cwasm_in(&shared);
    assert_eq!(planted.len(), 1);
    assert_eq!(
        std::fs::metadata(&planted[0]).unwrap().uid(),
        users.uid(b),
        "A wrote nothing into the shared root"
    );
}
