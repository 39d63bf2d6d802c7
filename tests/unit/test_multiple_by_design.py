"""Multiple testing by design: the primary metric alone (corrected across arms
only), secondary metrics as one family, sequential methods corrected across arms,
and ``rampart plan`` sized for the number of arms."""

from __future__ import annotations

import datetime as dt
import json
import math
from typing import Any

import numpy as np
import pytest
from scipy import optimize, special
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import NormalIndPower
from statsmodels.stats.proportion import proportion_effectsize

from rollout.experiments.analysis import (
    MICROS,
    Exposures,
    OutcomeRows,
    analyze,
    msprt_across_arms,
)
from rollout.experiments.results import GroupSequentialSummary, MsprtSummary
from rollout.experiments.stats.power import plan as power_plan
from rollout.experiments.stats.sequential import group_sequential_design
from serving.cli.main import main
from serving.kernel.analysis_plan import AnalysisPlan

T0 = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
AS_OF = T0 + dt.timedelta(days=30)
BASE: dict[str, Any] = {
    "start": "2026-10-31T00:00:00Z",
    "primary": {"name": "converted", "type": "binary"},
    "secondary": [{"name": "revenue", "type": "mean"}, {"name": "clicks", "type": "mean"}],
    "alpha": 0.05, "mde": 0.1, "baseline": 0.1, "cuped": False, "correction": "holm",
}


def _data(conversions: list[tuple[int, int]], seed: int = 7
          ) -> tuple[Exposures, OutcomeRows]:
    """Arms of ``n`` units with ``k`` converted each (``(n, k)`` per arm, control
    first), exposed over ten days; revenue and clicks are noise, equal in every arm."""
    rng = np.random.default_rng(seed)
    names = ("control", *(f"t{a}" for a in range(1, len(conversions))))
    arm = np.concatenate([np.full(n, a, dtype=np.int64)
                          for a, (n, _) in enumerate(conversions)])
    n_units = arm.size
    start_us = int(T0.timestamp() * MICROS)
    exposed = start_us + np.sort(rng.integers(0, 10 * 86_400 * MICROS, n_units))
    exposed = exposed[rng.permutation(n_units)]
    converted = np.concatenate([rng.permutation(np.arange(n) < k)
                                for n, k in conversions])
    conv_units = np.flatnonzero(converted)
    units = [conv_units, np.arange(n_units), np.arange(n_units)]
    values = [np.ones(conv_units.size), rng.normal(10.0, 3.0, n_units),
              rng.poisson(3.0, n_units).astype(float)]
    unit = np.concatenate(units).astype(np.int64)
    outcomes = OutcomeRows(
        metrics=("converted", "revenue", "clicks"), unit=unit,
        metric=np.concatenate([np.full(u.size, m, dtype=np.int64)
                               for m, u in enumerate(units)]),
        value=np.concatenate(values), at=exposed[unit] + 60 * MICROS)
    weights = tuple(10_000.0 / len(conversions) for _ in conversions)
    return Exposures(names, weights, arm, exposed), outcomes


def _plan(**changes: Any) -> AnalysisPlan:
    return AnalysisPlan.model_validate({**BASE, **changes})


# --------------------------------------------------------------------------- fixed horizon


def test_the_primary_is_tested_alone_and_secondaries_as_their_own_family() -> None:
    """One treatment arm: the primary's p-value is not corrected at all (its power is
    the planned power); the secondaries are Holm-corrected among themselves only."""
    exposures, outcomes = _data([(1000, 100), (1000, 130)])
    report = analyze("exp", _plan(), exposures, outcomes, AS_OF)
    (primary,) = report.primary()
    assert 0.01 < primary.p_value < 0.05  # significant alone, not after a 3-way Holm
    assert primary.adjusted_p_value == primary.p_value and primary.family_size == 1
    secondary = [m for m in report.metrics if m.role == "secondary"]
    expected = multipletests([m.p_value for m in secondary], method="holm")[1]
    assert [m.adjusted_p_value for m in secondary] == pytest.approx(expected, rel=1e-12)
    assert all(m.family_size == 2 for m in secondary)
    assert report.decision.outcome == "ship"
    assert any("significantly better at the fixed horizon (the primary metric tested alone "
               "at alpha 0.05)" in r for r in report.decision.reasons)


