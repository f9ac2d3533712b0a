//! The `sifr` command: a thin layer over the `sifr` library.

mod cli;

use std::process::ExitCode;

fn main() -> ExitCode {
    // Invoked as `apptainer` or `singularity` (a link `sifr front install`
    // made): the front, which speaks apptainer's command line, not sifr's.
    if let Some(name) = cli::front::invoked_as() {
        return cli::front::main(&name);
    }
    cli::main()
}
