"""The per-user fast path answers exactly as the Flask view does, and hands Flask everything else.

Each request runs twice on one app: through :class:`taar_web.fastpath.PerUserFastPath`
and through Flask's own ``wsgi_app`` behind it. Status, headers, body bytes, the
``request.summary`` record and the metrics must be the same; a request the fast
path must not take has to reach Flask.
"""

from __future__ import annotations

import json
import logging

import pytest
from werkzeug.test import EnvironBuilder

from taar import hashing
from tests.fixtures import web_models as fixtures

pytestmark = pytest.mark.unit

KNOWN = f"/v1/api/recommendations/{fixtures.KNOWN}/"
RANDOM_ID = "0123456789abcdef" * 4
#: Volatile summary fields: the generated request id and the durations.
VOLATILE = {"rid", "t", "timings"}


def run(wsgi, caplog, metrics, path, method="GET", headers=None, data=None):
    """One request through ``wsgi``: status, headers, body, its summary record and metric records."""
    environ = EnvironBuilder(path=path, method=method, headers=headers, data=data).get_environ()
    started = []

    def start_response(status, response_headers, exc_info=None):
        started.append((status, list(response_headers)))

    caplog.clear()
    metrics.records.clear()
    body = b"".join(wsgi(environ, start_response))
    summaries = [r for r in caplog.records if r.name == "request.summary"]
    assert len(summaries) == 1
    fields = {k: v for k, v in vars(summaries[0]).items()
              if k in ("method", "path", "status", "route", "client_id", "locale", "platform", "seed", "guids",
                       "test_client", "rid", "timings")}
    metric_records = [(r.stat_type, r.key, r.tags) for r in metrics.records]
    return started[0][0], started[0][1], body, fields, metric_records


@pytest.fixture
def paths(make_app, metrics, caplog):
    """``(app, fast path, flask's wsgi_app, calls that reached flask)``."""
    caplog.set_level(logging.INFO, logger="request.summary")
    app = make_app(randomize=True, random_seed=None, seed_source=lambda: 1234)
    fast = app.extensions["taar_fast_path"]
    reached_flask = []
    flask_wsgi = fast.wsgi_app

    def counting(environ, start_response):
        reached_flask.append(environ["PATH_INFO"])
        return flask_wsgi(environ, start_response)

    fast.wsgi_app = counting
    return app, fast, flask_wsgi, reached_flask


TAKEN = [
    KNOWN,
    f"/v1/api/recommendations/{fixtures.KNOWN.upper()}/",
    f"/v1/api/recommendations/{fixtures.UNKNOWN}/",
    f"/v1/api/recommendations/{RANDOM_ID}/",
    f"/v1/api/recommendations/{fixtures.QA_TEST_ID}/",  # a test id: whitelist answer, no profile read
    KNOWN + "?locale=de",
    KNOWN + "?locale=&platform=win",
    KNOWN + "?locale=de&locale=fr",  # the first value wins, as request.args.get
    KNOWN + "?platform=" + "x" * 100,  # logged cut to 64 characters
    KNOWN + "?platform=a%20b+c%C3%A9%FF",  # percent-decoding, an invalid byte kept quoted
    KNOWN + "?explain=1",
    KNOWN + "?explain=true&locale=fr-CA",
    KNOWN + "?explain=yes&unknown=1",
]


@pytest.mark.parametrize("path", TAKEN)
def test_the_fast_path_answers_as_flask_does(paths, caplog, metrics, path):
    app, fast, flask_wsgi, reached_flask = paths
    fast_result = run(fast, caplog, metrics, path, headers={"X-Request-ID": "req-1"})
    assert reached_flask == []  # served without Flask
    flask_result = run(flask_wsgi, caplog, metrics, path, headers={"X-Request-ID": "req-1"})
    assert fast_result[:3] == flask_result[:3]  # status, headers (names, values, order), body bytes
    same = lambda fields: {k: v for k, v in fields.items() if k != "timings"}  # noqa: E731
    assert same(fast_result[3]) == same(flask_result[3])  # the request.summary fields, request id included
    assert sorted(fast_result[3].get("timings", {})) == sorted(flask_result[3].get("timings", {}))
    assert fast_result[4] == flask_result[4]  # the same metrics, in the same order
    assert fast_result[0] == "200 OK"


