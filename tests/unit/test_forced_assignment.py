"""Forced assignment for QA: the header's grammar and signatures, the gateway
honouring it on every protocol (and ignoring it when off), the decision log's
``forced`` column, and the analysis leaving forced decisions out."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from rollout.experiments.data import load_exposures
from rollout.experiments.ray_engine import DECISIONS, FileTask, Job, _read_file
from serving.cli.analyze import run_analysis
from serving.gateway.core import GatewayCore, build_app
from serving.gateway.forcing_key import forcing_signing_key
from serving.kernel.errors import ConfigError, ForceInvalid, ForceRefused
from serving.routing.forcing import (
    FORCED_LAYER,
    ForcedArm,
    ForcedVersion,
    ForcingPolicy,
    authorize,
    forced_decision,
    parse_force,
    resolve_force,
    sign_force,
)
from serving.routing.router import RolloutRoute, build_routing_table, route
from telemetry.decision_log import (
    DECISION_SCHEMA,
    DecisionLogWriter,
    DecisionRecord,
    conform,
    read_decisions,
)
from telemetry.metrics import RequestMetrics
from tests.unit.fakes import FEATURES, InMemoryRegistry, make_config
from tests.unit.test_analysis import AS_OF, START, _config, write_experiment

KEY = b"k" * 32
NOW = 1_800_000_000.0
FEATURE_VALUES = {name: 0.1 * i for i, name in enumerate(FEATURES)}
US = {"country": "US"}


def _table(**overrides: Any) -> Any:
    return build_routing_table(make_config(**overrides), InMemoryRegistry().resolve)


def _control_unit(prefix: str) -> str:
    """A unit id the hash puts in exp-a's control (so a forced challenger shows)."""
    table = _table()
    return next(u for i in range(1000) if (u := f"{prefix}-{i}")
                and route(table, u, US).arm == "control")


QA_UNIT = _control_unit("qa")
OTHER_UNIT = _control_unit("user")
POLICY = ForcingPolicy("x-rampart-force", frozenset({QA_UNIT}), KEY)


# ----------------------------------------------------------------- the grammar

@pytest.mark.parametrize(("value", "target", "expires_at", "signed"), [
    ("exp-a=challenger", ForcedArm("exp-a", "challenger"), None, False),
    (" exp-a=challenger ", ForcedArm("exp-a", "challenger"), None, False),
    ("version=clf/2", ForcedVersion("clf", "2"), None, False),
    ("version=clf/challenger", ForcedVersion("clf", "challenger"), None, False),
    # an experiment named "version": its arm, since an arm name holds no '/'
    ("version=treatment", ForcedArm("version", "treatment"), None, False),
    ("exp-a=control;exp=1800000100", ForcedArm("exp-a", "control"), 1_800_000_100, False),
    ("exp-a=control;exp=1800000100;sig=" + "ab" * 32, ForcedArm("exp-a", "control"),
     1_800_000_100, True),
    ("exp-a=control;sig=" + "AB" * 32, ForcedArm("exp-a", "control"), None, True),
])
def test_values_parse_into_their_target(value: str, target: Any, expires_at: int | None,
                                        signed: bool) -> None:
    force = parse_force(value)
    assert force.target == target and force.expires_at == expires_at
    assert (force.signature is not None) == signed
    if force.signature is not None:
        assert force.signature == force.signature.lower()
        assert not force.signed_text.endswith(force.signature)


@pytest.mark.parametrize(("value", "needle"), [
    ("", "expected EXPERIMENT=ARM"),
    ("challenger", "expected EXPERIMENT=ARM"),
    ("exp a=challenger", "no spaces"),
    ("exp-a=chal\u00e9nger", "printable"),
    ("=challenger", "EXPERIMENT=ARM"),
    ("exp-a=", "EXPERIMENT=ARM"),
    ("exp-a=b;c", "EXPERIMENT=ARM"),
    ("version=/2", "version=MODEL/VERSION"),
    ("version=clf/", "version=MODEL/VERSION"),
    ("exp-a=control;sig=abc", "64 hex digits"),
    ("exp-a=control;sig=" + "ab" * 32 + ";exp=1", "64 hex digits"),
    ("exp-a=control;exp=tomorrow", "seconds since the epoch"),
    ("exp-a=" + "a" * 600, "at most 512"),
])
def test_malformed_values_are_refused_naming_the_grammar(value: str, needle: str) -> None:
    with pytest.raises(ForceInvalid, match=needle) as refused:
        parse_force(value)
    assert refused.value.status == 400 and "\n" not in refused.value.message


