"""Model refresh and hot swap (SPEC §6.3, §12.2): swaps, refusals, group consistency, live traffic.

Each test publishes the fixture models for 2024-03-10 into its own store, builds
an app, then changes the store and drives ``refresher.check_once()`` directly.
With the fixture models the known client gets [c, d, e] (see ``models.py``).
"""

from __future__ import annotations

import datetime as dt
import threading
import time

import pytest

from taar import codecs
from taar.publishing import publish, publish_group
from taar.storage import open_model_store
from taar_web.app import create_app, worker_started
from taar_web.refresher import Refresher
from tests.fixtures import web_models as fixtures
from tests.fixtures.registry import LOCALE_NAME, models_entry, results, write_latest

pytestmark = pytest.mark.unit

NEXT = dt.date(2024, 3, 11)
KNOWN_URL = f"/v1/api/recommendations/{fixtures.KNOWN}/"
LITE_URL = "/taarlite/api/v1/addon_recommendations/a@x/"
@pytest.fixture
def app(make_app, store):
    return make_app(model_store=store)


@pytest.fixture
def refresher(app):
    return app.extensions["taar_refresher"]



def test_unchanged_store_swaps_nothing(app, refresher):
    before = app.extensions["taar_models"].snapshot
    outcomes = refresher.check_once()
    assert set(outcomes.values()) == {"unchanged"}
    assert app.extensions["taar_models"].snapshot is before


def test_new_version_is_swapped_in(app, refresher, store, metrics):
    publish(store, "locale", {"en-US": [["b@x", 1.0]]}, NEXT, "tests/web")
    outcomes = refresher.check_once()
    assert outcomes["locale"] == "swapped"
    assert {k for k, v in outcomes.items() if v != "unchanged"} == {"locale"}
    # c 1.0 (collaborative); b 0.0 + 1.0 x 0.5 = 0.5 and d 0.5 tie -> GUID order b, d
    assert results(app) == ["c@x", "b@x", "d@x"]
    entry = models_entry(app, "locale")
    assert (entry["version"], entry["last_refresh"]["outcome"]) == ("20240311", "swapped")
    assert metrics.count("taar.model_refresh", "outcome:swapped") == 11  # 10 at start + 1


@pytest.mark.parametrize("data", [
    b"BZh91AY&SY garbage",  # undecodable
    codecs.encode({}),  # decodes, but an empty locale model is unusable
    codecs.encode({"en-US": "not a list"}),  # wrong shape
])
def test_bad_new_version_is_refused_and_old_copy_keeps_serving(app, refresher, store, metrics, data):
    write_latest(store, LOCALE_NAME, data)
    outcomes = refresher.check_once()
    assert outcomes["locale"] == "failed"
    assert results(app) == ["c@x", "d@x", "e@x"]
    entry = models_entry(app, "locale")
    assert (entry["status"], entry["version"]) == ("loaded", "20240310")
    assert entry["last_refresh"]["outcome"] == "failed" and entry["last_refresh"]["error"]
    assert metrics.count("taar.model_refresh", "outcome:failed") == 1


def test_failed_refresh_is_a_heartbeat_warning(app, refresher, store):
    write_latest(store, LOCALE_NAME, b"not bz2")
    refresher.check_once()
    response = app.test_client().get("/__heartbeat__")
    body = response.get_json()
    assert (response.status_code, body["status"]) == (200, "warning")
    assert list(body["details"]["models.locale"]["messages"]) == ["taar.models.W001"]


def test_checksum_mismatch_is_refused(app, refresher, store):
    write_latest(store, LOCALE_NAME, codecs.encode({"en-US": [["b@x", 1.0]]}), sha256="0" * 64)
    assert refresher.check_once()["locale"] == "failed"
    assert "checksum" in models_entry(app, "locale")["last_refresh"]["error"]


def test_refused_copy_is_not_downloaded_again(app, refresher, store, monkeypatch):
    write_latest(store, LOCALE_NAME, b"not bz2")
    refresher.check_once()
    reads = []
    original = store.read_bytes
    monkeypatch.setattr(store, "read_bytes", lambda name: reads.append(name) or original(name))
    assert refresher.check_once()["locale"] == "failed"
    assert reads == []


