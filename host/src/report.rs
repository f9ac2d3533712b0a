//! What `--json` prints: one `Serialize` shape per command, built from the
//! library's own types, so that an embedder gets the same shapes the CLI
//! prints. Every top-level object carries `"schema": 1`; a change that
//! removes, renames or retypes a field raises it. The shapes are documented
//! in `docs/json.md`.

use std::path::PathBuf;

use serde::Serialize;

use crate::cache::{BadEntry, Entry};
use crate::config::{Config, OnError};
use crate::lock::{Drift, LockedImage};
use crate::policy::{ArtifactOrigin, LoadedPlugin, Outcome, Resolution, Source, Step};
use crate::reference::ImageRef;
use crate::runtime::Pulled;

/// The version of the shapes below.
pub const SCHEMA: u32 = 1;

/// `sifr resolve --json`: one per image, in the order given.
#[derive(Debug, Serialize)]
pub struct ResolveReport {
    pub schema: u32,
    /// The reference as it was written.
    pub input: String,
    #[serde(flatten)]
    pub result: ResolveResult,
}

/// How resolving one image ended, named by `outcome`.
#[derive(Debug, Serialize)]
#[serde(tag = "outcome", rename_all = "kebab-case")]
pub enum ResolveResult {
    /// The reference does not parse.
    Invalid { error: String },
    /// The sources to try, in order.
    Plan {
        image: ImageRef,
        canonical: String,
        steps: Vec<Step>,
        sources: Vec<Source>,
    },
    /// A plugin refused the image.
    Deny {
        image: ImageRef,
        canonical: String,
        steps: Vec<Step>,
        plugin: String,
        reason: String,
    },
    /// A fail-closed plugin failed.
    Failed {
        image: ImageRef,
        canonical: String,
        steps: Vec<Step>,
        plugin: String,
        error: String,
    },
}

impl ResolveReport {
    pub fn of(input: &str, resolution: &Resolution) -> Self {
        let image = resolution.image.clone();
        let canonical = image.to_string();
        let steps = resolution.steps.clone();
        let result = match &resolution.outcome {
            Outcome::Plan(sources) => ResolveResult::Plan {
                image,
                canonical,
                steps,
                sources: sources.clone(),
            },
            Outcome::Deny { plugin, reason } => ResolveResult::Deny {
                image,
                canonical,
                steps,
                plugin: plugin.clone(),
                reason: reason.clone(),
            },
            Outcome::Failed(failure) => ResolveResult::Failed {
                image,
                canonical,
                steps,
                plugin: failure.plugin.clone(),
                error: failure.to_string(),
            },
        };
        Self {
            schema: SCHEMA,
            input: input.to_string(),
            result,
        }
    }

    pub fn invalid(input: &str, error: &dyn std::fmt::Display) -> Self {
        Self {
            schema: SCHEMA,
            input: input.to_string(),
            result: ResolveResult::Invalid {
                error: error.to_string(),
            },
        }
    }
}

/// One loaded plugin, as `plugin ls` and `plugin check` show it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct PluginReport {
    pub name: String,
    /// `builtin:NAME` or the `.wasm` path.
    pub source: String,
    /// sha256 of the component, lowercase hex.
    pub sha256: String,
    /// The contract version it was built for.
    pub api_version: String,
    pub on_error: OnError,
    pub locked: bool,
    pub settings: serde_json::Value,
    /// Whether its native code was compiled now, loaded from the user's
    /// compile cache, or (site-locked) loaded from the site store.
    pub artifact: ArtifactOrigin,
    /// The file its native code was loaded from or saved to.
    pub artifact_file: Option<std::path::PathBuf>,
    /// Why a site-locked plugin was compiled now rather than loaded from
    /// the site store (`sifr site prepare` fills it).
    pub site_store_miss: Option<String>,
    /// `"once"`: decisions start from a snapshot of the configured
    /// instance; `"each-decision"`: each fresh instance is configured.
    pub configure: &'static str,
    /// The host capabilities its config entry grants it.
    pub capabilities: Vec<crate::config::Capability>,
    pub timeout_ms: u64,
    pub memory_mib: usize,
}

