//! Our rewrites of tract 0.23.9's optimized plans, in one place behind one [`apply`] and the
//! `tract-patches` cargo feature (on by default), so a tract upgrade, or removing them, means
//! this folder and that feature. Each rewrite is byte-identical to what it replaces (its own
//! unit tests) and relies on tract 0.23.9's op types, which is why `tract-*` is pinned.
//!
//! - `fold`: folds the constant chains tract's const-folding budget refuses (the i32 cast and
//!   row sums of big int8 kernels).
//! - `im2col`: a faster int8 im2col into the panels tract's int8 kernels read, with slack
//!   after the last panel for the AMX kernels' over-read.
//! - `quantize`: a vectorizable f32 -> int8 quantization.
//! - `maxpool`: a separable 2-D max pool (rows, then columns), same values as tract's.
//! - `gemm_conv` (before tract's optimizer, [`before_optimize`]): fp32 convolutions, 1×1 ones
//!   included, on our packed AVX-512 GEMM (`sgemm`; the `gemm` crate on other CPUs) instead
//!   of tract's kernels (close, not byte-identical: another summation order; held to
//!   onnxruntime by the parity test), and
//!   depthwise ones on a direct kernel (`depthwise`); both with the bias, residual add and
//!   ReLU/ReLU6 that follow them fused in. `qdepthwise`: int8 depthwise convolutions on that
//!   kernel in float (dequantize, convolve, requantize) instead of tract's m = 1 products;
//!   `qgemm_conv`: the other int8 convolutions on our AVX-512 VNNI GEMM with the requantization
//!   (per-tensor or per-channel) in its epilogue (exact integer sums; the requantization is
//!   onnxruntime's, so close to tract's, not byte-identical).

use tract_onnx::prelude::*;
use tract_onnx::tract_core::ops::cnn::PoolSpec;
use tract_onnx::tract_core::ops::cnn::conv::{Conv, KernelFormat};
use tract_onnx::tract_core::ops::nn::DataFormat;

mod depthwise;
mod fold;
mod gemm_conv;
mod im2col;
mod maxpool;
mod qdepthwise;
#[cfg(target_arch = "x86_64")]
mod qgemm_conv;
mod quantize;
#[cfg(target_arch = "x86_64")]
mod sgemm;

/// Rewrites the decluttered `model` before tract optimizes it.
pub fn before_optimize(model: &mut TypedModel) -> TractResult<()> {
    replace_ops(model, qdepthwise::replacement)?;
    #[cfg(target_arch = "x86_64")]
    replace_ops(model, qgemm_conv::replacement)?;
    replace_ops(model, gemm_conv::replacement)?;
    replace_ops(model, gemm_conv::pointwise_replacement)?;
    model.compact()?;
    // One fusion at a time, compacting in between: a fused chain's old nodes would otherwise
    // still count as successors of the outlets they read.
    while let Some(patch) = first_patch(model, gemm_conv::fuse_epilogue)? {
        patch.apply(model)?;
        model.compact()?;
    }
    Ok(())
}

/// The first patch `rule` makes of a node of `model`, if any.
fn first_patch(
    model: &TypedModel,
    rule: fn(&TypedModel, &TypedNode) -> TractResult<Option<TypedModelPatch>>,
) -> TractResult<Option<TypedModelPatch>> {
    for node in &model.nodes {
        if let Some(patch) = rule(model, node)? {
            return Ok(Some(patch));
        }
    }
    Ok(None)
}

/// Rewrites `model` (already `into_optimized()`) in place; call `compact()` after.
pub fn apply(model: &mut TypedModel) -> TractResult<()> {
    fold::fold_constant_chains(model)?;
    replace_ops(model, im2col::replacement)?;
    replace_ops(model, quantize::replacement)?;
    replace_ops(model, maxpool::replacement)?;
    Ok(())
}

/// Whether `node`'s output is our im2col's, whose buffer ends with slack for the AMX kernels'
/// over-read (see `tract/amx.rs`).
pub fn has_amx_slack(node: &TypedNode) -> bool {
    node.op_is::<im2col::Im2ColI8K4>()
}

/// The name of our int8 GEMM kernel if `node` runs on it (for `matmul_kernels`).
pub fn int8_gemm_kernel(node: &TypedNode) -> Option<&'static str> {
    #[cfg(target_arch = "x86_64")]
    if node.op_is::<qgemm_conv::QGemmConv>() {
        return Some("tessera_qgemm_avx512vnni_8x48");
    }
    let _ = node;
    None
}

