//! Native inference behind one engine interface: a model loaded by an engine ([`LoadedModel`],
//! shared by every worker: one copy of the weights per loaded version), run by a pool of worker
//! threads, each with its own [`ModelWorker`] state. The queue, workers, deadlines, reservations
//! and scheduling modes are generic (`pool.rs`, [`InferencePool`]; this file holds the interface
//! the engines implement and the settings they share); `tract/` (the default, pure Rust) and
//! `onnxruntime.rs` (optional, a dynamically loaded library) are the engines. `model.toml` picks
//! one per model (`engine = "tract" | "onnxruntime"`).
//!
//! A bounded queue sits in front: a full queue is an immediate `Overloaded`, and a job whose
//! deadline passed while it waited is dropped unrun. Three scheduling modes ([`EngineMode`]):
//! *adaptive* (the default) runs `threads` workers and lets a job alone in the pool (reserved
//! requests count from before their preprocessing) use every thread, while concurrent jobs run
//! one thread each; *throughput* runs `threads` single-threaded workers, one image each;
//! *latency* runs one worker whose image always gets every thread. Each engine says how it
//! honours them.
//!
//! Reservations are sized to what the workers can finish: a job whose deadline would pass before
//! the work already accepted ahead of it is done (estimated from the measured time per job) is
//! refused at once as `Overloaded` instead of being queued to time out.

use std::sync::Arc;
use std::time::Duration;

#[cfg(feature = "onnxruntime")]
pub mod onnxruntime;
mod pool;
pub mod probe;
pub mod tract;
#[cfg(not(feature = "onnxruntime"))]
mod onnxruntime {
    //! Built without the `onnxruntime` feature: a model asking for it fails to load, saying so.
    use std::path::Path;
    use std::sync::Arc;

    use super::{EngineConfig, LoadError, LoadedModel};

    pub fn configure(_: Option<std::path::PathBuf>) {}

    pub fn load(path: &Path, _: &[usize], _: &EngineConfig) -> Result<Arc<dyn LoadedModel>, LoadError> {
        Err(LoadError {
            path: path.display().to_string(),
            message: "model.toml asks for engine = \"onnxruntime\" but this build has no onnxruntime support \
                      (cargo feature `onnxruntime`)"
                .into(),
        })
    }
}

pub use pool::InferencePool;
pub use tract::request_amx_int8;

/// Names the onnxruntime library later loads will use (`[inference.onnxruntime] library`);
/// process-wide, and a no-op in a build without the `onnxruntime` feature.
pub fn configure_onnxruntime(library: Option<std::path::PathBuf>) {
    onnxruntime::configure(library);
}

/// Which engine runs a model: `engine` in its `model.toml`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EngineKind {
    /// tract, pure Rust, in the binary (the default).
    #[default]
    Tract,
    /// onnxruntime, loaded at run time from a shared library (`[inference.onnxruntime]`).
    Onnxruntime,
}

impl std::fmt::Display for EngineKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            EngineKind::Tract => "tract",
            EngineKind::Onnxruntime => "onnxruntime",
        })
    }
}

/// A model's input and output as its engine sees them (one of each: image in, scores out).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ModelIo {
    pub input_name: String,
    pub input_shape: Vec<usize>,
    /// The element type, as the engine names it (`F32` for tract, `Float32` for onnxruntime).
    pub input_dtype: String,
    pub output_name: String,
    pub output_shape: Vec<usize>,
    pub output_dtype: String,
}

/// A model loaded by an engine, shared by the workers of its pool.
pub trait LoadedModel: Send + Sync + 'static {
    fn io(&self) -> &ModelIo;

    /// Whether a job alone in the pool uses every thread (adaptive): its time then stands for
    /// `threads` jobs' worth of one worker's time in the reservation estimate.
    fn spreads_when_alone(&self) -> bool;

    /// How many jobs may run at once: the pool starts that many workers.
    fn parallel_jobs(&self) -> usize;

    /// One worker's own state (scratch buffers, ...), made on the worker's thread.
    fn worker(self: Arc<Self>) -> Result<Box<dyn ModelWorker>, String>;

    /// The most inputs one [`ModelWorker::run_batch`] takes at once; 1: the engine runs one
    /// input at a time (dynamic batching then stays off for its models).
    fn max_batch(&self) -> usize {
        1
    }
}

/// A worker's handle on a [`LoadedModel`].
pub trait ModelWorker {
    /// Runs one input (the model's input shape, laid out flat). `alone()` says, whenever the
    /// engine asks, whether this job is the only one accepted (adaptive scheduling). Errors
    /// name the engine.
    fn run(&mut self, input: Vec<f32>, alone: &(dyn Fn() -> bool + Sync)) -> Result<Vec<f32>, String>;

    /// Runs several inputs as one batch (at most [`LoadedModel::max_batch`]), one output each.
    fn run_batch(&mut self, inputs: Vec<Vec<f32>>, alone: &(dyn Fn() -> bool + Sync)) -> Result<Vec<Vec<f32>>, String> {
        inputs.into_iter().map(|input| self.run(input, alone)).collect()
    }
}

/// Dynamic batching of one model (`model.toml`'s `max_batch_size` and
/// `max_queue_delay_microseconds`, Triton's names): a worker that takes a job also takes the
/// jobs queued behind it, up to `max_batch_size`, waiting at most `max_queue_delay` for them,
/// and runs them as one batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Batching {
    /// 0 or 1: off.
    pub max_batch_size: usize,
    pub max_queue_delay: Duration,
}

/// What a pool's batching did so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct BatchStats {
    /// The batch size in force: the configured one, capped by what the engine can run.
    pub max_batch_size: usize,
    pub max_queue_delay_microseconds: u64,
    /// Runs, and the inputs they carried: `images / batches` is the mean batch size.
    pub batches: u64,
    pub images: u64,
}

/// How a model version's inference is scheduled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EngineMode {
    /// `threads` workers; a lone image gets every thread for its matrix products, concurrent
    /// images one thread each. Neither a single client's latency nor throughput under load is
    /// given up.
    #[default]
    Adaptive,
    /// `threads` workers, one image each: the most images per second under load (onnxruntime:
    /// a session per worker, so one copy of the weights each).
    Throughput,
    /// One worker, each image's matrix products split over `threads` threads: the lowest
    /// latency per image.
    Latency,
}

/// How an inference pool is sized and scheduled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineConfig {
    pub mode: EngineMode,
    /// Worker threads (throughput) or matrix-multiply threads (latency).
    pub threads: usize,
    /// Jobs waiting for a worker; more get `Overloaded`.
    pub queue_len: usize,
}

/// Why a model could not be loaded.
#[derive(Debug, thiserror::Error)]
#[error("cannot load ONNX model {path}: {message}")]
pub struct LoadError {
    pub path: String,
    pub message: String,
}

impl std::str::FromStr for EngineMode {
    type Err = String;

    /// The names `tessera.toml` uses (serde's), so the command line cannot drift from them.
    fn from_str(s: &str) -> Result<Self, String> {
        use serde::de::{Deserialize, IntoDeserializer, value::Error};
        EngineMode::deserialize(s.into_deserializer())
            .map_err(|e: Error| format!("{s:?} is not an inference mode: {e}"))
    }
}
