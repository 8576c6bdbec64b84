//! A vectorizable drop-in for tract's f32 -> int8 `QuantizeLinear`.
//!
//! tract's `QuantizeLinearI8`/`U8` call a scalar round-half-to-even per element; in our int8
//! ResNet-50 the 16 quantizations after the residual additions took 8.8 of 45 ms on one core
//! (≈ 0.6 G elements/s). This op computes the same function with the classic add-and-subtract
//! 1.5·2²³ rounding (exact round-half-to-even for |v| < 2²², the hardware default rounding
//! mode), which the compiler turns into SIMD code on baseline x86_64 (SSE2 has no `roundps`).
//! Results are identical to tract's (unit test below, including ties and saturation).

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::element_wise::ElementWiseOp;
use tract_onnx::tract_core::ops::quant::{QuantizeLinearI8, QuantizeLinearU8};

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct QuantizeF32 {
    /// Multiplier (tract stores 1 / the ONNX scale), as bits so the op can be `Eq + Hash`.
    scale_bits: u32,
    zero_point: i32,
    unsigned: bool,
}

/// The op to put in place of `node` if it is one of tract's f32 quantizations.
pub fn replacement(model: &TypedModel, node: &TypedNode) -> TractResult<Option<QuantizeF32>> {
    let Some(ew) = node.op_as::<ElementWiseOp>() else { return Ok(None) };
    if node.inputs.len() != 1 || model.outlet_fact(node.inputs[0])?.datum_type != f32::datum_type() {
        return Ok(None);
    }
    Ok(if let Some(q) = ew.0.downcast_ref::<QuantizeLinearI8>() {
        Some(QuantizeF32 { scale_bits: q.scale.to_bits(), zero_point: q.zero_point as i32, unsigned: false })
    } else {
        ew.0.downcast_ref::<QuantizeLinearU8>().map(|q| QuantizeF32 {
            scale_bits: q.scale.to_bits(),
            zero_point: q.zero_point as i32,
            unsigned: true,
        })
    })
}

/// 1.5·2²³: adding it to an f32 of magnitude < 2²² rounds it to an integer, half to even (the
/// default rounding mode), and leaves that integer in the low mantissa bits.
const ROUNDER: f32 = 12_582_912.0;

/// `clamp(round_half_even(x · scale) + zero_point, lo, hi)`, written without `as` float-to-int
/// casts (saturating casts with NaN checks, which stop the loop from vectorizing).
#[inline(always)]
fn quantize_one(x: f32, scale: f32, zero_point: i32, lo: i32, hi: i32) -> i32 {
    let v = x * scale;
    // NaN quantizes to the zero point, like tract's; clamping keeps the rounding exact and
    // changes nothing after saturation.
    let v = if v.is_nan() { 0.0 } else { v.clamp(-4_194_304.0, 4_194_304.0) };
    let rounded = (v + ROUNDER).to_bits() as i32 - ROUNDER.to_bits() as i32;
    (rounded + zero_point).clamp(lo, hi)
}

impl QuantizeF32 {
    fn range(&self) -> (i32, i32) {
        if self.unsigned { (0, 255) } else { (-128, 127) }
    }

    /// Quantizes `xs` into `ys`, split over tract's threads under its multi-threaded executor
    /// (latency mode) when there is enough to share.
    fn run_maybe_parallel(&self, xs: &[f32], ys: &mut [u8]) {
        const CHUNK: usize = 64 << 10;
        match tract_linalg::multithread::current_tract_executor() {
            tract_linalg::multithread::Executor::MultiThread(pool) if xs.len() >= 2 * CHUNK => {
                use rayon::prelude::*;
                pool.install(|| xs.par_chunks(CHUNK).zip(ys.par_chunks_mut(CHUNK)).for_each(|(x, y)| self.run(x, y)))
            }
            _ => self.run(xs, ys),
        }
    }

    /// Quantizes `xs` into `ys` (bytes of the output's type, i8 or u8).
    fn run(&self, xs: &[f32], ys: &mut [u8]) {
        assert_eq!(xs.len(), ys.len(), "quantize: one output byte per input value");
        let (lo, hi) = self.range();
        let (scale, zero_point) = (f32::from_bits(self.scale_bits), self.zero_point);
        #[cfg(target_arch = "x86_64")]
        let done = self.run_sse2(xs, ys, scale);
        #[cfg(not(target_arch = "x86_64"))]
        let done = 0;
        for (x, y) in xs[done..].iter().zip(&mut ys[done..]) {
            *y = quantize_one(*x, scale, zero_point, lo, hi) as u8;
        }
    }

