"""Adaptive designs on one running ``rampart serve`` (local Ray Serve, the demo
classifier's registered versions ``champion`` and ``tree``):

- a bandit: the controller actor settles the rewards posted to
  ``POST /v1/outcomes``, moves the arms' bucket ranges, and every replica
  routes by them; each exposure logs its arm's share, and ``rampart analyze``
  weighs by it;
- a contextual bandit (requests that carry a ``tenure``): the controller fits
  each arm on its exposures' logged contexts and publishes the models, and
  requests go to the arm that suits them;
- ``POST /v1/rank``: the two versions interleaved as rankers; the answer is
  rebuilt from the decision log (each ranker's logged scores give its ranking,
  ``interleave`` over the two with the request id gives the list answered),
  and ``/v1/predict`` answers the same scores on the same rows.

One gateway serves all three (a start costs ~40 s). Run the module under
``flock /tmp/rampart-ray.lock``: it starts a Ray of its own.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml

from serving.cli.demo.models import FEATURE_NAMES
from serving.routing.interleaving import interleave
from telemetry.decision_log import read_decisions
from tests.gateway_processes import RAMPART, serve_gateway
from tests.ports import free_port

pytestmark = pytest.mark.integration

BANDIT = "bandit-live"
CONTEXTUAL = "bandit-context"
RANKING = "demo-rank"
RANK_CHECK = "rank-check"
MODEL = "rampart-demo-classifier"
CONVERSION = {"control": 0.10, "challenger": 0.70}
UNITS_PER_ROUND = 120
ITEMS = 12
INGEST_TOKEN = "bandit-ingest-token"
ADMIN_TOKEN = "bandit-admin-token"


def _bandit(experiment_id: str, **extra: Any) -> dict[str, Any]:
    return {
        "id": experiment_id, "salt": f"{experiment_id}-salt",
        "arms": [{"name": "control", "model": MODEL, "version": "champion", "weight_bp": 5000},
                 {"name": "challenger", "model": MODEL, "version": "tree", "weight_bp": 5000}],
        "bandit": {"policy": {"policy": "thompson_beta"}, "floor_bp": 500,
                   "reward": {"metric": "conversion", "type": "binary", "window_s": 1.0},
                   "interval_s": 2.0, "seed": 7, **extra},
    }


@dataclass(frozen=True)
class Gateway:
    url: str
    config: Path
    data: Path


@pytest.fixture(scope="module")
def gateway(mlflow_store: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("adaptive")
    port = free_port()
    contextual = _bandit(CONTEXTUAL, contextual={"policy": "linucb", "attributes": ["tenure"],
                                                 "alpha": 0.2})
    # requests with a tenure go to the contextual bandit, the others to the plain one
    contextual["targeting"] = [{"attribute": "tenure", "op": "present"}]
    # The rank test's own /v1/predict calls, in any test order, must not become
    # either bandit's exposures: an exposure without a conversion is a reward
    # of 0, and the bandit test starts from the even split.
    rank_check = {"id": RANK_CHECK, "salt": f"{RANK_CHECK}-salt",
                  "targeting": [{"attribute": "probe", "op": "present"}],
                  "arms": [{"name": "a", "model": MODEL, "version": "champion",
                            "weight_bp": 5000},
                           {"name": "b", "model": MODEL, "version": "tree", "weight_bp": 5000}]}
    data = {
        "tracking_uri": str(mlflow_store["uri"]),
        "data_dir": str(tmp),
        "models": [{"name": MODEL, "versions": ["champion", "tree"]}],
        "default": {"model": MODEL, "version": "champion"},
        "experiments": [rank_check, contextual, _bandit(BANDIT)],
        "interleaving": [{"id": RANKING, "unit": "session_id",
                          "a": {"model": MODEL, "version": "champion"},
                          "b": {"model": MODEL, "version": "tree"},
                          "max_items": 50}],
        "decision_log": {"path": str(tmp / "decisions"), "flush_interval_s": 0.2},
        "outcomes_log": {"path": str(tmp / "outcomes"), "flush_interval_s": 0.2},
        "telemetry": {"metrics_dir": str(tmp / "metrics")},
        "server": {"host": "127.0.0.1", "port": port, "num_replicas": 1},
    }
    config = tmp / "rampart.yaml"
    config.write_text(yaml.safe_dump(data))
    url = f"http://127.0.0.1:{port}"
    with serve_gateway(config, url, env={"RAMPART_INGEST_TOKEN": INGEST_TOKEN,
                                         "RAMPART_ADMIN_TOKEN": ADMIN_TOKEN}) as serve:
        yield Gateway(url, config, tmp)
    assert serve.process.returncode == 0, serve.output[-3000:]


def _weights(client: httpx.Client) -> dict[str, int]:
    table = client.get("/v1/routing").json()
    (experiment,) = [e for e in table["experiments"] if e["id"] == BANDIT]
    return {arm["name"]: arm["weight_bp"] for arm in experiment["arms"]}


def _features(rng: np.random.Generator) -> dict[str, float]:
    return {name: float(v) for name, v in
            zip(FEATURE_NAMES, rng.normal(size=len(FEATURE_NAMES)), strict=True)}


def _round(client: httpx.Client, rng: np.random.Generator, prefix: str, first_unit: int,
           contextual: bool = False) -> list[bool]:
    """Serve UNITS_PER_ROUND new units; a unit that converts is posted at once,
    well inside its 1 s attribution window. The challenger is the better arm,
    except with ``contextual``: each request then carries a tenure of -1 or 1,
    and the challenger is better on long tenure, the control on short. The
    better arm converts at 70%, the other at 10%. Returns, per unit, whether
    it got the arm that is better for it."""
    right = []
    for unit in range(first_unit, first_unit + UNITS_PER_ROUND):
        tenure = float(rng.choice([-1.0, 1.0]))
        answer = client.post("/v1/predict", json={
            "unit_id": f"{prefix}-{unit}", "features": _features(rng),
            **({"context": {"tenure": tenure}} if contextual else {})})
        assert answer.status_code == 200, answer.text
        arm = answer.json()["arm"]
        better = "challenger" if tenure > 0 or not contextual else "control"
        right.append(arm == better)
        rate = CONVERSION["challenger"] if arm == better else CONVERSION["control"]
        if rng.random() < rate:
            posted = client.post("/v1/outcomes", headers={
                "Authorization": f"Bearer {INGEST_TOKEN}"}, json={
                "unit_id": f"{prefix}-{unit}", "metric": "conversion", "value": 1.0})
            assert posted.status_code == 202, posted.text
    return right


def _rows(gateway: Gateway, experiment_id: str) -> list[dict[str, Any]]:
    return [r for r in read_decisions(gateway.data / "decisions").to_pylist()
            if r["experiment_id"] == experiment_id and r["role"] == "primary"]


def test_a_bandit_moves_traffic_to_the_better_version_and_logs_propensities(
        gateway: Gateway) -> None:
    rng = np.random.default_rng(16)
    history: list[dict[str, int]] = []
    unit = 0
    with httpx.Client(base_url=gateway.url, timeout=30) as client:
        history.append(_weights(client))
        assert history[0] == {"control": 5000, "challenger": 5000}
        # The controller updates every 2 s on the exposures whose 1 s window
        # closed; a few rounds of traffic give it evidence to act on.
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            _round(client, rng, "user", unit)
            unit += UNITS_PER_ROUND
            time.sleep(1.0)
            history.append(_weights(client))
            if history[-1]["challenger"] >= 9000 and unit >= 6 * UNITS_PER_ROUND:
                break
    final = history[-1]
    assert final["challenger"] >= 9000, history
    # the control keeps its floor: it still produces data
    assert final["control"] >= 500 and sum(final.values()) == 10_000

    time.sleep(2.0)  # the last windows close and the logs flush
    rows = _rows(gateway, BANDIT)
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
        [str(RAMPART), "analyze", "--config", str(gateway.config), "--experiment", BANDIT,
         "--json"], cwd=gateway.data, capture_output=True, text=True, timeout=120, check=False)
    assert analysis.returncode == 0, analysis.stderr
    body = json.loads(analysis.stdout)
    assert body["design"] == "bandit" and body["units"] == unit
    ipw = next(c for c in body["comparisons"]
               if c["arm"] == "challenger" and c["estimator"] == "ipw")
    assert ipw["ci_low"] <= CONVERSION["challenger"] - CONVERSION["control"] <= ipw["ci_high"]
    assert ipw["p_value"] < 0.001

    # The controller's own account: weights in force, posteriors, the audit trail.
    def bandit_status(experiment_id: str, *flags: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(RAMPART), "bandit", "status", experiment_id, "--json", "--url", gateway.url,
             "--token", ADMIN_TOKEN, *flags], capture_output=True, text=True, timeout=60,
            check=False)

    status = bandit_status(BANDIT)
    assert status.returncode == 0, status.stderr
    report = json.loads(status.stdout)
    arms = {a["arm"]: a for a in report["arms"]}
    assert report["updates"] >= 1 and arms["challenger"]["weight_bp"] >= 9000
    assert arms["challenger"]["mean"] > arms["control"]["mean"]
    assert sum(a["rewards_seen"] for a in arms.values()) > 0
    last = report["audit"][-1]
    assert last["weights_after"] == [arms["control"]["weight_bp"],
                                     arms["challenger"]["weight_bp"]]
    # a page of the trail: the last record only, the same one
    (only,) = json.loads(bandit_status(BANDIT, "--audit", "1").stdout)["audit"]
    assert only["weights_after"] == last["weights_after"] or only["at"] > last["at"]
    too_many = bandit_status(BANDIT, "--audit", "5000")
    assert too_many.returncode == 2 and "422" in too_many.stderr
    missing = bandit_status("no-such-bandit")
    assert missing.returncode == 2 and "404" in missing.stderr
    assert missing.stderr.count("\n") == 1 and "Traceback" not in missing.stderr


def test_a_contextual_bandit_learns_which_version_suits_which_request(
        gateway: Gateway) -> None:
    rng = np.random.default_rng(17)
    rounds: list[float] = []
    unit = 0
    with httpx.Client(base_url=gateway.url, timeout=30) as client:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            right = _round(client, rng, "ctx-user", unit, contextual=True)
            unit += UNITS_PER_ROUND
            rounds.append(sum(right) / len(right))
            time.sleep(1.0)
            if len(rounds) >= 8 and min(rounds[-2:]) >= 0.8:
                break
        described = next(e for e in client.get("/v1/routing").json()["experiments"]
                         if e["id"] == CONTEXTUAL)["contextual"]
    # Before any reward LinUCB's tie goes to the control (95%, the floor the
    # rest): right for half the units. Fitted, it sends each to its better arm.
    assert rounds[0] == pytest.approx(0.5, abs=0.15), rounds
    assert min(rounds[-2:]) >= 0.8, rounds
    assert described["attributes"] == ["tenure"] and sum(described["rewards_seen"].values()) > 0
    time.sleep(1.0)  # the logs flush
    rows = _rows(gateway, CONTEXTUAL)
    assert len(rows) == unit
    # each request logs its context and the probability of the arm it got
    assert {dict(r["context"])["tenure"] for r in rows} == {"-1.0", "1.0"}
    assert {round(r["propensity"], 6) for r in rows} <= {0.05, 0.95}


def _items() -> list[dict[str, Any]]:
    rng = np.random.default_rng(16)
    values = rng.normal(size=(ITEMS, len(FEATURE_NAMES)))
    return [{"item_id": f"doc-{i}",
             "features": {name: float(v) for name, v in zip(FEATURE_NAMES, row, strict=True)}}
            for i, row in enumerate(values)]


def test_rank_serves_an_interleaved_list_of_two_registered_versions(gateway: Gateway) -> None:
    items = _items()
    with httpx.Client(base_url=gateway.url, timeout=30) as client:
        answer = client.post("/v1/rank", json={"unit_id": "session-1",
                                               "request_id": "rank-1", "items": items})
        refused = client.post("/v1/rank", json={"unit_id": "session-1",
                                                "items": [items[0], items[0]]})
        predicted = [client.post("/v1/predict", json={
            "unit_id": f"session-{i}", "request_id": f"p-{i}", "context": {"probe": "rank"},
            "features": item["features"]}).json() for i, item in enumerate(items)]
        metrics = client.get("/metrics").text
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert (body["request_id"], body["experiment"], body["method"]) == (
        "rank-1", RANKING, "team_draft")
    assert sorted(p["item_id"] for p in body["ranking"]) == sorted(i["item_id"] for i in items)
    assert refused.status_code == 422
    assert refused.json()["error"]["code"] == "validation_failed"
    assert f'experiment_id="{RANKING}"' in metrics

    time.sleep(1.0)  # the log flushes
    rows = read_decisions(gateway.data / "decisions").to_pylist()
    ranked = [r for r in rows if r["role"] == "ranker" and r["request_id"] == "rank-1"]
    assert len(ranked) == 2 * ITEMS
    versions = {r["arm"]: r["model_version"] for r in ranked}
    assert set(versions) == {"a", "b"} and versions["a"] != versions["b"]
    rankings = {}
    for team in ("a", "b"):
        mine = sorted((r for r in ranked if r["arm"] == team), key=lambda r: r["item_rank"])
        assert [r["item_rank"] for r in mine] == list(range(1, ITEMS + 1))
        scores = [r["prediction"] for r in mine]
        assert scores == sorted(scores, reverse=True)
        rankings[team] = tuple(r["item_id"] for r in mine)
    # The two registered versions rank these items differently.
    assert rankings["a"] != rankings["b"]
    merged = interleave("team_draft", rankings["a"], rankings["b"], key="rank-1")
    assert [(p["item_id"], p["ranker"]) for p in body["ranking"]] == list(
        zip(merged.items, merged.teams, strict=True))
    # /v1/predict (routed by an A/B split to either version) answers the score
    # the ranker of that version logged for the same row: the same scorer path.
    score = {versions[r["arm"]]: {} for r in ranked}
    for r in ranked:
        score[versions[r["arm"]]][r["item_id"]] = r["prediction"]
    assert {p["experiment_id"] for p in predicted} == {RANK_CHECK}
    for item, p in zip(items, predicted, strict=True):
        assert score[p["model_version"]][item["item_id"]] == pytest.approx(
            p["prediction"], rel=1e-9)
