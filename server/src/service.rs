//! The serving core every protocol shares: readiness, request ids, the request's deadline,
//! admission, and running a classification off the async threads. A protocol module (HTTP
//! today) only turns its wire format into a [`ClassifyRequest`] and the answer, or the
//! [`RequestError`], back into its own; nothing here knows a status code or a header.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use tessera::Config;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::Span;
use tracing::field::Empty;

use super::telemetry::{self, TraceHeaders};
use tessera::Host;
use tessera::metrics::{Metrics, Protocol};
use tessera::{Classification, TaskInput, TaskResult, TensorOutput};
use tessera::{ClassifyRequest, Progress, RequestContext, TensorRequest};
use tessera::{ErrorKind, RequestError, Stage};

/// The header (HTTP) or metadata key (gRPC) carrying the request id, accepted from the client
/// or generated, and returned with the answer.
pub const REQUEST_ID: &str = "x-request-id";
/// The header or metadata key a client may use to shorten (never lengthen) the deadline, in
/// milliseconds (gRPC clients usually send `grpc-timeout` instead).
pub const REQUEST_TIMEOUT_MS: &str = "x-request-timeout-ms";

/// Longest client-supplied request id kept; longer ones are replaced.
const MAX_REQUEST_ID_LEN: usize = 128;

/// How long after the deadline the protocol side waits for the pipeline's own answer: guests
/// and inference stop themselves at the deadline, and their error (naming the stage that ran
/// out) is more precise than the generic one given when this margin passes too.
pub(super) const DEADLINE_MARGIN: Duration = Duration::from_millis(50);

/// Which listener a connection came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Listener {
    Main,
    Admin,
}

/// What every connection shares.
pub(crate) struct AppState {
    /// Set once models and guests are loaded.
    pub(crate) host: OnceLock<Arc<Host>>,
    pub(crate) config: Config,
    /// One permit per request in the pipeline; none left means 503.
    pub(crate) places: Arc<Semaphore>,
    /// Keeps the file watcher alive while the server runs.
    pub(crate) watch: OnceLock<tessera::WatchGuard>,
    /// Made before the host (requests are counted while it loads), then shared with it.
    pub(crate) metrics: Arc<Metrics>,
}

/// The request id: the client's if it is usable (1–128 printable ASCII characters), else a
/// fresh UUID.
pub(super) fn request_id(client: Option<&str>) -> String {
    client
        .filter(|v| !v.is_empty() && v.len() <= MAX_REQUEST_ID_LEN && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(String::from)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string())
}

/// What the rules guests may read of a request: its id (as `request-id`), then its `x-*`
/// headers or metadata entries (names lower-case, as both protocols carry them) but the request
/// id and the deadline, which have their own meaning.
pub(super) fn rules_metadata<'a>(
    request_id: &str,
    entries: impl Iterator<Item = (&'a str, &'a str)>,
) -> Vec<(String, String)> {
    let mut meta = vec![("request-id".to_string(), request_id.to_string())];
    meta.extend(
        entries
            .filter(|(name, _)| name.starts_with("x-") && *name != REQUEST_TIMEOUT_MS && *name != REQUEST_ID)
            .map(|(name, value)| (name.to_string(), value.to_string())),
    );
    meta
}

/// The span every other span of a request descends from: named `name` (`POST /v1/classify`,
/// `image_recognition.ImageRecognitionService/Recognize`), a child of the client's span when it
/// sent a `traceparent`. [`end_request_span`] records how it ended.
pub(super) fn request_span(protocol: Protocol, name: &str, request_id: &str, trace: TraceHeaders<'_>) -> Span {
    let span = tracing::info_span!(
        "request",
        otel.name = name,
        otel.kind = "server",
        otel.status_code = Empty,
        otel.status_description = Empty,
        request_id,
        protocol = ?protocol,
        pipeline = Empty,
        status = Empty,
        error.type = Empty,
    );
    telemetry::continue_trace(&span, trace);
    span
}

