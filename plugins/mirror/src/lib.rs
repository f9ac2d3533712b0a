//! Put registry mirrors ahead of the origin.
//!
//! ```toml
//! [[plugin]]
//! name = "hub-mirror"
//! builtin = "mirror"
//! [plugin.settings]
//! registries = ["docker.io"]          # upstreams this applies to ("*" for all)
//! [[plugin.settings.mirrors]]
//! registry = "mirror.example.org:5000"
//! prefix = "dockerhub"                # optional: repository prefix at the mirror
//! plain-http = false                  # optional
//! ```
//!
//! For an image from a listed registry, each mirror becomes a source, in the
//! order given, ahead of the sources already planned (so the origin stays
//! last). Mirrors use the same tag or digest as the plan's last source.

use std::cell::RefCell;

use serde::Deserialize;
use sifr_plugin::{Context, Decision, Guest, ImageRef, Source};

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct Settings {
    registries: Vec<String>,
    mirrors: Vec<Mirror>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct Mirror {
    registry: String,
    #[serde(default)]
    prefix: Option<String>,
    #[serde(default)]
    plain_http: bool,
}

thread_local! {
    static SETTINGS: RefCell<Option<Settings>> = const { RefCell::new(None) };
}

struct MirrorPolicy;

impl Guest for MirrorPolicy {
    fn configure(settings: String) -> Result<(), String> {
        let settings: Settings =
            serde_json::from_str(&settings).map_err(|e| format!("invalid settings: {e}"))?;
        if settings.mirrors.is_empty() {
            return Err("`mirrors` is empty: name at least one mirror".to_string());
        }
        if settings.registries.is_empty() {
            return Err(
                "`registries` is empty: list the upstream registries to mirror, or \"*\""
                    .to_string(),
            );
        }
        // sifr hands plugins canonical hosts (lowercase, no `:443`); compare
        // the configured ones the same way.
        let mut settings = settings;
        for registry in &mut settings.registries {
            let lower = registry.to_ascii_lowercase();
            *registry = lower.strip_suffix(":443").unwrap_or(&lower).to_string();
        }
        SETTINGS.with(|s| *s.borrow_mut() = Some(settings));
        Ok(())
    }

    fn decide(image: ImageRef, _ctx: Context, plan: Vec<Source>) -> Decision {
        SETTINGS.with(|s| {
            let s = s.borrow();
            let settings = s.as_ref().expect("configure() runs before decide()");
            let applies = settings
                .registries
                .iter()
                .any(|r| r == "*" || *r == image.registry);
            if !applies {
                sifr_plugin::debug(&format!("{} is not mirrored", image.registry));
                return Decision::Plan(plan);
            }
            let reference = plan
                .last()
                .map(|origin| origin.reference.clone())
                .unwrap_or_else(|| image.pull_ref());
            let mirrors = settings.mirrors.iter().map(|m| Source {
                registry: m.registry.clone(),
                repository: match &m.prefix {
                    Some(prefix) => {
                        format!("{}/{}", prefix.trim_end_matches('/'), image.repository)
                    }
                    None => image.repository.clone(),
                },
                reference: reference.clone(),
                plain_http: m.plain_http,
                note: format!("mirror of {}", image.registry),
            });
            Decision::Plan(mirrors.chain(plan).collect())
        })
    }
}

sifr_plugin::export!(MirrorPolicy with_types_in sifr_plugin);
