"""Routing of factorial experiments: each factor's level from its own salt's
bucket of the unit, the cell from the levels (pure; numpy and pyarrow only on
the vectorized path, as in :mod:`serving.routing.assignment`).

The factors are hashed under distinct salts, so a unit's level of one factor
says nothing about its level of another: the factors are independent and a
cell's share of the units is the product of its levels' shares. Within a
factor the levels own bucket ranges laid out as arms are (:func:`allocate`),
so ramping a level up only adds units to it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from serving.kernel.factorial import FactorSpec, parse_cell
from serving.routing.assignment import (
    Allocation,
    allocate,
    bucket_from_state,
    buckets_vectorized,
    salt_state,
)


@dataclass(frozen=True, slots=True)
class CompiledFactor:
    """One factor as routing uses it: its salt's state and its levels' ranges."""

    name: str
    salt: str
    salt_state: int
    levels: Allocation
    serves_models: bool

    def level_of(self, unit: str) -> int:
        """Index of ``unit``'s level of this factor."""
        return self.levels.arm_of(bucket_from_state(self.salt_state, unit))

    def levels_of(self, units: Sequence[str] | pa.Array) -> npt.NDArray[np.int64]:
        """Vectorized :meth:`level_of`."""
        return self.levels.arms_of(buckets_vectorized(self.salt, units))


@dataclass(frozen=True, slots=True)
class CompiledFactorial:
    """A factorial experiment's factors; cell ``i`` is the experiment's arm
    ``i``, its level indices read in mixed radix, the first factor the most
    significant digit (the order :func:`serving.kernel.factorial.cell_levels`
    generates the arms in)."""

    factors: tuple[CompiledFactor, ...]
    strides: tuple[int, ...]

    def cell_of(self, unit: str) -> int:
        """The arm index of ``unit``'s cell: one hash per factor."""
        return sum(f.level_of(unit) * s for f, s in zip(self.factors, self.strides,
                                                        strict=True))

    def cells_of(self, units: Sequence[str] | pa.Array) -> npt.NDArray[np.int64]:
        """Vectorized :meth:`cell_of`."""
        cells = np.zeros(len(units), dtype=np.int64)
        for factor, stride in zip(self.factors, self.strides, strict=True):
            cells += factor.levels_of(units) * stride
        return cells

    def levels_by_factor(self, units: Sequence[str] | pa.Array
                         ) -> dict[str, npt.NDArray[np.int64]]:
        """Each factor's level index of each unit (for the analysis and tests)."""
        return {f.name: f.levels_of(units) for f in self.factors}

    def describe(self) -> list[dict[str, Any]]:
        """The factors for ``GET /v1/routing`` (salts and buckets are stripped
        from the public view with the experiment's own)."""
        return [
            {"name": f.name, "salt": f.salt, "serves_models": f.serves_models,
             "levels": [{"name": name, "weight_bp": f.levels.share(i),
                         "buckets": [[r.start, r.stop] for r in f.levels.ranges[i]]}
                        for i, name in enumerate(f.levels.arm_names)]}
            for f in self.factors
        ]


def compile_factorial(factors: Sequence[FactorSpec]) -> CompiledFactorial | None:
    """The routing form of an experiment's factors (None: not factorial)."""
    if not factors:
        return None
    compiled = tuple(
        CompiledFactor(f.name, f.salt, salt_state(f.salt),
                       allocate([level.name for level in f.levels],
                                [level.weight_bp for level in f.levels]),
                       f.serves_models)
        for f in factors)
    strides = []
    stride = 1
    for f in reversed(factors):
        strides.append(stride)
        stride *= len(f.levels)
    return CompiledFactorial(compiled, tuple(reversed(strides)))


def factor_levels(factorial: CompiledFactorial | None, arm: str) -> dict[str, str] | None:
    """The ``{factor: level}`` of a decision's arm in a factorial experiment
    (None outside one, or for an arm that is not a cell: holdout, ineligible)."""
    return None if factorial is None else parse_cell(arm)
