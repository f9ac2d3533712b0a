//! sifr as `apptainer` and `singularity` (the front), and `sifr front`.
//!
//! Invoked under one of those names (a link made by `sifr front install`),
//! sifr reads the command line as apptainer would (`sifr::front::classify`)
//! and takes over what pulls a `docker://` image; everything else is
//! handed to the real apptainer by `exec`, so its bytes, exit code and
//! signals are apptainer's own.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command as Process, ExitCode};

use anyhow::{Context as _, Result};
use sifr::front::{
    ActionRequest, Classified, FileId, PullRequest, REAL_ENV, RealApptainer, Search, classify,
    find_real, place, take_explain,
};
use sifr::policy::host_arch;
use sifr::{Config, ConfigSources, Context, ImageRef, Progress, Purpose, Runtime};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};

use super::{Globals, exit};

/// apptainer's exit code for a `FATAL:` error.
const APPTAINER_FATAL: u8 = 255;

/// `sifr front …`.
#[derive(clap::Subcommand)]
pub enum Command {
    /// Make DIR hold `apptainer` and `singularity` links to this sifr.
    ///
    /// Put DIR first on PATH (in an environment module, or a profile) and
    /// every `apptainer pull docker://…` on the machine, from a person, a
    /// batch script or a workflow engine, goes through sifr's policy and
    /// cache. The real apptainer is found further down PATH, or at
    /// $SIFR_APPTAINER or the config's `[apptainer] path`.
    ///
    /// Example:
    ///   sifr front install /opt/sifr/front
    ///   # in the module: prepend-path PATH /opt/sifr/front
    #[command(verbatim_doc_comment)]
    Install {
        /// The directory for the links (created if missing).
        dir: PathBuf,
        /// Replace files named apptainer or singularity that are not links to sifr.
        #[arg(long)]
        force: bool,
    },

    /// Show whether the front is in use, which apptainer it drives, and,
    /// given an apptainer command line, what the front does with it and why.
    ///
    /// Examples:
    ///   sifr front status
    ///   sifr front status -- pull --name x.simg docker://busybox:1.36
    #[command(verbatim_doc_comment)]
    Status {
        /// An apptainer command line (after `--`), without the program name.
        #[arg(last = true, value_name = "APPTAINER ARGS")]
        args: Vec<String>,
    },
}

pub fn run(_globals: &Globals, command: Command) -> Result<u8> {
    match command {
        Command::Install { dir, force } => install(&dir, force),
        Command::Status { args } => status(&args),
    }
}

fn install(dir: &Path, force: bool) -> Result<u8> {
    let sifr = std::env::current_exe().context("cannot tell where this sifr binary is")?;
    let dir = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
    let links = sifr::front::install(&dir, &sifr, force)
        .with_context(|| format!("cannot install the front in {}", dir.display()))?;
    for link in &links {
        println!("{} -> {}", link.display(), sifr.display());
    }
    eprintln!(
        "Put {dir} first on PATH, in the environment module (or profile) every job loads:\n  \
         prepend-path PATH {dir}            # Tcl module\n  \
         prepend_path(\"PATH\", \"{dir}\")      # Lmod\n  \
         export PATH={dir}:$PATH           # profile\n\
         Check with: sifr front status",
        dir = dir.display()
    );
    Ok(0)
}

/// The real apptainer, for the name the front answers to. `as_front`:
/// this process is the front, so the directory argv[0] names is its own.
fn search(invoked_as: &str, config: Option<&Config>, as_front: bool) -> Search {
    Search {
        env: std::env::var_os("SIFR_APPTAINER")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from),
        configured: config.and_then(|c| c.apptainer.clone()),
        path: std::env::var_os("PATH"),
        invoked_as: invoked_as.to_string(),
        front: FileId::current_exe(),
        front_dir: std::env::args_os()
            .next()
            .map(PathBuf::from)
            .filter(|argv0| as_front && argv0.components().count() > 1)
            .and_then(|argv0| argv0.parent().map(Path::to_path_buf)),
    }
}

