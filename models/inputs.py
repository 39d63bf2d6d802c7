"""A model version's input schema, from its MLflow signature, and the checks
that turn JSON request values into what the model accepts.

Pure: numpy and pandas, no MLflow (``models/registry.py`` converts MLflow's
``Schema`` into these types). Every mismatch raises :class:`InputMismatch`
naming the field, which the gateway answers as a 422.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

ColumnType = Literal[
    "double", "float", "long", "integer", "boolean", "string", "datetime", "binary"]
"""MLflow's column types (``mlflow.types.DataType``) that a request can carry."""


class InputMismatch(ValueError):
    """A request value does not fit the model's signature; ``field`` names it
    (``f3``, ``rows.2.f3``, ``inputs.0`` ...)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True, slots=True)
class ColumnSpec:
    """One named column of a column-based signature."""

    name: str
    type: ColumnType
    required: bool = True


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """One tensor of a tensor-based signature: numpy dtype name (``float32``...)
    and shape with -1 for a free dimension (the first is the batch)."""

    name: str | None
    dtype: str
    shape: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class InputSchema:
    """Columns, tensors, or nothing (a model logged without a signature: inputs
    are passed through as a DataFrame of whatever the client sent)."""

    kind: Literal["columns", "tensors", "none"]
    columns: tuple[ColumnSpec, ...] = ()
    tensors: tuple[TensorSpec, ...] = ()

    @property
    def names(self) -> tuple[str, ...]:
        """Column names, or the tensors' names (unnamed single tensor: ``()``)."""
        if self.kind == "columns":
            return tuple(c.name for c in self.columns)
        return tuple(t.name for t in self.tensors if t.name is not None)
