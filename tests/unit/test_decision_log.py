from __future__ import annotations

import datetime as dt
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from models.outputs import Prediction
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


def _typed(request_id: str, features: dict[str, Any] | None, output: Prediction | None,
           unit_source: str | None = "body") -> DecisionRecord:
    return DecisionRecord(
        request_id, "u1", "user_id", "exp", None, "control", "clf", "1", "primary",
        time.time(), features, None if output is None else output.score, 1.0,
        "ok" if output is not None else "error", None if output is not None else "boom",
        None, output, unit_source)


def test_typed_rows_round_trip_with_their_inputs_output_and_unit_source(
        tmp_path: Path) -> None:
    """``features`` keeps the numbers; ``inputs`` the whole row as sent, when it
    holds anything but floats; ``output`` the answer beyond its score."""
    writer = DecisionLogWriter(tmp_path, "w5", batch_rows=1000, flush_interval_s=3600)
    sent = {"age": 41, "income": 52_000.5, "country": "FR", "member": True, "coupon": None,
            "history": [[1.0, 2.0], [3.0, 4.0]]}
    multi = Prediction([0.2, 0.5, 0.3], None, "b", {"a": 0.2, "b": 0.5, "c": 0.3})
    binary = Prediction(0.75, 0.75, 1, {"0": 0.25, "1": 0.75})
    writer.append(_typed("typed", sent, multi, "header"))
    writer.append(_typed("floats", {"f0": 1.5, "f1": -2.0}, Prediction(3.25, 3.25), "param"))
    writer.append(_typed("binary", {"f0": 1.5, "f1": -2.0}, binary, "request_id"))
    writer.append(_typed("failed", {"f0": "x"}, None, None))
    writer.append(_typed("unparsed", None, None, None))
    writer.close()
    table = read_decisions(tmp_path)
    assert table.schema == DECISION_SCHEMA
    rows = {r["request_id"]: r for r in table.to_pylist()}

    typed = rows["typed"]
    assert typed["features"] == [("age", 41.0), ("income", 52_000.5)]  # numbers, not bool
    assert orjson.loads(typed["inputs"]) == sent  # the row exactly as sent, types kept
    assert typed["prediction"] is None  # a multi-class answer is not one number
    assert orjson.loads(typed["output"]) == {
        "value": [0.2, 0.5, 0.3], "label": "b", "probabilities": {"a": 0.2, "b": 0.5, "c": 0.3}}
    assert typed["unit_source"] == "header"

    floats = rows["floats"]  # the fast path: no JSON at all
    assert floats["features"] == [("f0", 1.5), ("f1", -2.0)]
    assert floats["inputs"] is None and floats["output"] is None
    assert floats["prediction"] == 3.25 and floats["unit_source"] == "param"

    assert rows["binary"]["prediction"] == 0.75
    assert orjson.loads(rows["binary"]["output"]) == {
        "value": 0.75, "label": 1, "probabilities": {"0": 0.25, "1": 0.75}}
    assert rows["failed"]["features"] == [] and orjson.loads(rows["failed"]["inputs"]) == {
        "f0": "x"}
    assert rows["failed"]["output"] is None and rows["failed"]["status"] == "error"
    assert rows["unparsed"]["features"] is None and rows["unparsed"]["inputs"] is None


def test_an_int_keeps_its_type_in_inputs() -> None:
    """A replay through a signature with an integer column needs the int back, so
    a row with one is not on the all-float fast path."""
    from telemetry.decision_log import _feature_columns

    map_type = DECISION_SCHEMA.field("features").type
    rows = ({"f0": 1.0, "n": 3}, {"f0": 2.0, "n": 4.0}, {"f0": np.float64(0.5), "n": 1.0})
    features, inputs = _feature_columns(rows, map_type)
    assert features.to_pylist() == [[("f0", 1.0), ("n", 3.0)], [("f0", 2.0), ("n", 4.0)],
                                    [("f0", 0.5), ("n", 1.0)]]
    assert [None if v is None else orjson.loads(v) for v in inputs.to_pylist()] == [
        {"f0": 1.0, "n": 3}, None, None]


