"""Post-stratification (Miratrix, Sekhon & Yu 2013) of the primary metric.

The estimator against independent recomputations (statsmodels' fully interacted
OLS for the point estimate and its HC2 variance, pandas groupby for the
documented variance), its coverage and variance reduction in simulation, small
strata, the plan field, and ``rampart analyze`` end to end.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from numpy.typing import NDArray
from scipy import stats
from statsmodels.regression.linear_model import OLS

from rollout.experiments.analysis import MICROS, stratified_results
from rollout.experiments.data import PlanChanged, plan_fingerprint, register_plan
from rollout.experiments.report import render_html
from rollout.experiments.stats.stratified import (
    SMALL_STRATA,
    Stratum,
    post_stratified_effect,
)
from rollout.experiments.stats.summary import MeanSummary
from serving.cli.analyze import run_analysis, summary_text
from serving.cli.main import main
from serving.kernel.analysis_plan import AnalysisPlan
from serving.kernel.config import parse_config
from serving.kernel.errors import ConfigError
from tests.unit.test_analysis import (
    ANALYSIS,
    AS_OF,
    START,
    _config,
    experiment_document,
    write_experiment,
)

ALPHA = 0.05
# Analyses "now" before the start may change the plan: one log, several plans.
BEFORE_START = START - dt.timedelta(days=1)


def _summary(y: NDArray[np.float64]) -> MeanSummary:
    return MeanSummary(int(y.size), float(y.sum()), float(np.dot(y, y)))


def _strata(y: NDArray[np.float64], treated: NDArray[np.bool_],
            stratum: NDArray[np.int64], labels: list[str]) -> list[Stratum]:
    return [Stratum(label, _summary(y[(stratum == s) & ~treated]),
                    _summary(y[(stratum == s) & treated])) for s, label in enumerate(labels)]


def _design(seed: int, n: int, shares: list[float], treated_share: float
            ) -> tuple[NDArray[np.float64], NDArray[np.bool_], NDArray[np.int64]]:
    """Strata with very different means and spreads, and a treatment effect that
    differs by stratum."""
    rng = np.random.default_rng(seed)
    stratum = rng.choice(len(shares), size=n, p=shares).astype(np.int64)
    treated = rng.random(n) < treated_share
    level = np.array([0.0, 4.0, -3.0, 9.0, 1.5])[stratum]
    spread = np.array([1.0, 2.0, 0.5, 3.0, 1.0])[stratum]
    lift = np.array([0.3, -0.2, 0.8, 0.1, 0.0])[stratum]
    y = level + spread * rng.standard_normal(n) + lift * treated
    return y, treated, stratum


@pytest.mark.parametrize(("seed", "n", "shares", "treated_share"), [
    (1, 2_000, [0.5, 0.3, 0.2], 0.5),
    (2, 3_000, [0.1, 0.2, 0.3, 0.25, 0.15], 0.2),
    (3, 500, [0.6, 0.4], 0.7),
])
def test_estimate_equals_interacted_ols_and_the_variance_its_formula(
        seed: int, n: int, shares: list[float], treated_share: float) -> None:
    y, treated, stratum = _design(seed, n, shares, treated_share)
    labels = [f"s{k}" for k in range(len(shares))]
    ours = post_stratified_effect(_strata(y, treated, stratum, labels), ALPHA)
    est = ours.estimate
    assert est.error is None and not ours.collapsed and len(ours.strata) == len(shares)

    # Point estimate: the treatment coefficient of y ~ 1 + T + D̃ + T·D̃ with the
    # stratum dummies D centred on their pooled means (Lin 2013).
    dummies = np.eye(len(shares))[stratum][:, 1:]
    centred = dummies - dummies.mean(axis=0)
    t = treated.astype(float)
    design = np.column_stack([np.ones(n), t, centred, t[:, None] * centred])
    fit = OLS(y, design).fit(cov_type="HC2")
    assert est.abs_effect == pytest.approx(float(fit.params[1]), rel=1e-10, abs=1e-12)

    # Variance: Σ_s w_s² (s²_t,s/n_t,s + s²_c,s/n_c,s) from a pandas groupby.
    frame = pd.DataFrame({"y": y, "stratum": stratum, "treated": treated})
    cells = frame.groupby(["stratum", "treated"])["y"].agg(["count", "mean", "var"])
    weights = frame.groupby("stratum").size() / n
    per_arm = (cells["var"] / cells["count"]).unstack("treated")
    variance = float((weights**2 * (per_arm[True] + per_arm[False])).sum())
    means = cells["mean"].unstack("treated")
    effect = float((weights * (means[True] - means[False])).sum())
    assert est.abs_effect == pytest.approx(effect, rel=1e-10)
    assert est.std_error**2 == pytest.approx(variance, rel=1e-10)
    # Lin's HC2 variance of the interacted regression is the same number.
    assert est.std_error**2 == pytest.approx(float(fit.bse[1]) ** 2, rel=1e-9)

    unadjusted = float(np.var(y[treated], ddof=1) / treated.sum()
                       + np.var(y[~treated], ddof=1) / (~treated).sum())
    assert ours.unadjusted_std_error == pytest.approx(math.sqrt(unadjusted), rel=1e-10)
    assert ours.variance_reduction == pytest.approx(1.0 - variance / unadjusted, rel=1e-9)
    assert ours.variance_reduction > 0.3  # the strata explain much of y
    z = stats.norm.ppf(1.0 - ALPHA / 2.0)
    se = math.sqrt(variance)
    assert est.ci_low == pytest.approx(effect - z * se, rel=1e-9)
    assert est.ci_high == pytest.approx(effect + z * se, rel=1e-9)
    assert est.p_value == pytest.approx(2.0 * stats.norm.sf(abs(effect) / se), rel=1e-8)
    assert est.mean_control == pytest.approx(float((weights * means[False]).sum()), rel=1e-10)
    assert [s.weight for s in ours.strata] == pytest.approx(weights.to_list(), rel=1e-12)
    assert [s.n_control for s in ours.strata] == cells["count"].unstack("treated")[
        False].to_list()


def test_simulated_coverage_and_variance_below_the_unadjusted() -> None:
    """1,000 experiments whose strata explain most of y: the post-stratified
    estimate varies less than the plain difference (its estimated variance and
    its spread over runs), and its 95% interval covers the effect at the
    experiment's stratum mix (the documented estimand) 95% ± 1.5% of the time."""
    rng = np.random.default_rng(20260501)
    runs, n, shares = 1_000, 600, np.array([0.5, 0.3, 0.2])
    level, spread = np.array([0.0, 5.0, -4.0]), np.array([1.0, 1.5, 0.7])
    lift = np.array([0.5, 0.1, -0.3])
    covered, reductions, ps_effects, plain_effects = 0, [], [], []
    for _ in range(runs):
        stratum = rng.choice(3, size=n, p=shares)
        treated = rng.random(n) < 0.4
        y = level[stratum] + spread[stratum] * rng.standard_normal(n) + lift[stratum] * treated
        cell = stratum * 2 + treated
        counts = np.bincount(cell, minlength=6)
        sums = np.bincount(cell, weights=y, minlength=6)
        squares = np.bincount(cell, weights=y * y, minlength=6)
        result = post_stratified_effect(
            [Stratum(str(s), MeanSummary(int(counts[2 * s]), sums[2 * s], squares[2 * s]),
                     MeanSummary(int(counts[2 * s + 1]), sums[2 * s + 1], squares[2 * s + 1]))
             for s in range(3)], ALPHA)
        est = result.estimate
        assert est.error is None
        truth = float(np.dot(np.bincount(stratum, minlength=3) / n, lift))
        covered += est.ci_low <= truth <= est.ci_high
        reductions.append(result.variance_reduction)
        ps_effects.append(est.abs_effect - truth)
        plain_effects.append(y[treated].mean() - y[~treated].mean() - truth)
    assert 0.935 <= covered / runs <= 0.965
    assert min(reductions) > 0.0 and float(np.mean(reductions)) > 0.8
    assert np.var(ps_effects) < 0.25 * np.var(plain_effects)


