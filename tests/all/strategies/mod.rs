//! proptest strategies that build image references from the grammar of the
//! distribution spec, shared by the property and differential tests.
//!
//! Each generated reference keeps its parts, so a test can say what the
//! parser must make of it without parsing it a second way.
#![allow(dead_code)]

use proptest::prelude::*;

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`, kept short.
pub fn path_component() -> impl Strategy<Value = String> {
    "[a-z0-9]{1,5}((\\.|_|__|-{1,3})[a-z0-9]{1,4}){0,2}"
}

/// A path component with no `.`: as the first of several, it is a Docker
/// Hub namespace rather than a host.
pub fn namespace_component() -> impl Strategy<Value = String> {
    "[a-z0-9]{1,5}((_|__|-{1,3})[a-z0-9]{1,4}){0,2}"
        .prop_filter("localhost is a host", |c| c != "localhost")
}

/// One to three path components.
pub fn repository() -> impl Strategy<Value = String> {
    prop::collection::vec(path_component(), 1..=3).prop_map(|c| c.join("/"))
}

/// A DNS label, in mixed case: hosts are case-insensitive.
pub fn dns_label() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9]([a-zA-Z0-9-]{0,5}[a-zA-Z0-9])?"
}

/// A host that reads as one: a dotted DNS name, `localhost` in any case,
/// an IPv4 address, an `[IPv6]` address, or one of Docker Hub's names.
pub fn host() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::collection::vec(dns_label(), 2..=4).prop_map(|l| l.join(".")),
        1 => prop_oneof![Just("localhost"), Just("LocalHost")].prop_map(String::from),
        1 => (0u8..=255, 0u8..=255, 0u8..=255, 0u8..=255)
            .prop_map(|(a, b, c, d)| format!("{a}.{b}.{c}.{d}")),
        1 => (prop::array::uniform8(any::<u16>()), any::<bool>()).prop_map(|(segments, upper)| {
            let address = std::net::Ipv6Addr::from(segments).to_string();
            format!("[{}]", if upper { address.to_ascii_uppercase() } else { address })
        }),
        1 => prop_oneof![
            Just("docker.io"),
            Just("index.docker.io"),
            Just("registry-1.docker.io"),
            Just("Index.Docker.IO"),
            Just("quay.io"),
        ]
        .prop_map(String::from),
    ]
}

/// A port from 1 to 65535, weighted towards 443 (which canonicalisation
/// drops) and the usual registry ports.
pub fn port() -> impl Strategy<Value = u16> {
    prop_oneof![
        2 => Just(443u16),
        1 => Just(5000u16),
        3 => 1u16..=65535,
    ]
}

/// `host[:port]`.
pub fn registry() -> impl Strategy<Value = String> {
    (host(), prop::option::weighted(0.4, port())).prop_map(|(h, p)| match p {
        Some(p) => format!("{h}:{p}"),
        None => h,
    })
}

/// `[A-Za-z0-9_][A-Za-z0-9._-]{0,127}`, mostly short.
pub fn tag() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => "[A-Za-z0-9_][A-Za-z0-9._-]{0,12}",
        1 => "[A-Za-z0-9_][A-Za-z0-9._-]{127}",
    ]
}

/// 64 (sha256) or 128 (sha512) lowercase hex digits after the algorithm.
pub fn digest() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "[0-9a-f]{64}".prop_map(|h| format!("sha256:{h}")),
        1 => "[0-9a-f]{128}".prop_map(|h| format!("sha512:{h}")),
    ]
}

/// A valid reference as its parts, and how they were written.
#[derive(Debug, Clone)]
pub struct GenRef {
    /// `None`: a Docker Hub short name (`ubuntu`, `ncbi/blast`).
    pub registry: Option<String>,
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<String>,
    /// Written with a leading `docker://`.
    pub docker_scheme: bool,
}

impl GenRef {
    /// The reference as a user would type it.
    pub fn text(&self) -> String {
        let mut s = String::new();
        if self.docker_scheme {
            s.push_str("docker://");
        }
        if let Some(registry) = &self.registry {
            s.push_str(registry);
            s.push('/');
        }
        s.push_str(&self.repository);
        if let Some(tag) = &self.tag {
            s.push(':');
            s.push_str(tag);
        }
        if let Some(digest) = &self.digest {
            s.push('@');
            s.push_str(digest);
        }
        s
    }

    /// The registry as sifr names it: lowercase, without `:443`, and
    /// `docker.io` for every name of Docker Hub.
    pub fn canonical_registry(&self) -> String {
        let Some(registry) = &self.registry else {
            return "docker.io".to_string();
        };
        let lower = registry.to_ascii_lowercase();
        let host = lower.strip_suffix(":443").unwrap_or(&lower);
        match host {
            "index.docker.io" | "registry-1.docker.io" => "docker.io".to_string(),
            other => other.to_string(),
        }
    }

    /// The repository as sifr names it: official Docker Hub images are in
    /// `library/`.
    pub fn canonical_repository(&self) -> String {
        if self.canonical_registry() == "docker.io" && !self.repository.contains('/') {
            format!("library/{}", self.repository)
        } else {
            self.repository.clone()
        }
    }
}

/// A Docker Hub short name: one component, or a namespace (no `.`, so not
/// a host) and more components.
pub fn short_name() -> impl Strategy<Value = String> {
    prop_oneof![
        path_component(),
        (
            namespace_component(),
            prop::collection::vec(path_component(), 1..=2)
        )
            .prop_map(|(ns, rest)| format!("{ns}/{}", rest.join("/"))),
    ]
}

/// Valid references: with and without a registry (ports, IPv6, Docker
/// Hub's names), with a tag, a digest, both or neither, sometimes written
/// with `docker://`.
pub fn valid_ref() -> impl Strategy<Value = GenRef> {
    let name = prop_oneof![
        1 => short_name().prop_map(|r| (None, r)),
        3 => (registry(), repository()).prop_map(|(reg, r)| (Some(reg), r)),
    ];
    (
        name,
        prop::option::of(tag()),
        prop::option::weighted(0.3, digest()),
        prop::bool::weighted(0.1),
    )
        .prop_map(
            |((registry, repository), tag, digest, docker_scheme)| GenRef {
                registry,
                repository,
                tag,
                digest,
                docker_scheme,
            },
        )
}

/// Strings over the characters references are made of (and a few that
/// are not), so that the parser's deeper branches are reached.
pub fn reference_like() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9:/@._\\-\\[\\]]{0,48}"
}

/// A valid reference with a few characters deleted, replaced or
/// inserted: text that is almost right.
pub fn mutated_ref() -> impl Strategy<Value = String> {
    let edit = (any::<prop::sample::Index>(), 0u8..3, prop::char::any());
    (valid_ref(), prop::collection::vec(edit, 1..=3)).prop_map(|(r, edits)| {
        let mut chars: Vec<char> = r.text().chars().collect();
        for (at, kind, c) in edits {
            let i = at.index(chars.len() + 1);
            match kind {
                0 if i < chars.len() => {
                    chars.remove(i);
                }
                1 if i < chars.len() => chars[i] = c,
                _ => chars.insert(i, c),
            }
        }
        chars.into_iter().collect()
    })
}
