"""Request logging (SPEC §6.4) and metrics backends (SPEC §6.5)."""

from __future__ import annotations

import json
import logging
import threading
import time

import pytest

from taar_web import request_log
from taar_web.metrics import Metrics, RecordingBackend, build_backend, build_metrics
from taar_web.settings import Settings
from tests.fixtures import web_models as fixtures

pytestmark = pytest.mark.unit

RAW_CLIENT_ID = "123e4567-e89b-12d3-a456-426614174000"


def json_lines(capsys) -> list[dict]:
    return [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]


def summaries(lines):
    return [line for line in lines if line["Type"] == "request.summary"]


def test_one_summary_per_request(client, capsys):
    capsys.readouterr()
    client.get(f"/v1/api/recommendations/{fixtures.KNOWN}/", headers={"X-Request-ID": "req-1"})
    (summary,) = summaries(json_lines(capsys))
    fields = summary["Fields"]
    assert (fields["method"], fields["status"], fields["rid"]) == ("GET", 200, "req-1")
    assert fields["path"] == "/v1/api/recommendations/<hashed_client_id>/"
    assert fields["t"] >= 0
    assert summary["Logger"] == "taar" and summary["Severity"] == 6


def test_request_id_is_generated_when_absent(client, capsys):
    capsys.readouterr()
    client.get("/__lbheartbeat__")
    (summary,) = summaries(json_lines(capsys))
    assert len(summary["Fields"]["rid"]) == 32


def test_one_line_per_request_carries_the_business_fields_and_timings(client, capsys):
    capsys.readouterr()
    client.get(f"/v1/api/recommendations/{fixtures.KNOWN}/?platform=WINNT", headers={"X-Request-ID": "req-2"})
    lines = json_lines(capsys)
    assert [line["Type"] for line in lines] == ["request.summary"]  # no line per metric or event
    fields = lines[0]["Fields"]
    assert (fields["rid"], fields["client_id"], fields["seed"], fields["platform"]) == (
        "req-2", fixtures.KNOWN, 42, "WINNT")
    assert fields["route"] == "/v1/api/recommendations/<hashed_client_id>/"
    assert fields["guids"] == ["c@x", "d@x", "e@x"]
    assert {"profile_recommendation", "profile_fetch", "ensemble_recommend", "collaborative_recommend",
            "similarity_recommend", "locale_recommend"} <= set(fields["timings"])
    assert all(v >= 0 for v in fields["timings"].values())


def test_taarlite_summary_carries_mode_and_guids(client, capsys):
    capsys.readouterr()
    client.get("/taarlite/api/v1/addon_recommendations/a@x/")
    (summary,) = summaries(json_lines(capsys))
    assert summary["Fields"]["mode"] == "rownorm_sum" and len(summary["Fields"]["guids"]) == 4
    assert "guid_recommendation" in summary["Fields"]["timings"]


def test_context_does_not_leak_into_the_next_request(client, capsys):
    client.get(f"/v1/api/recommendations/{fixtures.KNOWN}/")
    capsys.readouterr()
    client.get("/__lbheartbeat__")
    (summary,) = summaries(json_lines(capsys))
    assert "client_id" not in summary["Fields"]


@pytest.mark.parametrize("path", [
    f"/v1/api/recommendations/{RAW_CLIENT_ID}/",
    f"/v1/api/client_has_addon/{RAW_CLIENT_ID}/a@x/",
    f"/v1/api/recommendations/{RAW_CLIENT_ID}",
    f"/no/such/{RAW_CLIENT_ID}/",
])
def test_raw_client_ids_are_never_logged(client, capsys, path):
    capsys.readouterr()
    assert client.get(path).status_code in (308, 400, 404)
    out = capsys.readouterr().out
    assert "request.summary" in out and RAW_CLIENT_ID not in out


def test_handler_and_filter_are_installed_once(make_app):
    make_app()
    make_app()
    ours = [h for h in logging.getLogger().handlers if h is request_log.configure_logging()]
    assert len(ours) == 1
    assert [type(f) for f in ours[0].filters] == [request_log.RequestContextFilter]
    for name in request_log.LOGGER_NAMES:
        assert logging.getLogger(name).filters == []


