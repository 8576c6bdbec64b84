//! What a request asks for, made once where it arrives: each protocol of the server, the C API
//! and an embedder build a [`RequestContext`] (the absolute deadline, a checked `top_k`, the
//! model and pipeline asked for, the rules' metadata) and everything below reads it. Nothing
//! under the edge recomputes a deadline or checks `top_k` again.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use crate::config::Limits;
use crate::error::{ErrorKind, RequestError, Stage};

/// `top_k` when a request does not say.
pub const DEFAULT_TOP_K: u32 = 5;

/// Where a request goes and by when, checked when it is made.
#[derive(Debug, Clone)]
pub struct RequestContext {
    start: Instant,
    deadline: Instant,
    top_k: Option<NonZeroU32>,
    model: Option<String>,
    version: Option<String>,
    pipeline: Option<String>,
    metadata: Vec<(String, String)>,
}

impl RequestContext {
    /// A request that arrived at `start` (before its body was read), due after the client's
    /// `timeout` or `limits.deadline_ms`, whichever is shorter: the one place a deadline is
    /// computed. The default model, its default version and pipeline, [`DEFAULT_TOP_K`].
    pub fn new(limits: &Limits, start: Instant, timeout: Option<Duration>) -> Self {
        let max = Duration::from_millis(limits.deadline_ms);
        RequestContext {
            start,
            deadline: start + timeout.map_or(max, |t| t.min(max)),
            top_k: None,
            model: None,
            version: None,
            pipeline: None,
            metadata: Vec::new(),
        }
    }

    /// The model (`None`: the default one) and its version (`None`: the model's default).
    pub fn with_model(mut self, model: Option<String>, version: Option<String>) -> Self {
        self.model = model;
        self.version = version;
        self
    }

    /// A named pipeline (`[pipelines.<name>]`); `None`: the model's, else the default one.
    pub fn with_pipeline(mut self, pipeline: Option<String>) -> Self {
        self.pipeline = pipeline;
        self
    }

    /// How many classes to return (capped at the model's number of classes); `None`:
    /// [`DEFAULT_TOP_K`]. Refuses 0 and anything over `u32::MAX`, whatever width the protocol
    /// carries it in.
    pub fn with_top_k(mut self, top_k: Option<u64>) -> Result<Self, RequestError> {
        self.top_k = match top_k {
            None => None,
            Some(k) => Some(u32::try_from(k).ok().and_then(NonZeroU32::new).ok_or_else(|| {
                RequestError::new(
                    ErrorKind::BadRequest,
                    Stage::Admission,
                    format!("top_k must be a whole number from 1 to {}, got {k}", u32::MAX),
                )
            })?),
        };
        Ok(self)
    }

    /// Key/value pairs the rules guests may read (selected headers, the request id, ...).
    pub fn with_metadata(mut self, metadata: Vec<(String, String)>) -> Self {
        self.metadata = metadata;
        self
    }

    /// When the request arrived: `timings_ms.total` counts from here.
    pub fn start(&self) -> Instant {
        self.start
    }

    /// When the request must be answered.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// The `top_k` asked for; `None`: [`DEFAULT_TOP_K`].
    pub fn top_k(&self) -> Option<NonZeroU32> {
        self.top_k
    }

    pub fn model(&self) -> Option<&str> {
        self.model.as_deref()
    }

    pub fn version(&self) -> Option<&str> {
        self.version.as_deref()
    }

    pub fn pipeline(&self) -> Option<&str> {
        self.pipeline.as_deref()
    }

    pub fn metadata(&self) -> &[(String, String)] {
        &self.metadata
    }
}

/// An image to classify and its context.
#[derive(Debug, Clone)]
pub struct ClassifyRequest {
    /// The encoded image.
    pub image: Vec<u8>,
    /// The media type the client declared, if any (the bytes decide the format).
    pub media_type: Option<String>,
    pub context: RequestContext,
}

impl ClassifyRequest {
    pub fn new(image: Vec<u8>, context: RequestContext) -> Self {
        ClassifyRequest { image, media_type: None, context }
    }
}

/// A tensor the caller made, for the model alone (no guests): OIP's FP32 input, or an
/// embedder that preprocesses itself. `shape` must be the model's input shape.
#[derive(Debug, Clone)]
pub struct TensorRequest {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
    /// Its `top_k`, pipeline and metadata are not read.
    pub context: RequestContext,
}

/// The stage a running request is in, readable from another thread: a protocol that stops
/// waiting at the deadline names the stage that was running rather than guessing.
#[derive(Debug, Default)]
pub struct Progress(AtomicU8);

impl Progress {
    pub(crate) fn enter(&self, stage: Stage) {
        self.0.store(stage as u8, Ordering::Relaxed);
    }

    /// The stage entered last (`Admission` before the pipeline starts).
    pub fn stage(&self) -> Stage {
        Stage::ALL[usize::from(self.0.load(Ordering::Relaxed)).min(Stage::ALL.len() - 1)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_reports_the_stage_entered_last() {
        let progress = Progress::default();
        assert_eq!(progress.stage(), Stage::Admission);
        for stage in Stage::ALL {
            progress.enter(stage);
            assert_eq!(progress.stage(), stage);
        }
    }

    #[test]
    fn the_deadline_is_the_shorter_of_the_clients_and_the_limit() {
        let limits = Limits { deadline_ms: 1000, ..Limits::default() };
        let start = Instant::now();
        let at = |timeout| RequestContext::new(&limits, start, timeout).deadline() - start;
        assert_eq!(at(None), Duration::from_secs(1));
        assert_eq!(at(Some(Duration::from_millis(200))), Duration::from_millis(200));
        assert_eq!(at(Some(Duration::from_secs(60))), Duration::from_secs(1));
    }

    #[test]
    fn top_k_is_checked_once_when_the_context_is_made() {
        let context = || RequestContext::new(&Limits::default(), Instant::now(), None);
        assert_eq!(context().with_top_k(Some(3)).unwrap().top_k().map(NonZeroU32::get), Some(3));
        assert_eq!(context().with_top_k(None).unwrap().top_k(), None);
        for bad in [0, u64::from(u32::MAX) + 1] {
            let e = context().with_top_k(Some(bad)).unwrap_err();
            assert_eq!((e.kind, e.stage), (ErrorKind::BadRequest, Stage::Admission), "{bad}");
        }
    }
}
