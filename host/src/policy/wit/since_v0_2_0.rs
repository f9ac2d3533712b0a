//! Contract `sifr:policy@0.2.0` (`wit/v0.2.0/`): its bindings, its host
//! imports, and the conversions between its types and sifr's own. Nothing
//! outside this module names a 0.2.0 type.
//!
//! New since 0.1.0: the host import `resolve-digest` (see
//! `policy::capability`). The types and the exports are 0.1.0's.

use semver::Version;
use wasmtime::Store;
use wasmtime::component::{InstancePre, Linker};

use super::{RawDecision, RawPullRef, RawSource};
use crate::policy::sandbox::{HostState, LogLevel};
use crate::policy::{Context, PullRef, Purpose, Source};
use crate::reference::ImageRef;

wasmtime::component::bindgen!({
    path: "../wit/v0.2.0",
    world: "plugin",
    // Exports are called as futures, so that a call blocked in WASI can be
    // dropped at its deadline (see `sandbox::run_with_deadline`). The
    // imports stay synchronous: `log` never blocks, and `resolve-digest`
    // blocks under its own timeout, its time excused from the deadline.
    exports: { default: async },
});

use self::sifr::policy::types as wit;

/// The first release of this contract.
pub(crate) const SINCE: Version = Version::new(0, 2, 0);

/// Link this version's host import.
pub(crate) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    Plugin::add_to_linker::<_, wasmtime::component::HasSelf<_>>(linker, |state: &mut HostState| {
        state
    })
}

pub(crate) fn pre(instance_pre: InstancePre<HostState>) -> wasmtime::Result<PluginPre<HostState>> {
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

impl self::sifr::policy::host::Host for HostState {
    fn log(&mut self, level: self::sifr::policy::host::Level, message: String) {
        use self::sifr::policy::host::Level;
        let level = match level {
            Level::Trace => LogLevel::Trace,
            Level::Debug => LogLevel::Debug,
            Level::Info => LogLevel::Info,
            Level::Warn => LogLevel::Warn,
            Level::Error => LogLevel::Error,
        };
        self.log_line(level, &message);
    }

    fn resolve_digest(
        &mut self,
        registry: String,
        repository: String,
        tag: String,
        arch: String,
    ) -> Result<self::sifr::policy::host::Resolved, String> {
        HostState::resolve_digest(self, &registry, &repository, &tag, &arch).map(|answer| {
            self::sifr::policy::host::Resolved {
                manifest_digest: answer.manifest_digest,
                index_digest: answer.index_digest,
                from_cache: answer.from_cache,
            }
        })
    }
}
