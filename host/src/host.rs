//! [`Host`]: the library's entry point. A builder loads the configuration, the model
//! repository and the guest components of every pipeline; the host classifies, reloads and
//! reports what it serves.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use arc_swap::ArcSwap;
use serde::Serialize;

use crate::config::{Config, ConfigError, Limits, RuleConfig, TaskConfig};
use crate::error::{RequestError, Stage};
use crate::inference::ModelIo;
use crate::inference::probe::LoadProbe;
use crate::inference::{self, EngineConfig};
use crate::metrics::{Metrics, SampledState};
use crate::pipeline::{Classification, ModelRef, Pipeline, Pipelines, Runner, Task, TaskResult, TensorOutput};
use crate::repository::{self, FileStamp, ModelRepository, RepositoryError};
use crate::request::{ClassifyRequest, Progress, RequestContext, TensorRequest};
use crate::runtime::{self, CompileTarget, Inspection, Runtime, RuntimeError, default_grants};
use crate::stage_io::TaskInput;
use crate::watch;

/// Why a host could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Repository(#[from] RepositoryError),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error("default model {0:?} is not in the repository")]
    NoDefaultModel(String),
}

/// Models loaded, guests compiled, ready for requests. Cheap to share behind an `Arc`.
pub struct Host {
    runner: Runner,
    config: Config,
    /// One reload (models and guests) at a time.
    reloading: Mutex<()>,
}

/// Builds a [`Host`] from a [`Config`] with optional overrides.
#[derive(Debug, Clone, Default)]
pub struct HostBuilder {
    config: Config,
    metrics: Option<Arc<Metrics>>,
    cancel: Option<Arc<AtomicBool>>,
}

impl HostBuilder {
    /// Starts from a whole configuration.
    pub fn config(mut self, config: Config) -> Self {
        self.config = config;
        self
    }

    /// The model repository directory.
    pub fn models(mut self, dir: impl Into<PathBuf>) -> Self {
        self.config.models_dir = dir.into();
        self
    }

    pub fn preprocess(mut self, path: impl Into<PathBuf>) -> Self {
        self.config.guests.preprocess = path.into();
        self
    }

    pub fn postprocess(mut self, path: impl Into<PathBuf>) -> Self {
        self.config.guests.postprocess = path.into();
        self
    }

    /// Replaces the rules chain.
    pub fn rules(mut self, rules: Vec<RuleConfig>) -> Self {
        self.config.guests.rules = rules;
        self
    }

    /// Replaces the task guests (`[tasks.<name>]`; none by default).
    pub fn tasks(mut self, tasks: BTreeMap<String, TaskConfig>) -> Self {
        self.config.tasks = tasks;
        self
    }

    /// Where compiled guests are cached (`None`: compile afresh, keep nothing on disk).
    pub fn compile_cache_dir(mut self, dir: Option<PathBuf>) -> Self {
        self.config.compile_cache_dir = dir;
        self
    }

    pub fn limits(mut self, limits: Limits) -> Self {
        self.config.limits = limits;
        self
    }

