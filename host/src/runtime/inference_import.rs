//! The host's `inference` import as a factor (`factor.rs`): what a guest's calls reach
//! (`GuestInference`, implemented by the pipeline over the repository), within the request's
//! deadline and a cap on calls per guest call (`limits.guest_infer_calls`). Linked only into
//! the worlds that import it (`rules`): a preprocessor or postprocessor that imports it is
//! refused when it loads, not when it calls.

use std::sync::Arc;
use std::time::Instant;

use wasmtime::component::{HasSelf, Linker};

use super::GuestState;
use super::bindings::{inference, types};
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
    limit: u32,
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

/// A guest called `inference.infer` more than `limits.guest_infer_calls` times in one call.
#[derive(Debug)]
pub(super) struct TooManyInferCalls(u32);

impl std::fmt::Display for TooManyInferCalls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the guest called inference.infer more than limits.guest_infer_calls ({}) times in one call", self.0)
    }
}

impl std::error::Error for TooManyInferCalls {}

impl types::Host for GuestState {}

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
        Ok(match result {
            Ok(data) => Ok(types::Tensor { shape: vec![1, data.len() as u32], data }),
            Err(e) => Err(match e.kind {
                ErrorKind::ModelNotFound | ErrorKind::BadRequest => types::Error::InvalidInput(e.message),
                _ => types::Error::Internal(format!("{}: {}", e.kind.code(), e.message)),
            }),
        })
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
