"""Request logging (SPEC §6.4) and metrics backends (SPEC §6.5)."""

from __future__ import annotations

import json
import logging

import pytest

from taar_web import request_log
from taar_web.metrics import Metrics, RecordingBackend, build_backend, build_metrics
from taar_web.settings import Settings
from tests.fixtures import web_models as fixtures

pytestmark = pytest.mark.unit

RAW_CLIENT_ID = "123e4567-e89b-12d3-a456-426614174000"


def json_lines(capsys) -> list[dict]:
    return [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]


def summaries(lines):
    return [line for line in lines if line["Type"] == "request.summary"]


def test_one_summary_per_request(client, capsys):
    capsys.readouterr()
    client.get(f"/v1/api/recommendations/{fixtures.KNOWN}/", headers={"X-Request-ID": "req-1"})
    (summary,) = summaries(json_lines(capsys))
    fields = summary["Fields"]
    assert (fields["method"], fields["status"], fields["rid"]) == ("GET", 200, "req-1")
    assert fields["path"] == "/v1/api/recommendations/<hashed_client_id>/"
    assert fields["t"] >= 0
    assert summary["Logger"] == "taar" and summary["Severity"] == 6


def test_request_id_is_generated_when_absent(client, capsys):
    capsys.readouterr()
    client.get("/__lbheartbeat__")
    (summary,) = summaries(json_lines(capsys))
    assert len(summary["Fields"]["rid"]) == 32


def test_business_events_carry_the_request_context(client, capsys):
    capsys.readouterr()
    client.get(f"/v1/api/recommendations/{fixtures.KNOWN}/?platform=WINNT", headers={"X-Request-ID": "req-2"})
    (event,) = [line for line in json_lines(capsys) if line["Fields"].get("msg") == "Client recommendations results"]
    fields = event["Fields"]
    assert (fields["rid"], fields["client_id"], fields["seed"], fields["platform"]) == (
        "req-2", fixtures.KNOWN, 42, "WINNT")
    assert fields["route"] == "/v1/api/recommendations/<hashed_client_id>/"


def test_context_does_not_leak_into_the_next_request(client, capsys):
    client.get(f"/v1/api/recommendations/{fixtures.KNOWN}/")
    capsys.readouterr()
    client.get("/__lbheartbeat__")
    (summary,) = summaries(json_lines(capsys))
    assert "client_id" not in summary["Fields"]


@pytest.mark.parametrize("path", [
    f"/v1/api/recommendations/{RAW_CLIENT_ID}/",
    f"/v1/api/client_has_addon/{RAW_CLIENT_ID}/a@x/",
    f"/v1/api/recommendations/{RAW_CLIENT_ID}",
    f"/no/such/{RAW_CLIENT_ID}/",
])
def test_raw_client_ids_are_never_logged(client, capsys, path):
    capsys.readouterr()
    assert client.get(path).status_code in (308, 400, 404)
    out = capsys.readouterr().out
    assert "request.summary" in out and RAW_CLIENT_ID not in out


def test_handler_and_filter_are_installed_once(make_app):
    make_app()
    make_app()
    ours = [h for h in logging.getLogger().handlers if h is request_log.configure_logging()]
    assert len(ours) == 1
    assert [type(f) for f in ours[0].filters] == [request_log.RequestContextFilter]
    for name in request_log.LOGGER_NAMES:
        assert logging.getLogger(name).filters == []


def test_log_level_setting_applies_to_taar_loggers(make_app):
    make_app(log_level="WARNING")
    try:
        assert logging.getLogger("taar").level == logging.WARNING
        assert logging.getLogger("taar_web").level == logging.WARNING
    finally:
        request_log.configure_logging("INFO")


def test_redact_path():
    assert request_log.redact_path(f"/x/{RAW_CLIENT_ID}/y") == "/x/<redacted>/y"
    assert request_log.redact_path(f"/x/{RAW_CLIENT_ID.replace('-', '')}") == "/x/<redacted>"
    assert request_log.redact_path(f"/x/{fixtures.KNOWN}/") == f"/x/{fixtures.KNOWN}/"


@pytest.mark.parametrize(("backend", "expected"), [
    ("logging", "LoggingMetrics"),
    ("statsd", "StatsdMetrics"),
    ("none", None),
])
def test_backend_follows_settings(backend, expected):
    built = build_backend(Settings(metrics_backend=backend, statsd_host="127.0.0.1"))
    assert (type(built).__name__ if built is not None else None) == expected


def test_metrics_are_prefixed_taar_and_stay_per_app():
    first, second = RecordingBackend(), RecordingBackend()
    build_metrics(Settings(metrics_backend="none"), first).incr("invalid_request", tags=["route:x"])
    assert [(r.key, r.tags) for r in first.records] == [("taar.invalid_request", ["route:x"])]
    assert second.records == []


def test_no_backend_drops_everything():
    metrics = build_metrics(Settings(metrics_backend="none"))
    assert isinstance(metrics, Metrics) and metrics.backends == []
    metrics.incr("anything")  # nothing to assert but that it does not raise


def test_request_metrics_reach_the_app_backend(client, metrics):
    client.get(f"/v1/api/recommendations/{fixtures.KNOWN}/")
    timers = set(metrics.keys("timing"))
    assert {"taar.profile_recommendation", "taar.profile_fetch", "taar.ensemble_recommend",
            "taar.collaborative_recommend", "taar.similarity_recommend", "taar.locale_recommend"} <= timers
    client.get("/taarlite/api/v1/addon_recommendations/a@x/")
    assert "taar.guid_recommendation" in metrics.keys("timing")
