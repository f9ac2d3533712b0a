//! How a registry look-up fails: each error names the registry, the
//! repository and the tag, the HTTP status when there was one, and what to
//! do. Anything the registry sent (error texts, header values) is passed
//! through [`crate::untrusted::escape`] before it is kept here.

use std::path::PathBuf;
use std::time::Duration;

/// Which image a failed look-up was for: shown as `registry/repository:tag`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub registry: String,
    pub repository: String,
    pub tag: String,
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}:{}", self.registry, self.repository, self.tag)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The registry, repository, tag or architecture is not valid: no
    /// request was made.
    #[error("cannot resolve {target}: {reason}; check the name")]
    InvalidName { target: Box<Target>, reason: String },

    /// The registry wants credentials, and had none or refused them.
    #[error(
        "registry {} refused access to {} (tag {}): HTTP {status}{}; {}",
        target.registry, target.repository, target.tag,
        if *had_credentials { " with the credentials found" } else { " without credentials" },
        if *had_credentials {
            "check the credentials (`apptainer registry login`, `docker login` or \
             `podman login`), and that the name is right"
        } else {
            "log in (`apptainer registry login`, `docker login` or `podman login`, or set \
             APPTAINER_DOCKER_USERNAME and APPTAINER_DOCKER_PASSWORD), and check the name"
        }
    )]
    Unauthorized {
        target: Box<Target>,
        status: u16,
        had_credentials: bool,
    },

    /// 404: no such repository or tag.
    #[error(
        "registry {} has no tag {} in repository {} (HTTP {status}{}); check the name and the tag",
        target.registry, target.tag, target.repository, detail_suffix(detail)
    )]
    NotFound {
        target: Box<Target>,
        status: u16,
        detail: Option<String>,
    },

    /// Any other HTTP status that is not success.
    #[error(
        "registry {} answered HTTP {status} for {}:{}{}; {}",
        target.registry, target.repository, target.tag, detail_suffix(detail),
        status_hint(*status)
    )]
    Status {
        target: Box<Target>,
        status: u16,
        detail: Option<String>,
    },

    /// The `Docker-Content-Digest` header does not match the manifest the
    /// registry sent.
    #[error(
        "registry {} sent a manifest for {}:{} whose sha256 is {computed}, but its \
         Docker-Content-Digest header says {header}; the registry (or something between) \
         is broken or tampered with: nothing was cached, try again or use another source",
        target.registry, target.repository, target.tag
    )]
    DigestMismatch {
        target: Box<Target>,
        header: String,
        computed: String,
    },

    /// The registry's answer is not what the distribution spec allows.
    #[error(
        "registry {} sent a bad answer for {}:{} (HTTP {status}): {reason}",
        target.registry, target.repository, target.tag
    )]
    BadResponse {
        target: Box<Target>,
        status: u16,
        reason: String,
    },

    /// A multi-arch index with no manifest for the architecture.
    #[error(
        "{target} is a multi-arch index ({index_digest}) with no manifest for linux/{arch} \
         (it has: {available}); pick an image built for linux/{arch}"
    )]
    NoManifestForArch {
        target: Box<Target>,
        arch: String,
        index_digest: String,
        available: String,
    },

    /// No answer within the timeout.
    #[error(
        "registry {} did not answer for {}:{} within {}; check that the registry is up and \
         reachable, or raise the timeout",
        target.registry, target.repository, target.tag, humantime::format_duration(*timeout)
    )]
    Timeout {
        target: Box<Target>,
        timeout: Duration,
    },

    /// The answer's headers are bigger than the limit.
    #[error(
        "registry {} sent response headers bigger than {limit} bytes for {}:{}; \
         the registry is broken or hostile: use another source",
        target.registry, target.repository, target.tag
    )]
    HeadersTooLarge { target: Box<Target>, limit: usize },

    /// The manifest (or a token answer) is bigger than the limit.
    #[error(
        "registry {} sent a body bigger than {limit} bytes for {}:{}; manifests are small: \
         the registry is broken or hostile, use another source",
        target.registry, target.repository, target.tag
    )]
    BodyTooLarge { target: Box<Target>, limit: u64 },

    /// Redirected too often, or in a loop.
    #[error(
        "registry {} redirected the request for {}:{} more than {limit} times (a redirect \
         loop?); the registry is misconfigured: check its address",
        target.registry, target.repository, target.tag
    )]
    TooManyRedirects { target: Box<Target>, limit: u32 },

    /// A redirect from HTTPS to plain HTTP, for a registry not marked
    /// plain-http.
    #[error(
        "registry {} redirected the request for {}:{} to plain HTTP, which is refused for a \
         registry not marked insecure: {reason}",
        target.registry, target.repository, target.tag
    )]
    InsecureRedirect { target: Box<Target>, reason: String },

    /// TLS failed: a bad certificate, or a registry that speaks plain HTTP.
    #[error(
        "TLS with registry {} failed for {}:{}: {reason}; if the registry serves plain \
         HTTP, mark it insecure (registries.conf `insecure = true`, plain-http); if its \
         certificate is from a private CA, add the CA to the system's trust store",
        target.registry, target.repository, target.tag
    )]
    Tls { target: Box<Target>, reason: String },

    /// No connection: DNS, refused, reset.
    #[error(
        "cannot reach registry {} for {}:{}: {reason}; check the registry's address and \
         that it is up",
        target.registry, target.repository, target.tag
    )]
    Connect { target: Box<Target>, reason: String },

    /// The token service of a bearer challenge failed.
    #[error(
        "the token service of registry {} failed for {}:{}: {reason}; {}",
        target.registry, target.repository, target.tag,
        "log in if the repository is private, and check the name"
    )]
    Token { target: Box<Target>, reason: String },

    /// A credential helper named for the registry failed.
    #[error(
        "cannot get credentials for registry {} ({}:{}): {reason}",
        target.registry, target.repository, target.tag
    )]
    Credentials { target: Box<Target>, reason: String },

    /// The TTL cache's directory cannot be used safely.
    #[error(
        "the registry digest cache at {} is not private to this user ({reason}); \
         make it a directory owned by you with mode 0700, or choose another",
        dir.display()
    )]
    CacheDir { dir: PathBuf, reason: String },
}

