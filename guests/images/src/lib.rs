//! `world image-tools` (wit/tessera.wit): the preprocess guest's decoder and letterbox as an
//! `images` export, for task guests written in a language without an image decoder.
//! `wasm-tools compose` plugs it into such a guest (`world task-with-images`) at build time:
//! guests/task-detect-python is the example.

#[cfg(target_arch = "wasm32")]
mod component {
    wit_bindgen::generate!({
        world: "image-tools",
        path: "../../wit",
    });

    use exports::tessera::vision::images::{Guest, Letterboxed};
    use tessera::vision::types::{Error, Tensor};

    /// The most pixels, and the most bytes a decoder may allocate (the host caps the composed
    /// guest's memory whatever these say): the preprocess guest's defaults.
    const LIMITS: tessera_preprocess::Limits =
        tessera_preprocess::Limits { max_pixels: 40_000_000, max_alloc_bytes: 192 << 20 };

    struct Images;

    impl Guest for Images {
        fn letterbox(body: Vec<u8>, size: u32, fill: u8, mean: Vec<f32>, std: Vec<f32>) -> Result<Letterboxed, Error> {
            let three = |v: &[f32], name: &str| {
                <[f32; 3]>::try_from(v).map_err(|_| Error::Internal(format!("{name} has {} values, not 3", v.len())))
            };
            if !(1..=4096).contains(&size) {
                return Err(Error::Internal(format!("letterbox size {size} is not 1 to 4096 pixels")));
            }
            let fitted =
                tessera_preprocess::fit(&body, &LIMITS, size, fill, three(&mean, "mean")?, three(&std, "std")?)
                    .map_err(|e| match e {
                        tessera_preprocess::Error::InvalidInput(m) => Error::InvalidInput(m),
                        tessera_preprocess::Error::Unsupported(m) => Error::Unsupported(m),
                        tessera_preprocess::Error::TooLarge(m) => Error::TooLarge(m),
                        tessera_preprocess::Error::Internal(m) => Error::Internal(m),
                    })?;
            Ok(Letterboxed {
                tensor: Tensor { shape: vec![1, 3, size, size], data: fitted.data },
                scale_x: fitted.scale_x,
                scale_y: fitted.scale_y,
                left: fitted.left,
                top: fitted.top,
                width: fitted.width,
                height: fitted.height,
            })
        }
    }

    export!(Images);
}
