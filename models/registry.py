"""Model versions from the MLflow registry, loaded once per replica.

``ModelRegistry`` is the seam: the gateway asks it to resolve aliases and load
versions. :class:`MlflowRegistry` is the real one (tracking and registry on
SQLite under ``.rampart/`` by default, any MLflow tracking URI otherwise).

Loaded versions are *scorers*, whatever the model's flavour, each checking
request rows against the version's signature (:mod:`models.inputs`) and
answering :class:`~models.outputs.Prediction` s:

- :class:`LinearScorer`: a scikit-learn linear model (optionally behind
  ``StandardScaler`` steps in a ``Pipeline``) over numeric columns, folded
  into one weight vector and scored with a few float operations in pure
  Python: for one row of a handful of features that is several times cheaper
  than ``predict_proba`` and agrees with it to floating-point rounding.
- :class:`SklearnScorer`: any other scikit-learn model, its own method called
  on the typed DataFrame (what MLflow's pyfunc would call, without the
  per-call overhead of MLflow's wrapper).
- :class:`PyfuncScorer`: anything else, through MLflow's pyfunc ``predict``
  (or a named method of a custom ``PythonModel``).

What a version answers is chosen by ``output`` (see :meth:`MlflowRegistry.load`).
"""

from __future__ import annotations

import inspect
import logging
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, cast, get_args

import numpy as np
import numpy.typing as npt

from models.inputs import (
    UNNAMED_INPUT,
    ColumnSpec,
    ColumnType,
    InputSchema,
    ModelInput,
    RowChecker,
    TensorSpec,
    build_input,
    columns_schema,
    float_frame,
    row_checker,
)
from models.outputs import (
    Label,
    Prediction,
    ScoredBatch,
    class_rows,
    label_of,
    score_of,
    value_rows,
)

logger = logging.getLogger(__name__)


class UnknownModelVersion(LookupError):
    """The registry has no such model, version or alias."""


class RegistryUnavailable(ConnectionError):
    """MLflow's tracking server did not answer, or answered that it is failing:
    whether the version exists is unknown (unlike :class:`UnknownModelVersion`),
    so a caller waits for it rather than refusing the version."""


class UnknownOutput(ValueError):
    """``output`` names nothing the model version can answer with."""


class UnsupportedSignature(ValueError):
    """A signature whose inputs a JSON request cannot carry (nested arrays,
    objects, maps)."""


class NotReplayable(ValueError):
    """A version replay cannot score: its inputs are not a float vector, or it
    answers no single number per row."""


# MLflow's HTTP client retries a server that does not answer 7 times, with
# exponential backoff and a 120 s timeout per try: one call to a stopped or
# hung tracking server takes minutes. A process that must keep going (the
# rollout controller, a replica) bounds it; an operator's own settings win.
BOUNDED_HTTP_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
# Answers of an MLflow server that was reached and has no such model,
# version or alias: anything else over HTTP says nothing about the version.
_NOT_FOUND_CODES = frozenset({"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE",
                              "NOT_FOUND"})


def bound_http_retries() -> None:
    """Bound how long this process's MLflow client waits for a tracking server
    (see :data:`BOUNDED_HTTP_ENV`); settings already in the environment stay."""
    import os

    for key, value in BOUNDED_HTTP_ENV.items():
        os.environ.setdefault(key, value)


def is_http_uri(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def check_reachable(uri: str, timeout_s: float = 3.0) -> None:
    """:class:`RegistryUnavailable` unless the MLflow tracking server at an
    ``http(s)`` URI answers within ``timeout_s``: a refused connection, a
    timeout (a hung server) or a 5xx. Any other answer (its ``/health`` says
    OK; a proxy in front asking for credentials) is a server that is there.
    Other URIs (a SQLite file, a local directory) are not servers: nothing to check.

    Asked before MLflow's own client, whose retries would wait for minutes
    (see :data:`BOUNDED_HTTP_ENV`)."""
    if not is_http_uri(uri):
        return
    import httpx

    url = f"{uri.rstrip('/')}/health"
    try:
        response = httpx.get(url, timeout=timeout_s)
    except httpx.TimeoutException:
        raise RegistryUnavailable(f"the MLflow tracking server at {uri} did not answer "
                                  f"within {timeout_s:g} s") from None
    except httpx.HTTPError as exc:
        raise RegistryUnavailable(f"no MLflow tracking server answers at {uri} "
                                  f"({exc or type(exc).__name__})") from None
    if response.status_code >= 500:
        raise RegistryUnavailable(f"the MLflow tracking server at {uri} is failing "
                                  f"(HTTP {response.status_code} from /health)")


MODEL_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:/(?P<version>\d+)|@(?P<alias>[\w.-]+))$")

