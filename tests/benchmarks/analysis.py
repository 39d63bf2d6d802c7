"""Analysis benchmark: Rampart's experiment analysis end to end from Parquet, against the
same numbers computed the straightforward way with pandas and statsmodels, in one run.

    .venv/bin/python tests/benchmarks/analysis.py [--decisions 10000000] [--repeat 1]
                                                  [--keep DIR] [--seed 1]

The data (generated first, timed separately, in neither figure):

- a decision log in the gateway's layout (``date=YYYY-MM-DD/experiment=<id>/part-*.parquet``,
  zstd, the real :data:`DECISION_SCHEMA` with a one-entry feature map and a platform
  context) with ``--decisions`` primary decisions of experiment ``exp`` (control /
  treatment, 50/50 per unit). Units decide one or more times, geometric with mean 2.5
  (about 4,000,000 units at 10,000,000 decisions); first decisions are spread over 28
  days and ``as_of`` falls half a day before the last, so some units are not exposed
  yet. 0.2% of repeat decisions are in the other arm (a ramp moved the unit: counted in
  the arm of its first decision). On top, not counted in ``--decisions``: shadow rows
  for 5% of the decisions (``role=shadow``) and 3% decisions outside any experiment.
- outcome events in the real :data:`OUTCOME_LOG_SCHEMA` (``date=YYYY-MM-DD/part-0.parquet``)
  from :func:`rollout.simulation.simulate_outcomes` (``converted`` and ``revenue`` with a
  pre-period, untagged), plus events each definition must drop or keep: revenue after
  the outcome window, conversions before the pre-period, events exactly on both window
  edges, revenue refunds (negative values), events tagged with another experiment
  (dropped) and with this one (kept), a ``sessions`` metric the plan does not read, and
  events of units never exposed.

Rampart: :func:`serving.cli.analyze.run_analysis` with primary ``converted`` (binary),
secondary ``revenue`` (mean), CUPED on, sequential ``msprt`` on the primary (the mixture
SPRT at :data:`SEQUENTIAL_LOOKS` = 5 times evenly spaced between the first exposure and
``as_of``, and at ``as_of``: six looks, each on the CUPED estimate as the logs stood then;
τ² = MDE², the relative MDE times the baseline), no segments, no timeline. Its
pre-registration is recorded in a scratch directory made for the run, so that data kept
from a run under another plan can be reused.

Straightforward: ``pandas.read_parquet`` of both logs, filters, first exposure per unit,
a merge of the outcomes on ``unit_id``, window filters and per-unit sums in pandas, then
``scipy.stats.chisquare`` (SRM), statsmodels' ``proportions_ztest`` /
``confint_proportions_2indep`` (binary), ``ttest_ind`` / ``CompareMeans`` (mean, Welch)
and CUPED with per-arm slopes (statsmodels' OLS of y on 1 + (x − x̄) in each arm, the
documented variance, z or Welch–Satterthwaite t inference). The mSPRT of the primary:
each earlier look's units (exposed by then) and conversions (known by then: happened and
received) from one pandas groupby of when each unit's first conversion of each period
became known, the same CUPED estimate at every look, then the mixture likelihood ratio
Λ = √(V/(V+τ²)) · exp(τ²θ̂²/(2V(V+τ²))) in numpy, the always-valid p-value as the running
minimum of min(1, 1/Λ) and the confidence sequence θ̂ ± √(V(V+τ²)/τ² · (ln((V+τ²)/V) −
2 ln α)) intersected over the looks.

Both logs carry ``unit_key`` for every row, as the gateway and ``rampart outcomes
import`` write them, so Rampart reads integer keys instead of unit-id strings.

First, ``rampart analyze --json`` runs once as a user runs it, in a process of its own:
its wall time (``rampart_cli_seconds``: interpreter start, imports, a first analysis in
a fresh process, the JSON) and its peak memory (the child's RSS high-water mark,
``getrusage``'s ``ru_maxrss``; neither the generation nor the pandas version is counted
in it). Its figures must equal the in-process analysis's.

Then both versions are timed in this process ``--repeat`` times, alternating; the
figures are the medians (every timing is printed too). Both run under the allocator
policy ``rampart analyze`` sets for its process (freed memory kept for reuse,
``serving/cli/batch_memory.py``). Every compared number must agree to 1e-9 relative.
"""

from __future__ import annotations

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]
_ROOT = os.path.dirname(os.path.dirname(_HERE))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import argparse  # noqa: E402
import datetime as dt  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import resource  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

