"""Shadow mode: the primary answers whatever the shadow does.

The first tests go through the gateway core end to end; the rest drive the
runner directly with jobs, for what the core does not decide: how each kind of
shadow version is scored, what is logged and what is paired for agreement.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson
import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from models.inputs import ColumnSpec, InputMismatch, InputSchema
from models.outputs import Prediction, ScoredBatch
from models.registry import LinearScorer
from serving.gateway.scorers import LoadedScorers
from serving.gateway.shadow import ShadowJob, ShadowRunner, numeric_matrix
from serving.routing.router import ModelRef, build_routing_table
from telemetry.decision_log import DecisionLogWriter, read_decisions
from telemetry.metrics import RequestMetrics, ShadowMetrics
from telemetry.tracing import build_tracer_provider
from tests.unit.fakes import FEATURES, InMemoryRegistry, make_config

if TYPE_CHECKING:
    from serving.gateway.core import GatewayCore

GOOD = {name: 0.1 * i for i, name in enumerate(FEATURES)}


class BlockedScorer:
    """A shadow that hangs until released (a slow shadow, deterministically),
    scored as a matrix like a folded linear version."""

    name, version, feature_names, inline = "clf", "2", FEATURES, True

    def __init__(self) -> None:
        self.release = threading.Event()
        self.calls = 0

    def predict_one(self, values: Any) -> float:
        return float(self.predict_batch([values])[0])

    def predict_batch(self, matrix: Any) -> Any:
        self.calls += len(matrix)
        self.release.wait(30)
        return [0.5] * len(matrix)


class RaisingScorer(BlockedScorer):
    def predict_batch(self, matrix: Any) -> Any:
        raise RuntimeError("shadow exploded")


def build_app(core: GatewayCore) -> Any:
    # Imported here so the runner's own tests below do not need the core.
    from serving.gateway.core import build_app as build

    return build(core)


def _build(tmp_path: Path, shadow_scorer: Any, sample_bp: int = 10_000,
           queue_size: int = 10_000) -> tuple[GatewayCore, CollectorRegistry, DecisionLogWriter]:
    from serving.gateway.core import GatewayCore

    registry = InMemoryRegistry()
    config = make_config(experiments=[], shadows=[
        {"model": "clf", "version": "challenger", "sample_bp": sample_bp, "salt": "sh"}])
    table = build_routing_table(config, registry.resolve)
    scorers = LoadedScorers({("clf", "1"): registry.load("clf", "1")})
    if shadow_scorer is not None:
        scorers.add(("clf", "2"), shadow_scorer)
    prom = CollectorRegistry()
    writer = DecisionLogWriter(tmp_path / "d", "t", batch_rows=100_000, flush_interval_s=3600)
    runner = ShadowRunner(scorers, ShadowMetrics(prom), writer, queue_size=queue_size,
                          publish_every=10, publish_interval_s=0.0)
    core = GatewayCore(table, scorers, RequestMetrics(prom),
                       build_tracer_provider().get_tracer("t"), writer, shadow_runner=runner)
    return core, prom, writer


@pytest.fixture
def blocked(tmp_path: Path) -> Iterator[tuple[TestClient, BlockedScorer, Any]]:
    shadow = BlockedScorer()
    core, prom, writer = _build(tmp_path, shadow)
    with TestClient(build_app(core)) as client:
        yield client, shadow, (core, prom, writer, tmp_path)
    shadow.release.set()
    core.close()


def test_a_hung_shadow_neither_fails_nor_delays_the_primary(blocked: Any) -> None:
    client, shadow, (core, prom, writer, tmp) = blocked
    answers = [client.post("/v1/predict", json={"unit_id": f"u{i}", "features": GOOD})
               for i in range(50)]
    # Every primary answer came back while the shadow was still hung on its first call.
    assert [a.status_code for a in answers] == [200] * 50
    assert not shadow.release.is_set()
    assert {a.json()["model_version"] for a in answers} == {"1"}
    shadow.release.set()
    deadline = time.monotonic() + 10
    while core.shadow_runner.completed < 50 and time.monotonic() < deadline:
        time.sleep(0.01)
    writer.flush()
    core.shadow_runner.publish_parity()
    rows = read_decisions(tmp / "d").to_pylist()
    primary = {r["request_id"]: r for r in rows if r["role"] == "primary"}
    mirrored = {r["request_id"]: r for r in rows if r["role"] == "shadow"}
    assert set(primary) == set(mirrored) == {a.json()["request_id"] for a in answers}
    for request_id, row in mirrored.items():
        assert row["model_version"] == "2" and row["status"] == "ok"
        assert row["unit_id"] == primary[request_id]["unit_id"]
        assert row["features"] == primary[request_id]["features"]
    assert prom.get_sample_value("rampart_shadow_requests_total", {
        "model_name": "clf", "model_version": "2", "status": "ok"}) == 50
    assert prom.get_sample_value("rampart_shadow_pairs", {
        "model_name": "clf", "primary_version": "1", "shadow_version": "2"}) == 50


@pytest.mark.parametrize("kind", ["raises", "down"])
def test_a_failing_or_missing_shadow_is_logged_and_counted_not_felt(
    tmp_path: Path, kind: str
) -> None:
    core, prom, _ = _build(tmp_path, RaisingScorer() if kind == "raises" else None)
    with TestClient(build_app(core)) as client:
        answers = [client.post("/v1/predict", json={"unit_id": f"u{i}", "features": GOOD})
                   for i in range(20)]
    assert [a.status_code for a in answers] == [200] * 20
    core.close()
    rows = [r for r in read_decisions(tmp_path / "d").to_pylist() if r["role"] == "shadow"]
    assert len(rows) == 20 and {r["status"] for r in rows} == {"error"}
    needle = "shadow exploded" if kind == "raises" else "not loaded"
    assert all(needle in r["error"] for r in rows)
    assert prom.get_sample_value("rampart_requests_total", {
        "model_name": "clf", "model_version": "1", "experiment_id": "", "arm": "default",
        "rollout_id": "", "rollout_arm": "",
        "status": "ok"}) == 20


def test_a_full_queue_drops_and_counts_never_grows(tmp_path: Path) -> None:
    shadow = BlockedScorer()
    core, prom, _ = _build(tmp_path, shadow, queue_size=5)
    with TestClient(build_app(core)) as client:
        answers = [client.post("/v1/predict", json={"unit_id": f"u{i}", "features": GOOD})
                   for i in range(40)]
    assert [a.status_code for a in answers] == [200] * 40
    runner = core.shadow_runner
    assert runner is not None and len(runner.pending) <= 5
    # the drain thread holds one hung batch, at most 5 wait, the rest were dropped
    assert runner.dropped == 40 - len(runner.pending) - shadow.calls
    assert runner.dropped >= 40 - 5 - 5
    assert prom.get_sample_value("rampart_shadow_requests_total", {
        "model_name": "clf", "model_version": "2", "status": "dropped"}) == runner.dropped
    shadow.release.set()
    core.close()


def test_sampled_shadow_mirrors_the_same_units_every_time(tmp_path: Path) -> None:
    shadow = LinearScorer("clf", "2", FEATURES, tuple([0.25] * 8), 0.2, True)
    core, _, _ = _build(tmp_path, shadow, sample_bp=2000)
    with TestClient(build_app(core)) as client:
        for _ in range(2):
            for i in range(300):
                client.post("/v1/predict", json={"unit_id": f"u{i}", "features": GOOD})
    core.close()
    rows = read_decisions(tmp_path / "d").to_pylist()
    mirrored = [r["unit_id"] for r in rows if r["role"] == "shadow"]
    units = set(mirrored)
    assert 0.12 < len(units) / 300 < 0.28
    assert sorted(mirrored) == sorted(list(units) * 2)  # each mirrored unit, both rounds
    table = core.table
    assert units == {f"u{i}" for i in range(300) if table.shadows[0].mirrors(f"u{i}")}


def test_the_runner_scores_versions_the_core_loads_later(tmp_path: Path) -> None:
    import dataclasses

    from serving.routing.snapshot import RoutingSnapshot

    core, _, _ = _build(tmp_path, None)  # the shadow version is not loaded yet
    registry = InMemoryRegistry()
    newer = RoutingSnapshot(dataclasses.replace(core.table, version=core.table.version + 1))
    core.apply_snapshot(newer, registry.load)  # loads v2 into the set the runner shares
    with TestClient(build_app(core)) as client:
        answers = [client.post("/v1/predict", json={"unit_id": f"u{i}", "features": GOOD})
                   for i in range(10)]
    assert [a.status_code for a in answers] == [200] * 10
    core.close()
    rows = [r for r in read_decisions(tmp_path / "d").to_pylist() if r["role"] == "shadow"]
    assert len(rows) == 10 and {r["status"] for r in rows} == {"ok"}


# --- the runner alone ----------------------------------------------------------------

TYPED_SCHEMA = InputSchema("columns", (ColumnSpec("age", "long"), ColumnSpec("country", "string"),
                                       ColumnSpec("member", "boolean", required=False)))


class TypedScorer:
    """A version over typed columns (no matrix path), checked as its signature says.

    ``classes`` > 2 answers like a multi-class classifier: a probability per
    class and no score."""

    version, schema, inline = "2", TYPED_SCHEMA, False

    def __init__(self, name: str = "clf", classes: int = 2) -> None:
        self.name = name
        self.classes = classes
        self.batches: list[int] = []

    def check_row(self, row: Mapping[str, Any]) -> dict[str, Any]:
        age, country = row.get("age"), row.get("country")
        if isinstance(age, bool) or not isinstance(age, int):
            raise InputMismatch("age", f"expected an integer (long), got {age!r}")
        if not isinstance(country, str):
            raise InputMismatch("country", f"expected a string, got {country!r}")
        return {"age": age, "country": country, "member": bool(row.get("member"))}

    def predict_rows(self, rows: Sequence[Mapping[str, Any]],
                     params: Mapping[str, Any] | None = None) -> ScoredBatch:
        self.batches.append(len(rows))
        out = []
        for row in rows:
            p = min(row["age"] / 100.0, 1.0)
            if self.classes == 2:
                out.append(Prediction(p, p, int(p >= 0.5), {"0": 1.0 - p, "1": p}))
            else:
                probs = [p / 2, p / 2, 1.0 - p]
                out.append(Prediction(probs, None, "c" if p < 0.5 else "a",
                                      dict(zip("abc", probs, strict=True))))
        return ScoredBatch(tuple(out), None)


class Lookup:
    """The replica's loaded versions, as the runner looks them up."""

    def __init__(self, scorers: Mapping[tuple[str, str], Any]) -> None:
        self.scorers = dict(scorers)

    def lookup(self, name: str, version: str) -> Any:
        return self.scorers.get((name, version))


