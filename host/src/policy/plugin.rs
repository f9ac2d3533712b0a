//! Loading, pinning and calling one plugin.

use std::borrow::Cow;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;
use wasmtime::Store;
use wasmtime::component::Component;

use super::capability::{DigestAccess, DigestLookup, Excused};
use super::compile_cache::{CompileCache, StoreProblem};
use super::error::{FailureKind, PluginFailure, PluginLoadError};
use super::sandbox::{
    Deadline, HostState, LogLine, MAX_INSTANCES, MAX_MEMORIES, MAX_TABLE_ELEMENTS, MAX_TABLES,
    Sandbox, arm_deadline, grant_digests, run_with_deadline,
};
use super::snapshot;
use super::validate::{self, Decision};
use super::wit::{self, Plugin, PluginPre};
use super::{Context, Source};
use crate::config::{Capability, OnError, PluginSource, PluginSpec, SandboxLimits};
use crate::reference::{ImageRef, WasmDigest};
use crate::registry::RegistryClient;
use crate::untrusted;

/// The plugins embedded in the binary: `builtin = "<name>"`.
const BUILTINS: &[(&str, &[u8])] = &[
    (
        "default",
        include_bytes!(concat!(
            env!("SIFR_PLUGIN_DIR"),
            "/sifr_plugin_default.wasm"
        )),
    ),
    (
        "mirror",
        include_bytes!(concat!(env!("SIFR_PLUGIN_DIR"), "/sifr_plugin_mirror.wasm")),
    ),
    (
        "registries",
        include_bytes!(concat!(
            env!("SIFR_PLUGIN_DIR"),
            "/sifr_plugin_registries.wasm"
        )),
    ),
    (
        "tags",
        include_bytes!(concat!(env!("SIFR_PLUGIN_DIR"), "/sifr_plugin_tags.wasm")),
    ),
];

/// The names of the built-in plugins.
pub fn builtin_names() -> impl Iterator<Item = &'static str> {
    BUILTINS.iter().map(|(name, _)| *name)
}

/// Where a plugin's native code came from on this load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ArtifactOrigin {
    /// Compiled from the `.wasm` now (and saved, when there is a cache).
    Compiled,
    /// Loaded from the compiled-plugin cache.
    CacheHit,
    /// A site-locked plugin, loaded from the site store that `sifr site
    /// prepare` filled.
    SiteStore,
}

/// The hit a load from `cache` is.
fn hit(cache: &CompileCache) -> ArtifactOrigin {
    if cache.is_site() {
        ArtifactOrigin::SiteStore
    } else {
        ArtifactOrigin::CacheHit
    }
}

/// Where site-locked plugins' native code comes from: the site store,
/// read, or written by `sifr site prepare`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SiteArtifacts<'a> {
    pub store: &'a CompileCache,
    /// Compile and configure into the store (as root), not only read it.
    pub prepare: bool,
}

/// A plugin, compiled, type-checked and configured: ready to decide.
pub struct LoadedPlugin {
    pub name: String,
    /// `builtin:NAME` or the `.wasm` path.
    pub source: String,
    /// Full sha256 of the component.
    pub sha256: WasmDigest,
    /// The contract version the plugin was built against (`0.1.0`).
    pub api_version: String,
    pub settings: serde_json::Value,
    pub on_error: OnError,
    pub locked: bool,
    /// The host capabilities its config grants it.
    pub capabilities: Vec<Capability>,
    pub artifact: ArtifactOrigin,
    /// The file its native code was loaded from, or saved to.
    artifact_file: Option<PathBuf>,
    /// Why a site-locked plugin was compiled now rather than loaded from
    /// the site store.
    site_store_miss: Option<String>,
    /// The limits its calls run under: the site's for a site-locked plugin.
    pub limits: SandboxLimits,
    settings_json: String,
    /// The component each decision instantiates.
    pre: Option<PluginPre>,
    /// Whether `pre` is a snapshot taken after `configure` (see `snapshot`),
    /// so that decisions do not configure again.
    configured: bool,
    /// What `configure` logged, when it ran once for the snapshot: shown
    /// with every decision, as when each decision configured.
    configure_logs: Vec<LogLine>,
    /// Pool slots an instance takes (see `Sandbox::weight`).
    weight: usize,
    /// The client behind `resolve-digest`, when the config grants it.
    registry: Option<Arc<RegistryClient>>,
    /// `[registry] stale-if-error` for its look-ups (see
    /// [`super::capability`]); zero unless the chain's config sets it.
    pub(crate) stale_if_error: std::time::Duration,
    sandbox: Arc<Sandbox>,
}