/// For a 2-D OIHW convolution on an NCHW (or CHW) input of batch 1 with concrete shape, with
/// `inputs` inputs, both our float and int8 replacements' starting point: the op, its input's
/// fact and the input's `(c, h, w)`.
pub fn batch1_conv<'a>(
    model: &'a TypedModel,
    node: &'a TypedNode,
    inputs: usize,
) -> TractResult<Option<(&'a Conv, &'a TypedFact, [usize; 3])>> {
    let Some(conv) = node.op_as::<Conv>() else { return Ok(None) };
    if conv.kernel_fmt != KernelFormat::OIHW
        || !matches!(conv.pool_spec.data_format, DataFormat::NCHW | DataFormat::CHW)
        || conv.pool_spec.kernel_shape.len() != 2
        || node.inputs.len() != inputs
    {
        return Ok(None);
    }
    let input = model.outlet_fact(node.inputs[0])?;
    let chw = match input.shape.as_concrete() {
        Some(&[1, c, h, w]) if conv.pool_spec.data_format == DataFormat::NCHW => [c, h, w],
        Some(&[c, h, w]) if conv.pool_spec.data_format == DataFormat::CHW => [c, h, w],
        _ => return Ok(None),
    };
    Ok(Some((conv, input, chw)))
}

/// The constant quantization parameters of a quantized `Conv` (tract's 9 inputs: x, kernel,
/// then these), what both of our int8 convolutions start from.
pub struct QuantParams {
    /// Input and output zero points and scales (one for the tensor).
    pub x0: f64,
    pub x_scale: f64,
    pub y0: f64,
    pub y_scale: f64,
    /// Per output channel (a single value repeated): weight zero points and scales, and bias.
    pub k0: Vec<f64>,
    pub k_scale: Vec<f64>,
    pub bias: Vec<f64>,
}

impl QuantParams {
    /// From the constants after the kernel (`bias, x0, x_scale, k0, k_scale, y0, y_scale`), for
    /// `channels` output channels; `None` if one is not constant, not numeric, or the wrong size.
    pub fn new(consts: &[Arc<Tensor>], channels: usize) -> Option<QuantParams> {
        let per_channel = |t: &Tensor| -> Option<Vec<f64>> {
            let view = t.try_as_plain_ram().ok()?;
            let values: Vec<f64> = match t.datum_type().unquantized() {
                DatumType::F32 => view.as_slice::<f32>().ok()?.iter().map(|v| *v as f64).collect(),
                DatumType::I32 => view.as_slice::<i32>().ok()?.iter().map(|v| *v as f64).collect(),
                DatumType::I8 => view.as_slice::<i8>().ok()?.iter().map(|v| *v as f64).collect(),
                DatumType::U8 => view.as_slice::<u8>().ok()?.iter().map(|v| *v as f64).collect(),
                _ => return None,
            };
            match values.len() {
                1 => Some(vec![values[0]; channels]),
                len if len == channels => Some(values),
                _ => None,
            }
        };
        let scalar = |t: &Tensor| per_channel(t).filter(|v| v.iter().all(|x| *x == v[0])).map(|v| v[0]);
        let [bias, x0, x_scale, k0, k_scale, y0, y_scale] = consts else { return None };
        Some(QuantParams {
            x0: scalar(x0)?,
            x_scale: scalar(x_scale)?,
            y0: scalar(y0)?,
            y_scale: scalar(y_scale)?,
            k0: per_channel(k0)?,
            k_scale: per_channel(k_scale)?,
            bias: per_channel(bias)?,
        })
    }
}

/// What each output band of an fp32 convolution (`gemm_conv`, and `sgemm`, its AVX-512 kernel)
/// starts from and ends with, around the GEMM: `clamp(bias + residual + W · cols)`.
pub(super) struct Epilogue<'a> {
    /// One value per output channel.
    pub bias: Option<&'a [f32]>,
    /// The output's layout, `c_out × n`.
    pub residual: Option<&'a [f32]>,
    pub clamp: Option<(f32, f32)>,
}

/// A 2-D convolution's spatial geometry, all concrete: what both of our im2col gathers (int8
/// panels, f32 matrix) work from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ConvShape {
    /// Input channels and size.
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride: [usize; 2],
    pub dilation: [usize; 2],
    /// Padding before (top, left); the padding after only shows in `oh`/`ow`.
    pub pad_before: [usize; 2],
    /// Output size.
    pub oh: usize,
    pub ow: usize,
}

