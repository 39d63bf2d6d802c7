"""The spill journal: frames, torn tails, exactly-once replay, the replay lock,
the feature policy before the disk, and a journal that cannot be written.

A crash is simulated in-process by :func:`_abandon`: the writer's threads stop
without a last flush and its lock is let go, as the kernel does for a killed
process. The real SIGKILL is in tests/integration/test_log_durability.py.
"""

from __future__ import annotations

import datetime as dt
import os
import threading
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from prometheus_client import CollectorRegistry

from telemetry.batched_writer import BatchedWriter
from telemetry.decision_log import (
    DecisionLogWriter,
    DecisionRecord,
    FeaturePolicy,
    read_decisions,
    records_to_table,
)
from telemetry.metrics import LogWriterMetrics
from telemetry.outcomes_log import OutcomeRecord, OutcomesLogWriter, read_outcomes
from telemetry.spill_journal import (
    SpillJournal,
    claim_orphans,
    encode_frame,
    read_frames,
    read_segment,
)


def _record(i: int, experiment: str | None = "exp-a") -> DecisionRecord:
    return DecisionRecord(
        f"r{i}", f"u{i}", "user_id", experiment, None, "control", "clf", "1", "primary",
        time.time(), {"f0": float(i)}, 0.5, 1.25, "ok", None,
    )


def _writer(tmp_path: Path, writer_id: str, **options: Any) -> DecisionLogWriter:
    return DecisionLogWriter(tmp_path / "log", writer_id, batch_rows=100_000,
                             flush_interval_s=3600, spill_dir=tmp_path / "spill", **options)


def _abandon(writer: BatchedWriter[Any]) -> None:
    """Stop ``writer`` as a SIGKILL would: no last flush, files left as they
    are, and its lock released (the kernel drops a dead process's flocks)."""
    writer.flush = lambda: 0  # type: ignore[method-assign]
    writer._closed.set()
    writer._wake.set()
    if writer._journal_thread is not None:
        writer._journal_thread.join()
    writer._thread.join()
    assert writer._journal is not None
    writer._journal.close(remove=False)


def _ids(root: Path) -> list[str]:
    ids: list[str] = read_decisions(root).column("request_id").to_pylist()
    return ids


def _counter(registry: CollectorRegistry, name: str) -> float:
    value = registry.get_sample_value(name)
    return 0.0 if value is None else value


# --------------------------------------------------------------------------- frames


def test_frames_round_trip() -> None:
    tables = [records_to_table([_record(i) for i in range(n)]) for n in (1, 7, 0, 300)]
    data = b"".join(encode_frame(t) for t in tables)
    read, used = read_frames(data)
    assert used == len(data)
    assert [t.to_pylist() for t in read] == [t.to_pylist() for t in tables]
    assert all(t.schema == tables[0].schema for t in read)


@pytest.mark.parametrize("cut", [1, 5, 12, 100, -1])
def test_a_torn_last_frame_is_ignored(tmp_path: Path, cut: int) -> None:
    whole = [records_to_table([_record(i)]) for i in range(3)]
    last = encode_frame(records_to_table([_record(99)]))
    path = tmp_path / "00000001.seg"
    path.write_bytes(b"".join(encode_frame(t) for t in whole) + last[:cut])
    assert [t.to_pylist() for t in read_segment(path)] == [t.to_pylist() for t in whole]


def test_a_corrupt_frame_ends_the_reading(tmp_path: Path) -> None:
    frames = [encode_frame(records_to_table([_record(i)])) for i in range(3)]
    broken = bytearray(frames[1])
    broken[-3] ^= 0xFF  # a payload byte: the checksum no longer holds
    tables, used = read_frames(frames[0] + bytes(broken) + frames[2])
    assert len(tables) == 1 and used == len(frames[0])


