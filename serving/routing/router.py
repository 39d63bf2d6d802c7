"""Routing: from a unit and its context to an experiment, an arm and a model version.

Pure code over an immutable :class:`RoutingTable` snapshot. A gateway replica
holds one table at a time and swaps the whole object when a newer version
arrives, so no request ever sees half of one table and half of another.

A request is routed in layers. First the experiments (config order; the first
whose targeting the context satisfies takes the unit) or, outside them, the
default route give a model version. Then a running rollout of that model from
version B to C applies only where the result is B: its own salt splits those
units between B and C. So an arm that serves another version keeps exactly
its units, and promotion (moving the alias to C, after which the rollout's
split ends) changes only what reached B through that alias.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from serving.kernel.clusters import cluster_of
from serving.kernel.config import ExperimentSpec, FeatureTransform, RampartConfig, TargetingRule
from serving.kernel.errors import ValidationFailed
from serving.kernel.factorial import parse_cell
from serving.kernel.ids import ContextValue
from serving.kernel.switchback import SwitchbackSpec
from serving.kernel.targeting import (
    Predicate,
    Targeting,
    compile_targeting,
    describe_targeting,
)
from serving.routing.assignment import (
    BUCKETS,
    HASH_VERSION,
    Allocation,
    allocate,
    bucket_from_state,
    buckets_vectorized,
    hash_from_state,
    hashes_vectorized,
    salt_state,
    second_bucket,
)
from serving.routing.factorial import CompiledFactorial, compile_factorial
from serving.routing.interleaving import Method
from serving.routing.switchback import window_unit

if TYPE_CHECKING:  # loaded only where a contextual bandit is configured (scipy is slow to load)
    from rollout.core.bandits.contextual import ContextualConfig, ContextualState

DEFAULT_ARM = "default"
DEFAULT_LAYER = "default"
EXPERIMENT_LAYER_PREFIX = "experiment:"
ROLLOUT_LAYER_PREFIX = "rollout:"
LAYER_PREFIX = "layer:"
HOLDOUT_ARM = "holdout"
# A unit whose layer bucket falls in an experiment's range but whose context
# fails that experiment's targeting: served the default, logged under the experiment.
INELIGIBLE_ARM = "ineligible"
BASELINE_ARM = "baseline"
CANDIDATE_ARM = "candidate"


@dataclass(frozen=True, slots=True)
class ModelRef:
    """A concrete model version; ``alias`` is the name the config used, if any."""

    name: str
    version: str
    alias: str | None = None


@dataclass(frozen=True, slots=True)
class CompiledLayer:
    """A mutual-exclusion layer: units hashed under its salt; buckets
    ``[0, holdout_bp)`` are its holdout."""

    id: str
    salt: str
    salt_state: int
    unit_type: str
    holdout_bp: int

    @property
    def name(self) -> str:
        return f"{LAYER_PREFIX}{self.id}"


@dataclass(frozen=True, slots=True)
class CompiledExperiment:
    id: str
    salt: str
    salt_state: int
    unit_type: str
    allocation: Allocation
    arm_models: tuple[ModelRef, ...]
    targeting: tuple[Targeting, ...]
    # The split as the decision log records it (see :func:`format_arm_weights`),
    # formatted once here so that logging it costs a reference per decision.
    arm_weights: str = ""
    coverage_bp: int = BUCKETS
    layer: CompiledLayer | None = None
    layer_buckets: tuple[int, int] = (0, BUCKETS)  # its range of the layer's buckets
    # the targeting compiled into one function of the context
    eligible: Predicate = field(default=compile_targeting(()), compare=False)
    # the context attribute naming the unit's cluster (None: the unit is hashed)
    cluster: str | None = None
    # the window (and region) is randomized instead of the unit (None: the unit)
    switchback: SwitchbackSpec | None = None
    # a factorial experiment's factors: they, not the arm bucket, choose the cell
    factorial: CompiledFactorial | None = None
    # Under a bandit, each arm's assignment probability as logged with its
    # decisions (see :func:`bandit_propensities`); None for any other experiment.
    propensities: tuple[float, ...] | None = None
    # A contextual bandit: the arm comes from its linear model on the request's
    # context (see :class:`ContextualRoute`), not from the bucket ranges.
    contextual: ContextualRoute | None = None

    def covers(self, mixed: int) -> bool:
        """Whether the experiment takes an eligible unit whose hash under the
        experiment's salt is ``mixed``: its coverage bucket
        (:func:`~serving.routing.assignment.second_bucket`, independent of the
        arm bucket ``mixed % 10000``) is below ``coverage_bp``. So raising
        coverage only adds units and leaves every covered unit's arm as it was."""
        return self.coverage_bp >= BUCKETS or second_bucket(mixed) < self.coverage_bp


