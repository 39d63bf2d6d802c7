"""The decision and outcomes logs under real failures: a SIGKILL of the process
that buffers rows, a full disk and a read-only filesystem.

The disk tests mount a small tmpfs (this needs root, or CAP_SYS_ADMIN; a
machine that refuses fails the test with the reason rather than skipping it).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from telemetry.decision_log import DecisionLogWriter, DecisionRecord, read_decisions
from telemetry.metrics import LogWriterMetrics
from telemetry.outcomes_log import OutcomesLogWriter, read_outcomes

ROOT = Path(__file__).resolve().parents[2]
SPILL_INTERVAL_S = 0.05
# The stated bound: a row appended this long before the kill is in the log
# after the next start (two journal ticks: one to journal it, one in flight).
LOSS_BOUND_S = 2 * SPILL_INTERVAL_S


def _record(i: int) -> DecisionRecord:
    return DecisionRecord(
        f"r{i}", f"u{i}", "user_id", "exp-a", None, "control", "clf", "1", "primary",
        time.time(), {"f0": float(i)}, 0.5, 1.25, "ok", None,
    )


def _counter(registry: CollectorRegistry, name: str) -> float:
    value = registry.get_sample_value(name)
    return 0.0 if value is None else value


# --------------------------------------------------------------------------- SIGKILL


def _run_and_kill(kind: str, log_root: Path, spill_root: Path, run_s: float
                  ) -> tuple[list[tuple[int, float]], float]:
    """Start the appending child, SIGKILL it after ``run_s`` of appending;
    returns its (last index, monotonic time) lines and the kill's time."""
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.spill_child", kind, str(log_root), str(spill_root)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert child.stdout is not None and child.stderr is not None
    lines: list[tuple[int, float]] = []
    try:
        while True:
            line = child.stdout.readline()
            if not line:
                raise AssertionError(f"the child stopped by itself: {child.stderr.read()}")
            index, at = line.split()
            lines.append((int(index), float(at)))
            if lines[-1][1] - lines[0][1] >= run_s:
                break
        killed_at = time.monotonic()
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    for line in child.stdout.read().splitlines():  # printed before the kill, read after it
        index, at = line.split()
        lines.append((int(index), float(at)))
    child.stdout.close()
    child.stderr.close()
    assert child.returncode == -signal.SIGKILL
    return lines, killed_at


@pytest.mark.parametrize("kind", ["decisions", "outcomes"])
def test_rows_appended_before_a_sigkill_are_in_the_log_once_after_the_next_start(
        tmp_path: Path, kind: str) -> None:
    log_root, spill_root = tmp_path / "log", tmp_path / "spill"
    replayed = 0
    for round_number, run_s in enumerate((0.45, 0.8, 1.25)):
        log_root = tmp_path / f"log-{round_number}"
        lines, killed_at = _run_and_kill(kind, log_root, spill_root, run_s)
        if kind == "decisions":
            writer: DecisionLogWriter | OutcomesLogWriter = DecisionLogWriter(
                log_root, f"next-{round_number}", flush_interval_s=3600, spill_dir=spill_root)
        else:
            writer = OutcomesLogWriter(log_root, f"next-{round_number}",
                                       flush_interval_s=3600, spill_dir=spill_root)
        writer.close()  # the replay runs first on the writer's thread; close waits for it
        replayed += writer.rows_replayed
        if kind == "decisions":
            ids = [int(r[1:]) for r in read_decisions(log_root).column("request_id").to_pylist()]
        else:
            ids = [int(u[1:]) for u in read_outcomes(log_root).column("unit_id").to_pylist()]
        assert len(ids) == len(set(ids)), "a row was written twice"
        must = max(index for index, at in lines if at <= killed_at - LOSS_BOUND_S)
        missing = sorted(set(range(must + 1)) - set(ids))
        assert not missing, (f"rows appended over {LOSS_BOUND_S * 1000:.0f} ms before the "
                             f"kill are missing: {missing[:10]}...")
        # What was lost at most: rows appended after the newest complete line in the log.
        present = set(ids)
        lost_window = [killed_at - at for index, at in lines if index not in present]
        print(f"{kind} round {round_number}: {len(ids)} rows kept, "
              f"{lines[-1][0] + 1 - len(ids)} lost, oldest lost appended "
              f"{(max(lost_window) * 1000 if lost_window else 0):.1f} ms before the kill, "
              f"{writer.rows_replayed} replayed")
        assert list(spill_root.iterdir()) == [], "the dead writer's journal was not removed"
    assert replayed > 0  # the kills left rows only the journal held


