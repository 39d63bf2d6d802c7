"""``rampart analyze`` of an interleaving experiment, from the decision and outcome logs.

One seeded simulation of 2,000 ``POST /v1/rank`` requests: each ranks 8
candidates by two random rankings, merged into a 6-position list by the
gateway's own :func:`interleave`. Users click a shown position with a
probability falling with the position and 1.6 times higher when ranker A
contributed it: a planted preference for A. The decision log holds what the
gateway logs (two rows per candidate, ``arm == team`` on the shown ones) and
what the analysis must leave out or fold: replayed requests (the same list
logged twice), failed requests (no position), requests after ``--as-of`` and
another experiment's rows. The outcomes log holds the clicks, matched by item
id or by position, and what must not count: clicks on items the list did not
show, on positions past its end, for requests no list has, without a request,
of value 0, of another metric, received after ``--as-of``, and an old file
written before the item columns existed.

The report is checked against a recomputation from the simulation's own
record (what was shown and clicked, in plain Python), and its test against
:func:`scipy.stats.binomtest`.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from fastapi.testclient import TestClient
from scipy import stats as sps

from serving.cli.main import main
from serving.gateway.core import build_app
from serving.gateway.schemas import MAX_ITEM_ID_CHARS, MAX_REQUEST_ID_CHARS, REQUEST_ID_PATTERN
from serving.routing.interleaving import Method, interleave
from telemetry import outcome_events
from telemetry.decision_log import RANKER_ROLE, batch_table
from telemetry.outcomes_log import (
    OUTCOME_LOG_SCHEMA,
    OUTCOME_SCHEMA,
    OutcomeRecord,
    OutcomesLogWriter,
    conform,
    read_outcomes,
    records_to_table,
)
from telemetry.tracing import build_tracer_provider
from tests.unit.fakes import make_core

pytestmark = pytest.mark.unit

EXPERIMENT, BALANCED, IDLE = "search-rank", "feed-rank", "idle-rank"
START = 1_793_491_200.0  # 2026-11-01T00:00:00Z
REQUESTS, LATE = 2000, 100
CANDIDATES, LENGTH = 8, 6
AS_OF = START + REQUESTS + 60.0  # after every request but the late ones, and their clicks
LATER = START + 10 * 3600.0  # after everything
MICROS = 1_000_000
A_LIFT = 1.6


def _iso(seconds: float) -> str:
    return dt.datetime.fromtimestamp(seconds, tz=dt.UTC).isoformat().replace("+00:00", "Z")


def _ts(seconds: Any) -> pa.Array:
    return pa.array(np.round(np.asarray(seconds, dtype=np.float64) * MICROS).astype(np.int64)
                    ).cast(pa.timestamp("us", tz="UTC"))


def write_config(tmp: Path) -> Path:
    rankers = {"a": {"model": "ranker", "version": "1"}, "b": {"model": "ranker", "version": "2"}}
    document = {
        "data_dir": str(tmp),
        "models": [{"name": "ranker", "versions": ["1", "2"]}],
        "default": {"model": "ranker", "version": "1"},
        "experiments": [{
            "id": "ab-1", "salt": "ab-1",
            "arms": [{"name": "control", "model": "ranker", "version": "1", "weight_bp": 5000},
                     {"name": "treatment", "model": "ranker", "version": "2",
                      "weight_bp": 5000}]}],
        "interleaving": [
            {"id": EXPERIMENT, "unit": "session_id", **rankers, "length": LENGTH},
            {"id": BALANCED, "unit": "session_id", **rankers, "method": "balanced",
             "length": LENGTH},
            {"id": IDLE, **rankers},
        ],
        "decision_log": {"path": str(tmp / "decisions")},
        "outcomes_log": {"path": str(tmp / "outcomes")},
    }
    path = tmp / "rampart.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


@dataclass
class Truth:
    """What the simulation showed and what the users did, as plain Python.

    ``shown[request]`` is the list as ``(item, team, rank_a, rank_b)`` per
    position; ``clicks[request]`` the positions users clicked whose events
    arrived by ``AS_OF`` and ``late_clicks[request]`` the others (received
    after it, or on a request logged after it). ``events`` are every outcome
    event written, ``decisions`` the decision log's tables.
    """

    experiment: str
    method: Method
    shown: dict[str, list[tuple[str, str, int, int]]] = field(default_factory=dict)
    late_requests: set[str] = field(default_factory=set)
    clicks: dict[str, set[int]] = field(default_factory=dict)
    late_clicks: dict[str, set[int]] = field(default_factory=dict)
    decisions: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)


def _rows(experiment: str, request: str, unit: str, at: float, candidates: list[str],
          rankings: dict[str, list[str]], items: tuple[str, ...], teams: tuple[str, ...],
          ok: bool = True) -> list[dict[str, Any]]:
    """The gateway's two rows per candidate (one per ranker) for one request."""
    where = {item: (p, team) for p, (item, team) in enumerate(zip(items, teams, strict=True))}
    rows = []
    for ranker in ("a", "b"):
        rank = {item: r for r, item in enumerate(rankings[ranker], start=1)}
        rows += [{
            "request_id": request, "unit_id": unit, "experiment_id": experiment, "arm": ranker,
            "model_version": "1" if ranker == "a" else "2", "timestamp": at,
            "status": "ok" if ok else "error", "item_id": item,
            "item_rank": rank[item] if ok else None,
            "position": where[item][0] if item in where else None,
            "team": where[item][1] if item in where else None} for item in candidates]
    return rows


