//! The external programs the real backend drives, and how their failures
//! are reported.

use std::ffi::OsStr;
use std::fmt;
use std::io;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, ExitStatus, Stdio};

use super::signals;
use crate::failure::go_error_text;

/// A program the real backend runs, and the Debian package that has it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tool {
    pub program: &'static str,
    pub package: &'static str,
}

pub const SKOPEO: Tool = Tool::new("skopeo", "skopeo");
pub const UMOCI: Tool = Tool::new("umoci", "umoci");
pub const MKSQUASHFS: Tool = Tool::new("mksquashfs", "squashfs-tools");
pub const UNSQUASHFS: Tool = Tool::new("unsquashfs", "squashfs-tools");
pub const SIFTOOL: Tool = Tool::new("siftool", "siftool");
pub const BWRAP: Tool = Tool::new("bwrap", "bubblewrap");

/// How many trailing lines of a tool's stderr a failure quotes when the
/// output has no recognisable error line.
const TAIL_LINES: usize = 3;

impl Tool {
    const fn new(program: &'static str, package: &'static str) -> Self {
        Self { program, package }
    }

    /// A command for the tool, its arguments still to add.
    pub fn command(self) -> Command {
        Command::new(self.program)
    }

    /// Run the tool with `args` to completion and return its stdout.
    pub fn run<I, S>(self, args: I) -> Result<Vec<u8>, ToolError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut command = self.command();
        command.args(args).stdout(Stdio::piped());
        self.run_command(&mut command)
    }

    /// Run `command` (made by [`Tool::command`]) to completion, stdin empty
    /// and stderr captured, and return its stdout if it was piped.
    ///
    /// While it runs, the signals the double forwards go to it (see
    /// [`signals`]); a signal that arrived before it started stops it from
    /// starting at all.
    pub fn run_command(self, command: &mut Command) -> Result<Vec<u8>, ToolError> {
        if let Some(signal) = signals::received() {
            return Err(ToolError::Interrupted { tool: self, signal });
        }
        let child = command
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|err| self.spawn_error(err))?;
        let output = {
            let _forwarding = signals::forward_to(child.id());
            child.wait_with_output()
        }
        .map_err(|err| self.spawn_error(err))?;
        if output.status.success() {
            return Ok(output.stdout);
        }
        if let Some(signal) = signals::received() {
            return Err(ToolError::Interrupted { tool: self, signal });
        }
        Err(ToolError::Failed {
            tool: self,
            status: output.status,
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        })
    }

    /// The error for a tool that could not be started (or waited for).
    pub fn spawn_error(self, err: io::Error) -> ToolError {
        if err.kind() == io::ErrorKind::NotFound {
            ToolError::Missing(self)
        } else {
            ToolError::Spawn { tool: self, err }
        }
    }
}

/// Why a tool did not do its job.
#[derive(Debug)]
pub enum ToolError {
    /// Not on `PATH`.
    Missing(Tool),
    /// On `PATH`, but it could not be started.
    Spawn { tool: Tool, err: io::Error },
    /// It ran and failed.
    Failed {
        tool: Tool,
        status: ExitStatus,
        stderr: String,
    },
    /// The double got a signal while (or before) the tool ran.
    Interrupted { tool: Tool, signal: i32 },
}

impl fmt::Display for ToolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Missing(Tool { program, package }) => write!(
                f,
                "apptainer test double (real backend): {program} is not on PATH; \
                 install the Debian package {package} (apt-get install {package})"
            ),
            Self::Spawn { tool, err } => {
                write!(f, "cannot run {}: {}", tool.program, go_error_text(err))
            }
            Self::Failed {
                tool,
                status,
                stderr,
            } => {
                write!(f, "{} {}", tool.program, describe_status(*status))?;
                let gist = gist(stderr);
                if !gist.is_empty() {
                    write!(f, ": {gist}")?;
                }
                Ok(())
            }
            Self::Interrupted { tool, signal } => {
                write!(f, "{} interrupted by signal {signal}", tool.program)
            }
        }
    }
}

impl From<ToolError> for String {
    fn from(err: ToolError) -> Self {
        err.to_string()
    }
}

/// `exited with status 1` or `killed by signal 9`.
fn describe_status(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        (None, None) => format!("failed ({status})"),
    }
}

/// The gist of a tool's stderr, on one line, for a `FATAL:` message: the
/// last `Error: ...` line (siftool's, from cobra), else the message of the
/// last logrus line with `msg="..."` (skopeo's and umoci's), else the last
/// few lines.
pub fn gist(stderr: &str) -> String {
    let lines: Vec<&str> = stderr
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect();
    if let Some(error) = lines.iter().rev().find_map(|l| l.strip_prefix("Error: ")) {
        return error.to_owned();
    }
    if let Some(message) = lines.iter().rev().find_map(|l| logrus_message(l)) {
        return message;
    }
    lines[lines.len().saturating_sub(TAIL_LINES)..].join(" / ")
}

/// The `msg` of a logrus text line: `time=... level=fatal msg="a \"b\""`.
fn logrus_message(line: &str) -> Option<String> {
    let quoted = &line[line.find("msg=\"")? + "msg=\"".len()..];
    let mut message = String::new();
    let mut chars = quoted.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => return Some(message),
            '\\' => message.extend(chars.next()),
            c => message.push(c),
        }
    }
    // No closing quote: keep what there is rather than lose the message.
    Some(message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gist_prefers_cobra_error_lines() {
        let stderr = "Error: open /x.sif: no such file or directory\nUsage:\n  siftool list <sif_path>\n\nFlags:\n  -h, --help   help for list\n";
        assert_eq!(gist(stderr), "open /x.sif: no such file or directory");
    }

    #[test]
    fn gist_reads_logrus_messages() {
        let stderr = "Getting image source signatures\n\
            time=\"2026-01-01T00:00:00Z\" level=fatal msg=\"initializing source docker://h/r:1: \
            reading manifest 1 in h/r: manifest unknown: \\\"x\\\"\"\n";
        assert_eq!(
            gist(stderr),
            "initializing source docker://h/r:1: reading manifest 1 in h/r: manifest unknown: \"x\""
        );
        assert_eq!(gist("level=error msg=\"unterminated"), "unterminated");
    }

    #[test]
    fn gist_falls_back_to_the_last_lines() {
        assert_eq!(gist("a\n\nb\n  c  \nd\n"), "b / c / d");
        assert_eq!(gist(""), "");
    }

    #[test]
    fn missing_tools_name_their_package() {
        let message = MKSQUASHFS
            .spawn_error(io::Error::from(io::ErrorKind::NotFound))
            .to_string();
        assert!(message.contains("mksquashfs is not on PATH"), "{message}");
        assert!(
            message.contains("apt-get install squashfs-tools"),
            "{message}"
        );
    }

    #[test]
    #[cfg_attr(
        not(sifr_e2e),
        ignore = "needs siftool (and the other real-backend tools), or SIFR_E2E=1"
    )]
    fn failures_quote_the_tool_and_its_status() {
        crate::real::test_support::require_tools(&[("siftool", "siftool")]);
        let message = SIFTOOL
            .run(["list", "/nonexistent/apptainer-double.sif"])
            .map_err(String::from);
        let message = message.expect_err("siftool listed a file that does not exist");
        assert!(
            message.starts_with("siftool exited with status"),
            "{message}"
        );
        assert!(message.contains("no such file or directory"), "{message}");
    }
}
