//! The site store: site-locked plugins compiled by `sifr site prepare` into
//! a directory only root can write, and loaded from there. Every way of
//! getting untrusted or wrong native code into it is attacked here, and
//! each attack ends in a plugin compiled now (never an error), with the
//! reason said.

use crate::common;
use crate::components;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{Scratch, plugin_wasm};
use sifr::policy::{ArtifactOrigin, LoadedPlugin, PolicyEngine};
use sifr::{
    Config, ConfigSources, Context, Error, FailureKind, ImageRef, Outcome, Policy, PolicyOptions,
    Purpose,
};

/// A place for a site store whose every level up to `/` is root's and
/// writable by no one else, as a real one must be. TMPDIR will not do
/// (`/tmp` is writable by anyone), so it is a fresh private directory
/// under `/var/cache`, removed on drop. `None` when not root and
/// `SIFR_E2E=1` is not set; under `SIFR_E2E=1`, not being root fails.
struct Site {
    base: tempfile::TempDir,
    scratch: Scratch,
}

impl Site {
    fn new() -> Option<Self> {
        if !rustix::process::geteuid().is_root() {
            assert!(
                !std::env::var("SIFR_E2E").is_ok_and(|v| v == "1"),
                "the site store tests need root (a site store is root's): run them as root"
            );
            eprintln!("skipped: not root (SIFR_E2E=1 makes this a failure)");
            return None;
        }
        let base = tempfile::Builder::new()
            .prefix("sifr-test-site-")
            .tempdir_in("/var/cache")
            .expect("a private directory under /var/cache");
        Some(Self {
            base,
            scratch: Scratch::new(),
        })
    }

    fn store(&self) -> PathBuf {
        self.base.path().join("store")
    }

    /// A site config whose store is this one, with `body` after it.
    fn config(&self, body: &str) -> PathBuf {
        let text = format!("[site]\nstore = \"{}\"\n{body}", self.store().display());
        self.scratch.write("site.toml", &text)
    }

    /// The combined config: this site file, then `user` as a `--config`.
    fn load(&self, body: &str, user: Option<&str>) -> Config {
        let site = self.config(body);
        let cli = user.map(|text| self.scratch.write("user.toml", text));
        Config::load(&ConfigSources {
            site: Some(site),
            cli,
            ..ConfigSources::default()
        })
        .unwrap()
    }

    /// `sifr site prepare` for `body`, as the library does it.
    fn prepare(&self, body: &str) -> Vec<sifr::policy::PreparedPlugin> {
        Policy::prepare_site(&self.load(body, None), &self.options()).unwrap()
    }

    /// Options as a user's process has them: a compile cache of their own.
    fn options(&self) -> PolicyOptions {
        PolicyOptions {
            compile_cache: Some(sifr::policy::CompileCache::new(
                self.scratch.path().join("plugins"),
            )),
            ..PolicyOptions::default()
        }
    }

    /// Load `body`'s chain as a user's process does.
    fn policy(&self, body: &str) -> Policy {
        Policy::load(&self.load(body, None), &self.options()).unwrap()
    }
}

/// A site-locked `tags` plugin that denies `:latest` (or not).
fn rules(deny_latest: bool) -> String {
    format!(
        "[[plugin]]\nname = \"rules\"\nbuiltin = \"tags\"\nlocked = true\n\
         [plugin.settings]\ndeny-latest = {deny_latest}\n"
    )
}

/// A site-locked `mirror` plugin.
fn mirror() -> String {
    "[[plugin]]\nname = \"hub\"\nbuiltin = \"mirror\"\nlocked = true\n\
     [plugin.settings]\nregistries = [\"docker.io\"]\n\
     [[plugin.settings.mirrors]]\nregistry = \"harbor.example.org\"\nprefix = \"hub\"\n"
        .to_string()
}

fn outcome(policy: &Policy, image: &str) -> Outcome {
    let image = ImageRef::parse(image).unwrap();
    policy.resolve(&image, &Context::new(Purpose::Pull)).outcome
}

fn denies_latest(policy: &Policy) -> bool {
    matches!(outcome(policy, "ubuntu:latest"), Outcome::Deny { plugin, .. } if plugin == "rules")
}

