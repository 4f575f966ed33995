"""Self-healing refresh (SPEC §6.3): transient failures retry, content failures are remembered,
an engine-build failure is isolated, a date-mismatched group is reported, one deadline per pass.

In-process app over a real local model store; failures are injected at the store boundary
(``read_bytes`` / ``stat``) and the registry's monotonic clock is a settable seam so retry
backoff is driven without sleeping.
"""

from __future__ import annotations

import datetime as dt
import os
import random
import threading
import time

import pytest

from taar import artifacts, codecs
from taar.publishing import publish, publish_group
from taar.recommenders import build_engine
from taar_web.refresher import Refresher
from taar_web.registry import is_content_failure
from tests.fixtures import web_models as fixtures
from tests.fixtures.registry import LOCALE_NAME, models_entry, results, write_latest

pytestmark = pytest.mark.unit


class Mono:
    """A settable monotonic clock."""

    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def registry_of(app):
    return app.extensions["taar_models"]


@pytest.fixture
def app(make_app, store):  # noqa: F811
    app = make_app(model_store=store)
    registry_of(app).monotonic = Mono()
    return app


def fail_reads(monkeypatch, store, prefix, exc, times):  # noqa: F811
    """Make ``times`` reads of objects under ``prefix`` raise ``exc`` (then read normally)."""
    original = store.read_bytes
    left = [times]

    def read(name):
        if name.startswith(prefix) and left[0] > 0:
            left[0] -= 1
            raise exc
        return original(name)

    monkeypatch.setattr(store, "read_bytes", read)
    return left


@pytest.mark.parametrize("exc", [OSError("connection reset"), TimeoutError("read timed out"),
                                 PermissionError("403 Forbidden")])
def test_transient_failure_is_retried_with_backoff_and_heals(app, store, monkeypatch, exc):  # noqa: F811
    registry = registry_of(app)
    publish(store, "locale", {"en-US": [["b@x", 1.0]]}, dt.date(2024, 3, 11), "tests/web")
    fail_reads(monkeypatch, store, "taar/locale/", exc, times=2)

    assert registry.check_once()["locale"] == "failed"
    state = registry.states["locale"]
    assert state.failed_signature is None  # not remembered
    # first delay: 5 s x [0.5, 1]
    assert 2.5 <= registry.seconds_to_next_retry() <= 5.0
    assert registry.needs_retry
    # before the retry is due the object is not read again
    assert registry.check_once()["locale"] == "failed"
    assert "next retry" in models_entry(app, "locale")["last_refresh"]["error"]

    registry.monotonic.t += 5.0
    assert registry.check_once()["locale"] == "failed"  # second injected failure
    assert state.retry_attempts == 2
    assert 5.0 <= registry.seconds_to_next_retry() <= 10.0  # 10 s x [0.5, 1]

    registry.monotonic.t += 10.0
    assert registry.check_once()["locale"] == "swapped"
    assert (state.retry_attempts, state.retry_at) == (0, None)
    assert models_entry(app, "locale")["version"] == "20240311"


def test_backoff_is_capped_by_the_refresh_interval(app, store, monkeypatch):  # noqa: F811
    registry = registry_of(app)
    publish(store, "locale", {"en-US": [["b@x", 1.0]]}, dt.date(2024, 3, 11), "tests/web")
    fail_reads(monkeypatch, store, "taar/locale/", OSError("down"), times=100)
    for _ in range(12):  # 5 x 2^11 s would be hours; capped at the 60 s refresh interval of the fixture
        registry.check_once()
        registry.monotonic.t += 1000.0
    registry.monotonic.t -= 1000.0
    assert 30.0 <= registry.seconds_to_next_retry() <= 60.0


def test_checksum_mismatch_during_a_write_is_transient(app, store):  # noqa: F811
    registry = registry_of(app)
    good = codecs.encode({"en-US": [["b@x", 1.0]]})
    write_latest(store, LOCALE_NAME, good, sha256="0" * 64)  # metadata of a write still in flight
    assert registry.check_once()["locale"] == "failed"
    assert registry.states["locale"].failed_signature is None
    write_latest(store, LOCALE_NAME, good)  # the writer finished
    registry.monotonic.t += 5.0
    assert registry.check_once()["locale"] == "swapped"


def test_corrupt_object_stays_refused_until_a_new_version(app, store, monkeypatch):  # noqa: F811
    registry = registry_of(app)
    write_latest(store, LOCALE_NAME, b"not bz2 at all")
    assert registry.check_once()["locale"] == "failed"
    reads = []
    original = store.read_bytes
    monkeypatch.setattr(store, "read_bytes", lambda name: reads.append(name) or original(name))
    for _ in range(3):
        registry.monotonic.t += 3600.0
        assert registry.check_once()["locale"] == "failed"
    assert reads == []  # never downloaded again
    assert registry.seconds_to_next_retry() is None
    publish(store, "locale", {"en-US": [["b@x", 1.0]]}, dt.date(2024, 3, 12), "tests/web")
    assert registry.check_once()["locale"] == "swapped"


