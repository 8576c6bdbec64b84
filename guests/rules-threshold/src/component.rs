//! The wasm32 component face of the threshold rule.

wit_bindgen::generate!({
    world: "rules",
    path: "../../wit",
});

struct Threshold;

impl Guest for Threshold {
    fn decide(preds: Vec<Prediction>, _meta: Metadata, config: Metadata) -> Result<Decision, Error> {
        let rule =
            crate::Rule::from_config(config.iter().map(|(k, v)| (k.as_str(), v.as_str()))).map_err(Error::Internal)?;
        let top = preds.first().map(|p| (p.label.as_str(), p.score));
        let (accepted, reason, category) = rule.decide(top);
        let tags = top.map(|(label, _)| vec![label.to_string()]).unwrap_or_default();
        Ok(Decision { accepted, reason, category, tags })
    }
}

export!(Threshold);