fn only(policy: &Policy) -> &LoadedPlugin {
    assert_eq!(policy.plugins().len(), 1);
    &policy.plugins()[0]
}

/// Compiled now, not from the store, with a reason that says `why`.
fn assert_compiled_because(plugin: &LoadedPlugin, why: &str) {
    assert_eq!(plugin.artifact, ArtifactOrigin::Compiled, "{}", plugin.name);
    let miss = plugin.site_store_miss().expect("the reason is said");
    assert!(miss.contains(why), "{miss}");
}

#[test]
fn a_prepared_site_plugin_loads_from_the_site_store_and_decides_as_before() {
    let Some(site) = Site::new() else { return };
    let body = rules(true);
    let prepared = site.prepare(&body);
    assert_eq!(prepared.len(), 1);
    assert!(prepared[0].compiled_now);
    assert_eq!(prepared[0].configure, "once");
    let artifact = prepared[0].artifact.clone().unwrap();
    assert!(artifact.starts_with(site.store()), "{}", artifact.display());
    // Users read it: the store and its files are world-readable, whatever
    // root's umask.
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&site.store()), 0o755);
    assert_eq!(mode(&artifact), 0o644);

    let policy = site.policy(&body);
    let plugin = only(&policy);
    assert_eq!(plugin.artifact, ArtifactOrigin::SiteStore);
    assert_eq!(plugin.artifact_file(), Some(artifact.as_path()));
    assert!(plugin.configured_once(), "from the configured snapshot");
    assert_eq!(policy.site_store_misses().count(), 0);
    assert!(denies_latest(&policy));

    // Prepared again, nothing is compiled.
    assert!(!site.prepare(&body)[0].compiled_now);
}

#[test]
fn without_a_store_a_site_plugin_is_compiled_now_and_the_reason_said() {
    let Some(site) = Site::new() else { return };
    let policy = site.policy(&rules(true));
    let plugin = only(&policy);
    assert_compiled_because(
        plugin,
        &format!("there is no site store at {}", site.store().display()),
    );
    assert!(!plugin.configured_once(), "as before the store existed");
    assert!(denies_latest(&policy), "and it still decides");
    let misses: Vec<_> = policy.site_store_misses().collect();
    assert_eq!(misses.len(), 1);
    assert_eq!(misses[0].0, "rules");
    // Nothing was written into the store by a user's load.
    assert!(!site.store().exists());
}

#[test]
fn a_user_plugin_never_reads_the_site_store() {
    let Some(site) = Site::new() else { return };
    let body = rules(true);
    site.prepare(&body);
    // The same plugin and settings from the user's config: the user's own
    // cache, never the site's store.
    let user = rules(true).replace("locked = true\n", "");
    let config = site.load("", Some(&user));
    let policy = Policy::load(&config, &site.options()).unwrap();
    let plugin = only(&policy);
    assert!(!plugin.locked);
    assert_ne!(plugin.artifact, ArtifactOrigin::SiteStore);
    assert!(plugin.site_store_miss().is_none());
}

#[test]
fn a_store_owned_by_a_user_is_not_loaded() {
    let Some(site) = Site::new() else { return };
    let body = rules(true);
    let artifact = site.prepare(&body)[0].artifact.clone().unwrap();
    std::os::unix::fs::chown(site.store(), Some(65534), None).unwrap();
    assert_compiled_because(only(&site.policy(&body)), "owned by uid 65534, not root");
    std::os::unix::fs::chown(site.store(), Some(0), None).unwrap();
    assert_eq!(
        only(&site.policy(&body)).artifact,
        ArtifactOrigin::SiteStore
    );

    // Nor an artifact a user owns, in a store that is root's.
    std::os::unix::fs::chown(&artifact, Some(65534), None).unwrap();
    assert_compiled_because(only(&site.policy(&body)), "has no artifact for it");
}

