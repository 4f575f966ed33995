"""Input validation and JSON error rendering: every rule of SPEC §4.3, §4.6, §4.7 in one place.

Parsers raise :class:`ApiError`; the handlers registered by
:func:`register_error_handlers` render it (and werkzeug's 404/405/308) as
``{"results": <empty>, "error": "<reason>"}`` with ``Cache-Control: no-store``,
counting every 400 in ``invalid_request`` (tags ``route``, ``reason``). Views
stay straight-line: they call the parsers and never build error responses.
"""

from __future__ import annotations

import hmac
import json
import logging
import math
import re
from dataclasses import dataclass

import flask
from werkzeug.exceptions import HTTPException
from werkzeug.routing import RequestRedirect

from taar.hashing import is_test_id
from taar.recommenders.guid_based import DEFAULT_MODE as DEFAULT_NORMALIZE
from taar.recommenders.guid_based import MODES as NORMALIZE_MODES
from taar.recommenders.locale import LOCALE_PATTERN

from . import services

logger = logging.getLogger(__name__)

MAX_CLIENT_ID_CHARS = 128
MAX_GUID_CHARS = 255
_HEX64 = re.compile(r"[0-9a-fA-F]{64}")
_TRUE_FLAGS = ("1", "true")
# C0 controls, DEL, C1 controls, and surrogates (only lone ones survive JSON/URL decoding)
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


