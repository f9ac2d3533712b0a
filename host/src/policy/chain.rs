//! Running the plugins in order.
//!
//! The first plugin receives the default plan, the origin alone; each next
//! plugin receives the plan the previous one produced. A denial ends the
//! chain. A plugin that fails ends it too when it is `fail-closed` (the
//! default); a `fail-open` plugin is skipped with a warning, and the next
//! plugin receives the plan the failed one was given.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::capability::DigestLookup;
use super::compile_cache::CompileCache;
use super::error::{PluginFailure, PluginLoadError, PolicyError};
use super::plugin::{LoadedPlugin, SiteArtifacts};
use super::sandbox::{LogLine, Sandbox};
use super::validate::Decision;
use super::{Context, Source};
use crate::config::{Config, OnError, PluginSpec, SandboxLimits};
use crate::reference::ImageRef;
use crate::registry::RegistryClient;

/// How to load a policy.
#[derive(Debug, Clone, Default)]
pub struct PolicyOptions {
    /// Where compiled plugins are kept; `None` compiles in memory every time.
    /// [`crate::RuntimeBuilder`] chooses it by the one rule sifr has.
    pub compile_cache: Option<CompileCache>,
    /// The engine to run on, shared with other policies; `None` starts one.
    pub engine: Option<PolicyEngine>,
    /// The client behind the `resolve-digest` capability; `None` makes an
    /// anonymous one with no digest cache when a plugin is granted it.
    pub registry: Option<Arc<RegistryClient>>,
}

/// The WebAssembly engine plugins run on, with its linker and its epoch
/// thread. An embedder with many runtimes (or policies) makes one and hands
/// it to each, so there is one engine and one epoch thread however many
/// there are. Cheap to clone.
#[derive(Clone)]
pub struct PolicyEngine(Arc<Sandbox>);

impl PolicyEngine {
    /// An engine whose linear memories each reserve `memory_budget` bytes
    /// of address space: give the largest `memory-mib` of the chains it
    /// will run (a plugin with a larger budget still runs; its memory then
    /// moves as it grows). [`PolicyEngine::for_config`] reads it from a
    /// config.
    pub fn new(memory_budget: usize) -> Result<Self, PolicyError> {
        Ok(Self(new_sandbox(memory_budget)?))
    }

    /// An engine sized for `config`'s chain.
    pub fn for_config(config: &Config) -> Result<Self, PolicyError> {
        Self::new(largest_budget(config))
    }

    /// The wasmtime engine, for embedders that run other wasm beside sifr.
    pub fn wasmtime(&self) -> &wasmtime::Engine {
        &self.0.engine
    }
}

impl std::fmt::Debug for PolicyEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyEngine").finish_non_exhaustive()
    }
}

/// The largest memory budget of any plugin of `config`'s chain.
fn largest_budget(config: &Config) -> usize {
    config
        .plugins
        .iter()
        .map(|spec| limits_of(config, spec).memory_bytes)
        .max()
        .unwrap_or(config.sandbox.memory_bytes)
}

/// The limits `spec` runs under: the site's for a site-locked plugin.
fn limits_of(config: &Config, spec: &PluginSpec) -> SandboxLimits {
    if spec.locked {
        config.site_sandbox
    } else {
        config.sandbox
    }
}

/// One site-locked plugin in the site store, as [`Policy::prepare_site`]
/// left it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct PreparedPlugin {
    pub name: String,
    /// The wasm's sha256, 64 lowercase hex digits.
    pub sha256: String,
    /// The artifact users' processes load.
    pub artifact: Option<std::path::PathBuf>,
    /// `"once"`: decisions start from the configured snapshot;
    /// `"each-decision"`: the plugin cannot be snapshotted.
    pub configure: &'static str,
    /// Compiled by this run, rather than already in the store.
    pub compiled_now: bool,
}

/// A loaded chain of plugins. Load once, resolve many times.
#[derive(Debug)]
pub struct Policy {
    plugins: Vec<LoadedPlugin>,
}

/// What one plugin did to the plan.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    pub plugin: String,
    pub sha256: String,
    #[serde(flatten)]
    pub outcome: StepOutcome,
    pub logs: Vec<LogLine>,
    /// The digest look-ups the host made for it (`resolve-digest`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub lookups: Vec<DigestLookup>,
    #[serde(serialize_with = "micros")]
    pub elapsed: Duration,
}

fn micros<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_micros() as u64)
}

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "outcome", rename_all = "kebab-case")]
pub enum StepOutcome {
    /// The plugin returned this plan.
    Plan { sources: Vec<Source> },
    /// The plugin refused the image.
    Deny { reason: String },
    /// The plugin failed and is fail-open: it was skipped.
    Skipped { error: String },
    /// The plugin failed and is fail-closed: the chain stopped.
    Failed { error: String },
}

