"""``rampart analyze``'s allocator policy (serving/cli/batch_memory.py): an array
freed and made again comes back from the heap instead of being faulted in anew.
Counted in page faults of a child process, so this test's own process keeps its
allocator as it is."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CHILD = """
import resource, sys
import numpy as np
from serving.cli.batch_memory import keep_freed_memory

if sys.argv[1] == "kept":
    assert keep_freed_memory()
    import pyarrow as pa

    assert pa.default_memory_pool().backend_name in ("jemalloc", "system")
size = 100_000_000 // 8
np.ones(size).sum()  # made and freed
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
np.ones(size).sum()  # made again
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(policy: str) -> int:
    # 4 KB pages in both runs: a fresh 100 MB array is about 24,000 faults
    env = {**os.environ, "NUMPY_MADVISE_HUGEPAGE": "0", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", CHILD, policy], env=env, cwd=ROOT,
                          capture_output=True, text=True, check=True)
    return int(done.stdout.strip())


def test_a_freed_array_is_reused_without_faulting_its_pages_in_again() -> None:
    default, kept = _faults("default"), _faults("kept")
    assert default > 20_000  # glibc unmapped the first array and mapped the second anew
    assert kept < 1_000  # the second array reused the first one's pages


HUGE_PAGES = """
import sys
from numpy._core import multiarray
from serving.cli.batch_memory import keep_freed_memory

if sys.argv[1] == "kept":
    keep_freed_memory()
print(multiarray._set_madvise_hugepage(False))  # the setting it replaces
"""


def test_numpy_arrays_are_asked_on_ordinary_pages() -> None:
    env = {k: v for k, v in os.environ.items() if k != "NUMPY_MADVISE_HUGEPAGE"}
    env["PYTHONPATH"] = str(ROOT)

    def huge_pages_asked(policy: str) -> str:
        return subprocess.run([sys.executable, "-c", HUGE_PAGES, policy], env=env, cwd=ROOT,
                              capture_output=True, text=True, check=True).stdout.strip()

    assert huge_pages_asked("default") == "True"
    assert huge_pages_asked("kept") == "False"


def _analyze(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``rampart analyze`` as its own process: the process's own command line, so
    the batch policy (and its quick ending) applies."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "serving.cli.main", "analyze", "--config",
                           str(tmp / "rampart.yaml"), "--experiment", "exp", *args],
                          env=env, cwd=tmp, capture_output=True, text=True, timeout=300)


def test_the_command_ends_without_teardown_but_with_its_output_and_exit_code(
        tmp_path: Path) -> None:
    import json

    import yaml

    from tests.unit.test_analysis import AS_OF, experiment_document, write_experiment

    write_experiment(tmp_path, units=3_000)
    (tmp_path / "rampart.yaml").write_text(yaml.safe_dump(experiment_document(tmp_path)))
    as_of = ("--as-of", AS_OF.isoformat())
    done = _analyze(tmp_path, *as_of, "--json", "--fail-on", "hold")
    report = json.loads(done.stdout)  # the whole document reached the pipe
    assert report["units"] == 3_000 and "Traceback" not in done.stderr
    # "hold" fails anything but ship (exit 3); the code survives the quick ending
    assert done.returncode == (0 if report["decision"]["outcome"] == "ship" else 3)
    bad = _analyze(tmp_path, "--as-of", "not-a-time")
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.startswith("rampart: error:") and bad.stderr.count("\n") == 1
