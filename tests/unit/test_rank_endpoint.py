"""``POST /v1/rank``: interleaving two rankers in the gateway.

The config's ``interleaving`` experiments, validated at load; the endpoint
driven in-process (two linear rankers that order the same items differently),
its answer checked against an independent ranking of the items and
``interleave``; replay on another replica; the decision log's ranker rows read
back from real Parquet files; every bad input's 4xx; the request metrics.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.compute as pc
import pytest
import yaml
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from models.outputs import Prediction, ScoredBatch
from models.registry import LinearScorer, Scorer, UnknownModelVersion
from serving.gateway.core import GatewayCore, build_app, rank_by_score
from serving.gateway.protocols import UnitPolicy
from serving.gateway.schemas import MAX_BATCH_ROWS
from serving.kernel.config import MAX_RANK_ITEMS, RampartConfig, parse_config
from serving.kernel.errors import ConfigError
from serving.routing.interleaving import interleave
from serving.routing.router import build_routing_table
from telemetry.decision_log import RANKER_ROLE, DecisionLogWriter, read_decisions
from telemetry.metrics import RequestMetrics

pytestmark = pytest.mark.unit

FEATURES = ("f0", "f1")
EXPERIMENT = "search-rank"
BASE: dict[str, Any] = {
    "models": [{"name": "ranker", "versions": ["champion", "2"]}],
    "default": {"model": "ranker", "version": "champion"},
    "interleaving": [{"id": EXPERIMENT, "unit": "session_id",
                      "a": {"model": "ranker", "version": "champion"},
                      "b": {"model": "ranker", "version": "2"},
                      "max_items": 20}],
}


class Rankers:
    """Ranker version 1 (alias ``champion``) scores by ``f0``, version 2 by
    ``f1``: the items below get opposite orders from the two."""

    def __init__(self) -> None:
        self.scorers: dict[str, Scorer] = {
            "1": LinearScorer("ranker", "1", FEATURES, (1.0, 0.0), 0.0, False),
            "2": LinearScorer("ranker", "2", FEATURES, (0.0, 1.0), 0.0, False),
        }

    def resolve(self, name: str, version_or_alias: str) -> str:
        version = {"champion": "1"}.get(version_or_alias, version_or_alias)
        if name != "ranker" or version not in self.scorers:
            raise UnknownModelVersion(f"{name}/{version_or_alias}")
        return version

    def load(self, name: str, version: str) -> Scorer:
        return self.scorers[version]


def config(**overrides: Any) -> RampartConfig:
    data = json.loads(json.dumps(BASE))
    data["interleaving"][0].update(overrides)
    return parse_config(data)


def make_core(cfg: RampartConfig, writer: DecisionLogWriter | None = None,
              prom: CollectorRegistry | None = None, rankers: Rankers | None = None,
              unit_policy: UnitPolicy | None = None) -> GatewayCore:
    registry = rankers or Rankers()
    table = build_routing_table(cfg, registry.resolve)
    scorers = {(r.name, r.version): registry.load(r.name, r.version) for r in table.model_refs()}
    return GatewayCore(table, scorers, RequestMetrics(prom or CollectorRegistry()), None, writer,
                       unit_policy=unit_policy)


def items(n: int = 8) -> list[dict[str, Any]]:
    """``n`` items: f0 rises with the index and f1 falls, so ranker 1 puts the
    last item first and ranker 2 the first one."""
    return [{"item_id": f"item-{i:02d}", "features": {"f0": float(i), "f1": float(n - i)}}
            for i in range(n)]


def body(request_id: str, unit: str = "s-1", n: int = 8, **extra: Any) -> dict[str, Any]:
    return {"unit_id": unit, "request_id": request_id, "items": items(n), **extra}


def post(client: TestClient, payload: Any, headers: dict[str, str] | None = None) -> Any:
    content = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return client.post("/v1/rank", content=content,
                       headers={"content-type": "application/json", **(headers or {})})


@pytest.fixture
def writer(tmp_path: Path) -> Iterator[DecisionLogWriter]:
    log = DecisionLogWriter(tmp_path / "decisions", "t", batch_rows=100_000,
                            flush_interval_s=3600)
    yield log
    log.close()


# ----------------------------------------------------------------- config

def test_interleaving_config_resolves_aliases_into_the_routing_table() -> None:
    table = build_routing_table(config(method="balanced", length=5), Rankers().resolve)
    spec = table.interleaving(EXPERIMENT)
    assert spec is not None
    assert (spec.a.name, spec.a.version, spec.a.alias) == ("ranker", "1", "champion")
    assert (spec.b.version, spec.method, spec.length, spec.max_items) == ("2", "balanced", 5, 20)
    assert spec.layer == f"interleaving:{EXPERIMENT}"
    # Both rankers are loaded with the table, and /v1/routing shows the experiment.
    assert {("ranker", "1"), ("ranker", "2")} <= {(r.name, r.version)
                                                  for r in table.model_refs()}
    described = table.describe()["interleavings"]
    assert described[0]["a"]["model_version"] == "1" and described[0]["method"] == "balanced"
    assert config().interleaving[0].method == "team_draft"
    # The config's bound on candidates is the gateway's bound on rows.
    assert MAX_RANK_ITEMS == MAX_BATCH_ROWS


@pytest.mark.parametrize(("change", "message"), [
    ({"b": {"model": "ranker", "version": "7"}},
     "interleaving 'search-rank' ranker 'b': unknown model version ranker/7"),
    ({"a": {"model": "other", "version": "1"}},
     "interleaving 'search-rank' ranker 'a': unknown model version other/1"),
    ({"b": {"model": "ranker", "version": "champion"}}, "rankers 'a' and 'b' are both"),
    ({"method": "zipper"}, "interleaving.0.method"),
    ({"max_items": 0}, "interleaving.0.max_items"),
    ({"max_items": MAX_BATCH_ROWS + 1}, "interleaving.0.max_items"),
    ({"length": 30}, "length 30 is above max_items 20"),
    ({"salt": "s"}, "interleaving.0.salt: Extra inputs are not permitted"),
])
def test_a_bad_interleaving_experiment_is_refused_at_load(change: dict[str, Any],
                                                          message: str) -> None:
    data = json.loads(json.dumps(BASE))
    data["interleaving"][0].update(change)
    with pytest.raises(ConfigError, match="not a valid Rampart config") as refused:
        parse_config(data)
    assert message in refused.value.message


def test_an_interleaving_id_is_not_also_an_experiment_id() -> None:
    data = json.loads(json.dumps(BASE))
    data["models"][0]["versions"] = ["champion", "2"]
    data["experiments"] = [{"id": EXPERIMENT, "salt": "s", "arms": [
        {"name": "control", "model": "ranker", "version": "champion", "weight_bp": 5000},
        {"name": "treatment", "model": "ranker", "version": "2", "weight_bp": 5000}]}]
    with pytest.raises(ConfigError, match="also experiment ids"):
        parse_config(data)


def test_a_yaml_config_with_interleaving_loads() -> None:
    text = """
