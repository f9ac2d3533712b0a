//! The built-in `tags` plugin: each rule denies or prefers as documented,
//! and every denial names the rule that fired.

use crate::common;

use common::Scratch;
use sifr::policy::CompileCache;
use sifr::{Config, ConfigSources, Context, ImageRef, Outcome, Policy, PolicyOptions, Purpose};

/// One compiled-plugin cache for the whole file, so the tags component is
/// compiled once rather than for every case.
fn options() -> PolicyOptions {
    PolicyOptions {
        compile_cache: Some(CompileCache::new(
            crate::common::process_dir("tags").join("plugins"),
        )),
        ..Default::default()
    }
}

const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn policy(settings: &str) -> Result<Policy, sifr::Error> {
    let scratch = Scratch::new();
    let path = scratch.write(
        "c.toml",
        &format!(
            "[[plugin]]\nname = \"rules\"\nbuiltin = \"tags\"\n[plugin.settings]\n{settings}\n\
             [[plugin]]\nname = \"default\"\nbuiltin = \"default\"\n"
        ),
    );
    Ok(Policy::load(
        &Config::load(&ConfigSources::only(path))?,
        &options(),
    )?)
}

/// `Ok(uris)` or `Err(denial reason)`.
fn decide(policy: &Policy, image: &str) -> Result<Vec<String>, String> {
    let image = ImageRef::parse(image).unwrap();
    match policy.resolve(&image, &Context::new(Purpose::Pull)).outcome {
        Outcome::Plan(sources) => Ok(sources.iter().map(|s| s.uri()).collect()),
        Outcome::Deny { reason, .. } => Err(reason),
        Outcome::Failed(f) => panic!("{f}"),
    }
}

#[test]
fn rules_deny_with_the_rule_named() {
    let cases: &[(&str, &str, Option<&str>)] = &[
        // (settings, image, Some(rule) when denied)
        ("deny-latest = true", "ubuntu", Some("rule deny-latest")),
        (
            "deny-latest = true",
            "ubuntu:latest",
            Some("rule deny-latest"),
        ),
        ("deny-latest = true", "ubuntu:22.04", None),
        ("deny-latest = true", &*format!("ubuntu:latest@{D}"), None),
        (
            "deny-tags = [\"*-dev\", \"nightly*\"]",
            "a/b:1.0-dev",
            Some("matches \"*-dev\" (rule deny-tags)"),
        ),
        (
            "deny-tags = [\"*-dev\", \"nightly*\"]",
            "a/b:nightly-2024",
            Some("rule deny-tags"),
        ),
        ("deny-tags = [\"*-dev\", \"nightly*\"]", "a/b:1.0", None),
        (
            "require-digest = [\"quay.io/**\"]",
            "quay.io/biocontainers/blast:2.15.0",
            Some("rule require-digest"),
        ),
        (
            "require-digest = [\"quay.io/**\"]",
            &*format!("quay.io/biocontainers/blast@{D}"),
            None,
        ),
        (
            "require-digest = [\"quay.io/*\"]",
            "quay.io/biocontainers/blast:2.15.0",
            None,
        ),
        (
            "require-digest = [\"quay.io/*\"]",
            "quay.io/blast:2.15.0",
            Some("rule require-digest"),
        ),
        (
            "allow = [\"docker.io/**\"]",
            "quay.io/a/b:1",
            Some("rule allow"),
        ),
        ("allow = [\"docker.io/**\"]", "ubuntu:22.04", None),
        (
            "deny = [\"docker.io/library/centos\"]",
            "centos:7",
            Some("(rule deny)"),
        ),
        (
            "deny = [\"docker.io/library/centos\"]",
            "rockylinux:9",
            None,
        ),
        (
            "deny = [\"*.evil.io/**\"]",
            "x.evil.io/a/b:1",
            Some("(rule deny)"),
        ),
    ];
    for (settings, image, rule) in cases {
        let policy = policy(settings).unwrap();
        match (decide(&policy, image), rule) {
            (Ok(_), None) => {}
            (Err(reason), Some(rule)) => {
                assert!(reason.contains(rule), "{settings} {image}: {reason}")
            }
            (got, want) => panic!("{settings} {image}: got {got:?}, want {want:?}"),
        }
    }
}

