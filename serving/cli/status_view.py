"""The ``rampart rollout status`` table: step, weight, per-arm figures against thresholds."""

from __future__ import annotations

import datetime as dt
from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def render_status(body: dict[str, Any]) -> Group:
    """A renderable summary of one rollout's status JSON."""
    plan = body["plan"]
    guard = plan.get("guardrails", {})
    head = Text.assemble(
        (f"{body['id']}  ", "bold"), (body["phase"].upper(), "bold cyan"),
        f"  {plan['model_name']} v{plan['baseline_version']} -> v{plan['candidate_version']}",
        f"  step {body['step_index'] + 1}/{len(plan['steps'])} ({body['step_percent']}%)",
        f"  candidate weight {body['weight_bp'] / 100:g}%",
        f"  failed checks {body['failed_checks']}/{plan['failure_limit']}",
    )
    arms = Table(title="last analysis window", expand=False)
    for column in ("arm", "requests", "errors", "error rate", "p99 ms"):
        arms.add_column(column, justify="right" if column != "arm" else "left")
    window = body.get("last_window") or {}
    for arm in ("baseline", "candidate"):
        figures = window.get(arm) or {}
        arms.add_row(arm, _fmt(figures.get("requests")), _fmt(figures.get("errors")),
                     _fmt(figures.get("error_rate"), 4), _fmt(figures.get("p99_ms")))
    checks = Table(title="guardrails", expand=False)
    for column in ("check", "verdict", "observed", "threshold", "detail"):
        checks.add_column(column)
    for check in body.get("last_checks") or []:
        style = {"PASS": "green", "FAIL": "red"}.get(check["verdict"], "yellow")
        checks.add_row(check["name"], Text(check["verdict"], style=style),
                       _fmt(check.get("observed"), 4), _fmt(check.get("threshold"), 4),
                       check.get("detail", ""))
    limits = Text(
        f"limits: p99 delta {guard.get('p99_latency_delta_ms')} ms, p99 cap "
        f"{guard.get('p99_latency_max_ms')} ms, error-rate delta {guard.get('error_rate_delta')}, "
        f"min requests per step {plan['min_requests']}; "
        f"step requests so far {body['step_requests']}"
    )
    trail = Table(title="audit trail", expand=False)
    for column in ("time", "from", "to", "weight", "reason"):
        trail.add_column(column)
    for record in body.get("audit", [])[-12:]:
        when = dt.datetime.fromtimestamp(record["at"], tz=dt.UTC).strftime("%H:%M:%S.%f")[:-3]
        trail.add_row(when, record["from_phase"], record["to_phase"],
                      f"{record['weight_bp'] / 100:g}%", record["reason"])
    parts: list[Any] = [head]
    if body.get("hold_reason"):
        parts.append(Text(body["hold_reason"], style="yellow"))
    parts += [arms, checks, limits, trail]
    return Group(*parts)