def decision_table(rows: list[dict[str, Any]], method: str) -> pa.Table:
    """The rows as the gateway logs them (:func:`batch_table`, the writer's own)."""
    columns: dict[str, Any] = {name: [r[name] for r in rows] for name in rows[0]}
    columns["item_rank"] = pa.array(columns["item_rank"], pa.int32())
    columns["position"] = pa.array(columns["position"], pa.int32())
    return batch_table(len(rows), {
        **columns, "unit_type": "session_id", "layer": "interleaving", "model_name": "ranker",
        "role": RANKER_ROLE, "latency_ms": 1.0, "forced": False,
        "interleaving_method": method})


def _click(request: str | None, unit: str, at: float, received: float, *,
           item: str | None = None, position: int | None = None, value: float = 1.0,
           metric: str = "click", experiment: str | None = None) -> dict[str, Any]:
    return {"unit_id": unit, "metric": metric, "value": value, "timestamp": at,
            "experiment_id": experiment, "received_at": received, "request_id": request,
            "item_id": item, "position": position}


def simulate(experiment: str, method: Method, seed: int) -> Truth:
    rng = np.random.default_rng(seed)
    truth = Truth(experiment, method)
    for i in range(REQUESTS + LATE):
        request, unit = f"{experiment}-r{i}", f"s{i % 700}"  # units hold several sessions
        at = START + i if i < REQUESTS else AS_OF + 60.0 + i
        candidates = [f"doc-{d}" for d in rng.choice(40, CANDIDATES, replace=False)]
        rankings = {"a": list(rng.permutation(candidates)), "b": list(rng.permutation(candidates))}
        if i % 97 == 5:  # a failed request: logged, nothing shown
            truth.decisions += _rows(experiment, request, unit, at, candidates, rankings, (), (),
                                     ok=False)
            truth.events.append(_click(request, unit, at + 5, at + 6, item=candidates[0]))
            continue
        merged = interleave(method, rankings["a"], rankings["b"], key=request, length=LENGTH)
        rows = _rows(experiment, request, unit, at, candidates, rankings, merged.items,
                     merged.teams)
        truth.decisions += rows * (2 if i % 41 == 3 else 1)  # a replay logs it again
        rank = {r: {item: k for k, item in enumerate(rankings[r], start=1)} for r in "ab"}
        truth.shown[request] = [(item, team, rank["a"][item], rank["b"][item])
                                for item, team in zip(merged.items, merged.teams, strict=True)]
        late_request = i >= REQUESTS
        if late_request:
            truth.late_requests.add(request)
        for p, (item, team, _, _) in enumerate(truth.shown[request]):
            if rng.random() >= 0.3 / (1 + p) * (A_LIFT if team == "a" else 1.0):
                continue
            received_late = rng.random() < 0.1
            how = rng.integers(3)  # by item id, by position, or both
            event = _click(request, unit, at + 20.0, LATER - 60.0 if received_late else at + 30,
                           item=item if how != 1 else None, position=p if how != 0 else None,
                           experiment=experiment if rng.random() < 0.5 else None)
            truth.events += [event] * (2 if rng.random() < 0.05 else 1)  # clicked twice
            book = truth.late_clicks if (received_late or late_request) else truth.clicks
            book.setdefault(request, set()).add(p)
        if late_request:
            continue
        first = merged.items[0]
        unshown = [c for c in candidates if c not in merged.items]
        if i % 7 == 0:  # an item the list did not show (a stale page)
            truth.events.append(_click(request, unit, at + 9, at + 10, item=unshown[0]))
        if i % 11 == 0:  # a position past the end of the list
            truth.events.append(_click(request, unit, at + 9, at + 10, position=LENGTH + 1))
        if i % 13 == 0:  # a request but no item
            truth.events.append(_click(request, unit, at + 9, at + 10))
        if i % 17 == 0:  # not a click: value 0
            truth.events.append(_click(request, unit, at + 9, at + 10, item=first, value=0.0))
        if i % 19 == 0:  # another metric
            truth.events.append(_click(request, unit, at + 9, at + 10, item=first,
                                       metric="view"))
        if i % 23 == 0:  # tagged with another experiment
            truth.events.append(_click(request, unit, at + 9, at + 10, item=first,
                                       experiment="ab-1"))
    truth.events += [_click(f"ghost-{g}", "s1", START + g, START + g + 1, item="doc-1")
                     for g in range(80)]  # requests no list has
    truth.events += [_click(None, "s2", START + g, START + g + 1)
                     for g in range(30)]  # a unit-level click, no request
    # A different experiment's decision rows for a request id of ours: not read.
    truth.decisions += _rows("other-rank", f"{experiment}-r1", "s1", START + 1,
                             ["doc-1", "doc-2"], {"a": ["doc-1", "doc-2"],
                                                  "b": ["doc-2", "doc-1"]},
                             ("doc-2", "doc-1"), ("b", "a"))
    return truth


