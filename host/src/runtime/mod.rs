//! The WebAssembly runtime: one wasmtime `Engine` (pooling allocator, epoch interruption), the
//! linker with the host's `inference` implementation, and the pipeline's guest stages.
//!
//! Every guest call gets a fresh `Store` and instance from a pre-linked `InstancePre`, made by
//! its request before the call where it can be (`prepared.rs`): no state survives a request, a
//! trap poisons nothing, and instantiation from the pool is cheap. Guests get
//! Tessera's own interfaces and only the WASI config grants each (`wasi.rs`).
//!
//! What a guest is given comes from the factors (`factor.rs`): each capability is a module that
//! links into a world's linker, configures itself from the limits once and makes each instance's
//! state: `wasi.rs` (WASI grants), `inference_import.rs` (the `inference` import, linked only
//! into the worlds that import it), `limits.rs` (memory cap and process budget), `output.rs`
//! (the output cap). This file builds the engine and the pool, makes each world's linker from
//! the factors, compiles and loads components, and makes each call's `Store`. The other files:
//! `threads.rs` (epoch ticker, reaper), `prepared.rs` (instances made before their call), `target.rs` (compile targets), `trust.rs` (trust checks
//! for native code), `inspect.rs`, `stages.rs` (the typed stage calls), `error.rs`.

mod bindings;
mod error;
mod factor;
mod inference_import;
mod inspect;
mod limits;
mod nn;
mod output;
mod prepared;
mod stages;
mod stdio;
mod target;
mod threads;
mod trust;
mod wasi;

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use wasmtime::component::{Component, HasSelf, InstancePre, Linker};
use wasmtime::{Config as EngineConfig, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store};

use crate::config::Limits;
use crate::metrics::GuestOutputDropped;
use bindings::types;
pub use error::{GuestFailure, RuntimeError};
use error::{failure, reported};
use factor::Call;
use factor::Factor;
pub use factor::Grants;
pub use factor::GuestInference;
use factor::Instance;
pub use factor::World;
use inference_import::InferenceAccess;
use inference_import::InferenceFactor;
pub use inspect::{Import, Inspection};
use limits::InstanceMemory;
use limits::MemoryFactor;
use output::OutputCap;
use output::OutputFactor;
use prepared::{Loaded, Prepared, StoreMaker};
pub use stages::{
    Phases, PostprocessGuest, PreparedPostprocess, PreparedRules, PreprocessGuest, RulesGuest, TaskGuest,
};
use stdio::GuestLog;
pub use target::CompileTarget;
#[cfg(not(feature = "compiler"))]
use target::no_compiler;
use threads::{EpochTicker, Reaper};
pub use trust::is_precompiled;
#[cfg(feature = "compiler")]
use trust::private_cache_dir;
use trust::trusted;
use wasi::WasiFactor;
pub use wasi::default_grants;

/// One guest instance's state (one call's): each factor's part (`factor.rs`), only the
/// capabilities that call has.
pub struct GuestState {
    wasi: wasi::WasiState,
    inference: InferenceAccess,
    memory: InstanceMemory,
    output: OutputCap,
}

impl wasmtime_wasi::WasiView for GuestState {
    fn ctx(&mut self) -> wasmtime_wasi::WasiCtxView<'_> {
        wasmtime_wasi::WasiCtxView { ctx: &mut self.wasi.ctx, table: &mut self.wasi.table }
    }
}

/// Every factor, configured once from the limits.
struct Factors {
    wasi: WasiFactor,
    inference: InferenceFactor,
    nn: nn::NnFactor,
    memory: MemoryFactor,
    output: OutputFactor,
}

impl Factors {
    fn new(limits: &crate::config::Limits) -> Self {
        Factors {
            wasi: WasiFactor,
            inference: InferenceFactor::new(limits),
            nn: nn::NnFactor,
            memory: MemoryFactor::new(limits),
            output: OutputFactor::new(limits),
        }
    }

