from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy import stats

from models.inputs import ColumnSpec, InputMismatch, InputSchema
from models.outputs import Prediction, ScoredBatch
from models.registry import LinearScorer
from telemetry import parity_report
from telemetry.decision_log import DecisionLogWriter, DecisionRecord
from telemetry.parity import (
    agreement,
    agreement_by_segment,
    drift,
    output_diff,
    psi,
    replay_parity,
    replay_parity_from_diffs,
)
from telemetry.parity_report import OfflineModel
from telemetry.verdict import Verdict


def test_agreement_for_a_classifier() -> None:
    primary = np.array([0.1, 0.6, 0.7, 0.4])
    shadow = np.array([0.2, 0.4, 0.75, 0.45])
    result = agreement(primary, shadow)
    assert result.n == 4 and result.label_agreement == 0.75
    assert result.max_abs_diff == pytest.approx(0.2)
    assert result.abs_diff_quantiles["p50"] == pytest.approx(np.quantile([0.1, 0.2, 0.05, 0.05],
                                                                         0.5))


def test_agreement_for_a_regressor_reports_relative_differences() -> None:
    result = agreement([10.0, 20.0], [11.0, 20.0], kind="regressor")
    assert result.label_agreement is None
    assert result.rel_diff_quantiles["p99"] == pytest.approx(np.quantile([0.1, 0.0], 0.99))


def test_agreement_on_nothing_is_explicit_not_nan() -> None:
    result = agreement([], [])
    assert result.n == 0 and result.label_agreement is None and result.max_abs_diff is None


def test_agreement_by_segment() -> None:
    out = agreement_by_segment([0.9, 0.9, 0.1], [0.9, 0.1, 0.1], ["a", "a", "b"])
    assert out["a"].label_agreement == 0.5 and out["b"].label_agreement == 1.0


def test_replay_parity_finds_the_skewed_rows() -> None:
    online = np.array([0.5, 0.6, 0.7, 0.8])
    offline = np.array([0.5, 0.6, 0.9, 0.8 + 1e-9])
    result = replay_parity(online, offline, ["a", "b", "c", "d"], tolerance=1e-6)
    assert result.verdict == Verdict.FAIL
    assert result.over_tolerance == 1 and result.examples == ["c"]
    assert result.max_abs_diff == pytest.approx(0.2)
    assert replay_parity(online, online, list("abcd")).verdict == Verdict.PASS
    assert replay_parity([], [], []).verdict == Verdict.INSUFFICIENT_DATA


def test_psi_is_zero_for_the_same_distribution_and_grows_with_a_shift() -> None:
    rng = np.random.default_rng(0)
    ref = rng.normal(size=20_000)
    assert psi(ref, rng.normal(size=20_000)) < 0.01
    assert psi(ref, rng.normal(loc=1.0, size=20_000)) > 0.5


def test_psi_matches_a_direct_computation() -> None:
    rng = np.random.default_rng(1)
    ref, cur = rng.normal(size=5000), rng.normal(0.3, 1.2, size=3000)
    edges = np.quantile(ref, np.linspace(0, 1, 11)[1:-1])
    r = np.histogram(ref, bins=[-np.inf, *edges, np.inf])[0] / ref.size
    c = np.histogram(cur, bins=[-np.inf, *edges, np.inf])[0] / cur.size
    assert psi(ref, cur) == pytest.approx(float(np.sum((c - r) * np.log(c / r))), rel=1e-3)


def test_drift_flags_only_the_shifted_feature_and_agrees_with_scipy_ks() -> None:
    rng = np.random.default_rng(2)
    reference = {"a": rng.normal(size=5000), "b": rng.normal(size=5000)}
    live = {"a": rng.normal(size=2000), "b": rng.normal(loc=0.8, size=2000)}
    result = {d.feature: d for d in drift(reference, live)}
    assert not result["a"].drifted and result["b"].drifted
    ks = stats.ks_2samp(reference["b"], live["b"])
    assert result["b"].ks_statistic == pytest.approx(ks.statistic, rel=1e-12)
    assert result["b"].ks_p_value == pytest.approx(ks.pvalue, rel=1e-9)


def test_replay_parity_counts_a_nan_on_one_side_not_on_both() -> None:
    online = np.array([0.5, np.nan, np.nan, np.inf])
    offline = np.array([0.5, np.nan, 0.3, np.inf])
    result = replay_parity(online, offline, ["a", "b", "c", "d"], skipped=2)
    assert result.over_tolerance == 1 and result.examples == ["c"]
    assert result.max_abs_diff == np.inf and result.skipped == 2
    with pytest.raises(ValueError, match="differ in length"):
        replay_parity([0.1], [0.1, 0.2], ["a"])


