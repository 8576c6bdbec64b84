//! The wasm32 component face of the preprocess stage: WIT types in, [`crate::preprocess`] out.

wit_bindgen::generate!({
    world: "preprocessor",
    path: "../../wit",
});

struct Preprocess;

impl Guest for Preprocess {
    fn preprocess(img: Image, spec: ModelSpec, limits: DecodeLimits) -> Result<Tensor, Error> {
        let [1, 3, height, width] = spec.input_shape[..] else {
            return Err(Error::Internal(format!(
                "model spec: input shape must be [1, 3, height, width], got {:?}",
                spec.input_shape
            )));
        };
        let channel = |v: &[f32], what: &str| -> Result<[f32; 3], Error> {
            v.try_into().map_err(|_| Error::Internal(format!("model spec: {what} needs 3 values, got {}", v.len())))
        };
        let native = crate::Spec {
            height,
            width,
            resize: spec.resize,
            mean: channel(&spec.mean, "mean")?,
            std: channel(&spec.std, "std")?,
        };
        let limits = crate::Limits { max_pixels: limits.max_pixels, max_alloc_bytes: limits.max_alloc_bytes };
        let data = crate::preprocess(&img.bytes, &native, &limits).map_err(|e| match e {
            crate::Error::InvalidInput(m) => Error::InvalidInput(m),
            crate::Error::Unsupported(m) => Error::Unsupported(m),
            crate::Error::TooLarge(m) => Error::TooLarge(m),
            crate::Error::Internal(m) => Error::Internal(m),
        })?;
        Ok(Tensor { shape: vec![1, 3, height, width], data })
    }
}

export!(Preprocess);
