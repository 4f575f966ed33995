"""Operator factories shared by the ``taar_daily`` and ``taar_weekly`` DAGs (SPEC §10).

No DAG is defined here. Each factory returns the task (or task group) for one
job on the deploy target chosen at parse time:

* ``gcp``: Spark jobs run on a per-job Dataproc cluster (create >> submit >>
  delete, the delete running whatever happened), container jobs run in GKE pods
  from the ETL image, sensors wait on BigQuery partitions and GCS objects.
* ``local``: the same job command lines run as local processes (Spark in local
  mode), sensors look at local Parquet partitions and model objects.

Only the deploy target is decided at parse time; every other setting is an
Airflow Variable read through ``{{ var.value.* }}`` templates at run time, so
parsing needs no network and no database. Nothing from the ``taar`` packages is
imported: the DAGs talk to the jobs through their command lines only.
"""

from __future__ import annotations

import datetime as dt
import os
import shlex
import sys
from pathlib import Path

from airflow.exceptions import AirflowException
from airflow.providers.standard.operators.bash import BashOperator
from airflow.providers.standard.operators.python import PythonOperator
from airflow.providers.standard.sensors.python import PythonSensor
from airflow.sdk import Param, TaskGroup

try:  # TriggerRule joined airflow.sdk in 3.1
    from airflow.sdk import TriggerRule
except ImportError:  # pragma: no cover
    from airflow.utils.trigger_rule import TriggerRule

TARGETS = ("gcp", "local")
REPO_ROOT = Path(os.environ.get("TAAR_HOME", Path(__file__).resolve().parents[1]))
LOCAL_PYTHON = os.environ.get("TAAR_PYTHON", sys.executable)

#: Retries (SPEC §10.1): jobs are idempotent, so they retry; sensors never do.
JOB_ARGS = {
    "retries": 2,
    "retry_delay": dt.timedelta(minutes=10),
    "retry_exponential_backoff": True,
}
SENSOR_ARGS = {"retries": 0}
DELETE_CLUSTER_RETRIES = 3

#: Job date templates: the run parameter ``job_date`` overrides the computed one.
DAILY_DATE = "{{ params.job_date or ds }}"
WEEKLY_DATE = "{{ params.job_date or macros.ds_add(data_interval_end | ds, -1) }}"

#: The dated model objects the weekly ensemble waits for (SPEC §10.3).
DAILY_MODEL_OBJECTS = {
    "whitelist": "addon_recommender/only_guids_top_200.json",
    "item_matrix": "addon_recommender/item_matrix.json",
    "addon_mapping": "addon_recommender/addon_mapping.json",
    "locale": "taar/locale/top10_dict.json",
    "donors": "taar/similarity/donors.json",
    "lr_curves": "taar/similarity/lr_curves.json",
}

SPARK_JOBS = ("locale", "similarity", "collaborative", "lite_guidguid", "ensemble", "profile")
#: Default Dataproc shapes per job; Variable ``taar_dataproc_cluster_sizes`` overrides machine types.
CLUSTER_SIZES = {
    "locale": {"num_workers": 2, "worker_machine_type": "n2-standard-8"},
    "similarity": {"num_workers": 2, "worker_machine_type": "n2-highmem-8"},
    "collaborative": {"num_workers": 4, "worker_machine_type": "n2-highmem-8"},
    "lite_guidguid": {"num_workers": 2, "worker_machine_type": "n2-standard-8"},
    "ensemble": {"num_workers": 2, "worker_machine_type": "n2-standard-8"},
    "profile": {"num_workers": 4, "worker_machine_type": "n2-standard-8"},
}
DATAPROC_IMAGE_VERSION = "2.2-debian12"  # Spark 3.5
SPARK_BIGQUERY_JAR = "gs://spark-lib/bigquery/spark-3.5-bigquery-0.41.0.jar"


