//! Host bindings of the WIT contract, one module per contract version.
//!
//! When the contract grows (0.2.0), the new version gets a module of its own
//! next to this one and `plugin.rs` picks the module from the version a
//! component exports, so dispatch happens in one place.

pub mod v0_1_0 {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "plugin",
        // Exports are called as futures, so that a call blocked in WASI can
        // be dropped at its deadline (see `sandbox::run_with_deadline`).
        // `log`, the one import, never blocks and stays synchronous.
        exports: { default: async },
    });
}