    /// Every factor's links for `world` and `grants`.
    fn link(&self, linker: &mut Linker<GuestState>, world: World, grants: &Grants) -> wasmtime::Result<()> {
        self.wasi.link(linker, world, grants)?;
        self.inference.link(linker, world, grants)?;
        self.nn.link(linker, world, grants)?;
        self.memory.link(linker, world, grants)?;
        self.output.link(linker, world, grants)
    }

    /// The state of one guest instance, every factor's part of it.
    fn instance_state(&self, instance: &Instance<'_>) -> GuestState {
        GuestState {
            wasi: self.wasi.instance_state(instance),
            inference: self.inference.instance_state(instance),
            memory: self.memory.instance_state(instance),
            output: self.output.instance_state(instance),
        }
    }

    /// Every factor's settings on an instance's store.
    fn prepare_store(&self, store: &mut Store<GuestState>) {
        self.wasi.prepare_store(store);
        self.inference.prepare_store(store);
        self.memory.prepare_store(store);
        self.output.prepare_store(store);
    }

    /// What each factor takes from `call` when the call takes its instance.
    fn begin_call(&self, store: &mut Store<GuestState>, call: &Call) {
        self.wasi.begin_call(store, call);
        self.inference.begin_call(store, call);
        self.memory.begin_call(store, call);
        self.output.begin_call(store, call);
    }
}

/// The engine, the linkers and the epoch ticker, shared by every guest stage.
pub struct Runtime {
    engine: Engine,
    /// Makes each instance's store from the capabilities guests are given, configured from
    /// the limits (`maker.factors`).
    maker: StoreMaker,
    /// One linker per world and set of WASI grants, made when a guest first needs it.
    linkers: std::sync::Mutex<std::collections::HashMap<(World, Grants), Linker<GuestState>>>,
    reaper: Reaper,
    /// `limits.guest_log_bytes_per_second`: each guest's output into the log.
    log_bytes_per_second: usize,
    /// Where output over a budget is counted (`Runtime::counting_output_in`).
    output_dropped: Option<GuestOutputDropped>,
    _ticker: EpochTicker,
}

impl Runtime {
    /// Builds the engine for `limits.max_concurrent_requests` simultaneous guest instances.
    /// With `cache_dir`, compiled components are kept there (wasmtime's own cache, keyed by the
    /// component's bytes and the engine's settings), so a restart does not recompile them.
    pub fn new(limits: &Limits, cache_dir: Option<&Path>) -> Result<Self, RuntimeError> {
        Self::with_target(limits, cache_dir, &CompileTarget::default())
    }

