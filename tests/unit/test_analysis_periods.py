"""An arm's served version changes mid-experiment: analysis splits, never pools.

The generated decision log is the demo's story: the control arm routes to the
alias ``champion`` and the treatment arm to version 2; halfway through, a rollout
promotes version 2, ``champion`` moves, and from then on both arms serve clf/2.
Outcomes depend on the version that served a unit's exposure (v1 converts 10%,
v2 20%), so the first period has a true lift of 0.1 and the second none.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rollout.experiments.analysis import (
    MICROS,
    Exposures,
    OutcomeRows,
    analyze,
    outcome_periods,
)
from rollout.experiments.data import load_exposures, load_outcomes, plan_metrics
from rollout.experiments.periods import ServedSpan, boundaries, split_periods
from rollout.experiments.report import render_html
from serving.cli.analyze import run_all_periods, run_analysis, summary_text
from serving.cli.main import CliError, main
from serving.kernel.analysis_plan import AnalysisPlan
from serving.kernel.config import parse_config
from serving.routing.assignment import buckets_vectorized
from telemetry.decision_log import batch_table
from telemetry.outcomes_log import OUTCOME_SCHEMA
from tests.unit.test_analysis import experiment_document

START = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
CHANGE = START + dt.timedelta(days=2)
AS_OF = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)
RATE = {"1": 0.10, "2": 0.20}
PLAN: dict[str, Any] = {
    "start": "2026-11-01T00:00:00Z",
    "primary": {"name": "converted", "type": "binary"},
    "alpha": 0.05, "mde": 0.1, "baseline": 0.1,
}


def _config(tmp: Path) -> Any:
    return parse_config(experiment_document(tmp, PLAN))


def _us(moment: dt.datetime) -> int:
    return int(moment.timestamp()) * MICROS


def write_alias_move(tmp: Path, units: int = 12_000, seed: int = 5) -> dict[str, Any]:
    """Decisions over four days (30% of units decide twice), control served clf/1
    before :data:`CHANGE` and clf/2 from then on; a conversion follows each unit's
    first decision in a period with the served version's rate."""
    rng = np.random.default_rng(seed)
    ids = np.array([f"user-{i}" for i in range(units)], dtype=object)
    treated = buckets_vectorized("s1", list(ids)) < 5_000
    first = _us(START) + rng.integers(0, 4 * 86_400 * MICROS, units)
    again = rng.random(units) < 0.3
    second = first + rng.integers(1, 2 * 86_400 * MICROS, units)
    unit = np.concatenate([np.arange(units), np.flatnonzero(again)])
    at = np.concatenate([first, second[again]])
    arm_treated = treated[unit]
    version = np.where(arm_treated | (at >= _us(CHANGE)), "2", "1")
    n = unit.size
    table = batch_table(n, {
        "request_id": [f"r{i}" for i in range(n)], "unit_id": list(ids[unit]),
        "unit_type": "user_id", "experiment_id": "exp",
        "arm": list(np.where(arm_treated, "treatment", "control")), "model_name": "clf",
        "model_version": list(version), "role": "primary", "timestamp": at / MICROS,
        "prediction": 0.5, "latency_ms": 1.0, "status": "ok"})
    (tmp / "decisions").mkdir(parents=True, exist_ok=True)
    pq.write_table(table, tmp / "decisions" / "part-0.parquet")
    # a decision opens a unit's exposure in its period when it is the unit's first
    # there: every first decision, and a second one on the other side of the change
    in_period_first = np.concatenate([np.ones(units, dtype=bool),
                                      (first[again] < _us(CHANGE)) & (second[again]
                                                                      >= _us(CHANGE))])
    rates = np.array([RATE[v] for v in version])
    converts = in_period_first & (rng.random(n) < rates)
    m = int(converts.sum())
    outcomes = pa.table({
        "unit_id": pa.array(list(ids[unit[converts]]), type=pa.string()),
        "metric": pa.repeat(pa.scalar("converted"), m),
        "value": pa.array(np.ones(m)),
        "timestamp": pa.array(at[converts] + 60 * MICROS).cast(pa.timestamp("us", tz="UTC")),
        "experiment_id": pa.nulls(m, pa.string()),
        "received_at": pa.array(np.zeros(m, dtype=np.int64)).cast(pa.timestamp("us", tz="UTC")),
    }).cast(OUTCOME_SCHEMA)
    (tmp / "outcomes").mkdir(parents=True, exist_ok=True)
    pq.write_table(outcomes, tmp / "outcomes" / "part-0.parquet")
    control_after = at[~arm_treated & (at >= _us(CHANGE))]
    return {"change_us": int(control_after.min()), "unit": unit, "at": at}