def test_appending_encodes_no_json_the_flush_does(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import telemetry.decision_log as decision_log

    encoded: list[Any] = []
    real = decision_log.to_json

    def counting(value: Any) -> str:
        encoded.append(value)
        return real(value)

    monkeypatch.setattr(decision_log, "to_json", counting)
    writer = DecisionLogWriter(tmp_path, "w6", batch_rows=1000, flush_interval_s=3600)
    writer.append(_typed("a", {"country": "FR"}, Prediction([0.1, 0.9])))
    writer.append_columns(2, {
        "request_id": ["s1", "s2"], "role": "shadow", "timestamp": time.time(),
        "status": "ok", "features": [{"country": "DE"}, {"f0": 1.0}],
        "output": [Prediction("cat"), None], "unit_source": ["body", "body"]})
    assert encoded == [] and writer.pending == 3
    writer.close()
    assert len(encoded) == 4  # two rows' inputs, two outputs
    rows = {r["request_id"]: r for r in read_decisions(tmp_path).to_pylist()}
    assert orjson.loads(rows["s1"]["inputs"]) == {"country": "DE"}
    assert orjson.loads(rows["s1"]["output"]) == {"value": "cat", "label": None,
                                                   "probabilities": None}
    assert rows["s2"]["inputs"] is None and rows["s2"]["output"] is None
    assert rows["s1"]["role"] == "shadow" and rows["s1"]["unit_source"] == "body"


def test_odd_values_are_written_as_json_rather_than_lose_the_batch(tmp_path: Path) -> None:
    writer = DecisionLogWriter(tmp_path, "w7", batch_rows=1000, flush_interval_s=3600)
    odd = {"n": np.int64(3), "v": np.array([1.5, 2.5]), "t": (1, 2), "when": dt.date(2024, 1, 2)}
    writer.append(_typed("odd", odd, Prediction(np.float32(0.5), 0.5, np.str_("x"))))
    writer.close()
    assert writer.write_errors == 0
    row = read_decisions(tmp_path).to_pylist()[0]
    assert orjson.loads(row["inputs"]) == {"n": 3, "v": [1.5, 2.5], "t": [1, 2],
                                           "when": "2024-01-02"}
    assert orjson.loads(row["output"])["label"] == "x"


@pytest.mark.parametrize("as_directory", [True, False])
def test_files_written_before_the_typed_columns_still_read(tmp_path: Path,
                                                           as_directory: bool) -> None:
    """Older files lack ``inputs``, ``output`` and ``unit_source``: they read as null."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from telemetry.decision_log import records_to_table

    old_schema = pa.schema([f for f in DECISION_SCHEMA
                            if f.name not in ("inputs", "output", "unit_source")])
    old = records_to_table([_record(1), _record(2)]).select(old_schema.names)
    assert old.schema == old_schema
    directory = tmp_path / "date=2024-01-01" / "experiment=exp"
    directory.mkdir(parents=True)
    pq.write_table(old, directory / "part-old.parquet")
    writer = DecisionLogWriter(tmp_path, "w8", batch_rows=1000, flush_interval_s=3600)
    writer.append(_typed("new", {"country": "FR"}, Prediction(["x"]), "header"))
    writer.close()
    table = read_decisions(tmp_path if as_directory else directory / "part-old.parquet")
    assert table.schema == DECISION_SCHEMA
    rows = {r["request_id"]: r for r in table.to_pylist()}
    for request_id in ("r1", "r2"):
        assert rows[request_id]["features"] == [("f0", float(request_id[1:]))]
        assert rows[request_id]["inputs"] is None and rows[request_id]["output"] is None
        assert rows[request_id]["unit_source"] is None
    if as_directory:
        assert rows["new"]["unit_source"] == "header"


class _Events:
    def __init__(self) -> None:
        self.failures = 0
        self.dropped = 0

    def write_failed(self) -> None:
        self.failures += 1

    def rows_dropped(self, rows: int) -> None:
        self.dropped += rows


def _block(root: Path, experiment: str) -> Path:
    """Make the experiment's partition unwritable: a file where its directory goes."""
    day = dt.datetime.now(dt.UTC).date().isoformat()
    (root / f"date={day}").mkdir(parents=True, exist_ok=True)
    blocker = root / f"date={day}" / f"experiment={experiment}"
    blocker.write_text("in the way")
    return blocker


def test_rows_a_failed_write_left_are_written_once_the_log_recovers(tmp_path: Path) -> None:
    events = _Events()
    writer = DecisionLogWriter(tmp_path, "w1", batch_rows=10_000, flush_interval_s=3600,
                               events=events)
    blocker = _block(tmp_path, "exp-b")
    for i in range(30):
        writer.append(_record(i, "exp-b" if i % 2 else "exp-a"))
    # exp-a's rows are written; exp-b's fail and are kept (not written twice later).
    assert writer.flush() == 15
    assert (writer.write_errors, events.failures, writer.pending) == (1, 1, 15)
    assert writer.flush() == 0 and writer.pending == 15  # still failing: still kept
    blocker.unlink()
    writer.append(_record(99, "exp-b"))
    assert writer.flush() == 16
    writer.close()
    ids = read_decisions(tmp_path).column("request_id").to_pylist()
    assert sorted(ids) == sorted([f"r{i}" for i in range(30)] + ["r99"])  # none twice
    assert events.dropped == writer.rows_dropped == 0


def test_a_chunk_keeps_its_generation_name_when_retried(tmp_path: Path) -> None:
    writer = DecisionLogWriter(tmp_path, "w1", batch_rows=10_000, flush_interval_s=3600)
    blocker = _block(tmp_path, "exp-b")
    writer.append(_record(1, "exp-a"))
    writer.append(_record(2, "exp-b"))
    assert writer.flush() == 1
    blocker.unlink()
    writer.append(_record(3, "exp-b"))
    assert writer.flush() == 2
    writer.close()
    names = sorted(str(p.relative_to(tmp_path)).split("/", 1)[1]
                   for p in tmp_path.rglob("*.parquet"))
    # One file per partition and generation; the retried rows kept generation 1.
    assert names == ["experiment=exp-a/part-w1-00000001.parquet",
                     "experiment=exp-b/part-w1-00000001.parquet",
                     "experiment=exp-b/part-w1-00000002.parquet"]


def test_a_log_that_never_recovers_drops_the_oldest_rows_and_counts_them(
        tmp_path: Path) -> None:
    events = _Events()
    writer = DecisionLogWriter(tmp_path, "w1", batch_rows=10_000, flush_interval_s=3600,
                               max_buffered_rows=25, events=events)
    _block(tmp_path, "exp")
    for batch in range(4):
        for i in range(10):
            writer.append(_record(batch * 10 + i))
        writer.flush()
    # Kept at most 25 rows: of 40, the two oldest batches of 10 were given up.
    assert (writer.pending, writer.rows_dropped, events.dropped) == (20, 20, 20)
    assert events.failures == writer.write_errors == 4
    writer.close()


@pytest.mark.parametrize("mode", ["drop", "hash"])
def test_only_allowlisted_features_are_logged_as_sent(tmp_path: Path, mode: str) -> None:
    from telemetry.decision_log import FeaturePolicy

    policy = FeaturePolicy({"clf": frozenset({"f0"})}, mode, b"key")
    writer = DecisionLogWriter(tmp_path, "w1", batch_rows=10_000, flush_interval_s=3600,
                               feature_policy=policy)
    record = _record(1)._replace(features={"f0": 1.5, "email": "a@b.c", "income": 91000.0})
    writer.append(record)
    other = _record(2)._replace(model_name="other", features={"f0": 2.0, "email": "x@y.z"})
    writer.append(other)  # a model without an allowlist logs every feature
    writer.append_columns(1, {"request_id": ["s1"],
                              "role": "shadow", "model_name": "clf", "status": "ok",
                              "timestamp": time.time(),
                              "features": [{"f0": 3.0, "email": "a@b.c"}]})
    writer.close()
    rows = {r["request_id"]: r for r in read_decisions(tmp_path).to_pylist()}
    logged = orjson.loads(rows["r1"]["inputs"]) if rows["r1"]["inputs"] else dict(
        rows["r1"]["features"])
    shadow = orjson.loads(rows["s1"]["inputs"]) if rows["s1"]["inputs"] else dict(
        rows["s1"]["features"])
    if mode == "drop":
        assert logged == {"f0": 1.5} and shadow == {"f0": 3.0}
    else:
        assert logged["f0"] == 1.5 and set(logged) == {"f0", "email", "income"}
        assert logged["email"].startswith("hmac:") and "a@b.c" not in str(rows["r1"])
        assert logged["email"] == shadow["email"]  # equal values stay comparable
        assert logged["income"] != 91000.0
    assert "x@y.z" in str(rows["r2"]["inputs"])
