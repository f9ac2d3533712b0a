//! Loading, pinning and calling one plugin.

use std::sync::Arc;

use serde::Serialize;
use wasmtime::Store;
use wasmtime::component::Component;

use super::compile_cache::CompileCache;
use super::error::{FailureKind, PluginFailure, PluginLoadError};
use super::sandbox::{Deadline, HostState, LogLine, Sandbox, arm_deadline, run_with_deadline};
use super::validate::{self, Decision};
use super::wit::{self, Plugin, PluginPre};
use super::{Context, Source};
use crate::config::{OnError, PluginSource, PluginSpec, SandboxLimits};
use crate::reference::{ImageRef, WasmDigest};
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
    pub artifact: ArtifactOrigin,
    /// The limits its calls run under: the site's for a site-locked plugin.
    pub limits: SandboxLimits,
    settings_json: String,
    pre: PluginPre,
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
    ) -> Result<Self, PluginLoadError> {
        let name = spec.name.clone();
        let (wasm, source): (std::borrow::Cow<'static, [u8]>, String) = match &spec.source {
            PluginSource::Builtin(builtin) => {
                let Some((_, bytes)) = BUILTINS.iter().find(|(n, _)| n == builtin) else {
                    return Err(PluginLoadError::UnknownBuiltin {
                        plugin: name,
                        name: builtin.clone(),
                        known: builtin_names().collect::<Vec<_>>().join(", "),
                    });
                };
                ((*bytes).into(), format!("builtin:{builtin}"))
            }
            PluginSource::Path(path) => {
                let bytes = std::fs::read(path).map_err(|source| PluginLoadError::Read {
                    plugin: name.clone(),
                    path: path.clone(),
                    source,
                })?;
                (bytes.into(), path.display().to_string())
            }
        };
        let sha256 = WasmDigest::of(&wasm);
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
        let short = short_sha(sha256.as_hex());
        // A site-locked plugin is always compiled from its (pinned) wasm:
        // the compiled-plugin cache is the user's to write, and the site's
        // policy must not rest on anything the user can write.
        let cache = cache.filter(|_| !spec.locked);
        let (component, artifact) =
            compile(sandbox, cache, &wasm, sha256.as_hex()).map_err(|reason| {
                PluginLoadError::Compile {
                    plugin: name.clone(),
                    sha256: short.clone(),
                    reason,
                }
            })?;
        let wrong = |reason: String| PluginLoadError::WrongContract {
            plugin: name.clone(),
            sha256: short.clone(),
            reason,
        };
        let api_version = policy_export_version(sandbox, &component).map_err(&wrong)?;
        let instance_pre = sandbox.linker.instantiate_pre(&component).map_err(|e| {
            wrong(format!(
                "its imports cannot be satisfied: {}",
                chain_text(&e)
            ))
        })?;
        let version = semver::Version::parse(&api_version).expect("checked by version_of");
        let pre = PluginPre::new(&version, instance_pre)
            .map_err(|e| wrong(format!("its exports do not match: {}", chain_text(&e))))?;
        let plugin = Self {
            name: name.clone(),
            source,
            sha256,
            api_version,
            settings: spec.settings.clone(),
            on_error: spec.on_error,
            locked: spec.locked,
            artifact,
            limits,
            settings_json: spec.settings.to_string(),
            pre,
            sandbox: sandbox.clone(),
        };
        // Validate the settings now, so that a bad config fails at load time
        // with the plugin's own message rather than on the first image.
        let report = plugin.call("configure", async |_, _| Ok(()));
        match report.result {
            Ok(()) => Ok(plugin),
            Err(PluginFailure {
                kind: FailureKind::InvalidOutput(message),
                function: "configure",
                ..
            }) => Err(PluginLoadError::SettingsRejected {
                plugin: name,
                sha256: short,
                message,
                files: spec.settings_files.clone(),
            }),
            Err(failure) => Err(PluginLoadError::Failed {
                plugin: name,
                sha256: short,
                failure: Box::new(failure),
            }),
        }
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
        let report = self.call("decide", async |store, plugin| {
            plugin.decide(store, image, ctx, plan).await
        });
        CallReport {
            result: report.result.and_then(|decision| {
                validate::decision(decision, image)
                    .map_err(|reason| self.failure("decide", FailureKind::InvalidOutput(reason)))
            }),
            logs: report.logs,
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

    /// Instantiate on a fresh store, configure, then run `f`. Any failure is
    /// named for the function that was running when it happened.
    ///
    /// Instantiation and `configure` share one deadline, and `f` gets a
    /// whole deadline of its own.
    fn call<T>(
        &self,
        function: &'static str,
        f: impl AsyncFnOnce(&mut Store<HostState>, &Plugin) -> wasmtime::Result<T>,
    ) -> CallReport<T> {
        let limits = &self.limits;
        let mut store = self.sandbox.store(limits);
        let configured = run_with_deadline(limits.timeout, async {
            let plugin = self.pre.instantiate(&mut store).await?;
            let configured = plugin.configure(&mut store, &self.settings_json).await?;
            Ok(configured.map(|()| plugin))
        });
        let result = match configured {
            Deadline::Done(Ok(Ok(plugin))) => {
                arm_deadline(&mut store, limits.timeout);
                match run_with_deadline(limits.timeout, f(&mut store, &plugin)) {
                    Deadline::Done(Ok(value)) => Ok(value),
                    Deadline::Done(Err(error)) => {
                        Err(self.failure(function, store.data().classify(&error, limits)))
                    }
                    Deadline::Blocked => {
                        Err(self.failure(function, FailureKind::Blocked(limits.timeout)))
                    }
                }
            }
            Deadline::Done(Ok(Err(message))) => Err(self.failure(
                "configure",
                FailureKind::InvalidOutput(untrusted::escape(&message, 4096)),
            )),
            Deadline::Done(Err(error)) => {
                Err(self.failure("configure", store.data().classify(&error, limits)))
            }
            Deadline::Blocked => {
                Err(self.failure("configure", FailureKind::Blocked(limits.timeout)))
            }
        };
        CallReport {
            result,
            logs: store.data_mut().take_logs(),
        }
    }
}

/// Compile `wasm`, or load its native code from the cache.
fn compile(
    sandbox: &Sandbox,
    cache: Option<&CompileCache>,
    wasm: &[u8],
    sha256: &str,
) -> Result<(Component, ArtifactOrigin), String> {
    let engine = &sandbox.engine;
    let name = cache.map(|c| (c, c.artifact_name(engine, sha256)));
    if let Some((cache, name)) = &name
        && let Some(component) = cache.load(engine, name)
    {
        return Ok((component, ArtifactOrigin::CacheHit));
    }
    if wasm.starts_with(b"\0asm\x01\0\0\0") {
        return Err(
            "it is a core WebAssembly module, not a component; build it for \
                    wasm32-wasip2 (or run `wasm-tools component new`)"
                .to_string(),
        );
    }
    let component = Component::new(engine, wasm).map_err(|e| {
        format!(
            "it is not a valid WebAssembly component ({}); build it with \
             `cargo build --target wasm32-wasip2 --release`",
            chain_text(&e)
        )
    })?;
    if let Some((cache, name)) = &name {
        // A cache that cannot be written only costs time on the next run.
        let _ = cache.store(&component, name);
    }
    Ok((component, ArtifactOrigin::Compiled))
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
