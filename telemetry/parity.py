"""Parity between paths that should agree: shadow vs primary, online vs offline,
live features vs the training reference. Pure numpy/scipy, no I/O.

- :func:`agreement` compares two score vectors (shadow vs primary), for a
  classifier as label agreement plus score-difference quantiles, for a
  regressor as absolute and relative difference quantiles.
- :func:`replay_parity` compares logged online predictions with the offline
  model's predictions on the logged features.
- :func:`drift` computes PSI and a two-sample KS test per feature.

Every result is a frozen pydantic model; degenerate input (no rows) gives an
explicit ``n == 0`` result, never a NaN in a report.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

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
    return {f"p{round(q * 100):d}": float(np.quantile(values, q)) for q in QUANTILES}


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
    """Logged online predictions vs the offline model on the logged features."""

    n: int
    tolerance: float
    max_abs_diff: float | None
    abs_diff_quantiles: dict[str, float]
    over_tolerance: int
    examples: list[str]
    verdict: Verdict


def replay_parity(
    online: npt.ArrayLike, offline: npt.ArrayLike, request_ids: Sequence[str],
    tolerance: float = 1e-6, max_examples: int = 5,
) -> ReplayParity:
    """Compare logged online predictions with offline ones; FAIL if any row
    differs by more than ``tolerance``."""
    on = np.asarray(online, dtype=np.float64)
    off = np.asarray(offline, dtype=np.float64)
    if on.size == 0:
        return ReplayParity(n=0, tolerance=tolerance, max_abs_diff=None, abs_diff_quantiles={},
                            over_tolerance=0, examples=[],
                            verdict=Verdict.INSUFFICIENT_DATA)
    diff = np.abs(on - off)
    over = np.nonzero(diff > tolerance)[0]
    worst = over[np.argsort(-diff[over])][:max_examples]
    return ReplayParity(
        n=int(on.size), tolerance=tolerance, max_abs_diff=float(diff.max()),
        abs_diff_quantiles=_quantiles(diff), over_tolerance=int(over.size),
        examples=[str(request_ids[i]) for i in worst],
        verdict=Verdict.FAIL if over.size else Verdict.PASS,
    )


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
