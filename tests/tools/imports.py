#!/usr/bin/env python3
"""The picture of the imports between the modules of a crate, and the check that it has no circle
and no arrow back up.

    imports.py SRC_DIR LAYERS_MD [--files] [--dot OUT.dot]

Every `.rs` file under SRC_DIR but `main.rs` (the binary, a crate of its own) is a node, named by
its module path (`server::http`; `lib` for the crate root). An edge A -> B is any `crate::`,
`super::` or `self::` path in A's code, or one that starts with the name of A's own child module
(`http::route` in server/mod.rs), outside comments, strings and `#[cfg(test)]` modules, that names
B or something in B: the longest module prefix of the path is the target, so
`crate::runtime::Runtime` points at `runtime` (its mod.rs), and a name the crate root re-exports
(`crate::Host`) points at `lib`, the facade. `--files` prints every edge with the paths behind it;
`--dot` writes the top-level picture for Graphviz.

LAYERS_MD (ARCHITECTURE.md) holds the layers between the markers `<!-- layers -->` and
`<!-- /layers -->` (`--block "layers server"`: `<!-- layers server -->`, another crate's), one line
per layer from the bottom up, each a list of top-level modules:

    1. `error`, `cpu`
    2. `config`

A module may import its own layer and the layers below, never one above (an arrow back up), and
the files may form no circle, neither between top-level modules nor between the files of one
folder. A file naming an item of its own folder's mod.rs (`super::ConvShape`: the interface the
folder's files share) is allowed and is not part of the circle check. Exits 1 naming every circle
and every arrow back up.

A hand-written script rather than `cargo modules`: that would be one more tool compiled from source
on every CI machine (it links rust-analyzer's crates), while a circle here is a question about
paths in the source, which a tokenizer answers in under a second. What it cannot see: a path
spelled through a `use` alias of a module (`use super::http as h; h::x`) counts as the alias's
target only where the `use` names it.
"""
from __future__ import annotations

import argparse
import re
import sys
from collections import defaultdict
from pathlib import Path

IDENT = r"[A-Za-z_][A-Za-z0-9_]*"


def strip_comments_and_strings(text: str) -> str:
    """The code with comments, string and char literals blanked (lengths kept)."""
    out = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            out.append(" " * (j - i))
            i = j
        elif text.startswith("/*", i):
            depth, j = 1, i + 2
            while j < n and depth:
                if text.startswith("/*", j):
                    depth, j = depth + 1, j + 2
                elif text.startswith("*/", j):
                    depth, j = depth - 1, j + 2
                else:
                    j += 1
            out.append(re.sub(r"[^\n]", " ", text[i:j]))
            i = j
        elif c == "r" and re.match(r'r#*"', text[i:]) and (i == 0 or not re.match(r"\w", text[i - 1])):
            hashes = re.match(r"r(#*)\"", text[i:]).group(1)
            end = text.find('"' + hashes, i + 2 + len(hashes))
            j = n if end < 0 else end + 1 + len(hashes)
            out.append(re.sub(r"[^\n]", " ", text[i:j]))
            i = j
        elif c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            out.append(re.sub(r"[^\n]", " ", text[i : j + 1]))
            i = j + 1
        elif c == "'":
            # A char literal ('a', '\n', '\u{1F600}'), not a lifetime ('a).
            m = re.match(r"'(\\u\{[0-9a-fA-F]+\}|\\.|[^\\'])'", text[i:])
            if m:
                out.append(" " * len(m.group(0)))
                i += len(m.group(0))
            else:
                out.append(c)
                i += 1
        else:
            out.append(c)
            i += 1
    return "".join(out)


def strip_test_modules(code: str) -> str:
    """The code without `#[cfg(test)] mod name { ... }` blocks."""
    while True:
        m = re.search(r"#\[cfg\(test\)\]\s*(pub(\([^)]*\))?\s+)?mod\s+" + IDENT + r"\s*\{", code)
        if not m:
            return code
        depth, j = 1, m.end()
        while j < len(code) and depth:
            depth += {"{": 1, "}": -1}.get(code[j], 0)
            j += 1
        code = code[: m.start()] + re.sub(r"[^\n]", " ", code[m.start() : j]) + code[j:]


def expand_use_tree(tree: str) -> list[list[str]]:
    """`crate::a::{b, c::{d, e as f}, self}` -> [[crate,a,b], [crate,a,c,d], [crate,a,c,e], [crate,a]]."""
    tree = re.sub(r"\s+as\s+" + IDENT, "", tree)
    tree = re.sub(r"\s+", "", tree)

    def parse(s: str, prefix: list[str]) -> list[list[str]]:
        paths: list[list[str]] = []
        for part in split_top(s):
            if not part:
                continue
            brace = part.find("{")
            if brace >= 0:
                head = [p for p in part[:brace].split("::") if p]
                paths += parse(part[brace + 1 : part.rindex("}")], prefix + head)
            else:
                segs = [p for p in part.split("::") if p]
                if segs == ["self"]:
                    paths.append(prefix)
                elif segs and segs != ["*"]:
                    paths.append(prefix + [s for s in segs if s != "*"])
                else:
                    paths.append(prefix)
        return paths

    return parse(tree, [])


