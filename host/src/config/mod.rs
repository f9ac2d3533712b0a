//! sifr's TOML config: where it comes from and how the layers combine.
//!
//! Layers, read in this order (each optional unless named explicitly):
//!
//! 1. site: `/etc/sifr/config.toml`
//! 2. user: `$XDG_CONFIG_HOME/sifr/config.toml` (`~/.config/sifr/config.toml`)
//! 3. env: `$SIFR_CONFIG` (must exist when set); the CLI reads the variable
//!    and passes it to [`ConfigSources::standard`]
//! 4. cli: `--config FILE` (must exist when given)
//!
//! How they combine:
//!
//! - `[sandbox]` keys: a later layer overrides an earlier one, key by key.
//!   Site-locked plugins run under the site file's `[sandbox]` alone.
//! - `[[plugin]]`: the chain is the `[[plugin]]` list of the *last* layer that
//!   has one (`plugin = []` is an empty chain). Layers replace chains rather
//!   than append to them so that a user can reason about their chain.
//! - Plugins marked `locked = true` in the *site* layer cannot be removed: they
//!   run after every plugin of the winning layer, in site order, so the site
//!   has the last word on every plan. `locked` in any other layer is an error.
//! - With no `[[plugin]]` anywhere, the chain is the built-in default plugin.
//!
//! Unknown keys are errors with file, line and column, never ignored.
//!
//! - [`file`]: one file's TOML, parsed strictly; standalone settings files.
//! - [`layers`]: which files are read, and how their layers combine
//!   (site-locked plugins and limits included).
//! - [`plugin_spec`]: one `[[plugin]]` entry, checked, as a [`PluginSpec`].

mod file;
mod layers;
mod plugin_spec;

use std::path::PathBuf;
use std::time::Duration;

pub use file::{load_settings_file, toml_to_json};
pub use layers::{ConfigSources, Layer};
pub use plugin_spec::{Capability, OnError, PluginSource, PluginSpec};

/// The site config, which can lock plugins into every chain.
pub const SITE_CONFIG: &str = "/etc/sifr/config.toml";

/// Where `sifr site prepare` keeps compiled site-locked plugins, unless
/// the site config's `[site] store` says otherwise: regenerable data of the
/// package, so under `/var/cache` (FHS 5.5).
pub const SITE_STORE: &str = "/var/cache/sifr/plugins";

/// A config file problem, with its location when there is one.
#[derive(Debug, thiserror::Error)]
#[error("{}{}: {message}", path.display(), location.map(|(l, c)| format!(":{l}:{c}")).unwrap_or_default())]
pub struct ConfigError {
    pub path: PathBuf,
    /// 1-based line and column.
    pub location: Option<(usize, usize)>,
    pub message: String,
}

/// Sandbox limits for every plugin call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SandboxLimits {
    /// Wall-clock deadline of one call (`configure` or `decide`).
    pub timeout: Duration,
    /// Linear memory a plugin instance may grow to.
    pub memory_bytes: usize,
}

impl Default for SandboxLimits {
    fn default() -> Self {
        Self {
            timeout: Duration::from_millis(100),
            memory_bytes: 64 << 20,
        }
    }
}

