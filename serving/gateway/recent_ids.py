"""The request ids a replica has answered lately, to refuse one sent again.

Bounded by count, not time: the last ``capacity`` ids (100,000 by default,
about 10 MB) whatever the traffic, so a flood of new ids costs the same
memory as a trickle. Per replica: a duplicate sent to another replica of the
gateway is not seen here (the decision log still holds both rows, and
analysis counts units, not requests). Used from the event loop only.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

DEFAULT_CAPACITY = 100_000


class RecentRequestIds:
    """The last ``capacity`` request ids answered, oldest forgotten first."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        self.capacity = capacity
        self._order: deque[str] = deque()
        self._ids: set[str] = set()

    def first_seen(self, ids: Iterable[str | None]) -> str | None:
        """The first of ``ids`` already answered, or None."""
        known = self._ids
        for request_id in ids:
            if request_id is not None and request_id in known:
                return request_id
        return None

    def remember(self, ids: Iterable[str | None]) -> None:
        for request_id in ids:
            if request_id is None or request_id in self._ids:
                continue
            if len(self._order) >= self.capacity:
                self._ids.discard(self._order.popleft())
            self._order.append(request_id)
            self._ids.add(request_id)

    def __len__(self) -> int:
        return len(self._ids)
