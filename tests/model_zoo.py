"""Small MLflow models of every flavour and signature the gateway serves, for
tests and benchmarks.

    zoo = log_zoo("sqlite:///.../mlflow.db", tmp_path / "artifacts")
    model = zoo["pipeline"]
    model.uri        # "models:/zoo-pipeline/1"
    model.example    # what mlflow.pyfunc.load_model(model.uri).predict takes
    model.rows       # the same rows as request JSON (one dict per row)

Each model trains in milliseconds on synthetic data (fixed seeds) and is
logged with an explicit signature, registered as ``PREFIX + key``. A second
call on the same store logs nothing and returns the versions already there
(each version is tagged ``rampart.zoo`` with its key).

==================  =========================================================
key                 model
==================  =========================================================
``pipeline``        Pipeline: ColumnTransformer (OneHotEncoder on a string
                    ``plan``, long ``visits``/``seats``, double ``spend``)
                    then LogisticRegression; binary, labels 0/1
``multiclass``      LogisticRegression, 3 string classes, 4 double columns
``regressor``       GradientBoostingRegressor (skops, trusted ``Tree``)
``forest``          RandomForestClassifier, cloudpickle, default pyfunc
``custom``          PythonModel returning a dict of named outputs; optional
                    string column, a ``scale`` param, an ``explain`` method
``tensor``          PythonModel over one unnamed float32 tensor (-1, 4),
                    answering a 2-D array
``named_tensors``   PythonModel over tensors ``a`` float64 (-1, 3) and ``b``
                    int64 (-1,)
``unsigned``        Ridge logged without a signature
``hgb``             HistGradientBoostingClassifier (skops, trusted
                    ``TreePredictor``) with an optional double column
``linear``          LogisticRegression over double/long/float columns,
                    classes "no"/"yes": folds into the inline fast path
``ridge``           Ridge over doubles: folds as a linear regression
==================  =========================================================
"""

from __future__ import annotations

import base64
import logging
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from mlflow.pyfunc import PythonModel

ZOO_TAG = "rampart.zoo"
DEFAULT_PREFIX = "zoo-"
ZOO_EXPERIMENT = "rampart-model-zoo"

Answers = Literal["probabilities", "labels", "value"]


@dataclass(frozen=True)
class ZooModel:
    """One logged and registered zoo model.

    ``example``: a model input as ``mlflow.pyfunc.load_model(uri).predict``
    takes it (DataFrame, ndarray or dict of ndarrays); ``rows``: the same
    rows as a request carries them (JSON values; tensors under their names,
    ``"input"`` for an unnamed one). ``answers`` is what ``output="auto"``
    gives: class ``probabilities``, or the ``value`` of ``predict``.
    ``flavour`` is ``sklearn`` or ``pyfunc``.
    """

    key: str
    name: str
    version: str
    uri: str
    kind: str
    flavour: Literal["sklearn", "pyfunc"]
    answers: Answers
    example: Any
    rows: list[dict[str, Any]]


def _json(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return [_json(v) for v in value]
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, pd.Timestamp):
        return value.isoformat()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and np.isnan(value):
        return None
    return value


def request_rows(example: Any) -> list[dict[str, Any]]:
    """A model input as request rows of JSON values."""
    if isinstance(example, pd.DataFrame):
        return [{str(k): _json(v) for k, v in record.items()}
                for record in example.to_dict("records")]
    if isinstance(example, dict):
        n = len(next(iter(example.values())))
        return [{k: _json(v[i]) for k, v in example.items()} for i in range(n)]
    return [{"input": _json(instance)} for instance in example]


# --- custom pyfunc models --------------------------------------------------------
# At module level, so they are pickled by reference and imported on load.

class NamedOutputs(PythonModel):
    """``total = x * scale + n`` and the length of the optional ``tag``."""

    def predict(self, context: Any, model_input: pd.DataFrame,
                params: dict[str, Any] | None = None) -> dict[str, np.ndarray]:
        scale = float((params or {}).get("scale", 1.0))
        tags = model_input["tag"] if "tag" in model_input else pd.Series(
            [None] * len(model_input))
        return {
            "total": model_input["x"].to_numpy() * scale + model_input["n"].to_numpy(),
            "tag_length": np.array([len(t) if isinstance(t, str) else 0 for t in tags]),
        }

    def explain(self, model_input: pd.DataFrame) -> pd.DataFrame:
        """Each row's terms of ``total``, for ``output="explain"``."""
        return pd.DataFrame({"from_x": model_input["x"].to_numpy(),
                             "from_n": model_input["n"].to_numpy().astype(np.float64)})


