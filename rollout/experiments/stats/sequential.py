"""Sequential experiment tests: Lan-DeMets group-sequential boundaries and the mSPRT.

Two ways to look at an experiment more than once without inflating the
false-positive rate:

* **Group-sequential** (Lan & DeMets): a spending function ``α(t)`` decides how
  much of the type-I error may be used up by information fraction ``t``; the
  z boundary at each look is the one whose *exact* crossing probability under
  the null, given that no earlier look crossed, equals the alpha spent since the
  previous look. The joint law of the sequential z statistics is computed by
  the Armitage–McPherson–Rowe recursion (numerical integration on a grid), so
  boundaries are exact up to quadrature error (≈1e-6 on the z scale).
* **Always-valid inference** (mixture SPRT, Johari et al.): a normal-mixture
  likelihood ratio gives a p-value and a confidence sequence that stay valid
  whenever and however often the experiment is looked at, with no plan of looks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, overload

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import optimize, special

SpendingKind = Literal["obrien_fleming", "pocock"]

_KINDS: tuple[str, ...] = ("obrien_fleming", "pocock")

# The continuation region is cut at ±_TRUNCATION standard deviations of the
# score under the null: the probability mass beyond is below 1e-18, far under
# any alpha a design spends, while the grid stays finite when a boundary is
# infinite (or one-sided, with no lower boundary).
_TRUNCATION = 9.0
# Grid step = smallest per-look increment standard deviation / _GRID_DIVISIONS.
# Simpson's rule on a Gaussian kernel then has a relative error of order
# (1/16)^4 / 60 ≈ 3e-7, which puts boundaries within ~1e-6 of their limit.
_GRID_DIVISIONS = 16
# Boundaries are searched on [.., _Z_MAX]; a spent increment too small to reach
# at _Z_MAX (a Φ tail of ~1e-350, i.e. an underflowed spending function at a
# very early look) means the look cannot reject: its boundary is +inf.
_Z_MAX = 40.0
# Cap on the elements of one block of the convolution matrix, to bound memory.
_BLOCK_ELEMENTS = 2_000_000
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


def _check_alpha(alpha: float) -> None:
    if not (0.0 < alpha < 1.0):
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")


def _check_kind(kind: str) -> None:
    if kind not in _KINDS:
        raise ValueError(f"kind must be one of {_KINDS}, got {kind!r}")


@overload
def spent_alpha(t: float, alpha: float = ..., kind: SpendingKind = ...) -> float: ...


@overload
def spent_alpha(
    t: NDArray[np.float64], alpha: float = ..., kind: SpendingKind = ...
) -> NDArray[np.float64]: ...


def spent_alpha(
    t: float | NDArray[np.float64],
    alpha: float = 0.05,
    kind: SpendingKind = "obrien_fleming",
) -> float | NDArray[np.float64]:
    """Cumulative type-I error a Lan-DeMets spending function allows by fraction ``t``.

    Returns ``α(t)`` (a float for a scalar ``t``, an array otherwise), with
    ``α(0) = 0`` and ``α(1) = alpha``:

    * ``"obrien_fleming"``: ``α(t) = 2 − 2Φ(z_{α/2} / √t)``, which spends almost
      nothing early and so keeps the final look close to a fixed-sample test;
    * ``"pocock"``: ``α(t) = α · ln(1 + (e − 1)t)``, which spends nearly evenly
      and gives roughly constant boundaries.

    ``alpha`` is the error this function spends in total; a two-sided
    :func:`group_sequential_design` calls it with ``alpha/2`` per tail.
    """
    _check_alpha(alpha)
    _check_kind(kind)
    tt = np.asarray(t, dtype=np.float64)
    if not bool(np.all((tt >= 0.0) & (tt <= 1.0))):
        raise ValueError("information fractions must lie in [0, 1]")
    if kind == "obrien_fleming":
        z_half = -float(special.ndtri(alpha / 2.0))
        # 2 − 2Φ(x) is evaluated as 2Φ(−x), which keeps its relative accuracy in
        # the far tail (early looks spend ~1e-6 or less). t = 0 is substituted
        # before the division and mapped to 0 afterwards, so no warning fires.
        positive = tt > 0.0
        safe_t = np.where(positive, tt, 1.0)
        spent = np.where(positive, 2.0 * special.ndtr(-z_half / np.sqrt(safe_t)), 0.0)
    else:
        spent = alpha * np.log1p((math.e - 1.0) * tt)
    if spent.ndim == 0:
        return float(spent)
    return np.asarray(spent, dtype=np.float64)


@dataclass(frozen=True, slots=True)
class GroupSequentialDesign:
    """Boundaries of a Lan-DeMets group-sequential test, one entry per look.

    ``boundaries`` are critical values on the z scale (reject at look ``k`` when
    ``|z_k| ≥ boundaries[k]``, or ``z_k ≥ boundaries[k]`` one-sided; ``inf`` when
    the look has no alpha to spend). ``nominal_alpha`` is the same boundary as a
    per-look p-value threshold. ``cumulative_alpha`` is the error spent through
    look ``k`` over both tails; its last entry equals ``alpha`` only when the
    last fraction is 1.
    """

    information_fractions: tuple[float, ...]
    alpha: float
    kind: SpendingKind
    two_sided: bool
    boundaries: tuple[float, ...]
    nominal_alpha: tuple[float, ...]
    cumulative_alpha: tuple[float, ...]


def _validated_fractions(information_fractions: Sequence[float]) -> NDArray[np.float64]:
    t = np.asarray(information_fractions, dtype=np.float64)
    if t.ndim != 1 or t.size == 0:
        raise ValueError("information_fractions must be a non-empty 1-D sequence")
    if not bool(np.all(np.isfinite(t))):
        raise ValueError("information_fractions must be finite")
    if t[0] <= 0.0 or t[-1] > 1.0:
        raise ValueError(f"information_fractions must lie in (0, 1], got {t.tolist()}")
    if t.size > 1 and not bool(np.all(np.diff(t) > 0.0)):
        raise ValueError(f"information_fractions must be strictly increasing, got {t.tolist()}")
    return t


def _simpson(lo: float, hi: float, step: float) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Nodes and composite Simpson weights on ``[lo, hi]`` with spacing ≤ ``step``."""
    intervals = max(2, 2 * math.ceil((hi - lo) / (2.0 * step)))
    nodes = np.linspace(lo, hi, intervals + 1)
    weights = np.ones(intervals + 1)
    weights[1:-1:2] = 4.0
    weights[2:-1:2] = 2.0
    weights *= (hi - lo) / (3.0 * intervals)
    return nodes, weights


