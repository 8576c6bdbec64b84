//! `wasi:nn@0.2.0-rc-2024-10-28` (`wit/wasi-nn/`) as a factor (`factor.rs`), for guests granted
//! `nn`: the standard ML interface, served by the same engines, admission, deadlines and call cap
//! as `engines.run`. `load-by-name` resolves a repository model (`name` or `name:version`)
//! through the call's inference backend, so a task reaches only the models its config names;
//! `compute` runs it on the worker pool like any request. `load` of graph bytes is refused
//! (`security`): loading a guest's model file belongs to `tessera run`, not to a served request.
//!
//! Written here rather than taken from `wasmtime-wasi-nn`: that crate's host functions report
//! every backend failure as `runtime-error` with the message "Failed while accessing backend"
//! (the cause only in the host's log), cannot see a call's deadline or call cap, and would add
//! wiggle, witx and a second, proc-macro build of wasmtime-environ to the build.

use wasmtime::component::{HasSelf, Linker, Resource};

use super::GuestState;
use super::factor::{Factor, Grants, Instance, World};
use super::inference_import::TooManyInferCalls;
use crate::config::WasiGrant;
use crate::error::{ErrorKind, RequestError};

mod generated {
    wasmtime::component::bindgen!({
        world: "ml",
        path: "../wit/wasi-nn/wasi-nn.wit",
        with: {
            "wasi:nn/graph.graph": super::NnGraph,
            "wasi:nn/tensor.tensor": super::NnTensor,
            "wasi:nn/inference.graph-execution-context": super::NnContext,
            "wasi:nn/errors.error": super::NnError,
        },
        // Past the call cap a `compute` ends the guest's call, as `engines.run` does.
        imports: { default: trappable },
    });
}

use generated::wasi::nn::{errors, graph, inference, tensor};

/// The interfaces the `nn` grant links.
pub(super) const INTERFACES: [&str; 4] = ["wasi:nn/tensor", "wasi:nn/graph", "wasi:nn/inference", "wasi:nn/errors"];

/// A tensor a guest made or a `compute` answered.
pub struct NnTensor {
    dimensions: Vec<u32>,
    ty: tensor::TensorType,
    data: Vec<u8>,
}

/// A graph: a repository model and, if named, its version.
pub struct NnGraph {
    model: String,
    version: Option<String>,
}

/// An execution context: its graph's model and version (each `compute` is one engine run).
pub struct NnContext {
    model: String,
    version: Option<String>,
}

/// A wasi-nn error: its code and a message a guest's author can act on.
pub struct NnError {
    code: errors::ErrorCode,
    message: String,
}

/// Links wasi-nn into the worlds whose guests are granted `nn`. Its state is the instance's
/// WASI resource table and its `inference` access (the backend, deadline and call cap a call
/// brings): it keeps none of its own.
pub(super) struct NnFactor;

impl Factor for NnFactor {
    type InstanceState = ();

    fn link(&self, linker: &mut Linker<GuestState>, _world: World, grants: &Grants) -> wasmtime::Result<()> {
        if grants.contains(&WasiGrant::Nn) {
            tensor::add_to_linker::<_, HasSelf<_>>(linker, |s| s)?;
            graph::add_to_linker::<_, HasSelf<_>>(linker, |s| s)?;
            inference::add_to_linker::<_, HasSelf<_>>(linker, |s| s)?;
            errors::add_to_linker::<_, HasSelf<_>>(linker, |s| s)?;
        }
        Ok(())
    }

    fn instance_state(&self, _instance: &Instance<'_>) {}
}

impl GuestState {
    /// A wasi-nn error resource for the guest.
    fn nn_error(&mut self, code: errors::ErrorCode, message: impl Into<String>) -> wasmtime::Result<Resource<NnError>> {
        Ok(self.wasi.table.push(NnError { code, message: message.into() })?)
    }
}

/// The wasi-nn code of a failure of the host's models.
fn code_of(e: &RequestError) -> errors::ErrorCode {
    match e.kind {
        ErrorKind::ModelNotFound => errors::ErrorCode::NotFound,
        ErrorKind::BadRequest => errors::ErrorCode::InvalidArgument,
        ErrorKind::DeadlineExceeded => errors::ErrorCode::Timeout,
        ErrorKind::PayloadTooLarge => errors::ErrorCode::TooLarge,
        _ => errors::ErrorCode::RuntimeError,
    }
}

impl graph::Host for GuestState {
    fn load(
        &mut self,
        _builder: Vec<graph::GraphBuilder>,
        encoding: graph::GraphEncoding,
        _target: graph::ExecutionTarget,
    ) -> wasmtime::Result<Result<Resource<NnGraph>, Resource<NnError>>> {
        let message = format!(
            "graph.load ({encoding:?} bytes) is not available to a served guest: name a model of the repository \
             with load-by-name"
        );
        Ok(Err(self.nn_error(errors::ErrorCode::Security, message)?))
    }

