//! The Open Inference Protocol's REST face (the `/v2` routes): health, server and model
//! metadata, model readiness, and `infer` with JSON tensors and the binary tensor data extension
//! (`Inference-Header-Content-Length`), so tritonclient and KServe clients work unchanged. It
//! converts HTTP to and from the protocol's core (`mod.rs`), with the HTTP plumbing of `http/`.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderValue, Method, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::{Data, IMAGE_INPUT, Input, InputData, Output, TensorMeta, bad, context, model_metadata, run, task_params};
use crate::http::{Body, HttpError, json_response, parse_timeout, read_body_by};
use crate::service::AppState;
use tessera::Host;
use tessera::RequestError;

/// The binary tensor data extension's header: the JSON part's length, binary tensors after it.
pub const HEADER_LENGTH: &str = "inference-header-content-length";

/// Answers a `/v2...` request; `Err` becomes `{"error": "..."}` with the status of its kind.
pub(crate) async fn handle(
    state: &Arc<AppState>,
    req: &http::request::Parts,
    body: &mut Incoming,
    start: Instant,
    request_id: &str,
) -> Result<Response<Body>, HttpError> {
    let path = req.uri.path();
    let method = &req.method;
    match (method, path) {
        (&Method::GET, "/v2/health/live") => return Ok(json_response(StatusCode::OK, &json!({"live": true}))),
        (&Method::GET, "/v2/health/ready") => {
            let ready = state.host.get().is_some();
            let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
            return Ok(json_response(status, &json!({"ready": ready})));
        }
        (&Method::GET, "/v2") => {
            let meta =
                json!({"name": "tessera", "version": env!("CARGO_PKG_VERSION"), "extensions": ["binary_tensor_data"]});
            return Ok(json_response(StatusCode::OK, &meta));
        }
        _ => {}
    }
    let Some(rest) = path.strip_prefix("/v2/models/") else {
        return Err(HttpError::new(StatusCode::NOT_FOUND, "not_found", format!("no route for {method} {path}")));
    };
    let parts: Vec<&str> = rest.split('/').collect();
    let (model, version, action) = match parts.as_slice() {
        [m] => (*m, None, None),
        [m, a] => (*m, None, Some(*a)),
        [m, "versions", v] => (*m, Some(*v), None),
        [m, "versions", v, a] => (*m, Some(*v), Some(*a)),
        _ => return Err(HttpError::new(StatusCode::NOT_FOUND, "not_found", format!("no route for {method} {path}"))),
    };
    let host = state.ready_host()?.clone();
    match (method, action) {
        (&Method::GET, None) => metadata(&host, model, version),
        (&Method::GET, Some("ready")) => {
            let ready =
                host.model_io(Some(model), version).is_ok() || (version.is_none() && super::is_task(&host, model));
            let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
            Ok(json_response(status, &json!({"name": model, "ready": ready})))
        }
        (&Method::POST, Some("infer")) => model_infer(state, host, req, body, start, request_id, model, version).await,
        _ => Err(HttpError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!("{method} is not allowed on {path}"),
        )),
    }
}

/// `GET /v2/models/{m}[/versions/{v}]`.
fn metadata(host: &Host, model: &str, version: Option<&str>) -> Result<Response<Body>, HttpError> {
    let m = model_metadata(host, model, version)?;
    let tensors = |ts: &[TensorMeta]| {
        ts.iter().map(|t| json!({"name": t.name, "datatype": t.datatype, "shape": t.shape})).collect::<Vec<_>>()
    };
    let meta = json!({
        "name": m.name,
        "versions": m.versions,
        "platform": m.platform,
        "inputs": tensors(&m.inputs),
        "outputs": tensors(&m.outputs),
    });
    Ok(json_response(StatusCode::OK, &meta))
}

#[derive(Deserialize)]
struct InferRequest {
    id: Option<String>,
    #[serde(default)]
    parameters: Map<String, Value>,
    inputs: Vec<InputTensor>,
    #[serde(default)]
    outputs: Vec<RequestedOutput>,
}

#[derive(Deserialize)]
struct InputTensor {
    name: String,
    shape: Vec<i64>,
    datatype: String,
    #[serde(default)]
    parameters: Map<String, Value>,
    data: Option<Value>,
}

#[derive(Deserialize)]
struct RequestedOutput {
    name: String,
    #[serde(default)]
    parameters: Map<String, Value>,
}

