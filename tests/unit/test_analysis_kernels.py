"""The compiled analysis kernels against the numpy reference: per-unit totals
identical, per-arm sums as accurate as exact (``math.fsum``) sums allow, and a
whole analysis (metrics, CUPED, the mSPRT's looks, segments, the timeline)
with the same figures under either."""

from __future__ import annotations

import datetime as dt
import math
from typing import Any

import numpy as np
import pytest

from rollout.experiments.analysis import MICROS, Exposures, OutcomeRows, analyze
from rollout.experiments.compiled_kernels import CompiledKernels
from rollout.experiments.kernels import NUMPY_KERNELS, AnalysisKernels
from rollout.experiments.stats.summary import PairSummary
from serving.kernel.analysis_plan import AnalysisPlan

COMPILED = CompiledKernels()
START = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)


def _outcome_arrays(rng: np.random.Generator, rows: int, n_units: int,
                    metric_dtype: type[Any]) -> tuple[np.ndarray, ...]:
    unit = rng.integers(0, n_units, rows).astype(np.int64)
    metric = rng.integers(-1, 3, rows).astype(metric_dtype)
    # refunds (negative), zeros and large values: a sum in another order would show
    value = np.where(rng.random(rows) < 0.2, -rng.exponential(50, rows),
                     rng.exponential(50, rows) * (rng.random(rows) < 0.8))
    selected = rng.random(rows) < 0.7
    return unit, metric, value, selected


@pytest.mark.parametrize("binary", [True, False])
@pytest.mark.parametrize("metric_dtype", [np.int8, np.int64])
def test_unit_totals_are_the_reference_exactly(binary: bool, metric_dtype: type[Any]) -> None:
    rng = np.random.default_rng(7)
    n_units = 5_000  # many units without a row: their totals stay 0
    unit, metric, value, selected = _outcome_arrays(rng, 200_000, n_units, metric_dtype)
    for code in (0, 2, 5):
        want = NUMPY_KERNELS.unit_totals(unit, metric, value, selected, code, binary, n_units)
        got = COMPILED.unit_totals(unit, metric, value, selected, code, binary, n_units)
        assert got.dtype == np.float64 and got.shape == (n_units,)
        # the same additions in the same (row) order: bit for bit
        assert np.array_equal(got, want)
    empty = np.zeros(0, dtype=np.int64)
    assert np.array_equal(
        COMPILED.unit_totals(empty, empty.astype(metric_dtype), np.zeros(0),
                             np.zeros(0, dtype=bool), 0, binary, 3), np.zeros(3))


Sums = list[tuple[float, float]]  # (exact sum, sum of the terms' magnitudes)


def _exact(arm: np.ndarray, y: np.ndarray, x: np.ndarray, n_arms: int,
           units: np.ndarray | None) -> list[tuple[int, Sums]]:
    chosen = np.ones(arm.size, dtype=bool) if units is None else units
    out = []
    for a in range(n_arms):
        index = np.flatnonzero(chosen & (arm == a))
        ya, xa = y[index], x[index]
        terms = (ya, ya * ya, xa, xa * xa, xa * ya)
        out.append((int(ya.size), [(math.fsum(t.tolist()), math.fsum(np.abs(t).tolist()))
                                   for t in terms]))
    return out


def _error(summary: PairSummary, exact: tuple[int, Sums]) -> float:
    """The largest error of the five sums, relative to the sum of the terms'
    magnitudes (a sum that cancels is judged by what it had to add)."""
    assert summary.n == exact[0]
    got = (summary.sum_y, summary.sum_yy, summary.sum_x, summary.sum_xx, summary.sum_xy)
    return max(abs(value - want) / max(magnitude, 1e-300)
               for value, (want, magnitude) in zip(got, exact[1], strict=True))


@pytest.mark.parametrize("masked", [False, True])
def test_arm_moments_are_as_accurate_as_exact_sums(masked: bool) -> None:
    rng = np.random.default_rng(11)
    size = 1_000_000
    arm = rng.integers(0, 3, size).astype(np.int64)
    y = rng.exponential(3.0, size) + 1e4  # a large common offset: a running sum drifts
    x = rng.normal(0.0, 1.0, size) * 1e3  # sums that cancel
    units = rng.random(size) < 0.6 if masked else None
    exact = _exact(arm, y, x, 3, units)
    worst = {name: max(_error(summary, want) for summary, want in zip(
        kernels.arm_moments(arm, y, x, 3, units), exact, strict=True))
        for name, kernels in (("compiled", COMPILED), ("numpy", NUMPY_KERNELS))}
    # The products are rounded before they are summed (half an ulp each), and
    # both summations add ~1e-16 more; at a million terms a running sum is off by more.
    assert worst["compiled"] < 1e-15, worst
    assert worst["numpy"] < 1e-15, worst
    mine = y[arm == 0] if units is None else y[(arm == 0) & units]
    running = float(np.cumsum(mine)[-1])
    assert abs(running - exact[0][1][0][0]) / exact[0][1][0][1] > 1e-15


