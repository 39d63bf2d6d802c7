"""Shared fixtures. Tests under tests/unit are marked ``unit``, under
tests/integration ``integration``; Ray starts once per session.

Only test modules hold tests: a ``test_*`` function imported into a test
module from a helper would be collected there too, so collection stops on one.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from hypothesis import HealthCheck, settings

from tests.object_store import ObjectStore
from tests.object_store import s3_server as start_s3_server

if TYPE_CHECKING:
    from tests.postgres_server import PostgresServer

ROOT = Path(__file__).resolve().parent.parent

# Property tests draw new examples each run: Hypothesis seeds itself, not from
# pytest-randomly's seed, and prints what replays a failure. Time is no property
# here: on a shared two-core machine one example may outlast Hypothesis' 200 ms
# deadline, or drawing the data may be slow, without anything being wrong.
settings.register_profile("rampart", deadline=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "rampart"))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    borrowed = []
    for item in items:
        tier = "integration" if "integration" in item.path.parts else "unit"
        item.add_marker(getattr(pytest.mark, tier))
        if isinstance(item, pytest.Function):
            defined_in = getattr(item.function, "__module__", None)
            if defined_in != item.module.__name__:
                borrowed.append(f"{item.nodeid} (defined in {defined_in})")
    if borrowed:
        raise pytest.UsageError(
            "tests collected from helper modules; rename these helpers so they do not "
            "start with test_:\n  " + "\n  ".join(borrowed))


@pytest.fixture(scope="session")
def mlflow_store(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """A real MLflow tracking store on SQLite with the demo versions registered."""
    from serving.cli.demo.models import seed_demo_models

    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    seeded = seed_demo_models(uri, root / "artifacts")
    return {"uri": uri, "root": root, "seed": seeded}


@pytest.fixture(scope="session")
def demo_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One data directory for every ``rampart demo`` scenario a session runs:
    the first trains and registers the demo models, the others find them
    (seeding is idempotent; training costs ~30 s), and each run keeps its logs
    in a run directory of its own."""
    return tmp_path_factory.mktemp("demo-data") / "data"


@pytest.fixture(scope="session")
def ray_session() -> Iterator[None]:
    """One local Ray for the whole session (starting Ray costs ~10 s)."""
    import ray

    from serving.gateway.ray_app import clear_haproxy_env, set_ingress_env

    # HAProxy ports and files of this session's own, so a gateway a test starts
    # in a child process (or another run on the machine) does not meet them.
    haproxy_dir = set_ingress_env()
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    # "local": a new cluster of our own, never one another run started on this machine
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    clear_haproxy_env()
    yield
    from ray import serve

    serve.shutdown()
    ray.shutdown()
    if haproxy_dir is not None:
        shutil.rmtree(haproxy_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ObjectStore]:
    """One moto S3 server for the session (see tests/object_store.py); each test
    makes its own bucket with ``s3_server.bucket()``."""
    with start_s3_server(tmp_path_factory.mktemp("moto")) as store:
        yield store


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One real PostgreSQL for the session (tests/postgres_server.py), started
    only if a test asks for it."""
    from tests.postgres_server import PostgresServer

    server = PostgresServer()
    try:
        server.start()
        yield server
    finally:
        server.destroy()


@pytest.fixture(scope="session")
def postgres_url(postgres_server: PostgresServer) -> str:
    """The URL of a database of its own on the session's PostgreSQL."""
    return postgres_server.create_database("session")
