//! int8 convolutions (one group) on our own AVX-512 VNNI GEMM, requantized in its epilogue.
//!
//! tract 0.23.9 runs a quantized convolution as an im2col op writing its K=4-inner panels and a
//! 16×16-tile VNNI matmul; measured per ResNet-50 shape (one thread) its matmuls reach 105–240
//! GOP/s, and with per-channel weight scales it requantizes in five separate passes (the int8
//! graph then ran slower than fp32, which is why `quantize.py` made per-tensor graphs for tract).
//! Here, as in [`super::sgemm`] for fp32:
//! - the weights are packed once at load into 8-row panels, 4 bytes (k values) per row per step;
//! - the image's values under the kernel taps are gathered, per block of output columns, straight
//!   into 48-column panels of the same K=4-inner layout (no im2col tensor), as unsigned bytes
//!   (an i8 input is shifted by 128, its zero point with it);
//! - an 8 × 48 tile (24 `vpdpbusd` accumulators) sums the whole depth in registers, then adds
//!   `bias − x0·Σw` per row, multiplies by `x_scale · w_scale[row] / y_scale` (per-tensor or
//!   per-channel), rounds half to even, adds the output zero point and saturates: onnxruntime's
//!   QLinearConv arithmetic, in one pass, whatever the weight scales.
//!
//! The same kernel alone (no gather), throwaway benchmark on ResNet-50's shapes: 380–435 GOP/s
//! where tract's reached 200–240.

use std::arch::x86_64::*;
use std::cell::RefCell;
use std::ops::Range;

use tract_linalg::multithread::{Executor, current_tract_executor};
use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;

use super::ConvShape;

/// Output rows (channels) per tile: one broadcast of 4 weight bytes each.
const MR: usize = 8;
/// Columns per 512-bit vector (one i32 lane each, holding 4 k values as bytes).
const LANES: usize = 16;
/// Columns per tile: three vectors.
const NR: usize = 3 * LANES;
/// A block of columns gathered at once holds at most this many bytes (all of K): it stays in the
/// 2 MiB L2 while every row panel of weights passes over it.
const BLOCK_BYTES: usize = 1 << 20;

/// Whether this CPU runs the kernel (checked once per process by std).
pub fn available() -> bool {
    is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vl")
        && is_x86_feature_detected!("avx512vbmi")
        && is_x86_feature_detected!("avx512vnni")
}

#[derive(Debug, Clone, PartialEq)]
pub struct QGemmConv {
    geo: ConvShape,
    /// Output channels.
    m: usize,
    /// The weights, `MR`-row panels of `k4 / 4` steps of `MR × 4` bytes (rows past `m` and
    /// depths past `K` are zeros).
    packed: Arc<Vec<i8>>,
    /// Per output channel: `bias − u0 · Σ_k w`, with `u0` the input's zero point as an unsigned
    /// byte (what the kernel's accumulator lacks for `Σ (u − u0) · w`).
    offset: Arc<Vec<i32>>,
    /// Per output channel: `x_scale · w_scale / y_scale`.
    multiplier: Arc<Vec<f32>>,
    /// The output's zero point.
    y0: i32,
    /// The input is i8 (its bytes are shifted by 128 into the unsigned operand), else u8.
    signed_input: bool,
    /// The input's zero point as it is stored (i8 or u8 bits): the padding value.
    pad: u8,
    out_dt: DatumType,
    output_shape: TVec<usize>,
}

impl Eq for QGemmConv {}

