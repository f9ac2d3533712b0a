//! sifr policy from containers-registries.conf(5), version 2: the file site
//! admins already keep for podman, skopeo and buildah (and Apptainer up to
//! 1.3). Apptainer 1.4 stopped honouring it and never fell back when a
//! mirror was down; sifr reads it and tries every source in order.
//!
//! ```toml
//! [[plugin]]
//! name = "registries"
//! builtin = "registries"
//! settings-files = { conf = "/etc/containers/registries.conf" }   # or [plugin.settings] conf = """..."""
//! ```
//!
//! The plan it returns replaces the plan it receives: put it first.
//!
//! Semantics (see PLUGINS.md for the full table):
//! - Exactly one `[[registry]]` applies: the longest `prefix` that matches the
//!   reference at a separator (`/`, `@`, or `:` after a `/`). `prefix`
//!   defaults to `location`, and may stop at a host, a namespace, a
//!   repository, a `:tag` or an `@digest`.
//! - A prefix `*.example.com` matches any depth of subdomain; no other
//!   wildcard is valid.
//! - `location` rewrites the matched prefix. `[[registry.mirror]]` entries
//!   come first, in order, then the primary location.
//! - `mirror-by-digest-only = true`, or per mirror `pull-from-mirror =
//!   "all" | "digest-only" | "tag-only"` (not both), route tag and digest
//!   pulls.
//! - `blocked = true` denies; `insecure = true` marks plain HTTP.
//! - Short names: `[aliases]` first (tag and digest kept), then one source
//!   per `unqualified-search-registries` entry. sifr never prompts: with
//!   `short-name-mode = "enforcing"` (the default) and more than one search
//!   registry, a short name without an alias is denied as ambiguous;
//!   `permissive` and `disabled` try every search registry in order. With no
//!   search registries a short name stays on Docker Hub
//!   (`docker.io/library/NAME`).

use std::cell::RefCell;
use std::collections::BTreeMap;

