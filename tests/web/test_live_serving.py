"""The service under real gunicorn (SPEC §6.2-6.3): fresh workers, worker respawn, store outages.

* Bigtable-emulator profiles: the first per-user request a fresh worker serves (at
  start, and after its predecessor was SIGKILLed) reads the profile within the
  profile deadline (+ 50 ms): the client was built and connected at ``post_fork``.
* A SIGKILLed worker's replacement checks the model store at once and serves the
  models published since the master loaded its own.
* GCS emulator behind a fault-injecting HTTP proxy (the storage boundary: the proxy
  answers 403 to downloads of the locale objects while the "outage" lasts): the
  service starts without the locale model and heals within one refresh interval of
  the store's recovery.
"""

from __future__ import annotations

import datetime as dt
import http.client
import shutil
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from taar.publishing import publish
from taar.storage import open_model_store, open_profile_store
from tests.fixtures import web_models as fixtures
from tests.fixtures.gunicorn_server import Gunicorn, get, get_json

pytestmark = pytest.mark.integration

KNOWN_PATH = f"/v1/api/recommendations/{fixtures.KNOWN}/"
EXPECTED = {"results": ["c@x", "d@x", "e@x"]}
PROFILE_TIMEOUT_MS = 150


def base_env(tmp_path, model_store: str, profile_store: str, **extra) -> dict:
    return {
        "WORKERS": "1", "THREADS": "2",
        "TAAR_MODEL_STORE": model_store, "TAAR_PROFILE_STORE": profile_store,
        "TAAR_MODEL_MAX_AGE_HOURS": "0", "TAAR_RANDOMIZE": "false", "TAAR_MAX_RESULTS": "3",
        "TAAR_METRICS_BACKEND": "none", "TAAR_VERSION_FILE": str(tmp_path / "version.json"),
        "TAAR_PROFILE_TIMEOUT_MS": str(PROFILE_TIMEOUT_MS), **extra,
    }


def timed_get_json(url):
    started = time.monotonic()
    status, body = get_json(url)
    return status, body, (time.monotonic() - started) * 1000.0


@pytest.fixture
def bigtable_uri(bigtable_profile_uri):
    store = open_profile_store(bigtable_profile_uri)
    store.ensure_table()
    store.put_many(fixtures.profile_rows(), ts_ms=1_710_115_200_000)
    return bigtable_profile_uri


def test_fresh_and_respawned_workers_read_profiles_within_the_deadline_and_serve_current_models(
        tmp_path, model_store_dir, bigtable_uri):
    models = tmp_path / "models"
    shutil.copytree(model_store_dir, models)
    env = base_env(tmp_path, str(models), bigtable_uri, TAAR_MODEL_REFRESH_SECONDS="3600")
    with Gunicorn(env, tmp_path) as g:
        (first_worker,) = g.worker_pids()
        status, body, ms = timed_get_json(g.base + KNOWN_PATH)
        # the profile was read (the known client's answer, not the unknown-client []), within the deadline
        assert (status, body) == (200, EXPECTED)
        assert ms <= PROFILE_TIMEOUT_MS + 50, f"first request on a fresh worker took {ms:.0f} ms"

        # a new locale version appears; the long refresh interval keeps the running worker on the old one
        publish(open_model_store(str(models)), "locale", {"en-US": [["b@x", 1.0]]}, dt.date(2024, 3, 11),
                "tests/web")
        assert get_json(g.base + "/__models__")[1]["models"]["locale"]["version"] == "20240310"

        replacement = g.kill_worker(first_worker)
        g.wait_until(lambda: get(g.base + "/__lbheartbeat__", timeout=2)[0] == 200, 30, "replacement not serving")
        status, body, ms = timed_get_json(g.base + KNOWN_PATH)
        assert status == 200 and ms <= PROFILE_TIMEOUT_MS + 50, f"first request on a respawned worker: {ms:.0f} ms"
        # ...and it checked the store at once: the new locale model within seconds
        g.wait_until(lambda: get_json(g.base + "/__models__")[1]["models"]["locale"]["version"] == "20240311",
                     10, "the replacement worker did not load the current locale model")
        models_body = get_json(g.base + "/__models__")[1]
        assert models_body["process"]["pid"] == replacement
        # b 1.0 x 0.5 = 0.5 ties d 0.5 -> GUID order (see models.py)
        assert get_json(g.base + KNOWN_PATH)[1] == {"results": ["c@x", "b@x", "d@x"]}
        summaries = [line for line in g.log_lines() if line["Type"] == "request.summary"]
        assert {line["Pid"] for line in summaries} >= {first_worker, replacement}


