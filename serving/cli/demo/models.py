"""The demo's registered model: three scikit-learn versions of one classifier.

Version 1 (alias ``champion``) is a logistic regression on raw features;
version 2 (alias ``challenger``) is a scaled logistic regression trained on
more data; version 3 (alias ``candidate``) is another, for rollout demos.
All are logged with a signature, an input example and a sample of their
training data (the reference for drift checks). Every seed run points the
aliases back at these versions, so the demo can run again after a rollout
moved ``champion``.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

DEMO_MODEL_NAME = "rampart-demo-classifier"
DEMO_EXPERIMENT = "rampart-demo"
FEATURE_NAMES: tuple[str, ...] = tuple(f"f{i}" for i in range(8))
SEED_TAG = "rampart.seed"
TRUE_WEIGHTS = np.array([1.2, -0.8, 0.5, 0.0, 0.3, -0.4, 0.9, 0.1])


def make_training_data(
    n: int, seed: int
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64]]:
    """Features ``f0..f7`` ~ N(0, 1) with a logistic label from TRUE_WEIGHTS."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, len(FEATURE_NAMES)))
    p = 1.0 / (1.0 + np.exp(-(x @ TRUE_WEIGHTS - 0.5)))
    y = (rng.random(n) < p).astype(np.int64)
    return x, y


@dataclass(frozen=True)
class SeedResult:
    model_name: str
    versions: dict[str, str]  # alias -> version
    created: bool


def seed_demo_models(tracking_uri: str, artifact_root: Path) -> SeedResult:
    """Train and register the demo versions; a second call adds nothing.

    Idempotence is keyed on a registered-model tag, so a partly seeded
    registry (a crash between the two versions) is completed, not duplicated.
    """
    import mlflow
    import pandas as pd
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException
    from mlflow.models import infer_signature
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    logging.getLogger("mlflow").setLevel(logging.ERROR)
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    try:
        client.get_registered_model(DEMO_MODEL_NAME)
    except MlflowException:
        client.create_registered_model(
            DEMO_MODEL_NAME, description="Rampart demo: a binary classifier on 8 features."
        )
    existing: dict[str, str] = {
        str(mv.tags[SEED_TAG]): str(mv.version)
        for mv in client.search_model_versions(f"name='{DEMO_MODEL_NAME}'")
        if mv.tags.get(SEED_TAG)
    }
    if mlflow.get_experiment_by_name(DEMO_EXPERIMENT) is None:
        artifact_root.mkdir(parents=True, exist_ok=True)
        mlflow.create_experiment(
            DEMO_EXPERIMENT, artifact_location=artifact_root.resolve().as_uri()
        )
    mlflow.set_experiment(DEMO_EXPERIMENT)

    specs = [
        ("champion", 2_000, 1, LogisticRegression(C=0.05, max_iter=500)),
        ("challenger", 20_000, 2, make_pipeline(StandardScaler(), LogisticRegression(C=1.0))),
        ("candidate", 10_000, 3, make_pipeline(StandardScaler(), LogisticRegression(C=0.5))),
    ]
    created = False
    for alias, n_rows, seed, estimator in specs:
        if alias in existing:
            continue
        x, y = make_training_data(n_rows, seed)
        frame = pd.DataFrame(x, columns=list(FEATURE_NAMES))
        estimator.fit(frame, y)
        with mlflow.start_run(run_name=f"demo-{alias}") as run:
            signature = infer_signature(frame, estimator.predict_proba(frame)[:, 1])
            mlflow.log_params({"rows": n_rows, "seed": seed, "estimator": type(estimator).__name__})
            with tempfile.TemporaryDirectory() as tmp:
                sample = frame.sample(min(n_rows, 5_000), random_state=seed)
                sample_path = Path(tmp) / "training_sample.parquet"
                sample.to_parquet(sample_path, index=False)
                mlflow.log_artifact(str(sample_path), artifact_path="reference")
            mlflow.sklearn.log_model(
                estimator,
                name="model",
                signature=signature,
                input_example=frame.head(3),
            )
            model_uri = f"runs:/{run.info.run_id}/model"
        mv = mlflow.register_model(model_uri, DEMO_MODEL_NAME, tags={SEED_TAG: alias})
        existing[alias] = str(mv.version)
        created = True
    for alias, version in existing.items():
        client.set_registered_model_alias(DEMO_MODEL_NAME, alias, version)
    return SeedResult(DEMO_MODEL_NAME, dict(sorted(existing.items())), created)
