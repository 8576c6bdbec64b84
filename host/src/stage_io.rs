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
