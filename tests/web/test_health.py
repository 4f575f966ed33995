"""The heartbeat checks and their aggregation, as pure functions (SPEC §4.8)."""

from __future__ import annotations

import pytest
from dockerflow.checks import Error
from dockerflow.checks import Warning as CheckWarning

from taar_web import health

pytestmark = pytest.mark.unit


def entry(status="loaded", required=True, outcome="unchanged", error=None, age=1.0, version="20240310"):
    return {"status": status, "required": required, "age_hours": age, "version": version,
            "last_refresh": {"at": "t", "outcome": outcome, "error": error}}


def ids(messages):
    return [(m.id, m.level) for m in messages]


@pytest.mark.parametrize(("kwargs", "expected"), [
    ({}, []),
    ({"status": "missing"}, [(health.MODEL_NOT_LOADED, 40)]),
    ({"status": "error"}, [(health.MODEL_NOT_LOADED, 40)]),
    ({"status": "invalid"}, [(health.MODEL_INVALID, 40)]),
    ({"status": "stale", "age": 50.0}, [(health.MODEL_STALE, 40)]),
    ({"status": "missing", "required": False}, [(health.OPTIONAL_MODEL_MISSING, 30)]),
    ({"status": "invalid", "required": False}, [(health.OPTIONAL_MODEL_MISSING, 30)]),
    ({"status": "stale", "required": False, "age": 50.0}, [(health.OPTIONAL_MODEL_STALE, 30)]),
    ({"outcome": "failed", "error": "bad bytes"}, [(health.MODEL_REFRESH_FAILED, 30)]),
    ({"outcome": "swapped"}, []),
])
def test_check_model(kwargs, expected):
    assert ids(health.check_model("locale", entry(**kwargs), 48.0)) == expected


def test_refresh_failure_message_names_the_error_and_served_version():
    (message,) = health.check_model("locale", entry(outcome="failed", error="DecodeError: nope"), 48.0)
    assert "DecodeError: nope" in message.msg and "20240310" in message.msg


def test_stale_message_gives_age_and_limit():
    (message,) = health.check_model("locale", entry(status="stale", age=49.25), 48.0)
    assert "49.2 h" in message.msg and "48 h" in message.msg


def test_check_profile_store():
    assert health.check_profile_store(True, "", 150) == []
    assert ids(health.check_profile_store(False, "timeout", 150)) == [(health.PROFILE_STORE_UNREACHABLE, 40)]


@pytest.mark.parametrize(("loaded", "usable", "expected"), [
    (True, True, []),
    (True, False, [(health.RANKING_UNUSABLE, 40)]),
    (False, False, []),  # a missing ranking is reported by models.ranking
])
def test_check_ranking(loaded, usable, expected):
    assert ids(health.check_ranking(loaded, usable)) == expected


def test_aggregate_all_ok():
    payload, status = health.aggregate({"a": [], "b": []})
    assert (payload, status) == ({"status": "ok", "checks": {"a": "ok", "b": "ok"}, "details": {}}, 200)


def test_aggregate_warning_is_still_200():
    payload, status = health.aggregate({"a": [CheckWarning("w", id="x.W1")], "b": []})
    assert status == 200
    assert payload == {"status": "warning", "checks": {"a": "warning", "b": "ok"},
                       "details": {"a": {"level": 30, "messages": {"x.W1": "w"}}}}


def test_aggregate_error_is_500_and_keeps_every_message():
    payload, status = health.aggregate({"a": [CheckWarning("w", id="x.W1"), Error("e", id="x.E1")]})
    assert status == 500
    assert payload["status"] == "error" and payload["checks"] == {"a": "error"}
    assert payload["details"]["a"] == {"level": 40, "messages": {"x.W1": "w", "x.E1": "e"}}
