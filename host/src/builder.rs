//! [`RuntimeBuilder`]: the one place where sifr settles where things are.
//!
//! The library reads no environment variable. A program reads its flags
//! and environment and hands both here as plain values; the builder
//! applies the one precedence sifr documents, flag > environment > config >
//! default, for the cache directory, the compiled-plugin cache, the
//! apptainer binary and the pull timeout, and every command (and every
//! embedder) gets its runtime, its policy or its cache from it.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use crate::cache::Cache;
use crate::config::Config;
use crate::error::Error;
use crate::policy::{CompileCache, Policy, PolicyEngine, PolicyOptions};
use crate::registry::{CredentialSources, RegistryClient, RegistryOptions, TtlCache};
use crate::runtime::{DEFAULT_PULL_TIMEOUT, Runtime, RuntimeOptions};

/// A value a program may give twice, from a flag and from the environment.
#[derive(Debug, Clone)]
struct Given<T> {
    flag: Option<T>,
    env: Option<T>,
}

impl<T> Default for Given<T> {
    fn default() -> Self {
        Self {
            flag: None,
            env: None,
        }
    }
}

impl<T: Clone> Given<T> {
    /// The flag, else the environment's value, else `config`.
    fn or_config(&self, config: Option<T>) -> Option<T> {
        self.flag.clone().or_else(|| self.env.clone()).or(config)
    }
}

/// Builds a [`Runtime`], a [`Policy`] or a [`Cache`] from a [`Config`] and
/// what the program was told.
///
/// ```no_run
/// use sifr::{Config, ConfigSources, RuntimeBuilder};
///
/// let config = Config::load(&ConfigSources::standard(None, None))?;
/// let runtime = RuntimeBuilder::new(config)
///     .cache_dir(None, std::env::var_os("SIFR_CACHE_DIR").map(Into::into))
///     .build()?;
/// # Ok::<(), sifr::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct RuntimeBuilder {
    config: Config,
    cache_dir: Given<PathBuf>,
    apptainer: Given<PathBuf>,
    pull_timeout: Given<Duration>,
    engine: Option<PolicyEngine>,
    cancel: Option<Arc<AtomicUsize>>,
    credentials: CredentialSources,
    registry: std::sync::OnceLock<Arc<RegistryClient>>,
}

/// `[registry] timeout` when the config has none.
pub const DEFAULT_REGISTRY_TIMEOUT: Duration = Duration::from_secs(5);

/// `[registry] digest-ttl` when the config has none.
pub const DEFAULT_DIGEST_TTL: Duration = Duration::from_secs(5 * 60);

impl RuntimeBuilder {
    pub fn new(config: Config) -> Self {
        Self {
            config,
            cache_dir: Given::default(),
            apptainer: Given::default(),
            pull_timeout: Given::default(),
            engine: None,
            cancel: None,
            credentials: CredentialSources::none(),
            registry: std::sync::OnceLock::new(),
        }
    }

    /// Where registry credentials come from, for digest look-ups (see
    /// [`CredentialSources::standard`], which takes the environment as
    /// the program read it). Default: none, anonymous.
    pub fn registry_credentials(mut self, credentials: CredentialSources) -> Self {
        self.credentials = credentials;
        self.registry = std::sync::OnceLock::new();
        self
    }

    /// The registry client digest look-ups use (`resolve-digest`, `sifr
    /// lock`): `[registry] timeout`, the credentials given, and the
    /// per-user digest cache with `[registry] digest-ttl`. Made once a
    /// builder; clones share it.
    pub fn registry_client(&self) -> Arc<RegistryClient> {
        self.registry
            .get_or_init(|| Arc::new(self.new_registry_client()))
            .clone()
    }

    fn new_registry_client(&self) -> RegistryClient {
        let ttl = self.config.digest_ttl.unwrap_or(DEFAULT_DIGEST_TTL);
        let cache = (!ttl.is_zero())
            .then(|| self.digest_cache_dir())
            .flatten()
            .map(|dir| TtlCache::new(dir, ttl));
        RegistryClient::new(RegistryOptions {
            timeout: self
                .config
                .registry_timeout
                .unwrap_or(DEFAULT_REGISTRY_TIMEOUT),
            credentials: self.credentials.clone(),
            cache,
            ..RegistryOptions::default()
        })
    }

    /// Where tag -> digest answers are kept: beside the compiled plugins
    /// (the cache root's `digests` when the root is the user's own, else
    /// the user's own cache directory). Never a shared directory: a
    /// co-user could otherwise plant the digest a tag resolves to.
    pub fn digest_cache_dir(&self) -> Option<PathBuf> {
        self.compile_cache()
            .and_then(|c| c.dir().parent().map(|p| p.join("digests")))
    }

    /// The cache directory from a flag and from the environment
    /// (`$SIFR_CACHE_DIR`, as the program read it). An empty value counts
    /// as unset.
    pub fn cache_dir(mut self, flag: Option<PathBuf>, env: Option<PathBuf>) -> Self {
        let given = |p: Option<PathBuf>| p.filter(|p| !p.as_os_str().is_empty());
        self.cache_dir = Given {
            flag: given(flag),
            env: given(env),
        };
        self
    }

    /// The apptainer (or singularity) binary from a flag (`--apptainer`)
    /// and from the environment (`$SIFR_APPTAINER`).
    pub fn apptainer(mut self, flag: Option<PathBuf>, env: Option<PathBuf>) -> Self {
        self.apptainer = Given { flag, env };
        self
    }

    /// The limit on one pull attempt from a flag and from the environment
    /// (`$SIFR_PULL_TIMEOUT`).
    pub fn pull_timeout(mut self, flag: Option<Duration>, env: Option<Duration>) -> Self {
        self.pull_timeout = Given { flag, env };
        self
    }

