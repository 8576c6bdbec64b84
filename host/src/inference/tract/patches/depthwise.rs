//! A direct fp32 depthwise convolution kernel (one filter per channel), for [`super::gemm_conv`].
//!
//! tract 0.23.9's `DepthWise` op walks the kernel taps per output pixel through generic
//! zone/patch iterators: on a seeded MobileNetV2 it took half the run, several times what the
//! arithmetic needs. Here each channel is copied into a zero-padded plane split into stride
//! phases, then each tap is one multiply-add of a whole phase plane into an accumulator (long,
//! vectorized loops; per-row loops were too short for 16-wide vectors at 7-56 columns), and
//! the epilogue (residual, clamp) runs as the accumulator is copied out, still in L1/L2.

use super::ConvShape;

/// Accumulator values per block of output rows: with its source rows, ~16 KiB of a 48 KiB L1d.
const L1_BLOCK_FLOATS: usize = 2048;

/// Input values: f32, or 8-bit ones dequantized as they are staged, `(q - zero) · scale`
/// (int8 depthwise convolutions: no separate dequantization pass over the tensor).
#[derive(Clone, Copy)]
pub enum Values<'a> {
    F32(&'a [f32]),
    I8 { q: &'a [i8], zero: f32, scale: f32 },
    U8 { q: &'a [u8], zero: f32, scale: f32 },
}

impl<'a> Values<'a> {
    pub fn len(&self) -> usize {
        match self {
            Values::F32(v) => v.len(),
            Values::I8 { q, .. } => q.len(),
            Values::U8 { q, .. } => q.len(),
        }
    }

    /// The values in `range`.
    pub fn slice(&self, range: std::ops::Range<usize>) -> Values<'a> {
        match *self {
            Values::F32(v) => Values::F32(&v[range]),
            Values::I8 { q, zero, scale } => Values::I8 { q: &q[range], zero, scale },
            Values::U8 { q, zero, scale } => Values::U8 { q: &q[range], zero, scale },
        }
    }

    /// `dst[i]` = value `start + i·step`, for as many as both have.
    #[inline(always)]
    fn gather(&self, dst: &mut [f32], start: usize, step: usize) {
        match *self {
            // A plain copy for step 1.
            Values::F32(v) if step == 1 => {
                let len = dst.len().min(v.len().saturating_sub(start));
                dst[..len].copy_from_slice(&v[start..start + len]);
            }
            Values::F32(v) => strided(&v[start..], dst, step, |v| v),
            // Scale 1: the caller folded the scale into the weights (one multiply less per value).
            Values::I8 { q, zero, scale: 1.0 } => strided(&q[start..], dst, step, |v| v as f32 - zero),
            Values::U8 { q, zero, scale: 1.0 } => strided(&q[start..], dst, step, |v| v as f32 - zero),
            Values::I8 { q, zero, scale } => strided(&q[start..], dst, step, |v| (v as f32 - zero) * scale),
            Values::U8 { q, zero, scale } => strided(&q[start..], dst, step, |v| (v as f32 - zero) * scale),
        }
    }
}

/// `dst[i] = f(src[i·step])`, for as many as both have. Steps 1 and 2 (stride-2 convolutions)
/// get loops the compiler vectorizes: a `step_by` with a run-time step stays scalar (the int8
/// stride-2 gathers showed as scalar conversions in `perf annotate`).
#[inline(always)]
fn strided<T: Copy>(src: &[T], dst: &mut [f32], step: usize, f: impl Fn(T) -> f32) {
    match step {
        1 => dst.iter_mut().zip(src).for_each(|(d, v)| *d = f(*v)),
        2 => {
            let pairs = src.chunks_exact(2);
            let last = pairs.remainder().first().copied();
            let len = dst.len().min(src.len().div_ceil(2));
            let (body, tail) = dst[..len].split_at_mut(len.min(src.len() / 2));
            body.iter_mut().zip(pairs).for_each(|(d, p)| *d = f(p[0]));
            if let (Some(d), Some(v)) = (tail.first_mut(), last) {
                *d = f(v);
            }
        }
        _ => dst.iter_mut().zip(src.iter().step_by(step)).for_each(|(d, v)| *d = f(*v)),
    }
}

/// One channel's convolution: `out` (`oh × ow`) = clamp(`bias` + `residual` + `plane` ⋆
/// `weights`), with `plane` the `h × w` input and `weights` the `kh × kw` filter.
#[derive(Clone, Copy)]
pub struct Channel<'a> {
    pub g: &'a ConvShape,
    pub weights: &'a [f32],
    pub plane: Values<'a>,
    pub bias: f32,
    pub residual: Option<&'a [f32]>,
    pub clamp: Option<(f32, f32)>,
}