    fn load_by_name(&mut self, name: String) -> wasmtime::Result<Result<Resource<NnGraph>, Resource<NnError>>> {
        let (model, version) = match name.split_once(':') {
            Some((m, v)) => (m.to_string(), Some(v.to_string())),
            None => (name.clone(), None),
        };
        let Some(backend) = self.inference.backend.clone() else {
            return Ok(Err(self.nn_error(errors::ErrorCode::NotFound, "no models are available to this stage")?));
        };
        // The model must exist (and the task be allowed it) now, not at the first compute.
        if let Err(e) = backend.describe(&model, version.as_deref()) {
            return Ok(Err(self.nn_error(code_of(&e), e.message)?));
        }
        Ok(Ok(self.wasi.table.push(NnGraph { model, version })?))
    }
}

impl graph::HostGraph for GuestState {
    fn init_execution_context(
        &mut self,
        graph: Resource<NnGraph>,
    ) -> wasmtime::Result<Result<Resource<NnContext>, Resource<NnError>>> {
        let g = self.wasi.table.get(&graph)?;
        let context = NnContext { model: g.model.clone(), version: g.version.clone() };
        Ok(Ok(self.wasi.table.push(context)?))
    }

    fn drop(&mut self, graph: Resource<NnGraph>) -> wasmtime::Result<()> {
        self.wasi.table.delete(graph)?;
        Ok(())
    }
}

impl inference::HostGraphExecutionContext for GuestState {
    fn compute(
        &mut self,
        context: Resource<NnContext>,
        inputs: Vec<inference::NamedTensor>,
    ) -> wasmtime::Result<Result<Vec<inference::NamedTensor>, Resource<NnError>>> {
        let mut tensors = Vec::with_capacity(inputs.len());
        for (name, t) in inputs {
            tensors.push((name, self.wasi.table.delete(t)?));
        }
        let (model, version) = {
            let c = self.wasi.table.get(&context)?;
            (c.model.clone(), c.version.clone())
        };
        let [(_, input)] = tensors.as_slice() else {
            let message = format!("model {model} takes one input tensor; compute was given {}", tensors.len());
            return Ok(Err(self.nn_error(errors::ErrorCode::InvalidArgument, message)?));
        };
        if input.ty != tensor::TensorType::Fp32 {
            let message = format!("model {model} takes an FP32 tensor; compute was given {:?}", input.ty);
            return Ok(Err(self.nn_error(errors::ErrorCode::InvalidArgument, message)?));
        }
        let elements: usize = input.dimensions.iter().map(|&d| d as usize).product();
        if input.data.len() != elements * 4 {
            let message = format!(
                "a tensor of dimensions {:?} holds {} FP32 bytes; this one has {}",
                input.dimensions,
                elements * 4,
                input.data.len()
            );
            return Ok(Err(self.nn_error(errors::ErrorCode::InvalidArgument, message)?));
        }
        let data: Vec<f32> = input.data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
        let access = &mut self.inference;
        if access.calls_left == 0 {
            return Err(wasmtime::Error::new(TooManyInferCalls(access.limit)));
        }
        access.calls_left -= 1;
        let Some(backend) = access.backend.clone() else {
            return Ok(Err(self.nn_error(errors::ErrorCode::NotFound, "no models are available to this stage")?));
        };
        let deadline = access.deadline;
        match backend.run(&model, version.as_deref(), &input.dimensions, data, deadline) {
            Ok(outputs) => {
                let mut named = Vec::with_capacity(outputs.len());
                for o in outputs {
                    let bytes = o.data.iter().flat_map(|v| v.to_le_bytes()).collect();
                    let t = NnTensor { dimensions: o.shape, ty: tensor::TensorType::Fp32, data: bytes };
                    named.push((o.name, self.wasi.table.push(t)?));
                }
                Ok(Ok(named))
            }
            Err(e) => Ok(Err(self.nn_error(code_of(&e), e.message)?)),
        }
    }

    fn drop(&mut self, context: Resource<NnContext>) -> wasmtime::Result<()> {
        self.wasi.table.delete(context)?;
        Ok(())
    }
}

impl tensor::HostTensor for GuestState {
    fn new(
        &mut self,
        dimensions: tensor::TensorDimensions,
        ty: tensor::TensorType,
        data: tensor::TensorData,
    ) -> wasmtime::Result<Resource<NnTensor>> {
        Ok(self.wasi.table.push(NnTensor { dimensions, ty, data })?)
    }

    fn dimensions(&mut self, t: Resource<NnTensor>) -> wasmtime::Result<tensor::TensorDimensions> {
        Ok(self.wasi.table.get(&t)?.dimensions.clone())
    }

    fn ty(&mut self, t: Resource<NnTensor>) -> wasmtime::Result<tensor::TensorType> {
        Ok(self.wasi.table.get(&t)?.ty)
    }

    fn data(&mut self, t: Resource<NnTensor>) -> wasmtime::Result<tensor::TensorData> {
        Ok(self.wasi.table.get(&t)?.data.clone())
    }

    fn drop(&mut self, t: Resource<NnTensor>) -> wasmtime::Result<()> {
        self.wasi.table.delete(t)?;
        Ok(())
    }
}

impl errors::HostError for GuestState {
    fn code(&mut self, e: Resource<NnError>) -> wasmtime::Result<errors::ErrorCode> {
        Ok(self.wasi.table.get(&e)?.code)
    }

    fn data(&mut self, e: Resource<NnError>) -> wasmtime::Result<String> {
        Ok(self.wasi.table.get(&e)?.message.clone())
    }

    fn drop(&mut self, e: Resource<NnError>) -> wasmtime::Result<()> {
        self.wasi.table.delete(e)?;
        Ok(())
    }
}

impl inference::Host for GuestState {}
impl tensor::Host for GuestState {}
impl errors::Host for GuestState {}
