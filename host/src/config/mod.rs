//! sifr's TOML config: where it comes from and how the layers combine.
//!
//! Layers, read in this order (each optional unless named explicitly):
//!
//! 1. site: `/etc/sifr/config.toml`
//! 2. user: `$XDG_CONFIG_HOME/sifr/config.toml` (`~/.config/sifr/config.toml`)
//! 3. `$SIFR_CONFIG` (must exist when set)
//! 4. `--config FILE` (must exist when given)
//!
//! How they combine:
//!
//! - `[sandbox]` keys: a later layer overrides an earlier one, key by key.
//!   Site-locked plugins run under the site file's `[sandbox]` alone.
//! - `[[plugin]]`: the chain is the `[[plugin]]` list of the *last* layer that
//!   has one (`plugin = []` is an empty chain). Layers replace chains rather
//!   than append to them so that a user can reason about their chain.
//! - Plugins marked `locked = true` in the *site* layer cannot be removed: they
//!   run after every plugin of the winning layer, in site order, so the site
//!   has the last word on every plan. `locked` in any other layer is an error.
//! - With no `[[plugin]]` anywhere, the chain is the built-in default plugin.
//!
//! Unknown keys are errors with file, line and column, never ignored.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::error::ConfigError;

/// The site config, which can lock plugins into every chain.
pub const SITE_CONFIG: &str = "/etc/sifr/config.toml";

/// Which layer a file is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layer {
    Site,
    User,
    Env,
    Cli,
}

/// The files to read, in order. Build one with [`ConfigSources::standard`],
/// or name files yourself (embedders and tests).
#[derive(Debug, Clone, Default)]
pub struct ConfigSources {
    /// Skipped when missing.
    pub site: Option<PathBuf>,
    /// Skipped when missing.
    pub user: Option<PathBuf>,
    /// Must exist.
    pub env: Option<PathBuf>,
    /// Must exist.
    pub cli: Option<PathBuf>,
    /// Where `settings-files = { KEY = "system" }` finds
    /// `etc/containers/registries.conf` and its `registries.conf.d`
    /// (containers/image's `RootForImplicitAbsolutePaths`); `None` is `/`.
    /// For tests and chroots: the CLI never sets it.
    pub containers_root: Option<PathBuf>,
}

impl ConfigSources {
    /// The standard places: the site file, the user's XDG config, `$SIFR_CONFIG`
    /// and the given `--config` file.
    pub fn standard(cli: Option<PathBuf>) -> Self {
        Self {
            site: Some(PathBuf::from(SITE_CONFIG)),
            user: dirs::config_dir().map(|d| d.join("sifr").join("config.toml")),
            env: std::env::var_os("SIFR_CONFIG")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from),
            cli,
            containers_root: None,
        }
    }

    /// Only the given file (no site or user layers).
    pub fn only(path: impl Into<PathBuf>) -> Self {
        Self {
            cli: Some(path.into()),
            ..Self::default()
        }
    }
}

/// Sandbox limits for every plugin call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SandboxLimits {
    /// Wall-clock deadline of one call (`configure` or `decide`).
    pub timeout: Duration,
    /// Linear memory a plugin instance may grow to.
    pub memory_bytes: usize,
}

impl Default for SandboxLimits {
    fn default() -> Self {
        Self {
            timeout: Duration::from_millis(100),
            memory_bytes: 64 << 20,
        }
    }
}

/// What to do when a plugin fails (traps, times out, returns garbage).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnError {
    /// Stop: nothing is pulled. The default.
    #[default]
    FailClosed,
    /// Skip this plugin with a warning and go on with the plan it was given.
    FailOpen,
}

/// Where a plugin's code comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PluginSource {
    /// Embedded in the sifr binary.
    Builtin(String),
    /// A `.wasm` component on disk (absolute, or resolved against its config file).
    Path(PathBuf),
}