def test_a_failed_append_is_cut_back_and_journaled_by_the_next(tmp_path: Path) -> None:
    journal = SpillJournal.open(tmp_path, "w", "/log", fsync=False)
    journal.append(1, records_to_table([_record(1)]))
    segment = tmp_path / "w" / "00000001.seg"
    with segment.open("ab") as torn:  # what a write cut short by a full disk leaves
        torn.write(encode_frame(records_to_table([_record(2)]))[:20])
    journal._dirty = True
    journal.append(1, records_to_table([_record(3)]))
    ids = [t.column("request_id")[0].as_py() for t in read_segment(segment)]
    assert ids == ["r1", "r3"]
    journal.close(remove=True)
    assert not (tmp_path / "w").exists()


# --------------------------------------------------------------------------- replay


def test_rows_journaled_but_not_written_are_replayed_once(tmp_path: Path) -> None:
    first = _writer(tmp_path, "first")
    for i in range(50):
        first.append(_record(i))
    first.spill()
    _abandon(first)
    assert _ids(tmp_path / "log") == []
    registry = CollectorRegistry()
    events = LogWriterMetrics("decision_log", registry)
    second = _writer(tmp_path, "second", events=events)
    second.append(_record(1000))
    second.close()
    assert sorted(_ids(tmp_path / "log")) == sorted([f"r{i}" for i in range(50)] + ["r1000"])
    assert second.rows_replayed == 50
    assert _counter(registry, "rampart_decision_log_replayed_total") == 50
    assert list((tmp_path / "spill").iterdir()) == []  # both journals gone


def test_a_crash_after_the_parquet_write_before_the_segment_deletion_duplicates_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = _writer(tmp_path, "first")
    assert first._journal is not None
    # The crash point: the chunk is written, its segment never deleted.
    monkeypatch.setattr(first._journal, "discard", lambda generation: None)
    for i in range(40):
        first.append(_record(i, "exp-a" if i % 2 else "exp-b"))
    assert first.flush() == 40
    assert list((tmp_path / "spill" / "first").glob("*.seg"))
    _abandon(first)
    second = _writer(tmp_path, "second")
    second.close()
    ids = _ids(tmp_path / "log")
    assert sorted(ids) == sorted(f"r{i}" for i in range(40))  # each once
    assert second.rows_replayed == 0


def _block(root: Path, experiment: str) -> Path:
    """Make a partition unwritable: a file where its directory goes."""
    day = dt.datetime.now(dt.UTC).date().isoformat()
    (root / f"date={day}").mkdir(parents=True, exist_ok=True)
    blocker = root / f"date={day}" / f"experiment={experiment}"
    blocker.write_text("in the way")
    return blocker


def test_a_partial_write_replays_only_the_missing_partitions(tmp_path: Path) -> None:
    first = _writer(tmp_path, "first")
    blocker = _block(tmp_path / "log", "exp-b")
    for i in range(30):
        first.append(_record(i, "exp-b" if i % 3 == 1 else "exp-a"))
    assert first.flush() == 20  # exp-a written, exp-b kept for the next try
    assert first.pending == 10
    _abandon(first)
    blocker.unlink()
    second = _writer(tmp_path, "second")
    second.close()
    ids = _ids(tmp_path / "log")
    assert sorted(ids) == sorted(f"r{i}" for i in range(30))
    assert second.rows_replayed == 10
    names = {p.name for p in (tmp_path / "log").rglob("*.parquet")}
    assert names == {"part-first-00000001.parquet"}  # the dead writer's generation


def test_a_replay_that_cannot_write_keeps_the_journal_and_tries_again(tmp_path: Path) -> None:
    first = _writer(tmp_path, "first")
    for i in range(10):
        first.append(_record(i))
    first.spill()
    _abandon(first)
    blocker = _block(tmp_path / "log", "exp-a")
    second = _writer(tmp_path, "second")
    second.flush()
    deadline = time.monotonic() + 10
    while second.write_errors == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert second.write_errors >= 1 and second.rows_replayed == 0
    assert list((tmp_path / "spill" / "first").glob("*.seg"))
    blocker.unlink()
    second.close()
    assert sorted(_ids(tmp_path / "log")) == sorted(f"r{i}" for i in range(10))