# A file written before the item columns existed: its clicks name no request.
OLD_EVENTS = [_click(None, "s3", START, START) for _ in range(5)]


def event_table(events: list[dict[str, Any]]) -> pa.Table:
    return pa.table({
        "unit_id": pa.array([e["unit_id"] for e in events], pa.string()),
        "unit_key": pa.nulls(len(events), pa.int64()),
        "metric": pa.array([e["metric"] for e in events], pa.string()),
        "value": pa.array([e["value"] for e in events], pa.float64()),
        "timestamp": _ts([e["timestamp"] for e in events]),
        "experiment_id": pa.array([e["experiment_id"] for e in events], pa.string()),
        "received_at": _ts([e["received_at"] for e in events]),
        "request_id": pa.array([e["request_id"] for e in events], pa.string()),
        "item_id": pa.array([e["item_id"] for e in events], pa.string()),
        "position": pa.array([e["position"] for e in events], pa.int32())})


def write_logs(tmp: Path, truths: list[Truth]) -> None:
    (tmp / "decisions").mkdir(parents=True, exist_ok=True)
    (tmp / "outcomes" / "date=2026-11-01").mkdir(parents=True, exist_ok=True)
    for n, truth in enumerate(truths):
        pq.write_table(decision_table(truth.decisions, truth.method),
                       tmp / "decisions" / f"part-{n}.parquet")
        pq.write_table(event_table(truth.events),
                       tmp / "outcomes" / "date=2026-11-01" / f"part-{n}.parquet")
    old = event_table(OLD_EVENTS).select(OUTCOME_SCHEMA.names).cast(OUTCOME_SCHEMA)
    pq.write_table(old, tmp / "outcomes" / "date=2026-11-01" / "part-old.parquet")