def test_log_level_setting_applies_to_taar_loggers(make_app):
    make_app(log_level="WARNING")
    try:
        assert logging.getLogger("taar").level == logging.WARNING
        assert logging.getLogger("taar_web").level == logging.WARNING
    finally:
        request_log.configure_logging("INFO")


def test_redact_path():
    assert request_log.redact_path(f"/x/{RAW_CLIENT_ID}/y") == "/x/<redacted>/y"
    assert request_log.redact_path(f"/x/{RAW_CLIENT_ID.replace('-', '')}") == "/x/<redacted>"
    assert request_log.redact_path(f"/x/{fixtures.KNOWN}/") == f"/x/{fixtures.KNOWN}/"


@pytest.mark.parametrize(("backend", "expected"), [
    ("logging", "AggregatingLoggingMetrics"),
    ("statsd", "BatchingStatsdMetrics"),
    ("none", None),
])
def test_backend_follows_settings(backend, expected):
    built = build_backend(Settings(metrics_backend=backend, statsd_host="127.0.0.1"))
    assert (type(built).__name__ if built is not None else None) == expected


def test_metrics_are_prefixed_taar_and_stay_per_app():
    first, second = RecordingBackend(), RecordingBackend()
    build_metrics(Settings(metrics_backend="none"), first).incr("invalid_request", tags=["route:x"])
    assert [(r.key, r.tags) for r in first.records] == [("taar.invalid_request", ["route:x"])]
    assert second.records == []


def test_no_backend_drops_everything():
    metrics = build_metrics(Settings(metrics_backend="none"))
    assert isinstance(metrics, Metrics) and metrics.backends == []
    metrics.incr("anything")  # nothing to assert but that it does not raise


def test_request_metrics_reach_the_app_backend(client, metrics):
    client.get(f"/v1/api/recommendations/{fixtures.KNOWN}/")
    timers = set(metrics.keys("timing"))
    assert {"taar.profile_recommendation", "taar.profile_fetch", "taar.ensemble_recommend",
            "taar.collaborative_recommend", "taar.similarity_recommend", "taar.locale_recommend"} <= timers
    client.get("/taarlite/api/v1/addon_recommendations/a@x/")
    assert "taar.guid_recommendation" in metrics.keys("timing")


class Tick:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_logging_backend_aggregates_into_one_line_per_interval(caplog):

    from taar_web.metrics import AggregatingLoggingMetrics

    tick = Tick()
    backend = AggregatingLoggingMetrics(options={"interval_s": 60.0, "clock": tick})
    metrics = Metrics([backend])
    caplog.set_level(logging.INFO, logger="taar.metrics")
    for ms in (2.0, 4.0, 9.0):
        metrics.timing("profile_fetch", ms)
        metrics.incr("profile_not_found")
    metrics.incr("invalid_request", tags=["route:x"])
    metrics.gauge("model_age_seconds", 5.0, tags=["model:locale"])
    assert [r for r in caplog.records if r.name == "taar.metrics"] == []  # nothing written within the interval

    tick.t = 61.0
    metrics.incr("profile_not_found")  # the first emit after the interval writes the line
    (line,) = [r for r in caplog.records if r.name == "taar.metrics"]
    # 3 timings 2, 4, 9 ms: mean (2 + 4 + 9) / 3 = 5, max 9; 4 profile_not_found (3 + the late one)
    assert line.timings == {"taar.profile_fetch": {"count": 3, "mean_ms": 5.0, "max_ms": 9.0}}
    assert line.counters == {"taar.profile_not_found": 4, "taar.invalid_request[route:x]": 1}
    assert line.gauges == {"taar.model_age_seconds[model:locale]": 5.0}
    assert line.interval_s == 61.0

    backend.flush()  # nothing new since: no line
    assert len([r for r in caplog.records if r.name == "taar.metrics"]) == 1


