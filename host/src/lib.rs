//! Tessera: image classification with native tract inference and WebAssembly component stages.
//!
//! The library is the product; the `tessera` binary and its HTTP server are thin layers over
//! it. Embed it in an edge node without any HTTP:
//!
//! ```no_run
//! let host = tessera::Host::builder().models("models").build()?;
//! let request = tessera::ClassifyRequest::new(std::fs::read("cat.png")?, host.context());
//! let result = host.classify(&request)?;
//! println!("{} {:.3}", result.label, result.confidence);
//! # Ok::<(), anyhow::Error>(())
//! ```
//!
//! This crate has no network code: the servers (HTTP, gRPC, OIP, `/metrics`) are the
//! `tessera-server` crate over this one's public API, and the `tessera` command is the
//! `tessera-cli` crate. Cargo features (all on by default): `compiler` (wasmtime's Cranelift:
//! guests as `.wasm`; without it only `.cwasm` from `tessera compile` load, and nothing is
//! compiled on the node), `onnxruntime`, `tract-patches`. An edge agent that embeds the library
//! takes `default-features = false, features = ["tract-patches"]` (docs/EDGE.md).

pub mod config;
mod cpu;
pub mod error;
mod host;
mod inference;
pub mod metrics;
mod pipeline;
mod repository;
mod request;
mod rules_table;
mod runtime;
mod stage_io;
mod watch;

pub use config::{Config, ConfigError, Limits, PipelineConfig, RuleConfig, TaskConfig, TelemetryConfig, WasiGrant};
pub use cpu::compute_thread;
pub use error::{ErrorKind, RequestError, Stage};
pub use inference::probe;
/// The error a request fails with, under its old name (it was never only the pipeline's).
#[deprecated(since = "0.1.0", note = "renamed `RequestError`")]
pub type PipelineError = RequestError;
pub use host::{
    BuildError, Host, HostBuilder, ModelStatus, PipelineStatus, Preprocessor, ReloadReport, TaskStatus,
    UnloadableModel, VersionStatus, compile, inspect,
};
pub use inference::{EngineKind, EngineMode, ModelIo};
pub use metrics::Metrics;
pub use pipeline::{Classification, GuestRun, ModelRef, TaskResult, TaskTimings, TensorOutput, Timings};
pub use repository::{OutputKind, RepositoryError};
pub use request::{ClassifyRequest, DEFAULT_TOP_K, Progress, RequestContext, TensorRequest};
pub use rules_table::{CaseReport, ExpectedDecision, RulesCase, RulesTable, TableReport, read_table, test_rules};
pub use runtime::{CompileTarget, Import, Inspection, RuntimeError};
pub use stage_io::{Decision, Detection, Prediction, TaskAnswer, TaskInput};
pub use watch::{WatchError, WatchGuard};

/// Not part of the API: the pieces the benches, the profiling example, the integration tests
/// and the server's fuzz targets use on their own (engines without the pipeline, a guest
/// without a model repository, the model files' parsers, CPU state). Nothing here is covered
/// by semver.
#[doc(hidden)]
pub mod internals {
    pub use crate::cpu::{clean_upper_state, upper_state_dirty};
    pub use crate::inference::{EngineConfig, InferencePool, request_amx_int8};
    pub use crate::repository::{Manifest, ModelRepository, RepositoryManifest, is_inside};
    pub use crate::runtime::{Runtime, default_grants};
    pub use crate::stage_io::SpecView;

    /// tract's plans on their own: load, run once, profile per op or node, list matmul kernels.
    pub mod tract {
        pub use crate::inference::tract::{
            NodeTime, load_plan, matmul_kernels, profile_nodes, profile_ops, run_on_executor, run_plan_once,
        };
    }
}
