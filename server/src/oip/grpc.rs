//! KServe Open Inference Protocol v2 over gRPC: `inference.GRPCInferenceService` (our
//! `proto/grpc_predict_v2.proto`, written from the published protocol) on the gRPC port, so
//! tritonclient[grpc] and KServe clients work unchanged. The same inputs and outputs as the REST
//! routes (the core in `mod.rs` runs both); tensors come back in `raw_output_contents`, as Triton sends them.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use tonic::{Request, Response, Status};
use tracing::Instrument;

use super::{self as oip, Input, InputData};
use crate::grpc;
use crate::service::AppState;
use tessera::{ErrorKind, RequestError, Stage};

/// Generated from `proto/grpc_predict_v2.proto` by `build.rs`.
#[allow(clippy::all)]
pub(crate) mod pb {
    tonic::include_proto!("inference");
}

pub(crate) use pb::grpc_inference_service_server::GrpcInferenceServiceServer;
use pb::infer_parameter::ParameterChoice;
use pb::model_infer_response::InferOutputTensor;

/// The method's label in the metrics.
const MODEL_INFER: &str = "inference.GRPCInferenceService/ModelInfer";

/// The `GRPCInferenceService` implementation.
pub(crate) struct Inference {
    pub(crate) state: Arc<AppState>,
}

fn version(v: &str) -> Option<&str> {
    Some(v).filter(|v| !v.is_empty())
}

#[tonic::async_trait]
impl pb::grpc_inference_service_server::GrpcInferenceService for Inference {
    async fn server_live(&self, _: Request<pb::ServerLiveRequest>) -> Result<Response<pb::ServerLiveResponse>, Status> {
        Ok(Response::new(pb::ServerLiveResponse { live: true }))
    }

    async fn server_ready(
        &self,
        _: Request<pb::ServerReadyRequest>,
    ) -> Result<Response<pb::ServerReadyResponse>, Status> {
        Ok(Response::new(pb::ServerReadyResponse { ready: self.state.host.get().is_some() }))
    }

    async fn model_ready(
        &self,
        request: Request<pb::ModelReadyRequest>,
    ) -> Result<Response<pb::ModelReadyResponse>, Status> {
        let r = request.into_inner();
        let ready = self.state.host.get().is_some_and(|h| {
            h.model_io(Some(&r.name), version(&r.version)).is_ok()
                || (version(&r.version).is_none() && oip::is_task(h, &r.name))
        });
        Ok(Response::new(pb::ModelReadyResponse { ready }))
    }

    async fn server_metadata(
        &self,
        _: Request<pb::ServerMetadataRequest>,
    ) -> Result<Response<pb::ServerMetadataResponse>, Status> {
        Ok(Response::new(pb::ServerMetadataResponse {
            name: "tessera".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            extensions: Vec::new(),
        }))
    }

    async fn model_metadata(
        &self,
        request: Request<pb::ModelMetadataRequest>,
    ) -> Result<Response<pb::ModelMetadataResponse>, Status> {
        let r = request.into_inner();
        let host = self.state.ready_host().map_err(|e| grpc::status(&e))?;
        let m = oip::model_metadata(host, &r.name, version(&r.version)).map_err(|e| grpc::status(&e))?;
        let tensors = |ts: Vec<oip::TensorMeta>| {
            ts.into_iter()
                .map(|t| pb::model_metadata_response::TensorMetadata {
                    name: t.name,
                    datatype: t.datatype.into(),
                    shape: t.shape,
                })
                .collect()
        };
        Ok(Response::new(pb::ModelMetadataResponse {
            name: m.name,
            versions: m.versions,
            platform: m.platform.into(),
            inputs: tensors(m.inputs),
            outputs: tensors(m.outputs),
        }))
    }

    async fn model_infer(
        &self,
        request: Request<pb::ModelInferRequest>,
    ) -> Result<Response<pb::ModelInferResponse>, Status> {
        let start = Instant::now();
        let (request_id, span) = grpc::begin(MODEL_INFER, request.metadata());
        let result = self.handle_model_infer(request, start, &request_id).instrument(span.clone()).await;
        grpc::answer(&self.state, MODEL_INFER, start, &request_id, &span, result)
    }
}

