//! Tag and digest rules, as admission controllers offer them (Kyverno's
//! `disallow-latest-tag` and `verifyDigest`, Kubewarden's `trusted-repos`).
//!
//! ```toml
//! [[plugin]]
//! name = "site-rules"
//! builtin = "tags"
//! [plugin.settings]
//! deny-latest = true                      # untagged references and `:latest`
//! deny-tags = ["*-dev", "nightly*"]       # tag globs
//! require-digest = ["quay.io/biocontainers/**"]
//! allow = ["docker.io/**", "quay.io/**"]  # if given, nothing else is allowed
//! deny = ["docker.io/library/centos"]
//! prefer = "digest"                       # or "tag"
//! ```
//!
//! Globs match `registry/repository` (or the tag, for `deny-tags`). `*`
//! matches within one path component, `**` across components, `?` one
//! character, `[...]` a class and `{a,b}` either. Every denial names the
//! rule that fired. Rules are checked in this order: `deny`, `allow`,
//! `deny-latest`, `deny-tags`, `require-digest`. Then `prefer` sets the
//! reference of every source when both a tag and a manifest digest are known.

use std::cell::RefCell;

use globset::{Glob, GlobBuilder, GlobSet, GlobSetBuilder};
use serde::Deserialize;
use sifr_plugin::{Context, Decision, Guest, ImageRef, PullRef, Source};

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct Settings {
    #[serde(default)]
    deny_latest: bool,
    #[serde(default)]
    deny_tags: Vec<String>,
    #[serde(default)]
    require_digest: Vec<String>,
    allow: Option<Vec<String>>,
    #[serde(default)]
    deny: Vec<String>,
    prefer: Option<Prefer>,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
enum Prefer {
    Tag,
    Digest,
}

/// A compiled list of globs, with the patterns kept for messages.
struct Globs {
    set: GlobSet,
    patterns: Vec<String>,
}

impl Globs {
    fn new(setting: &str, patterns: &[String]) -> Result<Self, String> {
        let mut builder = GlobSetBuilder::new();
        for pattern in patterns {
            let glob: Glob = GlobBuilder::new(pattern)
                .literal_separator(true)
                .build()
                .map_err(|e| format!("`{setting}`: {pattern:?} is not a valid glob: {e}"))?;
            builder.add(glob);
        }
        let set = builder.build().map_err(|e| format!("`{setting}`: {e}"))?;
        Ok(Self {
            set,
            patterns: patterns.to_vec(),
        })
    }

    /// The first pattern that matches, if any.
    fn matching(&self, candidate: &str) -> Option<&str> {
        self.set
            .matches(candidate)
            .first()
            .map(|&i| self.patterns[i].as_str())
    }
}

struct Rules {
    deny_latest: bool,
    deny_tags: Globs,
    require_digest: Globs,
    allow: Option<Globs>,
    deny: Globs,
    prefer: Option<Prefer>,
}

thread_local! {
    static RULES: RefCell<Option<Rules>> = const { RefCell::new(None) };
}

impl Rules {
    fn from_settings(s: Settings) -> Result<Self, String> {
        Ok(Self {
            deny_latest: s.deny_latest,
            deny_tags: Globs::new("deny-tags", &s.deny_tags)?,
            require_digest: Globs::new("require-digest", &s.require_digest)?,
            allow: s
                .allow
                .as_deref()
                .map(|a| Globs::new("allow", a))
                .transpose()?,
            deny: Globs::new("deny", &s.deny)?,
            prefer: s.prefer,
        })
    }

    /// Why `image` is refused, naming the rule, or `None`.
    fn refusal(&self, image: &ImageRef) -> Option<String> {
        let name = format!("{}/{}", image.registry, image.repository);
        if let Some(pattern) = self.deny.matching(&name) {
            return Some(format!("{name} matches {pattern:?} (rule deny)"));
        }
        if let Some(allow) = &self.allow
            && allow.matching(&name).is_none()
        {
            return Some(format!(
                "{name} is not in the allowed list (rule allow: {})",
                allow.patterns.join(", ")
            ));
        }
        let pinned = image.manifest_digest.is_some();
        if self.deny_latest && !pinned {
            match image.tag.as_deref() {
                None => {
                    return Some(
                        "an untagged reference means :latest, which is not reproducible \
                         (rule deny-latest); pin a tag or a digest"
                            .to_string(),
                    );
                }
                Some("latest") => {
                    return Some(
                        "`:latest` is not reproducible (rule deny-latest); pin a tag or a digest"
                            .to_string(),
                    );
                }
                Some(_) => {}
            }
        }
        if let Some(tag) = &image.tag
            && let Some(pattern) = self.deny_tags.matching(tag)
        {
            return Some(format!("tag {tag:?} matches {pattern:?} (rule deny-tags)"));
        }
        if !pinned && let Some(pattern) = self.require_digest.matching(&name) {
            return Some(format!(
                "{name} matches {pattern:?}, which requires a manifest digest (rule require-digest); \
                 write it as {name}@sha256:<digest>"
            ));
        }
        None
    }
}

struct TagPolicy;

impl Guest for TagPolicy {
    fn configure(settings: String) -> Result<(), String> {
        let settings: Settings =
            serde_json::from_str(&settings).map_err(|e| format!("invalid settings: {e}"))?;
        let rules = Rules::from_settings(settings)?;
        RULES.with(|r| *r.borrow_mut() = Some(rules));
        Ok(())
    }

    fn decide(image: ImageRef, _ctx: Context, plan: Vec<Source>) -> Decision {
        RULES.with(|r| {
            let r = r.borrow();
            let rules = r.as_ref().expect("configure() runs before decide()");
            if let Some(reason) = rules.refusal(&image) {
                return Decision::Deny(reason);
            }
            let reference = match (rules.prefer, &image.tag, &image.manifest_digest) {
                (Some(Prefer::Tag), Some(tag), Some(_)) => Some(PullRef::Tag(tag.clone())),
                (Some(Prefer::Digest), Some(_), Some(digest)) => {
                    Some(PullRef::Digest(digest.clone()))
                }
                _ => None,
            };
            let Some(reference) = reference else {
                return Decision::Plan(plan);
            };
            let why = match reference {
                PullRef::Tag(_) => "by tag (prefer = \"tag\")",
                PullRef::Digest(_) => "by digest (prefer = \"digest\")",
            };
            Decision::Plan(
                plan.into_iter()
                    .map(|s| Source {
                        reference: reference.clone(),
                        note: format!("{}; {why}", s.note),
                        ..s
                    })
                    .collect(),
            )
        })
    }
}

sifr_plugin::export!(TagPolicy with_types_in sifr_plugin);