use serde::Deserialize;
use sifr_plugin::{Context, Decision, Guest, ImageRef, PullRef, Source};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    conf: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct Conf {
    #[serde(default)]
    unqualified_search_registries: Vec<String>,
    #[serde(default)]
    short_name_mode: Option<ShortNameMode>,
    /// Accepted (it is valid v2), but credentials are apptainer's business.
    #[serde(default)]
    #[allow(dead_code)]
    credential_helpers: Vec<String>,
    #[serde(default)]
    aliases: BTreeMap<String, String>,
    #[serde(default)]
    registry: Vec<Table>,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
enum ShortNameMode {
    Enforcing,
    Permissive,
    Disabled,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct Table {
    prefix: Option<String>,
    location: Option<String>,
    #[serde(default)]
    insecure: bool,
    #[serde(default)]
    blocked: bool,
    #[serde(default)]
    mirror_by_digest_only: bool,
    #[serde(default)]
    mirror: Vec<Mirror>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct Mirror {
    location: String,
    #[serde(default)]
    insecure: bool,
    #[serde(default)]
    pull_from_mirror: Option<PullFromMirror>,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
enum PullFromMirror {
    All,
    DigestOnly,
    TagOnly,
}

/// A validated table.
struct Rule {
    /// As written (for messages).
    prefix: String,
    /// `Some(".example.com")` for `*.example.com`.
    wildcard: Option<String>,
    location: Option<String>,
    insecure: bool,
    blocked: bool,
    mirrors: Vec<(String, bool, PullFromMirror)>,
}

struct Registries {
    search: Vec<String>,
    mode: ShortNameMode,
    aliases: BTreeMap<String, String>,
    rules: Vec<Rule>,
}

thread_local! {
    static CONF: RefCell<Option<Registries>> = const { RefCell::new(None) };
}

fn parse(text: &str) -> Result<Registries, String> {
    let raw: toml::Table = toml::from_str(text).map_err(|e| format!("registries.conf: {e}"))?;
    if raw.contains_key("registries") {
        return Err(
            "registries.conf: this is the version 1 format ([registries.search], \
                    [registries.insecure], [registries.block]); sifr reads version 2: \
                    convert it to unqualified-search-registries and [[registry]] tables"
                .to_string(),
        );
    }
    let conf: Conf = toml::from_str(text).map_err(|e| format!("registries.conf: {e}"))?;
    let mut rules = Vec::new();
    for (i, table) in conf.registry.into_iter().enumerate() {
        let n = i + 1;
        let prefix = match (&table.prefix, &table.location) {
            (Some(p), _) => p.clone(),
            (None, Some(l)) => l.clone(),
            (None, None) => {
                return Err(format!(
                    "registries.conf: [[registry]] #{n} needs a `prefix` or a `location`"
                ));
            }
        };
        let wildcard = if let Some(rest) = prefix.strip_prefix("*.") {
            if rest.is_empty() || rest.contains(['*', '/', ':', '@']) {
                return Err(format!(
                    "registries.conf: [[registry]] #{n}: wildcard prefix {prefix:?} must be *.DOMAIN, \
                     with nothing after the domain"
                ));
            }
            if table.location.is_some() {
                return Err(format!(
                    "registries.conf: [[registry]] #{n}: a wildcard prefix ({prefix:?}) cannot have a \
                     `location`: it would rewrite every subdomain to one place"
                ));
            }
            Some(format!(".{rest}"))
        } else if prefix.contains('*') {
            return Err(format!(
                "registries.conf: [[registry]] #{n}: {prefix:?} has a wildcard that is not a leading \
                 \"*.\"; only *.example.com is allowed"
            ));
        } else {
            None
        };
        let any_pull_from_mirror = table.mirror.iter().any(|m| m.pull_from_mirror.is_some());
        if table.mirror_by_digest_only && any_pull_from_mirror {
            return Err(format!(
                "registries.conf: [[registry]] {prefix:?}: pull-from-mirror cannot be used together \
                 with mirror-by-digest-only = true; keep one"
            ));
        }
        let default_route = if table.mirror_by_digest_only {
            PullFromMirror::DigestOnly
        } else {
            PullFromMirror::All
        };
        let mirrors = table
            .mirror
            .into_iter()
            .map(|m| {
                (
                    m.location,
                    m.insecure,
                    m.pull_from_mirror.unwrap_or(default_route),
                )
            })
            .collect();
        rules.push(Rule {
            prefix,
            wildcard,
            location: table.location,
            insecure: table.insecure,
            blocked: table.blocked,
            mirrors,
        });
    }
    Ok(Registries {
        search: conf.unqualified_search_registries,
        mode: conf.short_name_mode.unwrap_or(ShortNameMode::Enforcing),
        aliases: conf.aliases,
        rules,
    })
}

/// A fully qualified candidate: `registry/repository` and its reference.
struct Candidate {
    name: String,
    reference: PullRef,
}

impl Candidate {
    /// `name:tag` or `name@digest`: what prefixes are matched against.
    fn full(&self) -> String {
        match &self.reference {
            PullRef::Tag(tag) => format!("{}:{tag}", self.name),
            PullRef::Digest(digest) => format!("{}@{digest}", self.name),
        }
    }
}

/// How much of `reference` the prefix matches, if it matches at a separator.
/// `:` counts only after a `/`, so `example.com` never matches `example.com:5000`.
fn prefix_match(reference: &str, rule: &Rule) -> Option<usize> {
    if let Some(domain) = &rule.wildcard {
        let host = reference.split('/').next().unwrap_or_default();
        return (host.len() > domain.len() && host.ends_with(domain.as_str()))
            .then_some(host.len());
    }
    let prefix = rule.prefix.as_str();
    if reference == prefix {
        return Some(prefix.len());
    }
    let rest = reference.strip_prefix(prefix)?;
    let ok = rest.starts_with('/')
        || rest.starts_with('@')
        || (rest.starts_with(':') && prefix.contains('/'));
    ok.then_some(prefix.len())
}

/// Split `host/repo[:tag|@digest]` back into a source.
fn source(full: &str, plain_http: bool, note: String) -> Source {
    let (name, reference) = match full.rsplit_once('@') {
        Some((name, digest)) => (name, PullRef::Digest(digest.to_string())),
        None => {
            let slash = full.rfind('/').map_or(0, |i| i + 1);
            match full[slash..].rfind(':') {
                Some(i) => (
                    &full[..slash + i],
                    PullRef::Tag(full[slash + i + 1..].to_string()),
                ),
                None => (full, PullRef::Tag("latest".to_string())),
            }
        }
    };
    let (registry, repository) = name.split_once('/').unwrap_or((name, ""));
    Source {
        registry: registry.to_string(),
        repository: repository.to_string(),
        reference,
        plain_http,
        note,
    }
}

impl Registries {
    /// The sources for one qualified candidate, or the reason it is blocked.
    fn sources(&self, candidate: &Candidate) -> Result<Vec<Source>, String> {
        let full = candidate.full();
        let best = self
            .rules
            .iter()
            .filter_map(|rule| prefix_match(&full, rule).map(|len| (len, rule)))
            .max_by_key(|(len, _)| *len);
        let Some((len, rule)) = best else {
            return Ok(vec![source(
                &full,
                false,
                "origin (no [[registry]] matches)".to_string(),
            )]);
        };
        if rule.blocked {
            return Err(format!(
                "{full} is blocked by registries.conf: [[registry]] prefix = {:?} has blocked = true",
                rule.prefix
            ));
        }
        let rest = &full[len..];
        let digest = matches!(candidate.reference, PullRef::Digest(_));
        let mut out = Vec::new();
        for (location, insecure, route) in &rule.mirrors {
            let used = match route {
                PullFromMirror::All => true,
                PullFromMirror::DigestOnly => digest,
                PullFromMirror::TagOnly => !digest,
            };
            if used {
                out.push(source(
                    &format!("{location}{rest}"),
                    *insecure,
                    format!("mirror of [[registry]] {:?} (registries.conf)", rule.prefix),
                ));
            }
        }
        let primary = match &rule.location {
            Some(location) => format!("{location}{rest}"),
            None => full.clone(),
        };
        let note = if rule.location.as_deref().is_some_and(|l| l != rule.prefix) {
            format!(
                "{:?} rewritten to {:?} (registries.conf)",
                rule.prefix,
                rule.location.as_deref().unwrap_or_default()
            )
        } else {
            format!(
                "primary of [[registry]] {:?} (registries.conf)",
                rule.prefix
            )
        };
        out.push(source(&primary, rule.insecure, note));
        Ok(out)
    }

    /// The qualified candidates for `image`, or why a short name is refused.
    fn candidates(
        &self,
        image: &ImageRef,
        short_name: Option<&str>,
    ) -> Result<Vec<Candidate>, String> {
        let reference = image.pull_ref();
        let qualified = Candidate {
            name: format!("{}/{}", image.registry, image.repository),
            reference: reference.clone(),
        };
        let Some(short) = short_name else {
            return Ok(vec![qualified]);
        };
        if let Some(target) = self.aliases.get(short) {
            sifr_plugin::info(&format!("alias {short} = {target:?} (registries.conf)"));
            return Ok(vec![Candidate {
                name: target.clone(),
                reference,
            }]);
        }
        match self.search.len() {
            0 => Ok(vec![qualified]),
            1 => Ok(vec![search_candidate(&self.search[0], short, &reference)]),
            _ if self.mode == ShortNameMode::Enforcing => Err(format!(
                "short name {short:?} is ambiguous: registries.conf lists {} unqualified-search-registries \
                 and short-name-mode is \"enforcing\" (sifr never prompts); write the full reference \
                 (e.g. {}/{short}) or add an [aliases] entry",
                self.search.len(),
                self.search[0]
            )),
            _ => Ok(self
                .search
                .iter()
                .map(|registry| search_candidate(registry, short, &reference))
                .collect()),
        }
    }
}

/// `registry/short`, with Docker Hub's `library/` for single names.
fn search_candidate(registry: &str, short: &str, reference: &PullRef) -> Candidate {
    let hub = matches!(
        registry,
        "docker.io" | "index.docker.io" | "registry-1.docker.io"
    );
    let name = if hub && !short.contains('/') {
        format!("docker.io/library/{short}")
    } else if hub {
        format!("docker.io/{short}")
    } else {
        format!("{registry}/{short}")
    };
    Candidate {
        name,
        reference: reference.clone(),
    }
}

struct RegistriesPolicy;

impl Guest for RegistriesPolicy {
    fn configure(settings: String) -> Result<(), String> {
        let settings: Settings = serde_json::from_str(&settings).map_err(|e| {
            format!(
                "invalid settings: {e}; give the file with settings-files = {{ conf = \"/etc/containers/registries.conf\" }}"
            )
        })?;
        let conf = parse(&settings.conf)?;
        CONF.with(|c| *c.borrow_mut() = Some(conf));
        Ok(())
    }

    fn decide(image: ImageRef, ctx: Context, _plan: Vec<Source>) -> Decision {
        CONF.with(|c| {
            let c = c.borrow();
            let conf = c.as_ref().expect("configure() runs before decide()");
            let candidates = match conf.candidates(&image, ctx.short_name.as_deref()) {
                Ok(candidates) => candidates,
                Err(reason) => return Decision::Deny(reason),
            };
            let mut plan = Vec::new();
            let mut blocked = None;
            for candidate in &candidates {
                match conf.sources(candidate) {
                    Ok(sources) => plan.extend(sources),
                    Err(reason) => {
                        sifr_plugin::info(&reason);
                        blocked.get_or_insert(reason);
                    }
                }
            }
            match (plan.is_empty(), blocked) {
                (true, Some(reason)) => Decision::Deny(reason),
                _ => Decision::Plan(plan),
            }
        })
    }
}

sifr_plugin::export!(RegistriesPolicy with_types_in sifr_plugin);
