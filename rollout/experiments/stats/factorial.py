"""Factorial experiments: main effects and two-way interactions, with
multiplicity-corrected p-values.

Each unit carries one level of every factor (its cell) and a value. The model
is the saturated OLS regression of the values on the cell indicators, whose
coefficients are the cell means; every effect reported is a contrast of the
cell means that weights the other factors' levels equally:

* main effect of level ``l`` of factor ``A`` (against ``A``'s first level):
  ``mean over the other factors' level combinations of (μ[A=l] − μ[A=0])``;
  for a two-level factor it is the difference between its levels averaged
  over the other factors, the usual factorial main effect;
* interaction of levels ``a`` of ``A`` and ``b`` of ``B`` (against the first
  levels): the difference-in-differences
  ``μ[A=a,B=b] − μ[A=0,B=b] − μ[A=a,B=0] + μ[A=0,B=0]``, averaged over the
  remaining factors' levels; zero when the effect of ``A`` does not depend on
  ``B``.

This is the effect (sum-to-zero) coding of the two-factor ANOVA, written as
contrasts so that unequal cell sizes (weights other than 50/50) still give
the unweighted, design-level effects. An effect's variance is
``Σ_k c_k² V_k`` over the cells ``k`` with contrast weights ``c_k``, where
``V_k`` is the variance of cell ``k``'s mean:

* ``hc2`` (the default): ``V_k = s_k² / n_k``, with ``s_k²`` the cell's own
  sample variance. It is the HC2 heteroskedasticity-consistent covariance of
  the saturated regression (each unit's leverage is ``1/n_k``, so HC2's
  ``e_i² / (1 − h_i)`` sums to ``(n_k − 1) s_k²``), and is right when a factor
  changes the spread of the metric as well as its mean. Normal (z)
  inference, as statsmodels uses for robust covariances.
* ``classical``: ``V_k = σ̂² / n_k`` with the pooled residual variance
  ``σ̂² = Σ_k (n_k − 1) s_k² / (N − K)``; Student t inference with ``N − K``
  degrees of freedom, as OLS reports.

The p-values of all reported effects (main effects and interactions
together) are then adjusted by Holm's step-down procedure
(:func:`~rollout.experiments.stats.multiple.adjust_p_values`), which controls
the family-wise error rate over the whole table.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt
from scipy import stats as scipy_stats

from rollout.experiments.stats.frequentist import z_inference
from rollout.experiments.stats.multiple import AdjustMethod, adjust_p_values

FactorialCovariance = Literal["hc2", "classical"]
EffectKind = Literal["main", "interaction"]
# A cell needs two units for a variance of its own.
MIN_UNITS_PER_CELL = 2


@dataclass(frozen=True, slots=True)
class Factor:
    """A factor as the analysis sees it: its name and its levels' names (the
    first is the baseline the other levels are compared with)."""

    name: str
    levels: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class CellStatistics:
    """Per-cell sufficient statistics, arrays shaped by the factors' level
    counts (axis ``i`` is factor ``i``): units, mean and sample variance
    (ddof 1; NaN with fewer than two units)."""

    factors: tuple[Factor, ...]
    n: npt.NDArray[np.int64]
    mean: npt.NDArray[np.float64]
    variance: npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class FactorialEffect:
    """One main effect or two-way interaction.

    ``factors`` and ``levels`` name it: one factor and the level compared with
    the factor's first for a main effect, two of each for an interaction.
    ``p_value_adjusted`` is Holm-adjusted over every effect of the analysis.
    """

    kind: EffectKind
    factors: tuple[str, ...]
    levels: tuple[str, ...]
    estimate: float
    std_error: float
    ci_low: float
    ci_high: float
    statistic: float
    p_value: float
    p_value_adjusted: float

    @property
    def label(self) -> str:
        """``color: green vs blue`` or ``ranker × color: new × green``."""
        return " × ".join(self.factors) + ": " + " × ".join(self.levels)

    def significant(self, alpha: float) -> bool:
        """Whether the effect's adjusted p-value is below ``alpha``."""
        return self.p_value_adjusted < alpha


@dataclass(frozen=True, slots=True)
class FactorialResult:
    """Main effects and two-way interactions of a factorial experiment.

    ``error`` says why nothing could be estimated (an empty cell, a cell of
    one unit); then ``effects`` is empty."""

    factors: tuple[Factor, ...]
    cell_units: tuple[int, ...]  # per cell, in the arms' (row-major) order
    effects: tuple[FactorialEffect, ...]
    covariance: FactorialCovariance
    adjustment: AdjustMethod
    alpha: float
    error: str | None = None

    def main_effects(self) -> tuple[FactorialEffect, ...]:
        return tuple(e for e in self.effects if e.kind == "main")

    def interactions(self) -> tuple[FactorialEffect, ...]:
        return tuple(e for e in self.effects if e.kind == "interaction")


