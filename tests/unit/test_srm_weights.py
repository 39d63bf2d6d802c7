"""SRM against the split in force when each unit was exposed: ramped weights,
the split the gateway logs with every decision, and logs written before it did."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry
from scipy import stats

from rollout.experiments.analysis import MICROS, split_weights, srm_check
from rollout.experiments.data import AnalysisInputError, load_experiment, load_exposures
from rollout.experiments.report import render_html
from rollout.experiments.stats.srm import combined_srm_test, srm_test
from serving.cli.analyze import run_analysis
from serving.cli.main import main
from serving.gateway.core import GatewayCore, build_app
from serving.kernel.config import RampartConfig, parse_config
from serving.routing.assignment import allocate, buckets_vectorized
from serving.routing.router import build_routing_table, format_arm_weights, route
from telemetry.batched_writer import log_identity
from telemetry.decision_log import DECISION_SCHEMA, DecisionLogWriter, batch_table, read_decisions
from telemetry.metrics import RequestMetrics
from telemetry.outcomes_log import OUTCOME_SCHEMA
from telemetry.spill_journal import SpillJournal
from tests.unit.fakes import FEATURES, InMemoryRegistry
from tests.unit.test_analysis import experiment_document

START = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
AS_OF = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)
ARMS = ("control", "treatment")
RAMP = (100, 500, 2500, 5000)  # treatment's basis points: 1 -> 5 -> 25 -> 50 %
DAY = 86_400.0
GOOD_FEATURES = {name: 0.1 * i for i, name in enumerate(FEATURES)}


SRM_PLAN = {"start": "2026-11-01T00:00:00Z", "primary": {"name": "converted", "type": "binary"},
            "alpha": 0.05, "mde": 0.1, "baseline": 0.1}


def _config(tmp: Path, treatment_bp: int = 5000) -> RampartConfig:
    return parse_config(experiment_document(tmp, SRM_PLAN, (10_000 - treatment_bp,
                                                            treatment_bp)))


def _decisions(ids: list[str], arms: np.ndarray, at: np.ndarray,
               label: str | None) -> pa.Table:
    n = len(ids)
    return batch_table(n, {
        "request_id": [f"r-{at[i]:.6f}-{ids[i]}" for i in range(n)], "unit_id": ids,
        "unit_type": "user_id", "experiment_id": "exp",
        "arm": list(np.asarray(ARMS, dtype=object)[arms]), "model_name": "clf",
        "model_version": list(np.where(arms == 1, "2", "1")), "role": "primary",
        "timestamp": at, "prediction": 0.5, "latency_ms": 1.0, "status": "ok",
        "arm_weights": label,
    })


def ramp_log(tmp: Path, units_per_step: int, *, lose: tuple[int, int, float] | None = None,
             extra: tuple[int, int, float] | None = None, seed: int = 7) -> dict[str, Any]:
    """A ramped experiment's decision log, assigned with the gateway's own hash
    and bucket layout: new units arrive during each step of :data:`RAMP` (a day
    each) and half of them come back in a later step, routed under that step's
    weights (so some move from control to treatment, never back).

    ``lose=(step, arm, share)`` drops that share of the arm's new units of one
    step (their decisions never reach the log: a real imbalance);
    ``extra=(step, arm, share)`` adds that many more (a surplus)."""
    rng = np.random.default_rng(seed)
    tables = []
    first: dict[str, int] = {}
    for step, bp in enumerate(RAMP):
        allocation = allocate(ARMS, [10_000 - bp, bp])
        label = format_arm_weights(ARMS, [10_000 - bp, bp])
        ids = [f"u{step}-{i}" for i in range(units_per_step)]
        arms = allocation.arms_of(buckets_vectorized("s1", ids))
        keep = np.ones(len(ids), dtype=bool)
        if lose is not None and lose[0] == step:
            keep &= ~((arms == lose[1]) & (rng.random(len(ids)) < lose[2]))
        if extra is not None and extra[0] == step:
            more = [f"x{step}-{i}" for i in range(4 * units_per_step)]
            more_arms = allocation.arms_of(buckets_vectorized("s1", more))
            wanted = int(extra[2] * np.count_nonzero(arms == extra[1]))
            chosen = np.flatnonzero(more_arms == extra[1])[:wanted]
            ids += [more[i] for i in chosen]
            arms = np.concatenate([arms, more_arms[chosen]])
            keep = np.concatenate([keep, np.ones(len(chosen), dtype=bool)])
        ids = [u for u, k in zip(ids, keep, strict=True) if k]
        arms = arms[keep]
        at = START.timestamp() + DAY * (step + rng.uniform(0, 0.5, len(ids)))
        tables.append(_decisions(ids, arms, at, label))
        first.update({u: int(a) for u, a in zip(ids, arms, strict=True)})
        if step + 1 < len(RAMP):  # half come back in a later step, under its weights
            back = rng.random(len(ids)) < 0.5
            later = rng.integers(step + 1, len(RAMP), len(ids))
            for s in range(step + 1, len(RAMP)):
                picked = [u for u, b, lt in zip(ids, back, later, strict=True) if b and lt == s]
                if not picked:
                    continue
                w = RAMP[s]
                again = allocate(ARMS, [10_000 - w, w]).arms_of(buckets_vectorized("s1", picked))
                before = np.asarray([first[u] for u in picked])
                assert not np.any((before == 1) & (again == 0))  # the ramp is monotone
                tables.append(_decisions(picked, again, DAY * s + START.timestamp()
                                         + rng.uniform(0.5, 1.0, len(picked)) * DAY,
                                         format_arm_weights(ARMS, [10_000 - w, w])))
    (tmp / "decisions").mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.concat_tables(tables), tmp / "decisions" / "part-0.parquet")
    _outcomes(tmp, list(first))
    return first


def _outcomes(tmp: Path, units: list[str]) -> None:
    n = len(units)
    at = pa.array(np.full(n, int((START.timestamp() + 6 * DAY) * MICROS), dtype=np.int64)).cast(
        pa.timestamp("us", tz="UTC"))
    table = pa.table({
        "unit_id": pa.array(units, type=pa.string()),
        "metric": pa.repeat(pa.scalar("converted"), n),
        "value": pa.array((np.arange(n) % 10 == 0).astype(float)),
        "timestamp": at, "experiment_id": pa.nulls(n, pa.string()), "received_at": at,
    })
    (tmp / "outcomes").mkdir(parents=True, exist_ok=True)
    pq.write_table(table.cast(OUTCOME_SCHEMA), tmp / "outcomes" / "part-0.parquet")


# --------------------------------------------------------------------------- the statistic


def test_combined_test_sums_statistics_and_degrees_of_freedom_as_scipy() -> None:
    observed = [[990, 10], [4_100, 260], [30_200, 9_800], [24_700, 25_300]]
    weights = [[9_900, 100], [9_500, 500], [7_500, 2_500], [5_000, 5_000]]
    ours = combined_srm_test(observed, weights)
    theirs = [stats.chisquare(o, np.sum(o) * np.asarray(w) / np.sum(w)).statistic
              for o, w in zip(observed, weights, strict=True)]
    assert ours.statistic == pytest.approx(sum(theirs), rel=1e-12)
    assert ours.df == 4
    assert ours.p_value == pytest.approx(stats.chi2.sf(sum(theirs), 4), rel=1e-9)
    assert ours.observed == tuple(int(x) for x in np.sum(observed, axis=0))
    assert [r.p_value for r in ours.splits] == pytest.approx(
        [stats.chisquare(o, np.sum(o) * np.asarray(w) / np.sum(w)).pvalue
         for o, w in zip(observed, weights, strict=True)], rel=1e-9)


def test_an_excess_in_one_split_is_not_cancelled_by_a_deficit_in_another() -> None:
    observed, weights = [[5_300, 4_700], [4_700, 5_300]], [[1, 1], [1, 1]]
    pooled = srm_test([10_000, 10_000], [1, 1])
    assert not pooled.flag and pooled.p_value == pytest.approx(1.0)
    combined = combined_srm_test(observed, weights)
    assert combined.flag and combined.statistic == pytest.approx(72.0)
    assert combined.p_value == pytest.approx(stats.chi2.sf(72.0, 2))


def test_one_split_alone_is_flagged_below_the_threshold_over_the_number_of_splits() -> None:
    # Nine clean splits dilute a tenth that is clearly off: the combined p stays
    # above 0.001, the split's own p is below 0.001 / 10.
    clean = [[5_000, 5_000]] * 9
    off = [[5_000 + 250, 5_000 - 250]]  # χ² = 25 on 1 df, p ≈ 5.7e-7
    result = combined_srm_test(clean + off, [[1, 1]] * 10)
    assert result.p_value > 0.001 and result.flag and result.flagged_splits == (9,)
    # One split: both rules are the same test as srm_test.
    single = combined_srm_test([[5_300, 4_700]], [[1, 1]])
    plain = srm_test([5_300, 4_700], [1, 1])
    assert (single.statistic, single.p_value, single.flag) == (
        plain.statistic, plain.p_value, plain.flag)


def test_splits_without_units_or_without_choice_are_left_out() -> None:
    result = combined_srm_test([[0, 0], [900, 0], [4_950, 5_050]],
                               [[5_000, 5_000], [10_000, 0], [5_000, 5_000]])
    assert result.df == 1 and result.error is None and not result.flag
    assert result.observed == (5_850, 5_050)
    units_in_a_closed_arm = combined_srm_test([[890, 10], [4_950, 5_050]],
                                              [[10_000, 0], [5_000, 5_000]])
    assert units_in_a_closed_arm.flag and units_in_a_closed_arm.p_value == 0.0


def test_logged_split_labels_parse_in_the_configured_arm_order() -> None:
    assert split_weights("treatment:100,control:9900", ARMS) == (9900.0, 100.0)
    assert split_weights("control:10000", ARMS) == (10000.0, 0.0)
    assert split_weights("control:9000,gone:1000", ARMS) == (9000.0, 0.0)
    with pytest.raises(ValueError, match="name:basis_points"):
        split_weights("control=9000", ARMS)


# --------------------------------------------------------------------------- a ramp


def test_a_ramp_without_imbalance_is_not_flagged(tmp_path: Path) -> None:
    ramp_log(tmp_path, 40_000)
    report = run_analysis(_config(tmp_path), "exp", as_of=AS_OF, now=AS_OF)
    srm = report.srm
    assert not srm.flag and srm.p_value > 0.001, srm
    assert srm.weights_source == "logged" and srm.df == 4
    assert [s.weights for s in srm.splits] == [(10_000.0 - w, float(w)) for w in RAMP]
    assert all(s.source == "logged" and not s.flag for s in srm.splits)
    assert [s.first_exposure.date() for s in srm.splits if s.first_exposure] == [
        (START + dt.timedelta(days=k)).date() for k in range(4)]
    assert sum(sum(s.observed) for s in srm.splits) == report.units == 160_000
    assert srm.observed == tuple(np.sum([s.observed for s in srm.splits], axis=0))
    # Against the configured 50/50 alone the same units are a gross mismatch.
    assert srm_test(list(srm.observed), [5_000, 5_000]).flag
    assert any(r.startswith("no sample ratio mismatch") for r in report.decision.reasons)


def test_a_ramp_losing_a_tenth_of_one_arm_in_one_step_is_flagged(tmp_path: Path) -> None:
    ramp_log(tmp_path, 40_000, lose=(2, 1, 0.10))
    report = run_analysis(_config(tmp_path), "exp", as_of=AS_OF, now=AS_OF)
    assert report.srm.flag and report.decision.outcome == "hold"
    third = report.srm.splits[2]
    assert third.weights == (7_500.0, 2_500.0) and third.p_value < 1e-6
    assert any(r.startswith("sample ratio mismatch") for r in report.decision.reasons)
    page = render_html(report)
    section = page[page.index("<section id='srm'>"):]
    section = section[:section.index("</section>")]
    assert "Per split" in section and "on 4 df" in section
    assert all(f"{10_000 - w}/{w}" in section for w in RAMP)
    assert section.count("mismatch</td>") == 1  # the third step's split alone


def test_a_loss_in_one_step_and_a_surplus_in_another_still_flag(tmp_path: Path) -> None:
    first = ramp_log(tmp_path, 40_000, lose=(2, 1, 0.06), extra=(3, 1, 0.02))
    report = run_analysis(_config(tmp_path), "exp", as_of=AS_OF, now=AS_OF)
    assert report.srm.flag
    assert len(first) == report.units


def test_both_load_paths_give_each_unit_the_split_of_its_first_decision(
        tmp_path: Path) -> None:
    first = ramp_log(tmp_path, 5_000)
    config = _config(tmp_path)
    experiment = config.experiments[0]
    fast = load_experiment(tmp_path / "decisions", tmp_path / "outcomes", experiment,
                           ("converted",), AS_OF)
    rows, dictionary = load_exposures(tmp_path / "decisions", experiment, AS_OF)

    def by_unit(exposures: Any, units: pa.Array) -> dict[str, tuple[int, float]]:
        return {u: (int(a), exposures.splits[s][1])
                for u, a, s in zip(units.to_pylist(), exposures.arm, exposures.split,
                                   strict=True)}

    seen = by_unit(fast.exposures, fast.units)
    assert seen == by_unit(rows, dictionary)
    step_of = {u: int(u[1]) for u in first}
    assert all(bp == RAMP[step_of[u]] and arm == first[u] for u, (arm, bp) in seen.items())
    assert srm_check(fast.exposures) == srm_check(rows)


# --------------------------------------------------------------------------- the gateway


def _core(config: RampartConfig, writer: DecisionLogWriter) -> GatewayCore:
    registry = InMemoryRegistry()
    table = build_routing_table(config, registry.resolve)
    scorers = {(r.name, r.version): registry.load(r.name, r.version) for r in table.model_refs()}
    return GatewayCore(table, scorers, RequestMetrics(CollectorRegistry()), None, writer)


def _post(client: TestClient, path: str, body: Any, unit: str | None = None) -> Any:
    headers = {"content-type": "application/json"}
    if unit is not None:
        headers["x-rampart-unit"] = unit
    response = client.post(path, content=json.dumps(body), headers=headers)
    assert response.status_code == 200, response.text
    return response


def _traffic(client: TestClient, prefix: str) -> None:
    """Every protocol and both the one-row and the batch paths."""
    for i in range(30):
        _post(client, "/v1/predict", {"unit_id": f"{prefix}-{i}", "features": GOOD_FEATURES})
    _post(client, "/v1/predict", {"rows": [
        {"unit_id": f"{prefix}-b{i}", "features": GOOD_FEATURES} for i in range(20)]})
    _post(client, "/invocations", {"dataframe_split": {
        "columns": list(FEATURES), "data": [list(GOOD_FEATURES.values())]}},
        unit=f"{prefix}-mlflow")
    _post(client, "/v2/models/clf/infer", {"inputs": [
        {"name": name, "shape": [1], "datatype": "FP64", "data": [value]}
        for name, value in GOOD_FEATURES.items()]}, unit=f"{prefix}-v2")


def test_the_gateway_logs_the_split_in_force_and_the_analysis_uses_it(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before, after = _config(tmp_path, 1_000), _config(tmp_path, 5_000)
    writer = DecisionLogWriter(tmp_path / "decisions", "t", batch_rows=10_000,
                               flush_interval_s=3600)
    core = _core(before, writer)
    registry = InMemoryRegistry()
    with TestClient(build_app(core)) as client:
        _traffic(client, "early")
        core.swap_table(build_routing_table(after, registry.resolve, version=2))
        _traffic(client, "late")
        # Units first seen early keep the split of their first decision.
        _traffic(client, "early")
    writer.flush()
    core.close()
    rows = read_decisions(tmp_path / "decisions").to_pylist()
    assert len(rows) == 3 * 52
    ten, half = "control:9000,treatment:1000", "control:5000,treatment:5000"
    assert {r["arm_weights"] for r in rows if r["unit_id"].startswith("late")} == {half}
    early = [r["arm_weights"] for r in rows if r["unit_id"].startswith("early")]
    assert early.count(ten) == early.count(half) == 52
    assert route(core.table, "late-1").arm_weights == half

    _outcomes(tmp_path, sorted({r["unit_id"] for r in rows}))
    # The gateway logs its decisions at the time it routes them: look after now.
    as_of = dt.datetime.now(dt.UTC) + dt.timedelta(days=1)
    report = run_analysis(after, "exp", as_of=as_of, now=as_of)
    assert report.srm.weights_source == "logged" and report.units == 104
    assert [(s.weights, sum(s.observed)) for s in report.srm.splits] == [
        ((9_000.0, 1_000.0), 52), ((5_000.0, 5_000.0), 52)]

    # The command line shows each split when there is more than one.
    path = tmp_path / "rampart.yaml"
    path.write_text(json.dumps(after.model_dump(mode="json")))
    main(["analyze", "--config", str(path), "--experiment", "exp",
          "--as-of", as_of.isoformat()])
    out = capsys.readouterr().out
    assert "9000/1000 (logged)" in out and "5000/5000 (logged)" in out


# --------------------------------------------------------------------------- old logs


def test_a_log_written_before_the_split_was_logged_uses_the_configured_weights(
        tmp_path: Path) -> None:
    ids = [f"old-{i}" for i in range(20_000)]
    arms = allocate(ARMS, [9_000, 1_000]).arms_of(buckets_vectorized("s1", ids))
    at = START.timestamp() + np.linspace(0, DAY, len(ids))
    table = _decisions(ids, arms, at, None)
    old = table.drop_columns(["arm_weights"])
    (tmp_path / "decisions").mkdir()
    pq.write_table(old, tmp_path / "decisions" / "part-0.parquet")
    _outcomes(tmp_path, ids)
    report = run_analysis(_config(tmp_path, 1_000), "exp", as_of=AS_OF, now=AS_OF)
    assert report.units == 20_000 and not report.srm.flag
    assert report.srm.weights_source == "configured"
    assert [(s.weights, s.source) for s in report.srm.splits] == [((9_000.0, 1_000.0),
                                                                    "configured")]
    # Logged and not logged side by side: each unit against its own split.
    newer = _decisions([f"new-{i}" for i in range(100)], np.zeros(100, dtype=np.int64),
                       at[:100] + DAY, "control:10000,treatment:0")
    pq.write_table(newer, tmp_path / "decisions" / "part-1.parquet")
    mixed = run_analysis(_config(tmp_path, 1_000), "exp", as_of=AS_OF, now=AS_OF).srm
    assert mixed.weights_source == "mixed" and not mixed.flag
    assert [s.source for s in mixed.splits] == ["configured", "logged"]


def test_a_malformed_logged_split_is_refused_naming_it(tmp_path: Path) -> None:
    ids = ["a", "b"]
    table = _decisions(ids, np.array([0, 1]), np.array([START.timestamp()] * 2), "50/50")
    (tmp_path / "decisions").mkdir()
    pq.write_table(table, tmp_path / "decisions" / "part-0.parquet")
    with pytest.raises(AnalysisInputError, match="'50/50'"):
        load_exposures(tmp_path / "decisions", _config(tmp_path).experiments[0], AS_OF)


def test_an_old_spill_journal_replays_with_the_split_null(tmp_path: Path) -> None:
    """A journal a writer of the previous version left behind (its frames have
    no ``arm_weights``) is written into the log by the next writer, the column null."""
    old_schema = pa.schema([f for f in DECISION_SCHEMA if f.name != "arm_weights"])
    old = _decisions(["j1", "j2"], np.array([0, 1]), np.array([START.timestamp()] * 2),
                     None).select(old_schema.names).cast(old_schema)
    journal = SpillJournal.open(tmp_path / "spill", "dead", log_identity(tmp_path / "log"),
                                fsync=False)
    journal.append(1, old)
    journal.close(remove=False)  # as a SIGKILL leaves it
    writer = DecisionLogWriter(tmp_path / "log", "next", batch_rows=100_000,
                               flush_interval_s=3600, spill_dir=tmp_path / "spill")
    writer.append_table(_decisions(["j3"], np.array([1]), np.array([START.timestamp()]),
                                   "control:5000,treatment:5000"))
    writer.close()
    assert writer.rows_replayed == 2
    rows = {r["unit_id"]: r["arm_weights"] for r in read_decisions(tmp_path / "log").to_pylist()}
    assert rows == {"j1": None, "j2": None, "j3": "control:5000,treatment:5000"}
    for path in (tmp_path / "log").rglob("*.parquet"):  # every file has today's columns
        assert pq.read_schema(path).field("arm_weights").type == pa.string()