    /// Records into `metrics` (e.g. a server's, made before the host exists); default: the
    /// host's own.
    pub fn metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Model load probes still running stop when `flag` turns true (a server stopping while it
    /// loads): their versions fail as cancelled, so the build ends within one in-process load.
    pub fn cancel_loading(mut self, flag: Arc<AtomicBool>) -> Self {
        self.cancel = Some(flag);
        self
    }

    /// Loads every model version and compiles every guest; fails fast on the first problem.
    pub fn build(self) -> Result<Host, BuildError> {
        let config = self.config;
        config.validate()?;
        let amx = config.inference.tract.amx_int8;
        if crate::inference::request_amx_int8(amx) != amx {
            tracing::warn!(
                requested = amx,
                "amx_int8 was already fixed for this process by an earlier host; keeping the earlier choice"
            );
        }
        crate::inference::configure_onnxruntime(config.inference.onnxruntime.library.clone());
        let metrics = self.metrics.unwrap_or_default();
        let runtime = Runtime::new(&config.limits, config.compile_cache_dir.as_deref())?
            .counting_output_in(metrics.guest_output_dropped());
        let runtime = Arc::new(runtime);
        let pipelines = load_pipelines(&runtime, &config)?;
        let engine = EngineConfig {
            mode: config.inference_mode,
            threads: config.inference_workers(),
            queue_len: config.limits.inference_queue_len as usize,
        };
        let probe = config.inference.load_probe.binary().map(|exe| LoadProbe {
            executable: exe.to_path_buf(),
            memory_bytes: config.limits.model_load_memory_bytes,
            timeout: std::time::Duration::from_millis(config.limits.model_load_timeout_ms),
            onnxruntime_library: config.inference.onnxruntime.library.clone(),
            cancel: self.cancel.clone(),
        });
        let repo = Arc::new(ModelRepository::load_probed(&config.models_dir, engine, probe)?);
        if let Some(name) = &config.default_model
            && !repo.snapshot().models.contains_key(name)
        {
            return Err(BuildError::NoDefaultModel(name.clone()));
        }
        let runner = Runner {
            runtime,
            repo,
            pipelines: ArcSwap::from_pointee(pipelines),
            limits: config.limits.clone(),
            default_model: config.default_model.clone(),
            metrics,
        };
        Ok(Host { runner, config, reloading: Mutex::new(()) })
    }
}

/// Says how the component at `path` would load as a guest granted `grants` (`tessera inspect`):
/// the world it fits, what becomes of each import, its exports. Uses `config`'s limits and
/// compile cache.
pub fn inspect(
    config: &Config,
    path: &std::path::Path,
    grants: &[crate::config::WasiGrant],
) -> Result<Inspection, BuildError> {
    let runtime = Runtime::new(&config.limits, config.compile_cache_dir.as_deref())?;
    Ok(runtime.inspect(path, &grants.iter().copied().collect())?)
}

/// Compiles the guest component at `input` ahead of time into `output` (`tessera compile`): a
/// `.cwasm` of native code for this build of Tessera and `config`'s engine settings, which the
/// host then loads without compiling (from a trusted path only; see docs/guests.md). Refuses a
/// component that would not load as a guest; returns what `inspect` says of the result.
///
/// For another CPU or architecture (`target`), the component is first checked here (compiled
/// for this machine), then compiled for the target; the result is not loaded here (it may need
/// features this machine lacks, or be another architecture's code).
pub fn compile(
    config: &Config,
    input: &std::path::Path,
    output: &std::path::Path,
    target: &CompileTarget,
) -> Result<Inspection, BuildError> {
    let write = |source| RuntimeError::Read { path: output.to_path_buf(), source };
    if !target.is_native() {
        let report = Runtime::new(&config.limits, None)?.inspect(input, &default_grants())?;
        if let Err(message) = &report.fits {
            return Err(RuntimeError::Invalid {
                path: input.to_path_buf(),
                world: report.world.unwrap_or("guest"),
                message: message.clone(),
            }
            .into());
        }
        let native = Runtime::with_target(&config.limits, None, target)?.precompile(input)?;
        let partial = output.with_extension("partial");
        std::fs::write(&partial, &native).map_err(write)?;
        std::fs::rename(&partial, output).map_err(write)?;
        return Ok(Inspection { path: output.to_path_buf(), bytes: native.len(), precompiled: true, ..report });
    }
    let runtime = Runtime::new(&config.limits, None)?;
    let native = runtime.precompile(input)?;
    // Written beside the target, checked, and renamed over it: a host loading the old file
    // never sees half of the new one, nor one that would not load.
    let partial = output.with_extension("partial");
    std::fs::write(&partial, &native).map_err(write)?;
    let report = runtime.inspect(&partial, &default_grants());
    let report = match report {
        Ok(report) if report.fits.is_ok() => report,
        Ok(report) => {
            let _ = std::fs::remove_file(&partial);
            let message = report.fits.err().unwrap_or_default();
            return Err(RuntimeError::Invalid {
                path: input.to_path_buf(),
                world: report.world.unwrap_or("guest"),
                message,
            }
            .into());
        }
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            return Err(e.into());
        }
    };
    std::fs::rename(&partial, output).map_err(write)?;
    Ok(Inspection { path: output.to_path_buf(), ..report })
}

