//! apptainer's command line, parsed the way cobra and pflag parse it.
//!
//! The point of the double is that argv drift in sifr fails tests, so this
//! re-implements the parts of pflag's grammar that decide whether an argv is
//! accepted and how it splits: `--flag value`, `--flag=value`, `-B value`,
//! `-Bvalue`, `-B=value`, clustered boolean shorthands (`-ec`), `--` as the
//! end of flags, `--help`/`-h`, and — because apptainer registers every
//! command with `SetInterspersed(false)` — flag parsing that stops at the
//! first positional argument, so `exec img.sif ls -la` hands `-la` to `ls`.
//!
//! Only the flags sifr is expected to use are known; every other flag is an
//! `unknown flag`, exactly as a typo would be for the real apptainer.

use std::collections::BTreeMap;

use crate::failure::Failure;

/// Commands real apptainer has but the double does not implement. Asking for
/// one is a loud FATAL that names the double, rather than cobra's
/// `unknown command`, so a reader of a failing test is not told that
/// apptainer lacks the command.
const NOT_IMPLEMENTED: &[&str] = &[
    "build",
    "cache",
    "capability",
    "checkpoint",
    "completion",
    "config",
    "delete",
    "inspect",
    "instance",
    "key",
    "keyserver",
    "oci",
    "overlay",
    "plugin",
    "push",
    "registry",
    "remote",
    "run-help",
    "search",
    "shell",
    "sif",
    "sign",
    "test",
    "verify",
];

/// What one invocation asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invocation {
    /// `help`, `--help`, `-h`, or `--help` on any command.
    Help,
    /// `apptainer version`: the bare version.
    Version,
    /// `apptainer --version`: `apptainer version X`.
    VersionFlag,
    Pull(PullArgs),
    Action(ActionArgs),
}

/// `pull [options] OUT URI`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PullArgs {
    pub options: PullOptions,
    pub out: String,
    pub uri: String,
}

/// The flags `pull` accepts. Apart from `--force` they change nothing in the
/// double; they are parsed so that they are accepted or rejected as apptainer
/// would, and they can be seen in the argv log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PullOptions {
    pub force: bool,
    pub no_https: bool,
    pub arch: Option<String>,
    pub disable_cache: bool,
}

/// `run` or `exec`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActionKind {
    Run,
    Exec,
}

impl ActionKind {
    pub fn name(self) -> &'static str {
        match self {
            Self::Run => "run",
            Self::Exec => "exec",
        }
    }

    /// cobra's `MinimumNArgs` for the command: the image, plus a command for
    /// `exec`.
    fn min_args(self) -> usize {
        match self {
            Self::Run => 1,
            Self::Exec => 2,
        }
    }
}

/// `run [options] IMAGE [ARGS...]` or `exec [options] IMAGE COMMAND [ARGS...]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActionArgs {
    pub kind: ActionKind,
    pub options: ActionOptions,
    pub image: String,
    /// Everything after the image, untouched by flag parsing.
    pub command: Vec<String>,
}

/// The flags `run` and `exec` accept.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ActionOptions {
    pub clean_env: bool,
    pub no_home: bool,
    pub pwd: Option<String>,
    /// Each `--bind` value as given; one value may hold several
    /// comma-separated specs, split later by [`crate::action::parse_binds`].
    pub binds: Vec<String>,
    /// `--env` is a pflag string-to-string map: a later value for a key
    /// replaces an earlier one.
    pub env: BTreeMap<String, String>,
    pub nv: bool,
    pub contain: bool,
    pub writable_tmpfs: bool,
    /// `--home SRC[:DST]`, as workflow engines pass it (Snakemake: the
    /// working directory).
    pub home: Option<String>,
    /// `--pid` (Nextflow passes it): accepted, no effect.
    pub pid: bool,
}

