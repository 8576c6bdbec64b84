"""Test fixture: a hostile Python rules guest (componentize-py), misbehaving on request through
the `x-probe` header the host passes as metadata. It shows that the host's limits hold for a
guest whose runtime is an interpreter, not only for the Rust probe:

- `loop`: `while True` (only the epoch deadline stops it);
- `memory`: keeps allocating 16 MiB buffers (the memory cap refuses the growth);
- `recursion`: recursion with Python's limit lifted (CPython's frames live on its heap: the
  memory cap ends it, or the wasm stack overflows: a trap);
- `huge`: returns a 100 MB reason (refused before the host copies it);
- `flood`: prints 64 MiB to stdout (granted or not, the host keeps at most 16 KiB);
- `infer-flood`: calls `inference.infer` 10 000 times, ignoring errors (capped by the host);
- `file`, `env`, `net`: reads a file, the environment, opens a socket, and says what happened;
- anything else: accepts.

It is not a production guest; `guests/rules-python` is the example to copy.
"""

import os
import sys

import wit_world
from wit_world.imports import inference, types


def attempt(action) -> str:
    try:
        return f"ok: {action()}"
    except BaseException as e:  # noqa: BLE001 - the point is to report whatever happens
        return f"{type(e).__name__}: {e}"


def recurse(n: int) -> int:
    return recurse(n + 1) + 1


class WitWorld(wit_world.WitWorld):
    def decide(self, preds, meta, config) -> types.Decision:
        probe = next((v for k, v in meta if k == "x-probe"), "")
        reason = "probe accepts"
        if probe == "loop":
            while True:
                pass
        elif probe == "memory":
            hoard = []
            while True:
                hoard.append(bytearray(16 << 20))
        elif probe == "recursion":
            sys.setrecursionlimit(10**8)
            recurse(0)
        elif probe == "huge":
            reason = "x" * (100 << 20)
        elif probe == "flood":
            line = "y" * 1023
            for _ in range(64 << 10):
                print(line)
            reason = "flooded"
        elif probe == "infer-flood":
            tensor = types.Tensor(shape=[1, 3, 224, 224], data=[0.0] * (3 * 224 * 224))
            answered = sum(
                1 for _ in range(10_000) if attempt(lambda: inference.infer("shapes", None, tensor)).startswith("ok")
            )
            reason = f"{answered} inferences answered"
        elif probe == "file":
            reason = "file " + attempt(lambda: open("/etc/passwd").read(16))
        elif probe == "env":
            reason = f"env {len(os.environ)} vars"
        elif probe == "net":
            import socket

            reason = "net " + attempt(lambda: socket.create_connection(("127.0.0.1", 9), timeout=1))
        return types.Decision(True, reason, None, [])
