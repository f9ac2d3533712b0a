//! `sifr lock`, and `--locked`/`--frozen` on `pull`, `run` and `exec`.
//!
//! The end-to-end tests lock images in a real registry (see `e2e.rs` for
//! what they need), move the tag, and check what the apptainer double was
//! asked to pull. The others need no registry: a lock file written by hand
//! is refused, or lacks the image, before anything is pulled.

use std::path::{Path, PathBuf};
use std::process::Output;

use sifr::lock::LockFile;

use crate::common::{
    RefusedPort, apptainer_double, pulls, sandbox_config, sifr_command, stderr, stdout,
};
use crate::e2e::{Registry, Sifr, fixtures, mirror_config};

/// `sifr` in the scratch directory of `sifr` (where `sifr.lock` is
/// written), trusting the test registries' certificate: the host's
/// registry client reads `SSL_CERT_FILE` through the platform verifier.
fn tls(sifr: &Sifr, args: &[&str]) -> Output {
    sifr.command(args)
        .current_dir(sifr.dir.path())
        .env("SSL_CERT_FILE", &fixtures().certs.cert)
        .output()
        .unwrap()
}

fn lock_file(sifr: &Sifr) -> PathBuf {
    sifr.dir.path().join("sifr.lock")
}

fn arch() -> &'static str {
    sifr::policy::host_arch()
}

/// [`mirror_config`] for an origin that is not a running registry (a
/// [`RefusedPort`]'s host).
fn mirror_config_for(origin: &str, mirror: &str) -> String {
    format!(
        "[[plugin]]\nname = \"site-mirror\"\nbuiltin = \"mirror\"\n[plugin.settings]\n\
         registries = [\"{origin}\"]\n[[plugin.settings.mirrors]]\nregistry = \"{mirror}\"\nplain-http = true\n\
         [[plugin]]\nname = \"default\"\nbuiltin = \"default\"\n"
    )
}