impl std::fmt::Debug for LoadedPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedPlugin")
            .field("name", &self.name)
            .field("source", &self.source)
            .field("sha256", &self.sha256)
            .field("api_version", &self.api_version)
            .finish_non_exhaustive()
    }
}

/// What one call produced, besides its result.
pub(crate) struct CallReport<T> {
    pub result: Result<T, PluginFailure>,
    pub logs: Vec<LogLine>,
    /// The `resolve-digest` calls it made.
    pub lookups: Vec<DigestLookup>,
}

/// `sha256:` and the first 12 hex digits: enough to tell plugins apart in
/// a message.
pub(crate) fn short_sha(sha256: &str) -> String {
    format!("sha256:{}", &sha256[..12.min(sha256.len())])
}

impl LoadedPlugin {
    /// Read, pin-check, compile (or load from `cache`), type-check and
    /// configure the plugin `spec` describes.
    pub(crate) fn load(
        spec: &PluginSpec,
        limits: SandboxLimits,
        sandbox: &Arc<Sandbox>,
        cache: Option<&CompileCache>,
        site: Option<SiteArtifacts<'_>>,
        registry: Option<&Arc<RegistryClient>>,
    ) -> Result<Self, PluginLoadError> {
        let name = spec.name.clone();
        // A site-locked plugin is never loaded from the compiled-plugin
        // cache: it is the user's to write, and the site's policy must not
        // rest on anything the user can write. It comes from the site
        // store, which only root can write, or is compiled from its
        // (pinned) wasm now. Only `sifr site prepare` writes the store.
        let (cache, read_only) = if spec.locked {
            (site.map(|s| s.store), site.is_some_and(|s| !s.prepare))
        } else {
            (cache, false)
        };
        // The wasm's bytes, read when something needs them: with a warm
        // cache nothing does (its digest is remembered; see `wasm_digest`).
        let (mut wasm, sha256, source): (Option<Cow<'static, [u8]>>, WasmDigest, String) =
            match &spec.source {
                PluginSource::Builtin(builtin) => {
                    let Some((_, bytes)) = BUILTINS.iter().find(|(n, _)| n == builtin) else {
                        return Err(PluginLoadError::UnknownBuiltin {
                            plugin: name,
                            name: builtin.clone(),
                            known: builtin_names().collect::<Vec<_>>().join(", "),
                        });
                    };
                    let sha256 = WasmDigest::of(bytes);
                    (Some((*bytes).into()), sha256, format!("builtin:{builtin}"))
                }
                PluginSource::Path(path) => {
                    let read_error = |source| PluginLoadError::Read {
                        plugin: name.clone(),
                        path: path.clone(),
                        source,
                    };
                    let meta = std::fs::metadata(path).map_err(read_error)?;
                    let remembered = cache
                        .and_then(|c| c.wasm_digest(path, &meta))
                        .and_then(|hex| WasmDigest::from_hex(&hex).ok());
                    match remembered {
                        Some(sha256) => (None, sha256, path.display().to_string()),
                        None => {
                            let bytes = std::fs::read(path).map_err(read_error)?;
                            let sha256 = WasmDigest::of(&bytes);
                            // Only when the file is unchanged since its
                            // metadata was read.
                            if let Some(c) = cache.filter(|_| !read_only)
                                && std::fs::metadata(path).is_ok_and(|now| {
                                    now.ctime() == meta.ctime()
                                        && now.ctime_nsec() == meta.ctime_nsec()
                                        && now.ino() == meta.ino()
                                })
                            {
                                c.remember_wasm_digest(path, &meta, sha256.as_hex());
                            }
                            (Some(bytes.into()), sha256, path.display().to_string())
                        }
                    }
                }
            };
        if let Some(expected) = &spec.sha256
            && *expected != sha256
        {
            return Err(PluginLoadError::PinMismatch {
                plugin: name,
                path: source.into(),
                expected: expected.to_string(),
                actual: sha256.to_string(),
            });
        }
        let settings_json = spec.settings.to_string();
        let mut plugin = Self {
            name: name.clone(),
            source,
            sha256,
            api_version: String::new(),
            settings: spec.settings.clone(),
            on_error: spec.on_error,
            locked: spec.locked,
            capabilities: spec.capabilities.clone(),
            artifact: ArtifactOrigin::Compiled,
            artifact_file: None,
            site_store_miss: None,
            limits,
            settings_json,
            configured: false,
            configure_logs: Vec::new(),
            registry: spec.granted(Capability::ResolveDigest).then(|| {
                registry
                    .cloned()
                    .unwrap_or_else(|| Arc::new(RegistryClient::default()))
            }),
            stale_if_error: std::time::Duration::ZERO,
            pre: None,
            weight: 1,
            sandbox: sandbox.clone(),
        };
        // Configure once (see `snapshot`): the configured snapshot from the
        // cache, or made now and kept there.
        if let Some(cache) = cache {
            let configured_name = cache.configured_name(
                &sandbox.engine,
                plugin.sha256.as_hex(),
                &plugin.settings_json,
            );
            let logs_name = format!("{configured_name}.logs");
            let cached = |plugin: &mut Self| {
                // The log lines are written before the artifact: no lines,
                // no snapshot.
                let logs = cache
                    .load_bytes(&logs_name)
                    .and_then(|bytes| serde_json::from_slice::<Vec<LogLine>>(&bytes).ok());
                let Some(logs) = logs else {
                    return Ok::<_, PluginLoadError>(false);
                };
                let Some(component) = cache.load(&sandbox.engine, &configured_name) else {
                    return Ok(false);
                };
                plugin.adopt(component, true)?;
                plugin.artifact = hit(cache);
                plugin.artifact_file = Some(cache.dir().join(&configured_name));
                plugin.configure_logs = logs;
                Ok(true)
            };
            if cached(&mut plugin)? {
                return Ok(plugin);
            }
            if read_only {
                // The site store, not prepared for this plugin as it is
                // configured (or prepared for it not snapshottable): its
                // plain artifact, else compiled now, below.
                return plugin.finish_load(spec, sandbox, Some(cache), true, wasm);
            }
            // One process configures and compiles; the others wait for it.
            let _lock = cache.lock(&configured_name);
            if cached(&mut plugin)? {
                return Ok(plugin);
            }
            // A plugin found not to be snapshottable is not tried again: for
            // the Python plugin, trying costs a compile of 10 s.
            let unsnapshottable = format!("{configured_name}.unsnapshottable");
            let tried = cache.load_bytes(&unsnapshottable).is_some();
            let wasm = read_once(&mut wasm, spec, &plugin.sha256)?;
            match if tried {
                Once::Never
            } else {
                plugin.configure_once(wasm, spec)?
            } {
                Once::Snapshot(component) => {
                    // A cache that cannot be written only costs time.
                    let logs = serde_json::to_vec(&plugin.configure_logs).expect("plain data");
                    if cache.store_bytes(&logs, &logs_name).is_ok()
                        && cache.store(&component, &configured_name).is_ok()
                    {
                        plugin.artifact_file = Some(cache.dir().join(&configured_name));
                    }
                    plugin.adopt(component, true)?;
                    return Ok(plugin);
                }
                Once::Never => {
                    // Not snapshottable: configure each instance instead.
                    if !tried {
                        let _ = cache.store_bytes(b"", &unsnapshottable);
                    }
                }
                Once::NotNow => {}
            }
        }
        plugin.finish_load(spec, sandbox, cache, false, wasm)
    }

    /// Compile the plugin (or load its plain artifact from `cache`), then
    /// configure it once to check its settings. `read_only`: `cache` is
    /// the site store, which only `sifr site prepare` writes.
    fn finish_load(
        mut self,
        spec: &PluginSpec,
        sandbox: &Sandbox,
        cache: Option<&CompileCache>,
        read_only: bool,
        mut wasm: Option<Cow<'static, [u8]>>,
    ) -> Result<Self, PluginLoadError> {
        let plugin = &mut self;
        let wasm = read_once(&mut wasm, spec, &plugin.sha256)?;
        let compiled = compile(sandbox, cache, read_only, wasm, plugin.sha256.as_hex());
        let (component, artifact, artifact_file) = compiled.map_err(|error| match error {
            CompileError::Invalid(reason) => PluginLoadError::Compile {
                plugin: plugin.name.clone(),
                sha256: plugin.short_sha(),
                reason,
            },
            CompileError::OverLimits(what) => plugin.over_limits(what),
        })?;
        plugin.artifact = artifact;
        plugin.artifact_file = artifact_file;
        if read_only && artifact == ArtifactOrigin::Compiled {
            plugin.site_store_miss = Some(match cache.map(CompileCache::check_site) {
                Some(Err(StoreProblem::Missing(_))) => format!(
                    "there is no site store at {}",
                    cache
                        .map(|c| c.dir().display().to_string())
                        .unwrap_or_default()
                ),
                Some(Err(problem)) => {
                    format!("the site store is not safe to load from ({problem})")
                }
                _ => format!(
                    "the site store {} has no artifact for it as configured now (its wasm, \
                     its settings, this sifr build and memory budget)",
                    cache
                        .map(|c| c.dir().display().to_string())
                        .unwrap_or_default()
                ),
            });
        }
        plugin.adopt(component, false)?;
        // Validate the settings now, so that a bad config fails at load time
        // with the plugin's own message rather than on the first image.
        let report = plugin.call("configure", None, async |_, _| Ok(()));
        report
            .result
            .map_err(|failure| plugin.load_error(failure, spec))?;
        Ok(self)
    }

    /// The load error for a component over the sandbox's limits.
    fn over_limits(&self, what: String) -> PluginLoadError {
        PluginLoadError::Failed {
            plugin: self.name.clone(),
            sha256: self.short_sha(),
            failure: Box::new(PluginFailure {
                plugin: self.name.clone(),
                sha256: self.short_sha(),
                function: "instantiate",
                kind: FailureKind::ResourceLimit(what),
            }),
        }
    }

    /// Why this site-locked plugin was compiled now rather than loaded
    /// from the site store (`sifr site prepare` fills it); `None` when it
    /// was loaded from there, or is not site-locked.
    pub fn site_store_miss(&self) -> Option<&str> {
        self.site_store_miss.as_deref()
    }

    /// Type-check `component` against its contract and make it the one
    /// this plugin instantiates. `configured`: it is a snapshot taken after
    /// `configure`, which must not run again.
    fn adopt(&mut self, component: Component, configured: bool) -> Result<(), PluginLoadError> {
        let wrong = |reason: String| PluginLoadError::WrongContract {
            plugin: self.name.clone(),
            sha256: self.short_sha(),
            reason,
        };
        let api_version = policy_export_version(&self.sandbox, &component).map_err(&wrong)?;
        let instance_pre = self
            .sandbox
            .linker
            .instantiate_pre(&component)
            .map_err(|e| {
                wrong(format!(
                    "its imports cannot be satisfied: {}",
                    chain_text(&e)
                ))
            })?;
        let version = semver::Version::parse(&api_version).expect("checked by version_of");
        let pre = PluginPre::new(&version, instance_pre)
            .map_err(|e| wrong(format!("its exports do not match: {}", chain_text(&e))))?;
        self.weight = self.sandbox.weight(&component);
        self.api_version = api_version;
        self.pre = Some(pre);
        self.configured = configured;
        Ok(())
    }

    /// The load error for a failure of `configure`.
    fn load_error(&self, failure: PluginFailure, spec: &PluginSpec) -> PluginLoadError {
        match failure {
            PluginFailure {
                kind: FailureKind::InvalidOutput(message),
                function: "configure",
                ..
            } => PluginLoadError::SettingsRejected {
                plugin: self.name.clone(),
                sha256: self.short_sha(),
                message,
                files: spec.settings_files.clone(),
            },
            failure => PluginLoadError::Failed {
                plugin: self.name.clone(),
                sha256: self.short_sha(),
                failure: Box::new(failure),
            },
        }
    }

    /// Run `configure` once, on an instrumented copy of `wasm`, and return
    /// the configured instance as a component (see `snapshot`), or why not:
    /// the caller then configures each instance. Settings refused, or a
    /// plugin that fails, is an error as it is on the other path.
    fn configure_once(&mut self, wasm: &[u8], spec: &PluginSpec) -> Result<Once, PluginLoadError> {
        // Cranelift's functions are kept only while the snapshot is made.
        let _functions = ClearOnDrop(self.sandbox.functions.clone());
        let Ok(instrumented) = snapshot::instrument(wasm) else {
            return Ok(Once::Never);
        };
        let Ok(component) = Component::new(&self.sandbox.engine, &instrumented.wasm) else {
            // Invalid or over the limits: the plain path says which.
            return Ok(Once::Never);
        };
        self.adopt(component, false)?;
        let pre = self.pre.as_ref().expect("just adopted");
        let limits = self.limits;
        let _slots = self.sandbox.slots.acquire(self.weight);
        let mut store = self.sandbox.store(&limits);
        let configured = run_with_deadline(limits.timeout, None, async {
            let instance = pre.instance_pre().instantiate_async(&mut store).await?;
            let plugin = pre.wrap(&mut store, &instance)?;
            let configured = plugin.configure(&mut store, &self.settings_json).await?;
            Ok(configured.map(|()| instance))
        });
        let instance = self
            .first_phase(configured, "configure", &store, &limits)
            .map_err(|failure| self.load_error(failure, spec))?;
        if snapshot::holds_host_state(&mut store) {
            return Ok(Once::Never);
        }
        self.configure_logs = store.data_mut().take_logs();
        // Reading the state out runs only wizer's accessors, not the
        // plugin's code: host work, given the host's time, not the plugin's.
        arm_deadline(&mut store, SNAPSHOT_DEADLINE);
        let bytes = match run_with_deadline(SNAPSHOT_DEADLINE, None, async {
            Ok(instrumented.snapshot(&mut store, instance).await)
        }) {
            Deadline::Done(Ok(Ok(bytes))) => bytes,
            Deadline::Done(Ok(Err(_))) => return Ok(Once::Never),
            Deadline::Done(Err(_)) | Deadline::Blocked => return Ok(Once::NotNow),
        };
        // Its functions are the instrumented copy's, compiled a moment ago.
        Ok(match snapshot::compile(&self.sandbox.engine, &bytes) {
            Ok(component) => Once::Snapshot(component),
            Err(_) => Once::Never,
        })
    }

    /// Whether `configure` ran once and each decision starts from a copy of
    /// the configured instance (see `policy::snapshot`); else each decision
    /// configures its own fresh instance.
    pub fn configured_once(&self) -> bool {
        self.configured
    }

    /// The file this plugin's native code was loaded from (a cache hit) or
    /// saved to (compiled now); `None` when it was compiled and not kept.
    pub fn artifact_file(&self) -> Option<&Path> {
        self.artifact_file.as_deref()
    }

    /// `sha256:` and the first 12 hex digits.
    pub fn short_sha(&self) -> String {
        short_sha(self.sha256.as_hex())
    }

    /// Ask the plugin to decide. A fresh instance is made for the call, so
    /// nothing leaks from one decision to the next.
    pub(crate) fn decide(
        &self,
        image: &ImageRef,
        ctx: &Context,
        plan: &[Source],
    ) -> CallReport<Decision> {
        let mut report = self.call("decide", Some((image, plan)), async |store, plugin| {
            plugin.decide(store, image, ctx, plan).await
        });
        if !self.configure_logs.is_empty() {
            report
                .logs
                .splice(0..0, self.configure_logs.iter().cloned());
        }
        CallReport {
            result: report.result.and_then(|decision| {
                validate::decision(decision, image)
                    .map_err(|reason| self.failure("decide", FailureKind::InvalidOutput(reason)))
            }),
            logs: report.logs,
            lookups: report.lookups,
        }
    }

    fn failure(&self, function: &'static str, kind: FailureKind) -> PluginFailure {
        PluginFailure {
            plugin: self.name.clone(),
            sha256: self.short_sha(),
            function,
            kind,
        }
    }

    /// What instantiating (and configuring) ended in: the instance, or the
    /// failure, named for `function` (`configure` when the plugin refused
    /// its settings).
    fn first_phase<I>(
        &self,
        outcome: Deadline<Result<I, String>>,
        function: &'static str,
        store: &Store<HostState>,
        limits: &SandboxLimits,
    ) -> Result<I, PluginFailure> {
        match outcome {
            Deadline::Done(Ok(Ok(instance))) => Ok(instance),
            Deadline::Done(Ok(Err(message))) => Err(self.failure(
                "configure",
                FailureKind::InvalidOutput(untrusted::escape(&message, 4096)),
            )),
            Deadline::Done(Err(error)) => {
                Err(self.failure(function, store.data().classify(&error, limits)))
            }
            Deadline::Blocked => Err(self.failure(function, FailureKind::Blocked(limits.timeout))),
        }
    }

    /// Instantiate on a fresh store, configure, then run `f`. Any failure is
    /// named for the function that was running when it happened.
    ///
    /// Instantiation and `configure` share one deadline, and `f` gets a
    /// whole deadline of its own. `decision`: the image and plan `f`
    /// decides on, which scope a `resolve-digest` grant.
    fn call<T>(
        &self,
        function: &'static str,
        decision: Option<(&ImageRef, &[Source])>,
        f: impl AsyncFnOnce(&mut Store<HostState>, &Plugin) -> wasmtime::Result<T>,
    ) -> CallReport<T> {
        let limits = &self.limits;
        // Declared before the store, so dropped after it: the slots go back
        // to the pool only once the instance has.
        let _slots = self.sandbox.slots.acquire(self.weight);
        let mut store = self.sandbox.store(limits);
        let excused = self.registry.as_ref().map(|client| {
            let excused = Excused::default();
            let access = DigestAccess::new(client.clone(), excused.clone(), self.stale_if_error);
            grant_digests(&mut store, access, excused.clone());
            excused
        });
        let pre = self.pre.as_ref().expect("a loaded plugin has a component");
        // What a failure before `f` is named for: instantiating a snapshot,
        // or instantiating and configuring (which share a deadline).
        let first = if self.configured {
            "instantiate"
        } else {
            "configure"
        };
        let configured = run_with_deadline(limits.timeout, None, async {
            let plugin = pre.instantiate(&mut store).await?;
            if self.configured {
                return Ok(Ok(plugin));
            }
            let configured = plugin.configure(&mut store, &self.settings_json).await?;
            Ok(configured.map(|()| plugin))
        });
        let result = match self.first_phase(configured, first, &store, limits) {
            Ok(plugin) => {
                let state = store.data_mut();
                state.deciding = true;
                if let (Some(access), Some((image, plan))) = (state.digests.as_mut(), decision) {
                    access.scope(image, plan);
                }
                arm_deadline(&mut store, limits.timeout);
                match run_with_deadline(limits.timeout, excused.as_ref(), f(&mut store, &plugin)) {
                    Deadline::Done(Ok(value)) => Ok(value),
                    Deadline::Done(Err(error)) => {
                        Err(self.failure(function, store.data().classify(&error, limits)))
                    }
                    Deadline::Blocked => {
                        Err(self.failure(function, FailureKind::Blocked(limits.timeout)))
                    }
                }
            }
            Err(failure) => Err(failure),
        };
        let state = store.data_mut();
        CallReport {
            result,
            logs: state.take_logs(),
            lookups: std::mem::take(&mut state.lookups),
        }
    }
}

/// The plugin's bytes, read now if they were not read yet (the digest was
/// remembered), and checked against that digest.
fn read_once<'w>(
    wasm: &'w mut Option<Cow<'static, [u8]>>,
    spec: &PluginSpec,
    sha256: &WasmDigest,
) -> Result<&'w [u8], PluginLoadError> {
    if wasm.is_none()
        && let PluginSource::Path(path) = &spec.source
    {
        let read_error = |source| PluginLoadError::Read {
            plugin: spec.name.clone(),
            path: path.clone(),
            source,
        };
        let bytes = std::fs::read(path).map_err(read_error)?;
        if WasmDigest::of(&bytes) != *sha256 {
            return Err(read_error(std::io::Error::other(
                "it changed while sifr was loading it; run again",
            )));
        }
        *wasm = Some(bytes.into());
    }
    Ok(wasm
        .as_deref()
        .expect("a builtin's bytes are always at hand"))
}

