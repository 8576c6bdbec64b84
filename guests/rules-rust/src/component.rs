//! The wasm32 component face of the reference rule set.

wit_bindgen::generate!({
    world: "rules",
    path: "../../wit",
});

struct Reference;

impl Guest for Reference {
    fn decide(preds: Vec<Prediction>, meta: Metadata, config: Metadata) -> Result<Decision, Error> {
        let rules =
            crate::Rules::from_config(config.iter().map(|(k, v)| (k.as_str(), v.as_str()))).map_err(Error::Internal)?;
        let preds: Vec<(&str, f32)> = preds.iter().map(|p| (p.label.as_str(), p.score)).collect();
        let (accepted, reason, category, tags) =
            rules.decide(&preds, meta.iter().map(|(k, v)| (k.as_str(), v.as_str()))).map_err(Error::InvalidInput)?;
        Ok(Decision { accepted, reason, category: Some(category), tags })
    }
}

export!(Reference);
