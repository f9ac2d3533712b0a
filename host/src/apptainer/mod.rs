//! Driving apptainer (or singularity): finding it, pulling, running.
//!
//! - [`discover`]: which binary, and its version.
//! - [`pull`]: one pull attempt, stopped on a timeout or a signal, and how
//!   an attempt fails.
//! - [`run`]: `apptainer run|exec` with hermetic defaults, and which host
//!   variables reach it.

mod discover;
mod pull;
mod run;

use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::ExitStatus;

use serde::Serialize;

pub use discover::{DiscoverError, discover};
pub use pull::{Attempt, AttemptFailure};
pub use run::{BIND_VARS, CONTAINER_ENV_VARS, HostEnv, RunMode, RunOptions};

/// Which program it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Flavor {
    Apptainer,
    Singularity,
}

/// A parsed version: `1.3.4-1.el9`, `4.0.1+dfsg-1`, `1.4.0+105-g938b609b6`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Version {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
    /// What follows the numbers (distro or build suffix), if anything.
    pub suffix: String,
    /// As printed.
    pub raw: String,
}

impl Version {
    /// Parse `apptainer version`'s bare output or `--version`'s
    /// `apptainer version X` / `singularity-ce version X`.
    pub fn parse(output: &str) -> Option<Self> {
        let raw = output.split_whitespace().last()?.trim_start_matches('v');
        let numeric_end = raw
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(raw.len());
        let mut parts = raw[..numeric_end].split('.').filter(|p| !p.is_empty());
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next().map_or(Some(0), |p| p.parse().ok())?;
        let patch = parts.next().map_or(Some(0), |p| p.parse().ok())?;
        Some(Self {
            major,
            minor,
            patch,
            suffix: raw[numeric_end..].to_string(),
            raw: raw.to_string(),
        })
    }
}

/// A found apptainer.
#[derive(Debug, Clone, Serialize)]
pub struct Apptainer {
    pub path: PathBuf,
    pub flavor: Flavor,
    pub version: Version,
}

/// `exited with status 255` / `was killed by signal 9`.
pub fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(signal)) => format!("was killed by signal {signal}"),
        _ => "failed".to_string(),
    }
}

/// The exit code a shell would report: the code, or 128 + the signal.
pub fn shell_code(status: ExitStatus) -> i32 {
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    #[test]
    fn versions_parse_with_distro_suffixes() {
        for (text, (major, minor, patch), suffix) in [
            ("1.3.4-1.el9", (1, 3, 4), "-1.el9"),
            ("4.0.1+dfsg-1", (4, 0, 1), "+dfsg-1"),
            ("1.4.0+105-g938b609b6", (1, 4, 0), "+105-g938b609b6"),
            ("apptainer version 1.3.4-1.el9", (1, 3, 4), "-1.el9"),
            ("singularity-ce version 4.1.2-jammy", (4, 1, 2), "-jammy"),
            ("1.2", (1, 2, 0), ""),
        ] {
            let v = Version::parse(text).unwrap_or_else(|| panic!("{text}"));
            assert_eq!((v.major, v.minor, v.patch), (major, minor, patch), "{text}");
            assert_eq!(v.suffix, suffix, "{text}");
        }
        assert!(Version::parse("").is_none());
        assert!(Version::parse("apptainer version unknown").is_none());
    }

    #[test]
    fn pull_and_run_argv_have_apptainer_s_shape() {
        assert_eq!(
            Apptainer::pull_args(Path::new("/c/tmp/x.sif"), "docker://a/b:1", true, None),
            [
                "pull",
                "--force",
                "--no-https",
                "/c/tmp/x.sif",
                "docker://a/b:1"
            ]
        );
        let options = RunOptions {
            binds: vec!["/data:/data:ro".into()],
            env: vec!["A=1".into()],
            pwd: Some("/data".into()),
            nv: true,
            extra_args: vec!["--contain".into()],
            host_env: HostEnv::default(),
        };
        assert_eq!(
            Apptainer::run_args(
                RunMode::Exec,
                Path::new("/c/x.sif"),
                &options,
                &["ls".into(), "-l".into()]
            ),
            [
                "exec",
                "--cleanenv",
                "--no-home",
                "--pwd",
                "/data",
                "--bind",
                "/data:/data:ro",
                "--env",
                "A=1",
                "--nv",
                "--contain",
                "/c/x.sif",
                "ls",
                "-l"
            ]
        );
    }
}
