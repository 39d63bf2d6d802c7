"""The typed results of an experiment analysis: frozen models, JSON at the edge.

:func:`rollout.experiments.analysis.analyze` builds an :class:`ExperimentAnalysis`
and computes the ship / hold / rollback :class:`Decision` from these types;
``rampart analyze --json`` prints :meth:`ExperimentAnalysis.to_json` and the
HTML report renders the same document. Every number is a finite float or
``None`` ("no estimate"): a NaN or an infinity from the statistics becomes
``None`` when a model is built, so no JSON consumer ever sees one.

Effects are flat: a :class:`MetricResult` *is* an :class:`Effect` with the
metric and arms that identify it, so the JSON keeps one object per metric and
arm with ``abs_effect``, ``ci_low``... at its top level.
"""

from __future__ import annotations

import datetime as dt
import math
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from telemetry.verdict import Verdict

if TYPE_CHECKING:
    from rollout.experiments.stats.bayes import BayesResult
    from rollout.experiments.stats.summary import EffectEstimate

Outcome = Literal["ship", "hold", "rollback"]


def finite_or_none(value: Any) -> Any:
    """``None`` for NaN and infinities; any other value unchanged (pydantic checks it)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


Num = Annotated[float | None, BeforeValidator(finite_or_none)]
"""A number that may be missing; NaN and infinities are stored as missing."""


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


# --------------------------------------------------------------------------- effects


class Effect(Frozen):
    """Treatment minus control for one metric: means, effect, intervals, p-value.

    ``error`` is the statistics' short code (``"empty_arm"``, ``"zero_variance"``...)
    when the numbers could not be computed; they are ``None`` then.
    """

    mean_control: Num = None
    mean_treatment: Num = None
    abs_effect: Num = None
    rel_effect: Num = None
    ci_low: Num = None
    ci_high: Num = None
    rel_ci_low: Num = None
    rel_ci_high: Num = None
    p_value: Num = None
    std_error: Num = None
    error: str | None = None

    @staticmethod
    def fields_of(effect: EffectEstimate) -> dict[str, Any]:
        """The :class:`Effect` fields of a statistics result, to build any subclass."""
        return {"mean_control": effect.mean_control, "mean_treatment": effect.mean_treatment,
                "abs_effect": effect.abs_effect, "rel_effect": effect.rel_effect,
                "ci_low": effect.ci_low, "ci_high": effect.ci_high,
                "rel_ci_low": effect.rel_ci_low, "rel_ci_high": effect.rel_ci_high,
                "p_value": effect.p_value, "std_error": effect.std_error,
                "error": effect.error}

    @classmethod
    def of(cls, effect: EffectEstimate) -> Effect:
        return Effect(**Effect.fields_of(effect))


class BayesSummary(Frozen):
    """The Bayesian posterior of the effect (a flat prior): P(treatment better),
    expected losses and a credible interval of the absolute effect."""

    prob_better: Num = None
    expected_loss_treatment: Num = None
    expected_loss_control: Num = None
    ci_low: Num = None
    ci_high: Num = None
    error: str | None = None

    @classmethod
    def of(cls, bayes: BayesResult) -> BayesSummary:
        return cls(prob_better=bayes.prob_better,
                   expected_loss_treatment=bayes.expected_loss_treatment,
                   expected_loss_control=bayes.expected_loss_control,
                   ci_low=bayes.ci_low, ci_high=bayes.ci_high, error=bayes.error)


class SrmCheck(Frozen):
    """Sample ratio mismatch: units observed per arm against the configured split.
    ``flag`` (p below 0.001) voids every effect of the analysis."""

    p_value: Num = None
    statistic: Num = None
    observed: tuple[int, ...] = ()
    expected: tuple[Num, ...] = ()
    flag: bool = False
    error: str | None = None


# --------------------------------------------------------------------------- sequential


class NoSequential(Frozen):
    """No sequential method: the fixed-horizon test decides."""

    method: Literal["none"] = "none"


class GroupSequentialLook(Frozen):
    """One look reached: its information fraction, when, z and the boundary there."""

    fraction: float
    at: dt.datetime
    z: Num = None
    boundary: Num = None


class GroupSequentialSummary(Frozen):
    """A Lan-DeMets group-sequential test over the looks reached so far."""

    method: Literal["group_sequential"] = "group_sequential"
    kind: str
    looks: tuple[GroupSequentialLook, ...] = ()
    boundary: Num = None
    crossed: bool = False
    first_crossing_look: int | None = None
    decision: Literal["reject", "continue"] = "continue"
    error: str | None = None
    note: str | None = None


class MsprtSummary(Frozen):
    """The mixture sequential probability ratio test: an always-valid p-value and
    confidence sequence over ``looks`` looks."""

    method: Literal["msprt"] = "msprt"
    looks: int
    mixing_variance: Num = None
    always_valid_p_value: Num = None
    ci_low: Num = None
    ci_high: Num = None
    rejected: bool = False
    first_rejection_look: int | None = None
    error: str | None = None


SequentialSummary = Annotated[NoSequential | GroupSequentialSummary | MsprtSummary,
                              Field(discriminator="method")]


# --------------------------------------------------------------------------- per metric


class MetricResult(Effect):
    """One metric, one treatment arm against control. The effect fields are the
    CUPED-adjusted estimate when CUPED applied; ``unadjusted`` is the plain one."""

    metric: str
    role: Literal["primary", "secondary"]
    type: str
    arm: str
    control_arm: str
    n_control: int
    n_treatment: int
    adjusted_p_value: Num = None
    cuped_variance_reduction: Num = None
    unadjusted: Effect
    bayes: BayesSummary | None = None
    sequential: SequentialSummary | None = None

    @property
    def name(self) -> str:
        """``primary converted (treatment vs control)``, as the reasons say it."""
        return f"{self.role} {self.metric} ({self.arm} vs {self.control_arm})"


class GuardrailResult(Effect):
    """A guardrail metric for one treatment arm, with its verdict and the reason."""

    metric: str
    arm: str
    harm: Literal["increase", "decrease"]
    tolerance: float
    relative: bool
    verdict: Verdict
    reason: str


class SegmentCell(Effect):
    """The primary metric within one value of a segment attribute."""

    segment: str
    n_control: int
    n_treatment: int
    adjusted_p_value: Num = None


class SegmentResult(Frozen):
    """The primary metric per value of one attribute, for one treatment arm;
    p-values corrected across the attribute's values."""

    attribute: str
    kind: Literal["confirmatory", "exploratory"]
    metric: str
    arm: str
    segments: tuple[SegmentCell, ...]
    simpsons_paradox: bool = False
    warning: str | None = None


