//! sifr: pull and run OCI images with Apptainer, under policies that site
//! admins write as sandboxed WebAssembly plugins.
//!
//! The library is the product; the `sifr` binary is a thin layer over it.
//!
//! ```no_run
//! use sifr::{Config, ConfigSources, Context, ImageRef, Policy, PolicyOptions, Purpose};
//!
//! // `--config` and `$SIFR_CONFIG`, read by the program: the library reads
//! // no environment variable of its own accord.
//! let config = Config::load(&ConfigSources::standard(None, std::env::var_os("SIFR_CONFIG").map(Into::into)))?;
//! let policy = Policy::load(&config, &PolicyOptions::standard())?;
//! let image = ImageRef::parse("ncbi/blast:2.14.0")?;
//! for source in policy.resolve(&image, &Context::new(Purpose::Pull)).into_plan()? {
//!     println!("{}", source.uri());
//! }
//! # Ok::<(), sifr::Error>(())
//! ```

pub mod apptainer;
pub mod cache;
pub mod config;
pub mod error;
pub mod front;
pub mod policy;
pub mod reference;
pub mod registries_conf;
pub mod report;
pub mod runtime;
pub mod untrusted;

use std::path::PathBuf;

pub use config::{Config, ConfigSources, OnError, PluginSource, PluginSpec, SandboxLimits};
pub use error::{ConfigError, Error, FailureKind, PluginFailure, PluginLoadError, PolicyError};
pub use policy::{
    Context, Outcome, Policy, PolicyOptions, PullRef, Purpose, Resolution, Source, Step,
    StepOutcome,
};
pub use reference::{ImageRef, ManifestDigest, SifDigest, SifDigestPrefix, WasmDigest};
pub use runtime::{Progress, Pulled, Runtime, RuntimeOptions};

/// sifr's cache directory: `$SIFR_CACHE_DIR`, else `$XDG_CACHE_HOME/sifr`
/// (`~/.cache/sifr`).
pub fn cache_root() -> Option<PathBuf> {
    cache_root_for(&Config::default())
}

/// sifr's cache directory: `$SIFR_CACHE_DIR`, else `[cache] dir` in the
/// config, else `$XDG_CACHE_HOME/sifr` (`~/.cache/sifr`). Always absolute:
/// a relative one is taken from the current directory, so that no path
/// sifr hands apptainer can read as a flag (`SIFR_CACHE_DIR=-x`).
pub fn cache_root_for(config: &Config) -> Option<PathBuf> {
    let root = match std::env::var_os("SIFR_CACHE_DIR") {
        Some(dir) if !dir.is_empty() => Some(PathBuf::from(dir)),
        _ => config
            .cache_dir
            .clone()
            .or_else(|| dirs::cache_dir().map(|d| d.join("sifr"))),
    }?;
    Some(std::path::absolute(&root).unwrap_or(root))
}
