//! The built-in default policy, embedded in the sifr binary.
//!
//! It keeps every source of the plan it is given and settles each one's
//! reference the way docker and podman do:
//!
//! - a reference pinned to a registry manifest digest is pulled by that digest
//!   and its tag is dropped: containers/image rejects `docker://name:tag@digest`,
//!   so a URI carries one or the other;
//! - a source an earlier plugin pinned to a digest (the `tags` plugin's
//!   `pin = "resolve"`) keeps that digest;
//! - otherwise it is pulled by its tag, `latest` when none was given.
//!
//! The locally known SIF digest is never used as a pull reference. bv's seed
//! preferred tags for exactly this reason (its lockfile held the SIF file hash,
//! and pulling by it would 404); here the contract keeps the two digests in
//! different fields, so it cannot happen by construction.

use sifr_plugin::{Context, Decision, Guest, ImageRef, PullRef, Source};

struct DefaultPolicy;

impl Guest for DefaultPolicy {
    fn configure(settings: String) -> Result<(), String> {
        match settings.trim() {
            "{}" | "" => Ok(()),
            other => Err(format!(
                "the default plugin takes no settings, but was given {other}"
            )),
        }
    }

    fn decide(image: ImageRef, _ctx: Context, plan: Vec<Source>) -> Decision {
        let reference = image.pull_ref();
        let why = match (&reference, &image.tag) {
            (PullRef::Digest(_), Some(_)) => {
                "by manifest digest (tag dropped: a docker:// URI carries one or the other)"
            }
            (PullRef::Digest(_), None) => "by manifest digest",
            (PullRef::Tag(_), Some(_)) => "by tag",
            (PullRef::Tag(_), None) => "by tag latest (no tag given)",
        };
        let plan = plan
            .into_iter()
            .map(|source| {
                // A source an earlier plugin pinned to a digest (the `tags`
                // plugin's `pin = "resolve"`) keeps it: a tag may have
                // moved since.
                let (reference, why) = match &source.reference {
                    PullRef::Digest(_) if image.manifest_digest.is_none() => {
                        (source.reference.clone(), "by the digest it was pinned to")
                    }
                    _ => (reference.clone(), why),
                };
                Source {
                    reference,
                    note: if source.note.is_empty() {
                        why.to_string()
                    } else {
                        format!("{}; {why}", source.note)
                    },
                    ..source
                }
            })
            .collect();
        Decision::Plan(plan)
    }
}

sifr_plugin::export!(DefaultPolicy with_types_in sifr_plugin);