def test_statsd_lines_of_several_requests_share_a_packet_that_leaves_when_full_or_flushed():
    from taar_web import metrics as metrics_module
    from taar_web.metrics import BatchingStatsdMetrics

    receiver = _udp_receiver()
    now = [0.0]
    try:
        # "taar.profile_fetch:2.000000|ms" is 30 bytes, "taar.profile_not_found:1|c" 26: a request's
        # two lines joined are 57 bytes; 120 bytes hold two requests (115), not three (173)
        backend = BatchingStatsdMetrics(options={"statsd_host": "127.0.0.1", "statsd_maxudpsize": 120,
                                                 "statsd_port": receiver.getsockname()[1],
                                                 "clock": lambda: now[0], "flush_interval_s": 60.0})
        metrics = Metrics([backend])

        def request():
            token = metrics_module.begin_request()
            metrics.timing("profile_fetch", 2)
            metrics.incr("profile_not_found")
            metrics_module.end_request(token)

        request()
        request()
        receiver.setblocking(False)
        with pytest.raises(BlockingIOError):
            receiver.recv(4096)  # two requests buffered: nothing sent yet
        receiver.setblocking(True)
        request()  # its first line does not fit: the two earlier requests leave together
        one_request = ["taar.profile_fetch:2.000000|ms", "taar.profile_not_found:1|c"]
        assert receiver.recv(4096).decode().split("\n") == one_request * 2
        metrics.incr("outside")  # outside a request: buffered the same way
        backend.flush()
        assert receiver.recv(4096).decode().split("\n") == [*one_request, "taar.outside:1|c"]
        backend.flush()  # nothing buffered: nothing sent
        receiver.setblocking(False)
        with pytest.raises(BlockingIOError):
            receiver.recv(4096)
    finally:
        receiver.close()


def test_a_buffered_statsd_line_leaves_once_it_is_older_than_the_flush_interval():
    from taar_web import metrics as metrics_module
    from taar_web.metrics import BatchingStatsdMetrics

    receiver = _udp_receiver()
    now = [0.0]
    try:
        backend = BatchingStatsdMetrics(options={"statsd_host": "127.0.0.1", "statsd_port": receiver.getsockname()[1],
                                                 "clock": lambda: now[0], "flush_interval_s": 3600.0})
        metrics = Metrics([backend])
        metrics.incr("a")
        now[0] = 3599.0
        metrics.incr("b")  # the buffer is 3599 s old: not yet
        receiver.setblocking(False)
        with pytest.raises(BlockingIOError):
            receiver.recv(4096)
        receiver.setblocking(True)
        now[0] = 3600.0
        token = metrics_module.begin_request()
        metrics.incr("c")
        metrics_module.end_request(token)  # the emit that finds the buffer one interval old sends it
        assert receiver.recv(4096).decode().split("\n") == ["taar.a:1|c", "taar.b:1|c", "taar.c:1|c"]
    finally:
        receiver.close()


def test_an_idle_process_still_sends_its_buffered_statsd_lines():
    from taar_web.metrics import BatchingStatsdMetrics

    receiver = _udp_receiver()
    receiver.settimeout(10.0)
    try:
        backend = BatchingStatsdMetrics(options={"statsd_host": "127.0.0.1", "statsd_port": receiver.getsockname()[1],
                                                 "flush_interval_s": 0.2})
        before = set(threading.enumerate())
        Metrics([backend]).incr("lonely")
        flushers = [t for t in set(threading.enumerate()) - before if t.name == "taar-statsd-flush"]
        assert len(flushers) == 1
        # no further emit: the process's flusher thread sends it (well within the receiver's 10 s)
        assert receiver.recv(4096).decode() == "taar.lonely:1|c"
        deadline = time.monotonic() + 10
        while any(t.is_alive() for t in flushers) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(t.is_alive() for t in flushers)  # an empty buffer ends the thread
        Metrics([backend]).incr("again")  # and the next line starts a new one
        assert receiver.recv(4096).decode() == "taar.again:1|c"
    finally:
        receiver.close()


def test_a_forked_child_never_sends_its_parents_statsd_lines_again():
    import os

    from taar_web.metrics import BatchingStatsdMetrics

    receiver = _udp_receiver()
    try:
        backend = BatchingStatsdMetrics(options={"statsd_host": "127.0.0.1", "statsd_port": receiver.getsockname()[1],
                                                 "flush_interval_s": 3600.0})
        metrics = Metrics([backend])
        metrics.incr("parent")
        pid = os.fork()  # the parent's lines leave before the fork
        if pid == 0:  # child: its own line only, then exit (as a gunicorn worker's atexit flush would)
            try:
                metrics.incr("child")
                backend.flush()
            finally:
                os._exit(0)
        assert os.waitpid(pid, 0)[1] == 0
        packets = sorted(receiver.recv(4096).decode() for _ in range(2))
        assert packets == ["taar.child:1|c", "taar.parent:1|c"]
        receiver.setblocking(False)
        with pytest.raises(BlockingIOError):
            receiver.recv(4096)  # no third packet: the child did not resend "parent"
    finally:
        receiver.close()


