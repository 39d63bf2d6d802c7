"""Request rows checked and batched by a model's signature, and model outputs
split into per-row answers: pure numpy/pandas, no MLflow."""

from __future__ import annotations

import base64
import math
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from models.inputs import (
    ColumnSpec,
    InputMismatch,
    InputSchema,
    TensorSpec,
    build_frame,
    build_input,
    build_tensors,
    check_row,
    columns_schema,
    float_frame,
)
from models.outputs import (
    ModelOutputError,
    Prediction,
    class_rows,
    json_value,
    score_of,
    split_rows,
    value_rows,
)
from models.registry import LinearScorer

pytestmark = pytest.mark.unit


def one(type_: str, required: bool = True) -> InputSchema:
    return InputSchema("columns", (ColumnSpec("c", type_, required),))  # type: ignore[arg-type]


def refused(schema: InputSchema, row: dict[str, Any], **options: bool) -> InputMismatch:
    with pytest.raises(InputMismatch) as caught:
        check_row(schema, row, **options)
    return caught.value


# --- column types -----------------------------------------------------------

@pytest.mark.parametrize(("type_", "sent", "checked"), [
    ("double", 1.5, 1.5),
    ("double", 3, 3.0),
    ("double", -0.0, -0.0),
    ("float", 3, 3.0),
    ("float", 0.1, float(np.float32(0.1))),  # rounded as the model will see it
    ("long", 3, 3),
    ("long", 3.0, 3),  # an integral float is the integer
    ("long", -(2**63), -(2**63)),
    ("long", 2**63 - 1, 2**63 - 1),
    ("integer", 2**31 - 1, 2**31 - 1),
    ("integer", -7.0, -7),
    ("boolean", True, True),
    ("boolean", False, False),
    ("string", "pro", "pro"),
    ("string", "", ""),
    ("datetime", "2024-02-29T13:45:01.250", np.datetime64("2024-02-29T13:45:01.250", "ns")),
    ("datetime", "2024-02-29", np.datetime64("2024-02-29T00:00", "ns")),
    ("binary", base64.b64encode(b"\x00\xffhi").decode(), b"\x00\xffhi"),
    ("binary", "AAEC\nAw==", b"\x00\x01\x02\x03"),  # MIME line breaks
])
def test_each_type_takes_its_json_values(type_: str, sent: Any, checked: Any) -> None:
    value = check_row(one(type_), {"c": sent})["c"]
    assert value == checked
    assert type(value) is type(checked)


@pytest.mark.parametrize(("type_", "sent", "message"), [
    ("double", True, "expected a number (double), got true"),
    ("double", "1.5", 'expected a number (double), got "1.5"'),
    ("double", None, "expected a number (double), got null"),
    ("double", [1.0], "expected a number (double), got a list"),
    ("double", 10**400, "out of range"),
    ("float", 1e39, "out of float32 range"),
    ("float", False, "expected a number (float), got false"),
    ("long", 3.5, "expected an integer (long), got 3.5"),
    ("long", True, "expected an integer (long), got true"),
    ("long", "3", 'expected an integer (long), got "3"'),
    ("long", 2**63, "out of range"),
    ("long", 1e19, "out of range"),
    ("long", math.nan, "expected an integer (long), got NaN"),
    ("integer", 2**31, "expected a 32-bit integer (integer), got 2147483648, out of range"),
    ("integer", 0.5, "expected a 32-bit integer (integer), got 0.5"),
    ("boolean", 1, "expected true or false (boolean), got 1"),
    ("boolean", "true", 'expected true or false (boolean), got "true"'),
    ("string", 3, "expected a string, got 3"),
    ("string", {"a": 1}, "expected a string, got an object"),
    ("datetime", "yesterday", 'expected an ISO-8601 datetime, got "yesterday"'),
    ("datetime", "2024-01-01T00:00:00+02:00", "without a timezone"),
    ("datetime", "2024-01-01T00:00:00Z", "without a timezone"),
    ("datetime", "1500-01-01", "between 1677-09-22 and 2262-04-11"),
    ("datetime", 1704067200, "expected an ISO-8601 datetime string, got 1704067200"),
    ("binary", "not base64!", "expected base64-encoded bytes (binary)"),
    ("binary", 7, "expected base64-encoded bytes (binary), got 7"),
])
def test_a_value_of_another_type_is_refused_naming_the_column(
        type_: str, sent: Any, message: str) -> None:
    mismatch = refused(one(type_), {"c": sent})
    assert mismatch.field == "c"
    assert message in mismatch.message
    assert "\n" not in mismatch.message
    assert str(mismatch) == f"c: {mismatch.message}"


