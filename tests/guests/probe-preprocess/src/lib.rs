//! Test fixture: a preprocess guest built for `wasm32-wasip2` (Rust's std imports WASI), to show
//! that the preprocess stage gets the WASI its pipeline grants (`preprocess_wasi`) and nothing
//! else. It writes a line to stderr on every call, reads the wall clock when the image's bytes
//! are `clock`, and returns a tensor of zeros of the model's input shape (it decodes nothing).
//!
//! It is not a production guest; guests/preprocess is the preprocess guest to copy.

#[cfg(target_arch = "wasm32")]
mod component {
    wit_bindgen::generate!({
        world: "preprocessor",
        path: "../../../wit",
    });

    struct Probe;

    impl Guest for Probe {
        fn preprocess(img: Image, spec: ModelSpec, _limits: DecodeLimits) -> Result<Tensor, Error> {
            eprintln!("probe-preprocess says hello on stderr");
            if img.bytes == b"clock" {
                let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
                eprintln!("probe-preprocess read the clock: {}", now.is_ok());
            }
            let len = spec.input_shape.iter().map(|&d| d as usize).product();
            Ok(Tensor { shape: spec.input_shape, data: vec![0.0; len] })
        }
    }

    export!(Probe);
}
