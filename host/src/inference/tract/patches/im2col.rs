//! A faster drop-in for tract's int8 `Im2Col` into the K=4-inner panel layout.
//!
//! tract's quantized convolution gathers its input patches (`Im2Col`) straight into the
//! `PackedI8K4` panels its AMX / VNNI int8 kernels read: `panel[(k/4)·r·4 + m·4 + k%4]`. Its
//! writer takes one byte at a time, k-outer, so every byte is a separate store 4 bytes from the
//! last; on ResNet-50 int8 that gather was 34 % of the run (19.7 of 57 ms on one core), more
//! than the matrix products. This op builds, for each group of 4 k, the 4 shifted input rows
//! for all output positions (plain copies), then interleaves them 16 positions at a time
//! (SSE2 byte/word unpacks: 64 output bytes, one panel's k-group, per step).
//!
//! Scope: 2-D NCHW, one group, i8 input, `PackedI8K4` output — what tract wires for every
//! int8 convolution of our graphs; any other `Im2Col` is left to tract. The output is
//! byte-identical (unit test below), and tract's op is kept inside for its output facts.
//!
//! The buffer ends with [`AMX_SLACK`] zero bytes: tract's AMX int8 kernels read the activation
//! panel 64 K-bytes per step and so past the end of the last panel when K is not a multiple of
//! 64 (see `amx.rs`). The slack keeps that read inside our allocation, which makes every
//! matmul fed by this op safe on AMX.

use std::sync::Arc;

use rayon::prelude::*;
use tract_linalg::mmm::{EagerPackedInput, MMMInputValue, PackedExoticFact, PackedMatrixStorage};
use tract_linalg::multithread::{Executor, current_tract_executor};
use tract_linalg::pack::PackedI8K4;
use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::cnn::conv::Im2Col;
use tract_onnx::tract_core::ops::nn::DataFormat;

use super::ConvShape;

/// The geometry of one 2-D convolution's patch gather: the convolution's and the panels'.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Geometry {
    conv: ConvShape,
    /// Matmul depth, `c · kh · kw`.
    k: usize,
    /// Panel width of the kernel's activation packing.
    r: usize,
    align: usize,
}

impl std::ops::Deref for Geometry {
    type Target = ConvShape;
    fn deref(&self) -> &ConvShape {
        &self.conv
    }
}

/// The most bytes one image's panels may take here (a 1 GiB activation matrix is far beyond
/// any image model); a larger or overflowing geometry is left to tract.
const MAX_PANEL_BYTES: usize = 1 << 30;

impl Geometry {
    /// Whether every size this op computes from the geometry is non-zero and fits, checked:
    /// `k = c·kh·kw`, `n = oh·ow`, `panels · panel_bytes + AMX_SLACK`, the input `c·h·w`, and
    /// the strides and dilations it steps by.
    fn is_sound(&self) -> bool {
        let g = &self.conv;
        let dims = [g.c, g.h, g.w, g.kh, g.kw, g.oh, g.ow, g.stride[0], g.stride[1], g.dilation[0], g.dilation[1]];
        let k = g.c.checked_mul(g.kh).and_then(|v| v.checked_mul(g.kw));
        let n = g.oh.checked_mul(g.ow);
        let plane = g.c.checked_mul(g.h).and_then(|v| v.checked_mul(g.w));
        let total = k.zip(n).and_then(|(k, n)| {
            let panel = k.div_ceil(4).checked_mul(4)?.checked_mul(self.r)?;
            n.div_ceil(self.r).checked_mul(panel)?.checked_add(AMX_SLACK)
        });
        dims.iter().all(|&d| d > 0)
            && self.r > 0
            && self.align > 0
            && k == Some(self.k)
            && plane.is_some()
            && total.is_some_and(|t| t <= MAX_PANEL_BYTES)
    }

    fn k4(&self) -> usize {
        self.k.div_ceil(4) * 4
    }
    fn panel_bytes(&self) -> usize {
        self.k4() * self.r
    }
    fn panels(&self) -> usize {
        self.n().div_ceil(self.r)
    }
}

