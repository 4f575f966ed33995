"""schemathesis against the service under real gunicorn, with every check enabled (SPEC §4.9).

One gunicorn (1 worker, fixture models, SQLite profiles, ``client_has_addon`` opened with
``TAAR_CLIENT_HAS_ADDON_PUBLIC``) and the schemathesis CLI (``st run --checks all``: every
phase, coverage, fuzzing and stateful, every check: server errors, status codes,
content types, headers, response schemas, schema-valid requests accepted, invalid ones
rejected, methods, ...). Bounded and deterministic so that CI stays fast (~15 s):
``TAAR_FUZZ_EXAMPLES`` (default 25) examples per operation; 300 passed too (4 630 cases).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.gunicorn_server import Gunicorn

pytestmark = pytest.mark.integration

MAX_EXAMPLES = int(os.environ.get("TAAR_FUZZ_EXAMPLES", "25"))


@pytest.fixture
def live(tmp_path, model_store_dir, profile_uri):
    version = {"source": "https://github.com/mozilla/taar", "version": "1.0", "commit": "0" * 40, "build": "ci"}
    (tmp_path / "version.json").write_text(json.dumps(version))
    env = {
        "WORKERS": "1", "THREADS": "4", "TAAR_MODEL_STORE": str(model_store_dir), "TAAR_PROFILE_STORE": profile_uri,
        "TAAR_MODEL_MAX_AGE_HOURS": "0", "TAAR_RANDOMIZE": "false", "TAAR_METRICS_BACKEND": "none",
        "TAAR_CLIENT_HAS_ADDON_PUBLIC": "true", "TAAR_LOG_LEVEL": "WARNING",
        "TAAR_VERSION_FILE": str(tmp_path / "version.json"),
    }
    with Gunicorn(env, tmp_path) as server:
        yield server


def test_live_service_passes_every_schemathesis_check(live, tmp_path):
    st = Path(sys.executable).parent / "st"
    result = subprocess.run(
        [str(st), "run", f"{live.base}/__openapi__.json", "--checks", "all", "--max-examples", str(MAX_EXAMPLES),
         "--generation-deterministic", "--workers", "2", "--report", "junit",
         "--report-junit-path", str(tmp_path / "junit.xml")],
        capture_output=True, text=True, timeout=600, cwd=tmp_path)
    summary = result.stdout[-4000:]
    assert result.returncode == 0, summary
    assert "passed" in summary and "Test cases" in summary
    # every operation of the document was exercised
    assert "Tested: 16" in summary, summary