def _arm(n: int, mean: float, seed: int) -> MeanSummary:
    values = mean + np.random.default_rng(seed).standard_normal(n)
    return _summary(values)


def test_small_strata_are_pooled_into_one() -> None:
    big = [Stratum("android", _arm(400, 1.0, 1), _arm(380, 1.4, 2)),
           Stratum("ios", _arm(200, 3.0, 3), _arm(210, 3.1, 4))]
    small = [Stratum("web", _arm(1, 2.0, 5), _arm(6, 2.0, 6)),
             Stratum("tv", _arm(3, 0.0, 7), _arm(0, 0.0, 8)),
             Stratum("car", _arm(2, 5.0, 9), _arm(1, 5.0, 10))]
    empty = [Stratum("never", MeanSummary(0, 0.0, 0.0), MeanSummary(0, 0.0, 0.0))]
    result = post_stratified_effect([*big, *small, *empty], ALPHA)
    assert result.estimate.error is None
    assert result.collapsed == ("web", "tv", "car")  # the empty stratum just has no weight
    assert [s.label for s in result.strata] == ["android", "ios", SMALL_STRATA]
    assert (result.strata[-1].n_control, result.strata[-1].n_treatment) == (6, 7)

    def total(arms: list[MeanSummary]) -> MeanSummary:
        return MeanSummary(sum(a.n for a in arms), sum(a.sum for a in arms),
                           sum(a.sum_squares for a in arms))

    pooled = Stratum(SMALL_STRATA, total([s.control for s in small]),
                     total([s.treatment for s in small]))
    by_hand = post_stratified_effect([*big, pooled], ALPHA)
    assert result.estimate.abs_effect == pytest.approx(by_hand.estimate.abs_effect, rel=1e-12)
    assert result.estimate.std_error == pytest.approx(by_hand.estimate.std_error, rel=1e-12)