def test_output_diff_is_numeric_where_shapes_agree_and_infinite_elsewhere() -> None:
    logged = {"value": [0.2, 0.5, 0.3], "label": "b", "probabilities": {"a": 0.2, "b": 0.5}}
    close = {"value": [0.2, 0.5 + 1e-9, 0.3], "label": "b",
             "probabilities": {"a": 0.2 - 2e-9, "b": 0.5}}
    assert output_diff(logged, close) == pytest.approx(2e-9)
    assert output_diff(logged, logged) == 0.0
    assert output_diff(logged, {**close, "label": "a"}) == np.inf
    assert output_diff(logged, {**close, "value": [0.2, 0.5]}) == np.inf
    assert output_diff(logged, {"value": logged["value"], "label": "b"}) == np.inf
    assert output_diff(1, 1.0) == 0.0 and output_diff(True, 1) == np.inf
    assert output_diff(float("nan"), float("nan")) == 0.0
    assert output_diff(float("nan"), 0.0) == np.inf
    assert output_diff(None, None) == 0.0 and output_diff("x", "y") == np.inf


def test_replay_parity_from_diffs_reports_what_was_compared_how() -> None:
    result = replay_parity_from_diffs([0.0, np.inf, 1e-9], ["a", "b", "c"], tolerance=1e-6,
                                      outputs_compared=1, skipped=4)
    assert result.verdict == Verdict.FAIL and result.examples == ["b"]
    assert result.n == 3 and result.outputs_compared == 1 and result.skipped == 4
    nothing = replay_parity_from_diffs([], [], skipped=3)
    assert nothing.verdict == Verdict.INSUFFICIENT_DATA and nothing.skipped == 3


# --- replay from the decision log ----------------------------------------------------


class TypedModel:
    """A version over typed columns, as the serving loader gives it: checks rows
    and scores them (``skew`` shifts its scores, ``classes=3`` answers with
    class probabilities and no score)."""

    name, version, inline = "clf", "3", False
    schema = InputSchema("columns", (ColumnSpec("age", "long"), ColumnSpec("country", "string")))

    def __init__(self, skew: float = 0.0, classes: int = 2) -> None:
        self.skew = skew
        self.classes = classes
        self.batches: list[int] = []

    def check_row(self, row: Mapping[str, Any]) -> dict[str, Any]:
        age = row.get("age")
        if isinstance(age, bool) or not isinstance(age, int):
            raise InputMismatch("age", f"expected an integer (long), got {age!r}")
        if not isinstance(row.get("country"), str):
            raise InputMismatch("country", "expected a string")
        return {"age": age, "country": row["country"]}

    def answer(self, row: Mapping[str, Any]) -> Prediction:
        p = row["age"] / 100 + (0.1 if row["country"] == "FR" else 0.0) + self.skew
        if self.classes == 2:
            return Prediction(p, p, int(p >= 0.5), {"0": 1 - p, "1": p})
        probs = [p, (1 - p) / 2, (1 - p) / 2]
        return Prediction(probs, None, "a", dict(zip("abc", probs, strict=True)))

    def predict_rows(self, rows: Sequence[Mapping[str, Any]],
                     params: Mapping[str, Any] | None = None) -> ScoredBatch:
        self.batches.append(len(rows))
        return ScoredBatch(tuple(self.answer(r) for r in rows), None)


def _typed_log(path: Path, model: TypedModel, rows: list[dict[str, Any]]) -> None:
    writer = DecisionLogWriter(path, "w", batch_rows=100_000, flush_interval_s=3600)
    for i, row in enumerate(rows):
        answer = model.answer(row)
        writer.append(DecisionRecord(
            f"r{i}", f"u{i}", "user_id", None, None, "default", model.name, model.version,
            "primary", time.time(), row, answer.score, 1.0, "ok", None, None, answer, "body"))
    writer.close()


ROWS = [{"age": 20 + i, "country": "FR" if i % 2 else "DE"} for i in range(30)]


@pytest.mark.parametrize("classes", [2, 3])
def test_typed_rows_replay_through_the_serving_loader(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, classes: int) -> None:
    """Rows logged as sent (ints and strings) replay row by row; a binary
    classifier compares on its score, a multi-class one on its whole output."""
    monkeypatch.setattr(parity_report, "REPLAY_CHUNK_ROWS", 8)
    _typed_log(tmp_path, TypedModel(classes=classes), ROWS)
    table = parity_report.load_log(tmp_path)
    replayed = TypedModel(classes=classes)
    model = OfflineModel("clf", "3", ("age", "country"), None, None, replayed, "serving loader")
    result = parity_report.run_replay(table, model, 1e-9)
    assert result.verdict == Verdict.PASS and result.n == 30 and result.skipped == 0
    assert result.outputs_compared == (30 if classes == 3 else 0)
    assert replayed.batches == [8, 8, 8, 6]

    skewed = OfflineModel("clf", "3", ("age", "country"), None, None,
                          TypedModel(skew=0.01, classes=classes), "serving loader")
    result = parity_report.run_replay(table, skewed, 1e-6)
    assert result.verdict == Verdict.FAIL and result.over_tolerance == 30
    assert result.max_abs_diff == pytest.approx(0.01)


