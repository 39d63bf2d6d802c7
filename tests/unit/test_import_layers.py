"""The package layering, held two ways.

1. Each module of ``serving``, ``rollout``, ``telemetry`` and ``models`` is
   imported alone, in a child of an interpreter that has imported no project
   module (``import_probe.py``), and every module the import loaded is checked
   against the rules below: what a module pulls in transitively at import time
   counts, third-party libraries included. A failure names the chain of
   importers that pulled the forbidden module in.
2. The project's import graph is read from the source with ``ast``
   (module-level and function-level imports, not ``if TYPE_CHECKING:`` ones),
   so an import deferred into a function is held to the same rules, and no two
   files may import each other, directly or around a longer cycle.

The rules:

- the pure cores (``PURE_CORES``) load no Ray, MLflow, web framework, HTTP
  client, YAML, SQL, Prometheus, OpenTelemetry or Arrow file/filesystem code
  (``FORBIDDEN_IN_PURE``), and no project module outside the pure cores;
- the config kernel ``serving.kernel`` imports no other project package;
- ``telemetry`` never imports ``serving``;
- no product module imports the composition root ``serving.cli`` (the CLI,
  the demo and its simulators); the Serve application builder ``serving.app``
  is a composition root of its own and may;
- the request path ``serving.gateway`` imports of ``rollout`` only its pure
  core ``rollout.core``.

Modules are found by walking the package directories, so a new module is
covered without touching this file.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROBE = Path(__file__).with_name("import_probe.py")
PACKAGES = ("serving", "rollout", "telemetry", "models")

PURE_CORES = (
    "serving.kernel",
    "serving.routing",
    "rollout.core",
    "rollout.experiments.stats",
    "rollout.experiments.analysis",
    "rollout.experiments.kernels",
    "rollout.experiments.exposures",
    "rollout.experiments.periods",
    "rollout.experiments.sums",
    "rollout.experiments.results",
    "rollout.experiments.switchback",
    "rollout.experiments.factorial",
    "telemetry.parity",
    "telemetry.verdict",
)
# A plain ``import pyarrow`` (arrays and tables in memory) loads none of the
# three pyarrow modules below; ``test_plain_pyarrow_loads_no_file_or_filesystem_code``
# checks that, so forbidding them does not forbid pyarrow itself.
FORBIDDEN_IN_PURE = (
    "ray",
    "mlflow",
    "fastapi",
    "starlette",
    "httpx",
    "uvicorn",
    "yaml",
    "sqlalchemy",
    "prometheus_client",
    "opentelemetry",
    "pyarrow.parquet",
    "pyarrow.dataset",
    "pyarrow.fs",
)
PYARROW_FILE_MODULES = ("pyarrow.parquet", "pyarrow.dataset", "pyarrow.fs")


def within(module: str, *prefixes: str) -> bool:
    """``module`` is one of ``prefixes`` or inside one of them."""
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def is_project(module: str) -> bool:
    return within(module, *PACKAGES)


def ancestors(module: str) -> list[str]:
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


# Packages that enclose a pure core (``rollout.experiments`` for its stats):
# importing a core runs their ``__init__``, which is then checked like any
# other module by what it loads itself.
PURE_ANCESTORS = frozenset(a for core in PURE_CORES for a in ancestors(core))


def is_pure(module: str) -> bool:
    return within(module, *PURE_CORES)


# --- discovery -----------------------------------------------------------------------


def discover(root: Path = ROOT) -> dict[str, Path]:
    """Every module of the project's packages, by dotted name."""
    found: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            if "__pycache__" in parts:
                continue
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


# --- rules ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    """Modules that ``applies`` to must not load modules that ``forbids``."""

    key: str
    name: str
    applies: Callable[[str], bool]
    forbids: Callable[[str], bool]


PURE_RULE = Rule(
    "pure-cores",
    "a pure core loads only pure cores and no I/O framework",
    is_pure,
    lambda m: within(m, *FORBIDDEN_IN_PURE)
    or (is_project(m) and not is_pure(m) and m not in PURE_ANCESTORS),
)
KERNEL_RULE = Rule(
    "kernel",
    "the config kernel imports no other project package",
    lambda m: within(m, "serving.kernel"),
    lambda m: is_project(m) and not within(m, "serving.kernel") and m != "serving",
)
TELEMETRY_RULE = Rule(
    "telemetry",
    "telemetry never imports serving",
    lambda m: within(m, "telemetry"),
    lambda m: within(m, "serving"),
)
# ``serving.app`` (the Serve application builder) is an entry point too: it
# wires the same parts ``rampart serve`` does, for ``serve deploy``.
COMPOSITION_ROOTS = ("serving.cli", "serving.app")
CLI_RULE = Rule(
    "cli",
    "no product module imports the composition root serving.cli",
    lambda m: is_project(m) and not any(within(m, root) for root in COMPOSITION_ROOTS),
    lambda m: within(m, "serving.cli"),
)
GATEWAY_RULE = Rule(
    "gateway",
    "the request path imports only the pure core of rollout",
    lambda m: within(m, "serving.gateway"),
    lambda m: within(m, "rollout") and not within(m, "rollout.core") and m != "rollout",
)
RULES = (PURE_RULE, KERNEL_RULE, TELEMETRY_RULE, CLI_RULE, GATEWAY_RULE)


