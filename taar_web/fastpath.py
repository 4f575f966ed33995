"""The per-user GET without Flask's request machinery (SPEC §6.2).

``GET /v1/api/recommendations/<id>/`` is most of the service's traffic. Flask's
request and app contexts, URL matching, hooks, signals and response object cost
about a sixth of a per-user request's CPU under gunicorn, for a route whose
answer needs none of them. :class:`PerUserFastPath` sits in front of the Flask
app and serves that request itself, through the same code as the Flask view:
:func:`~taar_web.views.recommendations.answer` for the body, and
:func:`~taar_web.request_log.open_request` / ``write_summary`` /
``close_request`` for the log context, the ``request.summary`` record and the
metrics batch. Response bytes and headers are those of ``flask.jsonify``.

It only takes what it answers exactly as Flask would; everything else goes to
Flask unchanged: other paths and methods (POST, HEAD), a request with a body, a
client id :func:`~taar_web.validation.parse_client_id` refuses (the 400 comes
from Flask's handler), a query string that is not ASCII or holds a malformed
``locale`` (Flask counts it), and an app in debug mode (indented JSON).
``tests/web/test_fastpath.py`` compares the two paths response by response.
"""

from __future__ import annotations

import logging
import re
from urllib.parse import parse_qsl

from . import services
from .request_log import REQUEST_ID_HEADER, close_request, open_request, write_summary
from .validation import ApiError, error_body, parse_client_id, parse_flag, parse_locale
from .views.recommendations import ROUTE, answer

logger = logging.getLogger(__name__)

_PATH = re.compile(r"/v1/api/recommendations/([^/]+)/")
_REQUEST_ID_KEY = "HTTP_" + REQUEST_ID_HEADER.upper().replace("-", "_")
_QUERY_KEYS = ("locale", "platform", "explain")


def _first_values(query: str) -> dict[str, str]:
    """``request.args.get`` for the keys the route reads: the first value, decoded as werkzeug does."""
    values: dict[str, str] = {}
    if query:
        for key, value in parse_qsl(query, keep_blank_values=True, errors="werkzeug.url_quote"):
            if key in _QUERY_KEYS and key not in values:
                values[key] = value
    return values


class PerUserFastPath:
    """WSGI middleware: serves the plain per-user GET, hands every other request to ``wsgi_app``.

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
        """``(client, locale, platform, explain)`` when this request is the fast path's, else None."""
        if environ.get("REQUEST_METHOD") != "GET" or self.app.debug or self.app.json.compact is False:
            return None
        match = _PATH.fullmatch(environ.get("PATH_INFO", ""))
        if match is None or environ.get("CONTENT_LENGTH") not in (None, "", "0") or "HTTP_TRANSFER_ENCODING" in environ:
            return None
        query = environ.get("QUERY_STRING", "")
        if not query.isascii():
            return None
        try:
            client = parse_client_id(match.group(1))
        except ApiError:
            return None
        values = _first_values(query)
        locale, rejected = parse_locale(values.get("locale"))
        if rejected:
            return None
        return client, locale, values.get("platform"), parse_flag(values.get("explain"))

    def __call__(self, environ, start_response):
        taken = self._takes(environ)
        if taken is None:
            return self.wsgi_app(environ, start_response)
        client, locale, platform, explain = taken
        opened = open_request(environ.get(_REQUEST_ID_KEY), ROUTE)
        try:
            try:
                body = answer(self.app.extensions[services.EXTENSION], client, [], locale, platform, explain)
                status = 200
            except Exception:  # as Flask's handler of unexpected errors
                logger.exception("unhandled error")
                body, status = error_body("internal error"), 500
            data = (self.app.json.dumps(body, separators=(",", ":")) + "\n").encode()
            start_response("200 OK" if status == 200 else "500 INTERNAL SERVER ERROR", [
                ("Content-Type", self.app.json.mimetype), ("Content-Length", str(len(data))),
                ("Cache-Control", "no-store")])
            write_summary("GET", ROUTE, status, opened[2])
            return [data]
        finally:
            close_request(opened)