def test_a_long_message_quotes_a_shortened_value() -> None:
    mismatch = refused(one("long"), {"c": "x" * 500})
    assert mismatch.message == 'expected an integer (long), got "' + "x" * 56 + "..."



@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_numbers_pass_unless_the_model_cannot_take_them(value: float) -> None:
    for type_ in ("double", "float"):
        got = check_row(one(type_), {"c": value})["c"]
        assert got == value or (math.isnan(got) and math.isnan(value))
        assert "expected a finite number" in refused(one(type_), {"c": value},
                                                     finite=True).message


@given(st.integers(min_value=-(2**63), max_value=2**63 - 1))
def test_every_64_bit_integer_is_a_long_as_int_or_integral_float(n: int) -> None:
    assert check_row(one("long"), {"c": n})["c"] == n
    as_float = float(n)
    if -(2**63) <= as_float < 2**63:
        assert check_row(one("long"), {"c": as_float})["c"] == int(as_float)


@given(st.floats(allow_nan=False, allow_infinity=False).filter(lambda f: not f.is_integer()))
def test_no_fractional_float_is_a_long(value: float) -> None:
    assert refused(one("long"), {"c": value}).message.startswith("expected an integer (long)")


@given(st.floats(allow_nan=False, width=32))
def test_a_float32_value_survives_the_float_column_exactly(value: float) -> None:
    assert check_row(one("float"), {"c": value})["c"] == value


# --- missing, null, extra ----------------------------------------------------

SCHEMA = InputSchema("columns", (
    ColumnSpec("plan", "string"),
    ColumnSpec("visits", "long"),
    ColumnSpec("spend", "double"),
    ColumnSpec("coupon", "string", required=False),
    ColumnSpec("seats", "integer", required=False),
))


def test_a_missing_required_column_is_named() -> None:
    mismatch = refused(SCHEMA, {"plan": "pro", "spend": 1.0})
    assert (mismatch.field, mismatch.message) == (
        "visits", "required by the model signature but missing")


def test_optional_columns_may_be_missing_or_null() -> None:
    assert check_row(SCHEMA, {"plan": "pro", "visits": 2, "spend": 1.5}) == {
        "plan": "pro", "visits": 2, "spend": 1.5, "coupon": None, "seats": None}
    assert check_row(SCHEMA, {"plan": "pro", "visits": 2, "spend": 1.5, "coupon": None,
                              "seats": 4}) == {
        "plan": "pro", "visits": 2, "spend": 1.5, "coupon": None, "seats": 4}


def test_an_optional_value_is_still_checked() -> None:
    mismatch = refused(SCHEMA, {"plan": "pro", "visits": 2, "spend": 1.5, "seats": 1.5})
    assert mismatch.field == "seats"


def test_a_missing_optional_integer_can_be_refused_for_mlflow_enforcement() -> None:
    row = {"plan": "pro", "visits": 2, "spend": 1.5}
    mismatch = refused(SCHEMA, row, integer_nulls=False)
    assert mismatch.field == "seats" and "integer column" in mismatch.message
    # a string may be missing all the same
    assert check_row(SCHEMA, {**row, "seats": 3}, integer_nulls=False)["coupon"] is None


def test_names_the_signature_does_not_have_are_ignored() -> None:
    checked = check_row(SCHEMA, {"plan": "pro", "visits": 2, "spend": 1.5, "unknown": "x"})
    assert "unknown" not in checked


# --- frames -----------------------------------------------------------------

EVERY_TYPE = InputSchema("columns", (
    ColumnSpec("d", "double"), ColumnSpec("f", "float"), ColumnSpec("l", "long"),
    ColumnSpec("i", "integer"), ColumnSpec("b", "boolean"), ColumnSpec("s", "string"),
    ColumnSpec("t", "datetime"), ColumnSpec("x", "binary"),
))
ROW = {"x": "aGk=", "t": "2024-05-06T07:08:09", "s": "a", "b": True, "i": 2, "l": 3.0,
       "f": 0.5, "d": 1}


