//! The model repository: `<dir>/<name>/model.toml`, its labels file, and integer version
//! directories `<dir>/<name>/<version>/model.onnx`, each loaded into its own inference pool.
//!
//! The repository is a sequence of immutable [`Snapshot`]s behind an `ArcSwap`: a request takes
//! the current snapshot once and keeps the `Arc`s of what it uses, so a reload can add, replace
//! or remove versions while requests already running finish on the old ones. A reload reuses
//! every version whose files did not change, loads the rest off to the side, and publishes
//! the new snapshot atomically. A version that fails to load is reported (state `failed`, with
//! the reason) and, if an older copy of it was serving, that copy keeps serving.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use arc_swap::ArcSwap;
use serde::Serialize;

use crate::error::{ErrorKind, RequestError, Stage};
use crate::inference::probe::LoadProbe;
use crate::inference::{EngineConfig, InferencePool};

mod manifest;
pub use manifest::{Manifest, OutputKind, RepositoryManifest, VersionPolicy, is_inside};
use manifest::{REPOSITORY_MANIFEST, confined, read_labels};

/// Why a model or the repository could not be loaded. Each names the file and, where it
/// applies, the field.
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
    /// What the files looked like when loaded: a reload reuses the version while they match.
    fingerprint: Fingerprint,
}

/// Where a version stands.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum VersionState {
    Ready,
    Failed { reason: String },
}

/// A model: manifest, labels, the versions that serve and the state of every version present.
pub struct Model {
    pub name: String,
    pub manifest: Manifest,
    pub labels: Arc<[String]>,
    /// The versions that can serve, by number.
    pub versions: BTreeMap<u64, Arc<ModelVersion>>,
    /// Every version the policy selects, with its state (a failed reload of a version that was
    /// serving shows `failed` while its older copy stays in `versions`).
    pub states: BTreeMap<u64, VersionState>,
    manifest_fingerprint: Fingerprint,
}

impl Model {
    /// The version a request gets: the pinned one, else the manifest's default, else the newest
    /// ready one.
    pub fn resolve(&self, version: Option<&str>) -> Result<Arc<ModelVersion>, RequestError> {
        let not_found = |msg: String| RequestError::new(ErrorKind::ModelNotFound, Stage::Admission, msg);
        let wanted = match version {
            Some(v) => Some(v.parse::<u64>().map_err(|_| {
                RequestError::new(
                    ErrorKind::BadRequest,
                    Stage::Admission,
                    format!("version {v:?} is not a version number; versions are integers like 1"),
                )
            })?),
            None => self.manifest.default_version.filter(|v| self.versions.contains_key(v)),
        };
        match wanted {
            Some(v) => self.versions.get(&v).cloned().ok_or_else(|| {
                not_found(format!(
                    "model {:?} has no ready version {v}; ready: {:?}",
                    self.name,
                    self.versions.keys().collect::<Vec<_>>()
                ))
            }),
            None => self
                .versions
                .values()
                .next_back()
                .cloned()
                .ok_or_else(|| not_found(format!("model {:?} has no ready version", self.name))),
        }
    }
}

/// One consistent view of every model.
#[derive(Default)]
pub struct Snapshot {
    /// `repository.toml`, when there is one that parses (a bad one is in `failed`).
    pub manifest: RepositoryManifest,
    pub models: BTreeMap<String, Arc<Model>>,
    /// Model directories that could not be read at all (bad `model.toml`, labels), by name.
    pub failed: BTreeMap<String, String>,
}

impl Snapshot {
    pub fn get(&self, name: &str) -> Result<&Arc<Model>, RequestError> {
        self.models.get(name).ok_or_else(|| {
            RequestError::new(
                ErrorKind::ModelNotFound,
                Stage::Admission,
                format!("no model named {name:?}; available: {:?}", self.models.keys().collect::<Vec<_>>()),
            )
        })
    }
}

/// Every model under one directory, reloadable.
pub struct ModelRepository {
    pub dir: PathBuf,
    engine: EngineConfig,
    /// Loads each new version in a child process first (`inference::probe`); `None`: in-process
    /// only.
    probe: Option<LoadProbe>,
    current: ArcSwap<Snapshot>,
    /// One reload at a time; requests never take it.
    reloading: Mutex<()>,
}

