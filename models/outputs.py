"""What a model version answers, row by row, whatever its flavour.

Pure: numpy and pandas, no MLflow. The gateway renders these per protocol
(``/v1/predict``, MLflow's ``/invocations``, the Open Inference Protocol V2);
the decision log keeps :attr:`Prediction.score` as a number and the rest as
JSON.

:func:`value_rows` splits whatever a model's ``predict`` returned for a batch
into one JSON value per row; :func:`class_rows` turns class probabilities
into predictions with a label.
"""

from __future__ import annotations

import base64
import datetime as dt
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import pandas as pd

JsonValue = Any
"""A value ``orjson`` can write: None, bool, int, float, str, list or dict of them."""

Label = str | int | float | bool
"""A class label as the estimator's ``classes_`` holds it (numpy scalars made Python)."""

OutputKind = Literal["probabilities", "value"]
"""``probabilities``: a classifier's class probabilities (``predict_proba``);
``value``: whatever ``predict`` (or a named pyfunc ``predict_fn``) returns."""


class ModelOutputError(RuntimeError):
    """A model answered something that cannot be split into one answer per row."""


@dataclass(frozen=True, slots=True)
class Prediction:
    """One row's answer.

    ``value`` is the row's prediction as JSON: a number for a regressor, a
    scalar pyfunc output or a *binary* classifier (the probability of its
    second class, ``classes_[1]``); the list of every class's probability, in
    ``classes_`` order, for a multi-class classifier; a list for a vector
    output; a dict of named outputs for a pyfunc returning a dict or a
    multi-column DataFrame. ``score`` is ``value`` when it is a finite
    number, else None. Classifiers also carry ``label`` (the most probable
    class) and ``probabilities`` (class label as a string -> probability).
    """

    value: JsonValue
    score: float | None = None
    label: Label | None = None
    probabilities: dict[str, float] | None = None


@dataclass(frozen=True, slots=True)
class ScoredBatch:
    """A batch's answers: one :class:`Prediction` per input row, in order, and
    the model's own output for the whole batch (``raw``) as its ``predict``
    returned it, which MLflow's ``/invocations`` serializes exactly as
    ``mlflow models serve`` does."""

    rows: tuple[Prediction, ...]
    raw_output: Any = None  # ``raw``, when it was computed with the answers
    # What MLflow's pyfunc ``predict`` returns for the batch, when the answer
    # differs from it: a classifier left on output ``auto`` answers its class
    # probabilities, while ``mlflow models serve`` answers its labels. MLflow's
    # scoring protocol answers this one, so a client moved from ``mlflow models
    # serve`` gets the same answers.
    pyfunc_output: Any = None
    # Builds ``(raw, pyfunc_raw)`` when first asked for: the inline linear path
    # answers in microseconds, and only MLflow's protocol reads these arrays.
    build_raw: Callable[[], tuple[Any, Any]] | None = None

    def _outputs(self) -> tuple[Any, Any]:
        if self.build_raw is not None:
            return self.build_raw()
        return self.raw_output, self.pyfunc_output

    @property
    def raw(self) -> Any:
        """The model's own output for the batch, as its method returned it."""
        return self._outputs()[0]

    @property
    def pyfunc_raw(self) -> Any:
        """What pyfunc's ``predict`` returns, when it differs from ``raw``; else None."""
        return self._outputs()[1]

    @property
    def mlflow_raw(self) -> Any:
        """What MLflow's scoring protocol answers for the batch."""
        raw, pyfunc_raw = self._outputs()
        return raw if pyfunc_raw is None else pyfunc_raw


def _binary_text(data: bytes) -> str:
    # MIME base64, as MLflow's JSON encoder writes bytes.
    return base64.encodebytes(data).decode("ascii")


_PLAIN: tuple[type, ...] = (bool, int, float, str)


def json_value(value: Any) -> JsonValue:
    """``value`` as plain Python JSON: numpy scalars and arrays made Python,
    datetimes as ISO-8601 strings, bytes as base64, missing values as None
    (as MLflow's scoring server encodes them)."""
    if value is None or type(value) in _PLAIN:
        return value
    if isinstance(value, np.generic) and not isinstance(value, np.datetime64 | np.bytes_):
        return json_value(value.item())
    if isinstance(value, bool | int | float | str):
        # a subclass (an enum member, say) as its plain type
        return next(t for t in _PLAIN if isinstance(value, t))(value)
    if isinstance(value, np.ndarray):
        if value.dtype.kind in "biuf":
            return value.tolist()
        return [json_value(v) for v in value]
    if isinstance(value, np.datetime64):
        return None if np.isnat(value) else str(np.datetime_as_string(value))
    if isinstance(value, np.bytes_ | bytes | bytearray):
        return _binary_text(bytes(value))
    if value is pd.NaT or value is pd.NA:
        return None
    if isinstance(value, pd.Timestamp | dt.date | dt.datetime | dt.time):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {str(k): json_value(v) for k, v in value.items()}
    if isinstance(value, pd.Series | pd.Index):
        return [json_value(v) for v in value.tolist()]
    if isinstance(value, pd.DataFrame):
        return [json_value(r) for r in value.to_dict("records")]
    if isinstance(value, list | tuple):
        return [json_value(v) for v in value]
    return str(value)


