//! The classification pipeline: preprocess guest → native inference → postprocess guest →
//! rules guests, under one deadline, with per-stage timings and typed errors.
//!
//! Everything here blocks (guest calls and inference are CPU work): async callers run it on a
//! blocking thread. The same [`Runner`] serves HTTP, gRPC, the C API and the embedding API; a
//! [`Pipeline`] is one configured set of guests (`[guests]`, `[pipelines.<name>]`).

use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tracing::Span;
use tracing::field::Empty;

use crate::config::{DEFAULT_PIPELINE, Limits};
use crate::error::{ErrorKind, RequestError, Stage};
use arc_swap::ArcSwap;

use crate::metrics::Metrics;
use crate::repository::{FileStamp, Model, ModelRepository, ModelVersion, OutputKind};
use crate::request::{ClassifyRequest, DEFAULT_TOP_K, Progress, TensorRequest};
use crate::runtime::{
    GuestFailure, GuestInference, Phases, PostprocessGuest, PreparedPostprocess, PreparedRules, PreprocessGuest,
    RulesGuest, Runtime, TaskGuest,
};
use crate::stage_io::{Decision, ModelDescription, NamedTensor, Prediction, SpecView, TaskAnswer, TaskInput};

/// Which model answered.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelRef {
    pub name: String,
    pub version: String,
}

/// Milliseconds spent in each stage.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Timings {
    pub preprocess: f64,
    pub inference: f64,
    pub postprocess: f64,
    pub rules: f64,
    pub total: f64,
}

/// One guest call of a request: which guest, in which stage, and where its time went.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GuestRun {
    pub stage: Stage,
    pub name: String,
    /// Making a fresh instance from the guest's `InstancePre` (pool slot, memory image).
    pub instantiate_ms: f64,
    /// Whether the request made the instance before the stage, while its model ran (then
    /// `instantiate_ms` is not part of the stage's time).
    pub instantiated_ahead: bool,
    /// The exported function, arguments and results included.
    pub call_ms: f64,
}

/// The guests a request ran, in order.
type GuestRuns = std::cell::RefCell<Vec<GuestRun>>;

/// A classification: the model's top-1, the top-k, the rules' decision and where time went.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Classification {
    pub label: String,
    pub confidence: f32,
    pub top_k: Vec<Prediction>,
    pub decision: Decision,
    pub model: ModelRef,
    /// The pipeline whose guests ran.
    pub pipeline: String,
    pub timings_ms: Timings,
    /// Every guest that ran, in order, with its instantiate and call times.
    pub guests: Vec<GuestRun>,
}

/// A model's raw output for a tensor the caller made (inference alone, no guests).
#[derive(Debug, Clone, PartialEq)]
pub struct TensorOutput {
    pub model: ModelRef,
    /// The output's name in the model.
    pub name: String,
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// Instances a request made for its stages after inference, while its model ran.
struct Prepared {
    postprocess: PreparedPostprocess,
    /// One per rules guest, in order.
    rules: Vec<PreparedRules>,
}

/// A pipeline: its name (`default` is `[guests]`) and the guests of its stages.
pub struct Pipeline {
    pub name: String,
    pub preprocess: PreprocessGuest,
    pub postprocess: PostprocessGuest,
    pub rules: Vec<RulesGuest>,
}

/// Every configured pipeline, swapped as a whole on reload.
pub struct Pipelines {
    /// By name; `default` is `[guests]`.
    pub(crate) by_name: BTreeMap<String, Arc<Pipeline>>,
    /// Model name → the pipeline its requests get when they select none.
    pub(crate) by_model: BTreeMap<String, String>,
    /// Task guests by name (`[tasks.<name>]`).
    pub(crate) tasks: BTreeMap<String, Arc<Task>>,
    /// Size and mtime of each guest file when loaded, in config order: a reload recompiles
    /// only when they change.
    pub(crate) sources: Vec<FileStamp>,
}

/// A task (`[tasks.<name>]`): its guest and the models it may call.
pub struct Task {
    pub name: String,
    pub guest: TaskGuest,
    pub models: Vec<String>,
}

/// A task's answer, and where its time went.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TaskResult {
    pub task: String,
    pub answer: TaskAnswer,
    pub timings_ms: TaskTimings,
    /// The task guest's run: its instantiate and call times (the call includes its engine runs).
    pub guests: Vec<GuestRun>,
}