/// Where a channel's output goes: f32, or requantized to 8 bits as it leaves the accumulator
/// (int8 depthwise convolutions: no f32 output tensor and no separate quantization pass, which
/// made them ~1.3× their fp32 time).
pub enum Output<'a> {
    F32(&'a mut [f32]),
    I8(&'a mut [i8], Requantize),
    U8(&'a mut [u8], Requantize),
}

/// `q = saturate(round_half_even(v · (1 / scale)) + zero)`: onnxruntime's requantization, which
/// also multiplies (a division per value cost as much as the nine taps of a 3×3 filter).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Requantize {
    inv_scale: f32,
    zero: i32,
}

impl Requantize {
    /// For an output quantized with `scale` and `zero`.
    pub fn new(scale: f32, zero: i32) -> Self {
        Requantize { inv_scale: 1.0 / scale, zero }
    }

    /// Round half to even by the 1.5·2²³ trick: after adding it, the low mantissa bits are the
    /// rounded integer (exact below 2²², and anything that large saturates). Integer arithmetic
    /// from there vectorizes on baseline x86-64, where `round_ties_even` is a libm call and a
    /// saturating `as` cast is scalar.
    #[inline(always)]
    fn unsaturated(self, v: f32) -> i32 {
        const MAGIC: f32 = 12_582_912.0;
        ((v * self.inv_scale).clamp(-4e6, 4e6) + MAGIC).to_bits() as i32 - MAGIC.to_bits() as i32 + self.zero
    }

    #[inline(always)]
    pub fn to_i8(self, v: f32) -> i8 {
        self.unsaturated(v).clamp(i8::MIN as i32, i8::MAX as i32) as i8
    }

    #[inline(always)]
    pub fn to_u8(self, v: f32) -> u8 {
        self.unsaturated(v).clamp(0, u8::MAX as i32) as u8
    }
}

impl Output<'_> {
    fn len(&self) -> usize {
        match self {
            Output::F32(o) => o.len(),
            Output::I8(o, _) => o.len(),
            Output::U8(o, _) => o.len(),
        }
    }
}