fn status(args: &[String]) -> Result<u8> {
    let sifr = std::env::current_exe().context("cannot tell where this sifr binary is")?;
    let config = Config::load(&ConfigSources::standard(None, super::config_env()));
    let own = FileId::current_exe();
    println!("sifr: {}", sifr.display());
    for name in sifr::front::NAMES {
        match which::which(name) {
            Ok(path) if own.is_some() && FileId::of(&path) == own => {
                println!("{name} on PATH: {} (sifr's front: in use)", path.display())
            }
            Ok(path) => println!(
                "{name} on PATH: {} (not the front: its pulls bypass sifr)",
                path.display()
            ),
            Err(_) => println!("{name} on PATH: none"),
        }
    }
    let config = match config {
        Ok(config) => Some(config),
        Err(e) => {
            println!("config: cannot be loaded: {e}");
            None
        }
    };
    let real = find_real(&search("apptainer", config.as_ref(), false));
    match &real {
        Ok(real) => println!("real apptainer: {}", describe_real(real)),
        Err(e) => println!("real apptainer: none: {e}"),
    }
    if let Some(config) = &config {
        match super::builder(config.clone()).cache_root() {
            Some(root) => println!("cache: {}", root.display()),
            None => println!("cache: none (set `[cache] dir` in the site config)"),
        }
    }
    if !args.is_empty() {
        let real = real.map_err(anyhow::Error::from)?;
        print!("{}", explain("apptainer", &real, args)?);
    }
    Ok(0)
}

fn describe_real(real: &RealApptainer) -> String {
    let mut text = format!("{} (from {})", real.path.display(), real.found_by);
    if !real.skipped.is_empty() {
        let skipped: Vec<String> = real
            .skipped
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        text.push_str(&format!(
            "; passed over the front at {}",
            skipped.join(", ")
        ));
    }
    text
}

/// The name sifr was invoked under, when it is one the front answers to.
pub fn invoked_as() -> Option<String> {
    let argv0 = std::env::args_os().next()?;
    let name = Path::new(&argv0).file_name()?.to_str()?;
    sifr::front::NAMES.contains(&name).then(|| name.to_string())
}

/// Whether the parent process runs this same binary: a `sifr pull` that
/// found the front on PATH as its apptainer. That call must reach the real
/// apptainer, or the pull would wait on its own lock.
fn parent_is_sifr(own: Option<FileId>) -> bool {
    let parent = rustix::process::getppid();
    let Some(parent) = parent else { return false };
    let exe = PathBuf::from(format!("/proc/{}/exe", parent.as_raw_nonzero()));
    own.is_some() && FileId::of(&exe) == own
}

/// Whether this runs inside a container, where an `apptainer` is another
/// program than the one the front started.
fn in_container() -> bool {
    ["APPTAINER_CONTAINER", "SINGULARITY_CONTAINER"]
        .iter()
        .any(|v| std::env::var_os(v).is_some_and(|v| !v.is_empty()))
}

/// Print one line in apptainer's style and return `code`.
fn fatal(message: &str, code: u8) -> ExitCode {
    let one_line: Vec<&str> = message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    eprintln!("FATAL:   sifr: {}", one_line.join("; "));
    ExitCode::from(code)
}

/// The front: sifr invoked as `apptainer` or `singularity`.
pub fn main(invoked_as: &str) -> ExitCode {
    let raw: Vec<OsString> = std::env::args_os().skip(1).collect();
    let own = FileId::current_exe();
    // Set only for what a front started: outside a container, reaching a
    // front again means PATH (or a wrapper, even one that execs the front
    // straight from sifr) leads back here, and would loop.
    if let Some(real) = std::env::var_os(REAL_ENV)
        && !in_container()
    {
        return fatal(
            &format!(
                "recursion: {}, which sifr's front started, ran `{invoked_as}` again and \
                 reached the front (through PATH, or by its path); point SIFR_APPTAINER or \
                 `[apptainer] path` in the site config at the real apptainer binary, not at a \
                 wrapper that runs `{invoked_as}` or the front",
                Path::new(&real).display()
            ),
            exit::NO_APPTAINER,
        );
    }
    let config = Config::load(&ConfigSources::standard(None, super::config_env()));
    let real = match find_real(&search(invoked_as, config.as_ref().ok(), true)) {
        Ok(real) => real,
        Err(e) => return fatal(&e.to_string(), exit::NO_APPTAINER),
    };
    // SAFETY: no other thread exists yet. Everything the front starts
    // carries the real apptainer's path, so a front reached again through
    // it knows it is recursing (above).
    unsafe { std::env::set_var(REAL_ENV, &real.path) };
    if parent_is_sifr(own) {
        return pass_through(&real, &raw);
    }
    let Some(mut args) = raw
        .iter()
        .map(|a| a.to_str().map(str::to_string))
        .collect::<Option<Vec<String>>>()
    else {
        return pass_through(&real, &raw);
    };
    if take_explain(&mut args) {
        return match explain(invoked_as, &real, &args) {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => fatal(&format!("{e:#}"), super::exit_code(&e)),
        };
    }
    match classify(&args) {
        Classified::PassThrough(_) => {
            pass_through(&real, &args.iter().map(OsString::from).collect::<Vec<_>>())
        }
        Classified::Pull(request) => {
            let config = match config {
                Ok(config) => config,
                Err(e) => return fatal(&e.to_string(), exit::CONFIG),
            };
            front_pull(config, &real, &args, &request)
        }
        Classified::Action(request) => {
            let config = match config {
                Ok(config) => config,
                Err(e) => return fatal(&e.to_string(), exit::CONFIG),
            };
            front_action(config, &real, &args, &request)
        }
    }
}

