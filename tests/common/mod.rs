//! Helpers shared by the black-box tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A built plugin component (`sifr_plugin_<name>.wasm`).
pub fn plugin_wasm(name: &str) -> PathBuf {
    let path = Path::new(env!("SIFR_PLUGIN_DIR")).join(format!("sifr_plugin_{name}.wasm"));
    assert!(path.is_file(), "{} was not built", path.display());
    path
}

/// sha256 of a file, lowercase hex.
pub fn sha256_hex(path: &Path) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(std::fs::read(path).unwrap()))
}

/// A scratch home for one test: config and cache folders of its own, so no
/// test sees another's compiled plugins or the user's real config.
pub struct Scratch {
    pub dir: tempfile::TempDir,
}

impl Scratch {
    pub fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    /// `sifr ARGS...` with this scratch's XDG folders and cache.
    pub fn sifr(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_sifr"))
            .args(args)
            .env("XDG_CONFIG_HOME", self.path().join("config"))
            .env("XDG_CACHE_HOME", self.path().join("cache"))
            .env("SIFR_CACHE_DIR", self.path().join("cache/sifr"))
            .env_remove("SIFR_CONFIG")
            .output()
            .expect("running sifr")
    }
}

pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A config entry for a plugin file, as TOML.
pub fn entry(name: &str, wasm: &Path, extra: &str) -> String {
    format!(
        "[[plugin]]\nname = \"{name}\"\npath = \"{}\"\n{extra}\n",
        wasm.display()
    )
}

/// The apptainer test double (`tests/apptainer-double`), built by `cargo test`
/// at the workspace root.
pub fn apptainer_double() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(Path::parent).unwrap();
    let path = dir.join("apptainer-test-double");
    assert!(
        path.is_file(),
        "{} is missing: run the tests from the workspace root (`cargo test`), \
         or build it with `cargo build -p sifr-apptainer-double`",
        path.display()
    );
    path
}

/// Every invocation the double logged, as argv lists.
pub fn double_log(path: &Path) -> Vec<Vec<String>> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

/// Only the `pull` invocations.
pub fn pulls(path: &Path) -> Vec<Vec<String>> {
    double_log(path)
        .into_iter()
        .filter(|argv| argv.first().is_some_and(|a| a == "pull"))
        .collect()
}

/// A config layer that only gives plugins a generous deadline, for tests
/// that start many sifr processes at once on a small machine: the policy's
/// 100 ms wall-clock default is not what they test.
pub fn sandbox_config() -> PathBuf {
    static DIR: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    let dir = DIR.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("sandbox.toml"),
            "[sandbox]\ntimeout-ms = 10000\n",
        )
        .unwrap();
        dir
    });
    dir.path().join("sandbox.toml")
}
