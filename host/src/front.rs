//! The front: sifr standing in for `apptainer` and `singularity`, so that
//! the pulls workflow engines and batch scripts make go through the site's
//! policy and the shared cache without anyone editing a pipeline.
//!
//! This module is what an embedder (or the `sifr` binary, when it is
//! invoked as `apptainer`) needs, and none of it runs anything:
//!
//! - [`classify`] reads an apptainer command line and says what the front
//!   does with it: take over a `docker://` pull, replace a `docker://`
//!   image of an action by the cached SIF, or pass it through untouched.
//! - [`find_real`] finds the real apptainer without finding the front.
//! - [`place`] makes a pull's destination a file apptainer can run, from a
//!   verified cache blob, without ever sharing the blob's inode.
//!
//! apptainer's command line is cobra/pflag: flags come before positionals
//! (interspersing is off), `--` ends flags, `--flag=value` and `-Fvalue`
//! are allowed. To find the image of `exec --home /w --bind /x IMG cmd`,
//! the front must know which flags take a value; the tables below list
//! apptainer 1.4's. An action flag the front does not know stops it from
//! guessing: the command goes through untouched.

use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::reference::ImageRef;

/// The names the front answers to (argv[0]'s file name).
pub const NAMES: &[&str] = &["apptainer", "singularity"];

/// The front's own flag, before the command: explain, do not run.
pub const EXPLAIN_FLAG: &str = "--explain";

/// Set in the environment of every program the front starts, to the real
/// apptainer's path: a front that finds it set (outside a container) has
/// been reached again through the program it started, which would recurse.
pub const REAL_ENV: &str = "SIFR_FRONT_REAL";

/// What the front does with one apptainer command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Classified {
    /// Goes to the real apptainer byte for byte.
    PassThrough(PassReason),
    /// `pull … docker://REF` (or a plain `build DEST docker://REF`):
    /// through sifr's policy and cache, then placed at the destination.
    Pull(PullRequest),
    /// `exec|run|shell|inspect|test … docker://REF …`: the reference is
    /// replaced by the cached SIF's path, everything else kept.
    Action(ActionRequest),
}

/// Why a command goes through untouched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PassReason {
    /// No command (`apptainer`, `apptainer --help`).
    NoCommand,
    /// `--version` or `version`: engines parse it, so it must be the real one.
    Version,
    /// A command the front leaves alone (`build` with options, `instance`,
    /// `cache`, `help`, …).
    Command(String),
    /// The image is not a `docker://` reference (a local file, `oras://`,
    /// `library://`, `shub://`, …).
    NotDocker(String),
    /// The command line has no image where one was expected (apptainer
    /// will say what is wrong).
    NoImage,
    /// A flag the front cannot read before the image: it will not guess
    /// where the image is.
    UnknownFlag(String),
}

impl std::fmt::Display for PassReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NoCommand => write!(f, "no command"),
            Self::Version => write!(f, "the version is always the real apptainer's"),
            Self::Command(c) => write!(f, "`{c}` is not a command the front takes over"),
            Self::NotDocker(image) => write!(f, "{image} is not a docker:// reference"),
            Self::NoImage => write!(f, "no image on the command line"),
            Self::UnknownFlag(flag) => write!(
                f,
                "{flag} is not a flag the front knows, so it cannot tell where the image is"
            ),
        }
    }
}

/// `pull` or a plain `build`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullKind {
    Pull,
    Build,
}

/// Where a pull's image goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dest {
    /// `pull DEST docker://…` / `build DEST docker://…`.
    Path(String),
    /// `pull --name NAME [--dir DIR] docker://…`.
    Named { name: String, dir: Option<String> },
    /// `pull [--dir DIR] docker://…`: apptainer's own name for it.
    Default { dir: Option<String> },
}

/// A pull the front takes over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullRequest {
    pub kind: PullKind,
    /// The reference, without `docker://`.
    pub reference: String,
    /// Where `docker://REF` is in the argv (after the program name).
    pub uri_index: usize,
    /// Where the command (`pull`, `build`) is: flags go after it.
    pub command_index: usize,
    pub dest: Dest,
    /// `-F`/`--force`: replace an existing destination.
    pub force: bool,
    /// `--arch ARCH`.
    pub arch: Option<String>,
    /// `--disable-cache`: apptainer's own layer cache is not used.
    pub disable_cache: bool,
    /// `--no-https` or the deprecated `--nohttps`.
    pub no_https: bool,
    /// Pull flags the front does not implement: the pull goes to the real
    /// apptainer, with the URI the policy chose.
    pub unknown_flags: Vec<String>,
    /// Root flags that quieten apptainer (`-q`, `-s`).
    pub quiet: bool,
}

/// An action whose image is a `docker://` reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActionRequest {
    pub command: String,
    /// The reference, without `docker://`.
    pub reference: String,
    /// Where `docker://REF` is in the argv (after the program name).
    pub image_index: usize,
    pub quiet: bool,
}

/// A flag table: (long name, shorthand).
type Flags = &'static [(&'static str, Option<char>)];

const ROOT_SWITCHES: Flags = &[
    ("debug", Some('d')),
    ("quiet", Some('q')),
    ("silent", Some('s')),
    ("verbose", Some('v')),
    ("nocolor", None),
    ("build-config", None),
];
const ROOT_VALUES: Flags = &[("config", Some('c'))];

