#!/usr/bin/env python3
"""The drift guard: no feature set compiles a dependency that the full build already compiled.

Cargo compiles a crate once per set of features (and per set of dependency builds) it is built
with; the file name of every artifact carries that unit's hash. `./run test` builds the full
workspace first, then the other feature sets that ship (the runtime-only server, the library alone
through the C API without the compiler, and the `serve` binary), each with
`--message-format=json-render-diagnostics`, whose stdout lists every unit of the build, fresh or
compiled. A unit of a secondary build whose hash the full build does not have, in a crate the full
build also compiled, is a second compilation of that crate: usually one feature that the full build
turns on and the secondary one does not (see "One build of each dependency" in host/Cargo.toml).

    build_units.py FULL.jsonl LABEL=SECONDARY.jsonl[:prefix,prefix...] ...

The prefixes name the crates a secondary build may compile again: the crates whose features that
build changes on purpose (wasmtime's without its compiler; tessera's own). Exits 1 naming every
other crate compiled twice, with the features each build gave it; prints one line per build.
"""
from __future__ import annotations

import json
import re
import sys
from collections import defaultdict
from pathlib import Path


# A unit's hash, in its artifacts' file names (libfoo-<hash>.rlib) or folder (build/foo-<hash>/).
UNIT_HASH = re.compile(r"-([0-9a-f]{16})(?=[./]|$)")


def units(path: Path) -> dict[tuple[str, str], dict[frozenset[str], list[str]]]:
    """(crate name@version, target kind and name) -> {the unit's hashes: features}.

    The hashes, not the paths: a crate the build was asked for is also reported at its uplifted
    path (target/release/libfoo.rlib), one it only depends on at deps/libfoo-<hash>.rlib."""
    out: dict[tuple[str, str], dict[frozenset[str], list[str]]] = defaultdict(dict)
    for line in path.read_text().splitlines():
        if not line.startswith("{"):
            continue
        message = json.loads(line)
        if message.get("reason") != "compiler-artifact":
            continue
        # package_id: "registry+https://...#name@1.2.3" or "path+file:///...#0.1.0" (a path crate
        # named like its folder carries only the version): the target's own name for those.
        package = message["package_id"].rsplit("#", 1)[-1]
        if "@" not in package:
            package = f"{message['target']['name']}@{package}"
        target = f"{'+'.join(message['target']['kind'])}:{message['target']['name']}"
        names = frozenset(h for f in message["filenames"] for h in UNIT_HASH.findall(f))
        if not names:  # an uplifted binary alone: its path is all there is
            names = frozenset(message["filenames"])
        out[(package, target)][names] = sorted(message["features"])
    return out


def main(argv: list[str]) -> int:
    if len(argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    full = units(Path(argv[1]))
    if not full:
        print(f"build_units: {argv[1]} lists no units: was it written with --message-format=json?", file=sys.stderr)
        return 2
    failed = False
    for spec in argv[2:]:
        label, _, rest = spec.partition("=")
        path, _, prefixes = rest.partition(":")
        allowed = tuple(p for p in prefixes.split(",") if p)
        secondary = units(Path(path))
        if not secondary:
            print(f"build_units: {path} lists no units", file=sys.stderr)
            return 2
        twice = []
        for key, builds in sorted(secondary.items()):
            if key not in full or key[0].startswith(allowed):
                continue
            for names, features in builds.items():
                if names not in full[key]:
                    if features in full[key].values():
                        why = "same features, a dependency built differently"
                    else:
                        theirs = " or ".join(str(f) for f in full[key].values())
                        why = f"features {features} here, {theirs} in the full build"
                    twice.append(f"  {key[0]} ({key[1]}): {why}")
        if twice:
            failed = True
            print(f"build_units: the {label} build compiled {len(twice)} unit(s) the full build already has, "
                  "with other features or other dependency builds (the crates whose own features differ "
                  "are the ones to pin in host/Cargo.toml):")
            print("\n".join(twice))
        else:
            shared = sum(1 for key in secondary if key in full)
            print(f"build_units: {label}: {shared} crates shared with the full build, none compiled again"
                  + (f" (allowed to: {', '.join(allowed)})" if allowed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
