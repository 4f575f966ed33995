"""Web test fixtures: an app over a temporary local model store and a SQLite profile store.

The fixture models are published once per session with ``taar.publishing``
(the way the jobs publish them); each test gets a fresh app built by
``create_app`` with a fixed clock, a fixed seed and a recording metrics backend.
``make_app(**overrides)`` builds variants (other settings, stores or clock).
"""

from __future__ import annotations

import dataclasses
import datetime as dt

import pytest

from taar.storage import open_model_store, open_profile_store
from taar_web.app import create_app
from taar_web.metrics import RecordingBackend
from taar_web.settings import Settings

from . import models as fixtures


class Clock:
    """A settable clock returning an aware UTC datetime."""

    def __init__(self, now: dt.datetime = fixtures.NOW):
        self.now = now

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, **delta) -> None:
        self.now += dt.timedelta(**delta)


@pytest.fixture(scope="session")
def model_store_dir(tmp_path_factory):
    """A local model store holding every fixture model, published for ``fixtures.DATE``."""
    root = tmp_path_factory.mktemp("models")
    fixtures.publish_models(open_model_store(str(root)), fixtures.models())
    return root


@pytest.fixture(scope="session")
def profile_uri(tmp_path_factory):
    """A SQLite profile store with the fixture profiles."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('profiles') / 'profiles.sqlite3'}"
    store = open_profile_store(uri)
    store.ensure_table()
    store.put_many(fixtures.profile_rows(), ts_ms=1_710_115_200_000)
    return uri


@pytest.fixture
def settings(model_store_dir, profile_uri, tmp_path) -> Settings:
    """Deterministic settings: no randomisation, 3 results, fixed seed, no metrics backend, open client_has_addon."""
    return Settings(
        model_store=str(model_store_dir),
        profile_store=profile_uri,
        max_results=3,
        randomize=False,
        random_seed=42,
        metrics_backend="none",
        version_file=str(tmp_path / "version.json"),
        model_refresh_seconds=60.0,
        # the route's own tests cover the fail-closed default; elsewhere it is open as in the demo
        client_has_addon_public=True,
    )


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def metrics() -> RecordingBackend:
    return RecordingBackend()


@pytest.fixture
def make_app(settings, clock, metrics):
    """Build an app; keyword arguments override settings fields or ``create_app`` seams.

    ``model_store`` / ``profile_store`` given as a string are the settings' URIs
    (``create_app`` opens them); given as an object they are the store seams.
    """
    seams = ("model_store", "profile_store", "clock", "seed_source", "metrics_backend")

    def make(**overrides):
        kwargs = {"clock": clock, "metrics_backend": metrics}
        kwargs.update({k: overrides.pop(k) for k in list(overrides)
                       if k in seams and not isinstance(overrides[k], str)})
        return create_app(dataclasses.replace(settings, **overrides), **kwargs)

    return make


@pytest.fixture
def app(make_app):
    return make_app()


@pytest.fixture
def client(app):
    return app.test_client()
