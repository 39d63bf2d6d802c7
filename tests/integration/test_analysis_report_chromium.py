"""The ``rampart analyze --html`` report, rendered by a real browser (Debian's Chromium).

Built from synthetic Parquet logs (no Ray): a planted lift under a
group-sequential plan, so the page has all three timeline plots (with
boundary points) and a forest plot per segment attribute.
"""

from __future__ import annotations

import base64
import datetime as dt
import re
import shutil
import struct
import subprocess
from pathlib import Path

from rollout.experiments.report import write_html
from serving.cli.analyze import run_analysis
from tests.unit.test_analysis import ANALYSIS, AS_OF, START, _config, write_experiment

# Runs after the page's own load handler; records whether the decision is on
# screen (laid out, visible, inside the first viewport) and its colour.
PROBE = (
    "<script>window.addEventListener('load',()=>{const d=document.getElementById('decision');"
    "const r=d.getBoundingClientRect();const s=getComputedStyle(d);"
    "const shown=r.width>0&&r.height>0&&r.top>=0&&r.bottom<=innerHeight&&"
    "s.visibility==='visible'&&s.display!=='none'&&parseFloat(s.opacity)>0;"
    "document.body.dataset.decisionShown=shown?d.innerText:'';"
    "document.body.dataset.decisionColor=s.color;});</script>"
)


def test_report_plots_decode_and_the_decision_is_visible_in_chromium(tmp_path: Path) -> None:
    chromium = shutil.which("chromium")
    assert chromium, ("chromium is missing: `make system-deps` installs Debian's chromium "
                      "(apt-get install chromium); this test needs a real browser")
    write_experiment(tmp_path)
    plan = {**ANALYSIS, "sequential": {"method": "group_sequential", "looks": 4,
                                       "max_units_per_arm": 10_000}}
    report = run_analysis(_config(tmp_path, plan), "exp", as_of=AS_OF,
                          now=START - dt.timedelta(days=1), timeline_points=20,
                          exploratory_segments=("country",))
    assert report.decision.outcome == "ship" and report.decision.arm == "treatment"
    page = tmp_path / "report.html"
    write_html(report, page)
    text = page.read_text(encoding="utf-8")
    expected = [struct.unpack(">II", base64.b64decode(data)[16:24]) for data in
                re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", text)]
    assert len(expected) == 3 + 2  # lift, z, sample ratio; platform and country forests
    probe = tmp_path / "probe.html"
    probe.write_text(text.replace("</body>", PROBE + "</body>"), encoding="utf-8")

    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--window-size=1200,900", f"--user-data-dir={tmp_path / 'chrome'}"]
    dom = subprocess.run([chromium, *flags, "--dump-dom", probe.as_uri()], capture_output=True,
                         text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    body = re.search(r"<body[^>]*>", dom.stdout)
    assert body, dom.stdout[-500:]
    attrs = dict(re.findall(r'data-([a-z-]+)="([^"]*)"', body.group(0)))
    assert attrs.get("plots-loaded") == "5", body.group(0)
    decoded = [tuple(int(n) for n in size.split("x")) for size in attrs["plot-sizes"].split()]
    assert decoded == expected and all(w > 0 and h > 0 for w, h in decoded)
    assert attrs.get("decision-shown") == "Decision: SHIP treatment", body.group(0)
    assert attrs.get("decision-color") == "rgb(26, 127, 55)"  # ship green
