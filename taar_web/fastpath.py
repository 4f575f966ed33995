"""The per-user and TAARlite GETs without Flask's request machinery (SPEC §6.2).

``GET /v1/api/recommendations/<id>/`` is most of the service's traffic and
``GET /taarlite/api/v1/addon_recommendations/<guid>/`` has a throughput target
close to ``/__lbheartbeat__`` (SPEC §13, S3). Flask's request and app contexts,
URL matching, hooks, signals and response object cost about a sixth of a
per-user request's CPU under gunicorn and most of a TAARlite request's, for
routes whose answers need none of them. :class:`FastPath` sits in front of the
Flask app and serves those requests itself, through the same code as the Flask
views: their ``answer`` functions (:func:`taar_web.views.recommendations.answer`,
:func:`taar_web.views.taarlite.answer`) for the body and headers, and
:func:`~taar_web.request_log.open_request` / ``write_summary`` /
``close_request`` for the log context, the ``request.summary`` record and the
metrics batch. Response bytes and headers are those of ``flask.jsonify`` (and
``response.set_etag`` for TAARlite).

It only takes what it answers exactly as Flask would; everything else goes to
Flask unchanged: other paths and methods (POST, HEAD), a request with a body, a
path werkzeug would redirect or not match as is (doubled or missing slashes, a
decoded ``%2F``, a PATH_INFO that is not a latin-1 WSGI string), a client id or
GUID the view's parser refuses (the 400 comes from Flask's handler), a query
string that is not ASCII, a malformed ``locale`` (Flask counts it) or an unknown
``normalize`` (Flask's 400), a TAARlite request with ``If-None-Match`` (werkzeug
parses ETags and answers the 304), and an app in debug mode (indented JSON). The
path segment is decoded as werkzeug decodes it (UTF-8, invalid bytes replaced).
``tests/web/test_fastpath.py`` compares the two paths response by response.
"""

from __future__ import annotations

import logging
import re
from urllib.parse import parse_qsl

from werkzeug.http import quote_etag

from . import sentry, services
from .request_log import REQUEST_ID_HEADER, close_request, current_request_id, open_request, write_summary
from .validation import (
    ApiError,
    error_body,
    parse_client_id,
    parse_flag,
    parse_guid,
    parse_locale,
    parse_normalize,
)
from .views import recommendations, taarlite

logger = logging.getLogger(__name__)

# The one dynamic segment of each route, as werkzeug's default converter matches it.
_PER_USER = re.compile(r"/v1/api/recommendations/([^/]+)/")
_TAARLITE = re.compile(r"/taarlite/api/v1/addon_recommendations/([^/]+)/")
_REQUEST_ID_KEY = "HTTP_" + REQUEST_ID_HEADER.upper().replace("-", "_")
_NO_STORE = (("Cache-Control", "no-store"),)


def _first_values(query: str, keys: tuple[str, ...]) -> dict[str, str]:
    """``request.args.get`` for ``keys``: the first value, decoded as werkzeug does."""
    values: dict[str, str] = {}
    if query:
        for key, value in parse_qsl(query, keep_blank_values=True, errors="werkzeug.url_quote"):
            if key in keys and key not in values:
                values[key] = value
    return values


def _per_user(svc, segment: str, query: str, environ):
    """The plain per-user GET's answer, as ``() -> (body, headers)``; None when Flask must answer."""
    try:
        client = parse_client_id(segment)
    except ApiError:
        return None
    values = _first_values(query, ("locale", "platform", "explain"))
    locale, rejected = parse_locale(values.get("locale"))
    if rejected:
        return None
    platform, explain = values.get("platform"), parse_flag(values.get("explain"))
    return lambda: (recommendations.answer(svc, client, [], locale, platform, explain), _NO_STORE)


def _taarlite(svc, segment: str, query: str, environ):
    """The plain TAARlite GET's answer, as ``() -> (body, headers)``; None when Flask must answer."""
    if "HTTP_IF_NONE_MATCH" in environ:
        return None
    values = _first_values(query, ("normalize", "explain"))
    try:
        guid = parse_guid(segment)
        mode = parse_normalize(values.get("normalize"))
    except ApiError:
        return None
    explain = parse_flag(values.get("explain"))

    def respond():
        body, etag, cache_control = taarlite.answer(svc, guid, mode, explain)
        if etag is None:
            return body, (("Cache-Control", cache_control),)
        return body, (("ETag", quote_etag(etag)), ("Cache-Control", cache_control))  # as response.set_etag

    return respond


#: ``(path pattern, URL rule logged, taker)``: a taker returns the answer or None.
_ROUTES = ((_PER_USER, recommendations.ROUTE, _per_user), (_TAARLITE, taarlite.ROUTE, _taarlite))


def _segment(raw: str) -> str | None:
    """The path segment as werkzeug hands it to the view: PATH_INFO's latin-1 bytes decoded as UTF-8."""
    if raw.isascii():
        return raw
    try:
        return raw.encode("latin-1").decode("utf-8", "replace")  # werkzeug's _wsgi_decoding_dance
    except UnicodeEncodeError:  # not a WSGI string: werkzeug fails on it too, let it
        return None


class FastPath:
    """WSGI middleware: serves the plain per-user and TAARlite GETs, hands every other request to ``wsgi_app``.

    Parameters
    ----------
    app : flask.Flask
        The service (its :class:`~taar_web.services.Services` and JSON provider).
    wsgi_app : WSGI callable
        Flask's own ``app.wsgi_app``: everything the fast path does not take.
    """

    def __init__(self, app, wsgi_app):
        self.app = app
        self.wsgi_app = wsgi_app

    def _takes(self, environ):
        """``(route, respond)`` when this request is the fast path's, else None."""
        if environ.get("REQUEST_METHOD") != "GET" or self.app.debug or self.app.json.compact is False:
            return None
        if environ.get("CONTENT_LENGTH") not in (None, "", "0") or "HTTP_TRANSFER_ENCODING" in environ:
            return None
        path = environ.get("PATH_INFO", "")
        query = environ.get("QUERY_STRING", "")
        if not query.isascii():
            return None
        for pattern, route, take in _ROUTES:
            match = pattern.fullmatch(path)
            if match is not None:
                segment = _segment(match.group(1))
                if segment is None:
                    return None
                respond = take(self.app.extensions[services.EXTENSION], segment, query, environ)
                return None if respond is None else (route, respond)
        return None

    def __call__(self, environ, start_response):
        taken = self._takes(environ)
        if taken is None:
            return self.wsgi_app(environ, start_response)
        route, respond = taken
        opened = open_request(environ.get(_REQUEST_ID_KEY), route)
        try:
            try:
                body, headers = respond()
                status = 200
            except Exception as exc:  # as Flask's handler of unexpected errors
                # Flask's Sentry integration reports its own; this path reports here, first, so that
                # the SDK drops the logging integration's copy of the same exception
                sentry.capture(exc, route=route, request_id=current_request_id() or "")
                logger.exception("unhandled error")
                (body, headers), status = (error_body("internal error"), _NO_STORE), 500
            data = (self.app.json.dumps(body, separators=(",", ":")) + "\n").encode()
            start_response("200 OK" if status == 200 else "500 INTERNAL SERVER ERROR", [
                ("Content-Type", self.app.json.mimetype), ("Content-Length", str(len(data))), *headers])
            write_summary("GET", route, status, opened[2])
            return [data]
        finally:
            close_request(opened)