def test_buffered_statsd_lines_leave_when_the_process_exits(tmp_path):
    import subprocess
    import sys

    receiver = _udp_receiver()
    receiver.settimeout(30.0)
    script = (
        "from taar_web.metrics import BatchingStatsdMetrics, Metrics\n"
        f"backend = BatchingStatsdMetrics(options={{'statsd_host': '127.0.0.1', 'statsd_port': "
        f"{receiver.getsockname()[1]}, 'flush_interval_s': 3600.0}})\n"
        "Metrics([backend]).incr('last_words')\n"
    )
    try:
        subprocess.run([sys.executable, "-c", script], check=True, timeout=60)
        assert receiver.recv(4096).decode() == "taar.last_words:1|c"
    finally:
        receiver.close()


def test_timer_records_milliseconds_and_nothing_when_the_block_raises():
    import time

    backend, seen = RecordingBackend(), []
    metrics = Metrics([backend], on_timing=lambda name, ms: seen.append((name, ms)))
    with metrics.timer("profile_fetch", tags=["route:x"]):
        time.sleep(0.002)
    with pytest.raises(KeyError), metrics.timer("ensemble_recommend"):
        raise KeyError("boom")  # markus' timer records nothing for a failed block; neither does ours
    assert [(r.stat_type, r.key, r.tags) for r in backend.records] == [
        ("timing", "taar.profile_fetch", ["route:x"])]
    assert backend.records[0].value >= 2.0  # slept 2 ms: the value is in milliseconds
    assert [name for name, _ in seen] == ["profile_fetch"]


def test_every_backend_gets_its_own_record():
    first, second = RecordingBackend(), RecordingBackend()
    metrics = Metrics([first, second])
    metrics.incr("test_client")
    assert first.records[0] is not second.records[0]
    assert first.count("taar.test_client") == second.count("taar.test_client") == 1


def _udp_receiver():
    import socket

    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    receiver.settimeout(2.0)
    return receiver


def test_statsd_packets_stay_under_the_size_limit_and_never_split_a_line():
    from taar_web import metrics as metrics_module
    from taar_web.metrics import BatchingStatsdMetrics

    receiver = _udp_receiver()
    try:
        backend = BatchingStatsdMetrics(options={"statsd_host": "127.0.0.1", "statsd_maxudpsize": 100,
                                                 "statsd_port": receiver.getsockname()[1],
                                                 "flush_interval_s": 3600.0})
        metrics = Metrics([backend])
        token = metrics_module.begin_request()
        for i in range(10):
            metrics.timing(f"t{i}", i)  # "taar.t0:0.000000|ms" is 19 characters
        metrics.gauge("g", -2)  # negative gauge: reset to 0 first, both lines in one packet
        metrics_module.end_request(token)
        # 10 lines of 19 + 9 newlines... packed greedily under 100 bytes: 5 lines = 5 * 19 + 4 = 99 bytes;
        # two full packets leave, the gauge pair waits for the flush
        packets = [receiver.recv(4096).decode() for _ in range(2)]
        backend.flush()
        packets.append(receiver.recv(4096).decode())
    finally:
        receiver.close()
    assert [len(p) for p in packets[:2]] == [99, 99]
    assert "\n".join(packets).split("\n") == [f"taar.t{i}:{i}.000000|ms" for i in range(10)] + [
        "taar.g:0|g", "taar.g:-2|g"]


def test_metrics_within_a_request_reach_the_backends_when_it_ends_each_its_own_record():
    from taar_web import metrics as metrics_module

    first, second = RecordingBackend(), RecordingBackend()
    metrics = Metrics([first, second])
    token = metrics_module.begin_request()
    metrics.incr("profile_not_found", tags=["a:b"])
    metrics.timing("profile_fetch", 1.5)
    assert first.records == [] and second.records == []  # held until the request ends
    metrics_module.end_request(token)
    assert [(r.stat_type, r.key, r.value, r.tags) for r in first.records] == [
        ("incr", "taar.profile_not_found", 1, ["a:b"]), ("timing", "taar.profile_fetch", 1.5, [])]
    assert [(r.key, r.value) for r in second.records] == [(r.key, r.value) for r in first.records]
    assert all(a is not b for a, b in zip(first.records, second.records, strict=True))