def test_good_version_after_a_refused_one_is_swapped(app, refresher, store):
    write_latest(store, LOCALE_NAME, b"not bz2")
    refresher.check_once()
    publish(store, "locale", {"en-US": [["b@x", 1.0]]}, dt.date(2024, 3, 12), "tests/web")
    assert refresher.check_once()["locale"] == "swapped"
    assert models_entry(app, "locale")["last_refresh"] == {
        "at": fixtures.NOW.isoformat(), "outcome": "swapped", "error": None}


NEW_FACTORS = {**fixtures.FACTORS, "d@x": [2.0, 0.0]}


def new_collaborative():
    from taar.hashing import item_id

    matrix = [{"id": item_id(g), "features": f} for g, f in NEW_FACTORS.items()]
    mapping = {str(item_id(g)): {"id": g, "name": g, "isWebextension": True} for g in NEW_FACTORS}
    return matrix, mapping


def test_group_swaps_only_when_taar_dates_agree(app, refresher, store):
    matrix, mapping = new_collaborative()
    write_latest(store, "addon_recommender/item_matrix.json.bz2", codecs.encode(matrix), "20240311")
    outcomes = refresher.check_once()
    assert (outcomes["item_matrix"], outcomes["addon_mapping"]) == ("unchanged", "unchanged")
    assert "taar-dates differ" in models_entry(app, "item_matrix")["last_refresh"]["error"]
    assert app.extensions["taar_models"].needs_retry
    assert results(app) == ["c@x", "d@x", "e@x"]

    write_latest(store, "addon_recommender/addon_mapping.json.bz2", codecs.encode(mapping), "20240311")
    outcomes = refresher.check_once()
    assert (outcomes["item_matrix"], outcomes["addon_mapping"]) == ("swapped", "swapped")
    assert not app.extensions["taar_models"].needs_retry
    # d is now [2, 0]: d 2.0, c 1.0 + 0.2 = 1.2, e 0.3
    assert results(app) == ["d@x", "c@x", "e@x"]


def test_group_published_together_swaps_together(app, refresher, store):
    matrix, mapping = new_collaborative()
    publish_group(store, {"item_matrix": matrix, "addon_mapping": mapping}, NEXT, "tests/web")
    outcomes = refresher.check_once()
    assert (outcomes["item_matrix"], outcomes["addon_mapping"]) == ("swapped", "swapped")
    assert models_entry(app, "addon_mapping")["version"] == "20240311"


def test_group_member_without_metadata_agrees(app, refresher, store):
    matrix, _ = new_collaborative()
    write_latest(store, "addon_recommender/item_matrix.json.bz2", codecs.encode(matrix), date=None)
    assert refresher.check_once()["item_matrix"] == "swapped"
    assert models_entry(app, "item_matrix")["version"] == "unknown"
    assert results(app) == ["d@x", "c@x", "e@x"]


def test_group_with_a_bad_member_does_not_move(app, refresher, store):
    matrix, _ = new_collaborative()
    write_latest(store, "addon_recommender/item_matrix.json.bz2", codecs.encode(matrix), "20240311")
    write_latest(store, "addon_recommender/addon_mapping.json.bz2", b"corrupt", "20240311")
    outcomes = refresher.check_once()
    assert (outcomes["item_matrix"], outcomes["addon_mapping"]) == ("failed", "failed")
    assert models_entry(app, "item_matrix")["version"] == "20240310"
    assert results(app) == ["c@x", "d@x", "e@x"]


def test_etag_follows_the_loaded_coinstall(app, refresher, store):
    old = app.test_client().get(LITE_URL).headers["ETag"]
    coinstall = fixtures.models()["coinstall"]
    coinstall["a@x"]["f@x"] = coinstall.setdefault("f@x", {})["a@x"] = 3
    publish(store, "coinstall", coinstall, NEXT, "tests/web")
    refresher.check_once()
    response = app.test_client().get(LITE_URL, headers={"If-None-Match": old})
    assert response.status_code == 200 and response.headers["ETag"] != old