def test_a_frame_has_signature_order_and_mlflow_dtypes() -> None:
    frame = build_frame(EVERY_TYPE, [check_row(EVERY_TYPE, ROW), check_row(EVERY_TYPE, ROW)])
    assert list(frame.columns) == ["d", "f", "l", "i", "b", "s", "t", "x"]
    assert [str(t) for t in frame.dtypes] == [
        "float64", "float32", "int64", "int32", "bool", "str", "datetime64[ns]", "object"]
    assert frame.iloc[0].tolist() == [1.0, 0.5, 3, 2, True, "a",
                                      pd.Timestamp("2024-05-06T07:08:09"), b"hi"]
    assert isinstance(frame.index, pd.RangeIndex)


def test_missing_optional_values_become_what_pandas_makes_of_a_null() -> None:
    schema = InputSchema("columns", tuple(
        ColumnSpec(c.name, c.type, required=False) for c in EVERY_TYPE.columns))
    rows = [check_row(schema, ROW), check_row(schema, {})]
    frame = build_frame(schema, rows)
    # an integer column with a missing value is floats with NaN, as pandas encodes it
    assert [str(t) for t in frame.dtypes] == [
        "float64", "float32", "float64", "float64", "object", "str", "datetime64[ns]",
        "object"]
    missing = frame.iloc[1]
    assert all(pd.isna(missing[c]) for c in ("d", "f", "l", "i", "s", "t"))
    assert missing["b"] is None and missing["x"] is None


def test_positional_columns_are_labelled_by_position() -> None:
    schema = InputSchema("columns", (ColumnSpec("input", "string"),), positional=True)
    frame = build_input(schema, [check_row(schema, {"input": "hello"})])
    assert isinstance(frame, pd.DataFrame)
    assert list(frame.columns) == [0] and frame[0].tolist() == ["hello"]


def test_without_a_signature_rows_pass_as_records() -> None:
    schema = InputSchema("none")
    rows = [check_row(schema, {"a": 1, "b": "x"}), check_row(schema, {"a": 2.5})]
    assert rows[0] == {"a": 1, "b": "x"}
    frame = build_input(schema, rows)
    assert isinstance(frame, pd.DataFrame)
    assert frame["a"].tolist() == [1.0, 2.5] and frame["b"].isna().tolist() == [False, True]


def test_a_float_matrix_is_cast_column_by_column() -> None:
    schema = InputSchema("columns", (ColumnSpec("a", "double"), ColumnSpec("n", "long"),
                                     ColumnSpec("w", "float")))
    frame = float_frame(schema, np.array([[0.5, 2.0, 1.25], [1.5, -3.0, 0.1]]))
    assert [str(t) for t in frame.dtypes] == ["float64", "int64", "float32"]
    assert frame["n"].tolist() == [2, -3]
    with pytest.raises(ValueError, match="non-integral"):
        float_frame(schema, np.array([[0.5, 2.5, 1.0]]))
    with pytest.raises(ValueError, match="required numeric columns"):
        float_frame(SCHEMA, np.zeros((1, 5)))


# --- tensors ----------------------------------------------------------------

IMAGE = InputSchema("tensors", tensors=(TensorSpec(None, "float32", (-1, 2, 3)),))
NAMED = InputSchema("tensors", tensors=(TensorSpec("a", "float64", (-1, 3)),
                                        TensorSpec("b", "int64", (-1,))))


def test_an_unnamed_tensor_takes_one_instance_per_row_under_input() -> None:
    instance = [[1, 2, 3], [4.5, 5, 6]]
    checked = check_row(IMAGE, {"input": instance})["input"]
    assert checked.dtype == np.float32 and checked.shape == (2, 3)
    batch = build_input(IMAGE, [{"input": checked}, {"input": checked * 2}])
    assert isinstance(batch, np.ndarray) and batch.shape == (2, 2, 3)
    assert batch.dtype == np.float32
    np.testing.assert_array_equal(batch[1], np.array(instance, dtype=np.float32) * 2)
    assert IMAGE.names == () and IMAGE.row_keys == ("input",)


def test_named_tensors_batch_into_a_dict() -> None:
    rows = [check_row(NAMED, {"a": [1, 2, 3], "b": 4}),
            check_row(NAMED, {"a": [0.5, 0.5, 0.5], "b": -1.0})]
    batch = build_tensors(NAMED, rows)
    assert isinstance(batch, dict) and set(batch) == {"a", "b"}
    assert batch["a"].dtype == np.float64 and batch["a"].shape == (2, 3)
    assert batch["b"].dtype == np.int64 and batch["b"].tolist() == [4, -1]


