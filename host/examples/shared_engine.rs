//! Embedding sifr with many runtimes on one engine: a service that answers
//! for several sites (or a workflow manager with several caches) loads one
//! WebAssembly engine, with one epoch thread, and gives it to each runtime.
//!
//! ```sh
//! cargo run -p sifr --example shared_engine -- ncbi/blast:2.14.0
//! ```
//!
//! Two runtimes, each with its own cache directory and config, resolve the
//! same image through their own policy on the shared engine.

use sifr::policy::PolicyEngine;
use sifr::{Config, Context, ImageRef, Purpose, RuntimeBuilder};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let image = ImageRef::parse(
        &std::env::args()
            .nth(1)
            .ok_or("usage: shared_engine IMAGE")?,
    )?;
    let scratch = std::env::temp_dir().join(format!("sifr-shared-engine-{}", std::process::id()));

    // One engine, sized for the largest memory budget of the chains it
    // will run (the default chain's here).
    let engine = PolicyEngine::for_config(&Config::default())?;

    let runtimes = ["site-a", "site-b"].map(|site| {
        RuntimeBuilder::new(Config::default())
            .cache_dir(Some(scratch.join(site)), None)
            .engine(engine.clone())
            .build()
    });
    for (site, runtime) in ["site-a", "site-b"].iter().zip(runtimes) {
        let runtime = runtime?;
        let plan = runtime
            .resolve(&image, &Context::new(Purpose::Pull))
            .into_plan()?;
        for source in plan {
            println!("{site}: {}", source.uri());
        }
    }
    let _ = std::fs::remove_dir_all(&scratch);
    Ok(())
}
