"""Free TCP ports for the servers tests start, so that runs can go side by side."""

from __future__ import annotations

import socket
from contextlib import ExitStack


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct ports nothing listens on now: the kernel's picks for
    binds to port 0, all held open until every one is chosen.

    Ask right before starting the servers that take them: another process
    could take one in between, but the kernel picks among some 28,000 ports,
    so two runs side by side rarely meet.
    """
    with ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind((host, 0))
            ports.append(int(sock.getsockname()[1]))
        return ports


def free_port(host: str = "127.0.0.1") -> int:
    """One port nothing listens on now (see :func:`free_ports`)."""
    return free_ports(1, host)[0]
