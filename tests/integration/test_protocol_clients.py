"""Third-party clients, unchanged, talk to Rampart over real HTTP: MLflow's own
scoring-server client for ``/invocations`` and Triton's HTTP client for the
Open Inference Protocol V2, against MLflow's answers for the same rows.

The gateway is built as a replica builds its core (versions loaded by
:class:`MlflowRegistry`, routing, worker pool and unit policy from a config)
and served by uvicorn on loopback (``tests/http_server.py``); no Ray.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import pytest
import tritonclient.http as triton
from mlflow.models import get_model_info
from mlflow.pyfunc.scoring_server import predictions_to_json
from mlflow.pyfunc.scoring_server.client import ScoringServerClient
from prometheus_client import CollectorRegistry
from tritonclient.utils import InferenceServerException

from models.registry import MlflowRegistry
from serving.gateway.core import GatewayCore, build_app
from serving.gateway.ray_app import model_pool, unit_policy
from serving.gateway.scorers import LoadedScorers
from serving.kernel.config import parse_config
from serving.routing.router import build_routing_table
from telemetry.decision_log import DecisionLogWriter, read_decisions
from telemetry.metrics import RequestMetrics
from tests.http_server import Served, serve_http
from tests.model_zoo import ZooModel, log_zoo

pytestmark = pytest.mark.integration

KEYS = ("hgb", "pipeline")  # a tree ensemble with an optional column; a string-column pipeline
REL = 1e-9
ABS = 1e-12
V2_TYPES = {"double": "FP64", "float": "FP32", "long": "INT64", "integer": "INT32",
            "boolean": "BOOL", "string": "BYTES"}


@dataclass(frozen=True)
class Store:
    uri: str
    zoo: dict[str, ZooModel]
    registry: MlflowRegistry


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    root = tmp_path_factory.mktemp("clients")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    return Store(uri, log_zoo(uri, root / "artifacts", keys=KEYS), MlflowRegistry(uri))


@pytest.fixture(autouse=True)
def reference_store(store: Store) -> None:
    """MLflow's own loaders (the references) read this module's store."""
    mlflow.set_tracking_uri(store.uri)
    mlflow.set_registry_uri(store.uri)


@dataclass
class Gateway:
    served: Served
    model: ZooModel
    writer: DecisionLogWriter
    directory: Path

    def decisions(self) -> list[dict[str, Any]]:
        self.writer.flush()
        if not self.directory.exists():  # the writer makes it with its first file
            return []
        rows: list[dict[str, Any]] = read_decisions(self.directory).to_pylist()
        return rows


@pytest.fixture
def gateway(store: Store, tmp_path: Path) -> Iterator[Callable[[str], Gateway]]:
    """A gateway serving one zoo model (also the default) on a loopback port."""
    stack: list[tuple[Any, GatewayCore]] = []

    def start(key: str) -> Gateway:
        model = store.zoo[key]
        config = parse_config({
            "models": [{"name": model.name, "versions": [model.version]}],
            "default": {"model": model.name, "version": model.version}})
        table = build_routing_table(config, store.registry.resolve)
        scorers = LoadedScorers({(r.name, r.version): store.registry.load(r.name, r.version)
                                 for r in table.model_refs()})
        directory = tmp_path / f"decisions-{key}"
        writer = DecisionLogWriter(directory, "clients", batch_rows=100_000,
                                   flush_interval_s=3600)
        core = GatewayCore(table, scorers, RequestMetrics(CollectorRegistry()), None, writer,
                           pool=model_pool(config), unit_policy=unit_policy(config))
        server = serve_http(build_app(core))
        served = server.__enter__()
        stack.append((server, core))
        return Gateway(served, model, writer, directory)

    yield start
    for server, core in reversed(stack):
        server.__exit__(None, None, None)
        core.close()


# ----------------------------------------------------------------- references


def pyfunc_predict(model: ZooModel, example: Any = None) -> Any:
    return mlflow.pyfunc.load_model(model.uri).predict(
        model.example if example is None else example)


def mlflow_written(raw: Any) -> Any:
    """``raw`` as MLflow's scoring server writes it, parsed back."""
    out = io.StringIO()
    predictions_to_json(raw, out)  # type: ignore[no-untyped-call]
    return json.loads(out.getvalue())


