//! Native inference: a tract ONNX model, optimized once, run by a pool of worker threads.
//!
//! The optimized plan is shared (`Arc`) by every worker, so the weights exist once per loaded
//! version; each worker keeps its own `SimpleState` (scratch buffers) and reuses it for every
//! job. A bounded queue sits in front: a full queue is an immediate `Overloaded`, and a job
//! whose deadline passed while it waited is dropped unrun.
//!
//! Three scheduling modes ([`EngineMode`]): *adaptive* (the default) runs `threads` workers
//! and decides per node of the plan: while a job is the only one accepted (admitted requests
//! count from before their preprocessing) its matrix products are split over all threads, as
//! soon as another is accepted each runs on its own thread; *throughput* runs `threads` single-threaded workers, one image each; *latency* runs
//! one worker whose matrix multiplications are always split across `threads` threads (tract's
//! `multithread-mm` executor), so each image finishes sooner but a second image waits.
//!
//! Admission is sized to what the workers can finish: a job whose deadline would pass before
//! the work already accepted ahead of it is done (estimated from the measured time per job) is
//! refused at once as `Overloaded` instead of being queued to time out.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use tract_linalg::multithread::{Executor, multithread_tract_scope};
use tract_onnx::prelude::*;

use crate::error::{ErrorKind, PipelineError, Stage};

mod amx;
mod fold;
mod im2col;
mod quantize;

pub use amx::request_amx_int8;

type Plan = Arc<TypedRunnableModel>;

/// How a model version's inference is scheduled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EngineMode {
    /// `threads` workers; a lone image gets every thread for its matrix products, concurrent
    /// images one thread each. Neither a single client's latency nor throughput under load is
    /// given up.
    #[default]
    Adaptive,
    /// `threads` workers, one image each: the most images per second under load.
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

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "adaptive" => Ok(EngineMode::Adaptive),
            "throughput" => Ok(EngineMode::Throughput),
            "latency" => Ok(EngineMode::Latency),
            other => Err(format!("{other:?} is not an inference mode; use adaptive, throughput or latency")),
        }
    }
}

/// A loaded, optimized model and the workers that run it.
pub struct InferencePool {
    jobs: Option<Sender<Job>>,
    workers: Vec<JoinHandle<()>>,
    input_shape: Vec<usize>,
    output_len: usize,
    load: Arc<Load>,
    /// Jobs that can run at the same time (worker threads).
    parallel_jobs: usize,
}

/// What the pool has accepted and how fast it gets through it; shared with the workers.
#[derive(Default)]
struct Load {
    /// Jobs accepted and not yet answered (queued and running).
    in_flight: AtomicUsize,
    /// Moving average of one job's run time, microseconds; 0 until a job has run.
    job_us: AtomicU64,
}

impl Load {
    /// Weight of the newest job in the moving average (1/8: a few jobs to follow a change in
    /// load, not fooled by one slow run).
    const NEW_JOB_WEIGHT: f64 = 0.125;

    /// Two workers finishing at once may lose one sample between the load and the store: an
    /// estimate, so no lock on the workers' path.
    fn record(&self, took: Duration) {
        let us = took.as_micros() as f64;
        let old = self.job_us.load(Ordering::Relaxed) as f64;
        let new = if old == 0.0 { us } else { old + Self::NEW_JOB_WEIGHT * (us - old) };
        self.job_us.store(new as u64, Ordering::Relaxed);
    }

    /// When a job accepted now would be done, with `ahead` jobs in front of it and `parallel`
    /// running at once; `None` before the first job has been timed.
    fn estimated_finish(&self, now: Instant, ahead: usize, parallel: usize) -> Option<Instant> {
        let job_us = self.job_us.load(Ordering::Relaxed);
        if job_us == 0 {
            return None;
        }
        let rounds = (ahead / parallel.max(1) + 1) as u64;
        Some(now + Duration::from_micros(job_us.saturating_mul(rounds)))
    }
}