def _job(i: int, row: Mapping[str, Any], primary_score: float | None = 0.5,
         primary: str = "1", unit_source: str | None = "body") -> ShadowJob:
    return ShadowJob(f"r{i}", f"u{i}", "user_id", None, ModelRef("clf", primary),
                     primary_score, ModelRef("clf", "2"), row, row, unit_source)


@pytest.fixture
def runner(tmp_path: Path) -> Iterator[Any]:
    """A runner whose thread never drains on its own (the tests call ``drain``),
    and the decision log and metrics it writes to."""
    made: list[tuple[ShadowRunner, DecisionLogWriter]] = []

    def make(shadow: Any) -> tuple[ShadowRunner, CollectorRegistry, DecisionLogWriter]:
        prom = CollectorRegistry()
        writer = DecisionLogWriter(tmp_path / "d", "t", batch_rows=100_000,
                                   flush_interval_s=3600)
        run = ShadowRunner(Lookup({("clf", "2"): shadow}), ShadowMetrics(prom), writer,
                           drain_interval_s=3600)
        made.append((run, writer))
        return run, prom, writer

    yield make
    for run, writer in made:
        run.close()
        writer.close()


def _shadow_rows(writer: DecisionLogWriter, tmp_path: Path) -> dict[str, dict[str, Any]]:
    writer.flush()
    return {r["request_id"]: r for r in read_decisions(tmp_path / "d").to_pylist()
            if r["role"] == "shadow"}


