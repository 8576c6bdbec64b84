//! `tessera test-rules`: a rules guest against a conformance table, without a server or a model.
//!
//! A table (TOML) is one guest configuration and the cases it must decide: predictions, request
//! metadata, and the whole decision expected, or the error variant with text its message must
//! contain. `guests/conformance/reference.toml` holds every implementation of the reference rule
//! set to one behaviour; a guest author runs their own tables the same way.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::config::{Config, WasiGrant};
use crate::error::{ErrorKind, RequestError, Stage};
use crate::host::BuildError;
use crate::runtime::{GuestFailure, GuestInference, Runtime};
use crate::stage_io::Prediction;

/// A conformance table as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RulesTable {
    #[serde(default)]
    pub config: BTreeMap<String, String>,
    #[serde(rename = "case", default)]
    pub cases: Vec<RulesCase>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RulesCase {
    pub name: String,
    /// `[label, score]`, best first; the index is the position.
    pub predictions: Vec<(String, f32)>,
    #[serde(default)]
    pub meta: Vec<(String, String)>,
    /// Replaces the table's configuration for this case.
    pub config: Option<BTreeMap<String, String>>,
    pub expect: Option<ExpectedDecision>,
    /// The `error` variant expected instead of a decision: `invalid-input`, `unsupported`,
    /// `too-large` or `internal`.
    pub error: Option<String>,
    /// Text the error's message must contain.
    pub message: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ExpectedDecision {
    pub accepted: bool,
    pub category: Option<String>,
    pub reason: String,
    #[serde(default)]
    pub tags: Vec<String>,
}

/// One case's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct CaseReport {
    pub name: String,
    pub passed: bool,
    /// What the guest answered (a decision, or `variant: message`, or how the call failed).
    pub got: String,
    /// What the table expected, when the case failed.
    pub expected: Option<String>,
    pub instantiate_us: u64,
    pub call_us: u64,
}

/// A table's outcome for one component.
#[derive(Debug, Clone, Serialize)]
pub struct TableReport {
    pub table: PathBuf,
    pub component: PathBuf,
    pub cases: Vec<CaseReport>,
    /// With `repeat` > 1: the median instantiate and call times over every case of the rounds
    /// after the first (warm: compiled, pool slots used before), in microseconds.
    pub warm_median_us: Option<(u64, u64)>,
}

impl TableReport {
    pub fn passed(&self) -> bool {
        self.cases.iter().all(|c| c.passed)
    }
}

/// Rules guests under test have no model to call: `inference.infer` fails as a model that is not
/// there would.
struct NoModels;

impl GuestInference for NoModels {
    fn infer(
        &self,
        model: &str,
        _: Option<&str>,
        _: &[u32],
        _: Vec<f32>,
        _: Instant,
    ) -> Result<Vec<f32>, RequestError> {
        Err(RequestError::new(ErrorKind::ModelNotFound, Stage::Rules, format!("no model {model:?} in test-rules")))
    }
}

/// The WIT `error` variant a guest's reported error came from.
fn variant(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::InvalidImage => "invalid-input",
        ErrorKind::UnsupportedMediaType => "unsupported",
        ErrorKind::ImageTooLarge => "too-large",
        _ => "internal",
    }
}

/// Reads a table, naming the file on error.
pub fn read_table(path: &Path) -> Result<RulesTable, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let table: RulesTable = toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    for case in &table.cases {
        if case.expect.is_some() == case.error.is_some() {
            return Err(format!("{}: case {:?} needs exactly one of expect and error", path.display(), case.name));
        }
    }
    Ok(table)
}

/// Runs every case of `table` against the rules component at `component`, granted `grants`,
/// with `config`'s limits and compile cache, `repeat` times (at least once). Each case is a
/// fresh instance, as in serving; the report holds the last round's outcomes.
pub fn test_rules(
    config: &Config,
    component: &Path,
    grants: &[WasiGrant],
    table_path: &Path,
    table: &RulesTable,
    repeat: usize,
) -> Result<TableReport, BuildError> {
    let runtime = Runtime::new(&config.limits, config.compile_cache_dir.as_deref())?;
    let grants: crate::runtime::Grants = grants.iter().copied().collect();
    // One loaded guest per distinct configuration (the configuration is fixed at load).
    let mut loaded = BTreeMap::new();
    let mut cases = Vec::new();
    let mut warm = Vec::new();
    for round in 0..repeat.max(1) {
        if round > 0 {
            warm.extend(cases.iter().filter(|c: &&CaseReport| c.passed).map(|c| (c.instantiate_us, c.call_us)));
            cases.clear();
        }
        for case in &table.cases {
            let guest_config = case.config.as_ref().unwrap_or(&table.config);
            if !loaded.contains_key(guest_config) {
                let pairs = guest_config.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
                loaded.insert(guest_config.clone(), runtime.load_rules(component, pairs, grants.clone())?);
            }
            let guest = &loaded[guest_config];
            let preds: Vec<Prediction> = case
                .predictions
                .iter()
                .enumerate()
                .map(|(i, (label, score))| Prediction { index: i as u32, label: label.clone(), score: *score })
                .collect();
            let deadline = Instant::now() + Duration::from_millis(config.limits.deadline_ms);
            let outcome = runtime.decide(guest, None, &preds, &case.meta, Arc::new(NoModels), deadline);
            let (got, phases) = match outcome {
                Ok((d, phases)) => (
                    Ok(ExpectedDecision { accepted: d.accepted, category: d.category, reason: d.reason, tags: d.tags }),
                    Some(phases),
                ),
                Err(GuestFailure::Reported(kind, message)) => (Err(format!("{}: {message}", variant(kind))), None),
                Err(other) => {
                    (Err(format!("failed: {}", other.into_pipeline(Stage::Rules, &guest.name).message)), None)
                }
            };
            let passed = match (&got, &case.expect, &case.error) {
                (Ok(decision), Some(expected), _) => decision == expected,
                (Err(text), _, Some(variant)) => {
                    text.starts_with(&format!("{variant}: "))
                        && case.message.as_ref().is_none_or(|m| text.contains(m.as_str()))
                }
                _ => false,
            };
            let show = |d: &ExpectedDecision| serde_json::to_string(d).unwrap_or_default();
            let expected = (!passed).then(|| match (&case.expect, &case.error) {
                (Some(d), _) => show(d),
                (_, Some(v)) => format!("{v}: …{}…", case.message.as_deref().unwrap_or("")),
                _ => String::new(),
            });
            let phases = phases.unwrap_or_default();
            cases.push(CaseReport {
                name: case.name.clone(),
                passed,
                got: match &got {
                    Ok(d) => show(d),
                    Err(text) => text.clone(),
                },
                expected,
                instantiate_us: phases.instantiate.as_micros() as u64,
                call_us: phases.call.as_micros() as u64,
            });
        }
    }
    if repeat > 1 {
        warm.extend(cases.iter().filter(|c| c.passed).map(|c| (c.instantiate_us, c.call_us)));
    }
    let median = |mut v: Vec<u64>| {
        v.sort_unstable();
        v.get(v.len() / 2).copied().unwrap_or_default()
    };
    let warm_median_us = (!warm.is_empty())
        .then(|| (median(warm.iter().map(|w| w.0).collect()), median(warm.iter().map(|w| w.1).collect())));
    Ok(TableReport { table: table_path.to_path_buf(), component: component.to_path_buf(), cases, warm_median_us })
}