#[test]
#[cfg_attr(
    not(sifr_e2e),
    ignore = "end-to-end: install docker-registry skopeo umoci squashfs-tools siftool bubblewrap busybox-static, or set SIFR_E2E=1"
)]
fn locked_runs_the_locked_image_after_the_tag_moves_and_check_sees_the_drift() {
    let origin = Registry::start(true);
    origin.push("1", "e2e/busybox", "1");
    let first = origin.digest("e2e/busybox", "1");
    let image = format!("{}/e2e/busybox:1", origin.host());
    let sifr = Sifr::new();

    let out = tls(&sifr, &["lock", &image]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        format!("{image} ({}): locked {first}\n", arch())
    );
    let text = std::fs::read_to_string(lock_file(&sifr)).unwrap();
    assert!(text.starts_with("# written by `sifr lock`"), "{text}");
    let lock = LockFile::load(&lock_file(&sifr)).unwrap();
    let entry = &lock.images[0];
    assert_eq!(entry.reference, image);
    assert_eq!(entry.canonical, image);
    assert_eq!(entry.arch, arch());
    assert_eq!(entry.manifest_digest.as_str(), first);
    assert_eq!(entry.index_digest, None, "a single-arch manifest");
    assert_eq!(entry.resolved_at, origin.host(), "the origin answered");
    assert_eq!(entry.policy.len(), 1);
    assert_eq!(entry.policy[0].name, "default");
    assert_eq!(entry.policy[0].sha256.as_hex().len(), 64);
    assert!(entry.local.is_none(), "nothing is cached yet");
    assert!(pulls(&sifr.log).is_empty(), "locking pulls nothing");

    let out = tls(&sifr, &["lock", "--check"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out), format!("{image} ({}): ok\n", arch()));

    // The tag moves.
    origin.push("2", "e2e/busybox", "1");
    let second = origin.digest("e2e/busybox", "1");
    assert_ne!(first, second);

    // --locked still runs the first image, pulled by its digest.
    let lock_path = lock_file(&sifr);
    let lock_arg = lock_path.to_str().unwrap();
    let out = tls(
        &sifr,
        &["exec", "--locked", lock_arg, &image, "--", "cat", "/IMAGE"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out), "busybox 1\n", "the locked image ran");
    let pulled = pulls(&sifr.log);
    assert_eq!(pulled.len(), 1);
    assert_eq!(
        pulled[0].last().unwrap(),
        &format!("docker://{}/e2e/busybox@{first}", origin.host())
    );
    assert!(origin.requests(&format!("/v2/e2e/busybox/manifests/{first}")) > 0);
    // Without --locked, the tag's new image.
    let out = tls(&sifr, &["exec", &image, "--", "cat", "/IMAGE"]);
    assert_eq!(stdout(&out), "busybox 2\n", "{}", stderr(&out));

    // --check sees the drift, names both digests, and changes nothing.
    let before = std::fs::read_to_string(&lock_path).unwrap();
    let out = tls(&sifr, &["lock", "--check"]);
    assert_eq!(out.status.code(), Some(10), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        format!(
            "{image} ({}): drift: tag 1 of {}/e2e/busybox now names {second} (locked {first})\n",
            arch(),
            origin.host()
        )
    );
    assert_eq!(std::fs::read_to_string(&lock_path).unwrap(), before);

    // Locking again takes the new digest; then there is no drift.
    let out = tls(&sifr, &["lock"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        format!("{image} ({}): updated {second}\n", arch())
    );
    let entry = LockFile::load(&lock_path).unwrap().images.remove(0);
    assert_eq!(entry.manifest_digest.as_str(), second);
    // Pulled by the tag above, not by the digest: not what the lock pulls.
    assert!(entry.local.is_none());
    let out = tls(&sifr, &["lock", "--check"]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));

    // Pulled by the locked digest, the SIF file is recorded as local.
    let out = tls(&sifr, &["pull", "--locked", lock_arg, &image]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let out = tls(&sifr, &["lock", &image]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let entry = LockFile::load(&lock_path).unwrap().images.remove(0);
    let cached = sifr
        .entries()
        .into_iter()
        .find(|e| e["manifest-digest"] == second.as_str())
        .expect("the locked image is cached");
    assert_eq!(
        entry.local.expect("recorded").sif_sha256.as_str(),
        cached["sif-digest"]
    );
    let text = std::fs::read_to_string(&lock_path).unwrap();
    assert!(
        text.contains("[image.local]\n# This machine's SIF file: local integrity only"),
        "{text}"
    );
}

#[test]
#[cfg_attr(
    not(sifr_e2e),
    ignore = "end-to-end: install docker-registry skopeo umoci squashfs-tools siftool bubblewrap busybox-static, or set SIFR_E2E=1"
)]
fn frozen_refuses_a_changed_chain_and_json_has_the_documented_keys() {
    let origin = Registry::start(true);
    origin.push("1", "e2e/busybox", "1");
    origin.push("other", "e2e/other", "1");
    let digest = origin.digest("e2e/busybox", "1");
    let image = format!("{}/e2e/busybox:1", origin.host());
    let other = format!("{}/e2e/other:1", origin.host());
    let sifr = Sifr::new();

    let out = tls(&sifr, &["lock", "--json", &image, &other]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let reports = json.as_array().unwrap();
    assert_eq!(reports.len(), 2);
    let report = &reports[0];
    assert_eq!(report["schema"], 1);
    assert_eq!(report["input"], image);
    assert_eq!(report["arch"], arch());
    assert_eq!(report["outcome"], "locked");
    let entry = &report["entry"];
    for key in [
        "reference",
        "canonical",
        "arch",
        "manifest-digest",
        "resolved-at",
        "policy",
    ] {
        assert!(entry.get(key).is_some(), "{key} in {entry}");
    }
    assert_eq!(entry["manifest-digest"], digest);
    assert_eq!(entry["policy"][0]["name"], "default");

    // Another chain: --frozen refuses, before anything is pulled. The
    // mirror is down (refused for the whole test; a fixed port such as 9
    // may be some service's, or another test's server).
    let down = RefusedPort::new();
    let config = sifr.config(&mirror_config(&origin, &down.host()));
    let config = config.to_str().unwrap();
    let lock = lock_file(&sifr);
    let lock = lock.to_str().unwrap();
    let out = tls(
        &sifr,
        &[
            "--config", config, "pull", "--locked", lock, "--frozen", &image,
        ],
    );
    assert_eq!(out.status.code(), Some(10), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains(&format!("{lock} is out of date for {image}"))
            && err.contains("the policy chain is now site-mirror (")
            && err.contains("or drop --frozen"),
        "{err}"
    );
    assert!(pulls(&sifr.log).is_empty(), "nothing was pulled");
    // --locked alone goes on: the plugins decide where from, and every
    // source pulls the locked digest.
    let out = tls(
        &sifr,
        &["--config", config, "pull", "--locked", lock, &image],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    for argv in pulls(&sifr.log) {
        assert!(
            argv.last().unwrap().ends_with(&format!("@{digest}")),
            "{argv:?}"
        );
    }
    // --check --json with the changed chain: drift, with its kind.
    let out = tls(
        &sifr,
        &["--config", config, "lock", "--check", "--json", &image],
    );
    assert_eq!(out.status.code(), Some(10), "{}", stderr(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json[0]["outcome"], "drift");
    assert_eq!(json[0]["drift"][0]["kind"], "policy-changed");
    assert!(
        json[0]["drift"][0]["message"]
            .as_str()
            .unwrap()
            .contains("site-mirror")
    );

    // The same chain: --frozen pulls.
    let out = tls(
        &sifr,
        &[
            "run", "--locked", lock, "--frozen", &other, "--", "cat", "/IMAGE",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out), "other image\n");
    // --frozen needs --locked.
    let out = tls(&sifr, &["pull", "--frozen", &image]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}

#[test]
#[cfg_attr(
    not(sifr_e2e),
    ignore = "end-to-end: install docker-registry skopeo umoci squashfs-tools siftool bubblewrap busybox-static, or set SIFR_E2E=1"
)]
fn the_digest_is_resolved_at_the_origin_or_the_first_reachable_source() {
    // The origin is down: the plain-HTTP mirror of the plan answers. Down
    // for the whole test: a port that refuses, not one a stopped registry
    // let go (another test's server may be given it).
    let origin = RefusedPort::new();
    let mirror = Registry::start(false);
    mirror.push("1", "e2e/busybox", "1");
    let sifr = Sifr::new();
    let config = sifr.config(&mirror_config_for(&origin.host(), &mirror.host()));
    let image = format!("{}/e2e/busybox:1", origin.host());
    let out = tls(
        &sifr,
        &["--config", config.to_str().unwrap(), "lock", &image],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let entry = LockFile::load(&lock_file(&sifr)).unwrap().images.remove(0);
    assert_eq!(entry.resolved_at, mirror.host());
    assert_eq!(
        entry.manifest_digest.as_str(),
        mirror.digest("e2e/busybox", "1")
    );
    let names: Vec<_> = entry.policy.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["site-mirror", "default"]);
    assert!(pulls(&sifr.log).is_empty(), "locking pulls nothing");

    // No source answers: the error lists each one, and the lock file
    // keeps what it had.
    let other = format!("{}/e2e/missing:1", origin.host());
    let out = tls(
        &sifr,
        &["--config", config.to_str().unwrap(), "lock", &other],
    );
    assert_eq!(out.status.code(), Some(8), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "cannot lock {other}: no registry said which digest it names"
        )) && err.contains(&format!("1. {}/e2e/missing:1: ", origin.host()))
            && err.contains(&format!("2. {}/e2e/missing:1: ", mirror.host())),
        "{err}"
    );
    assert_eq!(LockFile::load(&lock_file(&sifr)).unwrap().images, [entry]);
}

