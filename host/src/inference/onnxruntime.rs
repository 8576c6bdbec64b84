//! The onnxruntime engine (cargo feature `onnxruntime`, on by default): a model whose
//! `model.toml` says `engine = "onnxruntime"` runs in an onnxruntime session.
//!
//! Nothing of onnxruntime is linked: `ort`'s `load-dynamic` opens the shared library the
//! first time a model asks for it, from `[inference.onnxruntime] library`, else
//! `ORT_DYLIB_PATH`, else the `onnxruntime` wheel in the project's `.venv` (which ships only
//! the versioned `capi/libonnxruntime.so.1.x`). A tract-only deployment never touches it.
//!
//! `ort` 2.0's `Session::run` takes `&mut self`, so a session runs one image at a time. In
//! the adaptive and latency modes a version has one session (one copy of the weights), run by
//! one worker over `threads` intra-op threads: the session's own pool splits each image's
//! operators. In the throughput mode it has `threads` sessions of one intra-op thread each,
//! one per worker, as a Python service gets the most images per second from onnxruntime (the
//! engine benchmark measured one shared session at 0.75–0.93× of that): the price is one copy
//! of the weights per session, in resident memory.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::{TensorRef, ValueType};

use super::{EngineConfig, EngineMode, LoadError, LoadedModel, ModelIo, ModelWorker};

/// The library named by the configuration, until one is loaded.
static CONFIGURED: Mutex<Option<PathBuf>> = Mutex::new(None);
/// The library loaded in this process. Only a success is kept: after a failure (no library
/// yet) the next model load looks again, so installing one and reloading is enough.
static LOADED: Mutex<Option<PathBuf>> = Mutex::new(None);

/// Names the library a later load will use (`[inference.onnxruntime] library`). Process-wide;
/// once a library is loaded, it stays.
pub fn configure(library: Option<PathBuf>) {
    *CONFIGURED.lock().unwrap_or_else(|e| e.into_inner()) = library;
}

/// The library in use, loading it on first success.
pub fn library() -> Result<PathBuf, String> {
    let mut loaded = LOADED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(path) = loaded.as_ref() {
        return Ok(path.clone());
    }
    let path = find_library()?;
    let env = ort::init_from(&path).map_err(|e| format!("cannot load onnxruntime from {}: {e}", path.display()))?;
    env.with_name("tessera").commit();
    tracing::info!(library = %path.display(), "onnxruntime loaded");
    *loaded = Some(path.clone());
    Ok(path)
}

/// The first of: the configured library, `ORT_DYLIB_PATH`, the `.venv` wheel's library (looked
/// for from the working directory and from the executable's directories upwards, so
/// `target/release/tessera` finds the repository's `.venv`).
fn find_library() -> Result<PathBuf, String> {
    if let Some(path) = CONFIGURED.lock().unwrap_or_else(|e| e.into_inner()).clone() {
        return if path.is_file() {
            Ok(path)
        } else {
            Err(format!("[inference.onnxruntime] library = {} does not exist", path.display()))
        };
    }
    if let Some(path) = std::env::var_os("ORT_DYLIB_PATH").map(PathBuf::from) {
        return if path.is_file() {
            Ok(path)
        } else {
            Err(format!("ORT_DYLIB_PATH = {} does not exist", path.display()))
        };
    }
    let mut roots: Vec<PathBuf> = std::env::current_dir().into_iter().collect();
    if let Ok(exe) = std::env::current_exe() {
        roots.extend(exe.ancestors().skip(1).map(Path::to_path_buf));
    }
    roots.iter().find_map(|root| venv_library(&root.join(".venv"))).ok_or_else(|| {
        "no onnxruntime library: set [inference.onnxruntime] library in tessera.toml, or ORT_DYLIB_PATH, \
             or install the onnxruntime wheel in the project's .venv (./run installs it)"
            .to_string()
    })
}

/// `<venv>/lib/python3.*/site-packages/onnxruntime/capi/libonnxruntime.so.*`, if present.
fn venv_library(venv: &Path) -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(venv.join("lib"))
        .ok()?
        .filter_map(Result::ok)
        .map(|python| python.path().join("site-packages/onnxruntime/capi"))
        .filter_map(|capi| std::fs::read_dir(capi).ok())
        .flatten()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("libonnxruntime.so")))
        .collect();
    found.sort();
    found.pop()
}

struct OrtModel {
    /// One per worker (throughput mode) or one for the one worker.
    sessions: Vec<Mutex<Session>>,
    /// Workers made so far: worker `i` runs session `i % sessions.len()`.
    workers: AtomicUsize,
    io: ModelIo,
    /// Whether the model declares its batch axis (the first) dynamic, so one run takes many.
    batches: bool,
}

