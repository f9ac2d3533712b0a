//! sifr's black-box tests, as one test binary: one link of the engine
//! instead of one per file, and a test file that is not listed below does
//! not compile into a silent nothing — it is not there at all, which the
//! reader of this list sees. (wasmtime's `tests/all` does the same.)
//!
//! Each module drives the library or the built `sifr` binary for one area.
//! The end-to-end suites (real registries, SIF files, namespaces, Snakemake,
//! Slurm, other users) are gated by `cfg(sifr_e2e)` and friends (see
//! `host/build.rs`): a plain `cargo test` lists them as ignored with the
//! reason, and under `SIFR_E2E=1` a missing tool fails them.

mod common;
mod components;
mod strategies;

mod authoring;
mod cli;
mod configure_once;
mod credentials;
mod differential;
mod e2e;
mod front;
mod hostile;
mod lock;
mod pins;
mod policy;
mod properties;
mod pull;
mod registries;
mod registry_client;
mod shared_cache;
mod site_store;
mod tags;
