//! KServe Open Inference Protocol v2: its protocol-neutral core, which its two faces call:
//! `rest.rs` (the `/v2` HTTP routes) and `grpc.rs` (`inference.GRPCInferenceService`).
//!
//! A model's metadata lists its FP32 input tensor first: an FP32 input of that shape runs the
//! model alone and answers its raw output. Our documented extension is a second input, `image`
//! (BYTES, one element: an encoded image), which runs the whole pipeline (guests included) and
//! answers `label`, `confidence` and the `top_k_*` tensors, with the rules' decision in the
//! response's parameters. Like the other protocols, this only converts around `service.rs`.
//!
//! A task (`[tasks.<name>]`) is served under its name as a model with one BYTES input (the
//! request body, any name) and one BYTES output, `answer`: the task's answer as JSON, as
//! `POST /v1/tasks/{name}` answers it. The request's parameters are the task's parameters. A
//! BYTES input to a name that is both a task and a model runs the task.

#[cfg(feature = "grpc")]
pub(super) mod grpc;
pub(super) mod rest;

use std::sync::Arc;

use bytes::Bytes;
use serde_json::{Value, json};

use crate::service::{self, AppState};
use tessera::Host;
use tessera::ModelRef;
use tessera::{ClassifyRequest, RequestContext, TaskInput, TensorRequest};
use tessera::{EngineKind, OutputKind};
use tessera::{ErrorKind, RequestError, Stage};

/// The name of our image input (BYTES, one encoded image).
pub const IMAGE_INPUT: &str = "image";

/// A tensor's name, datatype and shape (-1: any size), as metadata lists it.
pub(super) struct TensorMeta {
    pub name: String,
    pub datatype: &'static str,
    pub shape: Vec<i64>,
}

/// What `GET /v2/models/{m}` and gRPC `ModelMetadata` answer.
pub(super) struct ModelMeta {
    pub name: String,
    pub versions: Vec<String>,
    pub platform: &'static str,
    pub inputs: Vec<TensorMeta>,
    pub outputs: Vec<TensorMeta>,
}

/// The one output of a task: its answer as JSON text.
pub const TASK_OUTPUT: &str = "answer";

/// A model version's metadata (or a task's, when `model` names a task and no model): its FP32 input first, then our `image` input; its FP32 output
/// first, then the pipeline's outputs.
pub(super) fn model_metadata(host: &Host, model: &str, version: Option<&str>) -> Result<ModelMeta, RequestError> {
    let (which, io) = match host.model_io(Some(model), version) {
        Err(e) if e.kind == ErrorKind::ModelNotFound && version.is_none() && is_task(host, model) => {
            let t = |name: &str| TensorMeta { name: name.to_string(), datatype: "BYTES", shape: vec![1] };
            return Ok(ModelMeta {
                name: model.to_string(),
                versions: Vec::new(),
                platform: "tessera_task",
                inputs: vec![t("body")],
                outputs: vec![t(TASK_OUTPUT)],
            });
        }
        other => other?,
    };
    let status = host.models().into_iter().find(|m| m.name == which.name);
    let versions = status.as_ref().map(|m| m.ready_versions.clone()).unwrap_or_default();
    // A model whose output is not one score per label has no pipeline: its tensor only.
    let classifies = status.as_ref().is_none_or(|m| m.output == OutputKind::Classes);
    let platform = match status.map(|m| m.engine) {
        Some(EngineKind::Onnxruntime) => "onnxruntime_onnx",
        _ => "tessera_tract",
    };
    let t = |name: &str, datatype, shape: Vec<i64>| TensorMeta { name: name.to_string(), datatype, shape };
    let dims = |shape: &[usize]| shape.iter().map(|&d| d as i64).collect::<Vec<_>>();
    let mut inputs = vec![t(&io.input_name, "FP32", dims(&io.input_shape))];
    let mut outputs = vec![t(&io.output_name, "FP32", dims(&io.output_shape))];
    if classifies {
        inputs.push(t(IMAGE_INPUT, "BYTES", vec![1]));
        outputs.extend([
            t("label", "BYTES", vec![1]),
            t("confidence", "FP32", vec![1]),
            t("top_k_labels", "BYTES", vec![-1]),
            t("top_k_scores", "FP32", vec![-1]),
            t("top_k_indices", "INT32", vec![-1]),
        ]);
    }
    Ok(ModelMeta { name: which.name, versions, platform, inputs, outputs })
}

/// Whether `name` is a configured task.
pub(super) fn is_task(host: &Host, name: &str) -> bool {
    host.tasks().iter().any(|t| t.name == name)
}

/// A request's parameters as a task reads them: text, in the request's order, the binary
/// extension's own left out.
pub(super) fn task_params<'a>(parameters: impl Iterator<Item = (&'a str, String)>) -> Vec<(String, String)> {
    parameters.filter(|(k, _)| *k != "binary_data_output").map(|(k, v)| (k.to_string(), v)).collect()
}