def deploy_target() -> str:
    """The deploy target: env ``TAAR_DEPLOY_TARGET``, else Variable ``taar_deploy_target``, else local."""
    target = os.environ.get("TAAR_DEPLOY_TARGET")
    if not target:
        try:
            from airflow.sdk import Variable

            target = Variable.get("taar_deploy_target", default=None)
        except Exception:  # no metadata database or API server while parsing: stay local
            target = None
    target = (target or "local").strip().lower()
    if target not in TARGETS:
        raise ValueError(f"taar_deploy_target must be one of {TARGETS}, got {target!r}")
    return target


def var(name: str, default: str | None = None) -> str:
    """A run-time template for Airflow Variable ``name``."""
    if default is None:
        return "{{ var.value." + name + " }}"
    return "{{ var.value.get(" + repr(name) + ", " + repr(default) + ") }}"


def dag_params() -> dict:
    """The ``job_date`` run parameter both DAGs accept (YYYY-MM-DD, empty = computed)."""
    return {
        "job_date": Param(
            "", type="string", pattern=r"^(\d{4}-\d{2}-\d{2})?$",
            description="Override the job date (YYYY-MM-DD); empty uses the data interval.",
        )
    }


def common_job_args(date: str) -> list[str]:
    """Flags every job takes (SPEC §8.0), templated."""
    return [
        "--date", date,
        "--model-store", var("taar_model_store", "./var/models"),
        "--etl-store", var("taar_etl_store", "./var/etl"),
        "--source", var("taar_source", "./var/telemetry"),
        "--seed", var("taar_seed", "42"),
    ]


# --------------------------------------------------------------------------- local target


def _local_command(argv: list[str], job: str) -> str:
    """A bash command line; Variable ``taar_local_extra_args`` (JSON ``{job: "flags"}``) appends flags,
    e.g. a smaller ``--min-locale-clients`` for a few-thousand-client demo."""
    quoted = " ".join(a if "{{" in a else shlex.quote(a) for a in argv)
    extra = "{{ var.json.get('taar_local_extra_args', {}).get(" + repr(job) + ", '') }}"
    return f"cd {shlex.quote(str(REPO_ROOT))} && exec {quoted} {extra}"


def local_spark_job(task_id: str, script: str, args: list[str]) -> BashOperator:
    """A PySpark driver run as a local process in Spark local mode."""
    argv = [LOCAL_PYTHON, f"jobs/{script}.py", *args, "--spark-master", var("taar_spark_master", "local[2]")]
    return BashOperator(
        task_id=task_id, bash_command=_local_command(argv, task_id), env={"SPARK_LOCAL_IP": "127.0.0.1"},
        append_env=True, **JOB_ARGS,
    )


def local_container_job(task_id: str, module: str, args: list[str]) -> BashOperator:
    """A container job (``python -m taar_etl.<module>``) run as a local process."""
    return BashOperator(
        task_id=task_id, bash_command=_local_command([LOCAL_PYTHON, "-m", f"taar_etl.{module}", *args], task_id),
        append_env=True, **JOB_ARGS,
    )


def _local_path(root: str) -> Path:
    path = Path(root)
    return path if path.is_absolute() else REPO_ROOT / path


def partition_exists(source: str, table: str, date: str) -> bool:
    """True when the local Parquet partition of ``table`` for ``date`` holds a file."""
    part = _local_path(source) / table / f"submission_date={date}"
    return part.is_dir() and any(p.suffix == ".parquet" for p in part.iterdir())


def dated_models_exist(model_store: str, date: str) -> bool:
    """True when every daily model has its dated copy for ``date`` in a local model store."""
    stamp = date.replace("-", "")
    root = _local_path(model_store)
    return all((root / f"{base}.{stamp}.bz2").is_file() for base in DAILY_MODEL_OBJECTS.values())


def local_partition_sensor(task_id: str, table: str, date: str) -> PythonSensor:
    return PythonSensor(
        task_id=task_id, python_callable=partition_exists,
        op_kwargs={"source": var("taar_source", "./var/telemetry"), "table": table, "date": date},
        poke_interval=5, timeout=120, mode="poke", **SENSOR_ARGS,
    )


def local_models_sensor(task_id: str, date: str) -> PythonSensor:
    return PythonSensor(
        task_id=task_id, python_callable=dated_models_exist,
        op_kwargs={"model_store": var("taar_model_store", "./var/models"), "date": date},
        poke_interval=5, timeout=120, mode="poke", **SENSOR_ARGS,
    )


