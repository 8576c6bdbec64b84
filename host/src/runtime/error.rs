//! How setting up the runtime or a guest fails (`RuntimeError`), and how a guest call fails
//! (`GuestFailure`: trap, memory, deadline, an error the guest reported), made into the crate's
//! `RequestError` at the stage that ran it.

use std::path::PathBuf;

use wasmtime::{Store, Trap};

use super::GuestState;
use super::bindings::types;
use super::inference_import::TooManyInferCalls;
use super::limits::Refusal;
use super::wasi::{self};
use crate::error::{ErrorKind, RequestError, Stage};

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
    pub fn into_pipeline(self, stage: Stage, name: &str) -> RequestError {
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
        RequestError::new(kind, stage, message)
    }
}

pub(super) fn failure(err: wasmtime::Error, store: &Store<GuestState>) -> GuestFailure {
    match store.data().memory.limiter.refused {
        Some(Refusal::Guest) => return GuestFailure::MemoryExceeded,
        Some(Refusal::Budget) => return GuestFailure::MemoryBudgetExhausted(store.data().memory.limiter.budget.total),
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
                store.data().output.bytes
            ),
        );
    }
    GuestFailure::Trap(format!("{err:#}"))
}

pub(super) fn reported(e: types::Error) -> GuestFailure {
    match e {
        types::Error::InvalidInput(m) => GuestFailure::Reported(ErrorKind::InvalidImage, m),
        types::Error::Unsupported(m) => GuestFailure::Reported(ErrorKind::UnsupportedMediaType, m),
        types::Error::TooLarge(m) => GuestFailure::Reported(ErrorKind::ImageTooLarge, m),
        types::Error::Internal(m) => GuestFailure::Reported(ErrorKind::GuestFailed, m),
    }
}