/// A file's size and modification time: what a reload compares to decide whether to reload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileStamp {
    pub len: u64,
    pub modified: Option<SystemTime>,
}

impl FileStamp {
    /// The stamp of `path` now; a missing file gets a stamp no real file has.
    pub fn of(path: &Path) -> FileStamp {
        std::fs::metadata(path)
            .map(|m| FileStamp { len: m.len(), modified: m.modified().ok() })
            .unwrap_or(FileStamp { len: u64::MAX, modified: None })
    }
}

type Fingerprint = Vec<FileStamp>;

fn fingerprint(paths: &[&Path]) -> Fingerprint {
    paths.iter().map(|p| FileStamp::of(p)).collect()
}

impl ModelRepository {
    /// Loads every `<dir>/<name>/model.toml` and the versions its policy selects. Fails if no
    /// model could be loaded at all.
    pub fn load(dir: &Path, engine: EngineConfig) -> Result<Self, RepositoryError> {
        Self::load_probed(dir, engine, None)
    }

    /// [`Self::load`], each new version first loaded and run once by `probe` in a child
    /// process; a version whose probe fails is failed with the reason and never loaded here.
    pub fn load_probed(dir: &Path, engine: EngineConfig, probe: Option<LoadProbe>) -> Result<Self, RepositoryError> {
        let repo = ModelRepository {
            dir: dir.to_path_buf(),
            engine,
            probe,
            current: ArcSwap::from_pointee(Snapshot::default()),
            reloading: Mutex::new(()),
        };
        repo.reload()?;
        let snapshot = repo.snapshot();
        if snapshot.models.values().all(|m| m.versions.is_empty()) {
            let reasons: Vec<String> = snapshot
                .failed
                .iter()
                .map(|(n, r)| format!("{n}: {r}"))
                .chain(snapshot.models.values().flat_map(|m| {
                    m.states.iter().filter_map(move |(v, s)| match s {
                        VersionState::Failed { reason } => Some(format!("{}/{v}: {reason}", m.name)),
                        _ => None,
                    })
                }))
                .collect();
            return Err(RepositoryError::Invalid {
                path: dir.to_path_buf(),
                message: if reasons.is_empty() {
                    "no model found: expected <name>/model.toml and <name>/<version>/model.onnx".into()
                } else {
                    format!("no model version could be loaded: {}", reasons.join("; "))
                },
            });
        }
        Ok(repo)
    }

    /// `message` as clients may see it: paths relative to the repository (`shapes/model.toml`),
    /// not where the server keeps its files.
    fn public(&self, message: &str) -> String {
        let mut message = message.to_string();
        for root in [std::fs::canonicalize(&self.dir).ok(), Some(self.dir.clone())].into_iter().flatten() {
            message = message.replace(&format!("{}/", root.display()), "");
        }
        message
    }

    /// The current view. Cheap; hold it for the whole request.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Rescans the directory and publishes a new snapshot: unchanged versions are kept as they
    /// are, new or changed ones are loaded, removed ones are dropped (requests using them
    /// finish first, holding their `Arc`). Returns an error only if the directory itself
    /// cannot be read; per-model problems are states in the snapshot.
    pub fn reload(&self) -> Result<Arc<Snapshot>, RepositoryError> {
        let _one_at_a_time = self.reloading.lock().unwrap_or_else(|e| e.into_inner());
        let old = self.snapshot();
        let io = |source| RepositoryError::Io { path: self.dir.clone(), source };
        let mut dirs: Vec<PathBuf> =
            std::fs::read_dir(&self.dir).map_err(io)?.filter_map(Result::ok).map(|e| e.path()).collect();
        dirs.sort();
        let mut next = Snapshot::default();
        let manifest_path = self.dir.join(REPOSITORY_MANIFEST);
        if manifest_path.is_file() {
            let parsed = std::fs::read_to_string(&manifest_path)
                .map_err(|e| e.to_string())
                .and_then(|text| toml::from_str::<RepositoryManifest>(&text).map_err(|e| e.to_string()));
            match parsed {
                Ok(manifest) => next.manifest = manifest,
                Err(e) => {
                    tracing::error!(error = %e, "{REPOSITORY_MANIFEST} not read; the previous one stays");
                    next.manifest = old.manifest.clone();
                    next.failed.insert(REPOSITORY_MANIFEST.into(), format!("{REPOSITORY_MANIFEST}: {e}"));
                }
            }
        }
        for dir in dirs.into_iter().filter(|d| d.join("model.toml").is_file()) {
            let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
            match self.reload_model(&dir, &name, old.models.get(&name)) {
                Ok(model) => {
                    next.models.insert(name, Arc::new(model));
                }
                Err(e) => {
                    tracing::error!(model = %name, error = %e, "model not (re)loaded");
                    // A model that was serving keeps serving as it was.
                    if let Some(previous) = old.models.get(&name) {
                        next.models.insert(name.clone(), previous.clone());
                    }
                    next.failed.insert(name, self.public(&e.to_string()));
                }
            }
        }
        let next = Arc::new(next);
        self.current.store(next.clone());
        Ok(next)
    }

