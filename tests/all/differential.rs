//! sifr's image-reference grammar against a well-kept implementation of the
//! same grammar: oci-spec's distribution `Reference`, a Rust port of
//! distribution's `reference` package (as Docker and containers/image use).
//!
//! Every way the two differ is a known difference below, with its reason,
//! and the hand-picked corpus records, case by case, which differences it
//! shows. Any other disagreement, in the corpus or in generated input, is
//! new and fails the test: decide whether it is a sifr bug or a deliberate
//! difference, and record it here.

use crate::strategies;

use std::str::FromStr;

use oci_spec::distribution::Reference;
use proptest::prelude::*;
use proptest::test_runner::Config as Cases;
use sifr::ImageRef;

/// A reference as both parsers can state it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct View {
    registry: String,
    repository: String,
    /// oci-spec fills in `latest` when there is neither tag nor digest;
    /// sifr's view does the same, so that the two compare.
    tag: Option<String>,
    digest: Option<String>,
}

fn sifr(input: &str) -> Result<View, String> {
    let r = ImageRef::parse(input).map_err(|e| e.to_string())?;
    let digest = r.manifest_digest.as_ref().map(|d| d.to_string());
    let tag = match (&r.tag, &digest) {
        (None, None) => Some("latest".to_string()),
        (tag, _) => tag.clone(),
    };
    Ok(View {
        registry: r.registry.clone(),
        repository: r.repository.clone(),
        tag,
        digest,
    })
}

fn oci(input: &str) -> Result<View, String> {
    let r = Reference::from_str(input).map_err(|e| e.to_string())?;
    Ok(View {
        registry: r.registry().to_string(),
        repository: r.repository().to_string(),
        tag: r.tag().map(str::to_string),
        digest: r.digest().map(str::to_string),
    })
}

/// One way the parsers are known to differ.
struct Known {
    id: &'static str,
    reason: &'static str,
}

/// Every known difference, with its reason.
const KNOWN: &[Known] = &[
    Known {
        id: "docker-scheme",
        reason: "sifr accepts a leading docker:// (apptainer's transport) and reads what follows; \
                 oci-spec takes bare references only",
    },
    Known {
        id: "host-case",
        reason: "sifr lowercases the host (DNS names are case-insensitive, so policies compare \
                 hosts as hosts); oci-spec keeps it as written",
    },
    Known {
        id: "port-443",
        reason: "sifr drops :443, HTTPS's own port, so host:443 and host are one registry; \
                 oci-spec keeps it",
    },
    Known {
        id: "hub-aliases",
        reason: "sifr names registry-1.docker.io as docker.io (with library/ for official \
                 images), as it does index.docker.io; oci-spec renames index.docker.io only",
    },
    Known {
        id: "uppercase-first-component",
        reason: "distribution reads a first component with a capital letter as a host; sifr \
                 lowercases hosts, and a dotless one (MyReg/foo) would then read as a Docker \
                 Hub namespace, so that a policy judges one registry and apptainer pulls from \
                 another: sifr refuses it (LOCALHOST is still localhost); oci-spec's \
                 split_domain omits the rule and keeps MyReg/foo as a Docker Hub repository",
    },
    Known {
        id: "ipv6",
        reason: "sifr accepts an [IPv6] registry, as distribution's grammar does; oci-spec's \
                 regexp has no IPv6 host",
    },
    Known {
        id: "port-range",
        reason: "sifr refuses a port outside 1 to 65535, which no pull can use; oci-spec takes \
                 any digits",
    },
    Known {
        id: "digest-uppercase-hex",
        reason: "sifr takes lowercase hex only, as the OCI image spec requires for sha256 and \
                 sha512; oci-spec takes either case",
    },
    Known {
        id: "digest-sha384",
        reason: "sifr takes sha256 and sha512 digests only (the algorithms registries use); \
                 oci-spec also takes sha384",
    },
    Known {
        id: "name-length",
        reason: "sifr limits registry/repository to 255 characters, as distribution's \
                 NameTotalLengthMax counts the whole name; oci-spec counts the repository only",
    },
    Known {
        id: "invalid-host",
        reason: "sifr refuses a first component that reads as a host (it has a '.') but is not \
                 one (a_b.io); oci-spec's regexp matches it as a path component and its \
                 split_domain then makes it the registry",
    },
    Known {
        id: "unicode-tag",
        reason: "sifr's tags are ASCII ([A-Za-z0-9_.-]); oci-spec's regexp uses \\w, which the \
                 regex crate reads as Unicode, so it takes tags such as caf\u{e9}",
    },
];

