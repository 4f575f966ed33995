"""Service metrics (SPEC §6.5): markus with prefix ``taar`` and one backend per app.

markus keeps its configured backends in a module global, which would make two
apps in one test process share (and overwrite) each other's backends. Each app
therefore gets its own :class:`Metrics`, a markus ``MetricsInterface`` that
publishes to the backends it was built with. Code everywhere else only calls the
markus interface (``incr``, ``timing``, ``gauge``, ``timer``).
"""

from __future__ import annotations

from markus.backends import BackendBase
from markus.main import MetricsInterface

PREFIX = "taar"


class Metrics(MetricsInterface):
    """A markus interface publishing to its own backends instead of the global ones."""

    def __init__(self, backends, prefix: str = PREFIX):
        super().__init__(prefix)
        self.backends = list(backends)

    def _publish(self, record):
        for backend in self.backends:
            backend.emit_to_backend(record.__copy__())


class RecordingBackend(BackendBase):
    """Keeps every record in memory: the backend tests pass to ``create_app``."""

    def __init__(self, options=None, filters=None):
        super().__init__(options, filters)
        self.records = []

    def emit(self, record):
        self.records.append(record)

    def count(self, key: str, tag: str | None = None) -> int:
        """Sum of ``incr`` values for ``key`` (full name, e.g. ``taar.test_client``), optionally with ``tag``."""
        return sum(
            r.value for r in self.records
            if r.stat_type == "incr" and r.key == key and (tag is None or tag in (r.tags or []))
        )

    def keys(self, stat_type: str) -> list[str]:
        return [r.key for r in self.records if r.stat_type == stat_type]


def build_backend(settings) -> BackendBase | None:
    """The backend named by ``settings.metrics_backend`` (None for ``none``)."""
    if settings.metrics_backend == "statsd":
        from markus.backends.statsd import StatsdMetrics

        return StatsdMetrics(options={"statsd_host": settings.statsd_host, "statsd_port": settings.statsd_port})
    if settings.metrics_backend == "logging":
        from markus.backends.logging import LoggingMetrics

        return LoggingMetrics(options={"logger_name": "taar.metrics", "leader": "METRICS"})
    return None


def build_metrics(settings, backend: BackendBase | None = None) -> Metrics:
    """The app's metrics interface: the given backend, else the configured one."""
    if backend is None:
        backend = build_backend(settings)
    return Metrics([] if backend is None else [backend])
