"""``rampart analyze`` of a bandit run, from the decision and outcome logs.

One seeded simulation of a Thompson-sampling run (the pure core's allocation,
16 updates of 2,500 units) over three binary arms with planted effects
0, +0.02, +0.05 on a conversion rate rising from 0.05 to 0.45 during the run:
traffic moves to the best arm, so the control's units come mostly from the
early, low-rate hours. Its decision log holds, besides each unit's first
decision, what the analysis must leave out: later decisions of the same units
(in other arms), forced decisions (QA, before the units' first real one),
forced-only units and ineligible rows; its outcomes log holds events outside
the reward window, of value 0, of another metric, and received late.

The analysis's figures are checked against :func:`analyse_ipw` run directly on
the simulation's own arrays (each unit's arm, propensity and reward as
simulated, not as read back): the data layer is checked by that
recomputation, the estimator by the planted effect.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from rollout.core.bandits.arms import ArmStats, BinaryStats
from rollout.core.bandits.policies import ThompsonBeta, allocation
from rollout.experiments.bandit_report import BIASED_FLAG, TIME_BINS
from rollout.experiments.stats.ipw import analyse_ipw
from serving.cli.main import main
from telemetry.decision_log import batch_table
from telemetry.outcomes_log import OUTCOME_SCHEMA

pytestmark = pytest.mark.unit

START = 1_793_491_200.0  # 2026-11-01T00:00:00Z
HOUR = 3600.0
UPDATES, BATCH = 16, 2500
UNITS = UPDATES * BATCH
ARMS = ("v0", "v1", "v2")
EFFECTS = np.array([0.0, 0.02, 0.05])
WINDOW_S = HOUR
# After the last window closed and the last event (received up to 2 h late) arrived.
FINAL_AS_OF = START + (UPDATES + 4) * HOUR
MICROS = 1_000_000


def _iso(seconds: float) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(seconds, tz=dt.UTC).isoformat().replace("+00:00", "Z")


def write_config(tmp: Path, reward_type: str = "binary") -> Path:
    policy = "thompson_beta" if reward_type == "binary" else "thompson_gaussian"
    document = {
        "data_dir": str(tmp),
        "models": [{"name": "clf", "versions": ["1", "2", "3"]}],
        "default": {"model": "clf", "version": "1"},
        "experiments": [{
            "id": "bandit-1", "salt": "bandit-1",
            "arms": [{"name": name, "model": "clf", "version": str(i + 1),
                      "weight_bp": 3334 if i == 0 else 3333}
                     for i, name in enumerate(ARMS)],
            "bandit": {"policy": {"policy": policy},
                       "reward": {"metric": "conversion", "type": reward_type,
                                  "window_s": WINDOW_S}},
        }],
        "decision_log": {"path": str(tmp / "decisions")},
        "outcomes_log": {"path": str(tmp / "outcomes")},
    }
    path = tmp / "rampart.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


@dataclass(frozen=True)
class Run:
    """The simulated truth: per unit (index ``i`` is ``user-i``) its first
    decision's arm, propensity and time; whether it converted, and when that
    event happened and was received."""

    arm: np.ndarray
    propensity: np.ndarray
    at: np.ndarray
    converted: np.ndarray
    event_at: np.ndarray
    received_at: np.ndarray

    def oracle(self, as_of: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Arms, propensities and rewards of the units whose window closed by
        ``as_of``, rewards counting conversions received by then."""
        closed = self.at + WINDOW_S <= as_of
        reward = (self.converted & (self.received_at <= as_of)).astype(np.float64)
        return self.arm[closed], self.propensity[closed], reward[closed]


