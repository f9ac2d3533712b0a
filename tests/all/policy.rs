//! The policy chain as a library user meets it: config, loading, pinning,
//! chain order, settings and the compiled-plugin cache.

use crate::common;
use crate::components;

use common::{Scratch, entry, plugin_wasm, sha256_hex};
use sifr::policy::{ArtifactOrigin, CompileCache};
use sifr::{
    Config, ConfigSources, Context, Error, ImageRef, Outcome, PluginLoadError, Policy,
    PolicyOptions, Purpose,
};

fn load(scratch: &Scratch, toml: &str) -> Result<Policy, Error> {
    let path = scratch.write("config.toml", toml);
    let config = Config::load(&ConfigSources::only(path))?;
    Ok(Policy::load(&config, &PolicyOptions::default())?)
}

fn uris(policy: &Policy, image: &str) -> Vec<String> {
    let image = ImageRef::parse(image).unwrap();
    policy
        .resolve(&image, &Context::new(Purpose::Pull))
        .into_plan()
        .unwrap()
        .iter()
        .map(|s| s.uri())
        .collect()
}

const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

#[test]
fn default_chain_gives_the_seed_uri_form() {
    let config = Config::load(&ConfigSources::default()).unwrap();
    let policy = Policy::load(&config, &PolicyOptions::default()).unwrap();
    assert_eq!(
        uris(&policy, "ncbi/blast:2.14.0"),
        ["docker://ncbi/blast:2.14.0"]
    );
    assert_eq!(
        uris(&policy, &format!("ubuntu:22.04@{DIGEST}")),
        [format!("docker://ubuntu@{DIGEST}")]
    );
    assert_eq!(
        uris(&policy, "quay.io/biocontainers/blast:2.15.0"),
        ["docker://quay.io/biocontainers/blast:2.15.0"]
    );
    assert_eq!(
        uris(&policy, "localhost:5000/foo/bar:1.0"),
        ["docker://localhost:5000/foo/bar:1.0"]
    );
    assert_eq!(uris(&policy, "alpine"), ["docker://alpine:latest"]);
}

#[test]
fn a_local_sif_digest_is_never_used_as_a_pull_reference() {
    let config = Config::load(&ConfigSources::default()).unwrap();
    let policy = Policy::load(&config, &PolicyOptions::default()).unwrap();
    let image = ImageRef::parse("ncbi/blast:2.14.0").unwrap();
    let mut ctx = Context::new(Purpose::Run);
    ctx.local_sif_digest = Some(sifr::SifDigest::from_hex(&"f".repeat(64)).unwrap());
    let plan = policy.resolve(&image, &ctx).into_plan().unwrap();
    assert_eq!(plan.len(), 1);
    assert_eq!(plan[0].uri(), "docker://ncbi/blast:2.14.0");
}

#[test]
fn plugins_run_in_configured_order_each_seeing_the_previous_plan() {
    let scratch = Scratch::new();
    let mirror = |name: &str, host: &str| {
        format!(
            "[[plugin]]\nname = \"{name}\"\nbuiltin = \"mirror\"\n[plugin.settings]\n\
             registries = [\"docker.io\"]\n[[plugin.settings.mirrors]]\nregistry = \"{host}\"\n"
        )
    };
    let toml = format!(
        "{}{}[[plugin]]\nname = \"default\"\nbuiltin = \"default\"\n",
        mirror("first", "first.example"),
        mirror("second", "second.example:5000"),
    );
    let policy = load(&scratch, &toml).unwrap();
    // Each mirror plugin puts its mirror ahead of the plan it was given;
    // the default plugin then pins every source to the requested digest.
    assert_eq!(
        uris(&policy, &format!("ubuntu:22.04@{DIGEST}")),
        [
            format!("docker://second.example:5000/library/ubuntu@{DIGEST}"),
            format!("docker://first.example/library/ubuntu@{DIGEST}"),
            format!("docker://ubuntu@{DIGEST}"),
        ]
    );
    // Registries the mirrors do not cover keep their plan.
    assert_eq!(uris(&policy, "quay.io/a/b:1"), ["docker://quay.io/a/b:1"]);

    let image = ImageRef::parse("ubuntu:22.04").unwrap();
    let resolution = policy.resolve(&image, &Context::new(Purpose::Pull));
    let order: Vec<&str> = resolution.steps.iter().map(|s| s.plugin.as_str()).collect();
    assert_eq!(order, ["first", "second", "default"]);
}

