"""Power analysis against statsmodels' ``NormalIndPower`` power equation.

``NormalIndPower().solve_power`` stops its root search at an absolute tolerance
of about 1e-5, so the 1e-9 comparisons are made against statsmodels' power
function itself: either plugging our solution into ``NormalIndPower().power``,
or solving that same function tightly with ``brentq``. ``solve_power`` is then
checked at its own tolerance.
"""

from __future__ import annotations

import json
import math

import pytest
from scipy import optimize
from statsmodels.stats.power import NormalIndPower
from statsmodels.stats.proportion import proportion_effectsize

from rollout.experiments.stats.power import (
    PowerPlan,
    duration_days,
    mde_mean,
    mde_proportion,
    plan,
    sample_size_mean,
    sample_size_mean_exact,
    sample_size_proportion,
    sample_size_proportion_exact,
)

REL = 1e-9
POWER = NormalIndPower()


def sm_power(effect_size: float, nobs1: float, alpha: float, ratio: float) -> float:
    return float(POWER.power(effect_size=effect_size, nobs1=nobs1, alpha=alpha, ratio=ratio,
                             alternative="two-sided"))


def sm_nobs1(effect_size: float, alpha: float, power: float, ratio: float) -> float:
    """statsmodels' power equation solved for nobs1 to machine precision."""
    root = optimize.brentq(lambda n: sm_power(effect_size, n, alpha, ratio) - power,
                           1e-3, 1e12, xtol=1e-12, rtol=1e-15)
    return float(root)


def sm_effect(nobs1: float, alpha: float, power: float, ratio: float) -> float:
    """statsmodels' power equation solved for the effect size to machine precision."""
    root = optimize.brentq(lambda d: sm_power(d, nobs1, alpha, ratio) - power,
                           1e-9, 50.0, xtol=1e-15, rtol=1e-15)
    return float(root)


MEAN_CASES = [
    # (std_dev, absolute mde, alpha, power, ratio)
    (1.0, 0.2, 0.05, 0.8, 1.0),
    (12.5, 0.5, 0.05, 0.9, 1.0),
    (3.0, 0.01, 0.01, 0.8, 2.0),
    (2.0, 1.5, 0.10, 0.95, 0.5),
    (2.0, 3.0, 0.05, 0.8, 1.0),
]


@pytest.mark.parametrize(("std_dev", "mde", "alpha", "power", "ratio"), MEAN_CASES)
def test_sample_size_mean_solves_normal_ind_power(
    std_dev: float, mde: float, alpha: float, power: float, ratio: float
) -> None:
    exact = sample_size_mean_exact(std_dev, mde, alpha=alpha, power=power, ratio=ratio)
    d = mde / std_dev
    assert sm_power(d, exact, alpha, ratio) == pytest.approx(power, rel=REL)
    assert exact == pytest.approx(sm_nobs1(d, alpha, power, ratio), rel=REL)
    solved = POWER.solve_power(effect_size=d, nobs1=None, alpha=alpha, power=power, ratio=ratio)
    assert exact == pytest.approx(solved, rel=1e-6)
    n = sample_size_mean(std_dev, mde, alpha=alpha, power=power, ratio=ratio)
    assert n == math.ceil(exact)
    assert sm_power(d, n, alpha, ratio) >= power


PROPORTION_CASES = [
    # (baseline, mde, relative, alpha, power, ratio)
    (0.10, 0.02, False, 0.05, 0.8, 1.0),
    (0.05, 0.10, True, 0.05, 0.8, 1.0),
    (0.50, 0.05, False, 0.01, 0.9, 2.0),
    (0.001, 0.5, True, 0.05, 0.8, 1.0),
    (0.90, 0.05, False, 0.10, 0.85, 0.75),
]


@pytest.mark.parametrize(("baseline", "mde", "relative", "alpha", "power", "ratio"),
                         PROPORTION_CASES)
