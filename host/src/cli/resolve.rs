//! `sifr resolve`.

use std::fmt::Write as _;

use anyhow::{Context as _, Result};
use sifr::policy::{Outcome, Step, StepOutcome};
use sifr::report::ResolveReport;
use sifr::{Config, ConfigSources, Context, ImageRef, Resolution, Source};

use super::{Globals, exit, level_name};

#[derive(clap::Args)]
pub struct Args {
    /// Image references: `ubuntu:22.04`, `quay.io/biocontainers/blast:2.15.0`,
    /// `name@sha256:<64 hex>`.
    #[arg(required_unless_present = "from", value_name = "IMAGE")]
    images: Vec<String>,

    /// Also read references from FILE, one a line (`-`: standard input);
    /// blank lines and lines starting with `#` are skipped. Many references
    /// are resolved in parallel, and printed in order.
    #[arg(long, value_name = "FILE")]
    from: Option<std::path::PathBuf>,

    /// Show each plugin's step: its plan with notes, and its log lines.
    #[arg(long, conflicts_with = "json")]
    explain: bool,

    /// Print the full plans as JSON (an array, one object per image).
    #[arg(long)]
    json: bool,

    /// What the image is wanted for; plugins may decide differently.
    #[arg(long, value_enum, default_value = "pull")]
    purpose: super::PurposeArg,

    /// Target architecture, in OCI terms [default: this machine's].
    #[arg(long, value_name = "ARCH")]
    arch: Option<String>,
}

pub fn run(globals: &Globals, args: Args) -> Result<u8> {
    let config = Config::load(&ConfigSources::standard(
        globals.config.clone(),
        super::config_env(),
    ))?;
    let policy = super::builder(config)
        .policy()
        .context("loading the policy chain")?;
    globals.warn_site_store(&policy);
    let mut ctx = Context::new(args.purpose.into());
    if let Some(arch) = args.arch {
        ctx.arch = arch;
    }

    let mut inputs = args.images.clone();
    if let Some(from) = &args.from {
        let text = if from.as_os_str() == "-" {
            std::io::read_to_string(std::io::stdin()).context("reading references from stdin")?
        } else {
            std::fs::read_to_string(from)
                .with_context(|| format!("reading references from {}", from.display()))?
        };
        inputs.extend(
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(String::from),
        );
    }
    let parsed: Vec<_> = inputs.iter().map(|i| ImageRef::parse(i)).collect();
    let valid: Vec<ImageRef> = parsed
        .iter()
        .filter_map(|p| p.as_ref().ok())
        .cloned()
        .collect();
    let mut resolutions = policy.resolve_many(&valid, &ctx).into_iter();

    let mut code = exit::FirstFailure::default();
    let mut reports = Vec::new();
    for (i, (input, parsed)) in inputs.iter().zip(parsed).enumerate() {
        if let Err(e) = parsed {
            eprintln!("sifr: error: {e}");
            code.note(exit::INVALID_REFERENCE);
            reports.push(ResolveReport::invalid(input, &e));
            continue;
        }
        let resolution = resolutions
            .next()
            .expect("one resolution per valid reference");
        for step in &resolution.steps {
            globals.show_logs(&step.plugin, &step.logs);
            if let StepOutcome::Skipped { error } = &step.outcome {
                globals.warn(&format!("skipping fail-open plugin: {error}"));
            }
        }
        if args.json {
            reports.push(ResolveReport::of(input, &resolution));
        } else if args.explain {
            if i > 0 {
                println!();
            }
            print!("{}", explain(input, &resolution));
        } else if let Outcome::Plan(sources) = &resolution.outcome {
            if i > 0 && inputs.len() > 1 {
                println!();
            }
            for source in sources {
                println!("{}", source.uri());
            }
        }
        if !matches!(resolution.outcome, Outcome::Plan(_)) {
            let error = sifr::Error::from(resolution.into_plan().expect_err("not a plan"));
            eprintln!("sifr: error: {error}");
            code.note(super::sifr_exit_code(&error));
        }
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
    }
    Ok(code.code())
}

