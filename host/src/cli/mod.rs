//! Command-line parsing, output and exit codes.

mod cache;
mod cache_view;
mod docs;
pub mod front;
mod lock;
mod plugin;
mod progress;
mod pull;
mod resolve;
mod run;
mod site;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use sifr::policy::{LogLevel, LogLine};

/// Exit codes scripts can rely on (documented in the README).
pub mod exit {
    /// Anything not listed below (I/O errors and the like).
    pub const FAILURE: u8 = 1;
    // 2: bad command-line usage, clap's own code.
    /// A config file or a plugin could not be loaded.
    pub const CONFIG: u8 = 3;
    /// The policy denied an image.
    pub const DENIED: u8 = 4;
    /// An image reference is malformed.
    pub const INVALID_REFERENCE: u8 = 5;
    /// A plugin failed while deciding (fail-closed).
    pub const PLUGIN_FAILED: u8 = 6;
    /// apptainer (or singularity) is missing or cannot be run.
    pub const NO_APPTAINER: u8 = 7;
    /// Every source of a pull failed.
    pub const PULL_FAILED: u8 = 8;
    /// `sifr cache verify` found missing or corrupt entries.
    pub const CACHE_CORRUPT: u8 = 9;
    /// A lock file is out of date: `sifr lock --check` found drift, or
    /// `--frozen` refused.
    pub const LOCK_DRIFT: u8 = 10;
    /// `--locked`: the lock file is missing or malformed, or does not lock
    /// the image (and `sifr lock` cannot read the lock file).
    pub const NOT_LOCKED: u8 = 11;

    /// The one rule for commands that take several images: they go on past
    /// a failure, and exit with the code of the *first* one.
    #[derive(Debug, Default, Clone, Copy)]
    pub struct FirstFailure(u8);

    impl FirstFailure {
        /// Note a result's code: kept if it is the first failure.
        pub fn note(&mut self, code: u8) {
            if self.0 == 0 {
                self.0 = code;
            }
        }

        pub fn code(self) -> u8 {
            self.0
        }
    }
}

const AFTER_HELP: &str = "\
Config files, read in order (later ones override; see README.md):
  /etc/sifr/config.toml, $XDG_CONFIG_HOME/sifr/config.toml, $SIFR_CONFIG, --config FILE

Exit codes: 0 ok, 1 other failure, 2 usage, 3 config or plugin load error,
4 denied by policy, 5 invalid image reference, 6 plugin failed while deciding,
7 apptainer not found, 8 every pull source failed, 9 cache corrupt (verify),
10 lock out of date (lock --check, --frozen), 11 lock file unusable or image not
locked (--locked).
`sifr run` and `sifr exec` exit with the container's own code once it runs.";

/// Pull and run OCI images with Apptainer, under site policy written as
/// sandboxed WebAssembly plugins.
#[derive(Parser)]
#[command(name = "sifr", version, after_help = AFTER_HELP)]
struct Cli {
    /// Read this config file last, after the site and user configs and $SIFR_CONFIG.
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,

    /// Show plugins' log lines: -v info, -vv debug, -vvv trace.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,

    /// Print only results and errors.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    quiet: bool,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Show the sources an image would be pulled from, in try order.
    ///
    /// Runs the configured policy chain and prints, for each image, the URIs
    /// apptainer would receive, one per line: mirrors first, origin last.
    /// Nothing is pulled.
    ///
    /// Examples:
    ///   sifr resolve ncbi/blast:2.14.0
    ///   sifr resolve --explain quay.io/biocontainers/blast:2.15.0
    ///   sifr resolve --json ubuntu:22.04 | jq '.[0].sources[0].uri'
    #[command(verbatim_doc_comment)]
    Resolve(resolve::Args),

    /// Pull images into the cache through the policy, and print their SIF paths.
    ///
    /// Each source of the policy's plan is tried in order (mirrors first);
    /// a failed source falls back to the next. Many processes may pull the
    /// same image at once: one pulls, the others wait and reuse it.
    ///
    /// Examples:
    ///   sifr pull ncbi/blast:2.14.0
    ///   sifr pull --json quay.io/biocontainers/samtools:1.19--h50ea8bc_0
    #[command(verbatim_doc_comment)]
    Pull(pull::PullArgs),

    /// Run an image's runscript with hermetic defaults (--cleanenv --no-home).
    ///
    /// The image is pulled first if it is not cached. sifr exits with the
    /// container's exit code.
    ///
    /// Examples:
    ///   sifr run ncbi/blast:2.14.0 -- blastn -version
    ///   sifr run --bind /data:/data:ro --env OMP_NUM_THREADS=4 IMAGE -- ARGS
    #[command(verbatim_doc_comment)]
    Run(run::RunArgs),

