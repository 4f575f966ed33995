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
call. statsd is the production backend (RELEASING.md). During a request a
metric call only appends to the request's batch; when the request ends the
batch goes to the backends at once (statsd: into a per-process buffer that
leaves in full packets, so several requests share one ``sendto``).
"""

from __future__ import annotations

import atexit
import contextvars
import logging
import os
import socket
import threading
import time
import weakref

from markus.backends import BackendBase
from markus.main import MetricsInterface, MetricsRecord

from taar.logs import RateLimitedLog

PREFIX = "taar"
#: statsd packet payload limit: one Ethernet frame on a 1460-byte pod network (GKE's default MTU).
STATSD_MAX_PACKET_BYTES = 1432
#: A buffered statsd line leaves at most this long after it was recorded (statsd servers flush every 10 s).
STATSD_FLUSH_INTERVAL_S = 0.5

logger = logging.getLogger(__name__)
#: A backend that fails on every request is reported once a minute per process, not once per request.
_publish_failures = RateLimitedLog()
#: The same for metrics recorded outside a request (refresher, warm-up), published one by one.
_record_failures = RateLimitedLog()


class Metrics(MetricsInterface):
    """A markus interface publishing to its own backends instead of the global ones.

    Inside a request (between :func:`begin_request` and :func:`end_request`) a
    call only appends a tuple to the request's batch; the batch reaches the
    backends when the request ends, in call order, through a backend's
    ``emit_batch`` when it has one (statsd: one packet) and as markus records
    otherwise. Outside a request every call is published at once.
    """

    def __init__(self, backends, prefix: str = PREFIX, on_timing=None):
        super().__init__(prefix)
        self.backends = list(backends)
        self.on_timing = on_timing  # (name, ms): the app passes request_log.add_timing
        self._key_prefix = prefix + "." if prefix else ""

    def _record(self, stat_type: str, stat: str, value, tags) -> None:
        if not self.backends:
            return
        batch = _batch.get()
        if batch is None:
            self._publish(MetricsRecord(stat_type, self._key_prefix + stat, value, tags))
        else:
            batch.append((self, stat_type, self._key_prefix + stat, value, tags))

    def incr(self, stat, value=1, tags=None):
        self._record("incr", stat, value, tags)

    def gauge(self, stat, value, tags=None):
        self._record("gauge", stat, value, tags)

    def timing(self, stat, value, tags=None):
        if self.on_timing is not None:
            self.on_timing(stat, value)
        self._record("timing", stat, value, tags)

    def histogram(self, stat, value, tags=None):
        self._record("histogram", stat, value, tags)

    def _publish(self, record):
        """Publish one record made outside a request; like a request's batch, it never raises."""
        backends = self.backends
        try:
            if len(backends) == 1:  # nobody else sees this record: no defensive copy
                backends[0].emit_to_backend(record)
                return
            for backend in backends:
                backend.emit_to_backend(record.__copy__())
        except Exception:  # metrics must never fail their caller (a refresh pass, a profile read)
            suppressed = _record_failures.allow()
            if suppressed is not None:
                logger.warning("dropped metric %s outside a request (%d more dropped since the last report)",
                               record.key, suppressed, exc_info=True)

    def publish_batch(self, items: list[tuple]) -> None:
        """Hand a request's ``(stat_type, key, value, tags)`` items to every backend."""
        for backend in self.backends:
            emit_batch = getattr(backend, "emit_batch", None)
            if emit_batch is not None and not backend.filters:
                emit_batch(items)
            else:  # a record per item and backend, through the backend's filters
                for item in items:
                    backend.emit_to_backend(MetricsRecord(*item))

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
            self.metrics.timing(self.stat, (time.perf_counter() - self.started) * 1000.0, self.tags)
        return False


_batch: contextvars.ContextVar[list | None] = contextvars.ContextVar("taar_metrics_batch", default=None)


def begin_request() -> contextvars.Token:
    """Hold this request's metrics until :func:`end_request`."""
    return _batch.set([])


def end_request(token: contextvars.Token) -> None:
    """Publish the request's metrics to the backends (statsd: into its packet buffer); never raises."""
    batch = _batch.get() or []
    _batch.reset(token)
    if not batch:
        return
    owners: dict[int, tuple[Metrics, list]] = {}
    for metrics, *item in batch:  # one app's Metrics in practice; grouped in call order
        owners.setdefault(id(metrics), (metrics, []))[1].append(tuple(item))
    for metrics, items in owners.values():
        try:
            metrics.publish_batch(items)
        except Exception:  # metrics must never fail a request
            suppressed = _publish_failures.allow()
            if suppressed is not None:
                logger.warning("dropped %d metrics of a request (%d more failed requests since the last report)",
                               len(items), suppressed, exc_info=True)


def statsd_line(stat_type: str, key: str, value) -> str:
    """One statsd protocol line: ``key:value|c``, ``|ms`` (timings and histograms) or ``|g``."""
    if stat_type == "incr":
        return f"{key}:{value}|c"
    if stat_type == "gauge":
        # a leading minus means "decrement" to statsd: set a negative gauge from zero
        return f"{key}:0|g\n{key}:{value}|g" if value < 0 else f"{key}:{value}|g"
    return f"{key}:{value:0.6f}|ms"


