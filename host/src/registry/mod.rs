//! A small, blocking OCI distribution client: it turns a tag into the
//! manifest digest the registry serves for it, so that an image can be
//! pulled (and locked) by digest.
//!
//! # What it does
//!
//! [`RegistryClient::resolve_digest`] sends `HEAD /v2/<repository>/manifests/<tag>`
//! with the OCI and Docker manifest and index media types in `Accept`, and
//! takes the `Docker-Content-Digest` of a single-arch manifest from the
//! headers. When `HEAD` is refused, gives no digest, or answers with an
//! index, it falls back to `GET`: the body's sha256 is computed and must
//! match the `Docker-Content-Digest` header when there is one. For an index
//! (an OCI image index or a Docker manifest list) the manifest for
//! `linux/<arch>` is picked, and both digests are returned.
//!
//! A digest taken from a `HEAD` answer is not checked against any content
//! (there is none): it is what the registry says. Whoever pulls by it
//! checks the content against it, so a lying registry makes a pull fail,
//! never run something else.
//!
//! # Auth
//!
//! Anonymous access first; on `401` the `WWW-Authenticate` challenge is
//! answered: `Basic` with the user's credentials, or `Bearer` through the
//! token service it names (with the credentials when there are any, and
//! anonymously when not; an identity token is traded there for an access
//! token by OAuth2's `refresh_token` grant). See [`auth`] for where
//! credentials come from, credential helpers included. No secret is logged, printed
//! or put in an error; a password is sent to a token service only over
//! HTTPS, or over HTTP to a registry marked plain-http.
//!
//! # Transport
//!
//! HTTP is [`ureq`] 3, with rustls (the `ring` provider, which builds
//! without cmake, unlike `aws-lc-rs`) and the platform's certificate
//! verifier (`rustls-platform-verifier`: the system's trust store, so a
//! site's private CA works as it does for apptainer). ureq is small,
//! blocking (sifr's library is synchronous; no async runtime is needed for
//! one request), well kept, and has the limits a client of untrusted
//! servers needs: a global timeout per request, a cap on the response
//! header size, a cap on redirects (and refusal of a redirect from HTTPS to
//! HTTP), and a body size limit. Plain HTTP is used only when the caller
//! says the registry is plain-http (registries.conf `insecure`). ureq's
//! default proxy settings apply: it reads `ALL_PROXY`, `HTTPS_PROXY`,
//! `HTTP_PROXY` and `NO_PROXY`, as other container tools do (the one
//! environment this module reads without being handed it).
//!
//! The whole look-up (challenge, token, `HEAD`, `GET`) shares one deadline:
//! [`RegistryOptions::timeout`].
//!
//! # Cache
//!
//! With a [`TtlCache`], answers are kept per user for a TTL, keyed by
//! registry, repository, tag and architecture; a fresh entry answers with
//! no network at all. Failures are never cached.

pub mod auth;
pub mod cache;
pub mod error;

use std::time::{Duration, Instant};

use sha2::{Digest, Sha256, Sha512};
use ureq::http::{Response, StatusCode};

pub use auth::{Credential, CredentialSources};
pub use cache::TtlCache;
pub use error::{RegistryError, Target};

use crate::ManifestDigest;
use crate::reference::{DOCKER_HUB, canonical_registry};
use crate::untrusted::escape;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
                      application/vnd.docker.distribution.manifest.list.v2+json, \
                      application/vnd.oci.image.manifest.v1+json, \
                      application/vnd.docker.distribution.manifest.v2+json";

/// The most of any registry text kept in an error.
const MAX_SHOWN: usize = 200;

/// How the client behaves. [`Default`] is sensible for a login node.
#[derive(Debug, Clone)]
pub struct RegistryOptions {
    /// For the whole look-up, all its requests together. Default 10 s.
    pub timeout: Duration,
    /// The most response header bytes read. Default 64 KiB.
    pub max_header_size: usize,
    /// The most body bytes read (a manifest, an index, a token answer).
    /// Default 4 MiB, the size registries must accept for a manifest.
    pub max_body_size: u64,
    /// Redirects followed before giving up. Default 5.
    pub max_redirects: u32,
    /// Where credentials come from. Default: none (anonymous).
    pub credentials: CredentialSources,
    /// The on-disk TTL cache of answers. Default: none.
    pub cache: Option<TtlCache>,
}

