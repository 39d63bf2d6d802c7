"""Model versions from the MLflow registry, loaded once per replica.

``ModelRegistry`` is the seam: the gateway asks it to resolve aliases and load
versions. :class:`MlflowRegistry` is the real one (tracking and registry on
SQLite under ``.rampart/`` by default, any MLflow tracking URI otherwise).

Loaded versions are *scorers*. A scikit-learn linear model (optionally behind
a ``StandardScaler`` in a ``Pipeline``) is folded into one weight vector and
scored with a few float operations in pure Python: for one row of a handful
of features that is several times cheaper than ``predict_proba`` and agrees
with it to floating-point rounding. Anything else goes through MLflow's
pyfunc ``predict``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from models.inputs import InputSchema
from models.outputs import ScoredBatch


class UnknownModelVersion(LookupError):
    """The registry has no such model, version or alias."""


MODEL_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:/(?P<version>\d+)|@(?P<alias>[\w.-]+))$")


def parse_model_uri(uri: str) -> tuple[str, str]:
    """``(name, version or alias)`` of ``models:/NAME/VERSION`` or ``models:/NAME@ALIAS``;
    ``ValueError`` naming both forms for anything else."""
    match = MODEL_URI.match(uri)
    if not match:
        raise ValueError(
            f"a model URI looks like models:/NAME/VERSION or models:/NAME@ALIAS, got {uri!r}")
    return match["name"], match["version"] or match["alias"]


class Scorer(Protocol):
    """A loaded model version: checks request rows against its signature and
    scores them.

    ``check_row`` turns one row of JSON values (name -> value; a tensor
    model's row holds one instance per input name, an unnamed single tensor
    is under ``"input"``) into what ``predict_rows`` takes, raising
    :class:`~models.inputs.InputMismatch` naming the field. ``inline`` says the
    version is cheap enough to score on the replica's event loop (the folded
    linear path, microseconds); every other version is scored in the worker
    pool.
    """

    @property
    def name(self) -> str: ...

    @property
    def version(self) -> str: ...

    @property
    def schema(self) -> InputSchema: ...

    @property
    def inline(self) -> bool: ...

    def check_row(self, row: Mapping[str, Any]) -> dict[str, Any]: ...

    def predict_rows(self, rows: Sequence[Mapping[str, Any]],
                     params: Mapping[str, Any] | None = None) -> ScoredBatch:
        """Score checked rows; ``params`` are MLflow's inference params."""
        ...


