//! What `tessera compile --target/--cpu` generates code for: an architecture and the CPU
//! features a `.cwasm` may assume.

use wasmtime::Config as EngineConfig;

use super::error::RuntimeError;

/// What `tessera compile --target/--cpu` generates code for. The default is this machine: its
/// architecture and every CPU feature it has (wasmtime detects them), so a `.cwasm` made on a
/// build server with AVX-512 would not load on a node without it. A named triple alone gets
/// that architecture's baseline (x86-64: SSE2); `cpu` adds features. wasmtime checks when it
/// loads a `.cwasm` that the machine has every feature it was compiled with, so a wrong choice
/// fails at load, naming the feature, never at run time.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CompileTarget {
    /// A target triple (`x86_64-unknown-linux-gnu`, `aarch64-unknown-linux-gnu`); `None`: this
    /// machine's.
    pub triple: Option<String>,
    /// `native` (this machine's features; only without `triple`), `baseline`, `x86-64-v2`,
    /// `x86-64-v3`, or Cranelift feature flags separated by commas (`has_avx2,has_fma`,
    /// `has_lse`); `None`: `native` without a triple, `baseline` with one.
    pub cpu: Option<String>,
}

/// x86-64 microarchitecture levels (the psABI's) as Cranelift's x86 feature flags.
#[cfg(feature = "compiler")]
const X86_64_V2: &[&str] = &["has_sse3", "has_ssse3", "has_sse41", "has_sse42", "has_popcnt", "has_cmpxchg16b"];
#[cfg(feature = "compiler")]
const X86_64_V3: &[&str] = &["has_avx", "has_avx2", "has_bmi1", "has_bmi2", "has_fma", "has_lzcnt"];

impl CompileTarget {
    /// Whether this is this machine (wasmtime's default: host triple, detected features).
    pub fn is_native(&self) -> bool {
        self.triple.is_none() && self.cpu.as_deref().is_none_or(|c| c == "native")
    }

    /// The Cranelift flags `cpu` stands for.
    #[cfg(feature = "compiler")]
    pub(super) fn flags(&self) -> Result<Vec<&str>, RuntimeError> {
        let cpu = self.cpu.as_deref().unwrap_or("baseline");
        let is_x86 = self.triple.as_deref().map_or(cfg!(target_arch = "x86_64"), |t| t.starts_with("x86_64"));
        let level = |flags: Vec<&'static str>| {
            if is_x86 {
                Ok(flags)
            } else {
                Err(RuntimeError::Engine(format!("--cpu {cpu} is an x86-64 level; the target is not x86-64")))
            }
        };
        match cpu {
            "native" => Err(RuntimeError::Engine(
                "--cpu native means this machine: it cannot be combined with --target (use baseline or flags)".into(),
            )),
            "baseline" => Ok(Vec::new()),
            "x86-64-v2" => level(X86_64_V2.to_vec()),
            "x86-64-v3" => level([X86_64_V2, X86_64_V3].concat()),
            flags => Ok(flags.split(',').map(str::trim).filter(|f| !f.is_empty()).collect()),
        }
    }

    pub(super) fn apply(&self, config: &mut EngineConfig) -> Result<(), RuntimeError> {
        if self.is_native() {
            return Ok(());
        }
        self.apply_target(config)
    }

    #[cfg(not(feature = "compiler"))]
    fn apply_target(&self, _: &mut EngineConfig) -> Result<(), RuntimeError> {
        Err(RuntimeError::Engine(no_compiler("compiling for another target")))
    }

    #[cfg(feature = "compiler")]
    fn apply_target(&self, config: &mut EngineConfig) -> Result<(), RuntimeError> {
        // A named target switches off wasmtime's detection of this machine's features: with
        // no triple given, that is this machine's architecture at its baseline.
        let triple = self.triple.clone().unwrap_or_else(|| target_lexicon::HOST.to_string());
        config.target(&triple).map_err(|e| RuntimeError::Engine(format!("--target {triple}: {e:#}")))?;
        for flag in self.flags()? {
            // SAFETY: wasmtime does not check that these features exist where the code will
            // run; it checks when a `.cwasm` is loaded (`check_compatible_with_isa_flag`),
            // refusing one that needs a feature the machine lacks. An unknown flag name fails
            // the engine's creation.
            unsafe {
                config.cranelift_flag_enable(flag);
            }
        }
        Ok(())
    }
}

/// What a build without the `compiler` feature says when asked to compile.
#[cfg(not(feature = "compiler"))]
pub(super) fn no_compiler(what: &str) -> String {
    format!(
        "{what} needs a compiler, and this build of Tessera is runtime-only (built without the `compiler` \
         feature): precompile guests with `tessera compile --target <triple> --cpu <level>` on a full build \
         and give this one the .cwasm files (docs/EDGE.md)"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Limits;
    use crate::runtime::Runtime;

    #[test]
    #[cfg(feature = "compiler")]
    fn compile_targets_name_their_cpu_features_and_refuse_contradictions() {
        let target = |triple: Option<&str>, cpu: Option<&str>| CompileTarget {
            triple: triple.map(str::to_string),
            cpu: cpu.map(str::to_string),
        };
        assert!(target(None, None).is_native() && target(None, Some("native")).is_native());
        assert!(!target(None, Some("baseline")).is_native());
        let x86 = Some("x86_64-unknown-linux-gnu");
        assert_eq!(target(x86, None).flags().unwrap(), Vec::<&str>::new(), "a triple alone is its baseline");
        let v3_target = target(x86, Some("x86-64-v3"));
        let v3 = v3_target.flags().unwrap();
        assert!(v3.contains(&"has_sse42") && v3.contains(&"has_avx2") && v3.contains(&"has_fma"), "{v3:?}");
        assert_eq!(target(x86, Some("has_avx2, has_fma")).flags().unwrap(), ["has_avx2", "has_fma"]);
        let arm = Some("aarch64-unknown-linux-gnu");
        assert!(target(arm, Some("x86-64-v2")).flags().unwrap_err().to_string().contains("not x86-64"));
        assert!(target(x86, Some("native")).flags().unwrap_err().to_string().contains("cannot be combined"));
        // An engine for this architecture at a named level builds; a flag Cranelift does not
        // know fails the engine, naming it.
        if cfg!(target_arch = "x86_64") {
            let limits = Limits::default();
            assert!(Runtime::with_target(&limits, None, &target(x86, Some("x86-64-v2"))).is_ok());
            let err = Runtime::with_target(&limits, None, &target(x86, Some("has_warp_drive"))).err().unwrap();
            assert!(err.to_string().contains("has_warp_drive"), "{err}");
        }
    }
}