impl PluginReport {
    pub fn of(plugin: &LoadedPlugin) -> Self {
        Self {
            name: plugin.name.clone(),
            source: plugin.source.clone(),
            sha256: plugin.sha256.to_string(),
            api_version: plugin.api_version.clone(),
            on_error: plugin.on_error,
            locked: plugin.locked,
            settings: plugin.settings.clone(),
            artifact: plugin.artifact,
            artifact_file: plugin.artifact_file().map(Into::into),
            site_store_miss: plugin.site_store_miss().map(Into::into),
            configure: if plugin.configured_once() {
                "once"
            } else {
                "each-decision"
            },
            capabilities: plugin.capabilities.clone(),
            timeout_ms: plugin.limits.timeout.as_millis() as u64,
            memory_mib: plugin.limits.memory_bytes >> 20,
        }
    }
}

/// `sifr plugin ls --json`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct PluginListReport {
    pub schema: u32,
    /// The config files read, in order.
    pub config_files: Vec<PathBuf>,
    /// The limits of plugins the site did not lock.
    pub sandbox: SandboxReport,
    pub plugins: Vec<PluginReport>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct SandboxReport {
    pub timeout_ms: u64,
    pub memory_mib: usize,
}

impl PluginListReport {
    pub fn of(config: &Config, plugins: &[LoadedPlugin]) -> Self {
        Self {
            schema: SCHEMA,
            config_files: config.files.clone(),
            sandbox: SandboxReport {
                timeout_ms: config.sandbox.timeout.as_millis() as u64,
                memory_mib: config.sandbox.memory_bytes >> 20,
            },
            plugins: plugins.iter().map(PluginReport::of).collect(),
        }
    }
}

/// `sifr plugin check --json`: the plugin, and its step for each image.
#[derive(Debug, Serialize)]
pub struct PluginCheckReport {
    pub schema: u32,
    pub plugin: PluginReport,
    pub results: Vec<CheckResult>,
}

/// One image through the plugin under check.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum CheckResult {
    /// The reference does not parse (`outcome` is `"invalid"`).
    Invalid {
        input: String,
        outcome: &'static str,
        error: String,
    },
    /// What the plugin did.
    Step {
        input: String,
        /// The canonical reference.
        image: String,
        step: Step,
    },
}

impl CheckResult {
    pub fn invalid(input: &str, error: &dyn std::fmt::Display) -> Self {
        Self::Invalid {
            input: input.to_string(),
            outcome: "invalid",
            error: error.to_string(),
        }
    }

    pub fn step(input: &str, image: &ImageRef, step: &Step) -> Self {
        Self::Step {
            input: input.to_string(),
            image: image.to_string(),
            step: step.clone(),
        }
    }
}

/// `sifr pull --json`: one per image.
#[derive(Debug, Serialize)]
pub struct PullReport {
    pub schema: u32,
    pub input: String,
    /// What was pulled or found in the cache.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pulled: Option<Pulled>,
    /// Why it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl PullReport {
    pub fn pulled(input: &str, pulled: &Pulled) -> Self {
        Self {
            schema: SCHEMA,
            input: input.to_string(),
            pulled: Some(pulled.clone()),
            error: None,
        }
    }

    pub fn failed(input: &str, error: &dyn std::fmt::Display) -> Self {
        Self {
            schema: SCHEMA,
            input: input.to_string(),
            pulled: None,
            error: Some(error.to_string()),
        }
    }
}

/// `sifr lock --json` and `sifr lock --check --json`: one per image.
#[derive(Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct LockReport {
    pub schema: u32,
    /// The reference as written.
    pub input: String,
    pub arch: String,
    /// `sifr lock`: `"locked"` (new), `"updated"`, `"unchanged"`;
    /// `--check`: `"ok"`, `"drift"`; both: `"error"`.
    pub outcome: &'static str,
    /// The entry written (`sifr lock`), or the one checked (`--check`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entry: Option<LockedImage>,
    /// `--check`: how the image drifted.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub drift: Vec<DriftReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One way a locked image drifted: its `kind` and fields, and a `message`.
