//! End to end on real parts: two real OCI registries (Debian's
//! `docker-registry`, the CNCF distribution registry) on 127.0.0.1, images
//! built from busybox-static and pushed with skopeo, real SIF files written
//! with siftool, and runs in bubblewrap namespaces. Apptainer itself is not
//! packaged here, so the apptainer test double's `real` backend stands in
//! (see tests/apptainer-double).
//!
//! These tests need docker-registry, skopeo, umoci, squashfs-tools, siftool,
//! bubblewrap, busybox-static and openssl. `.ci/run` installs them and runs
//! the suite with `SIFR_E2E=1`, under which a missing tool is a failure.
//! Without the tools (and without `SIFR_E2E=1`) the build marks these tests
//! ignored, and `cargo test` lists them as such.

use crate::common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use common::{
    Lines, TouchOnDrop, apptainer_double, pulls, sandbox_config, stderr, stdout, wait_until,
    wait_within,
};

const TOOLS: &[(&str, &str)] = &[
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

/// Fail loudly, naming the packages, when a tool is missing.
pub(crate) fn require_tools() {
    let missing: Vec<&str> = TOOLS
        .iter()
        .filter(|(tool, _)| which::which(tool).is_err())
        .map(|(_, package)| *package)
        .collect();
    assert!(
        missing.is_empty(),
        "the end-to-end tests need these Debian packages: apt-get install {}",
        missing.join(" ")
    );
}

/// Run a command; panic with its stderr if it fails.
pub(crate) fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?} failed:\n{}", stderr(&out));
    out
}

/// A self-signed certificate for 127.0.0.1, and a cert dir for skopeo.
pub(crate) struct Certs {
    pub(crate) cert: PathBuf,
    pub(crate) key: PathBuf,
    /// Holds `ca.crt`: what `--src-cert-dir` / `--dest-cert-dir` take.
    pub(crate) dir: PathBuf,
}

/// Built once per test process: the certificate and the OCI images.
pub(crate) struct Fixtures {
    _dir: tempfile::TempDir,
    pub(crate) certs: Certs,
    /// An OCI layout with tags `1`, `2` (busybox) and `other` (a second image).
    pub(crate) layout: PathBuf,
}

pub(crate) fn fixtures() -> &'static Fixtures {
    static FIXTURES: OnceLock<Fixtures> = OnceLock::new();
    FIXTURES.get_or_init(|| {
        require_tools();
        // In the process's own directory: a static is never dropped.
        let dir = tempfile::tempdir_in(crate::common::process_dir("e2e")).unwrap();
        let certs_dir = dir.path().join("certs");
        std::fs::create_dir(&certs_dir).unwrap();
        let certs = Certs {
            cert: dir.path().join("cert.pem"),
            key: dir.path().join("key.pem"),
            dir: certs_dir.clone(),
        };
        run(Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-subj",
                "/CN=127.0.0.1",
            ])
            .args(["-addext", "subjectAltName=IP:127.0.0.1"])
            // Not a CA: rustls (sifr's registry client) refuses a CA
            // certificate as a server's; Go (skopeo) trusts it as its own
            // root either way.
            .args(["-addext", "basicConstraints=critical,CA:FALSE"])
            .arg("-keyout")
            .arg(&certs.key)
            .arg("-out")
            .arg(&certs.cert));
        std::fs::copy(&certs.cert, certs_dir.join("ca.crt")).unwrap();

        // A tiny rootfs: busybox-static and a few applets.
        let layout = dir.path().join("layout");
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("bin")).unwrap();
        std::fs::copy(which::which("busybox").unwrap(), root.join("bin/busybox")).unwrap();
        for applet in ["sh", "echo", "cat", "env", "true", "ls", "sleep"] {
            std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
        }
        run(Command::new("umoci")
            .args(["init", "--layout"])
            .arg(&layout));
        let image = |tag: &str| format!("{}:{tag}", layout.display());
        for (tag, marker) in [
            ("1", "busybox 1"),
            ("2", "busybox 2"),
            ("other", "other image"),
        ] {
            run(Command::new("umoci").args(["new", "--image", &image(tag)]));
            run(Command::new("umoci")
                .args(["insert", "--image", &image(tag)])
                .arg(&root)
                .arg("/"));
            let note = dir.path().join(format!("marker-{tag}"));
            std::fs::write(&note, format!("{marker}\n")).unwrap();
            run(Command::new("umoci")
                .args(["insert", "--image", &image(tag)])
                .arg(&note)
                .arg("/IMAGE"));
            run(Command::new("umoci").args([
                "config",
                "--image",
                &image(tag),
                "--config.cmd",
                "sh",
                "--config.env",
                "PATH=/bin",
            ]));
        }
        Fixtures {
            _dir: dir,
            certs,
            layout,
        }
    })
}

