"""A local write-ahead journal for the log writers: rows a client got an answer
for survive a SIGKILL of the process that buffered them.

Pure file I/O on local disk (no Ray, no object store). Each writer owns one
directory under the spill root::

    <spill_root>/<writer_id>/lock              flock-ed (LOCK_EX) for the writer's life
    <spill_root>/<writer_id>/log               the log these rows belong to (path or URI)
    <spill_root>/<writer_id>/<generation>.seg  the rows of one future Parquet chunk

The kernel drops a ``flock`` when its process dies, whatever killed it, so a
directory whose lock can be taken belongs to a dead writer, and taking the
lock is also what keeps two replayers off one directory. A writer creates its
directory under a hidden name, locks it, and only then renames it into place:
a replayer never sees an unlocked directory of a live writer. A replayer only
takes over journals of its own log: two gateways that share a spill root but
not a log never write each other's rows.

A segment is a run of frames, each ``magic | length | crc32 | payload`` where
the payload is one Arrow IPC stream (one table). A process killed mid-write
leaves a torn last frame; :func:`read_frames` stops at the first frame whose
length or checksum does not hold, so replay reads exactly the frames that were
completely written.

A generation is a unit of exactly-once replay: the writer names every Parquet
file of a chunk after the chunk's generation, so a replayer writes only the
partitions whose file does not exist yet (see
:class:`telemetry.batched_writer.BatchedWriter`).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import struct
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from telemetry.storage import PRIVATE_FILE_MODE, make_private_dirs

log = logging.getLogger(__name__)

MAGIC = b"RSJ1"
# magic, payload length, crc32 of the payload; little-endian, no padding.
HEADER = struct.Struct("<4sII")
SEGMENT_SUFFIX = ".seg"
LOCK_NAME = "lock"
LOG_NAME = "log"
# A directory a writer is still setting up (it renames it into place once locked).
NEW_PREFIX = ".new-"
# A half-made directory older than this belongs to a writer killed while setting up.
STALE_SETUP_S = 60.0

__all__ = [
    "OrphanJournal",
    "SpillJournal",
    "claim_orphans",
    "decode_frame_payload",
    "encode_frame",
    "frame_parts",
    "read_frames",
    "read_segment",
]


def frame_parts(table: pa.Table) -> list[bytes | pa.Buffer]:
    """One frame holding ``table``: its header and the Arrow IPC stream bytes,
    as buffers to write one after the other (the payload is not copied)."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    payload = sink.getvalue()
    return [HEADER.pack(MAGIC, payload.size, zlib.crc32(payload)), payload]


def encode_frame(table: pa.Table) -> bytes:
    """One frame holding ``table``, as bytes (see :func:`frame_parts`)."""
    return b"".join(memoryview(part) for part in frame_parts(table))


def decode_frame_payload(payload: bytes) -> pa.Table:
    """The table one frame's payload holds."""
    with pa.ipc.open_stream(pa.py_buffer(payload)) as reader:
        return reader.read_all()


def read_frames(data: bytes) -> tuple[list[pa.Table], int]:
    """The tables of every whole frame at the start of ``data``, and how many
    bytes they span; a torn or corrupt frame ends the reading (what follows it
    cannot be trusted to start on a frame boundary)."""
    tables: list[pa.Table] = []
    offset = 0
    view = memoryview(data)
    while offset + HEADER.size <= len(data):
        magic, length, crc = HEADER.unpack_from(data, offset)
        end = offset + HEADER.size + length
        if magic != MAGIC or end > len(data):
            break
        payload = bytes(view[offset + HEADER.size:end])
        if zlib.crc32(payload) != crc:
            break
        try:
            tables.append(decode_frame_payload(payload))
        except (pa.ArrowException, ValueError):  # a checksum collision on garbage
            break
        offset = end
    return tables, offset


def read_segment(path: Path) -> list[pa.Table]:
    """The tables of a segment file's whole frames (see :func:`read_frames`)."""
    data = path.read_bytes()
    tables, used = read_frames(data)
    if used != len(data):
        log.warning("spill journal: ignoring %d bytes of a torn frame at the end of %s",
                    len(data) - used, path)
    return tables


