//! fp32 convolutions on cache-blocked GEMMs instead of tract's kernels.
//!
//! tract 0.23.9 runs a float convolution as its packing ops plus `OptMatMul`, whose kernels
//! (`avx512_mmm_f32_32x12`, ...) stream the whole depth K for every output tile with no cache
//! blocking: on ResNet-50 the matrix products ran at ~70 GFLOP/s on one core of this Xeon where
//! sgemm reaches ~175 (docs/history/PERFORMANCE-journal.md). This op does the convolution as one GEMM,
//! `out[c_out × (h·w)] = W[c_out × K] · cols[K × (h·w)] + bias`, K = c_in·kh·kw, with the ONNX
//! kernel (OIHW) already the row-major W: on CPUs with AVX-512 on our packed kernels
//! ([`super::sgemm`]: weights packed at load, columns gathered straight from the image), else
//! on the `gemm` crate after an im2col pass. A 1×1, stride-1, unpadded convolution multiplies
//! the input itself (C × H·W is already `cols`).
//!
//! Scope: 2-D NCHW (or CHW, as tract makes batch-1 graphs), float32, one group, constant kernel and bias, batch 1 (what Tessera's
//! plans are made for), and the `EinSum` tract's declutter makes of a 1×1 convolution.
//! Anything else (grouped/depthwise, quantized) is left to tract.
//! The replacement happens on the decluttered model, before tract's optimizer. [`fuse_epilogue`]
//! then folds what follows a convolution into it: constants added after it (the 1×1
//! convolutions' bias, which declutter splits off), a residual addition and a ReLU/ReLU6
//! clamp. Each output band starts from bias + residual, the GEMM accumulates onto it and the
//! clamp runs while the band is still in cache: tract ran these as separate element-wise
//! passes over the whole tensor, 20 % of ResNet-50's time.
//! The matrix product splits over the threads of the executor the job runs under (tract's
//! adaptive/latency scheduling), so the scheduling modes keep their meaning.

use std::cell::RefCell;

use gemm::Parallelism;
use tract_linalg::multithread::{Executor, current_tract_executor};
use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::binary::TypedBinOp;
use tract_onnx::tract_core::ops::einsum::EinSum;

use super::depthwise::{Output, Requantize, Values};
use super::{ConvShape, Epilogue};

/// The f32 slice of `values`; `run` lets 8-bit values reach only the depthwise path.
fn f32_values(values: Values<'_>) -> &[f32] {
    match values {
        Values::F32(v) => v,
        _ => unreachable!("GemmConv::run refuses 8-bit input to a GEMM"),
    }
}

/// One convolution's shape, all concrete: the spatial geometry and the output channels.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Geometry {
    conv: ConvShape,
    c_out: usize,
}

impl std::ops::Deref for Geometry {
    type Target = ConvShape;
    fn deref(&self) -> &ConvShape {
        &self.conv
    }
}

impl Geometry {
    /// The GEMM's depth: one row of `cols` per input channel and kernel tap.
    fn k(&self) -> usize {
        self.c * self.kh * self.kw
    }
}

#[derive(Debug, Clone)]
pub struct GemmConv {
    geo: Geometry,
    /// A depthwise convolution (group = channels, one filter each: `weights` is `c × kh·kw`),
    /// run by [`super::depthwise`]'s direct kernel instead of a GEMM.
    depthwise: bool,
    /// `c_out × K` values (the OIHW kernel, or the 1×1 convolution's `O × I`).
    weights: Weights,
    /// `c_out` values, or none.
    bias: Option<Arc<Tensor>>,
    /// Whether the second input (same layout as the output) is added: a fused residual.
    residual: bool,
    /// `(lo, hi)` the output is clamped to: a fused ReLU (0, ∞) or ReLU6 (0, 6).
    clamp: Option<(f32, f32)>,
    /// The replaced node's output shape (`c_out × h_out × w_out`, with or without batch axes).
    output_shape: TVec<usize>,
}

/// A convolution's weights, as the kernel that runs it reads them.
#[derive(Debug, Clone)]
enum Weights {
    /// Row-major `c_out × K` (the depthwise kernel's `c × kh·kw`): the `gemm` crate's operand,
    /// shared with the model's constant.
    Plain(Arc<Tensor>),
    /// Packed once for [`super::sgemm`]'s AVX-512 kernels (the plain copy is not kept).
    #[cfg(target_arch = "x86_64")]
    Packed(Arc<super::sgemm::PackedWeights>),
}

impl Weights {
    /// The weights of a GEMM convolution (`kernel`: `m × k`, checked f32): packed for our
    /// kernels when this CPU has AVX-512, else plain for the `gemm` crate.
    fn for_gemm(kernel: Arc<Tensor>, m: usize, k: usize) -> Weights {
        #[cfg(target_arch = "x86_64")]
        if super::sgemm::available() {
            let plain = f32s(&kernel).expect("checked f32 weights");
            return Weights::Packed(Arc::new(super::sgemm::PackedWeights::new(plain, m, k)));
        }
        let _ = (m, k);
        Weights::Plain(kernel)
    }

    /// The plain values, if these are not packed.
    fn plain(&self) -> Option<&[f32]> {
        match self {
            Weights::Plain(t) => f32s(t),
            #[cfg(target_arch = "x86_64")]
            Weights::Packed(_) => None,
        }
    }
}

