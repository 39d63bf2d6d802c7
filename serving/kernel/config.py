"""The routing configuration: models, experiments, arms, targeting, shadows,
transforms and where logs go (part of the config kernel).

Pure: validated once, at the edge (CLI or admin API), from a mapping;
everything deeper receives these frozen objects, never dicts. Reading YAML
files is the edge's job (``serving/documents.py``).
"""

from __future__ import annotations

import itertools
import math
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    BeforeValidator,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from serving.kernel.analysis_plan import AnalysisPlan
from serving.kernel.bandit import BanditSpec, check_bandit_experiment
from serving.kernel.clusters import check_cluster_key
from serving.kernel.errors import ConfigError
from serving.kernel.factorial import (
    MAX_FACTORS,
    FactorSpec,
    check_factors,
    factorial_arms,
    with_default_cell_model,
)
from serving.kernel.forcing import ForcedAssignmentConfig
from serving.kernel.ids import (
    BUCKETS,
    ID_PATTERN,
    MAX_MODEL_NAME_CHARS,
    MODEL_NAME_PATTERN,
    VERSION_PATTERN,
    UnitType,
    check_salt,
)
from serving.kernel.ids import Frozen as _Frozen
from serving.kernel.switchback import SwitchbackSpec, check_switchback_design
from serving.kernel.targeting import MAX_RULES, Targeting
from serving.kernel.targeting import TAGS as TARGETING_TAGS
from serving.kernel.targeting import TargetingRule as TargetingRule

ModelT = TypeVar("ModelT", bound=BaseModel)