def score_of(value: JsonValue) -> float | None:
    """``value`` as a score: a finite number (not a boolean), else None."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        f = float(value)
        return f if math.isfinite(f) else None
    return None


def label_of(value: Any) -> Label:
    """A class label as Python (``numpy.int64(1)`` -> ``1``)."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, str | int | float | bool):
        return value
    return str(value)


def _check_rows(answered: int, n: int, what: str) -> None:
    if answered != n:
        raise ModelOutputError(f"the model answered {answered} rows ({what}) for {n} rows sent")


def split_rows(raw: Any, n: int) -> list[JsonValue]:
    """One JSON value per input row from a batch's output: an array's rows
    (scalars, or lists for a 2-D array), a Series' values, a single-column
    DataFrame's values, a dict of named per-row outputs or a multi-column
    DataFrame as one dict per row, a list's items; a scalar for a one-row
    batch."""
    if isinstance(raw, pd.DataFrame):
        _check_rows(len(raw), n, "a DataFrame")
        if len(raw.columns) == 1:
            return [json_value(v) for v in raw.iloc[:, 0].tolist()]
        names = [str(c) for c in raw.columns]
        columns = [raw.iloc[:, j].tolist() for j in range(len(names))]
        return [{name: json_value(col[i]) for name, col in zip(names, columns, strict=True)}
                for i in range(n)]
    if isinstance(raw, pd.Series):
        _check_rows(len(raw), n, "a Series")
        return [json_value(v) for v in raw.tolist()]
    if isinstance(raw, Mapping):
        per_name: dict[str, list[JsonValue]] = {}
        for key, part in raw.items():
            try:
                per_name[str(key)] = split_rows(part, n)
            except ModelOutputError as exc:
                raise ModelOutputError(f"output {key!r}: {exc}") from None
        return [{name: values[i] for name, values in per_name.items()} for i in range(n)]
    if isinstance(raw, np.ndarray):
        if raw.ndim == 0:
            _check_rows(1, n, "a scalar")
            return [json_value(raw.item())]
        _check_rows(len(raw), n, "an array")
        if raw.dtype.kind in "biuf":
            return list(raw.tolist())
        return [json_value(v) for v in raw]
    if isinstance(raw, list | tuple):
        _check_rows(len(raw), n, "a list")
        return [json_value(v) for v in raw]
    if raw is None or isinstance(raw, str | bytes | int | float | bool | np.generic):
        _check_rows(1, n, "a scalar")
        return [json_value(raw)]
    raise ModelOutputError(f"the model answered a {type(raw).__name__}, which has no rows")


def value_rows(raw: Any, n: int, *, labels: bool = False) -> tuple[Prediction, ...]:
    """Predictions of a batch of ``n`` rows from the model's output (see
    :func:`split_rows`). ``labels``: the values are class labels (a
    classifier's ``predict``), also given as :attr:`Prediction.label`."""
    out = []
    for value in split_rows(raw, n):
        label = value if labels and isinstance(value, str | int | float | bool) else None
        out.append(Prediction(value, score_of(value), label))
    return tuple(out)


def class_rows(proba: npt.ArrayLike, classes: Sequence[Label]) -> tuple[Prediction, ...]:
    """Predictions from class probabilities (shape ``(n, len(classes))``, in
    ``classes`` order): a binary classifier's value and score are the second
    class's probability, a multi-class one's value is every probability;
    the label is the most probable class (the first of a tie, as
    ``argmax``)."""
    p = np.asarray(proba, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != len(classes):
        raise ModelOutputError(
            f"expected probabilities of shape (n, {len(classes)}), got {p.shape}")
    keys = [str(c) for c in classes]
    best = p.argmax(axis=1).tolist()
    out = []
    binary = len(classes) == 2
    for row, top in zip(p.tolist(), best, strict=True):
        probabilities = dict(zip(keys, row, strict=True))
        if binary:
            out.append(Prediction(row[1], score_of(row[1]), classes[top], probabilities))
        else:
            out.append(Prediction(row, None, classes[top], probabilities))
    return tuple(out)