/// Become the real apptainer.
fn pass_through(real: &RealApptainer, args: &[OsString]) -> ExitCode {
    let error = Process::new(&real.path).args(args).exec();
    fatal(
        &format!("cannot run {}: {error}", real.path.display()),
        exit::NO_APPTAINER,
    )
}

fn runtime(config: Config, real: &RealApptainer) -> Result<Runtime, sifr::Error> {
    // As `sifr pull` reads it: a value that is not a duration is an error,
    // never a silent 20 minutes.
    let pull_timeout =
        match std::env::var("SIFR_PULL_TIMEOUT") {
            Ok(text) if !text.is_empty() => Some(humantime::parse_duration(&text).map_err(
                |e| sifr::ConfigError {
                    path: PathBuf::from("$SIFR_PULL_TIMEOUT"),
                    location: None,
                    message: format!(
                        "{text:?} is not a duration ({e}); write e.g. \"20m\" or \"1h 30m\", \
                     or unset it"
                    ),
                },
            )?),
            _ => None,
        };
    // A signal during a pull (Ctrl-C, scancel, an engine's timeout) stops
    // it: apptainer runs in a process group of its own, which sifr stops
    // and whose temporary file it removes (see `pull_failed`).
    let cancel = super::pull::Cancel::default();
    cancel.install().map_err(|source| sifr::Error::Io {
        what: "cannot catch signals".into(),
        source,
    })?;
    let runtime = super::builder(config)
        .apptainer(Some(real.path.clone()), None)
        .pull_timeout(None, pull_timeout)
        .cancel(cancel.flag())
        .build()?;
    if let Some(message) = super::site::miss_warning(runtime.policy()) {
        eprintln!("WARNING: sifr: {message}");
    }
    Ok(runtime)
}

/// `$SIFR_LOCKED`: a workflow's pulls, pinned by its lock file as
/// `sifr pull --locked` pins sifr's own: `written` (as the engine wrote
/// it) must be locked for this machine, and is pulled by its locked
/// digest. `$SIFR_FROZEN=1` is `--frozen`. Any refusal is one FATAL line.
fn pin_by_lock(runtime: &Runtime, written: &str, image: ImageRef) -> Result<ImageRef, ExitCode> {
    let Some(path) = std::env::var_os("SIFR_LOCKED").filter(|p| !p.is_empty()) else {
        return Ok(image);
    };
    let frozen = std::env::var("SIFR_FROZEN").is_ok_and(|v| matches!(v.as_str(), "1" | "true"));
    super::lock::Locked::open(PathBuf::from(path), frozen)
        .and_then(|locked| locked.pin(written, runtime.policy()))
        .map(|(image, _)| image)
        .map_err(|e| fatal(&e.to_string(), super::lock::exit_code(&e)))
}

/// A failed pull: one FATAL line, or, when a signal stopped it, the death
/// apptainer would have died (128 + the signal if that cannot be).
fn pull_failed(e: &sifr::Error) -> ExitCode {
    if let Some(signal) = sifr::runtime::interrupted_by(e) {
        let _ = signal_hook::low_level::emulate_default_handler(signal);
        return ExitCode::from(u8::try_from(128 + signal).unwrap_or(exit::FAILURE));
    }
    fatal(&e.to_string(), super::sifr_exit_code(e))
}

