//! What a plugin returns, checked before the host uses it.
//!
//! Every source must fit the OCI distribution grammar (see
//! [`crate::reference`]), so nothing a plugin returns can reach apptainer's
//! argv as a flag, or carry whitespace or shell metacharacters. Sizes are
//! capped so that a plugin cannot flood the terminal or the cache index.

use super::wit::{RawDecision, RawPullRef, RawSource};
use super::{PullRef, Source};
use crate::reference::ImageRef;
use crate::reference::{
    ManifestDigest, canonical_registry, reads_as_host, validate_registry, validate_repository,
    validate_tag,
};
use crate::untrusted;

/// Most sources a plan may have.
pub const MAX_SOURCES: usize = 32;
/// Longest note, in bytes.
pub const MAX_NOTE: usize = 512;
/// Longest denial reason, in bytes.
pub const MAX_REASON: usize = 2048;

/// A plugin's decision, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Decision {
    Plan(Vec<Source>),
    Deny(String),
}

/// `decision`, checked: for `image`, which a plan must honour.
pub(crate) fn decision(decision: RawDecision, image: &ImageRef) -> Result<Decision, String> {
    match decision {
        RawDecision::Deny(reason) => {
            if reason.len() > MAX_REASON {
                return Err(format!(
                    "a denial reason of {} bytes (at most {MAX_REASON})",
                    reason.len()
                ));
            }
            if reason.trim().is_empty() {
                return Err("a denial with no reason; say why the image is refused".to_string());
            }
            Ok(Decision::Deny(untrusted::escape(&reason, MAX_REASON)))
        }
        RawDecision::Plan(sources) => {
            if sources.is_empty() {
                return Err("an empty plan; deny the image instead, with a reason".to_string());
            }
            if sources.len() > MAX_SOURCES {
                return Err(format!(
                    "a plan of {} sources (at most {MAX_SOURCES})",
                    sources.len()
                ));
            }
            let sources: Vec<Source> = sources
                .into_iter()
                .enumerate()
                .map(|(i, s)| source(s).map_err(|e| format!("source #{}: {e}", i + 1)))
                .collect::<Result<_, _>>()?;
            honours_pin(&sources, image)?;
            Ok(Decision::Plan(sources))
        }
    }
}

/// A user who pinned a manifest digest gets that image, from wherever it is
/// pulled: every source must pull exactly that digest. A tag could point
/// anywhere by now, and the cache would record it under the pin.
fn honours_pin(sources: &[Source], image: &ImageRef) -> Result<(), String> {
    let Some(pin) = &image.manifest_digest else {
        return Ok(());
    };
    for (i, s) in sources.iter().enumerate() {
        if !matches!(&s.reference, PullRef::Digest(d) if d == pin) {
            return Err(format!(
                "source #{} ({}) does not pull the pinned digest {pin}; a pinned image is \
                 pulled by its digest at every source",
                i + 1,
                s.uri()
            ));
        }
    }
    Ok(())
}

