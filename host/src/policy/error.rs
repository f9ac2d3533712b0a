//! The policy's errors: a plugin that does not load, one that fails during
//! a call, the engine that does not start, and a chain that ends without a
//! plan. They name plugins, files and limits, never a runtime type of
//! another area.

use std::path::PathBuf;
use std::time::Duration;

/// Why a policy could not be loaded, or gave no plan.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// A plugin could not be loaded.
    #[error(transparent)]
    PluginLoad(#[from] PluginLoadError),

    /// The WebAssembly engine could not be set up.
    #[error("could not start the WebAssembly engine: {source}")]
    Engine {
        #[source]
        source: wasmtime::Error,
    },

    /// The policy refused the image.
    #[error("{image} was denied by plugin '{plugin}': {reason}")]
    Deny {
        image: String,
        plugin: String,
        reason: String,
    },

    /// A plugin failed while deciding (and its policy is fail-closed).
    #[error(transparent)]
    PluginFailed(#[from] PluginFailure),

    /// `sifr site prepare` could not fill the site store.
    #[error("cannot prepare the site store {}: {reason}", store.display())]
    SiteStore {
        store: std::path::PathBuf,
        reason: String,
    },
}

/// Why a plugin did not load.
#[derive(Debug, thiserror::Error)]
pub enum PluginLoadError {
    #[error("plugin '{plugin}': cannot read {}: {source}; check the `path` in its config entry", path.display())]
    Read {
        plugin: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error(
        "plugin '{plugin}' ({}) does not match its pin: expected sha256 {expected}, found {actual}; \
         if the new file is trusted, update `sha256` in its config entry",
        path.display()
    )]
    PinMismatch {
        plugin: String,
        path: PathBuf,
        expected: String,
        actual: String,
    },

    #[error("plugin '{plugin}': `sha256 = {pin:?}` is not 64 hex digits")]
    BadPin { plugin: String, pin: String },

    #[error("plugin '{plugin}': unknown builtin {name:?}; the builtins are: {known}")]
    UnknownBuiltin {
        plugin: String,
        name: String,
        known: String,
    },

    #[error(
        "plugin '{plugin}' ({sha256}) is not a sifr policy plugin: {reason}; \
         build it against the WIT package sifr:policy@0.2.0 or 0.1.0 (see PLUGINS.md)"
    )]
    WrongContract {
        plugin: String,
        sha256: String,
        reason: String,
    },

    #[error("plugin '{plugin}' ({sha256}) could not be compiled: {reason}")]
    Compile {
        plugin: String,
        sha256: String,
        reason: String,
    },

    #[error(
        "plugin '{plugin}' ({sha256}) refused its settings: {message}; {}",
        settings_hint(files)
    )]
    SettingsRejected {
        plugin: String,
        sha256: String,
        message: String,
        /// Settings that came from files (`settings-files`), and the files.
        files: Vec<(String, PathBuf)>,
    },

    #[error("plugin '{plugin}' ({sha256}) failed while loading: {failure}")]
    Failed {
        plugin: String,
        sha256: String,
        failure: Box<PluginFailure>,
    },
}

/// Where to fix refused settings: the files they were read from, if any.
fn settings_hint(files: &[(String, PathBuf)]) -> String {
    if files.is_empty() {
        return "fix [plugin.settings] in its config entry".to_string();
    }
    let files: Vec<String> = files
        .iter()
        .map(|(key, path)| format!("`{key}` from {}", path.display()))
        .collect();
    format!(
        "fix the file (settings-files: {}) or [plugin.settings] in its config entry",
        files.join(", ")
    )
}

/// A plugin misbehaved during a call: it trapped, panicked, ran out of time
/// or memory, or returned something the host refuses to use.
#[derive(Debug, Clone, thiserror::Error)]
#[error("plugin '{plugin}' ({sha256}) {kind} in {function}(); {}", kind.advice())]
pub struct PluginFailure {
    pub plugin: String,
    /// `sha256:` and the first 12 hex digits of the component.
    pub sha256: String,
    /// The exported function that was running: `configure` or `decide`;
    /// `instantiate` when no instance could be made within the limits.
    pub function: &'static str,
    pub kind: FailureKind,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FailureKind {
    #[error("exceeded its {} ms deadline", .0.as_millis())]
    Timeout(Duration),
    /// It was still waiting in WASI (a sleep, a clock wait, a poll) when
    /// its deadline passed.
    #[error("blocked past its {} ms deadline in a clock wait or poll", .0.as_millis())]
    Blocked(Duration),
    /// It ran into a sandbox limit other than memory: instances, tables,
    /// table elements, handles.
    #[error("exceeded a sandbox limit: {0}")]
    ResourceLimit(String),
    #[error("exceeded its {} MiB memory limit", .limit_bytes >> 20)]
    OutOfMemory { limit_bytes: usize },
    #[error("panicked: {0}")]
    Panic(String),
    #[error("trapped: {0}")]
    Trap(String),
    #[error("returned an invalid result: {0}")]
    InvalidOutput(String),
}

impl FailureKind {
    fn advice(&self) -> &'static str {
        match self {
            FailureKind::Timeout(_) | FailureKind::Blocked(_) => {
                "fix the plugin, or raise `timeout-ms` under [sandbox] in the config"
            }
            FailureKind::OutOfMemory { .. } => {
                "fix the plugin, or raise `memory-mib` under [sandbox] in the config"
            }
            FailureKind::Panic(_)
            | FailureKind::Trap(_)
            | FailureKind::InvalidOutput(_)
            | FailureKind::ResourceLimit(_) => {
                "this is a bug in the plugin: report it to its author, or set \
                 `on-error = \"fail-open\"` to skip it"
            }
        }
    }
}
