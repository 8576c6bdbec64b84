//! Tessera's HTTP API: `POST /v1/classify`, `GET /v1/models[/{name}]`, `/v1/pipelines`,
//! `/healthz`, `/readyz`, `/metrics`, `POST /v1/admin/reload` and `GET /`, a page to try it
//! (`router.rs` sends each request here or to the OIP routes), and the HTTP plumbing both HTTP
//! APIs share: error answers, body limits and reading, the deadline header.
//!
//! This is the one place that converts between Tessera's HTTP API and the serving core
//! (`service.rs`): query, headers and body become a [`ClassifyRequest`]; a [`RequestError`]
//! becomes a status and a JSON body.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use serde::Serialize;
use serde_json::json;
use subtle::ConstantTimeEq;

use crate::service::{self, AppState, Listener};
use tessera::Classification;
use tessera::ClassifyRequest;
use tessera::Host;
use tessera::{ErrorKind, RequestError, Stage};

pub(super) type Body = Full<Bytes>;

use service::{REQUEST_ID, REQUEST_TIMEOUT_MS};
/// What `Retry-After` says on 503, in seconds.
const RETRY_AFTER_S: &str = "1";

/// The HTTP status for each error kind (the table in docs/API.md).
pub fn status_for(kind: ErrorKind) -> StatusCode {
    match kind {
        ErrorKind::BadRequest | ErrorKind::InvalidImage => StatusCode::BAD_REQUEST,
        ErrorKind::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorKind::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ErrorKind::ImageTooLarge => StatusCode::UNPROCESSABLE_ENTITY,
        ErrorKind::ModelNotFound | ErrorKind::PipelineNotFound | ErrorKind::TaskNotFound => StatusCode::NOT_FOUND,
        ErrorKind::GuestTrap | ErrorKind::GuestMemoryExceeded | ErrorKind::GuestFailed | ErrorKind::Internal => {
            StatusCode::INTERNAL_SERVER_ERROR
        }
        ErrorKind::Overloaded | ErrorKind::NotReady => StatusCode::SERVICE_UNAVAILABLE,
        ErrorKind::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
    }
}

/// Answers a request for Tessera's own HTTP API (everything but `/v2`) on `listener`.
pub(crate) async fn route(
    state: &Arc<AppState>,
    req: Request<Incoming>,
    listener: Listener,
    start: Instant,
    request_id: &str,
) -> Result<Response<Body>, HttpError> {
    let (method, path) = (req.method().clone(), req.uri().path().to_string());
    match (&method, path.as_str()) {
        (&Method::POST, "/v1/classify") => {
            let (parts, mut body) = req.into_parts();
            let result = classify(state, &parts, &mut body, start, request_id).await;
            discard_unread(body, &parts.headers, state.config.limits.max_body_bytes);
            result
        }
        (&Method::GET, "/") => Ok(page()),
        (&Method::GET, "/healthz") => Ok(json_response(StatusCode::OK, &json!({"status": "ok"}))),
        (&Method::GET, "/metrics") => Ok(metrics(state)),
        (&Method::GET, "/readyz") => Ok(readyz(state)),
        (&Method::GET, "/v1/models") => models(state),
        (&Method::GET, "/v1/pipelines") => {
            Ok(json_response(StatusCode::OK, &json!({ "pipelines": ready_host(state)?.pipelines() })))
        }
        (&Method::GET, p) if p.starts_with("/v1/models/") => model(state, &p["/v1/models/".len()..]),
        (&Method::GET, "/v1/tasks") => tasks::list(state),
        (&Method::POST, p) if p.starts_with("/v1/tasks/") => {
            let name = tasks::name(p)?.to_string();
            let (parts, mut body) = req.into_parts();
            let result = tasks::run(state, &parts, &mut body, &name, start, request_id).await;
            discard_unread(body, &parts.headers, state.config.limits.max_body_bytes);
            result
        }
        (&Method::POST, "/v1/admin/reload") => admin_reload(state, req.headers(), listener).await,
        (
            _,
            "/" | "/v1/classify" | "/healthz" | "/readyz" | "/metrics" | "/v1/models" | "/v1/pipelines" | "/v1/tasks"
            | "/v1/admin/reload",
        ) => Err(HttpError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!("{method} is not allowed on {path}"),
        )),
        (_, p) if p.starts_with("/v1/tasks/") => Err(HttpError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!("{method} is not allowed on {path}; a task is run with POST"),
        )),
        _ => Err(HttpError::new(StatusCode::NOT_FOUND, "not_found", format!("no route for {method} {path}"))),
    }
}