/// Progress in apptainer's style (`INFO:`, `WARNING:`) on stderr.
fn progress(quiet: bool) -> impl FnMut(Progress<'_>) {
    let mut waiting = false;
    move |event| match event {
        Progress::Waiting { identity, .. } if !waiting && !quiet => {
            waiting = true;
            eprintln!("INFO:    sifr: waiting for another process pulling {identity}");
        }
        Progress::Attempt { uri, index, of } if !quiet => {
            eprintln!("INFO:    sifr: pulling {uri} ({index}/{of})");
        }
        Progress::Fallback { uri, failure, next } => {
            let first = failure.to_string();
            let first = first.lines().next().unwrap_or_default().to_string();
            let then = next
                .map(|n| format!("; falling back to {n}"))
                .unwrap_or_default();
            eprintln!("WARNING: sifr: pull from {uri} failed: {first}{then}");
        }
        Progress::Warning { message } => eprintln!("WARNING: sifr: {message}"),
        _ => {}
    }
}

/// Whether a pull must go to the real apptainer: flags the front does not
/// implement, or another architecture than the host's (the cache keeps the
/// host's).
fn delegated(request: &PullRequest) -> Option<String> {
    if !request.unknown_flags.is_empty() {
        return Some(format!(
            "{} not understood by sifr's front",
            request.unknown_flags.join(" ")
        ));
    }
    match request.arch.as_deref() {
        Some(arch) if arch != host_arch() => Some(format!(
            "--arch {arch} is not this host's ({})",
            host_arch()
        )),
        _ => None,
    }
}

fn front_pull(
    config: Config,
    real: &RealApptainer,
    args: &[String],
    request: &PullRequest,
) -> ExitCode {
    let image = match ImageRef::parse(&request.reference) {
        Ok(image) => image,
        Err(e) => return fatal(&e.to_string(), exit::INVALID_REFERENCE),
    };
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
    let dest = request.dest_path(&cwd, &image);
    let delegate = delegated(request);
    if delegate.is_none() && !request.force && dest.symlink_metadata().is_ok() {
        // apptainer's own words, before any work.
        eprintln!(
            "FATAL:   Image file already exists: {:?} - will not overwrite",
            dest.display().to_string()
        );
        return ExitCode::from(APPTAINER_FATAL);
    }
    if request.disable_cache {
        // SAFETY: still single-threaded (the runtime is not made yet). The
        // pull apptainer runs for sifr skips its own layer cache.
        unsafe { std::env::set_var("APPTAINER_DISABLE_CACHE", "true") };
    }
    let runtime = match runtime(config, real) {
        Ok(runtime) => runtime,
        Err(e) => return fatal(&e.to_string(), super::sifr_exit_code(&e)),
    };
    let image = match pin_by_lock(&runtime, &request.reference, image) {
        Ok(image) => image,
        Err(code) => return code,
    };
    if let Some(why) = delegate {
        return delegated_pull(&runtime, real, args, request, &image, &why);
    }
    if request.no_https {
        eprintln!(
            "WARNING: sifr: --no-https is ignored: the site's policy decides which registries are \
             reached over plain HTTP (`insecure = true` in registries.conf, `plain-http` for a mirror)"
        );
    }
    let pulled = match runtime.pull(&image, Purpose::Pull, &mut progress(request.quiet)) {
        Ok(pulled) => pulled,
        Err(e) => return pull_failed(&e),
    };
    let Some(blob) = pulled.verified_blob() else {
        return fatal(
            &format!("{} is not held in the cache; pull it again", pulled.image),
            exit::FAILURE,
        );
    };
    match place(blob.file(), &dest, request.force) {
        Ok(how) => {
            if !request.quiet {
                let from = if pulled.cached {
                    "from sifr's cache".to_string()
                } else {
                    format!("pulled from {}", pulled.entry.source_uri)
                };
                eprintln!(
                    "INFO:    sifr: {} {from} ({}); {how} at {}",
                    pulled.image,
                    pulled.entry.sif_digest,
                    dest.display()
                );
            }
            ExitCode::SUCCESS
        }
        Err(e @ sifr::front::PlaceError::Exists(_)) => {
            eprintln!("FATAL:   {e}");
            ExitCode::from(APPTAINER_FATAL)
        }
        Err(e) => fatal(&e.to_string(), exit::FAILURE),
    }
}

