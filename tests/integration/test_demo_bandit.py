"""`rampart demo --scenario bandit --json`, run as a user runs it: a Thompson
bandit over three demo versions on local Ray, rewards posted to /v1/outcomes,
the weights moving to the best arm, its regret against an equal split, the
IPW analysis against the planted truth, and the HTML report.

Run it under ``flock /tmp/rampart-ray.lock``: it starts a Ray of its own."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.ports import free_port

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
RAMPART = str(Path(sys.executable).parent / "rampart")
BASE_RATES = {"control": 0.20, "challenger": 0.40, "tree": 0.25}
ROUNDS, UNITS_PER_ROUND = 12, 150


def _config(tmp_path: Path, data: Path) -> Path:
    config = tmp_path / "rampart.yaml"
    text = (ROOT / "deploy" / "rampart.yaml").read_text()
    config.write_text(text.replace("data_dir: .rampart", f"data_dir: {data}"))
    return config


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory, demo_data_dir: Path
         ) -> tuple[dict[str, Any], str]:
    """The JSON summary (the last line of stdout) and the printed text (stderr)."""
    tmp_path = tmp_path_factory.mktemp("bandit-demo")
    result = subprocess.run(
        [RAMPART, "demo", "--config", str(_config(tmp_path, demo_data_dir)), "--scenario", "bandit",
         "--json", "--port", str(free_port())],
        capture_output=True, text=True, timeout=400, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-4000:]
    body: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return body, result.stderr


def test_the_bandit_moves_traffic_to_the_best_arm_with_less_regret_than_an_equal_split(
        demo: tuple[dict[str, Any], str]) -> None:
    body, printed = demo
    assert body["scenario"] == "bandit" and body["ok"] is True
    assert body["checks"] == {
        "best arm ends with the largest share": True, "regret below the equal split": True,
        "every answer logged": True, "every outcome accepted": True,
        "IPW interval covers the planted difference": True}
    units = ROUNDS * UNITS_PER_ROUND
    assert body["requests"] == body["answered"] == body["logged"] == units
    assert body["pending"] == 0 and body["best_arm"] == "challenger"
    rounds = body["rounds"]
    assert len(rounds) == ROUNDS
    assert rounds[0]["weights_before"] == {"control": 3334, "challenger": 3333, "tree": 3333}
    # Expected regret from the planted rates, recomputed from the arms served.
    gap = {arm: BASE_RATES["challenger"] - rate for arm, rate in BASE_RATES.items()}
    served = [sum(r["served"][arm] for r in rounds) for arm in BASE_RATES]
    regret = sum(n * gap[arm] for n, arm in zip(served, BASE_RATES, strict=True))
    assert body["regret"]["bandit"] == pytest.approx(regret)
    assert body["regret"]["equal_split"] == pytest.approx(units * (0.40 - 0.85 / 3))
    assert body["regret"]["bandit"] < 0.5 * body["regret"]["equal_split"]
    final = body["final_weights"]
    assert sum(final.values()) == 10_000 and final["challenger"] >= 8000
    assert min(final.values()) >= 500  # every arm keeps its floor
    assert sum(served) == units and served[1] > served[0] + served[2]
    assert "weights in force per round" in printed and "equal split" in printed


def test_the_ipw_analysis_covers_the_planted_difference_and_the_naive_one_is_flagged(
        demo: tuple[dict[str, Any], str]) -> None:
    body, printed = demo
    effects = {e["name"]: e for e in body["effects"]}
    assert set(effects) == {"challenger vs control (ipw)", "challenger vs control (naive)",
                            "tree vs control (ipw)", "tree vs control (naive)"}
    ipw = effects["challenger vs control (ipw)"]
    assert ipw["checked"] and ipw["covered"] and ipw["truth"] == pytest.approx(0.20)
    assert ipw["ci_low"] <= 0.20 <= ipw["ci_high"] and ipw["p_value"] < 0.001
    assert not effects["challenger vs control (naive)"]["checked"]
    assert effects["tree vs control (ipw)"]["truth"] == pytest.approx(0.05)
    text = " ".join(printed.split())  # the console wraps long lines
    assert "challenger vs control: IPW difference" in text
    # the analysis text flags each naive difference, as `rampart analyze` does
    assert text.count("** biased: allocation changed during the run **") >= 2


def test_the_html_report_holds_the_three_plots_and_the_figures(
        demo: tuple[dict[str, Any], str]) -> None:
    body, printed = demo
    page = Path(body["report"])
    assert page.name == "bandit-report.html" and page.parent.parent.name == "demo-runs"
    assert str(page) in printed.replace("\n", "")
    text = page.read_text(encoding="utf-8")
    assert text.count("src='data:image/png;base64,") == 3
    for alt in ("weights per round", "cumulative regret", "IPW and naive estimates"):
        assert f"alt='{alt}'" in text
    ipw = next(e for e in body["effects"] if e["name"] == "challenger vs control (ipw)")
    for figure in (f"{body['regret']['bandit']:.1f}", f"{body['regret']['equal_split']:.1f}",
                   f"{ipw['estimate']:.3f}", f"[{ipw['ci_low']:.3f}, {ipw['ci_high']:.3f}]",
                   f"{body['final_weights']['challenger']}"):
        assert figure in text, figure


def test_bad_input_is_refused_in_one_line_before_anything_starts() -> None:
    result = subprocess.run(
        [RAMPART, "demo", "--scenario", "bandit", "--concurrency", "0"],
        capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "rampart: error: --concurrency must be at least 1")