def test_backend_filters_still_apply_to_a_request_batch():
    from markus.filters import AddTagFilter

    from taar_web import metrics as metrics_module
    from taar_web.metrics import BatchingStatsdMetrics

    class Recording(BatchingStatsdMetrics):  # has the batch fast path, which filters must bypass
        def __init__(self, filters):
            super().__init__(options={"statsd_host": "127.0.0.1"}, filters=filters)
            self.records = []

        def emit(self, record):
            self.records.append(record)

    backend = Recording([AddTagFilter("env:test")])
    metrics = Metrics([backend])
    token = metrics_module.begin_request()
    metrics.incr("x")
    metrics_module.end_request(token)
    assert [(r.key, r.tags) for r in backend.records] == [("taar.x", ["env:test"])]


def test_a_failing_backend_does_not_fail_the_request_and_is_reported_once_a_minute(caplog, monkeypatch):
    from markus.backends import BackendBase

    from taar.logs import RateLimitedLog
    from taar_web import metrics as metrics_module

    class Broken(BackendBase):
        def emit(self, record):
            raise RuntimeError("backend down")

    monkeypatch.setattr(metrics_module, "_publish_failures", RateLimitedLog(60.0, clock=lambda: now[0]))
    now = [0.0]
    metrics = Metrics([Broken()])

    def request(n_metrics):
        token = metrics_module.begin_request()
        for _ in range(n_metrics):
            metrics.incr("x")
        metrics_module.end_request(token)  # must not raise

    def drops():
        return [r for r in caplog.records if "dropped" in r.getMessage()]

    request(1)
    assert [r.getMessage() for r in drops()] == [
        "dropped 1 metrics of a request (0 more failed requests since the last report)"]
    assert drops()[0].exc_info is not None  # the first report carries the traceback
    # a backend down on every request is reported once a minute, with the count of the quiet ones
    for _ in range(3):
        request(1)
    now[0] = 61.0
    request(2)
    assert [r.getMessage() for r in drops()][1:] == [
        "dropped 2 metrics of a request (3 more failed requests since the last report)"]


def test_a_failing_backend_outside_a_request_never_raises_and_is_reported_once_a_minute(caplog, monkeypatch):
    from markus.backends import BackendBase

    from taar.logs import RateLimitedLog
    from taar_web import metrics as metrics_module

    class Broken(BackendBase):
        def emit(self, record):
            raise RuntimeError("backend down")

    now = [0.0]
    monkeypatch.setattr(metrics_module, "_record_failures", RateLimitedLog(60.0, clock=lambda: now[0]))
    metrics = Metrics([Broken(), Broken()])  # two backends: the copying branch

    def drops():
        return [r.getMessage() for r in caplog.records if "dropped metric" in r.getMessage()]

    metrics.incr("model_refresh")  # the refresher and the warm-up record outside a request: must not raise
    assert drops() == ["dropped metric taar.model_refresh outside a request (0 more dropped since the last report)"]
    for _ in range(3):
        metrics.gauge("model_age_seconds", 1.0)
    now[0] = 61.0
    metrics.timing("profile_fetch", 2.0)
    assert drops()[1:] == ["dropped metric taar.profile_fetch outside a request (3 more dropped since the last report)"]


def test_generated_request_ids_differ_between_forked_workers():
    import os

    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # a gunicorn worker is a fork of the master: its ids must not repeat the parent's
        try:
            os.write(write, "".join(request_log.new_request_id() for _ in range(3)).encode())
        finally:
            os._exit(0)
    os.close(write)
    child = os.read(read, 4096).decode()
    os.waitpid(pid, 0)
    os.close(read)
    parent = "".join(request_log.new_request_id() for _ in range(3))
    assert len(child) == len(parent) == 96 and child != parent
    assert len({child[i:i + 32] for i in range(0, 96, 32)} | {parent[i:i + 32] for i in range(0, 96, 32)}) == 6