# --------------------------------------------------------------------------- gcp target


def artifacts_prefix() -> str:
    """Where CI syncs ``jobs/*.py`` and ``taar.zip`` for the configured ref (SPEC §11.4)."""
    return "gs://" + var("taar_artifacts_bucket") + "/taar/" + var("taar_jobs_ref", "main")


def nodash(date: str) -> str:
    """``YYYYMMDD`` form of a date template such as :data:`DAILY_DATE`."""
    inner = date.strip()[2:-2].strip()
    return "{{ (" + inner + ") | replace('-', '') }}"


def cluster_name(job: str) -> str:
    return f"taar-{job.replace('_', '-')}-{{{{ ds_nodash }}}}"


def cluster_config(job: str) -> dict:
    """Dataproc cluster config for ``job``: Spark 3.5 image, the taar wheel and the BigQuery connector."""
    size = CLUSTER_SIZES[job]
    sizes_var = "var.json.get('taar_dataproc_cluster_sizes', {}).get(" + repr(job) + ", {})"
    machine = "{{ " + sizes_var + ".get('worker_machine_type', " + repr(size["worker_machine_type"]) + ") }}"
    return {
        "gce_cluster_config": {
            "subnetwork_uri": var("taar_dataproc_subnetwork"),
            "service_account": var("taar_dataproc_service_account"),
            "internal_ip_only": True,
            # third-party packages the jobs need beyond the Dataproc image; our own code ships as
            # python_file_uris (taar.zip) on every submit, so a cluster never runs stale code
            "metadata": {"PIP_PACKAGES": "xxhash google-cloud-bigtable google-cloud-storage"},
        },
        "master_config": {"num_instances": 1, "machine_type_uri": "n2-standard-4"},
        "worker_config": {"num_instances": size["num_workers"], "machine_type_uri": machine},
        "software_config": {
            "image_version": DATAPROC_IMAGE_VERSION,
            "properties": {"spark:spark.jars": SPARK_BIGQUERY_JAR, "spark:spark.sql.session.timeZone": "UTC"},
        },
        "initialization_actions": [
            {"executable_file": "gs://goog-dataproc-initialization-actions-"
                                + var("taar_dataproc_region") + "/python/pip-install.sh"}
        ],
        "lifecycle_config": {"idle_delete_ttl": {"seconds": 3600}, "auto_delete_ttl": {"seconds": 6 * 3600}},
    }


def _dataproc_common() -> dict:
    return {"project_id": var("taar_dataproc_project"), "region": var("taar_dataproc_region"),
            "gcp_conn_id": "google_cloud_default"}


def dataproc_create(job: str):
    from airflow.providers.google.cloud.operators.dataproc import DataprocCreateClusterOperator

    return DataprocCreateClusterOperator(
        task_id="create_cluster", cluster_name=cluster_name(job), cluster_config=cluster_config(job),
        labels={"app": "taar", "job": job.replace("_", "-")}, use_if_exists=True, delete_on_error=True,
        **_dataproc_common(), **JOB_ARGS,
    )


def dataproc_submit(task_id: str, job: str, script: str, args: list[str]):
    from airflow.providers.google.cloud.operators.dataproc import DataprocSubmitJobOperator

    main = f"{artifacts_prefix()}/jobs/{script}.py"
    return DataprocSubmitJobOperator(
        task_id=task_id,
        job={
            "placement": {"cluster_name": cluster_name(job)},
            "labels": {"app": "taar", "job": job.replace("_", "-")},
            "pyspark_job": {
                "main_python_file_uri": main,
                "python_file_uris": [f"{artifacts_prefix()}/taar.zip"],
                "args": args,
            },
        },
        **_dataproc_common(), **JOB_ARGS,
    )


def dataproc_delete(job: str):
    from airflow.providers.google.cloud.operators.dataproc import DataprocDeleteClusterOperator

    return DataprocDeleteClusterOperator(
        task_id="delete_cluster", cluster_name=cluster_name(job), trigger_rule=TriggerRule.ALL_DONE,
        retries=DELETE_CLUSTER_RETRIES, **_dataproc_common(),
    )


