"""The analysis from sufficient statistics added over parts of the units (what
``rampart analyze --engine ray`` runs) gives the numbers of the analysis of all
units at once."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rollout.experiments.analysis import (
    Exposures,
    OutcomeRows,
    analyze,
    srm_check,
    srm_from_counts,
)
from rollout.experiments.data import load_experiment, plan_metrics
from rollout.experiments.sums import (
    analyze_stats,
    combine_stats,
    earliest_needed,
    exposure_sketch,
    partial_stats,
    sequential_times,
)
from serving.kernel.analysis_plan import AnalysisPlan
from tests.unit.test_analysis import ANALYSIS, AS_OF, _config, write_experiment

PLANS: dict[str, dict[str, Any]] = {
    "cuped_msprt": {**ANALYSIS, "segments": [], "pre_period_s": 30 * 86_400, "cuped": True,
                    "sequential": {"method": "msprt", "looks": 6}},
    "group_sequential": {**ANALYSIS, "segments": [],
                         "sequential": {"method": "group_sequential", "looks": 4,
                                        "max_units_per_arm": 6_000}},
    "fixed": {**ANALYSIS, "segments": [], "correction": "bonferroni"},
}


def assert_same_numbers(a: Any, b: Any, where: str = "", rel: float = 1e-9) -> None:
    """Every number of two JSON documents equal to ``rel`` (relative), everything
    else equal, with the path of the first difference."""
    if isinstance(a, dict) and isinstance(b, dict):
        assert a.keys() == b.keys(), f"{where}: keys {sorted(a)} != {sorted(b)}"
        for key in a:
            assert_same_numbers(a[key], b[key], f"{where}.{key}", rel)
    elif isinstance(a, list) and isinstance(b, list):
        assert len(a) == len(b), f"{where}: {len(a)} != {len(b)} entries"
        for i, (u, v) in enumerate(zip(a, b, strict=True)):
            assert_same_numbers(u, v, f"{where}[{i}]", rel)
    elif isinstance(a, float | int) and isinstance(b, float | int) and not isinstance(
            a, bool) and not isinstance(b, bool):
        assert math.isclose(a, b, rel_tol=rel, abs_tol=1e-12), f"{where}: {a} != {b}"
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def _part(exposures: Exposures, outcomes: OutcomeRows, chosen: np.ndarray, first: bool
          ) -> tuple[Exposures, OutcomeRows]:
    """The units ``chosen`` (a mask) and their outcome rows, indexed anew."""
    index = np.cumsum(chosen) - 1
    rows = chosen[outcomes.unit]
    assert exposures.split is not None and outcomes.received is not None
    return (Exposures(exposures.arms, exposures.weights, exposures.arm[chosen],
                      exposures.exposed_at[chosen], exposures.crossovers if first else 0,
                      split=exposures.split[chosen], splits=exposures.splits),
            OutcomeRows(outcomes.metrics, index[outcomes.unit[rows]], outcomes.metric[rows],
                        outcomes.value[rows], outcomes.at[rows], outcomes.received[rows]))


@pytest.mark.parametrize("name", sorted(PLANS))
def test_parts_added_give_the_numbers_of_all_units(tmp_path: Path, name: str) -> None:
    write_experiment(tmp_path, units=8_000)
    config = _config(tmp_path, PLANS[name])
    experiment = config.experiments[0]
    plan: AnalysisPlan = experiment.analysis
    data = load_experiment(tmp_path / "decisions", tmp_path / "outcomes", experiment,
                           plan_metrics(plan), AS_OF)
    whole = analyze("exp", plan, data.exposures, data.outcomes, AS_OF, period=data.period,
                    periods=data.periods)
    as_of_us = int(AS_OF.timestamp() * 1_000_000)
    part_of = np.random.default_rng(5).integers(0, 4, data.exposures.n_units)
    parts = [_part(data.exposures, data.outcomes, part_of == p, p == 0) for p in range(4)]
    # Two passes, as across machines: the earliest exposures give the look times...
    k = earliest_needed(plan)
    first = combine_stats([partial_stats(plan, e, o, as_of_us, earliest=k) for e, o in parts],
                          2)
    times = sequential_times(plan, exposure_sketch(data.exposures.arms,
                                                   data.exposures.weights, first.earliest),
                             as_of_us)
    assert times or plan.sequential.method == "none"
    # ... then every sum at as_of and at each look.
    stats = combine_stats([partial_stats(plan, e, o, as_of_us, times, k) for e, o in parts], 2)
    summed = analyze_stats("exp", plan, data.exposures.arms, data.exposures.weights, stats,
                           AS_OF, period=data.period, periods=data.periods)
    assert_same_numbers(summed.to_json(), whole.to_json())


def test_srm_from_counts_is_the_srm_of_the_units() -> None:
    rng = np.random.default_rng(3)
    n = 5_000
    splits = ((9000.0, 1000.0), (5000.0, 5000.0))
    split = rng.integers(-1, 2, n)
    arm = rng.integers(0, 2, n)
    at = rng.integers(0, 10**12, n)
    exposures = Exposures(("control", "treatment"), (5000.0, 5000.0), arm, at,
                          split=split, splits=splits)
    counts = {None if s < 0 else splits[s]: (
        tuple(int(c) for c in np.bincount(arm[split == s], minlength=2)),
        int(at[split == s].min())) for s in (-1, 0, 1)}
    assert srm_from_counts(exposures.arms, exposures.weights, counts) == srm_check(exposures)


def test_earliest_exposures_of_parts_give_the_look_times() -> None:
    rng = np.random.default_rng(4)
    at = rng.integers(0, 10**9, 3_000)
    arm = rng.integers(0, 2, 3_000)
    exposures = Exposures(("c", "t"), (5000.0, 5000.0), arm, at)
    plan = AnalysisPlan.model_validate({
        **ANALYSIS, "segments": [], "sequential": {
            "method": "group_sequential", "looks": 3, "max_units_per_arm": 2_000}})
    k = earliest_needed(plan)
    part_of = rng.integers(0, 3, at.size)
    empty = OutcomeRows(("converted",), *(np.zeros(0, dtype=np.int64),) * 2, np.zeros(0),
                        np.zeros(0, dtype=np.int64))
    parts = [partial_stats(plan, Exposures(("c", "t"), (5000.0, 5000.0), arm[part_of == p],
                                           at[part_of == p]), empty, 10**9, earliest=k)
             for p in range(3)]
    sketch = exposure_sketch(exposures.arms, exposures.weights,
                             combine_stats(parts, 2).earliest)
    assert sequential_times(plan, sketch, 10**9) == sequential_times(plan, exposures, 10**9)
    assert len(sequential_times(plan, exposures, 10**9)) == 2  # 2,000 per arm not reached


def test_a_part_without_units_adds_nothing() -> None:
    plan = AnalysisPlan.model_validate({**ANALYSIS, "segments": []})
    none = np.zeros(0, dtype=np.int64)
    exposures = Exposures(("c", "t"), (5000.0, 5000.0), none, none)
    outcomes = OutcomeRows(("converted",), none, none, np.zeros(0), none)
    stats = partial_stats(plan, exposures, outcomes, 0, earliest=1)
    assert stats.units == (0, 0) and stats.srm == {}
    assert all(s.n == 0 and s.sum_y == 0.0 for arms in stats.summaries.values() for s in arms)