def test_content_and_transient_errors_are_told_apart():
    from taar.artifacts import ArtifactError
    from taar.codecs import DecodeError
    from taar.storage import ArtifactNotFound, ChecksumMismatch

    assert is_content_failure(ArtifactError("locale", "bad"))
    assert is_content_failure(DecodeError("bad bz2"))
    assert not is_content_failure(ChecksumMismatch("u", "n", "a", "b"))
    assert not is_content_failure(ArtifactNotFound("locale", "u", ["n"]))
    assert not is_content_failure(OSError("reset"))
    assert not is_content_failure(TimeoutError())


def test_one_bad_artifact_leaves_the_others_swapping(make_app, store, metrics):  # noqa: F811
    def builder(models, **kwargs):
        locale = models.get("locale") or {}
        if "xx-BOOM" in locale:  # a valid artifact this engine cannot be built from
            raise RuntimeError("engine cannot use locale xx-BOOM")
        return build_engine(models, **kwargs)

    app = make_app(model_store=store)
    registry = registry_of(app)
    registry.engine_builder = builder
    publish(store, "locale", {"xx-BOOM": [["b@x", 1.0]]}, dt.date(2024, 3, 11), "tests/web")
    publish(store, "ranking", {"a@x": 100, "b@x": 50, "c@x": 40, "d@x": 30, "e@x": 25}, dt.date(2024, 3, 11),
            "tests/web")
    new_collab = fixtures.models()
    publish_group(store, {k: new_collab[k] for k in ("item_matrix", "addon_mapping")}, dt.date(2024, 3, 11),
                  "tests/web")

    outcomes = registry.check_once()
    assert outcomes["locale"] == "failed"
    assert (outcomes["ranking"], outcomes["item_matrix"], outcomes["addon_mapping"]) == ("swapped",) * 3
    assert "engine build failed" in models_entry(app, "locale")["last_refresh"]["error"]
    assert models_entry(app, "locale")["version"] == "20240310"  # the old copy keeps serving
    assert registry.states["locale"].failed_signature is not None  # remembered for this version
    assert results(app) == ["c@x", "d@x", "e@x"]


def test_group_held_back_for_a_date_mismatch_is_reported(app, store):  # noqa: F811
    registry = registry_of(app)
    new = fixtures.models()
    # a publisher that died between the two members: only item_matrix has the new date
    write_latest(store, artifacts.get("item_matrix").read_names()[0], codecs.encode(new["item_matrix"]))
    registry.check_once()
    assert models_entry(app, "item_matrix")["version"] == "20240310"

    body = app.test_client().get("/__models__").get_json()
    assert list(body["groups"]) == ["collaborative"]
    assert body["groups"]["collaborative"]["status"] == "held_back"
    assert "item_matrix=20240311" in body["groups"]["collaborative"]["reason"]
    response = app.test_client().get("/__heartbeat__")
    heartbeat = response.get_json()
    assert (response.status_code, heartbeat["checks"]["models.groups"]) == (200, "warning")
    assert list(heartbeat["details"]["models.groups"]["messages"]) == ["taar.models.W004"]

    write_latest(store, artifacts.get("addon_mapping").read_names()[0], codecs.encode(new["addon_mapping"]))
    outcomes = registry.check_once()
    assert (outcomes["item_matrix"], outcomes["addon_mapping"]) == ("swapped", "swapped")
    assert app.test_client().get("/__models__").get_json()["groups"] == {}
    assert app.test_client().get("/__heartbeat__").get_json()["checks"]["models.groups"] == "ok"


def test_one_deadline_bounds_the_whole_startup_pass(make_app, store, monkeypatch):  # noqa: F811
    release = threading.Event()
    original = store.stat

    def hanging_stat(name):
        if name.startswith("taar/locale/") or name.startswith("taar/similarity/"):
            release.wait(30)  # an unreachable store: stat never answers
        return original(name)

    monkeypatch.setattr(store, "stat", hanging_stat)
    started = time.monotonic()
    try:
        app = make_app(model_store=store, model_load_timeout_seconds=1.0)
        elapsed = time.monotonic() - started
    finally:
        release.set()
    assert elapsed < 10.0  # far below the 30 s hang: the pass deadline is 1 s
    entry = models_entry(app, "locale")
    assert entry["status"] == "error" and "stat took longer than 1 s" in entry["last_refresh"]["error"]
    # the objects that answered were still downloaded within the same deadline
    assert models_entry(app, "whitelist")["status"] == "loaded"


def test_refresher_comes_back_when_a_retry_is_due(app, store, monkeypatch):  # noqa: F811
    registry = registry_of(app)
    publish(store, "locale", {"en-US": [["b@x", 1.0]]}, dt.date(2024, 3, 11), "tests/web")
    fail_reads(monkeypatch, store, "taar/locale/", OSError("down"), times=1)
    registry.check_once()
    refresher = Refresher(registry, 3600.0)
    assert refresher.next_delay() == pytest.approx(registry.seconds_to_next_retry())
    assert refresher.next_delay() <= 5.0


def test_forked_workers_draw_different_jitter(app):
    refresher = Refresher(registry_of(app), 100.0, rng=random.Random(1))
    reads = []
    for _ in range(2):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child does what post_fork does, without starting a thread
            os.close(r)
            refresher.reseed()
            os.write(w, repr(refresher.next_delay()).encode())
            os._exit(0)
        os.close(w)
        os.waitpid(pid, 0)
        reads.append(float(os.read(r, 64)))
        os.close(r)
    assert all(90.0 <= d <= 110.0 for d in reads)
    assert reads[0] != reads[1]
