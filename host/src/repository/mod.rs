//! The model repository: `<dir>/<name>/model.toml`, its labels file, and integer version
//! directories `<dir>/<name>/<version>/model.onnx`, each loaded into its own inference pool.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::error::{ErrorKind, PipelineError, Stage};
use crate::inference::InferencePool;

/// A model's `model.toml`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// NCHW input shape, batch 1: `[1, 3, height, width]`.
    pub input_shape: [u32; 4],
    /// Shorter side after the first resize, before the centre crop.
    pub resize: u32,
    pub mean: [f32; 3],
    pub std: [f32; 3],
    /// Labels file, one per line, relative to `model.toml`.
    pub labels: PathBuf,
    /// The version served when a request names none; absent = the highest.
    #[serde(default)]
    pub default_version: Option<u64>,
    #[serde(default)]
    pub description: Option<String>,
}

/// Why the repository could not be loaded. Each names the file and, where it applies, the field.
#[derive(Debug, thiserror::Error)]
pub enum RepositoryError {
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error(transparent)]
    Load(#[from] crate::inference::LoadError),
}

/// One loaded version of a model.
pub struct ModelVersion {
    pub version: u64,
    pub pool: InferencePool,
}

/// A model: its manifest, labels and loaded versions.
pub struct Model {
    pub name: String,
    pub manifest: Manifest,
    pub labels: Arc<[String]>,
    pub versions: BTreeMap<u64, Arc<ModelVersion>>,
}

impl Model {
    /// The version a request gets: the pinned one, else the manifest's default, else the newest.
    pub fn resolve(&self, version: Option<&str>) -> Result<Arc<ModelVersion>, PipelineError> {
        let not_found = |msg: String| PipelineError::new(ErrorKind::ModelNotFound, Stage::Admission, msg);
        let wanted = match version {
            Some(v) => Some(v.parse::<u64>().map_err(|_| {
                PipelineError::new(
                    ErrorKind::BadRequest,
                    Stage::Admission,
                    format!("version {v:?} is not a version number; versions are integers like 1"),
                )
            })?),
            None => self.manifest.default_version,
        };
        match wanted {
            Some(v) => self.versions.get(&v).cloned().ok_or_else(|| {
                not_found(format!(
                    "model {:?} has no version {v}; available: {:?}",
                    self.name,
                    self.versions.keys().collect::<Vec<_>>()
                ))
            }),
            None => self
                .versions
                .values()
                .next_back()
                .cloned()
                .ok_or_else(|| not_found(format!("model {:?} has no loaded version", self.name))),
        }
    }
}

/// Every model under one directory.
pub struct ModelRepository {
    pub dir: PathBuf,
    pub models: BTreeMap<String, Arc<Model>>,
}

/// How inference pools are sized.
#[derive(Debug, Clone, Copy)]
pub struct PoolSizing {
    pub workers: usize,
    pub queue_len: usize,
}

impl ModelRepository {
    /// Loads every `<dir>/<name>/model.toml` and all of its version directories.
    pub fn load(dir: &Path, sizing: PoolSizing) -> Result<Self, RepositoryError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| RepositoryError::Io { path, source }
        };
        let mut models = BTreeMap::new();
        let mut entries: Vec<_> =
            std::fs::read_dir(dir).map_err(io(dir))?.filter_map(Result::ok).map(|e| e.path()).collect();
        entries.sort();
        for path in entries {
            if !path.join("model.toml").is_file() {
                continue; // e.g. models/tools
            }
            let model = load_model(&path, sizing)?;
            models.insert(model.name.clone(), Arc::new(model));
        }
        if models.is_empty() {
            return Err(RepositoryError::Invalid {
                path: dir.to_path_buf(),
                message: "no model found: expected <name>/model.toml and <name>/<version>/model.onnx".into(),
            });
        }
        Ok(ModelRepository { dir: dir.to_path_buf(), models })
    }

    pub fn get(&self, name: &str) -> Result<&Arc<Model>, PipelineError> {
        self.models.get(name).ok_or_else(|| {
            PipelineError::new(
                ErrorKind::ModelNotFound,
                Stage::Admission,
                format!("no model named {name:?}; available: {:?}", self.models.keys().collect::<Vec<_>>()),
            )
        })
    }
}

