//! Which config files are read, and how their layers combine: see the
//! [module docs](super).

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::file::{SandboxToml, line_col, parse_layer};
use super::plugin_spec::plugin_spec;
use super::{Capability, Config, ConfigError, PluginSpec, SITE_CONFIG, SandboxLimits};

/// Which layer a file is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layer {
    Site,
    User,
    Env,
    Cli,
}

/// The files to read, in order. Build one with [`ConfigSources::standard`],
/// or name files yourself (embedders and tests).
#[derive(Debug, Clone, Default)]
pub struct ConfigSources {
    /// Skipped when missing.
    pub site: Option<PathBuf>,
    /// Skipped when missing.
    pub user: Option<PathBuf>,
    /// Must exist.
    pub env: Option<PathBuf>,
    /// Must exist.
    pub cli: Option<PathBuf>,
    /// Where `settings-files = { KEY = "system" }` finds
    /// `etc/containers/registries.conf` and its `registries.conf.d`
    /// (containers/image's `RootForImplicitAbsolutePaths`); `None` is `/`.
    /// For tests and chroots: the CLI never sets it.
    pub containers_root: Option<PathBuf>,
}

impl ConfigSources {
    /// The standard places: the site file, the user's XDG config, then
    /// `env` (the CLI passes `$SIFR_CONFIG`; empty is unset) and `cli` (the
    /// `--config` file). The library reads no environment variable itself.
    pub fn standard(cli: Option<PathBuf>, env: Option<PathBuf>) -> Self {
        Self {
            site: Some(PathBuf::from(SITE_CONFIG)),
            user: dirs::config_dir().map(|d| d.join("sifr").join("config.toml")),
            env: env.filter(|p| !p.as_os_str().is_empty()),
            cli,
            containers_root: None,
        }
    }

    /// Only the given file (no site or user layers).
    pub fn only(path: impl Into<PathBuf>) -> Self {
        Self {
            cli: Some(path.into()),
            ..Self::default()
        }
    }
}

impl Config {
    /// Read and combine the layers.
    pub fn load(sources: &ConfigSources) -> Result<Self, ConfigError> {
        let layers = [
            (Layer::Site, &sources.site, false),
            (Layer::User, &sources.user, false),
            (Layer::Env, &sources.env, true),
            (Layer::Cli, &sources.cli, true),
        ];
        let mut config = Config::default();
        let mut chain: Option<Vec<PluginSpec>> = None;
        let mut site_locked: Vec<PluginSpec> = Vec::new();
        let mut chain_from_site = false;
        for (layer, path, required) in layers {
            let Some(path) = path else { continue };
            let text = match std::fs::read_to_string(path) {
                Ok(text) => text,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => continue,
                Err(e) => {
                    return Err(ConfigError {
                        path: path.clone(),
                        location: None,
                        message: format!(
                            "cannot read the config file: {e}{}",
                            match layer {
                                Layer::Env => "; check $SIFR_CONFIG",
                                Layer::Cli => "; check --config",
                                _ => "",
                            }
                        ),
                    });
                }
            };
            config.files.push(path.clone());
            let file = parse_layer(path, &text)?;
            let err = |span: Range<usize>, message: String| ConfigError {
                path: path.clone(),
                location: Some(line_col(&text, span.start)),
                message,
            };
            if let Some(sandbox) = file.sandbox {
                let limits = sandbox_limits(config.sandbox, sandbox, &err)?;
                if layer == Layer::Site {
                    config.site_sandbox = limits;
                }
                config.sandbox = limits;
            }
            let dir = path.parent().unwrap_or(Path::new("."));
            if let Some(apptainer) = file.apptainer {
                if let Some(p) = apptainer.path {
                    config.apptainer = Some(dir.join(p));
                }
                if let Some(timeout) = apptainer.pull_timeout {
                    let span = timeout.span();
                    let text = timeout.into_inner();
                    let parsed = humantime::parse_duration(&text).map_err(|e| {
                        err(span, format!(
                            "pull-timeout = {text:?} is not a duration ({e}); write e.g. \"20m\" or \"1h 30m\""
                        ))
                    })?;
                    config.pull_timeout = Some(parsed);
                }
            }
            if let Some(cache) = file.cache {
                if let Some(d) = cache.dir {
                    config.cache_dir = Some(dir.join(d));
                }
                if let Some(owners) = cache.trusted_owners {
                    let mut uids = Vec::with_capacity(owners.len());
                    for owner in owners {
                        let span = owner.span();
                        let uid = crate::cache::owner_uid(owner.get_ref())
                            .map_err(|m| err(span, format!("trusted-owners: {m}")))?;
                        uids.push(uid);
                    }
                    config.trusted_owners = uids;
                }
            }
            if let Some(registry) = file.registry {
                let duration = |key: &str, value: toml::Spanned<String>| {
                    let span = value.span();
                    let text = value.into_inner();
                    humantime::parse_duration(&text).map_err(|e| {
                        err(
                            span,
                            format!("{key} = {text:?} is not a duration ({e}); write e.g. \"5s\" or \"10m\""),
                        )
                    })
                };
                if let Some(timeout) = registry.timeout {
                    let span = timeout.span();
                    let parsed = duration("timeout", timeout)?;
                    if parsed.is_zero() || parsed > Duration::from_secs(600) {
                        return Err(err(
                            span,
                            "timeout must be more than 0 and at most 10m: it bounds each \
                             digest look-up, and a pull waits for it"
                                .to_string(),
                        ));
                    }
                    config.registry_timeout = Some(parsed);
                }
                if let Some(ttl) = registry.digest_ttl {
                    config.digest_ttl = Some(duration("digest-ttl", ttl)?);
                }
                if let Some(window) = registry.stale_if_error {
                    let span = window.span();
                    let parsed = duration("stale-if-error", window)?;
                    if parsed > Duration::from_secs(30 * 86_400) {
                        return Err(err(
                            span,
                            "stale-if-error must be at most 30d: it is how long an old digest \
                             may stand in for a registry that is down, not a way to stop asking"
                                .to_string(),
                        ));
                    }
                    config.stale_if_error = parsed;
                    if layer == Layer::Site {
                        config.site_stale_if_error = parsed;
                    }
                }
            }
            if let Some(site) = file.site {
                let span = site.span();
                if layer != Layer::Site {
                    return Err(err(
                        span,
                        format!(
                            "[site] is only honoured in the site config ({SITE_CONFIG}): where \
                             site-locked plugins' compiled code comes from is the site's to say"
                        ),
                    ));
                }
                let site = site.into_inner();
                if let Some(names) = site.user_capabilities {
                    let mut allowed = Vec::with_capacity(names.len());
                    for name in names {
                        let span = name.span();
                        let capability = Capability::parse(name.get_ref()).ok_or_else(|| {
                            err(
                                span,
                                format!(
                                    "user-capabilities: {:?} is not a capability; sifr grants: {}",
                                    name.get_ref(),
                                    Capability::known()
                                ),
                            )
                        })?;
                        if !allowed.contains(&capability) {
                            allowed.push(capability);
                        }
                    }
                    config.user_capabilities = allowed;
                }
                if let Some(store) = site.store {
                    if !store.is_absolute() {
                        return Err(err(
                            span,
                            format!(
                                "[site] store = {:?} must be an absolute path: every level of \
                                 it is checked from / to be root's",
                                store.display()
                            ),
                        ));
                    }
                    config.site_store = store;
                }
            }
            if let Some(entries) = file.plugin {
                let mut specs = Vec::with_capacity(entries.len());
                for entry in entries {
                    let span = entry.span();
                    let root = sources.containers_root.as_deref().unwrap_or(Path::new("/"));
                    let spec = plugin_spec(entry.into_inner(), dir, path, layer, root)
                        .map_err(|m| err(span.clone(), m))?;
                    if layer != Layer::Site {
                        config
                            .check_user_grants(&spec.name, &spec.capabilities)
                            .map_err(|m| err(span, m))?;
                    }
                    specs.push(spec);
                }
                if layer == Layer::Site {
                    site_locked = specs.iter().filter(|s| s.locked).cloned().collect();
                }
                chain_from_site = layer == Layer::Site;
                chain = Some(specs);
            }
        }
        if let Some(mut chain) = chain {
            if !chain_from_site {
                chain.extend(site_locked);
            }
            let mut seen = std::collections::HashSet::new();
            for spec in &chain {
                if !seen.insert(spec.name.as_str()) {
                    return Err(ConfigError {
                        path: spec.declared_in.clone().unwrap_or_default(),
                        location: None,
                        message: format!(
                            "plugin name '{}' is used twice in the chain; give each entry its own name \
                             (a site-locked plugin cannot be redeclared)",
                            spec.name
                        ),
                    });
                }
            }
            config.plugins = chain;
        }
        Ok(config)
    }
}

