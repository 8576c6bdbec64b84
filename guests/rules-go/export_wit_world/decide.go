// Package export_wit_world is the reference rule set (guests/conformance/RULES.md) in Go: the
// package the generated bindings call for the `rules` world's export.
//
// Built by `just guests`: wit-bindgen's Go generator (through tessera-bindgen) writes module
// `wit_component` (bindings, main, go.mod) around this directory, go.mod's
// go.bytecodealliance.org/pkg is replaced by the copy inside the wit-bindgen-go crate (no Go
// proxy is reachable here), then `GOOS=wasip1 GOARCH=wasm go build -buildmode=c-shared` and
// wasm-tools with wasmtime's preview1 reactor adapter make the component.
package export_wit_world

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"

	"wit_component/tessera_vision_types"

	witTypes "go.bytecodealliance.org/pkg/wit/types"
)

type (
	prediction = tessera_vision_types.Prediction
	metadata   = []witTypes.Tuple2[string, string]
	decision   = tessera_vision_types.Decision
	witError   = tessera_vision_types.Error
	result     = witTypes.Result[decision, witError]
)

// RULES.md: digits with an optional fraction, nothing else, so every language parses alike.
var confidencePattern = regexp.MustCompile(`^[0-9]+(\.[0-9]*)?$`)

type rules struct {
	categories      map[string]string
	defaultCategory string
	minConfidence   float64
	categoryMin     map[string]float64
	review          []string
	tenantDeny      map[string][]string
	tenantMin       map[string]float64
}

func confidence(key, value string) (float64, error) {
	if confidencePattern.MatchString(value) {
		if parsed, err := strconv.ParseFloat(value, 64); err == nil && parsed >= 0 && parsed <= 1 {
			return parsed, nil
		}
	}
	return 0, fmt.Errorf("config key %s: \"%s\" is not a confidence in [0, 1]", key, value)
}

func items(value string) []string {
	var out []string
	for _, item := range strings.Split(value, ",") {
		if item = strings.TrimSpace(item); item != "" {
			out = append(out, item)
		}
	}
	return out
}

func contains(list []string, item string) bool {
	for _, x := range list {
		if x == item {
			return true
		}
	}
	return false
}

// tenantKey splits `tenant.<tenant>.<setting>`; the tenant is not empty.
func tenantKey(key string) (string, string, bool) {
	rest, ok := strings.CutPrefix(key, "tenant.")
	dot := strings.LastIndex(rest, ".")
	if !ok || dot <= 0 {
		return "", "", false
	}
	return rest[:dot], rest[dot+1:], true
}

func parse(config metadata) (*rules, error) {
	r := &rules{
		categories:      map[string]string{},
		defaultCategory: "uncategorized",
		minConfidence:   0.5,
		categoryMin:     map[string]float64{},
		tenantDeny:      map[string][]string{},
		tenantMin:       map[string]float64{},
	}
	for _, entry := range config {
		key, value := entry.F0, entry.F1
		tenant, setting, isTenant := tenantKey(key)
		var err error
		switch {
		case strings.HasPrefix(key, "category."):
			r.categories[strings.TrimPrefix(key, "category.")] = value
		case key == "default-category":
			r.defaultCategory = value
		case key == "min-confidence":
			r.minConfidence, err = confidence(key, value)
		case strings.HasPrefix(key, "min-confidence."):
			r.categoryMin[strings.TrimPrefix(key, "min-confidence.")], err = confidence(key, value)
		case key == "review":
			r.review = items(value)
		case isTenant && setting == "deny":
			r.tenantDeny[tenant] = items(value)
		case isTenant && setting == "min-confidence":
			r.tenantMin[tenant], err = confidence(key, value)
		default:
			err = fmt.Errorf("config key %s: unknown (see RULES.md)", key)
		}
		if err != nil {
			return nil, err
		}
	}
	return r, nil
}

// Decide is the world's export.
func Decide(preds []prediction, meta metadata, config metadata) result {
	r, err := parse(config)
	if err != nil {
		return witTypes.Err[decision](tessera_vision_types.MakeErrorInternal(err.Error()))
	}
	if len(preds) == 0 {
		return witTypes.Err[decision](tessera_vision_types.MakeErrorInvalidInput("no predictions"))
	}
	label, score := preds[0].Label, float64(preds[0].Score)
	category, ok := r.categories[label]
	if !ok {
		category = r.defaultCategory
	}
	tenant := ""
	for _, entry := range meta {
		if entry.F0 == "x-tenant" {
			tenant = entry.F1
			break
		}
	}
	review := contains(r.review, label)
	tags := []string{}
	if review {
		tags = append(tags, "review")
	}
	if tenant != "" {
		tags = append(tags, "tenant:"+tenant)
	}
	answer := func(accepted bool, reason string) result {
		return witTypes.Ok[decision, witError](decision{
			Accepted: accepted, Reason: reason, Category: witTypes.Some(category), Tags: tags,
		})
	}
	if tenant != "" && contains(r.tenantDeny[tenant], category) {
		return answer(false, fmt.Sprintf("category \"%s\" is not accepted for tenant \"%s\"", category, tenant))
	}
	threshold, ok := r.categoryMin[category]
	if !ok {
		threshold = r.minConfidence
	}
	if t, ok := r.tenantMin[tenant]; ok && tenant != "" {
		threshold = t
	}
	if score < threshold {
		return answer(false, fmt.Sprintf("confidence %.2f for \"%s\" is below the %s threshold %.2f", score, label, category, threshold))
	}
	reason := fmt.Sprintf("\"%s\" is %s at %.2f", label, category, score)
	if review {
		reason += "; review needed"
	}
	return answer(true, reason)
}