@pytest.fixture(scope="module")
def truths() -> list[Truth]:
    return [simulate(EXPERIMENT, "team_draft", 3), simulate(BALANCED, "balanced", 4)]


@pytest.fixture()
def logs(tmp_path: Path, truths: list[Truth]) -> Path:
    write_logs(tmp_path, truths)
    return write_config(tmp_path)


def analyze(config: Path, capsys: pytest.CaptureFixture[str], experiment: str = EXPERIMENT,
            *extra: str, as_of: float = AS_OF) -> dict[str, Any]:
    code = main(["analyze", "--config", str(config), "--experiment", experiment,
                 "--as-of", _iso(as_of), "--json", *extra])
    out = capsys.readouterr().out
    assert code == 0, out
    body: dict[str, Any] = json.loads(out)
    return body


def one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("rampart: error: ") and "\n" not in err and "Traceback" not in err
    return err


def credit(shown: list[tuple[str, str, int, int]], clicked: set[int], method: str
           ) -> tuple[int, int]:
    """Clicks credited to A and B in one session, by the published rules."""
    if method == "team_draft":
        return (sum(shown[p][1] == "a" for p in clicked), sum(shown[p][1] == "b" for p in clicked))
    if not clicked:
        return 0, 0
    deepest = max(clicked)
    k = min(shown[deepest][2], shown[deepest][3])
    return (sum(shown[p][2] <= k for p in clicked), sum(shown[p][3] <= k for p in clicked))


def oracle(truths: list[Truth], experiment: str, as_of: float, metric: str = "click"
           ) -> dict[str, Any]:
    """The report's figures recomputed from the simulation's own record: each
    event of every truth classified by the rules in plain Python, then each
    session credited and counted."""
    truth = next(t for t in truths if t.experiment == experiment)
    lists = {r: shown for r, shown in truth.shown.items()
             if r not in truth.late_requests or as_of >= LATER}
    count = dict.fromkeys(("events", "not_clicks", "without_request", "unknown_request",
                           "without_item", "unshown", "matched"), 0)
    clicked: dict[str, set[int]] = {r: set() for r in lists}
    for e in [*OLD_EVENTS, *(e for t in truths for e in t.events)]:
        if (e["metric"] != metric or e["experiment_id"] not in (None, experiment)
                or e["timestamp"] > as_of or e["received_at"] > as_of):
            continue
        count["events"] += 1
        request = e["request_id"]
        if e["value"] <= 0:
            kind = "not_clicks"
        elif request is None:
            kind = "without_request"
        elif request not in lists:
            kind = "unknown_request"
        elif e["item_id"] is None and e["position"] is None:
            kind = "without_item"
        else:
            items = [item for item, *_ in lists[request]]
            p = (items.index(e["item_id"]) if e["item_id"] in items else None
                 ) if e["item_id"] is not None else (
                e["position"] if e["position"] < len(items) else None)
            kind = "unshown" if p is None else "matched"
            if p is not None:
                clicked[request].add(p)
        count[kind] += 1
    if metric == "click":  # the classification recovers the simulated clicks
        simulated = {r: truth.clicks.get(r, set()) | (
            truth.late_clicks.get(r, set()) if as_of >= LATER else set()) for r in lists}
        assert clicked == simulated
    wins_a = wins_b = ties = with_clicks = clicks_a = clicks_b = 0
    for request, shown in lists.items():
        a, b = credit(shown, clicked[request], truth.method)
        clicks_a, clicks_b = clicks_a + a, clicks_b + b
        with_clicks += bool(clicked[request])
        wins_a, wins_b, ties = wins_a + (a > b), wins_b + (b > a), ties + (a == b)
    sessions = wins_a + wins_b + ties
    test = sps.binomtest(wins_b, wins_a + wins_b, 0.5)
    ci = test.proportion_ci(0.95, method="exact")
    return {"sessions": sessions, "sessions_with_clicks": with_clicks, "wins_a": wins_a,
            "wins_b": wins_b, "ties": ties, "credited_clicks_a": clicks_a,
            "credited_clicks_b": clicks_b, "p_value": test.pvalue,
            "share_b": wins_b / (wins_a + wins_b), "share_b_ci_low": ci.low,
            "share_b_ci_high": ci.high, "delta_ab": (wins_a + ties / 2) / sessions - 0.5,
            "clicks": count}


