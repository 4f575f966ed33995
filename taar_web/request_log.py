"""Logging (SPEC §6.4): one stdout handler, dockerflow JSON, per-request context.

* :func:`configure_logging` installs, once per process, a stdout handler with the
  mozlog formatter of :mod:`taar.logs` (the jobs' shape too) on the root logger and gives it the
  :class:`RequestContextFilter`; it sets the level of the ``taar*`` loggers.
  Loggers themselves never get per-request filters.
* The request context (request id, route, hashed client id or GUID, locale,
  platform, seed) lives in a :class:`contextvars.ContextVar`, filled by the views
  through :func:`bind` and copied onto every record by the filter.
* :func:`init_app` adds the request hooks: open the context, and write one
  ``request.summary`` record per request. It carries the request's timings
  (``timings``: every markus timer of the request, in ms, via :func:`add_timing`)
  and the fields the views bound (e.g. the recommended ``guids``), so a request
  costs one log line.

Raw telemetry client ids are never logged: only validated (hashed or test) ids
are bound, and paths of unmatched requests are redacted.
"""

from __future__ import annotations

import logging
import random
import re
import sys
import time
from contextvars import ContextVar

import flask

from taar.logs import MozlogFormatter

from . import metrics

LOGGER_NAMES = ("taar", "taar_web", "request.summary")
REQUEST_ID_HEADER = "X-Request-ID"
_MAX_REQUEST_ID = 128
# A telemetry client id is a UUID, with or without dashes (hashed ids are 64 hex: kept).
_UUID_RE = re.compile(
    r"(?<![0-9a-fA-F])(?:[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
    r"|[0-9a-fA-F]{32})(?![0-9a-fA-F])"
)

_request_context: ContextVar[dict | None] = ContextVar("taar_request_context", default=None)
_installed_handler: logging.Handler | None = None
summary_logger = logging.getLogger("request.summary")


class RequestContextFilter(logging.Filter):
    """Copies the current request context onto each record (never overriding its own fields)."""

    def filter(self, record: logging.LogRecord) -> bool:
        context = _request_context.get()
        if context:
            for key, value in context.items():
                if not hasattr(record, key):
                    setattr(record, key, value)
        return True


class _StdoutHandler(logging.StreamHandler):
    """A stream handler that always writes to the *current* ``sys.stdout``.

    Test runners swap ``sys.stdout``; binding the stream at emit time keeps the
    handler valid for the life of the process.
    """

    def emit(self, record):
        self.stream = sys.stdout
        super().emit(record)


def configure_logging(level: str = "INFO") -> logging.Handler:
    """Install the JSON stdout handler once and set the ``taar*`` logger levels."""
    global _installed_handler
    if _installed_handler is None:
        handler = _StdoutHandler(sys.stdout)
        handler.setFormatter(MozlogFormatter())
        handler.addFilter(RequestContextFilter())
        _installed_handler = handler
    root = logging.getLogger()
    if _installed_handler not in root.handlers:  # someone reset the root handlers since: put ours back once
        root.addHandler(_installed_handler)
    for name in LOGGER_NAMES:
        logging.getLogger(name).setLevel(level)
    return _installed_handler


def bind(**fields) -> None:
    """Add fields to the current request's log context (no-op outside a request)."""
    context = _request_context.get()
    if context is not None:
        context.update(fields)


def current_request_id() -> str | None:
    """The request id of the current request's log context (None outside a request)."""
    context = _request_context.get()
    return context.get("rid") if context is not None else None


def add_timing(name: str, ms: float) -> None:
    """Record a timing (ms) of the current request for its summary (no-op outside a request)."""
    context = _request_context.get()
    if context is not None:
        timings = context.get("timings")
        if timings is None:
            timings = context["timings"] = {}
        timings[name] = round(ms, 3)


def redact_path(path: str) -> str:
    """The path with anything shaped like a raw client id (a UUID) replaced."""
    return _UUID_RE.sub("<redacted>", path)[:512]


def new_request_id() -> str:
    """32 random hex digits, like ``uuid4().hex`` without its ``getrandom`` syscall per request.

    A request id has to be unique, not unpredictable, so the process's Mersenne
    Twister serves; the ``random`` module reseeds it in every forked child, so
    two gunicorn workers never share a sequence.
    """
    return f"{random.getrandbits(128):032x}"


def open_request(request_id: str | None, route: str | None) -> tuple:
    """Open a request's log context and metrics batch; pass the result to :func:`close_request`.

    ``request_id`` is the caller's ``X-Request-ID`` (a new id when absent or blank);
    ``route`` the matched URL rule. The Flask hooks and the fast path
    (:mod:`taar_web.fastpath`) both go through here.
    """
    rid = (request_id or "").strip()[:_MAX_REQUEST_ID] or new_request_id()
    return _request_context.set({"rid": rid, "route": route}), metrics.begin_request(), time.perf_counter()


def write_summary(method: str, path: str, status: int, started: float | None) -> None:
    """The request's one ``request.summary`` record (the bound context is added by the filter)."""
    summary_logger.info("", extra={
        "method": method, "path": path, "status": status,
        "t": round((time.perf_counter() - started) * 1000, 3) if started is not None else None,
    })


def close_request(opened: tuple) -> None:
    """Publish the request's metrics and drop its log context."""
    log_token, metrics_token, _ = opened
    metrics.end_request(metrics_token)
    _request_context.reset(log_token)


def _open_context():
    rule = flask.request.url_rule
    flask.g.taar_request = open_request(flask.request.headers.get(REQUEST_ID_HEADER),
                                        rule.rule if rule is not None else None)


def _summarise(response):
    opened = flask.g.get("taar_request")
    rule = flask.request.url_rule
    write_summary(flask.request.method, rule.rule if rule is not None else redact_path(flask.request.path),
                  response.status_code, opened[2] if opened is not None else None)
    return response


def _close_context(exc):
    opened = flask.g.pop("taar_request", None)
    if opened is not None:
        close_request(opened)


def init_app(app: flask.Flask) -> None:
    """Register the request-context and summary hooks on ``app``."""
    app.before_request(_open_context)
    app.after_request(_summarise)
    app.teardown_request(_close_context)