def simulate(seed: int = 5) -> Run:
    rng = np.random.default_rng(seed)
    policy = ThompsonBeta(draws=1_000)
    weights = np.array([3334, 3333, 3333]) / 10_000
    successes, trials = np.zeros(3, np.int64), np.zeros(3, np.int64)
    arm = np.empty(UNITS, np.int64)
    propensity = np.empty(UNITS)
    at = np.sort(START + rng.uniform(0, UPDATES * HOUR, UNITS))
    rate = 0.05 + 0.40 * (at - START) / (UPDATES * HOUR)
    converted = np.empty(UNITS, dtype=bool)
    for u in range(UPDATES):
        rows = slice(u * BATCH, (u + 1) * BATCH)
        chosen = rng.choice(3, size=BATCH, p=weights)
        y = rng.random(BATCH) < rate[rows] + EFFECTS[chosen]
        arm[rows], propensity[rows], converted[rows] = chosen, weights[chosen], y
        successes += np.bincount(chosen, weights=y, minlength=3).astype(np.int64)
        trials += np.bincount(chosen, minlength=3)
        stats: dict[str, ArmStats] = {name: BinaryStats(int(successes[i]), int(trials[i]))
                                      for i, name in enumerate(ARMS)}
        weights = np.array(allocation(policy, stats, seed=rng).weights_bp) / 10_000
    event_at = at + rng.uniform(0, 0.8 * WINDOW_S, UNITS)
    received_at = event_at + rng.uniform(0, 2 * HOUR, UNITS)
    return Run(arm, propensity, at, converted, event_at, received_at)


def _ts(seconds: np.ndarray) -> pa.Array:
    return pa.array(np.round(np.asarray(seconds) * MICROS).astype(np.int64)).cast(
        pa.timestamp("us", tz="UTC"))


def decision_table(run: Run, seed: int = 9, propensity: bool = True) -> pa.Table:
    """Every unit's first decision, then what the analysis must leave out."""
    rng = np.random.default_rng(seed)
    ids = np.array([f"user-{i}" for i in range(UNITS)], dtype=object)
    again = np.flatnonzero(rng.random(UNITS) < 0.3)  # later decisions, any arm
    forced = np.flatnonzero(rng.random(UNITS) < 0.02)  # a QA header, before the real one
    qa_only, ineligible = 200, 300
    unit = np.concatenate([ids, ids[again], ids[forced],
                           [f"qa-{i}" for i in range(qa_only)],
                           [f"x-{i}" for i in range(ineligible)]])
    arm_names = np.array(ARMS, dtype=object)
    arm = np.concatenate([arm_names[run.arm], arm_names[rng.integers(0, 3, again.size)],
                          np.full(forced.size, "v2", dtype=object),
                          np.full(qa_only, "v0", dtype=object),
                          np.full(ineligible, "ineligible", dtype=object)])
    at = np.concatenate([run.at, run.at[again] + rng.uniform(60, 4 * HOUR, again.size),
                         run.at[forced] - 10.0, START + rng.uniform(0, HOUR, qa_only),
                         START + rng.uniform(0, UPDATES * HOUR, ineligible)])
    # Forced and ineligible rows carry no propensity: no allocation chose them.
    prop = np.concatenate([run.propensity, rng.uniform(0.05, 0.9, again.size),
                           np.full(forced.size + qa_only + ineligible, np.nan)])
    is_forced = np.zeros(unit.size, dtype=bool)
    is_forced[UNITS + again.size:UNITS + again.size + forced.size + qa_only] = True
    n = unit.size
    table = batch_table(n, {
        "request_id": [f"r{i}" for i in range(n)], "unit_id": list(unit),
        "unit_type": "user_id", "experiment_id": "bandit-1", "arm": list(arm),
        "model_name": "clf", "role": "primary", "timestamp": at,
        "forced": pa.array(is_forced), "prediction": 0.5, "latency_ms": 1.0, "status": "ok",
        "propensity": pa.array(prop, from_pandas=True)})
    if not propensity:  # a file written before the column existed
        table = table.drop_columns(["propensity"])
    return table