/// Compiles (or loads from the compile cache) every configured pipeline's guests, each
/// component once however many pipelines use it.
fn load_pipelines(runtime: &Runtime, config: &Config) -> Result<Pipelines, RuntimeError> {
    let mut pre: HashMap<(PathBuf, runtime::Grants), runtime::PreprocessGuest> = HashMap::new();
    let mut post: HashMap<(PathBuf, runtime::Grants), runtime::PostprocessGuest> = HashMap::new();
    let mut rules: HashMap<(PathBuf, runtime::Grants), runtime::RulesGuest> = HashMap::new();
    let mut by_name = BTreeMap::new();
    for (name, g) in config.resolved_pipelines() {
        let key = (g.preprocess.clone(), g.preprocess_wasi.iter().copied().collect::<runtime::Grants>());
        let preprocess = match pre.get(&key) {
            Some(guest) => guest.clone(),
            None => runtime.load_preprocess(&g.preprocess, key.1.clone())?,
        };
        pre.insert(key, preprocess.clone());
        let key = (g.postprocess.clone(), g.postprocess_wasi.iter().copied().collect::<runtime::Grants>());
        let postprocess = match post.get(&key) {
            Some(guest) => guest.clone(),
            None => runtime.load_postprocess(&g.postprocess, key.1.clone())?,
        };
        post.insert(key, postprocess.clone());
        let mut chain = Vec::with_capacity(g.rules.len());
        for r in &g.rules {
            let settings = r.config.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
            let key = (r.path.clone(), r.wasi.iter().copied().collect::<runtime::Grants>());
            let guest = match rules.get(&key) {
                Some(guest) => guest.with_config(settings),
                None => runtime.load_rules(&r.path, settings, key.1.clone())?,
            };
            rules.insert(key, guest.clone());
            chain.push(guest);
        }
        by_name.insert(name.clone(), Arc::new(Pipeline { name, preprocess, postprocess, rules: chain }));
    }
    let by_model =
        config.pipelines.iter().flat_map(|(name, p)| p.models.iter().map(move |m| (m.clone(), name.clone()))).collect();
    let mut tasks = BTreeMap::new();
    for (name, t) in &config.tasks {
        let guest = runtime.load_task(&t.path, t.wasi.iter().copied().collect())?;
        tasks.insert(name.clone(), Arc::new(Task { name: name.clone(), guest, models: t.models.clone() }));
    }
    Ok(Pipelines { by_name, by_model, tasks, sources: guest_stamps(config) })
}

fn guest_stamps(config: &Config) -> Vec<FileStamp> {
    config.guest_paths().iter().map(|p| FileStamp::of(p)).collect()
}

/// What a reload did.
#[derive(Debug, Clone, Serialize)]
pub struct ReloadReport {
    /// Every model with the state of each version (`ready`, `failed` with a reason).
    pub models: Vec<ModelStatus>,
    /// Model directories that could not be read (bad `model.toml` or labels), with the reason;
    /// a model that was serving before keeps serving.
    pub failed_models: BTreeMap<String, String>,
    /// `unchanged`, `reloaded`, or `failed: <reason>` (the old guests keep serving).
    pub guests: String,
}

