"""Every zoo model through every request protocol of an in-process gateway,
against MLflow's own answers (MLflow on SQLite, no Ray).

Each gateway is built as a replica builds its core (``ray_app.build_core``):
versions loaded by :class:`MlflowRegistry`, the routing table compiled from a
config, the worker pool and unit policy from that config, a real decision
log. The references are MLflow's: ``mlflow.pyfunc.load_model(uri).predict``
serialized by MLflow's scoring server for ``/invocations``, and for a
classifier left on output ``auto`` scikit-learn's ``predict_proba`` and its
labels for ``/v1/predict`` and V2.
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
from fastapi.testclient import TestClient
from httpx import Response
from mlflow import MlflowClient
from mlflow.pyfunc.scoring_server import predictions_to_json
from prometheus_client import CollectorRegistry

from models.registry import MlflowRegistry, Scorer
from serving.gateway.core import GatewayCore, build_app
from serving.gateway.ray_app import model_pool, unit_policy
from serving.gateway.scorers import LoadedScorers
from serving.kernel.config import parse_config
from serving.routing.router import build_routing_table, route
from telemetry.decision_log import DecisionLogWriter, read_decisions
from telemetry.metrics import RequestMetrics
from tests.model_zoo import ZOO, ZooModel, log_zoo

pytestmark = pytest.mark.integration

UNIT = "unit-7"
UNIT_HEADER = {"X-Rampart-Unit": UNIT}
REL = 1e-9
ABS = 1e-12

# The zoo's models over tensors take MLflow's tensor forms (instances, inputs);
# every other model takes columns. Checked against each example's type below.
TENSOR_MODELS = ("named_tensors", "tensor")
COLUMN_MODELS = tuple(sorted(set(ZOO) - set(TENSOR_MODELS)))
CLASSIFIERS = tuple(sorted(k for k, e in ZOO.items() if e.answers == "probabilities"))
COLUMN_FORMS = ("v1 single", "v1 batch", "dataframe_split", "dataframe_records",
                "instances", "inputs", "named invocations", "v2")
TENSOR_FORMS = ("v1 single", "v1 batch", "instances", "inputs", "named invocations", "v2")
CASES = [(key, form) for key in COLUMN_MODELS for form in COLUMN_FORMS] + [
    (key, form) for key in TENSOR_MODELS for form in TENSOR_FORMS]

# MLflow's column types and tensor dtypes as V2 datatypes (as a V2 client sends them).
V2_COLUMN_TYPES = {"double": "FP64", "float": "FP32", "long": "INT64", "integer": "INT32",
                   "boolean": "BOOL", "string": "BYTES"}
V2_TENSOR_TYPES = {"float32": "FP32", "float64": "FP64", "int64": "INT64", "int32": "INT32"}


# ----------------------------------------------------------------- the store


@dataclass(frozen=True)
class Store:
    uri: str
    zoo: dict[str, ZooModel]
    registry: MlflowRegistry
    # A second version of the ridge model (the same artifact), so that an
    # experiment can split units between two versions.
    ridge_v2: str


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    root = tmp_path_factory.mktemp("round-trip")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    zoo = log_zoo(uri, root / "artifacts")
    ridge = zoo["ridge"]
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    first = client.get_model_version(ridge.name, ridge.version)
    assert first.source is not None
    second = client.create_model_version(ridge.name, first.source, run_id=first.run_id)
    return Store(uri, zoo, MlflowRegistry(uri), str(second.version))


@pytest.fixture(autouse=True)
def reference_store(store: Store) -> None:
    """MLflow's own loaders (the references) read this module's store,
    whatever another module pointed them at."""
    mlflow.set_tracking_uri(store.uri)
    mlflow.set_registry_uri(store.uri)


@pytest.fixture(scope="module")
def loaded(store: Store) -> Callable[[str, str, str], Scorer]:
    """``registry.load`` once per version and output for the whole module
    (a loaded scorer holds no request state)."""
    cache: dict[tuple[str, str, str], Scorer] = {}

    def load(name: str, version: str, output: str) -> Scorer:
        key = (name, version, output)
        if key not in cache:
            cache[key] = store.registry.load(name, version, output=output)
        return cache[key]

    return load


# ----------------------------------------------------------------- the gateway


@dataclass
class Gateway:
    client: TestClient
    core: GatewayCore
    writer: DecisionLogWriter
    directory: Path

    def decisions(self) -> dict[str, dict[str, Any]]:
        """Every decision logged so far, by request id."""
        self.writer.flush()
        if not self.directory.exists():  # the writer makes it with its first file
            return {}
        rows = read_decisions(self.directory).to_pylist()
        by_id = {row["request_id"]: row for row in rows}
        assert len(by_id) == len(rows), "a request id was logged twice"
        return by_id


@pytest.fixture
def serve(store: Store, loaded: Callable[[str, str, str], Scorer],
          tmp_path: Path) -> Iterator[Callable[..., Gateway]]:
    """Start an in-process gateway from a config mapping, as a replica builds it."""
    started: list[Gateway] = []

    def start(config: dict[str, Any]) -> Gateway:
        cfg = parse_config(config)
        outputs = cfg.model_outputs()
        table = build_routing_table(cfg, store.registry.resolve)
        scorers = LoadedScorers({
            (r.name, r.version): loaded(r.name, r.version, outputs.get(r.name, "auto"))
            for r in table.model_refs()})
        directory = tmp_path / f"decisions-{len(started)}"
        writer = DecisionLogWriter(directory, "round-trip", batch_rows=100_000,
                                   flush_interval_s=3600)
        core = GatewayCore(table, scorers, RequestMetrics(CollectorRegistry()), None, writer,
                           pool=model_pool(cfg), unit_policy=unit_policy(cfg))
        client = TestClient(build_app(core))
        client.__enter__()
        gateway = Gateway(client, core, writer, directory)
        started.append(gateway)
        return gateway

    yield start
    for gateway in started:
        gateway.client.__exit__(None, None, None)
        gateway.core.close()


def single_model(model: ZooModel, *, output: str = "auto", **extra: Any) -> dict[str, Any]:
    """A config serving one zoo model, which is also the default."""
    return {"models": [{"name": model.name, "versions": [model.version], "output": output}],
            "default": {"model": model.name, "version": model.version}, **extra}


# ----------------------------------------------------------------- references


def plain(value: Any) -> Any:
    """numpy scalars and arrays as Python values."""
    if isinstance(value, np.ndarray):
        return [plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


@dataclass(frozen=True)
class Reference:
    """MLflow's answers for a model's example, in each protocol's terms."""

    mlflow_body: Any  # what `mlflow models serve` writes, parsed
    values: list[Any]  # each row's /v1 "prediction"
    labels: list[Any] | None  # a classifier's labels
    probabilities: list[dict[str, float]] | None
    outputs: dict[str, list[Any]]  # V2 outputs, each as one value per row
    classes: list[str] | None = None