#[test]
fn a_plugin_can_refuse_its_settings_and_loading_shows_why() {
    let scratch = Scratch::new();
    let toml = "[[plugin]]\nname = \"hub\"\nbuiltin = \"mirror\"\n[plugin.settings]\n\
                registries = [\"docker.io\"]\nmirrors = []\n";
    let err = load(&scratch, toml).unwrap_err();
    assert!(
        matches!(&err, Error::PluginLoad(PluginLoadError::SettingsRejected { plugin, message, .. })
            if plugin == "hub" && message.contains("`mirrors` is empty")),
        "{err}"
    );
    let toml = "[[plugin]]\nname = \"hub\"\nbuiltin = \"mirror\"\n[plugin.settings]\nmirrorz = 1\n";
    let err = load(&scratch, toml).unwrap_err().to_string();
    assert!(
        err.contains("refused its settings") && err.contains("mirrorz"),
        "{err}"
    );
    assert!(
        err.contains("fix [plugin.settings]"),
        "says what to do: {err}"
    );
}

#[test]
fn a_pin_mismatch_refuses_the_plugin_and_shows_both_hashes() {
    let scratch = Scratch::new();
    let wasm = plugin_wasm("mirror");
    let actual = sha256_hex(&wasm);
    let wrong = "ab".repeat(32);
    let err = load(
        &scratch,
        &entry("pinned", &wasm, &format!("sha256 = \"{wrong}\"")),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains(&wrong) && err.contains(&actual), "{err}");
    assert!(err.contains("update `sha256`"), "{err}");

    // The right pin loads (the mirror plugin then refuses its empty settings,
    // which proves it got past the pin check).
    let err = load(
        &scratch,
        &entry("pinned", &wasm, &format!("sha256 = \"{actual}\"")),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("refused its settings"), "{err}");
}

#[test]
fn unknown_builtins_and_missing_files_say_what_exists() {
    let scratch = Scratch::new();
    let err = load(
        &scratch,
        "[[plugin]]\nname = \"x\"\nbuiltin = \"mirrors\"\n",
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("unknown builtin \"mirrors\"") && err.contains("default, mirror"),
        "{err}"
    );
    let err = load(&scratch, "[[plugin]]\nname = \"x\"\npath = \"nope.wasm\"\n")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("nope.wasm") && err.contains("check the `path`"),
        "{err}"
    );
}

#[test]
fn compiled_plugins_are_cached_and_the_second_load_does_not_compile() {
    let scratch = Scratch::new();
    let cache = CompileCache::new(scratch.path().join("plugins"));
    let options = PolicyOptions {
        compile_cache: Some(cache.clone()),
        ..Default::default()
    };
    let config = Config::default();
    let first = Policy::load(&config, &options).unwrap();
    assert_eq!(first.plugins()[0].artifact, ArtifactOrigin::Compiled);
    let second = Policy::load(&config, &options).unwrap();
    assert_eq!(second.plugins()[0].artifact, ArtifactOrigin::CacheHit);
    assert_eq!(
        uris(&second, "ncbi/blast:2.14.0"),
        ["docker://ncbi/blast:2.14.0"]
    );

    // A damaged artifact is thrown away and compiled afresh, not trusted.
    let artifact = artifact_of(&cache, &second.plugins()[0]);
    // (Replaced by rename, as any careful writer does: the loaded policies
    // above still map the old file.)
    let damaged = artifact.with_extension("tmp");
    std::fs::write(&damaged, b"not native code").unwrap();
    std::fs::rename(&damaged, &artifact).unwrap();
    let third = Policy::load(&config, &options).unwrap();
    assert_eq!(third.plugins()[0].artifact, ArtifactOrigin::Compiled);
    assert_eq!(
        uris(&third, "ncbi/blast:2.14.0"),
        ["docker://ncbi/blast:2.14.0"]
    );

    // An artifact someone else could have written is never loaded.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&artifact, std::fs::Permissions::from_mode(0o666)).unwrap();
    let fourth = Policy::load(&config, &options).unwrap();
    assert_eq!(fourth.plugins()[0].artifact, ArtifactOrigin::Compiled);
}

#[test]
fn a_plugin_that_unpins_a_pinned_image_fails_by_name() {
    let scratch = Scratch::new();
    let wasm = plugin_wasm("hostile");
    let policy = load(
        &scratch,
        &entry("unpinner", &wasm, "[plugin.settings]\nmode = \"unpin\""),
    )
    .unwrap();
    let pinned = ImageRef::parse(&format!("ubuntu:22.04@{DIGEST}")).unwrap();
    let Outcome::Failed(f) = policy
        .resolve(&pinned, &Context::new(Purpose::Pull))
        .outcome
    else {
        panic!("a tag pull of a pinned image was planned");
    };
    assert_eq!(f.plugin, "unpinner");
    assert_eq!(
        f.kind,
        sifr::FailureKind::InvalidOutput(format!(
            "source #1 (docker://ubuntu:22.04) does not pull the pinned digest {DIGEST}; \
             a pinned image is pulled by its digest at every source"
        ))
    );
    // An image that was not pinned may be pulled by tag.
    assert_eq!(uris(&policy, "ubuntu:22.04"), ["docker://ubuntu:22.04"]);
}

