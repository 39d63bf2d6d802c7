"""The ``unit_key`` column of both logs: :func:`unit_key` of every row's
``unit_id``, computed for a whole column at once.

Keys are computed where a log's Arrow table is built (the journal or flush
thread of a writer, the import's validation), never on the request path, so
serving a request costs nothing more. A null id has a null key.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
import pyarrow as pa

UNIT_KEY_BYTES = 8
_NO_ID = bytes(UNIT_KEY_BYTES)  # a placeholder under a null key's mask


def unit_key_bytes(unit_id: str) -> bytes:
    """The 8 bytes of :func:`unit_key`: BLAKE2b of the id's UTF-8 with an 8-byte digest."""
    return hashlib.blake2b(unit_id.encode(), digest_size=UNIT_KEY_BYTES).digest()


def unit_key(unit_id: str) -> int:
    """A unit id as a signed 64-bit integer, logged next to the id in both logs.

    The 8-byte BLAKE2b digest of the id's UTF-8 (no key, no salt, no
    personalization) read as a little-endian signed int64. It is part of the log
    format: every process and every version gives the same key for the same id,
    so keys written by different replicas, by ``rampart outcomes import`` and by
    older writers match. Analysis groups and joins on it instead of hashing the
    id strings again. Distinct ids share a key with probability about
    n²/2⁶⁵ for n distinct ids (4e-7 at 4 million units, 3e-6 at 10 million): two
    units would then count as one. It is not a secret and not a pseudonym; it
    identifies the unit as well as the id does.
    """
    return int.from_bytes(unit_key_bytes(unit_id), "little", signed=True)


def unit_key_array(unit_ids: pa.Array | pa.ChunkedArray | Sequence[str | None]) -> pa.Array:
    """The int64 keys of ``unit_ids`` (null where the id is null).

    The digests are joined into one buffer and read as little-endian int64 in one
    step, which costs about half of converting each digest to a Python int.
    """
    values = (unit_ids.to_pylist() if isinstance(unit_ids, pa.Array | pa.ChunkedArray)
              else list(unit_ids))
    if not values:
        return pa.array([], type=pa.int64())
    digests = b"".join([_NO_ID if v is None else unit_key_bytes(v) for v in values])
    keys = np.frombuffer(digests, dtype="<i8").astype(np.int64, copy=False)
    missing = [v is None for v in values]
    mask = np.asarray(missing, dtype=bool) if any(missing) else None
    return pa.array(keys, type=pa.int64(), mask=mask)


def with_unit_keys(table: pa.Table) -> pa.Table:
    """``table`` with its ``unit_key`` column filled from ``unit_id`` when it has
    none (a table built by code or written by a version before the key existed);
    a table that already has the column, or has no ``unit_id``, is returned as is."""
    names = table.column_names
    if "unit_key" in names or "unit_id" not in names:
        return table
    keys = unit_key_array(table["unit_id"])
    return table.add_column(names.index("unit_id") + 1, pa.field("unit_key", pa.int64()), keys)
