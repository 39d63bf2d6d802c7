"""Cluster-randomized experiments: which context attribute names a unit's
cluster, and the cluster's id as text (part of the config kernel).

An experiment with ``cluster: team`` hashes the request context's ``team``
instead of the unit, so every unit of a team gets the same arm. The id hashed
is the value as the decision log writes it (text; booleans as ``true`` /
``false``), so the analysis reads back from the log the very cluster routing
hashed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from serving.kernel.ids import HIDDEN_CHARACTER, MAX_CONTEXT_KEY_CHARS


def check_cluster_key(key: str) -> str:
    """``key`` if a request context can carry it (1-64 characters, no control
    or invisible character, not blank); else ``ValueError``."""
    if not 1 <= len(key) <= MAX_CONTEXT_KEY_CHARS or HIDDEN_CHARACTER.search(key) or (
            not key.strip()):
        raise ValueError(f"cluster must name a context attribute: 1-{MAX_CONTEXT_KEY_CHARS} "
                         f"characters, not blank, without control or invisible characters "
                         f"(got {key[:80]!r})")
    return key


def cluster_text(value: Any) -> str:
    """A context value as the decision log's context column writes it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def cluster_of(key: str, context: Mapping[str, Any]) -> str | None:
    """The cluster of a request: the text of ``context[key]``, or None when the
    context lacks it or holds an empty value (such a request cannot be placed
    in a cluster, so it is not in the experiment)."""
    value = context.get(key)
    if value is None:
        return None
    text = cluster_text(value)
    return text or None
