"""In-memory stand-ins that behave (no MLflow): a registry of linear scorers."""

from __future__ import annotations

from typing import Any

import yaml
from prometheus_client import CollectorRegistry

from models.registry import LinearScorer, UnknownModelVersion
from serving.gateway.core import GatewayCore
from serving.kernel.config import RampartConfig, parse_config
from serving.routing.router import build_routing_table
from telemetry.decision_log import DecisionLogWriter
from telemetry.metrics import RequestMetrics

FEATURES = tuple(f"f{i}" for i in range(8))

CONFIG_YAML = """
models:
  - name: clf
    versions: [champion, challenger]
default: {model: clf, version: champion}
experiments:
  - id: exp-a
    salt: salt-a
    unit: user_id
    targeting: [{attribute: country, op: in, values: [US, CA]}]
    arms:
      - {name: control, model: clf, version: champion, weight_bp: 9000}
      - {name: challenger, model: clf, version: challenger, weight_bp: 1000}
  - id: exp-b
    salt: salt-b
    unit: session_id
    arms:
      - {name: control, model: clf, version: champion, weight_bp: 5000}
      - {name: treatment, model: clf, version: challenger, weight_bp: 5000}
"""


class InMemoryRegistry:
    """Two versions of ``clf``; aliases champion -> 1, challenger -> 2."""

    def __init__(self) -> None:
        self.aliases = {"champion": "1", "challenger": "2"}
        self.scorers = {
            "1": LinearScorer("clf", "1", FEATURES, tuple([0.5] * 8), -0.1, True),
            "2": LinearScorer("clf", "2", FEATURES, tuple([0.25] * 8), 0.2, True),
        }

    def resolve(self, name: str, version_or_alias: str) -> str:
        version = self.aliases.get(version_or_alias, version_or_alias)
        if name != "clf" or version not in self.scorers:
            raise UnknownModelVersion(f"{name}/{version_or_alias}")
        return version

    def load(self, name: str, version: str) -> LinearScorer:
        return self.scorers[version]


class WritableRegistry(InMemoryRegistry):
    """The in-memory registry that also moves aliases and records version tags,
    as the rollout service does on promotion and rollback."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: dict[tuple[str, str], dict[str, str]] = {}

    def set_alias(self, name: str, alias: str, version: str) -> None:
        self.aliases[alias] = version

    def tag_version(self, name: str, version: str, key: str, value: str) -> None:
        self.tags.setdefault((name, version), {})[key] = value


class Clock:
    """A clock the test moves by hand (``clock.now += 1``)."""

    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def make_config(**overrides: Any) -> RampartConfig:
    data = yaml.safe_load(CONFIG_YAML)
    data.update(overrides)
    return parse_config(data)


def make_core(
    tracer: Any, decision_log: DecisionLogWriter | None = None
) -> tuple[GatewayCore, CollectorRegistry]:
    registry = InMemoryRegistry()
    table = build_routing_table(make_config(), registry.resolve)
    scorers = {(r.name, r.version): registry.load(r.name, r.version) for r in table.model_refs()}
    prom = CollectorRegistry()
    return GatewayCore(table, scorers, RequestMetrics(prom), tracer, decision_log), prom


class NoTraffic:
    """A rollout metrics source that has seen no requests: rollouts hold their step."""

    def snapshot(self, rollout_id: str) -> dict[str, Any]:
        return {}

    def custom(self, plan: Any, rollout_id: str) -> dict[str, float | None]:
        return {}
