"""The switchback design: the unit randomized is a time window (optionally
crossed with a region of the request context), not a user (part of the config
kernel: pure pydantic and the standard library).

Where users of one arm change the world the other arm sees (a marketplace's
prices, a shared pool of drivers, a cache warmed by either model), a per-user
split compares two arms that interfere. Switching the whole of the traffic
between arms by time window, every request of a window (and region) on one
arm, removes the interference between arms within a window; what it leaves is
carry-over at a switch, which the analysis's burn-in drops.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from pydantic import Field, model_validator

from serving.kernel.ids import BUCKETS, MAX_CONTEXT_KEY_CHARS, Frozen

MIN_WINDOW_S = 1
MAX_WINDOW_S = 86_400


class SwitchbackSpec(Frozen):
    """An experiment randomized by time window: window ``k`` is
    ``[k·window_s, (k+1)·window_s)`` seconds since the epoch, and every request in
    it (with the same value of the ``region`` context key, when one is named) is
    on the arm the hash of ``"k"`` (or ``"k:region"``) under the experiment's salt
    gives. ``burn_in_s``: the analysis drops the first seconds of a window whose
    arm differs from the previous window's (in the same region), while the
    previous arm's effect may still act."""

    # Windows of seconds suit only high traffic with short-lived effects (and
    # demos); most markets want minutes to hours, so that a window holds enough
    # requests and a switch's transient does not fill it. Above a day the
    # experiment has few windows a week.
    window_s: int = Field(ge=MIN_WINDOW_S, le=MAX_WINDOW_S)
    region: str | None = Field(default=None, min_length=1, max_length=MAX_CONTEXT_KEY_CHARS)
    burn_in_s: int = Field(default=0, ge=0)

    @model_validator(mode="after")
    def _burn_in_inside_window(self) -> SwitchbackSpec:
        if self.burn_in_s >= self.window_s:
            raise ValueError(f"burn_in_s ({self.burn_in_s}) must be shorter than window_s "
                             f"({self.window_s}): a burn-in of the whole window leaves no "
                             "data after a switch")
        return self

    def window_index(self, at_s: float) -> int:
        """The window holding ``at_s`` (seconds since the epoch)."""
        return math.floor(at_s / self.window_s)


def switchback_unit(window_index: int, region: str | None) -> str:
    """The id hashed for a window (and region): ``"k"`` or ``"k:region"``."""
    return f"{window_index}" if region is None else f"{window_index}:{region}"


def check_switchback_design(experiment_id: str, fields: Mapping[str, Any]) -> None:
    """Refuse what a window-randomized experiment cannot be (``fields``: the
    experiment's other fields, validated so far); ``ValueError`` says why."""
    where = f"experiment {experiment_id!r}: a switchback experiment"
    if fields.get("layer") is not None:
        raise ValueError(f"{where} cannot be in a layer (layer {fields['layer']!r}): a layer "
                         "gives each user to one of its experiments, so a window's traffic "
                         "would be split between experiments instead of all on the window's "
                         "arm")
    coverage = fields.get("coverage_bp", BUCKETS)
    if coverage != BUCKETS:
        raise ValueError(f"{where} takes all the eligible traffic of its windows; coverage_bp "
                         f"{coverage} would leave part of each window on the default route, "
                         "sharing the market with the window's arm (the interference windows "
                         "exist to avoid): narrow it by targeting instead")
    if fields.get("cluster") is not None:
        raise ValueError(f"{where} randomizes windows; it cannot also randomize clusters "
                         f"(cluster {fields['cluster']!r})")
