"""Periods of an experiment: where the model versions its arms serve change.

An arm names a model and a version or an alias; the decision log records the
concrete version each request was served. When an alias moves during an
experiment (a rollout promotes ``champion`` from version 1 to 2), or a rollout
splits an arm's traffic between two versions, the arm's comparison changes, and
pooling units from before and after would average two different experiments.

:func:`split_periods` takes, per arm and served version, the first and last time
the log shows it served, and cuts the experiment wherever any arm starts or stops
serving a version: within a period, every arm serves one fixed set of versions.
A version that stops and later comes back to the same arm is taken as served
throughout (its span covers the gap). Pure: no I/O, no Arrow.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from rollout.experiments.results import Period, PeriodWarning

EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
MICROSECOND = dt.timedelta(microseconds=1)


@dataclass(frozen=True, slots=True)
class ServedSpan:
    """Arm ``arm`` served ``version`` (``model/version``) from ``first_us`` to
    ``last_us`` (microseconds since the epoch, both inclusive)."""

    arm: str
    version: str
    first_us: int
    last_us: int


def from_micros(at_us: int) -> dt.datetime:
    """The UTC time ``at_us`` microseconds after the epoch, exactly (no float)."""
    return EPOCH + at_us * MICROSECOND


def to_micros(moment: dt.datetime) -> int:
    """Microseconds since the epoch of an aware time, exactly (no float)."""
    return (moment - EPOCH) // MICROSECOND


def boundaries(spans: Sequence[ServedSpan]) -> list[int]:
    """The times (µs) at which a new period starts, after the first.

    A version an arm starts serving after the arm's first decision opens a period
    at its first decision. A version it stops serving before its last decision
    closes one: where the arm's next version starts, when one starts after it (an
    alias moved: one cut, not two around the quiet time between the last old and
    the first new decision), else just after its last decision (a rollout that
    split the arm ended). An arm that joins late or leaves early (a ramp) changes
    nothing: only versions within an arm count.
    """
    by_arm: dict[str, list[ServedSpan]] = {}
    for span in spans:
        by_arm.setdefault(span.arm, []).append(span)
    cuts: set[int] = set()
    for arm_spans in by_arm.values():
        first_of_arm = min(s.first_us for s in arm_spans)
        last_of_arm = max(s.last_us for s in arm_spans)
        for span in arm_spans:
            if span.first_us > first_of_arm:
                cuts.add(span.first_us)
            if span.last_us < last_of_arm:
                later = [s.first_us for s in arm_spans if s.first_us > span.last_us]
                cuts.add(min(later) if later else span.last_us + 1)
    return sorted(cuts)


def split_periods(arms: Sequence[str], spans: Sequence[ServedSpan],
                  treatments: Mapping[str, str] | None = None) -> tuple[Period, ...]:
    """The experiment's periods, in time order, each with its arm → versions map
    and its warnings (:func:`same_version_warnings`, with ``treatments``); one
    period when nothing changed, none without spans."""
    if not spans:
        return ()
    start = min(s.first_us for s in spans)
    starts = [start, *boundaries(spans)]
    ends: list[int | None] = [*starts[1:], None]
    periods = []
    for index, (begin, end) in enumerate(zip(starts, ends, strict=True), start=1):
        served = {
            arm: tuple(sorted({s.version for s in spans if s.arm == arm
                               and s.last_us >= begin and (end is None or s.first_us < end)}))
            for arm in arms
        }
        periods.append(Period(
            index=index, start=from_micros(begin), end=None if end is None else from_micros(end),
            served=served, warnings=same_version_warnings(arms, served, from_micros(begin),
                                                          treatments)))
    return tuple(periods)


def _and(names: Sequence[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def same_version_warnings(arms: Sequence[str], served: dict[str, tuple[str, ...]],
                          since: dt.datetime, treatments: Mapping[str, str] | None = None
                          ) -> tuple[PeriodWarning, ...]:
    """Warnings for arms that serve the same versions in a period.

    Arms with identical non-empty version sets compare nothing against each
    other (``same_versions``); arms whose sets merely overlap compare a diluted
    difference (``shared_versions``). Arms are named in config order.
    ``treatments``: what else an arm applies beyond its version (a factorial
    cell's label factors' levels); arms that differ in it compare that, so
    sharing a version is no warning between them.
    """
    warnings: list[PeriodWarning] = []
    active = [a for a in arms if served.get(a)]
    when = since.isoformat().replace("+00:00", "Z")
    applied = treatments or {}
    groups: dict[tuple[tuple[str, ...], str], list[str]] = {}
    for arm in active:
        groups.setdefault((served[arm], applied.get(arm, "")), []).append(arm)
    for (versions, _), members in groups.items():
        if len(members) < 2:
            continue
        both = "both" if len(members) == 2 else "all"
        warnings.append(PeriodWarning(
            kind="same_versions", arms=tuple(members), versions=versions, since=since,
            message=(f"arms {_and(members)} {both} serve {_and(list(versions))} since {when}: "
                     "this period compares nothing")))
    for i, a in enumerate(active):
        for b in active[i + 1:]:
            if applied.get(a, "") != applied.get(b, ""):
                continue
            shared = tuple(v for v in served[a] if v in served[b])
            if shared and served[a] != served[b]:
                warnings.append(PeriodWarning(
                    kind="shared_versions", arms=(a, b), versions=shared, since=since,
                    message=(f"arms {a} and {b} both serve {_and(list(shared))} since {when} "
                             f"({a}: {', '.join(served[a])}; {b}: {', '.join(served[b])}): "
                             "their difference is diluted")))
    return tuple(warnings)
