//! bv's `ContainerRuntime`, driven only through the trait (`&dyn
//! ContainerRuntime`), over sifr with the apptainer test double: what bv's
//! `add`, `sync` and `run` ask of a runtime, and what they get back.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use bv_core::error::BvError;
use bv_core::manifest::GpuSpec;
use bv_runtime::{
    ContainerRuntime, GpuProfile, ImageDigest, Mount, OciRef, ProgressReporter, RunSpec,
};
use sifr::{Config, ConfigSources, RuntimeOptions};
use sifr_bv::SifrRuntime;

const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// The apptainer test double, built next to this test's directory (by
/// `cargo test` at the workspace root; built here, into the same target
/// directory and profile, when `-p sifr-bv` alone did not build it).
fn apptainer_double() -> PathBuf {
    // Built once; a failure is reported to every test with its cause,
    // not as a poisoned lock after the first.
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BUILT
        .get_or_init(build_double)
        .clone()
        .unwrap_or_else(|e| panic!("{e}"))
}

fn build_double() -> Result<PathBuf, String> {
    // This test runs from TARGET[/TRIPLE]/PROFILE/deps/; the double is a
    // binary of the workspace, so it lives in TARGET[/TRIPLE]/PROFILE/.
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .ok_or("no profile dir")?;
    let path = profile_dir.join("apptainer-test-double");
    if path.is_file() {
        return Ok(path);
    }
    let (target_dir, triple) = target_of(profile_dir)?;
    let profile = profile_dir
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("debug");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut build = std::process::Command::new(cargo);
    build
        .args(["build", "-p", "sifr-apptainer-double", "--target-dir"])
        .arg(target_dir);
    match profile {
        "debug" => {}
        "release" => {
            build.arg("--release");
        }
        other => {
            build.args(["--profile", other]);
        }
    }
    if let Some(triple) = triple {
        build.args(["--target", triple]);
    }
    let status = build
        .status()
        .map_err(|e| format!("running cargo to build the apptainer test double: {e}"))?;
    if !status.success() {
        return Err(format!(
            "building the apptainer test double failed: {build:?}"
        ));
    }
    if !path.is_file() {
        return Err(format!("{} is missing after {build:?}", path.display()));
    }
    Ok(path)
}

/// The target directory a profile directory is in, and the target triple
/// when the build named one (`TARGET/TRIPLE/PROFILE`). Cargo marks the root
/// of every target directory with `CACHEDIR.TAG`.
fn target_of(profile_dir: &Path) -> Result<(&Path, Option<&str>), String> {
    let parent = profile_dir.parent().ok_or("no target dir")?;
    if parent.join("CACHEDIR.TAG").is_file() {
        return Ok((parent, None));
    }
    match (parent.parent(), parent.file_name().and_then(|n| n.to_str())) {
        (Some(root), Some(triple)) if root.join("CACHEDIR.TAG").is_file() => {
            Ok((root, Some(triple)))
        }
        _ => Err(format!(
            "{} is not inside a cargo target directory",
            profile_dir.display()
        )),
    }
}

/// One test's world: a cache, a log of the double's argv, and a wrapper
/// that runs the double with this test's controls (the double reads them
/// from its environment, and tests run in parallel in one process).
struct World {
    dir: tempfile::TempDir,
}

impl World {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn log(&self) -> PathBuf {
        self.path().join("apptainer.log")
    }