impl Inference {
    async fn handle_model_infer(
        &self,
        request: Request<pb::ModelInferRequest>,
        start: Instant,
        request_id: &str,
    ) -> Result<pb::ModelInferResponse, RequestError> {
        let state = &self.state;
        let host = state.ready_host()?.clone();
        let base = state.context(start, grpc::grpc_timeout(request.metadata())?);
        let mut r = request.into_inner();
        let (input, top_k, pipeline) = parse_infer(&mut r)?;
        let context = oip::context(base, &r.model_name, version(&r.model_version), pipeline, top_k, request_id)?;
        let params = oip::task_params(r.parameters.iter().filter_map(|(k, p)| {
            let v = match p.parameter_choice.clone()? {
                ParameterChoice::StringParam(s) => s,
                ParameterChoice::BoolParam(b) => b.to_string(),
                ParameterChoice::Int64Param(i) => i.to_string(),
                ParameterChoice::Uint64Param(u) => u.to_string(),
                ParameterChoice::DoubleParam(d) => d.to_string(),
            };
            Some((k.as_str(), v))
        }));
        let (outputs, parameters, which) = oip::run(state, host, context, input, &r.model_name, params).await?;

        // The requested outputs in the order asked (all when none are named), as raw contents.
        let wanted: Vec<&str> = r.outputs.iter().map(|o| o.name.as_str()).collect();
        let mut outputs: Vec<Option<oip::Output>> = outputs.into_iter().map(Some).collect();
        let selected: Vec<oip::Output> = if wanted.is_empty() {
            outputs.into_iter().flatten().collect()
        } else {
            wanted
                .iter()
                .map(|name| {
                    outputs
                        .iter_mut()
                        .find(|o| o.as_ref().is_some_and(|o| o.name == *name))
                        .and_then(Option::take)
                        .ok_or_else(|| oip::bad(format!("no output named {name:?} for this input")))
                })
                .collect::<Result<_, _>>()?
        };
        let mut raw_output_contents = Vec::with_capacity(selected.len());
        let tensors = selected
            .into_iter()
            .map(|o| {
                let mut raw = Vec::new();
                o.data.write_raw(&mut raw);
                raw_output_contents.push(raw);
                InferOutputTensor {
                    name: o.name,
                    datatype: o.datatype.into(),
                    shape: o.shape.iter().map(|&d| d as i64).collect(),
                    parameters: Default::default(),
                    contents: None,
                }
            })
            .collect();
        let parameters = parameters
            .and_then(|p| p.as_object().cloned())
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| {
                let choice = match v {
                    serde_json::Value::Bool(b) => ParameterChoice::BoolParam(b),
                    serde_json::Value::String(s) => ParameterChoice::StringParam(s),
                    other => ParameterChoice::StringParam(other.to_string()),
                };
                (k, pb::InferParameter { parameter_choice: Some(choice) })
            })
            .collect();
        Ok(pb::ModelInferResponse {
            model_name: which.name,
            model_version: which.version,
            id: r.id,
            parameters,
            outputs: tensors,
            raw_output_contents,
        })
    }
}

/// The request's one input, `top_k` and `pipeline`, taken out of the message and checked (the
/// outputs it asks for stay in it).
pub(crate) fn parse_infer(r: &mut pb::ModelInferRequest) -> Result<(Input, Option<u64>, Option<String>), RequestError> {
    let bad = |m: String| RequestError::new(ErrorKind::BadRequest, Stage::Admission, m);
    if r.inputs.len() != 1 {
        return Err(bad(format!(
            "send exactly one input: the model's FP32 tensor, or {:?} (BYTES, an encoded image); got {}",
            oip::IMAGE_INPUT,
            r.inputs.len()
        )));
    }
    let input = r.inputs.swap_remove(0);
    let data = if let Some(raw) = std::mem::take(&mut r.raw_input_contents).into_iter().next() {
        Some(InputData::Raw(Bytes::from(raw)))
    } else {
        input.contents.map(|c| {
            if c.bytes_contents.is_empty() {
                InputData::F32(c.fp32_contents)
            } else {
                InputData::Elements(c.bytes_contents)
            }
        })
    };
    let top_k = match r.parameters.get("top_k").and_then(|p| p.parameter_choice.clone()) {
        None => None,
        Some(ParameterChoice::Int64Param(k)) => Some(u64::try_from(k).unwrap_or(0)),
        Some(ParameterChoice::Uint64Param(k)) => Some(k),
        Some(_) => return Err(bad("parameters.top_k must be an integer".into())),
    };
    let pipeline = match r.parameters.get("pipeline").and_then(|p| p.parameter_choice.clone()) {
        None => None,
        Some(ParameterChoice::StringParam(name)) => Some(name),
        Some(_) => return Err(bad("parameters.pipeline must be a string".into())),
    };
    let input = Input { name: input.name, datatype: input.datatype, shape: input.shape, data };
    Ok((input, top_k, pipeline))
}
