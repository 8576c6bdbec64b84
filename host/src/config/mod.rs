//! Configuration: every address, path and limit, from `tessera.toml` and command-line flags.

mod guests;
mod limits;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

pub use guests::{
    DEFAULT_GUEST_DIR, DEFAULT_PIPELINE, DEFAULT_WASI_GRANTS, GuestsConfig, PipelineConfig, RuleConfig, TaskConfig,
    WasiGrant,
};
pub use limits::{EPOCH_TICK_MS, Limits};

use serde::{Deserialize, Serialize};

/// Why a configuration was refused. Each message names the key at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("invalid config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid config: {key} {problem}")]
    Invalid { key: &'static str, problem: String },
}

/// The whole host configuration. Relative paths in a config file are resolved against the
/// file's directory; defaults are relative to the working directory (the repository root).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where `tessera serve` listens for HTTP.
    pub addr: SocketAddr,
    /// Where it listens for gRPC (the seed's `ImageRecognitionService`, `grpc.health.v1`,
    /// server reflection); `"off"` = no gRPC listener. The default is the seed's port,
    /// [`DEFAULT_GRPC_ADDR`], which a server built without gRPC takes as off.
    #[serde(with = "addr_or_off")]
    pub grpc_addr: Option<SocketAddr>,
    /// Where the admin routes (`/v1/admin/*`) are served without a token (`"off"` = nowhere).
    /// Loopback by default, so a reverse proxy in front of `addr` cannot expose them; on `addr`
    /// they need `admin_token`.
    #[serde(with = "addr_or_off")]
    pub admin_addr: Option<SocketAddr>,
    /// The model repository: `<models_dir>/<name>/model.toml` + `<name>/<version>/model.onnx`.
    pub models_dir: PathBuf,
    /// The model used when a request names none. Absent: the models directory's own
    /// (`repository.toml`), else the only model, else none (such requests get 400).
    pub default_model: Option<String>,
    /// The default pipeline's guests (the pipeline named `default`).
    pub guests: GuestsConfig,
    /// Named pipelines (`[pipelines.<name>]`): other guests for some models, or for requests
    /// that select one with `pipeline=<name>`.
    pub pipelines: BTreeMap<String, PipelineConfig>,
    /// Task guests (`[tasks.<name>]`), each served at `POST /v1/tasks/<name>`: none by default
    /// (a config file has the tasks it names); [`Config::embedded_default`] has `detect`.
    pub tasks: BTreeMap<String, TaskConfig>,
    /// Where compiled guest components are cached across restarts; `"off"` = no disk cache
    /// (a read-only filesystem with precompiled `.cwasm` guests needs none).
    /// Native code loaded from it is trusted: it must be a directory owned by this user (made
    /// with mode 0700, narrowed to 0700 if others could write to it; refused otherwise).
    #[serde(with = "dir_or_off")]
    pub compile_cache_dir: Option<PathBuf>,
    /// `adaptive` (a lone image's matrix products spread over every thread, concurrent images
    /// one thread each), `throughput` (always one image per worker thread) or `latency` (always
    /// one image at a time over all threads); `limits.inference_workers` sets the thread count.
    pub inference_mode: crate::inference::EngineMode,
    /// Process-wide settings of each inference engine (`[inference.tract]`,
    /// `[inference.onnxruntime]`); which engine runs a model is its `model.toml`'s `engine`.
    pub inference: InferenceConfig,
    /// Reload models and guests when their files change (`POST /v1/admin/reload` always works).
    pub watch: bool,
    /// 0: watch with the OS's file events (inotify). Else scan the watched directories every
    /// this many milliseconds: for network filesystems, where another node's writes raise no
    /// event here.
    pub watch_poll_ms: u64,
    /// Bearer token for `/v1/admin/*` on `addr`. Absent: admin routes are served on `admin_addr`
    /// only.
    pub admin_token: Option<String>,
    pub limits: Limits,
    pub telemetry: TelemetryConfig,
}

