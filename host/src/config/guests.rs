//! `[guests]` and `[pipelines.<name>]`: which components run each stage, the rules chain with each
//! guest's own configuration, and the WASI each guest is granted.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The pipeline's guest components (`.wasm` component files).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct GuestsConfig {
    pub preprocess: PathBuf,
    /// The WASI the preprocess guest may use, as a rules guest's `wasi` (docs/API.md); absent:
    /// `["clocks", "random"]`.
    #[serde(default = "default_wasi_grants")]
    pub preprocess_wasi: Vec<WasiGrant>,
    pub postprocess: PathBuf,
    /// The same for the postprocess guest.
    #[serde(default = "default_wasi_grants")]
    pub postprocess_wasi: Vec<WasiGrant>,
    /// Business rules, run in order; the first rejection ends the chain.
    pub rules: Vec<RuleConfig>,
}

/// `[pipelines.<name>]`: a pipeline besides the default one. A guest it does not name is the
/// default pipeline's (`[guests]`); `rules = []` runs no rules.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct PipelineConfig {
    pub preprocess: Option<PathBuf>,
    pub preprocess_wasi: Option<Vec<WasiGrant>>,
    pub postprocess: Option<PathBuf>,
    pub postprocess_wasi: Option<Vec<WasiGrant>>,
    pub rules: Option<Vec<RuleConfig>>,
    /// Models whose requests get this pipeline when they select none. A model is in at most
    /// one pipeline's list; the others get the default pipeline.
    pub models: Vec<String>,
}

/// `[tasks.<name>]`: a task guest (`world task`, docs/guests.md), served at
/// `POST /v1/tasks/<name>`: the whole request, calling the repository's models as it needs.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TaskConfig {
    pub path: PathBuf,
    /// The models its `engines` calls may reach (by name, any version); none: no model.
    #[serde(default)]
    pub models: Vec<String>,
    /// Its WASI, as a rules guest's `wasi`; absent: `["clocks", "random"]`.
    #[serde(default = "default_wasi_grants")]
    pub wasi: Vec<WasiGrant>,
}

/// The name of the pipeline `[guests]` configures.
pub const DEFAULT_PIPELINE: &str = "default";

/// One rules guest and the configuration it receives on every call.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    pub path: PathBuf,
    #[serde(default)]
    pub config: BTreeMap<String, String>,
    /// What the guest may use of WASI beyond the nothing every guest gets (docs/API.md);
    /// absent: `["clocks", "random"]`, the minimum a language runtime needs.
    #[serde(default = "default_wasi_grants")]
    pub wasi: Vec<WasiGrant>,
}

/// A WASI capability config may grant a guest. Every guest is linked with an empty environment
/// and argument list, empty stdin, stdout and stderr that go nowhere, and a filesystem with no
/// directory; any other WASI import traps when called, naming itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WasiGrant {
    /// `wasi:clocks` (wall and monotonic): most language runtimes read a clock at start-up.
    Clocks,
    /// `wasi:random` (secure and insecure): hash seeds, Python's and JS's start-up.
    Random,
    /// The guest's stdout, line by line into the host's log (at most 16 KiB a call).
    Stdout,
    /// The guest's stderr, the same way.
    Stderr,
    /// `wasi:nn@0.2.0-rc-2024-10-28`: `load-by-name` of the models the guest may call (a task's
    /// `models`), run by the host's engines within the call's deadline and call cap.
    Nn,
}

impl RuleConfig {
    /// The guest at `path` with no configuration and the default grants.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        RuleConfig { path: path.into(), config: BTreeMap::new(), wasi: default_wasi_grants() }
    }
}

impl std::str::FromStr for WasiGrant {
    type Err = String;

    /// `clocks`, `random`, `stdout`, `stderr` or `nn`, as in config.
    fn from_str(text: &str) -> Result<Self, String> {
        serde::Deserialize::deserialize(serde::de::value::StrDeserializer::<serde::de::value::Error>::new(text))
            .map_err(|_| format!("{text:?} is not a WASI grant: clocks, random, stdout, stderr or nn"))
    }
}

/// The grants of a guest whose config names none.
pub const DEFAULT_WASI_GRANTS: [WasiGrant; 2] = [WasiGrant::Clocks, WasiGrant::Random];

fn default_wasi_grants() -> Vec<WasiGrant> {
    DEFAULT_WASI_GRANTS.to_vec()
}

/// Where `just guests` puts the components it builds.
pub const DEFAULT_GUEST_DIR: &str = "target/guests";

impl Default for GuestsConfig {
    fn default() -> Self {
        let dir = Path::new(DEFAULT_GUEST_DIR);
        GuestsConfig {
            preprocess: dir.join("preprocess.wasm"),
            preprocess_wasi: default_wasi_grants(),
            postprocess: dir.join("postprocess.wasm"),
            postprocess_wasi: default_wasi_grants(),
            rules: vec![RuleConfig {
                path: dir.join("rules-threshold.wasm"),
                config: BTreeMap::from([("min-confidence".to_string(), "0.5".to_string())]),
                wasi: default_wasi_grants(),
            }],
        }
    }
}