/// Parse the argv after the program name.
pub fn parse(args: &[String]) -> Result<Invocation, Failure> {
    let mut version = false;
    let positionals = match parse_flags(ROOT_FLAGS, args, |hit| {
        match hit {
            Hit::Switch(RootSwitch::Version, on) => version = on,
            // Output levels (Snakemake passes --quiet --silent, Nextflow
            // -q -v): accepted, no effect.
            Hit::Switch(RootSwitch::Quiet | RootSwitch::Silent | RootSwitch::Verbose, _) => {}
            Hit::Value(never, _) => match never {},
        }
        Ok(())
    }) {
        Ok(Outcome::Help) => return Ok(Invocation::Help),
        Ok(Outcome::Positionals(positionals)) => positionals,
        Err(message) => return Err(Failure::usage("apptainer", message)),
    };
    if version {
        return Ok(Invocation::VersionFlag);
    }
    let Some((command, rest)) = positionals.split_first() else {
        return Err(Failure::NoCommand);
    };
    match command.as_str() {
        "help" => Ok(Invocation::Help),
        "version" => parse_version(rest),
        "pull" => parse_pull(rest),
        "run" => parse_action(ActionKind::Run, rest),
        "exec" => parse_action(ActionKind::Exec, rest),
        other if NOT_IMPLEMENTED.contains(&other) => Err(Failure::fatal(format!(
            "apptainer test double: the {other:?} command is not implemented by the test double"
        ))),
        other => Err(Failure::UnknownCommand(other.to_owned())),
    }
}

fn parse_version(args: &[String]) -> Result<Invocation, Failure> {
    // cobra accepts (and ignores) positional arguments to `version`.
    match parse_flags::<Never, Never>(&[], args, |hit| match hit {
        Hit::Switch(never, _) | Hit::Value(never, _) => match never {},
    }) {
        Ok(Outcome::Help) => Ok(Invocation::Help),
        Ok(Outcome::Positionals(_)) => Ok(Invocation::Version),
        Err(message) => Err(Failure::usage("version", message)),
    }
}

fn parse_pull(args: &[String]) -> Result<Invocation, Failure> {
    let mut options = PullOptions::default();
    let positionals = match parse_flags(PULL_FLAGS, args, |hit| {
        match hit {
            Hit::Switch(PullSwitch::Force, on) => options.force = on,
            Hit::Switch(PullSwitch::NoHttps, on) => options.no_https = on,
            Hit::Switch(PullSwitch::DisableCache, on) => options.disable_cache = on,
            Hit::Value(PullValue::Arch, arch) => options.arch = Some(arch),
        }
        Ok(())
    }) {
        Ok(Outcome::Help) => return Ok(Invocation::Help),
        Ok(Outcome::Positionals(positionals)) => positionals,
        Err(message) => return Err(Failure::usage("pull", message)),
    };
    match positionals.as_slice() {
        [out, uri] => Ok(Invocation::Pull(PullArgs {
            options,
            out: out.clone(),
            uri: uri.clone(),
        })),
        // Real apptainer derives a file name from the URI; sifr always names
        // the output, and the double does not guess.
        [uri] => Err(Failure::fatal(format!(
            "apptainer test double: pull without an output file is not implemented \
             (real apptainer would name one after {uri})"
        ))),
        other => Err(Failure::usage(
            "pull",
            format!("accepts between 1 and 2 arg(s), received {}", other.len()),
        )),
    }
}

fn parse_action(kind: ActionKind, args: &[String]) -> Result<Invocation, Failure> {
    let mut options = ActionOptions::default();
    let positionals = match parse_flags(ACTION_FLAGS, args, |hit| options.apply(hit)) {
        Ok(Outcome::Help) => return Ok(Invocation::Help),
        Ok(Outcome::Positionals(positionals)) => positionals,
        Err(message) => return Err(Failure::usage(kind.name(), message)),
    };
    match positionals.split_first() {
        Some((image, command)) if positionals.len() >= kind.min_args() => {
            Ok(Invocation::Action(ActionArgs {
                kind,
                options,
                image: image.clone(),
                command: command.to_vec(),
            }))
        }
        _ => Err(Failure::usage(
            kind.name(),
            format!(
                "requires at least {} arg(s), only received {}",
                kind.min_args(),
                positionals.len()
            ),
        )),
    }
}

