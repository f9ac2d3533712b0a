//! Typed errors, so that embedders can match on what went wrong.
//!
//! Every message says what failed, to what, and what to do next.
//!
//! Each area owns its errors (`config::ConfigError`, `policy::PolicyError`
//! and the plugin errors in `policy::error`, `apptainer::DiscoverError` and
//! `AttemptFailure`, `reference::GrammarError`); [`Error`] gathers them for
//! the runtime and embedders. The areas never import this module, so no
//! module circles back on itself.

pub use crate::apptainer::{Attempt, DiscoverError};
pub use crate::config::ConfigError;
pub use crate::policy::error::{FailureKind, PluginFailure, PluginLoadError, PolicyError};
use crate::reference::GrammarError;

/// Anything the sifr library can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The user's image reference does not parse.
    #[error(transparent)]
    InvalidReference(#[from] GrammarError),

    /// A config file is missing, unreadable or malformed.
    #[error(transparent)]
    Config(#[from] ConfigError),

    /// A plugin could not be loaded: unreadable, not a component, the wrong
    /// contract, a pin mismatch, or settings it refused.
    #[error(transparent)]
    PluginLoad(#[from] PluginLoadError),

    /// A plugin failed while deciding (and its policy is fail-closed).
    #[error(transparent)]
    PluginFailed(#[from] PluginFailure),

    /// The policy refused the image.
    #[error("{image} was denied by plugin '{plugin}': {reason}")]
    Deny {
        image: String,
        plugin: String,
        reason: String,
    },

    /// apptainer is missing or cannot be run.
    #[error(transparent)]
    Apptainer(#[from] DiscoverError),

    /// Every source of the plan failed.
    #[error(
        "could not pull {image}: every source failed:{}\nCheck the network and the registry, or `sifr resolve --explain {image}` for the plan",
        attempts.iter().enumerate().map(|(i, a)| format!("\n  {}. {}: {}", i + 1, a.uri, a.failure)).collect::<String>()
    )]
    PullFailed {
        image: String,
        attempts: Vec<Attempt>,
    },

    /// No cache directory is set, and there is no user cache directory to
    /// fall back on.
    #[error("no cache directory: set SIFR_CACHE_DIR or `[cache] dir` in the config")]
    NoCacheDir,

    /// The SIF cache failed (full, unreadable, unwritable).
    #[error(transparent)]
    Cache(#[from] crate::cache::CacheError),

    /// The WebAssembly engine that runs the plugins could not be set up.
    #[error("could not start the WebAssembly engine: {source}")]
    Engine {
        #[source]
        source: wasmtime::Error,
    },

    /// `sifr site prepare` could not fill the site store.
    #[error("cannot prepare the site store {}: {reason}", store.display())]
    SiteStore {
        store: std::path::PathBuf,
        reason: String,
    },

    /// An I/O error outside the plugins (compile cache and the like).
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

/// The policy's errors keep their place among sifr's: a plugin that does
/// not load is still [`Error::PluginLoad`], a denial [`Error::Deny`], so
/// that embedders match on one enum.
impl From<PolicyError> for Error {
    fn from(error: PolicyError) -> Self {
        match error {
            PolicyError::PluginLoad(e) => Self::PluginLoad(e),
            PolicyError::Engine { source } => Self::Engine { source },
            PolicyError::Deny {
                image,
                plugin,
                reason,
            } => Self::Deny {
                image,
                plugin,
                reason,
            },
            PolicyError::PluginFailed(e) => Self::PluginFailed(e),
            PolicyError::SiteStore { store, reason } => Self::SiteStore { store, reason },
        }
    }
}

impl Error {
    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            what: what.into(),
            source,
        }
    }
}
