//! Test support for the real backend, shared by the crate's unit tests and
//! `tests/real_backend.rs` (which includes this file with `#[path]`), so it
//! uses nothing but std.
//!
//! The tests need the real tools. Without them a test prints a notice and
//! passes as skipped; under `SIFR_E2E=1` (how sifr's CI runs, with the
//! tools installed) a missing tool fails it instead, as sifr's own
//! end-to-end tests do.

use std::fs;
use std::io::Write;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// What building and running a SIF takes: `(program, Debian package)`.
pub const SIF_TOOLS: &[(&str, &str)] = &[
    ("skopeo", "skopeo"),
    ("umoci", "umoci"),
    ("mksquashfs", "squashfs-tools"),
    ("unsquashfs", "squashfs-tools"),
    ("siftool", "siftool"),
    ("bwrap", "bubblewrap"),
    ("busybox", "busybox-static"),
];

/// The busybox applets the test image has in `/bin`.
pub const APPLETS: &[&str] = &["sh", "echo", "cat", "env", "true", "ls", "sleep", "touch"];

/// What the test image's CMD prints.
pub const DEFAULT_OUTPUT: &str = "hello from the default command";

/// Where `program` is on `PATH`, if it is.
pub fn on_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

/// Whether `test` can run: all `tools` are on `PATH`. If not, under
/// `SIFR_E2E=1` this panics naming the packages to install; otherwise it
/// prints a notice and returns false, and the test should return.
pub fn tools_present(test: &str, tools: &[(&str, &str)]) -> bool {
    let mut missing: Vec<&str> = tools
        .iter()
        .filter(|(program, _)| on_path(program).is_none())
        .map(|(_, package)| *package)
        .collect();
    if missing.is_empty() {
        return true;
    }
    missing.dedup();
    let packages = missing.join(" ");
    assert!(
        std::env::var_os("SIFR_E2E").is_none_or(|value| value != "1"),
        "{test} needs these Debian packages (SIFR_E2E=1 requires them): apt-get install {packages}"
    );
    // Through the handle, not eprintln!, which the test harness captures:
    // a skip should be seen.
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED {test}: needs the Debian packages {packages}"
    );
    false
}

/// Run `command`; panic with its output unless it succeeds.
pub fn run_ok(command: &mut Command) -> Output {
    let output = command
        .output()
        .unwrap_or_else(|err| panic!("{command:?}: {err}"));
    assert!(
        output.status.success(),
        "{command:?} failed: {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// Build, in the empty directory `dir`, an OCI layout holding one image
/// tagged `tag`: busybox-static as `/bin/busybox` with [`APPLETS`], and a
/// CMD that prints [`DEFAULT_OUTPUT`]. Returns the layout's path.
pub fn busybox_layout(dir: &Path, tag: &str) -> PathBuf {
    let layout = dir.join("layout");
    let bundle = dir.join("bundle");
    let image = format!("{}:{tag}", layout.display());
    let umoci = |args: &[&str]| {
        run_ok(Command::new("umoci").args(args));
    };
    umoci(&["init", "--layout", &layout.display().to_string()]);
    umoci(&["new", "--image", &image]);
    umoci(&["unpack", "--image", &image, &bundle.display().to_string()]);
    let bin = bundle.join("rootfs/bin");
    fs::create_dir_all(&bin).unwrap();
    let busybox = on_path("busybox").expect("busybox is on PATH");
    fs::copy(busybox, bin.join("busybox")).unwrap();
    for applet in APPLETS {
        symlink("busybox", bin.join(applet)).unwrap();
    }
    umoci(&["repack", "--image", &image, &bundle.display().to_string()]);
    umoci(&[
        "config",
        "--image",
        &image,
        "--config.cmd",
        "echo",
        "--config.cmd",
        DEFAULT_OUTPUT,
    ]);
    fs::remove_dir_all(&bundle).unwrap();
    layout
}
