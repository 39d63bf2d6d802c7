"""Free TCP ports for the servers tests start, so that runs can go side by side:
chosen as a gateway chooses its own (serving/gateway/ports.py), outside the
kernel's ephemeral range, so no process binding port 0 takes one meanwhile."""

from __future__ import annotations

from serving.gateway.ports import free_ports

__all__ = ["free_port", "free_ports"]


def free_port(host: str = "127.0.0.1") -> int:
    """One port nothing listens on now (see :func:`free_ports`)."""
    return free_ports(1, host)[0]