def test_sample_size_proportion_solves_normal_ind_power(
    baseline: float, mde: float, relative: bool, alpha: float, power: float, ratio: float
) -> None:
    exact = sample_size_proportion_exact(baseline, mde, relative=relative, alpha=alpha,
                                         power=power, ratio=ratio)
    p2 = baseline * (1 + mde) if relative else baseline + mde
    h = float(proportion_effectsize(p2, baseline))
    assert sm_power(h, exact, alpha, ratio) == pytest.approx(power, rel=REL)
    assert exact == pytest.approx(sm_nobs1(h, alpha, power, ratio), rel=REL)
    solved = POWER.solve_power(effect_size=h, nobs1=None, alpha=alpha, power=power, ratio=ratio)
    assert exact == pytest.approx(solved, rel=1e-6)
    n = sample_size_proportion(baseline, mde, relative=relative, alpha=alpha, power=power,
                               ratio=ratio)
    assert n == math.ceil(exact)


@pytest.mark.parametrize(("n", "std_dev", "alpha", "power", "ratio"), [
    (100, 1.0, 0.05, 0.8, 1.0),
    (5000, 4.0, 0.05, 0.8, 1.0),
    (1_000_000, 0.5, 0.01, 0.9, 2.0),
    (30, 2.0, 0.10, 0.95, 0.5),
])
def test_mde_mean_solves_normal_ind_power(
    n: int, std_dev: float, alpha: float, power: float, ratio: float
) -> None:
    mde = mde_mean(n, std_dev, alpha=alpha, power=power, ratio=ratio)
    assert sm_power(mde / std_dev, n, alpha, ratio) == pytest.approx(power, rel=REL)
    assert mde / std_dev == pytest.approx(sm_effect(n, alpha, power, ratio), rel=REL)
    solved = POWER.solve_power(effect_size=None, nobs1=n, alpha=alpha, power=power, ratio=ratio)
    # solve_power's brentq search stops at an absolute xtol of 1e-5.
    assert mde / std_dev == pytest.approx(solved, abs=1e-5)
    # Inverse of the sample size.
    assert sample_size_mean_exact(std_dev, mde, alpha=alpha, power=power,
                                  ratio=ratio) == pytest.approx(n, rel=REL)


@pytest.mark.parametrize(("n", "baseline", "alpha", "power"), [
    (3841, 0.10, 0.05, 0.8),
    (200, 0.5, 0.05, 0.8),
    (1_000_000, 0.01, 0.01, 0.9),
])
def test_mde_proportion_solves_normal_ind_power(
    n: int, baseline: float, alpha: float, power: float
) -> None:
    absolute = mde_proportion(n, baseline, alpha=alpha, power=power)
    relative = mde_proportion(n, baseline, alpha=alpha, power=power, relative=True)
    assert relative == pytest.approx(absolute / baseline, rel=REL)
    h = float(proportion_effectsize(baseline + absolute, baseline))
    assert sm_power(h, n, alpha, 1.0) == pytest.approx(power, rel=REL)
    assert h == pytest.approx(sm_effect(n, alpha, power, 1.0), rel=REL)
    assert sample_size_proportion_exact(baseline, absolute, relative=False, alpha=alpha,
                                        power=power) == pytest.approx(n, rel=REL)


def test_mde_proportion_too_small_sample() -> None:
    with pytest.raises(ValueError, match="too small"):
        mde_proportion(3, 0.95, alpha=0.05, power=0.8)


def test_relative_mean_mde_scales_with_baseline() -> None:
    relative = sample_size_mean_exact(5.0, 0.1, baseline_mean=-20.0, relative=True)
    absolute = sample_size_mean_exact(5.0, 2.0)
    assert relative == pytest.approx(absolute, rel=REL)


def test_larger_effects_need_fewer_units() -> None:
    sizes = [sample_size_proportion(0.2, m, relative=True) for m in (0.02, 0.05, 0.1, 0.2)]
    assert sizes == sorted(sizes, reverse=True)