OUTPUT_AUTO = "auto"
"""A scikit-learn classifier's class probabilities, every other model's ``predict``."""


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


def score_rows(scorer: Scorer, rows: Sequence[Mapping[str, Any]]
               ) -> tuple[list[Prediction | None], list[str | None]]:
    """Each row's prediction, or its error: a row the scorer's signature rejects
    (``check_row``) is not scored; the others are scored in one ``predict_rows``."""
    n = len(rows)
    predictions: list[Prediction | None] = [None] * n
    errors: list[str | None] = [None] * n
    checked: list[dict[str, Any]] = []
    kept: list[int] = []
    for i, row in enumerate(rows):
        try:
            checked.append(scorer.check_row(row))
            kept.append(i)
        except Exception as exc:  # InputMismatch, or a check that broke on this row
            errors[i] = f"{type(exc).__name__}: {exc}"
    if not checked:
        return predictions, errors
    try:
        scored = scorer.predict_rows(checked).rows
        if len(scored) != len(checked):
            raise ValueError(f"predict_rows answered {len(scored)} rows for {len(checked)}")
    except Exception as exc:
        for i in kept:
            errors[i] = f"{type(exc).__name__}: {exc}"
        return predictions, errors
    for i, prediction in zip(kept, scored, strict=True):
        predictions[i] = prediction
    return predictions, errors


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

    def load(self, name: str, version: str, output: str = OUTPUT_AUTO) -> Scorer:
        """Load one version for serving, answering ``output`` (see
        :meth:`MlflowRegistry.load`)."""
        ...


# --- signatures -------------------------------------------------------------

def schema_from_signature(signature: Any) -> InputSchema:
    """The :class:`InputSchema` of an MLflow ``ModelSignature``: its ``ColSpec``
    columns (with their ``required``) or ``TensorSpec`` tensors; kind
    ``none`` for no signature or one without inputs. Unnamed columns are
    positional (row keys ``"input"`` for one, ``"0"``, ``"1"``... for several).
    :class:`UnsupportedSignature` for column types a request cannot carry."""
    from mlflow.types import DataType

    inputs = getattr(signature, "inputs", None)
    if inputs is None or not inputs.inputs:
        return InputSchema("none")
    if inputs.is_tensor_spec():
        return InputSchema("tensors", tensors=tuple(
            TensorSpec(spec.name, np.dtype(spec.type).name, tuple(int(d) for d in spec.shape))
            for spec in inputs.inputs))
    named = inputs.has_input_names()
    specs = list(inputs.inputs)
    columns = []
    for i, spec in enumerate(specs):
        positional_name = UNNAMED_INPUT if len(specs) == 1 else str(i)
        name = str(spec.name) if named else positional_name
        if not isinstance(spec.type, DataType) or spec.type.name not in get_args(ColumnType):
            raise UnsupportedSignature(
                f"input {name!r} has type {spec.type}: only scalar columns "
                f"({', '.join(get_args(ColumnType))}) and tensors can be served")
        type_ = cast(ColumnType, spec.type.name)
        columns.append(ColumnSpec(name, type_, bool(getattr(spec, "required", True))))
    return InputSchema("columns", tuple(columns), positional=not named)


# --- outputs ----------------------------------------------------------------

# Names ``output`` may never call: training or reconfiguring a served model
# from request data, or private helpers.
_FORBIDDEN_OUTPUTS = ("fit", "partial_fit", "set_", "load_context")
# Prediction methods a scikit-learn estimator may have, listed in errors.
_SKLEARN_METHODS = ("predict", "predict_proba", "predict_log_proba", "decision_function",
                    "transform", "score_samples")


def _callable_output(target: Any, output: str) -> Callable[..., Any] | None:
    if output.startswith("_") or output.startswith(_FORBIDDEN_OUTPUTS):
        return None
    method = getattr(target, output, None)
    return method if callable(method) else None


