"""The README's quickstart, run as written, in a directory that is not the checkout.

The training script, the ``rampart serve --model`` command and every ``curl``
of step 3 are read from README.md itself, so the quickstart cannot drift from
what works: the model is not the demo's (a pipeline over a string category,
an integer count and a number), the config is the packaged default, and the
working directory is a fresh temporary one.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from serving.cli.process_guard import reap_previous
from telemetry.decision_log import read_decisions
from tests.ports import free_port

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
README_PORT = "8000"


def quickstart() -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index("## Quickstart")
    return text[start:text.index("\n## ", start + 1)]


def blocks(section: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", section, flags=re.S)


def shell_commands(block: str) -> list[str]:
    """Commands of a sh block: comments dropped, continuation lines joined."""
    commands, current = [], ""
    for line in block.splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        current += line.rstrip("\\") + (" " if line.endswith("\\") else "\n")
        if not line.endswith("\\") and current.count("'") % 2 == 0:
            commands.append(current.strip())
            current = ""
    return commands


def test_quickstart_trains_serves_and_answers_every_protocol(tmp_path: Path) -> None:
    section = quickstart()
    (tmp_path / ".rampart").mkdir()
    (tmp_path / "train.py").write_text(blocks(section, "python")[0])
    # A new user's shell: no MLflow settings (other tests in this process set
    # MLflow's experiment, and MLflow passes it on to children in MLFLOW_*).
    env = {key: value for key, value in os.environ.items() if not key.startswith("MLFLOW_")}
    env.update(PATH=f"{BIN}:{os.environ['PATH']}", RAY_DEDUP_LOGS="0")
    trained = subprocess.run([sys.executable, "train.py"], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=300)
    assert trained.returncode == 0, trained.stderr[-3000:]

    sh = blocks(section, "sh")
    serve = next(c for b in sh for c in shell_commands(b) if c.startswith("rampart serve --model"))
    port = str(free_port())
    proc = subprocess.Popen(shlex.split(serve.replace(f"--port {README_PORT}", f"--port {port}")),
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            try:
                ready = httpx.get(f"{url}/v2/health/ready", timeout=1)
                # HAProxy answers 503 pages of its own until a replica is up.
                if ready.status_code == 200 and ready.json()["ready"]:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        else:
            pytest.fail("rampart serve --model did not come up")

        curls = [c for b in sh for c in shell_commands(b) if c.startswith("curl")]
        assert len(curls) == 4, curls
        answers = []
        for command in curls:
            done = subprocess.run(
                shlex.split(command.replace(f"localhost:{README_PORT}", f"127.0.0.1:{port}")),
                capture_output=True, text=True, timeout=60, check=True)
            assert done.stdout, (command, done.stderr)
            try:
                answers.append(json.loads(done.stdout))
            except ValueError:
                pytest.fail(f"{command}\n{done.stdout}")
        own, mlflow_answer, v2, refused = answers
        assert (own["model_name"], own["model_version"], own["arm"]) == ("churn", "1", "default")
        assert own["label"] in (0, 1) and own["probabilities"][str(own["label"])] >= 0.5
        assert mlflow_answer == {"predictions": [own["label"]]}
        proba = next(o for o in v2["outputs"] if o["name"] == "predict_proba")["data"]
        assert proba[1] == pytest.approx(own["prediction"], abs=1e-12)
        assert refused["error"]["code"] == "validation_failed"
        assert "features.seats" in refused["error"]["message"]
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, output
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=60)
            # Ray's HAProxy outlives a killed driver and would hold its ports
            # for every later test: end what this run left, as a restart would.
            reap_previous(tmp_path / ".rampart")
    # Every answered row is a decision, logged under the working directory.
    rows = read_decisions(tmp_path / ".rampart" / "decisions").to_pylist()
    assert sum(r["status"] == "ok" for r in rows) == 3
    assert {r["unit_id"] for r in rows} == {"user-42"}