class TensorModel(PythonModel):
    """Per row of a float32 (n, 4) tensor: its sum and its maximum."""

    def predict(self, context: Any, model_input: np.ndarray,
                params: dict[str, Any] | None = None) -> np.ndarray:
        x = np.asarray(model_input)
        return np.stack([x.sum(axis=1), x.max(axis=1)], axis=1)


class _SumTimes:
    # MLflow checks the type hint of a predict defined on a PythonModel
    # subclass itself, and of its input at log time; it has none for a dict of
    # arrays and warns. Defined here, unhinted, predict is neither checked nor
    # hinted wrongly.
    def predict(self, context: Any, model_input,  # type: ignore[no-untyped-def]
                params: dict[str, Any] | None = None) -> np.ndarray:
        return np.asarray(model_input["a"].sum(axis=1) * model_input["b"])


class TwoTensorModel(_SumTimes, PythonModel):
    """``a.sum(axis=1) * b`` over named tensors ``a`` (n, 3) and ``b`` (n,)."""


# --- the zoo -----------------------------------------------------------------

Built = tuple[Any, Callable[[], Any]]
"""A trained model's example input, and what logs it (under the active run)."""


@dataclass(frozen=True)
class _Entry:
    kind: str
    flavour: Literal["sklearn", "pyfunc"]
    answers: Answers
    build: Callable[[], Built]


def _sig(*columns: tuple[str, str] | tuple[str, str, bool], params: Any = None) -> Any:
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    specs = [ColSpec(c[1], c[0], required=bool(c[2]) if len(c) > 2 else True)
             for c in columns]
    return ModelSignature(inputs=Schema(specs), params=params)


def _sklearn_logger(estimator: Any, signature: Any, **kwargs: Any) -> Callable[[], Any]:
    def log() -> Any:
        import mlflow.sklearn

        # Requirements given, so MLflow does not load the model in a subprocess
        # to infer them (seconds per model).
        return mlflow.sklearn.log_model(estimator, name="model", signature=signature,
                                        pip_requirements=["mlflow", "scikit-learn"], **kwargs)

    return log


def _pyfunc_logger(python_model: Any, signature: Any) -> Callable[[], Any]:
    def log() -> Any:
        import mlflow.pyfunc

        return mlflow.pyfunc.log_model(name="model", python_model=python_model,
                                       signature=signature,
                                       pip_requirements=["mlflow", "pandas", "numpy"])

    return log


def _pipeline() -> Built:
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    rng = np.random.default_rng(11)
    n = 300
    frame = pd.DataFrame({
        "plan": pd.Series(rng.choice(["basic", "pro", "team"], n), dtype="str"),
        "visits": rng.integers(0, 30, n).astype(np.int64),
        "seats": rng.integers(1, 6, n).astype(np.int64),
        "spend": rng.normal(50.0, 15.0, n),
    })
    logit = 0.15 * frame["visits"] - 2.5 + (frame["plan"] == "pro") * 0.8 + 0.02 * frame["spend"]
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.int64)
    model = Pipeline([
        ("columns", ColumnTransformer([
            ("plan", OneHotEncoder(handle_unknown="ignore"), ["plan"]),
            ("numbers", StandardScaler(), ["visits", "seats", "spend"]),
        ])),
        ("classifier", LogisticRegression(max_iter=500)),
    ]).fit(frame, y)
    signature = _sig(("plan", "string"), ("visits", "long"), ("seats", "long"),
                     ("spend", "double"))
    return frame.head(5), _sklearn_logger(model, signature)


def _multiclass() -> Built:
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(12)
    names = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
    centres = np.array([[5.0, 3.4, 1.5, 0.2], [5.9, 2.8, 4.3, 1.3], [6.6, 3.0, 5.6, 2.0]])
    labels = np.array(["setosa", "versicolor", "virginica"])
    which = rng.integers(0, 3, 150)
    frame = pd.DataFrame(centres[which] + rng.normal(0, 0.35, (150, 4)), columns=names)
    model = LogisticRegression(max_iter=1000).fit(frame, labels[which])
    return frame.head(6), _sklearn_logger(model, _sig(*((c, "double") for c in names)))


