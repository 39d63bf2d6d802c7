"""The one verdict type of every check Rampart makes on measurements.

Rollout guardrails, shadow and replay parity, drift and experiment guardrails
all answer with a :class:`Verdict`. A check with too few samples is not a
pass: it is ``INSUFFICIENT_DATA``, and whoever acts on it must say so.
"""

from __future__ import annotations

from enum import StrEnum


class Verdict(StrEnum):
    PASS = "PASS"
    FAIL = "FAIL"
    INSUFFICIENT_DATA = "INSUFFICIENT_DATA"