impl PartialEq for Weights {
    /// The same tensor first: tract compares ops while it optimizes, and comparing megabytes of
    /// weights value by value showed in the load time.
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Weights::Plain(a), Weights::Plain(b)) => Arc::ptr_eq(a, b) || a == b,
            #[cfg(target_arch = "x86_64")]
            (Weights::Packed(a), Weights::Packed(b)) => Arc::ptr_eq(a, b) || a == b,
            #[cfg(target_arch = "x86_64")]
            _ => false,
        }
    }
}

impl PartialEq for GemmConv {
    fn eq(&self, other: &Self) -> bool {
        self.geo == other.geo
            && self.depthwise == other.depthwise
            && self.weights == other.weights
            && self.bias == other.bias
            && self.residual == other.residual
            && self.clamp.map(|(l, h)| (l.to_bits(), h.to_bits()))
                == other.clamp.map(|(l, h)| (l.to_bits(), h.to_bits()))
    }
}
impl Eq for GemmConv {}

/// `Some(op)` for a convolution this op handles (see the module doc), else `None`.
pub fn replacement(model: &TypedModel, node: &TypedNode) -> TractResult<Option<GemmConv>> {
    let Some((conv, input, [c_in, h, w])) = super::batch1_conv(model, node, 3)? else { return Ok(None) };
    if conv.q_params.is_some() {
        return Ok(None);
    }
    let (Some(kernel), Some(bias)) =
        (model.outlet_fact(node.inputs[1])?.konst.clone(), model.outlet_fact(node.inputs[2])?.konst.clone())
    else {
        return Ok(None);
    };
    if input.datum_type != f32::datum_type() || !is_plain_f32(&kernel) {
        return Ok(None);
    }
    let [c_out, kc, kh, kw] = *kernel.shape() else { return Ok(None) };
    // One group (a GEMM), or one group per channel with one filter each (depthwise).
    let depthwise = conv.group == c_in && c_in > 1 && kc == 1 && c_out == c_in;
    if !(conv.group == 1 && kc == c_in || depthwise) {
        return Ok(None);
    }
    let Some(shape) = ConvShape::new(&conv.pool_spec, c_in, h, w) else { return Ok(None) };
    let geo = Geometry { conv: shape, c_out };
    if [geo.kh, geo.kw] != [kh, kw] {
        return Ok(None);
    }
    if geo.oh == 0 || geo.ow == 0 {
        return Ok(None);
    }
    let bias = match bias.len() {
        _ if !is_plain_f32(&bias) => return Ok(None),
        1 if bias.try_as_plain_ram()?.as_slice::<f32>()?[0] == 0.0 => None,
        len if len == c_out => Some(bias),
        _ => return Ok(None),
    };
    let Some(output_shape) = output_shape(model, node, c_out * geo.n()) else { return Ok(None) };
    // The OIHW kernel is already the row-major `c_out × K` matrix: share the constant's own
    // tensor rather than copy it, or pack it (one copy of the weights per loaded version).
    let weights = if depthwise { Weights::Plain(kernel) } else { Weights::for_gemm(kernel, c_out, geo.k()) };
    Ok(Some(GemmConv { geo, depthwise, weights, bias, residual: false, clamp: None, output_shape }))
}

/// A float depthwise convolution of `conv`'s geometry (`weights`: `c × kh·kw`, `bias`: `c`),
/// for [`super::qdepthwise`], which feeds it dequantized values.
pub(super) fn float_depthwise(
    conv: ConvShape,
    weights: Arc<Tensor>,
    bias: Arc<Tensor>,
    output_shape: TVec<usize>,
) -> GemmConv {
    let c_out = conv.c;
    GemmConv {
        geo: Geometry { conv, c_out },
        depthwise: true,
        weights: Weights::Plain(weights),
        bias: Some(bias),
        residual: false,
        clamp: None,
        output_shape,
    }
}

/// Whether `eval` can read `t` as one contiguous f32 slice (checked here so it need not fail there).
fn is_plain_f32(t: &Tensor) -> bool {
    f32s(t).is_some()
}

/// `t`'s values, if it is one contiguous f32 slice.
fn f32s(t: &Tensor) -> Option<&[f32]> {
    if t.datum_type() != f32::datum_type() {
        return None;
    }
    t.try_as_plain_ram().and_then(|v| v.as_slice::<f32>()).ok()
}

/// The concrete f32 output shape of `node`, if it holds `len` values.
fn output_shape(model: &TypedModel, node: &TypedNode, len: usize) -> Option<TVec<usize>> {
    let fact = model.outlet_fact(OutletId::new(node.id, 0)).ok()?;
    let shape: TVec<usize> = fact.shape.as_concrete()?.into();
    (fact.datum_type == f32::datum_type() && shape.iter().product::<usize>() == len).then_some(shape)
}

