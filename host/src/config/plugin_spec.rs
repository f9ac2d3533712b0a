//! One `[[plugin]]` entry, checked, as a [`PluginSpec`]: its name, where its
//! code comes from, its pin, and its settings (those read from files too).

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::SITE_CONFIG;
use super::file::{PluginToml, toml_to_json};
use super::layers::Layer;
use crate::reference::WasmDigest;

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

/// A host capability a plugin may be granted (`capabilities = [...]`).
/// Without a grant, the import behind it answers with an error: it is
/// never a way around the sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Capability {
    /// `resolve-digest` (contract 0.2.0): the host asks a registry which
    /// manifest digest a tag names.
    ResolveDigest,
}

impl Capability {
    pub const ALL: &[Capability] = &[Capability::ResolveDigest];

    pub fn name(self) -> &'static str {
        match self {
            Capability::ResolveDigest => "resolve-digest",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|c| c.name() == name)
    }

    /// The names sifr grants, for messages: `resolve-digest`.
    pub fn known() -> String {
        let names: Vec<&str> = Self::ALL.iter().map(|c| c.name()).collect();
        names.join(", ")
    }
}

impl std::fmt::Display for Capability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
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
    /// The pinned sha256, if any.
    pub sha256: Option<WasmDigest>,
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
    /// The host capabilities granted to it (`capabilities = [...]`).
    pub capabilities: Vec<Capability>,
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
            capabilities: Vec::new(),
        }
    }

    /// Whether the config grants it `capability`.
    pub fn granted(&self, capability: Capability) -> bool {
        self.capabilities.contains(&capability)
    }
}

pub(super) fn plugin_spec(
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
        Some(pin) => Some(WasmDigest::parse_pin(&pin).map_err(|_| {
            format!(
                "plugin '{name}': sha256 = {pin:?} is not 64 hex digits; get it with `sha256sum FILE.wasm`"
            )
        })?),
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
    let mut capabilities = Vec::new();
    for given in entry.capabilities {
        let capability = Capability::parse(&given).ok_or_else(|| {
            format!(
                "plugin '{name}': capability {given:?} is unknown; sifr grants: {}",
                Capability::known()
            )
        })?;
        if !capabilities.contains(&capability) {
            capabilities.push(capability);
        }
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
        capabilities,
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
