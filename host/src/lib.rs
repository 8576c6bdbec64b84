//! Tessera: image classification with native tract inference and WebAssembly component stages.
//!
//! The library is the product; the `tessera` binary and its HTTP server are thin layers over
//! it. Embed it in an edge node without any HTTP:
//!
//! ```no_run
//! let host = tessera::Host::builder().models("models").build()?;
//! let result = host.classify(&std::fs::read("cat.png")?)?;
//! println!("{} {:.3}", result.label, result.confidence);
//! # Ok::<(), anyhow::Error>(())
//! ```

pub mod config;
pub mod error;
pub mod inference;
pub mod pipeline;
pub mod repository;
pub mod runtime;
pub mod server;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

pub use config::{Config, ConfigError, Limits, RuleConfig};
pub use error::{ErrorKind, PipelineError, Stage};
pub use pipeline::{Classification, ClassifyRequest, ModelRef, Timings, Verdict};
pub use repository::{ModelRepository, RepositoryError};
pub use runtime::{Decision, Prediction, RuntimeError};

use pipeline::{Pipeline, Stages};
use repository::PoolSizing;
use runtime::Runtime;

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

/// A ready pipeline: models loaded, guests compiled. Cheap to share behind an `Arc`.
pub struct Host {
    pipeline: Pipeline,
    config: Config,
}

/// Builds a [`Host`] from a [`Config`] with optional overrides.
#[derive(Debug, Clone, Default)]
pub struct HostBuilder {
    config: Config,
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

    pub fn limits(mut self, limits: Limits) -> Self {
        self.config.limits = limits;
        self
    }

    /// Loads every model version and compiles every guest; fails fast on the first problem.
    pub fn build(self) -> Result<Host, BuildError> {
        let config = self.config;
        config.validate()?;
        let runtime = Arc::new(Runtime::new(&config.limits, config.compile_cache_dir.as_deref())?);
        let stages = Stages {
            preprocess: runtime.load_preprocess(&config.guests.preprocess)?,
            postprocess: runtime.load_postprocess(&config.guests.postprocess)?,
            rules: config
                .guests
                .rules
                .iter()
                .map(|r| runtime.load_rules(&r.path, r.config.iter().map(|(k, v)| (k.clone(), v.clone())).collect()))
                .collect::<Result<_, _>>()?,
        };
        let sizing =
            PoolSizing { workers: config.inference_workers(), queue_len: config.limits.inference_queue_len as usize };
        let repo = Arc::new(ModelRepository::load(&config.models_dir, sizing)?);
        let default_model = match &config.default_model {
            Some(name) if repo.models.contains_key(name) => name.clone(),
            Some(name) => return Err(BuildError::NoDefaultModel(name.clone())),
            None => repo.models.keys().next().cloned().expect("repository load refuses an empty directory"),
        };
        let pipeline = Pipeline { runtime, repo, stages, limits: config.limits.clone(), default_model };
        Ok(Host { pipeline, config })
    }
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
        let guest = runtime.load_preprocess(&config.guests.preprocess)?;
        let manifest = repository::Manifest::from_file(model_toml)?;
        Ok(Preprocessor { runtime, guest, manifest, limits: config.limits.clone() })
    }

    /// The model input for one encoded image.
    pub fn run(&self, image: &[u8]) -> Result<Vec<f32>, PipelineError> {
        let spec = runtime::SpecView::new("preprocess", 0, &self.manifest, 0);
        let deadline = Instant::now() + std::time::Duration::from_millis(self.limits.deadline_ms);
        self.runtime
            .preprocess(&self.guest, image, None, &spec, &self.limits, deadline)
            .map_err(|f| f.into_pipeline(Stage::Preprocess, &self.guest.name))
    }
}

impl Host {
    pub fn builder() -> HostBuilder {
        HostBuilder::default()
    }

    /// Classifies an encoded image with the default model and settings.
    pub fn classify(&self, image: &[u8]) -> Result<Classification, PipelineError> {
        self.classify_request(&ClassifyRequest { image: image.to_vec(), ..Default::default() })
    }

    /// Classifies with every option of [`ClassifyRequest`]. Blocks the calling thread.
    pub fn classify_request(&self, req: &ClassifyRequest) -> Result<Classification, PipelineError> {
        self.pipeline.classify(req, Instant::now())
    }

    /// Like [`Host::classify_request`], with the deadline counted from `start` (when the
    /// request arrived, before its body was read).
    pub fn classify_since(&self, req: &ClassifyRequest, start: Instant) -> Result<Classification, PipelineError> {
        self.pipeline.classify(req, start)
    }

    /// The input tensor the model would get for `image` (preprocess stage only).
    pub fn preprocess(&self, image: &[u8], model: Option<&str>) -> Result<Vec<f32>, PipelineError> {
        self.pipeline.preprocess(image, model, self.pipeline.deadline(Instant::now(), None))
    }

    /// The loaded models, for listings.
    pub fn repository(&self) -> &ModelRepository {
        &self.pipeline.repo
    }

    /// The name of the model used when a request names none.
    pub fn default_model(&self) -> &str {
        &self.pipeline.default_model
    }

    pub fn config(&self) -> &Config {
        &self.config
    }
}
