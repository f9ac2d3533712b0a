//! `run` and `exec` in the real backend: unpack the SIF's root filesystem
//! into a scratch directory and run the command in it with bubblewrap.
//!
//! apptainer mounts the squashfs partition; the double, which has no
//! privileged helper, unpacks it (`siftool dump`, `unsquashfs`) and makes
//! the root read-only instead. Because the unpacked tree must be deleted
//! afterwards, the double waits for bubblewrap rather than becoming it,
//! passing signals on to the command (see [`signals`]).

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Component, Path, PathBuf};
use std::process::{Child, ExitCode, ExitStatus};
use std::thread;
use std::time::{Duration, Instant};

use super::sif;
use super::signals;
use super::tool::{BWRAP, UNSQUASHFS};
use super::workdir::WorkDir;
use crate::action::{self, Bind, CLEAN_ENV_PATH, Checked, launch_failure};
use crate::cli::{ActionArgs, ActionKind, ActionOptions};
use crate::controls::Controls;
use crate::failure::Failure;

/// Where the runscript is in an apptainer image.
const RUNSCRIPT: &str = "/.singularity.d/runscript";
/// How many symlinks a path lookup follows, as Linux's `MAXSYMLINKS`.
const MAX_SYMLINKS: u32 = 40;
/// How long to look for bubblewrap's child before signals just go to
/// bubblewrap.
const FOLLOW_TIMEOUT: Duration = Duration::from_secs(5);

pub fn run(args: &ActionArgs, controls: &Controls) -> Result<ExitCode, Failure> {
    let checked = action::check(args)?;
    signals::install();
    // The scratch directory is gone once this returns.
    let result = launch(args, &checked, controls.tmpdir.as_deref());
    let ending = match (result, signals::received()) {
        (Ok(status), received) => ending(status, received),
        // Interrupted before the command ran: whatever failed, the signal
        // was the cause.
        (Err(_), Some(signal)) => Ending::Signal(signal),
        (Err(failure), None) => return Err(failure),
    };
    match ending {
        Ending::Code(code) => Ok(ExitCode::from(code)),
        Ending::Signal(signal) => signals::die_of(signal),
    }
}

/// How the double ends after the command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    Code(u8),
    /// Die of this signal, as apptainer does when the container process
    /// died of one.
    Signal(i32),
}

/// How to end, given how bubblewrap ended and the signal the double passed
/// on, if any. bubblewrap exits `128 + N` when the command dies of signal
/// `N`, so that code after passing on `N` means the command died of it.
fn ending(status: ExitStatus, received: Option<i32>) -> Ending {
    match (status.code(), status.signal()) {
        (Some(code), _) if received.is_some_and(|signal| code == 128 + signal) => {
            Ending::Signal(code - 128)
        }
        (Some(code), _) => Ending::Code(u8::try_from(code).unwrap_or(255)),
        (None, Some(signal)) if received == Some(signal) => Ending::Signal(signal),
        (None, Some(signal)) => Ending::Code(u8::try_from(128 + signal).unwrap_or(255)),
        (None, None) => Ending::Code(255),
    }
}

