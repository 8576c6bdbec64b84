#!/usr/bin/env python3
"""`just bench-guests`: the reference rule set in each language (guests/conformance/RULES.md),
through the real binary, side by side with the Rust one in the same run.

For each language: component size; `tessera compile` time and `.cwasm` size; then ROUNDS rounds,
languages alternated within each, of one `tessera serve --rule <lang>.cwasm --no-compile-cache`:
the `.cwasm` load time (the server's own `guest loaded` log line), then N sequential requests
(after WARM warm-up ones) of one image over HTTP, reading each response's `timings_ms` and the
rules guest's `instantiate_ms` / `call_ms` from `guests`. Prints medians per language and their
ratios to Rust, and the rules stage's share of the request's total.

With BASELINE=<path to another tessera binary>, an A/B instead: for the languages in AB_LANGS
(default python,js,go), that binary and this build's alternated in each round, the same
requests; prints each round's ratio of the rules stage and of the total, this build over the
baseline. (Build the baseline from the commit to compare, copy target/release/tessera aside.)
"""
import json
import os
import re
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from protocols import IMAGE, ROOT, ensure_image, run_header, wait_ready  # noqa: E402

LANGS = ["rust", "python", "js", "c", "go"]
# Also served with `limits.guest_keep_resident_bytes = 0` (slots hand their pages back to the
# kernel after each call), to show what keeping them resident buys in the served path.
NO_KEEP = ["python", "js", "go"]
ROUNDS = int(os.environ.get("ROUNDS", "3"))
N = int(os.environ.get("N", "200"))
WARM = int(os.environ.get("WARM", "30"))
TESSERA = str(ROOT / "target/release/tessera")
OUT = ROOT / "target/bench-guests"
CONFIG = {"category.crescent": "round", "min-confidence": "0.5", "review": "star"}
# Issue 32's targets for the served rules stage's median, in ms.
TARGETS = {"python": 1.0, "js": 0.8, "go": 0.5}


def compile_all() -> dict:
    OUT.mkdir(parents=True, exist_ok=True)
    facts = {}
    for lang in LANGS:
        wasm = ROOT / f"target/guests/rules-{lang}.wasm"
        cwasm = OUT / f"rules-{lang}.cwasm"
        t = time.perf_counter()
        subprocess.run([TESSERA, "compile", str(wasm), "-o", str(cwasm)], check=True, stdout=subprocess.DEVNULL)
        facts[lang] = {"wasm_bytes": wasm.stat().st_size, "compile_s": time.perf_counter() - t,
                       "cwasm_bytes": cwasm.stat().st_size}
    return facts


def serve_once(lang: str, keep: bool = True, binary: str = TESSERA) -> dict:
    cwasm = OUT / f"rules-{lang}.cwasm"
    config = OUT / f"{lang}{'' if keep else '-nokeep'}.toml"
    # Paths in a config file are relative to it: name the defaults absolutely.
    config.write_text(f"models_dir = {json.dumps(str(ROOT / 'models'))}\n[guests]\n"
                      f"preprocess = {json.dumps(str(ROOT / 'target/guests/preprocess.wasm'))}\n"
                      f"postprocess = {json.dumps(str(ROOT / 'target/guests/postprocess.wasm'))}\n"
                      f"[[guests.rules]]\npath = {json.dumps(str(cwasm))}\n[guests.rules.config]\n" +
                      "".join(f"{json.dumps(k)} = {json.dumps(v)}\n" for k, v in CONFIG.items()) +
                      ("" if keep else "[limits]\nguest_keep_resident_bytes = 0\n"))
    log = OUT / f"{lang}.log"
    with open(log, "w") as err:
        server = subprocess.Popen([binary, "--config", str(config), "serve", "--addr", "127.0.0.1:0", "--grpc-addr",
                                   "off", "--admin-addr", "off", "--no-watch", "--no-compile-cache"],
                                  cwd=ROOT, stdout=subprocess.PIPE, stderr=err, text=True)
    try:
        http = server.stdout.readline().strip().removeprefix("tessera listening on ")
        wait_ready(http)
        line = next(l for l in log.read_text().splitlines() if "guest loaded" in l and f"rules-{lang}" in l)
        load_ms = int(re.search(r"load_ms=(\d+)", line).group(1))
        body = IMAGE.read_bytes()
        rows = []
        for i in range(WARM + N):
            req = urllib.request.Request(f"{http}/v1/classify", data=body, headers={"content-type": "image/png"})
            with urllib.request.urlopen(req, timeout=10) as r:
                answer = json.load(r)
            if i >= WARM:
                rule = next(g for g in answer["guests"] if g["stage"] == "rules")
                rows.append((rule["instantiate_ms"], rule["call_ms"], answer["timings_ms"]["rules"],
                             answer["timings_ms"]["total"], answer["decision"]["reason"]))
        reasons = {r[4] for r in rows}
        med = lambda k: statistics.median(r[k] for r in rows)  # noqa: E731
        return {"load_ms": load_ms, "instantiate_ms": med(0), "call_ms": med(1), "rules_ms": med(2),
                "total_ms": med(3), "reasons": reasons}
    finally:
        server.terminate()
        server.wait()


