//! How the double fails: in apptainer's words, on apptainer's streams, with
//! apptainer's exit codes.
//!
//! apptainer has two kinds of failure, and callers can tell them apart:
//!
//! * usage errors found by cobra/pflag (unknown flag, wrong number of
//!   arguments, unknown command). apptainer prints
//!   `Error for command "exec": unknown flag: --xyz` to stderr, a usage hint
//!   to *stdout*, and exits 1 (`cmd/internal/cli/apptainer.go`,
//!   `ExecuteApptainer`);
//! * everything else goes through `sylog.Fatalf`: `FATAL:   message` on
//!   stderr and exit 255.

use std::io;
use std::process::ExitCode;

/// The last line apptainer prints after any usage error (to stdout).
const RUN_HELP: &str = "Run 'apptainer --help' for more detailed usage information.";

/// Exit code of a cobra usage error.
const USAGE_EXIT: u8 = 1;
/// Exit code of `sylog.Fatalf`.
const FATAL_EXIT: u8 = 255;

/// Why an invocation of the double did not succeed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// A cobra/pflag usage error in `command` (`"apptainer"` for the root).
    Usage { command: String, message: String },
    /// A subcommand apptainer does not have.
    UnknownCommand(String),
    /// A bare `apptainer`: cobra prints the usage and exits 1.
    NoCommand,
    /// A `sylog.Fatalf`.
    Fatal(String),
}

impl Failure {
    pub fn usage(command: &str, message: impl Into<String>) -> Self {
        Self::Usage {
            command: command.to_owned(),
            message: message.into(),
        }
    }

    pub fn fatal(message: impl Into<String>) -> Self {
        Self::Fatal(message.into())
    }

    /// Print the failure as apptainer would and return its exit code.
    pub fn report(&self) -> ExitCode {
        match self {
            Self::Usage { command, message } => {
                eprintln!("Error for command {command:?}: {message}\n");
                println!("{RUN_HELP}");
                ExitCode::from(USAGE_EXIT)
            }
            Self::UnknownCommand(name) => {
                let message = format!("unknown command {name:?} for \"apptainer\"");
                eprintln!("Error: {message}\n");
                eprintln!("Error for command \"apptainer\": {message}\n");
                println!("{RUN_HELP}");
                ExitCode::from(USAGE_EXIT)
            }
            Self::NoCommand => {
                println!("{}", crate::USAGE);
                println!("{RUN_HELP}");
                ExitCode::from(USAGE_EXIT)
            }
            Self::Fatal(message) => {
                eprintln!("FATAL:   {message}");
                ExitCode::from(FATAL_EXIT)
            }
        }
    }
}

/// An OS error as Go prints it (`no such file or directory`), not as Rust
/// does (`No such file or directory (os error 2)`), so messages built from it
/// read like apptainer's.
pub fn go_error_text(err: &io::Error) -> String {
    let text = err.to_string();
    let text = text.split(" (os error").next().unwrap_or(&text);
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_errors_read_like_go() {
        let err = io::Error::from_raw_os_error(2);
        assert_eq!(go_error_text(&err), "no such file or directory");
    }
}
