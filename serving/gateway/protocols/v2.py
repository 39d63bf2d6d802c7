"""The Open Inference Protocol V2 (KServe, Triton, MLServer):
``POST /v2/models/{name}/infer`` and the model metadata answer.

A request's input tensors become rows: an input of shape ``[n]`` or
``[n, 1]`` is a column (row ``i`` gets its ``i``-th value); any other is a
tensor whose first dimension is the batch (row ``i`` gets ``{name: data[i]}``,
nested to the remaining dimensions). Every input has the same ``n``. Data may
be flat or nested, in row-major order; BYTES elements are JSON strings.

One request has one unit (the header, ``parameters.unit_id`` or the query
parameter), so it is answered by one version; the answer's outputs are built
from its rows' predictions.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import orjson

from models.inputs import UNNAMED_INPUT, InputSchema
from models.outputs import Prediction
from serving.gateway.protocols import (
    Formatted,
    RowRequest,
    ScoredRequest,
    ScoringRequest,
    UnitPolicy,
)
from serving.gateway.protocols.v1 import (
    MAX_BATCH_ROWS,
    Problems,
    answer_headers,
    check_context,
    check_header_request_id,
    dumps,
    load_json,
    new_request_id,
    request_unit_or_fallback,
    row_request_id,
    too_many_rows,
)
from serving.gateway.schemas import V2InferenceRequest, V2RequestInput, describe
from serving.kernel.errors import ModelFailed, RampartError, ValidationFailed

PLATFORM = "mlflow"
PARAMETERS = "parameters"
CONTEXT = "context"
PREDICT = "predict"
PREDICT_PROBA = "predict_proba"
LABEL = "label"
RESERVED_PARAMETERS = frozenset({
    "content_type", "headers", "binary_data_output", "priority", "timeout",
    "sequence_id", "sequence_start", "sequence_end",
})
"""Request parameters that V2 servers (MLServer, Triton) read themselves; not
passed to the model as MLflow params."""

_INT_RANGES = {
    "INT8": (-(1 << 7), (1 << 7) - 1), "INT16": (-(1 << 15), (1 << 15) - 1),
    "INT32": (-(1 << 31), (1 << 31) - 1), "INT64": (-(1 << 63), (1 << 63) - 1),
    "UINT8": (0, (1 << 8) - 1), "UINT16": (0, (1 << 16) - 1),
    "UINT32": (0, (1 << 32) - 1), "UINT64": (0, (1 << 64) - 1),
}
_FLOAT_MAX = {"FP16": 65504.0, "FP32": float(np.finfo(np.float32).max),
              "FP64": float(np.finfo(np.float64).max)}

COLUMN_DATATYPES = {
    "boolean": "BOOL", "integer": "INT32", "long": "INT64", "float": "FP32",
    "double": "FP64", "string": "BYTES", "binary": "BYTES", "datetime": "BYTES",
}
"""MLflow column types as V2 datatypes, as MLServer's MLflow runtime maps them."""


# ----------------------------------------------------------------- parse


def parse(
    body: bytes, *, unit: UnitPolicy, header_unit: str | None, query: Mapping[str, str],
    header_request_id: str | None, model_name: str | None = None,
) -> ScoringRequest:
    """A V2 inference request as one batch of rows (see the module docstring).

    Request ``parameters``: ``unit_id`` (the unit, after the header) and
    ``context`` are read here; the rest, less the ones V2 servers read
    themselves, are passed to the model as MLflow params.
    """
    header_id = check_header_request_id(header_request_id)
    data = load_json(body, header_id)
    if not isinstance(data, dict):
        raise ValidationFailed(f'body must be a JSON object {{"inputs": [...]}} (got '
                               f"{describe(data)})", header_id)
    problems = Problems(header_id)
    request = problems.validate(V2InferenceRequest, data)
    columns = _inputs(request.inputs, problems)
    problems.raise_any()
    names = [tensor.name for tensor in request.inputs]
    count = len(columns[0])
    params = dict(request.parameters or {})
    param_unit = None
    if unit.param in params:
        param_unit = (f"{PARAMETERS}.{unit.param}", params.pop(unit.param))
    context = check_context(params.pop(CONTEXT, None), f"{PARAMETERS}.{CONTEXT}", problems)
    requested = tuple(output.name for output in request.outputs or ())
    for i, name in enumerate(requested):
        if name in requested[:i]:
            problems.add(f"outputs.{i}.name", f"{name!r} is requested twice")
    problems.raise_any()
    request_id = header_id or new_request_id()
    unit_id, source = request_unit_or_fallback(
        unit, header_unit, param_unit, query, request_id,
        f'"{PARAMETERS}": {{"{unit.param}": ...}} in the body')
    rows = tuple(
        RowRequest(unit_id, source, {name: column[i] for name, column in zip(names, columns,
                                                                              strict=True)},
                   dict(context), row_request_id(request_id, i))
        for i in range(count))
    return ScoringRequest(
        protocol="v2", rows=rows, batch=True, model_name=model_name,
        params={k: v for k, v in params.items() if k not in RESERVED_PARAMETERS},
        echo_id=request.id, requested_outputs=requested, columns_order=tuple(names),
        request_id=request_id)


