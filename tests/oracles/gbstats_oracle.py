"""GrowthBook's ``gbstats`` 0.8.0 as a test oracle for ``rollout/stats``.

Run with the oracle environment's interpreter (``.rampart/oracle-venv``, built
from ``requirements.txt`` beside this file), never with Rampart's own: gbstats
pins numpy<2 and pandas<2. Reads a JSON list of cases on stdin and prints a
JSON list of results, one per case, in the same order::

    [{"id": "...", "method": "srm", "users": [...], "weights": [...]},
     {"id": "...", "method": "ttest", "control": STAT, "treatment": STAT,
      "alpha": 0.05, "difference_type": "absolute" | "relative"},
     {"id": "...", "method": "sequential", ... as ttest ...,
      "tuning_parameter": 5000},
     {"id": "...", "method": "bayesian", ... as ttest ...,
      "prior": {"mean": 0, "variance": 1, "proper": false}, "inverse": false}]

    STAT = {"kind": "mean", "n": int, "sum": float, "sum_squares": float}
         | {"kind": "proportion", "n": int, "sum": float}
         | {"kind": "ratio", "n": int, "numerator": STAT, "denominator": STAT,
            "sum_products": float}
         | {"kind": "regression_adjusted", "n": int, "post": STAT, "pre": STAT,
            "sum_products": float}

Every number below is what gbstats itself computes; nothing is re-derived
here except reading properties gbstats already exposes on its test objects.

What gbstats 0.8.0 computes, and where it coincides with Rampart
================================================================

``TwoSidedTTest`` (frequentist engine). Point estimate ``m_b − m_a`` or
``(m_b − m_a)/m_a``; variance ``V_b/n_b + V_a/n_a`` or the delta-method
``V_b/(m_a²n_b) + V_a·m_b²/(m_a⁴n_a)`` (``V`` per-unit variances); a Welch t
with Welch–Satterthwaite df computed from the *absolute* per-arm variances,
used for the p-value and for the CI of both the absolute and the relative
effect. Per-unit variances: ``SampleMeanStatistic`` ddof 1,
``ProportionStatistic`` ``p(1−p)`` (ddof 0).

* ``welch_ttest`` ≡ absolute ``TwoSidedTTest`` on ``SampleMeanStatistic``:
  effect, standard error, t, p-value and CI (hence the df) coincide. Relative: the
  estimate and the delta-method standard error coincide; Rampart's relative CI
  uses the normal quantile where gbstats uses the Welch t quantile, so the
  relative CI is compared as ``estimate ± z·se`` with gbstats' se.
* ``two_proportion_ztest``: its std_error is the unpooled
  ``√(p_a(1−p_a)/n_a + p_b(1−p_b)/n_b)``, which is gbstats' variance for
  ``ProportionStatistic``; effect, se, relative effect and relative se
  coincide, CIs are compared with the normal quantile. Not compared: the test
  statistic and p-value (Rampart's z uses the *pooled* null variance, gbstats
  an unpooled t with Welch df computed from ``p(1−p)`` as if it were a sample
  variance).
* ``ratio_effect`` ≡ ``RatioStatistic`` (per-unit delta-method variance
  ``s_m²/μ_d² − 2·cov·μ_m/μ_d³ + μ_m²·s_d²/μ_d⁴``, ddof 1): ratios, effect,
  se, z statistic (gbstats' ``critical_value``), relative effect and relative
  se coincide. gbstats then uses a t reference with a Welch df on the
  linearized variances, Rampart a normal one, so p-values are not compared and
  CIs are compared with the normal quantile.
* ``srm_test`` ≡ ``check_srm`` (Pearson χ², ``k − 1`` df) when every weight is
  positive. With a zero weight gbstats drops that arm from the sum but keeps
  it in the df (and ignores units that reached it), Rampart drops it from the
  df too and flags units in it as a certain mismatch; with no units gbstats
  returns p = 1, Rampart an error. Those cases are not compared.
* ``msprt`` ≡ ``SequentialTwoSidedTTest`` at one look: gbstats' e-value is
  the normal-mixture likelihood ratio with mixing variance
  ``τ² = N·ρ²·V`` (``N = n_a + n_b``, ``ρ`` from the tuning parameter and
  α, ``V`` the estimate's variance) and its interval is the matching
  confidence sequence, so Rampart's p-value and interval with that τ²
  coincide. Rampart's running minimum / intersection over looks has no
  counterpart (gbstats reports each look alone), so only single looks are
  compared.
* ``normal_means`` vs ``EffectBayesianABTest`` with an improper prior: a
  normal posterior for the difference, ``N(Δ̂, V_a/n_a + V_b/n_b)``, with
  chance to win ``Φ(Δ̂/se)``, an equal-tailed credible interval and expected
  losses ``E[max(±Δ, 0)]``. gbstats' ``risk`` is ``[loss of choosing
  control, loss of choosing treatment]``.

Not compared:

* ``cuped_effect``: gbstats' ``RegressionAdjustedStatistic`` takes one
  ``θ = Cov(y, x)/Var(x)`` over both arms pooled as one sample; Rampart gives
  each arm its own slope on the covariate centred at the pooled mean (Lin
  2013), which cannot cost precision whatever the split. The two coincide in
  no useful case, so ``tests/integration/test_stats_oracles.py`` checks CUPED
  against per-arm statsmodels OLS fits instead.
* Beta-binomial (``beta_binomial``): gbstats 0.8.0 has no conjugate Beta
  model; its Bayesian engine approximates every metric by a normal on the
  (relative or absolute) lift with a Gaussian prior on the *relative* lift.
* ``normal_means``' relative credible interval: Fieller's interval for the
  ratio of two normal posteriors (unbounded when the control's posterior
  reaches zero), where gbstats puts a delta-method normal on the lift.
* Lan-DeMets group-sequential boundaries: gbstats has no group-sequential
  design. (spotify-confidence's solver spends only with the power family
  ``α·t^φ`` on a coarse trapezoid grid, which matches neither of Rampart's
  spending functions, so it is not part of this environment.)
* gbstats' relative-effect p-values (a t-test on the relative lift), its
  one-sided tests, quantile metrics and ``scaled`` differences: Rampart has no
  counterpart.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from gbstats.bayesian.tests import EffectBayesianABTest, EffectBayesianConfig, GaussianPrior
from gbstats.frequentist.tests import (
    FrequentistConfig,
    SequentialConfig,
    SequentialTwoSidedTTest,
    TwoSidedTTest,
)
from gbstats.models.statistics import (
    ProportionStatistic,
    RatioStatistic,
    RegressionAdjustedStatistic,
    SampleMeanStatistic,
)
from gbstats.utils import check_srm

Json = dict[str, Any]


def build_statistic(spec: Json) -> Any:
    """A gbstats statistic from its JSON description."""
    kind = spec["kind"]
    n = int(spec["n"])
    if kind == "mean":
        return SampleMeanStatistic(
            n=n, sum=float(spec["sum"]), sum_squares=float(spec["sum_squares"])
        )
    if kind == "proportion":
        return ProportionStatistic(n=n, sum=float(spec["sum"]))
    if kind == "ratio":
        return RatioStatistic(
            n=n,
            m_statistic=build_statistic(spec["numerator"]),
            d_statistic=build_statistic(spec["denominator"]),
            m_d_sum_of_products=float(spec["sum_products"]),
        )
    if kind == "regression_adjusted":
        return RegressionAdjustedStatistic(
            n=n,
            post_statistic=build_statistic(spec["post"]),
            pre_statistic=build_statistic(spec["pre"]),
            post_pre_sum_of_products=float(spec["sum_products"]),
            theta=0.0,
        )
    raise ValueError(f"unknown statistic kind {kind!r}")


def _theta(test: Any) -> float | None:
    """The θ gbstats settled on, or None when the statistic is not regression-adjusted.

    gbstats swaps a regression-adjusted pair for its post statistics when its
    θ is zero, so a pair that was asked for but is gone reports 0.
    """
    if isinstance(test.stat_a, RegressionAdjustedStatistic):
        return float(test.stat_a.theta)
    return None


def _arm_fields(test: Any) -> Json:
    return {
        "mean_control": float(test.stat_a.mean),
        "mean_treatment": float(test.stat_b.mean),
        "unadjusted_mean_control": float(test.stat_a.unadjusted_mean),
        "unadjusted_mean_treatment": float(test.stat_b.unadjusted_mean),
        "variance_control": float(test.stat_a.variance),
        "variance_treatment": float(test.stat_b.variance),
    }


def run_ttest(case: Json) -> Json:
    adjusted = case["control"]["kind"] == "regression_adjusted"
    config = FrequentistConfig(alpha=float(case["alpha"]), difference_type=case["difference_type"])
    test = TwoSidedTTest(
        build_statistic(case["control"]), build_statistic(case["treatment"]), config
    )
    result = test.compute_result()
    out: Json = {
        "expected": float(result.expected),
        "ci_low": float(result.ci[0]),
        "ci_high": float(result.ci[1]),
        "p_value": float(result.p_value),
        "std_error": float(result.uplift.stddev),
        "error": result.error_message,
        "theta": (_theta(test) or 0.0) if adjusted else None,
    }
    if result.error_message is None:
        out.update(_arm_fields(test))
        out["statistic"] = float(test.critical_value)
        out["dof"] = float(test.dof)
        out["variance"] = float(test.variance)
    return out


def run_sequential(case: Json) -> Json:
    config = SequentialConfig(
        alpha=float(case["alpha"]),
        difference_type=case["difference_type"],
        sequential_tuning_parameter=float(case["tuning_parameter"]),
    )
    test = SequentialTwoSidedTTest(
        build_statistic(case["control"]), build_statistic(case["treatment"]), config
    )
    result = test.compute_result()
    out: Json = {
        "expected": float(result.expected),
        "ci_low": float(result.ci[0]),
        "ci_high": float(result.ci[1]),
        "p_value": float(result.p_value),
        "std_error": float(result.uplift.stddev),
        "error": result.error_message,
    }
    if result.error_message is None:
        out["rho"] = float(test.rho)
        out["n_total"] = int(test.stat_a.n + test.stat_b.n)
        out["variance"] = float(test.variance)
    return out


def run_bayesian(case: Json) -> Json:
    prior = case.get("prior", {})
    config = EffectBayesianConfig(
        alpha=float(case["alpha"]),
        difference_type=case["difference_type"],
        inverse=bool(case.get("inverse", False)),
        prior_effect=GaussianPrior(
            mean=float(prior.get("mean", 0.0)),
            variance=float(prior.get("variance", 1.0)),
            proper=bool(prior.get("proper", False)),
        ),
        prior_type=prior.get("type", "relative"),
    )
    test = EffectBayesianABTest(
        build_statistic(case["control"]), build_statistic(case["treatment"]), config
    )
    result = test.compute_result()
    return {
        "chance_to_win": float(result.chance_to_win),
        "expected": float(result.expected),
        "ci_low": float(result.ci[0]),
        "ci_high": float(result.ci[1]),
        "std_error": float(result.uplift.stddev),
        "risk_control": float(result.risk[0]),
        "risk_treatment": float(result.risk[1]),
        "error": result.error_message,
    }


def run_srm(case: Json) -> Json:
    users = [int(u) for u in case["users"]]
    weights = [float(w) for w in case["weights"]]
    return {"p_value": float(check_srm(users, weights))}


METHODS = {
    "srm": run_srm,
    "ttest": run_ttest,
    "sequential": run_sequential,
    "bayesian": run_bayesian,
}


def main() -> int:
    cases = json.load(sys.stdin)
    if not isinstance(cases, list):
        print("expected a JSON list of cases on stdin", file=sys.stderr)
        return 2
    results = []
    for case in cases:
        method = case.get("method")
        if method not in METHODS:
            print(f"case {case.get('id')!r}: unknown method {method!r}", file=sys.stderr)
            return 2
        result = METHODS[method](case)
        result["id"] = case.get("id")
        result["method"] = method
        results.append(result)
    json.dump(results, sys.stdout, allow_nan=True)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
