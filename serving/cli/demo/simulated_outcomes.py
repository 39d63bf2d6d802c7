"""Outcome events with a known true effect, for the demo, tests and benchmarks.

Given who was exposed to which arm (read back from a real decision log), draw
for each unit a pre-period and an in-experiment value of two metrics:

- ``converted`` (binary): probability ``base_rate`` in control, plus
  ``conversion_lift`` (absolute) in every treatment arm. A unit that converted
  in the pre-period is more likely to convert again, so CUPED has something to
  work with.
- ``revenue`` (mean): a per-unit propensity shared by both periods (correlation
  about 0.7 between pre-period and in-experiment revenue), plus
  ``revenue_lift`` in treatment.

Only units with a non-zero value get an event, as a real event stream would.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

MICROS = 1_000_000


@dataclass(frozen=True)
class TrueEffects:
    base_rate: float = 0.10
    conversion_lift: float = 0.02
    revenue_mean: float = 10.0
    revenue_lift: float = 0.5
    revenue_sd: float = 4.0


def simulate_outcomes(
    unit_ids: pa.Array,
    treated: np.ndarray,
    exposed_at_us: np.ndarray,
    effects: TrueEffects = TrueEffects(),  # frozen, so one shared default is safe
    seed: int = 7,
    experiment_id: str | None = None,
    delay_s: float = 60.0,
) -> pa.Table:
    """Outcome rows (``unit_id, metric, value, timestamp, experiment_id``) for
    exposed units; ``treated`` is a boolean per unit. In-experiment events come
    up to ``delay_s`` after exposure, pre-period events up to a week before."""
    rng = np.random.default_rng(seed)
    n = len(unit_ids)
    treated = np.asarray(treated, dtype=bool)
    propensity = rng.normal(0.0, 1.0, n)
    # conversion: a latent propensity shared by both periods
    p_pre = np.clip(effects.base_rate * np.exp(1.2 * propensity - 0.72), 0, 1)
    p_post = np.clip(p_pre + effects.conversion_lift * treated, 0, 1)
    converted_pre = rng.random(n) < p_pre
    converted = rng.random(n) < p_post
    revenue_pre = np.maximum(effects.revenue_mean + effects.revenue_sd * (
        0.8 * propensity + 0.6 * rng.normal(0.0, 1.0, n)), 0.0)
    revenue = np.maximum(effects.revenue_mean + effects.revenue_lift * treated
                         + effects.revenue_sd * (0.8 * propensity + 0.6 * rng.normal(0.0, 1.0, n)),
                         0.0)
    day = 86_400 * MICROS
    pre_at = exposed_at_us - rng.integers(1, 7 * day, n)
    post_at = exposed_at_us + rng.integers(0, max(1, int(delay_s * MICROS)), n)
    parts = []
    for mask, metric, values, at in (
        (converted_pre, "converted", np.ones(n), pre_at),
        (converted, "converted", np.ones(n), post_at),
        (revenue_pre > 0, "revenue", revenue_pre, pre_at),
        (revenue > 0, "revenue", revenue, post_at),
    ):
        rows = np.flatnonzero(mask)
        parts.append(pa.table({
            "unit_id": unit_ids.take(pa.array(rows)),
            "metric": pa.repeat(pa.scalar(metric), len(rows)),
            "value": pa.array(values[rows], type=pa.float64()),
            "timestamp": pa.array(at[rows], type=pa.int64()).cast(pa.timestamp("us", tz="UTC")),
            "experiment_id": pa.repeat(pa.scalar(experiment_id, type=pa.string()), len(rows)),
        }))
    return pa.concat_tables(parts)
