"""Typed configuration and request/response schemas (pydantic v2).

Configuration is parsed and validated once, at the edge (CLI or admin API);
everything deeper receives these frozen objects, never dicts.
"""

from __future__ import annotations

import datetime as dt
import itertools
import math
import re
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from serving.assignment import BUCKETS

ModelT = TypeVar("ModelT", bound=BaseModel)
UnitType = Literal["user_id", "session_id", "device_id", "cluster_id"]
SALT_PATTERN = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
ID_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"
MAX_UNIT_ID_CHARS = 256
MAX_BODY_BYTES = 1 << 20


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


# --------------------------------------------------------------------------- config


class ModelSpec(_Frozen):
    """A registered MLflow model and the versions (numbers or aliases) to serve."""

    name: str = Field(min_length=1, max_length=256)
    versions: tuple[str, ...] = Field(min_length=1)

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

    model: str
    version: str = Field(min_length=1)


class TargetingRule(_Frozen):
    """Eligibility on request context, checked before bucketing.

    ``{"attribute": "country", "op": "in", "values": ["US", "CA"]}``. A unit
    whose context lacks the attribute is not eligible.
    """

    attribute: str = Field(min_length=1, max_length=64)
    op: Literal["in", "not_in", "eq", "ne", "gt", "gte", "lt", "lte"]
    values: tuple[str | float | bool, ...] = ()
    value: str | float | bool | None = None

    @model_validator(mode="after")
    def _operands(self) -> TargetingRule:
        if self.op in ("in", "not_in"):
            if not self.values:
                raise ValueError(f"op {self.op!r} needs a non-empty 'values' list")
        elif self.value is None:
            raise ValueError(f"op {self.op!r} needs a 'value'")
        if self.op in ("gt", "gte", "lt", "lte") and (
            isinstance(self.value, bool) or not isinstance(self.value, int | float)
        ):
            raise ValueError(f"op {self.op!r} needs a numeric 'value'")
        return self


class ArmSpec(ModelTarget):
    """One arm of an experiment: a name, a weight in basis points, a model version."""

    name: str = Field(pattern=ID_PATTERN)
    weight_bp: int = Field(ge=0, le=BUCKETS)


MetricType = Literal["binary", "mean", "ratio"]


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

    @model_validator(mode="after")
    def _plan(self) -> AnalysisPlan:
        names = [self.primary.label] + [m.label for m in self.secondary]
        if len(set(names)) != len(names):
            raise ValueError(f"primary and secondary metrics must be distinct, got {names}")
        if self.mde_relative and self.sequential.method == "msprt" and self.baseline is None:
            raise ValueError("a relative MDE with the msprt method needs baseline "
                             "(the expected control mean) to fix the mixing variance")
        return self

    def mde_absolute(self) -> float | None:
        """The MDE in the metric's units, when it can be known before the data."""
        if not self.mde_relative:
            return self.mde
        return None if self.baseline is None else self.mde * abs(self.baseline)


class ExperimentSpec(_Frozen):
    """An experiment: who is eligible, how units are hashed, which arm serves what.

    The first arm is the control (baseline). Weights are basis points and sum
    to 10,000 (100%).
    """

    id: str = Field(pattern=ID_PATTERN)
    salt: str
    unit: UnitType = "user_id"
    arms: tuple[ArmSpec, ...] = Field(min_length=2, max_length=16)
    targeting: tuple[TargetingRule, ...] = ()
    analysis: AnalysisPlan | None = None

    @field_validator("salt")
    @classmethod
    def _salt(cls, salt: str) -> str:
        if not SALT_PATTERN.match(salt):
            raise ValueError(
                "salt must be 1-64 characters of letters, digits and '_.:-' "
                f"(got {salt!r})"
            )
        return salt

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
        if not SALT_PATTERN.match(salt):
            raise ValueError("salt must be 1-64 characters of letters, digits and '_.:-'")
        return salt


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


class DecisionLogConfig(_Frozen):
    path: Path = Path(".rampart/decisions")
    batch_rows: int = Field(default=5000, ge=1, le=1_000_000)
    flush_interval_s: float = Field(default=2.0, gt=0, le=3600)


