//! Why a request failed ([`RequestError`]): what failed, in which stage, and whose fault it was.
//! Every way into Tessera (HTTP, gRPC, OIP, the library, the C API) answers with it.
//!
//! The server turns these into status codes (`tessera_server::status_for`, `code_for`) and the C
//! API into its status; the library never speaks HTTP.

use std::fmt;

use serde::Serialize;

/// The stage of the pipeline an error (or a timing) belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    Admission,
    Preprocess,
    Inference,
    Postprocess,
    Rules,
    /// A task guest's run (`POST /v1/tasks/{name}`), engine calls included.
    Task,
}

impl Stage {
    /// Every stage, in the order a request goes through them.
    pub const ALL: [Stage; 6] =
        [Stage::Admission, Stage::Preprocess, Stage::Inference, Stage::Postprocess, Stage::Rules, Stage::Task];

    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Admission => "admission",
            Stage::Preprocess => "preprocess",
            Stage::Inference => "inference",
            Stage::Postprocess => "postprocess",
            Stage::Rules => "rules",
            Stage::Task => "task",
        }
    }
}

/// What went wrong, as a caller branches on it. Each kind has one stable `code` string; the
/// table in `docs/API.md` lists them with their HTTP statuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// A bad parameter (top_k, deadline header, missing multipart field, ...).
    BadRequest,
    /// Empty, corrupt or unrecognisable image bytes.
    InvalidImage,
    /// The body is over `limits.max_body_bytes`.
    PayloadTooLarge,
    /// A content type or image format the pipeline does not take.
    UnsupportedMediaType,
    /// The image is over `limits.max_image_pixels` or its decoder's allocation limit.
    ImageTooLarge,
    /// No such model or version.
    ModelNotFound,
    /// No pipeline of that name (`pipeline=`).
    PipelineNotFound,
    /// No task of that name (`/v1/tasks/{name}`).
    TaskNotFound,
    /// A guest trapped (panic, unreachable, out-of-bounds access, ...).
    GuestTrap,
    /// A guest hit `limits.guest_memory_bytes`.
    GuestMemoryExceeded,
    /// A guest reported an internal failure of its own.
    GuestFailed,
    /// A bug or a broken deployment on our side.
    Internal,
    /// Too many requests in flight or queued; retry later.
    Overloaded,
    /// The request's deadline passed.
    DeadlineExceeded,
    /// The host is still loading models and guests.
    NotReady,
}

impl ErrorKind {
    /// The stable machine-readable code.
    pub fn code(self) -> &'static str {
        match self {
            ErrorKind::BadRequest => "bad_request",
            ErrorKind::InvalidImage => "invalid_image",
            ErrorKind::PayloadTooLarge => "payload_too_large",
            ErrorKind::UnsupportedMediaType => "unsupported_media_type",
            ErrorKind::ImageTooLarge => "image_too_large",
            ErrorKind::ModelNotFound => "model_not_found",
            ErrorKind::PipelineNotFound => "pipeline_not_found",
            ErrorKind::TaskNotFound => "task_not_found",
            ErrorKind::GuestTrap => "guest_trap",
            ErrorKind::GuestMemoryExceeded => "guest_memory_exceeded",
            ErrorKind::GuestFailed => "guest_failed",
            ErrorKind::Internal => "internal",
            ErrorKind::Overloaded => "overloaded",
            ErrorKind::DeadlineExceeded => "deadline_exceeded",
            ErrorKind::NotReady => "not_ready",
        }
    }

    /// Business errors are the caller's (a bad or unrecognisable input); the rest are system
    /// errors (ours, or the load). The seed counts the two separately.
    pub fn is_business(self) -> bool {
        matches!(
            self,
            ErrorKind::BadRequest
                | ErrorKind::InvalidImage
                | ErrorKind::PayloadTooLarge
                | ErrorKind::UnsupportedMediaType
                | ErrorKind::ImageTooLarge
                | ErrorKind::ModelNotFound
                | ErrorKind::PipelineNotFound
                | ErrorKind::TaskNotFound
        )
    }
}

/// The message a panic carried (`panic!` with a literal or a formatted string), for errors that
/// report a caught panic.
pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into())
}

/// A failed request: the kind, the stage it failed in, and a message a person can act on.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub struct RequestError {
    pub kind: ErrorKind,
    pub stage: Stage,
    pub message: String,
}

impl RequestError {
    pub fn new(kind: ErrorKind, stage: Stage, message: impl Into<String>) -> Self {
        RequestError { kind, stage, message: message.into() }
    }
}

impl fmt::Display for RequestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} in {}: {}", self.kind.code(), self.stage.as_str(), self.message)
    }
}