# --------------------------------------------------------------------------- a small filesystem


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs of the test's own, unmounted afterwards."""
    mount_point = tmp_path / "fs"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs", str(mount_point)],
        capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.fail(f"cannot mount a tmpfs at {mount_point} (uid {os.getuid()}; this test "
                    f"needs root or CAP_SYS_ADMIN): {mounted.stderr.strip()}")
    try:
        yield mount_point
    finally:
        if subprocess.run(["umount", str(mount_point)], capture_output=True).returncode:
            subprocess.run(["umount", "-l", str(mount_point)], check=True)


def _remount(mount_point: Path, mode: str) -> None:
    """Remount ``ro`` or ``rw``; a journal write in flight makes ro busy for a moment."""
    for _ in range(100):
        result = subprocess.run(["mount", "-o", f"remount,{mode}", str(mount_point)],
                                capture_output=True, text=True)
        if result.returncode == 0:
            return
        time.sleep(0.01)
    raise AssertionError(f"cannot remount {mount_point} {mode}: {result.stderr.strip()}")


def _fill(mount_point: Path) -> Path:
    """Fill the filesystem to the last byte."""
    filler = mount_point / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        for size in (65536, 4096, 1):
            try:
                while os.write(fd, b"\0" * size):
                    pass
            except OSError:
                continue
        with pytest.raises(OSError):
            os.write(fd, b"\0")
    finally:
        os.close(fd)
    return filler


def _writer(mount_point: Path, registry: CollectorRegistry, bound: int) -> DecisionLogWriter:
    return DecisionLogWriter(mount_point / "log", "w", batch_rows=100_000,
                             flush_interval_s=3600, max_buffered_rows=bound,
                             events=LogWriterMetrics("decision_log", registry),
                             spill_dir=mount_point / "spill",
                             spill_interval_s=SPILL_INTERVAL_S)


def test_a_full_disk_keeps_rows_up_to_the_bound_and_writes_them_when_there_is_room(
        small_fs: Path) -> None:
    registry = CollectorRegistry()
    writer = _writer(small_fs, registry, bound=250)
    filler = _fill(small_fs)
    for batch in range(4):
        # Appends take neither the write lock nor the journal lock: they go on
        # while a flush or a journal write is stuck on the disk.
        with writer._write_lock, writer._journal_lock:
            for i in range(100):
                writer.append(_record(batch * 100 + i))
        writer.spill()
        assert writer.flush() == 0
    # Kept at most 250: of four chunks of 100, the two oldest were given up.
    assert writer.pending == 200 and writer.rows_dropped == 200
    assert _counter(registry, "rampart_decision_log_write_errors_total") == 4
    assert _counter(registry, "rampart_decision_log_dropped_total") == 200
    assert _counter(registry, "rampart_decision_log_spill_errors_total") >= 1
    filler.unlink()
    assert writer.flush() == 200
    writer.close()
    ids = read_decisions(small_fs / "log").column("request_id").to_pylist()
    assert sorted(ids) == sorted(f"r{i}" for i in range(200, 400))
    assert not (small_fs / "spill" / "w").exists()


def test_a_read_only_filesystem_keeps_rows_and_writes_them_once_writable(
        small_fs: Path) -> None:
    registry = CollectorRegistry()
    writer = _writer(small_fs, registry, bound=150)
    for i in range(50):
        writer.append(_record(i))
    assert writer.flush() == 50
    _remount(small_fs, "ro")
    for batch in (1, 2):
        for i in range(100):
            writer.append(_record(batch * 100 + i))
        writer.spill()
        assert writer.flush() == 0
    assert writer.pending == 100 and writer.rows_dropped == 100
    assert _counter(registry, "rampart_decision_log_write_errors_total") == 2
    assert _counter(registry, "rampart_decision_log_dropped_total") == 100
    assert _counter(registry, "rampart_decision_log_spill_errors_total") >= 1
    _remount(small_fs, "rw")
    assert writer.flush() == 100
    writer.close()
    ids = read_decisions(small_fs / "log").column("request_id").to_pylist()
    assert sorted(ids) == sorted([f"r{i}" for i in range(50)] +
                                 [f"r{i}" for i in range(200, 300)])
    assert not (small_fs / "spill" / "w").exists()
