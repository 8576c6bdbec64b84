//! Whether tract may use its Intel AMX int8 kernels, and on which plans.
//!
//! tract-linalg 0.23.9's AMX int8 kernels (`avx512amx_mmm_i32_16x16`, `…_8x8`) load the
//! activation panel 64 K-bytes per step (`tileloaddt1`) whatever the matmul's depth K. When K
//! is not a multiple of 64 the last step reads past the end of the panel; the weights side is
//! zero-padded so the result is right, but if the read crosses into an unmapped page the
//! process dies with SIGSEGV (seen in our int8 test on the default model, whose first conv has
//! K = 27). Our own im2col (`patches/im2col.rs`) ends its buffer with slack for that read, so a matmul
//! fed by it is safe; one whose activations tract packs itself (an einsum, a MatMul) is not.
//! So AMX is off unless the configuration asks for it, and then a plan with an unsafe matmul
//! fails to load with a clear reason instead of crashing later. Without AMX tract uses its
//! AVX-512 VNNI (or AVX2) int8 kernels, which have no such read.
//!
//! tract probes the CPU once per process, so the choice is process-wide and made before the
//! first model is loaded.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use tract_onnx::prelude::*;
use tract_onnx::tract_core::ops::matmul::optimized::{MatMulOperand, OptMatMul, ProtoFusedSpec};

static REQUESTED: AtomicBool = AtomicBool::new(false);
static IN_FORCE: OnceLock<bool> = OnceLock::new();

/// Asks for (or against) tract's AMX int8 kernels in this process and returns the choice in
/// force: only a request made before the first model load counts.
pub fn request_amx_int8(allow: bool) -> bool {
    if IN_FORCE.get().is_none() {
        REQUESTED.store(allow, Ordering::SeqCst);
    }
    amx_allowed()
}

/// Fixes the choice (on first call, before tract probes the CPU) and returns it.
pub(crate) fn amx_allowed() -> bool {
    *IN_FORCE.get_or_init(|| {
        let allow = REQUESTED.load(Ordering::SeqCst);
        #[cfg(target_arch = "x86_64")]
        if !allow {
            // Edits what tract probed; a user's own TRACT_CPU_ISA edits are kept.
            let knob = &tract_linalg::knobs::TRACT_CPU_ISA;
            let edits = match knob.get() {
                Some(user) if !user.trim().is_empty() => format!("{user},-amx-int8"),
                _ => "-amx-int8".to_string(),
            };
            knob.set(Some(edits));
        }
        allow
    })
}

#[cfg(feature = "tract-patches")]
fn fed_by_padded_im2col(node: &TypedNode) -> bool {
    super::patches::has_amx_slack(node)
}

#[cfg(not(feature = "tract-patches"))]
fn fed_by_padded_im2col(_: &TypedNode) -> bool {
    false
}

/// Refuses a plan in which an AMX int8 kernel would multiply with a depth that is not a
/// multiple of 64 and activations not packed by our im2col (see the module doc).
pub(crate) fn check_plan(model: &TypedModel) -> Result<(), String> {
    for node in &model.nodes {
        let Some(op) = node.op_as::<OptMatMul>() else { continue };
        let amx = op.mmm.iter().any(|k| k.name().contains("amx") && k.internal_type() == i32::datum_type());
        if !amx {
            continue;
        }
        for spec in &op.micro_ops {
            let ProtoFusedSpec::AddMatMul { geo, b, .. } = spec else { continue };
            let padded_by_us = match b {
                MatMulOperand::Input(i) => fed_by_padded_im2col(model.node(node.inputs[*i].node)),
                MatMulOperand::Const(_) => false,
            };
            if geo.k.as_i64().is_none_or(|k| k % 64 != 0) && !padded_by_us {
                return Err(format!(
                    "int8 matmul {} has depth K = {} (not a multiple of 64) on activations tract packs \
                     itself, which its AMX kernels read out of bounds; quantize with \
                     models/tools/quantize.py (convolutions through im2col) or set \
                     [inference.tract] amx_int8 = false",
                    node.name, geo.k
                ));
            }
        }
    }
    Ok(())
}
