"""Pre-registered experiment analysis plans (part of the config kernel).

An experiment's ``analysis:`` block: metrics, error rates, sequential design,
segments, strata and windows, fixed before the experiment starts.
"""

from __future__ import annotations

import datetime as dt
import itertools
from typing import Any, Literal

from pydantic import (
    Field,
    SerializerFunctionWrapHandler,
    field_validator,
    model_serializer,
    model_validator,
)

from serving.kernel.ids import ID_PATTERN
from serving.kernel.ids import Frozen as _Frozen

MetricType = Literal["binary", "mean", "ratio"]
# Strata attributes are crossed: three already make tens of strata, and each
# more one multiplies the strata too small to estimate.
MAX_STRATA_ATTRIBUTES = 3


class MetricSpec(_Frozen):
    """A metric computed from outcome events, per exposed unit.

    ``binary``: 1 when the unit has an event of ``name`` with a positive value
    in the window, else 0. ``mean``: the sum of the unit's ``name`` values in
    the window (0 without events: the analysis is intention-to-treat).
    ``ratio``: per arm, the sum of ``name`` over the sum of ``denominator``
    (e.g. revenue per session), with a delta-method variance.
    """

    name: str = Field(pattern=ID_PATTERN)
    type: MetricType = "mean"
    denominator: str | None = Field(default=None, pattern=ID_PATTERN)

    @property
    def label(self) -> str:
        """How reports name the metric: ``name``, or ``name/denominator`` for a ratio."""
        return self.name if self.denominator is None else f"{self.name}/{self.denominator}"

    @model_validator(mode="after")
    def _ratio(self) -> MetricSpec:
        if (self.type == "ratio") != (self.denominator is not None):
            raise ValueError(f"metric {self.name!r}: a ratio metric names a denominator, "
                             "and only a ratio metric does")
        return self


class GuardrailSpec(MetricSpec):
    """A metric that must not get worse than ``tolerance`` in the ``harm`` direction
    (absolute units, or a fraction of the control when ``relative``)."""

    harm: Literal["increase", "decrease"]
    tolerance: float = Field(ge=0, allow_inf_nan=False)
    relative: bool = False


class SequentialSpec(_Frozen):
    """How the primary metric may be looked at before the planned end.

    ``group_sequential``: Lan-DeMets alpha spending over ``looks`` equally
    spaced information fractions (or ``schedule``) of ``max_units_per_arm``.
    ``msprt``: always-valid p-values and confidence sequences, valid at any look.
    """

    method: Literal["none", "group_sequential", "msprt"] = "none"
    kind: Literal["obrien_fleming", "pocock"] = "obrien_fleming"
    looks: int = Field(default=5, ge=1, le=50)
    schedule: tuple[float, ...] | None = None
    max_units_per_arm: int | None = Field(default=None, ge=2)

    @model_validator(mode="after")
    def _design(self) -> SequentialSpec:
        if self.schedule is not None:
            fractions = list(self.schedule)
            if not fractions or any(not 0 < f <= 1 for f in fractions) or any(
                    b <= a for a, b in itertools.pairwise(fractions)):
                raise ValueError("sequential.schedule: information fractions must be "
                                 f"strictly increasing in (0, 1]; got {fractions}")
        if self.method == "group_sequential" and self.max_units_per_arm is None:
            raise ValueError("sequential: group_sequential needs max_units_per_arm "
                             "(the planned units per arm that fraction 1 means)")
        return self

    def fractions(self) -> tuple[float, ...]:
        if self.schedule is not None:
            return self.schedule
        return tuple((k + 1) / self.looks for k in range(self.looks))


class AnalysisPlan(_Frozen):
    """The pre-registered analysis of an experiment, fixed before ``start``.

    ``rampart analyze`` records it at the first analysis (or at ``rampart serve``)
    and refuses a changed plan once the experiment has started.
    """

    start: dt.datetime
    primary: MetricSpec
    secondary: tuple[MetricSpec, ...] = ()
    guardrails: tuple[GuardrailSpec, ...] = ()
    alpha: float = Field(default=0.05, gt=0, lt=1)
    power: float = Field(default=0.8, gt=0, lt=1)
    mde: float = Field(gt=0, allow_inf_nan=False)
    mde_relative: bool = True
    baseline: float | None = Field(default=None, allow_inf_nan=False,
                                   description="expected control mean (scales a relative MDE)")
    sequential: SequentialSpec = SequentialSpec()
    segments: tuple[str, ...] = ()
    # Context attributes, read at each unit's first exposure as segments are,
    # whose crossed values are the strata of a post-stratified estimate of the
    # primary metric, reported next to CUPED (it does not decide).
    strata: tuple[str, ...] = ()
    correction: Literal["bonferroni", "holm", "bh"] = "holm"
    outcome_window_s: float = Field(default=7 * 86_400.0, gt=0, allow_inf_nan=False)
    pre_period_s: float = Field(default=14 * 86_400.0, ge=0, allow_inf_nan=False)
    cuped: bool = True

    @field_validator("start")
    @classmethod
    def _aware(cls, start: dt.datetime) -> dt.datetime:
        if start.tzinfo is None:
            raise ValueError("start needs a time zone, e.g. 2026-11-23T00:00:00Z")
        return start.astimezone(dt.UTC)

    @field_validator("strata")
    @classmethod
    def _strata(cls, strata: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(strata)) != len(strata):
            raise ValueError(f"strata must be distinct attributes, got {list(strata)}")
        if len(strata) > MAX_STRATA_ATTRIBUTES:
            raise ValueError(f"at most {MAX_STRATA_ATTRIBUTES} strata attributes (their values "
                             f"are crossed, and every stratum needs units in both arms), "
                             f"got {len(strata)}")
        if any(not name for name in strata):
            raise ValueError("a strata attribute needs a name")
        return strata

    @model_serializer(mode="wrap")
    def _without_empty_strata(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # A plan's dump is its pre-registration fingerprint: leaving out strata
        # when there are none keeps the fingerprint of every plan recorded
        # before the field existed, so those experiments are not refused as changed.
        body: dict[str, Any] = handler(self)
        if not self.strata:
            body.pop("strata", None)
        return body

    @model_validator(mode="after")
    def _plan(self) -> AnalysisPlan:
        names = [self.primary.label] + [m.label for m in self.secondary]
        if len(set(names)) != len(names):
            raise ValueError(f"primary and secondary metrics must be distinct, got {names}")
        if self.strata and self.primary.type == "ratio":
            raise ValueError("strata: post-stratification estimates a binary or mean primary "
                             f"metric, not the ratio {self.primary.label!r}")
        if self.mde_relative and self.sequential.method == "msprt" and self.baseline is None:
            raise ValueError("a relative MDE with the msprt method needs baseline "
                             "(the expected control mean) to fix the mixing variance")
        return self

    def mde_absolute(self) -> float | None:
        """The MDE in the metric's units, when it can be known before the data."""
        if not self.mde_relative:
            return self.mde
        return None if self.baseline is None else self.mde * abs(self.baseline)
