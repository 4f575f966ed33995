"""The whole TAAR system on one machine: the pieces ``make demo`` and the end-to-end test share.

SPEC §10.5 and §12.1. Everything here drives the real components, through their
command lines or public classes, the way an operator would:

* :class:`Layout` says where a local run keeps its data (``./var`` for the demo).
* :func:`ensure_synthetic` generates the synthetic telemetry and AMO catalogue
  (:mod:`taar_dev.synthetic`), or reuses them when the manifest records the same
  parameters, so reruns skip the generation.
* :func:`local_variables` and :class:`LocalAirflow` prepare an ``AIRFLOW_HOME`` for
  the local deploy target (migrated once, Variables set) and run
  ``airflow dags test <dag> <D> -c '{"job_date": D}'``, returning a
  :class:`DagRunResult` with every task's state and duration.
* :class:`Service` runs the web service as a real gunicorn process on loopback.

Why a DAG run is watched: ``dags test`` honours each task's retry policy, and the
production policy waits 10 minutes (then 20) before retrying a failed job. The
runner polls Airflow's metadata database while the run goes and stops it as soon
as a task fails or waits for a retry, so a broken job fails a local run in
seconds, with that task's output, instead of half an hour later.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
#: The two DAGs, in the order a local run executes them.
DAG_IDS = ("taar_daily", "taar_weekly")
#: Task states that end a local run early (the failure has happened; only retries would follow).
STOP_STATES = frozenset({"failed", "up_for_retry"})
SUCCESS = "success"


class LocalRunError(RuntimeError):
    """A local-run step could not complete; the message says which and why."""


# --------------------------------------------------------------------------- layout and data


@dataclasses.dataclass(frozen=True)
class Layout:
    """Where a local run keeps everything, under one root directory (absolute paths)."""

    root: Path

    @classmethod
    def at(cls, root: str | os.PathLike) -> Layout:
        return cls(Path(root).resolve())

    @property
    def telemetry(self) -> Path:
        return self.root / "telemetry"

    @property
    def amo(self) -> Path:
        return self.root / "amo"

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def etl(self) -> Path:
        return self.root / "etl"

    @property
    def profiles(self) -> Path:
        return self.root / "profiles.sqlite3"

    @property
    def airflow_home(self) -> Path:
        return self.root / "airflow"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def profile_store(self) -> str:
        """SQLite profile store URI (``sqlite:////abs/path``: three slashes, then the absolute path)."""
        return f"sqlite:///{self.profiles}"

    def reset_outputs(self) -> None:
        """Delete what the pipeline derived from the data (models, ETL scratch, profiles)."""
        shutil.rmtree(self.models, ignore_errors=True)
        shutil.rmtree(self.etl, ignore_errors=True)
        for suffix in ("", "-wal", "-shm"):
            Path(f"{self.profiles}{suffix}").unlink(missing_ok=True)


def _json_normal(obj):
    """``obj`` as it reads back from JSON (tuples become lists), for comparisons with stored JSON."""
    return json.loads(json.dumps(obj, sort_keys=True))


def ensure_synthetic(layout: Layout, params, workers: int = 2) -> tuple[dict, bool]:
    """Synthetic telemetry + AMO catalogue for ``params`` (a :class:`taar_dev.synthetic.Params`).

    Returns ``(manifest, generated)``. Nothing is generated when the manifest under
    ``<telemetry>/_synthetic/`` records the same parameters and the AMO documents exist.
    """
    from taar_dev.synthetic import generate

    manifest_path = layout.telemetry / "_synthetic" / "manifest.json"
    amo_docs = [layout.amo / "catalogue.json", layout.amo / "editorial.json"]
    if manifest_path.is_file() and all(p.is_file() for p in amo_docs):
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        if manifest.get("params") == _json_normal(params.as_json()):
            logger.info("synthetic data for these parameters already in %s", layout.telemetry)
            return manifest, False
    logger.info("generating %d synthetic clients for %s into %s", params.clients, params.end_date, layout.telemetry)
    return generate(params, layout.telemetry, layout.amo, workers=workers), True


def partition_exists(telemetry: Path, table: str, date: dt.date) -> bool:
    """True when ``<telemetry>/<table>/submission_date=<date>/`` holds a Parquet file."""
    folder = Path(telemetry) / table / f"submission_date={date.isoformat()}"
    return folder.is_dir() and any(p.suffix == ".parquet" for p in folder.iterdir())


# --------------------------------------------------------------------------- Airflow


def local_variables(layout: Layout, amo_url: str, *, seed: int = 42, spark_master: str = "local[2]",
                    collaborative_grid: str = "none", extra_args: dict[str, str] | None = None) -> dict[str, str]:
    """The Airflow Variables of the local deploy target (SPEC §10.6) for ``layout``.

    ``extra_args`` maps a task id to flags appended to its command line (Variable
    ``taar_local_extra_args``), e.g. smaller job thresholds for a small data set.
    """
    return {
        "taar_model_store": str(layout.models),
        "taar_etl_store": str(layout.etl),
        "taar_source": str(layout.telemetry),
        "taar_profile_store": layout.profile_store,
        "taar_amo_url": amo_url,
        "taar_seed": str(seed),
        "taar_spark_master": spark_master,
        "taar_collaborative_grid": collaborative_grid,
        "taar_local_extra_args": json.dumps(extra_args or {}, sort_keys=True),
    }


@dataclasses.dataclass(frozen=True)
class TaskResult:
    task_id: str
    state: str | None
    try_number: int
    duration_s: float | None


@dataclasses.dataclass(frozen=True)
class DagRunResult:
    """The outcome of one ``airflow dags test`` run."""

    dag_id: str
    job_date: dt.date
    state: str | None  # the DagRun state, None when no run was recorded
    returncode: int
    duration_s: float
    tasks: dict[str, TaskResult]
    log_path: Path
    stopped: str | None = None  # why the runner stopped the run early, if it did

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and self.state == SUCCESS and self.stopped is None

    @property
    def failed_tasks(self) -> list[str]:
        """Tasks that failed themselves (not the ``watcher``, not their downstream tasks)."""
        return sorted(t.task_id for t in self.tasks.values() if t.state in STOP_STATES and t.task_id != "watcher")

    def summary(self) -> str:
        lines = [f"{self.dag_id} for {self.job_date}: {self.state or 'no run'} in {self.duration_s:.0f} s"
                 + (f" (stopped: {self.stopped})" if self.stopped else "")]
        for task in sorted(self.tasks.values(), key=lambda t: t.task_id):
            took = f"{task.duration_s:7.1f} s" if task.duration_s is not None else "      -  "
            lines.append(f"  {task.task_id:<26} {task.state or 'not run':<16} {took}")
        return "\n".join(lines)


#: A line ``dags test`` logged for a task's subprocess output: ``<time> [<level>] <line> [...SubprocessHook] ...``.
_SUBPROCESS_LINE = re.compile(r"^\S+ \[\s*\w+\s*\] (?P<line>.*?) \[airflow\.task\.hooks\.\S*SubprocessHook\]")


def task_output(log_path: Path, task_id: str, max_lines: int = 40) -> list[str]:
    """The last ``max_lines`` lines the job of ``task_id`` printed (its last attempt), from a ``dags test`` log.

    When the task ran no subprocess (a sensor), its whole log block is returned instead.
    """
    start, end = f"[DAG TEST] starting task_id={task_id} ", f"[DAG TEST] end task task_id={task_id} "
    block: list[str] = []
    inside = False
    try:
        text = Path(log_path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    for line in text.splitlines():
        if start in line:
            block, inside = [], True
        elif end in line:
            inside = False
        elif inside:
            block.append(line)
    job_lines = [m.group("line") for m in map(_SUBPROCESS_LINE.match, block) if m]
    return [line[:500] for line in (job_lines or block)[-max_lines:]]


def _utc_db_time(moment: dt.datetime) -> str:
    """A UTC time in the text form Airflow stores in SQLite (lexically ordered)."""
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


class LocalAirflow:
    """An ``AIRFLOW_HOME`` for the local deploy target, and ``airflow dags test`` runs in it.

    Parameters
    ----------
    home : directory of ``airflow.cfg`` and the SQLite metadata database
    repo_root : the checkout whose ``dags/`` and ``jobs/`` are run
    python : interpreter running Airflow (and, through the DAGs, every job)
    """

    def __init__(self, home: str | os.PathLike, *, repo_root: Path = REPO_ROOT, python: str = sys.executable):
        self.home = Path(home).resolve()
        self.repo_root = Path(repo_root).resolve()
        self.python = python

    @property
    def database(self) -> Path:
        return self.home / "airflow.db"

    def env(self) -> dict[str, str]:
        """The environment of every Airflow command: isolated home, local target, no examples."""
        return {
            **os.environ,
            "AIRFLOW_HOME": str(self.home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(self.repo_root / "dags"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{self.database}",
            "TAAR_DEPLOY_TARGET": "local",
            "TAAR_HOME": str(self.repo_root),
            "TAAR_PYTHON": self.python,
            "SPARK_LOCAL_IP": os.environ.get("SPARK_LOCAL_IP", "127.0.0.1"),
        }

    def cli(self, *args: str) -> str:
        """Run ``airflow <args>``; return its output, or raise :class:`LocalRunError` with its tail."""
        proc = subprocess.run([self.python, "-m", "airflow", *args], env=self.env(), cwd=self.repo_root,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=False)
        if proc.returncode != 0:
            tail = "\n".join(proc.stdout.splitlines()[-20:])
            raise LocalRunError(f"airflow {' '.join(args[:2])} failed (exit {proc.returncode}):\n{tail}")
        return proc.stdout

    def prepare(self, variables: dict[str, str]) -> None:
        """Migrate the metadata database (once per Airflow version) and set ``variables`` (when changed)."""
        self.home.mkdir(parents=True, exist_ok=True)
        stamp_path = self.home / "taar-local.json"
        try:
            stamp = json.loads(stamp_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            stamp = {}
        version = metadata.version("apache-airflow")
        if stamp.get("migrated") != version or not self.database.is_file():
            logger.info("migrating the Airflow database in %s", self.home)
            self.cli("db", "migrate")
            stamp = {"migrated": version}
        digest = hashlib.sha256(json.dumps(variables, sort_keys=True).encode()).hexdigest()
        if stamp.get("variables") != digest:
            path = self.home / "taar-variables.json"
            path.write_text(json.dumps(variables, indent=2, sort_keys=True), encoding="utf-8")
            self.cli("variables", "import", str(path))
            stamp["variables"] = digest
        stamp_path.write_text(json.dumps(stamp, sort_keys=True), encoding="utf-8")

    def run_dag(self, dag_id: str, job_date: dt.date, *, log_path: Path, timeout_s: float | None = None,
                poll_s: float = 2.0, on_change: Callable[[TaskChange], None] | None = None) -> DagRunResult:
        """``airflow dags test <dag_id> <D> -c '{"job_date": D}'``, watched until it ends.

        The run is stopped early (and reported failed) when a task fails or waits for
        a retry, or after ``timeout_s``. Interrupting this call stops the run too.
        ``on_change`` is called with each task state change as the run goes (polled
        every ``poll_s`` seconds, and once more at the end).
        """
        day = job_date.isoformat()
        log_path = Path(log_path)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        since = _utc_db_time(dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1))
        cmd = [self.python, "-m", "airflow", "dags", "test", dag_id, day, "-c", json.dumps({"job_date": day})]
        started = time.monotonic()
        stopped = None
        seen: dict[str, tuple[str | None, int]] = {}
        logger.info("running %s for %s (log: %s)", dag_id, day, log_path)
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(cmd, env=self.env(), cwd=self.repo_root, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)
            try:
                while proc.poll() is None:
                    tasks = self._tasks(dag_id, since)
                    _report_changes(dag_id, tasks, seen, started, on_change)
                    failing = sorted(t.task_id for t in tasks.values() if t.state in STOP_STATES)
                    if failing:
                        stopped = f"task {', '.join(failing)} failed"
                    elif timeout_s is not None and time.monotonic() - started > timeout_s:
                        stopped = f"timed out after {timeout_s:.0f} s"
                    if stopped:
                        _stop_group(proc)
                        break
                    time.sleep(poll_s)
            except BaseException:
                _stop_group(proc)
                raise
        returncode = proc.wait()
        state = self._run_state(dag_id, since)
        tasks = self._tasks(dag_id, since)
        _report_changes(dag_id, tasks, seen, started, on_change)
        result = DagRunResult(dag_id, job_date, state, returncode, time.monotonic() - started, tasks, log_path,
                              stopped)
        logger.info("%s for %s: %s", dag_id, day, "success" if result.ok else f"FAILED ({stopped or state})")
        return result

    # -- metadata database (read only) --------------------------------------------------------

    def _query(self, sql: str, params: tuple) -> list[tuple]:
        if not self.database.is_file():
            return []
        try:
            with sqlite3.connect(f"file:{self.database}?mode=ro", uri=True, timeout=10) as conn:
                return conn.execute(sql, params).fetchall()
        except sqlite3.OperationalError as exc:  # locked for longer than the timeout, or not migrated yet
            logger.debug("metadata query failed: %s", exc)
            return []

    def _run_id(self, dag_id: str, since: str) -> str | None:
        rows = self._query("SELECT run_id FROM dag_run WHERE dag_id = ? AND run_after >= ? "
                           "ORDER BY run_after DESC LIMIT 1", (dag_id, since))
        return rows[0][0] if rows else None

    def _run_state(self, dag_id: str, since: str) -> str | None:
        rows = self._query("SELECT state FROM dag_run WHERE dag_id = ? AND run_after >= ? "
                           "ORDER BY run_after DESC LIMIT 1", (dag_id, since))
        return rows[0][0] if rows else None

    def _tasks(self, dag_id: str, since: str) -> dict[str, TaskResult]:
        run_id = self._run_id(dag_id, since)
        if run_id is None:
            return {}
        rows = self._query("SELECT task_id, state, try_number, duration FROM task_instance "
                           "WHERE dag_id = ? AND run_id = ?", (dag_id, run_id))
        return {r[0]: TaskResult(r[0], r[1], r[2] or 0, r[3]) for r in rows}


@dataclasses.dataclass(frozen=True)
class TaskChange:
    """One task state change seen while a DAG run goes (for progress output)."""

    dag_id: str
    task_id: str
    state: str | None
    try_number: int
    elapsed_s: float  # since the run started

    def line(self) -> str:
        tries = f" (try {self.try_number})" if self.try_number > 1 else ""
        return f"[{self.elapsed_s:6.0f} s] {self.dag_id}.{self.task_id}: {self.state or 'none'}{tries}"


def task_changes(dag_id: str, tasks: dict[str, TaskResult], seen: dict[str, tuple[str | None, int]],
                 elapsed_s: float) -> list[TaskChange]:
    """The tasks whose ``(state, try)`` differ from ``seen`` (updated in place), in task id order.
    Tasks not yet scheduled (no state) are not reported."""
    changes = []
    for task_id in sorted(tasks):
        task = tasks[task_id]
        key = (task.state, task.try_number)
        if task.state is None or seen.get(task_id) == key:
            continue
        seen[task_id] = key
        changes.append(TaskChange(dag_id, task_id, task.state, task.try_number, elapsed_s))
    return changes


def _report_changes(dag_id, tasks, seen, started, on_change) -> None:
    if on_change is None:
        return
    for change in task_changes(dag_id, tasks, seen, time.monotonic() - started):
        on_change(change)


def _stop_group(proc: subprocess.Popen, grace_s: float = 10.0) -> None:
    """Stop ``proc`` and everything it started (its own session): SIGTERM, then SIGKILL."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=grace_s)
            return
        except subprocess.TimeoutExpired:
            continue


# --------------------------------------------------------------------------- web service


def port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def http_json(method: str, url: str, body: bytes | None = None, timeout_s: float = 10.0,
              headers: dict | None = None) -> tuple[int, object]:
    """One HTTP request; returns ``(status, decoded JSON body or None)`` for any status."""
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    try:
        return status, json.loads(raw) if raw else None
    except ValueError:
        return status, None


class Service:
    """The TAAR web service as a real gunicorn process (``taar_web.gunicorn_conf``) on ``host:port``."""

    def __init__(self, model_store: str, profile_store: str, *, port: int = 8000, host: str = "127.0.0.1",
                 workers: int = 2, threads: int = 4, env: dict[str, str] | None = None,
                 log_path: Path | None = None, python: str = sys.executable):
        self.model_store, self.profile_store = model_store, profile_store
        self.host, self.port = host, port
        self.workers, self.threads = workers, threads
        self.extra_env = dict(env or {})
        self.log_path = log_path
        self.python = python
        self.proc: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout_s: float = 120.0) -> Service:
        """Start gunicorn and wait until ``/__lbheartbeat__`` answers (models are loaded by then)."""
        if not port_is_free(self.host, self.port):
            raise LocalRunError(f"port {self.port} on {self.host} is in use (another demo or service running?)")
        # a local service answers client_has_addon without a token (production fails closed, SPEC §4.6)
        env = {"TAAR_CLIENT_HAS_ADDON_PUBLIC": "true", **os.environ, "TAAR_MODEL_STORE": self.model_store, "TAAR_PROFILE_STORE": self.profile_store,
               "PORT": str(self.port), "WORKERS": str(self.workers), "THREADS": str(self.threads),
               **self.extra_env}
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        cmd = [self.python, "-m", "gunicorn", "-c", "python:taar_web.gunicorn_conf",
               "-b", f"{self.host}:{self.port}", "taar_web.wsgi:app"]
        try:
            self.proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        finally:
            if out is not subprocess.DEVNULL:
                out.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise LocalRunError(f"the service exited with code {self.proc.returncode} while starting"
                                    + (f"; see {self.log_path}" if self.log_path else ""))
            try:
                if http_json("GET", self.base_url + "/__lbheartbeat__", timeout_s=2)[0] == 200:
                    return self
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.2)
        self.stop()
        raise LocalRunError(f"the service did not answer on {self.base_url} within {timeout_s:.0f} s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            _stop_group(self.proc)
        self.proc = None

    def get(self, path: str) -> tuple[int, object]:
        return http_json("GET", self.base_url + path)

    def post(self, path: str, payload) -> tuple[int, object]:
        return http_json("POST", self.base_url + path, json.dumps(payload).encode(),
                         headers={"Content-Type": "application/json"})

    def __enter__(self) -> Service:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
