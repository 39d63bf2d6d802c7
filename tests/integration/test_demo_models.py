"""The demo's tree version in a real MLflow store on SQLite, and ``rampart serve
--model`` naming a model or alias that store does not have (refused before Ray
starts)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml
from mlflow import MlflowClient

from serving.cli.demo.models import (
    DEMO_MODEL_NAME,
    FEATURE_NAMES,
    SEED_TAG,
    TREE_TRUSTED_TYPES,
    seed_demo_models,
)
from serving.cli.main import main
from tests.ports import free_port

pytestmark = pytest.mark.integration


def test_the_tree_version_is_registered_once_under_its_alias(mlflow_store: dict[str, Any]
                                                              ) -> None:
    uri = str(mlflow_store["uri"])
    assert mlflow_store["seed"].versions["tree"] == "4"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    tree = client.get_model_version_by_alias(DEMO_MODEL_NAME, "tree")
    assert (str(tree.version), tree.tags[SEED_TAG]) == ("4", "tree")
    again = seed_demo_models(uri, Path(mlflow_store["root"]) / "artifacts")
    assert again.created is False and again.versions["tree"] == "4"
    assert len(client.search_model_versions(f"name='{DEMO_MODEL_NAME}'")) == 4


def test_the_tree_version_loads_with_its_skops_trusted_types(mlflow_store: dict[str, Any]
                                                              ) -> None:
    from mlflow.models import get_model_info
    from sklearn.ensemble import HistGradientBoostingClassifier

    mlflow.set_tracking_uri(str(mlflow_store["uri"]))
    mlflow.set_registry_uri(str(mlflow_store["uri"]))  # another test may have moved it
    uri = f"models:/{DEMO_MODEL_NAME}@tree"
    info = get_model_info(uri)
    flavor = info.flavors["sklearn"]
    assert flavor["serialization_format"] == "skops"
    assert flavor["skops_trusted_types"] == list(TREE_TRUSTED_TYPES)
    assert info.signature is not None
    assert tuple(info.signature.inputs.input_names()) == FEATURE_NAMES
    model = mlflow.sklearn.load_model(uri)
    assert isinstance(model, HistGradientBoostingClassifier)
    rows = pd.DataFrame(np.random.default_rng(3).normal(size=(50, 8)), columns=list(FEATURE_NAMES))
    proba = model.predict_proba(rows)[:, 1]
    assert proba.shape == (50,) and np.all((proba > 0) & (proba < 1))
    # not a weight vector in disguise: its scores are not a logistic of a linear function
    logits = np.log(proba / (1 - proba))
    design = np.column_stack([rows.to_numpy(), np.ones(len(rows))])
    residual = np.linalg.lstsq(design, logits, rcond=None)[1]
    assert residual.size == 1 and residual[0] > 1e-3
    # the reference sample for drift checks is logged like the other versions'
    client = MlflowClient(tracking_uri=str(mlflow_store["uri"]))
    run_id = client.get_model_version_by_alias(DEMO_MODEL_NAME, "tree").run_id
    assert run_id
    assert [a.path for a in client.list_artifacts(run_id, "reference")] == [
        "reference/training_sample.parquet"]


@pytest.mark.parametrize(
    ("model", "needle"),
    [
        (f"models:/{DEMO_MODEL_NAME}@nightly", "no version or alias 'nightly'"),
        (f"models:/{DEMO_MODEL_NAME}/9", "no version or alias '9'"),
        ("models:/no-such-model@champion", "of model 'no-such-model'"),
    ],
)
def test_serve_names_a_model_mlflow_does_not_have_in_one_line(
    mlflow_store: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str], model: str, needle: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", str(mlflow_store["uri"]))
    assert main(["serve", "--model", model, "--port", str(free_port())]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rampart: error: MLflow has no version or alias") and needle in err
    assert "--tracking-uri" in err and err.count("\n") == 1


def test_the_packaged_default_serves_the_tree(mlflow_store: dict[str, Any]) -> None:
    from serving.cli.common import DEFAULT_CONFIG, routing_table
    from serving.kernel.config import parse_config

    data = yaml.safe_load(DEFAULT_CONFIG.read_text())
    data["tracking_uri"] = mlflow_store["uri"]
    table = routing_table(parse_config(data))
    served = {(m.name, m.version, m.alias) for m in table.model_refs()}
    assert (DEMO_MODEL_NAME, "4", "tree") in served
