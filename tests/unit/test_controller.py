from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rollout.core.controller import (
    Audit,
    Event,
    Phase,
    PromoteAlias,
    RolloutState,
    SetWeight,
    TagRolledBack,
    new_rollout,
    step,
)
from rollout.core.guardrails import ArmWindow, Window, histogram_quantile
from rollout.core.plan import parse_plan
from serving.kernel.errors import PlanError

BOUNDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, float("inf"))


def plan(**overrides: Any) -> Any:
    data: dict[str, Any] = {
        "model_name": "clf", "baseline_version": "1", "candidate_version": "2",
        "steps": [1, 5, 25, 50, 100], "interval_s": 1, "min_requests": 50,
        "failure_limit": 2,
        "guardrails": {"p99_latency_delta_ms": 50, "error_rate_delta": 0.01,
                       "min_check_requests": 10},
    }
    data.update(overrides)
    return parse_plan(data)


def arm(requests: int, errors: int = 0, latency_s: float = 0.004) -> ArmWindow:
    """``requests`` all observed at ``latency_s``."""
    return ArmWindow(requests=requests, errors=errors,
                     buckets=tuple((b, float(requests if latency_s <= b else 0)) for b in BOUNDS))


def healthy(n: int = 100) -> Window:
    return Window(baseline=arm(n * 9), candidate=arm(n))


def slow(n: int = 100) -> Window:
    return Window(baseline=arm(n * 9), candidate=arm(n, latency_s=0.3))