/// An error answer: status, code, message and (for pipeline errors) the stage.
pub(super) struct HttpError {
    pub(super) status: StatusCode,
    pub(super) code: &'static str,
    pub(super) message: String,
    pub(super) stage: Option<Stage>,
}

impl HttpError {
    pub(super) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        HttpError { status, code, message: message.into(), stage: None }
    }

    pub(crate) fn into_response(self, request_id: &str) -> Response<Body> {
        let body = json!({"error": {
            "code": self.code,
            "message": self.message,
            "stage": self.stage.map(Stage::as_str),
            "request_id": request_id,
        }});
        let mut response = json_response(self.status, &body);
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static(RETRY_AFTER_S));
        }
        if self.status == StatusCode::PAYLOAD_TOO_LARGE {
            // The rest of the body was not read: the connection cannot be reused.
            response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}

impl From<RequestError> for HttpError {
    fn from(e: RequestError) -> Self {
        HttpError { status: status_for(e.kind), code: e.kind.code(), message: e.message, stage: Some(e.stage) }
    }
}

pub(super) fn error(kind: ErrorKind, stage: Stage, message: impl Into<String>) -> HttpError {
    RequestError::new(kind, stage, message).into()
}

pub(super) fn json_response(status: StatusCode, body: &impl Serialize) -> Response<Body> {
    let bytes = serde_json::to_vec(body).expect("serializing our own response types");
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(bytes)))
        .expect("a valid static response")
}

pub(crate) fn request_id(headers: &HeaderMap) -> String {
    service::request_id(headers.get(REQUEST_ID).and_then(|v| v.to_str().ok()))
}

/// `GET /`: a page to try the API from a browser (pick or drop an image, choose model and
/// version, see the top-k, the decision and each stage's time). One file, compiled in.
const PAGE: &str = include_str!("page.html");

/// The page may run its own inline script and style, show the image it was given (a `blob:`
/// URL) and call this server: nothing else, so it cannot load or send anything elsewhere.
const PAGE_CSP: &str = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
                        img-src blob:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

fn page() -> Response<Body> {
    Response::builder()
        .header(header::CONTENT_TYPE, "text/html; charset=utf-8")
        .header(header::CONTENT_SECURITY_POLICY, PAGE_CSP)
        .header(header::X_CONTENT_TYPE_OPTIONS, "nosniff")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Full::new(Bytes::from_static(PAGE.as_bytes())))
        .expect("a valid static response")
}

fn readyz(state: &AppState) -> Response<Body> {
    match state.host.get() {
        Some(_) => json_response(StatusCode::OK, &json!({"status": "ready"})),
        None => json_response(StatusCode::SERVICE_UNAVAILABLE, &json!({"status": "loading"})),
    }
}

/// The route's label in the metrics (a bounded set: unknown paths are `other`).
pub(crate) fn endpoint(path: &str) -> &'static str {
    match path {
        "/" => "/",
        "/v1/classify" => "/v1/classify",
        "/v1/models" => "/v1/models",
        "/v1/pipelines" => "/v1/pipelines",
        "/v1/tasks" => "/v1/tasks",
        p if p.starts_with("/v1/tasks/") => "/v1/tasks/{task}",
        p if p.starts_with("/v1/models/") => "/v1/models/{model}",
        "/healthz" => "/healthz",
        "/readyz" => "/readyz",
        "/metrics" => "/metrics",
        "/v1/admin/reload" => "/v1/admin/reload",
        "/v2" => "/v2",
        "/v2/health/live" => "/v2/health/live",
        "/v2/health/ready" => "/v2/health/ready",
        p if p.starts_with("/v2/models/") && p.ends_with("/infer") => "/v2/models/{model}/infer",
        p if p.starts_with("/v2/models/") && p.ends_with("/ready") => "/v2/models/{model}/ready",
        p if p.starts_with("/v2/models/") => "/v2/models/{model}",
        _ => "other",
    }
}

/// `GET /metrics`: Prometheus' text format (OpenMetrics 1.0).
fn metrics(state: &AppState) -> Response<Body> {
    let text = match state.host.get() {
        Some(host) => host.metrics_text(),
        None => state.metrics.encode(),
    };
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")
        .body(Full::new(Bytes::from(text)))
        .expect("a valid static response")
}

fn ready_host(state: &AppState) -> Result<&Arc<Host>, HttpError> {
    Ok(state.ready_host()?)
}

fn models(state: &AppState) -> Result<Response<Body>, HttpError> {
    let host = ready_host(state)?;
    let mut models: Vec<serde_json::Value> = host.models().iter().map(|m| json!(m)).collect();
    models.extend(host.unloadable_models().iter().map(|m| json!(m)));
    Ok(json_response(StatusCode::OK, &json!({ "models": models })))
}