def assert_close(got: Any, expected: Any) -> None:
    """JSON values equal, floats to 1e-9 relative."""
    if isinstance(expected, dict):
        assert isinstance(got, dict) and list(got) == list(expected)
        for key in expected:
            assert_close(got[key], expected[key])
    elif isinstance(expected, list):
        assert isinstance(got, list) and len(got) == len(expected), (got, expected)
        for a, b in zip(got, expected, strict=True):
            assert_close(a, b)
    elif isinstance(expected, float):
        assert type(got) is float and got == pytest.approx(expected, rel=REL, abs=ABS)
    else:
        assert type(got) is type(expected) and got == expected, (got, expected)


def v2_types(model: ZooModel) -> dict[str, str]:
    """The V2 datatype of each signature column."""
    signature = get_model_info(model.uri).signature
    return {spec.name: V2_TYPES[spec.type.name] for spec in signature.inputs.inputs}


def infer_inputs(model: ZooModel, frame: pd.DataFrame) -> list[triton.InferInput]:
    """The frame's columns as Triton inputs, JSON-encoded; a column missing
    from every row of the frame is not sent (a V2 tensor has no null)."""
    inputs = []
    for name, datatype in v2_types(model).items():
        column = frame[name]
        if column.isna().all():
            continue
        data = column.to_numpy(dtype=object) if datatype == "BYTES" else column.to_numpy()
        tensor = triton.InferInput(name, [len(frame)], datatype)
        tensor.set_data_from_numpy(data, binary_data=False)
        inputs.append(tensor)
    return inputs


def by_missing_values(frame: pd.DataFrame) -> list[pd.DataFrame]:
    """The frame's rows grouped by which columns they miss (one V2 request each)."""
    keys = frame.isna().apply(lambda row: tuple(row), axis=1)
    return [frame.loc[keys == key] for key in dict.fromkeys(keys)]


# ----------------------------------------------------------------- MLflow's client


def mlflow_client(gateway: Gateway) -> ScoringServerClient:
    client = ScoringServerClient(gateway.served.host,  # type: ignore[no-untyped-call]
                                 gateway.served.port)
    # As against `mlflow models serve`: the client polls /ping before scoring.
    client.wait_server_ready()  # type: ignore[no-untyped-call]
    return client


@pytest.mark.parametrize("key", KEYS)
def test_mlflow_scoring_client_gets_what_mlflow_serves(
        gateway: Callable[[str], Gateway], key: str) -> None:
    served = gateway(key)
    model = served.model
    response = mlflow_client(served).invoke(model.example, params={"unit_id": "customer-3"})
    expected = pyfunc_predict(model)
    assert_close(dict(response), mlflow_written(expected))
    np.testing.assert_array_equal(response.get_predictions(predictions_format="ndarray"),
                                  expected)
    rows = served.decisions()
    assert len(rows) == len(model.example)
    assert {(r["unit_id"], r["unit_source"], r["model_name"], r["model_version"], r["status"])
            for r in rows} == {("customer-3", "param", model.name, model.version, "ok")}


@pytest.mark.parametrize("key", KEYS)
def test_mlflow_scoring_client_reads_a_refusal_naming_the_field(
        gateway: Callable[[str], Gateway], key: str) -> None:
    served = gateway(key)
    model = served.model
    client = mlflow_client(served)
    long_column = {"hgb": "attempts", "pipeline": "visits"}[key]
    spoiled = model.example.astype({long_column: np.float64})
    spoiled.loc[2, long_column] = 2.5
    with pytest.raises(Exception, match=r"error code 422") as refused:
        client.invoke(spoiled, params={"unit_id": "customer-3"})
    body = json.loads(str(refused.value).split("response: ", 1)[1].removesuffix(")"))
    assert body["error_code"] == "INVALID_PARAMETER_VALUE"
    assert body["message"].startswith(f"rows.2.{long_column}: expected an integer (long)")
    with pytest.raises(Exception, match=r"error code 400") as no_unit:
        client.invoke(model.example)
    assert '\\"params\\": {\\"unit_id\\": ...}' in str(no_unit.value)


# ----------------------------------------------------------------- Triton's client


@pytest.fixture
def triton_client() -> Iterator[Callable[[Gateway], triton.InferenceServerClient]]:
    clients: list[triton.InferenceServerClient] = []

    def connect(served: Gateway) -> triton.InferenceServerClient:
        client = triton.InferenceServerClient(f"{served.served.host}:{served.served.port}")
        clients.append(client)
        return client

    yield connect
    for client in clients:
        client.close()


