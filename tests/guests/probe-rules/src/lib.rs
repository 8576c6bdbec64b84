//! Test fixture: a rules guest that misbehaves when the request asks it to, through the
//! `x-probe` header the host passes as metadata:
//! - `trap`: panics (a wasm trap);
//! - `loop`: spins forever (only the host's epoch deadline can stop it);
//! - `oom`: allocates until the host's memory limit refuses to grow;
//! - `hold`: takes `x-probe-mib` MiB (default 48), touches every page, then spins forever
//!   holding it (the process-wide guest memory budget must refuse others meanwhile);
//! - `huge`: returns a 32 MiB reason (the host's output cap must stop it before copying);
//! - `infer-flood`: calls `inference` 10 000 times, ignoring errors (the host's cap must end it);
//! - `infer`: calls the host's `inference` interface on an all-zero input of `x-probe-model`
//!   and reports the winning class in its reason;
//! - `count`: counts its calls in a global and reports the count in its reason (with a fresh
//!   instance per request, always 1: no state leaks from one request to the next);
//! - anything else or absent: accepts.
//!
//! It exists to prove the host contains guests; it is not built for production.

#[cfg(target_arch = "wasm32")]
mod component {
    wit_bindgen::generate!({
        world: "rules",
        path: "../../../wit",
    });

    use tessera::vision::inference::{self, Tensor};

    struct Probe;

    /// Calls this instance has answered: a guest's globals live as long as its instance.
    static CALLS: core::sync::atomic::AtomicU32 = core::sync::atomic::AtomicU32::new(0);

    fn meta<'a>(meta: &'a Metadata, key: &str) -> Option<&'a str> {
        meta.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    impl Guest for Probe {
        fn decide(_preds: Vec<Prediction>, md: Metadata, _config: Metadata) -> Result<Decision, Error> {
            let ok = |reason: String| Decision { accepted: true, reason, category: None, tags: vec![] };
            let calls = CALLS.fetch_add(1, core::sync::atomic::Ordering::Relaxed) + 1;
            match meta(&md, "x-probe") {
                Some("count") => Ok(ok(format!("call {calls} of this instance"))),
                Some("trap") => panic!("probe asked to trap"),
                Some("loop") => {
                    let mut n: u64 = 0;
                    loop {
                        n = core::hint::black_box(n.wrapping_add(1));
                    }
                }
                Some("oom") => {
                    let mut hoard: Vec<Vec<u8>> = Vec::new();
                    loop {
                        let mut chunk = vec![0u8; 16 << 20];
                        chunk[0] = 1;
                        hoard.push(core::hint::black_box(chunk));
                    }
                }
                Some("hold") => {
                    let mib: usize = meta(&md, "x-probe-mib").and_then(|m| m.parse().ok()).unwrap_or(48);
                    let held = core::hint::black_box(vec![1u8; mib << 20]);
                    let mut n: u64 = 0;
                    loop {
                        n = core::hint::black_box(n.wrapping_add(u64::from(held[n as usize % held.len()])));
                    }
                }
                Some("huge") => Ok(ok("x".repeat(32 << 20))),
                Some("infer-flood") => {
                    let input = Tensor { shape: vec![1, 3, 224, 224], data: vec![0.0; 3 * 224 * 224] };
                    let answered = (0..10_000).filter(|_| inference::infer("shapes", None, &input).is_ok()).count();
                    Ok(ok(format!("{answered} inferences answered")))
                }
                Some("infer") => {
                    let model = meta(&md, "x-probe-model").unwrap_or("shapes").to_string();
                    let input = Tensor { shape: vec![1, 3, 224, 224], data: vec![0.0; 3 * 224 * 224] };
                    let out = inference::infer(&model, None, &input)?;
                    let best = out
                        .data
                        .iter()
                        .enumerate()
                        .max_by(|a, b| a.1.total_cmp(b.1))
                        .map(|(i, _)| i)
                        .ok_or_else(|| Error::Internal("empty output".into()))?;
                    Ok(ok(format!("inference returned {} logits, argmax {best}", out.data.len())))
                }
                _ => Ok(ok("probe accepts".into())),
            }
        }
    }

    export!(Probe);
}