/// `Some(op)` for a one-group 2-D convolution of an 8-bit input by a constant symmetric int8
/// kernel (per-tensor or per-channel scales) to an 8-bit output, batch 1, NCHW/CHW, on a CPU
/// with AVX-512 VNNI.
pub fn replacement(model: &TypedModel, node: &TypedNode) -> TractResult<Option<QGemmConv>> {
    let Some((conv, input, [c, h, w])) = super::batch1_conv(model, node, 9)? else { return Ok(None) };
    if conv.q_params.is_none() || conv.group != 1 || !available() {
        return Ok(None);
    }
    let Some(consts) =
        node.inputs[1..].iter().map(|i| model.outlet_fact(*i).ok()?.konst.clone()).collect::<Option<Vec<_>>>()
    else {
        return Ok(None);
    };
    let [kernel, rest @ ..] = &consts[..] else { return Ok(None) };
    let out_fact = model.outlet_fact(OutletId::new(node.id, 0))?;
    let Some(output_shape) = out_fact.shape.as_concrete().map(TVec::from) else { return Ok(None) };
    let is_8bit = |dt: DatumType| matches!(dt.unquantized(), DatumType::I8 | DatumType::U8);
    if !is_8bit(input.datum_type) || !is_8bit(out_fact.datum_type) || kernel.datum_type().unquantized() != DatumType::I8
    {
        return Ok(None);
    }
    let &[m, kc, kh, kw] = kernel.shape() else { return Ok(None) };
    let Some(geo) = ConvShape::new(&conv.pool_spec, c, h, w) else { return Ok(None) };
    if kc != c || [geo.kh, geo.kw] != [kh, kw] || geo.n() == 0 || output_shape.iter().product::<usize>() != m * geo.n()
    {
        return Ok(None);
    }
    let Some(super::QuantParams { x0, x_scale, y0, y_scale, k0, k_scale, bias }) = super::QuantParams::new(rest, m)
    else {
        return Ok(None);
    };
    // Symmetric weights only (both of our quantizers make them): `w − k0` must stay an i8.
    if k0.iter().any(|z| *z != 0.0) {
        return Ok(None);
    }
    let Some(weights) = kernel.try_as_plain_ram().ok().and_then(|v| v.as_slice::<i8>().ok().map(<[i8]>::to_vec)) else {
        return Ok(None);
    };
    let k = c * kh * kw;
    let signed_input = input.datum_type.unquantized() == DatumType::I8;
    let u0 = x0 as i32 + if signed_input { 128 } else { 0 };
    let offset: Vec<i32> = (0..m)
        .map(|r| bias[r].round() as i32 - u0 * weights[r * k..(r + 1) * k].iter().map(|w| *w as i32).sum::<i32>())
        .collect();
    let multiplier: Vec<f32> = (0..m).map(|r| (x_scale * k_scale[r] / y_scale) as f32).collect();
    Ok(Some(QGemmConv {
        geo,
        m,
        packed: Arc::new(pack_weights(&weights, m, k)),
        offset: Arc::new(offset),
        multiplier: Arc::new(multiplier),
        y0: y0 as i32,
        signed_input,
        pad: x0 as i32 as u8,
        out_dt: out_fact.datum_type,
        output_shape,
    }))
}

/// Depth rounded up to whole steps of 4.
fn k4(k: usize) -> usize {
    k.div_ceil(4) * 4
}

/// Packs the row-major `m × k` weights into `MR`-row panels of 4-byte steps.
fn pack_weights(weights: &[i8], m: usize, k: usize) -> Vec<i8> {
    let k4 = k4(k);
    let mut packed = vec![0i8; m.div_ceil(MR) * MR * k4];
    for (p, panel) in packed.chunks_exact_mut(MR * k4).enumerate() {
        for (step, quad) in panel.chunks_exact_mut(MR * 4).enumerate() {
            for (r, row) in quad.chunks_exact_mut(4).enumerate() {
                let row_index = p * MR + r;
                for (i, v) in row.iter_mut().enumerate() {
                    let kk = step * 4 + i;
                    if row_index < m && kk < k {
                        *v = weights[row_index * k + kk];
                    }
                }
            }
        }
    }
    packed
}

impl QGemmConv {
    fn k(&self) -> usize {
        self.geo.c * self.geo.kh * self.geo.kw
    }

    /// Output rows `channels` (its start a multiple of `MR`) by output columns `cols`, on this
    /// thread.
    fn band(&self, image: &[u8], dst: &Dst, channels: Range<usize>, cols: Range<usize>, scratch: &mut Scratch) {
        let g = &self.geo;
        let (n, k4) = (g.n(), k4(self.k()));
        assert!(image.len() == g.c * g.h * g.w && dst.len == self.m * n);
        assert!(channels.start.is_multiple_of(MR) && channels.end <= self.m && cols.end <= n);
        let panel_bytes = k4 * NR;
        let block_cols = (BLOCK_BYTES / k4 / NR).max(1) * NR;
        let Scratch { block, rows } = scratch;
        block.resize(block_cols.div_ceil(NR) * panel_bytes, 0);
        for c0 in cols.clone().step_by(block_cols) {
            let width = block_cols.min(cols.end - c0);
            gather(self, image, c0..c0 + width, block, rows);
            for row in channels.clone().step_by(MR) {
                let weights = &self.packed[row / MR * MR * k4..][..MR * k4];
                for (p, panel) in block.chunks_exact(panel_bytes).take(width.div_ceil(NR)).enumerate() {
                    let j0 = c0 + p * NR;
                    let tile = Tile {
                        steps: k4 / 4,
                        a: weights.as_ptr(),
                        b: panel.as_ptr(),
                        rows: MR.min(channels.end - row),
                        width: NR.min(c0 + width - j0),
                        offset: self.offset[row..].as_ptr(),
                        multiplier: self.multiplier[row..].as_ptr(),
                        y0: self.y0,
                        signed_output: self.out_dt.unquantized() == DatumType::I8,
                        // SAFETY: row < m and j0 < n: inside `dst` (asserted above).
                        c: unsafe { dst.ptr.add(row * n + j0) },
                        ldc: n,
                    };
                    // SAFETY: `a` holds MR × k4 bytes, `b` k4 × NR, `offset`/`multiplier` at
                    // least `rows` values, `c` `rows` rows of `width` bytes at stride n (all
                    // checked above); no other thread writes these outputs (see `split`);
                    // `available()` held when the op was made.
                    unsafe {
                        match tile.width {
                            1 => narrow_kernel::<1>(&tile),
                            2 => narrow_kernel::<2>(&tile),
                            3 => narrow_kernel::<3>(&tile),
                            4 => narrow_kernel::<4>(&tile),
                            w if w <= LANES => tile_kernel::<1>(&tile),
                            w if w <= 2 * LANES => tile_kernel::<2>(&tile),
                            _ => tile_kernel::<3>(&tile),
                        }
                    }
                }
            }
        }
    }

