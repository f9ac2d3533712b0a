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
}

thread_local! {
    static MODE: RefCell<Option<Settings>> = const { RefCell::new(None) };
}

struct Hostile;

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
            _ => {}
        }
        MODE.with(|m| *m.borrow_mut() = Some(settings));
        Ok(())
    }

    fn decide(image: ImageRef, _ctx: Context, plan: Vec<Source>) -> Decision {
        let settings = MODE.with(|m| m.borrow().clone()).expect("configured");
        match settings.mode.as_str() {
            "identity" => Decision::Plan(plan),
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
            "huge-string" => {
                let bytes = settings.bytes.unwrap_or(100 << 20);
                Decision::Plan(vec![Source {
                    note: "x".repeat(bytes),
                    ..source(&image.registry, &image.repository, image.pull_ref())
                }])
            }
            "many-sources" => Decision::Plan(
                (0..10_000)
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
