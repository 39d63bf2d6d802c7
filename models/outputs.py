"""What a model version answers, row by row, whatever its flavour.

Pure: numpy only. The gateway renders these per protocol (``/v1/predict``,
MLflow's ``/invocations``, the Open Inference Protocol V2); the decision log
keeps :attr:`Prediction.score` as a number and the rest as JSON.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

JsonValue = Any
"""A value ``orjson`` can write: None, bool, int, float, str, list or dict of them."""

Label = str | int | float | bool
"""A class label as the estimator's ``classes_`` holds it (numpy scalars made Python)."""

OutputKind = Literal["probabilities", "value"]
"""``probabilities``: a classifier's class probabilities (``predict_proba``);
``value``: whatever ``predict`` (or a named pyfunc ``predict_fn``) returns."""


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
    raw: Any
