"""Outcome events: schemas, the outcomes log, ``POST /v1/outcomes`` in-process,
and ``rampart outcomes import`` (in-process through ``main``)."""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from serving.cli.main import main
from serving.gateway.core import GatewayCore, build_app
from serving.kernel.config import format_validation_error
from telemetry.outcome_events import MAX_OUTCOME_EVENTS, OutcomeBatch, OutcomeEvent
from telemetry.outcomes_log import (
    OUTCOME_LOG_SCHEMA,
    OutcomeRecord,
    OutcomesInputError,
    OutcomesLogWriter,
    import_outcomes,
    read_outcomes,
)
from telemetry.tracing import build_tracer_provider
from tests.unit.fakes import make_config, make_core

UTC = dt.UTC
JAN1 = dt.datetime(2026, 1, 1, tzinfo=UTC)
JAN1_S = 1_767_225_600


def _event(**overrides: Any) -> dict[str, Any]:
    return {"unit_id": "user-1", "metric": "conversion", "value": 1.0, **overrides}


def _rows(path: Path) -> list[dict[str, Any]]:
    return sorted(read_outcomes(path).to_pylist(), key=lambda r: (r["unit_id"], r["metric"]))


# --------------------------------------------------------------------------- schemas


@pytest.mark.parametrize(
    ("timestamp", "expected"),
    [
        (JAN1_S, JAN1),
        (JAN1_S + 0.25, JAN1 + dt.timedelta(milliseconds=250)),
        ("2026-01-01T00:00:00Z", JAN1),
        ("2026-01-01T01:00:00+01:00", JAN1),
        ("2026-01-01T00:00:00", JAN1),  # no offset: UTC
        ("2026-01-01", JAN1),
        (None, None),
    ],
)
def test_event_times_are_seconds_or_iso_and_stored_as_utc(
    timestamp: Any, expected: dt.datetime | None
) -> None:
    event = OutcomeEvent.model_validate(_event(timestamp=timestamp))
    assert event.timestamp == expected
    if expected is not None:
        assert event.timestamp is not None and event.timestamp.utcoffset() == dt.timedelta(0)


def test_event_value_accepts_integers_and_experiment_id_is_optional() -> None:
    event = OutcomeEvent.model_validate(_event(value=3, experiment_id="exp-a"))
    assert (event.value, event.experiment_id) == (3.0, "exp-a")
    assert OutcomeEvent.model_validate(_event()).experiment_id is None


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        ({"value": float("nan")}, "value: Input should be a finite number"),
        ({"value": float("inf")}, "value: Input should be a finite number"),
        ({"value": True}, "value:"),
        ({"value": "1.0"}, "value:"),
        ({"value": None}, "value:"),
        ({"unit_id": ""}, "unit_id:"),
        ({"unit_id": "x" * 257}, "unit_id:"),
        ({"unit_id": 7}, "unit_id:"),
        ({"metric": "has space"}, "metric: String should match pattern"),
        ({"metric": ""}, "metric:"),
        ({"experiment_id": "no/slash"}, "experiment_id:"),
        ({"timestamp": "yesterday"}, "timestamp: timestamp 'yesterday' is not an ISO-8601"),
        ({"timestamp": True}, "timestamp: timestamp must be seconds since the epoch"),
        ({"timestamp": float("nan")}, "timestamp: timestamp must be a finite number"),
        ({"timestamp": 1_767_225_600_000}, "milliseconds given as seconds?"),
        ({"timestamp": -1}, "out of range"),
        ({"timestamp": "1969-12-31T23:59:59Z"}, "before 1970-01-01"),
        ({"timestamp": [1]}, "timestamp:"),
        ({"colour": "red"}, "colour: Extra inputs are not permitted"),
    ],
)
def test_bad_events_are_rejected_naming_the_field(overrides: dict[str, Any], needle: str) -> None:
    with pytest.raises(ValidationError) as caught:
        OutcomeEvent.model_validate(_event(**overrides))
    assert needle in format_validation_error(caught.value)


def test_missing_required_fields_are_named() -> None:
    with pytest.raises(ValidationError) as caught:
        OutcomeEvent.model_validate({"value": 1.0})
    text = format_validation_error(caught.value)
    assert "unit_id: Field required" in text and "metric: Field required" in text