@pytest.mark.parametrize(("schema", "row", "field", "message"), [
    (IMAGE, {"inputs": [[1, 2, 3], [4, 5, 6]]}, "input", "required"),
    (IMAGE, {"input": [1, 2, 3]}, "input",
     "expected a float32 instance of shape (2, 3), got shape (3,)"),
    (IMAGE, {"input": [[1, 2, 3], [4, 5]]}, "input", "nested lists of unequal lengths"),
    (IMAGE, {"input": [[1, 2, 3], [4, 5, [6]]]}, "input", "unequal depths"),
    (IMAGE, {"input": [[1, 2, 3], [4, 5, True]]}, "input", "got true"),
    (IMAGE, {"input": [[1, 2, 3], [4, 5, "6"]]}, "input", 'got "6"'),
    (IMAGE, {"input": [[1, 2, 3], [4, 5, 1e39]]}, "input", "out of float32 range"),
    (IMAGE, {"input": 3.0}, "input", "got a scalar"),
    (NAMED, {"a": [1, 2, 3]}, "b", "required"),
    (NAMED, {"a": [1, 2, 3], "b": 2.5}, "b", "expected an integer (int64), got 2.5"),
    (NAMED, {"a": [1, 2, 3], "b": [2]}, "b", "expected a int64 scalar, got shape (1,)"),
    (NAMED, {"a": [1, 2], "b": 2}, "a", "shape (3,), got shape (2,)"),
])
def test_a_tensor_instance_is_checked_against_dtype_and_shape(
        schema: InputSchema, row: dict[str, Any], field: str, message: str) -> None:
    mismatch = refused(schema, row)
    assert mismatch.field == field
    assert message in mismatch.message


def test_a_free_dimension_takes_any_length_but_one_per_batch() -> None:
    schema = InputSchema("tensors", tensors=(TensorSpec("seq", "int8", (-1, -1)),))
    short = check_row(schema, {"seq": [1, 2]})
    long = check_row(schema, {"seq": [1, 2, 3]})
    assert build_tensors(schema, [short, short])["seq"].shape == (2, 2)  # type: ignore[index]
    with pytest.raises(InputMismatch, match=r"seq: instances in one batch must have one shape"):
        build_tensors(schema, [short, long])
    assert "out of int8 range" in refused(schema, {"seq": [1, 300]}).message


def test_an_object_tensor_takes_anything() -> None:
    schema = InputSchema("tensors", tensors=(TensorSpec(None, "object", (-1,)),))
    rows = [check_row(schema, {"input": [1, "a"]}), check_row(schema, {"input": "b"})]
    batch = build_input(schema, rows)
    assert isinstance(batch, np.ndarray) and batch.tolist() == [[1, "a"], "b"]


def test_a_fixed_batch_dimension_is_kept() -> None:
    schema = InputSchema("tensors", tensors=(TensorSpec(None, "float32", (1, 2)),))
    row = check_row(schema, {"input": [1, 2]})
    assert build_input(schema, [row]).shape == (1, 2)  # type: ignore[union-attr]
    with pytest.raises(InputMismatch, match="fixes the batch at 1 rows, got 2"):
        build_input(schema, [row, row])


# --- outputs ----------------------------------------------------------------

def test_arrays_series_and_lists_split_into_rows() -> None:
    assert split_rows(np.array([1.5, 2.5]), 2) == [1.5, 2.5]
    assert split_rows(np.array([[1, 2], [3, 4]]), 2) == [[1, 2], [3, 4]]
    assert split_rows(np.array(["a", "b"]), 2) == ["a", "b"]
    assert split_rows(pd.Series([True, False]), 2) == [True, False]
    assert split_rows([{"k": np.int64(1)}, None], 2) == [{"k": 1}, None]
    assert split_rows(np.float64(0.25), 1) == [0.25]
    assert split_rows("yes", 1) == ["yes"]


def test_dicts_and_wide_frames_split_into_named_outputs() -> None:
    named = {"total": np.array([1.0, 2.0]), "tag": ["a", "b"]}
    assert split_rows(named, 2) == [{"total": 1.0, "tag": "a"}, {"total": 2.0, "tag": "b"}]
    wide = pd.DataFrame({"x": [1, 2], "y": ["p", "q"]})
    assert split_rows(wide, 2) == [{"x": 1, "y": "p"}, {"x": 2, "y": "q"}]
    assert split_rows(pd.DataFrame({"only": [0.5, 0.75]}), 2) == [0.5, 0.75]