# ----------------------------------------------------------------- who may force

def test_a_signature_holds_for_its_unit_and_value_only() -> None:
    signed = parse_force(sign_force(KEY, OTHER_UNIT, "exp-a=challenger"))
    authorize(POLICY, signed, OTHER_UNIT, NOW)  # no error: good for its unit
    with pytest.raises(ForceRefused, match="does not match unit 'someone-else'"):
        authorize(POLICY, signed, "someone-else", NOW)
    tampered = parse_force(sign_force(KEY, OTHER_UNIT, "exp-a=challenger").replace(
        "challenger", "control"))
    with pytest.raises(ForceRefused, match="signature does not match"):
        authorize(POLICY, tampered, OTHER_UNIT, NOW)
    other_key = parse_force(sign_force(b"z" * 32, OTHER_UNIT, "exp-a=challenger"))
    with pytest.raises(ForceRefused, match="signature does not match"):
        authorize(POLICY, other_key, OTHER_UNIT, NOW)


def test_an_expiry_is_signed_and_enforced() -> None:
    value = sign_force(KEY, OTHER_UNIT, "exp-a=challenger", expires_at=int(NOW) + 60)
    assert ";exp=" in value
    authorize(POLICY, parse_force(value), OTHER_UNIT, NOW + 59)
    with pytest.raises(ForceRefused, match="expired"):
        authorize(POLICY, parse_force(value), OTHER_UNIT, NOW + 60)
    # pushing the expiry out breaks the signature, which covers it
    later = value.replace(f"exp={int(NOW) + 60}", f"exp={int(NOW) + 6000}")
    with pytest.raises(ForceRefused, match="signature does not match"):
        authorize(POLICY, parse_force(later), OTHER_UNIT, NOW + 60)
    # an allowlisted unit's stated expiry holds too
    with pytest.raises(ForceRefused, match="expired"):
        authorize(POLICY, parse_force(f"exp-a=control;exp={int(NOW)}"), QA_UNIT, NOW)


def test_only_allowlisted_units_force_unsigned() -> None:
    authorize(POLICY, parse_force("exp-a=challenger"), QA_UNIT, NOW)
    with pytest.raises(ForceRefused, match=r"not in forced_assignment\.allowed_units and the "
                                           r"value is not signed"):
        authorize(POLICY, parse_force("exp-a=challenger"), OTHER_UNIT, NOW)
    unkeyed = ForcingPolicy("x-rampart-force", frozenset({QA_UNIT}), None)
    signed = parse_force(sign_force(KEY, OTHER_UNIT, "exp-a=challenger"))
    with pytest.raises(ForceRefused, match="no signing key"):
        authorize(unkeyed, signed, OTHER_UNIT, NOW)


# ----------------------------------------------------------------- forced decisions

def test_a_forced_arm_is_served_and_marked_whatever_the_hash_targeting_or_rollout() -> None:
    # a rollout of version 2 (challenger) at 100% would move every unit routed to 2
    # onto 1 if it applied; a forced arm is served its version as it is
    table = _table()
    rolled = build_routing_table(make_config(), InMemoryRegistry().resolve, rollouts=[
        RolloutRoute("ro-1", "rollout-ro-1", "user_id", "clf", "2", "1", 10_000)])
    for t in (table, rolled):
        # no context: exp-a's targeting (country US/CA) would not take the unit
        decision = forced_decision(t, ForcedArm("exp-a", "challenger"), QA_UNIT, {})
        assert (decision.experiment_id, decision.arm, decision.model.version) == (
            "exp-a", "challenger", "2")
        assert decision.forced and decision.bucket is None
        assert decision.layer == "experiment:exp-a" and decision.rollout_id is None
        assert decision.arm_weights == "control:9000,challenger:1000"
    assert route(table, QA_UNIT, US).arm == "control" and not route(table, QA_UNIT, US).forced
    # exp-b hashes session ids: a forced arm of it is logged with the session unit
    by_session = forced_decision(table, ForcedArm("exp-b", "treatment"), QA_UNIT,
                                 {"session_id": "s-9"})
    assert (by_session.unit_id, by_session.unit_type) == ("s-9", "session_id")


