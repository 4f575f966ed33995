"""taar_etl.amo: the retry policy against a scripted HTTP server, and the v4/v5 record views."""

import datetime as dt
import http.server
import json
import random
import threading
import time

import pytest

from taar_etl import amo
from taar_etl.amo import AmoClient, AmoError, AmoHTTPError, AmoNotFound, RetryPolicy

pytestmark = pytest.mark.unit


class Scripted:
    """A loopback HTTP server answering each GET with the next scripted ``(status, headers, body, delay_s)``."""

    def __init__(self, script):
        self.script = list(script)
        self.hits = 0
        self.paths = []
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):  # noqa: N802
                owner.hits += 1
                owner.paths.append(self.path)
                status, headers, body, delay_s = owner.script.pop(0) if owner.script else (200, {}, {}, 0)
                time.sleep(delay_s)
                data = body if isinstance(body, bytes) else json.dumps(body).encode()
                try:
                    self.send_response(status)
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:  # the client gave up (timeout)
                    pass

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def scripted():
    servers = []

    def start(*script):
        server = Scripted(script)
        servers.append(server)
        return server

    yield start
    for s in servers:
        s.close()


def client_for(server, sleeps, **policy):
    return AmoClient(server.url, policy=RetryPolicy(**{"retries": 3, "timeout_s": 2.0, **policy}),
                     sleep=sleeps.append)


def test_5xx_are_retried_until_success(scripted):
    server = scripted((500, {}, {}, 0), (503, {}, {}, 0), (200, {}, {"count": 1}, 0))
    sleeps = []
    assert client_for(server, sleeps).get_json("addons/search/") == {"count": 1}
    assert server.hits == 3 and len(sleeps) == 2


def test_429_waits_for_retry_after(scripted):
    server = scripted((429, {"Retry-After": "7"}, {}, 0), (200, {}, {"ok": True}, 0))
    sleeps = []
    assert client_for(server, sleeps).get_json("x/") == {"ok": True}
    assert sleeps == [7.0]  # the server's delay replaces the computed backoff


def test_retry_after_is_capped(scripted):
    server = scripted((503, {"Retry-After": "120"}, {}, 0), (200, {}, {}, 0))
    sleeps = []
    client_for(server, sleeps, cap_s=2.0).get_json("x/")
    assert sleeps == [2.0]


@pytest.mark.parametrize("status, error", [(400, AmoHTTPError), (403, AmoHTTPError), (404, AmoNotFound)])
def test_other_4xx_fail_at_once(scripted, status, error):
    server = scripted((status, {}, {"detail": "no"}, 0), (200, {}, {}, 0))
    sleeps = []
    with pytest.raises(error) as info:
        client_for(server, sleeps).get_json("x/")
    assert info.value.status == status and server.hits == 1 and sleeps == []


def test_gives_up_after_the_configured_retries(scripted):
    server = scripted(*[(500, {}, {}, 0)] * 5)
    sleeps = []
    with pytest.raises(AmoError, match="failed after 3 attempts"):
        client_for(server, sleeps, retries=2).get_json("x/")
    assert server.hits == 3 and len(sleeps) == 2


def test_timeouts_are_retried(scripted):
    server = scripted((200, {}, {"slow": True}, 0.5), (200, {}, {"fast": True}, 0))
    sleeps = []
    assert client_for(server, sleeps, timeout_s=0.15).get_json("x/") == {"fast": True}
    assert len(sleeps) == 1


def test_a_cut_off_json_body_is_retried(scripted):
    server = scripted((200, {}, b'{"count": ', 0), (200, {}, {"count": 2}, 0))
    sleeps = []
    assert client_for(server, sleeps).get_json("x/") == {"count": 2}


def test_connection_errors_are_retried_then_fail():
    from tests.fixtures.emulators import free_port

    sleeps = []
    client = AmoClient(f"http://127.0.0.1:{free_port()}", policy=RetryPolicy(retries=2, timeout_s=1.0),
                       sleep=sleeps.append)
    with pytest.raises(AmoError, match="ConnectionError"):
        client.get_json("x/")
    assert client.requests == 3 and len(sleeps) == 2


def test_backoff_is_exponential_with_jitter_and_capped():
    policy = RetryPolicy(base_s=1.0, cap_s=60.0)
    rng = random.Random(0)
    for attempt, (low, high) in {0: (0.5, 1.0), 3: (4.0, 8.0), 10: (30.0, 60.0)}.items():
        # ceiling = min(60, 1 * 2^attempt): 1, 8, 60 (1024 capped); the delay lies in [ceiling/2, ceiling]
        delays = [policy.delay_s(attempt, rng) for _ in range(200)]
        assert low <= min(delays) and max(delays) <= high
        assert max(delays) - min(delays) > 0  # jittered


