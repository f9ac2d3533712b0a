//! Configure once: the configured instance, snapshotted into a component.
//!
//! Every decision runs on a fresh instance, so that nothing one decision
//! leaves behind reaches the next. Calling `configure` on each of those
//! instances costs more than the decision itself (settings parsed again,
//! a heap set up again: about 12 of the 30 µs a small plugin's decision
//! took). So sifr runs `configure` once, on an instrumented copy of the
//! plugin (wasmtime's wizer), and writes the configured instance's memories
//! and globals out as a new component. Each decision then instantiates that
//! component: with copy-on-write memory images, a fresh instance that starts
//! where `configure` left off, for the price of mapping it.
//!
//! What a plugin sees is what the contract promises: `configure` once on a
//! fresh instance, then `decide`. What it cannot carry over is host state:
//! a WASI handle open at the end of `configure` (a stream it kept, say)
//! would dangle in every copy. sifr checks that none is left open, and
//! otherwise configures each fresh instance, as before; so it does when
//! instrumenting or snapshotting fails for any reason.

use wasmtime::Store;
use wasmtime::component::{Component, Instance, Lift, WasmList};
use wasmtime_wizer::{ComponentInstanceState, Wizer};

use super::sandbox::HostState;

/// A plugin, instrumented so that its state can be read out.
pub(crate) struct Instrumented<'a> {
    wizer: Wizer,
    cx: wasmtime_wizer::ComponentContext<'a>,
    pub(crate) wasm: Vec<u8>,
}

/// Instrument `wasm`, or say why it cannot be.
pub(crate) fn instrument(wasm: &[u8]) -> Result<Instrumented<'_>, String> {
    let wizer = Wizer::new();
    let (cx, instrumented) = wizer
        .instrument_component(wasm)
        .map_err(|e| format!("cannot be instrumented: {e}"))?;
    Ok(Instrumented {
        wizer,
        cx,
        wasm: instrumented,
    })
}

impl Instrumented<'_> {
    /// The state of `instance` (configured) as a new component's bytes.
    ///
    /// The accessors wizer added are called on the plugin's own store, under
    /// its deadline; they copy whole memories out, so the hostcall cap for
    /// plugin output is lifted for them (memory is bounded by the budget).
    pub(crate) async fn snapshot(
        &self,
        store: &mut Store<HostState>,
        instance: Instance,
    ) -> Result<Vec<u8>, String> {
        store.set_hostcall_fuel(usize::MAX);
        let mut access = Access {
            store,
            instance,
            error: None,
        };
        let bytes = self.wizer.snapshot_component(&self.cx, &mut access).await;
        if let Some(error) = access.error {
            return Err(format!("its state could not be read: {error}"));
        }
        bytes.map_err(|e| format!("its state could not be written out: {e}"))
    }
}

/// Whether the configured instance left host state behind that a copy
/// could not have: an open WASI resource.
pub(crate) fn holds_host_state(store: &mut Store<HostState>) -> bool {
    !store.data_mut().resources_empty()
}

/// wizer's view of one instrumented instance. Its accessors cannot fail,
/// so the first error is kept and reported after the snapshot.
struct Access<'a> {
    store: &'a mut Store<HostState>,
    instance: Instance,
    error: Option<String>,
}

impl Access<'_> {
    async fn call<R: Lift + Send + Sync + 'static>(
        &mut self,
        instance: &str,
        func: &str,
    ) -> Option<R> {
        if self.error.is_some() {
            return None;
        }
        let result = async {
            let (_, exported) = self
                .instance
                .get_export(&mut *self.store, None, instance)
                .ok_or_else(|| wasmtime::format_err!("no export {instance}"))?;
            let (_, index) = self
                .instance
                .get_export(&mut *self.store, Some(&exported), func)
                .ok_or_else(|| wasmtime::format_err!("no export {instance}#{func}"))?;
            let func = self
                .instance
                .get_typed_func::<(), (R,)>(&mut *self.store, index)?;
            let (value,) = func.call_async(&mut *self.store, ()).await?;
            Ok::<_, wasmtime::Error>(value)
        }
        .await;
        match result {
            Ok(value) => Some(value),
            Err(e) => {
                self.error = Some(e.to_string());
                None
            }
        }
    }
}

impl ComponentInstanceState for Access<'_> {
    async fn call_func_ret_list_u8(
        &mut self,
        instance: &str,
        func: &str,
        contents: impl FnOnce(&[u8]) + Send,
    ) {
        match self.call::<WasmList<u8>>(instance, func).await {
            Some(list) => contents(list.as_le_slice(&*self.store)),
            None => contents(&[]),
        }
    }

    async fn call_func_ret_s32(&mut self, instance: &str, func: &str) -> i32 {
        self.call(instance, func).await.unwrap_or_default()
    }

    async fn call_func_ret_s64(&mut self, instance: &str, func: &str) -> i64 {
        self.call(instance, func).await.unwrap_or_default()
    }

    async fn call_func_ret_f32(&mut self, instance: &str, func: &str) -> u32 {
        self.call::<f32>(instance, func)
            .await
            .map_or(0, f32::to_bits)
    }

    async fn call_func_ret_f64(&mut self, instance: &str, func: &str) -> u64 {
        self.call::<f64>(instance, func)
            .await
            .map_or(0, f64::to_bits)
    }
}

/// Compile a snapshot's bytes.
pub(crate) fn compile(engine: &wasmtime::Engine, bytes: &[u8]) -> Result<Component, String> {
    Component::new(engine, bytes).map_err(|e| format!("its snapshot does not compile: {e}"))
}