def test_the_primary_is_corrected_across_treatment_arms_only() -> None:
    exposures, outcomes = _data([(1000, 100), (1000, 130), (1000, 104)])
    for correction, method in (("holm", "holm"), ("bonferroni", "bonferroni"),
                               ("bh", "fdr_bh")):
        report = analyze("exp", _plan(correction=correction), exposures, outcomes, AS_OF)
        primary = report.primary()
        assert [m.arm for m in primary] == ["t1", "t2"]
        expected = multipletests([m.p_value for m in primary], method=method)[1]
        assert [m.adjusted_p_value for m in primary] == pytest.approx(expected, rel=1e-12)
        secondary = [m for m in report.metrics if m.role == "secondary"]
        assert len(secondary) == 4 and all(m.family_size == 4 for m in secondary)
        expected = multipletests([m.p_value for m in secondary], method=method)[1]
        assert [m.adjusted_p_value for m in secondary] == pytest.approx(expected, rel=1e-12)
    report = analyze("exp", _plan(), exposures, outcomes, AS_OF)
    assert any("adjusted across 2 treatment arms by holm" in r
               for r in report.decision.reasons)


# --------------------------------------------------------------------------- sequential


def test_group_sequential_boundaries_are_at_alpha_over_the_arms() -> None:
    exposures, outcomes = _data([(1000, 100), (1000, 130), (1000, 110)])
    plan = _plan(sequential={"method": "group_sequential", "looks": 4,
                             "max_units_per_arm": 1000})
    report = analyze("exp", plan, exposures, outcomes, AS_OF)
    for entry in report.primary():
        sequential = entry.sequential
        assert isinstance(sequential, GroupSequentialSummary)
        assert sequential.alpha == pytest.approx(0.025) and sequential.treatment_arms == 2
        fractions = [look.fraction for look in sequential.looks]
        design = group_sequential_design(fractions, 0.025, "obrien_fleming")
        assert [look.boundary for look in sequential.looks] == pytest.approx(
            design.boundaries, rel=1e-12)
        crossed = any(abs(look.z or 0.0) >= (look.boundary or math.inf)
                      for look in sequential.looks)
        assert sequential.crossed == crossed
    assert any("adjusted across 2 treatment arms (Bonferroni)" in r
               for r in report.decision.reasons)
    # one arm: the plan's alpha, as before
    alone = analyze("exp", plan, *_data([(1000, 100), (1000, 130)]), AS_OF)
    sequential = alone.primary()[0].sequential
    assert isinstance(sequential, GroupSequentialSummary) and sequential.alpha == 0.05


def _msprt(p_values: list[float]) -> MsprtSummary:
    return MsprtSummary(looks=len(p_values), always_valid_p_value=p_values[-1],
                        adjusted_p_value=p_values[-1], alpha=0.025, treatment_arms=2,
                        look_p_values=tuple(p_values), rejected=p_values[-1] <= 0.05)


def test_msprt_rejection_is_decided_across_arms() -> None:
    """Two arms whose always-valid p-values are each below alpha but not below
    Holm's alpha/2: alone each would be rejected, together neither is."""
    arms = [_msprt([0.5, 0.2, 0.03]), _msprt([0.6, 0.1, 0.04])]
    assert all(a.rejected for a in arms)  # each alone
    joint = msprt_across_arms(arms, 0.05, "holm")
    assert [j.adjusted_p_value for j in joint] == pytest.approx([0.06, 0.06])
    assert not any(j.rejected for j in joint)
    # once the smaller one reaches alpha/2, Holm rejects it, then the other at alpha
    joint = msprt_across_arms([_msprt([0.5, 0.02, 0.01]), _msprt([0.6, 0.1, 0.04])],
                              0.05, "holm")
    assert [j.adjusted_p_value for j in joint] == pytest.approx([0.02, 0.04])
    assert [j.rejected for j in joint] == [True, True]
    assert [j.first_rejection_look for j in joint] == [2, 3]
    # each look is corrected on its own, and the reported value is the running minimum
    expected = [min(multipletests([a, b], method="bonferroni")[1][0] for a, b in looks)
                for looks in ([(0.5, 0.6), (0.02, 0.1), (0.01, 0.04)],)]
    joint = msprt_across_arms([_msprt([0.5, 0.02, 0.01]), _msprt([0.6, 0.1, 0.04])],
                              0.05, "bonferroni")
    assert joint[0].adjusted_p_value == pytest.approx(expected[0])
    # an arm without any p-value does not take part in the correction
    joint = msprt_across_arms([_msprt([0.5, 0.03]), _msprt([math.nan, math.nan])],
                              0.05, "holm")
    assert joint[0].adjusted_p_value == pytest.approx(0.03) and joint[0].rejected
    assert joint[1].adjusted_p_value is None and not joint[1].rejected


