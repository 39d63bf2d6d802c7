"""Experiment analysis end to end on Parquet logs with a planted effect."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from scipy import stats as scipy_stats

from rollout.experiments.analysis import MICROS, first_exposures
from rollout.experiments.data import load_exposures, register_plan
from rollout.experiments.results import GroupSequentialSummary, MsprtSummary
from serving.cli.analyze import run_analysis
from serving.cli.demo.simulated_outcomes import TrueEffects, simulate_outcomes
from serving.cli.main import CliError, main
from serving.kernel.analysis_plan import AnalysisPlan
from serving.kernel.config import parse_config
from serving.routing.assignment import buckets_vectorized
from telemetry.decision_log import batch_table
from telemetry.outcomes_log import OUTCOME_SCHEMA
from telemetry.verdict import Verdict

START = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
ANALYSIS: dict[str, Any] = {
    "start": "2026-11-01T00:00:00Z",
    "primary": {"name": "converted", "type": "binary"},
    "secondary": [{"name": "revenue", "type": "mean"},
                  {"name": "revenue", "type": "ratio", "denominator": "sessions"}],
    "guardrails": [{"name": "revenue", "type": "mean", "harm": "decrease", "tolerance": 0.05,
                    "relative": True}],
    "alpha": 0.05, "mde": 0.1, "baseline": 0.1,
    "segments": ["platform"],
}


def experiment_document(tmp: Path, analysis: dict[str, Any] | None = None,
                        weights: tuple[int, int] = (5000, 5000)) -> dict[str, Any]:
    """A config document with one experiment ``exp`` (control on clf/1, treatment
    on clf/2) and both logs under ``tmp``."""
    return {
        "data_dir": str(tmp),
        "models": [{"name": "clf", "versions": ["1", "2"]}],
        "default": {"model": "clf", "version": "1"},
        "experiments": [{
            "id": "exp", "salt": "s1", "arms": [
                {"name": "control", "model": "clf", "version": "1", "weight_bp": weights[0]},
                {"name": "treatment", "model": "clf", "version": "2", "weight_bp": weights[1]}],
            "analysis": analysis or ANALYSIS}],
        "decision_log": {"path": str(tmp / "decisions")},
        "outcomes_log": {"path": str(tmp / "outcomes")},
    }


def _config(tmp: Path, analysis: dict[str, Any] | None = None, weights: tuple[int, int] = (
        5000, 5000)) -> Any:
    return parse_config(experiment_document(tmp, analysis, weights))


def write_experiment(tmp: Path, units: int = 20_000, effects: TrueEffects | None = None,
                     treatment_share: float = 0.5, seed: int = 1,
                     decisions_per_unit: int = 2) -> dict[str, Any]:
    """A decision log (each unit decided ``decisions_per_unit`` times, always in its
    hashed arm) and outcome events with the planted effects."""
    rng = np.random.default_rng(seed)
    ids = np.array([f"user-{i}" for i in range(units)], dtype=object)
    treated = buckets_vectorized("s1", list(ids)) < int(treatment_share * 10_000)
    first_at = (START.timestamp() + 86_400 * 20 + rng.uniform(0, 86_400 * 3, units))
    platform = np.where(rng.random(units) < 0.3, "ios", "android")
    tables = []
    for k in range(decisions_per_unit):
        at = first_at + k * 3600.0
        tables.append(batch_table(units, {
            "request_id": [f"r{k}-{i}" for i in range(units)], "unit_id": list(ids),
            "unit_type": "user_id", "experiment_id": "exp",
            "arm": list(np.where(treated, "treatment", "control")), "model_name": "clf",
            "model_version": list(np.where(treated, "2", "1")), "role": "primary",
            "timestamp": at, "features": [{"f0": 1.0}] * units, "prediction": 0.5,
            "latency_ms": 1.0, "status": "ok",
        }).set_column(15, "context", pa.array(
            [[("platform", p)] for p in platform], type=pa.map_(pa.string(), pa.string()))))
    (tmp / "decisions").mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.concat_tables(tables), tmp / "decisions" / "part-0.parquet")
    outcomes = simulate_outcomes(pa.array(list(ids), type=pa.string()), treated,
                                 (first_at * MICROS).astype(np.int64), effects or TrueEffects(),
                                 seed=seed)
    sessions = pa.table({
        "unit_id": pa.array(list(ids), type=pa.string()),
        "metric": pa.repeat(pa.scalar("sessions"), units),
        "value": pa.array(rng.integers(1, 5, units).astype(float)),
        "timestamp": pa.array((first_at * MICROS).astype(np.int64) + 1).cast(
            pa.timestamp("us", tz="UTC")),
        "experiment_id": pa.nulls(units, pa.string()),
    })
    outcomes = pa.concat_tables([outcomes, sessions])
    received = pa.repeat(pa.scalar(0, pa.int64()), outcomes.num_rows).cast(
        pa.timestamp("us", tz="UTC"))
    (tmp / "outcomes").mkdir(parents=True, exist_ok=True)
    pq.write_table(outcomes.append_column("received_at", received).cast(OUTCOME_SCHEMA),
                   tmp / "outcomes" / "part-0.parquet")
    return {"ids": ids, "treated": treated, "first_at": first_at, "platform": platform}


AS_OF = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)


def test_first_exposure_is_the_earliest_decision_and_its_arm() -> None:
    codes = np.array([0, 1, 0, 1, 2])
    arms = np.array([1, 0, 0, 1, 1])
    at = np.array([50, 10, 20, 5, 7], dtype=np.int64)
    arm, exposed, crossovers, first_rows = first_exposures(codes, 3, arms, at)
    assert arm.tolist() == [0, 1, 1] and exposed.tolist() == [20, 5, 7]
    assert crossovers == 2 and first_rows.tolist() == [False, False, True, True, True]


def test_planted_effect_is_estimated_and_covered(tmp_path: Path) -> None:
    truth = TrueEffects()
    write_experiment(tmp_path, effects=truth)
    report = run_analysis(_config(tmp_path), "exp", as_of=AS_OF, now=AS_OF)
    assert report.units == 20_000 and report.crossovers == 0
    assert not report.srm.flag
    (primary,) = report.primary()
    assert primary.ci_low < truth.conversion_lift < primary.ci_high
    assert primary.p_value < 1e-3 and primary.bayes.prob_better > 0.999
    # the pre-period predicts the outcome, so CUPED must shrink the variance
    assert primary.cuped_variance_reduction > 0.02
    assert primary.std_error < primary.unadjusted.std_error
    revenue = next(m for m in report.metrics if m.metric == "revenue" and m.type == "mean")
    assert revenue.ci_low < truth.revenue_lift * 0.99 < revenue.ci_high
    assert revenue.cuped_variance_reduction > 0.4
    ratio = next(m for m in report.metrics if m.type == "ratio")
    assert ratio.cuped_variance_reduction is None and ratio.p_value is not None
    assert [g.verdict for g in report.guardrails] == [Verdict.PASS]
    assert report.decision.outcome == "ship" and report.decision.arm == "treatment"
    # one period, both arms' versions named, nothing to warn about
    assert len(report.periods) == 1 and report.period == report.periods[0]
    assert report.period.served == {"control": ("clf/1",), "treatment": ("clf/2",)}
    assert report.period.units == 20_000 and report.warnings == ()
    body = report.to_json()
    json.dumps(body, allow_nan=False)  # strictly JSON: no NaN leaks
    assert body["guardrails"][0]["verdict"] == "PASS"
    assert body["period"]["served"] == {"control": ["clf/1"], "treatment": ["clf/2"]}


def test_numbers_agree_with_a_direct_computation(tmp_path: Path) -> None:
    """The Parquet pipeline must give the same per-arm counts and means as a
    row-by-row computation of the same definitions."""
    data = write_experiment(tmp_path, units=3_000, seed=3)
    plan = _config(tmp_path, {**ANALYSIS, "cuped": False}).experiments[0].analysis
    report = run_analysis(_config(tmp_path, {**ANALYSIS, "cuped": False}), "exp", as_of=AS_OF,
                          now=AS_OF).to_json()
    outcomes = pq.read_table(tmp_path / "outcomes").to_pylist()
    first_us = {u: round(t * MICROS) for u, t in zip(data["ids"], data["first_at"],
                                                            strict=True)}
    window = plan.outcome_window_s * MICROS
    converted: dict[str, float] = {}
    for row in outcomes:
        if row["metric"] != "converted":
            continue
        offset = int(row["timestamp"].timestamp() * MICROS) - first_us[row["unit_id"]]
        if 0 <= offset <= window and row["value"] > 0:
            converted[row["unit_id"]] = 1.0
    y = np.array([converted.get(u, 0.0) for u in data["ids"]])
    t, c = y[data["treated"]], y[~data["treated"]]
    primary = next(m for m in report["metrics"] if m["role"] == "primary")
    assert (primary["n_control"], primary["n_treatment"]) == (c.size, t.size)
    assert primary["mean_control"] == pytest.approx(c.mean(), rel=1e-12)
    assert primary["mean_treatment"] == pytest.approx(t.mean(), rel=1e-12)
    from statsmodels.stats.proportion import proportions_ztest

    _, p = proportions_ztest([t.sum(), c.sum()], [t.size, c.size])
    assert primary["p_value"] == pytest.approx(p, rel=1e-9)
    srm = scipy_stats.chisquare([c.size, t.size], [y.size / 2, y.size / 2])
    assert report["srm"]["p_value"] == pytest.approx(srm.pvalue, rel=1e-9)


def test_sample_ratio_mismatch_holds_the_decision(tmp_path: Path) -> None:
    write_experiment(tmp_path, units=20_000, treatment_share=0.45)
    report = run_analysis(_config(tmp_path), "exp", as_of=AS_OF, now=AS_OF)
    assert report.srm.flag and report.decision.outcome == "hold"
    assert report.decision.reasons[0].startswith("sample ratio mismatch")


def test_harmed_guardrail_rolls_back(tmp_path: Path) -> None:
    write_experiment(tmp_path, effects=TrueEffects(revenue_lift=-2.0))
    report = run_analysis(_config(tmp_path), "exp", as_of=AS_OF, now=AS_OF)
    assert report.guardrails[0].verdict == Verdict.FAIL
    assert report.decision.outcome == "rollback"
    assert any("guardrail revenue harmed" in r for r in report.decision.reasons)


def test_no_effect_holds(tmp_path: Path) -> None:
    write_experiment(tmp_path, units=4_000,
                     effects=TrueEffects(conversion_lift=0.0, revenue_lift=0.0))
    report = run_analysis(_config(tmp_path), "exp", as_of=AS_OF, now=AS_OF)
    assert report.decision.outcome in ("hold", "rollback")
    assert report.decision.arm is None


def test_segments_are_corrected_and_simpson_is_flagged(tmp_path: Path) -> None:
    write_experiment(tmp_path)
    report = run_analysis(_config(tmp_path), "exp", as_of=AS_OF, now=AS_OF,
                          exploratory_segments=("country",)).to_json()
    by_attribute = {s["attribute"]: s for s in report["segments"]}
    platform = by_attribute["platform"]
    assert platform["kind"] == "confirmatory"
    assert {r["segment"] for r in platform["segments"]} == {"ios", "android"}
    assert all(r["adjusted_p_value"] >= r["p_value"] for r in platform["segments"])
    assert by_attribute["country"]["kind"] == "exploratory"
    assert [r["segment"] for r in by_attribute["country"]["segments"]] == ["(missing)"]
    assert platform["simpsons_paradox"] is False


def test_simpsons_paradox_warning() -> None:
    """Both segments favour treatment, but treatment is mostly in the low-rate
    segment, so the pooled effect is negative."""
    from rollout.experiments.analysis import Exposures, OutcomeRows, analyze

    plan = AnalysisPlan.model_validate({**ANALYSIS, "secondary": [], "guardrails": [],
                                        "cuped": False, "segments": ["tier"]})
    # segment 0: rates 0.9 (c) vs 0.95 (t); segment 1: 0.1 (c) vs 0.15 (t)
    layout = [(0, 0, 900, 1000), (1, 0, 95, 100), (0, 1, 10, 100), (1, 1, 150, 1000)]
    arm, segment, converted = [], [], []
    for a, s, k, n in layout:
        arm += [a] * n
        segment += [s] * n
        converted += [1] * k + [0] * (n - k)
    n_units = len(arm)
    exposures = Exposures(("control", "treatment"), (5000.0, 5000.0),
                          np.array(arm, dtype=np.int64), np.zeros(n_units, dtype=np.int64),
                          segments={"tier": (np.array(segment, dtype=np.int64),
                                             ("gold", "basic"))})
    rows = np.flatnonzero(converted)
    outcomes = OutcomeRows(("converted",), rows.astype(np.int64),
                           np.zeros(rows.size, dtype=np.int64), np.ones(rows.size),
                           np.ones(rows.size, dtype=np.int64))
    report = analyze("exp", plan, exposures, outcomes, AS_OF)
    pooled = report.metrics[0].abs_effect
    tier = report.segments[0]
    assert pooled < 0 and all(r.abs_effect > 0 for r in tier.segments)
    assert tier.simpsons_paradox is True and "Simpson" in tier.warning


def test_as_of_sees_only_what_was_known(tmp_path: Path) -> None:
    data = write_experiment(tmp_path, units=2_000)
    early = dt.datetime.fromtimestamp(float(np.median(data["first_at"])), tz=dt.UTC)
    report = run_analysis(_config(tmp_path), "exp", as_of=early, now=AS_OF)
    assert 900 < report.units < 1_100


def test_group_sequential_and_msprt_report_their_looks(tmp_path: Path) -> None:
    write_experiment(tmp_path)
    gs = {**ANALYSIS, "sequential": {"method": "group_sequential", "looks": 4,
                                     "max_units_per_arm": 10_000}}
    before_start = START - dt.timedelta(days=1)  # the plan may still change
    report = run_analysis(_config(tmp_path, gs), "exp", as_of=AS_OF, now=before_start)
    sequential = report.metrics[0].sequential
    assert isinstance(sequential, GroupSequentialSummary)
    assert [look.fraction for look in sequential.looks] == [0.25, 0.5, 0.75]
    assert sequential.boundary > 1.96 and sequential.crossed is True
    assert report.decision.outcome == "ship"
    mixture = {**ANALYSIS, "sequential": {"method": "msprt", "looks": 10}}
    report = run_analysis(_config(tmp_path, mixture), "exp", as_of=AS_OF, now=before_start)
    sequential = report.metrics[0].sequential
    assert isinstance(sequential, MsprtSummary)
    assert sequential.looks == 11 and sequential.rejected is True
    assert sequential.always_valid_p_value >= report.metrics[0].p_value
    assert any("significantly better by the mSPRT (always-valid p" in reason
               for reason in report.decision.reasons)


def test_plan_cannot_change_after_the_start(tmp_path: Path) -> None:
    plan = AnalysisPlan.model_validate(ANALYSIS)
    before = START - dt.timedelta(days=1)
    first = register_plan(tmp_path, "exp", plan, before)
    assert first["registered_after_start"] is False
    changed = plan.model_copy(update={"alpha": 0.1})
    register_plan(tmp_path, "exp", changed, before)  # still allowed before the start
    register_plan(tmp_path, "exp", plan, before)
    with pytest.raises(Exception, match=r"cannot change after the start.*alpha: 0.05 -> 0.1"):
        register_plan(tmp_path, "exp", changed, START + dt.timedelta(days=1))
    assert register_plan(tmp_path, "exp", plan, START + dt.timedelta(days=2))["sha256"] == (
        first["sha256"])


def test_analyze_cli_refuses_a_changed_plan_and_bad_input(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import yaml

    write_experiment(tmp_path, units=1_000)
    config = _config(tmp_path).model_dump(mode="json")
    path = tmp_path / "rampart.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["analyze", "--config", str(path), "--experiment", "exp", "--json",
                 "--as-of", "2026-12-01T00:00:00Z"]) == 0
    body = json.loads(capsys.readouterr().out)
    assert set(body) >= {"srm", "metrics", "segments", "decision"}
    entry = body["metrics"][0]
    for key in ("metric", "arm", "control_arm", "n_control", "n_treatment", "mean_control",
                "mean_treatment", "abs_effect", "rel_effect", "ci_low", "ci_high", "p_value",
                "adjusted_p_value", "cuped_variance_reduction", "sequential", "bayes"):
        assert key in entry
    original = yaml.safe_dump(config)
    config["experiments"][0]["analysis"]["primary"]["name"] = "revenue"
    config["experiments"][0]["analysis"]["secondary"] = []
    path.write_text(yaml.safe_dump(config))
    assert main(["analyze", "--config", str(path), "--experiment", "exp"]) == 2
    err = capsys.readouterr().err
    assert "cannot change after the start" in err and "primary.name" in err
    path.write_text(original)
    for argv, message in (
        (["--experiment", "nope"], "no experiment 'nope'"),
        (["--experiment", "exp", "--as-of", "yesterday"], "--as-of"),
        (["--experiment", "exp", "--decisions", str(tmp_path / "none")], "no decision log"),
    ):
        assert main(["analyze", "--config", str(path), *argv]) == 2
        assert message in capsys.readouterr().err


def test_unknown_arm_in_the_log_is_a_clear_error(tmp_path: Path) -> None:
    write_experiment(tmp_path, units=100)
    config = _config(tmp_path)
    renamed = config.experiments[0].model_copy(update={"arms": (
        config.experiments[0].arms[0],
        config.experiments[0].arms[1].model_copy(update={"name": "other"}))})
    with pytest.raises(Exception, match="arms the config does not name"):
        load_exposures(tmp_path / "decisions", renamed, AS_OF)
    with pytest.raises(CliError, match="no experiment"):
        run_analysis(config, "missing", as_of=AS_OF, now=AS_OF)


def test_plan_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "--metric-type", "proportion", "--baseline", "0.10", "--mde", "0.05",
                 "--relative", "--daily-units", "10000", "--allocation", "0.5", "--json"]) == 0
    body = json.loads(capsys.readouterr().out)
    assert body["n_per_arm"] > 50_000 and body["days"] == -(-2 * body["n_per_arm"] // 5000)
    assert main(["plan", "--metric-type", "mean", "--mde", "0.5"]) == 2
    assert "std_dev" in capsys.readouterr().err


def test_the_gateway_records_plans_and_reports_a_late_change(tmp_path: Path) -> None:
    from rollout.experiments.data import register_config_plans

    config = _config(tmp_path)
    assert register_config_plans(config, START - dt.timedelta(hours=1)) == []
    record = json.loads((tmp_path / "preregistrations" / "exp.json").read_text())
    assert record["registered_after_start"] is False and record["plan"]["alpha"] == 0.05
    changed = _config(tmp_path, {**ANALYSIS, "alpha": 0.01})
    problems = register_config_plans(changed, START + dt.timedelta(hours=1))
    assert len(problems) == 1 and "alpha: 0.05 -> 0.01" in problems[0]
    with pytest.raises(CliError, match="cannot change after the start"):
        run_analysis(changed, "exp", as_of=AS_OF, now=AS_OF)


def test_binary_means_any_positive_event_and_mean_sums_them() -> None:
    """A refund (a negative event after a conversion) does not undo the conversion
    of a binary metric; a mean metric adds both."""
    from rollout.experiments.analysis import Exposures, OutcomeRows, unit_values
    from serving.kernel.analysis_plan import MetricSpec

    plan = AnalysisPlan.model_validate(ANALYSIS)
    exposures = Exposures(("control", "treatment"), (5000.0, 5000.0),
                          np.array([0, 1, 1], dtype=np.int64), np.zeros(3, dtype=np.int64))
    outcomes = OutcomeRows(("converted",), np.array([0, 0, 1, 2]), np.zeros(4, dtype=np.int64),
                           np.array([1.0, -1.0, -1.0, 0.0]), np.array([1, 2, 3, 4]))
    binary = unit_values(MetricSpec(name="converted", type="binary"), plan, exposures,
                         outcomes, 10)
    mean = unit_values(MetricSpec(name="converted", type="mean"), plan, exposures, outcomes, 10)
    assert binary.y.tolist() == [1.0, 0.0, 0.0] and mean.y.tolist() == [0.0, -1.0, 0.0]


def test_joint_loading_matches_loading_each_log_alone(tmp_path: Path) -> None:
    """One hash pass over both logs' unit ids gives the same exposures and outcome
    rows as encoding the decisions and looking the outcomes up; events of units
    never exposed are left out either way."""
    from rollout.experiments.data import load_experiment, load_outcomes

    write_experiment(tmp_path, units=500)
    stranger = pa.table({
        "unit_id": ["nobody", "user-3"], "metric": ["converted", "converted"],
        "value": [1.0, 1.0],
        "timestamp": pa.array([1_795_000_000_000_000] * 2).cast(pa.timestamp("us", tz="UTC")),
        "experiment_id": pa.nulls(2, pa.string()),
        "received_at": pa.array([0, 0]).cast(pa.timestamp("us", tz="UTC")),
    }).cast(OUTCOME_SCHEMA)
    pq.write_table(stranger, tmp_path / "outcomes" / "part-1.parquet")
    experiment = _config(tmp_path).experiments[0]
    metrics = ("converted", "revenue")
    loaded = load_experiment(tmp_path / "decisions", tmp_path / "outcomes", experiment,
                             metrics, AS_OF, ("platform",))
    joint, rows, units = loaded.exposures, loaded.outcomes, loaded.units
    alone, dictionary = load_exposures(tmp_path / "decisions", experiment, AS_OF, ("platform",))
    separate = load_outcomes(tmp_path / "outcomes", dictionary, metrics, experiment.id, AS_OF)
    assert units.to_pylist() == dictionary.to_pylist()
    assert np.array_equal(joint.arm, alone.arm)
    assert np.array_equal(joint.exposed_at, alone.exposed_at)
    assert np.array_equal(joint.segments["platform"][0], alone.segments["platform"][0])
    for name in ("unit", "metric", "value", "at"):
        assert np.array_equal(getattr(rows, name), getattr(separate, name)), name
    assert "nobody" not in units.to_pylist() and rows.unit.size == separate.unit.size


def test_aggregated_loading_gives_the_same_units_and_outcomes(tmp_path: Path) -> None:
    """Without segments, exposures come from a hash aggregation and outcomes from a
    hash join; unit by unit they equal the row-level path's."""
    from rollout.experiments.data import load_experiment

    write_experiment(tmp_path, units=700)
    experiment = _config(tmp_path).experiments[0]
    metrics = ("converted", "revenue")
    paths = (tmp_path / "decisions", tmp_path / "outcomes", experiment, metrics, AS_OF)
    fast_data = load_experiment(*paths)
    slow_data = load_experiment(*paths, segments=("platform",))
    fast, fast_rows, fast_units = fast_data.exposures, fast_data.outcomes, fast_data.units
    slow, slow_rows, slow_units = slow_data.exposures, slow_data.outcomes, slow_data.units
    assert fast_data.periods == slow_data.periods and len(fast_data.periods) == 1
    assert sorted(fast_units.to_pylist()) == sorted(slow_units.to_pylist())
    position = {u: i for i, u in enumerate(slow_units.to_pylist())}
    order = np.array([position[u] for u in fast_units.to_pylist()])
    assert np.array_equal(fast.arm, slow.arm[order])
    assert np.array_equal(fast.exposed_at, slow.exposed_at[order])
    assert fast.crossovers == slow.crossovers

    def events(rows: Any, units: pa.Array) -> list[tuple[Any, ...]]:
        ids = units.to_pylist()
        return sorted(zip([ids[u] for u in rows.unit], rows.metric.tolist(), rows.value.tolist(),
                          rows.at.tolist(), strict=True))

    assert events(fast_rows, fast_units) == events(slow_rows, slow_units)
    fast_report = run_analysis(_config(tmp_path), "exp", as_of=AS_OF, now=AS_OF)
    slow_report = run_analysis(_config(tmp_path), "exp", as_of=AS_OF, now=AS_OF,
                               exploratory_segments=("platform",))
    for a, b in zip(fast_report.metrics, slow_report.metrics, strict=True):
        assert a.p_value == pytest.approx(b.p_value, rel=1e-12)
        assert a.abs_effect == pytest.approx(b.abs_effect, rel=1e-12)
