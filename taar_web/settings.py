"""Service settings (SPEC §6.1): parsed once from the environment into a frozen object.

``Settings.from_env()`` reads every variable, converts it and checks its range;
a bad value raises ``SettingsError`` naming the variable, so a misconfigured
deployment fails at startup instead of answering with surprising defaults.
Tests build ``Settings(...)`` directly (or ``Settings.from_env({...})``) rather
than touching ``os.environ``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping

from taar.artifacts import DEFAULT_REQUIRED_MODELS, SERVICE_ARTIFACTS

METRICS_BACKENDS = ("statsd", "logging", "none")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


class SettingsError(ValueError):
    """An environment variable holds a value the service cannot use."""


@dataclasses.dataclass(frozen=True)
class Settings:
    """Every runtime knob of the service, with the SPEC §6.1 defaults."""

    model_store: str = "./var/models"
    profile_store: str = "sqlite:///./var/profiles.sqlite3"
    max_results: int = 10
    taarlite_max_results: int = 4
    taarlite_truncate: int | None = None  # None -> 5 x taarlite_max_results
    taarlite_cache_max_age: int = 3600
    randomize: bool = True
    random_seed: int | None = None
    candidate_pool: int = 0
    model_refresh_seconds: float = 3600.0
    model_max_age_hours: float = 48.0
    required_models: tuple[str, ...] = DEFAULT_REQUIRED_MODELS
    model_load_timeout_seconds: float = 120.0
    profile_timeout_ms: int = 150
    client_has_addon_token: str | None = None
    client_has_addon_public: bool = False  # True: no token needed (local/demo); else no token -> 401
    max_body_bytes: int = 65536
    max_promoted: int = 100
    version_file: str = "version.json"
    sentry_dsn: str = ""
    statsd_host: str | None = None
    statsd_port: int = 8125
    metrics_backend: str = "logging"
    metrics_interval_seconds: float = 60.0  # the logging backend writes one aggregated line per interval
    log_level: str = "INFO"
    port: int = 8000
    workers: int = 4
    threads: int = 8
    keepalive_seconds: int = 620  # above the Google load balancer's 600 s idle timeout
    header_timeout_seconds: float = 10.0  # a connection must send its request headers within this

    def __post_init__(self):
        unknown = [key for key in self.required_models if key not in SERVICE_ARTIFACTS]
        if unknown:
            raise SettingsError(
                f"TAAR_REQUIRED_MODELS: unknown artifact key(s) {', '.join(unknown)}; "
                f"expected some of {', '.join(SERVICE_ARTIFACTS)}"
            )
        if self.metrics_backend not in METRICS_BACKENDS:
            raise SettingsError(
                f"TAAR_METRICS_BACKEND must be one of {', '.join(METRICS_BACKENDS)}, "
                f"got {self.metrics_backend!r}"
            )
        if self.metrics_backend == "statsd" and not self.statsd_host:
            raise SettingsError("TAAR_METRICS_BACKEND=statsd needs STATSD_HOST")
        if self.log_level not in LOG_LEVELS:
            raise SettingsError(f"TAAR_LOG_LEVEL must be one of {', '.join(LOG_LEVELS)}, got {self.log_level!r}")

    @property
    def taarlite_truncate_effective(self) -> int:
        """TAARlite row truncation: the configured value or 5 x the result count."""
        return self.taarlite_truncate or 5 * self.taarlite_max_results

    @property
    def profile_timeout_s(self) -> float:
        return self.profile_timeout_ms / 1000.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Parse the settings from ``environ`` (default ``os.environ``)."""
        env = _Env(os.environ if environ is None else environ)
        statsd_host = env.text("STATSD_HOST") or None
        max_results = env.integer("TAARLITE_MAX_RESULTS", 4, minimum=1)
        return cls(
            model_store=env.text("TAAR_MODEL_STORE") or "./var/models",
            profile_store=env.text("TAAR_PROFILE_STORE") or "sqlite:///./var/profiles.sqlite3",
            max_results=env.integer("TAAR_MAX_RESULTS", 10, minimum=1),
            taarlite_max_results=max_results,
            taarlite_truncate=env.integer("TAARLITE_TRUNCATE", 5 * max_results, minimum=max_results),
            taarlite_cache_max_age=env.integer("TAARLITE_CACHE_MAX_AGE", 3600, minimum=0),
            randomize=env.boolean("TAAR_RANDOMIZE", True),
            random_seed=env.integer("TAAR_RANDOM_SEED", None, minimum=0, maximum=2**63 - 1),
            candidate_pool=env.integer("TAAR_CANDIDATE_POOL", 0, minimum=0),
            model_refresh_seconds=env.number("TAAR_MODEL_REFRESH_SECONDS", 3600.0, minimum=1.0),
            model_max_age_hours=env.number("TAAR_MODEL_MAX_AGE_HOURS", 48.0, minimum=0.0),
            required_models=env.keys("TAAR_REQUIRED_MODELS", DEFAULT_REQUIRED_MODELS),
            model_load_timeout_seconds=env.number("TAAR_MODEL_LOAD_TIMEOUT_SECONDS", 120.0, minimum=1.0),
            profile_timeout_ms=env.integer("TAAR_PROFILE_TIMEOUT_MS", 150, minimum=1),
            client_has_addon_token=env.text("TAAR_CLIENT_HAS_ADDON_TOKEN") or None,
            client_has_addon_public=env.boolean("TAAR_CLIENT_HAS_ADDON_PUBLIC", False),
            max_body_bytes=env.integer("TAAR_MAX_BODY_BYTES", 65536, minimum=1),
            max_promoted=env.integer("TAAR_MAX_PROMOTED", 100, minimum=0),
            version_file=env.text("TAAR_VERSION_FILE") or "version.json",
            sentry_dsn=env.text("SENTRY_DSN"),
            statsd_host=statsd_host,
            statsd_port=env.integer("STATSD_PORT", 8125, minimum=1, maximum=65535),
            metrics_backend=env.text("TAAR_METRICS_BACKEND").lower() or ("statsd" if statsd_host else "logging"),
            metrics_interval_seconds=env.number("TAAR_METRICS_INTERVAL_SECONDS", 60.0, minimum=0.0),
            log_level=env.text("TAAR_LOG_LEVEL").upper() or "INFO",
            port=env.integer("PORT", 8000, minimum=1, maximum=65535),
            workers=env.integer("WORKERS", 4, minimum=1),
            threads=env.integer("THREADS", 8, minimum=1),
            keepalive_seconds=env.integer("TAAR_KEEPALIVE_SECONDS", 620, minimum=0),
            header_timeout_seconds=env.number("TAAR_HEADER_TIMEOUT_SECONDS", 10.0, minimum=0.1),
        )


