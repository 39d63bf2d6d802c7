"""The bounded worker pool that scores models too slow for the event loop.

A replica answers HTTP on one asyncio event loop. The folded linear path
scores in microseconds and runs right on it; any other version (a tree
ensemble, a pipeline over a DataFrame, a custom pyfunc) may take
milliseconds, and on the loop it would hold up every other request of the
replica, fast model or not. Those are scored here, on a fixed number of
threads: NumPy, scikit-learn and pandas release the GIL for their heavy
parts, and a model that sleeps on I/O releases it entirely.

**Rows of concurrent requests are scored together.** Each version has at most
one batch in a worker at a time; rows that arrive meanwhile wait in that
version's queue and go, all together (up to ``max_batch_rows``), in its next
batch, as Ray Serve's ``@serve.batch`` with no wait timeout. A single-row
``predict`` of a tree ensemble or a pipeline costs milliseconds of fixed
overhead (DataFrame, validation, thread pools) and eight rows cost about as
much as one, so under load throughput grows with concurrency instead of
threads fighting over the GIL; an idle replica scores a lone request at
once, with no added wait. Requests whose answer needs the model's own output
for exactly their rows (MLflow's protocol, or MLflow ``params``) form
batches of their own.

The pool is bounded twice: ``threads`` batches in flight at once, and at most
``max_pending`` rows waiting for or in a worker. Past that a request is
refused at once (:class:`~serving.kernel.errors.Overloaded`, 503) rather
than queued without end: a client can retry elsewhere, a queue that only
grows cannot recover.
"""

from __future__ import annotations

import asyncio
import functools
from collections import deque
from collections.abc import Callable, Hashable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from models.outputs import ScoredBatch
from serving.kernel.errors import Overloaded

Rows = Sequence[Mapping[str, Any]]
Predict = Callable[[Rows], ScoredBatch]


@dataclass(slots=True)
class _Waiting:
    rows: Rows
    answer: asyncio.Future[ScoredBatch]
    alone: bool  # needs a batch of exactly its rows (the model's raw output)


@dataclass(slots=True)
class _Queue:
    """One version's rows waiting for its next batch."""

    predict: Predict
    waiting: deque[_Waiting] = field(default_factory=deque)
    busy: bool = False


class ModelPool:
    """``threads`` worker threads, one batch per version at a time, and a cap
    on the rows waiting for or in them. Used from the event loop's thread only."""

    def __init__(self, threads: int, max_pending: int, max_batch_rows: int = 256) -> None:
        self.threads = threads
        self.max_pending = max_pending
        self.max_batch_rows = max_batch_rows
        self._executor = ThreadPoolExecutor(max_workers=threads,
                                            thread_name_prefix="rampart-model")
        self._queues: dict[Hashable, _Queue] = {}
        self._ready: deque[Hashable] = deque()  # versions with rows and no batch in flight
        self.in_flight = 0  # batches in workers
        self.pending = 0  # rows waiting or in workers

    async def score(self, key: Hashable, rows: Rows, predict: Predict, *,
                    alone: bool = False) -> ScoredBatch:
        """``rows`` scored by ``predict`` on a worker, in a batch with other
        requests' rows of the same ``key`` unless ``alone``; Overloaded when
        ``len(rows)`` more would pass the cap."""
        if self.pending + len(rows) > self.max_pending:
            raise Overloaded(
                f"{self.pending} rows are waiting for a model worker (limit "
                f"{self.max_pending}); retry shortly")
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = _Queue(predict)
        queue.predict = predict
        answer: asyncio.Future[ScoredBatch] = asyncio.get_running_loop().create_future()
        queue.waiting.append(_Waiting(rows, answer, alone))
        self.pending += len(rows)
        if not queue.busy and key not in self._ready:
            self._ready.append(key)
        self._dispatch()
        return await answer

    def _dispatch(self) -> None:
        loop = asyncio.get_running_loop()
        while self._ready and self.in_flight < self.threads:
            key = self._ready.popleft()
            queue = self._queues[key]
            batch = self._take(queue)
            if not batch:
                continue
            queue.busy = True
            self.in_flight += 1
            rows = [row for waiting in batch for row in waiting.rows]
            work = loop.run_in_executor(self._executor, queue.predict, rows)
            work.add_done_callback(functools.partial(self._finished, key, batch))

    def _take(self, queue: _Queue) -> list[_Waiting]:
        """The next batch: the first waiting request, then as many mergeable
        ones as fit (a request that must be alone always goes alone)."""
        if not queue.waiting:
            return []
        first = queue.waiting.popleft()
        batch, size = [first], len(first.rows)
        if first.alone:
            return batch
        while queue.waiting:
            following = queue.waiting[0]
            if following.alone or size + len(following.rows) > self.max_batch_rows:
                break
            batch.append(queue.waiting.popleft())
            size += len(following.rows)
        return batch

    def _finished(self, key: Hashable, batch: list[_Waiting],
                  done: asyncio.Future[ScoredBatch]) -> None:
        # On the event loop's thread (a done callback of run_in_executor's future).
        self.in_flight -= 1
        self.pending -= sum(len(w.rows) for w in batch)
        queue = self._queues[key]
        queue.busy = False
        error = done.exception()
        scored = None if error is not None else done.result()
        start = 0
        for waiting in batch:
            if waiting.answer.done():  # its request was cancelled
                start += len(waiting.rows)
                continue
            if error is not None:
                waiting.answer.set_exception(error)
            elif len(batch) == 1:
                assert scored is not None
                waiting.answer.set_result(scored)
            else:
                assert scored is not None
                end = start + len(waiting.rows)
                # Merged requests never need the raw output (see ``alone``).
                waiting.answer.set_result(ScoredBatch(scored.rows[start:end], None))
            start += len(waiting.rows)
        if queue.waiting:
            self._ready.append(key)
        self._dispatch()

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
