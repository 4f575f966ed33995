"""Dockerflow endpoints, ``/__models__``, ``/__openapi__.json`` and the 404/405 envelopes (SPEC §4.1, §4.8)."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os

import pytest

from taar.artifacts import SERVICE_ARTIFACTS
from taar.storage import open_model_store
from tests.fixtures import web_models as fixtures

pytestmark = pytest.mark.unit


class PingStore:
    """A profile store whose ``ping`` answers ``ok`` (or raises it) and counts calls."""

    uri = "ping://"

    def __init__(self, ok=True):
        self.ok = ok
        self.pings = 0

    def get(self, row_key, timeout_s):
        return None

    def ping(self, timeout_s):
        self.pings += 1
        if isinstance(self.ok, Exception):
            raise self.ok
        return self.ok


def store_without(tmp_path, *keys):
    store = open_model_store(str(tmp_path / "models"))
    objs = fixtures.models()
    for key in keys:
        del objs[key]
    fixtures.publish_models(store, objs)
    return store


def test_lbheartbeat_is_empty_200(client):
    response = client.get("/__lbheartbeat__")
    assert (response.status_code, response.data) == (200, b"")
    assert response.headers["Cache-Control"] == "no-cache"


def test_version_missing_is_404(client):
    response = client.get("/__version__")
    assert (response.status_code, response.get_json()) == (404, {"error": "version.json not found"})


def test_version_serves_the_file(make_app, tmp_path):
    content = {"source": "https://example.invalid/taar", "version": "v1.2.3", "commit": "abc", "build": "42"}
    path = tmp_path / "my-version.json"
    path.write_text(json.dumps(content))
    response = make_app(version_file=str(path)).test_client().get("/__version__")
    assert (response.status_code, response.get_json()) == (200, content)
    assert response.headers["Cache-Control"] == "no-cache"


def test_heartbeat_ok(client):
    response = client.get("/__heartbeat__")
    body = response.get_json()
    assert response.status_code == 200
    assert body["status"] == "ok" and body["details"] == {}
    assert set(body["checks"]) == {f"models.{k}" for k in SERVICE_ARTIFACTS} | {"models.groups", "profile_store", "taarlite.ranking"}
    assert response.headers["Cache-Control"] == "no-cache"


def test_heartbeat_500_when_required_model_missing(make_app, tmp_path):
    client = make_app(model_store=store_without(tmp_path, "whitelist")).test_client()
    response = client.get("/__heartbeat__")
    body = response.get_json()
    assert response.status_code == 500
    assert body["status"] == "error" and body["checks"]["models.whitelist"] == "error"
    assert list(body["details"]["models.whitelist"]["messages"]) == ["taar.models.E001"]
    assert body["details"]["models.whitelist"]["level"] == 40


def test_heartbeat_warns_when_optional_model_missing(make_app, tmp_path):
    required = tuple(k for k in SERVICE_ARTIFACTS if k != "ensemble_weights")
    client = make_app(model_store=store_without(tmp_path, "ensemble_weights"), required_models=required).test_client()
    response = client.get("/__heartbeat__")
    body = response.get_json()
    assert (response.status_code, body["status"]) == (200, "warning")
    assert list(body["details"]["models.ensemble_weights"]["messages"]) == ["taar.models.W002"]
    assert "1.0 each" in body["details"]["models.ensemble_weights"]["messages"]["taar.models.W002"]


def test_item_item_is_optional_by_default_missing_or_invalid(make_app, tmp_path):
    client = make_app(model_store=store_without(tmp_path, "item_item")).test_client()
    assert client.get("/__lbheartbeat__").status_code == 200
    body = client.get("/__heartbeat__").get_json()
    assert body["status"] == "warning" and body["checks"]["models.item_item"] == "warning"
    assert list(body["details"]["models.item_item"]["messages"]) == ["taar.models.W002"]
    assert {k for k, v in body["checks"].items() if v != "ok"} == {"models.item_item"}

    store = store_without(tmp_path / "invalid")
    store.write_bytes("addon_recommender/item_item.json.bz2", b"\x00 not bz2")
    body = make_app(model_store=store).test_client().get("/__heartbeat__").get_json()
    assert body["status"] == "warning"
    assert {k for k, v in body["checks"].items() if v != "ok"} == {"models.item_item"}


def test_heartbeat_500_when_required_model_invalid(make_app, tmp_path):
    store = store_without(tmp_path)
    store.write_bytes("taar/locale/top10_dict.json.bz2", b"\x00 not bz2")
    body = make_app(model_store=store).test_client().get("/__heartbeat__").get_json()
    assert list(body["details"]["models.locale"]["messages"]) == ["taar.models.E002"]


@pytest.mark.parametrize(("now", "daily", "weekly"), [
    # ages count from the end of the taar-date 2024-03-10, i.e. 2024-03-11 00:00 UTC
    (dt.datetime(2024, 3, 13, 0, 0, tzinfo=dt.UTC), "ok", "ok"),  # 48 h: at the limit, not over
    (dt.datetime(2024, 3, 13, 0, 1, tzinfo=dt.UTC), "error", "ok"),  # 48 h 1 min
    (dt.datetime(2024, 3, 20, 0, 0, tzinfo=dt.UTC), "error", "ok"),  # 216 h = 48 + 168
    (dt.datetime(2024, 3, 20, 0, 1, tzinfo=dt.UTC), "error", "error"),
])
def test_heartbeat_staleness(client, clock, now, daily, weekly):
    clock.now = now
    body = client.get("/__heartbeat__").get_json()
    assert body["checks"]["models.locale"] == daily
    assert body["checks"]["models.ensemble_weights"] == weekly
    if daily == "error":
        assert list(body["details"]["models.locale"]["messages"]) == ["taar.models.E003"]


def test_zero_max_age_disables_staleness(make_app, clock):
    client = make_app(model_max_age_hours=0.0).test_client()
    clock.now = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
    assert client.get("/__heartbeat__").status_code == 200


@pytest.mark.parametrize("ok", [False, OSError("connection refused")])
def test_heartbeat_500_when_profile_store_unreachable(make_app, ok):
    response = make_app(profile_store=PingStore(ok)).test_client().get("/__heartbeat__")
    body = response.get_json()
    assert (response.status_code, body["checks"]["profile_store"]) == (500, "error")
    assert list(body["details"]["profile_store"]["messages"]) == ["taar.profile_store.E001"]


def test_profile_store_ping_is_cached_for_ten_seconds(make_app, clock):
    store = PingStore()
    client = make_app(profile_store=store).test_client()
    client.get("/__heartbeat__")
    clock.advance(seconds=9)
    client.get("/__heartbeat__")
    assert store.pings == 1
    clock.advance(seconds=2)
    client.get("/__heartbeat__")
    assert store.pings == 2


def test_heartbeat_500_when_ranking_unusable(app, monkeypatch):
    monkeypatch.setattr(app.extensions["taar_models"].snapshot.engine, "ranking_usable", False)
    body = app.test_client().get("/__heartbeat__").get_json()
    assert body["checks"]["taarlite.ranking"] == "error"
    assert list(body["details"]["taarlite.ranking"]["messages"]) == ["taar.taarlite.E001"]


def test_models_report(client, model_store_dir):
    body = client.get("/__models__").get_json()
    assert body["process"]["pid"] == os.getpid()
    assert body["process"]["started_at"] == fixtures.NOW.isoformat()
    assert set(body["models"]) == set(SERVICE_ARTIFACTS)
    locale = body["models"]["locale"]
    stored = (model_store_dir / "taar/locale/top10_dict.json.bz2").read_bytes()
    assert locale["checksum"] == hashlib.sha256(stored).hexdigest()
    assert locale["size"] == len(stored)
    assert locale["uri"].endswith("taar/locale/top10_dict.json.bz2")
    assert (locale["status"], locale["version"], locale["required"]) == ("loaded", "20240310", True)
    assert locale["age_hours"] == 12.0  # NOW is 12 h after the end of 2024-03-10
    assert locale["loaded_at"] == fixtures.NOW.isoformat()
    assert locale["last_refresh"] == {"at": fixtures.NOW.isoformat(), "outcome": "swapped", "error": None}
    assert set(locale) == {"uri", "required", "status", "version", "loaded_at", "source_updated_at", "age_hours",
                           "checksum", "size", "last_refresh"}


def test_models_report_marks_stale_and_missing(make_app, clock, tmp_path):
    client = make_app(model_store=store_without(tmp_path, "coinstall")).test_client()
    clock.now += dt.timedelta(days=3)
    models = client.get("/__models__").get_json()["models"]
    assert models["locale"]["status"] == "stale"
    assert (models["coinstall"]["status"], models["coinstall"]["version"]) == ("missing", None)
    assert models["coinstall"]["last_refresh"]["outcome"] == "failed"


def test_openapi_document_is_served(client):
    from importlib import resources

    response = client.get("/__openapi__.json")
    assert response.status_code == 200 and response.mimetype == "application/json"
    assert response.get_json() == json.loads(resources.files("taar_web").joinpath("openapi.json").read_text())


@pytest.mark.parametrize("path", ["/", "/nope/", "/v1/api/recommendations/", "/v1/api/recommendations/a/b/"])
def test_unknown_route_is_json_404(client, path):
    response = client.get(path)
    assert (response.status_code, response.get_json()) == (404, {"results": [], "error": "not found"})
    assert response.headers["Cache-Control"] == "no-store"


@pytest.mark.parametrize(("method", "path"), [
    ("DELETE", f"/v1/api/recommendations/{fixtures.KNOWN}/"),
    ("PUT", f"/v1/api/recommendations/{fixtures.KNOWN}/"),
    ("POST", "/taarlite/api/v1/addon_recommendations/a@x/"),
    ("POST", f"/v1/api/client_has_addon/{fixtures.KNOWN}/a@x/"),
    ("OPTIONS", "/__heartbeat__"),
    ("POST", "/__lbheartbeat__"),
])
def test_wrong_method_is_json_405(client, method, path):
    response = client.open(path, method=method)
    assert (response.status_code, response.get_json()) == (405, {"results": [], "error": "method not allowed"})
    assert response.headers["Cache-Control"] == "no-store"



def test_without_any_model_every_route_still_answers(make_app, tmp_path):
    client = make_app(model_store=open_model_store(str(tmp_path / "empty"))).test_client()
    assert client.get(f"/v1/api/recommendations/{fixtures.KNOWN}/").get_json() == {"results": []}
    assert client.get("/v1/api/recommendations/1111/").get_json() == {"results": []}
    assert client.get("/taarlite/api/v1/addon_recommendations/a@x/").get_json() == {"results": []}
    assert client.get(f"/v1/api/client_has_addon/{fixtures.KNOWN}/a@x/").get_json() == {"results": True}
    assert client.get("/__heartbeat__").status_code == 500
    assert {m["status"] for m in client.get("/__models__").get_json()["models"].values()} == {"missing"}


def test_wsgi_module_builds_the_app_from_the_environment(monkeypatch, model_store_dir, profile_uri):
    import importlib
    import sys

    monkeypatch.setenv("TAAR_MODEL_STORE", str(model_store_dir))
    monkeypatch.setenv("TAAR_PROFILE_STORE", profile_uri)
    monkeypatch.setenv("TAAR_METRICS_BACKEND", "none")
    monkeypatch.delitem(sys.modules, "taar_web.wsgi", raising=False)
    wsgi = importlib.import_module("taar_web.wsgi")
    assert wsgi.app.extensions["taar_models"].snapshot.versions["whitelist"] == "20240310"


def test_sentry_is_initialised_only_with_a_dsn(monkeypatch):
    import sentry_sdk

    from taar_web import sentry

    calls = []
    monkeypatch.setattr(sentry_sdk, "init", lambda **kwargs: calls.append(kwargs))
    assert sentry.init_sentry("") is False and calls == []
    assert sentry.init_sentry("https://key@sentry.invalid/1") is True
    (kwargs,) = calls
    assert kwargs["dsn"] == "https://key@sentry.invalid/1"
    assert [type(i).__name__ for i in kwargs["integrations"]] == ["FlaskIntegration"]
