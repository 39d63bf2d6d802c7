"""The ``rampart`` command line, run as a user runs it (a subprocess)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pyarrow.parquet as pq
import pytest
import yaml

from serving.cli.demo.traffic import Population, drive_traffic
from serving.cli.process_guard import processes_marked
from serving.routing.assignment import bucket
from telemetry.decision_log import read_decisions
from tests.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
RAMPART = str(Path(sys.executable).parent / "rampart")


def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([RAMPART, *args], capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT)


@pytest.fixture(scope="module")
def config_file(mlflow_store: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("cli")
    data = yaml.safe_load((ROOT / "deploy" / "rampart.yaml").read_text())
    data["tracking_uri"] = mlflow_store["uri"]
    data["data_dir"] = str(tmp)
    data["decision_log"] = {"path": str(tmp / "decisions"), "flush_interval_s": 30,
                            "batch_rows": 100_000}
    data["telemetry"] = {"metrics_dir": str(tmp / "metrics")}
    data["server"] = {"host": "127.0.0.1", "port": free_port(), "num_replicas": 1}
    path = tmp / "rampart.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize(
    "command",
    [[], ["models"], ["models", "seed-demo"], ["serve"], ["assign"], ["demo"]],
)
def test_every_command_has_help(command: list[str]) -> None:
    result = run(*command, "--help", timeout=60)
    assert result.returncode == 0 and "usage: rampart" in result.stdout


def test_assign_one_unit_prints_its_route(config_file: Path) -> None:
    result = run("assign", "--config", str(config_file), "--unit-id", "user-42")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["bucket"] == bucket("demo-2026-11", "user-42")
    assert out["experiment_id"] == "demo-champion-vs-challenger"
    assert out["arm"] == ("challenger" if out["bucket"] < 1000 else "control")
    assert out["model_version"] == ("2" if out["arm"] == "challenger" else "1")


def test_assign_a_file_of_units_agrees_with_single_assignment(
    config_file: Path, tmp_path: Path
) -> None:
    units = [f"user-{i}" for i in range(200_000)]
    (tmp_path / "units.txt").write_text("\n".join(units) + "\n")
    out = tmp_path / "assigned.parquet"
    result = run("assign", "--config", str(config_file), "--units-file",
                 str(tmp_path / "units.txt"), "--output", str(out))
    assert result.returncode == 0, result.stderr
    table = pq.read_table(out)
    assert table.column_names == ["unit_id", "bucket", "experiment_id", "arm", "layer",
                                  "model_name", "model_version"]
    assert table.num_rows == len(units)
    rows = table.slice(0, 50).to_pylist() + table.slice(150_000, 50).to_pylist()
    for row in rows:
        assert row["bucket"] == bucket("demo-2026-11", row["unit_id"])
        assert row["arm"] == ("challenger" if row["bucket"] < 1000 else "control")


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["assign", "--config", "/nonexistent.yaml", "--unit-id", "u"], "cannot read config"),
        (["assign", "--unit-id", "u", "--context", "{oops"], "--context is not valid JSON"),
        (["assign"], "exactly one of --unit-id or --units-file"),
        (["assign", "--units-file", "/nonexistent.txt", "--output", "x.parquet"], "cannot read"),
        (["serve", "--config", "/nonexistent.yaml"], "cannot read config"),
    ],
)
def test_bad_cli_input_gets_one_clear_message(
    config_file: Path, args: list[str], needle: str
) -> None:
    if "--config" not in args:
        args = [args[0], "--config", str(config_file), *args[1:]]
    result = run(*args)
    assert result.returncode == 2
    assert needle in result.stderr
    assert "Traceback" not in result.stderr


def test_config_mistakes_are_listed_by_the_cli(tmp_path: Path, config_file: Path) -> None:
    data = yaml.safe_load(config_file.read_text())
    main = next(e for e in data["experiments"] if e["id"] == "demo-champion-vs-challenger")
    main["arms"][1]["weight_bp"] = 2000
    main["salt"] = "no spaces allowed"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(data))
    result = run("assign", "--config", str(bad), "--unit-id", "u")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "sum to 11000" in result.stderr and "salt must be" in result.stderr


def test_seed_demo_twice_adds_nothing(mlflow_store: dict[str, Any]) -> None:
    result = run("models", "seed-demo", "--tracking-uri", str(mlflow_store["uri"]),
                 "--data-dir", str(mlflow_store["root"]))
    assert result.returncode == 0, result.stderr
    assert "nothing added" in result.stdout


def test_serve_stops_cleanly_on_sigterm_and_flushes_every_decision(
    config_file: Path, tmp_path: Path
) -> None:
    data = yaml.safe_load(config_file.read_text())
    data["server"]["port"] = free_port()
    config = tmp_path / "rampart.yaml"
    config.write_text(yaml.safe_dump(data))
    url = f"http://127.0.0.1:{data['server']['port']}"
    env = {**os.environ, "RAY_DEDUP_LOGS": "0"}
    proc = subprocess.Popen([RAMPART, "serve", "--config", str(config)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        else:
            pytest.fail("rampart serve did not come up")
        # The flush interval is 30 s and the batch is large: only shutdown writes these.
        result = drive_traffic(url, Population(size=100), 300, concurrency=4, seed=5)
        assert result.ok == 300
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, output
        assert "stopped" in output
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    rows = read_decisions(Path(data["decision_log"]["path"])).to_pylist()
    assert sorted(r["request_id"] for r in rows if r["status"] == "ok") == sorted(
        result.sent_request_ids)


def test_a_missing_mlflow_store_is_one_line_and_nothing_is_created(tmp_path: Path) -> None:
    missing = tmp_path / "mlflow.db"
    config = _config_with(tmp_path, missing)
    for command in (["serve", "--tracking-uri", f"sqlite:///{missing}"],
                    ["assign", "--config", str(config), "--unit-id", "u1"]):
        done = run(*command)
        assert done.returncode == 2, done.stderr
        assert done.stderr.splitlines() == [
            f"rampart: error: no MLflow store at {missing}. "
            "Run `rampart models seed-demo` for the demo models."]
        assert not missing.exists()


def test_a_corrupt_mlflow_store_is_one_line(tmp_path: Path) -> None:
    corrupt = tmp_path / "mlflow.db"
    corrupt.write_bytes(b"not a database " * 100)
    done = run("serve", "--tracking-uri", f"sqlite:///{corrupt}")
    assert done.returncode == 2
    [line] = done.stderr.splitlines()
    assert line.startswith(f"rampart: error: cannot open the MLflow store sqlite:///{corrupt}")
    assert "file is not a database" in line


def _config_with(tmp_path: Path, tracking: Path) -> Path:
    data = yaml.safe_load((ROOT / "deploy" / "rampart.yaml").read_text())
    data.update(tracking_uri=f"sqlite:///{tracking}", data_dir=str(tmp_path / "data"))
    path = tmp_path / "rampart.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _haproxy_pids(instance: str) -> list[int]:
    pids = []
    for pid in processes_marked(instance):
        try:
            if Path(f"/proc/{pid}/comm").read_text().strip() == "haproxy":
                pids.append(pid)
        except OSError:
            continue
    return pids


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_a_restarted_gateway_ends_a_killed_ones_haproxy_and_is_ready_only_on_its_own(
    config_file: Path, tmp_path: Path
) -> None:
    """SIGKILL a ``rampart serve``: its HAProxy lives on, answering on the port.
    A new ``rampart serve`` on that port (another data directory, so nothing
    but the orphan's own directory links them) ends it, and calls itself ready
    only once the answers on the port come from its own replicas."""
    from serving.cli.launch import wait_healthy

    data = yaml.safe_load(config_file.read_text())
    data["server"]["port"] = free_port()
    url = f"http://127.0.0.1:{data['server']['port']}"
    configs = []
    for name in ("killed", "restarted"):
        data["data_dir"] = str(tmp_path / name)
        data["decision_log"] = {**data["decision_log"], "path": str(tmp_path / name / "log")}
        configs.append(tmp_path / f"{name}.yaml")
        configs[-1].write_text(yaml.safe_dump(data))
    env = {**os.environ, "RAY_DEDUP_LOGS": "0"}
    first = subprocess.Popen([RAMPART, "serve", "--config", str(configs[0])], cwd=ROOT, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
    second: subprocess.Popen[str] | None = None
    try:
        deadline = time.monotonic() + 180
        while True:
            assert first.poll() is None and time.monotonic() < deadline, "no first gateway"
            try:
                answer = httpx.get(f"{url}/healthz", timeout=1)
                if answer.status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        killed_id = answer.json()["instance_id"]
        instance = json.loads((tmp_path / "killed" / "serve.json").read_text())["instance"]
        orphans = _haproxy_pids(instance)
        assert killed_id and orphans

        # Killed hard, all of it but HAProxy (as the OOM killer or a `kill -9`
        # of its processes would): nothing is left to stop HAProxy.
        first.send_signal(signal.SIGKILL)
        for pid in processes_marked(instance):
            if pid not in orphans:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        first.wait()
        time.sleep(1)
        assert any(_running(pid) for pid in orphans)
        httpx.get(f"{url}/healthz", timeout=5)  # answered (by the orphan), not refused

        second = subprocess.Popen([RAMPART, "serve", "--config", str(configs[1])], cwd=ROOT,
                                  env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True, start_new_session=True)
        assert second.stdout is not None
        lines = []
        for line in second.stdout:
            lines.append(line)
            if "rampart gateway serving on" in line:
                break
        else:
            pytest.fail("".join(lines))
        # Ready: the orphan is gone, and the port answers for this start only.
        assert not [pid for pid in orphans if _running(pid)]
        answer = httpx.get(f"{url}/healthz", timeout=5)
        assert answer.status_code == 200
        assert answer.json()["instance_id"] not in ("", killed_id)
        with pytest.raises(TimeoutError):
            wait_healthy(url, 2, instance_id=killed_id)  # the killed start's id: never ready
        second.send_signal(signal.SIGTERM)
        output, _ = second.communicate(timeout=120)
        assert second.returncode == 0, output
    finally:
        for process in (first, second):
            if process is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                if process.stdout is not None:
                    process.stdout.close()
                process.wait()