@pytest.mark.parametrize("raw", [np.array([1.0, 2.0, 3.0]), [1], 0.5, {"a": [1, 2, 3]},
                                 pd.DataFrame({"a": [1]}), object()])
def test_an_output_without_one_answer_per_row_is_an_error(raw: Any) -> None:
    with pytest.raises(ModelOutputError):
        split_rows(raw, 2)


def test_values_become_plain_json() -> None:
    value = json_value({"n": np.int32(3), "f": np.float32(0.5), "b": np.bool_(True),
                        "s": np.str_("x"), "t": pd.Timestamp("2024-01-02T03:04:05"),
                        "d": np.datetime64("2024-01-02", "ns"), "nat": pd.NaT,
                        "bytes": b"hi", "arr": np.array([[1, 2]]), "obj": np.array(["a", None])})
    assert value == {"n": 3, "f": 0.5, "b": True, "s": "x", "t": "2024-01-02T03:04:05",
                     "d": "2024-01-02T00:00:00.000000000", "nat": None, "bytes": "aGk=\n",
                     "arr": [[1, 2]], "obj": ["a", None]}
    assert type(value["s"]) is str and type(value["f"]) is float


def test_a_score_is_a_finite_number() -> None:
    assert score_of(1) == 1.0 and score_of(0.5) == 0.5
    assert score_of(True) is None and score_of(math.nan) is None and score_of("1") is None
    assert score_of([0.5]) is None


def test_labels_are_kept_when_the_values_are_classes() -> None:
    rows = value_rows(np.array(["no", "yes"]), 2, labels=True)
    assert rows == (Prediction("no", None, "no"), Prediction("yes", None, "yes"))
    assert value_rows(np.array([0, 1]), 2, labels=True)[1] == Prediction(1, 1.0, 1)


def test_class_probabilities_give_value_label_and_probabilities() -> None:
    binary = class_rows(np.array([[0.8, 0.2], [0.5, 0.5]]), ("no", "yes"))
    assert binary[0] == Prediction(0.2, 0.2, "no", {"no": 0.8, "yes": 0.2})
    assert binary[1].label == "no"  # a tie goes to the first class, as argmax
    multi = class_rows(np.array([[0.1, 0.7, 0.2]]), (3, 1, 2))
    assert multi[0] == Prediction([0.1, 0.7, 0.2], None, 1, {"3": 0.1, "1": 0.7, "2": 0.2})
    with pytest.raises(ModelOutputError, match="shape"):
        class_rows(np.array([[0.1, 0.9]]), ("a", "b", "c"))


# --- the folded linear scorer ------------------------------------------------

FEATURES = ("a", "b")


def test_a_linear_scorer_built_positionally_takes_double_columns() -> None:
    scorer = LinearScorer("clf", "1", FEATURES, (0.5, -1.0), 0.25, True)
    assert scorer.inline and scorer.classes == (0, 1)
    assert scorer.schema == columns_schema(FEATURES)
    row = scorer.check_row({"a": 1, "b": 2.0, "other": "ignored"})
    assert row == {"a": 1.0, "b": 2.0}
    batch = scorer.predict_rows([row])
    p = scorer.predict_one([1.0, 2.0])
    assert batch.rows == (Prediction(p, p, 0, {"0": 1 - p, "1": p}),)
    assert batch.raw.shape == (1, 2) and batch.raw[0, 1] == p
    assert refused(scorer.schema, {"a": True, "b": 1.0}).field == "a"
    with pytest.raises(InputMismatch, match="finite"):
        scorer.check_row({"a": math.inf, "b": 1.0})


def test_a_logistic_scorer_labels_with_its_classes() -> None:
    scorer = LinearScorer("clf", "1", FEATURES, (1.0, 0.0), 0.0, True, ("no", "yes"))
    answers = scorer.predict_rows([{"a": 3.0, "b": 0.0}, {"a": -3.0, "b": 0.0}]).rows
    assert [a.label for a in answers] == ["yes", "no"]
    assert set(answers[0].probabilities or {}) == {"no", "yes"}


