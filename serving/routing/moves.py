"""Which running units a config change would move, counted on logged units.

A unit's experiment and arm follow from hashes of its id under salts, and from
bucket ranges: change a salt, a layer, a range or the arms' layout and units
that were in one arm are in another (or in no experiment) from the next
request on, which corrupts the comparison the experiment was running. Some
changes are monotone by design and only add units: raising a treatment's
weight (its buckets grow from their lane's start, only control units join
it) and raising coverage. Those are not moves.

Pure: the caller gives the two routing tables (built with the same version
resolver, so that only the config differs) and a sample of the units each
experiment logged, with the context they were logged with; this module routes
each sampled unit under both tables and counts those whose (experiment, arm)
differs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace

import numpy as np

from serving.kernel.ids import Frozen
from serving.kernel.targeting import compile_targeting
from serving.routing.assignment import BUCKETS, Allocation
from serving.routing.router import CompiledExperiment, RoutingTable, route

# CompiledExperiment fields compared one by one below (each with its own
# notion of what moves units), or that do not decide who is in which arm.
_COMPARED_FIELDS = frozenset({
    "id", "salt", "salt_state", "unit_type", "allocation", "coverage_bp", "layer",
    "layer_buckets", "arm_models", "arm_weights", "targeting", "eligible"})


@dataclass(frozen=True, slots=True)
class LoggedUnit:
    """A unit as the decision log recorded it: its id and the request context
    (the log keeps context values as text)."""

    unit_id: str
    context: Mapping[str, str]
    # when it was logged (seconds since the epoch): a switchback experiment's
    # window comes from the request's time
    logged_at: float | None = None


class ExperimentMoves(Frozen):
    """One running experiment whose assignment the new config changes, and how
    many of its sampled units would move."""

    experiment_id: str
    changes: tuple[str, ...]  # what changed, e.g. ("salt", "layer_buckets")
    sampled_units: int
    moved_units: int

    def describe(self) -> str:
        """``experiment 'x': 1,234 of 5,000 logged units would move (salt changed)``."""
        return (f"experiment {self.experiment_id!r}: {self.moved_units:,} of "
                f"{self.sampled_units:,} logged units would move "
                f"({', '.join(self.changes)} changed)")


class MovesReport(Frozen):
    """Every experiment in both configs whose assignment changed (the ones
    whose units would move and the ones whose sampled units all stay)."""

    experiments: tuple[ExperimentMoves, ...] = ()

    @property
    def moving(self) -> tuple[ExperimentMoves, ...]:
        """The experiments some of whose sampled units would move."""
        return tuple(e for e in self.experiments if e.moved_units > 0)


def _bucket_arms(allocation: Allocation) -> np.ndarray:
    """The arm index of each of the 10,000 buckets."""
    return allocation.arms_of(np.arange(BUCKETS, dtype=np.int64))


def arms_change(old: Allocation, new: Allocation) -> str | None:
    """What changed in an experiment's arms that moves units, or None.

    The arm names and order are the arms' identity (the control is the first).
    With the same arms, a layout where every bucket either keeps its arm or
    passes from the control to a treatment is a ramp: it only adds units to
    treatments. Anything else (a treatment shrinking, lanes shifting when
    weights are packed) moves units between arms."""
    if old.arm_names != new.arm_names:
        return "arms" if set(old.arm_names) != set(new.arm_names) else "arm order"
    before, after = _bucket_arms(old), _bucket_arms(new)
    if bool(np.all((before == after) | (before == 0))):
        return None
    return "arm bucket ranges"


def assignment_changes(old: CompiledExperiment, new: CompiledExperiment) -> tuple[str, ...]:
    """What in ``new`` (the same experiment id as ``old``) can move units that
    ``old`` assigned: empty for an unchanged experiment, a weight ramp, more
    coverage, other model versions or other targeting."""
    changes: list[str] = []
    if old.salt != new.salt:
        changes.append("salt")
    if old.unit_type != new.unit_type:
        changes.append("unit")
    old_layer, new_layer = old.layer, new.layer
    if (old_layer is None) != (new_layer is None) or (
            old_layer is not None and new_layer is not None and old_layer.id != new_layer.id):
        changes.append("layer")
    elif old_layer is not None and new_layer is not None:
        if old_layer.salt != new_layer.salt:
            changes.append("layer salt")
        if old_layer.unit_type != new_layer.unit_type and "unit" not in changes:
            changes.append("layer unit")
        if old_layer.holdout_bp != new_layer.holdout_bp:
            changes.append("layer holdout")
        if old.layer_buckets != new.layer_buckets:
            changes.append("layer_buckets")
    if new.coverage_bp < old.coverage_bp:
        changes.append("coverage lowered")
    arms = arms_change(old.allocation, new.allocation)
    if arms is not None:
        changes.append(arms)
    # Whatever else a design adds to how an experiment assigns (a cluster
    # attribute, a time window) is compared as a whole: the count decides.
    for f in fields(CompiledExperiment):
        if f.name not in _COMPARED_FIELDS and f.compare and (
                getattr(old, f.name) != getattr(new, f.name)):
            changes.append(f.name)
    return tuple(changes)


def _trusting_targeting(table: RoutingTable, experiment_id: str) -> RoutingTable:
    """``table`` with ``experiment_id``'s targeting taken as holding.

    Its sampled units were logged in one of its arms, so its targeting held
    for them; re-evaluating it on the logged context (values kept as text, so
    a numeric rule no longer holds) would wrongly make them ineligible under
    both tables and hide every move."""
    experiments = tuple(
        replace(e, targeting=(), eligible=compile_targeting(())) if e.id == experiment_id
        else e for e in table.experiments)
    return replace(table, experiments=experiments)


def changed_experiments(old: RoutingTable, new: RoutingTable) -> dict[str, tuple[str, ...]]:
    """The experiments in both tables whose assignment changed, with what
    changed (:func:`assignment_changes`), in the new table's order. An
    experiment only in one of the tables is no move: a new one takes units as
    it starts, a removed one has stopped."""
    before = {e.id: e for e in old.experiments}
    changed = {}
    for exp in new.experiments:
        previous = before.get(exp.id)
        if previous is not None and (changes := assignment_changes(previous, exp)):
            changed[exp.id] = changes
    return changed


def count_moves(old: RoutingTable, new: RoutingTable,
                samples: Mapping[str, Sequence[LoggedUnit]]) -> MovesReport:
    """For each experiment of :func:`changed_experiments`, the sampled units
    (``samples`` by experiment id) whose experiment or arm under ``new``
    differs from ``old``. Rollout splits are left out of both tables (they
    move served versions, never arms)."""
    results: list[ExperimentMoves] = []
    for experiment_id, changes in changed_experiments(old, new).items():
        units = samples.get(experiment_id, ())
        old_table = _trusting_targeting(replace(old, rollouts=()), experiment_id)
        new_table = _trusting_targeting(replace(new, rollouts=()), experiment_id)
        moved = 0
        for unit in units:
            was = route(old_table, unit.unit_id, unit.context, now=unit.logged_at)
            now = route(new_table, unit.unit_id, unit.context, now=unit.logged_at)
            moved += (was.experiment_id, was.arm) != (now.experiment_id, now.arm)
        results.append(ExperimentMoves(experiment_id=experiment_id, changes=changes,
                                       sampled_units=len(units), moved_units=moved))
    return MovesReport(experiments=tuple(results))
