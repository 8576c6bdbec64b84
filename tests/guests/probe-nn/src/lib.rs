//! Test fixture: a task guest that runs its model through `wasi:nn` (granted `nn`), chosen by
//! its `nn` parameter (`?nn=...`):
//! - absent: decodes the body as the preprocess guest does (the spec from `engines.describe`),
//!   `load-by-name` of `model` (default `shapes`, `name:version` allowed), one `compute`, and
//!   answers the softmax's classes, best first, with the output's name and dimensions in a
//!   second answer when `?nn=outputs`;
//! - `load`: `graph.load` of some bytes (refused to a served guest);
//! - `u8`: a U8 tensor where the model takes FP32;
//! - `flood`: `compute` 10 000 times, ignoring errors (the host's call cap ends it).
//!
//! Errors come back as JSON `{"code", "data"}`: the wasi-nn error the host gave.

#[cfg(target_arch = "wasm32")]
mod component {
    wit_bindgen::generate!({
        world: "tessera:probe-nn/probe-nn",
        path: ["../../../wit/wasi-nn", "../../../wit", "wit"],
        generate_all,
    });

    use tessera::vision::engines;
    use tessera::vision::types::Prediction;
    use wasi::nn::errors;
    use wasi::nn::graph::{self, ExecutionTarget, GraphEncoding};
    use wasi::nn::tensor::{Tensor, TensorType};

    struct Probe;

    fn param<'a>(req: &'a Request, key: &str) -> Option<&'a str> {
        req.params.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    fn nn_error(e: errors::Error) -> Answer {
        use errors::ErrorCode as C;
        let code = match e.code() {
            C::InvalidArgument => "InvalidArgument",
            C::InvalidEncoding => "InvalidEncoding",
            C::Timeout => "Timeout",
            C::RuntimeError => "RuntimeError",
            C::UnsupportedOperation => "UnsupportedOperation",
            C::TooLarge => "TooLarge",
            C::NotFound => "NotFound",
            C::Security => "Security",
            C::Unknown => "Unknown",
        };
        Answer::Json(format!(r#"{{"code": "{code}", "data": {:?}}}"#, e.data()))
    }

    fn f32_bytes(values: &[f32]) -> Vec<u8> {
        values.iter().flat_map(|v| v.to_le_bytes()).collect()
    }

    impl Guest for Probe {
        fn run(req: Request) -> Result<Answer, Error> {
            let model = param(&req, "model").unwrap_or("shapes");
            let what = param(&req, "nn").unwrap_or("");
            if what == "load" {
                return Ok(match graph::load(&[vec![0u8; 64]], GraphEncoding::Onnx, ExecutionTarget::Cpu) {
                    Ok(_) => Answer::Json(r#"{"loaded": true}"#.into()),
                    Err(e) => nn_error(e),
                });
            }
            let g = match graph::load_by_name(model) {
                Ok(g) => g,
                Err(e) => return Ok(nn_error(e)),
            };
            let context = g.init_execution_context().map_err(|e| Error::Internal(e.data()))?;
            let base = model.split(':').next().unwrap_or(model);
            let info = engines::describe(base, None)?;
            let spec = &info.spec;
            let shape = spec.input_shape.clone();
            match what {
                "u8" => {
                    let t = Tensor::new(&shape, TensorType::U8, &vec![0u8; shape.iter().product::<u32>() as usize]);
                    return Ok(match context.compute(vec![("input".to_string(), t)]) {
                        Ok(_) => Answer::Json(r#"{"computed": true}"#.into()),
                        Err(e) => nn_error(e),
                    });
                }
                "flood" => {
                    let zeros = f32_bytes(&vec![0.0; shape.iter().product::<u32>() as usize]);
                    for _ in 0..10_000 {
                        let t = Tensor::new(&shape, TensorType::Fp32, &zeros);
                        let _ = context.compute(vec![("input".to_string(), t)]);
                    }
                    return Ok(Answer::Json(r#"{"flooded": true}"#.into()));
                }
                _ => {}
            }
            let three = |v: &[f32]| <[f32; 3]>::try_from(v).map_err(|_| Error::Internal("not 3 channels".into()));
            let image = tessera_preprocess::Spec {
                height: shape[2],
                width: shape[3],
                resize: spec.resize,
                mean: three(&spec.mean)?,
                std: three(&spec.std)?,
            };
            let limits = tessera_preprocess::Limits { max_pixels: 40_000_000, max_alloc_bytes: 192 << 20 };
            let data = tessera_preprocess::preprocess(&req.body, &image, &limits)
                .map_err(|e| Error::InvalidInput(format!("{e:?}")))?;
            let t = Tensor::new(&shape, TensorType::Fp32, &f32_bytes(&data));
            let outputs = match context.compute(vec![("input".to_string(), t)]) {
                Ok(o) => o,
                Err(e) => return Ok(nn_error(e)),
            };
            let (name, out) = outputs.into_iter().next().ok_or_else(|| Error::Internal("no output".into()))?;
            if what == "outputs" {
                let ty = if matches!(out.ty(), TensorType::Fp32) { "Fp32" } else { "other" };
                return Ok(Answer::Json(format!(
                    r#"{{"name": {name:?}, "dimensions": {:?}, "type": "{ty}"}}"#,
                    out.dimensions()
                )));
            }
            let logits: Vec<f32> =
                out.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
            let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let sum: f32 = logits.iter().map(|&x| (x - max).exp()).sum();
            let mut ranked: Vec<Prediction> = logits
                .iter()
                .enumerate()
                .map(|(i, &x)| Prediction {
                    index: i as u32,
                    label: info.labels.get(i).cloned().unwrap_or_default(),
                    score: (x - max).exp() / sum,
                })
                .collect();
            ranked.sort_by(|a, b| b.score.total_cmp(&a.score));
            ranked.truncate(3);
            Ok(Answer::Classes(ranked))
        }
    }

    export!(Probe);
}
