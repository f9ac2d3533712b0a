//! Credentials, and the registry's `WWW-Authenticate` challenges.
//!
//! Credentials come from the places users already have them, in this order
//! (the first that has an entry for the registry wins):
//!
//! 1. `APPTAINER_DOCKER_USERNAME` / `APPTAINER_DOCKER_PASSWORD` (both set);
//! 2. `${XDG_RUNTIME_DIR}/containers/auth.json`, then
//!    `~/.config/containers/auth.json` (podman, skopeo, buildah);
//! 3. `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`.
//!
//! In the files, `auths` entries are matched by registry host (a key may
//! carry a scheme or a `/v1/` suffix, as `docker login` writes them), and in
//! containers' `auth.json` a `registry/namespace` key is matched too, the
//! most specific first. An entry's base64 `auth` (`user:password`) is used,
//! or its `username` and `password`.
//!
//! Not supported (yet): credential helpers (`credHelpers`, `credsStore`) and
//! `identitytoken` (OAuth refresh tokens). An entry that has only those is
//! skipped, as if absent.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use base64::Engine as _;

/// A user name and password for a registry. Its `Debug` hides the password;
/// it is never logged, printed or put in an error.
#[derive(Clone, PartialEq, Eq)]
pub struct Credential {
    pub username: String,
    password: String,
}

impl Credential {
    pub fn new(username: impl Into<String>, password: impl Into<String>) -> Self {
        Self {
            username: username.into(),
            password: password.into(),
        }
    }

    /// The `Authorization` header value for basic auth.
    pub(crate) fn basic_header(&self) -> String {
        let raw = format!("{}:{}", self.username, self.password);
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(raw)
        )
    }
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential")
            .field("username", &self.username)
            .field("password", &"<hidden>")
            .finish()
    }
}

/// Where the client looks for credentials. The library reads no
/// environment variable of its own accord: [`CredentialSources::standard`]
/// takes the environment from the caller.
#[derive(Debug, Clone, Default)]
pub struct CredentialSources {
    /// Used for every registry, before any file.
    pub fixed: Option<Credential>,
    /// Auth files (docker `config.json` or containers `auth.json` format),
    /// in order.
    pub files: Vec<PathBuf>,
}

impl CredentialSources {
    /// No credentials: anonymous access only.
    pub fn none() -> Self {
        Self::default()
    }

    /// The standard places (see the module docs), with `env` to read the
    /// environment (`|name| std::env::var_os(name)` in a program) and
    /// `home` for `~`.
    pub fn standard(env: impl Fn(&str) -> Option<OsString>, home: Option<PathBuf>) -> Self {
        let set = |name: &str| env(name).filter(|v| !v.is_empty());
        let fixed = match (
            set("APPTAINER_DOCKER_USERNAME"),
            set("APPTAINER_DOCKER_PASSWORD"),
        ) {
            (Some(user), Some(password)) => Some(Credential::new(
                user.to_string_lossy(),
                password.to_string_lossy(),
            )),
            _ => None,
        };
        let mut files = Vec::new();
        if let Some(run) = set("XDG_RUNTIME_DIR") {
            files.push(PathBuf::from(run).join("containers/auth.json"));
        }
        if let Some(home) = &home {
            files.push(home.join(".config/containers/auth.json"));
        }
        match set("DOCKER_CONFIG") {
            Some(dir) => files.push(PathBuf::from(dir).join("config.json")),
            None => {
                if let Some(home) = &home {
                    files.push(home.join(".docker/config.json"));
                }
            }
        }
        Self { fixed, files }
    }

    /// Only this credential.
    pub fn fixed(credential: Credential) -> Self {
        Self {
            fixed: Some(credential),
            files: Vec::new(),
        }
    }

    /// Only these auth files.
    pub fn files(files: impl IntoIterator<Item = PathBuf>) -> Self {
        Self {
            fixed: None,
            files: files.into_iter().collect(),
        }
    }

    /// The credential for `repository` at `registry`, if any source has one.
    /// A file that is missing or unreadable is skipped.
    pub fn find(&self, registry: &str, repository: &str) -> Option<Credential> {
        if let Some(c) = &self.fixed {
            return Some(c.clone());
        }
        self.files
            .iter()
            .find_map(|file| from_auth_file(file, registry, repository))
    }
}

/// Auth files are small; a bigger one is not read.
const MAX_AUTH_FILE: u64 = 1 << 20;

fn from_auth_file(path: &Path, registry: &str, repository: &str) -> Option<Credential> {
    use std::io::Read;
    let file = std::fs::File::open(path).ok()?;
    let mut text = String::new();
    file.take(MAX_AUTH_FILE).read_to_string(&mut text).ok()?;
    let json: serde_json::Value = serde_json::from_str(&text).ok()?;
    let auths = json.get("auths")?.as_object()?;
    let entries: Vec<(String, &serde_json::Value)> = auths
        .iter()
        .map(|(key, value)| (normalize_key(key), value))
        .collect();
    // Most specific first: registry/a/b, registry/a, registry.
    let mut scope = format!("{registry}/{repository}");
    loop {
        let hit = entries
            .iter()
            .filter(|(key, _)| same_registry_key(key, &scope))
            .find_map(|(_, entry)| entry_credential(entry));
        if hit.is_some() {
            return hit;
        }
        match scope.rsplit_once('/') {
            Some((rest, _)) => scope = rest.to_string(),
            None => return None,
        }
    }
}

