// The reference rule set (guests/conformance/RULES.md) in C, as a Tessera rules guest.
//
// Built by `just guests`: wit-bindgen's C generator (through tessera-bindgen) writes rules.h,
// rules.c and rules_component_type.o from wit/tessera.wit; clang compiles for wasm32-wasi
// against Debian's wasi-libc; wasm-tools makes the component with wasmtime's preview1 adapter.
//
// Strings from the host are (pointer, length) and not NUL-terminated. The host frees nothing
// of ours: what `decide` returns is released by the generated post-return function, so every
// returned string is heap-allocated.

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rules.h"

typedef struct {
  const char *p;
  size_t n;
} str;

static str view(const rules_string_t *s) { return (str){(const char *)s->ptr, s->len}; }
static str cstr(const char *s) { return (str){s, strlen(s)}; }
static int eq(str a, str b) { return a.n == b.n && memcmp(a.p, b.p, a.n) == 0; }
static int starts(str s, str prefix) { return s.n >= prefix.n && memcmp(s.p, prefix.p, prefix.n) == 0; }
static str rest(str s, size_t from) { return (str){s.p + from, s.n - from}; }

static int is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }

// Whether the comma-separated list `list` has the item `item` (items trimmed, empty ones dropped).
static int list_has(str list, str item) {
  size_t i = 0;
  while (i <= list.n) {
    size_t j = i;
    while (j < list.n && list.p[j] != ',') j++;
    str part = {list.p + i, j - i};
    while (part.n && is_space(part.p[0])) part = rest(part, 1);
    while (part.n && is_space(part.p[part.n - 1])) part.n--;
    if (part.n && eq(part, item)) return 1;
    i = j + 1;
  }
  return 0;
}

// A string the post-return function frees.
static void set(rules_string_t *out, const char *fmt, ...) {
  va_list args;
  va_start(args, fmt);
  int n = vsnprintf(NULL, 0, fmt, args);
  va_end(args);
  char *buf = malloc((size_t)n + 1);
  va_start(args, fmt);
  vsnprintf(buf, (size_t)n + 1, fmt, args);
  va_end(args);
  out->ptr = (uint8_t *)buf;
  out->len = (size_t)n;
}

static bool fail(rules_error_t *err, uint8_t tag, const char *fmt, str a, str b) {
  err->tag = tag;
  set(&err->val.internal, fmt, (int)a.n, a.p, (int)b.n, b.p);
  return false;
}

// RULES.md: digits with an optional fraction, nothing else, in [0, 1]. Returns -1 otherwise.
static double confidence(str value) {
  size_t i = 0;
  while (i < value.n && value.p[i] >= '0' && value.p[i] <= '9') i++;
  if (i == 0) return -1;
  if (i < value.n && value.p[i] == '.') {
    i++;
    while (i < value.n && value.p[i] >= '0' && value.p[i] <= '9') i++;
  }
  if (i != value.n) return -1;
  char copy[64];
  if (value.n >= sizeof copy) {
    // Long spellings are still plain decimals; strtod needs a terminated copy.
    char *heap = strndup(value.p, value.n);
    double v = strtod(heap, NULL);
    free(heap);
    return v <= 1.0 ? v : -1;
  }
  memcpy(copy, value.p, value.n);
  copy[value.n] = 0;
  double v = strtod(copy, NULL);
  return v <= 1.0 ? v : -1;
}

// `tenant.<tenant>.<setting>`: the setting after the last dot; the tenant is not empty.
static int tenant_setting(str key, str *setting) {
  if (!starts(key, cstr("tenant."))) return 0;
  str tail = rest(key, 7);
  for (size_t i = tail.n; i-- > 0;) {
    if (tail.p[i] == '.') {
      if (i == 0) return 0;
      *setting = rest(tail, i + 1);
      return 1;
    }
  }
  return 0;
}

// The value of `prefix` + `name` + `suffix` in `config`, if any (the last such entry).
static int lookup(const rules_metadata_t *config, str prefix, str name, str suffix, str *value) {
  int found = 0;
  for (size_t i = 0; i < config->len; i++) {
    str key = view(&config->ptr[i].f0);
    if (key.n == prefix.n + name.n + suffix.n && starts(key, prefix) && starts(rest(key, prefix.n), name) &&
        eq(rest(key, prefix.n + name.n), suffix)) {
      *value = view(&config->ptr[i].f1);
      found = 1;
    }
  }
  return found;
}

