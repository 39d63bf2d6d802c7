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
from collections.abc import Mapping, Sequence
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


BayesBasis = Literal["unadjusted", "cuped_adjusted", "cluster_robust"]


class BayesSummary(Frozen):
    """The Bayesian posterior of the effect (a flat prior): P(treatment better),
    expected losses and a credible interval of the absolute effect.

    ``basis`` says which estimate the posterior is built on, always the same as
    the metric's effect and p-value: ``"cuped_adjusted"`` when CUPED applied (a
    normal posterior on the adjusted effect and its standard error),
    ``"unadjusted"`` otherwise (Beta-Binomial for a 0/1 metric, normal means
    for a mean metric); ``"cluster_robust"`` in a cluster-randomized
    experiment (a normal posterior on the cluster-robust effect and its
    standard error).
    """

    prob_better: Num = None
    expected_loss_treatment: Num = None
    expected_loss_control: Num = None
    ci_low: Num = None
    ci_high: Num = None
    basis: BayesBasis = "unadjusted"
    error: str | None = None

    @classmethod
    def of(cls, bayes: BayesResult, basis: BayesBasis = "unadjusted") -> BayesSummary:
        return cls(prob_better=bayes.prob_better,
                   expected_loss_treatment=bayes.expected_loss_treatment,
                   expected_loss_control=bayes.expected_loss_control,
                   ci_low=bayes.ci_low, ci_high=bayes.ci_high, basis=basis,
                   error=bayes.error)


class CupedSummary(Frozen):
    """Which covariate adjustment ran, and what it did.

    ``method`` ``"lin_interacted"``: each arm its own slope on the pre-period
    covariate centred on the two arms' pooled mean (Lin 2013), never less
    precise than no adjustment. ``variance_reduction`` is signed:
    ``1 − Var(adjusted effect)/Var(unadjusted effect)``, positive when the
    adjustment narrowed the interval.
    """

    method: Literal["lin_interacted"] = "lin_interacted"
    slope_control: Num = None
    slope_treatment: Num = None
    variance_reduction: Num = None

    def describe(self) -> str:
        """``CUPED (per-arm slopes): variance 37% lower than unadjusted``."""
        return cuped_text(self.method, self.variance_reduction)


_CUPED_LABELS = {"lin_interacted": "per-arm slopes"}


def cuped_text(method: str | None, variance_reduction: float | None) -> str:
    """A signed, labelled variance change: ``CUPED (per-arm slopes): variance 37%
    lower than unadjusted``, ``... 6% higher ...``, or ``... about the same as
    unadjusted``. Shared by the terminal summary and the HTML report, which reads
    the JSON document (hence plain arguments)."""
    label = f"CUPED ({_CUPED_LABELS.get(method or '', method or 'unknown method')})"
    return _variance_change(label, variance_reduction)


def _variance_change(label: str, variance_reduction: float | None) -> str:
    """``label: variance 37% lower than unadjusted`` (or higher, or about the same)."""
    if variance_reduction is None or not math.isfinite(variance_reduction):
        return f"{label}: variance change unknown"
    change = round(abs(variance_reduction) * 100.0)
    if change == 0:
        return f"{label}: variance about the same as unadjusted"
    direction = "lower" if variance_reduction > 0 else "higher"
    return f"{label}: variance {change:.0f}% {direction} than unadjusted"


class StratumCell(Frozen):
    """One stratum of a post-stratified estimate: its units per arm, its weight
    (share of the two arms' units) and its own effect. A stratum too small to
    estimate alone is pooled into ``(small strata)``."""

    stratum: str
    n_control: int
    n_treatment: int
    weight: Num = None
    abs_effect: Num = None


class StratifiedSummary(Effect):
    """The primary metric post-stratified by the plan's ``strata`` attributes
    (Miratrix, Sekhon & Yu 2013), reported next to CUPED; it does not decide.

    The effect fields are the post-stratified estimate ``Σ_s w_s(ȳ_t,s − ȳ_c,s)``
    with a normal interval and p-value; its variance is conditional on the
    stratum sizes. ``unadjusted_std_error`` is the plain difference's, and
    ``variance_reduction`` is signed, ``1 − Var(post-stratified)/Var(unadjusted)``.
    ``strata`` are the crossed attribute values the estimate used, ``collapsed``
    the ones pooled into ``(small strata)`` because an arm had fewer than two
    units there. ``error`` ``strata_not_loaded``: the units' attributes were
    not read (an engine that keeps no per-unit attributes).
    """

    method: Literal["post_stratified"] = "post_stratified"
    attributes: tuple[str, ...]
    strata: tuple[StratumCell, ...] = ()
    collapsed: tuple[str, ...] = ()
    unadjusted_std_error: Num = None
    variance_reduction: Num = None

    def describe(self) -> str:
        """``post-stratified by platform (2 strata): effect 0.012 CI [...], p = ...;
        variance 12% lower than unadjusted``."""
        return stratified_text(self.attributes, len(self.strata), self.abs_effect,
                               self.ci_low, self.ci_high, self.p_value,
                               self.variance_reduction, len(self.collapsed), self.error)