def cell_statistics(values: npt.ArrayLike, levels: Sequence[npt.ArrayLike],
                    factors: Sequence[Factor]) -> CellStatistics:
    """Each cell's units, mean and variance from per-unit ``values`` and each
    factor's per-unit level indices (``levels[i][u]`` indexes
    ``factors[i].levels``). ``ValueError`` on misaligned input or an index out
    of its factor's range (caller bugs)."""
    y = np.asarray(values, dtype=np.float64)
    if len(levels) != len(factors) or not factors:
        raise ValueError("need one level column per factor and at least one factor")
    shape = tuple(len(f.levels) for f in factors)
    indices = []
    for factor, column in zip(factors, levels, strict=True):
        index = np.asarray(column, dtype=np.int64)
        if index.shape != y.shape:
            raise ValueError(f"factor {factor.name!r}: {index.shape[0]} level indices for "
                             f"{y.shape[0]} values")
        if index.size and (index.min() < 0 or index.max() >= len(factor.levels)):
            raise ValueError(f"factor {factor.name!r}: level index out of range")
        indices.append(index)
    if not np.all(np.isfinite(y)):
        raise ValueError("values must be finite")
    cell = np.ravel_multi_index(tuple(indices), shape) if y.size else np.zeros(0, np.int64)
    cells = math.prod(shape)
    n = np.bincount(cell, minlength=cells)
    sums = np.bincount(cell, weights=y, minlength=cells)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(n > 0, sums / np.maximum(n, 1), np.nan)
        # Centred on each cell's mean before squaring: no cancellation when the
        # metric is large next to its spread.
        squares = np.bincount(cell, weights=(y - mean[cell]) ** 2, minlength=cells)
        variance = np.where(n > 1, squares / np.maximum(n - 1, 1), np.nan)
    return CellStatistics(tuple(factors), n.reshape(shape).astype(np.int64),
                          mean.reshape(shape), variance.reshape(shape))


def effect_contrasts(shape: Sequence[int]
                     ) -> list[tuple[EffectKind, tuple[int, ...], tuple[int, ...],
                                     npt.NDArray[np.float64]]]:
    """Every main effect and two-way interaction as ``(kind, factor indices,
    level indices, contrast weights over the cells)``: main effects factor by
    factor, then the interactions of each pair of factors."""
    out: list[tuple[EffectKind, tuple[int, ...], tuple[int, ...],
                    npt.NDArray[np.float64]]] = []
    cells = math.prod(shape)
    for axis, count in enumerate(shape):
        for level in range(1, count):
            contrast = np.zeros(shape)
            _slice(contrast, {axis: level}).fill(1.0)
            _slice(contrast, {axis: 0}).fill(-1.0)
            out.append(("main", (axis,), (level,), contrast / (cells / count)))
    for first, second in itertools.combinations(range(len(shape)), 2):
        others = cells / (shape[first] * shape[second])
        for a in range(1, shape[first]):
            for b in range(1, shape[second]):
                contrast = np.zeros(shape)
                for la, lb, sign in ((a, b, 1.0), (0, b, -1.0), (a, 0, -1.0), (0, 0, 1.0)):
                    _slice(contrast, {first: la, second: lb}).fill(sign)
                out.append(("interaction", (first, second), (a, b), contrast / others))
    return out


def _slice(array: npt.NDArray[np.float64], fixed: dict[int, int]) -> npt.NDArray[np.float64]:
    """The view of ``array`` with the axes in ``fixed`` held at their index
    (kept as length-one axes: a view even when every axis is fixed, so that
    filling it writes into ``array``)."""
    return array[tuple(slice(fixed[axis], fixed[axis] + 1) if axis in fixed else slice(None)
                       for axis in range(array.ndim))]


def factorial_effects(cells: CellStatistics, alpha: float = 0.05,
                      covariance: FactorialCovariance = "hc2",
                      adjustment: AdjustMethod = "holm") -> FactorialResult:
    """Main effects and two-way interactions of a factorial experiment, with
    ``1 − alpha`` intervals and p-values adjusted over all of them."""
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    factors = cells.factors
    units = tuple(int(k) for k in cells.n.ravel())

    def failed(error: str) -> FactorialResult:
        return FactorialResult(factors, units, (), covariance, adjustment, alpha, error)

    small = int(np.sum(cells.n < MIN_UNITS_PER_CELL))
    if small:
        return failed(f"{small} of {cells.n.size} cells have fewer than "
                      f"{MIN_UNITS_PER_CELL} units; every cell needs {MIN_UNITS_PER_CELL} "
                      "for its variance")
    n = cells.n.astype(np.float64)
    total, k = float(n.sum()), cells.n.size
    if covariance == "hc2":
        mean_variance = cells.variance / n
        df = math.inf
    else:
        df = total - k
        if df < 1:
            return failed(f"{int(total)} units in {k} cells leave no residual degrees of "
                          "freedom")
        pooled = float(np.sum((n - 1.0) * cells.variance)) / df
        mean_variance = pooled / n
    rows = []
    for kind, axes, levels, contrast in effect_contrasts(cells.n.shape):
        estimate = float(np.sum(contrast * cells.mean))
        variance = float(np.sum(contrast ** 2 * mean_variance))
        rows.append((kind, axes, levels, estimate, *_inference(estimate, variance, alpha, df)))
    adjusted = adjust_p_values([row[-1] for row in rows], adjustment)
    effects = tuple(
        FactorialEffect(kind, tuple(factors[a].name for a in axes),
                        tuple(factors[a].levels[lv] for a, lv in zip(axes, levels, strict=True)),
                        estimate, se, low, high, statistic, p, float(p_adjusted))
        for (kind, axes, levels, estimate, se, low, high, statistic, p), p_adjusted
        in zip(rows, adjusted, strict=True))
    return FactorialResult(factors, units, effects, covariance, adjustment, alpha)


def _inference(estimate: float, variance: float, alpha: float, df: float
               ) -> tuple[float, float, float, float, float]:
    """``(se, ci_low, ci_high, statistic, p)``: normal for ``df = inf``, else
    Student t; NaN throughout for a zero variance (every cell constant)."""
    if math.isinf(df):
        inference = z_inference(estimate, variance, alpha)
        return inference if inference is not None else (0.0, *(math.nan,) * 4)
    if not variance > 0.0:
        return (0.0, *(math.nan,) * 4)
    se = math.sqrt(variance)
    statistic = estimate / se
    half = float(scipy_stats.t.ppf(1.0 - alpha / 2.0, df)) * se
    p = float(2.0 * scipy_stats.t.sf(abs(statistic), df))
    return se, estimate - half, estimate + half, statistic, p
