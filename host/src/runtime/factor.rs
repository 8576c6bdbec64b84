//! The runtime's capabilities as factors, after Spin's (and wasmtime-wasi's `add_to_linker` +
//! `WasiCtx`): each thing a guest can be given is one module with the same three parts: what
//! it links into the linker of a world, what it takes from the configuration (once, when the
//! runtime is built), the state it gives each instance (one per guest call, perhaps made ahead
//! of it), plus what it sets on that instance's store, and what it takes from the call when the
//! call begins. [`GuestState`] is the sum of the factors' instance states, and a
//! world's linker the sum of their links over Tessera's types (both made by `Factors` in
//! mod.rs). This file holds what the factors share: the trait, the worlds, what a call brings.
//!
//! The factors: `wasi.rs` (`WasiFactor`: the WASI a guest is granted), `inference_import.rs`
//! (`InferenceFactor`: the host's `inference` interface, linked only into the worlds that
//! import it), `limits.rs` (`MemoryFactor`: the instance's memory cap and the process budget)
//! and `output.rs` (`OutputFactor`: the most a guest may hand the host at once).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Instant;

use wasmtime::Store;
use wasmtime::component::Linker;

use super::GuestState;
use crate::config::WasiGrant;
use crate::error::{ErrorKind, RequestError, Stage};
use crate::stage_io::{ModelDescription, NamedTensor};

/// A guest's WASI grants; one linker is made per world and distinct set.
pub type Grants = BTreeSet<WasiGrant>;

/// What a rules guest's `inference` import reaches. The runtime defines it and the pipeline
/// implements it over the model repository, so the runtime knows nothing of models or versions.
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

    /// What `model` (its `version`, or the default one) takes: a task's `engines.describe`.
    fn describe(&self, model: &str, version: Option<&str>) -> Result<ModelDescription, RequestError> {
        let _ = version;
        Err(RequestError::new(ErrorKind::ModelNotFound, Stage::Task, format!("no model {model:?} here")))
    }

    /// Runs `model` on `input` of `shape` before `deadline`: its outputs with their names and
    /// shapes (a task's `engines.run`). By default [`GuestInference::infer`]'s values as one
    /// output.
    fn run(
        &self,
        model: &str,
        version: Option<&str>,
        shape: &[u32],
        input: Vec<f32>,
        deadline: Instant,
    ) -> Result<Vec<NamedTensor>, RequestError> {
        let data = self.infer(model, version, shape, input, deadline)?;
        Ok(vec![NamedTensor { name: "output".into(), shape: vec![1, data.len() as u32], data }])
    }
}

/// The Tessera worlds a guest can be loaded as (`wit/tessera.wit`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum World {
    Preprocessor,
    Postprocessor,
    Rules,
    Task,
}

impl World {
    /// Its name in the WIT file.
    pub fn name(self) -> &'static str {
        match self {
            World::Preprocessor => "preprocessor",
            World::Postprocessor => "postprocessor",
            World::Rules => "rules",
            World::Task => "task",
        }
    }

    /// Whether the world imports the host's `inference` interface.
    pub fn imports_inference(self) -> bool {
        self == World::Rules
    }

    /// Whether the world imports the host's `engines` interface.
    pub fn imports_engines(self) -> bool {
        self == World::Task
    }
}

/// Whose instance a store holds: what the factors make an instance's state from, before any
/// call (it may be made ahead of its call, `ready.rs`).
pub(super) struct Instance<'a> {
    pub grants: &'a Grants,
    /// The guest's log budget per second, shared by all its instances (`stdio.rs`).
    pub log: &'a Arc<super::stdio::GuestLog>,
}

/// What one guest call brings, set on its instance's store when the call takes it.
pub(super) struct Call {
    pub deadline: Instant,
    /// What the `inference` import reaches (rules guests only).
    pub inference: Option<Arc<dyn GuestInference>>,
    /// The most this call's guest may hand the host at once; a stage may raise the configured
    /// cap (preprocess returns the model's whole input tensor).
    pub output_bytes: usize,
}

/// One capability of the runtime.
pub(super) trait Factor {
    /// What each instance gets of this capability (a field of [`GuestState`]).
    type InstanceState;

    /// Adds this capability's host functions for a guest of `world` granted `grants`; nothing
    /// when the world does not import it.
    fn link(&self, linker: &mut Linker<GuestState>, world: World, grants: &Grants) -> wasmtime::Result<()>;

    /// The state one instance gets, before its call.
    fn instance_state(&self, instance: &Instance<'_>) -> Self::InstanceState;

    /// Sets what this capability needs on a new instance's store, once it holds the state.
    fn prepare_store(&self, _store: &mut Store<GuestState>) {}

    /// Gives the instance's state what belongs to `call`, when the call takes the instance.
    fn begin_call(&self, _store: &mut Store<GuestState>, _call: &Call) {}
}