class ApiError(Exception):
    """A caller's mistake: rendered as ``{"results": results, "error": message}``."""

    def __init__(self, status: int, message: str, *, reason: str | None = None, results=None, headers=None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.reason = reason or re.sub(r"[^a-z0-9]+", "_", message.lower()).strip("_")
        self.results = [] if results is None else results
        self.headers = headers or {}


@dataclass(frozen=True)
class ClientId:
    """A validated client id: the lookup key and whether it is a test id (SPEC §5.7.1)."""

    value: str
    is_test: bool


def parse_client_id(raw: str, *, results=None) -> ClientId:
    """Validate a hashed client id (64 hex, lowercased) or a test id; else 400."""
    if len(raw) <= MAX_CLIENT_ID_CHARS:
        if _HEX64.fullmatch(raw):
            return ClientId(raw.lower(), is_test_id(raw))
        if is_test_id(raw):
            return ClientId(raw, True)
    raise ApiError(400, "invalid client id", results=results)


def parse_locale(raw: str | None) -> tuple[str | None, bool]:
    """``(locale, rejected)``: a well-formed locale, or None (``rejected`` when malformed)."""
    if raw is None or raw == "":
        return None, False
    if LOCALE_PATTERN.fullmatch(raw):
        return raw, False
    return None, True


def parse_flag(raw: str | None) -> bool:
    """``explain``-style flags: ``1`` or ``true`` enable, anything else disables."""
    return raw in _TRUE_FLAGS


def printable_text(value: str) -> bool:
    """No control characters (C0, DEL, C1) and no lone surrogates: text that can be logged and encoded."""
    return not _UNPRINTABLE.search(value)


def parse_guid(raw: str, *, results=None, what: str = "guid") -> str:
    """A GUID path segment: 1-255 printable characters."""
    if not 1 <= len(raw) <= MAX_GUID_CHARS or not printable_text(raw):
        raise ApiError(400, f"invalid {what}", results=results)
    return raw


def parse_normalize(raw: str | None) -> str:
    """TAARlite ``normalize``: one of the five modes; absent or empty means the default."""
    if raw is None or raw == "":
        return DEFAULT_NORMALIZE
    if raw not in NORMALIZE_MODES:
        raise ApiError(400, "unknown normalize mode")
    return raw


def check_bearer(expected: str | None, public: bool = False) -> None:
    """Require ``Authorization: Bearer <expected>`` (constant time); fail closed (SPEC §4.6).

    Without a configured token every request is a 401, unless ``public``
    (``TAAR_CLIENT_HAS_ADDON_PUBLIC=true``) opens the route explicitly.
    """
    if not expected:
        if public:
            return
        raise ApiError(401, "unauthorized", results=False, headers={"WWW-Authenticate": "Bearer"})
    header = flask.request.headers.get("Authorization", "")
    scheme, _, supplied = header.partition(" ")
    ok = scheme.lower() == "bearer" and hmac.compare_digest(supplied.strip().encode(), expected.encode())
    if not ok:
        raise ApiError(401, "unauthorized", results=False, headers={"WWW-Authenticate": "Bearer"})


# --------------------------------------------------------------------------- POST body


#: WSGI environ flag: close the connection after this response (see :func:`close_connection_after`).
CLOSE_CONNECTION = "taar.close_connection"


def _too_large() -> ApiError:
    # The rest of the body is never read: the connection is closed after the 400 instead
    # of draining up to the declared length (a client could declare gigabytes).
    flask.request.environ[CLOSE_CONNECTION] = True
    return ApiError(400, "request body too large")


def read_body(max_bytes: int) -> bytes:
    """The raw request body, refusing (before reading it all) anything over ``max_bytes``."""
    declared = flask.request.content_length
    if declared is not None and declared > max_bytes:
        raise _too_large()
    data = flask.request.stream.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise _too_large()
    return data


def close_connection_after(wsgi_app):
    """WSGI middleware: a response flagged :data:`CLOSE_CONNECTION` closes its connection.

    gunicorn's ``start_response`` is a method of its response object; asking that
    object to close makes gunicorn answer ``Connection: close`` and skip the body
    drain. Other servers ignore the flag (they drain or close as they do).
    """

    def app(environ, start_response):
        def start(status, headers, exc_info=None):
            if environ.get(CLOSE_CONNECTION):
                force_close = getattr(getattr(start_response, "__self__", None), "force_close", None)
                if force_close is not None:
                    force_close()
            return start_response(status, headers, exc_info)

        return wsgi_app(environ, start)

    return app


def _reject_constant(name):
    raise ValueError(f"{name} is not JSON")


def parse_promoted(data: bytes, max_rows: int) -> list[tuple[str, float]]:
    """Parse a POST body into promoted ``(guid, weight)`` rows (SPEC §4.3)."""
    if not data.strip():
        return []
    try:
        body = json.loads(data.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise ApiError(400, "invalid JSON") from None
    if not isinstance(body, dict):
        raise ApiError(400, "invalid body")
    options = body.get("options")
    if options is None:
        return []
    if not isinstance(options, dict):
        raise ApiError(400, "invalid options")
    promoted = options.get("promoted")
    if promoted is None:
        return []
    if not isinstance(promoted, list):
        raise ApiError(400, "invalid options")
    if len(promoted) > max_rows:
        raise ApiError(400, "too many promoted rows")
    return [_promoted_row(i, row) for i, row in enumerate(promoted)]


def _promoted_row(index: int, row) -> tuple[str, float]:
    ok = (
        isinstance(row, list) and len(row) == 2
        and isinstance(row[0], str) and 1 <= len(row[0]) <= MAX_GUID_CHARS and printable_text(row[0])
        and isinstance(row[1], int | float) and not isinstance(row[1], bool)
        and (isinstance(row[1], int) or math.isfinite(row[1]))
    )
    if not ok:
        raise ApiError(400, f"invalid promoted row {index}", reason="invalid_promoted_row")
    return row[0], row[1]


# --------------------------------------------------------------------------- error rendering


def error_body(message: str, results=None) -> dict:
    """The JSON error envelope: ``{"results": <empty>, "error": message}``."""
    return {"results": [] if results is None else results, "error": message}


def error_response(status: int, message: str, results=None, headers=None) -> flask.Response:
    """:func:`error_body` as a response with ``Cache-Control: no-store``."""
    response = flask.jsonify(error_body(message, results))
    response.status_code = status
    response.headers["Cache-Control"] = "no-store"
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def _route_tag() -> str:
    return flask.request.endpoint or "unmatched"


def _handle_api_error(error: ApiError):
    if error.status == 400:
        services.current().metrics.incr("invalid_request", tags=[f"route:{_route_tag()}", f"reason:{error.reason}"])
    return error_response(error.status, error.message, error.results, error.headers)


def _handle_http_error(error: HTTPException):
    if error.code == 404:
        return error_response(404, "not found")
    if error.code == 405:
        allowed = error.valid_methods or []
        return error_response(405, "method not allowed", headers={"Allow": ", ".join(sorted(allowed))})
    if error.code == 400:
        services.current().metrics.incr("invalid_request", tags=[f"route:{_route_tag()}", "reason:bad_request"])
    return error_response(error.code or 500, (error.name or "error").lower())


def _handle_unexpected(error: Exception):
    logger.exception("unhandled error")
    return error_response(500, "internal error")


def _redirect_as_json(response: flask.Response) -> flask.Response:
    """Give werkzeug's trailing-slash 308 redirects the JSON envelope."""
    if response.status_code == 308 and isinstance(flask.request.routing_exception, RequestRedirect):
        location = response.headers.get("Location", "")
        response.set_data(json.dumps({"results": [], "location": location}))
        response.mimetype = "application/json"
        response.headers["Cache-Control"] = "no-store"
    return response


def register_error_handlers(app: flask.Flask) -> None:
    """Render every error of the app as the JSON envelope."""
    app.register_error_handler(ApiError, _handle_api_error)
    app.register_error_handler(HTTPException, _handle_http_error)
    app.register_error_handler(Exception, _handle_unexpected)
    app.after_request(_redirect_as_json)