def outcome_table(run: Run, seed: int = 13) -> pa.Table:
    """A conversion event for each converted unit, plus events that must not
    count: after the window, before the exposure, of value 0, of another
    metric, of forced-only units."""
    rng = np.random.default_rng(seed)
    ids = np.array([f"user-{i}" for i in range(UNITS)], dtype=object)
    yes = np.flatnonzero(run.converted)
    no = np.flatnonzero(~run.converted)
    late, early, zero = (no[rng.random(no.size) < 0.2], no[rng.random(no.size) < 0.1],
                         no[rng.random(no.size) < 0.1])
    every = np.arange(UNITS)
    unit = np.concatenate([ids[yes], ids[late], ids[early], ids[zero], ids[every],
                           [f"qa-{i}" for i in range(200)]])
    metric = (["conversion"] * (yes.size + late.size + early.size + zero.size)
              + ["revenue"] * UNITS + ["conversion"] * 200)
    value = np.concatenate([np.ones(yes.size + late.size + early.size), np.zeros(zero.size),
                            rng.normal(10, 2, UNITS), np.ones(200)])
    at = np.concatenate([run.event_at[yes], run.at[late] + WINDOW_S + 60.0,
                         run.at[early] - 100.0, run.event_at[zero], run.event_at,
                         np.full(200, START + 2 * HOUR)])
    received = np.concatenate([run.received_at[yes], at[yes.size:]])
    return pa.table({
        "unit_id": pa.array(list(unit), pa.string()), "metric": pa.array(metric, pa.string()),
        "value": pa.array(value), "timestamp": _ts(at),
        "experiment_id": pa.array([None] * unit.size, pa.string()),
        "received_at": _ts(received)}).cast(OUTCOME_SCHEMA)


def write_logs(tmp: Path, run: Run, decisions: pa.Table | None = None) -> None:
    (tmp / "decisions").mkdir(parents=True, exist_ok=True)
    (tmp / "outcomes").mkdir(parents=True, exist_ok=True)
    pq.write_table(decision_table(run) if decisions is None else decisions,
                   tmp / "decisions" / "part-0.parquet")
    pq.write_table(outcome_table(run), tmp / "outcomes" / "part-0.parquet")


@pytest.fixture(scope="module")
def run() -> Run:
    return simulate()


@pytest.fixture()
def logs(tmp_path: Path, run: Run) -> Path:
    write_logs(tmp_path, run)
    return write_config(tmp_path)


def analyze(config: Path, capsys: pytest.CaptureFixture[str], *extra: str,
            as_of: float = FINAL_AS_OF) -> dict[str, Any]:
    code = main(["analyze", "--config", str(config), "--experiment", "bandit-1",
                 "--as-of", _iso(as_of), "--json", *extra])
    out = capsys.readouterr().out
    assert code == 0, out
    body: dict[str, Any] = json.loads(out)
    return body


def one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("rampart: error: ") and "\n" not in err and "Traceback" not in err
    return err


def comparison(body: dict[str, Any], arm: str, estimator: str) -> dict[str, Any]:
    found = [c for c in body["comparisons"]
             if c["arm"] == arm and c["estimator"] == estimator]
    assert len(found) == 1
    result: dict[str, Any] = found[0]
    return result


