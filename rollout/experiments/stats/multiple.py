"""Multiple-comparison adjustment of p-values (many metrics or many arms)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import numpy.typing as npt

AdjustMethod = Literal["bonferroni", "holm", "bh"]


def adjust_p_values(
    p_values: Sequence[float] | npt.NDArray[np.floating], method: AdjustMethod
) -> npt.NDArray[np.float64]:
    """Adjusted p-values, in the input's order and shape, capped at 1.

    ``method``:

    ``"bonferroni"``
        ``min(1, m·p)``; controls the family-wise error rate under any
        dependence.
    ``"holm"``
        step-down Holm: with ascending ``p_(1) ≤ … ≤ p_(m)``, the running
        maximum of ``(m − i + 1)·p_(i)``; controls the family-wise error rate
        and is never larger than Bonferroni.
    ``"bh"``
        Benjamini–Hochberg step-up: the running minimum from the largest
        p-value down of ``m·p_(i)/i``; controls the false discovery rate for
        independent or positively dependent tests.

    These equal ``statsmodels.stats.multitest.multipletests(p, method=...)``
    with ``"bonferroni"``, ``"holm"`` and ``"fdr_bh"``.

    NaN p-values (a metric whose test could not run) stay NaN and are not
    counted in ``m``: a comparison that produced no p-value cannot produce a
    false positive, so it should not dilute the others' budget. Ties keep a
    stable order, which only affects which of equal p-values is "first" and
    not the adjusted values.

    Raises ``ValueError`` for an unknown method or p-values outside [0, 1];
    those are caller bugs, not data conditions.
    """
    if method not in ("bonferroni", "holm", "bh"):
        raise ValueError(f"unknown adjustment method {method!r}; use bonferroni, holm or bh")
    p = np.asarray(p_values, dtype=np.float64)
    flat = p.ravel()
    present = ~np.isnan(flat)
    values = flat[present]
    if np.any((values < 0.0) | (values > 1.0)):
        raise ValueError("p-values must lie in [0, 1] (NaN allowed)")

    out = np.full(flat.shape, np.nan, dtype=np.float64)
    m = values.size
    if m == 0:
        return out.reshape(p.shape)

    if method == "bonferroni":
        adjusted = values * m
    else:
        order = np.argsort(values, kind="stable")
        ranked = values[order]
        rank = np.arange(1, m + 1, dtype=np.float64)
        if method == "holm":
            # Step-down: a hypothesis is rejected only if all smaller p-values
            # are, hence the running maximum.
            stepped = np.maximum.accumulate(ranked * (m - rank + 1.0))
        else:
            # Step-up: rejecting p_(i) rejects every smaller one too, hence the
            # running minimum taken from the largest p-value downwards.
            stepped = np.minimum.accumulate((ranked * m / rank)[::-1])[::-1]
        adjusted = np.empty(m, dtype=np.float64)
        adjusted[order] = stepped
    out[present] = np.minimum(adjusted, 1.0)
    return out.reshape(p.shape)
