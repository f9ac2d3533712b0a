//! The `sifr` command: a thin layer over the `sifr` library.

mod cli;

use std::process::ExitCode;

fn main() -> ExitCode {
    cli::main()
}
