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
//! pin = "resolve"                         # tags -> digests (capability)
//! ```
//!
//! Globs match `registry/repository` (or the tag, for `deny-tags`). `*`
//! matches within one path component, `**` across components, `?` one
//! character, `[...]` a class and `{a,b}` either. Names match without
//! regard to case, as hosts do (repositories are lowercase anyway); tags
//! match exactly. Every denial names the rule that fired. Rules are checked
//! in this order: `deny`, `allow`, `deny-latest`, `deny-tags`,
//! `require-digest`.
//!
//! `deny` and `allow` judge the whole plan, not just the image asked for:
//! every source the previous plugins planned (mirrors, rewrites) must pass
//! them too, so a user's rewrite of `quay.io/x` to a denied host is caught
//! by a site-locked rule that runs after it.
//!
//! `prefer = "digest"` pulls every source by the manifest digest when the
//! reference has one. `prefer = "tag"` is refused: a pinned image is always
//! pulled by its digest (sifr checks every plan for it), since a tag may
//! point elsewhere by now.
//!
//! `pin = "resolve"` turns a tag into the manifest digest it names now, as
//! Kyverno's `mutateDigest` does, and pulls every source by it. It needs
//! the host capability: `capabilities = ["resolve-digest"]` in this
//! plugin's config entry (sifr asks the registry; the plugin has no
//! network). The digest is asked of the origin (the image's own registry)
//! first, where the tag is defined; when the origin cannot answer, of the
//! plan's sources in order (mirrors), the first that answers. Each failure
//! is logged. When no source answers, the image is refused: a pull by a tag
//! that could not be pinned is what the setting exists to prevent. A
//! reference that already has a digest is left as it is. `require-digest`
//! is judged after the pin, so a resolved tag satisfies it.

use std::cell::RefCell;

use globset::{Glob, GlobBuilder, GlobSet, GlobSetBuilder};
use serde::Deserialize;
use sifr_plugin::{Context, Decision, Guest, ImageRef, PullRef, Source, resolve_digest};

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
    pin: Option<Pin>,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
enum Prefer {
    Tag,
    Digest,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
enum Pin {
    /// Resolve a tag to its manifest digest through the host.
    Resolve,
}

/// A compiled list of globs, with the patterns kept for messages.
struct Globs {
    set: GlobSet,
    patterns: Vec<String>,
}

impl Globs {
    /// Patterns for names (`registry/repository`): matched without regard
    /// to case.
    fn names(setting: &str, patterns: &[String]) -> Result<Self, String> {
        Self::new(setting, patterns, true)
    }

    /// Patterns for tags: matched exactly.
    fn tags(setting: &str, patterns: &[String]) -> Result<Self, String> {
        Self::new(setting, patterns, false)
    }

