"""``rampart analyze --engine ray`` on the session's local Ray: the same numbers as
the local engine, and a refusal for what it does not compute."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from serving.cli.analyze import run_analysis
from serving.cli.main import main
from tests.unit.test_analysis import AS_OF, START, _config, write_experiment
from tests.unit.test_analysis_stats import PLANS, assert_same_numbers

BEFORE_START = START - dt.timedelta(days=1)  # the plan may still change


@pytest.mark.parametrize("name", ["cuped_msprt", "group_sequential"])
def test_ray_engine_gives_the_local_numbers(ray_session: None, tmp_path: Path,
                                            name: str) -> None:
    write_experiment(tmp_path, units=8_000)
    config = _config(tmp_path, PLANS[name])
    local = run_analysis(config, "exp", as_of=AS_OF, now=BEFORE_START)
    distributed = run_analysis(config, "exp", as_of=AS_OF, now=BEFORE_START, engine="ray")
    body = local.to_json()
    assert body["metrics"][0]["sequential"]["looks"]  # the looks were reconstructed
    assert_same_numbers(distributed.to_json(), body)


def test_ray_engine_refuses_what_it_does_not_compute(
        ray_session: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_experiment(tmp_path, units=200)
    config = tmp_path / "rampart.yaml"
    import yaml

    from tests.unit.test_analysis import experiment_document

    config.write_text(yaml.safe_dump(experiment_document(tmp_path)))  # segments: platform
    base = ["analyze", "--config", str(config), "--experiment", "exp", "--engine", "ray",
            "--as-of", AS_OF.isoformat()]
    for extra, said in (([], "segments"), (["--record-look"], "--record-look"),
                        (["--period", "all"], "--period all")):
        assert main([*base, *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("rampart: error: --engine ray does not")
        assert said in err[0]
    assert main(["analyze", "--config", str(config), "--experiment", "exp",
                 "--ray-address", "auto"]) == 2
    assert "--ray-address is for --engine ray" in capsys.readouterr().err
