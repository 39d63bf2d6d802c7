"""Guardrail checks over one analysis window: pure, on summary counts.

A window holds, per arm, the request and error counts and the latency
histogram (cumulative bucket counts, as Prometheus exposes them). Verdicts
are the one :class:`telemetry.verdict.Verdict` (re-exported here), never
booleans: a check with too few samples is ``INSUFFICIENT_DATA``, which is not
a pass.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from pydantic import BaseModel, ConfigDict

from rollout.core.plan import Guardrails
from telemetry.verdict import Verdict

__all__ = ["ArmWindow", "CheckResult", "Verdict", "Window", "evaluate", "histogram_quantile"]


class ArmWindow(BaseModel):
    """Counts for one arm over a window; ``buckets`` maps upper bound (s) to a
    cumulative count, ``+Inf`` included."""

    model_config = ConfigDict(frozen=True, ser_json_inf_nan="constants")

    requests: int = 0
    errors: int = 0
    buckets: tuple[tuple[float, float], ...] = ()

    def __add__(self, other: ArmWindow) -> ArmWindow:
        merged: dict[float, float] = dict(self.buckets)
        for bound, count in other.buckets:
            merged[bound] = merged.get(bound, 0.0) + count
        return ArmWindow(
            requests=self.requests + other.requests,
            errors=self.errors + other.errors,
            buckets=tuple(sorted(merged.items())),
        )

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    def quantile(self, q: float) -> float | None:
        """Latency quantile in seconds, interpolated within a bucket like
        PromQL's ``histogram_quantile``; None without observations."""
        return histogram_quantile(q, self.buckets)


class Window(BaseModel):
    """Per-arm counts of one analysis window, plus custom check values."""

    model_config = ConfigDict(frozen=True, ser_json_inf_nan="constants")

    baseline: ArmWindow = ArmWindow()
    candidate: ArmWindow = ArmWindow()
    custom: Mapping[str, float | None] = {}

    def __add__(self, other: Window) -> Window:
        return Window(
            baseline=self.baseline + other.baseline,
            candidate=self.candidate + other.candidate,
            custom={**self.custom, **other.custom},
        )


def histogram_quantile(q: float, buckets: tuple[tuple[float, float], ...]) -> float | None:
    """Quantile from cumulative ``(upper_bound, count)`` pairs; None if empty."""
    if not buckets:
        return None
    ordered = sorted(buckets)
    total = ordered[-1][1]
    if total <= 0:
        return None
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in ordered:
        if count >= rank:
            if math.isinf(bound):
                return lower_bound  # as PromQL: the highest finite bound
            if count == lower_count:
                return bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (
                count - lower_count
            )
        lower_bound, lower_count = bound, count
    return lower_bound


class CheckResult(BaseModel):
    """One guardrail's verdict with the figures behind it."""

    model_config = ConfigDict(frozen=True, ser_json_inf_nan="constants")

    name: str
    verdict: Verdict
    observed: float | None = None
    threshold: float | None = None
    detail: str = ""


def evaluate(guardrails: Guardrails, window: Window) -> tuple[Verdict, tuple[CheckResult, ...]]:
    """Judge a window: FAIL if any check fails, INSUFFICIENT_DATA if none
    fails but one cannot judge, else PASS."""
    results: list[CheckResult] = []
    cand, base = window.candidate, window.baseline
    enough = cand.requests >= guardrails.min_check_requests
    short = f"candidate has {cand.requests} requests, a check needs {guardrails.min_check_requests}"

    if guardrails.error_rate_delta is not None:
        if not enough:
            results.append(CheckResult(name="error_rate", verdict=Verdict.INSUFFICIENT_DATA,
                                       detail=short))
        else:
            delta = cand.error_rate - base.error_rate
            results.append(CheckResult(
                name="error_rate",
                verdict=Verdict.FAIL if delta > guardrails.error_rate_delta else Verdict.PASS,
                observed=delta, threshold=guardrails.error_rate_delta,
                detail=f"candidate {cand.error_rate:.4f} vs baseline {base.error_rate:.4f}",
            ))

    cand_p99 = cand.quantile(0.99) if enough else None
    base_p99 = base.quantile(0.99)
    if guardrails.p99_latency_max_ms is not None:
        if cand_p99 is None:
            results.append(CheckResult(name="p99_latency_max", verdict=Verdict.INSUFFICIENT_DATA,
                                       detail=short))
        else:
            ms = cand_p99 * 1000
            results.append(CheckResult(
                name="p99_latency_max",
                verdict=Verdict.FAIL if ms > guardrails.p99_latency_max_ms else Verdict.PASS,
                observed=ms, threshold=guardrails.p99_latency_max_ms,
                detail=f"candidate p99 {ms:.1f} ms",
            ))
    if guardrails.p99_latency_delta_ms is not None:
        if cand_p99 is None or base_p99 is None:
            results.append(CheckResult(
                name="p99_latency_delta", verdict=Verdict.INSUFFICIENT_DATA,
                detail=short if cand_p99 is None else "baseline has no latency observations",
            ))
        else:
            delta_ms = (cand_p99 - base_p99) * 1000
            results.append(CheckResult(
                name="p99_latency_delta",
                verdict=Verdict.FAIL if delta_ms > guardrails.p99_latency_delta_ms
                else Verdict.PASS,
                observed=delta_ms, threshold=guardrails.p99_latency_delta_ms,
                detail=f"candidate p99 {cand_p99 * 1000:.1f} ms vs baseline "
                       f"{base_p99 * 1000:.1f} ms",
            ))
    shadow_checks = (
        ("shadow_label_agreement", guardrails.min_shadow_agreement, "min"),
        ("shadow_score_diff_p99", guardrails.max_shadow_score_diff_p99, "max"),
    )
    for name, limit, side in shadow_checks:
        if limit is None:
            continue
        value = window.custom.get(name)
        if value is None or math.isnan(value):
            results.append(CheckResult(name=name, verdict=Verdict.INSUFFICIENT_DATA,
                                       detail="no shadow figures for this model pair"))
            continue
        failed = value < limit if side == "min" else value > limit
        results.append(CheckResult(name=name, verdict=Verdict.FAIL if failed else Verdict.PASS,
                                   observed=value, threshold=limit,
                                   detail=f"shadow v-candidate vs baseline ({side} {limit})"))
    for check in guardrails.promql:
        value = window.custom.get(check.name)
        if value is None or math.isnan(value):
            results.append(CheckResult(name=check.name, verdict=Verdict.INSUFFICIENT_DATA,
                                       detail="query returned no data"))
            continue
        low, high = check.threshold_range.min, check.threshold_range.max
        failed = (low is not None and value < low) or (high is not None and value > high)
        results.append(CheckResult(
            name=check.name, verdict=Verdict.FAIL if failed else Verdict.PASS, observed=value,
            threshold=high if high is not None else low,
            detail=f"range [{low}, {high}]",
        ))

    verdicts = {r.verdict for r in results}
    if Verdict.FAIL in verdicts:
        overall = Verdict.FAIL
    elif Verdict.INSUFFICIENT_DATA in verdicts or not results:
        overall = Verdict.INSUFFICIENT_DATA if results else Verdict.PASS
    else:
        overall = Verdict.PASS
    return overall, tuple(results)
