"""Switchback experiments: a time window (crossed with a region) is the unit.

Routing gives every request of a window and region the window's arm; the
config refuses what windows cannot be; the window-level analysis keeps its
level where a per-request test does not, its intervals cover, and the burn-in
removes the bias carry-over puts in the estimate."""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient
from scipy import stats

from rollout.experiments.analysis import MICROS
from rollout.experiments.stats.switchback import (
    SwitchbackCells,
    switchback_cells,
    switchback_effect,
)
from serving.cli.analyze import run_analysis
from serving.cli.common import CliError
from serving.cli.request_time import request_time
from serving.gateway.core import GatewayCore, build_app
from serving.kernel.config import ConfigError, parse_config
from serving.routing.assignment import allocate, bucket
from serving.routing.router import RoutingTable, build_routing_table, route, route_many
from serving.routing.switchback import window_arm_buckets
from telemetry.decision_log import DecisionLogWriter, batch_table, read_decisions
from telemetry.metrics import RequestMetrics
from telemetry.outcomes_log import OUTCOME_SCHEMA
from tests.unit.fakes import FEATURES, InMemoryRegistry

ARMS = [{"name": "control", "model": "clf", "version": "1", "weight_bp": 5000},
        {"name": "treatment", "model": "clf", "version": "2", "weight_bp": 5000}]
HOUR = 3600


def document(**switchback: Any) -> dict[str, Any]:
    """``by-hour`` switched by the hour (and ``city`` unless told otherwise),
    then ``by-user``, a plain experiment that takes what ``by-hour`` does not."""
    design = {"window_s": HOUR, "region": "city", "burn_in_s": 600, **switchback}
    return {
        "models": [{"name": "clf", "versions": ["1", "2"]}],
        "default": {"model": "clf", "version": "1"},
        "experiments": [
            {"id": "by-hour", "salt": "hour-salt", "switchback": design,
             "arms": [dict(a) for a in ARMS]},
            {"id": "by-user", "salt": "user-salt", "arms": [dict(a) for a in ARMS]}],
    }


def table(data: dict[str, Any]) -> RoutingTable:
    return build_routing_table(parse_config(data), InMemoryRegistry().resolve)


def arm_of_bucket(b: int) -> str:
    layout = allocate([a["name"] for a in ARMS], [a["weight_bp"] for a in ARMS])
    return layout.arm_names[layout.arm_of(b)]


T0 = dt.datetime(2026, 11, 2, tzinfo=dt.UTC).timestamp()  # a window edge (whole hours)


# --------------------------------------------------------------------------- routing


def test_every_request_of_a_window_and_region_gets_the_window_arm() -> None:
    routing = table(document())
    for k in range(50):
        for city in ("paris", "lyon"):
            at = T0 + k * HOUR
            arms = {route(routing, f"user-{u}", {"city": city}, now=at + 37 * u).arm
                    for u in range(40)}
            assert len(arms) == 1, (k, city)
            decision = route(routing, "user-0", {"city": city}, now=at)
            # the window is hashed under the experiment's salt, as "k:region"
            assert decision.bucket == bucket("hour-salt", f"{int(at // HOUR)}:{city}")
            assert decision.unit_id == "user-0" and decision.experiment_id == "by-hour"