def mlflow_written(raw: Any) -> Any:
    """``raw`` as MLflow's scoring server writes it, parsed back."""
    out = io.StringIO()
    predictions_to_json(raw, out)  # type: ignore[no-untyped-call]
    return json.loads(out.getvalue())


def per_row(raw: Any, n: int) -> list[Any]:
    """A pyfunc output of the zoo (an array, or a dict of arrays) split by row."""
    if isinstance(raw, dict):
        return [{str(k): plain(np.asarray(v)[i]) for k, v in raw.items()} for i in range(n)]
    array = np.asarray(raw)
    assert len(array) == n
    return [plain(v) for v in array]


def reference(model: ZooModel, *, output: str = "auto",
              params: dict[str, Any] | None = None) -> Reference:
    raw = mlflow.pyfunc.load_model(model.uri).predict(model.example, params=params)
    n = len(model.rows)
    body = mlflow_written(raw)
    if model.answers == "probabilities" and output == "auto":
        estimator = mlflow.sklearn.load_model(model.uri)
        proba = np.asarray(estimator.predict_proba(model.example), dtype=np.float64)
        classes = [plain(c) for c in estimator.classes_]
        labels = [classes[int(i)] for i in np.argmax(proba, axis=1)]
        values = [float(p[1]) for p in proba] if len(classes) == 2 else proba.tolist()
        probabilities = [dict(zip(map(str, classes), p.tolist(), strict=True)) for p in proba]
        return Reference(body, values, labels, probabilities,
                         {"predict_proba": proba.tolist(), "label": labels},
                         [str(c) for c in classes])
    answers = per_row(raw, n)
    predicted = answers if model.answers == "probabilities" else None  # output predict
    if answers and all(isinstance(v, dict) for v in answers):
        outputs = {k: [v[k] for v in answers] for k in answers[0]}
    else:
        outputs = {"predict": answers}
    return Reference(body, answers, predicted, None, outputs)


