#!/usr/bin/env python3
"""Prints the library's module dependency graph from its `crate::` and `super::` paths, and fails
when modules import each other in a cycle.

Two views: top-level modules (`handlers`, `reframe`, ...) and files (`handlers::stream`, ...).
Test code (a trailing `#[cfg(test)] mod tests` block, `tests.rs` files) is left out.

Usage: scripts/module_deps.py [--files] [SRC_DIR]
"""

import re
import sys
from pathlib import Path


def module_of(path: Path, src: Path) -> tuple:
    rel = path.relative_to(src).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "mod":
        parts.pop()
    return tuple(parts)


def strip_tests(text: str) -> str:
    m = re.search(r"#\[cfg\(test\)\]\s*mod tests\s*\{", text)
    text = text[: m.start()] if m else text
    # Comments and string literals name modules without importing them.
    text = re.sub(r"//[^\n]*", "", text)
    return re.sub(r'"(?:\\.|[^"\\])*"', '""', text)


def expand_use(body: str) -> list:
    """`a::{b, c::{d}}` -> [`a::b`, `a::c::d`]."""
    body = re.sub(r"\s+", "", body)
    out, depth, start = [], 0, 0
    if "{" not in body:
        return [body]
    head = body[: body.index("{")]
    inner = body[body.index("{") + 1 : body.rindex("}")]
    for i, ch in enumerate(inner):
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        elif ch == "," and depth == 0:
            out.extend(expand_use(head + inner[start:i]))
            start = i + 1
    if inner[start:]:
        out.extend(expand_use(head + inner[start:]))
    return out


def paths_in(text: str, children: list) -> list:
    found = []
    for m in re.finditer(r"(\bpub(?:\([\w:]+\))?\s+)?\buse\s+([^;]+);", text):
        for path in expand_use(m.group(2)):
            # A parent re-exporting its child's items (`pub use child::X`) does not depend on it.
            if m.group(1) and path.split("::")[0] in children:
                continue
            found.append(path if path.split("::")[0] not in children else "self::" + path)
    # A parent calling into its child (`child::f()`) depends on it.
    for child in children:
        text_no_use = re.sub(r"\buse\s+[^;]+;", "", text)
        for m in re.finditer(r"(?<![:\w])" + child + r"((?:::\w+)+)", text_no_use):
            found.append("self::" + child + m.group(1))
    found.extend(re.findall(r"(?<![:\w])((?:crate|super)(?:::\w+)+)", text))
    # `use crate::handlers;` then `handlers::own::handle(..)`: follow the imported name.
    aliases = {}
    for path in list(found):
        segs = path.split("::")
        if segs[-1] == "self":
            segs.pop()
        if len(segs) > 1:
            aliases.setdefault(segs[-1], "::".join(segs))
    for name, full in aliases.items():
        for m in re.finditer(r"(?<![:\w])" + re.escape(name) + r"((?:::\w+)+)", text):
            found.append(full + m.group(1))
    return found


def resolve(path: str, here: tuple, modules: set, is_mod_rs: bool):
    segs = path.split("::")
    if segs[0] == "crate":
        base, rest = (), segs[1:]
    elif segs[0] == "self":
        base, rest = here, segs[1:]
    elif segs[0] == "super":
        # In `a/b.rs` (module a::b) `super` is `a`; in `a/mod.rs` (module a) it is the crate.
        base = here[:-1]
        rest = segs[1:]
        while rest and rest[0] == "super":
            base, rest = base[:-1], rest[1:]
    else:
        return None
    target = base
    for s in rest:
        if base + (s,) in modules or target + (s,) in modules:
            target = target + (s,)
        else:
            break
    return target if target else None


def cycles(graph: dict) -> list:
    """Strongly connected components with more than one node (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
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

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def layers(graph: dict) -> list:
    """Modules grouped by depth: layer 0 imports nothing, layer n imports only layers below n."""
    depth = {}

    def d(v, seen=()):
        if v in depth:
            return depth[v]
        if v in seen:
            return 0
        depth[v] = 1 + max((d(w, seen + (v,)) for w in graph.get(v, ())), default=-1)
        return depth[v]

    for v in graph:
        d(v)
    out = {}
    for v, n in depth.items():
        out.setdefault(n, []).append(v)
    return [sorted(out[k]) for k in sorted(out)]


def main() -> int:
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    by_file = "--files" in sys.argv
    src = Path(args[0] if args else "src")
    files = [
        p
        for p in sorted(src.rglob("*.rs"))
        if p.name not in ("main.rs", "tests.rs") and p.relative_to(src) != Path("lib.rs")
    ]
    modules = {module_of(p, src) for p in files}
    graph = {}
    for p in files:
        here = module_of(p, src)
        key = here if by_file else here[:1]
        graph.setdefault(key, set())
        children = [m[-1] for m in modules if m[:-1] == here and len(m) == len(here) + 1]
        for path in paths_in(strip_tests(p.read_text()), children):
            target = resolve(path, here, modules, p.name == "mod.rs")
            if target is None:
                continue
            target = target if by_file else target[:1]
            if target != key and not (by_file and key[: len(target)] == target and False):
                graph[key].add(target)
    name = "::".join
    graph = {name(k): {name(t) for t in v if name(t) != name(k)} for k, v in graph.items()}
    for k in sorted(graph):
        print(f"{k:24} -> {', '.join(sorted(graph[k])) or '-'}")
    print()
    for i, layer in enumerate(layers(graph)):
        print(f"layer {i}: {' '.join(layer)}")
    found = cycles(graph)
    for c in found:
        print("cycle:", " <-> ".join(c))
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
