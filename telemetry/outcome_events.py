"""Outcome events: what ``POST /v1/outcomes`` and ``rampart outcomes import``
accept, validated before anything is written.

Telemetry owns these schemas (the outcomes log stores them); the gateway
imports them, never the other way round.
"""

from __future__ import annotations

import datetime as dt
import math
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictFloat,
    StrictInt,
    StrictStr,
    WithJsonSchema,
    field_validator,
)

# The same limits as the config kernel's (``serving.kernel.ids``); telemetry
# never imports serving, and a unit test holds the two equal.
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
MAX_UNIT_ID_CHARS = 256
UNIT_ID_PATTERN = ("^[^\\x00-\\x1f\\x7f-\\x9f\\u200b-\\u200f\\u2028-\\u202e\\u2060-\\u206f"
                   "\\ufeff]+$")
FeatureValue = Annotated[StrictFloat, Field(allow_inf_nan=False)]  # ints accepted, bools not
# The gateway's request and item ids (``serving.gateway.schemas``): a click names
# the ``POST /v1/rank`` request and item it was on in the form they were logged.
REQUEST_ID_PATTERN = r"^[\x21-\x7e]+$"
MAX_REQUEST_ID_CHARS = 128
MAX_ITEM_ID_CHARS = 128
MAX_POSITION = 2**31 - 1  # the outcomes log stores a position as int32

MAX_OUTCOME_EVENTS = 10_000
MAX_OUTCOME_BODY_BYTES = 8 << 20  # 10,000 events of the longest unit ids fit
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
# Outcome timestamps lie in [1970-01-01, 10000-01-01) UTC; as seconds since the epoch:
MAX_OUTCOME_SECONDS = 253_402_300_800
_MAX_TIMESTAMP_TEXT = 64


def parse_outcome_timestamp(value: Any) -> dt.datetime:
    """An outcome time as an aware UTC datetime.

    Accepts seconds since the epoch (int or float, not bool), an ISO-8601
    string (``2026-03-01T12:00:00Z``, ``2026-03-01T13:00:00+01:00``,
    ``2026-03-01``; a string without an offset is taken as UTC) or a datetime
    (naive ones as UTC). Raises ``ValueError`` naming the problem.
    """
    if isinstance(value, bool):
        raise ValueError("timestamp must be seconds since the epoch or an ISO-8601 string, "
                         "not a boolean")
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise ValueError("timestamp must be a finite number of seconds since the epoch")
        if not 0 <= value < MAX_OUTCOME_SECONDS:
            raise ValueError(
                f"timestamp {value!r} is out of range: seconds since the epoch must lie in "
                f"[0, {MAX_OUTCOME_SECONDS}) (milliseconds given as seconds?)"
            )
        return dt.datetime.fromtimestamp(value, dt.UTC)
    if isinstance(value, str):
        if len(value) > _MAX_TIMESTAMP_TEXT:
            raise ValueError(f"timestamp is over {_MAX_TIMESTAMP_TEXT} characters")
        try:
            parsed = dt.datetime.fromisoformat(value)
        except ValueError:
            raise ValueError(f"timestamp {value!r} is not an ISO-8601 date-time") from None
    elif isinstance(value, dt.datetime):
        parsed = value
    else:
        raise ValueError("timestamp must be seconds since the epoch (a number) or an "
                         f"ISO-8601 string, not {type(value).__name__}")
    try:
        utc = (parsed.replace(tzinfo=dt.UTC) if parsed.tzinfo is None
               else parsed.astimezone(dt.UTC))
    except OverflowError:
        raise ValueError(f"timestamp {value!s} is out of range") from None
    if utc < EPOCH:
        raise ValueError(f"timestamp {value!s} is before 1970-01-01")
    return utc


OutcomeTimestamp = Annotated[
    dt.datetime,
    WithJsonSchema({
        "anyOf": [{"type": "number", "description": "seconds since the epoch"},
                  {"type": "string", "format": "date-time"}],
    }),
]


class OutcomeEvent(BaseModel):
    """One outcome of one unit: ``{"unit_id", "metric", "value", "timestamp"?,
    "experiment_id"?, "request_id"?, "item_id"?, "position"?}``. A missing
    ``timestamp`` means the time it was received.

    ``request_id`` names the ``POST /v1/rank`` request the outcome (a click)
    belongs to, ``item_id`` the item and ``position`` its 0-based place in the
    list shown: an interleaving analysis credits the click by them.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    unit_id: StrictStr = Field(min_length=1, max_length=MAX_UNIT_ID_CHARS,
                               pattern=UNIT_ID_PATTERN)
    metric: StrictStr = Field(pattern=ID_PATTERN)
    value: FeatureValue
    timestamp: OutcomeTimestamp | None = None
    experiment_id: StrictStr | None = Field(default=None, pattern=ID_PATTERN)
    request_id: StrictStr | None = Field(default=None, min_length=1,
                                         max_length=MAX_REQUEST_ID_CHARS,
                                         pattern=REQUEST_ID_PATTERN)
    item_id: StrictStr | None = Field(default=None, min_length=1, max_length=MAX_ITEM_ID_CHARS,
                                      pattern=REQUEST_ID_PATTERN)
    position: StrictInt | None = Field(default=None, ge=0, le=MAX_POSITION)

    @field_validator("timestamp", mode="before")
    @classmethod
    def _timestamp(cls, value: Any) -> dt.datetime | None:
        return None if value is None else parse_outcome_timestamp(value)


class OutcomeBatch(BaseModel):
    """Body of ``POST /v1/outcomes`` for several events: ``{"events": [...]}``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    events: list[OutcomeEvent] = Field(min_length=1, max_length=MAX_OUTCOME_EVENTS)


class OutcomesAccepted(BaseModel):
    """Body of a successful ``POST /v1/outcomes`` (202): how many events were recorded."""

    accepted: int
