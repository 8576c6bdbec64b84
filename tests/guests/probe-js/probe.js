// Test fixture: a hostile JavaScript rules guest (componentize-js, SpiderMonkey inside),
// misbehaving on request through the `x-probe` header the host passes as metadata. It shows
// the host's limits hold for JS as they do for the Rust, Python and C probes:
//
// - `loop`: `for (;;) {}` (only the epoch deadline stops it);
// - `memory`: keeps allocating 16 MiB buffers (the memory cap refuses the growth);
// - `recursion`: unbounded recursion (SpiderMonkey's own limit, or a trap);
// - `huge`: returns a reason of `x-probe-mib` MiB, default 32 (refused before the host copies it);
// - `flood`: console.log of 64 MiB (granted or not, the host keeps at most 16 KiB);
// - `infer-flood`: calls `inference.infer` 10 000 times, ignoring errors (capped by the host);
// - `net`: fetch() (wasi:http is not granted: the call fails naming the function);
// - anything else: accepts.
//
// It is not a production guest; guests/rules-js is the example to copy.

import { infer } from "tessera:vision/inference@0.1.0";

function attempt(action) {
  try {
    return `ok: ${action()}`;
  } catch (e) {
    return `${e && e.name ? e.name : typeof e}: ${e && e.message ? e.message : JSON.stringify(e)}`;
  }
}

function recurse(n) {
  return recurse(n + 1) + 1;
}

export function decide(preds, meta, config) {
  const probe = (meta.find(([k]) => k === "x-probe") || [])[1] || "";
  let reason = "probe accepts";
  if (probe === "loop") {
    for (;;) {}
  } else if (probe === "memory") {
    const hoard = [];
    for (;;) {
      const block = new Uint8Array(16 << 20);
      block.fill(1);
      hoard.push(block);
    }
  } else if (probe === "recursion") {
    reason = `recursion ${attempt(() => recurse(0))}`;
  } else if (probe === "huge") {
    const mib = Number((meta.find(([k]) => k === "x-probe-mib") || [])[1] || "32");
    reason = "x".repeat(mib << 20);
  } else if (probe === "flood") {
    const line = "y".repeat(1023);
    for (let i = 0; i < 64 << 10; i++) console.log(line);
    reason = "flooded";
  } else if (probe === "infer-flood") {
    const tensor = { shape: new Uint32Array([1, 3, 224, 224]), data: new Float32Array(3 * 224 * 224) };
    let answered = 0;
    for (let i = 0; i < 10000; i++) {
      if (attempt(() => infer("shapes", undefined, tensor)).startsWith("ok")) answered++;
    }
    reason = `${answered} inferences answered`;
  } else if (probe === "net") {
    reason = `net ${attempt(() => fetch("http://127.0.0.1:9/"))}`;
  }
  return { accepted: true, reason, category: undefined, tags: [] };
}