/// The combined config.
#[derive(Debug, Clone)]
pub struct Config {
    /// The limits of every plugin the site did not lock: all layers' `[sandbox]`
    /// keys, the later overriding the earlier.
    pub sandbox: SandboxLimits,
    /// The limits of site-locked plugins: the site file's `[sandbox]` alone.
    /// No other layer can lower them (to make a fail-open site plugin time
    /// out and be skipped) or raise them.
    pub site_sandbox: SandboxLimits,
    pub plugins: Vec<PluginSpec>,
    /// `[apptainer] path`: the apptainer (or singularity) binary.
    pub apptainer: Option<PathBuf>,
    /// `[apptainer] pull-timeout`: the limit on one pull attempt.
    pub pull_timeout: Option<Duration>,
    /// `[cache] dir`: the SIF cache (`$SIFR_CACHE_DIR` overrides it).
    pub cache_dir: Option<PathBuf>,
    /// `[cache] trusted-owners`, as uids: whose records and blobs a shared
    /// cache may use besides your own (see [`crate::cache::Trust`]). A later
    /// layer's list replaces an earlier one's.
    pub trusted_owners: Vec<u32>,
    /// `[registry] timeout`: the limit on one digest look-up at a registry
    /// (every request of it together). Default 5 s.
    pub registry_timeout: Option<Duration>,
    /// `[registry] digest-ttl`: how long a tag's digest is kept in the
    /// per-user digest cache. Default 5 minutes; `"0s"` keeps none.
    pub digest_ttl: Option<Duration>,
    /// `[registry] stale-if-error`: how long past `digest-ttl` a cached
    /// digest may answer for a registry that cannot answer now (no
    /// connection, a timeout, HTTP 429 or 5xx), shown as stale. Default
    /// zero: never. For the plugins the site did not lock.
    pub stale_if_error: Duration,
    /// The same, for site-locked plugins: the site file's alone, so no
    /// user layer relaxes a locked rule's pins.
    pub site_stale_if_error: Duration,
    /// `[site] store`: where site-locked plugins are loaded from, compiled
    /// (see `sifr site prepare`). Only the site file may set it.
    pub site_store: PathBuf,
    /// `[site] user-capabilities`: the host capabilities that a plugin the
    /// site did not declare may be granted (by a user's config, or `sifr
    /// plugin check --grant`). Every capability unless the site file says;
    /// only the site file may set it, so no user layer can widen it. The
    /// site's own `[[plugin]]` entries grant what they say.
    pub user_capabilities: Vec<Capability>,
    /// The files that were read, in order.
    pub files: Vec<PathBuf>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            sandbox: SandboxLimits::default(),
            site_sandbox: SandboxLimits::default(),
            plugins: vec![PluginSpec::default_builtin()],
            apptainer: None,
            pull_timeout: None,
            cache_dir: None,
            trusted_owners: Vec::new(),
            registry_timeout: None,
            digest_ttl: None,
            stale_if_error: Duration::ZERO,
            site_stale_if_error: Duration::ZERO,
            site_store: PathBuf::from(SITE_STORE),
            user_capabilities: Capability::ALL.to_vec(),
            files: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    fn names(config: &Config) -> Vec<&str> {
        config.plugins.iter().map(|p| p.name.as_str()).collect()
    }

    #[test]
    fn no_config_means_the_default_plugin_alone() {
        let config = Config::load(&ConfigSources::default()).unwrap();
        assert_eq!(names(&config), ["default"]);
        assert_eq!(config.sandbox, SandboxLimits::default());
    }