def assert_close(got: Any, expected: Any, where: str = "") -> None:
    """JSON values equal, floats to 1e-9 relative; no int passes for a float,
    no bool for a number."""
    if isinstance(expected, dict):
        assert isinstance(got, dict) and list(got) == list(expected), (where, got, expected)
        for key in expected:
            assert_close(got[key], expected[key], f"{where}.{key}")
    elif isinstance(expected, list):
        assert isinstance(got, list) and len(got) == len(expected), (where, got, expected)
        for i, (a, b) in enumerate(zip(got, expected, strict=True)):
            assert_close(a, b, f"{where}.{i}")
    elif isinstance(expected, float):
        assert type(got) is float, (where, got, expected)
        assert got == pytest.approx(expected, rel=REL, abs=ABS, nan_ok=True), (where, got,
                                                                              expected)
    else:
        assert type(got) is type(expected) and got == expected, (where, got, expected)


# ----------------------------------------------------------------- request bodies


def is_tensor_model(model: ZooModel) -> bool:
    return not isinstance(model.example, pd.DataFrame)


def mlflow_body(model: ZooModel, form: str, rows: list[dict[str, Any]] | None = None
                ) -> dict[str, Any]:
    """The rows in one of MLflow's input forms."""
    rows = model.rows if rows is None else rows
    names = list(dict.fromkeys(k for row in rows for k in row))
    if form == "dataframe_split":
        return {form: {"columns": names, "data": [[row.get(c) for c in names] for row in rows]}}
    if form == "dataframe_records":
        return {form: rows}
    if names == ["input"]:  # one unnamed tensor: a list of instances
        return {form: [row["input"] for row in rows]}
    if form == "instances":  # rows, as TF Serving's row format
        return {form: rows}
    return {form: {c: [row.get(c) for row in rows] for c in names}}  # columns


def signature_types(model: ZooModel) -> dict[str, str]:
    """Each input's V2 datatype from the model's MLflow signature; a model
    without one gets its example's types."""
    from mlflow.models import get_model_info

    signature = get_model_info(model.uri).signature
    if signature is None:
        example = model.example
        return {str(c): "FP64" if example[c].dtype.kind == "f" else "INT64" for c in example}
    types = {}
    for spec in signature.inputs.inputs:
        if hasattr(spec, "shape"):  # a tensor
            types[spec.name or "input"] = V2_TENSOR_TYPES[np.dtype(spec.type).name]
        else:
            types[spec.name] = V2_COLUMN_TYPES[spec.type.name]
    return types


def v2_requests(model: ZooModel, rows: list[dict[str, Any]] | None = None
                ) -> list[tuple[list[int], dict[str, Any]]]:
    """V2 bodies carrying the rows, and which rows each carries.

    A V2 tensor has no null element, so rows missing an optional value go in
    a request without that input, grouped by the inputs they have.
    """
    rows = model.rows if rows is None else rows
    types = signature_types(model)
    groups: dict[tuple[str, ...], list[int]] = {}
    for i, row in enumerate(rows):
        groups.setdefault(tuple(k for k, v in row.items() if v is not None), []).append(i)
    out = []
    for names, indices in groups.items():
        inputs = []
        for name in names:
            values = [rows[i][name] for i in indices]
            array = np.asarray(values)
            inputs.append({"name": name, "shape": list(array.shape), "datatype": types[name],
                           "data": array.ravel().tolist()})
        out.append((indices, {"inputs": inputs}))
    return out


def v2_rows(output: dict[str, Any]) -> list[Any]:
    """One V2 output tensor as one value per row."""
    values: list[Any] = np.asarray(output["data"], dtype=object).reshape(output["shape"]).tolist()
    return values


# ----------------------------------------------------------------- checks


@dataclass(frozen=True)
class Answered:
    """A row answered: its request id and the version named in the answer."""

    request_id: str
    version: str


def check_v1(answer: dict[str, Any], model: ZooModel, ref: Reference, i: int) -> Answered:
    assert answer["model_name"] == model.name
    assert_close(answer["prediction"], ref.values[i], f"rows.{i}.prediction")
    if ref.labels is not None:
        assert_close(answer["label"], ref.labels[i], f"rows.{i}.label")
    else:
        assert "label" not in answer
    if ref.probabilities is not None:
        assert_close(answer["probabilities"], ref.probabilities[i], f"rows.{i}.probabilities")
    else:
        assert "probabilities" not in answer
    return Answered(answer["request_id"], answer["model_version"])


def check_v2(response: Response, model: ZooModel, ref: Reference, indices: list[int],
             request_id: str) -> list[Answered]:
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model_name"] == model.name
    assert response.headers["x-request-id"] == request_id
    outputs = {o["name"]: o for o in body["outputs"]}
    assert list(outputs) == list(ref.outputs)
    for name, expected in ref.outputs.items():
        assert_close(v2_rows(outputs[name]), [expected[i] for i in indices], f"outputs.{name}")
    if ref.classes is not None:
        assert outputs["predict_proba"]["parameters"]["classes"] == ref.classes
    return [Answered(f"{request_id}-{j}", body["model_version"]) for j in range(len(indices))]


