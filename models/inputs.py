"""A model version's input schema, from its MLflow signature, and the checks
that turn JSON request values into what the model accepts.

Pure: numpy and pandas, no MLflow (``models/registry.py`` converts MLflow's
``Schema`` into these types). Every mismatch raises :class:`InputMismatch`
naming the field, which the gateway answers as a 422.

The checks follow what MLflow accepts when it serves a model (its scoring
server casts JSON to the signature's types, then ``_enforce_schema`` checks
them), stricter where MLflow would silently change a value:

- ``double`` and ``float`` take JSON numbers, never booleans or strings;
  ``float`` values are rounded to float32 as MLflow's cast does (a finite
  number beyond float32's range is refused rather than made infinite).
- ``long`` and ``integer`` take JSON integers and integral floats (``3.0``
  is 3); ``3.5`` is refused where MLflow's cast would truncate it, and so is
  a value outside 64 or 32 bits.
- ``boolean`` takes ``true``/``false`` only, ``string`` JSON strings only,
  ``datetime`` timezone-naive ISO-8601 strings (MLflow refuses aware ones),
  ``binary`` base64 strings (decoded to bytes, as MLflow's server does).
- A column the signature marks optional may be missing or null; a required
  one may be neither. Names the signature does not have are ignored, as
  MLflow ignores extra columns (it logs a warning per call; a request row
  here is not worth one).
- A tensor signature takes one instance per row (nested lists of the
  tensor's dtype, shaped like the tensor without its batch dimension, -1
  free), under the tensor's name, or ``"input"`` for a single unnamed one.
- A model logged without a signature takes rows as they are.

:func:`build_input` turns checked rows into the model's input: a DataFrame
with the dtypes MLflow's enforcement produces, in signature order, or the
tensor arrays (a dict of them for named tensors).
"""

from __future__ import annotations

import base64
import binascii
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any, Literal, TypeAlias

import numpy as np
import numpy.typing as npt
import pandas as pd

ColumnType = Literal[
    "double", "float", "long", "integer", "boolean", "string", "datetime", "binary"]
"""MLflow's column types (``mlflow.types.DataType``) that a request can carry."""

NUMERIC_TYPES: frozenset[str] = frozenset({"double", "float", "long", "integer"})
"""Column types a float feature vector can hold."""

UNNAMED_INPUT = "input"
"""The row key of a signature's single unnamed tensor or column."""

ModelInput: TypeAlias = "pd.DataFrame | npt.NDArray[Any] | dict[str, npt.NDArray[Any]]"
"""What :func:`build_input` hands a model: a DataFrame for columns (and for
a model without a signature), an array for one unnamed tensor, a dict of
arrays for named tensors."""


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
    are passed through as a DataFrame of whatever the client sent).

    ``positional``: the signature's columns have no names (a text model's
    single string column, say); rows carry them as ``"input"`` (one column)
    or ``"0"``, ``"1"``... and the model gets them labelled by position, as
    MLflow passes them.
    """

    kind: Literal["columns", "tensors", "none"]
    columns: tuple[ColumnSpec, ...] = ()
    tensors: tuple[TensorSpec, ...] = ()
    positional: bool = False

    @property
    def names(self) -> tuple[str, ...]:
        """Column names, or the tensors' names (unnamed single tensor: ``()``)."""
        if self.kind == "columns":
            return tuple(c.name for c in self.columns)
        return tuple(t.name for t in self.tensors if t.name is not None)

    @property
    def row_keys(self) -> tuple[str, ...]:
        """The keys a checked row holds: the names, or ``("input",)`` for a
        single unnamed tensor; ``()`` without a signature."""
        if self.kind == "tensors":
            return tuple(t.name or UNNAMED_INPUT for t in self.tensors)
        return self.names

    @property
    def numeric(self) -> bool:
        """Named columns, every one required and numeric: rows fit a float vector."""
        return (self.kind == "columns" and not self.positional and bool(self.columns)
                and all(c.required and c.type in NUMERIC_TYPES for c in self.columns))