/// Unpack the image into a scratch directory in `tmpdir` and run the
/// command there; the scratch directory is removed before this returns.
pub(super) fn launch(
    args: &ActionArgs,
    checked: &Checked,
    tmpdir: Option<&Path>,
) -> Result<ExitStatus, Failure> {
    let work = WorkDir::new(tmpdir)
        .map_err(|err| Failure::fatal(format!("apptainer test double (real backend): {err}")))?;
    let rootfs = unpack(&checked.image, work.path())
        .map_err(|err| Failure::fatal(format!("could not open image {}: {err}", args.image)))?;
    let command: Vec<String> = match args.kind {
        ActionKind::Run => std::iter::once(RUNSCRIPT.to_owned())
            .chain(args.command.iter().cloned())
            .collect(),
        ActionKind::Exec => args.command.clone(),
    };
    check_command(&rootfs, &command, &args.options, &checked.binds)?;
    let cwd = std::env::current_dir().ok();
    let sandbox = Sandbox {
        rootfs: &rootfs,
        image: &checked.image,
        binds: &checked.binds,
        options: &args.options,
        command: &command,
        cwd: cwd.as_deref(),
    };
    // A signal while unpacking: stop here (see `run`).
    if signals::received().is_some() {
        return Err(Failure::fatal("apptainer test double: interrupted"));
    }
    let mut bwrap = BWRAP
        .command()
        .args(sandbox.bwrap_args())
        .spawn()
        .map_err(|err| Failure::fatal(BWRAP.spawn_error(err).to_string()))?;
    let forwarding = signals::forward_to(bwrap.id());
    follow_into_sandbox(&mut bwrap);
    let status = bwrap.wait();
    drop(forwarding);
    status.map_err(|err| Failure::fatal(BWRAP.spawn_error(err).to_string()))
}

/// Unpack the SIF's primary partition into `work`, returning the root
/// filesystem's path.
fn unpack(image: &Path, work: &Path) -> Result<PathBuf, String> {
    let id = sif::primary_partition(image)?;
    let squashfs = work.join("rootfs.squashfs");
    sif::dump(image, id, &squashfs)?;
    let rootfs = work.join("rootfs");
    UNSQUASHFS.run([
        "-d".as_ref(),
        rootfs.as_os_str(),
        "-no-progress".as_ref(),
        "-quiet".as_ref(),
        squashfs.as_os_str(),
    ])?;
    // Unpacked, it is no longer needed: free the space while the command runs.
    let _ = fs::remove_file(&squashfs);
    Ok(rootfs)
}

/// bubblewrap does not pass signals on: signalled, it dies, and its child,
/// the command, is SIGKILLed (`--die-with-parent`). Without a PID namespace
/// the command is bubblewrap's only child, so once that child exists
/// signals go straight to it, and it gets the SIGTERM apptainer would have
/// handed it. Where `/proc` cannot tell, signals keep going to bubblewrap.
fn follow_into_sandbox(bwrap: &mut Child) {
    let children = format!("/proc/{0}/task/{0}/children", bwrap.id());
    let deadline = Instant::now() + FOLLOW_TIMEOUT;
    while Instant::now() < deadline {
        let child = fs::read_to_string(&children)
            .ok()
            .and_then(|text| text.split_whitespace().next()?.parse().ok());
        if let Some(pid) = child {
            signals::retarget(pid);
            return;
        }
        if !matches!(bwrap.try_wait(), Ok(None)) {
            return;
        }
        thread::sleep(Duration::from_millis(2));
    }
}

/// Fail as apptainer does when the command is not in the container, instead
/// of leaving it to bubblewrap's `execvp` (which exits 1, like a command
/// could). Paths under a bind are not checked: the host has them.
fn check_command(
    rootfs: &Path,
    command: &[String],
    options: &ActionOptions,
    binds: &[Bind],
) -> Result<(), Failure> {
    let Some(program) = command.first() else {
        return Err(Failure::fatal("apptainer test double: no command to run"));
    };
    let mounts: Vec<&Path> = binds
        .iter()
        .map(|bind| Path::new(&bind.destination))
        .collect();
    let found = if program.contains('/') {
        // A relative path depends on the working directory: bubblewrap's call.
        !program.starts_with('/') || is_executable(rootfs, Path::new(program), &mounts)
    } else {
        std::env::split_paths(&container_path(options))
            .filter(|dir| dir.is_absolute())
            .any(|dir| is_executable(rootfs, &dir.join(program), &mounts))
    };
    if found {
        Ok(())
    } else {
        // ENOENT, what execve(2) would have said.
        Err(launch_failure(program, io::Error::from_raw_os_error(2)))
    }
}

