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
//! In each file, as docker and containers/image read it: the registry's
//! `credHelpers` entry, else `credsStore`, names a credential helper
//! (`docker-credential-NAME`, run as below); when it has nothing for the
//! registry, or the file names none, the file's `auths` entries are used.
//! They are matched by registry host (a key may carry a scheme or a `/v1/`
//! suffix, as `docker login` writes them), and in containers' `auth.json`
//! a `registry/namespace` key is matched too, the most specific first. An
//! entry's base64 `auth` (`user:password`) is used, or its `username` and
//! `password`.
//!
//! A helper is found on the `PATH` of its environment, which is only the
//! variables of [`HELPER_ENV`] (no `SIFR_*`, no `LD_PRELOAD`); it is given
//! the server URL on stdin (`https://index.docker.io/v1/` for Docker Hub,
//! as `docker login` stores it, then `docker.io`), must answer within
//! [`CredentialSources::helper_timeout`] with at most [`MAX_HELPER_OUTPUT`]
//! bytes of `{"ServerURL", "Username", "Secret"}` for that server, and is
//! killed, with its process group, past either. "credentials not found" is
//! an answer (none); any other failure is an error naming the helper, with
//! its text escaped. A secret is never logged, shown or put in an error.
//!
//! An identity token (an OAuth2 refresh token: `identitytoken` in a file,
//! or a helper's answer for the user `<token>`) is traded at the registry's
//! token service for an access token (`grant_type=refresh_token`, as
//! distribution's token spec and docker do); it is never sent as a
//! password, and a registry that asks for basic auth gets no credential.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;

use crate::untrusted;

/// The variables a credential helper gets, when set: where it is found
/// and who it runs for, what a keychain (pass, gpg, secret service) and
/// the cloud helpers (ecr-login, gcloud) read. Nothing else of sifr's
/// environment reaches it.
pub const HELPER_ENV: &[&str] = &[
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "LANG",
    "LC_ALL",
    "TMPDIR",
    "XDG_RUNTIME_DIR",
    "XDG_CONFIG_HOME",
    "XDG_DATA_HOME",
    "DBUS_SESSION_BUS_ADDRESS",
    "GNUPGHOME",
    "PASSWORD_STORE_DIR",
    "AWS_PROFILE",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_CONFIG_FILE",
    "AWS_SHARED_CREDENTIALS_FILE",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_ROLE_ARN",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "CLOUDSDK_CONFIG",
    "GOOGLE_APPLICATION_CREDENTIALS",
];

/// The most a helper may print (on stdout, and on stderr); an answer is a
/// few hundred bytes.
pub const MAX_HELPER_OUTPUT: u64 = 64 * 1024;

/// How long a helper may take, unless the sources say.
pub const DEFAULT_HELPER_TIMEOUT: Duration = Duration::from_secs(10);

/// A user name and password for a registry. Its `Debug` hides the password;
/// it is never logged, printed or put in an error.
#[derive(Clone, PartialEq, Eq)]
pub struct Credential {
    pub username: String,
    password: String,
    /// `password` is an identity token (an OAuth2 refresh token, as
    /// `docker login` keeps for some registries), traded at the token
    /// service for an access token, never sent as a password.
    identity_token: bool,
}

impl Credential {
    pub fn new(username: impl Into<String>, password: impl Into<String>) -> Self {
        Self {
            username: username.into(),
            password: password.into(),
            identity_token: false,
        }
    }

    /// An identity token: `identitytoken` in an auth file, or a helper's
    /// answer for the user `<token>`.
    pub fn identity_token(token: impl Into<String>) -> Self {
        Self {
            username: "<token>".to_string(),
            password: token.into(),
            identity_token: true,
        }
    }

