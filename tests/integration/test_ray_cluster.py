"""Rampart on a real two-node Ray cluster (two raylets on this machine).

The cluster (tests/ray_cluster.py) is started once for the module. Each test
deploys the gateway with ``rampart serve --address ... --detach`` (the CLI,
as an operator would), uses it, and removes it with ``rampart stop``; state
lives in a real PostgreSQL, logs in a real S3-compatible server (moto),
rollout metrics come from a real Prometheus scraping every replica through
the controller's scrape-target file.

Everything Ray is reached through subprocesses: this test process may hold
the suite's own local Ray session, and a driver joins one cluster at a time.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import mlflow
import pytest
import yaml

from serving.cli.demo.models import DEMO_MODEL_NAME, seed_demo_models
from serving.cli.demo.scenarios import AdminClient, BackgroundTraffic
from tests.object_store import ObjectStore, applied
from tests.ports import free_port
from tests.ray_cluster import RAMPART, LocalRayCluster

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
TOKEN = "cluster-test-token"
INGEST_TOKEN = "cluster-ingest-token"


@pytest.fixture(scope="module")
def cluster(s3_server: ObjectStore) -> Iterator[LocalRayCluster]:
    # The replicas write the logs: S3's endpoint and credentials are the
    # nodes' environment, as a pod's would be.
    running = LocalRayCluster(extra_env=dict(s3_server.env)).start()
    try:
        yield running
    finally:
        running.stop()


def wait_for(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def start_prometheus(tmp_path: Path, targets_file: Path) -> tuple[subprocess.Popen[bytes], str]:
    """A real Prometheus scraping every replica the controller lists."""
    port = free_port()
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [{
            "job_name": "rampart-gateway",
            "file_sd_configs": [{"files": [str(targets_file)], "refresh_interval": "1s"}],
        }],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    process = subprocess.Popen(
        ["prometheus", f"--config.file={tmp_path / 'prometheus.yml'}",
         f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    wait_for(lambda: _ok(f"{url}/-/ready"), 60, "Prometheus to be ready")
    return process, url


def _ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _up_targets(prometheus: str) -> int:
    try:
        result = httpx.get(f"{prometheus}/api/v1/query", params={"query": "up == 1"},
                           timeout=5).json()["data"]["result"]
    except (httpx.HTTPError, KeyError, ValueError):
        return 0
    return len(result)


@pytest.fixture
def gateway_config(mlflow_store: dict[str, Any], s3_server: ObjectStore, postgres_url: str,
                   tmp_path: Path) -> Iterator[Callable[..., tuple[Path, str, str]]]:
    """Write a config for the cluster: PostgreSQL state, S3 logs; returns
    (config file, gateway URL, S3 prefix of the logs)."""
    uri = str(mlflow_store["uri"])
    artifacts = Path(mlflow_store["root"]) / "artifacts"
    seed_demo_models(uri, artifacts)

    def write(**server: Any) -> tuple[Path, str, str]:
        bucket = s3_server.bucket("cluster")
        data = yaml.safe_load((DEPLOY / "rampart.yaml").read_text())
        data.update(tracking_uri=uri, data_dir=str(tmp_path / "data"),
                    rollout_store_url=postgres_url)
        data["decision_log"] = {"path": f"s3://{bucket}/decisions", "flush_interval_s": 0.5}
        data["outcomes_log"] = {"path": f"s3://{bucket}/outcomes", "flush_interval_s": 0.5}
        data["telemetry"] = {"metrics_dir": str(tmp_path / "metrics")}
        port = free_port()
        data["server"] = {"host": "127.0.0.1", "port": port, **server}
        path = tmp_path / "rampart.yaml"
        path.write_text(yaml.safe_dump(data))
        return path, f"http://127.0.0.1:{port}", f"s3://{bucket}"

    yield write
    seed_demo_models(uri, artifacts)  # rollouts move aliases: back as seeded


def serve_detached(cluster: LocalRayCluster, config: Path) -> None:
    done = cluster.rampart("serve", "--config", str(config), "--address", cluster.address,
                           "--detach", env={"RAMPART_ADMIN_TOKEN": TOKEN,
                                            "RAMPART_INGEST_TOKEN": INGEST_TOKEN})
    assert done.returncode == 0, done.stdout + done.stderr
    assert "detached" in done.stdout


def stop_gateway(cluster: LocalRayCluster) -> None:
    done = cluster.rampart("stop", "--address", cluster.address)
    assert done.returncode == 0, done.stdout + done.stderr


def decision_rows(prefix: str, s3_server: ObjectStore, monkeypatch: pytest.MonkeyPatch) -> int:
    from telemetry.decision_log import read_decisions

    for key, value in s3_server.env.items():
        monkeypatch.setenv(key, value)
    table = read_decisions(f"{prefix}/decisions")
    return sum(1 for role in table["role"].to_pylist() if role == "primary")


def rollout_phase(admin: AdminClient) -> str | None:
    try:
        phase: str = admin.call("GET", "/v1/admin/rollouts/ro-cluster")["phase"]
    except RuntimeError as exc:
        assert "503" in str(exc), exc
        return None
    return phase


def exposed_units(prefix: str, experiment: str) -> int:
    from telemetry.decision_log import read_decisions

    table = read_decisions(f"{prefix}/decisions")
    return len({unit for unit, exp, role in zip(
        table["unit_id"].to_pylist(), table["experiment_id"].to_pylist(),
        table["role"].to_pylist(), strict=True) if exp == experiment and role == "primary"})


def _outcome_rows(prefix: str) -> int:
    from telemetry.outcomes_log import read_outcomes
    from telemetry.storage import LogStorageError

    try:
        return int(read_outcomes(f"{prefix}/outcomes").num_rows)
    except LogStorageError:
        return 0


def test_a_rollout_on_two_nodes_promotes_logs_every_answer_and_survives_a_lost_node(
    cluster: LocalRayCluster, gateway_config: Callable[..., tuple[Path, str, str]],
    s3_server: ObjectStore, mlflow_store: dict[str, Any], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config, url, prefix = gateway_config(num_replicas=2, max_replicas_per_node=1)
    serve_detached(cluster, config)
    prometheus: subprocess.Popen[bytes] | None = None
    traffic: BackgroundTraffic | None = None
    try:
        # The driver has exited; the gateway serves, one replica on each node.
        assert _ok(f"{url}/healthz")
        nodes = cluster.replica_nodes()
        assert len(nodes) == 2 and len(set(nodes)) == 2, nodes
        targets_file = tmp_path / "data" / "prometheus" / "targets.json"
        wait_for(lambda: targets_file.exists() and len(json.loads(targets_file.read_text())) == 2,
                 60, "both replicas in the scrape-target file")
        prometheus, prometheus_url = start_prometheus(tmp_path, targets_file)
        wait_for(lambda: _up_targets(prometheus_url) == 2, 60, "Prometheus scraping 2 replicas")

        traffic = BackgroundTraffic(url, concurrency=4).start()
        admin = AdminClient(url, TOKEN)
        plan = {"id": "ro-cluster", "model_name": DEMO_MODEL_NAME, "baseline_version": "1",
                "candidate_version": "2", "steps": [5, 50, 100], "interval_s": 2.0,
                "min_requests": 20, "failure_limit": 3, "metrics_source": "prometheus",
                "prometheus_url": prometheus_url,
                "guardrails": {"p99_latency_delta_ms": 250, "error_rate_delta": 0.02,
                               "min_check_requests": 5}}
        # The builtin source would read one node's files: refused, saying what to use.
        builtin = {**plan, "id": "ro-builtin", "metrics_source": "builtin"}
        with pytest.raises(RuntimeError, match=r"422.*set the rollout's metrics_source to "
                                               r"prometheus"):
            admin.call("POST", "/v1/admin/rollouts", builtin)
        admin.call("POST", "/v1/admin/rollouts", plan)

        # Mid-rollout, the controller's process dies: Ray restarts the
        # detached actor, which resumes from PostgreSQL.
        wait_for(lambda: admin.call("GET", "/v1/admin/rollouts/ro-cluster")["step_index"] >= 1,
                 120, "the rollout's second step")
        controller_pid = cluster.query("""
            from ray.util.state import list_actors
            [actor] = list_actors(filters=[("class_name", "=", "ControllerActor"),
                                           ("state", "=", "ALIVE")])
            print(json.dumps(actor.pid))
        """)
        os.kill(controller_pid, 9)
        # While Ray restarts it, the admin API answers 503 (control plane unavailable).
        wait_for(lambda: rollout_phase(admin) in ("promoted", "rolled_back", "aborted"), 240,
                 "the rollout to finish")
        status = admin.call("GET", "/v1/admin/rollouts/ro-cluster")
        assert status["phase"] == "promoted", status
        client = mlflow.MlflowClient(str(mlflow_store["uri"]))
        assert str(client.get_model_version_by_alias(DEMO_MODEL_NAME, "champion").version) == "2"
        # Both replicas, one on each node, answered traffic (Prometheus has their counts).
        # max_over_time: a replica's series stays counted after a scrape that
        # marked it stale (its target file entry was being rewritten).
        def replicas_serving() -> int:
            answer = httpx.get(f"{prometheus_url}/api/v1/query", timeout=10, params={
                "query": "count(sum by (replica, node) "
                         "(max_over_time(rampart_requests_total[10m])) > 0)"}).json()
            result = answer["data"]["result"]
            return int(result[0]["value"][1]) if result else 0

        wait_for(lambda: replicas_serving() == 2, 30, "both replicas' counts in Prometheus")

        # Every answered request is one decision row in the object store.
        traffic.stop()
        answered = sum(1 for a in traffic.answers if a.status == 200)
        assert answered > 100
        assert all(a.status == 200 for a in traffic.answers), (
            sorted({a.status for a in traffic.answers}))
        wait_for(lambda: decision_rows(prefix, s3_server, monkeypatch) == answered, 60,
                 f"{answered} decision rows in {prefix}")

        # Outcomes go through the gateway into S3 too; the analysis reads both back.
        events = [{"unit_id": f"user-{i:06d}", "metric": "converted",
                   "value": float(i % 7 == 0)}
                  for i in range(0, 5_000, 5)]
        with httpx.Client(base_url=url, timeout=30) as http:
            assert http.post("/v1/outcomes", json={"events": events}, headers={
                "Authorization": f"Bearer {INGEST_TOKEN}"}).status_code == 202
        wait_for(lambda: _outcome_rows(prefix) == len(events), 60, "the outcome rows")
        analysis = cluster.rampart("analyze", "--config", str(config), "--experiment",
                           "demo-champion-vs-challenger", "--json")
        assert analysis.returncode == 0, analysis.stdout + analysis.stderr
        report = json.loads(analysis.stdout)
        # The latest period only: the promotion changed what the arms serve.
        assert 0 < report["units"] <= exposed_units(prefix, "demo-champion-vs-challenger")
        assert sum(report["srm"]["observed"]) == report["units"]

        # A node is lost: the head's replica goes on serving.
        traffic = BackgroundTraffic(url, concurrency=4).start()
        time.sleep(2)
        lost_at = time.time()
        cluster.kill_node("worker")
        time.sleep(15)
        traffic.stop()
        after = [a for a in traffic.answers if a.at >= lost_at]
        failed = [a for a in after if a.status != 200]
        tail = [a for a in after if a.at >= lost_at + 10]
        print(f"node loss: {len(failed)} failed of {len(after)} requests after the kill")
        assert tail and all(a.status == 200 for a in tail), "the head did not go on serving"
        assert len(failed) <= max(50, len(after) // 10)
    finally:
        if traffic is not None:
            traffic.stop()
        if prometheus is not None:
            prometheus.terminate()
            prometheus.wait(30)
        stop_gateway(cluster)
        # The next test in this module gets two nodes again.
        cluster.restart_worker()
        wait_for(lambda: cluster.query("""
            print(json.dumps(sum(1 for n in ray.nodes() if n["Alive"])))
        """) == 2, 120, "the worker node back in the cluster")
    assert not _ok(f"{url}/healthz")


def replica_count(cluster: LocalRayCluster) -> int:
    """Running replicas of the gateway, as Ray Serve counts them."""
    count: int = cluster.query("""
        from ray import serve
        app = serve.status().applications["rampart"]
        states = app.deployments["RampartGateway"].replica_states
        print(json.dumps(states.get("RUNNING", 0)))
    """)
    return count


def test_autoscaling_adds_a_replica_under_load_and_removes_it_when_idle(
    cluster: LocalRayCluster, gateway_config: Callable[..., tuple[Path, str, str]],
    s3_server: ObjectStore, monkeypatch: pytest.MonkeyPatch,
) -> None:
    config, url, prefix = gateway_config(
        max_replicas_per_node=1,
        autoscaling={"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 2,
                     "upscale_delay_s": 1, "downscale_delay_s": 5, "look_back_period_s": 2})
    serve_detached(cluster, config)
    traffic: BackgroundTraffic | None = None
    answers = []
    try:
        assert replica_count(cluster) == 1
        traffic = BackgroundTraffic(url, concurrency=16).start()
        wait_for(lambda: replica_count(cluster) == 2, 180, "a second replica under load")
        traffic.stop()
        answers += traffic.answers
        nodes = cluster.replica_nodes()
        assert len(set(nodes)) == 2, nodes  # the new replica went to the other node
        # Idle: back to the minimum, the leaving replica flushing its log first.
        wait_for(lambda: replica_count(cluster) == 1, 180, "the idle gateway to scale down")
        traffic = BackgroundTraffic(url, concurrency=2).start()
        time.sleep(3)
        traffic.stop()
        answers += traffic.answers
        assert answers and all(a.status == 200 for a in answers), (
            sorted({a.status for a in answers}))
        wait_for(lambda: decision_rows(prefix, s3_server, monkeypatch) == len(answers), 60,
                 f"{len(answers)} decision rows in {prefix}")
    finally:
        if traffic is not None:
            traffic.stop()
        stop_gateway(cluster)


@pytest.mark.parametrize("command", ["deploy", "run", "rampart-ray-client"])
def test_serve_deploy_serve_run_and_ray_client_deploy_the_same_gateway(
    cluster: LocalRayCluster, gateway_config: Callable[..., tuple[Path, str, str]],
    tmp_path: Path, command: str,
) -> None:
    config, url, _ = gateway_config(num_replicas=1)
    serve_config = yaml.safe_load((DEPLOY / "serve.yaml").read_text())
    port = int(url.rsplit(":", 1)[1])
    serve_config["http_options"] = {"host": "127.0.0.1", "port": port}
    [application] = serve_config["applications"]
    assert application["import_path"] == "serving.app:build"
    application["args"]["config"] = str(config)  # the builder runs in another directory
    path = tmp_path / "serve.yaml"
    path.write_text(yaml.safe_dump(serve_config))
    serve_cli = str(Path(sys.executable).with_name("serve"))
    if command == "deploy":
        argv = [serve_cli, "deploy", str(path), "--address", cluster.dashboard_url]
    elif command == "run":
        argv = [serve_cli, "run", str(path), "--address", cluster.address, "--non-blocking"]
    else:  # the same gateway from `rampart serve` through Ray Client (ray://)
        argv = [str(RAMPART), "serve", "--config", str(config), "--address",
                cluster.client_address, "--detach"]
    try:
        done = subprocess.run(argv, env=cluster.client_env(), cwd=ROOT, capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr
        wait_for(lambda: _ok(f"{url}/healthz"), 180, "the gateway Serve deployed")
        body = {"unit_id": "user-1", "features": {f"f{i}": 0.1 for i in range(8)}}
        answer = httpx.post(f"{url}/v1/predict", json=body, timeout=30)
        assert answer.status_code == 200, answer.text
        assert answer.json()["model_name"] == DEMO_MODEL_NAME
    finally:
        stop_gateway(cluster)
    assert not _ok(f"{url}/healthz")


def test_analyze_engine_ray_on_two_nodes_reads_s3_logs_and_gives_the_local_numbers(
    cluster: LocalRayCluster, s3_server: ObjectStore, tmp_path: Path,
) -> None:
    # `rampart analyze --engine ray` joins the cluster as a driver; its file tasks
    # read the logs from S3 on the cluster's nodes (their environment reaches S3,
    # as a pod's would). The local engine reads the same objects in one process.
    import pyarrow.fs as pafs

    from telemetry.storage import LogLocation
    from tests.unit.test_analysis import AS_OF, experiment_document, write_experiment
    from tests.unit.test_analysis_stats import PLANS, assert_same_numbers

    write_experiment(tmp_path, units=6_000)
    bucket = s3_server.bucket("analysis")
    env = cluster.client_env()
    document = experiment_document(tmp_path, PLANS["cuped_msprt"])
    for log in ("decisions", "outcomes"):
        uri = f"s3://{bucket}/{log}"
        with applied(s3_server.env):
            location = LogLocation.resolve(uri)
            pafs.copy_files(str(tmp_path / log), location.path,
                            source_filesystem=pafs.LocalFileSystem(),
                            destination_filesystem=location.fs)
        document["decision_log" if log == "decisions" else "outcomes_log"]["path"] = uri
    config = tmp_path / "rampart.yaml"
    config.write_text(yaml.safe_dump(document))
    common = [str(RAMPART), "analyze", "--config", str(config), "--experiment", "exp",
              "--as-of", AS_OF.isoformat(), "--json"]
    local = subprocess.run(common, env=env, cwd=tmp_path, capture_output=True, text=True,
                           timeout=300)
    assert local.returncode == 0, local.stderr
    distributed = subprocess.run([*common, "--engine", "ray", "--ray-address", cluster.address],
                                 env=env, cwd=tmp_path, capture_output=True, text=True,
                                 timeout=300)
    assert distributed.returncode == 0, distributed.stderr
    body = json.loads(local.stdout)
    assert body["units"] > 5_000 and body["metrics"][0]["sequential"]["looks"]
    assert_same_numbers(json.loads(distributed.stdout), body)
