//! The host's `inference` import: what a guest's calls reach (`GuestInference`, implemented by
//! the pipeline over the repository), within the request's deadline and a cap on calls per guest
//! call.

use std::sync::Arc;
use std::time::Instant;

use super::GuestState;
use super::bindings::{inference, types};
use crate::error::{ErrorKind, RequestError};

/// What a guest's `inference` import reaches. The runtime defines it and the pipeline implements
/// it over the model repository, so the runtime knows nothing of models or versions.
pub trait GuestInference: Send + Sync {
    /// Runs `model` (its `version`, or the default one) on `input` of `shape` before `deadline`;
    /// the output's values, or why not, as the pipeline would report it.
    fn infer(
        &self,
        model: &str,
        version: Option<&str>,
        shape: &[u32],
        input: Vec<f32>,
        deadline: Instant,
    ) -> Result<Vec<f32>, RequestError>;
}

/// What a guest's calls to the host `inference` interface may reach, within the request's
/// deadline; `None` for the stages that are not given inference.
pub(super) struct InferenceAccess {
    pub(super) backend: Option<Arc<dyn GuestInference>>,
    pub(super) deadline: Instant,
    /// `inference.infer` calls this guest call may still make (`limits.guest_infer_calls`):
    /// rules guests share the serving queue with requests.
    pub(super) calls_left: u32,
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
            return Err(wasmtime::Error::new(TooManyInferCalls(self.infer_calls)));
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
