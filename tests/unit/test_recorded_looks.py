"""Sequential looks recorded when taken (``rampart analyze --record-look``) and
shown next to their reconstruction from the logs."""

from __future__ import annotations

import datetime as dt
import json
import stat
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from rollout.experiments.looks import LooksFileError, looks_path, read_looks, record_look
from rollout.experiments.report import render_html
from rollout.experiments.results import LookArm, SequentialLook
from serving.cli.analyze import run_analysis
from serving.cli.main import main
from telemetry.outcomes_log import OUTCOME_SCHEMA
from tests.unit.test_analysis import ANALYSIS, _config, write_experiment

AS_OF = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)
# write_experiment exposes units from 2026-11-21 over three days
T1 = dt.datetime(2026, 11, 22, 12, tzinfo=dt.UTC)
T2 = dt.datetime(2026, 11, 23, 12, tzinfo=dt.UTC)
SEQUENTIAL = {
    "msprt": {"method": "msprt", "looks": 5},
    "group_sequential": {"method": "group_sequential", "looks": 4, "max_units_per_arm": 1400},
    "none": {"method": "none"},
}


def _setup(tmp: Path, method: str) -> tuple[Path, Any, dict[str, Any]]:
    data = write_experiment(tmp, units=3_000, seed=5)
    config = _config(tmp, {**ANALYSIS, "sequential": SEQUENTIAL[method]})
    path = tmp / "rampart.yaml"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    return path, config, data


def _analyze(path: Path, *extra: str) -> list[str]:
    return ["analyze", "--config", str(path), "--experiment", "exp", *extra]