/// `pull` flags whose meaning the front implements (see the README).
const PULL_OWN_SWITCHES: Flags = &[
    ("force", Some('F')),
    ("disable-cache", None),
    ("no-https", None),
    ("nohttps", None),
    // Signatures concern library:// images; a docker:// pull has none.
    ("allow-unsigned", Some('U')),
];
const PULL_OWN_VALUES: Flags = &[("name", None), ("dir", None), ("arch", None)];
/// apptainer `pull` flags that take a value but that the front does not
/// implement; listed so that their values are not read as positionals.
const PULL_OTHER_VALUES: Flags = &[
    ("arch-variant", None),
    ("authfile", None),
    ("docker-host", None),
    ("library", None),
    ("platform", None),
    ("keyring", None),
];

/// apptainer's action flags (`exec`, `run`, `shell`, `test`, `inspect`)
/// that take no value.
const ACTION_SWITCHES: Flags = &[
    ("allow-setuid", None),
    ("boot", None),
    ("cleanenv", Some('e')),
    ("compat", None),
    ("contain", Some('c')),
    ("containall", Some('C')),
    ("disable-cache", None),
    ("docker-login", None),
    ("fakeroot", Some('f')),
    ("ipc", Some('i')),
    ("keep-privs", None),
    ("net", Some('n')),
    ("no-eval", None),
    ("no-home", None),
    ("no-https", None),
    ("nohttps", None),
    ("no-init", None),
    ("no-pid", None),
    ("no-privs", None),
    ("no-setgroups", None),
    ("no-umask", None),
    ("nv", None),
    ("nvccli", None),
    ("oci", None),
    ("pid", Some('p')),
    ("rocm", None),
    ("sharens", None),
    ("sif-fuse", None),
    ("unsquash", None),
    ("userns", Some('u')),
    ("uts", None),
    ("writable", Some('w')),
    ("writable-tmpfs", None),
    ("passphrase", None),
    ("oom-kill-disable", None),
];
/// `inspect`'s flags (its shorthands differ from the other actions').
const INSPECT_SWITCHES: Flags = &[
    ("all", None),
    ("deffile", Some('d')),
    ("environment", Some('e')),
    ("helpfile", Some('H')),
    ("json", Some('j')),
    ("labels", Some('l')),
    ("list-apps", None),
    ("runscript", Some('r')),
    ("startscript", None),
    ("test", Some('t')),
];
const INSPECT_VALUES: Flags = &[("app", None)];
/// apptainer's action flags that take a value.
const ACTION_VALUES: Flags = &[
    ("add-caps", None),
    ("app", None),
    ("apply-cgroups", None),
    ("arch", None),
    ("authfile", None),
    ("bind", Some('B')),
    ("blkio-weight", None),
    ("blkio-weight-device", None),
    ("cdi-dirs", None),
    ("config", None),
    ("cpu-shares", None),
    ("cpus", None),
    ("cpuset-cpus", None),
    ("cpuset-mems", None),
    ("device", None),
    ("dns", None),
    ("docker-host", None),
    ("drop-caps", None),
    ("env", None),
    ("env-file", None),
    ("fusemount", None),
    ("home", Some('H')),
    ("hostname", None),
    ("memory", None),
    ("memory-reservation", None),
    ("memory-swap", None),
    ("mount", None),
    ("network", None),
    ("network-args", None),
    ("no-mount", None),
    ("overlay", Some('o')),
    ("pem-path", None),
    ("pids-limit", None),
    ("platform", None),
    ("pwd", None),
    ("scratch", Some('S')),
    ("security", None),
    ("shell", Some('s')),
    ("workdir", Some('W')),
];

/// The action commands whose image the front replaces.
const ACTIONS: &[&str] = &["exec", "run", "shell", "inspect", "test"];

const DOCKER: &str = "docker://";

