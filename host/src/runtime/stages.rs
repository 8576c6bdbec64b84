//! The typed guest stages: loading a preprocess, postprocess or rules component for its world,
//! and calling it with the crate's types (converted to and from WIT here).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Runtime;
use super::bindings::{postprocessor, preprocessor, rules, task, tasks, types};
use super::error::{GuestFailure, RuntimeError};
use super::factor::{Call, Grants, GuestInference, World};
use super::prepared::{Loaded, Prepared};
use crate::config::Limits;
use crate::error::ErrorKind;
use crate::stage_io::{Decision, Detection, Prediction, SpecView, TaskAnswer, TaskInput};

/// The model spec as the guests' WIT `model-spec`.
pub(super) fn spec_to_wit(spec: &SpecView<'_>) -> types::ModelSpec {
    types::ModelSpec {
        name: spec.name.to_string(),
        version: spec.version.to_string(),
        input_shape: spec.input_shape.to_vec(),
        mean: spec.mean.to_vec(),
        std: spec.std.to_vec(),
        resize: spec.resize,
        labels_count: spec.labels_count,
    }
}

/// Where a guest call's time went: instantiating the component from its `InstancePre` (before
/// the call, while the model ran, when `instantiated_ahead`), and the exported function itself
/// (including lifting and lowering its arguments).
#[derive(Debug, Clone, Copy, Default)]
pub struct Phases {
    pub instantiate: Duration,
    pub instantiated_ahead: bool,
    pub call: Duration,
}

/// The preprocess stage: a `preprocessor` component ready to instantiate.
#[derive(Clone)]
pub struct PreprocessGuest {
    pub name: String,
    /// The WASI it was linked with.
    pub grants: Grants,
    loaded: Arc<Loaded<preprocessor::Preprocessor>>,
}

/// The postprocess stage.
#[derive(Clone)]
pub struct PostprocessGuest {
    pub name: String,
    /// The WASI it was linked with.
    pub grants: Grants,
    loaded: Arc<Loaded<postprocessor::Postprocessor>>,
}

/// One rules stage with its configuration.
#[derive(Clone)]
pub struct RulesGuest {
    pub name: String,
    config: Vec<(String, String)>,
    /// Shared by every place in a chain the same compiled guest has.
    loaded: Arc<Loaded<rules::Rules>>,
}

impl RulesGuest {
    /// The same compiled guest with another configuration (a second place in a chain).
    pub fn with_config(&self, config: Vec<(String, String)>) -> Self {
        RulesGuest { config, ..self.clone() }
    }
}

/// A task guest (`world task`): the whole request, calling the host's models as it needs.
#[derive(Clone)]
pub struct TaskGuest {
    pub name: String,
    /// The WASI it was linked with.
    pub grants: Grants,
    loaded: Arc<Loaded<task::Task>>,
}

/// An instance of a postprocess guest made before its call (`Runtime::prepare_postprocess`),
/// for that one call.
pub struct PreparedPostprocess(Prepared<postprocessor::Postprocessor>);

/// An instance of a rules guest made before its call (`Runtime::prepare_rules`), for that one
/// call.
pub struct PreparedRules(Prepared<rules::Rules>);

pub(super) fn guest_name(path: &Path) -> String {
    path.file_stem().and_then(|s| s.to_str()).unwrap_or("guest").to_string()
}

impl Runtime {
    pub fn load_preprocess(&self, path: &Path, grants: Grants) -> Result<PreprocessGuest, RuntimeError> {
        let pre = self.compile(path, World::Preprocessor, &grants, preprocessor::PreprocessorPre::new)?;
        let name = guest_name(path);
        let loaded = self.loaded(&name, grants.clone(), move |store| pre.instantiate(store));
        Ok(PreprocessGuest { name, grants, loaded })
    }

    pub fn load_postprocess(&self, path: &Path, grants: Grants) -> Result<PostprocessGuest, RuntimeError> {
        let pre = self.compile(path, World::Postprocessor, &grants, postprocessor::PostprocessorPre::new)?;
        let name = guest_name(path);
        let loaded = self.loaded(&name, grants.clone(), move |store| pre.instantiate(store));
        Ok(PostprocessGuest { name, grants, loaded })
    }