impl Manifest {
    /// Reads and checks a `model.toml`, naming the file and field at fault.
    pub fn from_file(toml_path: &Path) -> Result<Manifest, RepositoryError> {
        let text = std::fs::read_to_string(toml_path)
            .map_err(|source| RepositoryError::Io { path: toml_path.to_path_buf(), source })?;
        let invalid = |message: String| RepositoryError::Invalid { path: toml_path.to_path_buf(), message };
        let manifest: Manifest = toml::from_str(&text).map_err(|e| invalid(e.to_string()))?;
        let [n, c, h, w] = manifest.input_shape;
        if n != 1 || c != 3 || h == 0 || w == 0 {
            return Err(invalid(format!("input_shape must be [1, 3, height, width], got {:?}", manifest.input_shape)));
        }
        if manifest.resize < h.max(w) {
            return Err(invalid(format!("resize ({}) must be at least the crop size {h}x{w}", manifest.resize)));
        }
        if manifest.std.iter().any(|s| *s <= 0.0) {
            return Err(invalid(format!("std must be positive, got {:?}", manifest.std)));
        }
        Ok(manifest)
    }
}

fn load_model(dir: &Path, sizing: PoolSizing) -> Result<Model, RepositoryError> {
    let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
    let toml_path = dir.join("model.toml");
    let manifest = Manifest::from_file(&toml_path)?;
    let invalid = |message: String| RepositoryError::Invalid { path: toml_path.clone(), message };
    let labels_path = dir.join(&manifest.labels);
    let labels: Vec<String> = std::fs::read_to_string(&labels_path)
        .map_err(|source| RepositoryError::Io { path: labels_path.clone(), source })?
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect();
    if labels.is_empty() {
        return Err(RepositoryError::Invalid { path: labels_path, message: "labels: the file has no labels".into() });
    }

    let shape: Vec<usize> = manifest.input_shape.iter().map(|&d| d as usize).collect();
    let mut versions = BTreeMap::new();
    for entry in std::fs::read_dir(dir).map_err(|source| RepositoryError::Io { path: dir.to_path_buf(), source })? {
        let path = entry.map_err(|source| RepositoryError::Io { path: dir.to_path_buf(), source })?.path();
        let Some(version) = path.file_name().and_then(|n| n.to_str()).and_then(|n| n.parse::<u64>().ok()) else {
            continue;
        };
        let onnx = path.join("model.onnx");
        if !onnx.is_file() {
            return Err(RepositoryError::Invalid {
                path: path.clone(),
                message: "version directory has no model.onnx".into(),
            });
        }
        let pool = InferencePool::load(&onnx, &shape, sizing.workers, sizing.queue_len)?;
        if pool.output_len() != labels.len() {
            return Err(RepositoryError::Invalid {
                path: onnx,
                message: format!(
                    "the model outputs {} classes but {} lists {} labels",
                    pool.output_len(),
                    labels_path.display(),
                    labels.len()
                ),
            });
        }
        tracing::info!(model = %name, version, path = %onnx.display(), "model version loaded");
        versions.insert(version, Arc::new(ModelVersion { version, pool }));
    }
    if versions.is_empty() {
        return Err(invalid("no version directory (<name>/<integer>/model.onnx) found".into()));
    }
    if let Some(v) = manifest.default_version
        && !versions.contains_key(&v)
    {
        return Err(invalid(format!("default_version = {v} but there is no directory {v}/ with model.onnx")));
    }
    Ok(Model { name, manifest, labels: labels.into(), versions })
}