struct Job {
    input: Vec<f32>,
    deadline: Instant,
    reply: Sender<Result<Vec<f32>, PipelineError>>,
}

/// Loads an ONNX model for a fixed input shape (batch 1 included).
///
/// The shape is made concrete before `into_optimized()`: with a symbolic batch tract keeps
/// generic kernels and runs 2–3× slower.
pub fn load_plan(path: &Path, input_shape: &[usize]) -> Result<Plan, LoadError> {
    let err = |message: String| LoadError { path: path.display().to_string(), message };
    let amx = amx::amx_allowed();
    let model = tract_onnx::onnx()
        .model_for_path(path)
        .and_then(|m| m.with_input_fact(0, f32::fact(input_shape).into()))
        .and_then(|m| m.into_optimized())
        .and_then(|mut m| {
            // Our rewrites of tract's optimized plan (each module says why).
            fold::fold_constant_chains(&mut m)?;
            replace_ops(&mut m, im2col::replacement)?;
            replace_ops(&mut m, quantize::replacement)?;
            m.compact()?;
            Ok(m)
        })
        .map_err(|e| err(format!("{e:#}")))?;
    // Constant folding ran tract's kernels on this thread and left its upper vector state
    // dirty; whatever runs here next (often the pipeline's own code) should not pay for it.
    crate::cpu::clean_upper_state();
    if amx {
        amx::check_plan(&model).map_err(err)?;
    }
    model.into_runnable().map_err(|e| err(format!("{e:#}")))
}

/// Puts `replacement(node)` in place of every node it answers for (same inputs and outputs).
/// The replaced nodes are left dangling for `compact()`.
fn replace_ops<O: TypedOp>(
    model: &mut TypedModel,
    replacement: fn(&TypedModel, &TypedNode) -> TractResult<Option<O>>,
) -> TractResult<()> {
    for id in 0..model.nodes.len() {
        let node = &model.nodes[id];
        if let Some(op) = replacement(model, node)? {
            TypedModelPatch::replace_single_op(model, node, &node.inputs, op)?.apply(model)?;
        }
    }
    Ok(())
}

/// Runs `f` under `executor`; a multi-threaded one runs it on one of its own pool threads, so
/// the work between parallel sections does not compete with the pool's spinning workers for
/// the cores (latency mode: ResNet-50 int8 26 -> 30 img/s on 2 cores).
pub fn run_on_executor<R: Send>(executor: Executor, f: impl FnOnce() -> R + Send) -> R {
    match executor.clone() {
        Executor::MultiThread(pool) => pool.install(|| multithread_tract_scope(executor, f)),
        _ => multithread_tract_scope(executor, f),
    }
}

impl InferencePool {
    /// Loads `path` and starts the workers `engine` asks for.
    pub fn load(path: &Path, input_shape: &[usize], engine: &EngineConfig) -> Result<Self, LoadError> {
        let plan = load_plan(path, input_shape)?;
        let output_len =
            output_len(&plan).map_err(|message| LoadError { path: path.display().to_string(), message })?;
        let (tx, rx) = crossbeam_channel::bounded::<Job>(engine.queue_len.max(1));
        let threads = engine.threads.max(1);
        // (workers, the executor each worker loop runs under, the pool lone jobs may borrow)
        let (workers, executor, shared_pool) = match engine.mode {
            EngineMode::Throughput => (threads, Executor::SingleThread, None),
            EngineMode::Adaptive if threads == 1 => (1, Executor::SingleThread, None),
            EngineMode::Adaptive => {
                (threads, Executor::SingleThread, Some(Executor::multithread_with_name(threads, "tessera-mm")))
            }
            EngineMode::Latency if threads == 1 => (1, Executor::SingleThread, None),
            EngineMode::Latency => (1, Executor::multithread_with_name(threads, "tessera-mm"), None),
        };
        let load = Arc::new(Load::default());
        let workers_handles = (0..workers)
            .map(|i| {
                let (plan, rx, executor) = (plan.clone(), rx.clone(), executor.clone());
                let (load, shared_pool) = (load.clone(), shared_pool.clone());
                std::thread::Builder::new()
                    .name(format!("tessera-infer-{i}"))
                    .spawn(move || run_on_executor(executor, || worker(plan, rx, load, shared_pool, threads)))
                    .expect("spawning an inference thread")
            })
            .collect();
        Ok(InferencePool {
            jobs: Some(tx),
            workers: workers_handles,
            input_shape: input_shape.to_vec(),
            output_len,
            load,
            parallel_jobs: workers,
        })
    }

