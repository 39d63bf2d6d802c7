"""``POST /v1/rank`` on a running ``rampart serve``: two MLflow-registered
versions (the demo's logistic ``champion`` and gradient-boosted ``tree``)
interleaved by one replica on local Ray Serve.

The answer is checked against the decision log the gateway wrote: each
ranker's scores there rebuild its ranking, and ``interleave`` over the two
rankings with the request id gives the very list answered. Ranker A's scores
are also the ones ``/v1/predict`` answers for the same rows (the default route
is the same version), so the ranker rows went through the same scorer path.

Run it alone under ``flock /tmp/rampart-ray.lock``: it starts a Ray of its own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml

from serving.cli.demo.models import FEATURE_NAMES
from serving.routing.interleaving import interleave
from telemetry.decision_log import read_decisions
from tests.gateway_processes import serve_gateway
from tests.ports import free_port

pytestmark = pytest.mark.integration

EXPERIMENT = "demo-rank"
MODEL = "rampart-demo-classifier"
ITEMS = 12


def _config(tmp: Path, tracking_uri: str) -> tuple[Path, str]:
    port = free_port()
    data = {
        "tracking_uri": tracking_uri,
        "data_dir": str(tmp),
        "models": [{"name": MODEL, "versions": ["champion", "tree"]}],
        "default": {"model": MODEL, "version": "champion"},
        "interleaving": [{"id": EXPERIMENT, "unit": "session_id",
                          "a": {"model": MODEL, "version": "champion"},
                          "b": {"model": MODEL, "version": "tree"},
                          "max_items": 50}],
        "decision_log": {"path": str(tmp / "decisions"), "flush_interval_s": 0.5},
        "telemetry": {"metrics_dir": str(tmp / "metrics")},
        "server": {"host": "127.0.0.1", "port": port, "num_replicas": 1},
    }
    (tmp / "rampart.yaml").write_text(yaml.safe_dump(data))
    return tmp / "rampart.yaml", f"http://127.0.0.1:{port}"


def _items() -> list[dict[str, Any]]:
    rng = np.random.default_rng(16)
    values = rng.normal(size=(ITEMS, len(FEATURE_NAMES)))
    return [{"item_id": f"doc-{i}",
             "features": {name: float(v) for name, v in zip(FEATURE_NAMES, row, strict=True)}}
            for i, row in enumerate(values)]


def test_rank_serves_an_interleaved_list_of_two_registered_versions(
        mlflow_store: dict[str, Any], tmp_path: Path) -> None:
    config, url = _config(tmp_path, str(mlflow_store["uri"]))
    items = _items()
    with serve_gateway(config, url) as serve, \
            httpx.Client(base_url=url, timeout=30) as client:
        answer = client.post("/v1/rank", json={"unit_id": "session-1",
                                               "request_id": "rank-1", "items": items})
        refused = client.post("/v1/rank", json={"unit_id": "session-1",
                                                "items": [items[0], items[0]]})
        predicted = [client.post("/v1/predict", json={
            "unit_id": "session-1", "request_id": f"p-{i}",
            "features": item["features"]}).json() for i, item in enumerate(items)]
        metrics = client.get("/metrics").text
    assert serve.process.returncode == 0, serve.output[-3000:]
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert (body["request_id"], body["experiment"], body["method"]) == (
        "rank-1", EXPERIMENT, "team_draft")
    assert sorted(p["item_id"] for p in body["ranking"]) == sorted(i["item_id"] for i in items)
    assert refused.status_code == 422
    assert refused.json()["error"]["code"] == "validation_failed"
    assert f'experiment_id="{EXPERIMENT}"' in metrics

    rows = read_decisions(tmp_path / "decisions").to_pylist()
    ranked = [r for r in rows if r["role"] == "ranker"]
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
    # Ranker A is the version /v1/predict serves by default: the same scores.
    assert {p["model_version"] for p in predicted} == {versions["a"]}
    score_a = {r["item_id"]: r["prediction"] for r in ranked if r["arm"] == "a"}
    for item, p in zip(items, predicted, strict=True):
        assert score_a[item["item_id"]] == pytest.approx(p["prediction"], rel=1e-9)