/// `Some(op)` for the `EinSum` tract's declutter makes of a 1×1 convolution
/// (`NIHW,OI->NOHW` and its batch-free variants): constant `O × I` weights times the input's
/// `I × (H·W)`, with any other axis of size 1 (so the memory layout is exactly the GEMM's).
pub fn pointwise_replacement(model: &TypedModel, node: &TypedNode) -> TractResult<Option<GemmConv>> {
    let Some(einsum) = node.op_as::<EinSum>() else { return Ok(None) };
    if einsum.q_params.is_some() || einsum.operating_dt != f32::datum_type() || node.inputs.len() != 2 {
        return Ok(None);
    }
    let input = model.outlet_fact(node.inputs[0])?;
    let Some(kernel) = model.outlet_fact(node.inputs[1])?.konst.clone() else { return Ok(None) };
    let (Some(dims), &[o_len, i_len]) = (input.shape.as_concrete(), kernel.shape()) else { return Ok(None) };
    if input.datum_type != f32::datum_type() || !is_plain_f32(&kernel) {
        return Ok(None);
    }
    let (inputs, outputs) = einsum.axes.to_strs();
    let (Some(x), Some(w), Some(out)) = (inputs.first(), inputs.get(1), outputs.first()) else { return Ok(None) };
    let &[o, i] = w.chars().collect::<Vec<_>>().as_slice() else { return Ok(None) };
    // The input's axes without its size-1 ones must be I then the spatial ones; the output's,
    // O then the same spatial ones in the same order.
    let x: Vec<char> = x.chars().zip(dims).filter(|(_, d)| **d != 1).map(|(c, _)| c).collect();
    let Some((&first, spatial)) = x.split_first() else { return Ok(None) };
    let Some(out_dims) = output_shape(model, node, o_len * dims.iter().product::<usize>() / i_len.max(1)) else {
        return Ok(None);
    };
    let out: Vec<char> = out.chars().zip(&out_dims).filter(|(_, d)| **d != 1).map(|(c, _)| c).collect();
    if first != i || out.first() != Some(&o) || out[1..] != *spatial || dims.iter().product::<usize>() % i_len != 0 {
        return Ok(None);
    }
    let n = dims.iter().product::<usize>() / i_len;
    let conv = ConvShape {
        c: i_len,
        h: n,
        w: 1,
        kh: 1,
        kw: 1,
        stride: [1, 1],
        dilation: [1, 1],
        pad_before: [0, 0],
        oh: n,
        ow: 1,
    };
    let geo = Geometry { conv, c_out: o_len };
    Ok(Some(GemmConv {
        weights: Weights::for_gemm(kernel, o_len, i_len),
        geo,
        depthwise: false,
        bias: None,
        residual: false,
        clamp: None,
        output_shape: out_dims,
    }))
}

/// A patch folding into the [`GemmConv`] `node` the chain of single-use element-wise ops after
/// it: `Add` of a per-channel or scalar constant (into the bias), one `Add` of a tensor of the
/// output's layout (the residual), then `Max`/`Min` with a uniform constant (the clamp).
/// `None` when nothing follows that can be fused.
pub fn fuse_epilogue(model: &TypedModel, node: &TypedNode) -> TractResult<Option<TypedModelPatch>> {
    let Some(conv) = node.op_as::<GemmConv>() else { return Ok(None) };
    if conv.residual || conv.clamp.is_some() {
        return Ok(None);
    }
    let g = &conv.geo;
    let len = g.c_out * g.n();
    let mut fused = conv.clone();
    let mut bias: Option<Vec<f32>> = None;
    let mut residual = None;
    let mut last = OutletId::new(node.id, 0);
    let outputs = model.output_outlets()?;
    while let [succ] = model.outlet_successors(last) {
        if outputs.contains(&last) {
            break;
        }
        let succ = &model.nodes[succ.node];
        let Some(bin) = succ.op_as::<TypedBinOp>() else { break };
        let [a, b] = succ.inputs[..] else { break };
        if a == b {
            break;
        }
        let other = if a == last { b } else { a };
        let fact = model.outlet_fact(OutletId::new(succ.id, 0))?;
        let other_fact = model.outlet_fact(other)?;
        if fact.datum_type != f32::datum_type()
            || other_fact.datum_type != f32::datum_type()
            || fact.shape.as_concrete().is_none_or(|s| s.iter().product::<usize>() != len)
        {
            break;
        }
        let konst = other_fact.konst.as_deref().and_then(f32s);
        match (bin.0.name(), konst) {
            ("Add", Some(k)) if fused.clamp.is_none() => {
                let Some(per_channel) = per_channel(k, other_fact.shape.as_concrete(), &fact.shape, g) else { break };
                let sum = bias.get_or_insert_with(|| match &conv.bias {
                    Some(b) => f32s(b).map(<[f32]>::to_vec).unwrap_or_default(),
                    None => vec![0.0; g.c_out],
                });
                sum.iter_mut().zip(per_channel).for_each(|(s, v)| *s += v);
            }
            ("Add", None) if fused.clamp.is_none() && residual.is_none() && same_layout(other_fact, fact) => {
                residual = Some(other);
                fused.residual = true;
            }
            ("Max" | "Min", Some(k)) if !k.is_empty() && k.iter().all(|v| *v == k[0]) => {
                let (lo, hi) = fused.clamp.unwrap_or((f32::NEG_INFINITY, f32::INFINITY));
                let (lo, hi) = if bin.0.name() == "Max" { (lo.max(k[0]), hi) } else { (lo, hi.min(k[0])) };
                if lo.is_nan() || hi.is_nan() || lo > hi {
                    break;
                }
                fused.clamp = Some((lo, hi));
            }
            _ => break,
        }
        last = OutletId::new(succ.id, 0);
        fused.output_shape = fact.shape.as_concrete().expect("checked above").into();
    }
    if last.node == node.id {
        return Ok(None);
    }
    if let Some(bias) = bias {
        fused.bias = Some(tensor1(&bias).into_arc_tensor());
    }
    let mut patch = TypedModelPatch::new("fuse GemmConv epilogue");
    let mut inputs = tvec![patch.tap_model(model, node.inputs[0])?];
    if let Some(residual) = residual {
        inputs.push(patch.tap_model(model, residual)?);
    }
    let out = patch.wire_node(&node.name, fused, &inputs)?[0];
    patch.shunt_outside(model, last, out)?;
    Ok(Some(patch))
}