EXPERIMENT = "exp"
ARMS = ("control", "treatment")
START = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
AS_OF = START + dt.timedelta(days=28, hours=12)
MICROS = 1_000_000
DAY = 86_400 * MICROS
WINDOW_S = 7 * 86_400.0
PRE_PERIOD_S = 14 * 86_400.0
MEAN_DECISIONS_PER_UNIT = 2.5
CROSSOVER_SHARE = 0.002
SHADOW_SHARE = 0.05
OUTSIDE_SHARE = 0.03
TOLERANCE = 1e-9
# Small planted effects, so that the p-values are ordinary numbers (not 0) at 10M decisions.
CONVERSION_LIFT = 0.001
REVENUE_LIFT = 0.01
# The plan: alpha, a relative MDE on the expected control conversion rate, and the mSPRT's
# looks before as_of (as_of itself is one more).
ALPHA = 0.05
MDE_RELATIVE = 0.05
BASELINE = 0.1
SEQUENTIAL_LOOKS = 5


# --------------------------------------------------------------------------- data


def fixed_width_ids(prefix: str, numbers: np.ndarray, digits: int) -> pa.Array:
    """``prefix`` + zero-padded ``numbers`` as an Arrow string array, built from buffers."""
    n = int(numbers.size)
    head = np.frombuffer(prefix.encode(), dtype=np.uint8)
    width = head.size + digits
    chars = np.empty((n, width), dtype=np.uint8)
    chars[:, :head.size] = head
    rest = numbers.astype(np.int64)
    for j in range(width - 1, head.size - 1, -1):
        chars[:, j] = rest % 10 + 48
        rest //= 10
    offsets = np.arange(n + 1, dtype=np.int32) * np.int32(width)
    return pa.StringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(chars))


def _timestamps(us: np.ndarray) -> pa.Array:
    return pa.array(us, type=pa.int64()).cast(pa.timestamp("us", tz="UTC"))


def decision_rows(rng: np.random.Generator, unit_ids: pa.Array, unit_keys: pa.Array,
                  unit: np.ndarray, arm: np.ndarray, at_us: np.ndarray, first_request: int, *,
                  experiment: str | None, role: str, arm_names: tuple[str, ...],
                  versions: tuple[str, ...]) -> pa.Table:
    """Decision rows in :data:`DECISION_SCHEMA`; ``arm`` indexes ``arm_names``/``versions``;
    ``unit_keys`` are the keys of ``unit_ids``, as the gateway writes them."""
    from telemetry.decision_log import DECISION_SCHEMA

    n = int(unit.size)
    arm_index = pa.array(arm.astype(np.int32))
    offsets = pa.array(np.arange(n + 1, dtype=np.int32))
    platform = pa.array(["android", "ios"]).take(pa.array(
        (rng.random(n) < 0.3).astype(np.int32)))
    columns: dict[str, pa.Array] = {
        "request_id": fixed_width_ids("r", np.arange(first_request, first_request + n), 10),
        "unit_id": unit_ids.take(pa.array(unit)),
        "unit_key": unit_keys.take(pa.array(unit)),
        "unit_type": pa.repeat(pa.scalar("user_id"), n),
        "experiment_id": pa.repeat(pa.scalar(experiment, type=pa.string()), n),
        "layer": pa.nulls(n, pa.string()),
        "arm": pa.array(list(arm_names)).take(arm_index),
        "model_name": pa.repeat(pa.scalar("clf"), n),
        "model_version": pa.array(list(versions)).take(arm_index),
        "role": pa.repeat(pa.scalar(role), n),
        "timestamp": _timestamps(at_us),
        "features": pa.MapArray.from_arrays(offsets, pa.repeat(pa.scalar("f0"), n),
                                            pa.array(rng.normal(size=n))),
        "prediction": pa.array(rng.random(n)),
        "latency_ms": pa.array(rng.gamma(2.0, 0.5, n)),
        "status": pa.repeat(pa.scalar("ok"), n),
        "error": pa.nulls(n, pa.string()),
        "context": pa.MapArray.from_arrays(offsets, pa.repeat(pa.scalar("platform"), n),
                                           platform),
    }
    # The analysis reads none of the others: null, as in logs written before they existed.
    for field in DECISION_SCHEMA:
        columns.setdefault(field.name, pa.nulls(n, field.type))
    return pa.table(columns, schema=DECISION_SCHEMA)


def write_by_day(table: pa.Table, root: Path, subdir: str = "") -> int:
    """One file per UTC day of ``timestamp`` (in time order, as the logs are written)."""
    at = table["timestamp"].cast(pa.int64()).to_numpy()
    order = np.argsort(at, kind="stable")
    table, at = table.take(pa.array(order)), at[order]
    days = at // DAY
    cuts = np.flatnonzero(np.diff(days)) + 1
    starts = np.concatenate([[0], cuts])
    ends = np.concatenate([cuts, [at.size]])
    for start, end in zip(starts, ends, strict=True):
        day = (dt.date(1970, 1, 1) + dt.timedelta(days=int(days[start]))).isoformat()
        directory = root / f"date={day}" / subdir
        directory.mkdir(parents=True, exist_ok=True)
        pq.write_table(table.slice(int(start), int(end - start)),
                       directory / "part-bench-0.parquet", compression="zstd")
    return len(starts)


