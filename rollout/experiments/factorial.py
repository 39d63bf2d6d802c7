"""A factorial experiment's primary metric as main effects and two-way
interactions (pure: per-unit arrays in, a typed summary out).

The arms of a factorial experiment are the cells of its factors' cross
product, named so that each cell reads back into its levels
(:func:`serving.kernel.factorial.parse_cell`): each exposed unit's arm gives
its level of every factor, and :mod:`rollout.experiments.stats.factorial`
estimates the effects from the units' values.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from rollout.experiments.results import FactorialEffectRow, FactorialSummary
from rollout.experiments.stats.factorial import (
    Factor,
    FactorialCovariance,
    cell_statistics,
    factorial_effects,
)
from rollout.experiments.stats.multiple import AdjustMethod
from serving.kernel.analysis_plan import MetricSpec
from serving.kernel.factorial import FactorSpec, cell_name, parse_cell


def analysis_factors(specs: Sequence[FactorSpec]) -> tuple[Factor, ...]:
    """The factors of an experiment's config as the analysis names them."""
    return tuple(Factor(f.name, tuple(level.name for level in f.levels)) for f in specs)


def arm_levels(arms: Sequence[str], factors: Sequence[Factor]
               ) -> NDArray[np.int64] | str:
    """Per arm (rows) each factor's level index (columns), or why an arm is
    not a cell of ``factors`` (an arm the config no longer has)."""
    out = np.zeros((len(arms), len(factors)), dtype=np.int64)
    for row, arm in enumerate(arms):
        levels = parse_cell(arm)
        if levels is None or set(levels) != {f.name for f in factors}:
            return f"arm {arm!r} is not a cell of the factors {[f.name for f in factors]}"
        for column, factor in enumerate(factors):
            if levels[factor.name] not in factor.levels:
                return (f"arm {arm!r}: {factor.name} has no level "
                        f"{levels[factor.name]!r}; its levels are {list(factor.levels)}")
            out[row, column] = factor.levels.index(levels[factor.name])
    return out


def factorial_summary(metric: MetricSpec, arms: Sequence[str], arm: NDArray[np.int64],
                      values: NDArray[np.float64], factors: Sequence[Factor],
                      alpha: float, *, covariance: FactorialCovariance = "hc2",
                      adjustment: AdjustMethod = "holm") -> FactorialSummary:
    """Main effects and two-way interactions of ``metric`` (per-unit
    ``values``; ``arm`` indexes ``arms``), p-values corrected by
    ``adjustment`` over the whole table."""
    named = {f.name: f.levels for f in factors}

    def failed(error: str) -> FactorialSummary:
        return FactorialSummary(metric=metric.label, factors=named, covariance=covariance,
                                adjustment=adjustment, alpha=alpha, error=error)

    if metric.type == "ratio":
        # a ratio of sums is not a mean of the units' values: the regression
        # on per-unit values would estimate something else
        return failed("factorial effects are estimated for mean and binary metrics, not "
                      f"ratio metrics ({metric.label})")
    levels = arm_levels(arms, factors)
    if isinstance(levels, str):
        return failed(levels)
    per_unit = levels[arm]
    cells = cell_statistics(values, [per_unit[:, i] for i in range(len(factors))], factors)
    result = factorial_effects(cells, alpha, covariance, adjustment)
    shape = tuple(len(f.levels) for f in factors)
    cell_units = {}
    for index in np.ndindex(*shape):
        name = cell_name([(f.name, f.levels[i]) for f, i in zip(factors, index, strict=True)])
        cell_units[name] = int(cells.n[index])
    return FactorialSummary(
        metric=metric.label, factors=named, cell_units=cell_units, covariance=covariance,
        adjustment=adjustment, alpha=alpha, error=result.error,
        effects=tuple(FactorialEffectRow(
            kind=e.kind, factors=e.factors, levels=e.levels, estimate=e.estimate,
            std_error=e.std_error, ci_low=e.ci_low, ci_high=e.ci_high, p_value=e.p_value,
            adjusted_p_value=e.p_value_adjusted) for e in result.effects))