def test_a_batch_holds_one_to_the_limit_of_events() -> None:
    assert len(OutcomeBatch.model_validate({"events": [_event()] * 3}).events) == 3
    for events in ([], [_event()] * (MAX_OUTCOME_EVENTS + 1)):
        with pytest.raises(ValidationError):
            OutcomeBatch.model_validate({"events": events})
    with pytest.raises(ValidationError) as caught:
        OutcomeBatch.model_validate({"events": [_event(), _event(value="x")]})
    assert "events.1.value" in format_validation_error(caught.value)


def test_config_has_an_outcomes_log_beside_the_decision_log() -> None:
    default = make_config()
    assert default.outcomes_log.path == Path(".rampart/outcomes")
    assert default.outcomes_log.batch_rows == default.decision_log.batch_rows
    custom = make_config(outcomes_log={"path": "/tmp/o", "batch_rows": 10,
                                       "flush_interval_s": 0.5})
    assert (custom.outcomes_log.path, custom.outcomes_log.batch_rows) == (Path("/tmp/o"), 10)
    from serving.kernel.config import parse_config
    from serving.kernel.errors import ConfigError

    data = {"models": [{"name": "clf", "versions": ["1"]}],
            "default": {"model": "clf", "version": "1"},
            "outcomes_log": {"batch_rows": 0, "colour": 1}}
    with pytest.raises(ConfigError) as caught:
        parse_config(data)
    assert "outcomes_log.batch_rows" in str(caught.value)
    assert "outcomes_log.colour" in str(caught.value)


# --------------------------------------------------------------------------- the log


def _record(i: int, received_us: int | None = None) -> OutcomeRecord:
    at = received_us if received_us is not None else round(time.time() * 1e6)
    return OutcomeRecord(f"u{i}", "clicks", float(i), JAN1_S * 1_000_000 + i,
                         "exp-a" if i % 2 else None, at)


def test_writer_flushes_on_size_time_and_close_and_reads_back(tmp_path: Path) -> None:
    writer = OutcomesLogWriter(tmp_path, "w1", batch_rows=10, flush_interval_s=3600)
    writer.append_many([_record(i) for i in range(25)])
    deadline = time.monotonic() + 10
    while writer.rows_written < 25 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert writer.rows_written == 25  # one batch over the size: written without the timer
    writer.append_many([_record(25)])
    assert writer.pending == 1
    writer.close()
    writer.close()  # idempotent
    table = read_outcomes(tmp_path)
    assert table.schema == OUTCOME_LOG_SCHEMA
    rows = {r["unit_id"]: r for r in table.to_pylist()}
    assert sorted(rows) == sorted(f"u{i}" for i in range(26))
    assert rows["u3"]["value"] == 3.0 and rows["u3"]["experiment_id"] == "exp-a"
    assert rows["u2"]["experiment_id"] is None
    assert rows["u3"]["timestamp"] == JAN1 + dt.timedelta(microseconds=3)
    assert not list(tmp_path.rglob("*.tmp"))
    assert all(p.parent.name.startswith("date=") for p in tmp_path.rglob("*.parquet"))

    timed = OutcomesLogWriter(tmp_path / "timed", "w2", batch_rows=1000, flush_interval_s=0.05)
    timed.append_many([_record(1)])
    deadline = time.monotonic() + 10
    while timed.rows_written < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert timed.rows_written == 1
    timed.close()


def test_files_are_dated_by_the_day_received(tmp_path: Path) -> None:
    writer = OutcomesLogWriter(tmp_path, "w", batch_rows=100, flush_interval_s=3600)
    day_us = 86_400 * 1_000_000
    writer.append_many([_record(1, JAN1_S * 1_000_000), _record(2, JAN1_S * 1_000_000 + day_us)])
    writer.close()
    assert sorted(p.parent.name for p in tmp_path.rglob("*.parquet")) == [
        "date=2026-01-01", "date=2026-01-02"]


