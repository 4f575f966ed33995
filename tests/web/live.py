"""A real gunicorn running the service (``-c python:taar_web.gunicorn_conf``), for the live tests.

stdout (the JSON log lines) goes to a file the tests can read; the worker pids come
from ``/proc`` (children of the master).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from tests.fixtures.emulators import free_port


def get(url: str, timeout: float = 5.0, headers=None):
    """``(status, body bytes)`` of a GET on a fresh connection (HTTP errors included)."""
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def get_json(url: str, timeout: float = 5.0, headers=None):
    status, body = get(url, timeout, headers)
    return status, json.loads(body or b"null")


class Gunicorn:
    """``with Gunicorn(env, tmp_path) as g:`` starts the service and waits for ``/__lbheartbeat__``."""

    def __init__(self, env: dict, workdir: Path, startup_s: float = 60.0, extra_args=()):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / f"gunicorn-{self.port}.log"
        self.env = {**os.environ, "PORT": str(self.port), **env}
        self.workdir = workdir
        self.startup_s = startup_s
        self.proc = None
        self.extra_args = list(extra_args)

    def __enter__(self) -> Gunicorn:
        gunicorn = Path(sys.executable).parent / "gunicorn"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in __exit__
        self.proc = subprocess.Popen(
            [str(gunicorn), "-c", "python:taar_web.gunicorn_conf", "-b", f"127.0.0.1:{self.port}",
             *self.extra_args, "taar_web.wsgi:app"],
            env=self.env, stdout=self._log, stderr=subprocess.STDOUT, cwd=self.workdir)
        try:
            self.wait_until(lambda: get(self.base + "/__lbheartbeat__", timeout=2)[0] == 200, self.startup_s,
                            "gunicorn did not answer /__lbheartbeat__")
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()

    def wait_until(self, predicate, timeout_s: float, what: str, interval_s: float = 0.05):
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                value = predicate()
                if value:
                    return value
            except (OSError, urllib.error.URLError, ValueError):
                pass
            if self.proc.poll() is not None:
                raise RuntimeError(f"gunicorn exited ({self.proc.returncode}); log:\n{self.log()[-3000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{what} within {timeout_s} s; log:\n{self.log()[-3000:]}")
            time.sleep(interval_s)

    def worker_pids(self) -> list[int]:
        pids = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    stat = (entry / "stat").read_text()
                except OSError:
                    continue
                if int(stat.rsplit(")", 1)[1].split()[1]) == self.proc.pid:
                    pids.append(int(entry.name))
        return sorted(pids)

    def kill_worker(self, pid: int) -> int:
        """SIGKILL ``pid`` and wait for the master to start its replacement; the new pid."""
        before = set(self.worker_pids())
        os.kill(pid, signal.SIGKILL)
        return self.wait_until(lambda: next(iter(set(self.worker_pids()) - before), None), 30,
                               "no replacement worker")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_lines(self) -> list[dict]:
        out = []
        for line in self.log().splitlines():
            if line.startswith("{"):
                try:
                    out.append(json.loads(line))
                except ValueError:
                    continue
        return out