class NumericScorer(Scorer, Protocol):
    """A version over numeric features only, scored without a DataFrame: the
    request path's fast path and vectorized replay."""

    @property
    def feature_names(self) -> tuple[str, ...]: ...

    def predict_one(self, values: Sequence[float]) -> float:
        """The score of one row given in ``feature_names`` order."""
        ...

    def predict_batch(self, matrix: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        """Scores of many rows (shape ``(n, len(feature_names))``)."""
        ...


class ModelRegistry(Protocol):
    def resolve(self, name: str, version_or_alias: str) -> str:
        """Concrete version number for a version or alias; raises UnknownModelVersion."""
        ...

    def load(self, name: str, version: str) -> Scorer:
        """Load one version for serving."""
        ...


@dataclass(frozen=True)
class LinearScorer:
    """``sigmoid(w·x + b)`` (logistic) or ``w·x + b`` (linear), folded from sklearn."""

    name: str
    version: str
    feature_names: tuple[str, ...]
    weights: tuple[float, ...]
    intercept: float
    logistic: bool

    def predict_one(self, values: Sequence[float]) -> float:
        z = self.intercept
        for w, x in zip(self.weights, values, strict=True):
            z += w * x
        if not self.logistic:
            return z
        # Numerically stable logistic on both tails.
        if z >= 0:
            return 1.0 / (1.0 + math.exp(-z))
        e = math.exp(z)
        return e / (1.0 + e)

    def predict_batch(self, matrix: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        z = matrix @ np.asarray(self.weights) + self.intercept
        if not self.logistic:
            return np.asarray(z, dtype=np.float64)
        return np.asarray(1.0 / (1.0 + np.exp(-z)), dtype=np.float64)


@dataclass(frozen=True)
class PyfuncScorer:
    """Any MLflow model, through ``pyfunc.predict`` on a one-row DataFrame."""

    name: str
    version: str
    feature_names: tuple[str, ...]
    model: Any

    def predict_one(self, values: Sequence[float]) -> float:
        return float(self.predict_batch(np.asarray([values], dtype=np.float64))[0])

    def predict_batch(self, matrix: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        import pandas as pd

        frame = pd.DataFrame(matrix, columns=list(self.feature_names))
        out = np.asarray(self.model.predict(frame), dtype=np.float64)
        return out[:, -1] if out.ndim == 2 else out


@dataclass(frozen=True)
class SklearnScorer:
    """A scikit-learn model through its own ``predict_proba`` (positive class) or
    ``predict``: the offline path, never folded, that replay parity compares the
    serving scorers with."""

    name: str
    version: str
    feature_names: tuple[str, ...]
    estimator: Any

    def predict_one(self, values: Sequence[float]) -> float:
        return float(self.predict_batch(np.asarray([values], dtype=np.float64))[0])

    def predict_batch(self, matrix: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        import pandas as pd

        frame = pd.DataFrame(matrix, columns=list(self.feature_names))
        if hasattr(self.estimator, "predict_proba"):
            return np.asarray(self.estimator.predict_proba(frame), dtype=np.float64)[:, 1]
        return np.asarray(self.estimator.predict(frame), dtype=np.float64)


def fold_linear(estimator: Any) -> tuple[tuple[float, ...], float, bool] | None:
    """Weights, intercept and link of a (scaled) sklearn linear model, or None.

    Handles ``LogisticRegression`` (binary), ``LinearRegression``, ``Ridge``
    and a ``Pipeline`` of ``StandardScaler`` steps ending in one of them.
    """
    from sklearn.linear_model import LinearRegression, LogisticRegression, Ridge
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    mean: npt.NDArray[np.float64] | None = None
    scale: npt.NDArray[np.float64] | None = None
    final = estimator
    if isinstance(estimator, Pipeline):
        *pre, (_, final) = estimator.steps
        for _, step in pre:
            if not isinstance(step, StandardScaler):
                return None
            step_mean = step.mean_ if step.with_mean else np.zeros(step.n_features_in_)
            step_scale = step.scale_ if step.with_std else np.ones(step.n_features_in_)
            # compose x -> (x - m1)/s1 -> ((x - m1)/s1 - m2)/s2
            if mean is None or scale is None:
                mean, scale = np.asarray(step_mean, float), np.asarray(step_scale, float)
            else:
                mean = mean + step_mean * scale
                scale = scale * step_scale
    if isinstance(final, LogisticRegression):
        if len(final.classes_) != 2:
            return None
        w = np.asarray(final.coef_[0], dtype=np.float64)
        b = float(final.intercept_[0])
        logistic = True
    elif isinstance(final, LinearRegression | Ridge):
        coef = np.asarray(final.coef_, dtype=np.float64)
        if coef.ndim != 1:
            return None
        w, b, logistic = coef, float(np.asarray(final.intercept_).reshape(-1)[0]), False
    else:
        return None
    if mean is not None and scale is not None:
        b = b - float(np.sum(w * mean / scale))
        w = w / scale
    return tuple(float(v) for v in w), b, logistic


class MlflowRegistry:
    """:class:`ModelRegistry` over an MLflow tracking server or SQLite store."""

    def __init__(self, tracking_uri: str, registry_uri: str | None = None) -> None:
        from mlflow import MlflowClient

        self.tracking_uri = tracking_uri
        self.registry_uri = registry_uri or tracking_uri
        self.client = MlflowClient(tracking_uri=tracking_uri, registry_uri=self.registry_uri)

    def resolve(self, name: str, version_or_alias: str) -> str:
        from mlflow.exceptions import MlflowException

        try:
            if version_or_alias.isdigit():
                mv = self.client.get_model_version(name, version_or_alias)
            else:
                mv = self.client.get_model_version_by_alias(name, version_or_alias)
        except MlflowException as exc:
            raise UnknownModelVersion(
                f"MLflow has no version or alias {version_or_alias!r} of model {name!r} "
                f"({self.registry_uri})"
            ) from exc
        return str(mv.version)

    def resolve_uri(self, model_uri: str) -> tuple[str, str]:
        """``(name, concrete version)`` of ``models:/NAME/VERSION`` or
        ``models:/NAME@ALIAS``: ``ValueError`` for another form,
        :class:`UnknownModelVersion` when the registry has no such version or alias."""
        name, version_or_alias = parse_model_uri(model_uri)
        return name, self.resolve(name, version_or_alias)

    def set_alias(self, name: str, alias: str, version: str) -> None:
        """Point ``alias`` at ``version`` (promotion moves ``champion``)."""
        self.client.set_registered_model_alias(name, alias, version)

    def tag_version(self, name: str, version: str, key: str, value: str) -> None:
        """Record something on a version (each rollout's outcome, say)."""
        self.client.set_model_version_tag(name, version, key, value)

    def reference_sample(self, name: str, version: str) -> dict[str, npt.NDArray[np.float64]]:
        """The training sample logged with a version under ``reference/`` (for drift);
        empty when the version has none."""
        import pyarrow.parquet as pq

        run_id = self.client.get_model_version(name, version).run_id
        # A version logged without a reference has no such artifact; any other
        # failure (a store that cannot be read) is an error, not "no reference".
        if not run_id or not self.client.list_artifacts(run_id, "reference"):
            return {}
        local = self.client.download_artifacts(run_id, "reference")
        files = sorted(Path(local).glob("*.parquet"))
        if not files:
            return {}
        table = pq.read_table(files[0])
        return {c: table.column(c).to_numpy().astype(np.float64)
                for c in table.column_names if not c.startswith("__")}  # pandas' index

    def model_uri(self, name: str, version: str) -> str:
        return f"models:/{name}/{version}"

    def load_offline(self, name: str, version: str) -> Scorer:
        """One version through MLflow's own prediction (scikit-learn's
        ``predict_proba``/``predict``, else pyfunc), never folded: what a
        training notebook would compute, for replay parity."""
        import mlflow
        from mlflow.models import get_model_info

        mlflow.set_tracking_uri(self.tracking_uri)
        mlflow.set_registry_uri(self.registry_uri)
        uri = self.model_uri(name, version)
        info = get_model_info(uri)
        if info.signature is None or info.signature.inputs is None:
            raise UnknownModelVersion(f"{uri} has no input signature; log it with one")
        features = tuple(str(n) for n in info.signature.inputs.input_names())
        if "sklearn" in info.flavors:
            return SklearnScorer(name, version, features, mlflow.sklearn.load_model(uri))
        return PyfuncScorer(name, version, features, mlflow.pyfunc.load_model(uri))

    def load(self, name: str, version: str) -> Scorer:
        import mlflow
        from mlflow.models import get_model_info

        mlflow.set_tracking_uri(self.tracking_uri)
        mlflow.set_registry_uri(self.registry_uri)
        uri = self.model_uri(name, version)
        info = get_model_info(uri)
        signature = info.signature
        if signature is None or signature.inputs is None:
            raise UnknownModelVersion(f"{uri} has no input signature; log it with one")
        features = tuple(str(n) for n in signature.inputs.input_names())
        if "sklearn" in info.flavors:
            estimator = mlflow.sklearn.load_model(uri)
            folded = fold_linear(estimator)
            if folded is not None:
                weights, intercept, logistic = folded
                return LinearScorer(name, version, features, weights, intercept, logistic)
        return PyfuncScorer(name, version, features, mlflow.pyfunc.load_model(uri))
