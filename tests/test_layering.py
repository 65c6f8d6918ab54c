"""The import graph obeys one direction (README, "Layout"), read from the source with `ast`.

Every import counts, the ones inside functions too.  A module may import from its own
package group and from any group in a lower layer; groups that share a layer are
siblings and may not import each other.  Run as a script for the picture:

    python tests/test_layering.py
"""
from __future__ import annotations

import ast
import os
import sys
from collections import defaultdict

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Top to bottom; each entry is one layer of package groups.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("launch", "bench"),
    ("merg_jax.systems",),
    ("merg_jax.evaluation", "merg_jax.train"),
    ("input_pipeline",),
    ("merg_jax.convert", "merg_jax.generation"),
    ("merg_jax.models",),
    ("merg_jax.core",),
    ("configs",),
)
SCANNED = ("merg_jax", "input_pipeline", "configs", "launch", "bench")


def modules() -> dict[str, str]:
    """Dotted module name -> file, for every .py under the scanned top-level folders."""
    out = {}
    for top in SCANNED:
        for d, _, files in os.walk(os.path.join(ROOT, top)):
            for f in files:
                if f.endswith(".py"):
                    rel = os.path.relpath(os.path.join(d, f), ROOT)[:-3].replace(os.sep, ".")
                    out[rel[: -len(".__init__")] if rel.endswith(".__init__") else rel] = os.path.join(d, f)
    return out


def group_of(module: str) -> str | None:
    """The package group (a LAYERS entry) a module belongs to; None for the bare `merg_jax`."""
    best = None
    for layer in LAYERS:
        for g in layer:
            if (module == g or module.startswith(g + ".")) and (best is None or len(g) > len(best)):
                best = g
    return best


def layer_index(group: str) -> int:
    return next(i for i, layer in enumerate(LAYERS) if group in layer)


def edges() -> list[tuple[str, str, int]]:
    """(importer, imported, line) for every import of one of our modules."""
    mods = modules()

    def resolve(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    out = []
    for m, path in sorted(mods.items()):
        tree = ast.parse(open(path, encoding="utf-8").read(), path)
        pkg = m if path.endswith("__init__.py") else m.rpartition(".")[0]
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parent = pkg
                    for _ in range(node.level - 1):
                        parent = parent.rpartition(".")[0]
                    base = f"{parent}.{node.module}" if node.module else parent
                # `from pkg import submodule` imports the submodule; `from mod import name`, mod
                subs = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in mods]
                names = subs if len(subs) == len(node.names) else [base] + subs
            for t in {resolve(n) for n in names} - {None, m}:
                out.append((m, t, node.lineno))
    return out


def violations() -> list[str]:
    bad = []
    for src, dst, line in edges():
        gs, gd = group_of(src), group_of(dst)
        if gs is None or gd is None:
            if dst != "merg_jax":  # the empty top-level package marker
                bad.append(f"{src}:{line} imports {dst}: not in any layer (add it to LAYERS)")
            continue
        if gs == gd:
            continue
        ls, ld = layer_index(gs), layer_index(gd)
        if ld < ls:
            bad.append(f"{src}:{line} imports {dst}: upward ({gs} is below {gd})")
        elif ld == ls:
            bad.append(f"{src}:{line} imports {dst}: sideways between siblings {gs} and {gd}")
    return bad


def cycles() -> list[list[str]]:
    """Strongly connected groups of 2+ modules (Tarjan)."""
    graph = defaultdict(set)
    for s, d, _ in edges():
        graph[s].add(d)
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
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
    for v in list(graph):
        if v not in index:
            visit(v)
    return out


def diagram() -> str:
    """The layer picture the README's Layout section shows (top imports bottom, never back)."""
    return "\n  ↓\n".join("  ".join(layer) for layer in LAYERS)


def test_no_import_cycles():
    assert cycles() == []


def test_imports_point_down():
    assert violations() == []


def test_every_module_has_a_layer():
    assert [m for m in modules() if group_of(m) is None and m != "merg_jax"] == []


def test_readme_layout_is_the_enforced_one():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as fh:
        readme = fh.read()
    assert diagram() in readme, "README's Layout diagram differs from LAYERS; paste:\n" + diagram()


if __name__ == "__main__":
    es = edges()
    print(diagram(), "\n")
    counts = defaultdict(int)
    for s, d, _ in es:
        gs, gd = group_of(s), group_of(d)
        if gs and gd and gs != gd:
            counts[(gs, gd)] += 1
    for (gs, gd), n in sorted(counts.items(), key=lambda kv: (layer_index(kv[0][0]), kv[0])):
        print(f"{gs:22s} -> {gd:22s} {n:3d} imports")
    v, c = violations(), cycles()
    print(f"\n{len(modules())} modules, {len(es)} imports, {len(c)} cycles, {len(v)} violations")
    for line in v + [" <-> ".join(x) for x in c]:
        print(" ", line)
    sys.exit(1 if v or c else 0)