    /// As [`Runtime::new`], with code generated for `target` rather than for this machine: only
    /// for [`Runtime::precompile`] when it is another CPU or architecture.
    pub fn with_target(
        limits: &Limits,
        cache_dir: Option<&Path>,
        target: &CompileTarget,
    ) -> Result<Self, RuntimeError> {
        // A request runs its stages one after another, so at most one live instance per
        // in-flight request, and stores wait for the reaper thread before their slot is free:
        // twice the requests, and never fewer than 128 (the slots reserve address space, not
        // memory). Each component instance of a Rust guest has a couple of core instances (the
        // module plus adapter shims) but one memory. A request may hold the instances of its later
        // stages while its model runs (`prepared.rs`): still within twice the requests for the
        // usual pipeline of three guests, and the 128 cover longer rule chains.
        let slots = limits.concurrent_requests().saturating_mul(2).max(128);
        let memories = slots.saturating_mul(2);
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(slots)
            .total_core_instances(slots.saturating_mul(4))
            .total_memories(memories)
            .total_tables(slots.saturating_mul(4))
            .max_memory_size(limits.guest_memory_bytes as usize)
            // Python and JS guests bundle several core modules, each with its own memory.
            .max_memories_per_component(8)
            .max_core_instances_per_component(64);
        // A slot keeps its resident pages (below) after its instance is gone, and after its
        // module is dropped too: a dropped module's slots lose only their memory image
        // (wasmtime's `purge_module` → `remove_image`), not the heap pages kept resident. While
        // fewer than `max_unused_warm_slots` used slots are free, wasmtime gives a module with no
        // slot of its own a never-used one, so with its default of 100 every guest reload took
        // fresh slots and RSS grew ~1 MiB a reload idle, ~3.5 MiB under load, for a hundred
        // reloads (docs/RELIABILITY.md, soak). With one spare per request that can be in
        // flight, reloaded guests reuse the slots their predecessors warmed. A module still
        // takes its own free slot first whatever this is; served A/B at c = 4 with a Python
        // rules guest, 100 vs this vs 0: no difference beyond noise
        // (docs/history/PERFORMANCE-journal.md).
        pool.max_unused_warm_slots(limits.concurrent_requests());
        // By default a freed slot's memory goes back to the kernel (madvise), and the next
        // instance faults every page it touches in again: for a Python or JS guest, whose
        // interpreter touches hundreds of pages of its pre-initialised heap per call, that was
        // ~40 % of the call (0.75 → 0.51 ms Python, 0.89 → 0.51 ms JS, 0.81 → 0.33 ms Go
        // instantiate: `tessera test-rules --repeat 20`, docs/history/PERFORMANCE-journal.md).
        // Keeping pages resident means resetting them in place; wasmtime does that for only the
        // pages a call dirtied when the kernel reports them (PAGEMAP_SCAN), and otherwise for all
        // `keep_resident` bytes of every memory at every free, which would cost more than the
        // faults it saves, so it is used only with the scan.
        let keep = usize::try_from(limits.guest_keep_resident_bytes).unwrap_or(usize::MAX);
        if keep > 0 && PoolingAllocationConfig::is_pagemap_scan_available() {
            pool.pagemap_scan(wasmtime::Enabled::Yes).linear_memory_keep_resident(keep).table_keep_resident(keep);
        }
        let mut config = EngineConfig::new();
        config
            .wasm_component_model(true)
            .epoch_interruption(true)
            // The pool reserves `total_memories` slots of this plus wasmtime's guard (32 MiB)
            // up front; below 4 GiB Cranelift emits bounds checks, so it is a compile setting
            // too (a .cwasm records it and loads only under the same value).
            .memory_reservation(limits.guest_memory_reservation_bytes)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        target.apply(&mut config)?;
        // Without a compiler nothing is compiled, so there is nothing to cache.
        #[cfg(not(feature = "compiler"))]
        let _ = cache_dir;
        #[cfg(feature = "compiler")]
        if let Some(dir) = cache_dir {
            let mut cache = wasmtime::CacheConfig::new();
            // wasmtime's cache insists on an absolute directory.
            let dir = std::path::absolute(dir)
                .map_err(|e| RuntimeError::Engine(format!("compile cache at {}: {e}", dir.display())))?;
            private_cache_dir(&dir)
                .map_err(|e| RuntimeError::Engine(format!("compile cache at {}: {e}", dir.display())))?;
            cache.with_directory(&dir);
            let cache = wasmtime::Cache::new(cache)
                .map_err(|e| RuntimeError::Engine(format!("compile cache at {}: {e:#}", dir.display())))?;
            config.cache(Some(cache));
        }
        let engine = Engine::new(&config).map_err(|e| {
            // The usual cause on a small machine is the pool's address space: say how much and
            // which setting shrinks it.
            let reserved = u64::from(memories).saturating_mul(limits.guest_memory_reservation_bytes + (32 << 20));
            RuntimeError::Engine(format!(
                "{e:#} (the guest pool needs {} GiB of address space: {} memories of \
                 limits.guest_memory_reservation_bytes = {} plus a 32 MiB guard each; lower that setting where \
                 a process has less, as on 39-bit aarch64 kernels: docs/EDGE.md)",
                reserved >> 30,
                memories,
                limits.guest_memory_reservation_bytes
            ))
        })?;
        let ticker = EpochTicker::start(engine.clone());
        Ok(Runtime {
            maker: StoreMaker { engine: engine.clone(), factors: Factors::new(limits) },
            engine,
            linkers: Default::default(),
            reaper: Reaper::start(slots as usize / 2),
            log_bytes_per_second: usize::try_from(limits.guest_log_bytes_per_second).unwrap_or(usize::MAX),
            output_dropped: None,
            _ticker: ticker,
        })
    }

