//! sifr policy from containers-registries.conf(5): the file site admins
//! already keep for podman, skopeo and buildah (and Apptainer up to 1.3).
//! Apptainer 1.4 stopped honouring it and never fell back when a mirror was
//! down; sifr reads it and tries every source in order.
//!
//! ```toml
//! [[plugin]]
//! name = "registries"
//! builtin = "registries"
//! settings-files = { conf = "system" }   # or { conf = "PATH" }, or [plugin.settings] conf = """..."""
//! ```
//!
//! With `"system"` the host hands over `/etc/containers/registries.conf` as
//! `conf` and `registries.conf.d/*.conf` as `conf-drop-ins`; they are
//! merged as `tryUpdatingCache` merges them. The deprecated version 1
//! format is read, in the main file only, as `ConvertToV2` converts it.
//!
//! The plan it returns replaces the plan it receives: put it first.
//!
//! sifr follows containers/image's `pkg/sysregistriesv2`
//! (`system_registries_v2.go`, `shortnames.go`) and its `pkg/shortnames`:
//! a file containers/image refuses when it loads is refused by `configure`,
//! so sifr fails when it loads the policy (exit 3), not at the first pull of
//! an image that happens to match. Each rule below names the function it
//! follows. Where sifr deviates on purpose, the comment says so and why;
//! PLUGINS.md lists every deviation.
//!
//! Semantics (see PLUGINS.md for the full table):
//! - Exactly one `[[registry]]` applies: the one with the longest `prefix`,
//!   counted as written (`*.com` counts 5), that matches the reference at a
//!   separator (`/`, `@`, or `:` after a `/` or a wildcard's domain).
//!   `prefix` defaults to `location`, and may stop at a host, a namespace,
//!   a repository, a `:tag` or an `@digest`.
//! - A prefix `*.example.com` matches any depth of subdomain.
//! - `location` rewrites the matched prefix (for a wildcard, the matched
//!   host; a port after it is kept). `[[registry.mirror]]` entries come
//!   first, in order, then the
//!   primary location.
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

mod reference;

use std::cell::RefCell;
use std::collections::BTreeMap;

use serde::Deserialize;
use sifr_plugin::{Context, Decision, Guest, ImageRef, PullRef, Source};

/// How messages name the file: the plugin gets its text, not its path.
const FILE: &str = "registries.conf";

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct Settings {
    /// The main file's text (`""` when the system has none).
    conf: String,
    /// Drop-ins, in the order containers/image reads them: each merged
    /// over what came before (`tryUpdatingCache`). The host fills it for
    /// `settings-files = { conf = "system" }`.
    #[serde(default)]
    conf_drop_ins: Vec<DropIn>,
}

/// A `registries.conf.d/*.conf` file: where it is, for messages, and its text.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DropIn {
    path: String,
    text: String,
}

// Deviation: unknown keys are errors. containers/image ignores them (it
// logs them at debug level), so a misspelt `mirors` or `blokced` would
// silently drop a mirror or a block.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct Conf {
    /// `None` when the key is absent: a drop-in then keeps the list
    /// before it, while `[]` empties it (`updateWithConfigurationFrom`).
    #[serde(default)]
    unqualified_search_registries: Option<Vec<String>>,
    #[serde(default)]
    short_name_mode: String,
    /// Accepted (it is valid v2), but credentials are apptainer's business.
    #[serde(default)]
    #[allow(dead_code)]
    credential_helpers: Vec<String>,
    /// Accepted (it is valid v2): it feeds podman's additional layer store,
    /// which apptainer does not use.
    #[serde(default)]
    #[allow(dead_code)]
    additional_layer_store_auth_helper: String,
    #[serde(default)]
    aliases: BTreeMap<String, String>,
    #[serde(default)]
    registry: Vec<Table>,
}