def assert_matches(body: dict[str, Any], arms: np.ndarray, props: np.ndarray,
                   rewards: np.ndarray, predictions: np.ndarray | None = None) -> None:
    """The report's figures are analyse_ipw's on the given arrays."""
    direct = analyse_ipw(arms, props, rewards, 3, predictions=predictions)
    assert direct.status == "ok"
    assert body["units"] == arms.size
    for arm_body, estimate in zip(body["arms"], direct.arms, strict=True):
        assert arm_body["units"] == estimate.rows
        assert arm_body["naive_mean"] == pytest.approx(estimate.naive, rel=1e-9)
        assert arm_body["ipw_mean"] == pytest.approx(estimate.hajek, rel=1e-9)
        assert arm_body["ipw_se"] == pytest.approx(estimate.hajek_se, rel=1e-9)
    pairs = [("ipw", "hajek"), ("naive", "naive")] + (
        [("aipw", "aipw")] if predictions is not None else [])
    for index in (1, 2):
        for label, name in pairs:
            d = direct.difference(index, name)  # type: ignore[arg-type]
            c = comparison(body, ARMS[index], label)
            assert c["estimate"] == pytest.approx(d.estimate, rel=1e-9)
            assert c["ci_low"] == pytest.approx(d.ci_low, rel=1e-9)
            assert c["ci_high"] == pytest.approx(d.ci_high, rel=1e-9)


# --------------------------------------------------------------------------- figures


def test_ipw_finds_the_planted_effect_where_the_naive_difference_is_biased(
        logs: Path, run: Run, capsys: pytest.CaptureFixture[str]) -> None:
    body = analyze(logs, capsys)
    assert body["design"] == "bandit" and body["control_arm"] == "v0"
    assert body["metric"] == "conversion" and body["pending_units"] == 0
    # The policy moved traffic: the control ends on its floor.
    assert run.propensity[-BATCH:].min() == pytest.approx(0.05)
    truth = EFFECTS[2]
    ipw, naive = comparison(body, "v2", "ipw"), comparison(body, "v2", "naive")
    # Measured with these seeds: IPW +0.036 CI [0.016, 0.056] (p 0.0004); naive
    # +0.101 CI [0.085, 0.118], its control's units mostly from the low early hours.
    assert ipw["ci_low"] <= truth <= ipw["ci_high"]
    assert abs(ipw["estimate"] - truth) < 2 * ipw["se"]
    assert ipw["p_value"] < 0.01 and not ipw["biased"]
    assert naive["ci_low"] > truth + 0.03
    assert naive["biased"] and naive["flag"] == BIASED_FLAG
    assert "allocation" in naive["reason"]
    v1 = comparison(body, "v1", "ipw")
    assert v1["ci_low"] <= EFFECTS[1] <= v1["ci_high"]
    assert "aipw" not in {c["estimator"] for c in body["comparisons"]}


def test_figures_equal_the_ipw_analysis_of_the_simulated_arrays(
        logs: Path, run: Run, capsys: pytest.CaptureFixture[str]) -> None:
    assert_matches(analyze(logs, capsys), *run.oracle(FINAL_AS_OF))


def test_as_of_leaves_out_later_decisions_open_windows_and_late_events(
        logs: Path, run: Run, capsys: pytest.CaptureFixture[str]) -> None:
    as_of = START + 8.5 * HOUR
    body = analyze(logs, capsys, as_of=as_of)
    arms, props, rewards = run.oracle(as_of)
    # the oracle differs from counting every conversion of those units
    assert rewards.sum() < run.converted[run.at + WINDOW_S <= as_of].sum()
    assert_matches(body, arms, props, rewards)
    open_windows = (run.at <= as_of) & (run.at + WINDOW_S > as_of)
    assert body["pending_units"] == int(open_windows.sum()) > 0


def test_aipw_with_a_reward_model_matches_an_independent_fit(
        logs: Path, run: Run, capsys: pytest.CaptureFixture[str]) -> None:
    body = analyze(logs, capsys, "--reward-model", "arm-time")
    arms, props, rewards = run.oracle(FINAL_AS_OF)
    # arm-time, fitted here on the units themselves: tenths of the run by
    # exposure order, plus an arm effect (the control's is 0).
    units = arms.size
    time_bin = np.arange(units) * TIME_BINS // units  # the units are in time order
    design = np.zeros((units, TIME_BINS + 2))
    design[np.arange(units), time_bin] = 1.0
    design[arms == 1, TIME_BINS] = 1.0
    design[arms == 2, TIME_BINS + 1] = 1.0
    coef = np.linalg.lstsq(design, rewards, rcond=None)[0]
    predictions = coef[time_bin][:, None] + np.array([0.0, *coef[TIME_BINS:]])[None, :]
    assert_matches(body, arms, props, rewards, predictions)
    aipw, ipw = comparison(body, "v2", "aipw"), comparison(body, "v2", "ipw")
    assert aipw["ci_low"] <= EFFECTS[2] <= aipw["ci_high"]
    assert body["reward_model"] == "arm-time"
    # the model takes out the drift: a tighter interval than IPW's
    assert aipw["se"] < ipw["se"]