# --------------------------------------------------------------------------- GCS outage


class FaultyProxy:
    """An HTTP proxy to the GCS emulator that answers 403 to matching downloads while ``failing``."""

    def __init__(self, upstream: str, match: str):
        self.upstream = urllib.parse.urlparse(upstream)
        self.match = match
        self.failing = threading.Event()
        self.refused = 0
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _forward(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                if proxy.failing.is_set() and "alt=media" in self.path and proxy.match in self.path:
                    proxy.refused += 1
                    payload = b'{"error": {"code": 403, "message": "injected outage"}}'
                    self.send_response(403)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                conn = http.client.HTTPConnection(proxy.upstream.hostname, proxy.upstream.port, timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
                conn.request(self.command, self.path, body=body, headers=headers)
                response = conn.getresponse()
                data = response.read()
                self.send_response(response.status)
                for key, value in response.getheaders():
                    if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                conn.close()

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _forward

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.host = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def test_a_store_outage_at_startup_heals_within_one_refresh_interval(tmp_path, gcs_emulator, profile_uri):
    uri = gcs_emulator.fresh_uri()
    fixtures.publish_models(open_model_store(uri), fixtures.models())
    interval = 2
    with FaultyProxy(gcs_emulator.host, match="locale") as proxy:
        proxy.failing.set()
        env = base_env(tmp_path, uri, profile_uri, STORAGE_EMULATOR_HOST=proxy.host,
                       TAAR_MODEL_REFRESH_SECONDS=str(interval))
        with Gunicorn(env, tmp_path) as g:
            entry = get_json(g.base + "/__models__")[1]["models"]["locale"]
            assert entry["status"] == "error" and "403" in entry["last_refresh"]["error"]
            assert get_json(g.base + "/__heartbeat__")[0] == 500  # a required model is missing
            assert get_json(g.base + "/__models__")[1]["models"]["whitelist"]["status"] == "loaded"
            assert proxy.refused >= 1

            proxy.failing.clear()  # the store recovers
            recovered = time.monotonic()
            g.wait_until(lambda: get_json(g.base + "/__models__")[1]["models"]["locale"]["status"] == "loaded",
                         interval + 3, "locale not loaded within one refresh interval of the recovery")
            healed_after = time.monotonic() - recovered
            assert healed_after <= interval + 3
            assert get_json(g.base + "/__heartbeat__")[0] == 200
            assert get_json(g.base + KNOWN_PATH)[1] == EXPECTED


# --------------------------------------------------------------------------- statsd


def test_statsd_metrics_of_many_requests_share_packets_under_gunicorn(tmp_path, model_store_dir, profile_uri):
    import socket

    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    receiver.settimeout(10.0)
    env = base_env(tmp_path, str(model_store_dir), profile_uri, TAAR_METRICS_BACKEND="statsd",
                   STATSD_HOST="127.0.0.1", STATSD_PORT=str(receiver.getsockname()[1]),
                   TAAR_MODEL_REFRESH_SECONDS="3600")
    n = 20
    try:
        with Gunicorn(env, tmp_path) as g:
            for _ in range(n):
                assert get_json(g.base + KNOWN_PATH) == (200, EXPECTED)
            packets, timers = [], 0
            while timers < n:  # each request times profile_recommendation once; the buffer leaves in 0.5 s
                packet = receiver.recv(65536)
                packets.append(packet)
                timers += sum(line.startswith(b"taar.profile_recommendation:") for line in packet.split(b"\n"))
    finally:
        receiver.close()
    assert timers == n
    assert all(len(p) <= 1432 for p in packets)
    # a request sends ~8 lines (~280 bytes): several requests share each packet, not one packet each
    assert len(packets) < n / 2, [len(p) for p in packets]