def _region(boundary: float, sd: float, two_sided: bool) -> tuple[float, float]:
    """Continuation region of the score ``S_k = Z_k·√t_k`` (``sd = √t_k``), truncated."""
    upper = min(boundary, _TRUNCATION) * sd
    lower = -upper if two_sided else -_TRUNCATION * sd
    return lower, upper


def _normal_kernel_apply(
    nodes_new: NDArray[np.float64],
    nodes_old: NDArray[np.float64],
    weighted_old: NDArray[np.float64],
    sd: float,
) -> NDArray[np.float64]:
    """``Σ_i weighted_old[i]·φ((s_j − u_i)/sd)/sd`` for every new node ``s_j``, blockwise."""
    out = np.empty(nodes_new.size)
    rows = max(1, _BLOCK_ELEMENTS // max(1, nodes_old.size))
    for start in range(0, nodes_new.size, rows):
        block = nodes_new[start : start + rows]
        x = (block[:, None] - nodes_old[None, :]) / sd
        # exp of a very negative number underflows quietly to 0 (numpy ignores
        # underflow by default), which is the right value for distant nodes.
        out[start : start + rows] = (np.exp(-0.5 * x * x) @ weighted_old) * (_INV_SQRT_2PI / sd)
    return out


def _exit_probability(
    c: float,
    nodes: NDArray[np.float64],
    weighted: NDArray[np.float64],
    sd_k: float,
    sd_inc: float,
    two_sided: bool,
) -> float:
    """Null probability of first crossing boundary ``c`` at this look.

    ``weighted`` is the previous look's continuation sub-density times its
    quadrature weights at ``nodes``; given ``S_{k−1} = u``,
    ``P(S_k ≥ c√t_k) = Φ((u − c√t_k)/sd_inc)``, plus the mirror lower tail for
    a two-sided design.
    """
    p = float(weighted @ special.ndtr((nodes - c * sd_k) / sd_inc))
    if two_sided:
        p += float(weighted @ special.ndtr((-c * sd_k - nodes) / sd_inc))
    return p


def _exit_excess(
    c: float,
    target: float,
    nodes: NDArray[np.float64],
    weighted: NDArray[np.float64],
    sd_k: float,
    sd_inc: float,
    two_sided: bool,
) -> float:
    return _exit_probability(c, nodes, weighted, sd_k, sd_inc, two_sided) - target


def _boundaries(
    t: NDArray[np.float64], increments: NDArray[np.float64], two_sided: bool
) -> NDArray[np.float64]:
    """z boundaries whose exact exit probabilities under the null equal ``increments``.

    Armitage–McPherson–Rowe recursion on the score ``S_k = Z_k·√t_k``, whose
    increments are independent ``N(0, t_k − t_{k−1})``. ``density`` holds the
    sub-density of ``S_{k−1}`` at the Simpson ``nodes`` of its continuation
    region (paths that have not stopped); the exit probability at look ``k``
    for a candidate boundary ``c`` integrates the normal tail probabilities of
    the increment against it, and the root in ``c`` is found by Brent's method.
    """
    k_looks = t.size
    delta = np.diff(t, prepend=0.0)
    step = float(np.sqrt(delta.min())) / _GRID_DIVISIONS
    bounds = np.empty(k_looks)
    tails = 2.0 if two_sided else 1.0

    # Look 1: Z_1 is standard normal, so the boundary is a normal quantile.
    first = float(increments[0])
    bounds[0] = -float(special.ndtri(first / tails)) if first > 0.0 else math.inf
    if not math.isfinite(bounds[0]) or bounds[0] > _Z_MAX:
        bounds[0] = math.inf
    sd_prev = math.sqrt(t[0])
    nodes, weights = _simpson(*_region(bounds[0], sd_prev, two_sided), step)
    density = np.exp(-0.5 * (nodes / sd_prev) ** 2) * (_INV_SQRT_2PI / sd_prev)

    for k in range(1, k_looks):
        weighted = weights * density
        sd_inc = math.sqrt(float(delta[k]))
        sd_k = math.sqrt(float(t[k]))
        target = float(increments[k])

        shape = (nodes, weighted, sd_k, sd_inc, two_sided)
        lower_c = 0.0 if two_sided else -_TRUNCATION
        if target <= 0.0 or _exit_probability(_Z_MAX, *shape) >= target:
            bounds[k] = math.inf
        elif _exit_probability(lower_c, *shape) <= target:
            # More alpha than the remaining paths could spend (only possible with
            # an extreme alpha): the whole continuation region rejects.
            bounds[k] = lower_c
        else:
            bounds[k] = optimize.brentq(
                _exit_excess, lower_c, _Z_MAX, args=(target, *shape), xtol=1e-12
            )
        if k + 1 < k_looks:
            new_nodes, new_weights = _simpson(*_region(bounds[k], sd_k, two_sided), step)
            density = _normal_kernel_apply(new_nodes, nodes, weighted, sd_inc)
            nodes, weights = new_nodes, new_weights
    return bounds


def group_sequential_design(
    information_fractions: Sequence[float],
    alpha: float = 0.05,
    kind: SpendingKind = "obrien_fleming",
    two_sided: bool = True,
) -> GroupSequentialDesign:
    """Lan-DeMets boundaries for looks at the given information fractions.

    Returns a :class:`GroupSequentialDesign` whose boundary at look ``k`` makes
    the null probability of first crossing at ``k`` equal ``α(t_k) − α(t_{k−1})``,
    so the overall type-I error is exactly ``α(t_K)``. Two-sided designs are
    symmetric (reject on ``|z| ≥ c``) and spend ``spent_alpha(t, alpha/2)`` on
    each tail; one-sided designs reject on ``z ≥ c``, spend
    ``spent_alpha(t, alpha)`` and have no futility boundary.

    Raises ``ValueError`` unless the fractions are strictly increasing in (0, 1].
    """
    _check_alpha(alpha)
    _check_kind(kind)
    t = _validated_fractions(information_fractions)
    # A two-sided design spends alpha/2 on each tail with the same spending
    # function (the convention of Lan & DeMets' own tables and of common
    # group-sequential software); the total spent is twice the per-tail amount.
    # For the Pocock type, which is linear in alpha, this is the same as
    # spending alpha on both tails together; for the O'Brien-Fleming type it is
    # not (spending 0.05 through z_{0.025} would give a first of five boundaries
    # of 4.38 instead of 4.88).
    if two_sided:
        cumulative = 2.0 * spent_alpha(t, alpha / 2.0, kind)
    else:
        cumulative = spent_alpha(t, alpha, kind)
    increments = np.diff(cumulative, prepend=0.0)
    bounds = _boundaries(t, increments, two_sided)
    tails = 2.0 if two_sided else 1.0
    nominal = tails * special.ndtr(-bounds)
    return GroupSequentialDesign(
        information_fractions=tuple(float(x) for x in t),
        alpha=alpha,
        kind=kind,
        two_sided=two_sided,
        boundaries=tuple(float(x) for x in bounds),
        nominal_alpha=tuple(float(x) for x in nominal),
        cumulative_alpha=tuple(float(x) for x in cumulative),
    )


@dataclass(frozen=True, slots=True)
class GroupSequentialResult:
    """Outcome of a group-sequential test over the looks taken so far.

    ``boundary`` is the critical value at the latest look; ``crossed`` says
    whether any look reached its boundary and ``first_crossing_look`` (1-based)
    which one did first — the experiment stops there, later looks do not
    matter. ``decision`` is ``"reject"`` once a boundary is crossed, otherwise
    ``"continue"``. ``error`` is ``"non_finite_statistic"`` when a z statistic
    before any crossing is NaN or infinite (then ``boundary`` is NaN and the
    decision is ``"continue"``).
    """

    z_statistics: tuple[float, ...]
    boundaries: tuple[float, ...]
    boundary: float
    crossed: bool
    first_crossing_look: int | None
    decision: Literal["reject", "continue"]
    design: GroupSequentialDesign
    error: str | None = None


def group_sequential_test(
    z_statistics: Sequence[float],
    information_fractions: Sequence[float],
    alpha: float = 0.05,
    kind: SpendingKind = "obrien_fleming",
    two_sided: bool = True,
) -> GroupSequentialResult:
    """Test the z statistics of the looks so far against Lan-DeMets boundaries.

    Returns a :class:`GroupSequentialResult`. The design is recomputed on the
    *observed* fractions: a look taken at 0.23 instead of the planned 0.25
    spends ``α(0.23)``, which is how a spending function keeps the error rate
    exact when looks drift from the plan. Boundaries at past looks do not
    depend on later fractions, so re-running this at every look is consistent.

    Raises ``ValueError`` when the two sequences differ in length or the
    fractions are invalid (see :func:`group_sequential_design`).
    """
    z = np.asarray(z_statistics, dtype=np.float64)
    if z.ndim != 1 or z.size != len(information_fractions):
        raise ValueError(
            f"need one z statistic per look: {z.size} statistics, "
            f"{len(information_fractions)} information fractions"
        )
    design = group_sequential_design(information_fractions, alpha, kind, two_sided)
    bounds = np.asarray(design.boundaries)
    first: int | None = None
    error: str | None = None
    for k in range(z.size):
        if not math.isfinite(z[k]):
            error = "non_finite_statistic"
            break
        statistic = abs(z[k]) if two_sided else z[k]
        if statistic >= bounds[k]:
            first = k + 1
            break
    crossed = first is not None
    return GroupSequentialResult(
        z_statistics=tuple(float(x) for x in z),
        boundaries=design.boundaries,
        boundary=math.nan if error else design.boundaries[-1],
        crossed=crossed,
        first_crossing_look=first,
        decision="reject" if crossed else "continue",
        design=design,
        error=error,
    )


# --------------------------------------------------------------------------- mSPRT


def mixing_variance_from_mde(mde: float) -> float:
    """Mixing variance ``τ² = MDE²`` for :func:`msprt` from a planned minimum detectable effect.

    Returns ``mde**2``. The normal mixture ``N(0, τ²)`` weighs alternatives by
    their plausibility; with ``τ = MDE`` the bulk of its weight sits on effects
    of the size the experiment was planned to detect, which is where the test
    should gather evidence fastest. A much smaller ``τ`` wastes power on
    effects too small to matter, a much larger one delays detection of
    realistic effects (the ``√(V/(V+τ²))`` factor penalises it).
    Raises ``ValueError`` unless ``mde`` is finite and non-zero.
    """
    if not math.isfinite(mde) or mde == 0.0:
        raise ValueError(f"mde must be finite and non-zero, got {mde!r}")
    return mde * mde


def _log_variance_ratio(v: NDArray[np.float64], tau2: float) -> NDArray[np.float64]:
    """``ln((V + τ²)/V)`` for ``V > 0`` without overflow.

    ``log1p(τ²/V)`` is accurate while ``τ² ≤ V``; beyond, ``τ²/V`` could
    overflow for a vanishing ``V``, and ``ln(V + τ²) − ln V`` is exact enough.
    """
    small = v >= tau2
    return np.where(
        small,
        np.log1p(tau2 / np.maximum(v, tau2)),
        np.log(v + tau2) - np.log(np.where(small, 1.0, v)),
    )


def mixture_log_likelihood_ratio(
    effects: ArrayLike, variances: ArrayLike, mixing_variance: float
) -> NDArray[np.float64]:
    """Log of the normal-mixture likelihood ratio, elementwise (broadcasting).

    For an estimate ``θ̂ ~ N(θ, V)`` and mixing prior ``θ ~ N(0, τ²)``,
    ``Λ = √(V/(V+τ²)) · exp(τ²θ̂² / (2V(V+τ²)))``. Returned as ``ln Λ`` because
    ``Λ`` overflows for decisive data. Entries with a non-positive or
    non-finite variance, or a non-finite effect, are NaN (no evidence can be
    read from them).
    """
    tau2 = float(mixing_variance)
    if not (math.isfinite(tau2) and tau2 > 0.0):
        raise ValueError(f"mixing_variance must be positive and finite, got {mixing_variance!r}")
    theta = np.asarray(effects, dtype=np.float64)
    v = np.asarray(variances, dtype=np.float64)
    theta, v = np.broadcast_arrays(theta, v)
    valid = np.isfinite(theta) & np.isfinite(v) & (v > 0.0)
    # Invalid entries get harmless placeholders so no division warning fires.
    v_safe = np.where(valid, v, 1.0)
    theta_safe = np.where(valid, theta, 0.0)
    # Written as (τ²/(V+τ²))·θ̂²/(2V) so a tiny V cannot underflow a denominator
    # to zero; an overflow to +inf is the right limit (overwhelming evidence).
    with np.errstate(over="ignore"):
        log_lr = -0.5 * _log_variance_ratio(v_safe, tau2) + (tau2 / (v_safe + tau2)) * (
            theta_safe * theta_safe / (2.0 * v_safe)
        )
    return np.where(valid, log_lr, np.nan)


@dataclass(frozen=True, slots=True)
class MsprtResult:
    """Always-valid p-values and confidence sequence of a mixture SPRT, per look.

    ``p_values[k]`` is the running always-valid p-value after look ``k``
    (non-increasing); ``cs_low``/``cs_high`` the running confidence sequence
    (the intersection of every look's interval so far; ``±inf`` before the first
    informative look). ``p_value``/``ci_low``/``ci_high`` are the values at the
    last look; ``rejected`` is ``p_value ≤ alpha`` and ``first_rejection_look``
    (1-based) the look where that first happened. ``error`` is ``"no_looks"``,
    ``"zero_variance"`` or ``"non_finite"`` when no look carries information;
    the numbers are then NaN.
    """

    p_values: tuple[float, ...]
    cs_low: tuple[float, ...]
    cs_high: tuple[float, ...]
    p_value: float
    ci_low: float
    ci_high: float
    rejected: bool
    first_rejection_look: int | None
    alpha: float
    mixing_variance: float
    error: str | None = None


def msprt(
    effects: ArrayLike,
    variances: ArrayLike,
    alpha: float = 0.05,
    *,
    mixing_variance: float,
) -> MsprtResult:
    """Always-valid inference on an effect estimated at successive looks.

    ``effects[k]`` is the estimate ``θ̂_k`` at look ``k`` (e.g. treatment minus
    control mean) and ``variances[k]`` its variance ``V_k`` (e.g.
    ``s_c²/n_c + s_t²/n_t``); ``mixing_variance`` is ``τ²`` (see
    :func:`mixing_variance_from_mde`).

    Returns an :class:`MsprtResult` with ``p_k = min(p_{k−1}, 1/Λ_k)`` and the
    confidence sequence ``θ̂_k ± √(V_k(V_k+τ²)/τ² · (ln((V_k+τ²)/V_k) − 2 ln α))``
    intersected over looks. Because ``1/Λ`` is a non-negative supermartingale
    under the null, ``P(∃k: p_k ≤ α) ≤ α`` for any number and timing of looks;
    the two outputs agree (0 leaves the interval exactly when ``p_k ≤ α``).
    A look with a zero or non-finite variance carries no evidence (``Λ = 1``,
    an unbounded interval) and is skipped rather than failing the whole run.

    Raises ``ValueError`` for an invalid ``alpha`` or ``mixing_variance`` or
    when ``effects`` and ``variances`` are not 1-D of the same length.
    """
    _check_alpha(alpha)
    theta = np.asarray(effects, dtype=np.float64)
    v = np.asarray(variances, dtype=np.float64)
    if theta.ndim != 1 or theta.shape != v.shape:
        raise ValueError("effects and variances must be 1-D arrays of the same length")
    log_lr = mixture_log_likelihood_ratio(theta, v, mixing_variance)
    tau2 = float(mixing_variance)
    valid = np.isfinite(theta) & np.isfinite(v) & (v > 0.0)
    if not bool(valid.any()):
        if theta.size == 0:
            error = "no_looks"
        elif bool(np.any(v == 0.0)):
            error = "zero_variance"
        else:
            error = "non_finite"
        nans = tuple(math.nan for _ in range(theta.size))
        return MsprtResult(
            p_values=nans,
            cs_low=nans,
            cs_high=nans,
            p_value=math.nan,
            ci_low=math.nan,
            ci_high=math.nan,
            rejected=False,
            first_rejection_look=None,
            alpha=alpha,
            mixing_variance=tau2,
            error=error,
        )
    # exp(−ln Λ) underflows quietly to 0 for decisive looks (and ln Λ = +inf gives
    # exactly 0); ln Λ < 0 gives 1/Λ > 1, capped at 1 since a p-value above 1
    # carries no meaning. ln Λ ≥ −½·ln(1 + τ²/V) > −355, so exp cannot overflow.
    look_p = np.where(valid, np.minimum(1.0, np.exp(-np.where(valid, log_lr, 0.0))), 1.0)
    running_p = np.minimum.accumulate(look_p)

    v_safe = np.where(valid, v, 1.0)
    half = np.sqrt(
        v_safe
        * (v_safe + tau2)
        / tau2
        * (_log_variance_ratio(v_safe, tau2) - 2.0 * math.log(alpha))
    )
    low = np.where(valid, theta - half, -np.inf)
    high = np.where(valid, theta + half, np.inf)
    # Every look's interval covers θ simultaneously with probability ≥ 1 − α, so
    # their running intersection does too and is never wider than the latest.
    running_low = np.maximum.accumulate(low)
    running_high = np.minimum.accumulate(high)

    hits = np.flatnonzero(running_p <= alpha)
    first = int(hits[0]) + 1 if hits.size else None
    return MsprtResult(
        p_values=tuple(float(x) for x in running_p),
        cs_low=tuple(float(x) for x in running_low),
        cs_high=tuple(float(x) for x in running_high),
        p_value=float(running_p[-1]),
        ci_low=float(running_low[-1]),
        ci_high=float(running_high[-1]),
        rejected=first is not None,
        first_rejection_look=first,
        alpha=alpha,
        mixing_variance=tau2,
        error=None,
    )