    /// Run a command in an image with hermetic defaults (--cleanenv --no-home).
    ///
    /// Example:
    ///   sifr exec --pwd /data --bind "$PWD:/data" ubuntu:22.04 -- ls -l
    #[command(verbatim_doc_comment)]
    Exec(run::RunArgs),

    /// Lock images to the manifest digests their tags name now, in sifr.lock.
    ///
    /// Runs the policy chain for each image, asks the registry now (the
    /// origin, else the first reachable source of the plan) which digest
    /// the tag names, and records it with the chain's plugin digests. Then
    /// `sifr pull|run|exec --locked sifr.lock IMAGE` pulls exactly that
    /// digest, whatever the tag names by then. Other entries are kept. With
    /// no IMAGE, every image in the file is locked again.
    ///
    /// Examples:
    ///   sifr lock ubuntu:22.04 ncbi/blast:2.14.0
    ///   sifr lock --from images.txt --file envs/sifr.lock
    ///   sifr lock --check        # exit 10 if a tag moved or the policy changed
    ///   sifr run --locked sifr.lock ubuntu:22.04 -- cat /etc/os-release
    #[command(verbatim_doc_comment)]
    Lock(lock::Args),

    /// List, remove, prune and verify cached images.
    #[command(subcommand)]
    Cache(cache::Command),

    /// Inspect and test policy plugins.
    #[command(subcommand)]
    Plugin(plugin::Command),

    /// For site admins: compile the site's locked plugins where users load them fast.
    #[command(subcommand)]
    Site(site::Command),

    /// sifr as `apptainer`: install the front, and see what it does.
    ///
    /// Invoked as `apptainer` or `singularity` (links that `sifr front
    /// install DIR` makes), sifr takes over `docker://` pulls and the
    /// `docker://` images of exec, run, shell, inspect and test, and passes
    /// everything else to the real apptainer untouched.
    #[command(subcommand)]
    Front(front::Command),

    /// Print a shell completion script (bash, zsh or fish) on stdout.
    ///
    /// Examples:
    ///   sifr completions bash > ~/.local/share/bash-completion/completions/sifr
    ///   sifr completions zsh > ~/.zfunc/_sifr
    ///   sifr completions fish > ~/.config/fish/completions/sifr.fish
    #[command(verbatim_doc_comment)]
    Completions(docs::CompletionsArgs),

    /// Write man pages into DIR: sifr.1, and sifr-SUBCOMMAND.1 for each subcommand.
    ///
    /// Example:
    ///   sifr man ~/.local/share/man/man1 && man sifr-pull
    #[command(verbatim_doc_comment)]
    Man(docs::ManArgs),
}

/// What the CLI needs from the global flags.
pub struct Globals {
    pub config: Option<PathBuf>,
    pub verbose: u8,
    pub quiet: bool,
}

impl Globals {
    /// The least severe plugin log level shown on stderr, if any.
    fn log_threshold(&self) -> Option<LogLevel> {
        match (self.quiet, self.verbose) {
            (true, _) => None,
            (false, 0) => Some(LogLevel::Warn),
            (false, 1) => Some(LogLevel::Info),
            (false, 2) => Some(LogLevel::Debug),
            (false, _) => Some(LogLevel::Trace),
        }
    }

    /// Print a plugin's log lines on stderr, as far as the verbosity allows.
    pub fn show_logs(&self, plugin: &str, logs: &[LogLine]) {
        let Some(threshold) = self.log_threshold() else {
            return;
        };
        for line in logs.iter().filter(|l| l.level >= threshold) {
            eprintln!(
                "sifr: plugin '{plugin}': {}: {}",
                level_name(line.level),
                line.message
            );
        }
    }

    /// A warning on stderr, unless quiet.
    pub fn warn(&self, message: &str) {
        if !self.quiet {
            eprintln!("sifr: warning: {message}");
        }
    }

    /// One warning line when site-locked plugins were compiled now rather
    /// than loaded from the site store: slow on every call until an admin
    /// prepares the store.
    pub fn warn_site_store(&self, policy: &sifr::Policy) {
        if let Some(message) = site::miss_warning(policy) {
            self.warn(&message);
        }
    }
}

/// `--purpose`: what the image is wanted for. The library's `Purpose`
/// knows nothing of clap; this is its face on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PurposeArg {
    /// `sifr pull`: the image is to be fetched.
    Pull,
    /// `sifr run`/`exec`: the image is to be fetched if not cached, then run.
    Run,
}

