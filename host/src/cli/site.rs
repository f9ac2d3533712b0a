//! `sifr site prepare`: the site store, for site admins.

use std::path::PathBuf;

use anyhow::Result;
use serde_json::json;
use sifr::{Config, ConfigSources, Policy};

use super::Globals;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Compile every site-locked plugin into the site store, as root.
    ///
    /// A site-locked plugin is never loaded from a user's compile cache
    /// (the user can write it), so without the store every sifr process,
    /// and every call through the front, compiles and configures it again.
    /// This command compiles each plugin the site config locks, configures
    /// it with its settings, and keeps both in the site store (`[site]
    /// store` in the site config, default /var/cache/sifr/plugins), which
    /// users' processes then load as fast as their own cache. It reads the
    /// site config alone: no user config, no $SIFR_CONFIG.
    ///
    /// Run it after installing or upgrading sifr, and after every change of
    /// the site config or of a file it names (a registries.conf, say). A
    /// store that is missing, stale or not root's is never an error: sifr
    /// then compiles in-process and warns once, naming this command.
    ///
    /// Examples:
    ///   sudo sifr site prepare
    ///   sudo sifr site prepare --site-config staging/config.toml --json
    #[command(verbatim_doc_comment)]
    Prepare {
        /// Read this site config instead of /etc/sifr/config.toml (to stage
        /// a store before the config is deployed).
        #[arg(long, value_name = "FILE")]
        site_config: Option<PathBuf>,

        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(globals: &Globals, command: Command) -> Result<u8> {
    match command {
        Command::Prepare { site_config, json } => prepare(globals, site_config, json),
    }
}

fn prepare(globals: &Globals, site_config: Option<PathBuf>, json: bool) -> Result<u8> {
    let site = site_config.unwrap_or_else(|| PathBuf::from(sifr::config::SITE_CONFIG));
    let config = Config::load(&ConfigSources {
        site: Some(site.clone()),
        ..ConfigSources::default()
    })?;
    let options = super::builder(config.clone()).policy_options();
    let prepared = Policy::prepare_site(&config, &options).map_err(sifr::Error::from)?;
    if json {
        let out = json!({
            "schema": 1,
            "site-config": site,
            "store": config.site_store,
            "plugins": prepared,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(0);
    }
    if prepared.is_empty() {
        globals.warn(&format!(
            "{} locks no plugins (`locked = true`): there is nothing to prepare",
            site.display()
        ));
        return Ok(0);
    }
    for plugin in &prepared {
        println!(
            "{}: '{}' ({}) in {}{}",
            if plugin.compiled_now {
                "compiled"
            } else {
                "up to date"
            },
            plugin.name,
            plugin.sha256,
            plugin
                .artifact
                .as_deref()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            if plugin.configure == "once" {
                ""
            } else {
                " (configured on each decision: it cannot be snapshotted)"
            }
        );
    }
    println!(
        "{} site-locked plugin{} ready in {}: users' processes load {} from there",
        prepared.len(),
        if prepared.len() == 1 { "" } else { "s" },
        config.site_store.display(),
        if prepared.len() == 1 { "it" } else { "them" },
    );
    Ok(0)
}

/// The one warning line for site-locked plugins compiled now, if any.
pub fn miss_warning(policy: &Policy) -> Option<String> {
    let misses: Vec<(&str, &str)> = policy.site_store_misses().collect();
    let (_, why) = misses.first()?;
    let names: Vec<String> = misses.iter().map(|(n, _)| format!("'{n}'")).collect();
    Some(format!(
        "site-locked plugin{} {} compiled in this process, which is slow on every call: {why}; \
         an admin makes it fast again with `sudo sifr site prepare`",
        if names.len() == 1 { "" } else { "s" },
        names.join(", "),
    ))
}