def generate(directory: Path, n_decisions: int, seed: int) -> dict[str, Any]:
    """Write ``decisions/`` and ``outcomes/`` under ``directory``; see the module docstring."""
    from serving.cli.demo.simulated_outcomes import TrueEffects, simulate_outcomes
    from telemetry.outcomes_log import conform
    from telemetry.unit_keys import unit_key_array

    rng = np.random.default_rng(seed)
    start_us = int(START.timestamp() * MICROS)
    # decisions per unit: 1 + geometric, mean MEAN_DECISIONS_PER_UNIT, cut at n_decisions
    guess = int(n_decisions / MEAN_DECISIONS_PER_UNIT * 1.1) + 16
    counts = rng.geometric(1.0 / MEAN_DECISIONS_PER_UNIT, guess)
    ends = np.cumsum(counts)
    n_units = int(np.searchsorted(ends, n_decisions)) + 1
    counts = counts[:n_units]
    counts[-1] -= int(ends[n_units - 1]) - n_decisions
    unit_ids = fixed_width_ids("u-", rng.permutation(n_units), 9)
    unit_keys = unit_key_array(unit_ids)
    treated = rng.random(n_units) < 0.5
    first_at = start_us + DAY + rng.integers(0, 28 * DAY, n_units)

    unit = np.repeat(np.arange(n_units), counts)
    first_row = np.zeros(n_decisions, dtype=bool)
    first_row[np.concatenate([[0], np.cumsum(counts)[:-1]])] = True
    at = first_at[unit] + np.where(first_row, 0, rng.integers(1, 3 * DAY, n_decisions))
    arm = treated[unit].astype(np.int64)
    moved = ~first_row & (rng.random(n_decisions) < CROSSOVER_SHARE)
    arm[moved] = 1 - arm[moved]

    tables = [decision_rows(rng, unit_ids, unit_keys, unit, arm, at, 0, experiment=EXPERIMENT,
                            role="primary", arm_names=ARMS, versions=("1", "2"))]
    shadow = np.flatnonzero(rng.random(n_decisions) < SHADOW_SHARE)
    tables.append(decision_rows(
        rng, unit_ids, unit_keys, unit[shadow], np.zeros(shadow.size, dtype=np.int64),
        at[shadow] + 2_000,
        n_decisions, experiment=EXPERIMENT, role="shadow", arm_names=("shadow",),
        versions=("3",)))
    n_outside = int(n_decisions * OUTSIDE_SHARE)
    outside_ids = fixed_width_ids("w-", np.arange(n_outside), 9)
    tables.append(decision_rows(
        rng, outside_ids, unit_key_array(outside_ids), np.arange(n_outside),
        np.zeros(n_outside, dtype=np.int64),
        start_us + DAY + rng.integers(0, 28 * DAY, n_outside),
        n_decisions + shadow.size, experiment=None, role="primary", arm_names=("default",),
        versions=("1",)))
    log_rows = sum(t.num_rows for t in tables)
    decisions_dir = directory / "decisions"
    for experiment, table in ((EXPERIMENT, pa.concat_tables(tables[:2])),
                              ("_none", tables[2])):
        write_by_day(table, decisions_dir, f"experiment={experiment}")
    del tables

    events = [simulate_outcomes(unit_ids, treated, first_at, TrueEffects(
        conversion_lift=CONVERSION_LIFT, revenue_lift=REVENUE_LIFT), seed=seed)]
    window_us, pre_us = int(WINDOW_S * MICROS), int(PRE_PERIOD_S * MICROS)

    def extra(share: float, metric: str, offset_us: np.ndarray | int,
              value: np.ndarray | float, experiment: str | None = None,
              ids: pa.Array = unit_ids, at_us: np.ndarray = first_at) -> None:
        rows = np.flatnonzero(rng.random(len(ids)) < share)
        offsets = np.broadcast_to(np.asarray(offset_us, dtype=np.int64), (len(ids),))
        values = np.broadcast_to(np.asarray(value, dtype=np.float64), (len(ids),))
        events.append(pa.table({
            "unit_id": ids.take(pa.array(rows)),
            "metric": pa.repeat(pa.scalar(metric), rows.size),
            "value": pa.array(values[rows]),
            "timestamp": _timestamps(at_us[rows] + offsets[rows]),
            "experiment_id": pa.repeat(pa.scalar(experiment, type=pa.string()), rows.size),
        }))

    def revenue() -> np.ndarray:
        return rng.gamma(2.0, 5.0, n_units)

    extra(0.10, "revenue", window_us + rng.integers(1, 7 * DAY, n_units), revenue())
    extra(0.05, "converted", -pre_us - rng.integers(1, 7 * DAY, n_units), 1.0)
    extra(0.01, "revenue", window_us, revenue())                # on the window's end: kept
    extra(0.01, "converted", -pre_us, 1.0)                      # on the pre-period's start: kept
    extra(0.01, "revenue", -1, revenue())                       # just before exposure: pre
    extra(0.02, "revenue", rng.integers(0, 3 * DAY, n_units), -revenue())  # refunds
    extra(0.03, "revenue", rng.integers(0, DAY, n_units), revenue(), "exp-other")
    extra(0.02, "revenue", rng.integers(0, DAY, n_units), revenue(), EXPERIMENT)
    extra(0.20, "sessions", rng.integers(0, DAY, n_units), 1.0)
    extra(0.50, "revenue", rng.integers(0, DAY, n_outside), rng.gamma(2.0, 5.0, n_outside),
          ids=outside_ids, at_us=start_us + DAY + rng.integers(0, 28 * DAY, n_outside))
    outcomes = pa.concat_tables(events)
    events.clear()
    received = _timestamps(outcomes["timestamp"].cast(pa.int64()).to_numpy()
                           + rng.integers(0, 60 * MICROS, outcomes.num_rows))
    # keyed as the gateway and the import key them, the item fields null
    outcomes = conform(outcomes.append_column("received_at", received))
    write_by_day(outcomes, directory / "outcomes")
    return {"units": n_units, "decision_log_rows": log_rows, "outcome_rows": outcomes.num_rows}


