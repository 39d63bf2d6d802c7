"""Analysis of a bandit run by inverse-propensity weighting.

Under adaptive allocation an arm's traffic is not a random sample of the run:
it is concentrated in the periods when the policy favoured the arm. When the
reward level drifts over the run (a weekly cycle, a trend), the plain
difference of means then mixes the arm effect with the drift. Weighting each
decision by the inverse of its logged propensity ``πₜ`` (the probability the
policy gave the chosen arm when it chose) undoes that.

Inputs are per-decision arrays: the chosen arm's index ``Aₜ``, its logged
propensity ``πₜ`` and the reward ``Yₜ``; optionally a reward model's
prediction ``m̂ₜ(a)`` for every arm at every decision. The estimand of arm
``a`` is ``μ̄ₐ = (1/T)·Σₜ μₐ(t)``, the mean reward had every decision of the
run gone to ``a``.

Estimators (per arm, and each arm minus the control):

- Horvitz-Thompson (Horvitz & Thompson 1952): ``(1/T)·Σ 1{Aₜ=a}·Yₜ/πₜ``.
- Hajek (self-normalised; Hajek 1971): ``Σ 1{Aₜ=a}Yₜ/πₜ / Σ 1{Aₜ=a}/πₜ``, a
  ratio of two unbiased sums; it is invariant to adding a constant to every
  reward, so a drift common to all arms does not inflate its variance.
- Augmented IPW, doubly robust (Robins, Rotnitzky & Zhao 1994), when
  predictions are given: ``(1/T)·Σ m̂ₜ(a) + 1{Aₜ=a}(Yₜ − m̂ₜ(a))/πₜ``; unbiased
  whatever the predictions (the propensities are known), and of smaller
  variance the better they are.
- The naive difference of means with its Welch standard error, reported next
  to them and flagged ``biased=True`` with the reason.

Variance: the martingale-sum estimator. Each estimator is (to first order)
``(1/T)·Σₜ ξₜ`` where, given the history before decision ``t``, the ``ξₜ``
have known-propensity conditional mean ``μₐ(t)`` (HT/AIPW) or a centred
linearised term (Hajek), so ``Σ(ξₜ − μ)`` is a martingale and
``Var ≈ (1/T²)·Σₜ (ξₜ − ξ̄)²`` estimates the sum of conditional variances
(Hall & Heyde 1980, the martingale CLT). The floor share keeps ``πₜ`` bounded
away from zero, which that central limit theorem needs; for Hajek the
linearised terms ``(T/Wₐ)·1{Aₜ=a}(Yₜ − μ̂ₐ)/πₜ`` are used. A per-arm level with
drift is estimated conservatively by this formula (the drift's spread adds to
it); a difference between arms under a drift common to both is not.

Degenerate input (no rows, an arm index out of range, a propensity outside
(0, 1], a non-finite value) gives a result whose ``status`` names it, with
``None`` in place of numbers; nothing here raises on data or returns NaN.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt
from scipy import stats as sps

Estimator = Literal["hajek", "horvitz_thompson", "aipw", "naive"]
ESTIMATORS: tuple[Estimator, ...] = ("hajek", "horvitz_thompson", "aipw", "naive")

NAIVE_REASON = (
    "difference of raw means ignores the logged propensities: under adaptive allocation "
    "each arm's traffic comes from the periods the policy favoured it, so drift in the "
    "reward level over the run is mixed into the difference")


@dataclass(frozen=True, slots=True)
class ArmEstimate:
    """One arm's mean reward by each estimator, with standard errors.

    ``status`` is ``"ok"`` or ``"no_rows"`` (the arm was never chosen: every
    number is then ``None``). ``aipw``/``aipw_se`` are ``None`` without
    predictions; ``naive_se`` is ``None`` with fewer than two rows.
    """

    arm: int
    rows: int
    status: str
    hajek: float | None = None
    hajek_se: float | None = None
    horvitz_thompson: float | None = None
    horvitz_thompson_se: float | None = None
    aipw: float | None = None
    aipw_se: float | None = None
    naive: float | None = None
    naive_se: float | None = None


@dataclass(frozen=True, slots=True)
class Difference:
    """``arm`` minus the control by one estimator: estimate, standard error and
    two-sided normal interval at the result's level.

    ``biased`` is True for the naive estimator, with ``reason`` saying why.
    ``status`` is ``"ok"``, ``"no_rows"`` (the arm or the control was never
    chosen), ``"no_predictions"`` (AIPW without predictions) or
    ``"too_few_rows"`` (naive with fewer than two rows in an arm).
    """

    arm: int
    estimator: Estimator
    status: str
    estimate: float | None = None
    se: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    biased: bool = False
    reason: str = ""


@dataclass(frozen=True, slots=True)
class IPWResult:
    """The analysis of one bandit run.

    ``status`` is ``"ok"`` or names what made the input unusable: ``"empty"``,
    ``"shape_mismatch"``, ``"arm_out_of_range"``, ``"bad_propensity"`` (outside
    (0, 1] or NaN), ``"non_finite_reward"``, ``"bad_predictions"``; ``arms`` and
    ``differences`` are then empty.
    """

    status: str
    rows: int
    control: int
    level: float
    arms: tuple[ArmEstimate, ...] = ()
    differences: tuple[Difference, ...] = ()

    def difference(self, arm: int, estimator: Estimator = "hajek") -> Difference:
        """The difference of ``arm`` against the control by ``estimator``."""
        for d in self.differences:
            if d.arm == arm and d.estimator == estimator:
                return d
        raise KeyError((arm, estimator))


def _interval(estimate: float, se: float, z: float) -> tuple[float, float]:
    return estimate - z * se, estimate + z * se


def _sum_se(terms: npt.NDArray[np.float64], total: int) -> float:
    """Martingale-sum standard error of ``mean(terms)`` over ``total`` decisions."""
    centred = terms - terms.mean()
    return math.sqrt(float(centred @ centred)) / total


def analyse_ipw(
    arms: npt.ArrayLike,
    propensities: npt.ArrayLike,
    rewards: npt.ArrayLike,
    n_arms: int,
    *,
    predictions: npt.ArrayLike | None = None,
    control: int = 0,
    level: float = 0.95,
) -> IPWResult:
    """IPW (Hajek and Horvitz-Thompson), AIPW and naive estimates of every arm
    and of every arm minus ``control``, from per-decision arrays.

    ``arms`` holds arm indices in ``[0, n_arms)``, ``propensities`` the logged
    probability of the chosen arm, ``rewards`` the rewards, and
    ``predictions`` (optional) a ``T × n_arms`` array of a reward model's
    predictions. Returns an :class:`IPWResult`; invalid data gives its
    ``status`` instead of raising. ``level`` and ``n_arms``/``control`` are
    programming parameters and raise ``ValueError`` when impossible.
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    if n_arms < 2 or not 0 <= control < n_arms:
        raise ValueError("need at least two arms and a control index among them")
    a = np.asarray(arms)
    p = np.asarray(propensities, dtype=np.float64)
    y = np.asarray(rewards, dtype=np.float64)

    def failed(status: str, rows: int = 0) -> IPWResult:
        return IPWResult(status, rows, control, level)

    if a.ndim != 1 or p.shape != a.shape or y.shape != a.shape:
        return failed("shape_mismatch")
    t = int(a.size)
    if t == 0:
        return failed("empty")
    if not np.issubdtype(a.dtype, np.integer) or a.min() < 0 or a.max() >= n_arms:
        return failed("arm_out_of_range", t)
    a = a.astype(np.int64)
    # NaN fails both comparisons, so it lands here too.
    if not np.all((p > 0.0) & (p <= 1.0)):
        return failed("bad_propensity", t)
    if not np.all(np.isfinite(y)):
        return failed("non_finite_reward", t)
    m: npt.NDArray[np.float64] | None = None
    if predictions is not None:
        m = np.asarray(predictions, dtype=np.float64)
        if m.shape != (t, n_arms) or not np.all(np.isfinite(m)):
            return failed("bad_predictions", t)

    z = float(sps.norm.ppf(0.5 + level / 2.0))
    inv = 1.0 / p
    # Per arm, per decision: the HT term, the Hajek linearised term and the AIPW term.
    ht_terms: dict[int, npt.NDArray[np.float64]] = {}
    hajek_terms: dict[int, npt.NDArray[np.float64]] = {}
    aipw_terms: dict[int, npt.NDArray[np.float64]] = {}
    hajek_means: dict[int, float] = {}
    estimates: list[ArmEstimate] = []
    for arm in range(n_arms):
        chosen = a == arm
        rows = int(chosen.sum())
        if rows == 0:
            estimates.append(ArmEstimate(arm, 0, "no_rows"))
            continue
        w = np.where(chosen, inv, 0.0)
        ht = w * y
        ht_mean = float(ht.mean())
        weight_sum = float(w.sum())
        hajek = float(ht.sum()) / weight_sum
        lin = (t / weight_sum) * w * (y - hajek)
        ht_terms[arm], hajek_terms[arm], hajek_means[arm] = ht, lin, hajek
        aipw = aipw_se = None
        if m is not None:
            gamma = m[:, arm] + w * (y - m[:, arm])
            aipw_terms[arm] = gamma
            aipw, aipw_se = float(gamma.mean()), _sum_se(gamma, t)
        ys = y[chosen]
        naive_se = (math.sqrt(float(ys.var(ddof=1)) / rows) if rows > 1 else None)
        estimates.append(ArmEstimate(
            arm, rows, "ok",
            hajek=hajek, hajek_se=math.sqrt(float(lin @ lin)) / t,
            horvitz_thompson=ht_mean, horvitz_thompson_se=_sum_se(ht, t),
            aipw=aipw, aipw_se=aipw_se,
            naive=float(ys.mean()), naive_se=naive_se))

    differences: list[Difference] = []
    ctrl = estimates[control]
    for arm in range(n_arms):
        if arm == control:
            continue
        est = estimates[arm]
        missing = est.status != "ok" or ctrl.status != "ok"
        for name in ESTIMATORS:
            biased = name == "naive"
            reason = NAIVE_REASON if biased else ""
            if missing:
                differences.append(Difference(arm, name, "no_rows", biased=biased, reason=reason))
                continue
            if name == "naive":
                if (est.naive is None or ctrl.naive is None or est.naive_se is None
                        or ctrl.naive_se is None):
                    differences.append(Difference(arm, name, "too_few_rows", biased=True,
                                                  reason=reason))
                    continue
                value = est.naive - ctrl.naive
                se = math.hypot(est.naive_se, ctrl.naive_se)
            elif name == "aipw":
                if m is None:
                    differences.append(Difference(arm, name, "no_predictions"))
                    continue
                terms = aipw_terms[arm] - aipw_terms[control]
                value, se = float(terms.mean()), _sum_se(terms, t)
            elif name == "horvitz_thompson":
                terms = ht_terms[arm] - ht_terms[control]
                value, se = float(terms.mean()), _sum_se(terms, t)
            else:
                terms = hajek_terms[arm] - hajek_terms[control]
                value = hajek_means[arm] - hajek_means[control]
                # The linearised terms sum to zero per arm: no centring needed.
                se = math.sqrt(float(terms @ terms)) / t
            lo, hi = _interval(value, se, z)
            differences.append(Difference(arm, name, "ok", value, se, lo, hi, biased, reason))
    return IPWResult("ok", t, control, level, tuple(estimates), tuple(differences))