def _count(prom: CollectorRegistry, status: str) -> float | None:
    return prom.get_sample_value("rampart_shadow_requests_total", {
        "model_name": "clf", "model_version": "2", "status": status})


def test_a_typed_shadow_is_checked_and_scored_in_one_batch(runner: Any, tmp_path: Path) -> None:
    shadow = TypedScorer()
    run, prom, writer = runner(shadow)
    rows = [{"age": 20 + i, "country": "FR", "member": i % 2 == 0} for i in range(10)]
    for i, row in enumerate(rows):
        assert run.submit(_job(i, row, primary_score=0.1 * i))
    assert run.drain() == 10
    assert shadow.batches == [10]  # one predict_rows for the whole drain
    logged = _shadow_rows(writer, tmp_path)
    assert {r["status"] for r in logged.values()} == {"ok"}
    first = logged["r0"]
    assert first["prediction"] == pytest.approx(0.2) and first["model_version"] == "2"
    assert orjson.loads(first["output"]) == {
        "value": 0.2, "label": 0, "probabilities": {"0": 0.8, "1": 0.2}}
    assert orjson.loads(first["inputs"]) == rows[0]  # as sent, types kept
    assert first["features"] == [("age", 20.0)] and first["unit_source"] == "body"
    assert _count(prom, "ok") == 10
    pairs = run.parity.snapshot()[("clf", "1", "2")]
    assert pairs[:, 0].tolist() == pytest.approx([0.1 * i for i in range(10)])
    assert pairs[:, 1].tolist() == pytest.approx([(20 + i) / 100 for i in range(10)])