/// One flag read from the command line.
#[derive(Debug, PartialEq, Eq)]
enum Flag {
    /// A known flag: its long name and value (for a switch, `true`,
    /// `false` or what followed `=`).
    Known { name: &'static str, value: String },
    /// Not in the tables.
    Unknown(String),
}

/// Flags, then positionals, of one command, as pflag splits them with
/// interspersing off. `index` is the argv position of the first argument.
struct Split {
    flags: Vec<Flag>,
    /// The argv position of the first positional (or `args.len()`).
    first_positional: usize,
}

fn split(args: &[String], start: usize, switches: &[Flags], values: &[Flags]) -> Split {
    type Entry = (&'static str, Option<char>);
    let find = |tables: &[Flags], pred: &dyn Fn(&Entry) -> bool| {
        tables
            .iter()
            .flat_map(|t| t.iter())
            .find(|f| pred(f))
            .map(|f| f.0)
    };
    let mut flags = Vec::new();
    let mut i = start;
    while i < args.len() {
        let arg = &args[i];
        if arg == "--" {
            return Split {
                flags,
                first_positional: i + 1,
            };
        }
        if let Some(long) = arg.strip_prefix("--") {
            let (name, inline) = match long.split_once('=') {
                Some((n, v)) => (n, Some(v)),
                None => (long, None),
            };
            if let Some(name) = find(switches, &|f| f.0 == name) {
                flags.push(Flag::Known {
                    name,
                    value: inline.unwrap_or("true").to_string(),
                });
            } else if let Some(name) = find(values, &|f| f.0 == name) {
                let value = match inline {
                    Some(v) => v.to_string(),
                    None => {
                        i += 1;
                        args.get(i).cloned().unwrap_or_default()
                    }
                };
                flags.push(Flag::Known { name, value });
            } else {
                flags.push(Flag::Unknown(arg.clone()));
            }
        } else if arg.len() > 1 && arg.starts_with('-') {
            // A cluster of shorthands; a value-taking one takes the rest
            // of the cluster, or the next argument.
            for (at, c) in arg[1..].char_indices() {
                if let Some(name) = find(switches, &|f| f.1 == Some(c)) {
                    flags.push(Flag::Known {
                        name,
                        value: "true".into(),
                    });
                } else if let Some(name) = find(values, &|f| f.1 == Some(c)) {
                    let rest = &arg[1 + at + c.len_utf8()..];
                    let value = if rest.is_empty() {
                        i += 1;
                        args.get(i).cloned().unwrap_or_default()
                    } else {
                        rest.strip_prefix('=').unwrap_or(rest).to_string()
                    };
                    flags.push(Flag::Known { name, value });
                    break;
                } else {
                    flags.push(Flag::Unknown(arg.clone()));
                    break;
                }
            }
        } else {
            return Split {
                flags,
                first_positional: i,
            };
        }
        i += 1;
    }
    Split {
        flags,
        first_positional: args.len(),
    }
}

fn is_on(value: &str) -> bool {
    matches!(value, "1" | "t" | "T" | "TRUE" | "true" | "True")
}

/// Read an apptainer command line (without the program name). An
/// [`EXPLAIN_FLAG`] must have been taken out first (see [`take_explain`]).
pub fn classify(args: &[String]) -> Classified {
    let root = split(args, 0, &[ROOT_SWITCHES], &[ROOT_VALUES]);
    let mut quiet = false;
    for flag in &root.flags {
        match flag {
            Flag::Known { name, value } if matches!(*name, "quiet" | "silent") => {
                quiet |= is_on(value)
            }
            Flag::Known { .. } => {}
            Flag::Unknown(f) if f == "--version" || f.starts_with("--version=") => {
                return Classified::PassThrough(PassReason::Version);
            }
            Flag::Unknown(f) => return Classified::PassThrough(PassReason::UnknownFlag(f.clone())),
        }
    }
    let Some(command) = args.get(root.first_positional) else {
        return Classified::PassThrough(PassReason::NoCommand);
    };
    let start = root.first_positional + 1;
    match command.as_str() {
        "version" => Classified::PassThrough(PassReason::Version),
        "pull" => classify_pull(args, start, quiet),
        "build" => classify_build(args, start, quiet),
        c if ACTIONS.contains(&c) => classify_action(c, args, start, quiet),
        other => Classified::PassThrough(PassReason::Command(other.to_string())),
    }
}

fn classify_pull(args: &[String], start: usize, quiet: bool) -> Classified {
    let parts = split(
        args,
        start,
        &[PULL_OWN_SWITCHES],
        &[PULL_OWN_VALUES, PULL_OTHER_VALUES],
    );
    let positionals = &args[parts.first_positional..];
    let (dest, uri_index) = match positionals {
        [_] => (None, parts.first_positional),
        [dest, _] => (Some(dest.clone()), parts.first_positional + 1),
        // apptainer reports the wrong count.
        _ => return Classified::PassThrough(PassReason::NoImage),
    };
    let uri = &args[uri_index];
    let Some(reference) = uri.strip_prefix(DOCKER) else {
        return Classified::PassThrough(PassReason::NotDocker(uri.clone()));
    };
    let mut request = PullRequest {
        kind: PullKind::Pull,
        reference: reference.to_string(),
        uri_index,
        command_index: start - 1,
        dest: Dest::Default { dir: None },
        force: false,
        arch: None,
        disable_cache: false,
        no_https: false,
        unknown_flags: Vec::new(),
        quiet,
    };
    let (mut name, mut dir) = (None, None);
    for flag in parts.flags {
        match flag {
            Flag::Known {
                name: "force",
                value,
            } => request.force = is_on(&value),
            Flag::Known {
                name: "disable-cache",
                value,
            } => request.disable_cache = is_on(&value),
            Flag::Known {
                name: "no-https" | "nohttps",
                value,
            } => request.no_https = is_on(&value),
            Flag::Known {
                name: "allow-unsigned",
                ..
            } => {}
            Flag::Known {
                name: "name",
                value,
            } => name = Some(value),
            Flag::Known { name: "dir", value } => dir = Some(value),
            Flag::Known {
                name: "arch",
                value,
            } => request.arch = Some(value),
            Flag::Known { name, value } => request.unknown_flags.push(format!("--{name}={value}")),
            Flag::Unknown(flag) => request.unknown_flags.push(flag),
        }
    }
    request.dest = match (dest, name) {
        (Some(path), None) => Dest::Path(path),
        (None, Some(name)) => Dest::Named { name, dir },
        (None, None) => Dest::Default { dir },
        // Both a DEST and --name: apptainer decides what that means.
        (Some(_), Some(_)) => {
            request.unknown_flags.push("--name with a DEST".into());
            Dest::Default { dir }
        }
    };
    Classified::Pull(request)
}

/// `build [-F] DEST docker://REF` is a pull that writes DEST; any other
/// option (`--sandbox`, `--fakeroot`, a definition file…) makes it a build.
fn classify_build(args: &[String], start: usize, quiet: bool) -> Classified {
    let parts = split(args, start, &[&[("force", Some('F'))]], &[]);
    let mut force = false;
    for flag in &parts.flags {
        match flag {
            Flag::Known { value, .. } => force = is_on(value),
            Flag::Unknown(_) => {
                return Classified::PassThrough(PassReason::Command("build".into()));
            }
        }
    }
    let [dest, uri] = &args[parts.first_positional..] else {
        return Classified::PassThrough(PassReason::NoImage);
    };
    let Some(reference) = uri.strip_prefix(DOCKER) else {
        return Classified::PassThrough(PassReason::NotDocker(uri.clone()));
    };
    Classified::Pull(PullRequest {
        kind: PullKind::Build,
        reference: reference.to_string(),
        uri_index: parts.first_positional + 1,
        command_index: start - 1,
        dest: Dest::Path(dest.clone()),
        force,
        arch: None,
        disable_cache: false,
        no_https: false,
        unknown_flags: Vec::new(),
        quiet,
    })
}

fn classify_action(command: &str, args: &[String], start: usize, quiet: bool) -> Classified {
    let parts = if command == "inspect" {
        split(args, start, &[INSPECT_SWITCHES], &[INSPECT_VALUES])
    } else {
        split(args, start, &[ACTION_SWITCHES], &[ACTION_VALUES])
    };
    if let Some(Flag::Unknown(flag)) = parts.flags.iter().find(|f| matches!(f, Flag::Unknown(_))) {
        return Classified::PassThrough(PassReason::UnknownFlag(flag.clone()));
    }
    let Some(image) = args.get(parts.first_positional) else {
        return Classified::PassThrough(PassReason::NoImage);
    };
    let Some(reference) = image.strip_prefix(DOCKER) else {
        return Classified::PassThrough(PassReason::NotDocker(image.clone()));
    };
    Classified::Action(ActionRequest {
        command: command.to_string(),
        reference: reference.to_string(),
        image_index: parts.first_positional,
        quiet,
    })
}

/// Take the front's own [`EXPLAIN_FLAG`] out of the root flags (before the
/// command); whether it was there.
pub fn take_explain(args: &mut Vec<String>) -> bool {
    let root = split(args, 0, &[ROOT_SWITCHES], &[ROOT_VALUES]);
    let end = root.first_positional.min(args.len());
    match args[..end].iter().position(|a| a == EXPLAIN_FLAG) {
        Some(i) => {
            args.remove(i);
            true
        }
        None => false,
    }
}

impl PullRequest {
    /// Where the image goes, relative to `cwd` when the command line says
    /// nothing absolute.
    pub fn dest_path(&self, cwd: &Path, image: &ImageRef) -> PathBuf {
        let in_dir = |dir: &Option<String>, name: &str| match dir {
            Some(dir) => cwd.join(dir).join(name),
            None => cwd.join(name),
        };
        match &self.dest {
            Dest::Path(path) => cwd.join(path),
            Dest::Named { name, dir } => in_dir(dir, name),
            Dest::Default { dir } => in_dir(dir, &default_name(image)),
        }
    }
}

/// apptainer's name for a pulled image: the last part of the repository,
/// `_`, the tag (`latest` when none), `.sif` (`busybox_1.36.sif`). A
/// pinned reference is named by its digest's hex.
pub fn default_name(image: &ImageRef) -> String {
    let base = image
        .repository
        .rsplit('/')
        .next()
        .unwrap_or(&image.repository);
    let suffix = match (&image.manifest_digest, &image.tag) {
        (Some(digest), _) => digest.to_string().replace(':', "_"),
        (None, Some(tag)) => tag.clone(),
        (None, None) => "latest".to_string(),
    };
    format!("{base}_{suffix}.sif")
}

/// How a destination was made from the cache's blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// A copy-on-write clone (FICLONE): instant, no extra space until
    /// someone writes to it, and its own inode.
    Reflink,
    /// A byte copy (`copy_file_range`, server-side on NFS 4.2).
    Copy,
}

impl std::fmt::Display for Placement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Reflink => "reflink",
            Self::Copy => "copy",
        })
    }
}