/// `[telemetry]`: traces of `tessera serve` (logs always go to stderr).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetryConfig {
    /// An OpenTelemetry collector's OTLP/gRPC endpoint (e.g. `http://127.0.0.1:4317`): each
    /// request's spans (request, stages, guests) are exported there in batches. Absent = no
    /// export, the default.
    pub otlp_endpoint: Option<String>,
    /// The `service.name` the spans carry.
    pub service_name: String,
    /// The share of new traces kept (0 to 1). A request continuing a client's trace follows
    /// the client's sampling decision instead.
    pub sample_ratio: f64,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig { otlp_endpoint: None, service_name: "tessera".into(), sample_ratio: 1.0 }
    }
}

/// Engine settings that hold for the whole process.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct InferenceConfig {
    /// Who loads a new model version first, in a child process bounded by
    /// `limits.model_load_memory_bytes` and `limits.model_load_timeout_ms`
    /// (`inference/probe.rs`).
    pub load_probe: LoadProbeSetting,
    pub tract: TractConfig,
    pub onnxruntime: OnnxruntimeConfig,
}

/// `[inference] load_probe`: `"auto"` (the default: the `tessera` binary probes with itself; a
/// library embedder's host loads in-process), `"off"` (in-process only, unguarded), or the path
/// of a `tessera` binary to probe with.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum LoadProbeSetting {
    #[default]
    Auto,
    Off,
    Binary(PathBuf),
}

impl LoadProbeSetting {
    /// What `auto` means in a program that can probe with `executable` (the `tessera` binary
    /// passes itself).
    pub fn resolve_auto(&mut self, executable: Option<PathBuf>) {
        if let (LoadProbeSetting::Auto, Some(exe)) = (&*self, executable) {
            *self = LoadProbeSetting::Binary(exe);
        }
    }

    /// The binary that probes, if any.
    pub fn binary(&self) -> Option<&Path> {
        match self {
            LoadProbeSetting::Binary(path) => Some(path),
            LoadProbeSetting::Auto | LoadProbeSetting::Off => None,
        }
    }
}

impl Serialize for LoadProbeSetting {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            LoadProbeSetting::Auto => s.serialize_str("auto"),
            LoadProbeSetting::Off => s.serialize_str("off"),
            LoadProbeSetting::Binary(path) => s.collect_str(&path.display()),
        }
    }
}

impl<'de> Deserialize<'de> for LoadProbeSetting {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(match String::deserialize(d)?.as_str() {
            "auto" => LoadProbeSetting::Auto,
            "off" => LoadProbeSetting::Off,
            "" => return Err(serde::de::Error::custom("is empty: \"auto\", \"off\" or the path of a tessera binary")),
            path => LoadProbeSetting::Binary(PathBuf::from(path)),
        })
    }
}

/// `[inference.tract]`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TractConfig {
    /// Let tract use Intel AMX for int8 models (off by default): faster, but tract 0.23.9's AMX
    /// kernels read past activations tract packs itself when a matmul's depth is not a multiple
    /// of 64, so a version with such a matmul fails to load (`inference/tract/amx.rs`).
    /// Process-wide (tract probes the CPU once): the first host built in a process decides.
    pub amx_int8: bool,
}

/// `[inference.onnxruntime]`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct OnnxruntimeConfig {
    /// The onnxruntime shared library (`libonnxruntime.so.1.x`). Absent: `ORT_DYLIB_PATH`, then
    /// the `onnxruntime` wheel in the project's `.venv`. Only read when a model asks for
    /// `engine = "onnxruntime"`; process-wide: the first library loaded stays.
    pub library: Option<PathBuf>,
}

/// The seed's gRPC port on loopback: `grpc_addr` when the config does not say.
pub const DEFAULT_GRPC_ADDR: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 50051);

impl Default for Config {
    fn default() -> Self {
        Config {
            addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            grpc_addr: Some(DEFAULT_GRPC_ADDR),
            admin_addr: Some(SocketAddr::from(([127, 0, 0, 1], 8081))),
            models_dir: PathBuf::from("models"),
            default_model: None,
            guests: GuestsConfig::default(),
            pipelines: BTreeMap::new(),
            tasks: BTreeMap::new(),
            compile_cache_dir: Some(PathBuf::from(DEFAULT_COMPILE_CACHE_DIR)),
            inference_mode: crate::inference::EngineMode::Adaptive,
            inference: InferenceConfig::default(),
            watch: true,
            watch_poll_ms: 0,
            admin_token: None,
            limits: Limits::default(),
            telemetry: TelemetryConfig::default(),
        }
    }
}

