"""Online feature drift: each replica keeps a window of recent request features
per model version and, off the request path, compares it with the training
reference the version was logged with (PSI and KS per feature), exporting
``rampart_feature_psi`` and ``rampart_feature_ks_pvalue`` gauges.

Requests carry typed values; only numbers (int and float, not bool) are
compared. A string, bool, null or list in a feature is left out of that
feature's window, never an error, and the request path stays one deque
append: the sorting out happens in :meth:`DriftMonitor.evaluate`.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from telemetry.metrics import DriftMetrics
from telemetry.parity import FeatureDrift, drift

Key = tuple[str, str]


class DriftMonitor:
    def __init__(self, metrics: DriftMetrics, window: int = 2_000, min_rows: int = 200,
                 psi_threshold: float = 0.2, ks_alpha: float = 0.001) -> None:
        self.metrics = metrics
        self.window = window
        self.min_rows = min_rows
        self.psi_threshold = psi_threshold
        self.ks_alpha = ks_alpha
        self._references: dict[Key, dict[str, npt.NDArray[np.float64]]] = {}
        self._recent: dict[Key, deque[Mapping[str, Any]]] = {}
        self._lock = threading.Lock()

    def set_reference(self, key: Key, reference: Mapping[str, npt.NDArray[np.float64]]) -> None:
        with self._lock:
            self._references[key] = dict(reference)
            self._recent.setdefault(key, deque(maxlen=self.window))

    def observe(self, key: Key, features: Mapping[str, Any]) -> None:
        """Hot path: one deque append for versions that have a reference."""
        recent = self._recent.get(key)
        if recent is not None:
            recent.append(features)

    def evaluate(self) -> dict[Key, list[FeatureDrift]]:
        """Drift of every version with enough recent rows; sets the gauges."""
        with self._lock:
            work = [(k, self._references[k], list(self._recent[k])) for k in self._references]
        out: dict[Key, list[FeatureDrift]] = {}
        for key, reference, rows in work:
            if len(rows) < self.min_rows:
                continue
            live = {name: numeric_values(rows, name) for name in reference}
            results = drift(reference, live, self.psi_threshold, self.ks_alpha)
            for result in results:
                self.metrics.set(key[0], key[1], result)
            out[key] = results
        return out


def numeric_values(rows: list[Mapping[str, Any]], name: str) -> npt.NDArray[np.float64]:
    """The numbers (int or float, not bool; NaN left out) rows hold under ``name``."""
    values = np.fromiter(
        (v for row in rows if isinstance(v := row.get(name), int | float | np.number)
         and not isinstance(v, bool | np.bool_)), np.float64)
    return values[~np.isnan(values)]