/// A `docker-registry` on 127.0.0.1, on a port the kernel chose, stopped
/// when dropped (even when the test fails).
pub(crate) struct Registry {
    child: Option<Child>,
    pub(crate) port: u16,
    dir: tempfile::TempDir,
    tls: bool,
}

impl Registry {
    pub(crate) fn start(tls: bool) -> Self {
        let fx = fixtures();
        let dir = tempfile::tempdir().unwrap();
        let tls_config = if tls {
            format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                fx.certs.cert.display(),
                fx.certs.key.display()
            )
        } else {
            String::new()
        };
        let config = format!(
            "storage:\n  filesystem:\n    rootdirectory: {}\n",
            dir.path().join("data").display()
        );
        let (child, port) = crate::common::start_registry(
            dir.path(),
            &config,
            &tls_config,
            &dir.path().join("registry.log"),
        );
        Self {
            child: Some(child),
            port,
            dir,
            tls,
        }
    }

    pub(crate) fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Push a tag of the fixture layout as `repository:tag`.
    pub(crate) fn push(&self, layout_tag: &str, repository: &str, tag: &str) {
        let fx = fixtures();
        let mut cmd = Command::new("skopeo");
        cmd.args(["copy", "--insecure-policy", "--quiet"]);
        if self.tls {
            cmd.arg("--dest-cert-dir").arg(&fx.certs.dir);
        } else {
            cmd.arg("--dest-tls-verify=false");
        }
        cmd.arg(format!("oci:{}:{layout_tag}", fx.layout.display()))
            .arg(format!("docker://{}/{repository}:{tag}", self.host()));
        run(&mut cmd);
    }

    /// The manifest digest of `repository:tag` in this registry.
    pub(crate) fn digest(&self, repository: &str, tag: &str) -> String {
        let fx = fixtures();
        let mut cmd = Command::new("skopeo");
        cmd.args(["inspect", "--insecure-policy", "--format", "{{.Digest}}"]);
        if self.tls {
            cmd.arg("--cert-dir").arg(&fx.certs.dir);
        } else {
            cmd.arg("--tls-verify=false");
        }
        cmd.arg(format!("docker://{}/{repository}:{tag}", self.host()));
        String::from_utf8(run(&mut cmd).stdout)
            .unwrap()
            .trim()
            .to_string()
    }

    pub(crate) fn log(&self) -> String {
        let mut text = String::new();
        if let Ok(mut f) = std::fs::File::open(self.dir.path().join("registry.log")) {
            let _ = f.read_to_string(&mut text);
        }
        text
    }

    /// Requests for `path` in the access log (`GET /v2/e2e/busybox/manifests/1`).
    pub(crate) fn requests(&self, path: &str) -> usize {
        self.log().lines().filter(|l| l.contains(path)).count()
    }

    pub(crate) fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// sifr with a scratch cache and config, and the apptainer stand-in with its
/// real backend.
pub(crate) struct Sifr {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) log: PathBuf,
}

impl Sifr {
    pub(crate) fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("apptainer.log");
        Self { dir, log }
    }

    pub(crate) fn cache(&self) -> PathBuf {
        self.dir.path().join("cache")
    }

    pub(crate) fn config(&self, text: &str) -> PathBuf {
        let path = self.dir.path().join("config.toml");
        std::fs::write(&path, text).unwrap();
        path
    }

    pub(crate) fn command(&self, args: &[&str]) -> Command {
        let mut cmd = crate::common::sifr_command(self.dir.path());
        cmd.args(args)
            .env("SIFR_CACHE_DIR", self.cache())
            .env("SIFR_APPTAINER", apptainer_double())
            .env("APPTAINER_DOUBLE_BACKEND", "real")
            .env("APPTAINER_DOUBLE_CERT_DIR", &fixtures().certs.dir)
            // sifr's own registry client (digest look-ups) trusts the
            // test certificate as skopeo does.
            .env("SSL_CERT_FILE", &fixtures().certs.cert)
            .env("APPTAINER_DOUBLE_LOG", &self.log)
            .env("SIFR_CONFIG", sandbox_config());
        cmd
    }

    pub(crate) fn sifr(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }

    pub(crate) fn entries(&self) -> Vec<serde_json::Value> {
        let out = self.sifr(&["cache", "ls", "--json"]);
        assert!(out.status.success(), "{}", stderr(&out));
        serde_json::from_slice(&out.stdout).unwrap()
    }
}

