"""What every command shares: the default config, the one-line error, and
loading a config or a routing table with a clear message."""

from __future__ import annotations

import socket
import sys
import time
from importlib import resources
from pathlib import Path
from typing import Any

from serving.kernel.errors import LogStorageUnavailable, RampartError

# The default config ships inside the package, so every command finds it from
# any working directory. DEFAULT_CONFIG is its path on disk, for argparse
# defaults and help texts; it is never opened by that path (see
# load_config_or_exit), so a package that is not a directory still works.
_DEFAULT_RESOURCE = resources.files("serving.defaults").joinpath("rampart.yaml")
DEFAULT_CONFIG = Path(str(_DEFAULT_RESOURCE))

# Where `rampart models seed-demo` registers the demo versions; pointing at
# them is the fix for a config that names a version MLflow does not have.
SEED_DEMO_HINT = "Run `rampart models seed-demo` for the demo models."


class CliError(Exception):
    """A user mistake: printed as one message, exit code 2."""


class StoreUnreachable(CliError):
    """The MLflow tracking server does not answer: no hint about seeding
    models applies."""


# How long a command waits for an MLflow tracking server to answer before
# saying it is unreachable (MLflow's own client would retry for minutes).
STORE_PROBE_TIMEOUT_S = 5.0


def check_tracking_store(uri: str) -> None:
    """A :class:`StoreUnreachable` naming ``uri`` when it is an MLflow tracking
    server that does not answer within :data:`STORE_PROBE_TIMEOUT_S`; and, in
    this process, MLflow's client bounded for the rest of the command (a
    server that goes away after the check costs seconds, not minutes)."""
    from models.registry import RegistryUnavailable, bound_http_retries, check_reachable

    bound_http_retries()
    try:
        check_reachable(uri, STORE_PROBE_TIMEOUT_S)
    except RegistryUnavailable as exc:
        raise StoreUnreachable(str(exc)) from None


def project_error(exc: BaseException) -> RampartError | None:
    """``exc`` as one of the project's errors, which the CLI prints on one line
    with exit code 2; None for anything else (a bug, shown with its traceback).

    A log's storage failing (no such bucket, no credentials, an endpoint that
    does not answer) is :class:`LogStorageUnavailable`. The storage module is
    looked up, not imported: if nothing loaded it, it raised nothing.
    """
    if isinstance(exc, RampartError):
        return exc
    storage = sys.modules.get("telemetry.storage")
    if storage is not None and isinstance(exc, storage.LogStorageError):
        return LogStorageUnavailable(str(exc))
    return None


def default_config_document() -> Any:
    """The packaged default config as parsed YAML (a fresh mapping each call)."""
    import yaml

    return yaml.safe_load(_DEFAULT_RESOURCE.read_text(encoding="utf-8"))


def load_config_or_exit(path: Path) -> Any:
    """Read and validate a config file; the packaged default when ``path`` is
    :data:`DEFAULT_CONFIG`. A mistake is a :class:`CliError`."""
    from serving.documents import load_config
    from serving.kernel.config import parse_config
    from serving.kernel.errors import ConfigError

    try:
        if path == DEFAULT_CONFIG:
            return parse_config(default_config_document(), source=str(DEFAULT_CONFIG))
        return load_config(path)
    except ConfigError as exc:
        raise CliError(str(exc)) from None


def model_config(model_uri: str, tracking_uri: str | None) -> Any:
    """The config that serves one model: ``models:/NAME/VERSION`` or
    ``models:/NAME@ALIAS`` as the only model and the default route, no
    experiments or shadows, and the packaged defaults for everything else
    (data directory, logs, server). A malformed URI is a :class:`CliError`.

    The version stays as given: an alias is resolved when the routing table
    is built, as for a config file, so moving the alias moves the traffic.
    """
    from models.registry import parse_model_uri
    from serving.kernel.config import parse_config
    from serving.kernel.errors import ConfigError

    try:
        name, version = parse_model_uri(model_uri)
    except ValueError as exc:
        raise CliError(f"--model: {exc}") from None
    data = default_config_document()
    data.update(
        models=[{"name": name, "versions": [version]}],
        default={"model": name, "version": version},
        experiments=[],
        shadows=[],
        feature_transforms=[],
        tracking_uri=tracking_uri,
    )
    try:
        return parse_config(data, source=f"--model {model_uri}")
    except ConfigError as exc:
        raise CliError(str(exc)) from None