/// One entry of the chain, as configured.
#[derive(Debug, Clone)]
pub struct PluginSpec {
    pub name: String,
    pub source: PluginSource,
    /// The pinned sha256 (lowercase hex), if any.
    pub sha256: Option<String>,
    /// The `settings` table, as the JSON object the plugin receives.
    pub settings: serde_json::Value,
    pub on_error: OnError,
    /// Locked by the site config.
    pub locked: bool,
    /// The config file that declared it.
    pub declared_in: Option<PathBuf>,
    /// The settings read from files (`settings-files`): each key and the
    /// file it came from, so that a refusal can name the file.
    pub settings_files: Vec<(String, PathBuf)>,
}

impl PluginSpec {
    /// The built-in default plugin, as used when nothing is configured.
    pub fn default_builtin() -> Self {
        Self {
            name: "default".to_string(),
            source: PluginSource::Builtin("default".to_string()),
            sha256: None,
            settings: serde_json::Value::Object(Default::default()),
            on_error: OnError::FailClosed,
            locked: false,
            declared_in: None,
            settings_files: Vec::new(),
        }
    }
}

/// The combined config.
#[derive(Debug, Clone)]
pub struct Config {
    /// The limits of every plugin the site did not lock: all layers' `[sandbox]`
    /// keys, the later overriding the earlier.
    pub sandbox: SandboxLimits,
    /// The limits of site-locked plugins: the site file's `[sandbox]` alone.
    /// No other layer can lower them (to make a fail-open site plugin time
    /// out and be skipped) or raise them.
    pub site_sandbox: SandboxLimits,
    pub plugins: Vec<PluginSpec>,
    /// `[apptainer] path`: the apptainer (or singularity) binary.
    pub apptainer: Option<PathBuf>,
    /// `[apptainer] pull-timeout`: the limit on one pull attempt.
    pub pull_timeout: Option<Duration>,
    /// `[cache] dir`: the SIF cache (`$SIFR_CACHE_DIR` overrides it).
    pub cache_dir: Option<PathBuf>,
    /// `[cache] trusted-owners`, as uids: whose records and blobs a shared
    /// cache may use besides your own (see [`crate::cache::Trust`]). A later
    /// layer's list replaces an earlier one's.
    pub trusted_owners: Vec<u32>,
    /// The files that were read, in order.
    pub files: Vec<PathBuf>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            sandbox: SandboxLimits::default(),
            site_sandbox: SandboxLimits::default(),
            plugins: vec![PluginSpec::default_builtin()],
            apptainer: None,
            pull_timeout: None,
            cache_dir: None,
            trusted_owners: Vec::new(),
            files: Vec::new(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct FileToml {
    #[serde(default)]
    sandbox: Option<SandboxToml>,
    #[serde(default)]
    plugin: Option<Vec<toml::Spanned<PluginToml>>>,
    #[serde(default)]
    apptainer: Option<ApptainerToml>,
    #[serde(default)]
    cache: Option<CacheToml>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct ApptainerToml {
    path: Option<PathBuf>,
    pull_timeout: Option<toml::Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct CacheToml {
    dir: Option<PathBuf>,
    trusted_owners: Option<Vec<toml::Spanned<String>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct SandboxToml {
    timeout_ms: Option<toml::Spanned<u64>>,
    memory_mib: Option<toml::Spanned<u64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct PluginToml {
    name: String,
    path: Option<PathBuf>,
    builtin: Option<String>,
    sha256: Option<String>,
    #[serde(default)]
    settings: toml::Table,
    /// Settings whose value is a file's text, read by the host (plugins
    /// have no filesystem): `settings-files = { conf = "/etc/containers/registries.conf" }`.
    #[serde(default)]
    settings_files: std::collections::BTreeMap<String, PathBuf>,
    #[serde(default)]
    on_error: OnError,
    #[serde(default)]
    locked: bool,
}

impl Config {
    /// Read and combine the layers.
    pub fn load(sources: &ConfigSources) -> Result<Self, ConfigError> {
        let layers = [
            (Layer::Site, &sources.site, false),
            (Layer::User, &sources.user, false),
            (Layer::Env, &sources.env, true),
            (Layer::Cli, &sources.cli, true),
        ];
        let mut config = Config::default();
        let mut chain: Option<Vec<PluginSpec>> = None;
        let mut site_locked: Vec<PluginSpec> = Vec::new();
        let mut chain_from_site = false;
        for (layer, path, required) in layers {
            let Some(path) = path else { continue };
            let text = match std::fs::read_to_string(path) {
                Ok(text) => text,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => continue,
                Err(e) => {
                    return Err(ConfigError {
                        path: path.clone(),
                        location: None,
                        message: format!(
                            "cannot read the config file: {e}{}",
                            match layer {
                                Layer::Env => "; check $SIFR_CONFIG",
                                Layer::Cli => "; check --config",
                                _ => "",
                            }
                        ),
                    });
                }
            };
            config.files.push(path.clone());
            let file = parse_layer(path, &text)?;
            let err = |span: Range<usize>, message: String| ConfigError {
                path: path.clone(),
                location: Some(line_col(&text, span.start)),
                message,
            };
            if let Some(sandbox) = file.sandbox {
                let limits = sandbox_limits(config.sandbox, sandbox, &err)?;
                if layer == Layer::Site {
                    config.site_sandbox = limits;
                }
                config.sandbox = limits;
            }
            let dir = path.parent().unwrap_or(Path::new("."));
            if let Some(apptainer) = file.apptainer {
                if let Some(p) = apptainer.path {
                    config.apptainer = Some(dir.join(p));
                }
                if let Some(timeout) = apptainer.pull_timeout {
                    let span = timeout.span();
                    let text = timeout.into_inner();
                    let parsed = humantime::parse_duration(&text).map_err(|e| {
                        err(span, format!(
                            "pull-timeout = {text:?} is not a duration ({e}); write e.g. \"20m\" or \"1h 30m\""
                        ))
                    })?;
                    config.pull_timeout = Some(parsed);
                }
            }
            if let Some(cache) = file.cache {
                if let Some(d) = cache.dir {
                    config.cache_dir = Some(dir.join(d));
                }
                if let Some(owners) = cache.trusted_owners {
                    let mut uids = Vec::with_capacity(owners.len());
                    for owner in owners {
                        let span = owner.span();
                        let uid = crate::cache::owner_uid(owner.get_ref())
                            .map_err(|m| err(span, format!("trusted-owners: {m}")))?;
                        uids.push(uid);
                    }
                    config.trusted_owners = uids;
                }
            }
            if let Some(entries) = file.plugin {
                let mut specs = Vec::with_capacity(entries.len());
                for entry in entries {
                    let span = entry.span();
                    let root = sources.containers_root.as_deref().unwrap_or(Path::new("/"));
                    let spec = plugin_spec(entry.into_inner(), dir, path, layer, root)
                        .map_err(|m| err(span, m))?;
                    specs.push(spec);
                }
                if layer == Layer::Site {
                    site_locked = specs.iter().filter(|s| s.locked).cloned().collect();
                }
                chain_from_site = layer == Layer::Site;
                chain = Some(specs);
            }
        }
        if let Some(mut chain) = chain {
            if !chain_from_site {
                chain.extend(site_locked);
            }
            let mut seen = std::collections::HashSet::new();
            for spec in &chain {
                if !seen.insert(spec.name.as_str()) {
                    return Err(ConfigError {
                        path: spec.declared_in.clone().unwrap_or_default(),
                        location: None,
                        message: format!(
                            "plugin name '{}' is used twice in the chain; give each entry its own name \
                             (a site-locked plugin cannot be redeclared)",
                            spec.name
                        ),
                    });
                }
            }
            config.plugins = chain;
        }
        Ok(config)
    }
}

/// `base` with the keys of one `[sandbox]` table applied, each checked.
fn sandbox_limits(
    mut limits: SandboxLimits,
    sandbox: SandboxToml,
    err: &impl Fn(Range<usize>, String) -> ConfigError,
) -> Result<SandboxLimits, ConfigError> {
    if let Some(ms) = sandbox.timeout_ms {
        let span = ms.span();
        let ms = ms.into_inner();
        if !(1..=60_000).contains(&ms) {
            return Err(err(
                span,
                format!("timeout-ms = {ms} is out of range: give 1 to 60000 milliseconds"),
            ));
        }
        limits.timeout = Duration::from_millis(ms);
    }
    if let Some(mib) = sandbox.memory_mib {
        let span = mib.span();
        let mib = mib.into_inner();
        if !(1..=4096).contains(&mib) {
            return Err(err(
                span,
                format!("memory-mib = {mib} is out of range: give 1 to 4096 MiB"),
            ));
        }
        limits.memory_bytes = (mib as usize) << 20;
    }
    Ok(limits)
}

fn parse_layer(path: &Path, text: &str) -> Result<FileToml, ConfigError> {
    toml::from_str(text).map_err(|e| ConfigError {
        path: path.to_path_buf(),
        location: e.span().map(|span| line_col(text, span.start)),
        message: e.message().trim_end().to_string(),
    })
}

fn plugin_spec(
    entry: PluginToml,
    dir: &Path,
    file: &Path,
    layer: Layer,
    containers_root: &Path,
) -> Result<PluginSpec, String> {
    let name = entry.name;
    let valid_name = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        && name.as_bytes()[0].is_ascii_alphanumeric();
    if !valid_name {
        return Err(format!(
            "plugin name {name:?} is not valid: use 1 to 64 lowercase letters, digits, '-' or '_'"
        ));
    }
    let source = match (entry.path, entry.builtin) {
        (Some(path), None) => PluginSource::Path(dir.join(path)),
        (None, Some(builtin)) => PluginSource::Builtin(builtin),
        (Some(_), Some(_)) => {
            return Err(format!(
                "plugin '{name}' has both `path` and `builtin`: give exactly one"
            ));
        }
        (None, None) => {
            return Err(format!(
                "plugin '{name}' needs `path = \"....wasm\"` or `builtin = \"NAME\"`"
            ));
        }
    };
    let sha256 = match entry.sha256 {
        Some(pin) => {
            let hex = pin
                .strip_prefix("sha256:")
                .unwrap_or(&pin)
                .to_ascii_lowercase();
            if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(format!(
                    "plugin '{name}': sha256 = {pin:?} is not 64 hex digits; get it with `sha256sum FILE.wasm`"
                ));
            }
            Some(hex)
        }
        None => None,
    };
    let mut settings = entry.settings;
    let mut settings_files = Vec::new();
    for (key, file) in entry.settings_files {
        if file.as_os_str() == crate::registries_conf::SYSTEM {
            system_registries_conf(
                &name,
                &key,
                containers_root,
                &mut settings,
                &mut settings_files,
            )?;
            continue;
        }
        let file = dir.join(file);
        settings_files.push((key.clone(), file.clone()));
        if settings.contains_key(&key) {
            return Err(format!(
                "plugin '{name}': `{key}` is given both in settings and in settings-files; give it once"
            ));
        }
        let text = read_capped(&file, MAX_SETTINGS_FILE).map_err(|e| {
            format!(
                "plugin '{name}': cannot read {} for setting `{key}`: {e}; check `settings-files`",
                file.display()
            )
        })?;
        settings.insert(key, toml::Value::String(text));
    }
    if entry.locked && layer != Layer::Site {
        return Err(format!(
            "plugin '{name}': `locked` is only honoured in the site config ({SITE_CONFIG})"
        ));
    }
    Ok(PluginSpec {
        name,
        source,
        sha256,
        settings: toml_to_json(toml::Value::Table(settings)),
        on_error: entry.on_error,
        locked: entry.locked,
        declared_in: Some(file.to_path_buf()),
        settings_files,
    })
}

/// `settings-files = { KEY = "system" }`: the system's registries.conf as
/// the setting KEY, and its drop-ins as KEY-drop-ins (see
/// [`crate::registries_conf`]).
fn system_registries_conf(
    name: &str,
    key: &str,
    root: &Path,
    settings: &mut toml::Table,
    settings_files: &mut Vec<(String, PathBuf)>,
) -> Result<(), String> {
    let drop_ins_key = format!("{key}-drop-ins");
    for given in [key, drop_ins_key.as_str()] {
        if settings.contains_key(given) {
            return Err(format!(
                "plugin '{name}': `{given}` is given both in settings and by settings-files \
                 ({key} = \"system\"); give it once"
            ));
        }
    }
    let files = crate::registries_conf::read_system(root, |p| read_capped(p, MAX_SETTINGS_FILE))
        .map_err(|e| format!("plugin '{name}': setting `{key}` = \"system\": {e}"))?;
    let (main, text) = files.main;
    settings_files.push((key.to_string(), main));
    settings.insert(key.to_string(), toml::Value::String(text));
    let mut drop_ins = Vec::new();
    for (path, text) in files.drop_ins {
        let mut table = toml::Table::new();
        table.insert(
            "path".into(),
            toml::Value::String(path.display().to_string()),
        );
        table.insert("text".into(), toml::Value::String(text));
        drop_ins.push(toml::Value::Table(table));
        settings_files.push((drop_ins_key.clone(), path));
    }
    settings.insert(drop_ins_key, toml::Value::Array(drop_ins));
    Ok(())
}

/// Largest file `settings-files` may name.
const MAX_SETTINGS_FILE: u64 = 1 << 20;

/// A text file of at most `max` bytes.
fn read_capped(path: &Path, max: u64) -> std::io::Result<String> {
    use std::io::Read;
    let mut text = String::new();
    std::fs::File::open(path)?
        .take(max + 1)
        .read_to_string(&mut text)?;
    if text.len() as u64 > max {
        return Err(std::io::Error::other(format!(
            "it is larger than {max} bytes"
        )));
    }
    Ok(text)
}

/// Settings reach plugins as JSON; TOML datetimes become RFC 3339 strings.
pub fn toml_to_json(value: toml::Value) -> serde_json::Value {
    use serde_json::Value as J;
    match value {
        toml::Value::String(s) => J::String(s),
        toml::Value::Integer(i) => J::from(i),
        toml::Value::Float(f) => serde_json::Number::from_f64(f).map_or(J::Null, J::Number),
        toml::Value::Boolean(b) => J::Bool(b),
        toml::Value::Datetime(d) => J::String(d.to_string()),
        toml::Value::Array(a) => J::Array(a.into_iter().map(toml_to_json).collect()),
        toml::Value::Table(t) => {
            J::Object(t.into_iter().map(|(k, v)| (k, toml_to_json(v))).collect())
        }
    }
}

/// Read a standalone settings file (for `sifr plugin check --settings`).
pub fn load_settings_file(path: &Path) -> Result<serde_json::Value, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        path: path.to_path_buf(),
        location: None,
        message: format!("cannot read the settings file: {e}"),
    })?;
    let table: toml::Table = toml::from_str(&text).map_err(|e| ConfigError {
        path: path.to_path_buf(),
        location: e.span().map(|span| line_col(&text, span.start)),
        message: e.message().trim_end().to_string(),
    })?;
    Ok(toml_to_json(toml::Value::Table(table)))
}

/// 1-based line and column (in characters) of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    fn names(config: &Config) -> Vec<&str> {
        config.plugins.iter().map(|p| p.name.as_str()).collect()
    }

