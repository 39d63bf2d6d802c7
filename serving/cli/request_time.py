"""``rampart assign --at``: the time a request is routed at, which a switchback
experiment's window comes from. Read here, at the edge: routing never reads
the clock."""

from __future__ import annotations

import datetime as dt
import math
import time

from serving.cli.common import CliError


def request_time(text: str | None) -> float:
    """Seconds since the epoch: ``text`` as an ISO-8601 time with a zone or as
    epoch seconds; the current time when None."""
    if text is None:
        return time.time()
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        if not math.isfinite(seconds) or seconds < 0:
            raise CliError(f"--at: not a time after the epoch: {text!r}")
        return seconds
    try:
        moment = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise CliError(f"--at: not an ISO-8601 time or epoch seconds: {text!r}") from None
    if moment.tzinfo is None:
        raise CliError(f"--at needs a time zone, e.g. {text}Z")
    return moment.timestamp()
