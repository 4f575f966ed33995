"""The per-worker refresh thread (SPEC §6.2-6.3).

Every ``TAAR_MODEL_REFRESH_SECONDS`` (±10 % jitter, so workers of a fleet do not
hit the store in step) it runs :meth:`ModelRegistry.check_once`. While a
required artifact has never loaded, a group waits for its members' dates to
agree, or a transient failure waits for its retry, it comes back after
``min(60 s, interval)`` (or sooner, when the retry is due sooner) instead.

Under gunicorn the thread is started by the ``post_fork`` hook (threads do not
survive ``fork``); outside gunicorn ``create_app(start_refresher=True)`` starts it.
A thread started with ``check_now=True`` (every gunicorn worker: the master may
have loaded its models long ago, before a respawn, HUP or ``max_requests``
restart) checks the store at once. ``start`` reseeds the jitter from
``os.urandom`` so that forked workers do not share one jitter sequence.
"""

from __future__ import annotations

import logging
import os
import random
import threading

from . import sentry

logger = logging.getLogger(__name__)

RETRY_SECONDS = 60.0
JITTER = 0.10


class Refresher:
    """A daemon thread calling ``registry.check_once()`` on a jittered interval."""

    def __init__(self, registry, interval_s: float, *, rng: random.Random | None = None):
        self.registry = registry
        self.interval_s = interval_s
        self._rng = rng or random.Random()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def next_delay(self) -> float:
        """Seconds until the next check."""
        if self.registry.needs_retry:
            delay = min(RETRY_SECONDS, self.interval_s)
            due = self.registry.seconds_to_next_retry()
            return delay if due is None else max(0.05, min(delay, due))
        return self.interval_s * self._rng.uniform(1.0 - JITTER, 1.0 + JITTER)

    def check_once(self) -> dict[str, str]:
        """One refresh pass; never raises (a failed pass is logged and retried later)."""
        try:
            return self.registry.check_once()
        except Exception as exc:
            logger.exception("model refresh pass failed")
            sentry.capture(exc)
            return {}

    def _run(self, check_now: bool) -> None:
        if check_now:
            self.check_once()
        while not self._stop.wait(self.next_delay()):
            self.check_once()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def reseed(self) -> None:
        """A fresh jitter sequence (a forked child inherits its parent's RNG state)."""
        self._rng.seed(os.urandom(16))

    def start(self, *, check_now: bool = False) -> Refresher:
        """Start the thread (idempotent); ``check_now`` runs a pass at once instead of after a delay."""
        if not self.running:
            self._stop.clear()
            self.reseed()
            self._thread = threading.Thread(target=self._run, args=(check_now,), name="taar-model-refresher",
                                            daemon=True)
            self._thread.start()
            logger.info("model refresher started", extra={"interval_s": self.interval_s})
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        """Ask the thread to stop and wait for it."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None