def _inputs(inputs: Sequence[V2RequestInput], problems: Problems) -> list[list[Any]]:
    """Each input's values, one per row; problems noted."""
    seen: dict[str, int] = {}
    for i, tensor in enumerate(inputs):
        if tensor.name in seen:
            problems.add(f"inputs.{i}.name",
                         f"{tensor.name!r} is also inputs.{seen[tensor.name]}'s name")
        seen.setdefault(tensor.name, i)
        if tensor.parameters and "binary_data_size" in tensor.parameters:
            problems.add(f"inputs.{i}.parameters.binary_data_size",
                         "binary tensor data is not supported: send the data as JSON")
    first = inputs[0].shape[0]
    for i, tensor in enumerate(inputs[1:], start=1):
        if tensor.shape[0] != first:
            problems.add(f"inputs.{i}.shape", f"first dimension {tensor.shape[0]} differs from "
                                              f"inputs.0's {first}: every input holds one "
                                              "value per row")
    if problems.lines:
        return []
    if first > MAX_BATCH_ROWS:
        raise too_many_rows(first, problems.request_id)
    if first == 0:
        problems.add("inputs.0.shape", "no rows: the first dimension is 0")
        return []
    columns = []
    for i, tensor in enumerate(inputs):
        values = _values(tensor, f"inputs.{i}.data", problems)
        if values is not None:
            columns.append(_per_row(values, tensor.shape))
    return columns


def _flatten(data: list[Any]) -> list[Any]:
    """Nested lists' items in row-major order (without recursion)."""
    out: list[Any] = []
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            out.append(item)
        else:
            stack.pop()
    return out


def _values(tensor: V2RequestInput, where: str, problems: Problems) -> list[Any] | None:
    """The tensor's elements, flat and typed by its datatype; None if any is wrong
    (the first wrong one is noted)."""
    flat = _flatten(tensor.data)
    expected = math.prod(tensor.shape)
    if len(flat) != expected:
        problems.add(where, f"holds {len(flat)} elements; shape {tensor.shape} needs {expected}")
        return None
    datatype = tensor.datatype
    checked = _fast_values(datatype, flat)
    if checked is not None:
        return checked
    for j, value in enumerate(flat):
        problem = _element_problem(datatype, value)
        if problem is not None:
            problems.add(where, f"element {j}: {problem}")
            return None
    return [float(v) for v in flat] if datatype in _FLOAT_MAX else flat


def _fast_values(datatype: str, flat: list[Any]) -> list[Any] | None:
    """The elements if all are right, checked a whole tensor at a time; None
    when any may be wrong (the element-by-element check then names it)."""
    if datatype == "BOOL":
        return flat if all(type(v) is bool for v in flat) else None
    if datatype == "BYTES":
        return flat if all(type(v) is str for v in flat) else None
    if datatype in _INT_RANGES:
        low, high = _INT_RANGES[datatype]
        fits = all(type(v) is int for v in flat) and (
            not flat or (low <= min(flat) and max(flat) <= high))
        return flat if fits else None
    if not all(type(v) is float or type(v) is int for v in flat):
        return None
    try:
        values = np.asarray(flat, dtype=np.float64)
    except OverflowError:  # an integer beyond float64
        return None
    if values.size and not (np.isfinite(values).all()
                            and np.abs(values).max() <= _FLOAT_MAX[datatype]):
        return None
    as_list: list[Any] = values.tolist()
    return as_list