def test_the_text_report_shows_each_arm_and_flags_the_naive_difference(
        logs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["analyze", "--config", str(logs), "--experiment", "bandit-1",
                 "--as-of", _iso(FINAL_AS_OF), "--reward-model", "arm-mean"])
    out = capsys.readouterr().out
    assert code == 0
    assert f"{UNITS:,} units analysed" in out
    for name in ARMS:
        assert any(line.split()[:1] == [name] for line in out.splitlines())
    naive = [line for line in out.splitlines() if "naive difference" in line]
    assert len(naive) == 2 and all(f"** {BIASED_FLAG} **" in line for line in naive)
    assert sum("AIPW difference (arm-mean reward model)" in line
               for line in out.splitlines()) == 2
    assert sum("IPW difference" in line and "AIPW" not in line
               for line in out.splitlines()) == 2


# --------------------------------------------------------------------------- what is left out


def test_forced_decisions_are_left_out(tmp_path: Path, run: Run,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    """The same log with the QA rows' forced flag cleared is another run: the
    forced-only units are counted and the forced units' first decision is the
    forced one, whose propensity is null, so it is refused."""
    config = write_config(tmp_path)
    table = decision_table(run)
    write_logs(tmp_path, run, table)
    assert analyze(config, capsys)["units"] == UNITS
    cleared = table.set_column(table.schema.get_field_index("forced"), "forced",
                               pa.array(np.zeros(table.num_rows, dtype=bool)))
    write_logs(tmp_path, run, cleared)
    assert main(["analyze", "--config", str(config), "--experiment", "bandit-1",
                 "--as-of", _iso(FINAL_AS_OF)]) == 2
    assert "have no propensity" in one_error_line(capsys)


@pytest.mark.parametrize("how", ["null", "no_column"])
def test_decisions_without_a_propensity_are_refused(
        tmp_path: Path, run: Run, capsys: pytest.CaptureFixture[str], how: str) -> None:
    config = write_config(tmp_path)
    table = decision_table(run, propensity=how != "no_column")
    if how == "null":
        table = table.set_column(table.schema.get_field_index("propensity"), "propensity",
                                 pa.nulls(table.num_rows, pa.float64()))
    write_logs(tmp_path, run, table)
    code = main(["analyze", "--config", str(config), "--experiment", "bandit-1",
                 "--as-of", _iso(FINAL_AS_OF), "--json"])
    assert code == 2
    err = one_error_line(capsys)
    assert f"{UNITS} of {UNITS} exposed units of bandit experiment 'bandit-1' have no " \
           "propensity" in err


def test_a_propensity_outside_the_unit_interval_is_refused(
        tmp_path: Path, run: Run, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path)
    bad = Run(run.arm, np.where(np.arange(UNITS) == 7, 1.5, run.propensity), run.at,
              run.converted, run.event_at, run.received_at)
    write_logs(tmp_path, run, decision_table(bad))
    assert main(["analyze", "--config", str(config), "--experiment", "bandit-1",
                 "--as-of", _iso(FINAL_AS_OF)]) == 2
    assert "propensity outside (0, 1] (the first: 1.5)" in one_error_line(capsys)


def test_options_a_bandit_analysis_has_no_use_for_are_refused(
        logs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["analyze", "--config", str(logs), "--experiment", "bandit-1",
                 "--fail-on", "hold", "--segment", "country"]) == 2
    assert "is a bandit: its analysis does not take --segment, --fail-on" in one_error_line(
        capsys)


def test_a_continuous_reward_is_the_sum_within_the_window(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Two units per arm with hand-made events: the naive mean of each arm is
    the mean of its units' sums inside [exposure, exposure + window]; a unit
    without events earns 0."""
    config = write_config(tmp_path, reward_type="continuous")
    at = START + np.array([0.0, 10.0, 20.0, 30.0, 40.0, 50.0])
    units = [f"u{i}" for i in range(6)]
    decisions = batch_table(6, {
        "request_id": [f"r{i}" for i in range(6)], "unit_id": units, "unit_type": "user_id",
        "experiment_id": "bandit-1", "arm": ["v0", "v0", "v1", "v1", "v2", "v2"],
        "model_name": "clf", "role": "primary", "timestamp": at, "prediction": 0.5,
        "latency_ms": 1.0, "status": "ok", "propensity": [0.5, 0.5, 0.25, 0.25, 0.25, 0.25]})
    # (unit, seconds after its exposure, value): u1 and u4 have none inside
    events = [(0, 5.0, 2.0), (0, WINDOW_S, 3.0), (0, WINDOW_S + 1, 100.0), (1, -1.0, 50.0),
              (2, 100.0, 4.0), (3, 200.0, -1.0), (3, 300.0, 6.0), (5, 1.0, 7.0)]
    unit = [units[u] for u, _, _ in events]
    when = np.array([at[u] + s for u, s, _ in events])
    (tmp_path / "decisions").mkdir()
    (tmp_path / "outcomes").mkdir()
    pq.write_table(decisions, tmp_path / "decisions" / "part-0.parquet")
    pq.write_table(pa.table({
        "unit_id": pa.array(unit, pa.string()),
        "metric": pa.array(["conversion"] * len(events), pa.string()),
        "value": pa.array([v for _, _, v in events], pa.float64()), "timestamp": _ts(when),
        "experiment_id": pa.array([None] * len(events), pa.string()),
        "received_at": _ts(when)}).cast(OUTCOME_SCHEMA), tmp_path / "outcomes" / "p.parquet")
    body = analyze(config, capsys, as_of=START + 2 * HOUR)
    assert [a["naive_mean"] for a in body["arms"]] == pytest.approx([2.5, 4.5, 3.5])
    assert body["reward_type"] == "continuous" and body["units"] == 6


def test_an_arm_without_units_gives_a_status_not_an_error() -> None:
    """The pure report on hand-made arrays: arm v1 never chosen."""
    import datetime as dt

    from rollout.experiments.bandit_report import analyse_bandit_run, reward_predictions

    arm = np.array([0, 2, 0, 2, 2, 0], dtype=np.int64)
    reward = np.array([0.0, 1.0, 1.0, 1.0, 0.0, 0.0])
    at = np.arange(6, dtype=np.int64) * MICROS
    predictions = reward_predictions("arm-time", arm, at, reward, 3)
    assert np.all(np.isfinite(predictions))
    assert predictions[:, 1] == pytest.approx(np.full(6, 0.5))  # the overall mean
    report = analyse_bandit_run(
        "b", ARMS, arm, np.full(6, 0.5), reward, at, metric="conversion",
        reward_type="binary", window_s=WINDOW_S, as_of=dt.datetime(2026, 11, 2, tzinfo=dt.UTC),
        reward_model="arm-time")
    assert [a.status for a in report.arms] == ["ok", "no_units", "ok"]
    assert {c.status for c in report.comparisons if c.arm == "v1"} == {"no_units"}
    assert report.comparison("v2").status == "ok"
    assert json.loads(json.dumps(report.to_json(), allow_nan=False))["arms"][1]["ipw_mean"] is None
