//! The registry client (`sifr::registry`): hostile answers from a tiny
//! in-test HTTP server on 127.0.0.1 (a digest header that lies, a 10 MB
//! header, a registry slower than the timeout, a redirect loop), the auth
//! flows, index selection, and the TTL cache; then, end to end, against the
//! real `docker-registry` (gated like tests/all/e2e.rs).
//!
//! Every test asserts what happened (the error, the digest, the requests the
//! registry saw), never how long it took.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2::{Digest, Sha256};
use sifr::registry::{
    Credential, CredentialSources, RegistryClient, RegistryError, RegistryOptions, TtlCache,
};

pub(crate) const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// One request as the server saw it.
#[derive(Debug, Clone)]
pub(crate) struct Request {
    pub(crate) method: String,
    pub(crate) path: String,
    headers: Vec<(String, String)>,
    /// As long as its Content-Length said.
    pub(crate) body: Vec<u8>,
}

impl Request {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

type Handler = dyn Fn(&Request, &mut TcpStream) + Send + Sync;

/// A tiny HTTP/1.1 server on 127.0.0.1: each connection in a thread, one
/// request per connection (`Connection: close` is the handler's to send).
pub(crate) struct Server {
    port: u16,
    requests: Arc<Mutex<Vec<Request>>>,
    stop: Arc<AtomicBool>,
}

impl Server {
    pub(crate) fn start(
        handler: impl Fn(&Request, &mut TcpStream) + Send + Sync + 'static,
    ) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let handler: Arc<Handler> = Arc::new(handler);
        {
            let requests = requests.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(mut stream) = stream else { continue };
                    let handler = handler.clone();
                    let requests = requests.clone();
                    std::thread::spawn(move || {
                        let Some(request) = read_request(&stream) else {
                            return;
                        };
                        requests.lock().unwrap().push(request.clone());
                        handler(&request, &mut stream);
                    });
                }
            });
        }
        Self {
            port,
            requests,
            stop,
        }
    }

    pub(crate) fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub(crate) fn requests(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so that it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn read_request(stream: &TcpStream) -> Option<Request> {
    let mut reader = BufReader::new(stream.try_clone().ok()?);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_string();
    let path = parts.next()?.to_string();
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).ok()? == 0 {
            break;
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    let length = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse::<usize>().ok())
        .unwrap_or(0);
    let mut body = vec![0; length.min(1 << 20)];
    std::io::Read::read_exact(&mut reader, &mut body).ok()?;
    Some(Request {
        method,
        path,
        headers,
        body,
    })
}

/// Write a whole response; the connection closes after it.
pub(crate) fn respond(
    stream: &mut TcpStream,
    status: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    head: bool,
) {
    let mut text = format!("HTTP/1.1 {status}\r\nConnection: close\r\n");
    for (k, v) in headers {
        text.push_str(&format!("{k}: {v}\r\n"));
    }
    text.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    let _ = stream.write_all(text.as_bytes());
    if !head {
        let _ = stream.write_all(body);
    }
    let _ = stream.flush();
}

pub(crate) fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

pub(crate) fn manifest(marker: &str) -> Vec<u8> {
    serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": sha256(marker.as_bytes()),
            "size": marker.len(),
        },
        "layers": [],
    })
    .to_string()
    .into_bytes()
}

/// A client with a TTL cache in `dir`, and a short timeout.
fn client(dir: &std::path::Path, ttl: Duration) -> (RegistryClient, TtlCache) {
    let cache = TtlCache::new(dir.join("digests"), ttl);
    let client = RegistryClient::new(RegistryOptions {
        timeout: Duration::from_secs(2),
        cache: Some(cache.clone()),
        ..RegistryOptions::default()
    });
    (client, cache)
}

fn assert_names(error: &RegistryError, server: &Server, words: &[&str]) {
    let text = error.to_string();
    for word in [server.host().as_str(), "team/app", "v1"]
        .iter()
        .chain(words)
    {
        assert!(text.contains(word), "{word:?} not in: {text}");
    }
}

