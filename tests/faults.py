"""Helpers shared by the fault tests: light steady traffic on a thread, the
admin API with a token, and bounded waits."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import httpx

from serving.cli.demo.models import FEATURE_NAMES


class Traffic:
    """Light, steady scoring requests on a thread; every answer's status is kept."""

    def __init__(self, url: str, every_s: float = 0.02) -> None:
        self.url = url
        self.every_s = every_s
        self.codes: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)

    def _run(self) -> None:
        features = {name: 0.1 * (i + 1) for i, name in enumerate(FEATURE_NAMES)}
        i = 0
        with httpx.Client(base_url=self.url, timeout=10.0) as client:
            while not self._stop.is_set():
                i += 1
                try:
                    code = client.post("/v1/predict", json={"unit_id": f"user-{i % 500}",
                                                            "features": features}).status_code
                except httpx.HTTPError:
                    code = 599
                self.codes.append(code)
                self._stop.wait(self.every_s)

    def failures(self) -> int:
        return sum(1 for code in self.codes if code != 200)


def admin_call(url: str, token: str, method: str, path: str, body: Any = None) -> Any:
    """One admin API call that must succeed; its JSON answer."""
    response = httpx.request(method, f"{url}{path}", json=body, timeout=30,
                             headers={"Authorization": f"Bearer {token}"})
    assert response.status_code < 300, response.text
    return response.json()


def wait_until(condition: Callable[[], Any], what: str, timeout_s: float) -> Any:
    """``condition()``'s first truthy value, polled until ``timeout_s`` (then fail)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"not reached: {what}"
        time.sleep(0.2)
