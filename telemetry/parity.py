"""Parity between paths that should agree: shadow vs primary, online vs offline,
live features vs the training reference. Pure numpy/scipy, no I/O.

- :func:`agreement` compares two score vectors (shadow vs primary), for a
  classifier as label agreement plus score-difference quantiles, for a
  regressor as absolute and relative difference quantiles.
- :func:`replay_parity` compares logged online predictions with the offline
  model's predictions on the logged features; :func:`output_diff` measures
  how far apart two whole answers (JSON values) are, for outputs that are not
  one number.
- :func:`drift` computes PSI and a two-sample KS test per feature.

Every result is a frozen pydantic model; degenerate input (no rows) gives an
explicit ``n == 0`` result, never a NaN in a report.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field
from scipy import stats

from telemetry.verdict import Verdict

QUANTILES = (0.5, 0.9, 0.99)


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True)


class Agreement(_Frozen):
    """Shadow vs primary on the same requests."""

    n: int
    kind: str  # "classifier" or "regressor"
    label_agreement: float | None = None
    abs_diff_quantiles: dict[str, float] = Field(default_factory=dict)
    rel_diff_quantiles: dict[str, float] = Field(default_factory=dict)
    max_abs_diff: float | None = None


def _quantiles(values: npt.NDArray[np.float64]) -> dict[str, float]:
    if values.size == 0:
        return {}
    # Interpolating towards an infinite difference (a replayed answer of another
    # shape) is undefined; with one present, each quantile is an observed value.
    method: Literal["linear", "higher"] = (
        "linear" if np.isfinite(values).all() else "higher")
    return {f"p{round(q * 100):d}": float(np.quantile(values, q, method=method))
            for q in QUANTILES}


def agreement(
    primary: npt.ArrayLike, shadow: npt.ArrayLike, kind: str = "classifier",
    threshold: float = 0.5,
) -> Agreement:
    """Agreement of two aligned score vectors."""
    p = np.asarray(primary, dtype=np.float64)
    s = np.asarray(shadow, dtype=np.float64)
    if p.shape != s.shape:
        raise ValueError(f"primary and shadow differ in length: {p.shape} vs {s.shape}")
    if p.size == 0:
        return Agreement(n=0, kind=kind)
    diff = np.abs(s - p)
    result = {"n": int(p.size), "kind": kind, "abs_diff_quantiles": _quantiles(diff),
              "max_abs_diff": float(diff.max())}
    if kind == "classifier":
        result["label_agreement"] = float(np.mean((p >= threshold) == (s >= threshold)))
    else:
        scale = np.maximum(np.abs(p), 1e-12)
        result["rel_diff_quantiles"] = _quantiles(diff / scale)
    return Agreement.model_validate(result)


def agreement_by_segment(
    primary: npt.ArrayLike, shadow: npt.ArrayLike, segments: Sequence[str],
    kind: str = "classifier",
) -> dict[str, Agreement]:
    """:func:`agreement` per segment value (e.g. per arm or per country)."""
    p = np.asarray(primary, dtype=np.float64)
    s = np.asarray(shadow, dtype=np.float64)
    seg = np.asarray(segments, dtype=object)
    return {str(v): agreement(p[seg == v], s[seg == v], kind) for v in sorted(set(seg.tolist()))}


class ReplayParity(_Frozen):
    """Logged online predictions vs the offline model on the logged features.

    ``n`` rows were compared: on their scores, or (``outputs_compared`` of
    them) on their whole answers when the answer is not one number.
    ``skipped`` rows could not be compared (no score and no answer logged, or
    an offline path that returns only scores).
    """

    n: int
    tolerance: float
    max_abs_diff: float | None
    abs_diff_quantiles: dict[str, float]
    over_tolerance: int
    examples: list[str]
    verdict: Verdict
    outputs_compared: int = 0
    skipped: int = 0


def replay_parity(
    online: npt.ArrayLike, offline: npt.ArrayLike, request_ids: Sequence[str],
    tolerance: float = 1e-6, max_examples: int = 5, skipped: int = 0,
) -> ReplayParity:
    """Compare logged online predictions with offline ones; FAIL if any row
    differs by more than ``tolerance``."""
    on = np.asarray(online, dtype=np.float64)
    off = np.asarray(offline, dtype=np.float64)
    if on.shape != off.shape:
        raise ValueError(f"online and offline differ in length: {on.shape} vs {off.shape}")
    # The same infinity, or NaN on both paths, is agreement, not a NaN difference.
    same = (on == off) | (np.isnan(on) & np.isnan(off))
    with np.errstate(invalid="ignore"):
        diff = np.where(same, 0.0, np.abs(on - off))
    return replay_parity_from_diffs(diff, request_ids, tolerance, max_examples,
                                    skipped=skipped)


def replay_parity_from_diffs(
    diffs: npt.ArrayLike, request_ids: Sequence[str], tolerance: float = 1e-6,
    max_examples: int = 5, outputs_compared: int = 0, skipped: int = 0,
) -> ReplayParity:
    """:func:`replay_parity` from each row's difference already measured (an
    infinite one for answers that do not even have the same shape)."""
    diff = np.asarray(diffs, dtype=np.float64)
    if diff.size == 0:
        return ReplayParity(n=0, tolerance=tolerance, max_abs_diff=None, abs_diff_quantiles={},
                            over_tolerance=0, examples=[],
                            verdict=Verdict.INSUFFICIENT_DATA, skipped=skipped)
    # NaN (one side NaN) is never within tolerance: count it over, report it as inf.
    diff = np.where(np.isnan(diff), np.inf, diff)
    over = np.nonzero(diff > tolerance)[0]
    worst = over[np.argsort(-diff[over], kind="stable")][:max_examples]
    return ReplayParity(
        n=int(diff.size), tolerance=tolerance, max_abs_diff=float(diff.max()),
        abs_diff_quantiles=_quantiles(diff), over_tolerance=int(over.size),
        examples=[str(request_ids[i]) for i in worst],
        verdict=Verdict.FAIL if over.size else Verdict.PASS,
        outputs_compared=outputs_compared, skipped=skipped,
    )


def output_diff(online: Any, offline: Any) -> float:
    """How far apart two answers (JSON values) are: the largest absolute
    difference between numbers in the same place, 0 when equal, infinite when
    they differ in anything else (shape, keys, a label, a string).

    Booleans and strings compare exactly; ints and floats as numbers, so
    ``1`` and ``1.0`` agree.
    """
    if isinstance(online, bool) or isinstance(offline, bool):
        return 0.0 if online is offline else math.inf
    if isinstance(online, int | float) and isinstance(offline, int | float):
        if online == offline:
            return 0.0
        if math.isnan(online) or math.isnan(offline):
            return 0.0 if math.isnan(online) and math.isnan(offline) else math.inf
        return abs(float(online) - float(offline))
    if isinstance(online, Mapping) and isinstance(offline, Mapping):
        if set(online) != set(offline):
            return math.inf
        return max((output_diff(online[k], offline[k]) for k in online), default=0.0)
    if isinstance(online, list | tuple) and isinstance(offline, list | tuple):
        if len(online) != len(offline):
            return math.inf
        return max((output_diff(a, b) for a, b in zip(online, offline, strict=True)),
                   default=0.0)
    return 0.0 if online == offline else math.inf


class FeatureDrift(_Frozen):
    feature: str
    psi: float
    ks_statistic: float
    ks_p_value: float
    n_reference: int
    n_live: int
    drifted: bool


def psi(reference: npt.ArrayLike, live: npt.ArrayLike, bins: int = 10) -> float:
    """Population stability index over the reference's quantile bins.

    Bins are the reference's deciles (open at both ends), and empty bins get
    a floor of 1e-4 so the log never sees zero.
    """
    ref = np.asarray(reference, dtype=np.float64)
    cur = np.asarray(live, dtype=np.float64)
    edges = np.unique(np.quantile(ref, np.linspace(0, 1, bins + 1)[1:-1]))
    ref_share = np.bincount(np.searchsorted(edges, ref, side="right"),
                            minlength=edges.size + 1) / ref.size
    cur_share = np.bincount(np.searchsorted(edges, cur, side="right"),
                            minlength=edges.size + 1) / cur.size
    ref_share = np.maximum(ref_share, 1e-4)
    cur_share = np.maximum(cur_share, 1e-4)
    return float(np.sum((cur_share - ref_share) * np.log(cur_share / ref_share)))


def drift(
    reference: Mapping[str, npt.ArrayLike], live: Mapping[str, npt.ArrayLike],
    psi_threshold: float = 0.2, ks_alpha: float = 0.001,
) -> list[FeatureDrift]:
    """PSI and two-sample KS per feature present in both; a feature drifts when
    its PSI exceeds ``psi_threshold`` or its KS p-value is below ``ks_alpha``."""
    out = []
    for feature in sorted(set(reference) & set(live)):
        ref = np.asarray(reference[feature], dtype=np.float64)
        cur = np.asarray(live[feature], dtype=np.float64)
        if ref.size < 2 or cur.size < 2:
            continue
        value = psi(ref, cur)
        ks = stats.ks_2samp(ref, cur)
        out.append(FeatureDrift(
            feature=feature, psi=value, ks_statistic=float(ks.statistic),
            ks_p_value=float(ks.pvalue), n_reference=int(ref.size), n_live=int(cur.size),
            drifted=bool(value > psi_threshold or ks.pvalue < ks_alpha),
        ))
    return out
