"""Smoke-test each image's build and entrypoint commands in a fresh virtual environment.

Docker cannot build here, so this replays the Dockerfile (tests/fixtures/release.py): its
COPY instructions against the build context (.dockerignore applied) into a build
directory, its ``pip install`` commands run there with a fresh venv's pip, its
version.json command, then the image's CMD / ENTRYPOINT run as a process (the ETL
image's ``tini --`` prefix left out: tini is a system package, not ours).
"""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from tests.fixtures.release import instruction, replay_build, version_json_command

pytestmark = pytest.mark.integration


def _build(work, dockerfile):
    """A fresh venv with what the image installs, built by replaying ``dockerfile`` in ``work/app``."""
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{venv / 'bin'}:{env['PATH']}"
    app = work / "app"
    app.mkdir()

    def run(command, cwd):
        subprocess.run(["bash", "-c", command.replace("pip install", "pip install --quiet", 1)], cwd=cwd, env=env,
                       check=True)

    replay_build(dockerfile, app, run)
    return venv / "bin"


def _importable(bindir, module, cwd):
    return subprocess.run([str(bindir / "python"), "-c", f"import {module}"], cwd=cwd, capture_output=True,
                          env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"}).returncode == 0


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url):
    with urllib.request.urlopen(url, timeout=5) as resp:
        return resp.status, resp.read()


def test_web_image_commands_serve_heartbeat_and_version(tmp_path_factory):
    work = tmp_path_factory.mktemp("web-image")
    bindir = _build(work, "Dockerfile.web")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TAAR_", "PYTHONPATH"))}
    env.update({"SOURCE": "https://example.invalid/taar", "VERSION": "v9.9.9", "COMMIT": "deadbeef",
                "BUILD": "local-test"})
    subprocess.run(["bash", "-c", version_json_command("Dockerfile.web", work / "version.json")], env=env,
                   check=True)
    port = _free_port()
    env.update({"PATH": f"{bindir}:{env['PATH']}", "PORT": str(port), "WORKERS": "1", "THREADS": "2",
                "TAAR_VERSION_FILE": str(work / "version.json"), "TAAR_MODEL_STORE": str(work / "models"),
                "TAAR_PROFILE_STORE": f"sqlite:///{work / 'profiles.sqlite3'}"})
    (work / "models").mkdir()
    proc = subprocess.Popen(instruction("Dockerfile.web", "CMD"), cwd=work, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                status, body = _get(f"http://127.0.0.1:{port}/__lbheartbeat__")
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(proc.stdout.read().decode()) from None
                time.sleep(0.3)
        assert status == 200
        status, body = _get(f"http://127.0.0.1:{port}/__version__")
        assert status == 200
        assert json.loads(body) == {"source": "https://example.invalid/taar", "version": "v9.9.9",
                                    "commit": "deadbeef", "build": "local-test"}
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    # the web image carries taar + taar_web only: not the ETL code, its dependencies or the development tools
    assert _importable(bindir, "taar_web.app", work) and _importable(bindir, "taar.recommenders", work)
    for module in ("taar_etl", "pyarrow", "taar_dev", "pytest"):
        assert not _importable(bindir, module, work), module


def test_etl_image_entrypoint_lists_jobs_and_prints_help(tmp_path_factory):
    work = tmp_path_factory.mktemp("etl-image")
    bindir = _build(work, "Dockerfile.etl")
    entrypoint = instruction("Dockerfile.etl", "ENTRYPOINT")
    assert entrypoint[:3] == ["tini", "--", "python"]
    entry = [str(bindir / "python"), *entrypoint[3:]]
    listing = subprocess.run([*entry, *instruction("Dockerfile.etl", "CMD")], cwd=work, capture_output=True,
                             text=True, timeout=120)
    assert listing.returncode == 0, listing.stderr
    for job in ("taar_amodump", "taar_amowhitelist", "taar_update_whitelist", "taar_lite_guidranking",
                "taar_profile_bigtable"):
        assert job in listing.stdout
    helptext = subprocess.run([*entry, "taar_etl.taar_amodump", "--help"], cwd=work, capture_output=True,
                              text=True, timeout=120)
    assert helptext.returncode == 0, helptext.stderr
    assert "--amo-url" in helptext.stdout and "--date" in helptext.stdout
    # no Spark (and no Java), no web service, no development or test tools in the ETL image
    for module in ("pyspark", "taar_web", "taar_dev", "pytest", "flask"):
        assert not _importable(bindir, module, work), module