/// Bytes after the last panel: one 16-wide tile load of 64 K-bytes reads at most 1 KiB past it.
pub const AMX_SLACK: usize = 4096;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Im2ColI8K4 {
    geo: Geometry,
    inner: Im2Col,
}

/// The op to put in place of `node` if it is an `Im2Col` this op covers.
pub fn replacement(model: &TypedModel, node: &TypedNode) -> TractResult<Option<Im2ColI8K4>> {
    let Some(op) = node.op_as::<Im2Col>() else { return Ok(None) };
    Ok(geometry(model, node, op)?.map(|geo| Im2ColI8K4 { geo, inner: op.clone() }))
}

fn geometry(model: &TypedModel, node: &TypedNode, op: &Im2Col) -> TractResult<Option<Geometry>> {
    let input = model.outlet_fact(node.inputs[0])?;
    let Some(shape) = input.shape.as_concrete() else { return Ok(None) };
    let spec = &op.pool_spec;
    if input.datum_type != i8::datum_type()
        || op.group != 1
        || spec.data_format != DataFormat::NCHW
        || spec.kernel_shape.len() != 2
        || shape.len() != 4
    {
        return Ok(None);
    }
    let Some(packed) = node.outputs[0].fact.exotic_fact.as_ref().and_then(|f| f.downcast_ref::<PackedExoticFact>())
    else {
        return Ok(None);
    };
    let Some(format) = packed.format.downcast_ref::<PackedI8K4>() else { return Ok(None) };
    let Some(conv) = ConvShape::new(spec, shape[1], shape[2], shape[3]) else { return Ok(None) };
    let geo = Geometry { conv, k: packed.k, r: format.r, align: format.align };
    // The k order (channel-major, then kernel rows, then columns) is the one tract packs the
    // weights in; anything else about this node and we leave it to tract.
    if !geo.is_sound() || packed.mn.to_usize().ok() != Some(geo.n()) {
        return Ok(None);
    }
    Ok(Some(geo))
}

impl Op for Im2ColI8K4 {
    fn name(&self) -> StaticName {
        "Im2colI8K4".into()
    }
    fn info(&self) -> TractResult<Vec<String>> {
        let g = &self.geo;
        Ok(vec![format!("k:{} n:{} r:{} kernel:{}x{} stride:{:?}", g.k, g.n(), g.r, g.kh, g.kw, g.stride)])
    }
    op_as_typed_op!();
}

impl EvalOp for Im2ColI8K4 {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let g = &self.geo;
        let pad = match inputs.get(1) {
            Some(t) => t.cast_to_scalar::<i8>()?,
            None => 0,
        };
        let input = inputs[0].try_as_plain_ram()?;
        let input = input.as_slice::<i8>()?;
        let batch = input.len() / (g.c * g.h * g.w);
        let mut values: TVec<Box<dyn MMMInputValue>> = tvec!();
        for image in input.chunks_exact(g.c * g.h * g.w) {
            let size = g.panels() * g.panel_bytes();
            // SAFETY: the blob is uninitialised memory of `size + AMX_SLACK` bytes (checked not
            // to overflow by `Geometry::is_sound`), and every byte is written (zeroed) before
            // anything reads it.
            let mut blob = unsafe { Blob::new_for_size_and_align(size + AMX_SLACK, g.align) };
            blob.as_bytes_mut().fill(0);
            pack(g, image, pad, &mut blob.as_bytes_mut()[..size]);
            values.push(Box::new(EagerPackedInput {
                fact: PackedExoticFact {
                    format: Box::new(PackedI8K4 { r: g.r, align: g.align }),
                    k: g.k,
                    mn: g.n().to_dim(),
                },
                packed: Arc::new(blob),
                panel_bytes: g.panel_bytes(),
                mn: g.n(),
            }));
        }
        let output = PackedMatrixStorage::new_batched(&[batch, 1], values).into_tensor(i8::datum_type());
        Ok(tvec!(output.into_tvalue()))
    }
}

