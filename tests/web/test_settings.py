"""Settings parsed once from the environment (SPEC §6.1)."""

from __future__ import annotations

import pytest

from taar.artifacts import DEFAULT_REQUIRED_MODELS, SERVICE_ARTIFACTS
from taar_web.app import create_app
from taar_web.settings import Settings, SettingsError

pytestmark = pytest.mark.unit


def test_empty_environment_gives_the_spec_defaults():
    s = Settings.from_env({})
    assert (s.model_store, s.profile_store) == ("./var/models", "sqlite:///./var/profiles.sqlite3")
    assert (s.max_results, s.taarlite_max_results, s.taarlite_truncate_effective) == (10, 4, 20)
    assert (s.taarlite_cache_max_age, s.randomize, s.random_seed, s.candidate_pool) == (3600, True, None, 0)
    assert (s.model_refresh_seconds, s.model_max_age_hours, s.model_load_timeout_seconds) == (3600, 48, 120)
    assert s.required_models == DEFAULT_REQUIRED_MODELS and set(SERVICE_ARTIFACTS) - set(s.required_models) == {
        "item_item"}  # optional by default (SPEC §6.3)
    assert (s.profile_timeout_ms, s.client_has_addon_token, s.max_body_bytes, s.max_promoted) == (150, None, 65536, 100)
    assert (s.version_file, s.sentry_dsn, s.statsd_port, s.metrics_backend, s.log_level) == (
        "version.json", "", 8125, "logging", "INFO")
    assert (s.port, s.workers, s.threads) == (8000, 4, 8)
    assert (s.client_has_addon_public, s.keepalive_seconds, s.header_timeout_seconds) == (False, 620, 10.0)


def test_every_variable_is_read():
    s = Settings.from_env({
        "TAAR_MODEL_STORE": "gs://bucket/prefix", "TAAR_PROFILE_STORE": "bigtable://p/i/t",
        "TAAR_MAX_RESULTS": "5", "TAARLITE_MAX_RESULTS": "3", "TAARLITE_CACHE_MAX_AGE": "60",
        "TAAR_RANDOMIZE": "false", "TAAR_RANDOM_SEED": "123", "TAAR_CANDIDATE_POOL": "50",
        "TAAR_MODEL_REFRESH_SECONDS": "30", "TAAR_MODEL_MAX_AGE_HOURS": "0",
        "TAAR_REQUIRED_MODELS": "whitelist, locale", "TAAR_MODEL_LOAD_TIMEOUT_SECONDS": "10",
        "TAAR_PROFILE_TIMEOUT_MS": "80", "TAAR_CLIENT_HAS_ADDON_TOKEN": "tok", "TAAR_MAX_BODY_BYTES": "1024",
        "TAAR_MAX_PROMOTED": "5", "TAAR_VERSION_FILE": "/app/version.json", "SENTRY_DSN": "",
        "STATSD_HOST": "statsd.local", "STATSD_PORT": "9125", "TAAR_LOG_LEVEL": "debug",
        "PORT": "9000", "WORKERS": "2", "THREADS": "4", "TAAR_CLIENT_HAS_ADDON_PUBLIC": "true",
        "TAAR_KEEPALIVE_SECONDS": "700", "TAAR_HEADER_TIMEOUT_SECONDS": "2.5",
    })
    assert (s.model_store, s.profile_store, s.max_results, s.taarlite_max_results) == (
        "gs://bucket/prefix", "bigtable://p/i/t", 5, 3)
    assert (s.taarlite_truncate_effective, s.taarlite_cache_max_age, s.randomize, s.random_seed) == (15, 60, False, 123)
    assert (s.candidate_pool, s.model_refresh_seconds, s.model_max_age_hours) == (50, 30.0, 0.0)
    assert s.required_models == ("whitelist", "locale")
    assert (s.model_load_timeout_seconds, s.profile_timeout_ms, s.profile_timeout_s) == (10.0, 80, 0.08)
    assert (s.client_has_addon_token, s.max_body_bytes, s.max_promoted, s.version_file) == (
        "tok", 1024, 5, "/app/version.json")
    assert (s.statsd_host, s.statsd_port, s.metrics_backend, s.log_level) == ("statsd.local", 9125, "statsd", "DEBUG")
    assert (s.port, s.workers, s.threads) == (9000, 2, 4)
    assert (s.client_has_addon_public, s.keepalive_seconds, s.header_timeout_seconds) == (True, 700, 2.5)


