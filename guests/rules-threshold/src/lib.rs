//! Tessera's default business rule: accept the top prediction only when its confidence reaches
//! a threshold and, if an allow list is configured, its label is on it.
//!
//! Configuration (from the host's `[[rules]]` entry, all optional):
//! - `min-confidence`: a number in [0, 1], default 0.5;
//! - `allow`: comma-separated labels; empty or absent allows every label.

#[cfg(target_arch = "wasm32")]
mod component;

/// The parsed configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub min_confidence: f32,
    pub allow: Vec<String>,
}

/// The outcome for one prediction: `(accepted, reason, category)`.
pub type Outcome = (bool, String, Option<String>);

pub const DEFAULT_MIN_CONFIDENCE: f32 = 0.5;

impl Rule {
    /// Parses `key = value` configuration, naming the bad key on error.
    pub fn from_config<'a>(config: impl IntoIterator<Item = (&'a str, &'a str)>) -> Result<Rule, String> {
        let mut rule = Rule { min_confidence: DEFAULT_MIN_CONFIDENCE, allow: Vec::new() };
        for (key, value) in config {
            match key {
                "min-confidence" => {
                    rule.min_confidence = value
                        .trim()
                        .parse::<f32>()
                        .ok()
                        .filter(|v| (0.0..=1.0).contains(v))
                        .ok_or_else(|| format!("config key min-confidence: {value:?} is not a number in [0, 1]"))?;
                }
                "allow" => {
                    rule.allow = value.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect();
                }
                other => return Err(format!("config key {other:?} is unknown; use min-confidence or allow")),
            }
        }
        Ok(rule)
    }

    /// Decides about the top prediction `(label, score)`; `None` means the model said nothing.
    pub fn decide(&self, top: Option<(&str, f32)>) -> Outcome {
        let Some((label, score)) = top else {
            return (false, "the model returned no prediction".into(), Some("no-prediction".into()));
        };
        if score < self.min_confidence {
            return (
                false,
                format!("confidence {score:.3} for {label:?} is below the threshold {:.3}", self.min_confidence),
                Some("low-confidence".into()),
            );
        }
        if !self.allow.is_empty() && !self.allow.iter().any(|a| a == label) {
            return (
                false,
                format!("label {label:?} is not in the allow list [{}]", self.allow.join(", ")),
                Some("label-not-allowed".into()),
            );
        }
        (true, format!("confidence {score:.3} for {label:?} meets the threshold {:.3}", self.min_confidence), None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threshold_and_allow_list() {
        let rule = Rule::from_config([("min-confidence", "0.7"), ("allow", "circle, star")]).unwrap();
        assert!(rule.decide(Some(("circle", 0.9))).0);
        assert_eq!(rule.decide(Some(("circle", 0.6))).2.as_deref(), Some("low-confidence"));
        assert_eq!(rule.decide(Some(("square", 0.9))).2.as_deref(), Some("label-not-allowed"));
        assert!(!rule.decide(None).0);
    }

    #[test]
    fn bad_config_names_the_key() {
        assert!(Rule::from_config([("min-confidence", "high")]).unwrap_err().contains("min-confidence"));
        assert!(Rule::from_config([("colour", "red")]).unwrap_err().contains("colour"));
    }
}