    /// A wrapper around the double, with `controls` set.
    fn apptainer(&self, controls: &[(&str, &str)]) -> PathBuf {
        let mut script = String::from("#!/bin/sh\n");
        script.push_str(&format!(
            "export APPTAINER_DOUBLE_LOG='{}'\n",
            self.log().display()
        ));
        for (k, v) in controls {
            script.push_str(&format!("export {k}='{v}'\n"));
        }
        script.push_str(&format!("exec '{}' \"$@\"\n", apptainer_double().display()));
        let path = self.path().join("apptainer");
        std::fs::write(&path, script).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    /// The adapter over a runtime with `config` (TOML; empty: sifr's
    /// default chain) and the double with `controls`.
    fn runtime(&self, config: &str, controls: &[(&str, &str)]) -> Box<dyn ContainerRuntime> {
        let config = if config.is_empty() {
            Config::default()
        } else {
            let file = self.path().join("config.toml");
            std::fs::write(&file, config).unwrap();
            Config::load(&ConfigSources::only(file)).unwrap()
        };
        let options = RuntimeOptions {
            apptainer: Some(self.apptainer(controls)),
            cache_dir: Some(self.path().join("cache")),
            ..RuntimeOptions::default()
        };
        Box::new(SifrRuntime::new(config, options).unwrap())
    }

    /// Every argv the double was run with.
    fn argvs(&self) -> Vec<Vec<String>> {
        std::fs::read_to_string(self.log())
            .unwrap_or_default()
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect()
    }

    /// The URIs of every `apptainer pull`, in order.
    fn pulled_uris(&self) -> Vec<String> {
        self.argvs()
            .into_iter()
            .filter(|argv| argv[0] == "pull")
            .map(|argv| argv.last().unwrap().clone())
            .collect()
    }

    /// The argv of every `apptainer run`.
    fn runs(&self) -> Vec<Vec<String>> {
        self.argvs()
            .into_iter()
            .filter(|argv| argv[0] == "run")
            .collect()
    }
}

/// A reporter that keeps what it is told.
#[derive(Default)]
struct Recorder {
    lines: Mutex<Vec<String>>,
    finished: Mutex<bool>,
}

impl ProgressReporter for Recorder {
    fn update(&self, message: &str, _: Option<u64>, _: Option<u64>) {
        self.lines.lock().unwrap().push(message.to_string());
    }
    fn finish(&self, _: &str) {
        *self.finished.lock().unwrap() = true;
    }
}

fn oci(text: &str) -> OciRef {
    text.parse().unwrap()
}

fn spec(image: OciRef, command: &[&str]) -> RunSpec {
    RunSpec {
        image,
        command: command.iter().map(|s| s.to_string()).collect(),
        env: HashMap::new(),
        mounts: Vec::new(),
        gpu: GpuProfile::default(),
        working_dir: None,
        capture_output: true,
    }
}

fn runtime_error(result: Result<impl std::fmt::Debug, BvError>) -> String {
    match result {
        Err(BvError::RuntimeError(message)) => message,
        other => panic!("expected a RuntimeError, got {other:?}"),
    }
}

#[test]
fn a_pinned_pull_returns_the_manifest_digest_and_pulls_by_it() {
    let world = World::new();
    let rt = world.runtime("", &[]);
    let progress = Recorder::default();
    let image = oci(&format!("ncbi/blast:2.14.0@{DIGEST}"));

    let digest = rt.pull(&image, &progress).unwrap();
    assert_eq!(
        digest.0, DIGEST,
        "bv.lock gets the registry manifest digest"
    );
    assert_eq!(
        world.pulled_uris(),
        [format!("docker://ncbi/blast@{DIGEST}")]
    );
    assert!(*progress.finished.lock().unwrap());
    assert!(
        progress
            .lines
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("pulling docker://ncbi/blast@")),
        "{:?}",
        progress.lines.lock().unwrap()
    );

    // `bv sync` elsewhere pulls `name:tag@digest` and compares: same answer,
    // and here it is a cache hit.
    assert_eq!(rt.pull(&image, &progress).unwrap().0, DIGEST);
    assert_eq!(world.pulled_uris().len(), 1);

    // `bv run` asks with the name bv strips of its tag.
    assert!(rt.is_locally_available("ncbi/blast", DIGEST));
    assert!(rt.is_locally_available("docker.io/ncbi/blast", DIGEST));
    assert!(!rt.is_locally_available("ncbi/other", DIGEST));
    assert!(!rt.is_locally_available("ncbi/blast", &DIGEST.replace("0123", "3210")));
    assert!(!rt.is_locally_available("ncbi/blast", "not a digest"));

    let meta = rt.inspect(&digest).unwrap();
    assert_eq!(meta.size_bytes, Some(65536));
}

#[test]
fn a_tag_pull_returns_the_sif_digest_marked_and_runs_that_file() {
    let world = World::new();
    let rt = world.runtime("", &[]);
    let digest = rt
        .pull(&oci("ncbi/blast:2.14.0"), &Recorder::default())
        .unwrap();
    let hex = digest
        .0
        .strip_prefix("sif:sha256:")
        .unwrap_or_else(|| panic!("{digest} is not marked as a SIF digest"));
    let blob = world.path().join(format!("cache/blobs/sha256/{hex}.sif"));
    assert!(blob.is_file(), "{} is not the cached file", blob.display());
    assert!(rt.is_locally_available("ncbi/blast", &digest.0));
    assert!(!rt.is_locally_available("ncbi/other", &digest.0));
    assert_eq!(rt.inspect(&digest).unwrap().size_bytes, Some(65536));

    // `bv run` runs `name@digest`, tag dropped: the file this machine has,
    // never a pull by the SIF digest.
    let mut image = oci("ncbi/blast");
    image.digest = Some(digest.0.clone());
    let outcome = rt.run(&spec(image, &["true"])).unwrap();
    assert_eq!(outcome.exit_code, 0);
    assert_eq!(world.pulled_uris(), ["docker://ncbi/blast:2.14.0"]);
    let runs = world.runs();
    assert_eq!(runs.len(), 1);
    assert!(runs[0].contains(&blob.display().to_string()), "{runs:?}");
}