pub(crate) fn mirror_config(origin: &Registry, mirror: &str) -> String {
    format!(
        "[[plugin]]\nname = \"site-mirror\"\nbuiltin = \"mirror\"\n[plugin.settings]\n\
         registries = [\"{}\"]\n[[plugin.settings.mirrors]]\nregistry = \"{mirror}\"\nplain-http = true\n\
         [[plugin]]\nname = \"default\"\nbuiltin = \"default\"\n",
        origin.host()
    )
}

pub(crate) const MANIFEST_1: &str = "/v2/e2e/busybox/manifests/1";

#[test]
#[cfg_attr(
    not(sifr_e2e),
    ignore = "end-to-end: install docker-registry skopeo umoci squashfs-tools siftool bubblewrap busybox-static, or set SIFR_E2E=1"
)]
fn default_policy_pulls_a_real_sif_from_the_origin() {
    let origin = Registry::start(true);
    origin.push("1", "e2e/busybox", "1");
    origin.push("2", "e2e/busybox", "2");
    let sifr = Sifr::new();
    let image = format!("{}/e2e/busybox:1", origin.host());
    let out = sifr.sifr(&["pull", &image]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(origin.requests(MANIFEST_1) > 0, "the origin served it");

    let entries = sifr.entries();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0]["image"], image);
    assert_eq!(entries[0]["source-uri"], format!("docker://{image}"));

    let sif = stdout(&out).trim().to_string();
    let list = run(Command::new("siftool").args(["list", &sif]));
    let list = String::from_utf8_lossy(&list.stdout);
    assert!(
        list.contains("FS") && list.contains("Squashfs"),
        "a real SIF with a squashfs partition:\n{list}"
    );
}

#[test]
#[cfg_attr(
    not(sifr_e2e),
    ignore = "end-to-end: install docker-registry skopeo umoci squashfs-tools siftool bubblewrap busybox-static, or set SIFR_E2E=1"
)]
fn a_configured_mirror_serves_the_pull() {
    let origin = Registry::start(true);
    let mirror = Registry::start(false);
    // Only the mirror holds the image: a pull that succeeds came from it.
    mirror.push("1", "e2e/busybox", "1");
    let sifr = Sifr::new();
    let config = sifr.config(&mirror_config(&origin, &mirror.host()));
    let image = format!("{}/e2e/busybox:1", origin.host());
    let out = sifr.sifr(&["--config", config.to_str().unwrap(), "pull", &image]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(mirror.requests(MANIFEST_1) > 0, "the mirror served it");
    assert_eq!(origin.requests(MANIFEST_1), 0, "the origin was not asked");
    let entry = &sifr.entries()[0];
    assert_eq!(
        entry["source-uri"],
        format!("docker://{}/e2e/busybox:1", mirror.host())
    );
    assert_eq!(
        entry["image"], image,
        "the identity is the upstream reference"
    );
    assert!(
        pulls(&sifr.log)[0].contains(&"--no-https".to_string()),
        "plain HTTP mirror"
    );
}

#[test]
#[cfg_attr(
    not(sifr_e2e),
    ignore = "end-to-end: install docker-registry skopeo umoci squashfs-tools siftool bubblewrap busybox-static, or set SIFR_E2E=1"
)]
fn a_mirror_that_is_down_falls_back_to_the_origin() {
    let origin = Registry::start(true);
    origin.push("1", "e2e/busybox", "1");
    // A mirror that refuses connections, on a port no other test can take.
    let mirror = crate::common::RefusedPort::new();
    let mirror_host = mirror.host();
    let sifr = Sifr::new();
    let config = sifr.config(&mirror_config(&origin, &mirror_host));
    let image = format!("{}/e2e/busybox:1", origin.host());
    let out = sifr.sifr(&["--config", config.to_str().unwrap(), "pull", &image]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "pull from docker://{mirror_host}/e2e/busybox:1 failed"
        )) && err.contains(&format!("falling back to docker://{image}")),
        "{err}"
    );
    assert_eq!(sifr.entries()[0]["source-uri"], format!("docker://{image}"));
}

