"""Hostile input, generated from the gateway's own OpenAPI document.

Schemathesis draws requests for every operation the document declares, both
ones that fit the schema and ones that do not, with no credentials, wrong
ones and the right ones, against an in-process gateway with a real rollout
control plane (SQLite) and a real outcomes log. Every answer must be below
500, every 4xx a JSON error with a message, and every answer must conform to
what the document says (status, content type, body schema). Afterwards the
same gateway still answers a normal prediction with the right model.

Bounded: ``EXAMPLES`` cases per operation, mode and credential, so the file
runs in about a minute (``HYPOTHESIS_PROFILE`` does not change that bound).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import APIOperation, Case, CheckContext, GenerationMode, Response
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from rollout.commands import LocalControlPlane
from rollout.service import RolloutService
from rollout.store import RolloutStore
from serving.gateway.core import GatewayCore, build_app
from serving.routing.router import route
from telemetry.outcomes_log import OutcomesLogWriter
from tests.unit.fakes import (
    FEATURES,
    Clock,
    NoTraffic,
    WritableRegistry,
    make_config,
    make_core,
)

pytestmark = pytest.mark.integration

ADMIN = "admin-s3cret"
INGEST = "ingest-s3cret"
# Cases per operation, generation mode and credential; RAMPART_FUZZ_EXAMPLES=200
# searches harder (minutes), the default keeps `make test` near a minute.
EXAMPLES = int(os.environ.get("RAMPART_FUZZ_EXAMPLES", "10"))
CREDENTIALS = {
    "none": {},
    "wrong": {"Authorization": "Bearer not-the-token"},
    "admin": {"Authorization": f"Bearer {ADMIN}"},
    "ingest": {"Authorization": f"Bearer {INGEST}"},
}
GOOD_FEATURES = {name: 0.1 * i for i, name in enumerate(FEATURES)}
LIVE_ROLLOUT = "ro-live"
LIVE_PLAN = {"id": LIVE_ROLLOUT, "model_name": "clf", "baseline_version": "1",
             "candidate_version": "2", "steps": [1, 50, 100], "interval_s": 1,
             "min_requests": 20}


def error_has_a_message(ctx: CheckContext, response: Response, case: Case) -> bool | None:
    """Every 4xx/5xx is JSON naming what is wrong: Rampart's ``{"error": {"message"}}``,
    or, on the V2 protocol's routes, V2's ``{"error": "<message>"}``."""
    if response.status_code < 400:
        return None
    body = json.loads(response.content)
    error = body.get("error") if isinstance(body, dict) else None
    message = error if case.path.startswith("/v2/") else (
        error.get("message") if isinstance(error, dict) else None)
    assert isinstance(message, str) and message.strip(), (
        f"{response.status_code} without an error message: {response.content[:300]!r}")
    return True


CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance, error_has_a_message]
# MLflow's scoring server answers its probes with an empty line labelled JSON, and
# the gateway answers them as MLflow does: no body to hold to a schema.
MLFLOW_PROBES = ("/ping", "/health")


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[tuple[FastAPI, GatewayCore]]:
    core, _ = make_core(None)
    core.outcomes_log = OutcomesLogWriter(tmp_path / "outcomes", "fuzz", batch_rows=100_000,
                                          flush_interval_s=3600)
    service = RolloutService(
        make_config(experiments=[]), RolloutStore(f"sqlite:///{tmp_path / 'rollouts.db'}"),
        WritableRegistry(), lambda plan: NoTraffic(), Clock(),
        notifier=None)  # no webhook is ever posted from here
    app = build_app(core, LocalControlPlane(service), ADMIN, ingest_token=INGEST)
    with TestClient(app) as client:  # a rollout in progress, for the commands to act on
        started = client.post("/v1/admin/rollouts", json=LIVE_PLAN,
                              headers=CREDENTIALS["admin"])
        assert started.status_code == 201, started.text
    yield app, core
    core.close()


def fuzz(app: FastAPI, mode: GenerationMode, headers: dict[str, str]) -> dict[str, set[int]]:
    """Every operation, ``EXAMPLES`` cases each; the statuses answered, by operation."""
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    statuses: dict[str, set[int]] = {operation.label: set() for operation in operations}
    for operation in operations:
        checks = [c for c in CHECKS if not (
            operation.path in MLFLOW_PROBES and c is response_schema_conformance)]
        # Random rollout ids find no rollout: the live one is fuzzed as well.
        paths = [{}, {"rollout_id": LIVE_ROLLOUT}] if "{rollout_id}" in operation.path else [{}]
        for path_parameters in paths:
            try:
                fuzz_one(operation, mode, headers, checks, path_parameters,
                         statuses[operation.label])
            except Unsatisfiable:
                # Nothing in the request can be invalid (no body, at most a path
                # segment any string fits): the positive run covers the operation.
                if mode is not GenerationMode.NEGATIVE:
                    raise
    return statuses


def fuzz_one(operation: APIOperation, mode: GenerationMode, headers: dict[str, str],
             checks: list[Any], path_parameters: dict[str, str], statuses: set[int]) -> None:
    @settings(max_examples=EXAMPLES, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(generation_mode=mode,
                                      path_parameters=path_parameters or None))
    def one(case: Case) -> None:
        statuses.add(case.call_and_validate(headers=headers, checks=checks).status_code)

    one()


def assert_still_serves(app: FastAPI, core: GatewayCore) -> None:
    with TestClient(app) as client:
        r = client.post("/v1/predict", json={"unit_id": "user-7", "features": GOOD_FEATURES,
                                             "context": {"country": "US"}})
        assert r.status_code == 200, r.text
        expected = route(core.table, "user-7", {"country": "US"})
        assert (r.json()["model_name"], r.json()["model_version"]) == (
            expected.model.name, expected.model.version)


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
@pytest.mark.parametrize("credential", sorted(CREDENTIALS))
def test_fuzzed_requests_get_no_5xx_and_a_named_4xx_then_the_gateway_still_serves(
    gateway: tuple[FastAPI, GatewayCore], mode: GenerationMode, credential: str
) -> None:
    app, core = gateway
    statuses = fuzz(app, mode, CREDENTIALS[credential])
    assert len(statuses) >= 25
    admin = {label: answered for label, answered in statuses.items()
             if " /v1/admin/" in label and answered}
    assert admin
    if credential == "admin":  # the token opens every admin route
        assert all(answered - {401} for answered in admin.values()), admin
    else:  # and nothing else does
        assert all(answered == {401} for answered in admin.values()), admin
    assert_still_serves(app, core)


def test_the_document_declares_every_admin_body_and_credential(
    gateway: tuple[FastAPI, GatewayCore],
) -> None:
    app, _ = gateway
    spec: dict[str, Any] = app.openapi()
    schemes = spec["components"]["securitySchemes"]
    assert {s["scheme"] for s in schemes.values()} == {"bearer"}
    paths = spec["paths"]
    for path, operations in paths.items():
        for method, operation in operations.items():
            if path.startswith("/v1/admin/"):
                assert operation["security"] == [{"adminBearer": []}], (method, path)
                if method == "post":
                    assert "application/json" in operation["requestBody"]["content"], path
    assert paths["/v1/outcomes"]["post"]["security"] == [{"ingestBearer": []}]
    plan = paths["/v1/admin/rollouts"]["post"]["requestBody"]["content"]["application/json"]
    assert {"model_name", "baseline_version", "candidate_version"} <= set(
        plan["schema"]["required"])
    alerts = paths["/v1/admin/alerts"]["post"]["requestBody"]["content"]["application/json"]
    assert alerts["schema"]["required"] == ["alerts"]