def check_logged(gateway: Gateway, answered: list[Answered], model_name: str, *,
                 unit: str | None = UNIT, source: str = "header") -> list[dict[str, Any]]:
    """Every answered row is logged once, under the id and version it was answered with."""
    decisions = gateway.decisions()
    assert len(decisions) == len(answered)
    rows = []
    for answer in answered:
        row = decisions[answer.request_id]
        assert (row["model_name"], row["model_version"]) == (model_name, answer.version)
        assert row["status"] == "ok" and row["error"] is None
        assert row["unit_source"] == source
        if unit is not None:
            assert row["unit_id"] == unit
        rows.append(row)
    return rows


def post(client: TestClient, path: str, body: Any, headers: dict[str, str] | None = None,
         **kwargs: Any) -> Response:
    response: Response = client.post(path, content=json.dumps(body), headers={
        "Content-Type": "application/json", **(headers or {})}, **kwargs)
    return response


# ----------------------------------------------------------------- every model, every form


def test_the_zoo_is_split_into_column_and_tensor_models(store: Store) -> None:
    assert {k for k, m in store.zoo.items() if is_tensor_model(m)} == set(TENSOR_MODELS)
    assert set(COLUMN_MODELS) | set(TENSOR_MODELS) == set(store.zoo)


@pytest.mark.parametrize(("key", "form"), CASES, ids=[f"{k}-{f}" for k, f in CASES])
def test_each_form_answers_what_mlflow_answers(store: Store, serve: Callable[..., Gateway],
                                               key: str, form: str) -> None:
    model = store.zoo[key]
    ref = reference(model)
    gateway = serve(single_model(model))
    client = gateway.client
    n = len(model.rows)
    answered: list[Answered] = []
    if form == "v1 single":
        for i, row in enumerate(model.rows):
            response = post(client, "/v1/predict", {"features": row}, UNIT_HEADER)
            assert response.status_code == 200, response.text
            answered.append(check_v1(response.json(), model, ref, i))
    elif form == "v1 batch":
        response = post(client, "/v1/predict", {"rows": [{"features": r} for r in model.rows]},
                        UNIT_HEADER)
        assert response.status_code == 200, response.text
        answers = response.json()["predictions"]
        assert len(answers) == n
        answered = [check_v1(a, model, ref, i) for i, a in enumerate(answers)]
    elif form == "v2":
        for j, (indices, body) in enumerate(v2_requests(model)):
            response = post(client, f"/v2/models/{model.name}/infer", body,
                            {**UNIT_HEADER, "X-Request-Id": f"v2-{j}"})
            answered += check_v2(response, model, ref, indices, f"v2-{j}")
    else:
        named = form == "named invocations"
        path = f"/v1/models/{model.name}/invocations" if named else "/invocations"
        body = mlflow_body(model, "instances" if named else form)
        response = post(client, path, body, {**UNIT_HEADER, "X-Request-Id": "mlflow-1"})
        assert response.status_code == 200, response.text
        assert_close(response.json(), ref.mlflow_body, "body")
        assert response.headers["x-request-id"] == "mlflow-1"
        assert response.headers["x-rampart-model"] == model.name
        version = response.headers["x-rampart-model-version"]
        answered = [Answered(f"mlflow-1-{i}", version) for i in range(n)]
    assert len(answered) == n
    assert {a.version for a in answered} == {model.version}
    check_logged(gateway, answered, model.name)


def test_mlflow_params_reach_the_model_through_each_protocol(
        store: Store, serve: Callable[..., Gateway]) -> None:
    model = store.zoo["custom"]
    ref = reference(model, params={"scale": 2.5})
    assert ref.values != reference(model).values  # the parameter changes the answer
    client = serve(single_model(model)).client
    response = post(client, "/invocations", {**mlflow_body(model, "dataframe_split"),
                                             "params": {"scale": 2.5, "unit_id": UNIT}})
    assert response.status_code == 200, response.text
    assert_close(response.json(), ref.mlflow_body)
    for j, (indices, body) in enumerate(v2_requests(model)):
        response = post(client, f"/v2/models/{model.name}/infer",
                        {**body, "parameters": {"scale": 2.5}},
                        {**UNIT_HEADER, "X-Request-Id": f"v2-{j}"})
        check_v2(response, model, ref, indices, f"v2-{j}")


