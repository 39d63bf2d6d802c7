from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from telemetry.parity import (
    agreement,
    agreement_by_segment,
    drift,
    psi,
    replay_parity,
)
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
