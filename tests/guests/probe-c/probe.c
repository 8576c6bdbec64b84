// Test fixture: a hostile C rules guest (wit-bindgen's C generator, wasi-libc, the preview1
// adapter), misbehaving on request through the `x-probe` header the host passes as metadata.
// It shows the host's limits hold for C as they do for the Rust and Python probes:
//
// - `loop`: spins forever (only the epoch deadline stops it);
// - `memory`: keeps allocating 16 MiB blocks and aborts when malloc fails (the memory cap);
// - `recursion`: unbounded recursion with a frame on the shadow stack (a trap, whichever of
//   the wasm call stack or the memory runs out first);
// - `huge`: returns a 100 MB reason (refused before the host copies it);
// - `flood`: prints 64 MiB to stdout (granted or not, the host keeps at most 16 KiB);
// - `infer-flood`: calls `inference.infer` 10 000 times, ignoring errors (capped by the host);
// - `file`, `env`: opens a file, reads the environment, and says what happened;
// - anything else: accepts.
//
// It is not a production guest; guests/rules-c is the example to copy.

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rules.h"

extern char **environ;

// Where the memory probe leaves each block, so the compiler must make it.
static char *volatile sink;

static void set(rules_string_t *out, const char *text) {
  size_t n = strlen(text);
  out->ptr = malloc(n + 1);
  memcpy(out->ptr, text, n + 1);
  out->len = n;
}

static int is(const rules_string_t *s, const char *text) {
  return s->len == strlen(text) && memcmp(s->ptr, text, s->len) == 0;
}

// Each call's frame keeps a buffer the optimizer cannot drop, so the recursion uses memory.
// `limit` is never reached (the caller passes UINT32_MAX); it only keeps the compiler from
// calling the recursion infinite.
static __attribute__((noinline)) unsigned recurse(unsigned n, unsigned limit) {
  volatile char frame[256];
  frame[n % sizeof frame] = (char)n;
  if (n == limit) return 0;
  return recurse(n + 1, limit) + frame[0];
}

bool exports_rules_decide(rules_list_prediction_t *preds, rules_metadata_t *meta, rules_metadata_t *config,
                          rules_decision_t *ret, rules_error_t *err) {
  (void)err;
  ret->reason = (rules_string_t){0};
  const rules_string_t *probe = NULL;
  for (size_t i = 0; i < meta->len; i++) {
    if (is(&meta->ptr[i].f0, "x-probe")) probe = &meta->ptr[i].f1;
  }
  char reason[256] = "probe accepts";
  if (probe && is(probe, "loop")) {
    for (volatile unsigned long n = 0;; n++) {
    }
  } else if (probe && is(probe, "memory")) {
    for (;;) {
      char *block = malloc(16 << 20);
      if (!block) abort();
      memset(block, 1, 16 << 20);
      sink = block;  // else clang drops the unused allocation and this loop spins forever
    }
  } else if (probe && is(probe, "recursion")) {
    snprintf(reason, sizeof reason, "recursion returned %u", recurse(0, UINT32_MAX));
  } else if (probe && is(probe, "huge")) {
    size_t n = 100 << 20;
    ret->reason.ptr = malloc(n);
    memset(ret->reason.ptr, 'x', n);
    ret->reason.len = n;
  } else if (probe && is(probe, "flood")) {
    char line[1024];
    memset(line, 'y', sizeof line - 1);
    line[sizeof line - 1] = 0;
    for (int i = 0; i < 64 << 10; i++) puts(line);
    strcpy(reason, "flooded");
  } else if (probe && is(probe, "infer-flood")) {
    size_t len = 3 * 224 * 224;
    uint32_t shape[] = {1, 3, 224, 224};
    float *data = calloc(len, sizeof(float));
    int answered = 0;
    for (int i = 0; i < 10000; i++) {
      rules_string_t model = {(uint8_t *)"shapes", 6};
      tessera_vision_inference_tensor_t input = {{shape, 4}, {data, len}}, out;
      tessera_vision_inference_error_t failed;
      if (tessera_vision_inference_infer(&model, NULL, &input, &out, &failed)) {
        answered++;
        tessera_vision_types_tensor_free(&out);
      } else {
        tessera_vision_types_error_free(&failed);
      }
    }
    snprintf(reason, sizeof reason, "%d inferences answered", answered);
  } else if (probe && is(probe, "file")) {
    FILE *f = fopen("/etc/passwd", "r");
    snprintf(reason, sizeof reason, "file %s", f ? "ok: opened" : strerror(errno));
  } else if (probe && is(probe, "env")) {
    int n = 0;
    for (char **e = environ; e && *e; e++) n++;
    snprintf(reason, sizeof reason, "env %d vars", n);
  }
  ret->accepted = true;
  if (!ret->reason.ptr) set(&ret->reason, reason);
  ret->category.is_some = false;
  ret->tags.len = 0;
  ret->tags.ptr = NULL;
  rules_list_prediction_free(preds);
  rules_metadata_free(meta);
  rules_metadata_free(config);
  return true;
}