/// `https://host/v1/` → `host`; `host/ns` stays.
fn normalize_key(key: &str) -> String {
    let key = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let key = key.trim_end_matches('/');
    let key = key
        .strip_suffix("/v1")
        .or_else(|| key.strip_suffix("/v2"))
        .unwrap_or(key);
    key.to_ascii_lowercase()
}

/// Docker Hub is known by several host names.
fn same_registry_key(key: &str, scope: &str) -> bool {
    const HUB: [&str; 3] = ["docker.io", "index.docker.io", "registry-1.docker.io"];
    let split = |s: &str| -> (String, String) {
        match s.split_once('/') {
            Some((host, path)) => (host.to_string(), path.to_string()),
            None => (s.to_string(), String::new()),
        }
    };
    let (kh, kp) = split(key);
    let (sh, sp) = split(&scope.to_ascii_lowercase());
    kp == sp && (kh == sh || HUB.contains(&kh.as_str()) && HUB.contains(&sh.as_str()))
}

fn entry_credential(entry: &serde_json::Value) -> Option<Credential> {
    if let Some(auth) = entry.get("auth").and_then(|a| a.as_str())
        && !auth.is_empty()
    {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(auth.trim())
            .ok()?;
        let decoded = String::from_utf8(decoded).ok()?;
        let (user, password) = decoded.split_once(':')?;
        return Some(Credential::new(user, password));
    }
    let user = entry.get("username")?.as_str()?;
    let password = entry.get("password")?.as_str()?;
    (!user.is_empty()).then(|| Credential::new(user, password))
}

/// A parsed `WWW-Authenticate` challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Challenge {
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
}

/// Parse `Bearer realm="…",service="…",scope="…"` or `Basic realm="…"`.
/// `None` for a scheme sifr does not speak, or a Bearer without a realm.
pub(crate) fn parse_challenge(header: &str) -> Option<Challenge> {
    let header = header.trim();
    let (scheme, rest) = header
        .split_once(char::is_whitespace)
        .unwrap_or((header, ""));
    if scheme.eq_ignore_ascii_case("basic") {
        return Some(Challenge::Basic);
    }
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let params = parse_params(rest);
    let get = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    Some(Challenge::Bearer {
        realm: get("realm")?,
        service: get("service"),
        scope: get("scope"),
    })
}

/// `a="x, y",b=z` → [(a, "x, y"), (b, z)].
fn parse_params(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c == ',' {
                break;
            }
            key.push(c);
            chars.next();
        }
        if key.is_empty() && chars.peek().is_none() {
            return out;
        }
        if chars.next() != Some('=') {
            // A bare token: skip it.
            continue;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next()),
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == ',' {
                    break;
                }
                value.push(c);
                chars.next();
            }
        }
        out.push((key.trim().to_string(), value.trim().to_string()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_challenges_parse() {
        let c = parse_challenge(
            r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push""#,
        );
        assert_eq!(
            c,
            Some(Challenge::Bearer {
                realm: "https://auth.example/token".into(),
                service: Some("registry.example".into()),
                scope: Some("repository:a/b:pull,push".into()),
            })
        );
        assert_eq!(
            parse_challenge(r#"Basic realm="Registry Realm""#),
            Some(Challenge::Basic)
        );
        assert_eq!(parse_challenge("Bearer service=x"), None);
        assert_eq!(parse_challenge("Negotiate"), None);
    }

    #[test]
    fn auth_file_keys_match_by_host_and_namespace() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("config.json");
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        std::fs::write(
            &file,
            serde_json::json!({"auths": {
                "https://index.docker.io/v1/": {"auth": b64("hub:pw1")},
                "reg.example:5000": {"auth": b64("plain:pw2")},
                "reg.example:5000/team": {"auth": b64("team:pw3")},
                "helper.example": {},
            }})
            .to_string(),
        )
        .unwrap();
        let sources = CredentialSources::files([file]);
        let user = |r: &str, repo: &str| sources.find(r, repo).map(|c| c.username);
        assert_eq!(user("docker.io", "library/busybox").as_deref(), Some("hub"));
        assert_eq!(user("reg.example:5000", "x/y").as_deref(), Some("plain"));
        assert_eq!(user("reg.example:5000", "team/y").as_deref(), Some("team"));
        assert_eq!(user("helper.example", "x"), None);
        assert_eq!(user("other.example", "x"), None);
    }

    #[test]
    fn debug_hides_the_password() {
        let shown = format!("{:?}", Credential::new("u", "s3cret"));
        assert!(!shown.contains("s3cret"), "{shown}");
    }
}
