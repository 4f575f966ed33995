"""Deploy target, run-time templates, task defaults and the failure hooks of both DAGs (SPEC §10.1).

Only the deploy target is decided at parse time, from the environment: the DAG
files read no Variable while parsing, so parsing needs no network and no
database. Every other setting is an Airflow Variable read through ``{{ var.* }}``
templates when a task runs.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import sys
import urllib.request
from pathlib import Path

from airflow.exceptions import AirflowException
from airflow.providers.standard.operators.python import PythonOperator

try:  # TriggerRule joined airflow.sdk in 3.1
    from airflow.sdk import TriggerRule
except ImportError:  # pragma: no cover
    from airflow.utils.trigger_rule import TriggerRule

from airflow.sdk import Param

logger = logging.getLogger(__name__)

TARGET_ENV = "TAAR_DEPLOY_TARGET"
TARGETS = ("gcp", "local")
#: Optional URL the failure callback POSTs a JSON alert to (Slack-style ``{"text": ...}``).
ALERT_WEBHOOK_ENV = "TAAR_ALERT_WEBHOOK_URL"
REPO_ROOT = Path(os.environ.get("TAAR_HOME", Path(__file__).resolve().parents[2]))
LOCAL_PYTHON = os.environ.get("TAAR_PYTHON", sys.executable)
OWNER = "taar"


class DeployTargetError(RuntimeError):
    """``TAAR_DEPLOY_TARGET`` is unset or not a known target: the DAG file must not load."""


def deploy_target(environ=os.environ) -> str:
    """The deploy target from env ``TAAR_DEPLOY_TARGET`` (``gcp`` | ``local``); fails closed.

    Unset, empty or unknown raises :class:`DeployTargetError` naming the variable, so
    the DAG shows an import error instead of silently running jobs on the wrong target.
    """
    raw = environ.get(TARGET_ENV)
    target = (raw or "").strip().lower()
    if target not in TARGETS:
        got = "unset" if raw is None else repr(raw)
        raise DeployTargetError(f"{TARGET_ENV} must be one of {', '.join(TARGETS)} in the Airflow environment "
                                f"(Composer: environment variables), got {got}")
    return target


# --------------------------------------------------------------------------- run-time templates


def var(name: str, default: str | None = None) -> str:
    """A run-time template for Airflow Variable ``name`` (required when ``default`` is None)."""
    if default is None:
        return "{{ var.value." + name + " }}"
    return "{{ var.value.get(" + repr(name) + ", " + repr(default) + ") }}"


def _utc_date(moment) -> dt.date:
    if moment.tzinfo is None:
        return moment.date()
    return moment.astimezone(dt.UTC).date()


def job_date(params, dag_run, kind: str) -> str:
    """The job date D of a run (``YYYY-MM-DD``), also for a run without a logical date.

    The run parameter ``job_date`` wins. Otherwise ``daily``: the start of the data
    interval (the previous UTC day); ``weekly``: the last day of the interval. A
    manual Airflow 3 run without a logical date has no interval: D is the UTC day
    before the run was requested (``run_after``), which is what a scheduled run of
    either DAG gets too.
    """
    chosen = (params or {}).get("job_date") or ""
    if chosen:
        return str(chosen)
    if kind not in ("daily", "weekly"):
        raise ValueError(f"kind must be daily or weekly, got {kind!r}")
    if getattr(dag_run, "logical_date", None) is not None:
        if kind == "daily":
            return _utc_date(dag_run.data_interval_start).isoformat()
        return (_utc_date(dag_run.data_interval_end) - dt.timedelta(days=1)).isoformat()
    return (_utc_date(dag_run.run_after) - dt.timedelta(days=1)).isoformat()


def run_date(params, dag_run, kind: str) -> str:
    """The latest complete UTC day when the run was requested (the day before ``run_after``), never
    before the job date D: a scheduled run gets D itself, a backfill of an older D the day before now."""
    day = (_utc_date(dag_run.run_after) - dt.timedelta(days=1)).isoformat()
    return max(day, job_date(params, dag_run, kind))


def run_slug(run_id: str) -> str:
    """8 hex characters naming a DAG run in cluster and job ids (run ids hold ``:`` and ``+``)."""
    return hashlib.sha256(run_id.encode("utf-8")).hexdigest()[:8]


#: Job date templates (the ``taar_job_date`` macro is :func:`job_date`); never ``ds``, which a run
#: without a logical date lacks.
DAILY_DATE = "{{ taar_job_date(params, dag_run, 'daily') }}"
WEEKLY_DATE = "{{ taar_job_date(params, dag_run, 'weekly') }}"
#: The latest complete day when the run happens (never before D): what the profile steps honour
#: opt-outs up to (the ``taar_run_date`` macro is :func:`run_date`).
RUN_DATE = "{{ taar_run_date(params, dag_run, 'weekly') }}"
RUN_SLUG = "{{ taar_run_slug(run_id) }}"


def inner(template: str) -> str:
    """The expression of a one-expression template ``{{ expr }}``."""
    text = template.strip()
    if not (text.startswith("{{") and text.endswith("}}")):
        raise ValueError(f"not a one-expression template: {template!r}")
    return text[2:-2].strip()


def nodash(date: str) -> str:
    """``YYYYMMDD`` form of a date template such as :data:`DAILY_DATE`."""
    return "{{ (" + inner(date) + ") | replace('-', '') }}"


#: One BigQuery table configuration for sensors and jobs: Variable ``taar_bq_tables``, a JSON object
#: ``{"clients_daily": "project.dataset.table", ...}`` (the jobs' ``--bq-tables`` format, SPEC §7.1).
BQ_TABLES_VARIABLE = "taar_bq_tables"


def bq_table_part(table: str, index: int) -> str:
    """Template for part ``index`` (0 project, 1 dataset, 2 table) of ``table`` in ``taar_bq_tables``."""
    return "{{ var.json." + BQ_TABLES_VARIABLE + "[" + repr(table) + "].split('.')[" + str(index) + "] }}"


# --------------------------------------------------------------------------- cluster sizes

#: Default Dataproc shapes per Spark job; Variable ``taar_dataproc_cluster_sizes`` (JSON
#: ``{job: {"num_workers": n, "worker_machine_type": t, "worker_cores": c}}``) overrides any key.
CLUSTER_SIZES = {
    "locale": {"num_workers": 2, "worker_machine_type": "n2-standard-8"},
    "similarity": {"num_workers": 2, "worker_machine_type": "n2-highmem-8"},
    "collaborative": {"num_workers": 4, "worker_machine_type": "n2-highmem-8"},
    "item_item": {"num_workers": 4, "worker_machine_type": "n2-highmem-8"},
    "lite_guidguid": {"num_workers": 2, "worker_machine_type": "n2-standard-8"},
    "ensemble": {"num_workers": 2, "worker_machine_type": "n2-standard-8"},
    "profile": {"num_workers": 4, "worker_machine_type": "n2-standard-8"},
}
CLUSTER_SIZES_VARIABLE = "taar_dataproc_cluster_sizes"


def cluster_size(overrides, job: str) -> dict:
    """The shape of ``job``'s cluster: defaults with ``overrides[job]`` applied, plus ``worker_cores``
    (from the machine type ``<family>-<kind>-<vCPUs>`` unless given) and ``num_blocks`` =
    workers x cores per worker (what the ALS job partitions by, SPEC §8)."""
    size = {**CLUSTER_SIZES[job], **((overrides or {}).get(job) or {})}
    workers = int(size["num_workers"])
    cores = size.get("worker_cores")
    if cores is None:
        last = str(size["worker_machine_type"]).rsplit("-", 1)[-1]
        if not last.isdigit():
            raise ValueError(f"{CLUSTER_SIZES_VARIABLE}[{job!r}]: cannot read the vCPUs of machine type "
                             f"{size['worker_machine_type']!r}; give worker_cores")
        cores = last
    cores = int(cores)
    if workers < 2 or cores < 1:
        raise ValueError(f"{CLUSTER_SIZES_VARIABLE}[{job!r}]: need num_workers >= 2 and worker_cores >= 1")
    return {**size, "num_workers": workers, "worker_cores": cores, "num_blocks": workers * cores}


def size_template(job: str, key: str) -> str:
    """Template rendering ``cluster_size(<Variable>, job)[key]`` at run time."""
    return ("{{ taar_cluster_size(var.json.get(" + repr(CLUSTER_SIZES_VARIABLE) + ", {}), " + repr(job)
            + ")[" + repr(key) + "] }}")


# --------------------------------------------------------------------------- locale cadence

#: Locale cadence (issue 12): the locale model is computed every ``taar_locale_every_days`` days
#: (1 or 7) and stays published in between. Days count from this Saturday so that a weekly cadence
#: lands on the weekly DAG's job date (the Saturday ending its interval) and the ensemble finds it.
LOCALE_ANCHOR = dt.date(2026, 1, 3)
LOCALE_CADENCES = (1, 7)


def locale_due_date(date: str, every_days) -> str:
    """The latest locale date on or before ``date`` for a cadence of ``every_days`` days."""
    every = int(every_days)
    if every not in LOCALE_CADENCES:
        raise ValueError(f"taar_locale_every_days must be one of {LOCALE_CADENCES}, got {every_days!r}")
    day = dt.date.fromisoformat(date)
    return (day - dt.timedelta(days=(day - LOCALE_ANCHOR).days % every)).isoformat()



# --------------------------------------------------------------------------- task defaults

#: Retries (SPEC §10.1): jobs are idempotent, so they retry; sensors never do.
JOB_RETRIES = {"retries": 2, "retry_delay": dt.timedelta(minutes=10), "retry_exponential_backoff": True}
SENSOR_TIMEOUT = dt.timedelta(hours=6)
#: ``execution_timeout`` per task kind: a hung task fails (and alerts) instead of blocking later runs.
TIMEOUTS = {
    "sensor": SENSOR_TIMEOUT + dt.timedelta(minutes=15),
    "cluster": dt.timedelta(hours=1),
    "spark": dt.timedelta(hours=4),
    "container": dt.timedelta(hours=3),
    "gate": dt.timedelta(minutes=10),
}
#: Spark jobs that need longer than ``TIMEOUTS["spark"]`` at production scale.
SPARK_TIMEOUTS = {"collaborative": dt.timedelta(hours=8), "item_item": dt.timedelta(hours=6),
                  "profile": dt.timedelta(hours=6)}
DAGRUN_TIMEOUTS = {"daily": dt.timedelta(hours=20), "weekly": dt.timedelta(hours=36)}


def task_args(kind: str, **extra) -> dict:
    """Operator keyword arguments of a task of ``kind`` (retries and ``execution_timeout``)."""
    retries = {"retries": 0} if kind in ("sensor", "gate") else dict(JOB_RETRIES)
    return {**retries, "execution_timeout": TIMEOUTS[kind], **extra}


def notify_failure(context) -> None:
    """``on_failure_callback`` of every task: log the failure and, when env ``TAAR_ALERT_WEBHOOK_URL``
    is set, POST ``{"text": ...}`` to it. Never raises (a broken alert must not hide the failure)."""
    ti = context.get("ti") or context.get("task_instance")
    dag_run = context.get("dag_run")
    text = (f"TAAR task failed: {getattr(ti, 'dag_id', '?')}.{getattr(ti, 'task_id', '?')} "
            f"run {getattr(dag_run, 'run_id', '?')} try {getattr(ti, 'try_number', '?')}: "
            f"{context.get('exception')!s}"[:1000])
    log_url = getattr(ti, "log_url", None)
    if log_url:
        text += f" (log: {log_url})"
    logger.error("%s", text)
    url = os.environ.get(ALERT_WEBHOOK_ENV, "").strip()
    if not url:
        return
    request = urllib.request.Request(url, data=json.dumps({"text": text}).encode("utf-8"), method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            response.read()
    except Exception as exc:  # noqa: BLE001 - alerting is best effort
        logger.warning("failure alert to %s not delivered: %s", ALERT_WEBHOOK_ENV, exc)


def default_args() -> dict:
    """DAG ``default_args``: owner, job retries, a default ``execution_timeout``, the failure callback."""
    return {"owner": OWNER, **task_args("container"), "on_failure_callback": notify_failure}


def dag_params() -> dict:
    """The ``job_date`` run parameter both DAGs accept (YYYY-MM-DD, empty = computed)."""
    return {
        "job_date": Param(
            "", type="string", pattern=r"^(\d{4}-\d{2}-\d{2})?$",
            description="Override the job date (YYYY-MM-DD); empty uses the data interval.",
        )
    }


def shell_quote(value) -> str:
    import shlex

    return shlex.quote(str(value))


def dag_kwargs(target: str, kind: str, doc: str) -> dict:
    """Keyword arguments both DAGs share (besides id, schedule and start date)."""
    return {
        "catchup": False,
        "max_active_runs": 1,
        "params": dag_params(),
        "default_args": default_args(),
        "dagrun_timeout": DAGRUN_TIMEOUTS[kind],
        "doc_md": doc,
        "tags": ["taar", target],
        "user_defined_macros": {"taar_job_date": job_date, "taar_run_date": run_date, "taar_run_slug": run_slug,
                                "taar_cluster_size": cluster_size, "taar_locale_due_date": locale_due_date},
        "user_defined_filters": {"shquote": shell_quote},
    }


# --------------------------------------------------------------------------- the watcher


def _fail_run():
    raise AirflowException("an upstream task failed; failing the run")


def attach_watcher(dag) -> PythonOperator:
    """Add the ``watcher`` under every task: it fails the run when any task failed, even though
    tasks that run whatever happened (``all_done``: teardown, opt-out deletion) succeeded afterwards."""
    tasks = list(dag.tasks)
    watch = PythonOperator(task_id="watcher", python_callable=_fail_run, trigger_rule=TriggerRule.ONE_FAILED,
                           retries=0, execution_timeout=dt.timedelta(minutes=5))
    tasks >> watch
    return watch