class OutcomesLogConfig(_Frozen):
    """Where outcome events (``POST /v1/outcomes``, ``rampart outcomes import``) land."""

    path: Path = Path(".rampart/outcomes")
    batch_rows: int = Field(default=5000, ge=1, le=1_000_000)
    flush_interval_s: float = Field(default=2.0, gt=0, le=3600)


class TelemetryConfig(_Frozen):
    metrics_dir: Path = Path(".rampart/metrics")
    # "otlp" exports when OTEL_EXPORTER_OTLP_ENDPOINT is set; spans are always
    # created so a sampled or in-memory pipeline sees every request.
    tracing: Literal["auto", "off"] = "auto"


class ServerConfig(_Frozen):
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    num_replicas: int = Field(default=1, ge=1, le=64)


class RampartConfig(_Frozen):
    """The whole routing configuration (``deploy/rampart.yaml``)."""

    tracking_uri: str | None = None
    data_dir: Path = Path(".rampart")
    rollout_store_url: str | None = None
    preregistration_dir: Path | None = None
    models: tuple[ModelSpec, ...] = Field(min_length=1)
    default: ModelTarget
    experiments: tuple[ExperimentSpec, ...] = ()
    shadows: tuple[ShadowSpec, ...] = ()
    shadow: ShadowConfig = ShadowConfig()
    feature_transforms: tuple[FeatureTransform, ...] = ()
    parity: ParityConfig = ParityConfig()
    decision_log: DecisionLogConfig = DecisionLogConfig()
    outcomes_log: OutcomesLogConfig = OutcomesLogConfig()
    telemetry: TelemetryConfig = TelemetryConfig()
    server: ServerConfig = ServerConfig()

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
        return self

    def resolved_preregistration_dir(self) -> Path:
        """Where experiments' analysis plans are recorded (see ``rampart analyze``)."""
        return self.preregistration_dir or self.data_dir / "preregistrations"

    def resolved_store_url(self) -> str:
        """SQLAlchemy URL of the rollout store: configured, or SQLite under ``data_dir``."""
        if self.rollout_store_url:
            return self.rollout_store_url
        return f"sqlite:///{(self.data_dir / 'rollouts.db').resolve()}"

    def resolved_tracking_uri(self) -> str:
        """MLflow tracking URI: the configured one or SQLite under ``data_dir``."""
        if self.tracking_uri:
            return self.tracking_uri
        return f"sqlite:///{(self.data_dir / 'mlflow.db').resolve()}"


class ConfigError(Exception):
    """A configuration file that cannot be used; the message names every problem."""


def format_validation_error(error: ValidationError) -> str:
    """One line per problem, with the path to the offending field."""
    lines = []
    for item in error.errors():
        where = ".".join(str(p) for p in item["loc"]) or "(root)"
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


def read_document(path: str | Path, noun: str, error: type[Exception]) -> Any:
    """Parse a YAML (or JSON) file; raise ``error`` with a clear message."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise error(f"cannot read {noun} {path}: {exc.strerror}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise error(f"{path} is not valid YAML: {exc}") from None


def parse_config(data: Any, source: str = "config") -> RampartConfig:
    """Validate a config mapping; raise :class:`ConfigError` naming each mistake."""
    return validate_document(RampartConfig, data, source, "Rampart config", ConfigError)


def load_config(path: str | Path) -> RampartConfig:
    """Read and validate a YAML (or JSON) config file."""
    return parse_config(read_document(path, "config", ConfigError), source=str(path))


# --------------------------------------------------------------------------- requests

FeatureValue = Annotated[StrictFloat, Field(allow_inf_nan=False)]  # ints accepted, bools not
ContextValue = StrictStr | StrictInt | StrictFloat | StrictBool


class PredictRequest(BaseModel):
    """Body of ``POST /v1/predict``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    unit_id: StrictStr = Field(min_length=1, max_length=MAX_UNIT_ID_CHARS)
    features: dict[str, FeatureValue]
    context: dict[str, ContextValue] = Field(default_factory=dict)
    request_id: StrictStr | None = Field(default=None, min_length=1, max_length=128)