#[test]
#[cfg_attr(
    not(sifr_e2e),
    ignore = "end-to-end: install docker-registry skopeo umoci squashfs-tools siftool bubblewrap busybox-static, or set SIFR_E2E=1"
)]
fn a_policy_that_pins_the_tag_decides_the_locked_digest_and_check_asks_again() {
    let origin = Registry::start(true);
    origin.push("1", "e2e/busybox", "1");
    let first = origin.digest("e2e/busybox", "1");
    let sifr = Sifr::new();
    // A long digest TTL: `sifr lock` and `--check` ask the registry anyway.
    let config = sifr.config(
        "[registry]\ndigest-ttl = \"1h\"\n\
         [[plugin]]\nname = \"pins\"\nbuiltin = \"tags\"\ncapabilities = [\"resolve-digest\"]\n\
         [plugin.settings]\npin = \"resolve\"\n\
         [[plugin]]\nname = \"default\"\nbuiltin = \"default\"\n",
    );
    let config = config.to_str().unwrap();
    let image = format!("{}/e2e/busybox:1", origin.host());
    let out = tls(&sifr, &["--config", config, "lock", &image]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let entry = LockFile::load(&lock_file(&sifr)).unwrap().images.remove(0);
    assert_eq!(entry.manifest_digest.as_str(), first);
    assert_eq!(entry.resolved_at, origin.host(), "from the host's look-up");
    // Resolving through the same chain fills the digest cache (1h TTL).
    let out = tls(&sifr, &["--config", config, "resolve", &image]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));

    origin.push("2", "e2e/busybox", "1");
    let second = origin.digest("e2e/busybox", "1");
    let out = tls(&sifr, &["--config", config, "lock", "--check"]);
    assert_eq!(out.status.code(), Some(10), "{}", stdout(&out));
    assert!(
        stdout(&out).contains(&format!("now names {second} (locked {first})")),
        "{}",
        stdout(&out)
    );
    let out = tls(&sifr, &["--config", config, "lock"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let entry = LockFile::load(&lock_file(&sifr)).unwrap().images.remove(0);
    assert_eq!(
        entry.manifest_digest.as_str(),
        second,
        "not the cached answer"
    );
}

/// sifr with a scratch cache, no config or environment of the user's
/// ([`sifr_command`]: no `SIFR_LOCKED` or `SIFR_FROZEN` of the caller's),
/// and the apptainer double (which logs any pull), run in `dir`: no
/// registry needed.
fn offline(dir: &Path, args: &[&str]) -> Output {
    sifr_command(dir)
        .args(args)
        .current_dir(dir)
        .env("SIFR_CACHE_DIR", dir.join("cache"))
        .env("SIFR_APPTAINER", apptainer_double())
        .env("APPTAINER_DOUBLE_LOG", dir.join("apptainer.log"))
        .env("SIFR_CONFIG", sandbox_config())
        .output()
        .unwrap()
}

/// A lock file for `reference`, written as `sifr lock` would (the chain's
/// digest made up: only `--frozen` compares it).
fn write_lock(dir: &Path, reference: &str) -> PathBuf {
    let image = sifr::ImageRef::parse(reference).unwrap();
    let text = format!(
        "version = 1\n\n[[image]]\nreference = \"{reference}\"\ncanonical = \"{image}\"\n\
         arch = \"{}\"\nmanifest-digest = \"sha256:{}\"\nresolved-at = \"{}\"\n\
         policy = [{{ name = \"default\", sha256 = \"{}\" }}]\n",
        arch(),
        "a".repeat(64),
        image.registry,
        "b".repeat(64)
    );
    let path = dir.join("sifr.lock");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn an_image_not_in_the_lock_is_refused_and_nothing_is_pulled() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    write_lock(dir, "registry.example.org/team/tool:1.0");
    for command in [
        vec![
            "pull",
            "--locked",
            "sifr.lock",
            "registry.example.org/team/other:2.0",
        ],
        // All or nothing: the locked one is not pulled either.
        vec![
            "pull",
            "--locked",
            "sifr.lock",
            "registry.example.org/team/tool:1.0",
            "registry.example.org/team/other:2.0",
        ],
        vec![
            "run",
            "--locked",
            "sifr.lock",
            "registry.example.org/team/other:2.0",
        ],
        vec![
            "exec",
            "--locked",
            "sifr.lock",
            "registry.example.org/team/other:2.0",
            "--",
            "true",
        ],
    ] {
        let out = offline(dir, &command);
        assert_eq!(out.status.code(), Some(11), "{command:?}: {}", stderr(&out));
        let err = stderr(&out);
        assert!(
            err.contains(&format!(
                "registry.example.org/team/other:2.0 is not in sifr.lock (locked for: \
                 registry.example.org/team/tool:1.0 ({})); add it with \
                 `sifr lock registry.example.org/team/other:2.0`",
                arch()
            )),
            "{command:?}: {err}"
        );
        assert!(stdout(&out).is_empty(), "{command:?}");
        assert!(
            pulls(&dir.join("apptainer.log")).is_empty(),
            "{command:?}: nothing was pulled"
        );
    }
    // Another architecture's entry is not this machine's.
    std::fs::write(
        dir.join("sifr.lock"),
        std::fs::read_to_string(dir.join("sifr.lock"))
            .unwrap()
            .replace(&format!("arch = \"{}\"", arch()), "arch = \"s390x-test\""),
    )
    .unwrap();
    let out = offline(
        dir,
        &[
            "pull",
            "--locked",
            "sifr.lock",
            "registry.example.org/team/tool:1.0",
        ],
    );
    assert_eq!(out.status.code(), Some(11));
    assert!(
        stderr(&out).contains(&format!(
            "is not in sifr.lock for {} (it is locked for s390x-test)",
            arch()
        )),
        "{}",
        stderr(&out)
    );
    // --json: the failure, as a pull report.
    let out = offline(
        dir,
        &[
            "pull",
            "--json",
            "--locked",
            "sifr.lock",
            "registry.example.org/team/tool:1.0",
        ],
    );
    assert_eq!(out.status.code(), Some(11));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        json[0]["error"]
            .as_str()
            .unwrap()
            .contains("is not in sifr.lock")
    );
}

#[test]
fn a_malformed_or_newer_lock_file_is_refused_with_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let reference = "registry.example.org/team/tool:1.0";
    let good = std::fs::read_to_string(write_lock(dir, reference)).unwrap();
    let cases = [
        ("version = 1\n[[image]\n".to_string(), "line 2"),
        (
            good.replace("version = 1", "version = 2"),
            "line 1: version 2 is not one this sifr reads",
        ),
        (
            good.replace(&format!("sha256:{}", "a".repeat(64)), "sha256:abc"),
            "line 7",
        ),
        (format!("{good}colour = \"red\"\n"), "colour"),
        (
            format!("{good}{}", &good[good.find("[[image]]").unwrap()..]),
            "is locked twice",
        ),
        // Not a lock file: refused unread past the cap.
        (
            format!("{good}# {}\n", "x".repeat(17 << 20)),
            "larger than 16 MiB",
        ),
    ];
    for (text, what) in cases {
        std::fs::write(dir.join("sifr.lock"), &text).unwrap();
        for command in [
            vec!["pull", "--locked", "sifr.lock", reference],
            vec!["lock", "--check"],
            vec!["lock", reference],
        ] {
            let out = offline(dir, &command);
            assert_eq!(out.status.code(), Some(11), "{command:?}: {}", stderr(&out));
            let err = stderr(&out);
            assert!(
                err.starts_with("sifr: error: sifr.lock is not a valid lock file: ")
                    && err.contains(what),
                "{command:?} on {text}: {err}"
            );
        }
        assert_eq!(
            std::fs::read_to_string(dir.join("sifr.lock")).unwrap(),
            text,
            "a lock file sifr cannot read is left alone"
        );
    }
    assert!(pulls(&dir.join("apptainer.log")).is_empty());

    // None at all.
    std::fs::remove_file(dir.join("sifr.lock")).unwrap();
    let out = offline(dir, &["run", "--locked", "sifr.lock", reference]);
    assert_eq!(out.status.code(), Some(11));
    assert!(
        stderr(&out).contains("cannot read the lock file sifr.lock: ")
            && stderr(&out).contains("write it with `sifr lock IMAGE...`"),
        "{}",
        stderr(&out)
    );
    let out = offline(dir, &["lock", "--check"]);
    assert_eq!(out.status.code(), Some(11), "{}", stderr(&out));
    let out = offline(dir, &["lock"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("nothing to lock: there is no sifr.lock yet"),
        "{}",
        stderr(&out)
    );
}