impl TypedOp for Im2ColI8K4 {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        self.inner.output_facts(inputs)
    }
    as_op!();
}

/// Writes one image's patches into `out` (zeroed, `panels · panel_bytes` long). Under tract's
/// multi-threaded executor (latency mode) the panels are split over its threads.
fn pack(g: &Geometry, image: &[i8], pad: i8, out: &mut [u8]) {
    let panels = g.panels();
    let threads = match current_tract_executor() {
        Executor::MultiThread(pool) => Some(pool),
        _ => None,
    };
    // Below ~64 KiB of output a rayon dispatch costs more than it saves.
    match threads.filter(|pool| pool.current_num_threads() > 1 && out.len() >= 64 << 10) {
        Some(pool) => {
            let per_chunk = panels.div_ceil(pool.current_num_threads() * 2);
            pool.install(|| {
                out.par_chunks_mut(per_chunk * g.panel_bytes()).enumerate().for_each(|(i, chunk)| {
                    let first = i * per_chunk;
                    pack_panels(g, image, pad, first..(first + per_chunk).min(panels), chunk)
                })
            })
        }
        None => pack_panels(g, image, pad, 0..panels, out),
    }
}

/// Writes `panels` of one image's patches into `out`, which holds exactly those panels.
fn pack_panels(g: &Geometry, image: &[i8], pad: i8, panels: std::ops::Range<usize>, out: &mut [u8]) {
    // The output positions these panels hold.
    let (n0, n1) = (panels.start * g.r, (panels.end * g.r).min(g.n()));
    let len = n1 - n0;
    let (khw, plane) = (g.kh * g.kw, g.h * g.w);
    // A 1×1, stride-1, unpadded conv reads each channel plane as it is: interleave from there.
    let pointwise = khw == 1 && g.stride == [1, 1] && g.pad_before == [0, 0] && (g.oh, g.ow) == (g.h, g.w);
    if pointwise {
        let zeros = vec![0i8; len];
        let row = |k: usize| if k < g.k { &image[k * plane + n0..k * plane + n1] } else { &zeros[..] };
        for kg in 0..g.k4() / 4 {
            let k = kg * 4;
            interleave_panels(g, kg, [row(k), row(k + 1), row(k + 2), row(k + 3)], out);
        }
        return;
    }
    let mut rows = vec![0i8; 4 * len];
    for kg in 0..g.k4() / 4 {
        // The 4 rows of this k-group: for each k, its input value at every output position.
        for (kk, row) in rows.chunks_exact_mut(len).enumerate() {
            let k = kg * 4 + kk;
            if k >= g.k {
                row.fill(0); // depth padding: must stay 0 whatever the input's zero point
                continue;
            }
            let (ci, ky, kx) = (k / khw, (k % khw) / g.kw, k % g.kw);
            let channel = &image[ci * plane..][..plane];
            let dy = (ky * g.dilation[0]) as isize - g.pad_before[0] as isize;
            let dx = (kx * g.dilation[1]) as isize - g.pad_before[1] as isize;
            // Output columns whose input column 0 <= ox·sx + dx < w.
            let sx = g.stride[1] as isize;
            let lo = ((-dx).max(0) + sx - 1) / sx;
            let hi = ((g.w as isize - dx).max(0) + sx - 1) / sx;
            let (lo, hi) = ((lo as usize).min(g.ow), (hi as usize).min(g.ow));
            for oy in n0 / g.ow..n1.div_ceil(g.ow) {
                // This output row's columns [a, b) that fall in these panels.
                let (a, b) = (n0.saturating_sub(oy * g.ow), (n1 - oy * g.ow).min(g.ow));
                let out_row = &mut row[oy * g.ow + a - n0..oy * g.ow + b - n0];
                let y = (oy * g.stride[0]) as isize + dy;
                let (vlo, vhi) = (lo.clamp(a, b), hi.clamp(a, b));
                if y < 0 || y >= g.h as isize || vlo >= vhi {
                    out_row.fill(pad);
                    continue;
                }
                let src = &channel[y as usize * g.w..][..g.w];
                out_row[..vlo - a].fill(pad);
                out_row[vhi - a..].fill(pad);
                let x0 = (vlo as isize * sx + dx) as usize;
                let valid = &mut out_row[vlo - a..vhi - a];
                if sx == 1 {
                    valid.copy_from_slice(&src[x0..x0 + valid.len()]);
                } else if sx == 2 {
                    gather_stride2(&src[x0..], valid);
                } else {
                    for (o, x) in valid.iter_mut().zip((x0..).step_by(sx as usize)) {
                        *o = src[x];
                    }
                }
            }
        }
        let (a, rest) = rows.split_at(len);
        let (b, rest) = rest.split_at(len);
        let (c, d) = rest.split_at(len);
        interleave_panels(g, kg, [a, b, c, d], out);
    }
}

