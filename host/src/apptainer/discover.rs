//! Finding apptainer: the places it is named, then PATH.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::{Apptainer, Flavor, Version};

/// Why apptainer could not be used.
#[derive(Debug, thiserror::Error)]
pub enum DiscoverError {
    #[error(
        "neither apptainer nor singularity was found on PATH; install Apptainer \
         (EL: `dnf install apptainer` from EPEL; Debian/Ubuntu: the apptainer package \
         from the Apptainer PPA or release .deb), or point sifr at it with \
         --apptainer PATH, SIFR_APPTAINER=PATH or `[apptainer] path` in the config"
    )]
    NotFound,
    #[error("{what} names {}, which cannot be run: {reason}; fix {what} or unset it", path.display())]
    Unusable {
        what: String,
        path: PathBuf,
        reason: String,
    },
}

/// Where to look, in order: `explicit` (`--apptainer`), `env` (the CLI
/// passes `$SIFR_APPTAINER`; empty is unset), `configured` (the config's
/// `[apptainer] path`), then `apptainer` and `singularity` on PATH.
pub fn discover(
    explicit: Option<&Path>,
    env: Option<&Path>,
    configured: Option<&Path>,
) -> Result<Apptainer, DiscoverError> {
    let env = env.filter(|p| !p.as_os_str().is_empty());
    let named = [
        ("--apptainer", explicit.map(Path::to_path_buf)),
        ("$SIFR_APPTAINER", env.map(Path::to_path_buf)),
        (
            "`[apptainer] path` in the config",
            configured.map(Path::to_path_buf),
        ),
    ];
    for (what, path) in named {
        if let Some(path) = path {
            let resolved = which::which(&path).unwrap_or(path.clone());
            return probe(&resolved).map_err(|reason| DiscoverError::Unusable {
                what: what.to_string(),
                path,
                reason,
            });
        }
    }
    for name in ["apptainer", "singularity"] {
        if let Ok(path) = which::which(name) {
            return probe(&path).map_err(|reason| DiscoverError::Unusable {
                what: format!("`{name}` on PATH"),
                path,
                reason,
            });
        }
    }
    Err(DiscoverError::NotFound)
}

fn probe(path: &Path) -> Result<Apptainer, String> {
    let run = |arg: &str| {
        Command::new(path)
            .arg(arg)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| e.to_string())
    };
    let out = run("version")?;
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() || Version::parse(&text).is_none() {
        let out = run("--version")?;
        text = String::from_utf8_lossy(&out.stdout).into_owned();
    }
    let version = Version::parse(text.trim())
        .ok_or_else(|| format!("its version output {:?} is not a version", text.trim()))?;
    let flavor = if text.contains("singularity")
        || path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().contains("singularity"))
    {
        Flavor::Singularity
    } else {
        Flavor::Apptainer
    };
    Ok(Apptainer {
        path: path.to_path_buf(),
        flavor,
        version,
    })
}