def test_nothing_there_reads_as_an_empty_table(tmp_path: Path) -> None:
    assert read_outcomes(tmp_path).num_rows == 0
    assert read_outcomes(tmp_path / "absent").schema == OUTCOME_LOG_SCHEMA
    writer = OutcomesLogWriter(tmp_path / "log", "w", flush_interval_s=3600)
    writer.append_many([_record(1)])
    writer.close()
    (one,) = (tmp_path / "log").rglob("*.parquet")
    assert read_outcomes(one).column("unit_id").to_pylist() == ["u1"]


# --------------------------------------------------------------------------- import


CSV = """unit_id,metric,value,timestamp,experiment_id
user-1,conversion,1,2026-01-01T00:00:00Z,exp-a
user-2,revenue,12.5,1767225600,
user-3,conversion,0,,exp-a
user-4,conversion,1,2026-01-01 01:00:00,
"""


def test_import_csv_writes_every_row_in_one_file(tmp_path: Path) -> None:
    source = tmp_path / "events.csv"
    source.write_text(CSV)
    before = dt.datetime.now(UTC)
    result = import_outcomes(source, tmp_path / "log")
    assert result.rows == 4
    assert list((tmp_path / "log").rglob("*.parquet")) == [result.file]
    rows = {r["unit_id"]: r for r in read_outcomes(tmp_path / "log").to_pylist()}
    assert rows["user-1"]["timestamp"] == JAN1 and rows["user-1"]["experiment_id"] == "exp-a"
    assert rows["user-2"]["timestamp"] == JAN1 and rows["user-2"]["value"] == 12.5
    assert rows["user-2"]["experiment_id"] is None
    assert rows["user-4"]["timestamp"] == JAN1 + dt.timedelta(hours=1)
    received = rows["user-3"]["received_at"]
    assert received >= before - dt.timedelta(seconds=1)
    assert rows["user-3"]["timestamp"] == received  # no time given: the import time
    assert {r["received_at"] for r in rows.values()} == {received}


def test_import_parquet_with_typed_columns(tmp_path: Path) -> None:
    source = tmp_path / "events.parquet"
    pq.write_table(pa.table({
        "unit_id": pa.array(["a", "b", "c"]).dictionary_encode(),
        "metric": ["clicks", "clicks", "revenue"],
        "value": pa.array([1, 2, 3], pa.int32()),
        "timestamp": pa.array([JAN1, None, JAN1 + dt.timedelta(seconds=1)],
                              pa.timestamp("ns", tz="Europe/Berlin")),
    }), source)
    result = import_outcomes(source, tmp_path / "log")
    assert result.rows == 3
    rows = {r["unit_id"]: r for r in read_outcomes(tmp_path / "log").to_pylist()}
    assert rows["a"]["timestamp"] == JAN1 and rows["a"]["value"] == 1.0
    assert rows["c"]["timestamp"] == JAN1 + dt.timedelta(seconds=1)
    assert rows["b"]["timestamp"] == rows["b"]["received_at"]
    assert all(r["experiment_id"] is None for r in rows.values())

    seconds = tmp_path / "seconds.parquet"
    pq.write_table(pa.table({"unit_id": ["a"], "metric": ["m"], "value": [0.5],
                             "timestamp": [JAN1_S + 0.5]}), seconds)
    import_outcomes(seconds, tmp_path / "log2")
    (row,) = read_outcomes(tmp_path / "log2").to_pylist()
    assert row["timestamp"] == JAN1 + dt.timedelta(milliseconds=500)


def test_import_csv_with_mixed_time_forms_matches_the_api(tmp_path: Path) -> None:
    times = ["2026-01-01T00:00:00Z", "1767225600.5", "2026-01-01", "2026-W01",
             "2026-01-01T00:00:00.1234567+00:00", "3000-01-01T00:00:00Z"]
    lines = ["unit_id,metric,value,timestamp"] + [f"u{i},m,1,{t}" for i, t in enumerate(times)]
    (tmp_path / "mixed.csv").write_text("\n".join(lines) + "\n")
    import_outcomes(tmp_path / "mixed.csv", tmp_path / "log")
    got = {r["unit_id"]: r["timestamp"] for r in read_outcomes(tmp_path / "log").to_pylist()}
    for i, text in enumerate(times):
        value: Any = float(text) if text[0].isdigit() and "-" not in text else text
        assert got[f"u{i}"] == OutcomeEvent.model_validate(_event(timestamp=value)).timestamp