class BatchingStatsdMetrics(BackendBase):
    """A statsd backend that packs many requests' metrics into each UDP packet (tags are dropped).

    Lines are buffered per process and leave joined with newlines in packets of
    at most ``statsd_maxudpsize`` bytes (default 1432: one Ethernet frame on a
    1460-byte pod network, the payload common statsd clients use); a line is
    never split. A packet leaves when the next line would not fit, when its
    oldest line is ``flush_interval_s`` old (checked on every emit and by a
    daemon thread in each process that has buffered lines), before the process
    forks (so no child inherits, and sends again, the parent's lines) and at
    exit. A ``sendto`` costs more than formatting a request's lines, so a
    per-user request, whose lines take about a fifth of a packet, pays for about
    a fifth of one. Send errors are swallowed: metrics must never fail a request.
    """

    def __init__(self, options=None, filters=None):
        super().__init__(options, filters)
        options = options or {}
        host, port = options.get("statsd_host", "localhost"), int(options.get("statsd_port", 8125))
        prefix = options.get("statsd_prefix")
        self.prefix = prefix + "." if prefix else ""
        self.maxudpsize = int(options.get("statsd_maxudpsize", STATSD_MAX_PACKET_BYTES))
        self.flush_interval_s = float(options.get("flush_interval_s", STATSD_FLUSH_INTERVAL_S))
        self.clock = options.get("clock", time.monotonic)
        family, _, _, _, self.address = socket.getaddrinfo(host, port, 0, socket.SOCK_DGRAM)[0]
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self._reset_buffer()
        _statsd_buffers.add(self)

    def _reset_buffer(self) -> None:
        """A fresh buffer, lock and flusher state (also the child's side of a fork)."""
        self._lock = threading.Lock()
        self._lines: list[str] = []
        self._size = -1  # bytes of the joined lines (counts the newlines between them)
        self._oldest = 0.0  # clock() when the first buffered line arrived
        self._flusher_pid = None

    def _send(self, packet: str) -> None:
        try:
            self.sock.sendto(packet.encode("ascii", "replace"), self.address)
        except OSError:
            pass

    def emit(self, record):
        self._add((statsd_line(record.stat_type, self.prefix + record.key, record.value),))

    def emit_batch(self, items) -> None:
        prefix = self.prefix
        self._add([statsd_line(stat_type, prefix + key, value) for stat_type, key, value, _tags in items])

    def _take(self) -> str:
        """The buffered lines as one packet, leaving the buffer empty (the caller holds the lock)."""
        packet = "\n".join(self._lines)
        self._lines, self._size = [], -1
        return packet

    def _add(self, lines) -> None:
        packets = []
        now = self.clock()
        limit = self.maxudpsize
        with self._lock:
            for line in lines:
                if self._lines and self._size + 1 + len(line) > limit:
                    packets.append(self._take())
                if not self._lines:
                    self._oldest = now
                self._lines.append(line)
                self._size += 1 + len(line)
            if self._lines and now - self._oldest >= self.flush_interval_s:
                packets.append(self._take())
            start_flusher = bool(self._lines) and self._flusher_pid is None
            if start_flusher:
                self._flusher_pid = pid = os.getpid()
        for packet in packets:  # outside the lock: other threads keep buffering
            self._send(packet)
        if start_flusher:
            threading.Thread(target=_flush_periodically, args=(weakref.ref(self), pid),
                             name="taar-statsd-flush", daemon=True).start()

    def flush(self, older_than_s: float = 0.0) -> None:
        """Send the buffered lines now (only when the oldest is at least ``older_than_s`` old)."""
        self._flush(older_than_s, None)

    def _flush(self, older_than_s: float, flusher_pid: int | None) -> bool:
        """:meth:`flush`; for the flusher thread of ``flusher_pid``: False when it should stop
        (the buffer is empty, so the next emit starts a new one, or it was forked away)."""
        with self._lock:
            if flusher_pid is not None and (self._flusher_pid != flusher_pid or not self._lines):
                if self._flusher_pid == flusher_pid:
                    self._flusher_pid = None
                return False
            if not self._lines or self.clock() - self._oldest < older_than_s:
                return True
            packet = self._take()
        self._send(packet)
        return True


def _flush_periodically(ref: weakref.ref, pid: int) -> None:
    """A process's flusher: sends lines older than the flush interval while any are buffered."""
    while True:
        backend = ref()  # a weak reference: a discarded backend ends its thread
        if backend is None:
            return
        interval = backend.flush_interval_s
        del backend
        time.sleep(interval / 2)
        backend = ref()
        if backend is None or not backend._flush(interval, pid):
            return
        del backend


#: Every statsd backend of this process, flushed before a fork and at exit.
_statsd_buffers: weakref.WeakSet[BatchingStatsdMetrics] = weakref.WeakSet()


def _flush_statsd_buffers() -> None:
    for backend in list(_statsd_buffers):
        backend.flush()


def _forget_parent_buffers() -> None:
    # the parent flushed them before forking; its lock may have been held by another thread
    for backend in list(_statsd_buffers):
        backend._reset_buffer()


os.register_at_fork(before=_flush_statsd_buffers, after_in_child=_forget_parent_buffers)
atexit.register(_flush_statsd_buffers)


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
