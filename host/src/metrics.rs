//! Prometheus metrics (`prometheus-client`): what the serving layer and the pipeline count, and
//! the text exposition `/metrics` serves. Every family is documented in docs/API.md.
//!
//! Counters and histograms are recorded where things happen (requests in tessera-server's `service.rs`,
//! stages, models and guests in `pipeline.rs`); gauges of state (queue depth, loaded versions,
//! guest instances) are sampled from the host when scraped. Nothing here knows a protocol: the
//! protocol is a label its caller passes.

use std::fmt;
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

use crate::error::{ErrorKind, Stage};

/// Latency buckets: 0.25 ms doubling to ~8 s (16 buckets), from a tiny model's guest call to a
/// 12 MP photo through ResNet-50.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_25, 2.0, 16))
}

/// The wire a request came in on.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Protocol {
    http,
    grpc,
}

/// Business errors are the caller's (bad input, unknown model, a rule's rejection); system
/// errors are ours or the load's. The seed counts the two apart.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
enum ErrorClass {
    business,
    system,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    protocol: Protocol,
    endpoint: &'static str,
    code: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointLabels {
    protocol: Protocol,
    endpoint: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    class: ErrorClass,
    code: &'static str,
    stage: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModelLabels {
    model: String,
    version: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TaskLabels {
    task: String,
    /// `ok`, or the error's code.
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModelFailureLabels {
    model: String,
    version: String,
    reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StageLabels {
    stage: &'static str,
    model: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GuestLabels {
    guest: String,
    stage: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GuestOutputLabels {
    guest: String,
    stream: &'static str,
    /// Which budget dropped it: `call` (16 KiB a call, 1 KiB a line) or `rate` (per second).
    budget: &'static str,
}

/// Guest output (stdout, stderr) that a budget dropped, in bytes; the runtime counts into it
/// (`Runtime::counting_output_in`).
#[derive(Debug, Clone, Default)]
pub struct GuestOutputDropped(Family<GuestOutputLabels, Counter>);

impl GuestOutputDropped {
    pub(crate) fn add(&self, guest: &str, stream: &'static str, budget: &'static str, bytes: u64) {
        self.0.get_or_create(&GuestOutputLabels { guest: guest.to_string(), stream, budget }).inc_by(bytes);
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GuestFailureLabels {
    guest: String,
    stage: &'static str,
    code: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RuleLabels {
    rule: String,
    decision: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModelOnly {
    model: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionStateLabels {
    model: String,
    version: String,
    state: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
    wasmtime: &'static str,
    tract: &'static str,
}

/// Every metric of one host (or one server): cheap to record into from any thread.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    request_seconds: Family<EndpointLabels, Histogram>,
    errors: Family<ErrorLabels, Counter>,
    in_flight: Gauge,
    model_success: Family<ModelLabels, Counter>,
    model_failure: Family<ModelFailureLabels, Counter>,
    stage_seconds: Family<StageLabels, Histogram>,
    task_seconds: Family<TaskLabels, Histogram>,
    guest_instantiate_seconds: Family<GuestLabels, Histogram>,
    guest_call_seconds: Family<GuestLabels, Histogram>,
    guest_failures: Family<GuestFailureLabels, Counter>,
    rule_decisions: Family<RuleLabels, Counter>,
    queue_depth: Family<ModelLabels, Gauge>,
    versions_loaded: Family<ModelOnly, Gauge>,
    version_state: Family<VersionStateLabels, Gauge>,
    guest_instances: Gauge,
    guest_memory: Gauge,
    guest_warm_memories: Gauge,
    guest_output_dropped: GuestOutputDropped,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Metrics { .. }")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("tessera");
        let m = Metrics {
            requests: Family::default(),
            request_seconds: Family::new_with_constructor(latency_histogram),
            errors: Family::default(),
            in_flight: Gauge::default(),
            model_success: Family::default(),
            model_failure: Family::default(),
            stage_seconds: Family::new_with_constructor(latency_histogram),
            task_seconds: Family::new_with_constructor(latency_histogram),
            guest_instantiate_seconds: Family::new_with_constructor(latency_histogram),
            guest_call_seconds: Family::new_with_constructor(latency_histogram),
            guest_failures: Family::default(),
            rule_decisions: Family::default(),
            queue_depth: Family::default(),
            versions_loaded: Family::default(),
            version_state: Family::default(),
            guest_instances: Gauge::default(),
            guest_memory: Gauge::default(),
            guest_warm_memories: Gauge::default(),
            guest_output_dropped: GuestOutputDropped::default(),
            registry: Registry::default(),
        };
        // Counters get `_total` appended by the encoder; histograms get `_bucket`/`_sum`/`_count`.
        registry.register(
            "requests",
            "Requests answered, by protocol, endpoint and outcome (`ok` or the error code)",
            m.requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time from a request's arrival to its answer, by protocol and endpoint",
            m.request_seconds.clone(),
        );
        registry.register(
            "errors",
            "Failed or rejected classifications by class (business: the caller's input or a rule's \
             rejection; system: ours or the load), error code and stage",
            m.errors.clone(),
        );
        registry.register("requests_in_flight", "Classifications admitted and not yet finished", m.in_flight.clone());
        registry.register(
            "inference_request_success",
            "Classifications that completed, per model and version (Triton's nv_inference_request_success)",
            m.model_success.clone(),
        );
        registry.register(
            "inference_request_failure",
            "Classifications that failed after their model was resolved, per model, version and reason \
             (Triton's nv_inference_request_failure)",
            m.model_failure.clone(),
        );
        registry.register(
            "task_duration_seconds",
            "Task requests (POST /v1/tasks/{name}) by task and outcome (ok, or the error's code): count and \
             time from arrival to answer",
            m.task_seconds.clone(),
        );
        registry.register(
            "stage_duration_seconds",
            "Time in each pipeline stage of completed classifications (preprocess, inference, postprocess, rules)",
            m.stage_seconds.clone(),
        );
        registry.register(
            "guest_instantiate_duration_seconds",
            "Time to instantiate a guest component for one call, per guest",
            m.guest_instantiate_seconds.clone(),
        );
        registry.register(
            "guest_call_duration_seconds",
            "Time in a guest's exported function (with argument and result copies), per guest",
            m.guest_call_seconds.clone(),
        );
        registry.register(
            "guest_failures",
            "Guest calls that failed (trap, memory, deadline, the guest's own error), per guest and error code",
            m.guest_failures.clone(),
        );
        registry.register(
            "rule_decisions",
            "Decisions of each rules guest (accepted or rejected)",
            m.rule_decisions.clone(),
        );
        registry.register(
            "inference_queue_depth",
            "Inference jobs accepted and not finished (running or queued), per model version; sampled when scraped",
            m.queue_depth.clone(),
        );
        registry.register(
            "model_versions_loaded",
            "Versions of each model that can serve; sampled when scraped",
            m.versions_loaded.clone(),
        );
        registry.register(
            "model_version_state",
            "1 for each model version's current state (ready or failed); sampled when scraped",
            m.version_state.clone(),
        );
        registry.register(
            "guest_instances_in_use",
            "Guest component instances in a call (pool slots in use); sampled when scraped",
            m.guest_instances.clone(),
        );
        registry.register_with_unit(
            "guest_memory",
            "Linear memory granted to the guest instances alive, all together (limits.guest_memory_total_bytes \
             bounds it); sampled when scraped",
            Unit::Bytes,
            m.guest_memory.clone(),
        );
        registry.register(
            "guest_pool_warm_memories",
            "Guest linear-memory slots used before and free now, each keeping up to \
             limits.guest_keep_resident_bytes resident; stays bounded across guest reloads; sampled when scraped",
            m.guest_warm_memories.clone(),
        );
        registry.register_with_unit(
            "guest_output_dropped",
            "Guest output (granted stdout/stderr) not logged: over a call's 16 KiB or a line's 1 KiB (budget=call), \
             or over limits.guest_log_bytes_per_second of the guest's calls together (budget=rate)",
            Unit::Bytes,
            m.guest_output_dropped.0.clone(),
        );
        let build_info = Family::<BuildLabels, Gauge>::default();
        build_info
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
                wasmtime: env!("TESSERA_WASMTIME_VERSION"),
                tract: env!("TESSERA_TRACT_VERSION"),
            })
            .set(1);
        registry.register("build_info", "Tessera's version and the engines it was built with", build_info);
        Metrics { registry, ..m }
    }

    /// The text exposition format (OpenMetrics, which Prometheus scrapes as text).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String");
        out
    }

    /// One answered request; `failure` = (error code, the caller's fault?, stage).
    pub fn request(
        &self,
        protocol: Protocol,
        endpoint: &'static str,
        took: Duration,
        failure: Option<(&'static str, bool, Stage)>,
    ) {
        let code = failure.map_or("ok", |(code, ..)| code);
        self.requests.get_or_create(&RequestLabels { protocol, endpoint, code }).inc();
        self.request_seconds.get_or_create(&EndpointLabels { protocol, endpoint }).observe(took.as_secs_f64());
        if let Some((code, business, stage)) = failure {
            let class = if business { ErrorClass::business } else { ErrorClass::system };
            self.errors.get_or_create(&ErrorLabels { class, code, stage: stage.as_str() }).inc();
        }
    }

    /// A rules rejection: a business outcome (the answer is still a 200), counted with the
    /// business errors.
    pub fn rejection(&self) {
        let labels = ErrorLabels { class: ErrorClass::business, code: "rule_rejected", stage: Stage::Rules.as_str() };
        self.errors.get_or_create(&labels).inc();
    }

    /// The gauge of admitted classifications.
    pub fn in_flight(&self) -> &Gauge {
        &self.in_flight
    }

    pub(crate) fn model_result(&self, model: &str, version: u64, result: Result<(), ErrorKind>) {
        let (model, version) = (model.to_string(), version.to_string());
        match result {
            Ok(()) => self.model_success.get_or_create(&ModelLabels { model, version }).inc(),
            Err(kind) => {
                self.model_failure.get_or_create(&ModelFailureLabels { model, version, reason: kind.code() }).inc()
            }
        };
    }

    /// One task request: its task, its outcome and how long it took.
    pub(crate) fn task(&self, task: &str, result: Result<(), ErrorKind>, took: Duration) {
        let outcome = result.map_or_else(ErrorKind::code, |()| "ok");
        self.task_seconds.get_or_create(&TaskLabels { task: task.to_string(), outcome }).observe(took.as_secs_f64());
    }

    pub(crate) fn stage(&self, stage: Stage, model: &str, took: Duration) {
        self.stage_seconds
            .get_or_create(&StageLabels { stage: stage.as_str(), model: model.to_string() })
            .observe(took.as_secs_f64());
    }

    pub(crate) fn guest_call(&self, guest: &str, stage: Stage, instantiate: Duration, call: Duration) {
        let labels = GuestLabels { guest: guest.to_string(), stage: stage.as_str() };
        self.guest_instantiate_seconds.get_or_create(&labels).observe(instantiate.as_secs_f64());
        self.guest_call_seconds.get_or_create(&labels).observe(call.as_secs_f64());
    }

    /// Where the runtime counts the guest output its budgets drop.
    pub(crate) fn guest_output_dropped(&self) -> GuestOutputDropped {
        self.guest_output_dropped.clone()
    }

    pub(crate) fn guest_failure(&self, guest: &str, stage: Stage, kind: ErrorKind) {
        let labels = GuestFailureLabels { guest: guest.to_string(), stage: stage.as_str(), code: kind.code() };
        self.guest_failures.get_or_create(&labels).inc();
    }

    pub(crate) fn rule_decision(&self, rule: &str, accepted: bool) {
        let decision = if accepted { "accepted" } else { "rejected" };
        self.rule_decisions.get_or_create(&RuleLabels { rule: rule.to_string(), decision }).inc();
    }

    /// Replaces the sampled gauges with the host's current state.
    pub(crate) fn sample(&self, state: &SampledState) {
        self.queue_depth.clear();
        self.versions_loaded.clear();
        self.version_state.clear();
        for (model, version, depth) in &state.queue_depths {
            let labels = ModelLabels { model: model.clone(), version: version.to_string() };
            self.queue_depth.get_or_create(&labels).set(*depth as i64);
        }
        for (model, loaded) in &state.versions_loaded {
            self.versions_loaded.get_or_create(&ModelOnly { model: model.clone() }).set(*loaded as i64);
        }
        for (model, version, ready) in &state.version_states {
            let labels = VersionStateLabels {
                model: model.clone(),
                version: version.to_string(),
                state: if *ready { "ready" } else { "failed" },
            };
            self.version_state.get_or_create(&labels).set(1);
        }
        self.guest_instances.set(state.guest_instances as i64);
        self.guest_memory.set(state.guest_memory_bytes as i64);
        self.guest_warm_memories.set(state.guest_warm_memories as i64);
    }
}

/// What [`Metrics::sample`] reads from a host.
#[derive(Debug, Default)]
pub(crate) struct SampledState {
    /// (model, version, jobs accepted and not finished)
    pub queue_depths: Vec<(String, u64, usize)>,
    /// (model, versions that can serve)
    pub versions_loaded: Vec<(String, usize)>,
    /// (model, version, ready?)
    pub version_states: Vec<(String, u64, bool)>,
    pub guest_instances: usize,
    pub guest_memory_bytes: usize,
    pub guest_warm_memories: u32,
}
