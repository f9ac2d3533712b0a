//! Reproducible pins: the `resolve-digest` capability (contract 0.2.0) and
//! the `tags` plugin's `pin = "resolve"`.
//!
//! The capability's guarantees are attacked with the hostile plugin against
//! a registry the test controls (`registry_client::Server`): no grant, no
//! answer and no request; no look-up from `configure`; only the image's
//! registry or the plan's; at most 16 look-ups; the registry's time is not
//! the plugin's, and the plugin's own deadline still holds after it. The
//! end-to-end tests pull by the resolved digest from a real registry.

use crate::common;
use crate::e2e;
use crate::registry_client::{OCI_MANIFEST, Server, manifest, respond, sha256};

use std::sync::Arc;
use std::time::Duration;

use common::{Scratch, entry, plugin_wasm, pulls, stderr, stdout};
use sifr::policy::{LookupOutcome, StepOutcome};
use sifr::registry::{RegistryClient, RegistryOptions};
use sifr::{
    Config, ConfigSources, Context, FailureKind, ImageRef, Outcome, Policy, PolicyOptions, PullRef,
    Purpose, Source,
};

const GRANT: &str = "capabilities = [\"resolve-digest\"]";

/// A plugin deadline for the tests that are not about deadlines: the
/// policy's 100 ms default is timing luck on a loaded machine.
const GENEROUS: &str = "timeout-ms = 10000";

/// A registry that serves one manifest for every tag, after `delay`.
fn registry(delay: Duration) -> (Server, String) {
    let body = manifest("pins");
    let digest = sha256(&body);
    let header = digest.clone();
    let server = Server::start(move |req, stream| {
        std::thread::sleep(delay);
        let headers = [
            ("Content-Type", OCI_MANIFEST),
            ("Docker-Content-Digest", header.as_str()),
        ];
        respond(stream, "200 OK", &headers, &body, req.method == "HEAD");
    });
    (server, digest)
}

/// A policy of one hostile plugin in `mode`; `extra` goes in its entry,
/// `settings` in its settings, `sandbox` under [sandbox]. Look-ups go
/// through a client with no digest cache and a `timeout`.
fn hostile(
    scratch: &Scratch,
    mode: &str,
    extra: &str,
    settings: &str,
    sandbox: &str,
    timeout: Duration,
) -> Policy {
    let toml = format!(
        "[sandbox]\n{sandbox}\n{}",
        entry(
            "rogue",
            &plugin_wasm("hostile"),
            &format!("{extra}\n[plugin.settings]\nmode = \"{mode}\"\n{settings}")
        )
    );
    let config = Config::load(&ConfigSources::only(scratch.write("config.toml", &toml))).unwrap();
    Policy::load(&config, &options(timeout)).unwrap()
}

fn options(timeout: Duration) -> PolicyOptions {
    PolicyOptions {
        registry: Some(Arc::new(RegistryClient::new(RegistryOptions {
            timeout,
            cache: None,
            ..RegistryOptions::default()
        }))),
        ..PolicyOptions::default()
    }
}

/// `host/team/app:v1`, and a plan of its origin over plain HTTP (as the
/// `registries` plugin makes it for an `insecure` registry).
fn image_on(server: &Server) -> (ImageRef, Vec<Source>) {
    let image = ImageRef::parse(&format!("{}/team/app:v1", server.host())).unwrap();
    let mut origin = Source::origin(&image);
    origin.plain_http = true;
    (image, vec![origin])
}

fn md(digest: &str) -> sifr::ManifestDigest {
    sifr::ManifestDigest::parse(digest).unwrap()
}

fn ctx() -> Context {
    Context::new(Purpose::Pull)
}

/// What a `resolve`-mode plugin was answered, in order (it logs each).
fn answers(resolution: &sifr::Resolution) -> Vec<String> {
    assert!(
        matches!(&resolution.outcome, Outcome::Deny { reason, .. } if reason.ends_with(" look-ups")),
        "{:?}",
        resolution.outcome
    );
    resolution.steps[0]
        .logs
        .iter()
        .map(|l| l.message.clone())
        .collect()
}

#[test]
fn a_plugin_without_the_grant_gets_an_error_and_no_request_is_made() {
    let (server, _) = registry(Duration::ZERO);
    let scratch = Scratch::new();
    let policy = hostile(
        &scratch,
        "resolve",
        "",
        "",
        GENEROUS,
        Duration::from_secs(5),
    );
    let (image, plan) = image_on(&server);
    let resolution = policy.resolve_from(&image, &ctx(), plan);
    let answers = answers(&resolution);
    assert_eq!(answers.len(), 1);
    assert!(
        answers[0].starts_with("error resolve-digest is not granted to this plugin")
            && answers[0].contains("capabilities = [\"resolve-digest\"]"),
        "{answers:?}"
    );
    assert!(server.requests().is_empty(), "the registry was asked");
    let lookups = &resolution.steps[0].lookups;
    assert!(
        matches!(&lookups[..], [l] if matches!(l.outcome, LookupOutcome::Refused { .. })),
        "{lookups:?}"
    );
}