    fn new(setting: &str, patterns: &[String], case_insensitive: bool) -> Result<Self, String> {
        let mut builder = GlobSetBuilder::new();
        for pattern in patterns {
            let glob: Glob = GlobBuilder::new(pattern)
                .literal_separator(true)
                .case_insensitive(case_insensitive)
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
    pin: Option<Pin>,
}

thread_local! {
    static RULES: RefCell<Option<Rules>> = const { RefCell::new(None) };
}

impl Rules {
    fn from_settings(s: Settings) -> Result<Self, String> {
        if s.prefer == Some(Prefer::Tag) {
            return Err(
                "`prefer = \"tag\"` is not supported: a pinned image is always pulled \
                        by its manifest digest, since its tag may point elsewhere by now; \
                        remove it, or pin by tag alone"
                    .to_string(),
            );
        }
        Ok(Self {
            deny_latest: s.deny_latest,
            deny_tags: Globs::tags("deny-tags", &s.deny_tags)?,
            require_digest: Globs::names("require-digest", &s.require_digest)?,
            allow: s
                .allow
                .as_deref()
                .map(|a| Globs::names("allow", a))
                .transpose()?,
            deny: Globs::names("deny", &s.deny)?,
            prefer: s.prefer,
            pin: s.pin,
        })
    }

    /// Why `name` (`registry/repository`) is refused by `deny` or `allow`;
    /// `what` says what it is (the image, or a source of the plan).
    fn list_refusal(&self, name: &str, what: &str) -> Option<String> {
        if let Some(pattern) = self.deny.matching(name) {
            return Some(format!("{what}{name} matches {pattern:?} (rule deny)"));
        }
        if let Some(allow) = &self.allow
            && allow.matching(name).is_none()
        {
            return Some(format!(
                "{what}{name} is not in the allowed list (rule allow: {})",
                allow.patterns.join(", ")
            ));
        }
        None
    }

    /// Why `image`, to be pulled by `plan`, is refused, naming the rule, or
    /// `None`.
    /// `resolved`: the tag will be pinned to a digest (`pin = "resolve"`),
    /// which satisfies `require-digest`.
    fn refusal(&self, image: &ImageRef, plan: &[Source], resolved: bool) -> Option<String> {
        let name = format!("{}/{}", image.registry, image.repository);
        if let Some(why) = self.list_refusal(&name, "") {
            return Some(why);
        }
        for (i, source) in plan.iter().enumerate() {
            let planned = format!("{}/{}", source.registry, source.repository);
            if planned != name {
                let what = format!("{name} would be pulled from source #{} ", i + 1);
                if let Some(why) = self.list_refusal(&planned, &what) {
                    return Some(why);
                }
            }
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
        if !pinned
            && !resolved
            && let Some(pattern) = self.require_digest.matching(&name)
        {
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

    fn decide(image: ImageRef, ctx: Context, plan: Vec<Source>) -> Decision {
        RULES.with(|r| {
            let r = r.borrow();
            let rules = r.as_ref().expect("configure() runs before decide()");
            // Judged before any look-up: a refused name is never asked for.
            let resolving = rules.pin == Some(Pin::Resolve) && image.manifest_digest.is_none();
            if let Some(reason) = rules.refusal(&image, &plan, resolving) {
                return Decision::Deny(reason);
            }
            if resolving {
                return match resolve(&image, &ctx, &plan) {
                    Ok((digest, why)) => Decision::Plan(
                        plan.into_iter()
                            .map(|s| Source {
                                reference: PullRef::Digest(digest.clone()),
                                note: joined(&s.note, &why),
                                ..s
                            })
                            .collect(),
                    ),
                    Err(reason) => Decision::Deny(reason),
                };
            }
            let reference = match (rules.prefer, &image.manifest_digest) {
                (Some(Prefer::Digest), Some(digest)) => PullRef::Digest(digest.clone()),
                _ => return Decision::Plan(plan),
            };
            let why = "by digest (prefer = \"digest\")";
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

/// `note; why`, within the host's 512 bytes: the earlier note is cut.
fn joined(note: &str, why: &str) -> String {
    const MAX_NOTE: usize = 512;
    let room = MAX_NOTE.saturating_sub(why.len() + 2);
    let mut end = note.len().min(room);
    while !note.is_char_boundary(end) {
        end -= 1;
    }
    if note.is_empty() {
        why.to_string()
    } else {
        format!("{}; {why}", &note[..end])
    }
}

/// The manifest digest `image`'s tag names now, and a note saying where it
/// came from: asked of the origin first, then of the plan's sources in
/// order, the first that answers. Every failure is logged; when all fail,
/// the reason to refuse the image.
fn resolve(image: &ImageRef, ctx: &Context, plan: &[Source]) -> Result<(String, String), String> {
    let tag = image.tag.clone().unwrap_or_else(|| "latest".to_string());
    let mut asked: Vec<(String, String, String)> = vec![(
        image.registry.clone(),
        image.repository.clone(),
        tag.clone(),
    )];
    for source in plan {
        if let PullRef::Tag(tag) = &source.reference {
            let candidate = (
                source.registry.clone(),
                source.repository.clone(),
                tag.clone(),
            );
            if !asked.contains(&candidate) {
                asked.push(candidate);
            }
        }
    }
    let mut failures = Vec::new();
    for (registry, repository, tag) in &asked {
        match resolve_digest(registry, repository, tag, &ctx.arch) {
            Ok(found) => {
                let index = found
                    .index_digest
                    .as_deref()
                    .map(|i| format!(", from the index {i}"))
                    .unwrap_or_default();
                let cached = if found.from_cache { ", cached" } else { "" };
                sifr_plugin::info(&format!(
                    "pinned: tag {tag} of {registry}/{repository} resolved to {} for {}{index}{cached} (pin = \"resolve\")",
                    found.manifest_digest, ctx.arch
                ));
                let why =
                    format!("by digest: tag {tag} resolved at {registry} (pin = \"resolve\")");
                return Ok((found.manifest_digest, why));
            }
            Err(error) => {
                sifr_plugin::warn(&format!("{registry}/{repository}:{tag}: {error}"));
                failures.push(format!("{registry}: {error}"));
            }
        }
    }
    Err(cut(
        format!(
            "{}/{}:{tag} could not be pinned to a digest (pin = \"resolve\"), so it is not \
             pulled by a tag that may have moved; {}",
            image.registry,
            image.repository,
            failures.join("; ")
        ),
        MAX_REASON,
    ))
}

/// The most a denial's reason may hold (the host refuses longer ones).
const MAX_REASON: usize = 2048;

/// `text` within `max` bytes, cut at a character with `…` when longer (the
/// whole of every error is in the log lines).
fn cut(mut text: String, max: usize) -> String {
    if text.len() <= max {
        return text;
    }
    let mut end = max - '…'.len_utf8();
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    text.push('…');
    text
}

sifr_plugin::export!(TagPolicy with_types_in sifr_plugin);
