"""Make ``rampart serve`` restartable after a SIGKILL.

Ray's raylet and GCS share the driver's fate, but some helpers it starts
(HAProxy, the dashboard and runtime-env agents) outlive a killed driver and
keep the gateway's port. Every process a ``rampart serve`` starts inherits an
environment marker with that run's id; the next ``rampart serve`` on the same
data directory finds the previous run's leftovers by that marker and ends them
before it binds the port. A previous run that is still alive is never touched.

A killed gateway's HAProxy also names its own directory (``rampart-hp-*``,
owned by the gateway's pid) on its command line: any such HAProxy whose owner
is dead is ended too, whatever data directory its gateway used, since it
would keep answering on that gateway's port.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
import uuid
from pathlib import Path

MARKER_ENV = "RAMPART_SERVE_INSTANCE"
STATE_FILE = "serve.json"


class AlreadyServing(RuntimeError):
    pass


def _is_rampart(pid: int) -> bool:
    try:
        return b"rampart" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def processes_marked(instance: str) -> list[int]:
    """PIDs whose environment carries ``RAMPART_SERVE_INSTANCE=instance``."""
    return processes_with_env(MARKER_ENV, instance)


def processes_with_env(name: str, value: str) -> list[int]:
    """PIDs (other than this one) whose environment has ``name=value``."""
    needle = f"{name}={value}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if needle in environ.split(b"\0"):
            found.append(int(entry.name))
    return found


def reap_previous(data_dir: Path, timeout_s: float = 10.0) -> list[int]:
    """End what a previous, dead ``rampart serve`` left running, and the HAProxy
    of any killed gateway on this host; return the PIDs of the former."""
    import tempfile

    from serving.gateway.ray_app import pid_alive, remove_stale_haproxy_dirs

    remove_stale_haproxy_dirs(Path(tempfile.gettempdir()))
    state_path = data_dir / STATE_FILE
    try:
        state = json.loads(state_path.read_text())
    except (OSError, ValueError):
        return []
    pid, instance = int(state.get("pid", 0)), str(state.get("instance", ""))
    if pid and pid_alive(pid) and _is_rampart(pid):
        raise AlreadyServing(f"rampart serve (pid {pid}) is already running on {data_dir}")
    leftovers = processes_marked(instance) if instance else []
    for leftover in leftovers:
        with contextlib.suppress(ProcessLookupError):
            os.kill(leftover, signal.SIGKILL)
    deadline = time.monotonic() + timeout_s
    while any(pid_alive(p) for p in leftovers) and time.monotonic() < deadline:
        time.sleep(0.05)
    state_path.unlink(missing_ok=True)
    return leftovers


def claim(data_dir: Path) -> str:
    """Mark this process (and so everything it starts) and record the run."""
    instance = uuid.uuid4().hex
    os.environ[MARKER_ENV] = instance
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / STATE_FILE).write_text(json.dumps({"pid": os.getpid(), "instance": instance}))
    return instance


def release(data_dir: Path) -> None:
    (data_dir / STATE_FILE).unlink(missing_ok=True)
