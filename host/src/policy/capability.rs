//! Host capabilities a plugin may be granted in its config, and what the
//! host does for them. One so far: `resolve-digest` (contract 0.2.0), the
//! host asking a registry which manifest digest a tag names.
//!
//! Deny by default: a plugin without the grant gets an error from the
//! import, never network access. With it, the host still decides what is
//! asked and how:
//! - only in `decide` (a configured plugin is kept: a digest learned in
//!   `configure` would be served stale to every later decision);
//! - only the image's registry, or a registry of the plan the plugin was
//!   given (a plugin cannot make sifr contact any host it likes);
//! - over HTTPS, or plain HTTP only for a registry that plan marks
//!   `plain-http` (as registries.conf's `insecure` does);
//! - at most [`MAX_LOOKUPS`] a decision, each under the registry timeout.
//!
//! The time a look-up takes is not the plugin's: its deadline is pushed
//! back by as much ([`Excused`]), so a slow registry does not make a policy
//! time out, and a plugin gets no more time to compute than its limit.
//! Every look-up, answered or refused, is recorded ([`DigestLookup`]) and
//! shown by `sifr resolve --explain`: where a digest came from is the
//! host's account, not the plugin's.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::Source;
use super::sandbox::HostState;
use crate::reference::{ImageRef, canonical_registry};
use crate::registry::RegistryClient;
use crate::untrusted;

/// Look-ups answered in one decision; more get an error.
pub(crate) const MAX_LOOKUPS: usize = 16;

/// The longest piece of a plugin's arguments kept in a record or message.
const MAX_SHOWN: usize = 256;

/// One `resolve-digest` call, as the host saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct DigestLookup {
    pub registry: String,
    pub repository: String,
    pub tag: String,
    pub arch: String,
    #[serde(flatten)]
    pub outcome: LookupOutcome,
    #[serde(serialize_with = "micros")]
    pub elapsed: Duration,
}

fn micros<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_micros() as u64)
}

/// How a look-up ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "result", rename_all = "kebab-case")]
pub enum LookupOutcome {
    /// The registry answered (or the digest cache did).
    #[serde(rename_all = "kebab-case")]
    Resolved {
        manifest_digest: String,
        index_digest: Option<String>,
        from_cache: bool,
        plain_http: bool,
        /// The registry failed just now, and this is the digest cache's
        /// answer past its TTL (`[registry] stale-if-error`).
        #[serde(skip_serializing_if = "Option::is_none")]
        stale: Option<StaleAnswer>,
    },
    /// The host refused to ask: not granted, not a registry of the plan,
    /// too many look-ups, or asked from `configure`.
    Refused { reason: String },
    /// The registry could not answer.
    Failed { error: String },
}

/// A digest given from the cache because the registry failed now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct StaleAnswer {
    /// Since the registry gave it, in seconds.
    pub age_secs: u64,
    /// The registry's failure now.
    pub error: String,
}

/// What a granted look-up returns to the plugin's contract module.
pub(crate) struct Answer {
    pub manifest_digest: String,
    pub index_digest: Option<String>,
    pub from_cache: bool,
}

/// Time a call spent waiting on the host rather than running; the call's
/// deadlines (the epoch deadline and the timer) are pushed back by as
/// much. Shared between the store and the timer. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub(crate) struct Excused(Arc<AtomicU64>);

impl Excused {
    fn add(&self, time: Duration) {
        let nanos = u64::try_from(time.as_nanos()).unwrap_or(u64::MAX);
        self.0.fetch_add(nanos, Ordering::Relaxed);
    }

    pub(crate) fn total(&self) -> Duration {
        Duration::from_nanos(self.0.load(Ordering::Relaxed))
    }
}

/// The `resolve-digest` grant of one call's store.
pub(crate) struct DigestAccess {
    client: Arc<RegistryClient>,
    /// The registries this decision may ask, canonical, each with whether
    /// plain HTTP is allowed for it.
    registries: Vec<(String, bool)>,
    excused: Excused,
    /// How long past the digest TTL a cached answer may stand in for a
    /// registry that fails now: the plugin's layer's `[registry]
    /// stale-if-error` (the site file's alone for a site-locked plugin).
    stale_if_error: Duration,
}

impl DigestAccess {
    pub(crate) fn new(
        client: Arc<RegistryClient>,
        excused: Excused,
        stale_if_error: Duration,
    ) -> Self {
        Self {
            client,
            registries: Vec::new(),
            excused,
            stale_if_error,
        }
    }