/// `k` (of shape `shape`) as one value per output channel, if adding it to an output of
/// `out` shape adds the same value to every position of a channel.
fn per_channel(k: &[f32], shape: Option<&[usize]>, out: &ShapeFact, g: &Geometry) -> Option<Vec<f32>> {
    if k.len() == 1 {
        return Some(vec![k[0]; g.c_out]);
    }
    let (shape, out) = (shape?, out.as_concrete()?);
    if k.len() != g.c_out || shape.len() > out.len() {
        return None;
    }
    // Right-aligned, the constant's one non-1 axis must be the output's channel axis: the one
    // of size c_out followed by exactly the spatial positions.
    let offset = out.len() - shape.len();
    let axis = offset + shape.iter().position(|&d| d != 1)?;
    (out[axis] == g.c_out && out[axis + 1..].iter().product::<usize>() == g.n()).then(|| k.to_vec())
}

/// Whether `a` and `b` hold the same values in the same order (shapes equal but for 1s).
fn same_layout(a: &TypedFact, b: &TypedFact) -> bool {
    let squeeze =
        |f: &TypedFact| f.shape.as_concrete().map(|s| s.iter().copied().filter(|&d| d != 1).collect::<Vec<_>>());
    squeeze(a).is_some() && squeeze(a) == squeeze(b)
}

thread_local! {
    /// The depthwise kernel's padded planes and accumulator, kept zeroed where they pad.
    static DEPTHWISE: RefCell<super::depthwise::Scratch> = RefCell::new(Default::default());
    /// The im2col matrix, reused by every convolution run on this thread (sized for the
    /// largest): allocating it per call would fault its pages in every time.
    static COLS: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    /// [`super::sgemm`]'s column panel.
    #[cfg(target_arch = "x86_64")]
    static SGEMM: RefCell<super::sgemm::Scratch> = RefCell::new(Default::default());
}

impl Op for GemmConv {
    fn name(&self) -> StaticName {
        if self.depthwise { "DepthwiseConv" } else { "GemmConv" }.into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        let g = &self.geo;
        let epilogue = [
            self.bias.as_ref().map(|_| " +bias".to_string()),
            self.residual.then(|| " +residual".to_string()),
            self.clamp.map(|(lo, hi)| format!(" clamp:[{lo}, {hi}]")),
        ];
        Ok(vec![format!(
            "m:{} k:{} n:{} kernel:{}x{} stride:{:?} dilation:{:?} pad:{:?}{}",
            g.c_out,
            g.k(),
            g.n(),
            g.kh,
            g.kw,
            g.stride,
            g.dilation,
            g.pad_before,
            epilogue.into_iter().flatten().collect::<String>()
        )])
    }

    op_as_typed_op!();
}

impl EvalOp for GemmConv {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let g = &self.geo;
        let input = inputs[0].to_plain_array_view::<f32>()?;
        let input = input.as_slice().context("GemmConv: input is not contiguous")?;
        ensure!(input.len() == g.c * g.h * g.w, "GemmConv: input has {} values, expected {:?}", input.len(), g);
        let residual = match (self.residual, inputs.get(1)) {
            (true, Some(r)) => Some(r.to_plain_array_view::<f32>()?),
            (false, _) => None,
            (true, None) => bail!("GemmConv: the residual input is missing"),
        };
        let residual = match &residual {
            Some(r) => Some(r.as_slice().context("GemmConv: residual is not contiguous")?),
            None => None,
        };
        Ok(tvec!(self.run(Values::F32(input), residual)?.into_tvalue()))
    }
}

impl GemmConv {
    /// The convolution of `input` (`c × h × w` values), plus `residual` when the op has one.
    /// 8-bit input values are taken only by a depthwise convolution (see [`super::qdepthwise`]).
    pub(super) fn run(&self, input: Values, residual: Option<&[f32]>) -> TractResult<Tensor> {
        let g = &self.geo;
        ensure!(input.len() == g.c * g.h * g.w, "GemmConv: input has {} values, expected {:?}", input.len(), g);
        ensure!(self.depthwise || matches!(input, Values::F32(_)), "GemmConv: 8-bit input to a GEMM");
        ensure!(residual.is_none_or(|r| r.len() == g.c_out * g.n()), "GemmConv: residual has the wrong size");
        let bias = match &self.bias {
            Some(b) => Some(b.try_as_plain_ram()?.as_slice::<f32>()?),
            None => None,
        };
        let epilogue = Epilogue { bias, residual, clamp: self.clamp };
        // SAFETY: every value is written by `band`: by the bias/residual start or, without
        // them, by the GEMM, which then does not read the destination; f32 has no invalid
        // bit patterns anyway.
        let mut output = unsafe { Tensor::uninitialized::<f32>(&self.output_shape)? };
        {
            let mut view = output.try_as_plain_ram_mut()?;
            let out = view.as_slice_mut::<f32>()?;
            let dst = Dst { ptr: out.as_mut_ptr(), len: out.len() };
            self.dispatch(input, &epilogue, &dst, None);
        }
        Ok(output)
    }

