"""Bounded thread-pool mapping and progress logging for the I/O-bound container jobs.

The AMO crawl (thousands of HTTP requests) and the profile loader (thousands of
mutation batches) both need the same thing: run a function over a long, lazily
produced sequence with at most ``workers`` calls at a time, without queueing the
whole sequence up front, and stop at the first failure instead of finishing the
rest. :func:`bounded_map` does that; :class:`Progress` logs how far a long run
has got at a bounded rate.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator

logger = logging.getLogger(__name__)


def bounded_map(fn: Callable, items: Iterable, workers: int, in_flight: int | None = None) -> Iterator:
    """Yield ``fn(item)`` for every item, in completion order, using ``workers`` threads.

    At most ``in_flight`` (default ``2 * workers``) calls are submitted and not yet
    consumed, so ``items`` may be a long generator. The first exception raised by
    ``fn`` cancels every call not yet started and is re-raised once the running
    calls have returned.
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    limit = max(workers, in_flight or 2 * workers)
    iterator = iter(items)
    pool = cf.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="taar-io")
    pending: set[cf.Future] = set()
    try:
        exhausted = False
        while True:
            while not exhausted and len(pending) < limit:
                try:
                    item = next(iterator)
                except StopIteration:
                    exhausted = True
                    break
                pending.add(pool.submit(fn, item))
            if not pending:
                return
            done, pending = cf.wait(pending, return_when=cf.FIRST_COMPLETED)
            for future in done:
                yield future.result()
    finally:
        for future in pending:
            future.cancel()
        pool.shutdown(wait=True, cancel_futures=True)


class Progress:
    """Thread-safe counter that logs ``label: done/total`` at most every ``interval_s`` seconds."""

    def __init__(self, label: str, total: int | None, interval_s: float = 30.0, clock=time.monotonic):
        self.label = label
        self.total = total
        self.interval_s = interval_s
        self.done = 0
        self._clock = clock
        self._started = clock()
        self._last_log = self._started
        self._lock = threading.Lock()

    def advance(self, n: int = 1) -> None:
        """Count ``n`` more units and log if the interval has passed."""
        with self._lock:
            self.done += n
            now = self._clock()
            if now - self._last_log < self.interval_s:
                return
            self._last_log = now
            done, elapsed = self.done, now - self._started
        self._log(done, elapsed)

    def finish(self) -> float:
        """Log the final count; return the elapsed seconds."""
        elapsed = self._clock() - self._started
        self._log(self.done, elapsed, final=True)
        return elapsed

    def _log(self, done: int, elapsed: float, final: bool = False) -> None:
        rate = done / elapsed if elapsed > 0 else 0.0
        fields = {"progress": self.label, "done": done, "total": self.total, "rate_per_s": round(rate, 1),
                  "elapsed_s": round(elapsed, 1)}
        if self.total:
            fields["percent"] = round(100.0 * done / self.total, 1)
            if rate > 0 and not final:
                fields["eta_s"] = round((self.total - done) / rate, 1)
        total = f"/{self.total}" if self.total is not None else ""
        logger.info("%s: %d%s %s (%.1f/s)", self.label, done, total, "done" if final else "so far", rate,
                    extra={"fields": fields})