    /// The input shape the plan was optimized for.
    pub fn input_shape(&self) -> &[usize] {
        &self.input_shape
    }

    /// Number of output values (classes).
    pub fn output_len(&self) -> usize {
        self.output_len
    }

    /// Runs one input, waiting at most until `deadline`. Blocks: call it off async workers.
    pub fn infer(&self, input: Vec<f32>, deadline: Instant) -> Result<Vec<f32>, PipelineError> {
        self.admit(deadline)?.infer(input, deadline)
    }

    /// Takes a place in this pool's work before the input exists, so a request that could not
    /// finish in time is refused before anything is spent on it (decoding a photo costs as
    /// much as the inference of a small model). `Overloaded` when the jobs already accepted,
    /// at the measured time per job, would keep this one past `deadline`.
    pub fn admit(&self, deadline: Instant) -> Result<Admission<'_>, PipelineError> {
        let ahead = self.load.in_flight.fetch_add(1, Ordering::AcqRel);
        let admission = Admission { pool: self, counted: true };
        if let Some(finish) = self.load.estimated_finish(Instant::now(), ahead, self.parallel_jobs)
            && finish > deadline
        {
            let job_ms = self.load.job_us.load(Ordering::Relaxed) as f64 / 1e3;
            return Err(PipelineError::new(
                ErrorKind::Overloaded,
                Stage::Inference,
                format!(
                    "{ahead} images are ahead of this one (about {job_ms:.0} ms each on {} workers): it could not \
                     finish before its deadline; retry shortly",
                    self.parallel_jobs
                ),
            ));
        }
        Ok(admission)
    }
}

/// A place taken in an [`InferencePool`]'s work by [`InferencePool::admit`]; given back when
/// dropped unused.
pub struct Admission<'a> {
    pool: &'a InferencePool,
    /// Still counted in the pool's in-flight jobs by this admission (the worker takes over
    /// the count once the job is queued).
    counted: bool,
}

impl Admission<'_> {
    /// Runs `input` in the place taken, waiting at most until `deadline`. Blocks.
    pub fn infer(mut self, input: Vec<f32>, deadline: Instant) -> Result<Vec<f32>, PipelineError> {
        let pool = self.pool;
        let expected: usize = pool.input_shape.iter().product();
        if input.len() != expected {
            return Err(PipelineError::new(
                ErrorKind::Internal,
                Stage::Inference,
                format!("input has {} values but the model takes {:?} = {expected}", input.len(), pool.input_shape),
            ));
        }
        let (reply, answer) = crossbeam_channel::bounded(1);
        let jobs = pool.jobs.as_ref().expect("pool is running until dropped");
        let sent = jobs.try_send(Job { input, deadline, reply });
        if sent.is_ok() {
            self.counted = false;
        }
        match sent {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                return Err(PipelineError::new(
                    ErrorKind::Overloaded,
                    Stage::Inference,
                    "the inference queue is full; retry shortly",
                ));
            }
            Err(TrySendError::Disconnected(_)) => {
                return Err(PipelineError::new(
                    ErrorKind::Internal,
                    Stage::Inference,
                    "the inference workers have stopped",
                ));
            }
        }
        match answer.recv_deadline(deadline) {
            Ok(result) => result,
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => Err(deadline_exceeded()),
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => Err(PipelineError::new(
                ErrorKind::Internal,
                Stage::Inference,
                "an inference worker stopped while running this request",
            )),
        }
    }
}