def test_explicit_truncate_wins():
    assert Settings.from_env({"TAARLITE_TRUNCATE": "7"}).taarlite_truncate_effective == 7


def test_empty_required_list_means_nothing_required():
    assert Settings.from_env({"TAAR_REQUIRED_MODELS": ""}).required_models == ()


@pytest.mark.parametrize(("env", "variable"), [
    ({"TAAR_MAX_RESULTS": "ten"}, "TAAR_MAX_RESULTS"),
    ({"TAAR_MAX_RESULTS": "0"}, "TAAR_MAX_RESULTS"),
    ({"TAARLITE_MAX_RESULTS": "-1"}, "TAARLITE_MAX_RESULTS"),
    ({"TAARLITE_MAX_RESULTS": "4", "TAARLITE_TRUNCATE": "3"}, "TAARLITE_TRUNCATE"),
    ({"TAAR_RANDOMIZE": "maybe"}, "TAAR_RANDOMIZE"),
    ({"TAAR_RANDOM_SEED": "-5"}, "TAAR_RANDOM_SEED"),
    ({"TAAR_RANDOM_SEED": str(2**63)}, "TAAR_RANDOM_SEED"),
    ({"TAAR_MODEL_REFRESH_SECONDS": "nan"}, "TAAR_MODEL_REFRESH_SECONDS"),
    ({"TAAR_MODEL_REFRESH_SECONDS": "0"}, "TAAR_MODEL_REFRESH_SECONDS"),
    ({"TAAR_MODEL_MAX_AGE_HOURS": "-1"}, "TAAR_MODEL_MAX_AGE_HOURS"),
    ({"TAAR_REQUIRED_MODELS": "whitelist,amo_database"}, "TAAR_REQUIRED_MODELS"),
    ({"TAAR_PROFILE_TIMEOUT_MS": "1.5"}, "TAAR_PROFILE_TIMEOUT_MS"),
    ({"TAAR_MAX_BODY_BYTES": "0"}, "TAAR_MAX_BODY_BYTES"),
    ({"STATSD_PORT": "70000"}, "STATSD_PORT"),
    ({"TAAR_METRICS_BACKEND": "prometheus"}, "TAAR_METRICS_BACKEND"),
    ({"TAAR_METRICS_BACKEND": "statsd"}, "TAAR_METRICS_BACKEND"),  # without STATSD_HOST
    ({"TAAR_LOG_LEVEL": "LOUD"}, "TAAR_LOG_LEVEL"),
    ({"WORKERS": "0"}, "WORKERS"),
    ({"THREADS": "x"}, "THREADS"),
    ({"PORT": "http"}, "PORT"),
])
def test_invalid_values_name_the_variable(env, variable):
    with pytest.raises(SettingsError, match=variable):
        Settings.from_env(env)


@pytest.mark.parametrize(("field", "value", "variable"), [
    ("model_store", "s3://bucket", "TAAR_MODEL_STORE"),
    ("profile_store", "postgres://db", "TAAR_PROFILE_STORE"),
])
def test_unusable_store_uri_aborts_startup_naming_the_variable(field, value, variable):
    with pytest.raises(SettingsError, match=variable):
        create_app(Settings(**{field: value, "metrics_backend": "none"}))


def test_create_app_reads_the_environment_when_not_given_settings(monkeypatch, model_store_dir, profile_uri):
    monkeypatch.setenv("TAAR_MODEL_STORE", str(model_store_dir))
    monkeypatch.setenv("TAAR_PROFILE_STORE", profile_uri)
    monkeypatch.setenv("TAAR_MAX_RESULTS", "7")
    monkeypatch.setenv("TAAR_METRICS_BACKEND", "none")
    app = create_app()
    assert app.extensions["taar"].settings.max_results == 7
    assert app.extensions["taar_models"].snapshot.versions["locale"] == "20240310"