    #[test]
    fn unknown_keys_are_errors_with_file_line_and_column() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            dir.path(),
            "c.toml",
            "[sandbox]\ntimeout-ms = 50\n\n[[plugin]]\nname = \"a\"\nbuiltin = \"default\"\nsettngs = {}\n",
        );
        let err = Config::load(&ConfigSources::only(&path)).unwrap_err();
        assert_eq!(err.path, path);
        assert_eq!(err.location, Some((7, 1)), "{err}");
        assert!(err.message.contains("unknown field `settngs`"), "{err}");
        let shown = err.to_string();
        assert!(shown.contains("c.toml:7:1"), "{shown}");
    }

    #[test]
    fn trusted_owners_are_resolved_to_uids_and_checked_where_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            dir.path(),
            "c.toml",
            "[cache]\ndir = \"/shared/sifr\"\ntrusted-owners = [\"root\", \"4242\"]\n",
        );
        let config = Config::load(&ConfigSources::only(&path)).unwrap();
        assert_eq!(config.trusted_owners, [0, 4242]);
        assert_eq!(config.cache_dir, Some(PathBuf::from("/shared/sifr")));

        let path = write(
            dir.path(),
            "c.toml",
            "[cache]\ntrusted-owners = [\"root\",\n  \"no-such-user-sifr\"]\n",
        );
        let err = Config::load(&ConfigSources::only(&path)).unwrap_err();
        assert_eq!(err.location, Some((3, 3)), "{err}");
        assert!(
            err.message.contains("no user named \"no-such-user-sifr\""),
            "{err}"
        );

        let path = write(
            dir.path(),
            "c.toml",
            "[cache]\ntrusted-owner = [\"root\"]\n",
        );
        let err = Config::load(&ConfigSources::only(&path)).unwrap_err();
        assert_eq!(err.location, Some((2, 1)), "{err}");
        assert!(
            err.message.contains("unknown field `trusted-owner`"),
            "{err}"
        );

        // A later layer's list replaces an earlier one's.
        let site = write(
            dir.path(),
            "site.toml",
            "[cache]\ntrusted-owners = [\"0\"]\n",
        );
        let user = write(dir.path(), "user.toml", "[cache]\ntrusted-owners = []\n");
        let config = Config::load(&ConfigSources {
            site: Some(site),
            user: Some(user),
            ..Default::default()
        })
        .unwrap();
        assert!(config.trusted_owners.is_empty());
    }

    #[test]
    fn semantic_errors_point_at_the_entry() {
        let dir = tempfile::tempdir().unwrap();
        let cases = [
            ("[[plugin]]\nname = \"a\"\n", "needs `path"),
            (
                "[[plugin]]\nname = \"a\"\npath = \"x.wasm\"\nbuiltin = \"default\"\n",
                "both",
            ),
            (
                "[[plugin]]\nname = \"A B\"\nbuiltin = \"default\"\n",
                "not valid",
            ),
            (
                "[[plugin]]\nname = \"a\"\nbuiltin = \"default\"\nsha256 = \"abc\"\n",
                "64 hex",
            ),
            (
                "[[plugin]]\nname = \"a\"\nbuiltin = \"default\"\nlocked = true\n",
                "only honoured in the site",
            ),
            (
                "[[plugin]]\nname = \"a\"\nbuiltin = \"default\"\non-error = \"ignore\"\n",
                "unknown variant",
            ),
            ("[sandbox]\ntimeout-ms = 0\n", "out of range"),
            ("[sandbox]\nmemory-mib = \"lots\"\n", "invalid type"),
            (
                "[[plugin]]\nname = \"a\"\nbuiltin = \"default\"\n[[plugin]]\nname = \"a\"\nbuiltin = \"default\"\n",
                "used twice",
            ),
            ("plugin = 3", "invalid type"),
            ("[sandbox\n", "unclosed table"),
        ];
        for (text, expect) in cases {
            let path = write(dir.path(), "c.toml", text);
            let err = Config::load(&ConfigSources::only(&path)).unwrap_err();
            assert!(err.to_string().contains(expect), "{text:?}: {err}");
        }
    }

    #[test]
    fn a_later_layer_replaces_the_chain_and_overrides_limits() {
        let dir = tempfile::tempdir().unwrap();
        let site = write(
            dir.path(),
            "site.toml",
            "[sandbox]\ntimeout-ms = 50\nmemory-mib = 32\n[[plugin]]\nname = \"site-a\"\nbuiltin = \"default\"\n",
        );
        let user = write(
            dir.path(),
            "user.toml",
            "[sandbox]\ntimeout-ms = 200\n[[plugin]]\nname = \"mine\"\npath = \"p/mine.wasm\"\n",
        );
        let config = Config::load(&ConfigSources {
            site: Some(site),
            user: Some(user),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(names(&config), ["mine"]);
        assert_eq!(config.sandbox.timeout, Duration::from_millis(200));
        assert_eq!(config.sandbox.memory_bytes, 32 << 20);
        assert_eq!(
            config.plugins[0].source,
            PluginSource::Path(dir.path().join("p/mine.wasm")),
            "relative paths resolve against the config file"
        );
    }

    #[test]
    fn site_locked_plugins_cannot_be_removed_and_run_last() {
        let dir = tempfile::tempdir().unwrap();
        let site = write(
            dir.path(),
            "site.toml",
            "[[plugin]]\nname = \"optional\"\nbuiltin = \"default\"\n\
             [[plugin]]\nname = \"enforced\"\nbuiltin = \"default\"\nlocked = true\n",
        );
        let user = write(dir.path(), "user.toml", "plugin = []\n");
        let cli = write(
            dir.path(),
            "cli.toml",
            "[[plugin]]\nname = \"mine\"\nbuiltin = \"default\"\n",
        );
        let load = |user: Option<&PathBuf>, cli: Option<&PathBuf>| {
            Config::load(&ConfigSources {
                site: Some(site.clone()),
                user: user.cloned(),
                cli: cli.cloned(),
                env: None,
                containers_root: None,
            })
            .unwrap()
        };
        assert_eq!(names(&load(None, None)), ["optional", "enforced"]);
        assert_eq!(names(&load(Some(&user), None)), ["enforced"]);
        assert_eq!(names(&load(Some(&user), Some(&cli))), ["mine", "enforced"]);
    }

    #[test]
    fn the_site_limits_which_capabilities_users_grant_and_no_user_layer_widens_it() {
        let dir = tempfile::tempdir().unwrap();
        let granting = "[[plugin]]\nname = \"mine\"\nbuiltin = \"default\"\n\
                        capabilities = [\"resolve-digest\"]\n";
        let user = write(dir.path(), "user.toml", granting);
        let load = |site: &str, user: &Path, cli: Option<&Path>| {
            let site = write(dir.path(), "site.toml", site);
            Config::load(&ConfigSources {
                site: Some(site),
                user: Some(user.to_path_buf()),
                cli: cli.map(Path::to_path_buf),
                ..Default::default()
            })
        };

        // Without the key, users may grant every capability, as before.
        let config = load("", &user, None).unwrap();
        assert_eq!(config.user_capabilities, Capability::ALL);
        assert!(config.plugins[0].granted(Capability::ResolveDigest));
        let config = load(
            "[site]\nuser-capabilities = [\"resolve-digest\"]\n",
            &user,
            None,
        )
        .unwrap();
        assert!(config.plugins[0].granted(Capability::ResolveDigest));

        // With an empty list, a user's grant is refused where it is written,
        // naming the plugin, the capability, the site's list and what to do.
        let closed = "[site]\nuser-capabilities = []\n";
        let err = load(closed, &user, None).unwrap_err();
        assert_eq!(err.path, user);
        assert_eq!(err.location, Some((1, 1)), "{err}");
        for part in [
            "plugin 'mine'",
            "does not let users grant the capability \"resolve-digest\"",
            "[site] user-capabilities = []",
            "ask your site's admins",
        ] {
            assert!(err.message.contains(part), "{part:?}: {err}");
        }
        // No later layer can set the key, nor grant past it.
        let widen = write(
            dir.path(),
            "widen.toml",
            "[site]\nuser-capabilities = [\"resolve-digest\"]\n",
        );
        let err = load(closed, &widen, None).unwrap_err();
        assert!(
            err.message.contains("only honoured in the site config"),
            "{err}"
        );
        let empty = write(dir.path(), "empty.toml", "");
        let cli = write(dir.path(), "cli.toml", granting);
        let err = load(closed, &empty, Some(&cli)).unwrap_err();
        assert_eq!(err.path, cli, "{err}");

        // The site's own entries grant what they say, locked or not.
        let site_grants = format!(
            "{closed}{granting}\
                                   [[plugin]]\nname = \"rules\"\nbuiltin = \"default\"\n\
                                   locked = true\ncapabilities = [\"resolve-digest\"]\n"
        );
        let config = load(&site_grants, &empty, None).unwrap();
        assert!(
            config
                .plugins
                .iter()
                .all(|p| p.granted(Capability::ResolveDigest))
        );

        // An unknown name in the list is an error at its place.
        let err = load("[site]\nuser-capabilities = [\"network\"]\n", &empty, None).unwrap_err();
        assert_eq!(err.location, Some((2, 22)), "{err}");
        assert!(
            err.message
                .contains("\"network\" is not a capability; sifr grants: resolve-digest"),
            "{err}"
        );
    }

    #[test]
    fn missing_optional_layers_are_skipped_but_named_files_must_exist() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.toml");
        let config = Config::load(&ConfigSources {
            site: Some(missing.clone()),
            user: Some(missing.clone()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(names(&config), ["default"]);
        let err = Config::load(&ConfigSources::only(&missing)).unwrap_err();
        assert!(err.to_string().contains("check --config"), "{err}");
    }

    #[test]
    fn settings_files_are_read_by_the_host() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "registries.conf",
            "[[registry]]\nlocation = \"a.io\"\n",
        );
        let path = write(
            dir.path(),
            "c.toml",
            "[[plugin]]\nname = \"r\"\nbuiltin = \"registries\"\nsettings-files = { conf = \"registries.conf\" }\n",
        );
        let config = Config::load(&ConfigSources::only(&path)).unwrap();
        assert_eq!(
            config.plugins[0].settings,
            serde_json::json!({"conf": "[[registry]]\nlocation = \"a.io\"\n"})
        );
        let path = write(
            dir.path(),
            "c.toml",
            "[[plugin]]\nname = \"r\"\nbuiltin = \"registries\"\nsettings-files = { conf = \"nope.conf\" }\n",
        );
        let err = Config::load(&ConfigSources::only(&path))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("nope.conf") && err.contains("check `settings-files`"),
            "{err}"
        );
    }

    #[test]
    fn settings_become_json() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            dir.path(),
            "c.toml",
            "[[plugin]]\nname = \"m\"\nbuiltin = \"mirror\"\n[plugin.settings]\nregistries = [\"docker.io\"]\n\
             when = 1979-05-27T07:32:00Z\n[[plugin.settings.mirrors]]\nregistry = \"m.example:5000\"\n",
        );
        let config = Config::load(&ConfigSources::only(&path)).unwrap();
        assert_eq!(
            config.plugins[0].settings,
            serde_json::json!({
                "registries": ["docker.io"],
                "when": "1979-05-27T07:32:00Z",
                "mirrors": [{"registry": "m.example:5000"}],
            })
        );
    }
}
