"""Shadow traffic, offline replay and drift on a real gateway, through the CLI,
with the HTML report rendered by a real browser (Debian's Chromium)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from serving.cli.demo.traffic import Population, drive_traffic
from serving.cli.launch import start_gateway
from serving.kernel.config import parse_config
from telemetry.decision_log import read_decisions
from tests.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
RAMPART = str(Path(sys.executable).parent / "rampart")
MODEL = "rampart-demo-classifier"


def _serve_and_log(mlflow_store: dict[str, Any], tmp: Path, population: Population,
                   metrics_out: list[str] | None = None, **overrides: Any) -> Path:
    data = yaml.safe_load((ROOT / "deploy" / "rampart.yaml").read_text())
    data.update(tracking_uri=mlflow_store["uri"], data_dir=str(tmp), experiments=[],
                **overrides)
    data["decision_log"] = {"path": str(tmp / "decisions")}
    data["telemetry"] = {"metrics_dir": str(tmp / "metrics")}
    data["server"] = {"host": "127.0.0.1", "port": free_port(), "num_replicas": 1}
    gateway = start_gateway(parse_config(data))
    try:
        result = drive_traffic(gateway.url, population, 600, concurrency=4, seed=2)
        assert result.ok == 600
        if metrics_out is not None:
            # Online drift is evaluated every drift_every_s (1 s here); on a loaded machine
            # the first evaluation can come late, so wait for it rather than for a fixed time.
            deadline = time.monotonic() + 60
            while True:
                text = httpx.get(f"{gateway.url}/metrics").text
                if 'rampart_feature_psi{feature="f7"' in text or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            time.sleep(1.5)  # one more evaluation, over the whole window
            metrics_out.append(httpx.get(f"{gateway.url}/metrics").text)
    finally:
        gateway.stop()
    return tmp / "decisions"


def _cli(*args: str, uri: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([RAMPART, "parity", *args, "--tracking-uri", uri], capture_output=True,
                          text=True, timeout=300, cwd=ROOT)


@pytest.fixture(scope="module")
def shadowed_log(ray_session: None, mlflow_store: dict[str, Any],
                 tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Primary v1 with v3 in shadow for every unit; the online path matches offline."""
    return _serve_and_log(mlflow_store, tmp_path_factory.mktemp("shadowed"), Population(20_000),
                          shadows=[{"model": MODEL, "version": "candidate", "sample_bp": 10_000}])


def test_every_request_is_mirrored_with_the_same_request_id(shadowed_log: Path) -> None:
    rows = read_decisions(shadowed_log).to_pylist()
    primary = {r["request_id"] for r in rows if r["role"] == "primary"}
    shadow = {r["request_id"]: r for r in rows if r["role"] == "shadow"}
    assert len(primary) == 600 and set(shadow) == primary
    assert {r["model_version"] for r in shadow.values()} == {"3"}
    assert {r["status"] for r in shadow.values()} == {"ok"}


def test_replay_passes_when_online_and_offline_agree(
    shadowed_log: Path, mlflow_store: dict[str, Any]
) -> None:
    result = _cli("replay", "--decisions", str(shadowed_log), "--model", f"models:/{MODEL}/1",
                  "--json", uri=str(mlflow_store["uri"]))
    assert result.returncode == 0, result.stderr
    body = json.loads(result.stdout)
    assert body["verdict"] == "PASS" and body["n"] == 600 and body["max_abs_diff"] < 1e-9


def test_replay_catches_a_feature_transform_skew_on_the_online_path(
    ray_session: None, mlflow_store: dict[str, Any], tmp_path: Path
) -> None:
    log = _serve_and_log(mlflow_store, tmp_path, Population(500),
                         feature_transforms=[{"feature": "f0", "op": "scale", "value": 1.5}])
    result = _cli("replay", "--decisions", str(log), "--model", f"models:/{MODEL}@champion",
                  "--json", uri=str(mlflow_store["uri"]))
    assert result.returncode == 1
    body = json.loads(result.stdout)
    assert body["verdict"] == "FAIL" and body["over_tolerance"] > 500
    assert body["examples"] and body["max_abs_diff"] > 0.01


