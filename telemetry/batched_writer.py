"""The write-behind machinery shared by the decision log and the outcomes log.

Appending only takes a short lock and extends a list; a background thread
writes what is buffered when it reaches ``batch_rows``, every
``flush_interval_s``, and once more on :meth:`BatchedWriter.close`. A failed
write is logged and counted, never raised into the request path.
"""

from __future__ import annotations

import logging
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterable
from pathlib import Path
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

ItemT = TypeVar("ItemT")


def visible_parquet_files(root: Path) -> list[str]:
    """The finished Parquet files under ``root``, sorted: a file still being
    written has a dot-prefixed temporary name and is left out."""
    return sorted(str(p) for p in Path(root).rglob("*.parquet") if not p.name.startswith("."))


class BatchedWriter(ABC, Generic[ItemT]):
    """Buffers items (rows, or batches of rows) and writes them in the background.

    Subclasses implement :meth:`_write` for one taken batch.
    """

    noun = "log"

    def __init__(self, root: Path, writer_id: str, batch_rows: int,
                 flush_interval_s: float) -> None:
        self.root = Path(root)
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
                log.exception("%s: failed to write %d rows", self.noun, rows)
                return 0
            self.rows_written += rows
            return rows

    def _next_name(self) -> str:
        """A file name no other writer and no earlier batch of this one uses."""
        self._sequence += 1
        return f"part-{self.writer_id}-{self._sequence:08d}.parquet"

    @abstractmethod
    def _write(self, batch: list[ItemT]) -> None:
        """Write one taken batch (the rows' files, each under a temporary name
        then renamed)."""

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