def test_a_forced_version_is_any_routed_version_outside_experiments() -> None:
    table = _table(shadows=[{"model": "clf", "version": "challenger"}])
    for named in ("2", "challenger"):
        decision = forced_decision(table, ForcedVersion("clf", named), QA_UNIT, US)
        assert decision.model.version == "2" and decision.forced
        assert (decision.experiment_id, decision.arm, decision.layer) == (
            None, "default", FORCED_LAYER)
    with pytest.raises(ForceInvalid, match="version clf/9 is not one this gateway routes"):
        forced_decision(table, ForcedVersion("clf", "9"), QA_UNIT, US)
    # a version only a shadow serves answers nobody
    only_shadowed = _table(experiments=[], shadows=[{"model": "clf", "version": "challenger"}])
    with pytest.raises(ForceInvalid, match=r"routed versions are \['clf/1'\]"):
        forced_decision(only_shadowed, ForcedVersion("clf", "2"), QA_UNIT, US)


def test_unknown_experiments_and_arms_are_named() -> None:
    table = _table()
    with pytest.raises(ForceInvalid, match="no experiment 'exp-z'; experiments are "
                                           r"\['exp-a', 'exp-b'\]"):
        forced_decision(table, ForcedArm("exp-z", "control"), QA_UNIT, US)
    with pytest.raises(ForceInvalid, match="experiment 'exp-a' has no arm 'treatment'"):
        forced_decision(table, ForcedArm("exp-a", "treatment"), QA_UNIT, US)


def test_refusal_comes_before_naming_what_the_table_holds() -> None:
    # a unit that may not force learns nothing about the experiments
    with pytest.raises(ForceRefused):
        resolve_force(POLICY, _table(), parse_force("exp-z=x"), OTHER_UNIT, US, NOW)


# ----------------------------------------------------------------- config and key

def _forcing_config(section: Any, **requests: Any) -> Any:
    return make_config(requests={"forced_assignment": section, **requests})


def test_forcing_is_off_unless_configured_and_mistakes_name_their_path() -> None:
    assert make_config().requests.forced_assignment is None
    on = _forcing_config({"allowed_units": ["qa-1"]}).requests.forced_assignment
    assert on is not None and on.header == "X-Rampart-Force" and on.signing_key_env is None
    cases = [
        ({}, "requests.forced_assignment: forced assignment allows nobody"),
        ({"signing_key_env": "1BAD"}, "requests.forced_assignment.signing_key_env"),
        ({"allowed_units": ["qa\n1"]}, "requests.forced_assignment.allowed_units.0"),
        ({"allowed_units": ["a", "a"]}, "unit ids listed twice: ['a']"),
        ({"allowed_units": ["a"], "header": "X Force"}, "requests.forced_assignment.header"),
        ({"allowed_units": ["a"], "key": "x"}, "requests.forced_assignment.key"),
    ]
    for section, needle in cases:
        with pytest.raises(ConfigError) as refused:
            _forcing_config(section)
        assert needle in refused.value.message, refused.value.message
    with pytest.raises(ConfigError, match="is also the unit_header"):
        _forcing_config({"allowed_units": ["a"], "header": "x-rampart-unit"})


