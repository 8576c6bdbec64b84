//! WASI preview 2 for guests, denied by default (wasmtime-wasi 48).
//!
//! Every guest is linked with what a language runtime touches at start-up, granting nothing:
//! an empty environment and argument list (Go and wasi-libc read them), empty stdin, stdout and
//! stderr that go nowhere, a filesystem with no preopened directory (every path fails), exit.
//! Config grants more per guest ([`Grant`]): the clocks, randomness, and stdout/stderr into the
//! host's log (capped per call and per second; see `stdio.rs`). Everything else a component imports from `wasi:*`
//! (sockets, HTTP, ...) is linked as a function that fails naming itself when called
//! ([`stub_ungranted`]), so a component built with a language's default imports loads, and a
//! call it was not granted fails with the function's name.

use std::sync::Arc;

pub use crate::config::WasiGrant as Grant;
use wasmtime::component::{HasData, Linker, ResourceTable};
use wasmtime_wasi::cli::{WasiCli, WasiCliView};
use wasmtime_wasi::clocks::{WasiClocks, WasiClocksView};
use wasmtime_wasi::filesystem::{WasiFilesystem, WasiFilesystemView};
use wasmtime_wasi::p2::bindings::{cli, clocks, filesystem, random, sync};
use wasmtime_wasi::random::WasiRandom;
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiView};

use super::GuestState;
use super::factor::{Factor, Grants, Instance, World};
use super::stdio::{GuestLog, GuestOutput};

/// What a guest gets when config names no grants: the minimum a language runtime needs.
pub fn default_grants() -> Grants {
    crate::config::DEFAULT_WASI_GRANTS.into_iter().collect()
}

/// WASI as a factor (`factor.rs`): every world gets the same interfaces, as its guest's grants
/// say; nothing to configure beyond the grants, which are per guest.
pub(super) struct WasiFactor;

impl Factor for WasiFactor {
    type InstanceState = WasiState;

    fn link(&self, linker: &mut Linker<GuestState>, _world: World, grants: &Grants) -> wasmtime::Result<()> {
        add_to_linker(linker, grants)
    }

    fn instance_state(&self, instance: &Instance<'_>) -> WasiState {
        WasiState::new(instance.grants, instance.log)
    }
}

/// The WASI state of one guest instance (one call).
pub(super) struct WasiState {
    pub(super) ctx: WasiCtx,
    pub(super) table: ResourceTable,
    /// The granted output streams, to flush when the call ends.
    outputs: Vec<GuestOutput>,
}

impl WasiState {
    /// A context that grants what `grants` says; granted output goes to the log through `log`,
    /// the guest's.
    pub(super) fn new(grants: &Grants, log: &Arc<GuestLog>) -> WasiState {
        // The builder starts from nothing: no environment, arguments or preopened directories,
        // empty stdin, stdout and stderr discarded, no network.
        let mut builder = WasiCtxBuilder::new();
        let mut outputs = Vec::new();
        if grants.contains(&Grant::Stdout) {
            outputs.push(GuestOutput::new(log.clone(), "stdout"));
            builder.stdout(outputs[outputs.len() - 1].clone());
        }
        if grants.contains(&Grant::Stderr) {
            outputs.push(GuestOutput::new(log.clone(), "stderr"));
            builder.stderr(outputs[outputs.len() - 1].clone());
        }
        WasiState { ctx: builder.build(), table: ResourceTable::new(), outputs }
    }

    /// Logs what the guest's output left (an unfinished line) and counts what was dropped.
    /// Called when the call ends, on its thread and in its span (the store itself is dropped
    /// later, on the reaper thread).
    pub(super) fn finish_output(&self) {
        for output in &self.outputs {
            output.finish();
        }
    }
}

/// The WASI interfaces every guest is linked with (names without their version: a component
/// built against any 0.2.x finds them, wasmtime's linker matching semver-compatible versions).
const ALWAYS_LINKED: [&str; 15] = [
    "wasi:io/error",
    "wasi:io/poll",
    "wasi:io/streams",
    "wasi:cli/exit",
    "wasi:cli/environment",
    "wasi:cli/stdin",
    "wasi:cli/stdout",
    "wasi:cli/stderr",
    "wasi:cli/terminal-input",
    "wasi:cli/terminal-output",
    "wasi:cli/terminal-stdin",
    "wasi:cli/terminal-stdout",
    "wasi:cli/terminal-stderr",
    "wasi:filesystem/preopens",
    "wasi:filesystem/types",
];

/// The interfaces each grant links (as `add_to_linker` does).
fn granted_interfaces(grant: Grant) -> &'static [&'static str] {
    match grant {
        Grant::Clocks => &["wasi:clocks/wall-clock", "wasi:clocks/monotonic-clock"],
        Grant::Random => &["wasi:random/random", "wasi:random/insecure", "wasi:random/insecure-seed"],
        Grant::Stdout | Grant::Stderr => &[],
        Grant::Nn => &super::nn::INTERFACES,
    }
}

/// Whether a guest granted `grants` is linked with the interface `import` (`wasi:cli/stdout@0.2.6`).
pub(super) fn is_linked(import: &str, grants: &Grants) -> bool {
    let interface = import.split('@').next().unwrap_or(import);
    ALWAYS_LINKED.contains(&interface) || grants.iter().any(|g| granted_interfaces(*g).contains(&interface))
}

/// A guest called a WASI function its config does not grant.
#[derive(Debug)]
pub(super) struct NotGranted(String);