def test_a_pool_still_too_small_joins_the_largest_stratum() -> None:
    android = Stratum("android", _arm(400, 1.0, 1), _arm(380, 1.4, 2))
    ios = Stratum("ios", _arm(50, 3.0, 3), _arm(60, 3.1, 4))
    web = Stratum("web", _arm(1, 2.0, 5), _arm(6, 2.0, 6))
    result = post_stratified_effect([ios, android, web], ALPHA)
    assert result.estimate.error is None and result.collapsed == ("web",)
    assert [s.label for s in result.strata] == ["ios", f"android + {SMALL_STRATA}"]
    assert result.strata[1].n_control == 401 and result.strata[1].n_treatment == 386


def test_one_stratum_is_the_plain_difference_and_too_few_units_no_estimate() -> None:
    control, treatment = _arm(300, 1.0, 1), _arm(200, 1.3, 2)
    alone = post_stratified_effect([Stratum("all", control, treatment)], ALPHA)
    assert alone.estimate.abs_effect == pytest.approx(treatment.mean - control.mean, rel=1e-12)
    assert alone.estimate.std_error == pytest.approx(alone.unadjusted_std_error, rel=1e-12)
    assert alone.variance_reduction == pytest.approx(0.0, abs=1e-12)
    # every stratum small, but the arms together are not: one pooled stratum
    tiny = [Stratum(f"s{k}", _arm(1, 1.0, k), _arm(1, 2.0, 10 + k)) for k in range(4)]
    pooled = post_stratified_effect(tiny, ALPHA)
    assert pooled.estimate.error is None
    assert [s.label for s in pooled.strata] == [SMALL_STRATA] and len(pooled.collapsed) == 4
    few = post_stratified_effect([Stratum("a", _arm(1, 1.0, 1), _arm(10, 1.0, 2))], ALPHA)
    assert few.estimate.error == "too_few_units" and math.isnan(few.variance_reduction)
    none = post_stratified_effect([Stratum("a", MeanSummary(0, 0.0, 0.0), _arm(5, 1.0, 2))])
    assert none.estimate.error == "empty_arm"
    assert post_stratified_effect([], ALPHA).estimate.error == "empty_arm"
    assert post_stratified_effect([Stratum("a", control, treatment)], 1.5
                                  ).estimate.error == "invalid_alpha"
    bad = MeanSummary(3, math.nan, 1.0)
    assert post_stratified_effect([Stratum("a", bad, treatment)]).estimate.error == (
        "invalid_input")
    # constant within every stratum and arm: nothing to test, yet the strata
    # explained all of the variance
    ones, twos, zeros = MeanSummary(3, 3.0, 3.0), MeanSummary(3, 6.0, 12.0), MeanSummary(3, 0, 0)
    flat = post_stratified_effect([Stratum("a", ones, twos), Stratum("b", zeros, ones)])
    assert flat.estimate.error == "zero_variance" and flat.variance_reduction == 1.0


