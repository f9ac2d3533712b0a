//! The image-reference grammar of the OCI distribution spec and Docker.
//!
//! Everything that can reach apptainer's argv — what a user typed and what a
//! plugin returned — goes through these checks. The grammar has no room for
//! whitespace, shell metacharacters or a leading `-`, so nothing that passes
//! can be read as a flag or split into two words.

use std::fmt;
use std::ops::RangeBounds;

use serde::{Deserialize, Deserializer, Serialize};

/// Docker Hub's canonical registry name.
pub const DOCKER_HUB: &str = "docker.io";

/// Longest `registry/repository` name the distribution spec allows.
const MAX_NAME_LEN: usize = 255;

/// A canonical image reference: what the user asked for, before any plugin
/// rewrote it. This is the image's identity.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct ImageRef {
    /// `host[:port]`; Docker Hub is always [`DOCKER_HUB`].
    pub registry: String,
    /// Path components; single Docker Hub names get `library/`.
    pub repository: String,
    pub tag: Option<String>,
    pub manifest_digest: Option<ManifestDigest>,
    /// The name as written, when it had no registry (`ubuntu`, `ncbi/blast`):
    /// how the user wrote it, not part of the identity.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub short_name: Option<String>,
}

/// A registry manifest digest (`sha256:<64 hex>`): names an image in a
/// registry, and can be pulled by.
///
/// Not to be confused with [`SifDigest`]: the two are different types so that
/// one can never be passed where the other is meant.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct ManifestDigest(String);

/// The sha256 of a local SIF file.
///
/// A `docker://` pull is a build: two pulls of one image give SIF files with
/// different bytes. So this is a local integrity check, never an image
/// identity across machines, and never a pull reference.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct SifDigest(String);

/// The sha256 of a policy plugin's component (its `.wasm` bytes), as 64
/// lowercase hex digits: what a `sha256` pin in the config names.
///
/// Shown, and serialized, as the bare hex, as `sha256sum` prints it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct WasmDigest(String);

/// The first 8 to 64 hex digits of a [`SifDigest`], lowercase: enough to
/// name a cached SIF file, as `sifr cache ls` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SifDigestPrefix(String);

/// Why a reference, or a part of one, is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct GrammarError(String);

impl GrammarError {
    fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }
}

