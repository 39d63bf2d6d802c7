"""`rampart demo --scenario ... --json`, run as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
RAMPART = str(Path(sys.executable).parent / "rampart")


def test_demo_scenario_prints_its_result_as_the_last_json_line(tmp_path: Path) -> None:
    config = tmp_path / "rampart.yaml"
    text = (ROOT / "deploy" / "rampart.yaml").read_text()
    config.write_text(text.replace("data_dir: .rampart", f"data_dir: {tmp_path / 'data'}"))
    result = subprocess.run(
        [RAMPART, "demo", "--config", str(config), "--scenario", "healthy", "--json",
         "--port", str(free_port())],
        capture_output=True, text=True, timeout=400, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    body = json.loads(result.stdout.strip().splitlines()[-1])
    assert body["scenario"] == "healthy" and body["outcome"] == "promoted"
    assert body["interval_s"] == 1.0 and body["fault_onset_s"] is None
    assert [t["to"] for t in body["timeline"]][-1] == "promoted"