impl Default for RegistryOptions {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(10),
            max_header_size: 64 * 1024,
            max_body_size: 4 * 1024 * 1024,
            max_redirects: 5,
            credentials: CredentialSources::none(),
            cache: None,
        }
    }
}

/// What a tag resolves to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// The digest of the image manifest: for a multi-arch index, of the
    /// manifest for the architecture asked for.
    pub digest: ManifestDigest,
    /// The digest of the index, when the tag names a multi-arch index.
    pub index_digest: Option<ManifestDigest>,
    /// The media type of the manifest `digest` names (escaped registry
    /// text).
    pub media_type: String,
    /// Whether the answer came from the TTL cache (no network).
    pub from_cache: bool,
    /// Set when the answer is a cached one past its TTL, given because the
    /// registry failed just now ([`RegistryClient::resolve_digest_or_stale`]).
    pub stale: Option<Stale>,
}

/// Why a stale answer was given: how old it is, and the registry's failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stale {
    /// Since the registry gave the answer.
    pub age: Duration,
    /// What failed now (the look-up's error, as shown).
    pub error: String,
}

/// A blocking registry client; cheap to share between threads (`&self`).
#[derive(Debug)]
pub struct RegistryClient {
    agent: ureq::Agent,
    options: RegistryOptions,
}

impl Default for RegistryClient {
    fn default() -> Self {
        Self::new(RegistryOptions::default())
    }
}

impl RegistryClient {
    pub fn new(options: RegistryOptions) -> Self {
        use ureq::tls::{RootCerts, TlsConfig, TlsProvider};
        let tls = TlsConfig::builder()
            .provider(TlsProvider::Rustls)
            .root_certs(RootCerts::PlatformVerifier)
            .build();
        let config = ureq::Agent::config_builder()
            .tls_config(tls)
            .http_status_as_error(false)
            .max_redirects(options.max_redirects)
            .max_redirects_will_error(true)
            .max_response_header_size(options.max_header_size)
            .timeout_global(Some(options.timeout))
            .user_agent(concat!("sifr/", env!("CARGO_PKG_VERSION")))
            .build();
        Self {
            agent: config.new_agent(),
            options,
        }
    }

    pub fn options(&self) -> &RegistryOptions {
        &self.options
    }

    /// The manifest digest `registry` serves for `repository:tag`, for
    /// `linux/<arch>` (`amd64`, `arm64`, `arm/v7`, ...; `x86_64` and
    /// `aarch64` are understood). `plain_http` allows plain HTTP, for a
    /// registry marked insecure; otherwise only HTTPS is used.
    pub fn resolve_digest(
        &self,
        registry: &str,
        repository: &str,
        tag: &str,
        arch: &str,
        plain_http: bool,
    ) -> Result<Resolved, RegistryError> {
        self.resolve_digest_or_stale(registry, repository, tag, arch, plain_http, Duration::ZERO)
    }