#[test]
fn a_sif_digest_this_cache_lacks_is_never_pulled_by() {
    let world = World::new();
    let rt = world.runtime("", &[]);
    let other = format!("sif:sha256:{}", "ab".repeat(32));

    // `bv sync` on another machine: name:tag@digest. The tag is pulled, the
    // new file differs, and the error says to pin by manifest digest.
    let mut image = oci("ncbi/blast:2.14.0");
    image.digest = Some(other.clone());
    let message = runtime_error(rt.pull(&image, &Recorder::default()));
    assert!(
        message.contains("SIF digest") && message.contains("manifest digest"),
        "{message}"
    );
    assert_eq!(world.pulled_uris(), ["docker://ncbi/blast:2.14.0"]);

    // Without a tag there is nothing that could be pulled.
    let mut image = oci("ncbi/blast");
    image.digest = Some(other.clone());
    let message = runtime_error(rt.pull(&image, &Recorder::default()));
    assert!(message.contains("cannot be pulled by"), "{message}");
    assert!(!rt.is_locally_available("ncbi/blast", &other));
    let message = runtime_error(rt.run(&spec(image, &["true"])));
    assert!(message.contains("bv sync"), "{message}");
    assert_eq!(
        world.pulled_uris().len(),
        1,
        "nothing pulled by a SIF digest"
    );
}

#[test]
fn the_site_policy_chooses_the_sources_and_falls_back() {
    let world = World::new();
    let config = "[[plugin]]\nname = \"hub\"\nbuiltin = \"mirror\"\n[plugin.settings]\n\
                  registries = [\"docker.io\"]\n[[plugin.settings.mirrors]]\n\
                  registry = \"mirror.example.org\"\n";
    let rt = world.runtime(config, &[("APPTAINER_DOUBLE_FAIL", "mirror.example.org")]);
    let progress = Recorder::default();
    rt.pull(&oci("ubuntu:22.04"), &progress).unwrap();
    assert_eq!(
        world.pulled_uris(),
        [
            "docker://mirror.example.org/library/ubuntu:22.04",
            "docker://ubuntu:22.04"
        ]
    );
    let lines = progress.lines.lock().unwrap();
    assert!(
        lines
            .iter()
            .any(|l| l.contains("failed; trying docker://ubuntu:22.04")),
        "{lines:?}"
    );
}

#[test]
fn a_policy_denial_and_a_failed_pull_are_runtime_errors_that_say_why() {
    let world = World::new();
    let config =
        "[[plugin]]\nname = \"rules\"\nbuiltin = \"tags\"\n[plugin.settings]\ndeny-latest = true\n";
    let rt = world.runtime(config, &[("APPTAINER_DOUBLE_FAIL", "broken")]);
    let message = runtime_error(rt.pull(&oci("ubuntu:latest"), &Recorder::default()));
    assert!(
        message.contains("denied by plugin 'rules'") && message.contains("deny-latest"),
        "{message}"
    );
    assert!(world.pulled_uris().is_empty());

    let message = runtime_error(rt.pull(&oci("quay.io/broken/x:1"), &Recorder::default()));
    assert!(message.contains("every source failed"), "{message}");

    // A lockfile from bv's own apptainer backend holds a SIF hash written
    // as `sha256:`; pulling by it fails everywhere, and the error says why.
    let mut image = oci("quay.io/broken/x:1");
    image.digest = Some(DIGEST.to_string());
    let message = runtime_error(rt.pull(&image, &Recorder::default()));
    assert!(message.contains("run `bv lock` again"), "{message}");
}