/// Records a request's outcome on its span: the protocol's `status` (HTTP status, gRPC code)
/// and, for a failure, its error code; system errors (ours, not the caller's) mark the span as
/// an error.
pub(super) fn end_request_span(span: &Span, status: i64, failure: Option<(&'static str, bool, &str)>) {
    span.record("status", status);
    if let Some((code, business, message)) = failure {
        span.record("error.type", code);
        if !business {
            span.record("otel.status_code", "error");
            span.record("otel.status_description", message);
        }
    }
}

impl AppState {
    /// The loaded host, or `NotReady` while models and guests load.
    pub(super) fn ready_host(&self) -> Result<&Arc<Host>, RequestError> {
        self.host.get().ok_or_else(|| {
            RequestError::new(
                ErrorKind::NotReady,
                Stage::Admission,
                "models and guests are still loading; retry shortly",
            )
        })
    }

    /// The context of a request that arrived at `start`, due after the client's `timeout` or
    /// `limits.deadline_ms`, whichever is shorter.
    pub(super) fn context(&self, start: Instant, timeout: Option<Duration>) -> RequestContext {
        RequestContext::new(&self.config.limits, start, timeout)
    }

    /// One of the `limits.max_concurrent_requests` places, or `Overloaded` when they are all
    /// in flight. Taken once the request's body has arrived.
    pub(super) fn admit(&self) -> Result<Permit, RequestError> {
        let permit = self.places.clone().try_acquire_owned().map_err(|_| self.full())?;
        self.metrics.in_flight().inc();
        Ok(Permit { _permit: permit, metrics: self.metrics.clone() })
    }

    /// `Overloaded` when no place is free right now: checked before a body is read, so that
    /// under overload the excess is refused without reading it (the place itself is taken
    /// after, by [`Self::admit`]: a slow upload never holds one).
    pub(super) fn has_room(&self) -> Result<(), RequestError> {
        if self.places.available_permits() == 0 { Err(self.full()) } else { Ok(()) }
    }

    fn full(&self) -> RequestError {
        RequestError::new(
            ErrorKind::Overloaded,
            Stage::Admission,
            format!(
                "{} requests are already in flight (limits.max_concurrent_requests); retry shortly",
                self.config.limits.concurrent_requests()
            ),
        )
    }

    /// Counts an answered request: `failure` is the error's code, whether it was the caller's
    /// (business) and the stage it failed in. The one place protocols report to the metrics.
    pub(super) fn count(
        &self,
        protocol: Protocol,
        endpoint: &'static str,
        start: Instant,
        failure: Option<(&'static str, bool, Stage)>,
    ) {
        self.metrics.request(protocol, endpoint, start.elapsed(), failure);
    }
}

/// An admitted request's place (`limits.max_concurrent_requests`), counted in the in-flight
/// gauge until dropped.
pub(super) struct Permit {
    _permit: OwnedSemaphorePermit,
    metrics: Arc<Metrics>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.metrics.in_flight().dec();
    }
}

/// Runs `request` on a blocking thread, answered by its deadline. The admission `permit` goes
/// with the work and is released only when the work has stopped, even when the
/// answer given here is an error because the deadline passed first: admitted work never
/// exceeds the limit.
pub(super) async fn classify(
    host: Arc<Host>,
    request: ClassifyRequest,
    permit: Permit,
) -> Result<Classification, RequestError> {
    run(host, request.context.deadline(), permit, move |host, progress| {
        let result = host.classify_tracked(&request, progress);
        if result.as_ref().is_ok_and(|c| !c.decision.accepted) {
            host.metrics().rejection();
        }
        result
    })
    .await
}

/// Runs task `name` on `input`, as [`classify`] runs the pipeline.
pub(super) async fn run_task(
    host: Arc<Host>,
    name: String,
    input: TaskInput,
    context: RequestContext,
    permit: Permit,
) -> Result<TaskResult, RequestError> {
    run(host, context.deadline(), permit, move |host, progress| host.run_task(&name, &input, &context, progress)).await
}

/// Runs the model alone on a caller's tensor, as [`classify`] runs the pipeline.
pub(super) async fn infer(
    host: Arc<Host>,
    tensor: TensorRequest,
    permit: Permit,
) -> Result<TensorOutput, RequestError> {
    run(host, tensor.context.deadline(), permit, move |host, progress| host.infer_tracked(tensor, progress)).await
}

/// `work` on a blocking thread with `permit` held until it returns; answered by `deadline`
/// (plus the margin) whatever it does.
async fn run<T: Send + 'static>(
    host: Arc<Host>,
    deadline: Instant,
    permit: Permit,
    work: impl FnOnce(&Host, &Progress) -> Result<T, RequestError> + Send + 'static,
) -> Result<T, RequestError> {
    if Instant::now() >= deadline {
        // Nothing can run in no time: answer now, before the protocol's own timer does (tonic
        // answers a bare CANCELLED when `grpc-timeout` runs out first).
        return Err(RequestError::new(
            ErrorKind::DeadlineExceeded,
            Stage::Admission,
            "the deadline left no time to run anything; allow more time",
        ));
    }
    let progress = Arc::new(Progress::default());
    let running = progress.clone();
    // The pipeline's stage and guest spans are children of the request's.
    let span = Span::current();
    let work = tokio::task::spawn_blocking(move || {
        tessera::compute_thread();
        let result = span.in_scope(|| work(&host, &running));
        drop(permit);
        result
    });
    match tokio::time::timeout_at((deadline + DEADLINE_MARGIN).into(), work).await {
        Err(_) => {
            // The pipeline stops itself at the deadline (epoch traps, inference deadline
            // checks); this is the net for work that cannot be interrupted (one inference run).
            let stage = progress.stage();
            Err(RequestError::new(
                ErrorKind::DeadlineExceeded,
                stage,
                format!("the request deadline passed while the {} stage was running", stage.as_str()),
            ))
        }
        Ok(Err(join)) => {
            Err(RequestError::new(ErrorKind::Internal, Stage::Admission, format!("the pipeline task failed: {join}")))
        }
        Ok(Ok(result)) => result,
    }
}