#[test]
fn a_granted_plugin_gets_the_registry_s_digest_and_the_host_records_it() {
    let (server, digest) = registry(Duration::ZERO);
    let scratch = Scratch::new();
    let policy = hostile(
        &scratch,
        "resolve",
        GRANT,
        "",
        GENEROUS,
        Duration::from_secs(5),
    );
    let (image, plan) = image_on(&server);
    let resolution = policy.resolve_from(&image, &ctx(), plan);
    assert_eq!(answers(&resolution), [format!("ok {digest}")]);
    let requests = server.requests();
    assert_eq!(requests.len(), 1, "{requests:?}");
    assert_eq!(requests[0].path, "/v2/team/app/manifests/v1");
    let lookup = &resolution.steps[0].lookups[0];
    assert_eq!(lookup.registry, server.host());
    assert_eq!(lookup.tag, "v1");
    assert_eq!(
        lookup.outcome,
        LookupOutcome::Resolved {
            manifest_digest: digest,
            index_digest: None,
            from_cache: false,
            plain_http: true,
            stale: None,
        }
    );
}

#[test]
fn https_is_used_unless_the_plan_marks_the_registry_plain_http() {
    let (server, _) = registry(Duration::ZERO);
    let scratch = Scratch::new();
    let policy = hostile(
        &scratch,
        "resolve",
        GRANT,
        "",
        GENEROUS,
        Duration::from_secs(5),
    );
    let (image, _) = image_on(&server);
    // The origin alone, as the chain starts: HTTPS, which this plain
    // server cannot speak. The look-up fails; nothing is downgraded.
    let resolution = policy.resolve(&image, &ctx());
    let answers = answers(&resolution);
    assert!(answers[0].starts_with("error "), "{answers:?}");
    assert!(answers[0].contains(&server.host()), "{answers:?}");
    assert!(
        server
            .requests()
            .iter()
            .all(|r| !r.path.starts_with("/v2/")),
        "a plain HTTP request was made"
    );
}

#[test]
fn only_the_image_s_registry_or_the_plan_s_are_asked() {
    let (server, _) = registry(Duration::ZERO);
    let (elsewhere, _) = registry(Duration::ZERO);
    let scratch = Scratch::new();
    let settings = format!("registry = \"{}\"", elsewhere.host());
    let policy = hostile(
        &scratch,
        "resolve",
        GRANT,
        &settings,
        GENEROUS,
        Duration::from_secs(5),
    );
    let (image, plan) = image_on(&server);
    let answers = answers(&policy.resolve_from(&image, &ctx(), plan));
    assert!(
        answers[0].contains("asks only the image's registry or a registry of the plan")
            && answers[0].contains(&elsewhere.host()),
        "{answers:?}"
    );
    assert!(elsewhere.requests().is_empty());
    assert!(server.requests().is_empty());
}

#[test]
fn configure_cannot_look_up_digests() {
    let scratch = Scratch::new();
    let policy = hostile(
        &scratch,
        "configure-resolve",
        GRANT,
        "",
        GENEROUS,
        Duration::from_secs(5),
    );
    let image = ImageRef::parse("ubuntu:22.04").unwrap();
    let Outcome::Deny { reason, .. } = policy.resolve(&image, &ctx()).outcome else {
        panic!("expected the configure-time answer");
    };
    assert!(
        reason.starts_with("in configure: error resolve-digest is answered only in `decide`"),
        "{reason}"
    );
}

#[test]
fn more_than_sixteen_look_ups_a_decision_are_refused() {
    let (server, digest) = registry(Duration::ZERO);
    let scratch = Scratch::new();
    let policy = hostile(
        &scratch,
        "resolve",
        GRANT,
        "times = 40",
        GENEROUS,
        Duration::from_secs(5),
    );
    let (image, plan) = image_on(&server);
    let resolution = policy.resolve_from(&image, &ctx(), plan);
    let answers = answers(&resolution);
    assert_eq!(answers.len(), 40);
    let ok = format!("ok {digest}");
    assert!(answers[..16].iter().all(|a| *a == ok), "{answers:?}");
    assert!(
        answers[16..]
            .iter()
            .all(|a| a.contains("at most 16 look-ups a decision")),
        "{answers:?}"
    );
    assert_eq!(server.requests().len(), 16);
    // The record is bounded too: the answered ones and one refusal.
    assert_eq!(resolution.steps[0].lookups.len(), 17);
}