    /// Run plugins on `engine`, shared with other runtimes.
    pub fn engine(mut self, engine: PolicyEngine) -> Self {
        self.engine = Some(engine);
        self
    }

    /// Stop pulls when `flag` is set to a signal number (see
    /// [`RuntimeOptions::cancel`]).
    pub fn cancel(mut self, flag: Arc<AtomicUsize>) -> Self {
        self.cancel = Some(flag);
        self
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The cache directory: flag, else environment, else `[cache] dir`,
    /// else `$XDG_CACHE_HOME/sifr`; absolute.
    pub fn cache_root(&self) -> Option<PathBuf> {
        match self.cache_dir.or_config(None) {
            Some(dir) => Some(crate::absolute(dir)),
            None => crate::default_cache_root(&self.config),
        }
    }

    /// Where compiled plugins are kept: with the cache when the cache root
    /// is the user's own, else in the user's own cache directory (see
    /// [`CompileCache::for_cache_root`]). The only way sifr chooses it.
    pub fn compile_cache(&self) -> Option<CompileCache> {
        match self.cache_root() {
            Some(root) => CompileCache::for_cache_root(&root),
            None => CompileCache::per_user(),
        }
    }

    /// The binary the flag or the environment names, else the config's;
    /// `None` leaves it to discovery on PATH.
    pub fn apptainer_path(&self) -> Option<PathBuf> {
        self.apptainer.or_config(self.config.apptainer.clone())
    }

    /// The pull timeout: flag, else environment, else `[apptainer]
    /// pull-timeout`, else 20 minutes.
    pub fn settled_pull_timeout(&self) -> Duration {
        self.pull_timeout
            .or_config(self.config.pull_timeout)
            .unwrap_or(DEFAULT_PULL_TIMEOUT)
    }

    /// Options for loading a policy: the compiled-plugin cache and engine.
    pub fn policy_options(&self) -> PolicyOptions {
        PolicyOptions {
            compile_cache: self.compile_cache(),
            engine: self.engine.clone(),
            registry: Some(self.registry_client()),
        }
    }

    /// The policy chain alone, for resolving without a cache.
    pub fn policy(&self) -> Result<Policy, Error> {
        Ok(Policy::load(&self.config, &self.policy_options())?)
    }

    /// The cache alone, trusting what the config says to trust.
    pub fn cache(&self) -> Result<Cache, Error> {
        let root = self.cache_root().ok_or(Error::NoCacheDir)?;
        crate::runtime::open_cache(&root, &self.config)
    }

    /// The settled options, as [`Runtime::new`] takes them.
    pub fn runtime_options(&self) -> RuntimeOptions {
        RuntimeOptions {
            registry: Some(self.registry_client()),
            apptainer: self.apptainer.flag.clone(),
            apptainer_env: self.apptainer.env.clone(),
            cache_dir: self.cache_root(),
            pull_timeout: Some(self.settled_pull_timeout()),
            cancel: self.cancel.clone(),
            engine: self.engine.clone(),
        }
    }

    /// Load the policy, open the cache: a runtime.
    pub fn build(self) -> Result<Runtime, Error> {
        let options = self.runtime_options();
        Runtime::new(self.config, options)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flag_beats_environment_beats_config_beats_default() {
        let mut config = Config::default();
        let builder = RuntimeBuilder::new(config.clone());
        assert_eq!(builder.settled_pull_timeout(), DEFAULT_PULL_TIMEOUT);
        config.pull_timeout = Some(Duration::from_secs(3));
        config.cache_dir = Some("/from/config".into());
        config.apptainer = Some("/config/apptainer".into());
        let builder = RuntimeBuilder::new(config);
        assert_eq!(builder.settled_pull_timeout(), Duration::from_secs(3));
        assert_eq!(builder.cache_root().unwrap(), PathBuf::from("/from/config"));
        assert_eq!(
            builder.apptainer_path().unwrap(),
            PathBuf::from("/config/apptainer")
        );
        let builder = builder
            .pull_timeout(None, Some(Duration::from_secs(2)))
            .cache_dir(None, Some("/from/env".into()))
            .apptainer(None, Some("/env/apptainer".into()));
        assert_eq!(builder.settled_pull_timeout(), Duration::from_secs(2));
        assert_eq!(builder.cache_root().unwrap(), PathBuf::from("/from/env"));
        assert_eq!(
            builder.apptainer_path().unwrap(),
            PathBuf::from("/env/apptainer")
        );
        let builder = builder
            .pull_timeout(Some(Duration::from_secs(1)), Some(Duration::from_secs(2)))
            .cache_dir(Some("/from/flag".into()), Some("/from/env".into()))
            .apptainer(
                Some("/flag/apptainer".into()),
                Some("/env/apptainer".into()),
            );
        assert_eq!(builder.settled_pull_timeout(), Duration::from_secs(1));
        assert_eq!(builder.cache_root().unwrap(), PathBuf::from("/from/flag"));
        assert_eq!(
            builder.apptainer_path().unwrap(),
            PathBuf::from("/flag/apptainer")
        );
        // An empty environment value is unset, as shells mean it.
        let builder = builder.cache_dir(None, Some(PathBuf::new()));
        assert_eq!(builder.cache_root().unwrap(), PathBuf::from("/from/config"));
    }

    #[test]
    fn a_relative_cache_dir_is_made_absolute() {
        let builder = RuntimeBuilder::new(Config::default()).cache_dir(Some("-x".into()), None);
        let root = builder.cache_root().unwrap();
        assert!(root.is_absolute(), "{}", root.display());
        assert!(root.ends_with("-x"));
    }
}
