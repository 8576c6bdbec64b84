#!/usr/bin/env python3
"""`just bench-hostile`: does a hostile guest leave the server slower? Two servers with the same
config, one pipeline per language whose rules guest is that language's hostile probe
(`tests/guests/probe-*`; Rust, Python, JavaScript, C, Go). One of them is first sent every probe
of every language (an endless loop, a memory bomb, deep recursion, a result over the cap,
10 000 `infer` calls, 64 MiB of output, ...; the same calls as the containment tests), the other
nothing. Then ROUNDS rounds (3), the servers alternated in each: N (60) normal requests of one PNG
per language pipeline to each. Prints, per language, the median request time (client-side, over
HTTP) after the probes and on the server that never saw them, and their ratio (issue 32's target:
at most 1.2x).

It is a benchmark, not a test: it compares times, which a test must not (these machines are
shared and noisy); `tests/tests/languages` checks that each probe is contained and the server
answers afterwards.
"""
import json
import statistics
import subprocess
import time
import urllib.error
import urllib.request
import os

from protocols import IMAGE, ROOT, ensure_image, run_header, wait_ready

ROUNDS = int(os.environ.get("ROUNDS", "3"))
N = int(os.environ.get("N", "60"))
TESSERA = str(ROOT / "target/release/tessera")
OUT = ROOT / "target/bench-hostile"
PROBES = {
    "rust": ["loop", "trap", "oom", "huge", "infer-flood"],
    "python": ["loop", "memory", "recursion", "huge", "infer-flood", "flood", "file", "env", "net"],
    "js": ["loop", "memory", "recursion", "huge", "infer-flood", "flood", "net"],
    "c": ["loop", "memory", "recursion", "huge", "infer-flood", "flood", "file", "env"],
    "go": ["loop", "memory", "recursion", "huge", "infer-flood", "flood", "file", "env"],
}
TARGET = 1.2


def guest(lang: str) -> str:
    return str(ROOT / "target/guests" / ("probe-rules.wasm" if lang == "rust" else f"probe-{lang}.wasm"))


def serve(name: str) -> tuple[subprocess.Popen, str]:
    OUT.mkdir(parents=True, exist_ok=True)
    config = OUT / "tessera.toml"
    config.write_text(f"models_dir = {json.dumps(str(ROOT / 'models'))}\n[guests]\n"
                      f"preprocess = {json.dumps(str(ROOT / 'target/guests/preprocess.wasm'))}\n"
                      f"postprocess = {json.dumps(str(ROOT / 'target/guests/postprocess.wasm'))}\n"
                      f"[[guests.rules]]\npath = {json.dumps(str(ROOT / 'target/guests/rules-threshold.wasm'))}\n" +
                      "".join(f"[pipelines.{lang}]\n[[pipelines.{lang}.rules]]\npath = {json.dumps(guest(lang))}\n"
                              for lang in PROBES))
    log = open(OUT / f"{name}.log", "w")
    server = subprocess.Popen([TESSERA, "--config", str(config), "serve", "--addr", "127.0.0.1:0", "--grpc-addr",
                               "off", "--admin-addr", "off", "--no-watch", "--deadline-ms", "6000"],
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=log, text=True)
    http = server.stdout.readline().strip().removeprefix("tessera listening on ")
    wait_ready(http)
    return server, http


def classify(http: str, lang: str, headers: dict) -> tuple[int, float]:
    req = urllib.request.Request(f"{http}/v1/classify?pipeline={lang}", data=IMAGE.read_bytes(),
                                 headers={"content-type": "image/png", **headers})
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            r.read()
            status = r.status
    except urllib.error.HTTPError as e:
        e.read()
        status = e.code
    return status, (time.perf_counter() - started) * 1e3


def normal(http: str, lang: str) -> list[float]:
    times = []
    for _ in range(N):
        status, ms = classify(http, lang, {})
        if status != 200:
            raise SystemExit(f"a normal request to the {lang} pipeline answered {status}")
        times.append(ms)
    return times


def main() -> None:
    ensure_image()
    print(run_header("just bench-hostile"), flush=True)
    probed, probed_http = serve("probed")
    clean, clean_http = serve("clean")
    try:
        for http in (probed_http, clean_http):  # the same warm-up for both
            for lang in PROBES:
                normal(http, lang)
        for lang, probes in PROBES.items():
            for probe in probes:
                timeout = "5000" if probe == "huge" else "1500"
                status, ms = classify(probed_http, lang, {"x-probe": probe, "x-probe-mib": "5",
                                                          "x-request-timeout-ms": timeout})
                print(f"probe {lang:<6} {probe:<12}: {status} in {ms:7.1f} ms", flush=True)
        after = {lang: [] for lang in PROBES}
        never = {lang: [] for lang in PROBES}
        for rnd in range(ROUNDS):
            for lang in PROBES:
                pair = [(probed_http, after), (clean_http, never)]
                for http, into in (pair if rnd % 2 == 0 else pair[::-1]):
                    into[lang] += normal(http, lang)
        print(f"\n| language | median after its probes | median, server never probed | ratio (target <= {TARGET}) |")
        print("|---|---|---|---|")
        for lang in PROBES:
            a, b = statistics.median(after[lang]), statistics.median(never[lang])
            verdict = "met" if a / b <= TARGET else f"missed by {a / b / TARGET - 1:.0%}"
            print(f"| {lang} | {a:.2f} ms | {b:.2f} ms | {a / b:.3f}× ({verdict}) |")
    finally:
        for s in (probed, clean):
            s.terminate()
            s.wait()


if __name__ == "__main__":
    main()
