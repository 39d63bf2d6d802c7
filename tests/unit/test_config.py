from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from serving.documents import load_config
from serving.kernel.config import parse_config
from serving.kernel.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


MAIN_EXPERIMENT = "demo-champion-vs-challenger"


def _base() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "deploy" / "rampart.yaml").read_text())
    return data


def _main(data: dict[str, Any]) -> dict[str, Any]:
    """The untargeted champion/challenger experiment (a targeted one comes first)."""
    return next(e for e in data["experiments"] if e["id"] == MAIN_EXPERIMENT)


def test_embedded_default_config_is_valid() -> None:
    config = load_config(ROOT / "deploy" / "rampart.yaml")
    main = next(e for e in config.experiments if e.id == MAIN_EXPERIMENT)
    assert main.arms[0].weight_bp == 9000
    assert config.resolved_tracking_uri().startswith("sqlite:///")


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: _main(d)["arms"][1].update(version="7"), "unknown model version"),
        (lambda d: _main(d)["arms"][1].update(weight_bp=500), "sum to 9500"),
        (lambda d: d["experiments"].append(_main(d)), "duplicate experiment ids"),
        (lambda d: _main(d).update(salt="bad salt!"), "salt must be"),
        (lambda d: _main(d).update(unit="email"), "user_id"),
        (lambda d: d["default"].update(model="nope"), "unknown model version nope/champion"),
        (lambda d: _main(d)["arms"][1].update(name="control"), "distinct"),
        (lambda d: d.update(colour="blue"), "colour"),
        (
            lambda d: _main(d).update(
                targeting=[{"attribute": "age", "op": "gte", "value": "x"}]
            ),
            "numeric",
        ),
    ],
)
def test_each_mistake_is_named(mutate: Any, message: str) -> None:
    data = _base()
    mutate(data)
    with pytest.raises(ConfigError) as err:
        parse_config(data)
    assert message in str(err.value)


def test_every_mistake_is_reported_at_once() -> None:
    data = _base()
    data["experiments"][0]["salt"] = ""
    data["server"] = {"port": 0}
    with pytest.raises(ConfigError) as err:
        parse_config(data)
    text = str(err.value)
    assert "experiments.0.salt" in text and "server.port" in text


def test_unreadable_and_non_mapping_files_give_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(bad)
    broken = tmp_path / "broken.yaml"
    broken.write_text("models: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(broken)


def test_replica_count_is_left_to_the_deployment_unless_given() -> None:
    import os

    from serving.gateway.ray_app import DEFAULT_REPLICAS, default_replicas, deployment_options

    base = {"models": [{"name": "m", "versions": ["1"]}],
            "default": {"model": "m", "version": "1"}}
    config = parse_config(base)
    assert config.server.num_replicas is None  # the same config on every machine
    expected = max(1, min(DEFAULT_REPLICAS, os.cpu_count() or 1))
    assert DEFAULT_REPLICAS == 2 and default_replicas() == expected
    assert deployment_options(config) == {"num_replicas": expected}
    assert deployment_options(config, 1) == {"num_replicas": 1}  # rampart serve --replicas 1
    pinned = parse_config({**base, "server": {"num_replicas": 1}})
    assert deployment_options(pinned) == {"num_replicas": 1}
    assert deployment_options(pinned, 3) == {"num_replicas": 3}
