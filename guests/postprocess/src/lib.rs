//! Tessera's postprocess stage: logits → softmax → the `top_k` best classes with their labels.
//!
//! The arithmetic is plain Rust ([`top_k`]) so it is unit-tested natively; `component` is the
//! thin wasm32 face the host runs.

#[cfg(target_arch = "wasm32")]
mod component;

/// Numerically stable softmax: subtracting the max keeps `exp` finite for any logits.
pub fn softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = logits.iter().map(|&x| (x - max).exp()).collect();
    let sum: f32 = exps.iter().sum();
    exps.into_iter().map(|e| e / sum).collect()
}

/// The `k` highest-probability `(class index, probability)` pairs, best first; ties keep the
/// lower index first. `k` is capped at the number of classes.
pub fn top_k(logits: &[f32], k: usize) -> Result<Vec<(usize, f32)>, String> {
    if logits.is_empty() {
        return Err("the model produced no logits".into());
    }
    if let Some(i) = logits.iter().position(|x| !x.is_finite()) {
        return Err(format!("the model produced a non-finite logit at index {i}"));
    }
    let probs = softmax(logits);
    let mut order: Vec<usize> = (0..probs.len()).collect();
    order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]).then(a.cmp(&b)));
    order.truncate(k.min(probs.len()));
    Ok(order.into_iter().map(|i| (i, probs[i])).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softmax_sums_to_one_and_survives_large_logits() {
        let p = softmax(&[1000.0, 1000.0, -1000.0]);
        assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!((p[0] - 0.5).abs() < 1e-6 && p[2] == 0.0);
    }

    #[test]
    fn top_k_orders_and_caps() {
        let t = top_k(&[0.1, 3.0, 2.0, 3.0], 10).unwrap();
        let idx: Vec<usize> = t.iter().map(|(i, _)| *i).collect();
        assert_eq!(idx, vec![1, 3, 2, 0]);
        assert_eq!(top_k(&[0.1, 3.0], 1).unwrap().len(), 1);
    }

    #[test]
    fn non_finite_logits_are_an_error() {
        assert!(top_k(&[0.0, f32::NAN], 1).is_err());
        assert!(top_k(&[], 1).is_err());
    }
}