/// Why [`place`] did not place.
#[derive(Debug, thiserror::Error)]
pub enum PlaceError {
    /// The destination exists and `force` was not given (apptainer's rule).
    #[error("Image file already exists: {:?} - will not overwrite", .0.display().to_string())]
    Exists(PathBuf),
    #[error("cannot write {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Make `dest` a runnable copy of the cache blob `blob` (the file that was
/// checked, open: read by position, never by its path or through its
/// shared offset): a reflink where the filesystem can, else a copy;
/// written beside `dest` and renamed onto it, so `dest` is never
/// half-written.
///
/// Never a hardlink: a hardlink *is* the blob (one inode), so a user who
/// later writes into `dest` (`apptainer sif add`, a truncating `>`), or
/// `chmod`s it, changes the cache for everyone; and each new link changes
/// the blob's ctime, which sifr's stamp watches, so every hit after it
/// would re-hash the whole file. A reflink or a copy has its own inode:
/// deleting or changing `dest` never touches the cache.
pub fn place(blob: &File, dest: &Path, force: bool) -> Result<Placement, PlaceError> {
    let fail = |path: &Path| {
        let path = path.to_path_buf();
        move |source| PlaceError::Io { path, source }
    };
    if !force && dest.symlink_metadata().is_ok() {
        return Err(PlaceError::Exists(dest.to_path_buf()));
    }
    let name = dest
        .file_name()
        .ok_or_else(|| fail(dest)(io::Error::from(io::ErrorKind::InvalidInput)))?;
    let mut temp_name = OsString::from(".");
    temp_name.push(name);
    temp_name.push(format!(".sifr-{}.tmp", std::process::id()));
    let temp = dest.with_file_name(temp_name);
    let source = blob;
    let out = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o755)
        .open(&temp)
        .map_err(fail(&temp))?;
    let placed = (|| {
        let how = match rustix::fs::ioctl_ficlone(&out, source) {
            Ok(()) => Placement::Reflink,
            Err(_) => {
                copy_by_position(source, &out)?;
                Placement::Copy
            }
        };
        out.sync_all()?;
        Ok(how)
    })();
    let result = placed.and_then(|how| {
        if !force && dest.symlink_metadata().is_ok() {
            return Err(io::Error::from(io::ErrorKind::AlreadyExists));
        }
        std::fs::rename(&temp, dest).map(|()| how)
    });
    match result {
        Ok(how) => Ok(how),
        Err(e) => {
            let _ = std::fs::remove_file(&temp);
            if e.kind() == io::ErrorKind::AlreadyExists {
                Err(PlaceError::Exists(dest.to_path_buf()))
            } else {
                Err(fail(dest)(e))
            }
        }
    }
}