#[test]
fn the_registry_s_time_is_not_the_plugin_s() {
    // The registry takes longer than the plugin's whole deadline; the
    // plugin then waits in WASI (the timer's path) and runs code (the
    // epoch's path). The deadline leaves the plugin's own work (two 20 ms
    // naps) room on a loaded machine.
    let (server, digest) = registry(Duration::from_millis(1500));
    let scratch = Scratch::new();
    // `nap-resolve-nap` looks up while the host's timer is already armed
    // (it blocked in WASI first), so the timer must be pushed back too.
    for mode in ["resolve-then-nap", "nap-resolve-nap"] {
        let policy = hostile(
            &scratch,
            mode,
            GRANT,
            "millis = 20",
            "timeout-ms = 1000",
            Duration::from_secs(10),
        );
        let (image, plan) = image_on(&server);
        let resolution = policy.resolve_from(&image, &ctx(), plan);
        let Outcome::Plan(sources) = &resolution.outcome else {
            panic!("{mode}: {:?}", resolution.outcome);
        };
        assert_eq!(sources[0].reference, PullRef::Digest(md(&digest)), "{mode}");
    }
}

#[test]
fn after_a_look_up_the_plugin_s_own_deadline_still_holds() {
    let (server, digest) = registry(Duration::from_millis(300));
    let scratch = Scratch::new();
    for (mode, expect_blocked) in [("resolve-then-loop", false), ("resolve-then-sleep", true)] {
        let policy = hostile(
            &scratch,
            mode,
            GRANT,
            "",
            "timeout-ms = 200",
            Duration::from_secs(10),
        );
        let (image, plan) = image_on(&server);
        let resolution = policy.resolve_from(&image, &ctx(), plan);
        let Outcome::Failed(failure) = &resolution.outcome else {
            panic!("{mode}: {:?}", resolution.outcome);
        };
        assert_eq!(failure.function, "decide");
        let limit = Duration::from_millis(200);
        if expect_blocked {
            assert_eq!(failure.kind, FailureKind::Blocked(limit), "{mode}");
        } else {
            assert_eq!(failure.kind, FailureKind::Timeout(limit), "{mode}");
        }
        // The look-up was answered before the plugin ran out of time.
        let logs: Vec<&str> = resolution.steps[0]
            .logs
            .iter()
            .map(|l| l.message.as_str())
            .collect();
        assert!(logs.contains(&format!("ok {digest}").as_str()), "{logs:?}");
    }
}

#[test]
fn a_registry_slower_than_its_own_timeout_is_the_look_up_s_error() {
    let (server, _) = registry(Duration::from_secs(5));
    let scratch = Scratch::new();
    let policy = hostile(
        &scratch,
        "resolve",
        GRANT,
        "",
        GENEROUS,
        Duration::from_millis(500),
    );
    let (image, plan) = image_on(&server);
    let answers = answers(&policy.resolve_from(&image, &ctx(), plan));
    assert!(
        answers[0].starts_with("error ") && answers[0].contains(&server.host()),
        "{answers:?}"
    );
    assert!(answers[0].contains("time"), "{answers:?}");
}

/// The `tags` plugin with `pin = "resolve"`, and `grant` in its entry.
fn pinning(scratch: &Scratch, grant: bool, rules: &str) -> Policy {
    let toml = format!(
        "[sandbox]\n{GENEROUS}\n[[plugin]]\nname = \"pins\"\nbuiltin = \"tags\"\n{}\n[plugin.settings]\npin = \"resolve\"\n{rules}\n",
        if grant { GRANT } else { "" }
    );
    let config = Config::load(&ConfigSources::only(scratch.write("config.toml", &toml))).unwrap();
    Policy::load(&config, &options(Duration::from_secs(2))).unwrap()
}

#[test]
fn pin_resolve_pulls_every_source_by_the_digest_the_first_answering_source_gave() {
    // The origin is down; the mirror answers. Both sources then pull the
    // mirror's digest.
    let (mirror, digest) = registry(Duration::ZERO);
    // Refused for the whole test: a port found free and let go could be
    // another test's server by the time it is asked.
    let refused = common::RefusedPort::new();
    let down = refused.port;
    let scratch = Scratch::new();
    let policy = pinning(&scratch, true, "");
    let image = ImageRef::parse(&format!("127.0.0.1:{down}/team/app:v1")).unwrap();
    let plan = vec![
        Source {
            registry: mirror.host(),
            repository: "team/app".to_string(),
            reference: PullRef::Tag("v1".to_string()),
            plain_http: true,
            note: "mirror".to_string(),
        },
        Source::origin(&image),
    ];
    let resolution = policy.resolve_from(&image, &ctx(), plan);
    let Outcome::Plan(sources) = &resolution.outcome else {
        panic!("{:?}", resolution.outcome);
    };
    assert_eq!(sources.len(), 2);
    for source in sources {
        assert_eq!(source.reference, PullRef::Digest(md(&digest)));
        assert!(
            source
                .note
                .contains(&format!("tag v1 resolved at {}", mirror.host())),
            "{}",
            source.note
        );
    }
    let lookups = &resolution.steps[0].lookups;
    assert_eq!(lookups.len(), 2, "the origin first, then the mirror");
    assert_eq!(lookups[0].registry, format!("127.0.0.1:{down}"));
    assert!(matches!(lookups[0].outcome, LookupOutcome::Failed { .. }));
    assert!(matches!(
        &lookups[1].outcome,
        LookupOutcome::Resolved { manifest_digest, .. } if *manifest_digest == digest
    ));
}