# --------------------------------------------------------------------------- Rampart


def rampart_config(directory: Path, state: Path) -> Any:
    """The config of the data in ``directory``; Rampart's own files (the
    pre-registration) go under ``state``."""
    from serving.kernel.config import parse_config

    return parse_config(rampart_document(directory, state))


def rampart_document(directory: Path, state: Path) -> dict[str, Any]:
    """:func:`rampart_config` as the document a config file holds."""
    return {
        "data_dir": str(state),
        "models": [{"name": "clf", "versions": ["1", "2"]}],
        "default": {"model": "clf", "version": "1"},
        "experiments": [{
            "id": EXPERIMENT, "salt": "s1", "arms": [
                {"name": ARMS[0], "model": "clf", "version": "1", "weight_bp": 5000},
                {"name": ARMS[1], "model": "clf", "version": "2", "weight_bp": 5000}],
            "analysis": {
                "start": START.isoformat(),
                "primary": {"name": "converted", "type": "binary"},
                "secondary": [{"name": "revenue", "type": "mean"}],
                "alpha": ALPHA, "mde": MDE_RELATIVE, "baseline": BASELINE, "cuped": True,
                "sequential": {"method": "msprt", "looks": SEQUENTIAL_LOOKS},
                "outcome_window_s": WINDOW_S, "pre_period_s": PRE_PERIOD_S,
            }}],
        "decision_log": {"path": str(directory / "decisions")},
        "outcomes_log": {"path": str(directory / "outcomes")},
    }


def run_rampart(config: Any, directory: Path) -> Any:
    """The typed analysis (its JSON document is made outside the timing)."""
    from serving.cli.analyze import run_analysis

    # the pre-registration is kept under the config's data_dir
    return run_analysis(config, EXPERIMENT, decisions=directory / "decisions",
                        outcomes=directory / "outcomes", as_of=AS_OF, now=AS_OF)


def rampart_numbers(report: dict[str, Any]) -> dict[str, float]:
    out: dict[str, float] = {"srm_p": report["srm"]["p_value"],
                             "srm_statistic": report["srm"]["statistic"],
                             "units": report["units"]}
    for entry in report["metrics"]:
        name = entry["metric"]
        out[f"{name}.n_control"] = entry["n_control"]
        out[f"{name}.n_treatment"] = entry["n_treatment"]
        for prefix, body in (("", entry["unadjusted"]), ("cuped.", entry)):
            for key in ("mean_control", "mean_treatment", "abs_effect", "rel_effect",
                        "std_error", "ci_low", "ci_high", "p_value"):
                out[f"{name}.{prefix}{key}"] = body[key]
        out[f"{name}.cuped.variance_reduction"] = entry["cuped_variance_reduction"]
        for key in ("slope_control", "slope_treatment"):
            out[f"{name}.cuped.{key}"] = (entry.get("cuped") or {}).get(key)
        sequential = entry.get("sequential") or {}
        if sequential.get("method") == "msprt":
            for key in ("looks", "mixing_variance", "always_valid_p_value",
                        "adjusted_p_value", "ci_low", "ci_high"):
                out[f"{name}.sequential.{key}"] = sequential[key]
            for k, p in enumerate(sequential["look_p_values"], 1):
                out[f"{name}.sequential.look_p_value.{k}"] = p
            out[f"{name}.sequential.first_rejection_look"] = float(
                sequential["first_rejection_look"] or 0)
    return out


# --------------------------------------------------------------------------- straightforward


