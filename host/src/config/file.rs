//! One config file's TOML, parsed strictly: unknown keys are errors with
//! file, line and column. Also standalone settings files, and how TOML
//! settings become the JSON plugins receive.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{ConfigError, OnError};

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct FileToml {
    #[serde(default)]
    pub(super) sandbox: Option<SandboxToml>,
    #[serde(default)]
    pub(super) plugin: Option<Vec<toml::Spanned<PluginToml>>>,
    #[serde(default)]
    pub(super) apptainer: Option<ApptainerToml>,
    #[serde(default)]
    pub(super) cache: Option<CacheToml>,
    #[serde(default)]
    pub(super) registry: Option<RegistryToml>,
    #[serde(default)]
    pub(super) site: Option<toml::Spanned<SiteToml>>,
}

/// `[site]`: the site file's own settings, refused in any other layer.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct SiteToml {
    /// The site store: compiled site-locked plugins, root's alone.
    pub(super) store: Option<PathBuf>,
    /// The host capabilities a plugin the site did not lock may be granted.
    pub(super) user_capabilities: Option<Vec<toml::Spanned<String>>>,
}

/// `[registry]`: how the host asks registries for digests.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct RegistryToml {
    pub(super) timeout: Option<toml::Spanned<String>>,
    pub(super) digest_ttl: Option<toml::Spanned<String>>,
    pub(super) stale_if_error: Option<toml::Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct ApptainerToml {
    pub(super) path: Option<PathBuf>,
    pub(super) pull_timeout: Option<toml::Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct CacheToml {
    pub(super) dir: Option<PathBuf>,
    pub(super) trusted_owners: Option<Vec<toml::Spanned<String>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct SandboxToml {
    pub(super) timeout_ms: Option<toml::Spanned<u64>>,
    pub(super) memory_mib: Option<toml::Spanned<u64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct PluginToml {
    pub(super) name: String,
    pub(super) path: Option<PathBuf>,
    pub(super) builtin: Option<String>,
    pub(super) sha256: Option<String>,
    #[serde(default)]
    pub(super) settings: toml::Table,
    /// Settings whose value is a file's text, read by the host (plugins
    /// have no filesystem): `settings-files = { conf = "/etc/containers/registries.conf" }`.
    #[serde(default)]
    pub(super) settings_files: std::collections::BTreeMap<String, PathBuf>,
    #[serde(default)]
    pub(super) on_error: OnError,
    #[serde(default)]
    pub(super) locked: bool,
    /// Host capabilities granted to this plugin: `["resolve-digest"]`.
    #[serde(default)]
    pub(super) capabilities: Vec<String>,
}

pub(super) fn parse_layer(path: &Path, text: &str) -> Result<FileToml, ConfigError> {
    toml::from_str(text).map_err(|e| ConfigError {
        path: path.to_path_buf(),
        location: e.span().map(|span| line_col(text, span.start)),
        message: e.message().trim_end().to_string(),
    })
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
pub(super) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}
