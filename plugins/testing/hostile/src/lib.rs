//! TEST ONLY. A deliberately hostile or buggy policy plugin.
//!
//! Its misbehaviour is chosen by the `mode` setting, so that one component
//! covers every attack the sandbox must contain. sifr's tests load it and
//! check that each mode ends in a clear error within a bounded time, and that
//! the host keeps working afterwards. Never deploy it.

use std::cell::RefCell;

use serde::Deserialize;
use sifr_plugin::{Context, Decision, Guest, ImageRef, Level, PullRef, Source};

#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
struct Settings {
    mode: String,
    #[serde(default)]
    bytes: Option<usize>,
    #[serde(default)]
    millis: Option<u64>,
    /// `resolve*` modes: how many look-ups, and what to ask (default: the
    /// image's own registry, repository and tag).
    #[serde(default)]
    times: Option<usize>,
    #[serde(default)]
    registry: Option<String>,
    #[serde(default)]
    repository: Option<String>,
    #[serde(default)]
    tag: Option<String>,
}

thread_local! {
    static MODE: RefCell<Option<Settings>> = const { RefCell::new(None) };
    /// `remember`: when `configure` ran (wall clock, ns), and how many
    /// decisions this instance has made.
    static CONFIGURED_AT: RefCell<u128> = const { RefCell::new(0) };
    static DECISIONS: RefCell<u64> = const { RefCell::new(0) };
    /// `keep-stream`: a WASI stream opened in `configure` and kept.
    static STREAM: RefCell<Option<wasip2::io::streams::OutputStream>> = const { RefCell::new(None) };
    /// `configure-resolve`: what `resolve-digest` answered in `configure`.
    static CONFIGURE_ANSWER: RefCell<String> = const { RefCell::new(String::new()) };
}

/// `resolve-digest` for `image` (or what the settings name), as text:
/// `ok <digest>` or `error <message>`.
fn look_up(settings: &Settings, image: &ImageRef, arch: &str) -> String {
    let registry = settings
        .registry
        .clone()
        .unwrap_or_else(|| image.registry.clone());
    let repository = settings
        .repository
        .clone()
        .unwrap_or_else(|| image.repository.clone());
    let tag = settings
        .tag
        .clone()
        .or_else(|| image.tag.clone())
        .unwrap_or_else(|| "latest".to_string());
    match sifr_plugin::resolve_digest(&registry, &repository, &tag, arch) {
        Ok(found) => format!("ok {}", found.manifest_digest),
        Err(error) => format!("error {error}"),
    }
}

struct Hostile;

/// Longer than any deadline a test sets.
const HOUR: std::time::Duration = std::time::Duration::from_secs(3600);

/// ESC sequences (clear screen, colour, OSC title), a bare CR, and the
/// bidi controls that make text read backwards.
const EVIL: &str =
    "\u{1b}[2J\u{1b}[31mred\u{1b}]0;title\u{7}\rover\u{202e}gnp.exe\u{2066}x\u{2069}\u{200f}";

/// Try every door WASI has, and log what happened behind each.
fn probe() {
    let say = |what: &str| sifr_plugin::log(Level::Info, &format!("probe {what}"));
    let vars: Vec<String> = std::env::vars().map(|(k, v)| format!("{k}={v}")).collect();
    say(&format!("env: {} variables {vars:?}", vars.len()));
    let args: Vec<String> = std::env::args().collect();
    say(&format!("args: {} {args:?}", args.len()));
    for path in ["/etc/passwd", "/proc/self/environ", ".", "/"] {
        match std::fs::read(path) {
            Ok(bytes) => say(&format!("read {path}: OPENED {} bytes", bytes.len())),
            Err(e) => say(&format!("read {path}: denied ({e})")),
        }
        match std::fs::read_dir(path) {
            Ok(entries) => say(&format!("list {path}: OPENED {} entries", entries.count())),
            Err(e) => say(&format!("list {path}: denied ({e})")),
        }
    }
    match std::fs::write("planted", b"x") {
        Ok(()) => say("write planted: OPENED"),
        Err(e) => say(&format!("write planted: denied ({e})")),
    }
    match std::env::current_dir() {
        Ok(dir) => say(&format!("cwd: OPENED {}", dir.display())),
        Err(e) => say(&format!("cwd: denied ({e})")),
    }
    match std::net::TcpStream::connect("127.0.0.1:22") {
        Ok(_) => say("tcp connect: OPENED"),
        Err(e) => say(&format!("tcp connect: denied ({e})")),
    }
    match std::net::TcpListener::bind("127.0.0.1:0") {
        Ok(_) => say("tcp listen: OPENED"),
        Err(e) => say(&format!("tcp listen: denied ({e})")),
    }
    match std::net::UdpSocket::bind("127.0.0.1:0") {
        Ok(_) => say("udp bind: OPENED"),
        Err(e) => say(&format!("udp bind: denied ({e})")),
    }
    use std::net::ToSocketAddrs;
    match "localhost:80".to_socket_addrs() {
        Ok(addrs) => say(&format!("dns: OPENED {}", addrs.count())),
        Err(e) => say(&format!("dns: denied ({e})")),
    }
    let mut line = String::new();
    match std::io::stdin().read_line(&mut line) {
        Ok(n) if n > 0 => say(&format!("stdin: OPENED {n} bytes")),
        Ok(_) => say("stdin: denied (end of file)"),
        Err(e) => say(&format!("stdin: denied ({e})")),
    }
}

