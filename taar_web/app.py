"""The application factory (SPEC §4.1, §6.2).

``create_app`` parses the settings (unless given), opens the stores, loads every
service artifact once (in parallel, before gunicorn forks its workers so they
share the model pages), and wires the blueprints, error handlers and request
logging. Nothing happens at import time; only ``taar_web.wsgi`` builds an app.

Seams for tests: ``settings``, ``model_store``, ``profile_store``, ``clock``
(returns an aware UTC datetime), ``seed_source`` (returns a 63-bit int) and
``metrics_backend`` (a markus backend).
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import pickle
from importlib import resources

import flask

from taar.recommenders import RecommendationManager, build_engine, fresh_seed
from taar.storage import open_model_store, open_profile_store

from . import request_log, services, validation
from .fastpath import FastPath
from .health import HealthChecker
from .metrics import build_metrics
from .profiles import ProfileFetcher
from .refresher import Refresher
from .registry import ModelRegistry
from .sentry import init_sentry
from .settings import Settings, SettingsError
from .views import register_blueprints

logger = logging.getLogger(__name__)

#: Lower bound of the profile-store warm-up at worker start.
WARM_MIN_SECONDS = 2.0


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _open(variable: str, opener, uri: str):
    try:
        return opener(uri)
    except ValueError as exc:
        raise SettingsError(f"{variable}: {exc}") from exc


def _make_manager(fetcher, settings, engine) -> RecommendationManager:
    return RecommendationManager(engine, fetcher, randomize=settings.randomize,
                                 candidate_pool=settings.candidate_pool)


def create_app(settings: Settings | None = None, *, model_store=None, profile_store=None, clock=None,
               seed_source=None, metrics_backend=None, start_refresher: bool = False) -> flask.Flask:
    """Build the TAAR web app; models are loaded before this returns."""
    settings = settings if settings is not None else Settings.from_env()
    request_log.configure_logging(settings.log_level)
    init_sentry(settings.sentry_dsn)
    clock = clock or utcnow
    metrics = build_metrics(settings, metrics_backend, on_timing=request_log.add_timing)
    if model_store is None:
        model_store = _open("TAAR_MODEL_STORE", open_model_store, settings.model_store)
    if profile_store is None:
        # Opening is lazy (no connection before gunicorn forks); the first request connects.
        profile_store = _open("TAAR_PROFILE_STORE", open_profile_store, settings.profile_store)
    fetcher = ProfileFetcher(profile_store, settings.profile_timeout_s, metrics=metrics)

    registry = ModelRegistry(settings, model_store, clock=clock, metrics=metrics, engine_builder=build_engine,
                             manager_factory=functools.partial(_make_manager, fetcher, settings))
    started = clock()
    registry.check_once()
    logger.info("models loaded", extra={"load_s": round((clock() - started).total_seconds(), 3),
                                        "versions": registry.snapshot.versions})

    app = flask.Flask(__name__, static_folder=None)
    # Only the documented methods: OPTIONS gets the 405 of any other method.
    app.config["PROVIDE_AUTOMATIC_OPTIONS"] = False
    app.extensions[services.EXTENSION] = services.Services(
        settings=settings, metrics=metrics, registry=registry, profile_store=profile_store,
        profile_fetcher=fetcher, clock=clock, seed_source=seed_source or fresh_seed,
        health=HealthChecker(registry, profile_store, settings, clock),
    )
    registry.init_app(app)
    app.extensions["taar_refresher"] = Refresher(registry, settings.model_refresh_seconds)
    app.extensions["taar_process"] = {"started_at": started.isoformat()}
    app.extensions["taar_openapi"] = resources.files("taar_web").joinpath("openapi.json").read_bytes()

    request_log.init_app(app)
    validation.register_error_handlers(app)
    # the plain per-user and TAARlite GETs skip Flask's request machinery (same answer, logs and metrics)
    fast_path = app.extensions["taar_fast_path"] = FastPath(app, app.wsgi_app)
    app.wsgi_app = validation.close_connection_after(fast_path)
    register_blueprints(app)
    if start_refresher:
        app.extensions["taar_refresher"].start()
    return app


def worker_started(app: flask.Flask) -> None:
    """Per-process start after a fork (gunicorn ``post_fork``): fresh store clients, refresher.

    The model store was used by the master for the initial load; a pickle round
    trip gives this worker its own copy whose client is created on first use, so
    workers never share the master's HTTP connections. The refresher checks the
    store at once (the master's models may be old: respawn, HUP, ``max_requests``)
    and the profile store's client is built and connected before the worker
    serves its first request (bounded: a slow store leaves it connecting).
    """
    registry = app.extensions["taar_models"]
    registry.store = pickle.loads(pickle.dumps(registry.store))
    app.extensions["taar_process"]["started_at"] = utcnow().isoformat()
    app.extensions["taar_refresher"].start(check_now=True)
    # Connect the profile store now, not in the first request (SPEC §6.2).
    svc = app.extensions[services.EXTENSION]
    svc.profile_fetcher.warm(max(WARM_MIN_SECONDS, 10 * svc.settings.profile_timeout_s))