#[test]
#[cfg_attr(
    not(sifr_e2e),
    ignore = "end-to-end: install docker-registry skopeo umoci squashfs-tools siftool bubblewrap busybox-static, or set SIFR_E2E=1"
)]
fn a_pinned_reference_is_pulled_by_manifest_digest_and_indexed_by_it() {
    let origin = Registry::start(true);
    origin.push("1", "e2e/busybox", "1");
    let digest = origin.digest("e2e/busybox", "1");
    assert!(digest.starts_with("sha256:"), "{digest}");
    let sifr = Sifr::new();
    // A site policy that requires digests for this registry; the default
    // plugin then pulls by the digest and drops the tag.
    let config = sifr.config(&format!(
        "[[plugin]]\nname = \"pins\"\nbuiltin = \"tags\"\n[plugin.settings]\nrequire-digest = [\"{}/**\"]\n\
         [[plugin]]\nname = \"default\"\nbuiltin = \"default\"\n",
        origin.host()
    ));
    let config = config.to_str().unwrap();
    let unpinned = format!("{}/e2e/busybox:1", origin.host());
    let out = sifr.sifr(&["--config", config, "pull", &unpinned]);
    assert_eq!(
        out.status.code(),
        Some(4),
        "unpinned is denied: {}",
        stderr(&out)
    );

    let pinned = format!("{unpinned}@{digest}");
    let out = sifr.sifr(&["--config", config, "pull", &pinned]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let argv = &pulls(&sifr.log)[0];
    assert_eq!(
        argv.last().unwrap(),
        &format!("docker://{}/e2e/busybox@{digest}", origin.host())
    );
    assert!(origin.requests(&format!("/v2/e2e/busybox/manifests/{digest}")) > 0);
    let entry = &sifr.entries()[0];
    assert_eq!(entry["manifest-digest"], digest);
}

#[test]
#[cfg_attr(
    not(sifr_e2e),
    ignore = "end-to-end: install docker-registry skopeo umoci squashfs-tools siftool bubblewrap busybox-static, or set SIFR_E2E=1"
)]
fn a_denied_reference_never_reaches_apptainer() {
    let origin = Registry::start(true);
    origin.push("1", "e2e/busybox", "latest");
    let before = origin.requests("/v2/e2e/");
    let sifr = Sifr::new();
    let config = sifr.config(
        "[[plugin]]\nname = \"no-latest\"\nbuiltin = \"tags\"\n[plugin.settings]\ndeny-latest = true\n",
    );
    let image = format!("{}/e2e/busybox:latest", origin.host());
    let out = sifr.sifr(&["--config", config.to_str().unwrap(), "pull", &image]);
    assert_eq!(out.status.code(), Some(4));
    let err = stderr(&out);
    assert!(
        err.contains("denied by plugin 'no-latest'") && err.contains("deny-latest"),
        "{err}"
    );
    assert!(pulls(&sifr.log).is_empty(), "apptainer never ran a pull");
    assert_eq!(
        origin.requests("/v2/e2e/"),
        before,
        "the registry saw nothing new"
    );
}