def assert_matches(body: dict[str, Any], expected: dict[str, Any]) -> None:
    for name in ("sessions", "sessions_with_clicks", "wins_a", "wins_b", "ties",
                 "credited_clicks_a", "credited_clicks_b", "clicks"):
        assert body[name] == expected[name], name
    for name in ("p_value", "share_b", "share_b_ci_low", "share_b_ci_high", "delta_ab"):
        assert body[name] == pytest.approx(expected[name], rel=1e-9, abs=1e-12), name


# ------------------------------------------------------------------ the report


def test_team_draft_report_finds_the_planted_preference_for_a(
        logs: Path, truths: list[Truth], capsys: pytest.CaptureFixture[str]) -> None:
    body = analyze(logs, capsys)
    assert (body["design"], body["method"], body["metric"]) == (
        "interleaving", "team_draft", "click")
    assert body["as_of"] == _iso(AS_OF)
    # 2,000 requests, 21 of them failed (nothing shown), the late ones not yet logged
    assert body["sessions"] == REQUESTS - len(range(5, REQUESTS, 97))
    assert body["wins_a"] > 1.3 * body["wins_b"]
    assert body["share_b"] < body["share_b_ci_high"] < 0.5
    assert body["p_value"] < 1e-4 and body["winner"] == "a" and body["delta_ab"] > 0
    assert body["status"] == "ok"
    assert_matches(body, oracle(truths, EXPERIMENT, AS_OF))
    clicks = body["clicks"]
    assert min(clicks.values()) > 0  # every kind of event occurs, and is counted


def test_balanced_sessions_are_credited_by_the_rankers_prefixes(
        logs: Path, truths: list[Truth], capsys: pytest.CaptureFixture[str]) -> None:
    body = analyze(logs, capsys, BALANCED)
    assert body["method"] == "balanced"
    assert body["methods"] == [{"method": "balanced", "sessions": body["sessions"]}]
    assert_matches(body, oracle(truths, BALANCED, AS_OF))
    assert body["winner"] == "a"


def test_a_later_as_of_counts_late_requests_and_late_clicks(
        logs: Path, truths: list[Truth], capsys: pytest.CaptureFixture[str]) -> None:
    body = analyze(logs, capsys, as_of=LATER)
    assert body["sessions"] == REQUESTS + LATE - len(range(5, REQUESTS + LATE, 97))
    assert body["clicks"]["matched"] > oracle(truths, EXPERIMENT, AS_OF)["clicks"]["matched"]
    assert_matches(body, oracle(truths, EXPERIMENT, LATER))


def test_the_click_metric_can_be_named(
        logs: Path, truths: list[Truth], capsys: pytest.CaptureFixture[str]) -> None:
    # Only the "view" events count now: one on the first shown item of every
    # 19th request, so each such session has one click and a preference.
    body = analyze(logs, capsys, EXPERIMENT, "--click-metric", "view")
    assert body["metric"] == "view"
    views = len([i for i in range(0, REQUESTS, 19) if i % 97 != 5])
    assert body["clicks"]["matched"] == body["sessions_with_clicks"] == views
    assert body["wins_a"] + body["wins_b"] == views
    assert_matches(body, oracle(truths, EXPERIMENT, AS_OF, metric="view"))