def test_missing_required_model_is_retried_and_loaded(make_app, tmp_path):
    store = open_model_store(str(tmp_path / "models"))
    objs = fixtures.models()
    whitelist = objs.pop("whitelist")
    fixtures.publish_models(store, objs)
    app = make_app(model_store=store, model_refresh_seconds=3600.0)
    registry, refresher = app.extensions["taar_models"], app.extensions["taar_refresher"]
    assert registry.needs_retry and refresher.next_delay() == 60.0
    publish(store, "whitelist", whitelist, fixtures.DATE, "tests/web")
    assert refresher.check_once()["whitelist"] == "swapped"
    assert not registry.needs_retry
    assert app.test_client().get("/__heartbeat__").status_code == 200


def test_next_delay_is_jittered_by_ten_percent(app):
    import random

    refresher = Refresher(app.extensions["taar_models"], 100.0, rng=random.Random(3))
    delays = [refresher.next_delay() for _ in range(200)]
    assert all(90.0 <= d <= 110.0 for d in delays)
    assert max(delays) - min(delays) > 10.0


def test_slow_artifact_times_out_without_blocking_the_rest(make_app, store, monkeypatch):
    original = store.read_bytes

    def slow(name):
        if name.startswith("taar/locale/"):
            time.sleep(1.5)
        return original(name)

    monkeypatch.setattr(store, "read_bytes", slow)
    app = make_app(model_store=store, model_load_timeout_seconds=1.0)
    entry = models_entry(app, "locale")
    assert (entry["status"], entry["last_refresh"]["outcome"]) == ("error", "failed")
    assert "longer than 1 s" in entry["last_refresh"]["error"]
    assert models_entry(app, "whitelist")["status"] == "loaded"


def test_requests_keep_succeeding_while_models_are_republished(app, refresher, store):
    failures, answers = [], set()
    stop = threading.Event()

    def hammer():
        client = app.test_client()
        while not stop.is_set():
            for url in (KNOWN_URL, LITE_URL):
                response = client.get(url)
                if response.status_code != 200:
                    failures.append((url, response.status_code))
                elif url == KNOWN_URL:
                    answers.add(tuple(response.get_json()["results"]))

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        for day in (11, 12, 13):
            date = dt.date(2024, 3, day)
            objs = fixtures.models()
            objs["locale"] = {"en-US": [["b@x", float(day)]]}
            fixtures.publish_models(store, objs, date)
            assert refresher.check_once()["locale"] == "swapped"
            time.sleep(0.05)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert failures == []
    # old answer, or with b boosted by locale (b 0.5 x day > c 1.0): [b, c, d]
    assert answers <= {("c@x", "d@x", "e@x"), ("b@x", "c@x", "d@x")}
    assert ("b@x", "c@x", "d@x") in answers
    assert models_entry(app, "locale")["version"] == "20240313"


def test_refresher_thread_picks_up_a_new_version(app, store):
    refresher = Refresher(app.extensions["taar_models"], 0.05)
    publish(store, "locale", {"en-US": [["b@x", 1.0]]}, NEXT, "tests/web")
    refresher.start()
    try:
        deadline = time.monotonic() + 10
        while models_entry(app, "locale")["version"] != "20240311" and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        refresher.stop()
    assert models_entry(app, "locale")["version"] == "20240311"
    assert not refresher.running


def test_create_app_can_start_the_refresher(settings, store, clock, metrics):
    app = create_app(settings, model_store=store, clock=clock, metrics_backend=metrics, start_refresher=True)
    refresher = app.extensions["taar_refresher"]
    try:
        assert refresher.running
    finally:
        refresher.stop()


def test_worker_start_gives_the_worker_its_own_store_and_a_refresher(app, store):
    worker_started(app)
    refresher = app.extensions["taar_refresher"]
    try:
        registry = app.extensions["taar_models"]
        assert registry.store is not store and registry.store.uri == store.uri
        assert refresher.running
    finally:
        refresher.stop()


def test_model_age_gauge_is_emitted(refresher, metrics):
    refresher.check_once()
    gauges = [r for r in metrics.records if r.stat_type == "gauge" and "model:locale" in r.tags]
    assert gauges and gauges[-1].key == "taar.model_age_seconds" and gauges[-1].value == 12 * 3600.0