/// The `PATH` the command is looked up in: the one the sandbox gets.
fn container_path(options: &ActionOptions) -> OsString {
    match options.env.get("PATH") {
        Some(path) => path.into(),
        None if options.clean_env => CLEAN_ENV_PATH.into(),
        None => std::env::var_os("PATH").unwrap_or_else(|| CLEAN_ENV_PATH.into()),
    }
}

/// Whether `path` names an executable file in the container whose root is
/// `rootfs`, or lies under one of the `mounts` (and so cannot be judged).
fn is_executable(rootfs: &Path, path: &Path, mounts: &[&Path]) -> bool {
    match resolve_in_root(rootfs, path, mounts) {
        Lookup::Mounted => true,
        Lookup::Missing => false,
        Lookup::Found(host_path) => fs::metadata(host_path)
            .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0),
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Lookup {
    /// The host path of what the container path names.
    Found(PathBuf),
    /// The path leads under a bind mount.
    Mounted,
    Missing,
}

/// Resolve the absolute container `path` in `rootfs` as the kernel would
/// once `rootfs` is `/`: symlinks followed, absolute ones from `rootfs`,
/// `..` never above it.
fn resolve_in_root(rootfs: &Path, path: &Path, mounts: &[&Path]) -> Lookup {
    /// Stack the names in `path` on `pending`, so they pop in order.
    fn push(pending: &mut Vec<OsString>, path: &Path) {
        pending.extend(
            path.components()
                .rev()
                .filter_map(|component| match component {
                    Component::Normal(name) => Some(name.to_os_string()),
                    Component::ParentDir => Some("..".into()),
                    Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
                }),
        );
    }
    // What is left to walk, the next name last.
    let mut pending: Vec<OsString> = Vec::new();
    push(&mut pending, path);
    // The container path walked so far.
    let mut walked = PathBuf::from("/");
    let mut symlinks = 0;
    while let Some(name) = pending.pop() {
        if name == ".." {
            walked.pop();
            continue;
        }
        let next = walked.join(&name);
        if mounts.iter().any(|mount| next.starts_with(mount)) {
            return Lookup::Mounted;
        }
        let host = rootfs.join(next.strip_prefix("/").unwrap_or(&next));
        match fs::symlink_metadata(&host) {
            // bubblewrap makes the directories a mount point needs, so a
            // path may lead to a mount through directories the image lacks.
            Err(_) => {
                let full: PathBuf = std::iter::once(next.into_os_string())
                    .chain(pending.into_iter().rev())
                    .collect();
                return if mounts.iter().any(|mount| full.starts_with(mount)) {
                    Lookup::Mounted
                } else {
                    Lookup::Missing
                };
            }
            Ok(meta) if meta.file_type().is_symlink() => {
                symlinks += 1;
                let Ok(target) = fs::read_link(&host) else {
                    return Lookup::Missing;
                };
                if symlinks > MAX_SYMLINKS {
                    return Lookup::Missing;
                }
                if target.is_absolute() {
                    walked = PathBuf::from("/");
                }
                push(&mut pending, &target);
            }
            Ok(_) => walked = next,
        }
    }
    Lookup::Found(rootfs.join(walked.strip_prefix("/").unwrap_or(&walked)))
}

/// Everything bubblewrap needs to run the command.
struct Sandbox<'a> {
    rootfs: &'a Path,
    image: &'a Path,
    binds: &'a [Bind],
    options: &'a ActionOptions,
    command: &'a [String],
    /// The host's working directory, kept when a mount brings it in.
    cwd: Option<&'a Path>,
}

