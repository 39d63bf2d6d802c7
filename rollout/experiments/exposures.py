"""What an analysis is computed from: each exposed unit's arm and first exposure
(:class:`Exposures`) and the outcome events matched to those units
(:class:`OutcomeRows`), with the helpers that build them from decision rows.

Apart from :mod:`rollout.experiments.analysis` (which re-exports them) so that
reading the logs into these arrays (:mod:`rollout.experiments.data`) does not
load the statistics and their scipy: ``rampart analyze`` starts reading while
those are still being imported.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

MICROS = 1_000_000
ARM_BITS = 4  # up to 16 arms share an int64 with the exposure time (see first_exposures)
MISSING_SEGMENT = "(missing)"


# --------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class Exposures:
    """One entry per exposed unit: its arm (index into ``arms``) and when it was
    first exposed (microseconds since the epoch).

    ``entered_at``, when given, is each unit's first decision in the experiment
    at all, earlier than its exposure when a later period is analysed: the
    pre-period (the CUPED covariate) must end there, because what came after
    was already shaped by the unit's arm.

    ``split``, when given, is per unit the split (weights) in force at its
    exposure: an index into ``splits`` (weight vectors in ``arms`` order, as the
    decision log recorded them), or -1 where the log recorded none and the
    configured ``weights`` are assumed. Without it every unit is taken to have
    been assigned under ``weights``.
    """

    arms: tuple[str, ...]
    weights: tuple[float, ...]
    arm: NDArray[np.int64]
    exposed_at: NDArray[np.int64]
    crossovers: int = 0  # units seen in more than one arm (counted in their first)
    segments: dict[str, tuple[NDArray[np.int64], tuple[str, ...]]] = field(default_factory=dict)
    entered_at: NDArray[np.int64] | None = None
    split: NDArray[np.int64] | None = None
    splits: tuple[tuple[float, ...], ...] = ()
    # A cluster-randomized experiment: the context attribute naming the
    # clusters, and per unit its cluster's code (the value at its exposure).
    cluster_attribute: str | None = None
    clusters: NDArray[np.int64] | None = None

    @property
    def n_units(self) -> int:
        return int(self.arm.size)


def split_weights(label: str, arms: Sequence[str]) -> tuple[float, ...]:
    """The weights (basis points, in ``arms`` order) of a logged split such as
    ``control:9000,treatment:1000``. An arm the split does not name has weight
    0; an arm it names that ``arms`` lacks is left out (units can only be counted
    in the arms given, and the test normalizes the weights among them). A label
    that is not ``name:integer`` pairs is a ``ValueError``."""
    weights = dict.fromkeys(arms, 0.0)
    for part in label.split(","):
        name, sep, value = part.rpartition(":")
        if not sep or not name or not value.isdigit():
            raise ValueError(f"arm weights {label!r} are not name:basis_points pairs")
        if name in weights:
            weights[name] = float(value)
    return tuple(weights.values())


@dataclass(frozen=True)
class OutcomeRows:
    """Outcome events already matched to exposed units: ``unit`` indexes
    :class:`Exposures`; ``metric`` indexes ``metrics``.

    ``at`` is when the event happened (it decides the event's window, pre-period
    or in-experiment); ``received`` when it reached the outcomes log (it decides
    when the event was known: a look reconstructed at time t counts only what had
    arrived by t). Without ``received`` an event is taken as known when it happened.
    """

    metrics: tuple[str, ...]
    unit: NDArray[np.int64]
    metric: NDArray[np.integer[Any]]  # int8 when the plan has few metrics
    value: NDArray[np.float64]
    at: NDArray[np.int64]  # microseconds since the epoch
    received: NDArray[np.int64] | None = None  # microseconds since the epoch


def first_exposures(
    unit_codes: NDArray[np.integer[Any]],
    n_units: int,
    arm_codes: NDArray[np.integer[Any]],
    at_us: NDArray[np.int64],
) -> tuple[NDArray[np.int64], NDArray[np.int64], int, NDArray[np.bool_]]:
    """Each unit's first exposure: ``(arm, exposed_at, crossovers, first_rows)``.

    Time and arm are packed into one int64 (time << 4 | arm), so a single
    unbuffered minimum per unit finds both the first time and the arm at that
    time without sorting ten million rows. ``first_rows`` marks the rows that
    are a unit's first decision (for reading segment attributes at exposure).
    """
    codes = unit_codes.astype(np.int64, copy=False)
    arm64 = arm_codes.astype(np.int64, copy=False)
    packed = (at_us.astype(np.int64, copy=False) << ARM_BITS) | arm64
    first = np.full(n_units, np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(first, codes, packed)
    first_of_row = first[codes]
    first_rows = packed == first_of_row
    arm_mask = (1 << ARM_BITS) - 1
    moved = (first_of_row & arm_mask) != arm64  # rows in another arm than the unit's first
    crossovers = int(np.count_nonzero(np.bincount(codes[moved], minlength=n_units)))
    return first & arm_mask, first >> ARM_BITS, crossovers, first_rows
