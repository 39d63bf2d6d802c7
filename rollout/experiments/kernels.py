"""The two passes that dominate an analysis's time, behind one interface.

At millions of units an analysis is a handful of whole-array passes repeated
for every metric and every sequential look: each metric's total per unit over
the outcome rows that count, and each arm's sums (n, Σy, Σy², Σx, Σx², Σxy)
over the units. :class:`NumpyKernels` is the reference, in numpy and nothing
else, so this pure core stays importable and testable on its own; the
analysis command passes compiled kernels of the same contract
(:mod:`rollout.experiments.compiled_kernels`), which do each pass in one
sweep instead of several whole-array temporaries.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from rollout.experiments.stats.summary import PairSummary


class AnalysisKernels(Protocol):
    """What :mod:`rollout.experiments.analysis` asks of the arrays it is given."""

    def unit_totals(self, unit: NDArray[np.int64], metric: NDArray[np.integer[Any]],
                    value: NDArray[np.float64], rows: NDArray[np.bool_], code: int,
                    binary: bool, n_units: int) -> NDArray[np.float64]:
        """Per unit (``unit`` indexes ``0..n_units-1``), over the outcome rows
        ``rows`` marks whose ``metric`` is ``code``: the sum of their values, or
        with ``binary`` 1.0 when any value is positive (a later negative one, a
        refund, does not undo a conversion) and 0.0 otherwise."""
        ...

    def arm_moments(self, arm: NDArray[np.int64], y: NDArray[np.float64],
                    x: NDArray[np.float64], n_arms: int,
                    units: NDArray[np.bool_] | None = None) -> list[PairSummary]:
        """Per arm ``0..n_arms-1``, the sums of the units ``units`` marks (all
        without it). Sums must be accurate to ~1e-15 relative whatever the
        number of units: a running sum over millions of terms drifts to ~1e-13,
        which the analysis's agreement with independent recomputations would
        show."""
        ...


class NumpyKernels:
    """The reference kernels: whole-array numpy passes."""

    def unit_totals(self, unit: NDArray[np.int64], metric: NDArray[np.integer[Any]],
                    value: NDArray[np.float64], rows: NDArray[np.bool_], code: int,
                    binary: bool, n_units: int) -> NDArray[np.float64]:
        selected = rows & (metric == code)
        if binary:
            selected &= value > 0
            hits = np.bincount(unit[selected], minlength=n_units)
            return (hits > 0).astype(np.float64)
        return np.bincount(unit[selected], weights=value[selected],
                           minlength=n_units).astype(np.float64, copy=False)

    def arm_moments(self, arm: NDArray[np.int64], y: NDArray[np.float64],
                    x: NDArray[np.float64], n_arms: int,
                    units: NDArray[np.bool_] | None = None) -> list[PairSummary]:
        # Each arm's units in their own order, then its sums over that contiguous
        # copy: numpy's pairwise summation keeps millions of terms accurate to
        # ~1e-16 relative. One comparison per arm costs less than sorting the
        # units by arm.
        out = []
        for a in range(n_arms):
            mine = arm == a
            if units is not None:
                mine &= units
            ya, xa = y[mine], x[mine]
            out.append(PairSummary(int(ya.size), float(ya.sum()), float(np.dot(ya, ya)),
                                   float(xa.sum()), float(np.dot(xa, xa)),
                                   float(np.dot(xa, ya))))
        return out


NUMPY_KERNELS: AnalysisKernels = NumpyKernels()
