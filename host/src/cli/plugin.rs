//! `sifr plugin ls` and `sifr plugin check`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, Result};
use serde_json::json;
use sifr::policy::{ArtifactOrigin, Outcome, StepOutcome};
use sifr::report::{self, CheckResult, PluginCheckReport, PluginListReport, PluginReport};
use sifr::{
    Config, ConfigSources, Context, ImageRef, OnError, PluginSource, PluginSpec, Policy,
    SandboxLimits,
};

use super::{Globals, exit, level_name};

#[derive(clap::Subcommand)]
pub enum Command {
    /// List the loaded chain: each plugin's name, source, sha256, API version and settings.
    Ls {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },

    /// Test a plugin offline, in the same sandbox sifr uses.
    ///
    /// Loads FILE.wasm, gives it the settings (a TOML file whose top-level
    /// table is what `[plugin.settings]` would hold), runs it over each IMAGE
    /// starting from the origin plan, and prints each plan with its notes and
    /// the plugin's log lines. Exits non-zero on any failure: a load error,
    /// refused settings, a trap or timeout, invalid output, or a denial (4).
    ///
    /// Example:
    ///   sifr plugin check target/wasm32-wasip2/release/my_policy.wasm \
    ///       --settings settings.toml ubuntu:22.04 quay.io/biocontainers/blast:2.15.0
    #[command(verbatim_doc_comment)]
    Check(CheckArgs),
}

#[derive(clap::Args)]
pub struct CheckArgs {
    /// The plugin component.
    #[arg(value_name = "FILE.wasm")]
    wasm: PathBuf,

    /// Settings for the plugin, as TOML.
    #[arg(long, value_name = "FILE.toml")]
    settings: Option<PathBuf>,

    /// Images to run the plugin over.
    #[arg(value_name = "IMAGE")]
    images: Vec<String>,

    /// Per-call deadline, in milliseconds.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=60_000))]
    timeout_ms: u64,

    /// Memory cap, in MiB.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=4096))]
    memory_mib: u64,

    /// What the image is wanted for.
    #[arg(long, value_enum, default_value = "pull")]
    purpose: super::PurposeArg,

    /// Grant the plugin a host capability, as `capabilities = [...]` in its
    /// config entry does: `resolve-digest` lets it ask registries (through
    /// sifr, with your credentials) which digest a tag names.
    #[arg(long, value_name = "CAPABILITY", value_parser = parse_capability)]
    grant: Vec<sifr::config::Capability>,

    /// Print JSON.
    #[arg(long)]
    json: bool,
}

fn parse_capability(name: &str) -> std::result::Result<sifr::config::Capability, String> {
    sifr::config::Capability::parse(name).ok_or_else(|| {
        format!(
            "unknown capability; sifr grants: {}",
            sifr::config::Capability::known()
        )
    })
}

pub fn run(globals: &Globals, command: Command) -> Result<u8> {
    match command {
        Command::Ls { json } => ls(globals, json),
        Command::Check(args) => check(globals, args),
    }
}

fn ls(globals: &Globals, json: bool) -> Result<u8> {
    let config = Config::load(&ConfigSources::standard(
        globals.config.clone(),
        super::config_env(),
    ))?;
    let policy = super::builder(config.clone())
        .policy()
        .context("loading the policy chain")?;
    globals.warn_site_store(&policy);
    if json {
        let report = PluginListReport::of(&config, policy.plugins());
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(0);
    }
    if config.files.is_empty() {
        println!("# no config file found: the built-in default chain");
    } else {
        for file in &config.files {
            println!("# config: {}", file.display());
        }
    }
    println!(
        "# sandbox: {} ms per call, {} MiB memory",
        config.sandbox.timeout.as_millis(),
        config.sandbox.memory_bytes >> 20
    );
    for (i, plugin) in policy.plugins().iter().enumerate() {
        let flags = match (plugin.on_error, plugin.locked) {
            (OnError::FailClosed, false) => "fail-closed",
            (OnError::FailOpen, false) => "fail-open",
            (OnError::FailClosed, true) => "fail-closed, locked by site",
            (OnError::FailOpen, true) => "fail-open, locked by site",
        };
        println!("{}. {} ({flags})", i + 1, plugin.name);
        println!("   source:   {}", plugin.source);
        println!("   sha256:   {}", plugin.sha256);
        println!("   api:      sifr:policy@{}", plugin.api_version);
        if !plugin.capabilities.is_empty() {
            let granted: Vec<&str> = plugin.capabilities.iter().map(|c| c.name()).collect();
            println!("   granted:  {}", granted.join(", "));
        }
        println!("   settings: {}", plugin.settings);
        println!("   code:     {}", code_origin(plugin));
    }
    Ok(0)
}