/// Writes k-group `kg` of the panels in `out` from its 4 rows (one value per output position).
fn interleave_panels(g: &Geometry, kg: usize, [a, b, c, d]: [&[i8]; 4], out: &mut [u8]) {
    for m0 in (0..a.len()).step_by(g.r) {
        let width = g.r.min(a.len() - m0);
        let dst = &mut out[m0 / g.r * g.panel_bytes() + kg * g.r * 4..][..width * 4];
        interleave4(&a[m0..m0 + width], &b[m0..m0 + width], &c[m0..m0 + width], &d[m0..m0 + width], dst);
    }
}

/// `dst[i] = src[2i]` (stride-2 convolutions, e.g. the ResNet stem). `src` must hold
/// `2·dst.len() − 1` values at least.
fn gather_stride2(src: &[i8], dst: &mut [i8]) {
    assert!(dst.is_empty() || src.len() > 2 * (dst.len() - 1), "gather_stride2: src too short");
    // Where the SIMD loop stopped; it runs only on x86_64.
    #[cfg_attr(not(target_arch = "x86_64"), allow(unused_mut))]
    let mut i = 0;
    #[cfg(target_arch = "x86_64")]
    while i + 16 <= dst.len() && 2 * i + 32 <= src.len() {
        // SSE2: keep the low byte of each 16-bit lane of 32 input bytes, pack to 16.
        use std::arch::x86_64::*;
        let (from, to) = (&src[2 * i..2 * i + 32], &mut dst[i..i + 16]);
        // SAFETY: SSE2 is part of x86_64; the loads read `from`'s 32 bytes and the store writes
        // `to`'s 16, both slices of exactly that length (bounds-checked above).
        unsafe {
            let low_bytes = _mm_set1_epi16(0x00ff);
            let a = _mm_and_si128(_mm_loadu_si128(from.as_ptr() as *const __m128i), low_bytes);
            let b = _mm_and_si128(_mm_loadu_si128(from[16..].as_ptr() as *const __m128i), low_bytes);
            _mm_storeu_si128(to.as_mut_ptr() as *mut __m128i, _mm_packus_epi16(a, b));
        }
        i += 16;
    }
    for (j, d) in dst.iter_mut().enumerate().skip(i) {
        *d = src[2 * j];
    }
}

