"""Reading an interleaving experiment's logs into each session's credited clicks
(:mod:`rollout.experiments.interleaving_report` tests them).

A session is one ``POST /v1/rank`` request: one list shown, which is what
team-draft credit is defined on (a unit with several requests has several
sessions; a request id logged twice, a replay, rebuilds the same list and is
one session).

Shown lists: the experiment's decision rows of role ``ranker`` logged by
``as_of`` whose ranker (``arm``) contributed the position (``arm == team``),
one per shown position. Each holds the item, its 0-based ``position`` and the
contributing ranker; for balanced credit the item's 1-based ``item_rank`` in
each ranker's own list comes from the two rows of the item (``arm`` a and b).

Clicks: outcome events of the click metric known by ``as_of`` (received by
then, and not stamped after it; tagged with this experiment or untagged) with
a value above 0 and a ``request_id``. A click names its item by ``item_id``
or by ``position`` in the shown list; with both, the item id decides (it names
the item whatever the list looked like). A click on an item or position the
request's list did not show, or for a request no shown list has, is left out
and counted (:class:`~rollout.experiments.interleaving_report.ClickCounts`).
Several clicks on one position count once.

Each session is credited by the method it was logged with
(``interleaving_method``; the config's when the row has none): team draft
credits a click to the ranker that contributed its position, balanced by the
two rankers' prefixes (:mod:`rollout.experiments.stats.interleaving`).

Refused with an :class:`~rollout.experiments.data.AnalysisInputError`: no
shown list by ``as_of``, a click with a negative position, a balanced session
whose clicked item has no logged rank.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from rollout.experiments.data import (
    DECISION_LOG,
    OUTCOMES_LOG,
    AnalysisInputError,
    LogPlace,
    _as_of_scalar,
    _or_null,
    _read,
    encode,
)
from rollout.experiments.interleaving_report import ClickCounts, MethodSessions
from rollout.experiments.results import SkippedFile
from rollout.experiments.stats.interleaving import Credit, balanced_credit, team_draft_credit
from serving.kernel.config import InterleavingSpec
from telemetry.decision_log import RANKER_ROLE

DEFAULT_CLICK_METRIC = "click"
# Request and item ids are printable ASCII without spaces (the gateway's
# request-id rule), so a space joins the two into one unambiguous key.
_KEY_SEPARATOR = " "


@dataclass(frozen=True, eq=False)
class InterleavingSessions:
    """The sessions of an interleaving experiment shown by ``as_of``, in the
    order of their request ids' first appearance in the log.

    ``clicks_a[i]``/``clicks_b[i]`` are the clicks credited to rankers A and B
    in session ``request_ids[i]``, ``shown[i]`` how many positions it showed,
    ``method[i]`` the method its credit followed. ``clicks`` says what became
    of every click event read.
    """

    experiment_id: str
    method: str
    metric: str
    as_of: dt.datetime
    request_ids: tuple[str, ...]
    shown: npt.NDArray[np.int64]
    clicks_a: npt.NDArray[np.int64]
    clicks_b: npt.NDArray[np.int64]
    session_methods: tuple[str, ...]
    clicks: ClickCounts
    skipped_files: tuple[SkippedFile, ...] = field(default=())

    @property
    def sessions(self) -> int:
        """Sessions shown by ``as_of``."""
        return len(self.request_ids)

    def methods(self) -> tuple[MethodSessions, ...]:
        """Sessions per interleaving method, most common first."""
        names, counts = np.unique(np.asarray(self.session_methods, dtype=object),
                                  return_counts=True)
        order = np.argsort(-counts, kind="stable")
        return tuple(MethodSessions(str(names[i]), int(counts[i])) for i in order)


def _when(moment: dt.datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def _strings(column: pa.ChunkedArray) -> pa.ChunkedArray:
    """A string column, decoded when it was read as a dictionary."""
    if pa.types.is_dictionary(column.type):
        return column.cast(pa.string())
    return column


def _ints(column: pa.ChunkedArray | pa.Array, missing: int = -1) -> npt.NDArray[np.int64]:
    return np.asarray(pc.fill_null(column, missing).to_numpy(zero_copy_only=False),
                      dtype=np.int64)


def _keys(requests: pa.ChunkedArray | pa.Array, items: pa.ChunkedArray | pa.Array
          ) -> pa.ChunkedArray | pa.Array:
    return pc.binary_join_element_wise(requests, items, _KEY_SEPARATOR)


def _shown_lists(decisions: LogPlace, spec: InterleavingSpec, as_of: dt.datetime,
                 skip_bad_files: bool) -> tuple[pa.Table, pa.Table, tuple[SkippedFile, ...]]:
    """The shown rows (``arm == team``, with a position) and every ranker row,
    of ``spec``'s requests logged by ``as_of``."""
    read = _read(decisions, DECISION_LOG,
                 ["request_id", "arm", "item_id", "item_rank", "position", "team",
                  "interleaving_method"],
                 (pc.field("experiment_id") == spec.id)
                 & _or_null("role", pc.field("role") == RANKER_ROLE)
                 & _or_null("timestamp", pc.field("timestamp") <= _as_of_scalar(as_of)),
                 skip_bad_files)
    table = read.table.set_column(read.table.schema.get_field_index("arm"), "arm",
                                  _strings(read.table["arm"]))
    shown = table.filter(pc.and_(pc.fill_null(pc.equal(table["arm"], table["team"]), False),
                                 pc.is_valid(table["position"])))
    if shown.num_rows == 0:
        raise AnalysisInputError(
            f"no list of interleaving experiment {spec.id!r} was shown by {_when(as_of)} "
            "in the decision log (no ranker row with a position)")
    return shown, table, read.skipped