def test_the_signing_key_comes_from_the_named_variable_and_must_be_there() -> None:
    config = _forcing_config({"signing_key_env": "QA_FORCE_KEY"})
    assert forcing_signing_key(config, {"QA_FORCE_KEY": "s" * 16}) == "s" * 16
    assert forcing_signing_key(make_config(), {}) is None
    assert forcing_signing_key(_forcing_config({"allowed_units": ["a"]}), {}) is None
    with pytest.raises(ConfigError, match="names QA_FORCE_KEY, which is not set"):
        forcing_signing_key(config, {})
    with pytest.raises(ConfigError, match="holds 5 bytes: a signing key needs at least 16"
                       ) as short:
        forcing_signing_key(config, {"QA_FORCE_KEY": "short"})
    assert "short" not in short.value.message.replace("holds 5 bytes", "")


# ----------------------------------------------------------------- the gateway

def _gateway(tmp: Path, forcing: ForcingPolicy | None) -> tuple[GatewayCore, DecisionLogWriter]:
    registry = InMemoryRegistry()
    table = build_routing_table(make_config(), registry.resolve)
    scorers = {(r.name, r.version): registry.load(r.name, r.version) for r in table.model_refs()}
    writer = DecisionLogWriter(tmp / "decisions", "test", batch_rows=1000, flush_interval_s=3600)
    core = GatewayCore(table, scorers, RequestMetrics(CollectorRegistry()), None, writer,
                       forcing=forcing)
    return core, writer


@pytest.fixture
def forcing_gateway(tmp_path: Path) -> Iterator[tuple[TestClient, DecisionLogWriter, Path]]:
    core, writer = _gateway(tmp_path, POLICY)
    with TestClient(build_app(core)) as client:
        yield client, writer, tmp_path / "decisions"
    core.close()


def _logged(writer: DecisionLogWriter, directory: Path) -> list[dict[str, Any]]:
    writer.flush()
    rows: list[dict[str, Any]] = read_decisions(directory).to_pylist()
    return sorted(rows, key=lambda r: r["request_id"])


def _predict(client: TestClient, unit: str, force: str | None, request_id: str) -> Any:
    headers = {} if force is None else {"X-Rampart-Force": force}
    return client.post("/v1/predict", headers=headers, json={
        "unit_id": unit, "features": FEATURE_VALUES, "context": US, "request_id": request_id})


def test_off_by_default_the_header_is_ignored(tmp_path: Path) -> None:
    core, writer = _gateway(tmp_path, None)
    with TestClient(build_app(core)) as client:
        answer = _predict(client, QA_UNIT, "exp-a=challenger", "r1")
        unsigned = _predict(client, OTHER_UNIT, "exp-a=nonsense", "r2")
    core.close()
    assert answer.status_code == unsigned.status_code == 200, answer.text
    assert answer.json()["arm"] == unsigned.json()["arm"] == "control"
    assert [r["forced"] for r in _logged(writer, tmp_path / "decisions")] == [False, False]


def test_an_allowlisted_unit_is_served_and_logged_as_forced(
    forcing_gateway: tuple[TestClient, DecisionLogWriter, Path],
) -> None:
    client, writer, directory = forcing_gateway
    forced = _predict(client, QA_UNIT, "exp-a=challenger", "r1")
    plain = _predict(client, QA_UNIT, None, "r2")
    version = _predict(client, QA_UNIT, "version=clf/challenger", "r3")
    assert forced.status_code == plain.status_code == version.status_code == 200, forced.text
    assert (forced.json()["arm"], forced.json()["model_version"]) == ("challenger", "2")
    assert (plain.json()["arm"], plain.json()["model_version"]) == ("control", "1")
    assert (version.json()["experiment_id"], version.json()["model_version"]) == (None, "2")
    rows = _logged(writer, directory)
    assert [(r["experiment_id"], r["arm"], r["model_version"], r["forced"], r["layer"])
            for r in rows] == [
        ("exp-a", "challenger", "2", True, "experiment:exp-a"),
        ("exp-a", "control", "1", False, "experiment:exp-a"),
        (None, "default", "2", True, "forced"),
    ]


