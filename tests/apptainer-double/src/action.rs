//! `run` and `exec` in the fake backend: check what apptainer would check,
//! then run the command on the host, since the fake backend makes no
//! container. The checks are shared with the real backend ([`crate::real`]).
//!
//! The command replaces the double's process (`execve`) instead of running
//! as its child. That is the closest a std-only program gets to apptainer's
//! own behaviour: apptainer forwards every signal it gets to the container
//! process and, if that process dies of a signal, raises the same signal on
//! itself (`internal/app/starter/master_linux.go`). With `execve` a signal
//! sent to the "apptainer" pid reaches the command, its exit code is the
//! caller's exit code, its death by signal is the caller's, and a timeout
//! that kills the pid leaves no orphan behind.

use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::process::CommandExt;
use std::path::{self, Path, PathBuf};
use std::process::Command;

use crate::cli::{ActionArgs, ActionKind};
use crate::failure::{Failure, go_error_text};

/// `PATH` inside a container started with `--cleanenv`.
pub const CLEAN_ENV_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What `run` without arguments does: the double's stand-in runscript.
const RUNSCRIPT: [&str; 3] = ["sh", "-c", "echo apptainer-test-double: runscript"];

/// A SIF file starts with a 32-byte launch script field, then this magic.
pub const SIF_LAUNCH: &[u8] = b"#!/usr/bin/env run-singularity\n";
pub const SIF_LAUNCH_LEN: usize = 32;
pub const SIF_MAGIC: &[u8] = b"SIF_MAGIC\0";

/// One `--bind` spec: `SRC[:DST[:ro|rw]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bind {
    pub source: String,
    pub destination: String,
    pub read_only: bool,
}

/// Run the action. On success the process becomes the command and this
/// never returns; what it returns is why the command could not start.
pub fn run(args: &ActionArgs) -> Failure {
    match prepare(args) {
        Ok(mut command) => {
            let program = command.get_program().to_string_lossy().into_owned();
            launch_failure(&program, command.exec())
        }
        Err(failure) => failure,
    }
}

/// What the checks apptainer makes before it starts a container found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    /// The image's resolved path, as apptainer puts it in
    /// `APPTAINER_CONTAINER`.
    pub image: PathBuf,
    /// The `--bind` specs, parsed; every source exists.
    pub binds: Vec<Bind>,
}

/// The checks apptainer makes before it starts a container, in its order:
/// bind syntax, image, bind sources. Both backends make them.
pub fn check(args: &ActionArgs) -> Result<Checked, Failure> {
    let binds = parse_binds(&args.options.binds)
        .map_err(|err| Failure::fatal(format!("while parsing bind path: {err}")))?;
    let image = open_image(&args.image)?;
    for bind in &binds {
        if fs::metadata(&bind.source).is_err() {
            let Bind {
                source,
                destination,
                ..
            } = bind;
            return Err(Failure::fatal(format!(
                "container creation failed: mount hook function failure: mount {source}->{destination} \
                 error: while mounting {source}: mount source {source} doesn't exist"
            )));
        }
    }
    Ok(Checked { image, binds })
}

/// [`check`], then the host command with the container's environment.
fn prepare(args: &ActionArgs) -> Result<Command, Failure> {
    let options = &args.options;
    let Checked { image, .. } = check(args)?;
    if let Some(dir) = &options.pwd
        && !Path::new(dir).is_dir()
    {
        return Err(Failure::fatal(format!(
            "apptainer test double: --pwd {dir} is not a directory on the host \
             (the double runs commands on the host, not in a container)"
        )));
    }

    let argv: Vec<&str> = match (args.kind, args.command.as_slice()) {
        (ActionKind::Run, []) => RUNSCRIPT.to_vec(),
        (_, command) => command.iter().map(String::as_str).collect(),
    };
    // `exec` always has a command (cobra's MinimumNArgs(2)), and `run`
    // without one has the runscript.
    let Some((program, program_args)) = argv.split_first() else {
        return Err(Failure::fatal("apptainer test double: no command to run"));
    };
    let mut command = Command::new(program);
    command.args(program_args);
    if options.clean_env {
        command.env_clear().env("PATH", CLEAN_ENV_PATH);
    }
    command.envs(&options.env);
    command.env("APPTAINER_CONTAINER", &image);
    if let Some(name) = image.file_name() {
        command.env("APPTAINER_NAME", name);
    }
    if let Some(dir) = &options.pwd {
        command.current_dir(dir);
    }
    Ok(command)
}