    /// Splits the convolution over `threads`, in more pieces than threads so that a pool
    /// thread that wakes late still finds work (an int8 convolution of ResNet-50's later stages
    /// takes 0.3–1 ms: about what waking a sleeping worker took here, so with one piece per
    /// thread the first one ran both). By chunks of whole column panels when there are enough
    /// (each chunk gathers only its own columns), else by chunks of output channels (each
    /// gathers every column: the gather is a large share of an int8 convolution).
    fn split(&self, image: &[u8], dst: &Dst, threads: usize) {
        use rayon::prelude::*;
        let g = &self.geo;
        let run = |channels: Range<usize>, cols: Range<usize>| {
            SCRATCH.with_borrow_mut(|scratch| self.band(image, dst, channels, cols, scratch))
        };
        let panels = g.n() / NR;
        if panels >= 2 * threads {
            // One panel per piece (the last takes the tail of columns).
            (0..panels).into_par_iter().for_each(|p| {
                let end = if p + 1 == panels { g.n() } else { (p + 1) * NR };
                run(0..self.m, p * NR..end)
            });
        } else {
            let pieces = 2 * threads;
            let bound = |i: usize| (self.m.div_ceil(MR) * i / pieces * MR).min(self.m);
            (0..pieces).into_par_iter().for_each(|i| run(bound(i)..bound(i + 1), 0..g.n()));
        }
    }
}

/// A thread's working memory: the gathered column block and the 4 rows of one step.
#[derive(Default)]
struct Scratch {
    block: Vec<u8>,
    rows: Vec<u8>,
}

