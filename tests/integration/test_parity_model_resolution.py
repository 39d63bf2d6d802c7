"""Parity resolves models through the model registry, and says what is wrong."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import pytest

from models.registry import MlflowRegistry
from serving.cli.demo.models import DEMO_MODEL_NAME, FEATURE_NAMES
from telemetry.parity_report import ParityInputError, load_offline_model


def test_an_alias_resolves_to_its_version_with_the_training_reference(
        mlflow_store: dict[str, Any]) -> None:
    model = load_offline_model(f"models:/{DEMO_MODEL_NAME}@champion", str(mlflow_store["uri"]))
    assert (model.name, model.version) == (DEMO_MODEL_NAME, "1")
    assert model.feature_names == FEATURE_NAMES
    assert model.reference is not None and set(model.reference) == set(FEATURE_NAMES)
    # the offline path is the estimator's own predict_proba, not the folded scorer
    mlflow.set_tracking_uri(str(mlflow_store["uri"]))
    mlflow.set_registry_uri(str(mlflow_store["uri"]))  # another test may have moved it
    estimator = mlflow.sklearn.load_model(f"models:/{DEMO_MODEL_NAME}/1")
    x = np.random.default_rng(1).normal(size=(50, len(FEATURE_NAMES)))
    expected = estimator.predict_proba(pd.DataFrame(x, columns=list(FEATURE_NAMES)))[:, 1]
    np.testing.assert_array_equal(model.predict(x), expected)


@pytest.mark.parametrize(("uri", "message"), [
    ("runs:/abc/model", "models:/NAME/VERSION or models:/NAME@ALIAS"),
    (f"models:/{DEMO_MODEL_NAME}/99", "no version or alias '99'"),
    (f"models:/{DEMO_MODEL_NAME}@nightly", "no version or alias 'nightly'"),
    ("models:/no-such-model/1", "model 'no-such-model'"),
])
def test_a_bad_uri_or_an_unknown_version_is_a_clear_input_error(
        mlflow_store: dict[str, Any], uri: str, message: str) -> None:
    with pytest.raises(ParityInputError, match=message):
        load_offline_model(uri, str(mlflow_store["uri"]))


def test_a_version_logged_without_a_reference_has_none(tmp_path: Path) -> None:
    from sklearn.linear_model import LogisticRegression

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    experiment = mlflow.create_experiment("plain", artifact_location=(
        tmp_path / "artifacts").as_uri())
    frame = pd.DataFrame({"a": [0.0, 1.0, 2.0, 3.0], "b": [1.0, 0.0, 1.0, 0.0]})
    estimator = LogisticRegression().fit(frame, [0, 0, 1, 1])
    with mlflow.start_run(experiment_id=experiment):
        info = mlflow.sklearn.log_model(
            estimator, name="model", signature=mlflow.models.infer_signature(frame))
    mlflow.register_model(info.model_uri, "plain")
    assert MlflowRegistry(uri).reference_sample("plain", "1") == {}
    model = load_offline_model("models:/plain/1", uri)
    assert model.reference is None and model.feature_names == ("a", "b")
