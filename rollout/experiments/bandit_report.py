"""The report of a bandit run: each arm's inverse-propensity weighted mean
reward and its difference from the control, next to the naive means flagged
as biased.

A bandit moves traffic while it runs, so an arm's units come from the periods
the policy favoured it; when the reward level drifts over the run, the plain
difference of means mixes that drift into the effect. The IPW (Hajek) figures
weight each unit by the inverse of its logged propensity and estimate what
the arm would have earned had it been served all through the run
(:func:`rollout.experiments.stats.ipw.analyse_ipw`, which also gives the
standard errors). With a reward model the doubly robust (AIPW) difference is
added: unbiased whatever the model (the propensities are known), tighter the
better the model predicts. Two simple models are fitted on the run itself:

- ``arm-mean``: each arm's predicted reward is its mean reward;
- ``arm-time``: an additive model, an effect per arm plus an effect per tenth
  of the run (ten bins of equal unit counts by exposure time), fitted by least
  squares: it captures a drift common to the arms.

Pure: numpy and scipy only, no I/O; the CLI reads the logs
(:mod:`rollout.experiments.bandit_data`) and hands the arrays here.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from scipy import stats as sps

from rollout.experiments.stats.ipw import NAIVE_REASON, IPWResult, analyse_ipw

RewardModel = Literal["arm-mean", "arm-time"]
REWARD_MODELS: tuple[RewardModel, ...] = ("arm-mean", "arm-time")
TIME_BINS = 10
BIASED_FLAG = "biased: allocation changed during the run"


@dataclass(frozen=True, slots=True)
class BanditArm:
    """One arm: units analysed, the naive mean reward, and the IPW (Hajek)
    mean with its standard error and interval. ``status`` is ``"ok"`` or
    ``"no_units"`` (the arm got no analysed unit: every figure is None)."""

    arm: str
    units: int
    status: str
    naive_mean: float | None = None
    ipw_mean: float | None = None
    ipw_se: float | None = None
    ipw_ci_low: float | None = None
    ipw_ci_high: float | None = None


@dataclass(frozen=True, slots=True)
class BanditComparison:
    """``arm`` minus ``control_arm`` by one estimator (``ipw`` is Hajek's,
    ``aipw`` the doubly robust one, ``naive`` the difference of means), with its
    standard error, interval and two-sided normal p-value.

    ``status`` is ``"ok"``, ``"no_units"`` (an arm of the pair got no unit),
    ``"too_few_units"`` (naive: fewer than two in an arm) or ``"zero_variance"``
    (a standard error of 0: no p-value). ``biased`` is True for ``naive``, with
    ``flag`` and ``reason`` saying why.
    """

    arm: str
    control_arm: str
    estimator: Literal["ipw", "aipw", "naive"]
    status: str
    estimate: float | None = None
    se: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    p_value: float | None = None
    biased: bool = False
    flag: str = ""
    reason: str = ""


@dataclass(frozen=True, slots=True)
class BanditReport:
    """The analysis of a bandit run as ``rampart analyze`` prints it.

    ``units`` are the exposed units with a closed reward window;
    ``pending_units`` those left out because theirs was still open at
    ``as_of``. ``reward_model`` is None when no AIPW difference was asked for.
    ``comparisons`` hold, per treatment arm in config order, the ``ipw``, then
    the ``aipw`` (with a reward model), then the ``naive`` difference.
    """

    experiment_id: str
    metric: str
    reward_type: str
    window_s: float
    as_of: dt.datetime
    units: int
    pending_units: int
    control_arm: str
    level: float
    reward_model: RewardModel | None
    arms: tuple[BanditArm, ...]
    comparisons: tuple[BanditComparison, ...]
    skipped_files: tuple[str, ...] = ()

    def comparison(self, arm: str, estimator: str = "ipw") -> BanditComparison:
        """The comparison of ``arm`` with the control by ``estimator``."""
        for c in self.comparisons:
            if c.arm == arm and c.estimator == estimator:
                return c
        raise KeyError((arm, estimator))

    def to_json(self) -> dict[str, Any]:
        """The JSON document ``rampart analyze --json`` prints for a bandit run:
        every field, the time in ISO-8601; no NaN (missing figures are null)."""
        body = asdict(self)
        body["design"] = "bandit"
        body["as_of"] = self.as_of.isoformat().replace("+00:00", "Z")
        return body


def reward_predictions(model: RewardModel, arm: npt.NDArray[np.int64],
                       exposed_at: npt.NDArray[np.int64], reward: npt.NDArray[np.float64],
                       n_arms: int) -> npt.NDArray[np.float64]:
    """A ``units × n_arms`` array: the reward ``model`` predicts for every unit
    had it been served each arm, fitted on these units (see the module
    docstring). An arm without units is predicted the overall mean, so the
    predictions are always finite."""
    units = arm.size
    overall = float(reward.mean()) if units else 0.0
    counts = np.bincount(arm, minlength=n_arms).astype(np.float64)
    sums = np.bincount(arm, weights=reward, minlength=n_arms)
    arm_means = np.where(counts > 0, sums / np.maximum(counts, 1.0), overall)
    if model == "arm-mean":
        return np.asarray(np.broadcast_to(arm_means, (units, n_arms)), dtype=np.float64)
    # Ten bins of equal unit counts by exposure time (ranks, so ties and gaps
    # in time do not leave bins empty).
    bins = min(TIME_BINS, max(units, 1))
    rank = np.empty(units, dtype=np.int64)
    rank[np.argsort(exposed_at, kind="stable")] = np.arange(units)
    time_bin = rank * bins // max(units, 1)
    # Least squares over the (bin, arm) cells weighted by their unit counts is
    # the least squares over the units (an additive model depends on the cell
    # only), so the fit costs cells, not units.
    cell = time_bin * n_arms + arm
    n = np.bincount(cell, minlength=bins * n_arms).astype(np.float64)
    total = np.bincount(cell, weights=reward, minlength=bins * n_arms)
    seen = n > 0
    cell_bin, cell_arm = np.divmod(np.arange(bins * n_arms), n_arms)
    design = np.zeros((bins * n_arms, bins + n_arms - 1))
    design[np.arange(bins * n_arms), cell_bin] = 1.0
    treated = cell_arm > 0
    design[np.flatnonzero(treated), bins + cell_arm[treated] - 1] = 1.0
    root = np.sqrt(n[seen])
    coef, *_ = np.linalg.lstsq(design[seen] * root[:, None],
                               total[seen] / np.maximum(n[seen], 1.0) * root, rcond=None)
    arm_effect = np.concatenate([[0.0], coef[bins:]])
    # An arm no unit got has no effect to fit (lstsq leaves it 0): it is
    # predicted the overall mean, as by the arm-mean model.
    predicted = coef[time_bin][:, None] + arm_effect[None, :]
    unseen = counts == 0
    if unseen.any():
        predicted[:, unseen] = overall
    return np.asarray(predicted, dtype=np.float64)


def _p_value(estimate: float, se: float) -> float:
    return float(2.0 * sps.norm.sf(abs(estimate) / se))


def analyse_bandit_run(experiment_id: str, arms: tuple[str, ...], arm: npt.NDArray[np.int64],
                       propensity: npt.NDArray[np.float64], reward: npt.NDArray[np.float64],
                       exposed_at: npt.NDArray[np.int64], *, metric: str, reward_type: str,
                       window_s: float, as_of: dt.datetime, pending_units: int = 0,
                       reward_model: RewardModel | None = None, level: float = 0.95,
                       skipped_files: tuple[str, ...] = ()) -> BanditReport:
    """The report of a bandit run from its per-unit arrays (the first arm of
    ``arms`` is the control). The figures are :func:`analyse_ipw`'s on these
    arrays, the p-values two-sided normal ones on its standard errors. Input
    the IPW analysis cannot use (no rows, a propensity outside (0, 1]) is a
    ``ValueError``: the data layer refuses it before it gets here."""
    n_arms = len(arms)
    predictions = (None if reward_model is None else
                   reward_predictions(reward_model, arm, exposed_at, reward, n_arms))
    result: IPWResult = analyse_ipw(arm, propensity, reward, n_arms, predictions=predictions,
                                    control=0, level=level)
    if result.status != "ok":
        raise ValueError(f"bandit run {experiment_id!r} cannot be analysed: {result.status}")
    z = float(sps.norm.ppf(0.5 + level / 2.0))
    summaries = []
    for estimate in result.arms:
        name = arms[estimate.arm]
        if estimate.status != "ok" or estimate.hajek is None or estimate.hajek_se is None:
            summaries.append(BanditArm(name, estimate.rows, "no_units"))
            continue
        summaries.append(BanditArm(
            name, estimate.rows, "ok", naive_mean=estimate.naive, ipw_mean=estimate.hajek,
            ipw_se=estimate.hajek_se, ipw_ci_low=estimate.hajek - z * estimate.hajek_se,
            ipw_ci_high=estimate.hajek + z * estimate.hajek_se))
    estimators: tuple[tuple[Literal["ipw", "aipw", "naive"], Any], ...] = (
        ("ipw", "hajek"), *((("aipw", "aipw"),) if reward_model is not None else ()),
        ("naive", "naive"))
    comparisons = []
    for index in range(1, n_arms):
        for label, source in estimators:
            d = result.difference(index, source)
            biased = label == "naive"
            flag, reason = (BIASED_FLAG, NAIVE_REASON) if biased else ("", "")
            if d.status != "ok" or d.estimate is None or d.se is None:
                status = {"no_rows": "no_units", "too_few_rows": "too_few_units"}.get(
                    d.status, d.status)
                comparisons.append(BanditComparison(arms[index], arms[0], label, status,
                                                    biased=biased, flag=flag, reason=reason))
                continue
            zero = d.se == 0.0 or not math.isfinite(d.se)
            comparisons.append(BanditComparison(
                arms[index], arms[0], label, "zero_variance" if zero else "ok", d.estimate,
                d.se, d.ci_low, d.ci_high, None if zero else _p_value(d.estimate, d.se),
                biased, flag, reason))
    return BanditReport(experiment_id, metric, reward_type, window_s, as_of, int(arm.size),
                        pending_units, arms[0], level, reward_model, tuple(summaries),
                        tuple(comparisons), skipped_files)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4g}"


def bandit_text(report: BanditReport) -> str:
    """``rampart analyze``'s text for a bandit run: the reward, the units, a
    line per arm, then per treatment arm its differences from the control,
    the naive one flagged."""
    when = report.as_of.isoformat().replace("+00:00", "Z")
    pct = f"{report.level:.0%}"
    lines = [f"bandit experiment {report.experiment_id} as of {when}: reward "
             f"{report.metric} ({report.reward_type}, within {report.window_s:g} s of "
             f"exposure); {report.units:,} units analysed"
             + (f", {report.pending_units:,} left out (reward window still open)"
                if report.pending_units else ""),
             "estimates weight each unit by 1/propensity (IPW, Hajek): the allocation "
             "changed during the run",
             f"{'arm':>12} {'units':>9} {'naive mean':>11} {'IPW mean':>10} {pct} CI"]
    for a in report.arms:
        lines.append(f"{a.arm:>12} {a.units:>9,} {_fmt(a.naive_mean):>11} "
                     f"{_fmt(a.ipw_mean):>10} [{_fmt(a.ipw_ci_low)}, {_fmt(a.ipw_ci_high)}]")
    names = {"ipw": "IPW difference", "naive": "naive difference",
             "aipw": f"AIPW difference ({report.reward_model} reward model)"}
    for c in report.comparisons:
        head = f"{c.arm} vs {c.control_arm}: " if c.estimator == "ipw" else " " * (
            len(c.arm) + len(c.control_arm) + 6)
        if c.estimate is None:
            lines.append(f"{head}{names[c.estimator]} n/a ({c.status})")
            continue
        flag = f"  ** {c.flag} **" if c.biased else ""
        lines.append(f"{head}{names[c.estimator]} {c.estimate:+.4g} {pct} CI "
                     f"[{_fmt(c.ci_low)}, {_fmt(c.ci_high)}], p = {_fmt(c.p_value)}{flag}")
    lines += [f"** WARNING: log file skipped (--skip-bad-files): {s} **"
              for s in report.skipped_files]
    return "\n".join(lines)