/// `POST /v2/models/{m}[/versions/{v}]/infer`.
#[allow(clippy::too_many_arguments)]
async fn model_infer(
    state: &Arc<AppState>,
    host: Arc<Host>,
    req: &http::request::Parts,
    body: &mut Incoming,
    start: Instant,
    request_id: &str,
    model: &str,
    version: Option<&str>,
) -> Result<Response<Body>, HttpError> {
    let base = state.context(start, parse_timeout(&req.headers)?);
    let max_body = state.config.limits.max_body_bytes;
    let header_len = match req.headers.get(HEADER_LENGTH) {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|s| s.trim().parse::<usize>().ok())
                .ok_or_else(|| bad(format!("{HEADER_LENGTH} must be a byte count")))?,
        ),
    };
    // Refused before the body is read when no place is free, as /v1/classify does.
    state.has_room()?;
    let body = read_body_by(body, max_body, base.deadline()).await?;
    let Rest { request, input, top_k, pipeline } = parse_rest(header_len, body)?;
    let context = context(base, model, version, pipeline, top_k, request_id)?;
    let params = task_params(request.parameters.iter().map(|(k, v)| (k.as_str(), text(v))));
    let (outputs, parameters, which) = run(state, host, context, input, model, params).await?;

    // The requested outputs, in the order asked (all of them when none are named).
    let binary_default = request.parameters.get("binary_data_output").and_then(Value::as_bool).unwrap_or(false);
    let mut selected: Vec<(Output, bool)> = Vec::new();
    if request.outputs.is_empty() {
        selected.extend(outputs.into_iter().map(|o| (o, binary_default)));
    } else {
        let mut outputs: Vec<Option<Output>> = outputs.into_iter().map(Some).collect();
        for wanted in &request.outputs {
            let found = outputs.iter_mut().find(|o| o.as_ref().is_some_and(|o| o.name == wanted.name));
            let Some(output) = found.and_then(Option::take) else {
                return Err(bad(format!("no output named {:?} for this input", wanted.name)).into());
            };
            let binary = wanted.parameters.get("binary_data").and_then(Value::as_bool).unwrap_or(binary_default);
            selected.push((output, binary));
        }
    }
    Ok(encode_response(&which.name, &which.version, request.id.as_deref(), parameters, selected))
}

/// A JSON parameter as text: a string as it is, anything else as JSON.
fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A REST inference request, parsed.
pub(crate) struct Rest {
    request: InferRequest,
    pub input: Input,
    pub top_k: Option<u64>,
    pub pipeline: Option<String>,
}

/// Parses a REST inference body: JSON, followed by binary tensor data when `header_len` (the
/// `Inference-Header-Content-Length` header) says where the JSON ends.
pub(crate) fn parse_rest(header_len: Option<usize>, body: Bytes) -> Result<Rest, RequestError> {
    let (json_part, mut binary) = match header_len {
        Some(n) if n > body.len() => {
            return Err(bad(format!("{HEADER_LENGTH} is {n} but the body has {} bytes", body.len())));
        }
        Some(n) => (body.slice(..n), body.slice(n..)),
        None => (body, Bytes::new()),
    };
    let request: InferRequest =
        serde_json::from_slice(&json_part).map_err(|e| bad(format!("the inference request is not valid: {e}")))?;
    let [input] = request.inputs.as_slice() else {
        return Err(bad(format!(
            "send exactly one input: the model's FP32 tensor, or {IMAGE_INPUT:?} (BYTES, an encoded image); got {}",
            request.inputs.len()
        )));
    };
    let top_k = match request.parameters.get("top_k") {
        None => None,
        Some(v) => Some(v.as_u64().ok_or_else(|| bad("parameters.top_k must be a whole number of at least 1"))?),
    };
    let data = match input.parameters.get("binary_data_size") {
        None => input.data.clone().map(InputData::Json),
        Some(size) => {
            let n = size.as_u64().ok_or_else(|| bad("binary_data_size must be a byte count"))?;
            match usize::try_from(n) {
                Ok(n) if n <= binary.len() => Some(InputData::Raw(binary.split_to(n))),
                _ => {
                    return Err(bad(format!(
                        "input {:?} has binary_data_size {n} but {} bytes follow",
                        input.name,
                        binary.len()
                    )));
                }
            }
        }
    };
    let input = Input { name: input.name.clone(), datatype: input.datatype.clone(), shape: input.shape.clone(), data };
    let pipeline = match request.parameters.get("pipeline") {
        None => None,
        Some(v) => Some(v.as_str().ok_or_else(|| bad("parameters.pipeline must be a string"))?.to_string()),
    };
    Ok(Rest { request, input, top_k, pipeline })
}

/// The response: JSON, with the binary outputs after it when any were asked for binary.
fn encode_response(
    model: &str,
    version: &str,
    id: Option<&str>,
    parameters: Option<Value>,
    outputs: Vec<(Output, bool)>,
) -> Response<Body> {
    let mut binary = Vec::new();
    let outputs: Vec<Value> = outputs
        .into_iter()
        .map(|(o, as_binary)| {
            let mut t = json!({"name": o.name, "datatype": o.datatype, "shape": o.shape});
            if as_binary {
                let before = binary.len();
                o.data.write_raw(&mut binary);
                t["parameters"] = json!({"binary_data_size": binary.len() - before});
            } else {
                t["data"] = match o.data {
                    Data::F32(v) => json!(v),
                    Data::I32(v) => json!(v),
                    Data::Bytes(v) => {
                        json!(v.iter().map(|b| String::from_utf8_lossy(b).into_owned()).collect::<Vec<_>>())
                    }
                };
            }
            t
        })
        .collect();
    let mut body = json!({"model_name": model, "model_version": version, "outputs": outputs});
    if let Some(id) = id {
        body["id"] = json!(id);
    }
    if let Some(p) = parameters {
        body["parameters"] = p;
    }
    if binary.is_empty() {
        return json_response(StatusCode::OK, &body);
    }
    let mut bytes = serde_json::to_vec(&body).expect("serializing our own response");
    let json_len = bytes.len();
    bytes.extend_from_slice(&binary);
    let mut response = Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .body(Full::new(Bytes::from(bytes)))
        .expect("a valid response");
    response.headers_mut().insert(HEADER_LENGTH, HeaderValue::from(json_len));
    response
}

/// The OIP error body: `{"error": "..."}` with the status of its kind.
pub(crate) fn error_response(e: HttpError) -> Response<Body> {
    let mut response = json_response(e.status, &json!({"error": e.message}));
    if e.status == StatusCode::SERVICE_UNAVAILABLE {
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    response
}
