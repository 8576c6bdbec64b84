#!/usr/bin/env python3
"""`just bench-telemetry`: what exporting traces costs a request. Two `tessera serve` of the same
binary on the default model and guests, one exporting every request's spans over OTLP/gRPC to a
collector in this process (grpcio, counting what it receives), one without an exporter, loaded
in alternation (HTTP `/v1/classify`, c = 1 and 4, ROUNDS rounds, DUR seconds per cell) so the
machine's drift hits both alike. Prints each cell, the traced/untraced ratios of each round and
their medians, and how many spans the collector received.

BASELINE=/path/to/an/older/tessera adds that binary as a third system (started with `--addr` and
`--no-watch` only, which every version has), with untraced/baseline ratios: what the serving
layer's changes cost.
"""
import json
import os
import subprocess
import sys
import threading
import time
from concurrent import futures

import grpc

from protocols import DUR, IMAGE, ROOT, ROUNDS, ensure_image, ratios_text, run_header, wait_ready


class Collector:
    """An OTLP/gRPC TraceService that accepts every export (an empty reply is a valid
    ExportTraceServiceResponse) and counts the bytes and requests it got."""

    def __init__(self) -> None:
        self.exports = 0
        self.bytes = 0
        self.lock = threading.Lock()

        def export(request: bytes, _context) -> bytes:
            with self.lock:
                self.exports += 1
                self.bytes += len(request)
            return b""

        handler = grpc.method_handlers_generic_handler(
            "opentelemetry.proto.collector.trace.v1.TraceService",
            {"Export": grpc.unary_unary_rpc_method_handler(export)})
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        self.server.add_generic_rpc_handlers((handler,))
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()


def serve(extra: list[str], binary: str = str(ROOT / "target/release/tessera")) -> tuple[subprocess.Popen, str]:
    server = subprocess.Popen([binary, "serve", "--addr", "127.0.0.1:0", "--no-watch", *extra], cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    http = server.stdout.readline().strip().removeprefix("tessera listening on ")
    wait_ready(http)
    return server, http


def main() -> None:
    ensure_image()
    print(run_header("just bench-telemetry"), flush=True)
    collector = Collector()
    off = ["--grpc-addr", "off", "--admin-addr", "off"]
    servers = {"untraced": serve(off), "traced": serve([*off, "--otlp-endpoint", f"http://127.0.0.1:{collector.port}"])}
    if os.environ.get("BASELINE"):
        servers["baseline"] = serve([], os.environ["BASELINE"])
    pairs = [("traced", "untraced")] + ([("untraced", "baseline")] if "baseline" in servers else [])
    try:
        ratios: dict[tuple, dict[str, list[float]]] = {}
        for rnd in range(1, ROUNDS + 1):
            for c in (1, 4):
                cells = {}
                for name, (server, http) in servers.items():
                    out = subprocess.run([str(ROOT / "target/release/tessera-loadgen"), "--url", f"{http}/v1/classify",
                                          "--image", str(IMAGE), "--duration-s", DUR, "--warmup-s", "1",
                                          "--server-pid", str(server.pid), "--label", name, "--concurrency", str(c)],
                                         capture_output=True, text=True, check=True)
                    cells[name] = cell = json.loads(out.stdout)
                    print(f"round {rnd} c={c} {name:<8}: {cell['rps']:6.1f} rps  p50 {cell['p50_ms']:5.2f} ms  "
                          f"p99 {cell['p99_ms']:5.1f} ms  cpu/img {cell['cpu_s_per_image']}  "
                          f"errors {sum(cell['errors'].values())}", flush=True)
                for a, b in pairs:
                    t, u = cells[a], cells[b]
                    r = ratios.setdefault((a, b, c), {"rps": [], "p50": [], "cpu": []})
                    r["rps"].append(t["rps"] / u["rps"])
                    r["p50"].append(t["p50_ms"] / u["p50_ms"])
                    r["cpu"].append(t["cpu_s_per_image"] / u["cpu_s_per_image"])
        for (a, b, c), r in ratios.items():
            print(f"{a}/{b} c={c}: " + ratios_text(r))
    finally:
        for server, _ in servers.values():
            server.terminate()
            server.wait()
        time.sleep(0.5)
        print(f"collector: {collector.exports} exports, {collector.bytes / 1e6:.1f} MB of spans")
        collector.server.stop(0)


if __name__ == "__main__":
    sys.exit(main())