    #[test]
    fn no_config_means_the_default_plugin_alone() {
        let config = Config::load(&ConfigSources::default()).unwrap();
        assert_eq!(names(&config), ["default"]);
        assert_eq!(config.sandbox, SandboxLimits::default());
    }

    #[test]
    fn unknown_keys_are_errors_with_file_line_and_column() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            dir.path(),
            "c.toml",
            "[sandbox]\ntimeout-ms = 50\n\n[[plugin]]\nname = \"a\"\nbuiltin = \"default\"\nsettngs = {}\n",
        );
        let err = Config::load(&ConfigSources::only(&path)).unwrap_err();
        assert_eq!(err.path, path);
        assert_eq!(err.location, Some((7, 1)), "{err}");
        assert!(err.message.contains("unknown field `settngs`"), "{err}");
        let shown = err.to_string();
        assert!(shown.contains("c.toml:7:1"), "{shown}");
    }

    #[test]
    fn trusted_owners_are_resolved_to_uids_and_checked_where_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            dir.path(),
            "c.toml",
            "[cache]\ndir = \"/shared/sifr\"\ntrusted-owners = [\"root\", \"4242\"]\n",
        );
        let config = Config::load(&ConfigSources::only(&path)).unwrap();
        assert_eq!(config.trusted_owners, [0, 4242]);
        assert_eq!(config.cache_dir, Some(PathBuf::from("/shared/sifr")));

        let path = write(
            dir.path(),
            "c.toml",
            "[cache]\ntrusted-owners = [\"root\",\n  \"no-such-user-sifr\"]\n",
        );
        let err = Config::load(&ConfigSources::only(&path)).unwrap_err();
        assert_eq!(err.location, Some((3, 3)), "{err}");
        assert!(
            err.message.contains("no user named \"no-such-user-sifr\""),
            "{err}"
        );

        let path = write(
            dir.path(),
            "c.toml",
            "[cache]\ntrusted-owner = [\"root\"]\n",
        );
        let err = Config::load(&ConfigSources::only(&path)).unwrap_err();
        assert_eq!(err.location, Some((2, 1)), "{err}");
        assert!(
            err.message.contains("unknown field `trusted-owner`"),
            "{err}"
        );

        // A later layer's list replaces an earlier one's.
        let site = write(
            dir.path(),
            "site.toml",
            "[cache]\ntrusted-owners = [\"0\"]\n",
        );
        let user = write(dir.path(), "user.toml", "[cache]\ntrusted-owners = []\n");
        let config = Config::load(&ConfigSources {
            site: Some(site),
            user: Some(user),
            ..Default::default()
        })
        .unwrap();
        assert!(config.trusted_owners.is_empty());
    }

    #[test]
    fn semantic_errors_point_at_the_entry() {
        let dir = tempfile::tempdir().unwrap();
        let cases = [
            ("[[plugin]]\nname = \"a\"\n", "needs `path"),
            (
                "[[plugin]]\nname = \"a\"\npath = \"x.wasm\"\nbuiltin = \"default\"\n",
                "both",
            ),
            (
                "[[plugin]]\nname = \"A B\"\nbuiltin = \"default\"\n",
                "not valid",
            ),
            (
                "[[plugin]]\nname = \"a\"\nbuiltin = \"default\"\nsha256 = \"abc\"\n",
                "64 hex",
            ),
            (
                "[[plugin]]\nname = \"a\"\nbuiltin = \"default\"\nlocked = true\n",
                "only honoured in the site",
            ),
            (
                "[[plugin]]\nname = \"a\"\nbuiltin = \"default\"\non-error = \"ignore\"\n",
                "unknown variant",
            ),
            ("[sandbox]\ntimeout-ms = 0\n", "out of range"),
            ("[sandbox]\nmemory-mib = \"lots\"\n", "invalid type"),
            (
                "[[plugin]]\nname = \"a\"\nbuiltin = \"default\"\n[[plugin]]\nname = \"a\"\nbuiltin = \"default\"\n",
                "used twice",
            ),
            ("plugin = 3", "invalid type"),
            ("[sandbox\n", "unclosed table"),
        ];
        for (text, expect) in cases {
            let path = write(dir.path(), "c.toml", text);
            let err = Config::load(&ConfigSources::only(&path)).unwrap_err();
            assert!(err.to_string().contains(expect), "{text:?}: {err}");
        }
    }

    #[test]
    fn a_later_layer_replaces_the_chain_and_overrides_limits() {
        let dir = tempfile::tempdir().unwrap();
        let site = write(
            dir.path(),
            "site.toml",
            "[sandbox]\ntimeout-ms = 50\nmemory-mib = 32\n[[plugin]]\nname = \"site-a\"\nbuiltin = \"default\"\n",
        );
        let user = write(
            dir.path(),
            "user.toml",
            "[sandbox]\ntimeout-ms = 200\n[[plugin]]\nname = \"mine\"\npath = \"p/mine.wasm\"\n",
        );
        let config = Config::load(&ConfigSources {
            site: Some(site),
            user: Some(user),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(names(&config), ["mine"]);
        assert_eq!(config.sandbox.timeout, Duration::from_millis(200));
        assert_eq!(config.sandbox.memory_bytes, 32 << 20);
        assert_eq!(
            config.plugins[0].source,
            PluginSource::Path(dir.path().join("p/mine.wasm")),
            "relative paths resolve against the config file"
        );
    }

    #[test]
    fn site_locked_plugins_cannot_be_removed_and_run_last() {
        let dir = tempfile::tempdir().unwrap();
        let site = write(
            dir.path(),
            "site.toml",
            "[[plugin]]\nname = \"optional\"\nbuiltin = \"default\"\n\
             [[plugin]]\nname = \"enforced\"\nbuiltin = \"default\"\nlocked = true\n",
        );
        let user = write(dir.path(), "user.toml", "plugin = []\n");
        let cli = write(
            dir.path(),
            "cli.toml",
            "[[plugin]]\nname = \"mine\"\nbuiltin = \"default\"\n",
        );
        let load = |user: Option<&PathBuf>, cli: Option<&PathBuf>| {
            Config::load(&ConfigSources {
                site: Some(site.clone()),
                user: user.cloned(),
                cli: cli.cloned(),
                env: None,
                containers_root: None,
            })
            .unwrap()
        };
        assert_eq!(names(&load(None, None)), ["optional", "enforced"]);
        assert_eq!(names(&load(Some(&user), None)), ["enforced"]);
        assert_eq!(names(&load(Some(&user), Some(&cli))), ["mine", "enforced"]);
    }

    #[test]
    fn missing_optional_layers_are_skipped_but_named_files_must_exist() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.toml");
        let config = Config::load(&ConfigSources {
            site: Some(missing.clone()),
            user: Some(missing.clone()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(names(&config), ["default"]);
        let err = Config::load(&ConfigSources::only(&missing)).unwrap_err();
        assert!(err.to_string().contains("check --config"), "{err}");
    }

    #[test]
    fn settings_files_are_read_by_the_host() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "registries.conf",
            "[[registry]]\nlocation = \"a.io\"\n",
        );
        let path = write(
            dir.path(),
            "c.toml",
            "[[plugin]]\nname = \"r\"\nbuiltin = \"registries\"\nsettings-files = { conf = \"registries.conf\" }\n",
        );
        let config = Config::load(&ConfigSources::only(&path)).unwrap();
        assert_eq!(
            config.plugins[0].settings,
            serde_json::json!({"conf": "[[registry]]\nlocation = \"a.io\"\n"})
        );
        let path = write(
            dir.path(),
            "c.toml",
            "[[plugin]]\nname = \"r\"\nbuiltin = \"registries\"\nsettings-files = { conf = \"nope.conf\" }\n",
        );
        let err = Config::load(&ConfigSources::only(&path))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("nope.conf") && err.contains("check `settings-files`"),
            "{err}"
        );
    }

    #[test]
    fn settings_become_json() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            dir.path(),
            "c.toml",
            "[[plugin]]\nname = \"m\"\nbuiltin = \"mirror\"\n[plugin.settings]\nregistries = [\"docker.io\"]\n\
             when = 1979-05-27T07:32:00Z\n[[plugin.settings.mirrors]]\nregistry = \"m.example:5000\"\n",
        );
        let config = Config::load(&ConfigSources::only(&path)).unwrap();
        assert_eq!(
            config.plugins[0].settings,
            serde_json::json!({
                "registries": ["docker.io"],
                "when": "1979-05-27T07:32:00Z",
                "mirrors": [{"registry": "m.example:5000"}],
            })
        );
    }
}