    /// [`RegistryClient::resolve_digest`], and when the registry cannot
    /// answer now (no connection, a timeout, HTTP 429 or 5xx: see
    /// [`RegistryError::is_transient`]), the TTL cache's answer if it is
    /// past its TTL by less than `stale_if_error` (RFC 5861's
    /// stale-if-error), marked [`Resolved::stale`]. A registry that
    /// answers, even with an error (no such tag, access refused, a digest
    /// that does not match), is never overridden by an old answer.
    pub fn resolve_digest_or_stale(
        &self,
        registry: &str,
        repository: &str,
        tag: &str,
        arch: &str,
        plain_http: bool,
        stale_if_error: Duration,
    ) -> Result<Resolved, RegistryError> {
        let registry = canonical_registry(registry);
        let target = Box::new(Target {
            registry: escape(&registry, MAX_SHOWN),
            repository: escape(repository, MAX_SHOWN),
            tag: escape(tag, MAX_SHOWN),
        });
        let invalid = |reason: String| RegistryError::InvalidName {
            target: target.clone(),
            reason,
        };
        crate::reference::validate_registry(&registry).map_err(|e| invalid(e.to_string()))?;
        crate::reference::validate_repository(repository).map_err(|e| invalid(e.to_string()))?;
        crate::reference::validate_tag(tag).map_err(|e| invalid(e.to_string()))?;
        let platform = Platform::parse(arch).map_err(invalid)?;
        let repository = if registry == DOCKER_HUB && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository.to_string()
        };
        let arch_key = platform.to_string();
        let key = cache::Key {
            registry: &registry,
            repository: &repository,
            tag,
            arch: &arch_key,
        };
        if let Some(cache) = &self.options.cache
            && let Some(hit) = cache.get(&key)?
        {
            return Ok(hit);
        }
        let host = if registry == DOCKER_HUB {
            "registry-1.docker.io"
        } else {
            registry.as_str()
        };
        let mut session = Session {
            client: self,
            target,
            registry: &registry,
            repository: &repository,
            base: format!(
                "{}://{host}/v2/{repository}/manifests/",
                if plain_http { "http" } else { "https" }
            ),
            plain_http,
            deadline: Instant::now() + self.options.timeout,
            authorization: None,
            authenticated: false,
            used_credentials: false,
        };
        let resolved = match session.resolve(tag, &platform) {
            Ok(resolved) => resolved,
            Err(error) if error.is_transient() && !stale_if_error.is_zero() => {
                let stale = match &self.options.cache {
                    Some(cache) => cache.get_stale(&key, stale_if_error)?,
                    None => None,
                };
                let Some((mut resolved, age)) = stale else {
                    return Err(error);
                };
                resolved.stale = Some(Stale {
                    age,
                    error: error.to_string(),
                });
                return Ok(resolved);
            }
            Err(error) => return Err(error),
        };
        if let Some(cache) = &self.options.cache {
            // The answer is good even when it cannot be kept.
            let _ = cache.put(&key, &resolved);
        }
        Ok(resolved)
    }
}

/// `linux/<arch>[/<variant>]`, normalized.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Platform {
    arch: String,
    variant: Option<String>,
}

impl Platform {
    fn parse(text: &str) -> Result<Self, String> {
        let text = text.strip_prefix("linux/").unwrap_or(text);
        let (arch, variant) = match text.split_once('/') {
            Some((a, v)) => (a, Some(v)),
            None => (text, None),
        };
        let ok = |s: &str| {
            !s.is_empty()
                && s.len() <= 32
                && s.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        };
        if !ok(arch) || variant.is_some_and(|v| !ok(v)) {
            return Err(format!(
                "architecture {:?} is not <arch>[/<variant>] (e.g. amd64, arm64, arm/v7)",
                escape(text, MAX_SHOWN)
            ));
        }
        let (arch, implied) = match arch {
            "x86_64" => ("amd64", None),
            "aarch64" => ("arm64", None),
            "armhf" => ("arm", Some("v7")),
            "armel" => ("arm", Some("v6")),
            "i386" | "i686" => ("386", None),
            other => (other, None),
        };
        Ok(Self {
            arch: arch.to_string(),
            variant: variant.or(implied).map(str::to_string),
        })
    }

    /// The variant an entry without one stands for.
    fn default_variant(&self) -> Option<&'static str> {
        (self.arch == "arm64").then_some("v8")
    }

    /// How well an index entry's platform fits: `None` when it does not.
    /// Higher is better.
    fn fit(&self, platform: &serde_json::Value) -> Option<u8> {
        let field = |name: &str| platform.get(name).and_then(|v| v.as_str());
        if field("os") != Some("linux") || field("architecture") != Some(self.arch.as_str()) {
            return None;
        }
        let theirs = field("variant").filter(|v| !v.is_empty());
        let theirs = theirs.or(self.default_variant());
        match (&self.variant, theirs) {
            (Some(want), Some(have)) if want == have => Some(3),
            (Some(want), None) if Some(want.as_str()) == self.default_variant() => Some(3),
            (Some(_), _) => None,
            (None, have) if have == self.default_variant() => Some(2),
            // arm without a variant asked for: the newest variant.
            (None, Some(have)) => Some(match have {
                "v7" => 1,
                _ => 0,
            }),
            (None, None) => Some(2),
        }
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.variant {
            Some(v) => write!(f, "{}/{v}", self.arch),
            None => f.write_str(&self.arch),
        }
    }
}

fn is_index(media_type: &str) -> bool {
    media_type == OCI_INDEX || media_type == DOCKER_MANIFEST_LIST
}