/// The embedded default's tasks (`tessera serve` without a config file): `detect`, the detection
/// task guest over the repository's `shapes-detect` model (guests/task-detect, models/shapes-detect).
pub fn default_tasks() -> BTreeMap<String, TaskConfig> {
    BTreeMap::from([(
        "detect".to_string(),
        TaskConfig {
            path: Path::new(DEFAULT_GUEST_DIR).join("task-detect.wasm"),
            models: vec!["shapes-detect".to_string()],
            wasi: DEFAULT_WASI_GRANTS.to_vec(),
        },
    )])
}

/// A listen address, or `"off"` for none (`grpc_addr`).
pub mod addr_or_off {
    use std::net::SocketAddr;

    use serde::{Deserialize, Deserializer, Serializer};

    /// What turns the listener off.
    pub const OFF: &str = "off";

    /// Parses `"off"` or an address (`127.0.0.1:50051`, `[::1]:0`).
    pub fn parse(text: &str) -> Result<Option<SocketAddr>, String> {
        if text.trim().eq_ignore_ascii_case(OFF) {
            return Ok(None);
        }
        text.trim()
            .parse()
            .map(Some)
            .map_err(|e| format!("{text:?} is neither an address like 127.0.0.1:50051 nor \"off\": {e}"))
    }

