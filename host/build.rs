//! Builds the policy plugins in `plugins/` for wasm32-wasip2, so that a plain
//! `cargo build` or `cargo test` at the repository root needs no manual step.
//!
//! The built-in plugins are embedded in the binary with `include_bytes!`; the
//! test-only plugins are found by the tests through `SIFR_PLUGIN_DIR`.

use std::path::{Path, PathBuf};
use std::process::Command;

const TARGET: &str = "wasm32-wasip2";

fn main() {
    let manifest_dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest_dir
        .parent()
        .expect("host/ is inside the repository");
    let plugins = root.join("plugins");
    println!("cargo:rerun-if-changed={}", plugins.display());
    println!("cargo:rerun-if-changed={}", root.join("wit").display());
    println!("cargo:rerun-if-env-changed=SIFR_SKIP_RUSTUP");

    ensure_target();
    e2e_cfg();

    // A target dir of their own: the outer build holds the lock on its own
    // profile dir, and the plugins are shared by debug, release and clippy.
    let target_dir = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => PathBuf::from(dir).join("wasm-plugins"),
        None => root.join("target").join("wasm-plugins"),
    };
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "--release", "--locked", "--target", TARGET])
        .arg("--manifest-path")
        .arg(plugins.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir);
    // Don't let the host build's settings leak into the guest build.
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        if key.starts_with("CARGO_") && key != "CARGO_HOME" && key != "CARGO_NET_OFFLINE"
            || key == "RUSTFLAGS"
            || key == "RUSTC_WRAPPER"
            || key == "RUSTC_WORKSPACE_WRAPPER"
        {
            cmd.env_remove(key.as_ref());
        }
    }
    // Cargo reads a build script's stdout for directives: keep the inner
    // build's output on stderr.
    let status = cmd
        .stdout(std::io::stderr())
        .status()
        .unwrap_or_else(|e| panic!("could not run cargo to build the plugins: {e}"));
    if !status.success() {
        panic!(
            "building the policy plugins in {} for {TARGET} failed (see above)",
            plugins.display()
        );
    }
    let out = target_dir.join(TARGET).join("release");
    for name in [
        "sifr_plugin_default",
        "sifr_plugin_mirror",
        "sifr_plugin_registries",
        "sifr_plugin_tags",
    ] {
        let wasm = out.join(format!("{name}.wasm"));
        assert!(
            wasm.is_file(),
            "the plugin build did not produce {}",
            wasm.display()
        );
    }
    println!("cargo:rustc-env=SIFR_PLUGIN_DIR={}", out.display());
}

/// The tools the end-to-end tests drive (tests/e2e.rs says which package
/// brings each).
const E2E_TOOLS: &[&str] = &[
    "docker-registry",
    "skopeo",
    "umoci",
    "mksquashfs",
    "unsquashfs",
    "siftool",
    "bwrap",
    "busybox",
    "openssl",
];

/// Sets `cfg(sifr_e2e)` when the end-to-end tests should run (and
/// `cfg(sifr_python)` for the Python plugin test, which needs componentize-py): when
/// `SIFR_E2E=1` (then a missing tool fails them), or when every tool they
/// need is on PATH. Otherwise they are compiled as ignored, with a reason
/// that names the packages, so `cargo test` shows that they were skipped.
fn e2e_cfg() {
    println!("cargo::rustc-check-cfg=cfg(sifr_e2e)");
    println!("cargo::rustc-check-cfg=cfg(sifr_python)");
    println!("cargo:rerun-if-env-changed=SIFR_E2E");
    println!("cargo:rerun-if-env-changed=PATH");
    let required = std::env::var("SIFR_E2E").is_ok_and(|v| v == "1");
    let path = std::env::var_os("PATH").unwrap_or_default();
    let found = |tool: &str| std::env::split_paths(&path).any(|dir| dir.join(tool).is_file());
    if required || E2E_TOOLS.iter().all(|tool| found(tool)) {
        println!("cargo:rustc-cfg=sifr_e2e");
    }
    // The Python plugin test needs componentize-py (from PyPI).
    if required || found("componentize-py") {
        println!("cargo:rustc-cfg=sifr_python");
    }
    // The front's tests under real engines (tests/all/front.rs): Snakemake
    // (from PyPI, in a venv: `$SIFR_SNAKEMAKE` names its `snakemake`), and
    // a single-node Slurm cluster (Debian's slurm-wlm and munge).
    println!("cargo::rustc-check-cfg=cfg(sifr_snakemake)");
    println!("cargo::rustc-check-cfg=cfg(sifr_slurm)");
    println!("cargo:rerun-if-env-changed=SIFR_SNAKEMAKE");
    let snakemake = std::env::var_os("SIFR_SNAKEMAKE").is_some_and(|p| Path::new(&p).is_file())
        || found("snakemake");
    if required || snakemake {
        println!("cargo:rustc-cfg=sifr_snakemake");
    }
    let slurm = [
        "slurmctld",
        "slurmd",
        "sbatch",
        "sinfo",
        "munged",
        "mungekey",
    ];
    if required || slurm.iter().all(|tool| found(tool)) {
        println!("cargo:rustc-cfg=sifr_slurm");
    }
}

/// `rustup target add wasm32-wasip2` when the target is missing, and say so.
fn ensure_target() {
    let sysroot = Command::new(std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into()))
        .args(["--print", "sysroot"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    let installed = sysroot.is_some_and(|s| has_target(&s));
    if installed || std::env::var_os("SIFR_SKIP_RUSTUP").is_some() {
        return;
    }
    println!(
        "cargo:warning=the Rust target {TARGET} is missing; running `rustup target add {TARGET}` \
         to build sifr's policy plugins"
    );
    let ok = Command::new("rustup")
        .args(["target", "add", TARGET])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        panic!(
            "the Rust target {TARGET} is missing and `rustup target add {TARGET}` failed; \
             install it by hand and build again"
        );
    }
}

fn has_target(sysroot: &Path) -> bool {
    sysroot
        .join("lib/rustlib")
        .join(TARGET)
        .join("lib")
        .is_dir()
}