# --- each module imported alone ------------------------------------------------------


@dataclass(frozen=True)
class Probe:
    error: str | None
    loaded: dict[str, str | None]  # module -> the module that imported it

    def chain(self, module: str) -> list[str]:
        """From the probed module to ``module``, importer by importer."""
        chain = [module]
        importer = self.loaded.get(module)
        while importer is not None and importer not in chain:
            chain.append(importer)
            importer = self.loaded.get(importer)
        return chain[::-1]


@dataclass(frozen=True)
class Probes:
    preloaded: list[str]
    results: dict[str, Probe]

    def __repr__(self) -> str:
        return f"Probes(<{len(self.results)} modules>)"


def run_probe(modules: list[str], root: Path = ROOT) -> Probes:
    done = subprocess.run(
        [sys.executable, str(PROBE), str(root)], input=json.dumps(modules), cwd=root,
        capture_output=True, text=True, timeout=300, check=False,
        env={**os.environ, "OPENBLAS_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    data = json.loads(done.stdout)
    results = {
        name: Probe(r["error"], {m: importer for m, importer in r["loaded"]})
        for name, r in data["results"].items()
    }
    return Probes(data["preloaded"], results)


@pytest.fixture(scope="module")
def probes() -> Probes:
    return run_probe([*sorted(discover()), "pyarrow"])


# --- the static import graph ---------------------------------------------------------


@dataclass(frozen=True)
class Edge:
    target: str
    line: int
    in_function: bool


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool]]:
    """Every import statement that runs, with whether it sits in a function."""

    def visit(node: ast.AST, in_function: bool) -> Iterator[tuple[ast.Import | ast.ImportFrom,
                                                                  bool]]:
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node, in_function
            return
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for branch in node.orelse:
                yield from visit(branch, in_function)
            return
        inner = in_function or isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef
                                          | ast.Lambda)
        for child in ast.iter_child_nodes(node):
            yield from visit(child, inner)

    yield from visit(tree, False)


