//! A packed fp32 GEMM with AVX-512 kernels, for [`super::gemm_conv`]: the convolution's
//! weights packed once at load, the image's columns gathered straight into the kernel's
//! panels (no im2col matrix).
//!
//! Why by hand rather than the `gemm` crate (kept for CPUs without AVX-512): `gemm` repacks
//! its left operand, the weights, on every call (ResNet-50's widest 3×3 convolution packs
//! 9.4 MiB of weights to multiply them by 49 columns) and reads an im2col matrix written in a
//! separate pass (15-40 % of a 3×3 convolution's time); onnxruntime's MLAS packs weights once,
//! at session load. Here:
//! - weights are packed at load into `MR`-row panels, K-block by K-block (`KC`), so the
//!   kernel reads one contiguous stream of them;
//! - for each block of `NC` output columns and each K-block, the image values under the kernel
//!   taps are gathered into `KC × NR` panels (the block stays in L2), and each panel, in L1,
//!   is multiplied by every `MR`-row panel of weights (which stream from L2/L3);
//! - the kernel keeps an `MR × NR` tile of the output in 24 registers (broadcast one weight,
//!   multiply-add it with three 16-wide vectors of columns), starts it from bias + residual on
//!   the first K-block, and clamps it on the last before its only store of the final values.
//!
//! Vectors run along the output's columns (its spatial positions), so the `c_out × n` NCHW
//! output is stored row by row without a transpose; a column count that is not a multiple of
//! 16 costs masked lanes, as in MLAS. A last panel of at most [`NARROW`] columns (ResNet's
//! 7×7 = 49 = 48 + 1, 14×14 = 196 = 4·48 + 4) runs a kernel whose vectors run along the
//! panel's rows instead, right after the full panel before it under the same weights (still
//! in L1): with 16-wide column vectors it took 8 broadcasts per k for 1 useful lane (one
//! thread, ResNet-50's 7×7 convolutions 18.8–20.2 → 15.5–16.7 ms).

use std::arch::x86_64::*;
use std::ops::Range;

use super::{ConvShape, Epilogue};

/// Output rows (channels) per kernel tile: one broadcast weight each.
pub const MR: usize = 8;
/// f32 lanes of one AVX-512 vector.
const LANES: usize = 16;
/// Output columns per kernel tile: three vectors (24 accumulators with `MR` = 8).
const NR: usize = 3 * LANES;
/// Columns per block gathered at once: 14 panels, ≤ 336 KiB at `KC` deep, in the 2 MiB L2
/// (weights stream once per block of columns).
const NC: usize = 14 * NR;
/// Widest last column panel run by [`narrow_kernel`] (per k: one load of the 8 packed weights
/// and one broadcast per column, against 8 broadcasts for the column-vector kernel).
const NARROW: usize = 4;
/// Depth of a K-block: its `KC × NR` column panel (≤ 24 KiB) stays in the 48 KiB L1d while
/// every weight panel passes over it.
const KC: usize = 128;

/// How far ahead of the kernel the weights are prefetched (32 k-steps).
const PREFETCH_FLOATS: usize = 32 * MR;

/// Whether this CPU runs the kernels (checked once per process by std).
pub fn available() -> bool {
    is_x86_feature_detected!("avx512f")
}

/// A `m × k` weight matrix packed for the kernel: for each K-block, for each `MR`-row panel
/// (rows past `m` are zeros), `MR` values per k, contiguous.
#[derive(Debug, PartialEq)]
pub struct PackedWeights {
    data: Vec<f32>,
    m: usize,
    k: usize,
}

impl PackedWeights {
    /// Packs the row-major `m × k` `weights`.
    pub fn new(weights: &[f32], m: usize, k: usize) -> Self {
        assert_eq!(weights.len(), m * k, "weights are not m × k");
        let panels = m.div_ceil(MR);
        let mut data = Vec::with_capacity(panels * MR * k);
        for ks in k_blocks(k) {
            for panel in 0..panels {
                for kk in ks.clone() {
                    for row in panel * MR..(panel + 1) * MR {
                        data.push(if row < m { weights[row * k + kk] } else { 0.0 });
                    }
                }
            }
        }
        PackedWeights { data, m, k }
    }

    pub fn m(&self) -> usize {
        self.m
    }