#[test]
#[cfg_attr(
    not(sifr_e2e),
    ignore = "end-to-end: install docker-registry skopeo umoci squashfs-tools siftool bubblewrap busybox-static, or set SIFR_E2E=1"
)]
fn runs_in_the_container_with_binds_env_a_clean_environment_and_exit_codes() {
    let origin = Registry::start(true);
    origin.push("1", "e2e/busybox", "1");
    let sifr = Sifr::new();
    let image = format!("{}/e2e/busybox:1", origin.host());

    let out = sifr.sifr(&["run", &image, "--", "echo", "hi"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out), "hi\n");

    let out = sifr.sifr(&["exec", &image, "--", "cat", "/IMAGE"]);
    assert_eq!(stdout(&out), "busybox 1\n", "the image's own rootfs");

    let data = sifr.dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("input.txt"), "from the host\n").unwrap();
    let bind = format!("{}:/data:ro", data.display());
    let out = sifr.sifr(&[
        "exec",
        "--bind",
        &bind,
        &image,
        "--",
        "cat",
        "/data/input.txt",
    ]);
    assert_eq!(stdout(&out), "from the host\n", "{}", stderr(&out));

    let out = sifr
        .command(&[
            "exec",
            "--env",
            "GREETING=hello",
            &image,
            "--",
            "sh",
            "-c",
            "echo $GREETING; echo ${HOST_SECRET:-unset}",
        ])
        .env("HOST_SECRET", "leaked")
        .output()
        .unwrap();
    assert_eq!(stdout(&out), "hello\nunset\n", "{}", stderr(&out));

    let out = sifr.sifr(&["exec", &image, "--", "sh", "-c", "exit 7"]);
    assert_eq!(out.status.code(), Some(7));
}

#[test]
#[cfg_attr(
    not(sifr_e2e),
    ignore = "end-to-end: install docker-registry skopeo umoci squashfs-tools siftool bubblewrap busybox-static, or set SIFR_E2E=1"
)]
fn a_cache_hit_needs_no_registry() {
    let mut origin = Registry::start(true);
    let mut mirror = Registry::start(false);
    origin.push("1", "e2e/busybox", "1");
    let sifr = Sifr::new();
    let config = sifr.config(&mirror_config(&origin, &mirror.host()));
    let config = config.to_str().unwrap();
    let image = format!("{}/e2e/busybox:1", origin.host());
    let out = sifr.sifr(&["--config", config, "pull", &image]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    // The empty mirror failed, then the origin served it.
    let pulled = pulls(&sifr.log).len();

    origin.stop();
    mirror.stop();
    let out = sifr.sifr(&["--config", config, "run", &image, "--", "echo", "offline"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out), "offline\n");
    assert_eq!(pulls(&sifr.log).len(), pulled, "no pull at all");
}

#[test]
#[cfg_attr(
    not(sifr_e2e),
    ignore = "end-to-end: install docker-registry skopeo umoci squashfs-tools siftool bubblewrap busybox-static, or set SIFR_E2E=1"
)]
fn eight_concurrent_pulls_against_a_real_registry_make_one_sif() {
    let origin = Registry::start(true);
    origin.push("other", "e2e/other", "1");
    let sifr = Sifr::new();
    let image = format!("{}/e2e/other:1", origin.host());
    // The pull is held until all eight have met at the lock.
    let hold = sifr.dir.path().join("release-the-pull");
    let _release = TouchOnDrop(hold.clone());
    let mut children: Vec<Child> = (0..8)
        .map(|_| {
            sifr.command(&["pull", &image])
                .env("APPTAINER_DOUBLE_HOLD", &hold)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut errs: Vec<Lines> = children
        .iter_mut()
        .map(|c| Lines::of(c.stderr.take().unwrap()))
        .collect();
    wait_until(
        "one apptainer pull, and seven sifr processes waiting for its lock",
        Duration::from_secs(300),
        || {
            let waiting = errs
                .iter_mut()
                .filter_map(|e| e.saw("waiting for another sifr pulling").then_some(()))
                .count();
            let pulls = pulls(&sifr.log).len();
            assert!(pulls <= 1, "{pulls} apptainer pulls of one image at once");
            pulls == 1 && waiting == 7
        },
    );
    std::fs::write(&hold, "").unwrap();

    let mut paths = std::collections::HashSet::new();
    for (mut child, err) in children.into_iter().zip(errs) {
        let status = wait_within(&mut child, Duration::from_secs(300));
        let mut out = String::new();
        child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut out)
            .unwrap();
        assert_eq!(status.code(), Some(0), "{}", err.all().join("\n"));
        paths.insert(out);
    }
    assert_eq!(paths.len(), 1);
    assert_eq!(pulls(&sifr.log).len(), 1, "one apptainer pull");
    let blobs = std::fs::read_dir(sifr.cache().join("blobs/sha256"))
        .unwrap()
        .count();
    assert_eq!(blobs, 1, "one SIF");
    let sif = PathBuf::from(paths.into_iter().next().unwrap().trim());
    assert!(Path::new(&sif).is_file());
}
