"""The rollout state machine: ``step(state, window, events, now) -> (state, actions)``.

Pure: everything it reads arrives as arguments (the clock included), everything
it remembers leaves in the returned state, and everything it wants done leaves
as actions that the I/O shell (``rollout/service.py``) carries out in order:
route traffic first, then move or tag MLflow aliases, then persist.

Rules:
- no step advances without ``min_requests`` candidate requests in the step,
  a passing check in the step, no outstanding failed check, and at least
  ``interval_s`` spent in the step;
- a window the metrics source could not deliver never advances anything: the
  rollout holds and says why;
- a check with too few candidate samples is not judged: its window is carried
  into the next check;
- a failed check counts a failure; ``failure_limit`` failures in a row roll back;
- a firing alert for the rollout rolls back at once;
- every transition is an audit record with its reason and the figures behind it.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from rollout.core.guardrails import ArmWindow, CheckResult, Verdict, Window, evaluate
from rollout.core.plan import RolloutPlan

FULL_BP = 10_000


class Phase(StrEnum):
    PENDING = "pending"
    PROGRESSING = "progressing"
    PAUSED = "paused"
    PROMOTED = "promoted"
    ROLLED_BACK = "rolled_back"
    ABORTED = "aborted"


TERMINAL = frozenset({Phase.PROMOTED, Phase.ROLLED_BACK, Phase.ABORTED})


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", ser_json_inf_nan="constants")


class AuditRecord(_Frozen):
    at: float
    from_phase: Phase
    to_phase: Phase
    step_index: int
    weight_bp: int
    reason: str
    figures: dict[str, Any] = Field(default_factory=dict)


class RolloutState(_Frozen):
    """Everything the controller remembers about one rollout."""

    id: str
    plan: RolloutPlan
    salt: str
    phase: Phase = Phase.PENDING
    step_index: int = -1
    weight_bp: int = 0
    failed_checks: int = 0
    step_requests: int = 0
    step_started_at: float | None = None
    passed_in_step: bool = False
    pending_window: Window = Window()
    last_verdict: Verdict | None = None
    last_checks: tuple[CheckResult, ...] = ()
    last_window: Window | None = None
    hold_reason: str = ""
    gate_cleared: int | None = None
    last_transition_at: float | None = None
    # The baseline's figures from the last judged window that had baseline traffic:
    # at 100% the baseline gets none, and deltas are taken against these.
    baseline_reference: ArmWindow | None = None
    created_at: float
    updated_at: float

    @property
    def terminal(self) -> bool:
        return self.phase in TERMINAL


class Event(_Frozen):
    """Something that happened outside the metrics: an operator or an alert."""

    kind: Literal["pause", "resume", "promote", "abort", "alert"]
    reason: str = ""


class SetWeight(_Frozen):
    kind: Literal["set_weight"] = "set_weight"
    weight_bp: int


class PromoteAlias(_Frozen):
    kind: Literal["promote_alias"] = "promote_alias"
    model_name: str
    version: str


class TagRolledBack(_Frozen):
    kind: Literal["tag_rolled_back"] = "tag_rolled_back"
    model_name: str
    version: str
    reason: str


class Audit(_Frozen):
    kind: Literal["audit"] = "audit"
    record: AuditRecord


Action = SetWeight | PromoteAlias | TagRolledBack | Audit


def new_rollout(rollout_id: str, plan: RolloutPlan, now: float) -> RolloutState:
    """A pending rollout; its salt defaults to its id, so assignments are stable."""
    return RolloutState(
        id=rollout_id, plan=plan, salt=plan.salt or f"rollout-{rollout_id}",
        created_at=now, updated_at=now,
    )


class _Builder:
    """Collects state changes and actions for one step."""

    def __init__(self, state: RolloutState, now: float) -> None:
        self.state = state
        self.now = now
        self.actions: list[Action] = []

    def update(self, **changes: Any) -> None:
        self.state = self.state.model_copy(update={**changes, "updated_at": self.now})

    def transition(self, to: Phase, reason: str, figures: dict[str, Any] | None = None,
                   **changes: Any) -> None:
        before = self.state
        weight = changes.get("weight_bp", before.weight_bp)
        if weight != before.weight_bp:
            # Route traffic first: the weight change leads every other action.
            self.actions.append(SetWeight(weight_bp=weight))
        self.update(phase=to, last_transition_at=self.now, **changes)
        self.actions.append(Audit(record=AuditRecord(
            at=self.now, from_phase=before.phase, to_phase=to,
            step_index=self.state.step_index, weight_bp=self.state.weight_bp,
            reason=reason, figures=figures or {},
        )))

    def roll_back(self, reason: str, figures: dict[str, Any] | None = None) -> None:
        plan = self.state.plan
        self.transition(Phase.ROLLED_BACK, reason, figures, weight_bp=0, hold_reason="")
        self.actions.append(TagRolledBack(model_name=plan.model_name,
                                          version=plan.candidate_version, reason=reason))

    def enter_step(self, index: int, reason: str, figures: dict[str, Any] | None = None) -> None:
        self.transition(
            Phase.PROGRESSING, reason, figures, step_index=index,
            weight_bp=self.state.plan.step_bp(index), step_requests=0,
            step_started_at=self.now, passed_in_step=False, failed_checks=0,
            pending_window=Window(), hold_reason="",
        )

    def promote(self, reason: str, figures: dict[str, Any] | None = None) -> None:
        plan = self.state.plan
        self.transition(Phase.PROMOTED, reason, figures, weight_bp=FULL_BP, hold_reason="")
        self.actions.append(PromoteAlias(model_name=plan.model_name,
                                         version=plan.candidate_version))


def _window_figures(window: Window) -> dict[str, Any]:
    def arm(a: Any) -> dict[str, Any]:
        p99 = a.quantile(0.99)
        return {"requests": a.requests, "errors": a.errors,
                "error_rate": round(a.error_rate, 6),
                "p99_ms": None if p99 is None else round(p99 * 1000, 3)}

    return {"baseline": arm(window.baseline), "candidate": arm(window.candidate),
            **({"custom": dict(window.custom)} if window.custom else {})}


def _by_operator(what: str, event: Event) -> str:
    return f"{what} by operator" + (f": {event.reason}" if event.reason else "")


def step(
    state: RolloutState,
    window: Window | None,
    events: tuple[Event, ...] | list[Event],
    now: float,
    metrics_error: str = "",
) -> tuple[RolloutState, list[Action]]:
    """Advance one rollout by one analysis interval.

    ``window`` holds the counts since the previous call, or None when the
    metrics source could not deliver them (``metrics_error`` says why).
    """
    b = _Builder(state, now)
    if state.terminal:
        return state, []
    plan = state.plan

    for event in events:
        s = b.state
        if event.kind == "alert":
            b.roll_back(f"alert firing: {event.reason or 'unnamed'}", {"alert": event.reason})
            return b.state, b.actions
        if event.kind == "abort":
            b.transition(Phase.ABORTED, _by_operator("aborted", event), weight_bp=0,
                         hold_reason="")
            return b.state, b.actions
        if event.kind == "promote":
            b.promote(_by_operator("promoted", event))
            return b.state, b.actions
        if event.kind == "pause" and s.phase in (Phase.PENDING, Phase.PROGRESSING):
            b.transition(Phase.PAUSED, _by_operator("paused", event), hold_reason="paused")
        elif event.kind == "resume" and s.phase == Phase.PAUSED:
            if s.step_index < 0 and s.hold_reason.startswith("gate"):
                b.update(gate_cleared=0)
                b.enter_step(0, f"gate before {plan.steps[0]}% opened by operator")
            elif s.step_index < 0:
                b.transition(Phase.PENDING, "resumed by operator", hold_reason="")
            elif s.hold_reason.startswith("gate"):
                nxt = s.step_index + 1
                b.update(gate_cleared=nxt)
                b.enter_step(nxt, f"gate before {plan.steps[nxt]}% opened by operator")
            else:
                b.transition(Phase.PROGRESSING, "resumed by operator", hold_reason="",
                             step_started_at=now)

    s = b.state
    if s.phase == Phase.PAUSED:
        return b.state, b.actions
    if s.phase == Phase.PENDING:
        if plan.steps[0] in plan.pause_before and s.gate_cleared != 0:
            b.transition(Phase.PAUSED, f"gate: waiting for an operator before {plan.steps[0]}%",
                         hold_reason=f"gate before {plan.steps[0]}%")
            return b.state, b.actions
        b.enter_step(0, f"started: canary at {plan.steps[0]}%")
        return b.state, b.actions

    # PROGRESSING
    if window is None:
        b.update(hold_reason=f"holding: metrics unavailable ({metrics_error or 'no data'})")
        return b.state, b.actions

    accumulated = s.pending_window + window
    step_requests = s.step_requests + window.candidate.requests
    judged = accumulated
    if (accumulated.baseline.requests < plan.guardrails.min_check_requests
            and s.baseline_reference is not None):
        judged = accumulated.model_copy(update={"baseline": s.baseline_reference})
    verdict, checks = evaluate(plan.guardrails, judged)
    figures = _window_figures(accumulated)
    if verdict == Verdict.INSUFFICIENT_DATA:
        short = "; ".join(c.detail for c in checks if c.verdict == Verdict.INSUFFICIENT_DATA)
        b.update(pending_window=accumulated, step_requests=step_requests,
                 last_verdict=verdict, last_checks=checks, last_window=accumulated,
                 hold_reason=f"holding: insufficient data ({short})")
        return b.state, b.actions

    reference = (accumulated.baseline
                 if accumulated.baseline.requests >= plan.guardrails.min_check_requests
                 else s.baseline_reference)
    b.update(pending_window=Window(), step_requests=step_requests, last_verdict=verdict,
             last_checks=checks, last_window=accumulated, baseline_reference=reference)
    if verdict == Verdict.FAIL:
        failures = s.failed_checks + 1
        failed = [c for c in checks if c.verdict == Verdict.FAIL]
        why = "; ".join(f"{c.name} {c.observed:.4g} > {c.threshold:.4g} ({c.detail})"
                        for c in failed if c.observed is not None and c.threshold is not None)
        figures["failed_checks"] = failures
        if failures >= plan.failure_limit:
            b.update(failed_checks=failures)
            b.roll_back(f"{failures} failed check(s) in a row: {why}", figures)
            return b.state, b.actions
        b.update(failed_checks=failures, passed_in_step=False,
                 hold_reason=f"check failed ({failures}/{plan.failure_limit}): {why}")
        return b.state, b.actions

    b.update(failed_checks=0, passed_in_step=True, hold_reason="")
    s = b.state
    if s.step_requests < plan.min_requests:
        b.update(hold_reason=f"holding: {s.step_requests}/{plan.min_requests} candidate "
                             "requests in this step")
        return b.state, b.actions
    if s.step_started_at is not None and now - s.step_started_at < plan.interval_s:
        return b.state, b.actions
    figures["step_requests"] = s.step_requests
    if s.step_index == len(plan.steps) - 1:
        b.promote(f"all steps passed at {plan.steps[-1]}%", figures)
        return b.state, b.actions
    nxt = s.step_index + 1
    if plan.steps[nxt] in plan.pause_before and s.gate_cleared != nxt:
        b.transition(Phase.PAUSED, f"gate: waiting for an operator before {plan.steps[nxt]}%",
                     figures, hold_reason=f"gate before {plan.steps[nxt]}%")
        return b.state, b.actions
    b.enter_step(nxt, f"step {plan.steps[s.step_index]}% passed; ramping to {plan.steps[nxt]}%",
                 figures)
    return b.state, b.actions