/// `[registry] stale-if-error`: when the registry cannot answer now (HTTP
/// 503), the digest cache's answer past its TTL stands in, within the
/// window, and the look-up says it is stale and why. A registry that does
/// answer (404) is never overridden; a plugin without a window gets no
/// stale answer; a site-locked plugin takes the site file's window alone.
#[test]
fn a_registry_that_fails_now_is_answered_from_the_stale_cache_within_the_window() {
    use std::sync::atomic::{AtomicU8, Ordering};
    let body = manifest("pins");
    let digest = sha256(&body);
    // 0: answer; 1: 503 (down); 2: 404 (the tag is gone).
    let mode = Arc::new(AtomicU8::new(0));
    let server = {
        let (mode, header) = (mode.clone(), digest.clone());
        Server::start(move |req, stream| match mode.load(Ordering::SeqCst) {
            0 => {
                let headers = [
                    ("Content-Type", OCI_MANIFEST),
                    ("Docker-Content-Digest", header.as_str()),
                ];
                respond(stream, "200 OK", &headers, &body, req.method == "HEAD");
            }
            1 => respond(stream, "503 Service Unavailable", &[], b"down", false),
            _ => respond(stream, "404 Not Found", &[], b"{}", false),
        })
    };
    let scratch = Scratch::new();
    let digests = scratch.path().join("digests");
    let options = PolicyOptions {
        registry: Some(Arc::new(RegistryClient::new(RegistryOptions {
            timeout: Duration::from_secs(10),
            cache: Some(sifr::registry::TtlCache::new(
                &digests,
                Duration::from_secs(60),
            )),
            ..RegistryOptions::default()
        }))),
        ..PolicyOptions::default()
    };
    let pins = |locked: bool| {
        format!(
            "[[plugin]]\nname = \"pins\"\nbuiltin = \"tags\"\nlocked = {locked}\n{GRANT}\n\
             [plugin.settings]\npin = \"resolve\"\n"
        )
    };
    let policy = |site: &str, user: &str| {
        let site = scratch.write("site.toml", &format!("[sandbox]\n{GENEROUS}\n{site}"));
        let user = scratch.write("user.toml", user);
        let config = Config::load(&ConfigSources {
            site: Some(site),
            user: Some(user),
            ..Default::default()
        })
        .unwrap();
        Policy::load(&config, &options).unwrap()
    };
    let window = "[registry]\nstale-if-error = \"1d\"\n";
    let users = policy("", &format!("{window}{}", pins(false)));
    let (image, plan) = image_on(&server);
    let resolve = |policy: &Policy| policy.resolve_from(&image, &ctx(), plan.clone());
    let pinned = |resolution: &sifr::Resolution| match &resolution.outcome {
        Outcome::Plan(sources) => sources[0].reference == PullRef::Digest(md(&digest)),
        _ => false,
    };

    // Fresh from the registry, and kept.
    let first = resolve(&users);
    assert!(pinned(&first), "{:?}", first.outcome);
    // An hour later: past the 60 s TTL, within the day.
    let entries: Vec<_> = std::fs::read_dir(&digests)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    assert_eq!(entries.len(), 1, "{entries:?}");
    for path in entries {
        let mut json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        json["stored_at"] = (json["stored_at"].as_u64().unwrap() - 3600).into();
        std::fs::write(&path, serde_json::to_vec(&json).unwrap()).unwrap();
    }
    mode.store(1, Ordering::SeqCst);
    let stale = resolve(&users);
    assert!(pinned(&stale), "{:?}", stale.outcome);
    match &stale.steps[0].lookups[0].outcome {
        LookupOutcome::Resolved {
            from_cache: true,
            stale: Some(why),
            ..
        } => {
            assert!(why.age_secs >= 3600, "{why:?}");
            assert!(why.error.contains("HTTP 503"), "{why:?}");
        }
        other => panic!("not a stale answer: {other:?}"),
    }
    // A lock entry is never made from a stale digest, whatever client the
    // embedder hands lock::resolve_entry.
    let mirror = format!(
        "[[plugin]]\nname = \"m\"\nbuiltin = \"mirror\"\n[plugin.settings]\n\
         registries = [\"{0}\"]\n[[plugin.settings.mirrors]]\nregistry = \"{0}\"\nplain-http = true\n",
        server.host()
    );
    let lockable = policy("", &format!("{window}{mirror}{}", pins(false)));
    let client = options.registry.clone().unwrap();
    let err = sifr::lock::resolve_entry(&lockable, &client, &image.to_string(), "amd64")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("HTTP 503")
            && err.contains("is stale")
            && err.contains("a lock file records only a digest a registry gives now"),
        "{err}"
    );

    // No window: the failure stands, as before.
    let strict = policy("", &pins(false));
    assert!(!pinned(&resolve(&strict)));
    // A site-locked plugin: the user's window does not relax it...
    let locked = policy(&pins(true), window);
    let refused = resolve(&locked);
    assert!(!pinned(&refused), "{:?}", refused.outcome);
    assert!(matches!(
        &refused.steps[0].lookups[0].outcome,
        LookupOutcome::Failed { error } if error.contains("HTTP 503")
    ));
    // ...the site's own does.
    let site_window = policy(&format!("{window}{}", pins(true)), "");
    assert!(pinned(&resolve(&site_window)));

    // A registry that answers is believed: the tag is gone.
    mode.store(2, Ordering::SeqCst);
    let gone = resolve(&users);
    assert!(!pinned(&gone), "{:?}", gone.outcome);
    assert!(matches!(
        &gone.steps[0].lookups[0].outcome,
        LookupOutcome::Failed { error } if error.contains("has no tag")
    ));
}

