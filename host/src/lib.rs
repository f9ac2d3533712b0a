//! sifr: pull and run OCI images with Apptainer, under policies that site
//! admins write as sandboxed WebAssembly plugins.
//!
//! The library is the product; the `sifr` binary is a thin layer over it.
//!
//! ```no_run
//! use sifr::{Config, ConfigSources, Context, ImageRef, Purpose, RuntimeBuilder};
//!
//! // `--config` and `$SIFR_CONFIG`, read by the program: the library reads
//! // no environment variable of its own accord.
//! let env = |name| std::env::var_os(name).map(Into::into);
//! let config = Config::load(&ConfigSources::standard(None, env("SIFR_CONFIG")))?;
//! let policy = RuntimeBuilder::new(config)
//!     .cache_dir(None, env("SIFR_CACHE_DIR"))
//!     .policy()?;
//! let image = ImageRef::parse("ncbi/blast:2.14.0")?;
//! for source in policy.resolve(&image, &Context::new(Purpose::Pull)).into_plan()? {
//!     println!("{}", source.uri());
//! }
//! # Ok::<(), sifr::Error>(())
//! ```

pub mod apptainer;
pub mod builder;
pub mod cache;
pub mod config;
pub mod error;
pub mod front;
pub mod lock;
pub mod policy;
pub mod reference;
pub mod registries_conf;
pub mod registry;
pub mod report;
pub mod runtime;
pub mod untrusted;

use std::path::PathBuf;

pub use builder::RuntimeBuilder;
pub use config::{Config, ConfigSources, OnError, PluginSource, PluginSpec, SandboxLimits};
pub use error::{ConfigError, Error, FailureKind, PluginFailure, PluginLoadError, PolicyError};
pub use policy::{
    Context, Outcome, Policy, PolicyOptions, PullRef, Purpose, Resolution, Source, Step,
    StepOutcome,
};
pub use reference::{ImageRef, ManifestDigest, SifDigest, SifDigestPrefix, WasmDigest};
pub use runtime::{Progress, Pulled, Runtime, RuntimeOptions};

/// sifr's cache directory when neither the program nor the environment
/// names one (see [`RuntimeBuilder::cache_dir`]): `[cache] dir` in the
/// config, else `$XDG_CACHE_HOME/sifr` (`~/.cache/sifr`). Always absolute.
pub fn default_cache_root(config: &Config) -> Option<PathBuf> {
    let root = config
        .cache_dir
        .clone()
        .or_else(|| dirs::cache_dir().map(|d| d.join("sifr")))?;
    Some(absolute(root))
}

/// A path made absolute against the current directory, so that no path
/// sifr hands apptainer can read as a flag (`SIFR_CACHE_DIR=-x`).
pub(crate) fn absolute(path: PathBuf) -> PathBuf {
    std::path::absolute(&path).unwrap_or(path)
}
