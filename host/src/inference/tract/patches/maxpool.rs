//! A separable drop-in for tract's 2-D NCHW `MaxPool` (f32, i8, u8; no index output).
//!
//! tract 0.23.9's `OptMaxPool` visits each output position's window value by value: on one
//! core the default model's 3×3 stride-2 stem pool (16 × 112 × 112) took 0.47 of 3.6 ms, 14 % of
//! the whole model, and ResNet-50's 2.1 ms; on the int8 default model, 24 %. A max over a
//! rectangle is a max over rows of maxima over columns: per output row, the window's input
//! rows are reduced into one row (contiguous, so the compiler vectorizes it), then each output
//! value takes the max of its window's columns of that row.
//!
//! Same values as tract's: the max of the window's values inside the image, starting from the
//! type's least value (`f32::MIN`, as tract's `Bounded::min_value`), a NaN never replacing
//! what it is compared with (tract's fold keeps the accumulator unless `acc < v`). Unit test
//! below against tract's op over awkward geometries.

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::cnn::OptMaxPool;
use tract_onnx::tract_core::ops::cnn::PoolSpec;
use tract_onnx::tract_core::ops::nn::DataFormat;

use super::ConvShape;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SeparableMaxPool {
    pool_spec: PoolSpec,
}

/// The op to put in place of `node` if it is a max pool this op computes: 2-D, NCHW or CHW,
/// concrete shape, f32/i8/u8, without tract's index output.
pub fn replacement(model: &TypedModel, node: &TypedNode) -> TractResult<Option<SeparableMaxPool>> {
    let Some(pool) = node.op_as::<OptMaxPool>() else { return Ok(None) };
    let spec = &pool.pool_spec;
    if pool.with_index_outputs.is_some()
        || !matches!(spec.data_format, DataFormat::NCHW | DataFormat::CHW)
        || spec.kernel_shape.len() != 2
        || node.inputs.len() != 1
    {
        return Ok(None);
    }
    let input = model.outlet_fact(node.inputs[0])?;
    let dt = input.datum_type.unquantized();
    if ![DatumType::F32, DatumType::I8, DatumType::U8].contains(&dt) {
        return Ok(None);
    }
    let (Some(shape), Some(out)) = (input.shape.as_concrete(), node.outputs[0].fact.shape.as_concrete()) else {
        return Ok(None);
    };
    let op = SeparableMaxPool { pool_spec: spec.clone() };
    // Only where this op's geometry gives tract's output shape (padding and rounding agreed).
    Ok(op.geometry(shape).filter(|(_, g)| out[out.len() - 2..] == [g.oh, g.ow]).map(|_| op))
}

impl SeparableMaxPool {
    /// (planes, geometry of one plane) for an input of `shape`.
    fn geometry(&self, shape: &[usize]) -> Option<(usize, ConvShape)> {
        let (planes, h, w) = match (self.pool_spec.data_format, shape) {
            (DataFormat::NCHW, &[n, c, h, w]) => (n * c, h, w),
            (DataFormat::CHW, &[c, h, w]) => (c, h, w),
            _ => return None,
        };
        Some((planes, ConvShape::new(&self.pool_spec, 1, h, w)?))
    }
}

/// The element types the op runs on, with their least value.
trait Element: Datum + Copy + PartialOrd + Send + Sync {
    const LEAST: Self;
}
impl Element for f32 {
    const LEAST: f32 = f32::MIN;
}
impl Element for i8 {
    const LEAST: i8 = i8::MIN;
}
impl Element for u8 {
    const LEAST: u8 = u8::MIN;
}

/// tract's comparison: `v` replaces `acc` only if `acc < v` (so a NaN never does).
#[inline(always)]
fn max<T: Element>(acc: T, v: T) -> T {
    if acc < v { v } else { acc }
}

