//! The tract engine: an ONNX model made concrete for batch 1, optimized once, rewritten by our
//! [`patches`] (feature `tract-patches`), and run by the pool's workers.
//!
//! The optimized plan is shared (`Arc`) by every worker, so the weights exist once per loaded
//! version; each worker keeps its own `SimpleState` (scratch buffers) and reuses it for every
//! job. How a job uses the threads follows [`EngineMode`]: *adaptive* decides per node of the
//! plan (a job alone in the pool splits its matrix products over a shared `threads`-thread
//! executor, one that has company runs single-threaded), *throughput* is always
//! single-threaded, *latency* always splits.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use tract_linalg::multithread::{Executor, multithread_tract_scope};
use tract_onnx::prelude::*;

use super::{EngineConfig, EngineMode, LoadError, LoadedModel, ModelIo, ModelWorker};

mod amx;
#[cfg(feature = "tract-patches")]
mod patches;

pub use amx::request_amx_int8;

pub type Plan = Arc<TypedRunnableModel>;

/// A tract plan and the executor its jobs may borrow.
pub struct TractModel {
    plan: Plan,
    io: ModelIo,
    mode: EngineMode,
    threads: usize,
    /// The `threads`-thread executor a job splits its matrix products over (adaptive when
    /// alone, latency always); `None` when every job runs single-threaded.
    pool: Option<Executor>,
}

impl TractModel {
    pub fn load(path: &Path, input_shape: &[usize], engine: &EngineConfig) -> Result<Self, LoadError> {
        let plan = load_plan(path, input_shape)?;
        let io = model_io(&plan).map_err(|message| LoadError { path: path.display().to_string(), message })?;
        let threads = engine.threads.max(1);
        let pool = match engine.mode {
            EngineMode::Throughput => None,
            _ if threads == 1 => None,
            EngineMode::Adaptive | EngineMode::Latency => Some(Executor::multithread_with_name(threads, "tessera-mm")),
        };
        Ok(TractModel { plan, io, mode: engine.mode, threads, pool })
    }
}

impl LoadedModel for TractModel {
    fn io(&self) -> &ModelIo {
        &self.io
    }

    fn spreads_when_alone(&self) -> bool {
        self.mode == EngineMode::Adaptive && self.pool.is_some()
    }

    fn parallel_jobs(&self) -> usize {
        match self.mode {
            EngineMode::Latency => 1,
            EngineMode::Adaptive | EngineMode::Throughput => self.threads,
        }
    }

    fn worker(self: Arc<Self>) -> Result<Box<dyn ModelWorker>, String> {
        let state = TypedSimpleState::new(&self.plan).map_err(|e| format!("tract: {e:#}"))?;
        Ok(Box::new(TractWorker { model: self, state }))
    }
}

struct TractWorker {
    model: Arc<TractModel>,
    state: TypedSimpleState,
}

impl ModelWorker for TractWorker {
    fn run(&mut self, input: Vec<f32>, alone: &(dyn Fn() -> bool + Sync)) -> Result<Vec<f32>, String> {
        let shape = &self.model.io.input_shape;
        let state = &mut self.state;
        match (&self.model.pool, self.model.mode) {
            (None, _) => run_once(state, shape, input, None),
            // The job runs on a thread of the pool, so its serial nodes do not compete with the
            // pool's spinning threads for the cores (latency mode: ResNet-50 int8 26 -> 30 img/s).
            (Some(pool), EngineMode::Latency) => run_on_executor(pool.clone(), || run_once(state, shape, input, None)),
            (Some(pool), _) if alone() => {
                run_on_executor(pool.clone(), || run_once(state, shape, input, Some((pool, alone))))
            }
            (Some(pool), _) => run_once(state, shape, input, Some((pool, alone))),
        }
        .map_err(|e| format!("tract: {e:#}"))
    }
}