#[test]
fn prefer_digest_pins_every_source_and_prefer_tag_is_refused() {
    let image = format!("ubuntu:22.04@{D}");
    let digest_first = policy("prefer = \"digest\"").unwrap();
    assert_eq!(
        decide(&digest_first, &image).unwrap(),
        [format!("docker://ubuntu@{D}")]
    );
    // With only a tag there is nothing to prefer.
    assert_eq!(
        decide(&digest_first, "ubuntu:22.04").unwrap(),
        ["docker://ubuntu:22.04"]
    );
    // A tag pull of a pinned image would pull whatever the tag points at now,
    // and cache it under the pin.
    let err = policy("prefer = \"tag\"").unwrap_err().to_string();
    assert!(
        err.contains("`prefer = \"tag\"` is not supported: a pinned image is always pulled by its manifest digest"),
        "{err}"
    );
}

#[test]
fn names_match_as_hosts_do_whatever_their_case() {
    let rules = policy("deny = [\"EVIL.example.com/**\", \"quay.io/bad/**\"]").unwrap();
    for image in [
        "evil.example.com/x:1",
        "EVIL.example.com/x:1",
        "evil.example.com:443/x:1",
        "QUAY.IO/bad/x:1",
    ] {
        let reason = decide(&rules, image).unwrap_err();
        assert!(reason.contains("(rule deny)"), "{image}: {reason}");
    }
    assert!(decide(&rules, "quay.io/good/x:1").is_ok());
    let allow = policy("allow = [\"quay.io/**\"]").unwrap();
    assert!(decide(&allow, "Quay.IO/biocontainers/blast:2.15.0").is_ok());
}

#[test]
fn deny_and_allow_judge_every_source_of_the_plan() {
    // A user's rewrite runs first; the site's rules run after it.
    let scratch = Scratch::new();
    let path = scratch.write(
        "c.toml",
        "[[plugin]]\nname = \"rewrite\"\nbuiltin = \"mirror\"\n[plugin.settings]\n\
         registries = [\"quay.io\"]\n[[plugin.settings.mirrors]]\n\
         registry = \"evil.example.com\"\n\
         [[plugin]]\nname = \"rules\"\nbuiltin = \"tags\"\n[plugin.settings]\n\
         allow = [\"quay.io/**\", \"docker.io/**\"]\ndeny = [\"evil.example.com/**\"]\n",
    );
    let policy = Policy::load(
        &Config::load(&ConfigSources::only(path)).unwrap(),
        &options(),
    )
    .unwrap();
    let reason = decide(&policy, "quay.io/biocontainers/blast:2.15.0").unwrap_err();
    assert_eq!(
        reason,
        "quay.io/biocontainers/blast would be pulled from source #1 \
         evil.example.com/biocontainers/blast matches \"evil.example.com/**\" (rule deny)"
    );
    // Images the rewrite does not touch are planned as before.
    assert_eq!(
        decide(&policy, "ubuntu:22.04").unwrap(),
        ["docker://ubuntu:22.04"]
    );
}

#[test]
fn bad_settings_are_refused_with_the_setting_named() {
    for (settings, expect) in [
        (
            "deny-tags = [\"[oops\"]",
            "`deny-tags`: \"[oops\" is not a valid glob",
        ),
        ("prefer = \"newest\"", "unknown variant `newest`"),
        ("deny-latst = true", "unknown field `deny-latst`"),
    ] {
        let err = policy(settings).unwrap_err().to_string();
        assert!(err.contains(expect), "{settings}: {err}");
    }
}