@pytest.fixture(scope="module")
def moved(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("alias-move")
    return tmp, write_alias_move(tmp)


def test_the_experiment_splits_at_the_alias_move(moved: tuple[Path, dict[str, Any]]) -> None:
    tmp, data = moved
    report = run_analysis(_config(tmp), "exp", as_of=AS_OF, now=AS_OF)
    first, second = report.periods
    change = dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(
        microseconds=data["change_us"])
    assert first.end == second.start == change
    assert first.served == {"control": ("clf/1",), "treatment": ("clf/2",)}
    assert second.served == {"control": ("clf/2",), "treatment": ("clf/2",)}
    assert first.warnings == () and second.end is None
    # units with a decision in each period
    at, unit = data["at"], data["unit"]
    assert first.units == np.unique(unit[at < data["change_us"]]).size
    assert second.units == np.unique(unit[at >= data["change_us"]]).size


def test_the_latest_period_is_reported_with_a_loud_warning_and_holds(
        moved: tuple[Path, dict[str, Any]]) -> None:
    tmp, _ = moved
    report = run_analysis(_config(tmp), "exp", as_of=AS_OF, now=AS_OF)
    assert report.period is not None and report.period.index == 2
    assert report.units == report.period.units
    (warning,) = report.warnings
    since = report.period.start.isoformat().replace("+00:00", "Z")
    assert warning.kind == "same_versions" and warning.arms == ("control", "treatment")
    assert warning.message == (f"arms control and treatment both serve clf/2 since {since}: "
                               "this period compares nothing")
    assert report.decision.outcome == "hold" and report.decision.arm is None
    assert report.decision.reasons[0] == warning.message
    # v2 against v2: no effect to find
    (primary,) = report.primary()
    assert primary.ci_low < 0 < primary.ci_high
    body = report.to_json()
    assert body["warnings"][0]["kind"] == "same_versions"
    assert body["period"]["index"] == 2 and len(body["periods"]) == 2
    text = summary_text(report)
    assert f"** WARNING: {warning.message} **" in text
    assert "2 periods" in text and "<- analysed" in text
    page = render_html(report)
    assert "<div class='banner bad' id='period-warning'>" in page
    assert "<section id='periods'>" in page and "(analysed)" in page


def test_the_pooled_analysis_is_not_what_is_reported(
        moved: tuple[Path, dict[str, Any]]) -> None:
    """Pooling both periods would average a 0.1 lift with none; each period alone
    finds its own truth."""
    tmp, _ = moved
    config = _config(tmp)
    experiment = config.experiments[0]
    plan = experiment.analysis
    exposures, units = load_exposures(tmp / "decisions", experiment, AS_OF)
    outcomes = load_outcomes(tmp / "outcomes", units, plan_metrics(plan), "exp", AS_OF)
    pooled = analyze("exp", plan, exposures, outcomes, AS_OF).primary()[0]
    latest = run_analysis(config, "exp", as_of=AS_OF, now=AS_OF)
    earlier = run_analysis(config, "exp", as_of=AS_OF, now=AS_OF, period=1)
    assert latest.units != exposures.n_units and earlier.units != exposures.n_units
    reported, first = latest.primary()[0], earlier.primary()[0]
    assert first.ci_low < 0.1 < first.ci_high and reported.ci_low < 0 < reported.ci_high
    assert not (first.ci_low < pooled.abs_effect < first.ci_high)
    assert not (reported.ci_low < pooled.abs_effect < reported.ci_high)
    # the earlier period is analysed as it stood when it ended, and compares something
    assert earlier.as_of == earlier.period.end and earlier.warnings == ()
    assert earlier.decision.outcome == "ship"
    assert any("period 1 of 2" in r for r in earlier.decision.reasons)


def test_every_period_can_be_analysed_and_a_missing_one_is_refused(
        moved: tuple[Path, dict[str, Any]], capsys: pytest.CaptureFixture[str]) -> None:
    import yaml

    tmp, _ = moved
    analyses = run_all_periods(_config(tmp), "exp", as_of=AS_OF, now=AS_OF)
    assert [a.period.index for a in analyses] == [1, 2]
    assert [a.decision.outcome for a in analyses] == ["ship", "hold"]
    path = tmp / "rampart.yaml"
    path.write_text(yaml.safe_dump(_config(tmp).model_dump(mode="json")))
    base = ["analyze", "--config", str(path), "--experiment", "exp", "--as-of",
            "2026-12-01T00:00:00Z"]
    assert main([*base, "--period", "all", "--json"]) == 0
    body = json.loads(capsys.readouterr().out)
    assert [a["period"]["index"] for a in body["analyses"]] == [1, 2]
    assert len(body["periods"]) == 2 and body["experiment_id"] == "exp"
    assert main([*base, "--period", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["decision"]["outcome"] == "ship"
    assert main([*base, "--period", "3"]) == 2
    assert "has 2 periods" in capsys.readouterr().err
    with pytest.raises(CliError, match="has 2 periods"):
        run_analysis(_config(tmp), "exp", as_of=AS_OF, now=AS_OF, period=5)
    assert main([*base, "--period", "all", "--html", str(tmp / "r.html")]) == 2
    assert "--html renders one period" in capsys.readouterr().err


def test_before_the_change_there_is_one_period(moved: tuple[Path, dict[str, Any]]) -> None:
    tmp, _ = moved
    report = run_analysis(_config(tmp), "exp", as_of=CHANGE - dt.timedelta(hours=1), now=AS_OF)
    (period,) = report.periods
    assert period == report.period and period.index == 1 and period.warnings == ()
    assert not any("period" in r for r in report.decision.reasons)


# --------------------------------------------------------------------------- pure


def _span(arm: str, version: str, first: int, last: int) -> ServedSpan:
    return ServedSpan(arm, version, first * MICROS, last * MICROS)


def test_a_rollout_that_splits_an_arm_makes_three_periods() -> None:
    """Control reaches clf/1 through ``champion``; a rollout splits it between 1 and 2
    from t=100, promotes at t=200. The arm shares clf/2 with the treatment in the
    middle (diluted) and serves exactly what the treatment does after."""
    spans = [_span("control", "clf/1", 0, 200), _span("control", "clf/2", 100, 300),
             _span("treatment", "clf/2", 0, 300)]
    assert boundaries(spans) == [100 * MICROS, 200 * MICROS + 1]
    first, middle, last = split_periods(("control", "treatment"), spans)
    assert middle.served == {"control": ("clf/1", "clf/2"), "treatment": ("clf/2",)}
    assert [w.kind for w in middle.warnings] == ["shared_versions"]
    assert "their difference is diluted" in middle.warnings[0].message
    assert [w.kind for w in last.warnings] == ["same_versions"] and first.warnings == ()
    assert last.compares_nothing and not middle.compares_nothing


def test_arms_that_join_late_or_leave_early_do_not_split() -> None:
    spans = [_span("control", "clf/1", 0, 300), _span("treatment", "clf/2", 50, 250),
             _span("other", "clf/3", 120, 300)]
    (only,) = split_periods(("control", "treatment", "other"), spans)
    assert only.served == {"control": ("clf/1",), "treatment": ("clf/2",),
                           "other": ("clf/3",)}
    assert split_periods(("control",), []) == ()


def test_three_arms_on_one_version_are_named_together() -> None:
    spans = [_span(a, "clf/2", 0, 10) for a in ("a", "b", "c")]
    (period,) = split_periods(("a", "b", "c"), spans)
    (warning,) = period.warnings
    assert warning.message.startswith("arms a, b and c all serve clf/2 since ")


def test_a_later_period_takes_no_covariate_from_inside_the_experiment() -> None:
    """A unit that entered at t=10 and is exposed again in a later period at t=50:
    its pre-period events count only before t=10, because after that its arm
    already shaped them."""
    plan = AnalysisPlan.model_validate(PLAN)
    exposed_at = np.array([50, 50], dtype=np.int64)
    outcomes = OutcomeRows(("converted",), np.array([0, 0, 1]), np.zeros(3, dtype=np.int64),
                           np.ones(3), np.array([5, 20, 20]))
    entered = Exposures(("control", "treatment"), (1.0, 1.0), np.array([0, 1]), exposed_at,
                        entered_at=np.array([10, 50], dtype=np.int64))
    windows = outcome_periods(plan, entered, outcomes, 100)
    assert windows.in_pre.tolist() == [True, False, True]
    plain = Exposures(("control", "treatment"), (1.0, 1.0), np.array([0, 1]), exposed_at)
    assert outcome_periods(plan, plain, outcomes, 100).in_pre.tolist() == [True, True, True]


def test_an_alias_move_is_one_cut_even_across_a_quiet_time() -> None:
    """The last clf/1 decision at t=90 and the first clf/2 at t=100: one cut at 100,
    not a second period in which the control served nothing."""
    spans = [_span("control", "clf/1", 0, 90), _span("control", "clf/2", 100, 300),
             _span("treatment", "clf/2", 0, 300)]
    assert boundaries(spans) == [100 * MICROS]


def test_replicas_switching_apart_leave_a_short_transition_period() -> None:
    """One replica serves clf/2 from t=100, the last still serves clf/1 until t=102."""
    spans = [_span("control", "clf/1", 0, 102), _span("control", "clf/2", 100, 300),
             _span("treatment", "clf/2", 0, 300)]
    assert boundaries(spans) == [100 * MICROS, 102 * MICROS + 1]
    transition = split_periods(("control", "treatment"), spans)[1]
    assert transition.served["control"] == ("clf/1", "clf/2")
