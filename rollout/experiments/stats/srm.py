"""Sample-ratio mismatch: do the arm sizes match the configured split?

An SRM means units did not reach the arms with the configured probabilities
(a buggy assignment, a redirect that loses users in one arm, a filter that
depends on the treatment). Any effect estimate from such an experiment is
suspect, so the check runs before the effect is looked at, with a strict
threshold because it runs on every experiment, every time it is read.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import special


@dataclass(frozen=True, slots=True)
class SrmResult:
    """Chi-square goodness-of-fit of observed arm counts to the configured weights.

    ``expected`` are the counts the weights predict for the observed total;
    ``flag`` is true when ``p_value < threshold``. ``error`` is a short code
    (``"too_few_arms"``, ``"length_mismatch"``, ``"invalid_counts"``,
    ``"invalid_weights"``, ``"no_units"``, ``"invalid_threshold"``) when the
    test could not run; ``statistic``/``p_value`` are then NaN and ``flag``
    false.
    """

    statistic: float
    p_value: float
    observed: tuple[int, ...]
    expected: tuple[float, ...]
    flag: bool
    error: str | None = None


def srm_test(
    observed: Sequence[int], weights: Sequence[float], threshold: float = 0.001
) -> SrmResult:
    """Pearson chi-square test of ``observed`` counts against ``weights``.

    Weights are normalized to sum to one, so ``[1, 1]``, ``[50, 50]`` and
    ``[0.5, 0.5]`` mean the same split. The statistic is
    ``Σ (o − e)²/e`` over arms with ``e = N·w``, and the p-value its upper
    tail under χ² with ``k − 1`` degrees of freedom; this equals
    ``scipy.stats.chisquare(observed, expected)``.

    An arm with weight zero should receive nobody. If it is empty it carries
    no information and is left out of the test (it does not count towards
    ``k``); if it has units the mismatch is certain, reported as an infinite
    statistic with p-value 0 and ``flag`` set rather than as an error.

    Returns an :class:`SrmResult`; never raises on bad input.
    """
    counts = tuple(observed)
    shares = tuple(weights)
    valid_counts = all(_is_count(c) for c in counts)
    # Invalid counts cannot be echoed back as ints; the result then shows none.
    observed_out = tuple(int(c) for c in counts) if valid_counts else ()
    if not 0.0 < threshold < 1.0:
        return _failed("invalid_threshold", observed_out)
    if len(counts) != len(shares):
        return _failed("length_mismatch", observed_out)
    if len(counts) < 2:
        return _failed("too_few_arms", observed_out)
    if not valid_counts:
        return _failed("invalid_counts", observed_out)
    w = np.asarray(shares, dtype=np.float64)
    if not np.all(np.isfinite(w)) or np.any(w < 0) or not w.sum() > 0:
        return _failed("invalid_weights", observed_out)

    o = np.asarray(observed_out, dtype=np.float64)
    total = o.sum()
    if total == 0:
        return _failed("no_units", observed_out)
    # Weights are only meaningful relative to each other; scaling by the
    # largest first keeps the sum finite for any finite weights. A weight
    # that is negligible next to the others may underflow to zero, which is
    # what it means anyway.
    with np.errstate(under="ignore", over="ignore", divide="ignore"):
        w = w / w.max()
        e = total * (w / w.sum())
        expected = tuple(float(v) for v in e)
        live = e > 0
        if np.any(o[~live] > 0):
            return SrmResult(math.inf, 0.0, observed_out, expected, True)
        if int(live.sum()) < 2:
            return _failed("too_few_arms", observed_out, expected)
        o_live, e_live = o[live], e[live]
        # A near-zero expected count with units in it overflows to an infinite
        # statistic: a certain mismatch, p-value 0.
        statistic = float(np.sum((o_live - e_live) ** 2 / e_live))
    p_value = 0.0 if math.isinf(statistic) else float(
        special.chdtrc(int(live.sum()) - 1, statistic))
    return SrmResult(statistic, p_value, observed_out, expected, p_value < threshold)


def _is_count(value: object) -> bool:
    """A non-negative integer (Python or numpy, or an integral float)."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int | np.integer):
        return int(value) >= 0
    if isinstance(value, float | np.floating):
        number = float(value)
        return math.isfinite(number) and number >= 0 and number.is_integer()
    return False


def _failed(
    error: str, observed: tuple[int, ...], expected: tuple[float, ...] = ()
) -> SrmResult:
    return SrmResult(math.nan, math.nan, observed, expected, False, error)
