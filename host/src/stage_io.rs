//! What the pipeline and the guest stages hand each other, in the crate's own types: the model
//! spec a guest is given, the predictions postprocess returns, the decision the rules give. A leaf
//! that both `runtime` (which converts them to and from WIT) and `pipeline` (which passes them on)
//! point down to, so that neither has to know the other's types.

use serde::Serialize;

/// Inputs a model spec gives the guests.
#[derive(Debug, Clone)]
pub struct SpecView<'a> {
    pub name: &'a str,
    pub version: u64,
    pub input_shape: [u32; 4],
    pub mean: [f32; 3],
    pub std: [f32; 3],
    pub resize: u32,
    pub labels_count: u32,
}

/// A scored class.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Prediction {
    pub index: u32,
    pub label: String,
    pub score: f32,
}

/// A model as a task guest sees it (`engines.describe`): its input spec and labels.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelDescription {
    pub name: String,
    pub version: u64,
    pub input_shape: [u32; 4],
    pub mean: [f32; 3],
    pub std: [f32; 3],
    pub resize: u32,
    pub labels: Vec<String>,
}

/// One output of a model run: its name in the model, its shape and its values.
#[derive(Debug, Clone, PartialEq)]
pub struct NamedTensor {
    pub name: String,
    pub shape: Vec<u32>,
    pub data: Vec<f32>,
}

/// What a client sent a task: the body as it came, its declared content type, and the request's
/// parameters (query parameters, then `x-*` headers).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TaskInput {
    pub body: Vec<u8>,
    pub content_type: Option<String>,
    pub params: Vec<(String, String)>,
}

/// A task's answer (`tasks.answer`), as the response carries it: `{"detections": [...]}`,
/// `{"embedding": [...]}`, `{"classes": [...]}` or `{"json": ...}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskAnswer {
    Detections(Vec<Detection>),
    Embedding(Vec<f32>),
    Classes(Vec<Prediction>),
    Json(serde_json::Value),
}

/// One object a task found, its box `[x_min, y_min, x_max, y_max]` in the pixels of the image as
/// the client sent it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Detection {
    pub label: String,
    pub score: f32,
    #[serde(rename = "box")]
    pub bbox: [f32; 4],
}

/// The rules' decision: one rules guest's, or the chain's, with the rule that gave it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Decision {
    pub accepted: bool,
    pub reason: String,
    pub category: Option<String>,
    pub tags: Vec<String>,
    /// The guest that decided: the first to reject, else the last to accept; `None` when no
    /// rules are configured.
    pub rule: Option<String>,
}
