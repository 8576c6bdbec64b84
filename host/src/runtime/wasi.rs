//! WASI preview 2 for guests, denied by default (wasmtime-wasi 48).
//!
//! Every guest is linked with what a language runtime touches at start-up, granting nothing:
//! an empty environment and argument list (Go and wasi-libc read them), empty stdin, stdout and
//! stderr that go nowhere, a filesystem with no preopened directory (every path fails), exit.
//! Config grants more per guest ([`Grant`]): the clocks, randomness, and stdout/stderr into the
//! host's log (truncated; see [`GuestOutput`]). Everything else a component imports from `wasi:*`
//! (sockets, HTTP, ...) is linked as a function that fails naming itself when called
//! ([`stub_ungranted`]), so a component built with a language's default imports loads, and a
//! call it was not granted fails with the function's name.

use std::sync::{Arc, Mutex};

pub use crate::config::WasiGrant as Grant;
use bytes::Bytes;
use wasmtime::component::{HasData, Linker, ResourceTable};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream, WasiCli, WasiCliView};
use wasmtime_wasi::clocks::{WasiClocks, WasiClocksView};
use wasmtime_wasi::filesystem::{WasiFilesystem, WasiFilesystemView};
use wasmtime_wasi::p2::bindings::{cli, clocks, filesystem, random, sync};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError};
use wasmtime_wasi::random::WasiRandom;
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiView};

use super::GuestState;
use super::factor::{Call, Factor, Grants, World};

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

    fn instance_state(&self, call: &Call<'_>) -> WasiState {
        WasiState::new(call.grants, call.guest)
    }
}

/// The WASI state of one guest call.
pub(super) struct WasiState {
    pub(super) ctx: WasiCtx,
    pub(super) table: ResourceTable,
    /// The granted output streams, to flush when the call ends.
    outputs: Vec<GuestOutput>,
}

impl WasiState {
    /// A context that grants what `grants` says, for guest `guest`.
    pub(super) fn new(grants: &Grants, guest: &str) -> WasiState {
        // The builder starts from nothing: no environment, arguments or preopened directories,
        // empty stdin, stdout and stderr discarded, no network.
        let mut builder = WasiCtxBuilder::new();
        let mut outputs = Vec::new();
        if grants.contains(&Grant::Stdout) {
            outputs.push(GuestOutput::new(guest, "stdout"));
            builder.stdout(outputs[outputs.len() - 1].clone());
        }
        if grants.contains(&Grant::Stderr) {
            outputs.push(GuestOutput::new(guest, "stderr"));
            builder.stderr(outputs[outputs.len() - 1].clone());
        }
        WasiState { ctx: builder.build(), table: ResourceTable::new(), outputs }
    }

    /// Logs what the guest's output left: an unfinished line, and how much went over the
    /// budget. Called when the call ends, on its thread and in its span (the store itself is
    /// dropped later, on the reaper thread).
    pub(super) fn finish_output(&self) {
        for output in &self.outputs {
            output.0.lock().unwrap_or_else(|e| e.into_inner()).finish();
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

/// Most of a guest's output one call may put in the log; the rest is counted and dropped, so a
/// guest writing gigabytes costs the host a counter, not memory or log volume.
const OUTPUT_BUDGET_BYTES: usize = 16 << 10;
/// Longest line logged; longer ones are cut.
const MAX_LINE_BYTES: usize = 1 << 10;

/// A guest's stdout or stderr: complete lines go to the host's log (in the guest call's span,
/// so with the guest's name and the request id) until [`OUTPUT_BUDGET_BYTES`]; beyond it bytes
/// are only counted, and the count is logged when the call ends. Writes never block or fail:
/// wasmtime's `MemoryOutputPipe` traps the guest when full, which would turn a chatty guest into
/// a failed request.
#[derive(Clone)]
pub(super) struct GuestOutput(Arc<Mutex<OutputLog>>);

struct OutputLog {
    guest: String,
    stream: &'static str,
    line: Vec<u8>,
    logged: usize,
    dropped: usize,
}

impl GuestOutput {
    fn new(guest: &str, stream: &'static str) -> Self {
        GuestOutput(Arc::new(Mutex::new(OutputLog {
            guest: guest.to_string(),
            stream,
            line: Vec::new(),
            logged: 0,
            dropped: 0,
        })))
    }

    fn write(&self, bytes: &[u8]) {
        let mut log = self.0.lock().unwrap_or_else(|e| e.into_inner());
        log.take(bytes);
    }
}

impl OutputLog {
    fn take(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.logged >= OUTPUT_BUDGET_BYTES {
                self.dropped += bytes.len();
                return;
            }
            let end = bytes.iter().position(|&b| b == b'\n');
            let (part, rest) = match end {
                Some(i) => (&bytes[..i], &bytes[i + 1..]),
                None => (bytes, &[][..]),
            };
            let room = MAX_LINE_BYTES.saturating_sub(self.line.len());
            self.line.extend_from_slice(&part[..part.len().min(room)]);
            self.dropped += part.len().saturating_sub(room);
            if end.is_some() {
                self.emit();
            }
            bytes = rest;
        }
    }

    fn emit(&mut self) {
        let text = String::from_utf8_lossy(&self.line);
        tracing::info!(target: "tessera::guest_output", guest = %self.guest, stream = self.stream, "{text}");
        self.logged += self.line.len() + 1;
        self.line.clear();
    }
}

impl Drop for OutputLog {
    fn drop(&mut self) {
        self.finish();
    }
}

impl OutputLog {
    /// Emits the unfinished line and the count of dropped bytes, once.
    fn finish(&mut self) {
        if !self.line.is_empty() && self.logged < OUTPUT_BUDGET_BYTES {
            self.emit();
        }
        self.line.clear();
        let dropped = std::mem::take(&mut self.dropped);
        if dropped > 0 {
            tracing::warn!(
                guest = %self.guest,
                stream = self.stream,
                dropped_bytes = dropped,
                budget_bytes = OUTPUT_BUDGET_BYTES,
                "guest output over its budget was dropped"
            );
        }
    }
}

impl IsTerminal for GuestOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestOutput {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[async_trait::async_trait]
impl OutputStream for GuestOutput {
    fn write(&mut self, bytes: Bytes) -> Result<(), StreamError> {
        GuestOutput::write(self, &bytes);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StreamError> {
        Ok(())
    }

    fn check_write(&mut self) -> Result<usize, StreamError> {
        Ok(64 << 10)
    }
}

#[async_trait::async_trait]
impl Pollable for GuestOutput {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncWrite for GuestOutput {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        GuestOutput::write(&self, buf);
        std::task::Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_is_cut_into_lines_and_capped() {
        let out = GuestOutput::new("g", "stdout");
        out.write(b"one\ntw");
        out.write(b"o\n");
        {
            let log = out.0.lock().unwrap();
            assert_eq!((log.logged, log.dropped, log.line.len()), (8, 0, 0));
        }
        out.write(&vec![b'x'; 3 * MAX_LINE_BYTES]);
        out.write(b"\n");
        {
            let log = out.0.lock().unwrap();
            assert_eq!(log.dropped, 2 * MAX_LINE_BYTES, "a long line is cut");
        }
        let flood = vec![b'y'; 10 * OUTPUT_BUDGET_BYTES];
        out.write(&flood);
        let log = out.0.lock().unwrap();
        assert!(log.logged <= OUTPUT_BUDGET_BYTES + MAX_LINE_BYTES + 1, "{}", log.logged);
        assert!(log.dropped >= 9 * OUTPUT_BUDGET_BYTES, "{}", log.dropped);
    }
}
