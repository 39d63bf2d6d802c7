"""The HTML report of ``rampart analyze --html``: one self-contained page.

It renders an :class:`~rollout.experiments.results.ExperimentAnalysis` through
its JSON document (:meth:`~rollout.experiments.results.ExperimentAnalysis.to_json`,
the same one ``rampart analyze --json`` prints, so a saved document renders
too) in the order a reader should trust it: the decision and its reasons,
a warning when the arms of the analysed period serve the same versions, the
periods and the versions each arm served, the sample-ratio check (a mismatch
voids the rest), the metrics, the guardrails, the primary metric over time
(cumulative lift, z against the sequential boundary, sample ratio), the
recorded looks next to their reconstruction, a forest plot per segment
attribute and arm, and the pre-registration. Plots are PNGs
drawn with matplotlib's Agg renderer and inlined as base64; every number may
be null and then reads "n/a".
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from rollout.experiments.results import (
    ExperimentAnalysis,
    clustered_text,
    cuped_text,
    factorial_text,
    stratified_text,
)
from rollout.experiments.switchback_report import switchback_line
from telemetry.verdict import Verdict

FIXED_HORIZON_Z = 1.96  # two-sided 5% reference line when no boundary applies
NA = "n/a"
DECISION_COLORS = {"ship": "#1a7f37", "hold": "#b26a00", "rollback": "#c62828"}
VERDICT_CLASSES: dict[str, str] = {Verdict.PASS: "pass", Verdict.FAIL: "fail",
                                   Verdict.INSUFFICIENT_DATA: "unsure"}
FIGSIZE = (7.5, 3.0)

STYLE = (
    "body{font-family:sans-serif;margin:2em;max-width:1250px;color:#222}"
    "h1{margin-bottom:.2em}h2{margin-top:1.6em;border-bottom:1px solid #ddd}"
    "table{border-collapse:collapse;margin:.8em 0;font-size:.9em}"
    ".scroll{overflow-x:auto}"
    "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right;vertical-align:top}"
    "td{white-space:nowrap}th{background:#f4f4f4}"
    "td.text,th.text{text-align:left;white-space:normal}.ci{color:#555;font-size:.85em}"
    ".meta{color:#555}.decision{font-size:1.8em;font-weight:bold;margin:.3em 0}"
    ".decision.ship{color:#1a7f37}.decision.hold{color:#b26a00}"
    ".decision.rollback{color:#c62828}.reasons{margin-top:0}"
    ".banner{padding:.8em 1em;border-radius:4px;margin:.8em 0;font-weight:bold}"
    ".banner.bad{background:#fdecea;border:2px solid #c62828;color:#8e1c1c}"
    ".banner.warn{background:#fff4e0;border:2px solid #b26a00;color:#6d4100}"
    ".banner.good{background:#e9f6ec;border:1px solid #1a7f37;color:#14602a}"
    ".pass{color:#1a7f37;font-weight:bold}.fail{color:#c62828;font-weight:bold}"
    ".unsure{color:#b26a00;font-weight:bold}.note{color:#555;font-style:italic}"
    "figure{margin:1em 0}figcaption{color:#444;font-size:.9em;max-width:850px}"
    "img.plot{max-width:100%}code{font-size:.9em}"
)
# The page records how many plots the browser decoded and their sizes.
SCRIPT = (
    "window.addEventListener('load',()=>{const imgs=[...document.images];"
    "document.body.dataset.plotsLoaded=imgs.filter(i=>i.complete&&i.naturalWidth>0).length;"
    "document.body.dataset.plotSizes=imgs.map(i=>i.naturalWidth+'x'+i.naturalHeight)"
    ".join(' ');});"
)


# --------------------------------------------------------------------------- formatting


def _finite(value: Any) -> float | None:
    """A finite float, or None for null, NaN, infinities and non-numbers."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _num(value: Any, spec: str = ".4g") -> str:
    number = _finite(value)
    return NA if number is None else format(number, spec)


def _count(value: Any) -> str:
    number = _finite(value)
    return NA if number is None else f"{number:,.0f}"


def _pct(value: Any, signed: bool = False) -> str:
    return _num(value, "+.2%" if signed else ".1%")


def _ci(low: Any, high: Any, fmt: str = ".4g") -> str:
    if _finite(low) is None and _finite(high) is None:
        return ""
    return f" [{_num(low, fmt)}, {_num(high, fmt)}]"


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    return NA if value is None else str(value)


def _esc(value: Any) -> str:
    return html.escape(_text(value))


def _mpl(value: Any) -> str:
    """Plain text for a matplotlib label ("$" would start mathtext)."""
    return _text(value).replace("$", r"\$")


def _when(value: Any) -> dt.datetime | None:
    if not isinstance(value, str):
        return None
    try:
        moment = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