thread_local! {
    /// Reused by every int8 convolution on this thread.
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// The output buffer, shared by the threads that each write their own part of it.
struct Dst {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: `QGemmConv::split` gives every thread a disjoint set of output elements, and the
// buffer outlives the parallel section.
unsafe impl Send for Dst {}
unsafe impl Sync for Dst {}

/// Fills `block` with the panels of output columns `cols`: for each `NR`-column panel, `k4 / 4`
/// steps of `NR × 4` bytes, each 16-column vector holding 4 consecutive k values per column, as
/// unsigned bytes (an i8 input shifted by 128). Padding reads as the input's zero point; depth
/// past K as 0 (its weights are 0). Each k's row is gathered for the whole block at once (per
/// panel, the call overhead showed: ~40 000 calls on ResNet-50's stem alone), then interleaved.
fn gather(op: &QGemmConv, image: &[u8], cols: Range<usize>, block: &mut [u8], rows: &mut Vec<u8>) {
    let g = &op.geo;
    let (k, k4, width, n) = (op.k(), k4(op.k()), cols.len(), g.n());
    let panel_bytes = k4 * NR;
    rows.resize(4 * width, 0);
    let pointwise = g.is_pointwise();
    for step in 0..k4 / 4 {
        for (i, row) in rows.chunks_exact_mut(width).enumerate() {
            let kk = step * 4 + i;
            match kk < k {
                // A pointwise convolution's input is the matrix: its rows are read in place.
                true if pointwise => {}
                // SAFETY: `available()` (AVX-512 VBMI included) held when the op was made.
                true => unsafe { gather_row(g, image, kk, cols.start, row, op.pad) },
                false => row.fill(0),
            }
        }
        let row = |i: usize| -> &[u8] {
            let kk = step * 4 + i;
            if pointwise && kk < k { &image[kk * n + cols.start..][..width] } else { &rows[i * width..][..width] }
        };
        let four = [row(0), row(1), row(2), row(3)];
        for p in 0..width.div_ceil(NR) {
            let (j, w) = (p * NR, NR.min(width - p * NR));
            let out = &mut block[p * panel_bytes + step * NR * 4..][..NR * 4];
            interleave(four.map(|r| &r[j..j + w]), out, op.signed_input);
        }
    }
}

/// `dst` = row `kk` of the convolution's im2col matrix from column `j0`: the input byte under
/// kernel tap `kk` = (channel, ki, kj) for output positions `j0..j0 + dst.len()`, `pad` in the
/// padding. Output rows are 7–112 bytes here, so the pieces are moved by masked 64-byte vectors
/// (calls to memset/memcpy showed in `perf annotate`), stride 2 by a byte permute.
#[target_feature(enable = "avx512f,avx512bw,avx512vbmi")]
fn gather_row(g: &ConvShape, image: &[u8], kk: usize, j0: usize, dst: &mut [u8], pad: u8) {
    let plane_len = g.h * g.w;
    let super::Tap { channel, dy, dx, inside } = g.tap(kk);
    let plane = &image[channel * plane_len..(channel + 1) * plane_len];
    let (ox_lo, ox_hi) = (inside.start, inside.end);
    let s = g.stride[1] as isize;
    let (mut oy, mut ox) = (j0 / g.ow, j0 % g.ow);
    let mut rest = dst;
    while !rest.is_empty() {
        let len = (g.ow - ox).min(rest.len());
        let (seg, tail) = rest.split_at_mut(len);
        let y = (oy * g.stride[0]) as isize + dy;
        let (lo, hi) = (ox_lo.max(ox), ox_hi.min(ox + len));
        if y < 0 || y >= g.h as isize || lo >= hi {
            fill(seg, pad);
        } else {
            let line = &plane[y as usize * g.w..(y as usize + 1) * g.w];
            let (before, inside) = seg.split_at_mut(lo - ox);
            let (inside, after) = inside.split_at_mut(hi - lo);
            fill(before, pad);
            fill(after, pad);
            let x0 = (lo as isize * s + dx) as usize;
            copy(inside, &line[x0..], g.stride[1]);
        }
        rest = tail;
        (oy, ox) = (oy + 1, 0);
    }
}

/// The first `len` of 64 byte lanes.
fn byte_lanes(len: usize) -> __mmask64 {
    if len >= 64 { !0 } else { (1u64 << len) - 1 }
}

/// `dst.fill(value)` by masked vectors.
#[target_feature(enable = "avx512f,avx512bw")]
fn fill(dst: &mut [u8], value: u8) {
    let v = _mm512_set1_epi8(value as i8);
    for chunk in dst.chunks_mut(64) {
        // SAFETY: the mask covers `chunk` only.
        unsafe { _mm512_mask_storeu_epi8(chunk.as_mut_ptr() as *mut i8, byte_lanes(chunk.len()), v) };
    }
}

/// `dst[i] = src[i·step]`: stride 1 and 2 by masked vectors (stride 2 by a two-register byte
/// permute), other strides one byte at a time.
#[target_feature(enable = "avx512f,avx512bw,avx512vbmi")]
fn copy(dst: &mut [u8], src: &[u8], step: usize) {
    let len = dst.len();
    assert!(len == 0 || (len - 1) * step < src.len(), "copy: source too short");
    let (d, p) = (dst.as_mut_ptr() as *mut i8, src.as_ptr() as *const i8);
    let mut i = 0;
    // SAFETY (both): every store is masked to `dst`, every load to `src` (masked loads do not
    // fault on the lanes they leave out).
    match step {
        1 => unsafe {
            while i < len {
                let m = byte_lanes(len - i);
                _mm512_mask_storeu_epi8(d.add(i), m, _mm512_maskz_loadu_epi8(m, p.add(i)));
                i += 64;
            }
        },
        2 => unsafe {
            let even = _mm512_set_epi8(
                126, 124, 122, 120, 118, 116, 114, 112, 110, 108, 106, 104, 102, 100, 98, 96, 94, 92, 90, 88, 86, 84,
                82, 80, 78, 76, 74, 72, 70, 68, 66, 64, 62, 60, 58, 56, 54, 52, 50, 48, 46, 44, 42, 40, 38, 36, 34, 32,
                30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0,
            );
            while i < len {
                let from = 2 * i;
                let available = src.len() - from;
                let lo = _mm512_maskz_loadu_epi8(byte_lanes(available), p.add(from));
                let hi = _mm512_maskz_loadu_epi8(byte_lanes(available.saturating_sub(64)), p.add(from + 64));
                _mm512_mask_storeu_epi8(d.add(i), byte_lanes(len - i), _mm512_permutex2var_epi8(lo, even, hi));
                i += 64;
            }
        },
        _ => dst.iter_mut().zip(src.iter().step_by(step)).for_each(|(o, v)| *o = *v),
    }
}

/// `out[v·64 + 4i + r] = rows[r][16v + i]` for the rows' columns (xor 0x80 for an i8 input:
/// `u = x + 128`); the rest of `out` is left as it is (its lanes are never stored).
fn interleave(rows: [&[u8]; 4], out: &mut [u8], signed: bool) {
    let width = rows[0].len();
    let flip = if signed { 0x80u8 } else { 0 };
    let mut i = 0;
    while i + LANES <= width {
        // SSE2 (part of x86_64): two unpack rounds turn 4 × 16 bytes into 64 interleaved ones.
        // SAFETY: 16 bytes read from each row at i (i + 16 <= width) and 64 written at 4i
        // (out holds 4 bytes per column).
        unsafe {
            let load = |r: &[u8]| _mm_loadu_si128(r[i..i + LANES].as_ptr() as *const __m128i);
            let f = _mm_set1_epi8(flip as i8);
            let (a, b, c, d) = (load(rows[0]), load(rows[1]), load(rows[2]), load(rows[3]));
            let (ab_lo, ab_hi) = (_mm_unpacklo_epi8(a, b), _mm_unpackhi_epi8(a, b));
            let (cd_lo, cd_hi) = (_mm_unpacklo_epi8(c, d), _mm_unpackhi_epi8(c, d));
            let dst = out[4 * i..4 * i + 64].as_mut_ptr() as *mut __m128i;
            _mm_storeu_si128(dst, _mm_xor_si128(_mm_unpacklo_epi16(ab_lo, cd_lo), f));
            _mm_storeu_si128(dst.add(1), _mm_xor_si128(_mm_unpackhi_epi16(ab_lo, cd_lo), f));
            _mm_storeu_si128(dst.add(2), _mm_xor_si128(_mm_unpacklo_epi16(ab_hi, cd_hi), f));
            _mm_storeu_si128(dst.add(3), _mm_xor_si128(_mm_unpackhi_epi16(ab_hi, cd_hi), f));
        }
        i += LANES;
    }
    for j in i..width {
        out[4 * j..4 * j + 4].copy_from_slice(&rows.map(|r| r[j] ^ flip));
    }
}

/// One kernel call: an `MR × (≤ NR)` output tile over the whole depth, requantized.
struct Tile {
    steps: usize,
    /// `steps × MR × 4` weight bytes.
    a: *const i8,
    /// `steps × NR × 4` column bytes.
    b: *const u8,
    rows: usize,
    width: usize,
    offset: *const i32,
    multiplier: *const f32,
    y0: i32,
    signed_output: bool,
    c: *mut u8,
    ldc: usize,
}

/// `c[rows × width] = requantize(a · b + offset)`, `NV` vectors of columns wide.
///
/// # Safety
/// The pointers of `t` hold what its fields say; AVX-512F/BW/VNNI are available.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn tile_kernel<const NV: usize>(t: &Tile) {
    let mut masks = [0xFFFF as __mmask16; NV];
    let tail = t.width - (NV - 1) * LANES;
    masks[NV - 1] = if tail >= LANES { 0xFFFF } else { ((1u32 << tail) - 1) as __mmask16 };
    let mut acc = [[_mm512_setzero_si512(); NV]; MR];
    // SAFETY (whole body): every access stays inside what `Tile` describes.
    unsafe {
        let (mut a, mut b) = (t.a, t.b);
        for _ in 0..t.steps {
            _mm_prefetch::<_MM_HINT_T0>(a.wrapping_add(16 * MR * 4));
            let cols: [__m512i; NV] = std::array::from_fn(|v| _mm512_loadu_si512(b.add(v * 64) as *const _));
            for (r, acc) in acc.iter_mut().enumerate() {
                let w = _mm512_set1_epi32((a.add(r * 4) as *const i32).read_unaligned());
                for v in 0..NV {
                    acc[v] = _mm512_dpbusd_epi32(acc[v], cols[v], w);
                }
            }
            a = a.add(MR * 4);
            b = b.add(NR * 4);
        }
        let y0 = _mm512_set1_epi32(t.y0);
        let (lo, hi) = (_mm512_set1_epi32(0), _mm512_set1_epi32(255));
        for (r, acc) in acc.iter().enumerate().take(t.rows) {
            let offset = _mm512_set1_epi32(*t.offset.add(r));
            let multiplier = _mm512_set1_ps(*t.multiplier.add(r));
            for v in 0..NV {
                let sum = _mm512_cvtepi32_ps(_mm512_add_epi32(acc[v], offset));
                // Round half to even (the default MXCSR mode), then the zero point.
                let q = _mm512_add_epi32(_mm512_cvtps_epi32(_mm512_mul_ps(sum, multiplier)), y0);
                let dst = t.c.add(r * t.ldc + v * LANES);
                if t.signed_output {
                    _mm512_mask_cvtsepi32_storeu_epi8(dst as *mut i8, masks[v], q);
                } else {
                    let q = _mm512_min_epi32(_mm512_max_epi32(q, lo), hi);
                    _mm512_mask_cvtepi32_storeu_epi8(dst as *mut i8, masks[v], q);
                }
            }
        }
    }
}

/// `c[rows × W] = requantize(a · b + offset)` for a last panel only `W` ≤ 4 columns wide (ResNet's
/// 7×7 = 49 = 48 + 1 columns, 14×14 = 196 = 4·48 + 4): 256-bit vectors run along the panel's 8
/// rows (one load of the packed weights per step), each `vpdpbusd`'d with one broadcast column,
/// four steps in flight on separate accumulators. The 16-column vectors of [`tile_kernel`] would
/// spend 8 broadcasts and 8 `vpdpbusd` per step on 1–4 useful lanes.
///
/// # Safety
/// As [`tile_kernel`], with `t.width == W`; AVX-512VL is available too.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn narrow_kernel<const W: usize>(t: &Tile) {
    const STEPS: usize = 4;
    debug_assert!(t.width == W && W <= 4);
    let mut acc = [[_mm256_setzero_si256(); W]; STEPS];
    // SAFETY (whole body): every access stays inside what `Tile` describes (a column j < 4 of a
    // panel step sits at byte 4j of it).
    unsafe {
        let (mut a, mut b) = (t.a, t.b);
        let step = |acc: &mut [__m256i; W], a: *const i8, b: *const u8| {
            let w = _mm256_loadu_si256(a as *const __m256i);
            for (col, acc) in acc.iter_mut().enumerate() {
                let x = _mm256_set1_epi32((b.add(4 * col) as *const i32).read_unaligned());
                *acc = _mm256_dpbusd_epi32(*acc, x, w);
            }
        };
        for _ in 0..t.steps / STEPS {
            _mm_prefetch::<_MM_HINT_T0>(a.wrapping_add(16 * MR * 4));
            _mm_prefetch::<_MM_HINT_T0>(a.wrapping_add(16 * MR * 4 + 64));
            for (s, acc) in acc.iter_mut().enumerate() {
                step(acc, a.add(s * MR * 4), b.add(s * NR * 4));
            }
            a = a.add(STEPS * MR * 4);
            b = b.add(STEPS * NR * 4);
        }
        for acc in acc.iter_mut().take(t.steps % STEPS) {
            step(acc, a, b);
            a = a.add(MR * 4);
            b = b.add(NR * 4);
        }
        let mut offset = [0i32; MR];
        let mut multiplier = [0f32; MR];
        for r in 0..t.rows {
            (offset[r], multiplier[r]) = (*t.offset.add(r), *t.multiplier.add(r));
        }
        let (offset, multiplier) =
            (_mm256_loadu_si256(offset.as_ptr() as *const __m256i), _mm256_loadu_ps(multiplier.as_ptr()));
        let y0 = _mm256_set1_epi32(t.y0);
        let (lo, hi) = if t.signed_output { (-128, 127) } else { (0, 255) };
        let (lo, hi) = (_mm256_set1_epi32(lo), _mm256_set1_epi32(hi));
        let sums: [__m256i; W] = std::array::from_fn(|col| {
            _mm256_add_epi32(_mm256_add_epi32(acc[0][col], acc[1][col]), _mm256_add_epi32(acc[2][col], acc[3][col]))
        });
        for (col, &sum) in sums.iter().enumerate() {
            let scaled = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_add_epi32(sum, offset)), multiplier);
            // Round half to even (the default MXCSR mode), the zero point, then saturate.
            let q = _mm256_min_epi32(_mm256_max_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(scaled), y0), lo), hi);
            let mut values = [0i32; MR];
            _mm256_storeu_si256(values.as_mut_ptr() as *mut __m256i, q);
            for (r, value) in values.iter().enumerate().take(t.rows) {
                *t.c.add(r * t.ldc + col) = *value as u8;
            }
        }
    }
}