def _unknown_output(where: str, output: str, offered: Sequence[str]) -> UnknownOutput:
    has = f" (it has {', '.join(offered)})" if offered else ""
    return UnknownOutput(
        f"{where} cannot answer output {output!r}: output is auto, predict, predict_proba "
        f"(a classifier's) or the name of one of the model's methods{has}")


def _is_classifier(estimator: Any) -> bool:
    """What ``auto`` answers probabilities for: ``predict_proba`` and ``classes_``."""
    return callable(getattr(estimator, "predict_proba", None)) and hasattr(estimator, "classes_")


# --- scorers ----------------------------------------------------------------

@dataclass(frozen=True)
class LinearScorer:
    """``sigmoid(w·x + b)`` (logistic) or ``w·x + b`` (linear), folded from sklearn.

    A logistic scorer answers like ``predict_proba`` of a binary classifier
    with ``classes`` (value: the probability of ``classes[1]``); a linear one
    answers ``predict``. ``input_schema`` defaults to required double columns
    named ``feature_names``; non-finite values are refused, as the estimator
    would refuse them, and values of ``float`` columns are rounded to float32
    (by every method), as the estimator gets them.
    """

    name: str
    version: str
    feature_names: tuple[str, ...]
    weights: tuple[float, ...]
    intercept: float
    logistic: bool
    classes: tuple[Label, ...] = (0, 1)
    input_schema: InputSchema | None = None
    # True when the version answers probabilities only because its output is
    # ``auto``: MLflow's scoring protocol then answers the labels pyfunc would.
    pyfunc_labels: bool = False
    _schema: InputSchema = field(init=False, repr=False, compare=False)
    _check: RowChecker = field(init=False, repr=False, compare=False)
    # float (float32) columns: the estimator sees their values rounded to float32
    _float32_columns: tuple[int, ...] = field(init=False, repr=False, compare=False)
    # every column a required double: a row of plain numbers needs no conversion
    _plain: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        schema = (columns_schema(self.feature_names) if self.input_schema is None
                  else self.input_schema)
        if not schema.numeric or schema.names != tuple(self.feature_names):
            raise ValueError("a linear scorer's schema is required numeric columns named "
                             "feature_names, in order")
        if len(self.weights) != len(self.feature_names):
            raise ValueError(f"{len(self.weights)} weights for "
                             f"{len(self.feature_names)} features")
        if self.logistic and len(self.classes) != 2:
            raise ValueError(f"a logistic scorer has two classes, got {self.classes}")
        object.__setattr__(self, "_schema", schema)
        object.__setattr__(self, "_check", row_checker(schema, finite=True))
        object.__setattr__(self, "_float32_columns", tuple(
            j for j, c in enumerate(schema.columns) if c.type == "float"))
        object.__setattr__(self, "_plain", all(
            c.type == "double" and c.required for c in schema.columns))

    @property
    def schema(self) -> InputSchema:
        return self._schema

    @property
    def inline(self) -> bool:
        return True

    def check_row(self, row: Mapping[str, Any]) -> dict[str, Any]:
        # The request path's common case first: every column a finite JSON float
        # or a small int (a double column's value as it is). Anything else
        # takes the full checker, which also words the refusal.
        if not self._float32_columns and self._plain:
            try:
                values = {name: row[name] for name in self.feature_names}
            except KeyError:
                return self._check(row)
            for value in values.values():
                kind = type(value)
                if not ((kind is float and -_HUGE < value < _HUGE)
                        or (kind is int and -_EXACT < value < _EXACT)):
                    return self._check(row)
            return values
        return self._check(row)

    def predict_one(self, values: Sequence[float]) -> float:
        if self._float32_columns:
            values = list(values)
            with np.errstate(over="ignore"):  # an overflow is the infinity the model sees
                for j in self._float32_columns:
                    values[j] = float(np.float32(values[j]))
        return self._score(values)

    def _score(self, values: Sequence[float]) -> float:
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
        if self._float32_columns:
            matrix = np.array(matrix, dtype=np.float64)
            cols = list(self._float32_columns)
            with np.errstate(over="ignore"):
                matrix[:, cols] = matrix[:, cols].astype(np.float32)
        z = matrix @ np.asarray(self.weights) + self.intercept
        if not self.logistic:
            return np.asarray(z, dtype=np.float64)
        return np.asarray(1.0 / (1.0 + np.exp(-z)), dtype=np.float64)

    def predict_rows(self, rows: Sequence[Mapping[str, Any]],
                     params: Mapping[str, Any] | None = None) -> ScoredBatch:
        """Answers as the estimator's own ``predict_proba`` (logistic; ``raw``
        is its ``(n, 2)`` array) or ``predict`` (linear); ``params`` are
        ignored, as MLflow ignores them for a model without a params schema."""
        names = self.feature_names
        # checked rows hold float columns already rounded to float32
        scores = [self._score([row[n] for n in names]) for row in rows]
        if not self.logistic:
            return ScoredBatch(tuple(Prediction(v, score_of(v)) for v in scores), None,
                               build_raw=lambda: (np.array(scores, dtype=np.float64), None))
        negative, positive = self.classes
        k0, k1 = str(negative), str(positive)
        # argmax of (1 - p, p): the first class on a tie, as predict_proba's argmax
        answers = tuple(Prediction(p, p, positive if p > 1.0 - p else negative,
                                   {k0: 1.0 - p, k1: p}) for p in scores)

        def build_raw() -> tuple[Any, Any]:
            raw = np.array([[1.0 - p, p] for p in scores], dtype=np.float64).reshape(-1, 2)
            labels = (np.array([a.label for a in answers],
                               dtype=np.asarray(self.classes).dtype)
                      if self.pyfunc_labels else None)
            return raw, labels

        return ScoredBatch(answers, None, build_raw=build_raw)


