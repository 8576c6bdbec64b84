//! gRPC: the seed's `image_recognition.ImageRecognitionService/Recognize` (served with tonic on
//! `grpc_addr` beside the OIP's service, health and reflection: `router.rs`), and the gRPC
//! plumbing both gRPC services share: request spans, answers and metrics, `grpc-timeout`, error
//! statuses.
//!
//! The service is generated from `proto/tessera_image_recognition.proto`, the seed's file with
//! extra fields under new numbers (`build.rs` checks it stays wire-compatible), so a client
//! generated from the seed's unchanged file works. Like `http/`, this only converts: metadata
//! and the message become a [`ClassifyRequest`] for the serving core (`service.rs`), and a
//! [`RequestError`] becomes a status (see [`code_for`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::{Code, Request, Response, Status};
use tracing::{Instrument, Span};

use super::telemetry::{TRACEPARENT, TRACESTATE, TraceHeaders};
use crate::service::{self, AppState};
use tessera::metrics::Protocol;
use tessera::{Classification, GuestRun, TaskAnswer, TaskInput, TaskResult};
use tessera::{ClassifyRequest, RequestContext};
use tessera::{ErrorKind, RequestError, Stage};

/// Generated from `proto/tessera_image_recognition.proto` by `build.rs`.
#[allow(clippy::all)]
pub(super) mod pb {
    tonic::include_proto!("image_recognition");
}

pub(super) use pb::image_recognition_service_server::ImageRecognitionServiceServer;

/// The encoded descriptors of every service we generate, for server reflection.
pub(super) const DESCRIPTORS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/descriptors.bin"));

/// Metadata keys of an error status: our stable error code and the stage that failed (the
/// status message says what was wrong).
pub const ERROR_CODE_KEY: &str = "tessera-error-code";
pub const ERROR_STAGE_KEY: &str = "tessera-error-stage";

/// The gRPC status code for each error kind (beside `http::status_for`; docs/API.md lists both).
pub fn code_for(kind: ErrorKind) -> Code {
    match kind {
        ErrorKind::BadRequest
        | ErrorKind::InvalidImage
        | ErrorKind::UnsupportedMediaType
        | ErrorKind::ImageTooLarge => Code::InvalidArgument,
        ErrorKind::ModelNotFound | ErrorKind::PipelineNotFound | ErrorKind::TaskNotFound => Code::NotFound,
        ErrorKind::PayloadTooLarge | ErrorKind::Overloaded => Code::ResourceExhausted,
        ErrorKind::GuestTrap | ErrorKind::GuestMemoryExceeded | ErrorKind::GuestFailed | ErrorKind::Internal => {
            Code::Internal
        }
        ErrorKind::DeadlineExceeded => Code::DeadlineExceeded,
        ErrorKind::NotReady => Code::Unavailable,
    }
}

/// The methods' labels in the metrics.
const RECOGNIZE: &str = "image_recognition.ImageRecognitionService/Recognize";
const RUN_TASK: &str = "image_recognition.ImageRecognitionService/RunTask";

/// The `ImageRecognitionService` implementation.
pub(super) struct Recognition {
    pub(super) state: Arc<AppState>,
}

#[tonic::async_trait]
impl pb::image_recognition_service_server::ImageRecognitionService for Recognition {
    async fn recognize(&self, request: Request<pb::ImageRequest>) -> Result<Response<pb::RecognitionResponse>, Status> {
        let start = Instant::now();
        let (request_id, span) = begin(RECOGNIZE, request.metadata());
        let result = self.recognize(request, start, &request_id).instrument(span.clone()).await;
        answer(&self.state, RECOGNIZE, start, &request_id, &span, result)
    }

    async fn run_task(&self, request: Request<pb::TaskRequest>) -> Result<Response<pb::TaskResponse>, Status> {
        let start = Instant::now();
        let (request_id, span) = begin(RUN_TASK, request.metadata());
        let result = self.run_task(request, start, &request_id).instrument(span.clone()).await;
        answer(&self.state, RUN_TASK, start, &request_id, &span, result)
    }
}

/// A call's request id (the client's `x-request-id` or a new one) and its span (continuing the
/// client's `traceparent`), from its metadata.
pub(super) fn begin(method: &'static str, metadata: &MetadataMap) -> (String, Span) {
    let text = |key| metadata.get(key).and_then(|v| v.to_str().ok());
    let request_id = service::request_id(text(service::REQUEST_ID));
    let trace = TraceHeaders { traceparent: text(TRACEPARENT), tracestate: text(TRACESTATE) };
    let span = service::request_span(Protocol::grpc, method, &request_id, trace);
    (request_id, span)
}