def _table(headers: Sequence[str], rows: Iterable[Sequence[str]],
           text_columns: Iterable[int] = (0,), classes: str = "") -> str:
    """Cells are already-escaped HTML; ``text_columns`` are left-aligned."""
    left = set(text_columns)

    def cls(j: int) -> str:
        return " class='text'" if j in left else ""

    head = "".join(f"<th{cls(j)}>{html.escape(h)}</th>" for j, h in enumerate(headers))
    body = "".join("<tr>" + "".join(f"<td{cls(j)}>{c}</td>" for j, c in enumerate(row))
                   + "</tr>" for row in rows)
    return (f"<div class='scroll'><table class='{classes}'><thead><tr>{head}</tr></thead>"
            f"<tbody>{body}</tbody></table></div>")


def png_base64(fig: Any) -> str:
    """A matplotlib figure as base64 PNG (dpi 90, tight bounding box)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    return base64.b64encode(buffer.getvalue()).decode()


def html_figure(title: str, data: str, caption: str) -> str:
    """An inline PNG (base64) as an HTML figure with its caption."""
    return (f"<figure><img class='plot' alt='{html.escape(title, quote=True)}' "
            f"src='data:image/png;base64,{data}'><figcaption>{html.escape(caption)}"
            "</figcaption></figure>")


# --------------------------------------------------------------------------- sections


def _header(report: dict[str, Any]) -> str:
    decision = report.get("decision") or {}
    outcome = str(decision.get("outcome") or "unknown")
    arm = decision.get("arm")
    arms = report.get("arms") or []
    css = outcome if outcome in DECISION_COLORS else ""
    reasons = "".join(f"<li>{_esc(r)}</li>" for r in decision.get("reasons") or [])
    made = dt.datetime.now(tz=dt.UTC)
    return (
        f"<header><h1>Experiment {_esc(report.get('experiment_id'))}</h1>"
        f"<p class='meta'>as of {_esc(report.get('as_of'))} · "
        f"{html.escape(_count(report.get('units')))} exposed units in "
        f"{html.escape(', '.join(str(a) for a in arms)) or NA} · "
        f"{html.escape(_count(report.get('crossovers')))} crossovers · "
        f"p-values corrected by {_esc(report.get('correction'))} · "
        f"{_period_meta(report)}"
        f"made {made:%Y-%m-%d %H:%M:%S} UTC</p>"
        f"<div class='decision {css}' id='decision'>Decision: {html.escape(outcome.upper())}"
        f"{' ' + _esc(arm) if arm else ''}</div>"
        f"<ul class='reasons'>{reasons or '<li>no reason given</li>'}</ul>"
        f"{_period_banners(report)}{_skipped_files(report)}</header>"
    )


def _skipped_files(report: dict[str, Any]) -> str:
    """An amber banner listing the log files left out (``--skip-bad-files``): the
    figures below do not include their rows."""
    skipped = [s for s in report.get("skipped_files") or [] if isinstance(s, dict)]
    if not skipped:
        return ""
    items = "".join(f"<li>{_esc(s.get('log'))} file <code>{_esc(s.get('path'))}</code>: "
                    f"{_esc(s.get('reason'))}</li>" for s in skipped)
    return (f"<div class='banner warn' id='skipped-files'>{len(skipped)} log "
            f"file{'s' if len(skipped) > 1 else ''} skipped (unreadable or malformed); "
            f"their rows are in no figure:<ul>{items}</ul></div>")


def _period_banners(report: dict[str, Any]) -> str:
    """Red for arms serving the same versions (the period compares nothing),
    amber for arms sharing some versions."""
    out = []
    for warning in report.get("warnings") or []:
        if not isinstance(warning, dict):
            continue
        same = warning.get("kind") == "same_versions"
        out.append(f"<div class='banner {'bad' if same else 'warn'}' "
                   f"id='period-warning'>{_esc(warning.get('message'))}</div>")
    return "".join(out)


def _periods(report: dict[str, Any]) -> str:
    """Every period with the versions each arm served; the analysed one marked."""
    periods = [p for p in report.get("periods") or [] if isinstance(p, dict)]
    head = "<section id='periods'><h2>Periods and served versions</h2>"
    if not periods:
        return head + "<p class='note'>No period information in this report.</p></section>"
    analysed = (report.get("period") or {}).get("index")
    arms = [str(a) for a in report.get("arms") or []]
    for p in periods:
        arms += [str(a) for a in (p.get("served") or {}) if str(a) not in arms]
    rows = []
    for p in periods:
        served = p.get("served") or {}
        kinds = {w.get("kind") for w in p.get("warnings") or [] if isinstance(w, dict)}
        flag = ("<span class='fail'>same versions</span>" if "same_versions" in kinds else
                "<span class='unsure'>shared versions</span>" if kinds else "")
        rows.append([
            _esc(p.get("index")) + (" <b>(analysed)</b>" if p.get("index") == analysed else ""),
            _esc(p.get("start")), _esc(p.get("end") or "(latest)"), _count(p.get("units")),
            *[_esc(" + ".join(str(v) for v in served.get(arm) or []) or "-") for arm in arms],
            flag,
        ])
    note = ("<p class='note'>An arm's served versions changed during the experiment (an "
            "alias moved or a rollout split an arm): each period is a different comparison, "
            "so periods are analysed apart and never pooled.</p>" if len(periods) > 1 else "")
    return (head + note + _table(["period", "from", "to", "units", *arms, ""], rows,
                                 range(3 + len(arms) + 2)) + "</section>")


def _period_meta(report: dict[str, Any]) -> str:
    periods = report.get("periods") or []
    period = report.get("period") or {}
    if len(periods) < 2 or not isinstance(period, dict):
        return ""
    return f"period {_esc(period.get('index'))} of {len(periods)} · "


def _shares(values: Sequence[Any]) -> list[float | None]:
    numbers = [_finite(v) for v in values]
    total = sum(v for v in numbers if v is not None)
    if total <= 0 or any(v is None for v in numbers):
        return [None] * len(numbers)
    return [v / total if v is not None else None for v in numbers]


def _srm(report: dict[str, Any]) -> str:
    srm = report.get("srm") or {}
    arms = list(report.get("arms") or [])
    observed = list(srm.get("observed") or [])
    expected = list(srm.get("expected") or [])
    n = max(len(arms), len(observed), len(expected))
    arms += [f"arm {k}" for k in range(len(arms), n)]
    observed += [None] * (n - len(observed))
    expected += [None] * (n - len(expected))
    obs_share, exp_share = _shares(observed), _shares(expected)
    p = _num(srm.get("p_value"), ".3g")
    if srm.get("flag"):
        banner = ("<div class='banner bad' id='srm-banner'>Sample ratio mismatch "
                  f"(p = {html.escape(p)}): the arms did not receive the configured split, so "
                  "the assignment or logging is broken. The effects, guardrails, segments and "
                  "decision below cannot be trusted.</div>")
    elif srm.get("error"):
        banner = (f"<div class='banner warn'>The sample-ratio check could not run "
                  f"({_esc(srm.get('error'))}): the split is unverified.</div>")
    else:
        banner = (f"<div class='banner good'>No sample ratio mismatch (p = {html.escape(p)})."
                  "</div>")
    rows = [[_esc(arm), _count(o), _num(e, ",.1f"), _pct(os_), _pct(es)]
            for arm, o, e, os_, es in zip(arms, observed, expected, obs_share, exp_share,
                                          strict=True)]
    splits = list(srm.get("splits") or [])
    per_split = ""
    if len(splits) > 1:  # the weights were ramped: each split against its own weights
        per_split = "<h3>Per split (units by the weights at their exposure)</h3>" + _table(
            ["weights (bp)", "source", "first exposure", "observed", "expected", "p", ""],
            [[_esc("/".join(_num(w, "g") for w in s.get("weights") or [])),
              _esc(s.get("source")), _esc(s.get("first_exposure")),
              _esc(" / ".join(_count(o) for o in s.get("observed") or [])),
              _esc(" / ".join(_num(e, ",.1f") for e in s.get("expected") or [])),
              _esc(_num(s.get("p_value"), ".3g")), "mismatch" if s.get("flag") else ""]
             for s in splits])
    return (f"<section id='srm'><h2>Sample ratio (SRM)</h2>{banner}"
            + _table(["arm", "observed units", "expected units", "observed share",
                      "expected share"], rows)
            + f"<p>χ² = {html.escape(_num(srm.get('statistic')))}"
            + (f" on {srm['df']} df" if srm.get("df") else "")
            + f", p = {html.escape(p)} (flagged below 0.001, or a split below 0.001 / the "
            f"number of splits; weights {_esc(srm.get('weights_source') or 'configured')})</p>"
            + per_split + "</section>")


def _sequential_text(seq: Any) -> str:
    if not isinstance(seq, dict):
        return NA
    method = seq.get("method")
    if method == "none":
        return "none (fixed horizon)"
    if method == "group_sequential":
        looks = seq.get("looks") or []
        text = (f"group sequential ({_text(seq.get('kind'))}): {_text(seq.get('decision'))}, "
                f"{len(looks)} look{'s' if len(looks) != 1 else ''}, boundary "
                f"{_num(seq.get('boundary'), '.3g')}, "
                f"{'crossed' if seq.get('crossed') else 'not crossed'}")
        if seq.get("note"):
            text += f" ({seq['note']})"
        return text + _across_arms(seq)
    if method == "msprt":
        arms = seq.get("treatment_arms")
        adjusted = (f" ({_num(seq.get('adjusted_p_value'), '.3g')} adjusted across arms)"
                    if isinstance(arms, int) and arms > 1 else "")
        return (f"mSPRT: always-valid p {_num(seq.get('always_valid_p_value'), '.3g')}"
                f"{adjusted}{_ci(seq.get('ci_low'), seq.get('ci_high'))}, "
                f"{'rejected' if seq.get('rejected') else 'not rejected'} "
                f"({_text(seq.get('looks'))} looks)" + _across_arms(seq))
    return _text(method)


def _across_arms(seq: dict[str, Any]) -> str:
    """How a sequential method was corrected across treatment arms, if it was."""
    arms = seq.get("treatment_arms")
    if not isinstance(arms, int) or arms < 2:
        return ""
    return f"; at alpha {_num(seq.get('alpha'), '.3g')} per arm, {arms} treatment arms"


def _with_ci(value: str, ci: str) -> str:
    """HTML: a value with its interval on a second, smaller line."""
    return html.escape(value) + (f"<br><span class='ci'>{html.escape(ci.strip())}</span>"
                                 if ci else "")


def _effect(entry: dict[str, Any]) -> tuple[str, str]:
    """HTML cells: the absolute and the relative effect, each with its interval."""
    absolute = _with_ci(_num(entry.get("abs_effect")),
                        _ci(entry.get("ci_low"), entry.get("ci_high")))
    relative = _with_ci(_pct(entry.get("rel_effect"), signed=True),
                        _ci(entry.get("rel_ci_low"), entry.get("rel_ci_high"), "+.2%"))
    return absolute, relative


def _prob(value: Any) -> str:
    number = _finite(value)
    if number is None:
        return NA
    if number >= 0.9995:
        return ">99.9%"
    if number <= 0.0005:
        return "<0.1%"
    return f"{number:.1%}"


def _clustered_line(clustered: dict[str, Any]) -> str:
    """A metric's clusters and design effect, from the JSON document."""

    def count(name: str) -> int:
        value = clustered.get(name)
        return value if isinstance(value, int) and not isinstance(value, bool) else 0

    return clustered_text(
        str(clustered.get("attribute") or "cluster"), count("clusters_control"),
        count("clusters_treatment"), _finite(clustered.get("mean_cluster_size")),
        _finite(clustered.get("cluster_size_cv")), _finite(clustered.get("icc")),
        _finite(clustered.get("design_effect")), _finite(clustered.get("variance_ratio")),
        _finite(clustered.get("naive_p_value")),
        None if clustered.get("error") is None else str(clustered.get("error")))