def stratified_text(attributes: Sequence[str], strata: int, effect: float | None,
                    ci_low: float | None, ci_high: float | None, p_value: float | None,
                    variance_reduction: float | None, collapsed: int = 0,
                    error: str | None = None) -> str:
    """A post-stratified estimate in one line, for the terminal summary and the
    HTML report (which reads the JSON document, hence plain arguments)."""
    label = f"post-stratified by {', '.join(attributes)} ({strata} strata)"
    if effect is None:
        return f"{label}: no estimate ({error or 'unknown'})"
    pooled = f", {collapsed} small strata pooled" if collapsed else ""

    def fmt(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.4g}"

    return (f"{_variance_change(label, variance_reduction)}{pooled}; effect {fmt(effect)} "
            f"CI [{fmt(ci_low)}, {fmt(ci_high)}], p = {fmt(p_value)}")


class ClusteredSummary(Frozen):
    """How a cluster-randomized experiment's metric was tested: its effect
    fields (on the metric itself) are cluster-robust, and this says by which
    clusters and what ignoring them would have claimed.

    ``attribute`` is the context attribute naming the clusters;
    ``clusters_*`` the clusters with units in each arm; ``mean_cluster_size``
    and ``cluster_size_cv`` their sizes; ``icc`` the intra-cluster
    correlation (one-way ANOVA, clipped at 0) and ``design_effect``
    ``1 + ((1 + CV²)·m̄ − 1)·ICC``; ``variance_ratio`` the cluster-robust
    variance over the unit-level one; ``df`` the t test's degrees of freedom
    (clusters − 1). ``naive_p_value`` and ``naive_std_error`` are the
    unit-level test's, which treats correlated units as independent and is
    shown only for comparison. ``error`` ``clusters_not_loaded``: the units'
    clusters were not read.
    """

    attribute: str
    clusters_control: int = 0
    clusters_treatment: int = 0
    mean_cluster_size: Num = None
    cluster_size_cv: Num = None
    icc: Num = None
    design_effect: Num = None
    variance_ratio: Num = None
    df: Num = None
    naive_p_value: Num = None
    naive_std_error: Num = None
    error: str | None = None

    def describe(self) -> str:
        """``clustered by team: 120 + 118 clusters (mean size 15, CV 0.74); ICC
        0.1, design effect 3.1 (...); ignoring clusters p = 0.0012``."""
        return clustered_text(self.attribute, self.clusters_control, self.clusters_treatment,
                              self.mean_cluster_size, self.cluster_size_cv, self.icc,
                              self.design_effect, self.variance_ratio, self.naive_p_value,
                              self.error)


def clustered_text(attribute: str, clusters_control: int, clusters_treatment: int,
                   mean_size: float | None, size_cv: float | None, icc: float | None,
                   design_effect: float | None, variance_ratio: float | None,
                   naive_p_value: float | None, error: str | None = None) -> str:
    """A cluster-robust test's clusters and design effect in one line, for the
    terminal summary and the HTML report (which reads the JSON document)."""

    def fmt(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.3g}"

    label = (f"cluster-robust by {attribute} ({clusters_control} + {clusters_treatment} "
             f"clusters, mean size {fmt(mean_size)}, size CV {fmt(size_cv)})")
    if error is not None:
        return f"{label}: no estimate ({error})"
    return (f"{label}: ICC {fmt(icc)}, design effect {fmt(design_effect)} (observed variance "
            f"ratio {fmt(variance_ratio)}); a unit-level test ignoring the clusters would "
            f"say p = {fmt(naive_p_value)}")


