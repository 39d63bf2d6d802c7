"""Telling operators: rollout events posted to webhooks, and confirm hooks.

:class:`Notifier` takes the service's audit records and posts them, from one
background thread, to the webhooks a plan names. The service only appends
to a bounded queue (a deque under a condition, no I/O), so a receiver that
is down, slow or hung never delays a step, an operator command or a read:
past ``max_queue`` waiting posts the oldest is dropped and counted. Posts go
out one at a time in the order the transitions happened; each is tried
``attempts`` times with a doubling backoff and a short timeout, then given
up (counted, logged).

:func:`post_confirm` asks a confirm hook whether the rollout may start or
take its next step: one POST with a short timeout, True only on a 2xx. It
never raises: an unreachable hook is an answer ("no") like a 403.
"""

from __future__ import annotations

import logging
import math
import threading
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx

from rollout.core.controller import AuditRecord, Phase
from rollout.core.plan import EventKind, Webhook

log = logging.getLogger(__name__)

CONFIRM_TIMEOUT_S = 2.0


def event_kind(record: AuditRecord) -> EventKind | None:
    """The event an audit record announces, or None for a note that changes
    no phase or step (an MLflow failure, routing comparing a version with itself)."""
    before, after = record.from_phase, record.to_phase
    if after == before and after != Phase.PROGRESSING:
        return None
    if after == Phase.ROLLED_BACK:
        return "rolled_back"
    if after == Phase.PROMOTED:
        return "promoted"
    if after == Phase.ABORTED:
        return "aborted"
    if after == Phase.PAUSED:
        return "paused"
    if before == Phase.PAUSED:
        # Out of a pause (a gate opened included, which also enters the next step).
        return "resumed"
    if before == Phase.PENDING:
        return "started"
    return "step"


def event_body(rollout_id: str, event: str, record: AuditRecord) -> dict[str, Any]:
    """The generic JSON body of one event (confirm hooks receive it too)."""
    data = record.model_dump(mode="json")
    return {"rollout_id": rollout_id, "event": event, "from_phase": data["from_phase"],
            "to_phase": data["to_phase"], "step_index": data["step_index"],
            "weight_bp": data["weight_bp"], "reason": data["reason"],
            "figures": _finite(data["figures"]), "at": data["at"]}


def _finite(value: Any) -> Any:
    """The figures with every infinite or NaN float as None: standard JSON has
    no such numbers, and httpx refuses to encode them."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def slack_body(body: Mapping[str, Any]) -> dict[str, Any]:
    """One readable line for a Slack-compatible incoming webhook."""
    percent = body["weight_bp"] / 100
    return {"text": f"Rampart rollout {body['rollout_id']}: {body['event']} "
                    f"({body['from_phase']} -> {body['to_phase']}, candidate at {percent:g}%)"
                    f" - {body['reason']}"}


def display_url(url: str) -> str:
    """The hook's URL without credentials or query, fit for logs and hold reasons
    (a query string or user-info may carry a token)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


@dataclass(frozen=True)
class ConfirmAnswer:
    ok: bool
    detail: str


def post_confirm(url: str, body: Mapping[str, Any],
                 timeout_s: float = CONFIRM_TIMEOUT_S) -> ConfirmAnswer:
    """POST ``body`` to a confirm hook: ok only on a 2xx; never raises."""
    try:
        with httpx.Client(timeout=timeout_s) as client:
            response = client.post(url, json=body)
    except httpx.HTTPError as exc:
        return ConfirmAnswer(False, f"unreachable ({type(exc).__name__}: {exc})")
    except Exception as exc:  # whatever it is, the answer is "not confirmed", never a crash
        log.exception("confirm hook %s", display_url(url))
        return ConfirmAnswer(False, f"failed ({type(exc).__name__}: {exc})")
    if response.is_success:
        return ConfirmAnswer(True, f"answered {response.status_code}")
    return ConfirmAnswer(False, f"answered {response.status_code}")


@dataclass(frozen=True)
class _Post:
    url: str
    body: dict[str, Any]


class Notifier:
    """A bounded queue of webhook posts and the one thread that sends them.

    The thread starts with the first post, so a service whose plans name no
    webhook runs none. ``sleep`` waits between retries; :meth:`close` cuts
    that wait short.
    """

    def __init__(self, max_queue: int = 1000, attempts: int = 3, timeout_s: float = 2.0,
                 backoff_s: float = 0.25,
                 transport: httpx.BaseTransport | None = None) -> None:
        if max_queue < 1 or attempts < 1:
            raise ValueError("max_queue and attempts must be at least 1")
        self.max_queue = max_queue
        self.attempts = attempts
        self.timeout_s = timeout_s
        self.backoff_s = backoff_s
        self._transport = transport
        self._queue: deque[_Post] = deque()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closing = threading.Event()
        self._busy = False
        self.dropped = 0
        self.delivered = 0
        self.failed = 0

    # ------------------------------------------------------------ the service's side

    def publish(self, rollout_id: str, webhooks: Sequence[Webhook],
                records: Sequence[AuditRecord]) -> None:
        """Queue one post per record and subscribed webhook; returns at once."""
        posts = []
        for record in records:
            kind = event_kind(record)
            if kind is None:
                continue
            body = event_body(rollout_id, kind, record)
            for hook in webhooks:
                if hook.wants(kind):
                    posts.append(_Post(hook.url, slack_body(body) if hook.format == "slack"
                                       else body))
        if posts:
            self.enqueue(posts)

    def enqueue(self, posts: Sequence[_Post]) -> None:
        with self._cond:
            if self._closing.is_set():
                self.dropped += len(posts)
                return
            for post in posts:
                if len(self._queue) >= self.max_queue:
                    # The newest events tell the current state; the oldest are stale.
                    self._queue.popleft()
                    self.dropped += 1
                self._queue.append(post)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="rollout-notify",
                                                daemon=True)
                self._thread.start()
            self._cond.notify()

    @property
    def queued(self) -> int:
        with self._cond:
            return len(self._queue)

    def flush(self, timeout_s: float) -> bool:
        """Wait until every queued post was delivered or given up; False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._queue and not self._busy, timeout_s)

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop the thread; what is still queued is dropped (and counted)."""
        self._closing.set()
        with self._cond:
            self.dropped += len(self._queue)
            self._queue.clear()
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(timeout_s)

    # ------------------------------------------------------------ the sending thread

    def _run(self) -> None:
        with httpx.Client(timeout=self.timeout_s, transport=self._transport) as client:
            while True:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()  # flush() waiters
                    self._cond.wait_for(lambda: self._queue or self._closing.is_set())
                    if self._closing.is_set():
                        return
                    post = self._queue.popleft()
                    self._busy = True
                self._send(client, post)

    def _send(self, client: httpx.Client, post: _Post) -> None:
        problem = ""
        for attempt in range(1, self.attempts + 1):
            try:
                response = client.post(post.url, json=post.body)
                if response.is_success:
                    with self._cond:
                        self.delivered += 1
                    return
                problem = f"answered {response.status_code}"
            except httpx.HTTPError as exc:
                problem = f"{type(exc).__name__}: {exc}"
            except Exception as exc:  # a bug must not kill the only sending thread
                problem = f"{type(exc).__name__}: {exc}"
                log.exception("webhook post to %s failed", display_url(post.url))
            if attempt < self.attempts and self._closing.wait(
                    self.backoff_s * 2 ** (attempt - 1)):
                break
        with self._cond:
            self.failed += 1
        log.warning("webhook %s: giving up after %d attempt(s): %s",
                    display_url(post.url), self.attempts, problem)
