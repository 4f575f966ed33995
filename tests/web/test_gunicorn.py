"""The production process model (SPEC §6.2): gunicorn config values, and a real gunicorn run.

The live test starts ``gunicorn -c python:taar_web.gunicorn_conf taar_web.wsgi:app``
(bound to loopback) with one worker, checks it answers, then publishes a new
model version and waits for the worker's refresher, started by ``post_fork``,
to swap it in.
"""

from __future__ import annotations

import datetime as dt
import importlib
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from taar.publishing import publish
from taar.storage import open_model_store
from tests.fixtures import web_models as fixtures
from tests.fixtures.emulators import free_port


@pytest.mark.unit
def test_config_follows_the_environment(monkeypatch):
    monkeypatch.setenv("PORT", "9123")
    monkeypatch.setenv("WORKERS", "3")
    monkeypatch.setenv("THREADS", "5")
    import taar_web.gunicorn_conf as conf

    conf = importlib.reload(conf)
    assert (conf.bind, conf.workers, conf.threads) == ("0.0.0.0:9123", 3, 5)
    assert (conf.worker_class, conf.preload_app, conf.accesslog) == (
        "taar_web.gunicorn_worker.TaarThreadWorker", True, None)
    assert conf.keepalive == 620  # above the Google load balancer's 600 s idle timeout
    assert callable(conf.post_fork) and callable(conf.pre_fork)


def get_json(url: str, timeout: float = 5.0):
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.status, json.loads(response.read() or b"null")


@pytest.fixture
def gunicorn_server(tmp_path, model_store_dir, profile_uri):
    models = tmp_path / "models"
    shutil.copytree(model_store_dir, models)
    port = free_port()
    env = {
        **os.environ,
        "PORT": str(port), "WORKERS": "1", "THREADS": "2",
        "TAAR_MODEL_STORE": str(models), "TAAR_PROFILE_STORE": profile_uri,
        "TAAR_MODEL_REFRESH_SECONDS": "1", "TAAR_MODEL_MAX_AGE_HOURS": "0",
        "TAAR_RANDOMIZE": "false", "TAAR_MAX_RESULTS": "3", "TAAR_METRICS_BACKEND": "none",
        "TAAR_VERSION_FILE": str(tmp_path / "version.json"),
    }
    gunicorn = Path(sys.executable).parent / "gunicorn"
    proc = subprocess.Popen(
        [str(gunicorn), "-c", "python:taar_web.gunicorn_conf", "-b", f"127.0.0.1:{port}", "taar_web.wsgi:app"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if get_json(base + "/__heartbeat__")[0] == 200:
                    break
            except (urllib.error.URLError, ConnectionError):
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"gunicorn did not become healthy (exit code {proc.poll()})")
            time.sleep(0.1)
        yield base, open_model_store(str(models))
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.mark.integration
def test_gunicorn_serves_and_the_worker_refreshes(gunicorn_server):
    base, store = gunicorn_server
    status, body = get_json(f"{base}/v1/api/recommendations/{fixtures.KNOWN}/")
    assert (status, body) == (200, {"results": ["c@x", "d@x", "e@x"]})
    _, models = get_json(f"{base}/__models__")
    assert models["process"]["pid"] != os.getpid()

    publish(store, "locale", {"en-US": [["b@x", 1.0]]}, dt.date(2024, 3, 11), "tests/web")
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if get_json(f"{base}/__models__")[1]["models"]["locale"]["version"] == "20240311":
            break
        time.sleep(0.2)
    assert get_json(f"{base}/__models__")[1]["models"]["locale"]["version"] == "20240311"
    # b 1.0 x 0.5 = 0.5 ties d 0.5 -> GUID order
    assert get_json(f"{base}/v1/api/recommendations/{fixtures.KNOWN}/")[1] == {"results": ["c@x", "b@x", "d@x"]}