def erroring(n: int = 100) -> Window:
    return Window(baseline=arm(n * 9), candidate=arm(n, errors=n // 5))


def run(state: RolloutState, windows: list[Window | None], start: float = 0.0,
        events: dict[int, list[Event]] | None = None) -> tuple[RolloutState, list[Any]]:
    actions: list[Any] = []
    now = start
    for i, w in enumerate(windows):
        now += 1.0
        state, acts = step(state, w, (events or {}).get(i, []), now, metrics_error="down")
        actions += acts
    return state, actions


def started(p: Any = None) -> RolloutState:
    state, actions = step(new_rollout("r1", p or plan(), 0.0), None, [], 0.0)
    assert actions[0] == SetWeight(weight_bp=100)
    return state


def test_healthy_rollout_ramps_through_every_step_and_promotes() -> None:
    state, actions = run(started(), [healthy()] * 10)
    weights = [a.weight_bp for a in actions if isinstance(a, SetWeight)]
    assert weights == [500, 2500, 5000, 10_000]
    assert state.phase == Phase.PROMOTED and state.weight_bp == 10_000
    assert actions[-1] == PromoteAlias(model_name="clf", version="2")
    audits = [a.record for a in actions if isinstance(a, Audit)]
    assert audits[-1].to_phase == Phase.PROMOTED
    assert all(r.reason and "candidate" in r.figures for r in audits)


def test_too_few_samples_never_advance() -> None:
    # 16 windows of 3 candidate requests: checks can judge (every 4 windows)
    # but the step never reaches min_requests (50)
    state, actions = run(started(), [healthy(n=3)] * 16)
    assert state.phase == Phase.PROGRESSING and state.step_index == 0
    assert not [a for a in actions if isinstance(a, SetWeight)]
    assert state.hold_reason in (
        "holding: 48/50 candidate requests in this step",
        "holding: insufficient data (candidate has 3 requests, a check needs 10; "
        "candidate has 3 requests, a check needs 10)",
    )
    thin, _ = run(started(), [healthy(n=3)])
    assert thin.hold_reason.startswith("holding: insufficient data")


def test_enough_checks_but_too_few_step_requests_hold() -> None:
    state, _ = run(started(plan(min_requests=1000)), [healthy(n=20)] * 5)
    assert state.step_index == 0
    assert state.hold_reason == "holding: 100/1000 candidate requests in this step"


def test_missing_metrics_never_advance_and_say_why() -> None:
    state, actions = run(started(), [None] * 20)
    assert state.step_index == 0 and state.phase == Phase.PROGRESSING
    assert state.hold_reason == "holding: metrics unavailable (down)"
    assert actions == []


@pytest.mark.parametrize("bad", [slow, erroring])
def test_failure_limit_failed_checks_in_a_row_roll_back(bad: Any) -> None:
    state, actions = run(started(), [healthy(), bad(), bad()])
    assert state.phase == Phase.ROLLED_BACK and state.weight_bp == 0
    kinds = [type(a) for a in actions]
    # traffic is routed back before the version is tagged
    assert kinds.index(SetWeight) < kinds.index(TagRolledBack)
    rollback = [a for a in actions if isinstance(a, SetWeight)][-1]
    assert rollback.weight_bp == 0
    assert "failed check" in state.last_checks[0].detail or state.failed_checks == 2


def test_a_pass_between_failures_resets_the_count() -> None:
    state, _ = run(started(plan(min_requests=10_000)), [slow(), healthy(), slow(), healthy()])
    assert state.phase == Phase.PROGRESSING and state.failed_checks == 0


def test_alert_rolls_back_at_once() -> None:
    state, actions = run(started(), [healthy()], events={0: [Event(kind="alert",
                                                                   reason="CandidateP99High")]})
    assert state.phase == Phase.ROLLED_BACK
    assert actions[0] == SetWeight(weight_bp=0)
    assert "CandidateP99High" in actions[1].record.reason


def test_pause_resume_abort_promote() -> None:
    s = started()
    s, _ = step(s, healthy(), [Event(kind="pause")], 1.0)
    assert s.phase == Phase.PAUSED
    s, acts = run(s, [healthy()] * 5)
    assert s.phase == Phase.PAUSED and acts == []
    s, _ = step(s, healthy(), [Event(kind="resume")], 10.0)
    assert s.phase == Phase.PROGRESSING
    aborted, acts = step(s, None, [Event(kind="abort", reason="no")], 11.0)
    assert aborted.phase == Phase.ABORTED and acts[0] == SetWeight(weight_bp=0)
    promoted, acts = step(s, None, [Event(kind="promote")], 11.0)
    assert promoted.phase == Phase.PROMOTED and acts[-1] == PromoteAlias(model_name="clf",
                                                                         version="2")
    assert step(promoted, slow(), [Event(kind="alert")], 12.0) == (promoted, [])


def test_manual_gate_pauses_before_the_named_step_until_resumed() -> None:
    s, _ = run(started(plan(pause_before=[25])), [healthy()] * 4)
    assert s.phase == Phase.PAUSED and s.step_index == 1 and s.weight_bp == 500
    s, acts = step(s, healthy(), [Event(kind="resume")], 20.0)
    assert s.phase == Phase.PROGRESSING and s.step_index == 2 and acts[0] == SetWeight(
        weight_bp=2500)


def test_gate_before_the_first_step() -> None:
    s, acts = step(new_rollout("r", plan(pause_before=[1]), 0.0), None, [], 0.0)
    assert s.phase == Phase.PAUSED and s.weight_bp == 0 and not [
        a for a in acts if isinstance(a, SetWeight)]
    s, acts = step(s, None, [Event(kind="resume")], 1.0)
    assert s.phase == Phase.PROGRESSING and acts[0] == SetWeight(weight_bp=100)


def test_state_round_trips_through_json() -> None:
    s, _ = run(started(), [healthy(), slow()])
    assert RolloutState.model_validate_json(s.model_dump_json()) == s


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"steps": [5, 1, 100]}, "strictly increase"),
        ({"steps": [1, 50]}, "last step must be 100"),
        ({"candidate_version": "1"}, "must differ"),
        ({"pause_before": [30]}, "pause_before names steps not in the plan"),
        ({"interval_s": 0.5}, "interval_s"),
        ({"failure_limit": 0}, "failure_limit"),
        ({"metrics_source": "prometheus"}, "prometheus_url"),
        ({"salt": "bad salt"}, "salt"),
    ],
)
def test_plan_validation_names_each_mistake(change: dict[str, Any], needle: str) -> None:
    with pytest.raises(PlanError, match=needle):
        plan(**change)