/// Which known differences account for the parsers' disagreement on
/// `input` (none when they agree), or a description of a new one.
fn explain(input: &str) -> Result<Vec<&'static str>, String> {
    let ours = sifr(input);
    if ours == oci(input) {
        return Ok(Vec::new());
    }
    let mut reasons = Vec::new();
    let text = match input.strip_prefix("docker://") {
        Some(rest) => {
            reasons.push("docker-scheme");
            rest
        }
        None => input,
    };
    let theirs = oci(text);
    let new = |why: &str| {
        Err(format!(
            "new disagreement on {input:?} ({why}):\n  sifr:     {ours:?}\n  oci-spec: {theirs:?}"
        ))
    };
    match (&ours, &theirs) {
        (Err(_), Err(_)) => {}
        (Ok(a), Ok(b)) => {
            let mut b = b.clone();
            // Each step does to oci-spec's view what sifr does, and is a
            // known difference when it changes something.
            let (first, rest) = b.repository.split_once('/').unwrap_or((&b.repository, ""));
            if b.registry == "docker.io"
                && !rest.is_empty()
                && first.bytes().any(|c| c.is_ascii_uppercase())
            {
                reasons.push("uppercase-first-component");
                b = View {
                    registry: first.to_string(),
                    repository: rest.to_string(),
                    ..b
                };
            }
            let lower = b.registry.to_ascii_lowercase();
            if lower != b.registry {
                reasons.push("host-case");
                b.registry = lower;
            }
            // sifr keeps :443 on a dotless host, which would otherwise read
            // as a Docker Hub namespace.
            if let Some(host) = b.registry.strip_suffix(":443")
                && (host.contains(['.', ':']) || host == "localhost")
            {
                reasons.push("port-443");
                b.registry = host.to_string();
            }
            if matches!(
                b.registry.as_str(),
                "registry-1.docker.io" | "index.docker.io"
            ) {
                reasons.push("hub-aliases");
                b.registry = "docker.io".to_string();
            }
            if b.registry == "docker.io" && !b.repository.contains('/') {
                b.repository = format!("library/{}", b.repository);
            }
            if *a != b {
                return new("both parse, to different references");
            }
        }
        (Ok(a), Err(_)) => {
            if a.registry.starts_with('[') {
                reasons.push("ipv6");
            } else {
                return new("sifr accepts what oci-spec refuses");
            }
        }
        (Err(_), Ok(b)) => {
            let port = b
                .registry
                .rsplit_once(']')
                .map_or(b.registry.as_str(), |(_, p)| p)
                .split_once(':')
                .map(|(_, p)| p);
            let digest = b.digest.as_deref().unwrap_or_default();
            let usable = |p: &str| p.len() <= 5 && matches!(p.parse::<u32>(), Ok(1..=65535));
            let (first, rest) = b.repository.split_once('/').unwrap_or((&b.repository, ""));
            if b.registry == "docker.io"
                && !rest.is_empty()
                && first.bytes().any(|c| c.is_ascii_uppercase())
                && first
                    .bytes()
                    .all(|c| c.is_ascii_alphanumeric() || c == b'-')
            {
                reasons.push("uppercase-first-component");
            } else if port.is_some_and(|p| !usable(p)) {
                reasons.push("port-range");
            } else if digest.bytes().any(|c| c.is_ascii_uppercase()) {
                reasons.push("digest-uppercase-hex");
            } else if digest.starts_with("sha384:") {
                reasons.push("digest-sha384");
            } else if b.tag.as_deref().is_some_and(|t| !t.is_ascii()) {
                reasons.push("unicode-tag");
            } else if sifr::reference::validate_registry(&b.registry).is_err() {
                reasons.push("invalid-host");
            } else if b.registry.len() + 1 + b.repository.len() > 255 {
                reasons.push("name-length");
            } else {
                return new("oci-spec accepts what sifr refuses");
            }
        }
    }
    Ok(reasons)
}