    pub fn load_rules(
        &self,
        path: &Path,
        config: Vec<(String, String)>,
        grants: Grants,
    ) -> Result<RulesGuest, RuntimeError> {
        let pre = self.compile(path, World::Rules, &grants, rules::RulesPre::new)?;
        let name = guest_name(path);
        let loaded = self.loaded(&name, grants, move |store| pre.instantiate(store));
        Ok(RulesGuest { name, config, loaded })
    }

    pub fn load_task(&self, path: &Path, grants: Grants) -> Result<TaskGuest, RuntimeError> {
        let pre = self.compile(path, World::Task, &grants, task::TaskPre::new)?;
        let name = guest_name(path);
        let loaded = self.loaded(&name, grants.clone(), move |store| pre.instantiate(store));
        Ok(TaskGuest { name, grants, loaded })
    }

    /// Runs task `guest` on `input`: its answer, its calls to the host's models reaching
    /// `models` (which says which it may call) within `deadline` and `limits.guest_infer_calls`,
    /// each input tensor up to `max_input_bytes`; also reports how long instantiation and the
    /// call took.
    pub fn run_task(
        &self,
        guest: &TaskGuest,
        input: &TaskInput,
        models: Arc<dyn GuestInference>,
        max_input_bytes: usize,
        deadline: Instant,
    ) -> Result<(TaskAnswer, Phases), GuestFailure> {
        let call = Call {
            deadline,
            inference: Some(models),
            output_bytes: self.maker.factors.output.max_bytes.max(max_input_bytes + 4096),
        };
        let req = tasks::Request {
            body: input.body.clone(),
            content_type: input.content_type.clone(),
            params: input.params.clone(),
        };
        // A task's input need not be an image: its `invalid-input` is the request's fault in
        // general (400 bad_request), not an image's.
        let (answer, phases) =
            self.run_guest(&guest.loaded, None, call, |i, s| i.call_run(s, &req)).map_err(|f| match f {
                GuestFailure::Reported(ErrorKind::InvalidImage, m) => GuestFailure::Reported(ErrorKind::BadRequest, m),
                other => other,
            })?;
        let answer = match answer {
            tasks::Answer::Detections(found) => TaskAnswer::Detections(
                found
                    .into_iter()
                    .map(|d| Detection {
                        label: d.label,
                        score: d.score,
                        bbox: [d.bbox.x_min, d.bbox.y_min, d.bbox.x_max, d.bbox.y_max],
                    })
                    .collect(),
            ),
            tasks::Answer::Embedding(values) => TaskAnswer::Embedding(values),
            tasks::Answer::Classes(preds) => TaskAnswer::Classes(
                preds.into_iter().map(|p| Prediction { index: p.index, label: p.label, score: p.score }).collect(),
            ),
            tasks::Answer::Json(text) => TaskAnswer::Json(serde_json::from_str(&text).map_err(|e| {
                GuestFailure::Reported(
                    ErrorKind::GuestFailed,
                    format!("task {} answered JSON that does not parse: {e}", guest.name),
                )
            })?),
        };
        Ok((answer, phases))
    }

    /// Decodes and normalizes `image` into the model's input tensor data; also reports how
    /// long instantiation and the call took.
    pub fn preprocess(
        &self,
        guest: &PreprocessGuest,
        image: &[u8],
        media_type: Option<&str>,
        spec: &SpecView<'_>,
        limits: &Limits,
        deadline: Instant,
    ) -> Result<(Vec<f32>, Phases), GuestFailure> {
        // The result is the model's input tensor, whatever the output cap.
        let tensor_bytes = spec.input_shape.iter().map(|&d| d as usize).product::<usize>() * 4 + 4096;
        let call =
            Call { deadline, inference: None, output_bytes: self.maker.factors.output.max_bytes.max(tensor_bytes) };
        let img = types::Image { bytes: image.to_vec(), media_type: media_type.map(String::from) };
        let decode =
            types::DecodeLimits { max_pixels: limits.max_image_pixels, max_alloc_bytes: limits.max_decode_alloc_bytes };
        let (tensor, phases) =
            self.run_guest(&guest.loaded, None, call, |i, s| i.call_preprocess(s, &img, &spec_to_wit(spec), decode))?;
        let expected: Vec<u32> = spec.input_shape.to_vec();
        if tensor.shape != expected || tensor.data.len() != expected.iter().map(|&d| d as usize).product::<usize>() {
            return Err(GuestFailure::Reported(
                ErrorKind::GuestFailed,
                format!(
                    "guest {} returned shape {:?} with {} values; the model takes {expected:?}",
                    guest.name,
                    tensor.shape,
                    tensor.data.len()
                ),
            ));
        }
        Ok((tensor.data, phases))
    }

