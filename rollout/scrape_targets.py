"""The gateway replicas Prometheus should scrape, as the controller hears of them.

Every replica serves its own metrics on a port of its own and names that
endpoint in each routing long-poll it sends the controller; a replica not
heard from for ``ttl_s`` (it keeps one long-poll parked at all times, renewed
at least every 30 s) is gone. The list is written as a Prometheus
``file_sd_configs`` file, replaced whole (written aside, then renamed), so
Prometheus never reads half of it.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

SCRAPE_JOB = "rampart-gateway"


class ScrapeTargets:
    def __init__(self, ttl_s: float = 75.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s = ttl_s
        self.clock = clock
        self._replicas: dict[str, tuple[str, str, float]] = {}  # name -> (endpoint, node, seen)
        self._lock = threading.Lock()
        self._written: list[dict[str, Any]] | None = None

    def seen(self, replica: str, endpoint: str, node: str) -> None:
        """``replica`` is alive and serves its metrics at ``endpoint`` (host:port)."""
        with self._lock:
            self._replicas[replica] = (endpoint, node, self.clock())

    def groups(self) -> list[dict[str, Any]]:
        """``file_sd``/``http_sd`` target groups: one per live replica, by name."""
        cutoff = self.clock() - self.ttl_s
        with self._lock:
            for name in [n for n, (_, _, at) in self._replicas.items() if at < cutoff]:
                del self._replicas[name]
            items = sorted(self._replicas.items())
        return [{"targets": [endpoint],
                 "labels": {"replica": name, "node": node, "job": SCRAPE_JOB}}
                for name, (endpoint, node, _) in items]

    def write(self, path: Path) -> bool:
        """Write the groups to ``path`` when they changed; True if written."""
        groups = self.groups()
        if groups == self._written:
            return False
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(groups, indent=1))
        os.replace(tmp, path)
        self._written = groups
        return True