def _ranks(table: pa.Table, keys: pa.ChunkedArray | pa.Array, ranker: str
           ) -> npt.NDArray[np.int64]:
    """Each key's 1-based rank in ``ranker``'s own list (0 when not logged)."""
    own = table.filter(pc.and_(pc.equal(table["arm"], ranker),
                               pc.is_valid(table["item_rank"])))
    found = _ints(pc.index_in(keys, value_set=_keys(own["request_id"], own["item_id"])
                              .combine_chunks()))
    ranks = _ints(own["item_rank"], 0)
    return np.where(found >= 0, ranks[np.maximum(found, 0)] if ranks.size else 0, 0)


def load_interleaving_sessions(decisions: LogPlace, outcomes: LogPlace, spec: InterleavingSpec,
                               as_of: dt.datetime, metric: str = DEFAULT_CLICK_METRIC,
                               skip_bad_files: bool = False) -> InterleavingSessions:
    """The sessions of interleaving experiment ``spec`` shown by ``as_of``, each
    with its clicks of ``metric`` credited to ranker A and B (see the module
    docstring). AnalysisInputError for no shown list, a negative click
    position, a clicked balanced item without ranks, or unreadable logs."""
    shown, rows, skipped = _shown_lists(decisions, spec, as_of, skip_bad_files)
    session, request_ids = encode(shown["request_id"])
    position = _ints(shown["position"])
    sessions = len(request_ids)
    width = int(position.max()) + 1
    # A replayed request logs its list again: one cell per (session, position).
    cell = session * width + position
    _, first = np.unique(cell, return_index=True)
    first = np.sort(first)
    shown = shown.take(pa.array(first))
    session, position, cell = session[first], position[first], cell[first]
    grid = np.zeros((sessions, width), dtype=np.bool_)
    grid[session, position] = True
    from_a = np.zeros((sessions, width), dtype=np.bool_)
    from_a[session, position] = np.asarray(
        pc.fill_null(pc.equal(shown["team"], "a"), False).to_numpy(zero_copy_only=False))
    length = np.bincount(session, minlength=sessions).astype(np.int64)
    shown_keys = _keys(shown["request_id"], shown["item_id"]).combine_chunks()

    logged = pc.fill_null(shown["interleaving_method"], spec.method)
    method_of = np.full(sessions, spec.method, dtype=object)
    method_of[session] = np.asarray(logged.to_numpy(zero_copy_only=False), dtype=object)

    clicked, counts, events_skipped = _clicks(outcomes, spec, as_of, metric, skip_bad_files,
                                              request_ids, grid, shown_keys, position)
    clicks_a = np.zeros(sessions, dtype=np.int64)
    clicks_b = np.zeros(sessions, dtype=np.int64)
    for method in np.unique(method_of):
        part = np.flatnonzero(method_of == method)
        credit: Credit
        if method == "balanced":
            rank_a = np.zeros((sessions, width), dtype=np.int64)
            rank_b = np.zeros((sessions, width), dtype=np.int64)
            rank_a[session, position] = _ranks(rows, shown_keys, "a")
            rank_b[session, position] = _ranks(rows, shown_keys, "b")
            credit = balanced_credit(rank_a[part], rank_b[part], clicked[part])
        else:
            credit = team_draft_credit(from_a[part], clicked[part])
        if credit.error is not None:
            raise AnalysisInputError(
                f"interleaving experiment {spec.id!r}: the {method} sessions cannot be "
                f"credited ({credit.error}: a clicked item has no logged rank in one of the "
                "rankers' lists)")
        clicks_a[part], clicks_b[part] = credit.clicks_a, credit.clicks_b
    return InterleavingSessions(
        spec.id, spec.method, metric, as_of,
        tuple(str(r) for r in request_ids.to_pylist()), length, clicks_a, clicks_b,
        tuple(str(m) for m in method_of), counts, (*skipped, *events_skipped))


