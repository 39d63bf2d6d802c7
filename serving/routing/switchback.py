"""Switchback routing: the id hashed for a request of a window-randomized
experiment is its time window (and region), not its unit.

Pure: the time comes in as an argument. The gateway passes the clock reading
it logs as the decision's timestamp, so the analysis recomputes each
decision's window from the log alone.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import numpy.typing as npt

from serving.kernel.ids import ContextValue
from serving.kernel.switchback import SwitchbackSpec, switchback_unit
from serving.routing.assignment import buckets_vectorized


def window_unit(spec: SwitchbackSpec, context: Mapping[str, ContextValue],
                now: float | None) -> str | None:
    """The id hashed under the experiment's salt for a request at ``now``
    (seconds since the epoch): ``"k"`` for window ``k``, or ``"k:region"``.
    None, not eligible, without a time (routing never reads the clock itself)
    or when the context lacks the region (or holds a value that is not text
    or an integer: a region is a name, and ``1.0`` and ``1`` must not be two)."""
    if now is None:
        return None
    region: str | None = None
    if spec.region is not None:
        value = context.get(spec.region)
        if isinstance(value, bool) or not isinstance(value, str | int) or value == "":
            return None
        region = str(value)
    return switchback_unit(spec.window_index(now), region)


def window_arm_buckets(salt: str, windows: npt.NDArray[np.int64],
                       regions: npt.NDArray[np.object_] | None = None
                       ) -> npt.NDArray[np.int64]:
    """The arm bucket of each (window, region) under ``salt``, as routing gives
    it (vectorized; ``regions`` None: windows not crossed with a region)."""
    if regions is None:
        ids = [f"{int(w)}" for w in windows]
    else:
        ids = [f"{int(w)}:{r}" for w, r in zip(windows, regions, strict=True)]
    if not ids:
        return np.zeros(0, dtype=np.int64)
    return buckets_vectorized(salt, ids)
