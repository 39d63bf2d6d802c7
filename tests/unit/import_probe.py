"""Import modules one at a time, each alone, and say what each import loaded.

Run as a script by ``test_import_layers.py`` (``python import_probe.py ROOT``);
not a test module. It reads a JSON list of module names on stdin and prints
one JSON object::

    {"preloaded": [...], "results": {module: {"error": str | null,
                                              "loaded": [[name, importer], ...]}}}

``loaded`` lists, in load order, every module that importing ``module`` put
into ``sys.modules``, each with the module whose code imported it (``null``
for the probed module itself, and for modules that did not come through the
import system). Following the importers from a name back to the probed module
gives the chain that pulled it in.

Each module is imported in a child forked from this interpreter before it has
imported any project module, so the child starts as a fresh interpreter would,
plus a few third-party libraries that every layer may use (``PRELOAD``): they
cost a second or more each and would otherwise be imported again for every
module. The caller checks that none of them is a module it forbids, so nothing
forbidden can hide in them.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import json
import os
import sys
import traceback
from collections import deque
from collections.abc import Sequence
from types import FrameType, ModuleType
from typing import Any

PRELOAD = ("numpy", "scipy.stats", "pydantic")
_MACHINERY = frozenset({
    "importlib", "importlib._bootstrap", "importlib._bootstrap_external", "importlib.util",
    "importlib.abc", "importlib.machinery", "_frozen_importlib", "_frozen_importlib_external",
})
PROBE = "<probe>"


def _importer(frame: FrameType | None) -> str:
    """The module whose code is running the import in progress."""
    while frame is not None:
        if frame.f_code.co_filename == __file__:
            return PROBE
        name = frame.f_globals.get("__name__")
        if isinstance(name, str) and name not in _MACHINERY:
            return name
        frame = frame.f_back
    return PROBE


class ImportRecorder(importlib.abc.MetaPathFinder):
    """First on ``sys.meta_path``: notes who asked for each module, finds nothing."""

    def __init__(self) -> None:
        self.importer: dict[str, str] = {}

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in self.importer:
            self.importer[fullname] = _importer(sys._getframe(1))
        return None


def probe(module: str) -> dict[str, Any]:
    """Import ``module`` in this process and report what it loaded."""
    before = set(sys.modules)
    recorder = ImportRecorder()
    sys.meta_path.insert(0, recorder)
    error = None
    try:
        importlib.import_module(module)
    except BaseException:
        error = traceback.format_exc(limit=-8)
    finally:
        sys.meta_path.remove(recorder)
    loaded = []
    for name in list(sys.modules):
        if name in before:
            continue
        importer = recorder.importer.get(name)
        loaded.append([name, None if importer in (None, PROBE) or name == module else importer])
    return {"error": error, "loaded": loaded}


def _fork(module: str) -> tuple[int, int]:
    """Start a child that imports ``module``; return its pid and the pipe it reports on."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: import, report, leave without running exit hooks
        os.close(read)
        code = 0
        try:
            payload = json.dumps(probe(module))
            with os.fdopen(write, "w") as out:
                out.write(payload)
        except BaseException:
            code = 1
        os._exit(code)
    os.close(write)
    return pid, read


def _collect(module: str, pid: int, read: int) -> dict[str, Any]:
    with os.fdopen(read) as pipe:
        text = pipe.read()
    _, status = os.waitpid(pid, 0)
    if not text:
        return {"error": f"the child importing {module} died (wait status {status})",
                "loaded": []}
    result: dict[str, Any] = json.loads(text)
    return result


def probe_each(modules: list[str], at_once: int) -> dict[str, dict[str, Any]]:
    """Every module in a child of its own, ``at_once`` children at a time."""
    results: dict[str, dict[str, Any]] = {}
    running: deque[tuple[str, int, int]] = deque()
    for module in modules:
        if len(running) >= at_once:
            done, pid, read = running.popleft()
            results[done] = _collect(done, pid, read)
        running.append((module, *_fork(module)))
    while running:
        done, pid, read = running.popleft()
        results[done] = _collect(done, pid, read)
    return results


def main() -> None:
    # the project's root first, whatever is installed
    sys.path.insert(0, sys.argv[1])
    modules: list[str] = json.loads(sys.stdin.read())
    before = set(sys.modules)
    for name in PRELOAD:
        importlib.import_module(name)
    preloaded = sorted(set(sys.modules) - before)
    results = probe_each(modules, at_once=max(1, min(2, os.cpu_count() or 1)))
    json.dump({"preloaded": preloaded, "results": results}, sys.stdout)


if __name__ == "__main__":
    main()
