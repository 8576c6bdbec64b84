//! int8 depthwise convolutions run in float on our depthwise kernel.
//!
//! tract 0.23.9 lowers a quantized depthwise convolution (a `QLinearConv` with one group per
//! channel) to one m = 1 int8 matrix product per channel: a seeded MobileNetV2's int8 graph
//! ran 39× slower than its fp32 graph (626 vs 16 ms per image, one thread), nearly all of it in
//! those products. A depthwise convolution does 9 multiply-adds per output value and is
//! bound by memory, not arithmetic, so int8 kernels would buy little there: this op runs
//! [`super::depthwise`] on weights and bias dequantized once at load, dequantizing the input as
//! the kernel stages each channel and requantizing the output as it leaves the accumulator
//! (round half to even, as onnxruntime does, then saturate).
//! The graph's other quantized convolutions keep tract's int8 kernels.

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;

use super::ConvShape;
use super::depthwise::{Requantize, Values};
use super::gemm_conv::{GemmConv, float_depthwise};

#[derive(Debug, Clone, PartialEq)]
pub struct QuantDepthwise {
    /// The float convolution (weights and bias dequantized).
    float: GemmConv,
    /// Input zero point and scale: x = (q - x0) · x_scale (the scale is folded into the weights).
    x0: f32,
    x_scale: f32,
    /// Output zero point and scale: q = round(y / y_scale) + y0.
    y0: f32,
    y_scale: f32,
    /// The replaced node's output type (i8 or u8, possibly with its quantization attached).
    out_dt: DatumType,
    output_shape: TVec<usize>,
}

impl Eq for QuantDepthwise {}

/// `Some(op)` for an int8/uint8 depthwise convolution with constant weights and quantization
/// parameters (per-tensor or per-channel weight scales), batch 1, NCHW/CHW.
pub fn replacement(model: &TypedModel, node: &TypedNode) -> TractResult<Option<QuantDepthwise>> {
    let Some((conv, input, [c, h, w])) = super::batch1_conv(model, node, 9)? else { return Ok(None) };
    if conv.q_params.is_none() {
        return Ok(None);
    }
    let Some(consts) =
        node.inputs[1..].iter().map(|i| model.outlet_fact(*i).ok()?.konst.clone()).collect::<Option<Vec<_>>>()
    else {
        return Ok(None);
    };
    let [kernel, ..] = &consts[..] else { return Ok(None) };
    let out_fact = model.outlet_fact(OutletId::new(node.id, 0))?;
    let Some(output_shape) = out_fact.shape.as_concrete().map(TVec::from) else { return Ok(None) };
    let is_8bit = |dt: DatumType| matches!(dt.unquantized(), DatumType::I8 | DatumType::U8);
    if !is_8bit(input.datum_type) || !is_8bit(out_fact.datum_type) || !is_8bit(kernel.datum_type()) {
        return Ok(None);
    }
    let &[c_out, 1, kh, kw] = kernel.shape() else { return Ok(None) };
    if conv.group != c || c_out != c || c < 2 {
        return Ok(None);
    }
    let Some(shape) = ConvShape::new(&conv.pool_spec, c, h, w) else { return Ok(None) };
    if [shape.kh, shape.kw] != [kh, kw] || output_shape.iter().product::<usize>() != c * shape.n() {
        return Ok(None);
    }
    let Some(params) = super::QuantParams::new(&consts[1..], c) else { return Ok(None) };
    let [x0, x_scale, y0, y_scale] = [params.x0, params.x_scale, params.y0, params.y_scale].map(|v| v as f32);
    let f32s = |v: &[f64]| v.iter().map(|x| *x as f32).collect::<Vec<f32>>();
    let (k0, k_scale, bias) = (f32s(&params.k0), f32s(&params.k_scale), f32s(&params.bias));
    let Some(kernel) = as_f32(kernel) else { return Ok(None) };
    let taps = kh * kw;
    // The input's scale is folded into the weights: the kernel stages `q - x0` only.
    let weights: Vec<f32> = (0..c * taps).map(|i| (kernel[i] - k0[i / taps]) * k_scale[i / taps] * x_scale).collect();
    let bias: Vec<f32> = (0..c).map(|ch| bias[ch] * x_scale * k_scale[ch]).collect();
    let float = float_depthwise(
        shape,
        tensor1(&weights).into_shape(&[c, taps])?.into_arc_tensor(),
        tensor1(&bias).into_arc_tensor(),
        output_shape.clone(),
    );
    Ok(Some(QuantDepthwise { float, x0, x_scale, y0, y_scale, out_dt: out_fact.datum_type, output_shape }))
}

/// The values of an 8-bit tensor as f32.
fn as_f32(t: &Tensor) -> Option<Vec<f32>> {
    let view = t.try_as_plain_ram().ok()?;
    match t.datum_type().unquantized() {
        DatumType::I8 => Some(view.as_slice::<i8>().ok()?.iter().map(|v| *v as f32).collect()),
        DatumType::U8 => Some(view.as_slice::<u8>().ok()?.iter().map(|v| *v as f32).collect()),
        _ => None,
    }
}

impl Op for QuantDepthwise {
    fn name(&self) -> StaticName {
        "QuantDepthwiseConv".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        let mut info = self.float.info()?;
        info.push(format!(
            "x: zp {} scale {}; y: zp {} scale {} ({:?})",
            self.x0, self.x_scale, self.y0, self.y_scale, self.out_dt
        ));
        Ok(info)
    }

    op_as_typed_op!();
}

impl EvalOp for QuantDepthwise {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let x = &inputs[0];
        let zero = self.x0;
        let view = x.try_as_plain_ram()?;
        // Dequantized as the kernel stages each channel: no float copy of the whole input.
        let values = match x.datum_type().unquantized() {
            DatumType::I8 => Values::I8 { q: view.as_slice::<i8>()?, zero, scale: 1.0 },
            DatumType::U8 => Values::U8 { q: view.as_slice::<u8>()?, zero, scale: 1.0 },
            other => bail!("QuantDepthwiseConv: input is {other:?}, not 8-bit"),
        };
        // SAFETY: the kernel writes every value (each channel's whole plane); 8-bit integers
        // have no invalid bit patterns anyway.
        let mut out = unsafe { Tensor::uninitialized_dt(self.out_dt, &self.output_shape)? };
        let requantize = Requantize::new(self.y_scale, self.y0 as i32);
        self.float.run_depthwise_quantized(values, requantize, &mut out)?;
        Ok(tvec!(out.into_tvalue()))
    }
}

impl TypedOp for QuantDepthwise {
    fn output_facts(&self, _inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec!(self.out_dt.fact(&*self.output_shape)))
    }

    as_op!();
}
