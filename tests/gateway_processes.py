"""What tests ask of a running ``rampart serve``: whether it answers, and which
HAProxy processes (with their config files) one run started."""

from __future__ import annotations

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
