"""Optional Sentry reporting (SPEC §6.6): initialised only when ``SENTRY_DSN`` is set.

:func:`capture` is safe to call whether or not Sentry was initialised (the SDK
drops events when no client is bound), so callers never branch on it.
"""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)


def init_sentry(dsn: str) -> bool:
    """Initialise the SDK with the Flask integration; False when ``dsn`` is empty."""
    if not dsn:
        return False
    import sentry_sdk
    from sentry_sdk.integrations.flask import FlaskIntegration

    sentry_sdk.init(dsn=dsn, integrations=[FlaskIntegration()], send_default_pii=False)
    logger.info("sentry enabled")
    return True


def capture(exc: BaseException) -> None:
    """Report ``exc`` to Sentry when enabled; never raises."""
    try:
        import sentry_sdk

        sentry_sdk.capture_exception(exc)
    except Exception:  # reporting must never break a request or a refresh
        logger.debug("sentry capture failed", exc_info=True)
