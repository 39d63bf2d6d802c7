"""What every command shares: the default config, the one-line error, and
loading a config or a routing table with a clear message."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

DEFAULT_CONFIG = Path("deploy/rampart.yaml")


class CliError(Exception):
    """A user mistake: printed as one message, exit code 2."""


def load_config_or_exit(path: Path) -> Any:
    from serving.documents import load_config
    from serving.kernel.errors import ConfigError

    try:
        return load_config(path)
    except ConfigError as exc:
        raise CliError(str(exc)) from None


def registry_for(config: Any) -> Any:
    from models.registry import MlflowRegistry

    return MlflowRegistry(config.resolved_tracking_uri())


def routing_table(config: Any) -> Any:
    from models.registry import UnknownModelVersion
    from serving.routing.router import build_routing_table

    try:
        return build_routing_table(config, registry_for(config).resolve)
    except UnknownModelVersion as exc:
        raise CliError(f"{exc}. Run `rampart models seed-demo` for the demo models.") from None


def port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def load_plan_or_exit(path: Path) -> Any:
    """Read and validate a rollout plan (YAML or JSON); a mistake is a :class:`CliError`."""
    from rollout.core.plan import parse_plan
    from serving.documents import read_document
    from serving.kernel.errors import PlanError

    try:
        return parse_plan(read_document(path, "plan", PlanError), source=str(path))
    except PlanError as exc:
        raise CliError(str(exc)) from None
