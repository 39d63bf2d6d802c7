"""Kill ``rampart serve`` with SIGKILL mid-ramp, under load, and start it
again: the rollout resumes at the step it had reached, with the same
assignments, and its audit trail is whole; every row answered more than
``tests.load.LOSS_BOUND_S`` before the kill is in the decision log once (the replicas' journals,
written by the next start's replicas). Driven entirely through the CLI and
HTTP, as an operator would."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from serving.cli.demo.models import FEATURE_NAMES
from serving.cli.demo.scenarios import BackgroundTraffic
from tests.load import Answers, answered_at, check_rows, open_loop
from tests.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
RAMPART = str(Path(sys.executable).parent / "rampart")
TOKEN = "restart-test-token"


def _serve(config: Path, url: str) -> subprocess.Popen[str]:
    env = {**os.environ, "RAMPART_ADMIN_TOKEN": TOKEN}
    proc = subprocess.Popen([RAMPART, "serve", "--config", str(config)], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True)
    deadline = time.monotonic() + 180
    healthy_in_a_row = 0  # as `rampart serve` itself does before it reports ready
    while time.monotonic() < deadline:
        assert proc.poll() is None, "rampart serve exited early"
        try:
            ok = httpx.get(f"{url}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            ok = False
        healthy_in_a_row = healthy_in_a_row + 1 if ok else 0
        if healthy_in_a_row >= 6:
            return proc
        time.sleep(0.25)
    proc.kill()
    raise TimeoutError("rampart serve did not come up")


def _cli(url: str, *args: str) -> Any:
    env = {**os.environ, "RAMPART_ADMIN_TOKEN": TOKEN}
    result = subprocess.run([RAMPART, *args, "--url", url], capture_output=True, text=True,
                            env=env, timeout=60, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    return result.stdout


def _status(url: str, rollout_id: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(_cli(url, "rollout", "status", rollout_id, "--json"))
    return data


def _answers(url: str, units: list[str]) -> dict[str, str]:
    """Each unit's version. Ray's HAProxy may reload its config just after a start
    and close an idle keep-alive connection; a prediction is safe to resend."""
    features = dict.fromkeys(FEATURE_NAMES, 0.1)
    out: dict[str, str] = {}
    with httpx.Client(base_url=url, timeout=10,
                      transport=httpx.HTTPTransport(retries=3)) as client:
        for unit in units:
            for attempt in range(3):
                try:
                    body = client.post("/v1/predict", json={"unit_id": unit,
                                                            "features": features}).json()
                    break
                except httpx.RemoteProtocolError:
                    if attempt == 2:
                        raise
            out[unit] = body["model_version"]
    return out


def test_sigkill_mid_ramp_then_restart_resumes_the_rollout(
    mlflow_store: dict[str, Any], tmp_path: Path
) -> None:
    data = yaml.safe_load((ROOT / "deploy" / "rampart.yaml").read_text())
    data.update(tracking_uri=mlflow_store["uri"], data_dir=str(tmp_path), experiments=[])
    # Long flushes: what the kill would lose lives only in memory and the journal.
    data["decision_log"] = {"path": str(tmp_path / "decisions"), "spill_dir": str(
        tmp_path / "spill"), "flush_interval_s": 30, "batch_rows": 100_000}
    data["telemetry"] = {"metrics_dir": str(tmp_path / "metrics")}
    port = free_port()  # the restart takes the same port again
    url = f"http://127.0.0.1:{port}"
    data["server"] = {"host": "127.0.0.1", "port": port, "num_replicas": 1}
    config = tmp_path / "rampart.yaml"
    config.write_text(yaml.safe_dump(data))
    plan = tmp_path / "plan.yaml"
    # min_requests only sets how much traffic the ramp to the gate takes (at 1%,
    # 100 candidate requests were ~10,000 requests, most of this test's time);
    # the gate itself is the controller's unit tests' subject, not this one's.
    plan.write_text(yaml.safe_dump({
        "id": "ro-restart", "model_name": "rampart-demo-classifier", "baseline_version": "1",
        "candidate_version": "2", "steps": [1, 5, 25, 50, 100], "interval_s": 1,
        "min_requests": 20, "failure_limit": 2, "pause_before": [50],
        "guardrails": {"min_check_requests": 5}}))

    proc = _serve(config, url)
    killed = False
    try:
        created = json.loads(_cli(url, "rollout", "start", str(plan)))
        assert created == {"id": "ro-restart", "phase": "progressing", "weight_bp": 100}
        # Ramp through 1% and 5% to 25%; the manual gate before 50% then holds the
        # rollout at 25% whatever traffic arrives, so the step cannot move under us.
        traffic = BackgroundTraffic(url, concurrency=4).start()
        deadline = time.monotonic() + 120
        while _status(url, "ro-restart")["phase"] != "paused" and time.monotonic() < deadline:
            time.sleep(0.3)
        traffic.stop()
        units = [f"probe-{i}" for i in range(200)]
        versions_before = _answers(url, units)
        assert set(versions_before.values()) == {"1", "2"}
        before = _status(url, "ro-restart")
        assert (before["phase"], before["step_index"], before["weight_bp"]) == (
            "paused", 2, 2500)
        table = _cli(url, "rollout", "status", "ro-restart")
        assert "ro-restart" in table and "audit trail" in table

        load: dict[str, Answers] = {}
        loader = threading.Thread(target=lambda: load.update(
            answers=open_loop(url, 150.0, 10.0, tag="restart")))
        started = time.perf_counter()
        loader.start()
        time.sleep(6.0)
        proc.send_signal(signal.SIGKILL)
        killed_at = time.perf_counter() - started
        proc.wait(timeout=30)
        killed = True
        loader.join()
        time.sleep(2)
        proc = _serve(config, url)
        after = _status(url, "ro-restart")
        assert (after["phase"], after["step_index"], after["weight_bp"], after["salt"]) == (
            before["phase"], before["step_index"], before["weight_bp"], before["salt"])
        assert after["audit"] == before["audit"]  # the trail is whole, nothing added or lost
        assert _answers(url, units) == versions_before  # the same assignments
        resumed = json.loads(_cli(url, "rollout", "resume", "ro-restart", "--reason", "restarted"))
        assert (resumed["phase"], resumed["weight_bp"]) == ("progressing", 5000)
        versions_after = _answers(url, units)  # 50% now: every unit on the candidate stays there
        assert all(versions_after[u] == "2" for u, v in versions_before.items() if v == "2")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
    assert killed
    loss = check_rows(tmp_path / "decisions", load["answers"], killed_at)
    print(f"\nrampart serve SIGKILL at 150 req/s: {len(answered_at(load['answers']))} "
          f"answered; {loss.describe()}")