def ab(baseline: str) -> None:
    """This build against `baseline`, alternated per round: per-round ratios and their median."""
    langs = os.environ.get("AB_LANGS", "python,js,go").split(",")
    ratios = {lang: {"rules_ms": [], "total_ms": []} for lang in langs}
    for rnd in range(1, ROUNDS + 1):
        for lang in langs:
            base, new = serve_once(lang, binary=baseline), serve_once(lang)
            for key in ("rules_ms", "total_ms"):
                ratios[lang][key].append(new[key] / base[key])
            print(f"round {rnd} {lang:<7}: rules {base['rules_ms']:.3f} -> {new['rules_ms']:.3f} ms, "
                  f"total {base['total_ms']:.3f} -> {new['total_ms']:.3f} ms", flush=True)
    print("\n| language | rules stage, this build / baseline | request total |")
    print("|---|---|---|")
    for lang in langs:
        r = ratios[lang]
        print(f"| {lang} | {statistics.median(r['rules_ms']):.3f}× "
              f"({' '.join(f'{x:.2f}' for x in r['rules_ms'])}) | {statistics.median(r['total_ms']):.3f}× |")


def main() -> None:
    ensure_image()
    print(run_header("just bench-guests"), flush=True)
    facts = compile_all()
    if os.environ.get("BASELINE"):
        return ab(os.environ["BASELINE"])
    runs = {lang: [] for lang in LANGS}
    nokeep = {lang: [] for lang in NO_KEEP}
    for rnd in range(1, ROUNDS + 1):
        for lang in LANGS + [f"{lang}-nokeep" for lang in NO_KEEP]:
            name = lang.removesuffix("-nokeep")
            r = serve_once(name, keep=not lang.endswith("-nokeep"))
            (runs if name == lang else nokeep)[name].append(r)
            print(f"round {rnd} {lang:<13}: load {r['load_ms']:4d} ms  instantiate {r['instantiate_ms']:.3f}  "
                  f"call {r['call_ms']:.3f}  rules {r['rules_ms']:.3f}  total {r['total_ms']:.3f} ms", flush=True)
    reasons = {lang: set().union(*(r["reasons"] for r in runs[lang])) for lang in LANGS}
    if len({frozenset(v) for v in reasons.values()}) != 1:
        raise SystemExit(f"the languages decided differently: {reasons}")
    med = {lang: {k: statistics.median(r[k] for r in runs[lang]) for k in
                  ("load_ms", "instantiate_ms", "call_ms", "rules_ms", "total_ms")} for lang in LANGS}
    rust = med["rust"]
    print("\n| language | component | compile | .cwasm | .cwasm load | instantiate | call | rules stage | "
          "total | rules share | rules ×Rust | total ×Rust |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for lang in LANGS:
        f, m = facts[lang], med[lang]
        print(f"| {lang} | {f['wasm_bytes'] / 1e6:.2f} MB | {f['compile_s']:.2f} s | {f['cwasm_bytes'] / 1e6:.1f} MB | "
              f"{m['load_ms']:.0f} ms | {m['instantiate_ms']:.3f} ms | {m['call_ms']:.3f} ms | {m['rules_ms']:.3f} ms | "
              f"{m['total_ms']:.2f} ms | {m['rules_ms'] / m['total_ms']:.0%} | {m['rules_ms'] / rust['rules_ms']:.1f}× | "
              f"{m['total_ms'] / rust['total_ms']:.2f}× |")
    print()
    for lang, target in TARGETS.items():
        got = med[lang]["rules_ms"]
        verdict = "met" if got <= target else f"missed by {got / target - 1:.0%}"
        print(f"{lang}: rules stage {got:.3f} ms, target <= {target} ms: {verdict}")
    print("\n| language | rules stage, slots keep pages | rules stage, keep_resident = 0 | ratio |")
    print("|---|---|---|---|")
    for lang in NO_KEEP:
        a = med[lang]["rules_ms"]
        b = statistics.median(r["rules_ms"] for r in nokeep[lang])
        print(f"| {lang} | {a:.3f} ms | {b:.3f} ms | {a / b:.2f}× |")


if __name__ == "__main__":
    main()