def _write_all(fd: int, parts: list[bytes | pa.Buffer]) -> int:
    """Write every buffer of ``parts`` in order (one ``writev`` when the disk
    takes it all); returns the bytes written."""
    views = [memoryview(part) for part in parts]
    total = sum(view.nbytes for view in views)
    while views:
        written = os.writev(fd, views)
        while views and written >= views[0].nbytes:
            written -= views.pop(0).nbytes
        if views and written:
            views[0] = views[0][written:]
    return total


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _segment_path(directory: Path, generation: int) -> Path:
    return directory / f"{generation:08d}{SEGMENT_SUFFIX}"


def _segments(directory: Path) -> list[tuple[int, Path]]:
    """(generation, path) of every segment in ``directory``, oldest first."""
    found = []
    for path in directory.iterdir():
        stem = path.name.removesuffix(SEGMENT_SUFFIX)
        if path.name.endswith(SEGMENT_SUFFIX) and stem.isdigit():
            found.append((int(stem), path))
    return sorted(found)


def _remove_dir(directory: Path) -> None:
    """Delete the segments, the lock file and the directory (the caller holds the lock)."""
    for _, path in _segments(directory):
        path.unlink(missing_ok=True)
    (directory / LOG_NAME).unlink(missing_ok=True)
    (directory / LOCK_NAME).unlink(missing_ok=True)
    with contextlib.suppress(FileNotFoundError):
        directory.rmdir()


class SpillJournal:
    """One live writer's journal: appends frames to the segment of the current
    generation, fsynced (when ``fsync``), and deletes segments once their rows
    are in the log.

    A segment is opened for each append and closed after it: between ticks the
    journal holds no file open for writing (only its lock, read-only), so a
    filesystem can be remounted read-only under a running writer.

    Not thread-safe: the writer calls it under its journal lock. Every method
    that touches the disk may raise :class:`OSError`; the writer counts it and
    goes on serving from memory.
    """

    def __init__(self, directory: Path, lock_fd: int, fsync: bool) -> None:
        self.directory = directory
        self.fsync = fsync
        self._lock_fd: int | None = lock_fd
        self._generation: int | None = None
        # Bytes of the current segment known to be whole frames: after a failed
        # write the file is cut back to here before anything else is appended,
        # so a torn frame never sits in front of good ones.
        self._good = 0
        self._dirty = False
        # Tables of the current generation not journaled yet (a failed write):
        # written first by the next append, so a disk that recovers catches up.
        self._unwritten: list[pa.Table] = []

    @classmethod
    def open(cls, root: Path, writer_id: str, log_id: str, fsync: bool = True
             ) -> SpillJournal:
        """Create and lock ``<root>/<writer_id>/`` for the rows of the log
        ``log_id`` (its absolute path or URI); raises :class:`OSError` when the
        spill root cannot be written."""
        make_private_dirs(root)
        final = root / writer_id
        staging = root / f"{NEW_PREFIX}{writer_id}"
        make_private_dirs(staging)
        # flock needs no write access: a read-only descriptor keeps the lock.
        fd = os.open(staging / LOCK_NAME, os.O_RDONLY | os.O_CREAT, PRIVATE_FILE_MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            log_fd = os.open(staging / LOG_NAME, os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
                             PRIVATE_FILE_MODE)
            try:
                _write_all(log_fd, [log_id.encode()])
                if fsync:
                    os.fsync(log_fd)
            finally:
                os.close(log_fd)
            os.rename(staging, final)
            if fsync:
                _fsync_dir(root)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                _remove_dir(staging)
            raise
        return cls(final, fd, fsync)

    def append(self, generation: int, table: pa.Table) -> None:
        """Journal ``table`` as part of ``generation`` (and whatever an earlier
        failed append of that generation left); durable on return when
        ``fsync``. Raises :class:`OSError`; the table is then kept to be
        journaled by the next append of the same generation."""
        if generation != self._generation:
            self.seal()
            self._generation = generation
        self._unwritten.append(table)
        path = _segment_path(self.directory, generation)
        fresh = self._good == 0  # nothing of this generation written yet
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, PRIVATE_FILE_MODE)
        try:
            if self._dirty:
                os.ftruncate(fd, self._good)
                self._dirty = False
            parts = [part for t in self._unwritten for part in frame_parts(t)]
            try:
                written = _write_all(fd, parts)
                if self.fsync:
                    os.fsync(fd)
            except BaseException:
                self._dirty = True
                raise
        finally:
            os.close(fd)
        if fresh and self.fsync:
            _fsync_dir(self.directory)  # the new name survives a power cut too
        self._good += written
        self._unwritten.clear()

    def seal(self) -> None:
        """End the current generation: its segment is complete (or, after failed
        appends, as complete as the disk allowed; the rows it misses are in the
        writer's memory, on their way to the log)."""
        self._unwritten.clear()
        self._generation = None
        self._good = 0
        self._dirty = False

    def discard(self, generation: int) -> None:
        """Delete a sealed generation's segment: its rows are in the log (or given up)."""
        _segment_path(self.directory, generation).unlink(missing_ok=True)

    def close(self, remove: bool) -> None:
        """Seal, and with ``remove`` delete the directory (only when nothing in it
        is still needed); then release the lock. Idempotent."""
        self.seal()
        if self._lock_fd is None:
            return
        try:
            if remove:
                _remove_dir(self.directory)
        finally:
            os.close(self._lock_fd)
            self._lock_fd = None


