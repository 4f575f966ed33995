"""The service's profile reader: one profile per request, with a deadline (SPEC §3.7)."""

from __future__ import annotations

import logging
import time

from taar.profile import decode_payload, normalise_profile
from taar.storage import ProfileTimeout

logger = logging.getLogger(__name__)


class ProfileFetcher:
    """Reads and normalises one profile with a deadline (SPEC §3.7).

    Outcomes: a normalised profile, or ``None`` for not found, timeout or any
    error (each counted). Never raises. ``metrics`` is markus-like
    (``incr(name, value=1, tags=None)``).
    """

    def __init__(self, store, timeout_s: float = 0.15, metrics=None):
        self.store = store
        self.timeout_s = timeout_s
        self.metrics = metrics

    def _incr(self, name, tags=None):
        if self.metrics is not None:
            self.metrics.incr(name, tags=tags)

    def get(self, hashed_id: str) -> dict | None:
        started = time.monotonic()
        try:
            data = self.store.get(hashed_id, self.timeout_s)
        except ProfileTimeout:
            self._incr("profile_timeout")
            return None
        except Exception:
            self._incr("profile_error")
            logger.warning("profile read failed", exc_info=True)
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
            logger.warning("undecodable profile payload")
            return None
        return normalise_profile(
            payload, client_id=hashed_id,
            on_default=lambda field: self._incr("profile_defaulted_field", tags=[f"field:{field}"]),
        )