def columns_schema(names: Sequence[str], type: ColumnType = "double") -> InputSchema:
    """Required columns of one type, in order (a folded linear model's schema)."""
    return InputSchema("columns", tuple(ColumnSpec(n, type) for n in names))


# --- messages ---------------------------------------------------------------

def _show(value: Any) -> str:
    """A value as the client wrote it in JSON, shortened for a one-line message."""
    if value is None:
        return "null"
    if isinstance(value, bool | np.bool_):
        return "true" if value else "false"
    if isinstance(value, float | np.floating):
        f = float(value)
        if math.isnan(f):
            return "NaN"
        if math.isinf(f):
            return "Infinity" if f > 0 else "-Infinity"
        return repr(f)
    if isinstance(value, int | np.integer):
        text = str(int(value))
    elif isinstance(value, str):
        text = '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    elif isinstance(value, list | tuple):
        return "a list"
    elif isinstance(value, Mapping):
        return "an object"
    else:
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


MISSING_REQUIRED = "required by the model signature but missing"


class _Refused(Exception):
    """A value one converter cannot take; the caller names the field."""


# --- column values ----------------------------------------------------------

_INT_BOUNDS = {"long": (-(2**63), 2**63 - 1), "integer": (-(2**31), 2**31 - 1)}
_INT_LABEL = {"long": "an integer (long)", "integer": "a 32-bit integer (integer)"}
_FLOAT32_MAX = float(np.finfo(np.float32).max)
# datetime64[ns] spans these years; numpy would wrap around beyond them.
_DATETIME_MIN = datetime(1677, 9, 22)
_DATETIME_MAX = datetime(2262, 4, 11)


def _number(value: Any, what: str) -> float:
    t = type(value)
    if t is float:
        return value  # type: ignore[no-any-return]
    if t is int or (isinstance(value, int | np.integer) and not isinstance(value, bool)):
        try:
            return float(value)
        except OverflowError:
            raise _Refused(f"expected {what}, got {_show(value)}, out of range") from None
    if isinstance(value, float | np.floating):
        return float(value)
    raise _Refused(f"expected {what}, got {_show(value)}")


def _double(value: Any) -> float:
    return _number(value, "a number (double)")


def _float32(value: Any) -> float:
    v = _number(value, "a number (float)")
    if math.isfinite(v) and abs(v) > _FLOAT32_MAX:
        raise _Refused(f"expected a number (float), got {_show(value)}, out of float32 range")
    # The float32 the model will see, so every path (folded or not) computes
    # with the same value.
    return float(np.float32(v))


def _integer(type_: str) -> Callable[[Any], int]:
    low, high = _INT_BOUNDS[type_]
    what = _INT_LABEL[type_]

    def convert(value: Any) -> int:
        t = type(value)
        if t is int:
            v: int = value
        elif t is float or isinstance(value, float | np.floating):
            if not float(value).is_integer():
                raise _Refused(f"expected {what}, got {_show(value)}")
            v = int(value)
        elif isinstance(value, int | np.integer) and not isinstance(value, bool | np.bool_):
            v = int(value)
        else:
            raise _Refused(f"expected {what}, got {_show(value)}")
        if not low <= v <= high:
            raise _Refused(f"expected {what}, got {_show(value)}, out of range")
        return v

    return convert


def _boolean(value: Any) -> bool:
    if isinstance(value, bool | np.bool_):
        return bool(value)
    raise _Refused(f"expected true or false (boolean), got {_show(value)}")


def _string(value: Any) -> str:
    if isinstance(value, str):
        return value
    raise _Refused(f"expected a string, got {_show(value)}")


def _datetime(value: Any) -> np.datetime64:
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            raise _Refused(f"expected an ISO-8601 datetime, got {_show(value)}") from None
    elif isinstance(value, datetime):
        parsed = value
    else:
        raise _Refused(f"expected an ISO-8601 datetime string, got {_show(value)}")
    if parsed.tzinfo is not None:
        raise _Refused(f"expected a datetime without a timezone, got {_show(value)}")
    if not _DATETIME_MIN <= parsed <= _DATETIME_MAX:
        raise _Refused(f"expected a datetime between 1677-09-22 and 2262-04-11, "
                       f"got {_show(value)}")
    return np.datetime64(parsed, "ns")


