//! The files of a model repository, read and checked: `<dir>/repository.toml`
//! ([`RepositoryManifest`]: the directory's default model), `<dir>/<name>/model.toml`
//! ([`Manifest`]: input, normalization, labels, engine, version policy, batching) and the labels
//! file, confined to the model's directory.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::RepositoryError;
use crate::inference::{Batching, EngineKind};
use crate::stage_io::SpecView;

/// The longest `max_queue_delay_microseconds` accepted: past a second, a wait for a batch is a
/// misconfiguration, not a trade-off.
const MAX_QUEUE_DELAY_US: u64 = 1_000_000;

/// Which versions of a model are loaded and served.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(try_from = "PolicyRepr", into = "PolicyRepr")]
pub enum VersionPolicy {
    /// Only the highest version.
    #[default]
    Latest,
    /// The `n` highest versions.
    LatestN(u32),
    /// Every version present.
    All,
    /// Exactly these versions (those present).
    Specific(Vec<u64>),
}

/// How a policy is written in `model.toml`: `"latest"`, `"all"`, `{ latest = 2 }` or
/// `{ specific = [1, 3] }`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
enum PolicyRepr {
    Name(String),
    LatestN { latest: u32 },
    Specific { specific: Vec<u64> },
}

impl TryFrom<PolicyRepr> for VersionPolicy {
    type Error = String;
    fn try_from(r: PolicyRepr) -> Result<Self, String> {
        match r {
            PolicyRepr::Name(n) if n == "latest" => Ok(VersionPolicy::Latest),
            PolicyRepr::Name(n) if n == "all" => Ok(VersionPolicy::All),
            PolicyRepr::Name(n) => Err(format!(
                "version_policy {n:?} is unknown; use \"latest\", \"all\", {{ latest = N }} or {{ specific = [..] }}"
            )),
            PolicyRepr::LatestN { latest: 0 } => Err("version_policy: latest = 0 would serve nothing".into()),
            PolicyRepr::LatestN { latest } => Ok(VersionPolicy::LatestN(latest)),
            PolicyRepr::Specific { specific } if specific.is_empty() => {
                Err("version_policy: specific = [] would serve nothing".into())
            }
            PolicyRepr::Specific { specific } => Ok(VersionPolicy::Specific(specific)),
        }
    }
}

impl From<VersionPolicy> for PolicyRepr {
    fn from(p: VersionPolicy) -> Self {
        match p {
            VersionPolicy::Latest => PolicyRepr::Name("latest".into()),
            VersionPolicy::All => PolicyRepr::Name("all".into()),
            VersionPolicy::LatestN(n) => PolicyRepr::LatestN { latest: n },
            VersionPolicy::Specific(v) => PolicyRepr::Specific { specific: v },
        }
    }
}

impl VersionPolicy {
    /// The versions to serve out of those present (sorted ascending).
    pub fn select(&self, present: &[u64]) -> Vec<u64> {
        match self {
            VersionPolicy::Latest => present.last().copied().into_iter().collect(),
            VersionPolicy::LatestN(n) => present[present.len().saturating_sub(*n as usize)..].to_vec(),
            VersionPolicy::All => present.to_vec(),
            VersionPolicy::Specific(wanted) => present.iter().copied().filter(|v| wanted.contains(v)).collect(),
        }
    }
}

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
    /// Which versions to load and serve.
    #[serde(default)]
    pub version_policy: VersionPolicy,
    /// The version served when a request names none; absent = the highest ready one.
    #[serde(default)]
    pub default_version: Option<u64>,
    #[serde(default)]
    pub description: Option<String>,
    /// Which engine runs every version: `tract` (the default) or `onnxruntime`.
    #[serde(default)]
    pub engine: EngineKind,
    /// What its output is: one score per label (`classes`, the default, checked at load; what
    /// `/v1/classify` needs) or a shape of its own (`any`: a detector's grid, an embedding), which
    /// only task guests and the OIP tensor route read.
    #[serde(default)]
    pub output: OutputKind,
    /// Dynamic batching (Triton's names): up to this many queued requests run as one batch;
    /// absent or 1: off. Only engines that batch honour it (onnxruntime, for a model whose
    /// batch axis is dynamic); see docs/history/PERFORMANCE-journal.md for where it wins.
    #[serde(default)]
    pub max_batch_size: Option<u32>,
    /// How long a worker holding fewer than `max_batch_size` requests waits for more.
    #[serde(default)]
    pub max_queue_delay_microseconds: u64,
}

/// A model's output, as `output` in its `model.toml` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputKind {
    /// One score per label: a classifier.
    #[default]
    Classes,
    /// Any shape: read by task guests.
    Any,
}