class SwitchbackSummary(Frozen):
    """How one metric of a switchback experiment (primary, secondary or
    guardrail) was tested: its effect fields are the window-level estimate
    (per-request means of the window cells, region fixed effects, HC2
    standard error, t interval), and this says over which windows and what a
    per-unit test would have claimed. A ratio metric's cells are its
    numerator per request (a window has requests, not units).

    ``window_s``, ``region`` and ``burn_in_s`` are the design;
    ``windows_control``/``windows_treatment`` the cells (window × region) with
    requests in each arm; ``burn_in_requests``/``burn_in_events`` the rows the
    burn-in dropped after switches; ``mixed_cells`` cells left out because their
    decisions were in two arms. ``regression_p_value`` is the t test's (also
    the effect's ``p_value``), ``ri_p_value`` the randomization-inference one
    over ``ri_draws`` within-region permutations of the cells' arms; a
    primary or secondary metric's corrected p-value is the larger of the two,
    each corrected within its family; a guardrail's verdict reads the
    estimate and interval.
    ``naive_p_value``/``naive_abs_effect`` are the per-unit test's, which takes
    the requests of one window for independent evidence; shown only for
    comparison."""

    window_s: int
    region: str | None = None
    burn_in_s: int = 0
    windows_control: int = 0
    windows_treatment: int = 0
    burn_in_requests: int = 0
    burn_in_events: int = 0
    mixed_cells: int = 0
    df: int | None = None
    regression_p_value: Num = None
    ri_p_value: Num = None
    ri_draws: int = 0
    naive_p_value: Num = None
    naive_abs_effect: Num = None
    error: str | None = None

    def describe(self) -> str:
        """``switchback by 3600 s windows × city (48 + 47 windows, burn-in 600 s
        dropped 1,204 requests): regression p = 0.012, randomization p = 0.015;
        a per-unit test would say p = 1e-09``."""
        return switchback_text(self.window_s, self.region, self.burn_in_s,
                               self.windows_control, self.windows_treatment,
                               self.burn_in_requests, self.regression_p_value,
                               self.ri_p_value, self.naive_p_value, self.error)


def switchback_text(window_s: int, region: str | None, burn_in_s: int, windows_control: int,
                    windows_treatment: int, burn_in_requests: int,
                    regression_p_value: float | None, ri_p_value: float | None,
                    naive_p_value: float | None, error: str | None = None) -> str:
    """A switchback test's windows and p-values in one line, for the terminal
    summary and the HTML report (which reads the JSON document)."""

    def fmt(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.3g}"

    by = f"{window_s} s windows" + (f" × {region}" if region else "")
    label = (f"switchback by {by} ({windows_control} + {windows_treatment} windows, "
             f"burn-in {burn_in_s} s dropped {burn_in_requests:,} requests)")
    if error is not None:
        return f"{label}: no estimate ({error})"
    return (f"{label}: regression p = {fmt(regression_p_value)}, randomization p = "
            f"{fmt(ri_p_value)}; a per-unit test ignoring the windows would say p = "
            f"{fmt(naive_p_value)}")


class SrmSplit(Frozen):
    """The units first exposed under one split (constant weights): their counts
    per arm against that split's weights (basis points). ``source`` is
    ``logged`` (the decision log recorded the split) or ``configured`` (it did
    not: the config's current weights are assumed)."""

    weights: tuple[float, ...]
    source: Literal["logged", "configured"]
    first_exposure: dt.datetime | None = None
    observed: tuple[int, ...] = ()
    expected: tuple[Num, ...] = ()
    statistic: Num = None
    p_value: Num = None
    flag: bool = False  # this split alone is below 0.001 / number of splits
    error: str | None = None


class SrmCheck(Frozen):
    """Sample ratio mismatch: units observed per arm against the split each was
    assigned under. ``observed`` and ``expected`` are summed over ``splits``;
    ``statistic`` is the sum of the splits' χ² statistics with ``df`` summed
    degrees of freedom, ``p_value`` its tail. ``flag`` (combined p below 0.001,
    or one split's p below 0.001 / number of splits) voids every effect of the
    analysis. ``weights_source``: ``logged``, ``configured`` or ``mixed``."""

    p_value: Num = None
    statistic: Num = None
    observed: tuple[int, ...] = ()
    expected: tuple[Num, ...] = ()
    flag: bool = False
    error: str | None = None
    df: int | None = None
    weights_source: Literal["logged", "configured", "mixed"] = "configured"
    splits: tuple[SrmSplit, ...] = ()


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
    """A Lan-DeMets group-sequential test over the looks reached so far.

    ``alpha`` is what this arm's boundaries spend: the plan's alpha over the
    ``treatment_arms`` compared with the control (Bonferroni)."""

    method: Literal["group_sequential"] = "group_sequential"
    kind: str
    alpha: Num = None
    treatment_arms: int = 1
    looks: tuple[GroupSequentialLook, ...] = ()
    boundary: Num = None
    crossed: bool = False
    first_crossing_look: int | None = None
    decision: Literal["reject", "continue"] = "continue"
    error: str | None = None
    note: str | None = None