impl RegistryError {
    /// The image the failure is about (none for a cache-directory error).
    pub fn target(&self) -> Option<&Target> {
        use RegistryError::*;
        match self {
            InvalidName { target, .. }
            | Unauthorized { target, .. }
            | NotFound { target, .. }
            | Status { target, .. }
            | DigestMismatch { target, .. }
            | BadResponse { target, .. }
            | NoManifestForArch { target, .. }
            | Timeout { target, .. }
            | HeadersTooLarge { target, .. }
            | BodyTooLarge { target, .. }
            | TooManyRedirects { target, .. }
            | InsecureRedirect { target, .. }
            | Tls { target, .. }
            | Connect { target, .. }
            | Token { target, .. }
            | Credentials { target, .. } => Some(target.as_ref()),
            CacheDir { .. } => None,
        }
    }

    /// Whether the registry could not answer now, rather than answered
    /// no: no connection, no answer within the timeout, or HTTP 429 or
    /// 5xx. What a cached answer may stand in for (stale-if-error).
    pub fn is_transient(&self) -> bool {
        match self {
            RegistryError::Connect { .. } | RegistryError::Timeout { .. } => true,
            RegistryError::Status { status, .. } => *status == 429 || *status >= 500,
            _ => false,
        }
    }

    /// The HTTP status the registry answered, when the failure is one.
    pub fn status(&self) -> Option<u16> {
        use RegistryError::*;
        match self {
            Unauthorized { status, .. }
            | NotFound { status, .. }
            | Status { status, .. }
            | BadResponse { status, .. } => Some(*status),
            _ => None,
        }
    }
}

fn detail_suffix(detail: &Option<String>) -> String {
    match detail {
        Some(d) => format!(": {d}"),
        None => String::new(),
    }
}

fn status_hint(status: u16) -> &'static str {
    match status {
        403 => "access is denied: log in as a user who may pull it, and check the name",
        429 => "the registry is rate-limiting: wait, or log in for a higher limit",
        500..=599 => "the registry is failing: try again later, or use another source",
        _ => "check the name, and the registry's address",
    }
}