    /// A depthwise convolution of 8-bit or f32 `input` (no residual), requantized into `out`
    /// (an i8 or u8 tensor of the output's shape) as each channel leaves the accumulator.
    pub(super) fn run_depthwise_quantized(
        &self,
        input: Values,
        requantize: Requantize,
        out: &mut Tensor,
    ) -> TractResult<()> {
        let g = &self.geo;
        ensure!(self.depthwise && input.len() == g.c * g.h * g.w, "GemmConv: not a depthwise input {:?}", g);
        ensure!(out.len() == g.c * g.n(), "GemmConv: quantized output has the wrong size");
        let bias = match &self.bias {
            Some(b) => Some(b.try_as_plain_ram()?.as_slice::<f32>()?),
            None => None,
        };
        let epilogue = Epilogue { bias, residual: None, clamp: self.clamp };
        let len = out.len();
        let mut view = out.try_as_plain_ram_mut()?;
        let ptr = match view.datum_type().unquantized() {
            DatumType::I8 => QuantizedPtr::I8(view.as_slice_mut::<i8>()?.as_mut_ptr()),
            DatumType::U8 => QuantizedPtr::U8(view.as_slice_mut::<u8>()?.as_mut_ptr()),
            other => bail!("GemmConv: quantized output type {other:?}"),
        };
        let quantized = QuantizedDst { ptr, len, requantize };
        self.dispatch(input, &epilogue, &Dst { ptr: std::ptr::null_mut(), len: 0 }, Some(&quantized));
        Ok(())
    }

    /// Runs the convolution on the current tract executor's threads, or on this one.
    fn dispatch(&self, input: Values, epilogue: &Epilogue, dst: &Dst, quantized: Option<&QuantizedDst>) {
        let g = &self.geo;
        match current_tract_executor() {
            Executor::MultiThread(pool) if pool.current_num_threads() > 1 => {
                let threads = pool.current_num_threads();
                pool.install(|| self.split(input, epilogue, dst, quantized, threads));
            }
            _ if self.depthwise => self.depthwise(input, epilogue, dst, quantized, 0..g.c),
            _ => self.band(f32_values(input), epilogue, dst, 0..g.oh, 0..g.c_out),
        }
    }
}

/// The output buffer, shared by the threads that each write their own band of it.
struct Dst {
    ptr: *mut f32,
    len: usize,
}

/// An 8-bit output buffer a depthwise convolution requantizes into, shared like [`Dst`].
pub(super) struct QuantizedDst {
    ptr: QuantizedPtr,
    len: usize,
    requantize: Requantize,
}

#[derive(Clone, Copy)]
enum QuantizedPtr {
    I8(*mut i8),
    U8(*mut u8),
}

// SAFETY: as for `Dst`.
unsafe impl Send for QuantizedDst {}
unsafe impl Sync for QuantizedDst {}

// SAFETY: `GemmConv::split` gives every thread a disjoint set of output elements (other rows,
// or other columns of the same rows), and the buffer outlives the parallel section.
unsafe impl Send for Dst {}
unsafe impl Sync for Dst {}

impl GemmConv {
    /// Splits the convolution over `threads`: by bands of output rows (each thread gathers its
    /// own im2col columns) when there are enough columns, else by output channels.
    fn split(&self, input: Values, epilogue: &Epilogue, dst: &Dst, quantized: Option<&QuantizedDst>, threads: usize) {
        use rayon::prelude::*;
        let g = &self.geo;
        let chunk = |len: usize, i: usize| (len * i / threads)..(len * (i + 1) / threads);
        // Channel bands start on a kernel panel boundary (whole panels of packed weights).
        let panels = |i: usize| {
            let bound = |i: usize| (g.c_out.div_ceil(PANEL_ROWS) * i / threads * PANEL_ROWS).min(g.c_out);
            bound(i)..bound(i + 1)
        };
        if self.depthwise {
            (0..threads).into_par_iter().for_each(|i| self.depthwise(input, epilogue, dst, quantized, chunk(g.c, i)));
            return;
        }
        let input = f32_values(input);
        if g.oh >= threads && g.n() >= threads * COLUMNS_PER_THREAD {
            (0..threads).into_par_iter().for_each(|i| self.band(input, epilogue, dst, chunk(g.oh, i), 0..g.c_out));
        } else {
            (0..threads).into_par_iter().for_each(|i| self.band(input, epilogue, dst, 0..g.oh, panels(i)));
        }
    }

