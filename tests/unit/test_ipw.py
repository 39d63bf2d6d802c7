"""Inverse-propensity analysis of a bandit run: estimators, intervals, degenerate input."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from rollout.experiments.stats.ipw import (
    ESTIMATORS,
    ArmEstimate,
    Difference,
    IPWResult,
    analyse_ipw,
)

pytestmark = pytest.mark.unit


def _no_nan(result: IPWResult) -> None:
    items: list[ArmEstimate | Difference] = [*result.arms, *result.differences]
    for item in items:
        for field in dataclasses.fields(item):
            value = getattr(item, field.name)
            assert not (isinstance(value, float) and not math.isfinite(value)), field.name


def test_hand_computed_estimates() -> None:
    arms = np.array([0, 1, 0, 1])
    props = np.array([0.5, 0.25, 0.8, 0.5])
    rewards = np.array([1.0, 2.0, 3.0, 4.0])
    r = analyse_ipw(arms, props, rewards, 2)
    assert r.status == "ok" and r.rows == 4
    a0, a1 = r.arms
    # HT: (1/T)·Σ y/π
    assert a0.horvitz_thompson == pytest.approx((1 / 0.5 + 3 / 0.8) / 4)
    assert a1.horvitz_thompson == pytest.approx((2 / 0.25 + 4 / 0.5) / 4)
    # Hajek: Σ(y/π) / Σ(1/π)
    assert a0.hajek == pytest.approx((1 / 0.5 + 3 / 0.8) / (1 / 0.5 + 1 / 0.8))
    assert a1.hajek == pytest.approx((2 / 0.25 + 4 / 0.5) / (1 / 0.25 + 1 / 0.5))
    assert a0.naive == 2.0 and a1.naive == 3.0
    d = r.difference(1, "hajek")
    assert d.estimate == pytest.approx(a1.hajek - a0.hajek)  # type: ignore[operator]
    assert d.ci_low < d.estimate < d.ci_high  # type: ignore[operator]
    naive = r.difference(1, "naive")
    assert naive.biased and "propensities" in naive.reason and naive.estimate == 1.0
    assert not d.biased
    assert r.difference(1, "aipw").status == "no_predictions"
    _no_nan(r)


def test_fixed_equal_split_reduces_to_the_difference_of_means() -> None:
    rng = np.random.default_rng(0)
    arms = rng.integers(0, 2, 4_000)
    y = rng.normal(1.0 + 0.2 * arms, 1.0)
    r = analyse_ipw(arms, np.full(arms.size, 0.5), y, 2)
    assert r.difference(1, "hajek").estimate == pytest.approx(r.difference(1, "naive").estimate)
    # Their standard errors agree to O(1/n) as well.
    assert r.difference(1, "hajek").se == pytest.approx(r.difference(1, "naive").se, rel=0.01)


def test_aipw_is_unbiased_with_any_predictions_and_sharper_with_good_ones() -> None:
    """Adaptive-looking propensities (drifting over the run), a planted effect of
    0.3: AIPW with useless constant predictions stays centred; with the true
    conditional means it has a smaller standard error than IPW."""
    rng = np.random.default_rng(1)
    t, runs = 2_000, 300
    time = np.arange(t) / t
    p1 = 0.2 + 0.6 * time  # treatment share rises over the run
    mu0 = 1.0 + 2.0 * time  # the reward level drifts up
    mu1 = mu0 + 0.3
    good_ses: list[float | None] = []
    ipw_ses: list[float | None] = []
    bad: list[float | None] = []
    good: list[float | None] = []
    for _ in range(runs):
        arms = (rng.random(t) < p1).astype(np.int64)
        prop = np.where(arms == 1, p1, 1 - p1)
        y = np.where(arms == 1, mu1, mu0) + rng.normal(0, 0.5, t)
        preds_good = np.column_stack([mu0, mu1])
        preds_bad = np.full((t, 2), 5.0)
        rg = analyse_ipw(arms, prop, y, 2, predictions=preds_good)
        rb = analyse_ipw(arms, prop, y, 2, predictions=preds_bad)
        good.append(rg.difference(1, "aipw").estimate)
        good_ses.append(rg.difference(1, "aipw").se)
        ipw_ses.append(rg.difference(1, "hajek").se)
        bad.append(rb.difference(1, "aipw").estimate)
    bad_arr, good_arr = np.array(bad, dtype=float), np.array(good, dtype=float)
    assert abs(bad_arr.mean() - 0.3) < 3 * bad_arr.std() / math.sqrt(runs)
    assert abs(good_arr.mean() - 0.3) < 3 * good_arr.std() / math.sqrt(runs)
    good_se = np.array(good_ses, dtype=float)
    assert good_se.mean() < 0.8 * np.array(ipw_ses, dtype=float).mean()
    # The AIPW standard error is honest: it matches the spread across runs.
    assert good_se.mean() == pytest.approx(good_arr.std(), rel=0.15)


@pytest.mark.parametrize(
    ("arms", "props", "rewards", "status"),
    [
        ([], [], [], "empty"),
        ([0, 1], [0.5], [1.0, 2.0], "shape_mismatch"),
        ([0, 3], [0.5, 0.5], [1.0, 2.0], "arm_out_of_range"),
        ([0, -1], [0.5, 0.5], [1.0, 2.0], "arm_out_of_range"),
        ([0.0, 1.5], [0.5, 0.5], [1.0, 2.0], "arm_out_of_range"),
        ([0, 1], [0.0, 0.5], [1.0, 2.0], "bad_propensity"),
        ([0, 1], [1.2, 0.5], [1.0, 2.0], "bad_propensity"),
        ([0, 1], [math.nan, 0.5], [1.0, 2.0], "bad_propensity"),
        ([0, 1], [0.5, 0.5], [1.0, math.nan], "non_finite_reward"),
    ],
)
def test_degenerate_inputs_have_a_status(arms: list[float], props: list[float],
                                         rewards: list[float], status: str) -> None:
    r = analyse_ipw(np.array(arms), props, rewards, 2)
    assert r.status == status and r.arms == () and r.differences == ()


def test_arms_without_rows_and_bad_predictions() -> None:
    arms = np.array([0, 0, 2, 2, 2])
    props = np.full(5, 0.4)
    y = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    r = analyse_ipw(arms, props, y, 3, predictions=np.zeros((5, 3)))
    assert r.status == "ok"
    assert r.arms[1].status == "no_rows" and r.arms[1].hajek is None
    for estimator in ESTIMATORS:
        assert r.difference(1, estimator).status == "no_rows"
        assert r.difference(1, estimator).estimate is None
        assert r.difference(2, estimator).status == "ok"
    _no_nan(r)
    assert analyse_ipw(arms, props, y, 3, predictions=np.zeros((5, 2))).status == "bad_predictions"
    nan_preds = np.zeros((5, 3))
    nan_preds[0, 0] = math.nan
    assert analyse_ipw(arms, props, y, 3, predictions=nan_preds).status == "bad_predictions"
    one = analyse_ipw(np.array([0, 0, 1]), np.full(3, 0.5), np.ones(3), 2)
    assert one.difference(1, "naive").status == "too_few_rows"
    # Constant rewards: zero standard errors, intervals of width zero, no NaN.
    assert one.difference(1, "hajek").se == 0.0
    _no_nan(one)
    with pytest.raises(ValueError):
        analyse_ipw(arms, props, y, 1)
    with pytest.raises(ValueError):
        analyse_ipw(arms, props, y, 3, level=1.0)