@pytest.mark.parametrize("key", CLASSIFIERS)
def test_output_predict_makes_a_classifier_answer_labels(
        store: Store, serve: Callable[..., Gateway], key: str) -> None:
    model = store.zoo[key]
    ref = reference(model, output="predict")
    assert ref.labels is not None and ref.probabilities is None
    gateway = serve(single_model(model, output="predict"))
    client = gateway.client
    response = post(client, "/v1/predict", {"rows": [{"features": r} for r in model.rows]},
                    UNIT_HEADER)
    assert response.status_code == 200, response.text
    answers = response.json()["predictions"]
    answered = [check_v1(a, model, ref, i) for i, a in enumerate(answers)]
    assert [a["prediction"] for a in answers] == [a["label"] for a in answers] == ref.labels
    response = post(client, "/invocations", mlflow_body(model, "dataframe_split"),
                    {**UNIT_HEADER, "X-Request-Id": "mlflow"})
    assert response.status_code == 200, response.text
    assert_close(response.json(), ref.mlflow_body)
    answered += [Answered(f"mlflow-{i}", response.headers["x-rampart-model-version"])
                 for i in range(len(model.rows))]
    for j, (indices, body) in enumerate(v2_requests(model)):
        response = post(client, f"/v2/models/{model.name}/infer", body,
                        {**UNIT_HEADER, "X-Request-Id": f"v2-{j}"})
        answered += check_v2(response, model, ref, indices, f"v2-{j}")
    check_logged(gateway, answered, model.name)


# ----------------------------------------------------------------- rows that do not fit


@dataclass(frozen=True)
class Mismatch:
    """A pipeline row spoiled in one field, and that field's V2 column as a
    client would type it (a V2 column has one datatype for every row, so the
    first row it refuses may be another than the spoiled one)."""

    field: str
    spoil: Callable[[dict[str, Any]], dict[str, Any]]
    v2_column: tuple[str, Callable[[list[dict[str, Any]]], list[Any]]] | None
    v2_first_refused: int


BAD = 1  # of the three rows sent, row 1 is spoiled
MISMATCHES = {
    "long given 2.5": Mismatch(
        "visits", lambda row: {**row, "visits": 2.5},
        ("FP64", lambda rows: [float(r["visits"]) for r in rows]), BAD),
    "double given a string": Mismatch(
        "spend", lambda row: {**row, "spend": "high"},
        ("BYTES", lambda rows: [str(r["spend"]) for r in rows]), 0),
    "string given a number": Mismatch(
        "plan", lambda row: {**row, "plan": 3}, ("INT64", lambda rows: [3] * len(rows)), 0),
    "required column missing": Mismatch(
        "seats", lambda row: {k: v for k, v in row.items() if k != "seats"}, None, 0),
}
MISMATCH_FORMS = ("v1 single", "v1 batch", "dataframe_split", "dataframe_records",
                  "instances", "inputs", "named invocations", "v2")
MLFLOW_ERROR_CODES = {400: "BAD_REQUEST", 404: "RESOURCE_DOES_NOT_EXIST",
                      422: "INVALID_PARAMETER_VALUE"}


def error_message(response: Response, protocol: str) -> tuple[str, str]:
    """The error's code and message in a protocol's error body."""
    body = response.json()
    if protocol == "v2":
        assert set(body) == {"error", "code"}
        return body["code"], body["error"]
    if protocol == "mlflow":
        # MLflow's own keys beside ours, so MLflow's clients read the error
        assert body["error_code"] == MLFLOW_ERROR_CODES[response.status_code]
        assert body["message"] == body["error"]["message"]
    return body["error"]["code"], body["error"]["message"]


def pipeline_v2(model: ZooModel, rows: list[dict[str, Any]], mismatch: Mismatch
                ) -> dict[str, Any]:
    """The three rows as V2 columns, the spoiled field's column as ``mismatch`` types it."""
    inputs = []
    for name, datatype in signature_types(model).items():
        data = [row[name] for row in rows] if name != mismatch.field else None
        if name == mismatch.field and mismatch.v2_column is not None:
            datatype, column = mismatch.v2_column
            data = column(rows)
        if data is not None:
            inputs.append({"name": name, "shape": [len(rows)], "datatype": datatype,
                           "data": data})
    return {"inputs": inputs}