/// Loads `path` into its sessions (see the module's comment for how many) and runs each once
/// on zeros (to learn the output shape and so the first request does not pay for warming up).
pub fn load(path: &Path, input_shape: &[usize], engine: &EngineConfig) -> Result<Arc<dyn LoadedModel>, LoadError> {
    let err = |message: String| LoadError { path: path.display().to_string(), message };
    library().map_err(err)?;
    let threads = engine.threads.max(1);
    let (count, intra) = match engine.mode {
        EngineMode::Throughput => (threads, 1),
        EngineMode::Adaptive | EngineMode::Latency => (1, threads),
    };
    let ort_err = |e: ort::Error| err(format!("onnxruntime: {e}"));
    let option_err = |e: ort::Error<_>| err(format!("onnxruntime session options: {e}"));
    let open = || -> Result<Session, LoadError> {
        Session::builder()
            .map_err(ort_err)?
            .with_optimization_level(GraphOptimizationLevel::Level3)
            .map_err(option_err)?
            .with_intra_threads(intra)
            .map_err(option_err)?
            .commit_from_file(path)
            .map_err(ort_err)
    };
    let mut session = open()?;
    let (input, output) = match (session.inputs(), session.outputs()) {
        ([input], [output, ..]) => (input, output),
        (inputs, _) => return Err(err(format!("the model has {} inputs; Tessera feeds one image", inputs.len()))),
    };
    let declared = |t: &ValueType| match t {
        ValueType::Tensor { ty, shape, .. } => Ok((format!("{ty:?}"), shape.to_vec())),
        other => Err(err(format!("input/output {other:?} is not a tensor"))),
    };
    let (input_dtype, dims) = declared(input.dtype())?;
    let fits = dims.len() == input_shape.len()
        && dims.iter().zip(input_shape).all(|(&d, &want)| d < 0 || usize::try_from(d) == Ok(want));
    if !fits {
        return Err(err(format!("the model's input {:?} is {dims:?}, model.toml says {input_shape:?}", input.name())));
    }
    let (output_dtype, _) = declared(output.dtype())?;
    let (input_name, output_name) = (input.name().to_string(), output.name().to_string());
    let zeros = vec![0f32; input_shape.iter().product()];
    let warm_up = |session: &mut Session| -> Result<Vec<usize>, LoadError> {
        let outputs = session
            .run(ort::inputs![TensorRef::from_array_view((input_shape.to_vec(), &zeros[..])).map_err(ort_err)?])
            .map_err(ort_err)?;
        let (shape, _) = outputs[0].try_extract_tensor::<f32>().map_err(ort_err)?;
        Ok(shape.iter().map(|&d| d as usize).collect())
    };
    let output_shape = warm_up(&mut session)?;
    let mut sessions = vec![Mutex::new(session)];
    for _ in 1..count {
        let mut more = open()?;
        warm_up(&mut more)?;
        sessions.push(Mutex::new(more));
    }
    let io =
        ModelIo { input_name, input_shape: input_shape.to_vec(), input_dtype, output_name, output_shape, output_dtype };
    let batches = dims.first().is_some_and(|&d| d < 0);
    Ok(Arc::new(OrtModel { sessions, workers: AtomicUsize::new(0), io, batches }))
}

impl LoadedModel for OrtModel {
    fn io(&self) -> &ModelIo {
        &self.io
    }

    fn spreads_when_alone(&self) -> bool {
        false
    }

    fn parallel_jobs(&self) -> usize {
        self.sessions.len()
    }

    fn worker(self: Arc<Self>) -> Result<Box<dyn ModelWorker>, String> {
        let session = self.workers.fetch_add(1, Ordering::Relaxed) % self.sessions.len();
        Ok(Box::new(OrtWorker { model: self, session }))
    }

    fn max_batch(&self) -> usize {
        if self.batches { usize::MAX } else { 1 }
    }
}

struct OrtWorker {
    model: Arc<OrtModel>,
    /// Which of the model's sessions this worker runs.
    session: usize,
}

impl OrtWorker {
    /// This worker's session (its own in the throughput mode: the lock is then never waited on).
    fn session(&self) -> std::sync::MutexGuard<'_, Session> {
        self.model.sessions[self.session].lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl ModelWorker for OrtWorker {
    fn run(&mut self, input: Vec<f32>, _alone: &(dyn Fn() -> bool + Sync)) -> Result<Vec<f32>, String> {
        let e = |e: ort::Error| format!("onnxruntime: {e}");
        let mut session = self.session();
        let tensor = TensorRef::from_array_view((self.model.io.input_shape.clone(), &input[..])).map_err(e)?;
        let outputs = session.run(ort::inputs![tensor]).map_err(e)?;
        let (_, values) = outputs[0].try_extract_tensor::<f32>().map_err(e)?;
        Ok(values.to_vec())
    }

    /// The inputs stacked on the batch axis, one run, the output split back per input.
    fn run_batch(
        &mut self,
        inputs: Vec<Vec<f32>>,
        _alone: &(dyn Fn() -> bool + Sync),
    ) -> Result<Vec<Vec<f32>>, String> {
        let e = |e: ort::Error| format!("onnxruntime: {e}");
        let count = inputs.len();
        let mut shape = self.model.io.input_shape.clone();
        shape[0] *= count;
        let stacked = inputs.concat();
        let mut session = self.session();
        let tensor = TensorRef::from_array_view((shape, &stacked[..])).map_err(e)?;
        let outputs = session.run(ort::inputs![tensor]).map_err(e)?;
        let (_, values) = outputs[0].try_extract_tensor::<f32>().map_err(e)?;
        if values.len() % count != 0 {
            return Err(format!("onnxruntime: {} output values do not split into {count} inputs", values.len()));
        }
        Ok(values.chunks_exact(values.len() / count).map(<[f32]>::to_vec).collect())
    }
}
