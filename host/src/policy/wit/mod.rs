//! The plugin contract, one module per WIT version (`wit/vX.Y.Z/`), and the
//! one place that dispatches between them.
//!
//! Each `since_vX_Y_Z` module holds its `bindgen!`, its host imports and the
//! conversions between its types and sifr's own (0.1.0 and 0.2.0 share
//! theirs, whose types are the same, through [`v0_exports`]); code outside
//! this module never names a contract version. A plugin is matched to a
//! module by the version of the `sifr:policy/policy` interface it exports,
//! by semver rules: `0.1.z` is served by the 0.1 module, whatever `z` is,
//! `0.2.z` by the 0.2 module; `0.3.0` or `1.0.0` needs a module of its own.
//! A plugin built for an older version keeps loading when a newer one
//! exists.

/// What every contract version whose types and exports are 0.1.0's shares:
/// linking, instantiating, calling `configure` and `decide`, and the
/// conversions between its generated types and sifr's own. Expanded inside
/// each `since_vX_Y_Z` module, after its `bindgen!`, so that every name
/// here is that version's; a version that changes the types writes its own.
macro_rules! v0_exports {
    () => {
        /// Link this version's host import.
        pub(crate) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
            Plugin::add_to_linker::<_, wasmtime::component::HasSelf<_>>(
                linker,
                |state: &mut HostState| state,
            )
        }

        pub(crate) fn pre(
            instance_pre: InstancePre<HostState>,
        ) -> wasmtime::Result<PluginPre<HostState>> {
            PluginPre::new(instance_pre)
        }

        pub(crate) async fn configure(
            plugin: &Plugin,
            store: &mut Store<HostState>,
            settings: &str,
        ) -> wasmtime::Result<Result<(), String>> {
            plugin
                .sifr_policy_policy()
                .call_configure(store, settings)
                .await
        }

        pub(crate) async fn decide(
            plugin: &Plugin,
            store: &mut Store<HostState>,
            image: &ImageRef,
            ctx: &Context,
            plan: &[Source],
        ) -> wasmtime::Result<RawDecision> {
            let image_w = wit::ImageRef {
                registry: image.registry.clone(),
                repository: image.repository.clone(),
                tag: image.tag.clone(),
                manifest_digest: image.manifest_digest.as_ref().map(|d| d.to_string()),
            };
            let ctx_w = wit::Context {
                purpose: match ctx.purpose {
                    Purpose::Pull => wit::Purpose::Pull,
                    Purpose::Run => wit::Purpose::Run,
                },
                arch: ctx.arch.clone(),
                local_sif_digest: ctx.local_sif_digest.as_ref().map(|d| d.to_string()),
                short_name: image.short_name.clone(),
            };
            let plan_w: Vec<wit::Source> = plan.iter().map(source_to_wit).collect();
            let decision = plugin
                .sifr_policy_policy()
                .call_decide(store, &image_w, &ctx_w, &plan_w)
                .await?;
            Ok(match decision {
                wit::Decision::Deny(reason) => RawDecision::Deny(reason),
                wit::Decision::Plan(sources) => {
                    RawDecision::Plan(sources.into_iter().map(source_from_wit).collect())
                }
            })
        }

        /// A validated source, as the next plugin receives it.
        fn source_to_wit(s: &Source) -> wit::Source {
            wit::Source {
                registry: s.registry.clone(),
                repository: s.repository.clone(),
                reference: match &s.reference {
                    PullRef::Tag(tag) => wit::PullRef::Tag(tag.clone()),
                    PullRef::Digest(digest) => wit::PullRef::Digest(digest.to_string()),
                },
                plain_http: s.plain_http,
                note: s.note.clone(),
            }
        }

        fn source_from_wit(s: wit::Source) -> RawSource {
            RawSource {
                registry: s.registry,
                repository: s.repository,
                reference: match s.reference {
                    wit::PullRef::Tag(tag) => RawPullRef::Tag(tag),
                    wit::PullRef::Digest(digest) => RawPullRef::Digest(digest),
                },
                plain_http: s.plain_http,
                note: s.note,
            }
        }

        /// The types interface has no functions; the host only has to name it.
        impl self::sifr::policy::types::Host for HostState {}

        /// A `log` level of this version, as sifr's.
        fn log_level(level: self::sifr::policy::host::Level) -> LogLevel {
            use self::sifr::policy::host::Level;
            match level {
                Level::Trace => LogLevel::Trace,
                Level::Debug => LogLevel::Debug,
                Level::Info => LogLevel::Info,
                Level::Warn => LogLevel::Warn,
                Level::Error => LogLevel::Error,
            }
        }
    };
}
pub(crate) use v0_exports;