impl Op for QGemmConv {
    fn name(&self) -> StaticName {
        "QGemmConv".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        let g = &self.geo;
        let per_channel = self.multiplier.iter().any(|m| *m != self.multiplier[0]);
        Ok(vec![format!(
            "m:{} k:{} n:{} kernel:{}x{} stride:{:?} dilation:{:?} pad:{:?} {} scales, {:?}",
            self.m,
            self.k(),
            g.n(),
            g.kh,
            g.kw,
            g.stride,
            g.dilation,
            g.pad_before,
            if per_channel { "per-channel" } else { "per-tensor" },
            self.out_dt
        )])
    }

    op_as_typed_op!();
}

impl EvalOp for QGemmConv {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let g = &self.geo;
        let x = inputs[0].try_as_plain_ram()?;
        let image: &[u8] = match x.datum_type().unquantized() {
            // SAFETY: i8 and u8 have the same size and alignment; the bytes are read as they are.
            DatumType::I8 => unsafe {
                let s = x.as_slice::<i8>()?;
                std::slice::from_raw_parts(s.as_ptr() as *const u8, s.len())
            },
            DatumType::U8 => x.as_slice::<u8>()?,
            other => bail!("QGemmConv: input is {other:?}, not 8-bit"),
        };
        ensure!(image.len() == g.c * g.h * g.w, "QGemmConv: input has {} values, expected {:?}", image.len(), g);
        // SAFETY: every output byte is written by a tile (the bands cover all rows and columns);
        // 8-bit integers have no invalid bit patterns anyway.
        let mut out = unsafe { Tensor::uninitialized_dt(self.out_dt, &self.output_shape)? };
        {
            let mut view = out.try_as_plain_ram_mut()?;
            let dst = match self.out_dt.unquantized() {
                DatumType::I8 => {
                    let s = view.as_slice_mut::<i8>()?;
                    Dst { ptr: s.as_mut_ptr() as *mut u8, len: s.len() }
                }
                DatumType::U8 => {
                    let s = view.as_slice_mut::<u8>()?;
                    Dst { ptr: s.as_mut_ptr(), len: s.len() }
                }
                other => bail!("QGemmConv: output type {other:?}"),
            };
            match current_tract_executor() {
                Executor::MultiThread(pool) if pool.current_num_threads() > 1 => {
                    let threads = pool.current_num_threads();
                    pool.install(|| self.split(image, &dst, threads));
                }
                _ => SCRATCH.with_borrow_mut(|scratch| self.band(image, &dst, 0..self.m, 0..g.n(), scratch)),
            }
        }
        Ok(tvec!(out.into_tvalue()))
    }
}