/// What configuring once came to.
enum Once {
    /// The configured instance, as a component.
    Snapshot(Component),
    /// This plugin with these settings cannot be snapshotted (it cannot be
    /// instrumented, or keeps a WASI handle past `configure`): configure
    /// each instance, now and on later runs.
    Never,
    /// Not this time (reading its state out ran out of time).
    NotNow,
}

/// How long reading a configured instance's state out may take.
const SNAPSHOT_DEADLINE: std::time::Duration = std::time::Duration::from_secs(60);

/// Empties Cranelift's function cache when dropped.
struct ClearOnDrop(Arc<super::sandbox::FunctionCache>);

impl Drop for ClearOnDrop {
    fn drop(&mut self) {
        self.0.clear();
    }
}

/// Why a component could not be compiled.
enum CompileError {
    /// Not a valid component.
    Invalid(String),
    /// Valid, but an instance of it would take more than the sandbox
    /// allows (the pool checks this when compiling, before anything runs).
    OverLimits(String),
}

/// Compile `wasm`, or load its native code from the cache.
fn compile(
    sandbox: &Sandbox,
    cache: Option<&CompileCache>,
    read_only: bool,
    wasm: &[u8],
    sha256: &str,
) -> Result<(Component, ArtifactOrigin, Option<PathBuf>), CompileError> {
    let engine = &sandbox.engine;
    // Nothing compiles this component again: keep none of its functions.
    let _functions = ClearOnDrop(sandbox.functions.clone());
    let name = cache.map(|c| (c, c.artifact_name(engine, sha256)));
    let cache_hit = |cache: &CompileCache, name: &str, component| {
        Ok((component, hit(cache), Some(cache.dir().join(name))))
    };
    if let Some((cache, name)) = &name
        && let Some(component) = cache.load(engine, name)
    {
        return cache_hit(cache, name, component);
    }
    // The site store is only read here: compile in memory.
    let name = name.filter(|_| !read_only);
    // One process compiles; the others wait for it, then load its artifact.
    let _lock = name.as_ref().and_then(|(cache, name)| cache.lock(name));
    if let Some((cache, name)) = &name
        && _lock.is_some()
        && let Some(component) = cache.load(engine, name)
    {
        return cache_hit(cache, name, component);
    }
    if wasm.starts_with(b"\0asm\x01\0\0\0") {
        return Err(CompileError::Invalid(
            "it is a core WebAssembly module, not a component; build it for \
                    wasm32-wasip2 (or run `wasm-tools component new`)"
                .to_string(),
        ));
    }
    let component = Component::new(engine, wasm).map_err(|e| {
        let text = chain_text(&e);
        match over_limits(&text) {
            Some(what) => CompileError::OverLimits(what),
            None => CompileError::Invalid(format!(
                "it is not a valid WebAssembly component ({text}); build it with \
                 `cargo build --target wasm32-wasip2 --release`"
            )),
        }
    })?;
    // A cache that cannot be written only costs time on the next run.
    let saved = name
        .filter(|(cache, name)| cache.store(&component, name).is_ok())
        .map(|(cache, name)| cache.dir().join(name));
    Ok((component, ArtifactOrigin::Compiled, saved))
}

