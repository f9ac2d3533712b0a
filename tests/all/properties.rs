//! Property tests of every parser that takes outside input: image
//! references, digests, config files and registries.conf (through the
//! `registries` plugin, as the host loads it).
//!
//! Each parser gets two kinds of input: text generated from its grammar,
//! which must parse to what was generated and survive a round trip, and
//! arbitrary text, which must be refused with the parser's typed error and
//! never panic.

use crate::strategies;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use proptest::prelude::*;
use proptest::test_runner::Config as Cases;
use sifr::policy::{CompileCache, PolicyEngine};
use sifr::reference::{validate_registry, validate_repository, validate_tag};
use sifr::{
    Config, ConfigSources, Context, Error, ImageRef, ManifestDigest, OnError, Outcome,
    PluginSource, PluginSpec, Policy, PolicyOptions, PullRef, Purpose, SifDigest,
};
use strategies::{GenRef, mutated_ref, reference_like, valid_ref};

/// `n` cases, and no regression files written next to the tests: a
/// failure prints its minimal input, which belongs in a named test.
fn cases(n: u32) -> Cases {
    Cases {
        failure_persistence: None,
        ..Cases::with_cases(n)
    }
}

/// The identity of a reference: what it names, without how it was written
/// (`short_name` is the user's spelling, and a displayed reference is
/// always fully qualified).
fn identity(r: &ImageRef) -> (String, String, Option<String>, Option<String>) {
    (
        r.registry.clone(),
        r.repository.clone(),
        r.tag.clone(),
        r.manifest_digest.as_ref().map(|d| d.to_string()),
    )
}

// ---------------------------------------------------------------------------
// Image references

proptest! {
    #![proptest_config(cases(512))]

    #[test]
    fn a_generated_reference_parses_to_its_parts(r in valid_ref()) {
        let text = r.text();
        let parsed = ImageRef::parse(&text).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(&parsed.registry, &r.canonical_registry(), "{}", text);
        prop_assert_eq!(&parsed.repository, &r.canonical_repository(), "{}", text);
        prop_assert_eq!(&parsed.tag, &r.tag, "{}", text);
        prop_assert_eq!(parsed.manifest_digest.as_ref().map(|d| d.to_string()), r.digest.clone());
        // A short name is remembered as written; a qualified one is not one.
        let short = r.registry.is_none().then(|| r.repository.clone());
        prop_assert_eq!(&parsed.short_name, &short, "{}", text);
    }

    #[test]
    fn parse_display_parse_is_the_same_reference(r in valid_ref()) {
        let first = ImageRef::parse(&r.text()).unwrap();
        let shown = first.to_string();
        let second = ImageRef::parse(&shown)
            .map_err(|e| TestCaseError::fail(format!("{} displays as {shown}: {e}", r.text())))?;
        prop_assert_eq!(identity(&first), identity(&second), "{}", r.text());
        prop_assert_eq!(second.to_string(), shown, "display is a fixed point");
        prop_assert!(second.short_name.is_none(), "a displayed reference is fully qualified");
    }

    #[test]
    fn parsed_parts_are_canonical_and_valid(r in valid_ref()) {
        let parsed = ImageRef::parse(&r.text()).unwrap();
        let registry = &parsed.registry;
        prop_assert!(validate_registry(registry).is_ok(), "{}", registry);
        prop_assert_eq!(registry, &registry.to_ascii_lowercase(), "hosts are lowercase");
        prop_assert!(!registry.ends_with(":443"), "{} keeps :443", registry);
        prop_assert!(
            registry != "index.docker.io" && registry != "registry-1.docker.io",
            "Docker Hub has one name, not {}", registry
        );
        prop_assert_eq!(
            &sifr::reference::canonical_registry(registry), registry,
            "canonicalisation is idempotent"
        );
        prop_assert!(validate_repository(&parsed.repository).is_ok());
        if registry == "docker.io" {
            prop_assert!(parsed.repository.contains('/'), "official images are in library/");
        }
        if let Some(tag) = &parsed.tag {
            prop_assert!(validate_tag(tag).is_ok());
        }
        // Nothing that reaches apptainer's argv can read as a flag or split.
        let shown = parsed.to_string();
        prop_assert!(!shown.starts_with('-'));
        prop_assert!(!shown.chars().any(|c| c.is_whitespace() || c.is_control()));
    }

    #[test]
    fn registry_spellings_of_one_host_are_one_registry(r in valid_ref()) {
        // A short name gets a host, so that every case has one to spell.
        let registry = r.registry.clone().unwrap_or_else(|| "Example.COM".to_string());
        let r = GenRef { registry: Some(registry.clone()), ..r };
        let a = ImageRef::parse(&r.text()).unwrap();
        let upper = GenRef { registry: Some(registry.to_ascii_uppercase()), ..r.clone() };
        prop_assert_eq!(identity(&ImageRef::parse(&upper.text()).unwrap()), identity(&a));
        let after_host = registry.rsplit_once(']').map_or(registry.as_str(), |(_, p)| p);
        if !after_host.contains(':') {
            let with_443 = GenRef { registry: Some(format!("{registry}:443")), ..r.clone() };
            prop_assert_eq!(identity(&ImageRef::parse(&with_443.text()).unwrap()), identity(&a));
        }
    }

    #[test]
    fn arbitrary_strings_never_panic(s in any::<String>()) {
        check_refused_or_valid(&s)?;
    }

    #[test]
    fn reference_like_strings_never_panic(s in reference_like()) {
        check_refused_or_valid(&s)?;
    }

    #[test]
    fn near_miss_references_never_panic(s in mutated_ref()) {
        check_refused_or_valid(&s)?;
    }
}