def _import_targets(
    node: ast.Import | ast.ImportFrom, module: str, is_package: bool, modules: set[str]
) -> list[str]:
    """Dotted names an import statement loads: ``from a.b import c`` is ``a.b.c``
    when that is a project module, else ``a.b``."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if node.level:
        package = module if is_package else module.rpartition(".")[0]
        parts = package.split(".")
        base_parts = parts[: len(parts) - (node.level - 1)]
        base = ".".join([*base_parts, *([node.module] if node.module else [])])
    else:
        base = node.module or ""
    targets = []
    for alias in node.names:
        candidate = f"{base}.{alias.name}"
        if candidate in modules or not is_project(base):
            # a third-party ``from pyarrow import parquet`` is kept as ``pyarrow.parquet``
            targets.append(candidate if alias.name != "*" else base)
        if candidate not in modules:
            targets.append(base)
    return list(dict.fromkeys(targets))


@dataclass(frozen=True)
class ImportGraph:
    root: Path
    files: dict[str, Path]
    project: dict[str, list[Edge]]  # module -> imported project modules
    external: dict[str, list[Edge]]  # module -> imported third-party names

    def walk(
        self, start: str, stop: Callable[[str], bool] = lambda _m: False
    ) -> Iterator[tuple[str, list[tuple[str, Edge]]]]:
        """Every project module ``start`` imports, transitively, each with the shortest
        path to it; the walk goes on through no module that ``stop`` accepts."""
        previous: dict[str, tuple[str, Edge] | None] = {start: None}
        queue = deque([start])
        while queue:
            current = queue.popleft()
            steps: list[tuple[str, Edge]] = []
            node = current
            while (step := previous[node]) is not None:
                steps.append(step)
                node = step[0]
            yield current, steps[::-1]
            if current != start and stop(current):
                continue
            for edge in self.project.get(current, []):
                if edge.target not in previous:
                    previous[edge.target] = (current, edge)
                    queue.append(edge.target)

    def describe(self, steps: list[tuple[str, Edge]]) -> str:
        text = steps[0][0] if steps else ""
        for source, edge in steps:
            where = f"{self.files[source].relative_to(self.root)}:{edge.line}"
            text += f" -> {edge.target} ({where}{', in a function' if edge.in_function else ''})"
        return text


@cache
def import_graph(root: Path = ROOT) -> ImportGraph:
    files = discover(root)
    modules = set(files)
    project: dict[str, list[Edge]] = {}
    external: dict[str, list[Edge]] = {}
    for module, path in files.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        own = set(ancestors(module))
        is_package = path.name == "__init__.py"
        project[module], external[module] = [], []
        for node, in_function in _imports(tree):
            for target in _import_targets(node, module, is_package, modules):
                if not is_project(target):
                    external[module].append(Edge(target, node.lineno, in_function))
                    continue
                # importing a.b.c runs a/__init__ and a/b/__init__ first
                for name in [*ancestors(target), target]:
                    if name in modules and name not in own and name != module:
                        project[module].append(Edge(name, node.lineno, in_function))
    return ImportGraph(root, files, project, external)


def outermost(found: dict[str, str]) -> dict[str, str]:
    """Without the packages of a module also found (importing ``a.b.c`` loads ``a``
    and ``a.b`` on the way): name the module that was asked for."""
    return {m: how for m, how in found.items()
            if not any(other.startswith(m + ".") for other in found)}


def dynamic_violations(rule: Rule, probes: Probes) -> Iterator[tuple[str, str, str]]:
    """The first forbidden module on each chain of importers, per probed module."""
    for module, probe in probes.results.items():
        if not is_project(module) or not rule.applies(module):
            continue
        found: dict[str, str] = {}
        for loaded in probe.loaded:
            chain = probe.chain(loaded)
            if loaded == module or not rule.forbids(loaded):
                continue
            if any(rule.forbids(m) for m in chain[:-1] if m != module):
                continue  # reported as the module that pulled this one in
            found[loaded] = "importing it alone loads " + " -> ".join(chain)
        for forbidden, how in outermost(found).items():
            yield module, forbidden, how


def static_violations(rule: Rule, graph: ImportGraph) -> Iterator[tuple[str, str, str]]:
    """The first forbidden module on each import path in the source, per module."""
    for module in graph.files:
        if not rule.applies(module):
            continue
        found: dict[str, str] = {}
        for reached, steps in graph.walk(module, stop=rule.forbids):
            if reached != module and rule.forbids(reached):
                found.setdefault(reached, "its imports reach " + graph.describe(steps))
                continue
            for edge in graph.external[reached]:
                if rule.forbids(edge.target):
                    where = f"{graph.files[reached].relative_to(graph.root)}:{edge.line}"
                    hop = f"{edge.target} ({where}{', in a function' if edge.in_function else ''})"
                    via = graph.describe(steps) if steps else module
                    found.setdefault(edge.target, f"its imports reach {via} -> {hop}")
        for forbidden, how in outermost(found).items():
            yield module, forbidden, how


def cycles(graph: ImportGraph) -> list[list[str]]:
    """Strongly connected components of more than one file (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for edge in graph.project.get(node, []):
            if edge.target not in index:
                connect(edge.target)
                low[node] = min(low[node], low[edge.target])
            elif edge.target in on_stack:
                low[node] = min(low[node], index[edge.target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for module in sorted(graph.files):
        if module not in index:
            connect(module)
    return found


def describe_cycle(graph: ImportGraph, component: list[str]) -> str:
    """One cycle through the component's first file, with the lines that close it."""
    members = set(component)
    inside = {m: [e for e in graph.project[m] if e.target in members] for m in component}
    sub = ImportGraph(graph.root, graph.files, inside, graph.external)
    start = component[0]
    back = next(
        (steps for reached, steps in sub.walk(start)
         if steps and any(e.target == start for e in sub.project[reached])),
        None,
    )
    if back is None:
        return ", ".join(component)
    last = back[-1][1].target
    closing = next(e for e in sub.project[last] if e.target == start)
    return sub.describe([*back, (last, closing)])


def report(rule: Rule, violations: list[tuple[str, str, str]]) -> str:
    lines = [f"{rule.name}: {len(violations)} violation(s)"]
    lines += [f"  {module} must not load {forbidden}: {how}"
              for module, forbidden, how in violations]
    return "\n".join(lines)


# --- tests ---------------------------------------------------------------------------


def test_every_layer_named_here_exists() -> None:
    modules = discover()
    for prefix in (*PURE_CORES, "serving.gateway", "serving.cli"):
        assert any(within(m, prefix) for m in modules), f"no module {prefix}: rename it here"


def test_every_module_imports_alone(probes: Probes) -> None:
    failed = {m: p.error for m, p in probes.results.items() if p.error}
    assert not failed, "\n\n".join(f"{m}:\n{error}" for m, error in failed.items())


def test_the_probe_preloads_nothing_a_rule_forbids(probes: Probes) -> None:
    hidden = [m for m in probes.preloaded for rule in RULES if rule.forbids(m) or is_project(m)]
    assert not hidden, f"the probe's preloads would hide these: {sorted(set(hidden))}"


def test_plain_pyarrow_loads_no_file_or_filesystem_code(probes: Probes) -> None:
    loaded = probes.results["pyarrow"].loaded
    assert not [m for m in loaded if within(m, *PYARROW_FILE_MODULES)], (
        "`import pyarrow` now loads file or filesystem modules itself: forbid pyarrow "
        "in the pure cores or list only what it does not load")


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.key)
def test_importing_a_module_alone_loads_nothing_its_layer_forbids(
    rule: Rule, probes: Probes
) -> None:
    violations = sorted(set(dynamic_violations(rule, probes)))
    assert not violations, report(rule, violations)


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.key)
def test_no_import_in_the_source_reaches_what_its_layer_forbids(rule: Rule) -> None:
    violations = sorted(static_violations(rule, import_graph()))
    assert not violations, report(rule, violations)


def test_no_import_cycles_between_files() -> None:
    graph = import_graph()
    found = cycles(graph)
    assert not found, "import cycles:\n" + "\n".join(
        f"  {', '.join(c)}\n    e.g. {describe_cycle(graph, c)}" for c in found)


PLANTED = {
    "serving/__init__.py": "",
    "serving/kernel/__init__.py": "",
    # a pure core pulling in YAML through a module of another layer
    "serving/kernel/config.py": "from serving import documents\n",
    "serving/documents.py": "import yaml\n",
    "serving/gateway/__init__.py": "",
    # deferred into a function, still an import; a TYPE_CHECKING one is not
    "serving/gateway/app.py": (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from rollout import store\n"
        "def start() -> None:\n    from rollout.service import run\n"
    ),
    "serving/cli/__init__.py": "",
    "serving/cli/main.py": "",
    "rollout/__init__.py": "",
    "rollout/store.py": "",
    "rollout/service.py": "from serving.cli import main\ndef run() -> None: ...\n",
    "telemetry/__init__.py": "",
    "telemetry/log.py": "from .ids import ID\n",
    "telemetry/ids.py": "from serving.kernel.config import documents\nfrom . import log\nID = 1\n",
    "models/__init__.py": "",
}


def test_the_checks_catch_each_kind_of_planted_violation(tmp_path: Path) -> None:
    for name, text in PLANTED.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    graph = import_graph(tmp_path)

    def static(rule: Rule) -> dict[tuple[str, str], str]:
        return {(m, f): how for m, f, how in static_violations(rule, graph)}

    pure = static(PURE_RULE)
    assert pure[("serving.kernel.config", "serving.documents")] == (
        "its imports reach serving.kernel.config -> serving.documents "
        "(serving/kernel/config.py:1)")
    assert static(KERNEL_RULE).keys() == {("serving.kernel.config", "serving.documents")}
    assert static(GATEWAY_RULE) == {("serving.gateway.app", "rollout.service"): (
        "its imports reach serving.gateway.app -> rollout.service "
        "(serving/gateway/app.py:5, in a function)")}
    assert ("rollout.service", "serving.cli.main") in static(CLI_RULE)
    assert ("telemetry.log", "serving.kernel.config") in static(TELEMETRY_RULE)
    assert cycles(graph) == [["telemetry.ids", "telemetry.log"]]
    assert "telemetry/ids.py:2" in describe_cycle(graph, ["telemetry.ids", "telemetry.log"])

    probes = run_probe(sorted(discover(tmp_path)), tmp_path)
    found = {(m, f): how for m, f, how in dynamic_violations(PURE_RULE, probes)}
    assert found == {("serving.kernel.config", "serving.documents"): (
        "importing it alone loads serving.kernel.config -> serving.documents")}
    yaml_chain = probes.results["serving.kernel.config"].chain("yaml")
    assert yaml_chain == ["serving.kernel.config", "serving.documents", "yaml"]
    telemetry = {(m, f) for m, f, _ in dynamic_violations(TELEMETRY_RULE, probes)}
    assert telemetry == {("telemetry.log", "serving.kernel.config"),
                         ("telemetry.ids", "serving.kernel.config")}