class _Env:
    """Typed readers over an environment mapping; errors name the variable."""

    def __init__(self, environ: Mapping[str, str]):
        self._environ = environ

    def text(self, name: str) -> str:
        return self._environ.get(name, "").strip()

    def integer(self, name, default, *, minimum=None, maximum=None):
        raw = self.text(name)
        if not raw:
            return default
        try:
            value = int(raw)
        except ValueError:
            raise SettingsError(f"{name} must be an integer, got {raw!r}") from None
        return _in_range(name, value, minimum, maximum)

    def number(self, name, default, *, minimum=None):
        raw = self.text(name)
        if not raw:
            return default
        try:
            value = float(raw)
        except ValueError:
            raise SettingsError(f"{name} must be a number, got {raw!r}") from None
        if value != value or value in (float("inf"), float("-inf")):
            raise SettingsError(f"{name} must be a finite number, got {raw!r}")
        return _in_range(name, value, minimum, None)

    def boolean(self, name, default):
        raw = self.text(name).lower()
        if not raw:
            return default
        if raw in _TRUE:
            return True
        if raw in _FALSE:
            return False
        raise SettingsError(f"{name} must be true or false, got {raw!r}")

    def keys(self, name, default):
        if name not in self._environ:
            return default
        return tuple(key.strip() for key in self._environ[name].split(",") if key.strip())


def _in_range(name, value, minimum, maximum):
    if minimum is not None and value < minimum:
        raise SettingsError(f"{name} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise SettingsError(f"{name} must be <= {maximum}, got {value}")
    return value