def test_rows_the_shadow_signature_rejects_are_its_error_rows(runner: Any,
                                                             tmp_path: Path) -> None:
    """The primary took these rows; the shadow's own signature does not. Each is
    logged with the mismatch and counted as an error; the rest are scored."""
    shadow = TypedScorer()
    run, prom, writer = runner(shadow)
    rows = [{"age": 30, "country": "FR"}, {"age": "thirty", "country": "FR"},
            {"age": 40, "country": 7}, {"age": 50, "country": "DE"}]
    for i, row in enumerate(rows):
        run.submit(_job(i, row))
    run.drain()
    assert shadow.batches == [2]  # only the rows that passed the check were scored
    logged = _shadow_rows(writer, tmp_path)
    assert [logged[f"r{i}"]["status"] for i in range(4)] == ["ok", "error", "error", "ok"]
    assert logged["r1"]["error"] == "InputMismatch: age: expected an integer (long), got 'thirty'"
    assert logged["r2"]["error"].startswith("InputMismatch: country:")
    assert logged["r1"]["prediction"] is None and logged["r1"]["output"] is None
    assert logged["r3"]["prediction"] == 0.5 and logged["r3"]["error"] is None
    assert _count(prom, "ok") == 2 and _count(prom, "error") == 2
    assert run.parity.snapshot()[("clf", "1", "2")].shape == (2, 2)


def test_answers_that_are_not_one_number_are_logged_but_not_paired(runner: Any,
                                                                   tmp_path: Path) -> None:
    """Agreement compares scores: a multi-class shadow has none, and neither has
    a primary whose answer was not one number."""
    run, prom, writer = runner(TypedScorer(classes=3))
    run.submit(_job(0, {"age": 80, "country": "FR"}, primary_score=0.9))
    run.submit(_job(1, {"age": 10, "country": "FR"}, primary_score=None))
    run.drain()
    logged = _shadow_rows(writer, tmp_path)
    assert logged["r0"]["status"] == "ok" and logged["r0"]["prediction"] is None
    assert orjson.loads(logged["r0"]["output"])["label"] == "a"
    assert orjson.loads(logged["r1"]["output"])["value"] == pytest.approx([0.05, 0.05, 0.9])
    assert run.parity.snapshot() == {}
    assert _count(prom, "ok") == 2


