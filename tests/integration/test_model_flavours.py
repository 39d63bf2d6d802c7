"""Every kind of MLflow model the zoo logs, loaded by the registry and scored
from request rows, against MLflow's own answers (MLflow on SQLite)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import pytest

from models.inputs import InputMismatch, build_input
from models.outputs import ScoredBatch, split_rows
from models.registry import (
    LinearScorer,
    MlflowRegistry,
    NotReplayable,
    PyfuncScorer,
    SklearnScorer,
    UnknownOutput,
)
from tests.model_zoo import ZooModel, log_zoo

pytestmark = pytest.mark.integration

CLASSIFIERS = ["pipeline", "multiclass", "forest", "hgb", "linear"]
TOLERANCE = {"rtol": 1e-9, "atol": 1e-12}


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, ZooModel]]:
    root = tmp_path_factory.mktemp("zoo")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    return uri, log_zoo(uri, root / "artifacts")


@pytest.fixture(scope="module")
def registry(store: tuple[str, dict[str, ZooModel]]) -> MlflowRegistry:
    return MlflowRegistry(store[0])


@pytest.fixture(scope="module")
def zoo(store: tuple[str, dict[str, ZooModel]]) -> dict[str, ZooModel]:
    return store[1]


@pytest.fixture(autouse=True)
def reference_store(store: tuple[str, dict[str, ZooModel]]) -> None:
    """MLflow's own loaders (the references) read the zoo's store, whatever
    another module pointed them at."""
    mlflow.set_tracking_uri(store[0])
    mlflow.set_registry_uri(store[0])


def score(registry: MlflowRegistry, model: ZooModel, output: str = "auto",
          params: dict[str, Any] | None = None) -> ScoredBatch:
    scorer = registry.load(model.name, model.version, output)
    return scorer.predict_rows([scorer.check_row(row) for row in model.rows], params)


def pyfunc_predict(model: ZooModel, params: dict[str, Any] | None = None) -> Any:
    return mlflow.pyfunc.load_model(model.uri).predict(model.example, params=params)


def sklearn_model(model: ZooModel) -> Any:
    return mlflow.sklearn.load_model(model.uri)


def assert_same_values(got: list[Any], expected: list[Any]) -> None:
    """Per-row JSON values equal, numbers to 1e-9."""
    assert len(got) == len(expected)
    for a, b in zip(got, expected, strict=True):
        if isinstance(b, dict):
            assert isinstance(a, dict) and a.keys() == b.keys()
            assert_same_values(list(a.values()), list(b.values()))
        elif isinstance(b, float | list):
            np.testing.assert_allclose(a, b, **TOLERANCE)
        else:
            assert a == b and type(a) is type(b)


EXPECTED_SCORER = {
    "pipeline": SklearnScorer, "multiclass": SklearnScorer, "regressor": SklearnScorer,
    "forest": SklearnScorer, "hgb": SklearnScorer, "unsigned": SklearnScorer,
    "custom": PyfuncScorer, "tensor": PyfuncScorer, "named_tensors": PyfuncScorer,
    "linear": LinearScorer, "ridge": LinearScorer,
}


@pytest.mark.parametrize("key", sorted(EXPECTED_SCORER))
def test_each_model_answers_what_mlflow_answers(registry: MlflowRegistry,
                                                zoo: dict[str, ZooModel], key: str) -> None:
    model = zoo[key]
    scorer = registry.load(model.name, model.version)
    assert type(scorer) is EXPECTED_SCORER[key]
    assert scorer.inline is (key in ("linear", "ridge"))
    batch = scorer.predict_rows([scorer.check_row(row) for row in model.rows])
    assert len(batch.rows) == len(model.rows)
    if model.answers == "probabilities":
        estimator = sklearn_model(model)
        expected = estimator.predict_proba(model.example)
        np.testing.assert_allclose(batch.raw, expected, **TOLERANCE)
        classes = [c.item() if isinstance(c, np.generic) else c for c in estimator.classes_]
        for answer, probabilities in zip(batch.rows, expected, strict=True):
            assert answer.label == classes[int(np.argmax(probabilities))]
            assert answer.probabilities is not None
            assert list(answer.probabilities) == [str(c) for c in classes]
            np.testing.assert_allclose(list(answer.probabilities.values()), probabilities,
                                       **TOLERANCE)
            if len(classes) == 2:
                assert answer.value == answer.score
                np.testing.assert_allclose(answer.value, probabilities[1], **TOLERANCE)
            else:
                assert answer.score is None
                np.testing.assert_allclose(answer.value, probabilities, **TOLERANCE)
    else:
        expected = pyfunc_predict(model)
        assert_same_values([a.value for a in batch.rows], split_rows(expected, len(model.rows)))
        if isinstance(expected, np.ndarray) and batch.raw is not None:
            np.testing.assert_allclose(batch.raw, expected, **TOLERANCE)
        for answer in batch.rows:
            assert answer.score == (answer.value if isinstance(answer.value, float) else None)


@pytest.mark.parametrize("key", CLASSIFIERS)
def test_output_predict_answers_pyfuncs_labels(registry: MlflowRegistry,
                                               zoo: dict[str, ZooModel], key: str) -> None:
    model = zoo[key]
    batch = score(registry, model, "predict")
    expected = pyfunc_predict(model)
    np.testing.assert_array_equal(batch.raw, expected)
    labels = split_rows(expected, len(model.rows))
    assert [a.value for a in batch.rows] == [a.label for a in batch.rows] == labels
    assert all(a.probabilities is None for a in batch.rows)


@pytest.mark.parametrize("key", CLASSIFIERS)
def test_output_predict_proba_is_auto_for_a_classifier(registry: MlflowRegistry,
                                                       zoo: dict[str, ZooModel],
                                                       key: str) -> None:
    model = zoo[key]
    assert score(registry, model, "predict_proba").rows == score(registry, model).rows


@pytest.mark.parametrize(("key", "method"), [
    ("pipeline", "predict_log_proba"),
    ("linear", "decision_function"),  # not folded: the fold answers probabilities only
    ("multiclass", "decision_function"),
    ("pipeline", "transform"),  # a Pipeline has transform only if its last step does
])
def test_output_names_an_estimator_method(registry: MlflowRegistry, zoo: dict[str, ZooModel],
                                          key: str, method: str) -> None:
    model = zoo[key]
    estimator = sklearn_model(model)
    if not callable(getattr(estimator, method, None)):
        with pytest.raises(UnknownOutput, match=method):
            registry.load(model.name, model.version, method)
        return
    scorer = registry.load(model.name, model.version, method)
    assert type(scorer) is SklearnScorer
    batch = scorer.predict_rows([scorer.check_row(row) for row in model.rows])
    expected = getattr(estimator, method)(model.example)
    np.testing.assert_allclose(batch.raw, expected, **TOLERANCE)
    assert_same_values([a.value for a in batch.rows], split_rows(expected, len(model.rows)))


def test_output_names_a_custom_pyfunc_method(registry: MlflowRegistry,
                                             zoo: dict[str, ZooModel]) -> None:
    model = zoo["custom"]
    batch = score(registry, model, "explain")
    expected = mlflow.pyfunc.load_model(model.uri).unwrap_python_model().explain(
        model.example)
    pd.testing.assert_frame_equal(batch.raw, expected)
    assert batch.rows[0].value == {"from_x": 0.5, "from_n": 1.0}


@pytest.mark.parametrize(("key", "output"), [
    ("hgb", "predict_probaa"),
    ("regressor", "predict_proba"),
    ("hgb", "fit"),
    ("hgb", "_more_tags"),
    ("linear", "set_params"),
    ("custom", "nonexistent"),
    ("custom", "load_context"),
    ("tensor", "predict_proba"),
])
def test_an_output_the_model_cannot_answer_fails_at_load(
        registry: MlflowRegistry, zoo: dict[str, ZooModel], key: str, output: str) -> None:
    model = zoo[key]
    with pytest.raises(UnknownOutput, match=f"cannot answer output '{output}'") as caught:
        registry.load(model.name, model.version, output)
    assert model.uri in str(caught.value)
    if key == "hgb":
        assert "(it has predict, predict_proba" in str(caught.value)


def test_params_reach_a_custom_model(registry: MlflowRegistry,
                                     zoo: dict[str, ZooModel]) -> None:
    model = zoo["custom"]
    batch = score(registry, model, params={"scale": 2.0})
    expected = pyfunc_predict(model, params={"scale": 2.0})
    assert_same_values([a.value for a in batch.rows], split_rows(expected, len(model.rows)))
    assert batch.rows[0].value == {"total": 2.0, "tag_length": 1}


def test_optional_columns_may_be_missing(registry: MlflowRegistry,
                                         zoo: dict[str, ZooModel]) -> None:
    custom = registry.load(zoo["custom"].name, zoo["custom"].version)
    batch = custom.predict_rows([custom.check_row({"x": 1.0, "n": 2}),
                                 custom.check_row({"x": 1.0, "n": 2, "tag": "abcd"})])
    assert [a.value for a in batch.rows] == [{"total": 3.0, "tag_length": 0},
                                             {"total": 3.0, "tag_length": 4}]
    model = zoo["hgb"]
    hgb = registry.load(model.name, model.version)
    row = {"amount": 12.5, "attempts": 3}
    missing = hgb.predict_rows([hgb.check_row(row), hgb.check_row({**row, "ratio": None})])
    expected = sklearn_model(model).predict_proba(
        pd.DataFrame({"amount": [12.5], "attempts": [3], "ratio": [np.nan]}))[0]
    for answer in missing.rows:
        assert answer.probabilities is not None
        np.testing.assert_allclose(list(answer.probabilities.values()), expected, **TOLERANCE)


@pytest.mark.parametrize(("key", "row", "field", "message"), [
    ("pipeline", {"plan": 3, "visits": 1, "seats": 1, "spend": 1.0}, "plan",
     "expected a string, got 3"),
    ("pipeline", {"plan": "pro", "visits": 3.5, "seats": 1, "spend": 1.0}, "visits",
     "expected an integer (long), got 3.5"),
    ("pipeline", {"plan": "pro", "visits": 3, "seats": 1}, "spend",
     "required by the model signature but missing"),
    ("linear", {"f0": 1.0, "f1": "2", "count": 1, "weight": 0.5}, "f1",
     'expected a number (double), got "2"'),
    ("linear", {"f0": 1.0, "f1": 2.0, "count": True, "weight": 0.5}, "count",
     "expected an integer (long), got true"),
    ("tensor", {"input": [1, 2, 3]}, "input", "shape (4,), got shape (3,)"),
    ("tensor", {"instances": [1, 2, 3, 4]}, "input", "missing"),
    ("named_tensors", {"a": [1, 2, 3]}, "b", "missing"),
    ("named_tensors", {"a": [1, 2, 3], "b": 0.5}, "b", "expected an integer (int64)"),
    ("custom", {"x": 1.0, "n": 2, "tag": 5}, "tag", "expected a string, got 5"),
])
def test_a_mismatching_row_is_refused_naming_its_field(
        registry: MlflowRegistry, zoo: dict[str, ZooModel], key: str, row: dict[str, Any],
        field: str, message: str) -> None:
    model = zoo[key]
    scorer = registry.load(model.name, model.version)
    with pytest.raises(InputMismatch) as caught:
        scorer.check_row(row)
    assert caught.value.field == field
    assert message in caught.value.message


@pytest.mark.parametrize("key", ["pipeline", "multiclass", "regressor", "hgb", "linear",
                                 "custom", "tensor", "named_tensors"])
def test_checked_rows_batch_into_what_mlflow_enforcement_makes_of_the_example(
        registry: MlflowRegistry, zoo: dict[str, ZooModel], key: str) -> None:
    # MLflow's private enforcement is the reference for what its pyfunc hands a
    # model; the scikit-learn scorers hand the estimator ours directly.
    from mlflow.models.utils import _enforce_schema

    model = zoo[key]
    scorer = registry.load(model.name, model.version)
    ours = build_input(scorer.schema, [scorer.check_row(row) for row in model.rows])
    signature = mlflow.models.get_model_info(model.uri).signature
    theirs = _enforce_schema(model.example, signature.inputs)
    if isinstance(theirs, pd.DataFrame):
        pd.testing.assert_frame_equal(ours, theirs)
    elif isinstance(theirs, dict):
        assert isinstance(ours, dict) and ours.keys() == theirs.keys()
        for name, array in theirs.items():
            assert ours[name].dtype == array.dtype
            np.testing.assert_array_equal(ours[name], array)
    else:
        assert isinstance(ours, np.ndarray) and ours.dtype == theirs.dtype
        np.testing.assert_array_equal(ours, theirs)


def test_the_folded_scorers_agree_with_their_estimators(registry: MlflowRegistry,
                                                        zoo: dict[str, ZooModel]) -> None:
    rng = np.random.default_rng(5)
    model = zoo["linear"]
    scorer = registry.load(model.name, model.version)
    assert isinstance(scorer, LinearScorer)
    assert scorer.classes == ("no", "yes")
    assert scorer.feature_names == ("f0", "f1", "count", "weight")
    rows = [{"f0": float(a), "f1": float(b), "count": int(c), "weight": float(w)}
            for a, b, c, w in zip(rng.normal(size=300), rng.normal(2, 3, 300),
                                  rng.integers(0, 12, 300), rng.uniform(0, 5, 300),
                                  strict=True)]
    batch = scorer.predict_rows([scorer.check_row(r) for r in rows])
    frame = pd.DataFrame(rows).astype({"count": np.int64, "weight": np.float32})
    expected = sklearn_model(model).predict_proba(frame)
    np.testing.assert_allclose(batch.raw, expected, rtol=1e-12, atol=1e-14)
    # the float matrix path rounds the float32 column as the frame does
    matrix = pd.DataFrame(rows).to_numpy(dtype=np.float64)
    np.testing.assert_allclose(scorer.predict_batch(matrix), expected[:, 1],
                               rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose([scorer.predict_one(r) for r in matrix.tolist()],
                               expected[:, 1], rtol=1e-12, atol=1e-14)
    ridge = zoo["ridge"]
    folded = registry.load(ridge.name, ridge.version)
    assert isinstance(folded, LinearScorer) and not folded.logistic
    x = rng.normal(size=(50, 3))
    np.testing.assert_allclose(
        folded.predict_batch(x),
        sklearn_model(ridge).predict(pd.DataFrame(x, columns=["u", "v", "w"])),
        rtol=1e-12, atol=1e-12)


def test_a_model_without_a_signature_loads_with_a_warning(
        registry: MlflowRegistry, zoo: dict[str, ZooModel],
        caplog: pytest.LogCaptureFixture) -> None:
    model = zoo["unsigned"]
    with caplog.at_level(logging.WARNING, logger="models.registry"):
        scorer = registry.load(model.name, model.version)
    assert scorer.schema.kind == "none"
    warned = [r for r in caplog.records if r.name == "models.registry"]
    assert len(warned) == 1 and "without an input signature" in warned[0].getMessage()
    assert model.uri in warned[0].getMessage()
    # rows pass as they are, extra names too
    assert scorer.check_row({"a": 1, "b": 2.5, "c": "x"}) == {"a": 1, "b": 2.5, "c": "x"}


def test_skops_models_load_with_the_types_trusted_at_log_time(zoo: dict[str, ZooModel]) -> None:
    flavors = mlflow.models.get_model_info(zoo["hgb"].uri).flavors["sklearn"]
    assert flavors["serialization_format"] == "skops"
    assert flavors["skops_trusted_types"] == [
        "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor"]
    forest = mlflow.models.get_model_info(zoo["forest"].uri).flavors["sklearn"]
    assert forest["serialization_format"] == "cloudpickle"


def test_offline_loading_replays_numeric_models_and_names_the_rest(
        registry: MlflowRegistry, zoo: dict[str, ZooModel]) -> None:
    hgb = zoo["hgb"]
    with pytest.raises(NotReplayable, match="ratio"):  # an optional column
        registry.load_offline(hgb.name, hgb.version)
    for key in ("pipeline", "tensor", "custom"):
        with pytest.raises(NotReplayable):
            registry.load_offline(zoo[key].name, zoo[key].version)
    with pytest.raises(NotReplayable, match="3 classes"):
        registry.load_offline(zoo["multiclass"].name, zoo["multiclass"].version)
    model = zoo["linear"]
    offline = registry.load_offline(model.name, model.version)
    assert isinstance(offline, SklearnScorer)
    matrix = model.example.to_numpy(dtype=np.float64)
    np.testing.assert_allclose(offline.predict_batch(matrix),
                               sklearn_model(model).predict_proba(model.example)[:, 1],
                               **TOLERANCE)
    forest = zoo["forest"]
    offline = registry.load_offline(forest.name, forest.version)
    np.testing.assert_array_equal(
        offline.predict_batch(forest.example.to_numpy()),  # type: ignore[attr-defined]
        sklearn_model(forest).predict_proba(forest.example)[:, 1])


def test_the_zoo_is_logged_once(store: tuple[str, dict[str, ZooModel]], tmp_path: Path) -> None:
    uri, zoo = store
    again = log_zoo(uri, tmp_path, keys=["ridge", "tensor"])
    assert {k: m.version for k, m in again.items()} == {"ridge": zoo["ridge"].version,
                                                        "tensor": zoo["tensor"].version}
    np.testing.assert_array_equal(again["tensor"].example, zoo["tensor"].example)


def test_signatures_become_input_schemas() -> None:
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema
    from mlflow.types import TensorSpec as MlflowTensorSpec
    from mlflow.types.schema import Array

    from models.inputs import ColumnSpec, InputSchema, TensorSpec
    from models.registry import UnsupportedSignature, schema_from_signature

    assert schema_from_signature(None) == InputSchema("none")
    columns = ModelSignature(Schema([ColSpec("long", "n"), ColSpec("string", "s", False),
                                     ColSpec("datetime", "t"), ColSpec("binary", "b")]))
    assert schema_from_signature(columns) == InputSchema("columns", (
        ColumnSpec("n", "long"), ColumnSpec("s", "string", required=False),
        ColumnSpec("t", "datetime"), ColumnSpec("b", "binary")))
    text = schema_from_signature(ModelSignature(Schema([ColSpec("string")])))
    assert text.positional and text.names == ("input",)
    two = schema_from_signature(ModelSignature(Schema([ColSpec("double"), ColSpec("double")])))
    assert two.names == ("0", "1")
    tensors = ModelSignature(Schema([MlflowTensorSpec(np.dtype("uint8"), (-1, 28, 28), "img"),
                                     MlflowTensorSpec(np.dtype(str), (-1,), "caption")]))
    assert schema_from_signature(tensors) == InputSchema("tensors", tensors=(
        TensorSpec("img", "uint8", (-1, 28, 28)), TensorSpec("caption", "str", (-1,))))
    with pytest.raises(UnsupportedSignature, match="'tags' has type"):
        schema_from_signature(ModelSignature(Schema([ColSpec(Array("string"), "tags")])))