impl TypedOp for QGemmConv {
    fn output_facts(&self, _inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec!(self.out_dt.fact(&*self.output_shape)))
    }

    as_op!();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The quantized convolution computed directly: exact i32 sums, then the same requantization.
    fn direct(op: &QGemmConv, weights: &[i8], image: &[u8]) -> Vec<i32> {
        let g = &op.geo;
        let k = op.k();
        let mut out = vec![0; op.m * g.n()];
        let flip = if op.signed_input { 128 } else { 0 };
        for r in 0..op.m {
            for oy in 0..g.oh {
                for ox in 0..g.ow {
                    let mut sum = op.offset[r];
                    for c in 0..g.c {
                        for ki in 0..g.kh {
                            for kj in 0..g.kw {
                                let u = match g.input_at(oy, ox, ki, kj) {
                                    Some((y, x)) => (image[c * g.h * g.w + y * g.w + x] ^ flip as u8) as i32,
                                    None => (op.pad ^ flip as u8) as i32,
                                };
                                sum += u * weights[r * k + (c * g.kh + ki) * g.kw + kj] as i32;
                            }
                        }
                    }
                    let q = (sum as f32 * op.multiplier[r]).round_ties_even() as i32 + op.y0;
                    out[r * g.n() + oy * g.ow + ox] =
                        if op.out_dt.unquantized() == DatumType::I8 { q.clamp(-128, 127) } else { q.clamp(0, 255) };
                }
            }
        }
        out
    }

    #[test]
    fn matches_a_direct_quantized_convolution_over_awkward_geometries() {
        if !available() {
            eprintln!("no AVX-512 VNNI: nothing to test");
            return;
        }
        // (c, h, w, m, kernel, stride, dilation, pad before, pad after)
        let cases = [
            (3, 23, 29, 16, [7, 7], [2, 2], [1, 1], [3, 3], [3, 3]),
            (16, 14, 14, 24, [3, 3], [1, 1], [1, 1], [1, 1], [1, 1]),
            (5, 9, 13, 9, [3, 3], [2, 2], [1, 1], [0, 1], [1, 0]),
            (32, 7, 7, 40, [1, 1], [1, 1], [3, 3], [0, 0], [0, 0]),
            (8, 12, 12, 8, [1, 1], [2, 2], [1, 1], [0, 0], [0, 0]),
            (6, 10, 11, 13, [3, 3], [1, 1], [2, 2], [2, 2], [2, 2]),
            (4, 5, 4, 3, [3, 5], [3, 2], [1, 1], [1, 2], [0, 2]),
            (70, 3, 3, 17, [3, 3], [1, 1], [1, 1], [1, 1], [1, 1]),
            // Rows longer than one 64-byte vector, stride 1 and 2, the last reads at the row's end.
            (2, 5, 151, 9, [3, 3], [2, 2], [1, 1], [1, 1], [1, 1]),
            (2, 4, 130, 8, [1, 3], [1, 1], [1, 1], [0, 0], [0, 0]),
            // Last panels of 1 to 4 columns (n = 49, 50, 51, 52), 1 to 8 rows in the last panel.
            (16, 7, 7, 24, [3, 3], [1, 1], [1, 1], [1, 1], [1, 1]),
            (9, 5, 10, 11, [1, 1], [1, 1], [1, 1], [0, 0], [0, 0]),
            (7, 3, 17, 5, [3, 3], [1, 1], [1, 1], [1, 1], [1, 1]),
            (40, 4, 13, 33, [1, 1], [1, 1], [1, 1], [0, 0], [0, 0]),
        ];
        let mut state = 0x2545f4914f6cdd1du64;
        let mut byte = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        };
        for (c, h, w, m, [kh, kw], stride, dilation, pad, after) in cases {
            let geo = ConvShape::for_test(c, h, w, [kh, kw], stride, dilation, pad, after);
            let k = c * kh * kw;
            let weights: Vec<i8> = (0..m * k).map(|_| (byte() as i8).max(-127)).collect();
            let image: Vec<u8> = (0..c * h * w).map(|_| byte()).collect();
            for (signed_input, out_dt) in [(true, DatumType::I8), (false, DatumType::U8), (true, DatumType::U8)] {
                let op = QGemmConv {
                    geo: geo.clone(),
                    m,
                    packed: Arc::new(pack_weights(&weights, m, k)),
                    // Per-channel offsets and scales, large enough to saturate some outputs.
                    offset: Arc::new((0..m).map(|r| r as i32 * 1000 - 7000).collect()),
                    multiplier: Arc::new((0..m).map(|r| 0.0004 + 0.0001 * r as f32).collect()),
                    y0: if out_dt == DatumType::I8 { -5 } else { 120 },
                    signed_input,
                    pad: 0x93,
                    out_dt,
                    output_shape: tvec!(1, m, geo.oh, geo.ow),
                };
                let want = direct(&op, &weights, &image);
                let input = if signed_input {
                    let bytes: Vec<i8> = image.iter().map(|b| *b as i8).collect();
                    Tensor::from_shape(&[1, c, h, w], &bytes).unwrap()
                } else {
                    Tensor::from_shape(&[1, c, h, w], &image).unwrap()
                };
                for threads in [1, 3] {
                    let out = tract_linalg::multithread::multithread_tract_scope(
                        if threads == 1 { Executor::SingleThread } else { Executor::multithread(threads) },
                        || op.eval_out_of_plan(tvec!(input.clone().into_tvalue())).unwrap().unwrap(),
                    );
                    let got: Vec<i32> = match out_dt {
                        DatumType::I8 => out[0]
                            .try_as_plain_ram()
                            .unwrap()
                            .as_slice::<i8>()
                            .unwrap()
                            .iter()
                            .map(|v| *v as i32)
                            .collect(),
                        _ => out[0]
                            .try_as_plain_ram()
                            .unwrap()
                            .as_slice::<u8>()
                            .unwrap()
                            .iter()
                            .map(|v| *v as i32)
                            .collect(),
                    };
                    assert_eq!(got, want, "{geo:?} signed input {signed_input} {out_dt:?} on {threads} threads");
                }
            }
        }
    }
}