/// The outcome of a chain.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// Sources to try, in order.
    Plan(Vec<Source>),
    Deny {
        plugin: String,
        reason: String,
    },
    Failed(PluginFailure),
}

/// The chain's answer for one image, with each plugin's step.
#[derive(Debug, Clone)]
pub struct Resolution {
    pub image: ImageRef,
    pub steps: Vec<Step>,
    pub outcome: Outcome,
}

impl Resolution {
    /// The plan, or the denial or failure as a [`PolicyError`].
    pub fn into_plan(self) -> Result<Vec<Source>, PolicyError> {
        match self.outcome {
            Outcome::Plan(sources) => Ok(sources),
            Outcome::Deny { plugin, reason } => Err(PolicyError::Deny {
                image: self.image.to_string(),
                plugin,
                reason,
            }),
            Outcome::Failed(failure) => Err(PolicyError::PluginFailed(failure)),
        }
    }
}

impl Policy {
    /// Load every plugin of `config`'s chain, in order. Site-locked plugins
    /// come from the site store (`config.site_store`) when it is safe and
    /// prepared for them, else they are compiled now: see
    /// [`Policy::site_store_misses`].
    pub fn load(config: &Config, options: &PolicyOptions) -> Result<Self, PolicyError> {
        Self::load_with_site(config, options, false)
    }

    /// [`Policy::load`]; `prepare`: compile and configure the site-locked
    /// plugins into the site store (`sifr site prepare`, as root).
    pub(crate) fn load_with_site(
        config: &Config,
        options: &PolicyOptions,
        prepare: bool,
    ) -> Result<Self, PolicyError> {
        let engine = match &options.engine {
            Some(engine) => engine.clone(),
            None => PolicyEngine::for_config(config)?,
        };
        let store = CompileCache::site(&config.site_store);
        let site = SiteArtifacts {
            store: &store,
            prepare,
        };
        let plugins = config
            .plugins
            .iter()
            .map(|spec| {
                let mut plugin = LoadedPlugin::load(
                    spec,
                    limits_of(config, spec),
                    &engine.0,
                    options.compile_cache.as_ref(),
                    Some(site),
                    options.registry.as_ref(),
                )?;
                plugin.stale_if_error = if spec.locked {
                    config.site_stale_if_error
                } else {
                    config.stale_if_error
                };
                Ok(plugin)
            })
            .collect::<Result<_, PluginLoadError>>()?;
        Ok(Self { plugins })
    }

    /// Compile and configure every site-locked plugin of `config` into its
    /// site store (`config.site_store`), as `sifr site prepare` does: run
    /// as root, after installing or upgrading sifr and after changing the
    /// site config. Give it the site file alone (its chain and
    /// `[sandbox]`), so that the store holds what users' processes look
    /// for. Each plugin is then loaded back from the store as a user's
    /// process loads it; one that does not load from there is an error.
    pub fn prepare_site(
        config: &Config,
        options: &PolicyOptions,
    ) -> Result<Vec<PreparedPlugin>, PolicyError> {
        let failed = |reason: String| PolicyError::SiteStore {
            store: config.site_store.clone(),
            reason,
        };
        if !rustix::process::geteuid().is_root() {
            return Err(failed(
                "only root may write it, so that users can trust what it holds: run \
                 `sudo sifr site prepare`"
                    .into(),
            ));
        }
        let store = CompileCache::site(&config.site_store);
        store
            .create_dir()
            .map_err(|e| failed(format!("cannot make it: {e}")))?;
        store.check_site().map_err(|problem| {
            failed(format!(
                "{problem}; every level of its path must be root's and writable by no one \
                 else (chown root, chmod go-w), or name another in [site] store"
            ))
        })?;
        let locked = Config {
            plugins: config
                .plugins
                .iter()
                .filter(|s| s.locked)
                .cloned()
                .collect(),
            ..config.clone()
        };
        let options = PolicyOptions {
            engine: Some(match &options.engine {
                Some(engine) => engine.clone(),
                None => PolicyEngine::for_config(config)?,
            }),
            ..options.clone()
        };
        let written = Self::load_with_site(&locked, &options, true)?;
        let read = Self::load_with_site(&locked, &options, false)?;
        let mut prepared = Vec::new();
        for (wrote, plugin) in written.plugins.iter().zip(&read.plugins) {
            if let Some(why) = plugin.site_store_miss() {
                return Err(failed(format!(
                    "plugin '{}' was written but does not load back from it: {why}",
                    plugin.name
                )));
            }
            prepared.push(PreparedPlugin {
                name: plugin.name.clone(),
                sha256: plugin.sha256.to_string(),
                artifact: plugin.artifact_file().map(Into::into),
                configure: if plugin.configured_once() {
                    "once"
                } else {
                    "each-decision"
                },
                compiled_now: wrote.artifact == super::ArtifactOrigin::Compiled,
            });
        }
        Ok(prepared)
    }