def _regressor() -> Built:
    from sklearn.ensemble import GradientBoostingRegressor

    rng = np.random.default_rng(13)
    frame = pd.DataFrame({"size": rng.uniform(20, 200, 200),
                          "rooms": rng.integers(1, 7, 200).astype(np.int64)})
    y = 3.0 * frame["size"] + 20.0 * np.sqrt(frame["rooms"]) + rng.normal(0, 10, 200)
    model = GradientBoostingRegressor(n_estimators=20, max_depth=3, random_state=0)
    model.fit(frame, y)
    return frame.head(5), _sklearn_logger(
        model, _sig(("size", "double"), ("rooms", "long")),
        skops_trusted_types=["sklearn.tree._tree.Tree"])


def _forest() -> Built:
    from sklearn.ensemble import RandomForestClassifier

    rng = np.random.default_rng(14)
    names = [f"x{i}" for i in range(4)]
    frame = pd.DataFrame(rng.normal(size=(200, 4)), columns=names)
    y = (frame["x0"] + frame["x1"] * frame["x2"] > 0).astype(np.int64)
    model = RandomForestClassifier(n_estimators=15, max_depth=4, random_state=0).fit(frame, y)
    return frame.head(6), _sklearn_logger(model, _sig(*((c, "double") for c in names)),
                                          serialization_format="cloudpickle")


def _custom() -> Built:
    from mlflow.types import ParamSchema, ParamSpec

    signature = _sig(("x", "double"), ("n", "long"), ("tag", "string", False),
                     params=ParamSchema([ParamSpec("scale", "double", 1.0)]))
    example = pd.DataFrame({"x": [0.5, 1.5, -2.0, 4.25],
                            "n": np.array([1, 2, 3, 40], dtype=np.int64),
                            "tag": pd.Series(["a", None, "abc", "hello"], dtype="str")})
    return example, _pyfunc_logger(NamedOutputs(), signature)


def _tensor() -> Built:
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    signature = ModelSignature(inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 4))]))
    example = np.arange(12, dtype=np.float32).reshape(3, 4) / np.float32(4)
    return example, _pyfunc_logger(TensorModel(), signature)


def _named_tensors() -> Built:
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    signature = ModelSignature(inputs=Schema([
        TensorSpec(np.dtype(np.float64), (-1, 3), "a"),
        TensorSpec(np.dtype(np.int64), (-1,), "b"),
    ]))
    example = {"a": np.array([[0.5, 1.0, 1.5], [2.0, -1.0, 0.25]]),
               "b": np.array([3, -2], dtype=np.int64)}
    return example, _pyfunc_logger(TwoTensorModel(), signature)


def _unsigned() -> Built:
    from sklearn.linear_model import Ridge

    rng = np.random.default_rng(15)
    frame = pd.DataFrame({"a": rng.normal(size=50), "b": rng.normal(size=50)})
    model = Ridge(alpha=0.5).fit(frame, 2 * frame["a"] - frame["b"])
    return frame.head(4), _sklearn_logger(model, None)


def _hgb() -> Built:
    from sklearn.ensemble import HistGradientBoostingClassifier

    rng = np.random.default_rng(16)
    n = 400
    ratio = rng.uniform(0, 1, n)
    ratio[rng.random(n) < 0.2] = np.nan  # the optional column: sometimes missing
    frame = pd.DataFrame({"amount": rng.gamma(2.0, 30.0, n),
                          "attempts": rng.integers(0, 8, n).astype(np.int64),
                          "ratio": ratio})
    y = ((frame["amount"] > 60) ^ (frame["attempts"] > 4)).astype(np.int64)
    model = HistGradientBoostingClassifier(max_iter=15, max_leaf_nodes=8,
                                           random_state=0).fit(frame, y)
    example = frame.head(6).copy()
    example.loc[1, "ratio"] = np.nan
    return example, _sklearn_logger(
        model, _sig(("amount", "double"), ("attempts", "long"), ("ratio", "double", False)),
        skops_trusted_types=["sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor"])


def _linear() -> Built:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(17)
    n = 500
    frame = pd.DataFrame({"f0": rng.normal(size=n), "f1": rng.normal(2.0, 3.0, n),
                          "count": rng.integers(0, 10, n).astype(np.int64),
                          "weight": rng.uniform(0, 5, n).astype(np.float32)})
    z = frame["f0"] - 0.3 * frame["f1"] + 0.2 * frame["count"] - 0.5 * frame["weight"]
    y = np.where(rng.random(n) < 1 / (1 + np.exp(-z)), "yes", "no")
    model = make_pipeline(StandardScaler(), LogisticRegression()).fit(frame, y)
    signature = _sig(("f0", "double"), ("f1", "double"), ("count", "long"), ("weight", "float"))
    return frame.head(8), _sklearn_logger(model, signature)