fn source(s: RawSource) -> Result<Source, String> {
    validate_registry(&s.registry).map_err(|e| e.to_string())?;
    validate_repository(&s.repository)
        .map_err(|e| format!("repository {:?}: {e}", s.repository))?;
    if s.registry.len() + 1 + s.repository.len() > 255 {
        return Err("the name is longer than 255 characters".to_string());
    }
    let reference = match s.reference {
        RawPullRef::Tag(tag) => {
            validate_tag(&tag).map_err(|e| e.to_string())?;
            PullRef::Tag(tag)
        }
        RawPullRef::Digest(digest) => {
            PullRef::Digest(ManifestDigest::parse(&digest).map_err(|e| e.to_string())?)
        }
    };
    if s.note.len() > MAX_NOTE {
        return Err(format!(
            "a note of {} bytes (at most {MAX_NOTE})",
            s.note.len()
        ));
    }
    // Hosts are compared as hosts by every later plugin and the cache.
    let registry = canonical_registry(&s.registry);
    if !reads_as_host(&registry) {
        return Err(format!(
            "registry {registry:?} has no '.' or ':' and is not localhost, so \
             docker://{registry}/{} would be pulled from Docker Hub; give the host with its \
             domain or port",
            s.repository
        ));
    }
    Ok(Source {
        registry,
        repository: s.repository,
        reference,
        plain_http: s.plain_http,
        note: untrusted::escape(&s.note, MAX_NOTE),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decision_for_test(d: RawDecision) -> Result<Decision, String> {
        decision(d, &ImageRef::parse("ubuntu:22.04").unwrap())
    }

    #[test]
    fn a_pinned_image_is_pulled_by_its_digest_at_every_source() {
        let pin = format!("sha256:{}", "ab".repeat(32));
        let other = format!("sha256:{}", "cd".repeat(32));
        let image = ImageRef::parse(&format!("ubuntu:22.04@{pin}")).unwrap();
        let plan = |refs: Vec<RawPullRef>| {
            RawDecision::Plan(
                refs.into_iter()
                    .map(|r| wit_source("mirror.example", "library/ubuntu", r))
                    .collect(),
            )
        };
        let by_pin = || RawPullRef::Digest(pin.clone());
        assert!(decision(plan(vec![by_pin(), by_pin()]), &image).is_ok());
        for bad in [
            vec![by_pin(), RawPullRef::Tag("22.04".into())],
            vec![RawPullRef::Digest(other.clone())],
        ] {
            let err = decision(plan(bad), &image).unwrap_err();
            assert!(err.contains("does not pull the pinned digest"), "{err}");
        }
    }

    #[test]
    fn a_registry_that_would_read_as_a_docker_hub_namespace_is_refused() {
        for registry in ["MYREG", "myreg", "A"] {
            let plan = RawDecision::Plan(vec![wit_source(
                registry,
                "foo",
                RawPullRef::Tag("1".into()),
            )]);
            let err = decision_for_test(plan).unwrap_err();
            assert!(
                err.contains("would be pulled from Docker Hub"),
                "{registry}: {err}"
            );
        }
        for registry in ["localhost", "LOCALHOST:5000", "docker.io", "a.b", "[::1]"] {
            let plan = RawDecision::Plan(vec![wit_source(
                registry,
                "foo",
                RawPullRef::Tag("1".into()),
            )]);
            assert!(decision_for_test(plan).is_ok(), "{registry}");
        }
    }

    #[test]
    fn registries_come_out_canonical() {
        let plan = RawDecision::Plan(vec![wit_source(
            "MIRROR.Example:443",
            "a",
            RawPullRef::Tag("1".into()),
        )]);
        let Ok(Decision::Plan(sources)) = decision_for_test(plan) else {
            panic!("refused");
        };
        assert_eq!(sources[0].registry, "mirror.example");
    }

    fn wit_source(registry: &str, repository: &str, reference: RawPullRef) -> RawSource {
        RawSource {
            registry: registry.into(),
            repository: repository.into(),
            reference,
            plain_http: false,
            note: String::new(),
        }
    }

    #[test]
    fn nothing_that_looks_like_a_flag_or_shell_gets_through() {
        let tag = |t: &str| RawPullRef::Tag(t.into());
        let bad = [
            wit_source("--bind=/:/x", "a", tag("1")),
            wit_source("-v", "a", tag("1")),
            wit_source("reg.io", "a b", tag("1")),
            wit_source("reg.io", "a;reboot", tag("1")),
            wit_source("reg.io", "$(id)", tag("1")),
            wit_source("reg.io", "a", tag("1 --bind /:/x")),
            wit_source("reg.io", "a", tag("`id`")),
            wit_source("reg.io", "a", tag("-x")),
            wit_source("reg.io", "a", RawPullRef::Digest("sha256:ABC".into())),
            wit_source("reg.io", "a", RawPullRef::Digest("--force".into())),
            wit_source("reg io", "a", tag("1")),
            wit_source("reg.io\n", "a", tag("1")),
        ];
        for s in bad {
            let shown = format!("{s:?}");
            assert!(
                decision_for_test(RawDecision::Plan(vec![s])).is_err(),
                "{shown}"
            );
        }
        let good = wit_source(
            "mirror.example:5000",
            "dockerhub/library/ubuntu",
            tag("22.04"),
        );
        assert!(decision_for_test(RawDecision::Plan(vec![good])).is_ok());
    }

    #[test]
    fn sizes_are_capped() {
        let ok = || wit_source("reg.io", "a", RawPullRef::Tag("1".into()));
        let many = (0..=MAX_SOURCES).map(|_| ok()).collect();
        assert!(
            decision_for_test(RawDecision::Plan(many))
                .unwrap_err()
                .contains("sources")
        );
        let mut long_note = ok();
        long_note.note = "x".repeat(MAX_NOTE + 1);
        assert!(
            decision_for_test(RawDecision::Plan(vec![long_note]))
                .unwrap_err()
                .contains("note")
        );
        let reason = "x".repeat(MAX_REASON + 1);
        assert!(
            decision_for_test(RawDecision::Deny(reason))
                .unwrap_err()
                .contains("reason")
        );
        assert!(
            decision_for_test(RawDecision::Plan(vec![]))
                .unwrap_err()
                .contains("empty plan")
        );
    }
}
