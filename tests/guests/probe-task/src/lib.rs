//! Test fixture: a task guest that misbehaves when the request asks it to, through its `probe`
//! parameter (`?probe=...`):
//! - `loop`: spins forever (only the host's epoch deadline can stop it);
//! - `engine-flood`: calls `engines.run` 10 000 times, ignoring errors (the host's cap ends it);
//! - `huge`: answers a 32 MiB JSON document (the host's output cap stops it before copying);
//! - `not-given`: runs a model its config does not name, and passes the host's error on;
//! - `wrong-shape`: runs its model on a tensor of the wrong shape, and passes the error on;
//! - `bad-json`: answers JSON that does not parse;
//! - anything else or absent: runs `shapes` on zeros and answers the number of values it got.
//!
//! It exists to prove the host contains task guests; it is not built for production.

#[cfg(target_arch = "wasm32")]
mod component {
    wit_bindgen::generate!({
        world: "task",
        path: "../../../wit",
    });

    use tessera::vision::engines;
    use tessera::vision::types::Tensor;

    struct Probe;

    fn zeros(shape: &[u32]) -> Tensor {
        Tensor { shape: shape.to_vec(), data: vec![0.0; shape.iter().map(|&d| d as usize).product()] }
    }

    impl Guest for Probe {
        fn run(req: Request) -> Result<Answer, Error> {
            let probe = req.params.iter().find(|(k, _)| k == "probe").map(|(_, v)| v.as_str());
            let input = zeros(&[1, 3, 224, 224]);
            match probe {
                Some("loop") => {
                    let mut n: u64 = 0;
                    loop {
                        n = core::hint::black_box(n.wrapping_add(1));
                    }
                }
                Some("engine-flood") => {
                    for _ in 0..10_000 {
                        let _ = engines::run("shapes", None, &input);
                    }
                    Ok(Answer::Json("{\"flood\": \"done\"}".into()))
                }
                Some("huge") => Ok(Answer::Json(format!("\"{}\"", "x".repeat(32 << 20)))),
                Some("not-given") => {
                    engines::run("shapes-int8", None, &input)?;
                    Ok(Answer::Json("{}".into()))
                }
                Some("wrong-shape") => {
                    engines::run("shapes", None, &zeros(&[1, 3, 8, 8]))?;
                    Ok(Answer::Json("{}".into()))
                }
                Some("bad-json") => Ok(Answer::Json("{not json".into())),
                _ => {
                    let outputs = engines::run("shapes", None, &input)?;
                    let values = outputs.iter().map(|o| o.tensor.data.len()).sum::<usize>();
                    Ok(Answer::Json(format!("{{\"values\": {values}}}")))
                }
            }
        }
    }

    export!(Probe);
}