    /// The depthwise convolution of `channels`, on this thread, into `dst` (f32) or `quantized`.
    fn depthwise(
        &self,
        input: Values,
        epilogue: &Epilogue,
        dst: &Dst,
        quantized: Option<&QuantizedDst>,
        channels: std::ops::Range<usize>,
    ) {
        let g = &self.geo;
        let (plane, taps, n) = (g.h * g.w, g.kh * g.kw, g.n());
        let weights = self.weights.plain().expect("depthwise weights are plain f32");
        let len = quantized.map_or(dst.len, |q| q.len);
        assert!(weights.len() == g.c * taps && len == g.c * n && channels.end <= g.c);
        DEPTHWISE.with_borrow_mut(|scratch| {
            for ch in channels {
                // SAFETY: channel `ch`'s plane of the output (inside it, asserted above), which
                // no other thread writes (see `split`).
                let out = unsafe {
                    match quantized {
                        None => Output::F32(std::slice::from_raw_parts_mut(dst.ptr.add(ch * n), n)),
                        Some(&QuantizedDst { ptr: QuantizedPtr::I8(p), requantize, .. }) => {
                            Output::I8(std::slice::from_raw_parts_mut(p.add(ch * n), n), requantize)
                        }
                        Some(&QuantizedDst { ptr: QuantizedPtr::U8(p), requantize, .. }) => {
                            Output::U8(std::slice::from_raw_parts_mut(p.add(ch * n), n), requantize)
                        }
                    }
                };
                let channel = super::depthwise::Channel {
                    g,
                    weights: &weights[ch * taps..][..taps],
                    plane: input.slice(ch * plane..(ch + 1) * plane),
                    bias: epilogue.bias.map_or(0.0, |b| b[ch]),
                    residual: epilogue.residual.map(|r| &r[ch * n..][..n]),
                    clamp: epilogue.clamp,
                };
                channel.run(out, scratch);
            }
        });
    }

    /// `out[channels, columns of output rows oys] = clamp(bias + residual + W[channels] · cols(oys))`,
    /// on this thread. (Cutting the band into L2-sized blocks of rows, gather to clamp, was
    /// measured no faster on ResNet-50: the GEMM packs its operands into cache-sized panels
    /// itself, and more calls pack the weights more often.)
    fn band(
        &self,
        input: &[f32],
        epilogue: &Epilogue,
        dst: &Dst,
        oys: std::ops::Range<usize>,
        channels: std::ops::Range<usize>,
    ) {
        let g = &self.geo;
        let (n, k) = (g.n(), g.k());
        let (c0, width) = (oys.start * g.ow, oys.len() * g.ow);
        if width == 0 || channels.is_empty() {
            return;
        }
        #[cfg(target_arch = "x86_64")]
        if let Weights::Packed(packed) = &self.weights {
            assert!(packed.m() == g.c_out && packed.k() == k && dst.len == g.c_out * n && channels.end <= g.c_out);
            SGEMM.with_borrow_mut(|scratch| {
                // SAFETY: `dst` holds c_out × n values (asserted above), of which only this
                // thread writes these channels in these columns (see `split`); packed weights
                // exist only where `sgemm::available()`.
                unsafe {
                    super::sgemm::conv(g, packed, input, epilogue, dst.ptr, (channels, c0..c0 + width), scratch);
                }
            });
            return;
        }
        let weights = self.weights.plain().expect("plain or packed weights");
        assert!(weights.len() == g.c_out * k && dst.len == g.c_out * n && channels.end <= g.c_out);
        // This band's output: `width` values from `c0` in each of `channels`.
        // SAFETY: inside `dst` (asserted above) and written by no other thread (see `split`);
        // the GEMM below writes through the same memory only while these borrows are unused.
        let rows = || {
            channels.clone().map(move |ch| unsafe { std::slice::from_raw_parts_mut(dst.ptr.add(ch * n + c0), width) })
        };
        let start = epilogue.bias.is_some() || epilogue.residual.is_some();
        match (epilogue.bias, epilogue.residual) {
            (Some(bias), Some(res)) => rows().zip(channels.clone()).for_each(|(row, ch)| {
                let (b, res) = (bias[ch], &res[ch * n + c0..][..width]);
                row.iter_mut().zip(res).for_each(|(o, r)| *o = r + b);
            }),
            (Some(bias), None) => rows().zip(channels.clone()).for_each(|(row, ch)| row.fill(bias[ch])),
            (None, Some(res)) => {
                rows().zip(channels.clone()).for_each(|(row, ch)| row.copy_from_slice(&res[ch * n + c0..][..width]))
            }
            (None, None) => {}
        }
        let multiply = |rhs: *const f32, rhs_rs: usize| {
            // SAFETY: lhs = weights rows `channels` (m×k, row stride k, inside `weights`); rhs
            // = k×width with row stride rhs_rs, inside the caller's matrix; dst = rows
            // `channels`, columns c0..c0+width of the c_out×n output (inside `dst`, asserted
            // above), which no other thread writes (see `split`).
            unsafe {
                gemm::gemm(
                    channels.len(),
                    width,
                    k,
                    dst.ptr.add(channels.start * n + c0),
                    1,
                    n as isize,
                    start,
                    weights.as_ptr().add(channels.start * k),
                    1,
                    k as isize,
                    rhs,
                    1,
                    rhs_rs as isize,
                    1.0,
                    1.0,
                    false,
                    false,
                    false,
                    Parallelism::None,
                )
            }
        };
        if g.is_pointwise() {
            // The input is the k×n matrix; this band is its columns c0..c0+width.
            assert!(input.len() == k * n);
            multiply(input[c0..].as_ptr(), n);
        } else {
            COLS.with_borrow_mut(|cols| {
                cols.resize(cols.len().max(k * width), 0.0);
                let cols = &mut cols[..k * width];
                im2col(g, input, cols, oys);
                multiply(cols.as_ptr(), width);
            });
        }
        if let Some((lo, hi)) = epilogue.clamp {
            rows().for_each(|row| row.iter_mut().for_each(|v| *v = v.max(lo).min(hi)));
        }
    }
}