    fn reload_model(&self, dir: &Path, name: &str, old: Option<&Arc<Model>>) -> Result<Model, RepositoryError> {
        let toml_path = dir.join("model.toml");
        let manifest = Manifest::from_file(&toml_path)?;
        let labels_path = confined(dir, &manifest.labels, "labels")?;
        let labels = read_labels(&labels_path)?;
        let manifest_fingerprint = fingerprint(&[&toml_path, &labels_path]);
        // A changed manifest or labels file invalidates every loaded version of the model.
        let old = old.filter(|m| m.manifest_fingerprint == manifest_fingerprint);

        let mut present = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(|source| RepositoryError::Io { path: dir.to_path_buf(), source })? {
            let path = entry.map_err(|source| RepositoryError::Io { path: dir.to_path_buf(), source })?.path();
            if let Some(v) = path.file_name().and_then(|n| n.to_str()).and_then(|n| n.parse::<u64>().ok())
                && path.join("model.onnx").is_file()
            {
                present.push(v);
            }
        }
        present.sort_unstable();
        let shape: Vec<usize> = manifest.input_shape.iter().map(|&d| d as usize).collect();
        let mut model = Model {
            name: name.to_string(),
            manifest,
            labels: labels.into(),
            versions: BTreeMap::new(),
            states: BTreeMap::new(),
            manifest_fingerprint,
        };
        // `latest` / `latest = N` mean the newest versions that load: a new version that fails
        // (a broken or hostile file copied in) leaves the one before it serving, not the model
        // without a version.
        let selected = model.manifest.version_policy.select(&present);
        let wanted = selected.len();
        let fallback: Vec<u64> = match model.manifest.version_policy {
            VersionPolicy::Latest | VersionPolicy::LatestN(_) => {
                present.iter().rev().filter(|v| !selected.contains(v)).copied().collect()
            }
            VersionPolicy::All | VersionPolicy::Specific(_) => Vec::new(),
        };
        let mut fallback = fallback.into_iter();
        let mut queue: std::collections::VecDeque<u64> = selected.into_iter().collect();
        while let Some(version) = queue.pop_front().or_else(|| {
            let ready = model.states.values().filter(|s| matches!(s, VersionState::Ready)).count();
            if ready < wanted { fallback.next() } else { None }
        }) {
            let onnx = dir.join(version.to_string()).join("model.onnx");
            let print = fingerprint(&[&onnx]);
            let previous = old.and_then(|m| m.versions.get(&version));
            if let Some(previous) = previous.filter(|p| p.fingerprint == print) {
                model.versions.insert(version, previous.clone());
                model.states.insert(version, VersionState::Ready);
                continue;
            }
            match self.load_version(&onnx, &shape, &model.manifest, model.labels.len()) {
                Ok(pool) => {
                    tracing::info!(model = %name, version, engine = %model.manifest.engine, path = %onnx.display(), "model version loaded");
                    model.versions.insert(version, Arc::new(ModelVersion { version, pool, fingerprint: print }));
                    model.states.insert(version, VersionState::Ready);
                }
                Err(e) => {
                    tracing::error!(model = %name, version, error = %e, "model version failed to load; the previous copy, if any, keeps serving");
                    if let Some(previous) = previous {
                        model.versions.insert(version, previous.clone());
                    }
                    model.states.insert(version, VersionState::Failed { reason: self.public(&e.to_string()) });
                }
            }
        }
        if let Some(v) = model.manifest.default_version
            && !present.contains(&v)
        {
            tracing::warn!(model = %name, default_version = v, "default_version has no directory; serving the newest ready version");
        }
        Ok(model)
    }