def test_a_generated_request_id_and_the_timings_are_fresh_per_request(paths, caplog, metrics):
    _, fast, _, _ = paths
    first, second = run(fast, caplog, metrics, KNOWN)[3], run(fast, caplog, metrics, KNOWN)[3]
    assert len(first["rid"]) == 32 and first["rid"] != second["rid"]
    assert set(first["timings"]) >= {"profile_recommendation", "profile_fetch", "ensemble_recommend"}


NOT_TAKEN = [
    ("POST", KNOWN, None, json.dumps({"options": {"promoted": [["p@x", 9]]}})),
    ("HEAD", KNOWN, None, None),
    ("GET", "/v1/api/recommendations/not-an-id/", None, None),  # Flask's 400
    ("GET", "/v1/api/recommendations/" + "0123" + "g" * 60 + "/", None, None),  # 64 chars, not hex
    ("GET", KNOWN.rstrip("/"), None, None),  # Flask's 308 to the slash
    ("GET", KNOWN + "extra/", None, None),  # Flask's 404
    ("GET", KNOWN + "?locale=x!y", None, None),  # a malformed locale: Flask counts invalid_locale
    ("GET", KNOWN, None, b"a body"),
    ("GET", "/__lbheartbeat__", None, None),
    ("GET", f"/taarlite/api/v1/addon_recommendations/{hashing.hash_client_id('x')}/", None, None),
]


@pytest.mark.parametrize(("method", "path", "headers", "data"), NOT_TAKEN)
def test_everything_else_goes_to_flask(paths, caplog, metrics, method, path, headers, data):
    _, fast, flask_wsgi, reached_flask = paths
    fast_result = run(fast, caplog, metrics, path, method, headers, data)
    assert len(reached_flask) == 1
    flask_result = run(flask_wsgi, caplog, metrics, path, method, headers, data)
    assert fast_result[:3] == flask_result[:3]


def test_a_non_ascii_query_string_goes_to_flask(paths, caplog, metrics):
    _, fast, _, reached_flask = paths
    environ = EnvironBuilder(path=KNOWN).get_environ()
    environ["QUERY_STRING"] = "platform=\xe9"  # a raw byte the client did not percent-encode
    b"".join(fast(environ, lambda status, headers, exc_info=None: None))
    assert reached_flask == [KNOWN]


def test_an_unexpected_error_is_a_logged_json_500_on_both_paths(paths, caplog, metrics):
    app, fast, flask_wsgi, reached_flask = paths

    def broken_seed():
        raise RuntimeError("seed source down")

    app.extensions["taar"].seed_source = broken_seed
    fast_result = run(fast, caplog, metrics, KNOWN)
    fast_logged = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    flask_result = run(flask_wsgi, caplog, metrics, KNOWN)
    flask_logged = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert reached_flask == []
    assert fast_result[0] == flask_result[0] == "500 INTERNAL SERVER ERROR"
    assert fast_result[1:3] == flask_result[1:3]
    assert json.loads(fast_result[2]) == {"results": [], "error": "internal error"}
    assert fast_logged == flask_logged == ["unhandled error"]
    assert fast_result[3]["status"] == flask_result[3]["status"] == 500


def test_debug_mode_goes_to_flask(paths, caplog, metrics):
    app, fast, _, reached_flask = paths
    app.debug = True  # indented JSON: Flask's provider decides the bytes
    run(fast, caplog, metrics, KNOWN)
    assert reached_flask == [KNOWN]
