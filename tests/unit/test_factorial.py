"""Factorial experiments: factors crossed into cells at config load, each
factor assigned by its own salt (independently of the others), and the main
effects and two-way interactions estimated with Holm-corrected p-values and
intervals that cover as they claim."""

from __future__ import annotations

import copy
import datetime as dt
import itertools
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from scipy import stats

from rollout.experiments.analysis import MICROS
from rollout.experiments.factorial import factorial_summary
from rollout.experiments.report import render_html
from rollout.experiments.stats.factorial import (
    CellStatistics,
    Factor,
    cell_statistics,
    effect_contrasts,
    factorial_effects,
)
from serving.cli.analyze import run_analysis, summary_text
from serving.kernel.analysis_plan import MetricSpec
from serving.kernel.config import parse_config
from serving.kernel.errors import ConfigError
from serving.kernel.factorial import cell_name, parse_cell
from serving.routing.assignment import buckets_vectorized
from serving.routing.router import (
    DEFAULT_ARM,
    RoutingTable,
    build_routing_table,
    public_routing,
    route,
    route_many,
)
from telemetry.decision_log import batch_table
from telemetry.outcomes_log import OUTCOME_SCHEMA
from tests.unit.fakes import InMemoryRegistry


def level(name: str, weight_bp: int, version: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"name": name, "weight_bp": weight_bp}
    if version is not None:
        out.update(model="clf", version=version)
    return out


def factorial_experiment(**changes: Any) -> dict[str, Any]:
    """``ranker`` (serves the versions, 50/50) crossed with ``color`` (a label
    the client applies, 20/80)."""
    experiment = {
        "id": "checkout-factorial",
        "salt": "checkout-f",
        "factors": [
            {"name": "ranker", "salt": "checkout-f-ranker",
             "levels": [level("old", 5000, "champion"), level("new", 5000, "challenger")]},
            {"name": "color", "salt": "checkout-f-color",
             "levels": [level("blue", 2000), level("green", 8000)]},
        ],
    }
    experiment.update(changes)
    return experiment


def document(*experiments: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"models": [{"name": "clf", "versions": ["champion", "challenger"]}],
            "default": {"model": "clf", "version": "champion"},
            "experiments": list(experiments) or [factorial_experiment()], **extra}


def table(data: dict[str, Any]) -> RoutingTable:
    return build_routing_table(parse_config(data), InMemoryRegistry().resolve)


# ----------------------------------------------------------------- config


def test_the_arms_are_the_cells_named_by_their_levels_and_weighted_by_products() -> None:
    exp = parse_config(document()).experiments[0]
    assert [(a.name, a.weight_bp, a.version) for a in exp.arms] == [
        ("ranker.old_color.blue", 1000, "champion"),
        ("ranker.old_color.green", 4000, "champion"),
        ("ranker.new_color.blue", 1000, "challenger"),
        ("ranker.new_color.green", 4000, "challenger"),
    ]
    # the control is the cell of every factor's first level; every name reads back
    assert parse_cell(exp.arms[0].name) == {"ranker": "old", "color": "blue"}
    assert [parse_cell(a.name) for a in exp.arms] == [
        {"ranker": r, "color": c} for r in ("old", "new") for c in ("blue", "green")]


def test_without_a_model_factor_every_cell_serves_the_default_route() -> None:
    experiment = factorial_experiment()
    for lv in experiment["factors"][0]["levels"]:
        del lv["model"], lv["version"]
    config = parse_config(document(experiment))
    exp = config.experiments[0]
    assert {(a.model, a.version) for a in exp.arms} == {("clf", "champion")}
    assert exp.cell_model == config.default
    routing = table(document(experiment))
    assert {route(routing, f"u{i}").model.version for i in range(200)} == {"1"}