/// A pull the front cannot do itself: the real apptainer does it, from the
/// sources the policy chose, in order, with the user's flags.
fn delegated_pull(
    runtime: &Runtime,
    real: &RealApptainer,
    args: &[String],
    request: &PullRequest,
    image: &ImageRef,
    why: &str,
) -> ExitCode {
    let mut ctx = Context::new(Purpose::Pull);
    if let Some(arch) = &request.arch {
        ctx.arch = arch.clone();
    }
    let plan = match runtime
        .resolve(image, &ctx)
        .into_plan()
        .map_err(sifr::Error::from)
    {
        Ok(plan) => plan,
        Err(e) => return fatal(&e.to_string(), super::sifr_exit_code(&e)),
    };
    let uris: Vec<String> = plan.iter().map(|s| s.uri()).collect();
    eprintln!(
        "WARNING: sifr: {why}: apptainer pulls this itself, outside sifr's cache; the site policy \
         still rewrote docker://{} to {}",
        request.reference,
        uris.join(", then ")
    );
    let mut code = exit::PULL_FAILED;
    for (i, source) in plan.iter().enumerate() {
        let mut argv = args.to_vec();
        argv[request.uri_index] = source.uri();
        if source.plain_http && !argv.iter().any(|a| a == "--no-https" || a == "--nohttps") {
            argv.insert(request.command_index + 1, "--no-https".to_string());
        }
        let status = Process::new(&real.path).args(&argv).status();
        match status {
            Ok(status) if status.success() => return ExitCode::SUCCESS,
            Ok(status) => {
                code = u8::try_from(sifr::apptainer::shell_code(status)).unwrap_or(exit::FAILURE)
            }
            Err(e) => return fatal(&format!("cannot run {}: {e}", real.path.display()), 7),
        }
        if let Some(next) = uris.get(i + 1) {
            eprintln!(
                "WARNING: sifr: pull from {} failed; falling back to {next}",
                uris[i]
            );
        }
    }
    ExitCode::from(code)
}

fn front_action(
    config: Config,
    real: &RealApptainer,
    args: &[String],
    request: &ActionRequest,
) -> ExitCode {
    let image = match ImageRef::parse(&request.reference) {
        Ok(image) => image,
        Err(e) => return fatal(&e.to_string(), exit::INVALID_REFERENCE),
    };
    let runtime = match runtime(config, real) {
        Ok(runtime) => runtime,
        Err(e) => return fatal(&e.to_string(), super::sifr_exit_code(&e)),
    };
    let image = match pin_by_lock(&runtime, &request.reference, image) {
        Ok(image) => image,
        Err(code) => return code,
    };
    // Held (eviction waits) until apptainer exits.
    let pulled = match runtime.pull(&image, Purpose::Run, &mut progress(request.quiet)) {
        Ok(pulled) => pulled,
        Err(e) => return pull_failed(&e),
    };
    // Not `pulled.path`: apptainer opens what it is given later, by path,
    // and in a shared cache that path could name another file by then.
    // This names the file that was checked (see Cache::runnable).
    let sif = match pulled
        .verified_blob()
        .map(|blob| runtime.cache().runnable(blob))
    {
        Some(Ok(sif)) => sif,
        Some(Err(e)) => {
            return fatal(
                &format!(
                    "cannot run {} from the cache at {}: {e}",
                    pulled.image,
                    runtime.cache().root().display()
                ),
                exit::FAILURE,
            );
        }
        None => {
            return fatal(
                &format!("{} is not held in the cache; pull it again", pulled.image),
                exit::FAILURE,
            );
        }
    };
    let mut argv = args.to_vec();
    argv[request.image_index] = sif.path().display().to_string();
    let code = match run_forwarding(&real.path, &argv) {
        Ok(code) => code,
        Err(e) => {
            return fatal(
                &format!("cannot run {}: {e}", real.path.display()),
                exit::NO_APPTAINER,
            );
        }
    };
    drop(sif);
    drop(pulled);
    code
}

