//! The image-reference grammar containers/image checks registries.conf
//! values against (its `docker/reference` package, from distribution), so
//! that sifr refuses at load exactly the values containers/image refuses.
//!
//! `reference.Parse`: `[domain/]path[:tag][@digest]`, where
//! - domain (`DomainRegexp`) is `host[:port]`, host a DNS name whose
//!   components are `[a-zA-Z0-9]` or `[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]`,
//!   or `[IPv6]`;
//! - path is components `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*` joined by `/`;
//! - tag is `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`;
//! - digest is `algorithm:hex`, at least 32 hex digits;
//! - the name (`[domain/]path`) has at most 255 characters.

/// The most characters a name (`domain/path`) may have (`NameTotalLengthMax`).
const NAME_MAX: usize = 255;

/// A parsed `[domain/]path[:tag][@digest]`.
pub struct Parsed<'a> {
    /// The first component when it reads as a domain, as `reference.Domain`
    /// gives it (before any Docker Hub normalisation).
    pub domain: Option<&'a str>,
    pub path: &'a str,
    pub tag: Option<&'a str>,
    pub digest: Option<&'a str>,
}

impl Parsed<'_> {
    /// `domain/path`, or `path`.
    pub fn name(&self) -> String {
        match self.domain {
            Some(domain) => format!("{domain}/{}", self.path),
            None => self.path.to_string(),
        }
    }
}

/// `reference.Parse`: the grammar above, or what breaks it.
pub fn parse(s: &str) -> Result<Parsed<'_>, String> {
    if s.is_empty() {
        return Err("it is empty".to_string());
    }
    let (rest, digest) = match s.split_once('@') {
        Some((rest, digest)) => {
            if !is_digest(digest) {
                return Err(format!(
                    "{digest:?} is not a digest (algorithm:hex, e.g. sha256:<64 hex>)"
                ));
            }
            (rest, Some(digest))
        }
        None => (s, None),
    };
    // A ':' after the last '/' starts the tag; one before it is a port.
    let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match rest[last_slash..].rfind(':') {
        Some(i) => {
            let tag = &rest[last_slash + i + 1..];
            if !is_tag(tag) {
                return Err(format!("{tag:?} is not a tag"));
            }
            (&rest[..last_slash + i], Some(tag))
        }
        None => (rest, None),
    };
    if name.len() > NAME_MAX {
        return Err(format!("the name is longer than {NAME_MAX} characters"));
    }
    // The domain is optional and comes first: the first component is one
    // when it reads as one and something follows it.
    let (domain, path) = match name.split_once('/') {
        Some((first, path)) if is_domain(first) => (Some(first), path),
        _ => (None, name),
    };
    if let Some(bad) = path.split('/').find(|c| !is_path_component(c)) {
        return Err(if bad.is_empty() {
            "it has an empty path component (`//` or a trailing `/`)".to_string()
        } else if is_path_component(&bad.to_ascii_lowercase()) {
            format!("{bad:?}: a repository name must be lowercase")
        } else {
            format!(
                "{bad:?} is not a repository path component ([a-z0-9] separated by ., _, __ or -)"
            )
        });
    }
    Ok(Parsed {
        domain,
        path,
        tag,
        digest,
    })
}

/// `reference.DomainRegexp`: `host[:port]`.
pub fn is_domain(s: &str) -> bool {
    let split = if s.starts_with('[') {
        s.find(']').map(|i| i + 1)
    } else {
        Some(s.find(':').unwrap_or(s.len()))
    };
    let Some(split) = split else {
        return false;
    };
    let (host, port) = s.split_at(split);
    let host_ok = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(ipv6) => !ipv6.is_empty() && ipv6.bytes().all(|b| b.is_ascii_hexdigit() || b == b':'),
        None => host.split('.').all(is_domain_component),
    };
    let port_ok = port.is_empty()
        || port
            .strip_prefix(':')
            .is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    host_ok && port_ok
}

/// Whether the port of a `host[:port]`, if it has one, is one a
/// connection can use (1 to 65535); the grammar takes any digits.
pub fn port_is_usable(domain: &str) -> bool {
    let after_host = match domain.rfind(']') {
        Some(i) => &domain[i + 1..],
        None => domain,
    };
    match after_host.rsplit_once(':') {
        Some((_, port)) => port.parse::<u32>().is_ok_and(|p| (1..=65535).contains(&p)),
        None => true,
    }
}

fn is_domain_component(c: &str) -> bool {
    let b = c.as_bytes();
    !b.is_empty()
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter().all(|&x| x.is_ascii_alphanumeric() || x == b'-')
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`.
fn is_path_component(c: &str) -> bool {
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let b = c.as_bytes();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        if !(sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-')) {
            return false;
        }
    }
    true
}

/// `[\w][\w.-]{0,127}`.
fn is_tag(t: &str) -> bool {
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let b = t.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && word(b[0])
        && b.iter().all(|&x| word(x) || x == b'.' || x == b'-')
}

/// `[A-Za-z][A-Za-z0-9]*([-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}`.
fn is_digest(d: &str) -> bool {
    let Some((algorithm, hex)) = d.split_once(':') else {
        return false;
    };
    let algorithm_ok = algorithm.split(['-', '_', '+', '.']).all(|part| {
        let b = part.as_bytes();
        !b.is_empty() && b[0].is_ascii_alphabetic() && b.iter().all(|x| x.is_ascii_alphanumeric())
    });
    algorithm_ok && hex.len() >= 32 && hex.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Docker Hub's canonical domain.
pub const DOCKER_HUB: &str = "docker.io";

/// `reference.ParseNormalizedNamed`'s `splitDockerDomain`: the domain and
/// repository a name means. A first component without `.` or `:`, other
/// than `localhost` and all lowercase, is a Docker Hub namespace, not a
/// host; `index.docker.io` is `docker.io`; a single Docker Hub name is in
/// `library/`.
pub fn normalize(name: &str) -> (String, String) {
    let (domain, remainder) = match name.split_once('/') {
        Some((first, rest))
            if first.contains(['.', ':'])
                || first == "localhost"
                || first != first.to_ascii_lowercase() =>
        {
            (first, rest)
        }
        _ => (DOCKER_HUB, name),
    };
    let domain = if domain == "index.docker.io" {
        DOCKER_HUB
    } else {
        domain
    };
    let remainder = if domain == DOCKER_HUB && !remainder.contains('/') {
        format!("library/{remainder}")
    } else {
        remainder.to_string()
    };
    (domain.to_string(), remainder)
}
