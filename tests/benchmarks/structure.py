"""Print the code structure figures of the README's before/after table: lines
per package, the largest modules, and the import cycles between files.

    .venv/bin/python tests/benchmarks/structure.py [GIT_REVISION]

Without a revision it reads the working tree; with one it reads that commit
(``git archive``), so ``840fadb`` gives the layout before the redesign.
Imports are read statically (``ast``), module-level and function-level alike.
"""

from __future__ import annotations

import ast
import io
import subprocess
import sys
import tarfile
from pathlib import Path

PACKAGES = ("serving", "rollout", "telemetry", "models")
ROOT = Path(__file__).resolve().parents[2]


def read_sources(revision: str | None) -> dict[str, str]:
    """Module name -> source text of every ``.py`` file of the product packages."""
    sources: dict[str, str] = {}
    if revision is None:
        for package in PACKAGES:
            for path in sorted((ROOT / package).rglob("*.py")):
                sources[_module(path.relative_to(ROOT).as_posix())] = path.read_text()
        return sources
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", revision, *PACKAGES],
                             check=True, capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        for member in tar.getmembers():
            if member.isfile() and member.name.endswith(".py"):
                handle = tar.extractfile(member)
                assert handle is not None
                sources[_module(member.name)] = handle.read().decode()
    return sources


def _module(path: str) -> str:
    name = path.removesuffix(".py").replace("/", ".")
    return name.removesuffix(".__init__")


def import_graph(sources: dict[str, str]) -> dict[str, set[str]]:
    """Module -> project modules it imports (``from a import b`` counts a.b if b is one)."""
    graph: dict[str, set[str]] = {m: set() for m in sources}
    for module, text in sources.items():
        for node in ast.walk(ast.parse(text)):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [f"{node.module}.{a.name}" for a in node.names] + [node.module]
            for target in targets:
                if target in sources and target != module:
                    graph[module].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def main() -> int:
    revision = sys.argv[1] if len(sys.argv) > 1 else None
    sources = read_sources(revision)
    lines = {m: len(t.splitlines()) for m, t in sources.items()}
    print(f"revision: {revision or 'working tree'}")
    print("lines per package:")
    groups: dict[str, int] = {}
    for module, n in lines.items():
        parts = module.split(".")
        key = ".".join(parts[:2]) if len(parts) > 2 else parts[0]
        groups[key] = groups.get(key, 0) + n
    for key in sorted(groups):
        print(f"  {key:32s} {groups[key]:6d}")
    print(f"  {'total':32s} {sum(lines.values()):6d}")
    print("largest modules:")
    for module, n in sorted(lines.items(), key=lambda kv: -kv[1])[:6]:
        print(f"  {module:40s} {n:6d}")
    found = cycles(import_graph(sources))
    print(f"import cycles between files: {len(found)}")
    for component in found:
        print("  " + " <-> ".join(component))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