impl std::fmt::Display for NotGranted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} is not available to this guest (not granted by its `wasi` config)", self.0)
    }
}

impl std::error::Error for NotGranted {}

/// Links every function of the `wasi:*` instances `component` imports that `grants` do not
/// give as a function that fails the call naming itself and the missing grant (resources as
/// empty host types). wasmtime's `define_unknown_imports_as_traps` would do this too, but it
/// compares versions exactly, so a component built against `wasi:cli@0.2.6` would get stubs
/// for interfaces this linker provides at 0.2.12.
///
/// A call to one fails with [`NotGranted`], which the runtime reports alone: the wasm
/// backtrace around it says nothing the guest's author can act on.
pub(super) fn stub_ungranted<T: 'static>(
    linker: &mut Linker<T>,
    engine: &wasmtime::Engine,
    component: &wasmtime::component::Component,
    grants: &Grants,
) -> wasmtime::Result<()> {
    use wasmtime::component::types::ComponentItem;
    for (name, import) in component.component_type().imports(engine) {
        if !name.starts_with("wasi:") || is_linked(name, grants) {
            continue;
        }
        let ComponentItem::ComponentInstance(instance) = import.ty else { continue };
        let mut stubs = linker.instance(name)?;
        for (item, export) in instance.exports(engine) {
            match export.ty {
                ComponentItem::ComponentFunc(_) => {
                    let function = format!("{name}#{item}");
                    stubs.func_new(item, move |_, _, _, _| Err(wasmtime::Error::new(NotGranted(function.clone()))))?;
                }
                ComponentItem::Resource(_) => {
                    stubs.resource(item, stub_resource(item), |_, _| Ok(()))?;
                }
                _ => {}
            }
        }
    }
    Ok(())
}

/// The host type of a resource a stubbed interface exports. The `wasi:io` resources it may `use`
/// (a clock's `pollable`, a socket's streams) must be the ones the linked `wasi:io` defines, or
/// the component's types do not match; no WASI 0.2 interface defines its own resource under
/// these names. Any other resource belongs to stubbed interfaces only: one empty type.
fn stub_resource(name: &str) -> wasmtime::component::ResourceType {
    use wasmtime::component::ResourceType;
    match name {
        "pollable" => ResourceType::host::<wasmtime_wasi_io::poll::DynPollable>(),
        "input-stream" => ResourceType::host::<wasmtime_wasi_io::streams::DynInputStream>(),
        "output-stream" => ResourceType::host::<wasmtime_wasi_io::streams::DynOutputStream>(),
        "error" => ResourceType::host::<wasmtime_wasi_io::streams::Error>(),
        _ => ResourceType::host::<()>(),
    }
}

struct Table;

impl HasData for Table {
    type Data<'a> = &'a mut ResourceTable;
}

/// Adds the WASI interfaces every guest gets, and those `grants` add, to `linker`.
fn add_to_linker<T: WasiView + 'static>(linker: &mut Linker<T>, grants: &Grants) -> wasmtime::Result<()> {
    fn table<T: WasiView>(t: &mut T) -> &mut ResourceTable {
        t.ctx().table
    }
    let l = linker;
    // Streams and polling: stdio and files are streams.
    wasmtime_wasi_io::bindings::wasi::io::error::add_to_linker::<T, Table>(l, table)?;
    sync::io::poll::add_to_linker::<T, Table>(l, table)?;
    sync::io::streams::add_to_linker::<T, Table>(l, table)?;
    // The command-line world a runtime starts in, empty.
    cli::exit::add_to_linker::<T, WasiCli>(l, T::cli)?;
    cli::environment::add_to_linker::<T, WasiCli>(l, T::cli)?;
    cli::stdin::add_to_linker::<T, WasiCli>(l, T::cli)?;
    cli::stdout::add_to_linker::<T, WasiCli>(l, T::cli)?;
    cli::stderr::add_to_linker::<T, WasiCli>(l, T::cli)?;
    cli::terminal_input::add_to_linker::<T, WasiCli>(l, T::cli)?;
    cli::terminal_output::add_to_linker::<T, WasiCli>(l, T::cli)?;
    cli::terminal_stdin::add_to_linker::<T, WasiCli>(l, T::cli)?;
    cli::terminal_stdout::add_to_linker::<T, WasiCli>(l, T::cli)?;
    cli::terminal_stderr::add_to_linker::<T, WasiCli>(l, T::cli)?;
    // A filesystem with no preopened directory: opening any path fails with an error the
    // guest's language reports (Python's open() raises), rather than a trap.
    filesystem::preopens::add_to_linker::<T, WasiFilesystem>(l, T::filesystem)?;
    sync::filesystem::types::add_to_linker::<T, WasiFilesystem>(l, T::filesystem)?;
    if grants.contains(&Grant::Clocks) {
        clocks::wall_clock::add_to_linker::<T, WasiClocks>(l, T::clocks)?;
        clocks::monotonic_clock::add_to_linker::<T, WasiClocks>(l, T::clocks)?;
    }
    if grants.contains(&Grant::Random) {
        random::random::add_to_linker::<T, WasiRandom>(l, |t| t.ctx().ctx.random())?;
        random::insecure::add_to_linker::<T, WasiRandom>(l, |t| t.ctx().ctx.random())?;
        random::insecure_seed::add_to_linker::<T, WasiRandom>(l, |t| t.ctx().ctx.random())?;
    }
    Ok(())
}
