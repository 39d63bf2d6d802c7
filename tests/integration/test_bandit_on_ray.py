"""A bandit experiment on a running ``rampart serve``: the controller actor on
local Ray Serve settles the rewards posted to ``POST /v1/outcomes``, moves the
arms' bucket ranges, and every replica routes by them.

Two registered versions of the demo classifier are the arms; the client
converts 70% of the units the challenger served and 10% of the control's.
The test reads what a user would: ``GET /v1/routing`` (the weights move to
the challenger), the decision log (each exposure carries the share its arm
had when it was routed), and ``rampart analyze`` (the inverse-propensity
weighted difference finds the challenger better).

Run it alone under ``flock /tmp/rampart-ray.lock``: it starts a Ray of its own.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml

from serving.cli.demo.models import FEATURE_NAMES
from telemetry.decision_log import read_decisions
from tests.gateway_processes import RAMPART, serve_gateway
from tests.ports import free_port

pytestmark = pytest.mark.integration

EXPERIMENT = "bandit-live"
MODEL = "rampart-demo-classifier"
CONVERSION = {"control": 0.10, "challenger": 0.70}
UNITS_PER_ROUND = 120
INGEST_TOKEN = "bandit-ingest-token"


def _config(tmp: Path, tracking_uri: str, contextual: bool = False) -> tuple[Path, str]:
    port = free_port()
    data = {
        "tracking_uri": tracking_uri,
        "data_dir": str(tmp),
        "models": [{"name": MODEL, "versions": ["champion", "tree"]}],
        "default": {"model": MODEL, "version": "champion"},
        "experiments": [{
            "id": EXPERIMENT, "salt": "bandit-live-salt",
            "arms": [{"name": "control", "model": MODEL, "version": "champion",
                      "weight_bp": 5000},
                     {"name": "challenger", "model": MODEL, "version": "tree",
                      "weight_bp": 5000}],
            "bandit": {"policy": {"policy": "thompson_beta"}, "floor_bp": 500,
                       "reward": {"metric": "conversion", "type": "binary", "window_s": 1.0},
                       "interval_s": 2.0, "seed": 7,
                       **({"contextual": {"policy": "linucb", "attributes": ["tenure"],
                                          "alpha": 0.2}} if contextual else {})},
        }],
        "decision_log": {"path": str(tmp / "decisions"), "flush_interval_s": 0.2},
        "outcomes_log": {"path": str(tmp / "outcomes"), "flush_interval_s": 0.2},
        "telemetry": {"metrics_dir": str(tmp / "metrics")},
        "server": {"host": "127.0.0.1", "port": port, "num_replicas": 1},
    }
    (tmp / "rampart.yaml").write_text(yaml.safe_dump(data))
    return tmp / "rampart.yaml", f"http://127.0.0.1:{port}"


def _weights(client: httpx.Client) -> dict[str, int]:
    table = client.get("/v1/routing").json()
    (experiment,) = [e for e in table["experiments"] if e["id"] == EXPERIMENT]
    return {arm["name"]: arm["weight_bp"] for arm in experiment["arms"]}


def _round(client: httpx.Client, rng: np.random.Generator, first_unit: int,
           contextual: bool = False) -> list[bool]:
    """Serve UNITS_PER_ROUND new units; a unit that converts (at its arm's rate)
    is posted at once, well inside its 1 s attribution window. With
    ``contextual``, each request carries a tenure of -1 or 1, and the
    challenger converts better on long tenure, the control on short; returns,
    per unit, whether it got the arm that is better for it."""
    right = []
    for unit in range(first_unit, first_unit + UNITS_PER_ROUND):
        features = {name: float(v) for name, v in
                    zip(FEATURE_NAMES, rng.normal(size=len(FEATURE_NAMES)), strict=True)}
        tenure = float(rng.choice([-1.0, 1.0]))
        answer = client.post("/v1/predict", json={
            "unit_id": f"user-{unit}", "features": features,
            **({"context": {"tenure": tenure}} if contextual else {})})
        assert answer.status_code == 200, answer.text
        arm = answer.json()["arm"]
        better = "challenger" if tenure > 0 or not contextual else "control"
        right.append(arm == better)
        # the better arm for this unit converts at the challenger's planted rate
        rate = CONVERSION["challenger"] if arm == better else CONVERSION["control"]
        if rng.random() < rate:
            posted = client.post("/v1/outcomes", headers={
                "Authorization": f"Bearer {INGEST_TOKEN}"}, json={
                "unit_id": f"user-{unit}", "metric": "conversion", "value": 1.0})
            assert posted.status_code == 202, posted.text
    return right


def test_a_bandit_moves_traffic_to_the_better_version_and_logs_propensities(
        mlflow_store: dict[str, Any], tmp_path: Path) -> None:
    config, url = _config(tmp_path, str(mlflow_store["uri"]))
    rng = np.random.default_rng(16)
    history: list[dict[str, int]] = []
    unit = 0
    with serve_gateway(config, url, env={"RAMPART_INGEST_TOKEN": INGEST_TOKEN}) as serve, \
            httpx.Client(base_url=url, timeout=30) as client:
        history.append(_weights(client))
        assert history[0] == {"control": 5000, "challenger": 5000}
        # The controller updates every 2 s on the exposures whose 1 s window
        # closed; a few rounds of traffic give it evidence to act on.
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            _round(client, rng, unit)
            unit += UNITS_PER_ROUND
            time.sleep(1.0)
            history.append(_weights(client))
            if history[-1]["challenger"] >= 9000 and unit >= 6 * UNITS_PER_ROUND:
                break
    assert serve.process.returncode == 0, serve.output[-3000:]
    final = history[-1]
    assert final["challenger"] >= 9000, history
    # the control keeps its floor: it still produces data
    assert final["control"] >= 500 and sum(final.values()) == 10_000

    rows = [r for r in read_decisions(tmp_path / "decisions").to_pylist()
            if r["experiment_id"] == EXPERIMENT and r["role"] == "primary"]
    assert len(rows) == unit
    for row in rows:
        assert row["propensity"] is not None and 0 < row["propensity"] <= 1
    # Each exposure carries its arm's share when it was routed: the even start,
    # then the challenger's growing share and the control's floor.
    challenger = [r["propensity"] for r in rows if r["arm"] == "challenger"]
    control = [r["propensity"] for r in rows if r["arm"] == "control"]
    assert min(challenger) == pytest.approx(0.5) and max(control) == pytest.approx(0.5)
    assert max(challenger) >= 0.9 and min(control) >= 0.05 - 1e-9

    analysis = subprocess.run(
        [str(RAMPART), "analyze", "--config", str(config), "--experiment", EXPERIMENT,
         "--json"], cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False)
    assert analysis.returncode == 0, analysis.stderr
    body = json.loads(analysis.stdout)
    assert body["design"] == "bandit" and body["units"] == unit
    ipw = next(c for c in body["comparisons"]
               if c["arm"] == "challenger" and c["estimator"] == "ipw")
    assert ipw["ci_low"] <= CONVERSION["challenger"] - CONVERSION["control"] <= ipw["ci_high"]
    assert ipw["p_value"] < 0.001


def test_a_contextual_bandit_learns_which_version_suits_which_request(
        mlflow_store: dict[str, Any], tmp_path: Path) -> None:
    config, url = _config(tmp_path, str(mlflow_store["uri"]), contextual=True)
    rng = np.random.default_rng(17)
    rounds: list[float] = []
    unit = 0
    with serve_gateway(config, url, env={"RAMPART_INGEST_TOKEN": INGEST_TOKEN}) as serve, \
            httpx.Client(base_url=url, timeout=30) as client:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            right = _round(client, rng, unit, contextual=True)
            unit += UNITS_PER_ROUND
            rounds.append(sum(right) / len(right))
            time.sleep(1.0)
            if len(rounds) >= 8 and min(rounds[-2:]) >= 0.8:
                break
        described = next(e for e in client.get("/v1/routing").json()["experiments"]
                         if e["id"] == EXPERIMENT)["contextual"]
    assert serve.process.returncode == 0, serve.output[-3000:]
    # Before any reward LinUCB's tie goes to the control (95%, the floor the
    # rest): right for half the units. Fitted, it sends each to its better arm.
    assert rounds[0] == pytest.approx(0.5, abs=0.15), rounds
    assert min(rounds[-2:]) >= 0.8, rounds
    assert described["attributes"] == ["tenure"] and sum(described["rewards_seen"].values()) > 0
    rows = [r for r in read_decisions(tmp_path / "decisions").to_pylist()
            if r["experiment_id"] == EXPERIMENT and r["role"] == "primary"]
    assert len(rows) == unit
    # each request logs its context and the probability of the arm it got
    assert {dict(r["context"])["tenure"] for r in rows} == {"-1.0", "1.0"}
    assert {round(r["propensity"], 6) for r in rows} <= {0.05, 0.95}
