"""A switchback experiment's metrics, tested over their window cells.

Pure, as :mod:`rollout.experiments.analysis`: the cells come in
(:func:`rollout.experiments.switchback_data.load_switchback_cells_by_metric`
reads them). The windows are the units the design randomized, so every
metric's effect, interval and p-values (primary, secondary and guardrails:
with them the ship decision and the guardrails' verdicts) are the
window-level ones; the per-unit figures stay beside them for comparison. A
cell's outcome is the metric's event values per request, a ratio metric's
too (its numerator per request): a window has requests, not units.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np
from scipy import stats as scipy_stats

from rollout.experiments.exposures import MICROS
from rollout.experiments.results import (
    Effect,
    GuardrailResult,
    MetricResult,
    Period,
    SwitchbackSummary,
)
from rollout.experiments.stats.multiple import adjust_p_values
from rollout.experiments.stats.summary import EffectEstimate
from rollout.experiments.stats.switchback import (
    RANDOMIZATION_DRAWS,
    SwitchbackCells,
    SwitchbackEstimate,
    switchback_effect,
)
from serving.kernel.analysis_plan import AnalysisPlan, GuardrailSpec
from telemetry.verdict import Verdict


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


SwitchbackMetricCells = Mapping[str, SwitchbackCells]
"""A switchback experiment's window cells per outcome metric name: the same
windows, regions, arms and burn-in, each metric's own events."""

GuardrailJudge = Callable[[GuardrailSpec, EffectEstimate], tuple[Verdict, str]]


def switchback_metrics(plan: AnalysisPlan, arms: tuple[str, ...],
                       metrics: Sequence[MetricResult], cells: SwitchbackMetricCells,
                       period: Period | None = None, draws: int = RANDOMIZATION_DRAWS,
                       seed: int = 0) -> tuple[MetricResult, ...]:
    """``metrics`` (primary and secondary) with each effect replaced by the
    window-level one over its metric's cells and the per-unit figures kept in
    its ``switchback`` summary.

    ``adjusted_p_value`` is the larger of the regression and the
    randomization p-values, each corrected within the metric's family by the
    plan's correction (the primary across the treatment arms, the secondary
    metrics as one family, as per unit): a metric is significant only when
    both tests say so. The per-unit sequential method, CUPED and the
    posterior are dropped: they treat the requests of a window as independent.
    """
    updates: dict[int, dict[str, object]] = {}
    for role in ("primary", "secondary"):
        family = [m for m in metrics if m.role == role]
        regression: list[float] = []
        randomization: list[float] = []
        for m in family:
            spec = plan.primary if role == "primary" else next(
                s for s in plan.secondary if s.label == m.metric)
            est, effect, summary = window_test(plan, arms.index(m.arm), cells[spec.name],
                                               m, period, draws, seed)
            # model_copy does not validate: NaN is made None here, as validation would
            updates[id(m)] = {**_effect_fields(effect), "cuped": None,
                              "cuped_variance_reduction": None, "bayes": None,
                              "sequential": None, "switchback": summary}
            regression.append(est.p_value)
            randomization.append(est.ri_p_value)
        adjusted = np.fmax(adjust_p_values(regression, plan.correction),
                           adjust_p_values(randomization, plan.correction))
        for m, p in zip(family, adjusted, strict=True):
            updates[id(m)]["adjusted_p_value"] = _finite(float(p))
    return tuple(m.model_copy(update=updates[id(m)]) if id(m) in updates else m
                 for m in metrics)


def switchback_guardrails(plan: AnalysisPlan, arms: tuple[str, ...],
                          guardrails: Sequence[GuardrailResult], cells: SwitchbackMetricCells,
                          judge: GuardrailJudge, period: Period | None = None,
                          draws: int = RANDOMIZATION_DRAWS, seed: int = 0
                          ) -> tuple[GuardrailResult, ...]:
    """``guardrails`` with each effect replaced by the window-level one and the
    verdict given again by ``judge`` on it: a per-unit interval, too narrow
    by the shared shocks of a window, would call harm ruled out (or shown)
    on the evidence of a few windows. The per-unit figures stay in the
    ``switchback`` summary."""
    out: list[GuardrailResult] = []
    for g in guardrails:
        same = [s for s in plan.guardrails if s.label == g.metric]
        spec = next((s for s in same if (s.harm, s.tolerance, s.relative)
                     == (g.harm, g.tolerance, g.relative)), same[0])
        _, effect, summary = window_test(plan, arms.index(g.arm), cells[spec.name], g,
                                         period, draws, seed)
        verdict, reason = judge(spec, effect)
        out.append(g.model_copy(update={**_effect_fields(effect), "verdict": verdict,
                                        "reason": reason, "switchback": summary}))
    return tuple(out)


def window_test(plan: AnalysisPlan, arm: int, cells: SwitchbackCells, per_unit: Effect,
                period: Period | None, draws: int, seed: int
                ) -> tuple[SwitchbackEstimate, EffectEstimate, SwitchbackSummary]:
    """One metric's window-level test of ``arm`` against the control over the
    cells of ``period``: the estimate, its :class:`EffectEstimate` (with a
    relative interval) and the summary beside the ``per_unit`` figures."""
    used = cells_in_period(cells, period)
    est = switchback_effect(used, arm, 0, plan.alpha, draws, seed)
    summary = SwitchbackSummary(
        window_s=used.window_s, region=used.region_key, burn_in_s=used.burn_in_s,
        windows_control=est.cells_control, windows_treatment=est.cells_treatment,
        burn_in_requests=used.burn_in_requests, burn_in_events=used.burn_in_events,
        mixed_cells=used.mixed_cells, df=est.df if est.error is None else None,
        regression_p_value=est.p_value, ri_p_value=est.ri_p_value,
        ri_draws=est.ri_draws, naive_p_value=per_unit.p_value,
        naive_abs_effect=per_unit.abs_effect, error=est.error)
    return est, effect_of(est, plan.alpha), summary


def effect_of(est: SwitchbackEstimate, alpha: float) -> EffectEstimate:
    """A window-level estimate as the statistics' :class:`EffectEstimate`.

    The relative effect is ``β / μc`` with ``μc`` the control cells' mean;
    its interval is by the delta method, taking the arms' means as
    independent (``β ≈ μt − μc``): ``Var ≈ (se² + ((1 + r)² − 1)·Var μc) / μc²``,
    on the t of the regression's degrees of freedom."""
    nan = math.nan
    rel = rel_low = rel_high = nan
    if est.error is None and est.mean_control != 0:
        rel = est.abs_effect / est.mean_control
        variance_c = est.mean_control_se ** 2 if math.isfinite(est.mean_control_se) else 0.0
        variance = max(est.std_error ** 2 + ((1.0 + rel) ** 2 - 1.0) * variance_c, 0.0)
        half = (float(scipy_stats.t.ppf(1.0 - alpha / 2.0, est.df))
                * math.sqrt(variance) / abs(est.mean_control))
        rel_low, rel_high = rel - half, rel + half
    statistic = est.abs_effect / est.std_error if est.error is None else nan
    return EffectEstimate(est.mean_control, est.mean_treatment, est.abs_effect, rel,
                          est.std_error, est.ci_low, est.ci_high, rel_low, rel_high,
                          statistic, est.p_value, est.error)


def _effect_fields(effect: EffectEstimate) -> dict[str, object]:
    """The :class:`Effect` fields of ``effect``, NaN as None."""
    return {k: (_finite(v) if isinstance(v, float) else v)
            for k, v in Effect.fields_of(effect).items()}


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None
