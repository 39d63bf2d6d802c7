"""SIGTERM or SIGINT at any moment of ``rampart serve``'s life leaves no process
behind, Ray's HAProxy included, and the next start on the same port works.

The moments: while Python starts and Ray is being started, while Serve
deploys the replicas, and once it serves. Every process a run starts carries
its marker in its environment (``RAMPART_SERVE_INSTANCE``), so the test finds
all of them, whoever their parent is.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import yaml

from serving.cli.process_guard import processes_marked
from tests.gateway_processes import healthy
from tests.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
RAMPART = ROOT / ".venv" / "bin" / "rampart"
GONE_WITHIN_S = 30.0  # a bound for a broken implementation, not a measurement


def _serve(config: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as sink:
        return subprocess.Popen([str(RAMPART), "serve", "--config", str(config)], cwd=ROOT,
                                env={**os.environ, "RAY_DEDUP_LOGS": "0"}, stdout=sink,
                                stderr=subprocess.STDOUT, start_new_session=True)


def _instance(data_dir: Path) -> str | None:
    try:
        return str(json.loads((data_dir / "serve.json").read_text())["instance"])
    except (OSError, ValueError, KeyError):
        return None


def test_a_signal_at_any_moment_leaves_nothing_behind_and_the_next_start_works(
    mlflow_store: dict[str, Any], tmp_path: Path
) -> None:
    data: dict[str, Any] = yaml.safe_load((ROOT / "deploy" / "rampart.yaml").read_text())
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    data.update(tracking_uri=str(mlflow_store["uri"]), data_dir=str(tmp_path / "data"))
    data["decision_log"] = {"path": str(tmp_path / "decisions"),
                            "spill_dir": str(tmp_path / "spill")}
    data["telemetry"] = {"metrics_dir": str(tmp_path / "metrics")}
    data["server"] = {"host": "127.0.0.1", "port": port, "num_replicas": 1}
    config = tmp_path / "rampart.yaml"
    config.write_text(yaml.safe_dump(data))
    log = tmp_path / "serve.log"

    # (signal, when): seconds after the start (Python and Ray starting; Serve
    # deploying the replica), or "ready" once it answers. Each start after the
    # first is the next start that must work.
    moments: list[tuple[signal.Signals, float | str]] = [
        (signal.SIGTERM, 1.5), (signal.SIGINT, 9.0), (signal.SIGTERM, "ready")]
    for sig, when in moments:
        proc = _serve(config, log)
        try:
            if when == "ready":
                deadline = time.monotonic() + 180
                while not healthy(url):
                    assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
                    time.sleep(0.5)
            else:
                assert isinstance(when, float)
                time.sleep(when)
            instance = _instance(tmp_path / "data")
            proc.send_signal(sig)
            code = proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        assert code in (0, 130, 143, -sig), (sig.name, when, code, log.read_text()[-3000:])
        assert "Traceback" not in log.read_text(), log.read_text()[-3000:]
        deadline = time.monotonic() + GONE_WITHIN_S
        left = processes_marked(instance) if instance else []
        while left and time.monotonic() < deadline:
            time.sleep(0.5)
            left = processes_marked(instance)
        commands = [Path(f"/proc/{p}/cmdline").read_bytes()[:120] for p in left
                    if Path(f"/proc/{p}").exists()]
        assert not left, f"{sig.name} at {when}: left running {commands}"
        assert not healthy(url), f"{sig.name} at {when}: the port still answers"