models: [{name: ranker, versions: ["1", "2"]}]
default: {model: ranker, version: "1"}
interleaving:
  - id: home-feed
    a: {model: ranker, version: "1"}
    b: {model: ranker, version: "2"}
    method: balanced
"""
    spec = parse_config(yaml.safe_load(text)).interleaving[0]
    assert (spec.id, spec.method, spec.max_items, spec.length) == (
        "home-feed", "balanced", 100, None)


# ----------------------------------------------------------------- ranking

def test_rank_answers_the_two_rankings_interleaved() -> None:
    core = make_core(config())
    with TestClient(build_app(core)) as client:
        response = post(client, body("req-1"))
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["request_id"] == "req-1" and response.headers["x-request-id"] == "req-1"
    assert (answer["experiment"], answer["method"]) == (EXPERIMENT, "team_draft")
    # Ranker 1 ranks by f0 (item-07 first), ranker 2 by f1 (item-00 first).
    ranking_a = tuple(f"item-{i:02d}" for i in reversed(range(8)))
    ranking_b = tuple(f"item-{i:02d}" for i in range(8))
    expected = interleave("team_draft", ranking_a, ranking_b, key="req-1")
    shown = answer["ranking"]
    assert [p["item_id"] for p in shown] == list(expected.items)
    assert [p["ranker"] for p in shown] == list(expected.teams)
    assert [p["position"] for p in shown] == list(range(8))
    # Both rankers contributed: the list is no copy of either ranking.
    assert tuple(p["item_id"] for p in shown) not in (ranking_a, ranking_b)
    top = shown[0]
    assert top["item_id"] == (ranking_a if top["ranker"] == "a" else ranking_b)[0]


def test_team_draft_teams_are_balanced_and_the_first_pick_is_a_fair_coin() -> None:
    core = make_core(config(max_items=20))
    first_a = 0
    requests = 120
    with TestClient(build_app(core)) as client:
        for r in range(requests):
            response = post(client, body(f"balance-{r}", unit=f"s-{r}", n=9))
            assert response.status_code == 200, response.text
            teams = [p["ranker"] for p in response.json()["ranking"]]
            # Team draft: after every pick the two teams differ by at most one.
            for k in range(1, len(teams) + 1):
                assert abs(teams[:k].count("a") - teams[:k].count("b")) <= 1
            first_a += teams[0] == "a"
    # The coin is the request id's hash: about half the requests start with A
    # (a fixed set of ids, so the count is deterministic; 3.3 sigma around 60).
    assert 42 <= first_a <= 78


def test_balanced_method_and_length_limit_the_list() -> None:
    core = make_core(config(method="balanced", length=4))
    with TestClient(build_app(core)) as client:
        answer = post(client, body("bal-1")).json()
    ranking_a = tuple(f"item-{i:02d}" for i in reversed(range(8)))
    ranking_b = tuple(f"item-{i:02d}" for i in range(8))
    expected = interleave("balanced", ranking_a, ranking_b, key="bal-1", length=4)
    assert answer["method"] == "balanced"
    assert [(p["item_id"], p["ranker"]) for p in answer["ranking"]] == list(
        zip(expected.items, expected.teams, strict=True))
    assert len(answer["ranking"]) == 4


def test_a_replayed_request_id_gets_the_same_list_on_another_replica() -> None:
    lists = []
    for _ in range(2):  # two replicas: each answers the id once
        with TestClient(build_app(make_core(config()))) as client:
            lists.append(post(client, body("replayed", n=12)).json()["ranking"])
    assert lists[0] == lists[1]
    with TestClient(build_app(make_core(config()))) as client:
        assert post(client, body("replayed", n=12)).status_code == 200
        again = post(client, body("replayed", n=12))
        others = [post(client, body(f"id-{k}", n=12)).json()["ranking"] for k in range(6)]
    # The same replica refuses an id it already answered, as /v1/predict does.
    assert again.status_code == 409
    assert again.json()["error"]["code"] == "duplicate_request_id"
    # Other request ids draw other coins, so other lists.
    assert len({json.dumps(ranking) for ranking in [lists[0], *others]}) > 1


def test_equal_scores_rank_by_item_id() -> None:
    batch = ScoredBatch((Prediction(1.0, 1.0), Prediction(2.0, 2.0), Prediction(1.0, 1.0)))
    assert rank_by_score(["b", "c", "a"], batch) == ("c", "a", "b")


def test_the_unit_can_come_from_the_header_or_the_request_id(
        writer: DecisionLogWriter, tmp_path: Path) -> None:
    with TestClient(build_app(make_core(config(), writer))) as client:
        payload = body("hdr-1")
        del payload["unit_id"]
        assert post(client, payload, {"x-rampart-unit": "s-header"}).status_code == 200
    hashed = make_core(config(), writer, unit_policy=UnitPolicy(hash_request_id=True))
    with TestClient(build_app(hashed)) as client:
        payload = body("hash-1")
        del payload["unit_id"]
        assert post(client, payload).status_code == 200
    writer.close()
    rows = read_decisions(tmp_path / "decisions").to_pylist()
    units = {(r["request_id"], r["unit_id"], r["unit_source"], r["unit_type"]) for r in rows}
    assert units == {("hdr-1", "s-header", "header", "session_id"),
                     ("hash-1", "hash-1", "request_id", "request_id")}


# ----------------------------------------------------------------- decision log

def test_the_decision_log_holds_every_item_ranker_position_and_version(
        writer: DecisionLogWriter, tmp_path: Path) -> None:
    core = make_core(config(length=6), writer)
    with TestClient(build_app(core)) as client:
        answer = post(client, body("logged-1", unit="s-42")).json()
    writer.close()
    table = read_decisions(tmp_path / "decisions")
    rows = table.to_pylist()
    assert len(rows) == 16  # two rankers x eight items
    assert {r["request_id"] for r in rows} == {"logged-1"}
    assert {(r["unit_id"], r["unit_type"], r["unit_source"]) for r in rows} == {
        ("s-42", "session_id", "body")}
    assert {(r["experiment_id"], r["layer"], r["role"], r["status"], r["interleaving_method"])
            for r in rows} == {(EXPERIMENT, f"interleaving:{EXPERIMENT}", RANKER_ROLE, "ok",
                                "team_draft")}
    # Each ranker's version is on its own rows (the alias resolved).
    assert {(r["arm"], r["model_name"], r["model_version"]) for r in rows} == {
        ("a", "ranker", "1"), ("b", "ranker", "2")}
    for r in rows:
        features = r["features"] if isinstance(r["features"], dict) else dict(r["features"])
        score = features["f0"] if r["arm"] == "a" else features["f1"]
        assert r["prediction"] == pytest.approx(score)
        index = int(r["item_id"].split("-")[1])
        # Ranker a's list is item-07 .. item-00, ranker b's item-00 .. item-07.
        assert r["item_rank"] == (8 - index if r["arm"] == "a" else index + 1)
    # The list shown: the rows whose ranker contributed their position.
    shown = sorted((r["position"], r["item_id"], r["team"]) for r in rows
                   if r["arm"] == r["team"])
    assert [(item, team) for _, item, team in shown] == [
        (p["item_id"], p["ranker"]) for p in answer["ranking"]]
    assert [position for position, _, _ in shown] == list(range(6))
    # Both rows of an item agree on where it was shown; two items were not shown.
    by_item: dict[str, set[Any]] = {}
    for r in rows:
        by_item.setdefault(r["item_id"], set()).add((r["position"], r["team"]))
    assert all(len(seen) == 1 for seen in by_item.values())
    assert sum(seen == {(None, None)} for seen in by_item.values()) == 2
    # Readers of served decisions keep role "primary": none of these is an exposure.
    assert table.filter(pc.equal(table["role"], "primary")).num_rows == 0


def test_a_refused_request_is_not_logged(writer: DecisionLogWriter, tmp_path: Path) -> None:
    with TestClient(build_app(make_core(config(), writer))) as client:
        payload = body("refused-1")
        payload["items"][3]["features"]["f1"] = "high"
        assert post(client, payload).status_code == 422
    writer.close()
    assert read_decisions(tmp_path / "decisions").num_rows == 0


# ----------------------------------------------------------------- refusals

def _with_items(n: int) -> dict[str, Any]:
    return body("many", n=n)


def _dup() -> dict[str, Any]:
    payload = body("dup")
    payload["items"][5]["item_id"] = payload["items"][1]["item_id"]
    return payload


def _feature(value: Any, name: str = "f0") -> dict[str, Any]:
    payload = body("feat")
    payload["items"][2]["features"][name] = value
    return payload


def _missing_feature() -> dict[str, Any]:
    payload = body("missing")
    del payload["items"][4]["features"]["f1"]
    return payload


def _no_unit() -> dict[str, Any]:
    payload = body("no-unit")
    del payload["unit_id"]
    return payload


REFUSALS: list[tuple[str, Any, int, str, str]] = [
    ("not json", b"{items: [", 400, "invalid_json", "not valid JSON"),
    ("not an object", [1, 2], 422, "validation_failed", "must be a JSON object"),
    ("no items", body("e", n=0), 422, "validation_failed", "items: List should have at least"),
    ("items missing", {"unit_id": "u"}, 422, "validation_failed", "items: Field required"),
    ("duplicate item ids", _dup(), 422, "validation_failed",
     "items.5.item_id: 'item-01' is also items.1's"),
    ("over max_items", _with_items(21), 413, "payload_too_large",
     "21 items in one request; interleaving experiment 'search-rank' takes at most 20"),
    ("over the request limit", _with_items(MAX_BATCH_ROWS + 1), 413, "payload_too_large",
     f"takes at most {MAX_BATCH_ROWS}"),
    ("unknown experiment", body("x", experiment="nope"), 404, "experiment_not_found",
     "no interleaving experiment 'nope'"),
    ("string feature", _feature("high"), 422, "validation_failed", "items.2.features.f0"),
    ("object feature", _feature({"x": 1}), 422, "validation_failed", "items.2.features.f0"),
    ("NaN feature", b'{"unit_id": "u", "items": [{"item_id": "a", "features": '
                    b'{"f0": NaN, "f1": 1.0}}]}', 422, "validation_failed",
     "items.0.features.f0"),
    ("missing feature", _missing_feature(), 422, "validation_failed", "items.4.features"),
    ("no unit id", _no_unit(), 400, "unit_missing", "no unit id"),
    ("unknown field", body("x", context={"country": "US"}), 422, "validation_failed",
     "context: Extra inputs are not permitted"),
    ("empty item id", {"unit_id": "u", "items": [{"item_id": "", "features": {}}]}, 422,
     "validation_failed", "items.0.item_id"),
    ("item id not a string", {"unit_id": "u", "items": [{"item_id": 7, "features": {}}]}, 422,
     "validation_failed", "items.0.item_id"),
]


@pytest.mark.parametrize(("payload", "status", "code", "message"),
                         [r[1:] for r in REFUSALS], ids=[r[0] for r in REFUSALS])
def test_every_bad_request_gets_its_4xx(payload: Any, status: int, code: str,
                                        message: str) -> None:
    prom = CollectorRegistry()
    core = make_core(config(), prom=prom)
    with TestClient(build_app(core)) as client:
        response = post(client, payload, {"x-request-id": "hdr-id"})
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code
    assert message in error["message"]
    assert error["request_id"] is not None
    assert prom.get_sample_value("rampart_requests_total", {
        "model_name": "", "model_version": "", "experiment_id": "", "arm": "",
        "rollout_id": "", "rollout_arm": "", "status": "rejected"}) == 1.0


def test_transport_refusals_use_the_one_error_body() -> None:
    with TestClient(build_app(make_core(config()))) as client:
        wrong_type = client.post("/v1/rank", content=json.dumps(body("t")),
                                 headers={"content-type": "text/plain"})
        bad_header = post(client, body("t"), {"x-request-id": "has space"})
        wrong_method = client.get("/v1/rank")
        too_large = post(client, {"unit_id": "u", "items": [], "pad": "x" * (1 << 20)})
    assert (wrong_type.status_code, wrong_type.json()["error"]["code"]) == (
        415, "unsupported_media_type")
    assert (bad_header.status_code, bad_header.json()["error"]["code"]) == (
        422, "validation_failed")
    assert wrong_method.status_code == 405
    assert (too_large.status_code, too_large.json()["error"]["code"]) == (
        413, "payload_too_large")


def test_which_experiment_when_several_or_none_are_configured() -> None:
    data = json.loads(json.dumps(BASE))
    data["interleaving"].append({**data["interleaving"][0], "id": "other",
                                 "method": "balanced"})
    several = make_core(parse_config(data))
    with TestClient(build_app(several)) as client:
        unnamed = post(client, body("u-1"))
        named = post(client, body("u-2", experiment="other"))
    assert unnamed.status_code == 422
    assert "experiment: required" in unnamed.json()["error"]["message"]
    assert (named.status_code, named.json()["experiment"], named.json()["method"]) == (
        200, "other", "balanced")
    data["interleaving"] = []
    with TestClient(build_app(make_core(parse_config(data)))) as client:
        none = post(client, body("u-3"))
    assert none.status_code == 404
    assert none.json()["error"]["code"] == "experiment_not_found"


def test_an_online_transform_applies_to_items_and_names_a_bad_one() -> None:
    core = make_core(config().model_copy(update={"feature_transforms": parse_config({
        **BASE, "feature_transforms": [{"feature": "f0", "op": "scale", "value": -1.0}],
    }).feature_transforms}))
    with TestClient(build_app(core)) as client:
        answer = post(client, body("tr-1")).json()
        refused = post(client, _feature(True))
    # Scaled by -1, f0 ranks the other way: ranker a now agrees with ranker b.
    assert [p["item_id"] for p in answer["ranking"]] == [f"item-{i:02d}" for i in range(8)]
    assert refused.status_code == 422
    assert "items.2.features.f0" in refused.json()["error"]["message"]


VALUES = st.one_of(st.floats(), st.integers(), st.booleans(), st.none(), st.text(max_size=3),
                   st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=2),
                                                                        st.integers(), max_size=1))
ITEM = st.fixed_dictionaries({"item_id": st.one_of(st.text(max_size=4), st.integers()),
                              "features": st.dictionaries(st.sampled_from(["f0", "f1", "f9"]),
                                                          VALUES, max_size=3)})
BODIES = st.fixed_dictionaries(
    {"items": st.one_of(st.lists(ITEM, max_size=25), VALUES)},
    optional={"unit_id": st.one_of(st.text(max_size=4), st.integers()),
              "request_id": st.one_of(st.text(max_size=4), st.none()),
              "experiment": st.one_of(st.just(EXPERIMENT), st.text(max_size=3))})


def test_any_body_is_answered_or_refused_with_a_4xx() -> None:
    # One replica for every example: a request id drawn twice is then a 409.
    with TestClient(build_app(make_core(config()))) as client:

        @settings(max_examples=150, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(payload=BODIES)
        def one(payload: dict[str, Any]) -> None:
            response = client.post("/v1/rank", content=json.dumps(payload, allow_nan=True),
                                   headers={"content-type": "application/json"})
            assert response.status_code in (200, 400, 404, 409, 413, 422), response.text
            answer = response.json()
            if response.status_code == 200:
                shown = sorted(p["item_id"] for p in answer["ranking"])
                assert shown == sorted(item["item_id"] for item in payload["items"])
            else:
                assert answer["error"]["code"] and answer["error"]["message"]

        one()


class Broken:
    """A ranker version whose every call fails, or that scores nothing."""

    def __init__(self, inner: Scorer, scoreless: bool = False) -> None:
        self.inner = inner
        self.scoreless = scoreless

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def predict_rows(self, rows: Any, params: Any = None) -> ScoredBatch:
        if self.scoreless:
            return ScoredBatch(tuple(Prediction("good", None) for _ in rows))
        raise RuntimeError("model exploded")


@pytest.mark.parametrize(("scoreless", "message"), [
    (False, "ranker 'b': RuntimeError: model exploded"),
    (True, "ranker 'b' (ranker version 2) answered no numeric score for item 'item-00'"),
])
def test_a_failing_ranker_is_a_logged_server_error(
        scoreless: bool, message: str, writer: DecisionLogWriter, tmp_path: Path) -> None:
    rankers = Rankers()
    rankers.scorers["2"] = Broken(rankers.scorers["2"], scoreless)  # type: ignore[assignment]
    prom = CollectorRegistry()
    with TestClient(build_app(make_core(config(), writer, prom, rankers))) as client:
        response = post(client, body("broken-1"))
    assert response.status_code == 500
    assert response.json()["error"]["code"] == "model_error"
    assert message in response.json()["error"]["message"]
    writer.close()
    rows = read_decisions(tmp_path / "decisions").to_pylist()
    assert len(rows) == 16
    assert {(r["status"], r["position"]) for r in rows} == {("error", None)}
    assert prom.get_sample_value("rampart_requests_total", {
        "model_name": "ranker", "model_version": "2", "experiment_id": EXPERIMENT, "arm": "b",
        "rollout_id": "", "rollout_arm": "", "status": "error"}) == 1.0


# ----------------------------------------------------------------- metrics

def test_each_answer_counts_once_per_ranker_version() -> None:
    prom = CollectorRegistry()
    core = make_core(config(), prom=prom)
    with TestClient(build_app(core)) as client:
        for r in range(5):
            assert post(client, body(f"m-{r}")).status_code == 200
        assert post(client, body("bad", experiment="nope")).status_code == 404
        exposition = client.get("/metrics").text
    for arm, version in (("a", "1"), ("b", "2")):
        assert prom.get_sample_value("rampart_requests_total", {
            "model_name": "ranker", "model_version": version, "experiment_id": EXPERIMENT,
            "arm": arm, "rollout_id": "", "rollout_arm": "", "status": "ok"}) == 5.0
    assert f'experiment_id="{EXPERIMENT}"' in exposition
    # /v1/predict still routes the default: the rank experiment is no A/B experiment.
    assert core.served_names == frozenset({"ranker"})