impl Channel<'_> {
    /// Writes the channel's output into `out`; `scratch` holds the padded, phase-split plane.
    ///
    /// The binary is built for baseline x86-64 (SSE2); the same code compiled for AVX-512 or
    /// AVX2 is picked at run time (`is_x86_feature_detected!` caches its answer). Separate
    /// multiply and add, not `mul_add`: every variant then gives the same bits.
    pub fn run(&self, out: Output, scratch: &mut Scratch) {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                // SAFETY: the CPU has AVX-512F (checked just above).
                return unsafe { run_avx512(self, out, scratch) };
            }
            if std::arch::is_x86_feature_detected!("avx2") {
                // SAFETY: the CPU has AVX2 (checked just above).
                return unsafe { run_avx2(self, out, scratch) };
            }
        }
        run_any(self, out, scratch)
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn run_avx512(c: &Channel, out: Output, scratch: &mut Scratch) {
    run_any(c, out, scratch)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn run_avx2(c: &Channel, out: Output, scratch: &mut Scratch) {
    run_any(c, out, scratch)
}

/// [`Channel::run`]'s body, inlined into each target-feature variant.
#[inline(always)]
fn run_any(c: &Channel, out: Output, scratch: &mut Scratch) {
    let Channel { g, weights, plane, bias, residual, clamp } = *c;
    assert_eq!(out.len(), g.oh * g.ow, "depthwise output size");
    let [sy, sx] = g.stride;
    let [dy, dx] = g.dilation;
    // The padded plane: exactly the rows and columns some output reads, split into sy × sx
    // phase planes: phase (q, p) holds padded rows q, q + sy, ... and columns p, p + sx, ...
    // For any tap, the inputs of consecutive output pixels are then consecutive in one phase
    // plane, rows included (`wq` apart, like the accumulator's rows): each tap is one long
    // multiply-add over the whole plane, not one short loop per output row.
    let hp = (g.oh - 1) * sy + (g.kh - 1) * dy + 1;
    let wp = (g.ow - 1) * sx + (g.kw - 1) * dx + 1;
    let (hq, wq) = (hp.div_ceil(sy) + 1, wp.div_ceil(sx)); // + 1 row: the last tap's overrun
    let phase_len = hq * wq;
    let acc_len = g.oh * wq;
    // Zeroed once per geometry: every channel then writes the same cells, so the padding
    // cells stay zero (re-zeroing per channel was ~15 % of the time).
    if scratch.zeroed_for.as_ref() != Some(g) {
        scratch.buf.clear();
        scratch.buf.resize(sy * sx * phase_len + acc_len, 0.0);
        scratch.zeroed_for = Some(g.clone());
    }
    let (phases, acc) = scratch.buf.split_at_mut(sy * sx * phase_len);
    let (top, left) = (g.pad_before[0], g.pad_before[1]);
    for y in 0..g.h {
        let yp = y + top;
        if yp >= hp {
            break;
        }
        let line = plane.slice(y * g.w..(y + 1) * g.w);
        let (q, row) = (yp % sy, yp / sy);
        for p in 0..sx {
            // This phase's first padded column at or after `left`: index j0, input column x0.
            let j0 = left.saturating_sub(p).div_ceil(sx);
            let x0 = j0 * sx + p - left;
            if x0 >= g.w || j0 >= wq {
                continue;
            }
            line.gather(&mut phases[(q * sx + p) * phase_len + row * wq..][j0..wq], x0, sx);
        }
    }
    acc.fill(bias);
    // Blocks of output rows whose accumulator and source rows stay in L1 across the taps.
    let rows_per_block = (L1_BLOCK_FLOATS / wq).max(1);
    for (block, acc) in acc.chunks_mut(rows_per_block * wq).enumerate() {
        let first = block * rows_per_block * wq;
        for ki in 0..g.kh {
            let (q, ro) = ((ki * dy) % sy, (ki * dy) / sy);
            for kj in 0..g.kw {
                let (p, co) = ((kj * dx) % sx, (kj * dx) / sx);
                let w = weights[ki * g.kw + kj];
                let src = &phases[(q * sx + p) * phase_len + ro * wq + co + first..][..acc.len()];
                acc.iter_mut().zip(src).for_each(|(a, v)| *a += w * v);
            }
        }
    }
    match (residual, out) {
        (Some(r), Output::F32(out)) => {
            for (oy, out_row) in out.chunks_exact_mut(g.ow).enumerate() {
                let (acc_row, r) = (&acc[oy * wq..][..g.ow], &r[oy * g.ow..][..g.ow]);
                out_row.iter_mut().zip(acc_row).zip(r).for_each(|((o, a), r)| *o = a + r);
            }
            if let Some((lo, hi)) = clamp {
                out.iter_mut().for_each(|v| *v = v.max(lo).min(hi));
            }
        }
        (Some(_), _) => unreachable!("a residual is added to f32 outputs only"),
        (None, out) => {
            // Clamped over the whole accumulator (one long loop; rows of 7-56 values are too
            // short for 16-wide vectors), then copied out row by row.
            if let Some((lo, hi)) = clamp {
                acc.iter_mut().for_each(|v| *v = v.max(lo).min(hi));
            }
            // Requantized the same way, the whole accumulator in one loop, then copied out.
            let bytes = &mut scratch.bytes;
            bytes.resize(acc.len(), 0);
            match out {
                Output::F32(out) => out
                    .chunks_exact_mut(g.ow)
                    .enumerate()
                    .for_each(|(oy, o)| o.copy_from_slice(&acc[oy * wq..][..g.ow])),
                Output::I8(out, rq) => {
                    bytes.iter_mut().zip(acc.iter()).for_each(|(b, v)| *b = rq.to_i8(*v) as u8);
                    out.chunks_exact_mut(g.ow).enumerate().for_each(|(oy, o)| {
                        o.iter_mut().zip(&bytes[oy * wq..][..g.ow]).for_each(|(o, b)| *o = *b as i8)
                    })
                }
                Output::U8(out, rq) => {
                    bytes.iter_mut().zip(acc.iter()).for_each(|(b, v)| *b = rq.to_u8(*v));
                    out.chunks_exact_mut(g.ow)
                        .enumerate()
                        .for_each(|(oy, o)| o.copy_from_slice(&bytes[oy * wq..][..g.ow]))
                }
            }
        }
    }
}

/// A thread's working memory for [`Channel::run`]: the phase planes and the accumulator.
#[derive(Default)]
pub struct Scratch {
    buf: Vec<f32>,
    /// The requantized accumulator of an 8-bit output.
    bytes: Vec<u8>,
    /// The geometry whose padding cells `buf` holds zeros for.
    zeroed_for: Option<ConvShape>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A direct depthwise convolution of one channel, the reference.
    fn direct(g: &ConvShape, weights: &[f32], plane: &[f32], bias: f32) -> Vec<f32> {
        let mut out = vec![bias; g.oh * g.ow];
        for oy in 0..g.oh {
            for ox in 0..g.ow {
                for ki in 0..g.kh {
                    for kj in 0..g.kw {
                        if let Some((y, x)) = g.input_at(oy, ox, ki, kj) {
                            out[oy * g.ow + ox] += weights[ki * g.kw + kj] * plane[y * g.w + x];
                        }
                    }
                }
            }
        }
        out
    }

    #[test]
    fn matches_a_direct_depthwise_convolution_over_awkward_geometries_in_f32_and_8_bit() {
        // (h, w, kernel, stride, dilation, pad before, pad after)
        let cases = [
            (7, 7, [3, 3], [1, 1], [1, 1], [1, 1], [1, 1]),
            (112, 112, [3, 3], [2, 2], [1, 1], [1, 1], [1, 1]),
            (9, 13, [3, 3], [2, 2], [1, 1], [0, 1], [1, 0]),
            (10, 11, [5, 5], [1, 1], [1, 1], [2, 2], [2, 2]),
            (12, 12, [3, 3], [1, 1], [2, 2], [2, 2], [2, 2]),
            (8, 9, [3, 5], [3, 2], [1, 1], [1, 2], [0, 2]),
            (5, 4, [3, 3], [1, 1], [1, 1], [0, 0], [0, 0]),
            (1, 1, [3, 3], [1, 1], [1, 1], [1, 1], [1, 1]),
        ];
        let mut scratch = Scratch::default();
        for (h, w, [kh, kw], stride, dilation, pad, after) in cases {
            let g = ConvShape::for_test(1, h, w, [kh, kw], stride, dilation, pad, after);
            let value = |i: usize| ((i * 7919 % 997) as f32 / 997.0) - 0.5;
            let plane: Vec<f32> = (0..h * w).map(value).collect();
            let weights: Vec<f32> = (0..kh * kw).map(|i| value(i * 31 + 5)).collect();
            let residual: Vec<f32> = (0..g.oh * g.ow).map(|i| value(i * 13 + 1)).collect();
            let plain = direct(&g, &weights, &plane, 0.125);
            for (with_residual, clamp) in [(false, None), (true, Some((0.0, 0.5))), (false, Some((0.0, 6.0)))] {
                let mut out = vec![f32::NAN; g.oh * g.ow];
                let res = with_residual.then_some(residual.as_slice());
                let c =
                    Channel { g: &g, weights: &weights, plane: Values::F32(&plane), bias: 0.125, residual: res, clamp };
                c.run(Output::F32(&mut out), &mut scratch);
                for (i, (got, want)) in out.iter().zip(&plain).enumerate() {
                    let want = if with_residual { want + residual[i] } else { *want };
                    let want = clamp.map_or(want, |(lo, hi): (f32, f32)| want.max(lo).min(hi));
                    assert!((got - want).abs() < 1e-5, "{g:?} {with_residual} {clamp:?} at {i}: {got} vs {want}");
                }
            }
            // 8-bit input staged as (q - zero)·scale, output requantized: against the direct
            // convolution of the dequantized plane, requantized the same way (one step of
            // rounding apart at most: the sums run in another order).
            let q: Vec<i8> = (0..h * w).map(|i| (i * 7919 % 251) as i8).collect();
            let u: Vec<u8> = q.iter().map(|v| *v as u8).collect();
            for (zero, scale) in [(-3.0, 0.05), (7.0, 1.0)] {
                let as_f32 = |v: f32| (v - zero) * scale;
                let rq = Requantize::new(0.04, 5);
                for input in [Values::I8 { q: &q, zero, scale }, Values::U8 { q: &u, zero, scale }] {
                    let dequantized: Vec<f32> = match input {
                        Values::I8 { q, .. } => q.iter().map(|v| as_f32(*v as f32)).collect(),
                        Values::U8 { q, .. } => q.iter().map(|v| as_f32(*v as f32)).collect(),
                        Values::F32(_) => unreachable!(),
                    };
                    let want = direct(&g, &weights, &dequantized, 0.125);
                    let c =
                        Channel { g: &g, weights: &weights, plane: input, bias: 0.125, residual: None, clamp: None };
                    let (mut o8, mut ou8) = (vec![0i8; g.oh * g.ow], vec![0u8; g.oh * g.ow]);
                    c.run(Output::I8(&mut o8, rq), &mut scratch);
                    c.run(Output::U8(&mut ou8, rq), &mut scratch);
                    for (i, want) in want.iter().enumerate() {
                        let (a, b) = (rq.to_i8(*want) as i32, rq.to_u8(*want) as i32);
                        assert!((o8[i] as i32 - a).abs() <= 1, "{g:?} i8 out at {i}: {} vs {a}", o8[i]);
                        assert!((ou8[i] as i32 - b).abs() <= 1, "{g:?} u8 out at {i}: {} vs {b}", ou8[i]);
                    }
                }
            }
        }
    }
}