fn model_io(plan: &Plan) -> Result<ModelIo, String> {
    let model = plan.model();
    let concrete = |fact: &TypedFact| {
        fact.shape.as_concrete().map(|s| s.to_vec()).ok_or_else(|| format!("shape {:?} is not concrete", fact.shape))
    };
    let input = model.input_fact(0).map_err(|e| format!("{e:#}"))?;
    let output = model.output_fact(0).map_err(|e| format!("{e:#}"))?;
    // The ONNX graph's input/output names, which tract keeps as outlet labels through
    // optimisation (OIP clients name tensors by them); else the node's name.
    let name = |outlet: OutletId| {
        model.outlet_label(outlet).map(String::from).unwrap_or_else(|| model.node(outlet.node).name.clone())
    };
    Ok(ModelIo {
        input_name: name(model.input_outlets().map_err(|e| format!("{e:#}"))?[0]),
        input_shape: concrete(input)?,
        input_dtype: format!("{:?}", input.datum_type),
        output_name: name(model.output_outlets().map_err(|e| format!("{e:#}"))?[0]),
        output_shape: concrete(output)?,
        output_dtype: format!("{:?}", output.datum_type),
    })
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
        .and_then(|m| m.into_typed())
        .and_then(|m| m.into_decluttered())
        .and_then(|m| {
            #[cfg(feature = "tract-patches")]
            let m = {
                let mut m = m;
                patches::before_optimize(&mut m)?;
                m
            };
            m.into_optimized()
        })
        .and_then(|mut m| {
            #[cfg(feature = "tract-patches")]
            patches::apply(&mut m)?;
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

/// Runs `f` under `executor`; a multi-threaded one runs it on one of its own pool threads, so
/// the work between parallel sections does not compete with the pool's spinning workers for
/// the cores.
pub fn run_on_executor<R: Send>(executor: Executor, f: impl FnOnce() -> R + Send) -> R {
    match executor.clone() {
        Executor::MultiThread(pool) => pool.install(|| multithread_tract_scope(executor, f)),
        _ => multithread_tract_scope(executor, f),
    }
}

/// Runs one input. With `split`, each node of the plan runs under the shared pool while
/// `alone()` says this job is the only one accepted, and single-threaded as soon as another one
/// is: the decision is taken per node, so a job that started alone gives the threads back
/// within one node when others arrive.
fn run_once(
    state: &mut TypedSimpleState,
    shape: &[usize],
    input: Vec<f32>,
    split: Option<(&Executor, &(dyn Fn() -> bool + Sync))>,
) -> TractResult<Vec<f32>> {
    let tensor = Tensor::from_shape(shape, &input)?;
    let outputs = match split {
        None => state.run(tvec!(tensor.into()))?,
        Some((pool, alone)) => state.run_plan_with_eval(tvec!(tensor.into()), |ctx, op_state, node, inputs| {
            let eval = || tract_onnx::tract_core::plan::eval(ctx, op_state, node, inputs);
            let executor = if alone() { pool.clone() } else { Executor::SingleThread };
            multithread_tract_scope(executor, eval)
        })?,
    };
    let view = outputs[0].to_plain_array_view::<f32>()?;
    Ok(view.iter().copied().collect())
}

/// Runs `plan` once on the calling thread, single-threaded: for benchmarks and diagnostics
/// (the server runs plans on its worker pools).
pub fn run_plan_once(plan: &Plan, input: &[f32]) -> Result<Vec<f32>, String> {
    let mut state = TypedSimpleState::new(plan).map_err(|e| format!("tract: {e:#}"))?;
    let shape = model_io(plan)?.input_shape;
    run_once(&mut state, &shape, input.to_vec(), None).map_err(|e| format!("tract: {e:#}"))
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

/// One matrix multiplication of an optimized plan and the kernel tract (or our patch) chose for it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct MatMulKernel {
    pub node: String,
    /// tract-linalg's kernel name(s), e.g. `avx512amx_mmm_i32_16x16`, or our int8 GEMM's.
    pub kernel: String,
    /// What the kernel accumulates in: `I32` for the int8 kernels, `F32` for the float ones.
    pub accumulator: String,
}

/// The matrix-multiply kernels of the optimized plan of `path`: tells whether an int8 graph
/// really reaches int8 kernels, tract's or ours (a graph tract cannot map runs dequantized, in
/// fp32).
pub fn matmul_kernels(path: &Path, input_shape: &[usize]) -> Result<Vec<MatMulKernel>, LoadError> {
    use tract_onnx::tract_core::ops::matmul::optimized::OptMatMul;
    let plan = load_plan(path, input_shape)?;
    Ok(plan
        .model()
        .nodes
        .iter()
        .filter_map(|node| {
            #[cfg(feature = "tract-patches")]
            if let Some(kernel) = patches::int8_gemm_kernel(node) {
                return Some(MatMulKernel {
                    node: node.name.clone(),
                    kernel: kernel.to_string(),
                    accumulator: "I32".to_string(),
                });
            }
            let op = node.op_as::<OptMatMul>()?;
            Some(MatMulKernel {
                node: node.name.clone(),
                kernel: op.mmm.iter().map(|k| k.name().to_string()).collect::<Vec<_>>().join(","),
                accumulator: format!("{:?}", op.mmm.first()?.internal_type()),
            })
        })
        .collect())
}