fn model(state: &AppState, name: &str) -> Result<Response<Body>, HttpError> {
    let host = ready_host(state)?;
    let name = percent_decode(name);
    let loaded = host.models().into_iter().find(|m| m.name == name).map(|m| json!(m));
    let unloadable = || host.unloadable_models().into_iter().find(|m| m.name == name).map(|m| json!(m));
    loaded.or_else(unloadable).map(|m| json_response(StatusCode::OK, &m)).ok_or_else(|| {
        error(ErrorKind::ModelNotFound, Stage::Admission, format!("no model named {name:?}; GET /v1/models lists them"))
    })
}

fn percent_decode(s: &str) -> String {
    form_urlencoded::parse(format!("x={s}").as_bytes()).next().map(|(_, v)| v.into_owned()).unwrap_or_default()
}

/// `POST /v1/admin/reload`: rescan models and guests now. On the admin listener (loopback by
/// default) it needs nothing; on the main address it needs `Authorization: Bearer <admin_token>`,
/// and without a configured token it is refused there (a reverse proxy in front of the main
/// address would otherwise expose it, every request arriving from loopback).
async fn admin_reload(
    state: &Arc<AppState>,
    headers: &HeaderMap,
    listener: Listener,
) -> Result<Response<Body>, HttpError> {
    match (&state.config.admin_token, listener) {
        (_, Listener::Admin) => {}
        (Some(token), Listener::Main) => {
            let given = headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "));
            // Constant time: how much of a guess matched must not show in the answer's timing.
            let matches = given.is_some_and(|g| bool::from(g.as_bytes().ct_eq(token.as_bytes())));
            if !matches {
                return Err(HttpError::new(
                    StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    "admin routes need Authorization: Bearer <admin_token>",
                ));
            }
        }
        (None, Listener::Main) => {
            return Err(HttpError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "admin routes are served on the admin address (admin_addr, loopback by default) unless \
                 admin_token is configured",
            ));
        }
    }
    let host = ready_host(state)?.clone();
    let report = tokio::task::spawn_blocking(move || host.reload())
        .await
        .map_err(|e| error(ErrorKind::Internal, Stage::Admission, format!("the reload task failed: {e}")))?;
    Ok(json_response(StatusCode::OK, &report))
}

mod tasks;

/// Query parameters of `/v1/classify`.
#[derive(Default)]
pub(super) struct ClassifyQuery {
    pub(super) top_k: Option<u64>,
    model: Option<String>,
    version: Option<String>,
    pipeline: Option<String>,
}

pub(super) fn parse_query(query: Option<&str>) -> Result<ClassifyQuery, HttpError> {
    let mut q = ClassifyQuery::default();
    for (key, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        match key.as_ref() {
            "top_k" => {
                // A number here; its range is the request context's to check.
                let k = value.parse::<u64>().map_err(|_| {
                    error(
                        ErrorKind::BadRequest,
                        Stage::Admission,
                        format!("top_k must be a whole number, got {value:?}"),
                    )
                })?;
                q.top_k = Some(k);
            }
            "model" => q.model = Some(value.into_owned()),
            "version" => q.version = Some(value.into_owned()),
            "pipeline" => q.pipeline = Some(value.into_owned()),
            other => {
                return Err(error(
                    ErrorKind::BadRequest,
                    Stage::Admission,
                    format!("unknown query parameter {other:?}; use top_k, model, version or pipeline"),
                ));
            }
        }
    }
    Ok(q)
}

pub(super) fn parse_timeout(headers: &HeaderMap) -> Result<Option<Duration>, HttpError> {
    let Some(v) = headers.get(REQUEST_TIMEOUT_MS) else { return Ok(None) };
    v.to_str()
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .filter(|ms| *ms > 0)
        .map(|ms| Some(Duration::from_millis(ms)))
        .ok_or_else(|| {
            error(
                ErrorKind::BadRequest,
                Stage::Admission,
                format!("{REQUEST_TIMEOUT_MS} must be a positive number of milliseconds"),
            )
        })
}

/// How the body carries the image.
pub(super) enum Upload {
    Raw(Option<String>),
    Multipart(String),
}