def format_arm_weights(arm_names: Sequence[str], weights_bp: Sequence[int]) -> str:
    """The split in force as text: ``control:9000,treatment:1000`` (basis points,
    config order). The decision log keeps it with every decision so that an
    analysis knows the weights each unit was assigned under, across ramps."""
    return ",".join(f"{name}:{int(w)}" for name, w in zip(arm_names, weights_bp, strict=True))


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
class RolloutSplit:
    """A running rollout of one model as routing sees it: of the units whose
    route ends on ``baseline``, those with a bucket under ``weight_bp`` (hashed
    with the rollout's own salt) are served ``candidate``.

    The candidate owns buckets ``[0, weight_bp)``, so ramping only adds units
    (monotone) and a weight of 0 returns every unit to the baseline.
    """

    rollout_id: str
    salt: str
    salt_state: int
    unit_type: str
    baseline: ModelRef
    candidate: ModelRef
    weight_bp: int

    @property
    def layer(self) -> str:
        return f"{ROLLOUT_LAYER_PREFIX}{self.rollout_id}"


@dataclass(frozen=True, slots=True)
class LayerStep:
    """A layer as routing tries it, at the place of its first experiment in the
    config: its experiments by their ranges (sorted by start), so that a
    unit's layer bucket finds its one candidate by bisection."""

    layer: CompiledLayer
    starts: tuple[int, ...]
    stops: tuple[int, ...]
    experiments: tuple[CompiledExperiment, ...]

    def candidate(self, in_layer: int) -> CompiledExperiment | None:
        """The experiment whose range holds ``in_layer``, if any."""
        index = bisect_right(self.starts, in_layer) - 1
        if index < 0 or in_layer >= self.stops[index]:
            return None
        return self.experiments[index]


RouteStep = CompiledExperiment | LayerStep


