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
//! Cargo features (all on by default): `compiler` (wasmtime's Cranelift: guests as `.wasm`;
//! without it only `.cwasm` from `tessera compile` load, and nothing is compiled on the node),
//! `http` (the [`server`] module and the `tessera` binary), `grpc` (the gRPC listener),
//! `otlp` (the trace exporter), `onnxruntime`, `tract-patches`. An edge agent that embeds the
//! library takes `default-features = false, features = ["tract-patches"]`: no compiler, no
//! hyper, no tonic (docs/EDGE.md).

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
#[cfg(feature = "http")]
pub mod server;
mod stage_io;
mod watch;

pub use config::{Config, ConfigError, Limits, PipelineConfig, RuleConfig, TelemetryConfig, WasiGrant};
pub use error::{ErrorKind, RequestError, Stage};
/// The error a request fails with, under its old name (it was never only the pipeline's).
#[deprecated(since = "0.1.0", note = "renamed `RequestError`")]
pub type PipelineError = RequestError;
pub use host::{
    BuildError, Host, HostBuilder, ModelStatus, PipelineStatus, Preprocessor, ReloadReport, UnloadableModel,
    VersionStatus, compile, inspect,
};
pub use inference::{EngineKind, EngineMode, ModelIo};
pub use metrics::Metrics;
pub use pipeline::{Classification, GuestRun, ModelRef, TensorOutput, Timings};
pub use repository::RepositoryError;
pub use request::{ClassifyRequest, DEFAULT_TOP_K, Progress, RequestContext, TensorRequest};
pub use rules_table::{CaseReport, ExpectedDecision, RulesCase, RulesTable, TableReport, read_table, test_rules};
pub use runtime::{CompileTarget, Import, Inspection, RuntimeError};
pub use stage_io::{Decision, Prediction};
pub use watch::{WatchError, WatchGuard};

/// Not part of the API: the pieces the benches, the profiling example and the integration tests
/// measure on their own (engines without the pipeline, a guest without a model repository, CPU
/// state). Nothing here is covered by semver.
#[doc(hidden)]
pub mod internals {
    pub use crate::cpu::{clean_upper_state, upper_state_dirty};
    pub use crate::inference::probe::{LoadProbe, ProbeArgs, ProbeReport, child_main as probe_child_main};
    pub use crate::inference::{EngineConfig, InferencePool, request_amx_int8};
    pub use crate::repository::{Manifest, ModelRepository};
    pub use crate::runtime::{Runtime, default_grants};
    /// The fuzz targets' entry points (`fuzz/`), also replayed over the committed corpus by the tests.
    #[cfg(feature = "http")]
    pub use crate::server::fuzz;
    pub use crate::stage_io::SpecView;

    /// tract's plans on their own: load, run once, profile per op or node, list matmul kernels.
    pub mod tract {
        pub use crate::inference::tract::{
            NodeTime, load_plan, matmul_kernels, profile_nodes, profile_ops, run_on_executor, run_plan_once,
        };
    }
}