/// `sifr resolve --explain` and `--json` say a digest is stale, how old it
/// is and what failed; `sifr lock`, which asks registries now, records
/// nothing.
#[test]
fn explain_json_and_lock_show_a_stale_digest_for_what_it_is() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let body = manifest("pins");
    let digest = sha256(&body);
    let down = Arc::new(AtomicBool::new(false));
    let mirror = {
        let (down, header) = (down.clone(), digest.clone());
        Server::start(move |req, stream| {
            if down.load(Ordering::SeqCst) {
                respond(stream, "503 Service Unavailable", &[], b"down", false);
            } else {
                let headers = [
                    ("Content-Type", OCI_MANIFEST),
                    ("Docker-Content-Digest", header.as_str()),
                ];
                respond(stream, "200 OK", &headers, &body, req.method == "HEAD");
            }
        })
    };
    // The origin refuses throughout; the mirror answers, then fails.
    let origin = common::RefusedPort::new();
    let scratch = Scratch::new();
    let config = scratch.write(
        "config.toml",
        &format!(
            "[sandbox]\n{GENEROUS}\n[registry]\ndigest-ttl = \"1m\"\nstale-if-error = \"1d\"\n\
             [[plugin]]\nname = \"site-mirror\"\nbuiltin = \"mirror\"\n[plugin.settings]\n\
             registries = [\"{}\"]\n[[plugin.settings.mirrors]]\nregistry = \"{}\"\nplain-http = true\n\
             [[plugin]]\nname = \"pins\"\nbuiltin = \"tags\"\n{GRANT}\n[plugin.settings]\npin = \"resolve\"\n",
            origin.host(),
            mirror.host()
        ),
    );
    let config = config.to_str().unwrap();
    let image = format!("{}/team/app:v1", origin.host());
    let sifr = |args: &[&str]| {
        scratch
            .command()
            .args(["--config", config])
            .args(args)
            .output()
            .unwrap()
    };
    let out = sifr(&["resolve", &image]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));

    // An hour on, the mirror is down.
    let digests = scratch.path().join("cache/sifr/digests");
    let entries: Vec<_> = std::fs::read_dir(&digests)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    assert_eq!(entries.len(), 1, "{entries:?}");
    let mut json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&entries[0]).unwrap()).unwrap();
    json["stored_at"] = (json["stored_at"].as_u64().unwrap() - 3600).into();
    std::fs::write(&entries[0], serde_json::to_vec(&json).unwrap()).unwrap();
    down.store(true, Ordering::SeqCst);

    let out = sifr(&["resolve", "--explain", &image]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains(&format!(
            "digest of {}/team/app:v1 (amd64): {digest}, from the digest cache, STALE: asked \
             of the registry 1h",
            mirror.host()
        )) && text.contains("stale-if-error because the registry failed now")
            && text.contains("HTTP 503"),
        "{text}"
    );
    let out = sifr(&["resolve", "--json", &image]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let lookups = json[0]["steps"][1]["lookups"].as_array().unwrap();
    let stale = &lookups.last().unwrap()["stale"];
    assert!(stale["age-secs"].as_u64().unwrap() >= 3600, "{stale}");
    assert!(
        stale["error"].as_str().unwrap().contains("HTTP 503"),
        "{stale}"
    );

    let lock = scratch.path().join("sifr.lock");
    let out = sifr(&["lock", "--file", lock.to_str().unwrap(), &image]);
    assert_ne!(out.status.code(), Some(0), "{}", stdout(&out));
    // sifr lock asks the registries now, without the digest cache: the
    // failure stands, and nothing stale is recorded.
    assert!(stderr(&out).contains("HTTP 503"), "{}", stderr(&out));
    assert!(!lock.exists(), "nothing was written");
}