def split_top(s: str) -> list[str]:
    parts, depth, cur = [], 0, []
    for c in s:
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
        if c == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(c)
    parts.append("".join(cur))
    return parts


def module_path(src: Path, file: Path) -> tuple[str, ...]:
    rel = file.relative_to(src).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] in ("mod", "lib"):
        parts = parts[:-1]
    return tuple(parts)


def inline_modules(code: str) -> list[tuple[int, int, str]]:
    """(start, end, name) of every inline `mod name { ... }` block (test modules are blanked already)."""
    out = []
    for m in re.finditer(r"\bmod\s+(" + IDENT + r")\s*\{", code):
        depth, j = 1, m.end()
        while j < len(code) and depth:
            depth += {"{": 1, "}": -1}.get(code[j], 0)
            j += 1
        out.append((m.start(), j, m.group(1)))
    return out


def references(code: str, children: set[str]) -> list[tuple[int, list[str]]]:
    """Every crate-, super- or self-relative path in the code, as (offset, segments); a path that
    starts with the name of one of this module's own child modules (`http::serve` in
    server/mod.rs) as `self::`."""
    first = r"(?:crate|super|self" + "".join("|" + c for c in sorted(children)) + r")"
    refs: list[tuple[int, list[str]]] = []
    for m in re.finditer(r"(?<![\w:])use\s+(" + first + r"\b[^;]*);", code):
        refs += [(m.start(), path) for path in expand_use_tree(m.group(1))]
    without_uses = re.sub(r"\buse\s+[^;]*;", lambda m: " " * len(m.group(0)), code)
    for m in re.finditer(r"(?<![\w:])" + first + r"(?:\s*::\s*" + IDENT + r")+", without_uses):
        refs.append((m.start(), re.sub(r"\s+", "", m.group(0)).split("::")))
    return [(at, ["self"] + r if r[0] in children else r) for at, r in refs]


def resolve(path: list[str], here: tuple[str, ...], modules: set[tuple[str, ...]]) -> tuple[str, ...] | None:
    """The module a path names (its longest module prefix), or None for a path outside the crate."""
    segs = list(path)
    if not segs:
        return None
    if segs[0] == "crate":
        base: list[str] = []
        segs = segs[1:]
    elif segs[0] in ("super", "self"):
        base = list(here)
        while segs and segs[0] in ("super", "self"):
            if segs[0] == "super":
                base = base[:-1]
            segs = segs[1:]
    else:
        return None
    full = base + segs
    for k in range(len(full), -1, -1):
        if tuple(full[:k]) in modules:
            return tuple(full[:k])
    return ()


def name(m: tuple[str, ...]) -> str:
    return "::".join(m) if m else "lib"


def top(m: tuple[str, ...]) -> str:
    return m[0] if m else "lib"