@pytest.mark.parametrize("key", KEYS)
def test_triton_client_sees_a_live_ready_model_and_its_inputs(
        gateway: Callable[[str], Gateway],
        triton_client: Callable[[Gateway], triton.InferenceServerClient], key: str) -> None:
    served = gateway(key)
    model = served.model
    client = triton_client(served)
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready(model.name)
    assert not client.is_model_ready("zoo-not-served")
    metadata = client.get_model_metadata(model.name)
    assert metadata["name"] == model.name and metadata["versions"] == [model.version]
    assert metadata["inputs"] == [{"name": name, "datatype": datatype, "shape": [-1]}
                                  for name, datatype in v2_types(model).items()]
    with pytest.raises(InferenceServerException) as unknown:
        client.get_model_metadata("zoo-not-served")
    assert unknown.value.status() == "404"


@pytest.mark.parametrize("unit_in", ["header", "parameters"])
@pytest.mark.parametrize("key", KEYS)
def test_triton_client_infer_answers_what_scikit_learn_answers(
        gateway: Callable[[str], Gateway],
        triton_client: Callable[[Gateway], triton.InferenceServerClient], key: str,
        unit_in: str) -> None:
    served = gateway(key)
    model = served.model
    client = triton_client(served)
    estimator = mlflow.sklearn.load_model(model.uri)
    expected_proba = estimator.predict_proba(model.example)
    expected_labels = pyfunc_predict(model)  # the class of highest probability
    unit = {"headers": {"X-Rampart-Unit": "customer-9"}} if unit_in == "header" else {
        "parameters": {"unit_id": "customer-9"}}
    answered = 0
    for j, frame in enumerate(by_missing_values(model.example)):
        result = client.infer(
            model.name, infer_inputs(model, frame), request_id=f"triton-{j}",
            outputs=[triton.InferRequestedOutput("label", binary_data=False),
                     triton.InferRequestedOutput("predict_proba", binary_data=False)],
            **unit)
        response = result.get_response()
        assert (response["model_name"], response["model_version"], response["id"]) == (
            model.name, model.version, f"triton-{j}")
        assert [o["name"] for o in response["outputs"]] == ["label", "predict_proba"]
        rows = frame.index.to_numpy()
        np.testing.assert_allclose(result.as_numpy("predict_proba"), expected_proba[rows],
                                   rtol=REL, atol=ABS)
        np.testing.assert_array_equal(result.as_numpy("label"), expected_labels[rows])
        answered += len(rows)
    assert answered == len(model.example)
    rows = served.decisions()
    assert len(rows) == answered
    assert {(r["unit_id"], r["unit_source"], r["model_version"], r["status"]) for r in rows} == {
        ("customer-9", "header" if unit_in == "header" else "param", model.version, "ok")}


def test_triton_client_reads_a_refusal_naming_the_field(
        gateway: Callable[[str], Gateway],
        triton_client: Callable[[Gateway], triton.InferenceServerClient]) -> None:
    served = gateway("pipeline")
    model = served.model
    client = triton_client(served)
    inputs = infer_inputs(model, model.example)
    spend = triton.InferInput("spend", [len(model.example)], "BYTES")
    spend.set_data_from_numpy(np.array(["high"] * len(model.example), dtype=object),
                              binary_data=False)
    inputs = [spend if tensor.name() == "spend" else tensor for tensor in inputs]
    with pytest.raises(InferenceServerException) as refused:
        client.infer(model.name, inputs, headers={"X-Rampart-Unit": "customer-9"})
    assert refused.value.status() == "422"
    assert refused.value.message().startswith(
        'rows.0.spend: expected a number (double), got "high"')
    with pytest.raises(InferenceServerException) as no_unit:
        client.infer(model.name, infer_inputs(model, model.example))
    assert no_unit.value.status() == "400"
    assert '"parameters": {"unit_id": ...}' in no_unit.value.message()
    assert served.decisions() == []


def test_triton_clients_binary_tensors_are_refused_saying_to_send_json(
        gateway: Callable[[str], Gateway],
        triton_client: Callable[[Gateway], triton.InferenceServerClient]) -> None:
    """Triton's client sends tensors as binary data unless told otherwise; the
    refusal must say so, not that the body is broken JSON."""
    served = gateway("pipeline")
    model = served.model
    client = triton_client(served)
    inputs = []
    for name, datatype in v2_types(model).items():
        column = model.example[name]
        tensor = triton.InferInput(name, [len(column)], datatype)
        tensor.set_data_from_numpy(column.to_numpy(dtype=object) if datatype == "BYTES"
                                   else column.to_numpy())  # binary_data=True, the default
        inputs.append(tensor)
    with pytest.raises(InferenceServerException) as refused:
        client.infer(model.name, inputs, headers={"X-Rampart-Unit": "customer-9"})
    assert refused.value.status() in {"400", "415", "422"}
    assert "binary tensor data is not supported" in refused.value.message()