    pub fn k(&self) -> usize {
        self.k
    }

    /// The panel of rows `row..row + MR` (`row` a multiple of `MR`) in the K-block `ks`.
    fn panel(&self, ks: &Range<usize>, row: usize) -> &[f32] {
        debug_assert!(row.is_multiple_of(MR) && row < self.m);
        // Every earlier block holds `ks.start` values of each of the padded rows.
        let start = ks.start * self.m.div_ceil(MR) * MR + row * ks.len();
        &self.data[start..start + MR * ks.len()]
    }
}

/// K split into blocks of at most `KC`, of equal size but the last (no short tail block).
fn k_blocks(k: usize) -> impl Iterator<Item = Range<usize>> {
    let count = k.div_ceil(KC).max(1);
    let size = k.div_ceil(count);
    (0..count).map(move |i| i * size..((i + 1) * size).min(k))
}

/// The column panels gathered from the image, reused by every convolution on a thread.
#[derive(Default)]
pub struct Scratch {
    panel: Vec<f32>,
}

/// Computes rows `channels` (its start a multiple of [`MR`]) by columns `cols` of the
/// convolution's `c_out × n` output `dst` on this thread.
///
/// # Safety
/// `dst` points to `weights.m() × g.n()` writable values, of which no other thread accesses
/// the rows `channels` in the columns `cols` during the call, and [`available`] is true.
pub unsafe fn conv(
    g: &ConvShape,
    weights: &PackedWeights,
    image: &[f32],
    epilogue: &Epilogue,
    dst: *mut f32,
    (channels, cols): (Range<usize>, Range<usize>),
    scratch: &mut Scratch,
) {
    let (n, k) = (g.n(), weights.k);
    assert!(image.len() == g.c * g.h * g.w && k == g.c * g.kh * g.kw);
    assert!(channels.start.is_multiple_of(MR) && channels.end <= weights.m && cols.end <= n);
    assert!(epilogue.bias.is_none_or(|b| b.len() == weights.m));
    assert!(epilogue.residual.is_none_or(|r| r.len() == weights.m * n));
    scratch.panel.resize(KC * NC, 0.0);
    let block = &mut scratch.panel;
    let pointwise = g.is_pointwise();
    for c0 in cols.clone().step_by(NC) {
        let width = NC.min(cols.end - c0);
        for ks in k_blocks(k) {
            // Gather this block of columns into `NR`-wide panels, each `ks.len() × NR`; a
            // pointwise convolution's input is already the matrix, read in place.
            let panel_len = ks.len() * NR;
            if !pointwise {
                let panels = &mut block[..width.div_ceil(NR) * panel_len];
                for (r, kk) in ks.clone().enumerate() {
                    // SAFETY: AVX-512F is available (the caller's contract).
                    unsafe { gather(g, image, kk, c0, width, panels, panel_len, r * NR) };
                }
            }
            // Each column panel (in L1) under every weight panel (from L2); a narrow last panel
            // right after the one before it, under the same weights.
            let panels = width.div_ceil(NR);
            let fuse_tail = panels >= 2 && width - (panels - 1) * NR <= NARROW;
            let tile = |p: usize, row: usize| {
                let (j0, width) = (c0 + p * NR, NR.min(width - p * NR));
                let (b, ldb) = match pointwise {
                    true => (image[ks.start * n + j0..].as_ptr(), n),
                    false => (block[p * panel_len..].as_ptr(), NR),
                };
                Tile {
                    depth: ks.len(),
                    a: weights.panel(&ks, row).as_ptr(),
                    b,
                    ldb,
                    // SAFETY: row < m and j0 < n: inside `dst` (the caller's contract).
                    c: unsafe { dst.add(row * n + j0) },
                    ldc: n,
                    rows: MR.min(channels.end - row),
                    width,
                    first: ks.start == 0,
                    last: ks.end == k,
                    bias: epilogue.bias.map(|b| b[row..].as_ptr()),
                    residual: epilogue.residual.map(|r| r[row * n + j0..].as_ptr()),
                    clamp: epilogue.clamp,
                }
            };
            for p in 0..panels - usize::from(fuse_tail) {
                for row in channels.clone().step_by(MR) {
                    // SAFETY: `a` holds MR × depth values, `b` depth rows of `width` values at
                    // stride ldb; `c` and `residual` hold `rows` rows of `width` values at
                    // stride n (asserted above).
                    unsafe { run(&tile(p, row)) };
                    if fuse_tail && p == panels - 2 {
                        // SAFETY: as above, for the last panel.
                        unsafe { run(&tile(p + 1, row)) };
                    }
                }
            }
        }
    }
}

