"""Plan validation of notify webhooks and confirm hooks, and the pure parts of
notifications: which event an audit record announces, and the two bodies."""

from __future__ import annotations

import math
from typing import Any

import pytest

from rollout.core.controller import AuditRecord, Phase
from rollout.core.plan import EVENT_KINDS, parse_plan
from rollout.notify import display_url, event_body, event_kind, slack_body
from serving.kernel.errors import PlanError

BASE = {"model_name": "clf", "baseline_version": "1", "candidate_version": "2"}


def test_a_plan_takes_webhooks_and_confirm_hooks() -> None:
    plan = parse_plan({**BASE, "notify": [
        {"url": "https://hooks.example.com/services/T/B/x", "format": "slack"},
        {"url": "http://127.0.0.1:9000/events", "events": ["promoted", "rolled_back"]}],
        "confirm": {"before_start": "http://gate.local/start"}})
    slack, generic = plan.notify
    assert (slack.format, slack.events) == ("slack", None)
    assert generic.format == "generic" and generic.events == ("promoted", "rolled_back")
    assert slack.wants("step") and generic.wants("promoted") and not generic.wants("step")
    assert plan.confirm.before_start == "http://gate.local/start"
    assert plan.confirm.before_step is None


def test_a_plan_without_them_notifies_nobody_and_asks_nobody() -> None:
    plan = parse_plan(BASE)
    assert plan.notify == ()
    assert plan.confirm.before_start is None and plan.confirm.before_step is None


@pytest.mark.parametrize(("extra", "message"), [
    ({"notify": [{"url": "ftp://files.local/x"}]},
     "notify.0.url: a webhook url must be http or https, got 'ftp://files.local/x'"),
    ({"notify": [{"url": "http:///nohost"}]}, "notify.0.url: a webhook url needs a host"),
    ({"notify": [{"url": "http://h/x", "format": "teams"}]}, "notify.0.format"),
    ({"notify": [{"url": "http://h/x", "events": ["deployed"]}]}, "notify.0.events.0"),
    ({"notify": [{"url": "http://h/x", "events": []}]}, "events must name at least one kind"),
    ({"notify": [{"url": "http://h/x", "events": ["step", "step"]}]},
     "events lists a kind twice"),
    ({"notify": [{"url": "http://h/x", "channel": "#ops"}]}, "notify.0.channel"),
    ({"confirm": {"before_step": "file:///etc/passwd"}},
     "confirm.before_step: a webhook url must be http or https"),
    ({"confirm": {"before_promotion": "http://h/x"}}, "confirm.before_promotion"),
])
def test_mistakes_are_named_at_parse(extra: dict[str, Any], message: str) -> None:
    with pytest.raises(PlanError, match="not a valid rollout plan") as caught:
        parse_plan({**BASE, **extra})
    assert message in str(caught.value)


def _record(before: Phase, after: Phase, step_index: int = 0, weight_bp: int = 100,
            figures: dict[str, Any] | None = None) -> AuditRecord:
    return AuditRecord(at=1_000.5, from_phase=before, to_phase=after, step_index=step_index,
                       weight_bp=weight_bp, reason="why", figures=figures or {})


@pytest.mark.parametrize(("before", "after", "kind"), [
    (Phase.PENDING, Phase.PROGRESSING, "started"),
    (Phase.PROGRESSING, Phase.PROGRESSING, "step"),
    (Phase.PROGRESSING, Phase.PAUSED, "paused"),
    (Phase.PENDING, Phase.PAUSED, "paused"),
    (Phase.PAUSED, Phase.PROGRESSING, "resumed"),
    (Phase.PAUSED, Phase.PENDING, "resumed"),
    (Phase.PROGRESSING, Phase.ROLLED_BACK, "rolled_back"),
    (Phase.PROGRESSING, Phase.PROMOTED, "promoted"),
    (Phase.PAUSED, Phase.ABORTED, "aborted"),
    # Notes on a finished rollout (an MLflow failure, collapsed routing): no event.
    (Phase.PROMOTED, Phase.PROMOTED, None),
    (Phase.ROLLED_BACK, Phase.ROLLED_BACK, None),
])
def test_each_transition_is_one_event_kind(before: Phase, after: Phase, kind: str | None) -> None:
    assert event_kind(_record(before, after)) == kind
    assert kind is None or kind in EVENT_KINDS


def test_the_generic_body_carries_the_record_and_json_has_no_infinities() -> None:
    record = _record(Phase.PROGRESSING, Phase.PROGRESSING, 1, 500,
                     {"baseline": {"p99_ms": float("inf")}, "custom": {"q": [float("nan"), 1.0]}})
    body = event_body("ro-1", "step", record)
    assert body == {"rollout_id": "ro-1", "event": "step", "from_phase": "progressing",
                    "to_phase": "progressing", "step_index": 1, "weight_bp": 500,
                    "reason": "why", "figures": {"baseline": {"p99_ms": None},
                                                 "custom": {"q": [None, 1.0]}},
                    "at": 1_000.5}
    assert not any(isinstance(v, float) and not math.isfinite(v) for v in body.values())


def test_the_slack_body_is_one_readable_line() -> None:
    body = event_body("ro-1", "promoted", _record(Phase.PROGRESSING, Phase.PROMOTED, 4, 10_000))
    assert slack_body(body) == {"text": "Rampart rollout ro-1: promoted (progressing -> "
                                        "promoted, candidate at 100%) - why"}


def test_hook_urls_lose_credentials_and_query_in_logs() -> None:
    assert display_url("https://user:secret@h.example:8443/hook?token=abc") == (
        "https://h.example:8443/hook")