def test_two_replayers_never_both_take_one_journal(tmp_path: Path) -> None:
    for n in range(6):
        journal = SpillJournal.open(tmp_path, f"dead-{n}", "/log", fsync=False)
        journal.append(1, records_to_table([_record(n)]))
        journal.close(remove=False)
    live = SpillJournal.open(tmp_path, "live", "/log", fsync=False)
    claims: list[str] = []
    start = threading.Barrier(4)

    def replayer() -> None:
        start.wait()
        for orphan in claim_orphans(tmp_path, "me", "/log"):
            claims.append(orphan.writer_id)
            time.sleep(0.01)  # hold it while the others look
            orphan.release(remove=True)

    threads = [threading.Thread(target=replayer) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(claims) == [f"dead-{n}" for n in range(6)]  # each once, the live one never
    assert [p.name for p in tmp_path.iterdir()] == ["live"]
    held = list(claim_orphans(tmp_path, "someone-else", "/log"))
    assert held == []  # a live writer's lock is never taken
    live.close(remove=True)


def test_a_journal_is_replayed_only_into_its_own_log(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = _writer(tmp_path, "first")
    first.append(_record(1))
    first.spill()
    _abandon(first)
    other = DecisionLogWriter(tmp_path / "other-log", "other", flush_interval_s=3600,
                              spill_dir=tmp_path / "spill")
    other.close()
    assert other.rows_replayed == 0 and _ids(tmp_path / "other-log") == []
    # The same log named another way (relative, with a trailing separator) is its own.
    monkeypatch.chdir(tmp_path)
    same = DecisionLogWriter("log/", "same", flush_interval_s=3600, spill_dir="spill")
    same.close()
    assert same.rows_replayed == 1 and _ids(tmp_path / "log") == ["r1"]


def test_outcome_rows_replay_exactly_once(tmp_path: Path) -> None:
    now_us = round(time.time() * 1e6)

    def writer(writer_id: str) -> OutcomesLogWriter:
        return OutcomesLogWriter(tmp_path / "log", writer_id, batch_rows=100_000,
                                 flush_interval_s=3600, spill_dir=tmp_path / "spill")

    first = writer("first")
    first.append_many([OutcomeRecord(f"u{i}", "clicks", 1.0, now_us, None, now_us)
                       for i in range(20)])
    assert first.flush() == 20
    first.append_many([OutcomeRecord(f"u{i}", "clicks", 1.0, now_us, None, now_us)
                       for i in range(20, 30)])
    first.spill()
    assert first._journal is not None
    first._journal.discard = lambda generation: None  # type: ignore[method-assign]
    _abandon(first)
    second = writer("second")
    second.close()
    units = read_outcomes(tmp_path / "log").column("unit_id").to_pylist()
    assert sorted(units) == sorted(f"u{i}" for i in range(30))
    assert second.rows_replayed == 10


# --------------------------------------------------------------------- what reaches the disk


def test_the_feature_policy_applies_before_rows_are_spilled(tmp_path: Path) -> None:
    policy = FeaturePolicy({"clf": frozenset({"f0"})}, "drop")
    writer = _writer(tmp_path, "w", feature_policy=policy)
    writer.append(_record(1)._replace(features={"f0": 1.5, "email": "secret@example.com"}))
    writer.spill()
    (segment,) = (tmp_path / "spill" / "w").glob("*.seg")
    assert b"secret@example.com" not in segment.read_bytes()
    assert b"email" not in segment.read_bytes()
    (table,) = read_segment(segment)
    assert dict(table.column("features")[0].as_py()) == {"f0": 1.5}
    writer.close()


def test_the_journal_is_private_and_close_removes_it(tmp_path: Path) -> None:
    writer = _writer(tmp_path, "w")
    writer.append(_record(1))
    writer.spill()
    directory = tmp_path / "spill" / "w"
    assert directory.stat().st_mode & 0o777 == 0o700
    assert all(p.stat().st_mode & 0o777 == 0o600 for p in directory.iterdir())
    writer.close()
    assert not directory.exists()
    assert _ids(tmp_path / "log") == ["r1"]
    names = {t.name for t in threading.enumerate()}
    assert "decision-log-w" not in names and "decision-log-journal-w" not in names


def test_rows_a_failing_log_keeps_at_close_stay_journaled_for_the_next_start(
        tmp_path: Path) -> None:
    blocker = _block(tmp_path / "log", "exp-a")
    first = _writer(tmp_path, "first")
    for i in range(5):
        first.append(_record(i))
    first.close()
    assert first.pending == 5 and list((tmp_path / "spill" / "first").glob("*.seg"))
    blocker.unlink()
    second = _writer(tmp_path, "second")
    second.close()
    assert sorted(_ids(tmp_path / "log")) == [f"r{i}" for i in range(5)]


# ------------------------------------------------------------ a journal that cannot be written


def test_an_unwritable_spill_dir_is_counted_and_rows_still_reach_the_log(
        tmp_path: Path) -> None:
    (tmp_path / "not-a-dir").write_text("a file where the spill directory goes")
    registry = CollectorRegistry()
    writer = DecisionLogWriter(tmp_path / "log", "w", batch_rows=100_000,
                               flush_interval_s=3600, spill_dir=tmp_path / "not-a-dir" / "spill",
                               events=LogWriterMetrics("decision_log", registry))
    for i in range(20):
        writer.append(_record(i))
    writer.close()
    assert sorted(_ids(tmp_path / "log")) == sorted(f"r{i}" for i in range(20))
    assert writer.spill_errors == 1
    assert _counter(registry, "rampart_decision_log_spill_errors_total") == 1
    assert _counter(registry, "rampart_decision_log_write_errors_total") == 0


def test_a_spill_dir_lost_while_running_is_counted_and_rows_still_reach_the_log(
        tmp_path: Path) -> None:
    registry = CollectorRegistry()
    writer = _writer(tmp_path, "w", events=LogWriterMetrics("decision_log", registry))
    writer.append(_record(0))
    writer.spill()
    for path in (tmp_path / "spill" / "w").iterdir():
        path.unlink()
    os.rmdir(tmp_path / "spill" / "w")
    writer.flush()
    for i in range(1, 10):
        writer.append(_record(i))
    writer.spill()
    assert writer.spill_errors >= 1
    assert _counter(registry, "rampart_decision_log_spill_errors_total") >= 1
    writer.close()
    assert sorted(_ids(tmp_path / "log")) == sorted(f"r{i}" for i in range(10))


def test_without_a_spill_dir_nothing_is_journaled(tmp_path: Path) -> None:
    writer = DecisionLogWriter(tmp_path / "log", "w", batch_rows=100_000,
                               flush_interval_s=3600)
    writer.append(_record(1))
    assert writer._journal is None and writer._journal_thread is None
    writer.close()
    assert _ids(tmp_path / "log") == ["r1"]
    assert {p.name for p in tmp_path.iterdir()} == {"log"}


def test_a_row_that_cannot_be_converted_is_dropped_alone(tmp_path: Path) -> None:
    writer = _writer(tmp_path, "w")
    writer.append(_record(1))
    writer.append_table(pa.table({"nonsense": [1, 2]}))  # not the decision schema
    writer.append(_record(2))
    writer.close()
    assert sorted(_ids(tmp_path / "log")) == ["r1", "r2"]
    assert writer.rows_dropped == 2 and writer.write_errors == 1 and writer.pending == 0
