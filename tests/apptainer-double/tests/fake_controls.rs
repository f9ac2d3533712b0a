//! The fake backend's controls that tests use to wait on events instead of
//! sleeping: a held pull, the pid file, and a pull's helper process.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant};

const DOUBLE: &str = env!("CARGO_BIN_EXE_apptainer-test-double");

/// A fresh directory, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Self {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "apptainer-double-controls-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir(&path).unwrap();
        Self(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Wait until `done()` holds; fail, naming `what`, after a minute.
fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "gave up waiting for {what}"
        );
        thread::sleep(Duration::from_millis(10));
    }
}

/// Whether `pid` runs (a zombie does not).
fn running(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        let state = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next());
        !matches!(state, Some("Z" | "X" | "x"))
    })
}

fn pids(file: &Path) -> Vec<u32> {
    fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .map(|line| line.parse().unwrap())
        .collect()
}

#[test]
fn a_held_pull_begins_its_file_and_finishes_once_released() {
    let scratch = Scratch::new();
    let out = scratch.path().join("image.sif");
    let hold = scratch.path().join("release");
    let pid_file = scratch.path().join("pids");
    let mut child = Command::new(DOUBLE)
        .arg("pull")
        .arg(&out)
        .arg("docker://example.test/a:1")
        .env("APPTAINER_DOUBLE_HOLD", &hold)
        .env("APPTAINER_DOUBLE_HELPER", "1")
        .env("APPTAINER_DOUBLE_PID_FILE", &pid_file)
        .env_remove("APPTAINER_DOUBLE_BACKEND")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_until("the held pull to begin its file", || {
        fs::metadata(&out).is_ok_and(|m| m.len() > 0)
    });
    let begun = fs::metadata(&out).unwrap().len();
    assert!(begun < 64 * 1024, "only begun: {begun} bytes");
    let recorded = pids(&pid_file);
    assert_eq!(recorded.len(), 2, "the double and its helper: {recorded:?}");
    assert_eq!(recorded[0], child.id());
    assert!(recorded.iter().all(|&pid| running(pid)));
    assert_eq!(child.try_wait().unwrap(), None, "held");

    fs::write(&hold, "").unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    assert_eq!(fs::metadata(&out).unwrap().len(), 64 * 1024);
    assert!(!running(recorded[1]), "the helper ends with the pull");
}

#[test]
fn a_held_pull_lets_go_when_its_hold_directory_is_gone() {
    let scratch = Scratch::new();
    let out = scratch.path().join("image.sif");
    let held_by = Scratch::new();
    let mut child = Command::new(DOUBLE)
        .arg("pull")
        .arg(&out)
        .arg("docker://example.test/a:1")
        .env("APPTAINER_DOUBLE_HOLD", held_by.path().join("release"))
        .env_remove("APPTAINER_DOUBLE_BACKEND")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_until("the held pull to begin its file", || out.exists());
    drop(held_by);
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
}

#[test]
fn the_real_backend_refuses_a_helper() {
    let scratch = Scratch::new();
    let out = scratch.path().join("image.sif");
    let output = Command::new(DOUBLE)
        .arg("pull")
        .arg(&out)
        .arg("docker://example.test/a:1")
        .env("APPTAINER_DOUBLE_BACKEND", "real")
        .env("APPTAINER_DOUBLE_HELPER", "1")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(255));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("APPTAINER_DOUBLE_HELPER only shapes the fake backend's pulls"),
        "{stderr}"
    );
}