# --------------------------------------------------------------------------- the plan


@pytest.mark.parametrize(("strata", "message"), [
    (["platform", "platform"], "strata must be distinct"),
    (["a", "b", "c", "d"], "at most 3 strata attributes"),
])
def test_an_invalid_strata_plan_is_refused_with_its_path(
        tmp_path: Path, strata: list[str], message: str,
        capsys: pytest.CaptureFixture[str]) -> None:
    document = experiment_document(tmp_path, {**ANALYSIS, "strata": strata})
    with pytest.raises(ConfigError) as caught:
        parse_config(document)
    assert "experiments.0.analysis.strata" in str(caught.value)
    assert message in str(caught.value)
    path = tmp_path / "rampart.yaml"
    path.write_text(json.dumps(document))  # YAML is a superset of JSON
    assert main(["analyze", "--config", str(path), "--experiment", "exp"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rampart: error: ") and "experiments.0.analysis.strata" in err
    assert "Traceback" not in err


def test_strata_need_a_binary_or_mean_primary(tmp_path: Path) -> None:
    ratio = {**ANALYSIS, "primary": {"name": "revenue", "type": "ratio",
                                     "denominator": "sessions"},
             "secondary": [], "strata": ["platform"]}
    with pytest.raises(ConfigError, match="post-stratification estimates a binary or mean"):
        parse_config(experiment_document(tmp_path, ratio))


def test_strata_are_pre_registered_and_leave_other_plans_fingerprints_alone(
        tmp_path: Path) -> None:
    plan = _config(tmp_path).experiments[0].analysis
    assert isinstance(plan, AnalysisPlan) and plan.strata == ()
    digest, body = plan_fingerprint(plan)
    assert "strata" not in body  # a plan recorded before strata existed keeps its digest
    stratified = plan.model_copy(update={"strata": ("platform",)})
    other, body = plan_fingerprint(stratified)
    assert body["strata"] == ["platform"] and other != digest
    directory = tmp_path / "prereg"
    register_plan(directory, "exp", stratified, START)
    with pytest.raises(PlanChanged, match=r"strata: \[\"platform\"\] -> null"):
        register_plan(directory, "exp", plan, AS_OF)


# --------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def logged(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("strata")
    return tmp, write_experiment(tmp, units=6_000)


def test_analyze_reports_the_primary_post_stratified(
        logged: tuple[Path, dict[str, Any]]) -> None:
    tmp, truth = logged
    config = _config(tmp, {**ANALYSIS, "strata": ["platform"]})
    report = run_analysis(config, "exp", as_of=AS_OF, now=BEFORE_START)
    document = report.to_json()
    primary = next(m for m in document["metrics"] if m["role"] == "primary")
    stratified = primary["stratified"]
    assert stratified["method"] == "post_stratified" and stratified["attributes"] == ["platform"]
    assert stratified["error"] is None and stratified["collapsed"] == []
    platform, treated = truth["platform"], truth["treated"]
    counts = {s["stratum"]: (s["n_control"], s["n_treatment"]) for s in stratified["strata"]}
    assert counts == {p: (int(np.sum((platform == p) & ~treated)),
                          int(np.sum((platform == p) & treated))) for p in ("ios", "android")}
    assert sum(s["weight"] for s in stratified["strata"]) == pytest.approx(1.0)
    assert stratified["ci_low"] < stratified["abs_effect"] < stratified["ci_high"]
    assert stratified["variance_reduction"] is not None
    assert stratified["unadjusted_std_error"] > 0
    # the decision and the primary's pre-registered figures do not change
    plain = run_analysis(_config(tmp), "exp", as_of=AS_OF, now=BEFORE_START)
    assert plain.primary()[0].stratified is None
    unchanged = report.primary()[0].model_copy(update={"stratified": None})
    assert unchanged == plain.primary()[0] and report.decision == plain.decision
    assert ("post-stratified by platform (2 strata): variance"
            in summary_text(report))
    assert "post-stratified by platform (2 strata)" in render_html(document)


def test_a_missing_attribute_is_one_stratum_of_its_own(
        logged: tuple[Path, dict[str, Any]]) -> None:
    tmp, _ = logged
    config = _config(tmp, {**ANALYSIS, "strata": ["platform", "country"]})
    primary = run_analysis(config, "exp", as_of=AS_OF, now=BEFORE_START).primary()[0]
    assert primary.stratified is not None
    labels = {s.stratum for s in primary.stratified.strata}
    assert labels == {"ios / (missing)", "android / (missing)"}
    alone = run_analysis(_config(tmp, {**ANALYSIS, "strata": ["country"]}), "exp",
                         as_of=AS_OF, now=BEFORE_START).primary()[0].stratified
    assert alone is not None and [s.stratum for s in alone.strata] == ["(missing)"]
    # one stratum: the plain difference in means
    plain = primary.unadjusted
    assert alone.abs_effect == pytest.approx(plain.abs_effect, rel=1e-12)
    assert alone.variance_reduction == pytest.approx(0.0, abs=1e-12)


def test_the_compiled_kernels_give_the_same_strata(
        logged: tuple[Path, dict[str, Any]]) -> None:
    """Every (stratum, arm) cell's sums in one pass of either kernels."""
    from rollout.experiments.compiled_kernels import load_compiled
    from rollout.experiments.data import load_experiment, plan_metrics

    tmp, _ = logged
    config = _config(tmp, {**ANALYSIS, "strata": ["platform"]})
    experiment = config.experiments[0]
    plan = experiment.analysis
    assert plan is not None
    data = load_experiment(tmp / "decisions", tmp / "outcomes", experiment, plan_metrics(plan),
                           AS_OF, ("platform",))
    as_of_us = int(AS_OF.timestamp() * MICROS)
    reference = stratified_results(plan, data.exposures, data.outcomes, as_of_us)
    compiled = stratified_results(plan, data.exposures, data.outcomes, as_of_us,
                                  kernels=load_compiled())
    assert reference[1].strata == compiled[1].strata
    assert reference[1].abs_effect == pytest.approx(compiled[1].abs_effect, rel=1e-12)
    assert reference[1].std_error == pytest.approx(compiled[1].std_error, rel=1e-12)
    # a caller that did not load the attributes is told so, not given one stratum
    bare = load_experiment(tmp / "decisions", tmp / "outcomes", experiment,
                           plan_metrics(plan), AS_OF, ())
    missing = stratified_results(plan, bare.exposures, bare.outcomes, as_of_us)
    assert missing[1].error == "strata_not_loaded" and missing[1].abs_effect is None
