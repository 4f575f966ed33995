"""The fast path answers exactly as the Flask views do, and hands Flask everything else.

Each request runs twice on one app: through :class:`taar_web.fastpath.FastPath`
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
from taar.storage import open_model_store
from tests.fixtures import web_models as fixtures

pytestmark = pytest.mark.unit

KNOWN = f"/v1/api/recommendations/{fixtures.KNOWN}/"
LITE = "/taarlite/api/v1/addon_recommendations/"
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
                       "test_client", "guid", "mode", "rid", "timings")}
    metric_records = [(r.stat_type, r.key, r.tags) for r in metrics.records]
    return started[0][0], started[0][1], body, fields, metric_records


def split(app):
    """``(app, fast path, flask's wsgi_app, calls that reached flask)`` of one app."""
    fast = app.extensions["taar_fast_path"]
    reached_flask = []
    flask_wsgi = fast.wsgi_app

    def counting(environ, start_response):
        reached_flask.append(environ["PATH_INFO"])
        return flask_wsgi(environ, start_response)

    fast.wsgi_app = counting
    return app, fast, flask_wsgi, reached_flask


@pytest.fixture
def paths(make_app, metrics, caplog):
    """:func:`split` of an app with every model loaded."""
    caplog.set_level(logging.INFO, logger="request.summary")
    return split(make_app(randomize=True, random_seed=None, seed_source=lambda: 1234))


def assert_same(fast_result, flask_result):
    """Status, headers (names, values, order), body bytes, summary fields and metrics are equal."""
    assert fast_result[:3] == flask_result[:3]
    same = lambda fields: {k: v for k, v in fields.items() if k != "timings"}  # noqa: E731
    assert same(fast_result[3]) == same(flask_result[3])  # the request.summary fields, request id included
    assert sorted(fast_result[3].get("timings", {})) == sorted(flask_result[3].get("timings", {}))
    assert fast_result[4] == flask_result[4]  # the same metrics, in the same order


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


def served_alike(paths, caplog, metrics, path):
    """``path`` through the fast path (which must take it) and through Flask: the same 200; the fast one."""
    app, fast, flask_wsgi, reached_flask = paths
    fast_result = run(fast, caplog, metrics, path, headers={"X-Request-ID": "req-1"})
    assert reached_flask == []  # served without Flask
    flask_result = run(flask_wsgi, caplog, metrics, path, headers={"X-Request-ID": "req-1"})
    assert_same(fast_result, flask_result)
    assert fast_result[0] == "200 OK"
    return fast_result


@pytest.mark.parametrize("path", TAKEN)
def test_the_fast_path_answers_as_flask_does(paths, caplog, metrics, path):
    served_alike(paths, caplog, metrics, path)


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
    ("GET", "/v1/api/recommendations/" + hashing.hash_client_id("x")[:-1] + "%C3%A9/", None, None),  # not hex
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


# --------------------------------------------------------------------------- TAARlite
# Fixture graph (tests/fixtures/web_models.py, arithmetic in tests/web/test_taarlite.py): a@x has four
# co-installed add-ons, so it gets an answer in every mode; b@x keeps one after the filter and gets [].

LITE_TAKEN = [
    LITE + "a@x/",  # default mode: d e b c
    LITE + "a%40x/",  # the server decodes %40; werkzeug's route gets "a@x" as well
    LITE + "b@x/",  # fewer than four: []
    LITE + "unknown@x/",
    LITE + "{01234567-89ab-cdef-0123-456789abcdef}/",
    LITE + "%7Bbraces%7D/",
    LITE + "caf%C3%A9@x/",  # non-ASCII: UTF-8 in PATH_INFO's latin-1 string
    LITE + "bad%FFbyte@x/",  # invalid UTF-8: werkzeug's replacement character
    LITE + "a+b@x/",  # "+" is not a space in a path
    LITE + "g" * 255 + "/",  # the longest GUID parse_guid accepts
    LITE + "a@x/?normalize=",
    LITE + "a@x/?normalize=none",
    LITE + "a@x/?normalize=row_count",
    LITE + "a@x/?normalize=row_sum",
    LITE + "a@x/?normalize=rownorm_sum",
    LITE + "a@x/?normalize=guidception",
    LITE + "a@x/?explain=1",
    LITE + "a@x/?explain=true&normalize=none",
    LITE + "b@x/?explain=1",
    LITE + "a@x/?explain=no",
    LITE + "a@x/?normalize=none&normalize=BOGUS",  # the first value wins, as request.args.get
    LITE + "a@x/?explain=1&explain=0&unknown=%FF",
    LITE + "a@x/?normaliz%65=row_sum",  # a percent-encoded key
]


@pytest.mark.parametrize("path", LITE_TAKEN)
def test_the_fast_path_answers_taarlite_as_flask_does(paths, caplog, metrics, path):
    fast_result = served_alike(paths, caplog, metrics, path)
    assert fast_result[3]["route"] == "/taarlite/api/v1/addon_recommendations/<guid>/" and "guid" in fast_result[3]
    assert [name for name, _ in fast_result[1]] == ["Content-Type", "Content-Length", "ETag", "Cache-Control"]


def test_taarlite_answers_compared_are_not_trivial(paths, caplog, metrics):
    # the parity above must compare real answers: a@x in the default mode is d e b c (test_taarlite.py)
    _, fast, _, _ = paths
    status, headers, body, fields, _ = run(fast, caplog, metrics, LITE + "a%40x/?explain=1")
    assert json.loads(body)["results"] == ["d@x", "e@x", "b@x", "c@x"]
    assert (fields["guid"], fields["mode"], fields["guids"]) == ("a@x", "rownorm_sum", ["d@x", "e@x", "b@x", "c@x"])
    assert dict(headers)["Cache-Control"] == "public, max-age=3600"


LITE_NOT_TAKEN = [
    ("GET", LITE + "g" * 256 + "/", None),  # too long: Flask's 400
    ("GET", LITE + "a%00x/", None),  # a control character: Flask's 400
    ("GET", LITE + "a%C2%85x/", None),  # a C1 control character (NEL): Flask's 400
    ("GET", LITE + "a%2Fx/", None),  # the server decodes %2F into a slash: Flask's 404
    ("GET", LITE + "a@x/?normalize=ROWNORM_SUM", None),  # Flask's 400, counted
    ("GET", LITE + "a@x/?normalize=bogus&explain=1", None),
    ("GET", LITE + "a@x", None),  # Flask's 308 to the slash
    ("GET", "/" + LITE + "a@x/", None),  # werkzeug strips the extra slash; left to it
    ("GET", LITE + "a@x/extra/", None),  # Flask's 404
    ("HEAD", LITE + "a@x/", None),
    ("POST", LITE + "a@x/", None),  # Flask's 405
    ("GET", LITE + "a@x/", {"If-None-Match": '"0123"'}),  # a stale ETag: Flask's 200
    ("GET", LITE + "a@x/", {"If-None-Match": ""}),
    ("GET", LITE + "a@x/", {"If-None-Match": "*"}),  # Flask's 304
]


@pytest.mark.parametrize(("method", "path", "headers"), LITE_NOT_TAKEN)
def test_everything_else_of_taarlite_goes_to_flask(paths, caplog, metrics, method, path, headers):
    _, fast, flask_wsgi, reached_flask = paths
    headers = {"X-Request-ID": "req-3", **(headers or {})}
    fast_result = run(fast, caplog, metrics, path, method, headers)
    assert len(reached_flask) == 1
    flask_result = run(flask_wsgi, caplog, metrics, path, method, headers)
    assert_same(fast_result, flask_result)


def test_a_conditional_taarlite_request_still_gets_its_304(paths, caplog, metrics):
    _, fast, _, reached_flask = paths
    status, headers, _, _, _ = run(fast, caplog, metrics, LITE + "a@x/")
    etag = dict(headers)["ETag"]
    status, headers, body, fields, _ = run(fast, caplog, metrics, LITE + "a@x/", headers={"If-None-Match": etag})
    assert reached_flask == [LITE + "a@x/"]  # only the conditional request
    assert (status, body, dict(headers)["ETag"]) == ("304 NOT MODIFIED", b"", etag)
    assert dict(headers)["Cache-Control"] == "public, max-age=3600"
    assert fields["status"] == 304 and "guids" not in fields  # nothing computed


def test_a_taarlite_non_ascii_query_string_goes_to_flask(paths, caplog, metrics):
    _, fast, _, reached_flask = paths
    environ = EnvironBuilder(path=LITE + "a@x/").get_environ()
    environ["QUERY_STRING"] = "normalize=none&x=\xe9"
    b"".join(fast(environ, lambda status, headers, exc_info=None: None))
    assert reached_flask == [LITE + "a@x/"]


def test_taarlite_without_models_answers_as_flask_does(make_app, metrics, caplog, tmp_path):
    caplog.set_level(logging.INFO, logger="request.summary")
    store = open_model_store(str(tmp_path / "models"))
    objs = fixtures.models()
    del objs["coinstall"], objs["ranking"]
    fixtures.publish_models(store, objs)
    _, fast, flask_wsgi, reached_flask = split(make_app(model_store=store))
    for path in (LITE + "a@x/", LITE + "a@x/?explain=1&normalize=none"):
        fast_result = run(fast, caplog, metrics, path, headers={"X-Request-ID": "req-4"})
        flask_result = run(flask_wsgi, caplog, metrics, path, headers={"X-Request-ID": "req-4"})
        assert reached_flask == []
        assert_same(fast_result, flask_result)
        assert fast_result[1][2:] == [("Cache-Control", "no-store")]  # and no ETag
        assert json.loads(fast_result[2]) == {"results": []}


def test_a_recommender_exception_degrades_to_empty_on_both_paths(paths, caplog, metrics, monkeypatch):
    app, fast, flask_wsgi, reached_flask = paths

    def explode(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(app.extensions["taar_models"].snapshot.engine.guid_based, "recommend", explode)
    fast_result = run(fast, caplog, metrics, LITE + "a@x/", headers={"X-Request-ID": "req-5"})
    fast_logged = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    flask_result = run(flask_wsgi, caplog, metrics, LITE + "a@x/", headers={"X-Request-ID": "req-5"})
    flask_logged = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert reached_flask == []
    assert_same(fast_result, flask_result)
    assert (fast_result[0], json.loads(fast_result[2])) == ("200 OK", {"results": []})
    assert ("incr", "taar.error_recommendation", ["route:taarlite"]) in fast_result[4]
    assert fast_logged == flask_logged == ["TAARlite recommendation failed"]


def test_an_unexpected_taarlite_error_is_a_logged_json_500_on_both_paths(paths, caplog, metrics, monkeypatch):
    app, fast, flask_wsgi, reached_flask = paths

    def broken(guid):
        raise RuntimeError("installs lost")

    monkeypatch.setattr(app.extensions["taar_models"].snapshot.engine.guid_based, "installs", broken)
    fast_result = run(fast, caplog, metrics, LITE + "a@x/?explain=1", headers={"X-Request-ID": "req-5"})
    flask_result = run(flask_wsgi, caplog, metrics, LITE + "a@x/?explain=1", headers={"X-Request-ID": "req-5"})
    assert reached_flask == []
    assert fast_result[0] == "500 INTERNAL SERVER ERROR"
    assert_same(fast_result, flask_result)


# --------------------------------------------------------------------------- Sentry


@pytest.fixture
def sentry_events(monkeypatch):
    """The service's own Sentry setup (:func:`taar_web.sentry.init_sentry`) with the events kept in memory."""
    import sentry_sdk
    from sentry_sdk.transport import Transport

    from taar_web import sentry

    events = []

    class InMemory(Transport):
        def capture_envelope(self, envelope):
            event = envelope.get_event()
            if event is not None:
                events.append(event)

    real_init = sentry_sdk.init
    guards = []
    monkeypatch.setattr(sentry_sdk, "init", lambda **kw: guards.append(real_init(transport=InMemory(), **kw)))
    assert sentry.init_sentry("https://key@sentry.invalid/1")
    yield events
    guards[0].__exit__(None, None, None)  # closes the client: later events are dropped


def test_an_unexpected_error_reaches_sentry_once_on_both_paths(paths, caplog, metrics, sentry_events):
    app, fast, flask_wsgi, reached_flask = paths

    def broken_seed():
        raise RuntimeError("seed source down")

    app.extensions["taar"].seed_source = broken_seed
    run(fast, caplog, metrics, KNOWN, headers={"X-Request-ID": "req-9"})
    fast_events = list(sentry_events)
    sentry_events.clear()
    run(flask_wsgi, caplog, metrics, KNOWN, headers={"X-Request-ID": "req-9"})
    flask_events = list(sentry_events)
    assert reached_flask == []
    for events in (fast_events, flask_events):
        assert len(events) == 1  # the logged "unhandled error" is not a second event
        [exception] = events[0]["exception"]["values"]
        assert (exception["type"], exception["value"]) == ("RuntimeError", "seed source down")
    assert fast_events[0]["tags"] == {"route": "/v1/api/recommendations/<hashed_client_id>/", "request_id": "req-9"}
    assert fixtures.KNOWN not in json.dumps(fast_events[0], default=str)  # no client id, no profile data