/// Milliseconds a task request spent: the guest's run (its engine calls included), the part of
/// it in engine calls (each model's queue wait and run), and in all.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct TaskTimings {
    pub task: f64,
    pub engine: f64,
    pub total: f64,
}

impl Pipelines {
    /// The task named `name`.
    pub(crate) fn task(&self, name: &str) -> Result<&Arc<Task>, RequestError> {
        self.tasks.get(name).ok_or_else(|| {
            let known: Vec<&str> = self.tasks.keys().map(String::as_str).collect();
            RequestError::new(
                ErrorKind::TaskNotFound,
                Stage::Admission,
                format!(
                    "no task named {name:?}; configured: {}",
                    if known.is_empty() { "none".to_string() } else { known.join(", ") }
                ),
            )
        })
    }

    /// The pipeline a request selected, else the one configured for its model, else the
    /// default.
    pub(crate) fn select(&self, requested: Option<&str>, model: &str) -> Result<&Arc<Pipeline>, RequestError> {
        let name = requested.or_else(|| self.by_model.get(model).map(String::as_str)).unwrap_or(DEFAULT_PIPELINE);
        self.by_name.get(name).ok_or_else(|| {
            let known: Vec<&str> = self.by_name.keys().map(String::as_str).collect();
            RequestError::new(
                ErrorKind::PipelineNotFound,
                Stage::Admission,
                format!("no pipeline named {name:?}; configured: {}", known.join(", ")),
            )
        })
    }
}

/// Runs requests: the repository's models and the configured pipelines' guests on the runtime.
pub struct Runner {
    pub(crate) runtime: Arc<Runtime>,
    pub(crate) repo: Arc<ModelRepository>,
    /// Swapped as a whole on reload; a request keeps the `Arc` it started with.
    pub(crate) pipelines: ArcSwap<Pipelines>,
    pub(crate) limits: Limits,
    /// The configured default model (`default_model`); `None` = the repository's
    /// (`repository.toml`), else the only model, else none.
    pub(crate) default_model: Option<String>,
    pub(crate) metrics: Arc<Metrics>,
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

impl Runner {
    /// Resolves the model and version a request asks for.
    pub fn resolve(
        &self,
        model: Option<&str>,
        version: Option<&str>,
    ) -> Result<(Arc<Model>, Arc<ModelVersion>), RequestError> {
        let snapshot = self.repo.snapshot();
        let name = match model {
            Some(name) => name.to_string(),
            None => self.default_in(&snapshot).ok_or_else(|| {
                RequestError::new(
                    ErrorKind::BadRequest,
                    Stage::Admission,
                    format!(
                        "name a model: this server has {} models ({}) and no default model (default_model in the \
                         config, or in the models directory's repository.toml)",
                        snapshot.models.len(),
                        snapshot.models.keys().cloned().collect::<Vec<_>>().join(", ")
                    ),
                )
            })?,
        };
        let model = snapshot.get(&name)?.clone();
        let version = model.resolve(version)?;
        Ok((model, version))
    }

    /// The model requests get when they name none: the configured one, else the repository's,
    /// else the only model; never an accident of sorting (a new directory whose name sorts
    /// first must not take over).
    pub fn default_model_name(&self) -> Option<String> {
        self.default_in(&self.repo.snapshot())
    }

    fn default_in(&self, snapshot: &crate::repository::Snapshot) -> Option<String> {
        match (&self.default_model, &snapshot.manifest.default_model) {
            (Some(name), _) | (None, Some(name)) => Some(name.clone()),
            (None, None) if snapshot.models.len() == 1 => snapshot.models.keys().next().cloned(),
            (None, None) => None,
        }
    }

    /// Runs the whole pipeline for `req`, telling `progress` which stage it is in.
    pub fn classify(&self, req: &ClassifyRequest, progress: &Progress) -> Result<Classification, RequestError> {
        let context = &req.context;
        let (model, version) = self.resolve(context.model(), context.version())?;
        if model.manifest.output == OutputKind::Any {
            return Err(RequestError::new(
                ErrorKind::BadRequest,
                Stage::Admission,
                format!(
                    "model {} does not classify: its output is not one score per label (output = \"any\" in its \
                     model.toml); a task runs it (GET /v1/tasks lists them)",
                    model.name
                ),
            ));
        }
        let result = self.classify_with(req, &model, &version, progress);
        let outcome = result.as_ref().map(|_| ()).map_err(|e| e.kind);
        self.metrics.model_result(&model.name, version.version, outcome);
        if let Ok(c) = &result {
            let t = &c.timings_ms;
            for (stage, ms) in [
                (Stage::Preprocess, t.preprocess),
                (Stage::Inference, t.inference),
                (Stage::Postprocess, t.postprocess),
                (Stage::Rules, t.rules),
            ] {
                self.metrics.stage(stage, &model.name, Duration::from_secs_f64(ms / 1e3));
            }
        }
        result
    }