def _clicks(outcomes: LogPlace, spec: InterleavingSpec, as_of: dt.datetime, metric: str,
            skip_bad_files: bool, request_ids: pa.Array, grid: npt.NDArray[np.bool_],
            shown_keys: pa.Array, position: npt.NDArray[np.int64]
            ) -> tuple[npt.NDArray[np.bool_], ClickCounts, tuple[SkippedFile, ...]]:
    """The clicked cells of the sessions' grid, and what became of each event."""
    as_of_us = _as_of_scalar(as_of)
    read = _read(
        outcomes, OUTCOMES_LOG,
        ["value", "request_id", "item_id", "position"],
        _or_null("metric", pc.field("metric") == metric)
        & (pc.field("experiment_id").is_null() | (pc.field("experiment_id") == spec.id))
        & _or_null("timestamp", pc.field("timestamp") <= as_of_us)
        & _or_null("received_at", pc.field("received_at") <= as_of_us), skip_bad_files)
    events = read.table
    clicked = np.zeros(grid.shape, dtype=np.bool_)
    if events.num_rows == 0:
        return clicked, ClickCounts(), read.skipped
    click_position = _ints(events["position"])
    negative = np.flatnonzero(pc.fill_null(pc.less(events["position"], 0), False)
                              .to_numpy(zero_copy_only=False))
    if negative.size:
        row = int(negative[0])
        raise AnalysisInputError(
            f"{negative.size} {metric} events of interleaving experiment {spec.id!r} have a "
            f"negative position (the first: {click_position[row]} on request "
            f"{events['request_id'][row].as_py()!r}); a position is 0-based")
    value = np.asarray(events["value"].to_numpy(zero_copy_only=False), dtype=np.float64)
    is_click = value > 0.0
    has_request = np.asarray(pc.is_valid(events["request_id"]).to_numpy(zero_copy_only=False))
    which = _ints(pc.index_in(events["request_id"], value_set=request_ids))
    known = is_click & (which >= 0)
    has_item = np.asarray(pc.is_valid(events["item_id"]).to_numpy(zero_copy_only=False))
    has_position = click_position >= 0
    # By item id: the shown row of (request, item) gives the position.
    by_item = _ints(pc.index_in(_keys(events["request_id"], events["item_id"]),
                                value_set=shown_keys))
    at = np.full(events.num_rows, -1, dtype=np.int64)
    item_found = known & has_item & (by_item >= 0)
    at[item_found] = position[by_item[item_found]]
    # By position, where no item id names it: a position the list showed.
    by_position = known & ~has_item & has_position
    width = grid.shape[1]
    inside = by_position & (click_position < width)
    inside[inside] = grid[which[inside], click_position[inside]]
    at[inside] = click_position[inside]
    matched = at >= 0
    clicked[which[matched], at[matched]] = True
    unshown = known & (has_item | has_position) & ~matched
    counts = ClickCounts(
        events=events.num_rows, not_clicks=int((~is_click).sum()),
        without_request=int((is_click & ~has_request).sum()),
        unknown_request=int((is_click & has_request & (which < 0)).sum()),
        without_item=int((known & ~has_item & ~has_position).sum()),
        unshown=int(unshown.sum()), matched=int(matched.sum()))
    return clicked, counts, read.skipped