def test_arm_moments_skip_arms_out_of_range_and_take_empty_input() -> None:
    arm = np.array([0, 1, 2, -1, 1], dtype=np.int64)
    y = np.array([1.0, 2.0, 4.0, 8.0, 16.0])
    x = np.array([1.0, 1.0, 1.0, 1.0, 1.0])
    for kernels in (COMPILED, NUMPY_KERNELS):
        first, second = kernels.arm_moments(arm, y, x, 2)
        assert (first.n, first.sum_y, second.n, second.sum_y, second.sum_xy) == (
            1, 1.0, 2, 18.0, 18.0)
        assert [s.n for s in kernels.arm_moments(np.zeros(0, dtype=np.int64), np.zeros(0),
                                                 np.zeros(0), 2)] == [0, 0]


def _numbers(value: Any, prefix: str = "") -> dict[str, Any]:
    """Every leaf of a JSON document by its path."""
    if isinstance(value, dict):
        return {k: v for key, item in value.items()
                for k, v in _numbers(item, f"{prefix}.{key}").items()}
    if isinstance(value, list):
        return {k: v for index, item in enumerate(value)
                for k, v in _numbers(item, f"{prefix}[{index}]").items()}
    return {prefix: value}


def test_a_whole_analysis_gives_the_same_figures_under_either_kernels() -> None:
    rng = np.random.default_rng(3)
    n_units = 60_000
    arm = rng.integers(0, 3, n_units).astype(np.int64)
    start_us = int(START.timestamp() * MICROS)
    exposed_at = start_us + rng.integers(0, 20 * 86_400, n_units).astype(np.int64) * MICROS
    tier = rng.integers(0, 3, n_units).astype(np.int64)
    exposures = Exposures(("control", "b", "c"), (4000.0, 3000.0, 3000.0), arm, exposed_at,
                          segments={"tier": (tier, ("gold", "silver", "basic"))})
    rows = 150_000
    unit = rng.integers(0, n_units, rows).astype(np.int64)
    metric = rng.integers(0, 3, rows).astype(np.int8)
    lift = np.where(arm[unit] > 0, 1.1, 1.0)
    value = np.where(metric == 0, (rng.random(rows) < 0.2 * lift).astype(float),
                     rng.exponential(20, rows) * lift)
    at = exposed_at[unit] + rng.integers(-10 * 86_400, 10 * 86_400, rows) * MICROS
    received = at + rng.integers(0, 86_400, rows) * MICROS
    outcomes = OutcomeRows(("converted", "revenue", "sessions"), unit, metric, value, at,
                           received)
    plan = AnalysisPlan.model_validate({
        "start": START.isoformat(), "primary": {"name": "converted", "type": "binary"},
        "secondary": [{"name": "revenue", "type": "mean"},
                      {"name": "revenue", "type": "ratio", "denominator": "sessions"}],
        "guardrails": [{"name": "revenue", "type": "mean", "harm": "decrease",
                        "tolerance": 0.05, "relative": True}],
        "alpha": 0.05, "mde": 0.1, "baseline": 0.2, "cuped": True, "segments": ["tier"],
        "sequential": {"method": "msprt", "looks": 4},
        "outcome_window_s": 7 * 86_400, "pre_period_s": 7 * 86_400})
    as_of = START + dt.timedelta(days=22)
    reports: list[dict[str, Any]] = []
    for kernels in (NUMPY_KERNELS, COMPILED):
        chosen: AnalysisKernels = kernels
        reports.append(analyze("exp", plan, exposures, outcomes, as_of, timeline_points=3,
                               kernels=chosen).to_json())
    reference, compiled = (_numbers(r) for r in reports)
    assert reference.keys() == compiled.keys()
    assert len(reference) > 200
    for key, want in reference.items():
        got = compiled[key]
        if isinstance(want, float) and isinstance(got, float):
            assert math.isclose(got, want, rel_tol=1e-11, abs_tol=1e-13), (key, got, want)
        else:
            assert got == want, key
