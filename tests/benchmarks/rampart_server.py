"""Server (d): Rampart from deploy/rampart.yaml, pointed at the benchmark's registry.

Usage: ``python rampart_server.py TRACKING_URI WORK_DIR PORT [CONFIG]`` (cwd: the
repository root); CONFIG is another Rampart config file to start from (the tree row's).
Blocks until SIGTERM/SIGINT, then stops the gateway (flushing its logs).
"""

from __future__ import annotations

import os
import sys

# This directory holds the benchmark's own ``serving.py``; drop it from the path so
# ``serving`` is Rampart's package here and in the Ray workers (which inherit
# the driver's sys.path).
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]
_ROOT = os.path.dirname(os.path.dirname(_HERE))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import signal  # noqa: E402
import threading  # noqa: E402
from pathlib import Path  # noqa: E402

import yaml  # noqa: E402


def main() -> int:
    from serving.cli.launch import start_gateway
    from serving.kernel.config import parse_config

    uri, work_dir, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    config = Path(sys.argv[4]) if len(sys.argv) > 4 else Path(_ROOT) / "deploy" / "rampart.yaml"
    with open(config) as fh:
        data = yaml.safe_load(fh)
    data["tracking_uri"] = uri
    data["data_dir"] = work_dir
    data["decision_log"]["path"] = os.path.join(work_dir, "decisions")
    data["telemetry"]["metrics_dir"] = os.path.join(work_dir, "metrics")
    data["server"]["port"] = port
    data["server"]["num_replicas"] = 1
    cfg = parse_config(data)

    stop = threading.Event()
    gw = start_gateway(cfg)
    try:
        # ray.init installs its own SIGTERM handler; replace it with a clean stop.
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        print(f"READY {gw.url}", flush=True)
        while not stop.wait(0.5):
            pass
    finally:
        gw.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