#[test]
fn run_passes_mounts_env_working_dir_and_gpu() {
    let world = World::new();
    let rt = world.runtime("", &[]);
    rt.pull(&oci(&format!("ncbi/blast@{DIGEST}")), &Recorder::default())
        .unwrap();
    let data = world.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let work = world.path().join("work");
    std::fs::create_dir(&work).unwrap();

    let mut run = spec(
        oci(&format!("ncbi/blast@{DIGEST}")),
        &[
            "sh",
            "-c",
            "printf '%s|%s|%s|%s' \"$A\" \"$B\" \"$C\" \"$(pwd)\"",
        ],
    );
    run.env = HashMap::from([
        ("A".to_string(), "1,2".to_string()),
        ("B".to_string(), "x=y,z".to_string()),
        ("C".to_string(), "say \"hi\"=".to_string()),
    ]);
    run.mounts = vec![
        Mount {
            host_path: data.clone(),
            container_path: "/data".into(),
            read_only: true,
        },
        Mount {
            host_path: work.clone(),
            container_path: "/workspace".into(),
            read_only: false,
        },
    ];
    run.gpu = GpuProfile {
        spec: Some(GpuSpec {
            required: true,
            min_vram_gb: None,
            cuda_version: None,
        }),
    };
    // The double's fake backend runs the command on the host, so the
    // working directory is a host directory here.
    run.working_dir = Some(work.clone());

    let outcome = rt.run(&run).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&outcome.stdout),
        format!("1,2|x=y,z|say \"hi\"=|{}", work.display()),
        "stderr: {}",
        String::from_utf8_lossy(&outcome.stderr)
    );
    assert_eq!(outcome.exit_code, 0);

    let argv = &world.runs()[0];
    let has = |pair: [&str; 2]| argv.windows(2).any(|w| w == pair);
    assert!(argv.starts_with(&["run".into(), "--cleanenv".into(), "--no-home".into()]));
    assert!(
        has(["--bind", &format!("{}:/data:ro", data.display())]),
        "{argv:?}"
    );
    assert!(
        has(["--bind", &format!("{}:/workspace", work.display())]),
        "{argv:?}"
    );
    assert!(has(["--pwd", &work.display().to_string()]), "{argv:?}");
    assert!(argv.contains(&"--nv".to_string()), "{argv:?}");
    assert!(
        world.pulled_uris().len() == 1,
        "the run used the cached image"
    );

    assert_eq!(rt.gpu_args(&run.gpu), ["--nv"]);
    assert!(rt.gpu_args(&GpuProfile::default()).is_empty());
    assert_eq!(
        rt.mount_args(&run.mounts[..1]),
        ["--bind".to_string(), format!("{}:/data:ro", data.display())]
    );
}

#[test]
fn run_returns_the_container_s_exit_code_and_pulls_what_is_missing() {
    let world = World::new();
    let rt = world.runtime("", &[]);
    let image = oci(&format!("ncbi/blast@{DIGEST}"));
    let outcome = rt
        .run(&spec(image.clone(), &["sh", "-c", "exit 3"]))
        .unwrap();
    assert_eq!(outcome.exit_code, 3);
    assert_eq!(world.pulled_uris().len(), 1, "run pulls a missing image");

    let mut inherit = spec(image, &["sh", "-c", "exit 7"]);
    inherit.capture_output = false;
    assert_eq!(rt.run(&inherit).unwrap().exit_code, 7);
    assert_eq!(world.pulled_uris().len(), 1);
}

#[test]
fn mounts_apptainer_cannot_express_are_refused() {
    let world = World::new();
    let rt = world.runtime("", &[]);
    let mut run = spec(oci(&format!("ncbi/blast@{DIGEST}")), &["true"]);
    run.mounts = vec![Mount {
        host_path: "/data/a,b".into(),
        container_path: "/data".into(),
        read_only: false,
    }];
    let message = runtime_error(rt.run(&run));
    assert!(message.contains("separators"), "{message}");
    assert!(world.argvs().is_empty(), "nothing ran");
}

#[test]
fn health_check_names_apptainer_and_its_version() {
    let world = World::new();
    let rt = world.runtime("", &[("APPTAINER_DOUBLE_VERSION", "1.3.4-1.el9")]);
    assert_eq!(rt.name(), "apptainer");
    let info = rt.health_check().unwrap();
    assert_eq!(info.name, "apptainer");
    assert_eq!(info.version, "1.3.4-1.el9");

    let missing: Box<dyn ContainerRuntime> = Box::new(
        SifrRuntime::new(
            Config::default(),
            RuntimeOptions {
                apptainer: Some(world.path().join("no-such-apptainer")),
                cache_dir: Some(world.path().join("cache")),
                ..RuntimeOptions::default()
            },
        )
        .unwrap(),
    );
    match missing.health_check() {
        Err(BvError::RuntimeNotAvailable { runtime, reason }) => {
            assert_eq!(runtime, "apptainer");
            assert!(reason.contains("no-such-apptainer"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    assert!(missing.inspect(&ImageDigest(DIGEST.into())).is_err());
}