    fn classify_with(
        &self,
        req: &ClassifyRequest,
        model: &Model,
        version: &ModelVersion,
        progress: &Progress,
    ) -> Result<Classification, RequestError> {
        let context = &req.context;
        let deadline = context.deadline();
        let classes = model.labels.len() as u32;
        let top_k = context.top_k().map_or(DEFAULT_TOP_K, NonZeroU32::get).min(classes);
        let spec = spec_view(model, version);
        let pipeline = self.pipelines.load().select(context.pipeline(), &model.name)?.clone();
        Span::current().record("pipeline", pipeline.name.as_str());
        let mut timings = Timings::default();
        let ran = GuestRuns::default();

        // The inference place is reserved first: a request the workers cannot finish in time is
        // refused before its image is decoded, so an overload costs no preprocessing.
        let reservation = version.pool.reserve(deadline)?;

        let input = in_stage(progress, Stage::Preprocess, &mut timings.preprocess, || {
            self.preprocess_with(&pipeline, &spec, &req.image, req.media_type.as_deref(), deadline, &ran)
        })?;
        let (logits, prepared) = in_stage(progress, Stage::Inference, &mut timings.inference, || {
            Span::current().record("model", model.name.as_str()).record("version", version.version);
            let submitted = reservation.submit(input, deadline)?;
            // This thread would only wait for the worker: it instantiates the guests of the
            // stages after this one meanwhile, so they pay only for their calls (`prepared.rs`).
            let prepared = self.prepare_after_inference(&pipeline, deadline);
            Ok((submitted.wait()?, prepared))
        })?;
        let Prepared { postprocess, rules } = prepared;
        let stage = &pipeline.postprocess;
        let top = in_stage(progress, Stage::Postprocess, &mut timings.postprocess, || {
            self.guest(Stage::Postprocess, &stage.name, &ran, || {
                self.runtime.postprocess(stage, Some(postprocess), logits, &spec, &model.labels, top_k, deadline)
            })
        })?;
        let first = top.first().cloned().ok_or_else(|| {
            RequestError::new(
                ErrorKind::GuestFailed,
                Stage::Postprocess,
                format!("guest {} returned no prediction", stage.name),
            )
        })?;
        let decision = in_stage(progress, Stage::Rules, &mut timings.rules, || {
            self.run_rules(&pipeline, rules, &top, context.metadata(), deadline, &ran)
        })?;
        timings.total = ms(context.start().elapsed());

        Ok(Classification {
            label: first.label,
            confidence: first.score,
            top_k: top,
            decision,
            model: ModelRef { name: model.name.clone(), version: version.version.to_string() },
            pipeline: pipeline.name.clone(),
            timings_ms: timings,
            guests: ran.into_inner(),
        })
    }

    /// Calls `guest` in its own span, counting its phases or its failure.
    fn guest<T>(
        &self,
        stage: Stage,
        guest: &str,
        ran: &GuestRuns,
        call: impl FnOnce() -> Result<(T, Phases), GuestFailure>,
    ) -> Result<T, RequestError> {
        let span = tracing::info_span!(
            "guest",
            otel.name = format!("guest {guest}"),
            otel.status_code = Empty,
            otel.status_description = Empty,
            guest,
            stage = stage.as_str(),
            instantiate_ms = Empty,
            call_ms = Empty,
            error.type = Empty,
        );
        match span.in_scope(call) {
            Ok((value, phases)) => {
                span.record("instantiate_ms", ms(phases.instantiate)).record("call_ms", ms(phases.call));
                self.metrics.guest_call(guest, stage, phases.instantiate, phases.call);
                ran.borrow_mut().push(GuestRun {
                    stage,
                    name: guest.to_string(),
                    instantiate_ms: ms(phases.instantiate),
                    instantiated_ahead: phases.instantiated_ahead,
                    call_ms: ms(phases.call),
                });
                Ok(value)
            }
            Err(failure) => {
                let e = failure.into_pipeline(stage, guest);
                record_error(&span, &e);
                self.metrics.guest_failure(guest, stage, e.kind);
                Err(e)
            }
        }
    }

