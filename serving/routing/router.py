"""Routing: from a unit and its context to an experiment, an arm and a model version.

Pure code over an immutable :class:`RoutingTable` snapshot. A gateway replica
holds one table at a time and swaps the whole object when a newer version
arrives, so no request ever sees half of one table and half of another.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from serving.kernel.config import FeatureTransform, RampartConfig, TargetingRule
from serving.kernel.ids import ContextValue
from serving.routing.assignment import (
    HASH_VERSION,
    Allocation,
    allocate,
    bucket_from_state,
    buckets_vectorized,
    salt_state,
)

DEFAULT_ARM = "default"


@dataclass(frozen=True, slots=True)
class ModelRef:
    """A concrete model version; ``alias`` is the name the config used, if any."""

    name: str
    version: str
    alias: str | None = None


@dataclass(frozen=True, slots=True)
class CompiledExperiment:
    id: str
    salt: str
    salt_state: int
    unit_type: str
    allocation: Allocation
    arm_models: tuple[ModelRef, ...]
    targeting: tuple[TargetingRule, ...]


@dataclass(frozen=True, slots=True)
class CompiledShadow:
    """A shadow version and which units it mirrors (bucket < sample_bp)."""

    model: ModelRef
    salt: str
    salt_state: int
    sample_bp: int

    def mirrors(self, unit_id: str) -> bool:
        return self.sample_bp >= 10_000 or bucket_from_state(self.salt_state, unit_id) < (
            self.sample_bp)


@dataclass(frozen=True, slots=True)
class RoutingTable:
    """Everything a replica needs to route, frozen, with a version number."""

    version: int
    experiments: tuple[CompiledExperiment, ...]
    default: ModelRef
    shadows: tuple[CompiledShadow, ...] = ()
    feature_transforms: tuple[FeatureTransform, ...] = ()

    def transform(self, features: Mapping[str, float]) -> Mapping[str, float]:
        """The features the models see: the online transforms applied in order."""
        if not self.feature_transforms:
            return features
        out = dict(features)
        for t in self.feature_transforms:
            if t.feature in out:
                out[t.feature] = t.apply(out[t.feature])
        return out

    def model_refs(self) -> tuple[ModelRef, ...]:
        """Every distinct model version this table can route to or mirror."""
        refs = {self.default, *(s.model for s in self.shadows)}
        for exp in self.experiments:
            refs.update(exp.arm_models)
        return tuple(sorted(refs, key=lambda r: (r.name, r.version)))

    def describe(self) -> dict[str, Any]:
        """JSON-ready view for ``GET /v1/routing``."""
        return {
            "version": self.version,
            "hash_version": HASH_VERSION,
            "default": _ref_json(self.default),
            "shadows": [{**_ref_json(s.model), "sample_bp": s.sample_bp, "salt": s.salt}
                        for s in self.shadows],
            "experiments": [
                {
                    "id": e.id,
                    "salt": e.salt,
                    "unit": e.unit_type,
                    "targeting": [r.model_dump(exclude_none=True) for r in e.targeting],
                    "arms": [
                        {
                            "name": name,
                            "weight_bp": e.allocation.share(i),
                            "buckets": [[r.start, r.stop] for r in e.allocation.ranges[i]],
                            **_ref_json(e.arm_models[i]),
                        }
                        for i, name in enumerate(e.allocation.arm_names)
                    ],
                }
                for e in self.experiments
            ],
        }


def _ref_json(ref: ModelRef) -> dict[str, Any]:
    return {"model_name": ref.name, "model_version": ref.version, "alias": ref.alias}


@dataclass(frozen=True, slots=True)
class Decision:
    """Where one request goes and why."""

    unit_id: str
    unit_type: str
    experiment_id: str | None
    arm: str
    bucket: int | None
    model: ModelRef


VersionResolver = Callable[[str, str], str]
"""``(model_name, version_or_alias) -> concrete version``."""


def build_routing_table(
    config: RampartConfig, resolve: VersionResolver, version: int = 1
) -> RoutingTable:
    """Compile a validated config into a routing table, resolving aliases once."""

    def ref(model: str, version_or_alias: str) -> ModelRef:
        concrete = resolve(model, version_or_alias)
        alias = None if version_or_alias == concrete else version_or_alias
        return ModelRef(model, concrete, alias)

    experiments = tuple(
        CompiledExperiment(
            id=exp.id,
            salt=exp.salt,
            salt_state=salt_state(exp.salt),
            unit_type=exp.unit,
            allocation=allocate([a.name for a in exp.arms], [a.weight_bp for a in exp.arms]),
            arm_models=tuple(ref(a.model, a.version) for a in exp.arms),
            targeting=exp.targeting,
        )
        for exp in config.experiments
    )
    shadows = tuple(
        CompiledShadow(ref(s.model, s.version), s.salt, salt_state(s.salt), s.sample_bp)
        for s in config.shadows
    )
    return RoutingTable(
        version=version,
        experiments=experiments,
        default=ref(config.default.model, config.default.version),
        shadows=shadows,
        feature_transforms=config.feature_transforms,
    )


def rule_matches(rule: TargetingRule, context: Mapping[str, ContextValue]) -> bool:
    """Whether ``context`` satisfies one targeting rule (absent attribute: no)."""
    if rule.attribute not in context:
        return False
    actual = context[rule.attribute]
    op = rule.op
    if op == "in":
        return actual in rule.values
    if op == "not_in":
        return actual not in rule.values
    if op == "eq":
        return actual == rule.value
    if op == "ne":
        return actual != rule.value
    if isinstance(actual, bool) or not isinstance(actual, int | float):
        return False
    threshold = rule.value
    assert isinstance(threshold, int | float)
    if op == "gt":
        return actual > threshold
    if op == "gte":
        return actual >= threshold
    if op == "lt":
        return actual < threshold
    return actual <= threshold


def unit_for(experiment: CompiledExperiment, unit_id: str, context: Mapping[str, Any]) -> str:
    """The id hashed for an experiment: the context's id of the experiment's
    unit type when the request carries one, else the request's ``unit_id``."""
    typed = context.get(experiment.unit_type)
    return typed if isinstance(typed, str) and typed else unit_id


