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


@dataclass(frozen=True, slots=True)
class CombinedSrmResult:
    """Sample-ratio test over several constant-weight splits (a ramped experiment).

    ``splits`` holds each split's own :class:`SrmResult` (units first exposed
    under it against its weights). ``statistic`` is the sum of their statistics
    and ``df`` of their degrees of freedom; ``p_value`` the χ² tail there.
    ``observed``/``expected`` are summed over the splits. ``flag`` is set when
    the combined p-value is below ``threshold`` or one split's p-value is below
    ``threshold / len(splits)`` (``flagged_splits`` names those splits, by
    index). ``error`` is set when no split could be tested.
    """

    statistic: float
    p_value: float
    df: int
    observed: tuple[int, ...]
    expected: tuple[float, ...]
    flag: bool
    splits: tuple[SrmResult, ...]
    flagged_splits: tuple[int, ...] = ()
    error: str | None = None


def combined_srm_test(
    observed: Sequence[Sequence[int]], weights: Sequence[Sequence[float]],
    threshold: float = 0.001,
) -> CombinedSrmResult:
    """Chi-square test of each split's counts against its own weights, combined.

    Units first exposed under different weights are independent multinomial
    samples with different probabilities, so pooling their counts against one
    split (the current one) is wrong for any ramped experiment. Each split gets
    :func:`srm_test`; the statistics add up, and so do their degrees of freedom
    (``Σ (k_i − 1)`` over the arms each split can fill): the sum of independent
    χ² variables is χ² with the summed df. Summing statistics, rather than
    counts, means an excess in one split cannot be cancelled by a deficit in
    another.

    A large imbalance confined to one short split is diluted among the other
    splits' degrees of freedom, so a split is also flagged on its own when its
    p-value is below ``threshold / len(splits)`` (Bonferroni across splits).
    With one split both rules are the same test. Splits without units are left
    out; a split whose test fails for another reason (``invalid_weights``...)
    makes the whole result that error.
    """
    if len(observed) != len(weights):
        return _combined_failed("length_mismatch", (), ())
    results = tuple(srm_test(o, w, threshold) for o, w in zip(observed, weights, strict=True))
    tested = [(i, r) for i, r in enumerate(results) if r.error != "no_units"]
    arms = max((len(r.observed) for r in results), default=0)
    observed_sum = tuple(sum(r.observed[a] for r in results if len(r.observed) > a)
                         for a in range(arms))
    if not tested:
        return _combined_failed("no_units", observed_sum, (), results)
    expected_sum = tuple(
        float(sum(r.expected[a] for _, r in tested if len(r.expected) > a))
        for a in range(arms)) if all(r.expected for _, r in tested) else ()
    broken = next((r.error for _, r in tested if r.error not in (None, "too_few_arms")), None)
    if broken is not None:
        return _combined_failed(broken, observed_sum, (), results)
    live = [(i, r) for i, r in tested if r.error is None]
    if not live:
        return _combined_failed("too_few_arms", observed_sum, expected_sum, results)
    df = sum(_df(r) for _, r in live)
    statistic = float(sum(r.statistic for _, r in live))
    p_value = 0.0 if math.isinf(statistic) else float(special.chdtrc(df, statistic))
    per_split = threshold / len(tested)
    flagged = tuple(i for i, r in live if r.p_value < per_split)
    return CombinedSrmResult(statistic, p_value, df, observed_sum, expected_sum,
                             p_value < threshold or bool(flagged), results, flagged)


def _df(result: SrmResult) -> int:
    """Degrees of freedom of one split's test: the arms it expects units in, less one."""
    return sum(1 for e in result.expected if e > 0) - 1


def _combined_failed(error: str, observed: tuple[int, ...], expected: tuple[float, ...],
                     splits: tuple[SrmResult, ...] = ()) -> CombinedSrmResult:
    return CombinedSrmResult(math.nan, math.nan, 0, observed, expected, False, splits, (),
                             error)