    /// The refresh token, when this is an identity token.
    pub(crate) fn refresh_token(&self) -> Option<&str> {
        self.identity_token.then_some(self.password.as_str())
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
#[derive(Debug, Clone)]
pub struct CredentialSources {
    /// Used for every registry, before any file.
    pub fixed: Option<Credential>,
    /// Auth files (docker `config.json` or containers `auth.json` format),
    /// in order.
    pub files: Vec<PathBuf>,
    /// The whole environment credential helpers run with (see
    /// [`HELPER_ENV`]); its `PATH` is where they are found. Empty: no
    /// helper can be found.
    pub helper_env: Vec<(OsString, OsString)>,
    /// How long one helper run may take.
    pub helper_timeout: Duration,
}

impl Default for CredentialSources {
    fn default() -> Self {
        Self {
            fixed: None,
            files: Vec::new(),
            helper_env: Vec::new(),
            helper_timeout: DEFAULT_HELPER_TIMEOUT,
        }
    }
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
        let helper_env = HELPER_ENV
            .iter()
            .filter_map(|name| set(name).map(|value| (OsString::from(name), value)))
            .collect();
        Self {
            fixed,
            files,
            helper_env,
            ..Self::default()
        }
    }

    /// Only this credential.
    pub fn fixed(credential: Credential) -> Self {
        Self {
            fixed: Some(credential),
            ..Self::default()
        }
    }

    /// Only these auth files.
    pub fn files(files: impl IntoIterator<Item = PathBuf>) -> Self {
        Self {
            files: files.into_iter().collect(),
            ..Self::default()
        }
    }

    /// The credential for `repository` at `registry`, if any source has one.
    /// A file that is missing or unreadable is skipped; a credential helper
    /// that fails is an error (the message names it; no secret is in it).
    pub fn find(&self, registry: &str, repository: &str) -> Result<Option<Credential>, String> {
        if let Some(c) = &self.fixed {
            return Ok(Some(c.clone()));
        }
        for file in &self.files {
            if let Some(found) = self.in_auth_file(file, registry, repository)? {
                return Ok(Some(found));
            }
        }
        Ok(None)
    }

    fn in_auth_file(
        &self,
        path: &Path,
        registry: &str,
        repository: &str,
    ) -> Result<Option<Credential>, String> {
        let Some(json) = read_auth_file(path) else {
            return Ok(None);
        };
        let named = |key: &str| json.get(key).and_then(|v| v.as_object());
        let helper = named("credHelpers")
            .and_then(|helpers| {
                helpers
                    .iter()
                    .find(|(key, _)| same_registry_key(&normalize_key(key), registry))
                    .and_then(|(_, name)| name.as_str())
            })
            .or_else(|| json.get("credsStore").and_then(|v| v.as_str()))
            .filter(|name| !name.is_empty());
        if let Some(name) = helper {
            let found = self.run_helper(name, registry).map_err(|why| {
                format!(
                    "the credential helper docker-credential-{} (named in {}) {why}",
                    untrusted::escape(name, 64),
                    path.display()
                )
            })?;
            if found.is_some() {
                return Ok(found);
            }
        }
        Ok(from_auths(&json, registry, repository))
    }

    /// Run `docker-credential-NAME get` for `registry`: its credential, or
    /// `None` when it has none. The error says what went wrong, escaped.
    fn run_helper(&self, name: &str, registry: &str) -> Result<Option<Credential>, String> {
        let valid = !name.is_empty()
            && name.len() <= 64
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if !valid {
            return Err(
                "is not a helper name: use letters, digits, '.', '_' or '-' (it is looked up \
                 as docker-credential-NAME on PATH)"
                    .to_string(),
            );
        }
        let program = format!("docker-credential-{name}");
        let path = self
            .helper_env
            .iter()
            .find(|(k, _)| k == "PATH")
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        let Some(found) = std::env::split_paths(&path)
            .map(|dir| dir.join(&program))
            .find(|p| p.is_file())
        else {
            return Err(
                "is not on PATH: install it, or remove it from the file (sifr then uses its \
                 `auths`)"
                    .to_string(),
            );
        };
        let servers: &[&str] = if HUB.contains(&registry) {
            &["https://index.docker.io/v1/", "docker.io"]
        } else {
            &[registry]
        };
        for server in servers {
            if let Some(found) = self.helper_get(&found, server)? {
                return Ok(Some(found));
            }
        }
        Ok(None)
    }

    /// One `get` for `server`.
    fn helper_get(&self, program: &Path, server: &str) -> Result<Option<Credential>, String> {
        use std::os::unix::process::CommandExt;
        let mut child = Command::new(program)
            .arg("get")
            .env_clear()
            .envs(self.helper_env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .map_err(|e| format!("could not be started: {e}"))?;
        // Read on threads, so that a helper that floods one pipe and
        // blocks on the other cannot stall sifr; each sends what it read.
        let capped = |pipe: Option<Box<dyn Read + Send>>| {
            let (send, receive) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let mut bytes = Vec::new();
                if let Some(pipe) = pipe {
                    let _ = pipe.take(MAX_HELPER_OUTPUT + 1).read_to_end(&mut bytes);
                }
                let _ = send.send(bytes);
            });
            receive
        };
        let stdout = capped(
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        );
        let stderr = capped(
            child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        );
        if let Some(mut stdin) = child.stdin.take() {
            // A helper that does not read its stdin is not waited on here.
            let _ = stdin.write_all(server.as_bytes());
        }
        let deadline = Instant::now() + self.helper_timeout;
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break Some(status),
                Ok(None) if Instant::now() >= deadline => break None,
                Ok(None) => std::thread::sleep(Duration::from_millis(5)),
                Err(e) => return Err(format!("could not be waited for: {e}")),
            }
        };
        let group = rustix::process::Pid::from_raw(child.id() as i32);
        let kill = || {
            if let Some(group) = group {
                let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
            }
        };
        let late = || {
            format!(
                "gave no answer within {}; check that it works: echo {server} | \
                 {} get",
                humantime::format_duration(self.helper_timeout),
                program.display()
            )
        };
        let Some(status) = status else {
            // Not reaped yet, so the group is still the helper's.
            kill();
            let _ = child.wait();
            return Err(late());
        };
        // Exited; what it left holding its pipes gets the rest of the time.
        let rest = |receive: std::sync::mpsc::Receiver<Vec<u8>>| {
            receive.recv_timeout(deadline.saturating_duration_since(Instant::now()))
        };
        let (Ok(out), Ok(err)) = (rest(stdout), rest(stderr)) else {
            kill();
            return Err(late());
        };
        if out.len() as u64 > MAX_HELPER_OUTPUT || err.len() as u64 > MAX_HELPER_OUTPUT {
            return Err(format!(
                "printed more than {MAX_HELPER_OUTPUT} bytes; an answer is a few hundred: the \
                 helper is broken"
            ));
        }
        let text = String::from_utf8_lossy(&out);
        if !status.success() {
            // docker-credential-helpers' ErrCredentialsNotFound.
            if text.contains("credentials not found") {
                return Ok(None);
            }
            let said = if text.trim().is_empty() {
                String::from_utf8_lossy(&err).into_owned()
            } else {
                text.into_owned()
            };
            // A broken helper may print an answer and fail: its secret is
            // not shown either way.
            let said = if said.contains("\"Secret\"") {
                "(its output holds a secret, and is not shown)".to_string()
            } else {
                untrusted::escape(said.trim(), 512)
            };
            return Err(format!("failed ({status}) for {server}: {said}"));
        }
        let answer: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| format!("answered for {server} with something that is not JSON ({e})"))?;
        let field = |name: &str| answer.get(name).and_then(|v| v.as_str()).unwrap_or("");
        let answered_for = field("ServerURL");
        if !answered_for.is_empty()
            && !same_registry_key(&normalize_key(answered_for), &normalize_key(server))
        {
            return Err(format!(
                "answered for {} when asked for {server}: its credential is not used",
                untrusted::escape(answered_for, 256)
            ));
        }
        let (username, secret) = (field("Username"), field("Secret"));
        if username.is_empty() || secret.is_empty() {
            return Ok(None);
        }
        // docker-credential-helpers' convention for an identity token.
        if username == "<token>" {
            return Ok(Some(Credential::identity_token(secret)));
        }
        Ok(Some(Credential::new(username, secret)))
    }
}

/// Auth files are small; a bigger one is not read.
const MAX_AUTH_FILE: u64 = 1 << 20;

fn read_auth_file(path: &Path) -> Option<serde_json::Value> {
    let file = std::fs::File::open(path).ok()?;
    let mut text = String::new();
    file.take(MAX_AUTH_FILE).read_to_string(&mut text).ok()?;
    serde_json::from_str(&text).ok()
}

const HUB: [&str; 3] = ["docker.io", "index.docker.io", "registry-1.docker.io"];

fn from_auths(json: &serde_json::Value, registry: &str, repository: &str) -> Option<Credential> {
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
    if let Some(token) = entry.get("identitytoken").and_then(|t| t.as_str())
        && !token.is_empty()
    {
        return Some(Credential::identity_token(token));
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
        let user = |r: &str, repo: &str| sources.find(r, repo).unwrap().map(|c| c.username);
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