def test_three_factors_cross_in_config_order() -> None:
    experiment = factorial_experiment()
    experiment["factors"].append({"name": "copy", "salt": "checkout-f-copy", "levels": [
        level("short", 5000), level("long", 2500), level("none", 2500)]})
    arms = parse_config(document(experiment)).experiments[0].arms
    assert len(arms) == 12
    assert arms[0].name == "ranker.old_color.blue_copy.short"
    assert arms[0].weight_bp == 500 and arms[1].weight_bp == 250
    assert sum(a.weight_bp for a in arms) == 10_000


def _with(path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    experiment = factorial_experiment()
    target: Any = experiment
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return experiment


def _two_model_factors() -> dict[str, Any]:
    experiment = factorial_experiment()
    experiment["factors"][1]["levels"] = [level("blue", 2000, "champion"),
                                          level("green", 8000, "challenger")]
    return experiment


def _too_many_cells() -> dict[str, Any]:
    experiment = factorial_experiment()
    for name in ("a", "b"):
        experiment["factors"].append({"name": name, "salt": f"s-{name}", "levels": [
            level("x", 5000), level("y", 2500), level("z", 2500)]})
    return experiment


def _long_names() -> dict[str, Any]:
    experiment = factorial_experiment()
    experiment["factors"][0]["name"] = "r" * 31
    experiment["factors"][1]["name"] = "c" * 31
    return experiment


def _with_cell_model() -> dict[str, Any]:
    return factorial_experiment(cell_model={"model": "clf", "version": "champion"})


REFUSALS = [
    (_with(("factors", 1, "levels"), [level("blue", 3333), level("green", 6667)]),
     "experiments.0.arms: experiment 'checkout-factorial': cell "
     "'ranker.old_color.blue' would weigh 5000 x 3333 / 10000 = 1666.5 basis points"),
    (_with(("factors", 1, "salt"), "checkout-f"),
     "experiments.0.factors: experiment 'checkout-factorial': factor salts must differ"),
    (_with(("factors", 1, "salt"), "checkout-f-ranker"),
     "experiments.0.factors: experiment 'checkout-factorial': factor salts must differ"),
    (_with(("factors", 1, "name"), "ranker"),
     "experiments.0.factors: experiment 'checkout-factorial': factor names must be distinct"),
    (_with(("factors", 1, "name"), "col_or"),
     "experiments.0.factors.1.name: factor and level names are 1-31 letters, digits and '-'"),
    (_with(("factors", 0, "levels", 1, "name"), "v.2"),
     "experiments.0.factors.0.levels.1.name: factor and level names are"),
    (_with(("factors", 1, "levels", 1, "weight_bp"), 7000),
     "experiments.0.factors.1.levels: factor 'color': level weights sum to 9000"),
    (_with(("factors",), factorial_experiment()["factors"][:1]),
     "experiments.0.factors: experiment 'checkout-factorial': a factorial experiment has "
     "2-4 factors, got 1"),
    (_two_model_factors(),
     "experiments.0.factors: experiment 'checkout-factorial': at most one factor may name "
     "model versions"),
    (_with(("factors", 1, "levels", 0, "model"), "clf"),
     "experiments.0.factors.1.levels.0: level 'blue': 'model' and 'version' go together"),
    (_with(("factors", 0, "levels", 1), level("new", 5000)),
     "experiments.0.factors.0.levels: factor 'ranker': either every level names a model "
     "version or none does"),
    (_with(("arms",), [{"name": "a", "model": "clf", "version": "champion",
                        "weight_bp": 10_000}]),
     "experiments.0.arms: experiment 'checkout-factorial' has factors: its arms are the "
     "cells of the factors' cross product, not listed"),
    (_long_names(),
     "experiments.0.arms: experiment 'checkout-factorial': cell name "
     f"'{'r' * 31}.old_{'c' * 31}.blue' is 72 characters; arm names have at most 64"),
    (_too_many_cells(),
     "experiments.0.arms: experiment 'checkout-factorial': the factors cross into 36 cells; "
     "an experiment has at most 16 arms"),
    (_with(("factors", 0, "levels", 1, "version"), "7"),
     "experiment 'checkout-factorial' arm 'ranker.new_color.blue': unknown model version "
     "clf/7"),
    (_with_cell_model(),
     "experiments.0.cell_model: a factor names the model versions the cells serve"),
]


@pytest.mark.parametrize(("experiment", "message"), REFUSALS)
def test_a_bad_factorial_experiment_is_refused_with_its_path(
        experiment: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as refused:
        parse_config(document(experiment))
    assert message in str(refused.value)


def test_an_ordinary_experiment_still_needs_its_arms_and_has_no_cell_model() -> None:
    with pytest.raises(ConfigError, match=r"experiments\.0\.arms: Field required"):
        parse_config(document({"id": "plain", "salt": "plain"}))
    plain = {"id": "plain", "salt": "plain", "cell_model": {"model": "clf", "version": "1"},
             "arms": [{"name": "a", "model": "clf", "version": "champion", "weight_bp": 5000},
                      {"name": "b", "model": "clf", "version": "challenger",
                       "weight_bp": 5000}]}
    with pytest.raises(ConfigError, match=r"experiments\.0\.cell_model: 'cell_model' is what"):
        parse_config(document(plain))


def test_cell_names_read_back_and_other_arm_names_are_not_cells() -> None:
    assert parse_cell(cell_name([("a", "x-1"), ("b", "2"), ("c-d", "y")])) == {
        "a": "x-1", "b": "2", "c-d": "y"}
    for arm in ("control", "treatment_b", "a.b", "holdout", DEFAULT_ARM, "a.b_a.c", "a.b_c"):
        assert parse_cell(arm) is None


# ----------------------------------------------------------------- routing

UNITS = [f"user-{i}" for i in range(200_000)]


def _levels(arms: np.ndarray[Any, Any], factor: str, names: list[str]) -> np.ndarray[Any, Any]:
    lookup = {arm: names.index(levels[factor]) for arm in set(arms)
              if (levels := parse_cell(arm)) is not None}
    return np.asarray([lookup[a] for a in arms])


def test_factors_are_assigned_independently_and_each_splits_by_its_weights() -> None:
    columns = route_many(table(document()), UNITS)
    ranker = _levels(columns["arm"], "ranker", ["old", "new"])
    color = _levels(columns["arm"], "color", ["blue", "green"])
    # each factor's level is its own salt's bucket, laid out as arms are
    assert (color == (buckets_vectorized("checkout-f-color", UNITS) < 8000)).all()
    assert (ranker == (buckets_vectorized("checkout-f-ranker", UNITS) < 5000)).all()
    counts = np.zeros((2, 2))
    np.add.at(counts, (ranker, color), 1)
    assert stats.chi2_contingency(counts, correction=False).pvalue > 0.001
    n = len(UNITS)
    assert stats.chisquare(counts.sum(axis=1), [n / 2, n / 2]).pvalue > 0.001
    assert stats.chisquare(counts.sum(axis=0), [0.2 * n, 0.8 * n]).pvalue > 0.001
    # the served version is the ranker's level's
    assert (columns["model_version"] == np.where(ranker == 1, "2", "1")).all()


def test_the_scalar_path_agrees_and_is_deterministic() -> None:
    routing = table(document())
    columns = route_many(routing, UNITS[:5000])
    again = table(document())
    for i in range(0, 5000, 7):
        decision = route(routing, UNITS[i])
        assert decision == route(again, UNITS[i])
        assert decision.arm == columns["arm"][i]
        assert decision.model.version == columns["model_version"][i]
        assert decision.experiment_id == "checkout-factorial"
        assert decision.arm_weights == ("ranker.old_color.blue:1000,ranker.old_color.green:4000,"
                                        "ranker.new_color.blue:1000,ranker.new_color.green:4000")


def test_coverage_and_layers_apply_as_to_any_experiment() -> None:
    experiment = factorial_experiment(coverage_bp=3000, layer="checkout",
                                      layer_buckets=[5000, 10_000])
    routing = table(document(experiment, layers=[{"id": "checkout", "salt": "layer-c"}]))
    columns = route_many(routing, UNITS[:50_000])
    taken = columns["experiment_id"] == "checkout-factorial"
    in_layer = buckets_vectorized("layer-c", UNITS[:50_000]) >= 5000
    assert not (taken & ~in_layer).any()
    assert abs(taken.mean() - 0.5 * 0.3) < 0.01
    assert set(columns["layer"][taken]) == {"layer:checkout"}
    assert all(parse_cell(arm) is not None for arm in columns["arm"][taken])
    assert set(columns["arm"][~taken]) == {DEFAULT_ARM}


def test_routing_shows_the_factors_and_hides_their_salts_and_buckets() -> None:
    described = table(document()).describe()["experiments"][0]
    assert [f["name"] for f in described["factors"]] == ["ranker", "color"]
    color = described["factors"][1]
    assert color["salt"] == "checkout-f-color" and not color["serves_models"]
    assert [(lv["name"], lv["weight_bp"]) for lv in color["levels"]] == [
        ("blue", 2000), ("green", 8000)]
    assert all(arm["buckets"] is None for arm in described["arms"])
    public = public_routing(table(document()).describe())["experiments"][0]["factors"]
    assert "salt" not in public[1] and "buckets" not in public[1]["levels"][0]


# ----------------------------------------------------------------- statistics

FACTORS = (Factor("a", ("a0", "a1")), Factor("b", ("b0", "b1", "b2")), Factor("c", ("c0", "c1")))


def test_effects_are_contrasts_of_the_cell_means_averaged_over_the_other_factors() -> None:
    means = np.arange(12, dtype=np.float64).reshape(2, 3, 2) ** 1.5
    cells = CellStatistics(FACTORS, np.full((2, 3, 2), 10), means, np.ones((2, 3, 2)))
    result = factorial_effects(cells)
    by_label = {e.label: e for e in result.effects}
    assert len(result.main_effects()) == 1 + 2 + 1
    assert len(result.interactions()) == 2 + 1 + 2
    main_a = (means[1] - means[0]).mean()
    assert by_label["a: a1"].estimate == pytest.approx(main_a)
    main_b2 = (means[:, 2] - means[:, 0]).mean()
    assert by_label["b: b2"].estimate == pytest.approx(main_b2)
    inter = (means[1, 1] - means[0, 1] - means[1, 0] + means[0, 0]).mean()
    assert by_label["a × b: a1 × b1"].estimate == pytest.approx(inter)
    # HC2: Var = Σ c² s²/n; a main effect of a 2-level factor over 6 cells a side
    assert by_label["a: a1"].std_error == pytest.approx(np.sqrt(12 * (1 / 6) ** 2 / 10))
    p = sorted(e.p_value for e in result.effects)
    assert max(e.p_value_adjusted for e in result.effects) <= 1.0
    assert min(e.p_value_adjusted for e in result.effects) == pytest.approx(
        min(1.0, p[0] * len(p)))


def test_two_factors_give_their_main_effects_and_their_interaction() -> None:
    means = np.array([[1.0, 2.0], [4.0, 9.0]])
    two = (Factor("a", ("a0", "a1")), Factor("b", ("b0", "b1")))
    result = factorial_effects(CellStatistics(two, np.full((2, 2), 5), means, np.ones((2, 2))))
    assert [(e.label, e.estimate) for e in result.effects] == [
        ("a: a1", 5.0), ("b: b1", 3.0), ("a × b: a1 × b1", 4.0)]
    # Var = Σ c²/n over the cells: c = ±1/2 for a main effect, ±1 for the interaction
    assert [e.std_error for e in result.effects] == pytest.approx(
        [np.sqrt(4 * 0.25 / 5), np.sqrt(4 * 0.25 / 5), np.sqrt(4 / 5)])


def test_a_cell_without_two_units_gives_an_error_not_numbers() -> None:
    values = np.ones(8)
    levels = [np.array([0, 0, 1, 1, 0, 0, 1, 1]), np.array([0, 1, 0, 1, 0, 1, 0, 0])]
    result = factorial_effects(cell_statistics(
        values, levels, (Factor("a", ("x", "y")), Factor("b", ("x", "y")))))
    assert result.effects == () and result.error is not None
    assert "1 of 4 cells have fewer than 2 units" in result.error


def test_cell_statistics_refuses_misaligned_input() -> None:
    with pytest.raises(ValueError, match="level index out of range"):
        cell_statistics([1.0, 2.0], [[0, 2], [0, 1]],
                        (Factor("a", ("x", "y")), Factor("b", ("x", "y"))))


# Planted: a main effect of a, of b's level 1 (not of b's level 2 nor of c),
# an a × b interaction at b's level 1, and noise whose spread a changes.
PLANTED_A, PLANTED_B1, PLANTED_AB1 = 0.15, 0.10, 0.25
RUNS, UNITS_PER_RUN = 1000, 4000
WEIGHTS = ((0.5, 0.5), (0.5, 0.25, 0.25), (0.2, 0.8))


def _simulated_cells(rng: np.random.Generator, planted: bool
                     ) -> tuple[list[CellStatistics], np.ndarray[Any, Any]]:
    shape = tuple(len(w) for w in WEIGHTS)
    level_draws = [rng.choice(len(w), size=(RUNS, UNITS_PER_RUN), p=w) for w in WEIGHTS]
    a = level_draws[0]
    true_means = np.zeros(shape)
    if planted:
        true_means[1] += PLANTED_A
        true_means[:, 1] += PLANTED_B1
        true_means[1, 1] += PLANTED_AB1
    cell = np.ravel_multi_index(tuple(level_draws), shape)
    noise = rng.normal(0.0, 1.0, (RUNS, UNITS_PER_RUN)) * (1.0 + 0.5 * a)
    values = true_means.ravel()[cell] + noise
    # every run's cell statistics in one pass: runs are offset blocks of cells
    cells = int(np.prod(shape))
    flat = (cell + cells * np.arange(RUNS)[:, None]).ravel()
    y = values.ravel()
    n = np.bincount(flat, minlength=RUNS * cells).reshape(RUNS, cells)
    means = np.bincount(flat, weights=y, minlength=RUNS * cells).reshape(RUNS, cells) / n
    squares = np.bincount(flat, weights=(y - means.ravel()[flat]) ** 2,
                          minlength=RUNS * cells).reshape(RUNS, cells)
    runs = [CellStatistics(FACTORS, n[r].reshape(shape), means[r].reshape(shape),
                           (squares[r] / (n[r] - 1)).reshape(shape)) for r in range(RUNS)]
    truth = np.array([float(np.sum(contrast * true_means))
                      for *_, contrast in effect_contrasts(shape)])
    return runs, truth


def test_intervals_cover_planted_effects_and_null_effects_reject_at_their_level() -> None:
    runs, truth = _simulated_cells(np.random.default_rng(3), planted=True)
    results = [factorial_effects(cells) for cells in runs]
    assert all(r.error is None for r in results)
    low = np.array([[e.ci_low for e in r.effects] for r in results])
    high = np.array([[e.ci_high for e in r.effects] for r in results])
    p = np.array([[e.p_value for e in r.effects] for r in results])
    coverage = ((low <= truth) & (truth <= high)).mean(axis=0)
    labels = [e.label for e in results[0].effects]
    assert ((coverage >= 0.935) & (coverage <= 0.965)).all(), dict(zip(labels, coverage,
                                                                       strict=True))
    null = truth == 0.0
    assert null.sum() >= 4 and (~null).sum() >= 3  # both kinds are in the table
    false_positives = (p[:, null] < 0.05).mean(axis=0)
    assert ((false_positives >= 0.035) & (false_positives <= 0.065)).all(), false_positives
    # the planted effects are found (the design has the power for them)
    assert ((p[:, ~null] < 0.05).mean(axis=0) > 0.4).all()


def test_holm_keeps_the_family_wise_error_rate_over_the_whole_table() -> None:
    runs, _ = _simulated_cells(np.random.default_rng(7), planted=False)
    results = [factorial_effects(cells) for cells in runs]
    raw = np.array([[e.p_value for e in r.effects] for r in results])
    adjusted = np.array([[e.p_value_adjusted for e in r.effects] for r in results])
    any_raw = (raw < 0.05).any(axis=1).mean()
    any_adjusted = (adjusted < 0.05).any(axis=1).mean()
    assert any_raw > 0.25  # ten tests at 5% each: most tables have a false positive
    assert any_adjusted <= 0.065


def test_the_classical_covariance_pools_the_cells() -> None:
    rng = np.random.default_rng(3)
    levels = [rng.integers(0, k, 600) for k in (2, 3, 2)]
    values = rng.normal(size=600)
    cells = cell_statistics(values, levels, FACTORS)
    classical = factorial_effects(cells, covariance="classical")
    pooled = float(np.sum((cells.n - 1) * cells.variance)) / (600 - 12)
    contrast = effect_contrasts((2, 3, 2))[0][3]
    assert classical.effects[0].std_error == pytest.approx(
        np.sqrt(pooled * np.sum(contrast ** 2 / cells.n)))
    assert list(itertools.chain(classical.effects)) != list(factorial_effects(cells).effects)


def test_the_test_document_is_not_mutated() -> None:
    data = document()
    before = copy.deepcopy(data)
    parse_config(data)
    assert data == before


# ----------------------------------------------------------------- analysis end to end

ANALYSIS_START = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
ANALYSIS_AS_OF = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)


def _write_factorial_logs(tmp: Path, units: int = 8000) -> dict[str, Any]:
    """Decisions as routing made them, and one ``revenue`` event per unit with
    the new ranker adding 0.5, green adding nothing and no interaction."""
    experiment = factorial_experiment(analysis={
        "start": "2026-11-01T00:00:00Z", "primary": {"name": "revenue", "type": "mean"},
        "alpha": 0.05, "mde": 0.1, "baseline": 1.0})
    data = document(experiment, data_dir=str(tmp),
                    decision_log={"path": str(tmp / "decisions")},
                    outcomes_log={"path": str(tmp / "outcomes")})
    ids = [f"user-{i}" for i in range(units)]
    columns = route_many(table(data), ids)
    ranker_new = np.asarray([(parse_cell(a) or {}).get("ranker") == "new"
                             for a in columns["arm"]])
    rng = np.random.default_rng(5)
    at = ANALYSIS_START.timestamp() + 86_400 * 5 + rng.uniform(0, 86_400, units)
    (tmp / "decisions").mkdir(parents=True)
    pq.write_table(batch_table(units, {
        "request_id": [f"r-{i}" for i in range(units)], "unit_id": ids,
        "unit_type": "user_id", "experiment_id": "checkout-factorial",
        "arm": list(columns["arm"]), "model_name": "clf",
        "model_version": list(columns["model_version"]), "role": "primary",
        "timestamp": at, "features": [{"f0": 1.0}] * units, "prediction": 0.5,
        "latency_ms": 1.0, "status": "ok", "arm_weights": list(columns["arm_weights"])}),
        tmp / "decisions" / "part-0.parquet")
    revenue = 2.0 + 0.5 * ranker_new + rng.normal(0.0, 1.0, units)
    stamp = pa.array((at * MICROS).astype(np.int64) + 1).cast(pa.timestamp("us", tz="UTC"))
    outcomes = pa.table({"unit_id": pa.array(ids, type=pa.string()),
                         "metric": pa.repeat(pa.scalar("revenue"), units),
                         "value": pa.array(revenue), "timestamp": stamp,
                         "experiment_id": pa.nulls(units, pa.string()),
                         "received_at": stamp})
    (tmp / "outcomes").mkdir(parents=True)
    pq.write_table(outcomes.cast(OUTCOME_SCHEMA), tmp / "outcomes" / "part-0.parquet")
    return data


def test_analyze_reports_main_effects_and_interactions_beside_the_cells(
        tmp_path: Path) -> None:
    config = parse_config(_write_factorial_logs(tmp_path))
    report = run_analysis(config, "checkout-factorial", as_of=ANALYSIS_AS_OF,
                          now=ANALYSIS_AS_OF)
    # the usual per-arm results stay: cells are the arms, SRM over the cells
    assert report.arms == tuple(a.name for a in config.experiments[0].arms)
    assert len(report.srm.observed) == 4 and not report.srm.flag
    # cells that differ in color serve one version and still compare color
    assert not report.warnings
    assert not any("compares nothing" in reason for reason in report.decision.reasons)
    assert len(report.primary()) == 3
    factorial = report.factorial
    assert factorial is not None and factorial.error is None
    assert factorial.factors == {"ranker": ("old", "new"), "color": ("blue", "green")}
    assert sum(factorial.cell_units.values()) == report.units == 8000
    by_label = {e.label: e for e in factorial.effects}
    assert list(by_label) == ["ranker: new", "color: green", "ranker × color: new × green"]
    ranker = by_label["ranker: new"]
    assert ranker.estimate is not None and ranker.std_error is not None
    assert ranker.ci_low is not None and ranker.ci_high is not None
    assert ranker.adjusted_p_value is not None
    color = by_label["color: green"].adjusted_p_value
    assert color is not None
    # the planted 0.5 within four standard errors (coverage is the simulation's job)
    assert abs(ranker.estimate - 0.5) < 4 * ranker.std_error
    assert ranker.ci_low < ranker.estimate < ranker.ci_high
    assert ranker.adjusted_p_value < 1e-6
    assert color > 0.01
    document_ = report.to_json()
    assert document_["factorial"]["effects"][0]["kind"] == "main"
    text = summary_text(report)
    assert "factorial revenue: ranker (2) x color (2)" in text
    assert "HC2 standard errors, p adjusted (holm) over 3 effects" in text
    assert "ranker × color: new × green" in text
    page = render_html(document_)
    assert "<section id='factorial'>" in page and "new × green" in page


def test_an_arm_that_is_no_cell_or_a_ratio_metric_gives_an_error_not_a_table() -> None:
    factors = (Factor("ranker", ("old", "new")), Factor("color", ("blue", "green")))
    cells = [cell_name([("ranker", r), ("color", c)]) for r in ("old", "new")
             for c in ("blue", "green")]
    arm = np.arange(40) % 4
    values = np.arange(40, dtype=np.float64)
    mean = MetricSpec(name="revenue", type="mean")
    ok = factorial_summary(mean, cells, arm, values, factors, 0.05)
    assert ok.error is None and len(ok.effects) == 3
    assert ok.cell_units == dict.fromkeys(cells, 10)
    renamed = factorial_summary(mean, [*cells[:3], "treatment"], arm, values, factors, 0.05)
    assert renamed.error == ("arm 'treatment' is not a cell of the factors "
                             "['ranker', 'color']")
    ratio = MetricSpec(name="revenue", type="ratio", denominator="sessions")
    refused = factorial_summary(ratio, cells, arm, values, factors, 0.05)
    assert refused.effects == () and "not ratio metrics" in (refused.error or "")
    assert "no estimate (factorial effects are estimated" in refused.text_lines()[0]


def test_the_gateway_answers_and_logs_each_factors_level(tmp_path: Path) -> None:
    """``/v1/predict`` names the cell as the arm and each factor's level in
    ``factors``; the decision log's ``arm`` is the cell, so it records every
    factor's level. A batch answers the same per row."""
    from fastapi.testclient import TestClient
    from prometheus_client import CollectorRegistry

    from serving.gateway.core import GatewayCore, build_app
    from telemetry.decision_log import DecisionLogWriter, read_decisions
    from telemetry.metrics import RequestMetrics
    from telemetry.tracing import build_tracer_provider
    from tests.unit.fakes import FEATURES

    plain = {"id": "plain", "salt": "plain", "targeting": [
        {"attribute": "plain", "op": "present"}], "arms": [
        {"name": "control", "model": "clf", "version": "champion", "weight_bp": 5000},
        {"name": "treatment", "model": "clf", "version": "challenger", "weight_bp": 5000}]}
    registry = InMemoryRegistry()
    routing = build_routing_table(parse_config(document(plain, factorial_experiment())),
                                  registry.resolve)
    scorers = {(r.name, r.version): registry.load(r.name, r.version)
               for r in routing.model_refs()}
    writer = DecisionLogWriter(tmp_path / "decisions", "test", batch_rows=1000,
                               flush_interval_s=3600)
    core = GatewayCore(routing, scorers, RequestMetrics(CollectorRegistry()),
                       build_tracer_provider().get_tracer("t"), writer)
    features = {name: 0.1 for name in FEATURES}
    units = UNITS[:60]
    with TestClient(build_app(core)) as client:
        answers = [client.post("/v1/predict", json={"unit_id": u, "features": features}).json()
                   for u in units]
        batch = client.post("/v1/predict", json={"rows": [
            {"unit_id": u, "features": features} for u in units[:5]]}).json()
        other = client.post("/v1/predict", json={"unit_id": "x", "features": features,
                                                  "context": {"plain": True}}).json()
    writer.flush()
    core.close()
    rows = {r["request_id"]: r for r in read_decisions(tmp_path / "decisions").to_pylist()}
    for unit, answer in zip(units, answers, strict=True):
        decision = route(routing, unit)
        assert answer["arm"] == decision.arm == rows[answer["request_id"]]["arm"]
        assert answer["factors"] == parse_cell(decision.arm)
        assert answer["model_version"] == ("2" if answer["factors"]["ranker"] == "new" else "1")
    assert [p["factors"] for p in batch["predictions"]] == [a["factors"] for a in answers[:5]]
    assert other["experiment_id"] == "plain" and "factors" not in other


def test_cells_sharing_a_version_warn_only_where_no_label_factor_differs() -> None:
    from rollout.experiments.periods import same_version_warnings
    from serving.kernel.factorial import label_treatments

    config = parse_config(document(factorial_experiment()))
    experiment = config.experiments[0]
    arms = [a.name for a in experiment.arms]
    treatments = label_treatments(experiment.factors, arms)
    assert treatments == {arm: "color." + (parse_cell(arm) or {})["color"] for arm in arms}
    since = ANALYSIS_START
    as_routed = {arm: ("clf/" + ("2" if "ranker.new" in arm else "1"),) for arm in arms}
    assert same_version_warnings(arms, as_routed, since, treatments) == ()
    # the ranker's levels serving one version (an alias moved): the ranker
    # compares nothing, within each color
    one_version = dict.fromkeys(arms, ("clf/1",))
    warned = same_version_warnings(arms, one_version, since, treatments)
    assert {w.arms for w in warned if w.kind == "same_versions"} == {
        tuple(a for a in arms if a.endswith(color)) for color in ("blue", "green")}
    # without the treatments every cell would be said to compare nothing
    assert len(same_version_warnings(arms, one_version, since)[0].arms) == 4