/// A plugin built for contract 0.1.0 and frozen in the repository: it must
/// keep loading, through the version seam, whatever versions sifr adds.
#[test]
fn a_plugin_built_for_0_1_0_keeps_loading() {
    let scratch = Scratch::new();
    let wasm = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/plugins/default-v0.1.0.wasm");
    let policy = load(&scratch, &entry("frozen", &wasm, "")).unwrap();
    assert_eq!(policy.plugins()[0].api_version, "0.1.0");
    assert_eq!(
        uris(&policy, &format!("ubuntu:22.04@{DIGEST}")),
        [format!("docker://ubuntu@{DIGEST}")]
    );
    assert!(sifr::policy::api_versions().contains(&semver::Version::new(0, 1, 0)));
}

#[test]
fn contract_versions_are_accepted_by_semver_rules() {
    let scratch = Scratch::new();
    // A later patch of 0.1 is served by the 0.1 bindings.
    let patch = components::exporting_version(scratch.path(), "0.1.3");
    let policy = load(&scratch, &entry("patched", &patch, "")).unwrap();
    assert_eq!(policy.plugins()[0].api_version, "0.1.3");
    // A version this sifr does not speak is refused at load, by name.
    for version in ["0.3.0", "1.0.0"] {
        let wasm = components::exporting_version(scratch.path(), version);
        let err = load(&scratch, &entry("future", &wasm, "")).unwrap_err();
        assert!(
            matches!(
                err,
                Error::PluginLoad(PluginLoadError::WrongContract { .. })
            ),
            "{version}: {err}"
        );
        assert!(
            err.to_string().contains(&format!(
                "it was built for sifr:policy/policy@{version}, and this sifr speaks 0.1.0, 0.2.0"
            )),
            "{err}"
        );
    }
}

/// The artifact `plugin`'s native code came from, as the library says: the
/// cache holds several files named for one wasm (the plain artifact, the
/// configured snapshot, its logs, lock files), and which one a load uses is
/// the library's business, not the directory's order.
fn artifact_of(cache: &CompileCache, plugin: &sifr::policy::LoadedPlugin) -> std::path::PathBuf {
    let file = plugin
        .artifact_file()
        .expect("the plugin's artifact was kept")
        .to_path_buf();
    assert!(file.starts_with(cache.dir()), "{}", file.display());
    assert!(file.is_file(), "{}", file.display());
    file
}

#[test]
fn a_site_locked_plugin_is_never_loaded_from_the_compile_cache() {
    let scratch = Scratch::new();
    let cache = CompileCache::new(scratch.path().join("plugins"));
    let options = PolicyOptions {
        compile_cache: Some(cache.clone()),
        ..Default::default()
    };
    let tags =
        "[[plugin]]\nname = \"rules\"\nbuiltin = \"tags\"\n[plugin.settings]\ndeny-latest = true\n";
    // The user's runs leave artifacts for `tags` and `default`...
    let user_tags = Config::load(&ConfigSources::only(scratch.write("tags.toml", tags))).unwrap();
    let rules = Policy::load(&user_tags, &options).unwrap();
    let default = Policy::load(&Config::default(), &options).unwrap();
    let rules_artifact = artifact_of(&cache, &rules.plugins()[0]);
    let default_artifact = artifact_of(&cache, &default.plugins()[0]);
    // ...and the user puts the permissive plugin's native code where the
    // site's rule would be found.
    let tmp = scratch.path().join("swap");
    std::fs::copy(&default_artifact, &tmp).unwrap();
    std::fs::rename(&tmp, &rules_artifact).unwrap();

    let site = scratch.write(
        "site.toml",
        &tags.replace("builtin", "locked = true\nbuiltin"),
    );
    let sources = ConfigSources {
        site: Some(site),
        cli: Some(scratch.write("user.toml", "plugin = []\n")),
        ..ConfigSources::default()
    };
    let config = Config::load(&sources).unwrap();
    let policy = Policy::load(&config, &options).unwrap();
    let plugin = &policy.plugins()[0];
    assert!(plugin.locked);
    assert_eq!(
        plugin.artifact,
        ArtifactOrigin::Compiled,
        "never from the cache"
    );
    let image = ImageRef::parse("ubuntu").unwrap();
    let outcome = policy.resolve(&image, &Context::new(Purpose::Pull)).outcome;
    assert!(
        matches!(&outcome, Outcome::Deny { plugin, .. } if plugin == "rules"),
        "{outcome:?}"
    );
}