mod since_v0_1_0;
mod since_v0_2_0;

use semver::Version;
use wasmtime::Store;
use wasmtime::component::{Instance, InstancePre, Linker};

use super::sandbox::HostState;
use super::{Context, Source};
use crate::reference::ImageRef;

/// The interface every plugin exports, without its version.
pub(crate) const POLICY_INTERFACE: &str = "sifr:policy/policy";

/// The newest contract this host implements.
pub(crate) const LATEST: Version = since_v0_2_0::SINCE;

/// Every contract version this host implements, oldest first.
pub(crate) fn supported() -> Vec<Version> {
    vec![since_v0_1_0::SINCE, since_v0_2_0::SINCE]
}

/// What a plugin returned, in sifr's own types, before validation.
#[derive(Debug)]
pub(crate) enum RawDecision {
    Plan(Vec<RawSource>),
    Deny(String),
}

#[derive(Debug)]
pub(crate) struct RawSource {
    pub registry: String,
    pub repository: String,
    pub reference: RawPullRef,
    pub plain_http: bool,
    pub note: String,
}

#[derive(Debug)]
pub(crate) enum RawPullRef {
    Tag(String),
    Digest(String),
}

/// Link the host imports of every version.
pub(crate) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    since_v0_1_0::add_to_linker(linker)?;
    since_v0_2_0::add_to_linker(linker)
}

/// Which module serves a plugin that exports `exported`, or why none does.
fn module_for(exported: &Version) -> Result<Version, String> {
    supported()
        .into_iter()
        .rev()
        .find(|since| compatible(since, exported))
        .ok_or_else(|| {
            let known: Vec<String> = supported().iter().map(|v| format!("{v}")).collect();
            format!(
                "it was built for {POLICY_INTERFACE}@{exported}, and this sifr speaks {} \
                 (and what is semver-compatible with them); build it against one of those, \
                 or upgrade sifr",
                known.join(", ")
            )
        })
}

/// Semver compatibility as cargo reads it: the same major version, and for
/// `0.x`, the same minor; never an older release than the module's own.
fn compatible(since: &Version, exported: &Version) -> bool {
    let same_line = if since.major == 0 {
        exported.major == 0 && exported.minor == since.minor
    } else {
        exported.major == since.major
    };
    same_line && exported >= since && exported.pre.is_empty()
}

/// The contract version a component exports, and the module that serves it.
pub(crate) fn version_of(exports: &[String]) -> Result<Version, String> {
    for export in exports {
        if let Some(version) = export
            .strip_prefix(POLICY_INTERFACE)
            .and_then(|rest| rest.strip_prefix('@'))
        {
            let version = Version::parse(version)
                .map_err(|e| format!("it exports {export}, whose version is not semver ({e})"))?;
            module_for(&version)?;
            return Ok(version);
        }
    }
    Err(format!(
        "it does not export {POLICY_INTERFACE}@{LATEST} (it exports: {})",
        if exports.is_empty() {
            "nothing".to_string()
        } else {
            exports.join(", ")
        }
    ))
}

/// A plugin's pre-instantiated component, of whichever version it exports.
pub(crate) enum PluginPre {
    V0_1(since_v0_1_0::PluginPre<HostState>),
    V0_2(since_v0_2_0::PluginPre<HostState>),
}