/// A model as listings show it.
#[derive(Debug, Clone, Serialize)]
pub struct ModelStatus {
    pub name: String,
    pub default: bool,
    /// The versions that serve.
    pub ready_versions: Vec<String>,
    /// The version a request without `version` gets.
    pub default_version: Option<String>,
    pub version_policy: repository::VersionPolicy,
    /// Every version the policy selects, with its state.
    pub versions: Vec<VersionStatus>,
    pub input_shape: [u32; 4],
    pub labels: Vec<String>,
    pub description: Option<String>,
    /// The engine that runs it (`tract` or `onnxruntime`, from its `model.toml`).
    pub engine: inference::EngineKind,
    /// What its output is: `classes` (one score per label) or `any` (read by tasks).
    pub output: repository::OutputKind,
    /// The pipeline its requests get when they select none; empty for a model whose output is
    /// `any`, which no pipeline runs.
    pub pipeline: String,
    /// Why the model's directory could not be read again (`model.toml`, labels): the versions
    /// listed are the last good ones, still serving. Absent when it read fine.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A model directory that could not be read at all (a `model.toml` that does not parse, labels
/// missing or outside it) and has no earlier copy serving: listed so that it is not just a line
/// in the log.
#[derive(Debug, Clone, Serialize)]
pub struct UnloadableModel {
    pub name: String,
    /// Always `failed`.
    pub state: &'static str,
    pub error: String,
    /// Always empty: nothing of it serves.
    pub ready_versions: Vec<String>,
}

/// A configured task as listings show it (`GET /v1/tasks`).
#[derive(Debug, Clone, Serialize)]
pub struct TaskStatus {
    pub name: String,
    /// The task guest's name (its file's stem).
    pub guest: String,
    /// The models its `engines` calls may reach.
    pub models: Vec<String>,
    /// The WASI it was granted.
    pub wasi: Vec<crate::config::WasiGrant>,
}

/// A configured pipeline as listings show it (`GET /v1/pipelines`).
#[derive(Debug, Clone, Serialize)]
pub struct PipelineStatus {
    pub name: String,
    pub preprocess: String,
    /// The WASI the preprocess guest was granted (`preprocess_wasi`).
    pub preprocess_wasi: Vec<crate::config::WasiGrant>,
    pub postprocess: String,
    /// The WASI the postprocess guest was granted (`postprocess_wasi`).
    pub postprocess_wasi: Vec<crate::config::WasiGrant>,
    /// The rules chain's guests, in order.
    pub rules: Vec<String>,
    /// The models whose requests get it when they select none (every other model, for
    /// `default`).
    pub models: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct VersionStatus {
    pub version: String,
    #[serde(flatten)]
    pub state: repository::VersionState,
    /// Dynamic batching in force for this version and what it did (absent when off).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batching: Option<inference::BatchStats>,
}

/// The preprocess stage alone, for a model manifest that may have no weights yet: what
/// training tools use so that training sees exactly the tensors serving computes.
pub struct Preprocessor {
    runtime: Runtime,
    guest: runtime::PreprocessGuest,
    manifest: repository::Manifest,
    limits: Limits,
}

impl Preprocessor {
    /// Loads `config.guests.preprocess` for the model described by `model_toml`.
    pub fn new(config: &Config, model_toml: &std::path::Path) -> Result<Self, BuildError> {
        config.validate()?;
        let runtime = Runtime::new(&config.limits, config.compile_cache_dir.as_deref())?;
        let grants = config.guests.preprocess_wasi.iter().copied().collect();
        let guest = runtime.load_preprocess(&config.guests.preprocess, grants)?;
        let manifest = repository::Manifest::from_file(model_toml)?;
        Ok(Preprocessor { runtime, guest, manifest, limits: config.limits.clone() })
    }

    /// The model input for one encoded image.
    pub fn run(&self, image: &[u8]) -> Result<Vec<f32>, RequestError> {
        let spec = self.manifest.spec_view("preprocess", 0, 0);
        let deadline = Instant::now() + std::time::Duration::from_millis(self.limits.deadline_ms);
        self.runtime
            .preprocess(&self.guest, image, None, &spec, &self.limits, deadline)
            .map(|(data, _)| data)
            .map_err(|f| f.into_pipeline(Stage::Preprocess, &self.guest.name))
    }
}

impl Host {
    pub fn builder() -> HostBuilder {
        HostBuilder::default()
    }

    /// A context for a request arriving now: due within `limits.deadline_ms`, for the default
    /// model and pipeline. Its `with_*` methods change what it asks for.
    pub fn context(&self) -> RequestContext {
        RequestContext::new(&self.config.limits, Instant::now(), None)
    }