/// A `[[registry]]` table as written. Strings default to `""`, which
/// containers/image treats as unset.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct Table {
    #[serde(default)]
    prefix: String,
    #[serde(default)]
    location: String,
    #[serde(default)]
    insecure: bool,
    #[serde(default)]
    blocked: bool,
    #[serde(default)]
    mirror_by_digest_only: bool,
    /// Only valid on a mirror; read here to say so.
    #[serde(default)]
    pull_from_mirror: String,
    #[serde(default)]
    proxy: String,
    #[serde(default)]
    mirror: Vec<MirrorTable>,
    /// How messages name a table converted from a version 1 file.
    #[serde(skip)]
    label: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct MirrorTable {
    #[serde(default)]
    location: String,
    #[serde(default)]
    insecure: bool,
    #[serde(default)]
    pull_from_mirror: String,
    #[serde(default)]
    proxy: String,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum ShortNameMode {
    Enforcing,
    Permissive,
    Disabled,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum PullFromMirror {
    All,
    DigestOnly,
    TagOnly,
}

struct MirrorRule {
    location: String,
    insecure: bool,
    route: PullFromMirror,
}

/// A validated table.
struct Rule {
    /// The file it comes from, for messages.
    file: String,
    /// How a table converted from a version 1 file is named.
    v1_label: Option<String>,
    /// Its place in the file, from 1, for messages.
    number: usize,
    /// Trailing slashes trimmed: what it matches and is ranked by.
    prefix: String,
    /// `*.example.com`.
    wildcard: bool,
    /// Empty only for a wildcard prefix, which then keeps the reference.
    location: String,
    insecure: bool,
    blocked: bool,
    mirror_by_digest_only: bool,
    mirrors: Vec<MirrorRule>,
}

struct Registries {
    search: Vec<String>,
    mode: ShortNameMode,
    /// `None`: written as `""`, which means no alias.
    aliases: BTreeMap<String, Option<String>>,
    /// One per prefix, the first of each in the file.
    rules: Vec<Rule>,
}

thread_local! {
    static CONF: RefCell<Option<Registries>> = const { RefCell::new(None) };
}

/// `[[registry]] #2 (prefix "example.com")`.
fn table_name(number: usize, table: &Table) -> String {
    if let Some(label) = &table.label {
        return label.clone();
    }
    match (table.prefix.as_str(), table.location.as_str()) {
        ("", "") => format!("[[registry]] #{number}"),
        ("", location) => format!("[[registry]] #{number} (location {location:?})"),
        (prefix, _) => format!("[[registry]] #{number} (prefix {prefix:?})"),
    }
}

/// `parseLocation`: trailing slashes are trimmed (`example.com//` is
/// `example.com`), and a URI scheme is refused (`insecure = true` is how a
/// file asks for plain HTTP). `key` is how the message names the value.
fn parse_location(key: &str, value: &str) -> Result<String, String> {
    let trimmed = value.trim_end_matches('/');
    for scheme in ["http://", "https://"] {
        if let Some(rest) = trimmed.strip_prefix(scheme) {
            let http = if scheme == "http://" {
                ", with insecure = true for plain HTTP"
            } else {
                ""
            };
            return Err(format!(
                "{key} {value:?}: URI schemes are not supported (containers/image refuses them too); \
                 write {rest:?}{http}"
            ));
        }
    }
    // Deviation: hosts are compared as hosts. sifr hands plugins canonical
    // references (lowercase host, no `:443`), so the host part is
    // lowercased here, and a `:443` that could never match is refused.
    let (host, rest) = match trimmed.find('/') {
        Some(i) => trimmed.split_at(i),
        None => (trimmed, ""),
    };
    if let Some(bare) = host.strip_suffix(":443") {
        return Err(format!(
            "{key} {value:?}: sifr reads host:443 as host (HTTPS's own port), so this never \
             matches as written; write {:?}",
            format!("{bare}{rest}")
        ));
    }
    Ok(format!("{}{rest}", host.to_ascii_lowercase()))
}

/// Deviation: a location must be `host[:port][/path]` (a `:tag` or
/// `@digest` may follow, for a prefix that stops at one). containers/image
/// loads any text and fails every pull the table rewrites; sifr says so
/// when it loads the file.
///
/// Deviation: a `user@` part (`john.doe@example.com`) is refused, though
/// containers/image's `parseLocation` takes it. An image reference has no
/// place for a user: in `john.doe@example.com/foo:1` the `@` starts a
/// digest, so containers/image's own rewrite (`reference.ParseNamed`) fails
/// every pull through the table, and apptainer's `docker://` parser reads
/// it the same way. Credentials are the user's (`APPTAINER_DOCKER_USERNAME`,
/// `auth.json`), never the location's.
fn check_location(key: &str, location: &str) -> Result<(), String> {
    let host = location.split('/').next().unwrap_or_default();
    let checked = if let Some((user, host)) = host.split_once('@') {
        Err(format!(
            "{user:?}@ is a user, and an image reference has no place for one: `@` starts a \
             digest, so containers/image and apptainer fail every pull rewritten to it; write \
             {host:?} and give the user's credentials as APPTAINER_DOCKER_USERNAME / \
             APPTAINER_DOCKER_PASSWORD or in auth.json"
        ))
    } else if !reference::is_domain(host) {
        Err(format!("{host:?} is not a host[:port]"))
    } else if !reference::port_is_usable(host) {
        Err(format!("{host:?} has a port outside 1 to 65535"))
    } else if host == "index.docker.io" {
        Err(
            "index.docker.io is Docker Hub's old name; containers/image takes only docker.io \
             in a rewritten reference"
                .to_string(),
        )
    } else if reference::normalize(&format!("{host}/x")).0 != host {
        // splitDockerDomain would read it as a Docker Hub namespace.
        Err(format!(
            "{host:?} has no `.` or `:` and is not localhost, so it reads as a Docker Hub \
             namespace, not a registry"
        ))
    } else if location.contains('/') {
        reference::parse(location).map(drop)
    } else {
        Ok(())
    };
    checked.map_err(|why| {
        format!(
            "{key} = {location:?} is not a registry location ({why}); every image rewritten \
             through it would fail; write host[:port][/namespace…]"
        )
    })
}

fn pull_from_mirror(value: &str) -> Result<Option<PullFromMirror>, String> {
    match value {
        "" => Ok(None),
        "all" => Ok(Some(PullFromMirror::All)),
        "digest-only" => Ok(Some(PullFromMirror::DigestOnly)),
        "tag-only" => Ok(Some(PullFromMirror::TagOnly)),
        other => Err(format!(
            "pull-from-mirror = {other:?} is not a value containers/image knows; use \"all\", \
             \"digest-only\" or \"tag-only\""
        )),
    }
}

/// Deviation: sifr cannot send one source through a proxy and the next
/// directly; apptainer takes its proxy from the environment for every pull.
/// Ignoring the key would send pulls around the proxy the site asked for.
fn refuse_proxy(proxy: &str) -> Result<(), String> {
    if proxy.is_empty() {
        return Ok(());
    }
    Err(format!(
        "proxy = {proxy:?}: sifr cannot route one registry through a proxy (apptainer takes \
         its proxy from HTTPS_PROXY / HTTP_PROXY / NO_PROXY in the environment); remove the \
         key and set those variables for sifr"
    ))
}

/// One `[[registry]]` table, checked as `postProcessRegistries` and
/// `loadConfigFile` check it.
fn rule(file: &str, number: usize, table: Table) -> Result<Rule, String> {
    let name = table_name(number, &table);
    let at = |message: String| format!("{file}: {name}: {message}");
    let location = parse_location("location =", &table.location).map_err(at)?;
    refuse_proxy(&table.proxy).map_err(at)?;
    // postProcessRegistries: `prefix = ""` is unset, and defaults to the
    // location.
    let prefix = if table.prefix.is_empty() {
        if location.is_empty() {
            return Err(at(
                "it needs a `prefix` or a `location` (containers/image: \"both location and \
                 prefix are unset\")"
                    .to_string(),
            ));
        }
        location.clone()
    } else {
        parse_location("prefix =", &table.prefix).map_err(at)?
    };
    // loadConfigFile: a wildcard is `*.` and a domain, nothing after it.
    let wildcard = prefix.starts_with("*.");
    if wildcard && prefix.contains(['/', '@', ':']) {
        return Err(at(format!(
            "wildcard prefix {prefix:?} must be *.DOMAIN, with no namespace, port, tag or \
             digest after the domain (containers/image refuses it too)"
        )));
    }
    // Deviation: containers/image takes any other `*` literally; no
    // reference contains one, so such a table never matches and is a
    // mistake.
    if prefix.contains('*') && (!wildcard || prefix.len() == 2 || prefix[2..].contains('*')) {
        return Err(at(format!(
            "{prefix:?} has a wildcard that is not one leading \"*.\" before a domain; only \
             *.example.com is a wildcard (a literal `*` never matches a reference)"
        )));
    }
    // postProcessRegistries: only a wildcard table may go without a
    // location (it then keeps the reference it matched).
    if !wildcard && location.is_empty() {
        return Err(at(format!(
            "it has no `location`, and containers/image refuses that unless the prefix is a \
             wildcard (*.example.com); add location = {prefix:?}"
        )));
    }
    if !table.pull_from_mirror.is_empty() {
        return Err(at(format!(
            "pull-from-mirror = {:?} is set on the registry itself; containers/image allows it \
             only in [[registry.mirror]] tables: move it there",
            table.pull_from_mirror
        )));
    }
    if !location.is_empty() {
        check_location("location", &location).map_err(at)?;
    }
    let mut mirrors = Vec::new();
    for (i, mirror) in table.mirror.into_iter().enumerate() {
        let at =
            |message: String| format!("{file}: {name}, [[registry.mirror]] #{}: {message}", i + 1);
        let location = parse_location("location =", &mirror.location).map_err(at)?;
        refuse_proxy(&mirror.proxy).map_err(at)?;
        if location.is_empty() {
            return Err(at(
                "it has no `location` (containers/image: \"mirror location is unset\")".to_string(),
            ));
        }
        let route = pull_from_mirror(&mirror.pull_from_mirror).map_err(at)?;
        if table.mirror_by_digest_only && route.is_some() {
            return Err(at(
                "pull-from-mirror cannot be used together with mirror-by-digest-only = true on \
                 the registry (containers/image refuses both); keep one, e.g. \
                 pull-from-mirror = \"digest-only\" on each mirror"
                    .to_string(),
            ));
        }
        check_location("location", &location).map_err(at)?;
        mirrors.push(MirrorRule {
            location,
            insecure: mirror.insecure,
            route: route.unwrap_or(PullFromMirror::All),
        });
    }
    Ok(Rule {
        file: file.to_string(),
        v1_label: table.label.clone(),
        number,
        prefix,
        wildcard,
        location,
        insecure: table.insecure,
        blocked: table.blocked,
        mirror_by_digest_only: table.mirror_by_digest_only,
        mirrors,
    })
}

/// postProcessRegistries: tables that name one registry (one location, or
/// one wildcard prefix when there is no location) must agree on `insecure`
/// and `blocked`, or the file is refused.
fn check_conflicts(file: &str, rules: &[Rule]) -> Result<(), String> {
    let key = |r: &Rule| {
        if r.location.is_empty() {
            ("prefix", r.prefix.clone())
        } else {
            ("location", r.location.clone())
        }
    };
    for (i, a) in rules.iter().enumerate() {
        for b in &rules[..i] {
            if key(a) != key(b) {
                continue;
            }
            let (what, value) = key(a);
            for (field, va, vb) in [
                ("insecure", a.insecure, b.insecure),
                ("blocked", a.blocked, b.blocked),
            ] {
                if va != vb {
                    return Err(format!(
                        "{file}: [[registry]] #{} (prefix {:?}) and [[registry]] #{} (prefix {:?}) \
                         both have {what} {value:?}, with {field} = {vb} and {field} = {va}; \
                         containers/image refuses the file (\"registry '{value}' is defined \
                         multiple times with conflicting '{field}' setting\"): give them the \
                         same `{field}`",
                        b.number, b.prefix, a.number, a.prefix
                    ));
                }
            }
        }
    }
    Ok(())
}

/// postProcessRegistries: each search entry is trimmed as a location and
/// must then be a `host[:port]` (`anchoredDomainRegexp`).
fn search_registry(file: &str, entry: &str) -> Result<String, String> {
    let at = |message: String| format!("{file}: unqualified-search-registries: {message}");
    let registry = parse_location("entry", entry).map_err(at)?;
    if !reference::is_domain(&registry) {
        return Err(at(format!(
            "{entry:?} is not a host[:port]; search entries are registries, not namespaces or \
             images (containers/image refuses it too); for a namespace, add an [aliases] entry \
             per short name"
        )));
    }
    // Deviation: containers/image takes any digits as a port; no pull can
    // use one outside 1 to 65535.
    if !reference::port_is_usable(&registry) {
        return Err(at(format!("{entry:?} has a port outside 1 to 65535")));
    }
    Ok(registry)
}

/// `parseShortNameMode`; an empty value is unset (`None`), and a later
/// file's mode replaces an earlier one's.
fn short_name_mode(file: &str, mode: &str) -> Result<Option<ShortNameMode>, String> {
    match mode {
        "" => Ok(None),
        "enforcing" => Ok(Some(ShortNameMode::Enforcing)),
        "permissive" => Ok(Some(ShortNameMode::Permissive)),
        "disabled" => Ok(Some(ShortNameMode::Disabled)),
        other => Err(format!(
            "{file}: short-name-mode = {other:?} is not a mode; use \"enforcing\", \
             \"permissive\" or \"disabled\""
        )),
    }
}

/// `validateShortName`: an alias name is a repository without a registry,
/// a tag or a digest.
fn alias_name(name: &str) -> Result<(), String> {
    let parsed = reference::parse(name).map_err(|why| format!("it cannot be parsed: {why}"))?;
    if parsed.digest.is_some() {
        return Err("it must not contain a digest".to_string());
    }
    if parsed.tag.is_some() {
        return Err("it must not contain a tag".to_string());
    }
    if parsed
        .domain
        .is_some_and(|d| d.contains(['.', ':']) || d == "localhost")
    {
        return Err("it must not contain a registry: an alias names a short name".to_string());
    }
    Ok(())
}

/// `parseShortNameValue`: an alias value is `registry/repository`, without
/// a tag, a digest or a transport, normalised as Docker Hub names are
/// (`docker.io/fedora` is `docker.io/library/fedora`).
fn alias_value(value: &str) -> Result<String, String> {
    let parsed = reference::parse(value).map_err(|why| format!("it cannot be parsed: {why}"))?;
    if parsed.digest.is_some() {
        return Err(
            "it must not contain a digest (the image's own tag or digest is kept)".to_string(),
        );
    }
    if parsed.tag.is_some() {
        return Err(
            "it must not contain a tag (the image's own tag or digest is kept)".to_string(),
        );
    }
    if !parsed
        .domain
        .is_some_and(|d| d.contains(['.', ':']) || d == "localhost")
    {
        return Err(
            "it must contain a registry and a repository (e.g. quay.io/ns/name)".to_string(),
        );
    }
    let (domain, repository) = reference::normalize(&parsed.name());
    Ok(format!("{domain}/{repository}"))
}

/// `newShortNameAliasCache`: every entry is checked and every bad one
/// reported at once; `""` as a value means no alias.
fn aliases(
    file: &str,
    raw: BTreeMap<String, String>,
) -> Result<BTreeMap<String, Option<String>>, String> {
    let mut out = BTreeMap::new();
    let mut errors = Vec::new();
    for (name, value) in raw {
        if let Err(why) = alias_name(&name) {
            errors.push(format!("alias name {name:?}: {why}"));
        }
        if value.is_empty() {
            out.insert(name, None);
            continue;
        }
        match alias_value(&value) {
            Ok(target) => {
                out.insert(name, Some(target));
            }
            Err(why) => errors.push(format!("{name:?} = {value:?}: {why}")),
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(format!(
            "{file}: [aliases]: {} (containers/image refuses these too)",
            errors.join("; ")
        ))
    }
}

/// Keys of the version 1 format, under `[registries.*]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct V1File {
    registries: V1Tables,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct V1Tables {
    search: Option<V1List>,
    insecure: Option<V1List>,
    block: Option<V1List>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct V1List {
    #[serde(default)]
    registries: Vec<String>,
}

/// `ConvertToV2`: a version 1 file as the version 2 file it means. Each
/// blocked or insecure registry becomes a `[[registry]]` with that prefix
/// and location (blocked ones first, then insecure, in order of first
/// mention); `[registries.search]` becomes `unqualified-search-registries`.
fn convert_v1(file: &str, v1: V1File) -> Result<Conf, String> {
    let mut tables: Vec<Table> = Vec::new();
    let lists = [
        ("block", v1.registries.block, true),
        ("insecure", v1.registries.insecure, false),
    ];
    for (section, list, blocked) in lists {
        for entry in list.map(|l| l.registries).unwrap_or_default() {
            let location = parse_location("entry", &entry)
                .map_err(|e| format!("{file}: [registries.{section}]: {e}"))?;
            let i = match tables.iter().position(|t| t.location == location) {
                Some(i) => i,
                None => {
                    tables.push(Table {
                        prefix: location.clone(),
                        location: location.clone(),
                        insecure: false,
                        blocked: false,
                        mirror_by_digest_only: false,
                        pull_from_mirror: String::new(),
                        proxy: String::new(),
                        mirror: Vec::new(),
                        label: Some(format!("[registries.{section}] entry {entry:?}")),
                    });
                    tables.len() - 1
                }
            };
            if blocked {
                tables[i].blocked = true;
            } else {
                tables[i].insecure = true;
            }
        }
    }
    Ok(Conf {
        unqualified_search_registries: v1.registries.search.map(|l| l.registries),
        short_name_mode: String::new(),
        credential_helpers: Vec::new(),
        additional_layer_store_auth_helper: String::new(),
        aliases: BTreeMap::new(),
        registry: tables,
    })
}

/// One file, checked as `loadConfigFile` checks it, before merging.
struct FileConf {
    /// `None`: the file does not set it.
    search: Option<Vec<String>>,
    mode: Option<ShortNameMode>,
    aliases: BTreeMap<String, Option<String>>,
    /// One per prefix, the first of each in the file.
    rules: Vec<Rule>,
}

/// `loadConfigFile`: `file` names it in messages; a drop-in must be
/// version 2 (`forceV2`).
fn parse_file(text: &str, file: &str, drop_in: bool) -> Result<FileConf, String> {
    let raw: toml::Table = toml::from_str(text).map_err(|e| format!("{file}: {e}"))?;
    let unknown_key_hint = |e: &toml::de::Error| {
        if e.message().contains("unknown field") {
            "; sifr refuses keys it does not know (containers/image ignores them), so that a \
             misspelt key does not silently drop a mirror or a block: fix or remove it"
        } else {
            ""
        }
    };
    let conf: Conf = if raw.contains_key("registries") {
        if drop_in {
            return Err(format!(
                "{file}: a drop-in must be in the version 2 format, and this one has \
                 [registries.search], [registries.insecure] or [registries.block] (version 1); \
                 containers/image refuses it too (\"registry must be in v2 format but is in \
                 v1\"): convert it to unqualified-search-registries and [[registry]] tables"
            ));
        }
        let v2: Vec<&str> = raw
            .keys()
            .map(String::as_str)
            .filter(|k| *k != "registries")
            .collect();
        if !v2.is_empty() {
            return Err(format!(
                "{file}: it mixes the version 1 format ([registries.*]) with version 2 keys \
                 ({}); containers/image refuses that too (\"mixing sysregistry v1/v2 is not \
                 supported\"): convert the [registries.*] tables to \
                 unqualified-search-registries and [[registry]] tables",
                v2.join(", ")
            ));
        }
        let v1: V1File = toml::from_str(text)
            .map_err(|e| format!("{file}: version 1 format: {e}{}", unknown_key_hint(&e)))?;
        // Shown with every decision, since configure runs before each.
        sifr_plugin::warn(&format!(
            "{file} is in the deprecated version 1 format ([registries.search], \
             [registries.insecure], [registries.block]); sifr reads it as containers/image \
             does, but convert it to version 2 (unqualified-search-registries and \
             [[registry]] tables, see containers-registries.conf(5))"
        ));
        convert_v1(file, v1)?
    } else {
        toml::from_str(text).map_err(|e| format!("{file}: {e}{}", unknown_key_hint(&e)))?
    };
    let mut all = Vec::new();
    for (i, table) in conf.registry.into_iter().enumerate() {
        all.push(rule(file, i + 1, table)?);
    }
    check_conflicts(file, &all)?;
    // postProcessRegistries: of tables with one prefix, the first wins and
    // the others are dropped (containers/image no longer refuses them).
    let mut rules: Vec<Rule> = Vec::new();
    for rule in all {
        if let Some(first) = rules.iter().find(|r| r.prefix == rule.prefix) {
            // info, not warn: configure runs again before every decision.
            sifr_plugin::info(&format!(
                "{file}: [[registry]] #{} has the prefix {:?} of [[registry]] #{}, which wins; \
                 #{} is ignored, as containers/image ignores it",
                rule.number, rule.prefix, first.number, rule.number
            ));
            continue;
        }
        rules.push(rule);
    }
    let search = conf
        .unqualified_search_registries
        .map(|entries| {
            entries
                .iter()
                .map(|entry| search_registry(file, entry))
                .collect::<Result<Vec<_>, _>>()
        })
        .transpose()?;
    Ok(FileConf {
        search,
        mode: short_name_mode(file, &conf.short_name_mode)?,
        aliases: aliases(file, conf.aliases)?,
        rules,
    })
}

impl FileConf {
    /// `updateWithConfigurationFrom`: a later file's table replaces the
    /// table with its prefix; its search list and mode, when it sets
    /// them, replace the earlier ones; its aliases replace those of the
    /// same name (`""` resets one to no alias).
    fn update_with(&mut self, later: FileConf) {
        for rule in later.rules {
            if let Some(replaced) = self.rules.iter().position(|r| r.prefix == rule.prefix) {
                let old = self.rules.remove(replaced);
                sifr_plugin::info(&format!(
                    "{}: [[registry]] prefix = {:?} replaces the table of {}",
                    rule.file, rule.prefix, old.file
                ));
            }
            self.rules.push(rule);
        }
        if later.search.is_some() {
            self.search = later.search;
        }
        if later.mode.is_some() {
            self.mode = later.mode;
        }
        self.aliases.extend(later.aliases);
    }
}

/// The main file, then each drop-in merged over it, as `tryUpdatingCache`.
fn parse(settings: &Settings) -> Result<Registries, String> {
    let mut merged = parse_file(&settings.conf, FILE, false)?;
    for drop_in in &settings.conf_drop_ins {
        merged.update_with(parse_file(&drop_in.text, &drop_in.path, true)?);
    }
    Ok(Registries {
        search: merged.search.unwrap_or_default(),
        // Deviation: containers/image defaults to "permissive", which tries
        // every search registry when it cannot prompt. sifr never prompts,
        // and an image that depends on which registry answers first is not
        // reproducible, so sifr defaults to "enforcing", as podman behaves
        // with that mode and no terminal.
        mode: merged.mode.unwrap_or(ShortNameMode::Enforcing),
        aliases: merged.aliases,
        rules: merged.rules,
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

impl Rule {
    /// Where the match ends in `reference`, if this table matches it.
    ///
    /// `refMatchingPrefix`: the prefix, then the end or a separator.
    /// `refMatchingSubdomainPrefix` for `*.example.com`: the first
    /// `.example.com`, with no `/` before it, then the end or a separator;
    /// the match ends with the host.
    ///
    /// A wildcard ends at its domain, and a `:port` may follow, as in
    /// `refMatchingSubdomainPrefix`: `*.sub.example.io` matches
    /// `another.sub.example.io:5000/…`, and a location then replaces the
    /// host and keeps the port (`example.com:5000/…`), as containers/image's
    /// `TestRewriteReferenceSuccess` expects.
    ///
    /// Deviation: containers/image counts `:` as a separator after a plain
    /// host prefix too, so `example.com` matches `example.com:5000/…`, a
    /// different registry; it calls that unintended ("DON'T RELY ON THE
    /// CURRENT BEHAVIOR"), and a rewrite or a mirror then points at a wrong
    /// port. sifr counts `:` after a plain prefix only after a `/` (where it
    /// starts a tag), except in a blocked table: sifr never lets an image
    /// through that containers/image blocks.
    fn matches(&self, reference: &str) -> Option<usize> {
        let end = if self.wildcard {
            let domain = &self.prefix[1..];
            let at = reference.find(domain)?;
            if reference[..at].contains('/') {
                return None;
            }
            at + domain.len()
        } else {
            if self.prefix.is_empty() || !reference.starts_with(self.prefix.as_str()) {
                return None;
            }
            self.prefix.len()
        };
        match reference[end..].chars().next() {
            None | Some('/' | '@') => Some(end),
            Some(':') if self.blocked || self.wildcard || self.prefix.contains('/') => Some(end),
            _ => None,
        }
    }

    fn label(&self) -> String {
        match &self.v1_label {
            Some(label) => label.clone(),
            None => format!("[[registry]] {:?}", self.prefix),
        }
    }
}

/// The rewritten reference as a source, if containers/image could pull it:
/// `rewriteReference` parses it with `reference.ParseNamed`, which takes
/// only a canonical name (an explicit registry, Docker Hub names in
/// `docker.io/library/…`).
fn rewritten_source(
    full: &str,
    rule: &Rule,
    plain_http: bool,
    note: String,
) -> Result<Source, String> {
    let invalid = |why: String| {
        format!(
            "{} rewrites this image to {full:?}, which is not a valid image reference ({why}); \
             containers/image fails the pull too: fix that table's location in {}",
            rule.label(),
            rule.file
        )
    };
    let parsed = reference::parse(full).map_err(invalid)?;
    let name = parsed.name();
    let (domain, repository) = reference::normalize(&name);
    if format!("{domain}/{repository}") != name {
        return Err(invalid(format!(
            "its canonical form is {domain}/{repository}"
        )));
    }
    let reference = match (parsed.digest, parsed.tag) {
        (Some(digest), _) => PullRef::Digest(digest.to_string()),
        (None, Some(tag)) => PullRef::Tag(tag.to_string()),
        (None, None) => PullRef::Tag("latest".to_string()),
    };
    Ok(Source {
        registry: domain,
        repository,
        reference,
        plain_http,
        note,
    })
}

/// The origin alone, for a candidate no table matches.
fn origin(candidate: &Candidate) -> Source {
    let (registry, repository) = candidate
        .name
        .split_once('/')
        .unwrap_or((&candidate.name, ""));
    Source {
        registry: registry.to_string(),
        repository: repository.to_string(),
        reference: candidate.reference.clone(),
        plain_http: false,
        note: "origin (no [[registry]] matches)".to_string(),
    }
}

impl Registries {
    /// `FindRegistry`: of the tables that match, the one with the longest
    /// prefix as written (so `*.com` counts 5, whatever host it matched).
    /// containers/image keeps the tables sorted by prefix and takes the
    /// first of equal length, so the smaller prefix wins a tie (`*.b.com`
    /// over `x.b.com`).
    fn find(&self, reference: &str) -> Option<(&Rule, usize)> {
        let mut best: Option<(&Rule, usize)> = None;
        for rule in &self.rules {
            let Some(end) = rule.matches(reference) else {
                continue;
            };
            let wins = best.is_none_or(|(b, _)| {
                (rule.prefix.len(), std::cmp::Reverse(&rule.prefix))
                    > (b.prefix.len(), std::cmp::Reverse(&b.prefix))
            });
            if wins {
                best = Some((rule, end));
            }
        }
        best
    }

    /// `PullSourcesFromReference`: the sources for one qualified candidate,
    /// or the reason it is refused.
    fn sources(&self, candidate: &Candidate) -> Result<Vec<Source>, String> {
        let full = candidate.full();
        let Some((rule, end)) = self.find(&full) else {
            return Ok(vec![origin(candidate)]);
        };
        if rule.blocked {
            return Err(format!(
                "{full} is blocked by {}: {}",
                rule.file,
                match &rule.v1_label {
                    Some(label) => label.clone(),
                    None => format!("[[registry]] prefix = {:?} has blocked = true", rule.prefix),
                }
            ));
        }
        let rest = &full[end..];
        let digest = matches!(candidate.reference, PullRef::Digest(_));
        let mut out = Vec::new();
        for mirror in &rule.mirrors {
            let used = if rule.mirror_by_digest_only {
                digest
            } else {
                match mirror.route {
                    PullFromMirror::All => true,
                    PullFromMirror::DigestOnly => digest,
                    PullFromMirror::TagOnly => !digest,
                }
            };
            if used {
                out.push(rewritten_source(
                    &format!("{}{rest}", mirror.location),
                    rule,
                    mirror.insecure,
                    format!("mirror of {} ({})", rule.label(), rule.file),
                )?);
            }
        }
        // rewriteReference: a wildcard table without a location keeps the
        // reference as it is.
        let (primary, note) = if rule.location.is_empty() {
            (
                full.clone(),
                format!("primary of {} ({})", rule.label(), rule.file),
            )
        } else if rule.location == rule.prefix {
            (
                format!("{}{rest}", rule.location),
                format!("primary of {} ({})", rule.label(), rule.file),
            )
        } else {
            (
                format!("{}{rest}", rule.location),
                format!(
                    "{:?} rewritten to {:?} ({})",
                    rule.prefix, rule.location, rule.file
                ),
            )
        };
        out.push(rewritten_source(&primary, rule, rule.insecure, note)?);
        Ok(out)
    }

    /// The qualified candidates for `image`, or why a short name is refused
    /// (containers/image's `pkg/shortnames`: an alias, else the search
    /// registries).
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
        match self.aliases.get(short) {
            Some(Some(target)) => {
                sifr_plugin::info(&format!("alias {short} = {target:?} ({FILE})"));
                return Ok(vec![Candidate {
                    name: target.clone(),
                    reference,
                }]);
            }
            Some(None) => {
                sifr_plugin::info(&format!(
                    "alias {short} = \"\" ({FILE}): no alias, so the search registries apply"
                ));
            }
            None => {}
        }
        match self.search.len() {
            // Deviation: containers/image refuses a short name when there
            // is neither an alias nor a search registry. sifr's meaning of
            // a short name, as docker's and apptainer's, is Docker Hub; a
            // file that lists no search registries leaves it so.
            0 => Ok(vec![qualified]),
            1 => Ok(vec![search_candidate(&self.search[0], short, &reference)]),
            _ if self.mode == ShortNameMode::Enforcing => Err(format!(
                "short name {short:?} is ambiguous: {FILE} lists {} unqualified-search-registries \
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

/// `registry/short`, normalised as `reference.ParseNormalizedNamed` does
/// (Docker Hub's single names get `library/`).
fn search_candidate(registry: &str, short: &str, reference: &PullRef) -> Candidate {
    let (domain, repository) = reference::normalize(&format!("{registry}/{short}"));
    Candidate {
        name: format!("{domain}/{repository}"),
        reference: reference.clone(),
    }
}

struct RegistriesPolicy;

impl Guest for RegistriesPolicy {
    fn configure(settings: String) -> Result<(), String> {
        let settings: Settings = serde_json::from_str(&settings).map_err(|e| {
            format!(
                "invalid settings: {e}; give the file with settings-files = {{ conf = \"system\" }} \
                 (the system's registries.conf and registries.conf.d) or {{ conf = \"PATH\" }}"
            )
        })?;
        let conf = parse(&settings)?;
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
            let mut refused = None;
            for candidate in &candidates {
                match conf.sources(candidate) {
                    Ok(sources) => plan.extend(sources),
                    Err(reason) => {
                        sifr_plugin::info(&reason);
                        refused.get_or_insert(reason);
                    }
                }
            }
            match (plan.is_empty(), refused) {
                (true, Some(reason)) => Decision::Deny(reason),
                _ => Decision::Plan(plan),
            }
        })
    }
}

sifr_plugin::export!(RegistriesPolicy with_types_in sifr_plugin);