#[test]
fn registry_settings_bound_stale_if_error() {
    let scratch = Scratch::new();
    let file = scratch.write("c.toml", "[registry]\nstale-if-error = \"31d\"\n");
    let err = Config::load(&ConfigSources::only(&file)).unwrap_err();
    assert!(
        err.to_string()
            .contains("stale-if-error must be at most 30d"),
        "{err}"
    );
    let file = scratch.write("c.toml", "[registry]\nstale-if-error = \"soon\"\n");
    let err = Config::load(&ConfigSources::only(&file)).unwrap_err();
    assert!(
        err.to_string()
            .contains("stale-if-error = \"soon\" is not a duration"),
        "{err}"
    );
    let file = scratch.write("c.toml", "[registry]\nstale-if-error = \"6h\"\n");
    let config = Config::load(&ConfigSources::only(&file)).unwrap();
    assert_eq!(config.stale_if_error, Duration::from_secs(6 * 3600));
    assert_eq!(
        config.site_stale_if_error,
        Duration::ZERO,
        "not the site file"
    );
}

#[test]
fn pin_resolve_refuses_an_image_no_source_can_pin() {
    let refused = common::RefusedPort::new();
    let down = refused.port;
    let scratch = Scratch::new();
    let image = ImageRef::parse(&format!("127.0.0.1:{down}/team/app:v1")).unwrap();
    for grant in [true, false] {
        let policy = pinning(&scratch, grant, "");
        let Outcome::Deny { reason, .. } = policy.resolve(&image, &ctx()).outcome else {
            panic!("an unpinnable tag must be refused");
        };
        assert!(
            reason.contains("could not be pinned to a digest (pin = \"resolve\")")
                && reason.contains(&format!("127.0.0.1:{down}")),
            "{reason}"
        );
        if !grant {
            assert!(reason.contains("not granted"), "{reason}");
        }
    }
}

#[test]
fn a_refusal_after_many_failed_sources_still_fits_a_denial() {
    // Twenty mirrors that are all down: each error is long, and the
    // denial must still be one the host accepts (at most 2048 bytes).
    // Each refused for the whole test, none some other test's server.
    let refused: Vec<common::RefusedPort> = (0..21).map(|_| common::RefusedPort::new()).collect();
    let scratch = Scratch::new();
    let policy = pinning(&scratch, true, "");
    let image = ImageRef::parse(&format!("{}/team/app:v1", refused[20].host())).unwrap();
    let mut plan: Vec<Source> = refused[..20]
        .iter()
        .enumerate()
        .map(|(i, down)| Source {
            registry: down.host(),
            repository: format!("mirror{i}/team/app"),
            reference: PullRef::Tag("v1".to_string()),
            plain_http: true,
            note: "mirror".to_string(),
        })
        .collect();
    plan.push(Source::origin(&image));
    let resolution = policy.resolve_from(&image, &ctx(), plan);
    let Outcome::Deny { reason, .. } = &resolution.outcome else {
        panic!("{:?}", resolution.outcome);
    };
    assert!(reason.len() <= 2048, "{}", reason.len());
    assert!(reason.ends_with('…'), "{reason}");
    // The host answered 16 and refused the rest.
    let lookups = &resolution.steps[0].lookups;
    assert_eq!(lookups.len(), 17);
    assert!(matches!(lookups[16].outcome, LookupOutcome::Refused { .. }));
}

#[test]
fn pin_resolve_satisfies_require_digest_and_leaves_a_pinned_reference_alone() {
    let (server, digest) = registry(Duration::ZERO);
    let scratch = Scratch::new();
    let rules = format!("require-digest = [\"{}/**\"]", server.host());
    let policy = pinning(&scratch, true, &rules);
    let (image, plan) = image_on(&server);
    let resolution = policy.resolve_from(&image, &ctx(), plan.clone());
    assert!(
        matches!(&resolution.outcome, Outcome::Plan(s) if s[0].reference == PullRef::Digest(md(&digest))),
        "{:?}",
        resolution.outcome
    );
    // Already pinned: no look-up at all.
    let pinned = ImageRef::parse(&format!("{}/team/app:v1@{digest}", server.host())).unwrap();
    let before = server.requests().len();
    let resolution = policy.resolve_from(&pinned, &ctx(), vec![Source::origin(&pinned)]);
    assert!(matches!(resolution.outcome, Outcome::Plan(_)));
    assert!(resolution.steps[0].lookups.is_empty());
    assert_eq!(server.requests().len(), before);
}

#[test]
fn an_unknown_capability_is_a_config_error_naming_the_known_ones() {
    let scratch = Scratch::new();
    let path = scratch.write(
        "config.toml",
        "[[plugin]]\nname = \"pins\"\nbuiltin = \"tags\"\ncapabilities = [\"network\"]\n",
    );
    let err = Config::load(&ConfigSources::only(path)).unwrap_err();
    let shown = err.to_string();
    assert!(
        shown.contains("capability \"network\" is unknown; sifr grants: resolve-digest"),
        "{shown}"
    );
    assert!(err.location.is_some(), "{shown}");
}