class PredictResponse(BaseModel):
    """Body of a successful ``POST /v1/predict``."""

    request_id: str
    prediction: float
    model_name: str
    model_version: str
    experiment_id: str | None
    arm: str


class ErrorBody(BaseModel):
    code: str
    message: str
    request_id: str | None = None


class ErrorResponse(BaseModel):
    """Every 4xx/5xx body: ``{"error": {"code", "message", "request_id"}}``."""

    error: ErrorBody


# --------------------------------------------------------------------------- outcomes

MAX_OUTCOME_EVENTS = 10_000
MAX_OUTCOME_BODY_BYTES = 8 << 20  # 10,000 events of the longest unit ids fit
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
# Outcome timestamps lie in [1970-01-01, 10000-01-01) UTC; as seconds since the epoch:
MAX_OUTCOME_SECONDS = 253_402_300_800
_MAX_TIMESTAMP_TEXT = 64


def parse_outcome_timestamp(value: Any) -> dt.datetime:
    """An outcome time as an aware UTC datetime.

    Accepts seconds since the epoch (int or float, not bool), an ISO-8601
    string (``2026-03-01T12:00:00Z``, ``2026-03-01T13:00:00+01:00``,
    ``2026-03-01``; a string without an offset is taken as UTC) or a datetime
    (naive ones as UTC). Raises ``ValueError`` naming the problem.
    """
    if isinstance(value, bool):
        raise ValueError("timestamp must be seconds since the epoch or an ISO-8601 string, "
                         "not a boolean")
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise ValueError("timestamp must be a finite number of seconds since the epoch")
        if not 0 <= value < MAX_OUTCOME_SECONDS:
            raise ValueError(
                f"timestamp {value!r} is out of range: seconds since the epoch must lie in "
                f"[0, {MAX_OUTCOME_SECONDS}) (milliseconds given as seconds?)"
            )
        return dt.datetime.fromtimestamp(value, dt.UTC)
    if isinstance(value, str):
        if len(value) > _MAX_TIMESTAMP_TEXT:
            raise ValueError(f"timestamp is over {_MAX_TIMESTAMP_TEXT} characters")
        try:
            parsed = dt.datetime.fromisoformat(value)
        except ValueError:
            raise ValueError(f"timestamp {value!r} is not an ISO-8601 date-time") from None
    elif isinstance(value, dt.datetime):
        parsed = value
    else:
        raise ValueError("timestamp must be seconds since the epoch (a number) or an "
                         f"ISO-8601 string, not {type(value).__name__}")
    try:
        utc = (parsed.replace(tzinfo=dt.UTC) if parsed.tzinfo is None
               else parsed.astimezone(dt.UTC))
    except OverflowError:
        raise ValueError(f"timestamp {value!s} is out of range") from None
    if utc < EPOCH:
        raise ValueError(f"timestamp {value!s} is before 1970-01-01")
    return utc


OutcomeTimestamp = Annotated[
    dt.datetime,
    WithJsonSchema({
        "anyOf": [{"type": "number", "description": "seconds since the epoch"},
                  {"type": "string", "format": "date-time"}],
    }),
]


class OutcomeEvent(BaseModel):
    """One outcome of one unit: ``{"unit_id", "metric", "value", "timestamp"?,
    "experiment_id"?}``. A missing ``timestamp`` means the time it was received."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    unit_id: StrictStr = Field(min_length=1, max_length=MAX_UNIT_ID_CHARS)
    metric: StrictStr = Field(pattern=ID_PATTERN)
    value: FeatureValue
    timestamp: OutcomeTimestamp | None = None
    experiment_id: StrictStr | None = Field(default=None, pattern=ID_PATTERN)

    @field_validator("timestamp", mode="before")
    @classmethod
    def _timestamp(cls, value: Any) -> dt.datetime | None:
        return None if value is None else parse_outcome_timestamp(value)


class OutcomeBatch(BaseModel):
    """Body of ``POST /v1/outcomes`` for several events: ``{"events": [...]}``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    events: list[OutcomeEvent] = Field(min_length=1, max_length=MAX_OUTCOME_EVENTS)


class OutcomesAccepted(BaseModel):
    """Body of a successful ``POST /v1/outcomes`` (202): how many events were recorded."""

    accepted: int