/// Raw bodies may be unlabelled, `application/octet-stream`, a urlencoded form (what curl
/// sends by default) or `image/*`; uploads must be `multipart/form-data` with a boundary.
/// Anything else is 415.
pub(super) fn upload_kind(headers: &HeaderMap) -> Result<Upload, HttpError> {
    let Some(value) = headers.get(header::CONTENT_TYPE) else { return Ok(Upload::Raw(None)) };
    let text = value.to_str().map_err(|_| {
        error(ErrorKind::UnsupportedMediaType, Stage::Admission, "the Content-Type header is not valid text")
    })?;
    let mime: mime_type::MediaType = text.parse().map_err(|_| {
        error(ErrorKind::UnsupportedMediaType, Stage::Admission, format!("Content-Type {text:?} is not a media type"))
    })?;
    match (mime.essence.as_str(), mime.boundary) {
        ("multipart/form-data", Some(boundary)) => Ok(Upload::Multipart(boundary)),
        ("multipart/form-data", None) => {
            Err(error(ErrorKind::BadRequest, Stage::Admission, "multipart/form-data needs a boundary parameter"))
        }
        // `curl --data-binary @img.png` labels the bytes as a urlencoded form: take them as they are.
        ("application/octet-stream" | "application/x-www-form-urlencoded", _) => Ok(Upload::Raw(None)),
        (essence, _) if essence.starts_with("image/") => Ok(Upload::Raw(Some(essence.to_string()))),
        (essence, _) => Err(error(
            ErrorKind::UnsupportedMediaType,
            Stage::Admission,
            format!(
                "Content-Type {essence} is not an image; send the image bytes (image/*, application/octet-stream) or multipart/form-data with a field named image"
            ),
        )),
    }
}

/// A minimal media-type parse: the essence and the multipart boundary are all we need.
mod mime_type {
    pub struct MediaType {
        pub essence: String,
        pub boundary: Option<String>,
    }

    impl std::str::FromStr for MediaType {
        type Err = ();
        fn from_str(s: &str) -> Result<Self, ()> {
            let mut parts = s.split(';');
            let essence = parts.next().unwrap_or("").trim().to_ascii_lowercase();
            if !essence.contains('/') || essence.starts_with('/') || essence.ends_with('/') {
                return Err(());
            }
            let boundary = parts.filter_map(|p| p.split_once('=')).find_map(|(k, v)| {
                k.trim().eq_ignore_ascii_case("boundary").then(|| v.trim().trim_matches('"').to_string())
            });
            Ok(MediaType { essence, boundary })
        }
    }
}

/// Answers a classify request. `body` is borrowed: whatever this leaves unread (an early
/// refusal, a body over the limit) is discarded by the caller, see [`discard_unread`].
async fn classify(
    state: &Arc<AppState>,
    req: &http::request::Parts,
    body: &mut Incoming,
    start: Instant,
    request_id: &str,
) -> Result<Response<Body>, HttpError> {
    let host = ready_host(state)?.clone();
    let query = parse_query(req.uri.query())?;
    let timeout = parse_timeout(&req.headers)?;
    let upload = upload_kind(&req.headers)?;
    let limits = &state.config.limits;
    let context = state
        .context(start, timeout)
        .with_model(query.model, query.version)
        .with_pipeline(query.pipeline)
        .with_top_k(query.top_k)?
        .with_metadata(metadata(&req.headers, request_id));

    let max_body = limits.max_body_bytes;
    if let Some(len) = content_length(&req.headers)
        && len > max_body
    {
        return Err(too_large(len.to_string(), max_body));
    }
    // The body is read before a pipeline place is taken: a slow upload holds a connection,
    // never one of the `max_concurrent_requests` places.
    state.has_room()?;
    let bytes = read_body_by(body, max_body, context.deadline()).await?;
    let (image, media_type) = match upload {
        Upload::Raw(media_type) => (bytes, media_type),
        Upload::Multipart(boundary) => multipart_image(bytes, boundary).await?,
    };
    if image.is_empty() {
        return Err(error(ErrorKind::InvalidImage, Stage::Admission, "the request has no image: the body is empty"));
    }
    let permit = state.admit()?;

    let request = ClassifyRequest { image: image.to_vec(), media_type, context };
    let result = service::classify(host, request, permit).await?;
    Ok(json_response(StatusCode::OK, &ClassifyResponse { result: &result, request_id }))
}

#[derive(Serialize)]
struct ClassifyResponse<'a> {
    #[serde(flatten)]
    result: &'a Classification,
    request_id: &'a str,
}

/// [`read_body`], refused with `DeadlineExceeded` if it has not all arrived by `deadline`.
pub(super) async fn read_body_by(body: &mut Incoming, max: u64, deadline: Instant) -> Result<Bytes, HttpError> {
    match tokio::time::timeout_at(deadline.into(), read_body(body, max)).await {
        Err(_) => Err(error(
            ErrorKind::DeadlineExceeded,
            Stage::Admission,
            "the request body did not arrive before the deadline",
        )),
        Ok(result) => result,
    }
}