def _metrics(report: dict[str, Any]) -> str:
    rows = []
    for m in report.get("metrics") or []:
        absolute, relative = _effect(m)
        bayes = m.get("bayes") or {}
        name = (f"{_esc(m.get('metric'))} <span class='note'>({_esc(m.get('role'))}, "
                f"{_esc(m.get('type'))})</span>")
        if m.get("error"):
            name += f"<br><span class='note'>{_esc(m.get('error'))}</span>"
        cuped = m.get("cuped")
        if cuped:
            # Means, effect, CI and p of this row are the adjusted ones.
            name += "<br><span class='note'>CUPED-adjusted</span>"
            change = html.escape(cuped_text(cuped.get("method"),
                                            _finite(cuped.get("variance_reduction"))))
        else:
            change = "not applied"
        strata = m.get("stratified")
        if strata:  # the post-stratified estimate sits beside CUPED's
            change += "<br><span class='note'>" + html.escape(stratified_text(
                strata.get("attributes") or (), len(strata.get("strata") or ()),
                _finite(strata.get("abs_effect")), _finite(strata.get("ci_low")),
                _finite(strata.get("ci_high")), _finite(strata.get("p_value")),
                _finite(strata.get("variance_reduction")), len(strata.get("collapsed") or ()),
                strata.get("error"))) + "</span>"
        clustered = m.get("clustered")
        if clustered:  # this row's effect, CI and p are by clusters
            name += "<br><span class='note'>cluster-robust</span>"
            change += "<br><span class='note'>" + html.escape(_clustered_line(clustered)) + (
                "</span>")
        switchback = m.get("switchback")
        if switchback:  # this row's effect, CI and p are by time windows
            name += "<br><span class='note'>by switchback windows</span>"
            change += "<br><span class='note'>" + html.escape(
                switchback_line(switchback)) + "</span>"
        prob = _prob(bayes.get("prob_better"))
        if bayes.get("basis") == "cuped_adjusted":
            prob += "<br><span class='ci'>CUPED-adjusted</span>"
        rows.append([
            name, f"{_esc(m.get('arm'))}<br><span class='ci'>vs "
                  f"{_esc(m.get('control_arm'))}</span>",
            f"{_count(m.get('n_control'))}<br>{_count(m.get('n_treatment'))}",
            _num(m.get("mean_control")), _num(m.get("mean_treatment")),
            absolute, relative, _num(m.get("p_value"), ".3g"),
            _num(m.get("adjusted_p_value"), ".3g"), change,
            prob, html.escape(_sequential_text(m.get("sequential"))),
        ])
    if not rows:
        return "<section id='metrics'><h2>Metrics</h2><p class='note'>no metrics</p></section>"
    return ("<section id='metrics'><h2>Metrics</h2>" + _table(
        ["metric", "arm", "n control / treatment", "mean control", "mean treatment",
         "absolute effect [CI]", "relative effect [CI]", "p", "adjusted p",
         "CUPED", "P(better)", "sequential"], rows, (0, 1, 9, 11))
        + "<p class='note'>Intervals and p-values are fixed-horizon; the primary metric's "
          "significance follows its pre-registered sequential method. In a row marked "
          "CUPED-adjusted the means, effects, intervals, p-values and P(better) are all "
          "adjusted for the pre-period covariate (per-arm slopes; P(better) from a normal "
          "posterior on the adjusted effect); the JSON keeps the unadjusted figures.</p>"
          "</section>")