#[derive(Debug, Serialize)]
pub struct DriftReport {
    #[serde(flatten)]
    pub drift: Drift,
    pub message: String,
}

impl LockReport {
    pub fn new(input: &str, arch: &str, outcome: &'static str) -> Self {
        Self {
            schema: SCHEMA,
            input: input.to_string(),
            arch: arch.to_string(),
            outcome,
            entry: None,
            drift: Vec::new(),
            error: None,
        }
    }

    pub fn with_entry(mut self, entry: &LockedImage) -> Self {
        self.entry = Some(entry.clone());
        self
    }

    pub fn with_drift(mut self, drift: &[Drift]) -> Self {
        self.drift = drift
            .iter()
            .map(|d| DriftReport {
                drift: d.clone(),
                message: d.to_string(),
            })
            .collect();
        self
    }

    pub fn failed(input: &str, arch: &str, error: &dyn std::fmt::Display) -> Self {
        Self {
            error: Some(error.to_string()),
            ..Self::new(input, arch, "error")
        }
    }
}

/// `sifr cache ls --json`: one per index record, the record as it is
/// stored, plus the schema.
#[derive(Debug, Serialize)]
pub struct CacheEntryReport {
    pub schema: u32,
    #[serde(flatten)]
    pub entry: Entry,
}

impl CacheEntryReport {
    pub fn of(entry: &Entry) -> Self {
        Self {
            schema: SCHEMA,
            entry: entry.clone(),
        }
    }
}

/// `sifr cache prune --json`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct PruneReport {
    pub schema: u32,
    pub dry_run: bool,
    /// Removed (or, on a dry run, to be removed).
    pub removed: Vec<Entry>,
    /// Kept because a pull or a run holds them.
    pub in_use: Vec<Entry>,
}

/// `sifr cache verify --json`.
#[derive(Debug, Serialize)]
pub struct VerifyReport {
    pub schema: u32,
    /// Entries whose file is missing or whose content changed.
    pub bad: Vec<BadEntry>,
}

/// `sifr cache du --json`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct DuReport {
    pub schema: u32,
    pub cache: PathBuf,
    pub images: usize,
    /// Bytes of the cached images.
    pub size: u64,
    /// Bytes of blobs and temporary files on disk, orphans included.
    pub on_disk: u64,
    pub by_source: Vec<SourceUsage>,
    /// With `--max-size`: what `cache prune --max-size` would remove.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prune_max_size: Option<WouldPrune>,
}

/// Images and bytes that came from one registry (the mirror that served
/// them).
#[derive(Debug, Serialize)]
pub struct SourceUsage {
    pub registry: String,
    pub images: usize,
    pub size: u64,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct WouldPrune {
    pub max_size: u64,
    pub would_remove: Vec<Entry>,
    pub would_free: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{PullRef, Source};

    #[test]
    fn every_report_carries_its_schema_and_sources_their_uri() {
        let image = ImageRef::parse("ubuntu:22.04").unwrap();
        let resolution = Resolution {
            image: image.clone(),
            steps: Vec::new(),
            outcome: Outcome::Plan(vec![Source {
                reference: PullRef::Tag("22.04".into()),
                ..Source::origin(&image)
            }]),
        };
        let json = serde_json::to_value(ResolveReport::of("ubuntu:22.04", &resolution)).unwrap();
        assert_eq!(json["schema"], 1);
        assert_eq!(json["outcome"], "plan");
        assert_eq!(json["canonical"], "docker.io/library/ubuntu:22.04");
        assert_eq!(json["sources"][0]["uri"], "docker://ubuntu:22.04");
        let json = serde_json::to_value(ResolveReport::invalid("UB UNTU", &"bad")).unwrap();
        assert_eq!(json["schema"], 1);
        assert_eq!(json["outcome"], "invalid");
        assert_eq!(json["error"], "bad");
    }
}