@dataclass
class OrphanJournal:
    """A dead writer's journal, locked by the replayer that claimed it."""

    writer_id: str
    directory: Path
    lock_fd: int

    def segments(self) -> list[tuple[int, Path]]:
        """(generation, path) of its segments, oldest first."""
        return _segments(self.directory)

    def release(self, remove: bool) -> None:
        """Delete the directory (with ``remove``: every row is in the log) and
        let go of the lock; without ``remove`` a later start tries again."""
        try:
            if remove:
                _remove_dir(self.directory)
        finally:
            os.close(self.lock_fd)


def _try_lock(directory: Path) -> int | None:
    """The lock of ``directory`` taken without waiting, or None when a live
    writer (or another replayer) holds it, or it is gone."""
    try:
        fd = os.open(directory / LOCK_NAME, os.O_RDONLY)
    except (FileNotFoundError, NotADirectoryError):
        return None  # being removed by its owner, or not a journal
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return None
        raise
    if not (directory / LOCK_NAME).exists():
        # Its last holder removed the directory between our open and our lock.
        os.close(fd)
        return None
    return fd


def claim_orphans(root: Path, own_writer_id: str, log_id: str) -> Iterator[OrphanJournal]:
    """Each dead writer's journal of the log ``log_id`` under ``root``, locked
    for the caller, who must :meth:`~OrphanJournal.release` it. A directory
    whose writer is alive, that another replayer holds, or that belongs to
    another log, is passed over. Half-made directories of dead writers (killed
    while setting up) are removed on the way."""
    try:
        entries = sorted(root.iterdir())
    except (FileNotFoundError, NotADirectoryError):  # no spill root: no journals
        return
    for directory in entries:
        if not directory.is_dir() or directory.name == own_writer_id:
            continue
        half_made = directory.name.startswith(NEW_PREFIX)
        if half_made and _age_s(directory) < STALE_SETUP_S:
            continue  # a writer between creating its lock file and locking it
        if not half_made and _log_of(directory) != log_id:
            continue
        fd = _try_lock(directory)
        if fd is None:
            continue
        if half_made:
            # Never renamed into place, so it never journaled a row.
            try:
                _remove_dir(directory)
            finally:
                os.close(fd)
            continue
        yield OrphanJournal(directory.name, directory, fd)


def _log_of(directory: Path) -> str | None:
    try:
        return (directory / LOG_NAME).read_text()
    except (FileNotFoundError, NotADirectoryError):
        return None


def _age_s(path: Path) -> float:
    try:
        return time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return 0.0
