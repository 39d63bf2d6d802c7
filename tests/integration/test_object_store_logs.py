"""The decision and outcome logs on a real S3-compatible server (moto's server mode).

Writers write and readers read ``s3://`` URIs; a file whose upload has not
completed is never read; ``rampart analyze`` and ``rampart parity`` give the
same answers from S3 as from the same files on local disk; and a bucket or
endpoint that is not there is one line on stderr and exit code 2.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
import yaml

from telemetry.decision_log import (
    DECISION_SCHEMA,
    DecisionLogWriter,
    DecisionRecord,
    read_decisions,
    records_to_table,
)
from telemetry.outcomes_log import (
    OutcomeRecord,
    OutcomesLogWriter,
    import_outcomes,
    read_outcomes,
)
from telemetry.storage import LogLocation
from tests.object_store import ObjectStore
from tests.ports import free_port
from tests.unit.test_analysis import _config, write_experiment

ROOT = Path(__file__).resolve().parents[2]
RAMPART = str(Path(sys.executable).with_name("rampart"))
DAY = 86_400.0
T0 = dt.datetime(2026, 11, 20, 12, tzinfo=dt.UTC).timestamp()


@pytest.fixture
def s3(s3_server: ObjectStore, monkeypatch: pytest.MonkeyPatch) -> ObjectStore:
    """The session's S3 server, with this process's environment pointing at it."""
    for name, value in s3_server.env.items():
        monkeypatch.setenv(name, value)
    return s3_server


def _records(n: int, offset: int = 0) -> list[DecisionRecord]:
    """Decisions over two days and three experiments (one of them none), some of
    them shadow calls, with typed and float-only rows."""
    records = []
    for i in range(offset, offset + n):
        row: dict[str, Any] = ({"f0": float(i), "f1": i / 7} if i % 3 else
                               {"age": i, "country": "FR", "vip": i % 2 == 0})
        records.append(DecisionRecord(
            f"r{i}", f"u{i % 17}", "user_id", (None, "exp-a", "exp-b")[i % 3],
            None if i % 3 == 0 else "layer", ("control", "treatment")[i % 2], "clf",
            str(1 + i % 2), "shadow" if i % 5 == 0 else "primary",
            T0 + (i % 2) * DAY + i, row, i / 100, 1.5, "ok", None,
            {"platform": "ios" if i % 2 else "android"}, None, "body"))
    return records


def _by_id(table: pa.Table, key: str = "request_id") -> list[dict[str, Any]]:
    return sorted(table.to_pylist(), key=lambda r: r[key])


def _objects(store_path: str) -> list[str]:
    filesystem = pafs.S3FileSystem(endpoint_override=os.environ["AWS_ENDPOINT_URL_S3"]
                                   .split("://", 1)[1], scheme="http")
    selector = pafs.FileSelector(store_path, recursive=True)
    return sorted(i.path for i in filesystem.get_file_info(selector)
                  if i.type == pafs.FileType.File)


def test_decisions_round_trip_through_s3_over_several_flushes_and_partitions(
        s3: ObjectStore, tmp_path: Path) -> None:
    bucket = s3.bucket()
    remote = DecisionLogWriter(f"s3://{bucket}/logs/decisions", "w1", batch_rows=100_000,
                               flush_interval_s=3600)
    local = DecisionLogWriter(tmp_path / "decisions", "w1", batch_rows=100_000,
                              flush_interval_s=3600)
    for batch in range(3):
        records = _records(40, offset=40 * batch)
        for writer in (remote, local):
            for record in records:
                writer.append(record)
            assert writer.flush() == 40
    remote.close()
    local.close()
    assert remote.write_errors == 0 and remote.rows_written == 120

    objects = _objects(f"{bucket}/logs/decisions")
    # 3 flushes x 2 days x 3 experiments, each its own object, none temporary
    assert len(objects) == 18
    assert all("/date=2026-11-2" in o and "/experiment=" in o for o in objects)
    assert not any(Path(o).name.startswith((".", "_")) for o in objects)

    from_s3 = read_decisions(f"s3://{bucket}/logs/decisions")
    assert from_s3.schema == DECISION_SCHEMA and from_s3.num_rows == 120
    assert _by_id(from_s3) == _by_id(read_decisions(tmp_path / "decisions"))
    # one object alone, by its URI
    one = read_decisions(f"s3://{objects[0]}")
    assert 0 < one.num_rows < 120


def test_outcomes_round_trip_through_s3_and_import_to_s3(
        s3: ObjectStore, tmp_path: Path) -> None:
    bucket = s3.bucket()
    uri = f"s3://{bucket}/outcomes/"
    writer = OutcomesLogWriter(uri, "w1", batch_rows=100_000, flush_interval_s=3600)
    written = []
    for flush in range(3):
        records = [OutcomeRecord(f"u{i}", "revenue" if i % 2 else "converted", i * 1.25,
                                 round((T0 + i) * 1e6), "exp-a" if i % 3 else None,
                                 round((T0 + flush * DAY) * 1e6))
                   for i in range(50 * flush, 50 * flush + 50)]
        writer.append_many(records)
        assert writer.flush() == 50
        written += records
    writer.close()
    assert writer.write_errors == 0
    assert len(_objects(f"{bucket}/outcomes")) == 3  # one per flush, each on its own day
    rows = _by_id(read_outcomes(uri), "unit_id")
    assert [(r["unit_id"], r["metric"], r["value"], r["experiment_id"]) for r in rows] == sorted(
        (r.unit_id, r.metric, r.value, r.experiment_id) for r in written)

    source = tmp_path / "events.csv"
    source.write_text("unit_id,metric,value\nx1,converted,1\nx2,revenue,9.5\n")
    result = import_outcomes(source, f"s3://{bucket}/imported")
    assert isinstance(result.file, str) and result.file.startswith(f"s3://{bucket}/imported/")
    assert _by_id(read_outcomes(f"s3://{bucket}/imported"), "unit_id")[1]["value"] == 9.5
    assert read_outcomes(f"s3://{bucket}/absent").num_rows == 0


def _parquet_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="none")
    return bytes(sink.getvalue().to_pybytes())


def test_an_unfinished_upload_and_temporary_names_are_never_read(
        s3: ObjectStore) -> None:
    bucket = s3.bucket()
    root = LogLocation.resolve(f"s3://{bucket}/decisions")
    writer = DecisionLogWriter(root, "w1", batch_rows=100_000, flush_interval_s=3600)
    for record in _records(30):
        writer.append(record)
    writer.close()
    assert read_decisions(root).num_rows == 30

    # Another writer's file, big enough to go up as a multipart upload: parts
    # are on the server while the stream is open, but no object is.
    late = _records(300, offset=1000)
    table = records_to_table(late).set_column(
        DECISION_SCHEMA.get_field_index("error"), "error",
        pa.array([os.urandom(20_000).hex() for _ in late], type=pa.string()))
    data = _parquet_bytes(table)
    assert len(data) > 11 * 2**20  # past pyarrow's 10 MiB part size
    target = root.join("date=2026-11-20", "experiment=exp-a", "part-other-00000001.parquet")
    stream = root.fs.open_output_stream(target.path)
    try:
        stream.write(data[: len(data) // 2])
        stream.flush()
        assert read_decisions(root).num_rows == 30
        stream.write(data[len(data) // 2:])
        assert read_decisions(root).num_rows == 30
    finally:
        stream.close()
    assert read_decisions(root).num_rows == 330

    # Whole files under hidden or temporary names are not the log's either.
    for hidden in (".part-x.parquet", "_temporary/part-y.parquet",
                   "date=2026-11-21/.part-z.parquet.tmp", "date=2026-11-21/.part-z.parquet"):
        with root.fs.open_output_stream(root.join(hidden).path) as out:
            out.write(_parquet_bytes(records_to_table(_records(5, offset=5000))))
    rows = read_decisions(root)
    assert rows.num_rows == 330
    assert not any(r.startswith("r50") for r in rows.column("request_id").to_pylist())


def test_a_writer_to_a_missing_bucket_counts_the_failure_and_keeps_serving(
        s3: ObjectStore) -> None:
    writer = DecisionLogWriter("s3://no-such-bucket-rampart/decisions", "w1",
                               batch_rows=100_000, flush_interval_s=3600)
    writer.append(_records(1)[0])
    assert writer.flush() == 0
    assert (writer.write_errors, writer.pending) == (1, 1)  # kept for the next try
    writer.close()  # tries once more, and fails again: still kept, never raised
    assert writer.write_errors >= 2 and writer.rows_written == 0 and writer.pending == 1


# --------------------------------------------------------------------------- the CLI


def _cli(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """``rampart`` as a user runs it, with ``env`` as its only AWS settings."""
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    return subprocess.run([RAMPART, *args], capture_output=True, text=True, timeout=300,
                          env={**inherited, **env}, cwd=cwd, stdin=subprocess.DEVNULL)


def _upload(local: Path, uri: str) -> None:
    location = LogLocation.resolve(uri)
    pafs.copy_files(str(local), location.path, source_filesystem=pafs.LocalFileSystem(),
                    destination_filesystem=location.fs)


def _without_paths(body: Any) -> Any:
    """The report with the places it names left out: they differ by design."""
    if isinstance(body, dict):
        return {k: _without_paths(v) for k, v in body.items()
                if k not in ("path", "file", "decisions")}
    if isinstance(body, list):
        return [_without_paths(v) for v in body]
    return body


def test_analyze_reads_s3_logs_as_it_reads_local_ones(
        s3: ObjectStore, tmp_path: Path) -> None:
    write_experiment(tmp_path, units=2_000)
    config = tmp_path / "rampart.yaml"
    config.write_text(yaml.safe_dump(_config(tmp_path).model_dump(mode="json")))
    bucket = s3.bucket()
    _upload(tmp_path / "decisions", f"s3://{bucket}/decisions")
    _upload(tmp_path / "outcomes", f"s3://{bucket}/outcomes")
    common = ("analyze", "--config", str(config), "--experiment", "exp", "--json",
              "--as-of", "2026-12-01T00:00:00Z")
    local = _cli(*common, "--decisions", str(tmp_path / "decisions"),
                 "--outcomes", str(tmp_path / "outcomes"), env=s3.env, cwd=tmp_path)
    remote = _cli(*common, "--decisions", f"s3://{bucket}/decisions",
                  "--outcomes", f"s3://{bucket}/outcomes", env=s3.env, cwd=tmp_path)
    assert local.returncode == 0, local.stderr
    assert remote.returncode == 0, remote.stderr
    body = json.loads(remote.stdout)
    assert body["metrics"] and json.loads(local.stdout) == body

    # The config may name the logs by URI too; and the endpoint may come from
    # AWS_ENDPOINT_URL alone, which pyarrow does not read itself.
    document = _config(tmp_path).model_dump(mode="json")
    document["decision_log"]["path"] = f"s3://{bucket}/decisions"
    document["outcomes_log"]["path"] = f"s3://{bucket}/outcomes"
    config.write_text(yaml.safe_dump(document))
    generic = {k: v for k, v in s3.env.items() if k != "AWS_ENDPOINT_URL_S3"}
    by_config = _cli(*common, env=generic, cwd=tmp_path)
    assert by_config.returncode == 0, by_config.stderr
    assert json.loads(by_config.stdout) == body


def test_parity_report_reads_an_s3_log_as_it_reads_a_local_one(
        s3: ObjectStore, tmp_path: Path) -> None:
    bucket = s3.bucket()
    uri = f"s3://{bucket}/decisions"
    remote = DecisionLogWriter(uri, "w1", batch_rows=100_000, flush_interval_s=3600)
    local = DecisionLogWriter(tmp_path / "decisions", "w1", batch_rows=100_000,
                              flush_interval_s=3600)
    for i in range(200):
        for role, version, score in (("primary", "1", i / 200), ("shadow", "2", i / 190)):
            record = DecisionRecord(
                f"r{i}", f"u{i}", "user_id", "exp-a", None, ("control", "treatment")[i % 2],
                "clf", version, role, T0 + i * 600, {"f0": float(i)}, score, 1.0, "ok", None)
            remote.append(record)
            local.append(record)
        if i % 70 == 0:
            remote.flush()
            local.flush()
    remote.close()
    local.close()
    assert remote.write_errors == 0
    results = [_cli("parity", "report", "--decisions", where, "--json", env=s3.env,
                    cwd=tmp_path) for where in (str(tmp_path / "decisions"), uri)]
    for result in results:
        assert result.returncode == 0, result.stderr
    bodies = [json.loads(r.stdout) for r in results]
    assert bodies[0]["rows"] == 400 and bodies[0]["agreement"]
    assert _without_paths(bodies[1]) == _without_paths(bodies[0])

    imported = _cli("outcomes", "import", str(_events(tmp_path)), "--outcomes",
                    f"s3://{bucket}/outcomes", "--json", env=s3.env, cwd=tmp_path)
    assert imported.returncode == 0, imported.stderr
    assert json.loads(imported.stdout)["file"].startswith(f"s3://{bucket}/outcomes/date=")
    assert read_outcomes(f"s3://{bucket}/outcomes").num_rows == 2


def _events(tmp_path: Path) -> Path:
    path = tmp_path / "events.csv"
    path.write_text("unit_id,metric,value\nu1,converted,1\nu2,converted,0\n")
    return path


def _one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rampart: error: "), result.stderr
    return lines[0]


def test_a_missing_bucket_or_a_dead_endpoint_is_one_line_and_exit_2(
        s3: ObjectStore, tmp_path: Path) -> None:
    write_experiment(tmp_path, units=200)
    config = tmp_path / "rampart.yaml"
    config.write_text(yaml.safe_dump(_config(tmp_path).model_dump(mode="json")))
    analyze = ("analyze", "--config", str(config), "--experiment", "exp",
               "--as-of", "2026-12-01T00:00:00Z")
    missing = "s3://no-such-bucket-rampart/decisions"
    line = _one_line_error(_cli(*analyze, "--decisions", missing, env=s3.env, cwd=tmp_path))
    assert "no-such-bucket-rampart" in line
    line = _one_line_error(_cli("parity", "report", "--decisions", missing,
                                env=s3.env, cwd=tmp_path))
    assert "no-such-bucket-rampart" in line
    line = _one_line_error(_cli("outcomes", "import", str(_events(tmp_path)), "--outcomes",
                                "s3://no-such-bucket-rampart/outcomes", env=s3.env,
                                cwd=tmp_path))
    assert "no-such-bucket-rampart" in line

    dead = f"http://127.0.0.1:{free_port()}"
    nobody = {**s3.env, "AWS_ENDPOINT_URL_S3": dead, "AWS_ENDPOINT_URL": dead}
    bucket = "rampart-unreachable"
    for args in ((*analyze, "--decisions", f"s3://{bucket}/decisions"),
                 ("parity", "report", "--decisions", f"s3://{bucket}/decisions"),
                 ("outcomes", "import", str(_events(tmp_path)), "--outcomes",
                  f"s3://{bucket}/outcomes")):
        line = _one_line_error(_cli(*args, env=nobody, cwd=tmp_path))
        assert bucket in line