@pytest.mark.parametrize(
    ("line", "needle"),
    [
        ("user-9,conversion,abc,,", "row 3: value must be a finite number (got 'abc')"),
        ("user-9,conversion,nan,,", "row 3: value must be a finite number"),
        ("user-9,conversion,inf,,", "row 3: value must be a finite number"),
        ("user-9,conversion,,,", "row 3: value is missing"),
        (",conversion,1,,", "row 3: unit_id is missing"),
        ("user-9,,1,,", "row 3: metric is missing"),
        ("user-9,has space,1,,", "row 3: metric must be 1-64 characters"),
        ("user-9,conversion,1,,bad/id", "row 3: experiment_id must be 1-64 characters"),
        ("user-9,conversion,1,not-a-time,", "row 3: timestamp 'not-a-time' is neither"),
        ("user-9,conversion,1,1767225600000,", "row 3: timestamp 1767225600000 is out of range"),
        ("user-9,conversion,1,1960-01-01T00:00:00Z,", "row 3: timestamp 1960-01-01T00:00:00Z"),
        (f"{'x' * 257},conversion,1,,", "row 3: unit_id must be 1-256 characters (got 257)"),
    ],
)
def test_a_bad_row_is_named_and_nothing_is_written(
    tmp_path: Path, line: str, needle: str
) -> None:
    source = tmp_path / "events.csv"
    good = "user-1,conversion,1,,\nuser-2,conversion,2,,\n"
    source.write_text("unit_id,metric,value,timestamp,experiment_id\n" + good + line + "\n"
                      + good)
    with pytest.raises(OutcomesInputError) as caught:
        import_outcomes(source, tmp_path / "log")
    assert needle in str(caught.value)
    assert "nothing was imported" in str(caught.value)
    assert not (tmp_path / "log").exists()


def test_the_first_bad_row_is_named_whatever_the_column(tmp_path: Path) -> None:
    source = tmp_path / "events.csv"
    source.write_text("unit_id,metric,value\nu1,m,1\nu2,m,x\nu3,bad metric,1\n,m,1\n")
    with pytest.raises(OutcomesInputError, match="row 2: value"):
        import_outcomes(source, tmp_path / "log")


@pytest.mark.parametrize(
    ("table", "needle"),
    [
        ({"unit_id": ["u"], "metric": ["m"]}, "missing columns ['value']"),
        ({"unit_id": ["u"], "metric": ["m"], "value": [1.0], "colour": ["red"]},
         "unknown columns ['colour']"),
        ({"unit_id": [1], "metric": ["m"], "value": [1.0]}, "column unit_id must hold text"),
        ({"unit_id": ["u"], "metric": ["m"], "value": [True]}, "column value must hold numbers"),
        ({"unit_id": ["u"], "metric": ["m"], "value": [1.0], "timestamp": [[1]]},
         "column timestamp must hold"),
        ({"unit_id": pa.array([], pa.string()), "metric": pa.array([], pa.string()),
          "value": pa.array([], pa.float64())}, "no rows to import"),
    ],
)
def test_bad_parquet_columns_are_named(
    tmp_path: Path, table: dict[str, Any], needle: str
) -> None:
    source = tmp_path / "events.parquet"
    pq.write_table(pa.table(table), source)
    with pytest.raises(OutcomesInputError) as caught:
        import_outcomes(source, tmp_path / "log")
    assert needle in str(caught.value)
    assert not (tmp_path / "log").exists()


def test_unreadable_files_get_one_message(tmp_path: Path) -> None:
    (tmp_path / "events.json").write_text("{}")
    (tmp_path / "broken.parquet").write_bytes(b"not parquet")
    (tmp_path / "ragged.csv").write_text("unit_id,metric,value\nu,m,1,extra\n")
    cases = [("missing.csv", "no such file"), ("events.json", "unknown file type"),
             ("broken.parquet", "is not a readable Parquet file"),
             ("ragged.csv", "is not a readable CSV file")]
    for name, needle in cases:
        with pytest.raises(OutcomesInputError, match=needle):
            import_outcomes(tmp_path / name, tmp_path / "log")