pub fn explain(input: &str, resolution: &Resolution) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{input}");
    let _ = writeln!(out, "  image: {}", resolution.image);
    let _ = writeln!(out, "  start: the origin alone");
    let _ = writeln!(out, "    1. {}", Source::origin(&resolution.image).uri());
    for (i, step) in resolution.steps.iter().enumerate() {
        explain_step(&mut out, i + 1, step);
    }
    match &resolution.outcome {
        Outcome::Plan(sources) => {
            let _ = writeln!(out, "  result: try in this order");
            for (n, s) in sources.iter().enumerate() {
                let http = if s.plain_http { " (plain HTTP)" } else { "" };
                let _ = writeln!(out, "    {}. {}{http}", n + 1, s.uri());
            }
        }
        Outcome::Deny { plugin, reason } => {
            let _ = writeln!(out, "  result: denied by '{plugin}': {reason}");
        }
        Outcome::Failed(failure) => {
            let _ = writeln!(out, "  result: failed: {failure}");
        }
    }
    out
}

fn explain_step(out: &mut String, n: usize, step: &Step) {
    let ms = step.elapsed.as_secs_f64() * 1e3;
    let _ = writeln!(
        out,
        "  step {n}: plugin '{}' ({}), {ms:.2} ms",
        step.plugin, step.sha256
    );
    match &step.outcome {
        StepOutcome::Plan { sources } => {
            for (i, s) in sources.iter().enumerate() {
                let http = if s.plain_http { " (plain HTTP)" } else { "" };
                let _ = writeln!(out, "    {}. {}{http}  # {}", i + 1, s.uri(), s.note);
            }
        }
        StepOutcome::Deny { reason } => {
            let _ = writeln!(out, "    denied: {reason}");
        }
        StepOutcome::Skipped { error } => {
            let _ = writeln!(out, "    skipped (fail-open): {error}");
        }
        StepOutcome::Failed { error } => {
            let _ = writeln!(out, "    failed (fail-closed): {error}");
        }
    }
    for lookup in &step.lookups {
        let _ = writeln!(out, "    {}", lookup_line(lookup));
    }
    for line in &step.logs {
        let _ = writeln!(out, "    log {}: {}", level_name(line.level), line.message);
    }
}

/// One digest look-up the host made for a plugin: the tag, what it
/// resolved to and where the answer came from (the registry, over HTTPS or
/// plain HTTP, or the digest cache), or why there was none.
fn lookup_line(lookup: &sifr::policy::DigestLookup) -> String {
    use sifr::policy::LookupOutcome;
    let asked = format!(
        "digest of {}/{}:{} ({})",
        lookup.registry, lookup.repository, lookup.tag, lookup.arch
    );
    match &lookup.outcome {
        LookupOutcome::Resolved {
            manifest_digest,
            index_digest,
            from_cache,
            plain_http,
            stale,
        } => {
            let source = if let Some(stale) = stale {
                format!(
                    "the digest cache, STALE: asked of the registry {} ago, past [registry] \
                     digest-ttl, and given within [registry] stale-if-error because the \
                     registry failed now: {}",
                    humantime::format_duration(std::time::Duration::from_secs(stale.age_secs)),
                    stale.error
                )
            } else if *from_cache {
                "the digest cache (asked of the registry within [registry] digest-ttl)".to_string()
            } else {
                let http = if *plain_http { "plain HTTP" } else { "HTTPS" };
                format!("{} over {http}", lookup.registry)
            };
            let index = index_digest
                .as_deref()
                .map(|i| format!(", entry of the index {i}"))
                .unwrap_or_default();
            let ms = lookup.elapsed.as_secs_f64() * 1e3;
            format!("{asked}: {manifest_digest}{index}, from {source}, {ms:.1} ms")
        }
        LookupOutcome::Refused { reason } => format!("{asked}: refused by sifr: {reason}"),
        LookupOutcome::Failed { error } => format!("{asked}: failed: {error}"),
    }
}