    /// 16 values per step with SSE2 (part of x86_64): the same arithmetic as `quantize_one`,
    /// the final clamp done by the saturating packs. Returns how many values it did.
    #[cfg(target_arch = "x86_64")]
    fn run_sse2(&self, xs: &[f32], ys: &mut [u8], scale: f32) -> usize {
        use std::arch::x86_64::*;
        let steps = xs.len().min(ys.len()) / 16;
        // SAFETY: SSE2 is part of x86_64. Step `i` reads `xs[16i..16i+16]` (four 4-float loads
        // from `p`) and writes `ys[16i..16i+16]` (one 16-byte store), both in bounds for
        // `i < steps`, which counts whole 16-value steps of the shorter slice.
        unsafe {
            let (scale, limit) = (_mm_set1_ps(scale), _mm_set1_ps(4_194_304.0));
            let (rounder, rounder_bits) = (_mm_set1_ps(ROUNDER), _mm_set1_epi32(ROUNDER.to_bits() as i32));
            let zero_point = _mm_set1_epi32(self.zero_point);
            let quad = |p: *const f32| {
                let v = _mm_mul_ps(_mm_loadu_ps(p), scale);
                let v = _mm_and_ps(v, _mm_cmpord_ps(v, v)); // NaN -> 0
                let v = _mm_min_ps(_mm_max_ps(v, _mm_sub_ps(_mm_setzero_ps(), limit)), limit);
                let r = _mm_sub_epi32(_mm_castps_si128(_mm_add_ps(v, rounder)), rounder_bits);
                _mm_add_epi32(r, zero_point)
            };
            for i in 0..steps {
                let p = xs.as_ptr().add(16 * i);
                let lo16 = _mm_packs_epi32(quad(p), quad(p.add(4)));
                let hi16 = _mm_packs_epi32(quad(p.add(8)), quad(p.add(12)));
                let bytes = if self.unsigned { _mm_packus_epi16(lo16, hi16) } else { _mm_packs_epi16(lo16, hi16) };
                _mm_storeu_si128(ys.as_mut_ptr().add(16 * i) as *mut __m128i, bytes);
            }
        }
        steps * 16
    }
}

impl Op for QuantizeF32 {
    fn name(&self) -> StaticName {
        if self.unsigned { "QuantizeU8".into() } else { "QuantizeI8".into() }
    }
    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!("scale: {} zero_point: {}", f32::from_bits(self.scale_bits), self.zero_point)])
    }
    op_as_typed_op!();
}

impl EvalOp for QuantizeF32 {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = &inputs[0];
        let xs = input.try_as_plain_ram()?;
        let dt = if self.unsigned { u8::datum_type() } else { i8::datum_type() };
        // SAFETY: `run_maybe_parallel` writes every byte of the output (one per input value)
        // before anything reads it.
        let mut output = unsafe { Tensor::uninitialized_dt(dt, input.shape())? };
        self.run_maybe_parallel(xs.as_slice::<f32>()?, output.as_bytes_mut());
        Ok(tvec!(output.into_tvalue()))
    }
}

impl TypedOp for QuantizeF32 {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let dt = if self.unsigned { u8::datum_type() } else { i8::datum_type() };
        Ok(tvec!(dt.fact(inputs[0].shape.clone())))
    }
    as_op!();
}

#[cfg(test)]
mod tests {
    use super::*;
    use tract_onnx::tract_core::ops::quant::{quantize_linear_f32_i8, quantize_linear_f32_u8};

    #[test]
    fn matches_tracts_quantize_linear_bit_for_bit() {
        let mut xs: Vec<f32> = (-40_000..40_000).map(|i| i as f32 * 0.0137).collect();
        // Exact ties at the chosen scale, both parities, and values that saturate or are odd.
        xs.extend([0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 126.5, 127.5, -128.5, 1e6, -1e6, f32::NAN, -0.0, 1e-30]);
        for (scale, zp) in [(1.0, 0), (37.05, -128), (0.25, 3), (512.0, 100)] {
            let signed = QuantizeF32 { scale_bits: f32::to_bits(scale), zero_point: zp, unsigned: false };
            let mut ours = vec![0u8; xs.len()];
            signed.run(&xs, &mut ours);
            let theirs: Vec<u8> = xs.iter().map(|&x| quantize_linear_f32_i8(x, scale, zp) as u8).collect();
            assert_eq!(ours, theirs, "i8 scale {scale} zero point {zp}");
            let zp = zp.clamp(0, 255);
            let unsigned = QuantizeF32 { scale_bits: f32::to_bits(scale), zero_point: zp, unsigned: true };
            let mut ours = vec![0u8; xs.len()];
            unsigned.run(&xs, &mut ours);
            let theirs: Vec<u8> = xs.iter().map(|&x| quantize_linear_f32_u8(x, scale, zp)).collect();
            assert_eq!(ours, theirs, "u8 scale {scale} zero point {zp}");
        }
        // Split over threads (latency mode) the result is the same.
        let op = QuantizeF32 { scale_bits: f32::to_bits(37.05), zero_point: -128, unsigned: false };
        let (mut serial, mut parallel) = (vec![0u8; xs.len()], vec![0u8; xs.len()]);
        op.run(&xs, &mut serial);
        tract_linalg::multithread::multithread_tract_scope(tract_linalg::multithread::Executor::multithread(3), || {
            op.run_maybe_parallel(&xs, &mut parallel)
        });
        assert_eq!(serial, parallel);
        // Beyond i32 tract's `as i32 + zero_point` wraps; this op saturates, as ONNX says.
        let op = QuantizeF32 { scale_bits: f32::to_bits(512.0), zero_point: 100, unsigned: false };
        let mut ours = [0u8; 4];
        op.run(&[f32::MAX, f32::INFINITY, f32::MIN, f32::NEG_INFINITY], &mut ours);
        assert_eq!(ours.map(|b| b as i8), [127, 127, -128, -128]);
    }
}
