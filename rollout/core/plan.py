"""Rollout plans: what to ramp, how fast, and what rolls it back.

Validated once at the edge (CLI or admin API); the controller receives a
frozen :class:`RolloutPlan`. Vocabulary follows progressive-delivery tools:
``interval_s`` between analyses, ``failure_limit`` (Flagger's threshold)
failed checks in a row before rollback, ``steps`` in percent.
"""

from __future__ import annotations

import itertools
from typing import Any, Literal, get_args
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from serving.kernel.config import validate_document
from serving.kernel.errors import PlanError
from serving.kernel.ids import (
    ID_PATTERN,
    MAX_MODEL_NAME_CHARS,
    MODEL_NAME_PATTERN,
    SALT_PATTERN,
    VERSION_PATTERN,
    UnitType,
)


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ThresholdRange(_Frozen):
    """Accepted range of a custom check's value; either end may be open."""

    min: float | None = None
    max: float | None = None

    @model_validator(mode="after")
    def _ordered(self) -> ThresholdRange:
        if self.min is None and self.max is None:
            raise ValueError("a thresholdRange needs min, max or both")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"thresholdRange min {self.min} is above max {self.max}")
        return self


class PromQLCheck(_Frozen):
    """A custom check: a PromQL query whose scalar result must lie in the range.

    ``{rollout_id}``, ``{model_name}``, ``{baseline_version}`` and
    ``{candidate_version}`` in the query are replaced before it runs.
    """

    name: str = Field(pattern=ID_PATTERN)
    query: str = Field(min_length=1)
    threshold_range: ThresholdRange = Field(alias="thresholdRange")

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


class Guardrails(_Frozen):
    """Absolute limits on the candidate, mostly as deltas against the baseline."""

    p99_latency_delta_ms: float | None = Field(default=50.0, gt=0)
    p99_latency_max_ms: float | None = Field(default=None, gt=0)
    error_rate_delta: float | None = Field(default=0.01, gt=0, le=1)
    min_check_requests: int = Field(
        default=10, ge=1, description="candidate requests a check needs before it can judge"
    )
    # Shadow parity (the candidate mirrored against the baseline before it serves):
    min_shadow_agreement: float | None = Field(default=None, ge=0, le=1)
    max_shadow_score_diff_p99: float | None = Field(default=None, ge=0)
    promql: tuple[PromQLCheck, ...] = ()


# What a notify webhook can subscribe to: one kind per audit-trail transition.
EventKind = Literal["started", "step", "paused", "resumed", "rolled_back", "promoted", "aborted"]
EVENT_KINDS: tuple[EventKind, ...] = get_args(EventKind)


def _hook_url(url: str) -> str:
    """An absolute http(s) URL with a host: a hook is posted to, never opened as a file."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"a webhook url must be http or https, got {url!r}")
    if not parts.hostname:
        raise ValueError(f"a webhook url needs a host, got {url!r}")
    return url


class Webhook(_Frozen):
    """Where rollout events are posted: Slack-compatible ``{"text"}`` or the generic JSON."""

    url: str
    format: Literal["slack", "generic"] = "generic"
    events: tuple[EventKind, ...] | None = Field(
        default=None, description="the event kinds posted; every kind when absent")

    @field_validator("url")
    @classmethod
    def _url(cls, url: str) -> str:
        return _hook_url(url)

    @field_validator("events")
    @classmethod
    def _events(cls, events: tuple[EventKind, ...] | None) -> tuple[EventKind, ...] | None:
        # An empty list would subscribe to nothing: almost surely a mistake.
        if events is not None and not events:
            raise ValueError("events must name at least one kind (or be left out for all): "
                             f"{list(EVENT_KINDS)}")
        if events is not None and len(set(events)) != len(events):
            raise ValueError(f"events lists a kind twice: {list(events)}")
        return events

    def wants(self, kind: str) -> bool:
        return self.events is None or kind in self.events


class ConfirmHooks(_Frozen):
    """Hooks that must answer 2xx before the rollout starts and before each
    further step (Flagger's confirm-rollout and confirm-promotion)."""

    before_start: str | None = None
    before_step: str | None = None

    @field_validator("before_start", "before_step")
    @classmethod
    def _url(cls, url: str | None) -> str | None:
        return None if url is None else _hook_url(url)


class RolloutPlan(_Frozen):
    """A canary-to-ramp rollout of one candidate version against a baseline."""

    id: str | None = Field(default=None, pattern=ID_PATTERN)
    model_name: str = Field(max_length=MAX_MODEL_NAME_CHARS, pattern=MODEL_NAME_PATTERN)
    baseline_version: str = Field(pattern=VERSION_PATTERN)
    candidate_version: str = Field(pattern=VERSION_PATTERN)
    unit: UnitType = "user_id"
    salt: str | None = None
    steps: tuple[float, ...] = (1, 5, 25, 50, 100)
    interval_s: float = Field(default=10.0, ge=1.0, le=3600.0)
    min_requests: int = Field(default=100, ge=1)
    pause_before: tuple[float, ...] = Field(
        default=(), description="manual gates: pause before these step percentages"
    )
    failure_limit: int = Field(default=2, ge=1, le=100)
    guardrails: Guardrails = Guardrails()
    metrics_source: str = Field(default="builtin", pattern=r"^(builtin|prometheus)$")
    prometheus_url: str | None = None
    notify: tuple[Webhook, ...] = ()
    confirm: ConfirmHooks = ConfirmHooks()

    @field_validator("steps")
    @classmethod
    def _steps(cls, steps: tuple[float, ...]) -> tuple[float, ...]:
        if not steps:
            raise ValueError("steps must not be empty")
        if any(s <= 0 or s > 100 for s in steps):
            raise ValueError(f"every step must be in (0, 100] percent, got {list(steps)}")
        if any(b <= a for a, b in itertools.pairwise(steps)):
            raise ValueError(f"steps must strictly increase, got {list(steps)}")
        if steps[-1] != 100:
            raise ValueError(f"the last step must be 100 percent, got {steps[-1]}")
        if any(round(s * 100) != s * 100 for s in steps):
            raise ValueError("steps are whole basis points (at most two decimals)")
        return steps

    @field_validator("salt")
    @classmethod
    def _salt(cls, salt: str | None) -> str | None:
        if salt is not None and not SALT_PATTERN.match(salt):
            raise ValueError("salt must be 1-64 characters of letters, digits and '_.:-'")
        return salt

    @model_validator(mode="after")
    def _consistent(self) -> RolloutPlan:
        problems = []
        if self.baseline_version == self.candidate_version:
            problems.append("baseline_version and candidate_version must differ")
        unknown_gates = sorted(set(self.pause_before) - set(self.steps))
        if unknown_gates:
            problems.append(f"pause_before names steps not in the plan: {unknown_gates}")
        if self.metrics_source == "prometheus" and not self.prometheus_url:
            problems.append("metrics_source prometheus needs prometheus_url")
        if self.guardrails.promql and not self.prometheus_url:
            problems.append("promql checks need prometheus_url")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def step_bp(self, index: int) -> int:
        """Candidate weight of step ``index`` in basis points."""
        return round(self.steps[index] * 100)


def parse_plan(data: Any, source: str = "plan") -> RolloutPlan:
    """Validate a plan mapping; raise :class:`PlanError` naming each mistake."""
    return validate_document(RolloutPlan, data, source, "rollout plan", PlanError)