/// Runs the kernel for `t`'s width.
///
/// # Safety
/// As [`tile_kernel`].
unsafe fn run(t: &Tile) {
    // SAFETY: the caller's contract; each kernel reads and writes `t.width` columns.
    unsafe {
        match t.width {
            1 => narrow_kernel::<1>(t),
            2 => narrow_kernel::<2>(t),
            3 => narrow_kernel::<3>(t),
            4 => narrow_kernel::<4>(t),
            w if w <= LANES => tile_kernel::<1>(t),
            w if w <= 2 * LANES => tile_kernel::<2>(t),
            _ => tile_kernel::<3>(t),
        }
    }
}

/// Fills row `kk` of the convolution's im2col matrix for output columns `j0..j0 + width`
/// into the block's column panels: column `j0 + j` goes to panel `j / NR`, at `at + j % NR`
/// in it. The value is the input under kernel tap `kk` = (channel, ki, kj), 0 in the padding.
///
/// One call per tap and block, not per panel: the tap's geometry (five divisions) and the
/// position in the image are worked out once and then walked, in pieces that end at an output
/// row's or a panel's end (per panel and tap, that set-up took twice the kernel's time on the
/// default model's 16-channel convolutions).
///
/// # Safety
/// AVX-512F is available.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f")]
unsafe fn gather(
    g: &ConvShape,
    image: &[f32],
    kk: usize,
    j0: usize,
    width: usize,
    panels: &mut [f32],
    panel_len: usize,
    at: usize,
) {
    let plane_len = g.h * g.w;
    let super::Tap { channel, dy, dx, inside } = g.tap(kk);
    let plane = &image[channel * plane_len..(channel + 1) * plane_len];
    let (ox_lo, ox_hi) = (inside.start, inside.end);
    let s = g.stride[1] as isize;
    let (mut oy, mut ox) = (j0 / g.ow, j0 % g.ow);
    let (mut p, mut q) = (0, 0);
    let mut done = 0;
    while done < width {
        let len = (g.ow - ox).min(NR - q).min(width - done);
        let seg = &mut panels[p * panel_len + at + q..][..len];
        let y = (oy * g.stride[0]) as isize + dy;
        let (lo, hi) = (ox_lo.max(ox), ox_hi.min(ox + len));
        if y < 0 || y >= g.h as isize || lo >= hi {
            zero(seg);
        } else {
            let line = &plane[y as usize * g.w..(y as usize + 1) * g.w];
            let (before, inside) = seg.split_at_mut(lo - ox);
            let (inside, after) = inside.split_at_mut(hi - lo);
            zero(before);
            zero(after);
            copy(inside, &line[(lo as isize * s + dx) as usize..], g.stride[1]);
        }
        done += len;
        ox += len;
        if ox == g.ow {
            (oy, ox) = (oy + 1, 0);
        }
        q += len;
        if q == NR {
            (p, q) = (p + 1, 0);
        }
    }
}

/// The first `len` lanes (all for `len` ≥ 16).
fn lanes(len: usize) -> __mmask16 {
    if len >= LANES { 0xFFFF } else { ((1u32 << len) - 1) as __mmask16 }
}

/// `dst.fill(0.0)` without a call to memset (the runs here are 1-56 values: the call costs
/// more than the stores).
#[target_feature(enable = "avx512f")]
fn zero(dst: &mut [f32]) {
    for chunk in dst.chunks_mut(LANES) {
        // SAFETY: the mask covers `chunk` only.
        unsafe { _mm512_mask_storeu_ps(chunk.as_mut_ptr(), lanes(chunk.len()), _mm512_setzero_ps()) };
    }
}