/// Where a plugin's native code came from, for `plugin ls` and `check`.
fn code_origin(plugin: &sifr::policy::LoadedPlugin) -> String {
    let file = plugin
        .artifact_file()
        .map(|f| format!(" ({})", f.display()))
        .unwrap_or_default();
    match plugin.artifact {
        ArtifactOrigin::SiteStore => format!("from the site store{file}"),
        ArtifactOrigin::CacheHit => format!("from your compile cache{file}"),
        ArtifactOrigin::Compiled => match plugin.site_store_miss() {
            Some(why) => format!("compiled now, not from the site store: {why}"),
            None if file.is_empty() => "compiled now".to_string(),
            None => format!("compiled now, kept in your compile cache{file}"),
        },
    }
}

fn check(globals: &Globals, args: CheckArgs) -> Result<u8> {
    // The config only chooses where compiled plugins are kept, as for
    // every other command; the plugin runs alone, with the limits given.
    let config = Config::load(&ConfigSources::standard(
        globals.config.clone(),
        super::config_env(),
    ))?;
    let settings = match &args.settings {
        Some(path) => sifr::config::load_settings_file(path)?,
        None => json!({}),
    };
    let name = args
        .wasm
        .file_stem()
        .map(|s| s.to_string_lossy().replace('.', "-"))
        .unwrap_or_else(|| "plugin".to_string());
    // A grant here is a user's grant: the site's limit holds as in a config.
    config
        .check_user_grants(&name, &args.grant)
        .map_err(|message| sifr::config::ConfigError {
            path: std::path::PathBuf::from(sifr::config::SITE_CONFIG),
            location: None,
            message: message.replace("this plugin's capabilities", "--grant"),
        })?;
    let spec = PluginSpec {
        name,
        source: PluginSource::Path(args.wasm.clone()),
        sha256: None,
        settings,
        on_error: OnError::FailClosed,
        locked: false,
        declared_in: None,
        settings_files: Vec::new(),
        capabilities: args.grant.clone(),
    };
    let limits = SandboxLimits {
        timeout: Duration::from_millis(args.timeout_ms),
        memory_bytes: (args.memory_mib as usize) << 20,
    };
    let options = super::builder(config).policy_options();
    let policy = Policy::load_single(&spec, limits, &options).map_err(sifr::Error::from)?;
    let plugin = &policy.plugins()[0];
    let ctx = Context::new(args.purpose.into());

    let mut code = exit::FirstFailure::default();
    let mut results = Vec::new();
    if !args.json {
        println!(
            "ok: {} loaded: sha256 {}, sifr:policy@{}, settings accepted{}",
            args.wasm.display(),
            plugin.sha256,
            plugin.api_version,
            if plugin.artifact == ArtifactOrigin::CacheHit {
                " (compiled artifact from cache)"
            } else {
                ""
            }
        );
        if !plugin.configured_once() {
            println!(
                "note: configure() runs again for every decision: the plugin keeps a WASI \
                 handle open after configure() (or there is no compiled-plugin cache), so \
                 its configured state cannot be copied; see PLUGINS.md, \"Configure once\""
            );
        }
    }
    for input in &args.images {
        let image = match ImageRef::parse(input) {
            Ok(image) => image,
            Err(e) => {
                eprintln!("sifr: error: {e}");
                code.note(exit::INVALID_REFERENCE);
                results.push(CheckResult::invalid(input, &e));
                continue;
            }
        };
        let resolution = policy.resolve(&image, &ctx);
        let step = &resolution.steps[0];
        if args.json {
            results.push(CheckResult::step(input, &image, step));
        } else {
            println!("\n{input}  ({image})");
            match &step.outcome {
                StepOutcome::Plan { sources } => {
                    for (i, s) in sources.iter().enumerate() {
                        let http = if s.plain_http { " (plain HTTP)" } else { "" };
                        println!("  {}. {}{http}  # {}", i + 1, s.uri(), s.note);
                    }
                }
                StepOutcome::Deny { reason } => println!("  denied: {reason}"),
                StepOutcome::Skipped { error } | StepOutcome::Failed { error } => {
                    println!("  FAILED: {error}")
                }
            }
            for line in &step.logs {
                println!("  log {}: {}", level_name(line.level), line.message);
            }
        }
        match resolution.outcome {
            Outcome::Plan(_) => {}
            Outcome::Deny { .. } => code.note(exit::DENIED),
            Outcome::Failed(_) => code.note(exit::PLUGIN_FAILED),
        }
    }
    if args.json {
        let report = PluginCheckReport {
            schema: report::SCHEMA,
            plugin: PluginReport::of(plugin),
            results,
        };
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    Ok(code.code())
}