/// Counts, logs and wraps one gRPC call's result: the request id in the response's (or the
/// error's) metadata, the outcome on its `span`, business errors logged as info, system errors
/// as warnings.
pub(super) fn answer<T>(
    state: &AppState,
    method: &'static str,
    start: Instant,
    request_id: &str,
    span: &Span,
    result: Result<T, RequestError>,
) -> Result<Response<T>, Status> {
    let failure = result.as_ref().err().map(|e| (e.kind.code(), e.kind.is_business(), e.stage));
    state.count(Protocol::grpc, method, start, failure);
    let ms = start.elapsed().as_secs_f64() * 1e3;
    let id = MetadataValue::try_from(request_id).ok();
    let code = match &result {
        Ok(_) => Code::Ok,
        Err(e) => code_for(e.kind),
    };
    let failure = result.as_ref().err().map(|e| (e.kind.code(), e.kind.is_business(), e.message.as_str()));
    service::end_request_span(span, code as i64, failure);
    match result {
        Ok(answer) => {
            tracing::info!(rpc = method, code = "OK", ms, request_id, "request");
            let mut response = Response::new(answer);
            if let Some(id) = id {
                response.metadata_mut().insert(service::REQUEST_ID, id);
            }
            Ok(response)
        }
        Err(e) => {
            let mut status = status(&e);
            if e.kind.is_business() {
                tracing::info!(rpc = method, code = ?status.code(), ms, request_id, error = %e, "request");
            } else {
                tracing::warn!(rpc = method, code = ?status.code(), ms, request_id, error = %e, "request failed");
            }
            if let Some(id) = id {
                status.metadata_mut().insert(service::REQUEST_ID, id);
            }
            Err(status)
        }
    }
}

impl Recognition {
    async fn recognize(
        &self,
        request: Request<pb::ImageRequest>,
        start: Instant,
        request_id: &str,
    ) -> Result<pb::RecognitionResponse, RequestError> {
        let state = &self.state;
        let host = state.ready_host()?.clone();
        let timeout = grpc_timeout(request.metadata())?;
        let metadata = service::rules_metadata(request_id, ascii_entries(request.metadata()));
        let request = classify_request(request.into_inner(), state.context(start, timeout), metadata)?;
        let permit = state.admit()?;
        let result = service::classify(host, request, permit).await?;
        Ok(response(result, request_id))
    }
}

impl Recognition {
    /// `RunTask`: as `POST /v1/tasks/{name}`, the message's parameters first, then the call's
    /// `x-*` metadata.
    async fn run_task(
        &self,
        request: Request<pb::TaskRequest>,
        start: Instant,
        request_id: &str,
    ) -> Result<pb::TaskResponse, RequestError> {
        let state = &self.state;
        let host = state.ready_host()?.clone();
        let timeout = grpc_timeout(request.metadata())?;
        let metadata = service::rules_metadata(request_id, ascii_entries(request.metadata()));
        let message = request.into_inner();
        let mut params: Vec<(String, String)> = message.params.into_iter().collect();
        params.sort();
        params.extend(metadata);
        let content_type = Some(message.content_type.trim().to_ascii_lowercase()).filter(|t| !t.is_empty());
        let input = TaskInput { body: message.body, content_type, params };
        let context = state.context(start, timeout);
        let permit = state.admit()?;
        let result = service::run_task(host, message.task, input, context, permit).await?;
        Ok(task_response(result, request_id))
    }
}

/// A call's text metadata entries (binary ones are skipped).
fn ascii_entries(metadata: &MetadataMap) -> impl Iterator<Item = (&str, &str)> {
    metadata.iter().filter_map(|entry| match entry {
        tonic::metadata::KeyAndValueRef::Ascii(k, v) => Some((k.as_str(), v.to_str().ok()?)),
        tonic::metadata::KeyAndValueRef::Binary(..) => None,
    })
}

fn task_response(r: TaskResult, request_id: &str) -> pb::TaskResponse {
    use pb::task_response::Answer;
    let answer = match r.answer {
        TaskAnswer::Detections(found) => Answer::Detections(pb::Detections {
            detections: found
                .into_iter()
                .map(|d| {
                    let [x_min, y_min, x_max, y_max] = d.bbox;
                    pb::Detection {
                        label: d.label,
                        score: d.score,
                        r#box: Some(pb::Box { x_min, y_min, x_max, y_max }),
                    }
                })
                .collect(),
        }),
        TaskAnswer::Embedding(values) => Answer::Embedding(pb::Embedding { values }),
        TaskAnswer::Classes(classes) => Answer::Classes(pb::Classes {
            classes: classes
                .into_iter()
                .map(|p| pb::Prediction { index: p.index, label: p.label, confidence: p.score })
                .collect(),
        }),
        TaskAnswer::Json(value) => Answer::Json(value.to_string()),
    };
    pb::TaskResponse {
        task: r.task,
        answer: Some(answer),
        guests: r.guests.into_iter().map(guest_run).collect(),
        timings_ms: Some(pb::TaskTimings {
            task: r.timings_ms.task,
            engine: r.timings_ms.engine,
            total: r.timings_ms.total,
        }),
        request_id: request_id.to_string(),
    }
}

fn guest_run(g: GuestRun) -> pb::GuestRun {
    pb::GuestRun {
        stage: g.stage.as_str().to_string(),
        name: g.name,
        instantiate_ms: g.instantiate_ms,
        call_ms: g.call_ms,
    }
}