    /// Classifies `req.image` as its context asks. Blocks the calling thread.
    pub fn classify(&self, req: &ClassifyRequest) -> Result<Classification, RequestError> {
        self.runner.classify(req, &Progress::default())
    }

    /// Like [`Host::classify`], telling `progress` which stage is running: a caller that stops
    /// waiting (the server at the deadline) can say where the time went.
    pub fn classify_tracked(&self, req: &ClassifyRequest, progress: &Progress) -> Result<Classification, RequestError> {
        self.runner.classify(req, progress)
    }

    /// The model alone on a tensor the caller made (`shape` must be the model's input shape):
    /// its raw output. Blocks.
    pub fn infer(&self, tensor: TensorRequest) -> Result<TensorOutput, RequestError> {
        self.runner.infer(tensor, &Progress::default())
    }

    /// Runs task `name` (`[tasks.<name>]`) on `input` under `context` (its deadline): the task
    /// guest's answer. Blocks.
    pub fn run_task(
        &self,
        name: &str,
        input: &TaskInput,
        context: &RequestContext,
        progress: &Progress,
    ) -> Result<TaskResult, RequestError> {
        self.runner.run_task(name, input, context, progress)
    }

    /// The configured tasks (`GET /v1/tasks`).
    pub fn tasks(&self) -> Vec<TaskStatus> {
        self.runner
            .tasks()
            .into_iter()
            .map(|(name, guest, models, wasi)| TaskStatus { name, guest, models, wasi })
            .collect()
    }

    /// Like [`Host::infer`], telling `progress` which stage is running.
    pub fn infer_tracked(&self, tensor: TensorRequest, progress: &Progress) -> Result<TensorOutput, RequestError> {
        self.runner.infer(tensor, progress)
    }

    /// What a model version takes and gives, as its engine sees it.
    pub fn model_io(&self, model: Option<&str>, version: Option<&str>) -> Result<(ModelRef, ModelIo), RequestError> {
        let (m, v) = self.runner.resolve(model, version)?;
        Ok((ModelRef { name: m.name.clone(), version: v.version.to_string() }, v.pool.io().clone()))
    }

    /// The input tensor the model would get for `image` (preprocess stage only).
    pub fn preprocess(&self, image: &[u8], model: Option<&str>) -> Result<Vec<f32>, RequestError> {
        self.runner.preprocess(image, model, self.context().deadline())
    }

    /// The name of the model used when a request names none.
    pub fn default_model(&self) -> Option<String> {
        self.runner.default_model_name()
    }

    /// Every model with its versions and their states.
    pub fn models(&self) -> Vec<ModelStatus> {
        let snapshot = self.runner.repo.snapshot();
        let default = self.default_model();
        let pipelines = self.runner.pipelines.load();
        snapshot
            .models
            .values()
            .map(|m| ModelStatus {
                name: m.name.clone(),
                default: default.as_deref() == Some(m.name.as_str()),
                ready_versions: m.versions.keys().map(u64::to_string).collect(),
                default_version: m.resolve(None).ok().map(|v| v.version.to_string()),
                version_policy: m.manifest.version_policy.clone(),
                versions: m
                    .states
                    .iter()
                    .map(|(v, state)| VersionStatus {
                        version: v.to_string(),
                        state: state.clone(),
                        batching: m.versions.get(v).and_then(|loaded| loaded.pool.batch_stats()),
                    })
                    .collect(),
                input_shape: m.manifest.input_shape,
                labels: m.labels.to_vec(),
                description: m.manifest.description.clone(),
                engine: m.manifest.engine,
                output: m.manifest.output,
                pipeline: match m.manifest.output {
                    repository::OutputKind::Classes => {
                        pipelines.select(None, &m.name).map(|p| p.name.clone()).unwrap_or_default()
                    }
                    repository::OutputKind::Any => String::new(),
                },
                error: snapshot.failed.get(&m.name).cloned(),
            })
            .collect()
    }

