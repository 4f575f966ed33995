"""The service's profile reader: one profile per request, with a deadline (SPEC §3.7).

Read failures are counted on every request but logged (and sent to Sentry) at
most once per :data:`LOG_INTERVAL_SECONDS` per process, with the number of
failures since, so a store outage cannot flood the log with tracebacks.
"""

from __future__ import annotations

import logging
import time

from taar.logs import LOG_INTERVAL_SECONDS, RateLimitedLog
from taar.profile import decode_payload, normalise_profile
from taar.storage import ProfileTimeout

from . import sentry

logger = logging.getLogger(__name__)


class ProfileFetcher:
    """Reads and normalises one profile with a deadline (SPEC §3.7).

    Outcomes: a normalised profile, or ``None`` for not found, timeout or any
    error (each counted). Never raises. ``metrics`` is markus-like
    (``incr(name, value=1, tags=None)``) and must not raise either, as the service's
    :class:`taar_web.metrics.Metrics` never does.
    """

    def __init__(self, store, timeout_s: float = 0.15, metrics=None, *, log_interval_s: float = LOG_INTERVAL_SECONDS):
        self.store = store
        self.timeout_s = timeout_s
        self.metrics = metrics
        self._errors = RateLimitedLog(log_interval_s)
        if metrics is not None and hasattr(store, "on_call"):
            # a store that groups reads into calls (Bigtable) reports each call: reads per call is
            # the count of profile_fetch timings over profile_read_call (the metrics never raise)
            store.on_call = self._on_call

    def _on_call(self) -> None:
        self.metrics.incr("profile_read_call")

    def _incr(self, name, tags=None):
        if self.metrics is not None:
            self.metrics.incr(name, tags=tags)

    def warm(self, timeout_s: float) -> bool:
        """Connect the store in this process before the first request (gunicorn ``post_fork``)."""
        warm = getattr(self.store, "warm", None)
        try:
            return bool(warm(timeout_s) if warm is not None else self.store.ping(timeout_s))
        except Exception as exc:  # a cold store is retried by the requests themselves
            logger.warning("profile store warm-up failed: %s: %s", type(exc).__name__, exc)
            return False

    def _report(self, message: str, exc: BaseException | None) -> None:
        suppressed = self._errors.allow()
        if suppressed is None:
            return
        # no traceback (it would carry the row key in locals); the type and text are enough
        logger.warning("%s (%d more since the last report)", message, suppressed,
                       extra={"error": f"{type(exc).__name__}: {exc}" if exc is not None else None})
        if exc is not None:
            sentry.capture(exc)

    def get(self, hashed_id: str) -> dict | None:
        started = time.monotonic()
        try:
            data = self.store.get(hashed_id, self.timeout_s)
        except ProfileTimeout:
            self._incr("profile_timeout")
            return None
        except Exception as exc:
            self._incr("profile_error")
            self._report("profile read failed", exc)
            return None
        finally:
            if self.metrics is not None and hasattr(self.metrics, "timing"):
                self.metrics.timing("profile_fetch", (time.monotonic() - started) * 1000)
        if data is None:
            self._incr("profile_not_found")
            return None
        try:
            payload = decode_payload(data)
        except ValueError:
            self._incr("profile_error")
            self._report("undecodable profile payload", None)
            return None
        return normalise_profile(
            payload, client_id=hashed_id,
            on_default=lambda field: self._incr("profile_defaulted_field", tags=[f"field:{field}"]),
        )
