//! `apptainer run|exec` with hermetic defaults, and which of the host's
//! apptainer variables reach it.

use std::path::Path;
use std::process::Command;

use super::{Apptainer, shell_code};

/// Options of `sifr run` / `sifr exec`.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// `SRC:DST[:ro]` binds.
    pub binds: Vec<String>,
    /// `K=V` environment for the container.
    pub env: Vec<String>,
    pub pwd: Option<String>,
    pub nv: bool,
    /// Passed to apptainer as they are, before the image.
    pub extra_args: Vec<String>,
    /// Which of the host's apptainer variables reach apptainer.
    pub host_env: HostEnv,
}

/// Which host variables that change a run apptainer gets. `--cleanenv`
/// keeps the host's environment out of the container, but apptainer still
/// reads its own variables from it: `APPTAINERENV_FOO` sets `FOO` in the
/// container and `APPTAINER_BIND` adds binds, whatever sifr's flags say.
/// Each class is passed or dropped as a whole, by this rule (the README
/// says why):
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostEnv {
    /// [`CONTAINER_ENV_VARS`]: the container's environment, set from the
    /// host. Dropped by default (`sifr run --keep-container-env` passes
    /// them): hermetic means `--env` is the only way in.
    pub container_env: bool,
    /// [`BIND_VARS`]: binds, which sites set in environment modules (a
    /// scratch or project filesystem every job expects). Passed by default
    /// (`sifr run --no-env-binds` drops them).
    pub binds: bool,
}

impl Default for HostEnv {
    fn default() -> Self {
        Self {
            container_env: false,
            binds: true,
        }
    }
}

/// Variables (prefixes end in `_`) that set the container's environment.
pub const CONTAINER_ENV_VARS: &[&str] = &[
    "APPTAINERENV_",
    "SINGULARITYENV_",
    "APPTAINER_ENV_FILE",
    "SINGULARITY_ENV_FILE",
];

/// Variables that add binds.
pub const BIND_VARS: &[&str] = &[
    "APPTAINER_BIND",
    "APPTAINER_BINDPATH",
    "SINGULARITY_BIND",
    "SINGULARITY_BINDPATH",
];

impl HostEnv {
    /// Whether a host variable named `name` reaches apptainer on a run.
    pub fn passes(&self, name: &str) -> bool {
        let container_env = CONTAINER_ENV_VARS.iter().any(|var| {
            if var.ends_with('_') {
                name.starts_with(var)
            } else {
                name == *var
            }
        });
        if container_env {
            return self.container_env;
        }
        if BIND_VARS.contains(&name) {
            return self.binds;
        }
        true
    }

    /// The host's variables this rule drops.
    pub fn dropped(&self) -> Vec<std::ffi::OsString> {
        std::env::vars_os()
            .map(|(name, _)| name)
            .filter(|name| !self.passes(&name.to_string_lossy()))
            .collect()
    }
}

/// `run` or `exec`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunMode {
    Run,
    Exec,
}

impl Apptainer {
    /// The argv of a run, after the program name:
    /// `run|exec --cleanenv --no-home [--pwd D] [--bind B]... [--env K=V]... [--nv] [EXTRA]... SIF ARGS...`.
    pub fn run_args(
        mode: RunMode,
        sif: &Path,
        options: &RunOptions,
        args: &[String],
    ) -> Vec<String> {
        let mut argv = vec![
            match mode {
                RunMode::Run => "run",
                RunMode::Exec => "exec",
            }
            .to_string(),
            "--cleanenv".to_string(),
            "--no-home".to_string(),
        ];
        if let Some(pwd) = &options.pwd {
            argv.extend(["--pwd".to_string(), pwd.clone()]);
        }
        for bind in &options.binds {
            argv.extend(["--bind".to_string(), bind.clone()]);
        }
        for env in &options.env {
            argv.extend(["--env".to_string(), env.clone()]);
        }
        if options.nv {
            argv.push("--nv".to_string());
        }
        argv.extend(options.extra_args.iter().cloned());
        argv.push(sif.display().to_string());
        argv.extend(args.iter().cloned());
        argv
    }

    /// Run apptainer with inherited stdio and return its exit code.
    /// SIGINT, SIGTERM, SIGHUP and SIGQUIT sent to sifr by another process
    /// are forwarded; those from the terminal already reach apptainer, which
    /// shares sifr's process group.
    pub fn run(&self, argv: &[String], host_env: &HostEnv) -> std::io::Result<i32> {
        use signal_hook::consts::{SIGHUP, SIGINT, SIGQUIT, SIGTERM};
        use signal_hook::iterator::SignalsInfo;
        use signal_hook::iterator::exfiltrator::WithOrigin;

        let mut signals = SignalsInfo::<WithOrigin>::new([SIGINT, SIGTERM, SIGHUP, SIGQUIT])?;
        let handle = signals.handle();
        let mut command = Command::new(&self.path);
        command.args(argv);
        for name in host_env.dropped() {
            command.env_remove(name);
        }
        let mut child = command.spawn()?;
        let pid = child.id() as i32;
        let forwarder = std::thread::spawn(move || {
            for info in signals.forever() {
                // No sending process means the kernel (the terminal) sent it
                // to the whole foreground group, apptainer included.
                if info.process.is_some()
                    && let (Some(pid), Some(signal)) = (
                        rustix::process::Pid::from_raw(pid),
                        rustix::process::Signal::from_named_raw(info.signal),
                    )
                {
                    let _ = rustix::process::kill_process(pid, signal);
                }
            }
        });
        let status = child.wait();
        handle.close();
        let _ = forwarder.join();
        Ok(shell_code(status?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_env_rule_drops_container_env_and_keeps_binds_by_default() {
        let rule = HostEnv::default();
        for name in [
            "APPTAINERENV_FOO",
            "SINGULARITYENV_PREPEND_PATH",
            "APPTAINER_ENV_FILE",
            "SINGULARITY_ENV_FILE",
        ] {
            assert!(!rule.passes(name), "{name}");
        }
        for name in [
            "APPTAINER_BIND",
            "APPTAINER_BINDPATH",
            "SINGULARITY_BIND",
            "SINGULARITY_BINDPATH",
            "APPTAINER_CACHEDIR",
            "APPTAINER_TMPDIR",
            "APPTAINER_DOCKER_USERNAME",
            "PATH",
        ] {
            assert!(rule.passes(name), "{name}");
        }
        let flipped = HostEnv {
            container_env: true,
            binds: false,
        };
        assert!(flipped.passes("APPTAINERENV_FOO"));
        assert!(!flipped.passes("SINGULARITY_BINDPATH"));
        assert!(flipped.passes("APPTAINER_CACHEDIR"));
    }
}