#[test]
fn a_group_or_world_writable_level_anywhere_in_the_path_is_not_loaded() {
    let Some(site) = Site::new() else { return };
    let body = rules(true);
    let artifact = site.prepare(&body)[0].artifact.clone().unwrap();
    let set = |p: &Path, mode: u32| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap()
    };
    for (level, writable) in [
        (site.base.path().to_path_buf(), 0o770),
        (site.base.path().to_path_buf(), 0o703),
        (site.store(), 0o775),
        (site.store(), 0o757),
        // Sticky and world-writable, as /tmp is: still not root's alone.
        (site.store(), 0o1777),
    ] {
        let before = std::fs::metadata(&level).unwrap().permissions().mode() & 0o7777;
        set(&level, writable);
        assert_compiled_because(
            only(&site.policy(&body)),
            &format!("{}: writable by its group or others", level.display()),
        );
        set(&level, before);
        assert_eq!(
            only(&site.policy(&body)).artifact,
            ArtifactOrigin::SiteStore
        );
    }
    // A group-writable artifact is not loaded either.
    set(&artifact, 0o664);
    assert_compiled_because(only(&site.policy(&body)), "has no artifact for it");
}

#[test]
fn a_symlink_in_place_of_an_artifact_or_a_directory_is_not_followed() {
    let Some(site) = Site::new() else { return };
    let body = rules(true);
    let artifact = site.prepare(&body)[0].artifact.clone().unwrap();
    // The artifact: a symlink to a good copy, with its sidecar intact.
    let copy = site.base.path().join("copy.cwasm");
    std::fs::copy(&artifact, &copy).unwrap();
    std::fs::rename(&artifact, site.base.path().join("moved.cwasm")).unwrap();
    std::os::unix::fs::symlink(&copy, &artifact).unwrap();
    assert_compiled_because(only(&site.policy(&body)), "has no artifact for it");

    // A directory: the store itself a symlink to a store that is fine.
    let body = mirror();
    site.prepare(&body);
    let real = site.base.path().join("real-store");
    std::fs::rename(site.store(), &real).unwrap();
    std::os::unix::fs::symlink(&real, site.store()).unwrap();
    assert_compiled_because(only(&site.policy(&body)), "is a symlink or not a directory");
}

#[test]
fn an_artifact_renamed_to_another_plugins_name_is_not_loaded() {
    let Some(site) = Site::new() else { return };
    let strict = rules(true);
    let lax = rules(false);
    let strict_artifact = site.prepare(&strict)[0].artifact.clone().unwrap();
    let lax_artifact = site.prepare(&lax)[0].artifact.clone().unwrap();
    assert_ne!(strict_artifact, lax_artifact);
    let id = |p: &Path| PathBuf::from(format!("{}.id", p.display()));

    // The strict plugin's code under the lax one's name...
    std::fs::rename(&strict_artifact, &lax_artifact).unwrap();
    let policy = site.policy(&lax);
    assert_compiled_because(only(&policy), "has no artifact for it");
    assert!(!denies_latest(&policy), "the lax settings decide");

    // ...and with its sidecar too.
    let strict_artifact = site.prepare(&strict)[0].artifact.clone().unwrap();
    std::fs::rename(&strict_artifact, &lax_artifact).unwrap();
    std::fs::rename(id(&strict_artifact), id(&lax_artifact)).unwrap();
    let policy = site.policy(&lax);
    assert_compiled_because(only(&policy), "has no artifact for it");
    assert!(!denies_latest(&policy), "the lax settings decide");

    // A copy under its own name is not the file prepare left either.
    let lax_artifact = site.prepare(&lax)[0].artifact.clone().unwrap();
    let copy = site.base.path().join("copy");
    std::fs::copy(&lax_artifact, &copy).unwrap();
    std::fs::rename(&copy, &lax_artifact).unwrap();
    assert_compiled_because(only(&site.policy(&lax)), "has no artifact for it");
}

#[test]
fn an_artifact_made_for_other_settings_is_not_loaded() {
    let Some(site) = Site::new() else { return };
    site.prepare(&rules(true));
    let policy = site.policy(&rules(false));
    assert_compiled_because(only(&policy), "as configured now");
    assert!(!denies_latest(&policy), "the settings of now decide");
}