    /// Model directories that could not be read and have nothing serving, with the reason.
    pub fn unloadable_models(&self) -> Vec<UnloadableModel> {
        let snapshot = self.runner.repo.snapshot();
        snapshot
            .failed
            .iter()
            .filter(|(name, _)| !snapshot.models.contains_key(*name))
            .map(|(name, error)| UnloadableModel {
                name: name.clone(),
                state: "failed",
                error: error.clone(),
                ready_versions: Vec::new(),
            })
            .collect()
    }

    /// Every configured pipeline: its guests and the models it serves by default.
    pub fn pipelines(&self) -> Vec<PipelineStatus> {
        let pipelines = self.runner.pipelines.load();
        let models = self.models();
        pipelines
            .by_name
            .values()
            .map(|p| PipelineStatus {
                name: p.name.clone(),
                preprocess: p.preprocess.name.clone(),
                preprocess_wasi: p.preprocess.grants.iter().copied().collect(),
                postprocess: p.postprocess.name.clone(),
                postprocess_wasi: p.postprocess.grants.iter().copied().collect(),
                rules: p.rules.iter().map(|r| r.name.clone()).collect(),
                models: models.iter().filter(|m| m.pipeline == p.name).map(|m| m.name.clone()).collect(),
            })
            .collect()
    }

    /// Rescans the model repository and the guest files and swaps in whatever changed.
    /// Requests already running finish on what they started with; anything that fails to
    /// load is reported and the previous version keeps serving.
    pub fn reload(&self) -> ReloadReport {
        let _one_at_a_time = self.reloading.lock().unwrap_or_else(|e| e.into_inner());
        let failed_models = match self.runner.repo.reload() {
            Ok(snapshot) => snapshot.failed.clone(),
            Err(e) => {
                tracing::error!(error = %e, "model repository not reloaded");
                BTreeMap::from([("*".to_string(), e.to_string())])
            }
        };
        let guests = if self.runner.pipelines.load().sources == guest_stamps(&self.config) {
            "unchanged".to_string()
        } else {
            match load_pipelines(&self.runner.runtime, &self.config) {
                Ok(pipelines) => {
                    self.runner.pipelines.store(Arc::new(pipelines));
                    tracing::info!("guest components reloaded");
                    "reloaded".to_string()
                }
                Err(e) => {
                    tracing::error!(error = %e, "guest components not reloaded; the previous ones keep serving");
                    format!("failed: {e}")
                }
            }
        };
        ReloadReport { models: self.models(), failed_models, guests }
    }

    /// Starts watching the model directory and guest files, reloading on changes (debounced).
    /// Watching stops when the returned guard is dropped.
    pub fn watch(self: &Arc<Self>) -> Result<watch::WatchGuard, watch::WatchError> {
        let host = Arc::downgrade(self);
        watch::watch(self.config(), move || {
            let Some(host) = host.upgrade() else { return false };
            let report = host.reload();
            tracing::info!(?report, "reloaded after file changes");
            true
        })
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// What the host has counted (requests, stages, models, guests).
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.runner.metrics
    }

    /// The metrics in Prometheus' text format, with the state gauges (queue depth per model
    /// version, loaded versions, guest instances in use) sampled now.
    pub fn metrics_text(&self) -> String {
        let snapshot = self.runner.repo.snapshot();
        let runtime = &self.runner.runtime;
        let mut state = SampledState {
            guest_instances: runtime.live_instances(),
            guest_memory_bytes: runtime.guest_memory_in_use(),
            guest_warm_memories: runtime.warm_memory_slots(),
            ..Default::default()
        };
        for m in snapshot.models.values() {
            state.versions_loaded.push((m.name.clone(), m.versions.len()));
            for (v, loaded) in &m.versions {
                state.queue_depths.push((m.name.clone(), *v, loaded.pool.in_flight()));
            }
            for (v, s) in &m.states {
                state.version_states.push((m.name.clone(), *v, matches!(s, repository::VersionState::Ready)));
            }
        }
        self.runner.metrics.sample(&state);
        self.runner.metrics.encode()
    }
}
