"""The demo's registered model: four scikit-learn versions of one classifier.

Version 1 (alias ``champion``) is a logistic regression on raw features;
version 2 (alias ``challenger``) is a scaled logistic regression trained on
more data; version 3 (alias ``candidate``) is another, for rollout demos;
version 4 (alias ``tree``) is a gradient-boosted tree ensemble on the same
eight features, which no weight vector can stand for, so the gateway scores
it through the model itself. All are logged with a signature, an input
example and a sample of their training data (the reference for drift
checks), in MLflow's default skops format. Every seed run points the aliases
back at these versions, so the demo can run again after a rollout moved
``champion``.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

DEMO_MODEL_NAME = "rampart-demo-classifier"
DEMO_EXPERIMENT = "rampart-demo"
FEATURE_NAMES: tuple[str, ...] = tuple(f"f{i}" for i in range(8))
SEED_TAG = "rampart.seed"
TRUE_WEIGHTS = np.array([1.2, -0.8, 0.5, 0.0, 0.3, -0.4, 0.9, 0.1])
# skops loads only the types it trusts by default and the ones a model's MLmodel
# lists; a fitted HistGradientBoostingClassifier also holds its trees' predictors
# (what skops.io.get_untrusted_types names for a dump of one).
TREE_TRUSTED_TYPES: tuple[str, ...] = (
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
)


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
    from sklearn.ensemble import HistGradientBoostingClassifier
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

    specs: list[tuple[str, int, int, Any, tuple[str, ...]]] = [
        ("champion", 2_000, 1, LogisticRegression(C=0.05, max_iter=500), ()),
        ("challenger", 20_000, 2, make_pipeline(StandardScaler(), LogisticRegression(C=1.0)),
         ()),
        ("candidate", 10_000, 3, make_pipeline(StandardScaler(), LogisticRegression(C=0.5)),
         ()),
        # Shallow trees on plenty of rows: close enough to the logistic truth that
        # its labels agree with the linear versions' about as often as theirs do
        # with each other (the demo's shadow comparison), yet not linear.
        ("tree", 100_000, 4, HistGradientBoostingClassifier(
            max_depth=2, learning_rate=0.1, max_iter=300, random_state=4),
         TREE_TRUSTED_TYPES),
    ]
    created = False
    for alias, n_rows, seed, estimator, trusted_types in specs:
        if alias in existing:
            continue
        x, y = make_training_data(n_rows, seed)
        frame = pd.DataFrame(x, columns=list(FEATURE_NAMES))
        estimator.fit(frame, y)
        _check_trusted_types(estimator, trusted_types)
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
                skops_trusted_types=list(trusted_types) or None,
            )
            model_uri = f"runs:/{run.info.run_id}/model"
        mv = mlflow.register_model(model_uri, DEMO_MODEL_NAME, tags={SEED_TAG: alias})
        existing[alias] = str(mv.version)
        created = True
    for alias, version in existing.items():
        client.set_registered_model_alias(DEMO_MODEL_NAME, alias, version)
    return SeedResult(DEMO_MODEL_NAME, dict(sorted(existing.items())), created)


def _check_trusted_types(estimator: Any, trusted_types: tuple[str, ...]) -> None:
    """Refuse to log a version that skops would refuse to load: one holding a
    type (after a scikit-learn upgrade, say) its trusted list does not name."""
    import skops.io  # type: ignore[import-untyped]

    needed = skops.io.get_untrusted_types(data=skops.io.dumps(estimator))
    missing = sorted(set(needed) - set(trusted_types))
    if missing:
        raise RuntimeError(f"{type(estimator).__name__} needs skops to trust {missing}; "
                           "add them to its trusted types in serving/cli/demo/models.py")
