"""The analysis kernels (:class:`rollout.experiments.kernels.AnalysisKernels`)
compiled: each pass is one sweep over its arrays.

The numpy reference builds every mask and selection as a whole-array
temporary: an arm's sums compare, combine, gather and copy millions of
values before adding them, so the pass costs several times the memory
traffic of reading the arrays once. Here the same results come from reading
each array once, with no temporary.

Per-unit totals add each unit's values in row order, as ``np.bincount`` does:
the figures are the reference's exactly. An arm's sums add plainly within
blocks of :data:`_BLOCK` units and combine the block sums with compensated
(Neumaier) addition, which keeps millions of terms as accurate as numpy's
pairwise summation (within ~1e-15 relative of the reference).

Computation only (numpy and numba); numba caches the compiled code in this
package's ``__pycache__``, as for :mod:`rollout.experiments.unit_groups`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numba import njit
from numpy.typing import NDArray

from rollout.experiments.stats.summary import PairSummary

# Units summed plainly before a block's sums join the compensated totals: the
# plain part's rounding grows with the block, the compensation's cost with the
# number of blocks.
_BLOCK = 32
# The sums of one arm: count, Σy, Σy², Σx, Σx², Σxy.
_MOMENTS = 6


@njit(cache=True, nogil=True)  # type: ignore[misc]
def _unit_totals(unit: np.ndarray, metric: np.ndarray, value: np.ndarray,
                 rows: np.ndarray, code: int, binary: bool,
                 n_units: int) -> np.ndarray:  # pragma: no cover - compiled
    out = np.zeros(n_units)
    for i in range(unit.size):
        if not rows[i] or metric[i] != code:
            continue
        u = unit[i]
        if u < 0 or u >= n_units:
            continue
        if binary:
            if value[i] > 0:
                out[u] = 1.0
        else:
            out[u] += value[i]
    return out


@njit(cache=True, nogil=True)  # type: ignore[misc]
def _arm_moments(arm: np.ndarray, y: np.ndarray, x: np.ndarray, units: np.ndarray,
                 every_unit: bool, n_arms: int) -> np.ndarray:  # pragma: no cover - compiled
    total = np.zeros((n_arms, _MOMENTS))
    compensation = np.zeros((n_arms, _MOMENTS))
    block = np.zeros((n_arms, _MOMENTS))
    start = 0
    size = arm.size
    while start < size:
        end = min(start + _BLOCK, size)
        block[:] = 0.0
        for j in range(start, end):
            if not every_unit and not units[j]:
                continue
            a = arm[j]
            if a < 0 or a >= n_arms:
                continue
            yj = y[j]
            xj = x[j]
            block[a, 0] += 1.0
            block[a, 1] += yj
            block[a, 2] += yj * yj
            block[a, 3] += xj
            block[a, 4] += xj * xj
            block[a, 5] += xj * yj
        for a in range(n_arms):
            for k in range(_MOMENTS):
                old = total[a, k]
                add = block[a, k]
                new = old + add
                # Neumaier: the rounding error of each addition, kept aside
                if abs(old) >= abs(add):
                    compensation[a, k] += (old - new) + add
                else:
                    compensation[a, k] += (add - new) + old
                total[a, k] = new
        start = end
    return total + compensation


class CompiledKernels:
    """:class:`~rollout.experiments.kernels.AnalysisKernels` in one compiled
    sweep a pass."""

    def unit_totals(self, unit: NDArray[np.int64], metric: NDArray[np.integer[Any]],
                    value: NDArray[np.float64], rows: NDArray[np.bool_], code: int,
                    binary: bool, n_units: int) -> NDArray[np.float64]:
        out: NDArray[np.float64] = _unit_totals(
            np.ascontiguousarray(unit, dtype=np.int64), np.ascontiguousarray(metric),
            np.ascontiguousarray(value, dtype=np.float64),
            np.ascontiguousarray(rows, dtype=np.bool_), int(code), bool(binary),
            int(n_units))
        return out

    def arm_moments(self, arm: NDArray[np.int64], y: NDArray[np.float64],
                    x: NDArray[np.float64], n_arms: int,
                    units: NDArray[np.bool_] | None = None) -> list[PairSummary]:
        sums = _arm_moments(
            np.ascontiguousarray(arm, dtype=np.int64), np.ascontiguousarray(y, dtype=np.float64),
            np.ascontiguousarray(x, dtype=np.float64),
            np.zeros(0, dtype=np.bool_) if units is None
            else np.ascontiguousarray(units, dtype=np.bool_), units is None, int(n_arms))
        return [PairSummary(int(row[0]), float(row[1]), float(row[2]), float(row[3]),
                            float(row[4]), float(row[5])) for row in sums]


def load_compiled() -> CompiledKernels:
    """The kernels with their compiled code loaded (from numba's cache, else
    compiled): each is called once on a few values, for every signature the
    analysis uses. The first call of any compiled function in a process also
    starts numba itself, a few tenths of a second that a caller can spend
    while it waits on something else."""
    kernels = CompiledKernels()
    unit = np.arange(4, dtype=np.int64)
    value = np.ones(4)
    rows = np.ones(4, dtype=np.bool_)
    for metric in (np.zeros(4, dtype=np.int8), np.zeros(4, dtype=np.int64)):
        kernels.unit_totals(unit, metric, value, rows, 0, True, 4)
    kernels.arm_moments(unit % 2, value, value, 2, rows)
    kernels.arm_moments(unit % 2, value, value, 2)
    return kernels
