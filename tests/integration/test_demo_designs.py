"""`rampart demo --scenario layers|switchback|factorial --json`, run as a user
runs it: each design on simulated traffic through the gateway, its analysis
printed and its planted effects checked."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
RAMPART = str(Path(sys.executable).parent / "rampart")


@pytest.fixture()
def shared_data(demo_data_dir: Path) -> Path:
    """The session's demo data directory (see ``tests/conftest.py``)."""
    return demo_data_dir


def run_scenario(tmp_path: Path, scenario: str, data: Path | None = None
                 ) -> tuple[dict[str, Any], str]:
    """The JSON summary (the last line of stdout) and the printed text (stderr)."""
    config = tmp_path / "rampart.yaml"
    text = (ROOT / "deploy" / "rampart.yaml").read_text()
    config.write_text(text.replace("data_dir: .rampart",
                                   f"data_dir: {data or tmp_path / 'data'}"))
    result = subprocess.run(
        [RAMPART, "demo", "--config", str(config), "--scenario", scenario, "--json",
         "--port", str(free_port())],
        capture_output=True, text=True, timeout=400, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-4000:]
    body: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    assert body["scenario"] == scenario and body["ok"] is True
    assert all(body["checks"].values()), body["checks"]
    assert body["answered"] == body["requests"] == body["logged"]
    return body, result.stderr


def effects(body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in body["effects"]}


def test_the_layers_demo_keeps_experiments_exclusive_and_layers_independent(
        tmp_path: Path, shared_data: Path) -> None:
    body, printed = run_scenario(tmp_path, "layers", shared_data)
    assert body["checks"]["mutual exclusion"]
    assert body["units_in_two_places"] == {"checkout": 0, "search": 0}
    assert body["independence"]["df"] == 3 and body["independence"]["p_value"] > 0.001
    checkout = body["splits"]["checkout"]
    assert checkout["holdout"] > 0 and checkout["ineligible"]["checkout-ranker"] > 0
    assert set(checkout["experiments"]) == {"checkout-ranker", "checkout-pricing"}
    assert set(body["splits"]["search"]["experiments"]) == {"search-tree"}
    found = effects(body)
    assert set(found) == {"checkout-ranker", "checkout-pricing", "search-tree",
                          "holdout checkout"}
    assert all(e["covered"] for e in found.values())
    assert 0 < found["holdout checkout"]["truth"] < found["checkout-ranker"]["truth"]
    for marker in ("Distinct units per layer", "experiment checkout-ranker as of",
                   "experiment search-tree as of", "layer checkout: holdout 1000 of 10000",
                   "in ['holdout', 'shipped']", "decision:"):
        assert marker in printed, marker


def test_the_switchback_demo_recovers_the_effect_once_the_burn_in_drops_carry_over(
        tmp_path: Path, shared_data: Path) -> None:
    body, printed = run_scenario(tmp_path, "switchback", shared_data)
    found = effects(body)
    burnt, unburnt = found["burn-in 1 s"], found["no burn-in"]
    assert burnt["checked"] and burnt["covered"] and not unburnt["checked"]
    # carry-over pulls the estimate without burn-in towards zero
    assert unburnt["estimate"] < burnt["estimate"]
    windows = body["windows"]["burn_in"]
    assert windows["windows_control"] >= 2 and windows["windows_treatment"] >= 2
    assert windows["burn_in_requests"] > 0
    assert body["windows"]["no_burn_in"]["burn_in_requests"] == 0
    assert windows["ri_p_value"] is not None and windows["naive_p_value"] is not None
    assert "switchback by 2 s windows × region" in printed
    assert "randomization p =" in printed and "per-unit test" in printed


def test_the_factorial_demo_reports_main_effects_and_the_interaction(
        tmp_path: Path, shared_data: Path) -> None:
    body, printed = run_scenario(tmp_path, "factorial", shared_data)
    found = effects(body)
    assert set(found) == {"model: challenger", "label: badge",
                          "model × label: challenger × badge"}
    assert all(e["covered"] and e["p_value"] is not None for e in found.values())
    assert len(body["cells"]) == 4 and min(body["cells"].values()) > 100
    assert "interaction model × label: challenger × badge" in printed
    assert "adjusted (holm)" in printed


@pytest.mark.parametrize("scenario", ["layers", "switchback", "factorial"])
def test_bad_input_is_refused_in_one_line_before_anything_starts(scenario: str) -> None:
    result = subprocess.run(
        [RAMPART, "demo", "--scenario", scenario, "--requests", "0"],
        capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("rampart: error: ")