#[test]
fn an_artifact_for_another_engine_is_not_loaded() {
    let Some(site) = Site::new() else { return };
    let body = rules(true);
    let artifact = site.prepare(&body)[0].artifact.clone().unwrap();
    // A process whose engine differs (another memory budget, as another
    // sifr build would) does not find it under its own name...
    let other = PolicyOptions {
        engine: Some(PolicyEngine::new(256 << 20).unwrap()),
        ..site.options()
    };
    let config = site.load(&body, None);
    let policy = Policy::load(&config, &other).unwrap();
    assert_compiled_because(only(&policy), "this sifr build and memory budget");

    // ...and one renamed to its name, sidecar rewritten as root could, is
    // refused by the engine's own check rather than run.
    let prepared_other = Policy::prepare_site(&config, &other).unwrap();
    let other_artifact = prepared_other[0].artifact.clone().unwrap();
    assert_ne!(other_artifact, artifact);
    std::fs::copy(&artifact, &other_artifact).unwrap();
    let stat = rustix::fs::stat(&other_artifact).unwrap();
    let name = other_artifact.file_name().unwrap().to_str().unwrap();
    std::fs::write(
        format!("{}.id", other_artifact.display()),
        format!(
            "{name} {} {} {} {}.{} {}.{}\n",
            stat.st_dev,
            stat.st_ino,
            stat.st_size,
            stat.st_mtime,
            stat.st_mtime_nsec,
            stat.st_ctime,
            stat.st_ctime_nsec
        ),
    )
    .unwrap();
    let policy = Policy::load(&config, &other).unwrap();
    assert_compiled_because(only(&policy), "has no artifact for it");
    assert!(denies_latest(&policy));
}

#[test]
fn a_users_config_cannot_name_another_store() {
    let Some(site) = Site::new() else { return };
    let site_file = site.config(&rules(true));
    for (layer, sources) in [
        (
            "cli",
            ConfigSources {
                site: Some(site_file.clone()),
                cli: Some(
                    site.scratch
                        .write("user.toml", "[site]\nstore = \"/home/me/s\"\n"),
                ),
                ..ConfigSources::default()
            },
        ),
        (
            "env",
            ConfigSources {
                site: Some(site_file.clone()),
                env: Some(site.scratch.write("env.toml", "[site]\n")),
                ..ConfigSources::default()
            },
        ),
        (
            "user",
            ConfigSources {
                site: Some(site_file.clone()),
                user: Some(site.scratch.write("xdg.toml", "[site]\nstore = \"/s\"\n")),
                ..ConfigSources::default()
            },
        ),
    ] {
        let err = Config::load(&sources).unwrap_err();
        assert!(
            err.to_string()
                .contains("[site] is only honoured in the site config"),
            "{layer}: {err}"
        );
        assert!(err.location.is_some(), "{layer}: line and column: {err}");
    }
    // A relative store in the site file is refused too: it would depend on
    // the directory sifr runs in.
    let relative = site
        .scratch
        .write("rel.toml", "[site]\nstore = \"store\"\n");
    let err = Config::load(&ConfigSources {
        site: Some(relative),
        ..ConfigSources::default()
    })
    .unwrap_err();
    assert!(
        err.to_string().contains("must be an absolute path"),
        "{err}"
    );
}

