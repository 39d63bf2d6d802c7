"""The MLflow shell against a real MLflow store on SQLite."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import pytest

from models.registry import LinearScorer, MlflowRegistry, UnknownModelVersion
from serving.cli.demo.models import DEMO_MODEL_NAME, FEATURE_NAMES, seed_demo_models


def test_seed_is_idempotent(mlflow_store: dict[str, Any]) -> None:
    again = seed_demo_models(str(mlflow_store["uri"]), Path(mlflow_store["root"]) / "artifacts")
    assert again.created is False
    assert again.versions == mlflow_store["seed"].versions == {
        "candidate": "3", "challenger": "2", "champion": "1", "tree": "4"}
    client = mlflow.MlflowClient(str(mlflow_store["uri"]))
    assert len(client.search_model_versions(f"name='{DEMO_MODEL_NAME}'")) == 4


def test_aliases_resolve_and_unknown_ones_are_named(mlflow_store: dict[str, Any]) -> None:
    registry = MlflowRegistry(str(mlflow_store["uri"]))
    assert registry.resolve(DEMO_MODEL_NAME, "champion") == "1"
    assert registry.resolve(DEMO_MODEL_NAME, "2") == "2"
    with pytest.raises(UnknownModelVersion, match="nightly"):
        registry.resolve(DEMO_MODEL_NAME, "nightly")
    with pytest.raises(UnknownModelVersion):
        registry.resolve(DEMO_MODEL_NAME, "9")


@pytest.mark.parametrize("version", ["1", "2"])
def test_loaded_scorer_matches_the_mlflow_model(mlflow_store: dict[str, Any], version: str) -> None:
    registry = MlflowRegistry(str(mlflow_store["uri"]))
    scorer = registry.load(DEMO_MODEL_NAME, version)
    assert isinstance(scorer, LinearScorer)
    assert scorer.feature_names == FEATURE_NAMES
    mlflow.set_tracking_uri(str(mlflow_store["uri"]))
    mlflow.set_registry_uri(str(mlflow_store["uri"]))  # another test may have moved it
    pyfunc = mlflow.pyfunc.load_model(f"models:/{DEMO_MODEL_NAME}/{version}")
    x = np.random.default_rng(3).normal(size=(200, 8)) * 3
    expected = np.asarray(pyfunc.get_raw_model().predict_proba(
        pd.DataFrame(x, columns=list(FEATURE_NAMES))))[:, 1]
    one_by_one = np.array([scorer.predict_one(row) for row in x.tolist()])
    np.testing.assert_allclose(one_by_one, expected, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(scorer.predict_batch(x), expected, rtol=1e-12, atol=1e-14)