/// Run apptainer as a child (the front holds the image in the cache until
/// it exits), with stdio inherited and everything in the environment as
/// the user set it; SIGINT, SIGTERM, SIGHUP and SIGQUIT sent to the front
/// by another process (a batch system's scancel, a workflow engine's
/// timeout) are passed on. Its exit code is the front's; if it died of a
/// signal, the front dies of the same one.
fn run_forwarding(real: &Path, argv: &[String]) -> std::io::Result<ExitCode> {
    use signal_hook::consts::SIGQUIT;
    use signal_hook::iterator::SignalsInfo;
    use signal_hook::iterator::exfiltrator::WithOrigin;
    use std::os::unix::process::ExitStatusExt;

    let mut signals = SignalsInfo::<WithOrigin>::new([SIGINT, SIGTERM, SIGHUP, SIGQUIT])?;
    let handle = signals.handle();
    let mut child = Process::new(real).args(argv).spawn()?;
    let pid = rustix::process::Pid::from_raw(child.id() as i32);
    let forwarder = std::thread::spawn(move || {
        for info in signals.forever() {
            // From the terminal (no sending process), the whole foreground
            // group got it, apptainer included.
            if info.process.is_some()
                && let (Some(pid), Some(signal)) =
                    (pid, rustix::process::Signal::from_named_raw(info.signal))
            {
                let _ = rustix::process::kill_process(pid, signal);
            }
        }
    });
    let status = child.wait();
    handle.close();
    let _ = forwarder.join();
    let status = status?;
    if let Some(signal) = status.signal() {
        // Die as apptainer did: default action, then raise.
        let _ = signal_hook::low_level::emulate_default_handler(signal);
        return Ok(ExitCode::from(u8::try_from(128 + signal).unwrap_or(255)));
    }
    Ok(ExitCode::from(
        u8::try_from(status.code().unwrap_or(1)).unwrap_or(exit::FAILURE),
    ))
}

/// What the front does with `args`, and why (`--explain`, `sifr front
/// status -- ARGS`). Nothing is pulled or run.
fn explain(invoked_as: &str, real: &RealApptainer, args: &[String]) -> Result<String> {
    let mut out = format!("{invoked_as} {}\n", args.join(" "));
    out.push_str(&format!("  real apptainer: {}\n", describe_real(real)));
    let classified = classify(args);
    let (reference, purpose, arch) = match &classified {
        Classified::PassThrough(reason) => {
            out.push_str(&format!(
                "  front: passed to the real apptainer untouched: {reason}\n"
            ));
            return Ok(out);
        }
        Classified::Pull(request) => {
            let image = ImageRef::parse(&request.reference)?;
            let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
            match delegated(request) {
                Some(why) => out.push_str(&format!(
                    "  front: {why}: the real apptainer pulls it, from the sources below \
                     (the policy still rewrites the URI), outside sifr's cache\n"
                )),
                None => out.push_str(&format!(
                    "  front: taken over: pulled through sifr's policy into its cache (or found \
                     there), then {} is made from the cached SIF (a reflink where the \
                     filesystem can, else a copy)\n",
                    request.dest_path(&cwd, &image).display()
                )),
            }
            (
                request.reference.clone(),
                Purpose::Pull,
                request.arch.clone(),
            )
        }
        Classified::Action(request) => {
            let mut shown = args.to_vec();
            shown[request.image_index] = format!("<cached SIF of {}>", request.reference);
            out.push_str(&format!(
                "  front: taken over: docker://{} is made ready in sifr's cache through the \
                 policy, and replaced by the cached SIF's path; the rest goes to apptainer \
                 unchanged:\n    {} {}\n",
                request.reference,
                real.path.display(),
                shown.join(" ")
            ));
            (request.reference.clone(), Purpose::Run, None)
        }
    };
    let config = Config::load(&ConfigSources::standard(None, super::config_env()))?;
    let runtime = runtime(config, real)?;
    let image = ImageRef::parse(&reference)?;
    let mut ctx = Context::new(purpose);
    if let Some(arch) = arch {
        ctx.arch = arch;
    }
    let resolution = runtime.resolve(&image, &ctx);
    out.push_str("  policy:\n");
    for line in super::resolve::explain(&format!("docker://{reference}"), &resolution).lines() {
        out.push_str(&format!("    {line}\n"));
    }
    Ok(out)
}