def test_assignment_is_deterministic_and_varies_across_windows_and_regions() -> None:
    routing, again = table(document()), table(document())
    by_window = [route(routing, "u", {"city": "paris"}, now=T0 + k * HOUR).arm
                 for k in range(400)]
    assert by_window == [route(again, "u", {"city": "paris"}, now=T0 + k * HOUR).arm
                         for k in range(400)]
    treated = sum(a == "treatment" for a in by_window)
    assert stats.binomtest(treated, 400).pvalue > 0.001  # a fair coin per window
    other_city = [route(routing, "u", {"city": "lyon"}, now=T0 + k * HOUR).arm
                  for k in range(400)]
    assert other_city != by_window  # regions are switched independently
    # the vectorized hash the analysis uses agrees with routing
    windows = np.arange(int(T0 // HOUR), int(T0 // HOUR) + 400, dtype=np.int64)
    buckets = window_arm_buckets("hour-salt", windows, np.full(400, "paris", dtype=object))
    assert [arm_of_bucket(int(b)) for b in buckets] == by_window


def test_window_edges_belong_to_the_window_they_start() -> None:
    routing = table(document(region=None))
    for k in range(200):
        edge = T0 + k * HOUR
        assert route(routing, "u", now=edge).bucket == bucket("hour-salt", f"{int(edge // HOUR)}")
        assert route(routing, "u", now=edge - 1e-3).bucket == bucket(
            "hour-salt", f"{int(edge // HOUR) - 1}")
        assert route(routing, "u", now=edge + HOUR - 1e-3).bucket == bucket(
            "hour-salt", f"{int(edge // HOUR)}")


def test_no_region_or_no_time_is_not_eligible() -> None:
    routing = table(document())
    for context in ({}, {"city": ""}, {"city": 1.5}, {"city": True}, {"country": "FR"}):
        decision = route(routing, "user-1", context, now=T0)
        assert decision.experiment_id == "by-user", context  # the next experiment took it
    # routing never reads the clock: without a time no window, so no switchback
    assert route(routing, "user-1", {"city": "paris"}).experiment_id == "by-user"
    # an integer region is the same region as its text (the log keeps text)
    assert route(routing, "u", {"city": 7}, now=T0).bucket == route(
        routing, "u", {"city": "7"}, now=T0).bucket
    # offline replay has no times: switchback experiments take no unit there
    replay = route_many(routing, [f"u{i}" for i in range(100)])
    assert set(replay["experiment_id"]) == {"by-user"}


@pytest.mark.parametrize(("change", "where", "message"), [
    ({"window_s": 0}, "experiments.0.switchback.window_s", "greater than or equal to 1"),
    ({"window_s": 86_401}, "experiments.0.switchback.window_s", "less than or equal to 86400"),
    ({"burn_in_s": HOUR}, "experiments.0.switchback", "must be shorter than window_s"),
    ({"burn_in_s": -1}, "experiments.0.switchback.burn_in_s", "greater than or equal to 0"),
    ({"region": ""}, "experiments.0.switchback.region", "at least 1 character"),
    ({"every": 3}, "experiments.0.switchback.every", "Extra inputs"),
])
def test_bad_designs_are_refused_with_their_path(change: dict[str, Any], where: str,
                                                 message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(document(**change))
    assert f"{where}: " in str(caught.value) and message in str(caught.value)


@pytest.mark.parametrize(("fields", "message"), [
    ({"coverage_bp": 5000}, "coverage_bp 5000 would leave part of each window"),
    ({"layer": "checkout", "layer_buckets": [0, 5000]}, "cannot be in a layer"),
])
def test_what_windows_cannot_be_is_refused_with_the_reason(fields: dict[str, Any],
                                                           message: str) -> None:
    data = document()
    data["layers"] = [{"id": "checkout", "salt": "layer-salt"}]
    # the design after the fields it is checked against, as a YAML mapping may order them
    data["experiments"][0] = {**{k: v for k, v in data["experiments"][0].items()
                                 if k != "switchback"}, **fields,
                              "switchback": data["experiments"][0]["switchback"]}
    with pytest.raises(ConfigError) as caught:
        parse_config(data)
    assert "experiments.0.switchback: experiment 'by-hour'" in str(caught.value)
    assert message in str(caught.value)


def test_rampart_assign_reads_its_time_at_the_edge() -> None:
    assert request_time("2026-11-02T01:00:00Z") == T0 + HOUR
    assert request_time(str(T0)) == T0
    for bad, message in (("yesterday", "not an ISO-8601 time"), ("2026-11-02T01:00:00",
                                                                 "needs a time zone"),
                         ("nan", "not a time"), ("-5", "not a time")):
        with pytest.raises(CliError, match=message):
            request_time(bad)


# --------------------------------------------------------------------------- the gateway


@pytest.fixture
def switchback_gateway(tmp_path: Path) -> Iterator[dict[str, Any]]:
    from prometheus_client import CollectorRegistry

    registry = InMemoryRegistry()
    data = document(window_s=86_400, burn_in_s=0)
    data["models"] = [{"name": "clf", "versions": ["1", "2"]}]
    routing = build_routing_table(parse_config(data), registry.resolve)
    scorers = {(r.name, r.version): registry.load(r.name, r.version)
               for r in routing.model_refs()}
    writer = DecisionLogWriter(tmp_path / "decisions", "test", batch_rows=1000,
                               flush_interval_s=3600)
    core = GatewayCore(routing, scorers, RequestMetrics(CollectorRegistry()), None, writer)
    with TestClient(build_app(core)) as client:
        yield {"client": client, "writer": writer, "dir": tmp_path / "decisions"}
    core.close()


def test_the_gateway_routes_a_window_by_the_time_it_logs(
        switchback_gateway: dict[str, Any]) -> None:
    client = switchback_gateway["client"]
    features = {name: 0.1 * i for i, name in enumerate(FEATURES)}
    answers = [client.post("/v1/predict", json={
        "unit_id": f"user-{i}", "features": features, "context": {"city": "paris"}}).json()
        for i in range(20)]
    switchback_gateway["writer"].flush()
    rows = read_decisions(switchback_gateway["dir"]).to_pylist()
    assert len(rows) == 20
    for answer, row in zip(answers, sorted(rows, key=lambda r: r["timestamp"]), strict=True):
        assert answer["experiment_id"] == row["experiment_id"] == "by-hour"
        # the window of the logged timestamp is the one that chose the arm
        window = math.floor(row["timestamp"].timestamp() / 86_400)
        expected = arm_of_bucket(bucket("hour-salt", f"{window}:paris"))
        assert row["arm"] == expected
        assert row["unit_id"].startswith("user-")  # the request's own unit is logged
    windows = {math.floor(r["timestamp"].timestamp() / 86_400) for r in rows}
    if len(windows) == 1:  # not across midnight UTC: twenty users, one arm
        assert len({a["arm"] for a in answers}) == 1


# --------------------------------------------------------------------------- Monte Carlo


def simulate_cells(rng: np.random.Generator, runs: int, windows: int = 96, regions: int = 2,
                   requests: int = 40, effect: float = 0.0, rho: float = 0.7,
                   shock_sd: float = 1.0, noise_sd: float = 3.0
                   ) -> dict[str, np.ndarray]:
    """``runs`` switchback experiments at once, as cell sums: AR(1) demand shocks
    shared by every request of a window (autocorrelated across windows), a
    region level, per-request noise, arms drawn per cell by a fair coin. The
    per-request sums of squares are drawn exactly (χ² within the cell), so the
    per-request test needs no rows."""
    cells = windows * regions
    innovations = rng.normal(0.0, shock_sd, (runs, windows + 50, regions))
    shocks = np.zeros_like(innovations)
    for w in range(1, windows + 50):
        shocks[:, w] = rho * shocks[:, w - 1] + innovations[:, w]
    level = 10.0 + np.tile(np.arange(regions) * 2.0, windows)
    treated = (rng.random((runs, cells)) < 0.5).astype(np.int64)
    base = level + shocks[:, 50:].reshape(runs, cells) + effect * treated
    noise_mean = rng.normal(0.0, noise_sd / math.sqrt(requests), (runs, cells))
    within = noise_sd ** 2 * rng.chisquare(requests - 1, (runs, cells))
    total = requests * (base + noise_mean)
    return {"treated": treated, "total": total,
            "squares": requests * (base + noise_mean) ** 2 + within,
            "window": np.repeat(np.arange(windows), regions),
            "region": np.tile(np.arange(regions), windows),
            "count": np.full(cells, requests)}


def per_request_p_values(sim: dict[str, np.ndarray]) -> np.ndarray:
    """The naive test: Welch's t over requests, as if they were independent units."""
    out = []
    for arm in (0, 1):
        mask = sim["treated"] == arm
        n = (mask * sim["count"]).sum(axis=1)
        s = np.where(mask, sim["total"], 0.0).sum(axis=1)
        q = np.where(mask, sim["squares"], 0.0).sum(axis=1)
        out.append((s / n, (q - s * s / n) / (n - 1) / n))
    (m0, v0), (m1, v1) = out
    return np.asarray(2 * stats.norm.sf(np.abs(m1 - m0) / np.sqrt(v0 + v1)))


def window_tests(sim: dict[str, np.ndarray], draws: int) -> list[Any]:
    return [switchback_effect(SwitchbackCells(sim["window"], sim["region"], sim["treated"][r],
                                              sim["total"][r], sim["count"],
                                              ("north", "south")), 1, 0, 0.05, draws, seed=r)
            for r in range(sim["treated"].shape[0])]


def test_a_and_a_windows_keep_their_level_where_requests_do_not() -> None:
    sim = simulate_cells(np.random.default_rng(15), runs=4000)
    results = window_tests(sim, draws=400)
    regression = np.mean([r.p_value < 0.05 for r in results])
    randomization = np.mean([r.ri_p_value < 0.05 for r in results])
    naive = float(np.mean(per_request_p_values(sim) < 0.05))
    print(f"A/A false positives over 4000 runs: regression {regression:.4f}, "
          f"randomization {randomization:.4f}, per-request {naive:.4f}")
    assert 0.035 <= regression <= 0.065
    assert 0.035 <= randomization <= 0.065
    assert naive > 0.065


def test_intervals_cover_a_planted_effect() -> None:
    sim = simulate_cells(np.random.default_rng(16), runs=1000, effect=0.5)
    results = window_tests(sim, draws=1)
    covered = np.mean([r.ci_low <= 0.5 <= r.ci_high for r in results])
    power = np.mean([r.p_value < 0.05 for r in results])
    print(f"95% CI coverage over 1000 runs: {covered:.3f} (power {power:.3f})")
    assert 0.935 <= covered <= 0.965


def carry_over_runs(burn_in_s: int, runs: int = 600, carry_s: int = 900,
                    effect: float = 1.0) -> np.ndarray:
    """Estimates over ``runs`` experiments of hourly windows in which the
    previous window's arm keeps acting for the first ``carry_s`` seconds, with
    rows (requests, one outcome event each) through the cell builder."""
    rng = np.random.default_rng(17)
    windows, per_window = 48, 60
    estimates = []
    for _ in range(runs):
        arm = (rng.random(windows + 1) < 0.5).astype(np.int64)
        window = np.repeat(np.arange(1, windows + 1), per_window)
        offset = rng.uniform(0, HOUR, window.size)
        at_us = ((window * HOUR + offset) * MICROS).astype(np.int64)
        acting = np.where(offset < carry_s, arm[window - 1], arm[window])
        shocks = rng.normal(0, 0.5, windows + 1)[window]
        value = 5.0 + effect * acting + shocks + rng.normal(0, 1.0, window.size)
        region = np.zeros(window.size, dtype=np.int64)
        cells = switchback_cells(HOUR, burn_in_s, at_us, region, arm[window], at_us, region,
                                 value, arm_of=lambda w, r, arm=arm: arm[w])
        estimates.append(switchback_effect(cells, 1, 0, draws=1).abs_effect)
    return np.asarray(estimates)


def test_the_burn_in_removes_the_bias_of_carry_over() -> None:
    without = carry_over_runs(burn_in_s=0)
    with_burn_in = carry_over_runs(burn_in_s=900)
    error_without = without.std(ddof=1) / math.sqrt(without.size)
    error_with = with_burn_in.std(ddof=1) / math.sqrt(with_burn_in.size)
    print(f"carry-over of 15 min, true effect 1: mean estimate {without.mean():.4f} "
          f"± {error_without:.4f} without burn-in, {with_burn_in.mean():.4f} "
          f"± {error_with:.4f} with a 15 min burn-in")
    assert without.mean() < 1.0 - 5 * error_without  # biased toward no effect
    assert abs(with_burn_in.mean() - 1.0) < 3 * error_with


def test_burn_in_drops_only_the_start_of_windows_that_switched() -> None:
    # windows 0..3 on arms 0, 0, 1, 1: only window 2 starts with a switch
    at_us = (np.array([10, 700, 3610, 4300, 7210, 7900, 10810, 11500]) * MICROS).astype(
        np.int64)
    arms = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    region = np.zeros(8, dtype=np.int64)
    cells = switchback_cells(HOUR, 600, at_us, region, arms, at_us, region,
                             np.arange(8, dtype=np.float64), arm_of=lambda w, r: np.zeros_like(w))
    assert cells.window.tolist() == [0, 1, 2, 3]
    assert cells.count.tolist() == [2, 2, 1, 2]  # the first 10 minutes of window 2 dropped
    assert cells.total.tolist() == [1.0, 5.0, 5.0, 13.0]
    assert (cells.burn_in_requests, cells.burn_in_events) == (1, 1)


# --------------------------------------------------------------------------- analysis


AS_OF = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)


def write_switchback_experiment(tmp: Path, seed: int = 3, latency_shock_sd: float | None = None,
                                sessions: bool = False) -> dict[str, Any]:
    """Decision and outcome logs of ``by-hour`` over four days in two cities,
    each request routed by routing itself at its own time, with a per-request
    ``revenue`` event at the request's time: strong hourly shocks, no effect.
    With ``latency_shock_sd`` each request also has a ``latency`` event, its
    hourly shocks of that spread (drawn apart: ``revenue`` stays the same).
    With ``sessions`` a unit's requests are all in one hour (its id names the
    hour), so a unit's outcome carries its window's shock whole."""
    rng = np.random.default_rng(seed)
    routing = table(document(burn_in_s=0))
    start = dt.datetime(2026, 11, 20, tzinfo=dt.UTC).timestamp()
    n = 4000
    at = np.sort(start + rng.uniform(0, 96 * HOUR, n))
    user = rng.integers(0, 800, n)
    city = np.where(user % 3 == 0, "lyon", "paris")  # a user's events carry no city: one each
    ids = ([f"user-{int(t // HOUR)}-{i}" for t, i in zip(at, user, strict=True)] if sessions
           else [f"user-{i}" for i in user])
    arms = [route(routing, unit, {"city": c}, now=t).arm for unit, c, t in zip(
        ids, city, at, strict=True)]
    shocks = rng.normal(0, 2.0, 200)
    window = (at // HOUR).astype(np.int64)
    revenue = 10 + shocks[window - window.min()] + rng.normal(0, 1.0, n)
    decisions = batch_table(n, {
        "request_id": [f"r{i}" for i in range(n)], "unit_id": ids, "unit_type": "user_id",
        "experiment_id": "by-hour", "arm": arms, "model_name": "clf",
        "model_version": ["2" if a == "treatment" else "1" for a in arms], "role": "primary",
        "timestamp": at, "features": [{"f0": 1.0}] * n, "prediction": 0.5,
        "latency_ms": 1.0, "status": "ok"})
    decisions = decisions.set_column(
        decisions.schema.get_field_index("context"), "context",
        pa.array([[("city", c)] for c in city], type=pa.map_(pa.string(), pa.string())))
    (tmp / "decisions").mkdir(parents=True)
    pq.write_table(decisions, tmp / "decisions" / "part-0.parquet")
    stamp = pa.array((at * MICROS).astype(np.int64)).cast(pa.timestamp("us", tz="UTC"))
    outcomes = pa.table({
        "unit_id": pa.array(ids), "metric": pa.repeat(pa.scalar("revenue"), n),
        "value": pa.array(revenue), "timestamp": stamp,
        "experiment_id": pa.nulls(n, pa.string()), "received_at": stamp})
    truth = {"at": at, "city": city, "ids": ids, "arms": arms, "revenue": revenue}
    if latency_shock_sd is not None:
        other = np.random.default_rng(seed + 1000)
        latency = (100 + other.normal(0, latency_shock_sd, 200)[window - window.min()]
                   + other.normal(0, 10.0, n))
        outcomes = pa.concat_tables([outcomes, outcomes.set_column(
            1, "metric", pa.repeat(pa.scalar("latency"), n)).set_column(
            2, "value", pa.array(latency))])
        truth["latency"] = latency
    (tmp / "outcomes").mkdir(parents=True)
    pq.write_table(outcomes.cast(OUTCOME_SCHEMA), tmp / "outcomes" / "part-0.parquet")
    return truth


def switchback_config(tmp: Path, **analysis: Any) -> Any:
    """The config of ``by-hour`` alone, ``revenue`` its primary metric, and
    the plan's other fields from ``analysis``."""
    data = document(burn_in_s=0)
    data["experiments"] = data["experiments"][:1]
    data["experiments"][0]["analysis"] = {
        "start": "2026-11-01T00:00:00Z",
        "primary": {"name": "revenue", "type": "mean"},
        "alpha": 0.05, "mde": 0.05, "baseline": 10.0, "cuped": False, **analysis}
    data.update(data_dir=str(tmp), decision_log={"path": str(tmp / "decisions")},
                outcomes_log={"path": str(tmp / "outcomes")})
    return parse_config(data)


def test_the_analysis_of_a_switchback_experiment_rests_on_its_windows(tmp_path: Path) -> None:
    truth = write_switchback_experiment(tmp_path)
    report = run_analysis(switchback_config(tmp_path), "by-hour", as_of=AS_OF, now=AS_OF)
    primary = report.metrics[0]
    assert primary.switchback is not None and primary.switchback.region == "city"
    # the cells as the analysis should cut them: (hour, city), revenue per request
    keys = sorted({(int(t // HOUR), c) for t, c in zip(truth["at"], truth["city"],
                                                       strict=True)})
    index = {k: i for i, k in enumerate(keys)}
    cell = np.array([index[(int(t // HOUR), c)] for t, c in zip(truth["at"], truth["city"],
                                                                 strict=True)])
    arm_of = {}
    for i, a in zip(cell, truth["arms"], strict=True):
        arm_of[i] = 1 if a == "treatment" else 0
    cities = sorted({c for _, c in keys})
    expected = switchback_effect(SwitchbackCells(
        np.array([k[0] for k in keys]), np.array([cities.index(k[1]) for k in keys]),
        np.array([arm_of[i] for i in range(len(keys))]),
        np.bincount(cell, weights=truth["revenue"]), np.bincount(cell)), 1)
    assert math.isclose(primary.abs_effect or 0, expected.abs_effect, rel_tol=1e-9)
    assert math.isclose(primary.p_value or 0, expected.p_value, rel_tol=1e-9)
    # the same test; its permutations drawn in another order of the cells
    assert abs((primary.switchback.ri_p_value or 0) - expected.ri_p_value) < 0.05
    assert (primary.switchback.windows_control + primary.switchback.windows_treatment
            == len(keys))
    assert primary.switchback.naive_p_value is not None and primary.sequential is None
    # the sample ratio counts the windows, the units the design randomized
    assert report.srm.observed == tuple(
        sum(1 for i in range(len(keys)) if arm_of[i] == arm) for arm in (0, 1))
    assert report.decision.outcome == "hold"
    from serving.cli.analyze import summary_text

    text = summary_text(report)
    assert "switchback by 3600 s windows × city (" in text and "randomization p =" in text
    from rollout.experiments.report import render_html

    assert "switchback by 3600 s windows" in render_html(report)


def test_the_ray_engine_refuses_switchback_experiments(tmp_path: Path) -> None:
    write_switchback_experiment(tmp_path)
    with pytest.raises(CliError, match="switchback experiments"):
        run_analysis(switchback_config(tmp_path), "by-hour", as_of=AS_OF, now=AS_OF,
                     engine="ray")


# --------------------------------------------------------------------------- every metric


LATENCY_GUARDRAIL = {"name": "latency", "harm": "increase", "tolerance": 0.04,
                     "relative": True}


def window_estimate(truth: dict[str, Any], metric: str) -> Any:
    """:func:`switchback_effect` over the (hour, city) cells of ``metric`` built
    from the rows written, independently of the loader: events per request."""
    keys = sorted({(int(t // HOUR), c) for t, c in zip(truth["at"], truth["city"],
                                                       strict=True)})
    index = {k: i for i, k in enumerate(keys)}
    cell = np.array([index[(int(t // HOUR), c)] for t, c in zip(truth["at"], truth["city"],
                                                                 strict=True)])
    arm = np.zeros(len(keys), dtype=np.int64)
    arm[cell] = [1 if a == "treatment" else 0 for a in truth["arms"]]
    cities = sorted({c for _, c in keys})
    return switchback_effect(SwitchbackCells(
        np.array([k[0] for k in keys]), np.array([cities.index(k[1]) for k in keys]), arm,
        np.bincount(cell, weights=truth[metric]), np.bincount(cell)), 1)


@pytest.mark.parametrize(("seed", "per_unit_verdict"), [(12, "FAIL"), (3, "PASS")])
def test_a_guardrail_of_a_switchback_experiment_is_judged_by_its_windows(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seed: int,
        per_unit_verdict: str) -> None:
    # Sessions within one hour and strong hourly latency shocks, no effect: each
    # unit carries its hour's shock whole, and the per-unit test takes the
    # units of an hour for independent evidence. Its interval, too narrow,
    # rules harm out (PASS) or its estimate, another weighting of the same
    # shocks, shows harm (FAIL); the windows' interval says neither.
    truth = write_switchback_experiment(tmp_path, seed=seed, latency_shock_sd=30.0,
                                        sessions=True)
    config = switchback_config(tmp_path, guardrails=[LATENCY_GUARDRAIL])
    report = run_analysis(config, "by-hour", as_of=AS_OF, now=AS_OF)
    (guardrail,) = report.guardrails
    assert guardrail.switchback is not None
    assert guardrail.verdict != "FAIL" and report.decision.outcome != "rollback"
    expected = window_estimate(truth, "latency")
    assert math.isclose(guardrail.abs_effect or 0, expected.abs_effect, rel_tol=1e-9)
    assert math.isclose(guardrail.ci_high or 0, expected.ci_high, rel_tol=1e-9)
    assert math.isclose(guardrail.rel_effect or 0,
                        expected.abs_effect / expected.mean_control, rel_tol=1e-9)
    # the window-level interval still allows the tolerated harm: not shown within it
    assert (guardrail.rel_ci_high or 0) > LATENCY_GUARDRAIL["tolerance"]
    assert guardrail.verdict == "INSUFFICIENT_DATA"

    # the same logs tested per unit, as before the windows
    import rollout.experiments.switchback_data as switchback_data

    monkeypatch.setattr(switchback_data, "switchback_cells_of", lambda *_, **__: None)
    (per_unit,) = run_analysis(config, "by-hour", as_of=AS_OF, now=AS_OF).guardrails
    assert per_unit.switchback is None and per_unit.verdict == per_unit_verdict
    if per_unit_verdict == "FAIL":  # harm beyond the tolerance, by its estimate
        assert (per_unit.rel_effect or 0) > LATENCY_GUARDRAIL["tolerance"]
    else:  # harm ruled out, by an interval narrower than the windows'
        assert (per_unit.rel_ci_high or 0) <= LATENCY_GUARDRAIL["tolerance"]
        assert ((per_unit.rel_ci_high or 0) - (per_unit.rel_ci_low or 0)
                < (guardrail.rel_ci_high or 0) - (guardrail.rel_ci_low or 0))
    # the per-unit figures are kept beside the window-level ones
    assert guardrail.switchback.naive_abs_effect == per_unit.abs_effect
    assert guardrail.switchback.naive_p_value == per_unit.p_value


def test_every_metric_of_a_switchback_experiment_is_tested_by_its_windows(
        tmp_path: Path) -> None:
    truth = write_switchback_experiment(tmp_path, latency_shock_sd=30.0)
    config = switchback_config(tmp_path, secondary=[{"name": "latency", "type": "mean"}],
                               guardrails=[LATENCY_GUARDRAIL])
    report = run_analysis(config, "by-hour", as_of=AS_OF, now=AS_OF)
    primary, secondary = report.metrics
    assert (primary.metric, secondary.metric) == ("revenue", "latency")
    # each metric's own events, cut by the same windows
    for metric, result in (("revenue", primary), ("latency", secondary)):
        expected = window_estimate(truth, metric)
        assert result.switchback is not None and result.sequential is None
        for field in ("abs_effect", "ci_low", "ci_high", "p_value", "std_error",
                      "mean_control", "mean_treatment"):
            assert math.isclose(getattr(result, field) or 0, getattr(expected, field),
                                rel_tol=1e-9), (metric, field)
        summary = result.switchback
        assert (summary.windows_control, summary.windows_treatment) == (
            expected.cells_control, expected.cells_treatment)
        assert abs((summary.ri_p_value or 0) - expected.ri_p_value) < 0.05
        # significant only when both tests say so (one metric and arm: nothing to correct)
        assert result.adjusted_p_value == max(summary.regression_p_value or 0,
                                              summary.ri_p_value or 0)
    assert secondary.switchback.naive_p_value is not None
    assert secondary.switchback.naive_p_value != secondary.p_value
    (guardrail,) = report.guardrails
    assert guardrail.abs_effect == secondary.abs_effect  # the same cells of latency

    from rollout.experiments.report import render_html
    from serving.cli.analyze import summary_text

    text = summary_text(report)
    lines = text.splitlines()
    window_lines = [i for i, line in enumerate(lines)
                    if "switchback by 3600 s windows × city (" in line]
    # one window line under each metric's line: primary, secondary, guardrail
    assert [lines[i - 1].split()[:2] for i in window_lines] == [
        ["primary", "revenue"], ["secondary", "latency"], ["guardrail", "latency"]]
    assert all("randomization p =" in lines[i] for i in window_lines)
    assert render_html(report).count("switchback by 3600 s windows") == 3


def test_relative_intervals_of_window_effects_cover_a_planted_lift() -> None:
    # A relative guardrail reads this interval; the control level is 11 (the
    # mean of the two regions' 10 and 12), so the planted lift is 2/11.
    from rollout.experiments.switchback import effect_of

    sim = simulate_cells(np.random.default_rng(21), runs=1000, effect=2.0)
    effects = [effect_of(r, 0.05) for r in window_tests(sim, draws=1)]
    covered = np.mean([e.rel_ci_low <= 2.0 / 11.0 <= e.rel_ci_high for e in effects])
    print(f"95% relative CI coverage over 1000 runs: {covered:.3f}")
    assert 0.935 <= covered <= 0.965