/// Reads the whole body, refusing it as soon as it passes `max` bytes (a chunked upload has no
/// length to check up front). Frame by frame rather than `collect()` so that a refused body
/// stays with the caller, which discards the rest of it.
async fn read_body(body: &mut Incoming, max: u64) -> Result<Bytes, HttpError> {
    let mut out = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            error(ErrorKind::BadRequest, Stage::Admission, format!("reading the request body failed: {e}"))
        })?;
        if let Ok(data) = frame.into_data() {
            if (out.len() + data.len()) as u64 > max {
                return Err(too_large("more".into(), max));
            }
            out.extend_from_slice(&data);
        }
    }
    Ok(out.freeze())
}

/// How long an unread request body is drained after the answer (see [`discard_unread`]).
const DISCARD_FOR: Duration = Duration::from_secs(5);

/// Reads and drops, in the background, what a refused request still sends.
///
/// hyper closes a connection whose request body was left unread, and closing a socket with
/// unread bytes is a TCP reset: a client still writing its (too large, or refused early) body
/// gets "broken pipe" instead of our JSON error. Like nginx's lingering close, keep reading a
/// bounded amount (twice the body limit, for at most [`DISCARD_FOR`]) while the answer goes out;
/// a body declared larger than that, or one the client holds back behind
/// `Expect: 100-continue` (reading it would invite it), is dropped at once.
pub(crate) fn discard_unread(mut body: Incoming, headers: &HeaderMap, max_body: u64) {
    use hyper::body::Body as _;
    let budget = max_body.saturating_mul(2);
    let held_back = headers.get(header::EXPECT).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    if body.is_end_stream() || held_back || content_length(headers).is_some_and(|len| len > budget) {
        return;
    }
    tokio::spawn(async move {
        let drain = async {
            let mut read = 0u64;
            while let Some(Ok(frame)) = body.frame().await {
                read += frame.data_ref().map_or(0, |d| d.len() as u64);
                if read > budget {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(DISCARD_FOR, drain).await;
    });
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers.get(header::CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

fn too_large(got: String, max: u64) -> HttpError {
    error(
        ErrorKind::PayloadTooLarge,
        Stage::Admission,
        format!("the body is {got} bytes, over the limit of {max} bytes; send a smaller image"),
    )
}

/// What the rules guests may read: the request id and the `x-*` headers.
pub(super) fn metadata(headers: &HeaderMap, request_id: &str) -> Vec<(String, String)> {
    service::rules_metadata(
        request_id,
        headers.iter().filter_map(|(name, value)| Some((name.as_str(), value.to_str().ok()?))),
    )
}

pub(super) async fn multipart_image(body: Bytes, boundary: String) -> Result<(Bytes, Option<String>), HttpError> {
    let bad = |m: String| error(ErrorKind::BadRequest, Stage::Admission, m);
    let stream = futures_util::stream::once(async move { Ok::<Bytes, Infallible>(body) });
    let mut form = multer::Multipart::new(stream, boundary);
    while let Some(field) = form.next_field().await.map_err(|e| bad(format!("malformed multipart body: {e}")))? {
        if field.name() == Some("image") {
            let media_type =
                field.content_type().map(|m| m.essence_str().to_string()).filter(|m| m.starts_with("image/"));
            let data = field.bytes().await.map_err(|e| bad(format!("malformed multipart field image: {e}")))?;
            return Ok((data, media_type));
        }
    }
    Err(bad("the multipart form has no field named image".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_types() {
        let mut h = HeaderMap::new();
        assert!(matches!(upload_kind(&h), Ok(Upload::Raw(None))));
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        assert_eq!(upload_kind(&h).err().unwrap().status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("multipart/form-data; boundary=\"abc\""));
        assert!(matches!(upload_kind(&h), Ok(Upload::Multipart(b)) if b == "abc"));
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("IMAGE/PNG"));
        assert!(matches!(upload_kind(&h), Ok(Upload::Raw(Some(m))) if m == "image/png"));
    }

    #[test]
    fn query() {
        assert_eq!(parse_query(Some("top_k=3&model=a")).ok().unwrap().top_k, Some(3));
        // 0 is a number: the request context refuses it (request.rs's tests), not the parse.
        for bad in ["top_k=x", "top_k=-1", "colour=red"] {
            assert_eq!(parse_query(Some(bad)).err().unwrap().status, StatusCode::BAD_REQUEST, "{bad}");
        }
    }
}