def test_a_numeric_shadow_scores_one_matrix_and_pairs_only_scored_primaries(
        runner: Any, tmp_path: Path) -> None:
    shadow = LinearScorer("clf", "2", ("a", "b"), (1.0, 2.0), 0.5, False)
    run, _, writer = runner(shadow)
    run.submit(_job(0, {"a": 1, "b": 2.0, "note": "ignored"}, primary_score=4.0))
    run.submit(_job(1, {"a": 0.5, "b": np.float32(1.5)}, primary_score=None))
    run.drain()
    logged = _shadow_rows(writer, tmp_path)
    assert logged["r0"]["prediction"] == 5.5 and logged["r1"]["prediction"] == 4.0
    assert logged["r0"]["output"] is None  # the score is the whole answer
    assert orjson.loads(logged["r0"]["inputs"]) == {"a": 1, "b": 2.0, "note": "ignored"}
    assert run.parity.snapshot()[("clf", "1", "2")].tolist() == [[4.0, 5.5]]


def test_a_logistic_shadow_logs_the_answer_its_predict_rows_would_give(
        runner: Any, tmp_path: Path) -> None:
    """The matrix path scores; the label and class probabilities logged with the
    score are the ones the version answers a client with."""
    shadow = LinearScorer("clf", "2", ("a", "b"), (1.0, -2.0), 0.25, True, ("no", "yes"))
    run, _, writer = runner(shadow)
    rows = [{"a": 1.0, "b": 0.0}, {"a": -1.0, "b": 1.5}]
    for i, row in enumerate(rows):
        run.submit(_job(i, row, primary_score=0.5))
    run.drain()
    logged = _shadow_rows(writer, tmp_path)
    served = shadow.predict_rows(rows).rows
    for i, answer in enumerate(served):
        assert logged[f"r{i}"]["prediction"] == pytest.approx(answer.score, rel=1e-12)
        output = orjson.loads(logged[f"r{i}"]["output"])
        assert output["label"] == answer.label
        assert output["probabilities"] == pytest.approx(answer.probabilities, rel=1e-12)
    assert [orjson.loads(logged[f"r{i}"]["output"])["label"] for i in range(2)] == ["yes", "no"]


def test_the_matrix_path_takes_numbers_only() -> None:
    scorer = LinearScorer("clf", "2", ("a", "b"), (1.0, 1.0), 0.0, False)
    numbers = [_job(0, {"a": 1, "b": 2.5}), _job(1, {"a": np.int64(3), "b": np.float64(4)})]
    matrix = numeric_matrix(scorer, numbers)
    assert matrix is not None and matrix.tolist() == [[1.0, 2.5], [3.0, 4.0]]
    for odd in ({"a": True, "b": 1.0}, {"a": "1", "b": 1.0}, {"a": None, "b": 1.0},
                {"a": [1.0], "b": 1.0}, {"b": 1.0}):
        assert numeric_matrix(scorer, [*numbers, _job(2, odd)]) is None
    assert numeric_matrix(TypedScorer(), numbers) is None  # no feature_names, no matrix


def test_only_an_inline_scorer_takes_the_matrix_path() -> None:
    """A scorer that is not inline may have ``predict_batch`` (replay's score-only
    path); the shadow asks its ``predict_rows`` for the whole answer."""

    class DataFrameScorer(TypedScorer):
        feature_names = ("a", "b")

        def predict_batch(self, matrix: Any) -> Any:
            raise AssertionError("not the shadow's path")

    jobs = [_job(0, {"a": 1.0, "b": 2.0})]
    assert numeric_matrix(DataFrameScorer(), jobs) is None


def test_a_shadow_that_fails_on_the_whole_batch_marks_every_row(runner: Any,
                                                                tmp_path: Path) -> None:
    class Broken(TypedScorer):
        def predict_rows(self, rows: Sequence[Mapping[str, Any]],
                         params: Mapping[str, Any] | None = None) -> ScoredBatch:
            raise RuntimeError("model crashed")

    run, prom, writer = runner(Broken())
    run.submit(_job(0, {"age": 30, "country": "FR"}))
    run.submit(_job(1, {"age": "x", "country": "FR"}))
    run.drain()
    logged = _shadow_rows(writer, tmp_path)
    assert logged["r0"]["error"] == "RuntimeError: model crashed"
    assert logged["r1"]["error"].startswith("InputMismatch: age:")  # its own reason
    assert _count(prom, "error") == 2 and run.parity.snapshot() == {}
