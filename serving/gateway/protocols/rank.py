"""``POST /v1/rank``: the candidates of one request, ranked by two rankers and
shown as one interleaved list.

A body is ``{"experiment"?, "unit_id"?, "request_id"?, "items": [{"item_id",
"features"}, ...]}``. The unit id and request id are found as for
``/v1/predict`` (the body, then the unit header or query parameter; the body's
request id, then ``X-Request-Id``, then a new one). Whether each item's
features fit a ranker is checked by the gateway against that ranker's
signature, as a routed row is; here only the body's shape, the experiment and
the item limits.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from serving.gateway.protocols import Formatted, UnitPolicy, UnitSource
from serving.gateway.protocols.v1 import (
    Problems,
    check_header_request_id,
    error_answer,
    load_json,
    new_request_id,
    request_unit,
    unit_places,
)
from serving.gateway.schemas import MAX_BATCH_ROWS, RankRequest
from serving.kernel.errors import PayloadTooLarge, RampartError, UnitMissing, ValidationFailed
from serving.routing.interleaving import Interleaving
from serving.routing.router import CompiledInterleaving, RoutingTable

__all__ = ["RankCall", "UnknownExperiment", "format", "format_error", "parse"]


class UnknownExperiment(RampartError):
    """``POST /v1/rank`` names no interleaving experiment of this gateway (or
    names none and the gateway does not run exactly one)."""

    code, status = "experiment_not_found", 404


@dataclass(frozen=True, slots=True)
class RankCall:
    """A parsed ``POST /v1/rank``: whose request, which experiment, which items.

    ``features[i]`` is item ``item_ids[i]``'s row as sent (JSON values)."""

    request_id: str
    unit_id: str
    unit_source: UnitSource
    experiment: CompiledInterleaving
    item_ids: tuple[str, ...]
    features: tuple[dict[str, Any], ...]


def parse(body: bytes, *, unit: UnitPolicy, header_unit: str | None,
          query: Mapping[str, str], header_request_id: str | None,
          table: RoutingTable) -> RankCall:
    """A ``POST /v1/rank`` body as a :class:`RankCall` for the experiments of ``table``.

    Returns the call, or raises the RampartError the client is answered:
    InvalidJson, PayloadTooLarge (more items than the request limit or the
    experiment's ``max_items``), ValidationFailed (shape, values, duplicate
    item ids, no experiment named where several run), UnknownExperiment or
    UnitMissing. The cheap count comes before validating every item, so an
    oversized body costs no per-item work.
    """
    header_id = check_header_request_id(header_request_id)
    data = load_json(body, header_id)
    if not isinstance(data, dict):
        raise ValidationFailed('body must be a JSON object {"items": [{"item_id", '
                               '"features"}, ...]}', header_id)
    items = data.get("items")
    if isinstance(items, list) and len(items) > MAX_BATCH_ROWS:
        raise too_many_items(len(items), MAX_BATCH_ROWS, "one request", header_id)
    request = Problems(header_id).validate(RankRequest, data)
    request_id = request.request_id or header_id or new_request_id()
    spec = _experiment(table, request.experiment, request_id)
    if len(request.items) > spec.max_items:
        raise too_many_items(len(request.items), spec.max_items,
                             f"interleaving experiment {spec.id!r}", request_id)
    problems = Problems(request_id)
    first: dict[str, int] = {}
    for i, item in enumerate(request.items):
        if item.item_id in first:
            problems.add(f"items.{i}.item_id",
                         f"{item.item_id!r} is also items.{first[item.item_id]}'s: "
                         "each candidate is listed once")
        first.setdefault(item.item_id, i)
    problems.raise_any()
    unit_id, source = _unit(request, unit, header_unit, query, request_id)
    return RankCall(request_id, unit_id, source, spec,
                    tuple(item.item_id for item in request.items),
                    tuple(dict(item.features) for item in request.items))


def too_many_items(count: int, limit: int, where: str, request_id: str | None
                   ) -> PayloadTooLarge:
    return PayloadTooLarge(f"{count} items in one request; {where} takes at most {limit}",
                           request_id)


def _experiment(table: RoutingTable, named: str | None, request_id: str
                ) -> CompiledInterleaving:
    """The interleaving experiment the request is for: the one named, or the
    only one configured."""
    known = sorted(spec.id for spec in table.interleavings)
    if named is not None:
        spec = table.interleaving(named)
        if spec is None:
            raise UnknownExperiment(f"no interleaving experiment {named!r}; this gateway runs "
                                    f"{known}", request_id)
        return spec
    if not known:
        raise UnknownExperiment("this gateway runs no interleaving experiment (configure one "
                                "under 'interleaving')", request_id)
    if len(known) > 1:
        raise ValidationFailed(f'invalid request:\n  experiment: required, since this gateway '
                               f"runs several interleaving experiments: {known}", request_id)
    return table.interleavings[0]


def _unit(request: RankRequest, unit: UnitPolicy, header_unit: str | None,
          query: Mapping[str, str], request_id: str) -> tuple[str, UnitSource]:
    """The request's unit and where it came from, as ``/v1/predict`` finds a row's."""
    if request.unit_id is not None:
        return request.unit_id, "body"
    found = request_unit(unit, header_unit, None, query, request_id)
    if found is not None:
        return found
    if unit.hash_request_id:
        return request_id, "request_id"
    raise UnitMissing(f"no unit id: send it as {unit_places(unit, 'the body field unit_id')}",
                      request_id)


def format(request_id: str, experiment: CompiledInterleaving, merged: Interleaving
           ) -> Formatted:
    """The answer to a ``POST /v1/rank``: the merged list, best first, each
    position with the ranker that contributed it."""
    body = {
        "request_id": request_id,
        "experiment": experiment.id,
        "method": merged.method,
        "ranking": [{"item_id": item, "ranker": team, "position": position}
                    for position, (item, team) in enumerate(
                        zip(merged.items, merged.teams, strict=True))],
    }
    return Formatted(200, orjson.dumps(body), {"X-Request-Id": request_id})


def format_error(error: RampartError) -> Formatted:
    """A refused ``POST /v1/rank``: the one error body with the error's status."""
    return error_answer(error, error.request_id)