AnswerKind = Literal["probabilities", "labels", "value"]
# Bounds of the inline check's common case: finite floats, and ints a double
# holds exactly; anything outside goes to the full checker.
_HUGE = float("inf")
_EXACT = 1 << 53


@dataclass(frozen=True)
class SklearnScorer:
    """A scikit-learn model through its own methods, never folded.

    ``output`` as in :meth:`MlflowRegistry.load`; ``predict`` means the
    method MLflow's pyfunc calls (``predict_fn``, from the version's
    MLmodel). Rows go to the estimator as the DataFrame MLflow's schema
    enforcement would produce, so answers are pyfunc's own; ``params`` are
    ignored, as MLflow's scikit-learn flavour ignores them.

    As a :class:`NumericScorer` (replay, over numeric signatures) its score
    is the positive-class probability of a binary classifier or the value
    of a regressor; ``input_schema`` defaults to double columns named
    ``feature_names``.
    """

    name: str
    version: str
    feature_names: tuple[str, ...]
    estimator: Any
    input_schema: InputSchema | None = None
    output: str = OUTPUT_AUTO
    predict_fn: str = "predict"
    _schema: InputSchema = field(init=False, repr=False, compare=False)
    _check: RowChecker = field(init=False, repr=False, compare=False)
    _method: Callable[[Any], Any] = field(init=False, repr=False, compare=False)
    _kind: AnswerKind = field(init=False, repr=False, compare=False)
    _classes: tuple[Label, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        schema = (columns_schema(self.feature_names) if self.input_schema is None
                  else self.input_schema)
        estimator = self.estimator
        classifier = _is_classifier(estimator)
        output = self.predict_fn if self.output == "predict" else self.output
        if output == OUTPUT_AUTO:
            output = "predict_proba" if classifier else self.predict_fn
        method = _callable_output(estimator, output)
        if method is None:
            offered = [m for m in _SKLEARN_METHODS if callable(getattr(estimator, m, None))]
            raise _unknown_output(f"models:/{self.name}/{self.version} "
                                  f"({type(estimator).__name__})", self.output, offered)
        kind: AnswerKind = "value"
        if output == "predict_proba" and classifier:
            kind = "probabilities"
        elif output == "predict" and hasattr(estimator, "classes_"):
            kind = "labels"
        classes = (tuple(label_of(c) for c in estimator.classes_)
                   if hasattr(estimator, "classes_") else ())
        object.__setattr__(self, "_schema", schema)
        object.__setattr__(self, "_check", row_checker(schema))
        object.__setattr__(self, "_method", method)
        object.__setattr__(self, "_kind", kind)
        object.__setattr__(self, "_classes", classes)

    @property
    def schema(self) -> InputSchema:
        return self._schema

    @property
    def inline(self) -> bool:
        return False

    @property
    def classes(self) -> tuple[Label, ...]:
        """The estimator's ``classes_`` (``()`` for a regressor)."""
        return self._classes

    @property
    def answers(self) -> AnswerKind:
        """``probabilities`` (class probabilities with label), ``labels`` (a
        classifier's predicted class) or ``value``."""
        return self._kind

    def check_row(self, row: Mapping[str, Any]) -> dict[str, Any]:
        return self._check(row)

    def predict_rows(self, rows: Sequence[Mapping[str, Any]],
                     params: Mapping[str, Any] | None = None) -> ScoredBatch:
        raw = self._method(build_input(self._schema, rows))
        if self._kind == "probabilities":
            pyfunc_raw = None
            if self.output == OUTPUT_AUTO and self.predict_fn == "predict":
                # The labels pyfunc's predict answers: scikit-learn's classifiers
                # predict the class of highest probability.
                pyfunc_raw = np.asarray(self.estimator.classes_)[
                    np.argmax(np.asarray(raw), axis=1)]
            return ScoredBatch(class_rows(raw, self._classes), raw, pyfunc_raw)
        return ScoredBatch(value_rows(raw, len(rows), labels=self._kind == "labels"), raw)

    def predict_one(self, values: Sequence[float]) -> float:
        return float(self.predict_batch(np.asarray([values], dtype=np.float64))[0])

    def predict_batch(self, matrix: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        raw = self._method(float_frame(self._schema, matrix))
        if self._kind == "probabilities":
            if len(self._classes) != 2:
                raise NotReplayable(f"models:/{self.name}/{self.version} has "
                                    f"{len(self._classes)} classes, no single score per row")
            return np.asarray(raw, dtype=np.float64)[:, 1]
        return _scores(raw, len(matrix), f"models:/{self.name}/{self.version}")


def _scores(raw: Any, n: int, where: str) -> npt.NDArray[np.float64]:
    scores = [p.score for p in value_rows(raw, n)]
    if any(s is None for s in scores):
        raise NotReplayable(f"{where} answers something other than one number per row")
    return np.array(scores, dtype=np.float64)


def _pyfunc_method(model: Any, output: str, where: str) -> Callable[[ModelInput, Any], Any]:
    """A custom model's own method, called as MLflow calls ``predict``: with
    the model's context first when its signature asks for one, with
    ``params`` when it takes them."""
    target: Any = None
    try:
        target = model.unwrap_python_model()
    except Exception:  # not a PythonModel: maybe a flavour with a raw model
        try:
            target = model.get_raw_model()
        except Exception:
            target = None
    method = _callable_output(target, output) if target is not None else None
    if method is None:
        offered = sorted(n for n, v in vars(type(target)).items()
                         if not n.startswith("_") and callable(v)) if target is not None else []
        raise _unknown_output(where, output, offered)
    parameters = inspect.signature(method).parameters
    takes_params = "params" in parameters
    # MLflow's rule for predict: a parameter named context, or two besides params.
    takes_context = "context" in parameters or len(
        [p for p in parameters if p != "params"]) == 2
    context = getattr(getattr(model, "_model_impl", None), "context", None)

    def call(data: ModelInput, params: Any) -> Any:
        args = (context, data) if takes_context else (data,)
        return method(*args, params=params) if takes_params else method(*args)

    return call


@dataclass(frozen=True)
class PyfuncScorer:
    """Any MLflow model through its pyfunc: ``predict(input, params=params)``
    on the typed DataFrame or tensors, or for an ``output`` naming a method,
    that method of the custom ``PythonModel`` (or of the flavour's raw
    model). Answers are whatever the model returns, split per row (see
    :func:`~models.outputs.value_rows`).

    A missing optional integer is refused at check time: MLflow's own
    schema enforcement, which ``predict`` runs, would refuse the batch.
    """

    name: str
    version: str
    model: Any
    input_schema: InputSchema
    output: str = OUTPUT_AUTO
    _check: RowChecker = field(init=False, repr=False, compare=False)
    _call: Callable[[ModelInput, Any], Any] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        model = self.model
        call: Callable[[ModelInput, Any], Any]
        if self.output in (OUTPUT_AUTO, "predict"):
            def call(data: ModelInput, params: Any) -> Any:
                return model.predict(data, params=params)
        else:
            call = _pyfunc_method(model, self.output, f"models:/{self.name}/{self.version}")
        object.__setattr__(self, "_check", row_checker(self.input_schema, integer_nulls=False))
        object.__setattr__(self, "_call", call)

    @property
    def schema(self) -> InputSchema:
        return self.input_schema

    @property
    def inline(self) -> bool:
        return False

    @property
    def feature_names(self) -> tuple[str, ...]:
        return self.input_schema.names

    def check_row(self, row: Mapping[str, Any]) -> dict[str, Any]:
        return self._check(row)

    def predict_rows(self, rows: Sequence[Mapping[str, Any]],
                     params: Mapping[str, Any] | None = None) -> ScoredBatch:
        raw = self._call(build_input(self.input_schema, rows),
                         dict(params) if params is not None else None)
        return ScoredBatch(value_rows(raw, len(rows)), raw)

    def predict_one(self, values: Sequence[float]) -> float:
        return float(self.predict_batch(np.asarray([values], dtype=np.float64))[0])

    def predict_batch(self, matrix: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        raw = self._call(float_frame(self.input_schema, matrix), None)
        return _scores(raw, len(matrix), f"models:/{self.name}/{self.version}")


Folded = tuple[tuple[float, ...], float, bool, tuple[Label, ...]]


def fold_linear(estimator: Any) -> Folded | None:
    """Weights, intercept, link (True: logistic) and classes (a logistic
    model's two, ``()`` for a regression) of a (scaled) sklearn linear model,
    or None.

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
    classes: tuple[Label, ...] = ()
    if isinstance(final, LogisticRegression):
        if len(final.classes_) != 2:
            return None
        w = np.asarray(final.coef_[0], dtype=np.float64)
        b = float(final.intercept_[0])
        logistic = True
        classes = tuple(label_of(c) for c in final.classes_)
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
    return tuple(float(v) for v in w), b, logistic, classes


def _folded_scorer(name: str, version: str, estimator: Any, schema: InputSchema,
                   output: str, predict_fn: str) -> LinearScorer | None:
    """The folded scorer when it answers exactly what ``output`` asks of the
    estimator, else None."""
    # All-float32 input stays float32 inside scikit-learn; the fold computes
    # in float64, so it would not give the estimator's numbers.
    if not schema.numeric or all(c.type == "float" for c in schema.columns):
        return None
    fitted_names = getattr(estimator, "feature_names_in_", None)
    if fitted_names is not None and tuple(str(n) for n in fitted_names) != schema.names:
        return None  # the weights are in the estimator's column order, not the signature's
    folded = fold_linear(estimator)
    if folded is None:
        return None
    weights, intercept, logistic, classes = folded
    if len(weights) != len(schema.columns):
        return None
    if logistic:
        answers = output in (OUTPUT_AUTO, "predict_proba") or (
            output == "predict" and predict_fn == "predict_proba")
    else:
        answers = output in (OUTPUT_AUTO, "predict") and predict_fn == "predict"
    if not answers:
        return None
    return LinearScorer(name, version, schema.names, weights, intercept, logistic,
                        classes if logistic else (0, 1), schema,
                        pyfunc_labels=logistic and output == OUTPUT_AUTO
                        and predict_fn == "predict")


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
            if is_http_uri(self.registry_uri) and exc.error_code not in _NOT_FOUND_CODES:
                # Refused, timed out or failing: the server never said "no such version".
                raise RegistryUnavailable(
                    f"cannot reach the MLflow tracking server at {self.registry_uri}: "
                    f"{_first_line(str(exc))}") from exc
            raise UnknownModelVersion(
                f"MLflow has no version or alias {version_or_alias!r} of model {name!r} "
                f"({self.registry_uri})"
            ) from exc
        return str(mv.version)

    def check_reachable(self, timeout_s: float = 3.0) -> None:
        """:class:`RegistryUnavailable` unless the tracking and registry servers
        answer within ``timeout_s`` (see :func:`check_reachable`)."""
        for uri in dict.fromkeys((self.registry_uri, self.tracking_uri)):
            check_reachable(uri, timeout_s)

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

    def _model_info(self, name: str, version: str) -> tuple[str, Any]:
        import mlflow
        from mlflow.models import get_model_info

        mlflow.set_tracking_uri(self.tracking_uri)
        mlflow.set_registry_uri(self.registry_uri)
        uri = self.model_uri(name, version)
        return uri, get_model_info(uri)

    def load_offline(self, name: str, version: str) -> Scorer:
        """One version through MLflow's own prediction (scikit-learn's
        ``predict_proba``/``predict``, else pyfunc), never folded: what a
        training notebook would compute, for replay parity. It is a
        :class:`NumericScorer`: its ``predict_batch`` takes the logged float
        features; a version whose
        signature is not numeric columns, or that has no single score per
        row (a multi-class classifier), is :class:`NotReplayable`."""
        import mlflow

        uri, info = self._model_info(name, version)
        if info.signature is None or info.signature.inputs is None:
            raise UnknownModelVersion(f"{uri} has no input signature; log it with one")
        schema = schema_from_signature(info.signature)
        if not schema.numeric:
            raise NotReplayable(
                f"{uri}: replay scores logged float features, but the signature's inputs "
                f"are {_describe(schema)}")
        if "sklearn" in info.flavors:
            scorer = SklearnScorer(name, version, schema.names, mlflow.sklearn.load_model(uri),
                                   schema, OUTPUT_AUTO, _predict_fn(info.flavors))
            if scorer.answers == "probabilities" and len(scorer.classes) != 2:
                raise NotReplayable(f"{uri} has {len(scorer.classes)} classes, "
                                    "no single score per row")
            return scorer
        return PyfuncScorer(name, version, mlflow.pyfunc.load_model(uri), schema)

    def load(self, name: str, version: str, output: str = OUTPUT_AUTO) -> Scorer:
        """Load one version for serving, as ``mlflow.sklearn.load_model`` (the
        scikit-learn flavour, skops with the trusted types recorded at log
        time) or ``mlflow.pyfunc.load_model`` (any other) load it.

        ``output``: ``auto`` answers a scikit-learn classifier's (anything
        with ``predict_proba`` and ``classes_``) class probabilities and any
        other model's ``predict``; ``predict`` is what MLflow's pyfunc
        ``predict`` answers; ``predict_proba`` a classifier's probabilities;
        any other name calls that method of the estimator or of a custom
        ``PythonModel``. A name the version has no method for is
        :class:`UnknownOutput`, here rather than on the first request.

        A version without a signature loads with a warning, and its rows go
        to the model unchecked.
        """
        import mlflow

        uri, info = self._model_info(name, version)
        schema = schema_from_signature(info.signature)
        if schema.kind == "none":
            logger.warning("%s was logged without an input signature: its requests are passed "
                           "to the model unchecked; log it with a signature to have them "
                           "checked", uri)
        if "sklearn" in info.flavors:
            estimator = mlflow.sklearn.load_model(uri)
            predict_fn = _predict_fn(info.flavors)
            folded = _folded_scorer(name, version, estimator, schema, output, predict_fn)
            if folded is not None:
                return folded
            return SklearnScorer(name, version, schema.names, estimator, schema, output,
                                 predict_fn)
        return PyfuncScorer(name, version, mlflow.pyfunc.load_model(uri), schema, output)


def _first_line(text: str) -> str:
    text = text.strip()
    return text.splitlines()[0][:300] if text else "no detail"


def _predict_fn(flavors: Mapping[str, Any]) -> str:
    """The estimator method MLflow's pyfunc ``predict`` calls (``pyfunc_predict_fn``
    when the model was logged)."""
    return str(flavors.get("python_function", {}).get("predict_fn", "predict"))


def _describe(schema: InputSchema) -> str:
    if schema.kind == "tensors":
        return "tensors"
    if schema.positional:
        return "unnamed columns"
    odd = [f"{c.name} ({c.type}{'' if c.required else ', optional'})" for c in schema.columns
           if not c.required or c.type not in ("double", "float", "long", "integer")]
    return ", ".join(odd) or "empty"
