"""Operators of the ``gcp`` deploy target (SPEC §10.4): Dataproc, GKE pods, BigQuery and GCS sensors.

Everything long-running defers to the triggerer (``deferrable=True``) instead of
holding a worker slot. Names derive from the job date and the DAG run, never from
``ds``: a manual run without a logical date renders them too.
"""

from __future__ import annotations

import logging

from airflow.exceptions import AirflowException
from airflow.providers.google.cloud.operators.dataproc import (
    DataprocCreateClusterOperator,
    DataprocDeleteClusterOperator,
    DataprocSubmitJobOperator,
)
from airflow.providers.google.cloud.operators.kubernetes_engine import GKEStartPodOperator
from airflow.providers.google.cloud.sensors.bigquery import BigQueryTablePartitionExistenceSensor
from airflow.providers.google.cloud.sensors.gcs import GCSObjectExistenceSensor
from airflow.sdk import TaskGroup
from kubernetes.client import models as k8s

from taar_dags import RELEASE_TAG
from taar_dags.common import (
    RUN_SLUG,
    SENSOR_TIMEOUT,
    SPARK_TIMEOUTS,
    TriggerRule,
    bq_table_part,
    nodash,
    size_template,
    task_args,
    var,
)

logger = logging.getLogger(__name__)

GCP_CONN = "google_cloud_default"
DATAPROC_IMAGE_VERSION = "2.2-debian12"  # Spark 3.5, Python 3.11
#: The spark-bigquery connector the Dataproc 2.2 image ships, pinned through the documented
#: ``SPARK_BQ_CONNECTOR_VERSION`` cluster metadata (no extra jar on ``spark.jars``).
SPARK_BQ_CONNECTOR_VERSION = "0.42.1"
#: The Kubernetes service account of the ETL pods (bound to a Google service account through
#: Workload Identity; RELEASING.md says how).
GKE_SERVICE_ACCOUNT = "taar-etl"
#: Pod resources per container job; ``default`` for the others.
POD_RESOURCES = {
    "default": {"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"memory": "4Gi"}},
    "amodump": {"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"memory": "4Gi"}},
    "lite_guidranking": {"requests": {"cpu": "2", "memory": "4Gi"}, "limits": {"memory": "8Gi"}},
    "profile_delete_opt_outs": {"requests": {"cpu": "2", "memory": "8Gi"}, "limits": {"memory": "12Gi"}},
}
SENSOR_POKE_SECONDS = 600
DELETE_CLUSTER_RETRIES = 3
#: Cluster metadata naming the Secret Manager secret whose value becomes env ``TAAR_LOCALE_NOISE_KEY``
#: of the Spark driver (deploy/dataproc-init.sh); the value itself never appears in a DAG or a job's args.
NOISE_KEY_METADATA = "taar-locale-noise-key-secret"


def artifacts_prefix() -> str:
    """Where CI uploads this release's job files, ``taar.zip`` and the Dataproc wheelhouse (SPEC §11.4)."""
    return "gs://" + var("taar_artifacts_bucket") + "/taar/" + RELEASE_TAG


def etl_image() -> str:
    """The ETL image of this release (the tag is the DAG files' release, never a Variable)."""
    return var("taar_etl_image") + ":" + RELEASE_TAG


def cluster_name(job: str, date: str) -> str:
    """``taar-<job>-<YYYYMMDD>-<run>``: one cluster per job, job date and DAG run (at most 51 characters)."""
    return f"taar-{job.replace('_', '-')}-{nodash(date)}-{RUN_SLUG}"


def job_id(job: str, date: str, step: str) -> str:
    """Deterministic Dataproc job id for one try: a duplicate submit of the same try is refused."""
    return f"{cluster_name(job, date)}-{step.replace('_', '-')}-try{{{{ ti.try_number }}}}"


def cluster_config(job: str) -> dict:
    """Dataproc cluster config for ``job``: Spark 3.5 image with its BigQuery connector pinned, the
    release's pinned Python dependencies installed at boot, TTLs as a backstop."""
    metadata = {
        "SPARK_BQ_CONNECTOR_VERSION": SPARK_BQ_CONNECTOR_VERSION,
        "taar-wheelhouse": f"{artifacts_prefix()}/wheelhouse",
    }
    if job == "locale":
        metadata[NOISE_KEY_METADATA] = var("taar_locale_noise_key_secret")
    return {
        "gce_cluster_config": {
            "subnetwork_uri": var("taar_dataproc_subnetwork"),
            "service_account": var("taar_dataproc_service_account"),
            "internal_ip_only": True,
            "metadata": metadata,
        },
        "master_config": {"num_instances": 1, "machine_type_uri": "n2-standard-4"},
        "worker_config": {"num_instances": size_template(job, "num_workers"),
                          "machine_type_uri": size_template(job, "worker_machine_type")},
        "software_config": {
            "image_version": DATAPROC_IMAGE_VERSION,
            "properties": {"spark:spark.sql.session.timeZone": "UTC"},
        },
        "initialization_actions": [{"executable_file": f"{artifacts_prefix()}/dataproc-init.sh"}],
        "lifecycle_config": {"idle_delete_ttl": {"seconds": 3600}, "auto_delete_ttl": {"seconds": 12 * 3600}},
    }


def with_int_counts(config: dict) -> dict:
    """``config`` with templated instance counts (rendered as text) turned back into integers."""
    out = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out[key] = with_int_counts(value)
        elif key in ("num_instances", "seconds") and isinstance(value, str):
            out[key] = int(value)
        else:
            out[key] = value
    return out


class TaarCreateClusterOperator(DataprocCreateClusterOperator):
    """:class:`DataprocCreateClusterOperator` whose cluster size may come from a template."""

    def execute(self, context):
        self.cluster_config = with_int_counts(self.cluster_config)
        return super().execute(context)


def ensure_cluster(hook, *, project_id: str, region: str, cluster_name: str, cluster_config: dict,
                   labels: dict) -> str:
    """Make sure ``cluster_name`` is running before a submit; returns ``running`` or ``created``.

    A retry of a job whose cluster was lost (idle TTL, preemption, a manual delete)
    recreates it here, so create and submit retry as one unit. A cluster in ERROR is
    deleted and recreated; one being deleted fails this try (the next finds it gone).
    """
    from google.api_core.exceptions import NotFound
    from google.cloud.dataproc_v1 import ClusterStatus

    state = ClusterStatus.State
    try:
        cluster = hook.get_cluster(project_id=project_id, region=region, cluster_name=cluster_name)
    except NotFound:
        cluster = None
    if cluster is not None:
        current = cluster.status.state
        if current in (state.RUNNING, state.UPDATING):
            return "running"
        if current == state.DELETING:
            raise AirflowException(f"cluster {cluster_name} is being deleted; the next try recreates it")
        if current != state.ERROR:
            raise AirflowException(f"cluster {cluster_name} is {state(current).name}, not RUNNING")
        logger.warning("cluster %s is in ERROR: deleting and recreating it", cluster_name)
        hook.delete_cluster(project_id=project_id, region=region, cluster_name=cluster_name).result()
    logger.info("cluster %s is gone: recreating it before the submit", cluster_name)
    hook.create_cluster(project_id=project_id, region=region, cluster_name=cluster_name,
                        cluster_config=with_int_counts(cluster_config), labels=labels).result()
    return "created"


class TaarSubmitJobOperator(DataprocSubmitJobOperator):
    """:class:`DataprocSubmitJobOperator` that first recreates its cluster when it is gone."""

    template_fields = (*DataprocSubmitJobOperator.template_fields, "cluster_config")

    def __init__(self, *, cluster_config: dict, cluster_labels: dict, **kwargs):
        super().__init__(**kwargs)
        self.cluster_config = cluster_config
        self.cluster_labels = cluster_labels

    def execute(self, context):
        from airflow.providers.google.cloud.hooks.dataproc import DataprocHook

        hook = DataprocHook(gcp_conn_id=self.gcp_conn_id, impersonation_chain=self.impersonation_chain)
        ensure_cluster(hook, project_id=self.project_id, region=self.region,
                       cluster_name=self.job["placement"]["cluster_name"], cluster_config=self.cluster_config,
                       labels=self.cluster_labels)
        return super().execute(context)


def _dataproc_common() -> dict:
    return {"project_id": var("taar_dataproc_project"), "region": var("taar_dataproc_region"),
            "gcp_conn_id": GCP_CONN, "deferrable": True}


def _labels(job: str) -> dict:
    return {"app": "taar", "job": job.replace("_", "-"), "release": RELEASE_TAG.replace(".", "-")}


def dataproc_create(job: str, date: str) -> TaarCreateClusterOperator:
    return TaarCreateClusterOperator(
        task_id="create_cluster", cluster_name=cluster_name(job, date), cluster_config=cluster_config(job),
        labels=_labels(job), use_if_exists=True, delete_on_error=True, **_dataproc_common(),
        **task_args("cluster"),
    )


def dataproc_submit(task_id: str, job: str, script: str, args: list[str], date: str) -> TaarSubmitJobOperator:
    return TaarSubmitJobOperator(
        task_id=task_id,
        job={
            "reference": {"job_id": job_id(job, date, task_id)},
            "placement": {"cluster_name": cluster_name(job, date)},
            "labels": _labels(job),
            "pyspark_job": {
                "main_python_file_uri": f"{artifacts_prefix()}/jobs/{script}.py",
                "python_file_uris": [f"{artifacts_prefix()}/taar.zip"],
                "args": args,
            },
        },
        cluster_config=cluster_config(job), cluster_labels=_labels(job), **_dataproc_common(),
        **task_args("spark", **({"execution_timeout": SPARK_TIMEOUTS[job]} if job in SPARK_TIMEOUTS else {})),
    )


def dataproc_delete(job: str, date: str) -> DataprocDeleteClusterOperator:
    return DataprocDeleteClusterOperator(
        task_id="delete_cluster", cluster_name=cluster_name(job, date), trigger_rule=TriggerRule.ALL_DONE,
        **_dataproc_common(), **task_args("cluster", retries=DELETE_CLUSTER_RETRIES),
    )


def pod_resources(task_id: str) -> k8s.V1ResourceRequirements:
    spec = POD_RESOURCES.get(task_id, POD_RESOURCES["default"])
    return k8s.V1ResourceRequirements(requests=dict(spec["requests"]), limits=dict(spec["limits"]))


def gke_container_job(task_id: str, module: str, args: list[str], **kwargs) -> GKEStartPodOperator:
    """A container job in a GKE pod from the release's ETL image (SPEC §10.4)."""
    return GKEStartPodOperator(
        task_id=task_id, name=f"taar-{task_id.replace('_', '-')}",
        project_id=var("taar_gke_project"), location=var("taar_gke_location"),
        cluster_name=var("taar_gke_cluster"), namespace=var("taar_gke_namespace", "taar"),
        image=etl_image(), arguments=[f"taar_etl.{module}", *args],
        env_vars={"GOOGLE_CLOUD_PROJECT": var("taar_bq_project"), "TAAR_DEPLOY_TARGET": "gcp"},
        container_resources=pod_resources(task_id), service_account_name=GKE_SERVICE_ACCOUNT,
        labels={"app": "taar", "job": task_id.replace("_", "-")},
        get_logs=True, on_finish_action="delete_pod", gcp_conn_id=GCP_CONN, deferrable=True,
        **task_args("container", **kwargs),
    )


def bq_partition_sensor(task_id: str, table: str, date: str) -> BigQueryTablePartitionExistenceSensor:
    """Waits for partition D of ``table`` as named in Variable ``taar_bq_tables`` (what the jobs read)."""
    return BigQueryTablePartitionExistenceSensor(
        task_id=task_id, project_id=bq_table_part(table, 0), dataset_id=bq_table_part(table, 1),
        table_id=bq_table_part(table, 2), partition_id=nodash(date),
        poke_interval=SENSOR_POKE_SECONDS, timeout=SENSOR_TIMEOUT.total_seconds(), deferrable=True,
        gcp_conn_id=GCP_CONN, **task_args("sensor"),
    )


def gcs_models_sensor(task_id: str, objects: dict[str, tuple[str, str]]) -> TaskGroup:
    """One deferrable GCSObjectExistenceSensor per ``{key: (object, date template)}``, grouped as ``task_id``."""
    store = "var.value.taar_model_store"
    bucket = "{{ " + store + ".split('/')[2] }}"
    prefix = "{{ ('/'.join(" + store + ".split('/')[3:]) ~ '/') if " + store + ".split('/')[3:] else '' }}"
    with TaskGroup(group_id=task_id) as group:
        for key, (base, date) in objects.items():
            GCSObjectExistenceSensor(
                task_id=key, bucket=bucket, object=f"{prefix}{base}.{nodash(date)}.bz2",
                google_cloud_conn_id=GCP_CONN, poke_interval=SENSOR_POKE_SECONDS,
                timeout=SENSOR_TIMEOUT.total_seconds(), deferrable=True, **task_args("sensor"),
            )
    return group