class MsprtSummary(Frozen):
    """The mixture sequential probability ratio test: an always-valid p-value and
    confidence sequence over ``looks`` looks.

    With several ``treatment_arms`` the always-valid p-values of the arms are
    corrected together by the plan's correction at every look
    (``adjusted_p_value``; ``rejected`` when it reaches the plan's alpha) and the
    confidence sequence is at ``alpha`` = the plan's alpha over the arms."""

    method: Literal["msprt"] = "msprt"
    looks: int
    mixing_variance: Num = None
    always_valid_p_value: Num = None
    adjusted_p_value: Num = None
    alpha: Num = None
    treatment_arms: int = 1
    look_p_values: tuple[Num, ...] = ()  # the running always-valid p-value at each look
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
    CUPED-adjusted estimate when CUPED applied (``cuped`` is then set, and
    ``bayes`` is on the same basis); ``unadjusted`` is the plain one.

    ``adjusted_p_value`` is corrected within the metric's family of
    ``family_size`` p-values: the primary metric across its treatment arms
    only, the secondary metrics (every metric and arm) among themselves."""

    metric: str
    role: Literal["primary", "secondary"]
    type: str
    arm: str
    control_arm: str
    n_control: int
    n_treatment: int
    adjusted_p_value: Num = None
    family_size: int | None = None
    cuped_variance_reduction: Num = None
    cuped: CupedSummary | None = None
    unadjusted: Effect
    bayes: BayesSummary | None = None
    sequential: SequentialSummary | None = None
    # The primary metric post-stratified, when the plan names strata; shown
    # next to CUPED, never in place of the pre-registered test.
    stratified: StratifiedSummary | None = None
    # A cluster-randomized experiment: the effect fields are cluster-robust,
    # and this holds the clusters, the design effect and the unit-level p.
    clustered: ClusteredSummary | None = None
    # A switchback experiment's metric: the effect fields are the window-level
    # ones, and this holds the windows, the burn-in and both p-values.
    switchback: SwitchbackSummary | None = None

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
    clustered: ClusteredSummary | None = None  # as MetricResult's
    # A switchback experiment: the effect fields and the verdict are the
    # window-level ones, as MetricResult's.
    switchback: SwitchbackSummary | None = None


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


# --------------------------------------------------------------------------- looks


class LookArm(Frozen):
    """One treatment arm's primary metric at a look: the estimate, its z and
    fixed-horizon p-value, and the pre-registered sequential method's figures
    (the always-valid p-value, raw and corrected across arms; or the
    group-sequential boundary of the latest planned look reached).
    ``significant`` is the method's verdict at that time."""

    arm: str
    abs_effect: Num = None
    std_error: Num = None
    z: Num = None
    p_value: Num = None
    always_valid_p_value: Num = None
    adjusted_p_value: Num = None
    boundary: Num = None
    significant: bool = False


class SequentialLook(Frozen):
    """The primary metric as the logs stood at ``at``: units exposed per arm by
    then (config order) and each treatment arm's figures."""

    at: dt.datetime
    method: Literal["none", "group_sequential", "msprt"]
    metric: str
    units: tuple[int, ...]
    arms: tuple[LookArm, ...]
    period: int | None = None


class RecordedLook(SequentialLook):
    """A look as it was stored when it was taken (``rampart analyze --record-look``),
    at ``recorded_at``, under the plan with fingerprint ``plan_sha256``."""

    recorded_at: dt.datetime
    plan_sha256: str | None = None


class LookComparison(Frozen):
    """A recorded look next to the same look reconstructed from the logs as they
    stand now, limited to what had happened by the look's time.

    ``differences`` names every figure that differs (empty: the logs then and
    the logs now tell the same story). ``reconstructed`` is ``None``, with a
    ``note``, when the look cannot be reconstructed in this analysis (another
    period, a time after ``as_of``)."""

    recorded: RecordedLook
    reconstructed: SequentialLook | None = None
    differences: tuple[str, ...] = ()
    note: str | None = None


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


LogName = Literal["decision log", "outcomes log"]