def gke_container_job(task_id: str, module: str, args: list[str]):
    """A container job in a GKE pod from the ETL image (SPEC §10.4)."""
    from airflow.providers.google.cloud.operators.kubernetes_engine import GKEStartPodOperator

    return GKEStartPodOperator(
        task_id=task_id, name=f"taar-{task_id.replace('_', '-')}",
        project_id=var("taar_gke_project"), location=var("taar_gke_location"),
        cluster_name=var("taar_gke_cluster"), namespace=var("taar_gke_namespace", "default"),
        image=var("taar_etl_image") + ":" + var("taar_etl_image_tag"),
        arguments=[f"taar_etl.{module}", *args], get_logs=True, on_finish_action="delete_pod",
        gcp_conn_id="google_cloud_default", **JOB_ARGS,
    )


def bq_partition_sensor(task_id: str, table: str, date: str):
    from airflow.providers.google.cloud.sensors.bigquery import BigQueryTablePartitionExistenceSensor

    ref = "var.json.taar_bq_tables." + table
    return BigQueryTablePartitionExistenceSensor(
        task_id=task_id, project_id="{{ " + ref + ".project }}", dataset_id="{{ " + ref + ".dataset }}",
        table_id="{{ " + ref + ".table }}", partition_id=nodash(date),
        poke_interval=600, timeout=6 * 3600, mode="reschedule", gcp_conn_id="google_cloud_default",
        **SENSOR_ARGS,
    )


def gcs_models_sensor(task_id: str, date: str):
    """One GCSObjectExistenceSensor per dated daily model, grouped as ``task_id``."""
    from airflow.providers.google.cloud.sensors.gcs import GCSObjectExistenceSensor

    store = "var.value.taar_model_store"
    bucket = "{{ " + store + ".split('/')[2] }}"
    prefix = "{{ ('/'.join(" + store + ".split('/')[3:]) ~ '/') if " + store + ".split('/')[3:] else '' }}"
    stamp = nodash(date)
    with TaskGroup(group_id=task_id) as group:
        for key, base in DAILY_MODEL_OBJECTS.items():
            GCSObjectExistenceSensor(
                task_id=key, bucket=bucket, object=f"{prefix}{base}.{stamp}.bz2",
                google_cloud_conn_id="google_cloud_default", poke_interval=600, timeout=6 * 3600,
                mode="reschedule", **SENSOR_ARGS,
            )
    return group


# --------------------------------------------------------------------------- target-neutral factories


def spark_job(target: str, job: str, script: str, args: list[str]):
    """A Spark job; on gcp a TaskGroup ``job`` (create >> submit >> delete), returning the node
    downstream edges attach to (``submit``) and the node upstream edges attach to."""
    if target == "local":
        task = local_spark_job(job, script, args)
        return task, task
    with TaskGroup(group_id=job) as group:
        create = dataproc_create(job)
        submit = dataproc_submit("submit", job, script, args)
        delete = dataproc_delete(job)
        create >> submit >> delete
    return group, submit


def container_job(target: str, task_id: str, module: str, args: list[str]):
    if target == "local":
        return local_container_job(task_id, module, args)
    return gke_container_job(task_id, module, args)


def partition_sensor(target: str, task_id: str, table: str, date: str):
    if target == "local":
        return local_partition_sensor(task_id, table, date)
    return bq_partition_sensor(task_id, table, date)


def models_sensor(target: str, task_id: str, date: str):
    if target == "local":
        return local_models_sensor(task_id, date)
    return gcs_models_sensor(task_id, date)


def _fail_run():
    raise AirflowException("an upstream task failed; failing the run")


def attach_watcher(dag) -> PythonOperator:
    """Add the ``watcher`` under every task: it fails the run when any task failed, even though
    cluster teardown tasks (``all_done``) succeeded afterwards."""
    tasks = list(dag.tasks)
    watch = PythonOperator(task_id="watcher", python_callable=_fail_run, trigger_rule=TriggerRule.ONE_FAILED,
                           retries=0)
    tasks >> watch
    return watch
