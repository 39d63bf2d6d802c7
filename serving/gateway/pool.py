"""The bounded worker pool that scores models too slow for the event loop.

A replica answers HTTP on one asyncio event loop. The folded linear path
scores in microseconds and runs right on it; any other version (a tree
ensemble, a pipeline over a DataFrame, a custom pyfunc) may take
milliseconds, and on the loop it would hold up every other request of the
replica, fast model or not. Those are scored here, on a fixed number of
threads: NumPy, scikit-learn and pandas release the GIL for their heavy
parts, and a model that sleeps on I/O releases it entirely.

The pool is bounded twice: ``threads`` workers, and at most ``max_pending``
rows waiting for or in a worker. Past that a request is refused at once
(:class:`~serving.kernel.errors.Overloaded`, 503) rather than queued without
end: a client can retry elsewhere, a queue that only grows cannot recover.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from serving.kernel.errors import Overloaded

T = TypeVar("T")


class ModelPool:
    """``threads`` worker threads and a cap on the rows in flight through them."""

    def __init__(self, threads: int, max_pending: int) -> None:
        self.threads = threads
        self.max_pending = max_pending
        self._executor = ThreadPoolExecutor(max_workers=threads,
                                            thread_name_prefix="rampart-model")
        # Read and written only on the event loop's thread: no lock needed.
        self.pending = 0

    async def run(self, rows: int, work: Callable[[], T]) -> T:
        """``work()`` on a worker; Overloaded when ``rows`` more would pass the cap."""
        if self.pending + rows > self.max_pending:
            raise Overloaded(
                f"{self.pending} rows are waiting for a model worker (limit "
                f"{self.max_pending}); retry shortly")
        self.pending += rows
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, work)
        finally:
            self.pending -= rows

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