@pytest.mark.parametrize("form", MISMATCH_FORMS)
@pytest.mark.parametrize("mismatch", sorted(MISMATCHES))
def test_a_row_that_does_not_fit_the_signature_is_a_422_naming_the_field(
        store: Store, serve: Callable[..., Gateway], mismatch: str, form: str) -> None:
    model = store.zoo["pipeline"]
    case = MISMATCHES[mismatch]
    field = case.field
    rows = [model.rows[0], case.spoil(model.rows[1]), model.rows[2]]
    gateway = serve(single_model(model))
    client = gateway.client
    if form == "v1 batch":
        # the other rows are answered; the row that does not fit answers its error in place
        ref = reference(model)
        response = post(client, "/v1/predict", {"rows": [{"features": r} for r in rows]},
                        {**UNIT_HEADER, "X-Request-Id": "batch"})
        assert response.status_code == 200, response.text
        answers = response.json()["predictions"]
        error = answers[BAD]["error"]
        assert answers[BAD] == {"request_id": "batch-1", "error": error}
        assert error["code"] == "validation_failed"
        assert error["message"].startswith(f"rows.{BAD}.features.{field}: "), error
        answered = [check_v1(answers[i], model, ref, i) for i in (0, 2)]
        check_logged(gateway, answered, model.name)  # the refused row is not a decision
        return
    if form == "v1 single":
        response = post(client, "/v1/predict", {"features": rows[BAD]}, UNIT_HEADER)
        protocol, where = "v1", f"features.{field}"
    elif form == "v2":
        response = post(client, f"/v2/models/{model.name}/infer",
                        pipeline_v2(model, rows, case), UNIT_HEADER)
        protocol, where = "v2", f"rows.{case.v2_first_refused}.{field}"
    else:
        named = form == "named invocations"
        path = f"/v1/models/{model.name}/invocations" if named else "/invocations"
        response = post(client, path, mlflow_body(model, "instances" if named else form, rows),
                        UNIT_HEADER)
        protocol, where = "mlflow", f"rows.{BAD}.{field}"
    assert response.status_code == 422, response.text
    code, message = error_message(response, protocol)
    assert message.startswith(f"{where}: "), message
    assert code == "validation_failed"
    if protocol == "v1":
        assert gateway.decisions() == {}  # refused before scoring: nothing logged


ALL_OR_NOTHING_FORMS = ("dataframe_split", "dataframe_records", "instances", "inputs",
                        "named invocations", "v2")


@pytest.mark.parametrize("form", ALL_OR_NOTHING_FORMS)
def test_a_request_refused_for_one_row_logs_none_of_its_rows(
        store: Store, serve: Callable[..., Gateway], form: str) -> None:
    """MLflow's and V2's answers are all or nothing: a request one of whose
    rows does not fit is answered 422 as a whole, so no row of it is a decision."""
    model = store.zoo["pipeline"]
    case = MISMATCHES["long given 2.5"]  # rows 0 and 2 fit in every form, V2's too
    rows = [model.rows[0], case.spoil(model.rows[1]), model.rows[2]]
    gateway = serve(single_model(model))
    if form == "v2":
        response = post(gateway.client, f"/v2/models/{model.name}/infer",
                        pipeline_v2(model, rows, case), UNIT_HEADER)
    else:
        named = form == "named invocations"
        path = f"/v1/models/{model.name}/invocations" if named else "/invocations"
        response = post(gateway.client, path,
                        mlflow_body(model, "instances" if named else form, rows), UNIT_HEADER)
    assert response.status_code == 422, response.text
    assert gateway.decisions() == {}


@pytest.mark.parametrize("form", ["v1 single", "instances", "inputs", "v2"])
def test_a_tensor_instance_of_the_wrong_shape_is_a_422_naming_the_input(
        store: Store, serve: Callable[..., Gateway], form: str) -> None:
    model = store.zoo["tensor"]
    rows = [model.rows[0], {"input": model.rows[1]["input"][:3]}]
    client = serve(single_model(model)).client
    if form == "v1 single":
        response = post(client, "/v1/predict", {"features": rows[1]}, UNIT_HEADER)
        where, protocol = "features.input", "v1"
    elif form == "v2":
        response = post(client, f"/v2/models/{model.name}/infer", {"inputs": [
            {"name": "input", "shape": [1, 3], "datatype": "FP32", "data": rows[1]["input"]}]},
            UNIT_HEADER)
        where, protocol = "rows.0.input", "v2"
    else:
        response = post(client, "/invocations", mlflow_body(model, form, rows), UNIT_HEADER)
        where, protocol = "rows.1.input", "mlflow"
    assert response.status_code == 422, response.text
    code, message = error_message(response, protocol)
    assert code == "validation_failed"
    assert message.startswith(f"{where}: expected a float32 instance of shape (4,)"), message


# ----------------------------------------------------------------- units and routing


def split_config(store: Store, **extra: Any) -> dict[str, Any]:
    """Ridge's two versions, half the units each."""
    ridge = store.zoo["ridge"]
    return {
        "models": [{"name": ridge.name, "versions": [ridge.version, store.ridge_v2]}],
        "default": {"model": ridge.name, "version": ridge.version},
        "experiments": [{"id": "split", "salt": "round-trip", "unit": "user_id", "arms": [
            {"name": "control", "model": ridge.name, "version": ridge.version,
             "weight_bp": 5000},
            {"name": "treatment", "model": ridge.name, "version": store.ridge_v2,
             "weight_bp": 5000}]}],
        **extra,
    }