class SkippedFile(Frozen):
    """A file of a log left out of the analysis (``--skip-bad-files``): not
    Parquet, undecodable, or missing or mistyping a column; ``reason`` says which."""

    log: LogName
    path: str
    reason: str


class FactorialEffectRow(Frozen):
    """One main effect or two-way interaction of a factorial experiment's
    primary metric (:mod:`rollout.experiments.stats.factorial`): ``factors``
    and ``levels`` name it (one of each for a main effect, the level compared
    with the factor's first; two for an interaction), ``adjusted_p_value`` is
    corrected over every row of the table."""

    kind: Literal["main", "interaction"]
    factors: tuple[str, ...]
    levels: tuple[str, ...]
    estimate: Num = None
    std_error: Num = None
    ci_low: Num = None
    ci_high: Num = None
    p_value: Num = None
    adjusted_p_value: Num = None

    @property
    def label(self) -> str:
        """``color: green`` or ``ranker × color: new × green``."""
        return " × ".join(self.factors) + ": " + " × ".join(self.levels)


class FactorialSummary(Frozen):
    """A factorial experiment's primary metric as main effects and two-way
    interactions, each level against its factor's first and averaged over the
    other factors' levels; it sits beside the per-cell results, which compare
    each cell with the control cell. ``factors`` maps each factor to its
    levels, ``cell_units`` the units of each cell (arms order). ``covariance``
    ``hc2`` (heteroskedasticity-consistent, normal inference) or
    ``classical``; ``adjustment`` the correction over the whole table.
    ``error`` says why there are no rows (a cell under two units, a ratio
    metric, cells missing from the log)."""

    metric: str
    factors: dict[str, tuple[str, ...]]
    cell_units: dict[str, int] = Field(default_factory=dict)
    effects: tuple[FactorialEffectRow, ...] = ()
    covariance: str = "hc2"
    adjustment: str = "holm"
    alpha: float = 0.05
    error: str | None = None

    def text_lines(self) -> list[str]:
        """The table for the terminal: a heading, then one line per effect."""
        return factorial_text(self.metric, self.factors, self.covariance, self.adjustment,
                              [row.model_dump() for row in self.effects], self.error)


def factorial_text(metric: str, factors: Mapping[str, Sequence[str]], covariance: str,
                   adjustment: str, effects: Sequence[dict[str, Any]],
                   error: str | None) -> list[str]:
    """A factorial table as lines, for the terminal summary and the HTML report
    (which reads the JSON document, hence plain arguments)."""
    shape = " x ".join(f"{name} ({len(levels)})" for name, levels in factors.items())
    head = f"factorial {metric}: {shape}"
    if error is not None:
        return [f"{head}: no estimate ({error})"]

    def fmt(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.4g}"

    lines = [f"{head}; effects vs each factor's first level, {covariance.upper()} "
             f"standard errors, p adjusted ({adjustment}) over {len(effects)} effects"]
    for e in effects:
        name = " × ".join(e["factors"]) + ": " + " × ".join(e["levels"])
        lines.append(f"  {e['kind']:11} {name:<32} {fmt(e['estimate'])} CI "
                     f"[{fmt(e['ci_low'])}, {fmt(e['ci_high'])}], p = {fmt(e['p_value'])} "
                     f"(adjusted {fmt(e['adjusted_p_value'])})")
    return lines


class ExperimentAnalysis(Frozen):
    """The whole analysis of one experiment over one period.

    ``period`` is the period analysed (exposures and outcomes of other periods
    are not pooled in) and ``periods`` every period of the experiment up to
    ``as_of``; ``warnings`` are the analysed period's. ``timeline`` is there when
    the analysis was asked for one (the HTML report's plots). ``look`` is this
    analysis as a sequential look (what ``--record-look`` stores) and
    ``recorded_looks`` the looks stored earlier, each next to its reconstruction.
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
    # Files of either log the analysis left out: their rows are not in any figure.
    skipped_files: tuple[SkippedFile, ...] = ()
    look: SequentialLook | None = None
    recorded_looks: tuple[LookComparison, ...] = ()
    # A factorial experiment's main effects and interactions (None: not factorial).
    factorial: FactorialSummary | None = None

    def primary(self) -> tuple[MetricResult, ...]:
        """The primary metric's results, one per treatment arm."""
        return tuple(m for m in self.metrics if m.role == "primary")

    def to_json(self) -> dict[str, Any]:
        """The JSON document ``rampart analyze --json`` prints (strict JSON: no NaN)."""
        return self.model_dump(mode="json")