def _element_problem(datatype: str, value: Any) -> str | None:
    if datatype == "BOOL":
        return None if isinstance(value, bool) else f"expected true or false, got {describe(value)}"
    if datatype == "BYTES":
        return None if isinstance(value, str) else f"expected a string, got {describe(value)}"
    if datatype in _INT_RANGES:
        low, high = _INT_RANGES[datatype]
        if isinstance(value, bool) or not isinstance(value, int):
            return f"expected an integer ({datatype}), got {describe(value)}"
        if not low <= value <= high:
            return f"{value} is out of {datatype}'s range [{low}, {high}]"
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return f"expected a number ({datatype}), got {describe(value)}"
    if isinstance(value, float) and not math.isfinite(value):
        return f"expected a finite number ({datatype}), got {value}"
    if abs(value) > _FLOAT_MAX[datatype]:
        return f"{value} is out of {datatype}'s range"
    return None


def _reshape(flat: list[Any], dims: Sequence[int]) -> list[Any]:
    """``flat`` as nested lists of shape ``dims`` (row-major)."""
    if len(dims) == 1:
        return flat
    step = math.prod(dims[1:])
    return [_reshape(flat[j * step:(j + 1) * step], dims[1:]) for j in range(dims[0])]


def _per_row(flat: list[Any], shape: Sequence[int]) -> list[Any]:
    """One value per row: a column's scalar (shape ``[n]`` or ``[n, 1]``), or a
    tensor's instance nested to ``shape[1:]``."""
    if len(shape) == 1 or (len(shape) == 2 and shape[1] == 1):
        return flat
    return _reshape(flat, shape)


# ----------------------------------------------------------------- format


def error_answer(error: RampartError, headers: dict[str, str]) -> Formatted:
    """V2's error body ``{"error": message}``, with Rampart's stable code beside it."""
    return Formatted(error.status, orjson.dumps({"error": error.message, "code": error.code}),
                     headers)


def format_error(error: RampartError) -> Formatted:
    """A request refused as a whole (also a metadata request for an unknown model)."""
    return error_answer(error, {})


def _shape_and_leaves(values: list[Any]) -> tuple[list[int], list[Any]] | None:
    """The shape and row-major leaves of rows' values (scalars, or rectangular
    nested lists); None if they are ragged or hold objects."""
    shape = [len(values)]
    level = values
    while level and all(isinstance(v, list) for v in level):
        lengths = {len(v) for v in level}
        if len(lengths) != 1:
            return None
        shape.append(lengths.pop())
        level = [item for v in level for item in v]
    if any(isinstance(v, list | dict) for v in level):
        return None
    return shape, level


def _datatype(leaves: list[Any]) -> str | None:
    if all(isinstance(v, bool) for v in leaves):
        return "BOOL" if leaves else "FP64"
    if any(isinstance(v, bool) for v in leaves):
        return None
    if all(isinstance(v, int) for v in leaves):
        return "INT64"
    if all(isinstance(v, int | float) for v in leaves):
        return "FP64"
    if all(isinstance(v, str) for v in leaves):
        return "BYTES"
    return None


def output_tensor(name: str, values: list[Any]) -> dict[str, Any]:
    """One output from every row's value: its shape ``[n, ...]`` and datatype
    inferred (BOOL, INT64, FP64 or BYTES); values that fit no tensor (mixed
    kinds, ragged lists, objects) are sent as BYTES of their JSON text."""
    found = _shape_and_leaves(values)
    datatype = None if found is None else _datatype(found[1])
    if found is None or datatype is None:
        return {"name": name, "shape": [len(values)], "datatype": "BYTES",
                "data": [dumps(v).decode() for v in values]}
    shape, leaves = found
    if datatype == "FP64":
        leaves = [float(v) for v in leaves]
    return {"name": name, "shape": shape, "datatype": datatype, "data": leaves}


