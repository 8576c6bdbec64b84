//! The wasm32 component face of the postprocess stage.

wit_bindgen::generate!({
    world: "postprocessor",
    path: "../../wit",
});

struct Postprocess;

impl Guest for Postprocess {
    fn postprocess(logits: Tensor, spec: ModelSpec, labels: Vec<String>, top_k: u32) -> Result<Vec<Prediction>, Error> {
        if labels.len() != logits.data.len() {
            return Err(Error::Internal(format!(
                "model {} v{} produced {} logits but has {} labels",
                spec.name,
                spec.version,
                logits.data.len(),
                labels.len()
            )));
        }
        let best = crate::top_k(&logits.data, top_k as usize).map_err(Error::Internal)?;
        Ok(best
            .into_iter()
            .map(|(index, score)| Prediction { index: index as u32, label: labels[index].clone(), score })
            .collect())
    }
}

export!(Postprocess);