    /// The site-locked plugins that were compiled now rather than loaded
    /// from the site store, each with why: slow on every load until an
    /// admin runs `sifr site prepare`.
    pub fn site_store_misses(&self) -> impl Iterator<Item = (&str, &str)> {
        self.plugins
            .iter()
            .filter_map(|p| p.site_store_miss().map(|why| (p.name.as_str(), why)))
    }

    /// Load one plugin on its own, as `sifr plugin check` does.
    pub fn load_single(
        spec: &PluginSpec,
        limits: SandboxLimits,
        options: &PolicyOptions,
    ) -> Result<Self, PolicyError> {
        let engine = match &options.engine {
            Some(engine) => engine.clone(),
            None => PolicyEngine::new(limits.memory_bytes)?,
        };
        let plugin = LoadedPlugin::load(
            spec,
            limits,
            &engine.0,
            options.compile_cache.as_ref(),
            None,
            options.registry.as_ref(),
        )?;
        Ok(Self {
            plugins: vec![plugin],
        })
    }

    /// The loaded plugins, in chain order.
    pub fn plugins(&self) -> &[LoadedPlugin] {
        &self.plugins
    }

    /// Run the chain for `image`.
    pub fn resolve(&self, image: &ImageRef, ctx: &Context) -> Resolution {
        self.resolve_from(image, ctx, vec![Source::origin(image)])
    }

    /// Run the chain for each of `images`, on as many threads as the
    /// machine has cores (at most `images.len()`); the resolutions come back
    /// in the order of `images`. Each decision still gets a fresh instance:
    /// what is shared is what loading made once (compiled code, configured
    /// snapshots, the engine and its pool), so bulk resolution costs what
    /// one reference costs, spread over the cores.
    pub fn resolve_many(&self, images: &[ImageRef], ctx: &Context) -> Vec<Resolution> {
        let workers = std::thread::available_parallelism()
            .map_or(1, usize::from)
            .min(images.len());
        if workers <= 1 {
            return images.iter().map(|i| self.resolve(i, ctx)).collect();
        }
        let next = std::sync::atomic::AtomicUsize::new(0);
        let mut slots: Vec<Option<Resolution>> = vec![None; images.len()];
        let done = std::sync::Mutex::new(&mut slots);
        std::thread::scope(|scope| {
            for _ in 0..workers {
                scope.spawn(|| {
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(image) = images.get(i) else { break };
                        let resolution = self.resolve(image, ctx);
                        done.lock().unwrap_or_else(|e| e.into_inner())[i] = Some(resolution);
                    }
                });
            }
        });
        slots
            .into_iter()
            .map(|r| r.expect("every image was resolved"))
            .collect()
    }

    /// Run the chain for `image`, starting from `plan` instead of the origin.
    pub fn resolve_from(
        &self,
        image: &ImageRef,
        ctx: &Context,
        mut plan: Vec<Source>,
    ) -> Resolution {
        let mut steps = Vec::with_capacity(self.plugins.len());
        for plugin in &self.plugins {
            let started = Instant::now();
            let report = plugin.decide(image, ctx, &plan);
            let elapsed = started.elapsed();
            // What the step shows, and the chain's outcome when it stops here.
            let (outcome, stop) = match report.result {
                Ok(Decision::Plan(sources)) => {
                    plan = sources.clone();
                    (StepOutcome::Plan { sources }, None)
                }
                Ok(Decision::Deny(reason)) => (
                    StepOutcome::Deny {
                        reason: reason.clone(),
                    },
                    Some(Outcome::Deny {
                        plugin: plugin.name.clone(),
                        reason,
                    }),
                ),
                Err(failure) if plugin.on_error == OnError::FailOpen => (
                    StepOutcome::Skipped {
                        error: failure.to_string(),
                    },
                    None,
                ),
                Err(failure) => (
                    StepOutcome::Failed {
                        error: failure.to_string(),
                    },
                    Some(Outcome::Failed(failure)),
                ),
            };
            steps.push(Step {
                plugin: plugin.name.clone(),
                sha256: plugin.short_sha(),
                outcome,
                logs: report.logs,
                lookups: report.lookups,
                elapsed,
            });
            if let Some(outcome) = stop {
                return Resolution {
                    image: image.clone(),
                    steps,
                    outcome,
                };
            }
        }
        Resolution {
            image: image.clone(),
            steps,
            outcome: Outcome::Plan(plan),
        }
    }
}

fn new_sandbox(memory_budget: usize) -> Result<Arc<Sandbox>, PolicyError> {
    Sandbox::new(memory_budget).map_err(|source| PolicyError::Engine { source })
}
