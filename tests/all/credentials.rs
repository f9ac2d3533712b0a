//! Credential helpers (`credHelpers`, `credsStore`), as the registry client
//! runs them for a registry that wants a login: the helper's answer is
//! used, and a hostile or broken helper (one that hangs, floods, fails,
//! or answers for another registry) is an error that names it and never
//! shows a secret. An identity token, from a helper or a file, is traded at
//! the token service by OAuth2's refresh_token grant. The real helper
//! (`docker-credential-pass` against a real htpasswd registry) is in
//! `registry_client::e2e`.

use crate::registry_client::{
    OCI_MANIFEST, Server, base64_encode, basic_auth_server, manifest, respond, sha256,
};

use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sifr::registry::{CredentialSources, RegistryClient, RegistryError, RegistryOptions};

/// A registry that wants `bob:builder` by basic auth.
fn protected() -> (Server, String) {
    basic_auth_server("helper")
}

/// A scratch home with a `docker-credential-NAME` for each script given,
/// and a docker config.json of `config`.
struct Home {
    dir: tempfile::TempDir,
}

impl Home {
    fn new(helpers: &[(&str, &str)], config: serde_json::Value) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        for (name, script) in helpers {
            let path = bin.join(format!("docker-credential-{name}"));
            std::fs::write(&path, format!("#!/bin/sh\n{script}\n")).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        std::fs::create_dir(dir.path().join("docker")).unwrap();
        std::fs::write(dir.path().join("docker/config.json"), config.to_string()).unwrap();
        Self { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The environment the program had: its helpers' directory first on
    /// PATH, DOCKER_CONFIG, and a secret of sifr's own that must not reach
    /// a helper.
    fn client(&self, timeout: Duration) -> RegistryClient {
        let path = std::env::join_paths(
            std::iter::once(self.path().join("bin")).chain(["/usr/bin".into(), "/bin".into()]),
        )
        .unwrap();
        let docker: OsString = self.path().join("docker").into();
        let home: OsString = self.path().into();
        let env = move |name: &str| -> Option<OsString> {
            match name {
                "PATH" => Some(path.clone()),
                "DOCKER_CONFIG" => Some(docker.clone()),
                "HOME" => Some(home.clone()),
                "SIFR_SECRET" | "LD_PRELOAD" => Some("must-not-leak".into()),
                _ => None,
            }
        };
        let mut credentials = CredentialSources::standard(env, Some(self.path().to_path_buf()));
        credentials.helper_timeout = timeout;
        RegistryClient::new(RegistryOptions {
            credentials,
            timeout: Duration::from_secs(30),
            ..RegistryOptions::default()
        })
    }
}

fn resolve(home: &Home, server: &Server, timeout: Duration) -> Result<String, RegistryError> {
    home.client(timeout)
        .resolve_digest(&server.host(), "team/app", "v1", "amd64", true)
        .map(|r| r.digest.to_string())
}

/// The helper's answer for this server, as docker-credential-helpers prints it.
fn answer(server: &Server, user: &str, secret: &str) -> String {
    format!(
        "cat >/dev/null; printf '%s' '{}'",
        serde_json::json!({"ServerURL": server.host(), "Username": user, "Secret": secret})
    )
}

#[test]
fn a_cred_helpers_entry_for_the_registry_gives_the_login() {
    let (server, digest) = protected();
    let home = Home::new(
        &[("site", &answer(&server, "bob", "builder"))],
        serde_json::json!({"credHelpers": {server.host(): "site"}}),
    );
    assert_eq!(
        resolve(&home, &server, Duration::from_secs(10)).unwrap(),
        digest
    );
}

#[test]
fn creds_store_is_asked_for_every_registry_and_not_found_falls_back_to_auths() {
    let (server, digest) = protected();
    let home = Home::new(
        &[("store", &answer(&server, "bob", "builder"))],
        serde_json::json!({"credsStore": "store"}),
    );
    assert_eq!(
        resolve(&home, &server, Duration::from_secs(10)).unwrap(),
        digest
    );

    // "credentials not found" is an answer: none; the file's auths then.
    let home = Home::new(
        &[(
            "empty",
            "cat >/dev/null; echo 'credentials not found in native keychain'; exit 1",
        )],
        serde_json::json!({
            "credsStore": "empty",
            "auths": {server.host(): {"auth": base64_encode(b"bob:builder")}}
        }),
    );
    assert_eq!(
        resolve(&home, &server, Duration::from_secs(10)).unwrap(),
        digest
    );
}

#[test]
fn a_helper_runs_with_only_the_environment_a_keychain_needs_and_the_server_on_stdin() {
    let (server, digest) = protected();
    let home = Home::new(&[], serde_json::json!({"credsStore": "spy"}));
    let seen = home.path().join("seen");
    let script = format!(
        "cat > '{0}/stdin'; env > '{0}/env'; echo \"$@\" > '{0}/args'; {1}",
        seen.display(),
        answer(&server, "bob", "builder").replace("cat >/dev/null; ", "")
    );
    std::fs::create_dir(&seen).unwrap();
    let helper = home.path().join("bin/docker-credential-spy");
    std::fs::write(&helper, format!("#!/bin/sh\n{script}\n")).unwrap();
    std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o755)).unwrap();
    assert_eq!(
        resolve(&home, &server, Duration::from_secs(10)).unwrap(),
        digest
    );

