"""A switchback summary as the HTML report shows it, read from the JSON
document (:class:`~rollout.experiments.results.SwitchbackSummary`)."""

from __future__ import annotations

import math
from typing import Any

from rollout.experiments.results import switchback_text


def switchback_line(summary: dict[str, Any]) -> str:
    """The windows, burn-in and p-values of a switchback test in one line."""

    def count(name: str) -> int:
        value = summary.get(name)
        return value if isinstance(value, int) and not isinstance(value, bool) else 0

    def number(name: str) -> float | None:
        value = summary.get(name)
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(
                value):
            return float(value)
        return None

    region = summary.get("region")
    error = summary.get("error")
    return switchback_text(count("window_s"), None if region is None else str(region),
                           count("burn_in_s"), count("windows_control"),
                           count("windows_treatment"), count("burn_in_requests"),
                           number("regression_p_value"), number("ri_p_value"),
                           number("naive_p_value"), None if error is None else str(error))