impl ConvShape {
    /// The geometry of `spec` on a `c × h × w` input; `None` unless the kernel is 2-D.
    pub fn new(spec: &PoolSpec, c: usize, h: usize, w: usize) -> Option<Self> {
        let &[kh, kw] = spec.kernel_shape.as_slice() else { return None };
        let padding = spec.computed_padding(&[h, w]);
        Some(ConvShape {
            c,
            h,
            w,
            kh,
            kw,
            stride: [spec.stride(0), spec.stride(1)],
            dilation: [spec.dilation(0), spec.dilation(1)],
            pad_before: [padding[0].pad_before, padding[1].pad_before],
            oh: padding[0].convoluted,
            ow: padding[1].convoluted,
        })
    }

    /// Whether the input is already the im2col matrix (`c × n`): a 1×1, stride-1, unpadded
    /// convolution.
    pub fn is_pointwise(&self) -> bool {
        self.kh == 1
            && self.kw == 1
            && self.stride == [1, 1]
            && self.pad_before == [0, 0]
            && (self.oh, self.ow) == (self.h, self.w)
    }

    /// Output positions: the matrix product's width.
    pub fn n(&self) -> usize {
        self.oh * self.ow
    }

    /// Where row `kk` of the im2col matrix (kernel tap (channel, ki, kj)) reads, for our
    /// gathers (x86_64's GEMMs: `sgemm`, `qgemm_conv`).
    #[cfg(target_arch = "x86_64")]
    pub fn tap(&self, kk: usize) -> Tap {
        let (channel, tap) = (kk / (self.kh * self.kw), kk % (self.kh * self.kw));
        let dy = ((tap / self.kw) * self.dilation[0]) as isize - self.pad_before[0] as isize;
        let dx = ((tap % self.kw) * self.dilation[1]) as isize - self.pad_before[1] as isize;
        let s = self.stride[1] as isize;
        let lo = ((-dx).max(0) + s - 1) / s;
        let hi = ((self.w as isize - dx + s - 1) / s).clamp(0, self.ow as isize);
        Tap { channel, dy, dx, inside: lo.min(hi) as usize..hi as usize }
    }
}

/// One kernel tap's reads (see [`ConvShape::tap`]): output position (oy, ox) reads input row
/// `oy·stride_y + dy`, column `ox·stride_x + dx` of `channel`.
#[cfg(target_arch = "x86_64")]
pub struct Tap {
    pub channel: usize,
    pub dy: isize,
    pub dx: isize,
    /// The output columns whose input column lies inside the image.
    pub inside: std::ops::Range<usize>,
}

impl ConvShape {
    /// A test geometry: `c × h × w` input, `kernel`, `stride`, `dilation`, padding `pad` before
    /// and `after` (per axis).
    #[cfg(test)]
    #[allow(clippy::too_many_arguments)]
    pub fn for_test(
        c: usize,
        h: usize,
        w: usize,
        [kh, kw]: [usize; 2],
        stride: [usize; 2],
        dilation: [usize; 2],
        pad: [usize; 2],
        after: [usize; 2],
    ) -> ConvShape {
        let out =
            |size: usize, i: usize, k: usize| (size + pad[i] + after[i] - (dilation[i] * (k - 1) + 1)) / stride[i] + 1;
        ConvShape { c, h, w, kh, kw, stride, dilation, pad_before: pad, oh: out(h, 0, kh), ow: out(w, 1, kw) }
    }

    /// The input pixel `(y, x)` under kernel tap `(ki, kj)` of output `(oy, ox)`, or `None` in
    /// the padding: what the tests' direct reference convolutions read.
    #[cfg(test)]
    pub fn input_at(&self, oy: usize, ox: usize, ki: usize, kj: usize) -> Option<(usize, usize)> {
        let y = (oy * self.stride[0] + ki * self.dilation[0]).checked_sub(self.pad_before[0])?;
        let x = (ox * self.stride[1] + kj * self.dilation[1]).checked_sub(self.pad_before[1])?;
        (y < self.h && x < self.w).then_some((y, x))
    }
}

/// Puts `replacement(node)` in place of every node it answers for (same inputs and outputs).
/// The replaced nodes are left dangling for `compact()`.
fn replace_ops<O: TypedOp>(
    model: &mut TypedModel,
    replacement: fn(&TypedModel, &TypedNode) -> TractResult<Option<O>>,
) -> TractResult<()> {
    for id in 0..model.nodes.len() {
        let node = &model.nodes[id];
        if let Some(op) = replacement(model, node)? {
            TypedModelPatch::replace_single_op(model, node, &node.inputs, op)?.apply(model)?;
        }
    }
    Ok(())
}