/// One look-up: its deadline and the authorization it earned.
struct Session<'a> {
    client: &'a RegistryClient,
    target: Box<Target>,
    registry: &'a str,
    repository: &'a str,
    base: String,
    plain_http: bool,
    deadline: Instant,
    /// The `Authorization` header value, once a challenge was answered.
    authorization: Option<String>,
    authenticated: bool,
    /// Whether the user's credentials were offered.
    used_credentials: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Method {
    Head,
    Get,
}

impl Session<'_> {
    fn resolve(&mut self, tag: &str, platform: &Platform) -> Result<Resolved, RegistryError> {
        let url = format!("{}{tag}", self.base);
        let head = self.request(Method::Head, &url)?;
        let status = head.status();
        if status == StatusCode::NOT_FOUND {
            return Err(RegistryError::NotFound {
                target: self.target.clone(),
                status: status.as_u16(),
                detail: None,
            });
        }
        if status.is_success() {
            let media_type = content_type(&head);
            let digest = header(&head, "docker-content-digest");
            if let (Some(media_type), Some(digest)) = (&media_type, digest)
                && !is_index(media_type)
            {
                let digest = self.parse_digest(status.as_u16(), &digest)?;
                return Ok(Resolved {
                    digest,
                    index_digest: None,
                    media_type: escape(media_type, MAX_SHOWN),
                    from_cache: false,
                    stale: None,
                });
            }
        }
        // HEAD refused, without a digest, or an index: GET the manifest.
        let (digest, media_type, body) = self.get_manifest(&url)?;
        if !is_index(&media_type) {
            return Ok(Resolved {
                digest,
                index_digest: None,
                media_type: escape(&media_type, MAX_SHOWN),
                from_cache: false,
                stale: None,
            });
        }
        self.pick(platform, digest, &body)
    }

    /// GET a manifest: its verified digest, media type and body.
    fn get_manifest(
        &mut self,
        url: &str,
    ) -> Result<(ManifestDigest, String, serde_json::Value), RegistryError> {
        let mut response = self.request(Method::Get, url)?;
        let status = response.status().as_u16();
        self.check_status(&mut response)?;
        let header_digest = header(&response, "docker-content-digest");
        let header_type = content_type(&response);
        let body = self.read_body(&mut response)?;
        let sha256 = format!("sha256:{}", hex::encode(Sha256::digest(&body)));
        let digest = match header_digest {
            Some(claimed) => {
                let claimed = self.parse_digest(status, &claimed)?;
                let computed = if claimed.as_str().starts_with("sha512:") {
                    format!("sha512:{}", hex::encode(Sha512::digest(&body)))
                } else {
                    sha256
                };
                if claimed.as_str() != computed {
                    return Err(RegistryError::DigestMismatch {
                        target: self.target.clone(),
                        header: claimed.to_string(),
                        computed,
                    });
                }
                claimed
            }
            None => ManifestDigest::parse(&sha256).expect("a sha256 digest"),
        };
        let json: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|e| self.bad(status, format!("not JSON: {e}")))?;
        if !json.is_object() {
            return Err(self.bad(status, "the manifest is not a JSON object".into()));
        }
        let body_type = json.get("mediaType").and_then(|m| m.as_str());
        // The body says what it is; the header is the fallback (Docker
        // schema 2 manifests carry it too).
        let media_type = body_type
            .map(str::to_string)
            .or(header_type)
            .unwrap_or_else(|| {
                if json.get("manifests").is_some() {
                    OCI_INDEX.to_string()
                } else {
                    OCI_MANIFEST.to_string()
                }
            });
        Ok((digest, media_type, json))
    }

    /// The manifest for `platform` in the index `body`.
    fn pick(
        &self,
        platform: &Platform,
        index_digest: ManifestDigest,
        body: &serde_json::Value,
    ) -> Result<Resolved, RegistryError> {
        let bad = |reason: &str| self.bad(200, format!("the index {index_digest}: {reason}"));
        let manifests = body
            .get("manifests")
            .and_then(|m| m.as_array())
            .ok_or_else(|| bad("has no manifests list"))?;
        let mut best: Option<(u8, &serde_json::Value)> = None;
        for entry in manifests {
            let Some(fit) = entry.get("platform").and_then(|p| platform.fit(p)) else {
                continue;
            };
            if best.is_none_or(|(score, _)| fit > score) {
                best = Some((fit, entry));
            }
        }
        let Some((_, entry)) = best else {
            let available: Vec<String> = manifests
                .iter()
                .filter_map(|m| m.get("platform"))
                .map(|p| {
                    let f = |n: &str| p.get(n).and_then(|v| v.as_str()).unwrap_or("");
                    let variant = f("variant");
                    let s = format!(
                        "{}/{}{}{}",
                        f("os"),
                        f("architecture"),
                        if variant.is_empty() { "" } else { "/" },
                        variant
                    );
                    escape(&s, 40)
                })
                .take(20)
                .collect();
            return Err(RegistryError::NoManifestForArch {
                target: self.target.clone(),
                arch: platform.to_string(),
                index_digest: index_digest.to_string(),
                available: if available.is_empty() {
                    "no platforms".into()
                } else {
                    available.join(", ")
                },
            });
        };
        let digest = entry
            .get("digest")
            .and_then(|d| d.as_str())
            .ok_or_else(|| bad("an entry has no digest"))?;
        let digest =
            ManifestDigest::parse(digest).map_err(|e| bad(&escape(&e.to_string(), 300)))?;
        let media_type = entry
            .get("mediaType")
            .and_then(|m| m.as_str())
            .unwrap_or(OCI_MANIFEST);
        Ok(Resolved {
            digest,
            index_digest: Some(index_digest),
            media_type: escape(media_type, MAX_SHOWN),
            from_cache: false,
            stale: None,
        })
    }

    fn parse_digest(&self, status: u16, text: &str) -> Result<ManifestDigest, RegistryError> {
        ManifestDigest::parse(text.trim()).map_err(|e| {
            self.bad(
                status,
                format!(
                    "its Docker-Content-Digest is not a digest: {}",
                    escape(&e.to_string(), 300)
                ),
            )
        })
    }

    fn bad(&self, status: u16, reason: String) -> RegistryError {
        RegistryError::BadResponse {
            target: self.target.clone(),
            status,
            reason,
        }
    }

    /// The time left before the deadline, or a timeout error.
    fn remaining(&self) -> Result<Duration, RegistryError> {
        self.deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| RegistryError::Timeout {
                target: self.target.clone(),
                timeout: self.client.options.timeout,
            })
    }

    /// Send a request to the registry; answer one `401` challenge.
    fn request(
        &mut self,
        method: Method,
        url: &str,
    ) -> Result<Response<ureq::Body>, RegistryError> {
        loop {
            let response = self.send(method, url, self.authorization.clone())?;
            if response.status() != StatusCode::UNAUTHORIZED {
                return Ok(response);
            }
            if self.authenticated {
                return Err(RegistryError::Unauthorized {
                    target: self.target.clone(),
                    status: 401,
                    had_credentials: self.used_credentials,
                });
            }
            self.authenticated = true;
            self.authenticate(&response)?;
        }
    }

    fn send(
        &self,
        method: Method,
        url: &str,
        authorization: Option<String>,
    ) -> Result<Response<ureq::Body>, RegistryError> {
        let timeout = self.remaining()?;
        let agent = &self.client.agent;
        let mut req = match method {
            Method::Head => agent.head(url),
            Method::Get => agent.get(url),
        }
        .header("Accept", ACCEPT);
        if let Some(a) = &authorization {
            req = req.header("Authorization", a);
        }
        let result = req
            .config()
            .timeout_global(Some(timeout))
            .https_only(!self.plain_http)
            .build()
            .call();
        result.map_err(|e| self.transport(e))
    }

    /// Answer the challenge in a `401`: basic credentials, or a bearer
    /// token from the token service.
    fn authenticate(&mut self, response: &Response<ureq::Body>) -> Result<(), RegistryError> {
        let credential = self
            .client
            .options
            .credentials
            .find(self.registry, self.repository)
            .map_err(|reason| RegistryError::Credentials {
                target: self.target.clone(),
                reason,
            })?;
        self.used_credentials = credential.is_some();
        let challenge = response
            .headers()
            .get_all("www-authenticate")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(auth::parse_challenge);
        let unauthorized = |had_credentials| RegistryError::Unauthorized {
            target: self.target.clone(),
            status: 401,
            had_credentials,
        };
        match challenge {
            None => Err(unauthorized(false)),
            Some(auth::Challenge::Basic) => match credential {
                None => Err(unauthorized(false)),
                // A refresh token is for a token service only.
                Some(c) if c.refresh_token().is_some() => Err(unauthorized(true)),
                Some(c) => {
                    self.authorization = Some(c.basic_header());
                    Ok(())
                }
            },
            Some(auth::Challenge::Bearer {
                realm,
                service,
                scope,
            }) => {
                let token = self.token(&realm, service, scope, credential.as_ref())?;
                self.authorization = Some(format!("Bearer {token}"));
                Ok(())
            }
        }
    }

    fn token(
        &self,
        realm: &str,
        service: Option<String>,
        scope: Option<String>,
        credential: Option<&Credential>,
    ) -> Result<String, RegistryError> {
        let token_error = |reason: String| RegistryError::Token {
            target: self.target.clone(),
            reason,
        };
        let https = realm.starts_with("https://");
        let http = self.plain_http && realm.starts_with("http://");
        if !(https || http) {
            return Err(token_error(format!(
                "its realm {:?} is not an HTTPS URL",
                escape(realm, MAX_SHOWN)
            )));
        }
        let scope = scope.unwrap_or_else(|| format!("repository:{}:pull", self.repository));
        let timeout = Some(self.remaining()?);
        let response = match credential.and_then(Credential::refresh_token) {
            // OAuth2: trade the refresh token for an access token.
            Some(refresh) => {
                let mut form = vec![
                    ("grant_type", "refresh_token"),
                    ("refresh_token", refresh),
                    ("client_id", "sifr"),
                    ("scope", scope.as_str()),
                ];
                if let Some(service) = &service {
                    form.push(("service", service.as_str()));
                }
                self.client
                    .agent
                    .post(realm)
                    .config()
                    .timeout_global(timeout)
                    .https_only(!self.plain_http)
                    .build()
                    .send_form(form)
            }
            None => {
                let mut req = self.client.agent.get(realm).query("scope", &scope);
                if let Some(service) = &service {
                    req = req.query("service", service);
                }
                if let Some(c) = credential {
                    req = req.header("Authorization", c.basic_header());
                }
                req.config()
                    .timeout_global(timeout)
                    .https_only(!self.plain_http)
                    .build()
                    .call()
            }
        };
        let mut response = response.map_err(|e| self.transport(e))?;
        let status = response.status();
        // An OAuth2 token service answers a bad refresh token with 400.
        let refused = status == StatusCode::UNAUTHORIZED
            || status == StatusCode::FORBIDDEN
            || (status == StatusCode::BAD_REQUEST
                && credential.is_some_and(|c| c.refresh_token().is_some()));
        if refused {
            return Err(RegistryError::Unauthorized {
                target: self.target.clone(),
                status: status.as_u16(),
                had_credentials: credential.is_some(),
            });
        }
        if !status.is_success() {
            return Err(token_error(format!("HTTP {}", status.as_u16())));
        }
        let body = self.read_body(&mut response)?;
        let json: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|e| token_error(format!("its answer is not JSON: {e}")))?;
        let token = json
            .get("token")
            .or_else(|| json.get("access_token"))
            .and_then(|t| t.as_str())
            .filter(|t| !t.is_empty())
            .ok_or_else(|| token_error("its answer has no token".into()))?;
        // A token goes into a header: it must be a header-safe token.
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(token_error("its token is not printable ASCII".into()));
        }
        Ok(token.to_string())
    }

    /// An error for a status that is not success (after auth).
    fn check_status(&self, response: &mut Response<ureq::Body>) -> Result<(), RegistryError> {
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let detail = self.error_detail(response);
        let target = self.target.clone();
        let status = status.as_u16();
        Err(match status {
            404 => RegistryError::NotFound {
                target,
                status,
                detail,
            },
            _ => RegistryError::Status {
                target,
                status,
                detail,
            },
        })
    }

    /// The first `errors[].code: message` of a distribution error body.
    fn error_detail(&self, response: &mut Response<ureq::Body>) -> Option<String> {
        let body = response
            .body_mut()
            .with_config()
            .limit(16 * 1024)
            .read_to_vec()
            .ok()?;
        let json: serde_json::Value = serde_json::from_slice(&body).ok()?;
        let first = json.get("errors")?.as_array()?.first()?;
        let code = first.get("code").and_then(|c| c.as_str()).unwrap_or("");
        let message = first.get("message").and_then(|c| c.as_str()).unwrap_or("");
        Some(escape(&format!("{code}: {message}"), MAX_SHOWN))
    }

    fn read_body(&self, response: &mut Response<ureq::Body>) -> Result<Vec<u8>, RegistryError> {
        response
            .body_mut()
            .with_config()
            .limit(self.client.options.max_body_size)
            .read_to_vec()
            .map_err(|e| self.transport(e))
    }

    fn transport(&self, error: ureq::Error) -> RegistryError {
        let target = self.target.clone();
        let options = &self.client.options;
        let reason = |e: &dyn std::fmt::Display| escape(&e.to_string(), 300);
        match error {
            ureq::Error::Timeout(_) => RegistryError::Timeout {
                target,
                timeout: options.timeout,
            },
            ureq::Error::Io(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                RegistryError::Timeout {
                    target,
                    timeout: options.timeout,
                }
            }
            ureq::Error::LargeResponseHeader(..) => RegistryError::HeadersTooLarge {
                target,
                limit: options.max_header_size,
            },
            ureq::Error::BodyExceedsLimit(_) => RegistryError::BodyTooLarge {
                target,
                limit: options.max_body_size,
            },
            ureq::Error::TooManyRedirects => RegistryError::TooManyRedirects {
                target,
                limit: options.max_redirects,
            },
            ureq::Error::RequireHttpsOnly(e) => RegistryError::InsecureRedirect {
                target,
                reason: reason(&e),
            },
            ureq::Error::Tls(e) => RegistryError::Tls {
                target,
                reason: reason(&e),
            },
            ureq::Error::Rustls(e) => RegistryError::Tls {
                target,
                reason: reason(&e),
            },
            ureq::Error::Protocol(e) if self.plain_http => RegistryError::Connect {
                target,
                reason: format!(
                    "{} (not plain HTTP: if the registry serves HTTPS, do not mark it \
                     plain-http)",
                    reason(&e)
                ),
            },
            e @ (ureq::Error::HostNotFound | ureq::Error::ConnectionFailed) => {
                RegistryError::Connect {
                    target,
                    reason: reason(&e),
                }
            }
            // Cut off mid-handshake, or any other failure once connected:
            // over HTTPS, most likely a registry that speaks plain HTTP.
            e if !self.plain_http => RegistryError::Connect {
                target,
                reason: format!(
                    "{} (if the registry serves plain HTTP, mark it insecure: \
                     registries.conf `insecure = true`, plain-http)",
                    reason(&e)
                ),
            },
            e => RegistryError::Connect {
                target,
                reason: reason(&e),
            },
        }
    }
}

