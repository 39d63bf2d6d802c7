"""Decision rows survive SIGKILL of one gateway replica under load (the SIGKILL
of ``rampart serve`` itself: ``test_rollout_restart.py``).

Each replica journals the rows it has not yet written to a local spill file
(``decision_log.spill_dir``) every ``spill_interval_s`` (50 ms); the next
replica started on the node writes a dead one's journal into the log. A row
answered more than ``LOSS_BOUND_S`` before the kill is never lost (see
``tests.load``); rows answered closer to it may be. The test prints its
figures (``pytest -s``) for the README's Reliability section.
"""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import yaml

from serving.cli.launch import start_gateway
from serving.kernel.config import parse_config
from tests.load import answered_at, check_rows, open_loop, replica_pids
from tests.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
RAMPART = ROOT / ".venv" / "bin" / "rampart"


def _config(mlflow_store: dict[str, Any], tmp: Path, port: int) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "deploy" / "rampart.yaml").read_text())
    data.update(tracking_uri=str(mlflow_store["uri"]), data_dir=str(tmp))
    # Long flushes: what a kill would lose lives only in memory and the journal.
    data["decision_log"] = {"path": str(tmp / "decisions"), "spill_dir": str(tmp / "spill"),
                            "flush_interval_s": 30, "batch_rows": 100_000}
    data["telemetry"] = {"metrics_dir": str(tmp / "metrics")}
    # No replica count: the default, two on a machine with two CPUs.
    data["server"] = {"host": "127.0.0.1", "port": port}
    return data


def test_sigkill_of_a_replica_under_load_loses_no_answered_row(
    ray_session: None, mlflow_store: dict[str, Any], tmp_path: Path
) -> None:
    gateway = start_gateway(parse_config(_config(mlflow_store, tmp_path, free_port())))
    rate, duration, kill_after = 150.0, 16.0, 5.0
    killed: dict[str, float] = {}
    pids = replica_pids()
    assert len(pids) == 2, f"two replicas by default, found {pids}"

    def replaced() -> bool:
        now = replica_pids()
        return len(now) == 2 and pids[0] not in now

    def kill_one(elapsed_s: float) -> None:
        if not killed and elapsed_s >= kill_after:
            os.kill(pids[0], signal.SIGKILL)
            killed.update(at=elapsed_s, at_clock=time.monotonic())
        elif killed and "replaced_clock" not in killed and replaced():
            killed["replaced_clock"] = time.monotonic()

    try:
        answers = open_loop(gateway.url, rate, duration, tag="rkill", on_tick=kill_one)
        deadline = time.monotonic() + 60
        while "replaced_clock" not in killed and time.monotonic() < deadline:
            if replaced():
                killed["replaced_clock"] = time.monotonic()
            time.sleep(0.5)
        assert "replaced_clock" in killed, "Ray did not replace the killed replica"
    finally:
        gateway.stop()  # graceful: the replacement has written the journal; all flush
    loss = check_rows(tmp_path / "decisions", answers, killed["at"])
    failed = answers.failed
    recovery_s = killed["replaced_clock"] - killed["at_clock"]
    # The survivor answers meanwhile: the longest stretch without any answer.
    answered = sorted(at for at in answered_at(answers).values() if at >= killed["at"])
    longest_gap_s = max(b - a for a, b in zip([killed["at"], *answered], answered,
                                              strict=False))
    print(f"\nreplica SIGKILL at {rate:.0f} req/s: {failed} of {len(answers.status)} requests "
          f"failed, longest wait for an answer {longest_gap_s:.2f} s, replaced after "
          f"{recovery_s:.1f} s; {loss.describe()}")
    # The other replica kept serving: failures are the killed one's requests in
    # flight and those sent to it before HAProxy saw it gone, under a second's worth.
    assert failed < rate, Counter(answers.status)
    assert longest_gap_s < 5.0
    assert not list(tmp_path.joinpath("spill").glob("*/*.seg*")), "journal left behind"
