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
use super::plugin::LoadedPlugin;
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
    /// Load every plugin of `config`'s chain, in order.
    pub fn load(config: &Config, options: &PolicyOptions) -> Result<Self, PolicyError> {
        let engine = match &options.engine {
            Some(engine) => engine.clone(),
            None => PolicyEngine::for_config(config)?,
        };
        let plugins = config
            .plugins
            .iter()
            .map(|spec| {
                LoadedPlugin::load(
                    spec,
                    limits_of(config, spec),
                    &engine.0,
                    options.compile_cache.as_ref(),
                    options.registry.as_ref(),
                )
            })
            .collect::<Result<_, PluginLoadError>>()?;
        Ok(Self { plugins })
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
