//! `sifr cache ls|rm|prune|verify`.

use std::time::Duration;

use anyhow::Result;
use bytesize::ByteSize;
use sifr::cache::{Cache, Entry, Selector, unix_now};
use sifr::report::{self, CacheEntryReport, PruneReport, VerifyReport};
use sifr::{Config, ConfigSources};

use super::progress::Display;
use super::{Globals, exit};

#[derive(clap::Subcommand)]
pub enum Command {
    /// List cached images: an aligned table of image, size, age, last use,
    /// the registry it came from (the mirror, when one served it) and the
    /// SIF digest's first 12 hex digits (enough for `sifr cache rm`).
    ///
    /// "Last used" is when the SIF file was last read (its atime; apptainer
    /// reads it on every run): to within a day with the usual `relatime`
    /// mount option, and the pull itself on a `noatime` mount.
    ///
    /// Examples:
    ///   sifr cache ls --sort size
    ///   sifr cache ls --json | jq -r '.[].image'
    #[command(verbatim_doc_comment)]
    Ls {
        /// Print JSON (the full index records), for scripts.
        #[arg(long)]
        json: bool,
        /// Order: by name, by size (largest first) or by age (newest first).
        #[arg(long, value_enum, default_value_t)]
        sort: super::cache_view::SortBy,
    },
    /// Remove cached images by reference (`ubuntu:22.04`, also as pulled
    /// by a digest it was pinned to; `ubuntu` for all its tags) or by SIF
    /// digest (`sha256:<hex>`, or 8+ leading hex digits).
    ///
    /// An image being pulled, or held by a `sifr run`/`exec` until
    /// apptainer has it, is removed once they let go (sifr says it waits).
    Rm {
        #[arg(required = true, value_name = "IMAGE|DIGEST")]
        what: Vec<String>,
    },
    /// Remove old images, or the oldest until the cache fits a size; also
    /// orphaned files (older than an hour) and leftovers of killed pulls.
    /// Images in use (being pulled, or held by a run) are kept.
    ///
    /// Examples:
    ///   sifr cache prune --older-than 30d
    ///   sifr cache prune --max-size 50GiB --dry-run
    #[command(verbatim_doc_comment)]
    Prune {
        /// Remove images pulled longer ago than this (`30d`, `12h`).
        #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
        older_than: Option<Duration>,
        /// Then remove the oldest images until the cache is at most this big (`50GiB`).
        #[arg(long, value_name = "SIZE")]
        max_size: Option<ByteSize>,
        /// Only show what would be removed.
        #[arg(long)]
        dry_run: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Re-hash every cached SIF file; exit 9 and name each bad entry if any
    /// is missing or changed.
    Verify {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show the cache's totals, by source registry, and what
    /// `prune --max-size SIZE` would remove.
    ///
    /// Examples:
    ///   sifr cache du
    ///   sifr cache du --max-size 50GiB
    #[command(verbatim_doc_comment)]
    Du {
        /// Also show what `sifr cache prune --max-size SIZE` would remove.
        #[arg(long, value_name = "SIZE")]
        max_size: Option<ByteSize>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

fn open(globals: &Globals) -> Result<Cache> {
    let config = Config::load(&ConfigSources::standard(
        globals.config.clone(),
        super::config_env(),
    ))?;
    Ok(super::builder(config).cache()?)
}

fn age(entry: &Entry) -> String {
    let secs = unix_now().saturating_sub(entry.pulled_at);
    let rounded = Duration::from_secs(if secs > 3600 { secs / 60 * 60 } else { secs });
    format!("{} ago", humantime::format_duration(rounded))
}

fn line(entry: &Entry) -> String {
    format!(
        "{}  {}  {:>10}  {}  from {}",
        entry.image,
        &entry.sif_digest.as_str()[.."sha256:".len() + 12],
        ByteSize(entry.size).to_string(),
        age(entry),
        entry.source_uri
    )
}

pub fn run(globals: &Globals, command: Command) -> Result<u8> {
    let cache = open(globals)?;
    match command {
        Command::Ls { json, sort } => {
            let mut entries: Vec<Entry> = cache.entries()?.into_iter().map(|(_, e)| e).collect();
            super::cache_view::sort(&mut entries, sort);
            if json {
                let reports: Vec<_> = entries.iter().map(CacheEntryReport::of).collect();
                println!("{}", serde_json::to_string_pretty(&reports)?);
            } else if entries.is_empty() {
                if !globals.quiet {
                    eprintln!("sifr: the cache at {} is empty", cache.root().display());
                }
            } else {
                print!("{}", super::cache_view::table(&cache, &entries));
            }
            Ok(0)
        }
        Command::Rm { what } => {
            let mut code = 0;
            for item in &what {
                // An image reference, or a SIF digest: each is read once,
                // here, and what it is decides what it matches.
                let selector = match Selector::parse(item) {
                    Ok(selector) => selector,
                    Err(e) => {
                        eprintln!("sifr: error: {e}; see `sifr cache ls`");
                        code = exit::FAILURE;
                        continue;
                    }
                };
                let mut display = Display::new(globals);
                let removed = cache.remove(&selector, None, &mut |entry, waited| {
                    display.waiting(
                        &format!(
                            "waiting for the sifr processes using {} (a pull, or a run until \
                             apptainer has it) to let go of it",
                            entry.image
                        ),
                        waited,
                        None,
                    );
                    true
                });
                display.finish();
                let removed = removed?;
                if removed.is_empty() {
                    eprintln!("sifr: error: nothing cached matches {item:?}; see `sifr cache ls`");
                    code = exit::FAILURE;
                }
                for entry in removed {
                    println!("removed {}", line(&entry));
                }
            }
            Ok(code)
        }
        Command::Prune {
            older_than,
            max_size,
            dry_run,
            json,
        } => {
            if older_than.is_none() && max_size.is_none() && !globals.quiet {
                eprintln!(
                    "sifr: no --older-than or --max-size: only orphans and leftovers are removed"
                );
            }
            let pruned = cache.prune(older_than, max_size.map(|s| s.as_u64()), dry_run)?;
            if json {
                let report = PruneReport {
                    schema: report::SCHEMA,
                    dry_run,
                    removed: pruned.removed,
                    in_use: pruned.in_use,
                };
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                let verb = if dry_run { "would remove" } else { "removed" };
                for entry in &pruned.removed {
                    println!("{verb} {}", line(entry));
                }
                for entry in &pruned.in_use {
                    println!("kept (in use) {}", line(entry));
                }
                let freed: u64 = pruned.removed.iter().map(|e| e.size).sum();
                if !globals.quiet {
                    eprintln!(
                        "sifr: {verb} {} images, {}",
                        pruned.removed.len(),
                        ByteSize(freed)
                    );
                    if !pruned.in_use.is_empty() {
                        eprintln!(
                            "sifr: kept {} images a pull or a run is using; prune again later",
                            pruned.in_use.len()
                        );
                    }
                }
            }
            Ok(0)
        }
        Command::Verify { json } => {
            let bad = cache.verify(&mut ())?;
            if json {
                let report = VerifyReport {
                    schema: report::SCHEMA,
                    bad: bad.clone(),
                };
                println!("{}", serde_json::to_string_pretty(&report)?);
            }
            for entry in &bad {
                eprintln!(
                    "sifr: error: {} ({}): {}; remove it with `sifr cache rm {}` and pull again",
                    entry.image,
                    entry.path.display(),
                    entry.problem,
                    entry.image
                );
            }
            if bad.is_empty() {
                if !globals.quiet && !json {
                    eprintln!("sifr: every cached image matches its digest");
                }
                Ok(0)
            } else {
                Ok(exit::CACHE_CORRUPT)
            }
        }
        Command::Du { max_size, json } => {
            let entries: Vec<Entry> = cache.entries()?.into_iter().map(|(_, e)| e).collect();
            let would_remove = match max_size {
                Some(max) => Some((
                    max.as_u64(),
                    cache.prune(None, Some(max.as_u64()), true)?.removed,
                )),
                None => None,
            };
            let would_remove = would_remove
                .as_ref()
                .map(|(max, removed)| (*max, removed.as_slice()));
            print!(
                "{}",
                super::cache_view::du(&cache, &entries, would_remove, json)
            );
            Ok(0)
        }
    }
}
