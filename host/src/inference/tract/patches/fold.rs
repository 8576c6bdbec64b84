//! A constant fold tract declines, done once at load time.
//!
//! tract's `PropConst` refuses a fold whose output is more than 4 MiB bigger than its inputs
//! (`CONST_FOLD_MEM_BUDGET` in tract-core's `optim/mod.rs`): it must not turn one shared
//! weight into a larger copy. But tract's quantized convolution (`wire_as_quant_im2col`) casts
//! the int8 kernel to i32 only to sum its rows for the zero-point correction. For a ResNet-50
//! 3×3 kernel the i32 copy is 9 MiB, so the fold is refused and every run casts and sums
//! 2.4 MB of constant weights again (≈ 6 ms of a 60 ms int8 ResNet-50 on one core). The chain
//! ends in a per-channel vector of a few KiB; folding the whole chain keeps memory down too.

use tract_onnx::prelude::*;
use tract_onnx::tract_core::ops::konst::Const;

/// tract-core's own budget for a folded value.
const BUDGET: usize = 4 << 20;

/// The largest intermediate a folded chain may produce: ResNet-50's largest i32 kernel copy is
/// 9 MiB. Checked from the node's output fact before it is evaluated, so a constant expanded to
/// a huge shape (an ONNX `Expand` of one float to 60000×60000) is left alone, not allocated.
const MAX_INTERMEDIATE: usize = 64 << 20;

/// The bytes `node`'s single output will take, from its fact; `None` when not concrete.
fn output_bytes(node: &TypedNode) -> Option<usize> {
    let fact = &node.outputs.first()?.fact;
    let dims = fact.shape.as_concrete()?;
    dims.iter().try_fold(fact.datum_type.size_of(), |acc, &d| acc.checked_mul(d))
}

/// Whether evaluating `node` stays within [`MAX_INTERMEDIATE`].
fn small_enough(node: &TypedNode) -> bool {
    output_bytes(node).is_some_and(|b| b <= MAX_INTERMEDIATE)
}

fn bytes(values: &[TValue]) -> usize {
    values.iter().map(|t| t.datum_type().size_of() * t.len()).sum()
}

/// Folds chains of constant computations whose intermediate outgrows tract's budget but whose
/// end result is smaller than what they read (a reduction): the fold never adds memory. Leaves
/// the folded nodes dangling for the caller's `compact()`; returns how many chains were folded.
pub fn fold_constant_chains(model: &mut TypedModel) -> TractResult<usize> {
    let mut folded = 0;
    while let Some(patch) = next_fold(model)? {
        patch.apply(model)?;
        folded += 1;
    }
    Ok(folded)
}

fn next_fold(model: &TypedModel) -> TractResult<Option<TypedModelPatch>> {
    for id in model.eval_order()? {
        let node = model.node(id);
        if node.inputs.is_empty() || node.op_is::<Const>() || node.outputs.len() != 1 {
            continue;
        }
        let facts = model.node_input_facts(id)?;
        if !facts.iter().all(|f| f.konst.is_some()) {
            continue;
        }
        if !small_enough(node) {
            continue;
        }
        let inputs: TVec<TValue> = facts.iter().map(|f| f.konst.clone().unwrap().into_tvalue()).collect();
        let read = bytes(&inputs);
        let Some(mut values) = node.op.eval_out_of_plan(inputs)? else { continue };
        // Walk on while the value is not yet a reduction, through single-input successors only.
        let mut last = node;
        while bytes(&values) >= read {
            let Some(next) = model.single_succ(last.id)? else { break };
            if next.inputs.len() != 1 || next.outputs.len() != 1 || !small_enough(next) {
                break;
            }
            let Some(out) = next.op.eval_out_of_plan(values.clone())? else { break };
            values = out;
            last = next;
        }
        if bytes(&values) >= read
            || bytes(&values) > BUDGET
            || values.len() != 1
            || last.outputs[0].fact.exotic_fact.is_some()
        {
            continue;
        }
        let mut patch = TypedModelPatch::new(format!("fold constant chain ending at {}", last.name));
        let value = values.remove(0).into_arc_tensor();
        let wire = patch.wire_node(&last.name, Const::new(value)?, &[])?[0];
        patch.shunt_outside(model, last.id.into(), wire)?;
        return Ok(Some(patch));
    }
    Ok(None)
}
