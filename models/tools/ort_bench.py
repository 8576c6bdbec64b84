#!/usr/bin/env python3
"""onnxruntime side of Tessera's engine benchmark (host/benches/engine.rs runs it in the same
invocation, right after tract, so both see the same machine state).

Prints one JSON object: for each setup, images/s, p50 and p99 latency in ms.
  throughput_sessions:  THREADS sessions with 1 intra-op thread each, one caller per session
  throughput_shared:    1 session with THREADS intra-op threads, THREADS concurrent callers
  latency:              1 session with THREADS intra-op threads, one caller

    python models/tools/ort_bench.py MODEL --threads 2 --seconds 8
"""
import argparse
import json
import threading
import time

import numpy as np
import onnxruntime as ort


def session(model: str, threads: int) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])


def run(sessions: list, callers: int, seconds: float) -> dict:
    x = np.random.default_rng(0).normal(0, 1, (1, 3, 224, 224)).astype(np.float32)
    for s in sessions:  # warm-up
        s.run(None, {s.get_inputs()[0].name: x})
    latencies: list[list[float]] = [[] for _ in range(callers)]
    stop = time.perf_counter() + seconds

    def caller(i: int) -> None:
        s = sessions[i % len(sessions)]
        name = s.get_inputs()[0].name
        while time.perf_counter() < stop:
            t = time.perf_counter()
            s.run(None, {name: x})  # releases the GIL while it runs
            latencies[i].append((time.perf_counter() - t) * 1e3)

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(callers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    all_ms = np.array([v for l in latencies for v in l])
    return {"images_per_s": len(all_ms) / seconds, "p50_ms": float(np.percentile(all_ms, 50)),
            "p99_ms": float(np.percentile(all_ms, 99))}


def sgemm_peak_gflops() -> float:
    """Single-thread FP32 matrix-multiply rate (OpenBLAS through numpy): the practical FP32
    peak of one core, the yardstick for "% of peak"."""
    a = np.random.rand(2048, 2048).astype(np.float32)
    b = np.random.rand(2048, 2048).astype(np.float32)
    a @ b
    best = 0.0
    for _ in range(5):
        t = time.perf_counter()
        a @ b
        best = max(best, 2 * 2048 ** 3 / (time.perf_counter() - t) / 1e9)
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seconds", type=float, default=8)
    args = p.parse_args()
    n = args.threads
    out = {
        "onnxruntime": ort.__version__,
        "sgemm_gflops_per_core": sgemm_peak_gflops(),
        "throughput_sessions": run([session(args.model, 1) for _ in range(n)], n, args.seconds),
        "throughput_shared": run([session(args.model, n)], n, args.seconds),
        "latency": run([session(args.model, n)], 1, args.seconds),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