    /// Counts the guest output its budgets drop in `counter` (a host's metrics), for the guests
    /// loaded from now on.
    pub fn counting_output_in(mut self, counter: GuestOutputDropped) -> Self {
        self.output_dropped = Some(counter);
        self
    }

    /// The linker for guests of `world` granted `grants`: Tessera's types and what each factor
    /// links for them (WASI as granted, `inference` where the world imports it).
    fn linker(&self, world: World, grants: &Grants) -> Result<Linker<GuestState>, RuntimeError> {
        let mut linkers = self.linkers.lock().unwrap_or_else(|e| e.into_inner());
        let key = (world, grants.clone());
        if let Some(linker) = linkers.get(&key) {
            return Ok(linker.clone());
        }
        let mut linker = Linker::new(&self.engine);
        types::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)
            .and_then(|()| self.maker.factors.link(&mut linker, world, grants))
            .map_err(|e| RuntimeError::Engine(format!("{e:#}")))?;
        linkers.insert(key, linker.clone());
        Ok(linker)
    }

    /// Compiles (or loads from the cache) the component at `path`, links it with `grants`, and
    /// checks that it has the exports of `world` (`typed` is the world's generated `*Pre::new`).
    /// WASI imports it was not granted become functions that fail naming themselves; an import
    /// that is neither Tessera's nor WASI refuses the component, naming every such import.
    fn compile<P>(
        &self,
        path: &Path,
        world: World,
        grants: &Grants,
        typed: impl FnOnce(InstancePre<GuestState>) -> wasmtime::Result<P>,
    ) -> Result<P, RuntimeError> {
        let invalid = |e: wasmtime::Error| RuntimeError::Invalid {
            path: path.to_path_buf(),
            world: world.name(),
            message: format!("{e:#}"),
        };
        let started = Instant::now();
        let (component, bytes) = self.component(path, world.name())?;
        let precompiled = is_precompiled(path);
        let unknown: Vec<String> = component
            .component_type()
            .imports(&self.engine)
            .map(|(name, _)| name.to_string())
            .filter(|name| !name.starts_with("wasi:") && !name.starts_with("tessera:vision/"))
            .collect();
        if !unknown.is_empty() {
            return Err(RuntimeError::UnknownImports { path: path.to_path_buf(), imports: unknown });
        }
        let mut linker = self.linker(world, grants)?;
        wasi::stub_ungranted(&mut linker, &self.engine, &component, grants).map_err(invalid)?;
        let pre = linker.instantiate_pre(&component).and_then(typed).map_err(invalid)?;
        tracing::info!(
            path = %path.display(),
            world = world.name(),
            bytes,
            precompiled,
            load_ms = started.elapsed().as_millis() as u64,
            "guest loaded"
        );
        Ok(pre)
    }

    /// The component at `path` and its size in bytes: a `.cwasm` written by [`Runtime::precompile`]
    /// is loaded as it is (native code, so only from a trusted file: see `trusted`), anything
    /// else is compiled (or taken from the compile cache).
    fn component(&self, path: &Path, world: &'static str) -> Result<(Component, usize), RuntimeError> {
        let read = |source| RuntimeError::Read { path: path.to_path_buf(), source };
        let invalid =
            |e: wasmtime::Error| RuntimeError::Invalid { path: path.to_path_buf(), world, message: format!("{e:#}") };
        if is_precompiled(path) {
            let bytes = std::fs::metadata(path).map_err(read)?.len() as usize;
            trusted(path).map_err(|why| RuntimeError::Untrusted { path: path.to_path_buf(), why })?;
            // SAFETY: wasmtime runs a precompiled component's native code as it is; `trusted`
            // checked that only this user (or root) can have written the file, and
            // `deserialize_file` checks that it was compiled by this wasmtime with these settings.
            let component = unsafe { Component::deserialize_file(&self.engine, path) }.map_err(invalid)?;
            return Ok((component, bytes));
        }
        self.compile_wasm(path, world)
    }

    /// A component given as WebAssembly, compiled (or taken from the compile cache).
    #[cfg(feature = "compiler")]
    fn compile_wasm(&self, path: &Path, world: &'static str) -> Result<(Component, usize), RuntimeError> {
        let bytes = std::fs::read(path).map_err(|source| RuntimeError::Read { path: path.to_path_buf(), source })?;
        let component = Component::new(&self.engine, &bytes).map_err(|e| RuntimeError::Invalid {
            path: path.to_path_buf(),
            world,
            message: format!("{e:#}"),
        })?;
        Ok((component, bytes.len()))
    }

    #[cfg(not(feature = "compiler"))]
    fn compile_wasm(&self, path: &Path, world: &'static str) -> Result<(Component, usize), RuntimeError> {
        Err(RuntimeError::Invalid {
            path: path.to_path_buf(),
            world,
            message: no_compiler("a guest given as WebAssembly"),
        })
    }

    /// Compiles the component at `input` for this engine's configuration and returns the
    /// serialized native code (`tessera compile`).
    #[cfg(not(feature = "compiler"))]
    pub fn precompile(&self, _input: &Path) -> Result<Vec<u8>, RuntimeError> {
        Err(RuntimeError::Engine(no_compiler("tessera compile")))
    }

    /// Compiles the component at `input` for this engine's configuration and returns the
    /// serialized native code (`tessera compile`).
    #[cfg(feature = "compiler")]
    pub fn precompile(&self, input: &Path) -> Result<Vec<u8>, RuntimeError> {
        let bytes = std::fs::read(input).map_err(|source| RuntimeError::Read { path: input.to_path_buf(), source })?;
        self.engine.precompile_component(&bytes).map_err(|e| RuntimeError::Invalid {
            path: input.to_path_buf(),
            world: "guest",
            message: format!("{e:#}"),
        })
    }

    /// Guest instances in a call now (each call has its own store and instance).
    pub fn live_instances(&self) -> usize {
        self.maker.factors.memory.live_instances()
    }

    /// Linear-memory pool slots that an instance used and that are free now (each keeps up to
    /// `limits.guest_keep_resident_bytes` resident).
    pub fn warm_memory_slots(&self) -> u32 {
        self.engine.pooling_allocator_metrics().map_or(0, |m| m.unused_warm_memories())
    }

    /// Linear memory granted to the guest instances alive now, all together (those made before
    /// their call included).
    pub fn guest_memory_in_use(&self) -> usize {
        self.maker.factors.memory.budget.used()
    }

    /// A loaded guest named `name`, granted `grants`, instantiated by `instantiate` from its
    /// `InstancePre`.
    fn loaded<I>(
        &self,
        name: &str,
        grants: Grants,
        instantiate: impl Fn(&mut Store<GuestState>) -> wasmtime::Result<I> + Send + Sync + 'static,
    ) -> Arc<Loaded<I>> {
        let log = GuestLog::new(name, self.log_bytes_per_second, self.output_dropped.clone());
        Arc::new(Loaded::new(grants, log, instantiate))
    }

    /// An instance of `guest` for a call later in the same request, before `deadline`.
    fn prepare<I>(&self, guest: &Loaded<I>, deadline: Instant) -> Prepared<I> {
        crate::cpu::clean_upper_state();
        guest.instantiate(&self.maker, deadline)
    }

    /// Makes one call of `guest` with `f`, on the instance `prepared` made before (its
    /// instantiation time is reported, but was not spent here) or else on one made now; gives
    /// the instance what belongs to `call`, times both phases and classifies any failure (trap,
    /// deadline, memory, the guest's own error); then hands the store to the reaper.
    fn run_guest<I, R>(
        &self,
        guest: &Loaded<I>,
        prepared: Option<Prepared<I>>,
        call: Call,
        f: impl FnOnce(I, &mut Store<GuestState>) -> wasmtime::Result<Result<R, types::Error>>,
    ) -> Result<(R, Phases), GuestFailure> {
        if call.deadline <= Instant::now() {
            return Err(GuestFailure::DeadlineExceeded);
        }
        // Native code that ran before on this thread (tract's kernels) may have left the upper
        // vector state dirty, which makes the guest's legacy-SSE code ~30x slower (see `cpu`).
        crate::cpu::clean_upper_state();
        #[cfg(test)]
        tests::ENTRY_UPPER_STATE_DIRTY.set(crate::cpu::upper_state_dirty());
        let (ahead, Prepared { mut store, instance, took }) = match prepared {
            Some(prepared) => (true, prepared),
            None => (false, guest.instantiate(&self.maker, call.deadline)),
        };
        self.maker.factors.begin_call(&mut store, &call);
        prepared::set_deadline(&mut store, call.deadline);
        let result = match instance {
            Ok(instance) => {
                let t = Instant::now();
                let result = f(instance, &mut store);
                let phases = Phases { instantiate: took, instantiated_ahead: ahead, call: t.elapsed() };
                result.map(|value| (value, phases)).map_err(|e| failure(e, &store))
            }
            Err(e) => Err(failure(e, &store)),
        };
        // Output the guest left is logged now, in the call's span, not when the reaper drops
        // the store.
        store.data().wasi.finish_output();
        self.reaper.retire(store);
        let (value, phases) = result?;
        Ok((value.map_err(reported)?, phases))
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::time::Duration;

    use super::*;
    use crate::stage_io::SpecView;

    struct NoModels;

    impl GuestInference for NoModels {
        fn infer(
            &self,
            _: &str,
            _: Option<&str>,
            _: &[u32],
            _: Vec<f32>,
            _: Instant,
        ) -> Result<Vec<f32>, crate::error::RequestError> {
            Err(crate::error::RequestError::new(
                crate::error::ErrorKind::ModelNotFound,
                crate::error::Stage::Rules,
                "no models here",
            ))
        }
    }

    /// An instance a request made before its call serves that call with the call's own
    /// deadline (not the one it was made under) and says it was made ahead; a call without one
    /// makes its own.
    #[test]
    fn a_prepared_instance_serves_its_call_under_the_call_s_deadline() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let runtime = Runtime::new(&Limits::default(), None).unwrap();
        let probe =
            runtime.load_rules(&root.join("target/guests/probe-rules.wasm"), Vec::new(), default_grants()).unwrap();
        let far = Instant::now() + Duration::from_secs(30);
        let meta = |probe: &str| vec![("x-probe".to_string(), probe.to_string())];

        let prepared = runtime.prepare_rules(&probe, far);
        let (decision, phases) =
            runtime.decide(&probe, Some(prepared), &[], &meta("accept"), Arc::new(NoModels), far).unwrap();
        assert!(decision.accepted && phases.instantiated_ahead, "{decision:?} {phases:?}");
        let (_, phases) = runtime.decide(&probe, None, &[], &meta("accept"), Arc::new(NoModels), far).unwrap();
        assert!(!phases.instantiated_ahead);

        // Made under a 30 s deadline, called under 200 ms: the loop ends at the call's.
        let prepared = runtime.prepare_rules(&probe, far);
        let started = Instant::now();
        let soon = started + Duration::from_millis(200);
        let failed = runtime.decide(&probe, Some(prepared), &[], &meta("loop"), Arc::new(NoModels), soon);
        assert!(matches!(failed, Err(GuestFailure::DeadlineExceeded)), "{:?}", failed.err());
        assert!(started.elapsed() < Duration::from_secs(5), "the loop ran on for {:?}", started.elapsed());
    }

    thread_local! {
        /// What `run_guest` saw of the upper vector state just before entering the guest.
        pub(super) static ENTRY_UPPER_STATE_DIRTY: Cell<Option<bool>> = const { Cell::new(None) };
    }

    /// The slow-thread effect, deterministically: tract's kernels leave this thread's upper
    /// vector state dirty (the cause), and a guest call on the same thread still starts clean
    /// (the fix). Timing is the benchmark's business (`just bench-peers`), not this test's.
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn a_guest_called_after_tract_ran_on_the_thread_starts_with_clean_vector_state() {
        let Some(_) = crate::cpu::upper_state_dirty() else {
            eprintln!("this CPU cannot report its upper vector state (no AVX or XGETBV(1)); nothing to guard");
            return;
        };
        use tract_onnx::prelude::Tensor;
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        // One of tract's hand-written asm kernels, called directly: our models' convolutions
        // now all run on our own kernels (compiled Rust, which cleans up after itself), but
        // tract's matmuls, einsums and a user's other ops still run these.
        if !std::arch::is_x86_feature_detected!("fma") {
            eprintln!("no FMA: tract's fma kernels do not run here; nothing to guard");
            return;
        }
        use tract_linalg::mmm::{AsInputValue, FusedSpec};
        let mmm = tract_linalg::x86_64::mmm::fma_mmm_f32_16x6.mmm();
        let (pack_a, pack_b) = &mmm.packings()[0];
        let a = Tensor::zero::<f32>(&[16, 16]).unwrap();
        let (pa, pb) = (pack_a.prepare_one(&a, 1, 0).unwrap(), pack_b.prepare_one(&a, 0, 1).unwrap());
        crate::cpu::clean_upper_state();
        // SAFETY: the kernel's own packings of 16×16 operands; this CPU has AVX and FMA.
        unsafe {
            let mut scratch = mmm.allocate_scratch_space();
            let specs =
                [FusedSpec::AddMatMul { a: AsInputValue::Borrowed(&*pa), b: AsInputValue::Borrowed(&*pb), packing: 0 }];
            mmm.run_with_scratch_space(16, 16, scratch.as_mut(), &specs).unwrap();
        }
        assert_eq!(
            crate::cpu::upper_state_dirty(),
            Some(true),
            "tract's kernels no longer leave the upper vector state dirty: the cause documented in cpu.rs changed"
        );

        let limits = Limits::default();
        let runtime = Runtime::new(&limits, None).unwrap();
        let guest = runtime.load_preprocess(&root.join("target/guests/preprocess.wasm"), default_grants()).unwrap();
        let mut png = std::io::Cursor::new(Vec::new());
        image::RgbImage::from_pixel(64, 48, image::Rgb([200, 30, 90]))
            .write_to(&mut png, image::ImageFormat::Png)
            .unwrap();
        let spec = SpecView {
            name: "shapes",
            version: 1,
            input_shape: [1, 3, 224, 224],
            mean: [0.485, 0.456, 0.406],
            std: [0.229, 0.224, 0.225],
            resize: 256,
            labels_count: 8,
        };
        // Leave the thread as that kernel does (XINUSE's upper bits set), then go through the
        // real path.
        // SAFETY: AVX exists (upper_state_dirty answered); clobbers ymm1, declared.
        unsafe { std::arch::asm!("vpcmpeqd ymm1, ymm1, ymm1", out("ymm1") _) };
        assert_eq!(crate::cpu::upper_state_dirty(), Some(true));
        let deadline = Instant::now() + Duration::from_secs(30);
        runtime.preprocess(&guest, png.get_ref(), None, &spec, &limits, deadline).unwrap();
        assert_eq!(ENTRY_UPPER_STATE_DIRTY.get(), Some(false), "the guest was entered with dirty upper vector state");
    }
}