/// `dst[i] = src[i·step]`: short runs of an image row (1-56 values here) copied by masked
/// vectors rather than memcpy calls, stride 2 by a two-vector permute.
#[target_feature(enable = "avx512f")]
fn copy(dst: &mut [f32], src: &[f32], step: usize) {
    let len = dst.len();
    assert!(len == 0 || (len - 1) * step < src.len(), "copy: source too short");
    let (d, s) = (dst.as_mut_ptr(), src.as_ptr());
    let mut i = 0;
    // SAFETY (all three): every store is masked to `dst`, every load to `src` (masked loads
    // do not fault on the lanes they leave out).
    match step {
        1 => unsafe {
            while i < len {
                let m = lanes(len - i);
                _mm512_mask_storeu_ps(d.add(i), m, _mm512_maskz_loadu_ps(m, s.add(i)));
                i += LANES;
            }
        },
        2 => unsafe {
            let even = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
            while i < len {
                let from = 2 * i;
                let available = src.len() - from;
                let lo = _mm512_maskz_loadu_ps(lanes(available), s.add(from));
                let hi = _mm512_maskz_loadu_ps(lanes(available.saturating_sub(LANES)), s.add(from + LANES));
                _mm512_mask_storeu_ps(d.add(i), lanes(len - i), _mm512_permutex2var_ps(lo, even, hi));
                i += LANES;
            }
        },
        _ => dst.iter_mut().zip(src.iter().step_by(step)).for_each(|(o, v)| *o = *v),
    }
}

/// One kernel call: an `MR × NR` output tile over one K-block.
struct Tile {
    depth: usize,
    /// `depth × MR` weights (k-major).
    a: *const f32,
    /// `depth` rows of columns, `ldb` apart (the lanes under the masks are read).
    b: *const f32,
    ldb: usize,
    /// The tile's first output value; rows `ldc` apart.
    c: *mut f32,
    ldc: usize,
    /// Rows of the tile inside the output (the rest of the panel is padding).
    rows: usize,
    /// Columns of the tile (≤ `NR`).
    width: usize,
    /// The first K-block (start from bias + residual, not from `c`) / the last (clamp).
    first: bool,
    last: bool,
    /// The tile's rows' bias values; its residual values (rows `ldc` apart).
    bias: Option<*const f32>,
    residual: Option<*const f32>,
    clamp: Option<(f32, f32)>,
}

/// `c[rows × (NV·16)] (+)= a · b` with the epilogue, `NV` vectors of columns wide.
///
/// # Safety
/// The pointers of `t` hold what its fields say; AVX-512F is available.
#[target_feature(enable = "avx512f")]
unsafe fn tile_kernel<const NV: usize>(t: &Tile) {
    debug_assert!(t.width.div_ceil(LANES) == NV);
    let mut masks = [0xFFFF as __mmask16; NV];
    masks[NV - 1] = lanes(t.width - (NV - 1) * LANES);
    let mut acc = [[_mm512_setzero_ps(); NV]; MR];
    // SAFETY (whole body): every access stays inside what `Tile` describes (rows < t.rows,
    // lanes under the masks, `depth` steps of `a` and `b`).
    unsafe {
        for (r, acc) in acc.iter_mut().enumerate().take(t.rows) {
            for v in 0..NV {
                let at = r * t.ldc + v * LANES;
                acc[v] = if t.first {
                    let bias = _mm512_set1_ps(match t.bias {
                        Some(b) => *b.add(r),
                        None => 0.0,
                    });
                    match t.residual {
                        Some(res) => _mm512_add_ps(bias, _mm512_maskz_loadu_ps(masks[v], res.add(at))),
                        None => bias,
                    }
                } else {
                    _mm512_maskz_loadu_ps(masks[v], t.c.add(at))
                };
            }
        }
        let (mut a, mut b) = (t.a, t.b);
        for _ in 0..t.depth {
            // The weights stream from L3 once per block of columns (the 9 MiB of a deep 3×3
            // convolution do not stay in L2): fetch them ~30 steps (a memory latency) ahead;
            // panels of a K-block are contiguous, so this runs into the next one.
            _mm_prefetch::<_MM_HINT_T0>(a.wrapping_add(PREFETCH_FLOATS) as *const i8);
            let mut cols = [_mm512_setzero_ps(); NV];
            for (v, col) in cols.iter_mut().enumerate() {
                *col = _mm512_maskz_loadu_ps(masks[v], b.add(v * LANES));
            }
            for (r, acc) in acc.iter_mut().enumerate() {
                let w = _mm512_set1_ps(*a.add(r));
                for v in 0..NV {
                    acc[v] = _mm512_fmadd_ps(w, cols[v], acc[v]);
                }
            }
            a = a.add(MR);
            b = b.add(t.ldb);
        }
        let clamp = if t.last { t.clamp } else { None };
        // A `match`, not `Option::map_or`: that call was not inlined here (perf showed the 24
        // accumulators spilled to the stack around it, on every tile).
        let (lo, hi) = match clamp {
            Some((lo, hi)) => (lo, hi),
            None => (0.0, 0.0),
        };
        let (lo, hi) = (_mm512_set1_ps(lo), _mm512_set1_ps(hi));
        for (r, acc) in acc.iter().enumerate().take(t.rows) {
            for v in 0..NV {
                let value = if clamp.is_some() { _mm512_min_ps(_mm512_max_ps(acc[v], lo), hi) } else { acc[v] };
                _mm512_mask_storeu_ps(t.c.add(r * t.ldc + v * LANES), masks[v], value);
            }
        }
    }
}

