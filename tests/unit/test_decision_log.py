from __future__ import annotations

import time
from pathlib import Path

from telemetry.decision_log import (
    DECISION_SCHEMA,
    DecisionLogWriter,
    DecisionRecord,
    read_decisions,
)


def _record(i: int, experiment: str | None = "exp") -> DecisionRecord:
    return DecisionRecord(
        f"r{i}", f"u{i}", "user_id", experiment, None, "control", "clf", "1", "primary",
        time.time(), {"f0": float(i)}, 0.5, 1.25, "ok", None,
    )


def test_flushes_on_size_and_on_close(tmp_path: Path) -> None:
    writer = DecisionLogWriter(tmp_path, "w1", batch_rows=10, flush_interval_s=3600)
    for i in range(25):
        writer.append(_record(i))
    deadline = time.monotonic() + 10
    while writer.rows_written < 20 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert writer.rows_written >= 20  # two full batches without waiting for the timer
    writer.close()
    table = read_decisions(tmp_path)
    assert table.schema == DECISION_SCHEMA
    assert sorted(table.column("request_id").to_pylist()) == sorted(f"r{i}" for i in range(25))
    writer.close()  # idempotent


def test_flushes_on_time(tmp_path: Path) -> None:
    writer = DecisionLogWriter(tmp_path, "w2", batch_rows=1000, flush_interval_s=0.05)
    writer.append(_record(1))
    deadline = time.monotonic() + 10
    while writer.rows_written < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert writer.rows_written == 1
    writer.close()


def test_partitions_by_date_and_experiment_and_keeps_all_columns(tmp_path: Path) -> None:
    writer = DecisionLogWriter(tmp_path, "w3", batch_rows=100, flush_interval_s=3600)
    writer.append(_record(1, "exp-a"))
    writer.append(_record(2, None))
    writer.close()
    dirs = sorted(p.parent.name for p in tmp_path.rglob("*.parquet"))
    assert dirs == ["experiment=_none", "experiment=exp-a"]
    rows = {r["request_id"]: r for r in read_decisions(tmp_path).to_pylist()}
    assert rows["r1"]["experiment_id"] == "exp-a" and rows["r2"]["experiment_id"] is None
    assert rows["r1"]["features"] == [("f0", 1.0)]
    assert rows["r1"]["latency_ms"] == 1.25 and rows["r1"]["role"] == "primary"
    assert not list(tmp_path.rglob("*.tmp"))


def test_empty_directory_reads_as_empty_table(tmp_path: Path) -> None:
    assert read_decisions(tmp_path).num_rows == 0


def test_columnar_batches_and_records_share_partitions(tmp_path: Path) -> None:
    """A shadow batch arrives as whole columns; it lands in the same date and
    experiment partitions as row records, with every column intact."""
    import numpy as np

    from telemetry.decision_log import batch_table

    writer = DecisionLogWriter(tmp_path, "w4", batch_rows=1000, flush_interval_s=3600)
    writer.append(_record(1, "exp-a"))
    day_two = 86_400.0 * 20_000 + 5.0  # 2024-10-04 UTC
    table = batch_table(3, {
        "request_id": ["s1", "s2", "s3"], "unit_id": ["u1", "u2", "u3"],
        "unit_type": "user_id", "experiment_id": ["exp-a", None, "exp-a"],
        "arm": "shadow", "model_name": "clf", "model_version": "2", "role": "shadow",
        "timestamp": np.array([time.time(), time.time(), day_two]),
        "features": [{"f0": 1.0}, {"f0": 2.0, "f1": 3.0}, {"f0": 4.0}],
        "prediction": np.array([0.1, 0.2, 0.3]), "latency_ms": 0.5, "status": "ok",
        "error": None,
    })
    assert writer.pending == 1
    writer.append_table(table)
    assert writer.pending == 4
    writer.close()
    assert writer.rows_written == 4
    dirs = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.glob("date=*/experiment=*"))
    today = time.strftime("%Y-%m-%d", time.gmtime())
    assert dirs == sorted({"date=2024-10-04/experiment=exp-a", f"date={today}/experiment=exp-a",
                           f"date={today}/experiment=_none"})
    rows = {r["request_id"]: r for r in read_decisions(tmp_path).to_pylist()}
    assert rows["s2"]["features"] == [("f0", 2.0), ("f1", 3.0)]
    assert rows["s2"]["experiment_id"] is None and rows["s3"]["prediction"] == 0.3
    assert rows["s1"]["role"] == "shadow" and rows["s1"]["error"] is None
    assert rows["r1"]["role"] == "primary"


def test_feature_maps_fast_and_general_paths_agree() -> None:
    """Rows with one key order take a vectorized path; anything else the general
    one; both must build the same column."""
    import pyarrow as pa

    from telemetry.decision_log import _feature_maps

    map_type = pa.map_(pa.string(), pa.float64())
    uniform = tuple({"f0": float(i), "f1": -float(i)} for i in range(5))
    fast = _feature_maps(uniform, map_type)
    general = _feature_maps((*uniform, None), map_type)
    assert fast.to_pylist() == general.to_pylist()[:5] and general.to_pylist()[5] is None
    reordered = (*uniform, {"f1": 1.0, "f0": 2.0})
    assert _feature_maps(reordered, map_type).to_pylist()[5] == [("f1", 1.0), ("f0", 2.0)]