impl ActionOptions {
    fn apply(&mut self, hit: Hit<ActionSwitch, ActionValue>) -> Result<(), String> {
        match hit {
            Hit::Switch(switch, on) => {
                let field = match switch {
                    ActionSwitch::CleanEnv => &mut self.clean_env,
                    ActionSwitch::NoHome => &mut self.no_home,
                    ActionSwitch::Nv => &mut self.nv,
                    ActionSwitch::Contain => &mut self.contain,
                    ActionSwitch::WritableTmpfs => &mut self.writable_tmpfs,
                    ActionSwitch::Pid => &mut self.pid,
                };
                *field = on;
            }
            Hit::Value(ActionValue::Pwd, dir) => self.pwd = Some(dir),
            Hit::Value(ActionValue::Home, spec) => self.home = Some(spec),
            Hit::Value(ActionValue::Bind, spec) => self.binds.push(spec),
            Hit::Value(ActionValue::Env, value) => {
                let pairs = parse_env_value(&value).map_err(|err| {
                    format!("invalid argument {value:?} for \"--env\" flag: {err}")
                })?;
                self.env.extend(pairs);
            }
        }
        Ok(())
    }
}

/// One `--env` value, as pflag's `stringToString.Set` reads it: with a
/// single `=` the whole value is one assignment (commas and all, surrounding
/// quotes trimmed); with more, it is a CSV record of assignments.
fn parse_env_value(value: &str) -> Result<Vec<(String, String)>, String> {
    let assignments = match value.matches('=').count() {
        0 => return Err(format!("{value} must be formatted as key=value")),
        1 => vec![value.trim_matches('"').to_owned()],
        _ => parse_csv_record(value)?,
    };
    assignments
        .into_iter()
        .map(|assignment| match assignment.split_once('=') {
            Some((key, val)) => Ok((key.to_owned(), val.to_owned())),
            None => Err(format!("{assignment} must be formatted as key=value")),
        })
        .collect()
}

/// The first record of `text` as Go's `encoding/csv` reads it with default
/// settings: comma-separated, `"quoted, fields"` with `""` for a quote, and a
/// quote inside an unquoted field an error.
fn parse_csv_record(text: &str) -> Result<Vec<String>, String> {
    const BARE_QUOTE: &str = "parse error: bare \" in non-quoted-field";
    const BAD_QUOTE: &str = "parse error: extraneous or missing \" in quoted-field";
    let mut fields = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        let mut field = String::new();
        // What ended the field: `Some(',')` means another field follows.
        let end = if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next() {
                    Some('"') if chars.peek() == Some(&'"') => {
                        chars.next();
                        field.push('"');
                    }
                    Some('"') => break,
                    Some(c) => field.push(c),
                    None => return Err(BAD_QUOTE.to_owned()),
                }
            }
            match chars.next() {
                end @ (None | Some(',' | '\n')) => end,
                Some(_) => return Err(BAD_QUOTE.to_owned()),
            }
        } else {
            loop {
                match chars.next() {
                    end @ (None | Some(',' | '\n')) => break end,
                    Some('"') => return Err(BARE_QUOTE.to_owned()),
                    Some(c) => field.push(c),
                }
            }
        };
        fields.push(field);
        if end != Some(',') {
            return Ok(fields);
        }
    }
}

/// A flag that takes no value, or one that does; the payload says which flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind<S, V> {
    Switch(S),
    Value(V),
}

/// One flag as pflag knows it.
#[derive(Debug, Clone, Copy)]
struct FlagSpec<S, V> {
    kind: Kind<S, V>,
    name: &'static str,
    short: Option<char>,
}

impl<S, V> FlagSpec<S, V> {
    const fn switch(id: S, name: &'static str, short: Option<char>) -> Self {
        Self {
            kind: Kind::Switch(id),
            name,
            short,
        }
    }

