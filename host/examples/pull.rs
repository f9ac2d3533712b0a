//! Embedding sifr: resolve, pull (with progress) and run an image.
//!
//! ```sh
//! cargo run -p sifr --example pull -- ncbi/blast:2.14.0 blastn -version
//! ```
//!
//! Uses the standard config files, the standard cache and the apptainer
//! found on PATH (or `$SIFR_APPTAINER`).

use sifr::apptainer::{RunMode, RunOptions};
use sifr::{Config, ConfigSources, Context, Error, ImageRef, Progress, Purpose, RuntimeBuilder};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let image = ImageRef::parse(&args.next().ok_or("usage: pull IMAGE [COMMAND...]")?)?;
    let command: Vec<String> = args.collect();

    // The library reads no environment variable: the program hands it
    // the ones it honours.
    let env = |name| std::env::var_os(name).map(Into::into);
    let config = Config::load(&ConfigSources::standard(None, env("SIFR_CONFIG")))?;
    let runtime = RuntimeBuilder::new(config)
        .cache_dir(None, env("SIFR_CACHE_DIR"))
        .apptainer(None, env("SIFR_APPTAINER"))
        .build()?;

    // What the policy plans, without pulling.
    for source in runtime
        .resolve(&image, &Context::new(Purpose::Pull))
        .into_plan()?
    {
        println!("plan: {}  ({})", source.uri(), source.note);
    }

    // Pull, with a progress callback; errors are typed.
    let mut on_progress = |event: Progress<'_>| match event {
        Progress::Attempt { uri, index, of } => eprintln!("trying {uri} ({index}/{of})"),
        Progress::Fallback { uri, next, .. } => eprintln!("{uri} failed; next: {next:?}"),
        Progress::Warning { message } => eprintln!("warning: {message}"),
        _ => {}
    };
    let pulled = match runtime.pull(&image, Purpose::Run, &mut on_progress) {
        Ok(pulled) => pulled,
        Err(Error::Deny { reason, .. }) => return Err(format!("policy says no: {reason}").into()),
        Err(other) => return Err(other.into()),
    };
    println!("SIF: {} (cached: {})", pulled.path.display(), pulled.cached);

    if !command.is_empty() {
        let code = runtime.run_pulled(&pulled, RunMode::Exec, &RunOptions::default(), &command)?;
        std::process::exit(code);
    }
    Ok(())
}