/// Copy all of `source` into the empty `out`, from offset 0, leaving
/// `source`'s offset alone (its descriptor is shared): `copy_file_range`
/// (server-side on NFS 4.2, a clone on some filesystems), else reads and
/// writes at explicit positions.
fn copy_by_position(source: &File, out: &File) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    let len = source.metadata()?.len();
    let mut done = 0u64;
    while done < len {
        let mut off_in = done;
        let mut off_out = done;
        let left = usize::try_from(len - done).unwrap_or(usize::MAX);
        match rustix::fs::copy_file_range(source, Some(&mut off_in), out, Some(&mut off_out), left)
        {
            Ok(0) => break,
            Ok(n) => done += n as u64,
            Err(_) => break,
        }
    }
    let mut buf = vec![0u8; 1 << 20];
    while done < len {
        let n = source.read_at(&mut buf, done)?;
        if n == 0 {
            break;
        }
        out.write_all_at(&buf[..n], done)?;
        done += n as u64;
    }
    if done != len {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the cached SIF ended before its size",
        ));
    }
    Ok(())
}

/// A file's identity: same device and inode is the same file, whatever the
/// links leading to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileId {
    dev: u64,
    ino: u64,
}

impl FileId {
    /// The file `path` leads to (following symlinks).
    pub fn of(path: &Path) -> Option<Self> {
        let meta = std::fs::metadata(path).ok()?;
        Some(Self {
            dev: meta.dev(),
            ino: meta.ino(),
        })
    }

    /// The running program.
    pub fn current_exe() -> Option<Self> {
        Self::of(Path::new("/proc/self/exe"))
    }
}

/// The real apptainer, as found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RealApptainer {
    pub path: PathBuf,
    /// Where it was found: `$SIFR_APPTAINER`, the config, or PATH.
    pub found_by: String,
    /// Front links (or sifr binaries) passed over on PATH.
    pub skipped: Vec<PathBuf>,
}

/// Why the real apptainer was not found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FindError {
    #[error(
        "{what} names {}, which is sifr itself (its front), not apptainer; point it at the real \
         apptainer binary, or the front would call itself",
        path.display()
    )]
    IsTheFront { what: String, path: PathBuf },
    #[error(
        "no real apptainer or singularity on PATH{}; install Apptainer, or set SIFR_APPTAINER \
         or `[apptainer] path` in the site config to its path",
        if skipped.is_empty() { String::new() } else {
            format!(" besides sifr's front ({})", skipped.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "))
        }
    )]
    NotFound { skipped: Vec<PathBuf> },
}

/// Where to look for the real apptainer.
#[derive(Debug, Clone, Default)]
pub struct Search {
    /// `$SIFR_APPTAINER`.
    pub env: Option<PathBuf>,
    /// `[apptainer] path` in the config.
    pub configured: Option<PathBuf>,
    /// `$PATH`.
    pub path: Option<OsString>,
    /// The name the front was invoked as: looked for first on PATH.
    pub invoked_as: String,
    /// The front itself (the sifr binary): never a candidate.
    pub front: Option<FileId>,
    /// The directory the front was invoked from, when argv[0] names one:
    /// nothing in it is a candidate.
    pub front_dir: Option<PathBuf>,
}