    pub fn serialize<S: Serializer>(addr: &Option<SocketAddr>, s: S) -> Result<S::Ok, S::Error> {
        match addr {
            Some(addr) => s.collect_str(addr),
            None => s.serialize_str(OFF),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
        parse(&String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// `compile_cache_dir`: a directory or `"off"`.
mod dir_or_off {
    use std::path::PathBuf;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(dir: &Option<PathBuf>, s: S) -> Result<S::Ok, S::Error> {
        match dir {
            Some(dir) => s.collect_str(&dir.display()),
            None => s.serialize_str(super::addr_or_off::OFF),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<PathBuf>, D::Error> {
        let text = String::deserialize(d)?;
        Ok((!text.trim().eq_ignore_ascii_case(super::addr_or_off::OFF)).then(|| PathBuf::from(text)))
    }
}

/// Where compiled components are cached by default (a Python guest takes seconds to compile).
pub const DEFAULT_COMPILE_CACHE_DIR: &str = "target/cache/components";

impl Config {
    /// What `tessera serve` runs without a config file: the defaults (the classification
    /// pipeline's guests from `target/guests`, the repository in `models`) and the `detect` task.
    /// The library's own default ([`Config::default`]) has no task, so that an embedder's host
    /// needs no file it did not name.
    pub fn embedded_default() -> Config {
        Config { tasks: default_tasks(), ..Config::default() }
    }

    /// Reads a TOML config file; relative paths in it are taken from the file's directory.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        let mut config: Config = toml::from_str(&text)
            .map_err(|e| ConfigError::Parse { path: path.to_path_buf(), message: e.to_string() })?;
        let base = path.parent().unwrap_or(Path::new("."));
        let rebase = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        rebase(&mut config.models_dir);
        if let Some(dir) = config.compile_cache_dir.as_mut() {
            rebase(dir);
        }
        rebase(&mut config.guests.preprocess);
        rebase(&mut config.guests.postprocess);
        config.guests.rules.iter_mut().for_each(|r| rebase(&mut r.path));
        for p in config.pipelines.values_mut() {
            p.preprocess.iter_mut().chain(p.postprocess.iter_mut()).for_each(&rebase);
            p.rules.iter_mut().flatten().for_each(|r| rebase(&mut r.path));
        }
        for t in config.tasks.values_mut() {
            rebase(&mut t.path);
        }
        if let Some(lib) = config.inference.onnxruntime.library.as_mut() {
            rebase(lib);
        }
        if let LoadProbeSetting::Binary(exe) = &mut config.inference.load_probe {
            rebase(exe);
        }
        config.validate()?;
        Ok(config)
    }

    /// Checks every limit, naming the first bad key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let l = &self.limits;
        let positive = [
            ("limits.max_body_bytes", l.max_body_bytes),
            ("limits.max_image_pixels", l.max_image_pixels),
            ("limits.max_decode_alloc_bytes", l.max_decode_alloc_bytes),
            ("limits.deadline_ms", l.deadline_ms),
            ("limits.guest_memory_bytes", l.guest_memory_bytes),
            ("limits.guest_output_bytes", l.guest_output_bytes),
            ("limits.inference_queue_len", u64::from(l.inference_queue_len)),
            ("limits.header_read_timeout_ms", l.header_read_timeout_ms),
            ("limits.max_connections", u64::from(l.max_connections)),
            ("limits.model_load_memory_bytes", l.model_load_memory_bytes),
            ("limits.model_load_timeout_ms", l.model_load_timeout_ms),
        ];
        for (key, value) in positive {
            if value == 0 {
                return Err(ConfigError::Invalid { key, problem: "must be greater than 0".into() });
            }
        }
        if l.guest_memory_bytes > 4 << 30 {
            return Err(ConfigError::Invalid {
                key: "limits.guest_memory_bytes",
                problem: format!("is {} but a 32-bit guest memory cannot exceed 4 GiB", l.guest_memory_bytes),
            });
        }
        if l.guest_memory_reservation_bytes < l.guest_memory_bytes || l.guest_memory_reservation_bytes > 4 << 30 {
            return Err(ConfigError::Invalid {
                key: "limits.guest_memory_reservation_bytes",
                problem: format!(
                    "is {} but must be between limits.guest_memory_bytes ({}) and 4 GiB: a memory never \
                     moves out of its reservation, and a 32-bit one needs no more",
                    l.guest_memory_reservation_bytes, l.guest_memory_bytes
                ),
            });
        }
        if l.guest_memory_total_bytes < l.guest_memory_bytes {
            return Err(ConfigError::Invalid {
                key: "limits.guest_memory_total_bytes",
                problem: format!(
                    "is {} but must be at least limits.guest_memory_bytes ({}), or no guest could reach its own cap",
                    l.guest_memory_total_bytes, l.guest_memory_bytes
                ),
            });
        }
        if l.deadline_ms > 600_000 {
            return Err(ConfigError::Invalid {
                key: "limits.deadline_ms",
                problem: "must be at most 600000 (10 minutes)".into(),
            });
        }
        if self.admin_token.as_deref().is_some_and(|t| t.len() < 16) {
            return Err(ConfigError::Invalid { key: "admin_token", problem: "must be at least 16 characters".into() });
        }
        let t = &self.telemetry;
        if !(0.0..=1.0).contains(&t.sample_ratio) {
            return Err(ConfigError::Invalid {
                key: "telemetry.sample_ratio",
                problem: format!("is {} but must be between 0 and 1", t.sample_ratio),
            });
        }
        if let Some(endpoint) = &t.otlp_endpoint
            && !(endpoint.starts_with("http://") || endpoint.starts_with("https://"))
        {
            return Err(ConfigError::Invalid {
                key: "telemetry.otlp_endpoint",
                problem: format!("is {endpoint:?} but must be a URL like http://127.0.0.1:4317"),
            });
        }
        if t.service_name.is_empty() {
            return Err(ConfigError::Invalid { key: "telemetry.service_name", problem: "must not be empty".into() });
        }
        if let Some(name) = &self.default_model
            && name.is_empty()
        {
            return Err(ConfigError::Invalid { key: "default_model", problem: "must not be empty".into() });
        }
        self.validate_pipelines()
    }

    /// Pipeline names are words a query string carries as they are, `default` is `[guests]`,
    /// and a model is in one pipeline's `models` at most.
    fn validate_pipelines(&self) -> Result<(), ConfigError> {
        for name in self.tasks.keys() {
            let word = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
            if name.is_empty() || name.len() > 64 || !name.chars().all(word) {
                return Err(ConfigError::Invalid {
                    key: "tasks",
                    problem: format!("has {name:?}: a name is 1 to 64 letters, digits, '-' or '_'"),
                });
            }
        }
        let mut owner: BTreeMap<&str, &str> = BTreeMap::new();
        for (name, pipeline) in &self.pipelines {
            let word = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
            if name.is_empty() || name.len() > 64 || !name.chars().all(word) {
                return Err(ConfigError::Invalid {
                    key: "pipelines",
                    problem: format!("has {name:?}: a name is 1 to 64 letters, digits, '-' or '_'"),
                });
            }
            if name == DEFAULT_PIPELINE {
                return Err(ConfigError::Invalid {
                    key: "pipelines",
                    problem: format!("has {name:?}, which is [guests]: configure the default pipeline there"),
                });
            }
            for model in &pipeline.models {
                if let Some(first) = owner.insert(model, name) {
                    return Err(ConfigError::Invalid {
                        key: "pipelines",
                        problem: format!("gives model {model:?} two pipelines, {first:?} and {name:?}"),
                    });
                }
            }
        }
        Ok(())
    }

    /// Every pipeline's guests, the default (`[guests]`) first, with what a named pipeline
    /// leaves out taken from `[guests]`.
    pub fn resolved_pipelines(&self) -> Vec<(String, GuestsConfig)> {
        let g = &self.guests;
        let named = self.pipelines.iter().map(|(name, p)| {
            let guests = GuestsConfig {
                preprocess: p.preprocess.clone().unwrap_or_else(|| g.preprocess.clone()),
                preprocess_wasi: p.preprocess_wasi.clone().unwrap_or_else(|| g.preprocess_wasi.clone()),
                postprocess: p.postprocess.clone().unwrap_or_else(|| g.postprocess.clone()),
                postprocess_wasi: p.postprocess_wasi.clone().unwrap_or_else(|| g.postprocess_wasi.clone()),
                rules: p.rules.clone().unwrap_or_else(|| g.rules.clone()),
            };
            (name.clone(), guests)
        });
        std::iter::once((DEFAULT_PIPELINE.to_string(), g.clone())).chain(named).collect()
    }

    /// Every place the component at `path` is configured as a guest (pipeline, stage), with the
    /// WASI it is granted there (`tessera inspect` reports them). Paths are compared as
    /// resolved on disk where they exist.
    pub fn guest_places(&self, path: &Path) -> Vec<GuestPlace> {
        let key = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
        let wanted = key(path);
        let mut places = Vec::new();
        for (pipeline, g) in self.resolved_pipelines() {
            let stages = [
                ("preprocess", &g.preprocess, &g.preprocess_wasi),
                ("postprocess", &g.postprocess, &g.postprocess_wasi),
            ];
            let rules = g.rules.iter().map(|r| ("rules", &r.path, &r.wasi));
            for (stage, p, wasi) in stages.into_iter().chain(rules) {
                if key(p) == wanted {
                    places.push(GuestPlace { pipeline: pipeline.clone(), stage, wasi: wasi.clone() });
                }
            }
        }
        for (name, task) in &self.tasks {
            if key(&task.path) == wanted {
                places.push(GuestPlace { pipeline: name.clone(), stage: "task", wasi: task.wasi.clone() });
            }
        }
        places
    }

    /// Every guest file of every pipeline, in config order (a file may repeat).
    pub fn guest_paths(&self) -> Vec<PathBuf> {
        self.resolved_pipelines()
            .into_iter()
            .flat_map(|(_, g)| [g.preprocess, g.postprocess].into_iter().chain(g.rules.into_iter().map(|r| r.path)))
            .chain(self.tasks.values().map(|t| t.path.clone()))
            .collect()
    }

    /// The number of inference workers per model version, resolving 0 to the core count.
    pub fn inference_workers(&self) -> usize {
        self.limits.inference_threads()
    }
}

/// One place a component is configured as a guest: its pipeline (or task), its stage, and the
/// WASI it is granted there.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GuestPlace {
    /// The pipeline's name, or the task's for stage `task`.
    pub pipeline: String,
    /// `preprocess`, `postprocess`, `rules` or `task`.
    pub stage: &'static str,
    pub wasi: Vec<WasiGrant>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_and_bad_keys_are_named() {
        let err = toml::from_str::<Config>("[limits]\nmax_body_byte = 3\n").unwrap_err().to_string();
        assert!(err.contains("max_body_byte"), "{err}");
        let mut c = Config::default();
        c.limits.deadline_ms = 0;
        assert!(c.validate().unwrap_err().to_string().contains("limits.deadline_ms"));
        // The reservation holds a whole guest memory and no more than a 32-bit one can use.
        let reservation = |bytes: u64| {
            let mut c = Config::default();
            c.limits.guest_memory_reservation_bytes = bytes;
            c.validate().map_err(|e| e.to_string())
        };
        assert!(reservation(c.limits.guest_memory_bytes).is_ok());
        for bad in [c.limits.guest_memory_bytes - 1, (4 << 30) + 1] {
            assert!(reservation(bad).unwrap_err().contains("limits.guest_memory_reservation_bytes"), "{bad}");
        }
    }

    #[test]
    fn the_example_config_is_valid_and_states_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/tessera.example.toml");
        let config = Config::from_file(&path).unwrap();
        assert_eq!(config.limits, Limits::default());
        assert_eq!(config.telemetry, TelemetryConfig::default());
        assert_eq!(config.addr, Config::default().addr);
        assert_eq!(config.inference_mode, Config::default().inference_mode);
        assert!(config.models_dir.ends_with("models"));
    }

    #[test]
    fn the_compile_cache_can_be_off_and_the_watcher_can_poll() {
        let config: Config = toml::from_str("compile_cache_dir = \"off\"\nwatch_poll_ms = 2000\n").unwrap();
        assert_eq!((config.compile_cache_dir, config.watch_poll_ms), (None, 2000));
        let config: Config = toml::from_str("compile_cache_dir = \"cache\"\n").unwrap();
        assert_eq!(config.compile_cache_dir, Some(PathBuf::from("cache")));
        assert_eq!(Config::default().watch_poll_ms, 0);
    }

    #[test]
    fn named_pipelines_inherit_what_they_leave_out_and_own_their_models() {
        let text = r#"
            [guests]
            preprocess = "pre.wasm"
            preprocess_wasi = ["stderr"]
            [[guests.rules]]
            path = "a.wasm"
            [pipelines.strict]
            postprocess = "post2.wasm"
            postprocess_wasi = []
            models = ["m1"]
            [pipelines.bare]
            rules = []
        "#;
        let config: Config = toml::from_str(text).unwrap();
        config.validate().unwrap();
        let all = config.resolved_pipelines();
        let names: Vec<&str> = all.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["default", "bare", "strict"]);
        let strict = &all[2].1;
        assert_eq!(strict.preprocess, Path::new("pre.wasm"));
        assert_eq!(strict.postprocess, Path::new("post2.wasm"));
        // Grants are inherited like the guests, and a stage's own replace them whole.
        assert_eq!(strict.preprocess_wasi, [WasiGrant::Stderr]);
        assert_eq!(strict.postprocess_wasi, []);
        assert_eq!(all[0].1.postprocess_wasi, DEFAULT_WASI_GRANTS);
        assert_eq!(strict.rules.len(), 1);
        assert!(all[1].1.rules.is_empty());

        let twice = format!("{text}\n[pipelines.other]\nmodels = [\"m1\"]\n");
        let err = toml::from_str::<Config>(&twice).unwrap().validate().unwrap_err().to_string();
        assert!(err.contains("\"m1\" two pipelines"), "{err}");
        for bad in ["default", "a b", "x/y"] {
            let text = format!("[pipelines.\"{bad}\"]\n");
            let err = toml::from_str::<Config>(&text).unwrap().validate().unwrap_err().to_string();
            assert!(err.contains("pipelines"), "{bad}: {err}");
        }
    }

    #[test]
    fn defaults_are_valid() {
        Config::default().validate().unwrap();
    }
}