#[test]
fn registry_settings_are_checked() {
    let scratch = Scratch::new();
    for (text, needle) in [
        (
            "[registry]\ntimeout = \"soon\"\n",
            "timeout = \"soon\" is not a duration",
        ),
        (
            "[registry]\ntimeout = \"0s\"\n",
            "timeout must be more than 0",
        ),
        (
            "[registry]\ndigest-ttl = \"x\"\n",
            "digest-ttl = \"x\" is not a duration",
        ),
        ("[registry]\nretries = 3\n", "unknown field `retries`"),
    ] {
        let path = scratch.write("config.toml", text);
        let err = Config::load(&ConfigSources::only(path)).unwrap_err();
        assert!(err.to_string().contains(needle), "{text}: {err}");
    }
    let path = scratch.write(
        "config.toml",
        "[registry]\ntimeout = \"3s\"\ndigest-ttl = \"1m\"\n",
    );
    let config = Config::load(&ConfigSources::only(path)).unwrap();
    assert_eq!(config.registry_timeout, Some(Duration::from_secs(3)));
    assert_eq!(config.digest_ttl, Some(Duration::from_secs(60)));
}

// ---- end to end: a real registry, the apptainer test double ----

fn pin_config(sifr: &e2e::Sifr, before: &str, ttl: &str) -> std::path::PathBuf {
    sifr.config(&format!(
        "[registry]\ndigest-ttl = \"{ttl}\"\n{before}\
         [[plugin]]\nname = \"pins\"\nbuiltin = \"tags\"\n{GRANT}\n[plugin.settings]\npin = \"resolve\"\n\
         [[plugin]]\nname = \"default\"\nbuiltin = \"default\"\n"
    ))
}