/// Resolve and check the image as apptainer's `image.Init` does, returning
/// its resolved path (what apptainer puts in `APPTAINER_CONTAINER`).
fn open_image(image: &str) -> Result<PathBuf, Failure> {
    if image.contains("://") {
        return Err(Failure::fatal(format!(
            "apptainer test double: running a URI ({image}) is not implemented; pull it to a SIF file first"
        )));
    }
    let resolved = fs::canonicalize(image).map_err(|err| {
        let absolute = path::absolute(image).unwrap_or_else(|_| PathBuf::from(image));
        Failure::fatal(format!(
            "could not open image {image}: failed to retrieve path for {image}: lstat {}: {}",
            absolute.display(),
            go_error_text(&err)
        ))
    })?;
    if resolved.is_dir() {
        return Err(Failure::fatal(format!(
            "apptainer test double: sandbox directory images are not implemented: {image}"
        )));
    }
    let header = read_header(&resolved).map_err(|err| {
        Failure::fatal(format!(
            "could not open image {image}: {}",
            go_error_text(&err)
        ))
    })?;
    if !has_sif_magic(&header) {
        return Err(Failure::fatal(format!(
            "could not open image {image}: image format not recognized"
        )));
    }
    crate::controls::record_ran(&resolved, nonce(&header))?;
    Ok(resolved)
}

/// How much of an image is read to check it and to find its nonce.
const HEADER_LEN: u64 = 4096;

/// The first bytes of the image, from the one open the check makes: what
/// is checked and recorded is the file the double went on to run.
fn read_header(path: &Path) -> io::Result<Vec<u8>> {
    let mut header = Vec::new();
    File::open(path)?
        .take(HEADER_LEN)
        .read_to_end(&mut header)?;
    Ok(header)
}

/// Whether the file has the SIF magic where a SIF has it, after the launch
/// script field. The double's own pulls write it, so images made by a pull
/// run and anything else is refused, as apptainer refuses it.
fn has_sif_magic(header: &[u8]) -> bool {
    header.get(SIF_LAUNCH_LEN..SIF_LAUNCH_LEN + SIF_MAGIC.len()) == Some(SIF_MAGIC)
}

/// The `nonce=...` line a fake pull writes into its image's header (see
/// [`crate::pull`]), which tells one pulled file from another.
fn nonce(header: &[u8]) -> Option<&str> {
    header
        .split(|&b| b == b'\n')
        .find_map(|line| line.strip_prefix(b"nonce="))
        .and_then(|nonce| std::str::from_utf8(nonce).ok())
}

/// Split `--bind` values into specs.
///
/// A subset of apptainer's `ParseBindPath`: values are comma-separated
/// specs `SRC[:DST[:OPTS]]`, and a bare `ro`/`rw` after a spec that already
/// has options is one more option for it (`/a:/b:ro,rw`). Escaped `\,` and
/// `\:` and the `image-src=`/`id=` options are real apptainer features the
/// double refuses loudly instead of misreading.
pub fn parse_binds(values: &[String]) -> Result<Vec<Bind>, String> {
    let mut specs: Vec<String> = Vec::new();
    for value in values {
        if value.contains('\\') {
            return Err(format!(
                "apptainer test double: escaped bind paths are not implemented: {value}"
            ));
        }
        for piece in value
            .split(',')
            .map(str::trim)
            .filter(|piece| !piece.is_empty())
        {
            match specs.last_mut() {
                Some(last) if is_bind_option(piece) && last.split(':').count() == 3 => {
                    last.push(',');
                    last.push_str(piece);
                }
                _ => specs.push(piece.to_owned()),
            }
        }
    }
    specs.iter().map(|spec| parse_bind(spec)).collect()
}