fn source(registry: &str, repository: &str, reference: PullRef) -> Source {
    Source {
        registry: registry.to_string(),
        repository: repository.to_string(),
        reference,
        plain_http: false,
        note: "hostile".to_string(),
    }
}

impl Guest for Hostile {
    fn configure(settings: String) -> Result<(), String> {
        let settings: Settings =
            serde_json::from_str(&settings).map_err(|e| format!("invalid settings: {e}"))?;
        match settings.mode.as_str() {
            "configure-loop" => loop {
                std::hint::black_box(0);
            },
            "configure-reject" => return Err("this plugin rejects every setting".to_string()),
            "configure-reject-escapes" => return Err(format!("rejected {EVIL}")),
            // Blocks in a WASI clock wait, where epoch interruption cannot
            // reach: std's sleep is `subscribe-duration` + `pollable.block`.
            "configure-sleep" => std::thread::sleep(HOUR),
            // Asks for a digest where the host must refuse it.
            "configure-resolve" => {
                let image = ImageRef {
                    registry: "docker.io".to_string(),
                    repository: "library/ubuntu".to_string(),
                    tag: Some("22.04".to_string()),
                    manifest_digest: None,
                };
                let answer = look_up(&settings, &image, "amd64");
                CONFIGURE_ANSWER.with(|a| *a.borrow_mut() = answer);
            }
            // Remembers when it was configured, to show whether `configure`
            // runs again before a decision.
            "remember" => {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos());
                CONFIGURED_AT.with(|t| *t.borrow_mut() = now);
                sifr_plugin::log(Level::Info, "remember: configured");
            }
            // Keeps a WASI handle open past `configure`: a copy of this
            // instance's memory would hold a handle no copy has.
            "keep-stream" => {
                let stream = wasip2::cli::stdout::get_stdout();
                STREAM.with(|s| *s.borrow_mut() = Some(stream));
            }
            _ => {}
        }
        MODE.with(|m| *m.borrow_mut() = Some(settings));
        Ok(())
    }

    fn decide(image: ImageRef, ctx: Context, plan: Vec<Source>) -> Decision {
        let settings = MODE.with(|m| m.borrow().clone()).expect("configured");
        match settings.mode.as_str() {
            "identity" => Decision::Plan(plan),
            "configure-resolve" => Decision::Deny(format!(
                "in configure: {}",
                CONFIGURE_ANSWER.with(|a| a.borrow().clone())
            )),
            // Look up `times` digests and log every answer, in order.
            "resolve" => {
                let times = settings.times.unwrap_or(1);
                for _ in 0..times {
                    sifr_plugin::log(Level::Info, &look_up(&settings, &image, &ctx.arch));
                }
                Decision::Deny(format!("{times} look-ups"))
            }
            // A look-up, then busy code: the look-up's time is the host's,
            // and the plugin's own deadline still holds after it.
            "resolve-then-loop" => {
                sifr_plugin::log(Level::Info, &look_up(&settings, &image, &ctx.arch));
                let mut n: u64 = 0;
                loop {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
            }
            // A look-up, then a clock wait the timer must end.
            "resolve-then-sleep" => {
                sifr_plugin::log(Level::Info, &look_up(&settings, &image, &ctx.arch));
                std::thread::sleep(HOUR);
                Decision::Plan(plan)
            }
            // A look-up, then a short wait of `millis` (in the plugin's
            // time), then the plan pinned to what it found. `nap-resolve-nap`
            // waits first too: the look-up then runs while the host's timer
            // is armed.
            "resolve-then-nap" | "nap-resolve-nap" => {
                if settings.mode == "nap-resolve-nap" {
                    std::thread::sleep(std::time::Duration::from_millis(
                        settings.millis.unwrap_or(0),
                    ));
                }
                let answer = look_up(&settings, &image, &ctx.arch);
                std::thread::sleep(std::time::Duration::from_millis(
                    settings.millis.unwrap_or(0),
                ));
                match answer.strip_prefix("ok ") {
                    Some(digest) => Decision::Plan(
                        plan.into_iter()
                            .map(|s| Source {
                                reference: PullRef::Digest(digest.to_string()),
                                ..s
                            })
                            .collect(),
                    ),
                    None => Decision::Deny(answer),
                }
            }
            // Holds its instance a while (a WASI clock wait), then agrees:
            // many at once fill the host's pool.
            "nap" => {
                let millis = settings.millis.unwrap_or(200);
                std::thread::sleep(std::time::Duration::from_millis(millis));
                Decision::Plan(plan)
            }
            "remember" => {
                let before = DECISIONS.with(|d| {
                    let before = *d.borrow();
                    *d.borrow_mut() += 1;
                    before
                });
                let at = CONFIGURED_AT.with(|t| *t.borrow());
                Decision::Deny(format!(
                    "configured at {at}; {before} decisions before this one"
                ))
            }
            "keep-stream" => {
                STREAM.with(|s| {
                    let stream = s.borrow();
                    let stream = stream.as_ref().expect("opened in configure");
                    stream
                        .blocking_write_and_flush(b"kept stream works\n")
                        .expect("the stream kept since configure");
                });
                Decision::Plan(plan)
            }
            "loop" => {
                let mut n: u64 = 0;
                loop {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
            }
            "memory-hog" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            "panic" => panic!("hostile plugin panicked on purpose"),
            "panic-escapes" => panic!("hostile {EVIL}"),
            "sleep" => {
                std::thread::sleep(HOUR);
                Decision::Plan(plan)
            }
            // `wasi:io/poll.poll` on a list of far-off clock subscriptions.
            "poll" => {
                let far =
                    wasip2::clocks::monotonic_clock::subscribe_duration(HOUR.as_nanos() as u64);
                let later =
                    wasip2::clocks::monotonic_clock::subscribe_duration(2 * HOUR.as_nanos() as u64);
                wasip2::io::poll::poll(&[&far, &later]);
                Decision::Plan(plan)
            }
            // Holds on to WASI resources until the host's table is full.
            "handles" => {
                let mut held = Vec::new();
                loop {
                    held.push(wasip2::clocks::monotonic_clock::subscribe_duration(1));
                    std::hint::black_box(&held);
                }
            }
            // Returns 10,000 sources with 100-byte notes: about 1.6 MB that
            // the host would copy before validation could refuse it.
            "flood" => Decision::Plan(
                (0..10_000)
                    .map(|_| Source {
                        note: "n".repeat(100),
                        ..source(&image.registry, &image.repository, image.pull_ref())
                    })
                    .collect(),
            ),
            // One `log` call carrying a 1 MiB message.
            "log-flood" => {
                sifr_plugin::log(Level::Info, &"x".repeat(1 << 20));
                Decision::Plan(plan)
            }
            // 30,000 lines on stderr, each a short write.
            "stderr-lines" => {
                for i in 0..30_000 {
                    eprintln!("w{i}");
                }
                Decision::Plan(plan)
            }
            // More than the 64 KiB a call may write to stdout.
            "stdout-flood" => {
                let line = "y".repeat(1023);
                for _ in 0..200 {
                    println!("{line}");
                }
                Decision::Plan(plan)
            }
            // Terminal escapes and bidi controls on every channel a plugin has.
            "escapes" => {
                sifr_plugin::log(Level::Warn, &format!("log {EVIL}"));
                println!("stdout {EVIL}");
                eprintln!("stderr {EVIL}");
                Decision::Plan(vec![Source {
                    note: format!("note {EVIL}"),
                    ..source(&image.registry, &image.repository, image.pull_ref())
                }])
            }
            "deny-escapes" => Decision::Deny(format!("denied {EVIL}")),
            // Pulls a pinned image by its tag: whatever the tag points at now.
            "unpin" => Decision::Plan(
                plan.into_iter()
                    .map(|s| Source {
                        reference: PullRef::Tag(image.tag.clone().unwrap_or("latest".into())),
                        ..s
                    })
                    .collect(),
            ),
            // What WASI lets a plugin see and do, reported as log lines; the
            // host must deny all of it.
            "probe" => {
                probe();
                Decision::Plan(plan)
            }
            "huge-string" => {
                let bytes = settings.bytes.unwrap_or(100 << 20);
                Decision::Plan(vec![Source {
                    note: "x".repeat(bytes),
                    ..source(&image.registry, &image.repository, image.pull_ref())
                }])
            }
            "many-sources" => Decision::Plan(
                (0..100)
                    .map(|_| source(&image.registry, &image.repository, image.pull_ref()))
                    .collect(),
            ),
            "bind-registry" => Decision::Plan(vec![source(
                "--bind=/:/x",
                &image.repository,
                image.pull_ref(),
            )]),
            "tag-with-spaces" => Decision::Plan(vec![source(
                &image.registry,
                &image.repository,
                PullRef::Tag("1.0 --bind /:/x".to_string()),
            )]),
            "shell-repository" => Decision::Plan(vec![source(
                &image.registry,
                "library/ubuntu;reboot",
                image.pull_ref(),
            )]),
            "bad-digest" => Decision::Plan(vec![source(
                &image.registry,
                &image.repository,
                PullRef::Digest("sha256:ABC".to_string()),
            )]),
            "empty-plan" => Decision::Plan(Vec::new()),
            "deny" => Decision::Deny("hostile plugin says no".to_string()),
            "chatty" => {
                println!("hello on stdout");
                eprintln!("hello on stderr");
                for i in 0..10_000 {
                    sifr_plugin::log(Level::Info, &format!("log line {i}"));
                }
                Decision::Plan(plan)
            }
            other => panic!("unknown hostile mode {other:?}"),
        }
    }
}

sifr_plugin::export!(Hostile with_types_in sifr_plugin);