def _guardrails(report: dict[str, Any]) -> str:
    rows = []
    for g in report.get("guardrails") or []:
        verdict = str(g.get("verdict") or NA)
        absolute, relative = _effect(g)
        tolerance = (f"{g.get('harm') or NA} ≤ {_num(g.get('tolerance'))} "
                     f"({'relative' if g.get('relative') else 'absolute'})")
        reason = _esc(g.get("reason"))
        switchback = g.get("switchback")
        if switchback:  # this row's effect, CI and verdict are by time windows
            reason += "<br><span class='note'>" + html.escape(
                switchback_line(switchback)) + "</span>"
        rows.append([
            _esc(g.get("metric")), _esc(g.get("arm")), html.escape(tolerance),
            absolute, relative,
            f"<span class='{VERDICT_CLASSES.get(verdict, '')}'>{html.escape(verdict)}</span>",
            reason,
        ])
    body = (_table(["guardrail", "arm", "tolerated harm", "absolute effect [CI]",
                    "relative effect [CI]", "verdict", "reason"], rows, (0, 1, 2, 5, 6))
            if rows else "<p class='note'>no guardrails</p>")
    return f"<section id='guardrails'><h2>Guardrails</h2>{body}</section>"


def _factorial(report: dict[str, Any]) -> str:
    """A factorial experiment's main effects and two-way interactions (beside
    the per-cell metrics above, which compare each cell with the control cell)."""
    table = report.get("factorial")
    if not isinstance(table, dict):
        return ""
    effects = [e for e in table.get("effects") or [] if isinstance(e, dict)]
    heading = factorial_text(str(table.get("metric")), table.get("factors") or {},
                             str(table.get("covariance")), str(table.get("adjustment")),
                             effects, table.get("error"))[0]
    cells = table.get("cell_units") or {}
    units = _table(["cell", "units"], [[_esc(c), _count(n)] for c, n in cells.items()],
                   (0,)) if cells else ""
    rows = [[_esc(e.get("kind")), html.escape(" × ".join(map(str, e.get("factors") or []))),
             html.escape(" × ".join(map(str, e.get("levels") or []))),
             _with_ci(_num(e.get("estimate")), _ci(e.get("ci_low"), e.get("ci_high"))),
             _num(e.get("std_error")), _num(e.get("p_value")), _num(e.get("adjusted_p_value"))]
            for e in effects]
    body = _table(["effect", "factors", "levels", "estimate [CI]", "std. error", "p",
                   "adjusted p"], rows, (0, 1, 2)) if rows else ""
    return (f"<section id='factorial'><h2>Factorial effects</h2><p>{html.escape(heading)}</p>"
            f"{body}{units}</section>")