def test_a_signed_value_forces_for_any_unit_and_a_bare_one_is_refused(
    forcing_gateway: tuple[TestClient, DecisionLogWriter, Path],
) -> None:
    client, writer, directory = forcing_gateway
    signed = _predict(client, OTHER_UNIT, sign_force(KEY, OTHER_UNIT, "exp-a=challenger"), "s1")
    assert signed.status_code == 200 and signed.json()["arm"] == "challenger", signed.text
    bare = _predict(client, OTHER_UNIT, "exp-a=challenger", "s2")
    assert bare.status_code == 403, bare.text
    error = bare.json()["error"]
    assert error["code"] == "force_refused" and error["request_id"] == "s2"
    assert "not in forced_assignment.allowed_units" in error["message"]
    stolen = _predict(client, "user-x", sign_force(KEY, OTHER_UNIT, "exp-a=challenger"), "s3")
    assert stolen.status_code == 403, stolen.text
    unknown = _predict(client, QA_UNIT, "exp-a=treatment", "s4")
    assert unknown.status_code == 400 and "has no arm 'treatment'" in unknown.text
    malformed = _predict(client, QA_UNIT, "challenger", "s5")
    assert malformed.status_code == 400 and malformed.json()["error"]["code"] == "force_invalid"
    # only the signed request was served; refusals are not decisions
    assert [(r["request_id"], r["forced"]) for r in _logged(writer, directory)] == [
        ("s1", True)]
    # a refused request takes no id: corrected, it may be sent again
    again = _predict(client, QA_UNIT, "exp-a=challenger", "s2")
    assert again.status_code == 200


def test_every_row_of_a_batch_must_be_allowed(
    forcing_gateway: tuple[TestClient, DecisionLogWriter, Path],
) -> None:
    client, writer, directory = forcing_gateway
    rows = [{"unit_id": u, "features": FEATURE_VALUES, "context": US}
            for u in (QA_UNIT, OTHER_UNIT)]
    refused = client.post("/v1/predict", json={"rows": rows},
                          headers={"X-Rampart-Force": "exp-a=challenger", "X-Request-ID": "b1"})
    assert refused.status_code == 403 and OTHER_UNIT in refused.text
    allowed = client.post("/v1/predict", json={"rows": rows[:1]},
                          headers={"X-Rampart-Force": "exp-a=challenger", "X-Request-ID": "b2"})
    assert allowed.status_code == 200, allowed.text
    assert allowed.json()["predictions"][0]["arm"] == "challenger"
    assert [r["forced"] for r in _logged(writer, directory)] == [True]


def _v2_body() -> dict[str, Any]:
    return {"inputs": [{"name": k, "shape": [1], "datatype": "FP64", "data": [v]}
                       for k, v in FEATURE_VALUES.items()]}


def test_mlflow_and_v2_protocols_honour_the_header_alike(
    forcing_gateway: tuple[TestClient, DecisionLogWriter, Path],
) -> None:
    client, writer, directory = forcing_gateway
    force = {"X-Rampart-Force": "exp-a=challenger", "X-Request-ID": ""}
    answers = {
        "mlflow": client.post("/invocations", json={"dataframe_records": [FEATURE_VALUES]},
                              headers={**force, "X-Rampart-Unit": QA_UNIT,
                                       "X-Request-ID": "m1"}),
        "mlflow-named": client.post("/v1/models/clf/invocations",
                                    json={"dataframe_records": [FEATURE_VALUES]},
                                    headers={**force, "X-Rampart-Unit": QA_UNIT,
                                             "X-Request-ID": "m2"}),
        "v2": client.post("/v2/models/clf/infer", json=_v2_body(),
                          headers={**force, "X-Rampart-Unit": QA_UNIT, "X-Request-ID": "v1"}),
    }
    for name, answer in answers.items():
        assert answer.status_code == 200, (name, answer.text)
        assert answer.headers["x-rampart-arm"] == "challenger", name
        assert answer.headers["x-rampart-model-version"] == "2", name
    refused = {
        "mlflow": client.post("/invocations", json={"dataframe_records": [FEATURE_VALUES]},
                              headers={**force, "X-Rampart-Unit": OTHER_UNIT,
                                       "X-Request-ID": "m3"}),
        "v2": client.post("/v2/models/clf/infer", json=_v2_body(),
                          headers={**force, "X-Rampart-Unit": OTHER_UNIT,
                                   "X-Request-ID": "v2"}),
    }
    assert refused["mlflow"].status_code == refused["v2"].status_code == 403
    assert refused["mlflow"].json()["error_code"] == "PERMISSION_DENIED"
    assert "may not force" in refused["v2"].json()["error"]
    logged = _logged(writer, directory)
    # MLflow's and V2's rows are named <request id>-<row>
    assert [(r["request_id"].split("-")[0], r["arm"], r["forced"]) for r in logged] == [
        ("m1", "challenger", True), ("m2", "challenger", True), ("v1", "challenger", True)]


