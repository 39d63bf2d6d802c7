"""``rampart analyze --holdout LAYER``: a layer's holdout (the control) against
every unit its experiments served (``shipped``), by the layer's pre-registered
``holdout_analysis``.

The decision log is made by routing real units through a routing table built
from a config with a layer and a holdout, so the rows carry the layer names the
router writes. The effect, its interval and p-value are checked against an
independent Welch test; the sample-ratio test against what the layer logs (not
the holdout's share of all buckets, which would alarm falsely); and every
refusal is one line and exit 2."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from scipy import stats

from rollout.experiments.data import layer_route, load_holdout
from rollout.experiments.holdout import SRM_NOT_TESTED, analyze_holdout
from serving.cli.main import main
from serving.kernel.config import parse_config
from serving.kernel.errors import ConfigError
from serving.routing.assignment import buckets_vectorized
from serving.routing.router import RolloutRoute, build_routing_table, route
from telemetry.decision_log import DECISION_SCHEMA, batch_table
from telemetry.outcomes_log import OUTCOME_SCHEMA
from tests.unit.fakes import InMemoryRegistry

START = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
AS_OF = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)
AS_OF_TEXT = "2026-12-01T00:00:00Z"
DAY = 86_400.0
MICROS = 1_000_000
HOLDOUT_BP = 1000
UNITS = 12_000
SHIPPED_LIFT = 0.8  # revenue per unit, shipped over holdout
PLAN: dict[str, Any] = {
    "start": "2026-11-01T00:00:00Z",
    "primary": {"name": "revenue", "type": "mean"},
    "alpha": 0.05, "mde": 0.05, "baseline": 10.0,
    # compared with a plain Welch test: no pre-period covariate
    "cuped": False,
}
ARMS = [{"name": "control", "model": "clf", "version": "1", "weight_bp": 5000},
        {"name": "treatment", "model": "clf", "version": "2", "weight_bp": 5000}]


def document(tmp: Path, holdout_bp: int = HOLDOUT_BP, plan: dict[str, Any] | None = PLAN,
             targeted_b: bool = True, search_holdout_bp: int | None = None
             ) -> dict[str, Any]:
    """Layer ``checkout``: holdout ``[0, holdout_bp)``; ``exp-a`` on ``[1000,
    4000)`` at 50% coverage, no targeting; ``exp-b`` on ``[4000, 7000)``, US only
    (or untargeted); ``[7000, 10000)`` owned by none, so those units go on to
    ``free``, outside the layer. With ``search_holdout_bp``, layer ``search``
    (experiment ``s1`` on ``[search_holdout_bp, 5000)``) is routed first."""
    layer: dict[str, Any] = {"id": "checkout", "salt": "layer-checkout",
                             "holdout_bp": holdout_bp}
    if plan is not None:
        layer["holdout_analysis"] = plan
    exp_b: dict[str, Any] = {"id": "exp-b", "salt": "exp-b", "arms": ARMS, "layer": "checkout",
                             "layer_buckets": [4000, 7000]}
    if targeted_b:
        exp_b["targeting"] = [{"attribute": "country", "op": "in", "values": ["US"]}]
    search = [] if search_holdout_bp is None else [
        {"id": "s1", "salt": "s1", "arms": ARMS, "layer": "search",
         "layer_buckets": [search_holdout_bp, 5000]}]
    return {
        "data_dir": str(tmp),
        "models": [{"name": "clf", "versions": ["1", "2"]}],
        "default": {"model": "clf", "version": "1"},
        "layers": [layer] + ([] if search_holdout_bp is None else [
            {"id": "search", "salt": "layer-search", "holdout_bp": search_holdout_bp}]),
        "experiments": [
            *search,
            {"id": "exp-a", "salt": "exp-a", "arms": ARMS, "layer": "checkout",
             "layer_buckets": [1000, 4000], "coverage_bp": 5000},
            exp_b,
            {"id": "free", "salt": "free", "arms": ARMS}],
        "decision_log": {"path": str(tmp / "decisions")},
        "outcomes_log": {"path": str(tmp / "outcomes")},
    }


def write_config(tmp: Path, **options: Any) -> Path:
    path = tmp / "rampart.yaml"
    path.write_text(yaml.safe_dump(document(tmp, **options)))
    return path


def _ts(seconds: np.ndarray) -> pa.Array:
    return pa.array(np.round(seconds * MICROS).astype(np.int64)).cast(
        pa.timestamp("us", tz="UTC"))


def routed(tmp: Path, seed: int = 7, rollout: bool = False, **options: Any
           ) -> dict[str, Any]:
    """Route every unit through the config's routing table, twice (a day apart),
    and return the decisions as columns. With ``rollout``, a rollout of the
    default version clf/1 to clf/2 splits half of the units that reach clf/1."""
    config = parse_config(document(tmp, **options))
    rollouts = [RolloutRoute("r1", "rollout-r1", "user_id", "clf", "1", "2", 5000)
                ] if rollout else []
    table = build_routing_table(config, InMemoryRegistry().resolve, rollouts=rollouts)
    rng = np.random.default_rng(seed)
    ids = [f"user-{i}" for i in range(UNITS)]
    countries = np.where(rng.random(UNITS) < 0.5, "US", "CA")
    first_at = START.timestamp() + DAY + rng.uniform(0, 10 * DAY, UNITS)
    rows: dict[str, list[Any]] = {name: [] for name in (
        "unit_id", "experiment_id", "layer", "arm", "model_version", "country", "timestamp",
        "arm_weights")}
    for k in range(2):
        for unit, country, at in zip(ids, countries, first_at, strict=True):
            decision = route(table, unit, {"country": str(country)})
            rows["unit_id"].append(decision.unit_id)
            rows["experiment_id"].append(decision.experiment_id)
            rows["layer"].append(decision.layer)
            rows["arm"].append(decision.arm)
            rows["model_version"].append(decision.model.version)
            rows["country"].append(str(country))
            rows["timestamp"].append(at + k * DAY)
            rows["arm_weights"].append(decision.arm_weights)
    return {name: np.array(values, dtype=object) for name, values in rows.items()} | {
        "timestamp": np.array(rows["timestamp"], dtype=np.float64), "ids": ids,
        "first_at": first_at}


def decision_table(rows: dict[str, Any], keep: np.ndarray | None = None) -> pa.Table:
    keep = np.ones(len(rows["unit_id"]), dtype=bool) if keep is None else keep
    n = int(keep.sum())
    return batch_table(n, {
        "request_id": [f"r{i}" for i in range(n)], "unit_id": list(rows["unit_id"][keep]),
        "unit_type": "user_id", "experiment_id": list(rows["experiment_id"][keep]),
        "layer": list(rows["layer"][keep]), "arm": list(rows["arm"][keep]),
        "model_name": "clf", "model_version": list(rows["model_version"][keep]),
        "role": "primary", "timestamp": rows["timestamp"][keep],
        "context": pa.array([[("country", c)] for c in rows["country"][keep]],
                            type=DECISION_SCHEMA.field("context").type),
        "arm_weights": list(rows["arm_weights"][keep]), "prediction": 0.5,
        "latency_ms": 1.0, "status": "ok",
    })


def groups(rows: dict[str, Any]) -> dict[str, np.ndarray]:
    """Independently of the analysis: each unit's group by its layer decisions
    (True holdout, False shipped; units the layer did not log are absent), and
    whether it is in the layer at all."""
    in_layer = rows["layer"] == "layer:checkout"
    counted = in_layer & (rows["arm"] != "ineligible")
    held = {u for u, a in zip(rows["unit_id"][counted], rows["arm"][counted], strict=True)
            if a == "holdout"}
    members = set(rows["unit_id"][counted])
    ids = np.array(rows["ids"], dtype=object)
    member = np.array([u in members for u in ids])
    holdout = np.array([u in held for u in ids])
    return {"member": member, "holdout": holdout}


def write_logs(tmp: Path, rows: dict[str, Any], decisions: pa.Table | None = None,
               seed: int = 11) -> np.ndarray:
    """The decision log, and one revenue event per unit an hour after its first
    decision, shipped units lifted by :data:`SHIPPED_LIFT`; plus noise the
    analysis must leave out: a large event tagged with the experiment outside
    the layer. Returns each unit's counted revenue (the oracle's values)."""
    rng = np.random.default_rng(seed)
    (tmp / "decisions").mkdir(parents=True, exist_ok=True)
    pq.write_table(decision_table(rows) if decisions is None else decisions,
                   tmp / "decisions" / "part-0.parquet")
    who = groups(rows)
    ids = list(rows["ids"])
    shipped = who["member"] & ~who["holdout"]
    revenue = rng.normal(10.0, 4.0, UNITS) + np.where(shipped, SHIPPED_LIFT, 0.0)
    at = rows["first_at"] + 3600.0
    # Half the shipped units' events are tagged with their experiment (the
    # layer's), the rest untagged; the noise is tagged "free".
    tag = [(f"exp-{'a' if i % 4 == 0 else 'b'}" if shipped[i] and i % 2 == 0 else None)
           for i in range(UNITS)]
    noise = np.flatnonzero(who["member"])[:200]
    unit_ids = ids + [ids[i] for i in noise]
    values = np.concatenate([revenue, np.full(noise.size, 1000.0)])
    times = np.concatenate([at, at[noise]])
    tags = list(tag) + ["free"] * noise.size
    (tmp / "outcomes").mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({
        "unit_id": pa.array(unit_ids, pa.string()),
        "metric": pa.array(["revenue"] * len(unit_ids), pa.string()),
        "value": pa.array(values), "timestamp": _ts(times),
        "experiment_id": pa.array(tags, pa.string()), "received_at": _ts(times + 1.0),
    }).cast(OUTCOME_SCHEMA), tmp / "outcomes" / "part-0.parquet")
    return revenue


def analyze_json(tmp: Path, capsys: pytest.CaptureFixture[str], *extra: str,
                 **options: Any) -> dict[str, Any]:
    code = main(["analyze", "--config", str(write_config(tmp, **options)), "--holdout",
                 "checkout", "--as-of", AS_OF_TEXT, "--json", *extra])
    out = capsys.readouterr().out
    assert code == 0, out
    body: dict[str, Any] = json.loads(out)
    return body


def one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("rampart: error: ") and "\n" not in err and "Traceback" not in err
    return err


# --------------------------------------------------------------------------- the comparison


def test_the_router_logs_the_layer_names_the_analysis_reads(tmp_path: Path) -> None:
    rows = routed(tmp_path)
    in_layer = buckets_vectorized("layer-checkout", list(rows["ids"]) * 2)
    held = rows["arm"] == "holdout"
    assert (held == (in_layer < HOLDOUT_BP)).all()
    assert set(rows["layer"][held]) == {"layer:checkout"}
    assert set(rows["experiment_id"][held]) == {None}
    shipped = np.isin(rows["experiment_id"], ["exp-a", "exp-b"])
    assert set(rows["layer"][shipped]) == {"layer:checkout"}
    # a range no experiment owns is not logged with the layer
    assert not (rows["layer"][in_layer >= 7000] == "layer:checkout").any()


def test_shipped_against_holdout_matches_an_independent_welch_test(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = routed(tmp_path)
    revenue = write_logs(tmp_path, rows)
    body = analyze_json(tmp_path, capsys)
    who = groups(rows)
    control = revenue[who["member"] & who["holdout"]]
    treatment = revenue[who["member"] & ~who["holdout"]]
    welch = stats.ttest_ind(treatment, control, equal_var=False)
    se = np.sqrt(treatment.var(ddof=1) / treatment.size + control.var(ddof=1) / control.size)
    df = se**4 / ((treatment.var(ddof=1) / treatment.size) ** 2 / (treatment.size - 1)
                  + (control.var(ddof=1) / control.size) ** 2 / (control.size - 1))
    effect = treatment.mean() - control.mean()
    half = stats.t.ppf(0.975, df) * se

    assert body["experiment_id"] == "holdout:checkout"
    assert body["arms"] == ["holdout", "shipped"]
    assert body["holdout"]["layer_id"] == "checkout"
    assert body["holdout"]["holdout_bp"] == HOLDOUT_BP
    assert body["holdout"]["holdout_share"] == pytest.approx(0.1)
    assert set(body["holdout"]["experiments"]) == {"exp-a", "exp-b"}
    [primary] = [m for m in body["metrics"] if m["role"] == "primary"]
    assert (primary["arm"], primary["control_arm"]) == ("shipped", "holdout")
    assert (primary["n_control"], primary["n_treatment"]) == (control.size, treatment.size)
    assert primary["mean_control"] == pytest.approx(control.mean(), rel=1e-9)
    assert primary["abs_effect"] == pytest.approx(effect, rel=1e-9)
    assert primary["ci_low"] == pytest.approx(effect - half, rel=1e-7)
    assert primary["ci_high"] == pytest.approx(effect + half, rel=1e-7)
    assert primary["p_value"] == pytest.approx(welch.pvalue, rel=1e-6, abs=1e-300)
    assert primary["ci_low"] < SHIPPED_LIFT < primary["ci_high"]
    assert body["decision"]["outcome"] == "ship"


def test_the_sample_ratio_counts_only_what_the_layer_logs(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = routed(tmp_path)
    write_logs(tmp_path, rows)
    body = analyze_json(tmp_path, capsys)
    scope = body["holdout"]["srm_scope"]
    assert scope["tested"] and scope["experiments"] == ["exp-a"]
    # 1000 holdout buckets against exp-a's 3000 at 50% coverage; exp-b is
    # targeted, so its share of the logged units is unknown
    assert scope["expected_holdout_share"] == pytest.approx(1000 / 2500)
    srm = body["srm"]
    assert not srm["flag"] and srm["p_value"] > 0.001
    held = rows["arm"] == "holdout"
    in_a = rows["experiment_id"] == "exp-a"
    assert srm["observed"] == [len(set(rows["unit_id"][held])), len(set(rows["unit_id"][in_a]))]
    # The naive split, holdout_bp of every unit logged with the layer, would
    # have raised a false alarm on the same log.
    observed = [body["metrics"][0]["n_control"], body["metrics"][0]["n_treatment"]]
    naive = stats.chisquare(observed, np.array([0.1, 0.9]) * sum(observed))
    assert naive.pvalue < 1e-10
    assert scope["reason"] in body["decision"]["reasons"][0]


def test_a_holdout_losing_units_is_flagged(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    rows = routed(tmp_path)
    rng = np.random.default_rng(3)
    lost = {u for u in set(rows["unit_id"][rows["arm"] == "holdout"]) if rng.random() < 0.2}
    keep = np.array([u not in lost for u in rows["unit_id"]])
    write_logs(tmp_path, rows, decision_table(rows, keep))
    body = analyze_json(tmp_path, capsys)
    assert body["srm"]["flag"]
    assert body["decision"]["outcome"] == "hold"
    assert any("sample ratio mismatch" in r for r in body["decision"]["reasons"])


def test_an_experiment_added_later_is_compared_only_while_it_logged(tmp_path: Path) -> None:
    """Before ``exp-a`` started, its range was not logged: counting the holdout
    from the beginning would alarm; the window where both logged does not."""
    rows = routed(tmp_path)
    started = START.timestamp() + 6 * DAY
    keep = ~((rows["experiment_id"] == "exp-a") & (rows["timestamp"] < started))
    write_logs(tmp_path, rows, decision_table(rows, keep))
    config = parse_config(document(tmp_path))
    layer = config.layer("checkout")
    assert layer.holdout_analysis is not None
    loaded = load_holdout(tmp_path / "decisions", tmp_path / "outcomes",
                          layer_route(parse_config(document(tmp_path)), "checkout"),
                          ("revenue",), AS_OF)
    result = analyze_holdout(layer, config.experiments, layer.holdout_analysis,
                             loaded.data.exposures, loaded.data.outcomes, AS_OF,
                             logged=loaded.experiments, row_unit=loaded.row_unit,
                             row_group=loaded.row_group, row_experiment=loaded.row_experiment,
                             row_at=loaded.row_at)
    scope = result.holdout.srm_scope
    assert scope.window_start is not None
    assert scope.window_start >= dt.datetime.fromtimestamp(started, tz=dt.UTC)
    assert not result.analysis.srm.flag
    # every holdout unit, against exp-a's units: a mismatch
    held = len(set(rows["unit_id"][rows["arm"] == "holdout"]))
    in_a = len(set(rows["unit_id"][keep & (rows["experiment_id"] == "exp-a")]))
    assert stats.chisquare([held, in_a], np.array([0.4, 0.6]) * (held + in_a)).pvalue < 1e-6


def test_without_an_untargeted_experiment_the_sample_ratio_is_not_tested(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = routed(tmp_path)
    keep = rows["experiment_id"] != "exp-a"
    write_logs(tmp_path, rows, decision_table(rows, keep))
    body = analyze_json(tmp_path, capsys)
    assert body["srm"]["error"] == SRM_NOT_TESTED and not body["srm"]["flag"]
    scope = body["holdout"]["srm_scope"]
    assert not scope["tested"] and "targeting" in scope["reason"]
    assert body["decision"]["reasons"][0] == scope["reason"]


def test_ineligible_rows_and_other_layers_are_in_neither_group(tmp_path: Path) -> None:
    rows = routed(tmp_path)
    write_logs(tmp_path, rows)
    plain = load_holdout(tmp_path / "decisions", tmp_path / "outcomes",
                         layer_route(parse_config(document(tmp_path)), "checkout"),
                         ("revenue",), AS_OF)
    extra = {name: values.copy() if isinstance(values, np.ndarray) else values
             for name, values in rows.items()}
    outside = np.flatnonzero(rows["layer"] != "layer:checkout")[:100]
    extra["arm"][outside] = "ineligible"
    extra["layer"][outside] = "layer:checkout"
    extra["experiment_id"][outside] = "exp-b"
    write_logs(tmp_path, rows, decision_table(extra))
    marked = load_holdout(tmp_path / "decisions", tmp_path / "outcomes",
                          layer_route(parse_config(document(tmp_path)), "checkout"),
                          ("revenue",), AS_OF)
    assert marked.data.exposures.n_units == plain.data.exposures.n_units
    assert np.bincount(marked.data.exposures.arm).tolist() == np.bincount(
        plain.data.exposures.arm).tolist()


# --------------------------------------------------------------------------- the command


def test_the_summary_and_the_html_name_the_layer_and_the_holdout(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_logs(tmp_path, routed(tmp_path))
    page = tmp_path / "report.html"
    code = main(["analyze", "--config", str(write_config(tmp_path)), "--holdout", "checkout",
                 "--as-of", AS_OF_TEXT, "--html", str(page), "--fail-on", "rollback"])
    out = capsys.readouterr().out
    assert code == 0
    assert out.startswith("layer checkout: holdout 1000 of 10000 buckets (10.00%)")
    assert "revenue shipped vs holdout" in out
    assert "decision: SHIP shipped" in out
    text = page.read_text()
    assert "id='holdout'" in text and "Holdout against shipped" in text
    assert (tmp_path / "preregistrations" / "holdouts" / "checkout.json").exists()


def test_fail_on_gates_on_the_comparison(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    rows = routed(tmp_path)
    write_logs(tmp_path, rows)
    # the primary's harm: less revenue shipped than held out
    plan = PLAN | {"guardrails": [{"name": "revenue", "type": "mean", "harm": "increase",
                                   "tolerance": 0.1}]}
    code = main(["analyze", "--config", str(write_config(tmp_path, plan=plan)), "--holdout",
                 "checkout", "--as-of", AS_OF_TEXT, "--fail-on", "rollback"])
    capsys.readouterr()
    assert code == 3


def error_of(tmp: Path, capsys: pytest.CaptureFixture[str], *argv: str,
             **options: Any) -> str:
    code = main(["analyze", "--config", str(write_config(tmp, **options)),
                 "--as-of", AS_OF_TEXT, *argv])
    assert code == 2
    return one_error_line(capsys)


def test_an_unknown_layer_is_refused(tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    write_logs(tmp_path, routed(tmp_path))
    assert "no layer 'search' in the config; layers are ['checkout']" in error_of(
        tmp_path, capsys, "--holdout", "search")


def test_a_layer_without_a_holdout_is_refused(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    write_logs(tmp_path, routed(tmp_path, holdout_bp=0, plan=None))
    assert "layer 'checkout' has no holdout (holdout_bp is 0)" in error_of(
        tmp_path, capsys, "--holdout", "checkout", holdout_bp=0, plan=None)


def test_a_layer_without_a_plan_is_refused(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    write_logs(tmp_path, routed(tmp_path))
    assert "has no holdout analysis plan: add layers[].holdout_analysis" in error_of(
        tmp_path, capsys, "--holdout", "checkout", plan=None)


def test_no_holdout_decision_logged_is_refused_and_records_nothing(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = routed(tmp_path)
    write_logs(tmp_path, rows, decision_table(rows, rows["arm"] != "holdout"))
    assert "no holdout decision of layer 'checkout' in the decision log by " \
           "2026-12-01T00:00:00Z" in error_of(tmp_path, capsys, "--holdout", "checkout")
    assert not (tmp_path / "preregistrations").exists()


@pytest.mark.parametrize("flags", [["--record-look"], ["--period", "2"],
                                   ["--engine", "ray"]])
def test_experiment_only_options_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                             flags: list[str]) -> None:
    write_logs(tmp_path, routed(tmp_path))
    assert f"--holdout does not take {flags[0]}" in error_of(
        tmp_path, capsys, "--holdout", "checkout", *flags)


def test_experiment_and_holdout_are_exclusive(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["analyze", "--config", str(write_config(tmp_path)), "--holdout", "checkout",
              "--experiment", "exp-a"])
    assert caught.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


def test_a_holdout_plan_on_a_layer_without_a_holdout_is_refused_at_load(
        tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(document(tmp_path, holdout_bp=0))
    assert ("layers.0: layer 'checkout': holdout_analysis compares the layer's holdout with "
            "its experiments, but holdout_bp is 0") in str(caught.value)


# --------------------------------------------------------------------------- pre-registration


def test_the_holdout_plan_is_pre_registered_and_may_not_change_after_its_start(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from rollout.experiments.data import register_config_plans

    write_logs(tmp_path, routed(tmp_path))
    config = parse_config(document(tmp_path))
    assert register_config_plans(config, START - dt.timedelta(hours=1)) == []
    assert (tmp_path / "preregistrations" / "holdouts" / "checkout.json").exists()
    changed = PLAN | {"primary": {"name": "converted", "type": "binary"}}
    problems = register_config_plans(parse_config(document(tmp_path, plan=changed)),
                                     START + dt.timedelta(hours=1))
    assert len(problems) == 1 and problems[0].startswith("layer 'checkout' holdout: ")
    error = error_of(tmp_path, capsys, "--holdout", "checkout", plan=changed)
    assert 'primary.name: "revenue" -> "converted"' in error


def test_forced_decisions_are_in_neither_group(tmp_path: Path) -> None:
    rows = routed(tmp_path)
    write_logs(tmp_path, rows)
    plain = load_holdout(tmp_path / "decisions", tmp_path / "outcomes",
                         layer_route(parse_config(document(tmp_path)), "checkout"),
                         ("revenue",), AS_OF)
    # units outside the layer, forced into the holdout by a QA header
    outside = np.flatnonzero(rows["layer"] != "layer:checkout")[:100]
    extra = {name: values.copy() if isinstance(values, np.ndarray) else values
             for name, values in rows.items()}
    extra["arm"][outside] = "holdout"
    extra["layer"][outside] = "layer:checkout"
    extra["experiment_id"][outside] = None
    forced = np.zeros(len(rows["unit_id"]), dtype=bool)
    forced[outside] = True
    table = decision_table(extra)
    table = table.set_column(table.schema.get_field_index("forced"), "forced",
                             pa.array(forced))
    write_logs(tmp_path, rows, table)
    marked = load_holdout(tmp_path / "decisions", tmp_path / "outcomes",
                          layer_route(parse_config(document(tmp_path)), "checkout"),
                          ("revenue",), AS_OF)
    assert np.bincount(marked.data.exposures.arm).tolist() == np.bincount(
        plain.data.exposures.arm).tolist()


def test_decisions_a_rollout_relabelled_stay_in_their_layer(tmp_path: Path) -> None:
    """A rollout of the default version logs the holdout's units (and every arm
    serving that version) under ``rollout:r1``: they are placed back in the
    layer by experiment or, for the holdout, by the first holdout holding the
    unit, the earlier layer ``search``'s included."""
    plain = routed(tmp_path, search_holdout_bp=2000)
    relabelled = routed(tmp_path, rollout=True, search_holdout_bp=2000)
    moved = relabelled["layer"] != plain["layer"]
    assert set(relabelled["layer"][moved]) == {"rollout:r1"}
    assert (relabelled["arm"][moved] == "holdout").any()
    config = parse_config(document(tmp_path, search_holdout_bp=2000))
    loads = []
    for name, rows in (("plain", plain), ("relabelled", relabelled)):
        write_logs(tmp_path / name, rows)
        loads.append(load_holdout(tmp_path / name / "decisions", tmp_path / name / "outcomes",
                                  layer_route(config, "checkout"), ("revenue",), AS_OF))
    before, after = loads
    assert after.unplaced_rows == 0
    assert after.data.exposures.n_units == before.data.exposures.n_units
    assert np.bincount(after.data.exposures.arm).tolist() == np.bincount(
        before.data.exposures.arm).tolist()
    assert after.row_unit.size == before.row_unit.size
