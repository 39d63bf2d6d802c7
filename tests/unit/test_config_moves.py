"""A config change that would move running units to another experiment or arm
is found by routing a sample of the logged units under both configs, and
refused by `rampart serve` unless --allow-moves; `rampart config check`
reports it. Ramps and more coverage only add units and are no moves."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from serving.cli.config_check import (
    applied_config_path,
    guard_deploy,
    identity_table,
    record_applied,
)
from serving.cli.main import main
from serving.kernel.config import RampartConfig, parse_config
from serving.routing.assignment import buckets_vectorized
from serving.routing.moves import LoggedUnit, MovesReport, count_moves
from serving.routing.router import RoutingTable, route
from telemetry.decision_log import DecisionLogWriter, DecisionRecord

UNITS = [f"user-{i}" for i in range(6000)]


def arms(*weights: int, names: tuple[str, ...] = ("control", "treatment")) -> list[dict[str, Any]]:
    return [{"name": name, "model": "clf", "version": "2" if i else "1", "weight_bp": w}
            for i, (name, w) in enumerate(zip(names, weights, strict=True))]


def document(tmp: Path | None = None) -> dict[str, Any]:
    """Layer ``checkout`` (holdout [0, 500)): ``exp-a`` on [500, 5000), ``exp-b``
    on [5500, 10000); then ``solo`` (90/10), outside any layer."""
    data: dict[str, Any] = {
        "models": [{"name": "clf", "versions": ["1", "2"]}],
        "default": {"model": "clf", "version": "1"},
        "layers": [{"id": "checkout", "salt": "layer-checkout", "holdout_bp": 500}],
        "experiments": [
            {"id": "exp-a", "salt": "a-1", "arms": arms(5000, 5000), "layer": "checkout",
             "layer_buckets": [500, 5000]},
            {"id": "exp-b", "salt": "b-1", "arms": arms(5000, 5000), "layer": "checkout",
             "layer_buckets": [5500, 10_000]},
            {"id": "solo", "salt": "solo-1", "arms": arms(9000, 1000)},
        ],
    }
    if tmp is not None:
        data["data_dir"] = str(tmp / "state")
        data["decision_log"] = {"path": str(tmp / "decisions"), "spill_dir": None}
    return data


def experiment(data: dict[str, Any], experiment_id: str) -> dict[str, Any]:
    found: dict[str, Any] = next(e for e in data["experiments"] if e["id"] == experiment_id)
    return found


def changed(change: Any, tmp: Path | None = None) -> dict[str, Any]:
    data = copy.deepcopy(document(tmp))
    change(data)
    return data


def tables(new: dict[str, Any]) -> tuple[RoutingTable, RoutingTable]:
    return identity_table(parse_config(document())), identity_table(parse_config(new))


def logged(table: RoutingTable, contexts: dict[str, dict[str, str]] | None = None
           ) -> dict[str, list[LoggedUnit]]:
    """The units each experiment would have logged under ``table``."""
    samples: dict[str, list[LoggedUnit]] = {}
    for unit in UNITS:
        context = (contexts or {}).get(unit, {})
        decision = route(table, unit, context)
        if decision.experiment_id is not None:
            samples.setdefault(decision.experiment_id, []).append(LoggedUnit(unit, context))
    return samples


def report_of(change: Any) -> MovesReport:
    old, new = tables(changed(change))
    return count_moves(old, new, logged(old))


def only(report: MovesReport) -> tuple[str, tuple[str, ...], int, int]:
    (moves,) = report.experiments
    return moves.experiment_id, moves.changes, moves.sampled_units, moves.moved_units


# ----------------------------------------------------------------- counting


def test_an_unchanged_config_moves_nothing() -> None:
    assert report_of(lambda d: None).experiments == ()


def test_a_new_salt_moves_every_unit_its_new_hash_puts_in_another_arm() -> None:
    def resalt(d: dict[str, Any]) -> None:
        experiment(d, "exp-a")["salt"] = "a-2"

    exp_id, changes, sampled, moved = only(report_of(resalt))
    assert (exp_id, changes) == ("exp-a", ("salt",))
    assert sampled > 2000
    # 50/50: a unit stays only where its new arm happens to be its old one
    assert abs(moved / sampled - 0.5) < 0.03, (moved, sampled)


def test_a_new_layer_salt_moves_units_out_of_the_range_and_between_arms() -> None:
    def resalt(d: dict[str, Any]) -> None:
        d["layers"][0]["salt"] = "layer-checkout-2"

    report = report_of(resalt)
    assert {m.experiment_id for m in report.experiments} == {"exp-a", "exp-b"}
    for moves in report.experiments:
        assert moves.changes == ("layer salt",)
        # a unit stays only if its new layer bucket is in the same range (~45%)
        # and its arm is unchanged (its own salt did not change)
        assert 0.45 < moves.moved_units / moves.sampled_units < 0.65


def test_a_shifted_range_moves_the_units_of_the_part_it_left_only() -> None:
    def shift(d: dict[str, Any]) -> None:
        experiment(d, "exp-a")["layer_buckets"] = [1000, 5500]

    old, new = tables(changed(shift))
    samples = logged(old)
    exp_id, changes, sampled, moved = only(count_moves(old, new, samples))
    assert (exp_id, changes) == ("exp-a", ("layer_buckets",))
    in_layer = buckets_vectorized("layer-checkout", [u.unit_id for u in samples["exp-a"]])
    assert sampled == len(samples["exp-a"])
    assert moved == int(np.sum(in_layer < 1000)) > 0


def test_a_weight_ramp_and_more_coverage_move_nothing() -> None:
    def ramp(d: dict[str, Any]) -> None:
        experiment(d, "solo")["arms"] = arms(8000, 2000)
        experiment(d, "exp-b")["coverage_bp"] = 10_000

    def start(d: dict[str, Any]) -> None:
        experiment(d, "exp-b")["coverage_bp"] = 6000

    before = changed(start)
    after = changed(lambda d: (start(d), ramp(d)))
    old, new = identity_table(parse_config(before)), identity_table(parse_config(after))
    samples = logged(old)
    assert count_moves(old, new, samples).experiments == ()
    # the ramp does put control units on the treatment: by design, not a move
    assert any(route(old, u.unit_id).arm != route(new, u.unit_id).arm
               for u in samples["solo"])


def test_a_shrinking_treatment_moves_its_units_back() -> None:
    exp_id, changes, sampled, moved = only(
        report_of(lambda d: experiment(d, "solo").update(arms=arms(9500, 500))))
    assert (exp_id, changes) == ("solo", ("arm bucket ranges",))
    assert 0.3 < moved / (sampled * 0.1) < 0.7  # half of the treatment's tenth


def test_reordered_arms_move_every_unit() -> None:
    def reorder(d: dict[str, Any]) -> None:
        experiment(d, "exp-a")["arms"] = arms(5000, 5000, names=("treatment", "control"))

    exp_id, changes, sampled, moved = only(report_of(reorder))
    assert (exp_id, changes) == ("exp-a", ("arm order",))
    # the control owns what the treatment lane leaves: every bucket changes arm
    assert moved == sampled > 0


def test_an_added_or_removed_experiment_is_no_move() -> None:
    def add_remove(d: dict[str, Any]) -> None:
        d["experiments"] = [e for e in d["experiments"] if e["id"] != "exp-b"]
        d["experiments"].append({"id": "new", "salt": "new-1", "arms": arms(5000, 5000),
                                 "layer": "checkout", "layer_buckets": [5000, 5500]})

    assert report_of(add_remove).experiments == ()


def test_units_logged_with_a_numeric_rule_still_count_although_the_log_keeps_text() -> None:
    def targeted(d: dict[str, Any]) -> None:
        experiment(d, "solo")["targeting"] = [{"attribute": "age", "op": "gte", "value": 18}]

    before = changed(targeted)
    after = changed(lambda d: (targeted(d), experiment(d, "solo").update(salt="solo-2")))
    old, new = identity_table(parse_config(before)), identity_table(parse_config(after))
    # what the gateway saw (a number) and what the log kept (its text)
    solo = [u for u in UNITS if route(old, u, {"age": 30}).experiment_id == "solo"]
    samples = {"solo": [LoggedUnit(u, {"age": "30"}) for u in solo]}
    exp_id, changes, sampled, moved = only(count_moves(old, new, samples))
    assert (exp_id, changes, sampled) == ("solo", ("salt",), len(solo))
    assert abs(moved / sampled - 0.18) < 0.04  # 1 - 0.9² - 0.1²


# ----------------------------------------------------------------- command line


def write_config(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def write_log(tmp: Path, data: dict[str, Any]) -> None:
    """The decisions a gateway routing ``data`` would log for UNITS."""
    table = identity_table(parse_config(data))
    writer = DecisionLogWriter(tmp / "decisions", "test", batch_rows=100_000,
                               flush_interval_s=3600)
    for i, unit in enumerate(UNITS):
        d = route(table, unit, {"platform": "web"})
        writer.append(DecisionRecord(
            f"r-{i}", d.unit_id, d.unit_type, d.experiment_id, d.layer, d.arm, d.model.name,
            d.model.version, "primary", 1_790_000_000.0 + i, {"f0": 1.0}, 0.5, 1.0, "ok",
            None, {"platform": "web"}, None, "body", d.arm_weights))
    writer.flush()
    writer.close()


def resalted(data: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(data)
    experiment(out, "solo")["salt"] = "solo-2"
    return out


LINE = re.compile(r"^experiment 'solo': ([\d,]+) of ([\d,]+) logged units would move "
                  r"\(salt changed\)")


def test_config_check_counts_the_moves_on_the_decision_log(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    old = document(tmp_path)
    write_log(tmp_path, old)
    old_file = write_config(tmp_path / "old.yaml", old)
    new_file = write_config(tmp_path / "new.yaml", resalted(old))
    assert main(["config", "check", str(new_file), "--against", str(old_file)]) == 2
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1, out
    match = LINE.match(out[0])
    assert match is not None, out
    moved, sampled = (int(g.replace(",", "")) for g in match.groups())
    solo = sum(route(identity_table(parse_config(old)), u, {}).experiment_id == "solo"
               for u in UNITS)
    assert sampled == solo and 0.1 < moved / sampled < 0.26

    assert main(["config", "check", str(new_file), "--against", str(old_file),
                 "--json"]) == 2
    body = json.loads(capsys.readouterr().out)
    assert body["moves"] is True and body["decisions"] == str(tmp_path / "decisions")
    assert body["experiments"] == [{"experiment_id": "solo", "changes": ["salt"],
                                    "sampled_units": sampled, "moved_units": moved}]


def test_config_check_passes_a_ramp_and_samples_at_most_what_it_is_told(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    old = document(tmp_path)
    write_log(tmp_path, old)
    old_file = write_config(tmp_path / "old.yaml", old)
    ramp = copy.deepcopy(old)
    experiment(ramp, "solo")["arms"] = arms(5000, 5000)
    ramp_file = write_config(tmp_path / "ramp.yaml", ramp)
    assert main(["config", "check", str(ramp_file), "--against", str(old_file)]) == 0
    assert "no logged unit would move" in capsys.readouterr().out
    new_file = write_config(tmp_path / "new.yaml", resalted(old))
    assert main(["config", "check", str(new_file), "--against", str(old_file), "--json",
                 "--sample", "100"]) == 2
    (moves,) = json.loads(capsys.readouterr().out)["experiments"]
    assert moves["sampled_units"] == 100


def test_config_check_against_the_applied_config_and_without_one(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    old = document(tmp_path)
    new_file = write_config(tmp_path / "new.yaml", resalted(old))
    assert main(["config", "check", str(new_file)]) == 0
    out = capsys.readouterr().out
    assert f"no applied config at {tmp_path / 'state' / 'applied-config.json'}: nothing to " \
           "compare" in out
    record_applied(parse_config(old))
    assert applied_config_path(parse_config(old)).is_file()
    # an applied config but no decision log yet: nothing logged can move
    assert main(["config", "check", str(new_file)]) == 0
    assert f"no decision log at {tmp_path / 'decisions'}" in capsys.readouterr().out
    write_log(tmp_path, old)
    assert main(["config", "check", str(new_file)]) == 2
    assert LINE.match(capsys.readouterr().out)


def test_serve_refuses_a_config_that_moves_units_before_starting_anything(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    def must_not_run(*_: Any, **__: Any) -> Any:
        raise AssertionError("the refusal comes before anything starts")

    monkeypatch.setattr("serving.cli.main.routing_table", must_not_run)
    monkeypatch.setattr("serving.cli.launch.start_gateway", must_not_run)
    old = document(tmp_path)
    experiment(old, "exp-a")["salt"] = "a-1"
    write_log(tmp_path, old)
    record_applied(parse_config(old))
    new = resalted(old)
    experiment(new, "exp-a")["salt"] = "a-2"
    new_file = write_config(tmp_path / "new.yaml", new)
    assert main(["serve", "--config", str(new_file)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2, err
    assert all(line.startswith("rampart: error: experiment '") and line.endswith(
        "; pass --allow-moves to apply anyway") for line in err), err
    assert {line.split("'")[1] for line in err} == {"exp-a", "solo"}


def test_allow_moves_applies_anyway_and_says_what_moves(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    old = document(tmp_path)
    write_log(tmp_path, old)
    record_applied(parse_config(old))
    new: RampartConfig = parse_config(resalted(old))
    guard_deploy(new, allow_moves=True)
    out = capsys.readouterr().out
    assert out.startswith("applying anyway (--allow-moves): experiment 'solo': ")
    guard_deploy(parse_config(old), allow_moves=False)  # the applied config itself: silent
    assert capsys.readouterr().out == ""
