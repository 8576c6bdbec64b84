//! `tessera inspect`: the world a component fits, and what becomes of each of its imports under
//! given WASI grants, without running it.

use std::path::{Path, PathBuf};

use super::Runtime;
use super::error::RuntimeError;
use super::factor::Grants;
use super::trust::is_precompiled;
use super::wasi;

/// What `tessera inspect` tells of a component: the Tessera world it fits (if any), what
/// becomes of each import under the given grants, and its exports.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Inspection {
    /// A precompiled `.cwasm` rather than WebAssembly.
    pub precompiled: bool,
    pub path: PathBuf,
    pub bytes: usize,
    /// `preprocessor`, `postprocessor` or `rules`, judged from the exports; `None` when they
    /// match none.
    pub world: Option<&'static str>,
    /// `Ok` when it loads as that world with these grants, else why not.
    pub fits: Result<(), String>,
    pub imports: Vec<Import>,
    pub exports: Vec<String>,
}

/// One import and what the host does with it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Import {
    pub name: String,
    /// `tessera` (the host's own interfaces), `linked` (WASI every guest gets), `granted`,
    /// `not granted` (linked as functions that fail when called) or `refused` (no one provides it).
    pub status: &'static str,
}

impl Runtime {
    /// Reads the component at `path` and says how it would load with `grants`, without keeping it.
    pub fn inspect(&self, path: &Path, grants: &Grants) -> Result<Inspection, RuntimeError> {
        let (component, bytes) = self.component(path, "guest")?;
        let ty = component.component_type();
        let imports = ty
            .imports(&self.engine)
            .map(|(name, _)| {
                let status = if name.starts_with("tessera:vision/") {
                    "tessera"
                } else if !name.starts_with("wasi:") {
                    "refused"
                } else if wasi::is_linked(name, &Grants::new()) {
                    "linked"
                } else if wasi::is_linked(name, grants) {
                    "granted"
                } else {
                    "not granted"
                };
                Import { name: name.to_string(), status }
            })
            .collect();
        let exports: Vec<String> = ty.exports(&self.engine).map(|(name, _)| name.to_string()).collect();
        let has = |name: &str| exports.iter().any(|e| e == name);
        let world = if has("preprocess") {
            Some("preprocessor")
        } else if has("postprocess") {
            Some("postprocessor")
        } else if has("decide") {
            Some("rules")
        } else if has("run") {
            Some("task")
        } else {
            None
        };
        let fits = match world {
            Some("preprocessor") => self.load_preprocess(path, grants.clone()).map(drop),
            Some("postprocessor") => self.load_postprocess(path, grants.clone()).map(drop),
            Some("task") => self.load_task(path, grants.clone()).map(drop),
            Some(_) => self.load_rules(path, Vec::new(), grants.clone()).map(drop),
            None => Ok(()),
        }
        .map_err(|e| e.to_string())
        .and_then(|()| match world {
            Some(_) => Ok(()),
            None => Err("it exports none of preprocess, postprocess, decide, run".into()),
        });
        Ok(Inspection {
            path: path.to_path_buf(),
            bytes,
            precompiled: is_precompiled(path),
            world,
            fits,
            imports,
            exports,
        })
    }
}
