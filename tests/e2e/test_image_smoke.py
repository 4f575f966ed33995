"""Smoke-test each image's install and entrypoint commands in a fresh virtual environment.

Docker cannot build here, so this does what the Dockerfile does, from the
Dockerfile's own text: a fresh venv, ``pip install -c constraints.txt '.[extra]'``,
version.json written by the Dockerfile's command, then the image's CMD /
ENTRYPOINT run as a process.
"""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from tests.fixtures.release import ROOT, instruction, version_json_command

pytestmark = pytest.mark.integration


def _fresh_venv(path, extra):
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
    pip = path / "bin" / "pip"
    # the project's own build: a wheel of this checkout, as `pip install .` does in the image
    subprocess.run([str(pip), "install", "--quiet", "--disable-pip-version-check", "-c", "constraints.txt",
                    f".[{extra}]"], cwd=ROOT, check=True)
    return path / "bin"


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url):
    with urllib.request.urlopen(url, timeout=5) as resp:
        return resp.status, resp.read()


def test_web_image_commands_serve_heartbeat_and_version(tmp_path_factory):
    work = tmp_path_factory.mktemp("web-image")
    bindir = _fresh_venv(work / "venv", "web")
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
    # the web image does not carry the ETL's heavy dependencies
    check = subprocess.run([str(bindir / "python"), "-c", "import pyarrow"], capture_output=True)
    assert check.returncode != 0


def test_etl_image_entrypoint_lists_jobs_and_prints_help(tmp_path_factory):
    work = tmp_path_factory.mktemp("etl-image")
    bindir = _fresh_venv(work / "venv", "etl")
    entry = [str(bindir / "python"), *instruction("Dockerfile.etl", "ENTRYPOINT")[1:]]
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
    check = subprocess.run([str(bindir / "python"), "-c", "import pyspark"], capture_output=True)
    assert check.returncode != 0  # no Spark (and no Java) in the ETL image