    fn load_version(
        &self,
        onnx: &Path,
        shape: &[usize],
        manifest: &Manifest,
        labels: usize,
    ) -> Result<InferencePool, RepositoryError> {
        if let Some(probe) = &self.probe {
            let report = probe.check(onnx, shape, manifest.engine)?;
            tracing::info!(
                path = %self.public(&onnx.display().to_string()),
                load_ms = report.load_ms,
                run_ms = report.run_ms,
                peak_rss_mib = report.peak_rss_bytes >> 20,
                "load probe passed"
            );
        }
        // An engine that panics on a file (a graph it mishandles, an allocation it cannot make)
        // fails this version, with the panic's message, not the reload or the process.
        let load = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            InferencePool::load_batched(onnx, shape, manifest.engine, &self.engine, manifest.batching())
        }));
        let pool = load.map_err(|panic| RepositoryError::Invalid {
            path: onnx.to_path_buf(),
            message: format!("loading panicked: {}", crate::error::panic_message(&*panic)),
        })??;
        if manifest.output == OutputKind::Classes && pool.output_len() != labels {
            return Err(RepositoryError::Invalid {
                path: onnx.to_path_buf(),
                message: format!(
                    "the model outputs {} classes but its labels file lists {labels} (a model whose output is not \
                     one score per label says output = \"any\" in its model.toml)",
                    pool.output_len()
                ),
            });
        }
        Ok(pool)
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;
    use crate::inference::Batching;

    #[test]
    fn policies_select_versions() {
        let present = [1, 2, 5, 7];
        assert_eq!(VersionPolicy::Latest.select(&present), vec![7]);
        assert_eq!(VersionPolicy::LatestN(2).select(&present), vec![5, 7]);
        assert_eq!(VersionPolicy::LatestN(9).select(&present), vec![1, 2, 5, 7]);
        assert_eq!(VersionPolicy::All.select(&present), vec![1, 2, 5, 7]);
        assert_eq!(VersionPolicy::Specific(vec![2, 3]).select(&present), vec![2]);
        assert!(VersionPolicy::Latest.select(&[]).is_empty());
    }

    #[test]
    fn policies_parse_from_toml() {
        #[derive(Deserialize)]
        struct T {
            p: VersionPolicy,
        }
        let parse = |s: &str| toml::from_str::<T>(s).map(|t| t.p);
        assert_eq!(parse("p = \"all\"").unwrap(), VersionPolicy::All);
        assert_eq!(parse("p = { latest = 3 }").unwrap(), VersionPolicy::LatestN(3));
        assert_eq!(parse("p = { specific = [1, 4] }").unwrap(), VersionPolicy::Specific(vec![1, 4]));
        assert!(parse("p = \"newest\"").unwrap_err().to_string().contains("newest"));
        assert!(parse("p = { latest = 0 }").is_err());
    }

    #[test]
    fn batching_fields_are_checked_and_default_to_off() {
        let dir = std::env::temp_dir().join(format!("tessera-manifest-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("model.toml");
        let base = "input_shape = [1, 3, 224, 224]\nresize = 256\nmean = [0.5, 0.5, 0.5]\nstd = [0.2, 0.2, 0.2]\nlabels = \"l.txt\"\n";
        let parse = |extra: &str| {
            std::fs::write(&path, format!("{base}{extra}")).unwrap();
            Manifest::from_file(&path)
        };
        assert_eq!(parse("").unwrap().batching(), Batching { max_batch_size: 1, max_queue_delay: Default::default() });
        let on = parse("max_batch_size = 8\nmax_queue_delay_microseconds = 2000\n").unwrap().batching();
        assert_eq!((on.max_batch_size, on.max_queue_delay.as_micros()), (8, 2000));
        let zero = parse("max_batch_size = 0\n").unwrap_err().to_string();
        assert!(zero.contains("max_batch_size") && zero.contains("model.toml"), "{zero}");
        let long = parse("max_batch_size = 4\nmax_queue_delay_microseconds = 5000000\n").unwrap_err().to_string();
        assert!(long.contains("max_queue_delay_microseconds"), "{long}");
        let typo = parse("max_batch = 4\n").unwrap_err().to_string();
        assert!(typo.contains("max_batch"), "{typo}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