def test_a_row_the_replay_refuses_fails_parity_and_unscored_rows_are_skipped(
        tmp_path: Path) -> None:
    writer = DecisionLogWriter(tmp_path, "w", batch_rows=100_000, flush_interval_s=3600)
    model = TypedModel()
    for i, row in enumerate([*ROWS[:3], {"age": 5.0, "country": "FR"}]):
        answer = model.answer({**row, "age": int(row["age"])})
        writer.append(DecisionRecord(
            f"r{i}", "u", "user_id", None, None, "default", "clf", "3", "primary",
            time.time(), row, answer.score, 1.0, "ok", None))
    # answered with neither a score nor an output (a log from before outputs were kept)
    writer.append(DecisionRecord("r9", "u", "user_id", None, None, "default", "clf", "3",
                                 "primary", time.time(), ROWS[4], None, 1.0, "ok", None))
    writer.close()
    offline = OfflineModel("clf", "3", ("age", "country"), None, None, TypedModel())
    result = parity_report.run_replay(parity_report.load_log(tmp_path), offline, 1e-9)
    # age 5.0 was logged as a float, which the replayed signature (long) refuses
    assert result.n == 4 and result.over_tolerance == 1 and result.examples == ["r3"]
    assert result.skipped == 1 and result.verdict == Verdict.FAIL


def test_numeric_replay_skips_rows_without_a_score(tmp_path: Path) -> None:
    linear = LinearScorer("clf", "1", ("f0", "f1"), (0.5, -0.25), 0.1, True)
    writer = DecisionLogWriter(tmp_path, "w", batch_rows=100_000, flush_interval_s=3600)
    for i in range(6):
        x = {"f0": float(i), "f1": i - 2.5}
        score = linear.predict_one([x["f0"], x["f1"]]) if i % 3 else None
        writer.append(DecisionRecord(
            f"r{i}", "u", "user_id", None, None, "default", "clf", "1", "primary",
            time.time(), x, score, 1.0, "ok", None))
    writer.close()
    model = OfflineModel("clf", "1", linear.feature_names, linear.predict_batch, None)
    result = parity_report.run_replay(parity_report.load_log(tmp_path), model, 1e-12)
    assert result.verdict == Verdict.PASS and result.n == 4 and result.skipped == 2


class FakeRegistry:
    """The registry calls replay makes; ``load_offline`` refuses typed signatures."""

    def __init__(self, typed: bool, broken: bool = False) -> None:
        self.typed = typed
        self.broken = broken

    def resolve_uri(self, uri: str) -> tuple[str, str]:
        return "clf", "3"

    def load_offline(self, name: str, version: str) -> Any:
        if self.broken:
            raise OSError("the artifact store cannot be read")
        if self.typed:
            raise ValueError("not replayable: the signature is not all numbers; "
                             "country is a string")
        return LinearScorer(name, version, ("f0",), (1.0,), 0.0, False)

    def load(self, name: str, version: str) -> Any:
        return TypedModel()

    def reference_sample(self, name: str, version: str) -> dict[str, Any]:
        return {}


def test_load_offline_model_falls_back_to_the_serving_loader_for_typed_signatures() -> None:
    typed = parity_report.load_offline_model("models:/clf/3", "unused",
                                             FakeRegistry(True))  # type: ignore[arg-type]
    assert typed.predict is None and isinstance(typed.scorer, TypedModel)
    assert typed.feature_names == ("age", "country")
    assert typed.path.startswith("serving loader") and "country is a string" in typed.path
    numeric = parity_report.load_offline_model("models:/clf/3", "unused",
                                               FakeRegistry(False))  # type: ignore[arg-type]
    assert numeric.predict is not None and numeric.scorer is None and numeric.path == "offline"
    with pytest.raises(OSError, match="cannot be read"):  # a failure, not a typed model
        parity_report.load_offline_model("models:/clf/3", "unused",
                                         FakeRegistry(True, broken=True))  # type: ignore[arg-type]


def test_shadow_agreement_pairs_only_rows_scored_on_both_sides(tmp_path: Path) -> None:
    writer = DecisionLogWriter(tmp_path, "w", batch_rows=100_000, flush_interval_s=3600)
    for i, (primary, shadow) in enumerate([(0.2, 0.3), (None, 0.4), (0.6, None), (0.9, 0.8)]):
        for role, version, score in (("primary", "1", primary), ("shadow", "2", shadow)):
            writer.append(DecisionRecord(
                f"r{i}", "u", "user_id", None, None, "default", "clf", version, role,
                time.time(), {"f0": 1.0}, score, 1.0, "ok", None))
    writer.close()
    [pairs] = parity_report.shadow_pairs(parity_report.load_log(tmp_path))
    assert pairs.primary.tolist() == [0.2, 0.9] and pairs.shadow.tolist() == [0.3, 0.8]