    /// Runs the model alone on `input` of `shape` (which must be the model's input shape), for
    /// clients that preprocess themselves (OIP's FP32 input).
    pub fn infer(&self, tensor: TensorRequest, progress: &Progress) -> Result<TensorOutput, RequestError> {
        let context = &tensor.context;
        let (model, version) = self.resolve(context.model(), context.version())?;
        let deadline = context.deadline();
        check_shape(&model.name, version.pool.input_shape(), &tensor.shape, Stage::Admission)?;
        let reservation = version.pool.reserve(deadline)?;
        let mut inference_ms = 0.0;
        let result = in_stage(progress, Stage::Inference, &mut inference_ms, || {
            Span::current().record("model", model.name.as_str()).record("version", version.version);
            reservation.run(tensor.data, deadline)
        });
        self.metrics.model_result(&model.name, version.version, result.as_ref().map(|_| ()).map_err(|e| e.kind));
        let data = result?;
        self.metrics.stage(Stage::Inference, &model.name, Duration::from_secs_f64(inference_ms / 1e3));
        let io = version.pool.io();
        Ok(TensorOutput {
            model: ModelRef { name: model.name.clone(), version: version.version.to_string() },
            name: io.output_name.clone(),
            shape: io.output_shape.clone(),
            data,
        })
    }

    /// Runs task `name` on `input` under `context`'s deadline, counting it per task and outcome.
    pub fn run_task(
        &self,
        name: &str,
        input: &TaskInput,
        context: &crate::request::RequestContext,
        progress: &Progress,
    ) -> Result<TaskResult, RequestError> {
        let task = self.pipelines.load().task(name)?.clone();
        let result = self.run_task_with(&task, input, context, progress);
        self.metrics.task(&task.name, result.as_ref().map(|_| ()).map_err(|e| e.kind), context.start().elapsed());
        result
    }

    fn run_task_with(
        &self,
        task: &Arc<Task>,
        input: &TaskInput,
        context: &crate::request::RequestContext,
        progress: &Progress,
    ) -> Result<TaskResult, RequestError> {
        let deadline = context.deadline();
        // The largest input tensor its models take: what one `engines.run` may hand the host.
        let snapshot = self.repo.snapshot();
        let max_input_bytes = task
            .models
            .iter()
            .filter_map(|m| snapshot.models.get(m))
            .flat_map(|m| m.versions.values())
            .map(|v| v.pool.input_shape().iter().product::<usize>() * 4)
            .max()
            .unwrap_or(0);
        let models =
            Arc::new(TaskModels { repo: self.repo.clone(), task: task.clone(), engine: Mutex::new(Duration::ZERO) });
        let ran = GuestRuns::default();
        let mut timings = TaskTimings::default();
        let answer = in_stage(progress, Stage::Task, &mut timings.task, || {
            self.guest(Stage::Task, &task.guest.name, &ran, || {
                self.runtime.run_task(&task.guest, input, models.clone(), max_input_bytes, deadline)
            })
        })?;
        timings.engine = ms(*models.engine.lock().unwrap_or_else(|e| e.into_inner()));
        timings.total = ms(context.start().elapsed());
        Ok(TaskResult { task: task.name.clone(), answer, timings_ms: timings, guests: ran.into_inner() })
    }

    /// The configured tasks: name, guest file name, the models each may call, its WASI grants.
    pub fn tasks(&self) -> Vec<(String, String, Vec<String>, Vec<crate::config::WasiGrant>)> {
        self.pipelines
            .load()
            .tasks
            .values()
            .map(|t| (t.name.clone(), t.guest.name.clone(), t.models.clone(), t.guest.grants.iter().copied().collect()))
            .collect()
    }

    /// Runs only the preprocess stage for the default (or named) model, with the model's
    /// pipeline: the exact tensor the model would see. Used by training tools so training and
    /// serving cannot drift.
    pub fn preprocess(&self, image: &[u8], model: Option<&str>, deadline: Instant) -> Result<Vec<f32>, RequestError> {
        let (model, version) = self.resolve(model, None)?;
        let pipeline = self.pipelines.load().select(None, &model.name)?.clone();
        self.preprocess_with(&pipeline, &spec_view(&model, &version), image, None, deadline, &GuestRuns::default())
    }

