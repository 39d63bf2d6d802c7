"""Cluster benchmark: the gateway with replicas on two Ray nodes against one node.

Starts a real two-node Ray cluster on this machine (tests/ray_cluster.py: two
raylets of one CPU each), deploys Rampart with ``rampart serve --address ...
--detach`` twice (one replica on one node; then one replica on each node,
placement read from Ray's state API), drives each with the same wrk client
(8 connections), and then times routing changes until every replica on both
nodes serves them (the controller's own figure, ``GET /v1/admin/routing``),
idle and under traffic. Prints one JSON line per phase and the ratios.

On this two-core machine both nodes share the same two cores, so two nodes
cannot be faster than one: the point is that the cluster works and what it
costs, not speed.

    .venv/bin/python tests/benchmarks/cluster.py [--duration 10] [--changes 10]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import yaml  # noqa: E402

TOKEN = "cluster-benchmark-token"


def _phase_config(work: Path, uri: str, port: int, **server: Any) -> Path:
    data = yaml.safe_load((Path(_ROOT) / "deploy" / "rampart.yaml").read_text())
    data.update(tracking_uri=uri, data_dir=str(work / "data"),
                rollout_store_url=f"sqlite:///{work / 'rollouts.db'}")
    data["decision_log"] = {"path": str(work / "decisions")}
    data["telemetry"] = {"metrics_dir": str(work / "metrics")}
    data["server"] = {"host": "127.0.0.1", "port": port, **server}
    path = work / f"rampart-{port}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _wait_healthy(url: str, timeout_s: float = 180) -> None:
    from serving.cli.launch import wait_healthy

    wait_healthy(url, timeout_s)


def _propagation(admin: Any, model: str, version: str, count: int) -> list[dict[str, Any]]:
    figures = []
    for i in range(count):
        body = {"model": model, "version": version, "enabled": i % 2 == 0}
        routing_version = admin.call("POST", "/v1/admin/shadows", body)["routing_version"]
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            found = [f for f in admin.call("GET", "/v1/admin/routing")["propagation"]
                     if f["version"] == routing_version and f["propagation_ms"] is not None]
            if found:
                figures.append(dict(found[0]))
                break
            time.sleep(0.25)
        else:
            raise TimeoutError(f"routing version {routing_version} did not reach every replica")
        time.sleep(0.1)
    return figures


def _summary(figures: list[dict[str, Any]]) -> dict[str, Any]:
    ms = sorted(f["propagation_ms"] for f in figures)
    return {"changes": len(ms), "replicas": figures[0]["replicas"],
            "every_replica_every_time": all(f["serving"] == f["replicas"] for f in figures),
            "median_ms": round(statistics.median(ms), 2), "max_ms": round(ms[-1], 2)}


def main() -> int:
    from serving.cli.demo.models import DEMO_MODEL_NAME, seed_demo_models
    from serving.cli.demo.scenarios import AdminClient, BackgroundTraffic
    from tests.benchmarks.peers import PeerSpec, serving_benchmark
    from tests.ports import free_port
    from tests.ray_cluster import LocalRayCluster

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds of wrk per phase")
    parser.add_argument("--changes", type=int, default=10, help="routing changes per phase")
    args = parser.parse_args()
    bench = serving_benchmark()
    print(json.dumps({"cpus": os.cpu_count(), "openblas_env_set": sorted(
        k for k in os.environ if k.startswith("OPENBLAS_"))}), flush=True)

    with tempfile.TemporaryDirectory(prefix="rampart-cluster-bench-") as tmp:
        work = Path(tmp)
        uri = f"sqlite:///{work / 'mlflow.db'}"
        seeded = seed_demo_models(uri, work / "artifacts")
        cluster = LocalRayCluster().start()
        results: dict[str, dict[str, Any]] = {}
        try:
            for phase, server in (("one_node", {"num_replicas": 1}),
                                  ("two_nodes", {"num_replicas": 2,
                                                 "max_replicas_per_node": 1})):
                port = free_port()
                config = _phase_config(work, uri, port, **server)
                done = cluster.rampart("serve", "--config", str(config), "--detach",
                                       env={"RAMPART_ADMIN_TOKEN": TOKEN})
                if done.returncode != 0:
                    raise RuntimeError(done.stdout + done.stderr)
                url = f"http://127.0.0.1:{port}"
                try:
                    _wait_healthy(url)
                    nodes = cluster.replica_nodes()
                    spec = PeerSpec(name=f"rampart-{phase}", port=port, path="/v1/predict",
                                    lua_mode="predict", argv=(), env={})
                    bench.run_wrk(spec, 8, 2, 2)  # warm-up
                    line: dict[str, Any] = {"phase": phase, "replicas": len(nodes),
                                            "nodes": len(set(nodes)),
                                            **bench.run_wrk(spec, 8, 2, args.duration)}
                    if phase == "two_nodes":
                        admin = AdminClient(url, TOKEN)
                        version = seeded.versions["candidate"]
                        _propagation(admin, DEMO_MODEL_NAME, version, 2)  # loads the version
                        line["propagation_idle"] = _summary(
                            _propagation(admin, DEMO_MODEL_NAME, version, args.changes))
                        traffic = BackgroundTraffic(url, concurrency=4).start()
                        try:
                            time.sleep(1)
                            line["propagation_under_traffic"] = _summary(
                                _propagation(admin, DEMO_MODEL_NAME, version, args.changes))
                        finally:
                            traffic.stop()
                    results[phase] = line
                    print(json.dumps(line), flush=True)
                finally:
                    cluster.rampart("stop")
        finally:
            cluster.stop()
    one, two = results["one_node"], results["two_nodes"]
    print(json.dumps({
        "two_nodes_over_one_node_rps": round(two["req_per_s"] / one["req_per_s"], 3),
        "two_nodes_over_one_node_p99": round(two["p99_ms"] / one["p99_ms"], 3),
        "note": "both nodes share this machine's cores: correctness, not speed",
    }), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