impl Sandbox<'_> {
    /// bubblewrap's argv. Unlike apptainer, which by default shares the
    /// host's /tmp, home and /dev, the sandbox gets a fresh /tmp and /dev
    /// and no home: as if `--contain` were always given. Like apptainer, it
    /// shares the host's network and PID namespaces (so signals reach the
    /// command; see [`follow_into_sandbox`]).
    fn bwrap_args(&self) -> Vec<OsString> {
        let options = self.options;
        let mut args: Vec<OsString> = Vec::new();
        let mut push = |items: &[&OsStr]| args.extend(items.iter().map(|item| item.to_os_string()));
        push(&["--die-with-parent".as_ref()]);
        push(&["--bind".as_ref(), self.rootfs.as_os_str(), "/".as_ref()]);
        push(&["--proc".as_ref(), "/proc".as_ref()]);
        push(&["--dev".as_ref(), "/dev".as_ref()]);
        push(&["--tmpfs".as_ref(), "/tmp".as_ref()]);
        // `--home SRC[:DST]`: SRC is the home, bound at DST (default SRC).
        let home = options
            .home
            .as_deref()
            .map(|spec| match spec.split_once(':') {
                Some((source, destination)) => (source, destination),
                None => (spec, spec),
            });
        if let Some((source, destination)) = home {
            push(&["--bind".as_ref(), source.as_ref(), destination.as_ref()]);
        }
        for bind in self.binds {
            let kind = if bind.read_only {
                "--ro-bind"
            } else {
                "--bind"
            };
            push(&[
                kind.as_ref(),
                bind.source.as_ref(),
                bind.destination.as_ref(),
            ]);
        }
        // Last of the mounts, so bubblewrap could still make mount points.
        // A writable root changes only the scratch copy, so --writable-tmpfs
        // has what it promises: writes that vanish with the container.
        if !options.writable_tmpfs {
            push(&["--remount-ro".as_ref(), "/".as_ref()]);
        }
        // Like apptainer, without --pwd the command starts in the host's
        // working directory when a mount brings it into the container.
        let kept_cwd = self.cwd.and_then(|cwd| {
            let mounts = home.into_iter().chain(
                self.binds
                    .iter()
                    .map(|b| (b.source.as_str(), b.destination.as_str())),
            );
            mounts
                .filter_map(|(source, destination)| {
                    let rest = cwd.strip_prefix(source).ok()?;
                    Some(Path::new(destination).join(rest).into_os_string())
                })
                .next()
        });
        if let Some(dir) = &options.pwd {
            push(&["--chdir".as_ref(), dir.as_ref()]);
        } else if let Some(dir) = &kept_cwd {
            push(&["--chdir".as_ref(), dir]);
        }
        let mut env: BTreeMap<&str, &OsStr> = BTreeMap::new();
        if options.clean_env {
            // bubblewrap applies --clearenv where it stands, so it goes first.
            push(&["--clearenv".as_ref()]);
            env.insert("PATH", CLEAN_ENV_PATH.as_ref());
        }
        for (key, value) in &options.env {
            env.insert(key, value.as_ref());
        }
        env.insert("APPTAINER_CONTAINER", self.image.as_os_str());
        if let Some(name) = self.image.file_name() {
            env.insert("APPTAINER_NAME", name);
        }
        if let Some((_, destination)) = home {
            env.insert("HOME", destination.as_ref());
        }
        for (key, value) in env {
            push(&["--setenv".as_ref(), key.as_ref(), value]);
        }
        push(&["--".as_ref()]);
        args.extend(self.command.iter().map(OsString::from));
        args
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    fn argv(args: &[OsString]) -> Vec<&str> {
        args.iter().map(|arg| arg.to_str().unwrap()).collect()
    }

    fn sandbox_args(options: &ActionOptions, binds: &[Bind], command: &[&str]) -> Vec<OsString> {
        let command: Vec<String> = command.iter().map(|s| (*s).to_owned()).collect();
        Sandbox {
            rootfs: Path::new("/scratch/rootfs"),
            image: Path::new("/images/a.sif"),
            binds,
            options,
            command: &command,
            cwd: None,
        }
        .bwrap_args()
    }

    #[test]
    fn plain_sandbox() {
        let args = sandbox_args(&ActionOptions::default(), &[], &["ls", "-l"]);
        assert_eq!(
            argv(&args),
            [
                "--die-with-parent",
                "--bind",
                "/scratch/rootfs",
                "/",
                "--proc",
                "/proc",
                "--dev",
                "/dev",
                "--tmpfs",
                "/tmp",
                "--remount-ro",
                "/",
                "--setenv",
                "APPTAINER_CONTAINER",
                "/images/a.sif",
                "--setenv",
                "APPTAINER_NAME",
                "a.sif",
                "--",
                "ls",
                "-l"
            ]
        );
    }

    #[test]
    fn sandbox_with_every_option() {
        let options = ActionOptions {
            clean_env: true,
            pwd: Some("/data".into()),
            env: [("A".into(), "1".into()), ("PATH".into(), "/opt/bin".into())].into(),
            writable_tmpfs: true,
            ..ActionOptions::default()
        };
        let binds = [
            Bind {
                source: "/host/in".into(),
                destination: "/data".into(),
                read_only: true,
            },
            Bind {
                source: "/host/out".into(),
                destination: "/out".into(),
                read_only: false,
            },
        ];
        let args = sandbox_args(&options, &binds, &["/.singularity.d/runscript", "x"]);
        assert_eq!(
            argv(&args)[10..],
            [
                "--ro-bind",
                "/host/in",
                "/data",
                "--bind",
                "/host/out",
                "/out",
                "--chdir",
                "/data",
                "--clearenv",
                "--setenv",
                "A",
                "1",
                "--setenv",
                "APPTAINER_CONTAINER",
                "/images/a.sif",
                "--setenv",
                "APPTAINER_NAME",
                "a.sif",
                "--setenv",
                "PATH",
                "/opt/bin",
                "--",
                "/.singularity.d/runscript",
                "x"
            ]
        );
    }

    /// Snakemake's `exec --home <workdir> …`, run from that workdir: the
    /// home is bound, HOME is set, and the command starts there.
    #[test]
    fn home_is_bound_and_the_working_directory_kept() {
        let options = ActionOptions {
            home: Some("/data/flow".into()),
            ..ActionOptions::default()
        };
        let command = ["sh".to_owned()];
        let args = Sandbox {
            rootfs: Path::new("/scratch/rootfs"),
            image: Path::new("/images/a.sif"),
            binds: &[],
            options: &options,
            command: &command,
            cwd: Some(Path::new("/data/flow/sub")),
        }
        .bwrap_args();
        let args = argv(&args);
        assert_eq!(args[10..13], ["--bind", "/data/flow", "/data/flow"]);
        let chdir = args.iter().position(|a| *a == "--chdir").unwrap();
        assert_eq!(args[chdir + 1], "/data/flow/sub");
        let home = args.iter().position(|a| *a == "HOME").unwrap();
        assert_eq!(args[home + 1], "/data/flow");
        // Elsewhere, the command starts where bubblewrap puts it.
        let elsewhere = sandbox_args(&options, &[], &["sh"]);
        assert!(!argv(&elsewhere).contains(&"--chdir"));
    }

    #[test]
    fn endings() {
        let exited = |code: i32| ExitStatus::from_raw(code << 8);
        let killed = ExitStatus::from_raw;
        assert_eq!(ending(exited(0), None), Ending::Code(0));
        assert_eq!(ending(exited(7), Some(15)), Ending::Code(7));
        assert_eq!(ending(exited(143), None), Ending::Code(143));
        // bubblewrap's report of the command's death by the passed-on signal.
        assert_eq!(ending(exited(143), Some(15)), Ending::Signal(15));
        assert_eq!(ending(killed(9), None), Ending::Code(137));
        assert_eq!(ending(killed(15), Some(15)), Ending::Signal(15));
    }

    /// A rootfs with `/bin/busybox` (executable), `/bin/sh -> busybox`,
    /// `/usr/bin/tool -> /bin/busybox`, `/bin/data` (not executable) and a
    /// symlink loop.
    fn rootfs(work: &WorkDir) -> PathBuf {
        let root = work.path().join("rootfs");
        fs::create_dir_all(root.join("bin")).unwrap();
        fs::create_dir_all(root.join("usr/bin")).unwrap();
        fs::write(root.join("bin/busybox"), "").unwrap();
        fs::set_permissions(root.join("bin/busybox"), fs::Permissions::from_mode(0o755)).unwrap();
        fs::write(root.join("bin/data"), "").unwrap();
        symlink("busybox", root.join("bin/sh")).unwrap();
        symlink("/bin/busybox", root.join("usr/bin/tool")).unwrap();
        symlink("../../../../bin/sh", root.join("usr/bin/up")).unwrap();
        symlink("loop", root.join("bin/loop")).unwrap();
        root
    }

    #[test]
    fn lookups_stay_in_the_root() {
        let work = WorkDir::new(None).unwrap();
        let root = rootfs(&work);
        let lookup = |path: &str| resolve_in_root(&root, Path::new(path), &[]);
        assert_eq!(lookup("/bin/sh"), Lookup::Found(root.join("bin/busybox")));
        assert_eq!(
            lookup("/usr/bin/tool"),
            Lookup::Found(root.join("bin/busybox"))
        );
        assert_eq!(
            lookup("/usr/bin/up"),
            Lookup::Found(root.join("bin/busybox"))
        );
        assert_eq!(
            lookup("/bin/../usr/./bin/tool"),
            Lookup::Found(root.join("bin/busybox"))
        );
        assert_eq!(lookup("/bin/loop"), Lookup::Missing);
        assert_eq!(lookup("/bin/nope"), Lookup::Missing);
        let mounts = [
            Path::new("/data"),
            Path::new("/usr/bin/tool"),
            Path::new("/a/b"),
        ];
        let lookup = |path: &str| resolve_in_root(&root, Path::new(path), &mounts);
        assert_eq!(lookup("/data/x"), Lookup::Mounted);
        assert_eq!(
            lookup("/a/b/c"),
            Lookup::Mounted,
            "through directories the image lacks"
        );
        assert_eq!(
            lookup("/usr/bin/tool"),
            Lookup::Mounted,
            "a mount hides the symlink"
        );
        assert_eq!(lookup("/a/c"), Lookup::Missing);
    }

    #[test]
    fn commands_are_looked_up_in_the_container() {
        let work = WorkDir::new(None).unwrap();
        let root = rootfs(&work);
        let options = ActionOptions {
            clean_env: true,
            ..ActionOptions::default()
        };
        let check = |command: &str, binds: &[Bind]| {
            check_command(&root, &[command.to_owned()], &options, binds)
        };
        assert_eq!(check("sh", &[]), Ok(()));
        assert_eq!(check("tool", &[]), Ok(()));
        assert_eq!(check("/bin/sh", &[]), Ok(()));
        assert_eq!(check("./relative/x", &[]), Ok(()));
        assert_eq!(
            check("nope", &[]),
            Err(Failure::Fatal(
                "\"nope\": executable file not found in $PATH".into()
            ))
        );
        assert_eq!(
            check("data", &[]),
            Err(Failure::Fatal(
                "\"data\": executable file not found in $PATH".into()
            ))
        );
        assert_eq!(
            check("/bin/nope", &[]),
            Err(Failure::Fatal(
                "exec /bin/nope failed: no such file or directory".into()
            ))
        );
        let bind = Bind {
            source: "/host".into(),
            destination: "/opt/tools".into(),
            read_only: true,
        };
        assert_eq!(check("/opt/tools/run", &[bind]), Ok(()));

        let with_path = ActionOptions {
            env: [("PATH".into(), "/usr/bin".into())].into(),
            ..options.clone()
        };
        let check = |command: &str| check_command(&root, &[command.to_owned()], &with_path, &[]);
        assert_eq!(check("tool"), Ok(()));
        assert!(check("sh").is_err(), "/bin is not on the --env PATH");
    }
}