impl Drop for Admission<'_> {
    fn drop(&mut self) {
        if self.counted {
            self.pool.load.in_flight.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl Drop for InferencePool {
    fn drop(&mut self) {
        // Closing the queue ends each worker's loop once the jobs already queued are done.
        self.jobs.take();
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

fn deadline_exceeded() -> PipelineError {
    PipelineError::new(
        ErrorKind::DeadlineExceeded,
        Stage::Inference,
        "the request deadline passed before inference finished",
    )
}

fn output_len(plan: &Plan) -> Result<usize, String> {
    let fact = plan.model().output_fact(0).map_err(|e| format!("{e:#}"))?;
    let shape = fact.shape.as_concrete().ok_or_else(|| format!("output shape {:?} is not concrete", fact.shape))?;
    Ok(shape.iter().product())
}

fn worker(plan: Plan, jobs: Receiver<Job>, load: Arc<Load>, shared_pool: Option<Executor>, threads: usize) {
    let mut state = match TypedSimpleState::new(&plan) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "inference worker could not start");
            return;
        }
    };
    let shape: Vec<usize> =
        plan.model().input_fact(0).ok().and_then(|f| f.shape.as_concrete().map(|s| s.to_vec())).unwrap_or_default();
    for job in jobs {
        if Instant::now() >= job.deadline {
            load.in_flight.fetch_sub(1, Ordering::AcqRel);
            let _ = job.reply.send(Err(deadline_exceeded()));
            continue;
        }
        let started = Instant::now();
        let alone = shared_pool.is_some() && load.in_flight.load(Ordering::Relaxed) <= 1;
        let result = match &shared_pool {
            // Alone: run the job on a thread of the pool it borrows, so its serial nodes do not
            // compete with the pool's spinning threads (as the latency mode does).
            Some(pool) if alone => {
                run_on_executor(pool.clone(), || run_once(&mut state, &shape, job.input, Some((pool, &load))))
            }
            Some(pool) => run_once(&mut state, &shape, job.input, Some((pool, &load))),
            None => run_once(&mut state, &shape, job.input, None),
        };
        // Admission estimates the time of a job on one worker: a job that had every thread
        // took about 1/threads of that.
        let workers = if alone { threads } else { 1 };
        load.record(started.elapsed() * workers as u32);
        load.in_flight.fetch_sub(1, Ordering::AcqRel);
        let _ = job.reply.send(result);
    }
}

/// Runs one input. With `adaptive`, each node of the plan runs under the shared pool while
/// this job is the only one accepted, and single-threaded as soon as another one is: the
/// decision is taken per node, so a job that started alone gives the threads back within one
/// node when others arrive.
fn run_once(
    state: &mut TypedSimpleState,
    shape: &[usize],
    input: Vec<f32>,
    adaptive: Option<(&Executor, &Load)>,
) -> Result<Vec<f32>, PipelineError> {
    let internal = |e: TractError| PipelineError::new(ErrorKind::Internal, Stage::Inference, format!("tract: {e:#}"));
    let tensor = Tensor::from_shape(shape, &input).map_err(internal)?;
    let outputs = match adaptive {
        None => state.run(tvec!(tensor.into())),
        Some((pool, load)) => state.run_plan_with_eval(tvec!(tensor.into()), |ctx, op_state, node, inputs| {
            let eval = || tract_onnx::tract_core::plan::eval(ctx, op_state, node, inputs);
            let executor =
                if load.in_flight.load(Ordering::Relaxed) <= 1 { pool.clone() } else { Executor::SingleThread };
            multithread_tract_scope(executor, eval)
        }),
    }
    .map_err(internal)?;
    let view = outputs[0].to_plain_array_view::<f32>().map_err(internal)?;
    Ok(view.iter().copied().collect())
}

/// Runs `plan` once on the calling thread, single-threaded: for benchmarks and diagnostics
/// (the server runs plans on its worker pools).
pub fn run_plan_once(plan: &Plan, input: &[f32]) -> Result<Vec<f32>, PipelineError> {
    let internal = |e: TractError| PipelineError::new(ErrorKind::Internal, Stage::Inference, format!("tract: {e:#}"));
    let mut state = TypedSimpleState::new(plan).map_err(internal)?;
    let shape: Vec<usize> =
        plan.model().input_fact(0).ok().and_then(|f| f.shape.as_concrete().map(|s| s.to_vec())).unwrap_or_default();
    run_once(&mut state, &shape, input.to_vec(), None)
}

/// Where one run's time goes, per kind of operation.
#[derive(Debug, Clone, serde::Serialize)]
pub struct OpTime {
    /// tract's name for the operation (after optimization, e.g. `OptMatMul`, `Im2col`).
    pub op: String,
    /// Milliseconds per run, summed over the nodes of this kind.
    pub ms: f64,
    /// How many nodes of this kind the plan has.
    pub nodes: usize,
    /// tract's description of the slowest node of this kind (e.g. which kernel a matmul uses).
    pub slowest_node: String,
}

/// One node of an optimized plan and its time.
#[derive(Debug, Clone, serde::Serialize)]
pub struct NodeTime {
    pub name: String,
    pub op: String,
    /// tract's description of the node (e.g. the matmul's shape and kernel).
    pub info: String,
    /// Milliseconds per run.
    pub ms: f64,
}

/// Profiles the optimized plan of `path` on a single thread: `runs` timed runs after one
/// warm-up, every node timed; nodes slowest first. A diagnostic for benchmarks, not for the
/// request path.
pub fn profile_nodes(path: &Path, input_shape: &[usize], runs: usize) -> Result<Vec<NodeTime>, LoadError> {
    let err = |e: TractError| LoadError { path: path.display().to_string(), message: format!("{e:#}") };
    let plan = load_plan(path, input_shape)?;
    let mut state = TypedSimpleState::new(&plan).map_err(err)?;
    let input: TValue = Tensor::zero::<f32>(input_shape).map_err(err)?.into();
    state.run(tvec!(input.clone())).map_err(err)?;
    let runs = runs.max(1);
    let mut took = vec![std::time::Duration::ZERO; plan.model().nodes.len()];
    for _ in 0..runs {
        state
            .run_plan_with_eval(tvec!(input.clone()), |ctx, op_state, node, inputs| {
                let started = Instant::now();
                let out = tract_onnx::tract_core::plan::eval(ctx, op_state, node, inputs);
                took[node.id] += started.elapsed();
                out
            })
            .map_err(err)?;
    }
    let mut nodes: Vec<NodeTime> = plan
        .model()
        .nodes
        .iter()
        .filter(|node| !took[node.id].is_zero())
        .map(|node| NodeTime {
            name: node.name.clone(),
            op: node.op().name().to_string(),
            info: node.op().info().unwrap_or_default().join("; "),
            ms: took[node.id].as_secs_f64() * 1e3 / runs as f64,
        })
        .collect();
    nodes.sort_by(|a, b| b.ms.total_cmp(&a.ms));
    Ok(nodes)
}

/// [`profile_nodes`] totalled per operation kind, slowest first.
pub fn profile_ops(path: &Path, input_shape: &[usize], runs: usize) -> Result<Vec<OpTime>, LoadError> {
    let mut ops: Vec<OpTime> = Vec::new();
    // Nodes come slowest first, so the first node seen of each kind is its slowest.
    for node in profile_nodes(path, input_shape, runs)? {
        match ops.iter_mut().find(|o| o.op == node.op) {
            Some(o) => {
                o.ms += node.ms;
                o.nodes += 1;
            }
            None => ops.push(OpTime {
                op: node.op,
                ms: node.ms,
                nodes: 1,
                slowest_node: format!("{}: {}", node.name, node.info),
            }),
        }
    }
    ops.sort_by(|a, b| b.ms.total_cmp(&a.ms));
    Ok(ops)
}

/// One matrix multiplication of an optimized plan and the kernel tract chose for it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct MatMulKernel {
    pub node: String,
    /// tract-linalg's kernel name(s), e.g. `avx512amx_mmm_i32_16x16`.
    pub kernel: String,
    /// What the kernel accumulates in: `I32` for the int8 kernels, `F32` for the float ones.
    pub accumulator: String,
}