impl ManifestDigest {
    pub fn parse(s: &str) -> Result<Self, GrammarError> {
        validate_digest(s)?;
        Ok(Self(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ManifestDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for ManifestDigest {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

impl SifDigest {
    /// From the lowercase hex of a sha256 (64 characters).
    pub fn from_hex(hex: &str) -> Result<Self, GrammarError> {
        if !is_lower_hex(hex, 64..=64) {
            return Err(GrammarError::new(format!(
                "SIF digest {hex:?} is not 64 lowercase hex digits"
            )));
        }
        Ok(Self(format!("sha256:{hex}")))
    }

    /// From `sha256:<64 lowercase hex>`, as an index record writes it.
    pub fn parse(s: &str) -> Result<Self, GrammarError> {
        match s.strip_prefix("sha256:") {
            Some(hex) => Self::from_hex(hex),
            None => Err(GrammarError::new(format!(
                "SIF digest {s:?} is not sha256:<64 lowercase hex digits>"
            ))),
        }
    }

    /// `sha256:<hex>`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The 64 hex digits alone: the blob's file name.
    pub fn hex(&self) -> &str {
        &self.0["sha256:".len()..]
    }

    pub fn starts_with(&self, prefix: &SifDigestPrefix) -> bool {
        self.hex().starts_with(&prefix.0)
    }
}

impl<'de> Deserialize<'de> for SifDigest {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

impl SifDigestPrefix {
    /// From 8 to 64 hex digits, in either case, with or without `sha256:`.
    pub fn parse(s: &str) -> Result<Self, GrammarError> {
        let hex = s.strip_prefix("sha256:").unwrap_or(s).to_ascii_lowercase();
        if !is_lower_hex(&hex, 8..=64) {
            return Err(GrammarError::new(format!(
                "{s:?} is not a SIF digest: give sha256:<hex> or 8 to 64 of its leading hex digits"
            )));
        }
        Ok(Self(hex))
    }
}

impl fmt::Display for SifDigestPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl WasmDigest {
    /// The digest of a component's bytes.
    pub fn of(wasm: &[u8]) -> Self {
        use sha2::{Digest, Sha256};
        Self(hex::encode(Sha256::digest(wasm)))
    }

    /// From 64 lowercase hex digits.
    pub fn from_hex(hex: &str) -> Result<Self, GrammarError> {
        if !is_lower_hex(hex, 64..=64) {
            return Err(GrammarError::new(format!(
                "plugin digest {hex:?} is not 64 lowercase hex digits"
            )));
        }
        Ok(Self(hex.to_string()))
    }

    /// A pin as a config gives it: 64 hex digits in either case, with or
    /// without `sha256:`.
    pub fn parse_pin(pin: &str) -> Result<Self, GrammarError> {
        let hex = pin.strip_prefix("sha256:").unwrap_or(pin);
        Self::from_hex(&hex.to_ascii_lowercase())
    }

    /// The 64 hex digits.
    pub fn as_hex(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for WasmDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for WasmDigest {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Self::from_hex(&text).map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for SifDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl ImageRef {
    /// Parse what a user typed: `ubuntu`, `ncbi/blast:2.14.0`,
    /// `quay.io/biocontainers/blast:2.15.0`, `localhost:5000/foo/bar:1.0`,
    /// `ubuntu:22.04@sha256:<64 hex>`. A leading `docker://` is accepted.
    pub fn parse(input: &str) -> Result<Self, GrammarError> {
        Self::parse_inner(input)
            .map_err(|e| GrammarError::new(format!("invalid image reference {input:?}: {}", e.0)))
    }

    fn parse_inner(input: &str) -> Result<Self, GrammarError> {
        let s = input.strip_prefix("docker://").unwrap_or(input);
        if let Some((scheme, _)) = s.split_once("://") {
            return Err(GrammarError::new(format!(
                "{scheme}:// is not supported; sifr pulls OCI images from registries \
                 (write the reference without a scheme, or with docker://)"
            )));
        }
        if s.is_empty() {
            return Err(GrammarError::new("it is empty"));
        }
        if let Some(c) = s.chars().find(|c| c.is_whitespace() || c.is_control()) {
            return Err(GrammarError::new(format!(
                "it contains {c:?}; a reference has no whitespace or control characters"
            )));
        }

        let (name, digest) = match s.rsplit_once('@') {
            Some((name, digest)) => (name, Some(ManifestDigest::parse(digest)?)),
            None => (s, None),
        };
        // A ':' after the last '/' starts the tag; one before it is a port.
        let last_slash = name.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match name[last_slash..].rfind(':') {
            Some(i) => {
                let tag = &name[last_slash + i + 1..];
                validate_tag(tag)?;
                (&name[..last_slash + i], Some(tag.to_string()))
            }
            None => (name, None),
        };

        if let Some((first, _)) = name.split_once('/')
            && let Some(error) = ambiguous_host(first)
        {
            return Err(error);
        }
        let (registry, repository, short_name) = match name.split_once('/') {
            Some((first, rest)) if looks_like_registry(first) => (first, rest.to_string(), None),
            _ => (DOCKER_HUB, name.to_string(), Some(name.to_string())),
        };
        validate_registry(registry)?;
        let registry = canonical_registry(registry);
        let registry = registry.as_str();
        let repository = if registry == DOCKER_HUB && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository
        };
        validate_repository(&repository)?;
        if registry.len() + 1 + repository.len() > MAX_NAME_LEN {
            return Err(GrammarError::new(format!(
                "the name is longer than {MAX_NAME_LEN} characters"
            )));
        }
        Ok(Self {
            registry: registry.to_string(),
            repository,
            tag,
            manifest_digest: digest,
            short_name,
        })
    }
}

impl fmt::Display for ImageRef {
    /// The fully qualified form: `docker.io/library/ubuntu:22.04@sha256:…`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.manifest_digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

/// Docker's rule: the first component names a registry when it has a `.` or
/// a `:`, or is `localhost`. Otherwise it is a Docker Hub namespace.
///
/// Docker also reads a first component with a capital letter (`MyReg/foo`)
/// as a host. sifr refuses those instead (see [`ambiguous_host`]): hosts
/// are lowercased, and `myreg/foo` would then read as Docker Hub's `myreg`
/// namespace wherever the name is written again, in a `docker://` URI
/// among others, so a policy would judge one registry and apptainer pull
/// from another.
fn looks_like_registry(component: &str) -> bool {
    component.contains('.')
        || component.contains(':')
        || component.eq_ignore_ascii_case("localhost")
}

/// Why a first component docker would read as a host cannot be one here.
fn ambiguous_host(component: &str) -> Option<GrammarError> {
    let host_like = component
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-');
    (host_like
        && !looks_like_registry(component)
        && component.bytes().any(|b| b.is_ascii_uppercase()))
    .then(|| {
        GrammarError::new(format!(
            "{component:?} has capitals, which docker reads as a registry host, but a host \
                 with no '.' or ':' reads as a Docker Hub namespace once lowercased; write the \
                 registry with its domain or port ({}.example.org/…, {}:5000/…), or the Docker \
                 Hub namespace in lowercase ({}/…)",
            component.to_ascii_lowercase(),
            component.to_ascii_lowercase(),
            component.to_ascii_lowercase()
        ))
    })
}

/// Whether `registry` (canonical) is read as a host when written before a
/// repository in a reference or a `docker://` URI: Docker Hub is written
/// implicitly, and any other host needs a `.`, a `:` or to be `localhost`.
pub fn reads_as_host(registry: &str) -> bool {
    registry == DOCKER_HUB || looks_like_registry(registry)
}

/// The one spelling of a (valid) registry, so that policies compare hosts
/// as hosts and not as bytes:
///
/// - DNS names are case-insensitive: `QUAY.IO` is `quay.io`.
/// - `:443` is dropped: it is HTTPS's own port, so `host:443` and `host`
///   are the same registry, and a rule on one must hold for the other.
///   (An image that must be pulled over plain HTTP on port 443 is not a
///   thing registries serve; a plugin that wants it sets the port itself.)
/// - Docker Hub's other names (`index.docker.io`, `registry-1.docker.io`)
///   are `docker.io`.
pub fn canonical_registry(registry: &str) -> String {
    let lower = registry.to_ascii_lowercase();
    // `myreg:443` keeps its port: without it, `myreg/x` would read as a
    // Docker Hub namespace.
    let host = match lower.strip_suffix(":443") {
        Some(host) if looks_like_registry(host) => host,
        _ => &lower,
    };
    match host {
        "index.docker.io" | "registry-1.docker.io" => DOCKER_HUB.to_string(),
        other => other.to_string(),
    }
}

/// `host[:port]`, where host is a DNS name, an IPv4 address or `[IPv6]`.
pub fn validate_registry(registry: &str) -> Result<(), GrammarError> {
    let bad = |why: &str| {
        Err(GrammarError::new(format!(
            "registry {registry:?} is not host[:port]: {why}"
        )))
    };
    if registry.is_empty() {
        return bad("it is empty");
    }
    if registry.len() > MAX_NAME_LEN {
        return bad("it is too long");
    }
    let (host, port) = if let Some(rest) = registry.strip_prefix('[') {
        let Some((v6, after)) = rest.split_once(']') else {
            return bad("an IPv6 address needs a closing ']'");
        };
        if v6.parse::<std::net::Ipv6Addr>().is_err() {
            return bad("not an IPv6 address");
        }
        match after {
            "" => (v6, None),
            _ => match after.strip_prefix(':') {
                Some(port) => (v6, Some(port)),
                None => return bad("unexpected characters after ']'"),
            },
        }
    } else {
        match registry.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (registry, None),
        }
    };
    if let Some(port) = port
        && (port.is_empty()
            || port.len() > 5
            || !port.bytes().all(|b| b.is_ascii_digit())
            || port.parse::<u32>().map_or(true, |p| p == 0 || p > 65535))
    {
        return bad("the port must be a number from 1 to 65535");
    }
    if !registry.starts_with('[') {
        for label in host.split('.') {
            let ok = !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-');
            if !ok {
                return bad("each dot-separated part must be letters, digits and inner '-'");
            }
        }
    }
    Ok(())
}

/// Path components: `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`, joined by `/`.
pub fn validate_repository(repository: &str) -> Result<(), GrammarError> {
    if repository.is_empty() {
        return Err(GrammarError::new("the repository is empty"));
    }
    if repository.len() > MAX_NAME_LEN {
        return Err(GrammarError::new(format!(
            "the repository is longer than {MAX_NAME_LEN} characters"
        )));
    }
    for component in repository.split('/') {
        if !is_path_component(component) {
            let hint = if component.bytes().any(|b| b.is_ascii_uppercase()) {
                format!(
                    " (repositories are lowercase: try {:?})",
                    component.to_lowercase()
                )
            } else {
                String::new()
            };
            return Err(GrammarError::new(format!(
                "repository component {component:?} is not valid: use lowercase letters and \
                 digits, separated by '.', '_', '__' or '-'{hint}"
            )));
        }
    }
    Ok(())
}

fn is_path_component(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        // A separator run: '.', '_', '__' or one or more '-'.
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-');
        if !ok {
            return false;
        }
    }
    true
}

/// `[A-Za-z0-9_][A-Za-z0-9._-]{0,127}`.
pub fn validate_tag(tag: &str) -> Result<(), GrammarError> {
    let b = tag.as_bytes();
    let word = |x: u8| x.is_ascii_alphanumeric() || x == b'_';
    let ok = !b.is_empty()
        && b.len() <= 128
        && word(b[0])
        && b[1..].iter().all(|&x| word(x) || x == b'.' || x == b'-');
    if ok {
        Ok(())
    } else {
        Err(GrammarError::new(format!(
            "tag {tag:?} is not valid: it must match [A-Za-z0-9_][A-Za-z0-9._-]{{0,127}}"
        )))
    }
}

/// `algorithm:hex`; sha256 has exactly 64 lowercase hex digits, sha512 128.
pub fn validate_digest(digest: &str) -> Result<(), GrammarError> {
    let bad = |why: String| Err(GrammarError::new(format!("digest {digest:?} {why}")));
    let Some((algorithm, hex)) = digest.split_once(':') else {
        return bad("is not algorithm:hex (e.g. sha256:<64 hex digits>)".to_string());
    };
    let len = match algorithm {
        "sha256" => 64,
        "sha512" => 128,
        other => {
            return bad(format!(
                "uses {other:?}; only sha256 and sha512 are supported"
            ));
        }
    };
    if !is_lower_hex(hex, len..=len) {
        return bad(format!(
            "must have exactly {len} lowercase hex digits after '{algorithm}:'"
        ));
    }
    Ok(())
}

/// Whether `s` is lowercase hex digits, as many as `len` allows: the one
/// check behind every digest, digest prefix and hex file name sifr reads.
pub fn is_lower_hex(s: &str, len: impl RangeBounds<usize>) -> bool {
    len.contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn parses_and_normalises_references() {
        let cases: &[(&str, &str, &str, Option<&str>, bool)] = &[
            ("ubuntu", "docker.io", "library/ubuntu", None, false),
            (
                "ncbi/blast:2.14.0",
                "docker.io",
                "ncbi/blast",
                Some("2.14.0"),
                false,
            ),
            (
                "docker://ncbi/blast:2.14.0",
                "docker.io",
                "ncbi/blast",
                Some("2.14.0"),
                false,
            ),
            (
                "index.docker.io/library/ubuntu",
                "docker.io",
                "library/ubuntu",
                None,
                false,
            ),
            (
                "quay.io/biocontainers/blast:2.15.0",
                "quay.io",
                "biocontainers/blast",
                Some("2.15.0"),
                false,
            ),
            (
                "localhost:5000/foo/bar:1.0",
                "localhost:5000",
                "foo/bar",
                Some("1.0"),
                false,
            ),
            ("localhost/foo", "localhost", "foo", None, false),
            ("[::1]:5000/foo:1", "[::1]:5000", "foo", Some("1"), false),
            (
                "127.0.0.1:5000/a/b/c",
                "127.0.0.1:5000",
                "a/b/c",
                None,
                false,
            ),
            (
                "my-reg.example.com/a__b/c-d---e",
                "my-reg.example.com",
                "a__b/c-d---e",
                None,
                false,
            ),
            // Hosts are canonical: lowercase, no :443, one name for Hub.
            (
                "BLOCKED.example.com/foo:1",
                "blocked.example.com",
                "foo",
                Some("1"),
                false,
            ),
            (
                "blocked.example.com:443/foo:1",
                "blocked.example.com",
                "foo",
                Some("1"),
                false,
            ),
            ("a.EVIL.org/foo:1", "a.evil.org", "foo", Some("1"), false),
            ("QUAY.IO/bad/x:1", "quay.io", "bad/x", Some("1"), false),
            ("Localhost:5000/foo", "localhost:5000", "foo", None, false),
            (
                "INDEX.DOCKER.IO/library/ubuntu",
                "docker.io",
                "library/ubuntu",
                None,
                false,
            ),
            (
                "registry-1.docker.io:443/ncbi/blast",
                "docker.io",
                "ncbi/blast",
                None,
                false,
            ),
            ("[::1]:443/foo", "[::1]", "foo", None, false),
            (
                "example.com:4430/foo",
                "example.com:4430",
                "foo",
                None,
                false,
            ),
        ];
        for &(input, registry, repository, tag, digest) in cases {
            let r = ImageRef::parse(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(r.registry, registry, "{input}");
            assert_eq!(r.repository, repository, "{input}");
            assert_eq!(r.tag.as_deref(), tag, "{input}");
            assert_eq!(r.manifest_digest.is_some(), digest, "{input}");
        }
        let pinned = ImageRef::parse(&format!("ubuntu:22.04@{D}")).unwrap();
        assert_eq!(pinned.tag.as_deref(), Some("22.04"));
        assert_eq!(pinned.manifest_digest.unwrap().as_str(), D);
    }

    #[test]
    fn rejects_malformed_references_with_a_reason() {
        let cases: &[(&str, &str)] = &[
            ("", "empty"),
            ("Ubuntu", "try \"ubuntu\""),
            ("ubuntu:22 .04", "whitespace"),
            ("ubuntu@sha256:abc", "64 lowercase hex"),
            ("ubuntu@md5:0123", "only sha256 and sha512"),
            ("ubuntu:-x", "tag \"-x\""),
            ("library://alpine", "library:// is not supported"),
            ("foo//bar", "component \"\""),
            ("reg.io:99999/foo", "port"),
            ("-bad.io/foo", "dot-separated"),
            ("foo;rm", "component \"foo;rm\""),
            ("foo/$(id)", "component"),
            // Docker reads these as hosts; lowercased, they would read as
            // Docker Hub namespaces, and a policy judge one registry while
            // apptainer pulls from another.
            (
                "MyReg/foo",
                "reads as a Docker Hub namespace once lowercased",
            ),
            ("A/a", "write the registry with its domain or port"),
            ("[A]/a", "component \"[A]\""),
            ("[a]:5000/foo", "not an IPv6 address"),
        ];
        for &(input, expect) in cases {
            let err = ImageRef::parse(input).expect_err(input).to_string();
            assert!(err.contains(expect), "{input}: {err}");
            assert!(
                err.contains(&format!("{input:?}")),
                "names the input: {err}"
            );
        }
    }

    #[test]
    fn tags_follow_the_distribution_grammar() {
        for ok in ["latest", "_x", "1.0-rc.1", &"a".repeat(128)] {
            assert!(validate_tag(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".x", "-x", "a b", "a;b", &"a".repeat(129), "a\u{e9}"] {
            assert!(validate_tag(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn registries_cannot_smuggle_flags() {
        for bad in [
            "--bind=/:/x",
            "-x",
            "a b",
            "host:",
            "host:abc",
            "[::1",
            "a..b",
            "x/y",
        ] {
            assert!(validate_registry(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sif_digest_is_not_a_manifest_digest() {
        let hex = &D["sha256:".len()..];
        let sif = SifDigest::from_hex(hex).unwrap();
        assert_eq!(sif.as_str(), D);
        assert!(SifDigest::from_hex("ABC").is_err());
        assert_eq!(sif.hex(), hex);
        assert_eq!(SifDigest::parse(D).unwrap(), sif);
        assert!(SifDigest::parse(hex).is_err(), "needs sha256:");
    }

    #[test]
    fn digests_validate_when_deserialized_and_serialize_as_before() {
        let json = format!("{D:?}");
        let sif: SifDigest = serde_json::from_str(&json).unwrap();
        assert_eq!(serde_json::to_string(&sif).unwrap(), json);
        let manifest: ManifestDigest = serde_json::from_str(&json).unwrap();
        assert_eq!(serde_json::to_string(&manifest).unwrap(), json);
        for bad in ["\"sha256:abc\"", "\"md5:0123\"", "\"\""] {
            assert!(serde_json::from_str::<SifDigest>(bad).is_err(), "{bad}");
            assert!(
                serde_json::from_str::<ManifestDigest>(bad).is_err(),
                "{bad}"
            );
        }
        let hex = &D["sha256:".len()..];
        let wasm: WasmDigest = serde_json::from_str(&format!("{hex:?}")).unwrap();
        assert_eq!(wasm.to_string(), hex, "shown bare, as sha256sum does");
        assert!(serde_json::from_str::<WasmDigest>(&json).is_err());
    }

    #[test]
    fn pins_and_prefixes_accept_either_case() {
        let hex = &D["sha256:".len()..];
        let pin = WasmDigest::parse_pin(&D.to_ascii_uppercase().replace("SHA256:", "sha256:"));
        assert_eq!(pin.unwrap().as_hex(), hex);
        assert!(WasmDigest::parse_pin("abc").is_err());
        let sif = SifDigest::from_hex(hex).unwrap();
        for prefix in ["01234567", "sha256:0123456789AB", hex] {
            assert!(
                sif.starts_with(&SifDigestPrefix::parse(prefix).unwrap()),
                "{prefix}"
            );
        }
        for bad in ["0123456", "sha256:xyz12345", &format!("{hex}0")] {
            assert!(SifDigestPrefix::parse(bad).is_err(), "{bad}");
        }
    }
}