/// `dst[4i..4i+4] = [a[i], b[i], c[i], d[i]]`; the four rows have one length and `dst` holds
/// four times it.
fn interleave4(a: &[i8], b: &[i8], c: &[i8], d: &[i8], dst: &mut [u8]) {
    let n = a.len();
    assert!(b.len() == n && c.len() == n && d.len() == n && dst.len() >= 4 * n, "interleave4: lengths");
    // Where the SIMD loop stopped; it runs only on x86_64.
    #[cfg_attr(not(target_arch = "x86_64"), allow(unused_mut))]
    let mut i = 0;
    #[cfg(target_arch = "x86_64")]
    while i + 16 <= n {
        // SSE2 is part of x86_64: two unpack rounds turn 4 × 16 bytes into 64 interleaved ones.
        use std::arch::x86_64::*;
        let rows = [&a[i..i + 16], &b[i..i + 16], &c[i..i + 16], &d[i..i + 16]];
        let out = &mut dst[4 * i..4 * i + 64];
        // SAFETY: SSE2 is part of x86_64; each load reads one of `rows`' 16-byte slices and the
        // four stores write `out`'s 64 bytes, 16 at a time (all bounds-checked above).
        unsafe {
            let load = |s: &[i8]| _mm_loadu_si128(s.as_ptr() as *const __m128i);
            let (va, vb, vc, vd) = (load(rows[0]), load(rows[1]), load(rows[2]), load(rows[3]));
            let (ab_lo, ab_hi) = (_mm_unpacklo_epi8(va, vb), _mm_unpackhi_epi8(va, vb));
            let (cd_lo, cd_hi) = (_mm_unpacklo_epi8(vc, vd), _mm_unpackhi_epi8(vc, vd));
            let out = out.as_mut_ptr() as *mut __m128i;
            _mm_storeu_si128(out, _mm_unpacklo_epi16(ab_lo, cd_lo));
            _mm_storeu_si128(out.add(1), _mm_unpackhi_epi16(ab_lo, cd_lo));
            _mm_storeu_si128(out.add(2), _mm_unpacklo_epi16(ab_hi, cd_hi));
            _mm_storeu_si128(out.add(3), _mm_unpackhi_epi16(ab_hi, cd_hi));
        }
        i += 16;
    }
    for j in i..n {
        dst[4 * j..4 * j + 4].copy_from_slice(&[a[j] as u8, b[j] as u8, c[j] as u8, d[j] as u8]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(n: usize, seed: u8) -> Vec<i8> {
        (0..n).map(|i| (i as u8).wrapping_mul(37).wrapping_add(seed) as i8).collect()
    }

    /// The SIMD helpers against their definition on every length 0..40 (below, at and across
    /// the 16-wide steps), at every offset into a longer buffer.
    #[test]
    fn the_simd_helpers_match_their_scalar_definition_on_every_short_length() {
        for n in 0..40 {
            let (a, b, c, d) = (bytes(n, 1), bytes(n, 2), bytes(n, 3), bytes(n, 4));
            let mut dst = vec![0xAAu8; 4 * n + 3];
            interleave4(&a, &b, &c, &d, &mut dst);
            for i in 0..n {
                assert_eq!(dst[4 * i..4 * i + 4], [a[i] as u8, b[i] as u8, c[i] as u8, d[i] as u8], "n {n} i {i}");
            }
            assert_eq!(dst[4 * n..], [0xAA; 3], "n {n}: nothing written past 4n");
            for offset in 0..3 {
                let src = bytes(2 * n + offset + 1, 9);
                let mut out = vec![0i8; n];
                gather_stride2(&src[offset..], &mut out);
                assert!(out.iter().enumerate().all(|(i, &v)| v == src[offset + 2 * i]), "n {n} offset {offset}");
            }
        }
    }

    #[test]
    #[should_panic(expected = "interleave4: lengths")]
    fn interleave4_refuses_rows_of_different_lengths() {
        interleave4(&bytes(32, 0), &bytes(31, 0), &bytes(32, 0), &bytes(32, 0), &mut [0; 128]);
    }

    #[test]
    fn zero_overflowing_or_oversized_geometries_are_left_to_tract() {
        let conv = ConvShape {
            c: 64,
            h: 56,
            w: 56,
            kh: 3,
            kw: 3,
            stride: [1, 1],
            dilation: [1, 1],
            pad_before: [1, 1],
            oh: 56,
            ow: 56,
        };
        let geo = |conv: ConvShape, k: usize| Geometry { conv, k, r: 16, align: 64 };
        assert!(geo(conv.clone(), 576).is_sound());
        assert!(!geo(conv.clone(), 575).is_sound(), "k must be c·kh·kw");
        assert!(!geo(ConvShape { stride: [0, 1], ..conv.clone() }, 576).is_sound());
        assert!(!geo(ConvShape { oh: 0, ..conv.clone() }, 576).is_sound());
        let huge = ConvShape { oh: 1 << 40, ow: 1 << 40, ..conv.clone() };
        assert!(!geo(huge, 576).is_sound(), "n overflows");
        let big = ConvShape { oh: 100_000, ow: 100_000, ..conv.clone() };
        assert!(!geo(big, 576).is_sound(), "over MAX_PANEL_BYTES");
        let wide = ConvShape { c: usize::MAX / 2, ..conv };
        assert!(!geo(wide, 576).is_sound(), "k overflows");
    }

    /// What the comparison saw of a model's `Im2Col` nodes.
    struct Coverage {
        /// Compared byte for byte with tract's panels.
        compared: Vec<Geometry>,
        /// Left to tract because it packs them for kernels that do not read `PackedI8K4`
        /// panels (x86 without AVX-512 VNNI or AMX, ARM): the packing's name for each.
        left_to_tract: Vec<String>,
    }

    /// Runs every `Im2Col` node of `model` through tract's op and ours (serially and split
    /// over 3 threads) on random input with a non-zero pad value and asserts the panels are
    /// byte for byte the same. A node tract packs for another kernel family is left to tract,
    /// as the patch leaves it; one packed as `PackedI8K4` must never be declined.
    fn assert_identical_to_tract(model: &TypedModel, what: &str) -> Coverage {
        let mut compared = Vec::new();
        let mut left_to_tract = Vec::new();
        let mut state = 0x9e3779b97f4a7c15u64;
        for node in &model.nodes {
            let Some(op) = node.op_as::<Im2Col>() else { continue };
            let Some(geo) = geometry(model, node, op).unwrap() else {
                let packed =
                    node.outputs[0].fact.exotic_fact.as_ref().and_then(|f| f.downcast_ref::<PackedExoticFact>());
                let format = packed.map(|p| &p.format).expect("tract's im2col output is packed");
                assert!(
                    format.downcast_ref::<PackedI8K4>().is_none(),
                    "{what} {}: packed as PackedI8K4, yet our op declined it: {op:?}",
                    node.name
                );
                left_to_tract.push(format!("{format:?}"));
                continue;
            };
            let shape = model.outlet_fact(node.inputs[0]).unwrap().shape.as_concrete().unwrap().to_vec();
            let data: Vec<i8> = (0..shape.iter().product::<usize>())
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state as i8
                })
                .collect();
            let mut inputs: TVec<TValue> = tvec!(Tensor::from_shape(&shape, &data).unwrap().into_tvalue());
            if node.inputs.len() > 1 {
                inputs.push(tensor0(-7i8).into_tvalue());
            }
            let theirs = op.eval_out_of_plan(inputs.clone()).unwrap().unwrap();
            let ours = Im2ColI8K4 { geo: geo.clone(), inner: op.clone() };
            let bytes = |t: &TValue| -> Vec<u8> {
                let storage = t.try_storage_as::<PackedMatrixStorage>().unwrap();
                let value = storage.value().downcast_ref::<EagerPackedInput>().unwrap();
                let size = value.panel_bytes * value.mn.div_ceil(geo.r);
                let (panels, slack) = value.packed.as_bytes().split_at(size.min(value.packed.len()));
                assert!(slack.iter().all(|b| *b == 0), "slack must be zeros");
                panels.to_vec()
            };
            let serial = ours.eval_out_of_plan(inputs.clone()).unwrap().unwrap();
            assert_eq!(bytes(&theirs[0]), bytes(&serial[0]), "{what} {}: {:?}", node.name, op);
            // Split over 3 threads, panel ranges start and end mid-row.
            let parallel = tract_linalg::multithread::multithread_tract_scope(Executor::multithread(3), || {
                ours.eval_out_of_plan(inputs.clone()).unwrap().unwrap()
            });
            assert_eq!(bytes(&theirs[0]), bytes(&parallel[0]), "{what} {} (3 threads)", node.name);
            compared.push(geo);
        }
        Coverage { compared, left_to_tract }
    }

    /// On a CPU where tract packs int8 im2col for another kernel family, says so: the op is
    /// not used there, so there is nothing of ours to compare. True when that is the case.
    fn left_to_tract_on_this_cpu(coverage: &Coverage, what: &str) -> bool {
        if !coverage.compared.is_empty() {
            return false;
        }
        assert!(!coverage.left_to_tract.is_empty(), "{what}: tract wired no Im2Col at all");
        println!(
            "{what}: tract packs int8 im2col as {} on this CPU, not PackedI8K4 (the AVX-512 VNNI / AMX \
             layout our op writes): the patch leaves all {} to tract, nothing to compare",
            coverage.left_to_tract[0],
            coverage.left_to_tract.len()
        );
        true
    }

    /// Every `Im2Col` of the int8 default model (3×3 stride 1 and 2, the stem with k = 27,
    /// 1×1 with and without stride, n not a multiple of r), on random input with a non-zero
    /// pad value: our op's panels are byte for byte tract's.
    #[test]
    fn matches_tracts_im2col_on_every_geometry_of_the_int8_model() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/shapes-int8/1/model.onnx");
        let model = tract_onnx::onnx()
            .model_for_path(&path)
            .unwrap()
            .with_input_fact(0, f32::fact([1, 3, 224, 224]).into())
            .unwrap()
            .into_optimized()
            .unwrap();
        let coverage = assert_identical_to_tract(&model, "shapes-int8");
        if left_to_tract_on_this_cpu(&coverage, "shapes-int8") {
            return;
        }
        let seen: std::collections::HashSet<_> = coverage
            .compared
            .iter()
            .map(|g| (g.kh, g.stride[0], g.k.is_multiple_of(4), g.n().is_multiple_of(g.r)))
            .collect();
        assert!(seen.len() >= 4, "too few distinct geometries covered: {seen:?}");
    }

    /// One int8 convolution (`QuantizeLinear → QLinearConv → DequantizeLinear`, per-tensor
    /// scales, as `quantize.py` writes them) of `c → 8` channels on a `c × h × w` input, as an
    /// ONNX graph built in memory.
    fn qconv(
        c: usize,
        h: usize,
        w: usize,
        kernel: [usize; 2],
        stride: [usize; 2],
        dilation: [usize; 2],
        pad: usize,
    ) -> TypedModel {
        use tract_onnx::pb::{self, attribute_proto::AttributeType, tensor_proto::DataType};
        let tensor = |name: &str, dims: &[usize], data_type: DataType, raw: Vec<u8>| pb::TensorProto {
            name: name.into(),
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type: data_type as i32,
            raw_data: raw,
            ..Default::default()
        };
        let ints = |name: &str, values: Vec<usize>| pb::AttributeProto {
            name: name.into(),
            r#type: AttributeType::Ints as i32,
            ints: values.into_iter().map(|v| v as i64).collect(),
            ..Default::default()
        };
        let node = |op: &str, inputs: &[&str], output: &str, attribute: Vec<pb::AttributeProto>| pb::NodeProto {
            op_type: op.into(),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![output.into()],
            attribute,
            ..Default::default()
        };
        let weights: Vec<u8> = (0..8 * c * kernel[0] * kernel[1]).map(|i| (i * 29 % 251) as u8).collect();
        let graph = pb::GraphProto {
            node: vec![
                node("QuantizeLinear", &["x", "xs", "xz"], "xq", vec![]),
                node(
                    "QLinearConv",
                    &["xq", "xs", "xz", "w", "ws", "wz", "ys", "yz"],
                    "yq",
                    vec![
                        ints("kernel_shape", kernel.to_vec()),
                        ints("strides", stride.to_vec()),
                        ints("dilations", dilation.to_vec()),
                        ints("pads", vec![pad; 4]),
                    ],
                ),
                node("DequantizeLinear", &["yq", "ys", "yz"], "y", vec![]),
            ],
            initializer: vec![
                tensor("xs", &[], DataType::Float, 0.05f32.to_le_bytes().to_vec()),
                tensor("xz", &[], DataType::Int8, vec![3]),
                tensor("w", &[8, c, kernel[0], kernel[1]], DataType::Int8, weights),
                tensor("ws", &[], DataType::Float, 0.01f32.to_le_bytes().to_vec()),
                tensor("wz", &[], DataType::Int8, vec![0]),
                tensor("ys", &[], DataType::Float, 0.2f32.to_le_bytes().to_vec()),
                tensor("yz", &[], DataType::Int8, vec![0]),
            ],
            input: vec![pb::ValueInfoProto {
                name: "x".into(),
                r#type: Some(pb::TypeProto {
                    value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                        elem_type: DataType::Float as i32,
                        shape: Some(pb::TensorShapeProto {
                            dim: [1, c, h, w]
                                .iter()
                                .map(|&d| pb::tensor_shape_proto::Dimension {
                                    value: Some(pb::tensor_shape_proto::dimension::Value::DimValue(d as i64)),
                                    ..Default::default()
                                })
                                .collect(),
                        }),
                    })),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            output: vec![pb::ValueInfoProto { name: "y".into(), ..Default::default() }],
            ..Default::default()
        };
        let proto = pb::ModelProto {
            ir_version: 7,
            opset_import: vec![pb::OperatorSetIdProto { domain: String::new(), version: 13 }],
            graph: Some(graph),
            ..Default::default()
        };
        tract_onnx::onnx()
            .model_for_proto_model(&proto)
            .unwrap()
            .with_input_fact(0, f32::fact([1, c, h, w]).into())
            .unwrap()
            .into_optimized()
            .unwrap()
    }

    /// What, then `c, h, w`, kernel, stride, dilation, padding (every side).
    type ConvCase = (&'static str, usize, usize, usize, [usize; 2], [usize; 2], [usize; 2], usize);

    /// Geometries the default model lacks, built one convolution at a time: 1×1 (with the
    /// dilation `quantize.py` gives it to stay on this path) at stride 1 and 2, stride 3,
    /// dilation with k > 1, a kernel wider than its (padded) input, odd channel counts and
    /// sizes, inputs not 224 wide. Each must match tract's own im2col byte for byte, or be one
    /// tract does not wire through `Im2Col` at all (then there is nothing of ours to check).
    #[test]
    fn matches_tracts_im2col_on_synthetic_geometries() {
        let cases: [ConvCase; 8] = [
            ("1x1 stride 1", 16, 14, 14, [1, 1], [1, 1], [3, 3], 0),
            ("1x1 stride 2", 16, 15, 15, [1, 1], [2, 2], [3, 3], 0),
            ("3x3 stride 3", 8, 20, 17, [3, 3], [3, 3], [1, 1], 1),
            ("3x3 dilation 2", 6, 19, 23, [3, 3], [1, 1], [2, 2], 2),
            ("7x7 kernel on 5x5", 3, 5, 5, [7, 7], [1, 1], [1, 1], 3),
            ("odd channels and sizes", 5, 13, 17, [3, 3], [1, 1], [1, 1], 1),
            ("5x5 stride 2 on 31x45", 4, 31, 45, [5, 5], [2, 2], [1, 1], 2),
            ("1x3 on 9x33", 7, 9, 33, [1, 3], [1, 2], [1, 1], 1),
        ];
        let (mut compared, mut left) = (0, 0);
        for (what, c, h, w, kernel, stride, dilation, pad) in cases {
            let model = qconv(c, h, w, kernel, stride, dilation, pad);
            let coverage = assert_identical_to_tract(&model, what);
            if left_to_tract_on_this_cpu(&coverage, what) {
                left += 1;
                continue;
            }
            println!("{what}: {} im2col compared", coverage.compared.len());
            compared += coverage.compared.len();
        }
        if left == cases.len() {
            return;
        }
        assert!(compared >= 6, "tract wired too few of the synthetic convolutions through Im2Col: {compared}");
    }
}