def test_a_linear_regression_answers_its_value() -> None:
    schema = InputSchema("columns", (ColumnSpec("a", "double"), ColumnSpec("n", "long")))
    scorer = LinearScorer("reg", "1", ("a", "n"), (2.0, 3.0), 1.0, False, input_schema=schema)
    row = scorer.check_row({"a": 0.5, "n": 2.0})
    assert row == {"a": 0.5, "n": 2}
    batch = scorer.predict_rows([row, row])
    assert batch.rows == (Prediction(8.0, 8.0),) * 2
    np.testing.assert_array_equal(batch.raw, [8.0, 8.0])
    assert scorer.predict_rows([]).raw.shape == (0,)
    assert "expected an integer (long), got 2.5" in refused(schema, {"a": 1, "n": 2.5}).message


def test_a_linear_scorer_refuses_a_schema_it_cannot_fold() -> None:
    with pytest.raises(ValueError, match="numeric columns"):
        LinearScorer("clf", "1", ("s",), (1.0,), 0.0, True, input_schema=one("string"))
    with pytest.raises(ValueError, match="2 weights for 1 features"):
        LinearScorer("clf", "1", ("a",), (1.0, 2.0), 0.0, True)


# --- the pyfunc scorer, over a stand-in for MLflow's PyFuncModel ---------------

class Custom:
    """A custom model's methods, as MLflow's PythonModel may declare them."""

    def with_context(self, context: Any, model_input: pd.DataFrame,
                     params: dict[str, Any] | None = None) -> list[Any]:
        return [context, params] * (len(model_input) // 2)

    def bare(self, model_input: pd.DataFrame) -> pd.Series:
        return model_input["n"] * 2


class StandIn:
    """What the scorer uses of ``mlflow.pyfunc.PyFuncModel``."""

    def __init__(self) -> None:
        self.seen: list[tuple[Any, Any]] = []
        self._model_impl = type("Impl", (), {"context": "the context"})()

    def predict(self, data: Any, params: dict[str, Any] | None = None) -> np.ndarray:
        self.seen.append((data, params))
        return np.asarray(data["n"], dtype=np.float64) / 2

    def unwrap_python_model(self) -> Custom:
        return Custom()


OPTIONAL_LONG = InputSchema("columns", (ColumnSpec("n", "long"),
                                        ColumnSpec("m", "long", required=False)))


def test_a_pyfunc_scorer_predicts_on_the_typed_frame_with_params() -> None:
    from models.registry import PyfuncScorer

    model = StandIn()
    scorer = PyfuncScorer("p", "1", model, OPTIONAL_LONG)
    assert not scorer.inline and scorer.feature_names == ("n", "m")
    rows = [scorer.check_row({"n": 3, "m": 1}), scorer.check_row({"n": 4.0, "m": 2})]
    batch = scorer.predict_rows(rows, {"k": 1})
    assert [a.value for a in batch.rows] == [1.5, 2.0]
    frame, params = model.seen[0]
    assert frame["n"].dtype == np.int64 and params == {"k": 1}
    # MLflow's enforcement refuses what pandas makes of a missing integer
    mismatch = refused(OPTIONAL_LONG, {"n": 1}, integer_nulls=False)
    with pytest.raises(InputMismatch) as caught:
        scorer.check_row({"n": 1})
    assert caught.value.field == mismatch.field == "m"
    numeric = PyfuncScorer("p", "1", StandIn(), columns_schema(("n",), "long"))
    np.testing.assert_array_equal(numeric.predict_batch(np.array([[2.0], [5.0]])), [1.0, 2.5])


def test_a_named_output_calls_the_custom_models_method_as_mlflow_calls_predict() -> None:
    from models.registry import PyfuncScorer, UnknownOutput

    rows = [{"n": 1, "m": 2}, {"n": 2, "m": 3}]
    with_context = PyfuncScorer("p", "1", StandIn(), OPTIONAL_LONG, "with_context")
    assert [a.value for a in with_context.predict_rows(rows, {"k": 2}).rows] == [
        "the context", {"k": 2}]
    bare = PyfuncScorer("p", "1", StandIn(), OPTIONAL_LONG, "bare")
    assert [a.value for a in bare.predict_rows(rows).rows] == [2, 4]
    with pytest.raises(UnknownOutput, match=r"it has bare, with_context"):
        PyfuncScorer("p", "1", StandIn(), OPTIONAL_LONG, "missing")