def straightforward(directory: Path, alpha: float = ALPHA) -> dict[str, float]:
    """The same analysis as an analyst would write it with pandas and statsmodels."""
    import pandas as pd
    import statsmodels.api as sm
    from scipy import stats
    from statsmodels.stats.proportion import confint_proportions_2indep, proportions_ztest
    from statsmodels.stats.weightstats import CompareMeans, DescrStatsW, ttest_ind

    as_of = pd.Timestamp(AS_OF)
    metrics = ["converted", "revenue"]

    # exposures: each unit's first primary decision in the experiment, and its arm
    decisions = pd.read_parquet(directory / "decisions",
                                columns=["unit_id", "experiment_id", "role", "arm", "timestamp"])
    decisions = decisions[(decisions["experiment_id"] == EXPERIMENT)
                          & (decisions["role"] == "primary")
                          & (decisions["timestamp"] <= as_of)]
    decisions["arm_index"] = decisions["arm"].map({a: i for i, a in enumerate(ARMS)})
    # ties at the same microsecond go to the arm listed first in the config
    exposures = (decisions.sort_values(["timestamp", "arm_index"])
                 .drop_duplicates("unit_id")
                 .rename(columns={"timestamp": "exposed_at"})
                 [["unit_id", "arm_index", "exposed_at"]])
    del decisions

    # outcomes of exposed units, in the window or in the pre-period
    outcomes = pd.read_parquet(directory / "outcomes",
                               columns=["unit_id", "metric", "value", "timestamp",
                                        "experiment_id", "received_at"])
    # known at as_of: received by then (and not stamped after it)
    outcomes = outcomes[outcomes["metric"].isin(metrics)
                        & (outcomes["experiment_id"].isna()
                           | (outcomes["experiment_id"] == EXPERIMENT))
                        & (outcomes["timestamp"] <= as_of)
                        & (outcomes["received_at"] <= as_of)]
    events = outcomes.merge(exposures[["unit_id", "exposed_at"]], on="unit_id")
    del outcomes
    offset = events["timestamp"] - events["exposed_at"]
    window = pd.Timedelta(microseconds=int(WINDOW_S * MICROS))
    pre = pd.Timedelta(microseconds=int(PRE_PERIOD_S * MICROS))
    events["period"] = np.select([(offset >= pd.Timedelta(0)) & (offset <= window),
                                  (offset < pd.Timedelta(0)) & (offset >= -pre)],
                                 ["y", "x"], "")
    events = events[events["period"] != ""]
    events["positive"] = (events["value"] > 0).astype(np.float64)
    sums = events.groupby(["unit_id", "metric", "period"])[["value", "positive"]].sum()
    # for the sequential looks at the primary: when each unit's first conversion of each
    # period became known (it had happened and had been received)
    conversions = events[(events["metric"] == "converted") & (events["value"] > 0)]
    first_known = (np.maximum(conversions["timestamp"], conversions["received_at"])
                   .groupby([conversions["unit_id"], conversions["period"]]).min()
                   .unstack("period").reindex(columns=["x", "y"]).add_prefix("known."))
    del events, conversions
    wide = sums.unstack(["metric", "period"], fill_value=0.0)
    wide.columns = [".".join(c) for c in wide.columns]
    units = exposures.set_index("unit_id").join(wide).fillna(0.0).join(first_known)

    out: dict[str, float] = {}
    counts = units["arm_index"].value_counts().reindex(range(len(ARMS)), fill_value=0)
    srm = stats.chisquare(counts.to_numpy(), counts.sum() * np.array([0.5, 0.5]))
    out.update(srm_p=float(srm.pvalue), srm_statistic=float(srm.statistic),
               units=float(len(units)))
    control = units["arm_index"].to_numpy() == 0

    def column(key: str) -> np.ndarray:
        if key not in units:
            return np.zeros(len(units))
        return np.asarray(units[key].to_numpy(dtype=np.float64))

    # CUPED with per-arm slopes (Lin 2013): each arm's OLS of y on 1 + (x - x̄),
    # x̄ pooled; the intercepts are the adjusted means. Variance: each arm's
    # residual variance (ddof 1) over n, plus the covariate mean's own noise
    # (β_t - β_c)² · a_c·a_t/(a_c + a_t), a = var(x_arm)/n_arm.
    def cuped(y: np.ndarray, x: np.ndarray, control: np.ndarray
              ) -> tuple[float, float, float, float, list[float], float]:
        centred = x - x.mean()
        fits = [sm.OLS(y_arm, sm.add_constant(x_arm, has_constant="add")).fit()
                for y_arm, x_arm in ((y[control], centred[control]),
                                     (y[~control], centred[~control]))]
        (adj_c, beta_c), (adj_t, beta_t) = (tuple(map(float, f.params)) for f in fits)
        resid = [f.ssr / (f.nobs - 1) / f.nobs for f in fits]
        xc, xt = x[control], x[~control]
        a_c, a_t = xc.var(ddof=1) / xc.size, xt.var(ddof=1) / xt.size
        spread = (beta_t - beta_c) ** 2 * a_c * a_t / (a_c + a_t)
        return adj_c, adj_t, beta_c, beta_t, resid, spread

    final: dict[str, tuple[float, float]] = {}  # CUPED effect and variance at as_of
    for name, binary in (("converted", True), ("revenue", False)):
        if binary:  # converted: any event with a positive value in the period
            y = (column(f"positive.{name}.y") > 0).astype(np.float64)
            x = (column(f"positive.{name}.x") > 0).astype(np.float64)
        else:       # revenue: the sum of the values in the period
            y, x = column(f"value.{name}.y"), column(f"value.{name}.x")
        yc, yt = y[control], y[~control]
        out[f"{name}.n_control"], out[f"{name}.n_treatment"] = float(yc.size), float(yt.size)
        out.update(_means(f"{name}.", yc, yt))
        if binary:
            _, p = proportions_ztest([yt.sum(), yc.sum()], [yt.size, yc.size])
            low, high = confint_proportions_2indep(yt.sum(), yt.size, yc.sum(), yc.size,
                                                   method="wald", compare="diff", alpha=alpha)
            se = math.sqrt(yt.mean() * (1 - yt.mean()) / yt.size
                           + yc.mean() * (1 - yc.mean()) / yc.size)
        else:
            _, p, _ = ttest_ind(yt, yc, usevar="unequal")
            low, high = CompareMeans(DescrStatsW(yt), DescrStatsW(yc)).tconfint_diff(
                alpha, usevar="unequal")
            se = math.sqrt(yt.var(ddof=1) / yt.size + yc.var(ddof=1) / yc.size)
        out.update({f"{name}.p_value": float(p), f"{name}.ci_low": float(low),
                    f"{name}.ci_high": float(high), f"{name}.std_error": se})

        adj_c, adj_t, beta_c, beta_t, resid, spread = cuped(y, x, control)
        var_adjusted = resid[0] + resid[1] + spread
        effect = adj_t - adj_c
        final[name] = (effect, var_adjusted)
        se = math.sqrt(var_adjusted)
        if binary:
            p = 2 * stats.norm.sf(abs(effect) / se)
            half = stats.norm.ppf(1 - alpha / 2) * se
        else:
            parts = ((resid[0], yc.size - 1), (resid[1], yt.size - 1), (spread, y.size - 2))
            df = var_adjusted ** 2 / sum(v * v / d for v, d in parts if v > 0)
            p = 2 * stats.t.sf(abs(effect) / se, df)
            half = stats.t.ppf(1 - alpha / 2, df) * se
        var_plain = yt.var(ddof=1) / yt.size + yc.var(ddof=1) / yc.size
        out.update({f"{name}.cuped.mean_control": adj_c, f"{name}.cuped.mean_treatment": adj_t,
                    f"{name}.cuped.abs_effect": effect,
                    f"{name}.cuped.rel_effect": adj_t / adj_c - 1,
                    f"{name}.cuped.p_value": float(p), f"{name}.cuped.ci_low": effect - half,
                    f"{name}.cuped.ci_high": effect + half, f"{name}.cuped.std_error": se,
                    f"{name}.cuped.variance_reduction": 1.0 - var_adjusted / var_plain,
                    f"{name}.cuped.slope_control": beta_c,
                    f"{name}.cuped.slope_treatment": beta_t})

    # mSPRT of the primary (converted). Looks: SEQUENTIAL_LOOKS times evenly spaced from
    # the first exposure to as_of (exclusive, whole microseconds), then as_of. At each,
    # the units exposed by then and what was known of their conversions then.
    start_us, as_of_us = units["exposed_at"].min().value // 1000, as_of.value // 1000
    looks = [pd.Timestamp(start_us + (as_of_us - start_us) * (k + 1) // (SEQUENTIAL_LOOKS + 1),
                          unit="us", tz="UTC") for k in range(SEQUENTIAL_LOOKS)]
    rows = []
    for at in looks:
        seen = units[units["exposed_at"] <= at]
        y = (seen["known.y"] <= at).to_numpy(dtype=np.float64)
        x = (seen["known.x"] <= at).to_numpy(dtype=np.float64)
        control_then = seen["arm_index"].to_numpy() == 0
        if x.any():
            adj_c, adj_t, _, _, resid, spread = cuped(y, x, control_then)
            rows.append((adj_t - adj_c, resid[0] + resid[1] + spread))
        else:  # no pre-period conversion known yet: the plain difference
            yc, yt = y[control_then], y[~control_then]
            rows.append((yt.mean() - yc.mean(), yt.mean() * (1 - yt.mean()) / yt.size
                         + yc.mean() * (1 - yc.mean()) / yc.size))
    rows.append(final["converted"])
    seq = pd.DataFrame(rows, columns=["effect", "variance"])
    theta, v = seq["effect"], seq["variance"]
    # mixing prior N(0, τ²), τ = the MDE in absolute units;
    # Λ = √(V/(V+τ²)) · exp(τ²θ̂²/(2V(V+τ²))), written as 1/Λ
    tau2 = (MDE_RELATIVE * abs(BASELINE)) ** 2
    inverse_lr = np.sqrt((v + tau2) / v) * np.exp(-tau2 * theta ** 2 / (2 * v * (v + tau2)))
    seq["p"] = inverse_lr.clip(upper=1.0).cummin()
    half_width = np.sqrt(v * (v + tau2) / tau2 * (np.log((v + tau2) / v) - 2 * math.log(alpha)))
    seq["cs_low"] = (theta - half_width).cummax()
    seq["cs_high"] = (theta + half_width).cummin()
    rejected = seq.index[seq["p"] <= alpha]
    last = seq.iloc[-1]
    out.update({"converted.sequential.looks": float(len(seq)),
                "converted.sequential.mixing_variance": tau2,
                "converted.sequential.always_valid_p_value": float(last["p"]),
                # one treatment arm: nothing to correct across arms
                "converted.sequential.adjusted_p_value": float(last["p"]),
                "converted.sequential.ci_low": float(last["cs_low"]),
                "converted.sequential.ci_high": float(last["cs_high"]),
                "converted.sequential.first_rejection_look":
                    float(rejected[0] + 1) if len(rejected) else 0.0})
    out.update({f"converted.sequential.look_p_value.{k}": float(p)
                for k, p in enumerate(seq["p"], 1)})
    return out