def test_msprt_in_the_analysis_corrects_across_arms() -> None:
    exposures, outcomes = _data([(3000, 300), (3000, 390), (3000, 310)])
    plan = _plan(sequential={"method": "msprt", "looks": 5})
    report = analyze("exp", plan, exposures, outcomes, AS_OF)
    summaries = [m.sequential for m in report.primary()]
    assert all(isinstance(s, MsprtSummary) for s in summaries)
    raw = [s.always_valid_p_value for s in summaries if isinstance(s, MsprtSummary)]
    adjusted = [s.adjusted_p_value for s in summaries if isinstance(s, MsprtSummary)]
    # the running p-values only fall, so the last look's correction is the smallest
    assert adjusted == pytest.approx(multipletests(raw, method="holm")[1], rel=1e-12)
    for summary in summaries:
        assert isinstance(summary, MsprtSummary)
        assert summary.alpha == pytest.approx(0.025) and summary.treatment_arms == 2
        assert summary.rejected == (summary.adjusted_p_value is not None
                                    and summary.adjusted_p_value <= 0.05)
    # the confidence sequence is at alpha/2: wider than the same arm's at alpha
    alone = analyze("exp", plan, *_data([(3000, 300), (3000, 390)]), AS_OF)
    one = alone.primary()[0].sequential
    two = summaries[0]
    assert isinstance(one, MsprtSummary) and isinstance(two, MsprtSummary)
    assert one.always_valid_p_value == pytest.approx(two.always_valid_p_value, rel=1e-12)
    assert two.ci_low < one.ci_low and two.ci_high > one.ci_high
    assert any("adjusted across 2 treatment arms by holm" in r
               for r in report.decision.reasons)


# --------------------------------------------------------------------------- power


def _normal_nobs1(effect: float, alpha: float, power: float) -> float:
    """statsmodels' power equation (both tails) solved tightly for equal arms."""
    engine = NormalIndPower()
    return float(optimize.brentq(
        lambda n: float(engine.power(effect_size=effect, nobs1=n, alpha=alpha, ratio=1.0,
                                     alternative="two-sided")) - power,
        1.0, 1e12, xtol=1e-12, rtol=1e-15))


@pytest.mark.parametrize("arms", [1, 2, 3, 5])
def test_plan_sizes_each_comparison_at_alpha_over_the_arms(arms: int) -> None:
    result = power_plan("proportion", 0.1, 0.1, relative=True, alpha=0.05, power=0.8,
                        daily_units=10_000, allocation=0.5, treatment_arms=arms)
    level = 0.05 / arms
    effect = float(proportion_effectsize(0.11, 0.1))
    assert result.comparison_alpha == pytest.approx(level, rel=1e-15)
    assert result.n_per_arm_exact == pytest.approx(_normal_nobs1(effect, level, 0.8), rel=1e-9)
    solved = NormalIndPower().solve_power(effect_size=effect, nobs1=None, alpha=level,
                                          power=0.8, ratio=1.0)
    assert result.n_per_arm_exact == pytest.approx(float(solved), rel=1e-4)
    # the textbook normal approximation, one tail: n = 2·((z_{1-α/2K} + z_β)/h)²
    textbook = 2 * ((special.ndtri(1 - level / 2) + special.ndtri(0.8)) / effect) ** 2
    assert result.n_per_arm_exact == pytest.approx(textbook, rel=1e-5)
    assert result.n_per_arm_exact <= textbook  # the wrong-direction tail adds a little power
    assert result.total_units == (arms + 1) * result.n_per_arm
    assert result.days == math.ceil((arms + 1) * result.n_per_arm / 5000)
    assert result.treatment_arms == arms
    assert ("/ " in result.alpha_rule) == (arms > 1)


def test_plan_mean_metric_with_arms_and_invalid_arms() -> None:
    one = power_plan("mean", None, 2.0, relative=False, std_dev=25.0)
    three = power_plan("mean", None, 2.0, relative=False, std_dev=25.0, treatment_arms=3)
    assert three.n_per_arm_exact == pytest.approx(
        _normal_nobs1(2.0 / 25.0, 0.05 / 3, 0.8), rel=1e-9)
    assert three.n_per_arm > one.n_per_arm
    for bad in (0, -1):
        with pytest.raises(ValueError, match="arms"):
            power_plan("mean", None, 2.0, relative=False, std_dev=25.0, treatment_arms=bad)


def test_plan_command_says_the_alpha_it_used(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["plan", "--metric-type", "proportion", "--baseline", "0.10", "--mde", "0.05",
            "--relative", "--daily-units", "20000", "--allocation", "0.5"]
    assert main([*argv, "--arms", "2", "--json"]) == 0
    body = json.loads(capsys.readouterr().out)
    assert body["treatment_arms"] == 2 and body["comparison_alpha"] == 0.025
    assert body["total_units"] == 3 * body["n_per_arm"]
    assert "alpha 0.05 / 2 treatment arms" in body["alpha_rule"]
    assert "Bonferroni" in body["alpha_rule"]
    assert main([*argv, "--arms", "2"]) == 0
    text = capsys.readouterr().out
    assert "0.025 per comparison" in text and "over 3 arms" in text
    assert main([*argv, "--arms", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rampart: error:") and err.count("\n") == 1 and "arms" in err