fn is_bind_option(piece: &str) -> bool {
    matches!(piece, "ro" | "rw") || piece.starts_with("image-src=") || piece.starts_with("id=")
}

fn parse_bind(spec: &str) -> Result<Bind, String> {
    let parts: Vec<&str> = spec.split(':').collect();
    let (source, destination, options) = match parts.as_slice() {
        [source] => (*source, *source, None),
        [source, destination] => (*source, *destination, None),
        [source, destination, options] => (*source, *destination, Some(*options)),
        _ => {
            return Err(format!(
                "while getting bind path: wrong bind syntax: {spec}"
            ));
        }
    };
    if source.is_empty() {
        return Err(format!(
            "while getting bind path: empty bind source for bind path {spec:?}"
        ));
    }
    let mut read_only = false;
    for option in options.into_iter().flat_map(|options| options.split(',')) {
        match option {
            "ro" => read_only = true,
            "rw" => read_only = false,
            _ if is_bind_option(option) => {
                return Err(format!(
                    "apptainer test double: bind option {option} is not implemented"
                ));
            }
            _ => {
                return Err(format!(
                    "while getting bind path: {option} is not a valid bind option"
                ));
            }
        }
    }
    Ok(Bind {
        source: source.to_owned(),
        destination: if destination.is_empty() {
            source
        } else {
            destination
        }
        .to_owned(),
        read_only,
    })
}

/// Why `execve` failed, in the words apptainer uses for a missing command.
pub fn launch_failure(program: &str, err: io::Error) -> Failure {
    if err.kind() == io::ErrorKind::NotFound && !program.contains('/') {
        Failure::fatal(format!("{program:?}: executable file not found in $PATH"))
    } else {
        Failure::fatal(format!("exec {program} failed: {}", go_error_text(&err)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binds(values: &[&str]) -> Result<Vec<Bind>, String> {
        parse_binds(&values.iter().map(|v| (*v).to_owned()).collect::<Vec<_>>())
    }

    fn bind(source: &str, destination: &str, read_only: bool) -> Bind {
        Bind {
            source: source.into(),
            destination: destination.into(),
            read_only,
        }
    }

    #[test]
    fn bind_specs() {
        assert_eq!(
            binds(&["/a", "/b:/c", "/d:/e:ro", "/f:/g:rw"]).unwrap(),
            vec![
                bind("/a", "/a", false),
                bind("/b", "/c", false),
                bind("/d", "/e", true),
                bind("/f", "/g", false),
            ]
        );
    }

    #[test]
    fn comma_separated_binds_in_one_value() {
        assert_eq!(
            binds(&["/a,/b:/c:ro,/d"]).unwrap(),
            vec![
                bind("/a", "/a", false),
                bind("/b", "/c", true),
                bind("/d", "/d", false)
            ]
        );
        // Options after a spec with options join it.
        assert_eq!(
            binds(&["/a:/b:rw,ro"]).unwrap(),
            vec![bind("/a", "/b", true)]
        );
        assert_eq!(binds(&["/a,,/b,"]).unwrap().len(), 2);
    }

    #[test]
    fn bad_bind_specs() {
        assert!(
            binds(&["/a:/b:/c:ro"])
                .unwrap_err()
                .contains("wrong bind syntax")
        );
        assert!(
            binds(&["/a:/b:noexec"])
                .unwrap_err()
                .contains("noexec is not a valid bind option")
        );
        assert!(binds(&[":/b"]).unwrap_err().contains("empty bind source"));
        assert!(binds(&["/a:/b:id=2"]).unwrap_err().contains("test double"));
        assert!(binds(&["/a\\,b"]).unwrap_err().contains("test double"));
    }

    #[test]
    fn missing_commands_are_named_like_apptainer() {
        let err = io::Error::from(io::ErrorKind::NotFound);
        assert_eq!(
            launch_failure("nope", err),
            Failure::Fatal("\"nope\": executable file not found in $PATH".into())
        );
    }
}
