//! The reference rule set (`guests/conformance/RULES.md`) in Rust: label → business category,
//! a confidence threshold per category or tenant, labels flagged for review, categories a tenant
//! refuses. The same rules exist in Python, JavaScript, C and Go beside this crate; the
//! conformance table holds them all to one behaviour.

#[cfg(target_arch = "wasm32")]
mod component;

use std::collections::HashMap;

/// The parsed configuration.
#[derive(Debug, Default)]
pub struct Rules {
    categories: HashMap<String, String>,
    default_category: Option<String>,
    min_confidence: Option<f64>,
    category_min: HashMap<String, f64>,
    review: Vec<String>,
    tenant_deny: HashMap<String, Vec<String>>,
    tenant_min: HashMap<String, f64>,
}

/// A decision: `(accepted, reason, category, tags)`.
pub type Outcome = (bool, String, String, Vec<String>);

/// `digits [. digits]` in [0, 1], nothing else (RULES.md: every language parses the same).
fn confidence(key: &str, value: &str) -> Result<f64, String> {
    let (whole, fraction) = value.split_once('.').unwrap_or((value, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    let parsed = if !whole.is_empty() && digits(whole) && digits(fraction) { value.parse::<f64>().ok() } else { None };
    parsed
        .filter(|v| (0.0..=1.0).contains(v))
        .ok_or_else(|| format!("config key {key}: {value:?} is not a confidence in [0, 1]"))
}

/// `tenant.<tenant>.<setting>` → `(tenant, setting)`; the tenant is not empty.
fn tenant_key(key: &str) -> Option<(&str, &str)> {
    key.strip_prefix("tenant.")?.rsplit_once('.').filter(|(tenant, _)| !tenant.is_empty())
}

fn list(value: &str) -> Vec<String> {
    value.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect()
}

impl Rules {
    /// Parses the configuration, naming the first bad key.
    pub fn from_config<'a>(config: impl IntoIterator<Item = (&'a str, &'a str)>) -> Result<Rules, String> {
        let mut rules = Rules::default();
        for (key, value) in config {
            if let Some(label) = key.strip_prefix("category.") {
                rules.categories.insert(label.to_string(), value.to_string());
            } else if key == "default-category" {
                rules.default_category = Some(value.to_string());
            } else if key == "min-confidence" {
                rules.min_confidence = Some(confidence(key, value)?);
            } else if let Some(category) = key.strip_prefix("min-confidence.") {
                rules.category_min.insert(category.to_string(), confidence(key, value)?);
            } else if key == "review" {
                rules.review = list(value);
            } else if let Some((tenant, "deny")) = tenant_key(key) {
                rules.tenant_deny.insert(tenant.to_string(), list(value));
            } else if let Some((tenant, "min-confidence")) = tenant_key(key) {
                rules.tenant_min.insert(tenant.to_string(), confidence(key, value)?);
            } else {
                return Err(format!("config key {key}: unknown (see RULES.md)"));
            }
        }
        Ok(rules)
    }

    /// Decides about `preds` (best first, `(label, score)`) for a request with `meta`.
    pub fn decide<'a>(
        &self,
        preds: &[(&str, f32)],
        meta: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Outcome, String> {
        let &(label, score) = preds.first().ok_or("no predictions")?;
        let category = self
            .categories
            .get(label)
            .or(self.default_category.as_ref())
            .map_or("uncategorized", String::as_str)
            .to_string();
        let tenant = meta.into_iter().find(|(k, _)| *k == "x-tenant").map(|(_, v)| v).filter(|v| !v.is_empty());
        let review = self.review.iter().any(|l| l == label);
        let mut tags = Vec::new();
        if review {
            tags.push("review".to_string());
        }
        if let Some(tenant) = tenant {
            tags.push(format!("tenant:{tenant}"));
            if self.tenant_deny.get(tenant).is_some_and(|deny| deny.contains(&category)) {
                let reason = format!("category \"{category}\" is not accepted for tenant \"{tenant}\"");
                return Ok((false, reason, category, tags));
            }
        }
        let threshold = tenant
            .and_then(|t| self.tenant_min.get(t))
            .or(self.category_min.get(&category))
            .or(self.min_confidence.as_ref())
            .copied()
            .unwrap_or(0.5);
        if f64::from(score) < threshold {
            let reason =
                format!("confidence {score:.2} for \"{label}\" is below the {category} threshold {threshold:.2}");
            return Ok((false, reason, category, tags));
        }
        let mut reason = format!("\"{label}\" is {category} at {score:.2}");
        if review {
            reason.push_str("; review needed");
        }
        Ok((true, reason, category, tags))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confidences_have_one_spelling() {
        assert_eq!(confidence("k", "0.75"), Ok(0.75));
        assert_eq!(confidence("k", "1"), Ok(1.0));
        assert_eq!(confidence("k", "0."), Ok(0.0));
        for bad in ["", ".5", "-0.1", "1.5", " 0.5", "5e-1", "inf", "0x1", "0.5.1"] {
            assert!(confidence("k", bad).is_err(), "{bad:?}");
        }
    }
}
