"""The report of an interleaving experiment: which ranker the sessions prefer.

Each session (one ``POST /v1/rank`` request, the unit team-draft credit is
defined on) arrives with the clicks credited to ranker A and to ranker B
(:mod:`rollout.experiments.interleaving_data` reads and credits them); the
ranker with more credited clicks wins the session, equal credit (no click
included) is a tie. The test is :func:`rollout.experiments.stats.interleaving.interleaving_test`:
the exact two-sided sign test of the wins against one half, B's share of the
sessions with a preference with its Clopper-Pearson interval (the interval
that inverts the same test), and ``Δ_AB = (wins_a + ties/2)/sessions − 1/2``
of Chapelle, Joachims, Radlinski & Yue (2012), positive when A is preferred.

Pure: numpy and the statistics module only, no I/O.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from rollout.experiments.stats.interleaving import (
    Status,
    interleaving_test,
    preference_counts,
)

LEVEL = 0.95


@dataclass(frozen=True, slots=True)
class ClickCounts:
    """What became of the outcome events of the click metric known by ``as_of``.

    ``events`` is every one of them; of those, ``not_clicks`` had a value of 0
    or less, ``without_request`` named no request, ``unknown_request`` named a
    request no shown list of the experiment has, ``without_item`` named a shown
    request but neither an item nor a position, ``unshown`` named an item or
    position that request's list did not show, and ``matched`` found a shown
    position (several clicks on one position count once in the credit).
    """

    events: int = 0
    not_clicks: int = 0
    without_request: int = 0
    unknown_request: int = 0
    without_item: int = 0
    unshown: int = 0
    matched: int = 0


@dataclass(frozen=True, slots=True)
class MethodSessions:
    """How many sessions were shown, and credited, by one interleaving method."""

    method: str
    sessions: int


@dataclass(frozen=True, slots=True)
class InterleavingReport:
    """The analysis of an interleaving experiment as ``rampart analyze`` prints it.

    ``sessions`` are the requests whose interleaved list was shown by
    ``as_of``; ``sessions_with_clicks`` those with at least one matched click.
    ``wins_a + wins_b + ties == sessions``. ``share_b`` is B's share of the
    sessions with a preference and ``[share_b_ci_low, share_b_ci_high]`` its
    exact interval at ``level``; ``p_value`` the two-sided sign test of one
    half; ``delta_ab`` Chapelle et al.'s Δ_AB (positive: A preferred);
    ``winner`` the preferred ranker when ``p_value < 1 − level``. ``status``
    is the test's: ``"ok"``, or ``"no_preferences"`` (every session tied; the
    figures are then the no-evidence values: share 0.5, interval [0, 1], p 1).
    """

    experiment_id: str
    method: str
    metric: str
    as_of: dt.datetime
    sessions: int
    sessions_with_clicks: int
    wins_a: int
    wins_b: int
    ties: int
    credited_clicks_a: int
    credited_clicks_b: int
    share_b: float
    share_b_ci_low: float
    share_b_ci_high: float
    level: float
    p_value: float
    delta_ab: float
    winner: str | None
    status: Status
    clicks: ClickCounts
    methods: tuple[MethodSessions, ...] = ()
    skipped_files: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """The JSON document ``rampart analyze --json`` prints for an interleaving
        experiment: every field, the time in ISO-8601; no NaN."""
        body = asdict(self)
        body["design"] = "interleaving"
        body["as_of"] = self.as_of.isoformat().replace("+00:00", "Z")
        return body


def analyse_interleaving(experiment_id: str, clicks_a: npt.NDArray[np.int64],
                         clicks_b: npt.NDArray[np.int64], *, method: str, metric: str,
                         as_of: dt.datetime, clicks: ClickCounts,
                         methods: tuple[MethodSessions, ...] = (), level: float = LEVEL,
                         skipped_files: tuple[str, ...] = ()) -> InterleavingReport:
    """The report of an interleaving experiment from each session's credited
    clicks (``clicks_a[i]``, ``clicks_b[i]`` for session ``i``).

    A ``ValueError`` when there is no session or the two arrays differ in
    length: the data layer refuses such input before it gets here.
    """
    a = np.asarray(clicks_a, dtype=np.int64)
    b = np.asarray(clicks_b, dtype=np.int64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"interleaving {experiment_id!r}: credit arrays of shapes "
                         f"{a.shape} and {b.shape}")
    if a.size == 0:
        raise ValueError(f"interleaving {experiment_id!r} has no session to analyse")
    clicked = (a + b) > 0
    counts = preference_counts(np.sign(a - b), clicked)
    test = interleaving_test(counts, alpha=1.0 - level)
    if test.status not in ("ok", "no_preferences"):
        raise ValueError(f"interleaving {experiment_id!r} cannot be tested: {test.status}")
    # The test speaks of A's share; B's is its mirror, and so is its interval.
    return InterleavingReport(
        experiment_id, method, metric, as_of, counts.sessions, int(clicked.sum()),
        counts.wins_a, counts.wins_b, counts.ties, int(a.sum()), int(b.sum()),
        1.0 - test.share_a, 1.0 - test.ci_high, 1.0 - test.ci_low, level, test.p_value,
        test.delta_ab, test.winner, test.status, clicks, methods, skipped_files)


def interleaving_text(report: InterleavingReport) -> str:
    """``rampart analyze``'s text for an interleaving experiment: the sessions,
    the wins, B's share with its interval and the test, Δ_AB, then where the
    click events went."""
    when = report.as_of.isoformat().replace("+00:00", "Z")
    pct = f"{report.level:.0%}"
    preferred = report.wins_a + report.wins_b
    c = report.clicks
    by_method = ""
    if len(report.methods) > 1:
        by_method = " (" + ", ".join(f"{m.sessions:,} {m.method}" for m in report.methods) + ")"
    lines = [
        f"interleaving experiment {report.experiment_id} as of {when}: {report.method} "
        f"credit of metric {report.metric}; {report.sessions:,} sessions{by_method}, "
        f"{report.sessions_with_clicks:,} with clicks",
        f"wins: a {report.wins_a:,}, b {report.wins_b:,}, ties {report.ties:,} "
        f"(credited clicks: a {report.credited_clicks_a:,}, b {report.credited_clicks_b:,})",
    ]
    if report.status == "ok":
        verdict = ("b preferred" if report.winner == "b" else
                   "a preferred" if report.winner == "a" else "no significant preference")
        lines.append(f"share of b among {preferred:,} sessions with a preference: "
                     f"{report.share_b:.4g} {pct} CI [{report.share_b_ci_low:.4g}, "
                     f"{report.share_b_ci_high:.4g}], sign test p = {report.p_value:.4g}: "
                     f"{verdict}")
    else:
        lines.append("no session preferred either ranker: no test (every session tied)")
    lines.append(f"delta_AB = {report.delta_ab:+.4g} ((wins_a + ties/2)/sessions - 1/2; "
                 "positive: a preferred)")
    lines.append(f"click events: {c.events:,}; credited {c.matched:,}; left out: "
                 f"{c.unshown:,} on an item not shown, {c.unknown_request:,} for an unknown "
                 f"request, {c.without_request:,} without a request, {c.without_item:,} "
                 f"without an item or position, {c.not_clicks:,} with value <= 0")
    lines += [f"** WARNING: log file skipped (--skip-bad-files): {s} **"
              for s in report.skipped_files]
    return "\n".join(lines)
