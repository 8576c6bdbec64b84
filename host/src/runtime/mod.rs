//! The WebAssembly runtime: one wasmtime `Engine` (pooling allocator, epoch interruption), the
//! linker with the host's `inference` implementation, and the pipeline's guest stages.
//!
//! Every guest call gets a fresh `Store` from a pre-linked `InstancePre`: no state survives a
//! request, a trap poisons nothing, and instantiation from the pool is cheap. Guests get
//! Tessera's own interfaces and WASI denied by default (`wasi.rs`): what config grants each.

mod bindings;
mod wasi;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use wasmtime::component::{Component, HasSelf, InstancePre, Linker};
use wasmtime::{
    Config as EngineConfig, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, ResourceLimiter, Store, Trap,
};

use crate::config::{EPOCH_TICK_MS, Limits};
use crate::error::{ErrorKind, PipelineError, Stage};
use crate::stage_io::{Decision, Prediction, SpecView};
use bindings::{inference, postprocessor, preprocessor, rules, types};
pub use wasi::{Grants, default_grants};

/// Why the runtime or a guest could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("cannot configure the WebAssembly engine: {0}")]
    Engine(String),
    #[error("cannot read guest component {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("guest component {path} is not a valid {world} component: {message}")]
    Invalid { path: PathBuf, world: &'static str, message: String },
    #[error(
        "guest component {path} imports what Tessera does not provide (only tessera:vision/* and wasi:*): {}",
        imports.join(", ")
    )]
    UnknownImports { path: PathBuf, imports: Vec<String> },
    #[error("precompiled component {path} is not trusted: {why}")]
    Untrusted { path: PathBuf, why: String },
}

/// Per-request guest state: only the capabilities that request has.
pub struct GuestState {
    limiter: MemoryLimiter,
    inference: InferenceAccess,
    wasi: wasi::WasiState,
    /// The store's hostcall fuel: the most a guest may hand the host in one crossing.
    output_bytes: usize,
    /// `limits.guest_infer_calls`, for the error message.
    infer_calls: u32,
    _live: LiveStore,
}

impl wasmtime_wasi::WasiView for GuestState {
    fn ctx(&mut self) -> wasmtime_wasi::WasiCtxView<'_> {
        wasmtime_wasi::WasiCtxView { ctx: &mut self.wasi.ctx, table: &mut self.wasi.table }
    }
}

/// Counts a store as alive from its creation until it is dropped.
struct LiveStore(Arc<AtomicUsize>);

impl LiveStore {
    fn new(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        LiveStore(count.clone())
    }
}

impl Drop for LiveStore {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What a guest's `inference` import reaches. The runtime defines it and the pipeline implements
/// it over the model repository, so the runtime knows nothing of models or versions.
pub trait GuestInference: Send + Sync {
    /// Runs `model` (its `version`, or the default one) on `input` of `shape` before `deadline`;
    /// the output's values, or why not, as the pipeline would report it.
    fn infer(
        &self,
        model: &str,
        version: Option<&str>,
        shape: &[u32],
        input: Vec<f32>,
        deadline: Instant,
    ) -> Result<Vec<f32>, PipelineError>;
}

/// What a guest's calls to the host `inference` interface may reach, within the request's
/// deadline; `None` for the stages that are not given inference.
struct InferenceAccess {
    backend: Option<Arc<dyn GuestInference>>,
    deadline: Instant,
    /// `inference.infer` calls this guest call may still make (`limits.guest_infer_calls`):
    /// rules guests share the serving queue with requests.
    calls_left: u32,
}

/// A guest called `inference.infer` more than `limits.guest_infer_calls` times in one call.
#[derive(Debug)]
struct TooManyInferCalls(u32);

impl std::fmt::Display for TooManyInferCalls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the guest called inference.infer more than limits.guest_infer_calls ({}) times in one call", self.0)
    }
}

impl std::error::Error for TooManyInferCalls {}

/// Caps the linear memory of a store's instance, all its memories together (a Python or JS
/// component has several), and remembers that it refused one, so a guest that dies from an
/// allocation failure is reported as out of memory rather than as a generic trap. (wasmtime's
/// `StoreLimits` caps each memory alone and does not record the refusal.)
struct MemoryLimiter {
    max_bytes: usize,
    /// The bytes of every memory the store has, as this limiter allowed them to grow (wasmtime
    /// asks it for each memory's initial size too, from 0).
    used: usize,
    /// The process-wide budget `used` is reserved from, and handed back to when the store
    /// (and so this limiter) is dropped.
    budget: Arc<MemoryBudget>,
    refused: Option<Refusal>,
}

/// Which limit refused a memory growth.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Refusal {
    /// `limits.guest_memory_bytes`: the guest's own.
    Guest,
    /// `limits.guest_memory_total_bytes`: every live guest's together; the request is not at
    /// fault, the host is busy.
    Budget,
}

impl MemoryLimiter {
    fn new(max_bytes: usize, budget: Arc<MemoryBudget>) -> Self {
        MemoryLimiter { max_bytes, used: 0, budget, refused: None }
    }
}

impl Drop for MemoryLimiter {
    fn drop(&mut self) {
        self.budget.release(self.used);
    }
}

