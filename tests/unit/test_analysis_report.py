"""The HTML report of ``rampart analyze --html`` on reports from synthetic Parquet logs."""

from __future__ import annotations

import base64
import copy
import datetime as dt
import html
import re
import struct
from pathlib import Path
from typing import Any

import pytest

from rollout.experiments.report import VERDICT_CLASSES, render_html, write_html
from serving.cli.analyze import run_analysis
from tests.unit.test_analysis import ANALYSIS, AS_OF, START, _config, write_experiment

BEFORE_START = START - dt.timedelta(days=1)  # lets one log be analysed under several plans
PNG = re.compile(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'")


def _analyse(tmp: Path, analysis: dict[str, Any] | None = None,
             **kwargs: Any) -> dict[str, Any]:
    """The JSON document of an analysis (what ``rampart analyze --json`` prints), which
    the tests below tamper with; the typed analysis renders the same page."""
    return run_analysis(_config(tmp, analysis), "exp", as_of=AS_OF, now=BEFORE_START,
                        **kwargs).to_json()


@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("experiment")
    write_experiment(tmp, units=8_000)
    skewed = tmp_path_factory.mktemp("skewed")
    write_experiment(skewed, units=8_000, treatment_share=0.45)
    gs = {**ANALYSIS, "sequential": {"method": "group_sequential", "looks": 4,
                                     "max_units_per_arm": 4_000}}
    msprt = {**ANALYSIS, "sequential": {"method": "msprt", "looks": 5}}
    return {
        "none": _analyse(tmp, timeline_points=20, exploratory_segments=("country",)),
        "gs": _analyse(tmp, gs, timeline_points=20),
        "msprt": _analyse(tmp, msprt, timeline_points=20),
        "srm": _analyse(skewed, timeline_points=5),
    }


def _png_sizes(page: str) -> list[tuple[int, int]]:
    sizes = []
    for data in PNG.findall(page):
        raw = base64.b64decode(data)
        assert raw[:8] == b"\x89PNG\r\n\x1a\n"
        sizes.append(struct.unpack(">II", raw[16:24]))  # IHDR width, height
    return sizes


def _section(page: str, name: str) -> str:
    start = page.index(f"<section id='{name}'>")
    return page[start:page.index("</section>", start)]


def _nulled(value: Any) -> Any:
    """Every number in a report replaced by None (booleans kept)."""
    if isinstance(value, dict):
        return {k: _nulled(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_nulled(v) for v in value]
    if isinstance(value, int | float) and not isinstance(value, bool):
        return None
    return value


def test_page_shows_decision_srm_metrics_guardrails_plots_in_order(
        reports: dict[str, dict[str, Any]]) -> None:
    report = reports["none"]
    page = render_html(report)
    outcome = report["decision"]["outcome"]
    assert f"<div class='decision {outcome}' id='decision'>Decision: {outcome.upper()}" in page
    assert len(report["decision"]["reasons"]) >= 2
    for reason in report["decision"]["reasons"]:
        assert f"<li>{html.escape(reason)}</li>" in page
    srm = _section(page, "srm")
    assert "No sample ratio mismatch" in srm and "srm-banner" not in page
    assert f"p = {report['srm']['p_value']:.3g}" in srm
    assert all(f"{n:,}" in srm for n in report["srm"]["observed"])
    metrics = _section(page, "metrics")
    assert metrics.count("<tr>") == 1 + len(report["metrics"]) == 4
    for m in report["metrics"]:
        assert f"{m['metric']} <span class='note'>({m['role']}, {m['type']})" in metrics
        assert f"{m['abs_effect']:.4g}" in metrics and f"{m['adjusted_p_value']:.3g}" in metrics
    assert "none (fixed horizon)" in metrics
    guardrails = _section(page, "guardrails")
    verdict = report["guardrails"][0]["verdict"]
    assert f"<span class='{VERDICT_CLASSES[verdict]}'>{verdict}</span>" in guardrails
    assert "decrease ≤ 0.05 (relative)" in guardrails
    assert report["preregistration"]["sha256"] in _section(page, "preregistration")
    order = [page.index(f"<section id='{s}'>") for s in (
        "srm", "metrics", "guardrails", "timeline", "segments", "preregistration")]
    assert page.index("id='decision'") < order[0] and order == sorted(order)
    # three timeline plots, one forest plot per attribute (platform, country) and arm
    assert len(report["segments"]) == 2
    assert page.count("<img") == 3 + 2 == len(_png_sizes(page))
    assert "confirmatory" in page and "exploratory" in page
    assert "fixed-horizon ±1.96 reference" in _section(page, "timeline")
    for width, height in _png_sizes(page):
        assert 300 < width < 900 and 150 < height < 700  # modest figures at dpi 90


def test_twenty_point_timeline_is_plotted(reports: dict[str, dict[str, Any]]) -> None:
    report = reports["none"]
    assert len(report["timeline"]) == 21
    assert "<img" in _section(render_html(report), "timeline")


def test_sequential_plot_draws_the_boundary_or_says_it_is_a_reference(
        reports: dict[str, dict[str, Any]]) -> None:
    gs = reports["gs"]
    looks = gs["metrics"][0]["sequential"]["looks"]
    assert looks and all(look["boundary"] for look in looks)
    page = render_html(gs)
    timeline = _section(page, "timeline")
    assert "group-sequential boundary (obrien_fleming) at each look" in timeline
    assert "±1.96" not in timeline
    assert "group sequential (obrien_fleming)" in _section(page, "metrics")
    early = copy.deepcopy(gs)
    early["metrics"][0]["sequential"].update(
        looks=[], boundary=None, crossed=False, decision="continue",
        note="first look at 1000 units per arm not reached")
    timeline = _section(render_html(early), "timeline")
    assert "no look has been reached yet" in timeline and "1000 units per arm" in timeline
    page = render_html(reports["msprt"])
    timeline = _section(page, "timeline")
    assert "fixed-horizon ±1.96 reference only" in timeline and "mSPRT" in timeline
    assert "mSPRT: always-valid p" in _section(page, "metrics")
    assert page.count("<img") == 3 + 1


def test_flagged_srm_is_a_red_banner_before_everything_else(
        reports: dict[str, dict[str, Any]]) -> None:
    report = reports["srm"]
    assert report["srm"]["flag"] and report["decision"]["outcome"] == "hold"
    page = render_html(report)
    assert "Decision: HOLD" in page and "class='decision hold'" in page
    banner = page.index("<div class='banner bad' id='srm-banner'>")
    assert banner < page.index("<section id='metrics'>")
    assert "cannot be trusted" in page[banner:page.index("</div>", banner)]
    assert "sample ratio mismatch" in page[:page.index("<section id='srm'>")]  # a reason


def test_missing_numbers_read_na_and_never_crash(reports: dict[str, dict[str, Any]]) -> None:
    for name in ("none", "gs", "msprt"):
        report = _nulled(copy.deepcopy(reports[name]))
        page = render_html(report)
        text = PNG.sub("", page)
        assert "n/a" in text and not re.search(r"\bnan\b|\bNone\b|\binf\b", text)
        assert page.count("<img") == len(_png_sizes(page)) == 3 + len(report["segments"])
    sparse = {"experiment_id": "e", "decision": {"outcome": "hold", "reasons": []},
              "srm": {}, "metrics": [{"metric": "m", "role": "primary", "sequential": None,
                                      "bayes": None}],
              "timeline": [{"at": None, "units": [None, 3], "arms": {}}], "segments": [
                  {"attribute": "a", "kind": "exploratory", "arm": "t",
                   "segments": [{"segment": "x"}]}]}
    page = render_html(sparse)
    assert page.count("<img") == 4 and "Decision: HOLD" in page


def test_without_timeline_or_segments_there_are_notes_not_plots(
        reports: dict[str, dict[str, Any]]) -> None:
    report = copy.deepcopy(reports["none"])
    del report["timeline"]
    report["segments"] = []
    page = render_html(report)
    assert page.count("<img") == 0
    assert "No timeline in this report" in page and "No segments in this report" in page
    report["timeline"] = []
    assert render_html(report).count("<img") == 0
    del report["preregistration"]
    assert "No pre-registration recorded" in render_html(report)


def test_everything_is_escaped_and_written_to_one_file(
        reports: dict[str, dict[str, Any]], tmp_path: Path) -> None:
    report = copy.deepcopy(reports["none"])
    report["experiment_id"] = "<script>alert(1)</script>"
    report["decision"]["reasons"].append("a <img src=x> & 'quote'")
    report["segments"][0]["segments"][0]["segment"] = "$x$ <b>bold</b>"
    report["segments"][0]["simpsons_paradox"] = True
    report["segments"][0]["warning"] = "Simpson's <paradox>"
    path = tmp_path / "nested" / "report.html"
    write_html(report, path)
    page = path.read_text(encoding="utf-8")
    assert "<script>alert" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "a &lt;img src=x&gt; &amp; &#x27;quote&#x27;" in page
    assert "$x$ &lt;b&gt;bold&lt;/b&gt;" in page
    assert "<div class='banner warn'>Simpson&#x27;s &lt;paradox&gt;</div>" in page
    assert page.count("<img") == 5 and page.count("<script>") == 1
    assert "http://" not in page and "https://" not in page  # self-contained
