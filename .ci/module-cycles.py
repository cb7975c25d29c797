#!/usr/bin/env python3
"""Fails when two modules of one crate import each other, directly or
through others: the crates' module graphs must stay acyclic, as Cargo keeps
the crate graph acyclic. A module is a top-level file or directory of a
crate's src/; an edge is a `crate::name` path in its code (comments and
tests excluded)."""
import pathlib
import re
import sys

root = pathlib.Path(__file__).resolve().parent.parent
failed = False
for src in sorted(p for p in (root / "host").glob("*/src") if p.is_dir()):
    modules = {}
    for path in src.rglob("*.rs"):
        rel = path.relative_to(src)
        name = rel.parts[0].removesuffix(".rs")
        if name in ("lib", "main"):
            continue
        text = path.read_text()
        text = text.split("#[cfg(test)]")[0]
        text = "\n".join(line.split("//")[0] for line in text.splitlines())
        modules.setdefault(name, set()).update(m for m in re.findall(r"crate::(\w+)", text) if m != name)
    graph = {name: {m for m in deps if m in modules} for name, deps in modules.items()}
    # Depth-first search for a cycle.
    state = {}
    def visit(node, stack):
        global failed
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycle = stack[stack.index(nxt):] + [nxt]
                print(f"module cycle in {src.parent.name}: {' -> '.join(cycle)}", file=sys.stderr)
                failed = True
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"
    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
sys.exit(1 if failed else 0)