/// `limits.guest_memory_total_bytes`: the linear memory every live guest instance holds,
/// together, so that many concurrent large decodes cannot take more than that from the host
/// (each is also capped alone). Counted as the limiters grant it, not as pages are touched.
#[derive(Debug)]
pub(crate) struct MemoryBudget {
    total: usize,
    used: AtomicUsize,
}

impl MemoryBudget {
    pub(crate) fn new(total: usize) -> Self {
        MemoryBudget { total, used: AtomicUsize::new(0) }
    }

    /// Takes `bytes` from the budget if that many are left.
    fn reserve(&self, bytes: usize) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes).filter(|&after| after <= self.total)
            })
            .is_ok()
    }

    fn release(&self, bytes: usize) {
        self.used.fetch_sub(bytes, Ordering::AcqRel);
    }

    /// Bytes granted to live guests now.
    pub(crate) fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        // Past the memory's own maximum wasmtime refuses the growth whatever we answer: count
        // nothing (wasmtime calls this for each memory's initial size too, from 0, in
        // vm/memory.rs, so `used` covers every memory).
        if maximum.is_some_and(|max| desired > max) {
            return Ok(false);
        }
        let growth = desired.saturating_sub(current);
        let total = self.used.saturating_add(growth);
        if total > self.max_bytes {
            self.refused = Some(Refusal::Guest);
            return Ok(false);
        }
        if !self.budget.reserve(growth) {
            self.refused = Some(Refusal::Budget);
            return Ok(false);
        }
        self.used = total;
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}

/// Table elements (function references) one guest instance may hold.
const MAX_TABLE_ELEMENTS: usize = 100_000;

impl types::Host for GuestState {}

impl inference::Host for GuestState {
    fn infer(
        &mut self,
        model: String,
        version: Option<String>,
        input: types::Tensor,
    ) -> wasmtime::Result<Result<types::Tensor, types::Error>> {
        let access = &mut self.inference;
        if access.calls_left == 0 {
            return Err(wasmtime::Error::new(TooManyInferCalls(self.infer_calls)));
        }
        access.calls_left -= 1;
        let Some(backend) = access.backend.as_ref() else {
            return Ok(Err(types::Error::Internal("inference is not available to this stage".into())));
        };
        let result = backend.infer(&model, version.as_deref(), &input.shape, input.data, access.deadline);
        Ok(match result {
            Ok(data) => Ok(types::Tensor { shape: vec![1, data.len() as u32], data }),
            Err(e) => Err(match e.kind {
                ErrorKind::ModelNotFound | ErrorKind::BadRequest => types::Error::InvalidInput(e.message),
                _ => types::Error::Internal(format!("{}: {}", e.kind.code(), e.message)),
            }),
        })
    }
}

/// Makes sure the compile cache at `dir` is ours alone: native code loaded from it runs as
/// trusted code, so a directory another user could write to would let them run code in this
/// process. Created with mode 0700 when missing; an existing one must be a directory owned by
/// this user, and is narrowed to 0700.
#[cfg(all(unix, feature = "compiler"))]
fn private_cache_dir(dir: &Path) -> Result<(), String> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    if !dir.exists() {
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(|e| e.to_string())?;
    }
    let meta = std::fs::symlink_metadata(dir).map_err(|e| e.to_string())?;
    if !meta.is_dir() {
        return Err("is not a directory (a symlink is refused too)".into());
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if meta.uid() != me {
        return Err(format!(
            "is owned by user {}, not by this process's user {me}: code compiled there would run here",
            meta.uid()
        ));
    }
    if meta.mode() & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(|e| e.to_string())?;
        tracing::info!(dir = %dir.display(), "compile cache narrowed to mode 0700");
    }
    Ok(())
}

#[cfg(all(not(unix), feature = "compiler"))]
fn private_cache_dir(_dir: &Path) -> Result<(), String> {
    Ok(())
}

/// A precompiled component (`tessera compile`'s output, an ELF file wasmtime recognises) rather
/// than a WebAssembly one, whatever the file is called.
pub fn is_precompiled(path: &Path) -> bool {
    matches!(Engine::detect_precompiled_file(path), Ok(Some(wasmtime::Precompiled::Component)))
}

/// A precompiled component is native code the host runs as its own, so it loads only from a
/// trusted path: the file and every directory above it owned by this process's user or root,
/// and none of them writable by group or others (a sticky directory such as /tmp excepted only
/// for files this user owns), as ssh treats its keys.
#[cfg(unix)]
fn trusted(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let path = std::fs::canonicalize(path).map_err(|e| e.to_string())?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    let file = std::fs::metadata(&path).map_err(|e| e.to_string())?;
    if !file.is_file() {
        return Err(format!("{} is not a file", path.display()));
    }
    let check = |p: &Path, meta: &std::fs::Metadata, sticky_ok: bool| {
        if meta.uid() != me && meta.uid() != 0 {
            return Err(format!(
                "{} is owned by user {}, not by this process's user {me} or root",
                p.display(),
                meta.uid()
            ));
        }
        let sticky = meta.mode() & 0o1000 != 0;
        if meta.mode() & 0o022 != 0 && !(sticky && sticky_ok) {
            return Err(format!("{} can be written by other users (mode {:o})", p.display(), meta.mode() & 0o7777));
        }
        Ok(())
    };
    check(&path, &file, false)?;
    for dir in path.ancestors().skip(1) {
        let meta = std::fs::metadata(dir).map_err(|e| e.to_string())?;
        check(dir, &meta, file.uid() == me)?;
    }
    Ok(())
}

