//! A sifr policy plugin: refuse `:latest`, and send Docker Hub pulls to a
//! site mirror first (Docker Hub stays the fallback).
//!
//! Settings (`[plugin.settings]` in sifr's config):
//!
//! ```toml
//! hub-mirror = "harbor.example.org/dockerhub"   # optional: host[:port][/prefix]
//! deny-latest = true                            # optional, default true
//! ```
//!
//! The contract is `wit/policy.wit` (package sifr:policy@0.2.0; `wit` links
//! to the repository's `wit/v0.2.0`); PLUGINS.md
//! in the sifr repository documents every type and rule.

use std::cell::RefCell;

use serde::Deserialize;

wit_bindgen::generate!({
    path: "wit",
    world: "plugin",
});

use exports::sifr::policy::policy::Guest;
use sifr::policy::host::{Level, log};
use sifr::policy::types::{Context, Decision, ImageRef, Source};

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct Settings {
    hub_mirror: Option<String>,
    #[serde(default = "yes")]
    deny_latest: bool,
}

fn yes() -> bool {
    true
}

thread_local! {
    // Every call gets a fresh instance: configure() runs first, then decide().
    static SETTINGS: RefCell<Option<Settings>> = const { RefCell::new(None) };
}

struct MyPolicy;

impl Guest for MyPolicy {
    fn configure(settings: String) -> Result<(), String> {
        let settings: Settings =
            serde_json::from_str(&settings).map_err(|e| format!("invalid settings: {e}"))?;
        if let Some(mirror) = &settings.hub_mirror
            && (mirror.is_empty() || mirror.starts_with('/') || mirror.contains("://"))
        {
            return Err(format!(
                "hub-mirror = {mirror:?}: give host[:port][/prefix], without a scheme"
            ));
        }
        SETTINGS.with(|s| *s.borrow_mut() = Some(settings));
        Ok(())
    }

    fn decide(image: ImageRef, _ctx: Context, plan: Vec<Source>) -> Decision {
        SETTINGS.with(|s| {
            let s = s.borrow();
            let settings = s.as_ref().expect("configure() runs before decide()");
            let latest = image.manifest_digest.is_none()
                && image.tag.as_deref().is_none_or(|t| t == "latest");
            if settings.deny_latest && latest {
                return Decision::Deny(
                    "`:latest` (or no tag) is not reproducible; pin a tag or a digest".to_string(),
                );
            }
            let (Some(mirror), "docker.io") = (&settings.hub_mirror, image.registry.as_str())
            else {
                return Decision::Plan(plan);
            };
            let Some(origin) = plan.last() else {
                return Decision::Plan(plan);
            };
            let (registry, prefix) = mirror.split_once('/').unwrap_or((mirror, ""));
            let repository = match prefix {
                "" => image.repository.clone(),
                prefix => format!("{prefix}/{}", image.repository),
            };
            log(
                Level::Info,
                &format!("mirroring {} via {registry}", image.repository),
            );
            let mirror = Source {
                registry: registry.to_string(),
                repository,
                reference: origin.reference.clone(),
                plain_http: false,
                note: "site Docker Hub mirror".to_string(),
            };
            Decision::Plan(std::iter::once(mirror).chain(plan).collect())
        })
    }
}

export!(MyPolicy);