def test_parse_retry_after_forms():
    now = dt.datetime(2026, 3, 1, 12, 0, 0, tzinfo=dt.UTC)
    assert amo.parse_retry_after("7", now) == 7.0
    assert amo.parse_retry_after("Sun, 01 Mar 2026 12:00:30 GMT", now) == 30.0
    assert amo.parse_retry_after("-3", now) == 0.0
    assert amo.parse_retry_after("soon", now) is None
    assert amo.parse_retry_after(None, now) is None


def test_versions_path_quotes_the_guid(scripted):
    server = scripted((200, {}, {"results": []}, 0))
    client = client_for(server, [])
    client.versions("{a/b}@x", page=3, page_size=10)
    assert server.paths == ["/api/v5/addons/addon/%7Ba%2Fb%7D%40x/versions/?page=3&page_size=10"]
    assert client.api_url("addons/") == f"{server.url}/api/v5/addons/"
    with pytest.raises(ValueError, match="api_version"):
        AmoClient(server.url, api_version="v3")


# --------------------------------------------------------------------------- record views

V4 = {
    "guid": "a@x", "default_locale": "de", "name": {"en-US": "Reader", "de": "Leser"},
    "ratings": {"average": 3.0, "count": 10},
    "promoted": {"category": "recommended", "apps": ["firefox"]},
    "current_version": {"files": [{"created": "2019-01-02T03:04:05Z", "is_webextension": False},
                                  {"created": "2019-01-03T00:00:00Z", "is_webextension": True}]},
}
V5 = {
    "guid": "b@x", "name": "Blocker", "ratings": {"average": 4},
    "promoted": [{"category": "line"}, {"category": "recommended"}],
    "current_version": {"file": {"created": "2020-05-06T07:08:09.123456Z"}},
}


def test_files_in_both_shapes():
    assert [f["created"] for f in amo.current_files(V4)] == ["2019-01-02T03:04:05Z", "2019-01-03T00:00:00Z"]
    assert amo.current_files(V5) == [{"created": "2020-05-06T07:08:09.123456Z"}]
    assert amo.current_files({"current_version": None}) == [] and amo.current_files({}) == []


def test_is_webextension_reads_the_first_file_and_defaults_to_true():
    assert amo.is_webextension(V4) is False  # first file is legacy, the second does not count
    assert amo.is_webextension(V5) is True  # v5 has no flag: it lists only webextensions
    assert amo.is_webextension({"current_version": {"files": [{"is_webextension": True}]}}) is True
    assert amo.is_webextension({}) is False  # no file at all


def test_rating_promoted_and_name():
    assert amo.rating(V4) == 3.0 and amo.rating(V5) == 4.0
    assert amo.rating({}) == 0.0 and amo.rating({"ratings": {"average": None}}) == 0.0
    assert amo.rating({"ratings": {"average": True}}) == 0.0
    assert amo.promoted_categories(V4) == ["recommended"]
    assert amo.promoted_categories(V5) == ["line", "recommended"]
    assert amo.promoted_categories({"promoted": None}) == [] and amo.promoted_categories({"promoted": []}) == []
    assert amo.name(V4) == "Leser" and amo.name(V5) == "Blocker" and amo.name({}) == ""
    assert amo.name({"name": {"fr": "Lecteur", "en-US": "Reader"}, "default_locale": "it"}) == "Reader"


def test_time_parsing_and_version_created():
    assert amo.parse_time("2020-05-06T07:08:09.123456Z") == dt.datetime(2020, 5, 6, 7, 8, 9, 123456, dt.UTC)
    assert amo.parse_time("2020-05-06T09:08:09+02:00") == dt.datetime(2020, 5, 6, 7, 8, 9, tzinfo=dt.UTC)
    assert amo.parse_time("not a date") is None and amo.parse_time(None) is None
    assert amo.format_time(dt.datetime(2020, 5, 6, 7, 8, 9, 999, dt.UTC)) == "2020-05-06T07:08:09Z"
    assert amo.version_created(V4["current_version"]) == "2019-01-02T03:04:05Z"
    assert amo.version_created({"created": "2018-01-01T00:00:00Z", "file": {}}) == "2018-01-01T00:00:00Z"
    assert amo.version_created({}) is None


def test_webextension_guids_and_first_create_date():
    db = {"a@x": V4, "b@x": V5}
    assert amo.webextension_guids(db) == {"b@x"}
    out = amo.with_first_create_date(V5, "2020-05-06T07:08:09Z")
    assert out["first_create_date"] == "2020-05-06T07:08:09Z" and "first_create_date" not in V5