/// Either `s` parses to a reference that round-trips, or it is refused
/// with a [`sifr::reference::GrammarError`] that names it.
fn check_refused_or_valid(s: &str) -> Result<(), TestCaseError> {
    match ImageRef::parse(s) {
        Ok(parsed) => {
            let again = ImageRef::parse(&parsed.to_string())
                .map_err(|e| TestCaseError::fail(format!("{s:?} parsed but its display: {e}")))?;
            prop_assert_eq!(identity(&parsed), identity(&again), "{:?}", s);
        }
        Err(e) => {
            let e: sifr::reference::GrammarError = e;
            let shown = e.to_string();
            prop_assert!(
                shown.contains(&format!("{s:?}")),
                "{} does not name {:?}",
                shown,
                s
            );
            // The library's error type carries it as an invalid reference.
            prop_assert!(matches!(Error::from(e), Error::InvalidReference(_)));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Digests

proptest! {
    #![proptest_config(cases(256))]

    #[test]
    fn manifest_digests_round_trip(d in strategies::digest()) {
        let parsed = ManifestDigest::parse(&d).unwrap();
        prop_assert_eq!(parsed.as_str(), d.as_str());
        prop_assert_eq!(ManifestDigest::parse(&parsed.to_string()).unwrap(), parsed);
    }

    #[test]
    fn manifest_digests_with_bad_hex_are_refused(
        algorithm in prop_oneof![Just("sha256"), Just("sha512")],
        hex in bad_hex(),
    ) {
        let len = if algorithm == "sha256" { 64 } else { 128 };
        prop_assume!(!(hex.len() == len && is_lower_hex(&hex)));
        let digest = format!("{algorithm}:{hex}");
        prop_assert!(ManifestDigest::parse(&digest).is_err());
    }

    #[test]
    fn manifest_digests_of_other_algorithms_are_refused(
        algorithm in "[a-z0-9+._-]{0,8}",
        hex in "[0-9a-f]{64}|[0-9a-f]{128}",
    ) {
        prop_assume!(algorithm != "sha256" && algorithm != "sha512");
        let digest = format!("{algorithm}:{hex}");
        prop_assert!(ManifestDigest::parse(&digest).is_err());
        prop_assert!(ManifestDigest::parse(&hex).is_err(), "the algorithm is required");
    }

    #[test]
    fn sif_digests_round_trip(hex in "[0-9a-f]{64}") {
        let sif = SifDigest::from_hex(&hex).unwrap();
        prop_assert_eq!(sif.as_str(), format!("sha256:{hex}"));
        prop_assert_eq!(sif.to_string(), sif.as_str());
        let back = SifDigest::from_hex(sif.as_str().strip_prefix("sha256:").unwrap()).unwrap();
        prop_assert_eq!(back, sif);
    }

    #[test]
    fn sif_digests_with_bad_hex_are_refused(hex in bad_hex()) {
        prop_assume!(!(hex.len() == 64 && is_lower_hex(&hex)));
        prop_assert!(SifDigest::from_hex(&hex).is_err());
    }

    #[test]
    fn arbitrary_digest_text_never_panics(s in any::<String>()) {
        if let Ok(d) = ManifestDigest::parse(&s) {
            prop_assert_eq!(d.as_str(), s.as_str());
        }
        if let Ok(d) = SifDigest::from_hex(&s) {
            prop_assert_eq!(d.as_str(), format!("sha256:{s}"));
        }
    }
}

fn is_lower_hex(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Hex of the wrong length, uppercase, or with a character that is not hex.
fn bad_hex() -> impl Strategy<Value = String> {
    prop_oneof![
        "[0-9a-f]{0,63}",
        "[0-9a-f]{65,130}",
        "[0-9a-f]{20}[A-FG-Zg-z:@ ][0-9a-f]{43}",
        "[0-9A-F]{64}",
        "[0-9a-f]{127}",
    ]
}

// ---------------------------------------------------------------------------
// Config files

/// A `[[plugin]]` entry as generated.
#[derive(Debug, Clone)]
struct GenPlugin {
    name: String,
    /// `Ok(builtin)` or `Err(relative path)`.
    source: Result<String, String>,
    /// The pin as written: hex in either case, maybe with `sha256:`.
    sha256: Option<String>,
    on_error: Option<OnError>,
    settings: Vec<(String, toml::Value)>,
}

#[derive(Debug, Clone)]
struct GenConfig {
    timeout_ms: Option<u64>,
    memory_mib: Option<u64>,
    /// `None`: no `[[plugin]]`; `Some([])`: `plugin = []`.
    plugins: Option<Vec<GenPlugin>>,
}

impl GenConfig {
    fn text(&self) -> String {
        let mut s = String::new();
        if self.timeout_ms.is_some() || self.memory_mib.is_some() {
            s.push_str("[sandbox]\n");
            if let Some(ms) = self.timeout_ms {
                s.push_str(&format!("timeout-ms = {ms}\n"));
            }
            if let Some(mib) = self.memory_mib {
                s.push_str(&format!("memory-mib = {mib}\n"));
            }
        }
        match &self.plugins {
            None => {}
            Some(plugins) if plugins.is_empty() => {
                // Before any table header, or it would land in [sandbox].
                s.insert_str(0, "plugin = []\n");
            }
            Some(plugins) => {
                for p in plugins {
                    s.push_str(&format!("\n[[plugin]]\nname = {}\n", quoted(&p.name)));
                    match &p.source {
                        Ok(builtin) => s.push_str(&format!("builtin = {}\n", quoted(builtin))),
                        Err(path) => s.push_str(&format!("path = {}\n", quoted(path))),
                    }
                    if let Some(pin) = &p.sha256 {
                        s.push_str(&format!("sha256 = {}\n", quoted(pin)));
                    }
                    match p.on_error {
                        Some(OnError::FailOpen) => s.push_str("on-error = \"fail-open\"\n"),
                        Some(OnError::FailClosed) => s.push_str("on-error = \"fail-closed\"\n"),
                        None => {}
                    }
                    if !p.settings.is_empty() {
                        s.push_str("[plugin.settings]\n");
                        for (k, v) in &p.settings {
                            s.push_str(&format!("{k} = {v}\n"));
                        }
                    }
                }
            }
        }
        s
    }
}

/// A TOML basic string.
fn quoted(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

fn setting_value() -> impl Strategy<Value = toml::Value> {
    let leaf = prop_oneof![
        any::<String>().prop_map(toml::Value::String),
        any::<i64>().prop_map(toml::Value::Integer),
        any::<bool>().prop_map(toml::Value::Boolean),
    ];
    prop_oneof![
        3 => leaf.clone(),
        1 => prop::collection::vec(leaf, 0..3).prop_map(toml::Value::Array),
    ]
}

fn gen_plugin() -> impl Strategy<Value = GenPlugin> {
    (
        "[a-z0-9][a-z0-9_-]{0,15}",
        prop_oneof![
            prop_oneof![
                Just("default"),
                Just("mirror"),
                Just("registries"),
                Just("tags")
            ]
            .prop_map(|b| Ok(b.to_string())),
            "[a-z]{1,6}(/[a-z]{1,6})?\\.wasm".prop_map(Err),
        ],
        prop::option::of(("(sha256:)?", "[0-9a-fA-F]{64}").prop_map(|(p, h)| format!("{p}{h}"))),
        prop::option::of(prop_oneof![
            Just(OnError::FailOpen),
            Just(OnError::FailClosed)
        ]),
        prop::collection::btree_map("[a-z][a-z0-9_-]{0,8}", setting_value(), 0..4),
    )
        .prop_map(|(name, source, sha256, on_error, settings)| GenPlugin {
            name,
            source,
            sha256,
            on_error,
            settings: settings.into_iter().collect(),
        })
}

fn gen_config() -> impl Strategy<Value = GenConfig> {
    (
        prop::option::of(1u64..=60_000),
        prop::option::of(1u64..=4096),
        prop::option::of(
            prop::collection::vec(gen_plugin(), 0..4).prop_map(|mut ps| {
                // Names are unique in a chain: keep the first of each.
                let mut seen = std::collections::HashSet::new();
                ps.retain(|p| seen.insert(p.name.clone()));
                ps
            }),
        ),
    )
        .prop_map(|(timeout_ms, memory_mib, plugins)| GenConfig {
            timeout_ms,
            memory_mib,
            plugins,
        })
}

/// Settings as the plugin receives them.
fn as_json(value: &toml::Value) -> serde_json::Value {
    match value {
        toml::Value::String(s) => s.clone().into(),
        toml::Value::Integer(i) => (*i).into(),
        toml::Value::Boolean(b) => (*b).into(),
        toml::Value::Array(a) => a.iter().map(as_json).collect(),
        other => panic!("not generated: {other:?}"),
    }
}

fn load_text(
    text: &str,
) -> (
    tempfile::TempDir,
    std::path::PathBuf,
    Result<Config, sifr::ConfigError>,
) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    std::fs::write(&path, text).unwrap();
    let loaded = Config::load(&ConfigSources::only(&path));
    (dir, path, loaded)
}

proptest! {
    #![proptest_config(cases(256))]

    #[test]
    fn a_generated_config_loads_and_its_values_come_back(g in gen_config()) {
        let text = g.text();
        let (dir, path, loaded) = load_text(&text);
        let config = loaded.map_err(|e| TestCaseError::fail(format!("{text}\n{e}")))?;
        prop_assert_eq!(&config.files, &vec![path.clone()]);
        prop_assert_eq!(
            config.sandbox.timeout,
            std::time::Duration::from_millis(g.timeout_ms.unwrap_or(100))
        );
        prop_assert_eq!(config.sandbox.memory_bytes, (g.memory_mib.unwrap_or(64) as usize) << 20);
        let Some(plugins) = &g.plugins else {
            prop_assert_eq!(config.plugins.len(), 1);
            prop_assert_eq!(&config.plugins[0].name, "default");
            return Ok(());
        };
        let names: Vec<&str> = config.plugins.iter().map(|p| p.name.as_str()).collect();
        let expected: Vec<&str> = plugins.iter().map(|p| p.name.as_str()).collect();
        prop_assert_eq!(names, expected, "{}", text);
        for (got, want) in config.plugins.iter().zip(plugins) {
            let source = match &want.source {
                Ok(builtin) => PluginSource::Builtin(builtin.clone()),
                Err(path) => PluginSource::Path(dir.path().join(path)),
            };
            prop_assert_eq!(&got.source, &source);
            let pin = want.sha256.as_ref().map(|p| {
                p.strip_prefix("sha256:").unwrap_or(p).to_ascii_lowercase()
            });
            prop_assert_eq!(got.sha256.as_ref().map(|d| d.to_string()), pin);
            prop_assert_eq!(got.on_error, want.on_error.unwrap_or(OnError::FailClosed));
            let settings: serde_json::Map<String, serde_json::Value> =
                want.settings.iter().map(|(k, v)| (k.clone(), as_json(v))).collect();
            prop_assert_eq!(&got.settings, &serde_json::Value::Object(settings), "{}", text);
            prop_assert!(!got.locked);
            prop_assert_eq!(got.declared_in.as_deref(), Some(path.as_path()));
        }
    }

    #[test]
    fn out_of_range_limits_are_refused_where_written(
        key in prop_oneof![Just("timeout-ms"), Just("memory-mib")],
        value in prop_oneof![Just(0u64), 60_001u64..=u64::from(u32::MAX), Just(i64::MAX as u64)],
        blank_lines in 0usize..3,
    ) {
        let text = format!("[sandbox]\n{}{key} = {value}\n", "\n".repeat(blank_lines));
        let (_dir, path, loaded) = load_text(&text);
        let err = loaded.expect_err("out of range");
        prop_assert_eq!(&err.path, &path);
        prop_assert_eq!(err.location.map(|(line, _)| line), Some(2 + blank_lines), "{}", err);
        prop_assert!(err.message.contains(key), "{}", err);
    }

    #[test]
    fn arbitrary_text_never_panics(text in any::<String>()) {
        check_config_text(&text)?;
    }

    #[test]
    fn toml_like_text_never_panics(text in "[\\[\\]=a-z\\-\"'\n 0-9.{},#_]{0,80}") {
        check_config_text(&text)?;
    }

    #[test]
    fn near_miss_configs_never_panic(
        g in gen_config(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), prop::char::any()), 1..3),
    ) {
        let mut chars: Vec<char> = g.text().chars().collect();
        for (at, c) in edits {
            let i = at.index(chars.len() + 1);
            if i < chars.len() { chars[i] = c } else { chars.push(c) }
        }
        check_config_text(&chars.into_iter().collect::<String>())?;
    }
}

/// Loading `text` either works or fails with a [`sifr::ConfigError`] that
/// names the file, and has a location in the file whenever the text is not
/// TOML at all.
fn check_config_text(text: &str) -> Result<(), TestCaseError> {
    let (_dir, path, loaded) = load_text(text);
    let Err(err) = loaded else { return Ok(()) };
    prop_assert_eq!(&err.path, &path);
    prop_assert!(!err.message.is_empty());
    if let Some((line, col)) = err.location {
        prop_assert!(line >= 1 && col >= 1, "{}", err);
        prop_assert!(
            line <= text.split('\n').count(),
            "{} is past the end of {:?}",
            err,
            text
        );
    }
    if let Err(syntax) = toml::from_str::<toml::Table>(text)
        && syntax.span().is_some()
    {
        prop_assert!(
            err.location.is_some(),
            "a syntax error without a location: {}",
            err
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// registries.conf, through the `registries` plugin as the host loads it

/// One compile cache for the file, so the plugin is compiled once.
fn compile_cache() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| crate::common::process_dir("properties"))
}

/// The `registries` plugin with `conf` as its file.
fn registries_policy(conf: &str) -> Result<Policy, Error> {
    let mut spec = PluginSpec::default_builtin();
    spec.name = "registries".to_string();
    spec.source = PluginSource::Builtin("registries".to_string());
    spec.settings = serde_json::json!({ "conf": conf });
    let mut config = Config {
        plugins: vec![spec],
        ..Config::default()
    };
    // A loaded machine must not turn a slow configure() into a failure.
    config.sandbox.timeout = std::time::Duration::from_secs(20);
    // One engine and one compile cache for every case: a case then pays
    // for loading and configuring the plugin, not for starting an engine.
    static ENGINE: OnceLock<PolicyEngine> = OnceLock::new();
    let engine = ENGINE.get_or_init(|| PolicyEngine::for_config(&config).unwrap());
    let options = PolicyOptions {
        // A folder the cache creates itself (0700): it keeps nothing in
        // one that others can read.
        compile_cache: Some(CompileCache::new(compile_cache().join("plugins"))),
        engine: Some(engine.clone()),
        registry: None,
    };
    // Whichever error type the policy area returns, it converts to the
    // library's.
    Policy::load(&config, &options).map_err(Error::from)
}

/// A `[[registry]]` table as generated. Table `i`'s hosts all start with
/// `r{i}.`, `l{i}.` or `m{i}x`, so no table's prefix matches another's
/// images.
#[derive(Debug, Clone)]
struct GenTable {
    /// `host[/namespace]`; `None` leaves `prefix` unset (it is then the
    /// location).
    prefix: Option<String>,
    location: String,
    insecure: bool,
    blocked: bool,
    mirror_by_digest_only: bool,
    /// Location and `insecure` of each mirror.
    mirrors: Vec<(String, bool)>,
}

impl GenTable {
    fn prefix(&self) -> &str {
        self.prefix.as_deref().unwrap_or(&self.location)
    }
}

#[derive(Debug, Clone)]
struct GenConf {
    search: Option<Vec<String>>,
    mode: Option<&'static str>,
    aliases: Vec<(String, String)>,
    tables: Vec<GenTable>,
}

impl GenConf {
    fn text(&self) -> String {
        let mut s = String::new();
        if let Some(search) = &self.search {
            let list: Vec<String> = search.iter().map(|r| quoted(r)).collect();
            s.push_str(&format!(
                "unqualified-search-registries = [{}]\n",
                list.join(", ")
            ));
        }
        if let Some(mode) = self.mode {
            s.push_str(&format!("short-name-mode = {}\n", quoted(mode)));
        }
        for t in &self.tables {
            s.push_str("\n[[registry]]\n");
            if let Some(prefix) = &t.prefix {
                s.push_str(&format!("prefix = {}\n", quoted(prefix)));
            }
            s.push_str(&format!("location = {}\n", quoted(&t.location)));
            for (key, on) in [
                ("insecure", t.insecure),
                ("blocked", t.blocked),
                ("mirror-by-digest-only", t.mirror_by_digest_only),
            ] {
                if on {
                    s.push_str(&format!("{key} = true\n"));
                }
            }
            for (location, insecure) in &t.mirrors {
                s.push_str(&format!(
                    "[[registry.mirror]]\nlocation = {}\n",
                    quoted(location)
                ));
                if *insecure {
                    s.push_str("insecure = true\n");
                }
            }
        }
        if !self.aliases.is_empty() {
            s.push_str("\n[aliases]\n");
            for (name, target) in &self.aliases {
                s.push_str(&format!("{} = {}\n", quoted(name), quoted(target)));
            }
        }
        s
    }
}

/// `:port` (never 443, which sifr refuses in a location), or nothing.
fn maybe_port() -> impl Strategy<Value = String> {
    prop::option::weighted(
        0.3,
        (1u16..=65535).prop_filter("443 is refused", |p| *p != 443),
    )
    .prop_map(|p| p.map(|p| format!(":{p}")).unwrap_or_default())
}

/// `{lead}.label.label[:port][/namespace]`, with the host in mixed case.
fn location(lead: String) -> impl Strategy<Value = String> {
    (
        prop::collection::vec(strategies::dns_label(), 1..=2),
        maybe_port(),
        prop::option::of(strategies::path_component()),
    )
        .prop_map(move |(labels, port, ns)| {
            let ns = ns.map(|n| format!("/{n}")).unwrap_or_default();
            format!("{lead}.{}{port}{ns}", labels.join("."))
        })
}

fn gen_table(i: usize) -> impl Strategy<Value = GenTable> {
    (
        prop::option::of(location(format!("r{i}"))),
        location(format!("l{i}")),
        any::<bool>(),
        prop::bool::weighted(0.15),
        prop::bool::weighted(0.3),
        prop::collection::vec(
            (0usize..1000, any::<bool>()).prop_flat_map(move |(k, insecure)| {
                location(format!("m{i}x{k}")).prop_map(move |l| (l, insecure))
            }),
            0..3,
        ),
    )
        .prop_map(
            |(prefix, location, insecure, blocked, mirror_by_digest_only, mirrors)| GenTable {
                prefix,
                location,
                insecure,
                blocked,
                mirror_by_digest_only,
                mirrors,
            },
        )
}

fn gen_conf() -> impl Strategy<Value = GenConf> {
    (
        prop::option::of(prop::collection::vec(
            (strategies::dns_label(), maybe_port()).prop_map(|(l, p)| format!("s-{l}.example{p}")),
            0..3,
        )),
        prop::option::of(prop_oneof![
            Just("enforcing"),
            Just("permissive"),
            Just("disabled")
        ]),
        prop::collection::btree_map(
            strategies::namespace_component(),
            strategies::repository().prop_map(|r| format!("alias.example/{r}")),
            0..3,
        ),
        (1usize..5).prop_flat_map(|n| (0..n).map(gen_table).collect::<Vec<_>>()),
    )
        .prop_map(|(search, mode, aliases, tables)| GenConf {
            search,
            mode,
            aliases: aliases.into_iter().collect(),
            tables,
        })
}

/// An image under one table's prefix: the prefix, more path, and a tag or
/// a digest.
fn image_under(prefix: &str) -> impl Strategy<Value = String> + use<> {
    let prefix = prefix.to_string();
    (
        prop::collection::vec(strategies::path_component(), 1..=2),
        prop_oneof![
            strategies::tag().prop_map(|t| format!(":{t}")),
            strategies::digest().prop_map(|d| format!("@{d}")),
        ],
    )
        .prop_map(move |(path, reference)| format!("{prefix}/{}{reference}", path.join("/")))
}

/// A generated file, and an image under each of its tables.
fn conf_and_images() -> impl Strategy<Value = (GenConf, Vec<String>)> {
    gen_conf().prop_flat_map(|conf| {
        let images: Vec<_> = conf
            .tables
            .iter()
            .map(|t| image_under(t.prefix()))
            .collect();
        (Just(conf), images)
    })
}

/// What the plan's source for `location` + the rest of the image is.
fn expected_source(location: &str, rest: &str, plain_http: bool) -> (String, String, String, bool) {
    let r = ImageRef::parse(&format!("{location}{rest}")).unwrap();
    let reference = match (&r.manifest_digest, &r.tag) {
        (Some(d), _) => d.to_string(),
        (None, Some(t)) => t.clone(),
        (None, None) => "latest".to_string(),
    };
    (r.registry, r.repository, reference, plain_http)
}

proptest! {
    // Each case loads the plugin: keep the count modest.
    #![proptest_config(cases(64))]

    #[test]
    fn a_generated_registries_conf_loads_and_plans_by_prefix(
        (conf, images) in conf_and_images()
    ) {
        let text = conf.text();
        let policy = registries_policy(&text)
            .map_err(|e| TestCaseError::fail(format!("{text}\n{e}")))?;
        for (table, image) in conf.tables.iter().zip(&images) {
            check_planned_by(&policy, table, image, &text)?;
        }
        // A short name with an alias is pulled from the alias, its tag
        // kept (no table matches alias.example, so from there alone).
        for (name, target) in &conf.aliases {
            let image = ImageRef::parse(&format!("{name}:1")).unwrap();
            let plan = policy
                .resolve(&image, &Context::new(Purpose::Pull))
                .into_plan()
                .map_err(|e| TestCaseError::fail(format!("{name}: {e}\n{text}")))?;
            let got: Vec<_> = plan
                .iter()
                .map(|s| (s.registry.as_str(), s.repository.as_str(), &s.reference))
                .collect();
            let (registry, repository) = target.split_once('/').unwrap();
            let tag = PullRef::Tag("1".to_string());
            prop_assert_eq!(got, vec![(registry, repository, &tag)], "{}\n{}", name, text);
        }
        check_short_name_search(&policy, &conf, &text)?;
    }

    #[test]
    fn arbitrary_registries_conf_never_crashes_the_host(
        text in prop_oneof![
            any::<String>(),
            "[\\[\\]=a-z\\-\"'\n 0-9.{},/:*]{0,80}",
            (gen_conf(), prop::collection::vec(
                (any::<prop::sample::Index>(), prop::char::any()), 1..3
            ))
                .prop_map(|(conf, edits)| {
                    let mut chars: Vec<char> = conf.text().chars().collect();
                    for (at, c) in edits {
                        let i = at.index(chars.len() + 1);
                        if i < chars.len() { chars[i] = c } else { chars.push(c) }
                    }
                    chars.into_iter().collect()
                }),
        ]
    ) {
        check_registries_text(&text)?;
    }
}

/// `image`, under `table`'s prefix, is planned to the table's mirrors and
/// location, with what follows the prefix kept; or denied if the table
/// blocks it.
fn check_planned_by(
    policy: &Policy,
    table: &GenTable,
    image: &str,
    text: &str,
) -> Result<(), TestCaseError> {
    let parsed = ImageRef::parse(image).unwrap();
    let resolution = policy.resolve(&parsed, &Context::new(Purpose::Pull));
    if table.blocked {
        prop_assert!(
            matches!(resolution.outcome, Outcome::Deny { .. }),
            "{} under a blocked table: {:?}\n{}",
            image,
            resolution.outcome,
            text
        );
        return Ok(());
    }
    let plan = resolution
        .into_plan()
        .map_err(|e| TestCaseError::fail(format!("{image}: {e}\n{text}")))?;
    // What follows the prefix in the canonical image, which each location
    // gets in the prefix's place.
    let canonical = parsed.to_string();
    let prefix = ImageRef::parse(&format!("{}/x", table.prefix())).unwrap();
    let prefix = format!("{}/{}", prefix.registry, prefix.repository);
    let prefix = prefix.strip_suffix("/x").unwrap();
    let rest = canonical
        .strip_prefix(prefix)
        .unwrap_or_else(|| panic!("{canonical} is not under {prefix}"));
    let by_digest = parsed.manifest_digest.is_some();
    let mut expected = Vec::new();
    if !table.mirror_by_digest_only || by_digest {
        for (location, insecure) in &table.mirrors {
            expected.push(expected_source(location, rest, *insecure));
        }
    }
    expected.push(expected_source(&table.location, rest, table.insecure));
    let got: Vec<_> = plan
        .iter()
        .map(|s| {
            let reference = match &s.reference {
                PullRef::Tag(t) => t.clone(),
                PullRef::Digest(d) => d.to_string(),
            };
            (
                s.registry.clone(),
                s.repository.clone(),
                reference,
                s.plain_http,
            )
        })
        .collect();
    prop_assert_eq!(got, expected, "{}\n{}", image, text);
    Ok(())
}

/// A short name without an alias (`zz.short`: no alias name has a `.`)
/// stays on Docker Hub with no search registries, goes to the one search
/// registry there is, and with several is refused as ambiguous unless
/// `short-name-mode` lets every one be tried, in order.
fn check_short_name_search(
    policy: &Policy,
    conf: &GenConf,
    text: &str,
) -> Result<(), TestCaseError> {
    let image = ImageRef::parse("zz.short:1").unwrap();
    let resolution = policy.resolve(&image, &Context::new(Purpose::Pull));
    let search = conf.search.clone().unwrap_or_default();
    let tries_all = matches!(conf.mode, Some("permissive" | "disabled"));
    if search.len() > 1 && !tries_all {
        prop_assert!(
            matches!(resolution.outcome, Outcome::Deny { .. }),
            "an ambiguous short name was planned: {:?}\n{}",
            resolution.outcome,
            text
        );
        return Ok(());
    }
    let plan = resolution
        .into_plan()
        .map_err(|e| TestCaseError::fail(format!("zz.short: {e}\n{text}")))?;
    let got: Vec<(String, String)> = plan
        .iter()
        .map(|s| (s.registry.clone(), s.repository.clone()))
        .collect();
    let expected: Vec<(String, String)> = if search.is_empty() {
        vec![("docker.io".into(), "library/zz.short".into())]
    } else {
        search
            .iter()
            .map(|r| (r.to_ascii_lowercase(), "zz.short".into()))
            .collect()
    };
    prop_assert_eq!(got, expected, "{}", text);
    Ok(())
}

/// The file loads, or is refused at load with a plugin load error; a
/// loaded file then decides every image without failing.
fn check_registries_text(text: &str) -> Result<(), TestCaseError> {
    let policy = match registries_policy(text) {
        Ok(policy) => policy,
        Err(Error::PluginLoad(_)) => return Ok(()),
        Err(other) => return Err(TestCaseError::fail(format!("{text:?}: {other}"))),
    };
    let d = format!("sha256:{}", "0".repeat(64));
    for image in [
        "ubuntu",
        "ncbi/blast:2.14.0",
        "a.io/x:1",
        &format!("quay.io/ns/x@{d}"),
    ] {
        let image = ImageRef::parse(image).unwrap();
        let outcome = policy.resolve(&image, &Context::new(Purpose::Pull)).outcome;
        prop_assert!(
            !matches!(outcome, Outcome::Failed(_)),
            "{:?} made decide() fail for {}: {:?}",
            text,
            image,
            outcome
        );
    }
    Ok(())
}