/// Pools `planes` (each `g.h × g.w`) of `input` into `output` (each `g.oh × g.ow`).
fn pool<T: Element>(g: &ConvShape, input: &[T], output: &mut [T]) {
    let (plane_in, plane_out) = (g.h * g.w, g.oh * g.ow);
    let (sx, dx, left) = (g.stride[1], g.dilation[1], g.pad_before[1]);
    // One output row's input rows reduced, with the padding on both sides as least values, so
    // every window's columns are in range and the column pass needs no checks.
    let span = g.ow.saturating_sub(1) * sx + g.kw.saturating_sub(1) * dx + 1;
    let mut padded = vec![T::LEAST; span.max(left + g.w)];
    for (src, dst) in input.chunks_exact(plane_in).zip(output.chunks_exact_mut(plane_out)) {
        for (oy, out) in dst.chunks_exact_mut(g.ow).enumerate() {
            let rows = &mut padded[left..left + g.w];
            rows.fill(T::LEAST);
            for ky in 0..g.kh {
                let y = (oy * g.stride[0] + ky * g.dilation[0]) as isize - g.pad_before[0] as isize;
                if (0..g.h as isize).contains(&y) {
                    let line = &src[y as usize * g.w..][..g.w];
                    rows.iter_mut().zip(line).for_each(|(r, v)| *r = max(*r, *v));
                }
            }
            let width = g.kw.saturating_sub(1) * dx + 1;
            for (ox, o) in out.iter_mut().enumerate() {
                let window = &padded[ox * sx..][..width];
                *o = window.iter().step_by(dx).fold(T::LEAST, |acc, v| max(acc, *v));
            }
        }
    }
}

/// [`pool`] split by planes over tract's threads under its multi-threaded executor (latency
/// mode) when there is enough to share.
fn pool_maybe_parallel<T: Element>(g: &ConvShape, input: &[T], output: &mut [T]) {
    const CHUNK: usize = 64 << 10;
    let (plane_in, plane_out) = (g.h * g.w, g.oh * g.ow);
    let per_chunk = (CHUNK / plane_in.max(1)).max(1);
    match tract_linalg::multithread::current_tract_executor() {
        tract_linalg::multithread::Executor::MultiThread(p) if input.len() >= 2 * CHUNK && plane_out > 0 => {
            use rayon::prelude::*;
            p.install(|| {
                input
                    .par_chunks(per_chunk * plane_in)
                    .zip(output.par_chunks_mut(per_chunk * plane_out))
                    .for_each(|(i, o)| pool(g, i, o))
            })
        }
        _ => pool(g, input, output),
    }
}

impl Op for SeparableMaxPool {
    fn name(&self) -> StaticName {
        "SeparableMaxPool".into()
    }
    fn info(&self) -> TractResult<Vec<String>> {
        Ok(self.pool_spec.info())
    }
    op_as_typed_op!();
}

impl EvalOp for SeparableMaxPool {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = &inputs[0];
        let Some((_, g)) = self.geometry(input.shape()) else {
            bail!("SeparableMaxPool: unexpected input shape {:?}", input.shape())
        };
        let mut shape: TVec<usize> = input.shape().into();
        let rank = shape.len();
        (shape[rank - 2], shape[rank - 1]) = (g.oh, g.ow);
        // SAFETY: `pool` writes every output value; these types have no invalid bit patterns.
        let mut output = unsafe { Tensor::uninitialized_dt(input.datum_type(), &shape)? };
        {
            let (src, mut dst) = (input.try_as_plain_ram()?, output.try_as_plain_ram_mut()?);
            match input.datum_type().unquantized() {
                DatumType::F32 => pool_maybe_parallel(&g, src.as_slice::<f32>()?, dst.as_slice_mut::<f32>()?),
                DatumType::I8 => pool_maybe_parallel(&g, src.as_slice::<i8>()?, dst.as_slice_mut::<i8>()?),
                DatumType::U8 => pool_maybe_parallel(&g, src.as_slice::<u8>()?, dst.as_slice_mut::<u8>()?),
                dt => bail!("SeparableMaxPool: unexpected type {dt:?}"),
            }
        }
        Ok(tvec!(output.into_tvalue()))
    }
}

