//! The host's `inference` import as a factor (`factor.rs`): what a guest's calls reach
//! (`GuestInference`, implemented by the pipeline over the repository), within the request's
//! deadline and a cap on calls per guest call (`limits.guest_infer_calls`). Linked only into
//! the worlds that import it (`rules`): a preprocessor or postprocessor that imports it is
//! refused when it loads, not when it calls.

use std::sync::Arc;
use std::time::Instant;

use wasmtime::component::{HasSelf, Linker};

use super::GuestState;
use super::bindings::{engines, inference, tasks, types};
use super::factor::{Call, Factor, Grants, GuestInference, Instance, World};
use crate::error::ErrorKind;

/// What a guest's calls to the host `inference` interface may reach, within the request's
/// deadline; `None` for the stages that are not given inference.
pub(super) struct InferenceAccess {
    pub(super) backend: Option<Arc<dyn GuestInference>>,
    pub(super) deadline: Instant,
    /// `inference.infer` calls this guest call may still make (`limits.guest_infer_calls`):
    /// rules guests share the serving queue with requests.
    pub(super) calls_left: u32,
    /// `limits.guest_infer_calls`, for the error message.
    pub(super) limit: u32,
}

/// The `inference` import, configured once from `limits`.
pub(super) struct InferenceFactor {
    calls_per_call: u32,
}

impl InferenceFactor {
    pub(super) fn new(limits: &crate::config::Limits) -> Self {
        InferenceFactor { calls_per_call: limits.guest_infer_calls }
    }
}

impl Factor for InferenceFactor {
    type InstanceState = InferenceAccess;

    fn link(&self, linker: &mut Linker<GuestState>, world: World, _grants: &Grants) -> wasmtime::Result<()> {
        if world.imports_inference() {
            inference::add_to_linker::<_, HasSelf<_>>(linker, |s| s)?;
        }
        if world.imports_engines() {
            engines::add_to_linker::<_, HasSelf<_>>(linker, |s| s)?;
            // The task world's types (`use tasks.{...}` imports the interface, types only).
            tasks::add_to_linker::<_, HasSelf<_>>(linker, |s| s)?;
        }
        Ok(())
    }

    /// Nothing to reach until a call gives its backend and deadline.
    fn instance_state(&self, _instance: &Instance<'_>) -> InferenceAccess {
        InferenceAccess {
            backend: None,
            deadline: Instant::now(),
            calls_left: self.calls_per_call,
            limit: self.calls_per_call,
        }
    }

    fn begin_call(&self, store: &mut wasmtime::Store<GuestState>, call: &Call) {
        let access = &mut store.data_mut().inference;
        access.backend = call.inference.clone();
        access.deadline = call.deadline;
    }
}

/// A guest called `inference.infer` or `engines.run` more than `limits.guest_infer_calls` times
/// in one call.
#[derive(Debug)]
pub(super) struct TooManyInferCalls(pub(super) u32);

impl std::fmt::Display for TooManyInferCalls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the guest called inference.infer (or engines.run, or wasi-nn's compute) more than limits.guest_infer_calls \
             ({}) times in one call",
            self.0
        )
    }
}

impl std::error::Error for TooManyInferCalls {}

impl types::Host for GuestState {}

impl tasks::Host for GuestState {}

impl inference::Host for GuestState {
    fn infer(
        &mut self,
        model: String,
        version: Option<String>,
        input: types::Tensor,
    ) -> wasmtime::Result<Result<types::Tensor, types::Error>> {
        let access = &mut self.inference;
        if access.calls_left == 0 {
            return Err(wasmtime::Error::new(TooManyInferCalls(access.limit)));
        }
        access.calls_left -= 1;
        let Some(backend) = access.backend.as_ref() else {
            return Ok(Err(types::Error::Internal("inference is not available to this stage".into())));
        };
        let result = backend.infer(&model, version.as_deref(), &input.shape, input.data, access.deadline);
        Ok(result.map(|data| types::Tensor { shape: vec![1, data.len() as u32], data }).map_err(to_guest_error))
    }
}

/// A failure of the host's models as the guest sees it: the caller's (an unknown model, a
/// wrong shape) as `invalid-input`, the rest as `internal` with its code.
fn to_guest_error(e: crate::error::RequestError) -> types::Error {
    match e.kind {
        ErrorKind::ModelNotFound | ErrorKind::BadRequest | ErrorKind::TaskNotFound => {
            types::Error::InvalidInput(e.message)
        }
        _ => types::Error::Internal(format!("{}: {}", e.kind.code(), e.message)),
    }
}

impl engines::Host for GuestState {
    fn describe(&mut self, model: String, version: Option<String>) -> Result<engines::ModelInfo, types::Error> {
        let Some(backend) = self.inference.backend.as_ref() else {
            return Err(types::Error::Internal("the host's models are not available to this stage".into()));
        };
        let d = backend.describe(&model, version.as_deref()).map_err(to_guest_error)?;
        Ok(engines::ModelInfo {
            spec: types::ModelSpec {
                name: d.name,
                version: d.version.to_string(),
                input_shape: d.input_shape.to_vec(),
                mean: d.mean.to_vec(),
                std: d.std.to_vec(),
                resize: d.resize,
                labels_count: d.labels.len() as u32,
            },
            labels: d.labels,
        })
    }

    fn run(
        &mut self,
        model: String,
        version: Option<String>,
        input: types::Tensor,
    ) -> wasmtime::Result<Result<Vec<engines::Output>, types::Error>> {
        let access = &mut self.inference;
        if access.calls_left == 0 {
            return Err(wasmtime::Error::new(TooManyInferCalls(access.limit)));
        }
        access.calls_left -= 1;
        let Some(backend) = access.backend.as_ref() else {
            return Ok(Err(types::Error::Internal("the host's models are not available to this stage".into())));
        };
        let result = backend.run(&model, version.as_deref(), &input.shape, input.data, access.deadline);
        Ok(result
            .map(|outputs| {
                outputs
                    .into_iter()
                    .map(|o| engines::Output { name: o.name, tensor: types::Tensor { shape: o.shape, data: o.data } })
                    .collect()
            })
            .map_err(to_guest_error))
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Limits;
    use crate::runtime::{Runtime, default_grants};

    /// The `inference` import is linked only into the world that imports it: a component that
    /// imports it is refused as a preprocessor when it loads, naming the import, and loads as
    /// a rules guest.
    #[test]
    fn inference_is_linked_only_into_the_world_that_imports_it() {
        let guest = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/guests/probe-rules.wasm");
        let runtime = Runtime::new(&Limits::default(), None).unwrap();
        let refused = runtime.load_preprocess(&guest, default_grants()).err().expect("refused").to_string();
        assert!(refused.contains("tessera:vision/inference"), "{refused}");
        runtime.load_rules(&guest, Vec::new(), default_grants()).unwrap();
    }
}