#[cfg(not(unix))]
fn trusted(_path: &Path) -> Result<(), String> {
    Ok(())
}

/// Advances the engine's epoch every `EPOCH_TICK_MS` on its own OS thread: a tokio task could
/// be starved exactly when every worker is inside a looping guest.
struct EpochTicker {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl EpochTicker {
    fn start(engine: Engine) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("tessera-epoch".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(EPOCH_TICK_MS));
                    engine.increment_epoch();
                }
            })
            .expect("spawning the epoch thread");
        EpochTicker { stop, thread: Some(thread) }
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Drops finished stores on a thread of its own. Dropping a store returns its instance to the
/// pool, which resets the slot: the kept-resident pages a call dirtied are copied back from the
/// memory image and the rest handed to the kernel (`madvise`), 0.2–0.4 ms for a Python or JS
/// rules guest and more after a large decode. A request need not wait for it: its answer does
/// not depend on the reset, only the next instance in that slot does, and wasmtime hands that
/// slot out again only once the reset is done.
struct Reaper {
    tx: Option<std::sync::mpsc::SyncSender<Store<GuestState>>>,
    thread: Option<JoinHandle<()>>,
}

impl Reaper {
    /// Up to `backlog` stores wait; past that the caller drops its own (the request pays the
    /// reset, as it would without a reaper), so a slow reaper never holds more pool slots.
    fn start(backlog: usize) -> Self {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Store<GuestState>>(backlog);
        let thread = std::thread::Builder::new()
            .name("tessera-reaper".into())
            .spawn(move || rx.into_iter().for_each(drop))
            .expect("spawning the store reaper thread");
        Reaper { tx: Some(tx), thread: Some(thread) }
    }

    fn retire(&self, store: Store<GuestState>) {
        if let Some(tx) = &self.tx
            && let Err(std::sync::mpsc::TrySendError::Full(store) | std::sync::mpsc::TrySendError::Disconnected(store)) =
                tx.try_send(store)
        {
            drop(store);
        }
    }
}

impl Drop for Reaper {
    /// Waits for the stores already handed over, so none outlives the runtime's engine users.
    fn drop(&mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The engine, the linker and the epoch ticker, shared by every guest stage.
pub struct Runtime {
    engine: Engine,
    /// One linker per set of WASI grants, made when a guest first needs it.
    linkers: std::sync::Mutex<std::collections::HashMap<Grants, Linker<GuestState>>>,
    guest_memory_bytes: usize,
    /// `limits.guest_memory_total_bytes`, shared by every store of this runtime.
    memory_budget: Arc<MemoryBudget>,
    /// `limits.guest_output_bytes`: wasmtime's hostcall fuel for each store.
    guest_output_bytes: usize,
    /// `limits.guest_infer_calls`.
    guest_infer_calls: u32,
    /// Stores (one guest instance each) alive now: the pool slots in use.
    live_stores: Arc<AtomicUsize>,
    reaper: Reaper,
    _ticker: EpochTicker,
}

/// What `tessera compile --target/--cpu` generates code for. The default is this machine: its
/// architecture and every CPU feature it has (wasmtime detects them), so a `.cwasm` made on a
/// build server with AVX-512 would not load on a node without it. A named triple alone gets
/// that architecture's baseline (x86-64: SSE2); `cpu` adds features. wasmtime checks when it
/// loads a `.cwasm` that the machine has every feature it was compiled with, so a wrong choice
/// fails at load, naming the feature, never at run time.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CompileTarget {
    /// A target triple (`x86_64-unknown-linux-gnu`, `aarch64-unknown-linux-gnu`); `None`: this
    /// machine's.
    pub triple: Option<String>,
    /// `native` (this machine's features; only without `triple`), `baseline`, `x86-64-v2`,
    /// `x86-64-v3`, or Cranelift feature flags separated by commas (`has_avx2,has_fma`,
    /// `has_lse`); `None`: `native` without a triple, `baseline` with one.
    pub cpu: Option<String>,
}

/// x86-64 microarchitecture levels (the psABI's) as Cranelift's x86 feature flags.
#[cfg(feature = "compiler")]
const X86_64_V2: &[&str] = &["has_sse3", "has_ssse3", "has_sse41", "has_sse42", "has_popcnt", "has_cmpxchg16b"];
#[cfg(feature = "compiler")]
const X86_64_V3: &[&str] = &["has_avx", "has_avx2", "has_bmi1", "has_bmi2", "has_fma", "has_lzcnt"];

impl CompileTarget {
    /// Whether this is this machine (wasmtime's default: host triple, detected features).
    pub fn is_native(&self) -> bool {
        self.triple.is_none() && self.cpu.as_deref().is_none_or(|c| c == "native")
    }