/// Rows of a packed weight panel (8 for the `gemm` crate too: it does not care).
#[cfg(target_arch = "x86_64")]
const PANEL_ROWS: usize = super::sgemm::MR;
#[cfg(not(target_arch = "x86_64"))]
const PANEL_ROWS: usize = 8;

/// Below this many output columns per thread, threads split the output channels instead (a
/// narrow GEMM wastes the microkernel's width).
const COLUMNS_PER_THREAD: usize = 128;

/// Fills `cols` (`K × (oys.len()·w_out)`, row-major) from the `c_in × h × w` image: row
/// (c, ki, kj) holds, for every output position in output rows `oys`, the input pixel under
/// kernel tap (ki, kj) of channel c, or 0 in the padding.
fn im2col(g: &Geometry, image: &[f32], cols: &mut [f32], oys: std::ops::Range<usize>) {
    let n = oys.len() * g.ow;
    let mut rows = cols.chunks_exact_mut(n);
    for c in 0..g.c {
        let plane = &image[c * g.h * g.w..(c + 1) * g.h * g.w];
        for ki in 0..g.kh {
            for kj in 0..g.kw {
                let row = rows.next().expect("K rows");
                let dy = (ki * g.dilation[0]) as isize - g.pad_before[0] as isize;
                let dx = (kj * g.dilation[1]) as isize - g.pad_before[1] as isize;
                // Output columns whose input x is inside the image: x = ox·s + dx ∈ [0, w).
                let s = g.stride[1] as isize;
                let ox_lo = ((-dx).max(0) + s - 1) / s;
                let ox_hi = ((g.w as isize - dx + s - 1) / s).clamp(0, g.ow as isize);
                let (ox_lo, ox_hi) = (ox_lo.min(ox_hi) as usize, ox_hi as usize);
                for (oy, out) in oys.clone().zip(row.chunks_exact_mut(g.ow)) {
                    let y = (oy * g.stride[0]) as isize + dy;
                    if y < 0 || y >= g.h as isize || ox_lo == ox_hi {
                        out.fill(0.0);
                        continue;
                    }
                    let line = &plane[y as usize * g.w..(y as usize + 1) * g.w];
                    out[..ox_lo].fill(0.0);
                    out[ox_hi..].fill(0.0);
                    let x0 = (ox_lo as isize * s + dx) as usize;
                    if g.stride[1] == 1 {
                        out[ox_lo..ox_hi].copy_from_slice(&line[x0..x0 + (ox_hi - ox_lo)]);
                    } else {
                        for (o, x) in out[ox_lo..ox_hi].iter_mut().zip((x0..).step_by(g.stride[1])) {
                            *o = line[x];
                        }
                    }
                }
            }
        }
    }
}