const D: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// Tricky references, and the known differences each shows (none: the
/// parsers agree).
fn corpus() -> Vec<(String, Vec<&'static str>)> {
    let long_ns = "a".repeat(120);
    let mut cases: Vec<(String, Vec<&'static str>)> = [
        // Agreement: Docker Hub normalisation, ports, tags, digests.
        ("ubuntu", &[][..]),
        ("ubuntu:22.04", &[]),
        ("ncbi/blast:2.14.0", &[]),
        ("library/ubuntu", &[]),
        ("docker.io/ubuntu", &[]),
        ("docker.io/library/ubuntu", &[]),
        ("index.docker.io/ubuntu", &[]),
        ("index.docker.io/library/ubuntu:1", &[]),
        ("quay.io/biocontainers/blast:2.15.0", &[]),
        ("localhost/foo", &[]),
        ("localhost:5000/foo/bar:1.0", &[]),
        ("localhost:5000", &[]),
        ("127.0.0.1:5000/a/b/c", &[]),
        ("my-reg.example.com/a__b/c-d---e", &[]),
        ("a.b/c.d_e__f-g", &[]),
        ("example.com:65535/x", &[]),
        ("example.com:1/x", &[]),
        ("_/x", &[]),
        ("x:_", &[]),
        ("x:A.b-C_", &[]),
        // Refused by both.
        ("", &[]),
        ("Ubuntu", &[]),
        ("ubuntu:", &[]),
        ("ubuntu:-x", &[]),
        ("ubuntu:.x", &[]),
        ("ubuntu@", &[]),
        ("ubuntu@sha256:abc", &[]),
        ("ubuntu@md5:0123456789abcdef0123456789abcdef", &[]),
        ("foo//bar", &[]),
        ("/foo", &[]),
        ("foo/", &[]),
        ("a..b/c", &[]),
        ("-bad.io/foo", &[]),
        ("bad-.io/foo", &[]),
        ("a_b.io/foo", &["invalid-host"]),
        ("a.b_c/foo:1", &["invalid-host"]),
        ("x-.y/z", &[]),
        ("foo;rm", &[]),
        ("foo/$(id)", &[]),
        ("ubuntu 22.04", &[]),
        ("ubuntu\n", &[]),
        ("library://alpine", &[]),
        ("https://quay.io/x", &[]),
        ("a___b", &[]),
        ("a._b", &[]),
        ("A_b/c", &[]),
        ("MyReg/Foo", &[]),
        (":5000/x", &[]),
        ("[::1/x", &[]),
        ("example.com:/x", &[]),
        ("example.com:0x10/x", &[]),
        // Known differences.
        ("docker://ubuntu", &["docker-scheme"]),
        ("docker://quay.io/x:1", &["docker-scheme"]),
        ("QUAY.IO/bad/x:1", &["host-case"]),
        ("a.EVIL.org/foo:1", &["host-case"]),
        ("Localhost:5000/foo", &["host-case"]),
        (
            "INDEX.DOCKER.IO/library/ubuntu",
            &["host-case", "hub-aliases"],
        ),
        ("quay.io:443/x", &["port-443"]),
        ("Quay.io:443/x", &["host-case", "port-443"]),
        ("registry-1.docker.io/ubuntu", &["hub-aliases"]),
        (
            "registry-1.docker.io:443/ncbi/blast",
            &["port-443", "hub-aliases"],
        ),
        ("index.docker.io:443/ubuntu", &["port-443", "hub-aliases"]),
        ("MyReg/foo", &["uppercase-first-component"]),
        ("LOCALHOST/foo", &["uppercase-first-component", "host-case"]),
        (
            "docker://MyReg/foo",
            &["docker-scheme", "uppercase-first-component"],
        ),
        ("[::1]:5000/foo:1", &["ipv6"]),
        ("[fe80::1]/foo", &["ipv6"]),
        ("[::1]:443/foo", &["ipv6"]),
        ("reg.io:99999/foo", &["port-range"]),
        ("reg.io:0/foo", &["port-range"]),
        ("reg.io:65536/foo", &["port-range"]),
        ("localhost:000080/foo", &["port-range"]),
        ("caf\u{e9}:caf\u{e9}", &[]),
        ("ubuntu:caf\u{e9}", &["unicode-tag"]),
        ("ubuntu:\u{3b1}\u{3b2}", &["unicode-tag"]),
    ]
    .into_iter()
    .map(|(s, r)| (s.to_string(), r.to_vec()))
    .collect();
    cases.extend([
        (format!("ubuntu@sha256:{D}"), vec![]),
        (format!("ubuntu:22.04@sha256:{D}"), vec![]),
        (format!("quay.io/x@sha512:{D}{D}"), vec![]),
        (
            format!("ubuntu@sha256:{}", D.to_uppercase()),
            vec!["digest-uppercase-hex"],
        ),
        (
            format!("ubuntu@sha384:{D}{}", &D[..32]),
            vec!["digest-sha384"],
        ),
        (format!("ubuntu@sha256:{}", &D[..63]), vec![]),
        // 8 + 1 + 120 + 1 + 120 = 250 characters of repository: oci-spec's
        // limit holds, but with the registry the name is over 255.
        (
            format!("registry.example.com/{long_ns}/{long_ns}"),
            vec!["name-length"],
        ),
        (format!("example.com/{long_ns}"), vec![]),
    ]);
    cases
}

#[test]
fn every_known_difference_has_a_reason() {
    for known in KNOWN {
        assert!(!known.reason.is_empty(), "{}", known.id);
        assert!(
            corpus().iter().any(|(_, ids)| ids.contains(&known.id)),
            "{} has no case in the corpus",
            known.id
        );
    }
}

#[test]
fn the_corpus_shows_exactly_the_recorded_differences() {
    for (input, expected) in corpus() {
        let shown = explain(&input).unwrap_or_else(|e| panic!("{e}"));
        for id in &shown {
            assert!(KNOWN.iter().any(|k| k.id == *id), "{id} is not in KNOWN");
        }
        assert_eq!(shown, expected, "{input:?}");
    }
}

proptest! {
    #![proptest_config(Cases { failure_persistence: None, ..Cases::with_cases(512) })]

    #[test]
    fn generated_references_differ_only_in_known_ways(r in strategies::valid_ref()) {
        explain(&r.text()).map_err(TestCaseError::fail)?;
    }

    #[test]
    fn near_miss_references_differ_only_in_known_ways(s in strategies::mutated_ref()) {
        explain(&s).map_err(TestCaseError::fail)?;
    }

    #[test]
    fn reference_like_strings_differ_only_in_known_ways(s in strategies::reference_like()) {
        explain(&s).map_err(TestCaseError::fail)?;
    }
}
