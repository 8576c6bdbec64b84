//! `POST /v1/tasks/{name}` and `GET /v1/tasks`: task guests (`[tasks.<name>]`), each the whole
//! request: the body as it came (or a multipart upload's `image` field), its content type, and
//! the query parameters and `x-*` headers as the task's parameters.

use std::sync::Arc;
use std::time::Instant;

use http::{StatusCode, header};
use hyper::body::Incoming;
use serde::Serialize;
use serde_json::json;
use tessera::{ErrorKind, Stage, TaskInput, TaskResult};

use super::{
    Body, HttpError, Upload, content_length, error, json_response, metadata, multipart_image, parse_timeout,
    read_body_by, ready_host, too_large, upload_kind,
};
use crate::service::{self, AppState};

/// Runs task `name` on the request. `body` is borrowed as in `classify`: what this leaves
/// unread is discarded by the caller.
pub(super) async fn run(
    state: &Arc<AppState>,
    req: &http::request::Parts,
    body: &mut Incoming,
    name: &str,
    start: Instant,
    request_id: &str,
) -> Result<http::Response<Body>, HttpError> {
    let host = ready_host(state)?.clone();
    let timeout = parse_timeout(&req.headers)?;
    let context = state.context(start, timeout);
    let max_body = state.config.limits.max_body_bytes;
    if let Some(len) = content_length(&req.headers)
        && len > max_body
    {
        return Err(too_large(len.to_string(), max_body));
    }
    // Any content type: a task may take JSON, text or an image. A multipart upload gives its
    // `image` field, as /v1/classify takes it.
    let boundary = match upload_kind(&req.headers) {
        Ok(Upload::Multipart(boundary)) => Some(boundary),
        _ => None,
    };
    let declared =
        req.headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(|v| v.trim().to_ascii_lowercase());
    state.has_room()?;
    let bytes = read_body_by(body, max_body, context.deadline()).await?;
    let (bytes, content_type) = match boundary {
        Some(boundary) => multipart_image(bytes, boundary).await?,
        None => (bytes, declared),
    };
    let mut params: Vec<(String, String)> = form_urlencoded::parse(req.uri.query().unwrap_or("").as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    params.extend(metadata(&req.headers, request_id));
    let input = TaskInput { body: bytes.to_vec(), content_type, params };
    let permit = state.admit()?;
    let result = service::run_task(host, name.to_string(), input, context, permit).await?;
    Ok(json_response(StatusCode::OK, &TaskResponse { result: &result, request_id }))
}

#[derive(Serialize)]
struct TaskResponse<'a> {
    #[serde(flatten)]
    result: &'a TaskResult,
    request_id: &'a str,
}

/// `GET /v1/tasks`: every configured task, its guest, the models it may call, its WASI.
pub(super) fn list(state: &AppState) -> Result<http::Response<Body>, HttpError> {
    Ok(json_response(StatusCode::OK, &json!({ "tasks": ready_host(state)?.tasks() })))
}

/// A task name in a path: what config allows (letters, digits, '-', '_'), else 404 at once.
pub(super) fn name(path: &str) -> Result<&str, HttpError> {
    let name = &path["/v1/tasks/".len()..];
    let word = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
    if name.is_empty() || name.len() > 64 || !name.chars().all(word) {
        return Err(error(ErrorKind::TaskNotFound, Stage::Admission, format!("no task named {name:?}")));
    }
    Ok(name)
}