def score_one(client: TestClient, protocol: str, model: ZooModel, request_id: str, *,
              header: str | None = None, query: str | None = None,
              body_unit: str | None = None, headers: dict[str, str] | None = None
              ) -> tuple[Response, str | None]:
    """Score the model's first row through ``protocol``, the unit where asked;
    the answer and the version it names (None on an error)."""
    sent = {"X-Request-Id": request_id, **(headers or {})}
    if header is not None:
        sent["X-Rampart-Unit"] = header
    params = {"unit_id": query} if query is not None else None
    row = model.rows[0]
    if protocol == "v1":
        body: dict[str, Any] = {"features": row}
        if body_unit is not None:
            body["unit_id"] = body_unit
        response = post(client, "/v1/predict", body, sent, params=params)
        version = response.json().get("model_version")
    elif protocol == "mlflow":
        body = mlflow_body(model, "dataframe_split", [row])
        if body_unit is not None:
            body["params"] = {"unit_id": body_unit}
        response = post(client, "/invocations", body, sent, params=params)
        version = response.headers.get("x-rampart-model-version")
    else:
        [(_, body)] = v2_requests(model, [row])
        if body_unit is not None:
            body["parameters"] = {"unit_id": body_unit}
        response = post(client, f"/v2/models/{model.name}/infer", body, sent, params=params)
        version = response.json().get("model_version")
    return response, version


PROTOCOLS = ("v1", "mlflow", "v2")
SOURCES = ("header", "query", "body")


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_each_unit_source_routes_the_request_and_is_logged(
        store: Store, serve: Callable[..., Gateway], protocol: str, source: str) -> None:
    model = store.zoo["ridge"]
    gateway = serve(split_config(store))
    units = [f"user-{i}" for i in range(12)]
    expected = {u: route(gateway.core.table, u).model.version for u in units}
    assert set(expected.values()) == {model.version, store.ridge_v2}  # both arms are reached
    answered = []
    for i, unit in enumerate(units):
        response, version = score_one(
            gateway.client, protocol, model, f"r{i}",
            header=unit if source == "header" else None,
            query=unit if source == "query" else None,
            body_unit=unit if source == "body" else None)
        assert response.status_code == 200, response.text
        assert version == expected[unit], unit
        answered.append(Answered(f"r{i}" if protocol == "v1" else f"r{i}-0", version))
    rows = check_logged(gateway, answered, model.name, unit=None,
                        source={"header": "header", "query": "param", "body": "body"
                                if protocol == "v1" else "param"}[source])
    assert [r["unit_id"] for r in rows] == units
    assert {r["experiment_id"] for r in rows} == {"split"}


PRECEDENCE = {
    # (what is sent) -> (the unit read, its source), per protocol: /v1's row
    # carries its own unit; MLflow's and V2's body parameter comes after the header.
    ("header", "query", "body"): {"v1": ("from-body", "body"),
                                  "mlflow": ("from-header", "header"),
                                  "v2": ("from-header", "header")},
    ("header", "query"): {p: ("from-header", "header") for p in ("v1", "mlflow", "v2")},
    ("query", "body"): {"v1": ("from-body", "body"), "mlflow": ("from-body", "param"),
                        "v2": ("from-body", "param")},
}


@pytest.mark.parametrize("sent", sorted(PRECEDENCE), ids="+".join)
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_which_unit_wins_when_several_are_sent(
        store: Store, serve: Callable[..., Gateway], protocol: str,
        sent: tuple[str, ...]) -> None:
    gateway = serve(split_config(store))
    response, _ = score_one(
        gateway.client, protocol, store.zoo["ridge"], "r",
        header="from-header" if "header" in sent else None,
        query="from-query" if "query" in sent else None,
        body_unit="from-body" if "body" in sent else None)
    assert response.status_code == 200, response.text
    [row] = gateway.decisions().values()
    assert (row["unit_id"], row["unit_source"]) == PRECEDENCE[sent][protocol]