def route(
    table: RoutingTable, unit_id: str, context: Mapping[str, ContextValue] | None = None
) -> Decision:
    """Decide the experiment, arm and model version for one request.

    Experiments are tried in config order; the first one whose targeting the
    context satisfies takes the unit. A unit no experiment takes gets the
    default version with arm ``"default"`` and no experiment.
    """
    ctx: Mapping[str, ContextValue] = context or {}
    for exp in table.experiments:
        if exp.targeting and not all(rule_matches(r, ctx) for r in exp.targeting):
            continue
        unit = unit_for(exp, unit_id, ctx)
        b = bucket_from_state(exp.salt_state, unit)
        arm = exp.allocation.arm_of(b)
        return Decision(unit, exp.unit_type, exp.id, exp.allocation.arm_names[arm], b,
                        exp.arm_models[arm])
    return Decision(unit_id, "user_id", None, DEFAULT_ARM, None, table.default)


def route_many(table: RoutingTable, unit_ids: Sequence[str] | pa.Array) -> dict[str, Any]:
    """Vectorized :func:`route` for units without context (offline replay).

    Returns columns ``bucket, experiment_id, arm, model_name, model_version``
    as numpy arrays aligned with ``unit_ids``. Only experiments without
    targeting can take a unit that has no context, mirroring :func:`route`.
    """
    n = len(unit_ids)
    bucket_col: npt.NDArray[np.int64] = np.full(n, -1, dtype=np.int64)
    exp_col = np.full(n, None, dtype=object)
    arm_col = np.full(n, DEFAULT_ARM, dtype=object)
    name_col = np.full(n, table.default.name, dtype=object)
    version_col = np.full(n, table.default.version, dtype=object)
    for exp in table.experiments:
        if exp.targeting:
            continue
        buckets = buckets_vectorized(exp.salt, unit_ids)
        arms = exp.allocation.arms_of(buckets)
        bucket_col = buckets
        exp_col[:] = exp.id
        arm_col = np.asarray(exp.allocation.arm_names, dtype=object)[arms]
        name_col = np.asarray([m.name for m in exp.arm_models], dtype=object)[arms]
        version_col = np.asarray([m.version for m in exp.arm_models], dtype=object)[arms]
        break
    return {
        "bucket": bucket_col,
        "experiment_id": exp_col,
        "arm": arm_col,
        "model_name": name_col,
        "model_version": version_col,
    }
