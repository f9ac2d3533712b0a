//! Sets `cfg(sifr_e2e)` for the tests of the real backend, as `host/build.rs`
//! does for sifr's end-to-end tests: when `SIFR_E2E=1` (then a missing tool
//! fails them), or when every tool they need is on PATH. Otherwise they are
//! compiled as ignored, with a reason that names the packages, so
//! `cargo test` shows that they were skipped instead of passing.

/// The programs the real backend's tests drive (`src/real/test_support.rs`
/// says which package brings each).
const TOOLS: &[&str] = &[
    "skopeo",
    "umoci",
    "mksquashfs",
    "unsquashfs",
    "siftool",
    "bwrap",
    "busybox",
    "docker-registry",
];

fn main() {
    println!("cargo::rustc-check-cfg=cfg(sifr_e2e)");
    println!("cargo:rerun-if-env-changed=SIFR_E2E");
    println!("cargo:rerun-if-env-changed=PATH");
    let required = std::env::var("SIFR_E2E").is_ok_and(|v| v == "1");
    let path = std::env::var_os("PATH").unwrap_or_default();
    let found = |tool: &str| std::env::split_paths(&path).any(|dir| dir.join(tool).is_file());
    if required || TOOLS.iter().all(|tool| found(tool)) {
        println!("cargo:rustc-cfg=sifr_e2e");
    }
}
