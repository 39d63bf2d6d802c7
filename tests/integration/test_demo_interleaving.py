"""`rampart demo --scenario interleaving --json`, run as a user runs it: two
packaged ranker versions interleaved through ``POST /v1/rank`` on local Ray,
the planted better ranker found by the sign test, the A/B comparison from the
simulation, and the HTML report.

The decision log of the run is read back here too: for a few sessions, each
ranker's logged scores rebuild its ranking, and ``interleave`` over the two
rankings with the request id gives the list the gateway logged as shown.

Run it under ``flock /tmp/rampart-ray.lock``: the demo starts a Ray of its own.
"""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from serving.cli.demo.interleaving import ITEMS, SESSIONS, draw_sessions
from serving.routing.interleaving import interleave
from telemetry.decision_log import read_decisions
from tests.ports import free_port

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
RAMPART = str(Path(sys.executable).parent / "rampart")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory, demo_data_dir: Path
         ) -> tuple[dict[str, Any], str]:
    """The JSON summary (the last line of stdout) and the printed text (stderr)."""
    tmp = tmp_path_factory.mktemp("interleaving")
    config = tmp / "rampart.yaml"
    text = (ROOT / "deploy" / "rampart.yaml").read_text()
    config.write_text(text.replace("data_dir: .rampart", f"data_dir: {demo_data_dir}"))
    result = subprocess.run(
        [RAMPART, "demo", "--config", str(config), "--scenario", "interleaving", "--json",
         "--port", str(free_port())],
        capture_output=True, text=True, timeout=400, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-4000:]
    body: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return body, result.stderr


def test_the_planted_better_ranker_wins_the_sign_test(demo: tuple[dict[str, Any], str]
                                                      ) -> None:
    body, printed = demo
    assert body["scenario"] == "interleaving" and body["ok"] is True
    assert len(body["checks"]) == 6 and all(body["checks"].values()), body["checks"]
    assert body["sessions"] == body["answered"] == body["logged"] == body["rebuilt"] == SESSIONS
    rankers = body["rankers"]
    assert (rankers["a"]["alias"], rankers["b"]["alias"]) == ("tree", "challenger")
    assert rankers["a"]["version"] != rankers["b"]["version"]
    # The truth, read from the log: the linear challenger ranks the session's
    # best candidate first far more often (measured 394 against 283 of 400).
    assert rankers["b"]["top1_hits"] > rankers["a"]["top1_hits"] + 50
    pref = body["preference"]
    assert pref["wins_a"] + pref["wins_b"] + pref["ties"] == pref["sessions"] == SESSIONS
    assert 0 < pref["unclicked"] <= pref["ties"]
    assert pref["winner"] == pref["better"] == "b"
    # Measured: 120 against 199, A's share 0.376 [0.323, 0.432], p = 1.1e-5.
    assert pref["wins_b"] > pref["wins_a"]
    assert pref["share_a"] == pytest.approx(pref["wins_a"] / (pref["wins_a"] + pref["wins_b"]))
    assert pref["ci_low"] < pref["share_a"] < pref["ci_high"] < 0.5
    assert pref["p_value"] < 0.001
    assert pref["delta_ab"] < 0
    for marker in ("Team-draft credit and the exact sign test", "Preferred: ranker b",
                   f"interleave rebuilds {SESSIONS} of {SESSIONS} answered lists",
                   "A/B needs", "Demo finished."):
        # rich wraps lines at the console's width
        assert marker in " ".join(printed.split()), marker


def test_the_simulation_says_an_ab_test_needs_more_sessions(
        demo: tuple[dict[str, Any], str]) -> None:
    body, _ = demo
    sim = body["simulation"]
    assert (sim["runs"], sim["seed"], sim["method"]) == (60, 2026, "team_draft")
    assert body["ratio"] == sim["median_ratio"]
    # Measured: median ratio 6.8 (quartiles 3.3-11.4), medians 671 and 4582.
    assert sim["median_ratio"] > 3.0
    assert sim["ratio_quartiles"][0] <= sim["median_ratio"] <= sim["ratio_quartiles"][1]
    assert sim["median_ab"] > sim["median_interleaving"] > 0
    assert sim["ab_power80"] > sim["interleaving_power80"] > 0


def test_the_html_report_holds_the_plots_and_figures(demo: tuple[dict[str, Any], str]
                                                     ) -> None:
    body, _ = demo
    report = Path(body["report"])
    assert report.parent == Path(body["run_dir"])
    assert report.parent.parent.name == "demo-runs"
    page = report.read_text(encoding="utf-8")
    images = re.findall(r"src='data:image/png;base64,([^']+)'", page)
    assert len(images) == 3
    assert all(base64.b64decode(data).startswith(PNG_MAGIC) for data in images)
    for title in ("Cumulative preference share", "Sessions needed", "Power curves"):
        assert f"alt='{title}'" in page, title
    pref, sim = body["preference"], body["simulation"]
    for figure in (f"{pref['share_a']:.3f} [{pref['ci_low']:.3f}, {pref['ci_high']:.3f}]",
                   f"{pref['wins_a']} / {pref['wins_b']} / {pref['ties']}",
                   f"{pref['p_value']:.3g}", f"{sim['median_ratio']:.2f}",
                   f"interleaving {sim['median_interleaving']:.0f}, "
                   f"A/B {sim['median_ab']:.0f}"):
        assert figure in page, figure


def test_the_logged_rankings_rebuild_the_lists_shown(demo: tuple[dict[str, Any], str]
                                                     ) -> None:
    body, _ = demo
    rows = read_decisions(Path(body["run_dir"]) / "decisions").to_pylist()
    ranked = [r for r in rows if r["role"] == "ranker"]
    assert len(ranked) == 2 * ITEMS * SESSIONS
    sessions = {s.request_id: s for s in draw_sessions(SESSIONS)}
    for request_id in ("ilv-0000", "ilv-0001", "ilv-0137", "ilv-0250", "ilv-0399"):
        mine = [r for r in ranked if r["request_id"] == request_id]
        assert {r["item_id"] for r in mine} == set(sessions[request_id].item_ids)
        rankings = {}
        for team in ("a", "b"):
            own = sorted((r for r in mine if r["arm"] == team), key=lambda r: r["item_rank"])
            assert [r["item_rank"] for r in own] == list(range(1, ITEMS + 1))
            scores = [r["prediction"] for r in own]
            assert scores == sorted(scores, reverse=True)
            rankings[team] = tuple(r["item_id"] for r in own)
        shown = sorted((r for r in mine if r["arm"] == r["team"]), key=lambda r: r["position"])
        assert [r["position"] for r in shown] == list(range(ITEMS))
        merged = interleave("team_draft", rankings["a"], rankings["b"], key=request_id)
        assert [(r["item_id"], r["team"]) for r in shown] == list(
            zip(merged.items, merged.teams, strict=True))


def test_bad_input_is_refused_in_one_line_before_anything_starts() -> None:
    result = subprocess.run(
        [RAMPART, "demo", "--scenario", "interleaving", "--requests", "0"],
        capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("rampart: error: ")
