"""Optional Sentry reporting (SPEC §6.6): initialised only when ``SENTRY_DSN`` is set.

:func:`capture` is safe to call whether or not Sentry was initialised (the SDK
drops events when no client is bound), so callers never branch on it.

Profile data never leaves the process: events carry no local variables, no
request body, cookies or query string, and :func:`scrub_event` (``before_send``)
drops every profile field (and the client id) from extras, contexts, tags and
breadcrumbs.
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

    sentry_sdk.init(dsn=dsn, integrations=[FlaskIntegration()], send_default_pii=False,
                    include_local_variables=False, max_request_body_size="never", before_send=scrub_event,
                    before_breadcrumb=_scrub_breadcrumb)
    logger.info("sentry enabled")
    return True


#: Keys that hold (or identify) profile data: never sent.
PROFILE_KEYS = frozenset({
    "client_id", "profile", "payload", "installed_addons", "disabled_addons_ids", "active_addons",
    "geo_city", "locale", "os", "subsession_length", "bookmark_count", "tab_open_count", "total_uri",
    "unique_tlds", "platform",
})
REDACTED = "[removed]"


def _scrub(value):
    if isinstance(value, dict):
        return {k: (REDACTED if k in PROFILE_KEYS else _scrub(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrub(v) for v in value]
    return value


def _scrub_breadcrumb(crumb, hint=None):
    if isinstance(crumb, dict) and "data" in crumb:
        crumb = {**crumb, "data": _scrub(crumb["data"])}
    return crumb


def scrub_event(event, hint=None):
    """``before_send``: the event without local variables, request payloads or profile fields."""
    for key in ("extra", "contexts", "tags", "user"):
        if key in event:
            event[key] = _scrub(event[key])
    request = event.get("request")
    if isinstance(request, dict):
        for key in ("data", "cookies", "query_string", "env"):
            request.pop(key, None)
    for exception in (event.get("exception") or {}).get("values") or []:
        for frame in (exception.get("stacktrace") or {}).get("frames") or []:
            frame.pop("vars", None)
    crumbs = event.get("breadcrumbs")
    if isinstance(crumbs, dict) and isinstance(crumbs.get("values"), list):
        crumbs["values"] = [_scrub_breadcrumb(c) for c in crumbs["values"]]
    return event


def capture(exc: BaseException, **tags: str) -> None:
    """Report ``exc`` to Sentry when enabled, with ``tags`` on the event; never raises."""
    try:
        import sentry_sdk

        if tags:
            sentry_sdk.capture_exception(exc, tags=tags)
        else:
            sentry_sdk.capture_exception(exc)
    except Exception:  # reporting must never break a request or a refresh
        logger.debug("sentry capture failed", exc_info=True)
