"""The design scenarios of ``rampart demo`` without a gateway: their configs,
what they read from a decision log, the outcomes they plant and the truths
they check the analysis against."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from serving.cli.common import DEFAULT_CONFIG, default_config_document
from serving.cli.demo.designs import (
    DESIGN_SCENARIOS,
    FACTORIAL_EXPERIMENT,
    LAYERED_LAYER,
    MICROS,
    REVENUE_MEAN,
    SECOND_LAYER,
    SWITCHBACK_EXPERIMENT,
    DesignResult,
    LoggedDecisions,
    PlantedEffect,
    SwitchbackWorld,
    design_config,
    design_routing,
    factorial_lift,
    factorial_truth,
    layer_independence,
    layer_splits,
    region_of,
    switchback_events,
    unit_revenue_events,
    units_in_two_places,
)
from serving.cli.main import build_parser
from serving.kernel.config import RampartConfig, parse_config
from serving.routing.router import build_routing_table

START = dt.datetime(2026, 11, 30, 12, 0, tzinfo=dt.UTC)


def base_config() -> RampartConfig:
    return parse_config(default_config_document(), source=str(DEFAULT_CONFIG))


def config_of(scenario: Any, tmp_path: Path) -> RampartConfig:
    return design_config(base_config(), scenario, tmp_path / "run", START)


@pytest.mark.parametrize("scenario", DESIGN_SCENARIOS)
def test_each_design_is_a_valid_config_with_its_logs_in_the_run_directory(
        scenario: Any, tmp_path: Path) -> None:
    config = config_of(scenario, tmp_path)
    base = base_config()
    assert config.models == base.models and config.default == base.default
    assert Path(str(config.decision_log.path)) == tmp_path / "run" / "decisions"
    assert Path(str(config.outcomes_log.path)) == tmp_path / "run" / "outcomes"
    assert config.preregistration_dir == tmp_path / "run" / "preregistrations"
    assert {e.id for e in config.experiments}.isdisjoint(e.id for e in base.experiments)
    assert all(e.analysis is not None and e.analysis.start == START
               for e in config.experiments)


def test_the_layers_design_has_a_holdout_a_targeted_experiment_and_a_second_layer(
        tmp_path: Path) -> None:
    config = config_of("layers", tmp_path)
    layers = {layer.id: layer for layer in config.layers}
    assert layers[LAYERED_LAYER].holdout_bp == 1000
    assert layers[LAYERED_LAYER].holdout_analysis is not None
    ours = [e for e in config.experiments if e.layer == LAYERED_LAYER]
    assert len(ours) == 2 and sum(1 for e in ours if e.targeting) == 1
    owned = sum(stop - start for e in ours if e.layer_buckets for start, stop in
                [e.layer_buckets])
    # part of the first layer is no experiment's, so units reach the second
    assert 1000 + owned < 10_000
    assert any(e.layer == SECOND_LAYER for e in config.experiments)


def test_the_switchback_design_uses_seconds_long_windows_crossed_with_regions(
        tmp_path: Path) -> None:
    (experiment,) = config_of("switchback", tmp_path).experiments
    assert experiment.id == SWITCHBACK_EXPERIMENT
    assert experiment.switchback is not None
    assert (experiment.switchback.window_s, experiment.switchback.burn_in_s,
            experiment.switchback.region) == (2, 1, "region")


def test_the_factorial_design_crosses_a_model_factor_with_a_label_factor(
        tmp_path: Path) -> None:
    (experiment,) = config_of("factorial", tmp_path).experiments
    assert experiment.id == FACTORIAL_EXPERIMENT
    served = {a.name: a.version for a in experiment.arms}
    assert served == {"model.champion_label.plain": "champion",
                      "model.champion_label.badge": "champion",
                      "model.challenger_label.plain": "challenger",
                      "model.challenger_label.badge": "challenger"}


@pytest.mark.parametrize("scenario", DESIGN_SCENARIOS)
def test_the_demo_command_takes_each_design_scenario(scenario: str) -> None:
    args = build_parser().parse_args(["demo", "--scenario", scenario, "--json"])
    assert args.scenario == scenario and args.json


def log_of(rows: list[tuple[str, str | None, str, str | None]]) -> LoggedDecisions:
    n = len(rows)
    return LoggedDecisions([r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows],
                           [r[3] for r in rows], np.arange(n, dtype=np.int64) * MICROS,
                           [None] * n)


def test_layer_splits_count_distinct_units_per_place() -> None:
    log = log_of([
        ("u1", None, "holdout", "layer:checkout"),
        ("u1", None, "holdout", "layer:checkout"),
        ("u2", "ranker", "control", "layer:checkout"),
        ("u3", "ranker", "treatment", "layer:checkout"),
        ("u4", "ranker", "ineligible", "layer:checkout"),
        ("u5", "pricing", "treatment", "layer:checkout"),
        ("u6", "free", "treatment", "experiment:free"),
        ("u7", None, "default", "default"),
    ])
    (split,) = layer_splits(log)
    assert split.layer == "checkout" and split.holdout == 1
    assert split.experiments == {"pricing": {"treatment": 1},
                                 "ranker": {"control": 1, "treatment": 1}}
    assert split.ineligible == {"ranker": 1}
    assert units_in_two_places(log) == {"checkout": 0}


def test_a_unit_in_two_places_of_a_layer_is_counted() -> None:
    log = log_of([
        ("u1", "ranker", "control", "layer:checkout"),
        ("u1", "pricing", "control", "layer:checkout"),
        ("u2", None, "holdout", "layer:checkout"),
        ("u2", "ranker", "treatment", "layer:checkout"),
        ("u3", "ranker", "treatment", "layer:checkout"),
        ("u3", "ranker", "control", "layer:checkout"),  # two arms, one experiment: allowed
    ])
    assert units_in_two_places(log) == {"checkout": 2}


def routing(config: RampartConfig) -> Any:
    return build_routing_table(config, lambda _model, version: version)


UNITS = [f"user-{i:06d}" for i in range(40_000)]


def test_the_layers_of_the_design_allocate_independently(tmp_path: Path) -> None:
    result = layer_independence(routing(config_of("layers", tmp_path)), UNITS, LAYERED_LAYER,
                                SECOND_LAYER)
    assert result.units == len(UNITS) and result.df == 3
    assert set(result.table) == {"holdout", "checkout-ranker", "checkout-pricing", "(none)"}
    assert result.p_value > 0.001
    # the holdout's share is its 10% of the buckets
    held = sum(result.table["holdout"].values())
    assert abs(held / len(UNITS) - 0.10) < 0.01


def test_the_independence_test_finds_two_layers_sharing_a_salt(tmp_path: Path) -> None:
    document = config_of("layers", tmp_path).model_dump(mode="json")
    document["layers"][1]["salt"] = document["layers"][0]["salt"]
    result = layer_independence(routing(parse_config(document)), UNITS, LAYERED_LAYER,
                                SECOND_LAYER)
    assert result.p_value < 1e-12


def test_unit_events_are_the_same_for_a_unit_whatever_the_order_or_company() -> None:
    units = [f"u{i}" for i in range(50)]
    at = np.full(50, 1_700_000_000 * MICROS, dtype=np.int64)
    first = unit_revenue_events(units, at, np.zeros(50), seed=3)
    reversed_ = unit_revenue_events(units[::-1], at, np.zeros(50), seed=3)

    def values(table: pa.Table) -> dict[tuple[str, int], float]:
        rows = zip(table["unit_id"].to_pylist(), table["timestamp"].cast(pa.int64()).to_pylist(),
                   table["value"].to_pylist(), strict=True)
        return {(u, int(t > at[0])): v for u, t, v in rows}

    assert values(first) == values(reversed_)
    assert first["experiment_id"].null_count == first.num_rows  # untagged


def test_unit_events_carry_the_lift_after_exposure_only() -> None:
    n = 200_000
    units = [f"u{i}" for i in range(n)]
    at = np.full(n, 1_700_000_000 * MICROS, dtype=np.int64)
    lift = np.where(np.arange(n) % 2 == 0, 1.0, 0.0)
    table = unit_revenue_events(units, at, lift, seed=5)
    value = table["value"].to_numpy()
    after = table["timestamp"].cast(pa.int64()).to_numpy() >= at[0]
    treated = np.concatenate([lift, lift]) > 0
    post = value[after & treated].mean() - value[after & ~treated].mean()
    pre = value[~after & treated].mean() - value[~after & ~treated].mean()
    assert abs(post - 1.0) < 0.05 and abs(pre) < 0.05
    assert abs(value[~after].mean() - REVENUE_MEAN) < 0.05
    assert np.all(table["timestamp"].cast(pa.int64()).to_numpy()[after] < at[0] + MICROS)


def alternating(windows: np.ndarray, regions: Any) -> np.ndarray:
    """Treatment in odd windows: every window starts with a switch."""
    return (np.asarray(windows) % 2).astype(np.int64)


def test_switchback_events_carry_the_previous_arm_into_a_window_after_a_switch() -> None:
    window_s = 2
    at = (np.arange(0, 40 * window_s * 10) * (MICROS // 10)).astype(np.int64) + 10**15
    at -= at[0] % (window_s * MICROS)  # start on a window boundary
    regions = ["north"] * at.size
    world = SwitchbackWorld(lift=3.0, carry_over_s=1.0, shock_sd=0.0, request_sd=0.0)
    table = switchback_events(at, regions, ["u"] * at.size, alternating, window_s, world,
                              seed=1)
    value = table["value"].to_numpy()
    window = at // (window_s * MICROS)
    into = (at - window * window_s * MICROS) / MICROS
    treated_now = window % 2 == 1
    expected = REVENUE_MEAN + 3.0 * np.where(into < 1.0, ~treated_now, treated_now)
    np.testing.assert_allclose(value, expected)
    # the second half of the windows, what a 1 s burn-in keeps, shows the whole effect
    late = into >= 1.0
    assert value[late & treated_now].mean() - value[late & ~treated_now].mean() == 3.0
    # the whole windows show none of it here: each arm's first half is the other's
    assert value[treated_now].mean() - value[~treated_now].mean() == 0.0


def test_switchback_events_without_a_switch_have_no_carry_over() -> None:
    at = (np.arange(100) * (MICROS // 10)).astype(np.int64) + 10**15
    world = SwitchbackWorld(lift=3.0, carry_over_s=1.0, shock_sd=0.0, request_sd=0.0)
    table = switchback_events(at, ["south"] * 100, ["u"] * 100,
                              lambda w, r: np.ones(len(w), dtype=np.int64), 2, world, seed=1)
    np.testing.assert_allclose(table["value"].to_numpy(), REVENUE_MEAN + 3.0)


def test_switchback_shocks_are_shared_by_a_window_cell() -> None:
    at = np.repeat(np.arange(4) * 2 * MICROS + 10**15 - (10**15 % (2 * MICROS)), 50).astype(
        np.int64) + np.tile(np.arange(50) * 1000, 4)
    world = SwitchbackWorld(lift=0.0, shock_sd=2.0, request_sd=0.0)
    table = switchback_events(at, ["north"] * at.size, ["u"] * at.size,
                              lambda w, r: np.zeros(len(w), dtype=np.int64), 2, world, seed=4)
    cells = table["value"].to_numpy().reshape(4, 50)
    assert np.all(cells.std(axis=1) < 1e-9) and cells[:, 0].std() > 0.1


def test_the_factorial_truths_are_the_contrasts_of_the_planted_cell_lifts() -> None:
    mean = {(m, label): factorial_lift(f"model.{m}_label.{label}")
            for m in ("champion", "challenger") for label in ("plain", "badge")}
    model = ((mean["challenger", "plain"] - mean["champion", "plain"])
             + (mean["challenger", "badge"] - mean["champion", "badge"])) / 2
    label = ((mean["champion", "badge"] - mean["champion", "plain"])
             + (mean["challenger", "badge"] - mean["challenger", "plain"])) / 2
    interaction = (mean["challenger", "badge"] - mean["champion", "badge"]
                   - mean["challenger", "plain"] + mean["champion", "plain"])
    truth = factorial_truth()
    assert truth == pytest.approx({("model",): model, ("label",): label,
                                   ("model", "label"): interaction})
    assert interaction != 0 and factorial_lift("not-a-cell") == 0.0


def test_regions_are_stable_and_both_used() -> None:
    users = [f"user-{i:06d}" for i in range(2000)]
    regions = region_of(users)
    assert regions == region_of(users) and 0.4 < regions.count("north") / 2000 < 0.6


def test_a_result_fails_when_a_checked_interval_misses_or_a_check_fails() -> None:
    covered = PlantedEffect("a", 1.0, 1.1, 0.5, 1.5)
    missed = PlantedEffect("b", 1.0, 2.1, 1.5, 2.5)
    shown = PlantedEffect("c", 1.0, 2.1, 1.5, 2.5, checked=False)
    no_interval = PlantedEffect("d", 1.0, None, None, None)
    assert covered.covered and not missed.covered and not no_interval.covered
    assert DesignResult("x", [covered, shown], {"holds": True}).ok
    assert not DesignResult("x", [covered, missed]).ok
    assert not DesignResult("x", [covered], {"holds": False}).ok
    body = DesignResult("x", [covered, shown], {"holds": True}, {"units": 3}).as_json()
    assert body["ok"] and body["units"] == 3
    assert [e["covered"] for e in body["effects"]] == [True, False]
    assert "does not cover" in missed.line() and "not checked" in shown.line()


def test_design_routing_names_only_what_a_config_file_holds() -> None:
    for scenario in DESIGN_SCENARIOS:
        routing_part = design_routing(scenario, "2026-11-30T12:00:00Z")
        assert set(routing_part) == {"experiments", "layers"}