/// The seed's message as the pipeline's request, in `context` (the request's deadline), checked.
pub(crate) fn classify_request(
    message: pb::ImageRequest,
    context: RequestContext,
    metadata: Vec<(String, String)>,
) -> Result<ClassifyRequest, RequestError> {
    let context = context
        .with_model(
            Some(message.model).filter(|m| !m.is_empty()),
            Some(message.model_version).filter(|v| !v.is_empty()),
        )
        .with_pipeline(Some(message.pipeline).filter(|p| !p.is_empty()))
        .with_top_k(message.top_k.map(u64::from))?
        .with_metadata(metadata);
    if message.image_data.is_empty() {
        return Err(RequestError::new(
            ErrorKind::InvalidImage,
            Stage::Admission,
            "the request has no image: image_data is empty",
        ));
    }
    Ok(ClassifyRequest { media_type: media_type(&message.image_type), image: message.image_data, context })
}

/// The client's `grpc-timeout` (`<1–8 digits><H|M|S|m|u|n>`), less the serving core's margin so
/// that our own answer, naming the stage that ran out of time, reaches the client before its
/// deadline (and before tonic's timer, which would answer a bare CANCELLED).
pub(super) fn grpc_timeout(metadata: &MetadataMap) -> Result<Option<Duration>, RequestError> {
    let Some(value) = metadata.get("grpc-timeout") else { return Ok(None) };
    let bad = || {
        RequestError::new(
            ErrorKind::BadRequest,
            Stage::Admission,
            "grpc-timeout must be 1-8 digits and a unit (H, M, S, m, u, n)",
        )
    };
    let text = value.to_str().map_err(|_| bad())?;
    if text.len() < 2 || text.len() > 9 {
        return Err(bad());
    }
    let (digits, unit) = text.split_at(text.len() - 1);
    let n: u64 = digits.parse().map_err(|_| bad())?;
    let timeout = match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return Err(bad()),
    };
    Ok(Some(timeout.saturating_sub(service::DEADLINE_MARGIN)))
}

/// `image_type` as the seed's clients send it ("jpg", "png", ".webp") or a media type
/// ("image/jpeg"): a hint only, the bytes decide the format.
fn media_type(image_type: &str) -> Option<String> {
    let t = image_type.trim().trim_start_matches('.').to_ascii_lowercase();
    match t.as_str() {
        "" => None,
        t if t.contains('/') => Some(t.to_string()),
        "jpg" => Some("image/jpeg".into()),
        "tif" => Some("image/tiff".into()),
        other => Some(format!("image/{other}")),
    }
}

fn response(c: Classification, request_id: &str) -> pb::RecognitionResponse {
    let d = c.decision;
    let t = c.timings_ms;
    pb::RecognitionResponse {
        label: c.label,
        confidence: c.confidence,
        top_k: c
            .top_k
            .into_iter()
            .map(|p| pb::Prediction { index: p.index, label: p.label, confidence: p.score })
            .collect(),
        model: c.model.name,
        model_version: c.model.version,
        decision: Some(pb::Decision {
            accepted: d.accepted,
            reason: d.reason,
            category: d.category.unwrap_or_default(),
            tags: d.tags,
            rule: d.rule.unwrap_or_default(),
        }),
        timings_ms: Some(pb::Timings {
            preprocess: t.preprocess,
            inference: t.inference,
            postprocess: t.postprocess,
            rules: t.rules,
            total: t.total,
        }),
        request_id: request_id.to_string(),
        pipeline: c.pipeline,
        guests: c.guests.into_iter().map(guest_run).collect(),
    }
}

/// A status carrying the error's message, code and stage.
pub(super) fn status(e: &RequestError) -> Status {
    let mut status = Status::new(code_for(e.kind), e.message.clone());
    status.metadata_mut().insert(ERROR_CODE_KEY, MetadataValue::from_static(e.kind.code()));
    status.metadata_mut().insert(ERROR_STAGE_KEY, MetadataValue::from_static(e.stage.as_str()));
    status
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts() {
        let parse = |v: &str| {
            let mut m = MetadataMap::new();
            m.insert("grpc-timeout", v.parse().unwrap());
            grpc_timeout(&m)
        };
        assert_eq!(parse("2S").unwrap(), Some(Duration::from_secs(2) - service::DEADLINE_MARGIN));
        assert_eq!(parse("1500m").unwrap(), Some(Duration::from_millis(1500) - service::DEADLINE_MARGIN));
        assert_eq!(parse("10m").unwrap(), Some(Duration::ZERO));
        for bad in ["", "S", "5", "5x", "123456789S", "-5S"] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(grpc_timeout(&MetadataMap::new()).unwrap(), None);
    }

    #[test]
    fn image_types() {
        assert_eq!(media_type("jpg").as_deref(), Some("image/jpeg"));
        assert_eq!(media_type(".PNG").as_deref(), Some("image/png"));
        assert_eq!(media_type("image/webp").as_deref(), Some("image/webp"));
        assert_eq!(media_type(" "), None);
    }
}