def _iso(moment: dt.datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


@pytest.mark.parametrize("method", ["msprt", "group_sequential", "none"])
def test_recorded_looks_stand_next_to_equal_reconstructions(
        tmp_path: Path, method: str, capsys: pytest.CaptureFixture[str]) -> None:
    path, config, _ = _setup(tmp_path, method)
    for moment in (T1, T2):
        assert main(_analyze(path, "--as-of", _iso(moment), "--record-look")) == 0
        assert f"look recorded: {looks_path(tmp_path / 'preregistrations', 'exp')}" in (
            capsys.readouterr().out)
    stored = looks_path(config.resolved_preregistration_dir(), "exp")
    assert stat.S_IMODE(stored.stat().st_mode) == 0o600
    assert len(stored.read_text().splitlines()) == 2
    # what was recorded is what the analysis at that time said
    at_t1 = run_analysis(config, "exp", as_of=T1, now=AS_OF)
    (primary,) = at_t1.primary()
    first = read_looks(config.resolved_preregistration_dir(), "exp")[0]
    assert first.at == T1 and first.method == method and first.metric == "converted"
    assert first.arms[0].abs_effect == primary.abs_effect
    assert first.units == (primary.n_control, primary.n_treatment)
    assert first.plan_sha256 == at_t1.preregistration.sha256
    if method == "msprt":
        assert first.arms[0].always_valid_p_value is not None
    if method == "group_sequential":
        assert first.arms[0].boundary is not None

    assert main(_analyze(path, "--as-of", _iso(AS_OF), "--json")) == 0
    body = json.loads(capsys.readouterr().out)
    looks = body["recorded_looks"]
    assert [c["recorded"]["at"] for c in looks] == [_iso(T1), _iso(T2)]
    for comparison in looks:
        recorded, reconstructed = comparison["recorded"], comparison["reconstructed"]
        assert comparison["differences"] == [] and comparison["note"] is None
        assert reconstructed["at"] == recorded["at"]
        assert reconstructed["units"] == recorded["units"]
        for then, now in zip(recorded["arms"], reconstructed["arms"], strict=True):
            for key in ("abs_effect", "z", "p_value", "always_valid_p_value", "boundary"):
                assert now[key] == (None if then[key] is None else
                                    pytest.approx(then[key], rel=1e-9)), key
    assert looks[0]["recorded"]["units"] != looks[1]["recorded"]["units"]  # two real looks
    assert main(_analyze(path, "--as-of", _iso(AS_OF))) == 0
    text = capsys.readouterr().out
    assert "recorded looks (2)" in text and text.count("same figures") == 2
    page = render_html(body)
    section = page[page.index("<section id='looks'>"):]
    section = section[:section.index("</section>")]
    assert section.count("same figures") == 2 and "differs" not in section


def _late_conversions(tmp: Path, data: dict[str, Any], *, received: dt.datetime,
                      name: str) -> None:
    """Conversions of control units, stamped in their windows before T1, that
    reached the outcomes log at ``received``."""
    exposed_by_t1 = (data["first_at"] < T1.timestamp() - 3_600) & ~data["treated"]
    ids = data["ids"][exposed_by_t1][:300]
    at = (data["first_at"][exposed_by_t1][:300] + 60) * 1_000_000
    table = pa.table({
        "unit_id": pa.array(list(ids), type=pa.string()),
        "metric": pa.array(["converted"] * ids.size),
        "value": pa.array(np.ones(ids.size)),
        "timestamp": pa.array(at.astype(np.int64)).cast(pa.timestamp("us", tz="UTC")),
        "experiment_id": pa.nulls(ids.size, pa.string()),
        "received_at": pa.array(np.full(ids.size, int(received.timestamp() * 1_000_000))).cast(
            pa.timestamp("us", tz="UTC")),
    }).cast(OUTCOME_SCHEMA)
    pq.write_table(table, tmp / "outcomes" / f"{name}.parquet")


def test_late_outcomes_leave_a_recorded_look_alone_and_a_rewrite_shows(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path, config, data = _setup(tmp_path, "msprt")
    assert main(_analyze(path, "--as-of", _iso(T1), "--record-look")) == 0
    capsys.readouterr()
    before = run_analysis(config, "exp", as_of=AS_OF, now=AS_OF)
    # Outcomes that happened before the look but arrived after it: the look could
    # not have seen them, so its reconstruction still equals what was recorded,
    # while today's estimate moves.
    _late_conversions(tmp_path, data, received=T2, name="late")
    after = run_analysis(config, "exp", as_of=AS_OF, now=AS_OF)
    assert after.primary()[0].mean_control != before.primary()[0].mean_control
    (late,) = after.recorded_looks
    assert late.differences == () and late.reconstructed is not None
    assert late.reconstructed.arms[0].abs_effect == pytest.approx(
        late.recorded.arms[0].abs_effect, rel=1e-9)
    # The same events claiming to have arrived before the look rewrite what the
    # logs say was known then: the comparison names the figures that moved.
    _late_conversions(tmp_path, data, received=T1 - dt.timedelta(hours=1), name="backfill")
    rewritten = run_analysis(config, "exp", as_of=AS_OF, now=AS_OF)
    (changed,) = rewritten.recorded_looks
    assert {"treatment.abs_effect", "treatment.z"} <= set(changed.differences)
    assert changed.recorded == late.recorded  # the record itself is never rewritten
    assert main(_analyze(path, "--as-of", _iso(AS_OF))) == 0
    assert "** DIFFERS: " in capsys.readouterr().out


def test_looks_of_another_time_or_period_are_listed_not_reconstructed(tmp_path: Path) -> None:
    _, config, _ = _setup(tmp_path, "msprt")
    directory = config.resolved_preregistration_dir()
    look = SequentialLook(at=AS_OF + dt.timedelta(days=1), method="msprt", metric="converted",
                          units=(1, 1), arms=(LookArm(arm="treatment"),))
    record_look(directory, "exp", look, recorded_at=AS_OF)
    record_look(directory, "exp", look.model_copy(update={"at": T1, "period": 7}),
                recorded_at=AS_OF)
    report = run_analysis(config, "exp", as_of=AS_OF, now=AS_OF)
    notes = [c.note for c in report.recorded_looks]
    assert all(c.reconstructed is None for c in report.recorded_looks)
    assert notes == ["recorded in period 7; this analysis is of period 1",
                     "taken after this analysis's as-of time"]


def test_record_look_refuses_all_periods_and_a_failed_run_records_nothing(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path, config, _ = _setup(tmp_path, "msprt")
    stored = looks_path(config.resolved_preregistration_dir(), "exp")
    assert main(_analyze(path, "--period", "all", "--record-look")) == 2
    assert "--record-look" in capsys.readouterr().err
    assert main(_analyze(path, "--record-look", "--decisions", str(tmp_path / "none"))) == 2
    capsys.readouterr()
    assert not stored.exists()


def test_a_damaged_looks_file_is_named_and_a_torn_last_line_ignored(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path, config, _ = _setup(tmp_path, "msprt")
    directory = config.resolved_preregistration_dir()
    assert main(_analyze(path, "--as-of", _iso(T1), "--record-look")) == 0
    stored = looks_path(directory, "exp")
    with stored.open("a") as handle:
        handle.write('{"at": "2026-11-')  # a crash in the middle of an append
    assert len(read_looks(directory, "exp")) == 1
    stored.write_text(stored.read_text() + '0"}\n{"at": 3}\n')
    with pytest.raises(LooksFileError, match=r"exp\.looks\.jsonl: line 2"):
        read_looks(directory, "exp")
    capsys.readouterr()
    assert main(_analyze(path, "--as-of", _iso(AS_OF))) == 2
    err = capsys.readouterr().err
    assert err.startswith("rampart: error:") and "line 2" in err and err.count("\n") == 1