def _ridge() -> Built:
    from sklearn.linear_model import Ridge

    rng = np.random.default_rng(18)
    frame = pd.DataFrame(rng.normal(size=(100, 3)), columns=["u", "v", "w"])
    model = Ridge(alpha=1.0).fit(frame, frame.to_numpy() @ np.array([1.0, -2.0, 0.5]) + 3.0)
    return frame.head(5), _sklearn_logger(
        model, _sig(("u", "double"), ("v", "double"), ("w", "double")))


ZOO: dict[str, _Entry] = {
    "pipeline": _Entry("sklearn Pipeline (one-hot string + long + double) -> "
                       "LogisticRegression", "sklearn", "probabilities", _pipeline),
    "multiclass": _Entry("sklearn LogisticRegression, 3 classes", "sklearn", "probabilities",
                         _multiclass),
    "regressor": _Entry("sklearn GradientBoostingRegressor", "sklearn", "value", _regressor),
    "forest": _Entry("sklearn RandomForestClassifier (cloudpickle)", "sklearn",
                     "probabilities", _forest),
    "custom": _Entry("pyfunc PythonModel, dict of named outputs", "pyfunc", "value", _custom),
    "tensor": _Entry("pyfunc PythonModel, float32 tensor (-1, 4)", "pyfunc", "value", _tensor),
    "named_tensors": _Entry("pyfunc PythonModel, named tensors a and b", "pyfunc", "value",
                            _named_tensors),
    "unsigned": _Entry("sklearn Ridge without a signature", "sklearn", "value", _unsigned),
    "hgb": _Entry("sklearn HistGradientBoostingClassifier (skops, trusted types)", "sklearn",
                  "probabilities", _hgb),
    "linear": _Entry("sklearn StandardScaler + LogisticRegression (folds)", "sklearn",
                     "probabilities", _linear),
    "ridge": _Entry("sklearn Ridge (folds)", "sklearn", "value", _ridge),
}


def log_zoo(tracking_uri: str, artifact_root: Path, *, prefix: str = DEFAULT_PREFIX,
            keys: Iterable[str] | None = None) -> dict[str, ZooModel]:
    """Train, log and register the zoo's models (all, or ``keys``) in the
    MLflow store at ``tracking_uri`` (also the registry), artifacts under
    ``artifact_root``; each as ``prefix + key``, version 1 on a fresh store.
    Models already registered there by an earlier call are reused."""
    import mlflow
    from mlflow import MlflowClient

    logging.getLogger("mlflow").setLevel(logging.ERROR)
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    experiment = mlflow.get_experiment_by_name(ZOO_EXPERIMENT)
    if experiment is None:
        artifact_root.mkdir(parents=True, exist_ok=True)
        experiment_id = mlflow.create_experiment(
            ZOO_EXPERIMENT, artifact_location=artifact_root.resolve().as_uri())
    else:
        experiment_id = experiment.experiment_id
    zoo: dict[str, ZooModel] = {}
    for key in (list(ZOO) if keys is None else list(keys)):
        entry = ZOO[key]
        name = prefix + key
        # Training is seeded: a model registered by an earlier call has the same
        # example, so only the training is repeated, not the logging.
        example, log = entry.build()
        example = example.reset_index(drop=True) if isinstance(example, pd.DataFrame) else example
        versions = [int(mv.version) for mv in client.search_model_versions(f"name='{name}'")
                    if mv.tags.get(ZOO_TAG) == key]
        if versions:
            version = str(min(versions))
        else:
            with (mlflow.start_run(experiment_id=experiment_id, run_name=f"zoo-{key}"),
                  warnings.catch_warnings()):
                # Examples are returned here, not logged: MLflow would run each
                # model on its example at log time, which costs seconds.
                warnings.filterwarnings("ignore", message=".*An input example was not provided",
                                        category=UserWarning)
                info = log()
            version = str(mlflow.register_model(info.model_uri, name,
                                                tags={ZOO_TAG: key}).version)
        zoo[key] = ZooModel(key, name, version, f"models:/{name}/{version}", entry.kind,
                            entry.flavour, entry.answers, example, request_rows(example))
    return zoo