    /// The Cranelift flags `cpu` stands for.
    #[cfg(feature = "compiler")]
    fn flags(&self) -> Result<Vec<&str>, RuntimeError> {
        let cpu = self.cpu.as_deref().unwrap_or("baseline");
        let is_x86 = self.triple.as_deref().map_or(cfg!(target_arch = "x86_64"), |t| t.starts_with("x86_64"));
        let level = |flags: Vec<&'static str>| {
            if is_x86 {
                Ok(flags)
            } else {
                Err(RuntimeError::Engine(format!("--cpu {cpu} is an x86-64 level; the target is not x86-64")))
            }
        };
        match cpu {
            "native" => Err(RuntimeError::Engine(
                "--cpu native means this machine: it cannot be combined with --target (use baseline or flags)".into(),
            )),
            "baseline" => Ok(Vec::new()),
            "x86-64-v2" => level(X86_64_V2.to_vec()),
            "x86-64-v3" => level([X86_64_V2, X86_64_V3].concat()),
            flags => Ok(flags.split(',').map(str::trim).filter(|f| !f.is_empty()).collect()),
        }
    }

    fn apply(&self, config: &mut EngineConfig) -> Result<(), RuntimeError> {
        if self.is_native() {
            return Ok(());
        }
        self.apply_target(config)
    }

    #[cfg(not(feature = "compiler"))]
    fn apply_target(&self, _: &mut EngineConfig) -> Result<(), RuntimeError> {
        Err(RuntimeError::Engine(no_compiler("compiling for another target")))
    }

    #[cfg(feature = "compiler")]
    fn apply_target(&self, config: &mut EngineConfig) -> Result<(), RuntimeError> {
        // A named target switches off wasmtime's detection of this machine's features: with
        // no triple given, that is this machine's architecture at its baseline.
        let triple = self.triple.clone().unwrap_or_else(|| target_lexicon::HOST.to_string());
        config.target(&triple).map_err(|e| RuntimeError::Engine(format!("--target {triple}: {e:#}")))?;
        for flag in self.flags()? {
            // SAFETY: wasmtime does not check that these features exist where the code will
            // run; it checks when a `.cwasm` is loaded (`check_compatible_with_isa_flag`),
            // refusing one that needs a feature the machine lacks. An unknown flag name fails
            // the engine's creation.
            unsafe {
                config.cranelift_flag_enable(flag);
            }
        }
        Ok(())
    }
}

/// What a build without the `compiler` feature says when asked to compile.
#[cfg(not(feature = "compiler"))]
fn no_compiler(what: &str) -> String {
    format!(
        "{what} needs a compiler, and this build of Tessera is runtime-only (built without the `compiler` \
         feature): precompile guests with `tessera compile --target <triple> --cpu <level>` on a full build \
         and give this one the .cwasm files (docs/EDGE.md)"
    )
}

/// How a guest call failed.
#[derive(Debug)]
pub enum GuestFailure {
    /// The guest returned its own `error` value.
    Reported(ErrorKind, String),
    Trap(String),
    MemoryExceeded,
    /// `limits.guest_memory_total_bytes` was reached by all live guests together.
    MemoryBudgetExhausted(usize),
    DeadlineExceeded,
    Overloaded(String),
}

