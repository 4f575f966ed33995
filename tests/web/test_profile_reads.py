"""Profile reads in the service (SPEC §3.7, §6.6): bounded client construction, rate-limited
failure logs, and Sentry events without profile data."""

from __future__ import annotations

import logging
import threading
import time

import pytest

from taar.logs import RateLimitedLog
from taar.storage import ProfileTimeout, open_profile_store
from taar_web.profiles import ProfileFetcher
from taar_web.sentry import REDACTED, scrub_event
from tests.fixtures import web_models as fixtures

pytestmark = pytest.mark.unit


@pytest.mark.integration
def test_client_construction_is_bounded_by_the_read_deadline(bigtable_profile_uri, monkeypatch):
    store = open_profile_store(bigtable_profile_uri)
    store.ensure_table()
    store.put_many(fixtures.profile_rows(), ts_ms=1_710_115_200_000)
    fresh = open_profile_store(bigtable_profile_uri)
    release = threading.Event()
    original = fresh._connect

    def slow_connect():
        release.wait(10)  # a client that takes long to build (DNS, credentials, a loaded machine)
        original()

    monkeypatch.setattr(fresh, "_connect", slow_connect)
    started = time.monotonic()
    with pytest.raises(ProfileTimeout, match="client not ready"):
        fresh.get(fixtures.KNOWN, 0.1)
    assert time.monotonic() - started < 5.0  # bounded by the 0.1 s deadline, not the 10 s build
    release.set()
    assert fresh.warm(10.0)  # the construction that was started finishes; reads then work
    assert fresh.get(fixtures.KNOWN, 5.0) is not None


class FailingStore:
    def __init__(self):
        self.calls = 0

    def get(self, key, timeout_s):
        self.calls += 1
        raise ConnectionError(f"unreachable while reading {key}")


def test_failed_reads_are_counted_always_but_logged_rate_limited(caplog):
    fetcher = ProfileFetcher(FailingStore(), 0.1, log_interval_s=3600.0)
    caplog.set_level(logging.WARNING, logger="taar_web.profiles")
    for _ in range(50):
        assert fetcher.get(fixtures.KNOWN) is None
    warnings = [r for r in caplog.records if r.name == "taar_web.profiles"]
    assert len(warnings) == 1 and warnings[0].exc_info is None  # one line, no traceback
    assert fetcher.store.calls == 50


def test_rate_limited_log_reports_what_it_suppressed():
    clock = [0.0]
    limiter = RateLimitedLog(60.0, clock=lambda: clock[0])
    assert limiter.allow() == 0
    assert [limiter.allow() for _ in range(3)] == [None] * 3
    clock[0] = 61.0
    assert limiter.allow() == 3


def test_sentry_events_carry_no_profile_data():
    event = {
        "extra": {"client_id": fixtures.KNOWN, "profile": {"geo_city": "Berlin"}, "route": "/x"},
        "contexts": {"request_ctx": {"installed_addons": ["a@x"], "locale": "de"}},
        "request": {"url": "/v1/api/recommendations/x/", "data": '{"options": 1}', "query_string": "locale=de",
                    "cookies": {"a": "b"}},
        "exception": {"values": [{"stacktrace": {"frames": [
            {"function": "get", "vars": {"payload": {"os": "Linux"}, "hashed_id": fixtures.KNOWN}}]}}]},
        "breadcrumbs": {"values": [{"message": "read", "data": {"client_id": fixtures.KNOWN, "n": 1}}]},
    }
    scrubbed = scrub_event(event)
    text = repr(scrubbed)
    for secret in (fixtures.KNOWN, "Berlin", "a@x", "Linux", "locale=de"):
        assert secret not in text
    assert scrubbed["extra"] == {"client_id": REDACTED, "profile": REDACTED, "route": "/x"}
    assert "vars" not in scrubbed["exception"]["values"][0]["stacktrace"]["frames"][0]
    assert scrubbed["breadcrumbs"]["values"][0]["data"] == {"client_id": REDACTED, "n": 1}
    assert scrubbed["request"] == {"url": "/v1/api/recommendations/x/"}
