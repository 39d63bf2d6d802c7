"""The write-behind machinery shared by the decision log and the outcomes log.

Appending only takes a short lock and extends a list; a background thread
writes what is buffered when it reaches ``batch_rows``, every
``flush_interval_s``, and once more on :meth:`BatchedWriter.close`. A failed
write is logged and counted, never raised into the request path, and what was
not written is kept and tried again at the next flush: a full disk, a
read-only directory or an object store that is away loses nothing while it
recovers. What is kept is bounded (``max_buffered_rows``); beyond it the
oldest rows are dropped and counted, so a store that never recovers costs a
known number of rows, not the replica's memory.

The root is a local directory or any URI :mod:`telemetry.storage` resolves
(``s3://bucket/prefix``...). A URI is resolved in the flush thread, so
whatever that costs (a region look-up) stays off the request path, and a
failure is counted as a failed write and tried again on the next flush.
"""

from __future__ import annotations

import logging
import os
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterable
from typing import Any, Generic, Protocol, TypeVar

from telemetry.storage import LogLocation, is_uri, visible_parquet_files

log = logging.getLogger(__name__)

ItemT = TypeVar("ItemT")

__all__ = ["BatchedWriter", "PartialWrite", "visible_parquet_files"]


class PartialWrite(Exception):
    """A write that failed after writing some of its files: ``remaining`` (items
    holding ``remaining_rows`` rows) is what is still to be written, so a retry
    writes no row twice."""

    def __init__(self, cause: BaseException, remaining: list[Any], remaining_rows: int) -> None:
        super().__init__(str(cause))
        self.cause = cause
        self.remaining = remaining
        self.remaining_rows = remaining_rows


class WriterEvents(Protocol):
    """Where a writer reports failures (the gateway's Prometheus counters)."""

    def write_failed(self) -> None: ...

    def rows_dropped(self, rows: int) -> None: ...


class BatchedWriter(ABC, Generic[ItemT]):
    """Buffers items (rows, or batches of rows) and writes them in the background.

    Subclasses implement :meth:`_write` for one taken batch.
    """

    noun = "log"

    def __init__(self, root: str | os.PathLike[str] | LogLocation, writer_id: str,
                 batch_rows: int, flush_interval_s: float,
                 max_buffered_rows: int | None = None, events: WriterEvents | None = None
                 ) -> None:
        self.root_uri = str(root)
        self._root = root
        self._location: LogLocation | None = None
        if isinstance(root, LogLocation) or not is_uri(root):
            # A path costs nothing to resolve; its directory exists from the start.
            self._location = LogLocation.resolve(root)
            self._location.ensure_dir()
        self.writer_id = writer_id
        self.batch_rows = batch_rows
        self.flush_interval_s = flush_interval_s
        self._buffer: list[ItemT] = []
        self._buffered_rows = 0
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._wake = threading.Event()
        self._closed = threading.Event()
        self._sequence = 0
        self.rows_written = 0
        self.write_errors = 0
        self.rows_dropped = 0
        self.max_buffered_rows = max_buffered_rows or max(20 * batch_rows, 100_000)
        self.events = events
        # Batches a failed write left, oldest first: (items, rows).
        self._retry: list[tuple[list[ItemT], int]] = []
        self._thread = threading.Thread(target=self._run, name=f"{self.noun}-{writer_id}",
                                        daemon=True)
        self._thread.start()

    def _buffer_items(self, items: Iterable[ItemT], rows: int) -> None:
        """Buffer ``items`` holding ``rows`` rows in all; never blocks on I/O."""
        with self._lock:
            self._buffer.extend(items)
            self._buffered_rows += rows
            full = self._buffered_rows >= self.batch_rows
        if full:
            self._wake.set()

    def _run(self) -> None:
        while not self._closed.is_set():
            self._wake.wait(self.flush_interval_s)
            self._wake.clear()
            self.flush()

    def flush(self) -> int:
        """Write everything buffered so far, and whatever an earlier failed write
        left; returns the rows written."""
        with self._write_lock:
            with self._lock:
                batch, self._buffer = self._buffer, []
                rows, self._buffered_rows = self._buffered_rows, 0
            chunks = self._retry + ([(batch, rows)] if rows else [])
            self._retry = []
            written = 0
            # Oldest first, each on its own: a chunk that fails keeps its place
            # (and its age, for the bound) among those that follow it.
            for k, (items, n) in enumerate(chunks):
                try:
                    self._write(items)
                except PartialWrite as failed:  # some files were written: keep the rest
                    written += n - failed.remaining_rows
                    self._failed(failed.cause,
                                 [(failed.remaining, failed.remaining_rows), *chunks[k + 1:]])
                    break
                except Exception as exc:  # keep serving, and keep the rows for the next try
                    self._failed(exc, chunks[k:])
                    break
                written += n
            self.rows_written += written
            return written

    def _failed(self, exc: BaseException, kept: list[tuple[list[ItemT], int]]) -> None:
        self.write_errors += 1
        if self.events is not None:
            self.events.write_failed()
        dropped = 0
        while kept and sum(n for _, n in kept) > self.max_buffered_rows:
            dropped += kept.pop(0)[1]  # the oldest go first
        self._retry = kept
        if dropped:
            self.rows_dropped += dropped
            if self.events is not None:
                self.events.rows_dropped(dropped)
        log.error("%s: cannot write to %s (%s); %d rows kept for the next try, %d dropped",
                  self.noun, self.root_uri, exc, sum(n for _, n in kept), dropped)

    @property
    def location(self) -> LogLocation:
        """Where the files go; a URI is resolved on first use (in the flush thread)."""
        if self._location is None:
            self._location = LogLocation.resolve(self._root)
        return self._location

    def _next_name(self) -> str:
        """A file name no other writer and no earlier batch of this one uses."""
        self._sequence += 1
        return f"part-{self.writer_id}-{self._sequence:08d}.parquet"

    @abstractmethod
    def _write(self, batch: list[ItemT]) -> None:
        """Write one taken batch (each file with :meth:`LogLocation.write_parquet`,
        so readers see all of it or none of it)."""

    def close(self) -> None:
        """Stop the background thread and write what is left. Idempotent."""
        if self._closed.is_set():
            return
        self._closed.set()
        self._wake.set()
        self._thread.join(timeout=30)
        self.flush()

    @property
    def pending(self) -> int:
        """Rows not yet written: buffered, and kept from a failed write."""
        with self._lock:
            return self._buffered_rows + sum(n for _, n in self._retry)