def _means(prefix: str, control: np.ndarray, treatment: np.ndarray) -> dict[str, float]:
    mean_c, mean_t = float(control.mean()), float(treatment.mean())
    return {f"{prefix}mean_control": mean_c, f"{prefix}mean_treatment": mean_t,
            f"{prefix}abs_effect": mean_t - mean_c, f"{prefix}rel_effect": mean_t / mean_c - 1}


# --------------------------------------------------------------------------- comparison


def compare(rampart: dict[str, float], plain: dict[str, float]
            ) -> tuple[float, str, list[str], int]:
    """Largest relative difference over every number both sides have, its key, the
    numbers beyond the tolerance, and how many numbers were compared."""
    worst, worst_key, bad, compared = 0.0, "", [], 0
    for key, value in rampart.items():
        if key not in plain:
            continue
        compared += 1
        a, b = value, plain[key]
        if a is None or not math.isfinite(a) or not math.isfinite(b):
            diff = 0.0 if a == b else math.inf
        else:
            scale = max(abs(a), abs(b))
            diff = 0.0 if scale == 0 else abs(a - b) / scale
        if diff > worst:
            worst, worst_key = diff, key
        if diff > TOLERANCE:
            bad.append(f"{key}: rampart {a!r} vs straightforward {b!r}")
    return worst, worst_key, bad, compared