#[test]
fn a_digest_header_that_does_not_match_the_body_is_refused_and_not_cached() {
    let body = manifest("lying");
    let server = Server::start(move |req, stream| {
        if req.method == "HEAD" {
            // No HEAD: the client must GET, and check what it got.
            respond(stream, "405 Method Not Allowed", &[], b"", true);
        } else {
            let lie = format!("sha256:{}", "0".repeat(64));
            let headers = [
                ("Content-Type", OCI_MANIFEST),
                ("Docker-Content-Digest", lie.as_str()),
            ];
            respond(stream, "200 OK", &headers, &body, false);
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let (client, cache) = client(dir.path(), Duration::from_secs(600));
    let err = client
        .resolve_digest(&server.host(), "team/app", "v1", "amd64", true)
        .unwrap_err();
    assert!(
        matches!(err, RegistryError::DigestMismatch { .. }),
        "{err:?}"
    );
    assert_names(
        &err,
        &server,
        &["Docker-Content-Digest", "nothing was cached"],
    );
    assert_eq!(cache.entries(), 0);
}

#[test]
fn a_ten_megabyte_header_is_refused_and_not_cached() {
    let server = Server::start(|_, stream| {
        let mut head = String::from("HTTP/1.1 200 OK\r\nX-Filler: ");
        head.push_str(&"a".repeat(10 * 1024 * 1024));
        head.push_str("\r\nContent-Length: 0\r\n\r\n");
        let _ = stream.write_all(head.as_bytes());
    });
    let dir = tempfile::tempdir().unwrap();
    let (client, cache) = client(dir.path(), Duration::from_secs(600));
    let err = client
        .resolve_digest(&server.host(), "team/app", "v1", "amd64", true)
        .unwrap_err();
    assert!(
        matches!(err, RegistryError::HeadersTooLarge { .. }),
        "{err:?}"
    );
    assert_names(&err, &server, &["headers bigger than"]);
    assert_eq!(cache.entries(), 0);
}

#[test]
fn a_registry_slower_than_the_timeout_is_a_timeout_and_not_cached() {
    let release = Arc::new(AtomicBool::new(false));
    let held = release.clone();
    let server = Server::start(move |_, _stream| {
        // Hold the connection, say nothing, until the test is over.
        while !held.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let cache = TtlCache::new(dir.path().join("digests"), Duration::from_secs(600));
    let client = RegistryClient::new(RegistryOptions {
        timeout: Duration::from_millis(300),
        cache: Some(cache.clone()),
        ..RegistryOptions::default()
    });
    let err = client
        .resolve_digest(&server.host(), "team/app", "v1", "amd64", true)
        .unwrap_err();
    release.store(true, Ordering::SeqCst);
    assert!(matches!(err, RegistryError::Timeout { .. }), "{err:?}");
    assert_names(&err, &server, &["did not answer", "timeout"]);
    assert_eq!(cache.entries(), 0);
}

#[test]
fn a_redirect_loop_is_cut_and_not_cached() {
    let port = Arc::new(AtomicUsize::new(0));
    let own = port.clone();
    let server = Server::start(move |req, stream| {
        let location = format!(
            "http://127.0.0.1:{}{}",
            own.load(Ordering::SeqCst),
            req.path
        );
        respond(
            stream,
            "302 Found",
            &[("Location", location.as_str())],
            b"",
            req.method == "HEAD",
        );
    });
    port.store(server.port as usize, Ordering::SeqCst);
    let dir = tempfile::tempdir().unwrap();
    let (client, cache) = client(dir.path(), Duration::from_secs(600));
    let err = client
        .resolve_digest(&server.host(), "team/app", "v1", "amd64", true)
        .unwrap_err();
    assert!(
        matches!(err, RegistryError::TooManyRedirects { .. }),
        "{err:?}"
    );
    assert_names(&err, &server, &["redirect"]);
    assert_eq!(cache.entries(), 0);
    // It gave up: a bounded number of requests, not a loop.
    assert!(
        server.requests().len() <= 12,
        "{:?}",
        server.requests().len()
    );
}

#[test]
fn not_found_names_the_tag_and_says_to_check_the_name() {
    let server = Server::start(|req, stream| {
        let body =
            br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown \u001b[31m"}]}"#;
        respond(stream, "404 Not Found", &[], body, req.method == "HEAD");
    });
    let dir = tempfile::tempdir().unwrap();
    let (client, cache) = client(dir.path(), Duration::from_secs(600));
    let err = client
        .resolve_digest(&server.host(), "team/app", "v1", "amd64", true)
        .unwrap_err();
    assert_eq!(err.status(), Some(404), "{err:?}");
    assert_names(&err, &server, &["404", "check the name"]);
    assert!(!err.to_string().contains('\u{1b}'), "{err}");
    assert_eq!(cache.entries(), 0);
}

#[test]
fn a_verified_manifest_resolves_and_a_cached_answer_costs_no_request() {
    let body = manifest("good");
    let digest = sha256(&body);
    let served = body.clone();
    let header_digest = digest.clone();
    let server = Server::start(move |req, stream| {
        let headers = [
            ("Content-Type", OCI_MANIFEST),
            ("Docker-Content-Digest", header_digest.as_str()),
        ];
        respond(stream, "200 OK", &headers, &served, req.method == "HEAD");
    });
    let dir = tempfile::tempdir().unwrap();
    let (client, cache) = client(dir.path(), Duration::from_secs(600));
    let first = client
        .resolve_digest(&server.host(), "team/app", "v1", "amd64", true)
        .unwrap();
    assert_eq!(first.digest.as_str(), digest);
    assert_eq!(first.index_digest, None);
    assert_eq!(first.media_type, OCI_MANIFEST);
    assert!(!first.from_cache);
    let seen = server.requests();
    assert_eq!(seen.len(), 1, "one HEAD is enough: {seen:?}");
    assert_eq!(seen[0].method, "HEAD");
    assert_eq!(seen[0].path, "/v2/team/app/manifests/v1");
    let accept = seen[0].header("accept").unwrap();
    for media in [
        OCI_MANIFEST,
        OCI_INDEX,
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
    ] {
        assert!(accept.contains(media), "{accept}");
    }
    assert_eq!(cache.entries(), 1);

    let again = client
        .resolve_digest(&server.host(), "team/app", "v1", "amd64", true)
        .unwrap();
    assert!(again.from_cache);
    assert_eq!(again.digest, first.digest);
    assert_eq!(server.requests().len(), 1, "a cache hit made a request");

    // Another architecture is another key.
    let arm = client
        .resolve_digest(&server.host(), "team/app", "v1", "arm64", true)
        .unwrap();
    assert!(!arm.from_cache);
    assert_eq!(server.requests().len(), 2);

    // The cache directory is private.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&cache.dir).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700);
}

#[test]
fn an_index_resolves_to_the_manifest_for_the_architecture() {
    let amd = manifest("amd64");
    let arm = manifest("arm64");
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            {"mediaType": OCI_MANIFEST, "digest": sha256(&amd), "size": amd.len(),
             "platform": {"os": "linux", "architecture": "amd64"}},
            {"mediaType": OCI_MANIFEST, "digest": sha256(&arm), "size": arm.len(),
             "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
            {"mediaType": OCI_MANIFEST, "digest": sha256(b"att"), "size": 3,
             "platform": {"os": "unknown", "architecture": "unknown"}},
        ],
    })
    .to_string()
    .into_bytes();
    let index_digest = sha256(&index);
    let header_digest = index_digest.clone();
    let server = Server::start(move |req, stream| {
        let headers = [
            ("Content-Type", OCI_INDEX),
            ("Docker-Content-Digest", header_digest.as_str()),
        ];
        respond(stream, "200 OK", &headers, &index, req.method == "HEAD");
    });
    let client = RegistryClient::new(RegistryOptions::default());
    let host = server.host();
    let resolve = |arch: &str| client.resolve_digest(&host, "team/app", "v1", arch, true);
    let got = resolve("arm64").unwrap();
    assert_eq!(got.digest.as_str(), sha256(&arm));
    assert_eq!(got.index_digest.as_ref().unwrap().as_str(), index_digest);
    assert_eq!(resolve("x86_64").unwrap().digest.as_str(), sha256(&amd));
    assert_eq!(resolve("aarch64").unwrap().digest.as_str(), sha256(&arm));
    let err = resolve("s390x").unwrap_err();
    assert!(
        matches!(err, RegistryError::NoManifestForArch { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("linux/amd64"), "{err}");
}

/// A registry that wants a bearer token from its token service, which
/// wants basic credentials `alice:wonder`.
fn token_registry() -> Server {
    let body = manifest("private");
    let port = Arc::new(AtomicUsize::new(0));
    let own = port.clone();
    let server = Server::start(move |req, stream| {
        let head = req.method == "HEAD";
        if req.path.starts_with("/token") {
            let want = format!(
                "Basic {}",
                base64_encode(b"alice:wonder") // user:password
            );
            if req.header("authorization") == Some(want.as_str())
                && req.path.contains("scope=repository%3Ateam%2Fapp%3Apull")
            {
                respond(stream, "200 OK", &[], br#"{"token":"t0ken"}"#, head);
            } else {
                respond(stream, "401 Unauthorized", &[], b"", head);
            }
        } else if req.header("authorization") == Some("Bearer t0ken") {
            let digest = sha256(&body);
            let headers = [
                ("Content-Type", OCI_MANIFEST),
                ("Docker-Content-Digest", digest.as_str()),
            ];
            respond(stream, "200 OK", &headers, &body, head);
        } else {
            let challenge = format!(
                "Bearer realm=\"http://127.0.0.1:{}/token\",service=\"test\",scope=\"repository:team/app:pull\"",
                own.load(Ordering::SeqCst)
            );
            respond(
                stream,
                "401 Unauthorized",
                &[("WWW-Authenticate", challenge.as_str())],
                b"",
                head,
            );
        }
    });
    port.store(server.port as usize, Ordering::SeqCst);
    server
}

pub(crate) fn base64_encode(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[test]
fn bearer_tokens_are_fetched_with_credentials_from_a_docker_config() {
    let server = token_registry();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.json");
    std::fs::write(
        &config,
        serde_json::json!({"auths": {server.host(): {"auth": base64_encode(b"alice:wonder")}}})
            .to_string(),
    )
    .unwrap();
    let client = RegistryClient::new(RegistryOptions {
        credentials: CredentialSources::files([config]),
        ..RegistryOptions::default()
    });
    let got = client
        .resolve_digest(&server.host(), "team/app", "v1", "amd64", true)
        .unwrap();
    assert_eq!(got.digest.as_str(), sha256(&manifest("private")));
}

#[test]
fn without_credentials_a_private_repository_says_to_log_in() {
    let server = token_registry();
    let client = RegistryClient::new(RegistryOptions::default());
    let err = client
        .resolve_digest(&server.host(), "team/app", "v1", "amd64", true)
        .unwrap_err();
    assert!(
        matches!(
            err,
            RegistryError::Unauthorized {
                had_credentials: false,
                ..
            }
        ),
        "{err:?}"
    );
    assert_names(&err, &server, &["401", "log in"]);
}

#[test]
fn wrong_credentials_are_refused_and_never_shown() {
    let server = token_registry();
    let client = RegistryClient::new(RegistryOptions {
        credentials: CredentialSources::fixed(Credential::new("alice", "not-the-s3cret")),
        ..RegistryOptions::default()
    });
    let err = client
        .resolve_digest(&server.host(), "team/app", "v1", "amd64", true)
        .unwrap_err();
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
    let shown = format!("{err} {err:?}");
    assert!(!shown.contains("not-the-s3cret"), "{shown}");
}

/// A registry that serves `manifest(marker)` to `bob:builder` by basic
/// auth, and a basic challenge to anyone else; with the manifest's digest.
pub(crate) fn basic_auth_server(marker: &str) -> (Server, String) {
    let body = manifest(marker);
    let digest = sha256(&body);
    let header = digest.clone();
    let server = Server::start(move |req, stream| {
        let head = req.method == "HEAD";
        let want = format!("Basic {}", base64_encode(b"bob:builder"));
        if req.header("authorization") == Some(want.as_str()) {
            let headers = [
                ("Content-Type", OCI_MANIFEST),
                ("Docker-Content-Digest", header.as_str()),
            ];
            respond(stream, "200 OK", &headers, &body, head);
        } else {
            let challenge = [("WWW-Authenticate", "Basic realm=\"Registry\"")];
            respond(stream, "401 Unauthorized", &challenge, b"", head);
        }
    });
    (server, digest)
}

#[test]
fn basic_auth_answers_a_basic_challenge() {
    let (server, _) = basic_auth_server("basic");
    let dir = tempfile::tempdir().unwrap();
    let env = |name: &str| match name {
        "APPTAINER_DOCKER_USERNAME" => Some("bob".into()),
        "APPTAINER_DOCKER_PASSWORD" => Some("builder".into()),
        _ => None,
    };
    let client = RegistryClient::new(RegistryOptions {
        credentials: CredentialSources::standard(env, Some(dir.path().to_path_buf())),
        ..RegistryOptions::default()
    });
    let got = client
        .resolve_digest(&server.host(), "team/app", "v1", "amd64", true)
        .unwrap();
    assert_eq!(got.digest.as_str(), sha256(&manifest("basic")));
}

#[test]
fn https_is_the_default_and_plain_http_a_choice() {
    // A plain-HTTP server, asked over TLS, answers the handshake as a
    // plain-HTTP server does: a TLS error that says what to do.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let host = format!("127.0.0.1:{}", listener.local_addr().unwrap().port());
    std::thread::spawn(move || {
        if let Ok((mut stream, _)) = listener.accept() {
            let mut hello = [0u8; 512];
            let _ = std::io::Read::read(&mut stream, &mut hello);
            let _ = stream
                .write_all(b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n400 Bad Request");
        }
    });
    let client = RegistryClient::new(RegistryOptions::default());
    let err = client
        .resolve_digest(&host, "team/app", "v1", "amd64", false)
        .unwrap_err();
    assert!(
        matches!(
            err,
            RegistryError::Tls { .. } | RegistryError::Connect { .. }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("mark it insecure"), "{err}");
    assert!(err.to_string().contains(&host), "{err}");

    // Asked for plain HTTP, the client speaks it.
    let server = Server::start(|req, stream| {
        respond(stream, "404 Not Found", &[], b"", req.method == "HEAD");
    });
    let err = client
        .resolve_digest(&server.host(), "team/app", "v1", "amd64", true)
        .unwrap_err();
    assert!(matches!(err, RegistryError::NotFound { .. }), "{err:?}");
}

#[test]
fn a_shared_cache_directory_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let shared = dir.path().join("digests");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).unwrap();
    let client = RegistryClient::new(RegistryOptions {
        cache: Some(TtlCache::new(&shared, Duration::from_secs(60))),
        ..RegistryOptions::default()
    });
    let err = client
        .resolve_digest("127.0.0.1:1", "team/app", "v1", "amd64", true)
        .unwrap_err();
    assert!(matches!(err, RegistryError::CacheDir { .. }), "{err:?}");
    assert!(err.to_string().contains("0700"), "{err}");
}

#[test]
fn bad_names_make_no_request() {
    let client = RegistryClient::new(RegistryOptions::default());
    for (registry, repository, tag, arch) in [
        ("127.0.0.1:1", "Team/App", "v1", "amd64"),
        ("127.0.0.1:1", "team/app", "v1/../x", "amd64"),
        ("127.0.0.1:1", "team/app", "v1", "../amd64"),
        ("bad host", "team/app", "v1", "amd64"),
    ] {
        let err = client
            .resolve_digest(registry, repository, tag, arch, true)
            .unwrap_err();
        assert!(matches!(err, RegistryError::InvalidName { .. }), "{err:?}");
        assert!(err.to_string().contains("check the name"), "{err}");
    }
}

mod e2e {
    //! Against the real `docker-registry`, with images pushed by skopeo.

    use std::path::{Path, PathBuf};
    use std::process::{Child, Command};
    use std::time::Duration;

    use sifr::registry::{RegistryClient, RegistryOptions, TtlCache};

    fn run(cmd: &mut Command) -> Vec<u8> {
        let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
        assert!(
            out.status.success(),
            "{cmd:?} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    /// A plain-HTTP `docker-registry` on 127.0.0.1, killed on drop.
    struct Registry {
        child: Option<Child>,
        port: u16,
        dir: tempfile::TempDir,
    }

    impl Registry {
        fn start() -> Self {
            Self::start_with("")
        }

        /// With `extra` appended to the config (e.g. an `auth:` section),
        /// on a port the kernel chose ([`crate::common::start_registry`]).
        fn start_with(extra: &str) -> Self {
            let dir = tempfile::tempdir().unwrap();
            let config = format!(
                "storage:\n  filesystem:\n    rootdirectory: {}\n{extra}",
                dir.path().join("data").display()
            );
            let (child, port) = crate::common::start_registry(
                dir.path(),
                &config,
                "",
                &dir.path().join("registry.log"),
            );
            Self {
                child: Some(child),
                port,
                dir,
            }
        }

        fn host(&self) -> String {
            format!("127.0.0.1:{}", self.port)
        }

        /// Requests whose access-log line names `path`.
        fn requests(&self, path: &str) -> usize {
            std::fs::read_to_string(self.dir.path().join("registry.log"))
                .unwrap_or_default()
                .lines()
                .filter(|l| l.contains(path))
                .count()
        }

        fn push(&self, source: &str, reference: &str, all: bool) {
            self.push_as(source, reference, all, None);
        }

        fn push_as(&self, source: &str, reference: &str, all: bool, creds: Option<&str>) {
            let mut cmd = Command::new("skopeo");
            cmd.args([
                "copy",
                "--insecure-policy",
                "--quiet",
                "--dest-tls-verify=false",
            ]);
            if let Some(creds) = creds {
                cmd.arg(format!("--dest-creds={creds}"));
            }
            if all {
                cmd.arg("--all");
            }
            run(cmd
                .arg(source)
                .arg(format!("docker://{}/{reference}", self.host())));
        }

        fn digest(&self, reference: &str) -> String {
            self.digest_as(reference, None)
        }

        fn digest_as(&self, reference: &str, creds: Option<&str>) -> String {
            let mut cmd = Command::new("skopeo");
            cmd.arg("inspect");
            if let Some(creds) = creds {
                cmd.arg(format!("--creds={creds}"));
            }
            let out = run(cmd
                .args(["--tls-verify=false", "--format", "{{.Digest}}"])
                .arg(format!("docker://{}/{reference}", self.host())));
            String::from_utf8(out).unwrap().trim().to_string()
        }

        fn stop(&mut self) {
            if let Some(mut child) = self.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }

        /// Stop the registry, and keep its port refusing connections for as
        /// long as the returned socket lives (bound, never listening, as
        /// [`crate::common::RefusedPort`]): "the registry is gone" must not
        /// be some other test's server that was given the port meanwhile.
        /// `None` if another socket has the port already.
        fn stop_and_hold_port(&mut self) -> Option<rustix::fd::OwnedFd> {
            use rustix::net::{AddressFamily, SocketFlags, SocketType, bind, socket_with, sockopt};
            self.stop();
            let socket = socket_with(
                AddressFamily::INET,
                SocketType::STREAM,
                SocketFlags::CLOEXEC,
                None,
            )
            .ok()?;
            // The registry's closed connections may still be in TIME_WAIT
            // on the port: SO_REUSEADDR binds past those, never past a
            // socket that listens there.
            sockopt::set_socket_reuseaddr(&socket, true).ok()?;
            bind(
                &socket,
                &std::net::SocketAddr::from(([127, 0, 0, 1], self.port)),
            )
            .ok()?;
            Some(socket)
        }
    }

    impl Drop for Registry {
        fn drop(&mut self) {
            self.stop();
        }
    }

    /// An OCI layout with images tagged `one` and `two` (a file each),
    /// made with umoci.
    fn layout(dir: &Path) -> PathBuf {
        let layout = dir.join("layout");
        run(Command::new("umoci")
            .args(["init", "--layout"])
            .arg(&layout));
        for tag in ["one", "two"] {
            let image = format!("{}:{tag}", layout.display());
            run(Command::new("umoci").args(["new", "--image", &image]));
            let file = dir.join(format!("file-{tag}"));
            std::fs::write(&file, tag).unwrap();
            run(Command::new("umoci")
                .args(["insert", "--image", &image])
                .arg(&file)
                .arg(format!("/{tag}")));
        }
        layout
    }

    #[test]
    #[cfg_attr(
        not(sifr_e2e),
        ignore = "end-to-end: install docker-registry skopeo umoci, or set SIFR_E2E=1"
    )]
    fn a_moved_tag_is_seen_once_the_cached_answer_is_bypassed_and_a_hit_needs_no_registry() {
        let work = tempfile::tempdir().unwrap();
        let layout = layout(work.path());
        let mut registry = Registry::start();
        let source = |tag: &str| format!("oci:{}:{tag}", layout.display());
        registry.push(&source("one"), "team/app:v1", false);
        let first = registry.digest("team/app:v1");

        let cache = TtlCache::new(work.path().join("digests"), Duration::from_secs(3600));
        let cached = RegistryClient::new(RegistryOptions {
            cache: Some(cache.clone()),
            ..RegistryOptions::default()
        });
        let fresh = RegistryClient::new(RegistryOptions::default());
        let host = registry.host();
        let resolve = |client: &RegistryClient| {
            client
                .resolve_digest(&host, "team/app", "v1", "amd64", true)
                .unwrap()
        };

        let got = resolve(&cached);
        assert_eq!(got.digest.as_str(), first);
        assert!(!got.from_cache);
        assert_eq!(cache.entries(), 1);

        // The tag moves.
        registry.push(&source("two"), "team/app:v1", false);
        let second = registry.digest("team/app:v1");
        assert_ne!(first, second);

        // Within the TTL, the cached answer, and no request for it.
        let path = "/v2/team/app/manifests/v1";
        let before = registry.requests(path);
        let hit = resolve(&cached);
        assert!(hit.from_cache);
        assert_eq!(hit.digest.as_str(), first);
        assert_eq!(
            registry.requests(path),
            before,
            "a cache hit asked the registry"
        );

        // Without the cache: the new digest.
        let now = resolve(&fresh);
        assert!(!now.from_cache);
        assert_eq!(now.digest.as_str(), second);
        assert!(registry.requests(path) > before);

        // An expired entry is a miss: a zero TTL never answers from the cache.
        let expired = RegistryClient::new(RegistryOptions {
            cache: Some(TtlCache::new(cache.dir.clone(), Duration::ZERO)),
            ..RegistryOptions::default()
        });
        assert_eq!(resolve(&expired).digest.as_str(), second);

        // With the registry gone, the cached answer still holds.
        let held = registry.stop_and_hold_port();
        let offline = resolve(&cached);
        assert!(offline.from_cache);
        assert_eq!(offline.digest.as_str(), first);
        // And without the cache, a clear error naming the registry.
        if held.is_some() {
            let err = fresh
                .resolve_digest(&host, "team/app", "v1", "amd64", true)
                .unwrap_err();
            assert!(err.to_string().contains(&host), "{err}");
        } else {
            eprintln!("not asked without the cache: another socket took {host} once it was let go");
        }
    }

    /// A generous plugin deadline for the `sifr lock` runs: the policy's
    /// 100 ms default is not what these tests are about.
    const SANDBOX: &str = "[sandbox]\ntimeout-ms = 10000\n";

    /// `htpasswd -B` (Debian's apache2-utils) makes the bcrypt entries
    /// distribution wants. Not among the e2e tools build.rs looks for: skip
    /// without it, unless SIFR_E2E=1 says every tool must be there.
    fn htpasswd() -> Option<PathBuf> {
        match which::which("htpasswd") {
            Ok(path) => Some(path),
            Err(_) if std::env::var("SIFR_E2E").is_ok_and(|v| v == "1") => {
                panic!("the registry auth test needs htpasswd: apt-get install apache2-utils")
            }
            Err(_) => {
                eprintln!("skipped: no htpasswd (apt-get install apache2-utils)");
                None
            }
        }
    }

    /// A GnuPG home and a pass store of its own, under `home`; the
    /// gpg-agent it starts is stopped on drop.
    struct Keychain {
        home: PathBuf,
    }

    impl Keychain {
        fn new(home: &Path) -> Self {
            let gnupg = home.join(".gnupg");
            std::fs::create_dir_all(&gnupg).unwrap();
            std::fs::set_permissions(&gnupg, std::os::unix::fs::PermissionsExt::from_mode(0o700))
                .unwrap();
            let keychain = Self {
                home: home.to_path_buf(),
            };
            run(keychain.command("gpg").args([
                "--batch",
                "--pinentry-mode",
                "loopback",
                "--passphrase",
                "",
                "--quick-gen-key",
                "sifr test <sifr-test@example.invalid>",
                "default",
                "default",
                "never",
            ]));
            let keys =
                run(keychain
                    .command("gpg")
                    .args(["--batch", "--with-colons", "--list-keys"]));
            let keys = String::from_utf8(keys).unwrap();
            let fingerprint = keys
                .lines()
                .find_map(|l| l.strip_prefix("fpr:"))
                .map(|rest| rest.trim_matches(':').to_string())
                .expect("the key's fingerprint");
            run(keychain.command("pass").args(["init", &fingerprint]));
            keychain
        }

        /// `program` with this keychain's HOME and nothing else of ours.
        fn command(&self, program: &str) -> Command {
            let mut cmd = Command::new(program);
            cmd.env_clear()
                .env("PATH", "/usr/bin:/bin")
                .env("HOME", &self.home);
            cmd
        }
    }

    impl Drop for Keychain {
        fn drop(&mut self) {
            let _ = self.command("gpgconf").args(["--kill", "all"]).status();
        }
    }

    fn require_pass() -> bool {
        let have = ["docker-credential-pass", "pass", "gpg"]
            .iter()
            .all(|tool| which::which(tool).is_ok());
        if !have {
            assert!(
                !std::env::var("SIFR_E2E").is_ok_and(|v| v == "1"),
                "the credential helper test needs docker-credential-pass, pass and gpg: \
                 apt-get install golang-docker-credential-helpers pass gnupg"
            );
            eprintln!("skipped: no docker-credential-pass, pass or gpg");
        }
        have
    }

    /// The real `docker-credential-pass` (Debian's
    /// golang-docker-credential-helpers), with a pass store under a GPG key
    /// the test makes, gives the login for a real htpasswd registry, named
    /// by `credsStore` or by `credHelpers`; and the secret it gives is never
    /// in an error.
    /// A registry under `work` that wants `user:password` (an htpasswd
    /// file), holding `image` (`repository:tag`) pushed as that user; with
    /// the htpasswd file and the image's digest.
    fn protected_registry(
        htpasswd: &Path,
        work: &Path,
        user: &str,
        password: &str,
        image: &str,
    ) -> (Registry, PathBuf, String) {
        let users = work.join("htpasswd");
        run(Command::new(htpasswd)
            .args(["-B", "-b", "-c"])
            .arg(&users)
            .args([user, password]));
        let registry = Registry::start_with(&format!(
            "auth:\n  htpasswd:\n    realm: sifr-test\n    path: {}\n",
            users.display()
        ));
        let layout = layout(work);
        let creds = format!("{user}:{password}");
        registry.push_as(
            &format!("oci:{}:one", layout.display()),
            image,
            false,
            Some(&creds),
        );
        let digest = registry.digest_as(image, Some(&creds));
        (registry, users, digest)
    }

    #[test]
    #[cfg_attr(
        not(sifr_e2e),
        ignore = "end-to-end: install docker-registry skopeo umoci apache2-utils golang-docker-credential-helpers pass, or set SIFR_E2E=1"
    )]
    fn a_real_credential_helper_gives_the_login_for_a_protected_registry() {
        let (Some(htpasswd), true) = (htpasswd(), require_pass()) else {
            return;
        };
        let work = tempfile::tempdir().unwrap();
        let (registry, users, expected) = protected_registry(
            &htpasswd,
            work.path(),
            "carol",
            "in-the-keychain",
            "team/kept:v1",
        );

        // As `docker login` leaves it with a credential store: the secret
        // in pass, the config naming the helper.
        let home = work.path().join("home");
        let keychain = Keychain::new(&home);
        let host = registry.host();
        let mut store = keychain
            .command("docker-credential-pass")
            .arg("store")
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(
            store.stdin.as_mut().unwrap(),
            serde_json::json!({"ServerURL": host, "Username": "carol", "Secret": "in-the-keychain"})
                .to_string()
                .as_bytes(),
        )
        .unwrap();
        drop(store.stdin.take());
        assert!(
            store.wait().unwrap().success(),
            "docker-credential-pass store"
        );

        let docker = work.path().join("docker");
        std::fs::create_dir(&docker).unwrap();
        // A client of a user whose docker config is `docker`'s.
        let client = || {
            let env = |name: &str| match name {
                "DOCKER_CONFIG" => Some(docker.clone().into_os_string()),
                "HOME" => Some(home.clone().into_os_string()),
                "PATH" => Some("/usr/bin:/bin".into()),
                _ => None,
            };
            RegistryClient::new(RegistryOptions {
                credentials: sifr::registry::CredentialSources::standard(env, Some(home.clone())),
                ..RegistryOptions::default()
            })
        };
        for config in [
            serde_json::json!({"auths": {host.clone(): {}}, "credsStore": "pass"}),
            serde_json::json!({"credHelpers": {host.clone(): "pass"}}),
        ] {
            std::fs::write(docker.join("config.json"), config.to_string()).unwrap();
            let got = client()
                .resolve_digest(&host, "team/kept", "v1", "amd64", true)
                .unwrap_or_else(|e| panic!("{config}: {e}"));
            assert_eq!(got.digest.as_str(), expected, "{config}");
        }

        // A registry the store has nothing for: not found, so no
        // credential, and the registry's own refusal.
        let other = Registry::start_with(&format!(
            "auth:\n  htpasswd:\n    realm: sifr-test\n    path: {}\n",
            users.display()
        ));
        std::fs::write(
            docker.join("config.json"),
            serde_json::json!({"credsStore": "pass"}).to_string(),
        )
        .unwrap();
        let err = client()
            .resolve_digest(&other.host(), "team/kept", "v1", "amd64", true)
            .unwrap_err();
        assert!(
            matches!(
                err,
                sifr::registry::RegistryError::Unauthorized {
                    had_credentials: false,
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(!format!("{err} {err:?}").contains("in-the-keychain"));
    }

    #[test]
    #[cfg_attr(
        not(sifr_e2e),
        ignore = "end-to-end: install docker-registry skopeo umoci apache2-utils, or set SIFR_E2E=1"
    )]
    fn htpasswd_basic_auth_takes_credentials_from_a_docker_config() {
        let Some(htpasswd) = htpasswd() else { return };
        let work = tempfile::tempdir().unwrap();
        let (registry, _, expected) = protected_registry(
            &htpasswd,
            work.path(),
            "alice",
            "wonder-land",
            "team/private:v1",
        );

        // A docker config.json, as `docker login` writes it.
        let docker = work.path().join("docker");
        std::fs::create_dir(&docker).unwrap();
        std::fs::write(
            docker.join("config.json"),
            serde_json::json!({"auths": {registry.host(): {
                "auth": super::base64_encode(b"alice:wonder-land")
            }}})
            .to_string(),
        )
        .unwrap();
        let home = work.path().join("home");
        let env = |name: &str| (name == "DOCKER_CONFIG").then(|| docker.clone().into_os_string());
        let with = RegistryClient::new(RegistryOptions {
            credentials: sifr::registry::CredentialSources::standard(env, Some(home.clone())),
            ..RegistryOptions::default()
        });
        let host = registry.host();
        let got = with
            .resolve_digest(&host, "team/private", "v1", "amd64", true)
            .unwrap();
        assert_eq!(got.digest.as_str(), expected);

        // Without credentials: the documented error.
        let without = RegistryClient::new(RegistryOptions {
            credentials: sifr::registry::CredentialSources::standard(|_| None, Some(home.clone())),
            ..RegistryOptions::default()
        });
        let err = without
            .resolve_digest(&host, "team/private", "v1", "amd64", true)
            .unwrap_err();
        assert!(
            matches!(
                err,
                sifr::registry::RegistryError::Unauthorized {
                    status: 401,
                    had_credentials: false,
                    ..
                }
            ),
            "{err:?}"
        );
        let text = err.to_string();
        for word in [host.as_str(), "team/private", "v1", "401", "log in"] {
            assert!(text.contains(word), "{word:?} not in: {text}");
        }
        assert!(!format!("{err:?}").contains("wonder-land"));

        // The same through the command line: `sifr lock` finds the login
        // where `docker login` left it ($DOCKER_CONFIG), and without it says
        // to log in. registries.conf marks the registry insecure, as a site
        // would, which is what allows plain HTTP.
        let config = work.path().join("config.toml");
        std::fs::write(
            &config,
            format!(
                "{SANDBOX}[[plugin]]\nname = \"site\"\nbuiltin = \"registries\"\n[plugin.settings]\n\
                 conf = '''\n[[registry]]\nlocation = \"{host}\"\ninsecure = true\n'''\n\
                 [[plugin]]\nname = \"default\"\nbuiltin = \"default\"\n"
            ),
        )
        .unwrap();
        let image = format!("{host}/team/private:v1");
        let lock = |docker_config: Option<&std::path::Path>| {
            // Hermetic: HOME is `home`, and no DOCKER_CONFIG,
            // REGISTRY_AUTH_FILE or APPTAINER_DOCKER_* of the caller's.
            let mut cmd = crate::common::sifr_command(work.path());
            cmd.args(["--config", config.to_str().unwrap(), "lock", &image])
                .current_dir(work.path())
                .env("SIFR_CACHE_DIR", work.path().join("cache/sifr"));
            if let Some(dir) = docker_config {
                cmd.env("DOCKER_CONFIG", dir);
            }
            cmd.output().unwrap()
        };
        let out = lock(None);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(8), "{err}");
        assert!(err.contains("log in") && err.contains("401"), "{err}");
        let out = lock(Some(&docker));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{err}");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains(&format!("locked {expected}")),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert!(!err.contains("wonder-land"));
    }

    #[test]
    #[cfg_attr(
        not(sifr_e2e),
        ignore = "end-to-end: install docker-registry skopeo umoci, or set SIFR_E2E=1"
    )]
    fn a_multi_arch_index_gives_the_manifest_for_each_architecture() {
        let work = tempfile::tempdir().unwrap();
        let layout = layout(work.path());
        // Make `one` an amd64 image and `two` an arm64/v8 one.
        for (tag, arch) in [("one", "amd64"), ("two", "arm64")] {
            run(Command::new("umoci").args([
                "config",
                "--image",
                &format!("{}:{tag}", layout.display()),
                "--os",
                "linux",
                "--architecture",
                arch,
            ]));
        }
        // An index of the two, added to the layout as `multi`.
        let index_path = layout.join("index.json");
        let mut top: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&index_path).unwrap()).unwrap();
        let by_tag = |tag: &str| {
            top["manifests"]
                .as_array()
                .unwrap()
                .iter()
                .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
                .unwrap()
                .clone()
        };
        let entry = |tag: &str, arch: &str, variant: Option<&str>| {
            let mut d = by_tag(tag);
            d.as_object_mut().unwrap().remove("annotations");
            d["platform"] = serde_json::json!({"os": "linux", "architecture": arch});
            if let Some(v) = variant {
                d["platform"]["variant"] = v.into();
            }
            d
        };
        let (amd, arm) = (
            entry("one", "amd64", None),
            entry("two", "arm64", Some("v8")),
        );
        let index = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": super::OCI_INDEX,
            "manifests": [amd, arm],
        })
        .to_string();
        let index_digest = super::sha256(index.as_bytes());
        let hex = index_digest.strip_prefix("sha256:").unwrap();
        std::fs::write(layout.join("blobs/sha256").join(hex), &index).unwrap();
        top["manifests"]
            .as_array_mut()
            .unwrap()
            .push(serde_json::json!({
                "mediaType": super::OCI_INDEX,
                "digest": index_digest,
                "size": index.len(),
                "annotations": {"org.opencontainers.image.ref.name": "multi"},
            }));
        std::fs::write(&index_path, top.to_string()).unwrap();

        let registry = Registry::start();
        registry.push(
            &format!("oci:{}:multi", layout.display()),
            "team/multi:v1",
            true,
        );
        let client = RegistryClient::new(RegistryOptions::default());
        let host = registry.host();
        let resolve = |arch: &str| {
            client
                .resolve_digest(&host, "team/multi", "v1", arch, true)
                .unwrap()
        };
        let on_arm = resolve("arm64");
        let on_amd = resolve("amd64");
        assert_eq!(on_arm.digest.as_str(), arm["digest"].as_str().unwrap());
        assert_eq!(on_amd.digest.as_str(), amd["digest"].as_str().unwrap());
        assert_ne!(on_arm.digest, on_amd.digest);
        // The index went up as it was (skopeo copy --all keeps it).
        assert_eq!(on_arm.index_digest.as_ref().unwrap().as_str(), index_digest);
        assert_eq!(on_arm.index_digest, on_amd.index_digest);

        // `sifr lock --arch` records each architecture's manifest, and the
        // one index both came from.
        let config = work.path().join("config.toml");
        std::fs::write(
            &config,
            format!(
                "{SANDBOX}[[plugin]]\nname = \"site\"\nbuiltin = \"registries\"\n[plugin.settings]\n\
                 conf = '''\n[[registry]]\nlocation = \"{host}\"\ninsecure = true\n'''\n"
            ),
        )
        .unwrap();
        let image = format!("{host}/team/multi:v1");
        for arch in ["arm64", "amd64"] {
            let out = crate::common::sifr_command(work.path())
                .args(["--config", config.to_str().unwrap()])
                .args(["lock", "--arch", arch, &image])
                .current_dir(work.path())
                .env("SIFR_CACHE_DIR", work.path().join("cache/sifr"))
                .output()
                .unwrap();
            assert_eq!(
                out.status.code(),
                Some(0),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let lock = sifr::lock::LockFile::load(&work.path().join("sifr.lock")).unwrap();
        for (arch, expected) in [("amd64", &amd), ("arm64", &arm)] {
            let entry = lock.get(&image, arch).expect("locked for each arch");
            assert_eq!(
                entry.manifest_digest.as_str(),
                expected["digest"].as_str().unwrap()
            );
            assert_eq!(
                entry.index_digest.as_ref().map(|d| d.as_str()),
                Some(index_digest.as_str())
            );
        }
    }
}
