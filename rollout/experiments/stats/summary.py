"""Input summaries and result types shared by every statistics family."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class MeanSummary:
    """Sufficient statistics of one arm's per-unit values ``y``.

    ``n`` units, ``sum`` = Σy, ``sum_squares`` = Σy². A binary metric is the
    same summary with 0/1 values (then ``sum_squares == sum``).
    """

    n: int
    sum: float
    sum_squares: float

    @property
    def mean(self) -> float:
        return self.sum / self.n if self.n > 0 else math.nan

    @property
    def variance(self) -> float:
        """Sample variance (ddof = 1); NaN with fewer than two units."""
        if self.n < 2:
            return math.nan
        return max(self.sum_squares - self.sum * self.sum / self.n, 0.0) / (self.n - 1)


@dataclass(frozen=True, slots=True)
class PairSummary:
    """Sufficient statistics of per-unit pairs ``(y, x)`` in one arm.

    Used two ways: CUPED (``y`` in-experiment metric, ``x`` its pre-period
    covariate) and ratio-of-sums metrics (``y`` numerator, ``x`` denominator
    per unit).
    """

    n: int
    sum_y: float
    sum_yy: float
    sum_x: float
    sum_xx: float
    sum_xy: float

    def y(self) -> MeanSummary:
        return MeanSummary(self.n, self.sum_y, self.sum_yy)

    def x(self) -> MeanSummary:
        return MeanSummary(self.n, self.sum_x, self.sum_xx)

    @property
    def covariance(self) -> float:
        """Sample covariance of y and x (ddof = 1); NaN with fewer than two units."""
        if self.n < 2:
            return math.nan
        return (self.sum_xy - self.sum_x * self.sum_y / self.n) / (self.n - 1)


@dataclass(frozen=True, slots=True)
class EffectEstimate:
    """Treatment minus control, absolute and relative, with a two-sided test.

    ``ci_low``/``ci_high`` bound the absolute effect; ``rel_ci_low``/
    ``rel_ci_high`` the relative one (delta method). ``error`` is a short code
    (``"empty_arm"``, ``"zero_variance"``, ``"zero_control_mean"``...) when the
    numbers could not be computed; the numeric fields are then NaN, except for
    ``"zero_control_mean"``, where only the relative fields are NaN (a control
    at zero does not invalidate the difference).
    """

    mean_control: float
    mean_treatment: float
    abs_effect: float
    rel_effect: float
    std_error: float
    ci_low: float
    ci_high: float
    rel_ci_low: float
    rel_ci_high: float
    statistic: float
    p_value: float
    error: str | None = None
