"""Shared fixtures. Tests under tests/unit are marked ``unit``, under
tests/integration ``integration``; Ray starts once per session."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        tier = "integration" if "integration" in item.path.parts else "unit"
        item.add_marker(getattr(pytest.mark, tier))


@pytest.fixture(scope="session")
def mlflow_store(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """A real MLflow tracking store on SQLite with the demo versions registered."""
    from serving.cli.demo.models import seed_demo_models

    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    seeded = seed_demo_models(uri, root / "artifacts")
    return {"uri": uri, "root": root, "seed": seeded}


@pytest.fixture(scope="session")
def ray_session() -> Iterator[None]:
    """One local Ray for the whole session (starting Ray costs ~10 s)."""
    import ray

    from serving.gateway.ray_app import set_ingress_env

    set_ingress_env()
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    from ray import serve

    serve.shutdown()
    ray.shutdown()