def registry_for(config: Any) -> Any:
    import importlib
    import logging

    from models.registry import MlflowRegistry

    # MLflow narrates creating a new SQLite store at INFO, around the one line a
    # command prints. Its import configures its logger, so quieten it after
    # that and before the client opens the store.
    importlib.import_module("mlflow")
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    uri = config.resolved_tracking_uri()
    if uri.startswith("sqlite:///"):
        # MLflow would create an empty store here and then find no model in it:
        # a missing file is a mistake to report, not a store to make.
        path = Path(uri.removeprefix("sqlite:///"))
        if not path.is_file():
            raise CliError(f"no MLflow store at {path}")
    check_tracking_store(uri)
    return MlflowRegistry(uri)


def routing_table(config: Any, hint: str = SEED_DEMO_HINT) -> Any:
    """The config's routing table with every alias resolved in MLflow; a version
    MLflow does not have is a :class:`CliError` ending with ``hint``."""
    from mlflow.exceptions import MlflowException
    from sqlalchemy.exc import SQLAlchemyError

    from models.registry import RegistryUnavailable, UnknownModelVersion
    from serving.routing.router import build_routing_table

    try:
        registry = registry_for(config)
    except StoreUnreachable:
        raise
    except CliError as exc:
        raise CliError(f"{exc}. {hint}" if hint else str(exc)) from None
    except (MlflowException, SQLAlchemyError) as exc:
        raise CliError(f"cannot open the MLflow store {config.resolved_tracking_uri()}: "
                       f"{_first_line(exc)}") from None
    try:
        return build_routing_table(config, registry.resolve)
    except RegistryUnavailable as exc:  # it answered the check, then went away
        raise StoreUnreachable(f"cannot read the MLflow store {registry.registry_uri}: "
                               f"{exc}") from None
    except UnknownModelVersion as exc:
        if _unreadable(exc.__cause__):
            raise CliError(f"cannot read the MLflow store {registry.registry_uri}: "
                           f"{_first_line(exc.__cause__)}") from None
        raise CliError(f"{exc}. {hint}" if hint else str(exc)) from None
    except (MlflowException, SQLAlchemyError) as exc:
        raise CliError(f"cannot read the MLflow store {registry.registry_uri}: "
                       f"{_first_line(exc)}") from None


def _first_line(exc: BaseException | None) -> str:
    text = str(exc or "").strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _unreadable(exc: BaseException | None) -> bool:
    """An MLflow error that says the store itself could not be read (not a
    missing model)."""
    from sqlalchemy.exc import SQLAlchemyError

    seen = exc
    while seen is not None:
        if isinstance(seen, SQLAlchemyError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def port_free(host: str, port: int, wait_s: float = 0.0) -> bool:
    """Whether ``host:port`` can be bound, trying for up to ``wait_s``: a
    predecessor just ended (a killed gateway's HAProxy) may take a moment to
    let its listener go."""
    deadline = time.monotonic() + wait_s
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, port))
            except OSError:
                pass
            else:
                return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)


def load_plan_or_exit(path: Path) -> Any:
    """Read and validate a rollout plan (YAML or JSON); a mistake is a :class:`CliError`."""
    from rollout.core.plan import parse_plan
    from serving.documents import read_document
    from serving.kernel.errors import PlanError

    try:
        return parse_plan(read_document(path, "plan", PlanError), source=str(path))
    except PlanError as exc:
        raise CliError(str(exc)) from None