/// The matrix-multiply kernels of the optimized plan of `path`: tells whether an int8 graph
/// really reaches tract's int8 kernels (a graph tract cannot map runs dequantized, in fp32).
pub fn matmul_kernels(path: &Path, input_shape: &[usize]) -> Result<Vec<MatMulKernel>, LoadError> {
    use tract_onnx::tract_core::ops::matmul::optimized::OptMatMul;
    let plan = load_plan(path, input_shape)?;
    Ok(plan
        .model()
        .nodes
        .iter()
        .filter_map(|node| {
            let op = node.op_as::<OptMatMul>()?;
            Some(MatMulKernel {
                node: node.name.clone(),
                kernel: op.mmm.iter().map(|k| k.name().to_string()).collect::<Vec<_>>().join(","),
                accumulator: format!("{:?}", op.mmm.first()?.internal_type()),
            })
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admission_counts_rounds_of_parallel_jobs_at_the_measured_time_per_job() {
        let load = Load::default();
        let now = Instant::now();
        assert_eq!(load.estimated_finish(now, 10, 2), None, "no estimate before a job has run");
        load.record(Duration::from_millis(100));
        let after = |ms| Some(now + Duration::from_millis(ms));
        assert_eq!(load.estimated_finish(now, 0, 2), after(100));
        assert_eq!(load.estimated_finish(now, 1, 2), after(100), "runs beside the one job ahead");
        assert_eq!(load.estimated_finish(now, 2, 2), after(200));
        assert_eq!(load.estimated_finish(now, 5, 2), after(300));
        load.record(Duration::from_millis(200));
        assert_eq!(load.job_us.load(Ordering::Relaxed), 112_500, "the average moves 1/8 of the way");
    }

    #[test]
    fn a_job_that_cannot_meet_its_deadline_is_refused_at_once() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/shapes/1/model.onnx");
        let shape = [1, 3, 224, 224];
        let engine = EngineConfig { mode: EngineMode::Adaptive, threads: 2, queue_len: 8 };
        let pool = InferencePool::load(&path, &shape, &engine).unwrap();
        let input = vec![0f32; 3 * 224 * 224];
        pool.infer(input.clone(), Instant::now() + Duration::from_secs(30)).unwrap();
        // One job has been timed (milliseconds); a deadline a microsecond away cannot be met.
        let err = pool.infer(input.clone(), Instant::now() + Duration::from_micros(1)).unwrap_err();
        assert_eq!(err.kind, ErrorKind::Overloaded, "{err:?}");
        assert!(err.message.contains("before its deadline"), "{}", err.message);
        // And the refusal took nothing from the pool.
        assert_eq!(pool.load.in_flight.load(Ordering::Relaxed), 0);
        pool.infer(input, Instant::now() + Duration::from_secs(30)).unwrap();
    }

    #[test]
    fn modes_parse_by_name() {
        assert_eq!("adaptive".parse::<EngineMode>(), Ok(EngineMode::Adaptive));
        assert_eq!("latency".parse::<EngineMode>(), Ok(EngineMode::Latency));
        let err = "fast".parse::<EngineMode>().unwrap_err();
        assert!(err.contains("adaptive, throughput or latency"), "{err}");
        assert_eq!(EngineMode::default(), EngineMode::Adaptive);
    }
}
