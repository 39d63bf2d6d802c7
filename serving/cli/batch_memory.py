"""The allocator policy of a batch command (``rampart analyze``): freed memory is
kept in the process for the next allocation instead of being handed back to
the kernel.

An analysis of millions of rows makes and drops dozens of arrays of tens of
megabytes. glibc serves each allocation above its mmap threshold (which
adapts, up to 32 MB) with a fresh mapping and unmaps it when freed, so the
next array of that size faults every page in again: on this project's
reference machine that was 1.5-3 s of kernel time in a 10 M-row analysis,
as much as the reading. With the threshold above any array's size and
trimming off, freed blocks are reused from the heap. The command's peak memory is unchanged (the
heap holds what the mappings held at their peak); it is simply not returned
until the process ends, which for a one-shot command is moments later.

Arrow allocates through its own pool, mimalloc by default, which hands freed
pages back to the kernel within milliseconds; the same command switches Arrow
to its jemalloc pool with dirty pages never purged (or, without jemalloc, to
the system allocator, which the glibc settings above then govern). Measured
on the 10 M-row benchmark: 2.5 s a warm run against 2.8-3.3 s with mimalloc.

numpy asks the kernel for transparent huge pages on large arrays (madvise).
Where the kernel compacts memory synchronously to make them (this project's
reference machine: ``defrag`` is ``madvise``), a run that follows other work
spent seconds in compaction: a fresh 10 M-row analysis took 7.1 s with huge
pages and 4.8 s without, a warm one 2.8 against 2.7 s. The command asks for
ordinary pages.

Ending is part of the same policy (:func:`end_process`): once the command has
written everything, the interpreter's teardown would free its objects one by
one, finalize every module (numba's compiler among them) and join Arrow's
threads, 0.3-0.4 s after a 10 M-row analysis for nothing the kernel does not
do anyway when the process ends.

Process-wide by nature, so only a command that is the whole process (the CLI)
calls :func:`keep_freed_memory` and :func:`end_process`, never a library
function or a server.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import os
import sys
from typing import NoReturn

# mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# Above any one array of a 10 M-row analysis (80 MB a column); a glibc that
# refuses so large a value keeps its own.
_MMAP_THRESHOLD = 1 << 30
_NEVER_TRIM = 2**31 - 1


def keep_freed_memory() -> bool:
    """Keep freed memory in the process: Arrow's pool (:func:`_keep_arrow_pages`)
    and glibc's heap (:func:`_keep_heap`); and numpy's arrays on ordinary
    pages. False where glibc refused."""
    _keep_arrow_pages()
    _ordinary_numpy_pages()
    return _keep_heap()


def _ordinary_numpy_pages() -> None:
    from numpy._core import multiarray

    # numpy's switch for its madvise(MADV_HUGEPAGE) (NUMPY_MADVISE_HUGEPAGE=0
    # at start does the same); absent from a numpy without it
    switch = getattr(multiarray, "_set_madvise_hugepage", None)
    if switch is not None:
        switch(False)


def _keep_arrow_pages() -> None:
    import pyarrow as pa

    try:
        pool = pa.jemalloc_memory_pool()
        pa.jemalloc_set_decay_ms(-1)  # -1: dirty pages are never purged
    except NotImplementedError:  # a pyarrow built without jemalloc
        pool = pa.system_memory_pool()
    pa.set_memory_pool(pool)


def _keep_heap() -> bool:
    """Raise glibc's mmap threshold above any array's size and stop trimming
    the heap; False where that was refused (or the C library has no mallopt)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)) and bool(
        mallopt(_M_TRIM_THRESHOLD, _NEVER_TRIM))


def end_process(code: int) -> NoReturn:
    """End the process with ``code`` once the logs and the standard streams are
    flushed, without the interpreter's teardown. Files the command wrote are
    closed by then (they are written whole, in ``with`` blocks); nothing else
    is left to run."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        # a closed pipe or stream: nothing left to save
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(code)