def test_the_text_report_names_the_wins_the_share_and_the_left_out_clicks(
        logs: Path, truths: list[Truth], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["analyze", "--config", str(logs), "--experiment", EXPERIMENT,
                 "--as-of", _iso(AS_OF)]) == 0
    out = capsys.readouterr().out
    expected = oracle(truths, EXPERIMENT, AS_OF)
    assert f"interleaving experiment {EXPERIMENT} as of {_iso(AS_OF)}" in out
    assert (f"wins: a {expected['wins_a']:,}, b {expected['wins_b']:,}, "
            f"ties {expected['ties']:,}") in out
    assert f"{expected['share_b']:.4g} 95% CI [{expected['share_b_ci_low']:.4g}" in out
    assert "a preferred" in out
    assert f"{expected['clicks']['unshown']:,} on an item not shown" in out


# ------------------------------------------------------------------ bad input


def test_an_interleaving_without_shown_lists_is_one_error_line(
        logs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["analyze", "--config", str(logs), "--experiment", IDLE]) == 2
    assert f"no list of interleaving experiment '{IDLE}' was shown" in one_error_line(capsys)


def test_a_negative_position_in_the_log_is_one_error_line(
        logs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pq.write_table(event_table([_click(f"{EXPERIMENT}-r1", "s1", START, START, position=-2)]),
                   logs.parent / "outcomes" / "date=2026-11-01" / "part-bad.parquet")
    assert main(["analyze", "--config", str(logs), "--experiment", EXPERIMENT,
                 "--as-of", _iso(AS_OF)]) == 2
    assert "have a negative position (the first: -2" in one_error_line(capsys)


def test_importing_a_negative_position_is_one_error_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "clicks.csv"
    source.write_text("unit_id,metric,value,request_id,position\n"
                      "s1,click,1,r-1,0\ns1,click,1,r-1,-1\n")
    assert main(["outcomes", "import", str(source), "--outcomes", str(tmp_path / "log")]) == 2
    err = one_error_line(capsys)
    assert "row 2: position must be a whole number from 0" in err and "(got '-1')" in err
    assert read_outcomes(tmp_path / "log").num_rows == 0


def test_importing_clicks_keeps_their_request_item_and_position(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "clicks.csv"
    source.write_text("unit_id,metric,value,request_id,item_id,position\n"
                      "s1,click,1,r-1,doc-2,\ns1,click,1,r-1,,3\ns2,click,1,,,\n")
    assert main(["outcomes", "import", str(source), "--outcomes", str(tmp_path / "log")]) == 0
    capsys.readouterr()
    rows = read_outcomes(tmp_path / "log").select(["request_id", "item_id", "position"])
    assert sorted(rows.to_pylist(), key=str) == sorted([
        {"request_id": "r-1", "item_id": "doc-2", "position": None},
        {"request_id": "r-1", "item_id": None, "position": 3},
        {"request_id": None, "item_id": None, "position": None}], key=str)


@pytest.mark.parametrize(("flags", "needle"), [
    (("--reward-model", "arm-mean"), "does not take --reward-model"),
    (("--segment", "country", "--fail-on", "hold"), "does not take --segment, --fail-on"),
    (("--period", "2"), "does not take --period"),
])
def test_options_an_interleaving_analysis_has_no_use_for_are_refused(
        logs: Path, capsys: pytest.CaptureFixture[str], flags: tuple[str, ...],
        needle: str) -> None:
    assert main(["analyze", "--config", str(logs), "--experiment", EXPERIMENT, *flags]) == 2
    err = one_error_line(capsys)
    assert f"'{EXPERIMENT}' is an interleaving experiment" in err and needle in err


def test_the_click_metric_is_refused_for_other_experiments(
        logs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["analyze", "--config", str(logs), "--experiment", "ab-1",
                 "--click-metric", "click"]) == 2
    assert "--click-metric is for interleaving experiments" in one_error_line(capsys)


def test_an_unknown_experiment_keeps_its_message(
        logs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["analyze", "--config", str(logs), "--experiment", "nope"]) == 2
    assert "nope" in one_error_line(capsys)


# ------------------------------------------------------------------ POST /v1/outcomes

INGEST = "ingest-secret"


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[dict[str, Any]]:
    provider = build_tracer_provider(None)
    core, _ = make_core(provider.get_tracer("test"))
    core.outcomes_log = OutcomesLogWriter(tmp_path / "outcomes", "test", batch_rows=100_000,
                                          flush_interval_s=3600)
    with TestClient(build_app(core, ingest_token=INGEST),
                    headers={"Authorization": f"Bearer {INGEST}"}) as client:
        yield {"client": client, "core": core, "dir": tmp_path / "outcomes"}
    core.close()


def test_post_outcomes_records_the_request_item_and_position(gateway: dict[str, Any]) -> None:
    events = [{"unit_id": "s1", "metric": "click", "value": 1, "request_id": "r-7",
               "item_id": "doc-2"},
              {"unit_id": "s1", "metric": "click", "value": 1, "request_id": "r-7",
               "position": 4},
              {"unit_id": "s2", "metric": "click", "value": 1}]
    r = gateway["client"].post("/v1/outcomes", json={"events": events})
    assert (r.status_code, r.json()) == (202, {"accepted": 3})
    gateway["core"].outcomes_log.flush()
    rows = read_outcomes(gateway["dir"]).select(["unit_id", "request_id", "item_id", "position"])
    assert sorted(rows.to_pylist(), key=str) == sorted([
        {"unit_id": "s1", "request_id": "r-7", "item_id": "doc-2", "position": None},
        {"unit_id": "s1", "request_id": "r-7", "item_id": None, "position": 4},
        {"unit_id": "s2", "request_id": None, "item_id": None, "position": None}], key=str)


@pytest.mark.parametrize(("event", "needle"), [
    ({"position": -1}, "position: Input should be greater than or equal to 0"),
    ({"position": 1.5}, "position: Input should be a valid integer"),
    ({"position": True}, "position: Input should be a valid integer"),
    ({"item_id": "doc 2"}, "item_id: String should match pattern"),
    ({"request_id": ""}, "request_id: String should have at least 1 character"),
])
def test_post_outcomes_refuses_a_bad_request_item_or_position(
        gateway: dict[str, Any], event: dict[str, Any], needle: str) -> None:
    body = {"unit_id": "s1", "metric": "click", "value": 1, "request_id": "r-7", **event}
    r = gateway["client"].post("/v1/outcomes", json=body)
    assert r.status_code == 422
    assert needle in r.json()["error"]["message"]
    assert gateway["core"].outcomes_log.pending == 0


def test_the_id_rules_are_the_gateways() -> None:
    # telemetry may not import serving: the two copies are held equal here.
    assert outcome_events.REQUEST_ID_PATTERN == REQUEST_ID_PATTERN
    assert outcome_events.MAX_REQUEST_ID_CHARS == MAX_REQUEST_ID_CHARS
    assert outcome_events.MAX_ITEM_ID_CHARS == MAX_ITEM_ID_CHARS


def test_a_spill_journal_from_before_the_item_columns_replays_with_them_null() -> None:
    old = records_to_table([OutcomeRecord("s1", "click", 1.0, 5, None, 7)]).drop_columns(
        ["request_id", "item_id", "position"])
    table = conform(old)
    assert table.schema == OUTCOME_LOG_SCHEMA
    assert table.select(["unit_id", "value", "request_id", "item_id", "position"]
                        ).to_pylist() == [{"unit_id": "s1", "value": 1.0, "request_id": None,
                                           "item_id": None, "position": None}]
    new = records_to_table([OutcomeRecord("s1", "click", 1.0, 5, None, 7, "r-1", "doc-2", 3)])
    assert new.schema == OUTCOME_LOG_SCHEMA and conform(new) is new
    assert new.select(["request_id", "item_id", "position"]).to_pylist() == [
        {"request_id": "r-1", "item_id": "doc-2", "position": 3}]