/// One output tensor's values.
pub(super) enum Data {
    F32(Vec<f32>),
    I32(Vec<i32>),
    Bytes(Vec<Vec<u8>>),
}

impl Data {
    /// Appends the values as the binary extension and gRPC's raw contents carry them: little
    /// endian; BYTES elements each as a u32 little-endian length and the bytes.
    pub(super) fn write_raw(&self, out: &mut Vec<u8>) {
        match self {
            Data::F32(v) => v.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
            Data::I32(v) => v.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
            Data::Bytes(v) => v.iter().for_each(|b| {
                out.extend_from_slice(&(b.len() as u32).to_le_bytes());
                out.extend_from_slice(b);
            }),
        }
    }
}

pub(super) struct Output {
    pub name: String,
    pub datatype: &'static str,
    pub shape: Vec<usize>,
    pub data: Data,
}

pub(super) fn bad(message: impl Into<String>) -> RequestError {
    RequestError::new(ErrorKind::BadRequest, Stage::Admission, message)
}

/// An inference call's context: `base` (its deadline) for `model` and `version`, with the
/// request's `parameters.pipeline` and `parameters.top_k` and, for the rules, its id.
pub(super) fn context(
    base: RequestContext,
    model: &str,
    version: Option<&str>,
    pipeline: Option<String>,
    top_k: Option<u64>,
    request_id: &str,
) -> Result<RequestContext, RequestError> {
    Ok(base
        .with_model(Some(model.to_string()), version.map(String::from))
        .with_pipeline(pipeline)
        .with_top_k(top_k)?
        .with_metadata(vec![("request-id".to_string(), request_id.to_string())]))
}

/// An input tensor's data, as the protocols carry it.
pub(super) enum InputData {
    /// Binary: FP32 little-endian, or BYTES elements as a u32 little-endian length and bytes.
    Raw(Bytes),
    /// JSON (REST without the binary extension).
    Json(Value),
    /// gRPC `contents.fp32_contents`.
    #[cfg(feature = "grpc")]
    F32(Vec<f32>),
    /// gRPC `contents.bytes_contents`.
    #[cfg(feature = "grpc")]
    Elements(Vec<Vec<u8>>),
}

pub(super) struct Input {
    pub name: String,
    pub datatype: String,
    pub shape: Vec<i64>,
    pub data: Option<InputData>,
}

/// Runs one OIP input: task `name`'s guest for a BYTES input when `name` is a task, else the
/// pipeline for a BYTES image, the model alone for its FP32 tensor. Protocol-neutral (REST and
/// gRPC call it): the outputs, the response's parameters and the model version (or task) that
/// answered. `params` go to a task.
pub(super) async fn run(
    state: &Arc<AppState>,
    host: Arc<Host>,
    context: RequestContext,
    input: Input,
    name: &str,
    params: Vec<(String, String)>,
) -> Result<(Vec<Output>, Option<Value>, ModelRef), RequestError> {
    let task = input.datatype == "BYTES" && is_task(&host, name);
    match decode(input)? {
        Decoded::Image(body) if task => {
            let permit = state.admit()?;
            let input = TaskInput { body, content_type: None, params };
            let r = service::run_task(host, name.to_string(), input, context, permit).await?;
            let answer = serde_json::to_vec(&r.answer).expect("serializing a task's answer");
            let parameters = json!({ "timings_ms": r.timings_ms, "guests": r.guests });
            let output =
                Output { name: TASK_OUTPUT.into(), datatype: "BYTES", shape: vec![1], data: Data::Bytes(vec![answer]) };
            Ok((vec![output], Some(parameters), ModelRef { name: r.task, version: String::new() }))
        }
        Decoded::Image(image) => {
            let permit = state.admit()?;
            let c = service::classify(host, ClassifyRequest::new(image, context), permit).await?;
            let k = c.top_k.len();
            let outputs = vec![
                Output {
                    name: "label".into(),
                    datatype: "BYTES",
                    shape: vec![1],
                    data: Data::Bytes(vec![c.label.clone().into_bytes()]),
                },
                Output {
                    name: "confidence".into(),
                    datatype: "FP32",
                    shape: vec![1],
                    data: Data::F32(vec![c.confidence]),
                },
                Output {
                    name: "top_k_labels".into(),
                    datatype: "BYTES",
                    shape: vec![k],
                    data: Data::Bytes(c.top_k.iter().map(|p| p.label.clone().into_bytes()).collect()),
                },
                Output {
                    name: "top_k_scores".into(),
                    datatype: "FP32",
                    shape: vec![k],
                    data: Data::F32(c.top_k.iter().map(|p| p.score).collect()),
                },
                Output {
                    name: "top_k_indices".into(),
                    datatype: "INT32",
                    shape: vec![k],
                    data: Data::I32(c.top_k.iter().map(|p| p.index as i32).collect()),
                },
            ];
            let d = &c.decision;
            let parameters = json!({
                "decision_accepted": d.accepted,
                "decision_reason": d.reason,
                "decision_rule": d.rule.clone().unwrap_or_default(),
                "decision_category": d.category.clone().unwrap_or_default(),
                "pipeline": c.pipeline,
                "timings_ms": c.timings_ms,
            });
            Ok((outputs, Some(parameters), c.model))
        }
        Decoded::Tensor { shape, data } => {
            let permit = state.admit()?;
            let out = service::infer(host, TensorRequest { shape, data, context }, permit).await?;
            Ok((
                vec![Output { name: out.name, datatype: "FP32", shape: out.shape, data: Data::F32(out.data) }],
                None,
                out.model,
            ))
        }
    }
}