impl From<PurposeArg> for sifr::Purpose {
    fn from(purpose: PurposeArg) -> Self {
        match purpose {
            PurposeArg::Pull => sifr::Purpose::Pull,
            PurposeArg::Run => sifr::Purpose::Run,
        }
    }
}

/// `$SIFR_CONFIG`, for `ConfigSources::standard`: the CLI reads the
/// environment and hands the library plain values.
pub fn config_env() -> Option<std::path::PathBuf> {
    std::env::var_os("SIFR_CONFIG").map(Into::into)
}

/// A [`sifr::RuntimeBuilder`] for `config`, given what the environment
/// says: the CLI reads `$SIFR_CACHE_DIR` and `$SIFR_APPTAINER` here (and
/// `$SIFR_PULL_TIMEOUT` through clap), and the builder settles them against
/// flags and the config. Registry credentials for digest look-ups come
/// from where users keep them (`APPTAINER_DOCKER_USERNAME` and
/// `_PASSWORD`, containers' `auth.json`, docker's `config.json`). Commands
/// add their flags.
pub fn builder(config: sifr::Config) -> sifr::RuntimeBuilder {
    sifr::RuntimeBuilder::new(config)
        .cache_dir(None, std::env::var_os("SIFR_CACHE_DIR").map(Into::into))
        .apptainer(None, apptainer_env())
        .registry_credentials(sifr::registry::CredentialSources::standard(
            |name| std::env::var_os(name),
            dirs::home_dir(),
        ))
}

/// `$SIFR_APPTAINER`, for `RuntimeOptions::apptainer_env`.
pub fn apptainer_env() -> Option<std::path::PathBuf> {
    std::env::var_os("SIFR_APPTAINER").map(Into::into)
}

pub fn level_name(level: LogLevel) -> &'static str {
    match level {
        LogLevel::Trace => "trace",
        LogLevel::Debug => "debug",
        LogLevel::Info => "info",
        LogLevel::Warn => "warn",
        LogLevel::Error => "error",
    }
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let globals = Globals {
        config: cli.config,
        verbose: cli.verbose,
        quiet: cli.quiet,
    };
    let result = match cli.command {
        Command::Resolve(args) => resolve::run(&globals, args),
        Command::Pull(args) => pull::pull(&globals, args),
        Command::Run(args) => run::run(&globals, args, sifr::apptainer::RunMode::Run),
        Command::Exec(args) => run::run(&globals, args, sifr::apptainer::RunMode::Exec),
        Command::Lock(args) => lock::run(&globals, args),
        Command::Cache(command) => cache::run(&globals, command),
        Command::Plugin(command) => plugin::run(&globals, command),
        Command::Front(command) => front::run(&globals, command),
        Command::Site(command) => site::run(&globals, command),
        Command::Completions(args) => docs::completions(args),
        Command::Man(args) => docs::man(args),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(error) => {
            report(&error);
            ExitCode::from(exit_code(&error))
        }
    }
}

/// Print an error and its causes on stderr.
pub fn report(error: &anyhow::Error) {
    eprintln!("sifr: error: {error:#}");
}

/// The exit code for an error, from its typed cause.
pub fn exit_code(error: &anyhow::Error) -> u8 {
    for cause in error.chain() {
        if let Some(e) = cause.downcast_ref::<sifr::lock::LockError>() {
            return lock::exit_code(e);
        }
        if let Some(e) = cause.downcast_ref::<sifr::Error>() {
            return sifr_exit_code(e);
        }
        if cause.is::<sifr::ConfigError>() || cause.is::<sifr::PluginLoadError>() {
            return exit::CONFIG;
        }
        if cause.is::<sifr::reference::GrammarError>() {
            return exit::INVALID_REFERENCE;
        }
    }
    exit::FAILURE
}

pub fn sifr_exit_code(error: &sifr::Error) -> u8 {
    match error {
        sifr::Error::InvalidReference(_) => exit::INVALID_REFERENCE,
        sifr::Error::Config(_) | sifr::Error::PluginLoad(_) => exit::CONFIG,
        sifr::Error::Deny { .. } => exit::DENIED,
        sifr::Error::PluginFailed(_) => exit::PLUGIN_FAILED,
        sifr::Error::Apptainer(_) => exit::NO_APPTAINER,
        sifr::Error::PullFailed { .. } => exit::PULL_FAILED,
        sifr::Error::Io { .. }
        | sifr::Error::Cache(_)
        | sifr::Error::NoCacheDir
        | sifr::Error::SiteStore { .. }
        | sifr::Error::Engine { .. } => exit::FAILURE,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