def outputs_of(predictions: Sequence[Prediction]) -> list[dict[str, Any]]:
    """The outputs answering a batch's predictions.

    Classifiers (every row has probabilities over the same classes):
    ``predict_proba`` ``[n, k]`` FP64 in class order (the classes in its
    parameters) and ``label`` ``[n]``. Rows whose values are objects with the
    same keys: one output per key. Otherwise one output ``predict``: ``[n]``
    for scalars, ``[n, m, ...]`` for vectors.
    """
    probabilities = [p.probabilities for p in predictions]
    if probabilities and all(p is not None for p in probabilities):
        classes = list(probabilities[0] or {})
        if all(list(p or {}) == classes for p in probabilities):
            proba = {"name": PREDICT_PROBA, "shape": [len(predictions), len(classes)],
                     "datatype": "FP64",
                     "data": [float((p or {})[c]) for p in probabilities for c in classes],
                     "parameters": {"classes": classes}}
            return [proba, output_tensor(LABEL, [p.label for p in predictions])]
    values = [p.value for p in predictions]
    if values and all(isinstance(v, dict) for v in values):
        keys = list(values[0])
        if keys and all(list(v) == keys for v in values):
            return [output_tensor(str(k), [v[k] for v in values]) for k in keys]
    return [output_tensor(PREDICT, values)]


def format(scored: ScoredRequest) -> Formatted:
    """The answer to a V2 inference request: ``model_name``, ``model_version``,
    ``id`` (echoed), ``parameters`` (the arm and experiment) and ``outputs``
    (only those requested, in the order requested). Any row failed: the first
    failure's status and V2 error body."""
    headers = answer_headers(scored)
    predictions: list[Prediction] = []
    # The first refused row answers for the request (its other rows are unscored).
    for row in scored.rows:
        if row.error is not None:
            return error_answer(row.error, headers)
    for row in scored.rows:
        if row.prediction is None:
            return error_answer(ModelFailed("no prediction was made for a row"), headers)
        predictions.append(row.prediction)
    request = scored.request
    outputs = outputs_of(predictions)
    if request.requested_outputs:
        by_name = {output["name"]: output for output in outputs}
        unknown = [(i, name) for i, name in enumerate(request.requested_outputs)
                   if name not in by_name]
        if unknown:
            have = ", ".join(f'"{name}"' for name in by_name)
            problems = Problems(request.request_id)
            for i, name in unknown:
                problems.add(f"outputs.{i}.name", f'the model has no output "{name}"; it has '
                                                  f"{have}")
            return error_answer(problems.error(), headers)
        outputs = [by_name[name] for name in request.requested_outputs]
    first = scored.rows[0]
    parameters: dict[str, Any] = {}
    if first.arm is not None:
        parameters["rampart_arm"] = first.arm
    if first.experiment_id is not None:
        parameters["rampart_experiment_id"] = first.experiment_id
    body: dict[str, Any] = {"model_name": first.model_name or request.model_name,
                            "model_version": first.model_version}
    if request.echo_id is not None:
        body["id"] = request.echo_id
    body["parameters"] = parameters
    body["outputs"] = outputs
    try:
        return Formatted(200, dumps(body), headers)
    except ModelFailed as error:
        return error_answer(error, headers)


# ----------------------------------------------------------------- metadata


def tensor_datatype(dtype: str) -> str:
    """A numpy dtype name as a V2 datatype (strings, bytes and objects: BYTES)."""
    try:
        kind, size = np.dtype(dtype).kind, np.dtype(dtype).itemsize
    except TypeError:
        return "BYTES"
    if kind == "b":
        return "BOOL"
    if kind in "iu" and size in (1, 2, 4, 8):
        return f"{'INT' if kind == 'i' else 'UINT'}{size * 8}"
    if kind == "f" and size in (2, 4, 8):
        return f"FP{size * 8}"
    return "BYTES"


def metadata_tensors(schema: InputSchema, unnamed: str) -> list[dict[str, Any]]:
    """A signature as V2 metadata tensors: a column is ``[-1]``; a tensor keeps
    its shape (-1 free); an unnamed one is called ``unnamed``."""
    if schema.kind == "columns":
        return [{"name": c.name, "datatype": COLUMN_DATATYPES[c.type], "shape": [-1]}
                for c in schema.columns]
    if schema.kind == "tensors":
        return [{"name": t.name or unnamed, "datatype": tensor_datatype(t.dtype),
                 "shape": list(t.shape)} for t in schema.tensors]
    return []


def model_metadata(name: str, versions: Sequence[str], schema: InputSchema,
                   outputs: InputSchema | None = None) -> dict[str, Any]:
    """``GET /v2/models/{name}``: name, versions, platform, inputs and outputs
    (empty when the output signature is not known)."""
    return {
        "name": name,
        "versions": list(versions),
        "platform": PLATFORM,
        "inputs": metadata_tensors(schema, UNNAMED_INPUT),
        "outputs": [] if outputs is None else metadata_tensors(outputs, PREDICT),
    }
