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

With a spill directory (``spill_dir``) rows also survive a SIGKILL of the
process. A journal thread wakes every ``spill_interval_s``, takes the items
appended since its last tick, converts them to one Arrow table (each row is
converted once: the flush writes these tables) and appends that table to a
local, fsynced segment file (:mod:`telemetry.spill_journal`). So a row is on
local disk at most ``spill_interval_s`` plus one fsync after it was appended.
Each flush seals the segment of its chunk, a *generation*; every Parquet file
of a chunk is named after the chunk's generation
(``part-<writer>-<generation>.parquet``, at most one per partition
directory), and a retried chunk keeps its name. A sealed segment is deleted
once its chunk is written (or given up under the bound). The next writer
started on the same spill root takes over the journals of dead writers (their
``flock`` is free), and for each generation writes only the partitions whose
file does not exist yet: a writer killed after its Parquet write but before
deleting the segment duplicates nothing, and one killed halfway through a
chunk's partitions writes the rest. The replay runs on the flush thread.

The journal is best effort: a spill directory that cannot be written (disk
full, read-only) is logged and counted (``spill_failed``) and the rows stay
in memory, as without a journal. The journal tick and the Parquet flush take
separate locks, so a slow object store never delays the journal.

The root is a local directory or any URI :mod:`telemetry.storage` resolves
(``s3://bucket/prefix``...). A URI is resolved in the flush thread, so
whatever that costs (a region look-up) stays off the request path, and a
failure is counted as a failed write and tried again on the next flush. The
spill directory is always local disk.
"""

from __future__ import annotations

import logging
import os
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar, runtime_checkable

import pyarrow as pa

from telemetry.spill_journal import OrphanJournal, SpillJournal, claim_orphans, read_segment
from telemetry.storage import LogLocation, is_uri, visible_parquet_files

log = logging.getLogger(__name__)

ItemT = TypeVar("ItemT")

__all__ = ["BatchedWriter", "JournalEvents", "PartialWrite", "WriterEvents", "part_name",
           "visible_parquet_files"]


def part_name(writer_id: str, generation: int) -> str:
    """The file name of a writer's chunk ``generation`` in every partition it touches."""
    return f"part-{writer_id}-{generation:08d}.parquet"


def log_identity(root: str | os.PathLike[str] | LogLocation) -> str:
    """What names one log whichever way its root was written: an absolute path,
    or the URI without a trailing ``/``. A journal is replayed only into the
    log it was written for."""
    if isinstance(root, LogLocation):
        return root.path if root.local else root.uri
    if is_uri(root):
        return str(root).rstrip("/")
    return os.path.abspath(os.fspath(root))


class PartialWrite(Exception):
    """A write that failed after writing some of its files: ``remaining`` (tables
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


@runtime_checkable
class JournalEvents(Protocol):
    """What a writer with a spill journal also reports, when its events take it."""

    def spill_failed(self) -> None: ...

    def rows_replayed(self, rows: int) -> None: ...


@dataclass(frozen=True, slots=True)
class _Chunk:
    """Tables of one generation still to be written."""

    generation: int
    tables: list[pa.Table]
    rows: int


class BatchedWriter(ABC, Generic[ItemT]):
    """Buffers items (rows, or batches of rows) and writes them in the background.

    Subclasses implement :meth:`_to_table` (items to one Arrow table) and
    :meth:`_write` (tables of one generation to Parquet files).
    """

    noun = "log"

    def __init__(self, root: str | os.PathLike[str] | LogLocation, writer_id: str,
                 batch_rows: int, flush_interval_s: float,
                 max_buffered_rows: int | None = None, events: WriterEvents | None = None,
                 spill_dir: str | os.PathLike[str] | None = None,
                 spill_interval_s: float = 0.05, spill_fsync: bool = True) -> None:
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
        self.spill_interval_s = spill_interval_s
        # Guards the buffer and the row counts; held only for list and int work.
        self._lock = threading.Lock()
        self._buffer: list[ItemT] = []
        self._buffered_rows = 0
        self._unflushed_rows = 0  # appended since the last flush took its chunk
        self._unwritten_rows = 0  # appended and neither written nor dropped
        # Guards the staged tables, the generation and the journal.
        self._journal_lock = threading.Lock()
        self._staged: list[pa.Table] = []
        self._staged_rows = 0
        self._generation = 1
        # Guards the retry list; one flush (or replay) at a time.
        self._write_lock = threading.Lock()
        self._retry: list[_Chunk] = []  # what failed writes left, oldest first
        self._wake = threading.Event()
        self._closed = threading.Event()
        self.rows_written = 0
        self.write_errors = 0
        self.rows_dropped = 0
        self.spill_errors = 0
        self.rows_replayed = 0
        self.max_buffered_rows = max_buffered_rows or max(20 * batch_rows, 100_000)
        self.events = events
        self._spill_failing = False
        self.spill_root = None if spill_dir is None else Path(spill_dir)
        self._journal: SpillJournal | None = None
        if self.spill_root is not None:
            try:
                self._journal = SpillJournal.open(self.spill_root, writer_id,
                                                  log_identity(root), spill_fsync)
            except OSError as exc:
                self._spill_failed(exc)
        self._replay_due = self.spill_root is not None
        self._thread = threading.Thread(target=self._run, name=f"{self.noun}-{writer_id}",
                                        daemon=True)
        self._thread.start()
        self._journal_thread: threading.Thread | None = None
        if self._journal is not None:
            self._journal_thread = threading.Thread(
                target=self._run_journal, name=f"{self.noun}-journal-{writer_id}", daemon=True)
            self._journal_thread.start()

    # ----------------------------------------------------------------- appending

    def _buffer_items(self, items: Iterable[ItemT], rows: int) -> None:
        """Buffer ``items`` holding ``rows`` rows in all; never blocks on I/O."""
        with self._lock:
            self._buffer.extend(items)
            self._buffered_rows += rows
            self._unflushed_rows += rows
            self._unwritten_rows += rows
            full = self._unflushed_rows >= self.batch_rows
        if full:
            self._wake.set()

    # ------------------------------------------------------------------- journal

    def _run_journal(self) -> None:
        while not self._closed.wait(self.spill_interval_s):
            with self._journal_lock:
                self._stage_buffered()

    def spill(self) -> None:
        """Journal what was appended so far now, not at the next tick of the
        journal thread; without a journal, only converts it."""
        with self._journal_lock:
            self._stage_buffered()

    def _stage_buffered(self) -> None:
        """Convert what was appended since the last call into one table, journal
        it and keep it for the next flush. Call with the journal lock held."""
        with self._lock:
            items, self._buffer = self._buffer, []
            rows, self._buffered_rows = self._buffered_rows, 0
        if not items:
            return
        table = self._convert(items, rows)
        if table is None or table.num_rows == 0:
            return
        self._staged.append(table)
        self._staged_rows += table.num_rows
        if self._journal is None:
            return
        try:
            self._journal.append(self._generation, table)
        except Exception as exc:  # a full disk, or a tick too large for one frame
            self._spill_failed(exc)
        else:
            if self._spill_failing:
                self._spill_failing = False
                log.warning("%s: the spill journal in %s is written again", self.noun,
                            self.spill_root)

    def _convert(self, items: list[ItemT], rows: int) -> pa.Table | None:
        """:meth:`_to_table`; an item that cannot be converted is dropped and
        counted, alone: one odd value must not cost its neighbours their place."""
        try:
            return self._to_table(items)
        except Exception as exc:
            good: list[pa.Table] = []
            for item in items:
                try:
                    good.append(self._to_table([item]))
                except Exception:
                    continue
            lost = rows - sum(t.num_rows for t in good)
            log.error("%s: %d rows cannot be converted (%s); dropped", self.noun, lost, exc)
            self._count_write_error()
            self._drop(lost)
            try:
                return pa.concat_tables(good) if good else None
            except Exception:  # the parts disagree among themselves: none can be trusted
                self._drop(rows - lost)
                return None

    def _spill_failed(self, exc: BaseException) -> None:
        self.spill_errors += 1
        if isinstance(self.events, JournalEvents):
            self.events.spill_failed()
        if not self._spill_failing:
            self._spill_failing = True
            log.error("%s: cannot write the spill journal in %s (%s); rows stay in memory "
                      "only until written", self.noun, self.spill_root, exc)

    # --------------------------------------------------------------------- flush

    def _run(self) -> None:
        self._replay_orphans()
        while not self._closed.is_set():
            self._wake.wait(self.flush_interval_s)
            self._wake.clear()
            if self._replay_due:
                self._replay_orphans()
            self.flush()

    def _take_chunk(self) -> _Chunk | None:
        """Everything appended so far as the next generation's chunk; its segment
        is sealed. Holds the journal lock for one conversion at most."""
        with self._journal_lock:
            self._stage_buffered()
            with self._lock:
                self._unflushed_rows = self._buffered_rows
            if not self._staged:
                return None
            chunk = _Chunk(self._generation, self._staged, self._staged_rows)
            self._staged, self._staged_rows = [], 0
            self._generation += 1
            if self._journal is not None:
                try:
                    self._journal.seal()
                except OSError as exc:
                    self._spill_failed(exc)
            return chunk

    def flush(self) -> int:
        """Write everything appended so far, and whatever an earlier failed write
        left; returns the rows written."""
        with self._write_lock:
            chunk = self._take_chunk()
            chunks = self._retry + ([chunk] if chunk is not None else [])
            self._retry = []
            written = 0
            # Oldest first, each on its own: a chunk that fails keeps its place
            # (and its age, for the bound) among those that follow it.
            for k, current in enumerate(chunks):
                try:
                    self._write(current.tables, current.generation, self.writer_id)
                except PartialWrite as failed:  # some files were written: keep the rest
                    written += current.rows - failed.remaining_rows
                    self._failed(failed.cause, [
                        _Chunk(current.generation, failed.remaining, failed.remaining_rows),
                        *chunks[k + 1:]])
                    break
                except Exception as exc:  # keep serving, and keep the rows for the next try
                    self._failed(exc, chunks[k:])
                    break
                written += current.rows
            self.rows_written += written
            with self._lock:
                self._unwritten_rows -= written
            self._discard_segments(chunks)
            return written

    def _discard_segments(self, chunks: list[_Chunk]) -> None:
        """Delete the segments of chunks written (or dropped): no retry needs them."""
        if self._journal is None:
            return
        kept = {c.generation for c in self._retry}
        with self._journal_lock:
            for chunk in chunks:
                if chunk.generation not in kept:
                    try:
                        self._journal.discard(chunk.generation)
                    except OSError as exc:
                        self._spill_failed(exc)

    def _count_write_error(self) -> None:
        self.write_errors += 1
        if self.events is not None:
            self.events.write_failed()

    def _drop(self, rows: int) -> None:
        if not rows:
            return
        self.rows_dropped += rows
        with self._lock:
            self._unwritten_rows -= rows
        if self.events is not None:
            self.events.rows_dropped(rows)

    def _failed(self, exc: BaseException, kept: list[_Chunk]) -> None:
        self._count_write_error()
        dropped = 0
        while kept and sum(c.rows for c in kept) > self.max_buffered_rows:
            dropped += kept.pop(0).rows  # the oldest go first
        self._retry = kept
        self._drop(dropped)
        log.error("%s: cannot write to %s (%s); %d rows kept for the next try, %d dropped",
                  self.noun, self.root_uri, exc, sum(c.rows for c in kept), dropped)

    # -------------------------------------------------------------------- replay

    def _replay_orphans(self) -> None:
        """Write what dead writers journaled under the spill root and did not
        write, exactly once; a journal that cannot be written now is tried
        again at the next flush."""
        self._replay_due = False
        if self.spill_root is None:
            return
        journals = rows = 0
        try:
            for orphan in claim_orphans(self.spill_root, self.writer_id,
                                        log_identity(self._root)):
                with self._write_lock:
                    replayed, done = self._replay_one(orphan)
                journals += 1
                rows += replayed
                self._replay_due = self._replay_due or not done
        except OSError as exc:
            self._spill_failed(exc)
        if rows:
            self.rows_replayed += rows
            if isinstance(self.events, JournalEvents):
                self.events.rows_replayed(rows)
        if journals:
            log.warning("%s: replayed %d rows from the spill journals of %d stopped writers "
                        "into %s", self.noun, rows, journals, self.root_uri)

    def _replay_one(self, orphan: OrphanJournal) -> tuple[int, bool]:
        """Replay one claimed journal: (rows written, whether all of it is done)."""
        replayed = 0
        try:
            for generation, path in orphan.segments():
                tables = read_segment(path)
                if tables:
                    replayed += self._write(tables, generation, orphan.writer_id,
                                            skip_existing=True)
                path.unlink()  # a replay stopped here resumes with the next generation
        except Exception as exc:  # the rest stays journaled; what was written is skipped next time
            self._count_write_error()
            log.error("%s: cannot replay the spill journal of %s into %s (%s); "
                      "trying again later", self.noun, orphan.writer_id, self.root_uri,
                      exc.cause if isinstance(exc, PartialWrite) else exc)
            orphan.release(remove=False)
            return replayed, False
        orphan.release(remove=True)
        return replayed, True

    # ------------------------------------------------------------------ subclass

    @property
    def location(self) -> LogLocation:
        """Where the files go; a URI is resolved on first use (in the flush thread)."""
        if self._location is None:
            self._location = LogLocation.resolve(self._root)
        return self._location

    @abstractmethod
    def _to_table(self, items: list[ItemT]) -> pa.Table:
        """Buffered items as one table in the log's schema (in the journal
        thread, or the flush thread without a journal)."""

    @abstractmethod
    def _write(self, tables: list[pa.Table], generation: int, writer_id: str,
               skip_existing: bool = False) -> int:
        """Write the tables of one generation, each partition's rows as one
        :func:`part_name` file (with :meth:`LogLocation.write_parquet`, so
        readers see all of it or none of it); returns the rows written. With
        ``skip_existing`` a partition whose file exists is left alone (a
        replay). Raises :class:`PartialWrite` when some files were written."""

    # --------------------------------------------------------------------- close

    def close(self) -> None:
        """Stop the background threads and write what is left. Idempotent.

        The writer's spill directory is removed when everything was written;
        rows a failing store left stay journaled for the next start."""
        if self._closed.is_set():
            return
        self._closed.set()
        self._wake.set()
        if self._journal_thread is not None:
            self._journal_thread.join(timeout=30)
        self._thread.join(timeout=30)
        if self._replay_due:
            self._replay_orphans()
        self.flush()
        if self._journal is not None:
            with self._write_lock, self._journal_lock:
                try:
                    self._journal.close(remove=not self._retry)
                except OSError as exc:
                    self._spill_failed(exc)

    @property
    def pending(self) -> int:
        """Rows not yet written: buffered, staged, and kept from a failed write."""
        with self._lock:
            return self._unwritten_rows