#[test]
#[cfg_attr(
    not(sifr_e2e),
    ignore = "end-to-end: install docker-registry skopeo umoci squashfs-tools siftool bubblewrap busybox-static, or set SIFR_E2E=1"
)]
fn a_pin_resolve_chain_pulls_by_the_digest_the_tag_names_now() {
    let origin = e2e::Registry::start(true);
    origin.push("1", "e2e/busybox", "1");
    let first = origin.digest("e2e/busybox", "1");
    let sifr = e2e::Sifr::new();
    let config = pin_config(&sifr, "", "0s");
    let config = config.to_str().unwrap();
    let image = format!("{}/e2e/busybox:1", origin.host());
    let sifr_cmd = |args: &[&str]| sifr.command(args).output().unwrap();

    let out = sifr_cmd(&["--config", config, "resolve", "--explain", &image]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains(&format!(
            "digest of {}/e2e/busybox:1 (amd64): {first}, from {} over HTTPS",
            origin.host(),
            origin.host()
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!("docker://{}/e2e/busybox@{first}", origin.host())),
        "{text}"
    );

    let out = sifr_cmd(&["--config", config, "pull", &image]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let argv = &pulls(&sifr.log)[0];
    assert_eq!(
        argv.last().unwrap(),
        &format!("docker://{}/e2e/busybox@{first}", origin.host())
    );
    assert_eq!(sifr.entries()[0]["manifest-digest"], first);

    // The tag moves: the next pull is of the new image, never the file
    // the old digest made.
    origin.push("2", "e2e/busybox", "1");
    let second = origin.digest("e2e/busybox", "1");
    assert_ne!(first, second);
    let out = sifr_cmd(&["--config", config, "pull", &image]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let all = pulls(&sifr.log);
    assert_eq!(all.len(), 2, "a new pull for the moved tag");
    assert_eq!(
        all[1].last().unwrap(),
        &format!("docker://{}/e2e/busybox@{second}", origin.host())
    );
    let mut digests: Vec<String> = sifr
        .entries()
        .iter()
        .map(|e| e["manifest-digest"].as_str().unwrap().to_string())
        .collect();
    digests.sort();
    let mut expected = vec![first, second];
    expected.sort();
    assert_eq!(digests, expected);
}

#[test]
#[cfg_attr(
    not(sifr_e2e),
    ignore = "end-to-end: install docker-registry skopeo umoci squashfs-tools siftool bubblewrap busybox-static, or set SIFR_E2E=1"
)]
fn with_the_origin_down_the_mirror_s_digest_is_pulled_from_the_mirror() {
    // The origin is down for the whole test: a port that refuses, not one
    // a stopped registry let go (another test's server may take that).
    let origin = common::RefusedPort::new();
    let origin_host = origin.host();
    let mirror = e2e::Registry::start(false);
    mirror.push("1", "e2e/busybox", "1");
    let digest = mirror.digest("e2e/busybox", "1");
    let sifr = e2e::Sifr::new();
    let mirrors = format!(
        "[[plugin]]\nname = \"site-mirror\"\nbuiltin = \"mirror\"\n[plugin.settings]\n\
         registries = [\"{origin_host}\"]\n[[plugin.settings.mirrors]]\nregistry = \"{}\"\nplain-http = true\n",
        mirror.host()
    );
    let config = pin_config(&sifr, &mirrors, "5m");
    let image = format!("{origin_host}/e2e/busybox:1");
    let out = sifr.sifr(&["--config", config.to_str().unwrap(), "pull", &image]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let argv = &pulls(&sifr.log)[0];
    assert_eq!(
        argv.last().unwrap(),
        &format!("docker://{}/e2e/busybox@{digest}", mirror.host())
    );
    assert!(argv.contains(&"--no-https".to_string()));
    let entry = &sifr.entries()[0];
    assert_eq!(entry["manifest-digest"], digest);
    assert_eq!(entry["image"], format!("{image}@{digest}"));
}

#[test]
fn step_json_carries_the_look_ups() {
    let (server, digest) = registry(Duration::ZERO);
    let scratch = Scratch::new();
    let policy = hostile(
        &scratch,
        "resolve",
        GRANT,
        "",
        GENEROUS,
        Duration::from_secs(5),
    );
    let (image, plan) = image_on(&server);
    let resolution = policy.resolve_from(&image, &ctx(), plan);
    let json = serde_json::to_value(&resolution.steps[0]).unwrap();
    let lookup = &json["lookups"][0];
    assert_eq!(lookup["result"], "resolved");
    assert_eq!(lookup["manifest-digest"], digest);
    assert_eq!(lookup["registry"], server.host());
    assert_eq!(lookup["from-cache"], false);
    assert!(matches!(
        resolution.steps[0].outcome,
        StepOutcome::Deny { .. }
    ));
}

#[test]
fn plugin_ls_shows_grants_and_plugin_check_can_grant() {
    let scratch = Scratch::new();
    let config = scratch.write(
        "config.toml",
        &format!(
            "[sandbox]\n{GENEROUS}\n[[plugin]]\nname = \"pins\"\nbuiltin = \"tags\"\n{GRANT}\n"
        ),
    );
    let config = config.to_str().unwrap();
    let out = scratch.sifr(&["--config", config, "plugin", "ls", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        json["plugins"][0]["capabilities"],
        serde_json::json!(["resolve-digest"])
    );
    assert_eq!(json["plugins"][0]["api-version"], "0.2.0");
    let out = scratch.sifr(&["--config", config, "plugin", "ls"]);
    assert!(
        stdout(&out).contains("granted:  resolve-digest"),
        "{}",
        stdout(&out)
    );

    // The offline harness: the same plugin, with and without the grant. A
    // registry that is down answers neither; only the grant makes sifr try.
    let refused = common::RefusedPort::new();
    let down = refused.port;
    let settings = scratch.write("settings.toml", "mode = \"resolve\"\n");
    let wasm = plugin_wasm("hostile");
    let image = format!("127.0.0.1:{down}/team/app:v1");
    let check = |grant: &[&str]| {
        let mut args = vec!["plugin", "check", wasm.to_str().unwrap()];
        args.extend_from_slice(&["--settings", settings.to_str().unwrap()]);
        // Not a test of the deadline (its default is 100 ms).
        args.extend_from_slice(&["--timeout-ms", "10000"]);
        args.extend_from_slice(grant);
        args.push(&image);
        let out = scratch.sifr(&args);
        format!("{}{}", stdout(&out), stderr(&out))
    };
    let without = check(&[]);
    assert!(
        without.contains("resolve-digest is not granted"),
        "{without}"
    );
    let with = check(&["--grant", "resolve-digest"]);
    assert!(!with.contains("not granted"), "{with}");
    assert!(
        with.contains(&format!("cannot reach registry 127.0.0.1:{down}")),
        "{with}"
    );
    let bad = scratch.sifr(&["plugin", "check", "--grant", "network", "x.wasm"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(
        stderr(&bad).contains("unknown capability; sifr grants: resolve-digest"),
        "{}",
        stderr(&bad)
    );
}

#[test]
fn what_a_plugin_asks_for_is_escaped_before_anyone_sees_it() {
    let (server, _) = registry(Duration::ZERO);
    let scratch = Scratch::new();
    // Terminal escapes and a bidi override in every argument.
    let settings = "registry = \"\\u001b[2Jevil\\u202e.example\"\n\
                    repository = \"team/\\u001b]0;title\\u0007app\"\n\
                    tag = \"v1\\r\"";
    let policy = hostile(
        &scratch,
        "resolve",
        GRANT,
        settings,
        GENEROUS,
        Duration::from_secs(5),
    );
    let (image, plan) = image_on(&server);
    let resolution = policy.resolve_from(&image, &ctx(), plan);
    let lookup = &resolution.steps[0].lookups[0];
    for text in [&lookup.registry, &lookup.repository, &lookup.tag] {
        assert!(
            !text.chars().any(|c| c.is_control() || c == '\u{202e}'),
            "{text:?}"
        );
    }
    let LookupOutcome::Refused { reason } = &lookup.outcome else {
        panic!("{:?}", lookup.outcome);
    };
    assert!(
        !reason.chars().any(|c| c.is_control() || c == '\u{202e}'),
        "{reason:?}"
    );
    assert!(server.requests().is_empty());
}
