//! Contract `sifr:policy@0.2.0` (`wit/v0.2.0/`): its bindings, its host
//! imports; the conversions between its types and sifr's own are
//! `super::v0_exports!`, shared with every version of 0.1.0's types. Nothing
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

super::v0_exports!();

impl self::sifr::policy::host::Host for HostState {
    fn log(&mut self, level: self::sifr::policy::host::Level, message: String) {
        let level = log_level(level);
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