WHERE_TO_PUT_IT = {
    "v1": ['the body field "unit_id"', 'the header "X-Rampart-Unit"',
           'the query parameter "unit_id"'],
    "mlflow": ['"params": {"unit_id": ...} in the body', 'the header "X-Rampart-Unit"',
               'the query parameter "unit_id"'],
    "v2": ['"parameters": {"unit_id": ...} in the body', 'the header "X-Rampart-Unit"',
           'the query parameter "unit_id"'],
}


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_no_unit_is_a_400_saying_where_to_put_it(
        store: Store, serve: Callable[..., Gateway], protocol: str) -> None:
    gateway = serve(split_config(store))
    response, _ = score_one(gateway.client, protocol, store.zoo["ridge"], "r-none")
    assert response.status_code == 400, response.text
    code, message = error_message(response, protocol)
    assert code == "unit_missing"
    for place in WHERE_TO_PUT_IT[protocol]:
        assert place in message, message
    assert gateway.decisions() == {}


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_no_unit_with_hash_request_id_is_routed_and_logged_by_the_request_id(
        store: Store, serve: Callable[..., Gateway], protocol: str) -> None:
    model = store.zoo["ridge"]
    gateway = serve(split_config(store, requests={"missing_unit": "hash_request_id"}))
    ids = [f"req-{i}" for i in range(12)]
    expected = {r: route(gateway.core.table, r).model.version for r in ids}
    assert set(expected.values()) == {model.version, store.ridge_v2}
    answered = []
    for request_id in ids:
        response, version = score_one(gateway.client, protocol, model, request_id)
        assert response.status_code == 200, response.text
        assert version == expected[request_id]
        answered.append(Answered(request_id if protocol == "v1" else f"{request_id}-0",
                                 version))
    rows = check_logged(gateway, answered, model.name, unit=None, source="request_id")
    assert [r["unit_id"] for r in rows] == ids
    assert {r["unit_type"] for r in rows} == {"request_id"}


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_configured_unit_header_and_parameter_are_the_ones_read(
        store: Store, serve: Callable[..., Gateway], protocol: str) -> None:
    model = store.zoo["ridge"]
    gateway = serve(split_config(store, requests={"unit_header": "X-Customer",
                                                  "unit_param": "customer"}))
    response, _ = score_one(gateway.client, protocol, model, "r-1", header="ignored")
    assert response.status_code == 400, response.text
    _, message = error_message(response, protocol)
    assert 'the header "X-Customer"' in message and 'parameter "customer"' in message
    response, _ = score_one(gateway.client, protocol, model, "r-2",
                            headers={"X-Customer": "c-1"})
    assert response.status_code == 200, response.text
    [row] = gateway.decisions().values()
    assert (row["unit_id"], row["unit_source"]) == ("c-1", "header")


# ----------------------------------------------------------------- model names in paths


def test_a_path_naming_no_served_model_is_a_404(store: Store,
                                                serve: Callable[..., Gateway]) -> None:
    served, other = store.zoo["ridge"], store.zoo["pipeline"]
    gateway = serve(single_model(served))
    client = gateway.client
    for path, body in ((f"/v1/models/{other.name}/invocations",
                        mlflow_body(other, "dataframe_split")),
                       (f"/v2/models/{other.name}/infer", v2_requests(other)[0][1]),
                       (f"/v2/models/{other.name}/versions/1/infer", v2_requests(other)[0][1])):
        response = post(client, path, body, UNIT_HEADER)
        assert response.status_code == 404, (path, response.text)
        assert other.name in response.text
    assert client.get(f"/v2/models/{other.name}").status_code == 404
    assert client.get(f"/v2/models/{other.name}/ready").status_code == 404
    assert gateway.decisions() == {}


def test_v2_model_metadata_and_health_name_the_served_versions(
        store: Store, serve: Callable[..., Gateway]) -> None:
    model = store.zoo["pipeline"]
    client = serve(single_model(model)).client
    assert client.get("/v2/health/live").json() == {"live": True}
    assert client.get("/v2/health/ready").json() == {"ready": True}
    assert client.get(f"/v2/models/{model.name}/ready").json() == {"name": model.name,
                                                                   "ready": True}
    metadata = client.get(f"/v2/models/{model.name}").json()
    assert metadata["name"] == model.name and metadata["versions"] == [model.version]
    assert metadata["inputs"] == [
        {"name": name, "datatype": datatype, "shape": [-1]}
        for name, datatype in signature_types(model).items()]
    assert client.get("/ping").status_code == 200


def test_the_version_in_a_v2_path_does_not_override_routing(
        store: Store, serve: Callable[..., Gateway]) -> None:
    model = store.zoo["ridge"]
    gateway = serve(split_config(store))
    units = [f"user-{i}" for i in range(8)]
    [(_, body)] = v2_requests(model, [model.rows[0]])
    for unit in units:
        response = post(gateway.client, f"/v2/models/{model.name}/versions/1/infer", body,
                        {"X-Rampart-Unit": unit})
        assert response.status_code == 200, response.text
        assert response.json()["model_version"] == route(gateway.core.table,
                                                         unit).model.version