def test_cli_import_prints_the_count_and_names_bad_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "events.csv"
    source.write_text(CSV)
    config = tmp_path / "rampart.yaml"
    config.write_text(
        "models: [{name: clf, versions: ['1']}]\n"
        "default: {model: clf, version: '1'}\n"
        f"outcomes_log: {{path: {tmp_path / 'from-config'}}}\n")
    assert main(["outcomes", "import", str(source), "--outcomes", str(tmp_path / "log")]) == 0
    assert "imported 4 outcome events" in capsys.readouterr().out
    assert read_outcomes(tmp_path / "log").num_rows == 4

    assert main(["outcomes", "import", str(source), "--config", str(config), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["rows"] == 4 and summary["file"].startswith(str(tmp_path / "from-config"))

    bad = tmp_path / "bad.csv"
    bad.write_text("unit_id,metric,value\nu1,m,1\nu2,m,oops\n")
    assert main(["outcomes", "import", str(bad), "--outcomes", str(tmp_path / "log")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rampart: error: ") and "row 2: value" in err
    assert read_outcomes(tmp_path / "log").num_rows == 4
    assert main(["outcomes", "import", str(source), "--config", str(tmp_path / "no.yaml")]) == 2
    assert "cannot read config" in capsys.readouterr().err


# --------------------------------------------------------------------------- endpoint


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[dict[str, Any]]:
    provider = build_tracer_provider(None)
    core, _ = make_core(provider.get_tracer("test"))
    core.outcomes_log = OutcomesLogWriter(tmp_path / "outcomes", "test", batch_rows=100_000,
                                          flush_interval_s=3600)
    with TestClient(build_app(core, ingest_token=INGEST), headers=INGEST_AUTH) as client:
        yield {"client": client, "core": core, "dir": tmp_path / "outcomes"}
    core.close()


INGEST = "ingest-secret"
INGEST_AUTH = {"Authorization": f"Bearer {INGEST}"}


def _post(client: TestClient, body: Any, **kwargs: Any) -> Any:
    if isinstance(body, bytes | str):
        kwargs.setdefault("headers", {"content-type": "application/json"})
        return client.post("/v1/outcomes", content=body, **kwargs)
    return client.post("/v1/outcomes", json=body, **kwargs)


def test_one_event_and_a_batch_are_accepted_and_logged(gateway: dict[str, Any]) -> None:
    client, core = gateway["client"], gateway["core"]
    r = _post(client, _event(unit_id="solo", timestamp="2026-01-01T00:00:00Z",
                             experiment_id="exp-a"))
    assert (r.status_code, r.json()) == (202, {"accepted": 1})
    batch = [_event(unit_id=f"user-{i}", value=i, timestamp=JAN1_S + i) for i in range(250)]
    r = _post(client, {"events": batch})
    assert (r.status_code, r.json()) == (202, {"accepted": 250})
    before = dt.datetime.now(UTC)
    r = _post(client, _event(unit_id="late"))
    assert r.status_code == 202
    core.outcomes_log.flush()
    rows = {r["unit_id"]: r for r in read_outcomes(gateway["dir"]).to_pylist()}
    assert len(rows) == 252
    assert rows["solo"]["timestamp"] == JAN1 and rows["solo"]["experiment_id"] == "exp-a"
    assert rows["user-7"]["timestamp"] == JAN1 + dt.timedelta(seconds=7)
    assert rows["user-7"]["value"] == 7.0 and rows["user-7"]["metric"] == "conversion"
    late = rows["late"]
    assert late["timestamp"] == late["received_at"] >= before - dt.timedelta(seconds=1)


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        ({"events": [_event(), _event(value="high"), _event(metric="a b")]}, 422,
         "2 of 3 events are invalid; none was recorded"),
        ({"events": [_event(), _event(value="high")]}, 422, "events.1.value"),
        ({"events": [_event(), {"unit_id": "u", "value": 1}]}, 422,
         "events.1.metric: Field required"),
        ('{"events": [{"unit_id": "u", "metric": "m", "value": NaN}]}', 422,
         "events.0.value: Input should be a finite number"),
        (_event(timestamp="soon"), 422, "timestamp: timestamp 'soon' is not an ISO-8601"),
        ({**_event(), "colour": 1}, 422, "colour: Extra inputs are not permitted"),
        ({"events": []}, 422, "events:"),
        ({"events": [_event()], "extra": 1}, 422, "extra"),
        ({"events": "all"}, 422, "events:"),
        ("[1, 2]", 422, "JSON object"),
        ("{nope", 400, "not valid JSON"),
        ("", 400, "not valid JSON"),
        ({"events": [_event()] * (MAX_OUTCOME_EVENTS + 1)}, 413,
         f"{MAX_OUTCOME_EVENTS + 1} events in one request; the limit is {MAX_OUTCOME_EVENTS}"),
        ("x" * (8 * 1024 * 1024 + 1), 413, "limit"),
    ],
)
def test_bad_outcome_bodies_get_a_named_4xx_and_record_nothing(
    gateway: dict[str, Any], body: Any, status: int, needle: str
) -> None:
    r = _post(gateway["client"], body)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert needle in error["message"], error
    assert gateway["core"].outcomes_log.pending == 0


def test_many_bad_events_are_listed_up_to_a_limit(gateway: dict[str, Any]) -> None:
    r = _post(gateway["client"], {"events": [_event(value="x")] * 50})
    assert r.status_code == 422
    message = r.json()["error"]["message"]
    assert "50 of 50 events are invalid" in message and "... and 30 more" in message


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded"])
def test_a_body_not_declared_as_json_is_refused(
    gateway: dict[str, Any], content_type: str | None
) -> None:
    headers = {"content-type": content_type} if content_type else {}
    r = gateway["client"].post("/v1/outcomes", content=json.dumps(_event()), headers=headers)
    assert r.status_code == 415
    assert r.json()["error"]["code"] == "unsupported_media_type"
    assert "Content-Type must be application/json" in r.json()["error"]["message"]
    ok = gateway["client"].post("/v1/outcomes", content=json.dumps(_event()),
                                headers={"content-type": "application/json; charset=utf-8"})
    assert ok.status_code == 202


def test_a_gateway_without_an_outcomes_log_says_so() -> None:
    core, _ = make_core(build_tracer_provider(None).get_tracer("test"))
    assert isinstance(core, GatewayCore) and core.outcomes_log is None
    with TestClient(build_app(core, ingest_token=INGEST), headers=INGEST_AUTH) as client:
        r = _post(client, _event())
    assert r.status_code == 503 and r.json()["error"]["code"] == "outcomes_log_unavailable"


def test_outcomes_need_the_ingest_token_of_their_own(tmp_path: Path) -> None:
    core, _ = make_core(build_tracer_provider(None).get_tracer("test"))
    core.outcomes_log = OutcomesLogWriter(tmp_path / "outcomes", "test", batch_rows=100_000,
                                          flush_interval_s=3600)
    try:
        with TestClient(build_app(core, None, "admin-secret", ingest_token=INGEST)) as client:
            for headers in ({}, {"Authorization": "Bearer wrong"},
                            {"Authorization": "Bearer admin-secret"}):  # not the admin's
                r = _post(client, _event(), headers=headers)
                assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
            assert core.outcomes_log.pending == 0
            assert _post(client, _event(), headers=INGEST_AUTH).status_code == 202
        with TestClient(build_app(core)) as client:  # no ingest token configured: refused
            r = _post(client, _event(), headers=INGEST_AUTH)
            assert r.status_code == 401
            assert "RAMPART_INGEST_TOKEN" in r.json()["error"]["message"]
    finally:
        core.close()


def test_openapi_describes_the_outcomes_route(gateway: dict[str, Any]) -> None:
    spec = gateway["client"].get("/openapi.json").json()
    post = spec["paths"]["/v1/outcomes"]["post"]
    assert {"202", "400", "413", "415", "422"} <= set(post["responses"])
    body = json.dumps(post["requestBody"])
    assert "unit_id" in body and "events" in body