# --------------------------------------------------------------------------- memory


def rampart_cli(directory: Path, state: Path) -> tuple[float, int, str]:
    """``rampart analyze --json`` on the data in ``directory``, as a user runs it:
    a fresh process (interpreter start, imports, the analysis, the JSON). Its
    wall seconds, its peak RSS in bytes (the RSS high-water mark, from the
    child's resource usage) and its JSON document."""
    import yaml

    config = state / "rampart.yaml"
    config.write_text(yaml.safe_dump(rampart_document(directory, state)))
    rampart = Path(sys.executable).with_name("rampart")
    started = time.perf_counter()
    child = subprocess.Popen(
        [str(rampart), "analyze", "--config", str(config), "--experiment", EXPERIMENT,
         "--as-of", AS_OF.isoformat(), "--json"], stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    out, err = child.communicate()
    seconds = time.perf_counter() - started
    # the child has been reaped by communicate(); its usage is in RUSAGE_CHILDREN,
    # and it is the only child this process has run so far
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    if child.returncode != 0:
        raise RuntimeError(f"rampart analyze failed: {err.strip()[-2000:]}")
    return seconds, peak, out


# --------------------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--decisions", type=int, default=10_000_000,
                        help="primary decisions of the experiment (default 10,000,000)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="time each version this many times, alternating; report medians")
    parser.add_argument("--keep", type=Path,
                        help="generate the data here and keep it; reused when it was "
                             "generated with the same --decisions and --seed, else its "
                             "decisions/, outcomes/ and rampart/ are replaced")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    if args.decisions < 1_000 or args.repeat < 1:
        parser.error("--decisions must be at least 1,000 and --repeat at least 1")
    print(json.dumps({"OPENBLAS_CORETYPE_set": "OPENBLAS_CORETYPE" in os.environ,
                      "OPENBLAS_L2_SIZE_set": "OPENBLAS_L2_SIZE" in os.environ,
                      "cpu_count": os.cpu_count()}), flush=True)

    tmp = None if args.keep else tempfile.mkdtemp(prefix="rampart-analysis-")
    directory = args.keep or Path(str(tmp))
    # Rampart's pre-registration of this run's plan: kept data may have been analysed
    # under another plan, which Rampart would refuse as a changed plan
    state = Path(tempfile.mkdtemp(prefix="rampart-analysis-state-"))
    try:
        meta_path = directory / "benchmark.json"
        wanted = {"decisions": args.decisions, "seed": args.seed}
        meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
        if {k: meta.get(k) for k in wanted} == wanted:
            print(json.dumps({"generated": "reused", "directory": str(directory), **meta}),
                  flush=True)
        else:
            for sub in ("decisions", "outcomes", "rampart"):
                shutil.rmtree(directory / sub, ignore_errors=True)
            directory.mkdir(parents=True, exist_ok=True)
            started = time.perf_counter()
            meta = {**wanted, **generate(directory, args.decisions, args.seed)}
            meta["generation_seconds"] = round(time.perf_counter() - started, 2)
            meta_path.write_text(json.dumps(meta))
            print(json.dumps({"generated": str(directory), **meta}), flush=True)
        gc.collect()

        cli_seconds, peak_rss, cli_json = rampart_cli(directory, state)
        print(json.dumps({"rampart_cli_seconds": round(cli_seconds, 3),
                          "rampart_peak_rss_gb": round(peak_rss / 1e9, 3)}), flush=True)
        # The in-process timings run under the allocator policy `rampart analyze`
        # sets for its process (serving/cli/batch_memory.py), for both versions.
        from serving.cli.batch_memory import keep_freed_memory

        print(json.dumps({"freed_memory_kept": keep_freed_memory()}), flush=True)
        config = rampart_config(directory, state)
        rampart_times: list[float] = []
        plain_times: list[float] = []
        report: dict[str, Any] = {}
        plain: dict[str, float] = {}
        for round_no in range(args.repeat):
            started = time.perf_counter()
            analysis = run_rampart(config, directory)
            rampart_times.append(time.perf_counter() - started)
            report = analysis.to_json()
            assert len(report["periods"]) == 1, report["periods"]  # no version changed
            gc.collect()
            started = time.perf_counter()
            plain = straightforward(directory)
            plain_times.append(time.perf_counter() - started)
            gc.collect()
            print(json.dumps({"round": round_no, "rampart_seconds": round(rampart_times[-1], 3),
                              "straightforward_seconds": round(plain_times[-1], 3)}),
                  flush=True)

        numbers = rampart_numbers(report)
        worst, worst_key, bad, compared = compare(numbers, plain)
        if rampart_numbers(json.loads(cli_json)) != numbers:
            bad.append("the CLI's figures differ from the in-process analysis's")
        for line in bad:
            print(f"MISMATCH {line}", file=sys.stderr)
        rampart_s = statistics.median(rampart_times)
        plain_s = statistics.median(plain_times)
        print(json.dumps({
            "metrics": {m["metric"]: {
                "n": [m["n_control"], m["n_treatment"]],
                "means": [m["unadjusted"]["mean_control"], m["unadjusted"]["mean_treatment"]],
                "effect": m["unadjusted"]["abs_effect"], "p": m["unadjusted"]["p_value"],
                "cuped_effect": m["abs_effect"], "cuped_p": m["p_value"],
                "cuped_slopes": [plain[f"{m['metric']}.cuped.slope_control"],
                                 plain[f"{m['metric']}.cuped.slope_treatment"]],
                "cuped_variance_reduction": m["cuped_variance_reduction"]}
                for m in report["metrics"]},
            "srm_p": report["srm"]["p_value"], "crossovers": report["crossovers"],
            "sequential": {m["metric"]: {
                "method": m["sequential"]["method"], "looks": m["sequential"]["looks"],
                "mixing_variance": m["sequential"]["mixing_variance"],
                "always_valid_p": m["sequential"]["always_valid_p_value"],
                "look_p": m["sequential"]["look_p_values"],
                "cs": [m["sequential"]["ci_low"], m["sequential"]["ci_high"]],
                "rejected": m["sequential"]["rejected"]}
                for m in report["metrics"] if (m["sequential"] or {}).get("method") == "msprt"},
        }), flush=True)
        print(json.dumps({
            "rows": args.decisions, "decision_log_rows": meta["decision_log_rows"],
            "outcome_rows": meta["outcome_rows"], "units": report["units"],
            "rampart_seconds": round(rampart_s, 3),
            "straightforward_seconds": round(plain_s, 3),
            "speedup": round(plain_s / rampart_s, 2),
            "rampart_cli_seconds": round(cli_seconds, 3),
            "rampart_peak_rss_gb": round(peak_rss / 1e9, 3),
            "goal_under_3s": rampart_s <= 3.0, "goal_10x": plain_s / rampart_s >= 10.0,
            "goal_peak_under_4gb": peak_rss < 4e9,
            "numbers_identical": not bad, "numbers_compared": compared,
            "max_rel_diff": worst, "max_rel_diff_at": worst_key,
            "timing": f"median of {args.repeat}",
        }), flush=True)
        return 0 if not bad else 1
    finally:
        shutil.rmtree(state, ignore_errors=True)
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