impl Manifest {
    /// What the guests are told of this model: its name and version, input shape, resize and
    /// normalization, and how many labels it has.
    pub fn spec_view<'a>(&self, name: &'a str, version: u64, labels_count: u32) -> SpecView<'a> {
        SpecView {
            name,
            version,
            input_shape: self.input_shape,
            mean: self.mean,
            std: self.std,
            resize: self.resize,
            labels_count,
        }
    }

    /// Reads and checks a `model.toml`, naming the file and field at fault.
    pub fn from_file(toml_path: &Path) -> Result<Manifest, RepositoryError> {
        let text = std::fs::read_to_string(toml_path)
            .map_err(|source| RepositoryError::Io { path: toml_path.to_path_buf(), source })?;
        Self::parse(&text, toml_path)
    }

    /// Parses and checks the text of the `model.toml` at `toml_path` (named in errors).
    pub fn parse(text: &str, toml_path: &Path) -> Result<Manifest, RepositoryError> {
        let invalid = |message: String| RepositoryError::Invalid { path: toml_path.to_path_buf(), message };
        let manifest: Manifest = toml::from_str(text).map_err(|e| invalid(e.to_string()))?;
        let [n, c, h, w] = manifest.input_shape;
        if n != 1 || c != 3 || h == 0 || w == 0 {
            return Err(invalid(format!("input_shape must be [1, 3, height, width], got {:?}", manifest.input_shape)));
        }
        if manifest.resize < h.max(w) {
            return Err(invalid(format!("resize ({}) must be at least the crop size {h}x{w}", manifest.resize)));
        }
        // `!(s > 0)` and `is_finite`: a NaN passes every comparison and would turn each input
        // into NaNs.
        if manifest.std.iter().any(|s| !(*s > 0.0 && s.is_finite())) {
            return Err(invalid(format!("std must be positive and finite, got {:?}", manifest.std)));
        }
        if manifest.mean.iter().any(|m| !m.is_finite()) {
            return Err(invalid(format!("mean must be finite, got {:?}", manifest.mean)));
        }
        if manifest.labels.is_absolute() {
            // Not echoed: listings are public, the server's paths are not.
            return Err(invalid("labels must name a file inside the model directory, not an absolute path".into()));
        }
        if !is_inside(&manifest.labels) {
            return Err(invalid(format!(
                "labels must name a file inside the model directory (relative, no '..'), got {:?}",
                manifest.labels
            )));
        }
        if manifest.max_batch_size == Some(0) {
            return Err(invalid("max_batch_size must be at least 1 (1: no batching)".into()));
        }
        if manifest.max_queue_delay_microseconds > MAX_QUEUE_DELAY_US {
            return Err(invalid(format!(
                "max_queue_delay_microseconds must be at most {MAX_QUEUE_DELAY_US} (one second), got {}",
                manifest.max_queue_delay_microseconds
            )));
        }
        Ok(manifest)
    }

    /// The dynamic batching this manifest asks for.
    pub fn batching(&self) -> Batching {
        Batching {
            max_batch_size: self.max_batch_size.unwrap_or(1) as usize,
            max_queue_delay: std::time::Duration::from_micros(self.max_queue_delay_microseconds),
        }
    }
}

/// Whether `path` stays below the directory it is relative to, as written: relative, and no
/// `..`, root or prefix component. (Symlinks are checked where the file is opened.)
pub fn is_inside(path: &Path) -> bool {
    use std::path::Component;
    path.components().all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
        && path.components().any(|c| matches!(c, Component::Normal(_)))
}

/// `dir/relative` with symlinks resolved, refused when that leaves `dir` (a model directory
/// must not make the server read files elsewhere, e.g. through `labels`).
pub(super) fn confined(dir: &Path, relative: &Path, what: &str) -> Result<PathBuf, RepositoryError> {
    let path = dir.join(relative);
    let io = |source| RepositoryError::Io { path: path.clone(), source };
    let resolved = std::fs::canonicalize(&path).map_err(io)?;
    let root = std::fs::canonicalize(dir).map_err(|source| RepositoryError::Io { path: dir.to_path_buf(), source })?;
    if !resolved.starts_with(&root) {
        return Err(RepositoryError::Invalid {
            path: path.clone(),
            message: format!("{what} resolves outside the model directory (through a symlink); refused"),
        });
    }
    Ok(resolved)
}

/// `<models_dir>/repository.toml`: what the repository's owner says about it as a whole.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RepositoryManifest {
    /// The model requests get when they name none, unless the host's config says otherwise.
    pub default_model: Option<String>,
}

/// The file name of [`RepositoryManifest`] inside the models directory.
pub const REPOSITORY_MANIFEST: &str = "repository.toml";

pub(super) fn read_labels(path: &Path) -> Result<Vec<String>, RepositoryError> {
    let labels: Vec<String> = std::fs::read_to_string(path)
        .map_err(|source| RepositoryError::Io { path: path.to_path_buf(), source })?
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect();
    if labels.is_empty() {
        return Err(RepositoryError::Invalid {
            path: path.to_path_buf(),
            message: "labels: the file has no labels".into(),
        });
    }
    Ok(labels)
}