#[test]
fn prepare_refuses_an_unsafe_store_and_says_how_to_fix_it() {
    let Some(site) = Site::new() else { return };
    std::fs::set_permissions(site.base.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let err = Policy::prepare_site(&site.load(&rules(true), None), &site.options()).unwrap_err();
    let err = Error::from(err);
    assert!(matches!(err, Error::SiteStore { .. }), "{err}");
    let shown = err.to_string();
    assert!(shown.contains("writable by its group or others"), "{shown}");
    assert!(shown.contains("chmod go-w"), "{shown}");
}

// ---------------------------------------------------------------------------
// The sandbox's limits hold for code from the store as for code compiled now.

/// The hostile plugin, site-locked in `mode`, loaded from the store.
fn hostile_from_store(site: &Site, mode: &str, timeout_ms: u64) -> Policy {
    let wasm = plugin_wasm("hostile");
    let body = format!(
        "[sandbox]\ntimeout-ms = {timeout_ms}\n[[plugin]]\nname = \"rogue\"\npath = \"{}\"\n\
         locked = true\nsha256 = \"{}\"\n[plugin.settings]\nmode = \"{mode}\"\n",
        wasm.display(),
        common::sha256_hex(&wasm)
    );
    site.prepare(&body);
    let policy = site.policy(&body);
    assert_eq!(only(&policy).artifact, ArtifactOrigin::SiteStore, "{mode}");
    policy
}

fn failure_of(policy: &Policy) -> sifr::PluginFailure {
    match outcome(policy, "ncbi/blast:2.14.0") {
        Outcome::Failed(failure) => failure,
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_loop_from_the_store_hits_the_deadline() {
    let Some(site) = Site::new() else { return };
    let policy = hostile_from_store(&site, "loop", 100);
    let failure = failure_of(&policy);
    assert_eq!(failure.function, "decide");
    assert_eq!(
        failure.kind,
        FailureKind::Timeout(Duration::from_millis(100))
    );
}

#[test]
fn a_sleep_from_the_store_is_stopped_at_the_deadline() {
    let Some(site) = Site::new() else { return };
    let policy = hostile_from_store(&site, "sleep", 200);
    let failure = failure_of(&policy);
    assert_eq!(failure.function, "decide");
    assert_eq!(
        failure.kind,
        FailureKind::Blocked(Duration::from_millis(200))
    );
}

#[test]
fn a_memory_hog_from_the_store_hits_the_memory_cap() {
    let Some(site) = Site::new() else { return };
    let policy = hostile_from_store(&site, "memory-hog", 10_000);
    assert_eq!(
        failure_of(&policy).kind,
        FailureKind::OutOfMemory {
            limit_bytes: 64 << 20
        }
    );
}

#[test]
fn output_from_the_store_is_captured_and_capped() {
    let Some(site) = Site::new() else { return };
    let policy = hostile_from_store(&site, "chatty", 10_000);
    let image = ImageRef::parse("ncbi/blast:2.14.0").unwrap();
    let resolution = policy.resolve(&image, &Context::new(Purpose::Pull));
    let logs = &resolution.steps[0].logs;
    assert_eq!(
        logs.len(),
        257,
        "256 lines and one saying how many were dropped"
    );
    assert!(
        logs[256]
            .message
            .starts_with("9746 more log lines were dropped")
    );

    let policy = hostile_from_store(&site, "huge-string", 10_000);
    assert!(matches!(
        failure_of(&policy).kind,
        FailureKind::OutOfMemory { .. }
    ));
}

#[test]
fn a_component_over_the_table_limits_never_reaches_the_store() {
    let Some(site) = Site::new() else { return };
    let wasm = components::many_tables(site.scratch.path(), 100, 1_000);
    let body = format!(
        "[[plugin]]\nname = \"tables\"\npath = \"{}\"\nlocked = true\n",
        wasm.display()
    );
    let err = Policy::prepare_site(&site.load(&body, None), &site.options()).unwrap_err();
    assert!(
        err.to_string().contains("more than 64 tables"),
        "the same limit as for a plugin compiled now: {err}"
    );
}

// ---------------------------------------------------------------------------
// The CLI, as users and admins meet it.

/// `sifr ARGS` on a node whose `/etc/sifr/config.toml` is `site`: `/etc` is
/// overlaid in a private mount namespace (its upper layer on a tmpfs there),
/// so the site file is read from its real, fixed path and nothing on the
/// host changes.
fn sifr_on_node(site: &Site, config: &Path, args: &[&str]) -> std::process::Output {
    let mount = site.scratch.path().join("etc-layer");
    std::fs::create_dir_all(&mount).unwrap();
    let cmd = site.scratch.command();
    let program = cmd.get_program().to_owned();
    let envs: Vec<_> = cmd
        .get_envs()
        .map(|(k, v)| (k.to_owned(), v.map(ToOwned::to_owned)))
        .collect();
    let mut unshare = std::process::Command::new("unshare");
    unshare
        .args(["--mount", "--propagation", "private", "sh", "-ec"])
        .arg(
            "t=$0; site=$1; shift\n\
             mount -t tmpfs tmpfs \"$t\"\n\
             mkdir -p \"$t/upper/sifr\" \"$t/work\"\n\
             cp \"$site\" \"$t/upper/sifr/config.toml\"\n\
             mount -t overlay overlay -o \"lowerdir=/etc,upperdir=$t/upper,workdir=$t/work\" /etc\n\
             exec \"$@\"",
        )
        .arg(&mount)
        .arg(config)
        .arg(program)
        .args(args);
    for (key, value) in envs {
        match value {
            Some(value) => unshare.env(key, value),
            None => unshare.env_remove(key),
        };
    }
    unshare.output().expect("running unshare (util-linux)")
}

#[test]
#[cfg_attr(
    not(sifr_e2e),
    ignore = "needs root, unshare(1) and overlayfs for a private /etc: run with SIFR_E2E=1"
)]
fn the_cli_warns_once_until_the_admin_prepares_then_loads_from_the_store() {
    let Some(site) = Site::new() else { return };
    let config = site.config(&format!("[sandbox]\ntimeout-ms = 10000\n{}", rules(true)));
    let out = |args: &[&str]| {
        let out = sifr_on_node(&site, &config, args);
        (
            out.status.code(),
            common::stdout(&out),
            common::stderr(&out),
        )
    };

    // Not prepared: it works, slowly, and one line says what to do.
    let (code, stdout, stderr) = out(&["resolve", "ubuntu:22.04"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(stdout, "docker://ubuntu:22.04\n");
    assert_eq!(stderr.lines().count(), 1, "one warning line: {stderr}");
    assert!(
        stderr.starts_with("sifr: warning: site-locked plugin 'rules' compiled in this process")
            && stderr.contains("there is no site store at")
            && stderr.contains("`sudo sifr site prepare`"),
        "{stderr}"
    );
    let (_, stdout, _) = out(&["plugin", "ls"]);
    assert!(
        stdout
            .contains("   code:     compiled now, not from the site store: there is no site store"),
        "{stdout}"
    );

    // The admin prepares, from the site file at its real path.
    let (code, stdout, stderr) = out(&["site", "prepare"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.starts_with("compiled: 'rules' ("), "{stdout}");
    assert!(
        stdout.ends_with(&format!(
            "1 site-locked plugin ready in {}: users' processes load it from there\n",
            site.store().display()
        )),
        "{stdout}"
    );

    // From then on: the store, no warning, the same decisions.
    let (code, stdout, stderr) = out(&["resolve", "ubuntu:22.04"]);
    assert_eq!(
        (code, stdout.as_str(), stderr.as_str()),
        (Some(0), "docker://ubuntu:22.04\n", "")
    );
    let (code, _, stderr) = out(&["resolve", "ubuntu"]);
    assert_eq!(code, Some(4), "{stderr}");
    let (_, stdout, _) = out(&["plugin", "ls"]);
    assert!(
        stdout.contains("   code:     from the site store ("),
        "{stdout}"
    );
    let (_, stdout, _) = out(&["plugin", "ls", "--json"]);
    let json: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(json["plugins"][0]["artifact"], "site-store");
    assert_eq!(
        json["plugins"][0]["site-store-miss"],
        serde_json::Value::Null
    );

    // A user's config that names another store is refused, naming the rule.
    let user = site
        .scratch
        .write("mine.toml", "[site]\nstore = \"/home/me/store\"\n");
    let (code, _, stderr) = out(&["--config", user.to_str().unwrap(), "plugin", "ls"]);
    assert_eq!(code, Some(3), "{stderr}");
    assert!(
        stderr.contains("[site] is only honoured in the site config"),
        "{stderr}"
    );

    // Prepare as a user is refused, and says why.
    let open = tempfile::tempdir().unwrap();
    std::fs::set_permissions(open.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let staged = open.path().join("site.toml");
    std::fs::copy(&config, &staged).unwrap();
    std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut as_nobody = std::process::Command::new("setpriv");
    common::hermetic(&mut as_nobody, open.path())
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(env!("CARGO_BIN_EXE_sifr"))
        .args(["site", "prepare", "--site-config"])
        .arg(&staged);
    let out = as_nobody.output().expect("running setpriv (util-linux)");
    assert_eq!(out.status.code(), Some(1), "{}", common::stderr(&out));
    assert!(
        common::stderr(&out).contains("only root may write it")
            && common::stderr(&out).contains("sudo sifr site prepare"),
        "{}",
        common::stderr(&out)
    );
}