impl Config {
    /// Whether a plugin the site did not declare may be granted
    /// `capabilities`: each must be in `[site] user-capabilities`. The
    /// message names the plugin, the capability, the site's list and what
    /// to do.
    pub fn check_user_grants(
        &self,
        plugin: &str,
        capabilities: &[Capability],
    ) -> Result<(), String> {
        let Some(refused) = capabilities
            .iter()
            .find(|c| !self.user_capabilities.contains(c))
        else {
            return Ok(());
        };
        let allowed: Vec<String> = self
            .user_capabilities
            .iter()
            .map(|c| format!("{:?}", c.name()))
            .collect();
        Err(format!(
            "plugin '{plugin}': the site does not let users grant the capability \
             \"{refused}\" ({SITE_CONFIG} has [site] user-capabilities = [{}]); remove it \
             from this plugin's capabilities, or ask your site's admins for it",
            allowed.join(", ")
        ))
    }
}

/// `base` with the keys of one `[sandbox]` table applied, each checked.
fn sandbox_limits(
    mut limits: SandboxLimits,
    sandbox: SandboxToml,
    err: &impl Fn(Range<usize>, String) -> ConfigError,
) -> Result<SandboxLimits, ConfigError> {
    if let Some(ms) = sandbox.timeout_ms {
        let span = ms.span();
        let ms = ms.into_inner();
        if !(1..=60_000).contains(&ms) {
            return Err(err(
                span,
                format!("timeout-ms = {ms} is out of range: give 1 to 60000 milliseconds"),
            ));
        }
        limits.timeout = Duration::from_millis(ms);
    }
    if let Some(mib) = sandbox.memory_mib {
        let span = mib.span();
        let mib = mib.into_inner();
        if !(1..=4096).contains(&mib) {
            return Err(err(
                span,
                format!("memory-mib = {mib} is out of range: give 1 to 4096 MiB"),
            ));
        }
        limits.memory_bytes = (mib as usize) << 20;
    }
    Ok(limits)
}