    const fn value(id: V, name: &'static str, short: Option<char>) -> Self {
        Self {
            kind: Kind::Value(id),
            name,
            short,
        }
    }

    /// How pflag names the flag in `invalid argument` errors.
    fn display_name(&self) -> String {
        match self.short {
            Some(short) => format!("-{short}, --{}", self.name),
            None => format!("--{}", self.name),
        }
    }
}

/// One flag occurrence, in argv order.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Hit<S, V> {
    Switch(S, bool),
    Value(V, String),
}

/// How flag parsing ended.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// `--help` or `-h` (pflag's `ErrHelp`): show help, ignore the rest.
    Help,
    /// The arguments left once the flags stopped.
    Positionals(Vec<String>),
}

/// A flag kind with no flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Never {}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RootSwitch {
    Version,
    Quiet,
    Silent,
    Verbose,
}

const ROOT_FLAGS: &[FlagSpec<RootSwitch, Never>] = &[
    FlagSpec::switch(RootSwitch::Version, "version", None),
    FlagSpec::switch(RootSwitch::Quiet, "quiet", Some('q')),
    FlagSpec::switch(RootSwitch::Silent, "silent", Some('s')),
    FlagSpec::switch(RootSwitch::Verbose, "verbose", Some('v')),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PullSwitch {
    Force,
    NoHttps,
    DisableCache,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PullValue {
    Arch,
}

const PULL_FLAGS: &[FlagSpec<PullSwitch, PullValue>] = &[
    FlagSpec::switch(PullSwitch::Force, "force", Some('F')),
    FlagSpec::switch(PullSwitch::NoHttps, "no-https", None),
    FlagSpec::value(PullValue::Arch, "arch", None),
    FlagSpec::switch(PullSwitch::DisableCache, "disable-cache", None),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ActionSwitch {
    CleanEnv,
    NoHome,
    Nv,
    Contain,
    WritableTmpfs,
    Pid,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ActionValue {
    Pwd,
    Bind,
    Env,
    Home,
}

const ACTION_FLAGS: &[FlagSpec<ActionSwitch, ActionValue>] = &[
    FlagSpec::switch(ActionSwitch::CleanEnv, "cleanenv", Some('e')),
    FlagSpec::switch(ActionSwitch::NoHome, "no-home", None),
    FlagSpec::value(ActionValue::Pwd, "pwd", None),
    FlagSpec::value(ActionValue::Bind, "bind", Some('B')),
    FlagSpec::value(ActionValue::Env, "env", None),
    FlagSpec::switch(ActionSwitch::Nv, "nv", None),
    FlagSpec::switch(ActionSwitch::Contain, "contain", Some('c')),
    FlagSpec::switch(ActionSwitch::WritableTmpfs, "writable-tmpfs", None),
    FlagSpec::value(ActionValue::Home, "home", Some('H')),
    FlagSpec::switch(ActionSwitch::Pid, "pid", Some('p')),
];

/// Parse leading flags as pflag does with interspersing off, handing each
/// occurrence to `apply` in order (so the first bad flag is the one
/// reported, as with pflag). Errors are pflag's messages, without cobra's
/// `Error for command` wrapping.
fn parse_flags<S: Copy, V: Copy>(
    specs: &[FlagSpec<S, V>],
    args: &[String],
    mut apply: impl FnMut(Hit<S, V>) -> Result<(), String>,
) -> Result<Outcome, String> {
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        if arg == "--" {
            return Ok(Outcome::Positionals(rest.cloned().collect()));
        }
        if let Some(long) = arg.strip_prefix("--") {
            let (name, inline) = match long.split_once('=') {
                Some((name, value)) => (name, Some(value)),
                None => (long, None),
            };
            if name.is_empty() || name.starts_with('-') {
                return Err(format!("bad flag syntax: {arg}"));
            }
            let Some(spec) = specs.iter().find(|spec| spec.name == name) else {
                if name == "help" {
                    return Ok(Outcome::Help);
                }
                return Err(format!("unknown flag: --{name}"));
            };
            let value = match (spec.kind, inline) {
                (Kind::Value(_), Some(value)) => value.to_owned(),
                (Kind::Value(_), None) => rest
                    .next()
                    .cloned()
                    .ok_or_else(|| format!("flag needs an argument: --{name}"))?,
                (Kind::Switch(_), inline) => inline.unwrap_or("true").to_owned(),
            };
            apply(hit(spec, value)?)?;
        } else if let Some(shorts) = arg.strip_prefix('-').filter(|s| !s.is_empty()) {
            let mut shorts = shorts;
            while let Some(short) = shorts.chars().next() {
                shorts = &shorts[short.len_utf8()..];
                let Some(spec) = specs.iter().find(|spec| spec.short == Some(short)) else {
                    if short == 'h' {
                        return Ok(Outcome::Help);
                    }
                    return Err(format!("unknown shorthand flag: {short:?} in {arg}"));
                };
                // `-B=v` and `-e=false` give the value inline (pflag wants at
                // least one character after the `=`).
                let inline = shorts.strip_prefix('=').filter(|_| shorts.len() > 1);
                let value = match (spec.kind, inline) {
                    (_, Some(value)) => {
                        shorts = "";
                        value.to_owned()
                    }
                    (Kind::Switch(_), None) => "true".to_owned(),
                    (Kind::Value(_), None) if !shorts.is_empty() => {
                        std::mem::take(&mut shorts).to_owned()
                    }
                    (Kind::Value(_), None) => rest
                        .next()
                        .cloned()
                        .ok_or_else(|| format!("flag needs an argument: {short:?} in {arg}"))?,
                };
                apply(hit(spec, value)?)?;
            }
        } else {
            // The first positional ends flag parsing; it and everything
            // after it belong to the command.
            let mut positionals = vec![arg.clone()];
            positionals.extend(rest.cloned());
            return Ok(Outcome::Positionals(positionals));
        }
    }
    Ok(Outcome::Positionals(Vec::new()))
}

/// Turn a flag's textual value into a [`Hit`], reading booleans as Go's
/// `strconv.ParseBool` does.
fn hit<S: Copy, V: Copy>(spec: &FlagSpec<S, V>, value: String) -> Result<Hit<S, V>, String> {
    match spec.kind {
        Kind::Value(id) => Ok(Hit::Value(id, value)),
        Kind::Switch(id) => match value.as_str() {
            "1" | "t" | "T" | "TRUE" | "true" | "True" => Ok(Hit::Switch(id, true)),
            "0" | "f" | "F" | "FALSE" | "false" | "False" => Ok(Hit::Switch(id, false)),
            _ => Err(format!(
                "invalid argument {value:?} for {:?} flag: strconv.ParseBool: parsing {value:?}: invalid syntax",
                spec.display_name()
            )),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(args: &[&str]) -> Vec<String> {
        args.iter().map(|arg| (*arg).to_owned()).collect()
    }

    fn parse_ok(args: &[&str]) -> Invocation {
        parse(&argv(args)).unwrap_or_else(|failure| panic!("{args:?}: {failure:?}"))
    }

    fn action(args: &[&str]) -> ActionArgs {
        match parse_ok(args) {
            Invocation::Action(action) => action,
            other => panic!("{args:?} parsed as {other:?}"),
        }
    }

    fn pull(args: &[&str]) -> PullArgs {
        match parse_ok(args) {
            Invocation::Pull(pull) => pull,
            other => panic!("{args:?} parsed as {other:?}"),
        }
    }

    fn usage_error(args: &[&str]) -> (String, String) {
        match parse(&argv(args)) {
            Err(Failure::Usage { command, message }) => (command, message),
            other => panic!("{args:?}: expected a usage error, got {other:?}"),
        }
    }

    #[test]
    fn version_forms() {
        assert_eq!(parse_ok(&["version"]), Invocation::Version);
        assert_eq!(parse_ok(&["--version"]), Invocation::VersionFlag);
        assert_eq!(
            parse_ok(&["--version=true", "exec"]),
            Invocation::VersionFlag
        );
    }

    #[test]
    fn help_forms() {
        for args in [
            &["help"][..],
            &["--help"],
            &["-h"],
            &["exec", "--help"],
            &["pull", "-h", "--bogus"],
            &["run", "-e", "-h"],
        ] {
            assert_eq!(parse_ok(args), Invocation::Help, "{args:?}");
        }
    }

    #[test]
    fn bare_apptainer_is_a_usage_failure() {
        assert_eq!(parse(&[]), Err(Failure::NoCommand));
    }

    #[test]
    fn unknown_and_unimplemented_commands() {
        assert_eq!(
            parse(&argv(&["frobnicate"])),
            Err(Failure::UnknownCommand("frobnicate".into()))
        );
        assert!(
            matches!(parse(&argv(&["shell", "x.sif"])), Err(Failure::Fatal(m)) if m.contains("test double"))
        );
    }

    #[test]
    fn unknown_flags_are_rejected_everywhere() {
        assert_eq!(
            usage_error(&["--xyz", "version"]),
            ("apptainer".into(), "unknown flag: --xyz".into())
        );
        assert_eq!(
            usage_error(&["pull", "--xyz", "o.sif", "docker://a"]),
            ("pull".into(), "unknown flag: --xyz".into())
        );
        assert_eq!(
            usage_error(&["exec", "--cleanenv", "--xyz", "i.sif", "ls"]),
            ("exec".into(), "unknown flag: --xyz".into())
        );
        assert_eq!(
            usage_error(&["run", "-x", "i.sif"]),
            ("run".into(), "unknown shorthand flag: 'x' in -x".into())
        );
        assert_eq!(
            usage_error(&["run", "-ex", "i.sif"]),
            ("run".into(), "unknown shorthand flag: 'x' in -ex".into())
        );
        // Real apptainer flags the double does not implement are unknown too.
        assert_eq!(
            usage_error(&["exec", "--containall", "i.sif", "ls"]).1,
            "unknown flag: --containall"
        );
        assert_eq!(usage_error(&["version", "--xyz"]).1, "unknown flag: --xyz");
    }

    #[test]
    fn flags_after_the_image_belong_to_the_command() {
        let exec = action(&[
            "exec", "img.sif", "ls", "-la", "--bind", "/x", "--", "--xyz",
        ]);
        assert_eq!(exec.kind, ActionKind::Exec);
        assert_eq!(exec.image, "img.sif");
        assert_eq!(
            exec.command,
            argv(&["ls", "-la", "--bind", "/x", "--", "--xyz"])
        );
        assert_eq!(exec.options, ActionOptions::default());

        let run = action(&["run", "-e", "img.sif", "--cleanenv"]);
        assert!(run.options.clean_env);
        assert_eq!(run.command, argv(&["--cleanenv"]));
    }

    #[test]
    fn double_dash_ends_flags() {
        let exec = action(&["exec", "--nv", "--", "--weird.sif", "true"]);
        assert!(exec.options.nv);
        assert_eq!(exec.image, "--weird.sif");
        assert_eq!(exec.command, argv(&["true"]));
    }

    #[test]
    fn every_action_flag() {
        let exec = action(&[
            "exec",
            "--cleanenv",
            "--no-home",
            "--pwd",
            "/work",
            "--bind",
            "/a:/b:ro",
            "-B",
            "/c",
            "--bind=/d,/e:/f",
            "-B/g",
            "-B=/h",
            "--env",
            "A=1",
            "--env=B=2",
            "--nv",
            "--contain",
            "--writable-tmpfs",
            "/c/x.sif",
            "ls",
            "-l",
        ]);
        let options = exec.options;
        assert!(options.clean_env && options.no_home && options.nv && options.contain);
        assert!(options.writable_tmpfs);
        assert_eq!(options.pwd.as_deref(), Some("/work"));
        assert_eq!(
            options.binds,
            argv(&["/a:/b:ro", "/c", "/d,/e:/f", "/g", "/h"])
        );
        assert_eq!(
            options.env.into_iter().collect::<Vec<_>>(),
            vec![("A".into(), "1".into()), ("B".into(), "2".into())]
        );
        assert_eq!(exec.image, "/c/x.sif");
        assert_eq!(exec.command, argv(&["ls", "-l"]));
    }

    /// What workflow engines send through sifr's front: Snakemake's
    /// `[--quiet --silent] exec --home DIR --bind …`, Nextflow's
    /// `[-q -v] exec --no-home --pid -B DIR`.
    #[test]
    fn engine_command_lines() {
        let exec = action(&[
            "--quiet", "--silent", "exec", "--home", "/w", "--bind", "/a", "x.sif", "bash", "-c",
            "true",
        ]);
        assert_eq!(exec.options.home.as_deref(), Some("/w"));
        assert_eq!(exec.image, "x.sif");
        let exec = action(&[
            "-q",
            "-v",
            "exec",
            "--no-home",
            "--pid",
            "-B",
            "/w",
            "x.sif",
            "/bin/bash",
            "-c",
            "x",
        ]);
        assert!(exec.options.no_home && exec.options.pid);
        assert_eq!(exec.command, argv(&["/bin/bash", "-c", "x"]));
    }

    #[test]
    fn clustered_and_explicit_booleans() {
        let run = action(&["run", "-ec", "i.sif"]);
        assert!(run.options.clean_env && run.options.contain);
        let run = action(&["run", "--nv=false", "--cleanenv=1", "-c=false", "i.sif"]);
        assert!(!run.options.nv && run.options.clean_env && !run.options.contain);
        // A value-taking shorthand ends the cluster and takes the rest.
        let run = action(&["run", "-eB/src:/dst", "i.sif"]);
        assert!(run.options.clean_env);
        assert_eq!(run.options.binds, argv(&["/src:/dst"]));
        assert_eq!(
            usage_error(&["run", "--nv=maybe", "i.sif"]).1,
            "invalid argument \"maybe\" for \"--nv\" flag: \
             strconv.ParseBool: parsing \"maybe\": invalid syntax"
        );
    }

    #[test]
    fn value_flags_take_the_next_argument_even_if_it_looks_like_a_flag() {
        let exec = action(&["exec", "--pwd", "--cleanenv", "i.sif", "true"]);
        assert_eq!(exec.options.pwd.as_deref(), Some("--cleanenv"));
        assert!(!exec.options.clean_env);
    }

    #[test]
    fn missing_flag_values() {
        assert_eq!(
            usage_error(&["exec", "--pwd"]).1,
            "flag needs an argument: --pwd"
        );
        assert_eq!(
            usage_error(&["exec", "-B"]).1,
            "flag needs an argument: 'B' in -B"
        );
        assert_eq!(
            usage_error(&["pull", "--arch"]).1,
            "flag needs an argument: --arch"
        );
    }

    #[test]
    fn bad_flag_syntax() {
        assert_eq!(
            usage_error(&["exec", "---bind", "x"]).1,
            "bad flag syntax: ---bind"
        );
        assert_eq!(usage_error(&["exec", "--=x"]).1, "bad flag syntax: --=x");
    }

    #[test]
    fn argument_counts() {
        assert_eq!(
            usage_error(&["exec", "i.sif"]),
            (
                "exec".into(),
                "requires at least 2 arg(s), only received 1".into()
            )
        );
        assert_eq!(
            usage_error(&["exec"]).1,
            "requires at least 2 arg(s), only received 0"
        );
        assert_eq!(
            usage_error(&["run", "--nv"]).1,
            "requires at least 1 arg(s), only received 0"
        );
        assert_eq!(
            usage_error(&["pull"]).1,
            "accepts between 1 and 2 arg(s), received 0"
        );
        assert_eq!(
            usage_error(&["pull", "o.sif", "docker://a", "--force"]).1,
            "accepts between 1 and 2 arg(s), received 3"
        );
        assert!(matches!(
            parse(&argv(&["pull", "docker://a"])),
            Err(Failure::Fatal(m)) if m.contains("test double")
        ));
        assert_eq!(action(&["run", "i.sif"]).command, Vec::<String>::new());
    }

    #[test]
    fn pull_flags_in_any_order_before_the_positionals() {
        let expected = PullOptions {
            force: true,
            no_https: true,
            arch: Some("arm64".into()),
            disable_cache: true,
        };
        for args in [
            &[
                "pull",
                "--force",
                "--no-https",
                "--arch",
                "arm64",
                "--disable-cache",
            ][..],
            &[
                "pull",
                "--disable-cache",
                "--arch=arm64",
                "-F",
                "--no-https",
            ],
            &[
                "pull",
                "--arch",
                "arm64",
                "-F",
                "--disable-cache",
                "--no-https",
            ],
        ] {
            let mut args = args.to_vec();
            args.extend(["out.sif", "docker://alpine:3"]);
            let pull = pull(&args);
            assert_eq!(pull.options, expected, "{args:?}");
            assert_eq!(pull.out, "out.sif");
            assert_eq!(pull.uri, "docker://alpine:3");
        }
        assert_eq!(
            pull(&["pull", "o.sif", "docker://a"]).options,
            PullOptions::default()
        );
    }

    #[test]
    fn env_values_follow_pflag_string_to_string() {
        let env = |values: &[&str]| {
            let mut args = vec!["exec"];
            for value in values {
                args.extend(["--env", value]);
            }
            args.extend(["i.sif", "env"]);
            action(&args).options.env.into_iter().collect::<Vec<_>>()
        };
        let pairs = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect::<Vec<_>>()
        };
        // Repeated, and a later value for a key wins.
        assert_eq!(
            env(&["A=1", "B=2", "A=3"]),
            pairs(&[("A", "3"), ("B", "2")])
        );
        // One `=`: commas stay in the value.
        assert_eq!(env(&["LIST=a,b,c"]), pairs(&[("LIST", "a,b,c")]));
        assert_eq!(env(&["\"Q=x\""]), pairs(&[("Q", "x")]));
        // Several `=`: a comma-separated list, CSV-quoted if need be.
        assert_eq!(env(&["A=1,B=2"]), pairs(&[("A", "1"), ("B", "2")]));
        assert_eq!(
            env(&["A=x=y", "\"B=1,2\",C=3"]),
            pairs(&[("A", "x=y"), ("B", "1,2"), ("C", "3")])
        );
        assert_eq!(env(&["E="]), pairs(&[("E", "")]));
        assert_eq!(env(&["A=1,B"]), pairs(&[("A", "1,B")]));
        assert_eq!(
            usage_error(&["exec", "--env", "NOPE", "i.sif", "env"]).1,
            "invalid argument \"NOPE\" for \"--env\" flag: NOPE must be formatted as key=value"
        );
        assert_eq!(
            usage_error(&["exec", "--env", "A=1,B,C=2", "i.sif", "env"]).1,
            "invalid argument \"A=1,B,C=2\" for \"--env\" flag: B must be formatted as key=value"
        );
    }

    #[test]
    fn csv_records() {
        assert_eq!(parse_csv_record("a,b").unwrap(), argv(&["a", "b"]));
        assert_eq!(
            parse_csv_record("\"a\"\"b\",c").unwrap(),
            argv(&["a\"b", "c"])
        );
        assert_eq!(parse_csv_record("a,").unwrap(), argv(&["a", ""]));
        assert_eq!(parse_csv_record("a\nb").unwrap(), argv(&["a"]));
        assert!(parse_csv_record("a\"b").is_err());
        assert!(parse_csv_record("\"ab").is_err());
        assert!(parse_csv_record("\"a\"b").is_err());
    }
}