impl TypedOp for SeparableMaxPool {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        self.pool_spec.output_facts(inputs)
    }
    as_op!();
}

#[cfg(test)]
mod tests {
    use super::*;
    use tract_onnx::tract_core::ops::cnn::{MaxPool, PaddingSpec};

    /// tract's own max pool (declutter → optimize gives its `OptMaxPool`) and ours, on one
    /// input, compared value for value (bits for f32).
    fn compare<T: Element>(
        shape: [usize; 4],
        kernel: [usize; 2],
        stride: [usize; 2],
        dilation: [usize; 2],
        padding: PaddingSpec,
        values: impl Fn(usize) -> T,
    ) {
        let spec = PoolSpec::new(
            DataFormat::NCHW,
            kernel.to_vec().into(),
            padding,
            Some(dilation.to_vec().into()),
            Some(stride.to_vec().into()),
            shape[1],
            shape[1],
        );
        let mut model = TypedModel::default();
        let x = model.add_source("x", T::datum_type().fact(shape)).unwrap();
        let y = model.wire_node("pool", MaxPool::new(spec, None), &[x]).unwrap();
        model.select_output_outlets(&y).unwrap();
        let model = model.into_optimized().unwrap();
        let pool_node = model.nodes.iter().find(|n| n.op_is::<OptMaxPool>()).expect("tract's OptMaxPool");
        let ours = replacement(&model, pool_node).unwrap().expect("our op takes this pool");
        let input = tract_ndarray::ArrayD::from_shape_vec(
            shape.to_vec(),
            (0..shape.iter().product()).map(values).collect::<Vec<T>>(),
        )
        .unwrap()
        .into_tensor();
        let theirs = model.into_runnable().unwrap().run(tvec!(input.clone().into_tvalue())).unwrap().remove(0);
        let mine = ours.eval(&EvalContext::out_of_plan(), tvec!(input.into_tvalue())).unwrap().remove(0);
        assert_eq!(theirs.shape(), mine.shape(), "{shape:?} {kernel:?} {stride:?} {dilation:?}");
        assert_eq!(theirs.as_bytes(), mine.as_bytes(), "{shape:?} {kernel:?} {stride:?} {dilation:?}");
    }

    #[test]
    fn matches_tracts_max_pool_over_awkward_geometries() {
        let explicit = |b: usize, a: usize| PaddingSpec::ExplicitOnnxPool(tvec![b, b], tvec![a, a], false);
        let f = |i: usize| match i % 97 {
            0 => f32::NAN,
            1 => f32::NEG_INFINITY,
            r => ((i * 7919) % 1000) as f32 / 10.0 - 50.0 + r as f32 * 1e-3,
        };
        for (shape, kernel, stride, dilation, padding) in [
            ([1, 3, 112, 112], [3, 3], [2, 2], [1, 1], explicit(1, 1)),
            ([2, 2, 9, 7], [3, 3], [2, 2], [1, 1], explicit(1, 1)),
            ([1, 4, 8, 8], [2, 2], [2, 2], [1, 1], PaddingSpec::Valid),
            ([1, 2, 11, 13], [3, 2], [1, 3], [1, 1], explicit(2, 0)),
            ([1, 2, 10, 10], [3, 3], [1, 1], [2, 2], PaddingSpec::SameUpper),
            ([1, 1, 5, 5], [5, 5], [1, 1], [1, 1], explicit(4, 4)),
            ([1, 3, 7, 6], [1, 1], [2, 2], [1, 1], PaddingSpec::Valid),
        ] {
            compare::<f32>(shape, kernel, stride, dilation, padding.clone(), f);
            compare::<i8>(shape, kernel, stride, dilation, padding.clone(), |i| ((i * 37) % 256) as u8 as i8);
            compare::<u8>(shape, kernel, stride, dilation, padding, |i| ((i * 91) % 256) as u8);
        }
    }
}
