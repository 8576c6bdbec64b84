//! A task guest (`world task` in wit/tessera.wit): the default classification pipeline as one
//! guest. It decodes the body with the preprocess guest's code, asks the host what the model
//! takes (`engines.describe`), runs it (`engines.run`) and answers the softmax's top-k. Parameters
//! (query or `x-*` headers): `model` (default `shapes`), `top_k` (default 5).
//!
//! The example to copy for a task of your own; docs/guests.md walks through it.

#[cfg(target_arch = "wasm32")]
mod component {
    wit_bindgen::generate!({
        world: "task",
        path: "../../wit",
    });

    use tessera::vision::engines;
    use tessera::vision::types::{Prediction, Tensor};

    struct Classify;

    /// The most pixels, and the most bytes a decoder may allocate, this task decodes (the host
    /// caps the guest's memory whatever these say).
    const LIMITS: tessera_preprocess::Limits =
        tessera_preprocess::Limits { max_pixels: 40_000_000, max_alloc_bytes: 192 << 20 };

    fn param<'a>(req: &'a Request, key: &str) -> Option<&'a str> {
        req.params.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    impl Guest for Classify {
        fn run(req: Request) -> Result<Answer, Error> {
            let model = param(&req, "model").unwrap_or("shapes");
            let top_k =
                match param(&req, "top_k") {
                    Some(v) => v.parse::<usize>().ok().filter(|&k| k > 0).ok_or_else(|| {
                        Error::InvalidInput(format!("top_k must be a whole number above 0, got {v:?}"))
                    })?,
                    None => 5,
                };
            let info = engines::describe(model, None)?;
            let spec = &info.spec;
            let nchw = |v: &[f32]| <[f32; 3]>::try_from(v).ok();
            let (Some(&height), Some(&width), Some(mean), Some(std)) =
                (spec.input_shape.get(2), spec.input_shape.get(3), nchw(&spec.mean), nchw(&spec.std))
            else {
                return Err(Error::Internal(format!("model {model} takes {:?}, not an NCHW image", spec.input_shape)));
            };
            let image_spec = tessera_preprocess::Spec { height, width, resize: spec.resize, mean, std };
            let data = tessera_preprocess::preprocess(&req.body, &image_spec, &LIMITS).map_err(|e| match e {
                tessera_preprocess::Error::InvalidInput(m) => Error::InvalidInput(m),
                tessera_preprocess::Error::Unsupported(m) => Error::Unsupported(m),
                tessera_preprocess::Error::TooLarge(m) => Error::TooLarge(m),
                tessera_preprocess::Error::Internal(m) => Error::Internal(m),
            })?;
            let outputs = engines::run(model, None, &Tensor { shape: spec.input_shape.clone(), data })?;
            let logits =
                &outputs.first().ok_or_else(|| Error::Internal(format!("model {model} gave no output")))?.tensor.data;
            Ok(Answer::Classes(top(logits, &info.labels, top_k)))
        }
    }

    /// The softmax of `logits`, its `k` best with their labels, best first.
    fn top(logits: &[f32], labels: &[String], k: usize) -> Vec<Prediction> {
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let exp: Vec<f32> = logits.iter().map(|&x| (x - max).exp()).collect();
        let sum: f32 = exp.iter().sum();
        let mut ranked: Vec<(usize, f32)> = exp.iter().map(|&e| e / sum).enumerate().collect();
        ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        ranked
            .into_iter()
            .take(k)
            .map(|(i, score)| Prediction {
                index: i as u32,
                label: labels.get(i).cloned().unwrap_or_else(|| format!("class {i}")),
                score,
            })
            .collect()
    }

    export!(Classify);
}