def test_duration_days() -> None:
    # 1000 eligible a day, half enter, two arms: 250 per arm per day.
    assert duration_days(10_000, 1000, 0.5) == 40
    assert duration_days(10_001, 1000, 0.5) == 41
    assert duration_days(250, 1000, 0.5) == 1
    assert duration_days(300, 900, 1.0, arms=3) == 1
    assert duration_days(301, 900, 1.0, arms=3) == 2


def test_plan_proportion_to_json() -> None:
    result = plan("proportion", 0.1, 0.1, relative=True, daily_units=5000, allocation=0.4)
    assert isinstance(result, PowerPlan)
    assert result.mde_absolute == pytest.approx(0.01, rel=REL)
    assert result.mde_relative == pytest.approx(0.1, rel=REL)
    assert result.n_per_arm_exact == pytest.approx(
        sample_size_proportion_exact(0.1, 0.01, relative=False), rel=REL)
    assert result.n_per_arm == sample_size_proportion(0.1, 0.1, relative=True)
    assert result.total_units == 2 * result.n_per_arm
    assert result.days == duration_days(result.n_per_arm, 5000, 0.4)
    assert result.effect_size == pytest.approx(float(proportion_effectsize(0.11, 0.1)), rel=REL)
    payload = json.loads(json.dumps(result.to_dict()))
    assert payload["metric_type"] == "proportion"
    assert payload["n_per_arm"] == result.n_per_arm
    assert payload["days"] == result.days


def test_plan_mean() -> None:
    result = plan("mean", 40.0, 0.05, relative=True, std_dev=25.0)
    assert result.mde_absolute == pytest.approx(2.0, rel=REL)
    assert result.effect_size == pytest.approx(2.0 / 25.0, rel=REL)
    assert result.days is None
    assert result.n_per_arm == sample_size_mean(25.0, 2.0)
    absolute = plan("mean", None, 2.0, relative=False, std_dev=25.0)
    assert absolute.mde_relative is None
    assert absolute.n_per_arm == result.n_per_arm
    json.dumps(absolute.to_dict())


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"baseline": 0.0}, "baseline"),
    ({"baseline": 1.0}, "baseline"),
    ({"baseline": -0.2}, "baseline"),
    ({"baseline": math.nan}, "baseline"),
    ({"mde": 0.0}, "mde"),
    ({"mde": -0.01}, "mde"),
    ({"alpha": 0.0}, "alpha"),
    ({"alpha": 1.0}, "alpha"),
    ({"power": 0.0}, "power"),
    ({"power": 1.0}, "power"),
    ({"power": 0.04}, "power must exceed alpha"),
    ({"mde": 0.95}, "exceeds 1"),
    ({"allocation": 0.0}, "allocation"),
    ({"allocation": 1.5}, "allocation"),
    ({"daily_units": 0.0}, "daily_units"),
    ({"metric_type": "ratio"}, "metric_type"),
])
def test_plan_rejects_invalid_input(kwargs: dict[str, object], message: str) -> None:
    args: dict[str, object] = {"metric_type": "proportion", "baseline": 0.1, "mde": 0.02,
                               "relative": False, "alpha": 0.05, "power": 0.8,
                               "daily_units": 1000.0}
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        plan(**args)  # type: ignore[arg-type]


def test_mean_inputs_rejected() -> None:
    with pytest.raises(ValueError, match="std_dev"):
        plan("mean", 10.0, 1.0, relative=False)
    with pytest.raises(ValueError, match="std_dev"):
        sample_size_mean(0.0, 1.0)
    with pytest.raises(ValueError, match="baseline"):
        sample_size_mean(1.0, 0.1, relative=True)
    with pytest.raises(ValueError, match="baseline"):
        plan("mean", 0.0, 0.1, relative=True, std_dev=1.0)
    with pytest.raises(ValueError, match="ratio"):
        sample_size_mean(1.0, 0.1, ratio=0.0)
    with pytest.raises(ValueError, match="n_per_arm"):
        mde_mean(0, 1.0)
    with pytest.raises(ValueError, match="arms"):
        duration_days(100, 10.0, 1.0, arms=0)