def test_histogram_quantile_interpolates_like_promql() -> None:
    buckets = ((0.1, 50.0), (0.2, 100.0), (float("inf"), 100.0))
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.1)
    assert histogram_quantile(0.75, buckets) == pytest.approx(0.15)
    assert histogram_quantile(0.99, ((0.1, 0.0), (float("inf"), 0.0))) is None


window_kind = st.sampled_from(["healthy", "slow", "erroring", "none", "thin"])
WINDOWS = {"healthy": healthy(), "slow": slow(), "erroring": erroring(), "none": None,
           "thin": healthy(n=2)}


@settings(max_examples=400, deadline=None)
@given(kinds=st.lists(window_kind, min_size=1, max_size=40), limit=st.integers(1, 4))
def test_no_breach_streak_of_failure_limit_ever_ends_promoted(kinds: list[str],
                                                             limit: int) -> None:
    """Over any metric sequence: a streak of ``limit`` failed checks always rolls
    back, never promotes; and the candidate's weight only grows until a rollback
    empties it. A reference model says which windows form a check: thin windows
    (2 candidate requests) pile up until 10 requests make a passing check."""
    p = plan(failure_limit=limit, min_requests=50)
    state = started(p)
    weights = [state.weight_bp]
    streak = 0
    pending = 0
    saw_streak = False
    for i, kind in enumerate(kinds):
        state, actions = step(state, WINDOWS[kind], [], float(i + 1))
        weights += [a.weight_bp for a in actions if isinstance(a, SetWeight)]
        if kind in ("slow", "erroring"):
            streak, pending = streak + 1, 0
        elif kind == "healthy":
            streak, pending = 0, 0
        elif kind == "thin":
            pending += 2
            if pending >= p.guardrails.min_check_requests:
                streak, pending = 0, 0
        if streak >= limit:
            saw_streak = True
            assert state.phase == Phase.ROLLED_BACK
        if state.terminal:
            break
    if saw_streak:
        assert state.phase == Phase.ROLLED_BACK and state.weight_bp == 0
    if state.phase == Phase.PROMOTED:
        assert not saw_streak
    growing = weights[:-1] if state.phase == Phase.ROLLED_BACK else weights
    assert growing == sorted(growing)


def test_shadow_agreement_guardrail_holds_and_fails_a_step() -> None:
    p = plan(guardrails={"min_shadow_agreement": 0.95, "max_shadow_score_diff_p99": 0.1,
                         "min_check_requests": 10})
    base = healthy()
    good = base.model_copy(update={"custom": {"shadow_label_agreement": 0.99,
                                              "shadow_score_diff_p99": 0.02}})
    bad = base.model_copy(update={"custom": {"shadow_label_agreement": 0.80,
                                             "shadow_score_diff_p99": 0.02}})
    s, _ = run(started(p), [base])  # no shadow figures yet: not judged
    assert "no shadow figures" in s.hold_reason and s.step_index == 0
    s, _ = run(started(p), [good] * 3)
    assert s.step_index >= 1
    s, _ = run(started(p), [bad, bad])
    assert s.phase == Phase.ROLLED_BACK
    assert any(c.name == "shadow_label_agreement" and c.verdict == "FAIL" for c in s.last_checks)


def test_the_last_step_compares_against_the_baseline_seen_before_it() -> None:
    """At 100% the baseline gets no traffic; the p99 delta is taken against the
    baseline figures of the last window that had them, so the rollout can finish."""
    only_candidate = Window(baseline=arm(0), candidate=arm(100))
    s, _ = run(started(), [healthy()] * 4)  # 1 -> 5 -> 25 -> 50 -> 100
    assert s.weight_bp == 10_000 and s.phase == Phase.PROGRESSING
    s, _ = run(s, [only_candidate] * 2, start=10.0)
    assert s.phase == Phase.PROMOTED
    slow_alone = Window(baseline=arm(0), candidate=arm(100, latency_s=0.3))
    s2, _ = run(started(), [healthy()] * 4)
    s2, _ = run(s2, [slow_alone] * 2, start=10.0)
    assert s2.phase == Phase.ROLLED_BACK