impl GuestFailure {
    /// The pipeline error for a failure in `stage` of guest `name`.
    pub fn into_pipeline(self, stage: Stage, name: &str) -> PipelineError {
        let (kind, message) = match self {
            GuestFailure::Reported(kind, m) => (kind, m),
            GuestFailure::Trap(m) => (ErrorKind::GuestTrap, format!("guest {name} trapped: {m}")),
            GuestFailure::MemoryExceeded => {
                (ErrorKind::GuestMemoryExceeded, format!("guest {name} exceeded its memory limit"))
            }
            GuestFailure::MemoryBudgetExhausted(total) => (
                ErrorKind::Overloaded,
                format!(
                    "guest {name} could not get memory: the guests running now hold limits.guest_memory_total_bytes \
                     ({total} bytes) together; retry later"
                ),
            ),
            GuestFailure::DeadlineExceeded => {
                (ErrorKind::DeadlineExceeded, format!("guest {name} did not finish before the request deadline"))
            }
            GuestFailure::Overloaded(m) => (ErrorKind::Overloaded, format!("no guest instance slot free: {m}")),
        };
        PipelineError::new(kind, stage, message)
    }
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
        let guest_memory_bytes = limits.guest_memory_bytes as usize;
        // A request runs its stages one after another, so at most one live instance per
        // in-flight request, and stores wait for the reaper thread before their slot is free:
        // twice the requests, and never fewer than 128 (the slots reserve address space, not
        // memory). Each component instance of a Rust guest has a couple of core instances (the
        // module plus adapter shims) but one memory.
        let slots = limits.concurrent_requests().saturating_mul(2).max(128);
        let memories = slots.saturating_mul(2);
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(slots)
            .total_core_instances(slots.saturating_mul(4))
            .total_memories(memories)
            .total_tables(slots.saturating_mul(4))
            .max_memory_size(guest_memory_bytes)
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
        // rules guest, 100 vs this vs 0: no difference beyond noise (docs/PERFORMANCE.md).
        pool.max_unused_warm_slots(limits.concurrent_requests());
        // By default a freed slot's memory goes back to the kernel (madvise), and the next
        // instance faults every page it touches in again: for a Python or JS guest, whose
        // interpreter touches hundreds of pages of its pre-initialised heap per call, that was
        // ~40 % of the call (0.75 → 0.51 ms Python, 0.89 → 0.51 ms JS, 0.81 → 0.33 ms Go
        // instantiate: `tessera test-rules --repeat 20`, docs/PERFORMANCE.md). Keeping pages
        // resident means resetting them in place; wasmtime does that for only the pages a call
        // dirtied when the kernel reports them (PAGEMAP_SCAN), and otherwise for all
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
            engine,
            linkers: Default::default(),
            guest_memory_bytes,
            memory_budget: Arc::new(MemoryBudget::new(
                usize::try_from(limits.guest_memory_total_bytes).unwrap_or(usize::MAX),
            )),
            guest_output_bytes: usize::try_from(limits.guest_output_bytes).unwrap_or(usize::MAX),
            guest_infer_calls: limits.guest_infer_calls,
            live_stores: Arc::default(),
            reaper: Reaper::start(slots as usize / 2),
            _ticker: ticker,
        })
    }

    /// The linker for guests granted `grants`: Tessera's interfaces and WASI (`wasi.rs`).
    fn linker(&self, grants: &Grants) -> Result<Linker<GuestState>, RuntimeError> {
        let mut linkers = self.linkers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(linker) = linkers.get(grants) {
            return Ok(linker.clone());
        }
        let mut linker = Linker::new(&self.engine);
        rules::Rules::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)
            .and_then(|()| wasi::add_to_linker(&mut linker, grants))
            .map_err(|e| RuntimeError::Engine(format!("{e:#}")))?;
        linkers.insert(grants.clone(), linker.clone());
        Ok(linker)
    }

    /// Compiles (or loads from the cache) the component at `path`, links it with `grants`, and
    /// checks that it has the exports of `world` (`typed` is the world's generated `*Pre::new`).
    /// WASI imports it was not granted become functions that fail naming themselves; an import
    /// that is neither Tessera's nor WASI refuses the component, naming every such import.
    fn compile<P>(
        &self,
        path: &Path,
        world: &'static str,
        grants: &Grants,
        typed: impl FnOnce(InstancePre<GuestState>) -> wasmtime::Result<P>,
    ) -> Result<P, RuntimeError> {
        let invalid =
            |e: wasmtime::Error| RuntimeError::Invalid { path: path.to_path_buf(), world, message: format!("{e:#}") };
        let started = Instant::now();
        let (component, bytes) = self.component(path, world)?;
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
        let mut linker = self.linker(grants)?;
        wasi::stub_ungranted(&mut linker, &self.engine, &component, grants).map_err(invalid)?;
        let pre = linker.instantiate_pre(&component).and_then(typed).map_err(invalid)?;
        tracing::info!(
            path = %path.display(),
            world,
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

    /// Guest instances alive now (each call has its own store and instance).
    pub fn live_instances(&self) -> usize {
        self.live_stores.load(Ordering::Relaxed)
    }

    /// Linear-memory pool slots that an instance used and that are free now (each keeps up to
    /// `limits.guest_keep_resident_bytes` resident).
    pub fn warm_memory_slots(&self) -> u32 {
        self.engine.pooling_allocator_metrics().map_or(0, |m| m.unused_warm_memories())
    }

    /// Linear memory granted to the guest instances alive now, all together.
    pub fn guest_memory_in_use(&self) -> usize {
        self.memory_budget.used()
    }

    /// Instantiates a guest in `store` and makes one call, timing both phases and classifying
    /// any failure (trap, deadline, memory, the guest's own error); then hands the store to the
    /// reaper.
    fn run_guest<I, R>(
        &self,
        mut store: Store<GuestState>,
        instantiate: impl FnOnce(&mut Store<GuestState>) -> wasmtime::Result<I>,
        call: impl FnOnce(I, &mut Store<GuestState>) -> wasmtime::Result<Result<R, types::Error>>,
    ) -> Result<(R, Phases), GuestFailure> {
        // Native code that ran before on this thread (tract's kernels) may have left the upper
        // vector state dirty, which makes the guest's legacy-SSE code ~30x slower (see `cpu`).
        crate::cpu::clean_upper_state();
        #[cfg(test)]
        tests::ENTRY_UPPER_STATE_DIRTY.set(crate::cpu::upper_state_dirty());
        let t = Instant::now();
        let result = match instantiate(&mut store) {
            Ok(instance) => {
                let instantiate = t.elapsed();
                let result = call(instance, &mut store);
                let phases = Phases { instantiate, call: t.elapsed() - instantiate };
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

    /// A store for one guest call that traps once `deadline` passes.
    fn store(
        &self,
        deadline: Instant,
        backend: Option<Arc<dyn GuestInference>>,
        name: &str,
        grants: &Grants,
        output_bytes: usize,
    ) -> Result<Store<GuestState>, GuestFailure> {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(GuestFailure::DeadlineExceeded);
        }
        let state = GuestState {
            limiter: MemoryLimiter::new(self.guest_memory_bytes, self.memory_budget.clone()),
            inference: InferenceAccess { backend, deadline, calls_left: self.guest_infer_calls },
            wasi: wasi::WasiState::new(grants, name),
            output_bytes,
            infer_calls: self.guest_infer_calls,
            _live: LiveStore::new(&self.live_stores),
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limiter);
        store.set_epoch_deadline((remaining.as_millis() as u64).div_ceil(EPOCH_TICK_MS).max(1));
        store.epoch_deadline_trap();
        // wasmtime counts the bytes it lifts out of the guest (strings, lists) against this
        // "hostcall fuel" on every crossing, a result included, and fails the call once it runs
        // out, before copying: a guest returning a 100 MB `reason` costs the host nothing
        // (its 128 MiB default let it through as a 100 MB HTTP body).
        store.set_hostcall_fuel(output_bytes);
        Ok(store)
    }
}

fn failure(err: wasmtime::Error, store: &Store<GuestState>) -> GuestFailure {
    match store.data().limiter.refused {
        Some(Refusal::Guest) => return GuestFailure::MemoryExceeded,
        Some(Refusal::Budget) => return GuestFailure::MemoryBudgetExhausted(store.data().limiter.budget.total),
        None => {}
    }
    if let Some(trap) = err.downcast_ref::<Trap>() {
        return match trap {
            Trap::Interrupt => GuestFailure::DeadlineExceeded,
            other => GuestFailure::Trap(other.to_string()),
        };
    }
    if let Some(limit) = err.downcast_ref::<wasmtime::PoolConcurrencyLimitError>() {
        return GuestFailure::Overloaded(limit.to_string());
    }
    if let Some(denied) = err.downcast_ref::<wasi::NotGranted>() {
        return GuestFailure::Trap(denied.to_string());
    }
    if let Some(too_many) = err.downcast_ref::<TooManyInferCalls>() {
        return GuestFailure::Reported(ErrorKind::GuestFailed, too_many.to_string());
    }
    // wasmtime's error type for it is private; its message is what identifies it.
    if format!("{err:#}").contains("fuel allocated for hostcalls has been exhausted") {
        return GuestFailure::Reported(
            ErrorKind::GuestFailed,
            format!(
                "the guest handed the host more than limits.guest_output_bytes ({} bytes) at once",
                store.data().output_bytes
            ),
        );
    }
    GuestFailure::Trap(format!("{err:#}"))
}

fn reported(e: types::Error) -> GuestFailure {
    match e {
        types::Error::InvalidInput(m) => GuestFailure::Reported(ErrorKind::InvalidImage, m),
        types::Error::Unsupported(m) => GuestFailure::Reported(ErrorKind::UnsupportedMediaType, m),
        types::Error::TooLarge(m) => GuestFailure::Reported(ErrorKind::ImageTooLarge, m),
        types::Error::Internal(m) => GuestFailure::Reported(ErrorKind::GuestFailed, m),
    }
}

/// What `tessera inspect` tells of a component: the Tessera world it fits (if any), what
/// becomes of each import under the given grants, and its exports.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Inspection {
    /// A precompiled `.cwasm` rather than WebAssembly.
    pub precompiled: bool,
    pub path: PathBuf,
    pub bytes: usize,
    /// `preprocessor`, `postprocessor` or `rules`, judged from the exports; `None` when they
    /// match none.
    pub world: Option<&'static str>,
    /// `Ok` when it loads as that world with these grants, else why not.
    pub fits: Result<(), String>,
    pub imports: Vec<Import>,
    pub exports: Vec<String>,
}

/// One import and what the host does with it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Import {
    pub name: String,
    /// `tessera` (the host's own interfaces), `linked` (WASI every guest gets), `granted`,
    /// `not granted` (linked as functions that fail when called) or `refused` (no one provides it).
    pub status: &'static str,
}

impl Runtime {
    /// Reads the component at `path` and says how it would load with `grants`, without keeping it.
    pub fn inspect(&self, path: &Path, grants: &Grants) -> Result<Inspection, RuntimeError> {
        let (component, bytes) = self.component(path, "guest")?;
        let ty = component.component_type();
        let imports = ty
            .imports(&self.engine)
            .map(|(name, _)| {
                let status = if name.starts_with("tessera:vision/") {
                    "tessera"
                } else if !name.starts_with("wasi:") {
                    "refused"
                } else if wasi::is_linked(name, &Grants::new()) {
                    "linked"
                } else if wasi::is_linked(name, grants) {
                    "granted"
                } else {
                    "not granted"
                };
                Import { name: name.to_string(), status }
            })
            .collect();
        let exports: Vec<String> = ty.exports(&self.engine).map(|(name, _)| name.to_string()).collect();
        let has = |name: &str| exports.iter().any(|e| e == name);
        let world = if has("preprocess") {
            Some("preprocessor")
        } else if has("postprocess") {
            Some("postprocessor")
        } else if has("decide") {
            Some("rules")
        } else {
            None
        };
        let fits = match world {
            Some("preprocessor") => self.load_preprocess(path, grants.clone()).map(drop),
            Some("postprocessor") => self.load_postprocess(path, grants.clone()).map(drop),
            Some(_) => self.load_rules(path, Vec::new(), grants.clone()).map(drop),
            None => Ok(()),
        }
        .map_err(|e| e.to_string())
        .and_then(|()| match world {
            Some(_) => Ok(()),
            None => Err("it exports none of preprocess, postprocess, decide".into()),
        });
        Ok(Inspection {
            path: path.to_path_buf(),
            bytes,
            precompiled: is_precompiled(path),
            world,
            fits,
            imports,
            exports,
        })
    }
}

/// The model spec as the guests' WIT `model-spec`.
fn spec_to_wit(spec: &SpecView<'_>) -> types::ModelSpec {
    types::ModelSpec {
        name: spec.name.to_string(),
        version: spec.version.to_string(),
        input_shape: spec.input_shape.to_vec(),
        mean: spec.mean.to_vec(),
        std: spec.std.to_vec(),
        resize: spec.resize,
        labels_count: spec.labels_count,
    }
}

/// Where a guest call's time went: instantiating the component from its `InstancePre`, and
/// the exported function itself (including lifting and lowering its arguments).
#[derive(Debug, Clone, Copy, Default)]
pub struct Phases {
    pub instantiate: Duration,
    pub call: Duration,
}

/// The preprocess stage: a `preprocessor` component ready to instantiate.
#[derive(Clone)]
pub struct PreprocessGuest {
    pub name: String,
    grants: Grants,
    pre: preprocessor::PreprocessorPre<GuestState>,
}

/// The postprocess stage.
#[derive(Clone)]
pub struct PostprocessGuest {
    pub name: String,
    grants: Grants,
    pre: postprocessor::PostprocessorPre<GuestState>,
}

/// One rules stage with its configuration.
#[derive(Clone)]
pub struct RulesGuest {
    pub name: String,
    grants: Grants,
    config: Vec<(String, String)>,
    pre: rules::RulesPre<GuestState>,
}

impl RulesGuest {
    /// The same compiled guest with another configuration (a second place in a chain).
    pub fn with_config(&self, config: Vec<(String, String)>) -> Self {
        RulesGuest { config, ..self.clone() }
    }
}

fn guest_name(path: &Path) -> String {
    path.file_stem().and_then(|s| s.to_str()).unwrap_or("guest").to_string()
}

impl Runtime {
    pub fn load_preprocess(&self, path: &Path, grants: Grants) -> Result<PreprocessGuest, RuntimeError> {
        let pre = self.compile(path, "preprocessor", &grants, preprocessor::PreprocessorPre::new)?;
        Ok(PreprocessGuest { name: guest_name(path), grants, pre })
    }

    pub fn load_postprocess(&self, path: &Path, grants: Grants) -> Result<PostprocessGuest, RuntimeError> {
        let pre = self.compile(path, "postprocessor", &grants, postprocessor::PostprocessorPre::new)?;
        Ok(PostprocessGuest { name: guest_name(path), grants, pre })
    }

    pub fn load_rules(
        &self,
        path: &Path,
        config: Vec<(String, String)>,
        grants: Grants,
    ) -> Result<RulesGuest, RuntimeError> {
        let pre = self.compile(path, "rules", &grants, rules::RulesPre::new)?;
        Ok(RulesGuest { name: guest_name(path), grants, config, pre })
    }

    /// Decodes and normalizes `image` into the model's input tensor data; also reports how
    /// long instantiation and the call took.
    pub fn preprocess(
        &self,
        guest: &PreprocessGuest,
        image: &[u8],
        media_type: Option<&str>,
        spec: &SpecView<'_>,
        limits: &Limits,
        deadline: Instant,
    ) -> Result<(Vec<f32>, Phases), GuestFailure> {
        // The result is the model's input tensor, whatever the output cap.
        let tensor_bytes = spec.input_shape.iter().map(|&d| d as usize).product::<usize>() * 4 + 4096;
        let store =
            self.store(deadline, None, &guest.name, &guest.grants, self.guest_output_bytes.max(tensor_bytes))?;
        let img = types::Image { bytes: image.to_vec(), media_type: media_type.map(String::from) };
        let decode =
            types::DecodeLimits { max_pixels: limits.max_image_pixels, max_alloc_bytes: limits.max_decode_alloc_bytes };
        let (tensor, phases) = self.run_guest(
            store,
            |s| guest.pre.instantiate(s),
            |i, s| i.call_preprocess(s, &img, &spec_to_wit(spec), decode),
        )?;
        let expected: Vec<u32> = spec.input_shape.to_vec();
        if tensor.shape != expected || tensor.data.len() != expected.iter().map(|&d| d as usize).product::<usize>() {
            return Err(GuestFailure::Reported(
                ErrorKind::GuestFailed,
                format!(
                    "guest {} returned shape {:?} with {} values; the model takes {expected:?}",
                    guest.name,
                    tensor.shape,
                    tensor.data.len()
                ),
            ));
        }
        Ok((tensor.data, phases))
    }

    /// Softmax, top-k and labels; also reports how long instantiation and the call took.
    pub fn postprocess(
        &self,
        guest: &PostprocessGuest,
        logits: Vec<f32>,
        spec: &SpecView<'_>,
        labels: &[String],
        top_k: u32,
        deadline: Instant,
    ) -> Result<(Vec<Prediction>, Phases), GuestFailure> {
        let store = self.store(deadline, None, &guest.name, &guest.grants, self.guest_output_bytes)?;
        let tensor = types::Tensor { shape: vec![1, logits.len() as u32], data: logits };
        let (preds, phases) = self.run_guest(
            store,
            |s| guest.pre.instantiate(s),
            |i, s| i.call_postprocess(s, &tensor, &spec_to_wit(spec), labels, top_k),
        )?;
        // A guest may return more than it was asked for; the response carries `top_k` at most.
        let preds = preds.into_iter().take(top_k as usize);
        Ok((preds.map(|p| Prediction { index: p.index, label: p.label, score: p.score }).collect(), phases))
    }

    /// One rule's decision (`rule` names the guest). Rules may call back into inference through
    /// `inference`; also reports how long instantiation and the call took.
    pub fn decide(
        &self,
        guest: &RulesGuest,
        preds: &[Prediction],
        metadata: &[(String, String)],
        inference: Arc<dyn GuestInference>,
        deadline: Instant,
    ) -> Result<(Decision, Phases), GuestFailure> {
        let store = self.store(deadline, Some(inference), &guest.name, &guest.grants, self.guest_output_bytes)?;
        let wit_preds: Vec<types::Prediction> = preds
            .iter()
            .map(|p| types::Prediction { index: p.index, label: p.label.clone(), score: p.score })
            .collect();
        let metadata = metadata.to_vec();
        let (d, phases) = self.run_guest(
            store,
            |s| guest.pre.instantiate(s),
            |i, s| i.call_decide(s, &wit_preds, &metadata, &guest.config),
        )?;
        let decision = Decision {
            accepted: d.accepted,
            reason: d.reason,
            category: d.category,
            tags: d.tags,
            rule: Some(guest.name.clone()),
        };
        Ok((decision, phases))
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    #[test]
    #[cfg(feature = "compiler")]
    fn compile_targets_name_their_cpu_features_and_refuse_contradictions() {
        let target = |triple: Option<&str>, cpu: Option<&str>| CompileTarget {
            triple: triple.map(str::to_string),
            cpu: cpu.map(str::to_string),
        };
        assert!(target(None, None).is_native() && target(None, Some("native")).is_native());
        assert!(!target(None, Some("baseline")).is_native());
        let x86 = Some("x86_64-unknown-linux-gnu");
        assert_eq!(target(x86, None).flags().unwrap(), Vec::<&str>::new(), "a triple alone is its baseline");
        let v3_target = target(x86, Some("x86-64-v3"));
        let v3 = v3_target.flags().unwrap();
        assert!(v3.contains(&"has_sse42") && v3.contains(&"has_avx2") && v3.contains(&"has_fma"), "{v3:?}");
        assert_eq!(target(x86, Some("has_avx2, has_fma")).flags().unwrap(), ["has_avx2", "has_fma"]);
        let arm = Some("aarch64-unknown-linux-gnu");
        assert!(target(arm, Some("x86-64-v2")).flags().unwrap_err().to_string().contains("not x86-64"));
        assert!(target(x86, Some("native")).flags().unwrap_err().to_string().contains("cannot be combined"));
        // An engine for this architecture at a named level builds; a flag Cranelift does not
        // know fails the engine, naming it.
        if cfg!(target_arch = "x86_64") {
            let limits = Limits::default();
            assert!(Runtime::with_target(&limits, None, &target(x86, Some("x86-64-v2"))).is_ok());
            let err = Runtime::with_target(&limits, None, &target(x86, Some("has_warp_drive"))).err().unwrap();
            assert!(err.to_string().contains("has_warp_drive"), "{err}");
        }
    }

    #[test]
    fn the_memory_cap_counts_every_memory_of_a_store() {
        let mut limiter = MemoryLimiter::new(100, Arc::new(MemoryBudget::new(1000)));
        assert!(limiter.memory_growing(0, 40, None).unwrap(), "first memory's initial size");
        assert!(limiter.memory_growing(0, 40, None).unwrap(), "second memory's initial size");
        assert!(limiter.memory_growing(40, 60, None).unwrap(), "grows within the cap: 100 in all");
        assert_eq!(limiter.refused, None);
        assert!(!limiter.memory_growing(40, 60, Some(50)).unwrap(), "past the memory's own maximum");
        assert_eq!(limiter.refused, None, "that refusal is the module's, not the cap's");
        assert!(!limiter.memory_growing(40, 41, None).unwrap(), "101 in all is refused");
        assert_eq!(limiter.refused, Some(Refusal::Guest));
    }

    #[test]
    fn the_process_budget_counts_every_live_store_and_gets_its_bytes_back() {
        let budget = Arc::new(MemoryBudget::new(150));
        let mut first = MemoryLimiter::new(100, budget.clone());
        let mut second = MemoryLimiter::new(100, budget.clone());
        assert!(first.memory_growing(0, 100, None).unwrap());
        assert!(second.memory_growing(0, 50, None).unwrap(), "150 in all");
        assert!(!second.memory_growing(50, 51, None).unwrap(), "within its own cap, past the budget");
        assert_eq!(second.refused, Some(Refusal::Budget));
        assert_eq!(budget.used(), 150, "a refused growth takes nothing");
        drop(first);
        assert_eq!(budget.used(), 50, "a dropped store hands its memory back");
        let mut third = MemoryLimiter::new(100, budget.clone());
        assert!(third.memory_growing(0, 100, None).unwrap());
        drop((second, third));
        assert_eq!(budget.used(), 0);
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