    /// An instance of `guest` for its call later in this request (`postprocess`), made now,
    /// before `deadline`.
    pub fn prepare_postprocess(&self, guest: &PostprocessGuest, deadline: Instant) -> PreparedPostprocess {
        PreparedPostprocess(self.prepare(&guest.loaded, deadline))
    }

    /// An instance of `guest` for its call later in this request (`decide`), made now, before
    /// `deadline`.
    pub fn prepare_rules(&self, guest: &RulesGuest, deadline: Instant) -> PreparedRules {
        PreparedRules(self.prepare(&guest.loaded, deadline))
    }

    /// Drops instances made for calls that will not happen (the rules after one that
    /// rejected), off the request's path.
    pub fn discard(&self, prepared: impl IntoIterator<Item = PreparedRules>) {
        for p in prepared {
            self.reaper.retire(p.0.store);
        }
    }

    /// Softmax, top-k and labels, on `prepared` if this request made it an instance before (of
    /// this guest), else on one made now; also reports how long instantiation and the call took.
    #[allow(clippy::too_many_arguments)]
    pub fn postprocess(
        &self,
        guest: &PostprocessGuest,
        prepared: Option<PreparedPostprocess>,
        logits: Vec<f32>,
        spec: &SpecView<'_>,
        labels: &[String],
        top_k: u32,
        deadline: Instant,
    ) -> Result<(Vec<Prediction>, Phases), GuestFailure> {
        let call = Call { deadline, inference: None, output_bytes: self.maker.factors.output.max_bytes };
        let tensor = types::Tensor { shape: vec![1, logits.len() as u32], data: logits };
        let prepared = prepared.map(|p| p.0);
        let (preds, phases) = self.run_guest(&guest.loaded, prepared, call, |i, s| {
            i.call_postprocess(s, &tensor, &spec_to_wit(spec), labels, top_k)
        })?;
        // A guest may return more than it was asked for; the response carries `top_k` at most.
        let preds = preds.into_iter().take(top_k as usize);
        Ok((preds.map(|p| Prediction { index: p.index, label: p.label, score: p.score }).collect(), phases))
    }

    /// One rule's decision (`rule` names the guest), on `prepared` if this request made it an
    /// instance before (of this guest), else on one made now. Rules may call back into inference
    /// through `inference`; also reports how long instantiation and the call took.
    pub fn decide(
        &self,
        guest: &RulesGuest,
        prepared: Option<PreparedRules>,
        preds: &[Prediction],
        metadata: &[(String, String)],
        inference: Arc<dyn GuestInference>,
        deadline: Instant,
    ) -> Result<(Decision, Phases), GuestFailure> {
        let call = Call { deadline, inference: Some(inference), output_bytes: self.maker.factors.output.max_bytes };
        let wit_preds: Vec<types::Prediction> = preds
            .iter()
            .map(|p| types::Prediction { index: p.index, label: p.label.clone(), score: p.score })
            .collect();
        let metadata = metadata.to_vec();
        let prepared = prepared.map(|p| p.0);
        let (d, phases) = self
            .run_guest(&guest.loaded, prepared, call, |i, s| i.call_decide(s, &wit_preds, &metadata, &guest.config))?;
        let decision = Decision {
            accepted: d.accepted,
            reason: d.reason,
            category: d.category,
            tags: d.tags,
            rule: Some(guest.name.clone()),
        };
        Ok((decision, phases))
    }
}