class ModelSpec(_Frozen):
    """A registered MLflow model, the versions (numbers or aliases) to serve, and
    what its versions answer.

    ``output``: ``auto`` answers a scikit-learn classifier's class
    probabilities (``predict_proba``) and every other model's ``predict``;
    ``predict`` and ``predict_proba`` pick one; any other name calls that
    method of the model (``predict_log_proba``, ``decision_function``, a
    custom pyfunc model's own method), checked when a version loads.
    """

    name: str = Field(max_length=MAX_MODEL_NAME_CHARS, pattern=MODEL_NAME_PATTERN)
    versions: tuple[Annotated[str, Field(pattern=VERSION_PATTERN)], ...] = Field(min_length=1)
    output: str = Field(default="auto", pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
    # The features written to the decision log as sent (None: every one); the
    # others are dropped or hashed (``decision_log.unlisted_features``). Rows
    # without them cannot be replayed offline.
    logged_features: tuple[str, ...] | None = None

    @field_validator("versions")
    @classmethod
    def _distinct(cls, versions: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(versions)) != len(versions):
            raise ValueError(f"versions listed twice: {sorted(versions)}")
        if any(not v.strip() for v in versions):
            raise ValueError("a version or alias must not be empty")
        return versions


class ModelTarget(_Frozen):
    """Which model version something routes to: a version number or an alias."""

    model: str = Field(max_length=MAX_MODEL_NAME_CHARS, pattern=MODEL_NAME_PATTERN)
    version: str = Field(pattern=VERSION_PATTERN)


class ArmSpec(ModelTarget):
    """One arm of an experiment: a name, a weight in basis points, a model version."""

    name: str = Field(pattern=ID_PATTERN)
    weight_bp: int = Field(ge=0, le=BUCKETS)

    @field_validator("name")
    @classmethod
    def _not_reserved(cls, name: str) -> str:
        # The router logs these for units a layer does not expose to an
        # experiment, and the analysis leaves them out: an arm of that name
        # could not be told apart from them.
        if name in RESERVED_ARM_NAMES:
            raise ValueError(f"arm name {name!r} is reserved (the decision log uses "
                             f"{sorted(RESERVED_ARM_NAMES)} for units no arm serves)")
        return name


# Arms the router logs for units in a layer that no arm of an experiment serves
# (serving/routing/router.py INELIGIBLE_ARM, HOLDOUT_ARM).
RESERVED_ARM_NAMES = frozenset({"ineligible", "holdout"})


class ExperimentSpec(_Frozen):
    """An experiment: who is eligible, how units are hashed, which arm serves what.

    The first arm is the control (baseline). Weights are basis points and sum
    to 10,000 (100%).
    """

    id: str = Field(pattern=ID_PATTERN)
    salt: str
    unit: UnitType = "user_id"
    # A factorial experiment's factors (serving/kernel/factorial.py): its arms
    # are then the cells of their cross product, generated here, not listed.
    factors: tuple[FactorSpec, ...] = Field(default=(), max_length=MAX_FACTORS)
    # What a factorial experiment's cells serve when no factor names model
    # versions; the config's default route unless given.
    cell_model: ModelTarget | None = None
    arms: tuple[ArmSpec, ...] = Field(default=(), min_length=2, max_length=16,
                                      validate_default=True)
    # every node must hold (see serving/kernel/targeting.py for the rules)
    targeting: tuple[Targeting, ...] = ()
    # Basis points of the eligible units the experiment takes before its arms
    # split them (by a bucket of their own, so raising it only adds units); the
    # others are not in it, as if ineligible.
    coverage_bp: int = Field(default=BUCKETS, ge=0, le=BUCKETS)
    # The layer the experiment is in (none: it shares no buckets with others),
    # and its range [start, stop) of the layer's buckets.
    layer: str | None = Field(default=None, pattern=ID_PATTERN)
    layer_buckets: tuple[int, int] | None = None
    # Cluster randomization: the context attribute whose value is the unit's
    # cluster (a team, a geo); the arm and coverage buckets hash it, so every
    # unit of a cluster gets the same arm (serving/kernel/clusters.py).
    cluster: str | None = None
    # Switchback: the unit randomized is a time window, optionally crossed with
    # a region (serving/kernel/switchback.py); None: the unit is the unit.
    switchback: SwitchbackSpec | None = None

    @field_validator("switchback")
    @classmethod
    def _switchback_design(cls, switchback: SwitchbackSpec | None, info: ValidationInfo
                           ) -> SwitchbackSpec | None:
        if switchback is not None:
            check_switchback_design(info.data.get("id", "?"), info.data)
        return switchback

    @field_validator("cluster")
    @classmethod
    def _cluster_key(cls, cluster: str | None) -> str | None:
        return None if cluster is None else check_cluster_key(cluster)

    @model_validator(mode="after")
    def _cluster_outside_layers(self) -> ExperimentSpec:
        # A layer allocates units by the unit's own bucket: the units of one
        # cluster would fall in different experiments of the layer, and none
        # of them would hold the whole cluster.
        if self.cluster is not None and self.layer is not None:
            raise ValueError(f"experiment {self.id!r}: a cluster-randomized experiment "
                             f"(cluster {self.cluster!r}) cannot be in a layer (layer "
                             f"{self.layer!r}): a layer splits a cluster's units between "
                             "its experiments")
        return self

    @model_validator(mode="after")
    def _layer_range(self) -> ExperimentSpec:
        if (self.layer is None) != (self.layer_buckets is None):
            raise ValueError(f"experiment {self.id!r}: 'layer' and 'layer_buckets' go "
                             "together")
        if self.layer_buckets is not None:
            start, stop = self.layer_buckets
            if not 0 <= start < stop <= BUCKETS:
                raise ValueError(f"experiment {self.id!r}: layer_buckets [{start}, {stop}) "
                                 f"must satisfy 0 <= start < stop <= {BUCKETS}")
        return self
    analysis: AnalysisPlan | None = None
    # A multi-armed bandit over the arms (serving/kernel/bandit.py): the arms'
    # weight_bp are then its starting weights, which its controller moves.
    # Declared after every field it checks, so its validator sees them.
    bandit: BanditSpec | None = None

    @field_validator("bandit")
    @classmethod
    def _bandit_design(cls, bandit: BanditSpec | None, info: ValidationInfo
                       ) -> BanditSpec | None:
        if bandit is not None:
            check_bandit_experiment(info.data.get("id", "?"), bandit, info.data)
        return bandit

    @field_validator("targeting")
    @classmethod
    def _bounded_targeting(cls, targeting: tuple[Targeting, ...]) -> tuple[Targeting, ...]:
        leaves = sum(node.leaves() for node in targeting)
        if leaves > MAX_RULES:
            raise ValueError(f"{leaves} targeting rules; the limit is {MAX_RULES}")
        return targeting

    @field_validator("salt")
    @classmethod
    def _salt(cls, salt: str) -> str:
        return check_salt(salt)

    @field_validator("factors")
    @classmethod
    def _factors(cls, factors: tuple[FactorSpec, ...], info: ValidationInfo
                 ) -> tuple[FactorSpec, ...]:
        return check_factors(info.data.get("id", "?"), info.data.get("salt"), factors)

    @field_validator("cell_model")
    @classmethod
    def _cell_model(cls, cell_model: ModelTarget | None, info: ValidationInfo
                    ) -> ModelTarget | None:
        factors = info.data.get("factors") or ()
        if cell_model is not None and "factors" in info.data and not factors:
            raise ValueError("'cell_model' is what a factorial experiment's cells serve; "
                             "this experiment has no factors")
        if cell_model is not None and any(f.serves_models for f in factors):
            raise ValueError("a factor names the model versions the cells serve; "
                             "'cell_model' is for factorial experiments without one")
        return cell_model

    @field_validator("arms", mode="before")
    @classmethod
    def _factorial_cells(cls, arms: Any, info: ValidationInfo) -> Any:
        # A factorial experiment's arms are its cells, generated from the
        # (already validated) factors; any other experiment lists its own.
        if "factors" not in info.data or (
                "cell_model" not in info.data and info.data["factors"]):
            if arms != ():
                return arms
            raise PydanticCustomError("factorial_cells", "no cells: the factors (or "
                                      "cell_model) they are generated from are not valid")
        factors = info.data["factors"]
        if not factors:
            if arms == ():
                raise PydanticCustomError("missing", "Field required")
            return arms
        if arms != ():
            raise ValueError(f"experiment {info.data.get('id', '?')!r} has factors: its arms "
                             "are the cells of the factors' cross product, not listed")
        cell_model = info.data["cell_model"]
        return factorial_arms(info.data.get("id", "?"), factors, None if cell_model is None
                              else (cell_model.model, cell_model.version))

    # A field validator (not a model one) so that a bad salt and bad weights
    # are both reported in the same error.
    @field_validator("arms")
    @classmethod
    def _arms(cls, arms: tuple[ArmSpec, ...], info: ValidationInfo) -> tuple[ArmSpec, ...]:
        experiment = info.data.get("id", "?")
        names = [a.name for a in arms]
        if len(set(names)) != len(names):
            raise ValueError(f"experiment {experiment!r}: arm names must be distinct, got {names}")
        total = sum(a.weight_bp for a in arms)
        if total != BUCKETS:
            raise ValueError(
                f"experiment {experiment!r}: arm weights sum to {total} basis points; "
                f"they must sum to {BUCKETS} (100%)"
            )
        return arms


MAX_RANK_ITEMS = 1000
"""Candidate items one ``POST /v1/rank`` request may carry at most: the rows one
scoring request may carry (``serving.gateway.schemas.MAX_BATCH_ROWS``)."""


class InterleavingSpec(_Frozen):
    """An interleaving experiment (``POST /v1/rank``): rankers ``a`` and ``b``
    each score every candidate item of a request (one feature row per item,
    higher is better), and the user is shown one list merged from both
    rankings by ``method`` (``serving/routing/interleaving.py``).

    No salt and no arms: every request sees both rankers, and the coins that
    merge the lists are drawn from the request id, so a replayed request
    rebuilds the list it was shown. ``unit`` is what the request's unit id is
    (logged as its unit type, for the analysis to group sessions by).
    ``max_items`` bounds a request's candidates (more is refused with 413);
    ``length`` is how many positions are shown (None: every candidate).
    """

    id: str = Field(pattern=ID_PATTERN)
    unit: UnitType = "user_id"
    a: ModelTarget
    b: ModelTarget
    method: Literal["team_draft", "balanced"] = "team_draft"
    max_items: int = Field(default=100, ge=1, le=MAX_RANK_ITEMS)
    length: int | None = Field(default=None, ge=1, le=MAX_RANK_ITEMS)

    @model_validator(mode="after")
    def _two_rankers(self) -> InterleavingSpec:
        # The same version on both sides compares nothing: every session would
        # be a tie, which reads as "no preference" rather than as a mistake.
        if (self.a.model, self.a.version) == (self.b.model, self.b.version):
            raise ValueError(f"interleaving {self.id!r}: rankers 'a' and 'b' are both "
                             f"{self.a.model}/{self.a.version}; they must differ")
        if self.length is not None and self.length > self.max_items:
            raise ValueError(f"interleaving {self.id!r}: length {self.length} is above "
                             f"max_items {self.max_items}: no request could fill it")
        return self


class LayerSpec(_Frozen):
    """A mutual-exclusion layer: its experiments own disjoint ranges of the
    layer's own buckets (hashed under the layer's salt), so a unit can be in at
    most one of them; buckets ``[0, holdout_bp)`` belong to none of them (the
    layer's holdout, served the default route and logged with arm
    ``holdout``)."""

    id: str = Field(pattern=ID_PATTERN)
    salt: str
    unit: UnitType = "user_id"
    holdout_bp: int = Field(default=0, ge=0, le=BUCKETS)
    # The pre-registered long-term comparison of every unit the layer's
    # experiments served ("shipped") against the holdout, the control
    # (``rampart analyze --holdout <layer>``).
    holdout_analysis: AnalysisPlan | None = None

    @field_validator("salt")
    @classmethod
    def _salt(cls, salt: str) -> str:
        return check_salt(salt)

    @model_validator(mode="after")
    def _holdout_to_analyse(self) -> LayerSpec:
        if self.holdout_analysis is not None and self.holdout_bp == 0:
            raise ValueError(f"layer {self.id!r}: holdout_analysis compares the layer's "
                             "holdout with its experiments, but holdout_bp is 0 (no holdout)")
        return self


class ShadowSpec(ModelTarget):
    """A version that receives a copy of live traffic off the hot path.

    ``sample_bp`` basis points of units are mirrored, chosen by bucket under
    ``salt`` so the same units are always mirrored.
    """

    sample_bp: int = Field(default=10_000, ge=1, le=BUCKETS)
    salt: str = "shadow"

    @field_validator("salt")
    @classmethod
    def _salt(cls, salt: str) -> str:
        return check_salt(salt)


class FeatureTransform(_Frozen):
    """An online feature computation applied before scoring: ``scale`` multiplies,
    ``shift`` adds, ``log1p`` takes log(1 + x), ``clip`` bounds to ``[low, high]``.

    The decision log keeps the features as the client sent them, so offline
    replay (``rampart parity replay``) catches a transform the offline model
    does not apply."""

    feature: str = Field(min_length=1)
    op: Literal["scale", "shift", "log1p", "clip"]
    value: float | None = None
    low: float | None = None
    high: float | None = None

    @model_validator(mode="after")
    def _operands(self) -> FeatureTransform:
        if self.op in ("scale", "shift") and self.value is None:
            raise ValueError(f"{self.op} needs a 'value'")
        if self.op == "clip" and (self.low is None or self.high is None or self.low > self.high):
            raise ValueError("clip needs 'low' <= 'high'")
        return self

    def apply(self, x: float) -> float:
        if self.op == "scale":
            return x * (self.value or 0.0)
        if self.op == "shift":
            return x + (self.value or 0.0)
        if self.op == "log1p":
            return math.log1p(x) if x > -1 else float("nan")
        assert self.low is not None and self.high is not None
        return min(max(x, self.low), self.high)


class ParityConfig(_Frozen):
    """Thresholds for parity and drift checks."""

    replay_tolerance: float = Field(default=1e-6, gt=0)
    psi_threshold: float = Field(default=0.2, gt=0)
    ks_alpha: float = Field(default=0.001, gt=0, lt=1)
    min_label_agreement: float = Field(default=0.95, ge=0, le=1)
    drift_every_s: float = Field(default=10.0, gt=0, le=3600,
                                 description="how often replicas recompute online drift")


class ShadowConfig(_Frozen):
    queue_size: int = Field(default=10_000, ge=1, le=1_000_000)


_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def log_path(value: Any) -> Any:
    """A log's place: a URI (``s3://bucket/prefix``, ``gs://...``, ``file:///...``)
    stays text, for the storage layer to resolve; anything else is a local path
    (a relative one is taken from the cwd when the gateway starts)."""
    if isinstance(value, str) and _URI.match(value):
        return value
    if isinstance(value, str | os.PathLike):
        return Path(value)
    return value


LogPath = Annotated[Path | str, BeforeValidator(log_path)]


class _JournaledLog(_Frozen):
    """The local journal of a log's rows not yet written, so a replica killed
    (SIGKILL, OOM) loses at most the last ``spill_interval_s`` of them; the
    next replica started with the same directory writes the rest."""

    # Always a local path (relative ones from the cwd), even when the log's
    # ``path`` is a URI. None: no journal, rows live in memory until written.
    spill_dir: Path | None = None
    spill_interval_s: float = Field(default=0.05, gt=0, le=5)
    # fsync each journal write: survives a power cut too, not only a crash.
    spill_fsync: bool = True

    @field_validator("spill_dir", mode="before")
    @classmethod
    def _spill_dir_is_local(cls, value: Any) -> Any:
        if isinstance(value, str) and _URI.match(value):
            raise ValueError("spill_dir must be a local directory (the journal is fsynced "
                             "on the replica's own disk), not a URI")
        return value


class DecisionLogConfig(_JournaledLog):
    path: LogPath = Path(".rampart/decisions")
    # What happens to a feature a model's ``logged_features`` does not list:
    # left out of the row, or replaced by a keyed hash of its value (equal
    # values stay comparable, the value itself is not kept).
    unlisted_features: Literal["drop", "hash"] = "drop"
    batch_rows: int = Field(default=5000, ge=1, le=1_000_000)
    flush_interval_s: float = Field(default=2.0, gt=0, le=3600)
    # Rows a replica keeps while the log cannot be written (disk full, store
    # away), to write them once it can; beyond this the oldest are dropped and
    # counted. None: 20 batches, at least 100,000 rows.
    max_buffered_rows: int | None = Field(default=None, ge=1, le=100_000_000)
    spill_dir: Path | None = Path(".rampart/spill/decisions")


class OutcomesLogConfig(_JournaledLog):
    """Where outcome events (``POST /v1/outcomes``, ``rampart outcomes import``) land."""

    path: LogPath = Path(".rampart/outcomes")
    batch_rows: int = Field(default=5000, ge=1, le=1_000_000)
    flush_interval_s: float = Field(default=2.0, gt=0, le=3600)
    # Rows a replica keeps while the log cannot be written (disk full, store
    # away), to write them once it can; beyond this the oldest are dropped and
    # counted. None: 20 batches, at least 100,000 rows.
    max_buffered_rows: int | None = Field(default=None, ge=1, le=100_000_000)
    spill_dir: Path | None = Path(".rampart/spill/outcomes")


class TelemetryConfig(_Frozen):
    metrics_dir: Path = Path(".rampart/metrics")
    # Prometheus file_sd targets: one per gateway replica, written by the
    # rollout controller (default ``<data_dir>/prometheus/targets.json``).
    scrape_targets_file: Path | None = None
    # "auto": a span per request, exported when OTEL_EXPORTER_OTLP_ENDPOINT is
    # set; "off": the request path makes no span at all.
    tracing: Literal["auto", "off"] = "auto"


class RequestConfig(_Frozen):
    """How scoring requests name their unit, and how model work is bounded.

    The unit id is read from the body (``/v1/predict``'s ``unit_id``), else
    the ``unit_header`` header, else the ``unit_param`` parameter (query
    string, MLflow's ``params``, V2's ``parameters``). A request with none is
    refused, unless ``missing_unit`` is ``hash_request_id``: then it is
    assigned by its request id and logged with unit source ``request_id``.
    """

    unit_header: str = Field(default="X-Rampart-Unit", pattern=r"^[A-Za-z0-9-]{1,64}$")
    unit_param: str = Field(default="unit_id", pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
    missing_unit: Literal["refuse", "hash_request_id"] = "refuse"
    # Versions that are not folded into the inline fast path are scored on
    # this many threads per replica, so a slow model never holds the event loop.
    worker_threads: int = Field(default=4, ge=1, le=256)
    # Rows waiting for a worker beyond this are refused with 503 (overloaded).
    max_pending_rows: int = Field(default=4096, ge=1, le=1_000_000)
    # Rows of concurrent requests to one version are scored in one call, up to this.
    max_batch_rows: int = Field(default=256, ge=1, le=100_000)
    # A header that forces an arm or a version for QA (None: off, the header
    # is ignored); see serving/kernel/forcing.py.
    forced_assignment: ForcedAssignmentConfig | None = None

    @model_validator(mode="after")
    def _distinct_headers(self) -> RequestConfig:
        forcing = self.forced_assignment
        if forcing is not None and forcing.header.lower() == self.unit_header.lower():
            raise ValueError(f"forced_assignment.header {forcing.header!r} is also the "
                             "unit_header: the two must differ")
        return self


class AutoscalingConfig(_Frozen):
    """Ray Serve autoscaling of the gateway's replicas.

    Serve adds replicas while the average of ongoing requests per replica
    stays above ``target_ongoing_requests`` for ``upscale_delay_s`` and
    removes them after ``downscale_delay_s`` below it, between the bounds.
    """

    min_replicas: int = Field(default=1, ge=0, le=256)
    max_replicas: int = Field(default=4, ge=1, le=256)
    target_ongoing_requests: float = Field(default=32.0, gt=0, le=10_000)
    upscale_delay_s: float = Field(default=10.0, ge=0, le=3600)
    downscale_delay_s: float = Field(default=60.0, ge=0, le=3600)
    # How far back Serve averages the ongoing-request count. Serve wants it
    # above its 10 s metrics interval (it warns otherwise), so Serve's own default.
    look_back_period_s: float = Field(default=30.0, gt=0, le=3600)

    @model_validator(mode="after")
    def _bounds(self) -> AutoscalingConfig:
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas ({self.min_replicas}) is above max_replicas "
                             f"({self.max_replicas})")
        return self

    def serve_options(self) -> dict[str, float | int]:
        """The ``autoscaling_config`` Ray Serve takes."""
        return self.model_dump()


class ServerConfig(_Frozen):
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    # Fixed replica count; ignored when ``autoscaling`` is set. None: two where
    # the machine has the CPUs for them (one replica's death is then no
    # outage), decided when the gateway is deployed, not here: the config
    # means the same on every machine.
    num_replicas: int | None = Field(default=None, ge=1, le=64)
    autoscaling: AutoscalingConfig | None = None
    # At most this many replicas on one Ray node (None: Serve places freely);
    # 1 spreads the replicas over the nodes, so losing a node loses one.
    max_replicas_per_node: int | None = Field(default=None, ge=1, le=100)
    # Where Ray Serve runs HTTP ingress: on every node (a load balancer in
    # front spreads clients) or on the head node only.
    proxy_location: Literal["EveryNode", "HeadOnly"] = "EveryNode"
    # Deadline on reading a whole request (headers and body), in seconds; a
    # client still sending past it is answered 408 and cut off, by HAProxy
    # (`timeout http-request`) and by each replica (0: no deadline).
    request_read_timeout_s: float = Field(default=10.0, ge=0, le=3600)
    # Concurrent connections one source address may hold on HAProxy's HTTP
    # port; more are refused at accept (0: no limit).
    max_connections_per_source: int = Field(default=1000, ge=0, le=1_000_000)


class RampartConfig(_Frozen):
    """The whole routing configuration (``deploy/rampart.yaml``)."""

    tracking_uri: str | None = None
    data_dir: Path = Path(".rampart")
    rollout_store_url: str | None = None
    preregistration_dir: Path | None = None
    models: tuple[ModelSpec, ...] = Field(min_length=1)
    default: ModelTarget
    experiments: tuple[ExperimentSpec, ...] = ()
    # Interleaving experiments, answered by ``POST /v1/rank`` (not routed:
    # ``/v1/predict`` never serves their rankers unless something else routes to them).
    interleaving: tuple[InterleavingSpec, ...] = ()
    layers: tuple[LayerSpec, ...] = ()
    shadows: tuple[ShadowSpec, ...] = ()
    shadow: ShadowConfig = ShadowConfig()
    feature_transforms: tuple[FeatureTransform, ...] = ()
    parity: ParityConfig = ParityConfig()
    decision_log: DecisionLogConfig = DecisionLogConfig()
    outcomes_log: OutcomesLogConfig = OutcomesLogConfig()
    telemetry: TelemetryConfig = TelemetryConfig()
    server: ServerConfig = ServerConfig()
    requests: RequestConfig = RequestConfig()

    @model_validator(mode="before")
    @classmethod
    def _factorial_cells_serve_default(cls, data: Any) -> Any:
        return with_default_cell_model(data)

    @model_validator(mode="after")
    def _references(self) -> RampartConfig:
        served = {(m.name, v) for m in self.models for v in m.versions}
        names = [m.name for m in self.models]
        if len(set(names)) != len(names):
            raise ValueError(f"models listed twice: {names}")
        targets: list[tuple[str, ModelTarget]] = [("default", self.default)]
        targets += [(f"shadow {s.model}/{s.version}", s) for s in self.shadows]
        for exp in self.experiments:
            targets += [(f"experiment {exp.id!r} arm {a.name!r}", a) for a in exp.arms]
        for spec in self.interleaving:
            targets += [(f"interleaving {spec.id!r} ranker 'a'", spec.a),
                        (f"interleaving {spec.id!r} ranker 'b'", spec.b)]
        for where, target in targets:
            if (target.model, target.version) not in served:
                raise ValueError(
                    f"{where}: unknown model version {target.model}/{target.version}; "
                    f"served versions are {sorted(f'{m}/{v}' for m, v in served)}"
                )
        ids = [e.id for e in self.experiments]
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        if duplicates:
            raise ValueError(f"duplicate experiment ids: {duplicates}")
        # One namespace: both kinds are logged under ``experiment_id``.
        ranked = [spec.id for spec in self.interleaving]
        duplicates = sorted({i for i in ranked if ranked.count(i) > 1 or i in ids})
        if duplicates:
            raise ValueError(f"interleaving ids listed twice or also experiment ids: "
                             f"{duplicates}")
        self._check_layers()
        return self

    def _check_layers(self) -> None:
        """Each layered experiment names a layer that exists, hashes the layer's
        unit type, and owns a range no other experiment of the layer and not
        the holdout owns."""
        layers = {layer.id: layer for layer in self.layers}
        if len(layers) != len(self.layers):
            raise ValueError(f"layers listed twice: {[layer.id for layer in self.layers]}")
        owned: dict[str, list[tuple[int, int, str]]] = {}
        for exp in self.experiments:
            if exp.layer is None or exp.layer_buckets is None:
                continue
            layer = layers.get(exp.layer)
            if layer is None:
                raise ValueError(f"experiment {exp.id!r}: no layer {exp.layer!r}; layers are "
                                 f"{sorted(layers)}")
            if exp.unit != layer.unit:
                raise ValueError(f"experiment {exp.id!r} is by {exp.unit} but its layer "
                                 f"{layer.id!r} is by {layer.unit}")
            start, stop = exp.layer_buckets
            if start < layer.holdout_bp:
                raise ValueError(f"experiment {exp.id!r}: layer_buckets [{start}, {stop}) "
                                 f"overlap layer {layer.id!r}'s holdout [0, "
                                 f"{layer.holdout_bp})")
            owned.setdefault(layer.id, []).append((start, stop, exp.id))
        for layer_id, ranges in owned.items():
            ranges.sort()
            for (_, stop, first), (start, _, second) in itertools.pairwise(ranges):
                if start < stop:
                    raise ValueError(f"layer {layer_id!r}: experiments {first!r} and "
                                     f"{second!r} share buckets [{start}, {stop}); "
                                     "experiments of a layer own disjoint ranges")

    def layer(self, layer_id: str) -> LayerSpec:
        """The layer named ``layer_id`` (validated to exist)."""
        return next(layer for layer in self.layers if layer.id == layer_id)

    def logged_features(self) -> dict[str, tuple[str, ...]]:
        """The decision-log feature allowlist of each model that has one."""
        return {m.name: m.logged_features for m in self.models
                if m.logged_features is not None}

    def model_outputs(self) -> dict[str, str]:
        """Each served model's ``output`` choice, by model name."""
        return {m.name: m.output for m in self.models}

    def resolved_preregistration_dir(self) -> Path:
        """Where experiments' analysis plans are recorded (see ``rampart analyze``)."""
        return self.preregistration_dir or self.data_dir / "preregistrations"

    def resolved_store_url(self) -> str:
        """SQLAlchemy URL of the rollout store: configured, or SQLite under ``data_dir``."""
        if self.rollout_store_url:
            return self.rollout_store_url
        return f"sqlite:///{(self.data_dir / 'rollouts.db').resolve()}"

    def resolved_scrape_targets_file(self) -> Path:
        """Where the controller writes the replicas' Prometheus scrape targets."""
        return self.telemetry.scrape_targets_file or self.data_dir / "prometheus" / "targets.json"

    def resolved_tracking_uri(self) -> str:
        """MLflow tracking URI: the configured one or SQLite under ``data_dir``."""
        if self.tracking_uri:
            return self.tracking_uri
        return f"sqlite:///{(self.data_dir / 'mlflow.db').resolve()}"


def format_validation_error(error: ValidationError) -> str:
    """One line per problem, with the path to the offending field."""
    lines = []
    for item in error.errors():
        where = ".".join(str(p) for p in item["loc"] if p not in TARGETING_TAGS) or "(root)"
        message = item["msg"].removeprefix("Value error, ")
        lines.append(f"  {where}: {message}")
    return "\n".join(lines)


def validate_document(
    model: type[ModelT], data: Any, source: str, noun: str, error: type[Exception]
) -> ModelT:
    """Validate a mapping into ``model``; raise ``error`` naming every mistake."""
    if not isinstance(data, dict):
        raise error(f"{source} must hold a mapping at the top level")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = format_validation_error(exc)
        raise error(f"{source} is not a valid {noun}:\n{problems}") from None


def parse_config(data: Any, source: str = "config") -> RampartConfig:
    """Validate a config mapping; raise :class:`ConfigError` naming each mistake."""
    return validate_document(RampartConfig, data, source, "Rampart config", ConfigError)
