"""A switchback experiment's primary metric, tested over its window cells.

Pure, as :mod:`rollout.experiments.analysis`: the cells come in
(:func:`rollout.experiments.switchback_data.load_switchback_cells` reads them).
The windows are the units the design randomized, so the primary metric's
effect, interval and p-values (and with them the ship decision) are the
window-level ones; the per-unit figures stay beside them for comparison.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from rollout.experiments.exposures import MICROS
from rollout.experiments.results import MetricResult, Period, SwitchbackSummary
from rollout.experiments.stats.multiple import adjust_p_values
from rollout.experiments.stats.switchback import (
    RANDOMIZATION_DRAWS,
    SwitchbackCells,
    switchback_effect,
)
from serving.kernel.analysis_plan import AnalysisPlan


def cells_in_period(cells: SwitchbackCells, period: Period | None) -> SwitchbackCells:
    """The cells whose window overlaps ``period`` (all without one): a period
    starts with its first decision, inside its first window."""
    if period is None or cells.window_s <= 0:
        return cells
    start = cells.window * cells.window_s * MICROS
    keep = start + cells.window_s * MICROS > int(period.start.timestamp() * MICROS)
    if period.end is not None:
        keep &= start < int(period.end.timestamp() * MICROS)
    return SwitchbackCells(cells.window[keep], cells.region[keep], cells.arm[keep],
                           cells.total[keep], cells.count[keep], cells.regions,
                           cells.burn_in_requests, cells.burn_in_events, cells.mixed_cells,
                           cells.window_s, cells.burn_in_s, cells.region_key)


def switchback_metrics(plan: AnalysisPlan, arms: tuple[str, ...],
                       metrics: Sequence[MetricResult], cells: SwitchbackCells,
                       period: Period | None = None, draws: int = RANDOMIZATION_DRAWS,
                       seed: int = 0) -> tuple[MetricResult, ...]:
    """``metrics`` with each primary result's effect replaced by the window-level
    one and the per-unit figures kept in its ``switchback`` summary.

    ``adjusted_p_value`` is the larger of the regression and the
    randomization p-values, each corrected across the treatment arms by the
    plan's correction: the primary is significant only when both tests say so.
    The per-unit sequential method, CUPED and the posterior are dropped from
    the primary: they treat the requests of a window as independent.
    """
    used = cells_in_period(cells, period)
    primary = [m for m in metrics if m.role == "primary"]
    updates: dict[int, dict[str, object]] = {}
    regression: list[float] = []
    randomization: list[float] = []
    for m in primary:
        est = switchback_effect(used, arms.index(m.arm), 0, plan.alpha, draws, seed)
        relative = (est.abs_effect / est.mean_control
                    if est.error is None and est.mean_control != 0 else math.nan)
        summary = SwitchbackSummary(
            window_s=used.window_s, region=used.region_key, burn_in_s=used.burn_in_s,
            windows_control=est.cells_control, windows_treatment=est.cells_treatment,
            burn_in_requests=used.burn_in_requests, burn_in_events=used.burn_in_events,
            mixed_cells=used.mixed_cells, df=est.df if est.error is None else None,
            regression_p_value=est.p_value, ri_p_value=est.ri_p_value,
            ri_draws=est.ri_draws, naive_p_value=m.p_value, naive_abs_effect=m.abs_effect,
            error=est.error)
        # model_copy does not validate: NaN is made None here, as validation would
        updates[id(m)] = {
            "mean_control": _finite(est.mean_control),
            "mean_treatment": _finite(est.mean_treatment),
            "abs_effect": _finite(est.abs_effect), "rel_effect": _finite(relative),
            "ci_low": _finite(est.ci_low), "ci_high": _finite(est.ci_high),
            "rel_ci_low": None, "rel_ci_high": None, "p_value": _finite(est.p_value),
            "std_error": _finite(est.std_error), "error": est.error,
            "cuped": None, "cuped_variance_reduction": None, "bayes": None,
            "sequential": None, "switchback": summary}
        regression.append(est.p_value)
        randomization.append(est.ri_p_value)
    adjusted = np.fmax(adjust_p_values(regression, plan.correction),
                       adjust_p_values(randomization, plan.correction))
    for m, p in zip(primary, adjusted, strict=True):
        updates[id(m)]["adjusted_p_value"] = _finite(float(p))
    return tuple(m.model_copy(update=updates[id(m)]) if id(m) in updates else m
                 for m in metrics)


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None