/// One instance of a plugin.
pub(crate) enum Plugin {
    V0_1(since_v0_1_0::Plugin),
    V0_2(since_v0_2_0::Plugin),
}

impl PluginPre {
    /// Type-check `instance_pre` against the module for `version`.
    pub(crate) fn new(
        version: &Version,
        instance_pre: InstancePre<HostState>,
    ) -> wasmtime::Result<Self> {
        let since = module_for(version).map_err(wasmtime::Error::msg)?;
        match since {
            v if v == since_v0_1_0::SINCE => Ok(Self::V0_1(since_v0_1_0::pre(instance_pre)?)),
            v if v == since_v0_2_0::SINCE => Ok(Self::V0_2(since_v0_2_0::pre(instance_pre)?)),
            other => unreachable!("no module for {other}"),
        }
    }

    /// The untyped pre-instance, for a host that needs the raw instance.
    pub(crate) fn instance_pre(&self) -> &InstancePre<HostState> {
        match self {
            Self::V0_1(pre) => pre.instance_pre(),
            Self::V0_2(pre) => pre.instance_pre(),
        }
    }

    /// The typed view of an instance of this plugin's component.
    pub(crate) fn wrap(
        &self,
        store: &mut Store<HostState>,
        instance: &Instance,
    ) -> wasmtime::Result<Plugin> {
        match self {
            Self::V0_1(_) => Ok(Plugin::V0_1(since_v0_1_0::Plugin::new(store, instance)?)),
            Self::V0_2(_) => Ok(Plugin::V0_2(since_v0_2_0::Plugin::new(store, instance)?)),
        }
    }

    pub(crate) async fn instantiate(
        &self,
        store: &mut Store<HostState>,
    ) -> wasmtime::Result<Plugin> {
        match self {
            Self::V0_1(pre) => Ok(Plugin::V0_1(pre.instantiate_async(store).await?)),
            Self::V0_2(pre) => Ok(Plugin::V0_2(pre.instantiate_async(store).await?)),
        }
    }
}

impl Plugin {
    pub(crate) async fn configure(
        &self,
        store: &mut Store<HostState>,
        settings: &str,
    ) -> wasmtime::Result<Result<(), String>> {
        match self {
            Self::V0_1(plugin) => since_v0_1_0::configure(plugin, store, settings).await,
            Self::V0_2(plugin) => since_v0_2_0::configure(plugin, store, settings).await,
        }
    }

    pub(crate) async fn decide(
        &self,
        store: &mut Store<HostState>,
        image: &ImageRef,
        ctx: &Context,
        plan: &[Source],
    ) -> wasmtime::Result<RawDecision> {
        match self {
            Self::V0_1(plugin) => since_v0_1_0::decide(plugin, store, image, ctx, plan).await,
            Self::V0_2(plugin) => since_v0_2_0::decide(plugin, store, image, ctx, plan).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_matched_by_semver_not_by_prefix() {
        let v = |s: &str| Version::parse(s).unwrap();
        for ok in ["0.1.0", "0.1.1", "0.1.12"] {
            assert_eq!(module_for(&v(ok)), Ok(v("0.1.0")), "{ok}");
        }
        for ok in ["0.2.0", "0.2.3"] {
            assert_eq!(module_for(&v(ok)), Ok(v("0.2.0")), "{ok}");
        }
        for refused in ["0.3.0", "1.0.0", "0.10.0", "0.0.9", "0.1.1-rc.1"] {
            let err = module_for(&v(refused)).unwrap_err();
            assert!(
                err.contains(&format!("built for {POLICY_INTERFACE}@{refused}")),
                "{err}"
            );
        }
    }

    #[test]
    fn a_version_that_is_not_semver_is_named() {
        let err = version_of(&["sifr:policy/policy@0.1".to_string()]).unwrap_err();
        assert!(err.contains("not semver"), "{err}");
    }
}
