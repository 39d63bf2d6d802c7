"""Decision rows survive SIGKILL: of one gateway replica under load, and of
``rampart serve`` itself.

Each replica journals the rows it has not yet written to a local spill file
(``decision_log.spill_dir``) every ``spill_interval_s`` (50 ms); the next
replica started on the node writes a dead one's journal into the log. The
stated bound: a row answered more than ``LOSS_BOUND_S`` (100 ms) before the
kill is never lost; rows answered closer to it may be. Both tests print
their figures (``pytest -s``) for the README's Reliability section.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from serving.cli.launch import start_gateway
from serving.kernel.config import parse_config
from telemetry.decision_log import read_decisions
from tests.load import Answers, open_loop, replica_pids
from tests.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
RAMPART = ROOT / ".venv" / "bin" / "rampart"
LOSS_BOUND_S = 0.1


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


def _answered_at(answers: Answers) -> dict[str, float]:
    """When each 200 answer arrived, in the load run's seconds."""
    return {request_id: sent + latency for request_id, sent, latency, status in zip(
        answers.request_ids, answers.sent_at, answers.latency_s, answers.status, strict=True)
        if status == 200}


def _check_rows(decisions: Path, answers: Answers, killed_at: float) -> tuple[int, int]:
    """Every 200 answered before ``killed_at - LOSS_BOUND_S`` is logged exactly once;
    returns (rows lost within the bound, rows logged)."""
    logged = read_decisions(decisions)
    ok_rows = Counter(r for r, s in zip(logged["request_id"].to_pylist(),
                                        logged["status"].to_pylist(), strict=True)
                      if s == "ok")
    twice = [r for r, n in ok_rows.items() if n > 1]
    assert not twice, f"{len(twice)} rows logged twice, e.g. {twice[:3]}"
    answered = _answered_at(answers)
    missing = {r: at for r, at in answered.items() if r not in ok_rows}
    late = {r: round(killed_at - at, 3) for r, at in missing.items()
            if at < killed_at - LOSS_BOUND_S}
    assert not late, (f"{len(late)} rows answered before the bound were lost, "
                      f"seconds before the kill: {list(late.items())[:5]}")
    # Nothing is logged that the client was not answered, except requests in
    # flight at the kill (answered by the replica, never received by the client).
    assert set(ok_rows) - set(answered) <= set(answers.request_ids)
    return len(missing), len(ok_rows)


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
    lost, logged = _check_rows(tmp_path / "decisions", answers, killed["at"])
    failed = answers.failed
    recovery_s = killed["replaced_clock"] - killed["at_clock"]
    # The survivor answers meanwhile: the longest stretch without any answer.
    answered = sorted(at for at in _answered_at(answers).values() if at >= killed["at"])
    longest_gap_s = max(b - a for a, b in zip([killed["at"], *answered], answered,
                                              strict=False))
    print(f"\nreplica SIGKILL at {rate:.0f} req/s: {failed} of {len(answers.status)} requests "
          f"failed, longest wait for an answer {longest_gap_s:.2f} s, replaced after "
          f"{recovery_s:.1f} s; {logged} rows "
          f"logged, {lost} answered within {LOSS_BOUND_S * 1000:.0f} ms of the kill lost")
    # The other replica kept serving: failures are the killed one's requests in
    # flight and those sent to it before HAProxy saw it gone, under a second's worth.
    assert failed < rate, Counter(answers.status)
    assert longest_gap_s < 5.0
    assert not list(tmp_path.joinpath("spill").glob("*/*.seg*")), "journal left behind"


def test_sigkill_of_rampart_serve_loses_no_answered_row(
    mlflow_store: dict[str, Any], tmp_path: Path
) -> None:
    port = free_port()
    config = tmp_path / "rampart.yaml"
    config.write_text(yaml.safe_dump(_config(mlflow_store, tmp_path, port)))
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "RAY_DEDUP_LOGS": "0"}

    def serve(run: int) -> subprocess.Popen[bytes]:
        output = tmp_path / f"serve-{run}.log"
        with output.open("wb") as sink:
            proc = subprocess.Popen([str(RAMPART), "serve", "--config", str(config)],
                                    cwd=tmp_path, env=env, stdout=sink,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            assert proc.poll() is None, output.read_text()
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    return proc
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail("rampart serve did not come up")

    first = serve(1)
    result: dict[str, Answers] = {}
    try:
        load = threading.Thread(target=lambda: result.update(
            answers=open_loop(url, 150.0, 10.0, tag="dkill")))
        started = time.perf_counter()
        load.start()
        time.sleep(6.0)
        os.kill(first.pid, signal.SIGKILL)  # the driver only: Ray's processes follow it
        killed_at = time.perf_counter() - started
        load.join()
        first.wait(timeout=30)
    finally:
        # What outlived the driver (Ray's workers, HAProxy) goes too, as a
        # machine's reboot would take it: only the journal is left.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(first.pid, signal.SIGKILL)
    second = serve(2)  # its replicas write the dead ones' journals
    try:
        second.send_signal(signal.SIGTERM)
        assert second.wait(timeout=120) == 0, (tmp_path / "serve-2.log").read_text()
    finally:
        if second.poll() is None:
            os.killpg(second.pid, signal.SIGKILL)
    answers = result["answers"]
    lost, logged = _check_rows(tmp_path / "decisions", answers, killed_at)
    print(f"\nrampart serve SIGKILL: {logged} rows logged of {len(_answered_at(answers))} "
          f"answered; {lost} answered within {LOSS_BOUND_S * 1000:.0f} ms of the kill lost")