/// An OIP input made into what Tessera runs.
#[derive(Debug)]
pub(crate) enum Decoded {
    /// A BYTES input's one element: an encoded image, for the pipeline.
    Image(Vec<u8>),
    /// An FP32 tensor, for the model alone.
    Tensor { shape: Vec<usize>, data: Vec<f32> },
}

/// Checks an input against its own shape and datatype and takes its data out. Needs no model:
/// whether the tensor fits one is the model's answer.
pub(crate) fn decode(input: Input) -> Result<Decoded, RequestError> {
    let shape: Vec<usize> =
        input.shape.iter().map(|&d| usize::try_from(d).ok()).collect::<Option<_>>().ok_or_else(|| {
            bad(format!("input {:?} has a negative dimension in shape {:?}", input.name, input.shape))
        })?;
    // A shape's product can overflow: a count no body could carry is refused, not wrapped.
    let elements = shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .filter(|n| n.checked_mul(4).is_some())
        .ok_or_else(|| bad(format!("input {:?} has shape {:?}: too many elements", input.name, input.shape)))?;
    match input.datatype.as_str() {
        "BYTES" => {
            if elements != 1 {
                return Err(bad(format!(
                    "{:?} (BYTES) takes one element, one encoded image; shape {:?}",
                    input.name, input.shape
                )));
            }
            let image = match input.data {
                Some(InputData::Raw(raw)) => first_bytes_element(&raw)?,
                Some(InputData::Json(data)) => first_string(&data)?.into_bytes(),
                #[cfg(feature = "grpc")]
                Some(InputData::Elements(mut e)) if !e.is_empty() => e.swap_remove(0),
                _ => return Err(bad(format!("input {:?} has no BYTES data", input.name))),
            };
            if image.is_empty() {
                return Err(RequestError::new(ErrorKind::InvalidImage, Stage::Admission, "the image input is empty"));
            }
            Ok(Decoded::Image(image))
        }
        "FP32" => {
            let data: Vec<f32> = match input.data {
                Some(InputData::Raw(raw)) => {
                    if raw.len() != elements * 4 {
                        return Err(bad(format!(
                            "input {:?} of shape {:?} needs {} bytes of FP32, got {}",
                            input.name,
                            input.shape,
                            elements * 4,
                            raw.len()
                        )));
                    }
                    raw.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
                }
                Some(InputData::Json(data)) => {
                    let mut out = Vec::new();
                    flatten_numbers(&data, &mut out)?;
                    out
                }
                #[cfg(feature = "grpc")]
                Some(InputData::F32(v)) => v,
                _ => return Err(bad(format!("input {:?} has no FP32 data", input.name))),
            };
            if data.len() != elements {
                return Err(bad(format!(
                    "input {:?} has shape {:?} but {} values",
                    input.name,
                    input.shape,
                    data.len()
                )));
            }
            Ok(Decoded::Tensor { shape, data })
        }
        other => Err(bad(format!(
            "datatype {other} is not taken; send FP32 (the model's input tensor) or BYTES (an encoded image)"
        ))),
    }
}

/// The first element of a binary BYTES tensor (each element: a little-endian u32 length, then
/// the bytes).
fn first_bytes_element(raw: &[u8]) -> Result<Vec<u8>, RequestError> {
    let len = raw.get(..4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize);
    match len {
        Some(len) if raw.len() >= 4 + len => Ok(raw[4..4 + len].to_vec()),
        _ => Err(bad("the BYTES input is not length-prefixed elements (u32 little-endian length, then bytes)")),
    }
}

/// The first string of a JSON BYTES tensor (flat or nested).
fn first_string(data: &Value) -> Result<String, RequestError> {
    match data {
        Value::String(s) => Ok(s.clone()),
        Value::Array(items) if !items.is_empty() => first_string(&items[0]),
        _ => Err(bad("a BYTES input's data must be strings; send images with the binary tensor data extension")),
    }
}

/// The numbers of a JSON tensor, flat or nested, in row-major order.
fn flatten_numbers(data: &Value, out: &mut Vec<f32>) -> Result<(), RequestError> {
    match data {
        Value::Number(n) => {
            out.push(n.as_f64().ok_or_else(|| bad("an FP32 value is not a number"))? as f32);
            Ok(())
        }
        Value::Array(items) => items.iter().try_for_each(|v| flatten_numbers(v, out)),
        _ => Err(bad("an FP32 input's data must be numbers")),
    }
}