/// A header's value as text, if present and text.
fn header(response: &Response<ureq::Body>, name: &str) -> Option<String> {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// The media type in `Content-Type`, without parameters.
fn content_type(response: &Response<ureq::Body>) -> Option<String> {
    let value = header(response, "content-type")?;
    let media = value.split(';').next()?.trim();
    (!media.is_empty()).then(|| media.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> Platform {
        Platform::parse(text).unwrap()
    }

    #[test]
    fn platforms_normalize() {
        assert_eq!(p("x86_64").to_string(), "amd64");
        assert_eq!(p("linux/aarch64").to_string(), "arm64");
        assert_eq!(p("arm/v7").to_string(), "arm/v7");
        assert_eq!(p("armhf").to_string(), "arm/v7");
        assert!(Platform::parse("AMD64").is_err());
        assert!(Platform::parse("amd64/../x").is_err());
        assert!(Platform::parse("").is_err());
    }

    #[test]
    fn index_entries_fit_by_arch_and_variant() {
        let plat = |arch: &str, variant: Option<&str>| {
            let mut v = serde_json::json!({"os": "linux", "architecture": arch});
            if let Some(variant) = variant {
                v["variant"] = variant.into();
            }
            v
        };
        assert!(p("amd64").fit(&plat("amd64", None)).is_some());
        assert!(p("amd64").fit(&plat("arm64", None)).is_none());
        assert!(p("arm64").fit(&plat("arm64", Some("v8"))).is_some());
        assert!(p("arm64/v8").fit(&plat("arm64", None)).is_some());
        assert!(p("arm/v7").fit(&plat("arm", Some("v6"))).is_none());
        assert!(p("arm").fit(&plat("arm", Some("v7"))) > p("arm").fit(&plat("arm", Some("v6"))));
        let windows = serde_json::json!({"os": "windows", "architecture": "amd64"});
        assert!(p("amd64").fit(&windows).is_none());
    }
}