#[test]
fn artifacts_are_checked_on_the_descriptor_not_the_path() {
    use std::os::unix::fs::PermissionsExt;
    let scratch = Scratch::new();
    let cache = CompileCache::new(scratch.path().join("plugins"));
    let options = PolicyOptions {
        compile_cache: Some(cache.clone()),
        ..Default::default()
    };
    let config = Config::default();
    let first = Policy::load(&config, &options).unwrap();
    let artifact = artifact_of(&cache, &first.plugins()[0]);
    let origin = || Policy::load(&config, &options).unwrap().plugins()[0].artifact;
    assert_eq!(origin(), ArtifactOrigin::CacheHit);

    // A symlink in place of the artifact, even to a good copy, is not
    // followed.
    let elsewhere = scratch.path().join("elsewhere.cwasm");
    std::fs::copy(&artifact, &elsewhere).unwrap();
    std::fs::remove_file(&artifact).unwrap();
    std::os::unix::fs::symlink(&elsewhere, &artifact).unwrap();
    assert_eq!(origin(), ArtifactOrigin::Compiled);
    assert!(
        !artifact.is_symlink(),
        "the symlink was replaced by a fresh artifact"
    );
    assert_eq!(origin(), ArtifactOrigin::CacheHit);

    // An artifact another user owns is not loaded.
    if rustix::process::geteuid().is_root() {
        std::os::unix::fs::chown(&artifact, Some(65534), Some(65534)).unwrap();
        assert_eq!(origin(), ArtifactOrigin::Compiled);
        assert_eq!(origin(), ArtifactOrigin::CacheHit);
    }

    // A directory others may look into or write is not used at all.
    std::fs::set_permissions(cache.dir(), std::fs::Permissions::from_mode(0o770)).unwrap();
    assert_eq!(origin(), ArtifactOrigin::Compiled);
    assert_eq!(origin(), ArtifactOrigin::Compiled);

    // Nor is a directory that is a symlink to a private one.
    std::fs::set_permissions(cache.dir(), std::fs::Permissions::from_mode(0o700)).unwrap();
    assert_eq!(origin(), ArtifactOrigin::CacheHit);
    let link = scratch.path().join("link");
    std::os::unix::fs::symlink(cache.dir(), &link).unwrap();
    let linked = PolicyOptions {
        compile_cache: Some(CompileCache::new(&link)),
        ..Default::default()
    };
    let via_link = Policy::load(&config, &linked).unwrap();
    assert_eq!(via_link.plugins()[0].artifact, ArtifactOrigin::Compiled);
}

#[test]
fn a_shared_cache_root_keeps_no_native_code() {
    use std::os::unix::fs::PermissionsExt;
    let scratch = Scratch::new();
    let private = scratch.path().join("mine");
    std::fs::create_dir(&private).unwrap();
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o755)).unwrap();
    assert_eq!(
        CompileCache::for_cache_root(&private).unwrap().dir(),
        private.join("plugins")
    );
    let shared = scratch.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o2775)).unwrap();
    let chosen = CompileCache::for_cache_root(&shared);
    assert!(
        chosen
            .as_ref()
            .is_none_or(|c| !c.dir().starts_with(&shared)),
        "{chosen:?}"
    );
}

#[test]
fn a_denial_names_the_plugin_and_its_reason() {
    let scratch = Scratch::new();
    let wasm = plugin_wasm("hostile");
    let policy = load(
        &scratch,
        &entry("gatekeeper", &wasm, "[plugin.settings]\nmode = \"deny\""),
    )
    .unwrap();
    let image = ImageRef::parse("ubuntu:latest").unwrap();
    let resolution = policy.resolve(&image, &Context::new(Purpose::Pull));
    assert!(
        matches!(&resolution.outcome, Outcome::Deny { plugin, reason }
        if plugin == "gatekeeper" && reason == "hostile plugin says no")
    );
    let err = Error::from(resolution.into_plan().unwrap_err());
    assert!(matches!(err, Error::Deny { .. }));
    assert_eq!(
        err.to_string(),
        "docker.io/library/ubuntu:latest was denied by plugin 'gatekeeper': hostile plugin says no"
    );
}
