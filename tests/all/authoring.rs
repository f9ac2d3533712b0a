//! Plugin authoring: the Rust template builds on its own, as a site admin
//! would build a copy of it, and the Python plugin builds with
//! componentize-py; both pass `sifr plugin check`.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{Scratch, stderr, stdout};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

#[test]
fn the_rust_template_builds_alone_and_passes_plugin_check() {
    let template = repo().join("plugins/template");
    let target = repo().join("target/wasm-plugins");
    let out = Command::new(env!("CARGO"))
        .args([
            "build",
            "--release",
            "--locked",
            "--target",
            "wasm32-wasip2",
            "--manifest-path",
        ])
        .arg(template.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target)
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let wasm = target.join("wasm32-wasip2/release/my_policy.wasm");

    let scratch = Scratch::new();
    let settings = scratch.write(
        "settings.toml",
        "hub-mirror = \"harbor.example.org/dockerhub\"\n",
    );
    let out = scratch.sifr(&[
        "plugin",
        "check",
        wasm.to_str().unwrap(),
        "--settings",
        settings.to_str().unwrap(),
        // The deadline is not what this is about; a loaded machine can miss
        // the 100 ms default.
        "--timeout-ms",
        "10000",
        "ncbi/blast:2.14.0",
        "quay.io/biocontainers/blast:2.15.0",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains(
            "1. docker://harbor.example.org/dockerhub/ncbi/blast:2.14.0  # site Docker Hub mirror"
        ),
        "{text}"
    );
    assert!(
        text.contains("2. docker://ncbi/blast:2.14.0  # origin"),
        "{text}"
    );
    assert!(
        text.contains("1. docker://quay.io/biocontainers/blast:2.15.0  # origin"),
        "{text}"
    );

    let out = scratch.sifr(&["plugin", "check", wasm.to_str().unwrap(), "ubuntu:latest"]);
    assert_eq!(out.status.code(), Some(4), "a denial fails the check");
    assert!(
        stdout(&out).contains("denied: `:latest` (or no tag) is not reproducible"),
        "{}",
        stdout(&out)
    );

    let bad = scratch.write("bad.toml", "hub-mirror = \"https://x\"\n");
    let out = scratch.sifr(&[
        "plugin",
        "check",
        wasm.to_str().unwrap(),
        "--settings",
        bad.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(3));
    assert!(
        stderr(&out).contains("without a scheme"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn the_template_s_contract_is_the_repository_s() {
    // `wit` in the template is a link, so a copy made with `cp -rL` carries
    // the same contract the host implements.
    let link = std::fs::read_link(repo().join("plugins/template/wit")).unwrap();
    assert_eq!(link, Path::new("../../wit/v0.2.0"));
}

#[test]
#[cfg_attr(
    not(sifr_python),
    ignore = "needs componentize-py (pip install componentize-py==0.25.1), or SIFR_E2E=1"
)]
fn the_python_plugin_builds_with_componentize_py_and_passes_plugin_check() {
    assert!(
        which::which("componentize-py").is_ok(),
        "componentize-py is missing: pip install componentize-py==0.25.1"
    );
    let scratch = Scratch::new();
    let source = repo().join("plugins/python-biocontainers");
    let wasm = scratch.path().join("biocontainers.wasm");
    let out = Command::new("componentize-py")
        .arg("-d")
        .arg(repo().join("wit/v0.1.0"))
        .args(["-w", "plugin", "componentize", "app", "-o"])
        .arg(&wasm)
        .current_dir(&source)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));

    let settings = source.join("settings.toml");
    let check = || {
        scratch.sifr(&[
            "plugin",
            "check",
            wasm.to_str().unwrap(),
            "--settings",
            settings.to_str().unwrap(),
            // Not what this test is about: keep a loaded machine from failing it.
            "--timeout-ms",
            "5000",
            "quay.io/biocontainers/blast:2.15.0",
            "ubuntu:22.04",
        ])
    };
    let out = check();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains(
            "1. docker://harbor.example.org/biocontainers-proxy/biocontainers/blast:2.15.0  # BioContainers mirror for quay.io/biocontainers (python plugin)"
        ),
        "{text}"
    );
    assert!(
        text.contains("2. docker://quay.io/biocontainers/blast:2.15.0  # origin"),
        "{text}"
    );
    assert!(
        text.contains("log info: routing quay.io/biocontainers/blast to harbor.example.org"),
        "{text}"
    );
    assert!(
        text.contains("1. docker://ubuntu:22.04  # origin"),
        "{text}"
    );

    // The second run loads the compiled artifact instead of compiling 18 MB.
    let out = check();
    assert!(
        stdout(&out).contains("(compiled artifact from cache)"),
        "{}",
        stdout(&out)
    );

    let bad = scratch.write("bad.toml", "mirrror = \"x\"\n");
    let out = scratch.sifr(&[
        "plugin",
        "check",
        wasm.to_str().unwrap(),
        "--settings",
        bad.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(3));
    assert!(
        stderr(&out).contains("unknown setting(s) mirrror"),
        "{}",
        stderr(&out)
    );
}
