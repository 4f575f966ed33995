"""Service metrics (SPEC §6.5): markus with prefix ``taar`` and one backend per app.

markus keeps its configured backends in a module global, which would make two
apps in one test process share (and overwrite) each other's backends. Each app
therefore gets its own :class:`Metrics`, a markus ``MetricsInterface`` that
publishes to the backends it was built with. Code everywhere else only calls the
markus interface (``incr``, ``timing``, ``gauge``, ``timer``).

Cheap by default: every timing also goes to the current request's
``request.summary`` line (one line per request, not one per metric), and the
``logging`` backend aggregates: it writes one ``taar.metrics`` line per interval
(counter sums, timing count/mean/max, last gauge values) instead of a line per
call. statsd is the production backend (RELEASING.md); during a request its
metrics go into one pipeline sent as one UDP packet (or a few) when the request
ends, instead of one ``sendto`` per metric.
"""

from __future__ import annotations

import contextvars
import logging
import threading
import time

from markus.backends import BackendBase
from markus.main import MetricsInterface

PREFIX = "taar"


class Metrics(MetricsInterface):
    """A markus interface publishing to its own backends instead of the global ones."""

    def __init__(self, backends, prefix: str = PREFIX, on_timing=None):
        super().__init__(prefix)
        self.backends = list(backends)
        self.on_timing = on_timing  # (name, ms): the app passes request_log.add_timing

    def _publish(self, record):
        if record.stat_type == "timing" and self.on_timing is not None:
            self.on_timing(record.key[len(self.prefix) + 1:], record.value)
        backends = self.backends
        if len(backends) == 1:  # nobody else sees this record: no defensive copy
            backends[0].emit_to_backend(record)
            return
        for backend in backends:
            backend.emit_to_backend(record.__copy__())

    def timer(self, stat, tags=None):
        """markus' ``timer`` (milliseconds, nothing recorded when the block raises), as a plain object.

        A request runs seven timers; a slotted context manager costs about a third
        of markus' generator-based one.
        """
        return _Timer(self, stat, tags)


class _Timer:
    __slots__ = ("metrics", "stat", "tags", "started")

    def __init__(self, metrics, stat, tags):
        self.metrics, self.stat, self.tags = metrics, stat, tags

    def __enter__(self):
        self.started = time.perf_counter()
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.metrics.timing(self.stat, value=(time.perf_counter() - self.started) * 1000.0, tags=self.tags)
        return False


_batch: contextvars.ContextVar[list | None] = contextvars.ContextVar("taar_metrics_batch", default=None)


def begin_request() -> contextvars.Token:
    """Batch this request's statsd metrics until :func:`end_request`."""
    return _batch.set([])


def end_request(token: contextvars.Token) -> None:
    """Send the request's batched statsd metrics (one packet per ~512 bytes)."""
    pipelines = _batch.get() or []
    _batch.reset(token)
    for pipeline in pipelines:
        try:
            pipeline.send()
        except OSError:  # metrics must never fail a request
            pass


class BatchingStatsdMetrics(BackendBase):
    """markus' statsd backend, batched per request (tags are dropped, as statsd has none)."""

    def __init__(self, options=None, filters=None):
        from statsd import StatsClient

        super().__init__(options, filters)
        options = options or {}
        self.client = StatsClient(host=options.get("statsd_host", "localhost"),
                                  port=options.get("statsd_port", 8125), prefix=options.get("statsd_prefix"),
                                  maxudpsize=options.get("statsd_maxudpsize", 512))
        self._pipeline = contextvars.ContextVar(f"taar_statsd_pipeline_{id(self)}", default=None)

    def _target(self):
        batch = _batch.get()
        if batch is None:
            return self.client
        pipeline = self._pipeline.get()
        if pipeline is None or pipeline not in batch:
            pipeline = self.client.pipeline()
            self._pipeline.set(pipeline)
            batch.append(pipeline)
        return pipeline

    def emit(self, record):
        target = self._target()
        if record.stat_type == "incr":
            target.incr(record.key, record.value)
        elif record.stat_type == "gauge":
            target.gauge(record.key, record.value)
        elif record.stat_type in ("timing", "histogram"):
            target.timing(record.key, record.value)


class AggregatingLoggingMetrics(BackendBase):
    """The ``logging`` backend: sums in memory, one log line per ``interval_s``.

    A line is written by the first emit after the interval has passed (no
    thread), so an idle process writes nothing. Thread-safe.
    """

    def __init__(self, options=None, filters=None):
        super().__init__(options, filters)
        options = options or {}
        self.logger = logging.getLogger(options.get("logger_name", "taar.metrics"))
        self.interval_s = float(options.get("interval_s", 60.0))
        self.clock = options.get("clock", time.monotonic)
        self._lock = threading.Lock()
        self._since = self.clock()
        self._reset()

    def _reset(self):
        self.counters: dict[str, float] = {}
        self.timings: dict[str, list[float]] = {}  # key -> [count, sum, max]
        self.gauges: dict[str, float] = {}

    @staticmethod
    def _name(record) -> str:
        return record.key + ("[" + ",".join(record.tags) + "]" if record.tags else "")

    def emit(self, record):
        name = self._name(record)
        with self._lock:
            if record.stat_type == "incr":
                self.counters[name] = self.counters.get(name, 0) + record.value
            elif record.stat_type in ("timing", "histogram"):
                stats = self.timings.setdefault(name, [0, 0.0, float("-inf")])
                stats[0] += 1
                stats[1] += record.value
                stats[2] = max(stats[2], record.value)
            else:
                self.gauges[name] = record.value
            due = self.clock() - self._since >= self.interval_s
        if due:
            self.flush()

    def flush(self) -> None:
        """Write the aggregated line now (when anything was recorded) and start a new interval."""
        with self._lock:
            now = self.clock()
            counters, timings, gauges = self.counters, self.timings, self.gauges
            interval = now - self._since
            self._since = now
            self._reset()
        if not (counters or timings or gauges):
            return
        self.logger.info("metrics", extra={
            "interval_s": round(interval, 3),
            "counters": counters,
            "timings": {k: {"count": c, "mean_ms": round(total / c, 3), "max_ms": round(peak, 3)}
                        for k, (c, total, peak) in timings.items()},
            "gauges": gauges,
        })


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
        return BatchingStatsdMetrics(options={"statsd_host": settings.statsd_host,
                                              "statsd_port": settings.statsd_port})
    if settings.metrics_backend == "logging":
        return AggregatingLoggingMetrics(options={"logger_name": "taar.metrics",
                                                  "interval_s": settings.metrics_interval_seconds})
    return None


def build_metrics(settings, backend: BackendBase | None = None, on_timing=None) -> Metrics:
    """The app's metrics interface: the given backend, else the configured one."""
    if backend is None:
        backend = build_backend(settings)
    return Metrics([] if backend is None else [backend], on_timing=on_timing)