# ----------------------------------------------------------------- analysis and old files

def _forced_records(units: list[str], arm: str) -> list[DecisionRecord]:
    at = (START + dt.timedelta(days=21)).timestamp()
    version = "2" if arm == "treatment" else "1"
    return [DecisionRecord(f"qa-{arm}-{i}", unit, "user_id", "exp", "experiment:exp", arm,
                           "clf", version, "primary", at + i, {"f0": 1.0}, 0.5, 1.0, "ok",
                           None, forced=True)
            for i, unit in enumerate(units)]


def test_forced_decisions_are_not_analysed(tmp_path: Path) -> None:
    data = write_experiment(tmp_path, units=6_000)
    treated = [str(u) for u, t in zip(data["ids"], data["treated"], strict=True) if t]
    writer = DecisionLogWriter(tmp_path / "decisions", "qa", batch_rows=100_000,
                               flush_interval_s=3600)
    # QA units forced into the treatment (units no hash exposed: would add 3,000
    # treatment units and a sample ratio mismatch), and treated units forced
    # into the control (would be crossovers)
    for record in (_forced_records([f"qa-{i}" for i in range(3_000)], "treatment")
                   + _forced_records(treated[:500], "control")):
        writer.append(record)
    writer.close()
    assert pc_sum(read_decisions(tmp_path / "decisions")["forced"]) == 3_500
    config = _config(tmp_path)
    report = run_analysis(config, "exp", as_of=AS_OF, now=AS_OF)
    assert report.units == 6_000 and report.crossovers == 0 and not report.srm.flag
    exposures, _ = load_exposures(tmp_path / "decisions", config.experiments[0], AS_OF)
    assert len(exposures.arm) == 6_000
    # the Ray engine's per-file read applies the same filter (run here without Ray)
    plan = config.experiments[0].analysis
    job = Job(config.experiments[0], plan, ("converted",),
              int(AS_OF.timestamp() * 1_000_000), 2)
    forced_file = next(p for p in (tmp_path / "decisions").rglob("part-qa-*.parquet"))
    task = FileTask(DECISIONS, str(tmp_path / "decisions"), str(forced_file), True)
    assert _read_file(task, job).num_rows == 0


def pc_sum(column: pa.ChunkedArray) -> int:
    return sum(1 for value in column.to_pylist() if value)


def test_a_log_written_before_the_forced_column_still_reads_and_analyses(
    tmp_path: Path,
) -> None:
    write_experiment(tmp_path, units=2_000)
    current = tmp_path / "decisions" / "part-0.parquet"
    written = pq.ParquetFile(current).read()
    names = written.column_names
    assert "forced" in names
    # as an older writer left it: every column but ``forced`` (each name once)
    old = written.select([i for i, name in enumerate(names)
                          if name != "forced" and names.index(name) == i])
    pq.write_table(old, current)
    assert "forced" not in pq.read_schema(current).names
    table = read_decisions(tmp_path / "decisions")
    assert table.num_rows == 4_000 and table["forced"].null_count == 4_000
    assert conform(old).schema == DECISION_SCHEMA
    report = run_analysis(_config(tmp_path), "exp", as_of=AS_OF, now=AS_OF)
    assert report.units == 2_000
