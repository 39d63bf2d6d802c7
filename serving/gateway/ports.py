"""Ports a gateway chooses for the servers it starts (HAProxy's stats and
metrics, Serve's fallback proxy), and that the tests choose for theirs."""

from __future__ import annotations

import random
import socket
from contextlib import ExitStack
from pathlib import Path

# Ray binds its workers' ports explicitly from 10002 to 19999 (its defaults).
_FIRST_CHOSEN_PORT = 20000
_EPHEMERAL_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")


def ephemeral_floor() -> int | None:
    """The lowest port the kernel hands out for a bind to port 0 (Linux), or
    None where that is not known."""
    try:
        return int(_EPHEMERAL_RANGE_FILE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct ports nothing listens on now, all held until chosen.

    Chosen between Ray's worker ports and the kernel's ephemeral range where
    that range is known: between our choice and HAProxy's bind, Ray starts
    dozens of processes that bind to port 0, and a port the kernel hands one
    of them can then never be one of ours (it was, once in a test run: the
    second gateway's HAProxy found its metrics port taken). Elsewhere, or
    when that range is full, the kernel's own picks.
    """
    floor = ephemeral_floor()
    candidates: list[int] = []
    if floor is not None and floor - _FIRST_CHOSEN_PORT > 4 * count:
        candidates = random.SystemRandom().sample(range(_FIRST_CHOSEN_PORT, floor),
                                                  k=min(floor - _FIRST_CHOSEN_PORT, 64 * count))
    with ExitStack() as stack:
        ports: list[int] = []
        for candidate in [*candidates, *([0] * count)]:
            if len(ports) == count:
                break
            sock = socket.socket()
            try:
                sock.bind((host, candidate))
            except OSError:
                sock.close()
                continue
            stack.enter_context(sock)
            ports.append(int(sock.getsockname()[1]))
        return ports