@dataclass(frozen=True, slots=True)
class ContextualModel:
    """A contextual bandit's fitted per-arm statistics and its removed arms,
    as the controller publishes them."""

    state: ContextualState
    removed: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ContextualRoute:
    """How a contextual bandit chooses a request's arm: its config and the
    model in force. The uniform the choice inverts comes from the unit's hash
    under the experiment's salt, so a unit with the same context gets the same
    arm while the model stands, and any replica makes the same choice."""

    config: ContextualConfig
    model: ContextualModel

    def choose(self, ctx: Mapping[str, ContextValue], mixed: int) -> tuple[int, float]:
        """The arm index for a request with context ``ctx`` and the unit's hash
        ``mixed``, and its probability. ValidationFailed when an attribute of
        the context is not a number."""
        from rollout.core.bandits.arms import InvalidBanditInput
        from rollout.core.bandits.contextual import choose, context_vector

        try:
            x = context_vector(ctx, self.config.attributes)
        except InvalidBanditInput as exc:
            raise ValidationFailed(f"context: {exc} (experiment's contextual bandit "
                                   f"reads {list(self.config.attributes)})") from None
        # the hash's digits above the two base-10,000 ones the arm bucket and
        # the coverage bucket read: independent of both
        u = (mixed // BUCKETS**2) / (2**64 / BUCKETS**2)
        chosen = choose(self.config, self.model.state, x, u, self.model.removed)
        return chosen.index, chosen.propensity


def contextual_config(exp: ExperimentSpec) -> ContextualConfig:
    """The pure core's config of a contextual bandit experiment (its arms in
    config order, the bandit's floor and seed). ValueError when ``exp`` is not one."""
    from rollout.core.bandits.contextual import ContextualConfig

    if exp.bandit is None or exp.bandit.contextual is None:
        raise ValueError(f"experiment {exp.id!r} is not a contextual bandit")
    spec = exp.bandit.contextual
    return ContextualConfig(policy=spec.policy, arms=tuple(a.name for a in exp.arms),
                            attributes=spec.attributes, floor_bp=exp.bandit.floor_bp,
                            alpha=spec.alpha, scale=spec.scale, ridge=spec.ridge,
                            draws=spec.draws, seed=exp.bandit.seed)


def _contextual_route(exp: ExperimentSpec, models: Mapping[str, ContextualModel]
                      ) -> ContextualRoute | None:
    if exp.bandit is None or exp.bandit.contextual is None:
        return None
    from rollout.core.bandits.contextual import initial_state

    config = contextual_config(exp)
    model = models.get(exp.id) or ContextualModel(initial_state(config))
    return ContextualRoute(config, model)

INTERLEAVING_LAYER_PREFIX = "interleaving:"


@dataclass(frozen=True, slots=True)
class CompiledInterleaving:
    """An interleaving experiment as ``POST /v1/rank`` serves it: rankers ``a``
    and ``b`` as concrete versions (aliases resolved with the table, like
    arms), the merge method and the request's limits. Rankers are pinned
    versions: a rollout of their model does not split them, since a ranker
    changing version mid-experiment would mix two rankers on one side."""

    id: str
    unit_type: str
    method: Method
    a: ModelRef
    b: ModelRef
    max_items: int
    length: int | None = None

    @property
    def layer(self) -> str:
        return f"{INTERLEAVING_LAYER_PREFIX}{self.id}"

    def ranker(self, team: str) -> ModelRef:
        """The version of ranker ``team`` (``"a"`` or ``"b"``)."""
        return self.a if team == "a" else self.b


def route_steps(experiments: Sequence[CompiledExperiment]) -> tuple[RouteStep, ...]:
    """The experiments in config order, each layer's gathered into one step at
    the place of its first experiment."""
    steps: list[RouteStep] = []
    seen: set[str] = set()
    for exp in experiments:
        layer = exp.layer
        if layer is None:
            steps.append(exp)
            continue
        if layer.id in seen:
            continue
        seen.add(layer.id)
        members = sorted((e for e in experiments if e.layer == layer),
                         key=lambda e: e.layer_buckets[0])
        steps.append(LayerStep(layer, tuple(e.layer_buckets[0] for e in members),
                               tuple(e.layer_buckets[1] for e in members), tuple(members)))
    return tuple(steps)


@dataclass(frozen=True, slots=True)
class RoutingTable:
    """Everything a replica needs to route, frozen, with a version number.

    Aliases are resolved when the table is built, so a table version names
    concrete model versions: the decision log records what was served, and an
    alias moved by a promotion takes effect with the next table.
    """

    version: int
    experiments: tuple[CompiledExperiment, ...]
    default: ModelRef
    shadows: tuple[CompiledShadow, ...] = ()
    feature_transforms: tuple[FeatureTransform, ...] = ()
    rollouts: tuple[RolloutSplit, ...] = ()
    layers: tuple[CompiledLayer, ...] = ()
    interleavings: tuple[CompiledInterleaving, ...] = ()
    steps: tuple[RouteStep, ...] = field(init=False, compare=False, default=())

    def __post_init__(self) -> None:
        object.__setattr__(self, "steps", route_steps(self.experiments))

    def rollout_for(self, model_name: str) -> RolloutSplit | None:
        """The running rollout of ``model_name``, if any (at most one per model)."""
        for split in self.rollouts:
            if split.baseline.name == model_name:
                return split
        return None

    def transform(self, features: Mapping[str, Any]) -> Mapping[str, Any]:
        """The features the models see: the online transforms applied in order.

        A transform applies to numbers only; any other value of a transformed
        feature is refused (ValidationFailed naming it), never coerced."""
        if not self.feature_transforms:
            return features
        out = dict(features)
        for t in self.feature_transforms:
            if t.feature in out:
                value = out[t.feature]
                if isinstance(value, bool) or not isinstance(value, int | float):
                    raise ValidationFailed(
                        f"{t.feature}: the online transform {t.op!r} needs a number, "
                        f"got {value!r}")
                out[t.feature] = t.apply(value)
        return out

    def model_refs(self, rankers: bool = True) -> tuple[ModelRef, ...]:
        """Every distinct model version this table can route to or mirror, and
        (unless ``rankers`` is false) the rankers of its interleaving
        experiments: every version a replica must load."""
        refs = {self.default, *(s.model for s in self.shadows)}
        for exp in self.experiments:
            refs.update(exp.arm_models)
        for split in self.rollouts:
            refs.update((split.baseline, split.candidate))
        if rankers:
            for spec in self.interleavings:
                refs.update((spec.a, spec.b))
        return tuple(sorted(refs, key=lambda r: (r.name, r.version, r.alias or "")))

    def interleaving(self, interleaving_id: str) -> CompiledInterleaving | None:
        """The interleaving experiment named ``interleaving_id``, if any."""
        for spec in self.interleavings:
            if spec.id == interleaving_id:
                return spec
        return None

    def versions_by_arm(self) -> dict[str, dict[str, tuple[str, ...]]]:
        """Per experiment, the concrete versions each arm can be served:
        its own, plus the rollout candidate where a rollout splits that version."""
        out: dict[str, dict[str, tuple[str, ...]]] = {}
        for exp in self.experiments:
            arms: dict[str, tuple[str, ...]] = {}
            for name, ref in zip(exp.allocation.arm_names, exp.arm_models, strict=True):
                served = [f"{ref.name}/{ref.version}"]
                split = self.rollout_for(ref.name)
                if split is not None and split.baseline.version == ref.version and (
                        split.weight_bp > 0):
                    served.append(f"{split.candidate.name}/{split.candidate.version}")
                arms[name] = tuple(served)
            out[exp.id] = arms
        return out

    def shared_versions(self) -> list[str]:
        """Experiments whose arms serve one and the same version (each arm a
        single version): such an experiment compares nothing. One line each."""
        lines = []
        for exp_id, arms in self.versions_by_arm().items():
            seen: dict[tuple[str, ...], list[str]] = {}
            for arm, served in arms.items():
                seen.setdefault(served, []).append(arm)
            for served, names in seen.items():
                if len(names) > 1 and len(served) == 1:
                    lines.append(f"experiment {exp_id!r}: arms {', '.join(names)} all serve "
                                 f"{served[0]}")
        return lines

    def describe(self) -> dict[str, Any]:
        """JSON-ready view for ``GET /v1/routing``."""
        return {
            "version": self.version,
            "hash_version": HASH_VERSION,
            "default": _ref_json(self.default),
            "shadows": [{**_ref_json(s.model), "sample_bp": s.sample_bp, "salt": s.salt}
                        for s in self.shadows],
            "rollouts": [
                {"id": r.rollout_id, "layer": r.layer, "unit": r.unit_type, "salt": r.salt,
                 "model_name": r.baseline.name, "baseline_version": r.baseline.version,
                 "candidate_version": r.candidate.version, "weight_bp": r.weight_bp,
                 "candidate_buckets": [[0, r.weight_bp]] if r.weight_bp else []}
                for r in self.rollouts
            ],
            "layers": [
                {"id": layer.id, "unit": layer.unit_type, "salt": layer.salt,
                 "holdout_bp": layer.holdout_bp,
                 "holdout_buckets": [[0, layer.holdout_bp]] if layer.holdout_bp else [],
                 "experiments": [e.id for e in self.experiments if e.layer == layer]}
                for layer in self.layers
            ],
            "experiments": [
                {
                    "id": e.id,
                    "salt": e.salt,
                    "unit": e.unit_type,
                    "layer": None if e.layer is None else e.layer.id,
                    "layer_buckets": None if e.layer is None else list(e.layer_buckets),
                    "targeting": describe_targeting(e.targeting),
                    "coverage_bp": e.coverage_bp,
                    "cluster": e.cluster,
                    "switchback": None if e.switchback is None else e.switchback.model_dump(),
                    "factors": None if e.factorial is None else e.factorial.describe(),
                    "contextual": None if e.contextual is None else {
                        "policy": e.contextual.config.policy,
                        "attributes": list(e.contextual.config.attributes),
                        "rewards_seen": {arm: linear.n for arm, linear in zip(
                            e.contextual.model.state.arms, e.contextual.model.state.linear,
                            strict=True)},
                        "removed": list(e.contextual.model.removed)},
                    "arms": [
                        {
                            "name": name,
                            # A contextual bandit picks each request's arm from its
                            # context: no share or range of buckets is any arm's.
                            "weight_bp": e.allocation.share(i) if e.contextual is None
                            else None,
                            # a factorial cell owns no range: its factors' levels do
                            "buckets": [[r.start, r.stop] for r in e.allocation.ranges[i]]
                            if e.factorial is None and e.contextual is None else None,
                            **_ref_json(e.arm_models[i]),
                        }
                        for i, name in enumerate(e.allocation.arm_names)
                    ],
                }
                for e in self.experiments
            ],
            "interleavings": [
                {"id": i.id, "unit": i.unit_type, "method": i.method, "max_items": i.max_items,
                 "length": i.length, "a": _ref_json(i.a), "b": _ref_json(i.b)}
                for i in self.interleavings
            ],
        }


SECRET_ROUTING_KEYS = frozenset({"salt", "buckets", "candidate_buckets", "layer_buckets",
                                 "holdout_buckets"})


def public_routing(description: dict[str, Any]) -> dict[str, Any]:
    """:meth:`RoutingTable.describe` without what lets a client choose its arm:
    salts and bucket ranges (weights, versions and targeting stay)."""

    def strip(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k not in SECRET_ROUTING_KEYS}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value

    public: dict[str, Any] = strip(description)
    public["redacted"] = sorted(SECRET_ROUTING_KEYS)
    return public


def _ref_json(ref: ModelRef) -> dict[str, Any]:
    return {"model_name": ref.name, "model_version": ref.version, "alias": ref.alias}


@dataclass(frozen=True, slots=True)
class Decision:
    """Where one request goes and why.

    ``experiment_id``/``arm`` are the experiment layer's assignment (or none
    and ``"default"``); ``layer`` names the layer whose choice is served:
    ``experiment:<id>``, ``rollout:<id>`` when a rollout's split decided
    between its baseline and candidate, or ``default``. ``rollout_arm`` is
    ``baseline`` or ``candidate`` under a rollout, else None.
    """

    unit_id: str
    unit_type: str
    experiment_id: str | None
    arm: str
    bucket: int | None
    model: ModelRef
    layer: str = DEFAULT_LAYER
    rollout_id: str | None = None
    rollout_arm: str | None = None
    arm_weights: str | None = None  # the experiment's split in force (None: no experiment)
    # Chosen by a forcing header (serving/routing/forcing.py), not by the hash:
    # served and logged, never analysed.
    forced: bool = False
    # Under a bandit experiment, the probability the unit was assigned its arm
    # (the decision log's ``propensity``); None elsewhere.
    propensity: float | None = None


VersionResolver = Callable[[str, str], str]
"""``(model_name, version_or_alias) -> concrete version``."""


@dataclass(frozen=True, slots=True)
class RolloutRoute:
    """What the control plane tells routing about one running rollout."""

    rollout_id: str
    salt: str
    unit_type: str
    model_name: str
    baseline_version: str
    candidate_version: str
    weight_bp: int


def bandit_propensities(allocation: Allocation, coverage_bp: int) -> tuple[float, ...]:
    """Each arm's assignment probability under a bandit's allocation: the share
    of the 10,000 buckets it owns, times the coverage when below 100% (a unit
    reaching the experiment is covered, then lands in the arm's buckets, by two
    independent hashes). Conditional on the unit reaching the experiment (its
    targeting, and its layer range if any), which inverse-propensity weights
    over the experiment's own units need."""
    coverage = min(coverage_bp, BUCKETS) / BUCKETS
    return tuple(allocation.share(i) / BUCKETS * coverage
                 for i in range(len(allocation.arm_names)))


def _experiment_allocation(exp: ExperimentSpec,
                           bandit_allocations: Mapping[str, Allocation]) -> Allocation:
    """The arms' bucket ranges: the bandit controller's current ones for a
    bandit experiment it has updated (its sticky ranges, which need not be
    one contiguous range per arm), else the config's weights. Raises
    ``ValueError`` when a bandit allocation names other arms than the config."""
    names = [a.name for a in exp.arms]
    override = bandit_allocations.get(exp.id) if exp.bandit is not None else None
    if override is None:
        return allocate(names, [a.weight_bp for a in exp.arms])
    if list(override.arm_names) != names:
        raise ValueError(f"bandit allocation of {exp.id!r} has arms "
                         f"{list(override.arm_names)}, the config {names}")
    return override


def build_routing_table(
    config: RampartConfig, resolve: VersionResolver, version: int = 1,
    rollouts: Sequence[RolloutRoute] = (),
    bandit_allocations: Mapping[str, Allocation] | None = None,
    contextual_models: Mapping[str, ContextualModel] | None = None,
) -> RoutingTable:
    """Compile a validated config (and the running rollouts) into a routing
    table, resolving aliases once.

    ``bandit_allocations`` (experiment id -> allocation) are the bandit
    controller's current ranges; a bandit experiment without one routes by
    its config weights (its starting weights). Every bandit experiment's
    decisions carry their arm's propensity. ``contextual_models`` are the
    contextual bandits' fitted models (one without: the prior, which chooses
    evenly).

    At most one rollout per model may split traffic; a second one is a
    ``ValueError`` (the control plane refuses it before it gets here).
    """

    def ref(model: str, version_or_alias: str) -> ModelRef:
        concrete = resolve(model, version_or_alias)
        alias = None if version_or_alias == concrete else version_or_alias
        return ModelRef(model, concrete, alias)

    layers = {layer.id: CompiledLayer(layer.id, layer.salt, salt_state(layer.salt), layer.unit,
                                      layer.holdout_bp) for layer in config.layers}
    overrides = bandit_allocations or {}
    allocations = {exp.id: _experiment_allocation(exp, overrides) for exp in config.experiments}
    experiments = tuple(
        CompiledExperiment(
            id=exp.id,
            salt=exp.salt,
            salt_state=salt_state(exp.salt),
            unit_type=exp.unit,
            allocation=allocations[exp.id],
            arm_models=tuple(ref(a.model, a.version) for a in exp.arms),
            targeting=exp.targeting,
            # the split in force: a bandit's current weights, not its starting ones
            arm_weights=format_arm_weights(
                [a.name for a in exp.arms],
                [allocations[exp.id].share(i) for i in range(len(exp.arms))]),
            propensities=(None if exp.bandit is None
                          else bandit_propensities(allocations[exp.id], exp.coverage_bp)),
            contextual=_contextual_route(exp, contextual_models or {}),
            coverage_bp=exp.coverage_bp,
            layer=None if exp.layer is None else layers[exp.layer],
            layer_buckets=exp.layer_buckets or (0, BUCKETS),
            cluster=exp.cluster,
            switchback=exp.switchback,
            factorial=compile_factorial(exp.factors),
            eligible=compile_targeting(exp.targeting),
        )
        for exp in config.experiments
    )
    shadows = tuple(
        CompiledShadow(ref(s.model, s.version), s.salt, salt_state(s.salt), s.sample_bp)
        for s in config.shadows
    )
    models = [r.model_name for r in rollouts]
    if len(set(models)) != len(models):
        raise ValueError(f"more than one rollout splits the same model: {sorted(models)}")
    splits = tuple(
        RolloutSplit(
            rollout_id=r.rollout_id, salt=r.salt, salt_state=salt_state(r.salt),
            unit_type=r.unit_type,
            baseline=ref(r.model_name, r.baseline_version),
            candidate=ref(r.model_name, r.candidate_version),
            weight_bp=r.weight_bp,
        )
        for r in rollouts
    )
    interleavings = tuple(
        CompiledInterleaving(spec.id, spec.unit, spec.method, ref(spec.a.model, spec.a.version),
                             ref(spec.b.model, spec.b.version), spec.max_items, spec.length)
        for spec in config.interleaving
    )
    return RoutingTable(
        version=version,
        experiments=experiments,
        default=ref(config.default.model, config.default.version),
        shadows=shadows,
        feature_transforms=config.feature_transforms,
        rollouts=splits,
        layers=tuple(layers.values()),
        interleavings=interleavings,
    )


def rule_matches(rule: TargetingRule, context: Mapping[str, ContextValue]) -> bool:
    """Whether ``context`` satisfies one targeting rule (absent attribute: only
    ``absent`` holds)."""
    return rule.matches(context)


def unit_for(unit_type: str, unit_id: str, context: Mapping[str, Any]) -> str:
    """The id hashed for a layer: the context's id of the layer's unit type
    when the request carries one, else the request's ``unit_id``."""
    typed = context.get(unit_type)
    return typed if isinstance(typed, str) and typed else unit_id


def decision_factors(table: RoutingTable, decision: Decision) -> dict[str, str] | None:
    """Each factor's level of a decision in a factorial experiment, read from
    its cell (the arm); None for any other decision. A client reads its
    factors' levels here rather than parsing the arm."""
    if decision.experiment_id is None:
        return None
    levels = parse_cell(decision.arm)  # cheap, and None for most arms
    if levels is None:
        return None
    exp = next((e for e in table.experiments if e.id == decision.experiment_id), None)
    return levels if exp is not None and exp.factorial is not None else None


def route(
    table: RoutingTable, unit_id: str, context: Mapping[str, ContextValue] | None = None,
    *, now: float | None = None,
) -> Decision:
    """Decide the experiment, arm and model version for one request.

    Experiments are tried in config order; the first one whose targeting the
    context satisfies takes the unit. A unit no experiment takes gets the
    default version with arm ``"default"`` and no experiment. Then, where the
    version reached is a running rollout's baseline, the rollout's split
    decides between baseline and candidate.

    ``now`` is the request's time (seconds since the epoch), which a switchback
    experiment's window comes from; routing never reads the clock, so without
    it no switchback experiment takes the request.
    """
    ctx: Mapping[str, ContextValue] = context or {}
    decision = _route_experiments(table, unit_id, ctx, now)
    if not table.rollouts:
        return decision
    split = table.rollout_for(decision.model.name)
    if split is None or split.baseline.version != decision.model.version:
        return decision
    unit = unit_for(split.unit_type, unit_id, ctx)
    on_candidate = bucket_from_state(split.salt_state, unit) < split.weight_bp
    return replace(
        decision,
        model=split.candidate if on_candidate else decision.model,
        layer=split.layer,
        rollout_id=split.rollout_id,
        rollout_arm=CANDIDATE_ARM if on_candidate else BASELINE_ARM,
    )


def ineligible_in_layer(table: RoutingTable, exp: CompiledExperiment, layer: CompiledLayer,
                        layer_unit: str, in_layer: int) -> Decision:
    """A unit whose layer bucket is in ``exp``'s range but whose context fails
    ``exp``'s targeting. The range is the experiment's alone, so no later
    experiment may take the unit (that would make a layer's experiments share
    units by context): it is served the default route and logged under the
    experiment with arm ``ineligible``, which the analysis does not count."""
    return Decision(layer_unit, layer.unit_type, exp.id, INELIGIBLE_ARM, in_layer,
                    table.default, layer.name)


def _route_experiments(
    table: RoutingTable, unit_id: str, ctx: Mapping[str, ContextValue],
    now: float | None = None,
) -> Decision:
    for step in table.steps:
        if isinstance(step, LayerStep):
            layer = step.layer
            layer_unit = unit_for(layer.unit_type, unit_id, ctx)
            in_layer = bucket_from_state(layer.salt_state, layer_unit)
            if in_layer < layer.holdout_bp:
                # held out of the layer: the default route, and no later experiment
                return Decision(layer_unit, layer.unit_type, None, HOLDOUT_ARM, in_layer,
                                table.default, layer.name)
            candidate = step.candidate(in_layer)
            if candidate is None:
                continue  # a range of the layer no experiment owns
            exp = candidate
        else:
            exp, layer = step, None
        if exp.targeting and not exp.eligible(ctx):
            if layer is None:
                continue
            return ineligible_in_layer(table, exp, layer, layer_unit, in_layer)
        unit = unit_for(exp.unit_type, unit_id, ctx)
        hashed = unit if exp.cluster is None else cluster_of(exp.cluster, ctx)
        if exp.switchback is not None:  # the window (and region) holds the arm
            hashed = window_unit(exp.switchback, ctx, now)
        if hashed is None:
            continue  # no cluster to place the unit in: not eligible
        mixed = hash_from_state(exp.salt_state, hashed)
        if not exp.covers(mixed):
            continue
        b = mixed % BUCKETS
        if exp.contextual is not None:
            arm, propensity = exp.contextual.choose(ctx, mixed)
            # conditional on reaching the experiment, as a bandit's ranges are
            propensity *= min(exp.coverage_bp, BUCKETS) / BUCKETS
            return Decision(unit, exp.unit_type, exp.id, exp.allocation.arm_names[arm], b,
                            exp.arm_models[arm],
                            EXPERIMENT_LAYER_PREFIX + exp.id if layer is None else layer.name,
                            propensity=propensity)
        arm = exp.allocation.arm_of(b) if exp.factorial is None else exp.factorial.cell_of(hashed)
        return Decision(unit, exp.unit_type, exp.id, exp.allocation.arm_names[arm], b,
                        exp.arm_models[arm],
                        EXPERIMENT_LAYER_PREFIX + exp.id if layer is None else layer.name,
                        arm_weights=exp.arm_weights,
                        propensity=None if exp.propensities is None else exp.propensities[arm])
    return Decision(unit_id, "user_id", None, DEFAULT_ARM, None, table.default)


def _candidates(table: RoutingTable, unit_ids: Sequence[str] | pa.Array,
                free: npt.NDArray[np.bool_], bucket_col: npt.NDArray[np.int64],
                arm_col: npt.NDArray[np.object_], layer_col: npt.NDArray[np.object_]
                ) -> Iterator[tuple[CompiledExperiment, npt.NDArray[np.bool_]]]:
    """:func:`route_many`'s walk of the steps: each experiment with the free
    units it may take (a layer's experiment, the units its range holds). A
    layer's holdout is marked in the columns and taken from ``free`` on the way."""
    for step in table.steps:
        if not isinstance(step, LayerStep):
            yield step, free.copy()
            continue
        layer = step.layer
        in_layer = buckets_vectorized(layer.salt, unit_ids)
        held = free & (in_layer < layer.holdout_bp)
        bucket_col[held] = in_layer[held]
        arm_col[held] = HOLDOUT_ARM
        layer_col[held] = layer.name
        free &= ~held
        for exp in step.experiments:
            start, stop = exp.layer_buckets
            yield exp, free & (in_layer >= start) & (in_layer < stop)


def layer_slots(table: RoutingTable, unit_ids: Sequence[str] | pa.Array
                ) -> dict[str, npt.NDArray[np.object_]]:
    """Per layer, where each unit falls in it by its layer bucket alone: the id
    of the experiment whose range holds the bucket, ``holdout``, or None (a
    range no experiment owns). Eligibility, coverage and config order do not
    enter: this is the layer's own allocation, the one that is independent of
    every other layer's."""
    out: dict[str, npt.NDArray[np.object_]] = {}
    for layer in table.layers:
        in_layer = buckets_vectorized(layer.salt, unit_ids)
        slots = np.full(len(unit_ids), None, dtype=object)
        slots[in_layer < layer.holdout_bp] = HOLDOUT_ARM
        for exp in table.experiments:
            if exp.layer == layer:
                start, stop = exp.layer_buckets
                slots[(in_layer >= start) & (in_layer < stop)] = exp.id
        out[layer.id] = slots
    return out


def _mark_ineligible(exp: CompiledExperiment, layer: CompiledLayer,
                     unit_ids: Sequence[str] | pa.Array, taken: npt.NDArray[np.bool_],
                     bucket_col: npt.NDArray[np.int64], exp_col: npt.NDArray[np.object_],
                     arm_col: npt.NDArray[np.object_], layer_col: npt.NDArray[np.object_]
                     ) -> None:
    """:func:`route_many`'s :func:`ineligible_in_layer`: the units of ``exp``'s
    range of ``layer`` (``taken``) keep the default route and are marked
    ineligible, with their layer bucket (hashed again for these units only:
    it is rare that replay meets a layered experiment with targeting)."""
    if not taken.any():
        return
    ids = unit_ids if isinstance(unit_ids, pa.Array) else pa.array(unit_ids, type=pa.string())
    bucket_col[taken] = buckets_vectorized(layer.salt, ids.filter(pa.array(taken)))
    exp_col[taken] = exp.id
    arm_col[taken] = INELIGIBLE_ARM
    layer_col[taken] = layer.name


def route_many(table: RoutingTable, unit_ids: Sequence[str] | pa.Array) -> dict[str, Any]:
    """Vectorized :func:`route` for units without context (offline replay).

    Returns columns ``bucket, experiment_id, arm, layer, model_name,
    model_version, arm_weights`` as numpy arrays aligned with ``unit_ids``. Only
    experiments whose targeting an empty context satisfies (none, or rules such
    as ``absent``) can take a unit that has no context, mirroring :func:`route`;
    in a layer, the units of the range of an experiment whose targeting the
    empty context fails are ineligible (the default route, arm ``ineligible``),
    as there; a unit an experiment's coverage leaves out goes on to the next;
    rollouts then split their baselines' units.
    """
    n = len(unit_ids)
    bucket_col: npt.NDArray[np.int64] = np.full(n, -1, dtype=np.int64)
    exp_col = np.full(n, None, dtype=object)
    arm_col = np.full(n, DEFAULT_ARM, dtype=object)
    layer_col = np.full(n, DEFAULT_LAYER, dtype=object)
    name_col = np.full(n, table.default.name, dtype=object)
    version_col = np.full(n, table.default.version, dtype=object)
    weights_col = np.full(n, None, dtype=object)
    free = np.ones(n, dtype=bool)  # units no experiment has taken yet
    for exp, taken in _candidates(table, unit_ids, free, bucket_col, arm_col, layer_col):
        layer = exp.layer
        if layer is not None and exp.targeting and not exp.eligible({}):
            _mark_ineligible(exp, layer, unit_ids, taken, bucket_col, exp_col, arm_col,
                             layer_col)
            free &= ~taken
            continue
        if (exp.targeting and not exp.eligible({})) or exp.cluster is not None:
            # a cluster experiment needs the context's cluster, which replay lacks
            continue
        if exp.switchback is not None:  # a window needs the request's time, which replay lacks
            continue
        if exp.contextual is not None:  # its model chooses by the context, which replay lacks
            continue
        mixed = hashes_vectorized(exp.salt, unit_ids)
        if exp.coverage_bp < BUCKETS:
            taken &= ((mixed // np.uint64(BUCKETS)) % np.uint64(BUCKETS)).astype(
                np.int64) < exp.coverage_bp
        buckets = (mixed % np.uint64(BUCKETS)).astype(np.int64)
        arms = (exp.allocation.arms_of(buckets) if exp.factorial is None
                else exp.factorial.cells_of(unit_ids))[taken]
        bucket_col[taken] = buckets[taken]
        exp_col[taken] = exp.id
        weights_col[taken] = exp.arm_weights
        layer_col[taken] = EXPERIMENT_LAYER_PREFIX + exp.id if layer is None else layer.name
        arm_col[taken] = np.asarray(exp.allocation.arm_names, dtype=object)[arms]
        name_col[taken] = np.asarray([m.name for m in exp.arm_models], dtype=object)[arms]
        version_col[taken] = np.asarray([m.version for m in exp.arm_models], dtype=object)[arms]
        free &= ~taken
        if not free.any():
            break
    for split in table.rollouts:
        on_baseline = (name_col == split.baseline.name) & (version_col == split.baseline.version)
        if not on_baseline.any():
            continue
        layer_col[on_baseline] = split.layer
        candidate = on_baseline & (buckets_vectorized(split.salt, unit_ids) < split.weight_bp)
        version_col[candidate] = split.candidate.version
    return {
        "bucket": bucket_col,
        "experiment_id": exp_col,
        "arm": arm_col,
        "layer": layer_col,
        "model_name": name_col,
        "model_version": version_col,
        "arm_weights": weights_col,
    }