    let read = |name: &str| std::fs::read_to_string(seen.join(name)).unwrap();
    assert_eq!(read("stdin"), server.host());
    assert_eq!(read("args").trim(), "get");
    let mut names: Vec<String> = read("env")
        .lines()
        .filter_map(|l| l.split_once('=').map(|(k, _)| k.to_string()))
        // What sh itself sets.
        .filter(|k| !["PWD", "SHLVL", "_", "OLDPWD"].contains(&k.as_str()))
        .collect();
    names.sort();
    assert_eq!(names, ["HOME", "PATH"], "{}", read("env"));
}

/// The pid a helper script wrote, once it is there.
fn pid_in(file: &PathBuf) -> i32 {
    let started = std::time::Instant::now();
    loop {
        if let Ok(text) = std::fs::read_to_string(file)
            && let Ok(pid) = text.trim().parse()
        {
            return pid;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no pid in {}",
            file.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_helper_that_hangs_is_killed_with_its_children_at_the_timeout() {
    let (server, _) = protected();
    let home = Home::new(&[], serde_json::json!({"credsStore": "hang"}));
    let pid_file = home.path().join("child.pid");
    let helper = home.path().join("bin/docker-credential-hang");
    std::fs::write(
        &helper,
        format!(
            "#!/bin/sh\nsleep 600 &\necho $! > '{}'\nwait\n",
            pid_file.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let err = resolve(&home, &server, Duration::from_millis(500)).unwrap_err();
    assert!(matches!(err, RegistryError::Credentials { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("docker-credential-hang")
            && text.contains("gave no answer within 500ms")
            && text.contains("get"),
        "{text}"
    );
    // Its child went with it: the whole process group was killed.
    let child = pid_in(&pid_file);
    let started = std::time::Instant::now();
    while std::fs::read_to_string(format!("/proc/{child}/stat"))
        .is_ok_and(|stat| !stat.contains(") Z "))
    {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the helper's child {child} still runs"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_broken_helper_is_an_error_naming_it_with_its_words_escaped() {
    let (server, _) = protected();
    let cases: [(&str, String, &[&str]); 5] = [
        (
            "leaky",
            format!("{}; exit 1", answer(&server, "bob", "stolen-secret")),
            &[
                "failed (exit status: 1)",
                "its output holds a secret, and is not shown",
            ],
        ),
        (
            "flood",
            "cat >/dev/null; head -c 100000000 /dev/zero".to_string(),
            &["printed more than 65536 bytes"],
        ),
        (
            "fail",
            "cat >/dev/null; printf 'backend \\033[31mon fire' >&2; exit 3".to_string(),
            &["failed (exit status: 3)", "backend \\u{1b}[31mon fire"],
        ),
        (
            "other",
            format!(
                "cat >/dev/null; printf '%s' '{}'",
                serde_json::json!({"ServerURL": "evil.example", "Username": "bob", "Secret": "stolen-secret"})
            ),
            &[
                "answered for evil.example when asked for",
                "its credential is not used",
            ],
        ),
        (
            "garbage",
            "cat >/dev/null; echo 'not json'".to_string(),
            &["something that is not JSON"],
        ),
    ];
    for (name, script, expected) in cases {
        let home = Home::new(&[(name, &script)], serde_json::json!({"credsStore": name}));
        let err = resolve(&home, &server, Duration::from_secs(30)).unwrap_err();
        assert!(
            matches!(err, RegistryError::Credentials { .. }),
            "{name}: {err:?}"
        );
        let text = err.to_string();
        assert!(
            text.contains(&format!("docker-credential-{name}"))
                && text.contains(&home.path().join("docker/config.json").display().to_string()),
            "{name}: {text}"
        );
        for part in expected {
            assert!(text.contains(part), "{name}: {part:?} not in {text}");
        }
        let shown = format!("{text} {err:?}");
        for secret in ["stolen-secret", "builder"] {
            assert!(!shown.contains(secret), "{name}: {secret} shown: {shown}");
        }
    }
}

#[test]
fn a_helper_that_is_not_on_path_or_not_a_name_is_an_error_saying_so() {
    let (server, _) = protected();
    for (name, expected) in [
        ("absent", "is not on PATH"),
        ("../../bin/sh", "is not a helper name"),
    ] {
        let home = Home::new(&[], serde_json::json!({"credsStore": name}));
        let text = resolve(&home, &server, Duration::from_secs(10))
            .unwrap_err()
            .to_string();
        assert!(text.contains(expected), "{name}: {text}");
    }
}

/// A registry whose token service speaks OAuth2: `refresh_token` posted as a
/// form (distribution's token spec) is traded for an access token, which
/// the manifest request then carries.
fn oauth2() -> (Server, String) {
    let body = manifest("oauth2");
    let digest = sha256(&body);
    let header = digest.clone();
    let port = std::sync::Arc::new(std::sync::atomic::AtomicU16::new(0));
    let realm_port = port.clone();
    let server = Server::start(move |req, stream| {
        let head = req.method == "HEAD";
        if req.path.starts_with("/token") {
            let form = String::from_utf8_lossy(&req.body).into_owned();
            let granted = req.method == "POST"
                && form.contains("grant_type=refresh_token")
                && form.contains("refresh_token=the-refresh-token")
                && form.contains("service=oauth.example")
                && form.contains("scope=repository%3Ateam%2Fapp%3Apull");
            if granted {
                let answer = br#"{"access_token":"the-access-token","expires_in":300}"#;
                respond(
                    stream,
                    "200 OK",
                    &[("Content-Type", "application/json")],
                    answer,
                    false,
                );
            } else {
                respond(
                    stream,
                    "400 Bad Request",
                    &[],
                    br#"{"error":"invalid_grant"}"#,
                    false,
                );
            }
        } else if req.header("authorization") == Some("Bearer the-access-token") {
            let headers = [
                ("Content-Type", OCI_MANIFEST),
                ("Docker-Content-Digest", header.as_str()),
            ];
            respond(stream, "200 OK", &headers, &body, head);
        } else {
            let realm = format!(
                "Bearer realm=\"http://127.0.0.1:{}/token\",service=\"oauth.example\",scope=\"repository:team/app:pull\"",
                realm_port.load(std::sync::atomic::Ordering::SeqCst)
            );
            respond(
                stream,
                "401 Unauthorized",
                &[("WWW-Authenticate", realm.as_str())],
                b"",
                head,
            );
        }
    });
    port.store(
        server.host().rsplit_once(':').unwrap().1.parse().unwrap(),
        std::sync::atomic::Ordering::SeqCst,
    );
    (server, digest)
}

#[test]
fn an_identity_token_is_traded_at_the_token_service_and_never_sent_as_a_password() {
    let (server, digest) = oauth2();
    // From a helper (user <token>) and from a file's identitytoken.
    let helper = Home::new(
        &[("oauth", &answer(&server, "<token>", "the-refresh-token"))],
        serde_json::json!({"credsStore": "oauth"}),
    );
    let file = Home::new(
        &[],
        serde_json::json!({"auths": {server.host(): {"identitytoken": "the-refresh-token"}}}),
    );
    for home in [&helper, &file] {
        assert_eq!(
            resolve(home, &server, Duration::from_secs(10)).unwrap(),
            digest
        );
    }
    for request in server.requests() {
        let basic = request
            .header("authorization")
            .is_some_and(|a| a.starts_with("Basic"));
        assert!(!basic, "a refresh token went as a password: {request:?}");
    }
    // A refresh token the service refuses is the login's fault, and says so.
    let stale = Home::new(
        &[],
        serde_json::json!({"auths": {server.host(): {"identitytoken": "revoked"}}}),
    );
    let err = resolve(&stale, &server, Duration::from_secs(10)).unwrap_err();
    assert!(
        matches!(
            err,
            RegistryError::Unauthorized {
                had_credentials: true,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(!format!("{err} {err:?}").contains("revoked"));
}