/// `c[rows × W] (+)= a · b` with the epilogue, for a panel only `W` ≤ [`NARROW`] columns wide:
/// 8-wide vectors run along the panel's rows (the packed weights of one k are contiguous), each
/// multiplied by one broadcast column value; four k-steps in flight on separate accumulators
/// hide the multiply-add latency. The start values and results, `W` columns of 8 rows at
/// stride `ldc`, move through a small array once per K-block.
///
/// # Safety
/// As [`tile_kernel`], with `t.width == W`.
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn narrow_kernel<const W: usize>(t: &Tile) {
    const STEPS: usize = 4;
    debug_assert!(t.width == W);
    let mut start = [[0f32; MR]; W];
    // SAFETY (whole body): every access stays inside what `Tile` describes (rows < t.rows,
    // W columns, `depth` steps of `a` and `b`).
    unsafe {
        for (col, start) in start.iter_mut().enumerate() {
            for (r, value) in start.iter_mut().enumerate().take(t.rows) {
                let at = r * t.ldc + col;
                *value = if t.first {
                    t.bias.map_or(0.0, |b| *b.add(r)) + t.residual.map_or(0.0, |res| *res.add(at))
                } else {
                    *t.c.add(at)
                };
            }
        }
        let mut acc = [[_mm256_setzero_ps(); W]; STEPS];
        for (col, start) in start.iter().enumerate() {
            acc[0][col] = _mm256_loadu_ps(start.as_ptr());
        }
        let (mut a, mut b) = (t.a, t.b);
        let step = |acc: &mut [__m256; W], a: *const f32, b: *const f32| {
            let w = _mm256_loadu_ps(a);
            for (col, acc) in acc.iter_mut().enumerate() {
                *acc = _mm256_fmadd_ps(w, _mm256_broadcast_ss(&*b.add(col)), *acc);
            }
        };
        for _ in 0..t.depth / STEPS {
            // Two cache lines of weights per four steps, fetched as in `tile_kernel`.
            _mm_prefetch::<_MM_HINT_T0>(a.wrapping_add(PREFETCH_FLOATS) as *const i8);
            _mm_prefetch::<_MM_HINT_T0>(a.wrapping_add(PREFETCH_FLOATS + LANES) as *const i8);
            for (s, acc) in acc.iter_mut().enumerate() {
                step(acc, a.add(s * MR), b.add(s * t.ldb));
            }
            a = a.add(STEPS * MR);
            b = b.add(STEPS * t.ldb);
        }
        for acc in acc.iter_mut().take(t.depth % STEPS) {
            step(acc, a, b);
            a = a.add(MR);
            b = b.add(t.ldb);
        }
        let clamp = if t.last { t.clamp } else { None };
        let sums: [__m256; W] = std::array::from_fn(|col| {
            _mm256_add_ps(_mm256_add_ps(acc[0][col], acc[1][col]), _mm256_add_ps(acc[2][col], acc[3][col]))
        });
        for (col, sum) in sums.iter().enumerate() {
            let mut out = [0f32; MR];
            _mm256_storeu_ps(out.as_mut_ptr(), *sum);
            for (r, &value) in out.iter().enumerate().take(t.rows) {
                *t.c.add(r * t.ldc + col) = clamp.map_or(value, |(lo, hi)| value.max(lo).min(hi));
            }
        }
    }
}
