//! Guest-side bindings for sifr policy plugins.
//!
//! A plugin implements [`Guest`] and exports it with
//! `sifr_plugin::export!(MyPlugin with_types_in sifr_plugin);`. The contract
//! itself lives in the repository's `wit/` folder and is documented there.

wit_bindgen::generate!({
    path: "../../wit/v0.2.0",
    world: "plugin",
    pub_export_macro: true,
    default_bindings_module: "sifr_plugin",
});

pub use exports::sifr::policy::policy::Guest;
pub use sifr::policy::host::{Level, Resolved, log, resolve_digest};
pub use sifr::policy::types::{Context, Decision, ImageRef, PullRef, Purpose, Source};

/// Log a line at `info` level through the host.
pub fn info(message: &str) {
    log(Level::Info, message);
}

/// Log a line at `debug` level through the host.
pub fn debug(message: &str) {
    log(Level::Debug, message);
}

/// Log a line at `warn` level through the host.
pub fn warn(message: &str) {
    log(Level::Warn, message);
}

impl ImageRef {
    /// The reference this image asks for: its manifest digest when pinned
    /// (the tag is then informational only), else its tag, else `latest`.
    pub fn pull_ref(&self) -> PullRef {
        match (&self.manifest_digest, &self.tag) {
            (Some(digest), _) => PullRef::Digest(digest.clone()),
            (None, Some(tag)) => PullRef::Tag(tag.clone()),
            (None, None) => PullRef::Tag("latest".to_string()),
        }
    }
}
