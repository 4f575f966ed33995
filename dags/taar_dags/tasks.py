"""Target-neutral task factories and the job command lines both DAGs build (SPEC §10).

Each factory returns the task (or task group) for one job on the deploy target
given; the DAG files only wire edges.
"""

from __future__ import annotations

from airflow.providers.standard.operators.python import BranchPythonOperator

from taar_dags import gcp, local
from taar_dags.common import (
    BQ_TABLES_VARIABLE,
    RUN_DATE,
    TriggerRule,
    inner,
    locale_due_date,
    size_template,
    task_args,
    var,
)

#: The dated model objects the weekly ensemble waits for (SPEC §10.3), by key.
DAILY_MODEL_OBJECTS = {
    "whitelist": "addon_recommender/only_guids_top_200.json",
    "item_matrix": "addon_recommender/item_matrix.json",
    "addon_mapping": "addon_recommender/addon_mapping.json",
    "item_item": "addon_recommender/item_item.json",
    "locale": "taar/locale/top10_dict.json",
    "donors": "taar/similarity/donors.json",
    "lr_curves": "taar/similarity/lr_curves.json",
}

#: The locale job's own release cadence (issue 12, SPEC §8.6). Unset, the Variable leaves the job at its
#: default of 7 days (weekly, Saturdays; the job publishes once off-cadence into an empty store) while the
#: gate below runs the task every day; set to 7, the gate also skips the cluster on the other days.
LOCALE_CADENCE_ARGS: list[str] = ["--cadence-days", var("taar_locale_every_days", "7")]



def common_job_args(date: str) -> list[str]:
    """Flags every job takes (SPEC §8.0), templated."""
    return [
        "--date", date,
        "--model-store", var("taar_model_store", "./var/models"),
        "--etl-store", var("taar_etl_store", "./var/etl"),
        "--source", var("taar_source", "./var/telemetry"),
        "--seed", var("taar_seed", "42"),
    ]


def bq_tables_arg(target: str) -> str:
    """The one BigQuery table configuration as the jobs' ``--bq-tables`` JSON (required on gcp)."""
    if target == "gcp":
        return "{{ var.json." + BQ_TABLES_VARIABLE + " | tojson }}"
    return "{{ var.json.get(" + repr(BQ_TABLES_VARIABLE) + ", {}) | tojson }}"


def source_args(target: str) -> list[str]:
    """Flags of every job that reads source tables: the same tables the sensors check."""
    args = ["--bq-tables", bq_tables_arg(target),
            "--bq-materialization-dataset", var("taar_bq_materialization_dataset", "")]
    return [*args, "--allow-missing-days", var("taar_allow_missing_days", "0")]


def num_blocks_args(target: str, job: str) -> list[str]:
    """``--num-blocks`` of an ALS job: workers x cores of its Dataproc cluster (issue 16); the job's
    default locally."""
    return ["--num-blocks", size_template(job, "num_blocks")] if target == "gcp" else []


def run_date_args() -> list[str]:
    """``--run-date`` of the profile steps (issue 12): opt-outs are honoured up to the run's day, so a
    backfill of an older D never writes back a client who opted out since."""
    return ["--run-date", RUN_DATE]


# --------------------------------------------------------------------------- factories


def spark_job(target: str, job: str, script: str, args: list[str], date: str, env: dict | None = None):
    """A Spark job; on gcp a TaskGroup ``job`` (create >> submit >> delete). Returns ``(entry, exit)``:
    the node upstream edges attach to and the node downstream edges attach to (``submit``)."""
    if target == "local":
        task = local.spark_job(job, script, args, env=env)
        return task, task
    from airflow.sdk import TaskGroup

    with TaskGroup(group_id=job) as group:
        create = gcp.dataproc_create(job, date)
        submit = gcp.dataproc_submit("submit", job, script, args, date)
        delete = gcp.dataproc_delete(job, date)
        create >> submit >> delete
    return group, submit


def container_job(target: str, task_id: str, module: str, args: list[str], **kwargs):
    if target == "local":
        return local.container_job(task_id, module, args, **kwargs)
    return gcp.gke_container_job(task_id, module, args, **kwargs)


def partition_sensor(target: str, task_id: str, table: str, date: str):
    """Waits for partition D of ``table``. The jobs read windows ending at D (locale 28 days,
    collaborative 90); the earlier days were waited for by earlier runs, and every job checks
    each day of its window itself (missing days fail it, naming them), so D suffices here."""
    if target == "local":
        return local.partition_sensor(task_id, table, date)
    return gcp.bq_partition_sensor(task_id, table, date)


def models_sensor(target: str, task_id: str, objects: dict[str, tuple[str, str]]):
    if target == "local":
        return local.models_sensor(task_id, objects)
    return gcp.gcs_models_sensor(task_id, objects)


# --------------------------------------------------------------------------- locale cadence


def locale_branch(date: str, every_days, run: list[str], always: list[str]) -> list[str]:
    """Tasks to follow: ``run + always`` when the locale model is due on ``date``, else ``always``."""
    return [*run, *always] if locale_due_date(date, every_days) == date else list(always)


def locale_due_template(date: str) -> str:
    return ("{{ taar_locale_due_date(" + inner(date) + ", var.value.get('taar_locale_every_days', '1')) }}")


def locale_gate(date: str, run: list[str], always: list[str]) -> BranchPythonOperator:
    """``locale_due``: follows the locale task(s) only on days the cadence computes the model.
    ``always`` (the watcher) is followed every day so a failure elsewhere still fails the run."""
    return BranchPythonOperator(
        task_id="locale_due", python_callable=locale_branch,
        op_kwargs={"date": date, "every_days": var("taar_locale_every_days", "1"), "run": run, "always": always},
        **task_args("gate"),
    )


def all_done(**kwargs) -> dict:
    """Keyword arguments of a task that runs whatever happened upstream (issue 12: opt-out deletion)."""
    return {"trigger_rule": TriggerRule.ALL_DONE, **kwargs}


def weekly_model_objects(target: str, date: str) -> dict[str, tuple[str, str]]:
    """``{key: (object, date template)}`` the weekly ensemble waits for: the dated copy for D of every
    daily model, the locale model's latest date due under its cadence."""
    objects = {key: (base, date) for key, base in DAILY_MODEL_OBJECTS.items()}
    objects["locale"] = (DAILY_MODEL_OBJECTS["locale"], locale_due_template(date))
    return objects
