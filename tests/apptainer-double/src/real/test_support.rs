//! Test support for the real backend, shared by the crate's unit tests and
//! `tests/real_backend.rs` (which includes this file with `#[path]`), so it
//! uses nothing but std.
//!
//! The tests need the real tools. `build.rs` compiles them as ignored
//! unless every tool is on PATH or `SIFR_E2E=1` (how sifr's CI runs, with
//! the tools installed), as sifr's own end-to-end tests are; a test that
//! runs checks for its tools and fails, naming the packages, when one is
//! missing.

use std::fs;
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

/// Fail, naming the Debian packages to install, unless all `tools` are on
/// `PATH`. A test that runs at all is meant to run (see `build.rs`), so a
/// missing tool is a failure, never a silent pass.
pub fn require_tools(tools: &[(&str, &str)]) {
    let mut missing: Vec<&str> = tools
        .iter()
        .filter(|(program, _)| on_path(program).is_none())
        .map(|(_, package)| *package)
        .collect();
    missing.dedup();
    assert!(
        missing.is_empty(),
        "this test needs these Debian packages: apt-get install {}",
        missing.join(" ")
    );
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