    /// Scope the grant to one decision: the image's registry and the
    /// registries of the plan given to the plugin, plain HTTP where the
    /// plan says so.
    pub(crate) fn scope(&mut self, image: &ImageRef, plan: &[Source]) {
        self.registries.clear();
        for source in plan {
            let registry = canonical_registry(&source.registry);
            match self.registries.iter_mut().find(|(r, _)| *r == registry) {
                Some((_, plain)) => *plain |= source.plain_http,
                None => self.registries.push((registry, source.plain_http)),
            }
        }
        let origin = canonical_registry(&image.registry);
        if !self.registries.iter().any(|(r, _)| *r == origin) {
            self.registries.push((origin, false));
        }
    }
}

impl HostState {
    /// `resolve-digest`, whatever the contract version: the host's checks,
    /// the look-up, and its record. The error is the message the plugin
    /// receives.
    pub(crate) fn resolve_digest(
        &mut self,
        registry: &str,
        repository: &str,
        tag: &str,
        arch: &str,
    ) -> Result<Answer, String> {
        let started = Instant::now();
        let calls = self.lookup_calls;
        self.lookup_calls += 1;
        let mut record = DigestLookup {
            registry: untrusted::escape(registry, MAX_SHOWN),
            repository: untrusted::escape(repository, MAX_SHOWN),
            tag: untrusted::escape(tag, MAX_SHOWN),
            arch: untrusted::escape(arch, MAX_SHOWN),
            outcome: LookupOutcome::Refused {
                reason: String::new(),
            },
            elapsed: Duration::ZERO,
        };
        let refusal = if calls >= MAX_LOOKUPS {
            Some(format!(
                "resolve-digest answers at most {MAX_LOOKUPS} look-ups a decision"
            ))
        } else if !self.deciding {
            Some(
                "resolve-digest is answered only in `decide`, not in `configure`: a \
                 configured plugin is kept, and a digest must be fresh"
                    .to_string(),
            )
        } else if self.digests.is_none() {
            Some(
                "resolve-digest is not granted to this plugin; a site admin grants it with \
                 `capabilities = [\"resolve-digest\"]` in the plugin's [[plugin]] entry"
                    .to_string(),
            )
        } else {
            None
        };
        if let Some(reason) = refusal {
            // One record for the first refused call past the cap, none
            // after: a plugin cannot grow the report without bound.
            if calls <= MAX_LOOKUPS {
                record.outcome = LookupOutcome::Refused {
                    reason: reason.clone(),
                };
                self.lookups.push(record);
            }
            return Err(reason);
        }
        let access = self.digests.as_mut().expect("checked above");
        let canonical = canonical_registry(registry);
        let Some(&(_, plain_http)) = access.registries.iter().find(|(r, _)| *r == canonical) else {
            let reason = format!(
                "resolve-digest asks only the image's registry or a registry of the plan the \
                 plugin was given, and {} is neither",
                record.registry
            );
            record.outcome = LookupOutcome::Refused {
                reason: reason.clone(),
            };
            self.lookups.push(record);
            return Err(reason);
        };
        let answer = access.client.resolve_digest_or_stale(
            &canonical,
            repository,
            tag,
            arch,
            plain_http,
            access.stale_if_error,
        );
        let elapsed = started.elapsed();
        access.excused.add(elapsed);
        record.elapsed = elapsed;
        let result = match answer {
            Ok(resolved) => {
                let answer = Answer {
                    manifest_digest: resolved.digest.to_string(),
                    index_digest: resolved.index_digest.as_ref().map(|d| d.to_string()),
                    from_cache: resolved.from_cache,
                };
                record.outcome = LookupOutcome::Resolved {
                    manifest_digest: answer.manifest_digest.clone(),
                    index_digest: answer.index_digest.clone(),
                    from_cache: answer.from_cache,
                    plain_http,
                    stale: resolved.stale.map(|stale| StaleAnswer {
                        age_secs: stale.age.as_secs(),
                        error: stale.error,
                    }),
                };
                Ok(answer)
            }
            Err(error) => {
                let error = error.to_string();
                record.outcome = LookupOutcome::Failed {
                    error: error.clone(),
                };
                Err(error)
            }
        };
        self.lookups.push(record);
        result
    }
}
