//! Policy: the chain of sandboxed WebAssembly plugins that decides how an
//! image is pulled.
//!
//! - [`wit`]: the WIT contract, one module per contract version, and the
//!   dispatch between them.
//! - [`sandbox`]: the one place where the wasmtime engine is configured, and
//!   the per-call store with its limits.
//! - [`plugin`]: loading, pinning and calling one plugin.
//! - [`compile_cache`]: compiled plugins on disk.
//! - [`validate`]: what a plugin returns, checked before the host uses it.
//! - [`chain`]: running the plugins in order.
//! - [`error`]: how loading or running the chain fails.
//!
//! What the policy says has one set of names: each plugin returns a
//! `Decision` (a plan, or `Deny` with a reason); each plugin's turn is a
//! [`Step`] with its [`StepOutcome`] (`Plan`, `Deny`, or `Skipped`/`Failed`
//! when it broke); the chain ends in an [`Outcome`] (`Plan`, `Deny` or
//! `Failed`); and a [`Resolution`] holds the image, the steps and the
//! outcome.

mod capability;
mod chain;
mod compile_cache;
pub mod error;
mod plugin;
mod sandbox;
mod snapshot;
mod validate;
mod wit;

use serde::Serialize;

use crate::reference::{DOCKER_HUB, ImageRef, ManifestDigest, SifDigest};

pub use capability::{DigestLookup, LookupOutcome, StaleAnswer};
pub use chain::{
    Outcome, Policy, PolicyEngine, PolicyOptions, PreparedPlugin, Resolution, Step, StepOutcome,
};
pub use compile_cache::{CompileCache, StoreProblem};
pub use error::{FailureKind, PluginFailure, PluginLoadError, PolicyError};
pub use plugin::{ArtifactOrigin, LoadedPlugin, builtin_names};
pub use sandbox::{LogLevel, LogLine};

/// The newest version of the WIT contract this host implements.
pub const API_VERSION: &str = "0.2.0";

/// Every version of the WIT contract this host loads plugins for.
pub fn api_versions() -> Vec<semver::Version> {
    wit::supported()
}

/// Why the host is asking.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Purpose {
    Pull,
    Run,
}

/// What the host knows besides the reference.
#[derive(Debug, Clone, Serialize)]
pub struct Context {
    pub purpose: Purpose,
    /// OCI architecture name (`amd64`, `arm64`, ...).
    pub arch: String,
    /// The local SIF file's hash, when cached. Never a pull reference.
    pub local_sif_digest: Option<SifDigest>,
}

impl Context {
    /// A context for this machine's architecture.
    pub fn new(purpose: Purpose) -> Self {
        Self {
            purpose,
            arch: host_arch().to_string(),
            local_sif_digest: None,
        }
    }
}

/// This machine's architecture, in OCI terms.
pub fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" if cfg!(target_endian = "little") => "ppc64le",
        "riscv64" => "riscv64",
        "s390x" => "s390x",
        other => other,
    }
}

/// How a source is pulled: by tag or by manifest digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PullRef {
    Tag(String),
    Digest(ManifestDigest),
}

/// One place to pull an image from, validated. Serialised with its `uri`,
/// so machine output carries what apptainer receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    pub registry: String,
    pub repository: String,
    pub reference: PullRef,
    /// Plain HTTP (apptainer's `--no-https`).
    pub plain_http: bool,
    /// Why this source is in the plan.
    pub note: String,
}

impl Serialize for Source {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Shown<'a> {
            registry: &'a str,
            repository: &'a str,
            reference: &'a PullRef,
            plain_http: bool,
            note: &'a str,
            uri: String,
        }
        Shown {
            registry: &self.registry,
            repository: &self.repository,
            reference: &self.reference,
            plain_http: self.plain_http,
            note: &self.note,
            uri: self.uri(),
        }
        .serialize(serializer)
    }
}

impl Source {
    /// The image's origin, pulled by manifest digest when pinned, else by
    /// tag (`latest` when none): the plan the first plugin receives.
    pub fn origin(image: &ImageRef) -> Self {
        let reference = match (&image.manifest_digest, &image.tag) {
            (Some(digest), _) => PullRef::Digest(digest.clone()),
            (None, Some(tag)) => PullRef::Tag(tag.clone()),
            (None, None) => PullRef::Tag("latest".to_string()),
        };
        Self {
            registry: image.registry.clone(),
            repository: image.repository.clone(),
            reference,
            plain_http: false,
            note: "origin".to_string(),
        }
    }

    /// The URI apptainer receives: `docker://host/repo:tag` or
    /// `docker://host/repo@sha256:…`. Docker Hub stays implicit, as do its
    /// `library/` official images, in the familiar form users type.
    pub fn uri(&self) -> String {
        let name = if self.registry == DOCKER_HUB {
            match self.repository.strip_prefix("library/") {
                Some(official) if !official.contains('/') => official.to_string(),
                _ => self.repository.clone(),
            }
        } else {
            format!("{}/{}", self.registry, self.repository)
        };
        match &self.reference {
            PullRef::Tag(tag) => format!("docker://{name}:{tag}"),
            PullRef::Digest(digest) => format!("docker://{name}@{digest}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origin_uris_have_the_seed_form() {
        let d = format!("sha256:{}", "ab".repeat(32));
        let cases = [
            (
                "ncbi/blast:2.14.0",
                "docker://ncbi/blast:2.14.0".to_string(),
            ),
            (
                &*format!("ubuntu:22.04@{d}"),
                format!("docker://ubuntu@{d}"),
            ),
            ("ubuntu", "docker://ubuntu:latest".to_string()),
            (
                "docker.io/library/a/b:1",
                "docker://library/a/b:1".to_string(),
            ),
            (
                "quay.io/biocontainers/blast:2.15.0",
                "docker://quay.io/biocontainers/blast:2.15.0".to_string(),
            ),
            (
                "localhost:5000/foo/bar:1.0",
                "docker://localhost:5000/foo/bar:1.0".to_string(),
            ),
        ];
        for (input, uri) in cases {
            let image = ImageRef::parse(input).unwrap();
            assert_eq!(Source::origin(&image).uri(), uri, "{input}");
        }
    }
}