    fn preprocess_with(
        &self,
        pipeline: &Pipeline,
        spec: &SpecView<'_>,
        image: &[u8],
        media_type: Option<&str>,
        deadline: Instant,
        ran: &GuestRuns,
    ) -> Result<Vec<f32>, RequestError> {
        let stage = &pipeline.preprocess;
        self.guest(Stage::Preprocess, &stage.name, ran, || {
            self.runtime.preprocess(stage, image, media_type, spec, &self.limits, deadline)
        })
    }

    /// Instances of `pipeline`'s postprocess and rules guests, for this request's calls.
    fn prepare_after_inference(&self, pipeline: &Pipeline, deadline: Instant) -> Prepared {
        Prepared {
            postprocess: self.runtime.prepare_postprocess(&pipeline.postprocess, deadline),
            rules: pipeline.rules.iter().map(|rule| self.runtime.prepare_rules(rule, deadline)).collect(),
        }
    }

    /// Runs `pipeline`'s rules in order, each on its instance in `prepared` (made for this
    /// request), until one rejects.
    fn run_rules(
        &self,
        pipeline: &Pipeline,
        prepared: Vec<PreparedRules>,
        preds: &[Prediction],
        metadata: &[(String, String)],
        deadline: Instant,
        ran: &GuestRuns,
    ) -> Result<Decision, RequestError> {
        let mut decision = Decision {
            accepted: true,
            reason: "no rules configured".into(),
            category: None,
            tags: Vec::new(),
            rule: None,
        };
        let inference: Arc<dyn GuestInference> = self.repo.clone();
        let mut prepared = prepared.into_iter();
        for rule in &pipeline.rules {
            let instance = prepared.next();
            decision = self.guest(Stage::Rules, &rule.name, ran, || {
                self.runtime.decide(rule, instance, preds, metadata, inference.clone(), deadline)
            })?;
            self.metrics.rule_decision(&rule.name, decision.accepted);
            if !decision.accepted {
                break;
            }
        }
        self.runtime.discard(prepared);
        Ok(decision)
    }
}

/// What a task's `engines` calls reach: the repository's models that its config names, and no
/// other.
struct TaskModels {
    repo: Arc<ModelRepository>,
    task: Arc<Task>,
    /// Time in `engines.run` and `inference.infer` calls (queue wait and run), for `timings_ms.engine`.
    engine: Mutex<Duration>,
}

impl TaskModels {
    /// `call`, its time added to the engine time.
    fn timed<T>(&self, call: impl FnOnce() -> T) -> T {
        let start = Instant::now();
        let result = call();
        *self.engine.lock().unwrap_or_else(|e| e.into_inner()) += start.elapsed();
        result
    }

    fn allowed(&self, model: &str) -> Result<(), RequestError> {
        if self.task.models.iter().any(|m| m == model) {
            return Ok(());
        }
        Err(RequestError::new(
            ErrorKind::ModelNotFound,
            Stage::Task,
            format!(
                "task {} may not call model {model:?}; its config names {}",
                self.task.name,
                if self.task.models.is_empty() { "none".to_string() } else { self.task.models.join(", ") }
            ),
        ))
    }
}

impl GuestInference for TaskModels {
    fn infer(
        &self,
        model: &str,
        version: Option<&str>,
        shape: &[u32],
        input: Vec<f32>,
        deadline: Instant,
    ) -> Result<Vec<f32>, RequestError> {
        self.allowed(model)?;
        self.timed(|| self.repo.infer(model, version, shape, input, deadline))
    }

    fn describe(&self, model: &str, version: Option<&str>) -> Result<ModelDescription, RequestError> {
        self.allowed(model)?;
        self.repo.describe(model, version)
    }