/// Find the real apptainer: `$SIFR_APPTAINER`, the config's `[apptainer]
/// path`, then the invoked name and the other one on PATH, passing over
/// anything that is the front (the sifr binary itself, under any link).
pub fn find_real(search: &Search) -> Result<RealApptainer, FindError> {
    let is_front = |path: &Path| search.front.is_some() && FileId::of(path) == search.front;
    for (what, path) in [
        ("$SIFR_APPTAINER", &search.env),
        ("`[apptainer] path` in the config", &search.configured),
    ] {
        if let Some(path) = path {
            let resolved = if path.components().count() > 1 {
                path.clone()
            } else {
                which::which_in(path, search.path.as_ref(), "/").unwrap_or(path.clone())
            };
            if is_front(&resolved) {
                return Err(FindError::IsTheFront {
                    what: what.to_string(),
                    path: path.clone(),
                });
            }
            return Ok(RealApptainer {
                path: resolved,
                found_by: what.to_string(),
                skipped: Vec::new(),
            });
        }
    }
    let mut names = vec![search.invoked_as.as_str()];
    names.extend(NAMES.iter().filter(|n| **n != search.invoked_as));
    let dirs: Vec<PathBuf> =
        std::env::split_paths(search.path.as_deref().unwrap_or_default()).collect();
    // A front directory is one with a link to the front under either name
    // (or the one argv[0] names): whatever else it holds under these names
    // (a copy of sifr, say) is the front too, never the real apptainer.
    let same_dir = |a: &Path, b: &Path| match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    };
    let front_dirs: Vec<&PathBuf> = dirs
        .iter()
        .filter(|dir| {
            NAMES.iter().any(|name| is_front(&dir.join(name)))
                || search
                    .front_dir
                    .as_deref()
                    .is_some_and(|f| same_dir(f, dir))
        })
        .collect();
    let mut skipped = Vec::new();
    for name in names {
        for dir in &dirs {
            let candidate = dir.join(name);
            if !is_executable(&candidate) {
                continue;
            }
            if is_front(&candidate) || front_dirs.contains(&dir) {
                skipped.push(candidate);
                continue;
            }
            return Ok(RealApptainer {
                path: candidate,
                found_by: format!("`{name}` on PATH"),
                skipped,
            });
        }
    }
    Err(FindError::NotFound { skipped })
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Make `dir` (created if need be) hold `apptainer` and `singularity`
/// links to `sifr`. An existing link to `sifr` is left as it is; anything
/// else in the way is replaced only with `force`. Returns the links.
pub fn install(dir: &Path, sifr: &Path, force: bool) -> io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let target = FileId::of(sifr);
    let mut links = Vec::new();
    for name in NAMES {
        let link = dir.join(name);
        if link.symlink_metadata().is_ok() {
            let ours = std::fs::read_link(&link).is_ok_and(|to| to == sifr)
                || (target.is_some() && FileId::of(&link) == target);
            if ours && !force {
                links.push(link);
                continue;
            }
            if !force {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!(
                        "{} exists and is not a link to {}; move it away, or pass --force to replace it",
                        link.display(),
                        sifr.display()
                    ),
                ));
            }
            std::fs::remove_file(&link)?;
        }
        std::os::unix::fs::symlink(sifr, &link)?;
        links.push(link);
    }
    Ok(links)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(line: &str) -> Vec<String> {
        line.split_whitespace().map(str::to_string).collect()
    }

    fn pull(line: &str) -> PullRequest {
        match classify(&argv(line)) {
            Classified::Pull(p) => p,
            other => panic!("{line}: {other:?}"),
        }
    }

    fn action(line: &str) -> ActionRequest {
        match classify(&argv(line)) {
            Classified::Action(a) => a,
            other => panic!("{line}: {other:?}"),
        }
    }

    /// The command lines engines send, as their sources write them.
    #[test]
    fn what_engines_send_is_taken_over() {
        // Snakemake 9.27.1, snakemake/deployment/singularity.py: Image.pull
        // runs `apptainer pull --name <md5>.simg <url>` in
        // .snakemake/singularity/.
        let p = pull("pull --name 0123abcd.simg docker://busybox:1.36");
        assert_eq!(p.reference, "busybox:1.36");
        assert_eq!(
            p.dest,
            Dest::Named {
                name: "0123abcd.simg".into(),
                dir: None
            }
        );
        assert_eq!(p.uri_index, 3);
        assert!(p.unknown_flags.is_empty() && !p.force);

        // Snakemake's shellcmd(): `apptainer [--quiet --silent] exec --home
        // <cwd> [args] [--bind src:dst]... <img> <shell> -c '<cmd>'`; the
        // image is the pulled file, so it passes through...
        assert_eq!(
            classify(&argv(
                "--quiet --silent exec --home /w --bind /a:/b /w/.snakemake/singularity/x.simg bash -c true"
            )),
            Classified::PassThrough(PassReason::NotDocker(
                "/w/.snakemake/singularity/x.simg".into()
            ))
        );
        // ...and a docker:// image in the same place is replaced.
        let a = action(
            "--quiet --silent exec --home /w --bind /a:/b docker://busybox:1.36 bash -c true",
        );
        assert_eq!((a.image_index, a.quiet), (7, true));

        // Nextflow, SingularityCache.downloadContainerImage0 (and
        // ApptainerCacheTest): `apptainer pull [--nohttps] --name
        // <file>.pulling.<millis> docker://… > /dev/null`, in the cache dir.
        let p = pull(
            "pull --nohttps --name foo-latest.img.pulling.1700000000000 docker://pditommaso/foo:latest",
        );
        assert!(p.no_https);
        assert_eq!(
            p.dest,
            Dest::Named {
                name: "foo-latest.img.pulling.1700000000000".into(),
                dir: None
            }
        );
        // Nextflow, ApptainerBuilderTest: `apptainer [-q -v] exec --no-home
        // --pid -B "$NXF_TASK_WORKDIR" <image> /bin/bash -c "cd …; …"`.
        let a = action("-q -v exec --no-home --pid -B /data/ab/cd docker://ubuntu /bin/bash -c x");
        assert_eq!(
            (a.command.as_str(), a.image_index, a.quiet),
            ("exec", 7, true)
        );
        assert_eq!(a.reference, "ubuntu");
        let a = action("run --no-home --pid --contain --writable docker://busybox");
        assert_eq!(a.image_index, 5);
        // Slurm job scripts in the README.
        let a = action("exec docker://127.0.0.1:5000/e2e/busybox:1 cat /IMAGE");
        assert_eq!(a.image_index, 1);
        assert_eq!(a.reference, "127.0.0.1:5000/e2e/busybox:1");
    }

    #[test]
    fn versions_and_other_commands_pass_through() {
        for (line, reason) in [
            ("--version", PassReason::Version),
            ("version", PassReason::Version),
            ("-d --version", PassReason::Version),
            ("", PassReason::NoCommand),
            ("--debug", PassReason::NoCommand),
            ("help pull", PassReason::Command("help".into())),
            ("cache clean -f", PassReason::Command("cache".into())),
            (
                "instance start docker://busybox web",
                PassReason::Command("instance".into()),
            ),
            (
                "build --sandbox dir docker://busybox",
                PassReason::Command("build".into()),
            ),
            (
                "build out.sif recipe.def",
                PassReason::NotDocker("recipe.def".into()),
            ),
            ("oci mount x y", PassReason::Command("oci".into())),
            (
                "--frobnicate exec docker://a ls",
                PassReason::UnknownFlag("--frobnicate".into()),
            ),
        ] {
            assert_eq!(
                classify(&argv(line)),
                Classified::PassThrough(reason),
                "{line:?}"
            );
        }
    }

    #[test]
    fn non_docker_images_pass_through() {
        for (line, image) in [
            ("pull oras://ghcr.io/a/b:1", "oras://ghcr.io/a/b:1"),
            ("pull out.sif library://alpine", "library://alpine"),
            ("pull shub://vsoch/hello-world", "shub://vsoch/hello-world"),
            (
                "pull --name x.sif https://example.org/x.sif",
                "https://example.org/x.sif",
            ),
            ("exec ./local.sif ls", "./local.sif"),
            ("run /images/x.sif", "/images/x.sif"),
            ("shell oras://ghcr.io/a/b:1", "oras://ghcr.io/a/b:1"),
            ("inspect --json x.sif", "x.sif"),
            // docker:// after the image is the command's argument.
            ("exec x.sif echo docker://busybox", "x.sif"),
            ("exec -B /a x.sif echo docker://busybox", "x.sif"),
        ] {
            assert_eq!(
                classify(&argv(line)),
                Classified::PassThrough(PassReason::NotDocker(image.into())),
                "{line:?}"
            );
        }
        assert_eq!(
            classify(&argv("exec --bind")),
            Classified::PassThrough(PassReason::NoImage)
        );
        assert_eq!(
            classify(&argv("pull")),
            Classified::PassThrough(PassReason::NoImage)
        );
        assert_eq!(
            classify(&argv("pull a b docker://c")),
            Classified::PassThrough(PassReason::NoImage)
        );
    }

    #[test]
    fn name_dest_and_default() {
        let image = ImageRef::parse("quay.io/biocontainers/samtools:1.19--h50ea8bc_0").unwrap();
        let cwd = Path::new("/w");
        let dest = |line: &str| pull(line).dest_path(cwd, &image);
        assert_eq!(
            dest("pull docker://quay.io/biocontainers/samtools:1.19--h50ea8bc_0"),
            Path::new("/w/samtools_1.19--h50ea8bc_0.sif")
        );
        assert_eq!(dest("pull out.sif docker://x"), Path::new("/w/out.sif"));
        assert_eq!(
            dest("pull /abs/out.sif docker://x"),
            Path::new("/abs/out.sif")
        );
        assert_eq!(
            dest("pull --name n.simg docker://x"),
            Path::new("/w/n.simg")
        );
        assert_eq!(
            dest("pull --dir /images --name n.sif docker://x"),
            Path::new("/images/n.sif")
        );
        assert_eq!(
            dest("pull --dir=sub docker://x"),
            Path::new("/w/sub/samtools_1.19--h50ea8bc_0.sif")
        );
        assert_eq!(dest("build -F b.sif docker://x"), Path::new("/w/b.sif"));
        assert!(pull("build -F b.sif docker://x").force);
        assert_eq!(pull("build b.sif docker://x").kind, PullKind::Build);
        let latest = ImageRef::parse("busybox").unwrap();
        assert_eq!(default_name(&latest), "busybox_latest.sif");
    }

    #[test]
    fn pull_flags_have_their_meaning_and_unknown_ones_are_kept() {
        let p = pull("pull -F --arch arm64 --disable-cache --no-https x.sif docker://a:1");
        assert!(p.force && p.disable_cache && p.no_https);
        assert_eq!(p.arch.as_deref(), Some("arm64"));
        assert!(p.unknown_flags.is_empty());
        assert_eq!(p.dest, Dest::Path("x.sif".into()));
        assert!(!pull("pull --force=false docker://a").force);
        let p = pull("pull -U docker://a");
        assert!(p.unknown_flags.is_empty());

        let p = pull("pull --docker-login --platform linux/arm64 out.sif docker://a:1");
        assert_eq!(
            p.unknown_flags,
            ["--docker-login", "--platform=linux/arm64"]
        );
        assert_eq!((p.uri_index, p.reference.as_str()), (5, "a:1"));
        assert_eq!(p.dest, Dest::Path("out.sif".into()));
        let p = pull("pull --oci --name x docker://a");
        assert_eq!(p.unknown_flags, ["--oci"]);
        let p = pull("pull --name x y.sif docker://a");
        assert_eq!(p.unknown_flags, ["--name with a DEST"]);
        // Root flags before the command.
        let p = pull("-s -c /etc/apptainer/apptainer.conf pull docker://a");
        assert!(p.quiet);
        assert_eq!((p.uri_index, p.command_index), (4, 3));
    }

    #[test]
    fn action_flags_are_skipped_with_their_values() {
        for (line, index) in [
            ("exec docker://a ls", 1),
            ("exec --home /h docker://a ls", 3),
            ("exec -H /h docker://a ls", 3),
            ("exec --home=/h -B/a:/b -e docker://a ls", 4),
            ("exec -eB /a:/b docker://a ls", 3),
            ("exec -ecB /a docker://a ls", 3),
            ("run --env A=1 --pwd /x --nv docker://a", 6),
            ("shell -s /bin/sh docker://a", 3),
            ("exec -- docker://a ls", 2),
            ("test --writable-tmpfs docker://a", 2),
            ("inspect --json --labels docker://a", 3),
            (
                "exec --containall --cleanenv --overlay o.img docker://a x",
                5,
            ),
        ] {
            assert_eq!(action(line).image_index, index, "{line}");
        }
        // The command's own flags are its own.
        assert_eq!(
            classify(&argv("exec --frob docker://a ls")),
            Classified::PassThrough(PassReason::UnknownFlag("--frob".into()))
        );
        assert_eq!(
            classify(&argv("exec -Z docker://a ls")),
            Classified::PassThrough(PassReason::UnknownFlag("-Z".into()))
        );
    }

    #[test]
    fn explain_is_taken_from_the_root_flags_only() {
        let mut args = argv("--explain pull docker://a");
        assert!(take_explain(&mut args));
        assert_eq!(args, argv("pull docker://a"));
        let mut args = argv("-q --explain exec docker://a ls --explain");
        assert!(take_explain(&mut args));
        assert_eq!(args, argv("-q exec docker://a ls --explain"));
        let mut args = argv("exec docker://a ls --explain");
        assert!(!take_explain(&mut args));
    }

    #[test]
    fn placing_never_shares_the_blob_s_inode() {
        let dir = tempfile::tempdir().unwrap();
        let blob = dir.path().join("blob.sif");
        std::fs::write(&blob, b"SIF bytes").unwrap();
        let dest = dir.path().join("x.simg");
        let open = File::open(&blob).unwrap();
        // Its offset is at the end (as after hashing): it must not matter.
        std::io::Read::read_to_end(&mut &open, &mut Vec::new()).unwrap();
        place(&open, &dest, false).unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"SIF bytes");
        assert_ne!(FileId::of(&dest), FileId::of(&blob));
        // apptainer's rule: no overwrite without --force.
        std::fs::write(&dest, b"mine").unwrap();
        assert!(matches!(
            place(&open, &dest, false),
            Err(PlaceError::Exists(_))
        ));
        assert_eq!(std::fs::read(&dest).unwrap(), b"mine");
        place(&open, &dest, true).unwrap();
        // Changing the destination leaves the cache alone.
        std::fs::write(&dest, b"changed").unwrap();
        assert_eq!(std::fs::read(&blob).unwrap(), b"SIF bytes");
        std::fs::remove_file(&dest).unwrap();
        assert!(blob.is_file());
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temp file left"
        );
    }

    #[test]
    fn the_front_never_finds_itself() {
        let dir = tempfile::tempdir().unwrap();
        let sifr = dir.path().join("sifr");
        std::fs::write(&sifr, "#!/bin/sh\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&sifr, std::fs::Permissions::from_mode(0o755)).unwrap();
        let front = dir.path().join("front");
        let links = install(&front, &sifr, false).unwrap();
        assert_eq!(links.len(), 2);
        // Installing again is a no-op; a foreign file is not replaced.
        install(&front, &sifr, false).unwrap();
        let real_dir = dir.path().join("real");
        std::fs::create_dir(&real_dir).unwrap();
        let real = real_dir.join("singularity");
        std::fs::write(&real, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o755)).unwrap();

        let path = std::env::join_paths([&front, &real_dir]).unwrap();
        let search = Search {
            path: Some(path),
            invoked_as: "apptainer".into(),
            front: FileId::of(&sifr),
            ..Search::default()
        };
        let found = find_real(&search).unwrap();
        assert_eq!(found.path, real);
        assert_eq!(
            found.skipped,
            [front.join("apptainer"), front.join("singularity")]
        );
        // A copy of sifr beside a front link is the front as well.
        let copied = dir.path().join("copied");
        std::fs::create_dir(&copied).unwrap();
        std::os::unix::fs::symlink(&sifr, copied.join("apptainer")).unwrap();
        std::fs::copy(&sifr, copied.join("singularity")).unwrap();
        let with_copy = Search {
            path: Some(std::env::join_paths([&copied, &real_dir]).unwrap()),
            ..search.clone()
        };
        assert_eq!(find_real(&with_copy).unwrap().path, real);
        // So is anything in the directory argv[0] named.
        let named = Search {
            path: Some(std::env::join_paths([&copied, &real_dir]).unwrap()),
            front: None,
            front_dir: Some(copied.clone()),
            ..search.clone()
        };
        assert_eq!(find_real(&named).unwrap().path, real);

        let only_front = Search {
            path: Some(front.clone().into_os_string()),
            ..search.clone()
        };
        let err = find_real(&only_front).unwrap_err();
        assert!(err.to_string().contains("besides sifr's front"), "{err}");
        let pointed_at_front = Search {
            env: Some(front.join("apptainer")),
            ..search.clone()
        };
        assert!(matches!(
            find_real(&pointed_at_front),
            Err(FindError::IsTheFront { .. })
        ));
        let configured = Search {
            configured: Some(real.clone()),
            ..only_front
        };
        assert_eq!(find_real(&configured).unwrap().path, real);

        std::fs::write(front.join("other"), "").unwrap();
        std::fs::remove_file(front.join("apptainer")).unwrap();
        std::fs::write(front.join("apptainer"), "someone else's").unwrap();
        let err = install(&front, &sifr, false).unwrap_err();
        assert!(err.to_string().contains("--force"), "{err}");
        install(&front, &sifr, true).unwrap();
        assert_eq!(std::fs::read_link(front.join("apptainer")).unwrap(), sifr);
    }
}