# --------------------------------------------------------------------------- plots


def plot_axes(figsize: tuple[float, float] = FIGSIZE) -> tuple[Any, Any]:
    """A matplotlib figure (Agg, no display) and its one gridded axes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.grid(True, alpha=0.3)
    return fig, ax


def _nan(value: Any) -> float:
    number = _finite(value)
    return math.nan if number is None else number


def _time_axis(ax: Any, dated: bool, xs: Sequence[Any], empty: bool) -> None:
    if dated:
        if empty and len(xs) > 1 and xs[0] < xs[-1]:  # nothing to autoscale on
            ax.set_xlim(xs[0], xs[-1])
        import matplotlib.dates

        dates: Any = matplotlib.dates
        locator = dates.AutoDateLocator(maxticks=7)
        ax.xaxis.set_major_locator(locator)
        ax.xaxis.set_major_formatter(dates.ConciseDateFormatter(locator))
        ax.set_xlabel("time (UTC)")
    else:
        ax.set_xlabel("timeline point")


def _legend(ax: Any) -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="best", fontsize="small")


def _no_data(ax: Any, values: Iterable[float]) -> bool:
    """Say so on the axes when no value is finite; True then."""
    if any(math.isfinite(v) for v in values):
        return False
    ax.text(0.5, 0.75, "no estimate yet", transform=ax.transAxes, ha="center",
            va="center", color="grey")
    return True


def _timeline(report: dict[str, Any], primary: dict[str, dict[str, Any]]) -> list[str]:
    """Three figures over time: cumulative lift, z with its boundary, sample ratio."""
    timeline = [p for p in report.get("timeline") or [] if isinstance(p, dict)]
    arms = [str(a) for a in report.get("arms") or []]
    metric = next((m.get("metric") for m in primary.values()), None) or "primary metric"
    moments = [_when(p.get("at")) for p in timeline]
    dated = all(m is not None for m in moments)
    xs: list[Any] = moments if dated else list(range(len(timeline)))
    treatment = arms[1:] or sorted(
        {name for p in timeline for name in (p.get("arms") or {})})

    def series(arm: str, key: str) -> list[float]:
        return [_nan(((p.get("arms") or {}).get(arm) or {}).get(key)) for p in timeline]

    def color(arm: str) -> str:
        return f"C{arms.index(arm) % 10}" if arm in arms else "C9"

    figures = []
    # (a) cumulative lift with its interval
    fig, ax = plot_axes()
    seen: list[float] = []
    for arm in treatment:
        effect, low, high = (series(arm, k) for k in ("abs_effect", "ci_low", "ci_high"))
        seen += effect
        ax.plot(xs, effect, color=color(arm), marker="o", markersize=3,
                label=_mpl(f"{arm} − {arms[0] if arms else 'control'}"))
        ax.fill_between(xs, low, high, color=color(arm), alpha=0.2, linewidth=0)
    ax.axhline(0.0, color="black", linewidth=1)
    ax.set(ylabel="absolute effect", title=_mpl(f"cumulative lift of {metric}"))
    _time_axis(ax, dated, xs, _no_data(ax, seen))
    _legend(ax)
    figures.append(html_figure(
        "Cumulative lift", png_base64(fig),
        f"Cumulative absolute effect of {metric} (treatment − control) with its confidence "
        "band, as the logs stood at each time. The band is fixed-horizon: reading it "
        "repeatedly is peeking, so judge significance by the sequential plot."))
    # (b) z statistic against the sequential boundary
    fig, ax = plot_axes()
    seen = []
    for arm in treatment:
        z = series(arm, "z")
        seen += z
        ax.plot(xs, z, color=color(arm), marker="o", markersize=3, label=_mpl(f"z, {arm}"))
    sequential: list[dict[str, Any]] = [e["sequential"] for e in primary.values()
                                        if isinstance(e.get("sequential"), dict)]
    method = str(sequential[0].get("method")) if sequential else "none"
    caption = f"z statistic of {metric} over time. "
    if method == "group_sequential":
        drawn = False
        for seq in sequential:
            times: list[dt.datetime] = []
            bounds: list[float] = []
            for look in seq.get("looks") or []:
                at = _when(look.get("at")) if isinstance(look, dict) else None
                bound = _finite(look.get("boundary")) if isinstance(look, dict) else None
                if at is not None and bound is not None:
                    times.append(at)
                    bounds.append(bound)
            if not times or not dated:
                continue
            for sign in (1.0, -1.0):
                ax.plot(times, [sign * b for b in bounds], color="#c62828", linestyle="--",
                        marker="D", markersize=5,
                        label=None if drawn or sign < 0 else "group-sequential boundary")
            drawn = True
        kind = next((s.get("kind") for s in sequential if s.get("kind")), None)
        caption += (f"Diamonds: the pre-registered group-sequential boundary ({_text(kind)}) "
                    "at each look, ± the critical z; the test stops when z crosses it."
                    if drawn else "The group-sequential method is pre-registered but no "
                    "look has been reached yet, so there is no boundary to draw"
                    + (f" ({sequential[0]['note']})." if sequential[0].get("note") else "."))
    else:
        for sign in (1.0, -1.0):
            ax.axhline(sign * FIXED_HORIZON_Z, color="grey", linestyle="--", linewidth=1,
                       label=None if sign < 0 else "fixed-horizon ±1.96")
        if method == "msprt":
            caption += ("Dashed: the fixed-horizon ±1.96 reference only. The pre-registered "
                        "method is mSPRT, whose always-valid p-value (in the metrics table) "
                        "decides; it has no z boundary to draw.")
        else:
            caption += ("Dashed: the fixed-horizon ±1.96 reference. No sequential method is "
                        "pre-registered, so it is valid once, at the planned sample size; "
                        "an earlier crossing is not evidence.")
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.set(ylabel="z", title=_mpl(f"z statistic of {metric}"))
    _time_axis(ax, dated, xs, _no_data(ax, seen))
    _legend(ax)
    figures.append(html_figure("z statistic and sequential boundary", png_base64(fig), caption))
    # (c) sample ratio over time
    fig, ax = plot_axes()
    srm = report.get("srm") or {}
    expected = _shares(list(srm.get("expected") or []))
    seen = []
    for k, arm in enumerate(arms):
        shares = []
        for p in timeline:
            units = list(p.get("units") or [])
            share = _shares(units)[k] if k < len(units) else None
            shares.append(math.nan if share is None else share)
        seen += shares
        ax.plot(xs, shares, color=color(arm), marker="o", markersize=3, label=_mpl(arm))
        if k < len(expected) and expected[k] is not None:
            ax.axhline(expected[k], color=color(arm), linestyle="--", linewidth=1)
    ax.set(ylabel="share of units", title="sample ratio over time")
    _time_axis(ax, dated, xs, _no_data(ax, seen))
    _legend(ax)
    figures.append(html_figure(
        "Sample ratio over time", png_base64(fig),
        "Share of exposed units per arm (solid) against the configured split (dashed); "
        f"SRM p = {_num(srm.get('p_value'), '.3g')} at the as-of time."))
    return figures


def _plots(report: dict[str, Any], primary: dict[str, dict[str, Any]]) -> str:
    head = "<section id='timeline'><h2>Primary metric over time</h2>"
    if not report.get("timeline"):
        return (head + "<p class='note'>No timeline in this report (analyse with a timeline "
                "to draw the lift, z and sample-ratio plots).</p></section>")
    return head + "".join(_timeline(report, primary)) + "</section>"


def _forest(group: dict[str, Any], pooled: float | None) -> str:
    rows = [r for r in group.get("segments") or [] if isinstance(r, dict)]
    height = min(1.3 + 0.35 * max(len(rows), 1), 12.0)
    fig, ax = plot_axes((7.5, height))
    confirmatory = group.get("kind") == "confirmatory"
    color = "C0" if confirmatory else "C1"
    ys = list(range(len(rows)))[::-1]
    for y, row in zip(ys, rows, strict=True):
        effect = _finite(row.get("abs_effect"))
        low, high = _finite(row.get("ci_low")), _finite(row.get("ci_high"))
        if effect is None:
            continue
        if low is not None and high is not None:
            ax.plot([low, high], [y, y], color=color, linewidth=2)
        ax.plot([effect], [y], marker="s", color=color, markersize=6)
    if pooled is not None:
        ax.axvline(pooled, color="#c62828", linestyle="--", linewidth=1.2,
                   label=f"pooled {pooled:.4g}")
        _legend(ax)
    ax.axvline(0.0, color="black", linewidth=0.8)
    ax.set_yticks(ys, [_mpl(f"{r.get('segment')} (n={_count(r.get('n_control'))}/"
                             f"{_count(r.get('n_treatment'))})") for r in rows])
    ax.set_ylim(-0.7, max(len(rows), 1) - 0.3)
    ax.set(xlabel=_mpl(f"absolute effect on {_text(group.get('metric'))}"),
           title=_mpl(f"{_text(group.get('attribute'))}: {_text(group.get('arm'))} "
                      f"({_text(group.get('kind'))})"))
    return png_base64(fig)


def _segments(report: dict[str, Any], primary: dict[str, dict[str, Any]]) -> str:
    groups = [g for g in report.get("segments") or [] if isinstance(g, dict)]
    head = "<section id='segments'><h2>Segments</h2>"
    if not groups:
        return head + "<p class='note'>No segments in this report.</p></section>"
    parts = [head, "<p class='note'>Confirmatory attributes were pre-registered; exploratory "
                   "ones were added at analysis time and can only suggest hypotheses. "
                   "p-values are corrected across each attribute's segments.</p>"]
    for g in groups:
        arm = g.get("arm")
        pooled = _finite((primary.get(str(arm)) or {}).get("abs_effect"))
        title = f"{_text(g.get('attribute'))} · {_text(arm)} · {_text(g.get('kind'))}"
        parts.append(f"<h3>{html.escape(title)}</h3>")
        if g.get("simpsons_paradox") or g.get("warning"):
            parts.append(f"<div class='banner warn'>{_esc(g.get('warning') or 'Simpson')}"
                         "</div>")
        parts.append(html_figure(
            f"Forest plot: {title}", _forest(g, pooled),
            f"Effect of {_text(g.get('metric'))} per {_text(g.get('attribute'))} value with "
            f"its interval; dashed: the pooled effect ({_num(pooled)}); "
            f"{_text(g.get('kind'))}."))
        rows = []
        for r in g.get("segments") or []:
            if not isinstance(r, dict):
                continue
            absolute, relative = _effect(r)
            rows.append([_esc(r.get("segment")), _count(r.get("n_control")),
                         _count(r.get("n_treatment")), absolute, relative,
                         _num(r.get("p_value"), ".3g"),
                         _num(r.get("adjusted_p_value"), ".3g")])
        parts.append(_table(["segment", "n control", "n treatment", "absolute effect [CI]",
                             "relative effect [CI]", "p", "adjusted p"], rows))
    return "".join(parts) + "</section>"


LOOK_FIGURES = (("effect", "abs_effect"), ("z", "z"), ("p", "p_value"),
                ("always-valid p", "always_valid_p_value"), ("adjusted p", "adjusted_p_value"),
                ("boundary", "boundary"))


def _looks(report: dict[str, Any]) -> str:
    """Looks stored when they were taken, each next to its reconstruction from
    the logs as they stood then; a difference is shown in red."""
    looks = [c for c in report.get("recorded_looks") or [] if isinstance(c, dict)]
    head = "<section id='looks'><h2>Recorded and reconstructed looks</h2>"
    if not looks:
        return (head + "<p class='note'>No look was recorded (<code>rampart analyze "
                "--record-look</code> stores one when it is taken).</p></section>")
    rows = []
    for comparison in looks:
        then = comparison.get("recorded") or {}
        now = comparison.get("reconstructed")
        differences = [str(d) for d in comparison.get("differences") or []]
        if not isinstance(now, dict):
            status = f"<span class='unsure'>{_esc(comparison.get('note'))}</span>"
        elif differences:
            status = f"<span class='fail'>differs: {_esc(', '.join(differences))}</span>"
        else:
            status = "<span class='pass'>same figures</span>"
        current = {a.get("arm"): a for a in (now or {}).get("arms") or [] if isinstance(a, dict)}
        units_now = (now or {}).get("units")
        for arm in then.get("arms") or []:
            if not isinstance(arm, dict):
                continue
            other = current.get(arm.get("arm")) or {}
            cells = [f"{_num(arm.get(key))}<br><span class='ci'>"
                     f"{_num(other.get(key)) if now else NA}</span>"
                     for _, key in LOOK_FIGURES]
            rows.append([_esc(then.get("at")), _esc(then.get("recorded_at")),
                         _esc(then.get("method")), _esc(arm.get("arm")),
                         f"{_esc(then.get('units'))}<br><span class='ci'>"
                         f"{_esc(units_now) if now else NA}</span>", *cells, status])
    note = ("<p class='note'>Each cell: as recorded when the look was taken (top), and as "
            "reconstructed now from the logs as they stood at the look's time (below). "
            "Equal figures mean the logs then and now tell the same story; a difference "
            "means the logs changed after the look (late or rewritten data) or the look was "
            "taken under another plan.</p>")
    return head + note + _table(
        ["look at", "recorded at", "method", "arm", "units per arm",
         *[label for label, _ in LOOK_FIGURES], "comparison"], rows,
        (0, 1, 2, 3, 4, 11)) + "</section>"


def _preregistration(report: dict[str, Any]) -> str:
    pre = report.get("preregistration")
    head = "<section id='preregistration'><h2>Pre-registration</h2>"
    if not isinstance(pre, dict) or not pre:
        return head + "<p class='note'>No pre-registration recorded.</p></section>"
    labels = {"start": "experiment start", "registered_at": "plan registered at",
              "registered_after_start": "registered after the start",
              "sha256": "plan SHA-256"}
    banner = ("<div class='banner warn'>The plan was registered after the experiment "
              "started: the analysis is not pre-registered.</div>"
              if pre.get("registered_after_start") else "")
    ordered = [k for k in labels if k in pre] + [k for k in pre if k not in labels]
    rows = [[html.escape(str(labels.get(k, k))), f"<code>{_esc(pre[k])}</code>"] for k in ordered]
    return head + banner + _table(["", "value"], rows, (0, 1)) + "</section>"


def _holdout(report: dict[str, Any]) -> str:
    """A layer's holdout comparison (``rampart analyze --holdout``): the layer, the
    holdout's share, what shipped, and what the sample-ratio test counted."""
    holdout = report.get("holdout")
    if not isinstance(holdout, dict):
        return ""
    scope = holdout.get("srm_scope") or {}
    rows = [["layer", _esc(holdout.get("layer_id"))],
            ["holdout (control)", f"{_esc(holdout.get('holdout_bp'))} of 10000 buckets "
                                  f"({html.escape(_pct(holdout.get('holdout_share')))})"],
            ["shipped (treatment)", "every unit the layer's experiments served: "
             + _esc(", ".join(str(e) for e in holdout.get("experiments") or []) or None)],
            ["sample ratio", _esc(scope.get("reason"))]]
    warning = holdout.get("warning")
    banner = (f"<div class='banner warn' id='holdout-warning'>{_esc(warning)}</div>"
              if warning else "")
    return ("<section id='holdout'><h2>Holdout against shipped</h2>" + banner
            + _table(["", "value"], rows, (0, 1)) + "</section>")


# --------------------------------------------------------------------------- page


def render_html(analysis: ExperimentAnalysis | Mapping[str, Any]) -> str:
    """The whole report as one self-contained HTML page (inline CSS and PNGs), from
    an analysis or its JSON document."""
    report = analysis.to_json() if isinstance(analysis, ExperimentAnalysis) else dict(analysis)
    primary = {str(m.get("arm")): m for m in report.get("metrics") or []
               if isinstance(m, dict) and m.get("role") == "primary"}
    sections = [_header(report), _holdout(report), _periods(report), _srm(report),
                _metrics(report), _factorial(report),
                _guardrails(report), _plots(report, primary), _looks(report),
                _segments(report, primary), _preregistration(report)]
    title = html.escape(f"Rampart analysis: {_text(report.get('experiment_id'))}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title>"
            f"<style>{STYLE}</style></head><body>{''.join(sections)}"
            f"<script>{SCRIPT}</script></body></html>")


def write_html(analysis: ExperimentAnalysis | Mapping[str, Any], path: Path) -> None:
    """Render ``analysis`` and write it to ``path`` (UTF-8), creating its directory."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_html(analysis), encoding="utf-8")
