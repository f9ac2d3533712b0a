//! Shell completions and man pages, generated from the clap definitions
//! the CLI parses with, so they never drift from it.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::CommandFactory;

#[derive(clap::Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_name = "SHELL")]
    shell: Shell,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Shell {
    Bash,
    Zsh,
    Fish,
}

#[derive(clap::Args)]
pub struct ManArgs {
    /// Where to write the pages (created if missing).
    #[arg(value_name = "DIR")]
    dir: PathBuf,
}

/// `sifr completions SHELL`: the script on stdout.
pub fn completions(args: CompletionsArgs) -> Result<u8> {
    let mut cmd = super::Cli::command();
    let shell = match args.shell {
        Shell::Bash => clap_complete::Shell::Bash,
        Shell::Zsh => clap_complete::Shell::Zsh,
        Shell::Fish => clap_complete::Shell::Fish,
    };
    clap_complete::generate(shell, &mut cmd, "sifr", &mut std::io::stdout());
    Ok(0)
}

/// `sifr man DIR`: `sifr.1`, and `sifr-SUBCOMMAND.1` for each subcommand
/// (`sifr-cache-ls.1`, …); prints each path.
pub fn man(args: ManArgs) -> Result<u8> {
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("cannot create {}", args.dir.display()))?;
    clap_mangen::generate_to(super::Cli::command(), &args.dir)
        .with_context(|| format!("cannot write man pages in {}", args.dir.display()))?;
    let mut pages: Vec<PathBuf> = std::fs::read_dir(&args.dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension().is_some_and(|e| e == "1")
                && p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("sifr"))
        })
        .collect();
    pages.sort();
    for page in pages {
        println!("{}", page.display());
    }
    Ok(0)
}