// Checks every key in order; the first bad one fails the call.
static bool check_config(const rules_metadata_t *config, rules_error_t *err) {
  for (size_t i = 0; i < config->len; i++) {
    str key = view(&config->ptr[i].f0), value = view(&config->ptr[i].f1), setting;
    int is_confidence = eq(key, cstr("min-confidence")) || starts(key, cstr("min-confidence.")) ||
                        (tenant_setting(key, &setting) && eq(setting, cstr("min-confidence")));
    if (is_confidence) {
      if (confidence(value) < 0)
        return fail(err, TESSERA_VISION_TYPES_ERROR_INTERNAL, "config key %.*s: \"%.*s\" is not a confidence in [0, 1]",
                    key, value);
    } else if (!starts(key, cstr("category.")) && !eq(key, cstr("default-category")) && !eq(key, cstr("review")) &&
               !(tenant_setting(key, &setting) && eq(setting, cstr("deny")))) {
      return fail(err, TESSERA_VISION_TYPES_ERROR_INTERNAL, "config key %.*s: unknown (see RULES.md)%.*s", key,
                  cstr(""));
    }
  }
  return true;
}

bool exports_rules_decide(rules_list_prediction_t *preds, rules_metadata_t *meta, rules_metadata_t *config,
                          rules_decision_t *ret, rules_error_t *err) {
  bool ok = check_config(config, err);
  if (ok && preds->len == 0) {
    ok = fail(err, TESSERA_VISION_TYPES_ERROR_INVALID_INPUT, "no predictions%.*s%.*s", cstr(""), cstr(""));
  }
  if (ok) {
    str label = view(&preds->ptr[0].label), none = cstr(""), category, tenant = none, value;
    double score = preds->ptr[0].score;
    if (!lookup(config, cstr("category."), label, none, &category) &&
        !lookup(config, cstr("default-category"), none, none, &category)) {
      category = cstr("uncategorized");
    }
    for (size_t i = 0; i < meta->len; i++) {
      if (eq(view(&meta->ptr[i].f0), cstr("x-tenant"))) {
        tenant = view(&meta->ptr[i].f1);
        break;
      }
    }
    str review_list;
    int review = lookup(config, cstr("review"), none, none, &review_list) && list_has(review_list, label);
    ret->tags.len = (size_t)review + (tenant.n > 0);
    ret->tags.ptr = calloc(ret->tags.len ? ret->tags.len : 1, sizeof(rules_string_t));
    size_t tag = 0;
    if (review) set(&ret->tags.ptr[tag++], "review");
    if (tenant.n) set(&ret->tags.ptr[tag++], "tenant:%.*s", (int)tenant.n, tenant.p);
    ret->category.is_some = true;
    set(&ret->category.val, "%.*s", (int)category.n, category.p);

    str deny;
    double threshold = 0.5;
    if (tenant.n && lookup(config, cstr("tenant."), tenant, cstr(".deny"), &deny) && list_has(deny, category)) {
      ret->accepted = false;
      set(&ret->reason, "category \"%.*s\" is not accepted for tenant \"%.*s\"", (int)category.n, category.p,
          (int)tenant.n, tenant.p);
    } else {
      if (tenant.n && lookup(config, cstr("tenant."), tenant, cstr(".min-confidence"), &value)) {
        threshold = confidence(value);
      } else if (lookup(config, cstr("min-confidence."), category, none, &value)) {
        threshold = confidence(value);
      } else if (lookup(config, cstr("min-confidence"), none, none, &value)) {
        threshold = confidence(value);
      }
      ret->accepted = !(score < threshold);
      if (!ret->accepted) {
        set(&ret->reason, "confidence %.2f for \"%.*s\" is below the %.*s threshold %.2f", score, (int)label.n,
            label.p, (int)category.n, category.p, threshold);
      } else {
        set(&ret->reason, "\"%.*s\" is %.*s at %.2f%s", (int)label.n, label.p, (int)category.n, category.p, score,
            review ? "; review needed" : "");
      }
    }
  }
  rules_list_prediction_free(preds);
  rules_metadata_free(meta);
  rules_metadata_free(config);
  return ok;
}
