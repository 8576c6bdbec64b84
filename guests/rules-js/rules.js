// The reference rule set (guests/conformance/RULES.md) in JavaScript, as a Tessera rules guest.
//
// Built by `just guests` with @bytecodealliance/componentize-js (pinned in package.json):
//
//   componentize-js guests/rules-js/rules.js --wit wit --world-name rules -o rules-js.wasm
//
// The exported `decide` is the world's export; returning a value is `ok`, throwing
// `{ tag, val }` (a WIT `error` case) is `err`.

// RULES.md: digits with an optional fraction, nothing else, so every language parses alike.
const CONFIDENCE = /^[0-9]+(\.[0-9]*)?$/;

function fail(tag, val) {
  return { tag, val };
}

function confidence(key, value) {
  if (CONFIDENCE.test(value)) {
    const parsed = Number(value);
    if (parsed >= 0 && parsed <= 1) return parsed;
  }
  throw fail("internal", `config key ${key}: "${value}" is not a confidence in [0, 1]`);
}

function items(value) {
  return value.split(",").map((item) => item.trim()).filter((item) => item !== "");
}

/// `tenant.<tenant>.<setting>` → [tenant, setting]; the tenant is not empty.
function tenantKey(key) {
  if (!key.startsWith("tenant.")) return null;
  const rest = key.slice("tenant.".length);
  const dot = rest.lastIndexOf(".");
  return dot > 0 ? [rest.slice(0, dot), rest.slice(dot + 1)] : null;
}

function parse(config) {
  const rules = {
    categories: new Map(),
    defaultCategory: "uncategorized",
    minConfidence: 0.5,
    categoryMin: new Map(),
    review: [],
    tenantDeny: new Map(),
    tenantMin: new Map(),
  };
  for (const [key, value] of config) {
    const tenant = tenantKey(key);
    if (key.startsWith("category.")) {
      rules.categories.set(key.slice("category.".length), value);
    } else if (key === "default-category") {
      rules.defaultCategory = value;
    } else if (key === "min-confidence") {
      rules.minConfidence = confidence(key, value);
    } else if (key.startsWith("min-confidence.")) {
      rules.categoryMin.set(key.slice("min-confidence.".length), confidence(key, value));
    } else if (key === "review") {
      rules.review = items(value);
    } else if (tenant && tenant[1] === "deny") {
      rules.tenantDeny.set(tenant[0], items(value));
    } else if (tenant && tenant[1] === "min-confidence") {
      rules.tenantMin.set(tenant[0], confidence(key, value));
    } else {
      throw fail("internal", `config key ${key}: unknown (see RULES.md)`);
    }
  }
  return rules;
}

export function decide(preds, meta, config) {
  const rules = parse(config);
  if (preds.length === 0) throw fail("invalid-input", "no predictions");
  const { label, score } = preds[0];
  const category = rules.categories.has(label) ? rules.categories.get(label) : rules.defaultCategory;
  const entry = meta.find(([key]) => key === "x-tenant");
  const tenant = entry ? entry[1] : "";
  const review = rules.review.includes(label);
  const tags = [];
  if (review) tags.push("review");
  if (tenant) tags.push(`tenant:${tenant}`);
  if (tenant && (rules.tenantDeny.get(tenant) ?? []).includes(category)) {
    const reason = `category "${category}" is not accepted for tenant "${tenant}"`;
    return { accepted: false, reason, category, tags };
  }
  let threshold = rules.categoryMin.has(category) ? rules.categoryMin.get(category) : rules.minConfidence;
  if (tenant && rules.tenantMin.has(tenant)) threshold = rules.tenantMin.get(tenant);
  if (score < threshold) {
    const reason = `confidence ${score.toFixed(2)} for "${label}" is below the ${category} threshold ${threshold.toFixed(2)}`;
    return { accepted: false, reason, category, tags };
  }
  const reason = `"${label}" is ${category} at ${score.toFixed(2)}` + (review ? "; review needed" : "");
  return { accepted: true, reason, category, tags };
}

// Warm-up, run once while componentize-js pre-initializes the component (wizer snapshots the
// module after its top level ran): SpiderMonkey parses a function's body on its first call and
// compiles a regular expression on its first use, so without this every fresh instance (Tessera
// makes one per request) would do both again inside its call: 0.85 -> 0.71 ms served
// (docs/PERFORMANCE.md). It decides nothing that matters and leaves no state behind.
const WARM_UP_CONFIGS = [
  [["category.a", "x"], ["min-confidence", "0.5"], ["min-confidence.x", "0.4"], ["review", "a, b"],
    ["tenant.t.deny", "y"], ["tenant.t.min-confidence", "0.9"], ["default-category", "z"]],
  [["bad", "1"]],
];
for (const config of WARM_UP_CONFIGS) {
  for (const meta of [[], [["x-tenant", "t"]]]) {
    for (const preds of [[], [{ index: 0, label: "a", score: 0.7 }], [{ index: 1, label: "c", score: 0.1 }]]) {
      try {
        decide(preds, meta, config);
      } catch (_) {
        // The error cases are part of the warm-up.
      }
    }
  }
}
