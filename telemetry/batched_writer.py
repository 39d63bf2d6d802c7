"""The write-behind machinery shared by the decision log and the outcomes log.

Appending only takes a short lock and extends a list; a background thread
writes what is buffered when it reaches ``batch_rows``, every
``flush_interval_s``, and once more on :meth:`BatchedWriter.close`. A failed
write is logged and counted, never raised into the request path.

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
from typing import Generic, TypeVar

from telemetry.storage import LogLocation, is_uri, visible_parquet_files

log = logging.getLogger(__name__)

ItemT = TypeVar("ItemT")

__all__ = ["BatchedWriter", "visible_parquet_files"]


class BatchedWriter(ABC, Generic[ItemT]):
    """Buffers items (rows, or batches of rows) and writes them in the background.

    Subclasses implement :meth:`_write` for one taken batch.
    """

    noun = "log"

    def __init__(self, root: str | os.PathLike[str] | LogLocation, writer_id: str,
                 batch_rows: int, flush_interval_s: float) -> None:
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
        """Write everything buffered so far; returns the rows written."""
        with self._write_lock:
            with self._lock:
                batch, self._buffer = self._buffer, []
                rows, self._buffered_rows = self._buffered_rows, 0
            if not rows:
                return 0
            try:
                self._write(batch)
            except Exception:  # keep serving; the rows stay counted as lost
                self.write_errors += 1
                log.exception("%s: failed to write %d rows to %s", self.noun, rows,
                              self.root_uri)
                return 0
            self.rows_written += rows
            return rows

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
        with self._lock:
            return self._buffered_rows
