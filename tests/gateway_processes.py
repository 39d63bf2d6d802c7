"""What tests ask of a running ``rampart serve``: whether it answers, and which
HAProxy processes (with their config files) one run started; and a
``rampart serve`` run of a test's own."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from serving.cli.process_guard import processes_marked


def healthy(url: str) -> bool:
    """``url``'s ``/healthz`` answers 200 now."""
    try:
        return httpx.get(f"{url}/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def haproxy_configs(instance: str) -> dict[int, str]:
    """The HAProxy processes of one ``rampart serve`` run, with their config files."""
    found = {}
    for pid in processes_marked(instance):
        try:
            args = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
        except OSError:
            continue
        if Path(args[0]).name == "haproxy" and "-f" in args:
            found[pid] = args[args.index("-f") + 1]
    return found


ROOT = Path(__file__).resolve().parents[1]
RAMPART = Path(sys.executable).with_name("rampart")


@dataclass
class ServeRun:
    """A ``rampart serve`` child process; ``output`` is what it printed, once it ended."""

    process: subprocess.Popen[str]
    output: str = ""


@contextmanager
def serve_gateway(config: Path, url: str, env: Mapping[str, str] | None = None,
                  start_timeout_s: float = 180.0) -> Iterator[ServeRun]:
    """Run ``rampart serve --config config`` until the block ends (then SIGTERM,
    and wait for it), yielding once ``url`` answers ``/healthz``. The child
    gets a Ray and HAProxy ports of its own: no ``RAY_ADDRESS`` or HAProxy
    settings of this process reach it."""
    child_env = {k: v for k, v in os.environ.items()
                 if not k.startswith(("RAY_SERVE_HAPROXY", "RAY_ADDRESS"))}
    child_env.update(env or {})
    process = subprocess.Popen([str(RAMPART), "serve", "--config", str(config)], cwd=ROOT,
                               env=child_env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True)
    run = ServeRun(process)
    try:
        deadline = time.monotonic() + start_timeout_s
        while not healthy(url):
            assert process.poll() is None and time.monotonic() < deadline, "no gateway came up"
            time.sleep(0.5)
        yield run
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        run.output = process.communicate(timeout=120)[0]