impl TypedOp for GemmConv {
    fn output_facts(&self, _inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec!(f32::fact(&*self.output_shape)))
    }

    as_op!();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A direct convolution, the reference.
    fn direct(g: &Geometry, image: &[f32], weights: &[f32], bias: &[f32]) -> Vec<f32> {
        let mut out = vec![0f32; g.c_out * g.n()];
        for co in 0..g.c_out {
            for oy in 0..g.oh {
                for ox in 0..g.ow {
                    let mut acc = bias.get(co).copied().unwrap_or(0.0);
                    for c in 0..g.c {
                        for ki in 0..g.kh {
                            for kj in 0..g.kw {
                                if let Some((y, x)) = g.input_at(oy, ox, ki, kj) {
                                    acc += image[(c * g.h + y) * g.w + x]
                                        * weights[((co * g.c + c) * g.kh + ki) * g.kw + kj];
                                }
                            }
                        }
                    }
                    out[(co * g.oh + oy) * g.ow + ox] = acc;
                }
            }
        }
        out
    }

    #[test]
    fn matches_a_direct_convolution_over_awkward_geometries() {
        // (c_in, h, w, c_out, k, stride, dilation, pad): 1x1 stride 1 and 2, 3x3 padded,
        // stride 3, dilation 2, a kernel wider than the padded input's tail, odd sizes.
        let cases = [
            (5, 7, 9, 4, [1, 1], [1, 1], [1, 1], [0, 0]),
            (6, 8, 8, 3, [1, 1], [2, 2], [1, 1], [0, 0]),
            (3, 9, 11, 5, [3, 3], [1, 1], [1, 1], [1, 1]),
            (2, 10, 13, 2, [3, 3], [3, 3], [1, 1], [1, 1]),
            (4, 12, 12, 3, [3, 3], [1, 1], [2, 2], [2, 2]),
            (3, 5, 4, 2, [5, 7], [2, 1], [1, 1], [2, 3]),
            (1, 3, 3, 1, [3, 3], [1, 1], [1, 1], [0, 0]),
            // Wide enough that 3 threads split it by bands of output rows.
            (3, 20, 40, 5, [3, 3], [1, 1], [1, 1], [1, 1]),
            (7, 24, 30, 6, [1, 1], [1, 1], [1, 1], [0, 0]),
            // Deep enough for several K-blocks, with a part panel of rows and of columns.
            (40, 9, 9, 20, [3, 3], [1, 1], [1, 1], [1, 1]),
            (64, 7, 7, 16, [3, 3], [1, 1], [1, 1], [1, 1]),
            // A last column panel of 1-4 columns (the narrow kernel, after the panel before
            // it): n = 49 pointwise, 50, 51 pointwise, 100; and an output of 4 columns only.
            (9, 7, 7, 20, [1, 1], [1, 1], [1, 1], [0, 0]),
            (3, 5, 10, 4, [3, 3], [1, 1], [1, 1], [1, 1]),
            (2, 3, 17, 3, [1, 1], [1, 1], [1, 1], [0, 0]),
            (6, 10, 10, 9, [3, 3], [1, 1], [1, 1], [1, 1]),
            (4, 3, 3, 5, [3, 3], [2, 2], [1, 1], [1, 1]),
        ];
        let three_threads = Executor::multithread(3);
        for (c_in, h, w, c_out, [kh, kw], stride, dilation, pad) in cases {
            let out_dim =
                |size: usize, k: usize, s: usize, d: usize, p: usize| (size + 2 * p - (d * (k - 1) + 1)) / s + 1;
            let conv = ConvShape {
                c: c_in,
                h,
                w,
                kh,
                kw,
                stride,
                dilation,
                pad_before: pad,
                oh: out_dim(h, kh, stride[0], dilation[0], pad[0]),
                ow: out_dim(w, kw, stride[1], dilation[1], pad[1]),
            };
            let geo = Geometry { conv, c_out };
            let value = |i: usize| ((i * 7919 % 997) as f32 / 997.0) - 0.5;
            let image: Vec<f32> = (0..c_in * h * w).map(value).collect();
            let weights: Vec<f32> = (0..c_out * geo.k()).map(|i| value(i * 31 + 5)).collect();
            let bias: Vec<f32> = (0..c_out).map(|i| value(i + 100)).collect();
            let residual: Vec<f32> = (0..c_out * geo.n()).map(|i| value(i * 13 + 7)).collect();
            let kernel = tensor1(&weights).into_shape(&[c_out, geo.k()]).unwrap().into_arc_tensor();
            let mut op = GemmConv {
                geo: geo.clone(),
                depthwise: false,
                weights: Weights::Plain(kernel.clone()),
                bias: Some(tensor1(&bias).into_arc_tensor()),
                residual: false,
                clamp: None,
                output_shape: tvec!(1, c_out, geo.oh, geo.ow),
            };
            let input = tensor1(&image).into_shape(&[1, c_in, h, w]).unwrap().into_tvalue();
            let residual_input = tensor1(&residual).into_shape(&[1, c_out, geo.oh, geo.ow]).unwrap().into_tvalue();
            let plain = direct(&geo, &image, &weights, &bias);
            // Plain, then with the epilogues fusion gives it: a residual, a ReLU6-like clamp.
            let epilogues =
                [(false, None), (true, None), (true, Some((0.0, 0.25))), (false, Some((-0.1, f32::INFINITY)))];
            // On the `gemm` crate, then on the packed AVX-512 kernels where this CPU has them.
            let packed = Weights::for_gemm(kernel.clone(), c_out, geo.k());
            let variants = [(Weights::Plain(kernel.clone()), epilogues), (packed, epilogues)];
            for (weights, (with_residual, clamp)) in variants.into_iter().flat_map(|(w, e)| e.map(|e| (w.clone(), e))) {
                op.weights = weights;
                op.residual = with_residual;
                op.clamp = clamp;
                let inputs =
                    if with_residual { tvec![input.clone(), residual_input.clone()] } else { tvec![input.clone()] };
                let eval = || EvalOp::eval(&op, &EvalContext::out_of_plan(), inputs.clone());
                let want: Vec<f32> = plain
                    .iter()
                    .zip(&residual)
                    .map(|(v, r)| {
                        let v = if with_residual { v + r } else { *v };
                        clamp.map_or(v, |(lo, hi): (f32, f32)| v.max(lo).min(hi))
                    })
                    .collect();
                for got in [
                    eval().unwrap().remove(0),
                    tract_linalg::multithread::multithread_tract_scope(three_threads.clone(), eval).unwrap().remove(0),
                ] {
                    assert_eq!(got.shape(), &[1, c_out, geo.oh, geo.ow]);
                    let max_diff = got
                        .try_as_plain_ram()
                        .unwrap()
                        .as_slice::<f32>()
                        .unwrap()
                        .iter()
                        .zip(&want)
                        .map(|(a, b)| (a - b).abs())
                        .fold(0f32, f32::max);
                    assert!(max_diff < 1e-4, "{geo:?} {with_residual} {clamp:?}: max |gemm - direct| = {max_diff}");
                }
            }
        }
    }
}