class TimelineArm(Frozen):
    """One treatment arm's cumulative effect at one time."""

    abs_effect: Num = None
    ci_low: Num = None
    ci_high: Num = None
    rel_effect: Num = None
    z: Num = None


class TimelinePoint(Frozen):
    """The primary metric as the logs stood at ``at``: units per arm (config order)
    and each treatment arm's effect."""

    at: dt.datetime
    units: tuple[int, ...]
    arms: dict[str, TimelineArm]


# --------------------------------------------------------------------------- periods


class PeriodWarning(Frozen):
    """Arms that serve the same model versions within a period.

    ``same_versions``: the arms serve exactly the same versions, so comparing
    them compares nothing (the decision holds). ``shared_versions``: they share
    some versions, so their difference is diluted.
    """

    kind: Literal["same_versions", "shared_versions"]
    arms: tuple[str, ...]
    versions: tuple[str, ...]
    since: dt.datetime
    message: str


class Period(Frozen):
    """A stretch of the experiment in which every arm served the same set of model
    versions (``model/version``). A new period starts whenever an arm starts or
    stops serving a version (an alias moved, a rollout split an arm or ended).

    ``index`` counts from 1; ``end`` is exclusive and ``None`` for the latest
    period; ``units`` are the units with a primary decision in the period.
    """

    index: int
    start: dt.datetime
    end: dt.datetime | None = None
    served: dict[str, tuple[str, ...]]
    units: int | None = None
    warnings: tuple[PeriodWarning, ...] = ()

    @property
    def compares_nothing(self) -> bool:
        return any(w.kind == "same_versions" for w in self.warnings)


# --------------------------------------------------------------------------- the whole


class Decision(Frozen):
    """Ship (``arm`` names the arm), hold or roll back, with every reason."""

    outcome: Outcome
    arm: str | None = None
    reasons: tuple[str, ...] = ()


class Preregistration(Frozen):
    """When the analysis plan was first recorded, and its fingerprint."""

    registered_at: dt.datetime
    registered_after_start: bool
    sha256: str
    start: dt.datetime


class ExperimentAnalysis(Frozen):
    """The whole analysis of one experiment over one period.

    ``period`` is the period analysed (exposures and outcomes of other periods
    are not pooled in) and ``periods`` every period of the experiment up to
    ``as_of``; ``warnings`` are the analysed period's. ``timeline`` is there when
    the analysis was asked for one (the HTML report's plots).
    """

    experiment_id: str
    as_of: dt.datetime
    arms: tuple[str, ...]
    units: int
    crossovers: int
    srm: SrmCheck
    correction: str
    metrics: tuple[MetricResult, ...]
    guardrails: tuple[GuardrailResult, ...]
    segments: tuple[SegmentResult, ...]
    decision: Decision
    timeline: tuple[TimelinePoint, ...] | None = None
    period: Period | None = None
    periods: tuple[Period, ...] = ()
    warnings: tuple[PeriodWarning, ...] = ()
    preregistration: Preregistration | None = None

    def primary(self) -> tuple[MetricResult, ...]:
        """The primary metric's results, one per treatment arm."""
        return tuple(m for m in self.metrics if m.role == "primary")

    def to_json(self) -> dict[str, Any]:
        """The JSON document ``rampart analyze --json`` prints (strict JSON: no NaN)."""
        return self.model_dump(mode="json")