def circles(nodes: set[str], edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(nodes):
        if v not in index:
            visit(v)
    return out


def read_layers(md: Path, block: str) -> list[list[str]]:
    text = md.read_text()
    m = re.search(rf"<!-- {block} -->(.*?)<!-- /{block} -->", text, re.S)
    if not m:
        sys.exit(f"{md}: no <!-- {block} --> ... <!-- /{block} --> block")
    layers = []
    for line in m.group(1).splitlines():
        if re.match(r"\s*\d+\.", line):
            layers.append(re.findall(r"`([a-z_]+)`", line.split("—")[0].split(":")[0]))
    return layers


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("src", type=Path)
    ap.add_argument("layers", type=Path)
    ap.add_argument("--dot", type=Path, help="write the picture (top-level modules) as Graphviz")
    ap.add_argument("--files", action="store_true", help="print every file-level edge")
    ap.add_argument("--block", default="layers", help="the marker naming the crate's layers (default: layers)")
    args = ap.parse_args()

    files = sorted(p for p in args.src.rglob("*.rs") if p.name != "main.rs")
    modules = {module_path(args.src, f) for f in files}
    edges: dict[str, set[str]] = defaultdict(set)
    why: dict[tuple[str, str], set[str]] = defaultdict(set)
    for f in files:
        here = module_path(args.src, f)
        code = strip_test_modules(strip_comments_and_strings(f.read_text()))
        children = {m[-1] for m in modules if len(m) == len(here) + 1 and m[: len(here)] == here}
        inline = inline_modules(code)
        for at, ref in references(code, children):
            # Inside an inline `mod a { mod b { ... } }`, `super` and `self` start from a::b.
            nested = tuple(n for start, end, n in inline if start < at < end)
            if ref[0] in ("super", "self") and nested:
                depth = sum(1 for seg in ref if seg == "super")
                if depth <= len(nested) and not (ref[0] == "self" and ref[1:2] and ref[1] in children):
                    continue  # a path between the file's own inline modules
                ref = ["super"] * (depth - len(nested)) + ref[depth:] if depth > len(nested) else ref
            target = resolve(ref, here, modules)
            if target is None or target == here:
                continue
            edges[name(here)].add(name(target))
            why[(name(here), name(target))].add("::".join(ref))
    nodes = {name(m) for m in modules}

    layers = read_layers(args.layers, args.block)
    layer_of = {mod: i for i, layer in enumerate(layers) for mod in layer}
    tops = {top(m) for m in modules}
    problems: list[str] = []
    missing = sorted(tops - set(layer_of))
    if missing:
        problems.append(f"top-level modules in no layer of {args.layers}: {', '.join(missing)}")
    stale = sorted(set(layer_of) - tops)
    if stale:
        problems.append(f"layers name modules that do not exist: {', '.join(stale)}")

    # Top-level picture: folders collapsed.
    top_edges: dict[str, set[str]] = defaultdict(set)
    for a, bs in edges.items():
        for b in bs:
            ta, tb = a.split("::")[0], b.split("::")[0]
            if ta != tb:
                top_edges[ta].add(tb)
    for comp in circles(tops, top_edges):
        problems.append("circle between top-level modules: " + " <-> ".join(comp))
    # Inside each folder: its files (a file's own subfolder counted as that file). A file naming
    # its own folder's mod.rs (the folder's interface: the types its files share, `super::ConvShape`)
    # is not an edge of this picture; two files of one folder that name each other are a circle.
    # (The crate root's files are the top-level modules, checked above.)
    for folder in sorted({m[:-1] for m in modules if len(m) > 1}):
        depth = len(folder)
        local: dict[str, set[str]] = defaultdict(set)
        members = {m[depth] for m in modules if len(m) > depth and m[:depth] == folder}
        for a_, bs in edges.items():
            pa = tuple(a_.split("::")) if a_ != "lib" else ()
            if len(pa) <= depth or pa[:depth] != folder:
                continue
            for b_ in bs:
                pb = tuple(b_.split("::")) if b_ != "lib" else ()
                if len(pb) > depth and pb[:depth] == folder and pb[depth] != pa[depth]:
                    local[pa[depth]].add(pb[depth])
        for comp in circles(members, local):
            where = name(folder)
            detail = "; ".join(
                f"{x} -> {y} ({', '.join(sorted(r for (p_, q_), rs in why.items() for r in rs if p_.split('::')[depth:depth + 1] == [x] and q_.split('::')[depth:depth + 1] == [y] and p_.split('::')[:depth] == list(folder) and q_.split('::')[:depth] == list(folder))[:3])})"
                for x in comp for y in comp if y in local.get(x, ())
            )
            problems.append(f"circle between the files of {where}: {' <-> '.join(comp)}: {detail}")
    for a, bs in sorted(top_edges.items()):
        for b in sorted(bs):
            if a in layer_of and b in layer_of and layer_of[b] > layer_of[a]:
                refs = sorted({r for (x, y), rs in why.items() if x.split("::")[0] == a and y.split("::")[0] == b for r in rs})
                problems.append(f"arrow back up: {a} (layer {layer_of[a] + 1}) -> {b} (layer {layer_of[b] + 1}): {', '.join(refs[:4])}")

    if args.files:
        for a in sorted(edges):
            for b in sorted(edges[a]):
                print(f"{a} -> {b}: {', '.join(sorted(why[(a, b)])[:4])}")
    if args.dot:
        lines = ["digraph imports {", "  rankdir=BT;"]
        for i, layer in enumerate(layers):
            lines.append("  { rank=same; " + " ".join(f'"{m}";' for m in layer) + " }")
        for a in sorted(top_edges):
            for b in sorted(top_edges[a]):
                up = a in layer_of and b in layer_of and layer_of[b] > layer_of[a]
                lines.append(f'  "{a}" -> "{b}"' + (" [color=red];" if up else ";"))
        lines.append("}")
        args.dot.write_text("\n".join(lines) + "\n")

    n_edges = sum(len(v) for v in edges.values())
    n_top = sum(len(v) for v in top_edges.values())
    print(f"imports: {len(nodes)} files in {len(tops)} top-level modules over {len(layers)} layers, "
          f"{n_edges} file edges ({n_top} between top-level modules)")
    for p in problems:
        print("imports: " + p)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