def test_report_shows_agreement_replay_and_drift_and_renders_in_chromium(
    shadowed_log: Path, mlflow_store: dict[str, Any], tmp_path: Path
) -> None:
    page = tmp_path / "report.html"
    result = _cli("report", "--decisions", str(shadowed_log), "--model", f"models:/{MODEL}/1",
                  "--html", str(page), "--json", uri=str(mlflow_store["uri"]))
    assert result.returncode == 0, result.stderr
    body = json.loads(result.stdout)
    (pair,) = body["agreement"]
    assert (pair["primary_version"], pair["shadow_version"], pair["n"]) == ("1", "3", 600)
    assert 0.5 < pair["label_agreement"] <= 1.0
    assert body["replay"]["verdict"] == "PASS"
    assert {d["feature"] for d in body["drift"]} == {f"f{i}" for i in range(8)}
    assert not any(d["drifted"] for d in body["drift"])  # same distribution as training

    chromium = shutil.which("chromium")
    assert chromium, "chromium is missing: `make system-deps` installs Debian's chromium"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'chrome'}"]
    dom = subprocess.run([chromium, *flags, "--dump-dom", page.as_uri()], capture_output=True,
                         text=True, timeout=120)
    loaded = re.search(r'data-plots-loaded="(\d+)"', dom.stdout)
    assert loaded and int(loaded.group(1)) == 2, dom.stdout[-500:]  # scatter+hist, drift bars
    shot = tmp_path / "report.png"
    subprocess.run([chromium, *flags, f"--screenshot={shot}", "--window-size=1200,1800",
                    page.as_uri()], capture_output=True, timeout=120)
    assert shot.stat().st_size > 20_000


def test_drift_is_flagged_when_the_live_population_moves(
    ray_session: None, mlflow_store: dict[str, Any], tmp_path: Path
) -> None:
    scraped: list[str] = []
    log = _serve_and_log(mlflow_store, tmp_path, Population(20_000, shift_f0=1.0), scraped,
                         parity={"drift_every_s": 1})
    psi = {m.group(1): float(m.group(2)) for m in re.finditer(
        r'rampart_feature_psi\{feature="(f\d)",model_name="[^"]+",model_version="1"\} (\S+)',
        scraped[0])}
    assert set(psi) == {f"f{i}" for i in range(8)}, scraped[0][-2000:]
    assert psi["f0"] > 0.2 and max(v for k, v in psi.items() if k != "f0") < 0.2
    result = _cli("report", "--decisions", str(log), "--model", f"models:/{MODEL}/1", "--json",
                  uri=str(mlflow_store["uri"]))
    body = json.loads(result.stdout)
    drifted = {d["feature"] for d in body["drift"] if d["drifted"]}
    assert drifted == {"f0"} and body["verdict"] == "FAIL"
    # against an earlier window of the same shifted traffic, nothing drifts
    same = _cli("report", "--decisions", str(log), "--model", f"models:/{MODEL}/1", "--json",
                "--reference-decisions", str(log), uri=str(mlflow_store["uri"]))
    assert not any(d["drifted"] for d in json.loads(same.stdout)["drift"])


def test_bad_parity_input_gets_a_clear_message(mlflow_store: dict[str, Any],
                                               tmp_path: Path) -> None:
    result = _cli("replay", "--decisions", str(tmp_path / "nothing"), "--model",
                  f"models:/{MODEL}/1", uri=str(mlflow_store["uri"]))
    assert result.returncode == 2 and "no decision log" in result.stderr
    result = _cli("replay", "--decisions", str(tmp_path), "--model", "runs:/x",
                  uri=str(mlflow_store["uri"]))
    assert result.returncode == 2 and "models:/NAME/VERSION" in result.stderr
    assert "Traceback" not in result.stderr