def _binary(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        try:
            # Line breaks and spaces are allowed, as MIME base64 has them.
            return base64.b64decode("".join(value.split()), validate=True)
        except (binascii.Error, ValueError):
            pass
    raise _Refused(f"expected base64-encoded bytes (binary), got {_show(value)}")


def _finite(convert: Callable[[Any], float]) -> Callable[[Any], float]:
    def checked(value: Any) -> float:
        v = convert(value)
        if not math.isfinite(v):
            raise _Refused(f"expected a finite number, got {_show(value)}")
        return v

    return checked


_COLUMN_CONVERTERS: dict[str, Callable[[Any], Any]] = {
    "double": _double,
    "float": _float32,
    "long": _integer("long"),
    "integer": _integer("integer"),
    "boolean": _boolean,
    "string": _string,
    "datetime": _datetime,
    "binary": _binary,
}

_INTEGER_NULL = ("a missing value cannot be passed in an integer column: MLflow encodes it "
                 "as a float, which this model's signature refuses (declare it double)")


# --- tensor values ----------------------------------------------------------

def _leaf_converter(dtype: np.dtype[Any]) -> Callable[[Any], Any]:
    kind = dtype.kind
    if kind == "f":
        number = f"a number ({dtype.name})"
        return lambda v: _number(v, number)
    if kind in "iu":
        what = f"an integer ({dtype.name})"

        def integer(v: Any) -> int:
            if isinstance(v, float | np.floating) and float(v).is_integer():
                return int(v)
            if isinstance(v, int | np.integer) and not isinstance(v, bool | np.bool_):
                return int(v)
            raise _Refused(f"expected {what}, got {_show(v)}")

        return integer
    if kind == "b":
        return _boolean
    if kind == "U":
        return _string
    if kind == "S":
        def ascii_bytes(v: Any) -> bytes:
            if isinstance(v, str) and v.isascii():
                return v.encode("ascii")
            raise _Refused(f"expected an ASCII string (bytes), got {_show(v)}")

        return ascii_bytes
    if kind == "M":
        return _datetime
    if kind == "O":
        return lambda v: v
    raise ValueError(f"tensors of dtype {dtype.name} cannot be sent as JSON")


def _show_shape(shape: Sequence[int]) -> str:
    inner = ", ".join("any" if d == -1 else str(d) for d in shape)
    return f"({inner},)" if len(shape) == 1 else f"({inner})"


def _tensor_checker(spec: TensorSpec) -> Callable[[Any], npt.NDArray[Any]]:
    dtype = np.dtype(spec.dtype)
    dims = spec.shape[1:]
    leaf = _leaf_converter(dtype)
    # Python floats beyond a narrower float's range would become infinities.
    narrow_float = dtype.kind == "f" and dtype.itemsize < 8
    expected = (f"a {dtype.name} scalar" if not dims
                else f"a {dtype.name} instance of shape {_show_shape(dims)}")

    if dtype.kind == "O" and not dims:
        # MLflow passes anything in a one-dimensional object tensor, lists too.
        def anything(value: Any) -> npt.NDArray[Any]:
            holder = np.empty((), dtype=object)
            holder[()] = value
            return holder

        return anything

    def check(value: Any) -> npt.NDArray[Any]:
        shape: list[int] = []
        probe = value
        while isinstance(probe, list | tuple):
            shape.append(len(probe))
            if not probe:
                break
            probe = probe[0]
        if len(shape) != len(dims) or any(
                d not in (-1, s) for d, s in zip(dims, shape, strict=True)):
            got = "a scalar" if not shape else f"shape {_show_shape(shape)}"
            raise _Refused(f"expected {expected}, got {got}")
        flat: list[Any] = []
        last = len(shape) - 1

        def walk(v: Any, depth: int) -> None:
            if not isinstance(v, list | tuple) or len(v) != shape[depth]:
                raise _Refused(f"expected {expected}, got nested lists of unequal lengths")
            if depth == last:
                for item in v:
                    if isinstance(item, list | tuple):
                        raise _Refused(
                            f"expected {expected}, got nested lists of unequal depths")
                    flat.append(leaf(item))
            else:
                for item in v:
                    walk(item, depth + 1)

        if shape:
            walk(value, 0)
        else:
            flat.append(leaf(value))
        try:
            if narrow_float:
                with np.errstate(over="raise"):
                    array = np.array(flat, dtype=dtype)
            else:
                array = np.array(flat, dtype=dtype)
        except (OverflowError, FloatingPointError):
            raise _Refused(f"expected {expected}, got a value out of {dtype.name} range") from None
        return array.reshape(shape)

    return check


# --- rows -------------------------------------------------------------------

RowChecker = Callable[[Mapping[str, Any]], dict[str, Any]]


@lru_cache(maxsize=256)
def row_checker(schema: InputSchema, *, finite: bool = False,
                integer_nulls: bool = True) -> RowChecker:
    """A function checking one row against ``schema`` (see :func:`check_row`);
    build it once per model version, call it per row."""
    if schema.kind == "none":
        return dict

    if schema.kind == "tensors":
        tensors = [(spec.name or UNNAMED_INPUT, _tensor_checker(spec))
                   for spec in schema.tensors]

        def check_tensors(row: Mapping[str, Any]) -> dict[str, Any]:
            out: dict[str, Any] = {}
            for key, check in tensors:
                if key not in row:
                    raise InputMismatch(key, MISSING_REQUIRED)
                try:
                    out[key] = check(row[key])
                except _Refused as refused:
                    raise InputMismatch(key, str(refused)) from None
            return out

        return check_tensors

    plan: list[tuple[str, bool, Callable[[Any], Any], str | None]] = []
    for col in schema.columns:
        convert = _COLUMN_CONVERTERS[col.type]
        if finite and col.type in ("double", "float"):
            convert = _finite(convert)
        null_refusal = (_INTEGER_NULL if not integer_nulls and col.type in ("long", "integer")
                        else None)
        plan.append((col.name, col.required, convert, null_refusal))

    def check_columns(row: Mapping[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, required, convert, null_refusal in plan:
            value = row.get(name)
            if value is None:
                if required:
                    if name not in row:
                        raise InputMismatch(name, MISSING_REQUIRED)
                elif null_refusal is None:
                    out[name] = None
                    continue
                else:
                    raise InputMismatch(name, null_refusal)
            try:
                out[name] = convert(value)
            except _Refused as refused:
                raise InputMismatch(name, str(refused)) from None
        return out

    return check_columns


def check_row(schema: InputSchema, row: Mapping[str, Any], *, finite: bool = False,
              integer_nulls: bool = True) -> dict[str, Any]:
    """One row of JSON values as the model's signature types them.

    Columns come back as Python values of their type (``datetime`` as
    ``numpy.datetime64[ns]``, ``binary`` as bytes, a missing or null optional
    column as None), tensors as numpy arrays of one instance, a row without
    a signature as it is. ``finite``: refuse NaN and infinities (a model that
    cannot take them); ``integer_nulls=False``: refuse a missing optional
    integer (a model that goes through MLflow's own schema enforcement,
    which refuses what pandas makes of it).
    """
    return row_checker(schema, finite=finite, integer_nulls=integer_nulls)(row)


# --- batches ----------------------------------------------------------------

_FLOAT_DTYPES: dict[str, type[np.floating[Any]]] = {"double": np.float64, "float": np.float32}
_INT_DTYPES: dict[str, type[np.signedinteger[Any]]] = {"long": np.int64, "integer": np.int32}


def _frame_column(type_: ColumnType, values: list[Any]) -> Any:
    if type_ in _FLOAT_DTYPES:
        return np.array(values, dtype=_FLOAT_DTYPES[type_])  # None becomes NaN
    if type_ in _INT_DTYPES:
        if any(v is None for v in values):
            # pandas (and so MLflow) encodes an integer column with missing
            # values as floats with NaN.
            return np.array(values, dtype=np.float64)
        return np.array(values, dtype=_INT_DTYPES[type_])
    if type_ == "boolean":
        # With a null, MLflow keeps the column as objects rather than make it False.
        return np.array(values, dtype=object if None in values else np.bool_)
    if type_ == "datetime":
        return np.array(values, dtype="datetime64[ns]")  # None becomes NaT
    if type_ == "string":
        return pd.array(values, dtype="str")  # pandas' string dtype, as MLflow's server reads it
    return np.array(values, dtype=object)  # binary: bytes, or None


def build_frame(schema: InputSchema, rows: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """Checked rows as one DataFrame, columns in signature order with the
    dtypes MLflow's enforcement produces (``double`` float64, ``float``
    float32, ``long`` int64, ``integer`` int32 (float64 with NaN when a value
    is missing), ``boolean`` bool, ``string`` pandas' string dtype,
    ``datetime`` datetime64[ns], ``binary`` bytes objects); rows without a
    signature as pandas reads records."""
    if schema.kind == "none":
        return pd.DataFrame(list(rows))
    data = {col.name: _frame_column(col.type, [row.get(col.name) for row in rows])
            for col in schema.columns}
    frame = pd.DataFrame(data, index=pd.RangeIndex(len(rows)))
    if schema.positional:
        frame.columns = pd.RangeIndex(len(schema.columns))
    return frame


def build_tensors(schema: InputSchema, rows: Sequence[Mapping[str, Any]]
                  ) -> npt.NDArray[Any] | dict[str, npt.NDArray[Any]]:
    """Checked rows' instances stacked along the batch dimension: one array
    for a single unnamed tensor, else a dict by tensor name. Instances of a
    free dimension must agree within one batch."""
    arrays: dict[str, npt.NDArray[Any]] = {}
    for spec in schema.tensors:
        key = spec.name or UNNAMED_INPUT
        if spec.shape and spec.shape[0] != -1 and len(rows) != spec.shape[0]:
            raise InputMismatch(key, f"the signature fixes the batch at {spec.shape[0]} "
                                     f"rows, got {len(rows)}")
        if not rows:
            dims = tuple(max(d, 0) for d in spec.shape[1:])
            arrays[key] = np.empty((0, *dims), dtype=np.dtype(spec.dtype))
            continue
        instances = [row[key] for row in rows]
        first = instances[0].shape
        for other in instances:
            if other.shape != first:
                raise InputMismatch(
                    key, f"instances in one batch must have one shape, got "
                         f"{_show_shape(first)} and {_show_shape(other.shape)}")
        arrays[key] = np.stack(instances)
    if len(schema.tensors) == 1 and schema.tensors[0].name is None:
        return arrays[UNNAMED_INPUT]
    return arrays


def build_input(schema: InputSchema, rows: Sequence[Mapping[str, Any]]) -> ModelInput:
    """The model input for a batch of checked rows (see :data:`ModelInput`)."""
    if schema.kind == "tensors":
        return build_tensors(schema, rows)
    return build_frame(schema, rows)


def float_frame(schema: InputSchema, matrix: npt.NDArray[np.float64]) -> pd.DataFrame:
    """A float matrix (rows in ``schema.names`` order) as the DataFrame the
    model gets, each column cast to its type; for numeric schemas (see
    :attr:`InputSchema.numeric`), used where features were logged as floats."""
    if not schema.numeric:
        raise ValueError("only a schema of required numeric columns fits a float matrix")
    matrix = np.asarray(matrix, dtype=np.float64)
    if matrix.ndim != 2 or matrix.shape[1] != len(schema.columns):
        raise ValueError(f"expected a matrix of {len(schema.columns)} columns, "
                         f"got shape {matrix.shape}")
    data: dict[str, Any] = {}
    for j, col in enumerate(schema.columns):
        values = matrix[:, j]
        if col.type in _INT_DTYPES:
            if not np.all(np.isfinite(values) & (values == np.round(values))):
                raise ValueError(f"column {col.name} ({col.type}) holds non-integral values")
            data[col.name] = values.astype(_INT_DTYPES[col.type])
        else:
            data[col.name] = values.astype(_FLOAT_DTYPES[col.type])
    return pd.DataFrame(data, index=pd.RangeIndex(len(matrix)))