    fn run(
        &self,
        model: &str,
        version: Option<&str>,
        shape: &[u32],
        input: Vec<f32>,
        deadline: Instant,
    ) -> Result<Vec<NamedTensor>, RequestError> {
        self.allowed(model)?;
        self.timed(|| self.repo.run(model, version, shape, input, deadline))
    }
}

impl ModelRepository {
    /// `model`'s `version` (or default one) on `input` of `shape`, checked against its input,
    /// within the span `span` makes for the version: the output's values and the version.
    #[allow(clippy::too_many_arguments)]
    fn run_checked(
        &self,
        model: &str,
        version: Option<&str>,
        shape: &[u32],
        input: Vec<f32>,
        deadline: Instant,
        stage: Stage,
        span: impl FnOnce(u64) -> tracing::Span,
    ) -> Result<(Vec<f32>, Arc<ModelVersion>), RequestError> {
        let snapshot = self.snapshot();
        let version = snapshot.get(model)?.resolve(version)?;
        let span = span(version.version);
        let _entered = span.enter();
        let dims: Vec<usize> = shape.iter().map(|&d| d as usize).collect();
        check_shape(model, version.pool.input_shape(), &dims, stage)?;
        let data = version.pool.run(input, deadline).inspect_err(|e| record_error(&span, e))?;
        Ok((data, version))
    }
}

/// A rules guest's `inference` import and a task's `engines`: the model repository, as requests
/// see it (a task's calls go through [`TaskModels`] first).
impl GuestInference for ModelRepository {
    fn infer(
        &self,
        model: &str,
        version: Option<&str>,
        shape: &[u32],
        input: Vec<f32>,
        deadline: Instant,
    ) -> Result<Vec<f32>, RequestError> {
        let span = |v: u64| tracing::info_span!("guest inference", model, version = v, error.type = Empty);
        Ok(self.run_checked(model, version, shape, input, deadline, Stage::Rules, span)?.0)
    }

    fn describe(&self, model: &str, version: Option<&str>) -> Result<ModelDescription, RequestError> {
        let snapshot = self.snapshot();
        let found = snapshot.get(model)?;
        let v = found.resolve(version)?;
        let spec = spec_view(found, &v);
        Ok(ModelDescription {
            name: found.name.clone(),
            version: v.version,
            input_shape: spec.input_shape,
            mean: spec.mean,
            std: spec.std,
            resize: spec.resize,
            labels: found.labels.to_vec(),
        })
    }

    fn run(
        &self,
        model: &str,
        version: Option<&str>,
        shape: &[u32],
        input: Vec<f32>,
        deadline: Instant,
    ) -> Result<Vec<NamedTensor>, RequestError> {
        let span = |v: u64| tracing::info_span!("engine run", model, version = v, error.type = Empty);
        let (data, version) = self.run_checked(model, version, shape, input, deadline, Stage::Task, span)?;
        let io = version.pool.io();
        Ok(vec![NamedTensor {
            name: io.output_name.clone(),
            shape: io.output_shape.iter().map(|&d| d as u32).collect(),
            data,
        }])
    }
}

/// Runs one stage of a request in its span (a child of the request's), telling `progress`
/// it started and writing how long it took to `timing`.
fn in_stage<T>(
    progress: &Progress,
    stage: Stage,
    timing: &mut f64,
    work: impl FnOnce() -> Result<T, RequestError>,
) -> Result<T, RequestError> {
    progress.enter(stage);
    let span = tracing::info_span!(
        "stage",
        otel.name = stage.as_str(),
        otel.status_code = Empty,
        otel.status_description = Empty,
        model = Empty,
        version = Empty,
        error.type = Empty,
    );
    let t = Instant::now();
    let result = span.in_scope(work);
    *timing = ms(t.elapsed());
    if let Err(e) = &result {
        record_error(&span, e);
    }
    result
}

/// Marks `span` as failed with `e`: its code, and for system errors (not the caller's) an
/// error status with the message.
fn record_error(span: &Span, e: &RequestError) {
    span.record("error.type", e.kind.code());
    if !e.kind.is_business() {
        span.record("otel.status_code", "error").record("otel.status_description", e.message.as_str());
    }
}

/// Refuses a tensor whose shape is not the model's input shape.
fn check_shape(model: &str, expected: &[usize], got: &[usize], stage: Stage) -> Result<(), RequestError> {
    if got != expected {
        return Err(RequestError::new(
            ErrorKind::BadRequest,
            stage,
            format!("model {model:?} takes shape {expected:?}, got {got:?}"),
        ));
    }
    Ok(())
}

fn spec_view<'a>(model: &'a Model, version: &ModelVersion) -> SpecView<'a> {
    model.manifest.spec_view(&model.name, version.version, model.labels.len() as u32)
}
