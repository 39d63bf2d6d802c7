"""The model versions one replica has loaded.

One :class:`LoadedScorers` is built before the :class:`GatewayCore` and the
:class:`ShadowRunner` and handed to both: the request path reads its dicts
directly, the shadow runner looks versions up through :class:`ScorerLookup`,
and a newer routing table adds versions to it before the table is swapped in.

A scorer may also offer ``predict_async`` (a wrapper that has to wait, such
as the chaos path's fault injection): the request path then awaits it instead
of calling ``predict_rows``, so waiting never blocks the replica's event loop.
Plain scorers have no such method and cost the request path one dict miss.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from typing import Any, Protocol

from models.outputs import ScoredBatch
from models.registry import Scorer

ModelKey = tuple[str, str]
AsyncPredict = Callable[[Sequence[Mapping[str, Any]], Mapping[str, Any] | None],
                        Awaitable[ScoredBatch]]


class ScorerLookup(Protocol):
    """Find a loaded version by name and version (None if not loaded here)."""

    def lookup(self, name: str, version: str) -> Scorer | None: ...


class LoadedScorers:
    """Loaded versions by ``(name, version)`` and, for scorers that must be
    awaited, their ``predict_async``."""

    def __init__(self, scorers: Mapping[ModelKey, Scorer] | None = None) -> None:
        self.by_key: dict[ModelKey, Scorer] = {}
        self.awaited: dict[ModelKey, AsyncPredict] = {}
        for key, scorer in (scorers or {}).items():
            self.add(key, scorer)

    def add(self, key: ModelKey, scorer: Scorer) -> None:
        """Make ``scorer`` servable; the scorer last, so a reader that finds it
        finds everything it needs."""
        predict_async: AsyncPredict | None = getattr(scorer, "predict_async", None)
        if predict_async is not None:
            self.awaited[key] = predict_async
        self.by_key[key] = scorer

    def lookup(self, name: str, version: str) -> Scorer | None:
        return self.by_key.get((name, version))

    def __contains__(self, key: object) -> bool:
        return key in self.by_key

    def __iter__(self) -> Iterator[ModelKey]:
        return iter(list(self.by_key))

    def __len__(self) -> int:
        return len(self.by_key)