/// The sandbox limit a compile error reports, said the way the limiter
/// says it at run time. wasmtime's pooling allocator refuses, at compile
/// time, a component whose instance could not fit its per-instance limits;
/// it says so only in its message (the error type is private).
fn over_limits(text: &str) -> Option<String> {
    if !text.contains("pooling allocator") {
        return None;
    }
    Some(if text.contains("memories count") {
        format!("more than {MAX_MEMORIES} memories")
    } else if text.contains("tables count") {
        format!("more than {MAX_TABLES} tables")
    } else if text.contains("core module instances") {
        format!("more than {MAX_INSTANCES} instances")
    } else if text.contains("table elements") || text.contains("elements") {
        format!("more than {MAX_TABLE_ELEMENTS} table elements in all")
    } else {
        text.to_string()
    })
}

/// The contract version from the component's export name
/// (`sifr:policy/policy@0.1.0`), or why there is none.
fn policy_export_version(sandbox: &Sandbox, component: &Component) -> Result<String, String> {
    let ty = component.component_type();
    // Names from the file: escaped before they can reach a message.
    let exports: Vec<String> = ty
        .exports(&sandbox.engine)
        .map(|(name, _)| untrusted::escape(name, 256))
        .take(32)
        .collect();
    wit::version_of(&exports).map(|v| v.to_string())
}

/// An error and its causes on one line, escaped: a parser error quotes
/// names from the wasm file, which its author chose.
fn chain_text(error: &wasmtime::Error) -> String {
    let text = error
        .chain()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join(": ");
    untrusted::escape(&text, 2048)
}
