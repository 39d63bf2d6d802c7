"""The control plane's vocabulary: typed commands and their results.

The admin API turns each HTTP call into one frozen command; the rollout
control plane executes it (``rollout.commands.execute``) and returns one of
the results below, or raises a :class:`~serving.kernel.errors.RampartError`
that the HTTP layer answers with its code and status. Commands, results and
errors are all picklable, so the same objects cross Ray's actor boundary.

The vocabulary is part of the config kernel so that the gateway (which
builds commands) and the control plane (which executes them) share it
without importing each other. A rollout plan travels as the document the
client sent: the control plane owns the plan schema and validates it.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from serving.kernel.config import ShadowSpec

# The audit records one bandit status answer carries unless asked, and at most.
DEFAULT_AUDIT_RECORDS = 20
MAX_AUDIT_RECORDS = 1000


class _Message(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


# ----------------------------------------------------------------- commands

class CreateRollout(_Message):
    """Start a rollout from a plan document (answered 201 with its status)."""

    plan: Any


class DescribeRollout(_Message):
    """One rollout's status and audit trail."""

    id: str


class ListRollouts(_Message):
    """Every rollout the controller knows, newest state of each."""


OperatorAction = Literal["pause", "resume", "promote", "abort"]
OPERATOR_ACTIONS: tuple[OperatorAction, ...] = ("pause", "resume", "promote", "abort")


class RolloutCommand(_Message):
    """An operator's command on one rollout; ``reason`` goes to the audit trail."""

    id: str
    kind: OperatorAction
    reason: str = ""


class AlertWebhook(_Message):
    """An Alertmanager webhook payload, as received."""

    payload: Any


class SetShadow(_Message):
    """Attach ``shadow`` (or detach it, with ``enabled=False``)."""

    shadow: ShadowSpec
    enabled: bool = True


class DescribeRouting(_Message):
    """The routing version in force and how fast recent versions reached the replicas."""


class DescribeBandit(_Message):
    """One bandit experiment's weights, posteriors and its last ``audit``
    updates' audit records (the newest, oldest first)."""

    id: str
    audit: int = Field(default=DEFAULT_AUDIT_RECORDS, ge=0, le=MAX_AUDIT_RECORDS)


Command = (CreateRollout | DescribeRollout | ListRollouts | RolloutCommand | AlertWebhook
           | SetShadow | DescribeRouting | DescribeBandit)


# ----------------------------------------------------------------- results

class RolloutStatus(_Message):
    """A rollout's state, step, last checks, plan and audit trail."""

    id: str
    phase: str
    step_index: int
    step_percent: float
    weight_bp: int
    failed_checks: int
    step_requests: int
    hold_reason: str
    last_verdict: str | None
    last_checks: list[dict[str, Any]]
    last_window: dict[str, Any] | None
    plan: dict[str, Any]
    salt: str
    routing_version: int | None
    audit: list[dict[str, Any]]


class RolloutSummary(_Message):
    id: str
    phase: str
    model_name: str
    candidate_version: str
    weight_bp: int


class RolloutList(_Message):
    rollouts: list[RolloutSummary]


class AlertResult(_Message):
    """Which rollouts an Alertmanager payload rolled back, and how many alerts it ignored."""

    rolled_back: list[str]
    ignored: int


class ShadowsResult(_Message):
    routing_version: int
    shadows: list[dict[str, Any]]


class ReplicaState(_Message):
    """One gateway replica as the controller last heard from it."""

    replica: str
    serving_version: int
    last_seen_at: float
    waiting: bool


class VersionPropagation(_Message):
    """How long one routing version took from publication to the last replica.

    ``propagation_ms`` is None when no replica was following at publication,
    and until every replica that was has come back for a newer version (which
    is how a replica says it serves this version or a later one).
    """

    version: int
    published_at: float
    replicas: int
    serving: int
    propagation_ms: float | None


class RoutingStatus(_Message):
    version: int
    replicas: list[ReplicaState]
    propagation: list[VersionPropagation]


class BanditArmReport(_Message):
    """One arm now: its weight (None for a contextual bandit, which picks each
    request's arm from its context), rewards seen, posterior mean with its 95%
    interval, probability of being best at the last update (None before the
    first), and whether a guardrail removed it."""

    arm: str
    weight_bp: int | None
    rewards_seen: int
    mean: float
    ci_low: float
    ci_high: float
    prob_best: float | None
    removed: bool


class BanditReport(_Message):
    """A bandit experiment now, and its latest updates' audit records (oldest
    first): weights before and after, posterior summaries, exposures settled,
    guardrail figures."""

    experiment_id: str
    updates: int
    last_update_at: float | None
    # The contextual policy choosing each request's arm; None: the weights do.
    contextual_policy: str | None = None
    arms: list[BanditArmReport]
    audit: list[dict[str, Any]]


CommandResult = (RolloutStatus | RolloutList | AlertResult | ShadowsResult | RoutingStatus
                 | BanditReport)
